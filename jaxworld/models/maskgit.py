"""MaskGIT dynamics (Genie): predicts the hidden tokens of each frame from
earlier frames, its visible tokens and the action that led to it.

`TokenDynamics` is what it shares with the autoregressive kind: a table of
the tokenizer's V codes plus one special token (MaskGIT's mask, the
autoregressive begin token), a table of the A actions plus "no action"
(added to every token of the frame the action led to; frame 0 gets "no
action"), the ST backbone and a head back to V logits.

Training hides some tokens of some frames (`loss`); imagining a frame starts
fully hidden and, over `steps` refinement passes, keeps the most confident
predictions and re-hides the rest on a schedule until none is hidden
(`next_frame`). Temporal attention is causal, so logits of frame t see
tokens of frames <= t.

Dimension keys: B batch, T time, N tokens per frame, V codebook size, A
actions, D width.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxworld.config import Config
from jaxworld.models import build
from jaxworld.models.sampling import SampleOptions, sample_tokens
from jaxworld.models.st_transformer import (STTransformer, action_into_frame,
                                            dense, embedding, padded_rows)

# Fraction of tokens still hidden when a fraction r of the passes is done.
SCHEDULES = {
    "cosine": lambda r: math.cos(math.pi / 2 * r),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r * r,
}


class TokenDynamics(nnx.Module):
  """Embeddings, backbone and logit head over discrete tokens."""

  def __init__(self, rngs: nnx.Rngs, *, codebook_size: int, num_actions: int,
               num_tokens: int, max_frames: int, backbone: dict[str, Any],
               token_causal: bool = False):
    width = backbone["width"]
    self.codebook_size = codebook_size
    self.special_token = codebook_size  # one extra embedding row
    self.no_action = num_actions        # one extra embedding row
    # Both vocab tables (V codes + the special token in, V logits out) are
    # padded (`padded_rows`); padded logits are sliced off.
    rows = padded_rows(codebook_size + 1)
    self.token_embed = embedding(rngs, rows, width, "V")
    self.action_embed = embedding(rngs, num_actions + 1, width, "A")
    self.backbone = STTransformer(rngs, num_tokens=num_tokens,
                                  max_frames=max_frames,
                                  token_causal=token_causal, **backbone)
    self.head = dense(rngs, "...D,DV->...V", D=width, V=rows)

  def action_in(self, actions_BT: jax.Array) -> jax.Array:
    """[B, T, D]: the embedding of the action leading into each frame."""
    return self.action_embed(action_into_frame(actions_BT, self.no_action))

  def embed(self, input_BTN: jax.Array, actions_BT: jax.Array) -> jax.Array:
    """[B, T, N, D]: token embeddings plus the action leading into their
    frame."""
    x_BTND = self.token_embed(input_BTN)
    return x_BTND + self.action_in(actions_BT)[:, :, None]

  def embed_frame(self, input_BN: jax.Array, action_B: jax.Array
                  ) -> jax.Array:
    """[B, N, D]: one new frame's token embeddings plus the action that led
    to it (`embed`'s last frame, without its history)."""
    return self.token_embed(input_BN) + self.action_embed(action_B)[:, None]

  def logits(self, y_BTND: jax.Array) -> jax.Array:
    """float32 logits [..., V] of backbone outputs [..., D]."""
    return self.head(y_BTND)[..., :self.codebook_size].astype(jnp.float32)


class MaskGITDynamics(TokenDynamics):
  """tokens [B, T, N] + actions [B, T] + mask [B, T, N] -> logits [B, T, N, V]."""

  def __init__(self, rngs: nnx.Rngs, *, target_frame_prob: float,
               mask_ratio_min: float, **sizes: Any):
    super().__init__(rngs, **sizes)
    self.target_frame_prob, self.mask_ratio_min = (target_frame_prob,
                                                   mask_ratio_min)

  def __call__(self, tokens_BTN: jax.Array, actions_BT: jax.Array,
               mask_BTN: jax.Array) -> jax.Array:
    """actions[:, t] is the action taken after frame t (the last is unused)."""
    input_BTN = jnp.where(mask_BTN, self.special_token, tokens_BTN)
    return self.logits(self.backbone(self.embed(input_BTN, actions_BT)))


def build_model(cfg: Config, rngs: nnx.Rngs) -> MaskGITDynamics:
  d = cfg.dynamics
  return MaskGITDynamics(rngs, codebook_size=build.codebook_size(cfg),
                         target_frame_prob=d.target_frame_prob,
                         mask_ratio_min=d.mask_ratio_min,
                         **build.dynamics_sizes(cfg))


def training_mask(rng: jax.Array, shape_BTN: tuple[int, int, int],
                  target_prob: float, ratio_min: float) -> jax.Array:
  """Which tokens to hide: some frames are targets, the rest stay clean.

  Frame 0 has no action leading into it and is never a target. A target
  frame hides a uniform-random fraction in [ratio_min, 1] of its tokens, so
  the model learns every stage of MaskGIT decoding, from fully masked on.
  """
  b, t, n = shape_BTN
  k_target, k_ratio, k_tokens = jax.random.split(rng, 3)
  target_BT = jax.random.bernoulli(k_target, target_prob, (b, t))
  target_BT = target_BT.at[:, 0].set(False)
  ratio_BT = jax.random.uniform(k_ratio, (b, t), minval=ratio_min, maxval=1.0)
  hide_BTN = jax.random.uniform(k_tokens, (b, t, n)) < ratio_BT[..., None]
  return hide_BTN & target_BT[..., None]


def loss(model: MaskGITDynamics, batch: build.Batch, rng: jax.Array
         ) -> tuple[jax.Array, build.Metrics]:
  """Cross-entropy of the hidden tokens given history, visible tokens and
  actions."""
  tokens_BTN = batch["tokens"]
  mask_BTN = training_mask(rng, tokens_BTN.shape, model.target_frame_prob,
                           model.mask_ratio_min)
  logits_BTNV = model(tokens_BTN, batch["actions"], mask_BTN)
  ce_BTN = optax.softmax_cross_entropy_with_integer_labels(logits_BTNV,
                                                          tokens_BTN)
  weight_BTN = mask_BTN.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight_BTN), 1.0)
  ce = jnp.sum(ce_BTN * weight_BTN) / count
  hit_BTN = (jnp.argmax(logits_BTNV, -1) == tokens_BTN).astype(jnp.float32)
  return ce, {"masked_accuracy": jnp.sum(hit_BTN * weight_BTN) / count,
              "mask_fraction": jnp.mean(weight_BTN)}


