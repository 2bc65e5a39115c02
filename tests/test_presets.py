"""Every parallelism preset trains like one device and lays out every array
as its rules table says (8 simulated devices)."""

import functools
import tomllib

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from jaxworld import config as configlib
from jaxworld.models import build
from jaxworld.parallel import mesh as meshlib, sharding
from jaxworld.train import step as steplib

PRESETS = ("dp", "fsdp", "fsdp_tp", "tp_sp")
STEPS = 3


def _batch(cfg):
  rng = np.random.default_rng(0)
  spec = steplib.batch_spec(cfg, cfg.train.batch_size)
  return {"frames": rng.integers(0, 256, spec["frames"].shape, np.uint8),
          "actions": rng.integers(0, 5, spec["actions"].shape).astype(np.int32)}


def _train(cfg, devices, stage):
  mesh = meshlib.make_mesh(cfg.mesh, devices)
  frozen = None
  if stage == "dynamics":
    graphdef, state = nnx.split(build.tokenizer(cfg, nnx.Rngs(0)))
    frozen = steplib.Frozen(graphdef, jax.device_put(
        state, sharding.param_shardings(state, mesh, cfg.mesh.rules)))
  compiled = steplib.compile_step(cfg, stage, mesh, frozen)
  state = compiled.init()
  batch = steplib.device_batch(_batch(cfg), compiled.batch_shardings)
  losses = []
  for _ in range(STEPS):
    state, metrics = compiled.step(state, frozen and frozen.state, batch)
    losses.append(float(metrics["loss"]))
  return losses, state, compiled


@functools.cache
def _one_device(stage):
  cfg = tiny_config(f"train.stage={stage}")
  losses, state, _ = _train(cfg, jax.devices()[:1], stage)
  return losses, jax.device_get(nnx.to_pure_dict(state["model"]))


def _expected_spec(names, preset):
  """The layout a preset's table gives, worked out independently of
  jaxworld.parallel: each mesh axis at most once per array, in order."""
  table = dict(tomllib.loads(
      (configlib.CONFIG_DIR / "mesh" / f"{preset}.toml").read_text()
  )["mesh"]["rules"])
  used, spec = set(), []
  for name in names:
    target = table[name] if name else []
    target = [target] if isinstance(target, str) else list(target)
    free = [a for a in target if a not in used]
    used.update(free)
    spec.append(None if not free else free[0] if len(free) == 1
                else tuple(free))
  while spec and spec[-1] is None:
    spec.pop()
  return tuple(spec)


@pytest.mark.parametrize("stage", ["tokenizer", "dynamics"])
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_matches_one_device_and_its_table(preset, stage):
  cfg = tiny_config(f"train.stage={stage}", f"mesh.preset={preset}")
  losses, state, compiled = _train(cfg, jax.devices(), stage)
  ref_losses, ref_params = _one_device(stage)
  # Stated fp32 tolerance: sharded matmuls and reductions sum in a different
  # order (~1e-6 relative per op); after 3 AdamW steps losses agree to 2e-4
  # and parameters to 1e-4 absolute (lr 1e-3 moves them ~1e-3 per step, so a
  # wrong gradient shard would show at once).
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-4, atol=2e-5)
  params = jax.device_get(nnx.to_pure_dict(state["model"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
               params, ref_params)
  # Every leaf of the train state (params, AdamW moments, counters) is laid
  # out exactly as its logical names and the preset's table say.
  leaves = nnx.to_flat_state(state)
  for path, var in leaves:
    names = var.get_metadata().get("out_sharding") or (None,) * var.ndim
    actual = tuple(var.get_value().sharding.spec)
    while actual and actual[-1] is None:
      actual = actual[:-1]
    assert actual == _expected_spec(names, preset), (path, names, actual)
  assert len(leaves) > 3 * len(nnx.to_flat_state(state["model"])) - 5


def test_fsdp_state_is_split_eight_ways():
  """No silent replication: FSDP keeps ~1/8 of the train state per device."""
  cfg = tiny_config("mesh.preset=fsdp")
  mesh = meshlib.make_mesh(cfg.mesh)
  _, abstract = steplib.abstract_state(cfg, "tokenizer")
  shardings = sharding.param_shardings(abstract, mesh, cfg.mesh.rules)
  total = per_device = 0
  for (_, var), (_, sh) in zip(nnx.to_flat_state(abstract),
                               nnx.to_flat_state(shardings)):
    nbytes = np.dtype(var.dtype).itemsize
    total += nbytes * int(np.prod(var.shape))
    per_device += nbytes * int(np.prod(sh.get_value().shard_shape(var.shape)))
  # The tiny model's small replicated leaves (per-head norm scales, pixel
  # biases) cost a little more than 1/8 here; bench/parallel_memory.py shows
  # the default-sized model at <= 1.1/8.
  assert per_device <= 1.25 * total / 8, per_device / total


def test_sequence_parallel_switches_layout_with_all_to_all():
  cfg = tiny_config("mesh.preset=tp_sp")
  _, _, compiled = _train(cfg, jax.devices(), "tokenizer")
  assert "all-to-all" in compiled.step.as_text()


def test_sequence_that_does_not_split_is_refused_before_compile():
  cfg = tiny_config("mesh.preset=tp_sp", "data.window=3")
  mesh = meshlib.make_mesh(cfg.mesh)
  with pytest.raises(Exception, match="data.window=3 does not split 2 ways"):
    steplib.compile_step(cfg, "tokenizer", mesh, None)


def test_heads_that_do_not_split_name_the_numbers_and_a_fix():
  cfg = tiny_config("mesh.preset=fsdp_tp", "mesh.tensor=4",
                    "tokenizer.encoder.num_heads=2")
  mesh = meshlib.make_mesh(cfg.mesh)
  with pytest.raises(Exception, match=r"has 2 'heads'.*split 4 ways.*"
                     r"mesh.tensor=2"):
    steplib.compile_step(cfg, "tokenizer", mesh, None)


def test_presets_are_listed_when_unknown():
  with pytest.raises(Exception, match="No mesh preset 'zero3'.*dp, fsdp, "
                     "fsdp_tp, tp_sp"):
    tiny_config("mesh.preset=zero3")


def test_explicit_sizes_win_over_the_preset():
  cfg = tiny_config("mesh.preset=fsdp_tp", "mesh.tensor=4")
  assert (cfg.mesh.fsdp, cfg.mesh.tensor) == (-1, 4)
  assert meshlib.mesh_shape(cfg.mesh, 8) == {"data": 1, "fsdp": 2,
                                             "sequence": 1, "tensor": 4}
