"""Per-device memory of a compiled train step: parameters and optimizer
state from each array's shard shape, the rest from XLA's memory analysis."""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx


def state_bytes(abstract_state: nnx.State, shardings: nnx.State
                ) -> dict[str, int]:
  """{"params", "optimizer"}: bytes per device of the train state's two
  parts (the largest shard, which is every shard under even splits)."""
  out = {"params": 0, "optimizer": 0}
  for (path, var), (_, sh) in zip(nnx.to_flat_state(abstract_state),
                                  nnx.to_flat_state(shardings)):
    shard = sh.get_value().shard_shape(var.shape)
    part = "params" if path[0] == "model" else "optimizer"
    out[part] += np.dtype(var.dtype).itemsize * int(np.prod(shard))
  return out


def step_memory(compiled_step: Any, abstract_state: nnx.State,
                shardings: nnx.State) -> dict[str, int | None]:
  """Bytes per device: params, optimizer, temporaries, arguments, outputs,
  and `total` = arguments + outputs - donated (aliased) + temporaries, what
  the step holds at its peak as XLA plans it. None where the backend does
  not report it."""
  out: dict[str, int | None] = dict(state_bytes(abstract_state, shardings))
  try:
    m = compiled_step.memory_analysis()
  except NotImplementedError:
    m = None
  if m is None:
    return {**out, "temporaries": None, "arguments": None, "outputs": None,
            "total": None}
  out.update(temporaries=m.temp_size_in_bytes,
             arguments=m.argument_size_in_bytes,
             outputs=m.output_size_in_bytes,
             total=(m.argument_size_in_bytes + m.output_size_in_bytes
                    - m.alias_size_in_bytes + m.temp_size_in_bytes))
  return out
