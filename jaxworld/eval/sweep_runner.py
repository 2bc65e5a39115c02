"""Runs a sweep's points as subprocesses, a few at a time.

A job is a point's directory and its commands, run one after another (each
must exit 0); their output goes to <dir>/log.txt. Progress goes to the log,
one line per event. Stopping: the first Ctrl-C (or SIGTERM to the sweep)
sends SIGTERM to every running command, which `jaxworld train` answers by
saving a checkpoint and exiting 75; no new job starts. A second Ctrl-C sends
SIGINT (training aborts at once), a third SIGKILL.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# Exit status of `jaxworld train` stopped by a signal after saving
# (train/preemption.EXIT_PREEMPTED; not imported, as that imports jax).
EXIT_STOPPED = 75


@dataclasses.dataclass(frozen=True)
class Job:
  """One point to run: `commands` in order, inside `dir`'s log."""
  name: str
  label: str  # how progress lines name it, e.g. "[2/4] maskgit_steps-2"
  dir: Path
  commands: tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Outcome:
  status: str  # done, failed, stopped (run again to resume) or pending
  seconds: float
  returncode: int | None = None


def _log_tail(path: Path, lines: int = 8) -> str:
  text = path.read_text(errors="replace") if path.exists() else ""
  return "\n".join("    " + line for line in text.splitlines()[-lines:])


class _Running:
  """A job in flight: its remaining commands and the current process."""

  def __init__(self, job: Job):
    self.job, self.remaining = job, list(job.commands)
    self.t0 = time.perf_counter()
    self.proc: subprocess.Popen | None = None
    job.dir.mkdir(parents=True, exist_ok=True)
    self.start_next()

  def start_next(self) -> None:
    argv = self.remaining.pop(0)
    with (self.job.dir / "log.txt").open("a") as f:
      f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ "
              f"{shlex.join(argv)}\n")
      f.flush()
      # Own session: a Ctrl-C at the terminal reaches only the sweep, which
      # then signals each command exactly once (see run_jobs).
      self.proc = subprocess.Popen(
          argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
          start_new_session=True,
          env={**os.environ, "PYTHONUNBUFFERED": "1"})  # a live log.txt

  @property
  def seconds(self) -> float:
    return time.perf_counter() - self.t0


def _raise_interrupt(signum: int, frame) -> None:
  del signum, frame
  raise KeyboardInterrupt


def _finish(run: _Running, rc: int, stopping: bool,
            on_done: Callable[[Job, float], None]) -> Outcome:
  job, seconds = run.job, run.seconds
  if rc == 0 and not run.remaining:
    on_done(job, seconds)
    log.info("%s: finished in %.1fs", job.label, seconds)
    return Outcome("done", seconds, rc)
  if rc in (0, EXIT_STOPPED) or (stopping and rc < 0):
    log.info("%s: stopped after %.1fs; run the sweep again to resume it",
             job.label, seconds)
    return Outcome("stopped", seconds, rc)
  log.warning("%s: failed (exit %d) after %.1fs; last lines of %s:\n%s",
              job.label, rc, seconds, job.dir / "log.txt",
              _log_tail(job.dir / "log.txt"))
  return Outcome("failed", seconds, rc)


def run_jobs(jobs: Sequence[Job], parallel: int,
             on_done: Callable[[Job, float], None]) -> dict[str, Outcome]:
  """Runs `jobs`, up to `parallel` at once; returns name -> Outcome.

  `on_done(job, seconds)` is called as soon as a job's last command exits 0
  (the sweep writes its result marker there, so a sweep killed later still
  skips it).
  """
  pending, running = list(jobs), []
  outcomes: dict[str, Outcome] = {}
  stopping, signals_sent, previous = False, 0, None
  if threading.current_thread() is threading.main_thread():
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
  try:
    while running or (pending and not stopping):
      try:
        while pending and len(running) < parallel and not stopping:
          job = pending.pop(0)
          running.append(_Running(job))
          log.info("%s: started (log: %s)", job.label, job.dir / "log.txt")
        for run in list(running):
          rc = run.proc.poll()
          if rc is None:
            continue
          if rc == 0 and run.remaining and not stopping:
            run.start_next()
            continue
          running.remove(run)
          outcomes[run.job.name] = _finish(run, rc, stopping, on_done)
        time.sleep(0.05)
      except KeyboardInterrupt:
        # 1st: save and stop (SIGTERM); 2nd: abort (SIGINT); 3rd: kill.
        sig = (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)[
            min(signals_sent, 2)]
        signals_sent += 1
        if not stopping:
          log.warning("interrupted: asking %d running point(s) to save and "
                      "stop; %d not started. Ctrl-C again aborts them.",
                      len(running), len(pending))
        stopping = True
        for run in running:
          if run.proc.poll() is None:
            run.proc.send_signal(sig)
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    for run in running:  # only after an error in the sweep itself
      if run.proc.poll() is None:
        run.proc.terminate()
        run.proc.wait()
  for job in pending:
    outcomes[job.name] = Outcome("pending", 0.0)
  return outcomes
