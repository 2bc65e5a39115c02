"""`jaxworld plan`: will a config's train step fit on a target you do not
own? Compiles the step ahead of time from shapes alone (nothing is
allocated) for a TPU topology (`jax.experimental.topologies`, needs the
`tpu` extra: `pip install "jax[tpu]"` at the pinned jax version) or for N
simulated CPU devices (GPU clusters, and the fallback), then reports memory
per device against the device's capacity, the step's FLOPs, whether it
fits, and what to change when it does not.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from typing import Any

from jaxworld.config import Config
from jaxworld.errors import JaxWorldError
from jaxworld.models import build
from jaxworld.perf import peaks

log = logging.getLogger(__name__)

# Share of a device's memory a plan may use: the runtime, XLA's scratch and
# fragmentation take the rest.
USABLE_FRACTION = 0.9

# Chips of a slice name ("v5p-256": TensorCores, 2 per v5p chip; v5e/v6e:
# chips) -> the physical topology libtpu describes.
SLICE_TOPOLOGIES = {
    "v5p": {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4",
            256: "4x4x8", 512: "4x8x8", 1024: "8x8x8", 2048: "8x8x16",
            4096: "8x16x16"},
    "v5e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
            128: "8x16", 256: "16x16"},
    "v6e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
            128: "8x16", 256: "16x16"},
}


def topology_name(topology: str) -> tuple[str, str]:
  """("v5p", "v5p:4x4x8") from "v5p-256" or "v5p:4x4x8"."""
  m = re.fullmatch(r"(v5p|v5e|v6e)([-:])(\S+)", topology)
  if m is None:
    raise JaxWorldError(
        f"--topology {topology!r} is not a TPU slice: use e.g. v5p-256, "
        f"v5e-16, v6e-64, or a chip grid such as v5p:4x4x8.")
  chip, sep, rest = m.groups()
  if sep == ":":
    return chip, topology
  shapes = SLICE_TOPOLOGIES[chip]
  size = int(rest) if rest.isdigit() else -1
  if size not in shapes:
    raise JaxWorldError(
        f"--topology {topology}: no known {chip} slice of that size; "
        f"sizes: {', '.join(str(s) for s in shapes)} (or give the chip grid, "
        f"e.g. {chip}:{next(iter(shapes.values()))}).")
  return chip, f"{chip}:{shapes[size]}"


def quiet_libtpu() -> None:
  """libtpu asks for the accelerator type and worker hostnames of the VM it
  runs on; off a TPU VM there are none, and for a compile-only topology
  none are needed. Call before jax starts its backends."""
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def target_devices(topology: str | None, devices: int | None
                   ) -> tuple[list[Any], str]:
  """(devices to compile for, the target in words). TPU topologies give
  compile-only devices; --devices N gives N simulated CPU devices, which
  this process must have or be able to start with."""
  import jax
  from jax._src import xla_bridge
  if (topology is None) == (devices is None):
    raise JaxWorldError("Give exactly one of --topology (a TPU slice, e.g. "
                        "v5p-256) or --devices N (simulated CPU devices).")
  if not xla_bridge.backends_are_initialized() and not os.environ.get(
      "JAX_PLATFORMS"):
    # A plan compiles for its target only; it never takes a local GPU/TPU.
    jax.config.update("jax_platforms", "cpu")
  if topology is not None:
    _, name = topology_name(topology)
    quiet_libtpu()
    from jax.experimental import topologies
    try:
      topo = topologies.get_topology_desc(platform="tpu",
                                          topology_name=name)
    except RuntimeError as e:
      raise JaxWorldError(
          f"Cannot describe TPU topology {name}: {e}. Install the TPU "
          f"extra at jax's version (pip install \"jax[tpu]=="
          f"{jax.__version__}\"), or plan with --devices N instead."
      ) from e
    return list(topo.devices), f"{topology} ({name}, {len(topo.devices)} " \
        f"x {topo.devices[0].device_kind})"
  if not xla_bridge.backends_are_initialized():
    jax.config.update("jax_num_cpu_devices", devices)
  have = jax.devices("cpu")
  if len(have) < devices:
    raise JaxWorldError(
        f"--devices {devices}: this process has {len(have)} CPU devices and "
        f"JAX has started, so it cannot make more. Run `jaxworld plan` in a "
        f"fresh process, or set XLA_FLAGS=--xla_force_host_platform_device_"
        f"count={devices}.")
  return have[:devices], f"{devices} simulated CPU devices"


def for_target(cfg: Config, accelerator: bool) -> Config:
  """`cfg` as it would run on the target, whatever this machine is: dtype
  "auto" is bfloat16 on GPU and TPU, attention "auto" XLA's kernel."""
  if not accelerator:
    return cfg
  from jaxworld.perf.bench import BACKBONES
  for section, name in BACKBONES:
    parent = getattr(cfg, section)
    b = getattr(parent, name)
    target = dataclasses.replace(
        b, dtype="bfloat16" if b.dtype == "auto" else b.dtype,
        attention=build.attention_kernel(b, accelerator=True))
    parent = dataclasses.replace(parent, **{name: target})
    cfg = dataclasses.replace(cfg, **{section: parent})
  return cfg


