"""Spatiotemporal (ST) transformer: the one backbone every model builds on.

Each block: spatial attention among the N tokens of one frame, causal temporal
attention across the T frames at one token position, then an MLP; pre-norm
residuals throughout. Outputs at frame t depend only on inputs at frames <= t.

With `token_causal=True` (autoregressive dynamics) the first attention of a
block instead runs over all T*N tokens in raster order (frame by frame, token
by token), causally: output (t, n) then depends only on inputs at raster
positions <= (t, n), and `prefill` / `decode` run it one token at a time with
a KV cache.

The layers everything is built from are here too: `dense` (an `nnx.Einsum`
whose weight's shape and logical sharding names come from its einsum
letters, `axes.WEIGHT_LETTERS`), `embedding`, `RMSNorm`, `Attention` (over
`attention.py`), `MLP`.

Dimension keys: B batch, T time, N tokens per frame, D width, F MLP hidden
width, L sequence (L = T*N raster positions in a token-causal block), S keys
attended to, M attention heads (H is a frame's height), K per-head width, V
vocabulary, A actions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.models.attention import dot_product_attention
from jaxworld.parallel import axes
from jaxworld.parallel.activations import constrain

# ---------------------------------------------------------------- layers

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


def dense(rngs: nnx.Rngs, spec: str, *, dtype: jnp.dtype = jnp.float32,
          use_bias: bool = True, init: Initializer | None = None,
          **sizes: int) -> nnx.Einsum:
  """A learned linear map, `nnx.Einsum(spec)`, whose weight's shape and
  logical sharding names both come from its letters in `spec`.

  E.g. `dense(rngs, "BLD,DMK->BLMK", D=512, M=8, K=64)`: a [D, M, K] kernel
  named (embed, heads, kv) (`axes.WEIGHT_LETTERS`) and an [M, K] bias. The
  weight's letters shared with the input are contracted (its fan-in) and
  come first. Parameters are float32; `dtype` is the compute dtype.
  """
  lhs, rhs_out = spec.split(",")
  rhs = rhs_out.split("->")[0]
  fan_in_axes = tuple(i for i, c in enumerate(rhs) if c in lhs)
  if fan_in_axes != tuple(range(len(fan_in_axes))) or set(rhs) - set(sizes):
    raise ValueError(f"dense({spec!r}): the weight's contracted letters must "
                     f"come first and every letter needs a size; got {sizes}")
  out_letters = rhs[len(fan_in_axes):]
  init = init or jax.nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=fan_in_axes,
      out_axis=tuple(range(len(fan_in_axes), len(rhs))))
  return nnx.Einsum(
      spec, tuple(sizes[c] for c in rhs),
      tuple(sizes[c] for c in out_letters) if use_bias else None,
      dtype=dtype, param_dtype=jnp.float32, kernel_init=init,
      bias_init=jax.nn.initializers.zeros, rngs=rngs,
      kernel_metadata=_sharding_metadata(rhs),
      bias_metadata=_sharding_metadata(out_letters))


def _sharding_metadata(letters: str) -> dict[str, object]:
  """Logical names of weight axes `letters`, applied later (`make_param`)."""
  return {"out_sharding": tuple(axes.WEIGHT_LETTERS[c] for c in letters),
          "eager_sharding": False}


def embedding(rngs: nnx.Rngs, rows: int, width: int, letter: str
              ) -> nnx.Embed:
  """A [rows, D] lookup table whose rows are dimension `letter` (e.g. "V"
  tokens, "A" actions), init N(0, 0.02)."""
  return nnx.Embed(rows, width, param_dtype=jnp.float32,
                   embedding_init=jax.nn.initializers.normal(0.02), rngs=rngs,
                   embedding_metadata=_sharding_metadata(letter + "D"))


class RMSNorm(nnx.Module):
  """RMS normalisation over the last axis, computed in float32.

  Not `nnx.RMSNorm`: that one multiplies the scale into rsqrt(ms) before x,
  which rounds differently from (x * rsqrt(ms)) * scale and so would change
  every trained number; the parameter (`scale`) and metadata are the same.
  """

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

  `implementation` (`attention.py`): "xla" (jax.nn's, any platform),
  "cudnn" (jax.nn's flash attention on NVIDIA GPUs) or "jaxworld" (any
  platform; its backward avoids XLA:CPU's transposes of the [L, S]
  probabilities).
  """

  def __init__(self, rngs: nnx.Rngs, width: int, num_heads: int,
               dtype: jnp.dtype, implementation: str = "xla"):
    self.implementation = implementation
    head_dim = width // num_heads
    sizes = dict(D=width, M=num_heads, K=head_dim)
    self.q, self.k, self.v = (
        dense(rngs, "BLD,DMK->BLMK", use_bias=False, dtype=dtype, **sizes)
        for _ in range(3))
    self.out = dense(rngs, "BLMK,MKD->BLD", dtype=dtype, **sizes)
    # QK-norm keeps attention logits bounded, which lets us train at higher
    # learning rates without loss spikes.
    self.q_norm = RMSNorm(rngs, head_dim, axes.KV)
    self.k_norm = RMSNorm(rngs, head_dim, axes.KV)

  def qkv(self, x_BLD: jax.Array
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalised queries, keys and values [B, L, M, K]."""
    return (self.q_norm(self.q(x_BLD)), self.k_norm(self.k(x_BLD)),
            self.v(x_BLD))

  def attend(self, q_BLMK: jax.Array, k_BSMK: jax.Array, v_BSMK: jax.Array,
             is_causal: bool = False, mask_S: jax.Array | None = None
             ) -> jax.Array:
    """Output [B, L, D] of queries over S keys; `mask_S` (bool [S]) hides
    keys, e.g. the unfilled slots of a KV cache."""
    o_BLMK = dot_product_attention(q_BLMK, k_BSMK, v_BSMK,
                                   is_causal=is_causal, mask_S=mask_S,
                                   implementation=self.implementation)
    return self.out(o_BLMK)

  def __call__(self, x_BLD: jax.Array, is_causal: bool) -> jax.Array:
    return self.attend(*self.qkv(x_BLD), is_causal=is_causal)


class MLP(nnx.Module):
  """Two-layer GELU MLP."""

  def __init__(self, rngs: nnx.Rngs, width: int, hidden: int,
               dtype: jnp.dtype):
    self.up = dense(rngs, "...D,DF->...F", D=width, F=hidden, dtype=dtype)
    self.down = dense(rngs, "...F,FD->...D", D=width, F=hidden, dtype=dtype)

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


# ------------------------------------------------------------ the backbone


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
               mlp_ratio: int, dtype: jnp.dtype, token_causal: bool = False,
               attention: str = "xla"):
    self.token_causal = token_causal
    self.spatial_norm = RMSNorm(rngs, width, axes.EMBED)
    self.spatial_attn = Attention(rngs, width, num_heads, dtype, attention)
    self.temporal_norm = RMSNorm(rngs, width, axes.EMBED)
    self.temporal_attn = Attention(rngs, width, num_heads, dtype, attention)
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
    to_BTNMK = lambda a: a.reshape(b, n, t, *a.shape[2:]).transpose(
        0, 2, 1, 3, 4)
    return x_BTND, {"sk": k_s.reshape(b, t * n, *k_s.shape[2:]),
                    "sv": v_s.reshape(b, t * n, *v_s.shape[2:]),
                    "tk": to_BTNMK(k_t), "tv": to_BTNMK(v_t)}

  def frame(self, x_BND: jax.Array, tk_BTNMK: jax.Array,
            tv_BTNMK: jax.Array) -> jax.Array:
    """[B, N, D] -> [B, N, D]: the block on one new frame after T history
    frames, given their temporal keys/values (`return_kv`). Equal to the
    last frame of `__call__` on history + frame: spatial attention stays
    inside the frame and temporal attention is causal, so the history's
    keys/values do not depend on the new frame."""
    b, n, d = x_BND.shape
    x_BND = x_BND + self.spatial_attn(self.spatial_norm(x_BND),
                                      is_causal=False)
    q, k, v = self.temporal_attn.qkv(self.temporal_norm(x_BND).reshape(
        b * n, 1, d))
    history = lambda a_BTNMK: a_BTNMK.transpose(0, 2, 1, 3, 4).reshape(
        b * n, -1, *a_BTNMK.shape[3:])
    k_BnSMK = jnp.concatenate([history(tk_BTNMK), k], 1)
    v_BnSMK = jnp.concatenate([history(tv_BTNMK), v], 1)
    x_BND = x_BND + self.temporal_attn.attend(q, k_BnSMK, v_BnSMK).reshape(
        b, n, d)
    return x_BND + self.mlp(self.mlp_norm(x_BND))

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
               token_causal: bool = False, scan_unroll: int = 1,
               attention: str = "xla"):
    compute_dtype = DTYPES[dtype]
    self.remat, self.dtype = remat, compute_dtype
    # lax.scan's unroll; True (every block inline) once it covers the depth.
    self.scan_unroll = True if 1 < depth <= scan_unroll else scan_unroll
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
                     token_causal, attention)

    self.blocks = make_blocks(rngs)
    self.final_norm = RMSNorm(rngs, width, axes.EMBED)

  def _embed(self, x_BTND: jax.Array, first_frame: int = 0) -> jax.Array:
    """Adds the position embeddings of frames first_frame .. first_frame+T
    (a slice, so `first_frame` may be symbolic, as in an exported bundle)."""
    t = x_BTND.shape[1]
    if first_frame + t > self.temporal_pos.shape[0]:
      raise ValueError(f"{first_frame + t} frames exceed the backbone's "
                       f"max_frames={self.temporal_pos.shape[0]}")
    temporal_TD = self.temporal_pos[...][first_frame:first_frame + t]
    return (x_BTND + self.spatial_pos[...][None, None]
            + temporal_TD[None, :, None]).astype(self.dtype)

  def __call__(self, x_BTND: jax.Array) -> jax.Array:
    x_BTND = self._embed(x_BTND)

    def apply_block(x: jax.Array, block: STBlock) -> jax.Array:
      return block(x)

    if self.remat != "none":
      apply_block = nnx.remat(apply_block, policy=REMAT_POLICIES[self.remat])

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
              unroll=self.scan_unroll,
              transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
    def run(x: jax.Array, block: STBlock) -> jax.Array:
      return apply_block(x, block)

    return self.final_norm(run(x_BTND, self.blocks)).astype(jnp.float32)

  def prefill(self, x_BTND: jax.Array, capacity: int
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Forward pass over T known frames that also returns every layer's
    keys/values, padded to `capacity` frames: the KV cache `decode` extends.
    Cache arrays: sk/sv [layers, B, capacity*N, M, K], tk/tv [layers, B,
    capacity, N, M, K]."""
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

  def history_kv(self, x_BTND: jax.Array) -> dict[str, jax.Array]:
    """Every layer's temporal keys/values over T history frames, tk/tv
    [layers, B, T, N, M, K]: what `next_frame` reads, so that refining one
    new frame (MaskGIT's passes) does not recompute its history."""
    assert not self.blocks.token_causal, "a token-causal backbone: prefill"
    _, kv = self.prefill(x_BTND, capacity=x_BTND.shape[1])
    return {"tk": kv["tk"], "tv": kv["tv"]}

  def next_frame(self, x_BND: jax.Array, history: dict[str, jax.Array]
                 ) -> jax.Array:
    """Output [B, N, D] for a frame after the T frames of `history_kv`:
    the last frame of `__call__` on all T + 1, at a frame's cost."""
    x_BND = self._embed(x_BND[:, None], first_frame=history["tk"].shape[2]
                        )[:, 0]
    graphdef, layers = nnx.split(self.blocks)

    def run(x, layer_and_kv):
      layer, kv = layer_and_kv
      return nnx.merge(graphdef, layer).frame(x, kv["tk"], kv["tv"]), None

    y_BND = jax.lax.scan(run, x_BND, (layers, history))[0]
    return self.final_norm(y_BND).astype(jnp.float32)

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
