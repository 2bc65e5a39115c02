"""Analytic FLOPs of a train step, from the model's shapes alone.

The count is the usual "model FLOPs" of MFU: every matmul, at 2 FLOPs per
multiply-add, and nothing else (norms, softmax, GELU, biases, the optimizer
and rematerialised recomputation are left out). A trained model costs 3x its
forward pass (forward, then gradients with respect to activations and to
weights); a frozen model the step reads (the tokenizer of a dynamics step)
costs its forward pass over the part it runs.

Per ST block over B windows of T frames of N tokens, width D, MLP width F:
  projections  2*B*T*N * (8*D*D + 2*D*F)     q, k, v, out of two attentions
  spatial      4*B*T*N*N*D                  scores and values within a frame
               4*B*(T*N)^2*D                token-causal: over all T*N tokens
  temporal     4*B*N*T*T*D                  causal, computed dense as XLA does
Dense layers outside the backbones (patch in/out, codes, logit heads) cost
2 * kernel size per token (per frame when their einsum has no N).

Dimension keys as in models/st_transformer.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flax import nnx

from jaxworld.models.st_transformer import STTransformer

# What a frozen model's `encode` / `actions` runs of it (tokenizer, LAM).
ENCODE_PATH = ("patch_in", "enc_patch_in", "encoder", "to_code")


def _shape(v: nnx.Variable) -> tuple[int, ...]:
  return tuple(np.shape(v.get_value()))


def st_block_flops(batch: int, frames: int, tokens: int, width: int,
                   mlp_width: int, token_causal: bool = False) -> int:
  """Forward FLOPs of one ST block (see the module docstring)."""
  b, t, n, d, f = batch, frames, tokens, width, mlp_width
  projections = 2 * b * t * n * (8 * d * d + 2 * d * f)
  spatial = 4 * b * (t * n) ** 2 * d if token_causal else 4 * b * t * n * n * d
  temporal = 4 * b * n * t * t * d
  return projections + spatial + temporal


def st_transformer_flops(st: STTransformer, batch: int, frames: int) -> int:
  """Forward FLOPs of a (possibly abstract) backbone over [B, T, N, D]."""
  tokens, width = _shape(st.spatial_pos)
  depth, _, mlp_width = _shape(st.blocks.mlp.up.kernel)
  return depth * st_block_flops(batch, frames, tokens, width, mlp_width,
                                bool(st.blocks.token_causal))


def forward_flops(model: nnx.Module, batch: int, frames: int,
                  only: Iterable[str] | None = None) -> int:
  """Forward FLOPs of `model` over B windows of T frames: its backbones plus
  its dense layers outside them; `only` keeps the top-level attributes
  named (e.g. ENCODE_PATH)."""
  only = None if only is None else set(only)
  keep = lambda path: only is None or (path and path[0] in only)
  nodes = [(tuple(path), node) for path, node in nnx.iter_graph(model)]
  backbones = [(p, n) for p, n in nodes
               if isinstance(n, STTransformer) and keep(p)]
  if not backbones:
    return 0
  tokens = _shape(backbones[0][1].spatial_pos)[0]
  total = sum(st_transformer_flops(n, batch, frames) for _, n in backbones)
  inside = [p for p, _ in backbones]
  for path, node in nodes:
    if not isinstance(node, nnx.Einsum) or not keep(path):
      continue
    if any(path[:len(p)] == p for p in inside):
      continue
    lhs = node.einsum_str.split(",")[0]
    per = tokens if ("N" in lhs or lhs.startswith("...")) else 1
    total += 2 * int(np.prod(_shape(node.kernel))) * batch * frames * per
  return total


def train_step_flops(trained: nnx.Module, frozen: nnx.Module | None,
                     batch: int, frames: int,
                     trained_frames: int | None = None) -> dict[str, int]:
  """{"trained_forward", "frozen_forward", "step"}: a step is 3x the trained
  model's forward pass plus the frozen models' encode path over windows of
  `frames`; the trained model's passes cover `trained_frames` (default
  `frames`; `ModelKind.train_frames`)."""
  trained_fwd = forward_flops(trained, batch, trained_frames or frames)
  frozen_fwd = 0
  if frozen is not None:
    parts = ([frozen.tokenizer, frozen.lam] if hasattr(frozen, "lam")
             else [frozen])
    frozen_fwd = sum(forward_flops(m, batch, frames, ENCODE_PATH)
                     for m in parts)
  return {"trained_forward": trained_fwd, "frozen_forward": frozen_fwd,
          "step": 3 * trained_fwd + frozen_fwd}

