"""Multi-host start-up: joining a multi-process JAX job, and what to tell
the user when a peer process is gone."""

from __future__ import annotations

import logging
import os
import re

import jax

from jaxworld.errors import JaxWorldError

log = logging.getLogger(__name__)

# XLA:CPU's sequential HLO scheduler, with gloo, can make the devices of one
# job run the collectives of one step in different orders: a layer loop
# (nnx.scan) that all-gathers inside its body runs concurrently with an
# independent all-gather outside it, each device interleaves them its own
# way, and since every gloo collective uses the same tag, a device receives
# another collective's bytes and gloo aborts the process in C++
# ("op.preamble.length <= op.nbytes ... collective mismatch"). Traced per
# device (collective op ids) for tokenizer width 32 / 4 heads on 2 x 4 CPU
# devices; XLA's default (concurrency-optimised) scheduler orders them
# alike on every device. So multi-process CPU runs must not select the
# sequential scheduler (in-process collectives, one process, may).
SEQUENTIAL_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

# A dead process is noticed by the others after this many seconds without
# its heartbeat; they then stop with an error naming it (JAX's default, 100 s,
# is longer than a user should wait).
HEARTBEAT_TIMEOUT_S = int(os.environ.get("JAXWORLD_HEARTBEAT_TIMEOUT_S", "20"))

# A peer that is alive (its heartbeats go on) but never joins a collective
# (a deadlock, a hung loader, another program) is not caught by the
# heartbeat: the others would wait in gloo for XLA:CPU's collective timeout.
# This bounds the wait; gloo then raises "Timed out waiting ..." and
# lost_peer_message explains it. Long enough for a slow step or a save.
COLLECTIVE_TIMEOUT_S = int(os.environ.get("JAXWORLD_COLLECTIVE_TIMEOUT_S",
                                          "300"))
COLLECTIVE_TIMEOUT_FLAG = "--xla_cpu_collective_timeout_seconds"
_COLLECTIVE_TIMED_OUT = re.compile(r"Gloo [\w -]+ failed: .*Timed out waiting")


def maybe_initialize_distributed() -> None:
  """Joins a multi-process job when launched as one; no-op otherwise.

  An explicit coordinator is given with JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (what `launch/local.py` sets; also
  usable on any cluster). Otherwise JAX detects SLURM, Open MPI, Cloud TPU
  pods / multislice and GKE TPU JobSets by their environment.
  """
  if jax.distributed.is_initialized():
    return
  timeouts = dict(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                  shutdown_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      # CPU processes exchange data through gloo (TCP), e.g. on a laptop.
      check_gloo_flags(os.environ.get("XLA_FLAGS", ""))
      _bound_collective_waits()
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]), **timeouts)
  elif _launched_by_cluster():
    jax.distributed.initialize(**timeouts)
  else:
    return
  log.info("joined distributed job: process %d of %d",
           jax.process_index(), jax.process_count())


def check_gloo_flags(xla_flags: str) -> None:
  """Refuses XLA flags known to abort multi-process CPU (gloo) runs."""
  if SEQUENTIAL_SCHEDULER_FLAG in xla_flags.split():
    raise JaxWorldError(
        f"XLA_FLAGS holds {SEQUENTIAL_SCHEDULER_FLAG}, which on several CPU "
        f"processes (gloo collectives) can order one step's collectives "
        f"differently on different devices and abort every process in C++ "
        f"(gloo 'collective mismatch'; seen at tokenizer width 32 with 4 "
        f"heads). Remove it from XLA_FLAGS for multi-process runs "
        f"(launch/local.py sets the flags it needs); it is only needed for "
        f"many simulated devices in one process.")


def _bound_collective_waits() -> None:
  """Sets XLA:CPU's collective timeout unless XLA_FLAGS sets it; read when
  the CPU backend is created, which is after this."""
  flags = os.environ.get("XLA_FLAGS", "")
  if COLLECTIVE_TIMEOUT_FLAG not in flags:
    os.environ["XLA_FLAGS"] = (
        f"{flags} {COLLECTIVE_TIMEOUT_FLAG}={COLLECTIVE_TIMEOUT_S}").strip()


def lost_peer_message(error: BaseException) -> str | None:
  """What to tell the user when a runtime error in a multi-process job
  means another process is gone or stuck; None for any other error."""
  if not (jax.distributed.is_initialized() and jax.process_count() > 1):
    return None
  first_line = str(error).strip().splitlines()[0] if str(error) else ""
  if _COLLECTIVE_TIMED_OUT.search(str(error)):
    return (f"process {jax.process_index()} of {jax.process_count()}: a "
            f"collective waited {COLLECTIVE_TIMEOUT_S} s for another process "
            f"that is alive but never joined it ({first_line[:300]}). That "
            f"process is stuck (a deadlock, a hung data loader) or runs a "
            f"different program; its log shows where it is. If a step "
            f"legitimately takes longer, raise JAXWORLD_COLLECTIVE_TIMEOUT_S. "
            f"Then rerun the same command with --resume.")
  if not isinstance(error, jax.errors.JaxRuntimeError):
    return None
  return (f"process {jax.process_index()} of {jax.process_count()}: a "
          f"collective with the other processes failed ({first_line}). "
          f"Another process has most likely died; see its log. The "
          f"distributed runtime names it within {HEARTBEAT_TIMEOUT_S} s "
          f"('Task N heartbeat timeout' means process N) and stops this one. "
          f"Fix the cause, then rerun the same command with --resume.")


def _launched_by_cluster() -> bool:
  """One of the multi-process launchers `jax.distributed` knows about."""
  env = os.environ
  return (int(env.get("SLURM_NTASKS", "1")) > 1 or
          int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 or
          "," in env.get("TPU_WORKER_HOSTNAMES", "") or
          "MEGASCALE_COORDINATOR_ADDRESS" in env)
