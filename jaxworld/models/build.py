"""The registry of model kinds: the one place config sections become models.

Every tokenizer kind, dynamics kind and the LAM is one module that builds its
model from the config, defines its loss and (dynamics) how it imagines the
next frame, and registers itself here. The trainer, rollout, eval and export
look a kind up by its config name (`tokenizer.kind`, `dynamics.kind`); none
of them branches on a kind. A kind name with a dot is a module path
("mylab.kinds.regressor"): it is imported on first use and must register
itself under that name, so a researcher's variant is one file plus one
config (docs/extending.md).

The contract (shapes: B batch, T time, N tokens per frame, E latent width):

  build(cfg, rngs) -> nnx.Module
      the model, from its config section.
  loss(model, batch, rng) -> (scalar loss, metrics dict)
      differentiated by the trainer. A tokenizer or LAM batch holds uint8
      `frames` [B, T, H, W, C] and int32 `actions` [B, T]; a dynamics batch
      holds the frozen tokenizer's `tokens` ([B, T, N] int32, or latents
      [B, T, N, E] of a continuous tokenizer) and the `actions` [B, T]
      (actions[:, t] is taken after frame t).
  next_frame(model, history, actions_BT, rng, options) -> tokens of frame T
      (dynamics) one imagined frame after T history frames; traceable.
      `options` is a `sampling.SampleOptions`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxworld.config import BackboneConfig, Config, RolloutConfig
from jaxworld.errors import JaxWorldError

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, Metrics]]

# Modules holding the built-in kinds; each registers itself when imported.
BUILTIN_MODULES = ("jaxworld.models.tokenizer", "jaxworld.models.lam",
                   "jaxworld.models.maskgit", "jaxworld.models.autoregressive",
                   "jaxworld.models.diffusion",
                   "jaxworld.models.frame_diffusion",
                   "jaxworld.models.regression")


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """A trainable model: a tokenizer kind or the LAM."""
  name: str
  build: Callable[[Config, nnx.Rngs], nnx.Module]
  loss: LossFn
  # Frames per training window that the loss runs the model's forward pass
  # over, summed over its passes: what the analytic FLOPs of `jaxworld
  # bench` count (e.g. 2 passes over 7 frames for unrolled regression).
  train_frames: Callable[[Config], int] = dataclasses.field(
      default=lambda cfg: cfg.data.window, kw_only=True)


CODES = ("tokens", "latents")  # int32 [B, T, N] or float32 [B, T, N, E]


@dataclasses.dataclass(frozen=True)
class TokenizerKind(ModelKind):
  """A tokenizer: frames <-> the codes dynamics models predict."""
  codes: str = "tokens"  # one of CODES
  # Channels E per token of "latents" codes.
  latent_dim: Callable[[Config], int] = lambda cfg: 0
  # False: a fixed map with no parameters (e.g. pixel patches); there is no
  # run to train, and a dynamics run builds it from its own config.
  trained: bool = True
  # (low, high) that every latent lies in (pixel patches: [-1, 1]), which a
  # dynamics model may clip its predictions to; None: unbounded.
  latent_bounds: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class DynamicsKind(ModelKind):
  """A dynamics model: also imagines frames, on one kind of codes."""
  next_frame: Callable[..., jax.Array]
  codes: str = "tokens"  # what it models: a tokenizer kind of these codes
  # Model passes per imagined frame, from the rollout settings (0: the kind
  # has no such setting, so changing another kind's does not recompile it).
  steps_per_frame: Callable[[RolloutConfig], int] = lambda r: 0
  # (model, codes of T clean frames, actions_BT) -> [B, T, N, D]: the
  # model's own state over them (its backbone outputs), which `jaxworld
  # eval` probes for object positions and velocities; None: not probed.
  features: Callable[..., jax.Array] | None = None


_KINDS: dict[str, dict[str, ModelKind]] = {
    "tokenizer": {}, "dynamics": {}, "lam": {}}


def register(stage: str, kind: ModelKind) -> ModelKind:
  """Adds (or replaces) a kind of `stage` (tokenizer, dynamics or lam)."""
  wanted = {"dynamics": DynamicsKind, "tokenizer": TokenizerKind}.get(stage)
  if wanted is not None and not isinstance(kind, wanted):
    raise TypeError(f"{stage} kind {kind.name!r} must be a {wanted.__name__}")
  if getattr(kind, "codes", CODES[0]) not in CODES:
    raise ValueError(f"{stage} kind {kind.name!r}: codes={kind.codes!r}, "
                     f"not one of {CODES}")
  _KINDS[stage][kind.name] = kind
  return kind


def kind(stage: str, name: str) -> ModelKind:
  """The registered kind `name` of `stage`, importing it if it is a module
  path; a clear error naming the known kinds otherwise."""
  for module in BUILTIN_MODULES:
    importlib.import_module(module)
  if name not in _KINDS[stage] and "." in name:
    _import_kind_module(stage, name)
  if name not in _KINDS[stage]:
    known = ", ".join(sorted(_KINDS[stage]))
    raise JaxWorldError(
        f"{stage}.kind={name!r} is not a registered {stage} kind; use one of "
        f"{known}, or a module path whose module calls "
        f"jaxworld.models.build.register({stage!r}, ...) with that name.")
  return _KINDS[stage][name]


def _import_kind_module(stage: str, name: str) -> None:
  """Imports a researcher's kind module, also relative to the working
  directory (as `python -m` would), so `jaxworld train` finds a file of the
  project it runs in."""
  if os.getcwd() not in sys.path:
    sys.path.append(os.getcwd())
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as e:
    raise JaxWorldError(
        f"{stage}.kind={name!r} names a module that cannot be imported "
        f"({e}). Run from the directory that holds it, put that directory "
        f"on PYTHONPATH, or install it.") from e


def stage_kind(cfg: Config, stage: str) -> ModelKind:
  """The kind `cfg` trains at `stage`."""
  name = {"tokenizer": cfg.tokenizer.kind, "dynamics": cfg.dynamics.kind,
          "lam": "lam"}[stage]
  return kind(stage, name)


def dynamics_kind(cfg: Config) -> DynamicsKind:
  return stage_kind(cfg, "dynamics")  # type: ignore[return-value]


def tokenizer_kind(cfg: Config) -> TokenizerKind:
  return stage_kind(cfg, "tokenizer")  # type: ignore[return-value]


def tokenizer_kinds(codes: str) -> list[str]:
  """The registered tokenizer kinds that give `codes`."""
  kind("tokenizer", "fsq")  # imports the built-in kinds
  return sorted(k.name for k in _KINDS["tokenizer"].values()
                if k.codes == codes)


def for_stage(cfg: Config, stage: str, seed: int) -> nnx.Module:
  return stage_kind(cfg, stage).build(cfg, nnx.Rngs(params=seed))


def tokenizer(cfg: Config, rngs: nnx.Rngs) -> nnx.Module:
  return stage_kind(cfg, "tokenizer").build(cfg, rngs)


def dynamics(cfg: Config, rngs: nnx.Rngs) -> nnx.Module:
  return stage_kind(cfg, "dynamics").build(cfg, rngs)


def lam(cfg: Config, rngs: nnx.Rngs) -> nnx.Module:
  return stage_kind(cfg, "lam").build(cfg, rngs)


# ------------------------------------------ what the kinds' builders share


# From this many backbone parameters up, remat "auto" recomputes everything.
FULL_REMAT_PARAMS = 500_000_000


def remat_policy(b: BackboneConfig) -> str:
  """A backbone's remat policy with "auto" resolved by size.

  save_dots (keep the matmul outputs, recompute the rest) was the fastest
  policy measured, on this CPU (0.5M parameters: 461 against 804 ms a step
  with none) and on an H100 (26M); it also halves the temporaries. From
  FULL_REMAT_PARAMS up activation memory decides what fits, so full (the
  ladder's 1B and 8B rungs, docs/scaling.md).
  """
  if b.remat != "auto":
    return b.remat
  # Per block: spatial and temporal attention (4 D^2 each) and the MLP.
  params = (8 + 2 * b.mlp_ratio) * b.width ** 2 * b.depth
  return "full" if params >= FULL_REMAT_PARAMS else "save_dots"


def attention_kernel(b: BackboneConfig, accelerator: bool | None = None
                     ) -> str:
  """A backbone's attention kernel with "auto" resolved: jaxworld's on CPU,
  where XLA's own gradient of jax.nn's path copies the [L, S]
  probabilities transposed (docs/design-notes.md); XLA's on a GPU or TPU
  (`accelerator`; default: this process's backend) until cuDNN is
  measured."""
  if b.attention != "auto":
    return b.attention
  if accelerator is None:
    accelerator = jax.default_backend() != "cpu"
  return "xla" if accelerator else "jaxworld"


def backbone(b: BackboneConfig) -> dict[str, Any]:
  """STTransformer keyword arguments of a backbone section."""
  kwargs = dataclasses.asdict(b)
  kwargs["remat"] = remat_policy(b)
  kwargs["attention"] = attention_kernel(b)
  if kwargs["dtype"] == "auto":
    # bf16 matmuls on accelerators; CPUs have no fast bf16 path.
    kwargs["dtype"] = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  if b.attention == "cudnn":
    if jax.default_backend() != "gpu":
      raise JaxWorldError(
          f"backbone.attention=\"cudnn\" runs on NVIDIA GPUs only, and this "
          f"process runs on {jax.default_backend()}; set the backbone's "
          f"attention=\"xla\".")
    if kwargs["dtype"] != "bfloat16":
      raise JaxWorldError(
          "backbone.attention=\"cudnn\" needs bfloat16 compute; set the "
          "backbone's dtype to \"bfloat16\" (or \"auto\" on a GPU).")
  return kwargs


def num_tokens(cfg: Config) -> int:
  """Tokens per frame N."""
  return (cfg.world.image_size // cfg.tokenizer.patch_size) ** 2


def latent_dim(cfg: Config) -> int:
  """Channels E per token of a "latents" tokenizer."""
  return tokenizer_kind(cfg).latent_dim(cfg)


def codebook_size(cfg: Config) -> int:
  """Token vocabulary V of the (FSQ) tokenizer."""
  return int(np.prod(cfg.tokenizer.fsq_levels))


def num_actions(cfg: Config) -> int:
  """Actions A the dynamics model is conditioned on: the dataset's, or the
  LAM's codebook size."""
  if cfg.dynamics.actions == "latent":
    return num_latent_actions(cfg)
  return cfg.dynamics.num_actions


def num_latent_actions(cfg: Config) -> int:
  """The LAM's codebook size: its number of latent actions."""
  return int(np.prod(cfg.lam.fsq_levels))


def frame_model_sizes(cfg: Config, section: Any) -> dict[str, Any]:
  """Constructor arguments of a model over frames (the tokenizer, the LAM)
  from its config section (patch size, FSQ levels, encoder, decoder)."""
  return dict(image_size=cfg.world.image_size, patch_size=section.patch_size,
              fsq_levels=section.fsq_levels, max_frames=cfg.data.window,
              encoder=backbone(section.encoder),
              decoder=backbone(section.decoder))


def dynamics_sizes(cfg: Config) -> dict[str, Any]:
  """Constructor arguments every dynamics kind takes."""
  return dict(num_actions=num_actions(cfg), num_tokens=num_tokens(cfg),
              max_frames=cfg.data.window,
              backbone=backbone(cfg.dynamics.backbone))


class FrozenModels(nnx.Module):
  """The trained models a dynamics run with latent actions reads."""

  def __init__(self, tokenizer: nnx.Module, lam: nnx.Module):
    self.tokenizer, self.lam = tokenizer, lam


def count_params(state: nnx.State) -> int:
  return sum(x.size for x in jax.tree.leaves(state))


def param_table(model_state: nnx.State, depth: int = 1) -> list[tuple[str, int]]:
  """Parameter counts grouped by the first `depth` path components."""
  groups: dict[str, int] = {}
  for path, v in nnx.to_flat_state(model_state):
    key = "/".join(str(p) for p in path[:depth])
    groups[key] = groups.get(key, 0) + v.size
  return sorted(groups.items())
