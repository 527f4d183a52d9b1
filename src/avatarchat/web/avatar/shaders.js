// GLSL (WebGL2, GLSL ES 3.00) for gl.js. Pixel coordinates follow OpenCV's convention as
// the Python renderer does: pixel (i, j) of the portrait, row j from the top, has its centre
// at (i, j); in window coordinates that is (i + 0.5, size - j - 0.5).
//
// The anti-aliased, Gaussian-blurred masks of avatar/mouth.py and render.py (cv2.fillPoly
// with LINE_AA, then GaussianBlur) are evaluated analytically: an edge blurred by sigma,
// after an AA fill that spreads it over about a pixel (variance 1/12), is a normal CDF of the
// signed distance with sd = sqrt(sigma^2 + 1/12). OpenCV's AA fill (4x sub-pixel) covers
// more than the polygon: measured on ellipse-like polygons, it matches the exact coverage of
// the polygon grown by AA_GROW px and moved by AA_SHIFT px (mean error 0.9/255).

const COMMON = `#version 300 es
precision highp float;
precision highp int;
uniform float u_size;
const float AA_GROW = 0.67;
const vec2 AA_SHIFT = vec2(0.1);
// The normal CDF (Abramowitz-Stegun 7.1.26 erf, |error| < 1.5e-7).
float ncdf(float x) {
  float z = abs(x) * 0.70710678;
  float t = 1.0 / (1.0 + 0.3275911 * z);
  float e = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-z * z);
  return x >= 0.0 ? 0.5 + 0.5 * e : 0.5 - 0.5 * e;
}
// Coverage of the interval [a, b] blurred by sd, at x.
float interval(float x, float a, float b, float sd) {
  return max(ncdf((x - a) / sd) - ncdf((x - b) / sd), 0.0);
}
// This pixel in OpenCV's coordinates, less AA_SHIFT (the shapes are tested against it).
vec2 pixel() { return vec2(gl_FragCoord.x - 0.5, u_size - gl_FragCoord.y - 0.5) - AA_SHIFT; }
`;

/** The portrait, texel for texel (every pixel outside the moving mesh stays exact). */
export const BACKGROUND_VS = `#version 300 es
void main() {
  vec2 p = vec2(gl_VertexID == 1 ? 3.0 : -1.0, gl_VertexID == 2 ? 3.0 : -1.0);
  gl_Position = vec4(p, 0.0, 1.0);
}`;

export const BACKGROUND_FS = `${COMMON}
uniform sampler2D u_tex;
out vec4 o;
void main() {
  ivec2 ij = ivec2(int(gl_FragCoord.x), int(u_size) - 1 - int(gl_FragCoord.y));
  o = vec4(texelFetch(u_tex, ij, 0).rgb, 1.0);
}`;

/** The forward piecewise-affine warp: deformed positions, rest texture coordinates. */
export const WARP_VS = `#version 300 es
uniform float u_size;
in vec2 a_pos;
in vec2 a_rest;
out vec2 v_uv;
void main() {
  v_uv = (a_rest + 0.5) / u_size;
  vec2 c = (a_pos + 0.5) / u_size * 2.0 - 1.0;
  gl_Position = vec4(c.x, -c.y, 0.0, 1.0);
}`;

export const WARP_FS = `#version 300 es
precision highp float;
uniform sampler2D u_tex;
in vec2 v_uv;
out vec4 o;
void main() { o = vec4(texture(u_tex, v_uv).rgb, 1.0); }`;

/** A rectangle of whole pixels [x0, x1) x [y0, y1) (image rows from the top). */
export const RECT_VS = `#version 300 es
uniform float u_size;
uniform vec4 u_rect;
void main() {
  int k = gl_VertexID;
  float x = (k == 1 || k == 2 || k == 4) ? u_rect.z : u_rect.x;
  float y = (k == 2 || k == 4 || k == 5) ? u_rect.w : u_rect.y;
  gl_Position = vec4(x / u_size * 2.0 - 1.0, 1.0 - y / u_size * 2.0, 0.0, 1.0);
}`;

