"""The device mesh from config.

Switching between data parallel, FSDP and tensor parallel is a change of
`mesh.*` sizes and `mesh.rules` in the config, never of code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from jaxworld.config import MeshConfig
from jaxworld.errors import JaxWorldError
from jaxworld.parallel.axes import MESH_AXES


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
    try:
      return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES,
                           axis_types=axis_types, devices=devices)
    except NotImplementedError as e:  # a TPU slice's torus cannot host it
      raise JaxWorldError(
          f"The mesh {shape} does not map onto the physical topology of "
          f"these {len(devices)} {devices[0].device_kind} devices: on a TPU "
          f"slice each mesh axis must be a product of some of the slice's "
          f"physical axes (XLA: {e}). Choose sizes such as mesh.data=4 "
          f"mesh.fsdp=32 for a 4x4x8 slice.") from e
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
