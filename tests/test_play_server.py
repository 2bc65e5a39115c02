"""`jaxworld play` without a browser: the session's frames, one compiled
program, a bundle plays like its run, and the WebSocket protocol (Starlette's
TestClient) with every kind of bad message, the limits and the static files.

Runs on the tiny demo (tests/conftest.py), so it shares that fixture's
worker and trains nothing.
"""

import base64
import dataclasses
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from jaxworld.infer import export, sampler
from jaxworld.play import programs, protocol, server
from jaxworld.play.session import Session, World

LIMITS = server.Limits(max_fps=50)


@pytest.fixture(scope="module")
def run(tiny_demo):
  return tiny_demo / "dynamics"


@pytest.fixture(scope="module")
def world(run):
  world, _ = server.load_world(str(run), num_episodes=4, say=lambda s: None)
  return world


def _frames(world, episode, actions):
  session = Session(world)
  session.reset(episode)
  return np.stack([session.step(a).imagined_HWC for a in actions])


def test_one_compiled_program_however_long_the_session(world):
  session = Session(world)
  first = session.reset(1)
  np.testing.assert_array_equal(first.imagined_HWC, world.frames_ETHWC[1, 2])
  assert world.context == 3  # the tiny window is 4
  for i in range(3 * world.programs.window):  # well past a full history
    frame = session.step(i % len(world.action_names))
  assert frame.imagined_HWC.shape == (32, 32, 3)
  assert frame.imagined_HWC.dtype == np.uint8 and frame.step == 12
  assert world.compiled_programs() == 1
  # The episode (12 frames) ends after 12 - 3 steps: no truth beyond it.
  assert frame.truth_HWC is None and not frame.truth_same_actions


def test_session_imagines_what_rollout_does(world):
  """The frames `jaxworld rollout`'s loops (sampler.rollout_tokens, then
  decode_frames) imagine from the same real frames and actions: history
  and actions line up with the model's."""
  actions = [4, 4, 1, 0, 2, 3]
  loaded = world.programs.models  # the run's assemble.WorldModel
  c, window = world.context, world.programs.window
  all_actions = np.concatenate([world.actions_ET[:1, :c - 1], [actions]], 1)
  tokens = sampler.rollout_tokens(
      loaded.cfg.dynamics.kind, loaded.dynamics, world.context_codes[:1],
      all_actions, len(actions), window,
      jax.random.key(loaded.cfg.rollout.seed, impl=sampler.KEY_IMPL),
      sampler.options_for(loaded.cfg))
  expected = sampler.decode_frames(loaded.tokenizer, tokens, window, start=c)
  np.testing.assert_array_equal(_frames(world, 0, actions), expected[0])


def test_actions_steer_the_frames_and_replays_repeat(world):
  up, down = (world.action_names.index(n) for n in ("up", "down"))
  frames_up = _frames(world, 0, [up] * 3)
  assert not np.array_equal(frames_up, _frames(world, 0, [down] * 3))
  np.testing.assert_array_equal(frames_up, _frames(world, 0, [up] * 3))


def test_true_actions_follow_the_episode(world):
  session = Session(world)
  session.reset(2)
  for t in range(3):
    action = session.true_action()
    assert action == world.actions_ET[2, world.context - 1 + t]
    frame = session.step(action)
    assert frame.truth_same_actions
    np.testing.assert_array_equal(frame.truth_HWC,
                                  world.frames_ETHWC[2, world.context + t])
  other = (session.true_action() + 1) % len(world.action_names)
  assert not session.step(other).truth_same_actions


# --------------------------------------------------------- the protocol


def receive(ws):
  """('text', object) or ('frame' | 'recording', header, parts)."""
  message = ws.receive()
  if message.get("text") is not None:
    return ("text", json.loads(message["text"]))
  header, parts = protocol.unpack(message["bytes"])
  return (header["type"], header, parts)


def until(ws, wanted, limit=300):
  """The first message `wanted(message)` accepts."""
  for _ in range(limit):
    message = receive(ws)
    if wanted(message):
      return message
  raise AssertionError(f"no wanted message in {limit}")


