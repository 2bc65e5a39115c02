"""Run checkpoints with Orbax: train state, data position and config together.

Layout of a run directory (`--workdir`):

    config.json                  the resolved config the run was started with
    checkpoints/<step>/state     model + optimizer (sharded arrays, async save)
    checkpoints/<step>/data_position
                                 the global data position: global batches
                                 consumed (JSON), valid on any process count
    checkpoints/<step>/config    the config again, so a step is self-contained
    checkpoints_damaged/<step>   steps a resume found unreadable (kept, moved
                                 aside so new saves are not blocked by them)
    metrics.jsonl, tb/           written by train/metrics.py

Steps saved before the global position was recorded hold `data` (Grain's
per-process iterator state) instead; they resume at global batch <step>,
which is what every jaxworld run consumed by then (one batch per step).

The state is stored as a pure nested dict of arrays (`nnx.to_pure_dict`),
independent of Flax's Variable classes, and restored straight into the
shardings of the current mesh, which may differ from the one that saved it.

Saves are atomic: Orbax writes `<step>.orbax-checkpoint-tmp`, puts
`commit_success.txt` in it and renames it to `<step>` when every item is
written; old steps are deleted only after that. An interrupted save leaves
the tmp directory, which Orbax never lists as a step; we keep it until the
same step is saved again (Orbax then replaces it, and we say so). A save that
fails (a full disk, no permission) therefore leaves every earlier step
readable; it stops the run with SaveFailed, which says so.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from jaxworld import config as configlib
from jaxworld.errors import JaxWorldError, root_cause
from jaxworld.runs import save_barrier

log = logging.getLogger(__name__)

UNFINISHED_SUFFIX = ocp.path.atomicity.TMP_DIR_SUFFIX
COMMIT_FILE = ocp.path.atomicity.COMMIT_SUCCESS_FILE
DAMAGED_DIR = "checkpoints_damaged"
POSITION_ITEM = "data_position"
LEGACY_DATA_ITEM = "data"  # Grain iterator state, per process (older steps)
_MAX_LISTED = 20


class DamagedStep(Exception):
  """A step that cannot be read; the message says what is wrong with it."""


class SaveFailed(JaxWorldError):
  """A checkpoint could not be written; earlier steps are intact."""


def _restore_args(abstract_pure: Any, shardings_pure: Any) -> Any:
  return jax.tree.map(lambda a, s: ocp.ArrayRestoreArgs(
      sharding=s, global_shape=a.shape, dtype=a.dtype),
                      abstract_pure, shardings_pure)


def _abstract(abstract_state: nnx.State, shardings: nnx.State) -> Any:
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nnx.to_pure_dict(abstract_state), nnx.to_pure_dict(shardings))


def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"model/blocks/0/kernel": leaf} of a nested dict. Keys become strings,
  as in Orbax's metadata, so saved and expected trees compare by path."""
  if not isinstance(tree, Mapping):
    return {} if tree is None else {prefix.rstrip("/"): tree}
  out = {}
  for k, v in tree.items():
    out.update(leaves(v, f"{prefix}{k}/"))
  return out


def describe(leaf: Any) -> str:
  """`float32[32,64]` for an array or its metadata."""
  dtype = getattr(leaf, "dtype", None)
  shape = ",".join(map(str, getattr(leaf, "shape", ())))
  return f"{np.dtype(dtype).name if dtype is not None else '?'}[{shape}]"


def step_problem(step_dir: Path, data: bool = True) -> str | None:
  """What is visibly wrong with a finalized step directory, from its files
  (`data`: the data position is needed too)."""
  if not (step_dir / COMMIT_FILE).is_file():
    return f"{COMMIT_FILE} is missing, so its save never finished"
  if not (step_dir / "state").is_dir():
    return "its 'state' item is missing"
  if data and not ((step_dir / POSITION_ITEM).is_dir()
                   or (step_dir / LEGACY_DATA_ITEM).is_dir()):
    return f"its {POSITION_ITEM!r} item is missing"
  if not (step_dir / "state" / "_METADATA").is_file():
    return "state/_METADATA is missing"
  return None


