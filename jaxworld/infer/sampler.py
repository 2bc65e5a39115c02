"""Playing a world model: MaskGIT sampling of the next frame's tokens.

A new frame starts fully masked. Each of `steps` refinement passes predicts
every hidden token, keeps the most confident ones and re-hides the rest,
following MaskGIT's cosine schedule, until no token is hidden. History is a
sliding window of the model's training length, so rollouts can run for any
number of frames.

Dimension keys: B batch, T time, N tokens per frame, V codebook size,
H/W/C frame height/width/channels.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.models.dynamics import MaskGITDynamics
from jaxworld.models.tokenizer import VideoTokenizer


def hidden_after(step: int, steps: int, n: int) -> int:
  """Tokens still hidden after refinement `step` (0-based): cosine schedule."""
  return int(math.floor(n * math.cos(math.pi / 2 * (step + 1) / steps)))


@functools.partial(nnx.jit, static_argnames=("steps",))
def next_frame_tokens(model: MaskGITDynamics, tokens_BTN: jax.Array,
                      actions_BT: jax.Array, rng: jax.Array, temperature: float,
                      steps: int) -> jax.Array:
  """Samples the tokens of frame T given frames < T (frame T's are ignored).

  `actions_BT[:, t]` is the action taken after frame t; the one leading into
  the new frame is `actions_BT[:, -2]`.
  """
  b, _, n = tokens_BTN.shape
  frame_N = jnp.zeros((b, n), jnp.int32)
  hidden_BN = jnp.ones((b, n), bool)
  for s in range(steps):  # Unrolled: `steps` is small and static.
    mask_BTN = jnp.zeros(tokens_BTN.shape, bool).at[:, -1].set(hidden_BN)
    tokens_BTN = tokens_BTN.at[:, -1].set(frame_N)
    logits_BNV = model(tokens_BTN, actions_BT, mask_BTN)[:, -1]
    rng, key = jax.random.split(rng)
    sampled_BN = jnp.where(
        temperature > 0,
        jax.random.categorical(key, logits_BNV / jnp.maximum(temperature, 1e-6)),
        jnp.argmax(logits_BNV, -1)).astype(jnp.int32)
    confidence_BN = jnp.take_along_axis(jax.nn.log_softmax(logits_BNV),
                                        sampled_BN[..., None], -1)[..., 0]
    # Tokens fixed in earlier passes are never re-hidden.
    confidence_BN = jnp.where(hidden_BN, confidence_BN, jnp.inf)
    frame_N = jnp.where(hidden_BN, sampled_BN, frame_N)
    keep_hidden = hidden_after(s, steps, n)
    rank_BN = jnp.argsort(jnp.argsort(confidence_BN, -1), -1)
    hidden_BN = rank_BN < keep_hidden
  return frame_N


def rollout_tokens(model: MaskGITDynamics, context_BTN: jax.Array,
                   actions_BT: jax.Array, horizon: int, window: int,
                   rng: jax.Array, temperature: float = 0.0, steps: int = 8
                   ) -> jax.Array:
  """Extends `context_BTN` by `horizon` frames; returns all tokens.

  `actions_BT` covers context + horizon frames (the last is unused).
  """
  tokens_BTN = context_BTN
  for _ in range(horizon):
    t = tokens_BTN.shape[1] + 1          # frames including the new one
    lo = max(0, t - window)
    placeholder_B1N = jnp.zeros_like(tokens_BTN[:, :1])
    rng, key = jax.random.split(rng)
    new_BN = next_frame_tokens(
        model, jnp.concatenate([tokens_BTN[:, lo:], placeholder_B1N], 1),
        actions_BT[:, lo:t], key, temperature, steps)
    tokens_BTN = jnp.concatenate([tokens_BTN, new_BN[:, None]], 1)
  return tokens_BTN


@functools.partial(nnx.jit, static_argnames=("window",))
def encode_frames(tokenizer: VideoTokenizer, frames_BTHWC: jax.Array,
                  window: int) -> jax.Array:
  """uint8 frames -> tokens, each frame with up to `window` frames of history
  (the encoder is causal and was trained on windows of that length)."""
  frames_BTHWC = frames_BTHWC.astype(jnp.float32) / 255.0
  tokens = []
  for i in range(frames_BTHWC.shape[1]):
    lo = max(0, i + 1 - window)
    tokens.append(tokenizer.encode(frames_BTHWC[:, lo:i + 1])[:, -1])
  return jnp.stack(tokens, 1)


@functools.partial(nnx.jit, static_argnames=("window",))
def decode_frames(tokenizer: VideoTokenizer, tokens_BTN: jax.Array,
                  window: int) -> jax.Array:
  """Tokens -> float frames in [0, 1], windowed like `encode_frames`."""
  t = tokens_BTN.shape[1]
  frames = []
  for i in range(t):
    lo = max(0, i + 1 - window)
    frames.append(tokenizer.decode(tokens_BTN[:, lo:i + 1])[:, -1])
  return jnp.stack(frames, 1)
