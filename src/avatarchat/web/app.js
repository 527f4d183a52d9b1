// avatarchat web client: one session with `avatarchat serve`, over WebRTC or a WebSocket.
//
// WebRTC first: the browser sends its microphone (one audio track) and opens a data channel
// named "events"; the server sends the avatar's video and voice and JSON events
// (docs/PROTOCOL.md). When ICE has not connected ICE_FALLBACK_MS after the server's answer,
// or fails before that (UDP blocked by a firewall or NAT), the page closes the peer
// connection and carries the same session over a WebSocket instead (wsclient.js), and says
// so in its status line. `?transport=ws` goes straight to the WebSocket, `?transport=webrtc`
// never falls back. Both carry the same JSON messages, handled here alike. Where the server
// allows it and WebGL2 works, the page draws the avatar itself from the face parameters the
// server sends (avatar/client.js); `?avatar=video` asks for the server's video instead.
// No build step, no framework, standard APIs only (current Chromium and Firefox).
//
// This module owns the session (start, stop, the server's messages) and wires the others:
//   ui.js         elements, banner, status line
//   i18n.js       the page's words in English and Chinese, and which language it shows
//   signaling.js  health, /api/config, the microphone, the peer connection, the offer
//   rtcmedia.js   the WebRTC tracks on the page's media elements
//   wsclient.js   the WebSocket transport (wsaudio.js: its mic capture and reply player)
//   chatlog.js    the conversation log        latency.js  the "Last turn" figures
//   probe.js      envelopes, marks, frames, getStats (what tests and benchmarks read)
//   bargein.js    muting the avatar in the page the moment the user speaks over it
//   avatar/       client mode: the page draws the avatar itself (client.js: which mode,
//                 face.js: the face rows in step with the voice as heard, gl.js: WebGL2)
//   miclevel.js   the microphone's level bar on the Mute button
//
// Tests and `avatarchat bench e2e` read `window.avatarchat` (at the end of this file).
//
// On a cluster (`serve --cluster`: /api/config says `cluster: true`) the session runs on one
// node of many; the page follows its events stream (GET api/session/<id>/events,
// server-sent events) and, when that node stops, ends the session with the server's message
// and a button that starts a new one (the front door places it on a live node).

import { AvatarSlot } from "./avatar/client.js";
import { BargeInGate, settingsFrom } from "./bargein.js";
import { addLine, addTypedLine, finishStreaming, onReply, onTranscript } from "./chatlog.js";
import { browserLanguage, language, queryLanguage, setLanguage, setText, supported, t } from "./i18n.js";
import { showMetrics } from "./latency.js";
import { MicLevel } from "./miclevel.js";
import {
  closeEnvelopes, collectStats, ensureAudioContext, envelope, frameCounts, mark, noteFrame, onTick,
  probe, resetMarks, segments, setHeardGain, videoFps, watchAudio, watchVideo,
} from "./probe.js";
import {
  UserFacingError, accessToken, createPeer, fetchAuthorized, getJSON, iceHeardBack, openMic, postOffer,
  rtcConfigFrom, waitForIceGathering, waitUntilReady,
} from "./signaling.js";
import {
  clearBanner, setAvatarLabel, setBadge, setPlaceholder, setStatus, setVoiceVolume, showBanner,
  showSurface, ui, voiceElement,
} from "./ui.js";
import { clearMedia, playTrack } from "./rtcmedia.js";
import { WsTransport } from "./wsclient.js";

