"""`jaxworld bench`: what one train step of a config costs on these devices.

Step time (median of timed steps after warm-up), FLOPs per step from XLA's
cost analysis and from the analytic formula (perf/flops.py) side by side,
achieved FLOP/s and MFU against the device's peak (perf/peaks.py; on a CPU
against a matmul timed after every step, so that each step is held to the
ceiling of its own moment), memory per device, compile time, sampled
frames/s (dynamics) and the loader's windows/s against what the step
consumes (with data.path set). Random weights and batches: the
cost of a step does not depend on their values.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxworld.config import Config
from jaxworld.infer import sampler
from jaxworld.models import build
from jaxworld.parallel import mesh as meshlib
from jaxworld.perf import flops as flopslib, harness, memory, peaks
from jaxworld.train import step as steplib

log = logging.getLogger(__name__)

# Every backbone section of a config (each gets `scan_unroll` for XLA's count).
BACKBONES = (("tokenizer", "encoder"), ("tokenizer", "decoder"),
             ("dynamics", "backbone"), ("lam", "encoder"), ("lam", "decoder"))


def unrolled(cfg: Config) -> Config:
  """`cfg` with every layer scan unrolled: XLA's cost analysis counts a
  loop body once whatever its trip count, so a scanned step's XLA FLOPs
  would hold one block per backbone."""
  for section, name in BACKBONES:
    parent = getattr(cfg, section)
    b = getattr(parent, name)
    parent = dataclasses.replace(parent, **{name: dataclasses.replace(
        b, scan_unroll=b.depth)})
    cfg = dataclasses.replace(cfg, **{section: parent})
  return cfg


def xla_flops(cfg: Config, mesh: Any) -> float | None:
  """FLOPs of one step (all devices) by XLA's cost analysis of the lowered,
  unrolled step (lowering only: no compile)."""
  cfg = unrolled(cfg)
  low = steplib.lower_step(cfg, cfg.train.stage, mesh,
                           harness.abstract_frozen(cfg))
  cost = low.lowered.cost_analysis()
  return float(cost["flops"]) if cost and "flops" in cost else None


def analytic_flops(cfg: Config) -> dict[str, int]:
  trained = nnx.eval_shape(lambda: build.for_stage(cfg, cfg.train.stage, 0))
  frozen = harness.abstract_frozen(cfg)
  frozen_model = (nnx.merge(frozen.graphdef, frozen.state)
                  if frozen is not None else None)
  return flopslib.train_step_flops(
      trained, frozen_model, cfg.train.batch_size, cfg.data.window,
      build.stage_kind(cfg, cfg.train.stage).train_frames(cfg))


def trained_backbone(cfg: Config) -> dict[str, Any]:
  """The trained stage's (first) backbone, "auto" settings resolved."""
  section = {"tokenizer": cfg.tokenizer.encoder, "lam": cfg.lam.encoder,
             "dynamics": cfg.dynamics.backbone}[cfg.train.stage]
  return build.backbone(section)


def compute_dtype(cfg: Config) -> str:
  return trained_backbone(cfg)["dtype"]


def sampled_frames_per_s(cfg: Config, frozen: Any, repeats: int) -> float | None:
  """Frames/s of imagining one frame (the kind's `next_frame` over a
  window-1 frame history, then the tokenizer's decode) for
  rollout.num_episodes episodes at once; None for a stage that does not
  imagine."""
  if cfg.train.stage != "dynamics":
    return None
  batch, history = cfg.rollout.num_episodes, cfg.data.window - 1
  graphdef, params = sampler.model_params(build.dynamics(cfg, nnx.Rngs(0)))
  tokenizer = nnx.merge(frozen.graphdef, frozen.state)
  tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
  tok_graphdef, tok_params = sampler.model_params(tokenizer)
  frames = np.zeros((batch, history, cfg.world.image_size,
                     cfg.world.image_size, 3), np.uint8)
  with jax.transfer_guard_host_to_device("allow"):
    codes = jax.jit(sampler.encode_frame, static_argnums=0)
    history_BT = jax.numpy.stack(
        [codes(tok_graphdef, tok_params, frames[:, :i + 1])
         for i in range(history)], 1)
    actions_BT = jax.numpy.zeros((batch, history), jax.numpy.int32)
    rng_2 = jax.random.key_data(jax.random.key(0, impl=sampler.KEY_IMPL))
  imagine = jax.jit(sampler.dynamics_step, static_argnums=(0, 1))
  decode = jax.jit(sampler.decode_frame, static_argnums=0)
  options = sampler.options_for(cfg)

  def frame():
    new_BN, _ = imagine(graphdef, cfg.dynamics.kind, params, history_BT,
                        actions_BT, rng_2, options)
    seq = jax.numpy.concatenate([history_BT[:, 1:], new_BN[:, None]], 1)
    return decode(tok_graphdef, tok_params, seq)

  jax.block_until_ready(frame())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(frame())
    times.append(time.perf_counter() - t0)
  return batch / statistics.median(times)


