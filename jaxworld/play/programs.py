"""What `jaxworld play` steps: a world model's per-frame programs and their
parameters, read from a training run directory or from an export bundle.

Both sources give the same `Programs`, the three functions of
`infer/sampler.py` with their parameters:

    encode(tokenizer_params, frames u8[B, T, H, W, C]) -> codes of frame T
    step(dynamics_params, history [B, T, ...], actions i32[B, T], rng u32[2],
         temperature f32[]) -> (codes of the next frame, rng)
    decode(tokenizer_params, codes [B, T, ...]) -> u8 frame [B, H, W, C]

For a run they are the very functions `jaxworld rollout` runs; for a bundle
their `jax.export`-ed copies, so a bundle plays with jax and numpy alone:
nothing on the bundle path imports flax, orbax, grain or jaxworld's model
code. Held-out episodes to start from come with the source (the run's eval
split, the bundle's `episodes.npz`) or from `--data`.

Dimension keys: E episodes, B batch, T time, H/W/C frame height/width/
channels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxworld.errors import JaxWorldError

log = logging.getLogger(__name__)

BUNDLE_FORMAT, BUNDLE_VERSIONS = "jaxworld-bundle", (1, 2)  # infer/export.py


@dataclasses.dataclass(frozen=True)
class Programs:
  """A world model as three pure programs plus what playing it needs."""
  encode: Callable[..., jax.Array]
  step: Callable[..., tuple[jax.Array, jax.Array]]
  decode: Callable[..., jax.Array]
  tokenizer_params: Any
  dynamics_params: Any
  window: int                      # frames the model was trained on
  action_names: tuple[str, ...]    # index -> name shown and sent by the page
  temperature: float
  seed: int
  key_impl: str
  about: dict[str, Any]            # source, kind, ... (shown on the page)
  # frames u8[E, T, H, W, C] -> latent actions i32[E, T] of a latent-action
  # run (its LAM), so a start context carries the actions that happened.
  infer_actions: Callable[[np.ndarray], np.ndarray] | None = None
  models: Any = None  # the `assemble.WorldModel` of a run; None: a bundle


@dataclasses.dataclass(frozen=True)
class Episodes:
  """Held-out episodes to start from: frames u8[E, T, H, W, C], the actions
  taken after each frame i32[E, T]."""
  frames_ETHWC: np.ndarray
  actions_ET: np.ndarray


def is_bundle(path: str | Path) -> bool:
  return (Path(path) / "manifest.json").is_file()


def resolve_run(path: str | Path) -> Path:
  """A dynamics run directory, a bundle, or a demo root (`jaxworld demo
  --workdir`, whose dynamics run is `dynamics/`)."""
  path = Path(path)
  if not path.exists():
    raise JaxWorldError(f"{path} does not exist. Pass a dynamics run "
                        f"directory (`jaxworld train dynamics --workdir "
                        f"DIR`) or an export bundle (`jaxworld export`).")
  if is_bundle(path) or (path / "config.json").is_file():
    return path
  if (path / "dynamics" / "config.json").is_file():
    return path / "dynamics"
  raise JaxWorldError(
      f"{path} is neither a jaxworld run (no config.json) nor an export "
      f"bundle (no manifest.json). Pass a dynamics run directory, a "
      f"`jaxworld demo` directory or a `jaxworld export` bundle.")


def numbered(count: int) -> tuple[str, ...]:
  return tuple(str(i) for i in range(count))


def _names_from_dataset(data_path: str, count: int) -> tuple[str, ...] | None:
  """The dataset's action names (dataset.json), if it is at hand and names
  exactly `count` actions; read as plain JSON (no jaxworld.data import)."""
  try:
    names = json.loads((Path(data_path) / "dataset.json").read_text()
                       ).get("action_names")
  except (OSError, ValueError):
    return None
  if isinstance(names, list) and len(names) == count:
    return tuple(str(n) for n in names)
  return None


# ------------------------------------------------------- a training run


def from_run(workdir: str | Path, overrides: Sequence[str] = (),
             data_path: str | None = None) -> Programs:
  """The latest checkpoint of a dynamics run (any kind, real or latent
  actions) with the tokenizer (and LAM) it was trained on, sampled with its
  rollout settings changed by `rollout.key=value` overrides; its actions
  named by its dataset's dataset.json (or that at `data_path`)."""
  # Imported here: a bundle plays without flax or the model code.
  from jaxworld.data import pipeline
  from jaxworld.models import build
  from jaxworld.runs import assemble, checkpoint

  _check_run(checkpoint.read_config(workdir), workdir, data_path is None)
  world = assemble.load_world_model(workdir, overrides)
  cfg = world.cfg
  names = (None if world.lam is not None else _names_from_dataset(
      data_path or pipeline.eval_path(cfg.data), build.num_actions(cfg)))
  return from_models(
      world, names, {"source": str(workdir), "format": "run",
                     "dynamics_step": checkpoint.saved_steps(workdir)[-1]})


