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


def test_corrupt_shard_is_reported_by_pipeline(tiny_dataset, tmp_path):
  import shutil
  from jaxworld.data import pipeline
  root = tmp_path / "copy"
  shutil.copytree(tiny_dataset, root)
  shard = sorted((root / "eval").iterdir())[0]
  # Rewrite the shard with one damaged record (ArrayRecord's own framing
  # stays valid, so the damage reaches our decoder).
  from array_record.python.array_record_module import ArrayRecordReader
  reader = ArrayRecordReader(str(shard))
  recs = [reader.read() for _ in range(reader.num_records())]
  reader.close()
  recs[1] = recs[1][:-5] + b"xxxxx"
  shard.unlink()
  from array_record.python.array_record_module import ArrayRecordWriter
  w = ArrayRecordWriter(str(shard), records.WRITER_OPTIONS)
  for r in recs:
    w.write(r)
  w.close()
  with pytest.raises(records.RecordError, match=f"Record 1 of shard .*{shard.name}"):
    pipeline.load_episodes(root, "eval", 4)
