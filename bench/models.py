"""Cost of each model variant: parameters, train FLOPs per step (XLA's cost
analysis of the compiled step), train steps/s and sampled frames/s, on
random data and random weights (a trained model costs the same).

    python bench/models.py dynamics dynamics_ar dynamics_diffusion \
        dynamics_latent lam \
        [--steps 10] [--out bench_models.json] [overrides...]

Prints one line per config; with --out also writes them as JSON. Sampled
frames/s: `jaxworld rollout`'s sampler, 16 episodes, 4 context frames
-> 8 imagined (tokens or latents only, no decoding).
"""

from __future__ import annotations

import argparse
import json
import time

import common


def _flops(compiled) -> float:
  cost = compiled.step.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _frames_per_second(cfg, episodes: int = 16) -> float:
  import jax
  import numpy as np
  from flax import nnx
  from jaxworld.infer import sampler
  from jaxworld.models import build
  window = cfg.data.window
  model = build.dynamics(cfg, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  # The context is what the kind's tokenizer would give: real codes of
  # random frames, so every kind gets inputs of its own type.
  frames = rng.integers(0, 256, (episodes, 4, cfg.world.image_size,
                                 cfg.world.image_size, 3), np.uint8)
  context = sampler.encode_frames(build.tokenizer(cfg, nnx.Rngs(0)), frames,
                                  window)
  actions = rng.integers(0, build.num_actions(cfg), (episodes, 12))

  def run():
    out = sampler.rollout_tokens(cfg.dynamics.kind, model, context, actions,
                                 8, window, jax.random.key(0),
                                 sampler.options_for(cfg))
    return jax.block_until_ready(out)

  run()  # compiles every history length
  t0 = time.perf_counter()
  run()
  return episodes * 8 / (time.perf_counter() - t0)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("configs", nargs="+", help="config names or paths; "
                 "section.key=value items are overrides for all")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  names = [c for c in args.configs if "=" not in c]
  overrides = [c for c in args.configs if "=" in c]
  from jaxworld.models import build
  from jaxworld.parallel import mesh as meshlib
  rows = []
  for name in names:
    cfg = common.load(name, overrides)
    mesh = meshlib.make_mesh(cfg.mesh)
    frozen = common.frozen_models(cfg, mesh)
    from jaxworld.train import step as steplib
    compiled = steplib.compile_step(cfg, cfg.train.stage, mesh, frozen)
    batch = common.random_batch(cfg, compiled.batch_shardings)
    dt = common.time_steps(compiled, frozen, batch, args.steps)
    row = {"config": name, "stage": cfg.train.stage,
           "kind": cfg.dynamics.kind if cfg.train.stage == "dynamics" else "",
           "actions": (cfg.dynamics.actions if cfg.train.stage == "dynamics"
                       else ""),
           "params": build.count_params(compiled.init()["model"]),
           "train_gflops_per_step": round(_flops(compiled) / 1e9, 2),
           "train_steps_per_s": round(1 / dt, 2),
           "sampled_frames_per_s": (round(_frames_per_second(cfg), 1)
                                    if cfg.train.stage == "dynamics" else None)}
    rows.append(row)
    print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