/** avatar/mouth.py MouthPainter.paint: cavity, tongue, teeth, inside the inner-lip polygon.
 * Output is premultiplied (blend ONE, ONE_MINUS_SRC_ALPHA). */
export const MOUTH_FS = `${COMMON}
const int NP = 24;
const int NX = 24;
uniform vec2 u_poly[NP];
uniform int u_npoly;
uniform vec3 u_cavEdge, u_cavDeep, u_tongueCol, u_teethCol;
uniform vec4 u_cav;       // cx, cy, half, max(0.6 gap, 1)
uniform vec4 u_tongue;    // ellipse cx, cy, ax, ay
uniform vec4 u_tongue2;   // sd, alpha, shade y0, shade span
uniform vec4 u_xs;        // xs[0], xs[NX-1], half (for u), half-width (for seams)
uniform vec4 u_cols[NX];  // per sample: upper band top, bottom; lower band top, bottom
uniform vec2 u_edge[NX];  // per sample: the shading edge of the upper and lower bands
uniform vec4 u_bandX;     // the bands' kept x ranges: upper first, last; lower first, last
uniform vec2 u_bandOn;    // 1 where a band is drawn
uniform float u_dimL;
out vec4 o;

// Signed distance to the inner-lip polygon, negative inside (even-odd, as cv2.fillPoly).
float polyDist(vec2 p) {
  float d = 1e20;
  float s = 1.0;
  for (int i = 0, j = u_npoly - 1; i < u_npoly; j = i, i++) {
    vec2 a = u_poly[i], e = u_poly[j] - a, w = p - a;
    vec2 b = w - e * clamp(dot(w, e) / max(dot(e, e), 1e-12), 0.0, 1.0);
    d = min(d, dot(b, b));
    bvec3 c = bvec3(p.y >= a.y, p.y < u_poly[j].y, e.x * w.y > e.y * w.x);
    if (all(c) || all(not(c))) s = -s;
  }
  return s * sqrt(d);
}

// The per-sample columns at x (samples are evenly spaced, as np.linspace).
vec4 cols(float x, out vec2 edge) {
  float f = clamp((x - u_xs.x) / max(u_xs.y - u_xs.x, 1e-6), 0.0, 1.0) * float(NX - 1);
  int i = min(int(f), NX - 2);
  float t = f - float(i);
  edge = mix(u_edge[i], u_edge[i + 1], t);
  return mix(u_cols[i], u_cols[i + 1], t);
}

void main() {
  vec2 p = pixel();
  float dist = polyDist(p);
  if (dist > 3.5) discard; // the mask is 0 there (sd 0.58)
  float mask = ncdf((AA_GROW - dist) / 0.5774); // sqrt(0.5^2 + 1/12)
  // Cavity: darkest in the middle-back.
  float r = length(vec2((p.x - u_cav.x) / u_cav.z, (p.y - u_cav.y) / u_cav.w));
  vec3 layer = u_cavDeep + (u_cavEdge - u_cavDeep) * pow(clamp(r, 0.0, 1.0), 1.5);
  // Tongue: a blurred ellipse, shaded darker towards its top.
  if (u_tongue2.y > 0.0 && u_tongue.z > 0.0 && u_tongue.w > 0.0) {
    vec2 q = (p - u_tongue.xy) / u_tongue.zw;
    float lq = max(length(q), 1e-6);
    vec2 grad = q / (u_tongue.zw * lq);
    float d = (lq - 1.0) / max(length(grad), 1e-6); // outside positive
    float a = ncdf((AA_GROW - d) / u_tongue2.x) * u_tongue2.y;
    float shade = clamp(0.55 + 0.45 * (p.y - u_tongue2.z) / u_tongue2.w, 0.5, 1.0);
    layer = layer * (1.0 - a) + u_tongueCol * shade * a;
  }
  // Teeth: two bands between curves, blurred 0.45 px after the AA fill, shaded darker
  // towards the corners, in the lip's shadow and at the seams between the front teeth.
  const float SD = 0.5354; // sqrt(0.45^2 + 1/12)
  vec2 edge, unused;
  cols(p.x, edge);
  vec4 up = cols(clamp(p.x, u_bandX.x, u_bandX.y), unused);
  vec4 lo = cols(clamp(p.x, u_bandX.z, u_bandX.w), unused);
  const float G = AA_GROW;
  float mu = u_bandOn.x * interval(p.y, up.x - G, up.y + G, SD) * interval(p.x, u_bandX.x - G, u_bandX.y + G, SD);
  float ml = u_bandOn.y * interval(p.y, lo.z - G, lo.w + G, SD) * interval(p.x, u_bandX.z - G, u_bandX.w + G, SD);
  if (mu > 0.0 || ml > 0.0) {
    float ux = (clamp(p.x, u_xs.x, u_xs.y) - 0.5 * (u_xs.x + u_xs.y)) / u_xs.z;
    float shade = 1.0 - 0.45 * pow(clamp(abs(ux), 0.0, 1.0), 1.6);
    float seams = 1.0;
    const float S[5] = float[5](0.0, 0.2, -0.2, 0.38, -0.38);
    for (int i = 0; i < 5; i++) {
      float q = (ux - S[i]) * u_xs.w;
      seams -= 0.12 * exp(-q * q / 0.8);
    }
    shade *= seams;
    vec2 shadow = 0.7 + 0.3 * clamp(abs(p.y - edge) / 3.0, 0.0, 1.0);
    float a = 0.9 * mu;
    layer = layer * (1.0 - a) + u_teethCol * (shade * shadow.x) * a;
    a = 0.9 * ml;
    layer = layer * (1.0 - a) + u_teethCol * (shade * shadow.y * u_dimL) * a;
  }
  o = vec4(layer * (mask / 255.0), mask);
}`;

