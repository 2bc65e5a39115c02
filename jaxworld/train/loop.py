"""The one training loop, for every stage, mesh and number of hosts.

Everything that can be wrong with the inputs (config, data, mesh, batch,
workdir) is checked before anything is compiled or written, so a bad command
fails in seconds with the fix and leaves an existing run untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.experimental import multihost_utils

from jaxworld import config as configlib
from jaxworld.config import Config
from jaxworld.data import pipeline, records
from jaxworld.errors import JaxWorldError
from jaxworld.models import build
from jaxworld.parallel import mesh as meshlib
from jaxworld.train import checkpoint, metrics, preemption
from jaxworld.train import step as steplib

log = logging.getLogger(__name__)

# Keys that may change when a run is resumed (e.g. to train it for longer).
# train.steps may grow: the learning-rate schedule is then stretched to the
# new length from the resumed step on. data.num_workers may not change: the
# iterator state of worker processes is per worker. The mesh may change
# (checkpoints restore into any layout): the global batch, and so the data
# stream, stays the same.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.keep_every",
                     "train.init_from", "train.init_step", "data.prefetch",
                     "data.path", "mesh.")


def _check_workdir(cfg: Config, workdir: Path, resume: bool) -> None:
  saved = workdir / "config.json"
  if not saved.exists():
    return
  if not resume:
    raise JaxWorldError(
        f"{workdir} already holds a run. Pass --resume to continue it, or "
        f"choose a new --workdir; nothing was changed.")
  old = configlib.flatten(configlib.to_dict(configlib.load(saved)))
  new = configlib.flatten(configlib.to_dict(cfg))
  changed = [k for k in new if old.get(k) != new[k]
             and not k.startswith(RESUMABLE_CHANGES)]
  if changed:
    allowed = ", ".join(k + "*" if k.endswith(".") else k
                        for k in RESUMABLE_CHANGES)
    raise JaxWorldError(
        f"Cannot resume {workdir}: the config differs from the one it was "
        f"started with in {', '.join(changed)}. Resume with the same config "
        f"(only {allowed} may change) or start a new --workdir.")


def _check_data(cfg: Config) -> None:
  """Every dataset training reads (data.path, or each data.mixture entry)
  fits the config and opens; its first episode decodes."""
  if not cfg.data.path and not cfg.data.mixture:
    raise JaxWorldError("data.path is empty. Generate data with `jaxworld "
                        "data generate --out DIR` (or ingest your own with "
                        "`jaxworld data ingest`) and pass data.path=DIR.")
  for path, _ in pipeline.dataset_weights(cfg.data):
    root = Path(path)
    meta = records.read_metadata(root)
    if meta["image_size"] != cfg.world.image_size:
      raise JaxWorldError(
          f"The dataset at {root} has {meta['image_size']}px frames but "
          f"world.image_size={cfg.world.image_size}; set "
          f"world.image_size={meta['image_size']} or re-ingest the data at "
          f"that size.")
    if meta["episode_length"] < cfg.data.window:
      raise JaxWorldError(
          f"The episodes of {root} have as few as {meta['episode_length']} "
          f"frames, fewer than data.window={cfg.data.window}; lower "
          f"data.window.")
    if meta["num_actions"] > cfg.dynamics.num_actions:
      raise JaxWorldError(
          f"The dataset at {root} has {meta['num_actions']} actions but "
          f"dynamics.num_actions={cfg.dynamics.num_actions}; raise it.")
    if cfg.data.bad_records == "error":
      pipeline.check_shards(root, "train")


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


def _with_tokenizer_config(cfg: Config, workdir: Path, resume: bool
                           ) -> Config:
  """The dynamics stage reads a trained tokenizer (and, for latent actions,
  a trained LAM): take their config sections, check they fit this run, and
  pin their checkpoint steps."""
  if cfg.train.stage != "dynamics":
    return cfg
  tok_dir = cfg.dynamics.tokenizer_workdir
  if not tok_dir:
    raise JaxWorldError("The dynamics stage needs a trained tokenizer: set "
                        "dynamics.tokenizer_workdir=<tokenizer run workdir>.")
  tok_cfg = checkpoint.read_config(tok_dir)
  _check_same(cfg, tok_cfg, tok_dir, "tokenizer")
  wanted = "continuous" if cfg.dynamics.kind == "diffusion" else "fsq"
  if tok_cfg.tokenizer.kind != wanted:
    raise JaxWorldError(
        f"dynamics.kind={cfg.dynamics.kind!r} needs a tokenizer with "
        f"tokenizer.kind={wanted!r}, but {tok_dir} has "
        f"{tok_cfg.tokenizer.kind!r}. Train one with `jaxworld train "
        f"{'tokenizer_continuous' if wanted == 'continuous' else 'tokenizer'}"
        f"` and point dynamics.tokenizer_workdir at it.")
  step = _pinned_step(workdir, resume, "tokenizer_step",
                      cfg.dynamics.tokenizer_step, tok_dir, "tokenizer")
  cfg = dataclasses.replace(
      cfg, tokenizer=tok_cfg.tokenizer,
      dynamics=dataclasses.replace(cfg.dynamics, tokenizer_step=step))
  return _with_lam_config(cfg, workdir, resume)


def _with_lam_config(cfg: Config, workdir: Path, resume: bool) -> Config:
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


def _restore_frozen(cfg: Config, stage: str, run_dir: str, step: int,
                    mesh: Any) -> tuple[Any, nnx.State]:
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: build.for_stage(cfg, stage, 0)))
  shardings = meshlib.param_shardings(abstract, mesh, cfg.mesh.rules)
  state = checkpoint.restore_model(run_dir, abstract, shardings, step)
  log.info("loaded %s from %s (step %d)", stage, run_dir, step)
  return graphdef, state


def _frozen_tokenizer(cfg: Config, mesh: Any) -> steplib.Frozen | None:
  """For the dynamics stage: the trained tokenizer, sharded over `mesh`
  (with latent actions: tokenizer and LAM as one `build.FrozenModels`)."""
  if cfg.train.stage != "dynamics":
    return None
  d = cfg.dynamics
  tok_graphdef, tok_state = _restore_frozen(cfg, "tokenizer",
                                            d.tokenizer_workdir,
                                            d.tokenizer_step, mesh)
  if d.actions != "latent":
    return steplib.Frozen(tok_graphdef, tok_state)
  _, lam_state = _restore_frozen(cfg, "lam", d.lam_workdir, d.lam_step, mesh)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build.FrozenModels(
      build.tokenizer(cfg, nnx.Rngs(0)), build.lam(cfg, nnx.Rngs(0)))))
  state["tokenizer"], state["lam"] = tok_state, lam_state
  return steplib.Frozen(graphdef, state)


def _init_step(cfg: Config) -> int | None:
  """Fine-tuning: checks train.init_from and returns its step (None when
  the run starts from a fresh initialisation)."""
  t = cfg.train
  if not t.init_from:
    return None
  source = checkpoint.read_config(t.init_from)
  if source.train.stage != t.stage:
    raise JaxWorldError(
        f"train.init_from={t.init_from} is a {source.train.stage} run, but "
        f"this run trains the {t.stage}. Start from a {t.stage} run.")
  steps = checkpoint.saved_steps(t.init_from)
  step = t.init_step or (steps[-1] if steps else None)
  if step not in steps:
    raise JaxWorldError(
        f"train.init_from={t.init_from} has no checkpoint at step "
        f"{step or '(latest)'}; it has {steps or 'none'}.")
  return step


def _init_from(cfg: Config, step: int, shardings: nnx.State) -> nnx.State:
  """The model parameters of another run of this stage (mismatched shapes
  are reported leaf by leaf by the checkpoint module)."""
  _, abstract = steplib.abstract_state(cfg, cfg.train.stage)
  model = checkpoint.restore_model(cfg.train.init_from, abstract["model"],
                                   shardings, step)
  log.info("model parameters from %s (step %d); fresh optimizer",
           cfg.train.init_from, step)
  return model


def _resume_step(workdir: Path, steps: int, resume: bool) -> int | None:
  """The checkpoint step to resume from (None: start fresh)."""
  saved = checkpoint.saved_steps(workdir) if resume else []
  if saved and saved[-1] > steps:
    raise JaxWorldError(
        f"{workdir} is already at step {saved[-1]}, past train.steps={steps}."
        f" Raise train.steps to continue it.")
  return saved[-1] if saved else None


def _last_logged(workdir: Path) -> dict[str, float]:
  last: dict[str, Any] = {}
  metrics_file = workdir / "metrics.jsonl"
  if metrics_file.exists():
    for line in metrics_file.read_text().splitlines():
      last = json.loads(line)
  return {k: v for k, v in last.items() if k not in ("step", "stage", "time")}


def _log_model(state: Any, shardings: Any, mesh: Any, stage: str,
               workdir: Path) -> None:
  """Parameter counts to the log; every array's layout, checked against the
  rules, to <workdir>/shardings.txt."""
  model = state["model"]
  log.info("%s: %s parameters", stage, f"{build.count_params(model):,}")
  for name, count in build.param_table(model):
    log.info("  %-12s %12s", name, f"{count:,}")
  lines = meshlib.check_sharded_as_ruled(state, shardings)
  if jax.process_index() == 0:
    (workdir / "shardings.txt").write_text("\n".join(lines) + "\n")
  log.info("mesh %s on %d devices (%d processes); %d arrays sharded as the "
           "rules say (%s)", dict(mesh.shape), mesh.size, jax.process_count(),
           len(lines), workdir / "shardings.txt")


def train(cfg: Config, workdir: str | Path, resume: bool = False
          ) -> dict[str, Any]:
  """Trains `cfg.train.stage`; returns the last logged metrics and timings."""
  t0 = time.perf_counter()
  meshlib.maybe_initialize_distributed()
  workdir = Path(workdir)
  # ---- checks: nothing is written or compiled until these pass.
  cfg = _with_tokenizer_config(cfg, workdir, resume)
  _check_workdir(cfg, workdir, resume)
  _check_data(cfg)
  init_step = _init_step(cfg)
  mesh = meshlib.make_mesh(cfg.mesh)
  per_process_batch = meshlib.check_batch(cfg.train.batch_size, mesh,
                                         cfg.mesh.rules)
  stage, t = cfg.train.stage, cfg.train
  start = _resume_step(workdir, t.steps, resume)
  if start == t.steps:
    log.info("%s already finished %d steps; nothing to do", workdir, t.steps)
    return {"stage": stage, "steps": t.steps, "metrics": _last_logged(workdir),
            "seconds": time.perf_counter() - t0, "stopped_at": None}
  if jax.process_count() > 1:
    # Every process has checked the workdir before any process writes to it.
    multihost_utils.sync_global_devices("jaxworld: inputs checked")

  frozen = _frozen_tokenizer(cfg, mesh)
  compiled = steplib.compile_step(cfg, stage, mesh, frozen)
  log.info("compiled %s step in %.1fs (%s)", stage, time.perf_counter() - t0,
           compiled.memory)
  with contextlib.ExitStack() as stack:
    # First in, last out: a signal during restore or the final save still
    # means "save and stop", not a traceback.
    stop = stack.enter_context(preemption.StopRequest())
    data = iter(pipeline.train_dataset(
        cfg.data, None, per_process_batch, jax.process_index(),
        jax.process_count()))
    if hasattr(data, "close"):  # worker processes
      stack.callback(data.close)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpts = checkpoint.Checkpoints(workdir, t.keep_checkpoints, t.keep_every)
    stack.callback(ckpts.close)
    stack.callback(ckpts.wait)  # runs first: finish pending saves
    found = None
    if start is not None:  # the newest valid step; damaged ones are skipped
      _, abstract = steplib.abstract_state(cfg, stage)
      found = ckpts.restore_latest(abstract, compiled.state_shardings, data,
                                   max_step=t.steps)
    if found is not None:
      start, state = found
      log.info("resumed %s from step %d", workdir, start)
    else:
      start = 0
      state = compiled.init()
      if init_step is not None:
        state["model"] = _init_from(cfg, init_step,
                                    compiled.state_shardings["model"])
      if jax.process_index() == 0:
        configlib.save(cfg, workdir / "config.json")
    _log_model(state, compiled.state_shardings, mesh, stage, workdir)
    logger = metrics.MetricLogger(workdir, stage, t.steps, start)
    stack.callback(logger.close)
    last, stopped_at = _run_steps(cfg, compiled, state, frozen, data, ckpts,
                                  logger, start, stop)
  return {"stage": stage, "steps": t.steps, "metrics": last,
          "seconds": time.perf_counter() - t0, "stopped_at": stopped_at,
          "stopped_by": stop.signal_name if stopped_at else None}


def _run_steps(cfg: Config, compiled: steplib.CompiledStep, state: Any,
               frozen: steplib.Frozen | None, data: Any,
               ckpts: checkpoint.Checkpoints, logger: metrics.MetricLogger,
               start: int, stop: preemption.StopRequest
               ) -> tuple[dict[str, float], int | None]:
  """Steps `start`..train.steps; returns the last logged metrics and the step
  at which a stop request (SIGTERM, Ctrl-C) ended training early, if one did.
  """
  t = cfg.train
  frozen_state = frozen.state if frozen is not None else None
  last: dict[str, float] = {}
  # Host<->device copies in the loop must be explicit (batches in, metrics
  # out at log steps): a hidden one would stall every step.
  skip = cfg.data.bad_records == "skip"
  skipped = 0  # damaged records this process passed over (data.bad_records)
  # Seconds spent waiting for the loader since the last log: the loader
  # starves the step when this is a large part of the interval.
  waited, interval_start = 0.0, time.perf_counter()
  with jax.transfer_guard("disallow"):
    for i in range(start, t.steps):
      wait_start = time.perf_counter()
      host_batch = next(data)
      waited += time.perf_counter() - wait_start
      if skip:
        skipped += int(host_batch.pop("skipped").sum())
      batch = steplib.device_batch(host_batch, compiled.batch_shardings)
      state, step_metrics = compiled.step(state, frozen_state, batch)
      done = i + 1
      if i == start:
        jax.block_until_ready(step_metrics)
        logger.start_clock(done)
      stopping = stop.reached(done)
      log_now = done % t.log_every == 0 or done == t.steps or stopping
      save_now = done % t.checkpoint_every == 0 or done == t.steps or stopping
      if log_now:
        now = time.perf_counter()
        extra = {"input_wait": waited / max(now - interval_start, 1e-9)}
        if skip:
          extra["skipped_records"] = skipped
        last = logger.write(done, {**step_metrics, **extra})
        waited, interval_start = 0.0, now
      if log_now or save_now:  # never checkpoint a diverged state
        loss = float(jax.device_get(step_metrics["loss"]))
        if not math.isfinite(loss):
          raise JaxWorldError(
              f"The {t.stage} loss became {loss} at step {done}. Lower "
              f"train.learning_rate (now {t.learning_rate}) or "
              f"train.grad_clip, or raise train.warmup_steps.")
      if save_now:
        ckpts.save(done, state, data, cfg)
      if skip and skipped and done == t.steps:
        log.warning("skipped %d damaged records (data.bad_records=skip; "
                    "counted in this process since it started)", skipped)
      if stopping and done < t.steps:
        log.warning("stopped by %s after step %d of %d; checkpoint saved. "
                    "Continue with the same command and --resume.",
                    stop.signal_name, done, t.steps)
        return last, done
  return last, None
