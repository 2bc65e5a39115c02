"""Checkpoints: damage falls back with a warning, bad shapes get a list,
retention, the data position, and the `ckpt list` / `ckpt show` data. A
two-layer state keeps every test to a second or two."""

import json
import logging
import shutil

import grain
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import tiny_config
from jaxworld import config as configlib
from jaxworld.errors import JaxWorldError
from jaxworld.runs import checkpoint
from jaxworld.runs import info as ckpt_info
from jaxworld.train.step import TrainState

CFG = tiny_config()


def _train_state(features: int = 32, bias: float = 0.0) -> TrainState:
  model = nnx.Linear(16, features, rngs=nnx.Rngs(0))
  model.bias[...] = jnp.full((features,), bias)
  return TrainState(model, optax.adam(1e-3))


def _abstract(features: int = 32):
  _, abstract = nnx.split(nnx.eval_shape(lambda: _train_state(features)))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return abstract, jax.tree.map(lambda _: device, abstract)


def _save(workdir, steps, keep=10, keep_every=0):
  """Saves `steps`; at step s the bias is s and the data position 10 * s
  (not s, so a position read back is not mistaken for the step)."""
  ckpts = checkpoint.Checkpoints(workdir, keep, keep_every)
  for step in steps:
    ckpts.save(step, nnx.state(_train_state(bias=step)), 10 * step, CFG)
  ckpts.wait()
  ckpts.close()


def _restore_latest(workdir, features=32, **kwargs):
  abstract, shardings = _abstract(features)
  ckpts = checkpoint.Checkpoints(workdir)
  try:
    return ckpts.restore_latest(abstract, shardings, **kwargs)
  finally:
    ckpts.close()


def _truncate(path):  # as a full disk or a killed copy leaves a file
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _truncate_arrays(step_dir):
  """Truncates the largest OCDBT data file: it holds the kernel's values
  (values under ~100 bytes are inlined in the b-tree and read from
  elsewhere)."""
  files = [p for p in (step_dir / "state").rglob("d/*") if p.is_file()]
  _truncate(max(files, key=lambda p: p.stat().st_size))