const params = new URLSearchParams(location.search);
// ?raw=1 turns off echo cancellation, noise suppression and gain control, so a test's fake
// microphone file reaches the server unchanged.
const RAW_MIC = params.get("raw") === "1";
// From the answer to a connected peer connection; past this the start counts as failed.
const CONNECT_TIMEOUT_MS = 20000;
// "ws": WebSocket only; "webrtc": WebRTC only (no fallback); otherwise WebRTC, then WebSocket.
const TRANSPORT = ["ws", "webrtc"].includes(params.get("transport")) ? params.get("transport") : "auto";
// ICE on a path that works connects in well under a second (a STUN or TURN round trip or
// two). A page whose connectivity checks have had no answer at all this long after the
// server's answer is behind something that drops UDP: the WebSocket gets it going. One
// that has had answers (UDP passes, the rest is slow) waits out CONNECT_TIMEOUT_MS first.
const ICE_FALLBACK_MS = 5000;
// "video": ask for the server's video even where this browser could draw the avatar itself.
const AVATAR = params.get("avatar") === "video" ? "video" : "auto";
// Asking a full server again after a fallback: every FULL_RETRY_MS, FULL_RETRIES times.
const FULL_RETRY_MS = 2000;
const FULL_RETRIES = 8;
// How long Start waits for the server to say the page's language (i18n.js) before going on
// in the browser's.
const LANGUAGE_WAIT_MS = 2000;

// The page's language: the link's `?lang=`, else the server's (/api/config's `language`,
// asked at once), else the browser's. The fixed texts change when it is known; Start waits
// for it (at most LANGUAGE_WAIT_MS), so that a session speaks one language throughout.
const languageReady = chooseLanguage();

async function chooseLanguage() {
  const asked = queryLanguage();
  if (asked) return setLanguage(asked, "query");
  const browser = browserLanguage();
  setLanguage(browser || "en", browser ? "browser" : "default");
  const answer = getJSON("api/config", { auth: true }).then(followServer, () => {
    /* no server yet, or a link without its token: the browser's language stays */
  });
  await Promise.race([answer, new Promise((r) => setTimeout(r, LANGUAGE_WAIT_MS))]);
}

// The server's config says its language (session.language): the page follows it, unless the
// link asked for one; a language the page lacks leaves it as it is.
function followServer(config) {
  const lang = supported(config?.body?.language);
  if (config?.ok && lang && language().source !== "query") setLanguage(lang, "server");
}

// One session at a time; Stop (or a failure) tears it all down.
const session = {
  transport: null, // what carries the messages: {kind: "webrtc" | "websocket", send(msg), close()}
  pc: null,
  dc: null,
  ws: null, // the WsTransport, when it carries the session
  fallback: null, // why WebRTC was given up for the WebSocket (null: it was not)
  udpBlocked: false, // ... and whether that was for want of any answer over UDP
  fullRetries: 0,
  mic: null, // MediaStream or null (denied, absent, insecure origin)
  micState: "none", // none | on | muted | denied | unavailable
  sessionId: null,
  connection: "idle", // idle | connecting | connected | failed
  conversation: null, // listening | thinking | speaking
  generation: 0, // bumps on every start/stop so stale async steps give up
  pendingText: [], // typed before the data channel opened
  connectTimer: null,
  iceTimer: null,
  cluster: false, // /api/config said the server is a cluster's front door
  events: null, // EventSource of the session's events stream (cluster only)
};

// Who draws the avatar (avatar/client.js); the page's own barge-in closes its mouth.
const avatar = new AvatarSlot({
  prefer: AVATAR,
  volume: () => gate.volume,
  onShown: () => {
    mark("firstFace");
    ui.placeholder.hidden = true;
  },
});

const gate = new BargeInGate((volume) => {
  setVoiceVolume(volume);
  session.ws?.player?.setVolume(volume);
});
setHeardGain(() => {
  if (session.ws) return gate.volume;
  const el = voiceElement();
  return el.muted ? 0 : el.volume;
});
const micLevel = new MicLevel(ui.mute);
onTick((now, levels) => {
  gate.tick(now, levels.mic, levels.heard, levels.remote);
  micLevel.tick(levels.mic);
});

// ---------------------------------------------------------------------------------------
// Indicators

