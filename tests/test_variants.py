"""Dynamics variants on the shared backbone: MaskGIT sampling options, the
causal autoregressive model (KV cache, causality, training, CLI)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import TINY, assert_bundle_plays_like_rollout, tiny_config
from jaxworld import cli
from jaxworld.errors import JaxWorldError
from jaxworld.models import autoregressive, build, maskgit, sampling

AR = 'dynamics.kind="autoregressive"'


def overfit_losses(model, objective, batch, steps=25, lr=3e-3):
  """Losses of `steps` Adam steps on one fixed batch."""
  opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, batch):
    loss_fn = lambda m: objective.loss(m, batch, jax.random.key(0))
    (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    opt.update(model, grads)
    return loss

  return [float(step(model, opt, batch)) for _ in range(steps)]


# ------------------------------------------------------ MaskGIT options


@pytest.mark.parametrize("schedule", ["cosine", "linear", "square"])
def test_every_schedule_reveals_all_and_never_rehides(schedule):
  for steps in (1, 2, 8):
    hidden = [maskgit.hidden_after(s, steps, 64, schedule)
              for s in range(steps)]
    assert hidden[-1] == 0 and hidden[0] < 64
    assert all(a >= b for a, b in zip(hidden, hidden[1:]))


def test_schedules_differ():
  shapes = {s: [maskgit.hidden_after(i, 8, 64, s) for i in range(8)]
            for s in maskgit.SCHEDULES}
  assert shapes["linear"] == [56, 48, 40, 32, 24, 16, 8, 0]
  assert len({tuple(v) for v in shapes.values()}) == 3


def test_top_k_samples_only_the_k_most_likely():
  logits = jnp.log(jnp.asarray([[0.05, 0.4, 0.3, 0.2, 0.05]] * 4096))
  hot = jnp.float32(5.0)  # nearly uniform without top-k
  drawn = sampling.sample_tokens(jax.random.key(0), logits, hot, top_k=2)
  assert set(np.unique(drawn)) == {1, 2}
  assert set(np.unique(sampling.sample_tokens(jax.random.key(0), logits,
                                             hot))) == {0, 1, 2, 3, 4}
  top1 = sampling.sample_tokens(jax.random.key(0), logits, hot, top_k=1)
  np.testing.assert_array_equal(top1, 1)


def test_sampling_options_are_validated():
  with pytest.raises(JaxWorldError, match="rollout.mask_schedule"):
    tiny_config('rollout.mask_schedule="exp"')
  with pytest.raises(JaxWorldError, match="dynamics.kind"):
    tiny_config('dynamics.kind="gan"')


# --------------------------------------------------------- autoregressive


@pytest.fixture(scope="module")
def ar_model():
  return build.dynamics(tiny_config(AR), nnx.Rngs(0))


def _tokens_actions(seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (2, 4, 16), 0, 32)
  actions = jax.random.randint(jax.random.key(seed + 1), (2, 4), 0, 5)
  return tokens, actions


def test_ar_shapes(ar_model):
  tokens, actions = _tokens_actions()
  assert ar_model(tokens, actions).shape == (2, 4, 16, 32)


def test_ar_is_causal_in_time_and_raster_order(ar_model):
  tokens, actions = _tokens_actions()
  base = ar_model(tokens, actions)
  # A future frame (and the action leading into it) changes nothing before.
  future = ar_model(tokens.at[:, 2:].set((tokens[:, 2:] + 1) % 32),
                    actions.at[:, 1].set((actions[:, 1] + 1) % 5))
  np.testing.assert_allclose(future[:, :2], base[:, :2], atol=1e-5)
  assert not np.allclose(future[:, 2], base[:, 2], atol=1e-3)
  # Token (1, 5) is seen by later tokens only.
  one = ar_model(tokens.at[:, 1, 5].set((tokens[:, 1, 5] + 1) % 32), actions)
  np.testing.assert_allclose(one[:, 1, :6], base[:, 1, :6], atol=1e-5)
  assert not np.allclose(one[:, 1, 6:], base[:, 1, 6:], atol=1e-3)


@pytest.mark.parametrize("history", [1, 3])
def test_ar_kv_cache_matches_full_recomputation(ar_model, history):
  tokens, actions = _tokens_actions(history)
  sample = jax.jit(lambda h, a, temp: autoregressive.sample_frame(
      ar_model, h, a, jax.random.key(2),
      sampling.SampleOptions(temp, top_k=8)))
  for temperature in (0.0, 1.0):
    new_BN, cached_BNV = sample(tokens[:, :history], actions[:, :history],
                                jnp.float32(temperature))
    frames = jnp.concatenate([tokens[:, :history], new_BN[:, None]], 1)
    full_BNV = ar_model(frames, actions[:, :history + 1])[:, -1]
    np.testing.assert_allclose(cached_BNV, full_BNV, atol=2e-5, rtol=1e-5)


def test_ar_loss_falls_on_one_batch():
  cfg = tiny_config(AR)
  tokens, actions = _tokens_actions()
  losses = overfit_losses(build.dynamics(cfg, nnx.Rngs(0)),
                          build.dynamics_kind(cfg),
                          {"tokens": tokens, "actions": actions})
  assert losses[-1] < 0.7 * losses[0], losses


def test_maskgit_is_causal_in_time():
  model = build.dynamics(tiny_config(), nnx.Rngs(0))
  tokens, actions = _tokens_actions()
  mask = jnp.zeros(tokens.shape, bool).at[:, 2:].set(True)
  base = model(tokens, actions, mask)
  # A later frame's tokens, its mask and the action leading into it change
  # nothing before it.
  changed = model(tokens.at[:, 2:].set((tokens[:, 2:] + 1) % 32),
                  actions.at[:, 1].set((actions[:, 1] + 1) % 5),
                  mask.at[:, 2].set(False))
  np.testing.assert_allclose(changed[:, :2], base[:, :2], atol=1e-5)
  assert not np.allclose(changed[:, 2], base[:, 2], atol=1e-3)


def test_maskgit_loss_falls_on_one_batch():
  cfg = tiny_config('rollout.mask_schedule="linear"')
  tokens, actions = _tokens_actions()
  losses = overfit_losses(build.dynamics(cfg, nnx.Rngs(0)),
                          build.dynamics_kind(cfg),
                          {"tokens": tokens, "actions": actions}, steps=40)
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_ar_trains_rolls_out_and_exports(tiny_demo, tmp_path, capsys):
  run = tmp_path / "ar"
  assert cli.main(["train", "dynamics", *TINY, AR, "rollout.top_k=4",
                   f"data.path={tiny_demo / 'data'}",
                   f"dynamics.tokenizer_workdir={tiny_demo / 'tokenizer'}",
                   "--workdir", str(run)]) == 0
  lines = (run / "metrics.jsonl").read_text().splitlines()
  assert "token_accuracy" in json.loads(lines[-1])
  out = tmp_path / "roll"
  assert cli.main(["rollout", "--workdir", str(run), "--out", str(out),
                   "--episodes", "2"]) == 0
  result = json.loads((out / "rollout.json").read_text())
  assert np.isfinite(result["psnr_model"])
  capsys.readouterr()
  assert cli.main(["export", "--workdir", str(run),
                   "--out", str(tmp_path / "bundle")]) == 0
  assert_bundle_plays_like_rollout(run, tmp_path / "bundle")
