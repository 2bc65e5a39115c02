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
