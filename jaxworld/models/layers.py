"""Building blocks with logical axis names on every parameter.

Dimension keys: B batch, L sequence (tokens attended over), D width, F MLP
hidden width, N heads, K per-head width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.parallel import axes

Initializer = Callable[..., jax.Array]


def make_param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int],
               names: Sequence[str | None]) -> nnx.Param:
  """A float32 parameter tagged with its logical axis names.

  Sharding is applied by the trainer (jit out_shardings from the rules), not
  eagerly here, so models can be built abstractly and on any mesh.
  """
  assert len(shape) == len(names), (shape, names)
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32),
                   out_sharding=tuple(names), eager_sharding=False)


class Dense(nnx.Module):
  """x[..., in] @ W[in, *out] + b[*out]; `spec` is the einsum of the weight.

  E.g. `Dense(rngs, (D,), (N, K), "...D,DNK->...NK", (EMBED, HEADS, KV))`.
  """

  def __init__(self, rngs: nnx.Rngs, in_shape: Sequence[int],
               out_shape: Sequence[int], spec: str, names: Sequence[str | None],
               use_bias: bool = True, dtype: jnp.dtype = jnp.float32,
               init: Initializer | None = None):
    fan_in = 1
    for s in in_shape:
      fan_in *= s
    init = init or jax.nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=tuple(range(len(in_shape))),
        out_axis=tuple(range(len(in_shape), len(in_shape) + len(out_shape))))
    self.spec, self.dtype = spec, dtype
    self.kernel = make_param(rngs, init, (*in_shape, *out_shape), names)
    self.bias = (make_param(rngs, jax.nn.initializers.zeros, out_shape,
                            names[len(in_shape):]) if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.einsum(self.spec, x.astype(self.dtype),
                   self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      bias = self.bias[...].astype(self.dtype)
      y = y + bias.reshape((1,) * (y.ndim - bias.ndim) + bias.shape)
    return y


class RMSNorm(nnx.Module):
  """RMS normalisation over the last axis, computed in float32."""

  def __init__(self, rngs: nnx.Rngs, dim: int, name: str, eps: float = 1e-6):
    self.scale = make_param(rngs, jax.nn.initializers.ones, (dim,), (name,))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    scale = self.scale[...].reshape((1,) * (x.ndim - 1) + (-1,))
    return (x32 * scale).astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head self-attention with QK-norm over [B, L, D] inputs.

  Uses `jax.nn.dot_product_attention`, which dispatches to cuDNN flash
  attention on GPUs and a fused XLA kernel elsewhere.
  """

  def __init__(self, rngs: nnx.Rngs, width: int, num_heads: int,
               dtype: jnp.dtype):
    head_dim = width // num_heads
    qkv_names = (axes.EMBED, axes.HEADS, axes.KV)
    self.q = Dense(rngs, (width,), (num_heads, head_dim), "BLD,DNK->BLNK",
                   qkv_names, use_bias=False, dtype=dtype)
    self.k = Dense(rngs, (width,), (num_heads, head_dim), "BLD,DNK->BLNK",
                   qkv_names, use_bias=False, dtype=dtype)
    self.v = Dense(rngs, (width,), (num_heads, head_dim), "BLD,DNK->BLNK",
                   qkv_names, use_bias=False, dtype=dtype)
    self.out = Dense(rngs, (num_heads, head_dim), (width,), "BLNK,NKD->BLD",
                     (axes.HEADS, axes.KV, axes.EMBED), dtype=dtype)
    # QK-norm keeps attention logits bounded, which lets us train at higher
    # learning rates without loss spikes.
    self.q_norm = RMSNorm(rngs, head_dim, axes.KV)
    self.k_norm = RMSNorm(rngs, head_dim, axes.KV)

  def qkv(self, x_BLD: jax.Array
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalised queries, keys and values [B, L, N, K]."""
    return (self.q_norm(self.q(x_BLD)), self.k_norm(self.k(x_BLD)),
            self.v(x_BLD))

  def attend(self, q_BLNK: jax.Array, k_BSNK: jax.Array, v_BSNK: jax.Array,
             is_causal: bool = False, mask_S: jax.Array | None = None
             ) -> jax.Array:
    """Output [B, L, D] of queries over S keys; `mask_S` (bool [S]) hides
    keys, e.g. the unfilled slots of a KV cache."""
    mask = None if mask_S is None else mask_S[None, None, None, :]
    o_BLNK = jax.nn.dot_product_attention(q_BLNK, k_BSNK, v_BSNK, mask=mask,
                                          is_causal=is_causal)
    return self.out(o_BLNK)

  def __call__(self, x_BLD: jax.Array, is_causal: bool) -> jax.Array:
    return self.attend(*self.qkv(x_BLD), is_causal=is_causal)


class MLP(nnx.Module):
  """Two-layer GELU MLP."""

  def __init__(self, rngs: nnx.Rngs, width: int, hidden: int,
               dtype: jnp.dtype):
    self.up = Dense(rngs, (width,), (hidden,), "...D,DF->...F",
                    (axes.EMBED, axes.MLP), dtype=dtype)
    self.down = Dense(rngs, (hidden,), (width,), "...F,FD->...D",
                      (axes.MLP, axes.EMBED), dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.gelu(self.up(x)))


def padded_rows(size: int) -> int:
  """Rows of a vocab table holding `size` entries, padded to a multiple of
  128 so the vocab axis splits evenly over any tensor-parallel size <= 128."""
  return -(-size // 128) * 128


def action_into_frame(actions_BT: jax.Array, no_action: int) -> jax.Array:
  """[B, T]: the action leading into each frame, from actions[:, t] taken
  after frame t; frame 0 gets `no_action`."""
  return jnp.concatenate(
      [jnp.full_like(actions_BT[:, :1], no_action), actions_BT[:, :-1]], 1)
