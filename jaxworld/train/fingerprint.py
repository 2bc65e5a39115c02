"""A fingerprint of each global batch, logged next to the loss, so that two
runs (on any process count or mesh) can be shown to have trained on the
same batches in the same order, batch for batch.

uint32 arithmetic wraps, and a wrapping sum is exact in any order, so the
value does not depend on how the batch is sharded over devices and
processes or in which order XLA reduces it; it is exact in float64 too
(metrics.jsonl).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Knuth's multiplicative hash constant: neighbouring elements get unrelated
# weights, so a shifted or reordered batch changes the sum.
_MIX = 2654435761


def _element_weights(shape: tuple[int, ...]) -> jax.Array:
  """uint32 weight of every element, a hash of its row-major index."""
  index = jnp.zeros(shape, jnp.uint32)
  for axis, size in enumerate(shape):
    index = index * jnp.uint32(size) + jax.lax.broadcasted_iota(
        jnp.uint32, shape, axis)
  return index * jnp.uint32(_MIX) + jnp.uint32(1)


@jax.jit
def batch_fingerprint(batch: dict[str, jax.Array]) -> jax.Array:
  """uint32 scalar of a global batch (`frames`, `actions`, ...)."""
  total = jnp.uint32(0)
  for k, name in enumerate(sorted(batch)):
    x = batch[name]
    weights = _element_weights(x.shape) + jnp.uint32(k)
    total = total + jnp.sum(x.astype(jnp.uint32) * weights, dtype=jnp.uint32)
  return total
