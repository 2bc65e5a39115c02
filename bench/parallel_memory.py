"""Per-device memory of the train step for each parallelism preset: 8
devices against one.

    python bench/parallel_memory.py [overrides...]

Runs the dynamics stage (widened so the state dwarfs the small replicated
tables) on 8 simulated CPU devices. Parameter and optimizer-state bytes per
device come from each array's shard shape; temporaries from the compiled
step's `memory_analysis()`. FSDP must keep <= 1.1/8 of one device's state.
"""

from __future__ import annotations

import argparse

import common

common.simulate_cpu_devices(8)

import jax  # noqa: E402

from jaxworld.parallel import mesh as meshlib  # noqa: E402

PRESETS = ("dp", "fsdp", "fsdp_tp", "tp_sp")
MODEL = ["dynamics.backbone.width=512", "dynamics.backbone.depth=4",
         "dynamics.backbone.num_heads=8"]


def measure(cfg, devices) -> dict[str, float]:
  from jaxworld.perf import memory
  from jaxworld.train import step as steplib
  mesh = meshlib.make_mesh(cfg.mesh, devices)
  compiled, _ = common.compile_step(cfg, mesh)
  _, abstract = steplib.abstract_state(cfg, cfg.train.stage)
  mem = memory.step_memory(compiled.step, abstract, compiled.state_shardings)
  return {"mesh": dict(mesh.shape), "params": mem["params"],
          "opt": mem["optimizer"], "temps": mem["temporaries"]}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("overrides", nargs="*")
  args = p.parse_args()
  overrides = [*MODEL, *args.overrides]
  one = measure(common.load("dynamics", overrides), jax.devices()[:1])
  mib = lambda b: f"{b / 2**20:8.2f}"
  print(f"dynamics {' '.join(overrides)}; MiB per device")
  print("| preset | mesh (data, fsdp, sequence, tensor) | params | optimizer "
        "| temps | state vs 1 device |")
  print("|---|---|---|---|---|---|")
  rows = [("1 device", one)]
  for preset in PRESETS:
    cfg = common.load("dynamics", [f"mesh.preset={preset}", *overrides])
    rows.append((preset, measure(cfg, jax.devices())))
  for name, r in rows:
    ratio = (r["params"] + r["opt"]) / (one["params"] + one["opt"])
    print(f"| {name} | {tuple(r['mesh'].values())} | {mib(r['params'])} | "
          f"{mib(r['opt'])} | {mib(r['temps'])} | {ratio:.3f} "
          f"({ratio * 8:.2f}/8) |")


if __name__ == "__main__":
  main()
