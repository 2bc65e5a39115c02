"""Run checkpoints with Orbax: train state, data iterator and config together.

Layout of a run directory (`--workdir`):

    config.json                  the resolved config the run was started with
    checkpoints/<step>/state     model + optimizer (sharded arrays, async save)
    checkpoints/<step>/data      Grain iterator state (one file per process)
    checkpoints/<step>/config    the config again, so a step is self-contained
    metrics.jsonl, tb/           written by train/metrics.py

The state is stored as a pure nested dict of arrays (`nnx.to_pure_dict`),
independent of Flax's Variable classes, and restored straight into the
shardings of the current mesh, which may differ from the one that saved it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from jaxworld import config as configlib
from jaxworld.errors import JaxWorldError

log = logging.getLogger(__name__)


def _restore_args(abstract_pure: Any, shardings_pure: Any) -> Any:
  return jax.tree.map(lambda a, s: ocp.ArrayRestoreArgs(
      sharding=s, global_shape=a.shape, dtype=a.dtype),
                      abstract_pure, shardings_pure)


def _abstract(abstract_state: nnx.State, shardings: nnx.State) -> Any:
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nnx.to_pure_dict(abstract_state), nnx.to_pure_dict(shardings))


class Checkpoints:
  """Saves and restores one run's checkpoints."""

  def __init__(self, workdir: str | Path, keep: int = 3):
    self.directory = Path(workdir).absolute() / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: nnx.State, data_iterator: Any,
           cfg: configlib.Config) -> None:
    """Starts an async save; training continues while arrays are written."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(nnx.to_pure_dict(state)),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(configlib.to_dict(cfg))))

  def restore(self, step: int, abstract_state: nnx.State,
              shardings: nnx.State, data_iterator: Any) -> nnx.State:
    """Restores state (into `shardings`) and the data iterator, in place."""
    target = _abstract(abstract_state, shardings)
    with _named_errors(self.directory.parent, step):
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item=target,
              restore_args=_restore_args(target, nnx.to_pure_dict(shardings))),
          data=grain.checkpoint.CheckpointRestore(data_iterator)))
    state = jax.tree.map(lambda x: x, abstract_state)  # a fresh copy
    nnx.replace_by_pure_dict(state, restored["state"])
    return state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _read_only_manager(workdir: str | Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      Path(workdir).absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(create=False, read_only=True))


def saved_steps(workdir: str | Path) -> list[int]:
  """Steps with a complete checkpoint in a run directory (oldest first)."""
  if not (Path(workdir) / "checkpoints").is_dir():
    return []
  with _read_only_manager(workdir) as manager:
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
  with _read_only_manager(workdir) as manager, _named_errors(workdir, step):
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=target,
            restore_args={"model": _restore_args(
                target["model"], nnx.to_pure_dict(shardings))},
            partial_restore=True)))
  state = jax.tree.map(lambda x: x, abstract_model)
  nnx.replace_by_pure_dict(state, restored["state"]["model"])
  return state


@contextlib.contextmanager
def _named_errors(workdir: str | Path, step: int):
  """A damaged or mismatched checkpoint becomes one clear error."""
  try:
    yield
  except (ValueError, KeyError, FileNotFoundError, OSError) as e:
    raise JaxWorldError(
        f"Cannot restore step {step} of {workdir}: {type(e).__name__}: "
        f"{str(e)[:300]}. The checkpoint is damaged or was written by a "
        f"different model config; delete that step directory to fall back "
        f"to an earlier one, or start a new --workdir.") from e


def read_config(workdir: str | Path) -> configlib.Config:
  """The resolved config a run was started with."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise JaxWorldError(f"{workdir} is not a jaxworld run directory (no "
                        f"config.json). Pass the --workdir of a train run.")
  return configlib.load(path)
