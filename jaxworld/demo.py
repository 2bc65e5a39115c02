"""`jaxworld demo`: world -> records -> (tokenizer) -> dynamics -> eval.

The whole method on the embedded world, sized to finish in minutes on a
laptop CPU. Re-running it continues where it stopped (each stage resumes
from its last checkpoint, finished stages are skipped). It ends with a
rollout GIF, `jaxworld eval`'s report and `summary.json`: on held-out
episodes, the imagined frames' PSNR and SSIM against the stronger of two
baselines (copying the last real frame, a blank background), the located
objects' position error against copy-last's, and controllability (true
minus random actions), each a mean over the imagined frames, plus the
seconds each stage took. It passes only if all four clear their bars.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxworld import config as configlib
from jaxworld.data import generate, records
from jaxworld.errors import JaxWorldError
from jaxworld.eval import evaluate
from jaxworld.models import build
from jaxworld.train import loop

log = logging.getLogger(__name__)

# The bars a world model must clear (means over the imagined frames).
PSNR_MARGIN_DB = 2.0      # over the better of copy-last and blank
SSIM_MARGIN = 0.02        # over the better of copy-last and blank
POSITION_ERROR_RATIO = 0.5  # of copy-last's object position error, at most
CONTROL_DB = 1.5          # true minus random actions, PSNR

SUMMARY_SCORES = ("psnr_model", "psnr_copy_last", "psnr_blank",
                  "psnr_tokenizer", "psnr_moving_model",
                  "psnr_moving_copy_last", "ssim_model", "ssim_copy_last",
                  "ssim_blank", "position_error_model",
                  "position_error_copy_last", "objects_found_model",
                  "objects_found_copy_last", "delta_psnr")


def verdict(s: dict[str, Any]) -> tuple[bool, list[str]]:
  """(passed, reasons): the demo's four bars on its held-out scores; each
  reason says what was measured against what is needed, met or not. Where
  the data has no object states, position error is left out."""
  psnr_base = max(("copy-last", s["psnr_copy_last"]),
                  ("blank", s["psnr_blank"]), key=lambda x: x[1])
  ssim_base = max(("copy-last", s["ssim_copy_last"]),
                  ("blank", s["ssim_blank"]), key=lambda x: x[1])
  checks = [
      (s["psnr_model"] - psnr_base[1] >= PSNR_MARGIN_DB,
       f"PSNR {s['psnr_model']:.2f} dB, {s['psnr_model'] - psnr_base[1]:+.2f}"
       f" over {psnr_base[0]} (needs >= +{PSNR_MARGIN_DB:.2f})"),
      (s["ssim_model"] - ssim_base[1] >= SSIM_MARGIN,
       f"SSIM {s['ssim_model']:.3f}, {s['ssim_model'] - ssim_base[1]:+.3f} "
       f"over {ssim_base[0]} (needs >= +{SSIM_MARGIN:.3f})")]
  if s.get("position_error_model") is not None:
    bar = POSITION_ERROR_RATIO * s["position_error_copy_last"]
    checks.append((s["position_error_model"] <= bar,
                   f"position error {s['position_error_model']:.2f} px vs "
                   f"copy-last {s['position_error_copy_last']:.2f} (needs "
                   f"<= {bar:.2f})"))
  checks.append((s["delta_psnr"] >= CONTROL_DB,
                 f"controllability {s['delta_psnr']:+.2f} dB (needs >= "
                 f"+{CONTROL_DB:.2f})"))
  return all(ok for ok, _ in checks), [
      ("ok " if ok else "MISSED ") + reason for ok, reason in checks]


# The recipe: the dynamics config the demo trains (`--recipe` picks
# another). Its tokenizer kind says whether there is a tokenizer stage: pixel
# patches have nothing to train; a trained kind (configs/dynamics.toml, FSQ
# + MaskGIT) trains TOKENIZER_CONFIG first. Pixel regression trained on its
# own predictions is the default: at the demo's budget it beat FSQ +
# MaskGIT and the diffusion kinds on every score (docs/models.md).
TOKENIZER_CONFIG = "tokenizer"
DYNAMICS_CONFIG = "dynamics_regression"


def dataset_overrides(data_dir: str | Path, recipe: str = DYNAMICS_CONFIG
                      ) -> list[str]:
  """The settings an existing dataset fixes: frame size, action count, and
  a window and horizon that fit its episodes."""
  meta = records.read_metadata(data_dir)
  base = configlib.load(configlib.resolve(recipe))
  length, r = meta["episode_length"], base.rollout
  if length < 3:
    raise JaxWorldError(f"The episodes of {data_dir} have {length} frames; "
                        f"the demo needs at least 3 (context and horizon).")
  context = min(r.context_frames, length // 3)
  return [f"world.image_size={meta['image_size']}",
          f"dynamics.num_actions={meta['num_actions']}",
          f"data.window={min(base.data.window, length)}",
          f"rollout.context_frames={context}",
          f"rollout.horizon={min(r.horizon, length - context)}"]


def run(workdir: str | Path, overrides: Sequence[str] = (),
        data: str | Path | None = None, recipe: str = DYNAMICS_CONFIG
        ) -> dict[str, Any]:
  """The demo in `workdir`, on the embedded world or, given `data`, on a
  dataset made by `jaxworld data ingest` (its settings from dataset.json).
  `recipe` is the dynamics config to train (a name in configs/ or a path)."""
  root = Path(workdir)
  data_dir = Path(data) if data else root / "data"
  tok_dir, dyn_dir = root / "tokenizer", root / "dynamics"
  common = [f"data.path={data_dir}",
            *(dataset_overrides(data_dir, recipe) if data else []),
            *overrides]
  dyn_cfg = configlib.load(configlib.resolve(recipe), common)
  train_tokenizer = build.tokenizer_kind(dyn_cfg).trained
  if train_tokenizer:
    tok_cfg = configlib.load(configlib.resolve(TOKENIZER_CONFIG), common)
    dyn_cfg = configlib.load(configlib.resolve(recipe),
                             [f"dynamics.tokenizer_workdir={tok_dir}",
                              *common])
  _check_same_recipe(dyn_dir, dyn_cfg, recipe)
  seconds: dict[str, float] = {}

  start = time.perf_counter()
  if (data_dir / "dataset.json").exists():
    records.read_metadata(data_dir)
    log.info("[demo 1/4] using existing data in %s", data_dir)
  else:
    log.info("[demo 1/4] generating the embedded world into %s", data_dir)
    generate.generate_dataset(dyn_cfg, data_dir)
  seconds["data"] = time.perf_counter() - start

  tok: dict[str, Any] = {"metrics": {}}
  if train_tokenizer:
    log.info("[demo 2/4] training the video tokenizer -> %s", tok_dir)
    tok = loop.train(tok_cfg, tok_dir, resume=True)
    seconds["tokenizer"] = tok["seconds"]
    if tok["stopped_at"]:  # SIGTERM / Ctrl-C: saved; rerun the demo to go on
      return tok
  else:
    log.info("[demo 2/4] tokenizer: %s (tokenizer.kind=%s), nothing to "
             "train", "pixel patches", dyn_cfg.tokenizer.kind)

  log.info("[demo 3/4] training the action-conditioned dynamics -> %s", dyn_dir)
  dyn = loop.train(dyn_cfg, dyn_dir, resume=True)
  seconds["dynamics"] = dyn["seconds"]
  if dyn["stopped_at"]:
    return dyn

  log.info("[demo 4/4] imagining held-out episodes and measuring them: "
           "PSNR, SSIM, objects, controllability -> %s", root / "eval")
  start = time.perf_counter()
  measured = evaluate.run(dyn_dir, root / "eval", data_path=data_dir)
  seconds["eval"] = time.perf_counter() - start
  seconds["total"] = sum(seconds.values())

  scores = {k: measured.get(k) for k in SUMMARY_SCORES}
  summary = {
      **scores,
      "gain_over_copy_last_db": measured["gain_over_copy_last_db"],
      "passed": verdict(scores)[0],
      "per_step": measured["per_step"],
      "episodes": measured["episodes"],
      "context_frames": measured["context_frames"],
      "horizon": measured["horizon"],
      "probe": measured.get("probe"),
      "physics": measured.get("physics"),
      "final_train_metrics": {"tokenizer": tok["metrics"],
                              "dynamics": dyn["metrics"]},
      "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
      "rollout_gif": str(root / "eval" / "rollout.gif"),
      "eval_dir": str(root / "eval"),
      "play_command": f"jaxworld play {dyn_dir}",
  }
  (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print("\n".join(summary_lines(summary, root)), flush=True)
  return summary


def _check_same_recipe(dyn_dir: Path, cfg: configlib.Config, recipe: str
                       ) -> None:
  """A demo directory continues only with the recipe that made it."""
  saved = dyn_dir / "config.json"
  if not saved.exists():
    return
  kind = json.loads(saved.read_text()).get("dynamics", {}).get("kind")
  if kind != cfg.dynamics.kind:
    raise JaxWorldError(
        f"{dyn_dir} holds a dynamics.kind={kind!r} model, but the recipe "
        f"{recipe!r} trains dynamics.kind={cfg.dynamics.kind!r}. Continue it "
        f"with the recipe that made it (`--recipe dynamics` is FSQ + "
        f"MaskGIT), or run this recipe in a new --workdir.")


def _num(value: float | None, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def summary_lines(s: dict[str, Any], root: Path) -> list[str]:
  """The table the demo prints, ending in its PASS/FAIL verdict."""
  passed, reasons = verdict(s)
  row = lambda name, key, spec: (
      f"  {name:<22}" + "".join(f"{_num(s.get(f'{key}_{col}'), spec):>11}"
                               for col in ("model", "copy_last", "blank")))
  return [
      "",
      f"jaxworld demo: {s['episodes']} held-out episodes, "
      f"{s['context_frames']} real frames -> {s['horizon']} imagined",
      f"  {'':<22}{'model':>11}{'copy-last':>11}{'blank':>11}",
      row("PSNR (dB)", "psnr", ".2f"),
      row("SSIM", "ssim", ".3f"),
      row("PSNR of what moved", "psnr_moving", ".2f"),
      row("position error (px)", "position_error", ".2f"),
      row("objects located", "objects_found", ".0%"),
      f"  {'controllability (dB)':<22}{_num(s['delta_psnr'], '+.2f'):>11}"
      f"   (true minus random actions)",
      f"  tokenizer reconstruction (ceiling) {s['psnr_tokenizer']:.2f} dB",
      "  PSNR per step, model    " + " ".join(
          f"{x:5.1f}" for x in s["per_step"]["psnr_model"]),
      "                copy-last " + " ".join(
          f"{x:5.1f}" for x in s["per_step"]["psnr_copy_last"]),
      "  seconds: " + ", ".join(f"{k} {v:.0f}"
                                for k, v in s["stage_seconds"].items()),
      _probe_line(s),
      f"  {'PASS' if passed else 'FAIL'}:",
      *[f"    {reason}" for reason in reasons],
      f"  rollout: {s['rollout_gif']}   eval: {s['eval_dir']}   summary: "
      f"{root / 'summary.json'}",
      f"  play it: {s['play_command']}",
  ]


def _probe_line(s: dict[str, Any]) -> str:
  """Held-out R^2 of linear probes for object positions and velocities."""
  p = s.get("probe")
  if not p:
    return f"  physics probe: {s.get('physics') or 'n/a'}"
  part = lambda name, key: (f"{name} {p[key]['position_r2']:.2f} / "
                            f"{p[key]['velocity_at_object_r2']:.2f}")
  parts = [part(n, k) for n, k in (("dynamics state", "dynamics"),
                                   ("tokenizer latents", "latents"),
                                   ("pixels", "pixels")) if k in p]
  return ("  probe R^2 position / velocity at each ball: "
          + " | ".join(parts))
