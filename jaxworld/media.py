"""Rollout videos a person can look at: truth | prediction, side by side."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

_GAP = 4  # pixels between panels
_LABEL = 12  # pixels of header row


def side_by_side(truth_ETHWC: np.ndarray, pred_ETHWC: np.ndarray,
                 context: int, scale: int = 2) -> list[Image.Image]:
  """One image per time step: a row per episode, truth left, model right.

  Context frames (real in both panels) get a grey border, imagined frames a
  red one on the model side, so it is clear where imagination starts.
  """
  e, t, h, w, _ = truth_ETHWC.shape
  hs, ws = h * scale, w * scale
  width = 2 * ws + 3 * _GAP
  height = _LABEL + e * (hs + _GAP) + _GAP
  images = []
  for i in range(t):
    canvas = Image.new("RGB", (width, height), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    imagined = i >= context
    draw.text((_GAP, 1), "truth", fill=(220, 220, 220))
    draw.text((2 * _GAP + ws, 1),
              f"model t+{i - context + 1}" if imagined else "context",
              fill=(255, 90, 90) if imagined else (220, 220, 220))
    for j in range(e):
      y = _LABEL + _GAP + j * (hs + _GAP)
      for k, frames in enumerate((truth_ETHWC, pred_ETHWC)):
        x = _GAP + k * (ws + _GAP)
        tile = Image.fromarray(frames[j, i]).resize((ws, hs), Image.NEAREST)
        canvas.paste(tile, (x, y))
        if k == 1 and imagined:
          draw.rectangle((x - 1, y - 1, x + ws, y + hs), outline=(255, 90, 90))
    images.append(canvas)
  return images


def write_gif(path: str | Path, images: list[Image.Image],
              frame_ms: int = 250) -> None:
  Path(path).write_bytes(gif_bytes(images, frame_ms))


def gif_bytes(images: list[Image.Image], frame_ms: int = 250) -> bytes:
  """An animated GIF of `images`, looping, as file contents."""
  out = io.BytesIO()
  images[0].save(out, format="GIF", save_all=True, append_images=images[1:],
                 duration=frame_ms, loop=0)
  return out.getvalue()


def write_strip(path: str | Path, images: list[Image.Image]) -> None:
  """All time steps left to right in one PNG (for READMEs and reports)."""
  w, h = images[0].size
  strip = Image.new("RGB", (w * len(images), h))
  for i, im in enumerate(images):
    strip.paste(im, (i * w, 0))
  strip.save(path)
