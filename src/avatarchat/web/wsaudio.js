// Audio of the WebSocket transport, both ways, through the page's one AudioContext:
//   captureMic   the microphone as 16-bit LE mono PCM at the server's rate (micworklet.js)
//   ReplyPlayer  the avatar's voice from binary PCM messages, scheduled gaplessly behind a
//                small jitter buffer, stopped at once by flush()

// The cushion a reply starts with (and restarts with after running dry): enough to ride out
// a late message on a busy machine, short enough not to be heard as a delay.
const JITTER_S = 0.08;
// A chunk due sooner than this is late: the cushion is rebuilt instead of playing it clipped.
const MIN_LEAD_S = 0.005;
// The voice turns audible at this RMS (the probe's AUDIBLE level) after this much quiet.
const ONSET_RMS = 0.01;
const ONSET_WINDOW_S = 512 / 48000;
const ONSET_QUIET_S = 0.25;
// Chunks whose media times are kept (20 ms each: the last ~10 s).
const MAX_SPANS = 500;

const loaded = new WeakSet(); // contexts whose worklet module is already added

// Streams `stream`'s audio to `onBlock(ArrayBuffer)` as PCM at `rate` in blocks of `blockMs`.
// Returns {close()}, which stops it. Rejects if the browser lacks AudioWorklet.
export async function captureMic(ctx, stream, rate, onBlock, blockMs = 20) {
  if (!loaded.has(ctx)) {
    await ctx.audioWorklet.addModule(new URL("micworklet.js", import.meta.url));
    loaded.add(ctx);
  }
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "avatarchat-pcm-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    channelCount: 1,
    channelCountMode: "explicit", // the browser mixes the mic down to mono
    processorOptions: { targetRate: rate, blockSamples: Math.round((rate * blockMs) / 1000) },
  });
  node.port.onmessage = (ev) => onBlock(ev.data);
  // A node that reaches no destination may not be run at all: a silent gain leads it there.
  const sink = ctx.createGain();
  sink.gain.value = 0;
  source.connect(node).connect(sink).connect(ctx.destination);
  return {
    close() {
      node.port.postMessage("stop");
      node.port.onmessage = null;
      source.disconnect();
      node.disconnect();
      sink.disconnect();
    },
  };
}

// Plays 16-bit LE mono PCM chunks at `rate` as they come. `input` is the voice before the
// page's volume (the probe's "remote" envelope listens to it); setVolume() is the barge-in
// gate's knob. Chunks are queued back to back on the context's clock, JITTER_S ahead of
// the first; flush() stops what is playing and drops what is queued.
// In client mode (`?video=params`) the server says, with `audio_at`, the media time of the
// next chunk's first sample: at(t) before push(); mediaAt() maps a context time back to
// the media time playing then (avatar/face.js draws the face for it).
export class ReplyPlayer {
  constructor(ctx, rate) {
    this.ctx = ctx;
    this.rate = rate;
    this.input = ctx.createGain();
    this.output = ctx.createGain();
    this.input.connect(this.output).connect(ctx.destination);
    this.sources = new Set();
    this.nextTime = 0; // context time where the next chunk starts; 0: nothing queued
    this.mediaNext = null; // media time of the next chunk's first sample (null: unknown)
    this.spans = []; // {c0, c1, m0}: context time span of a chunk and its media time at c0
    this.onsets = []; // {m, c}: media and context time where the voice turns audible
    this.run = null; // the run of voice since the last `audio_at` (its onset detector's state)
    this.stats = { chunks: 0, samples: 0, underruns: 0, flushes: 0 };
  }

