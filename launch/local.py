"""Run a jaxworld command as N cooperating JAX processes on this machine.

    python launch/local.py --processes 2 --devices-per-process 4 -- \
        jaxworld train tokenizer data.path=runs/demo/data --workdir runs/mp

Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID (read by `jaxworld.parallel.mesh.maybe_initialize_distributed`)
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


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--processes", type=int, default=2)
  p.add_argument("--devices-per-process", type=int, default=1,
                 help="Simulated CPU devices per process.")
  p.add_argument("command", nargs=argparse.REMAINDER)
  args = p.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    p.error("give the command to run after --")
  address = f"127.0.0.1:{_free_port()}"
  procs = []
  for i in range(args.processes):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=address,
               JAX_NUM_PROCESSES=str(args.processes), JAX_PROCESS_ID=str(i),
               JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count="
                          f"{args.devices_per_process}").strip())
    procs.append(subprocess.Popen(command, env=env))
  # If one process fails the others would wait in collectives forever:
  # stop them all on the first failure.
  while True:
    codes = [proc.poll() for proc in procs]
    failed = [c for c in codes if c not in (None, 0)]
    if failed or all(c == 0 for c in codes):
      break
    time.sleep(0.2)
  for proc in procs:
    if proc.poll() is None:
      proc.terminate()
  return failed[0] if failed else 0


if __name__ == "__main__":
  sys.exit(main())
