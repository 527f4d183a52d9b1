// The client-rendered avatar's timing: which face the page draws at each animation frame.
//
// In client mode the server sends no video: it sends the avatar's face parameters, one row
// of 12 numbers per frame index k (media time k / fps), ahead of time (docs/PROTOCOL.md,
// `clock` and `face`). The page draws, at every display frame, the row for the media time
// the listener is hearing right now, so the lips move with the voice as it is played:
//
//   FaceTimeline   the latest row per k (a later row for the same k replaces the earlier:
//                  a cut, a reply that starts or slips), interpolated between frames, the
//                  last row held when none is newer
//   RtcHeardClock  h(now) over WebRTC: the RTP timestamp of the audio last played and when
//                  (the receiver's synchronization source), extrapolated; before there is
//                  one, the server's wall clock less the audio path's measured delay
//   WsHeardClock   h(now) over the WebSocket: `audio_at` plus the samples the reply player
//                  has played (wsaudio.js), on the AudioContext's output clock
//   MouthGate      the page's own barge-in (bargein.js mutes the voice at once): the mouth
//                  closes over MOUTH_CLOSE_S from the frame the voice goes quiet
//   FaceView       the requestAnimationFrame loop: renderer.draw(row at h(now))
//
// Times: performance.now() milliseconds for the page, seconds for media time. No timers
// here but the WebRTC clock's (a stats poll; a fast look for the first packet until it
// plays) and the animation frames; the classes take explicit times so tests can drive them
// in virtual time (`import("./avatar/face.js")` in a page).

// Rows on the wire, in this order (avatar/params.FaceParams). The first five are the mouth.
export const PARAM_NAMES = Object.freeze([
  "jaw", "stretch", "round", "upper", "press", "blink", "brows", "yaw", "pitch", "roll", "breath", "smile",
]);
export const MOUTH_CHANNELS = 5;
// How fast the mouth closes (and reopens) when the page mutes the voice.
export const MOUTH_CLOSE_S = 0.12;
// Opus's RTP clock rate (always 48 kHz, whatever the audio's own rate).
const RTP_RATE = 48000;
// The played RTP timestamps' offsets are kept this long (a frame seen late is corrected).
const RTP_WINDOW_MS = 40;
// No audio played for longer than this: the speaker plays concealment while the voice is
// held up upstream, and the media time stands. (Chromium reports every 10 ms frame played;
// Firefox reports per 20 ms packet, in bursts up to ~280 ms apart on a busy machine.)
const MAX_UNPLAYED_MS = 300;
// How often the receiver is asked for its first packet until it has one (a frame is 10 ms).
const FIRST_PACKET_POLL_MS = 5;
// The jitter buffer's delay is averaged over this long: packets arrive in bursts on a busy
// machine, and a sample that came late waits less (the sum is what the listener hears).
const JITTER_WINDOW_MS = 1000;
// Rows older than this before the frame on screen are dropped (the newest of them is kept).
const KEEP_PAST_FRAMES = 50;
// The page's frame log (what tests read): about a minute at 60 Hz.
const LOG_FRAMES = 4000;

// ---------------------------------------------------------------------------------------
// Rows

export class FaceTimeline {
  constructor(fps = 25) {
    this.fps = fps;
    this.source = PARAM_NAMES.map((_, c) => c); // where each of PARAM_NAMES is in a row
    this.width = PARAM_NAMES.length; // a row's length on the wire
    this.rows = new Map(); // k -> Float32Array(12), in PARAM_NAMES order
    this.hi = -Infinity; // the highest k held
    this.received = 0; // rows taken since the start
  }

  // The `clock` message's names of a row's values, in order: a name this page does not
  // know is ignored, one it misses reads 0.
  setNames(names) {
    if (!Array.isArray(names) || !names.length) return;
    this.source = PARAM_NAMES.map((name) => names.indexOf(name));
    this.width = names.length;
  }

  // A `face` message: rows for k0, k0+1, ...; each replaces what was held for its k.
  // Returns how many rows were taken (malformed ones are skipped).
  add(k0, rows) {
    if (!Number.isInteger(k0) || !Array.isArray(rows)) return 0;
    let taken = 0;
    rows.forEach((row, i) => {
      if (!Array.isArray(row) || row.length < this.width) return;
      const values = new Float32Array(PARAM_NAMES.length);
      for (let c = 0; c < values.length; c++) {
        const x = row[this.source[c]];
        values[c] = Number.isFinite(x) ? x : 0;
      }
      this.rows.set(k0 + i, values);
      this.hi = Math.max(this.hi, k0 + i);
      taken++;
    });
    this.received += taken;
    return taken;
  }

