"""Test setup: 8 simulated CPU devices so every sharding path runs anywhere.

XLA_FLAGS must be set before jax is first imported, hence at module import.
"""

import os

# The concurrency-optimised CPU scheduler can start two collectives of one
# simulated device at once; with more devices than cores they then wait for
# each other's threads and deadlock (seen with sequence parallelism's
# all-to-all). The sequential scheduler keeps them in program order.
CPU_FLAGS = ("--xla_force_host_platform_device_count=8 "
             "--xla_cpu_enable_concurrency_optimized_scheduler=false")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_FLAGS}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# A complete but tiny experiment: 32px frames, 16 tokens per frame, two-block
# backbones. Every test that trains uses these sizes.
TINY = (
    "world.image_size=32", "world.num_objects=2", "world.radius_min=2.5",
    "world.radius_max=3.5", "world.agent_size=5", "world.speed_min=1.0",
    "world.speed_max=2.0", "world.agent_speed=2.0",
    "data.num_train_episodes=16", "data.num_eval_episodes=4",
    "data.episode_length=12", "data.num_shards=2", "data.window=4",
    "tokenizer.patch_size=8", "tokenizer.fsq_levels=[4, 4, 2]",
    "tokenizer.encoder.width=32", "tokenizer.encoder.depth=2",
    "tokenizer.encoder.num_heads=2", "tokenizer.encoder.mlp_ratio=2",
    "tokenizer.decoder.width=32", "tokenizer.decoder.depth=2",
    "tokenizer.decoder.num_heads=2", "tokenizer.decoder.mlp_ratio=2",
    "dynamics.backbone.width=32", "dynamics.backbone.depth=2",
    "dynamics.backbone.num_heads=2", "dynamics.backbone.mlp_ratio=2",
    "train.batch_size=8", "train.steps=4", "train.warmup_steps=1",
    "train.log_every=2", "train.checkpoint_every=2",
    "rollout.context_frames=2", "rollout.horizon=3", "rollout.num_episodes=2",
    "rollout.maskgit_steps=2",
)


def tiny_config(*overrides: str):
  from jaxworld import config
  return config.from_dict({}, (*TINY, *overrides))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
  """A generated dataset of the tiny world, shared by all tests."""
  from jaxworld.data import generate
  root = tmp_path_factory.mktemp("data")
  generate.generate_dataset(tiny_config(), root, overwrite=True)
  return root


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
  """`jaxworld demo` on the tiny world: data, both stages, rollout. Tests
  read it or copy what they change."""
  from jaxworld import cli
  root = tmp_path_factory.mktemp("demo")
  code = cli.main(["demo", "--workdir", str(root), *TINY, "train.log_every=1"])
  assert code in (0, 1)  # 1 = ran fine but the tiny model missed the bar
  return root
