"""Steps/s of a stage's compiled train step on random data (no I/O).

    python bench/step_speed.py tokenizer [overrides...] [--steps 20]

Prints compile seconds, steps/s, frames/s and tokens/s for the config on the
devices JAX sees (set XLA_FLAGS=--xla_force_host_platform_device_count=8 to
try sharded layouts on a CPU).
"""

from __future__ import annotations

import argparse
import time

import common


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("config", help="tokenizer, dynamics or a path")
  p.add_argument("overrides", nargs="*")
  p.add_argument("--steps", type=int, default=20)
  args = p.parse_args()
  from jaxworld.models import build
  from jaxworld.parallel import mesh as meshlib
  cfg = common.load(args.config, args.overrides)
  mesh = meshlib.make_mesh(cfg.mesh)
  t0 = time.perf_counter()
  compiled, frozen = common.compile_step(cfg, mesh)
  compile_s = time.perf_counter() - t0
  batch = common.random_batch(cfg, compiled.batch_shardings)
  dt = common.time_steps(compiled, frozen, batch, args.steps)
  frames = cfg.train.batch_size * cfg.data.window
  params = build.count_params(compiled.init()["model"])
  print(f"{args.config} {cfg.train.stage}: {params:,} params | mesh "
        f"{dict(mesh.shape)} | compile {compile_s:.1f}s | {1 / dt:.2f} steps/s"
        f" | {frames / dt:,.0f} frames/s | "
        f"{frames * build.num_tokens(cfg) / dt:,.0f} tokens/s | "
        f"{compiled.memory}")


if __name__ == "__main__":
  main()
