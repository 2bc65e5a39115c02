"""Config validation: combinations no run can use, rejected with the fix.

Device-independent: what depends on the devices (mesh sizes against the
device count, parameter dims against mesh axes) is checked in
jaxworld/parallel/mesh.py once the devices are known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxworld.errors import JaxWorldError

if TYPE_CHECKING:
  from jaxworld.config import Config


def validate(cfg: Config) -> None:
  """Rejects impossible combinations with the fix."""
  def check(ok: bool, msg: str) -> None:
    if not ok:
      raise JaxWorldError(msg)

  w, d, t = cfg.world, cfg.data, cfg.train
  check(t.stage in ("tokenizer", "lam", "dynamics"),
        f"train.stage={t.stage!r}: use \"tokenizer\", \"lam\" or "
        f"\"dynamics\".")
  positive = {
      "world.image_size": w.image_size, "tokenizer.patch_size":
      cfg.tokenizer.patch_size, "data.num_shards": d.num_shards,
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
            cfg.dynamics.tokenizer_step, t.keep_every, t.init_step) >= 0,
        "data.num_workers, train.warmup_steps, rollout.temperature, "
        "dynamics.tokenizer_step, train.keep_every and train.init_step must "
        "be >= 0.")
  check(cfg.tokenizer.kind in ("fsq", "continuous") and
        cfg.tokenizer.latent_dim >= 1,
        f"tokenizer.kind={cfg.tokenizer.kind!r} must be fsq or continuous, "
        f"and tokenizer.latent_dim >= 1.")
  check(d.bad_records in ("error", "skip"),
        f"data.bad_records={d.bad_records!r}: use \"error\" or \"skip\".")
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
  p = cfg.tokenizer.patch_size
  check(len(cfg.tokenizer.fsq_levels) >= 1 and all(
      isinstance(v, int) and v >= 2 for v in cfg.tokenizer.fsq_levels),
        f"tokenizer.fsq_levels={list(cfg.tokenizer.fsq_levels)} must be a "
        f"list of integers >= 2, e.g. [8, 5, 5, 5].")
  check(w.image_size % p == 0,
        f"world.image_size={w.image_size} is not divisible by "
        f"tokenizer.patch_size={p}; pick a patch size that divides it.")
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
                  ("dynamics.backbone", cfg.dynamics.backbone)):
    check(b.width > 0 and b.depth > 0 and b.num_heads > 0 and
          b.mlp_ratio > 0, f"{name}: width, depth, num_heads and mlp_ratio "
          f"must be positive.")
    check(b.width % b.num_heads == 0,
          f"{name}.width={b.width} is not divisible by {name}.num_heads="
          f"{b.num_heads}.")
    check(b.remat in ("none", "full", "save_dots"),
          f"{name}.remat={b.remat!r}: use none, full or save_dots.")
    check(b.dtype in ("auto", "float32", "bfloat16"),
          f"{name}.dtype={b.dtype!r}: use auto, float32 or bfloat16.")
  check(t.steps > 0 and t.batch_size > 0 and t.log_every > 0 and
        t.checkpoint_every > 0, "train.steps, train.batch_size, "
        "train.log_every and train.checkpoint_every must be positive.")
  check(0.0 < cfg.dynamics.mask_ratio_min <= 1.0,
        "dynamics.mask_ratio_min must be in (0, 1].")
  check(0.0 < cfg.dynamics.target_frame_prob <= 1.0,
        "dynamics.target_frame_prob must be in (0, 1].")
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
  check(len(m.rules) > 0, f"mesh.rules is empty; set mesh.preset (e.g. "
        f"\"dp\") or give the rules.")
  for rule in m.rules:
    check(isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str),
          f"mesh.rules entry {rule!r} must be [logical_name, mesh_axis], "
          f"[logical_name, [mesh_axes...]] or [logical_name, []].")


DYNAMICS_KINDS = ("maskgit", "autoregressive", "diffusion")
MASK_SCHEDULES = ("cosine", "linear", "square")


def _check_models(cfg: Config, check) -> None:
  """Model-family and sampling options (dynamics.kind, LAM, rollout)."""
  dyn, lam, r = cfg.dynamics, cfg.lam, cfg.rollout
  check(dyn.kind in DYNAMICS_KINDS,
        f"dynamics.kind={dyn.kind!r}: use one of {', '.join(DYNAMICS_KINDS)}.")
  check(dyn.actions in ("real", "latent"),
        f"dynamics.actions={dyn.actions!r}: use \"real\" or \"latent\".")
  check(dyn.lam_step >= 0, "dynamics.lam_step must be >= 0.")
  check(r.mask_schedule in MASK_SCHEDULES,
        f"rollout.mask_schedule={r.mask_schedule!r}: use one of "
        f"{', '.join(MASK_SCHEDULES)}.")
  check(r.top_k >= 0, f"rollout.top_k={r.top_k} must be >= 0 (0: all "
        f"tokens).")
  check(len(lam.fsq_levels) >= 1 and all(
      isinstance(v, int) and v >= 2 for v in lam.fsq_levels),
        f"lam.fsq_levels={list(lam.fsq_levels)} must be a list of integers "
        f">= 2, e.g. [2, 2, 2] for 8 latent actions.")
  check(cfg.world.image_size % lam.patch_size == 0,
        f"world.image_size={cfg.world.image_size} is not divisible by "
        f"lam.patch_size={lam.patch_size}; pick a patch size that divides it.")
  for name, b in (("lam.encoder", lam.encoder), ("lam.decoder", lam.decoder)):
    check(b.width > 0 and b.depth > 0 and b.num_heads > 0 and
          b.width % b.num_heads == 0,
          f"{name}: width, depth, num_heads must be positive and width "
          f"divisible by num_heads.")
  check(cfg.train.stage != "lam" or cfg.data.window >= 2,
        f"data.window={cfg.data.window}: the lam stage infers actions "
        f"between consecutive frames and needs a window of at least 2.")
