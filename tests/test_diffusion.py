"""Diffusion-forcing dynamics over continuous latents: shapes, causality,
the few-step sampler, and learning one tiny batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxworld.models import diffusion
from jaxworld.models.quantizer import Continuous

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
  a = diffusion.sample_next_frame(model, latents[:, :3], actions[:, :3], key, 4)
  b = diffusion.sample_next_frame(model, latents[:, :3], actions[:, :3], key, 4)
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
      return diffusion.loss(m, latents, actions, key)[0]
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  # The same noise every step: a fixed regression target to over-fit.
  losses = [float(step(model, opt, jax.random.key(1))) for _ in range(60)]
  assert losses[-1] < 0.3 * losses[0], losses[::10]
