"""Causal autoregressive dynamics: each token predicted from every earlier
token in raster order (all of frames < t, then tokens < n of frame t) and the
actions that led to its frame.

The input at raster position (t, n) is the token *before* it (a learned
begin token at (0, 0)) plus the embedding of the action taken after frame
t-1, so the output at (t, n) predicts token (t, n). The backbone is the
shared ST transformer with `token_causal=True`; sampling runs it one token
at a time over a KV cache (`prefill` the history, then `decode_token`).

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


class ARDynamics(nnx.Module):
  """tokens [B, T, N] + actions [B, T] -> logits [B, T, N, V]."""

  def __init__(self, rngs: nnx.Rngs, *, codebook_size: int, num_actions: int,
               num_tokens: int, max_frames: int, backbone: dict[str, Any]):
    width = backbone["width"]
    self.codebook_size = codebook_size
    self.begin_token = codebook_size  # one extra embedding row
    self.no_action = num_actions
    init = jax.nn.initializers.normal(0.02)
    rows = padded_rows(codebook_size + 1)
    self.token_embed_VD = make_param(rngs, init, (rows, width),
                                     (axes.VOCAB, axes.EMBED))
    self.action_embed_AD = make_param(rngs, init, (num_actions + 1, width),
                                      (axes.ACTION, axes.EMBED))
    self.backbone = STTransformer(rngs, num_tokens=num_tokens,
                                  max_frames=max_frames, token_causal=True,
                                  **backbone)
    self.head = Dense(rngs, (width,), (rows,), "...D,DV->...V",
                      (axes.EMBED, axes.VOCAB))

  def _action_in(self, actions_BT: jax.Array) -> jax.Array:
    """[B, T, D]: the action leading into each frame (frame 0: none)."""
    return self.action_embed_AD[...][action_into_frame(actions_BT,
                                                       self.no_action)]

  def _inputs(self, tokens_BTN: jax.Array, actions_BT: jax.Array
              ) -> jax.Array:
    b, t, n = tokens_BTN.shape
    flat_BL = tokens_BTN.reshape(b, t * n)
    shifted_BL = jnp.concatenate(
        [jnp.full_like(flat_BL[:, :1], self.begin_token), flat_BL[:, :-1]], 1)
    x_BTND = self.token_embed_VD[...][shifted_BL.reshape(b, t, n)]
    return x_BTND + self._action_in(actions_BT)[:, :, None]

  def _logits(self, y: jax.Array) -> jax.Array:
    return self.head(y)[..., :self.codebook_size].astype(jnp.float32)

  def __call__(self, tokens_BTN: jax.Array, actions_BT: jax.Array
               ) -> jax.Array:
    """Teacher-forced logits; actions[:, t] is the action taken after frame
    t (the last is unused)."""
    return self._logits(self.backbone(self._inputs(tokens_BTN, actions_BT)))

  def prefill(self, history_BTN: jax.Array, actions_BT: jax.Array,
              capacity: int) -> dict[str, jax.Array]:
    """The KV cache of `capacity` >= T + 1 frames after the T history frames
    (their actions as in `__call__`)."""
    _, cache = self.backbone.prefill(self._inputs(history_BTN, actions_BT),
                                     capacity)
    return cache

  def decode_token(self, prev_token_B: jax.Array, action_B: jax.Array,
                   cache: dict[str, jax.Array], t: jax.Array, n: jax.Array
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits [B, V] of token (t, n) given the token before it in raster
    order and the action taken after frame t-1."""
    x_BD = (self.token_embed_VD[...][prev_token_B]
            + self.action_embed_AD[...][action_B])
    y_BD, cache = self.backbone.decode(x_BD, cache, t, n)
    return self._logits(y_BD), cache
