"""Teacher-forced next-frame diffusion over continuous latents or pixels.

Position t of a training window reads the clean frame t, the action taken
after it and frame t+1 noised to its own level s_t in [0, 1] on the straight
path z_s = (1 - s) x + s eps, and predicts the clean frame t+1. Every
position is a target and every history is clean, which is exactly what a
rollout shows the model (its own frames as history, one new frame being
denoised), so no training signal is spent on histories it never sees;
diffusion forcing (`diffusion.py`) instead noises the history too. The noisy
target enters beside the frame it follows, as GameNGen and DIAMOND stack it
with their context frames.

The prediction is the current frame plus the model's change to it: what does
not move costs nothing to keep, and the noisy input never passes to the
output, so wide pixel tokens (more channels than the model is wide) come out
clean. At level 1 the model is a deterministic next-frame regressor; more
sampler steps sharpen what the mean blurs.

Dimension keys: B batch, T time, N tokens per frame, E latent width, D model
width, S level features.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxworld.config import Config
from jaxworld.models import build
from jaxworld.models.diffusion import (level_features, mse_by_level, noised,
                                       noise_levels)
from jaxworld.models.sampling import SampleOptions
from jaxworld.models.st_transformer import STTransformer, dense, embedding


class FrameDiffusion(nnx.Module):
  """frames [B, T, N, E] + noisy next frames [B, T, N, E] + levels [B, T] +
  actions [B, T] -> clean next frames [B, T, N, E]."""

  def __init__(self, rngs: nnx.Rngs, *, latent_dim: int, num_actions: int,
               num_tokens: int, max_frames: int, backbone: dict[str, Any]):
    width = backbone["width"]
    self.frame_in = dense(rngs, "BTNE,ED->BTND", E=latent_dim, D=width)
    self.target_in = dense(rngs, "BTNE,ED->BTND", E=latent_dim, D=width)
    self.level_in = dense(rngs, "BTS,SD->BTD", S=level_features(
        np.zeros((1, 1), np.float32)).shape[-1], D=width)
    self.action_embed = embedding(rngs, num_actions, width, "A")
    self.backbone = STTransformer(rngs, num_tokens=num_tokens,
                                  max_frames=max_frames, **backbone)
    self.head = dense(rngs, "BTND,DE->BTNE", D=width, E=latent_dim,
                      init=jax.nn.initializers.zeros)

  def hidden(self, frames_BTNE: jax.Array, noisy_BTNE: jax.Array,
             level_BT: jax.Array, actions_BT: jax.Array) -> jax.Array:
    """The backbone's output [B, T, N, D]: the model's state."""
    cond_BTD = (self.level_in(level_features(level_BT))
                + self.action_embed(actions_BT))
    x_BTND = (self.frame_in(frames_BTNE) + self.target_in(noisy_BTNE)
              + cond_BTD[:, :, None])
    return self.backbone(x_BTND)

  def __call__(self, frames_BTNE: jax.Array, noisy_BTNE: jax.Array,
               level_BT: jax.Array, actions_BT: jax.Array) -> jax.Array:
    """actions[:, t] is the action taken after frame t, leading to the frame
    that noisy[:, t] is a noised copy of."""
    y_BTND = self.hidden(frames_BTNE, noisy_BTNE, level_BT, actions_BT)
    return frames_BTNE + self.head(y_BTND).astype(jnp.float32)


def build_model(cfg: Config, rngs: nnx.Rngs) -> FrameDiffusion:
  return FrameDiffusion(rngs, latent_dim=build.latent_dim(cfg),
                        **build.dynamics_sizes(cfg))


def loss(model: FrameDiffusion, batch: build.Batch, rng: jax.Array
         ) -> tuple[jax.Array, build.Metrics]:
  """MSE of the predicted next frames at every position, each noised to an
  independent level. Also reports the error at levels > 0.9, the regime of
  a rollout's first denoising step."""
  latents_BTNE, actions_BT = batch["tokens"], batch["actions"]
  now_BTNE, next_BTNE = latents_BTNE[:, :-1], latents_BTNE[:, 1:]
  noisy_BTNE, level_BT = noised(rng, next_BTNE)
  pred_BTNE = model(now_BTNE, noisy_BTNE, level_BT, actions_BT[:, :-1])
  return mse_by_level(pred_BTNE, next_BTNE, level_BT)


def next_frame(model: FrameDiffusion, history_BTNE: jax.Array,
               actions_BT: jax.Array, rng: jax.Array, options: SampleOptions
               ) -> jax.Array:
  """Latents [B, N, E] of frame T after T clean history frames, denoised
  from Gaussian noise drawn with `rng` in `options.steps` steps (the
  straight-path DDIM steps of `diffusion.next_frame`).

  `actions_BT[:, t]` is the action taken after history frame t. History
  positions see their (known) next frame at level 0; the last position
  denoises the new one. Traceable; call under jit.
  """
  b, t, n, e = history_BTNE.shape
  z_BNE = jax.random.normal(rng, (b, n, e), jnp.float32)
  levels = noise_levels(options.steps)
  for s, s_next in zip(levels[:-1], levels[1:]):
    noisy_BTNE = jnp.concatenate([history_BTNE[:, 1:], z_BNE[:, None]], 1)
    level_BT = jnp.zeros((b, t), jnp.float32).at[:, -1].set(s)
    clean_BNE = model(history_BTNE, noisy_BTNE, level_BT, actions_BT)[:, -1]
    noise_BNE = (z_BNE - (1.0 - s) * clean_BNE) / s
    z_BNE = (1.0 - s_next) * clean_BNE + s_next * noise_BNE
  return z_BNE


def features(model: FrameDiffusion, latents_BTNE: jax.Array,
             actions_BT: jax.Array) -> jax.Array:
  """The model's state [B, T, N, D] over clean frames: position t reads
  frames <= t and the action after frame t, and its target input is pure
  noise (level 1), so nothing of frame t+1 is shown to it."""
  b, t = latents_BTNE.shape[:2]
  return model.hidden(latents_BTNE, jnp.zeros_like(latents_BTNE),
                      jnp.ones((b, t), jnp.float32), actions_BT)


KIND = build.register("dynamics", build.DynamicsKind(
    "frame_diffusion", build_model, loss, next_frame=next_frame,
    codes="latents", steps_per_frame=lambda r: r.diffusion_steps,
    features=features, train_frames=lambda cfg: cfg.data.window - 1))