def saved_arrays(manager: ocp.CheckpointManager, step: int
                 ) -> dict[str, Any]:
  """{path: ArrayMetadata} of a step's state, read from its metadata only.

  Raises DamagedStep when the metadata cannot be read.
  """
  try:
    metadata = manager.item_metadata(step)["state"]
  except Exception as e:  # pylint: disable=broad-except  # see _restore_step
    raise DamagedStep(
        f"its state metadata cannot be read ({root_cause(e)})") from e
  if metadata is None:
    raise DamagedStep("its state metadata cannot be read")
  return leaves(getattr(metadata, "tree", metadata))


def check_compatible(saved: dict[str, Any], expected: dict[str, Any],
                     where: str, prefix: str = "") -> None:
  """Raises one JaxWorldError listing every leaf whose shape or dtype differs.

  `saved` and `expected` map paths to arrays or their metadata; only saved
  paths under `prefix` are compared (e.g. "model/" for the parameters only).
  """
  saved = {k: v for k, v in saved.items() if k.startswith(prefix)}
  lines = []
  for path in sorted(expected.keys() | saved.keys()):
    mine, theirs = expected.get(path), saved.get(path)
    if theirs is None:
      lines.append(f"{path}: not in the checkpoint (expected "
                   f"{describe(mine)})")
    elif mine is None:
      lines.append(f"{path}: saved {describe(theirs)}, not in this model")
    elif (tuple(theirs.shape) != tuple(mine.shape)
          or np.dtype(theirs.dtype) != np.dtype(mine.dtype)):
      lines.append(f"{path}: saved {describe(theirs)}, expected "
                   f"{describe(mine)}")
  if not lines:
    return
  shown = lines[:_MAX_LISTED]
  if len(lines) > _MAX_LISTED:
    shown.append(f"... and {len(lines) - _MAX_LISTED} more")
  raise JaxWorldError(
      f"{where} was written by a different model config: {len(lines)} of "
      f"{len(expected.keys() | saved.keys())} arrays differ:\n  "
      + "\n  ".join(shown) + "\nUse the config that run was trained with "
      "(its config.json), or start a new --workdir.")


def _item_handlers() -> dict[str, Any]:
  # Named up front so that a fresh manager can read a step's metadata before
  # (or without) restoring it.
  return {"state": ocp.PyTreeCheckpointHandler(),
          POSITION_ITEM: ocp.JsonCheckpointHandler(),
          LEGACY_DATA_ITEM: grain.checkpoint.CheckpointHandler(),
          "config": ocp.JsonCheckpointHandler()}


@contextlib.contextmanager
def _failed_reads_to_debug_log() -> Iterator[None]:
  """After a failed restore Orbax leaves the coroutines of its other reads
  behind; collected later, each prints its whole TensorStore spec to stderr,
  and reads still in flight when a reader closes report its closed event
  loop. The step's problem is already reported: while this lasts, and in a
  collection at its end, they go to the debug log."""
  hook = sys.unraisablehook
  sys.unraisablehook = lambda u: log.debug("after a failed restore: %s",
                                           u.exc_value)
  try:
    yield
  finally:
    try:
      gc.collect()
    finally:
      sys.unraisablehook = hook


def _collect_failed_reads() -> None:
  """Collects a failed restore's leftover reads now (see above)."""
  with _failed_reads_to_debug_log():
    pass