def run(cfg: Config, steps: int = 10, warmup: int = 2,
        profile_dir: str | None = None, loader_batches: int = 20) -> dict[str, Any]:
  """Measures one train step of `cfg` on all devices; see the module doc."""
  devices = jax.devices()
  mesh = meshlib.make_mesh(cfg.mesh, devices)
  stage = cfg.train.stage
  t0 = time.perf_counter()
  compiled, frozen = harness.compile_step(cfg, mesh)
  compile_s = time.perf_counter() - t0
  batch = harness.random_batch(cfg, compiled.batch_shardings)
  dtype = compute_dtype(cfg)
  peak = peaks.for_device(devices[0])
  # No data-sheet peak (a CPU): a matmul timed right after every step, for
  # as long as the step took, so each step is held to the ceiling of its
  # own moment.
  ceiling = peaks.MatmulCeiling(dtype) if peak is None else None
  cpu_times: list[float] = []
  times = harness.step_seconds(compiled, frozen, batch, steps, warmup,
                               after_each=ceiling, cpu_seconds=cpu_times)
  step_s = statistics.median(times)
  if profile_dir:
    # A separate, short run inside the trace, so tracing does not slow the
    # timed steps; open it with TensorBoard's profile plugin or Perfetto.
    state = compiled.init()  # outside the trace: only steps are in it
    jax.block_until_ready(state)
    with jax.profiler.trace(str(Path(profile_dir))):
      harness.step_seconds(compiled, frozen, batch, 3, 1, state)
  analytic = analytic_flops(cfg)
  xla = xla_flops(cfg, mesh)
  _, abstract = steplib.abstract_state(cfg, stage)
  mem = memory.step_memory(compiled.step, abstract, compiled.state_shardings)
  if peak is not None:
    peak_flops = peak.bf16_flops * len(devices)
    step_mfus = wall_mfus = [analytic["step"] / t / peak_flops for t in times]
    peak_source = f"{peak.name} bf16 dense peak x {len(devices)} devices"
  else:
    peak_flops = ceiling.median()
    # Per CPU-second of this process: steady under other jobs' load.
    step_mfus = [(analytic["step"] / t) / (ceiling.flops / c)
                 for t, c in zip(cpu_times, ceiling.cpu_seconds)]
    wall_mfus = [(analytic["step"] / t) / (ceiling.flops / c)
                 for t, c in zip(times, ceiling.seconds)]
    peak_source = (f"{dtype} 1024^3 matmuls timed after each step for as "
                   f"long, median "
                   f"({devices[0].platform}, the threads of all "
                   f"{len(devices)} devices)")
  achieved = analytic["step"] / step_s
  windows_per_s = cfg.train.batch_size / step_s
  result = {
      "stage": stage, "kind": build.stage_kind(cfg, stage).name,
      "params": build.count_params(abstract["model"]),
      "devices": {"platform": devices[0].platform,
                  "kind": devices[0].device_kind, "count": len(devices)},
      "mesh": dict(mesh.shape), "compute_dtype": dtype,
      "attention": trained_backbone(cfg)["attention"],
      "batch": {"windows": cfg.train.batch_size, "frames": cfg.data.window,
                "tokens_per_frame": build.num_tokens(cfg)},
      "compile_s": compile_s,
      "step_s": {"median": step_s, "min": min(times), "max": max(times),
                 "timed_steps": steps, "warmup_steps": warmup},
      "windows_per_s": windows_per_s,
      "frames_per_s": windows_per_s * cfg.data.window,
      "flops_per_step": {"analytic": analytic["step"], "xla": xla,
                         "xla_over_analytic": (xla / analytic["step"]
                                               if xla else None),
                         "analytic_parts": analytic},
      "achieved_flops_per_s": achieved,
      "peak_flops_per_s": peak_flops, "peak_source": peak_source,
      # The median of each step's FLOP/s over its own moment's peak.
      "mfu": statistics.median(step_mfus),
      "mfu_range": [min(step_mfus), max(step_mfus)],
      # On a CPU `mfu` counts CPU time, this one wall time (both per step).
      "mfu_wall": statistics.median(wall_mfus),
      "memory_per_device_bytes": mem,
      "sampled_frames_per_s": sampled_frames_per_s(cfg, frozen, 3),
      "loader": None, "profile_dir": profile_dir,
  }
  if cfg.data.path:
    result["loader"] = {
        "windows_per_s": harness.loader_rate(cfg, cfg.data.path,
                                             loader_batches),
        "step_consumes_windows_per_s": windows_per_s}
  return result


