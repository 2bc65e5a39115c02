"""`jaxworld sweep FILE`: run a grid or list of config overrides, tabulate.

A sweep file is TOML. Either a *training* sweep, where every point trains a
run with `jaxworld train` into <out>/<point> and, for a dynamics run, then
evaluates it with `jaxworld eval` into <out>/<point>/eval:

    config = "dynamics"                 # a name in configs/ or a .toml path
    base = ["train.steps=300", "data.path=runs/demo/data",
            "dynamics.tokenizer_workdir=runs/demo/tokenizer"]
    eval = ["rollout.num_episodes=32"]  # optional: rollout.* for each eval
    [grid]
    dynamics.backbone.width = [32, 64, 96]

or an *evaluation-only* sweep over one trained dynamics run, where every
point runs `jaxworld eval --workdir RUN --out <out>/<point>` (only rollout.*
keys may vary: an ablation without retraining):

    run = "runs/demo/dynamics"
    base = ["rollout.num_episodes=32"]
    [grid]
    rollout.maskgit_steps = [1, 2, 4, 8]

Top-level keys: exactly one of `config` / `run`; optional `base` (overrides
for every point) and, in training sweeps, `eval`; exactly one of
  * `[grid]`: dotted keys -> lists of TOML values; the points are their
    cartesian product (the first key varies slowest). Dotted keys may be
    written bare (`rollout.maskgit_steps = [...]`) or quoted.
  * `points`: a list of points, each a list of override strings
    (`["train.learning_rate=1e-3", "train.seed=1"]`) or an inline table.
A point's overrides come after `base`, so they win. Relative paths (the
config, the run, and paths inside overrides) resolve against the current
directory, as they would on the `jaxworld train` command line.

Each point's directory is named after its own overrides, stably across
reruns: `rollout.maskgit_steps=4` -> `maskgit_steps-4`; two keys ->
`learning_rate-0.001_width-64` (longer key suffixes where last parts clash,
a short hash where names would collide or grow long). Points run as
subprocesses, up to `parallel` at once, output in <out>/<point>/log.txt. A
point that succeeds gets <out>/<point>/result.json and later runs skip it;
one that failed or was stopped runs again (training with --resume). Ctrl-C
or SIGTERM asks running points to save and stop (sweep_runner.py). At the
end <out>/results.csv and results.md hold one row per point, and with one
varied key plot_<metric>.png plots the main metrics (sweep_report.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import re
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxworld import config as configlib
from jaxworld.errors import JaxWorldError
from jaxworld.eval import sweep_report as report
from jaxworld.eval import sweep_runner as runner

log = logging.getLogger(__name__)

_TOP_KEYS = ("config", "run", "base", "eval", "grid", "points")
_MAX_NAME = 80


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep."""
  name: str  # its directory under the sweep's out folder
  settings: dict[str, Any]  # its own keys -> values (the table's columns)
  overrides: tuple[str, ...]  # base, then its own
  dir: Path  # train workdir or eval out; holds log.txt and result.json
  eval_dir: Path | None  # where eval.json goes (None: not evaluated)
  eval_overrides: tuple[str, ...]  # rollout.* passed to `jaxworld eval`


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A parsed, validated sweep file."""
  path: Path
  config: str | None  # training sweep: resolved config path
  run: str | None  # evaluation-only sweep: the dynamics run
  points: tuple[Point, ...]

  @property
  def keys(self) -> list[str]:
    """Every key a point sets, in first-seen order (the table's columns)."""
    return list(dict.fromkeys(k for p in self.points for k in p.settings))


def default_out(file: str | Path) -> Path:
  return Path("runs/sweeps") / Path(file).stem


# ---------------------------------------------------------------- parsing


def _toml_value(value: Any, where: str) -> str:
  """`value` as TOML text, as the config's override parser reads it."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (int, float)):
    return repr(value)  # TOML reads 1e-05, inf and nan as Python writes them
  if isinstance(value, str):
    return json.dumps(value)  # a TOML basic string
  if isinstance(value, list):
    return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
  raise JaxWorldError(f"{where}: value {value!r} cannot be a config override; "
                      f"use a number, string, boolean or list.")


def _parse_value(raw: str) -> Any:
  try:  # Same rule as config overrides: a bare word is a string.
    return tomllib.loads(f"v = {raw}")["v"]
  except tomllib.TOMLDecodeError:
    return raw


def _override_list(value: Any, where: str) -> list[str]:
  if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
    raise JaxWorldError(f"{where} must be a list of override strings, e.g. "
                        f'["train.steps=300"], not {value!r}.')
  for text in value:
    if "=" not in text:
      raise JaxWorldError(f"{where}: {text!r} is not of the form "
                          f"section.key=value, e.g. train.steps=300.")
  return value


def _settings(spec: dict[str, Any], where: str) -> list[dict[str, Any]]:
  """The points' own key -> value settings, from `grid` or `points`."""
  if ("grid" in spec) == ("points" in spec):
    raise JaxWorldError(f"{where}: give exactly one of [grid] (keys -> value "
                        f"lists, all combinations) or points = [[...], ...] "
                        f"(an explicit list).")
  if "grid" in spec:
    grid = spec["grid"]
    grid = configlib.flatten(grid) if isinstance(grid, dict) else grid
    if not isinstance(grid, dict) or not grid:
      raise JaxWorldError(f"{where}: [grid] is empty; add a key with a list "
                          f"of values, e.g. rollout.maskgit_steps = [1, 2, 4].")
    for key, values in grid.items():
      if not isinstance(values, list) or not values:
        raise JaxWorldError(f"{where}: grid key {key} must map to a non-empty "
                            f"list of values, e.g. {key} = [1, 2], not "
                            f"{values!r}.")
    return [dict(zip(grid, combo)) for combo in
            itertools.product(*grid.values())]
  points = spec["points"]
  if not isinstance(points, list) or not points:
    raise JaxWorldError(f"{where}: points must be a non-empty list of points, "
                        f'e.g. points = [["train.seed=0"], ["train.seed=1"]].')
  out = []
  for i, point in enumerate(points):
    if isinstance(point, dict):
      out.append(configlib.flatten(point))
    else:
      texts = _override_list(point, f"{where}: points[{i}]")
      out.append({k.strip(): _parse_value(raw.strip()) for k, raw in
                  (t.split("=", 1) for t in texts)})
  return out


def _display(value: Any) -> str:
  return value if isinstance(value, str) else _toml_value(value, "")


def _name_part(value: Any) -> str:
  if isinstance(value, list):
    return "-".join(_name_part(v) for v in value)
  return re.sub(r"[^A-Za-z0-9._+-]+", "-", _display(value))


def _short(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()[:6]


def point_names(settings: Sequence[dict[str, Any]]) -> list[str]:
  """Readable, filesystem-safe, unique directory names for the points."""
  keys = list(dict.fromkeys(k for s in settings for k in s))
  short = {}
  for key in keys:  # the shortest dotted suffix no other key ends with
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
      suffix = ".".join(parts[-n:])
      if not any(o != key and (o == suffix or o.endswith("." + suffix))
                 for o in keys):
        break
    short[key] = suffix
  names, fingerprints = [], []
  for s in settings:
    name = "_".join(f"{short[k]}-{_name_part(v)}"
                    for k, v in s.items()) or "base"
    fingerprint = "\n".join(f"{k}={_display(v)}" for k, v in s.items())
    if len(name) > _MAX_NAME:
      name = f"{name[:_MAX_NAME - 7]}-{_short(fingerprint)}"
    names.append(name)
    fingerprints.append(fingerprint)
  # Names that still collide (values that differ only in odd characters).
  clash = {n for n in names if names.count(n) > 1}
  return [f"{n}-{_short(f)}" if n in clash else n
          for n, f in zip(names, fingerprints)]


def _load_point(path: Path | str, overrides: Sequence[str], where: str
                ) -> configlib.Config:
  try:
    return configlib.load(path, overrides)
  except JaxWorldError as e:  # say which point
    raise JaxWorldError(f"{where}: {e}") from None


def _check_training_inputs(cfg: configlib.Config, where: str) -> None:
  """What `jaxworld train` would reject only after starting up."""
  if not (cfg.data.path and Path(cfg.data.path).is_dir()):
    raise JaxWorldError(f"{where}: data.path={cfg.data.path!r} is not a "
                        f"dataset directory. Add \"data.path=DIR\" (made by "
                        f"`jaxworld data generate --out DIR`) to base.")
  tok = cfg.dynamics.tokenizer_workdir
  if cfg.train.stage == "dynamics" and not (tok and Path(tok).is_dir()):
    raise JaxWorldError(f"{where}: dynamics.tokenizer_workdir={tok!r} is not "
                        f"a run directory. Add \"dynamics.tokenizer_workdir="
                        f"RUN\" (a trained tokenizer) to base.")


def load_sweep(file: str | Path, out: str | Path | None = None) -> Sweep:
  """Parses and validates a sweep file; every point's config is loaded.

  Raises:
    JaxWorldError: naming the problem and the fix, before anything runs.
  """
  path = Path(file)
  if not path.is_file():
    raise JaxWorldError(f"Sweep file {path} does not exist (relative paths "
                        f"resolve against {Path.cwd()}). See configs/sweeps/ "
                        f"for examples.")
  try:
    spec = tomllib.loads(path.read_text())
  except tomllib.TOMLDecodeError as e:
    raise JaxWorldError(f"Sweep file {path} does not parse: {e}.") from None
  where = f"Sweep file {path}"
  unknown = sorted(set(spec) - set(_TOP_KEYS))
  if unknown:
    raise JaxWorldError(f"{where}: unknown top-level key(s) "
                        f"{', '.join(unknown)}. Valid keys: "
                        f"{', '.join(_TOP_KEYS)}.")
  if ("config" in spec) == ("run" in spec):
    raise JaxWorldError(f"{where}: give exactly one of config = \"dynamics\" "
                        f"(train each point) or run = \"RUN_DIR\" (evaluate "
                        f"one trained run at each point).")
  base = _override_list(spec.get("base", []), f"{where}: base")
  evals = _override_list(spec.get("eval", []), f"{where}: eval")
  all_settings = _settings(spec, where)
  names = point_names(all_settings)
  seen = {}
  for name, s in zip(names, all_settings):
    fingerprint = tuple(sorted((k, _display(v)) for k, v in s.items()))
    if fingerprint in seen:
      raise JaxWorldError(f"{where}: points {seen[fingerprint]} and {name} "
                          f"set the same overrides; remove one.")
    seen[fingerprint] = name
  out = Path(out) if out is not None else default_out(path)
  own = [[f"{k}={_toml_value(v, f'{where}: {k}')}" for k, v in s.items()]
         for s in all_settings]

  points = []
  if "run" in spec:
    run = str(spec["run"])
    if "eval" in spec:
      raise JaxWorldError(f"{where}: `eval` is for training sweeps; in an "
                          f"evaluation-only sweep put those overrides in "
                          f"base.")
    bad = [t for t in base + [o for p in own for o in p]
           if not t.startswith("rollout.")]
    if bad:
      raise JaxWorldError(f"{where}: an evaluation-only sweep (run = ...) may "
                          f"vary only rollout.* keys, not {bad[0]!r}. To vary "
                          f"training, use config = ... instead of run.")
    saved = Path(run) / "config.json"
    if not saved.is_file():
      raise JaxWorldError(f"{where}: run = {run!r} has no config.json; give a "
                          f"trained dynamics run directory (relative paths "
                          f"resolve against {Path.cwd()}).")
    for name, s, overrides in zip(names, all_settings, own):
      cfg = _load_point(saved, base + overrides, f"{where}, point {name}")
      if cfg.train.stage != "dynamics":
        raise JaxWorldError(f"{where}: {run} is a {cfg.train.stage} run; "
                            f"evaluation needs a dynamics run.")
      points.append(Point(name, s, (*base, *overrides), out / name,
                          out / name, ()))
    return Sweep(path, None, run, tuple(points))

  config = str(configlib.resolve(str(spec["config"])))
  bad = [t for t in evals if not t.startswith("rollout.")]
  if bad:
    raise JaxWorldError(f"{where}: eval overrides may set only rollout.* "
                        f"keys, not {bad[0]!r}; put it in base.")
  for name, s, overrides in zip(names, all_settings, own):
    full = (*base, *overrides)
    cfg = _load_point(config, full, f"{where}, point {name}")
    _check_training_inputs(cfg, f"{where}, point {name}")
    dynamics = cfg.train.stage == "dynamics"
    rollout = tuple(t for t in full if t.startswith("rollout."))
    points.append(Point(name, s, full, out / name,
                        out / name / "eval" if dynamics else None,
                        (*rollout, *evals) if dynamics else ()))
  if evals and not any(p.eval_dir for p in points):
    raise JaxWorldError(f"{where}: eval overrides are given but no point "
                        f"trains a dynamics model, so nothing is evaluated; "
                        f"remove eval.")
  return Sweep(path, config, None, tuple(points))


# ---------------------------------------------------------------- running


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
  if {k: saved.get(k) for k in mine} != mine:
    raise JaxWorldError(
        f"{point.dir} holds a finished run with other overrides "
        f"({' '.join(saved.get('overrides', []))}) than this sweep's "
        f"({' '.join(point.overrides)}). Pass another --out, or delete "
        f"{point.dir} to run it again.")
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
    file: the sweep TOML (format in this module's docstring).
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
            if len({_display(r.get(k, "")) for r in rows}) > 1]
  plots = report.write_plots(rows, varied[0], out) if len(varied) == 1 else []
  log.info("%d of %d points done; results in %s and %s%s\n%s",
           sum(r["status"] == "done" for r in rows), len(rows),
           out / "results.md", out / "results.csv",
           f", plots {', '.join(p.name for p in plots)}" if plots else "",
           "\n".join(lines))
  return rows
