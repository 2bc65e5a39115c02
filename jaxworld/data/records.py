"""Episode records: a versioned, self-describing, pickle-free byte format.

One ArrayRecord record holds one episode. Its bytes are

    b"JWEP" | uint32 LE header length | header (UTF-8 JSON) | payload

The header is `{"schema_version": 2, "crc32": <crc of payload>, "arrays":
[{"name", "dtype", "shape"[, "codec", "sizes"]}, ...]}`; the payload is the
arrays' bytes concatenated in header order: raw little-endian C-order, or
for `"codec": "png"` one PNG per frame (`sizes` gives each PNG's length).
Decoding parses JSON and calls `np.frombuffer` on a whitelist of dtypes (PNGs
are decoded by Pillow), so a record can never execute code. The arrays:

    frames   uint8   [T, H, W, 3]  RGB frames (required)
    actions  int32   [T]           actions[t] is taken after frame t (required;
                                   all 0 for video without actions)
    rewards  float32 [T]           optional
    states   float32 [T, ...]      optional; the embedded world's object
                                   states (x, y, vx, vy) of K balls + agent
    radii    float32 [K]           optional; the embedded world's ball radii

Version 2 added the per-array codec; version 1 records (all raw) still read.

A dataset directory holds `dataset.json` (schema version, storage, frame
size, action count, split sizes and shard names) and one folder per split:
`train/episodes-00000-of-00004.array_record`, ... `eval/...`, or, with
`"storage": "zarr"`, a TensorStore episode store per split (data/zarr_store.py).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jaxworld.errors import JaxWorldError

MAGIC = b"JWEP"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
FRAME_CODECS = ("raw", "png")
FORMAT = "jaxworld.episodes"
DTYPES = ("uint8", "int32", "float32")
# Random access reads one record at a time: no grouping; zstd because frames
# are mostly background and compress ~5x.
WRITER_OPTIONS = "group_size:1,zstd:3"


class RecordError(JaxWorldError):
  """A record or dataset directory that cannot be read."""


def _png(frame_HWC: np.ndarray) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  # Level 1: most of the size win of PNG at a fraction of the encode time.
  Image.fromarray(frame_HWC).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def encode_episode(arrays: dict[str, np.ndarray],
                   frame_codec: str = "raw") -> bytes:
  """Serialises named numpy arrays into one record; `frame_codec="png"`
  stores each frame of `frames` as a PNG."""
  if frame_codec not in FRAME_CODECS:
    raise ValueError(f"frame codec {frame_codec!r}; use {FRAME_CODECS}")
  specs, chunks = [], []
  for name, a in arrays.items():
    a = np.ascontiguousarray(a)
    if a.dtype.name not in DTYPES:
      raise ValueError(f"array {name!r} has dtype {a.dtype}; records hold "
                       f"{', '.join(DTYPES)}")
    spec = {"name": name, "dtype": a.dtype.name, "shape": list(a.shape)}
    if name == "frames" and frame_codec == "png":
      pngs = [_png(f) for f in a]
      spec.update(codec="png", sizes=[len(p) for p in pngs])
      chunks.append(b"".join(pngs))
    else:
      chunks.append(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    specs.append(spec)
  payload = b"".join(chunks)
  header = json.dumps({"schema_version": SCHEMA_VERSION,
                       "crc32": zlib.crc32(payload),
                       "arrays": specs}).encode()
  return MAGIC + struct.pack("<I", len(header)) + header + payload


def decode_episode(record: bytes, where: str = "record") -> dict[str, np.ndarray]:
  """Parses one record; raises RecordError naming `where` if it is damaged."""
  def fail(why: str) -> RecordError:
    return RecordError(
        f"{where} is not a valid jaxworld episode record ({why}). The file "
        f"is damaged or was not written by jaxworld; regenerate or re-ingest "
        f"the dataset, or set data.bad_records=skip to train past it.")

  if len(record) < 8 or record[:4] != MAGIC:
    raise fail("bad magic bytes")
  (header_len,) = struct.unpack("<I", record[4:8])
  try:
    header = json.loads(record[8:8 + header_len])
  except (UnicodeDecodeError, json.JSONDecodeError):
    raise fail("unreadable header") from None
  if not isinstance(header, dict) or header.get(
      "schema_version") not in READABLE_VERSIONS:
    version = header.get("schema_version") if isinstance(header, dict) else None
    raise fail(f"schema version {version!r}; this jaxworld reads versions "
               f"{', '.join(map(str, READABLE_VERSIONS))}")
  payload = memoryview(record)[8 + header_len:]
  if zlib.crc32(payload) != header.get("crc32"):
    raise fail("payload checksum mismatch")
  out, offset = {}, 0
  try:
    for spec in header["arrays"]:
      if spec["dtype"] not in DTYPES:
        raise fail(f"dtype {spec['dtype']!r} not allowed")
      dtype = np.dtype(spec["dtype"]).newbyteorder("<")
      shape = tuple(int(s) for s in spec["shape"])
      if any(s < 0 for s in shape):
        raise fail(f"negative shape {list(shape)}")
      if spec.get("codec", "raw") == "png":
        a, offset = _decode_pngs(payload, offset, spec, shape)
      else:
        count = int(np.prod(shape))
        if offset + count * dtype.itemsize > len(payload):
          raise fail(f"array {spec['name']!r} runs past the payload")
        a = np.frombuffer(payload, dtype, count, offset).reshape(shape)
        offset += count * dtype.itemsize
      out[spec["name"]] = a.astype(a.dtype.newbyteorder("="), copy=False)
  except RecordError:
    raise
  except Exception as e:  # noqa: BLE001 - any malformed table is a bad record
    raise fail(f"array table does not match payload: {e}") from None
  if offset != len(payload):
    raise fail(f"{len(payload) - offset} trailing payload bytes")
  return out


def _decode_pngs(payload: memoryview, offset: int, spec: dict[str, Any],
                 shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
  from PIL import Image
  sizes = [int(n) for n in spec["sizes"]]
  if spec["dtype"] != "uint8" or len(shape) != 4 or len(sizes) != shape[0]:
    raise ValueError(f"png array {spec['name']!r} must be uint8 [T, H, W, C] "
                     f"with one size per frame")
  frames = np.empty(shape, np.uint8)
  for t, n in enumerate(sizes):
    if n <= 0 or offset + n > len(payload):
      raise ValueError(f"frame {t} runs past the payload")
    with Image.open(io.BytesIO(payload[offset:offset + n])) as image:
      frames[t] = np.asarray(image.convert("RGB"))
    offset += n
  return frames, offset


def check_episode(episode: dict[str, np.ndarray], where: str,
                  image_size: int | None = None,
                  num_actions: int | None = None) -> dict[str, np.ndarray]:
  """Checks what the pipeline relies on: uint8 RGB frames, one int32 action
  per frame inside the action set, per-frame rewards/states as long."""
  def fail(why: str) -> RecordError:
    return RecordError(f"{where}: {why}. Re-ingest or regenerate the "
                       f"dataset, or set data.bad_records=skip to train "
                       f"past it.")

  frames, actions = episode.get("frames"), episode.get("actions")
  if frames is None or actions is None:
    raise fail("the episode has no " + " and no ".join(
        k for k in ("frames", "actions") if episode.get(k) is None))
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise fail(f"frames are {frames.dtype}{list(frames.shape)}, expected "
               f"uint8 [T, H, W, 3]")
  t = frames.shape[0]
  if t == 0:
    raise fail("the episode has no frames")
  if image_size is not None and frames.shape[1:3] != (image_size, image_size):
    raise fail(f"frames are {frames.shape[1]}x{frames.shape[2]}, the dataset "
               f"says {image_size}x{image_size}")
  if actions.dtype != np.int32 or actions.shape != (t,):
    raise fail(f"actions are {actions.dtype}{list(actions.shape)}, expected "
               f"int32 [{t}] (one per frame)")
  if num_actions is not None and t and (actions.min() < 0 or
                                        actions.max() >= num_actions):
    raise fail(f"actions range over [{actions.min()}, {actions.max()}], "
               f"outside the dataset's {num_actions} actions")
  for name in ("rewards", "states"):
    if name in episode and episode[name].shape[:1] != (t,):
      raise fail(f"{name} has shape {list(episode[name].shape)}, expected "
                 f"{t} entries (one per frame)")
  return episode


def shard_name(index: int, count: int) -> str:
  return f"episodes-{index:05d}-of-{count:05d}.array_record"


def write_split(directory: Path, episodes: Iterable[dict[str, np.ndarray]],
                num_shards: int, frame_codec: str = "raw") -> list[str]:
  """Writes episodes round-robin into `num_shards` ArrayRecord files."""
  # Imported here so that reading configs and records needs no native module.
  from array_record.python.array_record_module import ArrayRecordWriter

  directory.mkdir(parents=True, exist_ok=True)
  names = [shard_name(i, num_shards) for i in range(num_shards)]
  writers = [ArrayRecordWriter(str(directory / n), WRITER_OPTIONS)
             for n in names]
  try:
    for i, episode in enumerate(episodes):
      record = (episode if isinstance(episode, bytes)
                else encode_episode(episode, frame_codec))
      writers[i % num_shards].write(record)
  finally:
    for w in writers:
      w.close()
  return names


def write_metadata(root: Path, meta: dict[str, Any]) -> None:
  meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **meta}
  (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_metadata(root: str | Path) -> dict[str, Any]:
  """Reads and checks `dataset.json`; the error says how to make one."""
  root = Path(root)
  path = root / "dataset.json"
  if not path.is_file():
    raise RecordError(
        f"No dataset at {root} (missing {path.name}). Create one with "
        f"`jaxworld data generate --out {root}` or set data.path to an "
        f"existing dataset directory.")
  try:
    meta = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise RecordError(f"{path} is not valid JSON ({e}); regenerate the "
                      f"dataset.") from None
  if (meta.get("format") != FORMAT or
      meta.get("schema_version") not in READABLE_VERSIONS):
    raise RecordError(
        f"{path} describes format {meta.get('format')!r} version "
        f"{meta.get('schema_version')!r}; this jaxworld reads {FORMAT!r} "
        f"versions {', '.join(map(str, READABLE_VERSIONS))}. Regenerate the "
        f"dataset.")
  meta.setdefault("storage", "array_record")
  return meta


def shard_paths(root: str | Path, split: str) -> list[str]:
  """The shard files of a split, checked to exist."""
  meta = read_metadata(root)
  if split not in meta.get("splits", {}):
    raise RecordError(f"Dataset {root} has no {split!r} split; it has "
                      f"{', '.join(meta.get('splits', {})) or 'none'}.")
  paths = [Path(root) / split / n for n in meta["splits"][split]["shards"]]
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:
    raise RecordError(f"Dataset {root} is missing shard(s) {', '.join(missing)}"
                      f"; regenerate it with `jaxworld data generate`.")
  return [str(p) for p in paths]
