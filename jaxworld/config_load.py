"""Reading configs: TOML/JSON files, dotted overrides, type checks.

The dataclasses live in jaxworld/config.py, which re-exports what callers
use (`config.load`, `config.resolve`, `config.flatten`, ...). This module
only turns plain data into a dataclass tree and knows nothing of the
sections, so it imports nothing from config.py (no import cycle).

Field types understood: int, float (an int is widened), str, bool, tuple
(a TOML list, frozen to nested tuples), `typing.Literal[...]` of strings (a
fixed set of choices, checked here where the field declares them) and a
nested config dataclass (a TOML table).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxworld.errors import JaxWorldError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def is_section(typ: Any) -> bool:
  """Whether a field type is a nested config dataclass (a TOML table)."""
  return dataclasses.is_dataclass(typ) and isinstance(typ, type)


def choices(typ: Any) -> tuple[Any, ...] | None:
  """The allowed values of a `Literal[...]` field type, else None."""
  return typing.get_args(typ) if typing.get_origin(typ) is typing.Literal \
      else None


def read_toml(path: Path, what: str) -> dict[str, Any]:
  """A TOML file's top-level table; `what` names the file in the error."""
  try:
    return tomllib.loads(path.read_text())
  except tomllib.TOMLDecodeError as e:
    raise JaxWorldError(f"{what} {path} does not parse: {e}.") from None


def read_file(path: str | Path) -> dict[str, Any]:
  """A config file's data: TOML, or the JSON a run saves (config.json)."""
  path = Path(path)
  if not path.is_file():
    raise JaxWorldError(f"Config file {path} does not exist. Pass one of "
                        f"the files in configs/, e.g. configs/tokenizer.toml.")
  if path.suffix != ".json":
    return read_toml(path, "Config file")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise JaxWorldError(f"Config file {path} does not parse: {e}.") from None


def parse_value(raw: str) -> Any:
  """An override's value, read as TOML; a bare word is a string
  (`data.path=/tmp/x`). Sweep files parse their points with it too."""
  try:
    return tomllib.loads(f"v = {raw}")["v"]
  except tomllib.TOMLDecodeError:
    return raw


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]
                    ) -> dict[str, Any]:
  """A deep copy of nested `data` with `section.key=value` overrides set."""
  data = json.loads(json.dumps(data))
  for text in overrides:
    if "=" not in text:
      raise JaxWorldError(f"Override {text!r} is not of the form "
                          f"section.key=value, e.g. train.steps=100.")
    key, raw = text.split("=", 1)
    keys, value = key.strip().split("."), parse_value(raw)
    node = data
    for k in keys[:-1]:
      node = node.setdefault(k, {})
      if not isinstance(node, dict):
        raise JaxWorldError(f"Override {text!r}: {k} is not a section.")
    node[keys[-1]] = value
  return data


def build(cls: type, data: dict[str, Any], where: str = "") -> Any:
  """Instance of config dataclass `cls` from nested data; unknown keys and
  wrong types are rejected naming the key. `where`: the dotted prefix."""
  hints = typing.get_type_hints(cls)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - known)
  if unknown:
    raise JaxWorldError(
        f"Unknown config key(s) {', '.join(where + k for k in unknown)}. "
        f"Valid keys in {where.rstrip('.') or 'the top level'}: "
        f"{', '.join(sorted(known))}.")
  kwargs = {}
  for name in (f.name for f in dataclasses.fields(cls) if f.name in data):
    typ, value = hints[name], data[name]
    if is_section(typ):
      if not isinstance(value, dict):
        raise JaxWorldError(f"Config key {where}{name} is a section; give "
                            f"it as a table, not {value!r}.")
      kwargs[name] = build(typ, value, f"{where}{name}.")
    else:
      kwargs[name] = _coerce(value, typ, where + name)
  return cls(**kwargs)


def _coerce(value: Any, typ: Any, where: str) -> Any:
  """Checks `value` against a field type; converts lists to tuples."""
  allowed = choices(typ)
  if allowed is not None:
    if isinstance(value, str) and value in allowed:
      return value
    raise JaxWorldError(
        f"Config key {where}={value!r} is not one of the allowed values: "
        f"{', '.join(map(json.dumps, allowed))}. Fix the value in the file "
        f"or override, e.g. {where}={json.dumps(allowed[0])}.")
  if typ is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if typ is tuple:
    if not isinstance(value, (list, tuple)):
      raise JaxWorldError(f"Config key {where} must be a list, got {value!r}.")
    return freeze(value)
  if typ in (int, float, str, bool):
    if type(value) is not typ:
      example = {int: "8", float: "0.5", str: '"text"', bool: "true"}[typ]
      raise JaxWorldError(
          f"Config key {where} must be {typ.__name__}, got {value!r} "
          f"({type(value).__name__}). Fix the value in the file or override, "
          f"e.g. {where}={example}.")
    return value
  raise TypeError(f"unsupported field type {typ} at {where}")


def freeze(value: Any) -> Any:
  """Lists -> tuples, recursively (config values are immutable)."""
  if isinstance(value, (list, tuple)):
    return tuple(freeze(v) for v in value)
  return value


def to_dict(cfg: Any) -> dict[str, Any]:
  """The config as plain JSON-able data (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested sections -> {"section.key": value}, the override spelling."""
  out = {}
  for k, v in data.items():
    out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict)
               else {prefix + k: v})
  return out


def describe(cls: type, prefix: str = "") -> list[str]:
  """One line per field: dotted key, default, description."""
  lines = []
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    typ = hints[f.name]
    if is_section(typ):
      lines += describe(typ, prefix + f.name + ".")
    else:
      lines.append(f"{prefix}{f.name} = "
                   f"{json.dumps(json.loads(json.dumps(f.default)))}"
                   f"  # {f.metadata['doc']}")
  return lines


def resolve(name: str) -> Path:
  """A config path, or the name of a file in the repo's configs/ folder."""
  path = Path(name)
  if path.is_file():
    return path
  named = CONFIG_DIR / f"{name}.toml"
  if named.is_file():
    return named
  known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
  raise JaxWorldError(f"No config file {name!r}. Pass a path to a .toml file "
                      f"or one of the names in {CONFIG_DIR}: {known}.")


def load_preset(name: str) -> dict[str, Any]:
  """The [mesh] table of a parallelism preset, by name or path."""
  path = Path(name)
  if not (path.suffix == ".toml" and path.is_file()):
    path = CONFIG_DIR / "mesh" / f"{name}.toml"
  if not path.is_file():
    known = ", ".join(sorted(p.stem for p in (CONFIG_DIR / "mesh").glob("*.toml")))
    raise JaxWorldError(f"No mesh preset {name!r}. Use mesh.preset= one of "
                        f"{known}, or a path to a .toml file with a [mesh] "
                        f"table.")
  table = read_toml(path, "Mesh preset")
  if set(table) != {"mesh"} or "preset" in table["mesh"]:
    raise JaxWorldError(f"Mesh preset {path} must hold only a [mesh] table "
                        f"(sizes and rules, no preset key).")
  return table["mesh"]
