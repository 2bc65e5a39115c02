"""`jaxworld data ingest`: videos, image folders, NPZ episodes and a
Gymnasium environment -> datasets that inspect and train."""

import json

import numpy as np
import pytest

from conftest import TINY
from jaxworld import cli
from jaxworld.data import ingest, inspect, pipeline, records, sources, stores

SETTINGS = sources.FrameSettings(size=32, episodes=6, max_steps=12)
LAYOUT = ingest.Layout(chunk=6, val_fraction=0.25, shards=2)


def _moving_square(t_total, size=(48, 40), seed=0):
  """Frames of a square sliding right on black: easy to check after resize."""
  w, h = size
  frames = np.zeros((t_total, h, w, 3), np.uint8)
  for t in range(t_total):
    x = (seed * 7 + 2 * t) % (w - 8)
    frames[t, 10:18, x:x + 8] = (255, 96, 0)
  return frames


def _write_video(path, codec, frames, rate=10):
  import av
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=rate)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, "rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """Small raw sources of every kind, and one broken file per kind."""
  root = tmp_path_factory.mktemp("raw")
  (root / "videos" / "more").mkdir(parents=True)
  for i, (name, codec) in enumerate((("a.mp4", "libx264"),
                                     ("more/b.webm", "libvpx-vp9"),
                                     ("c.gif", "gif"), ("d.mp4", "mpeg4"))):
    _write_video(root / "videos" / name, codec, _moving_square(20, seed=i))
  (root / "npz").mkdir()
  rng = np.random.default_rng(0)
  for i in range(5):
    t = 14 + i
    np.savez(root / "npz" / f"ep{i}.npz",
             frames=_moving_square(t, (32, 32), seed=i),
             actions=rng.integers(0, 3, t), rewards=rng.random(t))
  for d in range(3):
    (root / "images" / f"seq{d}").mkdir(parents=True)
    for t, f in enumerate(_moving_square(13, seed=d)):
      from PIL import Image
      Image.fromarray(f).save(root / "images" / f"seq{d}" / f"{t}.png")
  return root


def test_videos_ingest_deterministically_and_rerun_skips(raw, tmp_path):
  out1, out2 = tmp_path / "one", tmp_path / "two"
  meta = ingest.ingest(str(raw / "videos"), out1, SETTINGS, LAYOUT)
  ingest.ingest(str(raw / "videos"), out2, SETTINGS, LAYOUT, workers=2)
  # 4 videos x 20 frames -> 3 chunks of 6 each; one video held out.
  assert meta["splits"]["train"]["episodes"] == 9
  assert meta["splits"]["eval"]["episodes"] == 3
  assert meta["num_actions"] == 1 and not meta["has_actions"]
  for split in ("train", "eval"):
    for name in meta["splits"][split]["shards"]:
      assert (out1 / split / name).read_bytes() == (
          out2 / split / name).read_bytes()
  # Frames survive decode -> center crop -> resize: the square is there.
  episode = stores.open_store(out1, "train").episode(0)
  assert episode["frames"].shape == (6, 32, 32, 3)
  assert episode["frames"][..., 0].max() > 200
  stamp = {p: p.stat().st_mtime_ns for p in out1.rglob("*") if p.is_file()}
  again = ingest.ingest(str(raw / "videos"), out1, SETTINGS, LAYOUT)
  assert again == records.read_metadata(out1)
  assert stamp == {p: p.stat().st_mtime_ns for p in out1.rglob("*")
                   if p.is_file()}


def test_fps_and_stride_subsample(raw, tmp_path):
  slow = sources.FrameSettings(size=32, fps=5)  # videos are 10 fps
  unit = sources.discover(str(raw / "videos" / "a.mp4"), "auto", slow)[0]
  assert sources.load(unit, slow)["frames"].shape[0] == 10
  every3 = sources.FrameSettings(size=32, stride=3)
  assert sources.load(unit, every3)["frames"].shape[0] == 7


def test_unreadable_video_stops_or_is_skipped(raw, tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  (videos / "good.mp4").write_bytes((raw / "videos" / "a.mp4").read_bytes())
  (videos / "zz_broken.mp4").write_bytes(b"\x00not a video" * 10)
  with pytest.raises(sources.SourceError, match="zz_broken.mp4.*--bad skip"):
    ingest.ingest(str(videos), tmp_path / "out", SETTINGS, LAYOUT)
  meta = ingest.ingest(str(videos), tmp_path / "out", SETTINGS, LAYOUT,
                       bad="skip")
  assert [s["unit"] for s in meta["source"]["skipped"]] == ["zz_broken.mp4"]
  with pytest.raises(sources.SourceError, match="zz_broken.mp4"):  # cached
    ingest.ingest(str(videos), tmp_path / "out", SETTINGS, LAYOUT)
  assert meta["splits"]["train"]["episodes"] == 2  # one video, split by chunk


def test_npz_keeps_actions_and_rewards(raw, tmp_path):
  meta = ingest.ingest(str(raw / "npz"), tmp_path / "out", SETTINGS,
                       ingest.Layout(chunk=7, val_fraction=0.2, shards=2))
  assert meta["has_actions"] and meta["num_actions"] == 3
  source = {}
  for i in range(5):
    with np.load(raw / "npz" / f"ep{i}.npz") as f:
      source[i] = (f["actions"], f["rewards"])
  for split in ("train", "eval"):
    store = stores.open_store(tmp_path / "out", split)
    for j in range(len(store)):
      e = store.episode(j)
      assert e["actions"].dtype == np.int32 and e["rewards"].shape == (7,)
      # Every chunk's actions and rewards are a slice of some source's.
      assert any(np.array_equal(a[s:s + 7], e["actions"]) and
                 np.allclose(r[s:s + 7], e["rewards"])
                 for a, r in source.values() for s in (0, 7))


def test_npz_with_wrong_lengths_is_refused(tmp_path):
  (tmp_path / "in").mkdir()
  np.savez(tmp_path / "in" / "bad.npz", frames=np.zeros((10, 8, 8, 3), np.uint8),
           actions=np.zeros(9, np.int64))
  with pytest.raises(sources.SourceError,
                     match=r"bad.npz: `actions` has shape \[9\].*\(10\)"):
    ingest.ingest(str(tmp_path / "in"), tmp_path / "out", SETTINGS, LAYOUT)
  np.savez(tmp_path / "in" / "bad.npz", frames=np.zeros((10, 8, 8), np.uint8))
  with pytest.raises(sources.SourceError, match=r"uint8 \[T, H, W, 3\]"):
    ingest.ingest(str(tmp_path / "in"), tmp_path / "out2", SETTINGS, LAYOUT)


def test_image_folders(raw, tmp_path):
  meta = ingest.ingest(str(raw / "images"), tmp_path / "out", SETTINGS,
                       LAYOUT)
  # 3 folders x 13 frames -> 2 chunks of 6 each; one folder held out.
  assert (meta["splits"]["train"]["episodes"],
          meta["splits"]["eval"]["episodes"]) == (4, 2)


def test_gymnasium_rollouts_are_seeded(tmp_path):
  args = ("gym:CartPole-v1", SETTINGS, ingest.Layout(chunk=4, shards=2))
  meta = ingest.ingest(args[0], tmp_path / "a", *args[1:], workers=2)
  ingest.ingest(args[0], tmp_path / "b", *args[1:])
  assert meta["num_actions"] == 2 and meta["has_actions"]
  a = pipeline.load_episodes(tmp_path / "a", "train", 3)
  b = pipeline.load_episodes(tmp_path / "b", "train", 3)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert set(np.unique(a["actions"])) <= {0, 1}
  assert a["frames"].std() > 0  # a rendered cart, not a blank frame


def test_zarr_windows_read_only_their_chunks(raw, tmp_path):
  meta = ingest.ingest(str(raw / "videos"), tmp_path / "z", SETTINGS,
                       ingest.Layout(chunk=0, storage="zarr"))
  assert meta["storage"] == "zarr" and meta["episode_length"] == 20
  store = stores.open_store(tmp_path / "z", "train")
  whole = store.episode(0)
  assert whole["frames"].shape == (20, 32, 32, 3)
  # Damage the chunk holding frames 16-19: windows before it still read
  # (they never touch it), a window reaching into it is a clear error.
  chunk = (store.episodes.directory / store.episodes.index[0]["name"] /
           "frames" / "c" / "1" / "0" / "0" / "0")
  chunk.write_bytes(b"\x00garbage" * 8)
  np.testing.assert_array_equal(store.episodes.read(0, 2, 10)["frames"],
                                whole["frames"][2:10])
  with pytest.raises(records.RecordError, match="frames 12:20 of 'frames'"):
    store.episodes.read(0, 12, 20)


@pytest.mark.parametrize("kind", ["videos", "npz", "gym", "zarr"])
def test_ingested_data_trains(raw, tmp_path, kind):
  """Each kind through the documented commands: ingest, inspect, train.
  zarr: whole videos in a TensorStore store, trained on random windows."""
  source = {"gym": "gym:CartPole-v1", "zarr": str(raw / "videos")}.get(
      kind, str(raw / kind))
  out = tmp_path / "data"
  layout = (["--storage", "zarr", "--chunk", "0"] if kind == "zarr"
            else ["--chunk", "6"])
  code = cli.main(["data", "ingest", source, "--out", str(out), "--size",
                   "32", *layout, "--episodes", "6", "--max-steps", "12"])
  assert code == 0
  summary = inspect.inspect(out)
  assert summary["splits"]["train"]["episodes"] > 0
  assert all((out / "inspect" / n).is_file()
             for n in ("contact_sheet.png", "episodes.gif"))
  code = cli.main(["train", "tokenizer", *TINY, f"data.path={out}",
                   "train.steps=2", "--workdir", str(tmp_path / "run")])
  assert code == 0
  logged = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert logged[-1]["step"] == 2
