"""One split of a dataset as random-access episodes, whatever the storage.

`open_store(root, split)` reads `dataset.json` and returns an ArrayRecord or
a zarr store with one interface:

    len(store)                        episodes
    store.episode(i)                  all arrays of episode i, checked
    store.window(i, length, rng)      frames and actions of a random window
    store.where(i)                    "Record 3 of shard .../x.array_record"

Every episode read is checked (records.check_episode: dtypes, frame size,
one action per frame inside the action set) and any failure is a
RecordError naming the file and record, which the pipeline raises or skips
(data.bad_records). Stores are picklable: Grain worker processes reopen the
files they read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from jaxworld.data import records
from jaxworld.errors import JaxWorldError

log = logging.getLogger(__name__)


class _Store:
  image_size: int
  num_actions: int

  def __len__(self) -> int:
    raise NotImplementedError

  def check(self, episode: dict[str, np.ndarray], i: int
            ) -> dict[str, np.ndarray]:
    return records.check_episode(episode, self.where(i), self.image_size,
                                 self.num_actions)

  def where(self, i: int) -> str:
    raise NotImplementedError

  def episode(self, i: int) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def window(self, i: int, length: int, rng: np.random.Generator
             ) -> dict[str, np.ndarray]:
    raise NotImplementedError


def _start(num_frames: int, length: int, rng: np.random.Generator,
           where: str) -> int:
  if num_frames < length:
    raise JaxWorldError(f"{where} has {num_frames} frames, fewer than "
                        f"data.window={length}; lower data.window.")
  return int(rng.integers(0, num_frames - length + 1))


class ArrayRecordStore(_Store):
  """Episodes as records in ArrayRecord shards (one record, one episode)."""

  def __init__(self, root: str | Path, split: str, meta: dict[str, Any],
               skip_bad: bool = False):
    import grain
    self.image_size, self.num_actions = meta["image_size"], meta["num_actions"]
    self.paths = records.shard_paths(root, split)
    counts = []
    for path in self.paths:
      try:
        counts.append(len(grain.sources.ArrayRecordDataSource([path])))
      except Exception as e:  # noqa: BLE001 - the C++ reader's RuntimeError
        if not skip_bad:
          raise records.RecordError(
              f"Shard {path} cannot be opened ({e}). The file is truncated "
              f"or damaged; re-ingest or regenerate the dataset, or set "
              f"data.bad_records=skip to train on the other shards.") from None
        log.warning("skipping unreadable shard %s (%s)", path, e)
        counts.append(0)
    self.bad_shards = [p for p, n in zip(self.paths, counts) if n == 0]
    self.starts = np.cumsum([0] + counts)
    self._sources: dict[int, Any] = {}

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_sources": {}}

  def __len__(self) -> int:
    return int(self.starts[-1])

  def _locate(self, i: int) -> tuple[int, int]:
    shard = int(np.searchsorted(self.starts, i, side="right")) - 1
    return shard, i - int(self.starts[shard])

  def where(self, i: int) -> str:
    shard, local = self._locate(i)
    return f"Record {local} of shard {self.paths[shard]}"

  def record(self, i: int) -> bytes:
    import grain
    shard, local = self._locate(i)
    try:
      if shard not in self._sources:
        self._sources[shard] = grain.sources.ArrayRecordDataSource(
            [self.paths[shard]])
      return self._sources[shard][local]
    except Exception as e:  # noqa: BLE001 - the C++ reader's RuntimeError
      raise records.RecordError(
          f"{self.where(i)} cannot be read ({e}); re-ingest or regenerate "
          f"the dataset, or set data.bad_records=skip.") from None

  def episode(self, i: int) -> dict[str, np.ndarray]:
    return self.check(records.decode_episode(self.record(i), self.where(i)), i)

  def window(self, i: int, length: int, rng: np.random.Generator
             ) -> dict[str, np.ndarray]:
    episode = self.episode(i)
    start = _start(episode["frames"].shape[0], length, rng, self.where(i))
    return {"frames": episode["frames"][start:start + length],
            "actions": episode["actions"][start:start + length]}


class ZarrStore(_Store):
  """Episodes as zarr v3 arrays chunked along time (data/zarr_store.py)."""

  def __init__(self, root: str | Path, split: str, meta: dict[str, Any]):
    from jaxworld.data import zarr_store
    self.image_size, self.num_actions = meta["image_size"], meta["num_actions"]
    self.episodes = zarr_store.ZarrEpisodes(Path(root) / split)
    self.bad_shards: list[str] = []

  def __len__(self) -> int:
    return len(self.episodes)

  def where(self, i: int) -> str:
    return f"Episode {i} of the zarr store {self.episodes.directory}"

  def episode(self, i: int) -> dict[str, np.ndarray]:
    return self.check(self.episodes.read(i, None, None,
                                         tuple(self.episodes.keys(i))), i)

  def window(self, i: int, length: int, rng: np.random.Generator
             ) -> dict[str, np.ndarray]:
    start = _start(self.episodes.num_frames(i), length, rng, self.where(i))
    return self.check(self.episodes.read(i, start, start + length), i)


def open_store(root: str | Path, split: str, skip_bad: bool = False
               ) -> ArrayRecordStore | ZarrStore:
  meta = records.read_metadata(root)
  if split not in meta.get("splits", {}):
    raise records.RecordError(
        f"Dataset {root} has no {split!r} split; it has "
        f"{', '.join(meta.get('splits', {})) or 'none'}.")
  if meta["storage"] == "zarr":
    return ZarrStore(root, split, meta)
  if meta["storage"] == "array_record":
    return ArrayRecordStore(root, split, meta, skip_bad)
  raise records.RecordError(f"Dataset {root} has storage "
                            f"{meta['storage']!r}; this jaxworld reads "
                            f"array_record and zarr.")


def files(root: str | Path, split: str) -> list[Path]:
  """The files holding a split (for sizes on disk)."""
  directory = Path(root) / split
  return sorted(p for p in directory.rglob("*") if p.is_file())
