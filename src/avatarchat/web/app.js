// avatarchat web client: one WebRTC session with `avatarchat serve`.
//
// The browser sends its microphone (one audio track) and opens a data channel named
// "events"; the server sends the avatar's video and voice and JSON events (docs/PROTOCOL.md).
// No build step, no framework, standard APIs only (current Chromium and Firefox).
//
// Tests and `avatarchat bench e2e` read `window.avatarchat`: every data-channel message
// with its arrival time, getStats figures, video frame counts, and audio envelopes of the
// outgoing microphone and the incoming voice, all in this page's performance.now() clock.

const params = new URLSearchParams(location.search);
// ?raw=1 turns off echo cancellation, noise suppression and gain control, so a test's fake
// microphone file reaches the server unchanged.
const RAW_MIC = params.get("raw") === "1";
// No trickle ICE over HTTP: the offer is posted once gathering is complete, or after this.
const ICE_GATHER_TIMEOUT_MS = 5000;
// From the answer to a connected peer connection; past this the start counts as failed.
const CONNECT_TIMEOUT_MS = 20000;
// How long Start waits for a server that is still loading its models.
const LOADING_WAIT_MS = 180000;
// Envelope sampling period and how much of it is kept (at 10 ms: 10 minutes).
const ENVELOPE_PERIOD_MS = 10;
const ENVELOPE_MAX_POINTS = 60000;

const MESSAGES = {
  micDenied: "Microphone access was denied — allow it in the browser's site settings, or type below.",
  noMic: "No microphone was found — you can type below.",
  insecure:
    "The microphone needs a secure page: open this page over https:// (start the server with " +
    "--self-signed, or give it a certificate and key), or as http://localhost on the server's own " +
    "machine. You can still type below.",
  loading: "The server is still loading its models — connecting as soon as it is ready…",
  loadingGaveUp: "The server is still loading its models — try again in a few seconds.",
  full: "The server is full — try again later.",
  failed:
    "Connection failed — the browser could not reach the server's media port. Across networks the " +
    "server may need a STUN or TURN server (server.ice_servers in its config).",
  unreachable: "Cannot reach the server — is `avatarchat serve` running?",
  closedByServer: "The server ended the session (it was idle or the server stopped). Press Start to talk again.",
};

// Known timings first, in this order; other keys follow with a label made from the key.
const METRIC_LABELS = [
  ["first_audio_after_speech_end_ms", "You stopped → first audio"],
  ["first_audio_sent_ms", "First audio sent"],
  ["first_frame_sent_ms", "First frame sent"],
  ["vad_hangover_ms", "End-of-speech wait"],
  ["asr_early_ms", "Speech recognition (at the pause)"],
  ["asr_ms", "Speech recognition left at the end"],
  ["llm_first_token_ms", "LLM first token"],
  ["tts_first_audio_ms", "TTS first audio"],
  ["avatar_first_frame_ms", "Avatar first frame"],
  ["first_audio_after_asr_ms", "ASR start → first audio"],
];
const KEY_METRICS = ["first_audio_after_speech_end_ms", "first_audio_sent_ms"];

