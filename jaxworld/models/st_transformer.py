"""Spatiotemporal (ST) transformer: the one backbone every model builds on.

Each block: spatial attention among the N tokens of one frame, causal temporal
attention across the T frames at one token position, then an MLP; pre-norm
residuals throughout. Outputs at frame t depend only on inputs at frames <= t.

With `token_causal=True` (autoregressive dynamics) the first attention of a
block instead runs over all T*N tokens in raster order (frame by frame, token
by token), causally: output (t, n) then depends only on inputs at raster
positions <= (t, n), and `prefill` / `decode` run it one token at a time with
a KV cache.

Dimension keys: B batch, T time, N tokens per frame, D width, L = T*N raster
positions, H heads, K per-head width.
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
               mlp_ratio: int, dtype: jnp.dtype, token_causal: bool = False):
    self.token_causal = token_causal
    self.spatial_norm = RMSNorm(rngs, width, axes.EMBED)
    self.spatial_attn = Attention(rngs, width, num_heads, dtype)
    self.temporal_norm = RMSNorm(rngs, width, axes.EMBED)
    self.temporal_attn = Attention(rngs, width, num_heads, dtype)
    self.mlp_norm = RMSNorm(rngs, width, axes.EMBED)
    self.mlp = MLP(rngs, width, mlp_ratio * width, dtype)

  def __call__(self, x_BTND: jax.Array, return_kv: bool = False):
    """[B, T, N, D] -> [B, T, N, D]; with `return_kv` also the keys and
    values of both attentions (what `decode` caches)."""
    # Spatial attention and the MLP work frame by frame, temporal attention
    # token position by token position: under sequence parallelism the
    # first split frames, the second token positions, and the switch between
    # the two layouts is one all-to-all each way (docs/scaling.md).
    b, t, n, d = x_BTND.shape
    x_BTND = constrain(x_BTND, FRAME_LAYOUT)
    h_BTND = self.spatial_norm(x_BTND)
    if self.token_causal:  # one raster sequence of L = T*N tokens
      q, k_s, v_s = self.spatial_attn.qkv(h_BTND.reshape(b, t * n, d))
    else:
      q, k_s, v_s = self.spatial_attn.qkv(h_BTND.reshape(b * t, n, d))
    x_BTND = x_BTND + self.spatial_attn.attend(
        q, k_s, v_s, is_causal=self.token_causal).reshape(b, t, n, d)
    h_BNTD = constrain(self.temporal_norm(x_BTND).transpose(0, 2, 1, 3),
                       TOKEN_LAYOUT)
    q, k_t, v_t = self.temporal_attn.qkv(h_BNTD.reshape(b * n, t, d))
    o_BNTD = self.temporal_attn.attend(q, k_t, v_t, is_causal=True).reshape(
        b, n, t, d)
    o_BTND = constrain(o_BNTD, TOKEN_LAYOUT).transpose(0, 2, 1, 3)
    x_BTND = constrain(x_BTND + o_BTND, FRAME_LAYOUT)
    x_BTND = x_BTND + self.mlp(self.mlp_norm(x_BTND))
    if not return_kv:
      return x_BTND
    to_BTNHK = lambda a: a.reshape(b, n, t, *a.shape[2:]).transpose(
        0, 2, 1, 3, 4)
    return x_BTND, {"sk": k_s.reshape(b, t * n, *k_s.shape[2:]),
                    "sv": v_s.reshape(b, t * n, *v_s.shape[2:]),
                    "tk": to_BTNHK(k_t), "tv": to_BTNHK(v_t)}

  def decode(self, x_BD: jax.Array, cache: dict[str, jax.Array],
             t: jax.Array, n: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token at raster position (t, n) of a token-causal block, given
    the cached keys/values of every earlier position; returns its output
    and the cache with its own keys/values written in."""
    num_tokens = cache["tk"].shape[2]
    pos = t * num_tokens + n
    q, k, v = self.spatial_attn.qkv(self.spatial_norm(x_BD)[:, None])
    cache = dict(cache)
    cache["sk"] = jax.lax.dynamic_update_slice(cache["sk"], k, (0, pos, 0, 0))
    cache["sv"] = jax.lax.dynamic_update_slice(cache["sv"], v, (0, pos, 0, 0))
    seen_S = jnp.arange(cache["sk"].shape[1]) <= pos
    x_BD = x_BD + self.spatial_attn.attend(q, cache["sk"], cache["sv"],
                                           mask_S=seen_S)[:, 0]
    q, k, v = self.temporal_attn.qkv(self.temporal_norm(x_BD)[:, None])
    for name, new in (("tk", k), ("tv", v)):
      cache[name] = jax.lax.dynamic_update_slice(
          cache[name], new[:, None], (0, t, n, 0, 0))
    column = lambda a: jax.lax.dynamic_index_in_dim(a, n, 2, keepdims=False)
    seen_T = jnp.arange(cache["tk"].shape[1]) <= t
    x_BD = x_BD + self.temporal_attn.attend(
        q, column(cache["tk"]), column(cache["tv"]), mask_S=seen_T)[:, 0]
    return x_BD + self.mlp(self.mlp_norm(x_BD)), cache


