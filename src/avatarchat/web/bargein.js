// Page-side barge-in: the avatar goes quiet in this page the moment the user starts to
// speak over it. The server decides whether the reply is really cut (engine/floor.py,
// engine/turntaking.py), but the microphone's trip to it and the browser's receive jitter
// buffer (~120-170 ms) alone take most of the 200 ms in which a barge-in should be heard
// to work; only the page can be that fast.
//
// Both classes are driven by the probe's ~10 ms ticks and take explicit times: no timers of
// their own, so tests can run them in virtual time (`import("./bargein.js")` in a page).
//
//   OnsetDetector: an RMS gate over an adaptive noise floor that needs `onsetMs` of
//   speech-level energy, and that is echo-aware (Geigel's double-talk rule): the mic must
//   also exceed `echoRatio` times the loudest avatar level heard in the last
//   ECHO_WINDOW_MS, so the avatar's own voice leaking past imperfect echo cancellation does
//   not count as the user.
//
//   BargeInGate: while the avatar speaks, mutes its voice on an onset, the interrupt
//   button or a typed message (or, as a reply starts, on speech already under way); keeps
//   the reply muted once the server cuts it, or fades it back up after `graceMs` when the
//   server let it go on (a cough, an "mm-hm"). Speech that goes on past `graceMs` will be
//   cut, only later (a busy server): it keeps the reply muted while it lasts, up to
//   MAX_WAIT_GRACES times `graceMs`.
//
//     open ──onset / muteNow──▶ muted ──graceMs, no cut, user quiet──▶ open (fade up)
//       │                         │
//       └──── the server cut ─────┴──▶ held ──next reply, or drained──▶ open

// Defaults of the server's `server.barge_in` (settings.py), used until /api/config answers.
export const DEFAULTS = Object.freeze({
  enabled: true, // the server lets the voice cut replies at all
  clientMute: true, // this page mutes on its own
  onsetMs: 50,
  graceMs: 800,
  echoRatio: 0.15,
  minRms: 0.01,
});

// Speech must stand ~10 dB over the noise floor.
const FLOOR_MARGIN = 3;
// The floor follows quiet at once but rises slowly, so speech does not become "noise".
const FLOOR_FALL_MS = 150;
const FLOOR_RISE_MS = 3000;
const MIN_FLOOR = 1e-5;
// Dips this short (a plosive, a stop consonant) do not break a loud stretch.
const GAP_MS = 30;
// A stretch is an onset only after this much rest from the last speech-like one: the
// pauses between words and phrases of one utterance are shorter, and the server's VAD
// does not start a new turn for them either.
const REST_MS = 250;
// One tick stands for at most this much audio: the analyser only sees its last ~11 ms, so
// a main thread that stalled must not turn one loud sample into a long one.
const MAX_STEP_MS = 20;
const TICK_MS = 10;
// The echo path (output buffers, room, input buffers) is shorter than this.
const ECHO_WINDOW_MS = 300;
// Mute in two ticks (a step would click); fade back up gently after a cough.
const MUTE_MS = 20;
const RESTORE_MS = 150;
const REOPEN_MS = 30;
// After the server's cut the jitter buffer still holds the old reply (~120-200 ms, over
// 500 ms on a busy machine): it stays muted at least HOLD_MS and until the incoming voice
// has been quiet for DRAINED_MS (the reply's own pauses inside the buffer are shorter than
// HOLD_MS + DRAINED_MS), unless the next reply starts first; never more than MAX_HOLD_MS.
const HOLD_MS = 500;
const DRAINED_MS = 150;
const DRAINED_RMS = 0.005;
const MAX_HOLD_MS = 3000;
const MAX_WAIT_GRACES = 3;
const MAX_EVENTS = 1000;

// The page's settings from /api/config's `barge_in` object (missing keys: defaults).
export function settingsFrom(config) {
  const c = config || {};
  const pick = (key, fallback) => (typeof c[key] === typeof fallback ? c[key] : fallback);
  return {
    enabled: pick("enabled", DEFAULTS.enabled),
    clientMute: pick("client_mute", DEFAULTS.clientMute),
    onsetMs: pick("client_onset_ms", DEFAULTS.onsetMs),
    graceMs: pick("client_grace_ms", DEFAULTS.graceMs),
    echoRatio: pick("client_echo_ratio", DEFAULTS.echoRatio),
    minRms: pick("client_min_rms", DEFAULTS.minRms),
  };
}