const $ = (id) => document.getElementById(id);
const ui = {
  connection: $("connection"),
  conversation: $("conversation"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerClose: $("banner-close"),
  video: $("avatar-video"),
  audio: $("avatar-audio"),
  placeholder: $("placeholder"),
  start: $("start"),
  stop: $("stop"),
  mute: $("mute"),
  interrupt: $("interrupt"),
  log: $("log"),
  composer: $("composer"),
  text: $("text"),
  send: $("send"),
  metrics: $("metrics"),
  metricsTurn: $("metrics-turn"),
  metricsEmpty: $("metrics-empty"),
};

// ---------------------------------------------------------------------------------------
// Session state. One session at a time; Stop (or a failure) tears it all down.

const session = {
  pc: null,
  dc: null,
  mic: null, // MediaStream or null (denied, absent, insecure origin)
  micState: "none", // none | on | muted | denied | unavailable
  sessionId: null,
  connection: "idle", // idle | connecting | connected | failed
  conversation: null, // listening | thinking | speaking
  generation: 0, // bumps on every start/stop so stale async steps give up
  pendingText: [], // typed before the data channel opened
  connectTimer: null,
};

const probe = {
  messages: [], // {t, dir: "in" | "out", msg}
  marks: {}, // name -> performance.now()
  frames: { count: 0, times: [] }, // requestVideoFrameCallback arrivals (last 600 kept)
  envelopes: {}, // "mic" | "remote" -> Envelope
};

let audioCtx = null;
let envelopeTimer = null;

function mark(name) {
  if (!(name in probe.marks)) probe.marks[name] = performance.now();
}

// ---------------------------------------------------------------------------------------
// Indicators and banner

function setConnection(state) {
  session.connection = state;
  ui.connection.dataset.state = state;
  ui.connection.querySelector(".badge-text").textContent = state;
  const live = state === "connecting" || state === "connected";
  ui.start.disabled = live;
  ui.stop.disabled = !live;
  ui.mute.disabled = !(state === "connected" && session.mic);
  ui.interrupt.disabled = state !== "connected";
  if (state !== "connected") setConversation(null);
}

function setConversation(state) {
  session.conversation = state;
  ui.conversation.hidden = !state;
  ui.conversation.dataset.state = state || "";
  ui.conversation.querySelector(".badge-text").textContent = state || "";
  if (state !== "speaking") finishStreaming(false);
}

function showBanner(text, kind = "error") {
  ui.bannerText.textContent = text;
  ui.banner.dataset.kind = kind;
  ui.banner.hidden = false;
}

function clearBanner() {
  ui.banner.hidden = true;
  ui.bannerText.textContent = "";
}

// ---------------------------------------------------------------------------------------
// Chat log: one user line and one avatar line per turn, updated in place.

const turns = new Map(); // turn -> {user, avatar}
let typedLines = []; // user lines typed here and not yet matched to a server turn

function turnEntry(turn) {
  if (!turns.has(turn)) turns.set(turn, { user: null, avatar: null });
  return turns.get(turn);
}

function addLine(kind, who, text) {
  const li = document.createElement("li");
  li.className = `msg ${kind}`;
  if (who) {
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = who;
    li.append(label);
  }
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  li.append(body);
  const atBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
  ui.log.append(li);
  if (atBottom) ui.log.scrollTop = ui.log.scrollHeight;
  return li;
}

function setBody(li, text) {
  li.querySelector(".body").textContent = text;
  ui.log.scrollTop = ui.log.scrollHeight;
}

function onTranscript({ turn, text, final }) {
  const entry = turnEntry(turn);
  if (!entry.user) {
    // A typed message comes back as this turn's transcript: reuse its line.
    const i = typedLines.findIndex((li) => sameText(li.dataset.text, text));
    entry.user = i >= 0 ? typedLines.splice(i, 1)[0] : addLine("user", "You", text);
  }
  entry.user.dataset.turn = turn;
  entry.user.classList.toggle("partial", !final);
  setBody(entry.user, text);
}

// A reply cut off (barge-in, interrupt, a typed message) comes once more with
// `interrupted: true` and the words the user heard: they replace what was streamed.
function onReply({ turn, text, final, interrupted }) {
  const entry = turnEntry(turn);
  if (!entry.avatar) {
    entry.avatar = addLine("avatar streaming", "Avatar", "");
    entry.avatar.dataset.turn = turn;
    // Typed lines the server never echoed belong to this turn.
    if (!entry.user && typedLines.length) entry.user = typedLines.shift();
  }
  const li = entry.avatar;
  if (final) {
    setBody(li, text);
    li.classList.remove("streaming");
    li.classList.toggle("interrupted", Boolean(interrupted));
    li.dataset.final = "1";
  } else {
    setBody(li, li.querySelector(".body").textContent + text);
  }
}

function finishStreaming(interrupted) {
  for (const li of ui.log.querySelectorAll(".msg.streaming")) {
    li.classList.remove("streaming");
    if (interrupted) li.classList.add("interrupted");
  }
}

function sameText(a, b) {
  const norm = (s) => (s || "").toLowerCase().replace(/[^\p{L}\p{N}]+/gu, " ").trim();
  return norm(a) === norm(b);
}

// ---------------------------------------------------------------------------------------
// Latency figures from the "metrics" message

function metricLabel(key) {
  const known = METRIC_LABELS.find(([k]) => k === key);
  if (known) return known[1];
  const words = key.replace(/_ms$/, "").replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function formatValue(key, value) {
  if (typeof value !== "number") return String(value);
  if (!key.endsWith("_ms")) return String(Math.round(value * 100) / 100);
  return value >= 10 ? `${Math.round(value)} ms` : `${value.toFixed(1)} ms`;
}

function onMetrics(msg) {
  const keys = Object.keys(msg).filter((k) => k !== "type" && k !== "turn");
  const order = METRIC_LABELS.map(([k]) => k);
  keys.sort((a, b) => {
    const ia = order.indexOf(a), ib = order.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  ui.metrics.replaceChildren();
  ui.metricsEmpty.hidden = true;
  for (const key of keys) {
    const item = document.createElement("div");
    item.className = KEY_METRICS.includes(key) ? "metric key" : "metric";
    item.dataset.key = key;
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = metricLabel(key);
    dd.textContent = formatValue(key, msg[key]);
    item.append(dt, dd);
    ui.metrics.append(item);
  }
  ui.metricsTurn.textContent = msg.turn != null ? `(turn ${msg.turn})` : "";
}

// ---------------------------------------------------------------------------------------
// Data channel messages

function onServerMessage(raw) {
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch {
    return;
  }
  probe.messages.push({ t: performance.now(), dir: "in", msg });
  switch (msg.type) {
    case "state":
      setConversation(msg.state);
      break;
    case "transcript":
      onTranscript(msg);
      break;
    case "reply":
      onReply(msg);
      break;
    case "metrics":
      onMetrics(msg);
      break;
    case "error":
      addLine("error", null, msg.message || "error");
      break;
    default:
      break; // pong and future types
  }
}

function sendMessage(msg) {
  if (!session.dc || session.dc.readyState !== "open") return false;
  session.dc.send(JSON.stringify(msg));
  probe.messages.push({ t: performance.now(), dir: "out", msg });
  return true;
}

function sendText(text) {
  text = (text || "").trim();
  if (!text) return;
  const li = addLine("user", "You (typed)", text);
  li.dataset.text = text;
  typedLines.push(li);
  if (!sendMessage({ type: "text", text })) {
    session.pendingText.push(text);
    if (session.connection === "idle" || session.connection === "failed") start();
  }
}

function interrupt() {
  if (sendMessage({ type: "interrupt" })) finishStreaming(true);
}

// ---------------------------------------------------------------------------------------
// Audio analysis: an AnalyserNode per stream, sampled every 10 ms into an RMS envelope.

class Envelope {
  constructor(ctx, stream) {
    this.source = ctx.createMediaStreamSource(stream);
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 512;
    this.buffer = new Float32Array(this.analyser.fftSize);
    // Connected through a silent gain so every browser keeps pulling the analyser.
    this.sink = ctx.createGain();
    this.sink.gain.value = 0;
    this.source.connect(this.analyser).connect(this.sink).connect(ctx.destination);
    this.t = [];
    this.rms = [];
  }

  sample(now) {
    this.analyser.getFloatTimeDomainData(this.buffer);
    let sum = 0;
    for (const x of this.buffer) sum += x * x;
    this.t.push(now);
    this.rms.push(Math.sqrt(sum / this.buffer.length));
    if (this.t.length > ENVELOPE_MAX_POINTS) {
      this.t.splice(0, this.t.length - ENVELOPE_MAX_POINTS);
      this.rms.splice(0, this.rms.length - ENVELOPE_MAX_POINTS);
    }
  }

  close() {
    this.source.disconnect();
    this.sink.disconnect();
  }

  // Voiced stretches: RMS above `threshold`, gaps shorter than `hangoverMs` bridged.
  segments({ threshold = 0.01, hangoverMs = 300, minMs = 50 } = {}) {
    const out = [];
    let cur = null;
    for (let i = 0; i < this.t.length; i++) {
      const t = this.t[i], loud = this.rms[i] >= threshold;
      if (loud) {
        if (cur && t - cur.end <= hangoverMs) {
          cur.end = t;
          cur.peak = Math.max(cur.peak, this.rms[i]);
        } else {
          if (cur) out.push(cur);
          cur = { start: t, end: t, peak: this.rms[i] };
        }
      }
    }
    if (cur) out.push(cur);
    return out.filter((s) => s.end - s.start >= minMs);
  }
}

function ensureAudioContext() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return null;
  if (!audioCtx) audioCtx = new Ctx();
  audioCtx.resume().catch(() => {});
  if (!envelopeTimer) {
    envelopeTimer = setInterval(() => {
      const now = performance.now();
      for (const env of Object.values(probe.envelopes)) env.sample(now);
    }, ENVELOPE_PERIOD_MS);
  }
  return audioCtx;
}

function watchAudio(name, stream) {
  const ctx = ensureAudioContext();
  if (!ctx) return;
  probe.envelopes[name]?.close();
  probe.envelopes[name] = new Envelope(ctx, stream);
}

// ---------------------------------------------------------------------------------------
// Video frame counting

function watchVideo() {
  const video = ui.video;
  const onFrame = (now) => {
    mark("firstFrame");
    probe.frames.count++;
    probe.frames.times.push(now);
    if (probe.frames.times.length > 600) probe.frames.times.shift();
    video.requestVideoFrameCallback(onFrame);
  };
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    video.requestVideoFrameCallback(onFrame);
  } else {
    video.addEventListener("loadeddata", () => mark("firstFrame"), { once: true });
  }
}

function videoFps(windowMs = 3000) {
  const times = probe.frames.times;
  if (times.length < 2) return 0;
  const last = times[times.length - 1];
  const inWindow = times.filter((t) => t >= last - windowMs);
  if (inWindow.length < 2) return 0;
  return ((inWindow.length - 1) * 1000) / (last - inWindow[0]);
}

async function collectStats() {
  const out = { video: null, audio: null, mic: null, rttMs: null };
  if (!session.pc) return out;
  const report = await session.pc.getStats();
  const codecs = {};
  report.forEach((r) => {
    if (r.type === "codec") codecs[r.id] = r.mimeType;
  });
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      out.video = {
        codec: codecs[r.codecId] || null,
        framesDecoded: r.framesDecoded ?? 0,
        framesDropped: r.framesDropped ?? 0,
        framesPerSecond: r.framesPerSecond ?? null,
        frameWidth: r.frameWidth ?? null,
        frameHeight: r.frameHeight ?? null,
        packetsLost: r.packetsLost ?? 0,
        jitterBufferDelay: r.jitterBufferDelay ?? null,
        jitterBufferEmittedCount: r.jitterBufferEmittedCount ?? null,
      };
    } else if (r.type === "inbound-rtp" && r.kind === "audio") {
      out.audio = {
        codec: codecs[r.codecId] || null,
        totalSamplesReceived: r.totalSamplesReceived ?? 0,
        concealedSamples: r.concealedSamples ?? 0,
        audioLevel: r.audioLevel ?? null,
        packetsLost: r.packetsLost ?? 0,
        jitterBufferDelay: r.jitterBufferDelay ?? null,
        jitterBufferEmittedCount: r.jitterBufferEmittedCount ?? null,
      };
    } else if (r.type === "outbound-rtp" && r.kind === "audio") {
      out.mic = { packetsSent: r.packetsSent ?? 0, bytesSent: r.bytesSent ?? 0 };
    } else if (r.type === "candidate-pair" && r.nominated && r.currentRoundTripTime != null) {
      out.rttMs = r.currentRoundTripTime * 1000;
    }
  });
  out.rvfc = { frames: probe.frames.count, fps: videoFps() };
  return out;
}

