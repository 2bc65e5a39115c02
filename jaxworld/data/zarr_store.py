"""A TensorStore (zarr v3) episode store, for episodes too long to decode
whole: a training window reads only the chunks it covers.

Layout of one split:

    <split>/index.json                 {"episodes": [{"name", "frames"}...]}
    <split>/<name>/frames/             zarr v3 uint8 [T, H, W, 3]
    <split>/<name>/actions/            zarr v3 int32 [T]
    <split>/<name>/rewards/ ...        any other per-episode array

Arrays are chunked along time (`CHUNK_FRAMES` frames per chunk, zstd), so a
window of w frames reads at most ceil(w / CHUNK_FRAMES) + 1 chunks wherever
it starts. The arrays and dtypes are the record schema's (records.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jaxworld.data import records

CHUNK_FRAMES = 16
INDEX = "index.json"


def _spec(path: Path) -> dict[str, Any]:
  return {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}


def _write_array(path: Path, array: np.ndarray) -> None:
  import tensorstore as ts
  chunk = [min(CHUNK_FRAMES, max(1, array.shape[0])), *array.shape[1:]]
  spec = {**_spec(path), "metadata": {
      "shape": list(array.shape), "data_type": array.dtype.name,
      "chunk_grid": {"name": "regular",
                     "configuration": {"chunk_shape": chunk}},
      "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                 {"name": "zstd", "configuration": {"level": 3}}]}}
  store = ts.open(spec, create=True, delete_existing=True).result()
  store.write(array).result()


def write_split(directory: Path, episodes: Iterable[dict[str, np.ndarray]]
                ) -> list[dict[str, Any]]:
  """Writes each episode's arrays under `directory`; returns the index."""
  directory.mkdir(parents=True, exist_ok=True)
  index = []
  for i, episode in enumerate(episodes):
    name = f"{i:08d}"
    for key, array in episode.items():
      _write_array(directory / name / key, np.ascontiguousarray(array))
    index.append({"name": name, "frames": int(episode["frames"].shape[0])})
  (directory / INDEX).write_text(json.dumps({"episodes": index}) + "\n")
  return index


class ZarrEpisodes:
  """Random-access episodes of one split; windows read only their chunks.

  Picklable (Grain worker processes): TensorStore handles are opened lazily
  in each process and not pickled.
  """

  def __init__(self, directory: str | Path):
    self.directory = Path(directory)
    path = self.directory / INDEX
    if not path.is_file():
      raise records.RecordError(
          f"{path} is missing: {self.directory} is not a complete zarr "
          f"episode store. Re-ingest the dataset.")
    try:
      self.index = json.loads(path.read_text())["episodes"]
    except (json.JSONDecodeError, KeyError) as e:
      raise records.RecordError(f"{path} is damaged ({e}); re-ingest the "
                                f"dataset.") from None
    self._open: dict[tuple[int, str], Any] = {}

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_open": {}}

  def __len__(self) -> int:
    return len(self.index)

  def num_frames(self, i: int) -> int:
    return int(self.index[i]["frames"])

  def _array(self, i: int, key: str) -> Any:
    import tensorstore as ts
    if (i, key) not in self._open:
      if len(self._open) > 256:  # bound open handles on huge stores
        self._open.clear()
      path = self.directory / self.index[i]["name"] / key
      try:
        self._open[i, key] = ts.open(_spec(path), open=True).result()
      except Exception as e:  # noqa: BLE001 - TensorStore raises ValueError/OSError variants
        raise records.RecordError(
            f"Episode {i} ({path}) of the zarr store cannot be opened "
            f"({e}). Re-ingest the dataset, or set data.bad_records=skip."
        ) from None
    return self._open[i, key]

  def read(self, i: int, start: int | None, stop: int | None,
           keys: tuple[str, ...] = ("frames", "actions")
           ) -> dict[str, np.ndarray]:
    """Frames [start, stop) of `keys`; start=stop=None reads whole arrays
    (also those not indexed by frame, like the world's radii)."""
    out = {}
    for key in keys:
      try:
        out[key] = np.asarray(self._array(i, key)[start:stop].read().result())
      except records.RecordError:
        raise
      except Exception as e:  # noqa: BLE001 - a damaged chunk
        raise records.RecordError(
            f"Episode {i} of the zarr store at {self.directory}: frames "
            f"{start}:{stop} of {key!r} cannot be read ({e}). Re-ingest the "
            f"dataset, or set data.bad_records=skip.") from None
    return out

  def keys(self, i: int) -> list[str]:
    episode = self.directory / self.index[i]["name"]
    return sorted(p.name for p in episode.iterdir() if p.is_dir())
