"""Deterministic next-frame regression over continuous latents or pixels,
trained on its own predictions.

Position t of a window reads frames <= t (temporal attention is causal) and
the action taken after frame t, and predicts frame t+1 as frame t plus a
change: what does not move costs nothing to keep. One pass per imagined
frame, no noise and no sampler, so a rollout is as cheap as a frame can be.

A model trained only on clean histories (teacher forcing) sees its own
slightly wrong frames for the first time in a rollout, and its errors
compound. So training makes `dynamics.unroll_passes` passes over each
window: pass k reads, as history after the first frame, the frames that
pass k-1 predicted (the pushforward trick of Brandstetter et al. 2022,
"Message Passing Neural PDE Solvers"), so position t of pass k holds a frame
the model itself made from k-1 predicted frames, and learns to correct it.
With `dynamics.unroll_gradients` the gradient also flows through the
earlier passes (backpropagation through the unrolled rollout), so a pass
learns to make frames the next pass reads well.

The loss is MSE plus `dynamics.l1_weight` times L1. Mean squared error
alone leaves a faint haze where the model is unsure; L1's gradient does not
shrink with the error, so it drives small residuals (the background) to
exactly zero. With `dynamics.change_weight` c, each latent that changes
from one real frame to the next weighs 1 + c in both terms: on a screen
that is mostly still, a small moving object is otherwise a rounding error
of the loss, and erasing it where the model is unsure costs almost
nothing (measured worse on the demo's world: docs/models.md). A tokenizer
with bounded latents (pixel patches in [-1, 1]) has its predictions
clipped to that range, in training and in a rollout.

With `dynamics.frame_stack` k > 1 each position also reads, as input
channels, the k-1 changes between its frame and the ones before it (as
DIAMOND stacks its context frames): a small ball is a fraction of one
token, and temporal attention mixes a token's history by a softmax, so
without them its motion has to be pieced together over several blocks.

Dimension keys: B batch, T time, N tokens per frame, E latent width, D model
width.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.config import Config
from jaxworld.models import build
from jaxworld.models.sampling import SampleOptions
from jaxworld.models.st_transformer import STTransformer, dense, embedding


# A latent "changes" when it moves by more than this between real frames:
# a quarter of a gray level for pixel patches (one level is 2 / 255), so
# rounding in the stored frames does not count as motion.
CHANGE_TOLERANCE = 0.5 / 255


class FrameRegressor(nnx.Module):
  """frames [B, T, N, E] + actions [B, T] -> next frames [B, T, N, E]."""

  def __init__(self, rngs: nnx.Rngs, *, latent_dim: int, num_actions: int,
               num_tokens: int, max_frames: int, backbone: dict[str, Any],
               bounds: tuple[float, float] | None = None,
               unroll_passes: int = 1, unroll_gradients: bool = False,
               l1_weight: float = 0.0, change_weight: float = 0.0,
               frame_stack: int = 1):
    width = backbone["width"]
    self.bounds = bounds
    self.unroll_passes, self.unroll_gradients = unroll_passes, unroll_gradients
    self.l1_weight, self.change_weight = l1_weight, change_weight
    self.frame_stack = frame_stack
    self.frame_in = dense(rngs, "BTNE,ED->BTND", E=frame_stack * latent_dim,
                          D=width)
    self.action_embed = embedding(rngs, num_actions, width, "A")
    self.backbone = STTransformer(rngs, num_tokens=num_tokens,
                                  max_frames=max_frames, **backbone)
    self.head = dense(rngs, "BTND,DE->BTNE", D=width, E=latent_dim,
                      init=jax.nn.initializers.zeros)

  def hidden(self, frames_BTNE: jax.Array, actions_BT: jax.Array
             ) -> jax.Array:
    """The backbone's output [B, T, N, D]: the model's state."""
    x_BTND = (self.frame_in(self.stacked(frames_BTNE))
              + self.action_embed(actions_BT)[:, :, None])
    return self.backbone(x_BTND)

  def stacked(self, frames_BTNE: jax.Array) -> jax.Array:
    """[B, T, N, k*E]: frame t, then frame t-j+1 minus frame t-j for j = 1
    .. k-1 (`frame_stack` k); before the window's first frame nothing
    moved. Position t still reads only frames <= t."""
    t = frames_BTNE.shape[1]
    earlier = lambda j: jnp.pad(frames_BTNE, ((0, 0), (j, 0), (0, 0), (0, 0)),
                                mode="edge")[:, :t]
    channels = [frames_BTNE] + [earlier(j - 1) - earlier(j)
                                for j in range(1, self.frame_stack)]
    return jnp.concatenate(channels, -1)

  def __call__(self, frames_BTNE: jax.Array, actions_BT: jax.Array
               ) -> jax.Array:
    """actions[:, t] is the action taken after frame t."""
    change_BTNE = self.head(self.hidden(frames_BTNE, actions_BT))
    next_BTNE = frames_BTNE + change_BTNE.astype(jnp.float32)
    if self.bounds is not None:
      next_BTNE = jnp.clip(next_BTNE, *self.bounds)
    return next_BTNE


def build_model(cfg: Config, rngs: nnx.Rngs) -> FrameRegressor:
  d = cfg.dynamics
  return FrameRegressor(rngs, latent_dim=build.latent_dim(cfg),
                        bounds=build.tokenizer_kind(cfg).latent_bounds,
                        unroll_passes=d.unroll_passes,
                        unroll_gradients=d.unroll_gradients,
                        l1_weight=d.l1_weight, change_weight=d.change_weight,
                        frame_stack=d.frame_stack,
                        **build.dynamics_sizes(cfg))


def loss(model: FrameRegressor, batch: build.Batch, rng: jax.Array
         ) -> tuple[jax.Array, build.Metrics]:
  """The mean over `unroll_passes` passes of MSE + l1_weight * L1, each
  latent weighted by 1 + change_weight where the real frame changes (see
  the module doc); also each pass's unweighted MSE."""
  del rng  # deterministic
  latents_BTNE, actions_BT = batch["tokens"], batch["actions"]
  now_BTNE, next_BTNE = latents_BTNE[:, :-1], latents_BTNE[:, 1:]
  weight_BTNE = (1.0 + model.change_weight * (
      jnp.abs(next_BTNE - now_BTNE) > CHANGE_TOLERANCE)
                 if model.change_weight else None)
  history_BTNE, total, metrics = now_BTNE, 0.0, {}
  for k in range(model.unroll_passes):
    pred_BTNE = model(history_BTNE, actions_BT[:, :-1])
    # Position t < k reads only real frames in pass k: pass 0 covers it.
    error_BTNE = pred_BTNE[:, k:] - next_BTNE[:, k:]
    squared_BTNE, absolute_BTNE = error_BTNE ** 2, jnp.abs(error_BTNE)
    metrics[f"mse_pass{k}"] = jnp.mean(squared_BTNE)
    # Unweighted, the program stays the plain MSE + L1 one, bit for bit.
    if weight_BTNE is not None:
      squared_BTNE = weight_BTNE[:, k:] * squared_BTNE
      absolute_BTNE = weight_BTNE[:, k:] * absolute_BTNE
    total = (total + jnp.mean(squared_BTNE)
             + model.l1_weight * jnp.mean(absolute_BTNE))
    fed_BTNE = (pred_BTNE if model.unroll_gradients
                else jax.lax.stop_gradient(pred_BTNE))
    history_BTNE = jnp.concatenate([now_BTNE[:, :1], fed_BTNE[:, :-1]], 1)
  metrics["mse"] = metrics["mse_pass0"]
  return total / model.unroll_passes, metrics


def next_frame(model: FrameRegressor, history_BTNE: jax.Array,
               actions_BT: jax.Array, rng: jax.Array, options: SampleOptions
               ) -> jax.Array:
  """Latents [B, N, E] of frame T after T history frames; `actions_BT[:, t]`
  is the action taken after history frame t. One pass; traceable."""
  del rng, options
  return model(history_BTNE, actions_BT)[:, -1]


def features(model: FrameRegressor, latents_BTNE: jax.Array,
             actions_BT: jax.Array) -> jax.Array:
  """The model's state [B, T, N, D] over clean frames: position t reads
  frames <= t and the action after frame t, the inputs of its prediction of
  frame t+1."""
  return model.hidden(latents_BTNE, actions_BT)


KIND = build.register("dynamics", build.DynamicsKind(
    "regression", build_model, loss, next_frame=next_frame, codes="latents",
    features=features,
    train_frames=lambda cfg: cfg.dynamics.unroll_passes * (cfg.data.window
                                                           - 1)))
