"""docs/extending.md's claim: a new dynamics kind is one file plus one
config. The example kind (examples/next_latent.py) is registered from here,
trained by `jaxworld train`, rolled out and evaluated; no jaxworld file
names it."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from jaxworld import cli
from jaxworld.errors import JaxWorldError
from jaxworld.models import build

ROOT = Path(__file__).resolve().parents[1]
KIND = "examples.next_latent"


@pytest.fixture(scope="module")
def example_kind():
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  return importlib.import_module(KIND).KIND


def test_unknown_kinds_are_refused_with_the_known_ones():
  with pytest.raises(JaxWorldError, match="maskgit") as e:
    build.kind("dynamics", "gan")
  assert "not a registered dynamics kind" in str(e.value)
  with pytest.raises(JaxWorldError, match="cannot be imported"):
    build.kind("dynamics", "no_such_package.kind")


def test_example_kind_trains_rolls_out_and_evaluates(example_kind,
                                                     tiny_dataset, tmp_path):
  assert build.kind("dynamics", KIND) is example_kind
  tokenizer = tmp_path / "tokenizer"
  assert cli.main(["train", "tokenizer_continuous", *TINY,
                   f"data.path={tiny_dataset}", "--workdir",
                   str(tokenizer)]) == 0
  run = tmp_path / "next_latent"
  assert cli.main(["train", str(ROOT / "examples" / "next_latent.toml"),
                   *TINY, f"data.path={tiny_dataset}",
                   f"dynamics.tokenizer_workdir={tokenizer}", "--workdir",
                   str(run)]) == 0
  logged = [json.loads(line)
            for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert "mse" in logged[-1]  # the example's own loss ran
  assert json.loads((run / "config.json").read_text())["dynamics"][
      "kind"] == KIND

  outs = [tmp_path / f"roll{seed}" for seed in (0, 1)]
  for seed, out in enumerate(outs):
    assert cli.main(["rollout", "--workdir", str(run), "--out", str(out),
                     f"rollout.seed={seed}"]) == 0
  results = [json.loads((o / "rollout.json").read_text()) for o in outs]
  assert results[0]["dynamics_kind"] == KIND
  assert len(results[0]["per_step"]["psnr_model"]) == 3  # tiny horizon
  # A deterministic kind: the sampling seed changes nothing.
  assert results[0]["psnr_model"] == results[1]["psnr_model"]
  assert np.isfinite(results[0]["psnr_model"])

  assert cli.main(["eval", "--workdir", str(run), "--out",
                   str(tmp_path / "eval"), "--episodes", "2"]) == 0
  evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
  assert evaluated["dynamics_kind"] == KIND
  assert np.isfinite(evaluated["delta_psnr"])
