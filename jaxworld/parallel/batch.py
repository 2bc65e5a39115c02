"""The batch's sharding, and checks that batch and activation sizes split
over the mesh (and rows over processes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxworld.errors import JaxWorldError
from jaxworld.parallel import axes, sharding


def batch_sharding(mesh: Mesh, ndim: int, rules: Sequence[Sequence[Any]]
                   ) -> NamedSharding:
  """Leading dimension split as the `batch` rule says (by default over data
  and fsdp), the rest whole."""
  spec = sharding.logical_to_mesh_spec((axes.BATCH,),
                                       sharding.rules_dict(rules))
  return NamedSharding(mesh, P(*spec, *([None] * (ndim - 1))))


def check_batch(global_batch: int, mesh: Mesh,
                rules: Sequence[Sequence[Any]]) -> int:
  """Checks the batch splits over devices and processes; returns per-process."""
  dp = int(np.prod([mesh.shape[a] for a in _batch_mesh_axes(rules)]))
  if global_batch % dp:
    good = max(dp, (global_batch // dp) * dp)
    raise JaxWorldError(
        f"train.batch_size={global_batch} is not divisible by the "
        f"data-parallel size {dp} (mesh axes {_batch_mesh_axes(rules)} of "
        f"{dict(mesh.shape)}). Use train.batch_size={good} (a multiple of "
        f"{dp}) or change the mesh.")
  if global_batch % jax.process_count():
    raise JaxWorldError(
        f"train.batch_size={global_batch} is not divisible by the "
        f"{jax.process_count()} processes. Run on a number of processes "
        f"that divides it (a resumed run keeps its global batch, so its "
        f"data stream stays the same), or start a new run with a "
        f"train.batch_size that is a multiple of {jax.process_count()}.")
  _check_rows_per_process(global_batch, mesh, rules)
  return global_batch // jax.process_count()


def check_splits(what: str, size: int, name: str, mesh: Mesh,
                 rules: Sequence[Sequence[Any]]) -> None:
  """An activation dimension must split evenly over the axes `name` maps to."""
  mesh_axes = _mesh_axes(rules, name)
  n = int(np.prod([mesh.shape[a] for a in mesh_axes]))
  if size % n:
    raise JaxWorldError(
        f"{what}={size} does not split {n} ways over mesh axes {mesh_axes} "
        f"(the {name!r} rule) of {dict(mesh.shape)}. Use a {what} that is a "
        f"multiple of {n}, or mesh sizes that divide {size}.")


def _mesh_axes(rules: Sequence[Sequence[Any]], name: str) -> tuple[str, ...]:
  target = sharding.rules_dict(rules).get(name)
  return (target,) if isinstance(target, str) else tuple(target or ())


def _batch_mesh_axes(rules: Sequence[Sequence[Any]]) -> tuple[str, ...]:
  return _mesh_axes(rules, axes.BATCH)


def _check_rows_per_process(global_batch: int, mesh: Mesh,
                            rules: Sequence[Sequence[Any]]) -> None:
  """Each process loads its own episodes, so no batch row may live on
  devices of two processes (that needs identical data on both)."""
  if jax.process_count() == 1:
    return
  index_map = batch_sharding(mesh, 1, rules).devices_indices_map(
      (global_batch,))
  rows: dict[int, set[tuple[int, int]]] = {}
  for device, (rows_slice,) in index_map.items():
    rows.setdefault(device.process_index, set()).add(
        rows_slice.indices(global_batch)[:2])
  all_rows = [r for per_process in rows.values() for r in per_process]
  if len(set(all_rows)) != len(all_rows):
    raise JaxWorldError(
        f"The mesh {dict(mesh.shape)} spreads the same batch rows over "
        f"several processes (a tensor- or sequence-parallel group spans "
        f"hosts). Keep mesh.tensor x mesh.sequence within one host's "
        f"{jax.local_device_count()} devices and let data/fsdp span hosts.")
