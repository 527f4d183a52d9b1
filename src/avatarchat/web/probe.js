// Measurements for tests, `avatarchat bench e2e` and the barge-in gate, all in this page's
// performance.now() clock: data-channel messages, named marks, video frame arrivals, getStats
// figures, and RMS envelopes of the outgoing microphone ("mic"), the incoming avatar voice
// ("remote", before the element's volume) and what the user hears of it ("heard": remote
// times the playing element's volume, so a mute in the page shows at once).

// Envelope sampling period and how much of it is kept (at 10 ms: 10 minutes).
const ENVELOPE_PERIOD_MS = 10;
const ENVELOPE_MAX_POINTS = 60000;

export const probe = {
  messages: [], // {t, dir: "in" | "out", msg}
  marks: {}, // name -> performance.now()
  frames: { count: 0, times: [] }, // requestVideoFrameCallback arrivals (last 600 kept)
  envelopes: {}, // "mic" | "remote" | "heard" -> Series
};

export function mark(name) {
  if (!(name in probe.marks)) probe.marks[name] = performance.now();
}

export function resetMarks() {
  probe.marks = {};
  probe.frames = { count: 0, times: [] };
}

// ---------------------------------------------------------------------------------------
// Envelopes

// A level sampled over time, trimmed to the last ENVELOPE_MAX_POINTS.
class Series {
  constructor() {
    this.t = [];
    this.rms = [];
  }

  push(now, value) {
    this.t.push(now);
    this.rms.push(value);
    if (this.t.length > ENVELOPE_MAX_POINTS) {
      this.t.splice(0, this.t.length - ENVELOPE_MAX_POINTS);
      this.rms.splice(0, this.rms.length - ENVELOPE_MAX_POINTS);
    }
  }

  get last() {
    return this.rms.length ? this.rms[this.rms.length - 1] : 0;
  }

  close() {}

  snapshot() {
    return { t: this.t.slice(), rms: this.rms.slice() };
  }

  // Voiced stretches: RMS above `threshold`, gaps shorter than `hangoverMs` bridged.
  segments({ threshold = 0.01, hangoverMs = 300, minMs = 50 } = {}) {
    const out = [];
    let cur = null;
    for (let i = 0; i < this.t.length; i++) {
      const t = this.t[i];
      if (this.rms[i] < threshold) continue;
      if (cur && t - cur.end <= hangoverMs) {
        cur.end = t;
        cur.peak = Math.max(cur.peak, this.rms[i]);
      } else {
        if (cur) out.push(cur);
        cur = { start: t, end: t, peak: this.rms[i] };
      }
    }
    if (cur) out.push(cur);
    return out.filter((s) => s.end - s.start >= minMs);
  }
}

// The RMS of a MediaStream's audio, or of an AudioNode's output (the WebSocket transport's
// reply player), read from an AnalyserNode at each sampling tick.
class Envelope extends Series {
  constructor(ctx, input) {
    super();
    const node = input instanceof AudioNode;
    this.source = node ? input : ctx.createMediaStreamSource(input);
    this.ownSource = !node;
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 512;
    this.buffer = new Float32Array(this.analyser.fftSize);
    // Connected through a silent gain so every browser keeps pulling the analyser.
    this.sink = ctx.createGain();
    this.sink.gain.value = 0;
    this.source.connect(this.analyser).connect(this.sink).connect(ctx.destination);
  }

  sample(now) {
    this.analyser.getFloatTimeDomainData(this.buffer);
    let sum = 0;
    for (const x of this.buffer) sum += x * x;
    this.push(now, Math.sqrt(sum / this.buffer.length));
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    // A node that is not ours keeps its other connections (the player's way to the speaker),
    // unless its owner has already cut them all.
    if (this.ownSource) this.source.disconnect();
    else {
      try {
        this.source.disconnect(this.analyser);
      } catch {
        /* already disconnected */
      }
    }
    this.sink.disconnect();
  }
}

let audioCtx = null;
let envelopeTimer = null;
const tickListeners = [];
let heardGain = () => 1;

// `fn(now, {mic, remote, heard})` after every sampling tick (the barge-in gate listens).
export function onTick(fn) {
  tickListeners.push(fn);
}

// What scales the incoming voice on its way to the speaker (the playing element's volume).
export function setHeardGain(fn) {
  heardGain = fn;
}

function tick() {
  const now = performance.now();
  const { mic, remote } = probe.envelopes;
  mic?.sample(now);
  remote?.sample(now);
  const levels = { mic: mic?.last ?? 0, remote: remote?.last ?? 0, heard: 0 };
  if (remote) {
    levels.heard = levels.remote * heardGain();
    probe.envelopes.heard ??= new Series();
    probe.envelopes.heard.push(now, levels.heard);
  }
  for (const fn of tickListeners) fn(now, levels);
}

