"""The one trainer end to end: CLI, checkpoints, resume, errors before compile."""

import json
import shutil

import numpy as np
import pytest

from conftest import TINY
from jaxworld import cli


def _losses(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines)}


@pytest.fixture
def demo_run(tiny_demo):
  return tiny_demo


def test_demo_writes_everything(demo_run):
  summary = json.loads((demo_run / "summary.json").read_text())
  for key in ("psnr_model", "psnr_copy_last", "psnr_tokenizer"):
    assert np.isfinite(summary[key])
  assert len(summary["per_step"]["psnr_model"]) == 3
  assert set(summary["stage_seconds"]) >= {"data", "tokenizer", "dynamics",
                                           "eval", "total"}
  assert (demo_run / "eval" / "rollout.gif").stat().st_size > 0
  for stage in ("tokenizer", "dynamics"):
    run = demo_run / stage
    assert sorted(_losses(run)) == [1, 2, 3, 4]
    assert (run / "config.json").exists() and any((run / "tb").iterdir())
    layout = (run / "shardings.txt").read_text()
    assert "model/backbone/blocks/mlp/up/kernel" in layout or \
        "model/encoder/blocks/mlp/up/kernel" in layout
    assert "('layers', 'embed', 'mlp')" in layout
    assert sorted(p.name for p in (run / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["2", "4"]


def test_demo_again_skips_finished_stages(demo_run, capsys):
  before = json.loads((demo_run / "summary.json").read_text())
  # Another recipe than the one that made the directory: a clear refusal.
  assert cli.main(["demo", "--workdir", str(demo_run), *TINY]) == 2
  assert "--recipe dynamics" in capsys.readouterr().err
  # 1: the tiny demo misses the bar again (tests/test_demo.py).
  assert cli.main(["demo", "--workdir", str(demo_run), "--recipe", "dynamics",
                   *TINY, "train.log_every=1"]) == 1
  after = json.loads((demo_run / "summary.json").read_text())
  assert after["psnr_model"] == before["psnr_model"]  # same models, same rollout
  assert after["stage_seconds"]["tokenizer"] < 5  # nothing compiled or trained
  assert after["final_train_metrics"] == before["final_train_metrics"]


def test_resume_continues_with_identical_losses(demo_run, tmp_path):
  run = tmp_path / "dynamics"
  shutil.copytree(demo_run / "dynamics", run)
  before = _losses(run)
  shutil.rmtree(run / "checkpoints" / "4")  # as if killed after step 2
  args = ["train", "dynamics", *TINY, "train.log_every=1",
          f"data.path={demo_run / 'data'}",
          f"dynamics.tokenizer_workdir={demo_run / 'tokenizer'}",
          "--workdir", str(run)]
  assert cli.main(args + ["--resume"]) == 0
  after = _losses(run)
  # Steps 3-4 were recomputed from the step-2 checkpoint, bit for bit, and
  # each step is logged once.
  lines = (run / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
  np.testing.assert_array_equal([after[s] for s in (1, 2, 3, 4)],
                                [before[s] for s in (1, 2, 3, 4)])
  assert json.loads((run / "config.json").read_text())["dynamics"][
      "tokenizer_step"] == 4  # the tokenizer checkpoint it was trained on


def test_rollout_command(demo_run, tmp_path, capsys):
  out = tmp_path / "roll"
  assert cli.main(["rollout", "--workdir", str(demo_run / "dynamics"),
                   "--out", str(out), "--episodes", "3"]) == 0
  result = json.loads((out / "rollout.json").read_text())
  assert result["episodes"] == 3 and np.isfinite(result["psnr_model"])
  assert (out / "rollout.gif").exists() and (out / "rollout.png").exists()


@pytest.mark.parametrize("extra,message", [
    (["train.stpes=3"], "Unknown config key"),
    (["mesh.data=3"], "does not match the 8 available devices"),
    (["train.batch_size=12"], "not divisible by the data-parallel size"),
    (["data.path=/nonexistent"], "jaxworld data generate"),
])
def test_bad_input_fails_fast_and_changes_nothing(demo_run, tmp_path, capsys,
                                                  extra, message):
  run = tmp_path / "new"
  code = cli.main(["train", "tokenizer", *TINY,
                   f"data.path={demo_run / 'data'}", *extra,
                   "--workdir", str(run)])
  assert code == 2
  assert message in capsys.readouterr().err
  assert not run.exists()


def test_dynamics_refuses_a_tokenizer_trained_on_other_windows(demo_run,
                                                              tmp_path, capsys):
  code = cli.main(["train", "dynamics", *TINY, "data.window=3",
                   f"data.path={demo_run / 'data'}",
                   f"dynamics.tokenizer_workdir={demo_run / 'tokenizer'}",
                   "--workdir", str(tmp_path / "dyn")])
  assert code == 2
  assert "trained with data.window=4" in capsys.readouterr().err


def test_rollout_refuses_a_tokenizer_run(demo_run, capsys):
  code = cli.main(["rollout", "--workdir", str(demo_run / "tokenizer")])
  assert code == 2 and "needs a dynamics run" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(demo_run, capsys):
  run = demo_run / "tokenizer"
  before = (run / "metrics.jsonl").read_text()
  code = cli.main(["train", "tokenizer", *TINY, f"data.path={demo_run / 'data'}",
                   "--workdir", str(run)])
  assert code == 2 and "--resume" in capsys.readouterr().err
  assert (run / "metrics.jsonl").read_text() == before
