"""`jaxworld plan`: a step compiled from shapes for devices this process
does not use (simulated CPU devices; a TPU slice with the tpu extra), its
memory against capacity, and the fixes when it does not fit."""

import importlib.util
import json

import jax
import pytest

from conftest import TINY_TOML, tiny_config
from jaxworld import cli
from jaxworld.errors import JaxWorldError
from jaxworld.perf import peaks, plan


def test_plan_on_8_devices_reports_fit_and_fixes(tmp_path):
  out = tmp_path / "plan.json"
  assert cli.main(["plan", str(TINY_TOML), "--devices", "8", "--mesh",
                   "fsdp", "--device", "v5e", "--out", str(out)]) == 0
  r = json.loads(out.read_text())
  assert r["fits"] is True and r["fixes"] == []
  assert r["mesh"]["fsdp"] == 8 and r["compute_dtype"] == "bfloat16"
  assert r["capacity_bytes"] == peaks.by_name("v5e").memory_bytes
  m = r["memory_per_device_bytes"]
  # FSDP: a device holds well under half of the fp32 parameters.
  assert 0 < m["params"] < 0.5 * 4 * r["params"]
  assert m["temporaries"] > 0 and m["total"] >= m["temporaries"]
  assert r["flops_per_step"]["analytic"] > 0 and r["flops_per_step"]["xla"]
  # The fixes, biggest part first, name the settings to change.
  two = {"data": 2, "fsdp": 1, "sequence": 1, "tensor": 1}
  too_big = {"params": 100, "optimizer": 200, "temporaries": 1000,
             "total": 1300}
  no_remat = tiny_config("tokenizer.encoder.remat=none",
                         "tokenizer.decoder.remat=none")
  fixes = plan.advice(no_remat, two, too_big, usable=500)
  assert "mesh.preset=fsdp" in fixes[0]
  assert any("tokenizer.encoder.remat=save_dots" in f for f in fixes)
  assert any("train.batch_size=4" in f for f in fixes)
  # remat "auto" is save_dots at this size, so the next step is full.
  fixes = plan.advice(tiny_config(), two, too_big, usable=500)
  assert any("tokenizer.encoder.remat=full" in f for f in fixes)
  # One device whose state alone is too big: how many devices it needs.
  one = {"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1}
  fixes = plan.advice(tiny_config(), one, {"params": 300, "optimizer": 600,
                                           "temporaries": 0, "total": 900},
                      usable=500)
  assert "FSDP over at least 4 devices" in fixes[0]


def test_plan_explains_targets_it_cannot_make():
  with pytest.raises(JaxWorldError, match="sizes: 8, 16, 32"):
    plan.topology_name("v5p-100")
  assert plan.topology_name("v5p-256") == ("v5p", "v5p:4x4x8")
  assert len(jax.devices()) == 8  # JAX has started, with the tests' 8
  with pytest.raises(JaxWorldError, match="fresh process"):
    plan.target_devices(None, 16)
  with pytest.raises(JaxWorldError, match="exactly one"):
    plan.target_devices("v5p-8", 8)


def test_a_plan_resolves_auto_settings_for_its_target_not_this_cpu():
  cfg = tiny_config("dynamics.backbone.attention=\"cudnn\"")
  target = plan.for_target(cfg, accelerator=True)
  assert target.tokenizer.encoder.dtype == "bfloat16"
  assert target.tokenizer.encoder.attention == "xla"  # auto, on a GPU / TPU
  assert target.dynamics.backbone.attention == "cudnn"  # asked for
  assert plan.for_target(cfg, accelerator=False) is cfg


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="needs the tpu extra: pip install 'jax[tpu]'")
def test_plan_for_a_tpu_slice_without_a_tpu():
  devices, target = plan.target_devices("v5p-8", None)
  assert len(devices) == 4 and "TPU v5" in target
  device = peaks.for_device(devices[0])
  assert device.name == "v5p"
  cfg = plan.for_target(tiny_config("mesh.preset=\"fsdp\""), True)
  r = plan.run(cfg, devices, target, device, xla_flops=False)
  assert r["fits"] is True and r["mesh"]["fsdp"] == 4
  assert r["memory_per_device_bytes"]["temporaries"] > 0
  assert r["step_s_at_40pct_mfu"] > 0


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="needs the tpu extra: pip install 'jax[tpu]'")
def test_a_mesh_the_torus_cannot_host_is_refused_with_the_fix():
  from jaxworld.parallel import mesh as meshlib
  devices, _ = plan.target_devices("v5p-128", None)  # 4x4x4 chips
  cfg = tiny_config('mesh.preset="fsdp"', "mesh.data=2", "mesh.fsdp=32")
  with pytest.raises(JaxWorldError, match="physical axes"):
    meshlib.make_mesh(cfg.mesh, devices)
