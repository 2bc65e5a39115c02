"""The embedded procedural 2D physics world: bouncing balls and a pushing agent.

K = `num_objects` balls and an agent (a white axis-aligned square moved by 5
discrete actions) in a square frame. Coordinates are continuous pixels, x
right and y down; pixel (row i, column j) covers [j, j+1) x [i, i+1). Pure
numpy, vectorised over episodes; only time is a Python loop.

Each frame is two substeps (half the travel between collision checks) of:
  * agent moves part of `agent_speed` px in the action's direction, clamped
    to the frame; balls: vy += gravity, then position += velocity;
  * ball-ball elastic collisions along the centre normal, mass ~ area (r^2);
    overlapping balls separate in inverse proportion to mass;
  * walls: centres clamped to [r, size - r], the normal velocity reflected
    and scaled by `restitution`;
  * agent push: a ball overlapping the square moves out along the
    closest-point normal and its velocity relative to the agent is reflected
    (an elastic moving wall), so a moving agent kicks balls away;
  * energy floor and cap: a ball slower than `speed_min` is sped up to it
    (else restitution and gravity settle balls on the floor); one faster than
    2 * `speed_max` is slowed to that (limits tunnelling).
The agent has infinite mass, except that a ball pinned between it and a wall
stops it: after the substeps it backs off by the overlap.

State layout: `states[e, t]` is [K+1, 4], rows (x, y, vx, vy) for the K balls
then the agent. A ball's (vx, vy) is the velocity it carries out of frame t;
the agent's is its displacement into frame t (zero at t = 0). Ball k is drawn
in PALETTE[k % len(PALETTE)], later balls over earlier, the agent on top.

Dimension keys: E episodes, T frames, K balls, N frames of a render chunk,
P render-patch side, G soft-edge pixels, X bytes of all frames.
"""

from __future__ import annotations

import numpy as np

from jaxworld.config import WorldConfig

NUM_ACTIONS = 5
ACTION_NAMES = ("noop", "up", "down", "left", "right")
# (dx, dy) per action; y grows downwards, so "up" is -y.
_ACTION_DIRS_A2 = np.array([[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]],
                           np.float64)
PALETTE = np.array([[255, 60, 60], [60, 220, 60], [70, 130, 255],
                    [255, 220, 40], [230, 60, 230], [40, 220, 230],
                    [255, 140, 20], [150, 90, 255]], np.float32)
AGENT_COLOR = np.array([255, 255, 255], np.float32)
_RENDER_CHUNK_EPISODES = 64  # Bounds render temporaries to tens of MB.
_PLACEMENT_TRIES = 20
_SUBSTEPS = 2


def _norm(v: np.ndarray) -> np.ndarray:
  return np.sqrt(np.sum(v * v, axis=-1))


def _agent_contact(radii_EK, pos_EK2, agent_E2, half: float):
  """Outward normals [E, K, 2] and depths [E, K] (> 0: touching) of balls.

  Closest-point normals; a centre inside the square exits the nearest face.
  """
  rel_EK2 = pos_EK2 - agent_E2[:, None]
  gap_EK2 = rel_EK2 - np.clip(rel_EK2, -half, half)
  dist_EK = _norm(gap_EK2)
  inside_EK = dist_EK < 1e-9
  depth_EK2 = half - np.abs(rel_EK2)
  face_EK2 = (np.eye(2)[np.argmin(depth_EK2, -1)]
              * np.where(rel_EK2 >= 0, 1.0, -1.0))
  n_EK2 = np.where(inside_EK[..., None], face_EK2,
                   gap_EK2 / np.maximum(dist_EK, 1e-9)[..., None])
  pen_EK = np.where(inside_EK, radii_EK + depth_EK2.min(-1),
                    radii_EK - dist_EK)
  return n_EK2, pen_EK