export class OnsetDetector {
  constructor({ onsetMs, echoRatio, minRms } = DEFAULTS) {
    Object.assign(this, { onsetMs, echoRatio, minRms });
    this.floor = null;
    this.lastT = null;
    this.run = null; // {start, last, loudMs, fired}: the loud stretch under way
    this.quietMs = 0;
    this.lastSpeech = -Infinity; // when the last stretch of onsetMs or more ended
    this.lastLoud = -Infinity;
    this.echo = []; // [t, heard level] over the last ECHO_WINDOW_MS
  }

  // One tick: the outgoing mic's RMS and the avatar's level as heard. Returns
  // {onset, at} once per stretch of speech, when it has lasted onsetMs; else null.
  update(t, mic, heard) {
    const dt = this.lastT === null ? TICK_MS : Math.min(Math.max(t - this.lastT, 0), MAX_STEP_MS);
    this.lastT = t;
    this.trackFloor(mic, dt);
    const threshold = this.threshold(this.echoLevel(t, heard));
    return mic >= threshold ? this.loudTick(t, dt, mic / threshold) : this.quietTick(dt);
  }

  threshold(echo) {
    return Math.max(this.minRms, FLOOR_MARGIN * this.floor, this.echoRatio * echo);
  }

  // Whether the user is still speaking at `t` (pauses between words included).
  talking(t) {
    return t - this.lastLoud < REST_MS;
  }

  // Whether speech (not a click) is under way at `t`: a loud stretch of onsetMs or more
  // now, or one that ended less than REST_MS ago.
  inSpeech(t) {
    return (this.run !== null && this.run.loudMs >= this.onsetMs) || t - this.lastSpeech < REST_MS;
  }

  // Speech already under way does not count: only an onset after this call fires.
  rearm() {
    if (this.run) this.run.fired = true;
  }

  trackFloor(mic, dt) {
    const level = Math.max(mic, MIN_FLOOR);
    if (this.floor === null) {
      this.floor = level;
      return;
    }
    const tau = level < this.floor ? FLOOR_FALL_MS : FLOOR_RISE_MS;
    this.floor += (level - this.floor) * (1 - Math.exp(-dt / tau));
  }

  echoLevel(t, heard) {
    this.echo.push([t, heard]);
    while (this.echo[0][0] < t - ECHO_WINDOW_MS) this.echo.shift();
    let max = 0;
    for (const [, level] of this.echo) max = Math.max(max, level);
    return max;
  }

  // `over`: how many times the threshold the mic is (kept for the mute's record).
  loudTick(t, dt, over) {
    this.quietMs = 0;
    this.lastLoud = t;
    // Speech resumed after a short pause is the same utterance: it never fires.
    this.run ??= { start: t, last: t, loudMs: 0, fired: t - this.lastSpeech < REST_MS, over: 0 };
    this.run.loudMs += dt;
    this.run.last = t;
    this.run.over = Math.max(this.run.over, over);
    if (this.run.fired || this.run.loudMs < this.onsetMs) return null;
    this.run.fired = true;
    return { onset: this.run.start, at: t, over: this.run.over };
  }

  quietTick(dt) {
    this.quietMs += dt;
    if (this.run && this.quietMs >= GAP_MS) {
      // A click is no speech: it leaves the rest before the next onset unbroken.
      if (this.run.loudMs >= this.onsetMs) this.lastSpeech = this.run.last;
      this.run = null;
    }
    return null;
  }
}

export class BargeInGate {
  // `apply(volume)` sets the avatar's playback volume (0..1).
  constructor(apply, settings = DEFAULTS) {
    this.apply = apply;
    this.events = []; // {t, what: "mute" | "hold" | "open", reason, onset?, over?}
    this.volumeLog = []; // {t, volume}: every change applied
    this.volume = 1;
    this.configure(settings);
    this.reset(0);
  }

  configure(settings) {
    this.settings = { ...DEFAULTS, ...settings };
    this.detector = new OnsetDetector(this.settings);
  }

  // A new session, or none: full volume, nothing pending.
  reset(t) {
    this.mode = "open";
    this.speaking = false;
    this.deadline = Infinity;
    this.fade = null;
    this.quietSince = null; // since when the incoming voice is quiet
    this.setVolume(t, 1);
  }

