"""`jaxworld rollout`: play a trained world model on held-out episodes.

Given the first `rollout.context_frames` real frames of an episode and the
actions that were taken, the model imagines the next `rollout.horizon`
frames. Reports per-step PSNR against the truth, next to three references:
copying the last real frame (what a model that learned nothing about motion
would score), a blank frame of the background colour (what a model that
drops every object scores: on the mostly black embedded world it beats
copy-last after a few frames, as objects move off their last positions) and
the tokenizer's own reconstruction (the best any dynamics model on these
tokens can do).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxworld import frame_metrics, media
from jaxworld.data import pipeline
from jaxworld.infer import latent_actions, sampler
from jaxworld.runs import assemble

log = logging.getLogger(__name__)


def blank_frames(context_ETHWC: np.ndarray, horizon: int) -> np.ndarray:
  """Frames [E, horizon, H, W, C] filled with each episode's most common
  context colour (its background)."""
  e, _, h, w, c = context_ETHWC.shape
  out = np.empty((e, horizon, h, w, c), context_ETHWC.dtype)
  for i, frames_THWC in enumerate(context_ETHWC):
    colours, counts = np.unique(frames_THWC.reshape(-1, c), axis=0,
                                return_counts=True)
    out[i] = colours[np.argmax(counts)]
  return out


def rollout(world: assemble.WorldModel, frames_ETHWC: np.ndarray,
            actions_ET: np.ndarray) -> dict[str, np.ndarray]:
  """Imagined, reconstructed and copy-last frames (uint8) for the horizon.

  frames_ETHWC: uint8 [episodes, >= context + horizon, H, W, C];
  actions_ET: int [episodes, >= context + horizon]. A latent-action model
  (dynamics.actions="latent") is instead given the actions its LAM infers
  from the true frames, as Genie evaluates: the score is then of the dynamics,
  given the actions that happened.
  """
  cfg, tokenizer = world.cfg, world.tokenizer
  r, window = cfg.rollout, cfg.data.window
  c, h = r.context_frames, r.horizon
  frames_ETHWC = frames_ETHWC[:, :c + h]
  if world.lam is not None:
    actions_ET = latent_actions.infer(world.lam, frames_ETHWC, window)
  # Per-frame programs shared with `jaxworld export`: an exported bundle
  # replays exactly these calls (examples/play_bundle.py).
  tokens_ETN = sampler.encode_frames(tokenizer, frames_ETHWC, window)
  imagined_ETN = sampler.rollout_tokens(
      cfg.dynamics.kind, world.dynamics, tokens_ETN[:, :c],
      actions_ET[:, :c + h], h, window,
      jax.random.key(r.seed, impl=sampler.KEY_IMPL),
      sampler.options_for(cfg))
  decode = lambda t: np.asarray(
      sampler.decode_frames(tokenizer, t, window, start=c))
  return {"truth": frames_ETHWC[:, c:],
          "model": decode(imagined_ETN),
          "tokenizer": decode(tokens_ETN),
          "copy_last": np.repeat(frames_ETHWC[:, c - 1:c], h, axis=1),
          "blank": blank_frames(frames_ETHWC[:, :c], h)}


def score(frames: dict[str, np.ndarray]) -> dict[str, Any]:
  """Mean PSNR over episodes and horizon, and per step, for each predictor:
  of whole frames (`psnr_*`) and of the pixels that moved since the last
  real frame (`psnr_moving_*`)."""
  out: dict[str, Any] = {"per_step": {}}
  last_EHWC = frames["copy_last"][:, 0]
  for name in ("model", "copy_last", "blank", "tokenizer"):
    psnr_ET = frame_metrics.psnr_per_frame(frames[name], frames["truth"])
    out[f"psnr_{name}"] = float(psnr_ET.mean())
    out["per_step"][f"psnr_{name}"] = [round(float(x), 3)
                                       for x in psnr_ET.mean(0)]
    moving_ET = frame_metrics.moving_psnr_per_frame(
        frames[name], frames["truth"], last_EHWC)
    moved_ET = ~np.isnan(moving_ET)  # frames where something moved
    out[f"psnr_moving_{name}"] = (float(moving_ET[moved_ET].mean())
                                  if moved_ET.any() else None)
    out["per_step"][f"psnr_moving_{name}"] = [
        round(float(col[~np.isnan(col)].mean()), 3)
        if (~np.isnan(col)).any() else None for col in moving_ET.T]
  out["gain_over_copy_last_db"] = out["psnr_model"] - out["psnr_copy_last"]
  return out


def write_media(out: Path, frames_ETHWC: np.ndarray,
                frames: dict[str, np.ndarray], context: int) -> None:
  """rollout.gif (truth beside imagination, context then horizon) and
  rollout.png (a strip from the last real frame on) of the first episodes
  of `rollout`'s output `frames`, into `out`."""
  out.mkdir(parents=True, exist_ok=True)
  shown = slice(0, min(len(frames_ETHWC), 6))
  context_ETHWC = frames_ETHWC[shown, :context]
  images = media.side_by_side(
      np.concatenate([context_ETHWC, frames["truth"][shown]], 1),
      np.concatenate([context_ETHWC, frames["model"][shown]], 1),
      context=context)
  media.write_gif(out / "rollout.gif", images)
  media.write_strip(out / "rollout.png", images[context - 1:])


def run(workdir: str | Path, out: str | Path | None = None,
        data_path: str | None = None, num_episodes: int | None = None,
        overrides: Sequence[str] = ()) -> dict[str, Any]:
  """Rolls out held-out episodes; writes rollout.gif/.png/.json to `out`."""
  world = assemble.load_world_model(workdir, overrides)
  cfg = world.cfg
  n = num_episodes or cfg.rollout.num_episodes
  episodes = pipeline.load_episodes(data_path or pipeline.eval_path(cfg.data),
                                    "eval", n)
  frames = rollout(world, episodes["frames"], episodes["actions"])
  result = {"episodes": n, "context_frames": cfg.rollout.context_frames,
            "horizon": cfg.rollout.horizon, "overrides": list(overrides),
            "dynamics_kind": cfg.dynamics.kind,
            "steps_per_frame": sampler.options_for(cfg).steps,
            **score(frames)}
  out = Path(out or Path(workdir) / "rollout")
  write_media(out, episodes["frames"], frames, cfg.rollout.context_frames)
  (out / "rollout.json").write_text(json.dumps(result, indent=2) + "\n")
  log.info("rollout on %d held-out episodes: model %.2f dB, copy-last %.2f "
           "dB, blank background %.2f dB, tokenizer reconstruction %.2f dB "
           "-> %s", n, result["psnr_model"], result["psnr_copy_last"],
           result["psnr_blank"], result["psnr_tokenizer"], out)
  return result
