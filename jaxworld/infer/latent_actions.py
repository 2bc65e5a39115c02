"""Latent actions of a trained LAM: inferring them from video, scoring them
against true actions, and steering a rollout with them.

Dimension keys: E episodes, T time, H/W/C frame height/width/channels, K
latent actions (codebook size), A true actions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxworld.models.lam import LatentActionModel


def _last_action(graphdef: nnx.GraphDef, state: nnx.State,
                 frames_ETHWC: jax.Array) -> jax.Array:
  lam: LatentActionModel = nnx.merge(graphdef, state)
  return lam.actions(frames_ETHWC.astype(jnp.float32) / 255.0)[:, -1]


_last_action = jax.jit(_last_action, static_argnums=0)


def infer(lam: LatentActionModel, frames_ETHWC: np.ndarray, window: int
          ) -> np.ndarray:
  """int32 [E, T]: latent action of each transition t -> t+1, each read
  with up to `window` frames of history (as in training); the last entry,
  which no transition follows, is 0 (never read by the dynamics)."""
  graphdef, state = nnx.split(lam)
  t = frames_ETHWC.shape[1]
  out = np.zeros(frames_ETHWC.shape[:2], np.int32)
  for i in range(t - 1):
    lo = max(0, i + 2 - window)
    out[:, i] = np.asarray(_last_action(graphdef, state,
                                        jnp.asarray(frames_ETHWC[:, lo:i + 2])))
  return out


def purity(latent: np.ndarray, true: np.ndarray) -> float:
  """Fraction of transitions whose true action is the most common one among
  transitions given the same latent action (1.0: each latent action means
  one true action)."""
  latent, true = np.ravel(latent), np.ravel(true)
  hits = sum(np.bincount(true[latent == k]).max()
             for k in np.unique(latent))
  return float(hits / len(latent))


def normalized_mutual_information(latent: np.ndarray, true: np.ndarray
                                  ) -> float:
  """I(latent; true) / sqrt(H(latent) H(true)), in [0, 1]."""
  latent, true = np.ravel(latent), np.ravel(true)
  joint_KA = np.zeros((latent.max() + 1, true.max() + 1))
  np.add.at(joint_KA, (latent, true), 1.0)
  joint_KA /= joint_KA.sum()
  p_K, p_A = joint_KA.sum(1), joint_KA.sum(0)
  nz = joint_KA > 0
  mi = float(np.sum(joint_KA[nz] * np.log(
      joint_KA[nz] / np.outer(p_K, p_A)[nz])))
  entropy = lambda p: float(-np.sum(p[p > 0] * np.log(p[p > 0])))
  denom = np.sqrt(entropy(p_K) * entropy(p_A))
  return mi / denom if denom > 0 else 0.0


def contingency(latent: np.ndarray, true: np.ndarray, num_latent: int,
                num_true: int) -> list[list[int]]:
  """Counts [K][A] of (latent, true) action pairs."""
  table = np.zeros((num_latent, num_true), np.int64)
  np.add.at(table, (np.ravel(latent), np.ravel(true)), 1)
  return table.tolist()
