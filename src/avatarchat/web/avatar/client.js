// Which avatar the page shows, and the client-rendered one's session.
//
// `server.avatar_mode` (GET /api/config's `avatar.mode`) and this browser decide:
//   video   the server renders the avatar and sends it as video (WebRTC) or JPEG frames
//           (WebSocket), as before
//   client  the server sends the face's parameters (`clock`, `face`) and this page draws
//           the portrait itself with WebGL2 (avatar/gl.js) in step with the voice
//           (avatar/face.js)
//   auto    client when this browser can draw it (the renderer is created to find out:
//           WebGL2, the rig and the portrait all work), else video
// The page asks in its offer (`"avatar": "client" | "video"`, or `?video=params` on the
// WebSocket); the server's answer (the answer's `avatar`, the hello's `video`) is what
// happens. The page says which in a label over the avatar.

import { FaceTimeline, FaceView, RtcHeardClock, WsHeardClock } from "./face.js";

// The label over the avatar, by what the page shows (i18n.js's "avatarMode.*" keys).
export const LABELS = {
  client: "avatarMode.client",
  video: "avatarMode.video",
  // The server draws nothing for this page (`avatar_mode: client`) and it cannot draw.
  none: "avatarMode.none",
};

let prepared = null; // {key, renderer}: one renderer (one WebGL context) per page and rig

// The renderer for client mode on `canvas`, or why there is none. `avatar`: the config's
// `avatar` object (null: the server has no avatar). `fetchAuthorized(path)`: a fetch with
// the page's access token. `prefer`: "video" asks for the server's video even where this
// page could draw (the page's `?avatar=video`). Returns {ask: "client" | "video" | null,
// renderer, why}.
export async function chooseAvatar(avatar, canvas, fetchAuthorized, prefer = "auto") {
  if (!avatar) return { ask: null, renderer: null, why: "the server has no avatar" };
  if (avatar.mode === "video") return { ask: "video", renderer: null, why: "the server sends video" };
  if (prefer === "video") return { ask: "video", renderer: null, why: "the page's link asks for video" };
  try {
    return { ask: "client", renderer: await rendererFor(avatar, canvas, fetchAuthorized), why: null };
  } catch (err) {
    // No WebGL2 (or a rig this page cannot read): the server's video, where it sends one.
    return { ask: "video", renderer: null, why: String(err?.message || err) };
  }
}

async function rendererFor(avatar, canvas, fetchAuthorized) {
  const key = `${avatar.rig}|${avatar.image}`;
  if (prepared?.key === key) return prepared.renderer;
  const { AvatarRenderer } = await import("./gl.js");
  const rigResp = await fetchAuthorized(avatar.rig);
  if (!rigResp.ok) throw new Error(`the avatar's rig: HTTP ${rigResp.status}`);
  const rig = await rigResp.json();
  const imageResp = await fetchAuthorized(avatar.image);
  if (!imageResp.ok) throw new Error(`the avatar's portrait: HTTP ${imageResp.status}`);
  // The portrait as a blob URL: the page's token goes in headers only, never in a URL.
  const imageUrl = URL.createObjectURL(await imageResp.blob());
  try {
    const renderer = await AvatarRenderer.create(canvas, rig, imageUrl);
    prepared = { key, renderer };
    return renderer;
  } finally {
    URL.revokeObjectURL(imageUrl);
  }
}

// One session's client-rendered avatar: the face rows the server sends, the clock of the
// voice as heard, and the draw loop. `transport`: {pc} (WebRTC) or {player} (WebSocket:
// wsaudio.js's ReplyPlayer). `volume()`: the voice's volume in the page (barge-in gate).
// `onShown()`: the first frame drawn from the server's rows.
export class ClientAvatar {
  constructor({ renderer, transport, volume, onShown = () => {} }) {
    this.timeline = new FaceTimeline();
    this.clock = transport.pc ? new RtcHeardClock(transport.pc) : new WsHeardClock(transport.player);
    this.shown = false;
    this.faceMessages = 0;
    // ?drawfps=N: another draw rate (60: every frame of a 60 Hz display), for comparisons.
    const drawFps = Number(new URLSearchParams(location.search).get("drawfps")) || 30;
    this.view = new FaceView({
      maxFps: drawFps,
      renderer,
      timeline: this.timeline,
      clock: this.clock,
      volume,
      onDrawn: (t, fromRows) => {
        if (fromRows && !this.shown) {
          this.shown = true;
          onShown(t);
        }
      },
    });
  }

  start() {
    this.clock.start();
    this.view.start();
  }

  stop() {
    this.view.stop();
    this.clock.stop();
  }

  // A server message; true if it was the avatar's (`clock`, `face`).
  onMessage(msg) {
    if (msg.type === "clock") {
      if (Number.isFinite(msg.media_zero)) this.clock.setMediaZero(msg.media_zero);
      if (Number.isFinite(msg.fps) && msg.fps > 0) this.timeline.fps = msg.fps;
      this.timeline.setNames(msg.names);
      return true;
    }
    if (msg.type === "face") {
      this.faceMessages++;
      this.timeline.add(msg.k0, msg.rows);
      return true;
    }
    return false;
  }

