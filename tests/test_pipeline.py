"""The Grain pipeline: windows, process sharding, resumable iterator state,
and the global position a resume on any process count starts from."""

import numpy as np

from conftest import tiny_config
from jaxworld.data import pipeline, records, stores, zarr_store


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


def test_any_process_count_continues_the_stream_from_a_global_batch(
    tiny_dataset):
  """Started at global batch 3 on 1, 2 or 4 processes (2 of them with a
  worker process each): stacked, the processes' rows are exactly the
  single-process stream's batches 3, 4, ... (crossing an epoch)."""
  cfg = tiny_config()
  single = _take(iter(pipeline.train_dataset(cfg.data, tiny_dataset, 8)), 6)
  for processes, workers in ((1, 0), (2, 0), (2, 1), (4, 0)):
    data = tiny_config(f"data.num_workers={workers}").data
    its = [iter(pipeline.train_dataset(data, tiny_dataset, 8 // processes, p,
                                       processes, start=3))
           for p in range(processes)]
    try:
      parts = [_take(it, 3) for it in its]
    finally:
      for it in its:
        if hasattr(it, "close"):
          it.close()
    for k in range(3):
      for name in ("frames", "actions"):
        np.testing.assert_array_equal(
            np.concatenate([part[k][name] for part in parts]),
            single[3 + k][name], err_msg=f"{processes} processes, {name}")


def test_worker_processes_give_identical_batches(tiny_dataset):
  """0, 1 and 2 worker processes: the same batches in the same order."""
  streams = []
  for workers in (0, 1, 2):
    it = iter(pipeline.train_dataset(
        tiny_config(f"data.num_workers={workers}").data, tiny_dataset, 4))
    try:
      streams.append(_take(it, 5))
    finally:
      if hasattr(it, "close"):
        it.close()
  for other in streams[1:]:
    for a, b in zip(streams[0], other):
      np.testing.assert_array_equal(a["frames"], b["frames"])
      np.testing.assert_array_equal(a["actions"], b["actions"])


def _zarr_copy(root, out):
  """The same dataset in a zarr store."""
  meta = records.read_metadata(root)
  splits = {}
  for split, info in meta["splits"].items():
    store = stores.open_store(root, split)
    zarr_store.write_split(out / split,
                           (store.episode(i) for i in range(len(store))))
    splits[split] = {**info, "shards": []}
  records.write_metadata(out, {**{k: v for k, v in meta.items() if k not in (
      "format", "schema_version")}, "storage": "zarr", "splits": splits})
  return out


def test_zarr_store_gives_the_same_batches(tiny_dataset, tmp_path):
  zarr_root = _zarr_copy(tiny_dataset, tmp_path / "zarr")
  cfg = tiny_config().data
  a = _take(iter(pipeline.train_dataset(cfg, tiny_dataset, 4)), 6)
  b = _take(iter(pipeline.train_dataset(cfg, zarr_root, 4)), 6)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["frames"], y["frames"])
    np.testing.assert_array_equal(x["actions"], y["actions"])


def _constant_dataset(root, value):
  """A dataset whose every pixel is `value`: its rows are recognisable."""
  episodes = [{"frames": np.full((12, 32, 32, 3), value, np.uint8),
               "actions": np.zeros(12, np.int32)} for _ in range(8)]
  names = records.write_split(root / "train", episodes, 2)
  records.write_metadata(root, {"image_size": 32, "episode_length": 12,
                                "num_actions": 5, "splits": {"train": {
                                    "episodes": 8, "shards": names}}})
  return root


def test_weighted_mixture_and_its_resume(tiny_dataset, tmp_path):
  other = _constant_dataset(tmp_path / "const", 7)
  cfg = tiny_config(f"data.mixture=[[\"{tiny_dataset}\", 3], "
                    f"[\"{other}\", 1]]").data
  it = iter(pipeline.train_dataset(cfg, None, 8))
  batches = _take(it, 10)
  from_other = sum(int((f == 7).all()) for b in batches for f in b["frames"])
  assert from_other == 20  # exactly a quarter of 80 rows
  state = it.get_state()
  expected = _take(it, 3)
  resumed = iter(pipeline.train_dataset(cfg, None, 8))
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 3)):
    np.testing.assert_array_equal(a["frames"], b["frames"])


def test_mixture_config_is_checked():
  import pytest
  from jaxworld.errors import JaxWorldError
  with pytest.raises(JaxWorldError, match="data.mixture entry"):
    tiny_config('data.mixture=[["a", -1]]')
  with pytest.raises(JaxWorldError, match="data.path or data.mixture"):
    tiny_config('data.mixture=[["a", 1]]', "data.path=b")
