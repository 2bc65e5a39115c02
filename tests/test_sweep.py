"""`jaxworld sweep`: file format, point names, validation, and a whole sweep
run with stand-in commands (tiny Python scripts, no training)."""

import csv
import importlib.util
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from jaxworld import config as configlib
from jaxworld.errors import JaxWorldError
from jaxworld.eval import sweep

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "sweeps"

# Stand-in for a point's command: records the call, then writes what the real
# one would (metrics.jsonl for train, eval.json for eval), or fails.
#   argv: kind out_dir calls_file fail value
FAKE = r"""
import json, os, signal, sys, time
kind, out, calls, fail, value = sys.argv[1:6]
with open(calls, "a") as f:
  f.write(f"{kind} {out}\n")
if fail == "fail":
  print("loading the run...\nboom: the stand-in failed", flush=True)
  sys.exit(3)
if fail == "hang":  # a training run that saves and exits 75 on SIGTERM
  signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))
  open(os.path.join(out, "started"), "w").close()
  time.sleep(60)
  sys.exit(1)
if fail == "stop-once" and not os.path.exists(os.path.join(out, "stopped")):
  open(os.path.join(out, "stopped"), "w").close()
  sys.exit(75)
os.makedirs(out, exist_ok=True)
v = float(value)
if kind == "train":
  with open(os.path.join(out, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    f.write(json.dumps({"step": 2, "loss": 1.0 / v}) + "\n")
else:
  json.dump({"psnr_model": 20.0 + v, "psnr_copy_last": 18.0,
             "ssim_model": 0.5, "delta_psnr": v / 10,
             "gain_over_copy_last_db": 2.0 + v,
             "per_step": {"psnr_model": [1.0, 2.0]},
             "probe": {"accuracy": 0.75, "name": "linear"},
             "seconds": 0.125},
            open(os.path.join(out, "eval.json"), "w"))
"""


def _write(path: Path, text: str) -> Path:
  path.write_text(text)
  return path


@pytest.fixture
def dyn_run(tmp_path):
  """A directory that looks like a trained dynamics run to the sweep."""
  run = tmp_path / "dyn"
  run.mkdir()
  configlib.save(configlib.load(configlib.resolve("dynamics")),
                 run / "config.json")
  return run


def _fake_commands(calls: Path, fail=(), hang=(), stop_once=()):
  def commands(s, point):
    mode = lambda n: ("fail" if n in fail else "hang" if n in hang else
                      "stop-once" if n in stop_once else "ok")
    value = str(next(iter(point.settings.values())))
    argv = lambda kind, out, m: [sys.executable, "-c", FAKE, kind, str(out),
                                 str(calls), m, value]
    if s.run is not None:
      return [argv("eval", point.dir, mode(point.name))]
    cmds = [argv("train", point.dir, mode(point.name))]
    if point.eval_dir is not None:
      cmds.append(argv("eval", point.eval_dir, "ok"))
    return cmds
  return commands


def _calls(path: Path) -> list[str]:
  return path.read_text().split("\n")[:-1] if path.exists() else []


# ---------------------------------------------------------------- parsing


def test_grid_is_a_cartesian_product_after_base(tmp_path, dyn_run):
  f = _write(tmp_path / "s.toml", f"""
run = "{dyn_run}"
base = ["rollout.num_episodes=4"]
[grid]
rollout.maskgit_steps = [1, 4]
"rollout.temperature" = [0.0, 0.5]
""")
  s = sweep.load_sweep(f, tmp_path / "out")
  assert [p.name for p in s.points] == [
      "maskgit_steps-1_temperature-0.0", "maskgit_steps-1_temperature-0.5",
      "maskgit_steps-4_temperature-0.0", "maskgit_steps-4_temperature-0.5"]
  p = s.points[1]
  assert p.overrides == ("rollout.num_episodes=4", "rollout.maskgit_steps=1",
                         "rollout.temperature=0.5")
  assert p.settings == {"rollout.maskgit_steps": 1, "rollout.temperature": 0.5}
  assert p.dir == p.eval_dir == tmp_path / "out" / p.name
  assert s.keys == ["rollout.maskgit_steps", "rollout.temperature"]
  argv, = sweep.point_commands(s, p)
  assert argv[:5] == [sys.executable, "-m", "jaxworld.cli", "eval",
                      "--workdir"]
  assert argv[5:] == [str(dyn_run), "--out", str(p.dir), *p.overrides]


