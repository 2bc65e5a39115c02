"""Scaled dot-product attention, with a backward pass that is fast on CPU.

`dot_product_attention` takes `jax.nn.dot_product_attention`'s [B, L, M, K]
layout and arguments. `implementation` "xla" and "cudnn" are jax.nn's own
paths. "jaxworld" is the XLA path's math (fp32 logits and softmax,
probabilities in the values' dtype, masked logits set to a large negative
number), head-major, with its gradient written out by hand: XLA's own
gradient of jax.nn's path contracts the [L, S] probabilities and their
gradient over their major axis, and XLA:CPU materialises a transposed copy
of each, the largest arrays of a block. Here those two products are taken
against the small transposed [K, L] operands instead, which makes a
256-token spatial attention's forward and backward 1.5x as fast on CPU
(docs/benchmarks.md). `backbone.attention = "auto"` picks it on CPU and
jax.nn's XLA path elsewhere (`build.attention_kernel`).

Dimension keys: B batch, L queries, S keys, M heads, K per-head width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("xla", "cudnn", "jaxworld")


def dot_product_attention(q_BLMK: jax.Array, k_BSMK: jax.Array,
                          v_BSMK: jax.Array, *, is_causal: bool = False,
                          mask_S: jax.Array | None = None,
                          implementation: str = "xla") -> jax.Array:
  """Softmax(q k^T / sqrt(K)) v, [B, L, M, K]; `is_causal` hides keys after
  each query (aligned at the start), `mask_S` (bool [S]) hides keys. A
  masked call reads a KV cache one frame at a time: small, so cuDNN's is
  XLA's."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r}: choose "
                     f"one of {IMPLEMENTATIONS}")
  if implementation == "cudnn" and mask_S is not None:
    implementation = "xla"
  if implementation != "jaxworld":
    mask = None if mask_S is None else mask_S[None, None, None, :]
    return jax.nn.dot_product_attention(q_BLMK, k_BSMK, v_BSMK, mask=mask,
                                        is_causal=is_causal,
                                        implementation=implementation)
  seen_LS = None
  if is_causal:
    seen_LS = jnp.tril(jnp.ones((q_BLMK.shape[1], k_BSMK.shape[1]), bool))
  if mask_S is not None:
    seen_LS = (mask_S[None, :] if seen_LS is None
               else seen_LS & mask_S[None, :])
  heads_first = lambda a: a.transpose(0, 2, 1, 3)
  o_BMLK = _attention(heads_first(q_BLMK), heads_first(k_BSMK),
                      heads_first(v_BSMK), seen_LS)
  return heads_first(o_BMLK)


@jax.custom_vjp
def _attention(q_BMLK, k_BMSK, v_BMSK, seen_LS):
  return _forward(q_BMLK, k_BMSK, v_BMSK, seen_LS)[0]


def _forward(q_BMLK, k_BMSK, v_BMSK, seen_LS):
  scale = q_BMLK.shape[-1] ** -0.5
  logits_BMLS = jnp.einsum("BMLK,BMSK->BMLS", q_BMLK, k_BMSK,
                           preferred_element_type=jnp.float32) * scale
  if seen_LS is not None:
    large_negative = np.float32(-0.7 * np.finfo(np.float32).max)
    logits_BMLS = jnp.where(seen_LS[None, None], logits_BMLS,
                            large_negative)
  p_BMLS = jax.nn.softmax(logits_BMLS, axis=-1).astype(v_BMSK.dtype)
  o_BMLK = jnp.einsum("BMLS,BMSK->BMLK", p_BMLS, v_BMSK)
  return o_BMLK, (q_BMLK, k_BMSK, v_BMSK, seen_LS, p_BMLS, o_BMLK)


def _backward(residuals, do_BMLK):
  q_BMLK, k_BMSK, v_BMSK, seen_LS, p_BMLS, o_BMLK = residuals
  scale = q_BMLK.shape[-1] ** -0.5
  f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
  # dV = P^T dO, taken as (dO^T P)^T: a product with P's axes in place.
  dv_BMKS = f32("BMKL,BMLS->BMKS", do_BMLK.swapaxes(-1, -2), p_BMLS)
  dp_BMLS = f32("BMLK,BMSK->BMLS", do_BMLK, v_BMSK)
  # Softmax's gradient: P * (dP - rowsum(dO * O)); zero where masked.
  rowsum_BML1 = jnp.sum(do_BMLK.astype(jnp.float32) * o_BMLK, -1,
                        keepdims=True)
  ds_BMLS = (p_BMLS * (dp_BMLS - rowsum_BML1) * scale).astype(q_BMLK.dtype)
  dq_BMLK = f32("BMLS,BMSK->BMLK", ds_BMLS, k_BMSK)
  dk_BMKS = f32("BMKL,BMLS->BMKS", q_BMLK.swapaxes(-1, -2), ds_BMLS)
  return (dq_BMLK.astype(q_BMLK.dtype),
          dk_BMKS.swapaxes(-1, -2).astype(k_BMSK.dtype),
          dv_BMKS.swapaxes(-1, -2).astype(v_BMSK.dtype), None)


_attention.defvjp(_forward, _backward)