export function ensureAudioContext() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return null;
  if (!audioCtx) audioCtx = new Ctx();
  audioCtx.resume().catch(() => {});
  if (!envelopeTimer) envelopeTimer = setInterval(tick, ENVELOPE_PERIOD_MS);
  return audioCtx;
}

// `input`: a MediaStream, or an AudioNode of the page's context.
export function watchAudio(name, input) {
  const ctx = ensureAudioContext();
  if (!ctx) return;
  probe.envelopes[name]?.close();
  probe.envelopes[name] = new Envelope(ctx, input);
  // A new remote stream starts a new heard series alongside it.
  if (name === "remote") delete probe.envelopes.heard;
}

export function closeEnvelopes() {
  for (const env of Object.values(probe.envelopes)) env.close();
}

export function envelope(name) {
  return probe.envelopes[name]?.snapshot() || { t: [], rms: [] };
}

export function segments(name, options) {
  return probe.envelopes[name]?.segments(options) || [];
}

// ---------------------------------------------------------------------------------------
// Video frames and getStats

// A frame put on screen at `now` (the <video>'s frame callbacks, or the WebSocket
// transport's canvas).
export function noteFrame(now) {
  mark("firstFrame");
  probe.frames.count++;
  probe.frames.times.push(now);
  if (probe.frames.times.length > 600) probe.frames.times.shift();
}

export function watchVideo(video) {
  const onFrame = (now) => {
    noteFrame(now);
    video.requestVideoFrameCallback(onFrame);
  };
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    video.requestVideoFrameCallback(onFrame);
  } else {
    video.addEventListener("loadeddata", () => mark("firstFrame"), { once: true });
  }
}

export function videoFps(windowMs = 3000) {
  const times = probe.frames.times;
  if (times.length < 2) return 0;
  const last = times[times.length - 1];
  const inWindow = times.filter((t) => t >= last - windowMs);
  if (inWindow.length < 2) return 0;
  return ((inWindow.length - 1) * 1000) / (last - inWindow[0]);
}

function inboundVideo(r, codecs) {
  return {
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
}

function inboundAudio(r, codecs) {
  return {
    codec: codecs[r.codecId] || null,
    totalSamplesReceived: r.totalSamplesReceived ?? 0,
    // Samples the decoder made up for packets missing in time (glitches), of them the
    // ones made up while the sender was silent, and how many such stretches there were.
    concealedSamples: r.concealedSamples ?? 0,
    silentConcealedSamples: r.silentConcealedSamples ?? 0,
    concealmentEvents: r.concealmentEvents ?? 0,
    // Time-stretching: the jitter buffer growing (slowed speech) or draining (sped up).
    insertedSamplesForDeceleration: r.insertedSamplesForDeceleration ?? 0,
    removedSamplesForAcceleration: r.removedSamplesForAcceleration ?? 0,
    audioLevel: r.audioLevel ?? null,
    packetsReceived: r.packetsReceived ?? 0,
    packetsLost: r.packetsLost ?? 0,
    jitterBufferDelay: r.jitterBufferDelay ?? null,
    jitterBufferTargetDelay: r.jitterBufferTargetDelay ?? null,
    jitterBufferMinimumDelay: r.jitterBufferMinimumDelay ?? null,
    jitterBufferEmittedCount: r.jitterBufferEmittedCount ?? null,
  };
}

// The jitter-buffer target the page asked of the voice's receiver (ms), or null: unset, or
// a browser without it.
function audioJitterTarget(pc) {
  const receiver = pc.getReceivers().find((r) => r.track?.kind === "audio");
  return receiver && "jitterBufferTarget" in receiver ? receiver.jitterBufferTarget : null;
}

export async function collectStats(pc) {
  const out = { video: null, audio: null, mic: null, rttMs: null };
  if (!pc) return out;
  const report = await pc.getStats();
  const codecs = {};
  report.forEach((r) => {
    if (r.type === "codec") codecs[r.id] = r.mimeType;
  });
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      out.video = inboundVideo(r, codecs);
    } else if (r.type === "inbound-rtp" && r.kind === "audio") {
      out.audio = { ...inboundAudio(r, codecs), jitterBufferTarget: audioJitterTarget(pc) };
    } else if (r.type === "outbound-rtp" && r.kind === "audio") {
      out.mic = { packetsSent: r.packetsSent ?? 0, bytesSent: r.bytesSent ?? 0 };
    } else if (r.type === "candidate-pair" && r.nominated && r.currentRoundTripTime != null) {
      out.rttMs = r.currentRoundTripTime * 1000;
    }
  });
  out.rvfc = frameCounts();
  return out;
}

// Frames put on screen since Start, and their rate over the last 3 s.
export function frameCounts() {
  return { frames: probe.frames.count, fps: videoFps() };
}
