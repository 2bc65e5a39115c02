"""Latent action model (LAM): a discrete action between consecutive frames,
learned from video alone (Genie).

Encoder: frames -> patches -> causal ST encoder; the output of frame t+1
(which sees frames <= t+1) is pooled over its tokens (mean and max: the agent
covers a few of 64 patches, which a mean alone dilutes) and projected to a
few channels z_t, quantised by FSQ to one of A = prod(levels) codes: latent
action a_t. Decoder: the causal ST decoder reads the patches of frames <= t
plus the code of a_t on frame t and predicts frame t+1's pixels. The
bottleneck (log2 A bits per transition) leaves room only for what the past
frames cannot predict: on the embedded world, mostly the agent's move.

FSQ rather than a learned codebook: a cosine-similarity VQ with codebook,
commitment and usage-entropy losses collapsed to one code within 100 steps
here (see docs/design-notes.md), as the tokenizer's did; FSQ's fixed grid has
no codebook to collapse.

Dimension keys: B batch, T time, Tm1 = T-1 transitions, H/W/C frame
height/width/channels, N tokens per frame, P pixels per patch, D width,
E code width (one channel per FSQ level), A latent actions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.config import Config
from jaxworld.models import build
from jaxworld.models.st_transformer import STTransformer, dense
from jaxworld.models.tokenizer import (FSQ, patchify, psnr_from_mse,
                                       to_unit_float, unpatchify)


class LatentActionModel(nnx.Module):
  """frames [B, T, H, W, C] in [0, 1] -> latent actions [B, T-1] and the
  predicted next frames [B, T-1, H, W, C]."""

  def __init__(self, rngs: nnx.Rngs, *, image_size: int, patch_size: int,
               fsq_levels: tuple[int, ...], max_frames: int,
               encoder: dict[str, Any], decoder: dict[str, Any],
               channels: int = 3):
    self.image_size, self.patch_size = image_size, patch_size
    num_tokens = (image_size // patch_size) ** 2
    patch_dim = patch_size * patch_size * channels
    enc_w, dec_w = encoder["width"], decoder["width"]
    self.quantizer = FSQ(fsq_levels)
    code_dim = self.quantizer.dim
    # The encoder reads each frame and its change from the previous one.
    self.enc_patch_in = dense(rngs, "BTNP,PD->BTND", P=2 * patch_dim,
                              D=enc_w)
    self.encoder = STTransformer(rngs, num_tokens=num_tokens,
                                 max_frames=max_frames, **encoder)
    self.to_code = dense(rngs, "BTD,DE->BTE", D=2 * enc_w, E=code_dim)
    self.dec_patch_in = dense(rngs, "BTNP,PD->BTND", P=patch_dim, D=dec_w)
    self.from_code = dense(rngs, "BTE,ED->BTD", D=dec_w, E=code_dim)
    self.decoder = STTransformer(rngs, num_tokens=num_tokens,
                                 max_frames=max_frames, **decoder)
    self.patch_out = dense(rngs, "BTND,DP->BTNP", P=patch_dim, D=dec_w)

  def latents(self, frames_BTHWC: jax.Array) -> jax.Array:
    """Code vectors [B, T-1, E] of the T-1 transitions, before FSQ."""
    change_BTHWC = frames_BTHWC - jnp.concatenate(
        [frames_BTHWC[:, :1], frames_BTHWC[:, :-1]], 1)
    x_BTND = self.enc_patch_in(patchify(
        jnp.concatenate([frames_BTHWC, change_BTHWC], -1), self.patch_size))
    h_BTND = self.encoder(x_BTND)
    pooled_BTD = jnp.concatenate([jnp.mean(h_BTND, 2), jnp.max(h_BTND, 2)],
                                 -1)
    z_BTm1E = self.to_code(pooled_BTD[:, 1:])
    # Unit RMS: the code cannot drift into FSQ's flat tanh tails, where on
    # the first runs it sat on one corner code with no gradient to leave.
    return z_BTm1E * jax.lax.rsqrt(jnp.mean(z_BTm1E * z_BTm1E, -1,
                                            keepdims=True) + 1e-6)

  def codes(self, actions: jax.Array) -> jax.Array:
    """int latent actions [...] -> their code vectors [..., E]."""
    return self.quantizer.codes(actions)

  def predict(self, frames_BTHWC: jax.Array, zq_BTm1E: jax.Array
              ) -> jax.Array:
    """Frames 1..T-1 [B, T-1, H, W, C] predicted from frames 0..T-2 and the
    codes of the transitions (unclipped)."""
    past_BTm1HWC = frames_BTHWC[:, :-1]
    x_BTND = self.dec_patch_in(patchify(past_BTm1HWC, self.patch_size))
    x_BTND = x_BTND + self.from_code(zq_BTm1E)[:, :, None]
    patches_BTNP = self.patch_out(self.decoder(x_BTND))
    # A change to frame t: copying is free, so the whole loss is about what
    # moved, where the agent's move is a larger share than in raw pixels.
    return past_BTm1HWC + unpatchify(patches_BTNP, self.patch_size,
                                     self.image_size, self.image_size)

  def actions(self, frames_BTHWC: jax.Array) -> jax.Array:
    """Latent actions [B, T-1]: int in [0, A) for each transition."""
    _, actions_BTm1, _ = self.quantizer(self.latents(frames_BTHWC))
    return actions_BTm1

  def __call__(self, frames_BTHWC: jax.Array
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(predicted frames 1..T-1, latent actions [B, T-1], FSQ metrics)."""
    zq_BTm1E, actions_BTm1, aux = self.quantizer(self.latents(frames_BTHWC))
    return self.predict(frames_BTHWC, zq_BTm1E), actions_BTm1, aux


def build_model(cfg: Config, rngs: nnx.Rngs) -> LatentActionModel:
  return LatentActionModel(rngs, **build.frame_model_sizes(cfg, cfg.lam))


def loss(model: LatentActionModel, batch: build.Batch, rng: jax.Array
         ) -> tuple[jax.Array, build.Metrics]:
  """Next-frame pixel MSE through the latent-action bottleneck (FSQ: no
  codebook losses)."""
  del rng
  frames_BTHWC = to_unit_float(batch["frames"])
  pred_BTm1HWC, _, aux = model(frames_BTHWC)
  mse = jnp.mean((pred_BTm1HWC - frames_BTHWC[:, 1:]) ** 2)
  return mse, {"mse": mse, "psnr": psnr_from_mse(mse), **aux}


KIND = build.register("lam", build.ModelKind("lam", build_model, loss))