def _everywhere(ok: bool) -> bool:
  """True if `ok` on every process: all processes take the same fallback."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _reader(directory: Path) -> ocp.CheckpointManager:
  """A read-only manager whose restores wait for no other process.

  Orbax ends a restore with a barrier over all processes (by default a
  collective on the devices). A process whose read of a damaged file fails
  skips that barrier and goes on to _everywhere, so the processes would meet
  in two different collectives, and gloo aborts them all. With this
  process's own set as the active processes Orbax skips its barriers; each
  process reads its own shards, and then all of them agree in the one
  collective of _everywhere.
  """
  me = jax.process_index()
  return ocp.CheckpointManager(
      directory, item_handlers=_item_handlers(),
      options=ocp.CheckpointManagerOptions(
          create=False, read_only=True, enable_async_checkpointing=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              primary_host=me, active_processes={me})))


def _position(saved: Any, step: int) -> int:
  """The global batches consumed, from a step's data_position item."""
  if saved is None:  # a step from before positions were saved
    return step
  consumed = saved.get("global_batches") if isinstance(saved, dict) else None
  if not isinstance(consumed, int) or consumed < 0:
    raise DamagedStep(f"its {POSITION_ITEM} item holds no global_batches "
                      f"count ({str(saved)[:100]})")
  return consumed


def _restore_step(manager: ocp.CheckpointManager, step: int, where: str,
                  target: Any, shardings_pure: Any, data: bool = False,
                  model_only: bool = False) -> tuple[Any, int | None]:
  """Checks, then restores one step's state (a pure dict) and, with `data`,
  its global data position (else None). Raises DamagedStep for an
  unreadable step and JaxWorldError for one written by a different
  config."""
  step_dir = Path(manager.directory) / str(step)
  problem = step_problem(step_dir, data)
  if problem:
    raise DamagedStep(problem)
  check_compatible(saved_arrays(manager, step), leaves(target), where,
                   "model/" if model_only else "")
  args = {"state": ocp.args.PyTreeRestore(
      item=target, restore_args=_restore_args(target, shardings_pure),
      partial_restore=model_only)}
  with_position = data and (step_dir / POSITION_ITEM).is_dir()
  if with_position:
    args[POSITION_ITEM] = ocp.args.JsonRestore()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    position = (_position(restored[POSITION_ITEM] if with_position else None,
                          step) if data else None)
    return restored["state"], position
  # Reading a damaged step can raise anything: Orbax re-raises tensorstore's
  # OUT_OF_RANGE for a truncated file as a bare Exception, a truncated JSON
  # file gives a ValueError, a missing item a KeyError.
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedStep(root_cause(e)) from e


def _attempt(restore: Any) -> tuple[Any, str | None]:
  """(restore(), None), or (None, the problem) for a damaged step."""
  try:
    return restore(), None
  except DamagedStep as e:
    problem = str(e)
  _collect_failed_reads()  # out here, no traceback holds them any more
  return None, problem


