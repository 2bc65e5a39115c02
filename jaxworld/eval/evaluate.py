"""`jaxworld eval RUN`: how good, how steerable and how physical a world model is.

On held-out episodes, from `rollout.context_frames` real frames:

  * horizon curves: PSNR and SSIM of each imagined step, for the model, for
    copying the last real frame, and for the tokenizer's reconstruction (the
    ceiling of any dynamics model on these tokens);
  * controllability (Genie's delta-t PSNR): PSNR of the rollout driven by the
    true actions minus that of one driven by random actions, per step. A
    model that ignores its actions scores 0;
  * physics: a ridge probe from the tokenizer's latents to object positions
    and velocities (R^2 on held-out episodes, next to the same probe on raw
    pixels), and the pixel error of object positions located in imagined
    frames against the true states, per step.

Writes <out>/eval.json, horizon.png, controllability.png, position_error.png,
the rollout as rollout.gif and rollout.png (as `jaxworld rollout` does) and
TensorBoard scalars plus the rollout as an animated image under
<out>/tb. `rollout.*` settings may be overridden (e.g. MaskGIT steps).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxworld import config as configlib, frame_metrics, media
from jaxworld.data import pipeline, stores
from jaxworld.errors import JaxWorldError
from jaxworld.eval import probe
from jaxworld.infer import rollout, sampler
from jaxworld.runs import assemble

log = logging.getLogger(__name__)

# How many training episodes the physics probe is fitted on (up to its
# frame budget): the whole-state position read-out of the demo's model rose
# from R^2 0.87 at 3072 frames to 0.91 at 6144.
PROBE_TRAIN_EPISODES = 96


def random_actions(actions_ET: np.ndarray, context: int, num_actions: int,
                   seed: int) -> np.ndarray:
  """The same episodes' actions with every action from the one leading into
  the first imagined frame on drawn uniformly at random."""
  rng = np.random.default_rng(seed)
  out = actions_ET.copy()
  out[:, context - 1:] = rng.integers(0, num_actions,
                                      out[:, context - 1:].shape)
  return out


def _per_step(values_ET: np.ndarray) -> list[float]:
  return [round(float(x), 4) for x in np.nanmean(values_ET, 0)]


def evaluate(world: assemble.WorldModel, data_path: str | Path,
             num_episodes: int
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(metrics, frames) of a world model on held-out episodes."""
  cfg = world.cfg
  r = cfg.rollout
  c, h = r.context_frames, r.horizon
  episodes = pipeline.load_episodes(data_path, "eval", num_episodes)
  frames = rollout.rollout(world, episodes["frames"], episodes["actions"])
  frames["context"] = episodes["frames"][:, :c]
  frames["random_actions"] = rollout.rollout(
      world, episodes["frames"],
      random_actions(episodes["actions"], c, cfg.dynamics.num_actions,
                     r.seed + 1))["model"]
  truth = frames["truth"]
  out: dict[str, Any] = {"episodes": num_episodes, "context_frames": c,
                         "horizon": h, "dynamics_kind": cfg.dynamics.kind,
                         "maskgit_steps": r.maskgit_steps,
                         "steps_per_frame": sampler.options_for(cfg).steps,
                         "temperature": r.temperature, "per_step": {}}
  psnr = {k: frame_metrics.psnr_per_frame(frames[k], truth)
          for k in ("model", "copy_last", "blank", "tokenizer",
                    "random_actions")}
  ssim = {k: frame_metrics.ssim_per_frame(frames[k], truth)
          for k in ("model", "copy_last", "blank", "tokenizer")}
  for name, values in (("psnr", psnr), ("ssim", ssim)):
    for k, v in values.items():
      out[f"{name}_{k}"] = float(v.mean())
      out["per_step"][f"{name}_{k}"] = _per_step(v)
  moving = rollout.score(frames)
  for k in ("model", "copy_last"):
    out[f"psnr_moving_{k}"] = moving[f"psnr_moving_{k}"]
    out["per_step"][f"psnr_moving_{k}"] = moving["per_step"][
        f"psnr_moving_{k}"]
  delta_ET = psnr["model"] - psnr["random_actions"]
  out["delta_psnr"] = float(delta_ET.mean())
  out["per_step"]["delta_psnr"] = _per_step(delta_ET)
  out["gain_over_copy_last_db"] = out["psnr_model"] - out["psnr_copy_last"]

  if "states" not in episodes:  # e.g. ingested video: no object states
    out["physics"] = ("not measured: the dataset has no object states, so "
                      "there is no position error or physics probe")
    return out, frames
  states = episodes["states"][:, c:c + h]
  for k in ("model", "copy_last"):
    error_T, not_found_T = probe.position_error(frames[k], states)
    out[f"position_error_{k}"] = float(np.nanmean(error_T))
    out["per_step"][f"position_error_{k}"] = [round(float(x), 3)
                                              for x in error_T]
    out["per_step"][f"objects_not_found_{k}"] = [int(x) for x in not_found_T]
    # The error counts located objects only, so a model that erases the
    # balls it is unsure of scores well on it: report how many it kept.
    out[f"objects_found_{k}"] = float(1.0 - not_found_T.sum()
                                      / states[..., 0].size)
  available = len(stores.open_store(data_path, "train"))
  train = pipeline.load_episodes(data_path, "train",
                                 min(PROBE_TRAIN_EPISODES, available))
  out["probe"] = probe.physics_probe(world.tokenizer, cfg, train, episodes,
                                     dynamics=world.dynamics)
  return out, frames


