"""How well a LAM's latent actions match the true ones, and whether choosing
a latent action steers a rollout.

    python bench/lam_report.py --lam runs/variants/lam \
        [--dynamics runs/variants/latent] [--episodes 64] [--out DIR]

On held-out episodes of the embedded world (whose true actions are known):
purity and normalised mutual information of latent vs true actions and the
contingency table. With --dynamics (a run with dynamics.actions="latent"):
from the same context, one rollout per latent action held for the horizon,
written as control.gif (one panel per latent action) plus the mean pixel
difference between those rollouts. Writes lam_report.json to --out
(default: <lam>/report).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _control_images(rollouts_KTHWC: np.ndarray, context: int, scale: int = 2):
  from PIL import Image, ImageDraw
  k, t, h, w, _ = rollouts_KTHWC.shape
  gap, label = 4, 12
  images = []
  for i in range(t):
    canvas = Image.new("RGB", (k * (w * scale + gap) + gap,
                               label + h * scale + 2 * gap), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for j in range(k):
      x = gap + j * (w * scale + gap)
      text = f"a={j}" if i >= context else "ctx"
      draw.text((x, 1), text, fill=(255, 90, 90) if i >= context
                else (220, 220, 220))
      tile = Image.fromarray(rollouts_KTHWC[j, i]).resize(
          (w * scale, h * scale), Image.NEAREST)
      canvas.paste(tile, (x, label + gap))
    images.append(canvas)
  return images


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--lam", required=True)
  p.add_argument("--dynamics", default=None)
  p.add_argument("--episodes", type=int, default=64)
  p.add_argument("--data", default=None)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  import dataclasses

  import jax
  from flax import nnx

  from jaxworld import media
  from jaxworld.data import pipeline
  from jaxworld.infer import latent_actions, sampler
  from jaxworld.models import build
  from jaxworld.runs import assemble, checkpoint
  cfg = checkpoint.read_config(args.lam)
  step = checkpoint.saved_steps(args.lam)[-1]
  lam = nnx.merge(*assemble.restore(cfg, "lam", args.lam, step,
                                    assemble.one_device_mesh()))
  episodes = pipeline.load_episodes(args.data or cfg.data.path, "eval",
                                    args.episodes)
  latent_ET = latent_actions.infer(lam, episodes["frames"], cfg.data.window)
  latent, true = latent_ET[:, :-1], episodes["actions"][:, :-1]
  report = {
      "lam": args.lam, "step": step, "episodes": args.episodes,
      "transitions": int(latent.size),
      "purity": latent_actions.purity(latent, true),
      "nmi": latent_actions.normalized_mutual_information(latent, true),
      "latent_actions_used": int(len(np.unique(latent))),
      "contingency_latent_by_true": latent_actions.contingency(
          latent, true, build.num_latent_actions(cfg),
          int(true.max()) + 1)}
  out = Path(args.out or Path(args.lam) / "report")
  out.mkdir(parents=True, exist_ok=True)
  if args.dynamics:
    world = assemble.load_world_model(args.dynamics)
    dcfg, dynamics, tokenizer = world.cfg, world.dynamics, world.tokenizer
    r, window = dcfg.rollout, dcfg.data.window
    c, h, k = r.context_frames, r.horizon, build.num_latent_actions(dcfg)
    frames = np.repeat(episodes["frames"][:1, :c], k, axis=0)
    context_tokens = sampler.encode_frames(tokenizer, frames, window)
    actions = np.zeros((k, c + h), np.int32)
    actions[:, :c - 1] = latent_ET[:1, :c - 1]
    actions[:, c - 1:] = np.arange(k)[:, None]  # latent action j, held
    tokens = sampler.rollout_tokens(
        dcfg.dynamics.kind, dynamics, context_tokens, actions, h, window,
        jax.random.key(r.seed, impl=sampler.KEY_IMPL),
        dataclasses.replace(sampler.options_for(dcfg),
                            temperature=np.float32(0.0)))
    imagined = np.asarray(sampler.decode_frames(tokenizer, tokens, window,
                                                start=c))
    both = np.concatenate([frames, imagined], 1)
    media.write_gif(out / "control.gif", _control_images(both, c))
    pairs = [np.mean(np.abs(imagined[i].astype(np.float32) - imagined[j]))
             for i in range(k) for j in range(i + 1, k)]
    report["control"] = {"dynamics": args.dynamics,
                         "mean_abs_pixel_diff_between_actions":
                         float(np.mean(pairs)), "gif": str(out / "control.gif")}
  (out / "lam_report.json").write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps({k: v for k, v in report.items()
                    if k != "contingency_latent_by_true"}, indent=2))


if __name__ == "__main__":
  main()
