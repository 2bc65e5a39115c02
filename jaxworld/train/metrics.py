"""Where training numbers go: the console, metrics.jsonl and TensorBoard.

No hosted service: a run shows what it is doing on stdout and leaves plain
files behind (`tensorboard --logdir <workdir>/tb` to plot them). Only process
0 writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax

# Shown on the console, in this order, when a stage reports them.
_CONSOLE_KEYS = ("loss", "psnr", "codebook_perplexity", "masked_accuracy",
                 "grad_norm", "learning_rate", "input_wait",
                 "skipped_records")


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricLogger:
  """Progress lines with rate and ETA, plus durable metric records."""

  def __init__(self, workdir: str | Path, stage: str, total_steps: int,
               start_step: int = 0):
    self.stage, self.total = stage, total_steps
    self.enabled = jax.process_index() == 0
    self._last_step, self._last_time = start_step, None
    self._jsonl = self._tb = None
    if self.enabled:
      workdir = Path(workdir)
      path = workdir / "metrics.jsonl"
      # A resumed run repeats the steps after its checkpoint: drop their old
      # records so every step appears once.
      kept = [line for line in (path.read_text().splitlines()
                                if path.exists() else [])
              if json.loads(line)["step"] <= start_step]
      path.write_text("".join(line + "\n" for line in kept))
      self._jsonl = path.open("a")
      from tensorboardX import SummaryWriter  # optional heavy import, lazily
      self._tb = SummaryWriter(str(workdir / "tb"))

  def start_clock(self, step: int) -> None:
    """Called after the first step so compile time is not counted as rate."""
    self._last_step, self._last_time = step, time.perf_counter()

  def write(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    if self._last_time is not None and step > self._last_step:
      values["steps_per_second"] = (step - self._last_step) / (
          now - self._last_time)
    self._last_step, self._last_time = step, now
    if not self.enabled:
      return values
    rate = values.get("steps_per_second")
    eta = f" | ETA {_duration((self.total - step) / rate)}" if rate else ""
    shown = " | ".join(f"{k} {_fmt(values[k])}" for k in _CONSOLE_KEYS
                       if k in values)
    rate_text = f" | {rate:.2f} steps/s" if rate else ""
    print(f"[{self.stage}] step {step}/{self.total} | {shown}{rate_text}{eta}",
          flush=True)
    self._jsonl.write(json.dumps({"step": step, "stage": self.stage,
                                  "time": time.time(), **values}) + "\n")
    self._jsonl.flush()
    for k, v in values.items():
      self._tb.add_scalar(f"{self.stage}/{k}", v, step)
    self._tb.flush()
    return values

  @property
  def tensorboard(self) -> Any:
    """The run's tensorboardX SummaryWriter (None off process 0), for what
    is not a scalar: train/preview.py's images."""
    return self._tb

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _fmt(v: float) -> str:
  if not math.isfinite(v):
    return str(v)
  return f"{v:.3e}" if (abs(v) < 1e-2 and v != 0) else f"{v:.4g}"
