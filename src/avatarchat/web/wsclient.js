// The WebSocket transport (GET /api/ws, docs/PROTOCOL.md): for networks where WebRTC's UDP
// cannot pass, and for `?transport=ws`. One socket carries everything:
//   up    the data-channel protocol as JSON text; the microphone as binary 16-bit LE mono
//         PCM at the `sample_rate` of the server's `hello`, 20 ms a message
//   down  `hello`, then the data-channel protocol as JSON text plus `frame` messages (a
//         JPEG each, base64), and the reply's voice as binary PCM at `reply_sample_rate`,
//         sent in real time while a reply plays and nothing in between. In client mode
//         (`video: "params"`) no frames: `clock` and `face` messages (the page draws the
//         avatar, avatar/face.js) and `audio_at` before each run of voice (its media time)
// The socket's session ends when the socket closes.
//
// The page sees the same interface as its WebRTC connection: send(msg) -> bool, close(),
// and callbacks with the server's messages as text (app.js handles both alike).

import { ReplyPlayer, captureMic } from "./wsaudio.js";

// A frame is shown this long after it arrives at most: the voice it goes with plays a jitter
// buffer later than it arrives, and the picture waits for it.
const MAX_FRAME_DELAY_MS = 250;
// Keep-alive pings measure the round trip (pings do not count as activity on the server).
const PING_EVERY_MS = 5000;
// Mic audio is dropped, not queued, while this much waits in the socket (a congested
// uplink): speech heard seconds late would only start turns late.
const MAX_MIC_BACKLOG_BYTES = 32 * 1024;

// ws(s)://<this page's origin and path>/api/ws?video=jpeg&token=…: a browser cannot put the
// token in a header of a WebSocket request, so it goes in the query (the server accepts both).
export function socketUrl(token, video = "jpeg") {
  const url = new URL("api/ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  url.searchParams.set("video", video);
  if (token) url.searchParams.set("token", token);
  return url.href;
}

// Draws the server's JPEG frames on `canvas`, each after `delayMs()` (the voice's lead), in
// order: a frame that decodes after a later one is dropped.
class FrameView {
  constructor(canvas, onShown) {
    this.canvas = canvas;
    this.g = canvas.getContext("2d");
    this.onShown = onShown;
    this.latest = -Infinity; // pts of the newest frame drawn or due
    this.timers = new Set();
    this.stats = { received: 0, shown: 0, dropped: 0, width: null, height: null };
  }

  async show(msg, delayMs) {
    this.stats.received++;
    const pts = typeof msg.pts === "number" ? msg.pts : this.latest + 1e-6;
    let bitmap;
    try {
      const bytes = Uint8Array.from(atob(msg.jpeg), (c) => c.charCodeAt(0));
      bitmap = await createImageBitmap(new Blob([bytes], { type: "image/jpeg" }));
    } catch {
      this.stats.dropped++;
      return;
    }
    if (pts <= this.latest || this.closed) {
      bitmap.close();
      this.stats.dropped++;
      return;
    }
    this.latest = pts;
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      this.draw(bitmap);
    }, Math.min(delayMs, MAX_FRAME_DELAY_MS));
    this.timers.add(timer);
  }

  draw(bitmap) {
    if (this.closed) return bitmap.close();
    if (this.canvas.width !== bitmap.width || this.canvas.height !== bitmap.height) {
      this.canvas.width = bitmap.width;
      this.canvas.height = bitmap.height;
    }
    this.g.drawImage(bitmap, 0, 0);
    this.stats.shown++;
    this.stats.width = bitmap.width;
    this.stats.height = bitmap.height;
    bitmap.close();
    this.onShown(performance.now());
  }

  close() {
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }
}

// Opens the socket and runs the session over it. `on`: {hello(msg), message(text),
// frame(now), voice(player), close({code, reason, opened})}. `mic`: a MediaStream or null
// (a page without a microphone still types). Closing is the caller's: close().
// `video`: "jpeg" (the server's frames, drawn on `canvas`) or "params" (client mode).
export class WsTransport {
  constructor({ token, ctx, mic, canvas, on, video = "jpeg" }) {
    this.kind = "websocket";
    this.ctx = ctx;
    this.mic = mic;
    this.on = on;
    this.hello = null;
    this.player = null;
    this.capture = null;
    this.rttMs = null;
    this.sent = { messages: 0, audio: 0, bytes: 0, dropped: 0 };
    this.view = new FrameView(canvas, (now) => on.frame(now));
    this.socket = new WebSocket(socketUrl(token, video));
    this.socket.binaryType = "arraybuffer";
    this.socket.addEventListener("message", (ev) => this.onMessage(ev.data));
    this.socket.addEventListener("close", (ev) => this.onClose(ev));
  }