// ---------------------------------------------------------------------------------------
// Connecting

async function getJSON(path) {
  const resp = await fetch(path, { cache: "no-store" });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    /* not JSON */
  }
  return { status: resp.status, ok: resp.ok, body };
}

// Waits while /healthz says the models are still loading; false if Stop or time ran out.
async function waitUntilReady(generation) {
  const deadline = performance.now() + LOADING_WAIT_MS;
  let announced = false;
  for (;;) {
    const health = await getJSON("healthz");
    if (generation !== session.generation) return false;
    if (health.ok) {
      if (announced) clearBanner();
      return true;
    }
    if (health.status !== 503) throw new Error(health.body?.error || `health check: HTTP ${health.status}`);
    if (!announced) showBanner(MESSAGES.loading, "info");
    announced = true;
    if (performance.now() > deadline) {
      showBanner(MESSAGES.loadingGaveUp);
      return false;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function openMic() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    session.micState = "unavailable";
    showBanner(MESSAGES.insecure);
    return null;
  }
  const processing = !RAW_MIC;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        echoCancellation: processing,
        noiseSuppression: processing,
        autoGainControl: processing,
        channelCount: 1,
      },
    });
    session.micState = "on";
    return stream;
  } catch (err) {
    const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError" || err.name === "PermissionDeniedError");
    session.micState = denied ? "denied" : "unavailable";
    if (denied) showBanner(MESSAGES.micDenied);
    else if (err && (err.name === "NotFoundError" || err.name === "OverconstrainedError")) showBanner(MESSAGES.noMic);
    else showBanner(`Could not open the microphone (${err?.name || "error"}: ${err?.message || err}) — you can type below.`);
    return null;
  }
}

