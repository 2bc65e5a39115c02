"""Stepping a world model live: a loaded `World` and one `Session` per page.

Every imagined frame is one call of one compiled program (`World.frame`):
the kind's `dynamics_step` on a history of exactly `window - 1` frames, the
decode of the new frame and the slide of the history, all in one XLA
program. The history never grows, so nothing recompiles however long a
session runs. A session starts from the first `window - 1` real frames of a
held-out episode (so the model sees a full window of real frames, as in
training) and the actions that were taken between them; from then on each
action is the player's.

Sessions are not thread-safe: the server runs every call of a session, one
at a time, on its model thread.

Dimension keys: E episodes, B batch (1 here), T time, C context frames
(window - 1), H/W frame height/width, and "codes" for what the tokenizer
makes of a frame ([N] tokens, or [N, E] latents of a continuous one).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxworld import media
from jaxworld.play.programs import Episodes, Programs


def _frame_program(step: Any, decode: Any):
  """(dynamics_params, tokenizer_params, history_BC, actions_BC, rng_2,
  temperature) -> (frame u8[B, H, W, 3], next history_BC, next rng_2)."""

  def frame(dynamics_params, tokenizer_params, history_BC, actions_BC, rng_2,
            temperature):
    new_B, rng_2 = step(dynamics_params, history_BC, actions_BC, rng_2,
                        temperature)
    window_BT = jnp.concatenate([history_BC, new_B[:, None]], 1)
    return decode(tokenizer_params, window_BT), window_BT[:, 1:], rng_2
  return frame


def _pad_to(episodes: Episodes, length: int) -> Episodes:
  """Episodes of at least `length` frames: a shorter one starts with its
  first frame (and a 0 action) repeated, i.e. a still start."""
  t = episodes.frames_ETHWC.shape[1]
  if t >= length:
    return episodes
  pad = length - t
  return Episodes(
      np.concatenate([np.repeat(episodes.frames_ETHWC[:, :1], pad, 1),
                      episodes.frames_ETHWC], 1),
      np.concatenate([np.zeros_like(episodes.actions_ET[:, :pad]),
                      episodes.actions_ET], 1))


class World:
  """A model ready to play: start contexts encoded, frame program built.

  `warm_up()` compiles everything a session calls, so the first frame a
  person asks for is as fast as the rest.
  """

  def __init__(self, programs: Programs, episodes: Episodes):
    if len(episodes.frames_ETHWC) == 0:
      raise ValueError("no episodes to start from")
    p = self.programs = programs
    self.context = p.window - 1  # history frames of every dynamics step
    episodes = _pad_to(episodes, self.context + 1)
    self.frames_ETHWC = np.asarray(episodes.frames_ETHWC, np.uint8)
    self.actions_ET = (p.infer_actions(self.frames_ETHWC)
                       if p.infer_actions is not None
                       else np.asarray(episodes.actions_ET, np.int32))
    self.num_episodes, self.episode_length = self.frames_ETHWC.shape[:2]
    encode = jax.jit(p.encode)
    # codes of each context frame with up to `window` frames of history, as
    # rollout encodes (one compile per history length, here, once).
    # Kept on the host: a reset copies one episode's in (no device slice,
    # which would compile once per episode index).
    self.context_codes = np.asarray(jnp.stack([
        encode(p.tokenizer_params,
               self.frames_ETHWC[:, max(0, i + 1 - p.window):i + 1])
        for i in range(self.context)], 1))
    self.frame = jax.jit(_frame_program(p.step, p.decode))
    self.temperature = jnp.float32(p.temperature)
    # A session's first history and key are placed as the program's outputs
    # will be (a run's params sit on a one-device mesh, a bundle's on the
    # default device), so the second step does not compile a second program.
    mesh = getattr(jax.tree.leaves(p.dynamics_params)[0].sharding, "mesh",
                   None)
    self.placement = (jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()) if mesh is not None
        else jax.devices()[0])

  @property
  def action_names(self) -> tuple[str, ...]:
    return self.programs.action_names

  def start_frame(self, episode: int) -> np.ndarray:
    """The last real frame of an episode's context, u8[H, W, 3]."""
    return self.frames_ETHWC[episode, self.context - 1]

  def warm_up(self) -> float:
    """Compiles the frame program (two steps of episode 0); seconds."""
    start = time.perf_counter()
    session = Session(self)
    session.reset(0)
    for _ in range(2):
      session.step(0)
    return time.perf_counter() - start

  def compiled_programs(self) -> int:
    """Distinct compiled versions of the frame program (1 after warm-up,
    and still 1 after any number of steps: the history never changes
    shape)."""
    return self.frame._cache_size()


