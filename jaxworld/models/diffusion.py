"""Diffusion-forcing dynamics over continuous latents (Chen et al. 2024,
"Diffusion Forcing: Next-token Prediction Meets Full-Sequence Diffusion").

Every frame of a training window gets its own noise level s in [0, 1] on the
straight path between the clean latents and Gaussian noise,
z_s = (1 - s) z_0 + s eps (rectified flow), and the model predicts the clean
latents of every frame from the noisy ones, the levels and the actions that
led to each frame. Temporal attention is causal, so frame t sees only frames
<= t: in a rollout the history is clean (s = 0) and the new frame is
denoised from pure noise (s = 1) in a few steps (`next_frame`).

Dimension keys: B batch, T time, N tokens per frame, E latent width, D model
width, F Fourier features of the noise level, A actions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxworld.config import Config
from jaxworld.models import build
from jaxworld.models.sampling import SampleOptions
from jaxworld.models.st_transformer import (STTransformer, action_into_frame,
                                            dense, embedding)

_LEVEL_FEATURES = 16  # sin/cos pairs: frequencies 1..2^7 of the level


def level_features(level_BT: jax.Array) -> jax.Array:
  """Fourier features [B, T, S] of noise levels in [0, 1]."""
  freqs_F = np.pi * 2.0 ** np.arange(_LEVEL_FEATURES // 2, dtype=np.float32)
  angle_BTF = level_BT[..., None] * freqs_F[None, None]
  return jnp.concatenate([jnp.sin(angle_BTF), jnp.cos(angle_BTF)], -1)


class DiffusionDynamics(nnx.Module):
  """noisy latents [B, T, N, E] + levels [B, T] + actions [B, T] -> clean
  latents [B, T, N, E]."""

  def __init__(self, rngs: nnx.Rngs, *, latent_dim: int, num_actions: int,
               num_tokens: int, max_frames: int, backbone: dict[str, Any]):
    width = backbone["width"]
    self.latent_dim = latent_dim
    self.no_action = num_actions  # one extra embedding row
    self.latent_in = dense(rngs, "BTNE,ED->BTND", E=latent_dim, D=width)
    self.level_in = dense(rngs, "BTS,SD->BTD", S=_LEVEL_FEATURES, D=width)
    self.action_embed = embedding(rngs, num_actions + 1, width, "A")
    self.backbone = STTransformer(rngs, num_tokens=num_tokens,
                                  max_frames=max_frames, **backbone)
    self.head = dense(rngs, "BTND,DE->BTNE", D=width, E=latent_dim,
                      init=jax.nn.initializers.zeros)

  def __call__(self, noisy_BTNE: jax.Array, level_BT: jax.Array,
               actions_BT: jax.Array) -> jax.Array:
    """actions[:, t] is the action taken after frame t (the last is unused)."""
    y_BTND = self.hidden(noisy_BTNE, level_BT, actions_BT)
    out_BTNE = self.head(y_BTND).astype(jnp.float32)
    # Skip connection weighted by how much signal the input still holds: at
    # level 0 the answer is the input, at level 1 all of it is predicted.
    return (1.0 - level_BT)[..., None, None] * noisy_BTNE + out_BTNE

  def hidden(self, noisy_BTNE: jax.Array, level_BT: jax.Array,
             actions_BT: jax.Array) -> jax.Array:
    """The backbone's output [B, T, N, D]: the model's state."""
    level_BTD = self.level_in(level_features(level_BT))
    prev_actions_BT = action_into_frame(actions_BT, self.no_action)
    cond_BTD = level_BTD + self.action_embed(prev_actions_BT)
    x_BTND = self.latent_in(noisy_BTNE) + cond_BTD[:, :, None]
    return self.backbone(x_BTND)


def build_model(cfg: Config, rngs: nnx.Rngs) -> DiffusionDynamics:
  return DiffusionDynamics(rngs, latent_dim=build.latent_dim(cfg),
                           **build.dynamics_sizes(cfg))


def loss(model: DiffusionDynamics, batch: build.Batch, rng: jax.Array
         ) -> tuple[jax.Array, build.Metrics]:
  """Diffusion forcing on the tokenizer's latents: an independent noise
  level per frame, MSE of the predicted clean latents. Also reports the
  error on the frames that were nearly pure noise (level > 0.9), the regime
  a rollout's first step is in."""
  latents_BTNE, actions_BT = batch["tokens"], batch["actions"]
  noisy_BTNE, level_BT = noised(rng, latents_BTNE)
  pred_BTNE = model(noisy_BTNE, level_BT, actions_BT)
  return mse_by_level(pred_BTNE, latents_BTNE, level_BT)


