"""MaskGIT sampling: the schedule reveals everything, actions line up."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import tiny_config
from jaxworld.infer import sampler
from jaxworld.models import build, maskgit
from jaxworld.models.sampling import SampleOptions


def test_schedule_reveals_every_token_and_never_rehides():
  for steps in (1, 2, 8):
    hidden = [maskgit.hidden_after(s, steps, 64) for s in range(steps)]
    assert hidden[-1] == 0
    assert all(a >= b for a, b in zip(hidden, hidden[1:]))
    assert hidden[0] < 64


def test_rollout_actions_line_up():
  """The action after the last context frame shapes the first imagined
  frame; the next action only shapes later ones."""
  cfg = tiny_config()
  model = build.dynamics(cfg, nnx.Rngs(0))
  # Untrained, actions barely move the logits; make them count so a changed
  # action visibly changes the argmax tokens it reaches.
  model.action_embed.embedding[...] = model.action_embed.embedding[...] * 100.0
  context = jax.random.randint(jax.random.key(0), (2, 2, 16), 0, 32)
  actions = jnp.zeros((2, 4), jnp.int32)

  def imagine(a):
    return sampler.rollout_tokens("maskgit", model, context, a, horizon=2,
                                  window=4, rng=jax.random.key(1),
                                  options=SampleOptions(steps=2))

  base = imagine(actions)
  assert base.shape == (2, 4, 16)
  np.testing.assert_array_equal(base[:, :2], context)
  assert int(base.max()) < 32 and int(base.min()) >= 0
  after_context = imagine(actions.at[:, 1].set(3))
  assert not np.array_equal(after_context[:, 2], base[:, 2])
  later = imagine(actions.at[:, 2].set(3))
  np.testing.assert_array_equal(later[:, 2], base[:, 2])


def test_history_cache_gives_the_whole_window_logits():
  """`next_frame` refines a frame against its history's cached keys/values;
  that is the last frame of the whole-window pass training runs."""
  model = build.dynamics(tiny_config(), nnx.Rngs(0))
  rng = jax.random.key(2)
  tokens_BTN = jax.random.randint(rng, (2, 4, 16), 0, 32)
  actions_BT = jax.random.randint(rng, (2, 4), 0, 5)
  mask_BTN = jnp.zeros((2, 4, 16), bool).at[:, -1, ::3].set(True)
  whole_BNV = model(tokens_BTN, actions_BT, mask_BTN)[:, -1]

  history = model.backbone.history_kv(
      model.embed(tokens_BTN[:, :-1], actions_BT[:, :-1]))
  input_BN = jnp.where(mask_BTN[:, -1], model.special_token,
                       tokens_BTN[:, -1])
  x_BND = model.embed_frame(input_BN, actions_BT[:, -2])
  cached_BNV = model.logits(model.backbone.next_frame(x_BND, history))
  np.testing.assert_allclose(cached_BNV, whole_BNV, atol=2e-5, rtol=1e-4)
