"""Several JAX processes on this machine: the multi-host path of the trainer."""

import concurrent.futures
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import TINY
from jaxworld import config as configlib
from jaxworld.runs import checkpoint
from jaxworld.train import loop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import local as launcher  # noqa: E402


def _train_cmd(data, workdir, *extra):
  return [sys.executable, "-m", "jaxworld.cli", "train", "tokenizer", *TINY,
          f"data.path={data}", "train.log_every=1", *extra, "--workdir",
          str(workdir)]


def _launch(processes, devices, workdir, data, *extra):
  # The launcher's own timeout kills a hung job; the outer one is a backstop.
  cmd = [sys.executable, str(ROOT / "launch" / "local.py"), "--processes",
         str(processes), "--devices-per-process", str(devices), "--timeout",
         "240", "--", *_train_cmd(data, workdir, *extra)]
  return subprocess.run(cmd, capture_output=True, text=True,
                        timeout=300)


def _losses(workdir):
  return [json.loads(x)["loss"]
          for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one(tiny_dataset, tmp_path):
  """2 processes x 4 devices (data split across processes over a hybrid
  mesh, fsdp within each) give the losses of 1 process x 8 devices."""
  mesh = ["mesh.preset=fsdp", "mesh.data=2", "train.steps=3"]
  result = _launch(2, 4, tmp_path / "mp", tiny_dataset, *mesh,
                   "mesh.dcn_data=2")
  assert result.returncode == 0, result.stderr[-3000:]
  # The same config as `jaxworld train tokenizer` builds, in this process.
  cfg = configlib.load(configlib.resolve("tokenizer"), [
      *TINY, *mesh, "train.log_every=1", f"data.path={tiny_dataset}"])
  loop.train(cfg, tmp_path / "sp")
  # fp32 tolerance: gloo and in-process all-reduces sum in different orders.
  np.testing.assert_allclose(_losses(tmp_path / "mp"),
                             _losses(tmp_path / "sp"), rtol=2e-4)


def _metric(workdir, name):
  return {r["step"]: r[name] for r in map(
      json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())}


def _copy_until(run, step, dest):
  """A copy of `run` as it was after `step` (later checkpoints dropped; a
  resume drops the later metrics records itself)."""
  shutil.copytree(run, dest)
  for ckpt in (dest / "checkpoints").iterdir():
    if ckpt.name.isdigit() and int(ckpt.name) > step:
      shutil.rmtree(ckpt)
  return dest


def test_resume_on_another_process_count_continues_the_global_stream(
    tiny_dataset, tmp_path):
  """An uninterrupted run on 2 processes; its step-2 checkpoint continued
  on 1 process, and that run continued on 2 again from step 4, past a
  newer step that one of the 2 processes cannot read (each with its own
  FSDP mesh, 4 or 8 devices): every step trains on exactly the batch of
  the uninterrupted run (batch fingerprints equal, batch for batch) and
  gives its loss within the sharded-vs-single tolerance."""
  # A constant learning rate after warmup: the last resume runs one step
  # more without changing the schedule of steps 1-6.
  common = ("mesh.preset=fsdp", "train.steps=6", "train.checkpoint_every=2",
            "train.final_lr_fraction=1")
  two = _launch(2, 2, tmp_path / "two", tiny_dataset, *common)
  assert two.returncode == 0, two.stderr[-3000:]
  position = json.loads((tmp_path / "two" / "checkpoints" / "2" /
                         checkpoint.POSITION_ITEM / "metadata").read_text())
  assert (position["global_batches"], position["process_count"]) == (2, 2)

  two_to_one = _copy_until(tmp_path / "two", 2, tmp_path / "two_to_one")
  cfg = configlib.load(configlib.resolve("tokenizer"), [
      *TINY, *common, "train.log_every=1", f"data.path={tiny_dataset}"])
  loop.train(cfg, two_to_one, resume=True)  # 1 process x 8 devices
  one_to_two = _copy_until(two_to_one, 4, tmp_path / "one_to_two")
  # Newer, damaged: step 6 as the 2-process run saved it, with the array
  # files that process 1 wrote (and alone reads back on the same mesh) cut
  # in half. Process 1 cannot read it and process 0 can; both must take
  # step 4. Seven steps, as a run already at train.steps restores nothing.
  step6 = one_to_two / "checkpoints" / "6"
  shutil.copytree(tmp_path / "two" / "checkpoints" / "6", step6)
  for f in (step6 / "state" / "ocdbt.process_1" / "d").iterdir():
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
  resumed = _launch(2, 2, one_to_two, tiny_dataset, *common, "train.steps=7",
                    "--resume")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "is damaged: it could not be read on another process" in \
      resumed.stderr  # process 0 read it: that case aborted every process
  assert "(global batch 4) on 2 processes" in resumed.stderr
  assert (one_to_two / checkpoint.DAMAGED_DIR / "6").is_dir()

  expected = _metric(tmp_path / "two", "batch_fingerprint")
  assert len(set(expected.values())) == 6  # each batch tells itself apart
  expected_loss = _metric(tmp_path / "two", "loss")
  for run, last in ((two_to_one, 6), (one_to_two, 7)):
    got = _metric(run, "batch_fingerprint")
    assert sorted(got) == list(range(1, last + 1)), run
    assert {s: got[s] for s in range(1, 7)} == expected, run
    got = _metric(run, "loss")
    # fp32: 4 and 8 devices, gloo and in-process all-reduces sum in
    # different orders.
    np.testing.assert_allclose([got[s] for s in range(1, 7)],
                               [expected_loss[s] for s in range(1, 7)],
                               rtol=2e-4, err_msg=str(run))


def _with_file_size_limit(limit, cmd):
  """`cmd` where a write past `limit` bytes fails (EFBIG), as on a full
  disk; SIGXFSZ is ignored so the write returns the error."""
  return [sys.executable, "-c",
          "import os, resource, signal, sys; "
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
          f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
          "os.execv(sys.argv[1], sys.argv[1:])", *cmd]


def test_save_failing_on_one_process_stops_every_process(
    tiny_dataset, tmp_path, monkeypatch):
  """Process 1's checkpoint writes fail (files over 100 kB, as on a full
  disk) and process 0's succeed: both stop with the SaveFailed message
  within seconds, where process 0 used to wait in Orbax's commit barrier
  for process 1 (20 minutes); the step before stays intact, and --resume
  continues from it with the uninterrupted run's losses."""
  # Default XLA flags: step 3's files only just exceed the 100 kB limit,
  # and at -O0 rounding moves their size under it (the failure comes a
  # step later).
  monkeypatch.delenv("XLA_FLAGS")
  args = ("mesh.preset=fsdp", "train.steps=4", "train.checkpoint_every=1")
  cfg = configlib.load(configlib.resolve("tokenizer"), [
      *TINY, *args, "train.log_every=1", f"data.path={tiny_dataset}"])
  loop.train(cfg, tmp_path / "ref")  # 1 process x 8 devices
  run = _copy_until(tmp_path / "ref", 2, tmp_path / "full")
  address = launcher.free_address()
  cmd = [*_train_cmd(tiny_dataset, run, *args), "--resume"]
  procs = [subprocess.Popen(
      _with_file_size_limit(100_000, cmd) if i == 1 else cmd,
      env=launcher.process_env(i, 2, address, 2), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    # Both pipes at once: process 1 writes pages of failed-write tracebacks,
    # and blocked on a full pipe it would miss JAX's shutdown barrier. The
    # timeout is the bound on "within seconds": far under Orbax's barrier
    # wait, and far over start-up, compile and 2 steps on a loaded CI core.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      errs = [out[1] for out in pool.map(
          lambda p: p.communicate(timeout=240), procs)]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, err) in enumerate(zip(procs, errs)):
    assert p.returncode == 2, f"process {i}: {err[-3000:]}"
    error = err[err.index("jaxworld: error:"):].splitlines()[0]
    assert "Saving checkpoint step 3" in error, error
    assert "Steps [2] are intact" in error, error
  assert "File too large" in errs[1]
  assert "process 1 of 2 failed to save its part of step 3" in errs[0]
  assert checkpoint.saved_steps(run) == [2]
  assert (run / "checkpoints" / f"3{checkpoint.UNFINISHED_SUFFIX}").is_dir()

  loop.train(cfg, run, resume=True)
  assert checkpoint.saved_steps(run) == [2, 3, 4]
  assert _metric(run, "loss") == _metric(tmp_path / "ref", "loss")