DAMAGE = {
    "truncated array files": (
        _truncate_arrays, "OUT_OF_RANGE: Error reading \"model.kernel"),
    "truncated state metadata": (
        lambda d: _truncate(d / "state" / "_METADATA"), "metadata"),
    "truncated data position": (
        lambda d: _truncate(d / checkpoint.POSITION_ITEM / "metadata"),
        "JSONDecodeError"),
    "missing data position": (
        lambda d: shutil.rmtree(d / checkpoint.POSITION_ITEM),
        "'data_position' item is missing"),
    "no commit marker": (
        lambda d: (d / checkpoint.COMMIT_FILE).unlink(), "never finished"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_step_falls_back_with_warning(tmp_path, caplog,
                                                     damage):
  _save(tmp_path, [1, 2])
  harm, named = DAMAGE[damage]
  harm(tmp_path / "checkpoints" / "2")
  abstract, shardings = _abstract()
  ckpts = checkpoint.Checkpoints(tmp_path)
  with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
    step, state, position = ckpts.restore_latest(abstract, shardings)
  assert step == 1
  assert float(state["model"]["bias"][0]) == 1.0
  assert position == 10  # the data position step 1 saved
  warning = "\n".join(r.getMessage() for r in caplog.records)
  assert "step 2" in warning and named in warning
  # Moved aside, not deleted, so that the resumed run can save step 2 again.
  assert (tmp_path / checkpoint.DAMAGED_DIR / "2").is_dir()
  assert checkpoint.saved_steps(tmp_path) == [1]
  ckpts.save(2, nnx.state(_train_state(bias=2)), 20, CFG)
  ckpts.close()
  assert checkpoint.saved_steps(tmp_path) == [1, 2]
  assert _restore_latest(tmp_path)[0] == 2
  assert [r["status"][:11] for r in ckpt_info.list_steps(tmp_path)] == [
      "ok", "ok", "moved aside"]


def test_unfinished_save_is_ignored_and_kept(tmp_path, caplog):
  _save(tmp_path, [1, 2])
  # What an interrupted save leaves: the tmp directory Orbax writes into; its
  # commit file is written just before the rename that finalizes it.
  unfinished = tmp_path / "checkpoints" / f"3{checkpoint.UNFINISHED_SUFFIX}"
  shutil.copytree(tmp_path / "checkpoints" / "2", unfinished)
  (unfinished / checkpoint.COMMIT_FILE).unlink()
  assert checkpoint.saved_steps(tmp_path) == [1, 2]
  with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
    step, _, _ = _restore_latest(tmp_path)
  assert step == 2 and unfinished.is_dir()
  assert unfinished.name in caplog.text and "never finished" in caplog.text
  rows = ckpt_info.list_steps(tmp_path)
  assert [(r["step"], r["status"]) for r in rows] == [
      (1, "ok"), (2, "ok"), (3, "unfinished save (ignored)")]
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
    _save(tmp_path, [3])  # replaces it, and says so
  assert "replacing" in caplog.text and not unfinished.exists()
  assert checkpoint.saved_steps(tmp_path) == [1, 2, 3]


def test_every_step_damaged_is_one_clear_error(tmp_path):
  _save(tmp_path, [1, 2])
  shutil.rmtree(tmp_path / "checkpoints" / "2" / checkpoint.POSITION_ITEM)
  _truncate_arrays(tmp_path / "checkpoints" / "1")
  with pytest.raises(JaxWorldError) as e:
    _restore_latest(tmp_path)
  assert "step 2: its 'data_position' item is missing" in str(e.value)
  assert "step 1: " in str(e.value) and "new --workdir" in str(e.value)
  assert checkpoint.saved_steps(tmp_path) == [1, 2]  # nothing was moved
  assert not (tmp_path / checkpoint.DAMAGED_DIR).exists()


def test_no_steps_and_max_step(tmp_path):
  assert _restore_latest(tmp_path) is None
  _save(tmp_path, [1, 2])
  assert _restore_latest(tmp_path, max_step=1)[0] == 1


def test_other_config_lists_mismatched_arrays_without_fallback(tmp_path,
                                                               caplog):
  _save(tmp_path, [1, 2])
  with pytest.raises(JaxWorldError) as e:
    _restore_latest(tmp_path, features=33)
  message = str(e.value)
  assert "step 2" in message and "different model config" in message
  assert ("model/kernel: saved float32[16,32], expected float32[16,33]"
          in message)
  assert "model/bias: saved float32[32], expected float32[33]" in message
  assert "optimizer/opt_state/0/mu/kernel" in message  # the Adam moments too
  # No fallback: every step would mismatch.
  assert not [r for r in caplog.records if r.name == checkpoint.__name__]
  assert checkpoint.saved_steps(tmp_path) == [1, 2]
  abstract, shardings = _abstract(33)
  with pytest.raises(JaxWorldError, match="model/kernel: saved float32"):
    checkpoint.restore_model(tmp_path, abstract["model"], shardings["model"],
                             2)
  ckpts = checkpoint.Checkpoints(tmp_path)
  with pytest.raises(JaxWorldError, match="model/bias: saved float32"):
    ckpts.restore(2, abstract, shardings)
  ckpts.close()


def test_restore_of_a_named_step_and_its_damage(tmp_path):
  _save(tmp_path, [1, 2])
  abstract, shardings = _abstract()
  ckpts = checkpoint.Checkpoints(tmp_path)
  state, position = ckpts.restore(1, abstract, shardings)
  assert float(state["model"]["bias"][0]) == 1.0 and position == 10
  model = checkpoint.restore_model(tmp_path, abstract["model"],
                                   shardings["model"], 2)
  assert float(model["bias"][0]) == 2.0
  _truncate_arrays(tmp_path / "checkpoints" / "2")
  with pytest.raises(JaxWorldError, match="Cannot restore step 2.*OUT_OF_"):
    checkpoint.restore_model(tmp_path, abstract["model"], shardings["model"],
                             2)
  with pytest.raises(JaxWorldError, match="Cannot restore step 2.*OUT_OF_"):
    ckpts.restore(2, abstract, shardings)
  ckpts.close()
  assert checkpoint.saved_steps(tmp_path) == [1, 2]  # a named step stays


def test_position_is_global_and_older_steps_resume_at_their_step(tmp_path):
  """The saved position names global batches and the global batch, for any
  process count; a step saved before positions were (Grain's per-process
  iterator state in `data`) resumes at global batch <step>."""
  _save(tmp_path, [3])
  saved = json.loads((tmp_path / "checkpoints" / "3" /
                      checkpoint.POSITION_ITEM / "metadata").read_text())
  assert saved == {"global_batches": 30, "process_count": 1,
                   "global_batch_size": CFG.train.batch_size}
  legacy = tmp_path / "legacy"
  ckpts = checkpoint.Checkpoints(legacy)
  data = iter(grain.MapDataset.range(100).to_iter_dataset())
  for _ in range(5):
    next(data)
  ckpts.manager.save(5, args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(nnx.to_pure_dict(
          nnx.state(_train_state(bias=5)))),
      data=grain.checkpoint.CheckpointSave(data),
      config=ocp.args.JsonSave(configlib.to_dict(CFG))))
  ckpts.wait()
  ckpts.close()
  step, state, position = _restore_latest(legacy)
  assert (step, position) == (5, 5)
  assert float(state["model"]["bias"][0]) == 5.0


def test_retention_keeps_last_k_and_every_mth(tmp_path):
  _save(tmp_path, range(1, 11), keep=2, keep_every=4)
  assert checkpoint.saved_steps(tmp_path) == [4, 8, 9, 10]


def test_list_and_show(tmp_path):
  _save(tmp_path, [2, 4])
  (tmp_path / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "stage": "tokenizer", "time": 0.0,
                  "loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4)))
  rows = ckpt_info.list_steps(tmp_path)
  assert [r["step"] for r in rows] == [2, 4]
  for r in rows:
    step_dir = tmp_path / "checkpoints" / str(r["step"])
    assert r["bytes"] == sum(p.stat().st_size for p in step_dir.rglob("*")
                             if p.is_file()) > 0
    assert r["metrics"] == {"loss": 1.0 / r["step"]}
    assert r["status"] == "ok" and r["time"] > 0
  table = ckpt_info.format_list(rows)
  assert table.splitlines()[0].split() == ["step", "saved", "size", "loss",
                                           "status"]
  assert "0.25" in table.splitlines()[2]

  info = ckpt_info.show(tmp_path, 4)
  pure = nnx.to_pure_dict(nnx.state(_train_state()))
  arrays = jax.tree.leaves(pure)
  assert info["config"] == configlib.to_dict(CFG)
  assert info["arrays"] == len(arrays)
  assert info["array_bytes"] == sum(a.nbytes for a in arrays)
  assert info["model_params"] == 16 * 32 + 32
  assert info["optimizer_state"] and info["bytes"] == rows[1]["bytes"]
  text = ckpt_info.format_show(info)
  assert "model 544 parameters" in text and "optimizer state present" in text
  assert '"train": {' in text
  with pytest.raises(JaxWorldError, match=r"has no checkpoint at step 3"):
    ckpt_info.show(tmp_path, 3)
