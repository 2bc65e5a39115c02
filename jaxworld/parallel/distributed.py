"""Multi-host start-up: joining a multi-process JAX job, and what to tell
the user when a peer process is gone."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

# A dead process is noticed by the others after this many seconds without
# its heartbeat; they then stop with an error naming it (JAX's default, 100 s,
# is longer than a user should wait).
HEARTBEAT_TIMEOUT_S = int(os.environ.get("JAXWORLD_HEARTBEAT_TIMEOUT_S", "20"))


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


def lost_peer_message(error: BaseException) -> str | None:
  """What to tell the user when a runtime error in a multi-process job
  means another process is gone; None for any other error."""
  if not (jax.distributed.is_initialized() and jax.process_count() > 1 and
          isinstance(error, jax.errors.JaxRuntimeError)):
    return None
  first_line = str(error).strip().splitlines()[0]
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
