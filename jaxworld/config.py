"""Typed, frozen experiment config: TOML file + dotted overrides, validated.

A config is a tree of frozen dataclasses. Each field carries a one-line
description in its metadata (`doc`), shown by `jaxworld config --fields`.
Files are TOML (data, never code: nothing is executed to load a config); any
field may be overridden from the command line as `section.field=value`, where
the value is parsed as a TOML value (`train.steps=100`, `dynamics.backbone.dtype="bfloat16"`,
`mesh.rules=[["embed","fsdp"]]`). Unknown keys and wrong types are rejected
at load with the fix, and so is a value outside a field's `Literal[...]`
choices. Reading and type checking are in jaxworld/config_load.py (its
public functions are re-exported here); combinations of values are checked
in jaxworld/config_checks.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from jaxworld import config_load
# The loader's public functions, re-exported: `jaxworld.config` is the API.
from jaxworld.config_load import (CONFIG_DIR, flatten, load_preset, resolve,
                                  to_dict)
from jaxworld.errors import JaxWorldError

__all__ = [
    "BackboneConfig", "CONFIG_DIR", "Config", "DataConfig", "DynamicsConfig",
    "LAMConfig", "MeshConfig", "RolloutConfig", "TokenizerConfig",
    "TrainConfig", "WorldConfig", "describe", "field", "flatten",
    "from_dict", "load", "load_preset", "resolve", "save", "section",
    "to_dict"]


def field(default: Any, doc: str) -> Any:
  """A dataclass field with a one-line description."""
  if isinstance(default, (list, dict)):
    raise TypeError("mutable defaults: use a tuple")
  return dataclasses.field(default=default, metadata={"doc": doc})


def section(cls: type, doc: str) -> Any:
  return dataclasses.field(default_factory=cls, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """The embedded procedural 2D physics world (jaxworld/data/world.py)."""
  image_size: int = field(64, "Frame height and width in pixels.")
  num_objects: int = field(3, "Number of bouncing balls.")
  radius_min: float = field(4.0, "Smallest ball radius in pixels.")
  radius_max: float = field(7.0, "Largest ball radius in pixels.")
  speed_min: float = field(2.0, "Smallest initial ball speed, pixels per frame.")
  speed_max: float = field(4.0, "Largest initial ball speed, pixels per frame.")
  gravity: float = field(0.25, "Downward acceleration, pixels per frame^2.")
  restitution: float = field(0.95, "Fraction of speed kept in a wall bounce.")
  agent_size: int = field(10, "Side of the square agent, pixels.")
  agent_speed: float = field(3.0, "Agent displacement per action, pixels per frame.")
  action_repeat_prob: float = field(
      0.8, "Sticky random policy: probability of repeating the last action.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Episode records on disk and the Grain pipeline that reads them."""
  path: str = field("", "Dataset directory made by `jaxworld data "
                    "generate` or `jaxworld data ingest` (train/ and eval/ "
                    "splits); the demo sets it.")
  mixture: tuple = field((), "Train on several datasets instead of "
                         "data.path: [[path, weight], ...]; each batch row "
                         "comes from a dataset with probability "
                         "proportional to its weight.")
  bad_records: Literal["error", "skip"] = field(
      "error", "A damaged or malformed record: error (stop, naming file and "
      "record) or skip (count it in the metrics and read the next one).")
  num_train_episodes: int = field(1024, "Episodes `data generate` writes to train/.")
  num_eval_episodes: int = field(64, "Held-out episodes `data generate` writes to eval/.")
  episode_length: int = field(64, "Frames per generated episode.")
  num_shards: int = field(4, "ArrayRecord shards per split.")
  seed: int = field(0, "World seed for `data generate` (eval uses seed + 1).")
  window: int = field(8, "Frames per training window (random crop of an episode).")
  shuffle_seed: int = field(0, "Seed of the Grain shuffle and window crops.")
  num_workers: int = field(0, "Grain worker processes (0: decode in threads of the trainer process).")
  prefetch: int = field(2, "Batches the loader keeps ready ahead of the step.")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh and the logical-axis rules that map arrays onto it.

  A preset (configs/mesh/*.toml) gives the axis sizes and the rules; any key
  set in the config file or on the command line wins over the preset's.
  """
  preset: str = field("dp", "Parallelism preset: dp, fsdp, fsdp_tp, tp_sp "
                      "(files in configs/mesh/) or a path to such a file.")
  data: int = field(-1, "Data-parallel axis size. One axis may be -1: it "
                    "takes all devices the others leave.")
  fsdp: int = field(1, "Fully-sharded data-parallel axis size (params and "
                    "optimizer sharded, batch split).")
  sequence: int = field(1, "Sequence-parallel axis size (frames, then token "
                        "positions, split; see docs/scaling.md).")
  tensor: int = field(1, "Tensor-parallel axis size (heads and MLP sharded).")
  dcn_data: int = field(1, "Of the data axis, how many ways it spans slices "
                        "(or processes, when all devices share one slice) "
                        "over the data-center network; the rest stays "
                        "inside one.")
  dcn_fsdp: int = field(1, "Of the fsdp axis, how many ways it spans slices "
                        "over the data-center network.")
  rules: tuple = field((), "Logical axis name -> mesh axis, list of mesh "
                       "axes, or [] (replicated); from the preset unless set.")


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """Spatiotemporal transformer backbone."""
  width: int = field(128, "Model width D.")
  depth: int = field(4, "Number of ST blocks.")
  num_heads: int = field(4, "Attention heads (width must divide by it).")
  mlp_ratio: int = field(4, "MLP hidden width = mlp_ratio * width.")
  remat: Literal["auto", "none", "full", "save_dots"] = field(
      "auto", "Rematerialisation of each block: auto (save_dots below 500M "
      "backbone parameters, full above), none, full, save_dots.")
  attention: Literal["auto", "xla", "cudnn", "jaxworld"] = field(
      "auto", "Attention kernel: auto (jaxworld on CPU, where it is the "
      "faster; xla elsewhere), xla (jax.nn.dot_product_attention's, every "
      "platform), jaxworld (jaxworld/models/attention.py: the same math "
      "with a hand-written backward, 1.5x as fast at 256 tokens on CPU) or "
      "cudnn (jax.nn's cuDNN flash attention: NVIDIA GPUs, bfloat16 "
      "compute, head width a multiple of 8 up to 128; not yet measured "
      "against xla here, see docs/benchmarks.md).")
  dtype: Literal["auto", "float32", "bfloat16"] = field(
      "auto", "Compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU), "
      "float32 or bfloat16; params stay float32.")
  scan_unroll: int = field(
      1, "Blocks per iteration of the layer scan: 1 compiles one block "
      "whatever the depth; >= depth unrolls every block (slower compile; "
      "XLA's cost analysis then counts every block, as `jaxworld bench` "
      "needs).")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """VQ-VAE video tokenizer: patches -> ST encoder -> FSQ -> ST decoder."""
  kind: str = field("fsq", "Bottleneck: fsq (discrete tokens, for maskgit "
                    "and autoregressive dynamics) or continuous (tanh-bounded "
                    "latents, for diffusion dynamics).")
  patch_size: int = field(4, "Square patch side in pixels; N = (size/patch)^2.")
  fsq_levels: tuple = field((8, 5, 5, 5), "Levels per latent channel of the "
                            "FSQ quantiser; V = their product (here 1000).")
  latent_dim: int = field(4, "Channels per token of the continuous "
                          "bottleneck (tokenizer.kind=\"continuous\").")
  encoder: BackboneConfig = section(BackboneConfig, "Encoder backbone.")
  decoder: BackboneConfig = section(BackboneConfig, "Decoder backbone.")


@dataclasses.dataclass(frozen=True)
class DynamicsConfig:
  """Dynamics over the tokenizer's codes (MaskGIT, causal autoregressive or
  diffusion forcing), conditioned on real actions or a trained LAM's."""
  kind: str = field("maskgit", "Dynamics model: maskgit (parallel decoding "
                    "of masked tokens), autoregressive (causal over tokens "
                    "in raster order, sampled with a KV cache), diffusion "
                    "(diffusion forcing over a continuous tokenizer's "
                    "latents), frame_diffusion (next-frame diffusion from a "
                    "clean history) or regression (deterministic next-frame "
                    "regression trained on its own predictions).")
  actions: Literal["real", "latent"] = field(
      "real", "Conditioning: real (the dataset's actions) or latent (a "
      "trained LAM's, see dynamics.lam_workdir).")
  lam_workdir: str = field("", "Run directory of the trained latent action "
                           "model (train.stage=lam) when dynamics.actions="
                           "\"latent\".")
  lam_step: int = field(0, "Checkpoint step of the LAM; 0 takes its latest "
                        "when the run starts and pins it in config.json.")
  tokenizer_workdir: str = field("", "Run directory of the trained tokenizer "
                                 "whose tokens this model predicts.")
  tokenizer_step: int = field(0, "Checkpoint step of the tokenizer to use; "
                              "0 takes its latest when the run starts and "
                              "pins it in the run's config.json.")
  num_actions: int = field(5, "Size of the discrete action set A.")
  target_frame_prob: float = field(
      0.5, "Chance that a frame (after the first) is a training target; the "
      "others stay unmasked, so targets mostly see clean history as in a "
      "rollout.")
  mask_ratio_min: float = field(0.5, "Smallest fraction of a target frame's "
                                "tokens masked in training (max is 1).")
  unroll_passes: int = field(
      2, "regression: training passes per window; pass k reads the frames "
      "pass k-1 predicted as its history, so the model learns from its own "
      "errors (1 = teacher forcing only).")
  unroll_gradients: bool = field(
      False, "regression: backpropagate through the earlier passes too, not "
      "only through each pass's own prediction.")
  l1_weight: float = field(
      0.1, "regression: weight of the L1 term beside MSE; it drives small "
      "residuals, such as haze over a still background, to exactly zero.")
  change_weight: float = field(
      0.0, "regression: extra loss weight on the latents that change from "
      "one real frame to the next (each weighs 1 + change_weight), so small "
      "moving objects are not traded for the still background.")
  frame_stack: int = field(
      1, "regression: frames each position reads at its input, as channels "
      "beside its own: 1 = its own frame only; k > 1 adds the k-1 changes "
      "between it and the frames before it, so what moved and how fast is "
      "in every token before the first attention (DIAMOND stacks frames).")
  backbone: BackboneConfig = section(BackboneConfig, "Dynamics backbone.")


@dataclasses.dataclass(frozen=True)
class LAMConfig:
  """Latent action model: infers a discrete action between consecutive
  frames from video alone (VQ bottleneck), trained to predict the next
  frame from the past frames and that action."""
  patch_size: int = field(8, "Square patch side in pixels.")
  fsq_levels: tuple = field((3, 3), "Levels per channel of the FSQ action "
                            "bottleneck; the codebook size (number of latent "
                            "actions) is their product (here 9; the all-zero "
                            "code is unreachable: codes are unit-RMS).")
  encoder: BackboneConfig = section(BackboneConfig, "Action encoder backbone.")
  decoder: BackboneConfig = section(BackboneConfig, "Next-frame decoder "
                                    "backbone.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The one training loop."""
  stage: Literal["tokenizer", "lam", "dynamics"] = field(
      "tokenizer", "What to train: tokenizer, lam (latent action model, from "
      "video alone) or dynamics (of dynamics.kind).")
  steps: int = field(1000, "Optimizer steps.")
  batch_size: int = field(16, "Global batch (windows per step), split over "
                          "data and fsdp.")
  learning_rate: float = field(1e-3, "Peak AdamW learning rate.")
  warmup_steps: int = field(100, "Linear warmup steps.")
  final_lr_fraction: float = field(0.1, "Cosine decay ends at this fraction "
                                   "of the peak.")
  weight_decay: float = field(1e-4, "AdamW weight decay.")
  grad_clip: float = field(1.0, "Global gradient-norm clip.")
  seed: int = field(0, "Parameter-init and step-randomness seed.")
  log_every: int = field(25, "Steps between progress lines / metric records.")
  checkpoint_every: int = field(250, "Steps between checkpoints (the last "
                                "step is always saved).")
  keep_checkpoints: int = field(3, "Most recent checkpoints kept (older "
                                "ones are deleted unless train.keep_every "
                                "keeps them).")
  keep_every: int = field(0, "Also keep every checkpoint whose step is a "
                          "multiple of this, for good (0: none).")
  init_from: str = field("", "Fine-tuning: a run directory of the same stage "
                         "whose model parameters start this run (the "
                         "optimizer starts fresh).")
  init_step: int = field(0, "Checkpoint step of train.init_from (0: its "
                         "latest).")
  nan_policy: Literal["stop", "skip"] = field(
      "stop", "A step whose loss or gradients are NaN/Inf never updates the "
      "model; stop: the run then stops, naming the step, its batch's records "
      "and the last good checkpoint; skip: training goes on and the skipped "
      "updates are counted (metric skipped_updates).")
  preview_episodes: int = field(2, "Dynamics runs: held-out episodes shown "
                                "truth beside imagination in TensorBoard at "
                                "each checkpoint (train/preview.py); 0: off.")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Rollout of a dynamics model on held-out episodes."""
  context_frames: int = field(4, "Real frames given to the model.")
  horizon: int = field(8, "Frames the model generates.")
  num_episodes: int = field(16, "Held-out episodes rolled out.")
  maskgit_steps: int = field(8, "MaskGIT refinement steps per frame.")
  mask_schedule: Literal["cosine", "linear", "square"] = field(
      "cosine", "MaskGIT schedule of the fraction of tokens still hidden "
      "after each step: cosine, linear or square (1 - r^2).")
  temperature: float = field(0.0, "Sampling temperature (0 = most likely "
                             "token).")
  top_k: int = field(0, "Sample only among the k most likely tokens "
                     "(0 = all); applies to maskgit and autoregressive.")
  diffusion_steps: int = field(2, "Denoising steps per frame of diffusion "
                               "dynamics.")
  seed: int = field(0, "Sampling seed.")


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole experiment."""
  world: WorldConfig = section(WorldConfig, "Embedded world.")
  data: DataConfig = section(DataConfig, "Records and loader.")
  mesh: MeshConfig = section(MeshConfig, "Device mesh and sharding rules.")
  tokenizer: TokenizerConfig = section(TokenizerConfig, "Video tokenizer.")
  dynamics: DynamicsConfig = section(DynamicsConfig, "Dynamics model.")
  lam: LAMConfig = section(LAMConfig, "Latent action model.")
  train: TrainConfig = section(TrainConfig, "Training loop.")
  rollout: RolloutConfig = section(RolloutConfig, "Rollout and its metrics.")


# ---------------------------------------------------------------- loading


def from_dict(data: dict[str, Any], overrides: Sequence[str] = ()) -> Config:
  """Builds and validates a Config from nested data plus dotted overrides."""
  data = config_load.apply_overrides(data, overrides)
  if not isinstance(data.get("mesh", {}), dict):
    raise JaxWorldError("Config key mesh is a section; give it as a table.")
  mesh = data.setdefault("mesh", {})
  # Preset underneath, explicit keys on top.
  data["mesh"] = {**load_preset(mesh.get("preset", MeshConfig.preset)), **mesh}
  cfg = config_load.build(Config, data)
  from jaxworld.config_checks import validate  # it reads Config's fields
  validate(cfg)
  return cfg


def load(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
  """Loads a TOML (or resolved JSON) config file and applies overrides."""
  return from_dict(config_load.read_file(path) if path is not None else {},
                   overrides)


def save(cfg: Config, path: str | Path) -> None:
  Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def describe(cls: type = Config, prefix: str = "") -> list[str]:
  """One line per field: dotted key, default, description."""
  return config_load.describe(cls, prefix)
