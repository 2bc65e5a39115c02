"""`jaxworld data inspect PATH`: what a dataset holds, checked and shown.

Decodes every record of every split (so a damaged record is reported by
shard and index, as training would), and reports episode and frame counts,
array shapes, the action histogram and the size on disk. Writes a contact
sheet (a row per episode, frames spread over the episode) and a GIF of a few
episodes played side by side.

Dimension keys: E episodes, T frames, H/W/C frame size, R/C grid rows and
columns.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxworld import media
from jaxworld.data import pipeline, records, stores

_SHEET_EPISODES = 8
_SHEET_FRAMES = 8
_GIF_EPISODES = 4


def inspect(root: str | Path, out: str | Path | None = None
            ) -> dict[str, Any]:
  """Summary of the dataset at `root`; images go to `out` (<root>/inspect)."""
  root = Path(root)
  meta = records.read_metadata(root)
  summary: dict[str, Any] = {
      "path": str(root), "storage": meta["storage"],
      "frame_codec": meta.get("frame_codec", "raw"),
      "num_actions": meta["num_actions"], "splits": {}}
  first: dict[str, np.ndarray] | None = None
  for split in meta["splits"]:
    store = stores.open_store(root, split)
    frames, actions = 0, collections.Counter()
    shapes: dict[str, set] = collections.defaultdict(set)
    for i in range(len(store)):
      episode = store.episode(i)  # decodes and checks every array
      frames += episode["frames"].shape[0]
      actions.update(episode["actions"].tolist())
      for name, array in episode.items():
        shapes[name].add(f"{array.dtype}{list(array.shape)}")
    files = stores.files(root, split)
    summary["splits"][split] = {
        "episodes": len(store), "frames": frames,
        "bytes_on_disk": sum(p.stat().st_size for p in files),
        "files": len(files),
        "arrays": {k: sorted(v) for k, v in shapes.items()},
        "action_histogram": {_action_name(meta, a): n
                             for a, n in sorted(actions.items())}}
    if first is None and len(store):
      count = min(len(store), _SHEET_EPISODES)
      first = pipeline.load_episodes(root, split, count)
  out = Path(out) if out is not None else root / "inspect"
  if first is not None:
    out.mkdir(parents=True, exist_ok=True)
    f_ETHWC = first["frames"]
    picks = np.linspace(0, f_ETHWC.shape[1] - 1,
                        min(f_ETHWC.shape[1], _SHEET_FRAMES)).round()
    _grid(f_ETHWC[:, picks.astype(int)]).save(out / "contact_sheet.png")
    shown_TEHWC = f_ETHWC[:_GIF_EPISODES].swapaxes(0, 1)
    media.write_gif(out / "episodes.gif",
                    [_grid(f_EHWC[None]) for f_EHWC in shown_TEHWC])
    summary["images"] = [str(out / "contact_sheet.png"),
                         str(out / "episodes.gif")]
  return summary


def _action_name(meta: dict[str, Any], action: int) -> str:
  names = meta.get("action_names") or []
  return names[action] if 0 <= action < len(names) else str(action)


def _grid(tiles_RCHWC: np.ndarray, gap: int = 2, scale: int = 2
          ) -> Image.Image:
  """Frames [rows, cols, H, W, 3] as one image, tiles enlarged `scale` x."""
  r, c, h, w, _ = tiles_RCHWC.shape
  hs, ws = h * scale, w * scale
  sheet = Image.new("RGB", (c * (ws + gap) + gap, r * (hs + gap) + gap),
                    (40, 40, 40))
  for i in range(r):
    for j in range(c):
      tile = Image.fromarray(tiles_RCHWC[i, j]).resize((ws, hs), Image.NEAREST)
      sheet.paste(tile, (gap + j * (ws + gap), gap + i * (hs + gap)))
  return sheet


def format_summary(summary: dict[str, Any]) -> str:
  lines = [f"dataset {summary['path']} ({summary['storage']}, frames "
           f"{summary['frame_codec']}, {summary['num_actions']} actions)"]
  for split, s in summary["splits"].items():
    total = sum(s["action_histogram"].values()) or 1
    lines += [
        f"  {split}: {s['episodes']} episodes, {s['frames']} frames, "
        f"{s['files']} files, {s['bytes_on_disk'] / 2**20:.1f} MiB on disk",
        "    arrays: " + ", ".join(f"{k} {'/'.join(v)}"
                                   for k, v in s["arrays"].items()),
        "    actions: " + ", ".join(f"{k} {n / total:.1%}"
                                    for k, n in s["action_histogram"].items())]
  lines += [f"  wrote {p}" for p in summary.get("images", [])]
  return "\n".join(lines)
