"""The `jaxworld play` server: a Starlette app, served by uvicorn.

    GET /            the page (jaxworld/play/static/index.html)
    GET /static/...  its script and style, from the package only (Starlette's
                     StaticFiles refuses paths outside it)
    WS  /ws          one session per connection (protocol.py)

Each WebSocket is a `connection.Connection`, stepped on the one model
thread the pages share. The server binds 127.0.0.1 unless told otherwise
(and warns when it is not loopback), refuses WebSockets opened by pages of
other origins and more sessions than `Limits.max_sessions`, closes a
connection whose message is over `Limits.max_socket_bytes` before reading
it, and on Ctrl-C (SIGINT) closes the sessions and stops.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from jaxworld.errors import JaxWorldError
from jaxworld.play import programs, protocol
from jaxworld.play.connection import Connection, Limits, Player
from jaxworld.play.session import World

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
# The page may not load scripts, styles or images from anywhere else, nor
# connect anywhere else (frames arrive as blob: URLs, thumbnails as data:).
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
  """Whether every address `host` names is this machine's loopback."""
  try:
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
  except socket.gaierror:
    return False
  return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback
             for info in infos)


def bind(host: str, port: int) -> socket.socket:
  """A listening socket on host:port (port 0: a free one); a clear error if
  the port is taken or the host is not this machine's."""
  try:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
  except (socket.gaierror, OSError) as e:
    raise JaxWorldError(f"Cannot serve on host {host!r} ({e}); use an "
                        f"address of this machine, e.g. the default "
                        f"127.0.0.1.") from None
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind(address)
  except OSError as e:
    sock.close()
    raise JaxWorldError(
        f"Cannot listen on {host}:{port} ({e.strerror}). Another program "
        f"(another `jaxworld play`?) may be using the port: pass --port N, "
        f"or --port 0 for a free one.") from None
  sock.listen(64)
  return sock


def url_of(sock: socket.socket, host: str) -> str:
  port = sock.getsockname()[1]
  shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
  if ":" in shown:
    shown = f"[{shown}]"
  return f"http://{shown}:{port}/"


# ------------------------------------------------------------- the app


def _same_origin(websocket: Any) -> bool:
  """A browser says which page opened the socket; only ours may (a page of
  another site must not drive, or read, a local model). Clients that are no
  browser send no Origin."""
  origin = websocket.headers.get("origin")
  return origin is None or urlsplit(origin).netloc == websocket.headers.get(
      "host")


def create_app(world: World, limits: Limits = Limits(),
               warm_up_s: float = 0.0) -> Any:
  """The ASGI app playing `world` (warmed up by the caller)."""
  from starlette.applications import Starlette
  from starlette.responses import HTMLResponse
  from starlette.routing import Mount, Route, WebSocketRoute
  from starlette.staticfiles import StaticFiles

  player = Player(world, limits, warm_up_s)
  page = (resources.files("jaxworld.play") / "static" / "index.html"
          ).read_text()

  async def index(request: Any) -> HTMLResponse:
    return HTMLResponse(page, headers={
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})

  async def play_socket(websocket: Any) -> None:
    if not _same_origin(websocket):
      log.warning("play: refused a WebSocket from origin %s",
                  websocket.headers.get("origin"))
      await websocket.close(code=1008)
      return
    await websocket.accept()
    if player.sessions >= limits.max_sessions:
      await websocket.send_text(protocol.error(
          f"{player.sessions} sessions are open, the most this server "
          f"allows; close another tab and reload (or restart with "
          f"--max-sessions N)."))
      await websocket.close(code=1013)
      return
    player.sessions += 1
    try:
      await Connection(websocket, player).serve()
    finally:
      player.sessions -= 1

  @contextlib.asynccontextmanager
  async def lifespan(app: Any):
    yield
    player.executor.shutdown(wait=True, cancel_futures=True)

  app = Starlette(routes=[
      Route("/", index),
      WebSocketRoute("/ws", play_socket),
      Mount("/static", StaticFiles(packages=[("jaxworld.play", "static")])),
  ], lifespan=lifespan)
  app.state.player = player
  return app


# ------------------------------------------------------------ serving


def load_world(source: str, num_episodes: int = 16, data: str | None = None,
               overrides: Sequence[str] = (), say: Callable[[str], None] =
               print) -> tuple[World, float]:
  """(world, warm-up seconds) of a run, demo directory or bundle."""
  start = time.perf_counter()
  prog, episodes = programs.load(source, num_episodes, data, overrides)
  world = World(prog, episodes)
  say(f"jaxworld play: {prog.about['dynamics_kind']} model from "
      f"{prog.about['source']} ({prog.about['format']}, "
      f"{world.num_episodes} held-out episodes), loaded in "
      f"{time.perf_counter() - start:.1f}s; compiling...")
  return world, world.warm_up()


def _uvicorn_server(app: Any, limits: Limits) -> Any:
  import uvicorn
  return uvicorn.Server(uvicorn.Config(
      app, log_level="warning", lifespan="on",
      ws_max_size=limits.max_socket_bytes, timeout_graceful_shutdown=3))


def serve(source: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          num_episodes: int = 16, data: str | None = None,
          overrides: Sequence[str] = (), limits: Limits = Limits()) -> int:
  """`jaxworld play`: serves `source` until Ctrl-C; the exit status."""
  limits.check()
  if not 0 <= port <= 65535:
    raise JaxWorldError(f"--port {port} is not a TCP port; use 1 to 65535, "
                        f"or 0 for any free one.")
  if num_episodes < 1:
    raise JaxWorldError(f"--episodes {num_episodes}: at least one episode "
                        f"is needed to start from.")
  if not is_loopback(host):
    print(f"jaxworld play: warning: serving on {host}, which other machines "
          f"may reach; the page has no login, so anyone who can connect can "
          f"drive the model. Leave out --host to serve on 127.0.0.1 only.",
          file=sys.stderr, flush=True)
  sock = bind(host, port)  # before loading: a taken port fails at once
  try:
    world, warm_up_s = load_world(source, num_episodes, data, overrides,
                                  say=lambda s: print(s, flush=True))
    app = create_app(world, limits, warm_up_s)
    print(f"jaxworld play: compiled in {warm_up_s:.1f}s; ready at "
          f"{url_of(sock, host)}  (Ctrl-C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises SIGINT
      _uvicorn_server(app, limits).run(sockets=[sock])
  finally:
    sock.close()
  print("jaxworld play: stopped", flush=True)
  return 0


class Background:
  """The server on a thread of this process, for tests and benchmarks:

      with server.Background(world, limits) as url: ...
  """

  def __init__(self, world: World, limits: Limits = Limits(),
               host: str = "127.0.0.1", port: int = 0):
    self.sock = bind(host, port)
    self.url = url_of(self.sock, host)
    self.server = _uvicorn_server(create_app(world, limits), limits)
    self.thread = threading.Thread(
        target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
        name="jaxworld-play-server")

  def __enter__(self) -> str:
    self.thread.start()
    deadline = time.monotonic() + 30
    while not self.server.started:
      if not self.thread.is_alive() or time.monotonic() > deadline:
        raise RuntimeError("the play server did not start")
      time.sleep(0.01)
    return self.url

  def __exit__(self, *exc: Any) -> None:
    self.server.should_exit = True
    self.thread.join(10)
    self.sock.close()
