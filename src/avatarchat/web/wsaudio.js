// Audio of the WebSocket transport, both ways, through the page's one AudioContext:
//   captureMic   the microphone as 16-bit LE mono PCM at the server's rate (micworklet.js)
//   ReplyPlayer  the avatar's voice from binary PCM messages, scheduled gaplessly behind a
//                small jitter buffer, stopped at once by flush()

// The cushion a reply starts with (and restarts with after running dry): enough to ride out
// a late message on a busy machine, short enough not to be heard as a delay.
const JITTER_S = 0.08;
// A chunk due sooner than this is late: the cushion is rebuilt instead of playing it clipped.
const MIN_LEAD_S = 0.005;

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
export class ReplyPlayer {
  constructor(ctx, rate) {
    this.ctx = ctx;
    this.rate = rate;
    this.input = ctx.createGain();
    this.output = ctx.createGain();
    this.input.connect(this.output).connect(ctx.destination);
    this.sources = new Set();
    this.nextTime = 0; // context time where the next chunk starts; 0: nothing queued
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
    this.nextTime += n / this.rate;
    this.stats.chunks++;
    this.stats.samples += n;
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
