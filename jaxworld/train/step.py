"""The train state and the compiled, sharded train step.

The state is one nnx graph (model + optimizer) split into a static graphdef
and an nnx.State pytree. Optimizer moments inherit their parameter's logical
axis names, so one call maps the whole state onto the mesh. The step is a
pure function jitted with explicit in/out shardings and the state donated:
parameters and moments are updated in place, and the same code runs data
parallel, FSDP or tensor parallel depending only on the mesh and rules.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxworld.config import Config
from jaxworld.models import build
from jaxworld.parallel import activations, axes
from jaxworld.parallel import batch as batchlib, sharding
from jaxworld.models.tokenizer import to_unit_float
from jaxworld.train import optim

log = logging.getLogger(__name__)


class TrainState(nnx.Module):
  """Everything the step updates: the model and its optimizer."""

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation):
    self.model = model
    self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


@dataclasses.dataclass(frozen=True)
class Frozen:
  """A model the step reads but does not train (e.g. the tokenizer)."""
  graphdef: Any
  state: nnx.State


def dynamics_inputs(frozen: nnx.Module, batch: dict[str, jax.Array],
                    latent_actions: bool) -> dict[str, jax.Array]:
  """What every dynamics kind trains on, computed in-step outside the
  gradient: the frozen tokenizer's codes of the frames (tokens, or a
  continuous tokenizer's latents) and the actions, real or inferred by the
  frozen LAM (`frozen` is then a `build.FrozenModels`)."""
  frames_BTHWC = to_unit_float(batch["frames"])
  tokenizer = frozen.tokenizer if latent_actions else frozen
  actions_BT = batch["actions"]
  if latent_actions:  # a_t is the transition t -> t+1; the last is unused
    actions_BTm1 = frozen.lam.actions(frames_BTHWC)
    actions_BT = jnp.concatenate(
        [actions_BTm1, jnp.zeros_like(actions_BTm1[:, :1])], 1)
  return {"tokens": tokenizer.encode(frames_BTHWC), "actions": actions_BT}


@dataclasses.dataclass
class CompiledStep:
  """A stage's train step, compiled for one mesh and batch shape."""
  graphdef: Any
  state_shardings: nnx.State
  batch_shardings: dict[str, Any]
  init: Any      # () -> state, created directly in its sharded layout
  step: Any      # (state, frozen_state, batch) -> (state, metrics)
  memory: str    # compiled memory summary, for the log
  replicated: Any  # sharding of the step's scalar outputs (and the health)


def abstract_state(cfg: Config, stage: str) -> tuple[Any, nnx.State]:
  """(graphdef, state of ShapeDtypeStructs) without allocating anything."""
  tx = optim.make(cfg.train)
  ts = nnx.eval_shape(
      lambda: TrainState(build.for_stage(cfg, stage, cfg.train.seed), tx))
  return nnx.split(ts)


