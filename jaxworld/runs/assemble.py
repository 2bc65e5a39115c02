"""Run assembly: which trained runs a run reads, and restoring their models.

A dynamics run reads a trained tokenizer (and, with latent actions, a
trained LAM). When it starts, their config sections are copied into its
config and their checkpoint steps pinned (`pin_frozen_runs`), so the run,
its resume and everything that later loads it (rollout, eval, export) read
the very same models. Training, inference, eval and export all restore
models through this module; none of them imports another's code to do so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxworld import config as configlib
from jaxworld.config import Config, MeshConfig
from jaxworld.errors import JaxWorldError
from jaxworld.models import build
from jaxworld.parallel import mesh as meshlib, sharding
from jaxworld.runs import checkpoint

log = logging.getLogger(__name__)


def _pinned_step(workdir: Path, resume: bool, key: str, step: int,
                 run_dir: str, what: str) -> int:
  """The checkpoint step of a frozen model's run: as set, as pinned in a
  resumed run's config.json, or that run's latest."""
  saved = workdir / "config.json"
  if step == 0 and resume and saved.exists():
    step = getattr(configlib.load(saved).dynamics, key)  # stay pinned
  if step == 0:
    steps = checkpoint.saved_steps(run_dir)
    if not steps:
      raise JaxWorldError(f"The {what} run {run_dir} has no checkpoint "
                          f"yet; train it first.")
    step = steps[-1]
  return step


def _check_same(cfg: Config, other: Config, run_dir: str, what: str) -> None:
  for key, mine, theirs in (
      ("data.window", cfg.data.window, other.data.window),
      ("world.image_size", cfg.world.image_size, other.world.image_size)):
    if mine != theirs:
      raise JaxWorldError(
          f"The {what} in {run_dir} was trained with {key}={theirs}, but "
          f"this run has {key}={mine}. Use {key}={theirs}, or train a "
          f"{what} for this setting.")


def _check_codes(cfg: Config, tokenizer_kind: str, where: str) -> None:
  """The tokenizer's codes are those the dynamics kind models."""
  codes = build.dynamics_kind(cfg).codes
  if build.kind("tokenizer", tokenizer_kind).codes == codes:
    return
  options = build.tokenizer_kinds(codes)
  raise JaxWorldError(
      f"dynamics.kind={cfg.dynamics.kind!r} models {codes}, but the "
      f"tokenizer of {where} (tokenizer.kind={tokenizer_kind!r}) gives "
      f"{build.kind('tokenizer', tokenizer_kind).codes}. Use a tokenizer of "
      f"kind {' or '.join(options)}: train one with `jaxworld train "
      f"tokenizer tokenizer.kind={options[0]}` (configs/"
      f"tokenizer_continuous.toml for continuous) and point "
      f"dynamics.tokenizer_workdir at it"
      + ("" if all(build.kind("tokenizer", k).trained for k in options)
         else ", or set tokenizer.kind=patches with no tokenizer_workdir")
      + ".")


def pin_frozen_runs(cfg: Config, workdir: Path, resume: bool) -> Config:
  """A dynamics run's config with its tokenizer's (and LAM's) sections and
  pinned checkpoint steps; other stages unchanged."""
  if cfg.train.stage != "dynamics":
    return cfg
  tok_dir = cfg.dynamics.tokenizer_workdir
  codes = build.dynamics_kind(cfg).codes
  if not tok_dir:
    if build.tokenizer_kind(cfg).trained:
      untrained = [k for k in build.tokenizer_kinds(codes)
                   if not build.kind("tokenizer", k).trained]
      raise JaxWorldError(
          "The dynamics stage needs a trained tokenizer: set "
          "dynamics.tokenizer_workdir=<tokenizer run workdir>"
          + (f", or use tokenizer.kind={untrained[0]} (nothing to train)"
             if untrained else "") + ".")
    _check_codes(cfg, cfg.tokenizer.kind, "this config")
  else:
    tok_cfg = checkpoint.read_config(tok_dir)
    _check_same(cfg, tok_cfg, tok_dir, "tokenizer")
    _check_codes(cfg, tok_cfg.tokenizer.kind, tok_dir)
    step = _pinned_step(workdir, resume, "tokenizer_step",
                        cfg.dynamics.tokenizer_step, tok_dir, "tokenizer")
    cfg = dataclasses.replace(
        cfg, tokenizer=tok_cfg.tokenizer,
        dynamics=dataclasses.replace(cfg.dynamics, tokenizer_step=step))
  if cfg.dynamics.actions != "latent":
    return cfg
  lam_dir = cfg.dynamics.lam_workdir
  if not lam_dir:
    raise JaxWorldError("dynamics.actions=\"latent\" needs a trained latent "
                        "action model: set dynamics.lam_workdir=<run of "
                        "`jaxworld train lam`>.")
  lam_cfg = checkpoint.read_config(lam_dir)
  if lam_cfg.train.stage != "lam":
    raise JaxWorldError(f"dynamics.lam_workdir={lam_dir} is a "
                        f"{lam_cfg.train.stage} run; give a lam run.")
  _check_same(cfg, lam_cfg, lam_dir, "LAM")
  step = _pinned_step(workdir, resume, "lam_step", cfg.dynamics.lam_step,
                      lam_dir, "LAM")
  return dataclasses.replace(
      cfg, lam=lam_cfg.lam,
      dynamics=dataclasses.replace(cfg.dynamics, lam_step=step))


