// The WebRTC transport's media on the page: the server's tracks (the avatar's voice and
// video, one stream) on the <video> element, or apart on <video> and <audio>.

import { t } from "./i18n.js";
import { watchAudio } from "./probe.js";
import { clearBanner, showBanner, ui } from "./ui.js";

// The reply voice's jitter buffer, asked of the browser (RTCRtpReceiver.jitterBufferTarget,
// ms; Chromium has it, Firefox not): null leaves it to the browser. `?jbt=N` (0..4000)
// overrides it, `?jbt=off` leaves it unset (A/B runs of `avatarchat bench e2e --jbt`).
// Unset by default: Chromium takes the target as a floor under its own adaptive delay, so
// 0, 20 or 40 ms changed nothing (its buffer's target stayed its computed minimum, 70-250 ms
// on this 2-core machine, in every run), while 150 ms raised it (target 171 ms over a
// 125 ms minimum) and with it the voice's delay.
export const DEFAULT_JITTER_TARGET_MS = null;

// The jitter-buffer target a page's query string asks for: a number of ms, or null.
export function jitterTargetFrom(search, fallback = DEFAULT_JITTER_TARGET_MS) {
  const value = new URLSearchParams(search).get("jbt");
  if (value === null || value === "") return fallback;
  if (value === "off") return null;
  const ms = Number(value);
  return Number.isFinite(ms) && ms >= 0 && ms <= 4000 ? ms : fallback;
}

function askJitterTarget(receiver) {
  const ms = jitterTargetFrom(location.search);
  if (ms === null || !receiver || !("jitterBufferTarget" in receiver)) return;
  try {
    receiver.jitterBufferTarget = ms;
  } catch {
    /* out of the browser's range: it keeps its own */
  }
}

// The peer connection's `track` event.
export function playTrack(ev) {
  if (ev.track.kind === "audio") {
    askJitterTarget(ev.receiver);
    watchAudio("remote", new MediaStream([ev.track]));
  }
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
  el.play().catch((err) => {
    // An AbortError: the source went before it played (Stop, a failure, the fallback).
    if (err?.name !== "NotAllowedError") return;
    // Autoplay was refused (no user gesture reached this point): ask for one click.
    showBanner(t("clickToHear"), "info");
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

// The elements let go of the tracks (Stop, a failure, the fallback to the WebSocket).
export function clearMedia() {
  ui.video.srcObject = null;
  ui.audio.srcObject = null;
}
