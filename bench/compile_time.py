"""Compile time against depth, and what each remat policy costs and saves.

    python bench/compile_time.py [overrides...]

1. Compiles the dynamics train step at depth 4 and depth 48: the blocks run
   under `nnx.scan`, so the program holds one block whatever the depth and
   compile time should barely grow (target: 48 layers <= 1.5x 4 layers).
2. For each `backbone.remat` policy (none, full, save_dots) at depth 4:
   temporary bytes of the compiled step (`memory_analysis`) and steps/s.
All on one device.
"""

from __future__ import annotations

import argparse
import time

import common

import jax  # noqa: E402

from jaxworld.parallel import mesh as meshlib  # noqa: E402

MODEL = ["dynamics.backbone.width=256", "dynamics.backbone.num_heads=4"]


def compile_seconds(cfg) -> tuple[float, object, object]:
  mesh = meshlib.make_mesh(cfg.mesh, jax.devices()[:1])
  t0 = time.perf_counter()
  compiled, frozen = common.compile_step(cfg, mesh)
  return time.perf_counter() - t0, compiled, frozen


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("overrides", nargs="*")
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  overrides = [*MODEL, *args.overrides]
  print(f"dynamics {' '.join(overrides)}, 1 device")
  # Warm up JAX's own one-time costs so the first row is not penalised.
  compile_seconds(common.load("dynamics", [*overrides,
                                           "dynamics.backbone.depth=1"]))
  seconds = {}
  for depth in (4, 48):
    cfg = common.load("dynamics", [*overrides, f"dynamics.backbone.depth={depth}"])
    seconds[depth], _, _ = compile_seconds(cfg)
    print(f"depth {depth:2d}: compile {seconds[depth]:.2f} s")
  print(f"ratio 48/4: {seconds[48] / seconds[4]:.2f} (target <= 1.5)")
  print("| remat | temps MiB | steps/s | compile s |")
  print("|---|---|---|---|")
  for remat in ("none", "full", "save_dots"):
    cfg = common.load("dynamics", [*overrides, "dynamics.backbone.depth=4",
                                   f"dynamics.backbone.remat={remat}"])
    s, compiled, frozen = compile_seconds(cfg)
    temps = compiled.step.memory_analysis().temp_size_in_bytes / 2**20
    batch = common.random_batch(cfg, compiled.batch_shardings)
    dt = common.time_steps(compiled, frozen, batch, args.steps)
    print(f"| {remat} | {temps:.1f} | {1 / dt:.2f} | {s:.2f} |")


if __name__ == "__main__":
  main()
