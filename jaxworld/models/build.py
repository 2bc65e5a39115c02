"""Models from config: the one place config sections become constructors."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from jaxworld.config import BackboneConfig, Config
from jaxworld.models.autoregressive import ARDynamics
from jaxworld.models.diffusion import DiffusionDynamics
from jaxworld.models.dynamics import MaskGITDynamics
from jaxworld.models.lam import LatentActionModel
from jaxworld.models.tokenizer import VideoTokenizer

# dynamics.kind -> model class.
DYNAMICS = {"maskgit": MaskGITDynamics, "autoregressive": ARDynamics,
            "diffusion": DiffusionDynamics}


def _backbone(b: BackboneConfig) -> dict:
  kwargs = dataclasses.asdict(b)
  if kwargs["dtype"] == "auto":
    # bf16 matmuls on accelerators; CPUs have no fast bf16 path.
    kwargs["dtype"] = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return kwargs


def num_tokens(cfg: Config) -> int:
  """Tokens per frame N."""
  return (cfg.world.image_size // cfg.tokenizer.patch_size) ** 2


def codebook_size(cfg: Config) -> int:
  """Token vocabulary V of the tokenizer."""
  return int(np.prod(cfg.tokenizer.fsq_levels))


def tokenizer(cfg: Config, rngs: nnx.Rngs) -> VideoTokenizer:
  t = cfg.tokenizer
  return VideoTokenizer(rngs, image_size=cfg.world.image_size,
                        patch_size=t.patch_size, fsq_levels=t.fsq_levels,
                        max_frames=cfg.data.window,
                        encoder=_backbone(t.encoder),
                        decoder=_backbone(t.decoder),
                        latent_dim=(t.latent_dim if t.kind == "continuous"
                                    else 0))


def num_actions(cfg: Config) -> int:
  """Actions A the dynamics model is conditioned on: the dataset's, or the
  LAM's codebook size."""
  if cfg.dynamics.actions == "latent":
    return num_latent_actions(cfg)
  return cfg.dynamics.num_actions


def num_latent_actions(cfg: Config) -> int:
  """The LAM's codebook size K."""
  return int(np.prod(cfg.lam.fsq_levels))


def dynamics(cfg: Config, rngs: nnx.Rngs
             ) -> MaskGITDynamics | ARDynamics | DiffusionDynamics:
  d = cfg.dynamics
  common = dict(num_actions=num_actions(cfg), num_tokens=num_tokens(cfg),
                max_frames=cfg.data.window, backbone=_backbone(d.backbone))
  if d.kind == "diffusion":  # predicts continuous latents, not tokens
    return DiffusionDynamics(rngs, latent_dim=cfg.tokenizer.latent_dim,
                             **common)
  return DYNAMICS[d.kind](rngs, codebook_size=codebook_size(cfg), **common)


def lam(cfg: Config, rngs: nnx.Rngs) -> LatentActionModel:
  m = cfg.lam
  return LatentActionModel(rngs, image_size=cfg.world.image_size,
                           patch_size=m.patch_size, fsq_levels=m.fsq_levels,
                           max_frames=cfg.data.window,
                           encoder=_backbone(m.encoder),
                           decoder=_backbone(m.decoder))


class FrozenModels(nnx.Module):
  """The trained models a dynamics run with latent actions reads."""

  def __init__(self, tokenizer: VideoTokenizer, lam: LatentActionModel):
    self.tokenizer, self.lam = tokenizer, lam


def for_stage(cfg: Config, stage: str, seed: int) -> nnx.Module:
  build = {"tokenizer": tokenizer, "dynamics": dynamics, "lam": lam}[stage]
  return build(cfg, nnx.Rngs(params=seed))


def count_params(state: nnx.State) -> int:
  return sum(x.size for x in jax.tree.leaves(state))


def param_table(model_state: nnx.State, depth: int = 1) -> list[tuple[str, int]]:
  """Parameter counts grouped by the first `depth` path components."""
  groups: dict[str, int] = {}
  for path, v in nnx.to_flat_state(model_state):
    key = "/".join(str(p) for p in path[:depth])
    groups[key] = groups.get(key, 0) + v.size
  return sorted(groups.items())