class STTransformer(nnx.Module):
  """A stack of ST blocks run under `nnx.scan` (one compiled block).

  Adds learned spatial ([N, D]) and temporal ([T_max, D]) position embeddings
  to the input and normalises the output.
  """

  def __init__(self, rngs: nnx.Rngs, *, width: int, depth: int,
               num_heads: int, mlp_ratio: int, num_tokens: int,
               max_frames: int, remat: str = "none", dtype: str = "float32",
               token_causal: bool = False):
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
      return STBlock(rngs, width, num_heads, mlp_ratio, compute_dtype,
                     token_causal)

    self.blocks = make_blocks(rngs)
    self.final_norm = RMSNorm(rngs, width, axes.EMBED)

  def _embed(self, x_BTND: jax.Array) -> jax.Array:
    t = x_BTND.shape[1]
    if t > self.temporal_pos.shape[0]:
      raise ValueError(f"{t} frames exceed the backbone's max_frames="
                       f"{self.temporal_pos.shape[0]}")
    return (x_BTND + self.spatial_pos[...][None, None]
            + self.temporal_pos[...][None, :t, None]).astype(self.dtype)

  def __call__(self, x_BTND: jax.Array) -> jax.Array:
    x_BTND = self._embed(x_BTND)

    def apply_block(x: jax.Array, block: STBlock) -> jax.Array:
      return block(x)

    if self.remat != "none":
      apply_block = nnx.remat(apply_block, policy=REMAT_POLICIES[self.remat])

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
              transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
    def run(x: jax.Array, block: STBlock) -> jax.Array:
      return apply_block(x, block)

    return self.final_norm(run(x_BTND, self.blocks)).astype(jnp.float32)

  def prefill(self, x_BTND: jax.Array, capacity: int
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Forward pass over T known frames that also returns every layer's
    keys/values, padded to `capacity` frames: the KV cache `decode` extends.
    Cache arrays: sk/sv [layers, B, capacity*N, H, K], tk/tv [layers, B,
    capacity, N, H, K]."""
    b, t, n, _ = x_BTND.shape

    # Plain lax.scan over the split layers (not nnx.scan), so that sampling
    # code may call this inside its own jax transforms.
    graphdef, layers = nnx.split(self.blocks)

    def run(x, layer):
      return nnx.merge(graphdef, layer)(x, return_kv=True)

    y_BTND, kv = jax.lax.scan(run, self._embed(x_BTND), layers)
    pad_frames = capacity - t
    kv = {k: jnp.pad(v, [(0, 0)] * 2 + [(0, pad_frames * (n if k[0] == "s"
                                                            else 1))]
                     + [(0, 0)] * (v.ndim - 3)) for k, v in kv.items()}
    return self.final_norm(y_BTND).astype(jnp.float32), kv

  def decode(self, x_BD: jax.Array, cache: dict[str, jax.Array],
             t: jax.Array, n: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Output [B, D] of the token at raster position (t, n), reading and
    extending the cache of `prefill` (a token-causal backbone only)."""
    assert self.blocks.token_causal, "decode needs token_causal=True"
    x_BD = (x_BD + self.spatial_pos[...][n][None]
            + self.temporal_pos[...][t][None]).astype(self.dtype)

    graphdef, layers = nnx.split(self.blocks)

    def run(x, layer_and_cache):
      layer, layer_cache = layer_and_cache
      return nnx.merge(graphdef, layer).decode(x, layer_cache, t, n)

    y_BD, cache = jax.lax.scan(run, x_BD, (layers, cache))
    return self.final_norm(y_BD).astype(jnp.float32), cache
