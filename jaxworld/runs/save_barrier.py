"""Orbax's save barriers on several processes, made to fail together.

An async Orbax save ends in two background threads per process: one waits
for this process's writes, then meets the other processes in barriers
(`async_write_complete.<step>`, then `async_commit_complete.<step>` after
the primary process has committed the step); the other then syncs a
progress flag (`set_value_start`/`_end`). A process whose write fails (a
full disk) skips the write and commit barriers and waits in the flag's,
while its peers wait in the write barrier: each waits for
`AsyncOptions.timeout_secs` (20 min) in a barrier the other never
reaches, and the run hangs (found by bench/fault_drill.py on 4 processes,
where only some processes' files outgrew the disk).

`SaveBarrier.sync` is the manager's `barrier_sync_fn`. A process whose
save failed posts a notice for that step in the distributed key-value
store; every background barrier waits for every process to arrive *or* for
a notice, and on a notice raises `PeerSaveFailed`: the primary never
commits the step, and each process's next `wait_until_finished` raises.
Once a process knows the save failed it skips the progress-flag barriers
(every process does, so none waits there). A successful save passes the same barriers as
before; the ones in the saving thread are Orbax's own.
"""

from __future__ import annotations

import sys
import threading
import time
import zlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxworld.errors import root_cause

# Orbax's progress-flag barriers (MultihostSynchronizedValue.set); their
# keys hold no step.
_FLAG_BARRIER = "ThreadSaveMultiHostValueHolder:set_value"
_POLL_S = 0.05


class PeerSaveFailed(Exception):
  """A save failed on some process, so it fails on every process."""


def _client() -> Any:
  # The coordination service's key-value store, which Orbax's own barriers
  # use too; JAX has no public handle to it.
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


class SaveBarrier:
  """The `barrier_sync_fn` of one run's CheckpointManager (see the module
  docstring). Call `begin(step)` before each save and `fail(step, error)`
  when a save raises in the calling thread."""

  def __init__(self, directory: str):
    self._base = f"jaxworld/save/{zlib.crc32(directory.encode()):08x}"
    self._orbax = ocp.multihost.get_barrier_sync_fn()
    self._step: int | None = None
    self._saver: threading.Thread | None = None
    self._failed: str | None = None  # why the save failed, once known

  def begin(self, step: int) -> None:
    """Called by the saving thread before the save of `step` starts (the
    previous save's threads have finished)."""
    self._step, self._failed = step, None
    self._saver = threading.current_thread()

  def fail(self, step: int, error: BaseException) -> None:
    """Tells every process that this process's save of `step` failed."""
    if self._failed is None and step == self._step:
      self._post(root_cause(error, keep_end=True))

  def sync(self, *, key: str, timeout_ms: int) -> None:
    if self._step is None or threading.current_thread() is self._saver:
      self._orbax(key=key, timeout_ms=timeout_ms)  # the save's own set-up
      return
    # Orbax syncs the flag in a `finally:` after the save's threads failed
    # here: the exception in flight is the failure. Only a process's own
    # failure is posted; one learnt from a peer was posted there.
    error = sys.exc_info()[1]
    if error is not None and self._failed is None:
      if isinstance(error, PeerSaveFailed):
        self._failed = str(error)
      else:
        self._post(root_cause(error, keep_end=True))
    if self._failed is not None:
      if _FLAG_BARRIER in key:
        return  # every process skips them once it knows
      raise PeerSaveFailed(self._failed)  # never commit a failed save
    self._agree(key, timeout_ms)

  def _post(self, why: str) -> None:
    self._failed = why
    _client().key_value_set(
        f"{self._base}/{self._step}/failed/{jax.process_index()}", why,
        allow_overwrite=True)

  def _agree(self, key: str, timeout_ms: int) -> None:
    """Waits until every process arrived at `key`, or raises once any
    process has posted that this save failed."""
    client, step, me = _client(), self._step, jax.process_index()
    client.key_value_set(f"{self._base}/{step}/arrived/{key}/{me}", "1")
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
      notices = dict(sorted(
          (int(k.rsplit("/", 1)[-1]), v) for k, v in
          client.key_value_dir_get(f"{self._base}/{step}/failed/")))
      if me in notices:  # posted by another thread of this process
        self._failed = notices[me]
        raise PeerSaveFailed(self._failed)
      if notices:
        peer, why = next(iter(notices.items()))
        self._failed = (
            f"process {peer} of {jax.process_count()} failed to save its "
            f"part of step {step}: {why} (this process saved its own "
            f"part)")
        raise PeerSaveFailed(self._failed)
      arrived = client.key_value_dir_get(f"{self._base}/{step}/arrived/{key}/")
      if len(arrived) == jax.process_count():
        return
      if time.monotonic() > deadline:
        raise TimeoutError(
            f"{len(arrived)} of {jax.process_count()} processes reached "
            f"Orbax's barrier {key!r} of step {step} within "
            f"{timeout_ms / 1000:.0f} s")
      time.sleep(_POLL_S)
