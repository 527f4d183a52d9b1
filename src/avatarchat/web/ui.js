// The page's fixed elements, its user-facing messages, the state badges' DOM and the banner.
// Every other module reaches the DOM through `ui` so that element ids live in one place.

export const $ = (id) => document.getElementById(id);

export const ui = {
  connection: $("connection"),
  conversation: $("conversation"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerClose: $("banner-close"),
  video: $("avatar-video"),
  canvas: $("avatar-canvas"),
  glCanvas: $("avatar-gl"),
  avatarMode: $("avatar-mode"),
  status: $("transport-status"),
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

export const MESSAGES = {
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
  needsToken:
    "This server needs an access link with a token (…/?token=…): ask whoever runs it for one " +
    "(they make it with `avatarchat token`).",
  badToken:
    "This server needs an access link with a token, and this link's token has expired or is not " +
    "for this server: ask whoever runs it for a new link.",
  closedByServer: "The server ended the session (it was idle or the server stopped). Press Start to talk again.",
  // The status line under the controls: which transport carries the session, and why.
  connectingWebRTC: "Connecting over WebRTC…",
  connectedWebRTC: "Connected over WebRTC",
  fallingBack: "WebRTC could not connect — switching to WebSocket…",
  connectingWebSocket: "Connecting over WebSocket…",
  connectedNoUdp: "Connected over WebSocket (UDP seems blocked)",
  connectedFallback: "Connected over WebSocket (WebRTC could not connect)",
  // Why WebRTC was given up (the chat log's line: "WebRTC <why>: switching to WebSocket.").
  noUdpAnswer: (s) => `had no answer over UDP in ${s} s (UDP seems blocked)`,
  iceFailed: "could not find a path to the server (ICE failed)",
  notConnectedIn: (s) => `did not connect within ${s} s`,
  connectedWebSocket: "Connected over WebSocket (the page's link asks for it)",
  fallbackFailed:
    "Connection failed — WebRTC could not reach the server's media port (UDP seems blocked) and " +
    "the WebSocket fallback could not connect either.",
  webSocketFailed: "Could not connect over WebSocket — is `avatarchat serve` running, and this link still valid?",
  noWebSocket: "This browser lacks what the WebSocket transport needs (WebSocket, AudioWorklet).",
  voiceOnly: "Voice only: this browser cannot draw the avatar",
  cannotDraw: (why) =>
    `This server leaves drawing the avatar to the browser, and this one cannot (${why || "no WebGL2"}): ` +
    "you hear the voice only.",
};

// The status line: how the session is carried (empty when there is none).
export function setStatus(text) {
  ui.status.textContent = text || "";
}

export function showBanner(text, kind = "error") {
  ui.bannerText.textContent = text;
  ui.banner.dataset.kind = kind;
  ui.banner.hidden = false;
}

export function clearBanner() {
  ui.banner.hidden = true;
  ui.bannerText.textContent = "";
}

// A badge shows one word and colours its dot by `data-state` (style.css).
export function setBadge(badge, state) {
  badge.dataset.state = state || "";
  badge.querySelector(".badge-text").textContent = state || "";
}

// The element that plays the avatar's voice: the <video> when audio and video share a
// stream (the usual case), the <audio> fallback when the server sent them apart.
export function voiceElement() {
  return ui.audio.srcObject ? ui.audio : ui.video;
}

export function setVoiceVolume(volume) {
  ui.video.volume = volume;
  ui.audio.volume = volume;
}

// What fills the avatar's box (same box, same look): "video" (WebRTC's <video>), "frames"
// (the WebSocket transport's JPEG frames on a 2D canvas) or "drawn" (client mode's WebGL
// canvas). The <video> stays in the page while hidden: in client mode it plays the voice.
export function showSurface(kind) {
  ui.video.hidden = kind !== "video";
  ui.canvas.hidden = kind !== "frames";
  ui.glCanvas.hidden = kind !== "drawn";
  if (kind !== "frames") ui.canvas.getContext("2d").clearRect(0, 0, ui.canvas.width, ui.canvas.height);
}

const PLACEHOLDER = ui.placeholder.innerHTML;

// The avatar box's text while nothing is shown in it (null: "Press Start to talk").
export function setPlaceholder(text) {
  if (text) ui.placeholder.firstElementChild.textContent = text;
  else ui.placeholder.innerHTML = PLACEHOLDER;
}

// The label that says who renders the avatar (`text` null: none shown).
export function setAvatarLabel(text) {
  ui.avatarMode.textContent = text || "";
  ui.avatarMode.hidden = !text;
}
