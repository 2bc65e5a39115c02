"""The one training loop, for every stage, mesh and number of hosts.

Everything that can be wrong with the inputs (config, data, mesh, batch,
workdir) is checked before anything is compiled or written, so a bad command
fails in seconds with the fix and leaves an existing run untouched.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxworld import config as configlib
from jaxworld.config import Config
from jaxworld.data import pipeline
from jaxworld.errors import JaxWorldError
from jaxworld.parallel import batch as batchlib, distributed
from jaxworld.parallel import mesh as meshlib
from jaxworld.runs import assemble, checkpoint
from jaxworld.train import fingerprint, metrics, preemption, preview, setup
from jaxworld.train import step as steplib

log = logging.getLogger(__name__)


def train(cfg: Config, workdir: str | Path, resume: bool = False
          ) -> dict[str, Any]:
  """Trains `cfg.train.stage`; returns the last logged metrics and timings."""
  t0 = time.perf_counter()
  distributed.maybe_initialize_distributed()
  workdir = Path(workdir)
  # ---- checks: nothing is written or compiled until these pass.
  cfg = assemble.pin_frozen_runs(cfg, workdir, resume)
  setup.check_workdir(cfg, workdir, resume)
  setup.check_data(cfg)
  init_step = setup.init_step(cfg)
  mesh = meshlib.make_mesh(cfg.mesh)
  per_process_batch = batchlib.check_batch(cfg.train.batch_size, mesh,
                                          cfg.mesh.rules)
  stage, t = cfg.train.stage, cfg.train
  start = setup.resume_step(workdir, t.steps, resume)
  if start == t.steps:  # finished, if its final step can be read
    start = setup.verify_final_step(cfg, workdir, mesh)
  if start == t.steps:
    log.info("%s already finished %d steps; nothing to do", workdir, t.steps)
    return {"stage": stage, "steps": t.steps,
            "metrics": setup.last_logged(workdir),
            "seconds": time.perf_counter() - t0, "stopped_at": None}
  if jax.process_count() > 1:
    # Every process has checked the workdir before any process writes to it.
    multihost_utils.sync_global_devices("jaxworld: inputs checked")

  frozen_parts = assemble.frozen_models(cfg, mesh)
  frozen = steplib.Frozen(*frozen_parts) if frozen_parts else None
  compiled = steplib.compile_step(cfg, stage, mesh, frozen)
  log.info("compiled %s step in %.1fs (%s)", stage, time.perf_counter() - t0,
           compiled.memory)
  with contextlib.ExitStack() as stack:
    # First in, last out: a signal during restore or the final save still
    # means "save and stop", not a traceback.
    stop = stack.enter_context(preemption.StopRequest())
    workdir.mkdir(parents=True, exist_ok=True)
    ckpts = checkpoint.Checkpoints(workdir, t.keep_checkpoints, t.keep_every)
    stack.callback(ckpts.close)
    stack.callback(ckpts.wait)  # runs first: finish pending saves
    found = None
    if start is not None:  # the newest valid step; damaged ones are skipped
      _, abstract = steplib.abstract_state(cfg, stage)
      found = ckpts.restore_latest(abstract, compiled.state_shardings,
                                   max_step=t.steps)
    if found is not None:
      start, state, position = found
      log.info("resumed %s from step %d (global batch %d) on %d processes",
               workdir, start, position, jax.process_count())
    else:
      start, position = 0, 0
      state = compiled.init()
      if init_step is not None:
        state["model"] = setup.init_from(cfg, init_step,
                                    compiled.state_shardings["model"])
      if jax.process_index() == 0:
        configlib.save(cfg, workdir / "config.json")
    # The saved position is global: any process count continues the same
    # global stream of batches from it.
    data = iter(pipeline.train_dataset(
        cfg.data, None, per_process_batch, jax.process_index(),
        jax.process_count(), start=position))
    if hasattr(data, "close"):  # worker processes
      stack.callback(data.close)
    setup.log_model(state, compiled.state_shardings, mesh, stage, workdir)
    logger = metrics.MetricLogger(workdir, stage, t.steps, start)
    stack.callback(logger.close)
    last, stopped_at = _run_steps(cfg, compiled, state, frozen, data, ckpts,
                                  logger, start, position, stop)
  return {"stage": stage, "steps": t.steps, "metrics": last,
          "seconds": time.perf_counter() - t0, "stopped_at": stopped_at,
          "stopped_by": stop.signal_name if stopped_at else None}


def _run_steps(cfg: Config, compiled: steplib.CompiledStep, state: Any,
               frozen: steplib.Frozen | None, data: Any,
               ckpts: checkpoint.Checkpoints, logger: metrics.MetricLogger,
               start: int, position: int, stop: preemption.StopRequest
               ) -> tuple[dict[str, float], int | None]:
  """Steps `start`..train.steps, reading global batches from `position` on;
  returns the last logged metrics and the step at which a stop request
  (SIGTERM, Ctrl-C) ended training early, if one did.
  """
  t = cfg.train
  frozen_state = frozen.state if frozen is not None else None
  last: dict[str, float] = {}
  # Host<->device copies in the loop must be explicit (batches in, metrics
  # out at log steps): a hidden one would stall every step.
  skip = cfg.data.bad_records == "skip"
  skipped = 0  # damaged records this process passed over (data.bad_records)
  # Non-finite steps are counted on device; read at log and save steps.
  health = steplib.new_health(start, compiled.replicated)
  reported_nonfinite = 0
  # This process's batch records of each step since the last check, to name
  # the records of a non-finite step.
  records_by_step: dict[int, np.ndarray] = {}
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
      done = i + 1
      records_by_step[done] = host_batch.pop("record")
      batch = steplib.device_batch(host_batch, compiled.batch_shardings)
      state, step_metrics = compiled.step(state, frozen_state, batch)
      health = steplib.track_health(health, step_metrics.pop("finite"))
      if i == start:
        jax.block_until_ready(step_metrics)
        logger.start_clock(done)
      stopping = stop.reached(done)
      log_now = done % t.log_every == 0 or done == t.steps or stopping
      save_now = done % t.checkpoint_every == 0 or done == t.steps or stopping
      if log_now or save_now:  # before any save: never checkpoint past a NaN
        nonfinite = _check_health(cfg, health, records_by_step, ckpts,
                                  reported_nonfinite)
        reported_nonfinite = nonfinite
        records_by_step.clear()
      if log_now:
        now = time.perf_counter()
        extra = {"input_wait": waited / max(now - interval_start, 1e-9),
                 "batch_fingerprint": fingerprint.batch_fingerprint(batch)}
        if skip:
          extra["skipped_records"] = skipped
        if t.nan_policy == "skip":
          extra["skipped_updates"] = nonfinite
        last = logger.write(done, {**step_metrics, **extra})
        waited, interval_start = 0.0, now
      if save_now:
        # One global batch per step.
        ckpts.save(done, state, position + done - start, cfg)
        preview.at_checkpoint(cfg, compiled.graphdef, state, frozen, logger,
                              done, stopping)
      if skip and skipped and done == t.steps:
        log.warning("skipped %d damaged records (data.bad_records=skip; "
                    "counted in this process since it started)", skipped)
      if stopping and done < t.steps:
        log.warning("stopped by %s after step %d of %d; checkpoint saved. "
                    "Continue with the same command and --resume.",
                    stop.signal_name, done, t.steps)
        return last, done
  return last, None


def _check_health(cfg: Config, health: dict[str, jax.Array],
                  records_by_step: dict[int, np.ndarray],
                  ckpts: checkpoint.Checkpoints, reported: int) -> int:
  """Applies train.nan_policy to the steps since the last check; returns
  the non-finite steps since the run (re)started (`reported`: at the last
  check).

  The step itself never applied a non-finite update (step.py), so the state
  in memory and every checkpoint are clean; with nan_policy=stop the run
  stops here, before anything later is saved.
  """
  t = cfg.train
  counts = {k: int(v) for k, v in jax.device_get(health).items()}
  nonfinite, first = counts["nonfinite"], counts["first"]
  if nonfinite == reported:
    return nonfinite
  records = records_by_step.get(first)
  where = (_describe_records(cfg, records) if records is not None else
           "records not kept (an earlier interval)")
  if t.nan_policy == "skip":
    log.warning("skipped %d non-finite updates since the start (first at "
                "step %d, %s; train.nan_policy=skip)", nonfinite, first, where)
    return nonfinite
  ckpts.wait()
  last_good = ckpts.latest_step()
  saved = (f"The last good checkpoint is step {last_good} "
           f"({ckpts.directory / str(last_good)}); nothing after step "
           f"{first - 1} was saved." if last_good is not None else
           "No checkpoint was saved before it.")
  raise JaxWorldError(
      f"The {t.stage} loss or gradients became NaN/Inf at step {first} "
      f"(batch of this process: {where}); that update was not applied. "
      f"{saved} Lower train.learning_rate (now {t.learning_rate}) or "
      f"train.grad_clip, or raise train.warmup_steps; check those records "
      f"with `jaxworld data inspect`; or resume with --resume "
      f"train.nan_policy=skip to skip such updates (they are counted).")


def _describe_records(cfg: Config, records_B2: np.ndarray) -> str:
  """'train episodes [3, 17] of runs/data' for a batch's (dataset, episode)
  record ids."""
  paths = [path for path, _ in pipeline.dataset_weights(cfg.data)]
  parts = []
  for component in sorted(set(records_B2[:, 0].tolist())):
    episodes = records_B2[records_B2[:, 0] == component, 1].tolist()
    parts.append(f"train episodes {episodes} of {paths[component]}")
  return "; ".join(parts)
