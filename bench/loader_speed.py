"""Does the loader keep up? Windows/s of the Grain pipeline with 0, 1 and 2
worker processes against the windows/s the train steps consume.

    python bench/loader_speed.py [--data runs/demo/data] [--batches 200]

Uses the default configs (configs/tokenizer.toml, configs/dynamics.toml) and
the demo's dataset (generated into a temporary folder if missing). The step
rates are those of the compiled steps on random batches (no I/O), as in
bench/step_speed.py; the loader rates are measured with nothing else
running. Target: every loader setting delivers >= 3x the fastest step's
consumption. Training itself logs `input_wait`, the fraction of each logging
interval the loop spent waiting for a batch.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common


def loader_rate(cfg, root: str, workers: int, batches: int) -> float:
  """Windows per second, after the first batch (worker start-up) is out."""
  from jaxworld.perf import harness
  return harness.loader_rate(cfg, root, batches, workers)


def step_rate(name: str) -> float:
  """Windows per second one compiled train step consumes."""
  from jaxworld.parallel import mesh as meshlib
  cfg = common.load(name, [])
  mesh = meshlib.make_mesh(cfg.mesh)
  compiled, frozen = common.compile_step(cfg, mesh)
  batch = common.random_batch(cfg, compiled.batch_shardings)
  return cfg.train.batch_size / common.time_steps(compiled, frozen, batch, 20)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--data", default="runs/demo/data")
  p.add_argument("--batches", type=int, default=200)
  args = p.parse_args()
  from jaxworld.data import generate
  cfg = common.load("dynamics", [])
  root = args.data
  if not (Path(root) / "dataset.json").is_file():
    root = tempfile.mkdtemp(prefix="jaxworld-loader-")
    generate.generate_dataset(common.load("tokenizer", []), root)
  steps = {name: step_rate(name) for name in ("tokenizer", "dynamics")}
  need = max(steps.values())
  for name, rate in steps.items():
    print(f"train step ({name}): consumes {rate:,.0f} windows/s")
  for workers in (0, 1, 2):
    rate = loader_rate(cfg, root, workers, args.batches)
    print(f"loader, {workers} workers: {rate:,.0f} windows/s = "
          f"{rate / need:.1f}x the fastest step "
          f"({'ok' if rate >= 3 * need else 'BELOW'} the 3x target)")


if __name__ == "__main__":
  main()
