"""Raw data `jaxworld data ingest` reads: videos, image folders, NPZ episodes
and Gymnasium environments, each turned into fixed-size RGB frames.

A source is a list of `Unit`s (one video file, one image folder, one NPZ
file, one environment episode); `load(unit, settings)` returns that unit's
arrays in the record schema (records.py), frames already subsampled,
cropped and resized, or raises SourceError naming the unit and the problem.
Units are independent, so ingest runs them in parallel and caches each.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxworld.errors import JaxWorldError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mkv", ".mov", ".avi")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
KINDS = ("video", "images", "npz", "gym")
GYM_PREFIX = "gym:"


class SourceError(JaxWorldError):
  """A raw file or environment that cannot be turned into an episode."""


@dataclasses.dataclass(frozen=True)
class FrameSettings:
  """How raw frames become training frames (part of every cache key)."""
  size: int = 64            # output frames are size x size
  crop: str = "center"      # center: crop to a square first; none: squash
  stride: int = 1           # keep every stride-th frame
  fps: float = 0.0          # videos: resample to this rate (0: native)
  # Gymnasium rollouts.
  episodes: int = 64
  max_steps: int = 64
  repeat_prob: float = 0.8  # sticky-random policy; 0 is uniform random
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Unit:
  kind: str
  name: str                 # stable, relative: the sort and split key
  path: str = ""            # file or folder; gym: the environment id
  index: int = 0            # gym: the episode number

  def identity(self) -> str:
    """What the cache key depends on: content stamp or episode number."""
    if self.kind == "gym":
      return f"gym:{self.path}:{self.index}"
    stat = Path(self.path).stat()
    return f"{self.name}:{stat.st_size}:{stat.st_mtime_ns}"


def _natural(path: Path) -> list[Any]:
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def discover(source: str, kind: str, settings: FrameSettings) -> list[Unit]:
  """The units of a source, sorted; `kind` "auto" goes by file extensions."""
  if source.startswith(GYM_PREFIX) or kind == "gym":
    env_id = source.removeprefix(GYM_PREFIX)
    return [Unit("gym", f"{env_id}/{i:06d}", env_id, i)
            for i in range(settings.episodes)]
  root = Path(source)
  if not root.exists():
    raise SourceError(f"Source {source} does not exist. Pass a folder of "
                      f"videos, image folders or .npz files, one such file, "
                      f"or gym:ENV_ID for a Gymnasium environment.")
  files = [root] if root.is_file() else sorted(
      (p for p in root.rglob("*") if p.is_file()), key=lambda p: (
          p.parent.as_posix(), _natural(p)))
  base = root.parent if root.is_file() else root
  found: dict[str, list[Unit]] = {k: [] for k in KINDS}
  image_dirs: set[Path] = set()
  for f in files:
    ext, name = f.suffix.lower(), f.relative_to(base).as_posix()
    if ext in VIDEO_EXTENSIONS:
      found["video"].append(Unit("video", name, str(f)))
    elif ext == ".npz":
      found["npz"].append(Unit("npz", name, str(f)))
    elif ext in IMAGE_EXTENSIONS:
      image_dirs.add(f.parent)
  found["images"] = [Unit("images", d.relative_to(base).as_posix() or ".",
                          str(d)) for d in sorted(image_dirs)]
  kinds = [k for k in KINDS if found[k]] if kind == "auto" else [kind]
  if kind not in ("auto", *KINDS):
    raise SourceError(f"--kind {kind!r}: use auto, {', '.join(KINDS)}.")
  if len(kinds) != 1 or not found[kinds[0]]:
    what = ", ".join(f"{len(v)} {k}" for k, v in found.items() if v) or "nothing"
    raise SourceError(
        f"{source} holds {what} (videos {', '.join(VIDEO_EXTENSIONS)}; "
        f"images {', '.join(IMAGE_EXTENSIONS)}; .npz). Ingest one kind at a "
        f"time: pass --kind or a folder with one kind of data.")
  return found[kinds[0]]


def fit_frame(image: Image.Image, settings: FrameSettings) -> np.ndarray:
  """One raw image -> uint8 [size, size, 3]: square crop, area resize."""
  image = image.convert("RGB")
  if settings.crop == "center":
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
  image = image.resize((settings.size, settings.size), Image.Resampling.BOX)
  return np.asarray(image, np.uint8)


def _video_frames(path: str, settings: FrameSettings) -> Iterator[np.ndarray]:
  try:
    import av
  except ImportError:
    raise SourceError("PyAV is not installed: pip install 'jaxworld[ingest]' "
                      "(or pip install av).") from None
  with av.open(path) as container:
    if not container.streams.video:
      raise SourceError(f"{path} has no video stream.")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    next_time = None
    for frame in container.decode(stream):
      if settings.fps > 0 and frame.time is not None:
        if next_time is not None and frame.time + 1e-6 < next_time:
          continue  # resample to settings.fps by timestamps
        next_time = (frame.time if next_time is None else next_time) + (
            1.0 / settings.fps)
      yield fit_frame(frame.to_image(), settings)


def _no_actions(frames_THWC: np.ndarray) -> dict[str, np.ndarray]:
  return {"frames": frames_THWC,
          "actions": np.zeros(frames_THWC.shape[0], np.int32)}


def _load_video(unit: Unit, settings: FrameSettings) -> dict[str, np.ndarray]:
  frames = list(_video_frames(unit.path, settings))[::settings.stride]
  if not frames:
    raise SourceError(f"{unit.path} decoded to no frames.")
  return _no_actions(np.stack(frames))


def _load_images(unit: Unit, settings: FrameSettings
                 ) -> dict[str, np.ndarray]:
  paths = sorted((p for p in Path(unit.path).iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural)
  frames = []
  for p in paths[::settings.stride]:
    try:
      with Image.open(p) as image:
        frames.append(fit_frame(image, settings))
    except (OSError, SyntaxError, ValueError) as e:
      raise SourceError(f"{p} is not a readable image ({e}).") from None
  return _no_actions(np.stack(frames))


def _load_npz(unit: Unit, settings: FrameSettings) -> dict[str, np.ndarray]:
  with np.load(unit.path, allow_pickle=False) as npz:
    arrays = {k: npz[k] for k in npz.files}
  frames = arrays.get("frames")
  if frames is None or frames.dtype != np.uint8 or frames.ndim != 4 or (
      frames.shape[-1] != 3) or frames.shape[0] == 0:
    got = "none" if frames is None else f"{frames.dtype}{list(frames.shape)}"
    raise SourceError(f"{unit.path}: `frames` must be uint8 [T, H, W, 3] "
                      f"with T >= 1, got {got}.")
  t = frames.shape[0]
  out = {"frames": np.stack([fit_frame(Image.fromarray(f), settings)
                             for f in frames[::settings.stride]])}
  for key, dtype in (("actions", np.int32), ("rewards", np.float32),
                     ("states", np.float32)):
    if key not in arrays:
      continue
    a = arrays[key]
    if a.shape[:1] != (t,) or (key == "actions" and a.ndim != 1):
      raise SourceError(f"{unit.path}: `{key}` has shape {list(a.shape)}; it "
                        f"needs one entry per frame ({t}).")
    if key == "actions" and not np.issubdtype(a.dtype, np.integer):
      raise SourceError(f"{unit.path}: `actions` are {a.dtype}; ingest takes "
                        f"discrete integer actions.")
    out[key] = a[::settings.stride].astype(dtype)
  if "actions" in out and out["actions"].min() < 0:
    raise SourceError(f"{unit.path}: `actions` has negative entries.")
  return out if "actions" in out else {**_no_actions(out["frames"]), **{
      k: v for k, v in out.items() if k != "frames"}}


def _load_gym(unit: Unit, settings: FrameSettings) -> dict[str, np.ndarray]:
  try:
    import gymnasium as gym
  except ImportError:
    raise SourceError("Gymnasium is not installed: pip install "
                      "'jaxworld[ingest]' (or gymnasium[classic-control]).") from None
  try:
    env = gym.make(unit.path, render_mode="rgb_array")
  except Exception as e:  # noqa: BLE001 - unknown id, missing extra, ...
    raise SourceError(f"Cannot make Gymnasium environment {unit.path!r} "
                      f"({e}).") from None
  try:
    if not isinstance(env.action_space, gym.spaces.Discrete):
      raise SourceError(f"{unit.path} has action space {env.action_space}; "
                        f"ingest records discrete actions only.")
    n = int(env.action_space.n)
    rng = np.random.default_rng([settings.seed, unit.index])
    env.reset(seed=int(rng.integers(2**31)))
    frames, actions, rewards = [env.render()], [], []
    action = int(rng.integers(n))
    for _ in range(settings.max_steps - 1):
      _, reward, terminated, truncated, _ = env.step(action)
      actions.append(action)
      rewards.append(float(reward))
      frames.append(env.render())
      if rng.random() >= settings.repeat_prob:  # sticky-random policy
        action = int(rng.integers(n))
      if terminated or truncated:
        break
    actions.append(action)  # the policy's next choice: never executed
    rewards.append(0.0)
  finally:
    env.close()
  fitted = [fit_frame(Image.fromarray(f), settings)
            for f in frames[::settings.stride]]
  return {"frames": np.stack(fitted),
          "actions": np.asarray(actions[::settings.stride], np.int32),
          "rewards": np.asarray(rewards[::settings.stride], np.float32)}


def has_actions(unit: Unit) -> bool:
  """Whether the unit records real actions (else they are all 0)."""
  if unit.kind == "npz":
    with np.load(unit.path, allow_pickle=False) as npz:
      return "actions" in npz.files
  return unit.kind == "gym"


def gym_num_actions(env_id: str) -> int:
  import gymnasium as gym
  env = gym.make(env_id)
  try:
    return int(env.action_space.n)
  finally:
    env.close()


def load(unit: Unit, settings: FrameSettings) -> dict[str, np.ndarray]:
  """One unit's arrays, or SourceError naming it and the problem."""
  loader = {"video": _load_video, "images": _load_images, "npz": _load_npz,
            "gym": _load_gym}[unit.kind]
  try:
    return loader(unit, settings)
  except SourceError:
    raise
  except Exception as e:  # noqa: BLE001 - decoders raise many kinds
    raise SourceError(f"{unit.path}: cannot read this {unit.kind} source "
                      f"({type(e).__name__}: {e}).") from None


def chunks(arrays: dict[str, np.ndarray], length: int
           ) -> list[dict[str, np.ndarray]]:
  """Consecutive `length`-frame pieces (0: the whole episode); a shorter
  tail is dropped."""
  t = arrays["frames"].shape[0]
  if length <= 0:
    return [arrays]
  return [{k: v[s:s + length] for k, v in arrays.items()}
          for s in range(0, t - length + 1, length)]