  // What tests and benchmarks read (all times performance.now()).
  snapshot(now) {
    const c = this.clock;
    return {
      clock: c.source, // "rtp" | "path" (WebRTC), "audio" | "wall" (WebSocket), or null
      mediaZero: c.mediaZero,
      heard: c.now(now), // media seconds heard at `now`
      rtpOrigin: c.rtp0 ?? null, // WebRTC: the RTP timestamp taken as media time 0
      jitterMs: c.jitterMs ?? null,
      rttMs: c.rttMs ?? null,
      fps: this.timeline.fps,
      faceMessages: this.faceMessages,
      rowsReceived: this.timeline.received,
      rowsHeld: this.timeline.rows.size,
      newestRow: Number.isFinite(this.timeline.hi) ? this.timeline.hi : null,
      framesDrawn: this.view.count,
      drawErrors: this.view.errors,
      mouthGain: this.view.mouth.gain,
      shown: this.shown,
    };
  }

  // The frames drawn since page time `since`: {t, h, jaw, drawn, gain} as parallel arrays.
  frames(since = -Infinity) {
    const log = this.view.log;
    const i = log.t.findIndex((t) => t > since);
    const from = i < 0 ? log.t.length : i;
    return Object.fromEntries(Object.entries(log).map(([k, v]) => [k, v.slice(from)]));
  }

  // The row the timeline gives for media time `h` (s): what would be drawn, before the mute.
  rowAt(h) {
    const row = this.timeline.rowAt(h);
    return row ? Array.from(row) : null;
  }
}

// The page's avatar across sessions: what it asks for (chosen at each Start), what the
// server answered, and the ClientAvatar drawing it in client mode. `volume()`: the voice's
// volume in the page; `onShown()`: the first frame drawn from the server's rows.
export class AvatarSlot {
  constructor({ volume, onShown, prefer = "auto" }) {
    this.volume = volume;
    this.onShown = onShown;
    this.prefer = prefer;
    this.choice = null; // {ask: "client" | "video" | null, renderer, why}
    this.mode = null; // what the server answered: "client" | "video" (null: no avatar)
    this.drawn = null; // the ClientAvatar, in client mode
  }

  // What the offer asks for: "client", "video" or null (a server without an avatar).
  get ask() {
    return this.choice?.ask ?? null;
  }

  async choose(avatarConfig, canvas, fetchAuthorized) {
    this.choice = await chooseAvatar(avatarConfig, canvas, fetchAuthorized, this.prefer);
  }

  // The server's answer: `mode` "client" or "video"; `transport` {pc} or {player}. Returns
  // what the page shows: {surface: "drawn" | "video" | "frames", label (an i18n key; null: none),
  // cannotDraw (the reason, when the server left drawing to a page that cannot)}.
  use(mode, transport) {
    this.stop();
    this.mode = this.ask ? mode : null;
    const canDraw = Boolean(this.choice?.renderer);
    if (mode === "client") {
      // Without a renderer (the server leaves drawing to a page that cannot) the face's
      // clock and rows still run, drawn nowhere: the page's figures say what it would show.
      const renderer = canDraw ? this.choice.renderer : { draw() {} };
      const onShown = canDraw ? this.onShown : () => {};
      this.drawn = new ClientAvatar({ renderer, transport, volume: this.volume, onShown });
      this.drawn.start();
    }
    const label = this.mode === "client" && !canDraw ? "none" : this.mode;
    return {
      surface: canDraw && this.drawn ? "drawn" : transport.pc ? "video" : "frames",
      label: label ? LABELS[label] : null,
      cannotDraw: mode === "client" && !canDraw ? this.choice?.why || "no WebGL2" : null,
    };
  }

  // A `clock` or `face` message (ignored outside client mode).
  onMessage(msg) {
    this.drawn?.onMessage(msg);
  }

  stop() {
    this.drawn?.stop();
    this.drawn = null;
    this.mode = null;
  }

  // For tests and benchmarks (`avatarchat.avatar()`).
  snapshot(now) {
    return { asked: this.ask, why: this.choice?.why ?? null, mode: this.mode, ...(this.drawn?.snapshot(now) ?? {}) };
  }

  // The page's measurement hooks (window.avatarchat; times are performance.now()).
  // `label()`: the label shown, or null.
  hooks(label) {
    return {
      // What was asked and answered, the label, the clock of the voice as heard (`heard`:
      // media seconds now), rows and frames drawn.
      avatar: () => ({ ...this.snapshot(performance.now()), label: label() }),
      // The frames drawn since page time `since`: {t, h, jaw, drawn, gain} (parallel arrays).
      faceFrames: (since) => this.drawn?.frames(since) ?? null,
      // The face row for media time `h` (s), before the page's mute.
      faceAt: (h) => this.drawn?.rowAt(h) ?? null,
      // WebRTC: the voice receiver's synchronization sources (RTP timestamp and time of the
      // last frame played, its level): tests measure lip-sync against them.
      syncSources: () => this.drawn?.clock.receiver?.()?.getSynchronizationSources() ?? [],
    };
  }
}