def _check_supported(cfg: configlib.Config | None) -> None:
  """Refuses, before loading anything, runs whose actions eval cannot
  replay: its controllability arm draws random *real* actions."""
  if cfg is not None and cfg.dynamics.actions == "latent":
    raise JaxWorldError(
        "jaxworld eval supports dynamics runs conditioned on real actions "
        "(dynamics.actions=\"real\"); this run uses latent actions. Use "
        "`jaxworld rollout --workdir DIR` for its PSNR against copy-last, "
        "and bench/lam_report.py for latent-action control.")


def run(workdir: str | Path, out: str | Path | None = None,
        overrides: Sequence[str] = (), data_path: str | None = None,
        num_episodes: int | None = None) -> dict[str, Any]:
  """Evaluates a dynamics run; writes eval.json, plots and TensorBoard."""
  start = time.perf_counter()
  _check_supported(configlib.load(Path(workdir) / "config.json")
                   if (Path(workdir) / "config.json").exists() else None)
  world = assemble.load_world_model(workdir, overrides)
  cfg = world.cfg
  n = num_episodes or cfg.rollout.num_episodes
  result, frames = evaluate(world, data_path or pipeline.eval_path(cfg.data),
                            n)
  result["run"] = str(workdir)
  result["overrides"] = list(overrides)
  result["seconds"] = round(time.perf_counter() - start, 1)
  out = Path(out or Path(workdir) / "eval")
  out.mkdir(parents=True, exist_ok=True)
  (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
  rollout.write_media(out, frames["context"], frames, cfg.rollout.context_frames)
  _plot(result, out)
  _tensorboard(result, frames, out / "tb")
  log.info("eval of %s on %d held-out episodes -> %s", workdir, n, out)
  return result


def _plot(result: dict[str, Any], out: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  s = result["per_step"]
  steps = np.arange(1, result["horizon"] + 1)
  figures = {
      "horizon.png": ("PSNR (dB) per imagined step", [
          ("model, true actions", s["psnr_model"]),
          ("model, random actions", s["psnr_random_actions"]),
          ("copy last frame", s["psnr_copy_last"]),
          ("tokenizer ceiling", s["psnr_tokenizer"])]),
      "ssim.png": ("SSIM per imagined step", [
          ("model", s["ssim_model"]), ("copy last frame", s["ssim_copy_last"]),
          ("tokenizer ceiling", s["ssim_tokenizer"])]),
      "controllability.png": ("delta-t PSNR (dB): true minus random actions",
                              [("model", s["delta_psnr"])]),
  }
  if "position_error_model" in s:
    figures["position_error.png"] = ("object position error (px) per step", [
        ("model", s["position_error_model"]),
        ("copy last frame", s["position_error_copy_last"])])
  for name, (title, lines) in figures.items():
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for label, ys in lines:
      ax.plot(steps, ys, marker="o", label=label)
    ax.set_xlabel("imagined step")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)


def _tensorboard(result: dict[str, Any], frames: dict[str, np.ndarray],
                 tb_dir: Path) -> None:
  """Per-step curves as scalars (x = imagined step) and the rollout as an
  animated GIF image (what TensorBoard's image tab plays)."""
  from tensorboardX import SummaryWriter
  from tensorboardX.proto.summary_pb2 import Summary
  writer = SummaryWriter(str(tb_dir))
  try:
    for key, values in result["per_step"].items():
      for i, v in enumerate(values):
        if v is not None:  # e.g. a step where nothing moved
          writer.add_scalar(f"eval/{key}", v, i + 1)
    shown = slice(0, min(frames["truth"].shape[0], 4))
    images = media.side_by_side(frames["truth"][shown], frames["model"][shown],
                                context=0)
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True,
                   append_images=images[1:], duration=250, loop=0)
    w, h = images[0].size
    writer.file_writer.add_summary(Summary(value=[Summary.Value(
        tag="eval/rollout_truth_vs_model", image=Summary.Image(
            height=h, width=w, colorspace=3,
            encoded_image_string=buffer.getvalue()))]), 0)
  finally:
    writer.close()