  // The server's `state` message.
  onState(state, t) {
    const was = this.speaking;
    this.speaking = state === "speaking";
    if (this.speaking && !was) {
      // Speech under way is no new onset; but the reply must not start over it: the
      // server weighs it too (it ducks or drops the reply), and cuts once it lasts.
      this.detector.rearm();
      if (this.mode === "held") this.open(t, "next reply", REOPEN_MS);
      if (this.watching() && this.detector.inSpeech(t)) this.mute(t, "talking", null);
    } else if (was && !this.speaking && this.mode === "muted") {
      this.hold(t, "reply ended");
    }
  }

  // The server's `reply` message: a cut reply is sent once more with `interrupted`.
  onReply(msg, t) {
    if (msg.final && msg.interrupted && this.settings.clientMute) this.hold(t, "cut");
  }

  // The interrupt button and typed messages: the server will cut the reply.
  muteNow(reason, t) {
    if (this.settings.clientMute && this.speaking && this.mode === "open") this.mute(t, reason, null);
  }

  // One probe tick: the mic's RMS, the avatar's level as heard (times the volume) and
  // as it arrives.
  tick(t, mic, heard, incoming) {
    const onset = this.detector.update(t, mic, heard);
    this.quietSince = incoming < DRAINED_RMS ? this.quietSince ?? t : null;
    this.advanceFade(t);
    if (t >= this.deadline) {
      if (this.mode === "muted") this.graceOver(t);
      else if (this.mode === "held") this.holdOver(t);
    }
    if (onset && this.watching()) this.mute(t, "voice", onset.onset, { over: Math.round(onset.over * 100) / 100 });
  }

  watching() {
    const s = this.settings;
    return s.enabled && s.clientMute && this.speaking && this.mode === "open";
  }

  snapshot() {
    return {
      settings: { ...this.settings },
      mode: this.mode,
      speaking: this.speaking,
      volume: this.volume,
      floor: this.detector.floor,
      events: this.events.map((e) => ({ ...e })),
      volumeLog: this.volumeLog.map((v) => ({ ...v })),
    };
  }

  // -- transitions -----------------------------------------------------------------------

  graceOver(t) {
    const waited = t - this.mutedAt;
    if (this.detector.talking(t) && waited < MAX_WAIT_GRACES * this.settings.graceMs) return;
    this.open(t, "grace", RESTORE_MS);
  }

  holdOver(t) {
    const drained = this.quietSince !== null && t - this.quietSince >= DRAINED_MS;
    if (drained || t - this.heldAt >= MAX_HOLD_MS) this.open(t, "drained", REOPEN_MS);
  }

  mute(t, reason, onset, detail = {}) {
    this.mode = "muted";
    this.mutedAt = t;
    this.deadline = t + this.settings.graceMs;
    this.fadeTo(t, 0, MUTE_MS);
    this.note({ t, what: "mute", reason, onset, ...detail });
  }

  hold(t, reason) {
    if (this.mode === "held") return;
    this.mode = "held";
    this.heldAt = t;
    this.deadline = t + HOLD_MS;
    this.fadeTo(t, 0, MUTE_MS);
    this.note({ t, what: "hold", reason });
  }

  open(t, reason, fadeMs) {
    this.mode = "open";
    this.deadline = Infinity;
    this.detector.rearm();
    this.fadeTo(t, 1, fadeMs);
    this.note({ t, what: "open", reason });
  }

  note(event) {
    this.events.push(event);
    if (this.events.length > MAX_EVENTS) this.events.shift();
  }

  // -- volume --------------------------------------------------------------------------

  // The first step is applied now, as if a tick had passed: a mute must not wait for one.
  fadeTo(t, target, ms) {
    this.fade = { from: this.volume, to: target, t0: t - TICK_MS, ms };
    this.advanceFade(t);
  }

  advanceFade(t) {
    const f = this.fade;
    if (!f) return;
    const k = f.ms > 0 ? Math.min(1, (t - f.t0) / f.ms) : 1;
    this.setVolume(t, f.from + (f.to - f.from) * k);
    if (k >= 1) this.fade = null;
  }

  setVolume(t, volume) {
    if (volume === this.volume && this.volumeLog.length) return;
    this.volume = volume;
    this.apply(volume);
    this.volumeLog.push({ t, volume });
    if (this.volumeLog.length > MAX_EVENTS * 10) this.volumeLog.shift();
  }
}
