"""`jaxworld data generate`: the embedded world written as episode records."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxworld.config import Config
from jaxworld.data import records, world
from jaxworld.errors import JaxWorldError

log = logging.getLogger(__name__)

CHUNK = 64  # episodes simulated together; bounds memory for any split size


def _episodes(cfg: Config, num_episodes: int, seed: int
              ) -> Iterator[dict[str, np.ndarray]]:
  for start in range(0, num_episodes, CHUNK):
    count = min(CHUNK, num_episodes - start)
    # Each chunk has its own seed so a split is the same whatever CHUNK is
    # read back with, and splits of different sizes share their prefix.
    chunk_seed = int(np.random.SeedSequence([seed, start]).generate_state(1)[0])
    batch = world.generate(cfg.world, count, cfg.data.episode_length,
                           seed=chunk_seed)
    for i in range(count):
      yield {k: v[i] for k, v in batch.items()}


def generate_dataset(cfg: Config, out: str | Path, overwrite: bool = False
                     ) -> dict[str, Any]:
  """Writes train/ and eval/ splits plus dataset.json; returns the metadata.

  Eval episodes come from seed `data.seed + 1`, so they are never seen in
  training.
  """
  root = Path(out)
  if (root / "dataset.json").exists() and not overwrite:
    raise JaxWorldError(
        f"{root} already holds a dataset. Pass --overwrite to replace it or "
        f"choose another --out.")
  d = cfg.data
  splits = {}
  for split, count, seed in (("train", d.num_train_episodes, d.seed),
                             ("eval", d.num_eval_episodes, d.seed + 1)):
    start = time.perf_counter()
    shards = records.write_split(root / split, _episodes(cfg, count, seed),
                                 min(d.num_shards, count))
    splits[split] = {"episodes": count, "shards": shards, "seed": seed}
    log.info("wrote %d %s episodes (%d frames each) to %s in %.1fs", count,
             split, d.episode_length, root / split, time.perf_counter() - start)
  meta = {"world": dataclasses.asdict(cfg.world),
          "episode_length": d.episode_length,
          "image_size": cfg.world.image_size,
          "num_actions": world.NUM_ACTIONS,
          "action_names": list(world.ACTION_NAMES),
          "splits": splits}
  records.write_metadata(root, meta)
  return records.read_metadata(root)
