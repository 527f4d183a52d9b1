// Per-frame geometry of what is painted over the warp, as in the Python renderer:
// the inner mouth (avatar/mouth.py MouthPainter) and the closing eyes (avatar/render.py
// _close_eyes). Each class fills preallocated arrays from the deformed points; gl.js hands
// them to the shaders (shaders.js MOUTH_FS, EYE_FS). No allocation per frame.

const NX = 24; // samples along the mouth (mouth.py: np.linspace(..., 24))

function clamp(v, lo, hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

function clamp01(v) {
  return Number.isFinite(v) ? clamp(v, 0, 1) : 0;
}

// Sort idx (Int32Array, in place) by key(i), stable (insertion sort: at most 16 items).
function sortBy(idx, n, key) {
  for (let i = 1; i < n; i++) {
    const v = idx[i];
    const kv = key(v);
    let j = i - 1;
    while (j >= 0 && key(idx[j]) > kv) {
      idx[j + 1] = idx[j];
      j--;
    }
    idx[j + 1] = v;
  }
}

// np.interp(x, xs, ys) over n points given as parallel arrays (xs increasing).
function interp(x, xs, ys, n) {
  if (!(x > xs[0])) return ys[0];
  if (x >= xs[n - 1]) return ys[n - 1];
  let lo = 0;
  let hi = n - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (x < xs[mid]) hi = mid; else lo = mid;
  }
  const dx = xs[hi] - xs[lo];
  return dx === 0 ? ys[lo] : ys[lo] + ((ys[hi] - ys[lo]) / dx) * (x - xs[lo]);
}

/** The inner mouth's shader inputs for one frame (mouth.py, step by step). */
export class MouthGeometry {
  constructor(doc) {
    this.upperIdx = Int32Array.from(doc.mouth.upper_inner);
    this.lowerIdx = Int32Array.from(doc.mouth.lower_inner);
    this.minGap = doc.mouth.min_gap_px;
    this.faceH = doc.face_h;
    this.size = doc.size;
    const n = Math.max(this.upperIdx.length, this.lowerIdx.length);
    this.su = new Int32Array(this.upperIdx.length);
    this.sl = new Int32Array(this.lowerIdx.length);
    this.ux = new Float64Array(n); this.uy = new Float64Array(n);
    this.lx = new Float64Array(n); this.ly = new Float64Array(n);
    this.xs = new Float64Array(NX); this.top = new Float64Array(NX); this.bot = new Float64Array(NX);
    this.u = new Float64Array(NX);
    this.nPoly = this.upperIdx.length + this.lowerIdx.length;
    if (this.nPoly > 24) throw new Error(`avatar rig: ${this.nPoly} inner-lip points, the shader takes 24`);
    // Shader uniforms.
    this.poly = new Float32Array(48);
    this.cav = new Float32Array(4);
    this.tongue = new Float32Array(4);
    this.tongue2 = new Float32Array(4);
    this.xsInfo = new Float32Array(4);
    this.edge = new Float32Array(2 * NX);
    this.cols = new Float32Array(4 * NX);
    this.bandX = new Float32Array(4);
    this.bandOn = new Float32Array(2);
    this.rect = new Float32Array(4);
    this.kx = new Float64Array(NX); this.kt = new Float64Array(NX); this.kb = new Float64Array(NX);
    this.keyX = (i) => this.p[2 * i];
  }

