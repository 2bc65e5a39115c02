"""Faults inside a run: a NaN batch (stop, or skip and count), and flags
known to abort or deadlock CPU runs. The NaN comes from a marked batch:
the patched loss turns the marker into NaN loss and gradients in-step."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jaxworld.errors import JaxWorldError
from jaxworld.models import build
from jaxworld.parallel import cpu_devices, distributed
from jaxworld.runs import assemble, checkpoint
from jaxworld.train import loop
from jaxworld.train import step as steplib

POISON_ACTION = 99  # real actions are < num_actions: a marker, never data


@pytest.fixture
def nan_at_step(monkeypatch):
  """nan_at_step(k): the k-th batch of the next run gives NaN loss and
  gradients (batch counted from the run's first step, resumed or not)."""

  def arm(k: int) -> None:
    batches = {"seen": 0}
    real_device_batch, real_stage_kind = steplib.device_batch, build.stage_kind

    def device_batch(host_batch, shardings):
      batches["seen"] += 1
      if batches["seen"] == k:
        host_batch = {**host_batch, "actions": host_batch["actions"].copy()}
        host_batch["actions"][0, 0] = POISON_ACTION
      return real_device_batch(host_batch, shardings)

    def stage_kind(cfg, stage):
      kind = real_stage_kind(cfg, stage)

      def loss(model, batch, rng):
        value, metrics = kind.loss(model, batch, rng)
        poisoned = jnp.any(batch["actions"] == POISON_ACTION)
        return value * jnp.where(poisoned, jnp.nan, 1.0), metrics
      return dataclasses.replace(kind, loss=loss)

    monkeypatch.setattr(steplib, "device_batch", device_batch)
    monkeypatch.setattr(build, "stage_kind", stage_kind)
  return arm


def _cfg(data, *extra):
  return tiny_config(f"data.path={data}", "train.log_every=1",
                     "train.checkpoint_every=1", "train.keep_checkpoints=10",
                     *extra)


def _params(cfg, run, step):
  _, state = assemble.restore(cfg, "tokenizer", run, step,
                              assemble.one_device_mesh())
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_nan_batch_is_skipped_then_stops_the_run(tiny_dataset, tmp_path,
                                                 nan_at_step):
  run = tmp_path / "nan"
  # nan_policy=skip: step 3's update is not applied, and it is counted.
  nan_at_step(3)
  cfg = _cfg(tiny_dataset, "train.steps=3", "train.nan_policy=skip")
  loop.train(cfg, run)
  logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text()
            .splitlines()]
  assert [r["skipped_updates"] for r in logged] == [0, 0, 1]
  assert not np.isfinite(logged[2]["loss"])
  after_nan, before_nan = _params(cfg, run, 3), _params(cfg, run, 2)
  for a, b in zip(after_nan, before_nan):
    np.testing.assert_array_equal(a, b)  # the update was not applied
  assert all(np.isfinite(a).all() for a in after_nan)

  # nan_policy=stop (the default), resumed: the run stops at the NaN step,
  # names it, its records and the last good checkpoint, and saves nothing
  # later.
  nan_at_step(2)  # the 2nd batch after resuming: step 5
  cfg = _cfg(tiny_dataset, "train.steps=6")
  with pytest.raises(JaxWorldError) as e:
    loop.train(cfg, run, resume=True)
  message = str(e.value)
  assert "became NaN/Inf at step 5" in message
  assert "train episodes [" in message and str(tiny_dataset) in message
  assert "last good checkpoint is step 4" in message
  assert "train.nan_policy=skip" in message
  assert checkpoint.saved_steps(run) == [1, 2, 3, 4]


def test_cpu_thread_pool_gets_four_threads_per_simulated_device():
  """Simulated devices: 4 pool threads per device where the cores give
  fewer (the deadlock of docs/scaling.md); not with 4 cores per device or
  one device, nor over a PJRT_NPROC the user set. The last device-count
  flag counts."""
  flags = "--xla_force_host_platform_device_count=2 " \
          "--xla_force_host_platform_device_count=8"
  env = {"XLA_FLAGS": flags}
  cpu_devices.size_thread_pool(env, cores=2)
  assert env["PJRT_NPROC"] == "32"
  env = {"JAX_NUM_CPU_DEVICES": "4"}
  cpu_devices.size_thread_pool(env, cores=2)
  assert env["PJRT_NPROC"] == "16"
  env = {"XLA_FLAGS": flags}
  cpu_devices.size_thread_pool(env, cores=8)  # as many devices as cores
  assert env["PJRT_NPROC"] == "32"
  for env in ({"XLA_FLAGS": flags}, {}):
    cpu_devices.size_thread_pool(env, cores=32)
    assert "PJRT_NPROC" not in env
  env = {"XLA_FLAGS": flags, "PJRT_NPROC": "3"}
  cpu_devices.size_thread_pool(env, cores=2)
  assert env["PJRT_NPROC"] == "3"


def test_sequential_cpu_scheduler_is_refused_for_gloo():
  """The flag under which 2 x 4 CPU processes aborted in gloo (issue 19)."""
  with pytest.raises(JaxWorldError, match="Remove it from XLA_FLAGS"):
    distributed.check_gloo_flags(
        "--xla_force_host_platform_device_count=4 "
        + distributed.SEQUENTIAL_SCHEDULER_FLAG)
  distributed.check_gloo_flags("--xla_force_host_platform_device_count=4")
