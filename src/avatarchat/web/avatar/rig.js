// The avatar's mesh deformation in the page: a port of avatar/deform.py's FaceRig.deformed.
//
// The rig document (GET /api/avatar/rig, avatar/rig_export.py) carries the rest points, one
// displacement basis per blend-shape channel, the pucker's lip data and the head-pose
// geometry. For the same FaceParams this module puts every point where the Python rig does
// (to ~0.01 px: the document rounds to 1/1000 px), so the page's picture and the server's
// video agree.
//
//   import { PARAM_NAMES, deform } from "./rig.js";
//   const pts = deform(rigDoc, { jaw: 0.5, blink: 1 });   // Float32Array [x0, y0, x1, y1, ...]
//
// Params are an object keyed by name or an array in PARAM_NAMES order; missing or
// non-finite values count as 0, and values are clamped as the Python renderer clamps them.
// Points are in the portrait's pixels with OpenCV's convention (pixel i's centre at i).

/** FaceParams fields in wire order (avatar/params.py; the "face" rows use this order). */
export const PARAM_NAMES = Object.freeze([
  "jaw", "stretch", "round", "upper", "press", "blink", "brows", "yaw", "pitch", "roll", "breath", "smile",
]);

const compiled = new WeakMap();

/** The rig document in typed arrays, made once per document (cached). */
export function compileRig(doc) {
  let c = compiled.get(doc);
  if (c) return c;
  if (!doc || doc.version !== 1) throw new Error(`avatar rig: version ${doc && doc.version}, this page reads 1`);
  const nf = doc.n_face;
  const sh = doc.shapes;
  const pk = doc.pucker;
  c = {
    size: doc.size,
    nPoints: doc.n_points,
    nFace: nf,
    rest: Float64Array.from(doc.rest),
    // Each channel's value comes from the params by name; the basis rows are [nFace * 2].
    channels: sh.names.map((name, i) => ({
      name, param: PARAM_NAMES.indexOf(name), lo: sh.ranges[i][0], hi: sh.ranges[i][1], delta: Float64Array.from(sh.delta[i]),
    })),
    roundChannel: sh.names.indexOf("round"),
    pucker: {
      amount: pk.amount, fullAt: pk.full_at, index: Int32Array.from(pk.index),
      weight: Float64Array.from(pk.weight), absU: Float64Array.from(pk.abs_u),
      mid: new Float64Array(pk.index.length),
    },
    upperInner: Int32Array.from(doc.mouth.upper_inner),
    lowerInner: Int32Array.from(doc.mouth.lower_inner),
    faceC: doc.head.face_c, pivot: doc.head.roll_pivot, depth: Float64Array.from(doc.head.depth),
    maxDeg: doc.head.max_deg, breathPx: doc.head.breath_fraction * doc.face_h,
    work: Float64Array.from(doc.rest), // scratch: the points before the float32 cast
    values: new Float64Array(PARAM_NAMES.length),
    weights: new Float64Array(sh.names.length),
  };
  for (const ch of c.channels) {
    if (ch.param < 0) throw new Error(`avatar rig: unknown channel ${ch.name}`);
  }
  compiled.set(doc, c);
  return c;
}

