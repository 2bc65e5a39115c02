"""The same step on (data, fsdp, tensor) = (2, 2, 2) and on one device."""

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from jaxworld.errors import JaxWorldError
from jaxworld.models import build
from jaxworld.parallel import mesh as meshlib
from jaxworld.train import step as steplib


def _batch(cfg):
  rng = np.random.default_rng(0)
  spec = steplib.batch_spec(cfg, cfg.train.batch_size)
  return {"frames": rng.integers(0, 256, spec["frames"].shape, np.uint8),
          "actions": rng.integers(0, 5, spec["actions"].shape).astype(np.int32)}


def _losses(cfg, devices, stage, steps=3):
  mesh = meshlib.make_mesh(cfg.mesh, devices)
  frozen = None
  if stage == "dynamics":
    graphdef, state = nnx.split(build.tokenizer(cfg, nnx.Rngs(0)))
    frozen = steplib.Frozen(graphdef, jax.device_put(
        state, meshlib.param_shardings(state, mesh, cfg.mesh.rules)))
  compiled = steplib.compile_step(cfg, stage, mesh, frozen)
  state = compiled.init()
  batch = steplib.device_batch(_batch(cfg), compiled.batch_shardings)
  losses = []
  for _ in range(steps):
    state, metrics = compiled.step(state, frozen and frozen.state, batch)
    losses.append(float(metrics["loss"]))
  return losses, state


@pytest.mark.parametrize("stage", ["tokenizer", "dynamics"])
def test_sharded_step_matches_single_device(stage):
  sharded = tiny_config(f"train.stage={stage}", "mesh.data=2", "mesh.fsdp=2",
                        "mesh.tensor=2")
  single = tiny_config(f"train.stage={stage}", "mesh.data=1")
  losses_8, state = _losses(sharded, jax.devices(), stage)
  losses_1, _ = _losses(single, jax.devices()[:1], stage)
  # Stated tolerance: sharded reductions sum in a different order, so float32
  # losses agree to ~1e-6 relative per step; 2e-4 over 3 steps leaves room
  # for that drift through the optimizer, far below any real bug's effect.
  np.testing.assert_allclose(losses_8, losses_1, rtol=2e-4, atol=2e-5)
  # Parameters are laid out exactly as the logical-axis rules say.
  rules = meshlib.rules_dict(sharded.mesh.rules)
  checked = 0
  for path, var in nnx.to_flat_state(state["model"]):
    names = var.get_metadata()["out_sharding"]
    assert var.get_value().sharding.spec == meshlib.logical_to_mesh_spec(
        names, rules), path
    checked += "tensor" in str(var.get_value().sharding.spec)
  assert checked > 0  # tensor parallelism really split something


def test_mesh_that_does_not_match_devices_says_what_fits():
  cfg = tiny_config("mesh.data=3", "mesh.fsdp=1", "mesh.tensor=2")
  with pytest.raises(JaxWorldError, match="does not match the 8 available "
                     "devices.*Try"):
    meshlib.make_mesh(cfg.mesh)


def test_batch_not_divisible_says_what_fits():
  cfg = tiny_config("mesh.data=4", "mesh.fsdp=2")
  mesh = meshlib.make_mesh(cfg.mesh)
  with pytest.raises(JaxWorldError, match="batch_size=12 is not divisible.*"
                     "Use train.batch_size=8"):
    meshlib.check_batch(12, mesh, cfg.mesh.rules)


def test_batch_follows_its_rule():
  """The `batch` rule decides the data-parallel split, like any other."""
  rules = tiny_config().mesh.rules
  data_only = tuple(r if r[0] != "batch" else ("batch", "data") for r in rules)
  mesh = meshlib.make_mesh(tiny_config("mesh.data=2", "mesh.fsdp=4").mesh)
  assert meshlib.check_batch(4, mesh, data_only) == 4  # split 2 ways only
  with pytest.raises(JaxWorldError, match="data-parallel size 8"):
    meshlib.check_batch(4, mesh, rules)
  assert tuple(meshlib.batch_sharding(mesh, 2, data_only).spec) == ("data", None)


def test_unmapped_logical_axis_is_named():
  with pytest.raises(JaxWorldError, match="'mlp' has no entry in mesh.rules"):
    meshlib.logical_to_mesh_spec(("embed", "mlp"), {"embed": "fsdp"})
