"""Training objectives, one per stage.

An objective has two parts: `prepare(frozen, batch)` runs the models a stage
reads but does not train (the tokenizer, and the LAM when dynamics.actions is
"latent", for the dynamics stage) outside the gradient, and `loss(model, batch, rng) -> (loss, metrics)` is differentiated.
Batches arrive as on the host: uint8 frames, int32 actions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxworld.config import Config
from jaxworld.models import diffusion

Metrics = dict[str, jax.Array]
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
  loss: Callable[[Any, Batch, jax.Array], tuple[jax.Array, Metrics]]
  prepare: Callable[[Any, Batch], Batch] = lambda frozen, batch: batch


def to_unit_float(frames_BTHWC: jax.Array) -> jax.Array:
  return frames_BTHWC.astype(jnp.float32) / 255.0


def psnr_from_mse(mse: jax.Array) -> jax.Array:
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def tokenizer_objective(cfg: Config) -> Objective:
  """Pixel MSE of the reconstruction (FSQ needs no codebook losses)."""
  del cfg

  def loss(model, batch, rng):
    del rng
    frames_BTHWC = to_unit_float(batch["frames"])
    recon_BTHWC, _, aux = model(frames_BTHWC)
    mse = jnp.mean((recon_BTHWC - frames_BTHWC) ** 2)
    return mse, {"mse": mse, "psnr": psnr_from_mse(mse), **aux}

  return Objective(loss)


def dynamics_mask(rng: jax.Array, shape_BTN: tuple[int, int, int],
                  target_prob: float, ratio_min: float) -> jax.Array:
  """Which tokens to hide: some frames are targets, the rest stay clean.

  Frame 0 has no action leading into it and is never a target. A target
  frame hides a uniform-random fraction in [ratio_min, 1] of its tokens, so
  the model learns every stage of MaskGIT decoding, from fully masked on.
  """
  b, t, n = shape_BTN
  k_target, k_ratio, k_tokens = jax.random.split(rng, 3)
  target_BT = jax.random.bernoulli(k_target, target_prob, (b, t))
  target_BT = target_BT.at[:, 0].set(False)
  ratio_BT = jax.random.uniform(k_ratio, (b, t), minval=ratio_min, maxval=1.0)
  hide_BTN = jax.random.uniform(k_tokens, (b, t, n)) < ratio_BT[..., None]
  return hide_BTN & target_BT[..., None]


def _dynamics_inputs(cfg: Config):
  """prepare() of every dynamics kind: target codes from the frozen
  tokenizer (tokens, or a continuous tokenizer's latents) and the actions
  to condition on, real or inferred by the frozen LAM (frozen is then
  `build.FrozenModels`)."""
  latent = cfg.dynamics.actions == "latent"

  def prepare(frozen, batch):
    frames_BTHWC = to_unit_float(batch["frames"])
    tokenizer = frozen.tokenizer if latent else frozen
    actions_BT = batch["actions"]
    if latent:  # a_t is the transition t -> t+1; the last one is unused
      actions_BTm1 = frozen.lam.actions(frames_BTHWC)
      actions_BT = jnp.concatenate(
          [actions_BTm1, jnp.zeros_like(actions_BTm1[:, :1])], 1)
    return {"tokens": tokenizer.encode(frames_BTHWC), "actions": actions_BT}

  return prepare


def dynamics_objective(cfg: Config) -> Objective:
  """Cross-entropy of the hidden tokens given history, visible tokens and
  actions. The frozen tokenizer turns frames into target tokens in-step."""
  d = cfg.dynamics

  def loss(model, batch, rng):
    tokens_BTN = batch["tokens"]
    mask_BTN = dynamics_mask(rng, tokens_BTN.shape, d.target_frame_prob,
                             d.mask_ratio_min)
    logits_BTNV = model(tokens_BTN, batch["actions"], mask_BTN)
    ce_BTN = optax.softmax_cross_entropy_with_integer_labels(logits_BTNV,
                                                            tokens_BTN)
    weight_BTN = mask_BTN.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight_BTN), 1.0)
    loss = jnp.sum(ce_BTN * weight_BTN) / count
    hit_BTN = (jnp.argmax(logits_BTNV, -1) == tokens_BTN).astype(jnp.float32)
    return loss, {"masked_accuracy": jnp.sum(hit_BTN * weight_BTN) / count,
                  "mask_fraction": jnp.mean(weight_BTN)}

  return Objective(loss, _dynamics_inputs(cfg))


def autoregressive_objective(cfg: Config) -> Objective:
  """Teacher-forced next-token cross-entropy over the tokens of frames >= 1
  (frame 0 has no action leading into it; a rollout always starts from real
  context)."""

  def loss(model, batch, rng):
    del rng
    tokens_BTN = batch["tokens"]
    logits_BTNV = model(tokens_BTN, batch["actions"])[:, 1:]
    targets_BTN = tokens_BTN[:, 1:]
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits_BTNV, targets_BTN))
    accuracy = jnp.mean(
        (jnp.argmax(logits_BTNV, -1) == targets_BTN).astype(jnp.float32))
    return ce, {"token_accuracy": accuracy}

  return Objective(loss, _dynamics_inputs(cfg))


def diffusion_objective(cfg: Config) -> Objective:
  """Diffusion forcing on the continuous tokenizer's latents: an independent
  noise level per frame, MSE of the predicted clean latents."""

  def loss(model, batch, rng):
    return diffusion.loss(model, batch["tokens"], batch["actions"], rng)

  return Objective(loss, _dynamics_inputs(cfg))


def lam_objective(cfg: Config) -> Objective:
  """Next-frame pixel MSE through the latent-action bottleneck (FSQ: no
  codebook losses)."""
  del cfg

  def loss(model, batch, rng):
    del rng
    frames_BTHWC = to_unit_float(batch["frames"])
    pred_BTm1HWC, _, aux = model(frames_BTHWC)
    mse = jnp.mean((pred_BTm1HWC - frames_BTHWC[:, 1:]) ** 2)
    return mse, {"mse": mse, "psnr": psnr_from_mse(mse), **aux}

  return Objective(loss)


def for_stage(cfg: Config, stage: str) -> Objective:
  if stage == "dynamics":
    return {"maskgit": dynamics_objective,
            "autoregressive": autoregressive_objective,
            "diffusion": diffusion_objective}[cfg.dynamics.kind](cfg)
  return {"tokenizer": tokenizer_objective, "lam": lam_objective}[stage](cfg)
