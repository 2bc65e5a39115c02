"""The Grain pipeline from episode stores to training batches.

    episode indices -> seeded shuffle (reshuffled each epoch) -> read a random
    fixed-length window from the store (data/stores.py: ArrayRecord or zarr)
    -> [weighted mixture of datasets] -> batch -> this process's batch slices
    -> worker processes (data.num_workers) or a prefetch thread

Every step is a deterministic function of `data.shuffle_seed` and the
position in the stream, so the global position (global batches consumed,
saved with every checkpoint) restarts the exact same following batches on
any number of processes, and 0, 1 or 2 worker processes give the same
batches in the same order.

Batches are numpy dicts: `frames` uint8 [B, T, H, W, 3], `actions` int32
[B, T], B the per-process batch and T `data.window`; with
`data.bad_records=skip` also `skipped` int32 [B], the damaged records passed
over to fill each row; `record` int32 [B, 2] names each row's episode as
(dataset, episode index in its train split), so that a bad batch can be
traced to its records. Frames stay uint8 until they are on device (4x less
host-to-device traffic).
"""

from __future__ import annotations

import logging
from pathlib import Path

import grain
import numpy as np

from jaxworld.config import DataConfig
from jaxworld.data import records, stores
from jaxworld.errors import JaxWorldError

log = logging.getLogger(__name__)


def dataset_weights(cfg: DataConfig) -> list[tuple[str, float]]:
  """(path, weight) of every dataset training reads: data.path alone, or the
  data.mixture entries."""
  if cfg.mixture:
    return [(str(path), float(weight)) for path, weight in cfg.mixture]
  return [(cfg.path, 1.0)]


def eval_path(cfg: DataConfig) -> str:
  """The dataset whose eval split rollouts and eval read: data.path, or the
  first data.mixture entry."""
  return dataset_weights(cfg)[0][0]


class ReadWindow(grain.transforms.RandomMap):
  """Episode index -> a random `window`-frame crop of that episode.

  With `skip`, a damaged record is passed over for the next one (the same
  one on every run, so the stream stays deterministic) and counted in the
  element's `skipped`. `record` is (component, episode): `component` is the
  dataset's position in data.mixture (0 for data.path).
  """

  def __init__(self, store: stores.ArrayRecordStore | stores.ZarrStore,
               window: int, skip: bool, component: int = 0):
    self.store, self.window, self.skip = store, window, skip
    self.component = component

  def random_map(self, index: int, rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    n = len(self.store)
    for attempt in range(n):
      try:
        out = self.store.window((index + attempt) % n, self.window, rng)
        break
      except records.RecordError as e:
        if not self.skip:
          raise
        log.warning("skipping: %s", str(e).split(". ")[0])
    else:
      raise records.RecordError(f"Every record of {self.store.where(0)}'s "
                                f"dataset is damaged; re-ingest it.")
    if self.skip:
      out["skipped"] = np.int32(attempt)
    out["record"] = np.array([self.component, (index + attempt) % n],
                             np.int32)
    return out


def _windows(cfg: DataConfig, root: str | Path, component: int
             ) -> grain.MapDataset:
  store = stores.open_store(root, "train", cfg.bad_records == "skip")
  if len(store) == 0:
    raise records.RecordError(f"The train split of {root} holds no readable "
                              f"episodes; re-ingest it.")
  seed = int(np.random.SeedSequence(
      [cfg.shuffle_seed, component]).generate_state(1)[0])
  return (grain.MapDataset.range(len(store)).seed(seed).shuffle()
          .repeat(None)
          .random_map(ReadWindow(store, cfg.window, cfg.bad_records == "skip",
                                 component)))


def train_dataset(cfg: DataConfig, root: str | Path | None, batch_size: int,
                  process_index: int = 0, process_count: int = 1,
                  start: int = 0) -> grain.IterDataset:
  """Endless shuffled batches of windows for one process.

  `root` overrides data.path (tests); with data.mixture, each batch row comes
  from dataset k with probability weight_k / sum(weights).

  There is one global stream of windows, a function of the seed alone, cut
  into global batches of `batch_size * process_count` rows; process p reads
  rows [p * batch_size, (p + 1) * batch_size) of each. So any number of
  processes trains on exactly the batches one process would, and within an
  epoch the processes read disjoint episodes that together cover them all.

  `start` is the global batch to begin with (a resumed run's saved
  position): any process count continues the same global stream from there.
  """
  parts = dataset_weights(cfg) if root is None else [(str(root), 1.0)]
  windows = [_windows(cfg, path, k) for k, (path, _) in enumerate(parts)]
  ds = windows[0] if len(windows) == 1 else grain.MapDataset.mix(
      windows, [w for _, w in parts])
  ds = ds.batch(batch_size, drop_remainder=True)
  # Lazy: only this process's slices are ever read and decoded. Global
  # batch g is per-process batches [g * P, (g + 1) * P); process p reads
  # the p-th of each from global batch `start` on. Slicing here, rather than
  # seeking the iterator, also works with worker processes (Grain's worker
  # iterator cannot seek: set_next_index raises NotImplementedError).
  ds = ds[start * process_count + process_index::process_count]
  read = grain.ReadOptions(num_threads=max(1, cfg.num_workers or 2),
                           prefetch_buffer_size=cfg.prefetch)
  it_ds = ds.to_iter_dataset(read)
  if cfg.num_workers > 0:
    _mark_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=cfg.num_workers, per_worker_buffer_size=cfg.prefetch))
  return it_ds


def check_shards(root: str | Path, split: str) -> None:
  """Opens the split and reads its first episode: a wrong or damaged dataset
  is reported before anything is compiled (later records are checked as
  they are read)."""
  store = stores.open_store(root, split)
  if len(store) == 0:
    raise records.RecordError(f"The {split} split of {root} holds no "
                              f"episodes; re-ingest or regenerate it.")
  store.episode(0)


def _mark_absl_flags_parsed() -> None:
  """Grain's worker processes read absl flags; we are not an absl app, so
  mark the (default) flags parsed rather than crash in the workers."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def load_episodes(root: str | Path, split: str, count: int
                  ) -> dict[str, np.ndarray]:
  """The first `count` episodes of a split, stacked (for eval and rollout)."""
  store = stores.open_store(root, split)
  if count > len(store):
    raise JaxWorldError(f"Asked for {count} {split} episodes but the dataset "
                        f"at {root} has {len(store)}; lower the count or "
                        f"regenerate with more data.num_eval_episodes.")
  episodes = [store.episode(i) for i in range(count)]
  lengths = {e["frames"].shape[0] for e in episodes}
  if len(lengths) > 1:  # e.g. whole videos in a zarr store: cut to the shortest
    episodes = [{k: v[:min(lengths)] if v.shape[:1] == e["frames"].shape[:1]
                 else v for k, v in e.items()} for e in episodes]
  return {k: np.stack([e[k] for e in episodes]) for k in episodes[0]}