def is_error(m):
  return m[0] == "text" and m[1]["type"] == "error"


def is_status(m):
  return m[0] == "text" and m[1]["type"] == "status"


@pytest.fixture
def client(world):
  with TestClient(server.create_app(world, LIMITS)) as c:
    yield c


def test_hello_then_live_frames(client, world):
  with client.websocket_connect("/ws") as ws:
    kind, hello = receive(ws)
    assert hello["type"] == "hello"
    assert hello["actions"] == ["noop", "up", "down", "left", "right"]
    assert len(hello["episodes"]) == 4 and hello["context_frames"] == 3
    thumb = hello["episodes"][1]["thumbnail"].split(",", 1)[1]
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(base64.b64decode(thumb)))),
        world.start_frame(1))
    ws.send_text(json.dumps({"type": "start", "episode": 1}))
    _, header, parts = until(ws, lambda m: m[0] == "frame")
    assert header["step"] == 0 and header["action"] is None
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(parts["imagined"]))),
        world.start_frame(1))
    ws.send_text(json.dumps({"type": "action", "action": "left", "seq": 5}))
    _, header, _ = until(ws, lambda m: m[0] == "frame" and m[1]["seq"] == 5)
    assert header["action"] == "left" and header["step"] >= 1
    assert header["model_ms"] > 0


BAD = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"type": "jump"}), "Unknown message type"),
    (json.dumps({"type": "action", "action": "fly"}), "Unknown action 'fly'"),
    (json.dumps({"type": "action"}), "needs 'action'"),
    (json.dumps({"type": "start", "episode": 4}), "Episode 4 does not exist"),
    (json.dumps({"type": "start", "episode": True}), "does not exist"),
    (json.dumps({"type": "pause", "now": 1}), "has no field 'now'"),
    (json.dumps({"type": "record", "on": "yes"}), "true or false"),
    (json.dumps({"type": "step", "seq": -1}), "integer"),
    (json.dumps({"type": "step", "pad": "x" * 5000}), "over the 4096-byte"),
    (b"\x00\x01", "Binary messages"),
]


def test_every_bad_message_gets_its_error_and_the_session_goes_on(client):
  with client.websocket_connect("/ws") as ws:
    receive(ws)
    ws.send_text(json.dumps({"type": "reset"}))
    assert "start an episode first" in until(ws, is_error)[1]["message"]
    ws.send_text(json.dumps({"type": "start", "episode": 0}))
    ws.send_text(json.dumps({"type": "pause"}))
    for message, words in BAD:
      (ws.send_bytes if isinstance(message, bytes) else ws.send_text)(message)
      assert words in until(ws, is_error)[1]["message"], message
    ws.send_text(json.dumps({"type": "step", "action": "up", "seq": 9}))
    _, header, _ = until(ws, lambda m: m[0] == "frame" and m[1]["seq"] == 9)
    assert header["action"] == "up"


def test_pause_step_record_and_true_actions(client, world):
  with client.websocket_connect("/ws") as ws:
    receive(ws)
    ws.send_text(json.dumps({"type": "start", "episode": 3}))
    ws.send_text(json.dumps({"type": "pause"}))
    until(ws, lambda m: is_status(m) and not m[1]["running"])
    ws.send_text(json.dumps({"type": "reset"}))
    ws.send_text(json.dumps({"type": "record", "on": True}))
    until(ws, lambda m: is_status(m) and m[1]["recording"])
    ws.send_text(json.dumps({"type": "true_actions", "on": True}))
    until(ws, lambda m: is_status(m) and m[1]["true_actions"])
    for step in (1, 2):  # paused: one frame per step message, nothing else
      ws.send_text(json.dumps({"type": "step", "seq": step}))
      kind, header, parts = until(
          ws, lambda m: m[0] == "frame" and m[1]["seq"] is not None)
      assert header["step"] == step and header["seq"] == step
      assert header["truth_same_actions"] and "truth" in parts
      assert header["action"] == world.action_names[
          world.actions_ET[3, world.context - 2 + step]]
    ws.send_text(json.dumps({"type": "record", "on": False}))
    kind, header, parts = until(ws, lambda m: m[0] == "recording")
    gif = Image.open(io.BytesIO(parts["gif"]))
    assert header["frames"] == gif.n_frames == 2  # the steps after "on"
    ws.send_text(json.dumps({"type": "record", "on": False}))
    assert "Not recording" in until(ws, is_error)[1]["message"]