  /** Fill the uniforms for points `p` and params `v` (PARAM_NAMES order); false: nothing to paint. */
  update(p, v) {
    const { su, sl, ux, uy, lx, ly, xs, top, bot } = this;
    this.p = p;
    su.set(this.upperIdx); sl.set(this.lowerIdx);
    sortBy(su, su.length, this.keyX);
    sortBy(sl, sl.length, this.keyX);
    const nu = su.length, nl = sl.length;
    for (let i = 0; i < nu; i++) { ux[i] = p[2 * su[i]]; uy[i] = p[2 * su[i] + 1]; }
    for (let i = 0; i < nl; i++) { lx[i] = p[2 * sl[i]]; ly[i] = p[2 * sl[i] + 1]; }
    const xa = Math.max(ux[0], lx[0]);
    const xb = Math.min(ux[nu - 1], lx[nl - 1]);
    let gap = -Infinity, cySum = 0, botMax = -Infinity;
    for (let i = 0; i < NX; i++) {
      xs[i] = i === NX - 1 ? xb : xa + ((xb - xa) * i) / (NX - 1);
      top[i] = interp(xs[i], ux, uy, nu);
      bot[i] = interp(xs[i], lx, ly, nl);
      gap = Math.max(gap, bot[i] - top[i]);
      cySum += 0.5 * (top[i] + bot[i]);
      botMax = Math.max(botMax, bot[i]);
    }
    if (!(gap >= this.minGap)) return false;
    // The polygon: upper lip left to right, lower lip right to left.
    let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    for (let i = 0; i < nu + nl; i++) {
      const x = i < nu ? ux[i] : lx[nl - 1 - (i - nu)];
      const y = i < nu ? uy[i] : ly[nl - 1 - (i - nu)];
      this.poly[2 * i] = x; this.poly[2 * i + 1] = y;
      minX = Math.min(minX, x); maxX = Math.max(maxX, x); minY = Math.min(minY, y); maxY = Math.max(maxY, y);
    }
    const r = this.rect;
    r[0] = Math.max(Math.floor(minX) - 2, 0); r[1] = Math.max(Math.floor(minY) - 2, 0);
    r[2] = Math.min(Math.ceil(maxX) + 3, this.size); r[3] = Math.min(Math.ceil(maxY) + 3, this.size);
    if (r[2] - r[0] < 2 || r[3] - r[1] < 2) return false;
    const cx = 0.5 * (xs[0] + xs[NX - 1]);
    const halfRaw = 0.5 * (xs[NX - 1] - xs[0]);
    const half = Math.max(halfRaw, 1);
    const c = this.cav;
    c[0] = cx; c[1] = cySum / NX; c[2] = half; c[3] = Math.max(0.6 * gap, 1);
    const xi = this.xsInfo;
    xi[0] = xs[0]; xi[1] = xs[NX - 1]; xi[2] = half; xi[3] = halfRaw;
    this._tongue(cx, halfRaw, botMax, gap);
    for (let i = 0; i < NX; i++) this.u[i] = (xs[i] - cx) / half;
    this.jaw = clamp01(v[0]);
    this.thickU = 0.34 + 0.3 * clamp01(v[3]) - 0.15 * clamp01(v[2]);
    this._band(0, 0.78);
    this._band(1, 0.58);
    return true;
  }

  _tongue(cx, halfRaw, botMax, gap) {
    const vis = clamp((gap - 5) / 10, 0, 1);
    const cy = botMax + 0.05 * gap;
    // cv2.ellipse takes integer quarter pixels: centre rounded, axes truncated.
    const t = this.tongue;
    t[0] = Math.round(cx * 4) / 4; t[1] = Math.round(cy * 4) / 4;
    t[2] = Math.trunc(halfRaw * 0.62 * 4) / 4; t[3] = Math.trunc(gap * 0.42 * 4) / 4;
    const sigma = Math.max(gap * 0.12, 1);
    const t2 = this.tongue2;
    t2[0] = Math.sqrt(sigma * sigma + 1 / 12); t2[1] = 0.75 * vis; t2[2] = cy - 0.4 * gap; t2[3] = Math.max(0.4 * gap, 1);
  }

  // A teeth band's curves at sample i (slot 0: the upper teeth hang from the upper lip;
  // 1: the lower teeth rise from the lower lip once the jaw is well open) into yt, yb.
  _curves(slot, i, span) {
    const { top, bot } = this;
    if (slot === 0) {
      const th = Math.min(0.048 * this.faceH, (bot[i] - top[i]) * this.thickU) * Math.sqrt(span);
      this.yt = top[i] - 1.5; this.yb = top[i] + th;
    } else {
      const vis = clamp((this.jaw - 0.5) / 0.4, 0, 1);
      const tl = Math.min(0.028 * this.faceH, (bot[i] - top[i]) * 0.2) * vis * Math.sqrt(span);
      this.yt = bot[i] - tl; this.yb = bot[i] + 1.5;
    }
  }