def _check_run(cfg: Any, workdir: str | Path, needs_data: bool) -> None:
  """A dynamics run whose frozen runs and data can be found from here: a
  run trained elsewhere may name them relative to where it was trained."""
  from jaxworld.data import pipeline
  if cfg.train.stage != "dynamics":
    raise JaxWorldError(
        f"{workdir} is a {cfg.train.stage} run; `jaxworld play` plays a "
        f"dynamics run (`jaxworld train dynamics ... --workdir DIR`), a "
        f"`jaxworld demo` directory or an export bundle.")
  for key, path in (("dynamics.tokenizer_workdir",
                     cfg.dynamics.tokenizer_workdir),
                    ("dynamics.lam_workdir", cfg.dynamics.lam_workdir),
                    ("data.path", pipeline.eval_path(cfg.data))):
    if path and not Path(path).exists() and (needs_data
                                             or key != "data.path"):
      raise JaxWorldError(
          f"{workdir} reads {key}={path!r}, which is not there from "
          f"{Path.cwd()}" + (" (a relative path: it is relative to where "
                             "the run was trained)" if not Path(path)
                             .is_absolute() else "") +
          ". Run `jaxworld play` from that directory"
          + (", or pass the held-out episodes with --data DATASET_DIR."
             if key == "data.path" else "."))


def from_models(world: Any, action_names: Sequence[str] | None = None,
                about: dict[str, Any] | None = None) -> Programs:
  """The programs of an `assemble.WorldModel` (a config and its models,
  trained or not): sampler.py's per-frame programs, as rollout runs them."""
  from jaxworld.infer import latent_actions, sampler
  from jaxworld.models import build

  cfg = world.cfg
  tok_graphdef, tok_params = sampler.model_params(world.tokenizer)
  dyn_graphdef, dyn_params = sampler.model_params(world.dynamics)
  options = sampler.options_for(cfg)
  infer_actions = None if world.lam is None else (  # latent: numbered keys
      lambda frames_ETHWC: latent_actions.infer(world.lam, frames_ETHWC,
                                                cfg.data.window))
  return Programs(
      encode=sampler.program("encode", tok_graphdef),
      step=sampler.program("dynamics_step", dyn_graphdef, cfg.dynamics.kind,
                           options),
      decode=sampler.program("decode", tok_graphdef),
      tokenizer_params=tok_params, dynamics_params=dyn_params,
      window=cfg.data.window,
      action_names=tuple(action_names or numbered(build.num_actions(cfg))),
      temperature=float(cfg.rollout.temperature), seed=cfg.rollout.seed,
      key_impl=sampler.KEY_IMPL, infer_actions=infer_actions, models=world,
      about={"source": "models", "format": "models", **(about or {}),
             "dynamics_kind": cfg.dynamics.kind,
             "actions": cfg.dynamics.actions,
             "steps_per_frame": options.steps,
             "parameters": sum(int(np.size(v)) for v in
                               dyn_params.values())})


def dataset_episodes(root: str | Path, count: int) -> Episodes:
  """The first `count` (fewer if the split is smaller) episodes of a
  dataset's eval split."""
  from jaxworld.data import pipeline, stores
  available = len(stores.open_store(root, "eval"))
  episodes = pipeline.load_episodes(root, "eval", min(count, available))
  return Episodes(episodes["frames"], episodes["actions"].astype(np.int32))


def run_episodes(workdir: str | Path, count: int) -> Episodes:
  """Held-out episodes of the data a run was trained on."""
  from jaxworld.data import pipeline
  from jaxworld.runs import checkpoint
  return dataset_episodes(
      pipeline.eval_path(checkpoint.read_config(workdir).data), count)


# ------------------------------------------------------ an export bundle


def _bundle_manifest(path: Path) -> dict[str, Any]:
  try:
    manifest = json.loads((path / "manifest.json").read_text())
  except ValueError as e:
    raise JaxWorldError(f"{path}/manifest.json is not valid JSON ({e}); "
                        f"export the run again.") from None
  if (manifest.get("format") != BUNDLE_FORMAT
      or manifest.get("version") not in BUNDLE_VERSIONS):
    raise JaxWorldError(
        f"{path} is not a {BUNDLE_FORMAT} bundle of version "
        f"{' or '.join(map(str, BUNDLE_VERSIONS))} (its manifest says "
        f"{manifest.get('format')!r} v{manifest.get('version')}). Export "
        f"the run again with this jaxworld.")
  return manifest


