"""`jaxworld demo`'s pass bar: PSNR and SSIM above the stronger of
copy-last and blank by a margin, half of copy-last's object position error,
and controllability. The verdict, the printout, summary.json and the exit
code must agree."""

from __future__ import annotations

import json

import pytest

from jaxworld import cli, config, demo

# summary.json's keys; scripts and docs read them.
SUMMARY_KEYS = {
    *demo.SUMMARY_SCORES, "gain_over_copy_last_db", "passed", "per_step",
    "episodes", "context_frames", "horizon", "final_train_metrics",
    "stage_seconds", "rollout_gif", "eval_dir", "probe", "physics",
    "play_command"}

# Scores that clear every bar exactly (blank is the stronger baseline).
AT_THE_BAR = {"psnr_model": 22.0, "psnr_copy_last": 19.0, "psnr_blank": 20.0,
              "ssim_model": 0.72, "ssim_copy_last": 0.6, "ssim_blank": 0.7,
              "position_error_model": 5.0, "position_error_copy_last": 10.0,
              "delta_psnr": 1.5}
# One hair past the bar, for each bar.
MISSES = {"psnr_model": 22.0 - 1e-6, "ssim_model": 0.72 - 1e-6,
          "position_error_model": 5.0 + 1e-6, "delta_psnr": 1.5 - 1e-6}


def _summary(root) -> dict:
  return json.loads((root / "summary.json").read_text())


def test_the_tiny_demo_misses_the_bar_and_exits_1(tiny_demo_run):
  summary = _summary(tiny_demo_run.root)
  assert set(summary) == SUMMARY_KEYS
  assert summary["passed"] is False
  assert summary["gain_over_copy_last_db"] == pytest.approx(
      summary["psnr_model"] - summary["psnr_copy_last"], abs=1e-12)
  eval_json = json.loads((tiny_demo_run.root / "eval" / "eval.json")
                         .read_text())
  for key in demo.SUMMARY_SCORES:  # the summary is eval's measurement
    assert summary[key] == eval_json[key], key
  # The share of objects located is what the per-step misses say.
  missed = sum(eval_json["per_step"]["objects_not_found_model"])
  balls = config.load(tiny_demo_run.root / "dynamics" / "config.json"
                      ).world.num_objects
  objects = eval_json["episodes"] * eval_json["horizon"] * (balls + 1)
  assert summary["objects_found_model"] == pytest.approx(1 - missed / objects)
  assert tiny_demo_run.exit_code == 1
  lines = [x.strip() for x in tiny_demo_run.stdout.splitlines()]
  assert any(x.startswith("objects located") and x.endswith("n/a")
             for x in lines)
  assert "FAIL:" in lines and "PASS:" not in lines
  assert any(x.startswith("MISSED PSNR") for x in lines)


def test_scores_at_every_bar_pass():
  passed, reasons = demo.verdict(AT_THE_BAR)
  assert passed and len(reasons) == 4
  assert all(r.startswith("ok ") for r in reasons)
  assert "over blank" in reasons[0] and "over blank" in reasons[1]


@pytest.mark.parametrize("key", sorted(MISSES))
def test_a_hair_below_any_bar_fails(key):
  passed, reasons = demo.verdict({**AT_THE_BAR, key: MISSES[key]})
  assert not passed
  assert sum(r.startswith("MISSED") for r in reasons) == 1


def test_the_stronger_baseline_sets_the_bar():
  # Copy-last now beats blank: the margin is measured over it.
  scores = {**AT_THE_BAR, "psnr_copy_last": 21.0}
  passed, reasons = demo.verdict(scores)
  assert not passed and "over copy-last" in reasons[0]


def test_data_without_object_states_skips_position_error():
  scores = {**AT_THE_BAR, "position_error_model": None,
            "position_error_copy_last": None}
  passed, reasons = demo.verdict(scores)
  assert passed and len(reasons) == 3


@pytest.mark.parametrize("scores, word", [(AT_THE_BAR, "PASS"),
                                          ({**AT_THE_BAR, **MISSES}, "FAIL")])
def test_the_printout_ends_in_the_verdict(tiny_demo_run, scores, word):
  summary = {**_summary(tiny_demo_run.root), **scores}
  lines = [x.strip() for x in demo.summary_lines(summary, tiny_demo_run.root)]
  assert f"{word}:" in lines


@pytest.mark.parametrize("passed, code", [(True, 0), (False, 1)])
def test_the_exit_code_is_the_verdict(tiny_demo_run, tmp_path, monkeypatch,
                                      passed, code):
  # The real run exits 1 (above); a stub summary checks the passing arm
  # without training a model good enough to pass.
  summary = {**_summary(tiny_demo_run.root), "passed": passed}
  monkeypatch.setattr(demo, "run", lambda workdir, overrides, data, recipe: summary)
  assert cli.main(["demo", "--workdir", str(tmp_path)]) == code

