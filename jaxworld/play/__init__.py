"""`jaxworld play`: drive a trained world model from a browser, live.

programs.py    a run or an export bundle as three per-frame programs
session.py     the compiled frame program and one player's session
protocol.py    the WebSocket messages: validation and binary frames
connection.py  one page: its session, driver task and limits
server.py      the ASGI app (Starlette), serving it (uvicorn), Ctrl-C
browser.py     a headless Chromium for tests and screenshots
static/        the page: plain HTML, CSS and JavaScript, no CDN
"""
