"""Vector quantiser with a straight-through estimator.

Codes and inputs are L2-normalised before the nearest-code lookup (cosine
similarity): this keeps the codebook well used without EMA updates or
restarts, which matters for short training runs.

Dimension keys: V codebook size, E code width; `...` any leading dims.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.models.layers import make_param
from jaxworld.parallel import axes


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)


class VectorQuantizer(nnx.Module):
  """Nearest-code quantisation of [..., E] vectors into V codes."""

  def __init__(self, rngs: nnx.Rngs, codebook_size: int, code_dim: int):
    self.codebook_VE = make_param(
        rngs, jax.nn.initializers.normal(1.0), (codebook_size, code_dim),
        (axes.CODEBOOK, axes.LATENT))

  def codes(self, indices: jax.Array) -> jax.Array:
    """int [...] -> float32 [..., E] (normalised code vectors)."""
    return _l2_normalize(self.codebook_VE[...])[indices]

  def __call__(self, z: jax.Array, commitment_weight: float
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Returns (quantised z with straight-through gradient, indices, aux).

    aux holds `vq_loss` (codebook + weighted commitment loss) and
    `codebook_perplexity` (effective number of codes used in the batch).
    """
    z = _l2_normalize(z.astype(jnp.float32))
    codebook_VE = _l2_normalize(self.codebook_VE[...])
    indices = jnp.argmax(jnp.einsum("...E,VE->...V", z, codebook_VE), -1)
    zq = codebook_VE[indices]
    codebook_loss = jnp.mean((jax.lax.stop_gradient(z) - zq) ** 2)
    commitment_loss = jnp.mean((z - jax.lax.stop_gradient(zq)) ** 2)
    zq_st = z + jax.lax.stop_gradient(zq - z)
    counts_V = jnp.bincount(indices.reshape(-1),
                            length=codebook_VE.shape[0]).astype(jnp.float32)
    probs_V = counts_V / jnp.sum(counts_V)
    perplexity = jnp.exp(-jnp.sum(probs_V * jnp.log(probs_V + 1e-10)))
    aux = {"vq_loss": codebook_loss + commitment_weight * commitment_loss,
           "codebook_perplexity": perplexity}
    return zq_st, indices.astype(jnp.int32), aux
