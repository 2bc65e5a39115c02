"""Fault drill: a small multi-process training run survives N random faults
in a row, resuming after each on a random process count, and ends where an
uninterrupted run ends.

    python bench/fault_drill.py --faults 20 --seed 0
    python bench/fault_drill.py --faults-list kill9_all:1,corrupt_record:1,\
        disk_full:2 --processes 1 --steps 8 --reference-processes 1

(the second is the small drill that tests/test_fault_drill.py runs).

The run is the tiny tokenizer (configs/tiny.toml: encoder and decoder width
32, FSDP over 4 CPU devices split over 1, 2 or 4 processes, gloo), saved
every step, reading its data with data.bad_records=skip. Each fault is one
of

    kill9_one        kill -9 of one process at a random step
    kill9_all        kill -9 of every process at a random step
    sigterm          SIGTERM to one process: all save that step, exit 75
    truncate_newest  a SIGTERM stop, then the newest checkpoint truncated:
                     the resume falls back to the step before it
    disk_full        every write over 100 kB fails (RLIMIT_FSIZE, as on a
                     full disk): the first save stops every process with
                     SaveFailed (status 2)
    corrupt_record   a SIGTERM stop, then one training record that the next
                     segment reads (global batch <stop step> to 2 later) is
                     damaged on disk (its checksum fails): the run skips it
                     for the next record in index order and says so

and the next segment resumes with --resume. A fault is survived when it
ended the segment as it should (no hang, no other error) and the next
segment resumed from the newest intact step and trained on (after a
corrupt record, and if it trained past that batch, one of its processes
logged the skip). At the end the loss curve, the batch fingerprints and the
final parameters are compared with an uninterrupted run (2 processes, or
--reference-processes), and the drill prints

    faults survived K/N, steps lost L, final params equal: yes/no

(steps lost: steps trained and then trained again after a resume).
Parameters count as equal within rtol 2e-4, atol 1e-5 (fp32: 1, 2 and 4
processes reduce in different orders); the largest difference is printed.
Every segment has a time limit; a hang ends the drill as a failure.

What "equal" means with corrupt records: the drilled run trains on data
that changes under it, so the uninterrupted run runs after the drill, on a
copy of the clean data with the same records damaged the same way. That is
the data the drilled run saw at every step it kept: the dataset holds at
least steps x batch episodes, so the one global stream reads each episode
once (no second epoch), and a record is damaged only if its first read is
at or after the batch the next segment resumes at, and if no damaged record
would be replaced by it. So every kept step read, before and after the
damage, what the uninterrupted run reads, and equal final parameters mean
that faults, resumes and skips changed nothing the run computed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "launch")]  # this checkout's jaxworld
import drill_data  # noqa: E402
import local as launcher  # noqa: E402

FAULTS = ("kill9_one", "kill9_all", "sigterm", "truncate_newest", "disk_full",
          "corrupt_record")
DEVICES = 4  # in every segment, so the mesh (fsdp=4) is the same
FILE_SIZE_LIMIT = 100_000  # bytes; the tiny model's arrays file is larger


def _train_cmd(data: Path, run: Path, steps: int) -> list[str]:
  return [sys.executable, "-m", "jaxworld.cli", "train",
          str(drill_data.TINY), f"data.path={data}", "data.bad_records=skip",
          "tokenizer.encoder.width=32", "tokenizer.decoder.width=32",
          "mesh.preset=fsdp", f"train.steps={steps}", "train.log_every=1",
          "train.checkpoint_every=1", "train.keep_checkpoints=3",
          "--workdir", str(run)]


def _with_file_size_limit(cmd: list[str]) -> list[str]:
  """`cmd` in which a write past FILE_SIZE_LIMIT fails (EFBIG); SIGXFSZ is
  ignored so the write returns the error instead of killing the process."""
  return [sys.executable, "-c",
          "import os, resource, signal, sys; "
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
          f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT},"
          f" {FILE_SIZE_LIMIT})); os.execv(sys.argv[1], sys.argv[1:])", *cmd]


def _logged(run: Path) -> dict[int, dict]:
  path = run / "metrics.jsonl"
  if not path.exists():
    return {}
  rows = {}
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:  # a line cut by kill -9; replaced on resume
      continue
    rows[row["step"]] = row
  return rows


def _steps(run: Path) -> list[int]:
  """Saved steps (finished saves), oldest first."""
  folder = run / "checkpoints"
  return sorted(int(p.name) for p in folder.glob("*")
                if p.name.isdigit()) if folder.is_dir() else []


def _newest_step(run: Path) -> int | None:
  return (_steps(run) or [None])[-1]


def _truncate_newest(run: Path) -> int:
  """Halves the largest file of the newest step (its arrays); returns it."""
  step = _newest_step(run)
  files = [p for p in (run / "checkpoints" / str(step)).rglob("*")
           if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])
  return step


def _copy(stream, path: Path) -> None:
  with path.open("wb") as log:
    shutil.copyfileobj(stream, log)


class Segment:
  """One launch of the run on `processes` processes, maybe with a fault."""

  live: list[subprocess.Popen] = []  # killed if the drill itself stops

  def __init__(self, index: int, run: Path, cmd: list[str], processes: int,
               env: dict[str, str], logs: Path, piped: bool = False):
    """`piped`: output goes through a pipe that this process copies to the
    log, so that a file-size limit on the command does not cut its log."""
    address = launcher.free_address()
    self.index, self.run, self.processes = index, run, processes
    self.log_paths = [logs / f"segment{index:02d}_p{i}.log"
                      for i in range(processes)]
    self.procs, self._copiers = [], []
    for i, path in enumerate(self.log_paths):
      # One process runs plain, as `jaxworld train` does: its own SIGTERM
      # handler stops it. In a one-process jax.distributed job JAX's
      # preemption service owns SIGTERM, and under load it let a run go on
      # to its end after the notice (a CI run of 2026-12-02).
      proc_env = {**(launcher.cpu_env(DEVICES) if processes == 1 else
                     launcher.process_env(i, processes, address,
                                          DEVICES // processes)), **env}
      with path.open("w") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE if piped else log,
            stderr=subprocess.STDOUT, env=proc_env)
      if piped:
        copier = threading.Thread(target=_copy, args=(proc.stdout, path))
        copier.start()
        self._copiers.append(copier)
      self.procs.append(proc)
      Segment.live.append(proc)

  def trained_to(self) -> int:
    """The last step this segment trained (its process 0's progress line;
    metrics.jsonl still holds the steps of earlier segments)."""
    steps = re.findall(r"\] step (\d+)/", self.log())
    return int(steps[-1]) if steps else 0

  def wait_for_step(self, step: int, deadline: float) -> bool:
    """True once this segment trained `step`; False if it ended first."""
    while self.trained_to() < step:
      if any(p.poll() is not None for p in self.procs):
        return self.trained_to() >= step
      if time.monotonic() > deadline:
        return False
      time.sleep(0.1)
    return True

  def wait(self, deadline: float) -> list[int | None]:
    """Exit codes (None: still running at the deadline, then killed)."""
    for p in self.procs:
      try:
        p.wait(timeout=max(deadline - time.monotonic(), 0.1))
      except subprocess.TimeoutExpired:
        pass
    codes = [p.poll() for p in self.procs]
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()
      Segment.live.remove(p)
    for copier in self._copiers:
      copier.join()
    return codes

  def log(self, i: int = 0) -> str:
    return self.log_paths[i].read_text(errors="replace")

  def resumed_from(self) -> int | None:
    found = re.search(r"resumed \S+ from step (\d+)", self.log())
    return int(found.group(1)) if found else None


def _run_uninterrupted(args, data: Path, run: Path, env, logs: Path) -> None:
  n = args.reference_processes
  seg = Segment(99, run, _train_cmd(data, run, args.steps), n, env, logs)
  codes = seg.wait(time.monotonic() + args.segment_timeout)
  if codes != [0] * n:
    sys.exit(f"the uninterrupted run failed ({codes}); see {seg.log_paths}")


def _inject(fault: str, seg: Segment, rng: np.random.Generator, start: int,
            steps: int, deadline: float, data: Path, damaged: list
            ) -> tuple[bool, str]:
  """Runs the fault on a started segment; (as it should, what happened).
  `data`, `damaged`: the drilled run's data and its damaged records."""
  if fault == "disk_full":  # the segment itself runs under the size limit
    codes = seg.wait(deadline)
    # Every process stops with SaveFailed, also those whose own files fit.
    ok = codes == [2] * seg.processes and all(
        "jaxworld: error: Saving checkpoint step" in seg.log(i)
        for i in range(seg.processes))
    return ok, f"stopped by a failed save, exit codes {codes}"
  target = min(start + int(rng.integers(1, 4)), steps - 1)
  if not seg.wait_for_step(target, deadline):
    seg.wait(time.monotonic())
    return False, f"did not reach step {target}"
  victims = list(range(seg.processes))
  if fault != "kill9_all":
    victims = [int(rng.integers(seg.processes))]
  sig = signal.SIGKILL if fault.startswith("kill9") else signal.SIGTERM
  for i in victims:
    seg.procs[i].send_signal(sig)
  codes = seg.wait(deadline)
  what = f"{sig.name} to process(es) {victims} after step {target}, " \
         f"exit codes {codes}"
  if None in codes:
    return False, what + " (hung)"
  if sig == signal.SIGTERM:
    if codes != [75] * seg.processes:
      return False, what
    if fault == "truncate_newest":
      truncated = _truncate_newest(seg.run)
      what += f"; truncated step {truncated}"
    if fault == "corrupt_record":
      # The next segment resumes at the step saved now (global batch
      # `stopped`) and reads on from there.
      found = drill_data.corrupt_record(data, _newest_step(seg.run), steps,
                                        damaged, rng)
      what += (f"; damaged {found[1]}, first read in global batch "
               f"{found[0]}" if found else "; no batch left to damage")
  return True, what


