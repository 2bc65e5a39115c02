"""Watch it learn (train/preview.py): at a checkpoint a dynamics run writes
truth beside imagination to TensorBoard, reads its parameters without
changing them, stays off where it should, and never stops training.

The tiny config turns the preview off (it would compile in every tiny
dynamics run of the suite), so it is called here on the tiny demo's run.
"""

import dataclasses
import io
import logging
import struct

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from tensorboardX import SummaryWriter
from tensorboardX.proto.event_pb2 import Event

from jaxworld.runs import assemble
from jaxworld.train import preview
from jaxworld.train.step import Frozen


class Holder(nnx.Module):
  """Stands in for the train state: the preview reads its `.model`."""

  def __init__(self, model):
    self.model = model


class Logger:
  def __init__(self, path):
    self.tensorboard = SummaryWriter(str(path))


def images(tb_dir):
  """{(tag, step): PIL image} of every image summary under `tb_dir`."""
  out = {}
  for path in tb_dir.glob("events.out.tfevents.*"):
    data, i = path.read_bytes(), 0
    while i < len(data):  # TFRecords: length, its CRC, the event, its CRC
      (size,) = struct.unpack("<Q", data[i:i + 8])
      event = Event.FromString(data[i + 12:i + 12 + size])
      i += 12 + size + 4
      for value in event.summary.value:
        if value.HasField("image"):
          out[value.tag, event.step] = Image.open(io.BytesIO(
              value.image.encoded_image_string))
  return out


@pytest.fixture(scope="module")
def world(tiny_demo):
  return assemble.load_world_model(tiny_demo / "dynamics")


def _call(world, tmp_path, step, data=None, **train):
  """at_checkpoint on the tiny demo's dynamics run, its preview on unless
  `train` says otherwise; the state it was given."""
  cfg = dataclasses.replace(
      world.cfg, data=dataclasses.replace(world.cfg.data,
                                          path=data or world.cfg.data.path),
      train=dataclasses.replace(world.cfg.train,
                                **{"preview_episodes": 2, **train}))
  graphdef, state = nnx.split(Holder(world.dynamics))
  frozen = Frozen(*nnx.split(world.tokenizer))
  logger = Logger(tmp_path)
  preview.at_checkpoint(cfg, graphdef, state, frozen, logger, step)
  logger.tensorboard.close()
  return state


def test_a_checkpoint_shows_truth_beside_imagination(world, tmp_path):
  before = jax.tree.map(np.array, nnx.state(world.dynamics))
  state = _call(world, tmp_path, 6)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state["model"])):
    np.testing.assert_array_equal(a, np.asarray(b))  # read, never written
  shown = images(tmp_path)
  assert set(shown) == {("preview/strip", 6), ("preview/gif", 6)}
  # The last of 3 real frames, then rollout.horizon=3 imagined ones; two
  # episodes, truth beside imagination, 32px frames at scale 2.
  gif, strip = shown["preview/gif", 6], shown["preview/strip", 6]
  assert gif.format == "GIF" and gif.n_frames == 4
  assert strip.size == (4 * gif.size[0], gif.size[1])
  assert gif.size == (2 * 64 + 3 * 4, 12 + 2 * (64 + 4) + 4)


def test_off_unless_a_dynamics_run_asks(world, tmp_path):
  _call(world, tmp_path, 2, preview_episodes=0)
  _call(world, tmp_path, 2, stage="tokenizer")
  assert images(tmp_path) == {}


def test_a_failing_preview_does_not_stop_training(world, tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    _call(world, tmp_path, 2, data=str(tmp_path / "gone"))
  assert "no TensorBoard preview at step 2" in caplog.text
  assert "train.preview_episodes=0" in caplog.text