  // The latest row at or before frame k, as [k', row], or null.
  atOrBefore(k) {
    if (k >= this.hi) return this.rows.size ? [this.hi, this.rows.get(this.hi)] : null;
    for (let j = k; j >= k - 2 * KEEP_PAST_FRAMES; j--) {
      const row = this.rows.get(j);
      if (row) return [j, row];
    }
    return null;
  }

  // The face at media time `t` (s): the rows either side interpolated linearly; the last
  // row held when none is newer; before the first row, the first. null: no rows at all.
  rowAt(t) {
    if (!this.rows.size || !Number.isFinite(t)) return null;
    const x = t * this.fps;
    const k = Math.floor(x);
    const before = this.atOrBefore(k);
    if (!before) return this.first();
    const [ka, a] = before;
    const b = ka === k ? this.rows.get(k + 1) : null;
    if (!b) return a.slice();
    const f = x - k;
    return a.map((v, c) => v + (b[c] - v) * f);
  }

  first() {
    let lo = Infinity;
    for (const k of this.rows.keys()) lo = Math.min(lo, k);
    return this.rows.get(lo).slice();
  }

  // Forgets rows well behind media time `t`, keeping the newest of them (held if needed).
  prune(t) {
    const cut = Math.floor(t * this.fps) - KEEP_PAST_FRAMES;
    const keep = this.atOrBefore(cut)?.[0];
    for (const k of this.rows.keys()) if (k < cut && k !== keep) this.rows.delete(k);
  }

  clear() {
    this.rows.clear();
    this.hi = -Infinity;
  }
}

// ---------------------------------------------------------------------------------------
// What the listener hears now, in media seconds

// The page's wall clock (ms since 1970), the clock getStats timestamps are on.
function wallMs(perf) {
  return performance.timeOrigin + perf;
}

// Over WebRTC. The voice's RTP timestamps are on the media clock (its first packet is
// media time 0, 48 kHz: server/tracks.py), and the receiver says, for the last audio it
// handed to the speaker, its RTP timestamp and when (getSynchronizationSources, Chromium
// and Firefox): h = (rtp − the first rtp) / 48000 + the time since. Where the browser gives no sources
// yet, h is the server's media clock now (`mediaZero`, the `clock` message's; page and
// server wall clocks taken to agree: one machine, or NTP) less the audio's path: half the
// round trip and the jitter buffer's mean delay (jitterBufferDelay / jitterBufferEmittedCount
// over the last second); this misses the server's own send lag, 0-100 ms on a busy machine.
// (Chromium's estimatedPlayoutTimestamp needs an RTT the aiortc sender's reports do not
// give it, so it is absent here.)
export class RtcHeardClock {
  constructor(pc, { pollMs = 500 } = {}) {
    this.pc = pc;
    this.pollMs = pollMs;
    this.mediaZero = null;
    this.ssrc = null;
    this.rtp0 = null; // the first RTP timestamp played (media time 0)
    this.played = []; // [page wall ms, media ms − played wall ms]: the last RTP_WINDOW_MS
    this.lastPlayedWall = null; // when the receiver last played a frame (page wall ms)
    this.jitterMs = null;
    this.rttMs = null;
    this.history = []; // {wall, delay, emitted}: inbound audio stats of the last JITTER_WINDOW_MS
  }

  setMediaZero(mediaZero) {
    this.mediaZero = mediaZero;
  }

  start() {
    if (this.timer) return;
    this.timer = setInterval(() => this.poll(), this.pollMs);
    this.poll();
    // The first packet played is media time 0: watched for closely until it comes.
    this.watcher = setInterval(() => {
      this.sample(performance.now());
      if (this.rtp0 !== null) clearInterval(this.watcher);
    }, FIRST_PACKET_POLL_MS);
  }

  stop() {
    clearInterval(this.timer);
    clearInterval(this.watcher);
    this.timer = null;
  }

  // "rtp" (the receiver's played RTP timestamps), "path" (wall clock less the measured
  // path) or null (no clock message yet).
  get source() {
    if (this.mediaZero === null) return null;
    return this.played.length ? "rtp" : "path";
  }

  // The voice's receiver (null once closed).
  receiver() {
    try {
      return this.pc.getReceivers().find((r) => r.track?.kind === "audio") ?? null;
    } catch {
      return null;
    }
  }

