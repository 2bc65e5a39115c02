"""Tests of frame metrics, ridge probes and object location (host numpy)."""

import numpy as np
import pytest
from flax import nnx
from numpy.lib.stride_tricks import sliding_window_view

from conftest import tiny_config
from jaxworld.config import WorldConfig
from jaxworld.data import world
from jaxworld import frame_metrics
from jaxworld.eval import probe, readout
from jaxworld.models import build


def _frames(seed, shape=(2, 3, 24, 24, 3), low=0.0, high=1.0):
  return np.random.default_rng(seed).uniform(low, high, shape)


def test_psnr_of_identical_frames_is_the_cap():
  x = _frames(0)
  np.testing.assert_allclose(frame_metrics.psnr_per_frame(x, x), 100.0)


def test_psnr_of_gaussian_noise():
  truth = _frames(0, (2, 3, 32, 32, 3), 0.2, 0.8)
  sigma = 0.05
  noisy = truth + np.random.default_rng(1).normal(0, sigma, truth.shape)
  psnr_BT = frame_metrics.psnr_per_frame(noisy, truth)
  assert psnr_BT.shape == (2, 3)
  # 9216 samples per frame: the MSE is within ~1.5% (0.07 dB) of sigma^2.
  np.testing.assert_allclose(psnr_BT, 10 * np.log10(1 / sigma ** 2), atol=0.3)


def test_ssim_of_identical_frames_is_one():
  x = (_frames(0) * 255).astype(np.uint8)
  np.testing.assert_allclose(frame_metrics.ssim_per_frame(x, x), 1.0, atol=1e-12)


def test_ssim_of_constant_frames_is_the_luminance_term():
  a, b = 0.3, 0.6
  x = np.full((1, 2, 16, 16, 3), a)
  y = np.full((1, 2, 16, 16, 3), b)
  c1 = (0.01 * 1.0) ** 2
  want = (2 * a * b + c1) / (a * a + b * b + c1)
  np.testing.assert_allclose(frame_metrics.ssim_per_frame(x, y), want, rtol=1e-9)


def test_ssim_of_shifted_copy_is_below_one_and_symmetric():
  x = _frames(0, low=0.0, high=0.8)
  shifted = x + 0.2
  ssim_BT = frame_metrics.ssim_per_frame(shifted, x)
  assert np.all(ssim_BT < 0.99) and np.all(ssim_BT > 0.5)
  np.testing.assert_allclose(frame_metrics.ssim_per_frame(x, shifted), ssim_BT)


