// The page's fixed elements, the state badges' DOM, the banner and the status line.
// Every other module reaches the DOM through `ui` so that element ids live in one place;
// their words come from i18n.js.

import { has, localize, setLiteral, setText } from "./i18n.js";

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

// A badge shows one word and colours its dot by `data-state` (style.css); `state` is the
// page's or the server's name for it, shown in the page's language where it has the words.
export function setBadge(badge, state) {
  badge.dataset.state = state || "";
  const text = badge.querySelector(".badge-text");
  if (state && has(`state.${state}`)) setText(text, `state.${state}`);
  else setLiteral(text, state || "");
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
  else {
    ui.placeholder.innerHTML = PLACEHOLDER;
    localize(ui.placeholder);
  }
}

// The label that says who renders the avatar (`key`: its words in i18n.js; null: none shown).
export function setAvatarLabel(key) {
  if (key) setText(ui.avatarMode, key);
  else setLiteral(ui.avatarMode, "");
  ui.avatarMode.hidden = !key;
}