function setConnection(state) {
  session.connection = state;
  setBadge(ui.connection, state);
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
  setBadge(ui.conversation, state);
  gate.onState(state, performance.now());
  if (state !== "speaking") finishStreaming(false);
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
  // The face's rows (~12 messages a second) are the avatar's alone, not kept in the probe.
  if (msg.type === "face") return avatar.onMessage(msg);
  probe.messages.push({ t: performance.now(), dir: "in", msg });
  if (msg.type === "clock") return avatar.onMessage(msg);
  switch (msg.type) {
    case "state":
      setConversation(msg.state);
      break;
    case "transcript":
      onTranscript(msg);
      break;
    case "reply":
      gate.onReply(msg, performance.now());
      onReply(msg);
      break;
    case "metrics":
      showMetrics(msg);
      break;
    case "error":
      addLine("error", null, msg.message || t("error"));
      break;
    default:
      break; // pong and future types
  }
}

function sendMessage(msg) {
  if (!session.transport?.send(msg)) return false;
  probe.messages.push({ t: performance.now(), dir: "out", msg });
  return true;
}

function sendText(text) {
  text = (text || "").trim();
  if (!text) return;
  addTypedLine(text);
  gate.muteNow("text", performance.now()); // a typed message cuts the reply too
  if (!sendMessage({ type: "text", text })) {
    session.pendingText.push(text);
    if (session.connection === "idle" || session.connection === "failed") start();
  }
}

function interrupt() {
  gate.muteNow("interrupt", performance.now());
  if (!sendMessage({ type: "interrupt" })) return;
  finishStreaming(true);
  // The WebSocket's voice queued in this page is dropped at once (WebRTC's is muted).
  session.ws?.flush();
}

// ---------------------------------------------------------------------------------------
// Connecting

const peerEvents = {
  track: playTrack,
  peerState: onPeerState,
  open: onChannelOpen,
  message: onServerMessage,
  close: onChannelClose,
};

function onPeerState(pc) {
  if (pc !== session.pc) return;
  if (pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed") {
    clearTimeout(session.iceTimer);
  }
  const state = pc.connectionState || pc.iceConnectionState;
  if (state === "connected" || state === "completed") {
    clearTimeout(session.connectTimer);
    clearTimeout(session.iceTimer);
    mark("connected");
    if (session.connection !== "connected") setConnection("connected");
    setStatus(t("connectedWebRTC"));
  } else if (state === "failed") {
    if (TRANSPORT === "auto" && session.connection !== "connected") fallBack(t("iceFailed"), true);
    else fail(t("failed"));
  }
}

function onChannelOpen() {
  mark("channelOpen");
  for (const text of session.pendingText.splice(0)) sendMessage({ type: "text", text });
}

function onChannelClose(pc) {
  if (pc !== session.pc) return; // our own Stop
  showBanner(t("closedByServer"), "info");
  teardown("idle");
}

function silentStream() {
  const ctx = ensureAudioContext();
  return ctx && ctx.createMediaStreamDestination ? ctx.createMediaStreamDestination().stream : null;
}

async function start() {
  if (session.connection === "connecting" || session.connection === "connected") return;
  const generation = ++session.generation;
  const stale = () => generation !== session.generation;
  clearBanner();
  resetMarks();
  mark("startClick");
  setConnection("connecting");
  ensureAudioContext(); // inside the click: browsers allow audio started from a gesture
  try {
    await languageReady;
    if (stale()) return;
    if (!(await waitUntilReady(stale))) {
      if (!stale()) teardown("idle");
      return;
    }
    const config = await getJSON("api/config", { auth: true });
    if (!config.ok) throw new UserFacingError(config.body?.error || t("unreachable"));
    followServer(config); // the page may have loaded before the server answered
    session.cluster = config.body.cluster === true;
    gate.configure(settingsFrom(config.body.barge_in));
    const [, { stream: mic, state: micState }] = await Promise.all([
      avatar.choose(config.body.avatar, ui.glCanvas, fetchAuthorized),
      openMic(RAW_MIC),
    ]);
    if (stale()) return mic?.getTracks().forEach((t) => t.stop());
    session.mic = mic;
    session.micState = micState;
    if (mic) {
      mark("micOpen");
      watchAudio("mic", mic);
    }
    if (TRANSPORT === "ws") connectWebSocket();
    else await connectWebRTC(rtcConfigFrom(config.body), mic, stale);
  } catch (err) {
    if (stale()) return;
    if (err instanceof UserFacingError) fail(err.message);
    else if (err instanceof TypeError) fail(t("unreachable"));
    else fail(t("couldNotConnect", { error: err?.message || err }));
  }
}

