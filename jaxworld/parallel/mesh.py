"""Device mesh from config, and shardings from logical axis names.

Switching between data parallel, FSDP and tensor parallel is a change of
`mesh.*` sizes and `mesh.rules` in the config, never of code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxworld.config import MeshConfig
from jaxworld.errors import JaxWorldError
from jaxworld.parallel import axes

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")


def maybe_initialize_distributed() -> None:
  """Joins a multi-process job when launched as one; no-op otherwise.

  `jax.distributed.initialize()` auto-detects TPU pods, SLURM and GKE; an
  explicit coordinator is given with JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (what `launch/local.py` sets).
  """
  if jax.distributed.is_initialized():
    return
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      # CPU processes exchange data through gloo (TCP), e.g. on a laptop.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
    log.info("joined distributed job: process %d of %d",
             jax.process_index(), jax.process_count())


def mesh_shape(cfg: MeshConfig, num_devices: int) -> dict[str, int]:
  """Resolves `data=-1` and checks the product against the device count."""
  fixed = cfg.fsdp * cfg.tensor
  data = cfg.data if cfg.data != -1 else num_devices // fixed
  shape = {"data": data, "fsdp": cfg.fsdp, "tensor": cfg.tensor}
  if data < 1 or data * fixed != num_devices:
    hint = (f"mesh.data=-1 mesh.fsdp={cfg.fsdp} mesh.tensor={cfg.tensor}"
            if num_devices % fixed == 0 else
            f"mesh.data={num_devices} mesh.fsdp=1 mesh.tensor=1")
    raise JaxWorldError(
        f"The mesh data={cfg.data} x fsdp={cfg.fsdp} x tensor={cfg.tensor} "
        f"does not match the {num_devices} available devices: the product of "
        f"the axis sizes must equal the device count. Try {hint}.")
  return shape


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(cfg, len(devices))
  return jax.make_mesh(
      tuple(shape[a] for a in MESH_AXES), MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
      devices=devices)


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
          f"[\"{name}\", null] (replicated) or map it to a mesh axis "
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

  def to_sharding(v: Any) -> Any:
    names = v.get_metadata().get("out_sharding") or (None,) * v.ndim
    spec = logical_to_mesh_spec(names, table)
    for dim, mesh_axis in zip(v.shape, spec):
      size = int(np.prod([mesh.shape[a] for a in
                          ((mesh_axis,) if isinstance(mesh_axis, str)
                           else mesh_axis or ())]))
      if dim % size:
        raise JaxWorldError(
            f"A parameter of shape {tuple(v.shape)} with logical axes "
            f"{names} cannot be split {size} ways along {mesh_axis!r} "
            f"(size {dim}). Change mesh.rules or the mesh sizes so each "
            f"sharded dimension divides evenly.")
    return v.replace(NamedSharding(mesh, spec))

  return jax.tree.map(to_sharding, abstract_state,
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


def batch_sharding(mesh: Mesh, ndim: int, rules: Sequence[Sequence[Any]]
                   ) -> NamedSharding:
  """Leading dimension split as the `batch` rule says (by default over data
  and fsdp), the rest whole."""
  spec = logical_to_mesh_spec((axes.BATCH,), rules_dict(rules))
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
        f"{jax.process_count()} processes.")
  _check_rows_per_process(global_batch, mesh, rules)
  return global_batch // jax.process_count()


def _batch_mesh_axes(rules: Sequence[Sequence[Any]]) -> tuple[str, ...]:
  target = rules_dict(rules).get(axes.BATCH)
  return (target,) if isinstance(target, str) else tuple(target or ())


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
        f"several processes (a tensor-parallel group spans hosts). Keep "
        f"mesh.tensor within one host's {jax.local_device_count()} devices "
        f"and let data/fsdp span hosts.")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


__all__ = ["make_mesh", "param_shardings", "batch_sharding", "check_batch",
           "replicated", "maybe_initialize_distributed", "axes"]
