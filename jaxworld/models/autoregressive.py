"""Causal autoregressive dynamics: each token predicted from every earlier
token in raster order (all of frames < t, then tokens < n of frame t) and the
action that led to its frame.

The input at raster position (t, n) is the token *before* it (a learned
begin token at (0, 0)) plus the embedding of the action taken after frame
t-1, so the output at (t, n) predicts token (t, n). Training is teacher
forced (`loss`); imagining a frame fills a KV cache with the history in one
pass, then draws the frame's tokens one at a time (`next_frame`).

Dimension keys: B batch, T time, N tokens per frame, V codebook size, D
width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxworld.config import Config
from jaxworld.models import build
from jaxworld.models.sampling import SampleOptions, sample_tokens
from jaxworld.models.maskgit import TokenDynamics


class ARDynamics(TokenDynamics):
  """tokens [B, T, N] + actions [B, T] -> logits [B, T, N, V]."""

  def inputs(self, tokens_BTN: jax.Array, actions_BT: jax.Array
              ) -> jax.Array:
    b, t, n = tokens_BTN.shape
    flat_BL = tokens_BTN.reshape(b, t * n)
    shifted_BL = jnp.concatenate(
        [jnp.full_like(flat_BL[:, :1], self.special_token), flat_BL[:, :-1]],
        1)
    return self.embed(shifted_BL.reshape(b, t, n), actions_BT)

  def __call__(self, tokens_BTN: jax.Array, actions_BT: jax.Array
               ) -> jax.Array:
    """Teacher-forced logits; actions[:, t] is the action taken after frame
    t (the last is unused)."""
    return self.logits(self.backbone(self.inputs(tokens_BTN, actions_BT)))

  def prefill(self, history_BTN: jax.Array, actions_BT: jax.Array,
              capacity: int) -> dict[str, jax.Array]:
    """The KV cache of `capacity` >= T + 1 frames after the T history frames
    (their actions as in `__call__`)."""
    _, cache = self.backbone.prefill(self.inputs(history_BTN, actions_BT),
                                     capacity)
    return cache

  def decode_token(self, prev_token_B: jax.Array, action_B: jax.Array,
                   cache: dict[str, jax.Array], t: jax.Array, n: jax.Array
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits [B, V] of token (t, n) given the token before it in raster
    order and the action taken after frame t-1."""
    x_BD = self.token_embed(prev_token_B) + self.action_embed(action_B)
    y_BD, cache = self.backbone.decode(x_BD, cache, t, n)
    return self.logits(y_BD), cache


def build_model(cfg: Config, rngs: nnx.Rngs) -> ARDynamics:
  return ARDynamics(rngs, codebook_size=build.codebook_size(cfg),
                    token_causal=True, **build.dynamics_sizes(cfg))


def loss(model: ARDynamics, batch: build.Batch, rng: jax.Array
         ) -> tuple[jax.Array, build.Metrics]:
  """Teacher-forced next-token cross-entropy over the tokens of frames >= 1
  (frame 0 has no action leading into it; a rollout always starts from real
  context)."""
  del rng
  tokens_BTN = batch["tokens"]
  logits_BTNV = model(tokens_BTN, batch["actions"])[:, 1:]
  targets_BTN = tokens_BTN[:, 1:]
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits_BTNV, targets_BTN))
  accuracy = jnp.mean(
      (jnp.argmax(logits_BTNV, -1) == targets_BTN).astype(jnp.float32))
  return ce, {"token_accuracy": accuracy}


def sample_frame(model: ARDynamics, history_BTN: jax.Array,
                 actions_BT: jax.Array, rng: jax.Array,
                 options: SampleOptions) -> tuple[jax.Array, jax.Array]:
  """(tokens [B, N], their logits [B, N, V]) of frame T after T history
  frames, one token at a time over a KV cache.

  `actions_BT[:, t]` is the action taken after history frame t; the last
  leads into the new frame. Traceable; call it under jit.
  """
  b, t, n = history_BTN.shape
  cache = model.prefill(history_BTN, actions_BT, capacity=t + 1)
  action_in_B = actions_BT[:, -1]
  # The new frame's index as an array: under `jax.export` the history
  # length is symbolic, and a symbolic dimension cannot index a table.
  t = jnp.asarray(t, jnp.int32)
  # Split outside the scan, merged inside, so no nnx object crosses traces.
  graphdef, state = nnx.split(model)

  def one_token(carry, i):
    prev_B, cache, rng = carry
    logits_BV, cache = nnx.merge(graphdef, state).decode_token(
        prev_B, action_in_B, cache, t, i)
    rng, key = jax.random.split(rng)
    token_B = sample_tokens(key, logits_BV, options.temperature,
                            options.top_k)
    return (token_B, cache, rng), (token_B, logits_BV)

  _, (tokens_NB, logits_NBV) = jax.lax.scan(
      one_token, (history_BTN[:, -1, -1], cache, rng), jnp.arange(n))
  return tokens_NB.T, logits_NBV.transpose(1, 0, 2)


def next_frame(model: ARDynamics, history_BTN: jax.Array,
               actions_BT: jax.Array, rng: jax.Array, options: SampleOptions
               ) -> jax.Array:
  """Tokens [B, N] of frame T after T history frames."""
  return sample_frame(model, history_BTN, actions_BT, rng, options)[0]


def features(model: ARDynamics, tokens_BTN: jax.Array,
             actions_BT: jax.Array) -> jax.Array:
  """The model's state [B, T, N, D] over teacher-forced frames."""
  return model.backbone(model.inputs(tokens_BTN, actions_BT))


KIND = build.register("dynamics", build.DynamicsKind(
    "autoregressive", build_model, loss, next_frame=next_frame,
    codes="tokens", features=features))
