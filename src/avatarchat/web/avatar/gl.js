// The avatar drawn in the page with WebGL2, from the avatar's own assets: the portrait
// (GET /api/avatar/image.png) warped by the rig (GET /api/avatar/rig, rig.js), as the
// Python renderer (avatar/render.py) draws it, so the same FaceParams give the same picture.
//
// API (stable; PAGE and the tests use it):
//   const r = await AvatarRenderer.create(canvas, rigDoc, image);
//                      // image: the portrait's URL (fetched without credentials), or a Blob
//                      // of the PNG (fetch it yourself where a token is needed), or an
//                      // ImageBitmap made with {colorSpaceConversion: "none"}
//                      // throws Error("WebGL2 is not available ...") when it cannot draw:
//                      // the page then shows the server's video instead
//   r.draw(params);    // params: {jaw: .., ...} or an array in PARAM_NAMES order
//   r.readPixels();    // the last frame, RGBA rows top first (call right after draw)
//   r.destroy();       // frees the GL objects (the canvas stays)
//   r.lost             // true once the browser has taken the WebGL context away (a GPU
//                      // reset, too many contexts): draw() then throws, and the page may
//                      // create a new renderer on a new canvas or show the video
//
// A frame: (1) the portrait, texel for texel; (2) the triangles that can move, at their
// deformed positions, sampling the portrait at their rest positions (the forward
// piecewise-affine warp the Python renderer inverts); (3) past half-closed, the eyes'
// lid tint; (4) the inner mouth (cavity, tongue, teeth) inside the inner-lip polygon.
// The canvas keeps the portrait's size; CSS may scale it. No allocation per frame that
// matters: the points, overlays and uniforms live in preallocated arrays.

import { compileRig, deformInto, paramValues } from "./rig.js";
import { EyeGeometry, MouthGeometry, clamp01 } from "./overlays.js";
import {
  BACKGROUND_FS, BACKGROUND_VS, EYE_FS, MOUTH_FS, RECT_VS, WARP_FS, WARP_VS,
} from "./shaders.js";

const MOVED_PX = 1e-3; // render.py: at or below this the portrait is shown as it is

// a := the smallest rectangle holding rectangles a and b ([x0, y0, x1, y1)).
function unite(a, b) {
  a[0] = Math.min(a[0], b[0]); a[1] = Math.min(a[1], b[1]);
  a[2] = Math.max(a[2], b[2]); a[3] = Math.max(a[3], b[3]);
}

function compile(gl, vsSource, fsSource) {
  const prog = gl.createProgram();
  for (const [type, src] of [[gl.VERTEX_SHADER, vsSource], [gl.FRAGMENT_SHADER, fsSource]]) {
    const sh = gl.createShader(type);
    gl.shaderSource(sh, src);
    gl.compileShader(sh);
    if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) {
      const log = gl.getShaderInfoLog(sh);
      gl.deleteShader(sh);
      throw new Error(`avatar renderer: shader does not compile: ${log}`);
    }
    gl.attachShader(prog, sh);
    gl.deleteShader(sh); // freed with the program
  }
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) {
    throw new Error(`avatar renderer: program does not link: ${gl.getProgramInfoLog(prog)}`);
  }
  const n = gl.getProgramParameter(prog, gl.ACTIVE_UNIFORMS);
  const uniforms = {};
  for (let i = 0; i < n; i++) {
    const name = gl.getActiveUniform(prog, i).name.replace(/\[0\]$/, "");
    uniforms[name] = gl.getUniformLocation(prog, name);
  }
  return { prog, u: uniforms };
}

// The portrait from a URL, a Blob (the page fetched it, e.g. with its token) or an image
// the page decoded itself (ImageBitmap, HTMLImageElement, canvas).
async function loadBitmap(image) {
  let blob = image;
  if (typeof image === "string") {
    const resp = await fetch(image);
    if (!resp.ok) throw new Error(`avatar renderer: ${image}: HTTP ${resp.status}`);
    blob = await resp.blob();
  }
  if (!(blob instanceof Blob)) return image;
  // No colour management and no premultiplication: the texels must be the PNG's bytes.
  return createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
}

export class AvatarRenderer {
  /** A renderer on `canvas` (resized to the portrait); rejects when WebGL2 is unavailable. */
  static async create(canvas, rigDoc, image) {
    const rig = compileRig(rigDoc); // validates the document before touching the canvas
    const gl = canvas.getContext("webgl2", {
      alpha: false, antialias: false, depth: false, stencil: false, premultipliedAlpha: false,
      // Kept between frames, so that a frame repaints only the face (a third of the image).
      preserveDrawingBuffer: true, powerPreference: "low-power",
    });
    if (!gl) throw new Error("WebGL2 is not available in this browser");
    const bitmap = await loadBitmap(image);
    const w = bitmap.naturalWidth || bitmap.width, h = bitmap.naturalHeight || bitmap.height;
    if (w !== rig.size || h !== rig.size) {
      throw new Error(`avatar renderer: the image is ${w}x${h}, the rig ${rig.size}x${rig.size}`);
    }
    canvas.width = rig.size;
    canvas.height = rig.size;
    return new AvatarRenderer(gl, rigDoc, bitmap);
  }