def batch_spec(cfg: Config, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
  t, s = cfg.data.window, cfg.world.image_size
  return {"frames": jax.ShapeDtypeStruct((global_batch, t, s, s, 3), jnp.uint8),
          "actions": jax.ShapeDtypeStruct((global_batch, t), jnp.int32)}


@dataclasses.dataclass
class LoweredStep:
  """A stage's train step lowered for one mesh and batch shape (from shapes
  alone: nothing is allocated), before XLA compiles it."""
  graphdef: Any
  state_shardings: nnx.State
  batch_shardings: dict[str, Any]
  init: Any      # () -> state, created directly in its sharded layout
  lowered: Any   # jax.stages.Lowered of (state, frozen_state, batch)
  replicated: Any


def compile_step(cfg: Config, stage: str, mesh: Mesh,
                 frozen: Frozen | None) -> CompiledStep:
  """Lowers and compiles init and step ahead of time for this mesh."""
  low = lower_step(cfg, stage, mesh, frozen)
  compiled = low.lowered.compile()
  return CompiledStep(low.graphdef, low.state_shardings, low.batch_shardings,
                      low.init, compiled, _memory_summary(compiled),
                      low.replicated)


def lower_step(cfg: Config, stage: str, mesh: Mesh,
               frozen: Frozen | None) -> LoweredStep:
  """Traces and lowers init and step for this mesh; `frozen.state` may be
  abstract (ShapeDtypeStructs), so a step can be planned for devices this
  process does not have."""
  tx = optim.make(cfg.train)
  graphdef, abstract = abstract_state(cfg, stage)
  state_sh = sharding.param_shardings(abstract, mesh, cfg.mesh.rules)
  batch = batch_spec(cfg, cfg.train.batch_size)
  tokens = build.num_tokens(cfg)
  batchlib.check_splits("data.window", cfg.data.window, axes.FRAMES, mesh,
                        cfg.mesh.rules)
  batchlib.check_splits("tokens per frame", tokens, axes.TOKENS, mesh,
                        cfg.mesh.rules)
  batch_sh = {k: batchlib.batch_sharding(mesh, v.ndim, cfg.mesh.rules)
              for k, v in batch.items()}
  kind_loss = build.stage_kind(cfg, stage).loss
  latent_actions = cfg.dynamics.actions == "latent"
  lr = optim.schedule(cfg.train)
  seed = cfg.train.seed

  def init() -> nnx.State:
    return nnx.state(TrainState(build.for_stage(cfg, stage, seed), tx))

  def step(state: nnx.State, frozen_state: Any, batch: dict[str, jax.Array]):
    # The values before the update, apart: the merged graph's Variables are
    # updated in place, and `state` may hold those same Variables.
    before = jax.tree.map(lambda x: x, state)
    ts = nnx.merge(graphdef, state)
    count = ts.optimizer.step[...]
    # Randomness (masks) is a pure function of seed and step: a resumed run
    # draws exactly what the uninterrupted run would have.
    rng = jax.random.fold_in(jax.random.key(seed), count)
    if frozen is not None:
      batch = dynamics_inputs(nnx.merge(frozen.graphdef, frozen_state),
                              batch, latent_actions)

    def loss_fn(model):
      return kind_loss(model, batch, rng)

    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(ts.model)
    grad_norm = optax.tree.norm(grads)
    # A NaN/Inf loss or gradient never reaches the parameters or moments:
    # the update is selected away on device (no per-step host sync); the
    # loop reads `finite` and applies train.nan_policy.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    ts.optimizer.update(ts.model, grads)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             nnx.state(ts), before)
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
               "learning_rate": lr(count), "finite": finite}
    return new_state, metrics

  frozen_abstract = frozen.state if frozen is not None else None
  frozen_sh = (sharding.param_shardings(frozen.state, mesh, cfg.mesh.rules)
               if frozen is not None else None)
  replicated = sharding.replicated(mesh)
  init_jit = jax.jit(init, out_shardings=state_sh)
  step_jit = jax.jit(step, in_shardings=(state_sh, frozen_sh, batch_sh),
                     out_shardings=(state_sh, replicated), donate_argnums=0)
  with activations.use_rules(mesh, cfg.mesh.rules):  # traced under the rules
    lowered = step_jit.lower(abstract, frozen_abstract, batch)
  return LoweredStep(graphdef, state_sh, batch_sh, init_jit, lowered,
                     replicated)


def new_health(start: int, replicated: Any) -> dict[str, jax.Array]:
  """On-device record of non-finite steps since `start`: `step` (the last
  step counted), `nonfinite` (how many), `first` (the first one; -1: none).
  Kept on device so that the loop syncs only at log and save steps."""
  with jax.transfer_guard_host_to_device("allow"):
    return jax.device_put({"step": np.int32(start), "nonfinite": np.int32(0),
                           "first": np.int32(-1)}, replicated)


@jax.jit
def track_health(health: dict[str, jax.Array], finite: jax.Array
                 ) -> dict[str, jax.Array]:
  """Counts one more step; `finite` is the step's metrics["finite"]."""
  step = health["step"] + 1
  bad = jnp.logical_not(finite)
  return {"step": step,
          "nonfinite": health["nonfinite"] + bad.astype(jnp.int32),
          "first": jnp.where(bad & (health["first"] < 0), step,
                             health["first"])}


def _memory_summary(compiled: Any) -> str:
  try:
    m = compiled.memory_analysis()
  except NotImplementedError:  # Not every backend reports it.
    return "n/a"
  if m is None:
    return "n/a"
  mib = lambda b: f"{b / 2**20:.1f} MiB"
  return (f"args {mib(m.argument_size_in_bytes)}, temps "
          f"{mib(m.temp_size_in_bytes)}, outputs {mib(m.output_size_in_bytes)}"
          f" per device")


def device_batch(batch: dict[str, np.ndarray], shardings: dict[str, Any]
                 ) -> dict[str, jax.Array]:
  """This process's numpy batch -> global arrays sharded over the mesh."""
  n = jax.process_count()
  # The one intended host-to-device copy of the loop (which otherwise runs
  # under a transfer guard).
  with jax.transfer_guard_host_to_device("allow"):
    return {k: jax.make_array_from_process_local_data(
        shardings[k], v, (v.shape[0] * n, *v.shape[1:]))
            for k, v in batch.items()}