async function connectWebRTC(rtcConfig, mic, stale) {
  // Without a microphone the page sends silence: the server expects a live audio track.
  const { pc, dc } = createPeer(rtcConfig, mic || silentStream(), peerEvents);
  session.pc = pc;
  session.dc = dc;
  session.transport = {
    kind: "webrtc",
    send: (msg) => dc.readyState === "open" && (dc.send(JSON.stringify(msg)), true),
    close: () => {
      dc.close();
      pc.close();
    },
  };
  setStatus(t("connectingWebRTC"));
  watchVideo(ui.video);
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  if (stale()) return;
  mark("offerSent");
  const answer = await postOffer(pc, avatar.ask);
  if (stale()) return;
  session.sessionId = answer.session_id || null;
  if (session.cluster && session.sessionId) followSessionEvents(session.sessionId);
  await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
  mark("answered");
  useAvatar(answer.avatar === "client" ? "client" : "video", { pc });
  if (TRANSPORT === "auto") {
    session.iceTimer = setTimeout(async () => {
      const heard = await iceHeardBack(pc);
      if (!heard && !stale() && session.pc === pc) fallBack(t("noUdpAnswer", { s: ICE_FALLBACK_MS / 1000 }), true);
    }, ICE_FALLBACK_MS);
  }
  session.connectTimer = setTimeout(() => {
    if (stale() || session.connection === "connected") return;
    if (TRANSPORT === "auto") fallBack(t("notConnectedIn", { s: CONNECT_TIMEOUT_MS / 1000 }), false);
    else fail(t("failed"));
  }, CONNECT_TIMEOUT_MS);
}

// Cluster mode: the front door tells the page when the node running its session stops
// (`{"type": "error", "message"}`); the page ends the session and offers a new one.
function followSessionEvents(sessionId) {
  if (!window.EventSource) return;
  const token = accessToken();
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  const source = new EventSource(`api/session/${encodeURIComponent(sessionId)}/events${query}`);
  session.events = source;
  source.addEventListener("message", (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (session.events !== source) return;
    probe.messages.push({ t: performance.now(), dir: "in", msg: { ...msg, via: "events" } });
    if (msg.type === "error") {
      const message = t("serverEnded", { reason: msg.message || t("error") });
      addLine("error", null, msg.message || t("error"));
      teardown("failed");
      showBanner(message);
      offerReconnect();
    } else if (msg.type === "closed") {
      closeSessionEvents();
    }
  });
  // EventSource retries a dropped stream by itself; a refused one (4xx) stays closed.
}

function closeSessionEvents() {
  const source = session.events;
  session.events = null;
  source?.close();
}

// A button in the banner that starts a new session (Start does the same).
function offerReconnect() {
  let button = document.getElementById("banner-reconnect");
  if (!button) {
    button = document.createElement("button");
    button.id = "banner-reconnect";
    button.type = "button";
    button.addEventListener("click", () => {
      clearBanner();
      start();
    });
    ui.bannerClose.before(button);
  }
  setText(button, "start");
  button.hidden = false;
}

