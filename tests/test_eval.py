"""`jaxworld eval`: horizon curves, controllability, physics, on the tiny demo."""

import json

import numpy as np
import pytest

from jaxworld import cli
from jaxworld.eval import evaluate


@pytest.fixture(scope="module")
def evaluated(tiny_demo, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval")
  assert cli.main(["eval", "--workdir", str(tiny_demo / "dynamics"),
                   "rollout.maskgit_steps=1", "--out", str(out)]) == 0
  return out, json.loads((out / "eval.json").read_text())


def test_eval_writes_curves_plots_and_tensorboard(evaluated):
  out, result = evaluated
  horizon = result["horizon"]
  assert horizon == 3 and result["maskgit_steps"] == 1  # the override
  for key in ("psnr_model", "psnr_copy_last", "psnr_random_actions",
              "ssim_model", "ssim_copy_last", "position_error_model"):
    assert len(result["per_step"][key]) == horizon
    assert np.isfinite(result[key])
  # Controllability is true-action PSNR minus random-action PSNR.
  np.testing.assert_allclose(
      result["delta_psnr"],
      result["psnr_model"] - result["psnr_random_actions"], atol=1e-9)
  assert 0 < result["ssim_tokenizer"] <= 1
  for group in ("latents", "pixels"):
    assert set(result["probe"][group]) >= {"position_r2", "velocity_r2"}
  for png in ("horizon.png", "ssim.png", "controllability.png",
              "position_error.png"):
    assert (out / png).read_bytes()[:4] == b"\x89PNG"
  assert any((out / "tb").iterdir())


def test_eval_refuses_to_change_the_model(tiny_demo, tmp_path, capsys):
  code = cli.main(["eval", "--workdir", str(tiny_demo / "dynamics"),
                   "dynamics.backbone.width=64", "--out", str(tmp_path / "x")])
  assert code == 2
  assert "Only rollout.* settings can change" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_random_actions_keep_the_context():
  actions = np.zeros((64, 10), np.int32)
  mixed = evaluate.random_actions(actions, context=4, num_actions=5, seed=0)
  # Actions into context frames 1..3 stay; from the one into frame 4 on,
  # they are random.
  assert (mixed[:, :3] == 0).all()
  assert (mixed[:, 3:] != 0).mean() > 0.7 and mixed.max() == 4


def test_eval_on_data_without_object_states(tiny_demo, tmp_path, capsys):
  """Ingested video has no object states: eval reports pixels and
  controllability and says physics was not measured (no KeyError)."""
  from jaxworld.data import pipeline
  episodes = pipeline.load_episodes(tiny_demo / "data", "eval", 4)
  (tmp_path / "npz").mkdir()
  for i in range(4):
    np.savez(tmp_path / "npz" / f"ep{i}.npz", frames=episodes["frames"][i],
             actions=episodes["actions"][i])
  data = tmp_path / "ingested"
  assert cli.main(["data", "ingest", str(tmp_path / "npz"), "--out",
                   str(data), "--kind", "npz", "--size", "32", "--chunk",
                   "12", "--val-fraction", "0.5", "--shards", "1"]) == 0
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", str(tiny_demo / "dynamics"),
                   "--data", str(data), "--episodes", "2", "--out",
                   str(tmp_path / "eval")]) == 0
  printed = capsys.readouterr().out
  result = json.loads((tmp_path / "eval" / "eval.json").read_text())
  assert "no object states" in result["physics"] and "probe" not in result
  assert "no object states" in printed and np.isfinite(result["delta_psnr"])
  assert not (tmp_path / "eval" / "position_error.png").exists()