def _compare(ref: Path, run: Path, steps: int) -> tuple[bool, float, bool,
                                                         bool]:
  """(params equal, max abs difference, losses close, fingerprints equal)."""
  import jax
  from jaxworld.runs import assemble, checkpoint
  cfg = checkpoint.read_config(run)
  mesh = assemble.one_device_mesh()
  _, a = assemble.restore(cfg, "tokenizer", ref, steps, mesh)
  _, b = assemble.restore(cfg, "tokenizer", run, steps, mesh)
  pairs = [(np.asarray(x), np.asarray(y))
           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  equal = all(np.allclose(x, y, rtol=2e-4, atol=1e-5) for x, y in pairs)
  diff = max(float(np.max(np.abs(x - y))) for x, y in pairs)
  want, got = _logged(ref), _logged(run)
  losses = sorted(got) == list(range(1, steps + 1)) and np.allclose(
      [got[s]["loss"] for s in sorted(want)],
      [want[s]["loss"] for s in sorted(want)], rtol=2e-4)
  prints = all(got[s]["batch_fingerprint"] == want[s]["batch_fingerprint"]
               for s in want)
  return equal, diff, losses, prints


def main() -> int:
  # On SIGTERM or Ctrl-C, stop the segment's processes too.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  try:
    return _drill()
  finally:
    for proc in Segment.live:
      proc.kill()


def _plan(args, rng: np.random.Generator) -> list[tuple[str, int | None]]:
  """(fault, process count or None: drawn when the segment starts)."""
  if not args.faults_list:
    return [(str(rng.choice(FAULTS)), None) for _ in range(args.faults)]
  plan = []
  for item in args.faults_list.split(","):
    fault, _, count = item.partition(":")
    if fault not in FAULTS:
      sys.exit(f"--faults-list: unknown fault {fault!r}; the faults are "
               f"{', '.join(FAULTS)}")
    plan.append((fault, int(count) if count else None))
  return plan


def _drill() -> int:
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--faults", type=int, default=20)
  p.add_argument("--faults-list", default="",
                 help="Faults in this order instead of --faults random ones, "
                      "comma-separated, each maybe with the process count of "
                      "its segment: kill9_one:2,corrupt_record:1,disk_full:2.")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=0,
                 help="Training steps (default: 3 per fault + 6).")
  p.add_argument("--processes", default="1,2,4",
                 help="Process counts to resume on, chosen at random.")
  p.add_argument("--reference-processes", type=int, default=2,
                 help="Processes of the uninterrupted run.")
  p.add_argument("--segment-timeout", type=float, default=300)
  p.add_argument("--workdir", default="",
                 help="Where to put data and runs (default: a temp dir, "
                      "deleted afterwards).")
  args = p.parse_args()
  counts = [int(c) for c in args.processes.split(",")]
  rng = np.random.default_rng(args.seed)
  plan = _plan(args, rng)
  args.faults = len(plan)
  args.steps = args.steps or 3 * args.faults + 6
  work = Path(args.workdir or tempfile.mkdtemp(prefix="fault_drill_"))
  work.mkdir(parents=True, exist_ok=True)
  logs = work / "logs"
  logs.mkdir(exist_ok=True)
  # Segments take their XLA_FLAGS from launcher.cpu_env: this
  # process's, with their own device count and XLA's default scheduler.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  # The segments run this checkout's jaxworld too, whatever is installed.
  env["PYTHONPATH"] = os.pathsep.join(
      [str(ROOT)] + [x for x in [env.get("PYTHONPATH")] if x])
  env.update(JAXWORLD_HEARTBEAT_TIMEOUT_S="10",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  # Every segment compiles the same step: compile it once (or use the
  # caller's cache, e.g. the test suite's).
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(work / "jax_cache"))
  t0 = time.monotonic()
  # One epoch covers the run: each episode is read once (module docstring).
  clean = drill_data.make_data(work, max(args.steps * drill_data.BATCH, 16),
                               env)
  damaged: list[tuple[str, int, int]] = []  # (shard, record, episode)
  data = drill_data.copy_data(clean, work / "data_drilled", damaged)
  ref, run = work / "uninterrupted", work / "drilled"
  shutil.rmtree(run, ignore_errors=True)

  survived, lost, pending = 0, 0, None  # pending: (fault, ok, last step, skip)
  truncated: set[int] = set()  # truncated steps not yet moved aside
  for index in range(args.faults + 1):
    final = index == args.faults
    fault, processes = plan[index] if not final else (None, None)
    processes = processes or int(rng.choice(counts))
    cmd = _train_cmd(data, run, args.steps)
    if (run / "config.json").exists():
      cmd.append("--resume")
    if fault == "disk_full":
      cmd = _with_file_size_limit(cmd)
    start = _newest_step(run) or 0
    # The step this segment must resume from: the newest intact one. A
    # truncated step stays damaged until a resume moves it aside.
    truncated = {s for s in truncated
                 if not (run / "checkpoints_damaged" / str(s)).exists()}
    intact = [s for s in _steps(run) if s not in truncated]
    expect = intact[-1] if intact else None
    seg = Segment(index, run, cmd, processes, env, logs,
                  piped=fault == "disk_full")
    deadline = time.monotonic() + args.segment_timeout
    if final:
      codes = seg.wait(deadline)
      ok, what = codes == [0] * processes, f"exit codes {codes}"
    else:
      ok, what = _inject(fault, seg, rng, start, args.steps, deadline, data,
                         damaged)
      found = re.search(r"truncated step (\d+)", what)
      if found:
        truncated.add(int(found.group(1)))
    resumed = seg.resumed_from()
    if resumed is None and expect is None and _logged(run):
      resumed = 0  # nothing saved yet: a fresh start is the resume
    if pending is not None:  # the previous fault: did this segment resume?
      p_fault, p_ok, p_reached, p_skip = pending
      why = None
      if not p_ok:
        why = "the fault did not end its segment as it should"
      elif resumed is None or resumed != (expect or 0):
        why = f"resumed from {resumed}, not {expect}"
      elif p_skip and seg.trained_to() > p_skip[0] and not any(
          f"skipping: {p_skip[1]} " in seg.log(i) for i in range(processes)):
        why = f"trained past global batch {p_skip[0]} without skipping " \
              f"{p_skip[1]}"
      if why is None:
        survived += 1
        lost += max(p_reached - resumed, 0)
      else:
        print(f"  fault {index} ({p_fault}) not survived: {why} "
              f"({seg.log_paths[0]})")
    reached = max(_logged(run), default=0)
    print(f"segment {index:2d} on {processes} process(es), resumed from "
          f"{resumed if resumed is not None else '-'}: "
          f"{fault or 'run to the end'}: {what}", flush=True)
    if not ok:
      print(f"  unexpected; see {seg.log_paths}")
      if final or None in [p.poll() for p in seg.procs]:
        break
    skip = re.search(r"damaged (.+), first read in global batch (\d+)", what)
    pending = ((fault, ok, reached,
                (int(skip.group(2)), skip.group(1)) if skip else None)
               if not final else None)

  finished = max(_logged(run), default=0) == args.steps and _newest_step(
      run) == args.steps
  # The uninterrupted run reads what the drilled run read: the clean data
  # with the same records damaged (module docstring). It is kept for the
  # next drill in this --workdir if that damages the same records.
  made_for = ref / "drill_damaged.json"
  wanted = json.dumps({"damaged": damaged, "data": json.loads(
      (clean / "dataset.json").read_text())["splits"]["train"],
                       "processes": args.reference_processes})
  if (finished and _newest_step(ref) == args.steps and made_for.exists()
      and made_for.read_text() == wanted):
    print(f"uninterrupted run: {ref} (kept from an earlier drill)")
  elif finished:
    shutil.rmtree(ref, ignore_errors=True)
    t_ref = time.monotonic()
    ref_data = drill_data.copy_data(clean, work / "data_reference", damaged)
    _run_uninterrupted(args, ref_data, ref, env, logs)
    made_for.write_text(wanted)
    print(f"uninterrupted run: {args.steps} steps on "
          f"{args.reference_processes} process(es), {len(damaged)} damaged "
          f"record(s) ({time.monotonic() - t_ref:.0f} s)", flush=True)
  equal, diff, losses, prints = (_compare(ref, run, args.steps) if finished
                                 else (False, float("nan"), False, False))
  print(f"loss curve within rtol 2e-4: {'yes' if losses else 'no'}; batch "
        f"fingerprints equal: {'yes' if prints else 'no'}; largest param "
        f"difference {diff:.2e} ({time.monotonic() - t0:.0f} s in all)")
  print(f"faults survived {survived}/{args.faults}, steps lost {lost}, "
        f"final params equal: {'yes' if equal else 'no'}")
  if not args.workdir:
    shutil.rmtree(work, ignore_errors=True)
  return 0 if (survived == args.faults and equal and losses) else 1


if __name__ == "__main__":
  sys.exit(main())