def test_training_points_and_their_commands(tmp_path):
  (tmp_path / "data").mkdir()
  (tmp_path / "tok").mkdir()
  f = _write(tmp_path / "s.toml", f"""
config = "dynamics"
base = ["data.path={tmp_path / 'data'}",
        "dynamics.tokenizer_workdir={tmp_path / 'tok'}"]
eval = ["rollout.num_episodes=2"]
points = [["train.learning_rate=1e-3", "rollout.maskgit_steps=2"],
          {{ train.learning_rate = 3e-3 }}]
""")
  s = sweep.load_sweep(f, tmp_path / "out")
  first, second = s.points
  assert [first.name, second.name] == [
      "learning_rate-0.001_maskgit_steps-2", "learning_rate-0.003"]
  assert s.config == str(configlib.resolve("dynamics"))
  train, evaluate = sweep.point_commands(s, first)
  assert train[3:5] == ["train", s.config]
  assert train[-3:] == ["--workdir", str(first.dir), "--resume"]
  assert "train.learning_rate=0.001" in train
  # The rollout keys of the trained config are also the eval's, then `eval`.
  assert evaluate[3:] == ["eval", "--workdir", str(first.dir), "--out",
                          str(first.dir / "eval"), "rollout.maskgit_steps=2",
                          "rollout.num_episodes=2"]


def test_tokenizer_points_are_not_evaluated(tmp_path):
  (tmp_path / "data").mkdir()
  f = _write(tmp_path / "s.toml", f"""
config = "tokenizer"
base = ["data.path={tmp_path / 'data'}"]
[grid]
train.seed = [0, 1]
""")
  s = sweep.load_sweep(f, tmp_path / "out")
  assert [p.eval_dir for p in s.points] == [None, None]
  assert all(len(sweep.point_commands(s, p)) == 1 for p in s.points)


def test_point_names_are_readable_safe_and_unique():
  names = sweep.point_names([
      {"rollout.maskgit_steps": 4}, {"train.seed": -1}, {"train.seed": 1},
      {"tokenizer.fsq_levels": [4, 4, 2]}, {"data.path": "a/b"},
      {"data.path": "a b"}, {}, {"train.learning_rate": 1e-5}])
  assert names[:4] == ["maskgit_steps-4", "seed--1", "seed-1",
                       "fsq_levels-4-4-2"]
  assert names[4] != names[5] and names[4].startswith("path-a-b-")
  assert names[6:] == ["base", "learning_rate-1e-05"]
  # Keys whose last parts clash are told apart by a longer suffix.
  assert sweep.point_names([{"tokenizer.encoder.width": 8,
                             "tokenizer.decoder.width": 8}]) == [
                                 "encoder.width-8_decoder.width-8"]
  long_name, = sweep.point_names([{"data.path": "x" * 200}])
  assert len(long_name) <= 80
  assert all("/" not in n and " " not in n for n in names)


def test_example_sweeps_load(tmp_path, monkeypatch, dyn_run):
  """The files in configs/sweeps/ are valid against the demo's layout."""
  demo = tmp_path / "runs" / "demo"
  (demo / "data").mkdir(parents=True)
  (demo / "tokenizer").mkdir()
  dyn_run.rename(demo / "dynamics")
  monkeypatch.chdir(tmp_path)  # relative paths resolve against the cwd
  files = sorted(EXAMPLES.glob("*.toml"))
  assert len(files) >= 3
  for f in files:
    s = sweep.load_sweep(f)
    assert s.points and s.points[0].dir.parent == Path("runs/sweeps") / f.stem