def _initial_state(cfg: WorldConfig, rng: np.random.Generator, e: int):
  """Radii, ball positions and velocities, and agent position."""
  k, size, half = cfg.num_objects, float(cfg.image_size), cfg.agent_size / 2
  radii_EK = rng.uniform(cfg.radius_min, cfg.radius_max, (e, k))
  speed_EK = rng.uniform(cfg.speed_min, cfg.speed_max, (e, k))
  angle_EK = rng.uniform(0.0, 2 * np.pi, (e, k))
  dir_EK2 = np.stack([np.cos(angle_EK), np.sin(angle_EK)], -1)
  vel_EK2 = speed_EK[..., None] * dir_EK2
  agent_E2 = rng.uniform(half, size - half, (e, 2))
  r_EK1 = radii_EK[..., None]
  pos_EK2 = rng.uniform(r_EK1, size - r_EK1, (e, k, 2))
  # Vectorised rejection: redraw balls within 1 px of a ball or the agent. A
  # fixed number of rounds keeps the rng stream (so the output) fixed; an
  # overlap left over is resolved by the first physics step.
  for _ in range(_PLACEMENT_TRIES):
    candidate_EK2 = rng.uniform(r_EK1, size - r_EK1, (e, k, 2))
    dist_EKK = _norm(pos_EK2[:, :, None] - pos_EK2[:, None])
    touch_EKK = dist_EKK < radii_EK[:, :, None] + radii_EK[:, None] + 1
    touch_EKK &= ~np.eye(k, dtype=bool)
    _, pen_EK = _agent_contact(radii_EK, pos_EK2, agent_E2, half)
    bad_EK = touch_EKK.any(-1) | (pen_EK > -1)
    pos_EK2 = np.where(bad_EK[..., None], candidate_EK2, pos_EK2)
  return radii_EK, pos_EK2, vel_EK2, agent_E2


def _collide_balls(radii_EK, pos_EK2, vel_EK2) -> None:
  """Elastic ball-ball collisions, in place, one pair at a time.

  Sequential pairs (K is small) are more robust than a simultaneous update
  when three balls touch.
  """
  mass_EK = radii_EK ** 2
  for i in range(radii_EK.shape[1]):
    for j in range(i + 1, radii_EK.shape[1]):
      d_E2 = pos_EK2[:, j] - pos_EK2[:, i]
      dist_E = _norm(d_E2)
      n_E2 = np.where(dist_E[:, None] > 1e-9,
                      d_E2 / np.maximum(dist_E, 1e-9)[:, None], [1.0, 0.0])
      overlap_E = np.maximum(radii_EK[:, i] + radii_EK[:, j] - dist_E, 0.0)
      w_i_E = mass_EK[:, j] / (mass_EK[:, i] + mass_EK[:, j])
      pos_EK2[:, i] -= n_E2 * (overlap_E * w_i_E)[:, None]
      pos_EK2[:, j] += n_E2 * (overlap_E * (1 - w_i_E))[:, None]
      vn_E = np.sum((vel_EK2[:, j] - vel_EK2[:, i]) * n_E2, -1)
      vn_E = np.where((overlap_E > 0) & (vn_E < 0), vn_E, 0.0)
      vel_EK2[:, i] += n_E2 * (2 * w_i_E * vn_E)[:, None]
      vel_EK2[:, j] -= n_E2 * (2 * (1 - w_i_E) * vn_E)[:, None]


def _step_balls(cfg, radii_EK, pos_EK2, vel_EK2, agent_E2, agent_vel_E2,
                dt: float) -> None:
  """Advances balls by `dt` frames, in place; velocities are px/frame."""
  low_EK1 = radii_EK[..., None]
  high_EK1 = cfg.image_size - low_EK1
  vel_EK2[..., 1] += cfg.gravity * dt
  pos_EK2 += vel_EK2 * dt
  _collide_balls(radii_EK, pos_EK2, vel_EK2)
  bounce_EK2 = np.abs(vel_EK2) * cfg.restitution
  vel_EK2[:] = np.where(pos_EK2 < low_EK1, bounce_EK2, vel_EK2)
  vel_EK2[:] = np.where(pos_EK2 > high_EK1, -bounce_EK2, vel_EK2)
  np.clip(pos_EK2, low_EK1, high_EK1, out=pos_EK2)
  # The agent acts after the walls, so a ball it pins against a wall keeps
  # a velocity into the wall rather than bouncing off the wall through the
  # agent. Clamp again to stay inside; `_move_agent` then backs off.
  n_EK2, pen_EK = _agent_contact(radii_EK, pos_EK2, agent_E2,
                                 cfg.agent_size / 2)
  pos_EK2 += n_EK2 * np.maximum(pen_EK, 0.0)[..., None]
  vn_EK = np.sum((vel_EK2 - agent_vel_E2[:, None]) * n_EK2, -1)
  vn_EK = np.where((pen_EK > 0) & (vn_EK < 0), vn_EK, 0.0)
  vel_EK2 -= n_EK2 * (2 * vn_EK)[..., None]
  np.clip(pos_EK2, low_EK1, high_EK1, out=pos_EK2)
  speed_EK = _norm(vel_EK2)  # Energy floor and cap (module docstring).
  target_EK = np.clip(speed_EK, cfg.speed_min, 2 * cfg.speed_max)
  vel_EK2 *= (target_EK / np.maximum(speed_EK, 1e-9))[..., None]


