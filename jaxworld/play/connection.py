"""One page's session on the `jaxworld play` server: the model thread the
pages share (`Player`), and per WebSocket a `Connection` whose driver task
steps its session and sends the frames.

The model runs on one worker thread shared by all sessions, so the event
loop only moves messages and never waits on the model: a driver asks for a
frame, awaits it and sends it, as fast as the model goes or at
`Limits.max_fps`. Controls (the held key, pause, true actions) change at
once; model work (start, reset, step, record) is queued in order, at most
`Limits.queued` per page. `Limits` bounds what a page can make the server
hold.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from jaxworld.errors import JaxWorldError
from jaxworld.play import protocol
from jaxworld.play.session import Session, World

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one server holds at most."""
  max_sessions: int = 4          # open pages at once
  max_message_bytes: int = 4096  # larger page messages get an error
  # A message larger than this closes its connection (uvicorn, code 1009)
  # before it is read into memory; in between, it gets an error.
  max_socket_bytes: int = 1 << 16
  action_log: int = 1000         # actions a session remembers
  record_frames: int = 600       # recording stops (and is sent) at this
  queued: int = 32               # steps, resets, ... waiting per session
  max_fps: float = 30.0          # frames/s of a running session; 0: no cap

  def check(self) -> None:
    if self.max_sessions < 1:
      raise JaxWorldError(f"--max-sessions {self.max_sessions}: at least one "
                          f"page must be allowed; use 1 or more.")
    if self.max_fps < 0:
      raise JaxWorldError(f"--fps {self.max_fps}: use a positive cap, or 0 "
                          f"for as fast as the model goes.")


