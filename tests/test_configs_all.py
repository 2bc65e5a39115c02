"""Every file in configs/ loads and validates: experiment configs (any
folder but mesh/ and sweeps/), mesh presets (through a config that uses
them) and sweep files (through the sweep loader). Parametrized by file, so a
broken one fails under its own name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jaxworld import config
from jaxworld.errors import JaxWorldError
from jaxworld.eval import sweep

ROOT = config.CONFIG_DIR
FILES = sorted(ROOT.glob("**/*.toml"))
PRESETS = [p for p in FILES if p.parent == ROOT / "mesh"]
SWEEPS = [p for p in FILES if p.parent == ROOT / "sweeps"]
CONFIGS = [p for p in FILES if p not in PRESETS and p not in SWEEPS]


def _ids(paths: list[Path]) -> list[str]:
  return [str(p.relative_to(ROOT)) for p in paths]


def test_every_kind_of_file_is_found():
  # An empty glob (configs/ moved, files renamed) would pass vacuously.
  assert len(CONFIGS) >= 5 and len(PRESETS) >= 4 and len(SWEEPS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_config_file_loads(path, tmp_path):
  cfg = config.load(path)
  # What a run saves as config.json must load back to the same config.
  config.save(cfg, tmp_path / "config.json")
  assert config.load(tmp_path / "config.json") == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_config_file_resolves_by_name(path):
  if path.parent == ROOT:  # `jaxworld train NAME` finds top-level files
    assert config.resolve(path.stem) == path


@pytest.mark.parametrize("path", PRESETS, ids=_ids(PRESETS))
def test_mesh_preset_loads(path):
  by_name = config.from_dict({}, [f"mesh.preset={path.stem}"])
  by_path = config.from_dict({}, [f'mesh.preset="{path}"'])
  assert by_name.mesh.rules
  assert dataclasses.replace(by_path.mesh, preset=path.stem) == by_name.mesh


@pytest.fixture
def demo_layout(tmp_path, monkeypatch):
  """The directories the example sweeps point at (`jaxworld demo`'s)."""
  demo = tmp_path / "runs" / "demo"
  for d in ("data", "tokenizer", "dynamics"):
    (demo / d).mkdir(parents=True)
  config.save(config.load(config.resolve("dynamics")),
              demo / "dynamics" / "config.json")
  monkeypatch.chdir(tmp_path)  # the sweeps' relative paths resolve here


@pytest.mark.parametrize("path", SWEEPS, ids=_ids(SWEEPS))
def test_sweep_file_loads(path, demo_layout):
  s = sweep.load_sweep(path)
  assert s.points


@pytest.mark.parametrize("text, match", [
    ("[train]\nstpes = 3\n", "Unknown config key.*train.stpes"),
    ('[train]\nstage = "tokeniser"\n', "train.stage='tokeniser'.*allowed"),
    ("[train]\nsteps = \n", "does not parse"),
    ("[lam.encoder]\nnum_heads = 3\n", "lam.encoder.width=128 is not "
     "divisible by lam.encoder.num_heads=3"),
], ids=["unknown-key", "bad-choice", "syntax", "lam-heads"])
def test_a_broken_config_file_fails_naming_the_problem(tmp_path, text, match):
  path = tmp_path / "broken.toml"
  path.write_text(text)
  with pytest.raises(JaxWorldError, match=match):
    config.load(path)