function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

function silentStream() {
  const ctx = ensureAudioContext();
  return ctx && ctx.createMediaStreamDestination ? ctx.createMediaStreamDestination().stream : null;
}

function iceServersFrom(config) {
  return (config?.ice_servers || []).map((s) => {
    const server = { urls: s.urls };
    if (s.username != null) server.username = s.username;
    if (s.credential != null) server.credential = s.credential;
    return server;
  });
}

function createPeer(iceServers, mic) {
  const pc = new RTCPeerConnection({ iceServers });
  // Without a microphone the page sends silence: the server expects a live audio track
  // (it takes a connection that sends no audio for a vanished client).
  const outgoing = mic || silentStream();
  const track = outgoing?.getAudioTracks()[0];
  if (track) pc.addTransceiver(track, { direction: "sendrecv", streams: [outgoing] });
  else pc.addTransceiver("audio", { direction: "sendrecv" });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addEventListener("track", onTrack);
  pc.addEventListener("connectionstatechange", () => onPeerState(pc));
  pc.addEventListener("iceconnectionstatechange", () => onPeerState(pc));

  const dc = pc.createDataChannel("events");
  dc.addEventListener("open", onChannelOpen);
  dc.addEventListener("message", (ev) => onServerMessage(ev.data));
  dc.addEventListener("close", () => onChannelClose(pc));
  session.pc = pc;
  session.dc = dc;
  return pc;
}