  get open() {
    return this.socket.readyState === WebSocket.OPEN && this.hello !== null;
  }

  send(msg) {
    if (!this.open) return false;
    this.socket.send(JSON.stringify(msg));
    this.sent.messages++;
    return true;
  }

  // Drops the reply's voice that is queued but not yet heard (a cut, the interrupt button).
  flush() {
    this.player?.flush();
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pinger);
    this.capture?.close();
    this.player?.close();
    this.view.close();
    if (this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "bye");
  }

  onMessage(data) {
    if (this.closed) return;
    if (typeof data !== "string") {
      this.player?.push(data);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.type === "frame") {
      if (typeof msg.jpeg === "string") this.view.show(msg, (this.player?.lead() ?? 0) * 1000);
    } else if (msg.type === "hello" && !this.hello) {
      this.start(msg);
    } else if (msg.type === "audio_at") {
      // The next binary frame's first sample is this media time (client mode).
      this.player?.at(msg.t);
    } else {
      if (msg.type === "pong" && typeof msg.t === "number") this.rttMs = performance.now() - msg.t;
      // A cut reply: what is queued beyond the cut was never meant to be heard.
      if (msg.type === "reply" && msg.interrupted) this.flush();
      this.on.message(data);
    }
  }

  start(hello) {
    this.hello = hello;
    const replyRate = Number(hello.reply_sample_rate) || 16000;
    this.player = new ReplyPlayer(this.ctx, replyRate);
    this.on.voice(this.player);
    const ping = () => this.socket.readyState === WebSocket.OPEN && this.socket.send(JSON.stringify({ type: "ping", t: performance.now() }));
    ping();
    this.pinger = setInterval(ping, PING_EVERY_MS);
    this.on.hello(hello);
    if (this.mic) this.startMic(Number(hello.sample_rate) || 16000);
  }

  async startMic(rate) {
    const sendBlock = (block) => {
      if (this.socket.readyState !== WebSocket.OPEN) return;
      if (this.socket.bufferedAmount > MAX_MIC_BACKLOG_BYTES) {
        this.sent.dropped++;
        return;
      }
      this.socket.send(block);
      this.sent.audio++;
      this.sent.bytes += block.byteLength;
    };
    try {
      const capture = await captureMic(this.ctx, this.mic, rate, sendBlock);
      if (this.closed) capture.close();
      else this.capture = capture;
    } catch (err) {
      this.on.micError?.(err);
    }
  }

  onClose(ev) {
    const opened = this.hello !== null;
    const wasClosed = this.closed;
    this.close();
    if (!wasClosed) this.on.close({ code: ev.code, reason: ev.reason, opened });
  }

  // The page time (performance.now()) at which context time `c` is at the speaker.
  pageTimeOf(c) {
    const ts = this.ctx.getOutputTimestamp?.();
    if (ts && ts.performanceTime > 0) return ts.performanceTime + (c - ts.contextTime) * 1000;
    return performance.now() + (c - this.ctx.currentTime) * 1000;
  }

  // The figures a test or benchmark reads, in the shape of the WebRTC getStats summary
  // where the two meet.
  stats() {
    const p = this.player?.stats ?? { chunks: 0, samples: 0, underruns: 0, flushes: 0 };
    const v = this.view.stats;
    return {
      transport: "websocket",
      video: { framesReceived: v.received, framesDecoded: v.shown, framesDropped: v.dropped, frameWidth: v.width, frameHeight: v.height },
      audio: { totalSamplesReceived: p.samples, chunks: p.chunks, underruns: p.underruns, flushes: p.flushes, leadMs: (this.player?.lead() ?? 0) * 1000 },
      // Client mode: where each run of voice turns audible, media time and page time.
      onsets: (this.player?.onsets ?? []).map((o) => ({ m: o.m, t: this.pageTimeOf(o.c) })),
      mic: { packetsSent: this.sent.audio, bytesSent: this.sent.bytes, packetsDropped: this.sent.dropped },
      rttMs: this.rttMs,
      hello: this.hello,
    };
  }
}
