"""`jaxworld export`: a trained world model as a self-contained bundle.

A bundle needs neither jaxworld nor flax to play: `examples/play_bundle.py`
loads it with jax and numpy alone and imagines the same frames as
`jaxworld rollout` for the same inputs and seed. Layout of the directory:

    manifest.json      format name + version, parameter dtype, platforms, and
                       for each function its file, the params it takes, its
                       inputs/outputs as "dtype[shape]" with symbolic dims b
                       (batch) and t (history frames), and the rollout
                       settings (context frames, horizon, window, dynamics
                       kind, steps per frame, temperature, seed, codes per
                       frame, the dataset's action names or null, ...)
    config.json        the resolved config of the dynamics run
    episodes.npz       a few held-out episodes (frames, actions) to try it on,
                       when the run's dataset is at hand
    tokenizer.npz      parameters, one array per "/"-joined path, e.g.
    dynamics.npz       "backbone/blocks/mlp/up/kernel"; bfloat16 arrays are
                       stored as their uint16 bits (npz has no bfloat16):
                       read with np.load(allow_pickle=False) and .view(bf16)
    encode.jax         jax.export-serialized functions (deserialize with
    dynamics_step.jax  `jax.export.deserialize`), each taking its model's
    decode.jax         params dict as the first argument:
      encode(params, frames u8[b,t,H,W,C]) -> tokens i32[b,N]
          tokens of the last of t <= window frames (a continuous
          tokenizer's: latents f32[b,N,E]; `codes_per_frame` in the
          manifest says which, and the same codes type is used below)
      dynamics_step(params, history i32[b,t,N], actions i32[b,t],
                    rng u32[2], temperature f32[]) -> (tokens i32[b,N],
                    rng u32[2])
          one imagined frame (the run's dynamics kind, all its passes)
          after t < window frames; actions[:, i] is the action taken after
          history frame i
      decode(params, tokens i32[b,t,N]) -> frame u8[b,H,W,C]
          the last of t <= window frames

The functions are `sampler.encode_frame`, `dynamics_step` and `decode_frame`,
the very programs `jaxworld rollout` runs frame by frame. Batch and history
length are symbolic, so one file serves every batch size and every history
length from 1 to the window; each concrete shape compiles on first use, to
the same program the rollout compiles for that shape, so an equal rollout
loop gives equal frames on the same platform (other platforms round floats
differently: near-equal frames). A backbone dtype of "auto" is resolved on the
exporting machine (float32 on CPU) and recorded as `compute_dtypes`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxworld import config as configlib
from jaxworld.data import pipeline, records
from jaxworld.errors import JaxWorldError
from jaxworld.infer import sampler
from jaxworld.models import build
from jaxworld.runs import assemble, checkpoint

log = logging.getLogger(__name__)

FORMAT = "jaxworld-bundle"
# v2: any dynamics kind; codes may be float latents; the rollout settings
# name the kind and its steps per frame (v1: MaskGIT only).
VERSION = 2
PARAM_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Lowered for all three, so one bundle plays on CPU, GPU and TPU.
PLATFORMS = ("cpu", "cuda", "tpu")
CHANNELS = 3  # episode frames are RGB (data/records.py)

# name -> (model whose params it takes, input names, output names)
FUNCTIONS = {
    "encode": ("tokenizer", ("frames",), ("tokens",)),
    "dynamics_step": ("dynamics",
                      ("history", "actions", "rng", "temperature"),
                      ("tokens", "rng")),
    "decode": ("tokenizer", ("tokens",), ("frame",)),
}


def export_run(workdir: str | Path, out: str | Path | None = None,
               dtype: str = "float32",
               platforms: Sequence[str] = PLATFORMS) -> Path:
  """Writes the inference bundle of a dynamics run; returns its directory.

  Args:
    workdir: a `jaxworld train dynamics` run directory; its latest checkpoint
      is exported with the tokenizer checkpoint it was trained on.
    out: the bundle directory, <workdir>/export by default. It must be
      absent or empty; the bundle is written beside it and moved into
      place only when complete.
    dtype: parameter dtype in the bundle, "float32" or "bfloat16" (half the
      bytes; compute stays as configured, only the weights are rounded).
    platforms: jax.export lowering platforms the functions can run on.

  Raises:
    JaxWorldError: bad dtype, `out` holds files, or `workdir` is not a
      trained dynamics run.
  """
  if dtype not in PARAM_DTYPES:
    raise JaxWorldError(f"Cannot export with dtype {dtype!r}: use one of "
                        f"{', '.join(PARAM_DTYPES)}.")
  out = Path(out) if out is not None else Path(workdir) / "export"
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise JaxWorldError(
        f"{out} already exists and is not empty; an export never overwrites "
        f"it. Delete it, or pass a new directory with --out DIR.")
  _check_exportable(checkpoint.read_config(workdir), workdir)
  world = assemble.load_world_model(workdir)
  cfg, dynamics, tokenizer = world.cfg, world.dynamics, world.tokenizer
  models = {"tokenizer": tokenizer, "dynamics": dynamics}
  split = {name: sampler.model_params(m) for name, m in models.items()}
  params = {name: _cast(p, PARAM_DTYPES[dtype])
            for name, (_, p) in split.items()}

  tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    functions = {}
    for name, (model_name, arg_names, out_names) in FUNCTIONS.items():
      graphdef = split[model_name][0]
      exported = jax.export.export(
          jax.jit(sampler.program(name, graphdef, cfg.dynamics.kind,
                                  sampler.options_for(cfg))),
          platforms=tuple(platforms))(
              params[model_name], *_input_specs(name, cfg, tokenizer))
      (tmp / f"{name}.jax").write_bytes(exported.serialize())
      functions[name] = _describe(name, exported, model_name, arg_names,
                                  out_names)
    stored = {}
    for name, p in params.items():
      np.savez(tmp / f"{name}.npz", **{k: _storable(v) for k, v in p.items()})
      stored[name] = {"file": f"{name}.npz", "arrays": len(p),
                      "bytes": sum(v.nbytes for v in p.values())}
    (tmp / "config.json").write_text(
        json.dumps(configlib.to_dict(cfg), indent=2) + "\n")
    manifest = _manifest(cfg, workdir, models, dtype, platforms, stored,
                         functions)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _write_sample_episodes(cfg, tmp / "episodes.npz")
    if out.exists():
      out.rmdir()  # checked empty above
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  log.info("exported %s (%s params, %s) -> %s", workdir, dtype,
           "/".join(platforms), out)
  return out


def _write_sample_episodes(cfg: Any, path: Path, count: int = 4) -> None:
  """A few held-out episodes (context + horizon frames, their actions) so
  that the bundle can be tried at once with examples/play_bundle.py."""
  try:
    episodes = pipeline.load_episodes(pipeline.eval_path(cfg.data), "eval", count)
  except (JaxWorldError, OSError) as e:
    log.info("no sample episodes in the bundle (%s)", e)
    return
  t = cfg.rollout.context_frames + cfg.rollout.horizon
  np.savez(path, frames=episodes["frames"][:, :t],
           actions=episodes["actions"][:, :t].astype(np.int32))


def _check_exportable(cfg: configlib.Config, workdir: str | Path) -> None:
  """A bundle holds a tokenizer and a dynamics model of any kind, sampled
  with the run's rollout settings; it has no LAM, so a latent-action run is
  refused before a file is written."""
  if cfg.dynamics.actions != "real":
    raise JaxWorldError(
        f"jaxworld export supports dynamics runs on real actions "
        f"(dynamics.actions=\"real\"); {workdir} is conditioned on a LAM's "
        f"latent actions, which a bundle cannot infer. Play it with "
        f"`jaxworld rollout --workdir {workdir}` instead.")


def _action_names(cfg: configlib.Config) -> list[str] | None:
  """The dataset's names of the actions (dataset.json), so that a player
  can show them (`jaxworld play` keys); None where it has none."""
  try:
    names = records.read_metadata(pipeline.eval_path(cfg.data)).get(
        "action_names")
  except (JaxWorldError, OSError):
    return None
  return ([str(n) for n in names]
          if names and len(names) == cfg.dynamics.num_actions else None)


def _cast(params: sampler.Params, dtype: Any) -> dict[str, np.ndarray]:
  return {k: np.asarray(jnp.asarray(v, dtype)) for k, v in params.items()}


def _storable(x: np.ndarray) -> np.ndarray:
  """bfloat16 as its uint16 bits: npz (and allow_pickle=False) lacks it."""
  return x.view(np.uint16) if x.dtype == jnp.bfloat16 else x


def _code_spec(cfg: configlib.Config, tokenizer: nnx.Module
               ) -> jax.ShapeDtypeStruct:
  """What the tokenizer codes one frame as, e.g. int32 [N] (FSQ tokens) or
  float32 [N, E] (continuous latents), read off the tokenizer itself."""
  size = cfg.world.image_size
  frames = jax.ShapeDtypeStruct((1, 1, size, size, CHANNELS), jnp.float32)
  graphdef, state = nnx.split(tokenizer)
  codes = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode(x),
                         state, frames)
  return jax.ShapeDtypeStruct(codes.shape[2:], codes.dtype)


def _input_specs(name: str, cfg: configlib.Config, tokenizer: nnx.Module
                 ) -> tuple[jax.ShapeDtypeStruct, ...]:
  """Inputs after params, batch `b` and history `t` symbolic."""
  window, size = cfg.data.window, cfg.world.image_size
  # The step appends the new frame to its history: t < window.
  max_t = window - 1 if name == "dynamics_step" else window
  b, t = jax.export.symbolic_shape("b, t", constraints=(f"t <= {max_t}",))
  spec = jax.ShapeDtypeStruct
  code = _code_spec(cfg, tokenizer)
  codes = spec((b, t, *code.shape), code.dtype)
  if name == "encode":
    return (spec((b, t, size, size, CHANNELS), jnp.uint8),)
  if name == "decode":
    return (codes,)
  return (codes, spec((b, t), jnp.int32), spec((2,), jnp.uint32),
          spec((), jnp.float32))


def _aval(a: Any) -> str:
  return f"{np.dtype(a.dtype).name}[{', '.join(map(str, a.shape))}]"


def _describe(name: str, exported: jax.export.Exported, model_name: str,
              arg_names: Sequence[str], out_names: Sequence[str]
              ) -> dict[str, Any]:
  # Params come first in the flat inputs; the named inputs are the rest.
  inputs = exported.in_avals[-len(arg_names):]
  return {"file": f"{name}.jax", "params": model_name,
          "inputs": {k: _aval(a) for k, a in zip(arg_names, inputs)},
          "outputs": {k: _aval(a) for k, a in zip(out_names,
                                                  exported.out_avals)}}


def _manifest(cfg: configlib.Config, workdir: str | Path,
              models: dict[str, nnx.Module], dtype: str,
              platforms: Sequence[str], stored: dict[str, Any],
              functions: dict[str, Any]) -> dict[str, Any]:
  r = cfg.rollout
  tok = models["tokenizer"]
  options = sampler.options_for(cfg)
  return {
      "format": FORMAT, "version": VERSION,
      "param_dtype": dtype,
      "params": stored,
      "platforms": list(platforms),
      "functions": functions,
      "symbolic_dims": {
          "b": "batch, any size >= 1",
          "t": f"history frames: 1..{cfg.data.window} for encode/decode, "
               f"1..{cfg.data.window - 1} for dynamics_step"},
      "rollout": {
          "context_frames": r.context_frames, "horizon": r.horizon,
          "window": cfg.data.window, "dynamics_kind": cfg.dynamics.kind,
          "steps_per_frame": options.steps, "mask_schedule": options.schedule,
          "top_k": options.top_k,
          "temperature": r.temperature, "seed": r.seed,
          "key_impl": sampler.KEY_IMPL,
          "tokens_per_frame": build.num_tokens(cfg),
          "codes_per_frame": _aval(_code_spec(cfg, tok)),
          "image_size": cfg.world.image_size,
          "num_actions": cfg.dynamics.num_actions,
          "action_names": _action_names(cfg)},
      "compute_dtypes": {
          "tokenizer.encoder": build.backbone(cfg.tokenizer.encoder)["dtype"],
          "tokenizer.decoder": build.backbone(cfg.tokenizer.decoder)["dtype"],
          "dynamics.backbone": build.backbone(cfg.dynamics.backbone)["dtype"]},
      "source": {
          "workdir": str(Path(workdir).absolute()),
          "dynamics_step": checkpoint.saved_steps(workdir)[-1],
          "tokenizer_workdir": cfg.dynamics.tokenizer_workdir,
          "tokenizer_step": cfg.dynamics.tokenizer_step},
      "jax_version": jax.__version__,
  }
