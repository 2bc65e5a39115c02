"""Is the dynamics-state velocity probe limited by its data or by the state?
The held-out R^2 of the balls' velocities read at each ball
(`probe.velocity_at_objects`, as `jaxworld eval` reads them) from a trained
dynamics run's backbone output, fit on more and more training episodes,
and (with --layers) from each block's output and all of them together.

    python bench/probe_data.py --workdir runs/demo/dynamics \
        [--episodes 96 192 384] [--layers]

`jaxworld eval` fits on 96 episodes (6144 frames) and the final output.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxworld.data import pipeline
from jaxworld.eval import evaluate, probe
from jaxworld.runs import assemble

_BATCH = 16  # windows per forward pass


def _layer_outputs(world) -> Callable:
  """frames, actions -> every block's output [S, T, N * D] (the last one
  normalised: `FrameRegressor.hidden`, block by block)."""
  dyn, bb = world.dynamics, world.dynamics.backbone
  graphdef, state = nnx.split(bb.blocks)
  depth = world.cfg.dynamics.backbone.depth
  blocks = [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
            for i in range(depth)]

  @jax.jit
  def run(frames_STHWC, actions_ST):
    codes = world.tokenizer.encode(frames_STHWC.astype(jnp.float32) / 255.0)
    x = bb._embed(dyn.frame_in(codes)
                  + dyn.action_embed(actions_ST)[:, :, None])
    outs = []
    for block in blocks:
      x = block(x)
      outs.append(x)
    outs[-1] = bb.final_norm(x)
    return [o.reshape(*o.shape[:2], -1).astype(jnp.float32) for o in outs]

  def features(frames_STHWC, actions_ST):
    parts = [run(jnp.asarray(frames_STHWC[i:i + _BATCH]),
                 jnp.asarray(actions_ST[i:i + _BATCH], jnp.int32))
             for i in range(0, len(frames_STHWC), _BATCH)]
    return [np.concatenate([np.asarray(p[l]) for p in parts]).reshape(
        -1, parts[0][l].shape[-1]) for l in range(depth)]
  return features


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", required=True, help="a regression dynamics run")
  p.add_argument("--episodes", type=int, nargs="+",
                 default=[evaluate.PROBE_TRAIN_EPISODES])
  p.add_argument("--layers", action="store_true")
  args = p.parse_args()
  world = assemble.load_world_model(args.workdir, [])
  cfg = world.cfg
  if cfg.dynamics.kind != "regression":
    raise SystemExit(f"{args.workdir} is a {cfg.dynamics.kind} run; this "
                     f"probe reads a regression model's blocks.")
  window, size, patch = (cfg.data.window, cfg.world.image_size,
                         cfg.tokenizer.patch_size)
  data = pipeline.eval_path(cfg.data)
  features = _layer_outputs(world)
  # As physics_probe: frames with history, features as [N, tokens, F].
  seen = lambda x: x[np.arange(len(x)) % window > 0]
  tokens = lambda x: seen(x).reshape(len(seen(x)), (size // patch) ** 2, -1)

  def state(split: str, count: int, max_frames: int | None = None):
    episodes = pipeline.load_episodes(data, split, count)
    frames, actions, states = probe._windows(
        episodes, window,
        max_frames or int(np.prod(episodes["frames"].shape[:2])), split)
    return [tokens(x) for x in features(frames, actions)], seen(states)

  test_L, test_s = state("eval", cfg.rollout.num_episodes, 1024)
  for n in args.episodes:
    train_L, train_s = state("train", n)
    r2 = lambda tr, te: probe.velocity_at_objects(tr, train_s, te, test_s,
                                                  size, patch)
    print(f"{n} episodes ({len(train_s)} frames with history): velocity at "
          f"each ball {r2(train_L[-1], test_L[-1]):.3f}", flush=True)
    if args.layers:
      for i in range(len(train_L)):
        print(f"  block {i + 1}: {r2(train_L[i], test_L[i]):.3f}", flush=True)
      every = r2(np.concatenate(train_L, 2), np.concatenate(test_L, 2))
      print(f"  all blocks: {every:.3f}", flush=True)


if __name__ == "__main__":
  main()
