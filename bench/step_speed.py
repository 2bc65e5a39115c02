"""Steps/s of a stage's compiled train step on random data (no I/O).

    python bench/step_speed.py tokenizer [overrides...] [--steps 20]

Prints compile seconds, steps/s, frames/s and tokens/s for the config on the
devices JAX sees (set XLA_FLAGS=--xla_force_host_platform_device_count=8 to
try sharded layouts on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np
from flax import nnx

from jaxworld import config as configlib
from jaxworld.models import build
from jaxworld.parallel import mesh as meshlib
from jaxworld.train import step as steplib


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("config")
  p.add_argument("overrides", nargs="*")
  p.add_argument("--steps", type=int, default=20)
  args = p.parse_args()
  cfg = configlib.load(configlib.resolve(args.config), args.overrides)
  mesh = meshlib.make_mesh(cfg.mesh)
  frozen = None
  if cfg.train.stage == "dynamics":  # a random tokenizer costs the same
    # As in training, the tokenizer section comes from the tokenizer config.
    tok = configlib.load(configlib.resolve("tokenizer")).tokenizer
    cfg = dataclasses.replace(cfg, tokenizer=tok)
    graphdef, state = nnx.split(build.tokenizer(cfg, nnx.Rngs(0)))
    frozen = steplib.Frozen(graphdef, state)
  t0 = time.perf_counter()
  compiled = steplib.compile_step(cfg, cfg.train.stage, mesh, frozen)
  compile_s = time.perf_counter() - t0
  state = compiled.init()
  rng = np.random.default_rng(0)
  spec = steplib.batch_spec(cfg, cfg.train.batch_size)
  batch = steplib.device_batch(
      {"frames": rng.integers(0, 256, spec["frames"].shape, np.uint8),
       "actions": rng.integers(0, 5, spec["actions"].shape).astype(np.int32)},
      compiled.batch_shardings)
  frozen_state = frozen.state if frozen else None
  state, m = compiled.step(state, frozen_state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, m = compiled.step(state, frozen_state, batch)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / args.steps
  frames = cfg.train.batch_size * cfg.data.window
  params = build.count_params(state["model"])
  print(f"{args.config} {cfg.train.stage}: {params:,} params | mesh "
        f"{dict(mesh.shape)} | compile {compile_s:.1f}s | {1 / dt:.2f} steps/s"
        f" | {frames / dt:,.0f} frames/s | "
        f"{frames * build.num_tokens(cfg) / dt:,.0f} tokens/s | "
        f"{compiled.memory}")


if __name__ == "__main__":
  main()