function finite(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

function clamp(v, lo, hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

/** Params (object or PARAM_NAMES-ordered array) into `out`, non-finite as 0. */
export function paramValues(params, out = new Float64Array(PARAM_NAMES.length)) {
  const arr = Array.isArray(params) || ArrayBuffer.isView(params);
  for (let i = 0; i < PARAM_NAMES.length; i++) {
    out[i] = finite(params == null ? 0 : arr ? params[i] : params[PARAM_NAMES[i]]);
  }
  return out;
}

// np.interp(x, xs, ys) for xs = the x of `idx` points in p (increasing in practice).
function interpAt(x, p, idx) {
  const n = idx.length;
  const x0 = p[2 * idx[0]];
  if (!(x > x0)) return p[2 * idx[0] + 1];
  const xn = p[2 * idx[n - 1]];
  if (x >= xn) return p[2 * idx[n - 1] + 1];
  let lo = 0;
  let hi = n - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (x < p[2 * idx[mid]]) hi = mid; else lo = mid;
  }
  const xa = p[2 * idx[lo]], ya = p[2 * idx[lo] + 1];
  const dx = p[2 * idx[hi]] - xa;
  return dx === 0 ? ya : ya + ((p[2 * idx[hi] + 1] - ya) / dx) * (x - xa);
}

// Rounded lips leave a small oval opening: deform.py FaceRig._pucker, in place on `p`.
function pucker(c, p, amount) {
  const pk = c.pucker;
  const half = 1 - pk.amount * amount;
  const strength = Math.min(1, amount / pk.fullAt);
  // Every mid is taken from the blended points before any moves (numpy does the same).
  for (let k = 0; k < pk.index.length; k++) {
    const x = p[2 * pk.index[k]];
    pk.mid[k] = 0.5 * (interpAt(x, p, c.upperInner) + interpAt(x, p, c.lowerInner));
  }
  for (let k = 0; k < pk.index.length; k++) {
    const j = 2 * pk.index[k] + 1;
    const u = pk.absU[k] / half;
    const keep = Math.sqrt(clamp(1 - u * u, 0, 1));
    p[j] += (pk.mid[k] - p[j]) * (1 - keep) * pk.weight[k] * strength;
  }
}

// Head pose and breath on the face points: deform.py FaceRig._head.
function head(c, p, v) {
  const k = Math.PI / 180;
  const yaw = clamp(v[7], -c.maxDeg, c.maxDeg) * k;
  const pitch = clamp(v[8], -c.maxDeg, c.maxDeg) * k;
  const roll = clamp(v[9], -c.maxDeg, c.maxDeg) * k;
  const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
  const cr = Math.cos(roll), sr = Math.sin(roll);
  const fx = c.faceC[0], fy = c.faceC[1];
  const px = c.pivot[0], py = c.pivot[1];
  const lift = c.breathPx * clamp(v[10], 0, 1);
  for (let i = 0; i < c.nFace; i++) {
    const z = c.depth[i];
    const x = fx + (p[2 * i] - fx) * cy + z * sy;
    const y = fy + (p[2 * i + 1] - fy) * cp + z * sp;
    const qx = x - px, qy = y - py;
    p[2 * i] = px + qx * cr - qy * sr;
    p[2 * i + 1] = py + qx * sr + qy * cr - lift;
  }
}

/**
 * Deform the mesh for `params` into `out` (Float32Array [nPoints * 2]) and return the
 * largest displacement of any coordinate from rest (the Python renderer draws the plain
 * portrait when it is at most 1e-3 px). No allocation once the rig is compiled.
 */
export function deformInto(rig, params, out) {
  const c = compileRig(rig);
  const v = paramValues(params, c.values);
  const p = c.work;
  p.set(c.rest);
  const n2 = 2 * c.nFace;
  for (let k = 0; k < c.channels.length; k++) {
    const ch = c.channels[k];
    const w = clamp(v[ch.param], ch.lo, ch.hi);
    c.weights[k] = w;
    if (w === 0) continue;
    const d = ch.delta;
    for (let i = 0; i < n2; i++) p[i] += w * d[i];
  }
  const rnd = c.weights[c.roundChannel];
  if (rnd > 0) pucker(c, p, rnd);
  head(c, p, v);
  let moved = 0;
  for (let i = 0; i < p.length; i++) {
    out[i] = p[i];
    const m = Math.abs(out[i] - c.rest[i]);
    if (m > moved) moved = m;
  }
  return moved;
}

/** All mesh points for `params` as a new Float32Array [x0, y0, x1, y1, ...]. */
export function deform(rig, params, out = null) {
  const c = compileRig(rig);
  const pts = out || new Float32Array(2 * c.nPoints);
  deformInto(rig, params, pts);
  return pts;
}
