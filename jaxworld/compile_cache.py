"""The persistent XLA compilation cache that every `jaxworld` command uses,
so that a rerun of `train`, `play`, `bench`, ... loads its compiled programs
instead of compiling them again.

On by default, in ~/.cache/jaxworld/xla. JAXWORLD_COMPILATION_CACHE=DIR puts
it elsewhere; JAXWORLD_COMPILATION_CACHE=off turns it off. A directory set
through JAX's own JAX_COMPILATION_CACHE_DIR is used as it is. As JAX does,
only programs that took at least a second to compile are stored
(jax_persistent_cache_min_compile_time_secs).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "JAXWORLD_COMPILATION_CACHE"
DEFAULT_DIR = Path("~/.cache/jaxworld/xla")
OFF = ("off", "0", "false", "no", "")


def cache_dir() -> Path | None:
  """Where compiled programs are kept (None: the cache is off)."""
  value = os.environ.get(ENV)
  if value is None:
    return DEFAULT_DIR.expanduser()
  if value.strip().lower() in OFF:
    return None
  return Path(value).expanduser()


def enable() -> Path | None:
  """Points JAX's persistent cache at `cache_dir()` (unless JAX already has
  one configured); returns the directory in use."""
  import jax
  configured = jax.config.jax_compilation_cache_dir
  if configured:
    return Path(configured)
  path = cache_dir()
  if path is None:
    return None
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  return path
