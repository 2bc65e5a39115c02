"""What a world model knows about the physics: linear probes and object
positions from frames.

* `physics_probe`: ridge regression from a tokenizer's per-frame latents to
  the balls' and agent's positions and the balls' velocities, fit on training
  episodes and scored (R^2) on held-out ones, next to the same probe on raw
  pixels. Pixels show where objects are but not how they move; the encoder
  is causal over time, so its latents can also carry velocity.
* `locate_objects` / `position_error`: object centres found by colour in
  (predicted) frames, compared with the true states.

Dimension keys: B batch, T time, H/W height/width, C channels, K balls (K+1
objects with the agent), N samples (frames), F features, Y probe targets,
E episodes, S windows of `window` frames.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxworld.config import Config
from jaxworld.data import world
from jaxworld.errors import JaxWorldError
from jaxworld.eval import readout
from jaxworld.models import build
from jaxworld.models import tokenizer as toklib

# Ridge penalties tried (on standardized features). Useful ones span decades
# with the feature count and the sample size, so we choose on a validation
# split rather than fix one; each costs one Cholesky solve of the fit's Gram.
# The largest is in effect the mean predictor (R^2 ~ 0), for targets the
# features do not encode linearly.
ALPHAS = tuple(10.0 ** np.arange(-1, 9))
# A pixel is an object's when it is within COLOR_TOL (max over RGB) of
# a * colour for a coverage a >= 0.5: soft edges over the black background
# still count, and any other object colour is >= 44 off (yellow seen as
# orange), so objects are told apart.
COLOR_TOL = 30.0
MIN_COVERAGE = 0.5
_ENCODE_BATCH = 16  # Windows per encoder call; one compiled shape.
# Velocities are read from the 3 x 3 tokens around each ball.
OBJECT_RADIUS = 1


def probe(features_train_NF: np.ndarray, targets_train_NY: np.ndarray,
          features_test_NF: np.ndarray, targets_test_NY: np.ndarray,
          alpha: float | Sequence[float] = ALPHAS,
          groups: Mapping[str, Sequence[int]] | None = None,
          val_fraction: float = 0.2) -> dict[str, Any]:
  """Held-out R^2 of a ridge read-out of each target from features.

  With several `alpha`, each target takes the one with the best R^2 on the
  last `val_fraction` of the training rows (targets are separate
  regressions; positions and velocities want penalties decades apart), then
  is refit on all of them. Keep rows episode-major so that split holds out
  (nearly) whole episodes: adjacent frames are near-duplicates and would
  favour too small a penalty.

  Returns {"alpha_per_target": [Y], "r2_per_target": [Y] lists, and per
  group g of target columns (default one group "all") "g_r2": mean R^2}.
  """
  alphas = [float(alpha)] if np.isscalar(alpha) else [float(a) for a in alpha]
  n, num_targets = len(features_train_NF), targets_train_NY.shape[1]
  chosen_Y = np.zeros(num_targets, int)
  if len(alphas) > 1:
    n_val = int(round(n * val_fraction))
    if not 0 < n_val < n:
      raise ValueError(f"val_fraction={val_fraction} of {n} training rows "
                       f"leaves no validation or no fit rows.")
    path = readout.fit_ridge_path(features_train_NF[:n - n_val],
                                  targets_train_NY[:n - n_val], alphas)
    val_r2_AY = np.stack([readout.r2_score(
        readout.predict_ridge(features_train_NF[n - n_val:], w, b),
        targets_train_NY[n - n_val:]) for w, b in path])
    chosen_Y = np.argmax(np.nan_to_num(val_r2_AY, nan=-np.inf), axis=0)
  used = sorted(set(chosen_Y.tolist()))  # One Gram for all.
  fits = dict(zip(used, readout.fit_ridge_path(
      features_train_NF, targets_train_NY, [alphas[a] for a in used])))
  w_FY = np.stack([fits[a][0][:, j] for j, a in enumerate(chosen_Y)], 1)
  b_Y = np.array([fits[a][1][j] for j, a in enumerate(chosen_Y)])
  r2_Y = readout.r2_score(readout.predict_ridge(features_test_NF, w_FY, b_Y),
                          targets_test_NY)
  groups = groups or {"all": range(num_targets)}
  out: dict[str, Any] = {
      "alpha_per_target": [alphas[a] for a in chosen_Y],
      "r2_per_target": [float(r) for r in r2_Y]}
  for name, columns in groups.items():
    out[f"{name}_r2"] = float(np.nanmean(r2_Y[list(columns)]))
  return out


@nnx.jit
def _encoder_latents(tokenizer: nnx.Module, frames_STHWC: jnp.ndarray
                     ) -> jnp.ndarray:
  """uint8 windows -> continuous latents before quantization, float32
  [S, T, N * latent channels]."""
  z_STNE = tokenizer.latents(frames_STHWC.astype(jnp.float32) / 255.0)
  return z_STNE.reshape(*z_STNE.shape[:2], -1).astype(jnp.float32)


def encoder_latents(tokenizer: nnx.Module, frames_STHWC: np.ndarray
                    ) -> np.ndarray:
  """Per-frame encoder latents [S * T, F] of uint8 windows [S, T, H, W, C].

  Each window is encoded on its own, so frame t of a window sees frames
  <= t of that window, as in training.
  """
  s = len(frames_STHWC)
  pad = -s % _ENCODE_BATCH  # Pad to whole batches: one compiled shape.
  frames_STHWC = np.concatenate(
      [frames_STHWC, np.zeros((pad, *frames_STHWC.shape[1:]), np.uint8)])
  latents = [np.asarray(_encoder_latents(
      tokenizer, jnp.asarray(frames_STHWC[i:i + _ENCODE_BATCH])))
             for i in range(0, s + pad, _ENCODE_BATCH)]
  latents_STF = np.concatenate(latents)[:s]
  return latents_STF.reshape(-1, latents_STF.shape[-1])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _dynamics_features(graphdefs: tuple[Any, Any], kind: str,
                       states: tuple[Any, Any], frames_STHWC: jax.Array,
                       actions_ST: jax.Array) -> jax.Array:
  tokenizer, dynamics = (nnx.merge(g, s) for g, s in zip(graphdefs, states))
  codes = tokenizer.encode(frames_STHWC.astype(jnp.float32) / 255.0)
  y_STND = build.kind("dynamics", kind).features(dynamics, codes, actions_ST)
  return y_STND.reshape(*y_STND.shape[:2], -1).astype(jnp.float32)


def dynamics_features(tokenizer: nnx.Module, dynamics: nnx.Module, kind: str,
                      frames_STHWC: np.ndarray, actions_ST: np.ndarray
                      ) -> np.ndarray:
  """The dynamics model's own state per frame, [S * T, N * D], over uint8
  windows [S, T, H, W, C] of real frames and their actions: what it knows
  of each frame given the frames and actions up to it."""
  (g_tok, s_tok), (g_dyn, s_dyn) = nnx.split(tokenizer), nnx.split(dynamics)
  s = len(frames_STHWC)
  pad = -s % _ENCODE_BATCH  # Pad to whole batches: one compiled shape.
  frames_STHWC = np.concatenate(
      [frames_STHWC, np.zeros((pad, *frames_STHWC.shape[1:]), np.uint8)])
  actions_ST = np.concatenate(
      [actions_ST, np.zeros((pad, *actions_ST.shape[1:]), actions_ST.dtype)])
  out = [np.asarray(_dynamics_features(
      (g_tok, g_dyn), kind, (s_tok, s_dyn),
      jnp.asarray(frames_STHWC[i:i + _ENCODE_BATCH]),
      jnp.asarray(actions_ST[i:i + _ENCODE_BATCH], jnp.int32)))
         for i in range(0, s + pad, _ENCODE_BATCH)]
  features_STF = np.concatenate(out)[:s]
  return features_STF.reshape(-1, features_STF.shape[-1])


def _windows(episodes: Mapping[str, np.ndarray], window: int,
             max_frames: int, split: str
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The first max_frames // window whole windows, episode-major: frames
  uint8 [S, window, H, W, C], actions [S, window] and states
  [S * window, K+1, 4]."""
  frames_ETHWC, states_ETK4 = episodes["frames"], episodes["states"]
  e, t = frames_ETHWC.shape[:2]
  per_episode = t // window
  count = min(e * per_episode, max_frames // window)
  if count < 1:
    raise JaxWorldError(
        f"The {split} probe episodes ({e} of {t} frames) hold no whole "
        f"window of data.window={window} frames within {max_frames} frames; "
        f"pass longer episodes or a larger frame budget.")
  cut = per_episode * window
  frames_STHWC = frames_ETHWC[:, :cut].reshape(
      e * per_episode, window, *frames_ETHWC.shape[2:])[:count]
  actions_ST = episodes["actions"][:, :cut].reshape(-1, window)[:count]
  states_NK4 = states_ETK4[:, :cut].reshape(-1, *states_ETK4.shape[2:])
  return frames_STHWC, actions_ST, states_NK4[:count * window]


def _targets(states_NK4: np.ndarray) -> tuple[np.ndarray, list[str]]:
  """(x, y) of every ball and the agent, then (vx, vy) of the balls: values
  [N, Y] and names [Y]."""
  n, k1 = states_NK4.shape[:2]
  objects = [f"ball{k}" for k in range(k1 - 1)] + ["agent"]
  names = ([f"{o}_{a}" for o in objects for a in ("x", "y")]
           + [f"{o}_{a}" for o in objects[:-1] for a in ("vx", "vy")])
  return np.concatenate([states_NK4[:, :, :2].reshape(n, -1),
                         states_NK4[:, :k1 - 1, 2:].reshape(n, -1)],
                        axis=1), names


def object_tokens(states_NK4: np.ndarray, image_size: int, patch: int,
                  radius: int = 0) -> np.ndarray:
  """Index [N, K, (2 radius + 1)^2] of the tokens (row-major patches) of the
  square of cells around each ball's centre cell, clipped to the grid
  (radius 0: the token under the centre)."""
  grid = image_size // patch
  cell_NK2 = np.floor(states_NK4[:, :-1, :2] / patch).astype(np.int64)
  offsets = np.arange(-radius, radius + 1)
  dy_R, dx_R = (o.ravel() for o in np.meshgrid(offsets, offsets,
                                                indexing="ij"))
  x_NKR = np.clip(cell_NK2[..., :1] + dx_R, 0, grid - 1)
  y_NKR = np.clip(cell_NK2[..., 1:] + dy_R, 0, grid - 1)
  return y_NKR * grid + x_NKR


def velocity_at_objects(train_NMF: np.ndarray, train_states_NK4: np.ndarray,
                        test_NMF: np.ndarray, test_states_NK4: np.ndarray,
                        image_size: int, patch: int,
                        alphas: Sequence[float] = ALPHAS,
                        radius: int = OBJECT_RADIUS) -> float:
  """Mean held-out R^2 of each ball's velocity (vx, vy) read from the
  features [N, M tokens, F] of the tokens around it: the (2 radius + 1)^2
  cells centred on the one under its centre (one ridge read-out per ball).
  Give only frames with history: from one frame a velocity cannot be
  known.

  A velocity is a property of an object, so a model keeps it where the
  object is; one read-out over every token's features at once must learn
  the same map at each of the M places from a few thousand frames, and
  mostly over-fits. Reading at the object asks only what the state there
  holds. A ball spans up to 2 x 2 cells and moves up to a cell a frame, so
  radius 1 covers where it is, was and is going.
  """
  def at(x_NMF: np.ndarray, states_NK4: np.ndarray) -> list[np.ndarray]:
    idx_NKR = object_tokens(states_NK4, image_size, patch, radius)
    rows_N1 = np.arange(len(x_NMF))[:, None]
    return [x_NMF[rows_N1, idx_NKR[:, k]].reshape(len(x_NMF), -1)
            for k in range(idx_NKR.shape[1])]
  train_K, test_K = at(train_NMF, train_states_NK4), at(test_NMF,
                                                        test_states_NK4)
  r2 = [probe(train_K[k], train_states_NK4[:, k, 2:], test_K[k],
              test_states_NK4[:, k, 2:], alphas)["all_r2"]
        for k in range(len(train_K))]
  return float(np.mean(r2))


def physics_probe(tokenizer: nnx.Module, cfg: Config,
                  train_episodes: Mapping[str, np.ndarray],
                  test_episodes: Mapping[str, np.ndarray],
                  max_train_frames: int = 6144, max_test_frames: int = 1024,
                  alphas: Sequence[float] = ALPHAS,
                  dynamics: nnx.Module | None = None) -> dict[str, Any]:
  """Linear probes of object positions and velocities: in the dynamics
  model's own state (given `dynamics`, of kind `cfg.dynamics.kind`, over
  real frames and actions), the tokenizer's latents and raw pixels.

  Episodes are dicts as `pipeline.load_episodes` returns (frames uint8
  [E, T, H, W, 3], states float32 [E, T, K+1, 4]); frames are cut into
  windows of `cfg.data.window` (whole windows, episode-major, up to the frame
  budgets). Latents: the tokenizer's continuous encoder output before FSQ,
  flattened over tokens. Targets: positions (x, y) of the K balls and the
  agent; velocities (vx, vy) of the balls, in px and px/frame. The first
  frame of each window has no history (as in training), so even a perfect
  encoder cannot give it a velocity: latent velocity R^2 stays below 1.

  Returns {"dynamics": probe dict (given `dynamics` of a kind with
  `features`), "latents": probe dict, "pixels": probe dict, "targets": names of
  the Y targets ("ball0_x", ..., "agent_y", "ball0_vx", ...),
  "num_train_frames", "num_test_frames", "latent_dim", "pixel_dim"}; each
  probe dict has "position_r2", "velocity_r2", and "r2_per_target" and
  "alpha_per_target" in the order of "targets" (see `probe`), and
  "velocity_at_object_r2": the balls' velocities read from the features of
  the token under each ball, over the frames that have one before them in
  their window (`velocity_at_objects`).
  """
  window = cfg.data.window
  train_STHWC, train_actions, train_states = _windows(
      train_episodes, window, max_train_frames, "train")
  test_STHWC, test_actions, test_states = _windows(
      test_episodes, window, max_test_frames, "test")
  (y_train_NY, names), (y_test_NY, _) = (_targets(train_states),
                                         _targets(test_states))
  k1 = train_states.shape[1]
  groups = {"position": range(2 * k1),
            "velocity": range(2 * k1, y_train_NY.shape[1])}
  latents_train = encoder_latents(tokenizer, train_STHWC)
  latents_test = encoder_latents(tokenizer, test_STHWC)
  out = {}
  kind = cfg.dynamics.kind
  n_tokens = build.num_tokens(cfg)

  def probed(train_NF: np.ndarray, test_NF: np.ndarray) -> dict[str, Any]:
    """The whole-state probe, plus the balls' velocities read at each ball
    (the features as [N, tokens, F])."""
    result = probe(train_NF, y_train_NY, test_NF, y_test_NY, alphas, groups)
    # Frames after the first of their window (the windows are consecutive).
    seen = lambda x: x[np.arange(len(x)) % window > 0]
    tokens = lambda x_NF: seen(x_NF).reshape(-1, n_tokens,
                                             x_NF.shape[1] // n_tokens)
    result["velocity_at_object_r2"] = velocity_at_objects(
        tokens(train_NF), seen(train_states), tokens(test_NF),
        seen(test_states), cfg.world.image_size, cfg.tokenizer.patch_size,
        alphas)
    return result

  if dynamics is not None and build.kind("dynamics", kind).features:
    state = lambda f, a: dynamics_features(tokenizer, dynamics, kind, f, a)
    out["dynamics"] = probed(state(train_STHWC, train_actions),
                             state(test_STHWC, test_actions))
  patches = lambda f: np.asarray(toklib.patchify(
      f, cfg.tokenizer.patch_size)).reshape(-1, n_tokens * (
          cfg.tokenizer.patch_size ** 2 * f.shape[-1]))
  pixels = probed(patches(train_STHWC), patches(test_STHWC))
  # An untrained tokenizer (pixel patches) maps each pixel to a latent
  # affinely, which the standardized probe cannot tell from the pixels.
  latents = (probed(latents_train, latents_test)
             if build.tokenizer_kind(cfg).trained else pixels)
  return {
      **out,
      "latents": latents,
      "pixels": pixels,
      "targets": names,
      "num_train_frames": len(y_train_NY), "num_test_frames": len(y_test_NY),
      "latent_dim": latents_train.shape[1],
      "pixel_dim": int(np.prod(train_STHWC.shape[2:]))}


def locate_objects(frames_BTHWC: np.ndarray, num_objects: int,
                   color_tol: float = COLOR_TOL, min_weight: float = 1.0
                   ) -> np.ndarray:
  """Centres (x, y) in px of the K balls and the agent, [B, T, K+1, 2].

  Ball k is found by pixels close to world.PALETTE[k], the agent by white
  ones (world.AGENT_COLOR); each pixel counts by its estimated coverage (so
  soft edges over the background count partly). Frames uint8 or in [0, 1].
  NaN where an object covers less than `min_weight` pixels (hidden or not
  drawn). Occlusion biases a centre towards the visible part.
  """
  if num_objects > len(world.PALETTE):
    raise ValueError(f"Balls k and k + {len(world.PALETTE)} share a colour; "
                     f"locate_objects handles at most {len(world.PALETTE)}.")
  scale = 1.0 if frames_BTHWC.dtype == np.uint8 else 255.0
  p_BTHWC = frames_BTHWC.astype(np.float32) * np.float32(scale)
  h, w = p_BTHWC.shape[2:4]
  rows_H = np.arange(h, dtype=np.float64) + 0.5  # Pixel centres.
  cols_W = np.arange(w, dtype=np.float64) + 0.5
  colors = [*world.PALETTE[:num_objects], world.AGENT_COLOR]
  centres = []
  for color_C in colors:
    coverage_BTHW = (p_BTHWC @ color_C) / float(color_C @ color_C)
    residual_BTHW = np.abs(p_BTHWC - coverage_BTHW[..., None] * color_C).max(-1)
    weight_BTHW = np.where(
        (coverage_BTHW >= MIN_COVERAGE) & (residual_BTHW <= color_tol),
        np.minimum(coverage_BTHW, 1.0), 0.0).astype(np.float64)
    total_BT = weight_BTHW.sum((2, 3))
    found_BT = total_BT >= min_weight
    total_BT = np.where(found_BT, total_BT, 1.0)
    x_BT = weight_BTHW.sum(2) @ cols_W / total_BT
    y_BT = weight_BTHW.sum(3) @ rows_H / total_BT
    centres.append(np.where(found_BT[..., None],
                            np.stack([x_BT, y_BT], -1), np.nan))
  return np.stack(centres, axis=2)


def position_error(pred_frames_BTHWC: np.ndarray, true_states_BTK4: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Object localisation error of (predicted) frames against true states.

  Returns (mean distance in px over episodes and objects found, [T];
  objects not found, int [T], out of B * (K+1) per step). A step where no
  object is found has NaN distance.
  """
  k1 = true_states_BTK4.shape[2]
  located_BTK2 = locate_objects(pred_frames_BTHWC, k1 - 1)
  dist_BTK = np.linalg.norm(located_BTK2 - true_states_BTK4[..., :2], axis=-1)
  found_BTK = ~np.isnan(dist_BTK)
  count_T = found_BTK.sum((0, 2))
  total_T = np.where(found_BTK, dist_BTK, 0.0).sum((0, 2))
  mean_T = np.divide(total_T, count_T, out=np.full(total_T.shape, np.nan),
                     where=count_T > 0)
  return mean_T, (~found_BTK).sum((0, 2))
