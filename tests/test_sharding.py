"""Mesh and batch checks: wrong sizes fail early, naming what would fit.

Training equivalence of every preset is in test_presets.py."""

import pytest

from conftest import tiny_config
from jaxworld.errors import JaxWorldError
from jaxworld.parallel import batch as batchlib, mesh as meshlib, sharding


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
    batchlib.check_batch(12, mesh, cfg.mesh.rules)


def test_batch_follows_its_rule():
  """The `batch` rule decides the data-parallel split, like any other."""
  rules = tiny_config().mesh.rules
  data_only = tuple(r if r[0] != "batch" else ("batch", "data") for r in rules)
  mesh = meshlib.make_mesh(tiny_config("mesh.data=2", "mesh.fsdp=4").mesh)
  assert batchlib.check_batch(4, mesh, data_only) == 4  # split 2 ways only
  with pytest.raises(JaxWorldError, match="data-parallel size 8"):
    batchlib.check_batch(4, mesh, rules)
  assert tuple(batchlib.batch_sharding(mesh, 2, data_only).spec) == ("data", None)


def test_unmapped_logical_axis_is_named():
  with pytest.raises(JaxWorldError, match="'mlp' has no entry in mesh.rules"):
    sharding.logical_to_mesh_spec(("embed", "mlp"), {"embed": "fsdp"})
