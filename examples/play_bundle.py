"""Play a `jaxworld export` bundle with nothing but jax and numpy.

    python examples/play_bundle.py BUNDLE --episodes episodes.npz \
        --out imagined.npz

`episodes.npz` holds `frames` (uint8 [B, T, H, W, 3]) and `actions` (int
[B, T], the action taken after each frame). The first `context_frames` frames
are tokenized, the model imagines `horizon` frames driven by the actions, and
`imagined.npz` gets `frames` (uint8 [B, horizon, H, W, 3]): the same frames
`jaxworld rollout` produces for these inputs and seed on the same platform,
because this loop makes the same calls with the same shapes to the same
exported programs (a GPU rounds floats differently from a CPU, so there the
frames are near-equal, not bit-equal).

Nothing here imports jaxworld or flax: copy this file next to a bundle and it
runs wherever jax does (the bundle is lowered for CPU, GPU and TPU).

Dimension keys: B batch, T time, N tokens per frame, H/W/C frame size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

FORMAT, VERSIONS = "jaxworld-bundle", (1, 2)  # v1: MaskGIT only


def load_bundle(path: str | Path) -> dict:
  """The manifest, parameters (on device) and callable functions of a
  bundle directory."""
  path = Path(path)
  manifest = json.loads((path / "manifest.json").read_text())
  if (manifest.get("format") != FORMAT
      or manifest.get("version") not in VERSIONS):
    raise SystemExit(f"{path} is not a {FORMAT} bundle of version "
                     f"{' or '.join(map(str, VERSIONS))} "
                     f"(manifest says {manifest.get('format')} "
                     f"v{manifest.get('version')}).")
  bf16 = manifest["param_dtype"] == "bfloat16"
  params = {}
  for name, entry in manifest["params"].items():
    with np.load(path / entry["file"], allow_pickle=False) as npz:
      # bfloat16 is stored as its uint16 bits; view restores it losslessly.
      params[name] = jax.device_put(
          {k: npz[k].view(jnp.bfloat16) if bf16 else npz[k]
           for k in npz.files})
  functions = {}
  for name, entry in manifest["functions"].items():
    exported = jax.export.deserialize(
        bytearray((path / entry["file"]).read_bytes()))
    # (Calling it on a platform it was not lowered for fails with jax's
    # own error naming both.)
    # jit caches one compile per concrete (batch, history) shape.
    functions[name] = jax.jit(exported.call)
  return {"manifest": manifest, "params": params, "functions": functions}


def rollout(bundle: dict, frames_BTHWC: np.ndarray, actions_BT: np.ndarray,
            seed: int | None = None, temperature: float | None = None
            ) -> np.ndarray:
  """uint8 frames [B, horizon, H, W, C] imagined after the context frames.

  Mirrors jaxworld's rollout: each frame is encoded/decoded with up to
  `window` frames of history, each new frame is imagined from the last
  window - 1 frames, and the key is split once per imagined frame (inside
  dynamics_step) starting from `jax.random.key(seed)`.
  """
  r = bundle["manifest"]["rollout"]
  c, h, window = r["context_frames"], r["horizon"], r["window"]
  if frames_BTHWC.shape[1] < c or actions_BT.shape[1] < c + h - 1:
    raise SystemExit(f"Need >= {c} frames and >= {c + h - 1} actions per "
                     f"episode; got {frames_BTHWC.shape[1]} and "
                     f"{actions_BT.shape[1]}.")
  f, p = bundle["functions"], bundle["params"]
  frames_BTHWC = np.asarray(frames_BTHWC, np.uint8)
  actions_BT = np.asarray(actions_BT, np.int32)
  tokens = [f["encode"](p["tokenizer"],
                        frames_BTHWC[:, max(0, i + 1 - window):i + 1])
            for i in range(c)]
  rng_2 = jax.random.key_data(jax.random.key(
      r["seed"] if seed is None else seed, impl=r["key_impl"]))
  temperature = np.float32(r["temperature"] if temperature is None
                           else temperature)
  for _ in range(h):
    t = len(tokens)
    lo = max(0, t + 1 - window)  # the new frame is the window's last
    new_BN, rng_2 = f["dynamics_step"](
        p["dynamics"], jnp.stack(tokens[lo:], 1), actions_BT[:, lo:t], rng_2,
        temperature)
    tokens.append(new_BN)
  tokens_BTN = jnp.stack(tokens, 1)
  return np.stack([
      np.asarray(f["decode"](p["tokenizer"],
                             tokens_BTN[:, max(0, i + 1 - window):i + 1]))
      for i in range(c, c + h)], 1)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("bundle", help="directory written by `jaxworld export`")
  parser.add_argument("--episodes", required=True,
                      help="npz with frames uint8 [B,T,H,W,3], actions [B,T]")
  parser.add_argument("--out", required=True, help="npz to write frames to")
  parser.add_argument("--seed", type=int, help="default: the bundle's")
  parser.add_argument("--temperature", type=float, help="default: the bundle's")
  args = parser.parse_args(argv)
  bundle = load_bundle(args.bundle)
  with np.load(args.episodes, allow_pickle=False) as episodes:
    frames, actions = episodes["frames"], episodes["actions"]
  imagined = rollout(bundle, frames, actions, args.seed, args.temperature)
  np.savez(args.out, frames=imagined)
  print(f"imagined {imagined.shape[1]} frames for {imagined.shape[0]} "
        f"episodes -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