function onTrack(ev) {
  if (ev.track.kind === "audio") watchAudio("remote", new MediaStream([ev.track]));
  const shared = ev.streams && ev.streams[0];
  if (shared) {
    // The server sends audio and video in one stream: played by one element, the browser's
    // lip-sync aligns them by their RTP/RTCP timestamps (separate elements would drift).
    if (ui.video.srcObject !== shared) ui.video.srcObject = shared;
    ui.video.muted = false;
    if (ev.track.kind === "video") ui.placeholder.hidden = true;
    play(ui.video);
    return;
  }
  const stream = new MediaStream([ev.track]);
  if (ev.track.kind === "video") {
    ui.video.srcObject = stream;
    ui.placeholder.hidden = true;
    play(ui.video);
  } else if (ev.track.kind === "audio") {
    ui.audio.srcObject = stream;
    play(ui.audio);
  }
}

function play(el) {
  el.play().catch(() => {
    // Autoplay was refused (no user gesture reached this point): ask for one click.
    showBanner("Click anywhere on the page to hear the avatar.", "info");
    document.addEventListener(
      "click",
      () => {
        el.play().catch(() => {});
        clearBanner();
      },
      { once: true },
    );
  });
}

function onPeerState(pc) {
  if (pc !== session.pc) return;
  const state = pc.connectionState || pc.iceConnectionState;
  if (state === "connected" || state === "completed") {
    clearTimeout(session.connectTimer);
    mark("connected");
    if (session.connection !== "connected") setConnection("connected");
  } else if (state === "failed") {
    fail(MESSAGES.failed);
  }
}

function onChannelOpen() {
  mark("channelOpen");
  for (const text of session.pendingText.splice(0)) sendMessage({ type: "text", text });
}

function onChannelClose(pc) {
  if (pc !== session.pc) return; // our own Stop
  showBanner(MESSAGES.closedByServer, "info");
  teardown("idle");
}

async function postOffer(pc) {
  const resp = await fetch("api/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
  });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    /* not JSON */
  }
  if (!resp.ok) {
    const message = capitalize(body?.error);
    if (resp.status === 503) throw new UserFacingError(message || MESSAGES.full);
    throw new UserFacingError(`The server refused the connection: ${message || `HTTP ${resp.status}`}`);
  }
  return body;
}

class UserFacingError extends Error {}

function capitalize(text) {
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
}

