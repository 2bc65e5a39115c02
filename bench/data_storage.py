"""Storage options, measured: bytes on disk and read throughput of the same
episodes as ArrayRecord (raw frames with and without zstd, PNG per frame) and
as a zarr v3 TensorStore store.

    python bench/data_storage.py [--episodes 256] [--length 64] [--long 2048]

Episodes are the embedded world's (64x64, default config). "episode" reads
decode whole episodes one at a time; "window" reads are random 8-frame
windows through the store interface the pipeline uses (for ArrayRecord a
window costs a whole-record decode, for zarr only the chunks it covers).
Single thread, nothing else running. A second table reads windows of 8
long episodes (`--long` frames each), where whole-record decoding hurts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import common


def _write(kind: str, root: Path, episodes: list[dict], meta: dict) -> None:
  from array_record.python.array_record_module import ArrayRecordWriter

  from jaxworld.data import records, zarr_store
  if kind == "zarr":
    zarr_store.write_split(root / "train", episodes)
    records.write_metadata(root, {**meta, "storage": "zarr", "splits": {
        "train": {"episodes": len(episodes), "shards": []}}})
    return
  codec = "png" if kind == "png" else "raw"
  options = ("group_size:1,uncompressed" if kind == "raw"
             else records.WRITER_OPTIONS)
  (root / "train").mkdir(parents=True)
  name = records.shard_name(0, 1)
  writer = ArrayRecordWriter(str(root / "train" / name), options)
  for e in episodes:
    writer.write(records.encode_episode(e, codec))
  writer.close()
  records.write_metadata(root, {**meta, "frame_codec": codec, "splits": {
      "train": {"episodes": len(episodes), "shards": [name]}}})


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--episodes", type=int, default=256)
  p.add_argument("--length", type=int, default=64)
  p.add_argument("--windows", type=int, default=2000)
  p.add_argument("--long", type=int, default=2048)
  args = p.parse_args()
  from jaxworld.data import world
  cfg = common.load("tokenizer", [])
  batch = world.generate(cfg.world, args.episodes, args.length, seed=0)
  episodes = [{k: v[i] for k, v in batch.items()}
              for i in range(args.episodes)]
  meta = {"image_size": cfg.world.image_size, "episode_length": args.length,
          "num_actions": world.NUM_ACTIONS}
  frame_mib = batch["frames"].nbytes / 2**20
  print(f"{args.episodes} episodes x {args.length} frames, "
        f"{frame_mib:.1f} MiB of raw frames")
  labels = {"raw": "array_record raw", "zstd": "array_record raw+zstd",
            "png": "array_record png/frame", "zarr": "zarr v3 (zstd)"}
  with tempfile.TemporaryDirectory() as tmp:
    _measure(Path(tmp), labels, episodes, meta, frame_mib, args.windows)
  batch = world.generate(cfg.world, 8, args.long, seed=1)
  episodes = [{k: v[i] for k, v in batch.items()} for i in range(8)]
  print(f"\n8 episodes x {args.long} frames, "
        f"{batch['frames'].nbytes / 2**20:.1f} MiB of raw frames")
  with tempfile.TemporaryDirectory() as tmp:
    _measure(Path(tmp), {"zstd": labels["zstd"], "zarr": labels["zarr"]},
             episodes, {**meta, "episode_length": args.long},
             batch["frames"].nbytes / 2**20, args.windows // 10)


def _measure(tmp: Path, labels: dict[str, str], episodes: list[dict],
             meta: dict, frame_mib: float, windows: int) -> None:
  from jaxworld.data import stores
  print(f"{'storage':<24} {'MiB on disk':>11} {'ratio':>6} {'write s':>8} "
        f"{'episodes/s':>11} {'frames MiB/s':>13} {'windows/s':>10}")
  for kind, label in labels.items():
    root = tmp / kind
    t0 = time.perf_counter()
    _write(kind, root, episodes, meta)
    write_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    store = stores.open_store(root, "train")
    t0 = time.perf_counter()
    for i in range(len(store)):
      store.episode(i)
    episode_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(store), windows)
    t0 = time.perf_counter()
    for i in picks:
      store.window(int(i), 8, rng)
    window_s = time.perf_counter() - t0
    print(f"{label:<24} {size / 2**20:>11.1f} {frame_mib * 2**20 / size:>6.1f}"
          f" {write_s:>8.1f} {len(store) / episode_s:>11.0f} "
          f"{frame_mib / episode_s:>13.0f} {windows / window_s:>10.0f}")

if __name__ == "__main__":
  main()
