"""A stage's compiled train step on random inputs, as the benchmarks time it:
the config as training sees it, random frozen models, a random batch, and
per-step timings. `jaxworld bench` and the scripts in bench/ share it.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxworld import config as configlib
from jaxworld.config import Config
from jaxworld.models import build
from jaxworld.parallel import sharding
from jaxworld.train import step as steplib


def load(name: str, overrides: list[str]) -> Config:
  """A repo config by name as training sees it: a dynamics config gets the
  tokenizer section of configs/tokenizer.toml (tokenizer_continuous.toml
  for a kind on continuous latents) and, with latent actions, the lam
  section of configs/lam.toml, as training takes them from those runs."""
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


def compile_step(cfg: Config, mesh: Any) -> tuple[Any, Any]:
  """(compiled step, frozen models or None); random frozen models cost the
  same as trained ones."""
  frozen = frozen_models(cfg, mesh)
  return steplib.compile_step(cfg, cfg.train.stage, mesh, frozen), frozen


def frozen_models(cfg: Config, mesh: Any) -> steplib.Frozen | None:
  """What a dynamics step reads, randomly initialised: the tokenizer, and
  with latent actions the LAM (as `runs.assemble.frozen_models` restores)."""
  if cfg.train.stage != "dynamics":
    return None
  model = build.tokenizer(cfg, nnx.Rngs(0))
  if cfg.dynamics.actions == "latent":
    model = build.FrozenModels(model, build.lam(cfg, nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  return steplib.Frozen(graphdef, jax.device_put(
      state, sharding.param_shardings(state, mesh, cfg.mesh.rules)))


def random_batch(cfg: Config, shardings: Any) -> dict[str, Any]:
  rng = np.random.default_rng(0)
  spec = steplib.batch_spec(cfg, cfg.train.batch_size)
  return steplib.device_batch(
      {"frames": rng.integers(0, 256, spec["frames"].shape, np.uint8),
       "actions": rng.integers(0, 5, spec["actions"].shape).astype(np.int32)},
      shardings)


def step_seconds(compiled: Any, frozen: Any, batch: Any, steps: int,
                 warmup: int = 1, state: Any = None,
                 after_each: Any = None,
                 cpu_seconds: list[float] | None = None) -> list[float]:
  """Seconds of each of `steps` steps after `warmup` untimed ones. Each
  timed step waits for its result, so a slow step shows as itself;
  `after_each(seconds)`, if given, runs after every timed step with that
  step's time (and is not counted in it); `cpu_seconds` gets each step's
  CPU time of this process (all its threads)."""
  state = compiled.init() if state is None else state
  frozen_state = frozen.state if frozen is not None else None
  for _ in range(warmup):
    state, m = compiled.step(state, frozen_state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, m = compiled.step(state, frozen_state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
    if cpu_seconds is not None:
      cpu_seconds.append(time.process_time() - c0)
    if after_each is not None:
      after_each(times[-1])
  return times


def time_steps(compiled: Any, frozen: Any, batch: Any, steps: int) -> float:
  """Median seconds per step after one warm-up step."""
  return statistics.median(step_seconds(compiled, frozen, batch, steps))


def abstract_frozen(cfg: Config) -> steplib.Frozen | None:
  """`frozen_models` as shapes only (nothing allocated), for lowering."""
  if cfg.train.stage != "dynamics":
    return None

  def make() -> nnx.Module:
    model = build.tokenizer(cfg, nnx.Rngs(0))
    if cfg.dynamics.actions == "latent":
      model = build.FrozenModels(model, build.lam(cfg, nnx.Rngs(0)))
    return model
  return steplib.Frozen(*nnx.split(nnx.eval_shape(make)))


def loader_rate(cfg: Config, root: str, batches: int,
                workers: int | None = None) -> float:
  """Windows per second of the Grain pipeline over `root`, after the first
  batch (worker start-up) is out."""
  from jaxworld.data import pipeline
  data_cfg = cfg.data if workers is None else dataclasses.replace(
      cfg.data, num_workers=workers)
  it = iter(pipeline.train_dataset(data_cfg, root, cfg.train.batch_size))
  try:
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    dt = time.perf_counter() - t0
  finally:
    if hasattr(it, "close"):
      it.close()
  return batches * cfg.train.batch_size / dt
