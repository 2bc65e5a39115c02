"""Stopping on request: SIGTERM or Ctrl-C saves at the next step boundary.

Schedulers (SLURM, Kubernetes, TPU maintenance) announce a preemption with
SIGTERM and kill the job a grace period later. The loop asks `reached(step)`
after every step; once it says yes, the loop saves a checkpoint of that very
step and returns, and the run continues later with `--resume`.

Without jax.distributed a Python signal handler sets a flag. In a
distributed job (any number of processes), every
process must save the *same* step, though the signal may reach only one of
them: JAX's preemption service (started by `jax.distributed.initialize`)
owns SIGTERM, spreads the notice through the coordination service and agrees
on the step (`multihost_utils.reached_preemption_sync_point`). Ctrl-C is
turned into a SIGTERM to this process so that it takes the same path.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

# Exit status of a run that stopped on request after saving (EX_TEMPFAIL:
# "try again later"), so that `a && b` scripts and schedulers do not mistake
# it for a finished run.
EXIT_PREEMPTED = 75


class StopRequest:
  """Context manager that turns SIGTERM / SIGINT into a stop at a step."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, object] = {}
    # JAX's preemption service runs in every jax.distributed job, also one
    # of a single process (e.g. `launch/local.py --processes 1`), and owns
    # SIGTERM there: a handler of ours would not be called (measured: such
    # a process died of SIGTERM without saving).
    self._multi = jax.distributed.is_initialized()

  def __enter__(self) -> StopRequest:
    if threading.current_thread() is not threading.main_thread():
      return self  # Python only delivers signals to the main thread.
    # With several processes SIGTERM stays with JAX's preemption service.
    signals = (signal.SIGINT,) if self._multi else (signal.SIGINT,
                                                     signal.SIGTERM)
    for s in signals:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame) -> None:
    del frame
    self.signal_name = signal.Signals(signum).name
    # A second Ctrl-C is not swallowed: it interrupts at once.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)  # to the preemption service
    print(f"jaxworld: {self.signal_name} received; saving a checkpoint at "
          f"the next step boundary, then stopping (press Ctrl-C again to "
          f"abort without saving).", flush=True)

  def reached(self, step: int) -> bool:
    """True once training should save `step` and stop (on every process at
    the same step). Call it after every step."""
    if self._multi:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None
