"""What a run's checkpoints hold, for `jaxworld ckpt list` and `ckpt show`.

Reads only metadata, JSON and file sizes: no array is loaded, so this is
quick for any model size and needs no accelerator.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from jaxworld.errors import JaxWorldError
from jaxworld.runs import checkpoint

# Metric columns of the `list` table, in this order, when a run logged them.
_TABLE_METRICS = ("loss", "psnr", "masked_accuracy")


def _disk_bytes(path: Path) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def _logged_metrics(workdir: Path) -> dict[int, dict[str, float]]:
  """{step: metrics} from <workdir>/metrics.jsonl (last record wins)."""
  path = workdir / "metrics.jsonl"
  records = {}
  if path.is_file():
    for line in path.read_text().splitlines():
      if line.strip():
        r = json.loads(line)
        records[r["step"]] = {k: v for k, v in r.items()
                              if k not in ("step", "stage", "time")}
  return records


def _saved_time(manager: ocp.CheckpointManager, step: int, path: Path
                ) -> float:
  """Seconds since the epoch when the step was committed."""
  try:
    nsecs = manager.metadata(step).commit_timestamp_nsecs
  except Exception:  # pylint: disable=broad-except
    nsecs = None  # unreadable step metadata: fall back to the mtime
  return nsecs / 1e9 if nsecs else path.stat().st_mtime


def _check_run(workdir: Path) -> None:
  if not (workdir / "config.json").is_file() and not (
      workdir / "checkpoints").is_dir():
    raise JaxWorldError(f"{workdir} is not a jaxworld run directory (no "
                        f"config.json or checkpoints/). Pass the --workdir of "
                        f"a train run.")


def _status(manager: ocp.CheckpointManager, step: int, path: Path) -> str:
  problem = checkpoint.step_problem(path)
  if problem is None:
    try:
      checkpoint.saved_arrays(manager, step)
    except checkpoint.DamagedStep as e:
      problem = str(e)
  return "ok" if problem is None else f"damaged: {problem}"


def list_steps(workdir: str | Path) -> list[dict[str, Any]]:
  """One row per step directory, oldest first.

  Each row: step, path, bytes (on disk), time (saved, seconds since the
  epoch), metrics (logged at that step in metrics.jsonl, else {}), status
  ("ok", "damaged: ...", "unfinished save", or "moved aside: ..." for steps
  a resume found damaged).
  """
  workdir = Path(workdir)
  _check_run(workdir)
  logged = _logged_metrics(workdir)
  rows = []
  directory = workdir / "checkpoints"
  if directory.is_dir():
    with checkpoint.read_only_manager(workdir) as manager:
      for step in manager.all_steps():
        path = directory / str(step)
        rows.append({"step": step, "path": str(path),
                     "bytes": _disk_bytes(path),
                     "time": _saved_time(manager, step, path),
                     "metrics": logged.get(step, {}),
                     "status": _status(manager, step, path)})
    for path in directory.glob(f"*{checkpoint.UNFINISHED_SUFFIX}*"):
      step = path.name.split(checkpoint.UNFINISHED_SUFFIX)[0]
      if step.isdigit():
        rows.append({"step": int(step), "path": str(path),
                     "bytes": _disk_bytes(path),
                     "time": path.stat().st_mtime, "metrics": {},
                     "status": "unfinished save (ignored)"})
  damaged = workdir / checkpoint.DAMAGED_DIR
  for path in damaged.iterdir() if damaged.is_dir() else ():
    step = path.name.split("-")[0]
    if step.isdigit():
      rows.append({"step": int(step), "path": str(path),
                   "bytes": _disk_bytes(path),
                   "time": path.stat().st_mtime, "metrics": {},
                   "status": f"moved aside: damaged ({checkpoint.DAMAGED_DIR}"
                             f"/{path.name})"})
  return sorted(rows, key=lambda r: (r["step"], r["status"] != "ok"))


def show(workdir: str | Path, step: int | None = None) -> dict[str, Any]:
  """One step's config and a summary of its state, from metadata only.

  Returns the list_steps row plus: config (dict, or None if unreadable),
  arrays (count), array_bytes (in memory), model_params, optimizer_state
  (bool), and subtrees: {top-level key: {arrays, params, bytes}}.
  """
  workdir = Path(workdir)
  _check_run(workdir)
  rows = {r["step"]: r for r in list_steps(workdir)
          if not r["status"].startswith(("unfinished", "moved"))}
  if step is None and rows:
    step = max(rows)  # the latest
  if step not in rows:
    raise JaxWorldError(
        f"{workdir} has no checkpoint at step {step} (it has "
        f"{sorted(rows) or 'none'}). Pick one of those.")
  info = dict(rows[step])
  with checkpoint.read_only_manager(workdir) as manager:
    try:
      arrays = checkpoint.saved_arrays(manager, step)
    except checkpoint.DamagedStep as e:
      raise JaxWorldError(f"Cannot read step {step} of {workdir}: {e}. Pick "
                          f"another step (`jaxworld ckpt list`).") from e
    try:
      info["config"] = manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))["config"]
    except Exception:  # pylint: disable=broad-except
      info["config"] = None  # shown as unreadable
  subtrees: dict[str, dict[str, int]] = {}
  for path, leaf in arrays.items():
    size = math.prod(leaf.shape)
    sub = subtrees.setdefault(path.split("/")[0],
                              {"arrays": 0, "params": 0, "bytes": 0})
    sub["arrays"] += 1
    sub["params"] += size
    sub["bytes"] += size * np.dtype(leaf.dtype).itemsize
  info.update(
      arrays=len(arrays),
      array_bytes=sum(s["bytes"] for s in subtrees.values()),
      model_params=subtrees.get("model", {}).get("params", 0),
      optimizer_state=any(k != "model" and s["arrays"]
                          for k, s in subtrees.items()),
      subtrees=subtrees)
  return info


def _size(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return ""


def _when(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _number(v: float) -> str:
  return f"{v:.4g}" if math.isfinite(v) else str(v)


def format_list(rows: list[dict[str, Any]]) -> str:
  """The rows of list_steps as a plain-text table."""
  if not rows:
    return "no checkpoints"
  metric_keys = [k for k in _TABLE_METRICS
                 if any(k in r["metrics"] for r in rows)]
  header = ["step", "saved", "size", *metric_keys, "status"]
  table = [header] + [
      [str(r["step"]), _when(r["time"]), _size(r["bytes"]),
       *(_number(r["metrics"][k]) if k in r["metrics"] else "-"
         for k in metric_keys), r["status"]] for r in rows]
  widths = [max(len(row[i]) for row in table) for i in range(len(header))]
  # Numbers right-aligned, the time left-aligned, the status last, unpadded.
  return "\n".join(
      "  ".join([row[0].rjust(widths[0]), row[1].ljust(widths[1])]
                + [c.rjust(w) for c, w in zip(row[2:-1], widths[2:-1])]
                + [row[-1]]) for row in table)


def format_show(info: dict[str, Any]) -> str:
  """The dict of show() as plain text: summary, metrics, then the config."""
  lines = [f"step {info['step']}: {info['path']}",
           f"  saved    {_when(info['time'])}, {_size(info['bytes'])} on disk",
           f"  status   {info['status']}",
           f"  state    {info['arrays']} arrays, "
           f"{_size(info['array_bytes'])} in memory; model "
           f"{info['model_params']:,} parameters; optimizer state "
           f"{'present' if info['optimizer_state'] else 'absent'}"]
  for name, s in sorted(info["subtrees"].items()):
    lines.append(f"    {name:<12} {s['arrays']:>6} arrays "
                 f"{s['params']:>14,} values {_size(s['bytes']):>10}")
  if info["metrics"]:
    lines.append("  metrics  " + ", ".join(
        f"{k} {_number(v)}" for k, v in sorted(info["metrics"].items())))
  lines.append("  config" + (" (unreadable)" if info["config"] is None
                             else ""))
  if info["config"] is not None:
    lines += ["    " + line for line in
              json.dumps(info["config"], indent=2, sort_keys=True).splitlines()]
  return "\n".join(lines)
