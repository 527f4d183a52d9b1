// Connecting to `avatarchat serve`: the HTTP side (health, config, the SDP offer), the
// microphone, and one RTCPeerConnection with the "events" data channel (docs/PROTOCOL.md).
// Nothing here touches the chat or the session state: callers pass callbacks.

import { t } from "./i18n.js";
import { clearBanner, showBanner } from "./ui.js";

// No trickle ICE over HTTP: the offer is posted once gathering is complete, or after this.
const ICE_GATHER_TIMEOUT_MS = 5000;
// How long Start waits for a server that is still loading its models.
const LOADING_WAIT_MS = 180000;

// An error whose message is meant for the person at the page (shown in the banner as is).
export class UserFacingError extends Error {}

// The access token of this page's own URL (`/?token=…`, made by `avatarchat token`), sent
// only as the Authorization header of the API requests below: never in another URL, never
// stored. null when the page was opened without one (a server without auth).
const TOKEN = new URLSearchParams(location.search).get("token") || null;

// The token, for the one request that cannot carry a header: the WebSocket's (wsclient.js).
export function accessToken() {
  return TOKEN;
}

function authHeaders(extra = {}) {
  return TOKEN ? { ...extra, Authorization: `Bearer ${TOKEN}` } : extra;
}

// A 401 means the link lacks a token, or its token expired or is not this server's.
function refusedAccess() {
  return new UserFacingError(t(TOKEN ? "badToken" : "needsToken"));
}

// A GET with the page's access token (the avatar's rig and portrait for client mode).
export async function fetchAuthorized(path) {
  const resp = await fetch(path, { cache: "no-store", headers: authHeaders() });
  if (resp.status === 401) throw refusedAccess();
  return resp;
}

export async function getJSON(path, { auth = false } = {}) {
  const resp = await fetch(path, { cache: "no-store", headers: auth ? authHeaders() : {} });
  if (auth && resp.status === 401) throw refusedAccess();
  let body = null;
  try {
    body = await resp.json();
  } catch {
    /* not JSON */
  }
  return { status: resp.status, ok: resp.ok, body };
}

// Waits while /healthz says the models are still loading; false if `stale()` (Stop was
// pressed) or time ran out.
export async function waitUntilReady(stale) {
  const deadline = performance.now() + LOADING_WAIT_MS;
  let announced = false;
  for (;;) {
    const health = await getJSON("healthz");
    if (stale()) return false;
    if (health.ok) {
      if (announced) clearBanner();
      return true;
    }
    if (health.status !== 503) throw new Error(health.body?.error || t("healthCheck", { status: health.status }));
    if (!announced) showBanner(t("loading"), "info");
    announced = true;
    if (performance.now() > deadline) {
      showBanner(t("loadingGaveUp"));
      return false;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// The microphone, or null with the reason in the banner. `raw` turns off echo
// cancellation, noise suppression and gain control (tests: the fake file as it is).
// Returns {stream, state} with state "on" | "denied" | "unavailable".
export async function openMic(raw) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showBanner(t("insecure"));
    return { stream: null, state: "unavailable" };
  }
  const processing = !raw;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        echoCancellation: processing,
        noiseSuppression: processing,
        autoGainControl: processing,
        channelCount: 1,
      },
    });
    return { stream, state: "on" };
  } catch (err) {
    return { stream: null, state: explainMicError(err) };
  }
}

function explainMicError(err) {
  const name = err?.name;
  const denied = name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError";
  if (denied) showBanner(t("micDenied"));
  else if (name === "NotFoundError" || name === "OverconstrainedError") showBanner(t("noMic"));
  else showBanner(t("micError", { name: name || t("error"), message: err?.message || err }));
  return denied ? "denied" : "unavailable";
}

export function waitForIceGathering(pc) {
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

// The RTCPeerConnection configuration /api/config asks for: its ICE servers (TURN with
// per-session credentials) and, for `server.turn.relay_only`, relayed candidates only.
export function rtcConfigFrom(config) {
  const iceServers = (config?.ice_servers || []).map((s) => {
    const server = { urls: s.urls };
    if (s.username != null) server.username = s.username;
    if (s.credential != null) server.credential = s.credential;
    return server;
  });
  const iceTransportPolicy = config?.ice_transport_policy === "relay" ? "relay" : "all";
  return { iceServers, iceTransportPolicy };
}

// `outgoing`: the microphone, or a silent stream (the server takes a connection that
// sends no audio for a vanished client). `on`: {track, peerState, open, message, close}.
export function createPeer(rtcConfig, outgoing, on) {
  const pc = new RTCPeerConnection(rtcConfig);
  const track = outgoing?.getAudioTracks()[0];
  if (track) pc.addTransceiver(track, { direction: "sendrecv", streams: [outgoing] });
  else pc.addTransceiver("audio", { direction: "sendrecv" });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addEventListener("track", on.track);
  pc.addEventListener("connectionstatechange", () => on.peerState(pc));
  pc.addEventListener("iceconnectionstatechange", () => on.peerState(pc));

  const dc = pc.createDataChannel("events");
  dc.addEventListener("open", on.open);
  dc.addEventListener("message", (ev) => on.message(ev.data));
  dc.addEventListener("close", () => on.close(pc));
  return { pc, dc };
}

// Whether any ICE candidate pair has heard back from the server (a connectivity check's
// answer, or any packet): UDP reaches it, however slow the rest may be. False when nothing
// came back, or the browser keeps no such figures.
export async function iceHeardBack(pc) {
  let heard = false;
  try {
    (await pc.getStats()).forEach((r) => {
      if (r.type !== "candidate-pair") return;
      if (r.state === "succeeded" || r.responsesReceived > 0 || r.bytesReceived > 0) heard = true;
    });
  } catch {
    /* a closed connection */
  }
  return heard;
}

// `avatar`: "client" (the page draws the avatar), "video" or null (not asked: an older
// server, or none). The answer's `avatar` says what the server does.
export async function postOffer(pc, avatar = null) {
  const offer = { sdp: pc.localDescription.sdp, type: "offer" };
  if (avatar) offer.avatar = avatar;
  const resp = await fetch("api/offer", {
    method: "POST",
    headers: authHeaders({ "Content-Type": "application/json" }),
    body: JSON.stringify(offer),
  });
  if (resp.status === 401) throw refusedAccess();
  let body = null;
  try {
    body = await resp.json();
  } catch {
    /* not JSON */
  }
  if (!resp.ok) {
    const message = capitalize(body?.error);
    if (resp.status === 503) throw new UserFacingError(message || t("full"));
    throw new UserFacingError(t("refused", { message: message || `HTTP ${resp.status}` }));
  }
  return body;
}

function capitalize(text) {
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
}
