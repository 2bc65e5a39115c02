"""Activation sharding constraints, named with logical axes like parameters.

The train step traces its model inside `use_rules(mesh, rules)`; model code
calls `constrain(x, names)` where the layout of an activation matters (e.g.
frames split for spatial attention, token positions split for temporal
attention). Outside that context (rollout, eager tests) `constrain` does
nothing, so models never depend on a mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding

from jaxworld.parallel import sharding

_RULES: contextvars.ContextVar[tuple[Mesh, dict[str, Any]] | None] = (
    contextvars.ContextVar("jaxworld_activation_rules", default=None))


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: Sequence[Sequence[Any]]) -> Iterator[None]:
  token = _RULES.set((mesh, sharding.rules_dict(rules)))
  try:
    yield
  finally:
    _RULES.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`x` laid out as the rules map `names` (one per dimension)."""
  current = _RULES.get()
  if current is None:
    return x
  mesh, table = current
  spec = sharding.logical_to_mesh_spec(names, table)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
