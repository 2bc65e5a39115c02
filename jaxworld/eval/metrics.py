"""Frame metrics on the host (numpy), shared by rollout, eval and demo."""

from __future__ import annotations

import numpy as np


def psnr_per_frame(pred_BTHWC: np.ndarray, truth_BTHWC: np.ndarray
                   ) -> np.ndarray:
  """PSNR in dB of each frame, [B, T]; images in [0, 1] or uint8."""
  scale = 255.0 if truth_BTHWC.dtype == np.uint8 else 1.0
  p = pred_BTHWC.astype(np.float64) / scale
  t = truth_BTHWC.astype(np.float64) / scale
  mse_BT = np.mean((p - t) ** 2, axis=(2, 3, 4))
  return -10.0 * np.log10(np.maximum(mse_BT, 1e-10))


def to_uint8(frames: np.ndarray) -> np.ndarray:
  return np.clip(np.round(np.asarray(frames) * 255.0), 0, 255).astype(np.uint8)