def noised(rng: jax.Array, clean_BTNE: jax.Array
           ) -> tuple[jax.Array, jax.Array]:
  """(noisy latents, levels [B, T]): every frame at its own uniform level s
  on the straight path (1 - s) clean + s eps."""
  b, t = clean_BTNE.shape[:2]
  k_level, k_noise = jax.random.split(rng)
  level_BT = jax.random.uniform(k_level, (b, t))
  noise_BTNE = jax.random.normal(k_noise, clean_BTNE.shape)
  s_BT11 = level_BT[..., None, None]
  return (1.0 - s_BT11) * clean_BTNE + s_BT11 * noise_BTNE, level_BT


def mse_by_level(pred_BTNE: jax.Array, clean_BTNE: jax.Array,
                 level_BT: jax.Array) -> tuple[jax.Array, build.Metrics]:
  """The MSE loss, and the error on frames at levels > 0.9 (the regime of a
  rollout's first denoising step) as `mse_high_noise`."""
  err_BT = jnp.mean((pred_BTNE - clean_BTNE) ** 2, axis=(2, 3))
  high_BT = (level_BT > 0.9).astype(jnp.float32)
  return jnp.mean(err_BT), {
      "mse_high_noise": jnp.sum(err_BT * high_BT) / jnp.maximum(
          jnp.sum(high_BT), 1.0),
      "latent_rms": jnp.sqrt(jnp.mean(clean_BTNE ** 2))}


def noise_levels(steps: int) -> np.ndarray:
  """The few-step sampler's levels, 1 -> 0 (steps + 1 values)."""
  return np.linspace(1.0, 0.0, steps + 1, dtype=np.float32)


def next_frame(model: DiffusionDynamics, history_BTNE: jax.Array,
               actions_BT: jax.Array, rng: jax.Array, options: SampleOptions
               ) -> jax.Array:
  """Latents [B, N, E] of frame T after T clean history frames, denoised
  from Gaussian noise drawn with `rng` in `options.steps` steps.

  `actions_BT[:, t]` is the action taken after history frame t, the last one
  leading into the new frame. Deterministic DDIM-style steps on the straight
  path: predict z_0, re-noise it to the next (lower) level with the noise
  the prediction implies, and end at level 0. Traceable; call under jit.
  """
  b, t, n, e = history_BTNE.shape
  actions_BT = jnp.concatenate([actions_BT, jnp.zeros_like(actions_BT[:, :1])],
                               1)
  z_BNE = jax.random.normal(rng, (b, n, e), jnp.float32)
  levels = noise_levels(options.steps)
  for s, s_next in zip(levels[:-1], levels[1:]):
    frames_BTNE = jnp.concatenate([history_BTNE, z_BNE[:, None]], 1)
    level_BT = jnp.concatenate(
        [jnp.zeros((b, t), jnp.float32), jnp.full((b, 1), s, jnp.float32)], 1)
    clean_BNE = model(frames_BTNE, level_BT, actions_BT)[:, -1]
    noise_BNE = (z_BNE - (1.0 - s) * clean_BNE) / s
    z_BNE = (1.0 - s_next) * clean_BNE + s_next * noise_BNE
  return z_BNE


def features(model: DiffusionDynamics, latents_BTNE: jax.Array,
             actions_BT: jax.Array) -> jax.Array:
  """The model's state [B, T, N, D] over clean frames (level 0)."""
  level_BT = jnp.zeros(latents_BTNE.shape[:2], jnp.float32)
  return model.hidden(latents_BTNE, level_BT, actions_BT)


KIND = build.register("dynamics", build.DynamicsKind(
    "diffusion", build_model, loss, next_frame=next_frame,
    codes="latents", steps_per_frame=lambda r: r.diffusion_steps,
    features=features))