async function start() {
  if (session.connection === "connecting" || session.connection === "connected") return;
  const generation = ++session.generation;
  const stale = () => generation !== session.generation;
  clearBanner();
  probe.marks = {};
  probe.frames = { count: 0, times: [] };
  mark("startClick");
  setConnection("connecting");
  ensureAudioContext(); // inside the click: browsers allow audio started from a gesture
  try {
    if (!(await waitUntilReady(generation))) {
      if (!stale()) teardown("idle");
      return;
    }
    const config = await getJSON("api/config");
    if (!config.ok) throw new UserFacingError(config.body?.error || MESSAGES.unreachable);
    const mic = await openMic();
    if (stale()) return mic?.getTracks().forEach((t) => t.stop());
    session.mic = mic;
    if (mic) {
      mark("micOpen");
      watchAudio("mic", mic);
    }
    const pc = createPeer(iceServersFrom(config.body), mic);
    watchVideo();
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (stale()) return;
    mark("offerSent");
    const answer = await postOffer(pc);
    if (stale()) return;
    session.sessionId = answer.session_id || null;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    mark("answered");
    session.connectTimer = setTimeout(() => {
      if (!stale() && session.connection !== "connected") fail(MESSAGES.failed);
    }, CONNECT_TIMEOUT_MS);
  } catch (err) {
    if (stale()) return;
    if (err instanceof UserFacingError) fail(err.message);
    else if (err instanceof TypeError) fail(MESSAGES.unreachable);
    else fail(`Could not connect: ${err?.message || err}`);
  }
}

function fail(message) {
  showBanner(message);
  addLine("system", null, "Not connected.");
  teardown("failed");
}

function stop() {
  if (session.connection === "idle") return;
  teardown("idle");
  addLine("system", null, "Session ended.");
}

function teardown(state) {
  session.generation++;
  clearTimeout(session.connectTimer);
  const { pc, dc, mic } = session;
  session.pc = session.dc = session.mic = null;
  session.pendingText = [];
  session.sessionId = null;
  if (dc) dc.close();
  if (pc) pc.close();
  if (mic) mic.getTracks().forEach((t) => t.stop());
  for (const env of Object.values(probe.envelopes)) env.close();
  ui.video.srcObject = null;
  ui.audio.srcObject = null;
  ui.placeholder.hidden = false;
  setMuted(false);
  finishStreaming(false);
  setConnection(state);
}

function setMuted(muted) {
  const track = session.mic?.getAudioTracks()[0];
  if (track) track.enabled = !muted;
  if (session.mic) session.micState = muted ? "muted" : "on";
  ui.mute.setAttribute("aria-pressed", String(muted));
  ui.mute.textContent = muted ? "Unmute mic" : "Mute mic";
}

// ---------------------------------------------------------------------------------------
// Wiring

ui.start.addEventListener("click", () => start());
ui.stop.addEventListener("click", () => stop());
ui.mute.addEventListener("click", () => setMuted(ui.mute.getAttribute("aria-pressed") !== "true"));
ui.interrupt.addEventListener("click", () => interrupt());
ui.bannerClose.addEventListener("click", () => clearBanner());
ui.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = ui.text.value;
  ui.text.value = "";
  sendText(text);
});
ui.text.disabled = false;
ui.send.disabled = false;
ui.text.placeholder = "Type a message";
window.addEventListener("pagehide", () => teardown("idle"));

if (!window.isSecureContext || !navigator.mediaDevices) showBanner(MESSAGES.insecure, "info");

// Measurement hooks for tests and `avatarchat bench e2e` (all times: performance.now()).
window.avatarchat = {
  start,
  stop,
  sendText,
  interrupt,
  setMuted,
  state: () => ({
    connection: session.connection,
    conversation: session.conversation,
    sessionId: session.sessionId,
    mic: session.micState,
    dataChannel: session.dc?.readyState || null,
    banner: ui.banner.hidden ? null : ui.bannerText.textContent,
  }),
  messages: probe.messages,
  marks: () => ({ ...probe.marks }),
  stats: collectStats,
  frames: () => ({ count: probe.frames.count, fps: videoFps(), times: probe.frames.times.slice() }),
  envelope: (name) => {
    const env = probe.envelopes[name];
    return env ? { t: env.t.slice(), rms: env.rms.slice() } : { t: [], rms: [] };
  },
  segments: (name, options) => probe.envelopes[name]?.segments(options) || [],
  now: () => performance.now(),
};