def test_session_cap_and_foreign_origins(world):
  with TestClient(server.create_app(
      world, dataclasses.replace(LIMITS, max_sessions=1))) as client:
    with client.websocket_connect("/ws") as first:
      assert receive(first)[1]["type"] == "hello"
      with client.websocket_connect("/ws") as second:
        assert "sessions are open" in receive(second)[1]["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
          second.receive_text()
        assert closed.value.code == 1013
    with pytest.raises(WebSocketDisconnect) as refused:
      with client.websocket_connect(
          "/ws", headers={"origin": "http://elsewhere.example"}) as ws:
        ws.receive_text()
    assert refused.value.code == 1008


def test_requests_waiting_for_the_model_are_bounded(world):
  with TestClient(server.create_app(
      world, dataclasses.replace(LIMITS, queued=0))) as client:
    with client.websocket_connect("/ws") as ws:
      receive(ws)
      ws.send_text(json.dumps({"type": "start", "episode": 0}))
      assert "the most a page may queue" in until(ws, is_error)[1]["message"]
      ws.send_text(json.dumps({"type": "pause"}))  # controls still work
      assert until(ws, is_status)[1]["running"] is False


def test_static_files_come_from_the_package_only(client):
  page = client.get("/")
  assert page.status_code == 200 and "jaxworld play" in page.text
  assert "default-src 'self'" in page.headers["content-security-policy"]
  assert client.get("/static/play.js").status_code == 200
  for path in ("/static/../server.py", "/static/%2e%2e/server.py",
               "/static/..%2fserver.py", "/static/missing.js", "/server.py"):
    assert client.get(path).status_code == 404, path


def test_busy_port_and_bad_host_are_clear(tmp_path):
  taken = server.bind("127.0.0.1", 0)
  try:
    with pytest.raises(server.JaxWorldError, match="--port 0"):
      server.bind("127.0.0.1", taken.getsockname()[1])
  finally:
    taken.close()
  assert server.is_loopback("127.0.0.1") and server.is_loopback("localhost")
  assert not server.is_loopback("0.0.0.0")


# --------------------------------------------------------------- a bundle

# The bundle path in a fresh process: nothing imports flax, orbax, grain,
# optax or jaxworld's model code (compiling is left to the test above).
ISOLATED = """
import sys
from jaxworld.play import programs, server, session
prog = programs.from_bundle(sys.argv[1])
episodes = programs.bundle_episodes(sys.argv[1], 2)
heavy = [m for m in sys.modules if m.split(".")[0] in
         ("flax", "orbax", "grain", "optax")
         or m.startswith(("jaxworld.models", "jaxworld.runs", "jaxworld.infer",
                          "jaxworld.train", "jaxworld.data"))]
assert not heavy, heavy
print(prog.action_names)
"""


def test_a_bundle_plays_like_its_run_without_flax(run, world, tmp_path):
  bundle = export.export_run(run, tmp_path / "bundle", platforms=("cpu",))
  prog, episodes = programs.load(bundle, 4)
  assert prog.action_names == world.action_names  # from the dataset
  from_bundle = World(prog, episodes)
  actions = [1, 1, 4, 0, 2]
  np.testing.assert_array_equal(_frames(from_bundle, 2, actions),
                                _frames(world, 2, actions))
  assert from_bundle.compiled_programs() == 1
  with pytest.raises(server.JaxWorldError, match="rollout.temperature"):
    programs.load(bundle, 1, overrides=["rollout.maskgit_steps=2"])
  proc = subprocess.run([sys.executable, "-c", ISOLATED, str(bundle)],
                        env={**os.environ, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "noop" in proc.stdout
