"""Config validation: combinations no run can use, rejected with the fix.

A field's own choices (its `Literal[...]` type) and types are checked by the
loader (jaxworld/config_load.py); this module checks values against each
other and ranges. Device-independent: what depends on the devices (mesh
sizes against the device count, parameter dims against mesh axes) is checked
in jaxworld/parallel/ (mesh.py, sharding.py, batch.py) once the devices
are known.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from jaxworld.errors import JaxWorldError

if TYPE_CHECKING:
  from jaxworld.config import BackboneConfig, Config

Check = Callable[[bool, str], None]


def validate(cfg: Config) -> None:
  """Rejects impossible combinations with the fix."""
  def check(ok: bool, msg: str) -> None:
    if not ok:
      raise JaxWorldError(msg)

  w, d, t = cfg.world, cfg.data, cfg.train
  positive = {
      "world.image_size": w.image_size, "data.num_shards": d.num_shards,
      "data.num_train_episodes": d.num_train_episodes,
      "data.num_eval_episodes": d.num_eval_episodes,
      "data.episode_length": d.episode_length, "data.prefetch": d.prefetch,
      "train.keep_checkpoints": t.keep_checkpoints,
      "rollout.horizon": cfg.rollout.horizon,
      "rollout.num_episodes": cfg.rollout.num_episodes,
      "rollout.maskgit_steps": cfg.rollout.maskgit_steps,
      "rollout.diffusion_steps": cfg.rollout.diffusion_steps,
      "dynamics.num_actions": cfg.dynamics.num_actions,
      "train.learning_rate": t.learning_rate}
  for key, value in positive.items():
    check(value > 0, f"{key}={value} must be positive.")
  check(min(d.num_workers, t.warmup_steps, cfg.rollout.temperature,
            cfg.dynamics.tokenizer_step, t.keep_every, t.init_step,
            t.preview_episodes) >= 0,
        "data.num_workers, train.warmup_steps, rollout.temperature, "
        "dynamics.tokenizer_step, train.keep_every, train.init_step and "
        "train.preview_episodes must be >= 0.")
  check(cfg.tokenizer.latent_dim >= 1, "tokenizer.latent_dim must be >= 1.")
  for entry in d.mixture:
    check(isinstance(entry, tuple) and len(entry) == 2 and
          isinstance(entry[0], str) and isinstance(entry[1], (int, float))
          and entry[1] > 0,
          f"data.mixture entry {list(entry) if isinstance(entry, tuple) else entry!r} "
          f"must be [path, positive weight], e.g. "
          f"data.mixture=[[\"runs/a\", 3], [\"runs/b\", 1]].")
  check(not (d.mixture and d.path),
        "Set data.path or data.mixture, not both (a mixture lists every "
        "dataset, with its weight); the eval split is read from the first "
        "mixture entry.")
  check(t.stage != "dynamics" or d.window >= 2,
        f"data.window={d.window}: the dynamics stage predicts frames from "
        f"earlier ones and needs a window of at least 2.")
  check_fsq_levels("tokenizer.fsq_levels", cfg.tokenizer.fsq_levels,
                   "[8, 5, 5, 5]", check)
  check_patch_size("tokenizer.patch_size", cfg.tokenizer.patch_size,
                   w.image_size, check)
  check(d.window <= d.episode_length,
        f"data.window={d.window} is longer than data.episode_length="
        f"{d.episode_length}; shorten the window or lengthen episodes.")
  r = cfg.rollout
  check(r.context_frames + r.horizon <= d.episode_length,
        f"rollout.context_frames + rollout.horizon = "
        f"{r.context_frames + r.horizon} exceeds data.episode_length="
        f"{d.episode_length}.")
  check(r.context_frames >= 1, "rollout.context_frames must be >= 1.")
  for name, b in (("tokenizer.encoder", cfg.tokenizer.encoder),
                  ("tokenizer.decoder", cfg.tokenizer.decoder),
                  ("dynamics.backbone", cfg.dynamics.backbone),
                  ("lam.encoder", cfg.lam.encoder),
                  ("lam.decoder", cfg.lam.decoder)):
    check_backbone(name, b, check)
  check(t.steps > 0 and t.batch_size > 0 and t.log_every > 0 and
        t.checkpoint_every > 0, "train.steps, train.batch_size, "
        "train.log_every and train.checkpoint_every must be positive.")
  check(0.0 < cfg.dynamics.mask_ratio_min <= 1.0,
        "dynamics.mask_ratio_min must be in (0, 1].")
  check(0.0 < cfg.dynamics.target_frame_prob <= 1.0,
        "dynamics.target_frame_prob must be in (0, 1].")
  check(cfg.dynamics.unroll_passes >= 1,
        "dynamics.unroll_passes must be >= 1 (1 = teacher forcing only).")
  check(cfg.dynamics.l1_weight >= 0.0, "dynamics.l1_weight must be >= 0.")
  check(cfg.dynamics.frame_stack >= 1,
        "dynamics.frame_stack must be >= 1 (1 = each position reads only "
        "its own frame).")
  check(cfg.dynamics.change_weight >= 0.0,
        "dynamics.change_weight must be >= 0 (0 weighs every latent alike).")
  _check_models(cfg, check)
  m = cfg.mesh
  sizes = {"data": m.data, "fsdp": m.fsdp, "sequence": m.sequence,
           "tensor": m.tensor}
  check(all(v >= 1 or v == -1 for v in sizes.values()) and
        list(sizes.values()).count(-1) <= 1,
        f"mesh sizes {sizes}: each must be >= 1, and at most one may be -1 "
        f"(it takes the devices the others leave).")
  check(m.dcn_data >= 1 and m.dcn_fsdp >= 1,
        "mesh.dcn_data and mesh.dcn_fsdp must be >= 1.")
  check(len(m.rules) > 0, "mesh.rules is empty; set mesh.preset (e.g. "
        "\"dp\") or give the rules.")
  for rule in m.rules:
    check(isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str),
          f"mesh.rules entry {rule!r} must be [logical_name, mesh_axis], "
          f"[logical_name, [mesh_axes...]] or [logical_name, []].")


def check_backbone(name: str, b: BackboneConfig, check: Check) -> None:
  """The checks every backbone gets, wherever it sits (`name`: its key)."""
  sizes = {"width": b.width, "depth": b.depth, "num_heads": b.num_heads,
           "mlp_ratio": b.mlp_ratio}
  bad = [f"{name}.{k}={v}" for k, v in sizes.items() if v <= 0]
  check(not bad, f"{', '.join(bad)}: width, depth, num_heads and mlp_ratio "
        f"of a backbone must be positive.")
  check(b.scan_unroll >= 1, f"{name}.scan_unroll={b.scan_unroll} must be "
        f">= 1 (1: one compiled block; {name}.depth={b.depth}: all "
        f"unrolled).")
  check(b.width % b.num_heads == 0,
        f"{name}.width={b.width} is not divisible by {name}.num_heads="
        f"{b.num_heads}; pick a width that is a multiple of the heads.")
  head = b.width // max(b.num_heads, 1)
  check(b.attention != "cudnn" or (head % 8 == 0 and head <= 128),
        f"{name}.attention=\"cudnn\" needs a head width (width / num_heads "
        f"= {head}) that is a multiple of 8 and at most 128; change "
        f"{name}.num_heads or set {name}.attention=\"xla\".")


def check_patch_size(name: str, patch: int, image_size: int, check: Check
                     ) -> None:
  """A square patch side (`name`: its key) that tiles the frame."""
  check(patch > 0, f"{name}={patch} must be positive.")
  check(image_size % patch == 0,
        f"world.image_size={image_size} is not divisible by {name}={patch}; "
        f"pick a patch size that divides it.")


def check_fsq_levels(name: str, levels: tuple, example: str, check: Check
                     ) -> None:
  """FSQ levels per latent channel: each quantises to >= 2 values."""
  check(len(levels) >= 1 and all(isinstance(v, int) and not
                                 isinstance(v, bool) and v >= 2
                                 for v in levels),
        f"{name}={list(levels)} must be a list of integers >= 2, e.g. "
        f"{name}={example}.")


def _check_models(cfg: Config, check: Check) -> None:
  """Model-family and sampling options (dynamics.kind, LAM, rollout)."""
  dyn, lam, r = cfg.dynamics, cfg.lam, cfg.rollout
  _check_kinds(cfg, check)
  check(dyn.lam_step >= 0, "dynamics.lam_step must be >= 0.")
  check(r.top_k >= 0, f"rollout.top_k={r.top_k} must be >= 0 (0: all "
        f"tokens).")
  check_fsq_levels("lam.fsq_levels", lam.fsq_levels,
                   "[2, 2, 2] (8 latent actions)", check)
  check_patch_size("lam.patch_size", lam.patch_size, cfg.world.image_size,
                   check)
  check(cfg.train.stage != "lam" or cfg.data.window >= 2,
        f"data.window={cfg.data.window}: the lam stage infers actions "
        f"between consecutive frames and needs a window of at least 2.")


def _check_kinds(cfg: Config, check: Check) -> None:
  """tokenizer.kind and dynamics.kind name registered model kinds (a
  researcher's kinds register at run time, so they are not literals)."""
  from jaxworld.models import build  # the registry imports the config
  for stage, name in (("tokenizer", cfg.tokenizer.kind),
                      ("dynamics", cfg.dynamics.kind)):
    try:
      build.kind(stage, name)
    except JaxWorldError as e:
      check(False, str(e))
