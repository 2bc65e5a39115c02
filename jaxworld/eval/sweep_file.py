"""Sweep files: parsing and validating one, naming its points.

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
a short hash where names would collide or grow long). Every point's config
is loaded here, so a bad key or value fails before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxworld import config as configlib
from jaxworld import config_load
from jaxworld.errors import JaxWorldError

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


def toml_value(value: Any, where: str) -> str:
  """`value` as TOML text, as the config's override parser reads it."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (int, float)):
    return repr(value)  # TOML reads 1e-05, inf and nan as Python writes them
  if isinstance(value, str):
    return json.dumps(value)  # a TOML basic string
  if isinstance(value, list):
    return "[" + ", ".join(toml_value(v, where) for v in value) + "]"
  raise JaxWorldError(f"{where}: value {value!r} cannot be a config override; "
                      f"use a number, string, boolean or list.")


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
      out.append({k.strip(): config_load.parse_value(raw.strip()) for k, raw in
                  (t.split("=", 1) for t in texts)})
  return out


def display(value: Any) -> str:
  return value if isinstance(value, str) else toml_value(value, "")


def _name_part(value: Any) -> str:
  if isinstance(value, list):
    return "-".join(_name_part(v) for v in value)
  return re.sub(r"[^A-Za-z0-9._+-]+", "-", display(value))


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
    fingerprint = "\n".join(f"{k}={display(v)}" for k, v in s.items())
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
  from jaxworld.models import build  # the registry imports the config
  needs_run = cfg.train.stage == "dynamics" and (
      tok or build.tokenizer_kind(cfg).trained)
  if needs_run and not (tok and Path(tok).is_dir()):
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
  spec = config_load.read_toml(path, "Sweep file")
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
  all_settings = _settings(spec, where)
  names = point_names(all_settings)
  seen = {}
  for name, s in zip(names, all_settings):
    fingerprint = tuple(sorted((k, display(v)) for k, v in s.items()))
    if fingerprint in seen:
      raise JaxWorldError(f"{where}: points {seen[fingerprint]} and {name} "
                          f"set the same overrides; remove one.")
    seen[fingerprint] = name
  out = Path(out) if out is not None else default_out(path)
  own = [[f"{k}={toml_value(v, f'{where}: {k}')}" for k, v in s.items()]
         for s in all_settings]
  drafts = [(name, s, (*base, *o), out / name)
            for name, s, o in zip(names, all_settings, own)]
  if "run" in spec:
    return _eval_sweep(path, str(spec["run"]), spec, drafts, where)
  return _training_sweep(path, str(configlib.resolve(str(spec["config"]))),
                         spec, drafts, where)


# A point before its kind of sweep is known: name, own settings, base and
# own overrides, directory.
_Draft = tuple[str, dict[str, Any], tuple[str, ...], Path]


def _eval_sweep(path: Path, run: str, spec: dict[str, Any],
                drafts: list[_Draft], where: str) -> Sweep:
  """An evaluation-only sweep: `jaxworld eval` of one run at each point."""
  if "eval" in spec:
    raise JaxWorldError(f"{where}: `eval` is for training sweeps; in an "
                        f"evaluation-only sweep put those overrides in "
                        f"base.")
  bad = [t for d in drafts for t in d[2] if not t.startswith("rollout.")]
  if bad:
    raise JaxWorldError(f"{where}: an evaluation-only sweep (run = ...) may "
                        f"vary only rollout.* keys, not {bad[0]!r}. To vary "
                        f"training, use config = ... instead of run.")
  saved = Path(run) / "config.json"
  if not saved.is_file():
    raise JaxWorldError(f"{where}: run = {run!r} has no config.json; give a "
                        f"trained dynamics run directory (relative paths "
                        f"resolve against {Path.cwd()}).")
  points = []
  for name, s, overrides, folder in drafts:
    cfg = _load_point(saved, overrides, f"{where}, point {name}")
    if cfg.train.stage != "dynamics":
      raise JaxWorldError(f"{where}: {run} is a {cfg.train.stage} run; "
                          f"evaluation needs a dynamics run.")
    points.append(Point(name, s, overrides, folder, folder, ()))
  return Sweep(path, None, run, tuple(points))


def _training_sweep(path: Path, config: str, spec: dict[str, Any],
                    drafts: list[_Draft], where: str) -> Sweep:
  """A training sweep: `jaxworld train` (then eval, for dynamics) a point."""
  evals = _override_list(spec.get("eval", []), f"{where}: eval")
  bad = [t for t in evals if not t.startswith("rollout.")]
  if bad:
    raise JaxWorldError(f"{where}: eval overrides may set only rollout.* "
                        f"keys, not {bad[0]!r}; put it in base.")
  points = []
  for name, s, overrides, folder in drafts:
    cfg = _load_point(config, overrides, f"{where}, point {name}")
    _check_training_inputs(cfg, f"{where}, point {name}")
    dynamics = cfg.train.stage == "dynamics"
    rollout = tuple(t for t in overrides if t.startswith("rollout."))
    points.append(Point(name, s, overrides, folder,
                        folder / "eval" if dynamics else None,
                        (*rollout, *evals) if dynamics else ()))
  if evals and not any(p.eval_dir for p in points):
    raise JaxWorldError(f"{where}: eval overrides are given but no point "
                        f"trains a dynamics model, so nothing is evaluated; "
                        f"remove eval.")
  return Sweep(path, config, None, tuple(points))
