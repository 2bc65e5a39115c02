"""`jaxworld demo`: world -> records -> tokenizer -> dynamics -> rollout.

The whole method on the embedded world, sized to finish in minutes on a
laptop CPU. Re-running it continues where it stopped (each stage resumes
from its last checkpoint, finished stages are skipped). It ends with a
rollout GIF and `summary.json`: held-out PSNR of the model's imagined frames
against copying the last real frame, plus the seconds each stage took.
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
from jaxworld.infer import rollout
from jaxworld.train import loop

log = logging.getLogger(__name__)

# The demo passes if imagination beats copying the last frame by this much.
REQUIRED_GAIN_DB = 1.0


def verdict(summary: dict[str, Any]) -> tuple[bool, list[str]]:
  """(passed, reasons): the demo's bar on its held-out rollout scores.

  Reads only `psnr_model` and `psnr_copy_last`; each reason says what was
  measured against what is needed, whether or not it is met.
  """
  gain = summary["psnr_model"] - summary["psnr_copy_last"]
  return gain >= REQUIRED_GAIN_DB, [
      f"model beats copy-last by {gain:+.2f} dB (needs >= "
      f"{REQUIRED_GAIN_DB} dB)"]


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
    log.info("[demo 1/4] using existing data in %s", data_dir)
  else:
    log.info("[demo 1/4] generating the embedded world into %s", data_dir)
    generate.generate_dataset(tok_cfg, data_dir)
  seconds["data"] = time.perf_counter() - start

  log.info("[demo 2/4] training the video tokenizer -> %s", tok_dir)
  tok = loop.train(tok_cfg, tok_dir, resume=True)
  seconds["tokenizer"] = tok["seconds"]
  if tok["stopped_at"]:  # SIGTERM / Ctrl-C: saved; rerun the demo to go on
    return tok

  log.info("[demo 3/4] training the action-conditioned dynamics -> %s", dyn_dir)
  dyn = loop.train(dyn_cfg, dyn_dir, resume=True)
  seconds["dynamics"] = dyn["seconds"]
  if dyn["stopped_at"]:
    return dyn

  log.info("[demo 4/4] imagining held-out episodes -> %s", root / "rollout")
  start = time.perf_counter()
  result = rollout.run(dyn_dir, root / "rollout")
  seconds["rollout"] = time.perf_counter() - start
  seconds["total"] = sum(seconds.values())

  summary = {
      "psnr_model": result["psnr_model"],
      "psnr_copy_last": result["psnr_copy_last"],
      "psnr_blank": result["psnr_blank"],
      "psnr_tokenizer": result["psnr_tokenizer"],
      "psnr_moving_model": result["psnr_moving_model"],
      "psnr_moving_copy_last": result["psnr_moving_copy_last"],
      "gain_over_copy_last_db": result["gain_over_copy_last_db"],
      "passed": verdict(result)[0],
      "per_step": result["per_step"],
      "episodes": result["episodes"],
      "context_frames": result["context_frames"],
      "horizon": result["horizon"],
      "final_train_metrics": {"tokenizer": tok["metrics"],
                              "dynamics": dyn["metrics"]},
      "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
      "rollout_gif": str(root / "rollout" / "rollout.gif"),
  }
  (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print("\n".join(summary_lines(summary, root)), flush=True)
  return summary


def _db(value: float | None) -> str:
  return "  n/a" if value is None else f"{value:5.2f} dB"


def summary_lines(s: dict[str, Any], root: Path) -> list[str]:
  """The table the demo prints, ending in its PASS/FAIL verdict."""
  passed, reasons = verdict(s)
  lines = [
      "",
      f"jaxworld demo: {s['episodes']} held-out episodes, "
      f"{s['context_frames']} real frames -> {s['horizon']} imagined",
      f"  PSNR model (imagined)      {s['psnr_model']:6.2f} dB",
      f"  PSNR copy last frame       {s['psnr_copy_last']:6.2f} dB",
      f"  PSNR blank background      {s['psnr_blank']:6.2f} dB",
      f"  PSNR tokenizer (ceiling)   {s['psnr_tokenizer']:6.2f} dB",
      f"  PSNR of what moved         {_db(s['psnr_moving_model'])} model, "
      f"{_db(s['psnr_moving_copy_last'])} copy-last",
      "  per step (model)          " + " ".join(
          f"{x:5.1f}" for x in s["per_step"]["psnr_model"]),
      "  per step (copy-last)      " + " ".join(
          f"{x:5.1f}" for x in s["per_step"]["psnr_copy_last"]),
      "  seconds: " + ", ".join(f"{k} {v:.0f}"
                                for k, v in s["stage_seconds"].items()),
      f"  {'PASS' if passed else 'FAIL'}: {'; '.join(reasons)}",
      f"  rollout: {s['rollout_gif']}   summary: {root / 'summary.json'}",
      f"  next: jaxworld eval --workdir {root / 'dynamics'}   (horizon "
      f"curves, controllability, physics probe)",
  ]
  return lines
