"""Linear read-outs on the host (numpy): ridge regression and R^2, the
physics probe's tools.

Dimension keys: N samples, D features, K regression targets, A candidate
ridge penalties.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg


def r2_score(pred_NK: np.ndarray, truth_NK: np.ndarray) -> np.ndarray:
  """Coefficient of determination of each output, [K].

  1 - SS_res / SS_tot: 1 is exact, 0 is no better than predicting the mean
  of `truth`, negative is worse. NaN for a constant target (undefined).
  """
  pred_NK = np.asarray(pred_NK, np.float64).reshape(len(pred_NK), -1)
  truth_NK = np.asarray(truth_NK, np.float64).reshape(len(truth_NK), -1)
  if pred_NK.shape != truth_NK.shape:
    raise ValueError(f"r2_score: pred has shape {pred_NK.shape}, truth "
                     f"{truth_NK.shape}.")
  ss_res_K = np.sum((truth_NK - pred_NK) ** 2, axis=0)
  ss_tot_K = np.sum((truth_NK - truth_NK.mean(0)) ** 2, axis=0)
  ratio_K = np.divide(ss_res_K, ss_tot_K, out=np.full_like(ss_res_K, np.nan),
                      where=ss_tot_K > 0)
  return 1.0 - ratio_K


def _standardize(x_ND: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(x - mean) / scale as float32 [N, D], mean [D], scale [D] (inf for a
  constant feature, which then drops out)."""
  mean_D = x_ND.mean(0, dtype=np.float64)
  if x_ND.dtype == np.float64:  # Centre before rounding: offsets can be big.
    z_ND = (x_ND - mean_D).astype(np.float32)
  else:  # uint8 pixels: float32 is exact enough and half the memory.
    z_ND = x_ND.astype(np.float32)
    z_ND -= mean_D.astype(np.float32)
  std_D = np.sqrt(np.mean(z_ND * z_ND, axis=0, dtype=np.float64))
  scale_D = np.where(std_D > 1e-6 * max(std_D.max(), 1e-30), std_D, np.inf)
  z_ND *= (1.0 / scale_D).astype(np.float32)
  return z_ND, mean_D, scale_D


def fit_ridge_path(x_ND: np.ndarray, y_NK: np.ndarray,
                   alphas: Sequence[float]
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Ridge regressions of y on standardized x, one (w [D, K], b [K]) per
  penalty, sharing one Gram matrix.

  Features are centred and scaled to unit variance (constant ones drop out);
  the penalty `alpha * |w_std|^2` is on the standardized weights, and w and
  b are folded back so that `predict_ridge(x, w, b)` takes raw features.
  Solved in the cheaper of the primal (D x D Gram) and dual (N x N Gram)
  forms: pixel features are ~12k-dim with a few thousand samples. The Gram
  is float32 (fast) and the solve float64.
  """
  x_ND = np.asarray(x_ND)
  y_NK = np.asarray(y_NK, np.float64).reshape(len(y_NK), -1)
  n, d = x_ND.shape
  if len(y_NK) != n:
    raise ValueError(f"fit_ridge: {n} feature rows but {len(y_NK)} targets.")
  alphas = [float(a) for a in alphas]
  if not alphas or min(alphas) <= 0:
    raise ValueError(f"Ridge penalties must be > 0, got {alphas}.")
  z_ND, mean_D, scale_D = _standardize(x_ND)
  y_mean_K = y_NK.mean(0)
  yc_NK = (y_NK - y_mean_K).astype(np.float32)
  primal = d <= n
  gram = (z_ND.T @ z_ND if primal else z_ND @ z_ND.T).astype(np.float64)
  rhs = (z_ND.T @ yc_NK if primal else yc_NK).astype(np.float64)
  # One Cholesky solve per penalty: for the probe's ten penalties, ten of
  # them cost about half of one eigendecomposition shared by all.
  eye = np.eye(len(gram))
  solutions = [scipy.linalg.solve(gram + a * eye, rhs, assume_a="pos")
               for a in alphas]
  out = []
  for sol in solutions:
    w_std_DK = (sol if primal
                else (z_ND.T @ sol.astype(np.float32)).astype(np.float64))
    w_DK = w_std_DK / scale_D[:, None]
    out.append((w_DK, y_mean_K - mean_D @ w_DK))
  return out


def fit_ridge(x_ND: np.ndarray, y_NK: np.ndarray, alpha: float
              ) -> tuple[np.ndarray, np.ndarray]:
  """Closed-form ridge regression: (w [D, K], b [K]); see `fit_ridge_path`."""
  return fit_ridge_path(x_ND, y_NK, [alpha])[0]


def predict_ridge(x_ND: np.ndarray, w_DK: np.ndarray, b_K: np.ndarray
                  ) -> np.ndarray:
  """x @ w + b, [N, K], in float64 (b cancels the large mean term)."""
  return np.asarray(x_ND, np.float64) @ w_DK + b_K