@dataclasses.dataclass(frozen=True)
class Frame:
  """What one step shows: the imagined frame and, while the true episode
  lasts, its real frame at the same time."""
  imagined_HWC: np.ndarray
  truth_HWC: np.ndarray | None
  step: int                 # imagined frames since the start (0: real)
  action: int | None        # the action that led into it
  truth_same_actions: bool  # every action so far was the episode's own
  model_ms: float           # the frame program, device to host included


class Session:
  """One player's world: its episode, history, key and action log."""

  def __init__(self, world: World, action_log_cap: int = 1000,
               record_cap: int = 600):
    self.world = world
    self.record_cap = record_cap
    self.action_log: collections.deque[int] = collections.deque(
        maxlen=action_log_cap)
    self.recording: list[tuple[np.ndarray, np.ndarray | None]] | None = None
    self.episode = -1
    self.step_index = 0

  def reset(self, episode: int) -> Frame:
    """Back to the start of held-out episode `episode` (its real frame)."""
    w = self.world
    if not 0 <= episode < w.num_episodes:
      raise ValueError(f"episode {episode} not in 0..{w.num_episodes - 1}")
    self.episode, self.step_index = episode, 0
    self.same_actions = True
    self.history = jax.device_put(w.context_codes[episode:episode + 1],
                                  w.placement)
    # actions[t] leads out of history frame t: the episode's own between
    # context frames; the last slot is set by each step.
    self.actions_C = np.zeros(w.context, np.int32)
    self.actions_C[:-1] = w.actions_ET[episode, :w.context - 1]
    self.rng_2 = jax.device_put(jax.random.key_data(jax.random.key(
        w.programs.seed, impl=w.programs.key_impl)), w.placement)
    self.action_log.clear()
    frame = Frame(w.start_frame(episode), w.start_frame(episode), 0, None,
                  True, 0.0)
    self._record(frame)
    return frame

  def true_action(self) -> int | None:
    """The action the episode itself took next, or None past its end."""
    w = self.world
    t = w.context - 1 + self.step_index  # the frame the next step leads out of
    return int(w.actions_ET[self.episode, t]) if t + 1 < w.episode_length \
        else None

  def step(self, action: int) -> Frame:
    """One imagined frame after `action`."""
    w = self.world
    if self.episode < 0:
      raise ValueError("reset the session to an episode before stepping")
    if not 0 <= action < len(w.action_names):
      raise ValueError(f"action {action} not in 0..{len(w.action_names) - 1}")
    self.same_actions &= action == self.true_action()
    self.actions_C[-1] = action
    start = time.perf_counter()
    frame_BHWC, self.history, self.rng_2 = w.frame(
        w.programs.dynamics_params, w.programs.tokenizer_params,
        self.history, self.actions_C[None], self.rng_2, w.temperature)
    imagined_HWC = np.asarray(frame_BHWC[0])
    model_ms = (time.perf_counter() - start) * 1e3
    self.actions_C = np.roll(self.actions_C, -1)  # the last slot is next's
    self.step_index += 1
    self.action_log.append(action)
    t = w.context - 1 + self.step_index
    truth = w.frames_ETHWC[self.episode, t] if t < w.episode_length else None
    frame = Frame(imagined_HWC, truth, self.step_index, action,
                  self.same_actions and truth is not None, model_ms)
    self._record(frame)
    return frame

  # --------------------------------------------------------- recording

  def start_recording(self) -> None:
    self.recording = []

  def recording_full(self) -> bool:
    return self.recording is not None and len(self.recording) >= \
        self.record_cap

  def _record(self, frame: Frame) -> None:
    if self.recording is not None and not self.recording_full():
      self.recording.append((frame.imagined_HWC, frame.truth_HWC))

  def stop_recording(self) -> tuple[bytes, int]:
    """(GIF of the recorded frames, true episode left and imagination
    right, frame count); recording stops."""
    frames, self.recording = self.recording or [], None
    if not frames:
      return b"", 0
    imagined_1THWC = np.stack([f for f, _ in frames])[None]
    truth_1THWC = np.stack([t if t is not None else np.zeros_like(f)
                            for f, t in frames])[None]
    images = media.side_by_side(truth_1THWC, imagined_1THWC, context=0,
                                scale=4)
    return media.gif_bytes(images, frame_ms=100), len(frames)
