// The WebRTC transport's media on the page: the server's tracks (the avatar's voice and
// video, one stream) on the <video> element, or apart on <video> and <audio>.

import { watchAudio } from "./probe.js";
import { clearBanner, showBanner, ui } from "./ui.js";

// The peer connection's `track` event.
export function playTrack(ev) {
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
  el.play().catch((err) => {
    // An AbortError: the source went before it played (Stop, a failure, the fallback).
    if (err?.name !== "NotAllowedError") return;
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

// The elements let go of the tracks (Stop, a failure, the fallback to the WebSocket).
export function clearMedia() {
  ui.video.srcObject = null;
  ui.audio.srcObject = null;
}
