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
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxworld.config import MeshConfig
from jaxworld.errors import JaxWorldError
from jaxworld.parallel import axes

log = logging.getLogger(__name__)

# Ordered by how much they talk: tensor, innermost, gets the closest devices.
MESH_AXES = ("data", "fsdp", "sequence", "tensor")

# A dead process is noticed by the others after this many seconds without
# its heartbeat; they then stop with an error naming it (JAX's default, 100 s,
# is longer than a user should wait).
HEARTBEAT_TIMEOUT_S = int(os.environ.get("JAXWORLD_HEARTBEAT_TIMEOUT_S", "20"))


def maybe_initialize_distributed() -> None:
  """Joins a multi-process job when launched as one; no-op otherwise.

  An explicit coordinator is given with JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (what `launch/local.py` sets; also
  usable on any cluster). Otherwise JAX detects SLURM, Open MPI, Cloud TPU
  pods / multislice and GKE TPU JobSets by their environment.
  """
  if jax.distributed.is_initialized():
    return
  timeouts = dict(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                  shutdown_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      # CPU processes exchange data through gloo (TCP), e.g. on a laptop.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]), **timeouts)
  elif _launched_by_cluster():
    jax.distributed.initialize(**timeouts)
  else:
    return
  log.info("joined distributed job: process %d of %d",
           jax.process_index(), jax.process_count())


def lost_peer_message(error: BaseException) -> str | None:
  """What to tell the user when a runtime error in a multi-process job
  means another process is gone; None for any other error."""
  if not (jax.distributed.is_initialized() and jax.process_count() > 1 and
          isinstance(error, jax.errors.JaxRuntimeError)):
    return None
  first_line = str(error).strip().splitlines()[0]
  return (f"process {jax.process_index()} of {jax.process_count()}: a "
          f"collective with the other processes failed ({first_line}). "
          f"Another process has most likely died; see its log. The "
          f"distributed runtime names it within {HEARTBEAT_TIMEOUT_S} s "
          f"('Task N heartbeat timeout' means process N) and stops this one. "
          f"Fix the cause, then rerun the same command with --resume.")


def _launched_by_cluster() -> bool:
  """One of the multi-process launchers `jax.distributed` knows about."""
  env = os.environ
  return (int(env.get("SLURM_NTASKS", "1")) > 1 or
          int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 or
          "," in env.get("TPU_WORKER_HOSTNAMES", "") or
          "MEGASCALE_COORDINATOR_ADDRESS" in env)


def mesh_shape(cfg: MeshConfig, num_devices: int) -> dict[str, int]:
  """Resolves the -1 axis and checks the product against the device count."""
  shape = {a: getattr(cfg, a) for a in MESH_AXES}
  fixed = int(np.prod([v for v in shape.values() if v != -1]))
  for a, v in shape.items():
    if v == -1:
      shape[a] = num_devices // fixed
  if np.prod(list(shape.values())) != num_devices:
    given = " x ".join(f"{a}={getattr(cfg, a)}" for a in MESH_AXES)
    raise JaxWorldError(
        f"The mesh {given} does not match the {num_devices} available "
        f"devices: the product of the axis sizes must equal the device "
        f"count. Try {_working_mesh(cfg, num_devices)}.")
  return shape


def _working_mesh(cfg: MeshConfig, num_devices: int) -> str:
  """A mesh for `num_devices` close to the requested one."""
  sizes, left = {}, num_devices
  for a in ("tensor", "sequence", "fsdp"):
    want = max(getattr(cfg, a), 1)
    sizes[a] = int(np.gcd(want, left))
    left //= sizes[a]
  sizes["data"] = left
  return " ".join(f"mesh.{a}={sizes[a]}" for a in MESH_AXES)


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
  """The mesh of `cfg` over `devices` (all by default).

  With mesh.dcn_* > 1 the data / fsdp axes are laid out so that their outer
  factor crosses slices (or processes) and everything else stays inside one.
  """
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(cfg, len(devices))
  dcn = {"data": cfg.dcn_data, "fsdp": cfg.dcn_fsdp}
  for a, n in dcn.items():
    if shape[a] % n:
      raise JaxWorldError(
          f"mesh.dcn_{a}={n} does not divide mesh.{a}={shape[a]}: the {a} "
          f"axis is split into {n} groups across slices. Use a mesh.dcn_{a} "
          f"that divides {shape[a]}.")
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if cfg.dcn_data * cfg.dcn_fsdp == 1:
    return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=axis_types, devices=devices)
  dcn_shape = [dcn.get(a, 1) for a in MESH_AXES]
  ici_shape = [shape[a] // n for a, n in zip(MESH_AXES, dcn_shape)]
  # Slices where there are several (TPU multislice), else processes (hosts).
  by_process = len({getattr(d, "slice_index", 0) for d in devices}) == 1
  granules = len({getattr(d, "process_index" if by_process else "slice_index")
                  for d in devices})
  if granules != int(np.prod(dcn_shape)):
    raise JaxWorldError(
        f"mesh.dcn_data x mesh.dcn_fsdp = {int(np.prod(dcn_shape))} but the "
        f"job has {granules} {'processes' if by_process else 'slices'}; the "
        f"product must equal that count.")
  device_array = mesh_utils.create_hybrid_device_mesh(
      ici_shape, dcn_shape, devices, process_is_granule=by_process)
  return Mesh(device_array, MESH_AXES, axis_types=axis_types)


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
  target = rules_dict(rules).get(name)
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


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


__all__ = ["make_mesh", "param_shardings", "batch_sharding", "check_batch",
           "replicated", "maybe_initialize_distributed", "axes"]
