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

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxworld.config import Config
from jaxworld.errors import JaxWorldError
from jaxworld.models import build
from jaxworld.models.st_transformer import STTransformer, dense

# ---------------------------------------------------------- bottlenecks
# FSQ, finite scalar quantisation: the VQ-VAE bottleneck without a codebook
# to learn. Each of the d = len(levels) latent channels is squashed to a
# bounded range and rounded to one of `levels[i]` values (straight-through
# gradient); the token is the mixed-radix number of the d digits, so V =
# prod(levels). Unlike a learned codebook, FSQ cannot collapse onto a few
# codes and needs no commitment loss, EMA or code restarts: on short runs a
# learned codebook here collapsed to 1-2 codes on the mostly-black frames,
# FSQ uses hundreds (Mentzer et al. 2023, "Finite Scalar Quantization:
# VQ-VAE Made Simple"). Dimension keys there: d latent channels (one per
# level), `...` any leading dims.


class FSQ:
  """Stateless quantiser of [..., d] latents into prod(levels) tokens."""

  def __init__(self, levels: Sequence[int]):
    if any(level < 2 for level in levels):
      raise ValueError(f"FSQ levels must be >= 2, got {tuple(levels)}")
    self.levels = tuple(int(level) for level in levels)
    self.codebook_size = int(np.prod(self.levels))
    self._levels_d = np.asarray(self.levels, np.float32)
    self._basis_d = np.cumprod((1,) + self.levels[:-1]).astype(np.int32)
    self._half_width_d = (self._levels_d // 2).astype(np.float32)

  @property
  def dim(self) -> int:
    return len(self.levels)

  def _bound(self, z: jax.Array) -> jax.Array:
    """Maps R -> an interval that rounds to exactly `levels` integers."""
    half_l = (self._levels_d - 1) * (1 + 1e-3) / 2
    offset = np.where(self._levels_d % 2 == 1, 0.0, 0.5).astype(np.float32)
    shift = np.tan(offset / half_l).astype(np.float32)
    return (jnp.tanh(z + _lead(shift, z)) * _lead(half_l, z)
            - _lead(offset, z))

  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
    """(codes in [-1, 1] with straight-through gradient, int32 tokens, aux).

    aux holds `codebook_perplexity`: the effective number of tokens used.
    """
    bounded = self._bound(z.astype(jnp.float32))
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    half_width = _lead(self._half_width_d, z)
    codes = rounded / half_width
    digits = jnp.round(jax.lax.stop_gradient(rounded) + half_width)
    tokens = jnp.sum(digits.astype(jnp.int32) * _lead(self._basis_d, z), -1)
    counts_V = jnp.bincount(tokens.reshape(-1), length=self.codebook_size)
    probs_V = counts_V.astype(jnp.float32) / jnp.maximum(jnp.sum(counts_V), 1)
    perplexity = jnp.exp(-jnp.sum(probs_V * jnp.log(probs_V + 1e-10)))
    return codes, tokens, {"codebook_perplexity": perplexity}

  def codes(self, tokens: jax.Array) -> jax.Array:
    """int tokens [...] -> codes [..., d] in [-1, 1]."""
    t = tokens[..., None]
    digits = (t // _lead(self._basis_d, t)) % _lead(
        self._levels_d.astype(np.int32), t)
    half_width = _lead(self._half_width_d, t)
    return (digits.astype(jnp.float32) - half_width) / half_width


def _lead(c: np.ndarray, like: jax.Array) -> np.ndarray:
  """A per-channel constant shaped to broadcast against `like` [..., d]."""
  return c.reshape((1,) * (like.ndim - 1) + (-1,))


class Continuous:
  """The continuous bottleneck (`tokenizer.kind="continuous"`): latents
  squashed into [-1, 1] by tanh, not rounded. Same interface as FSQ, with
  the bounded latents [..., d] themselves as the "tokens", so a diffusion
  model can denoise them at a known scale."""

  def __init__(self, dim: int):
    if dim < 1:
      raise ValueError(f"continuous latent dim must be >= 1, got {dim}")
    self.dim = int(dim)

  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
    codes = jnp.tanh(z.astype(jnp.float32))
    return codes, codes, {"latent_rms": jnp.sqrt(jnp.mean(codes ** 2))}

  def codes(self, tokens: jax.Array) -> jax.Array:
    return tokens.astype(jnp.float32)


# ---------------------------------------------------------- the tokenizer


def to_unit_float(frames_BTHWC: jax.Array) -> jax.Array:
  """uint8 frames -> float32 in [0, 1]."""
  return frames_BTHWC.astype(jnp.float32) / 255.0


def psnr_from_mse(mse: jax.Array) -> jax.Array:
  """PSNR in dB of frames in [0, 1] from their mean squared error."""
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


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
    self.patch_in = dense(rngs, "BTNP,PD->BTND", P=patch_dim, D=enc_w)
    self.encoder = STTransformer(rngs, num_tokens=self.num_tokens,
                                 max_frames=max_frames, **encoder)
    self.to_code = dense(rngs, "BTND,DE->BTNE", D=enc_w, E=latent_dim)
    self.from_code = dense(rngs, "BTNE,ED->BTND", D=dec_w, E=latent_dim)
    self.decoder = STTransformer(rngs, num_tokens=self.num_tokens,
                                 max_frames=max_frames, **decoder)
    self.patch_out = dense(rngs, "BTND,DP->BTNP", P=patch_dim, D=dec_w)

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


def build_fsq(cfg: Config, rngs: nnx.Rngs) -> VideoTokenizer:
  return VideoTokenizer(rngs, **build.frame_model_sizes(cfg, cfg.tokenizer))


def build_continuous(cfg: Config, rngs: nnx.Rngs) -> VideoTokenizer:
  return VideoTokenizer(rngs, latent_dim=cfg.tokenizer.latent_dim,
                        **build.frame_model_sizes(cfg, cfg.tokenizer))


def loss(model: VideoTokenizer, batch: build.Batch, rng: jax.Array
         ) -> tuple[jax.Array, build.Metrics]:
  """Pixel MSE of the reconstruction (FSQ needs no codebook losses)."""
  del rng
  frames_BTHWC = to_unit_float(batch["frames"])
  recon_BTHWC, _, aux = model(frames_BTHWC)
  mse = jnp.mean((recon_BTHWC - frames_BTHWC) ** 2)
  return mse, {"mse": mse, "psnr": psnr_from_mse(mse), **aux}


class PixelPatches(nnx.Module):
  """The identity tokenizer (`tokenizer.kind="patches"`): a frame's latents
  are its own pixels, patch by patch, scaled to [-1, 1]: [B, T, N, p*p*C].

  Nothing to train and nothing lost: dynamics over these latents model
  pixels (as DIAMOND does), so no reconstruction ceiling caps them, a static
  background stays exact, and a small object is not blurred away by a
  bottleneck. The cost is wide tokens (192 channels at 8x8 RGB), which the
  dynamics model's input and output projections absorb.
  """

  def __init__(self, *, image_size: int, patch_size: int, channels: int = 3):
    self.image_size, self.patch_size = image_size, patch_size
    self.num_tokens = (image_size // patch_size) ** 2
    self.latent_dim = patch_size * patch_size * channels

  def latents(self, frames_BTHWC: jax.Array) -> jax.Array:
    return patchify(frames_BTHWC.astype(jnp.float32), self.patch_size) * 2 - 1

  def encode(self, frames_BTHWC: jax.Array) -> jax.Array:
    """Frames in [0, 1] -> latents [B, T, N, E] in [-1, 1]."""
    return self.latents(frames_BTHWC)

  def decode(self, latents_BTNE: jax.Array) -> jax.Array:
    """Latents [B, T, N, E] -> frames in [0, 1] (clipped)."""
    frames_BTHWC = unpatchify((latents_BTNE.astype(jnp.float32) + 1) / 2,
                              self.patch_size, self.image_size,
                              self.image_size)
    return jnp.clip(frames_BTHWC, 0.0, 1.0)

  def __call__(self, frames_BTHWC: jax.Array
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    latents_BTNE = self.encode(frames_BTHWC)
    return self.decode(latents_BTNE), latents_BTNE, {}


def build_patches(cfg: Config, rngs: nnx.Rngs) -> PixelPatches:
  del rngs
  return PixelPatches(image_size=cfg.world.image_size,
                      patch_size=cfg.tokenizer.patch_size)


def _untrainable(model, batch, rng):
  raise JaxWorldError(
      "tokenizer.kind=\"patches\" has no parameters, so there is nothing to "
      "train. Use it directly: train the dynamics with tokenizer.kind=patches "
      "and no dynamics.tokenizer_workdir (configs/dynamics_pixels.toml).")


# Discrete tokens (for maskgit / autoregressive dynamics) and continuous
# latents (for diffusion dynamics): one model, two bottlenecks; and pixel
# patches, no model at all.
FSQ_KIND = build.register("tokenizer", build.TokenizerKind(
    "fsq", build_fsq, loss, codes="tokens"))
CONTINUOUS_KIND = build.register("tokenizer", build.TokenizerKind(
    "continuous", build_continuous, loss, codes="latents",
    latent_dim=lambda cfg: cfg.tokenizer.latent_dim))
PATCHES_KIND = build.register("tokenizer", build.TokenizerKind(
    "patches", build_patches, _untrainable, codes="latents",
    latent_dim=lambda cfg: 3 * cfg.tokenizer.patch_size ** 2, trained=False,
    latent_bounds=(-1.0, 1.0)))
