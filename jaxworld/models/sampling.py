"""Sampling settings every dynamics kind's `next_frame` receives, and the
token draw the discrete kinds share.

Dimension keys: B batch, V codebook size.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxworld.config import RolloutConfig


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["temperature"],
                   meta_fields=["steps", "schedule", "top_k"])
@dataclasses.dataclass(frozen=True)
class SampleOptions:
  """How to imagine a frame. `temperature` is an array under jit (changing
  it does not recompile); the rest are static.

  steps: model passes per frame (MaskGIT refinements, diffusion denoising
    steps; the kind's `steps_per_frame` of the rollout settings).
  schedule: MaskGIT's schedule of hidden tokens.
  top_k: draw only among the k most likely tokens (0: all).
  """
  temperature: jax.Array | float = 0.0
  steps: int = 0
  schedule: str = "cosine"
  top_k: int = 0

  @classmethod
  def from_rollout(cls, r: RolloutConfig, steps: int) -> SampleOptions:
    return cls(jnp.float32(r.temperature), steps, r.mask_schedule, r.top_k)


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
