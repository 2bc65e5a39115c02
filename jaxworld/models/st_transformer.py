"""Spatiotemporal (ST) transformer: the one backbone every model builds on.

Each block: spatial attention among the N tokens of one frame, causal temporal
attention across the T frames at one token position, then an MLP; pre-norm
residuals throughout. Outputs at frame t depend only on inputs at frames <= t.

Dimension keys: B batch, T time, N tokens per frame, D width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.models.layers import MLP, Attention, RMSNorm, make_param
from jaxworld.parallel import axes
from jaxworld.parallel.activations import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Named remat policies selectable from config (`backbone.remat`).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# Activation layouts [B, T, N, D] / [B, N, T, D] in logical names.
FRAME_LAYOUT = (axes.BATCH, axes.FRAMES, None, None)
TOKEN_LAYOUT = (axes.BATCH, axes.TOKENS, None, None)


class STBlock(nnx.Module):
  """Spatial attention, causal temporal attention, MLP."""

  def __init__(self, rngs: nnx.Rngs, width: int, num_heads: int,
               mlp_ratio: int, dtype: jnp.dtype):
    self.spatial_norm = RMSNorm(rngs, width, axes.EMBED)
    self.spatial_attn = Attention(rngs, width, num_heads, dtype)
    self.temporal_norm = RMSNorm(rngs, width, axes.EMBED)
    self.temporal_attn = Attention(rngs, width, num_heads, dtype)
    self.mlp_norm = RMSNorm(rngs, width, axes.EMBED)
    self.mlp = MLP(rngs, width, mlp_ratio * width, dtype)

  def __call__(self, x_BTND: jax.Array) -> jax.Array:
    # Spatial attention and the MLP work frame by frame, temporal attention
    # token position by token position: under sequence parallelism the
    # first split frames, the second token positions, and the switch between
    # the two layouts is one all-to-all each way (docs/scaling.md).
    b, t, n, d = x_BTND.shape
    x_BTND = constrain(x_BTND, FRAME_LAYOUT)
    h_BtND = self.spatial_norm(x_BTND).reshape(b * t, n, d)
    x_BTND = x_BTND + self.spatial_attn(h_BtND, is_causal=False).reshape(
        b, t, n, d)
    h_BNTD = constrain(self.temporal_norm(x_BTND).transpose(0, 2, 1, 3),
                       TOKEN_LAYOUT)
    o_BNTD = self.temporal_attn(h_BNTD.reshape(b * n, t, d),
                                is_causal=True).reshape(b, n, t, d)
    o_BTND = constrain(o_BNTD, TOKEN_LAYOUT).transpose(0, 2, 1, 3)
    x_BTND = constrain(x_BTND + o_BTND, FRAME_LAYOUT)
    return x_BTND + self.mlp(self.mlp_norm(x_BTND))


class STTransformer(nnx.Module):
  """A stack of ST blocks run under `nnx.scan` (one compiled block).

  Adds learned spatial ([N, D]) and temporal ([T_max, D]) position embeddings
  to the input and normalises the output.
  """

  def __init__(self, rngs: nnx.Rngs, *, width: int, depth: int,
               num_heads: int, mlp_ratio: int, num_tokens: int,
               max_frames: int, remat: str = "none", dtype: str = "float32"):
    compute_dtype = DTYPES[dtype]
    self.remat, self.dtype = remat, compute_dtype
    init = jax.nn.initializers.normal(0.02)
    self.spatial_pos = make_param(rngs, init, (num_tokens, width),
                                  (axes.POSITION, axes.EMBED))
    self.temporal_pos = make_param(rngs, init, (max_frames, width),
                                   (axes.POSITION, axes.EMBED))

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
    def make_blocks(rngs: nnx.Rngs) -> STBlock:
      return STBlock(rngs, width, num_heads, mlp_ratio, compute_dtype)

    self.blocks = make_blocks(rngs)
    self.final_norm = RMSNorm(rngs, width, axes.EMBED)

  def __call__(self, x_BTND: jax.Array) -> jax.Array:
    t = x_BTND.shape[1]
    if t > self.temporal_pos.shape[0]:
      raise ValueError(f"{t} frames exceed the backbone's max_frames="
                       f"{self.temporal_pos.shape[0]}")
    x_BTND = (x_BTND + self.spatial_pos[...][None, None]
              + self.temporal_pos[...][None, :t, None]).astype(self.dtype)

    def apply_block(x: jax.Array, block: STBlock) -> jax.Array:
      return block(x)

    if self.remat != "none":
      apply_block = nnx.remat(apply_block, policy=REMAT_POLICIES[self.remat])

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
              transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
    def run(x: jax.Array, block: STBlock) -> jax.Array:
      return apply_block(x, block)

    return self.final_norm(run(x_BTND, self.blocks)).astype(jnp.float32)
