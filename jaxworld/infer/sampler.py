"""Playing a world model: the per-frame programs and the loops that run them.

A rollout is three per-frame programs, each a pure function of (params,
arrays) that `export.py` serializes unchanged: `encode_frame`,
`dynamics_step` and `decode_frame`. `dynamics_step` runs the `next_frame` of
the run's dynamics kind (`models/build.py`), so it serves every kind: the
"tokens" are a discrete tokenizer's ints [B, T, N] or a continuous one's
latents [B, T, N, E]. `rollout.py` and the standalone bundle player run the
very same programs with the same shapes, hence the same frames; the host
loops below only slice history windows, which slide at the model's training
length, so rollouts can run for any number of frames.

Dimension keys: B batch, T time, N tokens per frame, H/W/C frame
height/width/channels.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.config import Config
from jaxworld.models import build
from jaxworld.models.sampling import SampleOptions
from jaxworld.models.tokenizer import VideoTokenizer

# The PRNG implementation of the raw uint32[2] keys the step programs take.
KEY_IMPL = "threefry2x32"

Params = dict[str, jax.Array]


def model_params(model: nnx.Module) -> tuple[nnx.GraphDef, Params]:
  """A model as (graphdef, parameters keyed by "/"-joined paths)."""
  graphdef, state = nnx.split(model)
  return graphdef, {"/".join(map(str, path)): v.get_value()
                    for path, v in nnx.to_flat_state(state)}


def _merge(graphdef: nnx.GraphDef, params: Params) -> nnx.Module:
  """The model back from flat params; bf16 params (an export option) are
  upcast so compute is as in training, only the weights are rounded."""
  nested = {}
  for key, value in params.items():
    *parents, leaf = key.split("/")
    node = nested
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value if value.dtype == jnp.float32 else value.astype(
        jnp.float32)
  return nnx.merge(graphdef, nnx.restore_int_paths(nested))


# ------------------------------------------------ the per-frame programs


def encode_frame(graphdef: nnx.GraphDef, params: Params,
                 frames_BTHWC: jax.Array) -> jax.Array:
  """uint8 frames [B, T, H, W, C] -> int32 tokens [B, N] of the last frame
  (a continuous tokenizer: float32 latents [B, N, E]).

  The T <= window frames are its history (the encoder is causal and was
  trained on windows of that length).
  """
  tokenizer: VideoTokenizer = _merge(graphdef, params)
  frames_BTHWC = frames_BTHWC.astype(jnp.float32) / 255.0
  return tokenizer.encode(frames_BTHWC)[:, -1]


def decode_frame(graphdef: nnx.GraphDef, params: Params,
                 tokens_BTN: jax.Array) -> jax.Array:
  """Tokens [B, T, N] -> uint8 frame [B, H, W, C] of the last of T <= window
  frames."""
  tokenizer: VideoTokenizer = _merge(graphdef, params)
  frame_BHWC = tokenizer.decode(tokens_BTN)[:, -1]
  return jnp.clip(jnp.round(frame_BHWC * 255.0), 0, 255).astype(jnp.uint8)


def dynamics_step(graphdef: nnx.GraphDef, kind: str, params: Params,
                  history_BTN: jax.Array, actions_BT: jax.Array,
                  rng_2: jax.Array, options: SampleOptions
                  ) -> tuple[jax.Array, jax.Array]:
  """One imagined frame: (tokens [B, N], next key) from T < window frames,
  by the `next_frame` of dynamics kind `kind`.

  `actions_BT[:, t]` is the action taken after history frame t, so the last
  one leads into the new frame. `rng_2` is raw uint32[2] key data; the
  per-frame split happens here so callers only thread the returned key.
  """
  model = _merge(graphdef, params)
  rng, key = jax.random.split(jax.random.wrap_key_data(rng_2, impl=KEY_IMPL))
  next_frame = build.kind("dynamics", kind).next_frame
  new_BN = next_frame(model, history_BTN, actions_BT, key, options)
  return new_BN, jax.random.key_data(rng)


_encode_frame = jax.jit(encode_frame, static_argnums=0)
_decode_frame = jax.jit(decode_frame, static_argnums=0)
_dynamics_step = jax.jit(dynamics_step, static_argnums=(0, 1))


# ----------------------------------------------------- host-side loops


def options_for(cfg: Config) -> SampleOptions:
  """The sampling settings of a run's rollout section, for its kind."""
  steps = build.dynamics_kind(cfg).steps_per_frame(cfg.rollout)
  return SampleOptions.from_rollout(cfg.rollout, steps)


def rollout_tokens(kind: str, model: nnx.Module, context_BTN: jax.Array,
                   actions_BT: jax.Array, horizon: int, window: int,
                   rng: jax.Array, options: SampleOptions) -> jax.Array:
  """Extends `context_BTN` by `horizon` frames imagined by `model`, of
  dynamics kind `kind`; returns all tokens.

  `actions_BT` covers context + horizon frames (the last is unused). `rng` is
  a threefry key (`jax.random.key(seed, impl=KEY_IMPL)`).
  """
  graphdef, params = model_params(model)
  rng_2 = jax.random.key_data(rng)
  tokens = list(jnp.moveaxis(jnp.asarray(context_BTN), 1, 0))
  for _ in range(horizon):
    t = len(tokens)
    lo = max(0, t + 1 - window)  # the new frame is the window's last
    new_BN, rng_2 = _dynamics_step(
        graphdef, kind, params, jnp.stack(tokens[lo:], 1),
        jnp.asarray(actions_BT[:, lo:t], jnp.int32), rng_2, options)
    tokens.append(new_BN)
  return jnp.stack(tokens, 1)


def encode_frames(tokenizer: VideoTokenizer, frames_BTHWC: jax.Array,
                  window: int) -> jax.Array:
  """uint8 frames -> tokens [B, T, N], each frame with up to `window` frames
  of history."""
  graphdef, params = model_params(tokenizer)
  return jnp.stack([
      _encode_frame(graphdef, params, frames_BTHWC[:, max(0, i + 1 - window):
                                                   i + 1])
      for i in range(frames_BTHWC.shape[1])], 1)


def decode_frames(tokenizer: VideoTokenizer, tokens_BTN: jax.Array,
                  window: int, start: int = 0) -> jax.Array:
  """Tokens -> uint8 frames [B, T - start, H, W, C] of frames start..T-1,
  windowed like `encode_frames`."""
  graphdef, params = model_params(tokenizer)
  return jnp.stack([
      _decode_frame(graphdef, params, tokens_BTN[:, max(0, i + 1 - window):
                                                 i + 1])
      for i in range(start, tokens_BTN.shape[1])], 1)


def program(name: str, graphdef: nnx.GraphDef, kind: str | None = None,
            options: SampleOptions | None = None):
  """The pure per-frame program `name` with its model structure bound, as
  exported: encode(params, frames), decode(params, tokens) or
  dynamics_step(params, history, actions, rng, temperature) of dynamics kind
  `kind`, sampled with `options` at the given temperature."""
  if name == "dynamics_step":
    if kind is None or options is None:
      raise ValueError("program('dynamics_step') needs the dynamics kind "
                       "and its SampleOptions")

    def step(params, history_BTN, actions_BT, rng_2, temperature):
      return dynamics_step(graphdef, kind, params, history_BTN, actions_BT,
                           rng_2, dataclasses.replace(
                               options, temperature=temperature))
    return step
  return functools.partial({"encode": encode_frame,
                            "decode": decode_frame}[name], graphdef)
