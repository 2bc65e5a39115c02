"""The fault drill's data: the tiny world, its copies, and training records
damaged on disk (bench/fault_drill.py, whose docstring says why).

The dataset holds at least steps x batch episodes, so a run reads each
episode once, at one global batch; a record damaged before that batch is
first read reads the same in the drilled run, whose data is damaged while
it runs, and in the uninterrupted run, whose copy is damaged before it
starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
BATCH = 8  # train.batch_size of configs/tiny.toml: windows per global batch


def damage(shard: Path, local: int) -> None:
  """Rewrites an ArrayRecord shard with record `local`'s last payload byte
  flipped: the shard and every other record stay readable, that record's
  checksum fails (a RecordError, which data.bad_records=skip passes over)."""
  import grain
  from array_record.python.array_record_module import ArrayRecordWriter
  from jaxworld.data import records
  source = grain.sources.ArrayRecordDataSource([str(shard)])
  rows = [source[i] for i in range(len(source))]
  bad = bytearray(rows[local])
  bad[-1] ^= 0xFF
  rows[local] = bytes(bad)
  tmp = shard.with_name(shard.name + ".tmp")
  writer = ArrayRecordWriter(str(tmp), records.WRITER_OPTIONS)
  for row in rows:
    writer.write(row)
  writer.close()
  os.replace(tmp, shard)


def corrupt_record(data: Path, first: int, steps: int, damaged: list,
                   rng: np.random.Generator) -> tuple[int, str] | None:
  """Damages one record of `data` that global batch g, drawn from
  [first, first + 2], reads (its only read); appends (shard name, record in
  it, episode) to `damaged` and returns (g, the store's name for the
  record). None if the run has no batch left to read."""
  from jaxworld import config as configlib
  from jaxworld.data import pipeline, stores
  if first >= steps:
    return None
  cfg = configlib.load(TINY, [f"data.path={data}", "data.bad_records=skip"])
  store = stores.open_store(data, "train", skip_bad=True)
  bad = {episode for _, _, episode in damaged}
  g = int(rng.integers(first, min(first + 3, steps)))
  # One process reads the whole global batch g.
  batch = next(iter(pipeline.train_dataset(cfg.data, data, BATCH, start=g)))
  # Not a row that is already a replacement, nor a record that replaces a
  # damaged one (read earlier in its place, with the clean bytes).
  rows = [int(e) for e, skipped in zip(batch["record"][:, 1],
                                       batch["skipped"])
          if skipped == 0 and (int(e) - 1) % len(store) not in bad]
  if not rows:
    return None
  episode = rows[int(rng.integers(len(rows)))]
  shard = int(np.searchsorted(store.starts, episode, side="right")) - 1
  local = episode - int(store.starts[shard])
  damage(Path(store.paths[shard]), local)
  damaged.append((Path(store.paths[shard]).name, local, episode))
  return g, store.where(episode)


def make_data(work: Path, episodes: int, env) -> Path:
  """work/data: the tiny world with `episodes` training episodes (kept
  between drills in one --workdir if it has enough)."""
  data = work / "data"
  meta = data / "dataset.json"
  if meta.exists() and json.loads(meta.read_text())["splits"]["train"][
      "episodes"] >= episodes:
    return data
  shutil.rmtree(data, ignore_errors=True)
  subprocess.run([sys.executable, "-m", "jaxworld.cli", "data", "generate",
                  str(TINY), f"data.num_train_episodes={episodes}",
                  "--out", str(data)],
                 check=True, env=env, capture_output=True)
  return data


def copy_data(clean: Path, dest: Path, damaged: list) -> Path:
  """A copy of the clean data with the `damaged` records damaged."""
  shutil.rmtree(dest, ignore_errors=True)
  shutil.copytree(clean, dest)
  for shard, local, _ in damaged:
    damage(dest / "train" / shard, local)
  return dest
