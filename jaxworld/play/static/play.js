// jaxworld play: the page. Talks to the server over one WebSocket
// (jaxworld/play/protocol.py): JSON text both ways, frames as binary
// messages (header length, JSON header, PNG parts).
"use strict";

const $ = (id) => document.getElementById(id);

// Keys for actions with these names; every action also has its digit.
const NAMED_KEYS = {
  noop: [" "], up: ["ArrowUp", "w"], down: ["ArrowDown", "s"],
  left: ["ArrowLeft", "a"], right: ["ArrowRight", "d"],
};
const CONTROL_KEYS = {
  p: "pause", n: "step", ".": "step", r: "reset", g: "record",
  t: "trueactions", v: "panel", "[": "previous", "]": "next",
};
const HISTORY_SHOWN = 200;  // action history entries kept on the page
const FPS_WINDOW = 30;      // frames the frames/s readout averages over

const state = {
  socket: null, hello: null, running: true, recording: false,
  trueActions: false, episode: -1, keyOf: {}, held: [], seq: 0,
  sent: new Map(),  // seq -> time sent, until a frame shows it
};
// Read by tests and benchmarks (tests/test_play_browser.py).
const stats = {
  frames: 0, imagined: 0, arrivals: [], fps: 0, modelMs: 0,
  keyMs: [], lastStep: -1, lastAction: null, errors: [],
};
window.jaxworldPlay = { state, stats, send: (text) => state.socket.send(text) };

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
  }
}

function showError(text, isNote = false) {
  if (!isNote) stats.errors.push(text);
  const box = $("error");
  box.textContent = text;
  box.classList.toggle("note", isNote);
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 8000);
}

function setStatus(text, pageState) {
  $("status").textContent = text;
  if (pageState) document.body.dataset.state = pageState;
}

// ------------------------------------------------------------- frames

let drawing = Promise.resolve();  // frames are drawn in arrival order

function drawPng(canvas, bytes) {
  return createImageBitmap(new Blob([bytes], { type: "image/png" }))
    .then((bitmap) => {
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      bitmap.close();
    });
}

function unpack(buffer) {
  const size = new DataView(buffer).getUint32(0, false);
  const header = JSON.parse(new TextDecoder().decode(
    new Uint8Array(buffer, 4, size)));
  const parts = {};
  let offset = 4 + size;
  for (const [name, length] of header.parts) {
    parts[name] = new Uint8Array(buffer, offset, length);
    offset += length;
  }
  return [header, parts];
}

function onFrame(header, parts) {
  const now = performance.now();
  stats.frames += 1;
  stats.lastStep = header.step;
  stats.modelMs = header.model_ms;
  if (header.step > 0) {
    stats.imagined += 1;
    stats.arrivals.push(now);
    if (stats.arrivals.length > FPS_WINDOW) stats.arrivals.shift();
    const n = stats.arrivals.length;
    if (n > 1) {
      stats.fps = (n - 1) * 1000 / (stats.arrivals[n - 1] - stats.arrivals[0]);
    }
    addHistory(header.action);
  } else {
    $("history").replaceChildren();
    stats.arrivals = [];
  }
  if (header.seq !== null && state.sent.has(header.seq)) {
    stats.keyMs.push(now - state.sent.get(header.seq));
    if (stats.keyMs.length > 50) stats.keyMs.shift();
    for (const seq of state.sent.keys()) {
      if (seq <= header.seq) state.sent.delete(seq);
    }
  }
  drawing = drawing.then(() => Promise.all([
    drawPng($("imagined"), parts.imagined),
    parts.truth ? drawPng($("truth"), parts.truth) : null,
  ])).then(() => {
    document.body.dataset.drawn = String(stats.frames);
  });
  $("stepinfo").textContent = header.step === 0
    ? "— real start frame" : `t+${header.step}`;
  $("truthcaption").textContent = !parts.truth
    ? "the true episode has ended"
    : header.truth_same_actions ? "true episode, same actions"
    : "true episode, its own actions (T replays them)";
  $("fps").textContent = stats.fps ? stats.fps.toFixed(1) : "–";
  $("modelms").textContent = `${header.model_ms.toFixed(1)} ms`;
  const k = [...stats.keyMs].sort((a, b) => a - b);
  $("keyms").textContent = k.length
    ? `${k[Math.floor(k.length / 2)].toFixed(0)} ms` : "–";
  $("stepcount").textContent = String(header.step);
}

function addHistory(name) {
  stats.lastAction = name;
  const list = $("history");
  const item = document.createElement("li");
  item.textContent = name;
  list.prepend(item);
  while (list.children.length > HISTORY_SHOWN) list.lastChild.remove();
}

