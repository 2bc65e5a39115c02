"""Shared set-up for the benchmarks: config, compiled step, random batch
(from `jaxworld.perf.harness`, which `jaxworld bench` uses too)."""

from __future__ import annotations

import os
from typing import Any


def simulate_cpu_devices(n: int) -> None:
  """Ask for `n` simulated CPU devices, with the thread pool their
  collectives need (jaxworld/parallel/cpu_devices.py, as every `jaxworld`
  command does); call before jax is first imported."""
  if "jax" in __import__("sys").modules:
    raise RuntimeError("simulate_cpu_devices must run before importing jax")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_force_host_platform_device_count={n}").strip()
  from jaxworld.parallel import cpu_devices  # no jax import
  cpu_devices.size_thread_pool()


def load(name: str, overrides: list[str]) -> Any:
  from jaxworld.perf import harness
  return harness.load(name, overrides)


def compile_step(cfg: Any, mesh: Any) -> tuple[Any, Any]:
  from jaxworld.perf import harness
  return harness.compile_step(cfg, mesh)


def frozen_models(cfg: Any, mesh: Any) -> Any:
  from jaxworld.perf import harness
  return harness.frozen_models(cfg, mesh)


def random_batch(cfg: Any, shardings: Any) -> dict[str, Any]:
  from jaxworld.perf import harness
  return harness.random_batch(cfg, shardings)


def time_steps(compiled: Any, frozen: Any, batch: Any, steps: int) -> float:
  """Median seconds per step after one warm-up step."""
  from jaxworld.perf import harness
  return harness.time_steps(compiled, frozen, batch, steps)
