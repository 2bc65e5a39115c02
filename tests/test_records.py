"""Episode records: safe round trip, and damage reported with its location."""

import numpy as np
import pytest

from jaxworld.data import records


def _episode():
  rng = np.random.default_rng(0)
  return {"frames": rng.integers(0, 256, (5, 8, 8, 3), np.uint8),
          "actions": rng.integers(0, 5, 5).astype(np.int32),
          "states": rng.normal(size=(5, 3, 4)).astype(np.float32),
          "radii": np.array([2.5, 3.0], np.float32)}


def test_round_trip_is_exact():
  episode = _episode()
  decoded = records.decode_episode(records.encode_episode(episode))
  assert decoded.keys() == episode.keys()
  for k in episode:
    assert decoded[k].dtype == episode[k].dtype
    np.testing.assert_array_equal(decoded[k], episode[k])


@pytest.mark.parametrize("damage", ["flip_payload", "truncate", "magic", "version"])
def test_damaged_record_names_where(damage):
  data = bytearray(records.encode_episode(_episode()))
  if damage == "flip_payload":
    data[-3] ^= 0xFF
  elif damage == "truncate":
    data = data[:-10]
  elif damage == "magic":
    data[:4] = b"PKL!"
  else:
    data = bytearray(bytes(data).replace(b'"schema_version": 2', b'"schema_version": 9'))
  with pytest.raises(records.RecordError, match="Record 7 of shard s.*regenerate"):
    records.decode_episode(bytes(data), "Record 7 of shard s")


def test_unsafe_dtype_refused():
  with pytest.raises(ValueError, match="dtype"):
    records.encode_episode({"x": np.array(["a"], object)})


def test_missing_dataset_says_how_to_make_one(tmp_path):
  with pytest.raises(records.RecordError, match="jaxworld data generate"):
    records.read_metadata(tmp_path / "nothing")


def _damaged_copy(dataset, tmp_path, split, index):
  """A copy of `dataset` with record `index` of the split's first shard
  damaged (ArrayRecord's own framing stays valid, so our decoder sees it)."""
  import shutil
  from array_record.python.array_record_module import (ArrayRecordReader,
                                                        ArrayRecordWriter)
  root = tmp_path / "copy"
  shutil.copytree(dataset, root)
  shard = sorted((root / split).iterdir())[0]
  reader = ArrayRecordReader(str(shard))
  recs = [reader.read() for _ in range(reader.num_records())]
  reader.close()
  recs[index] = recs[index][:-5] + b"xxxxx"
  shard.unlink()
  writer = ArrayRecordWriter(str(shard), records.WRITER_OPTIONS)
  for r in recs:
    writer.write(r)
  writer.close()
  return root, shard


def test_corrupt_record_is_reported_by_pipeline(tiny_dataset, tmp_path):
  from jaxworld.data import pipeline
  root, shard = _damaged_copy(tiny_dataset, tmp_path, "eval", 1)
  with pytest.raises(records.RecordError, match=f"Record 1 of shard .*{shard.name}"):
    pipeline.load_episodes(root, "eval", 4)


def test_corrupt_shard_stops_training_before_compile(tiny_dataset, tmp_path,
                                                     capsys):
  from conftest import TINY
  from jaxworld import cli
  root, shard = _damaged_copy(tiny_dataset, tmp_path, "train", 0)
  run = tmp_path / "run"
  code = cli.main(["train", "tokenizer", *TINY, f"data.path={root}",
                   "--workdir", str(run)])
  assert code == 2
  assert f"Record 0 of shard {shard}" in capsys.readouterr().err
  assert not run.exists()


def test_inspect_counts_checks_and_draws(tiny_dataset, tmp_path, capsys):
  from jaxworld import cli
  assert cli.main(["data", "inspect", str(tiny_dataset), "--out",
                   str(tmp_path / "insp")]) == 0
  text = capsys.readouterr().out
  assert "train: 16 episodes, 192 frames, 2 files" in text
  assert "eval: 4 episodes, 48 frames" in text
  assert "frames uint8[12, 32, 32, 3]" in text
  from PIL import Image
  sheet = Image.open(tmp_path / "insp" / "contact_sheet.png")
  assert sheet.size == (2 + 8 * (64 + 2), 2 + 8 * (64 + 2))  # 8 x 8 tiles
  gif = Image.open(tmp_path / "insp" / "episodes.gif")
  assert gif.n_frames == 12
  # A damaged record is found by shard and index, as in training.
  root, shard = _damaged_copy(tiny_dataset, tmp_path, "train", 1)
  assert cli.main(["data", "inspect", str(root)]) == 2
  assert f"Record 1 of shard {shard}" in capsys.readouterr().err


def test_inspect_summary_is_exact(tiny_dataset):
  from jaxworld.data import inspect, pipeline
  summary = inspect.inspect(tiny_dataset, tiny_dataset.parent / "insp2")
  train = summary["splits"]["train"]
  episodes = pipeline.load_episodes(tiny_dataset, "train", 16)
  counts = np.bincount(episodes["actions"].ravel(), minlength=5)
  assert list(train["action_histogram"].values()) == [
      int(c) for c in counts if c]
  assert sum(train["action_histogram"].values()) == 16 * 12