  // One teeth band: mouth.py draws the polygon through its kept samples (span > 0.02,
  // thicker than 0.3 px); that polygon, sampled back at every sample between its first and
  // last, goes to cols[slot]; its top curve at every sample (the shading edge) to edge[slot].
  _band(slot, reach) {
    const { kx, kt, kb, xs } = this;
    let n = 0;
    for (let i = 0; i < NX; i++) {
      const span = clamp(1 - (Math.abs(this.u[i]) / reach) ** 4, 0, 1);
      this._curves(slot, i, span);
      this.edge[2 * i + slot] = this.yt;
      if (span > 0.02 && this.yb - this.yt > 0.3) {
        kx[n] = xs[i]; kt[n] = this.yt; kb[n] = this.yb;
        n++;
      }
    }
    const on = n >= 2 && !(slot === 1 && this.jaw <= 0.5);
    this.bandOn[slot] = on ? 1 : 0;
    if (!on) return;
    this.bandX[2 * slot] = kx[0];
    this.bandX[2 * slot + 1] = kx[n - 1];
    for (let i = 0; i < NX; i++) {
      const x = clamp(xs[i], kx[0], kx[n - 1]);
      this.cols[4 * i + 2 * slot] = interp(x, kx, kt, n);
      this.cols[4 * i + 2 * slot + 1] = interp(x, kx, kb, n);
    }
  }
}

/** One eye's lid-tint inputs for one frame (render.py _close_eyes). */
export class EyeGeometry {
  constructor(doc, eye) {
    this.idx = Int32Array.from(eye.index);
    if (this.idx.length > 16) throw new Error(`avatar rig: ${this.idx.length} eye points, the shader takes 16`);
    this.skin = Float32Array.from(eye.colour);
    this.size = doc.size;
    const rest = doc.rest;
    let lo = Infinity, hi = -Infinity;
    for (const i of this.idx) { lo = Math.min(lo, rest[2 * i + 1]); hi = Math.max(hi, rest[2 * i + 1]); }
    this.thick = 1 + 0.22 * (hi - lo); // covers what the slit squeezed
    const sigma = 0.4 * this.thick + 0.5;
    // cv2.polylines(thickness t, LINE_AA) covers this far either side of the line (measured).
    const t = Math.max(Math.round(this.thick), 1);
    const reach = t === 1 ? 0.69 : Math.floor((t + 1) / 2) + 0.77;
    this.info = new Float32Array([0, 0, reach, Math.sqrt(sigma * sigma + 1 / 12)]);
    this.order = new Int32Array(this.idx.length);
    this.angle = new Float64Array(this.idx.length);
    this.ring = new Float32Array(32);
    this.lash = new Float32Array(32);
    this.rect = new Float32Array(4);
    this.visible = false; // set by the renderer: update() found the eye on the image
    this.byAngle = (k) => this.angle[k];
    this.byX = (k) => this.p[2 * this.idx[k]];
  }

  /** Fill ring, lash line and rectangle for points `p`; false when the eye is off the image. */
  update(p) {
    this.p = p;
    const n = this.idx.length;
    let mx = 0, my = 0, minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    for (let k = 0; k < n; k++) {
      const x = p[2 * this.idx[k]], y = p[2 * this.idx[k] + 1];
      mx += x / n; my += y / n;
      minX = Math.min(minX, x); maxX = Math.max(maxX, x); minY = Math.min(minY, y); maxY = Math.max(maxY, y);
    }
    const r = this.rect;
    r[0] = Math.max(Math.floor(minX - this.thick) - 3, 0); r[1] = Math.max(Math.floor(minY - this.thick) - 3, 0);
    r[2] = Math.min(Math.ceil(maxX + this.thick) + 4, this.size);
    r[3] = Math.min(Math.ceil(maxY + this.thick) + 4, this.size);
    if (r[2] <= r[0] || r[3] <= r[1]) return false;
    // np.argsort's quicksort is not stable; ties (equal angles) are rare and harmless.
    for (let k = 0; k < n; k++) {
      this.order[k] = k;
      this.angle[k] = Math.atan2(p[2 * this.idx[k] + 1] - my, p[2 * this.idx[k]] - mx);
    }
    sortBy(this.order, n, this.byAngle);
    for (let k = 0; k < n; k++) {
      const i = this.idx[this.order[k]];
      this.ring[2 * k] = p[2 * i]; this.ring[2 * k + 1] = p[2 * i + 1];
    }
    for (let k = 0; k < n; k++) this.order[k] = k;
    sortBy(this.order, n, this.byX);
    for (let k = 0; k < n; k++) {
      const i = this.idx[this.order[k]];
      this.lash[2 * k] = p[2 * i]; this.lash[2 * k + 1] = p[2 * i + 1];
    }
    this.info[0] = minX; this.info[1] = maxX;
    return true;
  }
}

export { clamp01 };
