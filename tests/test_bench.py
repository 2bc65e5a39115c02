"""`jaxworld bench`: the JSON it writes, and FLOPs counted two ways that
agree (XLA's cost analysis of the step, the analytic formula)."""

import json

import jax
import pytest

from conftest import TINY_TOML, tiny_config
from jaxworld import cli
from jaxworld.parallel import mesh as meshlib
from jaxworld.perf import bench

# XLA also counts what the formula leaves out (norms, softmax, GELU, the
# optimizer); at the tiny sizes that is 4-7% of the step.
FLOPS_TOLERANCE = 0.10


def test_bench_writes_every_figure(tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert cli.main(["bench", str(TINY_TOML), "--steps", "1", "--warmup", "1",
                   "--out", str(out)]) == 0
  r = json.loads(out.read_text())
  assert r["stage"] == "tokenizer" and r["devices"]["count"] == 8
  assert r["step_s"]["median"] > 0 and r["compile_s"] > 0
  f = r["flops_per_step"]
  assert abs(f["xla"] / f["analytic"] - 1) < FLOPS_TOLERANCE, f
  # On a CPU the peak is a matmul timed in the same run.
  assert "matmul" in r["peak_source"] and r["peak_flops_per_s"] > 0
  lo, hi = r["mfu_range"]
  assert 0 < lo <= r["mfu"] <= hi
  m = r["memory_per_device_bytes"]
  assert m["params"] > 0 and m["optimizer"] >= 2 * m["params"]  # AdamW
  assert m["temporaries"] > 0 and m["total"] > m["temporaries"]
  assert "MFU" in capsys.readouterr().out


# Regression over pixel patches, 2 passes over the window's first 7 frames.
PIXELS = ('tokenizer.kind="patches"', "dynamics.unroll_passes=2")


@pytest.mark.parametrize("kind,extra", [
    ("maskgit", ()), ("autoregressive", ()), ("regression", PIXELS),
    ("frame_diffusion", PIXELS[:1])])
def test_xla_and_analytic_flops_agree_at_every_depth(kind, extra):
  """A dynamics step (the frozen tokenizer's encode included), token-causal
  attention and several forward passes a step too; the extra blocks of a
  deeper model must show in XLA's count as in the formula (a scanned step
  would count one block). No remat: the formula leaves out recomputation,
  which XLA counts (save_dots recomputes attention's batched matmuls,
  +11-15% at these sizes)."""
  mesh = meshlib.make_mesh(tiny_config().mesh, jax.devices()[:1])
  counts = {}
  for depth in (2, 4):
    cfg = tiny_config('train.stage="dynamics"', f'dynamics.kind="{kind}"',
                      f"dynamics.backbone.depth={depth}",
                      "dynamics.backbone.remat=none", *extra)
    counts[depth] = (bench.xla_flops(cfg, mesh),
                     bench.analytic_flops(cfg)["step"])
    xla, analytic = counts[depth]
    assert abs(xla / analytic - 1) < FLOPS_TOLERANCE, (depth, xla, analytic)
  xla_blocks = counts[4][0] - counts[2][0]
  analytic_blocks = counts[4][1] - counts[2][1]
  assert abs(xla_blocks / analytic_blocks - 1) < FLOPS_TOLERANCE
