"""Latent action model: shapes, causality, training, latent-action metrics,
and dynamics conditioned on latent actions through the one trainer."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY, tiny_config
from jaxworld import cli
from jaxworld.infer import latent_actions
from jaxworld.models import build
from test_variants import overfit_losses

TINY_LAM = ("lam.encoder.width=32", "lam.encoder.depth=2",
            "lam.encoder.num_heads=2", "lam.encoder.mlp_ratio=2",
            "lam.decoder.width=32", "lam.decoder.depth=2",
            "lam.decoder.num_heads=2", "lam.decoder.mlp_ratio=2",
            "lam.fsq_levels=[3, 3]")


def _frames(seed=0):
  return jax.random.uniform(jax.random.key(seed), (2, 4, 32, 32, 3))


@pytest.fixture(scope="module")
def lam():
  return build.lam(tiny_config(*TINY_LAM), nnx.Rngs(0))


def test_lam_shapes(lam):
  pred, actions, aux = lam(_frames())
  assert pred.shape == (2, 3, 32, 32, 3)
  assert actions.shape == (2, 3) and actions.dtype == jnp.int32
  assert int(actions.min()) >= 0 and int(actions.max()) < 9
  assert set(aux) == {"codebook_perplexity"}


def test_lam_is_causal_in_time(lam):
  frames = _frames()
  changed = frames.at[:, 2].set(1.0 - frames[:, 2])
  z, z_changed = lam.latents(frames), lam.latents(changed)
  # Transition 0 (frames 0 -> 1) does not read frame 2; transition 1 does.
  np.testing.assert_allclose(z[:, 0], z_changed[:, 0], atol=1e-5)
  assert not np.allclose(z[:, 1], z_changed[:, 1], atol=1e-4)
  # With the codes fixed, the prediction of frame t+1 reads frames <= t.
  codes = lam.codes(jnp.zeros((2, 3), jnp.int32))
  pred, pred_changed = lam.predict(frames, codes), lam.predict(changed, codes)
  np.testing.assert_allclose(pred[:, :2], pred_changed[:, :2], atol=1e-5)
  assert not np.allclose(pred[:, 2], pred_changed[:, 2], atol=1e-4)


def test_latent_action_changes_the_prediction(lam):
  frames = _frames()
  a = lam.predict(frames, lam.codes(jnp.zeros((2, 3), jnp.int32)))
  b = lam.predict(frames, lam.codes(jnp.ones((2, 3), jnp.int32)))
  assert not np.allclose(a, b, atol=1e-4)


def test_lam_loss_falls_on_one_batch():
  cfg = tiny_config('train.stage="lam"', *TINY_LAM)
  frames = (_frames() * 255).astype(jnp.uint8)
  losses = overfit_losses(build.lam(cfg, nnx.Rngs(0)),
                          build.stage_kind(cfg, "lam"),
                          {"frames": frames}, steps=20)
  assert losses[-1] < 0.5 * losses[0], losses


def test_purity_and_nmi():
  true = np.array([0, 0, 1, 1, 2, 2])
  relabelled = np.array([3, 3, 0, 0, 1, 1])
  assert latent_actions.purity(relabelled, true) == 1.0
  assert latent_actions.normalized_mutual_information(relabelled, true) == \
      pytest.approx(1.0)
  constant = np.zeros(6, int)
  assert latent_actions.purity(constant, true) == pytest.approx(1 / 3)
  assert latent_actions.normalized_mutual_information(constant, true) == 0.0
  table = latent_actions.contingency(relabelled, true, 4, 3)
  assert table[3][0] == 2 and sum(map(sum, table)) == 6


def test_lam_then_latent_dynamics_through_the_cli(tiny_demo, tmp_path, capsys):
  data, tok = tiny_demo / "data", tiny_demo / "tokenizer"
  lam_run, dyn_run = tmp_path / "lam", tmp_path / "latent"
  assert cli.main(["train", "lam", *TINY, *TINY_LAM, f"data.path={data}",
                   "--workdir", str(lam_run)]) == 0
  assert "codebook_perplexity" in (lam_run / "metrics.jsonl").read_text()
  common = ["train", "dynamics", *TINY, f"data.path={data}",
            f"dynamics.tokenizer_workdir={tok}", 'dynamics.actions="latent"']
  capsys.readouterr()
  assert cli.main([*common, "--workdir", str(dyn_run)]) == 2
  assert "dynamics.lam_workdir" in capsys.readouterr().err
  assert cli.main([*common, f"dynamics.lam_workdir={lam_run}",
                   "--workdir", str(dyn_run)]) == 0
  saved = json.loads((dyn_run / "config.json").read_text())
  assert saved["dynamics"]["lam_step"] == 4  # pinned
  assert saved["lam"]["fsq_levels"] == [3, 3]  # taken from the LAM run
  out = tmp_path / "roll"
  assert cli.main(["rollout", "--workdir", str(dyn_run), "--out", str(out),
                   "--episodes", "2"]) == 0
  assert np.isfinite(json.loads((out / "rollout.json").read_text())[
      "psnr_model"])
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", str(dyn_run)]) == 2
  assert "supports dynamics runs conditioned on real actions" in \
      capsys.readouterr().err
  # A bundle has no LAM to infer actions with: refused, nothing written.
  assert cli.main(["export", "--workdir", str(dyn_run),
                   "--out", str(tmp_path / "bundle")]) == 2
  assert "a bundle cannot infer" in capsys.readouterr().err
  assert not (tmp_path / "bundle").exists()