def _move_agent(cfg, radii_EK, pos_EK2, vel_EK2, agent_E2, step_E2):
  """Steps the agent and balls one frame; returns the agent's position."""
  half = cfg.agent_size / 2
  target_E2 = np.clip(agent_E2 + step_E2, half, cfg.image_size - half)
  move_E2 = target_E2 - agent_E2
  for sub in range(1, _SUBSTEPS + 1):
    _step_balls(cfg, radii_EK, pos_EK2, vel_EK2,
                agent_E2 + move_E2 * (sub / _SUBSTEPS), move_E2,
                1.0 / _SUBSTEPS)
  # Balls left overlapping are pinned against a wall: they block the agent.
  # Per axis, take the deepest push each way (opposite pushes partly cancel).
  n_EK2, pen_EK = _agent_contact(radii_EK, pos_EK2, target_E2, half)
  back_EK2 = n_EK2 * np.maximum(pen_EK, 0.0)[..., None]
  back_E2 = back_EK2.max(1, initial=0.0) + back_EK2.min(1, initial=0.0)
  return np.clip(target_E2 - back_E2, half, cfg.image_size - half)


def _patch(centre_N2: np.ndarray, first_frame: int, reach: float, size: int):
  """Pixel indices [N, P, P] and pixel-centre offsets of a patch per centre.

  Indices are into all frames flattened (frame n is `first_frame + n`);
  offsets are dx [N, 1, P] and dy [N, P, 1]. Objects lie inside the frame,
  so clamping the patch to it never cuts them.
  """
  p = min(2 * int(np.ceil(reach + 1)), size)
  corner_N2 = np.floor(centre_N2).astype(np.int64) - p // 2
  corner_N2 = np.clip(corner_N2, 0, size - p)
  cols_NP = corner_N2[:, 0:1] + np.arange(p)
  rows_NP = corner_N2[:, 1:2] + np.arange(p)
  frame_N1 = first_frame + np.arange(len(centre_N2))[:, None]
  flat_NPP = ((frame_N1 * size + rows_NP) * size)[:, :, None] + cols_NP[:, None]
  centre_N2 = centre_N2.astype(np.float32)
  dx_N1P = (cols_NP.astype(np.float32) + 0.5 - centre_N2[:, 0:1])[:, None, :]
  dy_NP1 = (rows_NP.astype(np.float32) + 0.5 - centre_N2[:, 1:2])[:, :, None]
  return flat_NPP, dx_N1P, dy_NP1


def _composite(bytes_X, flat_NPP, alpha_NPP, color_C) -> None:
  """Blends `color_C` over pixels `flat_NPP` of the flat RGB `bytes_X`."""
  # Only the soft edge is read and blended; scatters dominate the cost.
  rgb_3 = np.arange(3)
  full_NPP = alpha_NPP >= 1.0
  bytes_X[flat_NPP[full_NPP][:, None] * 3 + rgb_3] = color_C.astype(np.uint8)
  edge_NPP = (alpha_NPP > 0.0) & ~full_NPP
  idx_G3 = flat_NPP[edge_NPP][:, None] * 3 + rgb_3
  old_G3 = bytes_X[idx_G3].astype(np.float32)
  new_G3 = old_G3 + alpha_NPP[edge_NPP][:, None] * (color_C - old_G3) + 0.5
  bytes_X[idx_G3] = new_G3.astype(np.uint8)


def render(cfg: WorldConfig, states_ETK4: np.ndarray, radii_EK: np.ndarray
           ) -> np.ndarray:
  """Draws states [E, T, K+1, 4] as uint8 frames [E, T, H, W, 3].

  Shapes get a 1-px linear soft edge. Each object touches only a patch
  around it, ~15x less work than testing every pixel.
  """
  e, t, k = states_ETK4.shape[0], states_ETK4.shape[1], radii_EK.shape[1]
  size, half = cfg.image_size, cfg.agent_size / 2
  frames_ETHWC = np.zeros((e, t, size, size, 3), np.uint8)
  bytes_X = frames_ETHWC.reshape(-1)  # A view: writes land in the frames.
  for start in range(0, e, _RENDER_CHUNK_EPISODES):
    stop = min(start + _RENDER_CHUNK_EPISODES, e)
    pos_NK2 = states_ETK4[start:stop, :, :, :2].reshape(-1, k + 1, 2)
    radii_NK = np.repeat(radii_EK[start:stop], t, axis=0).astype(np.float32)
    for b in range(k):
      flat_NPP, dx_N1P, dy_NP1 = _patch(pos_NK2[:, b], start * t,
                                        cfg.radius_max + 0.5, size)
      dist_NPP = np.sqrt(dx_N1P * dx_N1P + dy_NP1 * dy_NP1)
      alpha_NPP = np.clip(radii_NK[:, b, None, None] + 0.5 - dist_NPP, 0, 1)
      _composite(bytes_X, flat_NPP, alpha_NPP, PALETTE[b % len(PALETTE)])
    flat_NPP, dx_N1P, dy_NP1 = _patch(pos_NK2[:, k], start * t, half + 0.5,
                                      size)
    alpha_NPP = (np.clip(half + 0.5 - np.abs(dx_N1P), 0, 1)
                 * np.clip(half + 0.5 - np.abs(dy_NP1), 0, 1))
    _composite(bytes_X, flat_NPP, alpha_NPP, AGENT_COLOR)
  return frames_ETHWC


