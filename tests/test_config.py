"""Configs: TOML + overrides, validated with messages that say the fix."""

import typing

import pytest

from conftest import tiny_config
from jaxworld import config
from jaxworld.errors import JaxWorldError


def test_repo_configs_load():
  for name in ("tokenizer", "dynamics"):
    cfg = config.load(config.resolve(name))
    assert cfg.train.stage == name


def test_overrides_are_typed():
  cfg = config.from_dict({}, ["train.steps=7", "train.learning_rate=1",
                              "data.path=/tmp/x", 'mesh.rules=[["embed", "fsdp"]]'])
  assert cfg.train.steps == 7
  assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
  assert cfg.data.path == "/tmp/x"
  assert cfg.mesh.rules == (("embed", "fsdp"),)


def test_unknown_key_names_valid_keys():
  with pytest.raises(JaxWorldError, match="Unknown config key.*train.stpes.*Valid keys.*steps"):
    config.from_dict({}, ["train.stpes=3"])


def test_wrong_type_is_rejected():
  with pytest.raises(JaxWorldError, match="train.steps must be int"):
    config.from_dict({}, ['train.steps="many"'])


def test_impossible_combination_is_rejected():
  with pytest.raises(JaxWorldError, match="not divisible by tokenizer.patch_size"):
    config.from_dict({}, ["tokenizer.patch_size=5"])


def test_round_trip(tmp_path):
  cfg = config.from_dict({}, ["train.steps=11"])
  config.save(cfg, tmp_path / "c.json")
  assert config.load(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("key, bad, allowed", [
    ("data.bad_records", "ignore", '"error", "skip"'),
    ("train.stage", "vae", '"tokenizer", "lam", "dynamics"'),
    ("dynamics.actions", "none", '"real", "latent"'),
    ("rollout.mask_schedule", "exp", '"cosine", "linear", "square"'),
    ("lam.decoder.remat", "some", '"none", "full", "save_dots"'),
    ("tokenizer.encoder.dtype", "float16", '"auto", "float32", "bfloat16"'),
])
def test_choice_outside_its_literal_names_key_value_and_choices(key, bad,
                                                                allowed):
  with pytest.raises(JaxWorldError) as e:
    config.from_dict({}, [f'{key}="{bad}"'])
  assert f"{key}='{bad}'" in str(e.value) and allowed in str(e.value)


def test_choice_fields_are_literals_but_kinds_stay_open():
  # Kinds name entries of the model registry, which grows at run time.
  hints = typing.get_type_hints(config.TrainConfig)
  assert typing.get_args(hints["stage"]) == ("tokenizer", "lam", "dynamics")
  assert typing.get_type_hints(config.TokenizerConfig)["kind"] is str
  assert typing.get_type_hints(config.DynamicsConfig)["kind"] is str


BACKBONES = ("tokenizer.encoder", "tokenizer.decoder", "dynamics.backbone",
             "lam.encoder", "lam.decoder")


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("override, match", [
    ("num_heads=3", "width=128 is not divisible by {name}.num_heads=3"),
    ("mlp_ratio=0", "{name}.mlp_ratio=0: width, depth, num_heads and "
     "mlp_ratio of a backbone must be positive"),
    ("num_heads=0", "{name}.num_heads=0: "),
    ("depth=-1", "{name}.depth=-1: "),
])
def test_every_backbone_gets_the_same_checks(name, override, match):
  with pytest.raises(JaxWorldError, match=match.format(name=name)):
    config.from_dict({}, [f"{name}.{override}"])


@pytest.mark.parametrize("name", BACKBONES)
def test_cudnn_attention_needs_a_head_width_it_supports(name):
  config.from_dict({}, [f"{name}.attention=cudnn"])  # 128 / 4 heads = 32
  with pytest.raises(JaxWorldError, match=(
      f"{name}.attention=\"cudnn\" needs a head width "
      r"\(width / num_heads = 4\) that is a multiple of 8 and at most 128")):
    config.from_dict({}, [f"{name}.attention=cudnn", f"{name}.num_heads=32"])


@pytest.mark.parametrize("name", ("tokenizer.patch_size", "lam.patch_size"))
def test_patch_sizes_must_be_positive_and_tile_the_frame(name):
  with pytest.raises(JaxWorldError, match=f"{name}=0 must be positive"):
    config.from_dict({}, [f"{name}=0"])
  with pytest.raises(JaxWorldError, match=f"not divisible by {name}=5"):
    config.from_dict({}, [f"{name}=5"])


def test_public_surface_is_re_exported():
  for name in ("Config", "load", "resolve", "from_dict", "to_dict",
               "flatten", "save", "describe", "field", "section",
               "load_preset", "CONFIG_DIR", "BackboneConfig", "MeshConfig"):
    assert hasattr(config, name), name
  assert config.flatten({"a": {"b": 1}}) == {"a.b": 1}


def test_a_run_resumes_with_another_remat_but_not_another_width(tmp_path):
  """remat, scan unrolling and the attention kernel compute the same model:
  a run saved with remat none resumes under the "auto" default (and on a
  GPU with cuDNN attention); a wider model does not."""
  from jaxworld.train import setup
  config.save(tiny_config("dynamics.backbone.remat=none",
                          "tokenizer.encoder.remat=none"),
              tmp_path / "config.json")
  setup.check_workdir(tiny_config("dynamics.backbone.scan_unroll=2",
                                  "dynamics.backbone.attention=cudnn"),
                      tmp_path, resume=True)
  with pytest.raises(JaxWorldError, match=r"in dynamics.backbone.width\. "
                     r".*\*\.remat, \*\.scan_unroll, \*\.attention may "
                     r"change"):
    setup.check_workdir(tiny_config("dynamics.backbone.width=64"), tmp_path,
                        resume=True)