class Checkpoints:
  """Saves and restores one run's checkpoints."""

  def __init__(self, workdir: str | Path, keep: int = 3, keep_every: int = 0,
               async_save: bool = True):
    """Keeps the last `keep` steps plus every step divisible by `keep_every`
    (0: none) for good. `async_save=False` makes save() block until written
    (for benchmarks)."""
    self.workdir = Path(workdir).absolute()
    self.directory = self.workdir / "checkpoints"
    policies = [ocp.checkpoint_managers.LatestN(keep)]
    if keep_every:
      policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every))
    # On several processes a write that fails on one of them must fail the
    # save on all, not leave the others in Orbax's barriers (save_barrier).
    self._barrier = (save_barrier.SaveBarrier(str(self.directory))
                     if jax.process_count() > 1 else None)
    self.manager = ocp.CheckpointManager(
        self.directory, item_handlers=_item_handlers(),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
                policies),
            # Unfinished saves are evidence; they are replaced only when the
            # same step is saved again (see save()), never swept at start.
            cleanup_tmp_directories=False,
            create=True, enable_async_checkpointing=async_save,
            async_options=ocp.AsyncOptions(
                barrier_sync_fn=self._barrier and self._barrier.sync)))
    self._pending: int | None = None  # the step an async save is writing
    self._failed = False

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: nnx.State, data_position: int,
           cfg: configlib.Config) -> None:
    """Starts an async save; training continues while arrays are written.
    `data_position`: the global batches the run has consumed."""
    self.wait()  # Orbax would too; this way a failure names its step
    unfinished = self.directory / f"{step}{UNFINISHED_SUFFIX}"
    if jax.process_index() == 0 and unfinished.exists():
      log.warning("replacing %s, an earlier save of step %d that never "
                  "finished", unfinished, step)
    self._pending = step
    if self._barrier is not None:
      self._barrier.begin(step)
    self._finish(lambda: self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(nnx.to_pure_dict(state)),
        **{POSITION_ITEM: ocp.args.JsonSave({
            "global_batches": int(data_position),
            "global_batch_size": cfg.train.batch_size,
            "process_count": jax.process_count()})},
        config=ocp.args.JsonSave(configlib.to_dict(cfg)))))

  def _restore(self, reader: ocp.CheckpointManager, step: int,
               abstract_state: nnx.State, shardings: nnx.State
               ) -> tuple[nnx.State, int]:
    restored, position = _restore_step(
        reader, step, f"The checkpoint at step {step} of {self.workdir}",
        _abstract(abstract_state, shardings), nnx.to_pure_dict(shardings),
        data=True)
    state = jax.tree.map(lambda x: x, abstract_state)  # a fresh copy
    nnx.replace_by_pure_dict(state, restored)
    return state, position

  def restore(self, step: int, abstract_state: nnx.State,
              shardings: nnx.State) -> tuple[nnx.State, int]:
    """(state restored into `shardings`, global batches consumed)."""
    with _failed_reads_to_debug_log(), _reader(self.directory) as reader:
      found, problem = _attempt(lambda: self._restore(
          reader, step, abstract_state, shardings))
    if not _everywhere(problem is None):
      problem = problem or "it could not be read on another process"
      raise JaxWorldError(
          f"Cannot restore step {step} of {self.workdir}: {problem}. An "
          f"earlier step may still be readable (`jaxworld ckpt list "
          f"--workdir {self.workdir}`).")
    return found

  def restore_latest(self, abstract_state: nnx.State, shardings: nnx.State,
                     max_step: int | None = None
                     ) -> tuple[int, nnx.State, int] | None:
    """(step, state, global batches consumed) of the newest readable step
    (<= max_step); None if the run has no step. The data position is
    global, so the run may continue on any number of processes.

    A damaged step is skipped with a warning that names it and the problem,
    and once an older step restores it is moved to <workdir>/
    checkpoints_damaged/, so that saving that step again is not blocked by
    it. Raises JaxWorldError if every step is
    damaged (listing each problem; nothing is moved) or if a step was written
    by a different config (listing the mismatched arrays).
    """
    for unfinished in sorted(self.directory.glob(f"*{UNFINISHED_SUFFIX}*")):
      log.warning("ignoring %s: a save that never finished (kept until that "
                  "step is saved again)", unfinished)
    steps = sorted((s for s in self.manager.all_steps()
                    if max_step is None or s <= max_step), reverse=True)
    problems: dict[int, str] = {}
    with _failed_reads_to_debug_log(), _reader(self.directory) as reader:
      for step in steps:
        found, problem = _attempt(lambda step=step: self._restore(
            reader, step, abstract_state, shardings))
        if problem:
          problems[step] = problem
        if not _everywhere(problem is None):
          problems.setdefault(step, "it could not be read on another "
                              "process")
          log.warning("checkpoint step %d of %s is damaged: %s; trying an "
                      "older step", step, self.workdir, problems[step])
          continue
        break
      else:
        found = None
    if found is not None:
      self._move_aside(problems)
      return step, *found
    if not problems:
      return None
    raise JaxWorldError(
        f"No checkpoint of {self.workdir} can be restored:\n  "
        + "\n  ".join(f"step {s}: {p}" for s, p in problems.items())
        + "\nStart a new --workdir; nothing here was changed.")

  def _move_aside(self, problems: dict[int, str]) -> None:
    """Moves damaged steps to <workdir>/checkpoints_damaged/ (never deletes)."""
    if not problems:
      return
    if jax.process_index() == 0:
      for step in problems:
        dest = self.workdir / DAMAGED_DIR / str(step)
        if dest.exists():
          dest = dest.with_name(f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        dest.parent.mkdir(exist_ok=True)
        (self.directory / str(step)).rename(dest)
        log.warning("moved damaged checkpoint step %d to %s; delete it when "
                    "you no longer need it", step, dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("jaxworld: damaged steps moved")
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until the save in flight is written; raises SaveFailed if it
    failed."""
    if self._pending is not None and not self._failed:
      self._finish(self.manager.wait_until_finished, written=True)

  def _finish(self, call: Any, written: bool = False) -> None:
    """Runs a save or a wait; any error becomes one SaveFailed naming the
    step, the cause and what is still intact."""
    try:
      call()
    except Exception as e:  # pylint: disable=broad-except  # e.g. ENOSPC
      self._failed = True
      step, self._pending = self._pending, None
      if self._barrier is not None:  # peers waiting for this save stop too
        self._barrier.fail(step, e)
      raise self._save_failed(step, e) from e
    if written:
      self._pending = None

  def _save_failed(self, step: int | None, error: BaseException
                   ) -> SaveFailed:
    cause = error
    while cause.__cause__ is not None:
      cause = cause.__cause__
    # A peer's failure already names its root cause, shortened.
    problem = (str(cause) if isinstance(cause, save_barrier.PeerSaveFailed)
               else root_cause(error, keep_end=True))
    saved = sorted(self.manager.all_steps(read=True))
    intact = (f"Steps {saved} are intact and step {saved[-1]} is where "
              f"--resume continues" if saved else "No earlier step was saved")
    return SaveFailed(
        f"Saving checkpoint step {step} to {self.directory} failed "
        f"({problem}). {intact}; what was written of step {step} (if "
        f"anything, in {step}{UNFINISHED_SUFFIX}) is ignored and replaced "
        f"when that step is saved again. Free disk space or fix the "
        f"directory's permissions, then rerun the same command with "
        f"--resume.")

  def close(self) -> None:
    try:
      self.manager.close()
    except Exception:  # pylint: disable=broad-except
      if not self._failed:
        raise
      log.debug("closing after a failed save", exc_info=True)


def read_only_manager(workdir: str | Path) -> ocp.CheckpointManager:
  """Reads a run's checkpoints; its restores are process-local (_reader)."""
  return _reader(Path(workdir).absolute() / "checkpoints")


def saved_steps(workdir: str | Path) -> list[int]:
  """Steps with a complete checkpoint in a run directory (oldest first)."""
  if not (Path(workdir) / "checkpoints").is_dir():
    return []
  with read_only_manager(workdir) as manager:
    return sorted(manager.all_steps())


def restore_model(workdir: str | Path, abstract_model: nnx.State,
                  shardings: nnx.State, step: int) -> nnx.State:
  """Only the model parameters of a run's checkpoint (no optimizer state)."""
  steps = saved_steps(workdir)
  if step not in steps:
    raise JaxWorldError(
        f"{workdir} has no checkpoint at step {step} (it has "
        f"{steps or 'none'}). Train that run first, or pick a kept step.")
  target = {"model": _abstract(abstract_model, shardings)}
  with _failed_reads_to_debug_log(), read_only_manager(workdir) as manager:
    restored, problem = _attempt(lambda: _restore_step(
        manager, step, f"The checkpoint at step {step} of {workdir}", target,
        {"model": nnx.to_pure_dict(shardings)}, model_only=True))
  if not _everywhere(problem is None):  # so every process raises
    problem = problem or "it could not be read on another process"
    raise JaxWorldError(
        f"Cannot restore step {step} of {workdir}: {problem}. The checkpoint "
        f"is damaged; pick another step (`jaxworld ckpt list --workdir "
        f"{workdir}`).")
  state = jax.tree.map(lambda x: x, abstract_model)
  nnx.replace_by_pure_dict(state, restored[0]["model"])
  return state


def read_config(workdir: str | Path) -> configlib.Config:
  """The resolved config a run was started with."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise JaxWorldError(f"{workdir} is not a jaxworld run directory (no "
                        f"config.json). Pass the --workdir of a train run.")
  return configlib.load(path)