# What a bundle's exported programs still take as inputs; the rest (steps
# per frame, schedule, top-k) was fixed when it was exported.
BUNDLE_OVERRIDES = ("rollout.temperature", "rollout.seed")


def _bundle_overrides(overrides: Sequence[str]) -> dict[str, float]:
  values = {}
  for item in overrides:
    key, _, value = item.partition("=")
    if key not in BUNDLE_OVERRIDES:
      raise JaxWorldError(
          f"A bundle plays with the sampling it was exported with; only "
          f"{' and '.join(BUNDLE_OVERRIDES)} can change, not {item!r}. Play "
          f"the run directory instead to change it.")
    try:
      values[key.split(".")[1]] = float(value)
    except ValueError:
      raise JaxWorldError(f"{key} must be a number, not {value!r}.") from None
  return values


def from_bundle(path: str | Path, overrides: Sequence[str] = ()) -> Programs:
  """A `jaxworld export` bundle: its exported programs and parameters; only
  the temperature and seed can be overridden."""
  path = Path(path)
  manifest = _bundle_manifest(path)
  changed = _bundle_overrides(overrides)
  bf16 = manifest["param_dtype"] == "bfloat16"
  params = {}
  for name, entry in manifest["params"].items():
    with np.load(path / entry["file"], allow_pickle=False) as npz:
      # bfloat16 is stored as its uint16 bits (npz has no bfloat16).
      params[name] = jax.device_put(
          {k: npz[k].view(jnp.bfloat16) if bf16 else npz[k]
           for k in npz.files})
  platform = jax.default_backend()
  lowered_for = manifest.get("platforms", [])
  if platform not in lowered_for and not (
      platform == "gpu" and {"cuda", "rocm"} & set(lowered_for)):
    raise JaxWorldError(
        f"{path} was exported for {', '.join(lowered_for)}, not for this "
        f"machine's {platform}. Export it again here, or play it where one "
        f"of those is available.")
  functions = {}
  for name, entry in manifest["functions"].items():
    exported = jax.export.deserialize(
        bytearray((path / entry["file"]).read_bytes()))
    functions[name] = exported.call
  r = manifest["rollout"]
  count = int(r["num_actions"])
  names = r.get("action_names")
  if not (isinstance(names, list) and len(names) == count):
    data_path = _bundle_data_path(path)
    names = (_names_from_dataset(data_path, count) if data_path else None
             ) or numbered(count)
  return Programs(
      encode=functions["encode"], step=functions["dynamics_step"],
      decode=functions["decode"], tokenizer_params=params["tokenizer"],
      dynamics_params=params["dynamics"], window=int(r["window"]),
      action_names=tuple(str(n) for n in names),
      temperature=changed.get("temperature", float(r["temperature"])),
      seed=int(changed.get("seed", r["seed"])), key_impl=r["key_impl"],
      about={"source": str(path), "format": "bundle",
             "dynamics_kind": r.get("dynamics_kind", "maskgit"),
             "actions": "real", "steps_per_frame": r.get("steps_per_frame"),
             "dynamics_step": manifest.get("source", {}).get("dynamics_step"),
             "parameters": sum(int(np.size(v)) for v in
                               params["dynamics"].values())})


def _bundle_data_path(path: Path) -> str | None:
  try:
    return json.loads((path / "config.json").read_text())["data"]["path"]
  except (OSError, ValueError, KeyError, TypeError):
    return None


def bundle_episodes(path: str | Path, count: int) -> Episodes:
  """The sample episodes `jaxworld export` put in the bundle."""
  file = Path(path) / "episodes.npz"
  if not file.is_file():
    raise JaxWorldError(
        f"{path} has no episodes.npz (the run's dataset was not at hand when "
        f"it was exported). Pass held-out episodes with --data DATASET_DIR.")
  with np.load(file, allow_pickle=False) as npz:
    return Episodes(npz["frames"][:count],
                    npz["actions"][:count].astype(np.int32))


def load(path: str | Path, num_episodes: int = 16,
         data_path: str | None = None, overrides: Sequence[str] = ()
         ) -> tuple[Programs, Episodes]:
  """The programs and start episodes of a run, demo directory or bundle."""
  path = resolve_run(path)
  programs = (from_bundle(path, overrides) if is_bundle(path)
              else from_run(path, overrides, data_path))
  if data_path:
    episodes = dataset_episodes(data_path, num_episodes)
  elif is_bundle(path):
    episodes = bundle_episodes(path, num_episodes)
  else:
    episodes = run_episodes(path, num_episodes)
  return programs, episodes
