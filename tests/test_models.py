"""Model contracts: shapes, temporal causality, logical names on every param."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from jaxworld.config import BackboneConfig
from jaxworld.errors import JaxWorldError
from jaxworld.models import build
from jaxworld.models.attention import dot_product_attention
from jaxworld.models.st_transformer import STTransformer
from jaxworld.parallel import axes


def test_backbone_is_causal_in_time():
  model = STTransformer(nnx.Rngs(0), width=32, depth=2, num_heads=2,
                        mlp_ratio=2, num_tokens=4, max_frames=6)
  x = jax.random.normal(jax.random.key(1), (2, 6, 4, 32))
  changed = x.at[:, 3].add(1.0)
  y, y_changed = model(x), model(changed)
  np.testing.assert_allclose(y[:, :3], y_changed[:, :3], atol=1e-5)
  assert not np.allclose(y[:, 3:], y_changed[:, 3:], atol=1e-3)


def test_backbone_remat_gives_the_same_gradients():
  kw = dict(width=32, depth=2, num_heads=2, mlp_ratio=2, num_tokens=4,
            max_frames=3)
  x = jax.random.normal(jax.random.key(1), (1, 3, 4, 32))

  def grads(remat):
    graphdef, state = nnx.split(STTransformer(nnx.Rngs(0), remat=remat, **kw))
    grad_fn = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x) ** 2))
    jaxpr = str(jax.make_jaxpr(grad_fn)(state))
    return grad_fn(state), ("remat" in jaxpr or "checkpoint" in jaxpr)

  base, base_remat = grads("none")
  assert not base_remat
  for policy in ("full", "save_dots"):
    g, has_remat = grads(policy)
    assert has_remat, policy  # rematerialisation is really in the program
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 g, base)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("is_causal, masked", [(False, False), (True, False),
                                               (False, True), (True, True)])
def test_attention_matches_jax_nn_in_values_and_gradients(dtype, is_causal,
                                                          masked):
  # Its own backward pass (attention.py) against autodiff of jax.nn's XLA
  # path; keys 9.. of 12 hidden when masked.
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 12, 3, 8), dtype)
             for i in range(3))
  mask_S = jnp.arange(12) < 9 if masked else None

  def loss(attend, q, k, v):
    return jnp.sum(jnp.sin(attend(q, k, v).astype(jnp.float32)))

  ours = lambda q, k, v: dot_product_attention(
      q, k, v, is_causal=is_causal, mask_S=mask_S, implementation="jaxworld")
  theirs = lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=is_causal,
      mask=None if mask_S is None else mask_S[None, None, None, :])
  (value, grads), (want_value, want_grads) = (
      jax.value_and_grad(loss, (1, 2, 3))(f, q, k, v) for f in (ours, theirs))
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(value, want_value, rtol=tol, atol=tol)
  for g, want in zip(grads, want_grads):
    assert g.dtype == dtype
    np.testing.assert_allclose(np.asarray(g, np.float32),
                               np.asarray(want, np.float32),
                               atol=tol * float(jnp.abs(want).max()))


def test_backbone_with_jaxworld_attention_matches_xla():
  kw = dict(width=32, depth=2, num_heads=2, mlp_ratio=2, num_tokens=4,
            max_frames=3)
  x = jax.random.normal(jax.random.key(1), (2, 3, 4, 32))

  def value_and_grads(attention):
    graphdef, state = nnx.split(STTransformer(nnx.Rngs(0),
                                              attention=attention, **kw))
    loss = lambda s: jnp.mean(jnp.sin(nnx.merge(graphdef, s)(x)))
    return jax.jit(jax.value_and_grad(loss))(state)

  (value, grads), (want, want_grads) = (value_and_grads("jaxworld"),
                                        value_and_grads("xla"))
  np.testing.assert_allclose(value, want, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               grads, want_grads)


def test_auto_attention_is_jaxworlds_on_cpu_and_xlas_on_accelerators():
  auto, pinned = BackboneConfig(), BackboneConfig(attention="xla")
  assert build.attention_kernel(auto, accelerator=False) == "jaxworld"
  assert build.attention_kernel(auto, accelerator=True) == "xla"
  assert build.attention_kernel(pinned, accelerator=False) == "xla"
  want = "xla" if jax.default_backend() != "cpu" else "jaxworld"
  assert build.backbone(auto)["attention"] == want


def test_cudnn_attention_off_a_gpu_is_refused_with_the_fix():
  if jax.default_backend() == "gpu":
    pytest.skip("on a GPU cuDNN attention is allowed")
  with pytest.raises(JaxWorldError, match='runs on NVIDIA GPUs only.*'
                     'attention="xla"'):
    build.backbone(BackboneConfig(attention="cudnn"))


@pytest.mark.skipif(jax.default_backend() != "gpu",
                    reason="cuDNN flash attention needs an NVIDIA GPU")
def test_cudnn_attention_matches_xla_on_a_gpu():
  kw = dict(width=64, depth=2, num_heads=4, mlp_ratio=2, num_tokens=16,
            max_frames=8, dtype="bfloat16")
  x = jax.random.normal(jax.random.key(1), (2, 8, 16, 64))

  def forward_and_grads(attention):
    graphdef, state = nnx.split(STTransformer(nnx.Rngs(0),
                                              attention=attention, **kw))
    loss = lambda s: jnp.mean(nnx.merge(graphdef, s)(x).astype(jnp.float32)
                              ** 2)
    return jax.jit(jax.value_and_grad(loss))(state)

  (loss_xla, g_xla), (loss_cudnn, g_cudnn) = (forward_and_grads("xla"),
                                              forward_and_grads("cudnn"))
  np.testing.assert_allclose(loss_cudnn, loss_xla, rtol=2e-2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, atol=2e-2 * float(jnp.abs(b).max()) + 1e-6), g_cudnn, g_xla)


def test_tokenizer_shapes_and_range():
  cfg = tiny_config()
  tok = build.tokenizer(cfg, nnx.Rngs(0))
  frames = jax.random.uniform(jax.random.key(0), (2, 4, 32, 32, 3))
  recon, tokens, aux = tok(frames)
  assert recon.shape == frames.shape
  assert tokens.shape == (2, 4, 16) and tokens.dtype == jnp.int32
  assert int(tokens.max()) < build.codebook_size(cfg) == 32
  decoded = tok.decode(tok.encode(frames))
  assert decoded.shape == frames.shape
  assert float(decoded.min()) >= 0 and float(decoded.max()) <= 1
  assert set(aux) == {"codebook_perplexity"}


def test_fsq_tokens_and_codes_agree():
  from jaxworld.models.tokenizer import FSQ
  fsq = FSQ((8, 5, 3))
  z = 3 * jax.random.normal(jax.random.key(0), (4096, 3))
  codes, tokens, aux = fsq(z)
  np.testing.assert_allclose(fsq.codes(tokens), codes, atol=1e-6)
  assert float(jnp.abs(codes).max()) <= 1
  all_codes = fsq.codes(jnp.arange(fsq.codebook_size))
  assert len(np.unique(np.asarray(all_codes), axis=0)) == 120
  assert float(aux["codebook_perplexity"]) > 50


def test_dynamics_uses_actions():
  cfg = tiny_config()
  dyn = build.dynamics(cfg, nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(0), (2, 4, 16), 0, 32)
  mask = jnp.zeros((2, 4, 16), bool).at[:, -1].set(True)
  actions = jnp.zeros((2, 4), jnp.int32)
  logits = dyn(tokens, actions, mask)
  assert logits.shape == (2, 4, 16, 32)
  # The action after frame 2 changes frame 3's prediction, not earlier ones.
  other = dyn(tokens, actions.at[:, 2].set(3), mask)
  np.testing.assert_allclose(logits[:, :3], other[:, :3], atol=1e-5)
  assert not np.allclose(logits[:, 3], other[:, 3], atol=1e-4)


def test_every_parameter_has_known_logical_names():
  cfg = tiny_config()
  for stage in ("tokenizer", "dynamics"):
    state = nnx.state(nnx.eval_shape(lambda: build.for_stage(cfg, stage, 0)))
    for path, var in nnx.to_flat_state(state):
      names = var.get_metadata().get("out_sharding")
      assert names is not None and len(names) == var.ndim, path
      assert set(names) <= set(axes.ALL), (path, names)


def test_remat_auto_is_save_dots_below_half_a_billion_parameters():
  assert build.remat_policy(BackboneConfig()) == "save_dots"
  # The ladder's 300M and 1B rungs (docs/scaling.md): 18 x 1024, 16 x 2048.
  assert build.remat_policy(BackboneConfig(width=1024, depth=18)) == "save_dots"
  assert build.remat_policy(BackboneConfig(width=2048, depth=16)) == "full"
  assert build.remat_policy(BackboneConfig(remat="none")) == "none"
  assert build.backbone(BackboneConfig())["remat"] == "save_dots"
