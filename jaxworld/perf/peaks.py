"""What a device can do: dense bf16 peak FLOP/s and memory per device, from
vendors' data sheets, and on a CPU a matmul ceiling measured in-process.

MFU divides a step's model FLOP/s by the peak of the device it ran on. A CPU
has no data-sheet number that XLA reaches, so there the ceiling is what one
large float32 matmul achieves in the same process, under the same load.
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


def matmul_ceiling(dtype: Any = jnp.float32, size: int = 1024,
                   seconds: float = 1.0) -> dict[str, float]:
  """FLOP/s of a [size, size] @ [size, size] matmul on the default device,
  timed repeatedly for about `seconds`: {"median", "best"} (the ceiling a
  step's MFU is measured against on a CPU; take it in the same process and
  under the same load as the step, and compare medians with medians)."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  times, start = [], time.perf_counter()
  while time.perf_counter() - start < seconds or len(times) < 5:
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(a))
    times.append(time.perf_counter() - t0)
  flops = 2 * size**3
  return {"median": flops / statistics.median(times),
          "best": flops / min(times)}
