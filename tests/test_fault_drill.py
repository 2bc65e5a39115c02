"""The fault drill (bench/fault_drill.py) in small: three kinds of fault in a
row on 1 and 2 processes, then the run must end where an uninterrupted one
ends. The full drill (20 random faults) is in docs/benchmarks.md."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_small_drill_survives_every_fault_and_ends_equal(tmp_path):
  """kill -9 (1 process); a SIGTERM stop (1 process), then a training
  record that the next segment reads is damaged (data.bad_records=skip); a
  full disk on 2 processes (every process stops with SaveFailed, none
  hangs); the run ends on 1 process. Loss curve, batch fingerprints and
  final parameters equal an uninterrupted run on the same damaged data.

  Cheap on purpose: 8 steps; 1-process segments except the one whose fault
  needs several (kill -9 of one of several, SIGTERM to one and damaged
  steps on several processes are tests/test_multiprocess.py and
  tests/test_fault_tolerance.py)."""
  result = subprocess.run(
      [sys.executable, str(ROOT / "bench" / "fault_drill.py"),
       "--faults-list", "kill9_all:1,corrupt_record:1,disk_full:2",
       "--processes", "1", "--steps", "8", "--reference-processes", "1",
       "--segment-timeout", "180", "--workdir", str(tmp_path)],
      capture_output=True, text=True, timeout=900)
  out = result.stdout
  assert result.returncode == 0, out + result.stderr[-3000:]
  assert "damaged Record" in out, out  # the corrupt record was placed
  assert "exit codes [2, 2]" in out, out  # both processes stopped
  assert "faults survived 3/3" in out, out
  assert "final params equal: yes" in out, out
  assert "loss curve within rtol 2e-4: yes; batch fingerprints equal: yes" \
      in out, out
