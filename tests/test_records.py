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
    data = bytearray(bytes(data).replace(b'"schema_version": 1', b'"schema_version": 9'))
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
