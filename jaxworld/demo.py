"""`jaxworld demo`: world -> records -> tokenizer -> dynamics -> rollout ->
eval.

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
from jaxworld.eval import evaluate
from jaxworld.infer import rollout
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
                  "position_error_copy_last", "delta_psnr")


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


def run(workdir: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
  root = Path(workdir)
  data_dir, tok_dir, dyn_dir = root / "data", root / "tokenizer", root / "dynamics"
  common = [f"data.path={data_dir}", *overrides]
  tok_cfg = configlib.load(configlib.resolve("tokenizer"), common)
  dyn_cfg = configlib.load(configlib.resolve("dynamics"),
                           [f"dynamics.tokenizer_workdir={tok_dir}", *common])
  seconds: dict[str, float] = {}

  start = time.perf_counter()
  if (data_dir / "dataset.json").exists():
    records.read_metadata(data_dir)
    log.info("[demo 1/5] using existing data in %s", data_dir)
  else:
    log.info("[demo 1/5] generating the embedded world into %s", data_dir)
    generate.generate_dataset(tok_cfg, data_dir)
  seconds["data"] = time.perf_counter() - start

  log.info("[demo 2/5] training the video tokenizer -> %s", tok_dir)
  tok = loop.train(tok_cfg, tok_dir, resume=True)
  seconds["tokenizer"] = tok["seconds"]
  if tok["stopped_at"]:  # SIGTERM / Ctrl-C: saved; rerun the demo to go on
    return tok

  log.info("[demo 3/5] training the action-conditioned dynamics -> %s", dyn_dir)
  dyn = loop.train(dyn_cfg, dyn_dir, resume=True)
  seconds["dynamics"] = dyn["seconds"]
  if dyn["stopped_at"]:
    return dyn

  log.info("[demo 4/5] imagining held-out episodes -> %s", root / "rollout")
  start = time.perf_counter()
  result = rollout.run(dyn_dir, root / "rollout")
  seconds["rollout"] = time.perf_counter() - start
  log.info("[demo 5/5] measuring it: SSIM, objects, controllability -> %s",
           root / "eval")
  start = time.perf_counter()
  measured = evaluate.run(dyn_dir, root / "eval")
  seconds["eval"] = time.perf_counter() - start
  seconds["total"] = sum(seconds.values())

  scores = {k: measured.get(k) for k in SUMMARY_SCORES}
  summary = {
      **scores,
      "gain_over_copy_last_db": result["gain_over_copy_last_db"],
      "passed": verdict(scores)[0],
      "per_step": result["per_step"],
      "episodes": result["episodes"],
      "context_frames": result["context_frames"],
      "horizon": result["horizon"],
      "final_train_metrics": {"tokenizer": tok["metrics"],
                              "dynamics": dyn["metrics"]},
      "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
      "rollout_gif": str(root / "rollout" / "rollout.gif"),
      "eval_dir": str(root / "eval"),
  }
  (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print("\n".join(summary_lines(summary, root)), flush=True)
  return summary


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
      f"  {'controllability (dB)':<22}{_num(s['delta_psnr'], '+.2f'):>11}"
      f"   (true minus random actions)",
      f"  tokenizer reconstruction (ceiling) {s['psnr_tokenizer']:.2f} dB",
      "  PSNR per step, model    " + " ".join(
          f"{x:5.1f}" for x in s["per_step"]["psnr_model"]),
      "                copy-last " + " ".join(
          f"{x:5.1f}" for x in s["per_step"]["psnr_copy_last"]),
      "  seconds: " + ", ".join(f"{k} {v:.0f}"
                                for k, v in s["stage_seconds"].items()),
      f"  {'PASS' if passed else 'FAIL'}:",
      *[f"    {reason}" for reason in reasons],
      f"  rollout: {s['rollout_gif']}   eval: {s['eval_dir']}   summary: "
      f"{root / 'summary.json'}",
  ]
