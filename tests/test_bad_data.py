"""Bad data: every damaged or malformed record is a clear error naming it,
or (data.bad_records=skip) a counted skip; never a crash, hang or garbage."""

import numpy as np
import pytest

from conftest import tiny_config
from jaxworld.data import pipeline, records, stores

H = 8


def _episode(seed, t=6):
  rng = np.random.default_rng(seed)
  return {"frames": rng.integers(0, 256, (t, H, H, 3), dtype=np.uint8),
          "actions": rng.integers(0, 5, t).astype(np.int32),
          "states": rng.random((t, 3, 4)).astype(np.float32)}


def _malformed(rng, episode):
  """A well-formed record of an episode that breaks the schema's promises."""
  e = dict(episode)
  which = rng.integers(5)
  if which == 0:
    e["actions"] = e["actions"][:-1]                 # one action short
  elif which == 1:
    e["frames"] = e["frames"].astype(np.float32)     # wrong dtype
  elif which == 2:
    e["frames"] = e["frames"][..., 0]                # grayscale [T, H, W]
  elif which == 3:
    e["actions"] = e["actions"] + 100                # outside the action set
  else:
    e["states"] = e["states"][:2]                    # wrong length
  return records.encode_episode(e)


def _mutate(rng, record, episode):
  """Bit flips, truncation, garbage or a malformed episode."""
  data = bytearray(record)
  kind = rng.integers(4)
  if kind == 0:
    for _ in range(rng.integers(1, 9)):
      i = rng.integers(len(data))
      data[i] ^= 1 << rng.integers(8)
  elif kind == 1:
    data = data[:rng.integers(len(data))]
  elif kind == 2:
    i = rng.integers(len(data))
    data[i:i + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
  else:
    return _malformed(rng, episode)
  return bytes(data)


@pytest.mark.parametrize("codec", ["raw", "png"])
def test_fuzzed_records_are_errors_or_the_original(codec):
  rng = np.random.default_rng(0)
  outcomes = {"error": 0, "intact": 0}
  for n in range(300):
    episode = _episode(n)
    mutated = _mutate(rng, records.encode_episode(episode, codec), episode)
    try:
      decoded = records.check_episode(
          records.decode_episode(mutated, f"Record {n}"), f"Record {n}", H, 5)
    except records.RecordError as e:
      assert f"Record {n}" in str(e) and "re-ingest" in str(e).lower()
      outcomes["error"] += 1
      continue
    # Only a flip that changes nothing decodable (e.g. JSON whitespace) may
    # pass; then the arrays are exactly the original ones.
    for k, v in episode.items():
      np.testing.assert_array_equal(decoded[k], v)
    outcomes["intact"] += 1
  assert outcomes["error"] >= 280, outcomes


def _write_dataset(root, episodes, shards=2):
  names = records.write_split(root / "train", episodes, shards)
  records.write_metadata(root, {
      "image_size": H, "episode_length": 6, "num_actions": 5,
      "splits": {"train": {"episodes": len(episodes), "shards": names}}})


@pytest.fixture(scope="module")
def fuzzed_dataset(tmp_path_factory):
  """200 records, one in four damaged; the good ones remembered."""
  rng = np.random.default_rng(1)
  root = tmp_path_factory.mktemp("fuzzed")
  raw, good = [], []
  for n in range(200):
    episode = _episode(1000 + n)
    record = records.encode_episode(episode)
    if n % 4 == 3:
      while True:  # a mutation that is really damage
        bad = _mutate(rng, record, episode)
        try:
          records.check_episode(records.decode_episode(bad), "r", H, 5)
        except records.RecordError:
          break
      record = bad
    else:
      good.append(episode)
    raw.append(record)
  _write_dataset(root, raw)
  return root, good


def _windows_of(episodes, window):
  return {e["frames"][s:s + window].tobytes() for e in episodes
          for s in range(e["frames"].shape[0] - window + 1)}


def test_skip_counts_damaged_records_and_yields_only_good_windows(
    fuzzed_dataset):
  root, good = fuzzed_dataset
  cfg = tiny_config("data.bad_records=skip", "data.window=4").data
  allowed = _windows_of(good, 4)
  it = iter(pipeline.train_dataset(cfg, root, 10))
  skipped = 0
  for _ in range(40):  # two epochs
    batch = next(it)
    skipped += int(batch["skipped"].sum())
    assert all(f.tobytes() in allowed for f in batch["frames"])
  # 50 damaged records, each passed over at least once per epoch.
  assert skipped >= 50


def test_error_policy_names_the_record(fuzzed_dataset):
  root, _ = fuzzed_dataset
  cfg = tiny_config("data.window=4").data
  it = iter(pipeline.train_dataset(cfg, root, 10))
  with pytest.raises(records.RecordError,
                     match=r"Record \d+ of shard .*episodes-0000[01]"):
    for _ in range(20):
      next(it)


def test_truncated_shard_is_named_or_skipped(tmp_path):
  root = tmp_path / "data"
  _write_dataset(root, [_episode(n) for n in range(8)])
  shard = root / "train" / records.shard_name(1, 2)
  shard.write_bytes(shard.read_bytes()[:-20])
  with pytest.raises(records.RecordError, match=f"Shard {shard} cannot be "
                     f"opened.*data.bad_records=skip"):
    stores.open_store(root, "train")
  store = stores.open_store(root, "train", skip_bad=True)
  assert len(store) == 4 and store.bad_shards == [str(shard)]
  cfg = tiny_config("data.bad_records=skip", "data.window=4").data
  batch = next(iter(pipeline.train_dataset(cfg, root, 4)))
  assert batch["frames"].shape == (4, 4, H, H, 3)


def test_training_reports_skipped_records(fuzzed_dataset, tmp_path):
  """The loop counts skips in its metrics (console, metrics.jsonl)."""
  import json

  from jaxworld import cli
  from conftest import TINY
  root, _ = fuzzed_dataset
  code = cli.main(["train", "tokenizer", *TINY, f"data.path={root}",
                   "world.image_size=8", "tokenizer.patch_size=4",
                   "data.bad_records=skip", "train.steps=4",
                   "train.batch_size=16", "--workdir", str(tmp_path / "run")])
  assert code == 0
  logged = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert logged[-1]["skipped_records"] > 0
  assert 0.0 <= logged[-1]["input_wait"] <= 1.0
