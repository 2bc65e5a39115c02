"""Test setup: 8 simulated CPU devices so every sharding path runs anywhere.

XLA_FLAGS must be set before jax is first imported, hence at module import.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import NamedTuple

# 8 devices on (say) 2 cores: XLA:CPU's thread pool is sized so that their
# collectives cannot take every thread (jaxworld/parallel/cpu_devices.py;
# the CLI does the same), here so that subprocesses inherit it. The
# sequential scheduler flag, set against that deadlock for older jaxlib, is
# ignored from jaxlib 0.10 ("[Deprecated, do not use]").
# --xla_backend_optimization_level=0: the tests' tiny programs run a few
# steps each, so LLVM's optimisation passes cost more than they save (one
# preset test: 52 -> 24 s of CPU); what is computed is the same.
CPU_DEVICES = 8
CPU_FLAGS = (f"--xla_force_host_platform_device_count={CPU_DEVICES} "
             "--xla_cpu_enable_concurrency_optimized_scheduler=false "
             "--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_FLAGS}"
from jaxworld.parallel import cpu_devices  # noqa: E402 (no jax import)
cpu_devices.size_thread_pool()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Most of the suite's time is XLA compiling the same tiny programs again in
# other tests, xdist workers and the subprocesses of CLI and multi-process
# tests. One persistent compilation cache for the run serves them all (JAX's
# own variable, which wins over the CLI's ~/.cache default): set here,
# before workers and subprocesses start, so they inherit it; removed when
# the run ends (pytest_unconfigure).
_OWN_XLA_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_XLA_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="jaxworld-tests-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# A complete but tiny experiment: 32px frames, 16 tokens per frame,
# two-block backbones. Every test that trains uses these sizes.
TINY_TOML = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"


def _overrides(table: dict, prefix: str = "") -> tuple[str, ...]:
  """configs/tiny.toml as `section.key=value` strings, in file order; json
  spells numbers, strings and lists as TOML does."""
  out = []
  for key, value in table.items():
    out += (_overrides(value, f"{prefix}{key}.") if isinstance(value, dict)
            else [f"{prefix}{key}={json.dumps(value)}"])
  return tuple(out)


# The same experiment as overrides, for command lines: `train tokenizer
# *TINY` is configs/tokenizer.toml at the tiny sizes.
TINY = _overrides(tomllib.loads(TINY_TOML.read_text()))


def tiny_config(*overrides: str):
  from jaxworld import config
  return config.load(TINY_TOML, overrides)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
  """A generated dataset of the tiny world, shared by all tests."""
  from jaxworld.data import generate
  root = tmp_path_factory.mktemp("data")
  generate.generate_dataset(tiny_config(), root, overwrite=True)
  return root


class DemoRun(NamedTuple):
  root: Path
  exit_code: int
  stdout: str  # what the demo printed: its table and verdict


@pytest.fixture(scope="session")
def tiny_demo_run(tmp_path_factory) -> DemoRun:
  """`jaxworld demo --recipe dynamics` (FSQ tokenizer + MaskGIT) on the
  tiny world (data, both stages, rollout), logging every step; its exit code and printout are kept for tests/test_demo.py."""
  from jaxworld import cli
  root = tmp_path_factory.mktemp("demo")
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = cli.main(["demo", "--workdir", str(root), "--recipe", "dynamics",
                     *TINY, "train.log_every=1"])
  print(out.getvalue())  # still in pytest's report of a failing test
  return DemoRun(root, code, out.getvalue())


@pytest.fixture(scope="session")
def tiny_demo(tiny_demo_run) -> Path:
  """The tiny demo's directory (data/, an FSQ tokenizer/, MaskGIT
  dynamics/, eval/) plus a `jaxworld rollout` of it in rollout/. Tests read
  it or copy what they change."""
  from jaxworld import cli
  # 1: it ran to the end, and 4 steps miss the demo's bar (tests/test_demo.py).
  assert tiny_demo_run.exit_code == 1, tiny_demo_run.stdout
  root = tiny_demo_run.root
  if not (root / "rollout" / "rollout.json").exists():
    assert cli.main(["rollout", "--workdir", str(root / "dynamics"),
                     "--out", str(root / "rollout")]) == 0
  return root


def pytest_unconfigure(config):
  if _OWN_XLA_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
  """Groups for `--dist loadgroup` (pyproject addopts): one per file, as
  --dist loadfile (a module's fixtures are built once), except that every
  file that reads the tiny demo shares one group, so one worker builds it
  (the slowest fixture) instead of each."""
  demo_files = {item.path for item in items
                if "tiny_demo_run" in item.fixturenames}
  for item in items:
    group = "tiny_demo" if item.path in demo_files else item.path.stem
    item.add_marker(pytest.mark.xdist_group(group))


def assert_bundle_plays_like_rollout(run: Path, bundle: Path) -> None:
  """examples/play_bundle.py imagines exactly the frames `rollout.rollout`
  does for the bundle's sample episodes (any dynamics kind)."""
  import importlib.util

  import numpy as np

  from jaxworld.infer import rollout
  from jaxworld.runs import assemble
  script = Path(__file__).parents[1] / "examples" / "play_bundle.py"
  spec = importlib.util.spec_from_file_location("play_bundle", script)
  play = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(play)
  with np.load(bundle / "episodes.npz") as f:
    frames, actions = f["frames"][:2], f["actions"][:2]
  expected = rollout.rollout(assemble.load_world_model(run), frames,
                             actions)["model"]
  np.testing.assert_array_equal(
      play.rollout(play.load_bundle(bundle), frames, actions), expected)
