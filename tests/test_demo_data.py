"""`jaxworld demo --data DIR`: the demo's recipe on a dataset made by
`jaxworld data ingest`. Its own file (xdist group), so it runs beside the
tiny demo's group rather than after it."""

import json

import numpy as np

from conftest import TINY
from jaxworld import cli, demo
from jaxworld.data import pipeline


def _summary(root) -> dict:
  return json.loads((root / "summary.json").read_text())


def test_demo_on_ingested_data_without_states(tiny_dataset, tmp_path, capsys):
  """`jaxworld demo --data DIR`: the recipe on a dataset `jaxworld data
  ingest` made, its action count from dataset.json, and no object states:
  position error and the probe are left out with a note."""
  episodes = pipeline.load_episodes(tiny_dataset, "train", 8)
  (tmp_path / "npz").mkdir()
  for i in range(8):  # 7 actions: more than the embedded world's 5
    np.savez(tmp_path / "npz" / f"ep{i}.npz", frames=episodes["frames"][i],
             actions=(episodes["actions"][i] + i) % 7)
  data = tmp_path / "ingested"
  assert cli.main(["data", "ingest", str(tmp_path / "npz"), "--out",
                   str(data), "--kind", "npz", "--size", "32", "--chunk",
                   "12", "--val-fraction", "0.25", "--shards", "1"]) == 0
  capsys.readouterr()
  assert cli.main(["demo", "--data", str(data), "--workdir",
                   str(tmp_path / "demo"), *TINY]) == 1
  printed = capsys.readouterr().out
  summary = _summary(tmp_path / "demo")
  assert summary["position_error_model"] is None
  assert "no object states" in summary["physics"]
  assert "physics probe: not measured" in printed
  assert "position error" not in " ".join(
      r for r in demo.verdict(summary)[1])
  config = json.loads((tmp_path / "demo" / "dynamics" / "config.json")
                      .read_text())
  assert config["dynamics"]["num_actions"] == 7
  assert config["data"]["path"] == str(data)
