"""The optimizer: AdamW with warmup + cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import optax

from jaxworld.config import TrainConfig

# Norm scales and biases are not decayed: decaying them only fights the
# normalisation they implement.
_NO_DECAY = ("scale", "bias")


def schedule(t: TrainConfig) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate,
      warmup_steps=min(t.warmup_steps, t.steps - 1),
      decay_steps=t.steps, end_value=t.learning_rate * t.final_lr_fraction)


def _decay_mask(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(getattr(k, "key", None) in _NO_DECAY
                              for k in path), params)


def make(t: TrainConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(t.grad_clip),
      optax.adamw(schedule(t), b1=0.9, b2=0.95, weight_decay=t.weight_decay,
                  mask=_decay_mask))
