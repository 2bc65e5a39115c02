"""Two JAX processes on this machine: the multi-host path of the trainer."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _launch(workdir, data, *extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, str(ROOT / "launch" / "local.py"), "--processes", "2",
         "--devices-per-process", "2", "--", sys.executable, "-m",
         "jaxworld.cli", "train", "tokenizer", *TINY, f"data.path={data}",
         "train.log_every=1", *extra, "--workdir", str(workdir)]
  return subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=300)


def test_two_processes_train_checkpoint_and_resume(tiny_dataset, tmp_path):
  run = tmp_path / "mp"
  first = _launch(run, tiny_dataset, "mesh.fsdp=2", "train.steps=2")
  assert first.returncode == 0, first.stderr[-3000:]
  # Each process saved its own data-iterator state.
  data_dir = run / "checkpoints" / "2" / "data"
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= {
      p.name for p in data_dir.iterdir()}
  second = _launch(run, tiny_dataset, "mesh.fsdp=2", "train.steps=4",
                   "--resume")
  assert second.returncode == 0, second.stderr[-3000:]
  steps = [json.loads(x)["step"]
           for x in (run / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4]


def test_tensor_group_across_processes_is_refused(tiny_dataset, tmp_path):
  result = _launch(tmp_path / "tp", tiny_dataset, "mesh.fsdp=1",
                   "mesh.tensor=4", "train.steps=1")
  assert result.returncode == 2
  assert "Keep mesh.tensor within one host" in result.stderr
  assert not (tmp_path / "tp").exists()