@pytest.mark.parametrize("text, match", [
    ('run = "DYN"\nconfig = "dynamics"\n[grid]\nrollout.seed = [1]',
     "exactly one of config"),
    ('[grid]\nrollout.seed = [1]', "exactly one of config"),
    ('run = "DYN"\nsteps = 3\n[grid]\nrollout.seed = [1]',
     "unknown top-level key.*steps.*Valid keys"),
    ('run = "DYN"\n[grid]', r"\[grid\] is empty"),
    ('run = "DYN"\n[grid]\nrollout.seed = 1', "must map to a non-empty list"),
    ('run = "DYN"\n[grid]\nrollout.seed = []', "must map to a non-empty list"),
    ('run = "DYN"', "exactly one of \\[grid\\]"),
    ('run = "DYN"\npoints = []', "non-empty list of points"),
    ('run = "DYN"\npoints = [["rollout.seed"]]', "section.key=value"),
    ('run = "DYN"\npoints = [["rollout.seed=1"], ["rollout.seed=1"]]',
     "set the same overrides"),
    ('run = "DYN"\n[grid]\ntrain.steps = [1, 2]',
     "only rollout.\\* keys, not 'train.steps=1'"),
    ('run = "DYN"\nbase = ["data.window=4"]\n[grid]\nrollout.seed = [1]',
     "only rollout"),
    ('run = "DYN"\n[grid]\nrollout.maskgit_stpes = [1]',
     "point maskgit_stpes-1: Unknown config key.*rollout.maskgit_stpes"),
    ('run = "DYN"\n[grid]\nrollout.maskgit_steps = [4, 0]',
     "point maskgit_steps-0: rollout.maskgit_steps=0 must be positive"),
    ('run = "NOPE"\n[grid]\nrollout.seed = [1]', "has no config.json"),
    ('config = "dynamics"\n[grid]\ntrain.seed = [1]', "data.path=''"),
    ('config = "nope"\n[grid]\ntrain.seed = [1]', "No config file 'nope'"),
    ('config = "tokenizer"\nbase = ["data.path=DATA"]\n'
     'eval = ["rollout.seed=1"]\n[grid]\ntrain.seed = [1]',
     "no point trains a dynamics model"),
    ('config = "dynamics"\neval = ["train.steps=1"]\n[grid]\ntrain.seed=[1]',
     "eval overrides may set only rollout"),
    ('run = "DYN"\nbase = "rollout.seed=1"\n[grid]\nrollout.seed = [1]',
     "base must be a list of override strings"),
])
def test_bad_sweep_files_fail_with_the_fix(tmp_path, dyn_run, text, match):
  (tmp_path / "data").mkdir()
  text = text.replace("DYN", str(dyn_run)).replace("DATA",
                                                   str(tmp_path / "data"))
  f = _write(tmp_path / "s.toml", text)
  with pytest.raises(JaxWorldError, match=match):
    sweep.run_sweep(f, tmp_path / "out", commands=lambda s, p: 1 / 0)
  assert not (tmp_path / "out").exists()  # nothing ran or was written


def test_missing_file_and_bad_parallel(tmp_path):
  with pytest.raises(JaxWorldError, match="does not exist.*configs/sweeps"):
    sweep.load_sweep(tmp_path / "nope.toml")
  with pytest.raises(JaxWorldError, match="does not parse"):
    sweep.load_sweep(_write(tmp_path / "s.toml", "run = "))
  with pytest.raises(JaxWorldError, match="--parallel 0"):
    sweep.run_sweep(tmp_path / "s.toml", parallel=0)


# ---------------------------------------------------------------- running


def test_eval_sweep_runs_in_parallel_resumes_and_reports(tmp_path, dyn_run,
                                                         caplog):
  caplog.set_level("INFO")
  f = _write(tmp_path / "s.toml", f"""
run = "{dyn_run}"
[grid]
rollout.maskgit_steps = [1, 2, 4, 8]
""")
  out, calls = tmp_path / "out", tmp_path / "calls.txt"
  rows = sweep.run_sweep(f, out, parallel=2, commands=_fake_commands(
      calls, fail={"maskgit_steps-4"}))
  assert [r["status"] for r in rows] == ["done", "done", "failed", "done"]
  assert sweep.exit_status(rows) == 1
  assert sorted(_calls(calls)) == sorted(
      f"eval {out / n}" for n in ("maskgit_steps-1", "maskgit_steps-2",
                                  "maskgit_steps-4", "maskgit_steps-8"))
  assert "failed (exit 3)" in caplog.text and "boom" in caplog.text
  assert "boom" in (out / "maskgit_steps-4" / "log.txt").read_text()
  done = rows[3]
  assert done["rollout.maskgit_steps"] == 8 and done["psnr_model"] == 28.0
  assert done["probe.accuracy"] == 0.75  # nested scalars, dotted
  assert done["eval_seconds"] == 0.125 and done["seconds"] != 0.125
  assert "per_step.psnr_model" not in done and "probe.name" not in done
  assert "train_loss" not in done  # evaluation only

  with (out / "results.csv").open() as fh:
    table = list(csv.DictReader(fh))
  assert list(table[0])[:9] == [
      "name", "rollout.maskgit_steps", "status", "seconds", "psnr_model",
      "psnr_copy_last", "gain_over_copy_last_db", "delta_psnr", "ssim_model"]
  assert [t["status"] for t in table] == ["done", "done", "failed", "done"]
  assert table[2]["psnr_model"] == "" and float(table[1]["psnr_model"]) == 22
  md = (out / "results.md").read_text().splitlines()
  assert md[0].startswith("| name | rollout.maskgit_steps | status |")
  assert md[5].startswith("| maskgit_steps-8 | 8 | done |")
  assert "- maskgit_steps-4: failed; log:" in md[-1]
  if importlib.util.find_spec("matplotlib"):
    for metric in ("psnr_model", "delta_psnr", "ssim_model"):
      assert (out / f"plot_{metric}.png").stat().st_size > 1000
    assert not (out / "plot_train_loss.png").exists()  # plot what exists

  # A rerun skips the finished points and retries the failed one.
  caplog.clear()
  rows = sweep.run_sweep(f, out, parallel=2, commands=_fake_commands(calls))
  assert [r["status"] for r in rows] == ["done"] * 4
  assert sweep.exit_status(rows) == 0
  assert _calls(calls)[4:] == [f"eval {out / 'maskgit_steps-4'}"]
  assert caplog.text.count("finished earlier; skipped") == 3
  assert rows[0]["seconds"] == pytest.approx(
      json.loads((out / "maskgit_steps-1" / "result.json").read_text())[
          "seconds"], abs=0.1)


