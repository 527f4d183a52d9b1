// AudioWorklet processor (audio thread) of the WebSocket transport: the microphone, mixed
// to mono by the node, low-passed and resampled from the context's rate to the server's
// `sample_rate`, posted to the main thread as 16-bit little-endian PCM in blocks of
// `blockSamples` samples (an ArrayBuffer each, transferred, not copied).
//
// Resampling: a windowed-sinc low-pass (cut at 45 % of the target rate, so nothing folds
// back into the band the speech recogniser hears), then linear interpolation between the
// filtered samples, which is exact enough once the band above the cut is gone.

const TAPS = 63;

// Blackman-windowed sinc low-pass, `cutoff` in cycles per input sample, unit DC gain.
function lowpass(cutoff) {
  const kernel = new Float32Array(TAPS);
  const mid = (TAPS - 1) / 2;
  let sum = 0;
  for (let n = 0; n < TAPS; n++) {
    const x = n - mid;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * n) / (TAPS - 1)) + 0.08 * Math.cos((4 * Math.PI * n) / (TAPS - 1));
    kernel[n] = sinc * w;
    sum += kernel[n];
  }
  for (let n = 0; n < TAPS; n++) kernel[n] /= sum;
  return kernel;
}

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, blockSamples } = options.processorOptions;
    this.step = sampleRate / targetRate; // input samples per output sample
    // Upsampling (a target above the context's rate) needs no anti-alias filter.
    this.kernel = this.step > 1 ? lowpass(0.45 / this.step) : Float32Array.of(1);
    this.history = new Float32Array(this.kernel.length * 2); // doubled ring: one contiguous window
    this.head = 0;
    this.prev = 0; // the previous filtered sample
    this.t = 0; // where the next output falls, in input samples after `prev`
    this.blockSamples = blockSamples;
    this.newBlock();
    this.stopped = false;
    this.port.onmessage = (ev) => {
      if (ev.data === "stop") this.stopped = true;
    };
  }

  newBlock() {
    this.block = new ArrayBuffer(this.blockSamples * 2);
    this.view = new DataView(this.block);
    this.filled = 0;
  }

  filter(x) {
    const k = this.kernel, n = k.length, h = this.history;
    h[this.head] = x;
    h[this.head + n] = x;
    this.head = (this.head + 1) % n;
    // h[head .. head+n) is the last n inputs, oldest first.
    let y = 0;
    for (let i = 0; i < n; i++) y += k[i] * h[this.head + i];
    return y;
  }

  emit(value) {
    const s = Math.max(-1, Math.min(1, value));
    this.view.setInt16(this.filled * 2, Math.round(s * 32767), true);
    if (++this.filled === this.blockSamples) {
      this.port.postMessage(this.block, [this.block]);
      this.newBlock();
    }
  }

  process(inputs) {
    if (this.stopped) return false;
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // no input connected yet
    for (let i = 0; i < channel.length; i++) {
      const y = this.filter(channel[i]);
      while (this.t < 1) {
        this.emit(this.prev + (y - this.prev) * this.t);
        this.t += this.step;
      }
      this.t -= 1;
      this.prev = y;
    }
    return true;
  }
}

registerProcessor("avatarchat-pcm-capture", PcmCapture);