def one_device_mesh() -> Mesh:
  """The mesh inference restores onto: rollouts are small."""
  return meshlib.make_mesh(MeshConfig(data=1), jax.devices()[:1])


def restore(cfg: Config, stage: str, run_dir: str | Path, step: int,
            mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
  """The `stage` model of `cfg` at `step` of `run_dir`, laid out over
  `mesh` as the rules say."""
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: build.for_stage(cfg, stage, 0)))
  if stage == "tokenizer" and not build.tokenizer_kind(cfg).trained:
    return graphdef, abstract  # nothing to restore: no parameters
  shardings = sharding.param_shardings(abstract, mesh, cfg.mesh.rules)
  state = checkpoint.restore_model(run_dir, abstract, shardings, step)
  log.info("loaded %s from %s (step %d)", stage, run_dir, step)
  return graphdef, state


def frozen_models(cfg: Config, mesh: Mesh
                  ) -> tuple[nnx.GraphDef, nnx.State] | None:
  """What a dynamics step reads but does not train, sharded over `mesh`:
  the pinned tokenizer, or with latent actions the tokenizer and the LAM as
  one `build.FrozenModels`. None for the other stages."""
  if cfg.train.stage != "dynamics":
    return None
  d = cfg.dynamics
  tok_graphdef, tok_state = restore(cfg, "tokenizer", d.tokenizer_workdir,
                                    d.tokenizer_step, mesh)
  if d.actions != "latent":
    return tok_graphdef, tok_state
  _, lam_state = restore(cfg, "lam", d.lam_workdir, d.lam_step, mesh)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build.FrozenModels(
      build.tokenizer(cfg, nnx.Rngs(0)), build.lam(cfg, nnx.Rngs(0)))))
  state["tokenizer"], state["lam"] = tok_state, lam_state
  return graphdef, state


@dataclasses.dataclass(frozen=True)
class WorldModel:
  """A trained dynamics run, ready to imagine: its config and models (the
  LAM only for a latent-action run)."""
  cfg: Config
  dynamics: nnx.Module
  tokenizer: nnx.Module
  lam: nnx.Module | None


def with_rollout_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
  """A trained run's config with `rollout.*` settings changed (sampling
  steps, temperature, ...); anything else is fixed by the run."""
  bad = [o for o in overrides if not o.startswith("rollout.")]
  if bad:
    raise JaxWorldError(
        f"Only rollout.* settings can change after training (the model is "
        f"fixed by the run), not {', '.join(bad)}. Train a new run to change "
        f"those.")
  return configlib.from_dict(configlib.to_dict(cfg), overrides)


def load_world_model(workdir: str | Path, overrides: Sequence[str] = ()
                     ) -> WorldModel:
  """A dynamics run at its latest step with the tokenizer (and LAM) steps
  it was trained on, on one device; `rollout.*`
  overrides are checked before anything is restored."""
  cfg = with_rollout_overrides(checkpoint.read_config(workdir), overrides)
  if cfg.train.stage != "dynamics":
    hint = (" (for a lam run, python bench/lam_report.py scores its latent "
            "actions and writes a control GIF)" if cfg.train.stage == "lam"
            else "")
    raise JaxWorldError(
        f"{workdir} is a {cfg.train.stage} run; rollout needs a dynamics run "
        f"(`jaxworld train dynamics ... --workdir DIR`){hint}.")
  steps = checkpoint.saved_steps(workdir)
  if not steps:
    raise JaxWorldError(f"{workdir} has no checkpoint yet; train it first.")
  mesh = one_device_mesh()
  d = cfg.dynamics
  load = lambda stage, run_dir, step: nnx.merge(
      *restore(cfg, stage, run_dir, step, mesh))
  return WorldModel(
      cfg, load("dynamics", workdir, steps[-1]),
      load("tokenizer", d.tokenizer_workdir, d.tokenizer_step),
      load("lam", d.lam_workdir, d.lam_step) if d.actions == "latent"
      else None)

