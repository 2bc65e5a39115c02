"""Frame metrics on the host (numpy): PSNR and SSIM of predicted frames
against the truth, shared by rollout, eval and the demo.

Dimension keys: B batch, T time, H/W height/width, C channels.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

# SSIM constants of Wang et al. 2004: an 11-tap Gaussian window of sigma 1.5
# (scipy's radius is int(truncate * sigma + 0.5) = 5), K1 and K2.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_RADIUS = 5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _unit_range(frames: np.ndarray, uint8: bool) -> np.ndarray:
  return frames.astype(np.float64) / (255.0 if uint8 else 1.0)


def psnr_per_frame(pred_BTHWC: np.ndarray, truth_BTHWC: np.ndarray
                   ) -> np.ndarray:
  """PSNR in dB of each frame, [B, T]; images in [0, 1] or uint8."""
  uint8 = truth_BTHWC.dtype == np.uint8
  p, t = _unit_range(pred_BTHWC, uint8), _unit_range(truth_BTHWC, uint8)
  mse_BT = np.mean((p - t) ** 2, axis=(2, 3, 4))
  return -10.0 * np.log10(np.maximum(mse_BT, 1e-10))


def moving_psnr_per_frame(pred_BTHWC: np.ndarray, truth_BTHWC: np.ndarray,
                          last_BHWC: np.ndarray) -> np.ndarray:
  """PSNR in dB of each frame [B, T] over only the pixels where the truth
  differs from `last_BHWC` (the last real frame): what moved. Copying the
  last frame is wrong there by construction, and a static background, which
  decides whole-frame PSNR on most games, does not count. NaN where nothing
  moved."""
  uint8 = truth_BTHWC.dtype == np.uint8
  p, t = _unit_range(pred_BTHWC, uint8), _unit_range(truth_BTHWC, uint8)
  moved_BTHW = np.any(truth_BTHWC != last_BHWC[:, None], axis=-1)
  count_BT = moved_BTHW.sum(axis=(2, 3)) * truth_BTHWC.shape[-1]
  sq_BT = np.sum(((p - t) ** 2) * moved_BTHW[..., None], axis=(2, 3, 4))
  mse_BT = np.divide(sq_BT, count_BT, out=np.full(count_BT.shape, np.nan),
                     where=count_BT > 0)
  return -10.0 * np.log10(np.maximum(mse_BT, 1e-10))


def ssim_per_frame(pred_BTHWC: np.ndarray, truth_BTHWC: np.ndarray
                   ) -> np.ndarray:
  """Mean SSIM of each frame, [B, T]; images in [0, 1] or uint8.

  Wang et al. 2004: local means, variances and covariance under a Gaussian
  window (11 taps, sigma 1.5), K1 = 0.01, K2 = 0.03, dynamic range 1. The map
  is kept where the window fits inside the frame ('valid', as in the paper's
  code; a border of 5 px is dropped), averaged over pixels, then channels.
  """
  if pred_BTHWC.shape != truth_BTHWC.shape or truth_BTHWC.ndim != 5:
    raise ValueError(f"ssim_per_frame needs two [B, T, H, W, C] arrays of one "
                     f"shape; got {pred_BTHWC.shape} and {truth_BTHWC.shape}.")
  h, w = truth_BTHWC.shape[2:4]
  if min(h, w) < 2 * SSIM_RADIUS + 1:
    raise ValueError(f"SSIM's window is {2 * SSIM_RADIUS + 1} px; frames are "
                     f"{h}x{w}.")
  uint8 = truth_BTHWC.dtype == np.uint8
  c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
  r = SSIM_RADIUS
  ssim_BT = np.empty(truth_BTHWC.shape[:2])
  for b in range(truth_BTHWC.shape[0]):  # Bounds the float64 temporaries.
    x_THWC = _unit_range(pred_BTHWC[b], uint8)
    y_THWC = _unit_range(truth_BTHWC[b], uint8)

    def blur(a_THWC):
      # Filter H and W only; 'valid' crop, so the padding mode never matters.
      a_THWC = scipy.ndimage.gaussian_filter(
          a_THWC, sigma=(0, SSIM_SIGMA, SSIM_SIGMA, 0),
          truncate=SSIM_TRUNCATE, mode="reflect")
      return a_THWC[:, r:h - r, r:w - r]

    mu_x, mu_y = blur(x_THWC), blur(y_THWC)
    var_x = blur(x_THWC * x_THWC) - mu_x * mu_x
    var_y = blur(y_THWC * y_THWC) - mu_y * mu_y
    cov_xy = blur(x_THWC * y_THWC) - mu_x * mu_y
    map_THWC = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
                / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)))
    ssim_BT[b] = map_THWC.mean(axis=(1, 2, 3))
  return ssim_BT
