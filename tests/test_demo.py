"""`jaxworld demo`'s pass bar: imagination must beat copying the last real
frame by demo.REQUIRED_GAIN_DB. The verdict, the printout, summary.json and
the exit code must agree."""

from __future__ import annotations

import json

import pytest

from jaxworld import cli, demo

# summary.json's keys; scripts and docs read them.
SUMMARY_KEYS = {
    "psnr_model", "psnr_copy_last", "psnr_blank", "psnr_tokenizer",
    "psnr_moving_model", "psnr_moving_copy_last",
    "gain_over_copy_last_db", "passed", "per_step", "episodes",
    "context_frames", "horizon", "final_train_metrics", "stage_seconds",
    "rollout_gif"}


def _summary(root) -> dict:
  return json.loads((root / "summary.json").read_text())


def _scores(gain: float) -> dict:
  return {"psnr_model": 20.0 + gain, "psnr_copy_last": 20.0}


def test_the_tiny_demo_misses_the_bar_and_exits_1(tiny_demo_run):
  summary = _summary(tiny_demo_run.root)
  assert set(summary) == SUMMARY_KEYS
  assert summary["passed"] is False
  assert summary["gain_over_copy_last_db"] == pytest.approx(
      summary["psnr_model"] - summary["psnr_copy_last"], abs=1e-12)
  assert summary["gain_over_copy_last_db"] < demo.REQUIRED_GAIN_DB
  assert tiny_demo_run.exit_code == 1
  verdicts = [x.strip() for x in tiny_demo_run.stdout.splitlines()
              if x.strip().startswith(("PASS", "FAIL"))]
  assert verdicts == [
      f"FAIL: model beats copy-last by "
      f"{summary['gain_over_copy_last_db']:+.2f} dB (needs >= 1.0 dB)"]


def test_the_bar_is_copy_last_plus_one_db():
  assert demo.REQUIRED_GAIN_DB == 1.0  # another issue moves it, on purpose
  assert demo.verdict(_scores(1.0)) == (
      True, ["model beats copy-last by +1.00 dB (needs >= 1.0 dB)"])
  assert demo.verdict(_scores(5.0))[0] is True


@pytest.mark.parametrize("gain", [1.0 - 1e-9, 0.0, -11.5])
def test_below_the_bar_fails(gain):
  passed, reasons = demo.verdict(_scores(gain))
  assert passed is False and reasons and "needs >= 1.0 dB" in reasons[0]


@pytest.mark.parametrize("gain, word", [(1.0, "PASS"), (1.0 - 1e-9, "FAIL")])
def test_the_printout_ends_in_the_verdict(tiny_demo, gain, word):
  summary = {**_summary(tiny_demo), **_scores(gain)}
  lines = demo.summary_lines(summary, tiny_demo)
  verdict = next(x for x in lines if x.strip().startswith(("PASS", "FAIL")))
  assert verdict.strip().startswith(f"{word}: model beats copy-last by ")


@pytest.mark.parametrize("passed, code", [(True, 0), (False, 1)])
def test_the_exit_code_is_the_verdict(tiny_demo, tmp_path, monkeypatch,
                                      passed, code):
  # The real run exits 1 (above); a stub summary checks the passing arm
  # without training a model good enough to pass.
  summary = {**_summary(tiny_demo), "passed": passed}
  monkeypatch.setattr(demo, "run", lambda workdir, overrides: summary)
  assert cli.main(["demo", "--workdir", str(tmp_path)]) == code