def _ssim_direct(x_THWC, y_THWC):
  """SSIM from explicit 11x11 Gaussian windows over every valid position."""
  g = np.exp(-np.arange(-5, 6) ** 2 / (2 * 1.5 ** 2))
  g2 = np.outer(g, g) / np.outer(g, g).sum()
  win = lambda a: np.einsum("thwcij,ij->thwc",
                            sliding_window_view(a, (11, 11), axis=(1, 2)), g2)
  mx, my = win(x_THWC), win(y_THWC)
  vx, vy = win(x_THWC ** 2) - mx ** 2, win(y_THWC ** 2) - my ** 2
  cxy = win(x_THWC * y_THWC) - mx * my
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  m = ((2 * mx * my + c1) * (2 * cxy + c2)
       / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
  return m.mean(axis=(1, 2, 3))


def test_ssim_matches_direct_windows_and_uint8():
  x = (_frames(0, (1, 2, 20, 17, 3)) * 255).astype(np.uint8)
  y = np.clip(x + np.random.default_rng(1).normal(0, 30, x.shape), 0, 255
              ).astype(np.uint8)
  got_BT = frame_metrics.ssim_per_frame(x, y)
  want_T = _ssim_direct(x[0] / 255.0, y[0] / 255.0)
  np.testing.assert_allclose(got_BT[0], want_T, rtol=1e-10)
  assert 0.0 < got_BT.max() < 0.99
  np.testing.assert_allclose(frame_metrics.ssim_per_frame(x / 255.0, y / 255.0),
                             got_BT, rtol=1e-12)


def test_r2_exact_mean_and_constant_targets():
  rng = np.random.default_rng(0)
  truth_NK = rng.normal(size=(100, 3))
  np.testing.assert_allclose(readout.r2_score(truth_NK, truth_NK), 1.0)
  mean_NK = np.broadcast_to(truth_NK.mean(0), truth_NK.shape)
  np.testing.assert_allclose(readout.r2_score(mean_NK, truth_NK), 0.0,
                             atol=1e-12)
  worse_NK = mean_NK + truth_NK.std(0)
  np.testing.assert_allclose(readout.r2_score(worse_NK, truth_NK), -1.0)
  const_N1 = np.ones((100, 1))
  assert np.isnan(readout.r2_score(const_N1, const_N1)).all()


def test_ridge_recovers_a_linear_map():
  rng = np.random.default_rng(0)
  # Unequal scales and offsets: standardization must fold back correctly.
  x_ND = rng.normal(size=(400, 12)) * rng.uniform(0.1, 50, 12) + 30
  w_DK = rng.normal(size=(12, 3))
  b_K = np.array([1.0, -2.0, 5.0])
  y_NK = x_ND @ w_DK + b_K
  w, b = readout.fit_ridge(x_ND, y_NK, alpha=1e-8)
  np.testing.assert_allclose(w, w_DK, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(b, b_K, atol=1e-2)
  np.testing.assert_allclose(readout.predict_ridge(x_ND, w, b), y_NK,
                             atol=1e-3)


def test_ridge_dual_matches_primal_and_path_matches_single_fits():
  rng = np.random.default_rng(0)
  x_ND = rng.normal(size=(40, 90)) * rng.uniform(0.5, 3, 90)  # N < D: dual.
  y_NK = rng.normal(size=(40, 2))
  alpha = 3.0
  z_ND = (x_ND - x_ND.mean(0)) / x_ND.std(0)
  w_std_DK = np.linalg.solve(z_ND.T @ z_ND + alpha * np.eye(90),
                             z_ND.T @ (y_NK - y_NK.mean(0)))
  w, _ = readout.fit_ridge(x_ND, y_NK, alpha)
  np.testing.assert_allclose(w, w_std_DK / x_ND.std(0)[:, None], rtol=1e-4,
                             atol=1e-6)
  path = readout.fit_ridge_path(x_ND, y_NK, [0.1, alpha, 100.0])
  for (w_a, b_a), a in zip(path, [0.1, alpha, 100.0]):
    w_1, b_1 = readout.fit_ridge(x_ND, y_NK, a)
    np.testing.assert_allclose(w_a, w_1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b_a, b_1, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="> 0"):
    readout.fit_ridge(x_ND, y_NK, 0.0)


def test_probe_finds_linear_code_and_not_noise():
  rng = np.random.default_rng(0)
  x_NF = rng.normal(size=(700, 60))
  y_NY = x_NF[:, :4] @ rng.normal(size=(4, 4)) + 0.01 * rng.normal(
      size=(700, 4))
  groups = {"position": range(2), "velocity": range(2, 4)}
  out = probe.probe(x_NF[:500], y_NY[:500], x_NF[500:], y_NY[500:],
                    groups=groups)
  assert out["position_r2"] > 0.99 and out["velocity_r2"] > 0.99
  assert len(out["r2_per_target"]) == 4
  assert set(out["alpha_per_target"]) <= set(probe.ALPHAS)
  noise_NY = rng.normal(size=(700, 4))
  out = probe.probe(x_NF[:500], noise_NY[:500], x_NF[500:], noise_NY[500:])
  assert out["all_r2"] < 0.05


def _apart(states_ETK4, radii_EK, agent_half, margin=2.0):
  """[E, T, K+1]: True where an object is clear of every other one."""
  pos = states_ETK4[..., :2]
  k = radii_EK.shape[1]
  r_E1K = radii_EK[:, None]
  d_ETKK = np.linalg.norm(pos[:, :, :k, None] - pos[:, :, None, :k], axis=-1)
  touch_ETKK = d_ETKK < r_E1K[..., :, None] + r_E1K[..., None, :] + margin
  touch_ETKK &= ~np.eye(k, dtype=bool)
  gap_ETK2 = np.abs(pos[:, :, :k] - pos[:, :, k:]) - agent_half
  agent_d_ETK = np.linalg.norm(np.maximum(gap_ETK2, 0), axis=-1)
  near_agent_ETK = agent_d_ETK < r_E1K + margin
  clear_ETK = ~touch_ETKK.any(-1) & ~near_agent_ETK
  return np.concatenate([clear_ETK, ~near_agent_ETK.any(-1, keepdims=True)],
                        -1)


def test_locate_objects_on_rendered_frames():
  cfg = WorldConfig()
  sample = world.generate(cfg, 8, 16, seed=0)
  located_ETK2 = probe.locate_objects(sample["frames"], cfg.num_objects)
  assert located_ETK2.shape == (8, 16, cfg.num_objects + 1, 2)
  clear_ETK = _apart(sample["states"], sample["radii"], cfg.agent_size / 2)
  assert clear_ETK.mean() > 0.5  # Most objects are tested.
  err_ETK = np.linalg.norm(located_ETK2 - sample["states"][..., :2], axis=-1)
  assert not np.isnan(err_ETK[clear_ETK]).any()
  assert err_ETK[clear_ETK].max() < 1.0
  blank = np.zeros_like(sample["frames"][:1])
  assert np.isnan(probe.locate_objects(blank, cfg.num_objects)).all()


def test_position_error_of_true_shifted_and_blank_frames():
  cfg = WorldConfig()
  t = 5
  # Three balls and the agent far apart, drifting right 1 px per frame.
  start_K12 = np.array([[12.0, 12.0], [50.0, 14.0], [14.0, 50.0],
                        [45.0, 45.0]])
  pos_TK2 = start_K12 + np.arange(t)[:, None, None] * np.array([1.0, 0.0])
  states_1TK4 = np.concatenate([pos_TK2, np.zeros_like(pos_TK2)], -1)[None]
  states_1TK4 = states_1TK4.astype(np.float32)
  radii_1K = np.array([[5.0, 6.0, 4.5]], np.float32)
  frames = world.render(cfg, states_1TK4, radii_1K)
  err_T, missing_T = probe.position_error(frames, states_1TK4)
  assert err_T.shape == missing_T.shape == (t,)
  assert err_T.max() < 0.5 and missing_T.sum() == 0
  moved = states_1TK4.copy()
  moved[..., 0] += 3.0
  err_T, _ = probe.position_error(frames, moved)
  np.testing.assert_allclose(err_T, 3.0, atol=0.5)
  err_T, missing_T = probe.position_error(np.zeros_like(frames), states_1TK4)
  assert np.isnan(err_T).all() and (missing_T == 4).all()
  # Float frames in [0, 1] locate like uint8 ones.
  err_T, _ = probe.position_error(frames / 255.0, states_1TK4)
  assert err_T.max() < 0.5


def test_physics_probe_runs_on_a_tiny_tokenizer():
  cfg = tiny_config()
  tokenizer = build.tokenizer(cfg, nnx.Rngs(params=0))
  train = world.generate(cfg.world, 100, 12, seed=0)
  test = world.generate(cfg.world, 8, 12, seed=1)
  out = probe.physics_probe(tokenizer, cfg, train, test,
                            max_train_frames=1000)
  # 1000 // window 4 = 250 windows; test: 8 episodes x 3 windows x 4 frames.
  assert out["num_train_frames"] == 1000 and out["num_test_frames"] == 96
  assert out["latent_dim"] == 16 * 3 and out["pixel_dim"] == 32 * 32 * 3
  k1 = cfg.world.num_objects + 1
  assert out["targets"] == ["ball0_x", "ball0_y", "ball1_x", "ball1_y",
                            "agent_x", "agent_y", "ball0_vx", "ball0_vy",
                            "ball1_vx", "ball1_vy"]
  for name in ("latents", "pixels"):
    assert len(out[name]["r2_per_target"]) == 2 * k1 + 2 * (k1 - 1)
    assert np.isfinite(out[name]["position_r2"])
    assert np.isfinite(out[name]["velocity_r2"])
  # One frame's pixels show where objects are (R^2 0.93 here) but not how
  # they move (-0.02). (The untrained encoder's latents show neither.)
  assert out["pixels"]["position_r2"] > 0.8
  assert out["pixels"]["velocity_r2"] < 0.1
  assert out["pixels"]["velocity_at_object_r2"] < 0.1


def test_velocity_is_read_where_each_ball_is():
  """Features that hold each ball's velocity at the token under it read
  back exactly; the same features one token over read nothing at radius 0,
  and are read within the 3 x 3 neighbourhood but not 3 tokens over."""
  rng = np.random.default_rng(0)
  n, grid, f = 600, 8, 8
  states_NK4 = np.concatenate([rng.uniform(0, 64, (n, 3, 2)),
                               rng.normal(size=(n, 3, 2))], -1)
  tokens_NK = probe.object_tokens(states_NK4, 64, 8)[..., 0]
  np.testing.assert_array_equal(
      tokens_NK, (states_NK4[:, :2, 1] // 8) * grid + states_NK4[:, :2, 0] // 8)
  hood_NK9 = probe.object_tokens(states_NK4, 64, 8, radius=1)
  assert hood_NK9.shape == (n, 2, 9) and hood_NK9.min() >= 0
  np.testing.assert_array_equal(hood_NK9[..., 4], tokens_NK)  # the centre

  def placed(shift: int) -> np.ndarray:
    x_NMF = 0.01 * rng.normal(size=(n, grid * grid, f))
    for k in range(2):  # the agent (the last object) has no velocity target
      x_NMF[np.arange(n), (tokens_NK[:, k] + shift) % (grid * grid),
            2 * k:2 * k + 2] = states_NK4[:, k, 2:]
    return x_NMF

  read = lambda x, radius: probe.velocity_at_objects(
      x[:400], states_NK4[:400], x[400:], states_NK4[400:], image_size=64,
      patch=8, radius=radius)
  assert read(placed(0), 0) > 0.99 and read(placed(0), 1) > 0.99
  assert read(placed(1), 0) < 0.1
  # One token over is inside the neighbourhood, except at the grid's edge.
  assert read(placed(1), 1) > 0.7
  assert read(placed(3), 1) < 0.1


def test_blank_baseline_fills_each_episodes_background():
  from jaxworld.infer import rollout
  context = np.zeros((2, 3, 8, 8, 3), np.uint8)
  context[1] = (10, 20, 30)          # episode 1's background
  context[:, :, 2:4, 2:4] = 255      # an object covering 4 of 64 pixels
  blank = rollout.blank_frames(context, horizon=5)
  assert blank.shape == (2, 5, 8, 8, 3) and blank.dtype == np.uint8
  np.testing.assert_array_equal(blank[0], 0)
  np.testing.assert_array_equal(blank[1], np.broadcast_to([10, 20, 30],
                                                          (5, 8, 8, 3)))


def test_moving_psnr_scores_only_the_pixels_that_moved():
  last = np.zeros((1, 8, 8, 3), np.uint8)
  truth = np.zeros((1, 2, 8, 8, 3), np.uint8)
  truth[0, 0, 2:4, 2:4] = 200  # 4 pixels moved in frame 0; none in frame 1
  pred = truth.copy()
  pred[0, 0, 2, 2] = 100       # one moved pixel wrong by 100 / 255
  pred[0, :, 6, 6] = 255       # a static pixel wrong: does not count
  got = frame_metrics.moving_psnr_per_frame(pred, truth, last)
  mse = (100 / 255) ** 2 / 4   # over the 4 moved pixels (x3 channels)
  np.testing.assert_allclose(got[0, 0], -10 * np.log10(mse))
  assert np.isnan(got[0, 1])
  # Copying the last frame is wrong on every moved pixel.
  copy = np.repeat(last[:, None], 2, axis=1)
  np.testing.assert_allclose(
      frame_metrics.moving_psnr_per_frame(copy, truth, last)[0, 0],
      -10 * np.log10((200 / 255) ** 2))