def _sampling(result: dict[str, Any]) -> str:
  """How the frames were sampled, e.g. "maskgit, 8 steps per frame"."""
  kind, steps = result["dynamics_kind"], result["steps_per_frame"]
  return f"{kind}, {steps} steps per frame" if steps else kind


def _db(value: float | None) -> str:
  return "n/a (nothing moved)" if value is None else f"{value:.2f} dB"


def summary_lines(result: dict[str, Any]) -> list[str]:
  """The console report of an evaluation."""
  s = result["per_step"]
  row = lambda xs: " ".join(f"{x:6.2f}" for x in xs)
  lines = [
      f"jaxworld eval: {result['episodes']} held-out episodes, "
      f"{result['context_frames']} real -> {result['horizon']} imagined "
      f"({_sampling(result)})",
      f"  PSNR  model {result['psnr_model']:.2f} dB | copy-last "
      f"{result['psnr_copy_last']:.2f} | blank {result['psnr_blank']:.2f} | "
      f"random actions {result['psnr_random_actions']:.2f} | tokenizer "
      f"{result['psnr_tokenizer']:.2f}",
      f"  PSNR of what moved  model {_db(result['psnr_moving_model'])} | "
      f"copy-last {_db(result['psnr_moving_copy_last'])}",
      f"  SSIM  model {result['ssim_model']:.3f} | copy-last "
      f"{result['ssim_copy_last']:.3f} | blank {result['ssim_blank']:.3f} | "
      f"tokenizer "
      f"{result['ssim_tokenizer']:.3f}",
      f"  delta-t PSNR (true - random actions) {result['delta_psnr']:+.2f} dB"
      f", per step: {row(s['delta_psnr'])}"]
  if "probe" not in result:
    return lines + [f"  physics: {result['physics']}"]
  p = result["probe"]
  part = lambda name, q: (
      f"{name}: position {q['position_r2']:.3f}, velocity "
      f"{q['velocity_r2']:.3f} (at each ball {q['velocity_at_object_r2']:.3f})")
  parts = [part(name, p[key]) for name, key in (
      ("dynamics state", "dynamics"), ("latents", "latents"),
      ("pixels", "pixels")) if key in p]
  return lines + [
      f"  object position error (px) model {row(s['position_error_model'])}",
      f"                          copy-last {row(s['position_error_copy_last'])}",
      f"  objects located: model {result['objects_found_model']:.0%}, "
      f"copy-last {result['objects_found_copy_last']:.0%} (the error counts "
      f"located objects only)",
      f"  probe R^2 (held-out)  " + " | ".join(parts),
  ]
