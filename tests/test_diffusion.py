"""Diffusion-forcing dynamics over continuous latents: shapes, causality,
the few-step sampler, learning one tiny batch, and the CLI path
(continuous tokenizer -> diffusion dynamics -> rollout)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import TINY, assert_bundle_plays_like_rollout, tiny_config
from jaxworld import cli
from jaxworld.infer import sampler
from jaxworld.models import build, diffusion
from jaxworld.models.tokenizer import Continuous
from jaxworld.models.sampling import SampleOptions

DIFFUSION = ('dynamics.kind="diffusion"', 'tokenizer.kind="continuous"',
             "tokenizer.latent_dim=4")

B, T, N, E, A = 2, 4, 16, 4, 5
BACKBONE = {"width": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2}


def _model(seed=0):
  return diffusion.DiffusionDynamics(
      nnx.Rngs(params=seed), latent_dim=E, num_actions=A, num_tokens=N,
      max_frames=T, backbone=BACKBONE)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  latents = np.tanh(rng.normal(size=(B, T, N, E))).astype(np.float32)
  return jnp.asarray(latents), jnp.asarray(rng.integers(0, A, (B, T)),
                                           jnp.int32)


def test_continuous_bottleneck_is_bounded_and_identity_on_codes():
  q = Continuous(3)
  codes, tokens, aux = q(jnp.array([[-10.0, 0.0, 10.0]]))
  assert float(jnp.max(jnp.abs(codes))) <= 1.0
  np.testing.assert_array_equal(q.codes(tokens), codes)
  assert "latent_rms" in aux


def test_prediction_is_temporally_causal():
  model = _model()
  latents, actions = _batch()
  level = jnp.full((B, T), 0.5)
  base = model(latents, level, actions)
  # Change frame 2's latents, its level and the action after it: frames
  # 0-1 must not move, frame 2 must.
  changed = model(latents.at[:, 2].add(1.0), level.at[:, 2].set(0.9),
                  actions.at[:, 2].set((actions[:, 2] + 1) % A))
  np.testing.assert_allclose(base[:, :2], changed[:, :2], atol=1e-6)
  assert float(jnp.max(jnp.abs(base[:, 2] - changed[:, 2]))) > 1e-4
  # The action after frame 1 conditions frame 2 onward only.
  moved = model(latents, level, actions.at[:, 1].set((actions[:, 1] + 1) % A))
  np.testing.assert_allclose(base[:, :2], moved[:, :2], atol=1e-6)


def test_sampler_shapes_and_determinism():
  model = _model()
  latents, actions = _batch()
  key = jax.random.key(0)
  a = diffusion.next_frame(model, latents[:, :3], actions[:, :3], key,
                           SampleOptions(steps=4))
  b = diffusion.next_frame(model, latents[:, :3], actions[:, :3], key,
                           SampleOptions(steps=4))
  assert a.shape == (B, N, E)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(diffusion.noise_levels(4),
                                [1.0, 0.75, 0.5, 0.25, 0.0])


def test_loss_falls_on_one_tiny_batch():
  model = _model()
  latents, actions = _batch()
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, key):
    def loss_fn(m):
      return diffusion.loss(m, {"tokens": latents, "actions": actions},
                            key)[0]
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  # The same noise every step: a fixed regression target to over-fit.
  losses = [float(step(model, opt, jax.random.key(1))) for _ in range(60)]
  assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_objective_through_the_stage_registry_learns():
  cfg = tiny_config(*DIFFUSION)
  model = build.dynamics(cfg, nnx.Rngs(0))
  assert isinstance(model, diffusion.DiffusionDynamics)
  objective = build.dynamics_kind(cfg)
  latents, actions = _batch()
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt):
    loss_fn = lambda m: objective.loss(
        m, {"tokens": latents, "actions": actions}, jax.random.key(1))
    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    opt.update(model, grads)
    return loss, metrics

  losses = [float(step(model, opt)[0]) for _ in range(40)]
  assert losses[-1] < 0.5 * losses[0], losses[::10]
  assert "mse_high_noise" in step(model, opt)[1]


def test_rollout_sampler_extends_latents_deterministically():
  model = _model()
  # A random head (it starts at zero), so the output depends on the
  # history and actions the sampler passes.
  model.head.kernel[...] = 0.1 * jax.random.normal(
      jax.random.key(3), model.head.kernel[...].shape)
  latents, actions = _batch()
  actions = jnp.concatenate([actions, actions], 1)  # context + horizon
  roll = lambda seed: sampler.rollout_tokens(
      "diffusion", model, latents[:, :2], actions, horizon=3, window=T,
      rng=jax.random.key(seed), options=SampleOptions(steps=2))
  a = roll(0)
  assert a.shape == (B, 5, N, E) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a[:, :2], latents[:, :2])
  np.testing.assert_array_equal(a, roll(0))
  assert not np.allclose(a[:, 2:], roll(1)[:, 2:])  # the noise is the seed's
  # The imagined frames read the history and the actions.
  other = sampler.rollout_tokens(
      "diffusion", model, latents[:, :2] + 0.5, actions, horizon=3,
      window=T, rng=jax.random.key(0), options=SampleOptions(steps=2))
  assert not np.allclose(a[:, 2:], other[:, 2:], atol=1e-4)
  moved = sampler.rollout_tokens(
      "diffusion", model, latents[:, :2], (actions + 1) % A, horizon=3,
      window=T, rng=jax.random.key(0), options=SampleOptions(steps=2))
  assert not np.allclose(a[:, 2:], moved[:, 2:], atol=1e-4)


@pytest.fixture(scope="module")
def continuous_tokenizer(tiny_dataset, tmp_path_factory):
  run = tmp_path_factory.mktemp("continuous") / "tokenizer"
  assert cli.main(["train", "tokenizer", *TINY, *DIFFUSION[1:],
                   f"data.path={tiny_dataset}", "--workdir", str(run)]) == 0
  return run


def test_trains_and_rolls_out_through_the_cli(tiny_dataset,
                                              continuous_tokenizer, tmp_path,
                                              capsys):
  run = tmp_path / "diffusion"
  assert cli.main(["train", "dynamics", *TINY, DIFFUSION[0],
                   "rollout.diffusion_steps=2", f"data.path={tiny_dataset}",
                   f"dynamics.tokenizer_workdir={continuous_tokenizer}",
                   "--workdir", str(run)]) == 0
  last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
  assert np.isfinite(last["loss"]) and "mse_high_noise" in last
  out = tmp_path / "roll"
  assert cli.main(["rollout", "--workdir", str(run), "--out", str(out),
                   "--episodes", "2", "rollout.diffusion_steps=1"]) == 0
  result = json.loads((out / "rollout.json").read_text())
  assert np.isfinite(result["psnr_model"]) and result["horizon"] == 3
  assert result["overrides"] == ["rollout.diffusion_steps=1"]
  assert result["steps_per_frame"] == 1
  assert np.isfinite(result["psnr_blank"])
  capsys.readouterr()
  assert cli.main(["rollout", "--workdir", str(run), "train.steps=9"]) == 2
  assert "Only rollout.* settings can change" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", str(run), "--out",
                   str(tmp_path / "eval"), "--episodes", "2",
                   "rollout.diffusion_steps=3"]) == 0
  assert "(diffusion, 3 steps per frame)" in capsys.readouterr().out
  result = json.loads((tmp_path / "eval" / "eval.json").read_text())
  assert np.isfinite(result["psnr_model"]) and result["steps_per_frame"] == 3
  assert cli.main(["export", "--workdir", str(run),
                   "--out", str(tmp_path / "bundle")]) == 0
  manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
  assert manifest["rollout"]["codes_per_frame"] == "float32[16, 4]"
  assert manifest["rollout"]["steps_per_frame"] == 2
  assert_bundle_plays_like_rollout(run, tmp_path / "bundle")


def test_tokenizer_kind_must_fit_the_dynamics(tiny_demo, tiny_dataset,
                                              continuous_tokenizer, tmp_path,
                                              capsys):
  for kind, tokenizer in (("diffusion", tiny_demo / "tokenizer"),
                          ("maskgit", continuous_tokenizer)):
    assert cli.main(["train", "dynamics", *TINY, f'dynamics.kind="{kind}"',
                     f"data.path={tiny_dataset}",
                     f"dynamics.tokenizer_workdir={tokenizer}",
                     "--workdir", str(tmp_path / kind)]) == 2
    err = capsys.readouterr().err
    assert f"dynamics.kind={kind!r} models" in err, err
    assert "point dynamics.tokenizer_workdir" in err


def test_pixel_patches_tokenizer_is_lossless_and_untrainable(tiny_dataset,
                                                             tmp_path, capsys):
  from jaxworld.models import tokenizer as toklib
  cfg = tiny_config('tokenizer.kind="patches"')
  patches = build.tokenizer(cfg, nnx.Rngs(0))
  assert build.latent_dim(cfg) == 8 * 8 * 3
  assert not nnx.state(patches, nnx.Param)  # nothing to train or restore
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 3, 32, 32, 3)).astype(np.uint8)
  latents = patches.encode(toklib.to_unit_float(frames))
  assert latents.shape == (2, 3, 16, 192)
  assert float(jnp.min(latents)) >= -1 and float(jnp.max(latents)) <= 1
  np.testing.assert_allclose(patches.decode(latents) * 255, frames, atol=1e-3)
  assert cli.main(["train", "tokenizer", *TINY, 'tokenizer.kind="patches"',
                   f"data.path={tiny_dataset}", "--workdir",
                   str(tmp_path / "t")]) == 2
  assert "nothing to train" in capsys.readouterr().err


def test_diffusion_over_pixels_trains_rolls_out_and_is_probed(
    tiny_dataset, tmp_path, capsys):
  """No tokenizer run: the dynamics reads pixel patches; eval probes the
  dynamics model's own state; the bundle plays like the rollout."""
  run = tmp_path / "pixels"
  assert cli.main(["train", "dynamics", *TINY, DIFFUSION[0],
                   'tokenizer.kind="patches"', f"data.path={tiny_dataset}",
                   "--workdir", str(run)]) == 0
  assert cli.main(["eval", "--workdir", str(run), "--out",
                   str(tmp_path / "eval"), "--episodes", "2"]) == 0
  assert "dynamics state: position" in capsys.readouterr().out
  result = json.loads((tmp_path / "eval" / "eval.json").read_text())
  assert result["psnr_tokenizer"] >= 90  # lossless: the ceiling is exact
  state = result["probe"]["dynamics"]
  assert np.isfinite(state["position_r2"]) and np.isfinite(
      state["velocity_r2"])
  assert cli.main(["export", "--workdir", str(run),
                   "--out", str(tmp_path / "bundle")]) == 0
  assert_bundle_plays_like_rollout(run, tmp_path / "bundle")
  # A trained tokenizer kind still needs its run.
  assert cli.main(["train", "dynamics", *TINY, DIFFUSION[0], DIFFUSION[1],
                   f"data.path={tiny_dataset}", "--workdir",
                   str(tmp_path / "none")]) == 2
  assert "tokenizer.kind=patches (nothing to train)" in capsys.readouterr().err
