"""`jaxworld rollout` on the tiny demo's dynamics run, through the files it
writes: what each score is measured against, the GIF, and which settings
change the imagined frames (the seed only when sampling)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jaxworld import cli
from jaxworld.data import pipeline

SCORES = ("psnr_model", "psnr_copy_last", "psnr_blank", "psnr_tokenizer")
MOVING = tuple(name.replace("psnr_", "psnr_moving_") for name in SCORES)


def _rollout(run, out, *overrides: str) -> dict:
  assert cli.main(["rollout", "--workdir", str(run), "--out", str(out),
                   *overrides]) == 0
  return json.loads((out / "rollout.json").read_text())


def _psnr(pred_ETHWC: np.ndarray, truth_ETHWC: np.ndarray) -> np.ndarray:
  """[E, T] dB of uint8 frames, written out here rather than imported."""
  err = (pred_ETHWC.astype(np.float64) - truth_ETHWC.astype(np.float64)) / 255
  return -10 * np.log10(np.maximum(np.mean(err ** 2, axis=(2, 3, 4)), 1e-10))


@pytest.fixture(scope="module")
def demo_rollout(tiny_demo) -> dict:
  """rollout.json of the demo's own rollout: greedy, seed 0, TINY sizes."""
  return json.loads((tiny_demo / "rollout" / "rollout.json").read_text())


def test_rollout_json_scores_every_imagined_frame(demo_rollout):
  r = demo_rollout
  assert (r["episodes"], r["context_frames"], r["horizon"]) == (2, 2, 3)
  assert (r["dynamics_kind"], r["steps_per_frame"]) == ("maskgit", 2)
  assert sorted(r["per_step"]) == sorted(SCORES + MOVING)
  for name in MOVING:  # something moves in every tiny frame
    assert len(r["per_step"][name]) == r["horizon"] and np.isfinite(r[name])
  for name in SCORES:
    assert len(r["per_step"][name]) == r["horizon"]
    # The headline is the mean over the horizon (per step is rounded).
    assert np.mean(r["per_step"][name]) == pytest.approx(r[name], abs=1e-3)
  assert r["gain_over_copy_last_db"] == pytest.approx(
      r["psnr_model"] - r["psnr_copy_last"], abs=1e-12)


def test_references_are_scored_on_the_held_out_frames(tiny_demo, demo_rollout):
  # Recomputed from the records: the first `episodes` eval episodes; truth
  # is the `horizon` frames right after the context; copy-last repeats the
  # last context frame; blank is each episode's commonest context colour.
  r, c, h = demo_rollout, demo_rollout["context_frames"], demo_rollout["horizon"]
  frames = pipeline.load_episodes(tiny_demo / "data", "eval",
                                  r["episodes"])["frames"]
  assert frames.dtype == np.uint8 and frames.shape[2:] == (32, 32, 3)
  truth = frames[:, c:c + h]
  copy_last = np.repeat(frames[:, c - 1:c], h, axis=1)
  blank = np.empty_like(truth)
  for i, context in enumerate(frames[:, :c]):
    colours, counts = np.unique(context.reshape(-1, 3), axis=0,
                                return_counts=True)
    blank[i] = colours[np.argmax(counts)]
  # Of the pixels that moved since the last real frame, copy-last gets none.
  moved_ETHW = np.any(truth != copy_last, axis=-1)
  err_ETHW = np.mean(((copy_last.astype(np.float64) - truth) / 255) ** 2, -1)
  moving_ET = -10 * np.log10(
      (err_ETHW * moved_ETHW).sum((2, 3)) / moved_ETHW.sum((2, 3)))
  assert r["psnr_moving_copy_last"] == pytest.approx(moving_ET.mean(),
                                                     rel=1e-9)
  assert r["psnr_moving_copy_last"] < r["psnr_copy_last"]
  for name, pred in (("psnr_copy_last", copy_last), ("psnr_blank", blank)):
    psnr_ET = _psnr(pred, truth)
    assert r[name] == pytest.approx(psnr_ET.mean(), rel=1e-12)
    assert r["per_step"][name] == [round(float(x), 3) for x in psnr_ET.mean(0)]
  # Any other frame scores differently (else the check above proves little).
  assert _psnr(frames[:, c - 2:c - 1].repeat(h, 1), truth).mean() != \
      pytest.approx(r["psnr_copy_last"], rel=1e-6)


def test_gif_shows_context_then_imagined_frames(tiny_demo, demo_rollout):
  out = tiny_demo / "rollout"
  c, h = demo_rollout["context_frames"], demo_rollout["horizon"]
  with Image.open(out / "rollout.gif") as gif:
    assert gif.n_frames == c + h
    width, height = gif.size
  # The strip: the last real frame, then each imagined one.
  with Image.open(out / "rollout.png") as strip:
    assert strip.size == ((1 + h) * width, height)


def test_greedy_rollout_is_reproducible_and_ignores_the_seed(
    tiny_demo, demo_rollout, tmp_path):
  # rollout.temperature=0 takes the most likely token: the seed draws nothing.
  again = _rollout(tiny_demo / "dynamics", tmp_path, "rollout.seed=7")
  assert again["overrides"] == ["rollout.seed=7"]
  assert {k: again[k] for k in (*SCORES, "per_step")} == \
      {k: demo_rollout[k] for k in (*SCORES, "per_step")}
  assert (tmp_path / "rollout.gif").read_bytes() == \
      (tiny_demo / "rollout" / "rollout.gif").read_bytes()


def test_sampled_rollout_follows_the_seed(tiny_demo, demo_rollout, tmp_path):
  run, hot = tiny_demo / "dynamics", "rollout.temperature=1.0"
  a = _rollout(run, tmp_path / "a", hot, "rollout.seed=0")
  b = _rollout(run, tmp_path / "b", hot, "rollout.seed=0")
  other = _rollout(run, tmp_path / "c", hot, "rollout.seed=1")
  gif = lambda name: (tmp_path / name / "rollout.gif").read_bytes()
  assert a["per_step"] == b["per_step"] and gif("a") == gif("b")
  assert a["psnr_model"] != other["psnr_model"] and gif("a") != gif("c")
  assert a["psnr_model"] != demo_rollout["psnr_model"]  # temperature is used
  # The references do not depend on sampling.
  for name in ("psnr_copy_last", "psnr_blank", "psnr_tokenizer"):
    assert a[name] == other[name] == demo_rollout[name]
