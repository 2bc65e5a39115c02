"""A sweep's results: one row per point, as CSV, Markdown and plots.

A row holds the point's name, its own override values (one column per key),
status, wall seconds, the final training loss (last metrics.jsonl record
with a loss; training sweeps) and every numeric leaf of eval.json, nested
keys joined with dots (per-step lists are left out).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Eval metrics first in the table, in this order, and plotted against the
# varied key; psnr_copy_last is drawn as the reference in psnr_model's plot.
MAIN_METRICS = ("psnr_model", "psnr_copy_last", "gain_over_copy_last_db",
                "delta_psnr", "ssim_model")
# Each "<name>_model" is drawn with its "<name>_copy_last" where the eval
# has one: the baseline a world model must beat.
PLOTTED = ("psnr_model", "psnr_moving_model", "position_error_model",
           "ssim_model", "delta_psnr", "train_loss")


def _scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_scalars(v, f"{prefix}{k}."))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      out[prefix + k] = v
  return out


def point_metrics(workdir: Path | None, eval_dir: Path | None
                  ) -> dict[str, float]:
  """Final train loss (if `workdir` has metrics) and eval scalars (if any)."""
  row: dict[str, float] = {}
  metrics = workdir / "metrics.jsonl" if workdir else None
  if metrics and metrics.is_file():
    for line in metrics.read_text().splitlines():
      record = json.loads(line) if line.strip() else {}
      if "loss" in record:
        row["train_loss"] = record["loss"]
  eval_json = eval_dir / "eval.json" if eval_dir else None
  if eval_json and eval_json.is_file():
    scalars = _scalars(json.loads(eval_json.read_text()))
    if "seconds" in scalars:  # the row's own seconds are the point's wall time
      scalars["eval_seconds"] = scalars.pop("seconds")
    row.update(scalars)
  return row


def columns(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
  """name, the varied keys, status, seconds, train_loss, main metrics, rest."""
  seen = list(dict.fromkeys(c for r in rows for c in r))
  fixed = ["name", *keys, "status", "seconds", "train_loss", *MAIN_METRICS]
  return [c for c in fixed if c in seen] + [c for c in seen if c not in fixed]


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4g}" if math.isfinite(value) else str(value)
  text = json.dumps(value) if isinstance(value, list) else str(value)
  return text.replace("|", "\\|")  # a Markdown cell


def write_tables(rows: Sequence[dict[str, Any]], keys: Sequence[str],
                 out: Path) -> list[str]:
  """Writes <out>/results.csv (full precision) and results.md; returns the
  Markdown lines."""
  cols = columns(rows, keys)
  with (out / "results.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, cols, restval="")
    writer.writeheader()
    for row in rows:
      writer.writerow({c: json.dumps(v) if isinstance(v, list) else v
                       for c, v in row.items()})
  # The Markdown table keeps the fixed columns and whatever varies; values
  # equal in every row go in one line under it (the CSV has everything).
  fixed = {"name", *keys, "status", "seconds", "train_loss", *MAIN_METRICS}
  done = [r for r in rows if r["status"] == "done"] or list(rows)
  same = {c: done[0].get(c) for c in cols if c not in fixed and len(
      {_cell(r.get(c)) for r in done}) == 1}
  shown = [c for c in cols if c not in same]
  lines = ["| " + " | ".join(shown) + " |",
           "|" + "|".join("---" for _ in shown) + "|"]
  lines += ["| " + " | ".join(_cell(r.get(c)) for c in shown) + " |"
            for r in rows]
  if same:
    lines += ["", "Same in every point: " + ", ".join(
        f"{c} {_cell(v)}" for c, v in same.items()) + "."]
  failed = [r for r in rows if r["status"] != "done"]
  if failed:
    lines += ["", *(f"- {r['name']}: not started" if r["status"] == "pending"
                    else f"- {r['name']}: {r['status']}; log: "
                    f"{out / r['name'] / 'log.txt'}" for r in failed)]
  (out / "results.md").write_text("\n".join(lines) + "\n")
  return lines


def _number(value: Any) -> float | None:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  return None


def write_plots(rows: Sequence[dict[str, Any]], key: str, out: Path
                ) -> list[Path]:
  """plot_<metric>.png of each metric in PLOTTED that some finished point
  has, against `key`; numeric x (log scale over decades) when every value
  is a number, else one tick per value in sweep order."""
  done = [r for r in rows if r["status"] == "done"]
  if not any(isinstance(r.get(m), (int, float)) for r in done for m in PLOTTED):
    return []
  try:
    from matplotlib.figure import Figure  # no pyplot: no global state
  except ImportError:
    log.warning("matplotlib is not installed, so no plots were drawn; "
                "`pip install matplotlib` and run the sweep again.")
    return []
  numeric = all(_number(r.get(key)) is not None for r in done)
  if numeric:
    done = sorted(done, key=lambda r: r[key])
  xs = [r[key] if numeric else i for i, r in enumerate(done)]
  paths = []
  for metric in PLOTTED:
    have = [(x, r[metric]) for x, r in zip(xs, done)
            if _number(r.get(metric)) is not None]
    if not have:
      continue
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(*zip(*have), "o-", label=metric)
    baseline = metric.removesuffix("_model") + "_copy_last"
    reference = [(x, r[baseline]) for x, r in zip(xs, done)
                 if metric.endswith("_model")
                 and _number(r.get(baseline)) is not None]
    if reference:
      ax.plot(*zip(*reference), "--", color="gray",
              label=f"{baseline} (reference)")
      ax.legend()
    if numeric and min(xs) > 0 and max(xs) >= 100 * min(xs):
      ax.set_xscale("log")
    if not numeric:
      ax.set_xticks(xs, [str(r.get(key, "")) for r in done])
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / f"plot_{metric}.png"
    fig.savefig(path, dpi=120)
    paths.append(path)
  return paths
