"""The Grain pipeline from episode records to training batches.

    ArrayRecord shards -> decode -> seeded shuffle (reshuffled each epoch)
    -> random fixed-length window -> batch -> this process's batch slices
    -> worker processes (data.num_workers) or a prefetch thread

Every step is a deterministic function of `data.shuffle_seed` and the
position in the stream, so the iterator's state (a few integers, saved with
every checkpoint) restores the exact same following batches.

Batches are numpy dicts: `frames` uint8 [B, T, H, W, 3], `actions` int32
[B, T], B the per-process batch and T `data.window`. Frames stay uint8 until
they are on device (4x less host-to-device traffic).
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jaxworld.config import DataConfig
from jaxworld.data import records
from jaxworld.errors import JaxWorldError


class _Decode:
  """Decodes record `index` of the concatenated shards, naming it on error."""

  def __init__(self, paths: list[str], counts: list[int]):
    self.paths = paths
    self.starts = list(np.cumsum([0] + counts[:-1]))

  def __call__(self, index: int, record: bytes) -> dict[str, np.ndarray]:
    shard = bisect.bisect_right(self.starts, index) - 1
    where = (f"Record {index - self.starts[shard]} of shard "
             f"{self.paths[shard]}")
    return records.decode_episode(record, where)


class RandomWindow(grain.transforms.RandomMap):
  """A random `window`-frame crop of an episode's frames and actions."""

  def __init__(self, window: int):
    self.window = window

  def random_map(self, episode: dict[str, np.ndarray],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    t = episode["frames"].shape[0]
    if t < self.window:
      raise JaxWorldError(f"Episodes have {t} frames, fewer than "
                          f"data.window={self.window}; lower data.window.")
    start = int(rng.integers(0, t - self.window + 1))
    return {"frames": episode["frames"][start:start + self.window],
            "actions": episode["actions"][start:start + self.window]}


def episode_source(root: str | Path, split: str) -> grain.MapDataset:
  """All episodes of a split as a decoded, random-access MapDataset."""
  paths = records.shard_paths(root, split)
  source = grain.sources.ArrayRecordDataSource(paths)
  counts = [len(grain.sources.ArrayRecordDataSource([p])) for p in paths]
  return grain.MapDataset.source(source).map_with_index(_Decode(paths, counts))


def check_shards(root: str | Path, split: str) -> None:
  """Decodes the first record of every shard: a wrong or damaged file is
  reported before anything is compiled (later records are checked as read)."""
  for path in records.shard_paths(root, split):
    source = grain.sources.ArrayRecordDataSource([path])
    if len(source) == 0:
      raise records.RecordError(f"Shard {path} holds no records; regenerate "
                                f"the dataset.")
    episode = records.decode_episode(source[0], f"Record 0 of shard {path}")
    missing = {"frames", "actions"} - set(episode)
    if missing:
      raise records.RecordError(f"Record 0 of shard {path} has no "
                                f"{', '.join(sorted(missing))}; regenerate "
                                f"the dataset.")


def train_dataset(cfg: DataConfig, root: str | Path, batch_size: int,
                  process_index: int = 0, process_count: int = 1
                  ) -> grain.IterDataset:
  """Endless shuffled batches of windows for one process.

  There is one global stream of windows, a function of the seed alone, cut
  into global batches of `batch_size * process_count` rows; process p reads
  rows [p * batch_size, (p + 1) * batch_size) of each. So any number of
  processes trains on exactly the batches one process would, and within an
  epoch the processes read disjoint episodes that together cover them all.
  """
  ds = episode_source(root, "train")
  seed = int(np.random.SeedSequence([cfg.shuffle_seed, 0]).generate_state(1)[0])
  ds = (ds.seed(seed).shuffle().repeat(None)
        .random_map(RandomWindow(cfg.window))
        .batch(batch_size, drop_remainder=True))
  # Lazy: only this process's slices are ever read and decoded.
  ds = ds[process_index::process_count]
  read = grain.ReadOptions(num_threads=max(1, cfg.num_workers or 2),
                           prefetch_buffer_size=cfg.prefetch)
  it_ds = ds.to_iter_dataset(read)
  if cfg.num_workers > 0:
    _mark_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=cfg.num_workers, per_worker_buffer_size=cfg.prefetch))
  return it_ds


def _mark_absl_flags_parsed() -> None:
  """Grain's worker processes read absl flags; we are not an absl app, so
  mark the (default) flags parsed rather than crash in the workers."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def load_episodes(root: str | Path, split: str, count: int
                  ) -> dict[str, np.ndarray]:
  """The first `count` episodes of a split, stacked (for eval and rollout)."""
  ds = episode_source(root, split)
  if count > len(ds):
    raise JaxWorldError(f"Asked for {count} {split} episodes but the dataset "
                        f"at {root} has {len(ds)}; lower the count or "
                        f"regenerate with more data.num_eval_episodes.")
  episodes = [ds[i] for i in range(count)]
  return {k: np.stack([e[k] for e in episodes]) for k in episodes[0]}


def element_spec(batch: dict[str, Any]) -> str:
  return ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in batch.items())
