"""Next-frame regression trained on its own predictions: causality, the
unrolled loss, clipping to the latents' bounds, learning a tiny batch, and
the CLI path over pixel patches (train -> eval -> export -> play)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import TINY, assert_bundle_plays_like_rollout
from jaxworld import cli
from jaxworld.models import regression

B, T, N, E, A = 2, 4, 16, 6, 5
BACKBONE = {"width": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2}


def _model(seed=0, **kwargs):
  model = regression.FrameRegressor(
      nnx.Rngs(params=seed), latent_dim=E, num_actions=A, num_tokens=N,
      max_frames=T, backbone=BACKBONE, bounds=(-1.0, 1.0), **kwargs)
  # A random head (it starts at zero), so outputs depend on the inputs.
  model.head.kernel[...] = 0.3 * jax.random.normal(
      jax.random.key(seed + 1), model.head.kernel[...].shape)
  return model


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  latents = np.tanh(rng.normal(size=(B, T, N, E))).astype(np.float32)
  return jnp.asarray(latents), jnp.asarray(rng.integers(0, A, (B, T)),
                                           jnp.int32)


@pytest.mark.parametrize("frame_stack", [1, 3])
def test_prediction_is_causal_and_stays_in_bounds(frame_stack):
  model = _model(frame_stack=frame_stack)
  latents, actions = _batch()
  base = model(latents, actions)
  assert float(jnp.max(jnp.abs(base))) <= 1.0
  assert float(jnp.max(jnp.abs(base))) == 1.0  # the random head overshoots
  # Frame 2 and the action after it reach positions >= 2 only.
  changed = model(latents.at[:, 2].multiply(-1.0),
                  actions.at[:, 2].set((actions[:, 2] + 1) % A))
  np.testing.assert_allclose(base[:, :2], changed[:, :2], atol=1e-6)
  assert float(jnp.max(jnp.abs(base[:, 2] - changed[:, 2]))) > 1e-3
  # The rollout's next frame is the last position's prediction.
  np.testing.assert_allclose(
      regression.next_frame(model, latents, actions, jax.random.key(0), None),
      base[:, -1], atol=1e-6)


def test_frame_stack_adds_the_changes_from_the_frames_before():
  model = _model(frame_stack=3)
  latents, _ = _batch()
  stacked = model.stacked(latents)
  assert stacked.shape == (B, T, N, 3 * E)
  np.testing.assert_array_equal(stacked[..., :E], latents)
  # Position t reads x_t - x_{t-1} and x_{t-1} - x_{t-2}; the window's first
  # frame is repeated before it, so nothing moved there.
  np.testing.assert_array_equal(stacked[:, 0, :, E:], 0.0)
  np.testing.assert_allclose(stacked[:, 3, :, E:2 * E],
                             latents[:, 3] - latents[:, 2])
  np.testing.assert_allclose(stacked[:, 3, :, 2 * E:],
                             latents[:, 2] - latents[:, 1])
  np.testing.assert_allclose(stacked[:, 1, :, 2 * E:], 0.0)


def test_each_pass_reads_the_previous_pass_predictions():
  """The loss is the mean over passes of MSE + l1_weight * L1, pass k
  scored from position k on, its history the real first frame then pass
  k-1's predictions."""
  model = _model(unroll_passes=3, l1_weight=0.25)
  latents, actions = _batch()
  now, target, acts = latents[:, :-1], latents[:, 1:], actions[:, :-1]
  history, want = now, []
  for k in range(3):
    pred = model(history, acts)
    err = pred[:, k:] - target[:, k:]
    want.append(jnp.mean(err ** 2) + 0.25 * jnp.mean(jnp.abs(err)))
    history = jnp.concatenate([now[:, :1], pred[:, :-1]], 1)
  loss, metrics = regression.loss(model, {"tokens": latents,
                                          "actions": actions},
                                  jax.random.key(0))
  np.testing.assert_allclose(loss, np.mean(want), rtol=1e-6)
  assert set(metrics) == {"mse", "mse_pass0", "mse_pass1", "mse_pass2"}


def test_change_weight_weighs_the_latents_the_real_frames_change():
  """Each latent that changes between real frames weighs 1 + change_weight
  in both terms; still ones (here the first 8 tokens) weigh 1, and a
  change below CHANGE_TOLERANCE (rounding) does not count."""
  model = _model(unroll_passes=2, l1_weight=0.25, change_weight=3.0)
  latents, actions = _batch()
  still = jnp.broadcast_to(latents[:, :1, :8], (B, T, 8, E))
  still = still.at[:, 2].add(0.5 * regression.CHANGE_TOLERANCE)
  latents = latents.at[:, :, :8].set(still)
  now, target, acts = latents[:, :-1], latents[:, 1:], actions[:, :-1]
  weight = jnp.ones_like(target).at[:, :, 8:].set(4.0)
  history, want = now, []
  for k in range(2):
    pred = model(history, acts)
    err = pred[:, k:] - target[:, k:]
    want.append(jnp.mean(weight[:, k:] * (err ** 2 + 0.25 * jnp.abs(err))))
    history = jnp.concatenate([now[:, :1], pred[:, :-1]], 1)
  loss, metrics = regression.loss(model, {"tokens": latents,
                                          "actions": actions},
                                  jax.random.key(0))
  np.testing.assert_allclose(loss, np.mean(want), rtol=1e-6)
  # The logged MSE stays the plain one, comparable across weights.
  np.testing.assert_allclose(metrics["mse"], jnp.mean(
      (model(now, acts) - target) ** 2), rtol=1e-6)


def test_unroll_gradients_reach_through_earlier_passes():
  """Without unroll_gradients a pass's prediction is a constant input to the
  next; with it, the gradient differs by what flows back through it."""
  latents, actions = _batch()
  batch = {"tokens": latents, "actions": actions}

  def grads(gradients):
    model = _model(unroll_passes=2, unroll_gradients=gradients)
    return nnx.grad(lambda m: regression.loss(m, batch, jax.random.key(0))[0]
                    )(model)

  cut, through = grads(False), grads(True)
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), cut,
                      through)
  assert max(jax.tree.leaves(diff)) > 1e-6


def test_loss_falls_on_one_tiny_batch():
  model = _model(unroll_passes=2, l1_weight=0.1)
  model.head.kernel[...] = jnp.zeros_like(model.head.kernel[...])
  latents, actions = _batch()
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: regression.loss(
        m, {"tokens": latents, "actions": actions}, jax.random.key(0))[0]
                                     )(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt)) for _ in range(60)]
  assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_regression_over_pixels_trains_rolls_out_and_plays(
    tiny_dataset, tmp_path, capsys):
  run = tmp_path / "regression"
  assert cli.main(["train", "dynamics", *TINY, 'dynamics.kind="regression"',
                   'tokenizer.kind="patches"', f"data.path={tiny_dataset}",
                   "--workdir", str(run)]) == 0
  assert "mse_pass1" in (run / "metrics.jsonl").read_text()
  assert cli.main(["eval", "--workdir", str(run), "--out",
                   str(tmp_path / "eval"), "--episodes", "2"]) == 0
  assert "dynamics state: position" in capsys.readouterr().out
  result = json.loads((tmp_path / "eval" / "eval.json").read_text())
  assert np.isfinite(result["psnr_model"]) and np.isfinite(
      result["probe"]["dynamics"]["velocity_r2"])
  assert cli.main(["export", "--workdir", str(run),
                   "--out", str(tmp_path / "bundle")]) == 0
  assert_bundle_plays_like_rollout(run, tmp_path / "bundle")
