"""The CLI's persistent compilation cache: on by default, where the
environment says, off on request; a recompile after a restart is a hit."""

import jax
import jax.numpy as jnp
import pytest
from jax._src import compilation_cache, monitoring

from jaxworld import cli, compile_cache


@pytest.fixture
def fresh_cache():
  """JAX's cache as at start-up without one (no dir, not initialised); the
  suite's own cache (tests/conftest.py) is put back afterwards."""
  suite = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)

  def reset(cache_dir, min_compile_time_secs):
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      min_compile_time_secs)
    compilation_cache.reset_cache()
  reset(None, 1.0)
  yield
  reset(*suite)


def test_cli_turns_the_cache_on_and_a_recompile_hits_it(
    tmp_path, monkeypatch, fresh_cache):
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "xla"))
  assert cli.main(["config"]) == 0  # any command enables it first
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
  hits = []

  def listen(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
      hits.append(event)
  monitoring.register_event_listener(listen)
  # Store even a fast compile (JAX's threshold is 1 s, not what is tested).
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    f = lambda x: jnp.sin(x) * 3.0 + 1.0
    jax.block_until_ready(jax.jit(f)(jnp.ones(7)))
    assert list((tmp_path / "xla").iterdir()), "nothing was stored"
    jax.clear_caches()  # as a new process: only the disk cache is left
    jax.block_until_ready(jax.jit(f)(jnp.ones(7)))
    assert hits, "the second compile did not read the cache"
  finally:
    monitoring.unregister_event_listener(listen)


def test_cache_dir_default_and_opt_out(monkeypatch, fresh_cache):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  assert compile_cache.cache_dir() == compile_cache.DEFAULT_DIR.expanduser()
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.enable() is None
  assert not jax.config.jax_compilation_cache_dir
