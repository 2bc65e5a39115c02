"""Tests of the embedded procedural world (numpy only, no jax)."""

import numpy as np
import pytest

from jaxworld.config import WorldConfig
from jaxworld.data import world

CFG = WorldConfig()
E, T = 16, 32


@pytest.fixture(scope="module")
def sample():
  return world.generate(CFG, E, T, seed=0)


def test_shapes_and_dtypes(sample):
  k, size = CFG.num_objects, CFG.image_size
  assert sample["frames"].shape == (E, T, size, size, 3)
  assert sample["frames"].dtype == np.uint8
  assert sample["actions"].shape == (E, T)
  assert sample["actions"].dtype == np.int32
  assert sample["states"].shape == (E, T, k + 1, 4)
  assert sample["states"].dtype == np.float32
  assert sample["radii"].shape == (E, k)
  assert sample["radii"].dtype == np.float32
  assert world.NUM_ACTIONS == len(world.ACTION_NAMES) == 5
  assert sample["actions"].min() >= 0
  assert sample["actions"].max() < world.NUM_ACTIONS


def test_deterministic_by_seed(sample):
  again = world.generate(CFG, E, T, seed=0)
  for key in sample:
    assert sample[key].tobytes() == again[key].tobytes(), key
  other = world.generate(CFG, E, T, seed=1)
  assert not np.array_equal(sample["frames"], other["frames"])
  assert not np.array_equal(sample["states"], other["states"])


def test_render_matches_states(sample):
  # Frames are a pure function of states and radii.
  frames = world.render(CFG, sample["states"], sample["radii"])
  np.testing.assert_array_equal(frames, sample["frames"])
  assert sample["frames"].max() == 255  # Balls and agent are drawn.


def test_objects_stay_inside_frame(sample):
  size, half = CFG.image_size, CFG.agent_size / 2
  r_E1K1 = sample["radii"][:, None, :, None]
  ball_ETK2 = sample["states"][:, :, :-1, :2]
  assert np.all(ball_ETK2 >= r_E1K1 - 1)
  assert np.all(ball_ETK2 <= size - r_E1K1 + 1)
  agent_ET2 = sample["states"][:, :, -1, :2]
  assert np.all((agent_ET2 >= half - 1e-4) & (agent_ET2 <= size - half + 1e-4))


def test_motion_magnitude(sample):
  motion = world.describe_motion(sample["states"])
  assert 1.0 < motion["mean_ball_speed"] < 6.0
  assert 0.0 < motion["mean_agent_speed"] <= CFG.agent_speed
  # Per-frame displacement agrees: balls really move a few px per frame.
  step_ETK = np.linalg.norm(np.diff(sample["states"][:, :, :-1, :2], axis=1),
                            axis=-1)
  assert 1.0 < step_ETK.mean() < 6.0
  assert step_ETK.max() <= 2 * CFG.speed_max + CFG.agent_speed  # No jumps.


def test_given_actions_are_honoured():
  actions_ET = np.random.default_rng(7).integers(0, world.NUM_ACTIONS, (E, T))
  out = world.generate(CFG, E, T, seed=0, actions_ET=actions_ET)
  np.testing.assert_array_equal(out["actions"], actions_ET)
  # The agent moves exactly as told unless a wall stops it.
  dirs_A2 = np.array([[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]])
  disp_ET2 = out["states"][:, 1:, -1, 2:]
  wanted_ET2 = dirs_A2[actions_ET[:, :-1]] * CFG.agent_speed
  free_ET = np.all(np.abs(disp_ET2 - wanted_ET2) < 1e-4, -1)
  assert free_ET.mean() > 0.7


def test_actions_matter():
  right_ET = np.full((E, T), world.ACTION_NAMES.index("right"))
  left_ET = np.full((E, T), world.ACTION_NAMES.index("left"))
  a = world.generate(CFG, E, T, seed=3, actions_ET=right_ET)
  b = world.generate(CFG, E, T, seed=3, actions_ET=left_ET)
  # Same seed: same start, then the agents diverge and so do the frames.
  np.testing.assert_array_equal(a["states"][:, 0], b["states"][:, 0])
  assert np.all(a["states"][:, 1, -1, 0] != b["states"][:, 1, -1, 0])
  assert not np.array_equal(a["frames"][:, 1:], b["frames"][:, 1:])
  # The agent pushes balls, so ball trajectories change in some episodes.
  ball_diff_E = np.abs(a["states"][:, :, :-1] - b["states"][:, :, :-1]).max(
      axis=(1, 2, 3))
  assert np.any(ball_diff_E > 1.0)


@pytest.mark.parametrize("bad", [
    np.zeros((E, T + 1), np.int32),  # Wrong shape.
    np.full((E, T), world.NUM_ACTIONS),  # Out of range.
    np.full((E, T), -1),  # Negative.
    np.zeros((E, T), np.float32),  # Not integers.
])
def test_bad_actions_raise(bad):
  with pytest.raises(ValueError, match="actions_ET"):
    world.generate(CFG, E, T, seed=0, actions_ET=bad)
