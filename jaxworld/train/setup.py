"""What the training loop does before its first step: check every input
(workdir, data, fine-tuning source) before anything is compiled or written,
find the step to start from, and log the model and its layout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from jaxworld import config as configlib
from jaxworld.config import Config
from jaxworld.data import pipeline, records
from jaxworld.errors import JaxWorldError
from jaxworld.models import build
from jaxworld.parallel import sharding
from jaxworld.runs import checkpoint
from jaxworld.train import step as steplib

log = logging.getLogger(__name__)

# Keys that may change when a run is resumed (e.g. to train it for longer).
# train.steps may grow: the learning-rate schedule is then stretched to the
# new length from the resumed step on. The mesh, the number of processes and
# data.num_workers may change: checkpoints restore into any layout, and the
# data position is saved as global batches consumed, so the same global
# stream continues (train.batch_size, the global batch, may not change).
# train.nan_policy may change: a run stopped by a NaN can continue with
# nan_policy=skip.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.keep_every",
                     "train.init_from", "train.init_step",
                     "train.nan_policy", "data.prefetch", "data.path",
                     "data.num_workers",
                     "mesh.")
# Any backbone's remat policy, scan unrolling and attention kernel may change
# too: they trade memory and compile time for speed, and compute the same
# model (to float rounding), so a run started before remat "auto" became the
# default resumes, and a CPU run may go on with cuDNN attention on a GPU.
RESUMABLE_SUFFIXES = (".remat", ".scan_unroll", ".attention")


def check_workdir(cfg: Config, workdir: Path, resume: bool) -> None:
  saved = workdir / "config.json"
  if not saved.exists():
    return
  if not resume:
    raise JaxWorldError(
        f"{workdir} already holds a run. Pass --resume to continue it, or "
        f"choose a new --workdir; nothing was changed.")
  old = configlib.flatten(configlib.to_dict(configlib.load(saved)))
  new = configlib.flatten(configlib.to_dict(cfg))
  changed = [k for k in new if old.get(k) != new[k]
             and not k.startswith(RESUMABLE_CHANGES)
             and not k.endswith(RESUMABLE_SUFFIXES)]
  if changed:
    allowed = ", ".join([k + "*" if k.endswith(".") else k
                         for k in RESUMABLE_CHANGES]
                        + ["*" + k for k in RESUMABLE_SUFFIXES])
    raise JaxWorldError(
        f"Cannot resume {workdir}: the config differs from the one it was "
        f"started with in {', '.join(changed)}. Resume with the same config "
        f"(only {allowed} may change) or start a new --workdir.")


def check_data(cfg: Config) -> None:
  """Every dataset training reads (data.path, or each data.mixture entry)
  fits the config and opens; its first episode decodes."""
  if not cfg.data.path and not cfg.data.mixture:
    raise JaxWorldError("data.path is empty. Generate data with `jaxworld "
                        "data generate --out DIR` (or ingest your own with "
                        "`jaxworld data ingest`) and pass data.path=DIR.")
  for path, _ in pipeline.dataset_weights(cfg.data):
    root = Path(path)
    meta = records.read_metadata(root)
    if meta["image_size"] != cfg.world.image_size:
      raise JaxWorldError(
          f"The dataset at {root} has {meta['image_size']}px frames but "
          f"world.image_size={cfg.world.image_size}; set "
          f"world.image_size={meta['image_size']} or re-ingest the data at "
          f"that size.")
    if meta["episode_length"] < cfg.data.window:
      raise JaxWorldError(
          f"The episodes of {root} have as few as {meta['episode_length']} "
          f"frames, fewer than data.window={cfg.data.window}; lower "
          f"data.window.")
    # Only a dynamics model on real actions reads them.
    if (cfg.train.stage == "dynamics" and cfg.dynamics.actions == "real"
        and meta["num_actions"] > cfg.dynamics.num_actions):
      raise JaxWorldError(
          f"The dataset at {root} has {meta['num_actions']} actions but "
          f"dynamics.num_actions={cfg.dynamics.num_actions}; raise it.")
    if cfg.data.bad_records == "error":
      pipeline.check_shards(root, "train")


def init_step(cfg: Config) -> int | None:
  """Fine-tuning: checks train.init_from and returns its step (None when
  the run starts from a fresh initialisation)."""
  t = cfg.train
  if not t.init_from:
    return None
  source = checkpoint.read_config(t.init_from)
  if source.train.stage != t.stage:
    raise JaxWorldError(
        f"train.init_from={t.init_from} is a {source.train.stage} run, but "
        f"this run trains the {t.stage}. Start from a {t.stage} run.")
  steps = checkpoint.saved_steps(t.init_from)
  step = t.init_step or (steps[-1] if steps else None)
  if step not in steps:
    raise JaxWorldError(
        f"train.init_from={t.init_from} has no checkpoint at step "
        f"{step or '(latest)'}; it has {steps or 'none'}.")
  return step


def init_from(cfg: Config, step: int, shardings: nnx.State) -> nnx.State:
  """The model parameters of another run of this stage (mismatched shapes
  are reported leaf by leaf by the checkpoint module)."""
  _, abstract = steplib.abstract_state(cfg, cfg.train.stage)
  model = checkpoint.restore_model(cfg.train.init_from, abstract["model"],
                                   shardings, step)
  log.info("model parameters from %s (step %d); fresh optimizer",
           cfg.train.init_from, step)
  return model


def resume_step(workdir: Path, steps: int, resume: bool) -> int | None:
  """The checkpoint step to resume from (None: start fresh)."""
  saved = checkpoint.saved_steps(workdir) if resume else []
  if saved and saved[-1] > steps:
    raise JaxWorldError(
        f"{workdir} is already at step {saved[-1]}, past train.steps={steps}."
        f" Raise train.steps to continue it.")
  return saved[-1] if saved else None


def verify_final_step(cfg: Config, workdir: Path, mesh: Any) -> int | None:
  """The step a run already at train.steps resumes from: train.steps if its
  final checkpoint restores, else the newest older step that does.

  A finished run would otherwise never read its final step, so damage to
  it would go unnoticed. This reads it as a resume does (each process its
  own shards, agreeing on the outcome; nothing is compiled); a damaged step
  is moved aside like any other (Checkpoints.restore_latest), and the run
  retrains from the step before it.
  """
  t = cfg.train
  _, abstract = steplib.abstract_state(cfg, t.stage)
  shardings = sharding.param_shardings(abstract, mesh, cfg.mesh.rules)
  ckpts = checkpoint.Checkpoints(workdir, t.keep_checkpoints, t.keep_every)
  try:
    found = ckpts.restore_latest(abstract, shardings, max_step=t.steps)
  finally:
    ckpts.close()
  return found[0] if found is not None else None


def last_logged(workdir: Path) -> dict[str, float]:
  last: dict[str, Any] = {}
  metrics_file = workdir / "metrics.jsonl"
  if metrics_file.exists():
    for line in metrics_file.read_text().splitlines():
      last = json.loads(line)
  return {k: v for k, v in last.items() if k not in ("step", "stage", "time")}


def log_model(state: Any, shardings: Any, mesh: Any, stage: str,
               workdir: Path) -> None:
  """Parameter counts to the log; every array's layout, checked against the
  rules, to <workdir>/shardings.txt."""
  model = state["model"]
  log.info("%s: %s parameters", stage, f"{build.count_params(model):,}")
  for name, count in build.param_table(model):
    log.info("  %-12s %12s", name, f"{count:,}")
  lines = sharding.check_sharded_as_ruled(state, shardings)
  if jax.process_index() == 0:
    (workdir / "shardings.txt").write_text("\n".join(lines) + "\n")
  log.info("mesh %s on %d devices (%d processes); %d arrays sharded as the "
           "rules say (%s)", dict(mesh.shape), mesh.size, jax.process_count(),
           len(lines), workdir / "shardings.txt")