def hidden_after(step: int, steps: int, n: int,
                 schedule: str = "cosine") -> int:
  """Tokens still hidden after refinement `step` (0-based)."""
  return int(math.floor(n * SCHEDULES[schedule]((step + 1) / steps)))


def next_frame(model: MaskGITDynamics, history_BTN: jax.Array,
               actions_BT: jax.Array, rng: jax.Array, options: SampleOptions
               ) -> jax.Array:
  """Tokens [B, N] of frame T after T history frames, in `options.steps`
  refinement passes.

  `actions_BT[:, t]` is the action taken after history frame t; the last
  leads into the new frame. Traceable; call it under jit.
  """
  b, _, n = history_BTN.shape
  # The history is fixed over the passes and temporal attention is causal:
  # its keys/values are computed once, each pass runs the new frame alone.
  history = model.backbone.history_kv(model.embed(history_BTN, actions_BT))
  frame_BN = jnp.zeros((b, n), jnp.int32)
  hidden_BN = jnp.ones((b, n), bool)
  steps = options.steps
  for s in range(steps):  # Unrolled: `steps` is small and static.
    input_BN = jnp.where(hidden_BN, model.special_token, frame_BN)
    x_BND = model.embed_frame(input_BN, actions_BT[:, -1])
    logits_BNV = model.logits(model.backbone.next_frame(x_BND, history))
    rng, key = jax.random.split(rng)
    sampled_BN = sample_tokens(key, logits_BNV, options.temperature,
                               options.top_k)
    confidence_BN = jnp.take_along_axis(jax.nn.log_softmax(logits_BNV),
                                        sampled_BN[..., None], -1)[..., 0]
    # Tokens fixed in earlier passes are never re-hidden.
    confidence_BN = jnp.where(hidden_BN, confidence_BN, jnp.inf)
    frame_BN = jnp.where(hidden_BN, sampled_BN, frame_BN)
    keep_hidden = hidden_after(s, steps, n, options.schedule)
    rank_BN = jnp.argsort(jnp.argsort(confidence_BN, -1), -1)
    hidden_BN = rank_BN < keep_hidden
  return frame_BN


def features(model: TokenDynamics, tokens_BTN: jax.Array,
             actions_BT: jax.Array) -> jax.Array:
  """The model's state [B, T, N, D] over clean (unmasked) frames."""
  return model.backbone(model.embed(tokens_BTN, actions_BT))


KIND = build.register("dynamics", build.DynamicsKind(
    "maskgit", build_model, loss, next_frame=next_frame, codes="tokens",
    steps_per_frame=lambda r: r.maskgit_steps, features=features))
