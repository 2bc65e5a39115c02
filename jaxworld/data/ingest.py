"""`jaxworld data ingest`: raw videos, images, NPZ episodes or a Gymnasium
environment -> a dataset the trainer reads (dataset.json + train/ + eval/).

Two phases:

1. Each unit of the source (data/sources.py) is loaded, chunked and encoded
   into `<out>/.ingest/<key>.array_record` + `<key>.json`, in parallel
   (`--workers` processes). The key hashes the unit's identity (path, size,
   mtime; or environment episode) and the frame settings, so a re-run skips
   every unit already done and redoes only new or changed ones.
2. The cached records are assembled in sorted unit order into the splits and
   shards (ArrayRecord, or a zarr store). Units, not chunks, are split
   between train and eval, so no video leaks into both; the split depends
   only on unit names. The output is byte-identical for any worker count.

A unit that cannot be read stops ingest with its path and the problem
(`--bad error`, the default) or is skipped, counted and listed in
dataset.json and the final report (`--bad skip`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import shutil
import sys
import time
from pathlib import Path
from typing import Any


from jaxworld.data import records, sources, zarr_store
from jaxworld.errors import JaxWorldError

log = logging.getLogger(__name__)

CACHE = ".ingest"


@dataclasses.dataclass(frozen=True)
class Layout:
  """How cached episodes become the dataset (no unit is re-read for these)."""
  chunk: int = 16            # frames per episode (0: whole units)
  val_fraction: float = 0.1  # of units (of chunks, if there is one unit)
  shards: int = 4
  storage: str = "array_record"  # or zarr
  frame_codec: str = "raw"       # or png (ArrayRecord only)


def _key(unit: sources.Unit, settings: sources.FrameSettings,
         layout: Layout) -> str:
  what = json.dumps([unit.identity(), dataclasses.asdict(settings),
                     layout.chunk, layout.frame_codec], sort_keys=True)
  return hashlib.sha1(what.encode()).hexdigest()[:20]


def _process(unit: sources.Unit, settings: sources.FrameSettings,
             layout: Layout, cache: Path, key: str) -> dict[str, Any]:
  """Loads, chunks and encodes one unit into the cache (worker process)."""
  from array_record.python.array_record_module import ArrayRecordWriter
  summary: dict[str, Any] = {"unit": unit.name, "error": None, "lengths": []}
  try:
    pieces = sources.chunks(sources.load(unit, settings), layout.chunk)
  except sources.SourceError as e:
    summary["error"] = str(e)
    pieces = []
  tmp = cache / f"{key}.array_record.tmp"
  writer = ArrayRecordWriter(str(tmp), records.WRITER_OPTIONS)
  try:
    for piece in pieces:
      writer.write(records.encode_episode(piece, layout.frame_codec))
      summary["lengths"].append(int(piece["frames"].shape[0]))
  finally:
    writer.close()
  summary["max_action"] = max((int(p["actions"].max()) for p in pieces),
                              default=0)
  summary["has_actions"] = bool(pieces) and sources.has_actions(unit)
  tmp.rename(cache / f"{key}.array_record")
  # Written last: a unit counts as done only once its records are complete.
  (cache / f"{key}.json").write_text(json.dumps(summary) + "\n")
  return summary


class Progress:
  """One status line: rewritten in place on a terminal, else every 2 s."""

  def __init__(self, total: int, done: int = 0):
    self.total, self.done, self.episodes = total, done, 0
    self.start, self.shown = time.perf_counter(), 0.0
    self.tty = sys.stderr.isatty()

  def update(self, episodes: int) -> None:
    self.done += 1
    self.episodes += episodes
    now = time.perf_counter()
    if self.tty or now - self.shown > 2.0 or self.done == self.total:
      self.shown = now
      rate = self.done / max(now - self.start, 1e-9)
      bar = "#" * int(20 * self.done / self.total)
      eta = (self.total - self.done) / rate if rate else 0.0
      line = (f"ingest [{bar:<20}] {self.done}/{self.total} units | "
              f"{self.episodes} episodes | {rate:.1f} units/s | "
              f"ETA {eta:.0f}s")
      print(("\r" if self.tty else "") + line, end="" if self.tty else "\n",
            file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.tty:
      print(file=sys.stderr)


def _unreadable(error: str) -> sources.SourceError:
  return sources.SourceError(f"{error} Fix or remove the file, or pass --bad "
                             f"skip to ingest the rest and list it in the "
                             f"report.")


def _run_units(todo: list[tuple[sources.Unit, str]],
               settings: sources.FrameSettings, layout: Layout, cache: Path,
               workers: int, bad: str, progress: Progress) -> None:
  def check(summary: dict[str, Any]) -> None:
    if summary["error"] and bad == "error":
      raise _unreadable(summary["error"])
    progress.update(len(summary["lengths"]))

  if workers <= 1:
    for unit, key in todo:
      check(_process(unit, settings, layout, cache, key))
    return
  # spawn: the parent may hold threads (JAX, Grain) that fork would copy.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, context) as pool:
    futures = [pool.submit(_process, u, settings, layout, cache, k)
               for u, k in todo]
    try:
      for future in concurrent.futures.as_completed(futures):
        check(future.result())
    except BaseException:
      for f in futures:
        f.cancel()
      raise


def _split(names: list[str], fraction: float) -> set[str]:
  """The names that go to eval: a fixed pseudo-random subset by name hash,
  at least one when there are two or more."""
  if fraction <= 0 or len(names) < 2:
    return set()
  count = min(len(names) - 1, max(1, round(fraction * len(names))))
  ranked = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
  return set(ranked[:count])


def _cached_records(cache: Path, key: str) -> list[bytes]:
  import grain
  source = grain.sources.ArrayRecordDataSource([str(cache / f"{key}.array_record")])
  return [source[i] for i in range(len(source))]


def ingest(source: str, out: str | Path, settings: sources.FrameSettings,
           layout: Layout, kind: str = "auto", workers: int = 1,
           bad: str = "error") -> dict[str, Any]:
  """Runs both phases; returns the dataset metadata (dataset.json)."""
  if layout.storage not in ("array_record", "zarr"):
    raise JaxWorldError(f"--storage {layout.storage!r}: use array_record or "
                        f"zarr.")
  if layout.storage == "zarr" and layout.frame_codec != "raw":
    raise JaxWorldError("--frames png applies to ArrayRecord storage; zarr "
                        "compresses chunks of frames itself.")
  out = Path(out)
  units = sources.discover(source, kind, settings)
  cache = out / CACHE
  cache.mkdir(parents=True, exist_ok=True)
  keys = [_key(u, settings, layout) for u in units]
  todo = [(u, k) for u, k in zip(units, keys)
          if not (cache / f"{k}.json").is_file()]
  log.info("ingest %s: %d %s units, %d already done (cache %s)", source,
           len(units), units[0].kind, len(units) - len(todo), cache)
  progress = Progress(len(todo))
  try:
    _run_units(todo, settings, layout, cache, workers, bad, progress)
  finally:
    progress.close()
  summaries = [json.loads((cache / f"{k}.json").read_text()) for k in keys]
  failed = [s["error"] for s in summaries if s["error"]]
  if failed and bad == "error":  # also when cached by an earlier --bad skip
    raise _unreadable(failed[0])
  digest = hashlib.sha1(json.dumps([keys, dataclasses.asdict(layout)]).encode()
                        ).hexdigest()
  if (out / "dataset.json").is_file() and records.read_metadata(out).get(
      "ingest_digest") == digest:
    log.info("%s is up to date with %s; nothing to do", out, source)
    return records.read_metadata(out)
  return _assemble(digest, out, source, units, keys, summaries, settings, layout)


def _assemble(digest: str, out: Path, source: str, units: list[sources.Unit],
              keys: list[str], summaries: list[dict[str, Any]],
              settings: sources.FrameSettings, layout: Layout
              ) -> dict[str, Any]:
  good = [(u, k, s) for u, k, s in zip(units, keys, summaries)
          if s["lengths"]]
  skipped = [{"unit": s["unit"], "why": s["error"] or "no frames left after "
              f"chunking into {layout.chunk}"} for s in summaries
             if not s["lengths"]]
  if not good:
    raise JaxWorldError(f"No episodes from {source}: " + "; ".join(
        f"{s['unit']}: {s['why']}" for s in skipped[:3]))
  if len({s["has_actions"] for _, _, s in good}) > 1:
    raise JaxWorldError(f"Some units of {source} have actions and some do "
                        f"not; ingest them as separate datasets.")
  # Split units; a single unit is split by its chunks.
  items = [(u.name if len(good) > 1 else f"{u.name}#{j}", k, j)
           for u, k, s in good for j in range(len(s["lengths"]))]
  eval_names = _split(sorted({n for n, _, _ in items}), layout.val_fraction)
  lengths = {(k, j): s["lengths"][j] for _, k, s in good
             for j in range(len(s["lengths"]))}
  splits: dict[str, Any] = {}
  for split in ("train", "eval"):
    chosen = [(k, j) for n, k, j in items
              if (n in eval_names) == (split == "eval")]
    directory = out / split
    if directory.exists():
      shutil.rmtree(directory)
    stream = _stream(out / CACHE, chosen)
    if layout.storage == "zarr":
      zarr_store.write_split(directory, (records.decode_episode(r)
                                         for r in stream))
      shards = []
    else:
      shards = records.write_split(directory, stream,
                                   max(1, min(layout.shards, len(chosen))))
    splits[split] = {"episodes": len(chosen),
                     "frames": sum(lengths[c] for c in chosen),
                     "shards": shards}
  kind = units[0].kind
  has_actions = good[0][2]["has_actions"]
  num_actions = (sources.gym_num_actions(units[0].path) if kind == "gym" else
                 1 + max(s["max_action"] for _, _, s in good))
  meta = {"storage": layout.storage, "frame_codec": layout.frame_codec,
          "image_size": settings.size,
          "episode_length": min(lengths.values()),
          "num_actions": num_actions if has_actions else 1,
          "has_actions": has_actions,
          "action_names": [] if has_actions else ["none"],
          "source": {"path": source, "kind": kind, "units": len(units),
                     "skipped": skipped},
          "settings": dataclasses.asdict(settings),
          "layout": dataclasses.asdict(layout), "splits": splits,
          "ingest_digest": digest}
  records.write_metadata(out, meta)
  return records.read_metadata(out)


def _stream(cache: Path, chosen: list[tuple[str, int]]):
  """Cached records in order, one unit's file read at a time."""
  current, held = None, []
  for key, j in chosen:
    if key != current:
      current, held = key, _cached_records(cache, key)
    yield held[j]