def _si(x: float | None, unit: str = "") -> str:
  if x is None:
    return "n/a"
  for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                        (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.2f} {prefix}{unit}"
  return f"{x:.2f} {unit}"


def _mib(b: int | None) -> str:
  return "n/a" if b is None else f"{b / 2**20:,.1f} MiB"


def format_table(r: dict[str, Any]) -> str:
  """The result as a two-column Markdown table."""
  f, m, s = r["flops_per_step"], r["memory_per_device_bytes"], r["step_s"]
  ratio = f["xla_over_analytic"]
  loader = r["loader"]
  cpu = r["devices"]["platform"] == "cpu"
  rows = [
      ("model", f"{r['stage']} ({r['kind']}), {r['params']:,} params, "
                f"{r['compute_dtype']}, {r['attention']} attention"),
      ("devices", f"{r['devices']['count']} x {r['devices']['kind']}, mesh "
                  f"{r['mesh']}"),
      ("batch", f"{r['batch']['windows']} windows x {r['batch']['frames']} "
                f"frames x {r['batch']['tokens_per_frame']} tokens"),
      ("compile", f"{r['compile_s']:.1f} s"),
      ("step (median)", f"{s['median'] * 1e3:.1f} ms (min {s['min'] * 1e3:.1f}"
                        f", max {s['max'] * 1e3:.1f}; {s['timed_steps']} "
                        f"timed after {s['warmup_steps']} warm-up)"),
      ("throughput", f"{r['windows_per_s']:,.1f} windows/s, "
                     f"{r['frames_per_s']:,.0f} frames/s"),
      ("FLOPs/step (analytic; XLA)", f"{_si(f['analytic'])}; {_si(f['xla'])}"
       + (f" (XLA/analytic {ratio:.3f})" if ratio else "")),
      ("achieved", _si(r["achieved_flops_per_s"], "FLOP/s")
       + " (analytic FLOPs)"),
      ("peak", f"{_si(r['peak_flops_per_s'], 'FLOP/s')} ({r['peak_source']})"),
      ("MFU", f"{100 * r['mfu']:.1f}%"
              + (" per CPU-second" if cpu else "")
              + f" (median over steps, {100 * r['mfu_range'][0]:.1f}-"
              f"{100 * r['mfu_range'][1]:.1f}%)"
              + (f"; {100 * r['mfu_wall']:.1f}% by wall time" if cpu else "")),
      ("memory/device", f"params {_mib(m['params'])}, optimizer "
                        f"{_mib(m['optimizer'])}, temporaries "
                        f"{_mib(m['temporaries'])}, total {_mib(m['total'])}"),
      ("sampled frames/s", "n/a" if r["sampled_frames_per_s"] is None
       else f"{r['sampled_frames_per_s']:,.1f}"),
      ("loader", "n/a (set data.path=DIR)" if loader is None else
       f"{loader['windows_per_s']:,.0f} windows/s; the step consumes "
       f"{loader['step_consumes_windows_per_s']:,.1f}"),
  ]
  return "\n".join(["| | |", "|---|---|",
                    *(f"| {k} | {v} |" for k, v in rows)])
