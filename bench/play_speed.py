"""Frames/s and key-to-frame latency of `jaxworld play`, through its server.

    python bench/play_speed.py runs/demo [rollout overrides...]
    python bench/play_speed.py runs/demo/dynamics/export --frames 300

Serves RUN_OR_BUNDLE as `jaxworld play` does (the same app and uvicorn, on
a free loopback port, with no frame-rate cap) and plays one session as the
page does, over a WebSocket:

  frames/s        frames of a running session as they arrive, after warm-up
  key to frame    while it runs, key presses ("action" messages) at random
                  points of a frame, each timed until the first frame made
                  with it arrives: the rest of the frame in flight, one more
                  step, PNG and transfer
  paused step     a "step" message while paused, to its frame
  model step      the server's own time for the compiled frame program

p50 / p95 over the presses. The load average is printed with the numbers:
on a shared CPU they move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("source", help="a dynamics run, demo directory or bundle")
  p.add_argument("overrides", nargs="*", help="rollout.key=value")
  p.add_argument("--frames", type=int, default=200,
                 help="frames timed for frames/s")
  p.add_argument("--presses", type=int, default=60,
                 help="key presses timed for latency")
  args = p.parse_args()

  import jax
  from websockets.sync.client import connect

  from jaxworld.play import protocol, server

  load_before = os.getloadavg()[0]
  world, warm_up_s = server.load_world(args.source, 4, None, args.overrides)
  limits = server.Limits(max_fps=0)  # as fast as the model goes
  with server.Background(world, limits) as url, connect(
      url.replace("http", "ws") + "ws", max_size=1 << 24) as ws:

    def frame():
      """The next frame's (header, arrival time); other messages skipped."""
      while True:
        message = ws.recv()
        if isinstance(message, bytes):
          header, _ = protocol.unpack(message)
          if header["type"] == "frame":
            return header, time.perf_counter()

    json.loads(ws.recv())  # hello
    ws.send(json.dumps({"type": "start", "episode": 0}))
    for _ in range(10):  # the start frame and a few to settle
      frame()
    start = time.perf_counter()
    model_ms = [frame()[0]["model_ms"] for _ in range(args.frames)]
    fps = args.frames / (time.perf_counter() - start)

    names = list(world.action_names)
    period_s = 1 / fps
    rng = np.random.default_rng(0)
    key_ms = []
    for i in range(args.presses):
      # A person presses at any point of a frame, not just as one arrives.
      time.sleep(rng.uniform(0, period_s))
      sent = time.perf_counter()
      ws.send(json.dumps({"type": "action", "action": names[i % len(names)],
                          "seq": i}))
      while True:
        header, arrived = frame()
        if header["seq"] == i:
          key_ms.append((arrived - sent) * 1e3)
          break

    ws.send(json.dumps({"type": "pause"}))
    time.sleep(0.5)
    while True:  # drain what was in flight
      try:
        ws.recv(timeout=0.5)
      except TimeoutError:
        break
    step_ms = []
    for i in range(args.presses):
      sent = time.perf_counter()
      ws.send(json.dumps({"type": "step", "action": names[i % len(names)],
                          "seq": 10_000 + i}))
      header, arrived = frame()
      assert header["seq"] == 10_000 + i, header
      step_ms.append((arrived - sent) * 1e3)

  pct = lambda xs: "p50 %.0f / p95 %.0f ms" % tuple(np.percentile(xs,
                                                                 [50, 95]))
  about = world.programs.about
  device = jax.devices()[0]
  print(f"{about['source']} ({about['format']}, {about['dynamics_kind']}, "
        f"{about['steps_per_frame']} passes/frame, "
        f"{about['parameters']:,} dynamics params) on {device.platform} "
        f"({device.device_kind}, {os.cpu_count()} cores); compile "
        f"{warm_up_s:.1f}s; load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}")
  print(f"  frames/s {fps:.1f} | key to frame {pct(key_ms)} | paused step "
        f"{pct(step_ms)} | model step {pct(model_ms)}")


if __name__ == "__main__":
  main()
