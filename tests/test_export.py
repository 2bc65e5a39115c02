"""`jaxworld export`: a bundle that plays without jaxworld, frame for frame."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY
from jaxworld import cli
from jaxworld.data import pipeline
from jaxworld.errors import JaxWorldError
from jaxworld.infer import export, rollout
from jaxworld.runs import assemble

SCRIPT = Path(__file__).parents[1] / "examples" / "play_bundle.py"

# Runs the script as __main__, then fails if anything imported jaxworld or
# flax along the way (a runtime check next to the static one below).
RUN_ISOLATED = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
  runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
  if e.code:
    raise
loaded = [m for m in sys.modules if m.split(".")[0] in ("jaxworld", "flax")]
assert not loaded, loaded
"""


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
  """A tiny dynamics run (2 steps on a 2-step tokenizer) that samples with
  temperature 1, so the rollout depends on every key split."""
  root = tmp_path_factory.mktemp("export")
  common = [*TINY, "train.steps=2", f"data.path={tiny_dataset}"]
  assert cli.main(["train", "tokenizer", *common,
                   "--workdir", str(root / "tok")]) == 0
  assert cli.main(["train", "dynamics", *common, "rollout.temperature=1.0",
                   f"dynamics.tokenizer_workdir={root / 'tok'}",
                   "--workdir", str(root / "dyn")]) == 0
  return root / "dyn"


@pytest.fixture(scope="module")
def world(run):
  """(config, dynamics, tokenizer) and held-out episodes."""
  loaded = assemble.load_world_model(run)
  episodes = pipeline.load_episodes(loaded.cfg.data.path, "eval", 4)
  return loaded.cfg, loaded.dynamics, loaded.tokenizer, episodes


@pytest.fixture(scope="module")
def expected(world):
  """`rollout.rollout`'s imagined frames for the first b episodes (cached:
  numerics may depend on the batch size, so compare at equal sizes)."""
  cfg, dynamics, tokenizer, episodes = world
  cache = {}

  def frames(b):
    if b not in cache:
      cache[b] = rollout.rollout(
          assemble.WorldModel(cfg, dynamics, tokenizer, None),
          episodes["frames"][:b], episodes["actions"][:b])["model"]
    return cache[b]
  return frames


@pytest.fixture(scope="module")
def bundles(run, tmp_path_factory):
  return {"float32": export.export_run(run),
          "bfloat16": export.export_run(
              run, tmp_path_factory.mktemp("bf16") / "bundle", "bfloat16")}


@pytest.fixture(scope="module")
def play():
  """examples/play_bundle.py as a module."""
  spec = importlib.util.spec_from_file_location("play_bundle", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_script_plays_the_same_frames_as_rollout(world, expected, bundles,
                                                 tmp_path):
  # The bundle carries held-out episodes (context + horizon frames) to try.
  sample = bundles["float32"] / "episodes.npz"
  with np.load(sample) as f:
    assert f["frames"].shape == (4, 2 + 3, 32, 32, 3)
    np.testing.assert_array_equal(f["frames"], world[3]["frames"][:, :5])
  proc = subprocess.run(
      [sys.executable, "-c", RUN_ISOLATED, str(SCRIPT),
       str(bundles["float32"]), "--episodes", str(sample),
       "--out", str(tmp_path / "imagined.npz")],
      env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=tmp_path,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(tmp_path / "imagined.npz") as out:
    imagined = out["frames"]
  assert imagined.dtype == np.uint8 and imagined.shape == (4, 3, 32, 32, 3)
  np.testing.assert_array_equal(imagined, expected(4))


def test_one_bundle_serves_any_batch_size_and_the_seed_matters(
    world, expected, bundles, play):
  cfg, episodes = world[0], world[3]
  bundle = play.load_bundle(bundles["float32"])
  for b in (1, 4):
    frames, actions = episodes["frames"][:b], episodes["actions"][:b]
    np.testing.assert_array_equal(play.rollout(bundle, frames, actions),
                                  expected(b))
  other_seed = play.rollout(bundle, frames, actions, seed=cfg.rollout.seed + 1)
  assert not np.array_equal(other_seed, expected(4))


def test_manifest_describes_symbolic_functions(bundles):
  manifest = json.loads((bundles["float32"] / "manifest.json").read_text())
  assert manifest["format"] == "jaxworld-bundle"
  assert set(manifest["platforms"]) >= {"cpu", "cuda"}
  f = manifest["functions"]
  assert f["encode"]["inputs"] == {"frames": "uint8[b, t, 32, 32, 3]"}
  assert f["dynamics_step"]["inputs"]["history"] == "int32[b, t, 16]"
  assert f["dynamics_step"]["outputs"] == {"tokens": "int32[b, 16]",
                                           "rng": "uint32[2]"}
  assert f["decode"]["outputs"] == {"frame": "uint8[b, 32, 32, 3]"}
  assert manifest["rollout"]["window"] == 4
  assert manifest["rollout"]["temperature"] == 1.0
  config = json.loads((bundles["float32"] / "config.json").read_text())
  assert config["data"]["window"] == 4


def test_bfloat16_bundle_halves_params_and_plays_rounded_weights(
    world, bundles, play):
  cfg, dynamics, tokenizer, episodes = world
  manifest = json.loads((bundles["bfloat16"] / "manifest.json").read_text())
  assert manifest["param_dtype"] == "bfloat16"
  for name in ("tokenizer", "dynamics"):
    sizes = {}
    for dtype, path in bundles.items():
      with np.load(path / f"{name}.npz", allow_pickle=False) as npz:
        assert {npz[k].dtype for k in npz.files} == {
            np.dtype(np.uint16 if dtype == "bfloat16" else np.float32)}
        sizes[dtype] = sum(npz[k].nbytes for k in npz.files)
    assert sizes["bfloat16"] * 2 == sizes["float32"]

  def rounded(model):
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(
        lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), state))

  frames, actions = episodes["frames"][:1], episodes["actions"][:1]
  # The bundle upcasts its bf16 weights and computes as in float32, so it
  # matches a float32 rollout of the rounded weights exactly.
  expected = rollout.rollout(
      assemble.WorldModel(cfg, rounded(dynamics), rounded(tokenizer), None),
      frames, actions)["model"]
  np.testing.assert_array_equal(
      play.rollout(play.load_bundle(bundles["bfloat16"]), frames, actions),
      expected)


def test_export_never_overwrites_and_names_the_fix(run, bundles, tmp_path):
  before = (bundles["float32"] / "manifest.json").read_text()
  with pytest.raises(JaxWorldError, match="--out DIR"):
    export.export_run(run, bundles["float32"])
  assert (bundles["float32"] / "manifest.json").read_text() == before
  with pytest.raises(JaxWorldError, match="float32, bfloat16"):
    export.export_run(run, tmp_path / "x", dtype="float16")
  with pytest.raises(JaxWorldError, match="needs a dynamics run"):
    export.export_run(run.parent / "tok", tmp_path / "y")
  assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_script_imports_only_jax_numpy_and_the_stdlib():
  roots = set()
  for node in ast.walk(ast.parse(SCRIPT.read_text())):
    if isinstance(node, ast.Import):
      roots |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      roots.add((node.module or "").split(".")[0])
  third_party = roots - set(sys.stdlib_module_names) - {"__future__"}
  assert third_party == {"jax", "numpy"}