// WebRTC could not connect: the peer connection goes (the server drops its half when its
// connect timeout passes) and the session starts again over the WebSocket, same microphone.
function fallBack(why, udpBlocked) {
  const { pc, dc } = session;
  if (!pc || session.connection === "connected") return;
  clearTimeout(session.iceTimer);
  clearTimeout(session.connectTimer);
  session.pc = session.dc = session.transport = null; // its close events are no longer ours
  dc.close();
  pc.close();
  clearMedia();
  stopAvatar();
  session.fallback = why;
  session.udpBlocked = udpBlocked;
  mark("fallback");
  setStatus(t("fallingBack"));
  addLine("system", null, t("switchingToWebSocket", { why }));
  connectWebSocket();
}

function connectWebSocket() {
  const ctx = ensureAudioContext();
  if (!ctx?.audioWorklet || !window.WebSocket) return fail(t("noWebSocket"));
  if (!session.fallback) setStatus(t("connectingWebSocket"));
  const ours = () => session.ws === transport;
  const transport = new WsTransport({
    token: accessToken(),
    ctx,
    mic: session.mic,
    canvas: ui.canvas,
    video: avatar.ask === "client" ? "params" : "jpeg",
    on: {
      hello: (hello) => ours() && onSocketHello(hello),
      message: (text) => ours() && onServerMessage(text),
      frame: (now) => {
        if (!ours()) return;
        noteFrame(now);
        ui.placeholder.hidden = true;
      },
      voice: (player) => {
        if (!ours()) return;
        watchAudio("remote", player.input);
        player.setVolume(gate.volume);
      },
      close: (info) => ours() && onSocketClose(info),
      micError: (err) => showBanner(t("micSendError", { error: err?.message || err })),
    },
  });
  session.ws = session.transport = transport;
  showSurface("frames");
  clearTimeout(session.connectTimer);
  session.connectTimer = setTimeout(() => {
    if (ours() && !transport.open) fail(t(session.fallback ? "fallbackFailed" : "webSocketFailed"));
  }, CONNECT_TIMEOUT_MS);
}

function onSocketHello(hello) {
  clearTimeout(session.connectTimer);
  session.sessionId = hello.session || null;
  useAvatar(hello.video === "params" ? "client" : "video", { player: session.ws.player });
  mark("connected");
  mark("channelOpen");
  setConnection("connected");
  if (!session.fallback) setStatus(t("connectedWebSocket"));
  else setStatus(t(session.udpBlocked ? "connectedNoUdp" : "connectedFallback"));
  for (const text of session.pendingText.splice(0)) sendMessage({ type: "text", text });
}

async function onSocketClose({ code, reason, opened }) {
  if (opened) {
    showBanner(reason ? t("serverEnded", { reason }) : t("closedByServer"), "info");
    teardown("idle");
    return;
  }
  // A refused upgrade (full, not ready) is an HTTP answer the browser does not show to the
  // page: /healthz's session count tells the commonest case apart.
  const transport = session.ws;
  const health = await getJSON("healthz").catch(() => null);
  if (session.ws !== transport) return;
  const counts = health?.body;
  const full = counts && counts.sessions >= counts.max_sessions;
  // After a fallback the server still counts the abandoned WebRTC attempt until its connect
  // timeout (server.connect_timeout_s) lets it go: a full server is asked again meanwhile.
  if (full && session.fallback && session.fullRetries++ < FULL_RETRIES) {
    setTimeout(() => session.ws === transport && connectWebSocket(), FULL_RETRY_MS);
  } else if (full) fail(t("full"));
  else if (reason) fail(t("webSocketRefused", { reason }));
  else fail(t("withCode", { message: t(session.fallback ? "fallbackFailed" : "webSocketFailed"), code }));
}

function fail(message) {
  showBanner(message);
  addLine("system", null, t("notConnected"));
  teardown("failed");
}

function stop() {
  if (session.connection === "idle") return;
  teardown("idle");
  addLine("system", null, t("sessionEnded"));
}

