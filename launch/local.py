"""Run a jaxworld command as N cooperating JAX processes on this machine.

    python launch/local.py --processes 2 --devices-per-process 4 -- \
        jaxworld train tokenizer data.path=runs/demo/data --workdir runs/mp

Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID (read by `jaxworld.parallel.distributed.maybe_initialize_distributed`)
and, on CPU, its own simulated devices and gloo collectives. This is the same
code path a TPU pod or a SLURM GPU job takes, minus the cluster: use it to
try multi-host behaviour (process-sharded data, per-process checkpoint
pieces) on a laptop. On a cluster, launch the plain command once per host.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time



# Seconds a stopped process gets to exit before it is killed: more than the
# heartbeat timeout (jaxworld/parallel/distributed.py), after which the JAX
# runtime stops a process whose peer is gone.
_GRACE_S = 30
# XLA flags of the caller that each process sets for itself (cpu_env).
_REPLACED_FLAGS = ("--xla_force_host_platform_device_count=",
                   "--xla_cpu_enable_concurrency_optimized_scheduler=")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def cpu_env(devices: int) -> dict[str, str]:
  """The environment of one CPU process with `devices` devices on this
  machine.

  The caller's XLA_FLAGS are kept (e.g. the test suite's -O0) but for its
  device count, replaced by `devices`, and its CPU scheduler: XLA's default
  is kept, as the sequential one, which tests use for many devices in one
  process, makes gloo runs abort at some model widths (see
  jaxworld/parallel/distributed.py).
  """
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith(_REPLACED_FLAGS)]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))


def process_env(index: int, count: int, address: str,
                devices_per_process: int) -> dict[str, str]:
  """The environment of process `index` of a `count`-process job on this
  machine: `cpu_env` plus the coordinator that jax.distributed joins."""
  return dict(cpu_env(devices_per_process), JAX_COORDINATOR_ADDRESS=address,
              JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(index))


def free_address() -> str:
  return f"127.0.0.1:{_free_port()}"


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--processes", type=int, default=2)
  p.add_argument("--devices-per-process", type=int, default=1,
                 help="Simulated CPU devices per process.")
  p.add_argument("--timeout", type=float, default=0,
                 help="Stop every process after this many seconds and exit "
                      "with status 124 (0: no limit). Scripts and tests set "
                      "it, so that a hang becomes an error.")
  p.add_argument("command", nargs=argparse.REMAINDER)
  args = p.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    p.error("give the command to run after --")
  address = free_address()
  procs = [subprocess.Popen(command, env=process_env(
      i, args.processes, address, args.devices_per_process))
           for i in range(args.processes)]
  # The distributed runtime stops the survivors of a dead process within its
  # heartbeat timeout; the launcher also names the first failure and stops
  # the rest, so a laptop run never hangs.
  deadline = time.monotonic() + args.timeout if args.timeout else None
  failed, timed_out = [], False
  try:
    while True:
      codes = [proc.poll() for proc in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed or all(c == 0 for c in codes):
        break
      if deadline is not None and time.monotonic() > deadline:
        timed_out = True
        break
      time.sleep(0.2)
  finally:  # also on Ctrl-C: leave no process behind
    if timed_out:
      print(f"launch/local.py: the processes did not finish within "
            f"{args.timeout:g} s (--timeout); killing them. A stuck process "
            f"shows in its log where it waits.", file=sys.stderr)
    elif failed:
      i, code = failed[0]
      why = (f"was killed by signal {-code}" if code < 0
             else f"exited with status {code}")
      print(f"launch/local.py: process {i} {why}; stopping the others.",
            file=sys.stderr)
    for proc in procs:
      if proc.poll() is None:
        proc.kill() if timed_out else proc.terminate()
    for proc in procs:
      try:  # a JAX process may sit out SIGTERM (its preemption service
        proc.wait(timeout=_GRACE_S)  # takes it); it is killed after a grace
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
  if timed_out:
    return 124
  return (failed[0][1] if failed[0][1] > 0 else 1) if failed else 0

if __name__ == "__main__":
  sys.exit(main())
