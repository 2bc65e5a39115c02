"""Every dynamics kind trained for the same seconds of this machine, then
scored by `jaxworld eval` on the demo's held-out episodes: the equal-time
table of docs/models.md.

    python bench/equal_time.py [--seconds 300] [--data runs/demo/data] \
        [--out runs/equal_time]

Steps:
1. the frozen models the kinds read (FSQ and continuous tokenizers, the
   LAM), trained with their configs' defaults; not counted in the budget;
2. each kind's train step rate, from `bench/models.py` on random batches
   (run this alone: the rates set the step counts);
3. each kind trained for `seconds x rate` steps (deterministic on CPU, so
   other work on the machine then changes the wall time, not the result),
   then `jaxworld eval` (`jaxworld rollout` for latent actions, which eval
   cannot replay);
4. the table, printed and written to OUT/table.md.

Every stage is a `jaxworld` command; a run already in OUT is resumed (a
finished one does nothing), so the script goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# Frozen models: workdir name -> config.
FROZEN = {"tokenizer": "tokenizer",
          "tokenizer_continuous": "tokenizer_continuous",
          "lam": "lam"}

# Dynamics config -> (workdir name, the frozen models it reads).
KINDS = {
    "dynamics_regression": ("regression", {}),
    "dynamics_pixels": ("frame_diffusion", {}),
    "dynamics_diffusion": ("diffusion", {"tokenizer": "tokenizer_continuous"}),
    "dynamics": ("maskgit", {"tokenizer": "tokenizer"}),
    "dynamics_ar": ("autoregressive", {"tokenizer": "tokenizer"}),
    "dynamics_latent": ("latent", {"tokenizer": "tokenizer", "lam": "lam"}),
}


def _run(*args: str) -> None:
  print("+", " ".join(args), flush=True)
  subprocess.run(args, check=True)


def _jaxworld(*args: str) -> None:
  _run(sys.executable, "-m", "jaxworld.cli", *args)


def _train(config: str, workdir: Path, *overrides: str) -> None:
  """Trains, or resumes an interrupted run (a finished one does nothing)."""
  resume = ("--resume",) if workdir.exists() else ()
  _jaxworld("train", config, *overrides, "--workdir", str(workdir), *resume)


def _frozen_overrides(out: Path, frozen: dict[str, str]) -> list[str]:
  keys = {"tokenizer": "dynamics.tokenizer_workdir",
          "lam": "dynamics.lam_workdir"}
  return [f"{keys[k]}={out / name}" for k, name in frozen.items()]


def _rates(out: Path, overrides: list[str]) -> dict[str, float]:
  path = out / "rates.json"
  if not path.exists():
    _run(sys.executable, str(Path(__file__).parent / "models.py"), *KINDS,
         *overrides, "--steps", "10", "--out", str(path))
  return {r["config"]: r["train_steps_per_s"]
          for r in json.loads(path.read_text())}


def _row(config: str, name: str, steps: int, rate: float, out: Path) -> str:
  run = out / name
  result = run / "eval" / "eval.json"
  if not result.exists():  # latent actions: rollout only
    result = run / "rollout" / "rollout.json"
  r = json.loads(result.read_text())

  def num(key: str, fmt: str = ".2f") -> str:
    return format(r[key], fmt) if key in r else "-"

  velocity = (format(r["probe"]["dynamics"]["velocity_at_object_r2"], ".2f")
              if "dynamics" in r.get("probe", {}) else "-")
  return (f"| {config} | {name} | {steps} | {steps / rate:.0f} | "
          f"{num('psnr_tokenizer')} | {num('psnr_model')} | "
          f"{num('ssim_model', '.3f')} | "
          f"{num('psnr_moving_model')} | {num('position_error_model')} | "
          f"{num('objects_found_model', '.0%')} | "
          f"{num('delta_psnr', '+.2f')} | {velocity} |")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--seconds", type=float, default=300.0)
  p.add_argument("--data", default="runs/demo/data")
  p.add_argument("--out", default="runs/equal_time")
  args = p.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  data = f"data.path={args.data}"
  for name, config in FROZEN.items():
    _train(config, out / name, data)
  rates = _rates(out, [data])
  rows = []
  for config, (name, frozen) in KINDS.items():
    steps = max(1, round(args.seconds * rates[config]))
    run = out / name
    _train(config, run, data, *_frozen_overrides(out, frozen),
           f"train.steps={steps}", f"train.checkpoint_every={steps}")
    if config == "dynamics_latent":
      if not (run / "rollout" / "rollout.json").exists():
        _jaxworld("rollout", "--workdir", str(run))
    elif not (run / "eval" / "eval.json").exists():
      _jaxworld("eval", "--workdir", str(run))
    rows.append(_row(config, name, steps, rates[config], out))
  head = ("| config | kind | steps | train s | tokenizer PSNR | PSNR | "
          "SSIM | moving PSNR | position error px | objects located | "
          "controllability dB | velocity probe |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  table = "\n".join([head, *rows])
  (out / "table.md").write_text(table + "\n")
  print(table)


if __name__ == "__main__":
  main()