def advice(cfg: Config, mesh_shape: dict[str, int], mem: dict[str, Any],
           usable: float) -> list[str]:
  """What to change so the step fits, biggest part of memory first."""
  state = mem["params"] + mem["optimizer"]
  n = math.prod(mesh_shape.values())
  fixes = []
  if state > usable / 2:
    # The state must leave room for gradients and activations.
    need = math.ceil(2 * state * mesh_shape["fsdp"] / usable)
    if need > n:
      fixes.append(
          f"more devices: params + optimizer alone take {state / 2**30:.2f} "
          f"GiB per device; FSDP over at least {need} devices "
          f"(mesh.preset=fsdp) brings them under half of a device")
  if state > 0.3 * usable and mesh_shape["fsdp"] < n:
    fixes.append(
        f"shard the state: mesh.preset=fsdp (fsdp = all {n} devices) cuts "
        f"params + optimizer ({state / 2**30:.2f} GiB per device now) by "
        f"{n // mesh_shape['fsdp']}x")
  stage_backbones = {"tokenizer": ("tokenizer.encoder", "tokenizer.decoder"),
                     "lam": ("lam.encoder", "lam.decoder"),
                     "dynamics": ("dynamics.backbone",)}[cfg.train.stage]
  remat = {k: build.remat_policy(_get(cfg, k)) for k in stage_backbones}
  if any(r == "none" for r in remat.values()):
    fixes.append("rematerialise the blocks: " + " ".join(
        f"{k}.remat=save_dots" for k in stage_backbones)
        + " (or =full, the least memory)")
  elif any(r == "save_dots" for r in remat.values()):
    fixes.append("rematerialise more: " + " ".join(
        f"{k}.remat=full" for k in stage_backbones))
  batch = cfg.train.batch_size
  dp = mesh_shape["data"] * mesh_shape["fsdp"]
  if batch > dp:
    fixes.append(f"a smaller batch: train.batch_size={max(dp, batch // 2)} "
                 f"(temporaries shrink with the batch per device)")
  if not fixes:
    fixes.append("more devices, or a device with more memory")
  return fixes


def _get(cfg: Config, dotted: str) -> Any:
  for part in dotted.split("."):
    cfg = getattr(cfg, part)
  return cfg