  constructor(gl, doc, bitmap) {
    this.gl = gl;
    this.doc = doc;
    const rig = compileRig(doc);
    this.size = rig.size;
    this.points = new Float32Array(2 * rig.nPoints);
    this.values = new Float64Array(12);
    this.mouth = new MouthGeometry(doc);
    this.eyes = doc.eyes.map((e) => new EyeGeometry(doc, e));
    this.pixels = null;
    // Rectangles [x0, y0, x1, y1) in image pixels: see draw().
    this.whole = Float64Array.of(0, 0, this.size, this.size);
    this.faceRegion = Float64Array.from(doc.face_region);
    this.paint = new Float64Array(4);
    this.lastPaint = new Float64Array(4);
    this.scissor = new Float64Array(4);
    this.painted = false; // the canvas holds a whole frame (it is cleared when created)
    this.partial = true; // repaint only what changes (false: the whole canvas every frame)

    this.tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, this.tex);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);

    this.background = compile(gl, BACKGROUND_VS, BACKGROUND_FS);
    this.warp = compile(gl, WARP_VS, WARP_FS);
    this.mouthProg = compile(gl, RECT_VS, MOUTH_FS);
    this.eyeProg = compile(gl, RECT_VS, EYE_FS);

    // The warp mesh: rest positions (static), deformed positions (per frame), triangles.
    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    this.restBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.restBuf);
    gl.bufferData(gl.ARRAY_BUFFER, Float32Array.from(doc.rest), gl.STATIC_DRAW);
    const restLoc = gl.getAttribLocation(this.warp.prog, "a_rest");
    gl.enableVertexAttribArray(restLoc);
    gl.vertexAttribPointer(restLoc, 2, gl.FLOAT, false, 0, 0);
    this.posBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
    gl.bufferData(gl.ARRAY_BUFFER, this.points.byteLength, gl.DYNAMIC_DRAW);
    const posLoc = gl.getAttribLocation(this.warp.prog, "a_pos");
    gl.enableVertexAttribArray(posLoc);
    gl.vertexAttribPointer(posLoc, 2, gl.FLOAT, false, 0, 0);
    this.indexBuf = gl.createBuffer();
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.indexBuf);
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, Uint16Array.from(doc.triangles), gl.STATIC_DRAW);
    this.nIndices = doc.triangles.length;
    gl.bindVertexArray(null);
    this.emptyVao = gl.createVertexArray(); // attribute-less draws (full screen, rectangles)

    for (const p of [this.background, this.warp, this.mouthProg, this.eyeProg]) {
      gl.useProgram(p.prog);
      gl.uniform1f(p.u.u_size, this.size);
      if (p.u.u_tex) gl.uniform1i(p.u.u_tex, 0);
    }
    const c = doc.mouth.colours;
    const u = this.mouthProg.u;
    gl.useProgram(this.mouthProg.prog);
    gl.uniform3fv(u.u_cavEdge, c.cavity_edge);
    gl.uniform3fv(u.u_cavDeep, c.cavity_deep);
    gl.uniform3fv(u.u_tongueCol, c.tongue);
    gl.uniform3fv(u.u_teethCol, c.teeth);
    gl.uniform1f(u.u_dimL, 0.86);
    gl.uniform1i(u.u_npoly, this.mouth.nPoly);
  }

  /** Draw the frame for `params` (object by name or array in PARAM_NAMES order). */
  draw(params) {
    const gl = this.gl;
    if (!gl) throw new Error("avatar renderer: destroyed");
    if (gl.isContextLost()) throw new Error("avatar renderer: the WebGL context was lost");
    const canvas = gl.canvas;
    if (canvas.width !== this.size || canvas.height !== this.size) {
      // Resized from outside (which clears it): back to the portrait's size, painted anew.
      canvas.width = this.size;
      canvas.height = this.size;
      this.painted = false;
    }
    const v = paramValues(params, this.values);
    const moved = deformInto(this.doc, v, this.points) > MOVED_PX;
    const blink = clamp01(v[5]);
    const eyes = moved && blink >= 0.5;
    const mouth = moved && this.mouth.update(this.points, v);
    // What this frame paints: the face region and the overlays; plus what the last frame
    // painted (a frame's overlays may reach past the face region), all of it on the first.
    const r = this.paint;
    r.set(this.faceRegion);
    if (eyes) {
      for (const eye of this.eyes) if ((eye.visible = eye.update(this.points))) unite(r, eye.rect);
    }
    if (mouth) unite(r, this.mouth.rect);
    this.scissor.set(this.painted ? this.lastPaint : this.whole);
    unite(this.scissor, r);
    this.lastPaint.set(r);
    this.painted = this.partial;
    const sc = this.scissor;
    gl.viewport(0, 0, this.size, this.size);
    gl.enable(gl.SCISSOR_TEST);
    gl.scissor(sc[0], this.size - sc[3], sc[2] - sc[0], sc[3] - sc[1]);
    gl.disable(gl.BLEND);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.tex);
    gl.useProgram(this.background.prog);
    gl.bindVertexArray(this.emptyVao);
    gl.drawArrays(gl.TRIANGLES, 0, 3);
    if (moved) {
      gl.useProgram(this.warp.prog);
      gl.bindVertexArray(this.vao);
      gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
      gl.bufferSubData(gl.ARRAY_BUFFER, 0, this.points);
      gl.drawElements(gl.TRIANGLES, this.nIndices, gl.UNSIGNED_SHORT, 0);
      gl.bindVertexArray(this.emptyVao);
      gl.enable(gl.BLEND);
      gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
      if (eyes) this._drawEyes((blink - 0.5) / 0.5);
      if (mouth) this._drawMouth();
      gl.disable(gl.BLEND);
    }
    gl.disable(gl.SCISSOR_TEST);
  }

  _drawEyes(k) {
    const gl = this.gl;
    const { prog, u } = this.eyeProg;
    gl.useProgram(prog);
    gl.uniform1f(u.u_k, k);
    for (const eye of this.eyes) {
      if (!eye.visible) continue;
      gl.uniform4fv(u.u_rect, eye.rect);
      gl.uniform2fv(u.u_ring, eye.ring);
      gl.uniform2fv(u.u_lash, eye.lash);
      gl.uniform1i(u.u_n, eye.idx.length);
      gl.uniform4fv(u.u_eye, eye.info);
      gl.uniform3fv(u.u_skin, eye.skin);
      gl.drawArrays(gl.TRIANGLES, 0, 6);
    }
  }

  _drawMouth() {
    const gl = this.gl;
    const m = this.mouth;
    const { prog, u } = this.mouthProg;
    gl.useProgram(prog);
    gl.uniform4fv(u.u_rect, m.rect);
    gl.uniform2fv(u.u_poly, m.poly);
    gl.uniform4fv(u.u_cav, m.cav);
    gl.uniform4fv(u.u_tongue, m.tongue);
    gl.uniform4fv(u.u_tongue2, m.tongue2);
    gl.uniform4fv(u.u_xs, m.xsInfo);
    gl.uniform2fv(u.u_edge, m.edge);
    gl.uniform4fv(u.u_cols, m.cols);
    gl.uniform4fv(u.u_bandX, m.bandX);
    gl.uniform2fv(u.u_bandOn, m.bandOn);
    gl.drawArrays(gl.TRIANGLES, 0, 6);
  }

  /** Whether the browser took the WebGL context away (draw() throws then). */
  get lost() {
    return !this.gl || this.gl.isContextLost();
  }

  /** The frame just drawn as RGBA bytes, rows from the top (call in the same task as draw). */
  readPixels() {
    const gl = this.gl;
    const s = this.size;
    if (!this.pixels) {
      this.pixels = new Uint8Array(4 * s * s);
      this.row = new Uint8Array(4 * s);
    }
    const px = this.pixels;
    gl.readPixels(0, 0, s, s, gl.RGBA, gl.UNSIGNED_BYTE, px);
    for (let y = 0; y < s / 2; y++) { // GL's rows start at the bottom
      const a = 4 * s * y, b = 4 * s * (s - 1 - y);
      this.row.set(px.subarray(a, a + 4 * s));
      px.copyWithin(a, b, b + 4 * s);
      px.set(this.row, b);
    }
    return px;
  }

  /** Free the GL objects; draw() afterwards throws. */
  destroy() {
    const gl = this.gl;
    if (!gl) return;
    for (const p of [this.background, this.warp, this.mouthProg, this.eyeProg]) gl.deleteProgram(p.prog);
    for (const b of [this.restBuf, this.posBuf, this.indexBuf]) gl.deleteBuffer(b);
    gl.deleteVertexArray(this.vao);
    gl.deleteVertexArray(this.emptyVao);
    gl.deleteTexture(this.tex);
    this.gl = null;
  }
}