/** render.py _close_eyes: the closing eye covered with lid skin and a soft lash line.
 * Output is premultiplied (blend ONE, ONE_MINUS_SRC_ALPHA). */
export const EYE_FS = `${COMMON}
const int NE = 16;
uniform vec2 u_ring[NE];  // the eye's points sorted by angle (a closed polygon)
uniform vec2 u_lash[NE];  // the same points sorted by x (an open polyline)
uniform int u_n;
uniform vec4 u_eye;       // x min, x max, half width of the outline as drawn, sd of the lid mask
uniform vec3 u_skin;      // lid colour
uniform float u_k;        // 0..1: how far past half-closed
out vec4 o;

void main() {
  vec2 p = pixel();
  // The filled ring plus its outline, column by column: [lowest, highest] crossing at x.
  float x = clamp(p.x, u_eye.x, u_eye.y);
  float lo = 1e20, hi = -1e20;
  for (int i = 0; i < NE; i++) {
    if (i >= u_n) break;
    vec2 a = u_ring[i], b = u_ring[(i + 1) % u_n];
    if (x < min(a.x, b.x) || x > max(a.x, b.x)) continue;
    float y = b.x != a.x ? mix(a.y, b.y, (x - a.x) / (b.x - a.x)) : a.y;
    float y2 = b.x != a.x ? y : b.y;
    lo = min(lo, min(y, y2));
    hi = max(hi, max(y, y2));
  }
  float m = 0.0;
  if (hi >= lo) {
    float h = u_eye.z, sd = u_eye.w;
    m = interval(p.y, lo - h, hi + h, sd) * interval(p.x, u_eye.x - h, u_eye.y + h, sd);
  }
  // The lash line: a 1 px AA line (1.38 px of cover across it) blurred by 0.7 px.
  float d = 1e20;
  for (int i = 0; i + 1 < NE; i++) {
    if (i + 1 >= u_n) break;
    vec2 a = u_lash[i], e = u_lash[i + 1] - a, w = p - a;
    vec2 b = w - e * clamp(dot(w, e) / max(dot(e, e), 1e-12), 0.0, 1.0);
    d = min(d, dot(b, b));
  }
  d = sqrt(d);
  float lash = interval(d, -0.69, 0.69, 0.7583); // sqrt(0.7^2 + 1/12)
  float a = m * 0.85 * u_k;
  float b = lash * 0.45 * u_k;
  vec3 rgb = u_skin * a * (1.0 - b) + u_skin * 0.35 * b;
  o = vec4(rgb / 255.0, 1.0 - (1.0 - a) * (1.0 - b));
}`;
