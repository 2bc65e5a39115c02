"""VQ-VAE video tokenizer on the ST backbone.

frames -> patches -> ST encoder -> latents -> FSQ -> tokens
tokens -> codes -> ST decoder -> patches -> frames

With the continuous bottleneck (`tokenizer.kind="continuous"`, for diffusion
dynamics) the "tokens" are the tanh-bounded latents [B, T, N, E] themselves.

The encoder and decoder are temporally causal, so the tokens of frame t
depend only on frames <= t and a rollout can tokenize frame by frame.

Dimension keys: B batch, T time, H/W height/width, C channels, h/w patch-grid
height/width, N = h*w tokens per frame, P = p*p*C pixels per patch, D width,
E code width (one channel per FSQ level).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.models.layers import Dense
from jaxworld.models.quantizer import FSQ, Continuous
from jaxworld.models.st_transformer import STTransformer
from jaxworld.parallel import axes


def patchify(frames_BTHWC: jax.Array, p: int) -> jax.Array:
  b, t, h, w, c = frames_BTHWC.shape
  x = frames_BTHWC.reshape(b, t, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, (h // p) * (w // p),
                                                  p * p * c)


def unpatchify(patches_BTNP: jax.Array, p: int, h: int, w: int) -> jax.Array:
  b, t, _, _ = patches_BTNP.shape
  x = patches_BTNP.reshape(b, t, h // p, w // p, p, p, -1)
  return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h, w, -1)


class VideoTokenizer(nnx.Module):
  """Video tokenizer: frames in [0, 1] <-> int tokens [B, T, N] (FSQ), or
  <-> bounded continuous latents [B, T, N, E] (`latent_dim` > 0)."""

  def __init__(self, rngs: nnx.Rngs, *, image_size: int, patch_size: int,
               fsq_levels: tuple[int, ...], max_frames: int,
               encoder: dict[str, Any], decoder: dict[str, Any],
               channels: int = 3, latent_dim: int = 0):
    self.image_size, self.patch_size = image_size, patch_size
    self.num_tokens = (image_size // patch_size) ** 2
    patch_dim = patch_size * patch_size * channels
    enc_w, dec_w = encoder["width"], decoder["width"]
    self.continuous = latent_dim > 0
    self.quantizer = Continuous(latent_dim) if self.continuous else FSQ(
        fsq_levels)
    latent_dim = self.quantizer.dim
    self.patch_in = Dense(rngs, (patch_dim,), (enc_w,), "BTNP,PD->BTND",
                          (axes.PATCH, axes.EMBED))
    self.encoder = STTransformer(rngs, num_tokens=self.num_tokens,
                                 max_frames=max_frames, **encoder)
    self.to_code = Dense(rngs, (enc_w,), (latent_dim,), "BTND,DE->BTNE",
                         (axes.EMBED, axes.LATENT))
    self.from_code = Dense(rngs, (latent_dim,), (dec_w,), "BTNE,ED->BTND",
                           (axes.LATENT, axes.EMBED))
    self.decoder = STTransformer(rngs, num_tokens=self.num_tokens,
                                 max_frames=max_frames, **decoder)
    self.patch_out = Dense(rngs, (dec_w,), (patch_dim,), "BTND,DP->BTNP",
                           (axes.EMBED, axes.PATCH))

  def latents(self, frames_BTHWC: jax.Array) -> jax.Array:
    """Frames in [0, 1] -> continuous codes [B, T, N, E] before quantization
    (also what the physics probe reads)."""
    x_BTND = self.patch_in(patchify(frames_BTHWC, self.patch_size))
    return self.to_code(self.encoder(x_BTND))

  def _decode(self, z_BTNE: jax.Array) -> jax.Array:
    patches_BTNP = self.patch_out(self.decoder(self.from_code(z_BTNE)))
    return unpatchify(patches_BTNP, self.patch_size, self.image_size,
                      self.image_size)

  def encode(self, frames_BTHWC: jax.Array) -> jax.Array:
    """float [B, T, H, W, C] in [0, 1] -> int32 tokens [B, T, N] (continuous:
    float32 latents [B, T, N, E])."""
    _, tokens_BTN, _ = self.quantizer(self.latents(frames_BTHWC))
    return tokens_BTN

  def decode(self, tokens_BTN: jax.Array) -> jax.Array:
    """int tokens [B, T, N] (continuous: latents [B, T, N, E]) -> float32
    frames [B, T, H, W, C] in [0, 1]."""
    return jnp.clip(self._decode(self.quantizer.codes(tokens_BTN)), 0.0, 1.0)

  def __call__(self, frames_BTHWC: jax.Array
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Reconstruction (unclipped), tokens and quantiser metrics."""
    zq_BTNE, tokens_BTN, aux = self.quantizer(self.latents(frames_BTHWC))
    return self._decode(zq_BTNE), tokens_BTN, aux
