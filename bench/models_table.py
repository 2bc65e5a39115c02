"""The docs/models.md table from `bench/models.py --out` and the variant
runs' `jaxworld rollout` results.

    python bench/models_table.py bench_models.json \
        dynamics=runs/variants/maskgit dynamics_ar=runs/variants/ar \
        dynamics_diffusion=runs/variants/diffusion \
        dynamics_latent=runs/variants/latent lam=runs/variants/lam

"train s" is the run's steps at the benchmark's step rate: the training
time on the machine the benchmark ran on, idle. "wall s" is what the run
took (from its metrics.jsonl: the time between the first and last logged
step, scaled to all steps), which other work on the machine stretches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def train_seconds(run: Path) -> float:
  text = (run / "metrics.jsonl").read_text()
  rows = [json.loads(x) for x in text.splitlines() if x.strip()]
  first, last = rows[0], rows[-1]
  per_step = (last["time"] - first["time"]) / max(last["step"] - first["step"],
                                                  1)
  return per_step * last["step"]


def main() -> None:
  bench = {r["config"]: r for r in json.loads(Path(sys.argv[1]).read_text())}
  runs = dict(a.split("=", 1) for a in sys.argv[2:])
  print("| config | kind | params | train GFLOPs/step | train steps/s | "
        "sampled frames/s | steps | train s | wall s | PSNR model | "
        "PSNR copy-last | gain dB | PSNR blank |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for name, b in bench.items():
    run = Path(runs[name]) if name in runs else None
    steps = secs = wall = psnr = copy = gain = blank = "-"
    if run is not None:
      metrics = [json.loads(x) for x in
                 (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
      steps = metrics[-1]["step"]
      secs = f"{steps / b['train_steps_per_s']:.0f}"
      wall = f"{train_seconds(run):.0f}"
      roll = run / "rollout" / "rollout.json"
      if roll.exists():
        r = json.loads(roll.read_text())
        psnr, copy = f"{r['psnr_model']:.2f}", f"{r['psnr_copy_last']:.2f}"
        gain = f"{r['gain_over_copy_last_db']:+.2f}"
        blank = f"{r['psnr_blank']:.2f}" if "psnr_blank" in r else "-"
    kind = b["kind"] or b["stage"]
    if b.get("actions") == "latent":
      kind += ", latent actions"
    fps = b["sampled_frames_per_s"] if b["sampled_frames_per_s"] else "-"
    print(f"| {name} | {kind} | {b['params']:,} | "
          f"{b['train_gflops_per_step']} | {b['train_steps_per_s']} | {fps} | "
          f"{steps} | {secs} | {wall} | {psnr} | {copy} | {gain} | {blank} |")


if __name__ == "__main__":
  main()