  push(data) {
    const n = data.byteLength >> 1;
    if (!n) return;
    const view = new DataView(data);
    const samples = new Float32Array(n);
    for (let i = 0; i < n; i++) samples[i] = view.getInt16(2 * i, true) / 32768;
    const buffer = this.ctx.createBuffer(1, n, this.rate);
    buffer.copyToChannel(samples, 0);

    const now = this.ctx.currentTime;
    if (this.nextTime < now + MIN_LEAD_S) {
      if (this.sources.size) this.stats.underruns++; // ran dry mid-reply
      this.nextTime = now + JITTER_S;
    }
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.input);
    source.onended = () => {
      this.sources.delete(source);
      source.disconnect();
    };
    source.start(this.nextTime);
    this.sources.add(source);
    if (this.mediaNext !== null) {
      this.watchOnsets(samples, this.mediaNext, this.nextTime);
      this.spans.push({ c0: this.nextTime, c1: this.nextTime + n / this.rate, m0: this.mediaNext });
      if (this.spans.length > MAX_SPANS) this.spans.splice(0, this.spans.length - MAX_SPANS);
      this.mediaNext += n / this.rate;
    }
    this.nextTime += n / this.rate;
    this.stats.chunks++;
    this.stats.samples += n;
  }

  // The next chunk's first sample is media time `t` (s); the chunks after it follow on.
  at(t) {
    this.mediaNext = Number.isFinite(t) ? t : null;
    this.run = { pos: 0, scan: 0, tail: new Float32Array(0), quietS: Infinity };
  }

  // Notes where the voice turns audible (tests measure lip-sync against it): the end of the
  // first window of ONSET_WINDOW_S (an analyser's 512 samples at 48 kHz) whose RMS reaches
  // ONSET_RMS after ONSET_QUIET_S of quieter ones (or a run's start), in 1 ms steps.
  // `samples` follow on from the run's last ones and start at media time m0, context c0.
  watchOnsets(samples, m0, c0) {
    const run = this.run;
    if (!run) return;
    const width = Math.round(this.rate * ONSET_WINDOW_S);
    const step = Math.max(1, Math.round(this.rate / 1000));
    const x = new Float32Array(run.tail.length + samples.length);
    x.set(run.tail);
    x.set(samples, run.tail.length);
    const first = run.pos - run.tail.length; // the run's index of x[0]
    const end = run.pos + samples.length;
    let e = Math.max(run.scan, width);
    for (; e <= end; e += step) {
      let sum = 0;
      for (let j = e - width - first; j < e - first; j++) sum += x[j] * x[j];
      if (Math.sqrt(sum / width) < ONSET_RMS) {
        run.quietS += step / this.rate;
        continue;
      }
      if (run.quietS >= ONSET_QUIET_S) {
        const after = (e - run.pos) / this.rate;
        this.onsets.push({ m: m0 + after, c: c0 + after });
        if (this.onsets.length > 100) this.onsets.shift();
      }
      run.quietS = 0;
    }
    run.scan = e;
    run.pos = end;
    run.tail = x.slice(Math.max(0, x.length - width));
  }

  // The media time (s) at context time `c` (null before any voice with a media time): that
  // of the chunk playing then; between chunks, the next one's run back to `c` (a run of
  // voice that is queued sets the clock before it sounds, so the lips start with it);
  // after the last, the last one's run on.
  mediaAt(c) {
    let next = null;
    for (let i = this.spans.length - 1; i >= 0; i--) {
      const s = this.spans[i];
      if (c >= s.c1) return next ? next.m0 - (next.c0 - c) : s.m0 + (c - s.c0);
      if (c >= s.c0) return s.m0 + (c - s.c0);
      next = s;
    }
    return next ? next.m0 - (next.c0 - c) : null;
  }

  // Seconds of voice queued ahead of what the speaker plays now.
  lead() {
    return this.sources.size ? Math.max(0, this.nextTime - this.ctx.currentTime) : 0;
  }

  flush() {
    if (!this.sources.size) return;
    for (const source of this.sources) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        /* not started yet in some browsers: disconnecting silences it all the same */
      }
      source.disconnect();
    }
    this.sources.clear();
    this.nextTime = 0;
    // What was queued will never play: its media times no longer map to the speaker.
    const now = this.ctx.currentTime;
    this.spans = this.spans.filter((s) => s.c0 < now).map((s) => ({ ...s, c1: Math.min(s.c1, now) }));
    this.mediaNext = null;
    this.run = null;
    this.stats.flushes++;
  }

  setVolume(volume) {
    this.output.gain.value = volume;
  }

  close() {
    this.flush();
    this.input.disconnect();
    this.output.disconnect();
  }
}
