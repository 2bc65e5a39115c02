"""Shardings from logical axis names: `mesh.rules` maps each name to mesh
axes; unknown names and sizes that do not divide are refused with the fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxworld.errors import JaxWorldError
from jaxworld.parallel.axes import MESH_AXES


# Not flax's logical_to_mesh_axes: it goes by rule order, unknown names -> None.
def logical_to_mesh_spec(names: Sequence[str | None],
                         rules: dict[str, Any]) -> P:
  """Maps logical names to a PartitionSpec; a mesh axis is used at most once."""
  used: set[str] = set()
  spec = []
  for name in names:
    if name is None:
      spec.append(None)
      continue
    if name not in rules:
      raise JaxWorldError(
          f"Logical axis {name!r} has no entry in mesh.rules. Add "
          f"[\"{name}\", []] (replicated) or map it to a mesh axis "
          f"({', '.join(MESH_AXES)}).")
    target = rules[name]
    mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    mesh_axes = tuple(a for a in mesh_axes if a not in used)
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
  return P(*spec)


def rules_dict(rules: Sequence[Sequence[Any]]) -> dict[str, Any]:
  out = {}
  for name, target in rules:
    for a in (target,) if isinstance(target, str) else tuple(target or ()):
      if a not in MESH_AXES:
        raise JaxWorldError(f"mesh.rules maps {name!r} to unknown mesh axis "
                            f"{a!r}; mesh axes are {', '.join(MESH_AXES)}.")
    out[name] = target
  return out


def param_shardings(abstract_state: Any, mesh: Mesh,
                    rules: Sequence[Sequence[Any]]) -> Any:
  """NamedShardings for an nnx.State whose Variables carry `out_sharding`."""
  table = rules_dict(rules)

  def to_sharding(path: Any, v: Any) -> Any:
    names = v.get_metadata().get("out_sharding") or (None,) * v.ndim
    spec = logical_to_mesh_spec(names, table)
    for dim, name, mesh_axis in zip(v.shape, names, spec):
      mesh_axes = (mesh_axis,) if isinstance(mesh_axis, str) else mesh_axis or ()
      size = int(np.prod([mesh.shape[a] for a in mesh_axes]))
      if dim % size:
        fits = " or ".join(f"mesh.{a}={int(np.gcd(dim, mesh.shape[a]))}"
                           for a in mesh_axes)
        raise JaxWorldError(
            f"{jax.tree_util.keystr(path, simple=True, separator='/')} has "
            f"{dim} {name!r} (shape {tuple(v.shape)}), which does not split "
            f"{size} ways over mesh axes {mesh_axes} of {dict(mesh.shape)}. "
            f"Use sizes that divide {dim} (e.g. {fits}), a model whose "
            f"{name!r} divides {size}, or map {name!r} elsewhere in "
            f"mesh.rules.")
    return v.replace(NamedSharding(mesh, spec))

  return jax.tree.map_with_path(to_sharding, abstract_state,
                                is_leaf=lambda x: isinstance(x, nnx.Variable))


def check_sharded_as_ruled(state: Any, shardings: Any) -> list[str]:
  """Fails if any array is laid out differently from its rule; returns one
  line per array (path, shape, dtype, logical names, partition spec)."""
  lines = []
  flat_state = dict(nnx.to_flat_state(state))
  for path, expected in nnx.to_flat_state(shardings):
    var = flat_state[path]
    value = var.get_value()
    name = "/".join(str(p) for p in path)
    if not value.sharding.is_equivalent_to(expected.get_value(), value.ndim):
      raise JaxWorldError(
          f"{name} is laid out as {value.sharding.spec}, not "
          f"{expected.get_value().spec} as mesh.rules say. This is a bug in "
          f"how the state was created or restored; please report it.")
    names = var.get_metadata().get("out_sharding")
    lines.append(f"{name}  {tuple(value.shape)}  {value.dtype}  {names}  "
                 f"{expected.get_value().spec}")
  return lines


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