def test_tensor_group_across_processes_is_refused(tiny_dataset, tmp_path):
  result = _launch(2, 2, tmp_path / "tp", tiny_dataset, "mesh.fsdp=1",
                   "mesh.tensor=4", "train.steps=1")
  assert result.returncode == 2
  assert "Keep mesh.tensor x mesh.sequence within one host" in result.stderr
  assert not (tmp_path / "tp").exists()


def test_dead_process_stops_the_others(tiny_dataset, tmp_path):
  """SIGKILL one of two processes mid-training: the runtime names the lost
  process and stops the survivor within 60 s (jaxworld sets its heartbeat
  timeout to 20 s)."""
  address = launcher.free_address()
  run = tmp_path / "dead"
  cmd = _train_cmd(tiny_dataset, run, "mesh.fsdp=2", "train.steps=1000000",
                   "train.checkpoint_every=1000000")
  procs = [subprocess.Popen(cmd, env=launcher.process_env(i, 2, address, 2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  try:
    deadline = time.monotonic() + 180
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
      assert time.monotonic() < deadline, "training never started"
      assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    stopped_after = time.monotonic() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert procs[0].returncode != 0
  assert stopped_after < 60, stopped_after
  # The runtime names the lost process (task N is process N). Whether the
  # survivor's own collective fails first (then jaxworld says so too) or it
  # is stopped while waiting depends on where it was when the peer died.
  assert re.search(r"Task 1 heartbeat timeout|stopped sending heartbeats\)"
                   r":\s*1\b", err), err[-3000:]


# Process 1 stays alive (its heartbeats go on) but never joins the second
# collective, as a deadlocked or hung process would.
_STUCK_PEER = """
import sys, time
import numpy as np, jax
from jax.experimental import multihost_utils
from jaxworld.parallel import distributed
distributed.maybe_initialize_distributed()
multihost_utils.process_allgather(np.ones(2))
if jax.process_index() == 1:
  time.sleep(300)
try:
  multihost_utils.process_allgather(np.ones(2))
except Exception as e:
  print(distributed.lost_peer_message(e), flush=True)
  sys.exit(3)
"""


def test_stuck_peer_is_a_clear_error_in_bounded_time(monkeypatch):
  """A collective that a live peer never joins fails after
  JAXWORLD_COLLECTIVE_TIMEOUT_S (jaxworld sets XLA:CPU's collective timeout
  for gloo) with a message that says so, instead of waiting forever; and
  launch/local.py --timeout kills a job that does not finish."""
  monkeypatch.setenv("JAXWORLD_COLLECTIVE_TIMEOUT_S", "5")
  monkeypatch.setenv("JAXWORLD_HEARTBEAT_TIMEOUT_S", "5")  # also the exit wait
  address = launcher.free_address()
  procs = [subprocess.Popen(
      [sys.executable, "-c", _STUCK_PEER],
      env=launcher.process_env(i, 2, address, 1), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    out, err = procs[0].communicate(timeout=120)
  finally:
    for p in procs:
      p.kill()
      p.wait()
  # Not 3: at exit, JAX's shutdown barrier waits for the stuck peer too,
  # then aborts the process (as after a lost peer).
  assert procs[0].returncode != 0, err[-3000:]
  assert "waited 5 s for another process that is alive but never joined" \
      in out, out + err[-3000:]
  assert "Timed out waiting" in out

  start = time.monotonic()
  hung = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "local.py"), "--processes", "2",
       "--timeout", "2", "--", sys.executable, "-c",
       "import time; time.sleep(120)"], capture_output=True, text=True,
      timeout=60)
  assert hung.returncode == 124 and time.monotonic() - start < 30
  assert "did not finish within 2 s (--timeout)" in hung.stderr
