"""Simulated CPU devices (`--xla_force_host_platform_device_count`, e.g. to
try a sharded config on a laptop): XLA:CPU's thread pool sized so that their
collectives cannot take every thread.

XLA:CPU runs a device's independent collectives at once (a layer loop's
all-gathers and an all-reduce outside it), each holding a pool thread until
every device joins it, and devices may start them in different orders. The
pool is sized by PJRT_NPROC, by default the core count; with a few devices per
core every thread can end up waiting for a collective whose other devices
have no thread left, and XLA aborts the process after 40 s (rendezvous.cc
"Termination timeout"); seen on 2 cores with a 1 x 8 data x fsdp run, and
gone with 32 threads (docs/scaling.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

THREADS_PER_DEVICE = 4
_DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def simulated_device_count(env: MutableMapping[str, str]) -> int:
  """The CPU devices XLA_FLAGS or JAX_NUM_CPU_DEVICES ask for (the last
  flag wins, as in XLA); 1 if neither does."""
  counts = _DEVICE_COUNT.findall(env.get("XLA_FLAGS", ""))
  if counts:
    return int(counts[-1])
  return int(env.get("JAX_NUM_CPU_DEVICES") or 1)


def size_thread_pool(env: MutableMapping[str, str] = os.environ,
                     cores: int | None = None) -> None:
  """Sets PJRT_NPROC to THREADS_PER_DEVICE per simulated device when the
  cores give fewer threads than that and it is unset (the deadlocked run
  had all 8 of its threads waiting, so a thread per device is not enough).
  Read when JAX creates its CPU backend: call before anything runs on a
  device."""
  if cores is None:
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)  # macOS has no affinity mask
  devices = simulated_device_count(env)
  threads = THREADS_PER_DEVICE * devices
  if devices > 1 and threads > cores and "PJRT_NPROC" not in env:
    env["PJRT_NPROC"] = str(threads)