function teardown(state) {
  session.generation++;
  clearTimeout(session.connectTimer);
  clearTimeout(session.iceTimer);
  const { transport, mic } = session;
  session.transport = session.pc = session.dc = session.ws = session.mic = null;
  session.pendingText = [];
  session.sessionId = null;
  session.fallback = null;
  session.udpBlocked = false;
  session.fullRetries = 0;
  closeSessionEvents();
  const reconnect = document.getElementById("banner-reconnect");
  if (reconnect) reconnect.hidden = true;
  transport?.close();
  if (mic) mic.getTracks().forEach((t) => t.stop());
  closeEnvelopes();
  micLevel.reset();
  clearMedia();
  stopAvatar();
  ui.placeholder.hidden = false;
  showSurface("video");
  setStatus("");
  setMuted(false);
  // The mic is released: "on"/"muted" no longer hold ("denied" stays, for the banner).
  if (session.micState === "on" || session.micState === "muted") session.micState = "none";
  finishStreaming(false);
  setConnection(state);
  gate.reset(performance.now());
}

// The server's answer says who draws the avatar: `mode` "client" (this page, from the face
// rows) or "video". `transport`: {pc} or {player} (the WebSocket's reply player).
function useAvatar(mode, transport) {
  const shown = avatar.use(mode, transport);
  showSurface(shown.surface);
  setAvatarLabel(shown.label);
  if (shown.cannotDraw) {
    showBanner(t("cannotDraw", { why: shown.cannotDraw }), "info");
    setPlaceholder(t("voiceOnly"));
  }
}

function stopAvatar() {
  avatar.stop();
  setAvatarLabel(null);
  setPlaceholder(null);
}

function setMuted(muted) {
  const track = session.mic?.getAudioTracks()[0];
  if (track) track.enabled = !muted;
  if (session.mic) session.micState = muted ? "muted" : "on";
  ui.mute.setAttribute("aria-pressed", String(muted));
  setText(ui.mute, muted ? "unmuteMic" : "muteMic");
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
window.addEventListener("pagehide", () => teardown("idle"));

languageReady.then(() => {
  if (!window.isSecureContext || !navigator.mediaDevices) showBanner(t("insecure"), "info");
});

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
    transport: session.transport?.kind || null, // "webrtc" | "websocket"
    fallback: session.fallback, // why WebRTC was given up, or null
    status: ui.status.textContent,
    retries: session.fullRetries, // WebSockets a full server refused after the fallback
    avatar: avatar.mode, // "client" (drawn in the page) | "video" | null (none)
    cluster: session.cluster, // the server is a cluster's front door
    events: session.events ? ["connecting", "open", "closed"][session.events.readyState] : null,
  }),
  messages: probe.messages,
  marks: () => ({ ...probe.marks }),
  // getStats figures over WebRTC; the same shape, from the page's own counts, over WebSocket.
  stats: async () => (session.ws ? { ...session.ws.stats(), rvfc: frameCounts() } : collectStats(session.pc)),
  frames: () => ({ count: probe.frames.count, fps: videoFps(), times: probe.frames.times.slice() }),
  // "mic", "remote" (the avatar's voice arriving) or "heard" (remote × playback volume).
  envelope,
  segments,
  // The page-side barge-in gate: settings, mode, its mute/hold/open events, volume changes.
  bargeIn: () => gate.snapshot(),
  // The Mute button's level bar: now, and the highest since Start.
  micLevel: () => micLevel.snapshot(),
  now: () => performance.now(),
  // The page's language: {lang: "en" | "zh", source: "query" | "server" | "browser" | "default"}.
  language,
  // Client mode (avatar/client.js): avatar(), faceFrames(since), faceAt(h), syncSources().
  ...avatar.hooks(() => (ui.avatarMode.hidden ? null : ui.avatarMode.textContent)),
};
