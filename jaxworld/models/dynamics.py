"""MaskGIT dynamics: predicts masked tokens of each frame from earlier frames
and the actions that led to it (Genie's dynamics model).

The action taken after frame t-1 is added to every token embedding of frame
t; frame 0 gets a learned "no action" embedding. Temporal attention is causal,
so logits of frame t see tokens of frames <= t (with frame t partly masked).

Dimension keys: B batch, T time, N tokens per frame, V codebook size, A
actions, D width.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.models.layers import (Dense, action_into_frame, make_param,
                                     padded_rows)
from jaxworld.models.st_transformer import STTransformer
from jaxworld.parallel import axes


class MaskGITDynamics(nnx.Module):
  """tokens [B, T, N] + actions [B, T] + mask [B, T, N] -> logits [B, T, N, V]."""

  def __init__(self, rngs: nnx.Rngs, *, codebook_size: int, num_actions: int,
               num_tokens: int, max_frames: int, backbone: dict[str, Any]):
    width = backbone["width"]
    self.codebook_size = codebook_size
    self.mask_token = codebook_size  # one extra embedding row
    self.no_action = num_actions     # one extra embedding row
    init = jax.nn.initializers.normal(0.02)
    # Both vocab tables (V codes + the mask token in, V logits out) are
    # padded (layers.padded_rows); padded logits are sliced off.
    rows = padded_rows(codebook_size + 1)
    self.token_embed_VD = make_param(rngs, init, (rows, width),
                                     (axes.VOCAB, axes.EMBED))
    self.action_embed_AD = make_param(rngs, init, (num_actions + 1, width),
                                      (axes.ACTION, axes.EMBED))
    self.backbone = STTransformer(rngs, num_tokens=num_tokens,
                                  max_frames=max_frames, **backbone)
    self.head = Dense(rngs, (width,), (rows,), "BTND,DV->BTNV",
                      (axes.EMBED, axes.VOCAB))

  def __call__(self, tokens_BTN: jax.Array, actions_BT: jax.Array,
               mask_BTN: jax.Array) -> jax.Array:
    """actions[:, t] is the action taken after frame t (the last is unused)."""
    input_BTN = jnp.where(mask_BTN, self.mask_token, tokens_BTN)
    x_BTND = self.token_embed_VD[...][input_BTN]
    prev_actions_BT = action_into_frame(actions_BT, self.no_action)
    x_BTND = x_BTND + self.action_embed_AD[...][prev_actions_BT][:, :, None]
    logits_BTNV = self.head(self.backbone(x_BTND))[..., :self.codebook_size]
    return logits_BTNV.astype(jnp.float32)
