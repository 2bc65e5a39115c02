"""Playing a world model: sampling the next frame's tokens.

MaskGIT: a new frame starts fully masked. Each of `steps` refinement passes
predicts every hidden token, keeps the most confident ones and re-hides the
rest, following a schedule (cosine by default, `rollout.mask_schedule`),
until no token is hidden. Autoregressive: the history fills a KV cache in one
pass, then the frame's tokens are sampled one at a time in raster order.
Both sample with `temperature` among the `top_k` most likely tokens.
Diffusion: the new frame's continuous latents are denoised from Gaussian
noise in `rollout.diffusion_steps` steps (`models/diffusion.py`); "tokens"
below are then latents [B, T, N, E]. History is a
sliding window of the model's training length, so rollouts can run for any
number of frames.

A rollout is three per-frame programs, each a pure function of (params,
arrays) that `export.py` serializes unchanged: `encode_frame`,
`dynamics_step` and `decode_frame`. `rollout.py` and the standalone bundle
player run the very same programs with the same shapes, hence the same
frames; the host loops below only slice history windows.

Dimension keys: B batch, T time, N tokens per frame, V codebook size,
H/W/C frame height/width/channels.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxworld.config import RolloutConfig
from jaxworld.models import diffusion
from jaxworld.models.autoregressive import ARDynamics
from jaxworld.models.dynamics import MaskGITDynamics
from jaxworld.models.tokenizer import VideoTokenizer

# The PRNG implementation of the raw uint32[2] keys the step programs take.
KEY_IMPL = "threefry2x32"

Params = dict[str, jax.Array]


# Fraction of tokens still hidden when a fraction r of the passes is done.
SCHEDULES = {
    "cosine": lambda r: math.cos(math.pi / 2 * r),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r * r,
}


def steps_per_frame(kind: str, r: RolloutConfig) -> int:
  """Model passes per imagined frame: diffusion's denoising steps or
  MaskGIT's refinements; 0 for an autoregressive model, which takes one per
  token (a constant, so MaskGIT's setting does not recompile it)."""
  return {"diffusion": r.diffusion_steps, "maskgit": r.maskgit_steps}.get(
      kind, 0)


def hidden_after(step: int, steps: int, n: int,
                 schedule: str = "cosine") -> int:
  """Tokens still hidden after refinement `step` (0-based)."""
  return int(math.floor(n * SCHEDULES[schedule]((step + 1) / steps)))


def sample_tokens(key: jax.Array, logits_BV: jax.Array,
                  temperature: jax.Array, top_k: int = 0) -> jax.Array:
  """int32 tokens [...] from logits [..., V]: argmax at temperature 0, else
  a draw at `temperature` among the `top_k` most likely (0: all)."""
  if 0 < top_k < logits_BV.shape[-1]:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][..., -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  return jnp.where(
      temperature > 0,
      jax.random.categorical(key, logits_BV / jnp.maximum(temperature, 1e-6)),
      jnp.argmax(logits_BV, -1)).astype(jnp.int32)


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


def sample_next_frame(model: MaskGITDynamics, tokens_BTN: jax.Array,
                      actions_BT: jax.Array, rng: jax.Array,
                      temperature: jax.Array, steps: int,
                      schedule: str = "cosine", top_k: int = 0) -> jax.Array:
  """Samples the tokens of frame T given frames < T (frame T's are ignored).

  `actions_BT[:, t]` is the action taken after frame t; the one leading into
  the new frame is `actions_BT[:, -2]`. Traceable; call it under jit.
  """
  b, _, n = tokens_BTN.shape
  frame_BN = jnp.zeros((b, n), jnp.int32)
  hidden_BN = jnp.ones((b, n), bool)
  for s in range(steps):  # Unrolled: `steps` is small and static.
    mask_BTN = jnp.zeros(tokens_BTN.shape, bool).at[:, -1].set(hidden_BN)
    tokens_BTN = tokens_BTN.at[:, -1].set(frame_BN)
    logits_BNV = model(tokens_BTN, actions_BT, mask_BTN)[:, -1]
    rng, key = jax.random.split(rng)
    sampled_BN = sample_tokens(key, logits_BNV, temperature, top_k)
    confidence_BN = jnp.take_along_axis(jax.nn.log_softmax(logits_BNV),
                                        sampled_BN[..., None], -1)[..., 0]
    # Tokens fixed in earlier passes are never re-hidden.
    confidence_BN = jnp.where(hidden_BN, confidence_BN, jnp.inf)
    frame_BN = jnp.where(hidden_BN, sampled_BN, frame_BN)
    keep_hidden = hidden_after(s, steps, n, schedule)
    rank_BN = jnp.argsort(jnp.argsort(confidence_BN, -1), -1)
    hidden_BN = rank_BN < keep_hidden
  return frame_BN


def sample_next_frame_ar(model: ARDynamics, history_BTN: jax.Array,
                         actions_BT: jax.Array, rng: jax.Array,
                         temperature: jax.Array, top_k: int = 0
                         ) -> tuple[jax.Array, jax.Array]:
  """(tokens [B, N], their logits [B, N, V]) of frame T after T history
  frames, one token at a time over a KV cache.

  `actions_BT[:, t]` is the action taken after history frame t; the last
  leads into the new frame. Traceable; call it under jit.
  """
  b, t, n = history_BTN.shape
  cache = model.prefill(history_BTN, actions_BT, capacity=t + 1)
  action_in_B = actions_BT[:, -1]
  # Split outside the scan, merged inside, so no nnx object crosses traces.
  graphdef, state = nnx.split(model)

  def one_token(carry, i):
    prev_B, cache, rng = carry
    logits_BV, cache = nnx.merge(graphdef, state).decode_token(
        prev_B, action_in_B, cache, t, i)
    rng, key = jax.random.split(rng)
    token_B = sample_tokens(key, logits_BV, temperature, top_k)
    return (token_B, cache, rng), (token_B, logits_BV)

  _, (tokens_NB, logits_NBV) = jax.lax.scan(
      one_token, (history_BTN[:, -1, -1], cache, rng), jnp.arange(n))
  return tokens_NB.T, logits_NBV.transpose(1, 0, 2)


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


def dynamics_step(graphdef: nnx.GraphDef, steps: int, params: Params,
                  history_BTN: jax.Array, actions_BT: jax.Array,
                  rng_2: jax.Array, temperature: jax.Array,
                  schedule: str = "cosine", top_k: int = 0
                  ) -> tuple[jax.Array, jax.Array]:
  """One imagined frame: (tokens [B, N], next key) from T < window frames.

  `actions_BT[:, t]` is the action taken after history frame t, so the last
  one leads into the new frame. `rng_2` is raw uint32[2] key data; the
  per-frame split happens here so callers only thread the returned key.
  `steps` are MaskGIT's refinements or diffusion's denoising steps
  (`steps_per_frame`); `schedule` is MaskGIT's. Diffusion ignores
  temperature and top_k: `rng` draws its starting noise.
  """
  model = _merge(graphdef, params)
  rng, key = jax.random.split(jax.random.wrap_key_data(rng_2, impl=KEY_IMPL))
  if isinstance(model, ARDynamics):
    new_BN, _ = sample_next_frame_ar(model, history_BTN, actions_BT, key,
                                     temperature, top_k)
    return new_BN, jax.random.key_data(rng)
  if isinstance(model, diffusion.DiffusionDynamics):
    new_BNE = diffusion.sample_next_frame(model, history_BTN, actions_BT, key,
                                          steps)
    return new_BNE, jax.random.key_data(rng)
  # The new frame's slot, and the action after it, which the model never
  # reads (frame t sees the action after frame t-1).
  tokens_BTN = jnp.concatenate(
      [history_BTN, jnp.zeros_like(history_BTN[:, :1])], 1)
  actions_BT = jnp.concatenate(
      [actions_BT, jnp.zeros_like(actions_BT[:, :1])], 1)
  new_BN = sample_next_frame(model, tokens_BTN, actions_BT, key, temperature,
                             steps, schedule, top_k)
  return new_BN, jax.random.key_data(rng)


_encode_frame = jax.jit(encode_frame, static_argnums=0)
_decode_frame = jax.jit(decode_frame, static_argnums=0)
_dynamics_step = jax.jit(dynamics_step, static_argnums=(0, 1, 7, 8))


# ----------------------------------------------------- host-side loops


def rollout_tokens(model: MaskGITDynamics | ARDynamics |
                   diffusion.DiffusionDynamics, context_BTN: jax.Array,
                   actions_BT: jax.Array, horizon: int, window: int,
                   rng: jax.Array, temperature: float = 0.0, steps: int = 8,
                   schedule: str = "cosine", top_k: int = 0) -> jax.Array:
  """Extends `context_BTN` by `horizon` frames; returns all tokens.

  `actions_BT` covers context + horizon frames (the last is unused). `rng` is
  a threefry key (`jax.random.key(seed)`).
  """
  graphdef, params = model_params(model)
  rng_2 = jax.random.key_data(rng)
  tokens = list(jnp.moveaxis(jnp.asarray(context_BTN), 1, 0))
  for _ in range(horizon):
    t = len(tokens)
    lo = max(0, t + 1 - window)  # the new frame is the window's last
    new_BN, rng_2 = _dynamics_step(
        graphdef, steps, params, jnp.stack(tokens[lo:], 1),
        jnp.asarray(actions_BT[:, lo:t], jnp.int32), rng_2,
        np.float32(temperature), schedule, top_k)
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


def program(name: str, graphdef: nnx.GraphDef, steps: int = 0,
            schedule: str = "cosine", top_k: int = 0):
  """The pure per-frame program `name` with its model structure bound, as
  exported: encode(params, frames), decode(params, tokens) or
  dynamics_step(params, history, actions, rng, temperature)."""
  if name == "dynamics_step":
    return functools.partial(dynamics_step, graphdef, steps,
                             schedule=schedule, top_k=top_k)
  return functools.partial({"encode": encode_frame,
                            "decode": decode_frame}[name], graphdef)
