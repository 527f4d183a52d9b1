// The microphone level, drawn as a bar along the bottom of the Mute button: users see at a
// glance that the page hears them (or that the mute works). It follows the outgoing mic
// track after the browser's processing, so a muted or silent mic shows nothing.

// RMS in dBFS mapped onto the bar: quiet room noise stays at 0, normal speech fills most of it.
const FLOOR_DB = -60;
const FULL_DB = -10;
// Per 10 ms tick: the bar jumps up at once and falls back over ~300 ms, like a VU meter.
const FALL = 0.9;
// The bar is redrawn only when it moves this much (the tick comes every 10 ms).
const STEP = 0.02;

function levelOf(rms) {
  if (!(rms > 0)) return 0;
  const db = 20 * Math.log10(rms);
  return Math.min(1, Math.max(0, (db - FLOOR_DB) / (FULL_DB - FLOOR_DB)));
}

export class MicLevel {
  constructor(element) {
    this.element = element;
    this.reset();
  }

  // One envelope sample of the outgoing mic (RMS, 0..1).
  tick(rms) {
    this.level = Math.max(levelOf(rms), this.level * FALL);
    if (this.level < STEP) this.level = 0;
    this.peak = Math.max(this.peak, this.level);
    if (Math.abs(this.level - this.shown) >= STEP || (this.level === 0 && this.shown !== 0)) {
      this.shown = this.level;
      this.element.style.setProperty("--mic-level", this.shown.toFixed(2));
    }
  }

  reset() {
    this.level = 0;
    this.peak = 0;
    this.shown = 0;
    this.element.style.setProperty("--mic-level", "0");
  }

  snapshot() {
    return { level: this.shown, peak: this.peak };
  }
}
