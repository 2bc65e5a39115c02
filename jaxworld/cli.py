"""The `jaxworld` command.

    jaxworld demo [--workdir runs/demo] [--data DIR] [--recipe CONFIG] [overrides...]
    jaxworld data generate [CONFIG] --out DIR [overrides...] [--overwrite]
    jaxworld data inspect PATH [--out DIR]
    jaxworld train CONFIG --workdir DIR [overrides...] [--resume]
    jaxworld rollout --workdir DIR [rollout overrides...] [--out DIR] [--episodes N]
    jaxworld eval --workdir DIR [rollout overrides...] [--out DIR]
    jaxworld sweep FILE [--out DIR] [--parallel N]
    jaxworld export --workdir DIR [--out BUNDLE] [--dtype bfloat16]
    jaxworld play RUN_OR_BUNDLE [rollout overrides...] [--port N] [--host H]
    jaxworld ckpt list|show --workdir DIR [--step N]
    jaxworld config [CONFIG] [overrides...] [--fields]
    jaxworld bench CONFIG [overrides...] [--steps N] [--out FILE] [--profile DIR]
    jaxworld plan CONFIG [overrides...] [--mesh PRESET] (--topology v5p-256 | --devices N [--device H100])

CONFIG is a .toml path or a name in configs/ (tokenizer, dynamics);
overrides are `section.key=value`, e.g. `train.steps=100 mesh.fsdp=2`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="jaxworld", description="World models in JAX: learn a world from "
      "video and actions, then play it.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  sub = p.add_subparsers(dest="command", required=True)

  demo = sub.add_parser("demo", help="Run the whole method on the embedded "
                        "world and report held-out rollout PSNR.")
  demo.add_argument("--workdir", default="runs/demo")
  demo.add_argument("--data", default=None, help="A dataset made by "
                    "`jaxworld data ingest` to run the demo's recipe on "
                    "instead of the embedded world (frame size, actions and "
                    "episode length from its dataset.json).")
  demo.add_argument("--recipe", default=None, help="The dynamics config "
                    "to train, a name in configs/ or a path (default "
                    "dynamics_regression: pixel regression; `dynamics` is "
                    "FSQ tokenizer + MaskGIT).")
  demo.add_argument("overrides", nargs="*", help="section.key=value")

  data = sub.add_parser("data", help="Datasets of episode records.")
  data_sub = data.add_subparsers(dest="data_command", required=True)
  gen = data_sub.add_parser("generate", help="Write the embedded world's "
                            "episodes as ArrayRecord shards.")
  gen.add_argument("config", nargs="?", default="tokenizer")
  gen.add_argument("overrides", nargs="*")
  gen.add_argument("--out", required=True)
  gen.add_argument("--overwrite", action="store_true")

  ing = data_sub.add_parser(
      "ingest", help="Turn videos (mp4, webm, gif, ...), image folders, NPZ "
      "episodes or a Gymnasium environment (gym:ENV_ID) into a dataset; "
      "parallel, cached (re-runs skip what is done), deterministic.")
  ing.add_argument("source", help="A folder or file, or gym:ENV_ID.")
  ing.add_argument("--out", required=True, help="Dataset directory.")
  ing.add_argument("--kind", default="auto",
                   choices=("auto", "video", "images", "npz", "gym"))
  ing.add_argument("--size", type=int, default=64, help="Frame side, px.")
  ing.add_argument("--crop", choices=("center", "none"), default="center",
                   help="center: crop to a square before resizing; none: "
                   "squash.")
  ing.add_argument("--stride", type=int, default=1,
                   help="Keep every N-th frame.")
  ing.add_argument("--fps", type=float, default=0.0,
                   help="Videos: resample to this frame rate (0: native).")
  ing.add_argument("--chunk", type=int, default=16, help="Frames per "
                   "episode; longer sources are cut (0: keep whole).")
  ing.add_argument("--val-fraction", type=float, default=0.1,
                   help="Share of sources held out as the eval split.")
  ing.add_argument("--shards", type=int, default=4)
  ing.add_argument("--storage", choices=("array_record", "zarr"),
                   default="array_record")
  ing.add_argument("--frames", choices=("raw", "png"), default="raw",
                   help="ArrayRecord frame codec (raw: zstd per record).")
  ing.add_argument("--workers", type=int, default=1,
                   help="Processes reading sources in parallel.")
  ing.add_argument("--bad", choices=("error", "skip"), default="error",
                   help="An unreadable source: stop, or skip and report it.")
  ing.add_argument("--episodes", type=int, default=64,
                   help="gym: episodes to roll out.")
  ing.add_argument("--max-steps", type=int, default=64,
                   help="gym: frames per episode at most.")
  ing.add_argument("--repeat-prob", type=float, default=0.8,
                   help="gym: sticky-random policy's chance of repeating "
                   "the last action.")
  ing.add_argument("--seed", type=int, default=0, help="gym: policy and "
                   "environment seed.")

  insp = data_sub.add_parser("inspect", help="Check every record of a "
                             "dataset; counts, shapes, actions, size, a "
                             "contact sheet and a GIF.")
  insp.add_argument("path")
  insp.add_argument("--out", default=None,
                    help="Where images go (default: <path>/inspect).")

  train = sub.add_parser("train", help="Train one stage (tokenizer or "
                         "dynamics) as set by train.stage.")
  train.add_argument("config")
  train.add_argument("overrides", nargs="*")
  train.add_argument("--workdir", required=True)
  train.add_argument("--resume", action="store_true",
                     help="Continue the run in --workdir from its last "
                     "checkpoint.")

  for name, help_text, out_default in (
      ("rollout", "Imagine held-out episodes with a trained dynamics run; "
       "write GIF and PSNR.", "<workdir>/rollout"),
      ("eval", "Horizon curves (PSNR, SSIM), controllability and a physics "
       "probe of a dynamics run on held-out episodes; JSON, plots, "
       "TensorBoard.", "<workdir>/eval")):
    run = sub.add_parser(name, help=help_text)
    run.add_argument("--workdir", required=True, help="A dynamics run.")
    run.add_argument("overrides", nargs="*", help="rollout.key=value")
    run.add_argument("--out", default=None, help=f"Default: {out_default}.")
    run.add_argument("--episodes", type=int, default=None)
    run.add_argument("--data", default=None, help="Dataset directory "
                     "(default: the run's data.path).")

  sw = sub.add_parser("sweep", help="Train or evaluate a grid or list of "
                      "config overrides (resumably); write results.md/.csv "
                      "and plots. Examples: configs/sweeps/.")
  sw.add_argument("file", help="Sweep TOML file.")
  sw.add_argument("--out", default=None,
                  help="Output folder (default: runs/sweeps/<file stem>).")
  sw.add_argument("--parallel", type=int, default=1,
                  help="Points run at once, each in its own process.")

  ckpt = sub.add_parser("ckpt", help="A run's checkpoints: list the steps "
                        "(size, metrics) or show one (config, arrays).")
  ckpt.add_argument("action", choices=("list", "show"))
  ckpt.add_argument("--workdir", required=True)
  ckpt.add_argument("--step", type=int, default=None,
                    help="For show (default: the latest).")

  export = sub.add_parser("export", help="Write a standalone inference "
                          "bundle of a dynamics run (params, config, "
                          "serialized jax.export functions).")
  export.add_argument("--workdir", required=True, help="A dynamics run.")
  export.add_argument("--out", default=None,
                      help="Bundle directory (default: <workdir>/export).")
  export.add_argument("--dtype", choices=("float32", "bfloat16"),
                      default="float32", help="Parameter dtype.")

  play = sub.add_parser("play", help="Drive a trained world model from a "
                        "browser, live: serves a page on 127.0.0.1.")
  play.add_argument("source", metavar="RUN_OR_BUNDLE", help="A dynamics "
                    "run, a `jaxworld demo` directory or an export bundle.")
  play.add_argument("overrides", nargs="*", help="rollout.key=value (a "
                    "bundle: rollout.temperature, rollout.seed only)")
  play.add_argument("--port", type=int, default=8765,  # server.DEFAULT_PORT
                    help="0: any free port.")
  play.add_argument("--host", default="127.0.0.1", help="Other than "
                    "loopback, anyone who can reach it can drive the model.")
  play.add_argument("--episodes", type=int, default=16,
                    help="Held-out episodes to start from.")
  play.add_argument("--data", default=None, help="Dataset to take them "
                    "from (default: the run's, or the bundle's samples).")
  play.add_argument("--fps", type=float, default=30.0, help="Frames/s of a "
                    "running session at most (0: as fast as the model).")
  play.add_argument("--max-sessions", type=int, default=4,
                    help="Pages served at once.")

  bench = sub.add_parser("bench", help="Time a config's train step on these "
                         "devices: step time, FLOPs (XLA and analytic), "
                         "MFU, memory per device, compile time, sampled "
                         "frames/s, loader rate; a table and JSON.")
  bench.add_argument("config", help="A .toml path or a name in configs/ "
                     "(a dynamics config gets configs/tokenizer.toml's "
                     "tokenizer, random weights throughout).")
  bench.add_argument("overrides", nargs="*")
  bench.add_argument("--steps", type=int, default=10,
                     help="Timed steps (the median is reported).")
  bench.add_argument("--warmup", type=int, default=2,
                     help="Untimed steps first.")
  bench.add_argument("--out", default=None, help="JSON file (default: "
                     "runs/bench/<config name>.json).")
  bench.add_argument("--profile", default=None, metavar="DIR",
                     help="Also trace 3 steps into DIR (TensorBoard's "
                     "profile plugin, or Perfetto).")

  plan = sub.add_parser("plan", help="Compile a config's train step for a "
                        "target you need not own (a TPU slice, or N "
                        "devices) from shapes alone: memory per device "
                        "against capacity, FLOPs, fits or the fix.")
  plan.add_argument("config")
  plan.add_argument("overrides", nargs="*")
  plan.add_argument("--mesh", default=None, metavar="PRESET",
                    help="Parallelism preset (as mesh.preset=PRESET): dp, "
                    "fsdp, fsdp_tp, tp_sp or a .toml path.")
  plan.add_argument("--topology", default=None, help="A TPU slice: v5p-256,"
                    " v5e-16, v6e-64, ... or a chip grid (v5p:4x4x8); needs "
                    "the tpu extra (pip install \"jax[tpu]\").")
  plan.add_argument("--devices", type=int, default=None, help="N simulated "
                    "CPU devices (GPU clusters; any target as a fallback).")
  plan.add_argument("--device", default=None, help="With --devices: the "
                    "device whose memory and peak to plan against (H100, "
                    "H200, B200, v5e, v5p, v6e).")
  plan.add_argument("--out", default=None, help="Also write the report as "
                    "JSON here.")

  cfg = sub.add_parser("config", help="Print a resolved config, or every "
                       "field with its meaning.")
  cfg.add_argument("config", nargs="?", default=None)
  cfg.add_argument("overrides", nargs="*")
  cfg.add_argument("--fields", action="store_true")
  return p


def _split_overrides(args: argparse.Namespace) -> None:
  """argparse puts `key=value` into `config` when CONFIG is optional."""
  if getattr(args, "config", None) and "=" in args.config:
    if args.command == "train":
      args.config = None  # reported in _run: train needs a config
      return
    args.overrides = [args.config, *args.overrides]
    args.config = {"generate": "tokenizer"}.get(
        getattr(args, "data_command", ""), None)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  _split_overrides(args)
  logging.basicConfig(level=os.environ.get("JAXWORLD_LOG", "INFO"),
                      format="%(asctime)s %(name)s: %(message)s",
                      datefmt="%H:%M:%S")
  for noisy in ("absl", "jax._src", "orbax", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # Orbax warns through absl about routine settings (a read-only manager
  # "setting save_interval_steps=0"); jaxworld reports checkpoint problems
  # itself, in its own words.
  logging.getLogger("absl").setLevel(logging.ERROR)

  # Heavy imports only after argument parsing, so --help is instant.
  from jaxworld.parallel import cpu_devices
  cpu_devices.size_thread_pool()  # before JAX creates its CPU backend
  from jaxworld import compile_cache
  from jaxworld import config as configlib
  compile_cache.enable()  # a rerun loads compiled programs, not recompiles
  from jaxworld.errors import JaxWorldError
  try:
    return _run(args, configlib)
  except JaxWorldError as e:
    print(f"jaxworld: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 - re-raised unless a lost peer
    from jaxworld.parallel import distributed
    message = distributed.lost_peer_message(e)
    if message is None:
      raise
    print(f"jaxworld: error: {message}", file=sys.stderr, flush=True)
    return 3


def _stopped_status(result: dict, how_to_continue: str = "Run the same "
                    "command with --resume to continue.") -> int:
  """0 for a finished run; EXIT_PREEMPTED after a save on SIGTERM/Ctrl-C."""
  if not result.get("stopped_at"):
    return 0
  from jaxworld.train import preemption
  print(f"jaxworld: stopped by {result['stopped_by']} at step "
        f"{result['stopped_at']}; a checkpoint of that step is saved. "
        f"{how_to_continue}", file=sys.stderr)
  return preemption.EXIT_PREEMPTED


def _run(args: argparse.Namespace, configlib) -> int:
  from jaxworld.errors import JaxWorldError
  if args.command == "demo":
    from jaxworld import demo
    summary = demo.run(args.workdir, args.overrides, data=args.data,
                       recipe=args.recipe or demo.DYNAMICS_CONFIG)
    if summary.get("stopped_at"):
      return _stopped_status(summary, "Run the same demo command again to "
                             "continue where it stopped.")
    return 0 if summary["passed"] else 1
  if args.command == "config":
    if args.fields:
      print("\n".join(configlib.describe()))
      return 0
    path = configlib.resolve(args.config) if args.config else None
    print(json.dumps(configlib.to_dict(configlib.load(path, args.overrides)),
                     indent=2))
    return 0
  if args.command == "data" and args.data_command == "inspect":
    from jaxworld.data import inspect
    print(inspect.format_summary(inspect.inspect(args.path, args.out)))
    return 0
  if args.command == "data" and args.data_command == "ingest":
    from jaxworld.data import ingest
    print(ingest.format_report(ingest.run_cli(args)))
    return 0
  if args.command == "data":
    from jaxworld.data import generate
    cfg = configlib.load(configlib.resolve(args.config), args.overrides)
    meta = generate.generate_dataset(cfg, args.out, args.overwrite)
    print(json.dumps({k: meta[k] for k in ("splits", "image_size",
                                           "episode_length")}, indent=2))
    return 0
  if args.command == "train":
    from jaxworld.train import loop
    if args.config is None:
      raise JaxWorldError("`jaxworld train` needs a CONFIG before the "
                          "overrides, e.g. `jaxworld train tokenizer "
                          "train.steps=100 --workdir runs/tok`.")
    cfg = configlib.load(configlib.resolve(args.config), args.overrides)
    result = loop.train(cfg, args.workdir, args.resume)
    return _stopped_status(result)
  if args.command == "rollout":
    from jaxworld.infer import rollout
    result = rollout.run(args.workdir, args.out, args.data, args.episodes,
                         args.overrides)
    print(json.dumps({k: v for k, v in result.items() if k != "per_step"},
                     indent=2))
    return 0
  if args.command == "eval":
    from jaxworld.eval import evaluate
    result = evaluate.run(args.workdir, args.out, args.overrides, args.data,
                          args.episodes)
    print("\n".join(evaluate.summary_lines(result)))
    return 0
  if args.command == "sweep":
    from jaxworld.eval import sweep
    return sweep.exit_status(sweep.run_sweep(args.file, args.out,
                                             args.parallel))
  if args.command == "ckpt":
    from jaxworld.runs import info as ckpt_info
    if args.action == "list":
      print(ckpt_info.format_list(ckpt_info.list_steps(args.workdir)))
    else:
      print(ckpt_info.format_show(ckpt_info.show(args.workdir, args.step)))
    return 0
  if args.command == "export":
    from jaxworld.infer import export
    print(export.export_run(args.workdir, args.out, args.dtype))
    return 0
  if args.command == "bench":
    from pathlib import Path

    from jaxworld.perf import bench, harness
    cfg = harness.load(args.config, args.overrides)
    result = bench.run(cfg, args.steps, args.warmup, args.profile)
    out = Path(args.out or f"runs/bench/{Path(args.config).stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config,
                               "overrides": args.overrides, **result},
                              indent=2) + "\n")
    print(bench.format_table(result))
    print(f"wrote {out}")
    return 0
  if args.command == "plan":
    from pathlib import Path

    from jaxworld.perf import harness, peaks, plan
    devices, target = plan.target_devices(args.topology, args.devices)
    device = (peaks.by_name(args.device) if args.device
              else peaks.for_device(devices[0]))
    mesh = [f"mesh.preset={json.dumps(args.mesh)}"] if args.mesh else []
    cfg = plan.for_target(harness.load(args.config, [*mesh, *args.overrides]),
                          device is not None)
    result = plan.run(cfg, devices, target, device)
    print(plan.format_report(result))
    if args.out:
      Path(args.out).parent.mkdir(parents=True, exist_ok=True)
      Path(args.out).write_text(json.dumps(
          {"config": args.config, "overrides": [*mesh, *args.overrides],
           **result}, indent=2) + "\n")
    return 0 if result["fits"] is not False else 1
  if args.command == "play":
    from jaxworld.play import server
    return server.serve(args.source, args.host, args.port, args.episodes,
                        args.data, args.overrides, server.Limits(
                            max_sessions=args.max_sessions, max_fps=args.fps))
  raise AssertionError(args.command)


if __name__ == "__main__":
  sys.exit(main())
