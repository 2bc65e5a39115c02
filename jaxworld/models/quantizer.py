"""Finite scalar quantisation (FSQ): the VQ-VAE bottleneck without a codebook
to learn.

Each of the d = len(levels) latent channels is squashed to a bounded range
and rounded to one of `levels[i]` values (straight-through gradient); the
token is the mixed-radix number of the d digits, so V = prod(levels). Unlike
a learned codebook, FSQ cannot collapse onto a few codes and needs no
commitment loss, EMA or code restarts: on short runs a learned codebook here
collapsed to 1-2 codes on the mostly-black frames, FSQ uses hundreds
(Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Dimension keys: d latent channels (one per level); `...` any leading dims.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


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