def _check_actions(actions_ET, e: int, t: int) -> np.ndarray:
  actions_ET = np.asarray(actions_ET)
  if actions_ET.shape != (e, t):
    raise ValueError(f"actions_ET has shape {actions_ET.shape}; expected "
                     f"(num_episodes, num_frames) = ({e}, {t}).")
  if not np.issubdtype(actions_ET.dtype, np.integer):
    raise ValueError(f"actions_ET must hold integers, got dtype "
                     f"{actions_ET.dtype}.")
  low, high = actions_ET.min(), actions_ET.max()
  if low < 0 or high >= NUM_ACTIONS:
    raise ValueError(f"actions_ET values must be in [0, {NUM_ACTIONS}) "
                     f"({', '.join(ACTION_NAMES)}); got min {low}, max {high}.")
  return actions_ET.astype(np.int32)


def generate(cfg: WorldConfig, num_episodes: int, num_frames: int, seed: int,
             actions_ET: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Simulates and renders `num_episodes` episodes of `num_frames` frames.

  `actions[:, t]` is taken after frame t is drawn, so it shapes frame t+1.
  Without `actions_ET` a sticky random policy acts: repeat the last action
  with probability `action_repeat_prob`, else draw one uniformly. The initial
  state is drawn before the policy, so one seed with different given actions
  starts from the same state. Deterministic in all arguments.

  Returns frames uint8 [E, T, H, W, 3], actions int32 [E, T], states float32
  [E, T, K+1, 4] (see the module docstring) and radii float32 [E, K].
  """
  e, t_max, k = num_episodes, num_frames, cfg.num_objects
  if e < 1 or t_max < 1:
    raise ValueError(f"num_episodes and num_frames must be >= 1, got {e} "
                     f"and {t_max}.")
  if actions_ET is not None:
    actions_ET = _check_actions(actions_ET, e, t_max)
  rng = np.random.default_rng(seed)
  radii_EK, pos_EK2, vel_EK2, agent_E2 = _initial_state(cfg, rng, e)
  if actions_ET is None:
    repeat_ET = rng.random((e, t_max)) < cfg.action_repeat_prob
    actions_ET = rng.integers(0, NUM_ACTIONS, (e, t_max)).astype(np.int32)
    for t in range(1, t_max):
      actions_ET[:, t] = np.where(repeat_ET[:, t], actions_ET[:, t - 1],
                                  actions_ET[:, t])
  states_ETK4 = np.zeros((e, t_max, k + 1, 4), np.float32)
  agent_vel_E2 = np.zeros((e, 2))
  for t in range(t_max):
    states_ETK4[:, t, :k] = np.concatenate([pos_EK2, vel_EK2], -1)
    states_ETK4[:, t, k] = np.concatenate([agent_E2, agent_vel_E2], -1)
    if t == t_max - 1:
      break  # The last action's outcome is never drawn.
    step_E2 = _ACTION_DIRS_A2[actions_ET[:, t]] * cfg.agent_speed
    moved_E2 = _move_agent(cfg, radii_EK, pos_EK2, vel_EK2, agent_E2, step_E2)
    agent_vel_E2, agent_E2 = moved_E2 - agent_E2, moved_E2
  radii_EK = radii_EK.astype(np.float32)
  return {"frames": render(cfg, states_ETK4, radii_EK), "actions": actions_ET,
          "states": states_ETK4, "radii": radii_EK}


def describe_motion(states: np.ndarray) -> dict[str, float]:
  """Mean ball and agent speed, px/frame, of states [..., K+1, 4]."""
  speed_K1 = np.sqrt(np.sum(states[..., 2:4].astype(np.float64) ** 2, -1))
  return {"mean_ball_speed": float(speed_K1[..., :-1].mean()),
          "mean_agent_speed": float(speed_K1[..., -1].mean())}
