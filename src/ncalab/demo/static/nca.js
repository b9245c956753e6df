// ncalab demo engine: an exported NCA (model.json + model.bin) stepped in the browser at float32 precision.
//
// State layout is PyTorch's: channel-major C x H x W, channels 0-3 premultiplied RGBA, alpha = channel 3.
// One step is the update rule of ncalab.nca.NCA.plain_step (src/ncalab/nca.py: alive before, perceive, update,
// fire, residual add, alive after), from the exported parts of the perception (ncalab.perception.Perception):
// responses are channel-major (c0 op0..opN-1, c1 ...), every operator k x k (the export zero-pads the smaller
// kernels of a mixed-size bank, centred, to the largest), times the response scale.
// A multi-scale perception (model.json's perception has levels > 1; ncalab.perception.MultiScalePerception)
// reads its bank of nb operators at every level l < levels: the state average-pooled by f = 2^l (blocks from the
// top-left corner, cells past the grid's edge counting as zero, the sum divided by f*f), the bank applied there
// with zero padding, the responses upsampled back (bilinear as PyTorch's align_corners=False, or nearest); per
// channel the responses are level 0's nb, then level 1's, ... (n = levels * nb). Level 0 is the plain bank.
// Only cells within 2 of a live cell (5x5 max of alpha > threshold) can survive or affect a survivor, so others
// are not evaluated: this changes no value, it only skips work that the mask throws away.
(function (global) {
  'use strict';

  const FORMAT = 'ncalab-demo/1';
  const range = (a) => Array.from({ length: a }, (_, i) => i);

  function base64ToBuffer(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes.buffer;
  }

  // A small seeded RNG (mulberry32) for the fire mask, so that a run is reproducible.
  function mulberry32(seed) {
    let a = seed >>> 0;
    return function () {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  class NCAModel {
    constructor(meta, buffer) {
      if (!meta || meta.format !== FORMAT) {
        throw new Error('not an ncalab demo model (format ' + (meta && meta.format) + ', expected ' + FORMAT + ')');
      }
      this.meta = meta;
      this.name = meta.name || 'model';
      this.C = meta.channels;
      this.hidden = meta.hidden;
      this.n = meta.perception.n_ops;
      this.k = meta.perception.kernel_size;
      // A multi-scale bank: nb operators read at `levels` scales (1: a bank at the grid's own scale).
      this.levels = meta.perception.levels || 1;
      this.upsample = meta.perception.upsample || 'bilinear';
      this.nb = this.n / this.levels;
      if (!Number.isInteger(this.nb) || this.nb < 1 || !(this.upsample === 'bilinear' || this.upsample === 'nearest')) {
        throw new Error('perception with ' + this.n + ' responses at ' + this.levels + ' levels, upsample ' +
          this.upsample + ': not a multi-scale bank this page can run');
      }
      if ((1 << (this.levels - 1)) > Math.min(meta.grid[0], meta.grid[1])) {
        throw new Error(this.levels + ' levels do not fit a ' + meta.grid[0] + 'x' + meta.grid[1] + ' grid');
      }
      // Level l (1 .. levels-1): pooled by f = 2^l to Hl x Wl cells.
      this.coarse = [];
      for (let l = 1; l < this.levels; l++) {
        const f = 1 << l;
        this.coarse.push({ l, f, H: Math.ceil(meta.grid[0] / f), W: Math.ceil(meta.grid[1] / f) });
      }
      this.H = meta.grid[0];
      this.W = meta.grid[1];
      this.P = this.C * (1 + this.n);
      this.fireRate = meta.fire_rate;
      this.threshold = Math.fround(meta.alive_threshold);
      if (buffer.byteLength !== 4 * meta.n_floats) {
        throw new Error('weights hold ' + buffer.byteLength + ' bytes, model.json expects ' + 4 * meta.n_floats);
      }
      let all = new Float32Array(buffer.slice(0));
      if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
        // Big-endian host: the file is little-endian.
        const dv = new DataView(buffer);
        all = new Float32Array(meta.n_floats);
        for (let i = 0; i < all.length; i++) all[i] = dv.getFloat32(4 * i, true);
      }
      const tensor = (name, expected) => {
        const t = meta.tensors[name];
        const size = t.shape.reduce((a, b) => a * b, 1);
        if (size !== expected) throw new Error('tensor ' + name + ' has ' + size + ' values, expected ' + expected);
        return all.subarray(t.offset, t.offset + size);
      };
      const C = this.C, n = this.n, k = this.k;
      this.kernels = tensor('kernels', C * this.nb * k * k); // [(c*nb+o)][ky][kx], the bank (at every level)
      this.scale = tensor('scale', C * n); // [c*n+o]
      this.w1 = tensor('w1', this.hidden * this.P); // [h][p]
      this.b1 = tensor('b1', this.hidden);
      this.w2 = tensor('w2', C * this.hidden); // [c][h]
      this.b2 = tensor('b2', C);
      // How the image is drawn: one pixel per cell, or a per-pixel decoder at `px` pixels per cell side.
      const render = meta.render || { name: 'cells', scale: 1 };
      this.renderName = render.name;
      this.px = render.name === 'decoder' ? render.scale : 1;
      if (render.name === 'decoder') {
        const dh = render.hidden, layers = render.layers;
        this.decoder = { hidden: dh, layers, omega: render.omega, w: [], b: [] };
        for (let i = 0; i < layers; i++) {
          const inputs = i === 0 ? C + 2 : dh;
          this.decoder.w.push(tensor('render_w' + i, dh * inputs)); // [out][in]
          this.decoder.b.push(tensor('render_b' + i, dh));
        }
        this.decoder.hw = tensor('render_head_w', 4 * dh); // [4][hidden]
        this.decoder.hb = tensor('render_head_b', 4);
      } else if (render.name !== 'cells') {
        throw new Error('this page cannot draw render=' + render.name);
      }
    }

    static fromEmbedded(obj) {
      return new NCAModel(obj.meta, base64ToBuffer(obj.weights));
    }

    static async fetch(url) {
      const res = await fetch(url);
      if (!res.ok) throw new Error('cannot load ' + url + ' (' + res.status + ')');
      const meta = await res.json();
      const wurl = new URL(meta.weights || 'model.bin', new URL(url, location.href)).href;
      const wres = await fetch(wurl);
      if (!wres.ok) throw new Error('cannot load ' + wurl + ' (' + wres.status + ')');
      const model = new NCAModel(meta, await wres.arrayBuffer());
      model.baseUrl = new URL('.', new URL(url, location.href)).href;
      return model;
    }

    seedState() {
      const { C, H, W } = this;
      const x = new Float32Array(C * H * W);
      plantSeed(x, this, H >> 1, W >> 1);
      return x;
    }
  }

  function plantSeed(x, m, row, col) {
    const HW = m.H * m.W;
    if (row < 0 || col < 0 || row >= m.H || col >= m.W) return;
    for (let c = 3; c < m.C; c++) x[c * HW + row * m.W + col] = 1;
  }

  function eraseDisc(x, m, row, col, radius) {
    const HW = m.H * m.W, r2 = radius * radius;
    const r = Math.ceil(radius);
    for (let i = Math.max(0, Math.floor(row - r)); i <= Math.min(m.H - 1, Math.ceil(row + r)); i++) {
      for (let j = Math.max(0, Math.floor(col - r)); j <= Math.min(m.W - 1, Math.ceil(col + r)); j++) {
        const di = i - row, dj = j - col;
        if (di * di + dj * dj <= r2) for (let c = 0; c < m.C; c++) x[c * HW + i * m.W + j] = 0;
      }
    }
  }

  // out[i] = 1 where the 3x3 max of plane (H x W, zero outside) exceeds thr.
  function alivePool(plane, H, W, thr, out) {
    for (let i = 0; i < H; i++) {
      for (let j = 0; j < W; j++) {
        let m = 0;
        for (let di = -1; di <= 1; di++) {
          const y = i + di;
          if (y < 0 || y >= H) continue;
          for (let dj = -1; dj <= 1; dj++) {
            const xx = j + dj;
            if (xx < 0 || xx >= W) continue;
            const v = plane[y * W + xx];
            if (v > m) m = v;
          }
        }
        out[i * W + j] = m > thr ? 1 : 0;
      }
    }
  }

  function dilate(src, H, W, out) {
    for (let i = 0; i < H; i++) {
      for (let j = 0; j < W; j++) {
        let any = 0;
        for (let di = -1; di <= 1 && !any; di++) {
          const y = i + di;
          if (y < 0 || y >= H) continue;
          for (let dj = -1; dj <= 1; dj++) {
            const xx = j + dj;
            if (xx >= 0 && xx < W && src[y * W + xx]) { any = 1; break; }
          }
        }
        out[i * W + j] = any;
      }
    }
  }

  // Plain JavaScript: Float32Array storage (values round to float32 on every store, as in PyTorch).
  // render=decoder: the image (premultiplied RGBA, 4 x H*px x W*px, float32) drawn from the cell state x as
  // ncalab.render.DecoderRender draws it: the state bilinearly upsampled (PyTorch's align_corners=False), the
  // pixel's offset inside its cell, sine layers, a linear head, and pixels of dead cells transparent.
  function decodeImage(m, x) {
    const { C, H, W, px, threshold } = m, d = m.decoder, HW = H * W;
    const IH = H * px, IW = W * px, IHW = IH * IW;
    const out = new Float32Array(4 * IHW);
    const alive = new Uint8Array(HW);
    alivePool(x.subarray(3 * HW, 4 * HW), H, W, threshold, alive);
    const inputs = new Float64Array(C + 2);
    let h = new Float64Array(d.hidden), g = new Float64Array(d.hidden);
    const src = (o, n) => {
      // PyTorch's source index for upsampling by an integer factor, clamped below at 0
      let s = (o + 0.5) / px - 0.5;
      if (s < 0) s = 0;
      const i0 = Math.min(Math.floor(s), n - 1), i1 = Math.min(i0 + 1, n - 1);
      return [i0, i1, s - i0];
    };
    for (let py = 0; py < IH; py++) {
      const [y0, y1, ly] = src(py, H);
      const cy = Math.floor(py / px);
      for (let qx = 0; qx < IW; qx++) {
        const cx = Math.floor(qx / px), o = py * IW + qx;
        if (!alive[cy * W + cx]) continue; // stays 0: transparent
        const [x0, x1, lx] = src(qx, W);
        for (let c = 0; c < C; c++) {
          const b = c * HW;
          const top = Math.fround((1 - lx) * x[b + y0 * W + x0] + lx * x[b + y0 * W + x1]);
          const bottom = Math.fround((1 - lx) * x[b + y1 * W + x0] + lx * x[b + y1 * W + x1]);
          inputs[c] = Math.fround((1 - ly) * top + ly * bottom);
        }
        inputs[C] = ((py % px) + 0.5) / px - 0.5;
        inputs[C + 1] = ((qx % px) + 0.5) / px - 0.5;
        let prev = inputs, n = C + 2;
        for (let l = 0; l < d.layers; l++) {
          const w = d.w[l], bias = d.b[l], k = l === 0 ? d.omega : 1;
          for (let u = 0; u < d.hidden; u++) {
            let s = bias[u];
            const r = u * n;
            for (let q = 0; q < n; q++) s += w[r + q] * prev[q];
            h[u] = Math.fround(Math.sin(Math.fround(s) * k));
          }
          prev = h; n = d.hidden;
          const t = h; h = g; g = t;
        }
        for (let c = 0; c < 4; c++) {
          let s = d.hb[c];
          const r = c * d.hidden;
          for (let u = 0; u < d.hidden; u++) s += d.hw[r + u] * prev[u];
          out[c * IHW + o] = s;
        }
      }
    }
    return out;
  }

  // A multi-scale bank's coarse levels for the state x: per level (model.coarse), the state pooled by f and the
  // bank's responses there, out[l - 1] = Float32Array [(c*nb+o)][I][J] (Hl x Wl), rounded to float32 as PyTorch's.
  function coarseResponses(m, x, pooled, out) {
    const { C, H, W, nb, k } = m, HW = H * W, r = k >> 1, kk = k * k, K = m.kernels;
    for (let li = 0; li < m.coarse.length; li++) {
      const { f, H: hl, W: wl } = m.coarse[li], P = pooled[li], R = out[li], area = f * f, hw = hl * wl;
      for (let c = 0; c < C; c++) {
        for (let I = 0; I < hl; I++) {
          for (let J = 0; J < wl; J++) {
            let s = 0;
            for (let i = I * f; i < Math.min(I * f + f, H); i++) {
              for (let j = J * f; j < Math.min(J * f + f, W); j++) s += x[c * HW + i * W + j];
            }
            P[c * hw + I * wl + J] = Math.fround(Math.fround(s) / area);
          }
        }
      }
      for (let c = 0; c < C; c++) {
        for (let o = 0; o < nb; o++) {
          const kb = (c * nb + o) * kk, rb = (c * nb + o) * hw;
          for (let I = 0; I < hl; I++) {
            for (let J = 0; J < wl; J++) {
              let s = 0;
              for (let ky = 0; ky < k; ky++) {
                const yy = I + ky - r;
                if (yy < 0 || yy >= hl) continue;
                for (let kx = 0; kx < k; kx++) {
                  const xx = J + kx - r;
                  if (xx < 0 || xx >= wl) continue;
                  s += K[kb + ky * k + kx] * P[c * hw + yy * wl + xx];
                }
              }
              R[rb + I * wl + J] = Math.fround(s);
            }
          }
        }
      }
    }
  }

  // Where fine index i reads a level pooled by f (n coarse cells): PyTorch's upsampling source index.
  function upsampleIndex(mode, i, f, n) {
    if (mode === 'nearest') return [Math.min(Math.floor(i / f), n - 1), 0, 0];
    let s = (i + 0.5) / f - 0.5;
    if (s < 0) s = 0;
    const i0 = Math.min(Math.floor(s), n - 1);
    return [i0, Math.min(i0 + 1, n - 1), s - i0];
  }

  class CpuBackend {
    constructor(model) {
      this.name = 'js';
      this.model = model;
      const { C, H, W, P, hidden } = model;
      this.state = model.seedState();
      this.next = new Float32Array(C * H * W);
      this.pre = new Uint8Array(H * W);
      this.post = new Uint8Array(H * W);
      this.near = new Uint8Array(H * W);
      // Float64 copies of float32 values (exact): the hot loops then read doubles without converting them.
      this.p = new Float64Array(P); // holds float32 values (rounded on store), as PyTorch's perception output
      this.w1 = Float64Array.from(model.w1);
      this.hv = new Float64Array(hidden); // values of the hidden units a ReLU let through ...
      this.act = new Int32Array(hidden); // ... and which units they are
      this.out = new Float64Array(C);
      // W2 transposed ([h][c]): the output layer reads only the rows of active hidden units, contiguously.
      this.w2t = new Float64Array(hidden * C);
      for (let h = 0; h < hidden; h++) for (let c = 0; c < C; c++) this.w2t[h * C + c] = model.w2[c * hidden + h];
      // A multi-scale bank: each coarse level's pooled state and responses, and every fine row's and column's
      // source cells and weights at each level.
      this.pooled = model.coarse.map((lv) => new Float32Array(C * lv.H * lv.W));
      this.coarseOut = model.coarse.map((lv) => new Float32Array(C * model.nb * lv.H * lv.W));
      this.rowSrc = model.coarse.map((lv) => range(H).map((i) => upsampleIndex(model.upsample, i, lv.f, lv.H)));
      this.colSrc = model.coarse.map((lv) => range(W).map((j) => upsampleIndex(model.upsample, j, lv.f, lv.W)));
    }

    setState(x) { this.state.set(x); }
    readState() { return this.state.slice(); }
    edit(fn) { fn(this.state); }

    step(fire) {
      const m = this.model;
      const { C, H, W, P, hidden, n, nb, k, threshold } = m;
      const HW = H * W, r = k >> 1, kk = k * k;
      const K = m.kernels, S = m.scale, w1 = this.w1, b1 = m.b1, w2t = this.w2t, b2 = m.b2;
      const x = this.state, y = this.next, p = this.p, hv = this.hv, act = this.act, out = this.out;
      const pre = this.pre, post = this.post, near = this.near;
      alivePool(x.subarray(3 * HW, 4 * HW), H, W, threshold, pre);
      dilate(pre, H, W, near);
      if (m.coarse.length) coarseResponses(m, x, this.pooled, this.coarseOut);
      y.set(x);
      for (let i = 0; i < H; i++) {
        for (let j = 0; j < W; j++) {
          const idx = i * W + j;
          if (!near[idx] || (fire && !fire[idx])) continue;
          for (let c = 0; c < C; c++) p[c] = x[c * HW + idx];
          for (let c = 0; c < C; c++) {
            const plane = c * HW;
            for (let o = 0; o < nb; o++) {
              const kb = (c * nb + o) * kk;
              let s = 0;
              for (let ky = 0; ky < k; ky++) {
                const yy = i + ky - r;
                if (yy < 0 || yy >= H) continue;
                const row = plane + yy * W, krow = kb + ky * k;
                for (let kx = 0; kx < k; kx++) {
                  const xx = j + kx - r;
                  if (xx < 0 || xx >= W) continue;
                  s += K[krow + kx] * x[row + xx];
                }
              }
              p[C + c * n + o] = Math.fround(Math.fround(s) * S[c * n + o]);
            }
          }
          for (let li = 0; li < m.coarse.length; li++) {
            // Level l's responses at this cell: the coarse responses upsampled (bilinear: PyTorch's order).
            const { l, H: hl, W: wl } = m.coarse[li], R = this.coarseOut[li], hw = hl * wl;
            const [y0, y1, ly] = this.rowSrc[li][i], [x0, x1, lx] = this.colSrc[li][j];
            const a00 = y0 * wl + x0, a01 = y0 * wl + x1, a10 = y1 * wl + x0, a11 = y1 * wl + x1;
            for (let c = 0; c < C; c++) {
              for (let o = 0; o < nb; o++) {
                const rb = (c * nb + o) * hw, q = c * n + l * nb + o;
                let v = R[rb + a00];
                if (m.upsample === 'bilinear') {
                  v = Math.fround((1 - ly) * ((1 - lx) * R[rb + a00] + lx * R[rb + a01]) +
                    ly * ((1 - lx) * R[rb + a10] + lx * R[rb + a11]));
                }
                p[C + q] = Math.fround(v * S[q]);
              }
            }
          }
          // Hidden layer, four units at a time (each p[q] read once for four independent sums), then the output
          // layer over the units the ReLU let through only (a zero unit adds nothing).
          let na = 0, h = 0;
          for (; h + 3 < hidden; h += 4) {
            const r0 = h * P, r1 = r0 + P, r2 = r1 + P, r3 = r2 + P;
            let s0 = b1[h], s1 = b1[h + 1], s2 = b1[h + 2], s3 = b1[h + 3];
            for (let q = 0; q < P; q++) {
              const v = p[q];
              s0 += w1[r0 + q] * v;
              s1 += w1[r1 + q] * v;
              s2 += w1[r2 + q] * v;
              s3 += w1[r3 + q] * v;
            }
            if (s0 > 0) { act[na] = h; hv[na++] = s0; }
            if (s1 > 0) { act[na] = h + 1; hv[na++] = s1; }
            if (s2 > 0) { act[na] = h + 2; hv[na++] = s2; }
            if (s3 > 0) { act[na] = h + 3; hv[na++] = s3; }
          }
          for (; h < hidden; h++) {
            const base = h * P;
            let s = b1[h];
            for (let q = 0; q < P; q++) s += w1[base + q] * p[q];
            if (s > 0) { act[na] = h; hv[na++] = s; }
          }
          for (let c = 0; c < C; c++) out[c] = b2[c];
          for (let a = 0; a < na; a++) {
            const base = act[a] * C, v = hv[a];
            for (let c = 0; c < C; c++) out[c] += w2t[base + c] * v;
          }
          for (let c = 0; c < C; c++) y[c * HW + idx] = x[c * HW + idx] + Math.fround(out[c]);
        }
      }
      alivePool(y.subarray(3 * HW, 4 * HW), H, W, threshold, post);
      for (let idx = 0; idx < HW; idx++) {
        if (!(pre[idx] && post[idx])) for (let c = 0; c < C; c++) y[c * HW + idx] = 0;
      }
      this.state = y;
      this.next = x;
    }

    sync() {}
    dispose() {}
  }

  // WebGL2: the state as ceil(C/4) RGBA32F textures, one fragment per cell, update and mask in two passes.
  const WCOLS = 1024; // the weight texture is 1024 vec4 wide
  const VERT = '#version 300 es\nin vec2 a_pos;\nvoid main() { gl_Position = vec4(a_pos, 0.0, 1.0); }\n';

  class WebGLBackend {
    constructor(model) {
      this.name = 'webgl';
      this.model = model;
      const canvas = document.createElement('canvas');
      canvas.width = canvas.height = 1;
      const gl = canvas.getContext('webgl2', { antialias: false, depth: false, stencil: false });
      if (!gl) throw new Error('WebGL2 is not available');
      if (!gl.getExtension('EXT_color_buffer_float')) throw new Error('WebGL2 lacks EXT_color_buffer_float');
      this.gl = gl;
      const info = gl.getExtension('WEBGL_debug_renderer_info');
      this.renderer = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
      // A software rasteriser (no GPU): the plain-JS backend is faster on the same CPU.
      this.software = /swiftshader|llvmpipe|softpipe|software/i.test(this.renderer);
      const { C, H, W } = model;
      this.T = Math.ceil(C / 4);
      if (this.T > gl.getParameter(gl.MAX_DRAW_BUFFERS)) {
        throw new Error(C + ' channels need ' + this.T + ' draw buffers; this WebGL2 has ' +
          gl.getParameter(gl.MAX_DRAW_BUFFERS));
      }
      if (Math.max(H, W) > gl.getParameter(gl.MAX_TEXTURE_SIZE)) throw new Error('grid too large for WebGL2');
      if (model.coarse.length && 2 * this.T + 2 > gl.getParameter(gl.MAX_TEXTURE_IMAGE_UNITS)) {
        throw new Error('a multi-scale bank on ' + C + ' channels needs ' + (2 * this.T + 2) +
          ' texture units; this WebGL2 has ' + gl.getParameter(gl.MAX_TEXTURE_IMAGE_UNITS));
      }
      gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
      gl.pixelStorei(gl.PACK_ALIGNMENT, 1);
      this.buildWeights();
      this.sets = [0, 1, 2].map(() => this.makeSet());
      // A multi-scale bank: the pooled coarse levels side by side in one atlas (level l at column off[l - 1]).
      if (model.coarse.length) {
        this.off = [];
        let aw = 0;
        for (const lv of model.coarse) { this.off.push(aw); aw += lv.W; }
        this.atlas = this.makeSet(aw, model.coarse[0].H);
      }
      this.cur = 0;
      this.fireTex = this.makeTexture(gl.R8, W, H, gl.RED, gl.UNSIGNED_BYTE, null);
      this.buildPrograms();
      const vbo = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, vbo);
      gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 3, -1, -1, 3]), gl.STATIC_DRAW);
      this.vao = gl.createVertexArray();
      gl.bindVertexArray(this.vao);
      gl.enableVertexAttribArray(0);
      gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
      this.tmp = new Float32Array(W * H * 4);
      this.setState(model.seedState());
      const err = gl.getError();
      if (err !== gl.NO_ERROR) throw new Error('WebGL2 set-up failed (error ' + err + ')');
    }

    makeTexture(internal, w, h, format, type, data) {
      const gl = this.gl;
      const tex = gl.createTexture();
      gl.bindTexture(gl.TEXTURE_2D, tex);
      gl.texImage2D(gl.TEXTURE_2D, 0, internal, w, h, 0, format, type, data);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
      return tex;
    }

    makeSet(W = this.model.W, H = this.model.H) {
      const gl = this.gl;
      const texs = [];
      const fbo = gl.createFramebuffer();
      gl.bindFramebuffer(gl.FRAMEBUFFER, fbo);
      for (let t = 0; t < this.T; t++) {
        const tex = this.makeTexture(gl.RGBA32F, W, H, gl.RGBA, gl.FLOAT, null);
        gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0 + t, gl.TEXTURE_2D, tex, 0);
        texs.push(tex);
      }
      if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) {
        throw new Error('WebGL2 cannot render to float textures here');
      }
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      return { texs, fbo, W, H };
    }

    // Weight texture (vec4 per texel):
    //   kernels: [t][o][ky][kx] -> channels 4t..4t+3 of operator o      (KOFF; o < nb, the bank)
    //   scale:   [t][o]                                                 (SOFF; o < n, every response)
    //   rows:    per hidden unit h: P4 vec4 of W1 (in the shader's perception order), vec4(b1[h]),
    //            then T vec4 of W2[4t..4t+3][h]                         (ROFF, stride RS)
    //   b2:      T vec4                                                  (B2OFF)
    // The shader's perception order is q[t] = x[4t..4t+3], q[T + t*n + o] = responses of channels 4t..4t+3 to op o.
    buildWeights() {
      const m = this.model, gl = this.gl;
      const { C, n, nb, k, hidden, P } = m, T = this.T, kk = k * k;
      const P4 = T * (1 + n);
      this.P4 = P4;
      this.KOFF = 0;
      this.SOFF = this.KOFF + T * nb * kk;
      this.ROFF = this.SOFF + T * n;
      this.RS = P4 + 1 + T;
      this.B2OFF = this.ROFF + hidden * this.RS;
      const total = this.B2OFF + T;
      const rows = Math.ceil(total / WCOLS);
      const data = new Float32Array(rows * WCOLS * 4);
      const put = (vec, comp, value) => { data[4 * vec + comp] = value; };
      for (let t = 0; t < T; t++) {
        for (let comp = 0; comp < 4; comp++) {
          const c = 4 * t + comp;
          if (c >= C) continue;
          for (let o = 0; o < nb; o++) {
            for (let q = 0; q < kk; q++) put(this.KOFF + (t * nb + o) * kk + q, comp, m.kernels[(c * nb + o) * kk + q]);
          }
          for (let o = 0; o < n; o++) put(this.SOFF + t * n + o, comp, m.scale[c * n + o]);
        }
      }
      for (let h = 0; h < hidden; h++) {
        const base = this.ROFF + h * this.RS;
        for (let t = 0; t < T; t++) {
          for (let comp = 0; comp < 4; comp++) {
            const c = 4 * t + comp;
            if (c >= C) continue;
            put(base + t, comp, m.w1[h * P + c]);
            for (let o = 0; o < n; o++) put(base + T + t * n + o, comp, m.w1[h * P + C + c * n + o]);
            put(base + P4 + 1 + t, comp, m.w2[c * hidden + h]);
          }
        }
        put(base + P4, 0, m.b1[h]);
      }
      for (let c = 0; c < C; c++) put(this.B2OFF + (c >> 2), c & 3, m.b2[c]);
      this.weightTex = this.makeTexture(gl.RGBA32F, WCOLS, rows, gl.RGBA, gl.FLOAT, data);
    }

    compile(fragSource) {
      const gl = this.gl;
      const shader = (type, src) => {
        const s = gl.createShader(type);
        gl.shaderSource(s, src);
        gl.compileShader(s);
        if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error('shader: ' + gl.getShaderInfoLog(s));
        return s;
      };
      const prog = gl.createProgram();
      gl.attachShader(prog, shader(gl.VERTEX_SHADER, VERT));
      gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, fragSource));
      gl.bindAttribLocation(prog, 0, 'a_pos');
      gl.linkProgram(prog);
      if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error('link: ' + gl.getProgramInfoLog(prog));
      return prog;
    }

    buildPrograms() {
      const m = this.model, T = this.T, n = m.n, nb = m.nb, k = m.k, kk = k * k;
      const head = '#version 300 es\nprecision highp float;\nprecision highp int;\nprecision highp sampler2D;\n' +
        'const int W = ' + m.W + ';\nconst int H = ' + m.H + ';\nuniform float u_thr;\n' +
        'bool inside(ivec2 p) { return p.x >= 0 && p.y >= 0 && p.x < W && p.y < H; }\n' +
        range(T).map((t) => 'layout(location = ' + t + ') out vec4 o' + t + ';\n').join('');
      const update = head +
        range(T).map((t) => 'uniform sampler2D u_s' + t + ';\n').join('') +
        'uniform sampler2D u_w;\nuniform sampler2D u_fire;\nuniform bool u_all_fire;\n' +
        'vec4 wt(int i) { return texelFetch(u_w, ivec2(i & ' + (WCOLS - 1) + ', i >> ' + Math.log2(WCOLS) + '), 0); }\n' +
        range(T).map((t) => 'vec4 S' + t + '(ivec2 p) { return inside(p) ? texelFetch(u_s' + t + ', p, 0) : vec4(0.0); }\n').join('') +
        this.coarseSource() +
        'void main() {\n' +
        '  ivec2 c = ivec2(gl_FragCoord.xy);\n' +
        range(T).map((t) => '  vec4 x' + t + ' = texelFetch(u_s' + t + ', c, 0);\n  o' + t + ' = x' + t + ';\n').join('') +
        '  float amax = 0.0;\n' +
        '  for (int dy = -2; dy <= 2; dy++) for (int dx = -2; dx <= 2; dx++) amax = max(amax, S0(c + ivec2(dx, dy)).a);\n' +
        '  if (!(amax > u_thr)) return;\n' +
        '  if (!u_all_fire && texelFetch(u_fire, c, 0).r < 0.5) return;\n' +
        '  vec4 q[' + this.P4 + '];\n' +
        range(T).map((t) => '  q[' + t + '] = x' + t + ';\n').join('') +
        range(T * n).map((i) => '  q[' + (T + i) + '] = vec4(0.0);\n').join('') +
        '  // level 0: the bank at the grid\'s own scale\n' +
        '  for (int ky = 0; ky < ' + k + '; ky++) {\n' +
        '    for (int kx = 0; kx < ' + k + '; kx++) {\n' +
        '      ivec2 p = c + ivec2(kx - ' + (k >> 1) + ', ky - ' + (k >> 1) + ');\n' +
        '      if (!inside(p)) continue;\n' +
        '      int kq = ky * ' + k + ' + kx;\n' +
        range(T).map((t) => '      vec4 s' + t + ' = texelFetch(u_s' + t + ', p, 0);\n' +
          range(nb).map((o) => '      q[' + (T + t * n + o) + '] += s' + t + ' * wt(' +
            (this.KOFF + (t * nb + o) * kk) + ' + kq);\n').join('')).join('') +
        '    }\n  }\n' +
        m.coarse.map((lv, li) => this.levelSource(lv, this.off[li])).join('') +
        range(T * n).map((i) => '  q[' + (T + i) + '] *= wt(' + (this.SOFF + i) + ');\n').join('') +
        range(T).map((t) => '  vec4 d' + t + ' = wt(' + (this.B2OFF + t) + ');\n').join('') +
        '  for (int h = 0; h < ' + m.hidden + '; h++) {\n' +
        '    int base = ' + this.ROFF + ' + h * ' + this.RS + ';\n' +
        '    float a = wt(base + ' + this.P4 + ').x;\n' +
        '    for (int j = 0; j < ' + this.P4 + '; j++) a += dot(q[j], wt(base + j));\n' +
        '    a = max(a, 0.0);\n' +
        range(T).map((t) => '    d' + t + ' += a * wt(base + ' + (this.P4 + 1 + t) + ');\n').join('') +
        '  }\n' +
        range(T).map((t) => '  o' + t + ' = x' + t + ' + d' + t + ';\n').join('') +
        '}\n';
      const mask = head +
        'uniform sampler2D u_old;\n' +
        range(T).map((t) => 'uniform sampler2D u_n' + t + ';\n').join('') +
        'void main() {\n' +
        '  ivec2 c = ivec2(gl_FragCoord.xy);\n' +
        '  float pre = 0.0, post = 0.0;\n' +
        '  for (int dy = -1; dy <= 1; dy++) for (int dx = -1; dx <= 1; dx++) {\n' +
        '    ivec2 p = c + ivec2(dx, dy);\n' +
        '    if (!inside(p)) continue;\n' +
        '    pre = max(pre, texelFetch(u_old, p, 0).a);\n' +
        '    post = max(post, texelFetch(u_n0, p, 0).a);\n' +
        '  }\n' +
        '  bool keep = pre > u_thr && post > u_thr;\n' +
        range(T).map((t) => '  o' + t + ' = keep ? texelFetch(u_n' + t + ', c, 0) : vec4(0.0);\n').join('') +
        '}\n';
      this.updateSource = update;
      this.update = this.compile(update);
      this.mask = this.compile(mask);
      const gl = this.gl;
      if (m.coarse.length) {
        // The pooling pass: every texel of the atlas is the mean of its f x f block of the state (zero outside).
        const pool = head +
          range(T).map((t) => 'uniform sampler2D u_s' + t + ';\n').join('') +
          'void main() {\n' +
          '  ivec2 a = ivec2(gl_FragCoord.xy);\n' +
          '  int f = 0, off = 0, hl = 0;\n' +
          m.coarse.map((lv, li) => '  if (a.x >= ' + this.off[li] + ' && a.x < ' + (this.off[li] + lv.W) + ') { f = ' +
            lv.f + '; off = ' + this.off[li] + '; hl = ' + lv.H + '; }\n').join('') +
          range(T).map((t) => '  o' + t + ' = vec4(0.0);\n').join('') +
          '  if (f == 0 || a.y >= hl) return;\n' +
          '  ivec2 base = ivec2((a.x - off) * f, a.y * f);\n' +
          range(T).map((t) => '  vec4 s' + t + ' = vec4(0.0);\n').join('') +
          '  for (int dy = 0; dy < f; dy++) for (int dx = 0; dx < f; dx++) {\n' +
          '    ivec2 p = base + ivec2(dx, dy);\n' +
          '    if (!inside(p)) continue;\n' +
          range(T).map((t) => '    s' + t + ' += texelFetch(u_s' + t + ', p, 0);\n').join('') +
          '  }\n' +
          range(T).map((t) => '  o' + t + ' = s' + t + ' / float(f * f);\n').join('') +
          '}\n';
        this.poolSource = pool;
        this.pool = this.compile(pool);
        gl.useProgram(this.pool);
        for (let t = 0; t < T; t++) gl.uniform1i(gl.getUniformLocation(this.pool, 'u_s' + t), t);
        gl.useProgram(this.update);
        for (let t = 0; t < T; t++) gl.uniform1i(gl.getUniformLocation(this.update, 'u_a' + t), T + 2 + t);
      }
      this.uUpdate = { thr: gl.getUniformLocation(this.update, 'u_thr'), allFire: gl.getUniformLocation(this.update, 'u_all_fire') };
      gl.useProgram(this.update);
      for (let t = 0; t < T; t++) gl.uniform1i(gl.getUniformLocation(this.update, 'u_s' + t), t);
      gl.uniform1i(gl.getUniformLocation(this.update, 'u_w'), T);
      gl.uniform1i(gl.getUniformLocation(this.update, 'u_fire'), T + 1);
      gl.uniform1f(this.uUpdate.thr, m.threshold);
      gl.useProgram(this.mask);
      gl.uniform1i(gl.getUniformLocation(this.mask, 'u_old'), 0);
      for (let t = 0; t < T; t++) gl.uniform1i(gl.getUniformLocation(this.mask, 'u_n' + t), 1 + t);
      gl.uniform1f(gl.getUniformLocation(this.mask, 'u_thr'), m.threshold);
    }

    // A multi-scale bank in the update shader: the atlas of pooled levels (u_a*), and coarse(cell, level) = the
    // bank's responses at one cell of a coarse level (zero padding at that level), r[t * nb + o] for channels
    // 4t..4t+3 of operator o.
    coarseSource() {
      const m = this.model, T = this.T, nb = m.nb, k = m.k, kk = k * k, TNB = T * nb;
      if (!m.coarse.length) return '';
      return range(T).map((t) => 'uniform sampler2D u_a' + t + ';\n').join('') +
        'void coarse(ivec2 cc, int off, int hl, int wl, out vec4 r[' + TNB + ']) {\n' +
        '  for (int i = 0; i < ' + TNB + '; i++) r[i] = vec4(0.0);\n' +
        '  for (int ky = 0; ky < ' + k + '; ky++) {\n' +
        '    for (int kx = 0; kx < ' + k + '; kx++) {\n' +
        '      ivec2 p = cc + ivec2(kx - ' + (k >> 1) + ', ky - ' + (k >> 1) + ');\n' +
        '      if (p.x < 0 || p.y < 0 || p.x >= wl || p.y >= hl) continue;\n' +
        '      int kq = ky * ' + k + ' + kx;\n' +
        '      ivec2 a = ivec2(p.x + off, p.y);\n' +
        range(T).map((t) => '      vec4 s' + t + ' = texelFetch(u_a' + t + ', a, 0);\n' +
          range(nb).map((o) => '      r[' + (t * nb + o) + '] += s' + t + ' * wt(' + (this.KOFF + (t * nb + o) * kk) +
            ' + kq);\n').join('')).join('') +
        '    }\n  }\n}\n';
    }

    // One coarse level's responses at this cell (main's c), upsampled into q as PyTorch's F.interpolate does.
    levelSource(lv, off) {
      const m = this.model, T = this.T, n = m.n, nb = m.nb, TNB = T * nb, f = lv.f.toFixed(1);
      const at = (name) => range(T).map((t) => range(nb).map((o) => {
        const i = t * nb + o;
        return '    q[' + (T + t * n + lv.l * nb + o) + '] = ' + name(i) + ';\n';
      }).join('')).join('');
      const args = ', ' + off + ', ' + lv.H + ', ' + lv.W + ', ';
      if (m.upsample === 'nearest') {
        return '  {\n    vec4 r00[' + TNB + '];\n' +
          '    coarse(ivec2(min(c.x / ' + lv.f + ', ' + (lv.W - 1) + '), min(c.y / ' + lv.f + ', ' + (lv.H - 1) + '))' +
          args + 'r00);\n' + at((i) => 'r00[' + i + ']') + '  }\n';
      }
      return '  {\n    vec4 r00[' + TNB + '], r01[' + TNB + '], r10[' + TNB + '], r11[' + TNB + '];\n' +
        '    float sy = max((float(c.y) + 0.5) / ' + f + ' - 0.5, 0.0), sx = max((float(c.x) + 0.5) / ' + f + ' - 0.5, 0.0);\n' +
        '    int y0 = min(int(floor(sy)), ' + (lv.H - 1) + '), x0 = min(int(floor(sx)), ' + (lv.W - 1) + ');\n' +
        '    int y1 = min(y0 + 1, ' + (lv.H - 1) + '), x1 = min(x0 + 1, ' + (lv.W - 1) + ');\n' +
        '    float ly = sy - float(y0), lx = sx - float(x0);\n' +
        '    coarse(ivec2(x0, y0)' + args + 'r00);\n' +
        '    coarse(ivec2(x1, y0)' + args + 'r01);\n' +
        '    coarse(ivec2(x0, y1)' + args + 'r10);\n' +
        '    coarse(ivec2(x1, y1)' + args + 'r11);\n' +
        at((i) => '(1.0 - ly) * ((1.0 - lx) * r00[' + i + '] + lx * r01[' + i + ']) + ly * ((1.0 - lx) * r10[' + i +
          '] + lx * r11[' + i + '])') +
        '  }\n';
    }

    bindTex(unit, tex) {
      const gl = this.gl;
      gl.activeTexture(gl.TEXTURE0 + unit);
      gl.bindTexture(gl.TEXTURE_2D, tex);
    }

    draw(prog, set) {
      const gl = this.gl;
      gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, set.fbo);
      gl.drawBuffers(Array.from({ length: this.T }, (_, t) => gl.COLOR_ATTACHMENT0 + t));
      gl.viewport(0, 0, set.W, set.H);
      gl.useProgram(prog);
      gl.bindVertexArray(this.vao);
      gl.drawArrays(gl.TRIANGLES, 0, 3);
    }

    step(fire) {
      const gl = this.gl, T = this.T, { H, W } = this.model;
      const a = this.sets[this.cur], b = this.sets[(this.cur + 1) % 3], c = this.sets[(this.cur + 2) % 3];
      for (let t = 0; t < T; t++) this.bindTex(t, a.texs[t]);
      if (this.pool) {
        // Pass 0 (a multi-scale bank): a -> the atlas of pooled levels, read by pass 1.
        this.draw(this.pool, this.atlas);
        gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, null);
        for (let t = 0; t < T; t++) this.bindTex(T + 2 + t, this.atlas.texs[t]);
      }
      // Pass 1: a -> b, x + dx * fire (unmasked).
      this.bindTex(T, this.weightTex);
      this.bindTex(T + 1, this.fireTex);
      if (fire) gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, W, H, gl.RED, gl.UNSIGNED_BYTE, fire);
      gl.useProgram(this.update);
      gl.uniform1i(this.uUpdate.allFire, fire ? 0 : 1);
      this.draw(this.update, b);
      // Pass 2: (a, b) -> c, b masked by alive before (a) and after (b).
      gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, null);
      this.bindTex(0, a.texs[0]);
      for (let t = 0; t < T; t++) this.bindTex(1 + t, b.texs[t]);
      this.draw(this.mask, c);
      gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, null);
      this.cur = (this.cur + 2) % 3;
    }

    readState() {
      const gl = this.gl, { C, H, W } = this.model, HW = H * W, tmp = this.tmp;
      const out = new Float32Array(C * HW);
      gl.bindFramebuffer(gl.READ_FRAMEBUFFER, this.sets[this.cur].fbo);
      for (let t = 0; t < this.T; t++) {
        gl.readBuffer(gl.COLOR_ATTACHMENT0 + t);
        gl.readPixels(0, 0, W, H, gl.RGBA, gl.FLOAT, tmp);
        for (let comp = 0; comp < 4; comp++) {
          const c = 4 * t + comp;
          if (c >= C) break;
          const plane = c * HW;
          for (let i = 0; i < HW; i++) out[plane + i] = tmp[4 * i + comp];
        }
      }
      gl.bindFramebuffer(gl.READ_FRAMEBUFFER, null);
      return out;
    }

    setState(x) {
      const gl = this.gl, { C, H, W } = this.model, HW = H * W, tmp = this.tmp;
      const set = this.sets[this.cur];
      for (let t = 0; t < this.T; t++) {
        tmp.fill(0);
        for (let comp = 0; comp < 4; comp++) {
          const c = 4 * t + comp;
          if (c >= C) break;
          const plane = c * HW;
          for (let i = 0; i < HW; i++) tmp[4 * i + comp] = x[plane + i];
        }
        gl.bindTexture(gl.TEXTURE_2D, set.texs[t]);
        gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, W, H, gl.RGBA, gl.FLOAT, tmp);
      }
    }

    edit(fn) {
      const x = this.readState();
      fn(x);
      this.setState(x);
    }

    // render=decoder: the image drawn on the GPU, one fragment per pixel (ncalab.render.DecoderRender, as
    // decodeImage computes it in JavaScript). Weight texture (vec4 per texel):
    //   layer 0, per unit u: T vec4 (weights of channels 4t..4t+3), vec4(w_offset_y, w_offset_x, bias, 0)
    //   layer l > 0, per unit u: D4 vec4 (weights of units 4v..4v+3), vec4(bias, 0, 0, 0)
    //   head, per output c: D4 vec4, then vec4(bias of the four outputs)
    buildDecoder() {
      const m = this.model, d = m.decoder, gl = this.gl, T = this.T, C = m.C;
      const D = d.hidden, D4 = Math.ceil(D / 4), IW = m.W * m.px, IH = m.H * m.px;
      const total = D * (T + 1) + (d.layers - 1) * D * (D4 + 1) + 4 * D4 + 1;
      const rows = Math.ceil(total / WCOLS);
      const data = new Float32Array(rows * WCOLS * 4);
      let v = 0;
      const L0 = 0;
      for (let u = 0; u < D; u++) {
        const w = d.w[0], r = u * (C + 2);
        for (let c = 0; c < C; c++) data[4 * (v + (c >> 2)) + (c & 3)] = w[r + c];
        v += T;
        data[4 * v] = w[r + C];
        data[4 * v + 1] = w[r + C + 1];
        data[4 * v + 2] = d.b[0][u];
        v += 1;
      }
      const LN = v;
      for (let l = 1; l < d.layers; l++) {
        for (let u = 0; u < D; u++) {
          for (let q = 0; q < D; q++) data[4 * (v + (q >> 2)) + (q & 3)] = d.w[l][u * D + q];
          v += D4;
          data[4 * v] = d.b[l][u];
          v += 1;
        }
      }
      const HEAD = v;
      for (let c = 0; c < 4; c++) {
        for (let q = 0; q < D; q++) data[4 * (v + (q >> 2)) + (q & 3)] = d.hw[c * D + q];
        v += D4;
      }
      for (let c = 0; c < 4; c++) data[4 * v + c] = d.hb[c];
      this.decoderTex = this.makeTexture(gl.RGBA32F, WCOLS, rows, gl.RGBA, gl.FLOAT, data);
      const range = (a) => Array.from({ length: a }, (_, i) => i);
      const src = '#version 300 es\nprecision highp float;\nprecision highp int;\nprecision highp sampler2D;\n' +
        'const int W = ' + m.W + ', H = ' + m.H + ', PX = ' + m.px + ', D = ' + D + ', D4 = ' + D4 + ';\n' +
        'uniform float u_thr;\nuniform float u_omega;\nuniform sampler2D u_dw;\n' +
        range(T).map((t) => 'uniform sampler2D u_s' + t + ';\n').join('') +
        'layout(location = 0) out vec4 o0;\n' +
        'vec4 dw(int i) { return texelFetch(u_dw, ivec2(i & ' + (WCOLS - 1) + ', i >> ' + Math.log2(WCOLS) + '), 0); }\n' +
        'float srcIndex(int o, int n, out int i0, out int i1) {\n' +
        '  float s = max((float(o) + 0.5) / float(PX) - 0.5, 0.0);\n' +
        '  i0 = min(int(floor(s)), n - 1); i1 = min(i0 + 1, n - 1);\n' +
        '  return s - float(i0);\n}\n' +
        'void main() {\n' +
        '  ivec2 q = ivec2(gl_FragCoord.xy);\n' +
        '  ivec2 cell = q / PX;\n' +
        '  float amax = 0.0;\n' +
        '  for (int dy = -1; dy <= 1; dy++) for (int dx = -1; dx <= 1; dx++) {\n' +
        '    ivec2 p = cell + ivec2(dx, dy);\n' +
        '    if (p.x >= 0 && p.y >= 0 && p.x < W && p.y < H) amax = max(amax, texelFetch(u_s0, p, 0).a);\n' +
        '  }\n' +
        '  if (!(amax > u_thr)) { o0 = vec4(0.0); return; }\n' +
        '  int y0, y1, x0, x1;\n' +
        '  float ly = srcIndex(q.y, H, y0, y1), lx = srcIndex(q.x, W, x0, x1);\n' +
        range(T).map((t) => '  vec4 in' + t + ' = mix(mix(texelFetch(u_s' + t + ', ivec2(x0, y0), 0), texelFetch(u_s' + t +
          ', ivec2(x1, y0), 0), lx), mix(texelFetch(u_s' + t + ', ivec2(x0, y1), 0), texelFetch(u_s' + t +
          ', ivec2(x1, y1), 0), lx), ly);\n').join('') +
        '  vec2 off = (vec2(q % PX) + 0.5) / float(PX) - 0.5;\n' +
        '  vec4 h[D4], g[D4];\n' +
        '  for (int j = 0; j < D4; j++) { h[j] = vec4(0.0); g[j] = vec4(0.0); }\n' +
        '  for (int u = 0; u < D; u++) {\n' +
        '    int base = ' + L0 + ' + u * ' + (T + 1) + ';\n' +
        '    vec4 e = dw(base + ' + T + ');\n' +
        '    float a = e.z + e.x * off.y + e.y * off.x' +
        range(T).map((t) => ' + dot(in' + t + ', dw(base + ' + t + '))').join('') + ';\n' +
        '    h[u >> 2][u & 3] = sin(a * u_omega);\n' +
        '  }\n' +
        range(d.layers - 1).map((l) =>
          '  for (int u = 0; u < D; u++) {\n' +
          '    int base = ' + (LN + l * D * (D4 + 1)) + ' + u * ' + (D4 + 1) + ';\n' +
          '    float a = dw(base + D4).x;\n' +
          '    for (int j = 0; j < D4; j++) a += dot(' + (l % 2 === 0 ? 'h' : 'g') + '[j], dw(base + j));\n' +
          '    ' + (l % 2 === 0 ? 'g' : 'h') + '[u >> 2][u & 3] = sin(a);\n' +
          '  }\n').join('') +
        '  vec4 out4 = dw(' + (HEAD + 4 * D4) + ');\n' +
        '  for (int c = 0; c < 4; c++) {\n' +
        '    float a = 0.0;\n' +
        '    for (int j = 0; j < D4; j++) a += dot(' + ((d.layers - 1) % 2 === 0 ? 'h' : 'g') + '[j], dw(' + HEAD + ' + c * D4 + j));\n' +
        '    out4[c] += a;\n' +
        '  }\n' +
        '  o0 = out4;\n}\n';
      this.decodeSource = src;
      this.decode = this.compile(src);
      gl.useProgram(this.decode);
      for (let t = 0; t < T; t++) gl.uniform1i(gl.getUniformLocation(this.decode, 'u_s' + t), t);
      gl.uniform1i(gl.getUniformLocation(this.decode, 'u_dw'), T);
      gl.uniform1f(gl.getUniformLocation(this.decode, 'u_thr'), m.threshold);
      gl.uniform1f(gl.getUniformLocation(this.decode, 'u_omega'), d.omega);
      this.imageTex = this.makeTexture(gl.RGBA32F, IW, IH, gl.RGBA, gl.FLOAT, null);
      this.imageFbo = gl.createFramebuffer();
      gl.bindFramebuffer(gl.FRAMEBUFFER, this.imageFbo);
      gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, this.imageTex, 0);
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      this.imageTmp = new Float32Array(IW * IH * 4);
    }

    readImage() {
      const m = this.model, gl = this.gl, T = this.T, IW = m.W * m.px, IH = m.H * m.px, N = IW * IH;
      if (!this.decode) this.buildDecoder();
      const a = this.sets[this.cur];
      for (let t = 0; t < T; t++) this.bindTex(t, a.texs[t]);
      this.bindTex(T, this.decoderTex);
      gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, this.imageFbo);
      gl.drawBuffers([gl.COLOR_ATTACHMENT0]);
      gl.viewport(0, 0, IW, IH);
      gl.useProgram(this.decode);
      gl.bindVertexArray(this.vao);
      gl.drawArrays(gl.TRIANGLES, 0, 3);
      gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, null);
      gl.bindFramebuffer(gl.READ_FRAMEBUFFER, this.imageFbo);
      gl.readBuffer(gl.COLOR_ATTACHMENT0);
      gl.readPixels(0, 0, IW, IH, gl.RGBA, gl.FLOAT, this.imageTmp);
      gl.bindFramebuffer(gl.READ_FRAMEBUFFER, null);
      const out = new Float32Array(4 * N), tmp = this.imageTmp;
      for (let c = 0; c < 4; c++) for (let i = 0; i < N; i++) out[c * N + i] = tmp[4 * i + c];
      return out;
    }

    dispose() {
      const lose = this.gl.getExtension('WEBGL_lose_context');
      if (lose) lose.loseContext(); // browsers keep only a few live contexts
    }

    sync() {
      const gl = this.gl, px = new Float32Array(4);
      gl.bindFramebuffer(gl.READ_FRAMEBUFFER, this.sets[this.cur].fbo);
      gl.readBuffer(gl.COLOR_ATTACHMENT0);
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.FLOAT, px);
      gl.bindFramebuffer(gl.READ_FRAMEBUFFER, null);
    }
  }

  // The automaton as the page drives it: a model, a backend, a seeded fire mask and a step counter.
  class Automaton {
    constructor(model, backend, seed) {
      this.model = model;
      this.fireRate = model.fireRate;
      this.rngSeed = seed >>> 0;
      this.rng = mulberry32(this.rngSeed);
      this.steps = 0;
      this.fireBuf = new Uint8Array(model.H * model.W);
      this.backend = this.makeBackend(backend || 'auto');
    }

    makeBackend(kind) {
      this.backendError = null;
      // auto: WebGL2 on a GPU; plain JS where WebGL2 is missing or only emulated in software (measured faster).
      if (kind !== 'js') {
        try {
          const gl = new WebGLBackend(this.model);
          if (kind === 'webgl' || !gl.software) return gl;
          gl.dispose();
          this.backendError = 'software WebGL2 (' + gl.renderer.slice(0, 60) + '), plain JS is faster; ?backend=webgl forces it';
        } catch (e) {
          if (kind === 'webgl') throw e;
          this.backendError = String(e.message || e);
        }
      }
      return new CpuBackend(this.model);
    }

    fireMask() {
      if (this.fireRate >= 1) return null;
      const f = this.fireBuf, rate = this.fireRate, rng = this.rng;
      // 255 = fires (the WebGL backend reads the mask as a normalised R8 texture).
      for (let i = 0; i < f.length; i++) f[i] = rng() < rate ? 255 : 0;
      return f;
    }

    step(n) {
      for (let i = 0; i < n; i++) this.backend.step(this.fireMask());
      this.steps += n;
    }

    reset(seed) {
      if (seed !== undefined) this.rngSeed = seed >>> 0;
      this.rng = mulberry32(this.rngSeed);
      this.steps = 0;
      this.backend.setState(this.model.seedState());
    }

    readState() { return this.backend.readState(); }
    // The drawn image, premultiplied RGBA 4 x H*px x W*px: the state's channels 0-3, or the decoder's drawing.
    readImage(state) {
      const m = this.model;
      if (m.px > 1 && !state && this.backend.readImage) return this.backend.readImage(); // on the GPU
      const x = state || this.readState();
      return m.px > 1 ? decodeImage(m, x) : x.slice(0, 4 * m.H * m.W);
    }
    setState(x) { this.backend.setState(x); }
    erase(row, col, radius) { this.backend.edit((x) => eraseDisc(x, this.model, row, col, radius)); }
    eraseMany(discs) {
      this.backend.edit((x) => { for (const d of discs) eraseDisc(x, this.model, d[0], d[1], d[2]); });
    }
    plant(row, col) { this.backend.edit((x) => plantSeed(x, this.model, row, col)); }

    aliveCount(state) {
      const m = this.model, x = state || this.readState(), HW = m.H * m.W, alive = new Uint8Array(HW);
      alivePool(x.subarray(3 * HW, 4 * HW), m.H, m.W, m.threshold, alive);
      let count = 0;
      for (let i = 0; i < HW; i++) count += alive[i];
      return count;
    }
  }

  global.NCALab = { FORMAT, NCAModel, CpuBackend, WebGLBackend, Automaton, mulberry32, base64ToBuffer, decodeImage };
})(window);
