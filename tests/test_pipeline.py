"""The Grain pipeline: windows, process sharding, resumable iterator state."""

import numpy as np

from conftest import tiny_config
from jaxworld.data import pipeline


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_windows_are_crops_of_episodes(tiny_dataset):
  cfg = tiny_config()
  batch = next(iter(pipeline.train_dataset(cfg.data, tiny_dataset, 4)))
  assert batch["frames"].shape == (4, 4, 32, 32, 3)
  assert batch["frames"].dtype == np.uint8
  assert batch["actions"].shape == (4, 4) and batch["actions"].dtype == np.int32
  episodes = pipeline.load_episodes(tiny_dataset, "train", 16)
  # Every window is a contiguous crop of some episode, frames with actions.
  for frames, actions in zip(batch["frames"], batch["actions"]):
    found = False
    for e in range(16):
      for s in range(12 - 4 + 1):
        if (np.array_equal(episodes["frames"][e, s:s + 4], frames) and
            np.array_equal(episodes["actions"][e, s:s + 4], actions)):
          found = True
    assert found


def test_iterator_state_resumes_exactly(tiny_dataset):
  cfg = tiny_config()
  it = iter(pipeline.train_dataset(cfg.data, tiny_dataset, 4))
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 6)  # crosses an epoch boundary (16 episodes / 4)
  resumed = iter(pipeline.train_dataset(cfg.data, tiny_dataset, 4))
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 6)):
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_array_equal(a["actions"], b["actions"])


def test_seed_changes_order(tiny_dataset):
  a = next(iter(pipeline.train_dataset(tiny_config().data, tiny_dataset, 4)))
  b = next(iter(pipeline.train_dataset(
      tiny_config("data.shuffle_seed=1").data, tiny_dataset, 4)))
  assert not np.array_equal(a["frames"], b["frames"])


def test_processes_read_disjoint_episodes_of_one_global_stream(tiny_dataset):
  cfg = tiny_config("data.window=12")  # whole episodes: identity visible
  per_process = [_take(iter(pipeline.train_dataset(
      cfg.data, tiny_dataset, 2, p, 2)), 4) for p in range(2)]
  seen = [{f.tobytes() for b in batches for f in b["frames"]}
          for batches in per_process]
  # One epoch (16 episodes, global batch 4): disjoint halves, all covered.
  assert len(seen[0]) == 8 and len(seen[1]) == 8
  assert not seen[0] & seen[1]
  # Stacking the processes' rows gives exactly one process's global batches.
  single = _take(iter(pipeline.train_dataset(cfg.data, tiny_dataset, 4)), 4)
  for step, whole in enumerate(single):
    np.testing.assert_array_equal(whole["frames"], np.concatenate(
        [per_process[p][step]["frames"] for p in range(2)]))


def test_worker_processes_give_the_same_stream(tiny_dataset):
  base = _take(iter(pipeline.train_dataset(tiny_config().data, tiny_dataset, 4)), 3)
  it = iter(pipeline.train_dataset(tiny_config("data.num_workers=2").data,
                                   tiny_dataset, 4))
  try:
    workers = _take(it, 3)
  finally:
    it.close()
  assert sorted(b["frames"].tobytes() for b in base) == sorted(
      b["frames"].tobytes() for b in workers)
