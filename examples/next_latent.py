"""A new dynamics kind in one file: a deterministic next-latent regressor.

The worked example of docs/extending.md. It reads the continuous
tokenizer's latents of frames <= t and the action taken after frame t, and
regresses the latents of frame t+1 (mean squared error): no noise, no
sampling, one model pass per imagined frame. Select it with
`dynamics.kind = "examples.next_latent"` (examples/next_latent.toml); the
registry imports this module by that name.

Dimension keys: B batch, T time, N tokens per frame, E latent width, D model
width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxworld.models import build
from jaxworld.models.sampling import SampleOptions
from jaxworld.models.st_transformer import STTransformer, dense, embedding


class NextLatent(nnx.Module):
  """latents [B, T, N, E] + actions [B, T] -> latents of frames 1..T."""

  def __init__(self, rngs: nnx.Rngs, *, latent_dim: int, num_actions: int,
               num_tokens: int, max_frames: int, backbone: dict):
    width = backbone["width"]
    self.latent_in = dense(rngs, "BTNE,ED->BTND", E=latent_dim, D=width)
    self.action_embed = embedding(rngs, num_actions, width, "A")
    self.backbone = STTransformer(rngs, num_tokens=num_tokens,
                                  max_frames=max_frames, **backbone)
    self.head = dense(rngs, "BTND,DE->BTNE", D=width, E=latent_dim)

  def __call__(self, latents_BTNE: jax.Array, actions_BT: jax.Array
               ) -> jax.Array:
    """Output t predicts frame t+1 from frames <= t (causal backbone) and
    actions[:, t], the action taken after frame t."""
    x_BTND = (self.latent_in(latents_BTNE)
              + self.action_embed(actions_BT)[:, :, None])
    # Predict the change: a still world costs nothing to learn.
    return latents_BTNE + self.head(self.backbone(x_BTND))


def build_model(cfg, rngs: nnx.Rngs) -> NextLatent:
  return NextLatent(rngs, latent_dim=build.latent_dim(cfg),
                    **build.dynamics_sizes(cfg))


def loss(model: NextLatent, batch: build.Batch, rng: jax.Array
         ) -> tuple[jax.Array, build.Metrics]:
  del rng  # deterministic
  latents_BTNE = batch["tokens"]
  pred_BTNE = model(latents_BTNE[:, :-1], batch["actions"][:, :-1])
  mse = jnp.mean((pred_BTNE - latents_BTNE[:, 1:]) ** 2)
  return mse, {"mse": mse}


def next_frame(model: NextLatent, history_BTNE: jax.Array,
               actions_BT: jax.Array, rng: jax.Array, options: SampleOptions
               ) -> jax.Array:
  """Latents [B, N, E] of frame T: the last output over the history."""
  del rng, options
  return model(history_BTNE, actions_BT)[:, -1]


KIND = build.register("dynamics", build.DynamicsKind(
    "examples.next_latent", build_model, loss, next_frame=next_frame,
    codes="latents"))