def test_training_sweep_stops_resumes_and_shows_losses(tmp_path):
  (tmp_path / "data").mkdir()
  (tmp_path / "tok").mkdir()
  f = _write(tmp_path / "s.toml", f"""
config = "dynamics"
base = ["data.path={tmp_path / 'data'}",
        "dynamics.tokenizer_workdir={tmp_path / 'tok'}"]
[grid]
dynamics.backbone.width = [32, 64]
""")
  out, calls = tmp_path / "out", tmp_path / "calls.txt"
  fake = _fake_commands(calls, stop_once={"width-64"})
  rows = sweep.run_sweep(f, out, commands=fake)
  assert [r["status"] for r in rows] == ["done", "stopped"]
  assert sweep.exit_status(rows) == 75
  assert rows[0]["train_loss"] == pytest.approx(1 / 32)
  assert rows[0]["psnr_model"] == 52.0
  assert not (out / "width-64" / "result.json").exists()

  rows = sweep.run_sweep(f, out, commands=fake)
  assert [r["status"] for r in rows] == ["done", "done"]
  assert _calls(calls) == [f"train {out / 'width-32'}",
                           f"eval {out / 'width-32' / 'eval'}",
                           f"train {out / 'width-64'}",
                           f"train {out / 'width-64'}",
                           f"eval {out / 'width-64' / 'eval'}"]
  header = (out / "results.md").read_text().splitlines()[0]
  assert header.startswith("| name | dynamics.backbone.width | status | "
                           "seconds | train_loss | psnr_model |")

  # Other overrides in the same --out: refuse rather than mix results.
  _write(f, f.read_text().replace('"]\n[grid]', '", "train.steps=7"]\n[grid]'))
  with pytest.raises(JaxWorldError, match=(
      r"finished run of another point \(overrides '.*' there, '.* "
      r"train.steps=7 .*' here\)\. Pass another --out")):
    sweep.run_sweep(f, out, commands=fake)


def test_sigterm_saves_running_points_and_starts_no_more(tmp_path):
  (tmp_path / "data").mkdir()
  f = _write(tmp_path / "s.toml", f"""
config = "tokenizer"
base = ["data.path={tmp_path / 'data'}"]
[grid]
train.seed = [1, 2]
""")
  out, calls = tmp_path / "out", tmp_path / "calls.txt"

  def send_sigterm_once_started():
    deadline = time.time() + 30
    while not (out / "seed-1" / "started").exists() and time.time() < deadline:
      time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGTERM)

  before = signal.getsignal(signal.SIGTERM)
  threading.Thread(target=send_sigterm_once_started, daemon=True).start()
  rows = sweep.run_sweep(f, out, commands=_fake_commands(calls,
                                                         hang={"seed-1"}))
  assert [r["status"] for r in rows] == ["stopped", "pending"]
  assert _calls(calls) == [f"train {out / 'seed-1'}"]
  assert sweep.exit_status(rows) == 75
  assert (out / "results.md").read_text().endswith("- seed-2: not started\n")
  assert signal.getsignal(signal.SIGTERM) == before  # restored
