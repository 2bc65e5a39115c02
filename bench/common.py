"""Shared set-up for the benchmarks: config, compiled step, random batch."""

from __future__ import annotations

import dataclasses
import os
from typing import Any


def simulate_cpu_devices(n: int) -> None:
  """Ask for `n` simulated CPU devices; call before jax is first imported."""
  if "jax" in __import__("sys").modules:
    raise RuntimeError("simulate_cpu_devices must run before importing jax")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    # Sequential scheduling: see tests/conftest.py (a CPU deadlock).
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_force_host_platform_device_count={n} "
        f"--xla_cpu_enable_concurrency_optimized_scheduler=false").strip()


def load(name: str, overrides: list[str]) -> Any:
  """A repo config by name as training sees it: a dynamics config gets the
  tokenizer section of configs/tokenizer.toml (tokenizer_continuous.toml
  for a kind on continuous latents) and, with latent actions, the lam
  section of configs/lam.toml, as training takes them from those runs."""
  from jaxworld import config as configlib
  from jaxworld.models import build
  cfg = configlib.load(configlib.resolve(name), overrides)
  if cfg.train.stage == "dynamics" and build.tokenizer_kind(cfg).trained:
    tok_name = {"latents": "tokenizer_continuous"}.get(
        build.dynamics_kind(cfg).codes, "tokenizer")
    tok = configlib.load(configlib.resolve(tok_name)).tokenizer
    cfg = dataclasses.replace(cfg, tokenizer=tok)
    if cfg.dynamics.actions == "latent":
      lam = configlib.load(configlib.resolve("lam")).lam
      cfg = dataclasses.replace(cfg, lam=lam)
  return cfg


def compile_step(cfg: Any, mesh: Any) -> tuple[Any, Any]:
  """(compiled step, frozen models or None); random frozen models cost the
  same as trained ones."""
  from jaxworld.train import step as steplib
  frozen = frozen_models(cfg, mesh)
  return steplib.compile_step(cfg, cfg.train.stage, mesh, frozen), frozen


def frozen_models(cfg: Any, mesh: Any) -> Any:
  """What a dynamics step reads, randomly initialised: the tokenizer, and
  with latent actions the LAM (as `runs.assemble.frozen_models` restores)."""
  import jax
  from flax import nnx
  from jaxworld.models import build
  from jaxworld.parallel import sharding
  from jaxworld.train import step as steplib
  if cfg.train.stage != "dynamics":
    return None
  model = build.tokenizer(cfg, nnx.Rngs(0))
  if cfg.dynamics.actions == "latent":
    model = build.FrozenModels(model, build.lam(cfg, nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  return steplib.Frozen(graphdef, jax.device_put(
      state, sharding.param_shardings(state, mesh, cfg.mesh.rules)))


def random_batch(cfg: Any, shardings: Any) -> dict[str, Any]:
  import numpy as np
  from jaxworld.train import step as steplib
  rng = np.random.default_rng(0)
  spec = steplib.batch_spec(cfg, cfg.train.batch_size)
  return steplib.device_batch(
      {"frames": rng.integers(0, 256, spec["frames"].shape, np.uint8),
       "actions": rng.integers(0, 5, spec["actions"].shape).astype(np.int32)},
      shardings)


def time_steps(compiled: Any, frozen: Any, batch: Any, steps: int) -> float:
  """Seconds per step after one warm-up step."""
  import time
  import jax
  state = compiled.init()
  frozen_state = frozen.state if frozen is not None else None
  state, m = compiled.step(state, frozen_state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = compiled.step(state, frozen_state, batch)
  jax.block_until_ready(m)
  return (time.perf_counter() - t0) / steps