  // The audio receiver's last played frame: {ssrc, rtp, wall} or null.
  lastPlayed() {
    const source = this.receiver()?.getSynchronizationSources?.()[0];
    if (!source || !Number.isFinite(source.rtpTimestamp) || !Number.isFinite(source.timestamp)) return null;
    // The spec's timestamps are on the wall clock (ms since 1970); older builds used
    // performance.now()'s.
    const wall = source.timestamp > 1e12 ? source.timestamp : wallMs(source.timestamp);
    return { ssrc: source.source, rtp: source.rtpTimestamp, wall };
  }

  // Takes the receiver's latest played frame as an offset: media ms − page wall ms.
  sample(perfNow) {
    const last = this.lastPlayed();
    if (!last) return;
    if (last.ssrc !== this.ssrc) {
      this.ssrc = last.ssrc;
      this.rtp0 = last.rtp;
      this.played = [];
    }
    const mediaMs = (((last.rtp - this.rtp0) >>> 0) / RTP_RATE) * 1000;
    const p = this.played;
    const now = wallMs(perfNow);
    p.push([now, mediaMs - last.wall]);
    while (p.length > 1 && p[0][0] < now - RTP_WINDOW_MS) p.shift();
    this.lastPlayedWall = last.wall;
  }

  async poll() {
    let report;
    try {
      report = await this.pc.getStats();
    } catch {
      return; // closed
    }
    const rtts = [];
    report.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        this.takeStats(r.timestamp, r.jitterBufferDelay, r.jitterBufferEmittedCount);
      } else if (r.type === "candidate-pair" && r.nominated && r.currentRoundTripTime != null) {
        rtts.push(r.currentRoundTripTime);
      } else if (r.type === "remote-inbound-rtp" && r.roundTripTime != null) rtts.push(r.roundTripTime);
    });
    if (rtts.length) this.rttMs = 1000 * Math.min(...rtts);
  }

  // One inbound-rtp audio report's jitter buffer figures (split out for virtual time).
  takeStats(timestamp, jitterDelayS, emitted) {
    if (!Number.isFinite(jitterDelayS) || !Number.isFinite(emitted) || emitted <= 0) return;
    const statsWall = timestamp > 1e12 ? timestamp : wallMs(timestamp);
    const h = this.history;
    h.push({ wall: statsWall, delay: jitterDelayS, emitted });
    while (h.length > 2 && h[1].wall <= statsWall - JITTER_WINDOW_MS) h.shift();
    // The mean delay of the samples played over the window (since the start, at first).
    const first = h.length > 1 ? h[0] : { delay: 0, emitted: 0 };
    if (emitted > first.emitted) this.jitterMs = (1000 * (jitterDelayS - first.delay)) / (emitted - first.emitted);
  }

  // The audio's path from the server's send to the speaker, ms (the fallback's estimate).
  pathMs() {
    return (this.rttMs ?? 0) / 2 + (this.jitterMs ?? 0);
  }

  // h(now): the media time being heard at page time `perf` (ms), in seconds; null before
  // the server's clock message.
  now(perf) {
    this.sample(perf);
    if (this.mediaZero === null) return null;
    if (this.played.length) {
      // A 20 ms packet plays as two 10 ms frames with its one RTP timestamp: the frame seen
      // may be the second, 10 ms on; the largest offset of the window is the packet's start.
      let offset = -Infinity;
      for (const [, o] of this.played) offset = Math.max(offset, o);
      const wall = Math.min(wallMs(perf), this.lastPlayedWall + MAX_UNPLAYED_MS);
      return (wall + offset) / 1000;
    }
    return (wallMs(perf) - this.pathMs()) / 1000 - this.mediaZero;
  }
}

// Over the WebSocket: `player` is wsaudio.js's ReplyPlayer, which notes for every chunk it
// schedules the context time it starts at and the media time of its first sample (from
// `audio_at`). Between replies (no voice playing) h runs on the server's wall clock with
// the offset last seen while voice played (before any: the player's cushion).
export class WsHeardClock {
  constructor(player, { defaultLeadS = 0.08 } = {}) {
    this.player = player;
    this.mediaZero = null;
    this.offsetS = -defaultLeadS; // h − the server's media clock now
    this.fromAudio = false;
  }

  setMediaZero(mediaZero) {
    this.mediaZero = mediaZero;
  }

  get source() {
    if (this.mediaZero === null) return null;
    return this.fromAudio ? "audio" : "wall";
  }

  start() {}

  stop() {}

  // The context time at the speaker at page time `perf`.
  contextTimeAt(perf) {
    const ctx = this.player.ctx;
    const ts = ctx.getOutputTimestamp?.();
    if (ts && ts.performanceTime > 0) return ts.contextTime + (perf - ts.performanceTime) / 1000;
    return ctx.currentTime - (ctx.outputLatency || 0) - (ctx.baseLatency || 0);
  }

