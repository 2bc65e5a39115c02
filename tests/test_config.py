"""Configs: TOML + overrides, validated with messages that say the fix."""

import pytest

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
