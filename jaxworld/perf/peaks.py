"""What a device can do: dense bf16 peak FLOP/s and memory per device, from
vendors' data sheets, and on a CPU a matmul ceiling measured in-process.

MFU divides a step's model FLOP/s by the peak of the device it ran on. A CPU
has no data-sheet number that XLA reaches, so there the ceiling is what one
large float32 matmul achieves in the same process, under the same load; on
a CPU shared with other jobs, FLOPs per CPU-second of this process (step
against matmul) is the steadier ratio, since waiting for a core costs wall
time but no CPU time.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxworld.errors import JaxWorldError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class DevicePeak:
  name: str           # as `jaxworld plan --topology` and the docs spell it
  bf16_flops: float   # dense (no sparsity) peak, FLOP/s per device
  memory_bytes: int   # HBM per device (what JAX sees as one device)
  kinds: tuple[str, ...]  # jax Device.device_kind strings that are this chip


# Per device as JAX sees it (a TPU v5p chip is one device). GPU figures are
# the SXM parts; a PCIe H100 peaks lower (756 TFLOP/s).
PEAKS = (
    DevicePeak("H100", 989e12, 80 * 10**9, ("NVIDIA H100",)),
    DevicePeak("H200", 989e12, 141 * 10**9, ("NVIDIA H200",)),
    DevicePeak("B200", 2250e12, 180 * 10**9, ("NVIDIA B200",)),
    DevicePeak("v5e", 197e12, 16 * GiB, ("TPU v5 lite", "TPU v5e")),
    DevicePeak("v5p", 459e12, 95 * GiB, ("TPU v5p", "TPU v5")),
    DevicePeak("v6e", 918e12, 32 * GiB, ("TPU v6 lite", "TPU v6e")),
)


def by_name(name: str) -> DevicePeak:
  for p in PEAKS:
    if p.name == name.lower() or p.name == name.upper():
      return p
  raise JaxWorldError(f"Unknown device {name!r}; known: "
                      f"{', '.join(p.name for p in PEAKS)}.")


def for_device(device: Any) -> DevicePeak | None:
  """The table row of a jax Device (None: not in the table, e.g. a CPU).
  Longest kind first: "TPU v5 lite" is a v5e, not a v5p."""
  kind = device.device_kind
  rows = sorted(((k, p) for p in PEAKS for k in p.kinds),
                key=lambda kp: -len(kp[0]))
  for k, p in rows:
    if kind.startswith(k):
      return p
  return None


class MatmulCeiling:
  """A [size, size] @ [size, size] matmul on the default device, timed one
  call at a time: the ceiling a step's MFU is measured against on a CPU.
  Time it in the same process and under the same load as the step, best
  between the steps (`jaxworld bench` does), since a shared CPU's speed
  moves with the load on it."""

  def __init__(self, dtype: Any = jnp.float32, size: int = 1024):
    self.flops = 2 * size**3
    self._a = jnp.ones((size, size), dtype)
    self._matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(self._matmul(self._a))
    self.seconds: list[float] = []      # wall time per matmul
    self.cpu_seconds: list[float] = []  # CPU time of this process per matmul

  def __call__(self, for_seconds: float = 0.0) -> float:
    """Runs the matmul for about `for_seconds` (at least once) and records
    the mean seconds per matmul; returns its FLOP/s. Timing it for as long
    as the step it follows averages both over the same scale of load."""
    calls, t0, c0 = 0, time.perf_counter(), time.process_time()
    while calls == 0 or time.perf_counter() - t0 < for_seconds:
      jax.block_until_ready(self._matmul(self._a))
      calls += 1
    self.seconds.append((time.perf_counter() - t0) / calls)
    self.cpu_seconds.append((time.process_time() - c0) / calls)
    return self.flops / self.seconds[-1]

  def median(self) -> float:
    return self.flops / statistics.median(self.seconds)

  def best(self) -> float:
    return self.flops / min(self.seconds)


def matmul_ceiling(dtype: Any = jnp.float32, size: int = 1024,
                   seconds: float = 1.0) -> dict[str, float]:
  """{"median", "best"} FLOP/s of `MatmulCeiling` timed for `seconds`."""
  ceiling = MatmulCeiling(dtype, size)
  start = time.perf_counter()
  while time.perf_counter() - start < seconds or len(ceiling.seconds) < 5:
    ceiling()
  return {"median": ceiling.median(), "best": ceiling.best()}