  now(perf) {
    if (this.mediaZero === null) return null;
    const server = wallMs(perf) / 1000 - this.mediaZero;
    const media = this.player.mediaAt(this.contextTimeAt(perf));
    if (media === null) return server + this.offsetS;
    this.offsetS = media - server;
    this.fromAudio = true;
    return media;
  }
}

// ---------------------------------------------------------------------------------------
// The page's own mute

// Follows the voice's volume in the page (the barge-in gate's: 0 muted, 1 open), at most
// 1 / MOUTH_CLOSE_S per second: the mouth starts closing in the frame the voice goes
// quiet and is shut MOUTH_CLOSE_S later; it reopens the same way.
export class MouthGate {
  constructor(closeS = MOUTH_CLOSE_S) {
    this.closeS = closeS;
    this.gain = 1;
    this.t = null;
  }

  update(t, volume) {
    // A stalled page (hidden tab) takes at most one full step.
    const dt = this.t === null ? 1000 / 60 : Math.min(Math.max(t - this.t, 0), 1000 * this.closeS);
    this.t = t;
    const step = dt / 1000 / this.closeS;
    const target = Math.min(1, Math.max(0, volume));
    this.gain = target < this.gain ? Math.max(target, this.gain - step) : Math.min(target, this.gain + step);
    return this.gain;
  }

  // The row as drawn: the mouth channels times the gain (0: the neutral closed mouth).
  apply(row) {
    if (this.gain >= 1) return row;
    for (let c = 0; c < MOUTH_CHANNELS; c++) row[c] *= this.gain;
    return row;
  }
}

// ---------------------------------------------------------------------------------------
// The draw loop

// Draws `timeline.rowAt(clock.now(t))` on `renderer` at up to `maxFps` frames a second (30 by
// default: rows come at 25 fps, and drawing at the display's 60 Hz cost a core of a 2-core
// machine's CPU in software WebGL for nothing one can see), the mouth scaled by `volume()`
// through a MouthGate, whose fade follows every animation frame. Keeps a log of the frames drawn (page time,
// media time, the row's jaw, the drawn jaw, the mouth gain) for tests and benchmarks.
export class FaceView {
  constructor({ renderer, timeline, clock, volume = () => 1, onDrawn = () => {}, maxFps = 30 }) {
    Object.assign(this, { renderer, timeline, clock, volume, onDrawn });
    // A display's frames come a little early or late: allow a quarter of a 240 Hz frame.
    this.minGap = 1000 / Math.max(1, maxFps) - 1000 / 240;
    this.lastDraw = null;
    this.mouth = new MouthGate();
    this.neutral = new Float32Array(PARAM_NAMES.length);
    this.log = { t: [], h: [], jaw: [], drawn: [], gain: [] };
    this.count = 0;
    this.errors = 0;
    this.lastPrune = 0;
    this.raf = null;
  }

  start() {
    if (this.raf !== null) return;
    const loop = (t) => {
      this.raf = requestAnimationFrame(loop);
      const now = performance.now();
      if (this.lastDraw !== null && now - this.lastDraw < this.minGap) {
        this.mouth.update(now, this.volume());
        return;
      }
      this.frame(now);
    };
    this.raf = requestAnimationFrame(loop);
  }

  stop() {
    if (this.raf !== null) cancelAnimationFrame(this.raf);
    this.raf = null;
  }

  // One frame at page time `t` (ms); returns the row drawn.
  frame(t) {
    this.lastDraw = t;
    const h = this.clock.now(t);
    const row = (h === null ? null : this.timeline.rowAt(h)) || this.neutral.slice();
    const jaw = row[0];
    this.mouth.update(t, this.volume());
    this.mouth.apply(row);
    try {
      this.renderer.draw(row);
    } catch (err) {
      // A lost context or a bad row must not end the loop; counted for the page's figures.
      if (this.errors++ === 0) console.error("avatar draw failed", err);
      return row;
    }
    this.count++;
    this.note(t, h, jaw, row[0]);
    if (h !== null && t - this.lastPrune > 1000) {
      this.timeline.prune(h);
      this.lastPrune = t;
    }
    this.onDrawn(t, h !== null && this.timeline.rows.size > 0);
    return row;
  }

  note(t, h, jaw, drawn) {
    const log = this.log;
    log.t.push(t);
    log.h.push(h);
    log.jaw.push(jaw);
    log.drawn.push(drawn);
    log.gain.push(this.mouth.gain);
    // Trimmed in batches: one shift per frame per series would copy the log every frame.
    if (log.t.length > LOG_FRAMES + 500) for (const key of Object.keys(log)) log[key].splice(0, 500);
  }
}
