"""Preemption, kill -9 and mesh changes: a run survives them with its losses.

Training runs in subprocesses (that is what gets signalled); references and
resumptions run in this process where they can, to save start-up time.
"""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import TINY
from jaxworld import cli
from jaxworld.runs import assemble, checkpoint
from jaxworld.train import preemption

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import local as launcher  # noqa: E402


def _args(data, workdir, *extra):
  return ["train", "tokenizer", *TINY, f"data.path={data}",
          "train.log_every=1", *extra, "--workdir", str(workdir)]


def _start(data, workdir, *extra, env=None):
  return subprocess.Popen([sys.executable, "-m", "jaxworld.cli",
                           *_args(data, workdir, *extra)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _losses(workdir):
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def _wait_for_step(proc, workdir, step, timeout=180):
  """Blocks until `workdir` has logged `step` (the process is then past it)."""
  metrics = Path(workdir) / "metrics.jsonl"
  deadline = time.monotonic() + timeout
  while not (metrics.exists() and
             metrics.read_text().count("\n") >= step):
    assert time.monotonic() < deadline, "training did not get there"
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.05)


def _saved(workdir):
  return sorted(int(p.name) for p in (Path(workdir) / "checkpoints").iterdir()
                if p.name.isdigit())


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
  """An uninterrupted 8-step run, checkpointed every step."""
  run = tmp_path_factory.mktemp("reference")
  assert cli.main(_args(tiny_dataset, run, "train.steps=8",
                        "train.checkpoint_every=1",
                        "train.keep_checkpoints=8")) == 0
  return run


def test_sigkill_then_resume_is_bit_identical(tiny_dataset, reference,
                                              tmp_path):
  """kill -9 at a random step (maybe mid-save), --resume: every loss equals
  the uninterrupted run's bit for bit (params, optimizer, step RNG and the
  Grain iterator all restored)."""
  kill_after = random.randint(2, 6)
  print(f"killing after step {kill_after}")
  run = tmp_path / "killed"
  args = ("train.steps=8", "train.checkpoint_every=1",
          "train.keep_checkpoints=8")
  proc = _start(tiny_dataset, run, *args)
  try:
    _wait_for_step(proc, run, kill_after)
    # Saves are async: make sure one has landed, so the resume restores one.
    deadline = time.monotonic() + 60
    while not ((run / "checkpoints").is_dir() and _saved(run)):
      assert time.monotonic() < deadline and proc.poll() is None
      time.sleep(0.01)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert cli.main(_args(tiny_dataset, run, *args) + ["--resume"]) == 0
  expected = _losses(reference)
  got = _losses(run)
  assert sorted(got) == list(range(1, 9))
  assert [got[s] for s in sorted(got)] == [expected[s] for s in sorted(got)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_at_the_next_step_and_exits(tiny_dataset, tmp_path, sig):
  """SIGTERM (a scheduler) or SIGINT (Ctrl-C): save that step, exit 75."""
  run = tmp_path / "term"
  proc = _start(tiny_dataset, run, "train.steps=100000",
                "train.checkpoint_every=100000")
  _wait_for_step(proc, run, 2)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == preemption.EXIT_PREEMPTED, err[-3000:]
  stopped = max(_losses(run))
  assert _saved(run) == [stopped]  # the step it stopped at, nothing later
  assert f"stopped by {sig.name} at step {stopped}" in err
  assert "Traceback" not in err
  # And it continues from there.
  assert cli.main(_args(tiny_dataset, run, f"train.steps={stopped + 1}",
                        "train.checkpoint_every=100000") + ["--resume"]) == 0
  assert sorted(_losses(run)) == list(range(1, stopped + 2))


def test_sigterm_on_one_of_two_processes_stops_both_at_one_step(
    tiny_dataset, tmp_path):
  """Only process 1 is signalled; JAX's preemption service makes both save
  the same step and stop."""
  address = launcher.free_address()
  run = tmp_path / "mp"
  cmd = [sys.executable, "-m", "jaxworld.cli",
         *_args(tiny_dataset, run, "mesh.fsdp=2", "train.steps=100000",
                "train.checkpoint_every=100000")]
  procs = [subprocess.Popen(cmd, env=launcher.process_env(i, 2, address, 2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  try:
    _wait_for_step(procs[0], run, 2)
    procs[1].send_signal(signal.SIGTERM)
    errs = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, errs):
    assert p.returncode == preemption.EXIT_PREEMPTED, err[-3000:]
  stopped = max(_losses(run))
  assert _saved(run) == [stopped]
  for err in errs:
    assert f"at step {stopped};" in err, err[-2000:]
  position = json.loads((run / "checkpoints" / str(stopped) /
                         checkpoint.POSITION_ITEM / "metadata").read_text())
  assert (position["global_batches"], position["process_count"]) == (
      stopped, 2)


def _resume_point(reference, tmp_path, name, step=4):
  """A copy of the reference run as it was after `step`."""
  run = tmp_path / name
  shutil.copytree(reference, run)
  for s in _saved(run):
    if s > step:
      shutil.rmtree(run / "checkpoints" / str(s))
  return run


def _with_file_size_limit(limit, cmd):
  """`cmd` where a write past `limit` bytes fails (EFBIG), as on a full
  disk, without root or a mount. SIGXFSZ is ignored (inherited across exec),
  so the write returns the error instead of killing the process."""
  return [sys.executable, "-c",
          "import os, resource, signal, sys; "
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
          f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
          "os.execv(sys.argv[1], sys.argv[1:])", *cmd]


def test_failed_save_keeps_earlier_steps_and_stops_clearly(
    tiny_dataset, reference, tmp_path):
  """A save that cannot be written (any file over 100 kB fails, and the
  arrays' file is larger): one clear error naming the step and what is
  intact; the steps before it stay readable, and the unfinished save does
  not block --resume, which continues with the uninterrupted run's losses
  bit for bit."""
  run = _resume_point(reference, tmp_path, "full")
  args = ("train.steps=8", "train.checkpoint_every=1",
          "train.keep_checkpoints=8")
  full = subprocess.run(_with_file_size_limit(100_000, [
      sys.executable, "-m", "jaxworld.cli", *_args(tiny_dataset, run, *args),
      "--resume"]), capture_output=True, text=True, timeout=300)
  assert full.returncode == 2, full.stderr[-3000:]
  error = full.stderr[full.stderr.index("jaxworld: error:"):].splitlines()[0]
  assert "Saving checkpoint step 5" in error, error
  assert "File too large" in error, error
  assert "Steps [1, 2, 3, 4] are intact" in error, error
  assert "rerun the same command with --resume" in error, error
  assert _saved(run) == [1, 2, 3, 4]
  assert (run / "checkpoints" / f"5{checkpoint.UNFINISHED_SUFFIX}").is_dir()
  assert cli.main(_args(tiny_dataset, run, *args) + ["--resume"]) == 0
  assert _losses(run) == _losses(reference)
  assert _saved(run) == list(range(1, 9))


def test_damaged_final_step_is_found_and_retrained(tiny_dataset, reference,
                                                   tmp_path, caplog):
  """A run at train.steps used to say 'already finished' on --resume
  without reading its final step. Intact, it still finishes at once; with
  its array files cut in half, the step is moved aside and retrained from
  the one before, with the uninterrupted run's losses bit for bit."""
  run = tmp_path / "finished"
  shutil.copytree(reference, run)
  args = _args(tiny_dataset, run, "train.steps=8", "train.checkpoint_every=1",
               "train.keep_checkpoints=8") + ["--resume"]
  with caplog.at_level(logging.INFO, logger="jaxworld.train.loop"):
    assert cli.main(args) == 0
  assert "already finished 8 steps" in caplog.text
  assert not (run / checkpoint.DAMAGED_DIR).exists()

  # Every OCDBT data file: on 8 devices a restore reads only some of them.
  for f in (run / "checkpoints" / "8" / "state").glob("**/d/*"):
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="jaxworld"):
    assert cli.main(args) == 0
  assert "checkpoint step 8 of" in caplog.text and "is damaged" in caplog.text
  assert "resumed" in caplog.text and "from step 7" in caplog.text
  assert (run / checkpoint.DAMAGED_DIR / "8").is_dir()
  assert _saved(run) == list(range(1, 9))
  assert _losses(run) == _losses(reference)


def test_resume_with_another_preset(tiny_dataset, tmp_path,
                                    tmp_path_factory):
  """Saved with FSDP over 8 devices, continued with tensor + sequence
  parallelism: the same losses within fp32 reduction-order tolerance."""
  ref = tmp_path_factory.mktemp("fsdp")
  common = ("train.steps=6", "train.checkpoint_every=3")
  assert cli.main(_args(tiny_dataset, ref, "mesh.preset=fsdp", *common)) == 0
  run = _resume_point(ref, tmp_path, "tp_sp", step=3)
  assert cli.main(_args(tiny_dataset, run, "mesh.preset=tp_sp", *common)
                  + ["--resume"]) == 0
  expected, got = _losses(ref), _losses(run)
  np.testing.assert_allclose([got[s] for s in (4, 5, 6)],
                             [expected[s] for s in (4, 5, 6)], rtol=2e-4)
  assert "tensor" in (run / "shardings.txt").read_text()


def test_resume_on_fewer_devices(tiny_dataset, reference, tmp_path):
  """Saved on 8 devices, continued on 4 (another process, another mesh)."""
  run = _resume_point(reference, tmp_path, "four")
  env = dict(os.environ, XLA_FLAGS=(
      "--xla_force_host_platform_device_count=4 "
      "--xla_cpu_enable_concurrency_optimized_scheduler=false"))
  proc = _start(tiny_dataset, run, "train.steps=8", "train.checkpoint_every=1",
                "train.keep_checkpoints=8", "mesh.fsdp=4", "--resume", env=env)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "on 4 devices" in err
  expected, got = _losses(reference), _losses(run)
  np.testing.assert_allclose([got[s] for s in range(5, 9)],
                             [expected[s] for s in range(5, 9)], rtol=2e-4)


def test_fine_tune_starts_from_params_not_optimizer(tiny_dataset, reference,
                                                    tmp_path):
  """train.init_from: the source's parameters, a fresh optimizer."""
  run = tmp_path / "fine"
  assert cli.main(_args(tiny_dataset, run, "train.steps=2",
                        f"train.init_from={reference}",
                        "train.learning_rate=1e-9")) == 0
  # A fresh optimizer starts its schedule at count 0 (warmup from 0); the
  # source's optimizer would be at count 8.
  lines = (run / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[0])["learning_rate"] == 0.0
  # Two steps at lr 1e-9 leave the source's final parameters in place.
  cfg = checkpoint.read_config(run)
  mesh = assemble.one_device_mesh()
  _, tuned = assemble.restore(cfg, "tokenizer", run, 2, mesh)
  _, source = assemble.restore(cfg, "tokenizer", reference, 8, mesh)
  for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(source)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  # A source of another stage is refused before anything is compiled.
  code = cli.main(["train", "dynamics", *TINY, f"data.path={tiny_dataset}",
                   f"dynamics.tokenizer_workdir={reference}",
                   f"train.init_from={reference}", "--workdir",
                   str(tmp_path / "wrong")])
  assert code == 2 and not (tmp_path / "wrong").exists()