def run_cli(args: Any) -> dict[str, Any]:
  """`jaxworld data ingest` arguments -> ingest()."""
  for name in ("size", "stride", "shards", "episodes", "max_steps"):
    if getattr(args, name) < 1:
      raise JaxWorldError(f"--{name.replace('_', '-')} must be >= 1.")
  if args.chunk < 0 or not 0 <= args.val_fraction < 1:
    raise JaxWorldError("--chunk must be >= 0 and --val-fraction in [0, 1).")
  settings = sources.FrameSettings(
      size=args.size, crop=args.crop, stride=args.stride, fps=args.fps,
      episodes=args.episodes, max_steps=args.max_steps,
      repeat_prob=args.repeat_prob, seed=args.seed)
  layout = Layout(chunk=args.chunk, val_fraction=args.val_fraction,
                  shards=args.shards, storage=args.storage,
                  frame_codec=args.frames)
  meta = ingest(args.source, args.out, settings, layout, args.kind,
                args.workers, args.bad)
  return {**meta, "path": str(args.out)}


def format_report(meta: dict[str, Any]) -> str:
  src, out = meta["source"], meta["path"]
  lines = [f"ingested {src['units']} {src['kind']} units from {src['path']} "
           f"into {out} ({meta['storage']}, {meta['image_size']}px, "
           f"{meta['num_actions']} actions)"]
  for split, s in meta["splits"].items():
    lines.append(f"  {split}: {s['episodes']} episodes, {s['frames']} frames")
  if src["skipped"]:
    lines.append(f"  skipped {len(src['skipped'])} units:")
    lines += [f"    {s['unit']}: {s['why']}" for s in src["skipped"]]
  actions = (f" dynamics.num_actions={meta['num_actions']}"
             if meta["num_actions"] > 5 else "")
  window = min(8, meta["episode_length"])
  lines += [
      f"  next: jaxworld data inspect {out}",
      f"        jaxworld train tokenizer data.path={out} "
      f"world.image_size={meta['image_size']} data.window={window}"
      f"{actions} --workdir runs/<name>"]
  return "\n".join(lines)