class Player:
  """What the app shares among sessions: the world, the model thread, the
  session count and the hello every page gets."""

  def __init__(self, world: World, limits: Limits, warm_up_s: float = 0.0):
    self.world, self.limits = world, limits
    self.executor = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="jaxworld-play-model")
    self.sessions = 0
    self.hello = {
        "type": "hello", "protocol": protocol.PROTOCOL_VERSION,
        "actions": list(world.action_names),
        "episodes": [
            {"index": i, "thumbnail": "data:image/png;base64," +
             base64.b64encode(protocol.png(world.start_frame(i))).decode()}
            for i in range(world.num_episodes)],
        "image_size": int(world.frames_ETHWC.shape[2]),
        "context_frames": world.context,
        "episode_length": world.episode_length,
        "about": world.programs.about, "warm_up_s": round(warm_up_s, 2),
        "limits": dataclasses.asdict(limits)}

  async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on the model thread, awaited without blocking the loop."""
    return await asyncio.get_running_loop().run_in_executor(
        self.executor, fn, *args)


class Connection:
  """One page: its session, the controls it set, and the driver task that
  steps the session and sends frames."""

  def __init__(self, websocket: Any, player: Player):
    self.ws, self.player = websocket, player
    limits = player.limits
    self.session = Session(player.world, limits.action_log,
                           limits.record_frames)
    self.running = True
    self.recording = False  # as the page asked (the session follows in order)
    self.true_actions = False
    self.held: int | None = None  # the action of the key held, if any
    self.held_seq: int | None = None
    self.jobs: collections.deque[tuple[Any, ...]] = collections.deque()
    self.wake = asyncio.Event()
    self.send_lock = asyncio.Lock()
    self.next_tick = 0.0

  async def send_text(self, text: str) -> None:
    async with self.send_lock:
      await self.ws.send_text(text)

  async def send_bytes(self, data: bytes) -> None:
    async with self.send_lock:
      await self.ws.send_bytes(data)

  async def status(self, note: str | None = None) -> None:
    await self.send_text(json.dumps({
        "type": "status", "running": self.running,
        "recording": self.recording,
        "true_actions": self.true_actions, "episode": self.session.episode,
        "note": note}))

  async def serve(self) -> None:
    await self.send_text(json.dumps(self.player.hello))
    driver = asyncio.create_task(self.drive())
    world, limits = self.player.world, self.player.limits
    try:
      while True:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
          return
        try:
          command = protocol.parse(message.get("text"), message.get("bytes"),
                                   world.action_names, world.num_episodes,
                                   limits.max_message_bytes)
        except protocol.BadMessage as e:
          await self.send_text(protocol.error(str(e)))
          continue
        await self.apply(command)
        if driver.done():  # it stopped (the page went away mid-send)
          return
    finally:
      driver.cancel()
      with contextlib.suppress(asyncio.CancelledError, Exception):
        await driver

  async def apply(self, c: protocol.Command) -> None:
    """A checked command: controls change at once, model work is queued in
    order for the driver."""
    if (c.type in ("start", "reset", "step", "record")
        and len(self.jobs) >= self.player.limits.queued):
      await self.send_text(protocol.error(
          f"{len(self.jobs)} requests are already waiting for the model, "
          f"the most a page may queue; this one is dropped. Wait for their "
          f"frames before sending more."))
      return
    if c.type == "action":
      self.held, self.held_seq = c.action, c.seq
    elif c.type in ("pause", "resume"):
      self.running = c.type == "resume"
      await self.status()
    elif c.type == "true_actions":
      self.true_actions = c.on
      await self.status()
    elif c.type == "start":
      self.jobs.append(("reset", c.episode))
    elif c.type == "reset":
      if self.session.episode < 0 and not any(j[0] == "reset"
                                              for j in self.jobs):
        await self.send_text(protocol.error(
            "Nothing to reset yet; start an episode first ({\"type\": "
            "\"start\", \"episode\": 0})."))
        return
      self.jobs.append(("reset", None))
    elif c.type == "step":
      self.jobs.append(("step", c.action, c.seq))
    elif c.type == "record":
      if c.on == self.recording:
        await self.send_text(protocol.error(
            "Already recording; send {\"type\": \"record\", \"on\": "
            "false} to stop and get the GIF." if c.on else
            "Not recording; send {\"type\": \"record\", \"on\": true} "
            "to start."))
        return
      self.recording = c.on
      self.jobs.append(("record", c.on))
    self.wake.set()

  async def drive(self) -> None:
    """Runs queued jobs, and frames while running, until cancelled."""
    loop = asyncio.get_running_loop()
    period = 1.0 / self.player.limits.max_fps if self.player.limits.max_fps \
        else 0.0
    while True:
      if self.jobs:
        await self.do(self.jobs.popleft())
        continue
      if not (self.running and self.session.episode >= 0):
        self.wake.clear()
        await self.wake.wait()
        continue
      delay = self.next_tick - loop.time()
      if delay > 0:  # a job arriving meanwhile is done first
        self.wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
          await asyncio.wait_for(self.wake.wait(), delay)
        continue
      self.next_tick = loop.time() + period
      await self.do(("tick",))

  async def do(self, job: tuple[Any, ...]) -> None:
    session, run = self.session, self.player.run
    try:
      if job[0] == "reset":
        episode = session.episode if job[1] is None else job[1]
        await self.send_bytes(await run(self._reset, episode))
        await self.status()
      elif job[0] in ("tick", "step"):
        action, seq = ((job[1], job[2]) if job[0] == "step"
                       else (self.held, self.held_seq))
        if session.episode < 0:
          await self.send_text(protocol.error(
              "Start an episode before stepping ({\"type\": \"start\", "
              "\"episode\": 0})."))
          return
        note = None
        if self.true_actions:  # the episode's own action, while it lasts
          true = await run(session.true_action)
          if true is None:
            self.true_actions = False
            note = "The true episode has ended; driving with the keys again."
          else:
            action = true
        await self.send_bytes(await run(self._step, action, seq))
        if note:
          await self.status(note)
        if session.recording_full():
          await self._send_recording("The recording reached its limit of "
                                     f"{session.record_cap} frames.")
      elif job[0] == "record":
        if job[1]:
          await run(session.start_recording)
          await self.status()
        else:
          await self._send_recording()
    except asyncio.CancelledError:
      raise
    except Exception as e:  # noqa: BLE001 - the page is told, the server lives
      if not self._connected():
        raise
      log.exception("play: %s failed", job[0])
      self.running = False
      await self.send_text(protocol.error(
          f"The model failed on this {job[0]} ({type(e).__name__}: {e}); the "
          f"session is paused. Reset or pick an episode to go on."))
      await self.status()

  def _connected(self) -> bool:
    from starlette.websockets import WebSocketState
    return (self.ws.client_state == WebSocketState.CONNECTED
            and self.ws.application_state == WebSocketState.CONNECTED)

  async def _send_recording(self, note: str | None = None) -> None:
    self.recording = False
    gif, count = await self.player.run(self.session.stop_recording)
    await self.send_bytes(protocol.pack(
        {"type": "recording", "frames": count}, [("gif", gif)]))
    await self.status(note)

  # These run on the model thread.

  def _reset(self, episode: int) -> bytes:
    return self._frame_message(self.session.reset(episode), None)

  def _step(self, action: int | None, seq: int | None) -> bytes:
    return self._frame_message(self.session.step(
        0 if action is None else action), seq)

  def _frame_message(self, frame: Any, seq: int | None) -> bytes:
    names = self.player.world.action_names
    parts = [("imagined", protocol.png(frame.imagined_HWC))]
    if frame.truth_HWC is not None:
      parts.append(("truth", protocol.png(frame.truth_HWC)))
    return protocol.pack({
        "type": "frame", "episode": self.session.episode, "step": frame.step,
        "action": None if frame.action is None else names[frame.action],
        "seq": seq, "model_ms": round(frame.model_ms, 2),
        "truth_same_actions": frame.truth_same_actions,
        "recorded": (len(self.session.recording)
                     if self.session.recording is not None else None)},
        parts)
