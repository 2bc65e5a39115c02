"""Episode records: a versioned, self-describing, pickle-free byte format.

One ArrayRecord record holds one episode. Its bytes are

    b"JWEP" | uint32 LE header length | header (UTF-8 JSON) | payload

The header is `{"schema_version": 1, "crc32": <crc of payload>, "arrays":
[{"name", "dtype", "shape"}, ...]}`; the payload is the arrays' raw
little-endian C-order bytes, concatenated in header order. Decoding parses
JSON and calls `np.frombuffer` on a whitelist of dtypes, so a record can never
execute code. Schema version 1 arrays:

    frames   uint8   [T, H, W, 3]  rendered RGB
    actions  int32   [T]           actions[t] is taken after frame t
    states   float32 [T, K+1, 4]   (x, y, vx, vy) of K balls, then the agent
    radii    float32 [K]           ball radii in pixels

A dataset directory holds `dataset.json` (schema version, world config, split
sizes and shard names) and one folder of shards per split:
`train/episodes-00000-of-00004.array_record`, ... `eval/...`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jaxworld.errors import JaxWorldError

MAGIC = b"JWEP"
SCHEMA_VERSION = 1
FORMAT = "jaxworld.episodes"
DTYPES = ("uint8", "int32", "float32")
SPLITS = ("train", "eval")
# Random access reads one record at a time: no grouping; zstd because frames
# are mostly background and compress ~5x.
WRITER_OPTIONS = "group_size:1,zstd:3"


class RecordError(JaxWorldError):
  """A record or dataset directory that cannot be read."""


def encode_episode(arrays: dict[str, np.ndarray]) -> bytes:
  """Serialises named numpy arrays into one record."""
  specs, chunks = [], []
  for name, a in arrays.items():
    a = np.ascontiguousarray(a)
    if a.dtype.name not in DTYPES:
      raise ValueError(f"array {name!r} has dtype {a.dtype}; records hold "
                       f"{', '.join(DTYPES)}")
    specs.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
    chunks.append(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
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
        f"is damaged or was not written by `jaxworld data generate`; "
        f"regenerate the dataset.")

  if len(record) < 8 or record[:4] != MAGIC:
    raise fail("bad magic bytes")
  (header_len,) = struct.unpack("<I", record[4:8])
  try:
    header = json.loads(record[8:8 + header_len])
  except (UnicodeDecodeError, json.JSONDecodeError):
    raise fail("unreadable header") from None
  if not isinstance(header, dict) or header.get("schema_version") != SCHEMA_VERSION:
    version = header.get("schema_version") if isinstance(header, dict) else None
    raise fail(f"schema version {version!r}; this jaxworld reads "
               f"version {SCHEMA_VERSION}")
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
      count = int(np.prod(shape))
      a = np.frombuffer(payload, dtype, count, offset).reshape(shape)
      out[spec["name"]] = a.astype(a.dtype.newbyteorder("="), copy=False)
      offset += count * dtype.itemsize
  except (KeyError, TypeError, ValueError) as e:
    raise fail(f"array table does not match payload: {e}") from None
  if offset != len(payload):
    raise fail(f"{len(payload) - offset} trailing payload bytes")
  return out


def shard_name(index: int, count: int) -> str:
  return f"episodes-{index:05d}-of-{count:05d}.array_record"


def write_split(directory: Path, episodes: Iterable[dict[str, np.ndarray]],
                num_shards: int) -> list[str]:
  """Writes episodes round-robin into `num_shards` ArrayRecord files."""
  # Imported here so that reading configs and records needs no native module.
  from array_record.python.array_record_module import ArrayRecordWriter

  directory.mkdir(parents=True, exist_ok=True)
  names = [shard_name(i, num_shards) for i in range(num_shards)]
  writers = [ArrayRecordWriter(str(directory / n), WRITER_OPTIONS)
             for n in names]
  try:
    for i, episode in enumerate(episodes):
      writers[i % num_shards].write(encode_episode(episode))
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
  if meta.get("format") != FORMAT or meta.get("schema_version") != SCHEMA_VERSION:
    raise RecordError(
        f"{path} describes format {meta.get('format')!r} version "
        f"{meta.get('schema_version')!r}; this jaxworld reads {FORMAT!r} "
        f"version {SCHEMA_VERSION}. Regenerate the dataset.")
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