function onRecording(header, parts) {
  if (!header.frames) return;
  const link = $("download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([parts.gif], { type: "image/gif" }));
  link.download = `jaxworld-play-episode${state.episode}.gif`;
  link.textContent = `download GIF (${header.frames} frames)`;
  link.hidden = false;
  link.click();
}

// -------------------------------------------------------------- hello

function onHello(hello) {
  state.hello = hello;
  const about = hello.about;
  $("about").textContent = `${about.dynamics_kind} · ${about.format} · ` +
    `${(about.parameters / 1e6).toFixed(2)}M params · ${about.source}`;
  for (const canvas of [$("imagined"), $("truth")]) {
    canvas.width = canvas.height = hello.image_size;
  }
  const thumbs = $("thumbs");
  thumbs.replaceChildren();
  for (const episode of hello.episodes) {
    const img = document.createElement("img");
    img.src = episode.thumbnail;
    img.alt = img.title = `episode ${episode.index}`;
    img.dataset.episode = episode.index;
    img.addEventListener("click", () => start(episode.index));
    thumbs.append(img);
  }
  state.keyOf = {};
  const legend = $("keys");
  legend.replaceChildren();
  hello.actions.forEach((name, i) => {
    const keys = [...(NAMED_KEYS[name] || []), ...(i < 10 ? [String(i)] : [])];
    const entry = document.createElement("span");
    for (const key of keys) {
      state.keyOf[key] = name;
      const kbd = document.createElement("kbd");
      kbd.textContent = key === " " ? "space" : key.replace("Arrow", "");
      entry.append(kbd, " ");
    }
    entry.append(name);
    legend.append(entry);
  });
  setStatus("ready", "ready");
  start(0);
}

function start(episode) {
  state.episode = episode;
  for (const img of $("thumbs").children) {
    img.classList.toggle("current", Number(img.dataset.episode) === episode);
  }
  send({ type: "start", episode });
}

function onStatus(status) {
  state.running = status.running;
  state.recording = status.recording;
  state.trueActions = status.true_actions;
  $("pause").firstChild.textContent = status.running ? "pause " : "resume ";
  $("record").classList.toggle("on", status.recording);
  $("trueactions").classList.toggle("on", status.true_actions);
  setStatus(status.running ? "ready · running" : "ready · paused");
  if (status.note) showError(status.note, true);
}

// --------------------------------------------------------------- input

function sendAction(name, type) {
  state.seq += 1;
  state.sent.set(state.seq, performance.now());
  send({ type, action: name, seq: state.seq });
}

const controls = {
  pause: () => send({ type: state.running ? "pause" : "resume" }),
  step: () => sendAction(state.held.length ? state.keyOf[state.held.at(-1)]
                                           : null, "step"),
  reset: () => send({ type: "reset" }),
  record: () => send({ type: "record", on: !state.recording }),
  trueactions: () => send({ type: "true_actions", on: !state.trueActions }),
  panel: () => $("truthpanel").classList.toggle("hidden"),
  previous: () => start(Math.max(0, state.episode - 1)),
  next: () => start(Math.min(state.hello.episodes.length - 1,
                             state.episode + 1)),
};

function keyName(event) {
  return event.key.length === 1 ? event.key.toLowerCase() : event.key;
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || !state.hello) return;
  const key = keyName(event);
  if (key in state.keyOf) {
    event.preventDefault();
    if (!state.running) {  // paused: each press is one frame
      sendAction(state.keyOf[key], "step");
    } else if (!event.repeat) {
      state.held = state.held.filter((k) => k !== key).concat([key]);
      sendAction(state.keyOf[key], "action");
    }
  } else if (key in CONTROL_KEYS && !event.repeat) {
    event.preventDefault();
    controls[CONTROL_KEYS[key]]();
  }
});

document.addEventListener("keyup", (event) => {
  const key = keyName(event);
  if (!state.held.includes(key)) return;
  state.held = state.held.filter((k) => k !== key);
  if (state.running) {
    sendAction(state.held.length ? state.keyOf[state.held.at(-1)] : null,
               "action");
  }
});

window.addEventListener("blur", () => {  // keys released elsewhere
  if (state.held.length && state.running) sendAction(null, "action");
  state.held = [];
});

for (const [id, control] of Object.entries(controls)) {
  const button = $(id);
  if (button) button.addEventListener("click", () => control());
}

// ----------------------------------------------------------- the socket

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  state.socket = socket;
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      const [header, parts] = unpack(event.data);
      if (header.type === "frame") onFrame(header, parts);
      else if (header.type === "recording") onRecording(header, parts);
      return;
    }
    const message = JSON.parse(event.data);
    if (message.type === "hello") onHello(message);
    else if (message.type === "status") onStatus(message);
    else if (message.type === "error") showError(message.message);
  });
  socket.addEventListener("close", (event) => {
    setStatus(event.code === 1012 ? "server stopped: reload when it is back"
              : "disconnected: reload the page", "closed");
  });
}

connect();