def run(cfg: Config, devices: list[Any], target: str,
        device: peaks.DevicePeak | None, xla_flops: bool = True
        ) -> dict[str, Any]:
  """Compiles the step for `devices` from shapes and reports on it."""
  from jaxworld.models import build
  from jaxworld.parallel import batch as batchlib, mesh as meshlib
  from jaxworld.perf import bench, harness, memory
  from jaxworld.train import step as steplib
  mesh = meshlib.make_mesh(cfg.mesh, devices)
  batchlib.check_batch(cfg.train.batch_size, mesh, cfg.mesh.rules)
  stage = cfg.train.stage
  t0 = time.perf_counter()
  low = steplib.lower_step(cfg, stage, mesh, harness.abstract_frozen(cfg))
  compiled = low.lowered.compile()
  compile_s = time.perf_counter() - t0
  _, abstract = steplib.abstract_state(cfg, stage)
  mem = memory.step_memory(compiled, abstract, low.state_shardings)
  analytic = bench.analytic_flops(cfg)["step"]
  xla = None
  if xla_flops:
    # Counted before partitioning, so one local CPU device gives the
    # whole step's count for any target (a compile-only TPU gives none).
    import jax
    one = dataclasses.replace(cfg, mesh=dataclasses.replace(
        cfg.mesh, data=1, fsdp=1, sequence=1, tensor=1, dcn_data=1,
        dcn_fsdp=1))
    xla = bench.xla_flops(one, meshlib.make_mesh(one.mesh,
                                                 jax.devices("cpu")[:1]))
  capacity = device.memory_bytes if device is not None else None
  usable = capacity * USABLE_FRACTION if capacity else None
  fits = None if usable is None or mem["total"] is None else (
      mem["total"] <= usable)
  result = {
      "target": target, "device": device.name if device else None,
      "stage": stage, "params": build.count_params(abstract["model"]),
      "mesh": dict(mesh.shape), "batch": cfg.train.batch_size,
      "compute_dtype": bench.compute_dtype(cfg), "compile_s": compile_s,
      "memory_per_device_bytes": mem, "capacity_bytes": capacity,
      "usable_fraction": USABLE_FRACTION, "fits": fits,
      "flops_per_step": {"analytic": analytic, "xla": xla},
      "step_s_at_40pct_mfu": (analytic / (0.4 * device.bf16_flops
                                          * len(devices))
                              if device is not None else None),
      "fixes": [] if fits in (True, None) else advice(
          cfg, dict(mesh.shape), mem, usable),
  }
  return result


def _ms(seconds: float) -> str:
  ms = seconds * 1e3
  return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.3g} ms"


def format_report(r: dict[str, Any]) -> str:
  m = r["memory_per_device_bytes"]
  gib = lambda b: ("n/a" if b is None else f"{b / 2**30:.2f} GiB"
                   if b >= 2**30 else f"{b / 2**20:.1f} MiB")
  fits = {True: "FITS", False: "DOES NOT FIT", None: "unknown (no capacity "
          "for this device; pass --device)"}[r["fits"]]
  cap = (f" of {gib(r['capacity_bytes'])} ({r['usable_fraction']:.0%} "
         f"usable)" if r["capacity_bytes"] else "")
  f = r["flops_per_step"]
  lines = [
      f"{r['stage']}: {r['params']:,} params, {r['compute_dtype']}, batch "
      f"{r['batch']}, mesh {r['mesh']} on {r['target']}",
      f"compiled in {r['compile_s']:.1f} s, nothing allocated",
      f"memory per device: params {gib(m['params'])}, optimizer "
      f"{gib(m['optimizer'])}, temporaries {gib(m['temporaries'])}, total "
      f"{gib(m['total'])}{cap}: {fits}",
      f"FLOPs per step: analytic {f['analytic']:.3e}, XLA "
      + (f"{f['xla']:.3e}" if f["xla"] else "n/a"),
  ]
  if r["step_s_at_40pct_mfu"]:
    lines.append(f"step time at 40% MFU of {r['device']}: "
                 f"{_ms(r['step_s_at_40pct_mfu'])}")
  lines += [f"fix: {fix}" for fix in r["fixes"]]
  return "\n".join(lines)
