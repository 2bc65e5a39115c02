"""The WebSocket messages between the page and `jaxworld play`.

Page -> server: one JSON object per text message, with a "type":

    {"type": "start", "episode": 3}      start held-out episode 3 (0-based)
    {"type": "reset"}                    back to the current episode's start
    {"type": "action", "action": "up", "seq": 7}
                                         the key held now (null: none, the
                                         first action, e.g. noop)
    {"type": "step", "action": "up", "seq": 8}
                                         one frame now, also while paused
                                         (action optional: the held one)
    {"type": "pause"}, {"type": "resume"}
    {"type": "record", "on": true}       false: stop, the GIF comes back
    {"type": "true_actions", "on": true} drive with the episode's own actions

"seq" (optional, an integer) is echoed in the first frame that used that
message, so the page can time key-to-frame latency. Every message is
checked here before it touches a session: a bad one gets a text message
{"type": "error", "message": ...} saying what is wrong and the fix, and the
session goes on.

Server -> page: text JSON ({"type": "hello" | "status" | "error", ...}) and
binary messages: a 4-byte big-endian header length, the UTF-8 JSON header,
then the payload parts the header lists in order as [name, byte length]:

    {"type": "frame", "step", "action", "seq", "model_ms",
     "truth_same_actions", "parts": [["imagined", n], ["truth", m]]}  PNGs
    {"type": "recording", "frames": k, "parts": [["gif", n]]}       a GIF
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

PROTOCOL_VERSION = 1
MAX_SEQ = 2 ** 53  # exact in a JavaScript number

# type -> {field: (kind, required)}; kinds: "episode", "action", "seq", "on"
MESSAGES: dict[str, dict[str, tuple[str, bool]]] = {
    "start": {"episode": ("episode", True)},
    "reset": {},
    "action": {"action": ("action", True), "seq": ("seq", False)},
    "step": {"action": ("action", False), "seq": ("seq", False)},
    "pause": {},
    "resume": {},
    "record": {"on": ("on", True)},
    "true_actions": {"on": ("on", True)},
}


class BadMessage(ValueError):
  """A page message that cannot be applied; the text is sent to the page."""


@dataclasses.dataclass(frozen=True)
class Command:
  """A checked page message."""
  type: str
  episode: int | None = None
  action: int | None = None  # index into the model's actions; None: default
  seq: int | None = None
  on: bool | None = None


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def parse(text: str | None, data: bytes | None,
          action_names: Sequence[str], num_episodes: int, max_bytes: int
          ) -> Command:
  """The command in one WebSocket message; BadMessage if it is not one."""
  if text is None:
    raise BadMessage("Binary messages are not accepted; send JSON text such "
                     "as {\"type\": \"step\"}.")
  size = len(text.encode("utf-8", "replace"))
  if size > max_bytes:
    raise BadMessage(f"Message of {size} bytes is over the {max_bytes}-byte "
                     f"limit; messages are small JSON objects such as "
                     f"{{\"type\": \"action\", \"action\": "
                     f"\"{action_names[0]}\"}}.")
  try:
    message = json.loads(text)
  except ValueError as e:
    raise BadMessage(f"Message is not valid JSON ({e}); send an object such "
                     f"as {{\"type\": \"step\"}}.") from None
  if not isinstance(message, dict):
    raise BadMessage("Message must be a JSON object with a \"type\", e.g. "
                     "{\"type\": \"pause\"}.")
  kind = message.get("type")
  if kind not in MESSAGES:
    raise BadMessage(f"Unknown message type {kind!r}; use one of "
                     f"{', '.join(MESSAGES)}.")
  fields = MESSAGES[kind]
  extra = sorted(set(message) - set(fields) - {"type"})
  if extra:
    raise BadMessage(f"A {kind!r} message has no field "
                     f"{', '.join(map(repr, extra))}; its fields are "
                     f"{', '.join(['type', *fields])}.")
  values: dict[str, Any] = {}
  for name, (field_kind, required) in fields.items():
    if name not in message:
      if required:
        raise BadMessage(f"A {kind!r} message needs {name!r}.")
      continue
    values[name] = _check(kind, name, field_kind, message[name],
                          action_names, num_episodes)
  return Command(kind, **values)


def _check(kind: str, name: str, field_kind: str, value: Any,
           action_names: Sequence[str], num_episodes: int) -> Any:
  if field_kind == "episode":
    if not _is_int(value) or not 0 <= value < num_episodes:
      raise BadMessage(f"Episode {value!r} does not exist; pick one of the "
                       f"{num_episodes} held-out episodes, 0 to "
                       f"{num_episodes - 1}.")
    return value
  if field_kind == "action":
    if value is None:
      return None
    if value not in action_names:
      raise BadMessage(f"Unknown action {value!r}; this model's actions are "
                       f"{', '.join(action_names)} (or null for none).")
    return list(action_names).index(value)
  if field_kind == "seq":
    if not _is_int(value) or not 0 <= value <= MAX_SEQ:
      raise BadMessage(f"{name!r} of a {kind!r} message must be an integer "
                       f"from 0 to 2**53, not {value!r}.")
    return value
  if not isinstance(value, bool):
    raise BadMessage(f"{name!r} of a {kind!r} message must be true or false, "
                     f"not {value!r}.")
  return value


# ----------------------------------------------------- server -> page


def png(frame_HWC: np.ndarray) -> bytes:
  """A frame as PNG: lossless, and small for these flat-coloured worlds."""
  out = io.BytesIO()
  Image.fromarray(frame_HWC).save(out, format="PNG", compress_level=1)
  return out.getvalue()


def pack(header: dict[str, Any], parts: Sequence[tuple[str, bytes]]) -> bytes:
  """A binary message: header length, JSON header (listing the parts), the
  parts."""
  header = {**header, "parts": [[name, len(data)] for name, data in parts]}
  head = json.dumps(header, separators=(",", ":")).encode()
  return b"".join([struct.pack(">I", len(head)), head,
                   *(data for _, data in parts)])


def unpack(message: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
  """(header, parts by name) of a binary message (tests, benchmarks)."""
  (size,) = struct.unpack(">I", message[:4])
  header = json.loads(message[4:4 + size])
  parts, offset = {}, 4 + size
  for name, length in header["parts"]:
    parts[name] = message[offset:offset + length]
    offset += length
  return header, parts


def error(message: str) -> str:
  return json.dumps({"type": "error", "message": message})
