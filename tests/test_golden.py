"""Golden numbers: the first training steps of the tiny experiment, pinned.

A refactor of models, trainer, sampler or sharding must leave them exactly as
they are; a change that moves them on purpose (new init, new loss) updates
them in the same commit and says so. The numbers are what
`python -m pytest tests/test_golden.py` measured on the 8 simulated CPU
devices of conftest.py (commit 43ab578, jax 0.10.2, flax 0.12.8); a failure
prints the new ones.

Step 1 trains at learning rate 0 (train.warmup_steps=1), so steps 1-2 pin the
initialisation, the data stream and the loss, and steps 3-4 the gradients and
the optimizer too.
"""

from __future__ import annotations

import json

import pytest

from conftest import TINY
from jaxworld import cli

# Bit-exact on one machine; the margin is for another CPU's float32 rounding,
# far below what a real change moves.
REL = 1e-5

# Update only if the change is intended. {stage: {metric: [steps 1..4]}}
DEMO = {
    "tokenizer": {  # configs/tokenizer.toml at TINY sizes (FSQ)
        "loss": [1.033522605895996, 1.0369786024093628, 0.7865573763847351,
                 0.6878408789634705],
        "psnr": [-0.14319981634616852, -0.15769796073436737,
                 1.0426958799362183, 1.6251202821731567],
        "codebook_perplexity": [13.166646003723145, 12.586028099060059,
                                7.144735813140869, 6.035803318023682],
        "grad_norm": [8.493999481201172, 8.13587474822998, 6.438011169433594,
                      1.05819571018219],
    },
    "dynamics": {  # configs/dynamics.toml (MaskGIT) on that tokenizer
        "loss": [3.758666753768921, 3.962069034576416, 3.04217791557312,
                 2.696232795715332],
        "masked_accuracy": [0.07207207381725311, 0.04838709533214569,
                            0.16483516991138458, 0.2540983557701111],
        "mask_fraction": [0.216796875, 0.2421875, 0.35546875, 0.23828125],
        "grad_norm": [20.67882537841797, 25.00713348388672, 10.415214538574219,
                      6.676565170288086],
    },
}

# Update only if the change is intended: configs/tokenizer_continuous.toml
# then configs/dynamics_diffusion.toml at TINY sizes, on the demo's data.
DIFFUSION = {
    "tokenizer": {
        "loss": [1.0450648069381714, 1.0660496950149536, 0.8966608047485352,
                 0.7264952659606934],
        "latent_rms": [0.6473247408866882, 0.639447033405304,
                       0.8084109425544739, 0.8195639252662659],
        "grad_norm": [9.109725952148438, 9.642661094665527,
                      1.8267474174499512, 1.2831515073776245],
    },
    "dynamics": {
        "loss": [0.4270814061164856, 0.39202776551246643, 0.352946937084198,
                 0.4120408296585083],
        "mse_high_noise": [0.7175484299659729, 0.6625080704689026,
                           0.7370501756668091, 0.6236361861228943],
        "grad_norm": [1.662544846534729, 1.6379952430725098,
                      1.3613144159317017, 1.715493083000183],
    },
}

# Update only if the change is intended: the demo's held-out rollout
# (rollout.json), greedy MaskGIT on the tiny models above. Unlike the losses a
# sampled token can flip on another CPU; if only these move there, say so.
ROLLOUT = {"psnr_model": 6.5813941488360745,
           "psnr_copy_last": 18.04921225494908,
           "psnr_blank": 14.164483127073089,
           "psnr_tokenizer": 6.640542604052388}


def _flat(runs: dict, golden: dict) -> tuple[dict, dict]:
  """{"stage metric step": value} of metrics.jsonl and of the golden table
  (pytest.approx compares flat dicts only)."""
  measured, expected = {}, {}
  for stage, metrics in golden.items():
    rows = [json.loads(x)
            for x in (runs[stage] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for name, values in metrics.items():
      for row, value in zip(rows, values, strict=True):
        measured[f"{stage} {name} {row['step']}"] = row.get(name)
        expected[f"{stage} {name} {row['step']}"] = value
  return measured, expected


def _check(runs: dict, golden: dict) -> None:
  measured, expected = _flat(runs, golden)
  # One comparison of everything, so a failure shows every new number.
  assert measured == pytest.approx(expected, rel=REL), json.dumps(
      measured, indent=1)


def test_tokenizer_and_maskgit_first_steps(tiny_demo):
  _check({s: tiny_demo / s for s in DEMO}, DEMO)


def test_demo_rollout_scores(tiny_demo):
  result = json.loads((tiny_demo / "rollout" / "rollout.json").read_text())
  assert {k: result[k] for k in ROLLOUT} == pytest.approx(ROLLOUT, rel=REL)


def test_continuous_tokenizer_and_diffusion_first_steps(tiny_demo, tmp_path):
  data = tiny_demo / "data"
  tok, dyn = tmp_path / "tokenizer", tmp_path / "dynamics"
  assert cli.main(["train", "tokenizer_continuous", *TINY, "train.log_every=1",
                   f"data.path={data}", "--workdir", str(tok)]) == 0
  assert cli.main(["train", "dynamics_diffusion", *TINY, "train.log_every=1",
                   f"data.path={data}", f"dynamics.tokenizer_workdir={tok}",
                   "--workdir", str(dyn)]) == 0
  _check({"tokenizer": tok, "dynamics": dyn}, DIFFUSION)
