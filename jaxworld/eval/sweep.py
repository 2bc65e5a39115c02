"""`jaxworld sweep FILE`: run a grid or list of config overrides, tabulate.

The file format and the points' names are in sweep_file.py (`load_sweep`
parses and checks a file before anything runs). Points run as subprocesses,
up to `parallel` at once, output in <out>/<point>/log.txt. A point that
succeeds gets <out>/<point>/result.json and later runs skip it; one that
failed or was stopped runs again (training with --resume). Ctrl-C or
SIGTERM asks running points to save and stop (sweep_runner.py). At the end
<out>/results.csv and results.md hold one row per point, and with one
varied key plot_<metric>.png plots the main metrics (sweep_report.py).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxworld.errors import JaxWorldError
from jaxworld.eval import sweep_report as report
from jaxworld.eval import sweep_runner as runner
# The parser's public names, re-exported: `sweep` is the module callers use.
from jaxworld.eval.sweep_file import (Point, Sweep, default_out, display,
                                      load_sweep, point_names)

__all__ = ["Point", "Sweep", "default_out", "exit_status", "load_sweep",
           "point_commands", "point_names", "run_sweep"]

log = logging.getLogger(__name__)


def point_commands(sweep: Sweep, point: Point) -> list[list[str]]:
  """The commands that run one point, in order (each must exit 0)."""
  cli = [sys.executable, "-m", "jaxworld.cli"]
  if sweep.run is not None:
    return [[*cli, "eval", "--workdir", sweep.run, "--out", str(point.dir),
             *point.overrides]]
  # --resume: a stopped point continues; a finished one is a no-op.
  commands = [[*cli, "train", sweep.config, *point.overrides, "--workdir",
               str(point.dir), "--resume"]]
  if point.eval_dir is not None:
    commands.append([*cli, "eval", "--workdir", str(point.dir), "--out",
                     str(point.eval_dir), *point.eval_overrides])
  return commands


def _identity(sweep: Sweep, point: Point) -> dict[str, Any]:
  """What a finished point's result.json must match to be reused."""
  return {"config": sweep.config, "run": sweep.run,
          "overrides": list(point.overrides),
          "eval_overrides": list(point.eval_overrides)}


def _finished(sweep: Sweep, point: Point) -> dict[str, Any] | None:
  """The point's result.json when it finished earlier, else None."""
  try:
    saved = json.loads((point.dir / "result.json").read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None
  mine = _identity(sweep, point)
  differs = [k for k in mine if saved.get(k) != mine[k]]
  if differs:
    shown = lambda v: " ".join(v) if isinstance(v, list) else str(v)
    what = "; ".join(f"{k} {shown(saved.get(k))!r} there, {shown(mine[k])!r} "
                     f"here" for k in differs)
    raise JaxWorldError(
        f"{point.dir} holds a finished run of another point ({what}). Pass "
        f"another --out, or delete {point.dir} to run it again.")
  return saved


def exit_status(rows: Sequence[dict[str, Any]]) -> int:
  """For the CLI: 0 when every point is done, 1 when one failed, else 75
  (stopped or not started: run the sweep again to continue)."""
  statuses = {r["status"] for r in rows}
  if "failed" in statuses:
    return 1
  return runner.EXIT_STOPPED if statuses - {"done"} else 0


def run_sweep(file: str | Path, out: str | Path | None = None,
              parallel: int = 1,
              commands: Callable[[Sweep, Point], list[list[str]]] | None = None
              ) -> list[dict[str, Any]]:
  """Runs every unfinished point of a sweep file; writes tables and plots.

  Args:
    file: the sweep TOML (format in sweep_file.py).
    out: output folder (default: runs/sweeps/<file stem>).
    parallel: points run at once, each its own process.
    commands: (sweep, point) -> the argv lists that run a point; default
      `point_commands` (tests substitute stand-ins).

  Returns:
    One row per point, in sweep order: name, the point's own override
    values, status (done, failed, stopped, pending), seconds, train_loss,
    eval scalars. The same rows are in <out>/results.csv and results.md.
  """
  if parallel < 1:
    raise JaxWorldError(f"--parallel {parallel}: run at least 1 point at "
                        f"once.")
  out = Path(out) if out is not None else default_out(file)
  sweep = load_sweep(file, out)
  finished = {p.name: saved for p in sweep.points
              if (saved := _finished(sweep, p)) is not None}
  out.mkdir(parents=True, exist_ok=True)
  (out / "sweep.toml").write_text(sweep.path.read_text())  # what ran here
  commands = commands or point_commands
  jobs = []
  for i, p in enumerate(sweep.points):
    label = f"[{i + 1}/{len(sweep.points)}] {p.name}"
    if p.name in finished:
      log.info("%s: finished earlier; skipped", label)
    else:
      jobs.append(runner.Job(p.name, label, p.dir,
                             tuple(tuple(c) for c in commands(sweep, p))))
  by_name = {p.name: p for p in sweep.points}

  def on_done(job: runner.Job, seconds: float) -> None:
    result = {"name": job.name, **_identity(sweep, by_name[job.name]),
              "seconds": seconds,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (job.dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")

  outcomes = runner.run_jobs(jobs, parallel, on_done)
  rows = []
  for p in sweep.points:
    if p.name in finished:
      status, seconds = "done", finished[p.name]["seconds"]
    else:
      status, seconds = outcomes[p.name].status, outcomes[p.name].seconds
    rows.append({"name": p.name, **p.settings, "status": status,
                 "seconds": round(seconds, 1),
                 **report.point_metrics(
                     p.dir if sweep.run is None else None,
                     p.eval_dir if status == "done" else None)})
  lines = report.write_tables(rows, sweep.keys, out)
  varied = [k for k in sweep.keys
            if len({display(r.get(k, "")) for r in rows}) > 1]
  plots = report.write_plots(rows, varied[0], out) if len(varied) == 1 else []
  log.info("%d of %d points done; results in %s and %s%s\n%s",
           sum(r["status"] == "done" for r in rows), len(rows),
           out / "results.md", out / "results.csv",
           f", plots {', '.join(p.name for p in plots)}" if plots else "",
           "\n".join(lines))
  return rows
