// ncalab demo page: controls, drawing, the model picker, the window.nca API (console) and the window.ncalab hook
// (a small, stable subset for tests and scripts; see the end of this file).
//
// Query parameters: ?backend=auto|webgl|js  ?name=<a model of the picker>  ?model=<url of a model.json>
//                   ?paused=1  ?seed=<int>  ?speed=<n>
(function () {
  'use strict';
  const { NCAModel, Automaton } = window.NCALab;
  const params = new URLSearchParams(location.search);
  // models.js (written by every export): {default, models: [{name, path, perception, grid, ...}]}; null without it.
  const index = window.NCA_MODEL_INDEX && window.NCA_MODEL_INDEX.models ? window.NCA_MODEL_INDEX : null;
  const fromDisk = location.protocol === 'file:';
  const $ = (id) => document.getElementById(id);
  const board = $('board');
  const ctx = board.getContext('2d');
  const picker = $('model-select');

  const ui = {
    auto: null,
    paused: params.get('paused') === '1',
    speed: Math.max(1, parseInt(params.get('speed') || '1', 10) || 1),
    brush: 4,
    view: 'rgb',
    dirty: true,
    spsSteps: 0,
    spsSince: performance.now(),
    sps: 0,
    pendingErase: [],
    current: null, // the picker's name of the running model (null: loaded by file or URL)
    cache: new Map(), // picker name -> NCAModel (weights are read once)
    loadToken: 0, // the latest model choice wins over slower earlier ones
  };

  function showError(e) {
    const el = $('error');
    el.textContent = String((e && e.message) || e);
    el.hidden = false;
  }

  // --- loading ---------------------------------------------------------------------------------------------
  // A model lives in a folder (`path` in the index, '' = this page's own): over HTTP its model.json + model.bin
  // are fetched; opened from disk (file://, where fetch is refused) its model.js, the same model embedded, is
  // run with a <script> element.
  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement('script');
      window.NCA_EMBEDDED_MODEL = null;
      // The load event fires right after this script ran, before any other can: what it set is its model.
      s.onload = () => {
        const obj = window.NCA_EMBEDDED_MODEL;
        s.remove();
        if (obj) resolve(obj); else reject(new Error(src + ' holds no model'));
      };
      s.onerror = () => { s.remove(); reject(new Error('cannot load ' + src)); };
      s.src = src;
      document.head.appendChild(s);
    });
  }

  async function loadFolder(path) {
    const base = new URL(path || './', location.href).href;
    if (!fromDisk) {
      try {
        return await NCAModel.fetch(base + 'model.json');
      } catch (e) {
        try { return await loadFolderScript(base); } catch (_) { throw e; }
      }
    }
    return loadFolderScript(base);
  }

  async function loadFolderScript(base) {
    const model = NCAModel.fromEmbedded(await loadScript(base + 'model.js'));
    model.baseUrl = base;
    return model;
  }

  function targetOf(model) {
    return model.meta.target ? new URL(model.meta.target, model.baseUrl || location.href).href : null;
  }

  // e.g. "operators: 3 operators, 5x5 (sobel3_x, sobel3_y, laplace5)": a bank of mixed sizes runs at its largest;
  // a multi-scale bank: "multiscale: 3 operators at 3 scales (bilinear), 3x3 (sobel3_x, sobel3_y, laplace3)".
  function perceptionText(pr) {
    const levels = pr.levels || 1, nb = pr.n_ops / levels;
    return pr.name + ': ' + nb + (nb === 1 ? ' operator' : ' operators') +
      (levels > 1 ? ' at ' + levels + ' scales (' + pr.upsample + ')' : '') + ', ' +
      pr.kernel_size + 'x' + pr.kernel_size + (pr.scale_mode ? ', scale ' + pr.scale_mode : '') +
      (pr.ops && pr.ops.length ? ' (' + pr.ops.join(', ') + ')' : '');
  }

  // "3 x 3x3" (operators x kernel), "3 x 3x3 x 3 scales" for a multi-scale bank.
  function bankText(pr) {
    const levels = pr.levels || 1;
    return pr.n_ops / levels + ' x ' + pr.kernel_size + 'x' + pr.kernel_size + (levels > 1 ? ' x ' + levels + ' scales' : '');
  }

  function optionLabel(e) {
    const pr = e.perception;
    return e.name + ' · ' + pr.name + ' (' + bankText(pr) + ') · ' + e.grid[0] + 'x' + e.grid[1];
  }

  // The picker offers the index's models; a model loaded by file or URL shows as one more, unnamed, option.
  function setupPicker() {
    if (!index || !index.models.length) return;
    for (const e of index.models) picker.add(new Option(optionLabel(e), e.name));
    $('picker').hidden = false;
  }

  function showInPicker(model, entry, origin) {
    let extra = picker.querySelector('option[data-extra]');
    if (entry) {
      if (extra) extra.remove();
      picker.value = entry.name;
    } else if (!$('picker').hidden) {
      if (!extra) {
        extra = new Option('', '');
        extra.dataset.extra = '1';
        picker.add(extra);
      }
      extra.textContent = model.name + ' (' + origin + ')';
      picker.value = '';
    }
    const m = model.meta, info = $('model-perception');
    info.textContent = 'perception ' + perceptionText(m.perception) + ' · grid ' + m.grid[0] + 'x' + m.grid[1];
    if (entry && entry.card) {
      const a = document.createElement('a');
      a.href = entry.card;
      a.textContent = 'model card';
      a.target = '_blank';
      info.append(' · ', a);
    }
  }

  // Choosing a model in the picker (and window.ncalab.select): load it once, then run it from a seed.
  async function selectModel(name, remember = true) {
    const entry = index && index.models.find((e) => e.name === name);
    if (!entry) throw new Error('this page offers no model named ' + JSON.stringify(name));
    const token = ++ui.loadToken;
    picker.value = name;
    let model = ui.cache.get(name);
    if (!model) {
      model = await loadFolder(entry.path);
      ui.cache.set(name, model);
    }
    if (token !== ui.loadToken) return false; // a later choice won
    use(model, targetOf(model), entry);
    if (remember) {
      // The URL names the choice, so that reloading (e.g. to switch the backend) keeps it.
      params.set('name', name);
      params.delete('model');
      try { history.replaceState(null, '', '?' + params.toString() + location.hash); } catch (_) { /* file:// */ }
    }
    return true;
  }

  async function initialModel() {
    const url = params.get('model');
    if (url) {
      const model = await NCAModel.fetch(url);
      use(model, targetOf(model), null, 'URL');
      return;
    }
    if (index && index.models.length) {
      const names = index.models.map((e) => e.name), wanted = params.get('name');
      const name = names.includes(wanted) ? wanted : names.includes(index.default) ? index.default : names[0];
      await selectModel(name, false);
      if (wanted !== null && wanted !== name) showError('no model named ' + JSON.stringify(wanted) + ' here: showing ' + name);
      return;
    }
    const model = await loadFolder(''); // a folder without models.js: its own model.json / model.js
    use(model, targetOf(model), null, 'folder');
  }

  function use(model, targetUrl, entry = null, origin = 'file') {
    const seed = parseInt(params.get('seed') || '1', 10) || 0;
    if (ui.auto) ui.auto.backend.dispose();
    ui.auto = new Automaton(model, params.get('backend') || 'auto', seed);
    ui.current = entry ? entry.name : null;
    $('error').hidden = true;
    showInPicker(model, entry, origin);
    const m = model.meta, pr = m.perception;
    $('model-name').textContent = '· ' + model.name;
    $('model-info').textContent = pr.name + ' (' + bankText(pr) +
      (pr.scale_mode ? ', scale ' + pr.scale_mode : '') + ') · ' + m.grid[0] + 'x' + m.grid[1] + ' grid · ' +
      m.channels + ' channels · hidden ' + m.hidden + ' · backend ' + ui.auto.backend.name +
      (ui.auto.backendError ? ' (not WebGL2: ' + ui.auto.backendError + ')' : '') +
      (m.info && m.info.iterations ? ' · ' + m.info.iterations + ' training steps' : '');
    $('fire').value = String(ui.auto.fireRate);
    $('fire-out').textContent = ui.auto.fireRate.toFixed(2);
    $('backend').value = params.get('backend') || 'auto';
    const view = $('view');
    while (view.options.length > 2) view.remove(2);
    for (let c = 0; c < model.C; c++) {
      const names = ['red', 'green', 'blue', 'alpha'];
      view.add(new Option('channel ' + c + (c < 4 ? ' (' + names[c] + ')' : ' (hidden)'), 'ch' + c));
    }
    if (!['rgb', 'all'].includes(ui.view) && parseInt(ui.view.slice(2), 10) >= model.C) ui.view = 'rgb';
    view.value = ui.view;
    const fig = $('target-fig');
    if (targetUrl) {
      $('target').src = targetUrl;
      fig.hidden = false;
    } else {
      fig.hidden = true;
    }
    ui.dirty = true;
    return ui.auto;
  }

  async function loadFiles(files) {
    const list = Array.from(files);
    const json = list.find((f) => f.name.endsWith('.json'));
    const bin = list.find((f) => f.name.endsWith('.bin'));
    if (!json || !bin) throw new Error('choose both files of an exported model: model.json and model.bin');
    const model = new NCAModel(JSON.parse(await json.text()), await bin.arrayBuffer());
    ui.loadToken++; // a pending picker choice no longer applies
    use(model, null, null, 'file');
  }

  // --- drawing ---------------------------------------------------------------------------------------------
  function layout() {
    const m = ui.auto.model;
    if (ui.view === 'all') {
      const cols = Math.ceil(Math.sqrt(m.C));
      return { cols, rows: Math.ceil(m.C / cols), gap: 1, px: 1 };
    }
    // The image view of a decoder model is drawn at its real size: px pixels per cell side.
    return { cols: 1, rows: 1, gap: 0, px: ui.view === 'rgb' ? m.px : 1 };
  }

  function render() {
    const auto = ui.auto, m = auto.model, { H, W, C } = m, HW = H * W;
    const x = auto.readState();
    const { cols, rows, gap, px } = layout();
    const cw = cols * W * px + (cols - 1) * gap, ch = rows * H * px + (rows - 1) * gap;
    if (board.width !== cw || board.height !== ch) {
      board.width = cw;
      board.height = ch;
    }
    const img = ctx.createImageData(cw, ch);
    const d = img.data;
    d.fill(255);
    const clamp = (v) => (v < 0 ? 0 : v > 1 ? 1 : v);
    if (ui.view === 'rgb') {
      const v = m.px > 1 ? auto.readImage() : auto.readImage(x), N = cw * ch; // the state's RGBA, or the decoder's image
      for (let i = 0; i < N; i++) {
        const a = clamp(v[3 * N + i]);
        for (let c = 0; c < 3; c++) d[4 * i + c] = Math.round(clamp(clamp(v[c * N + i]) + 1 - a) * 255);
      }
    } else {
      // Diverging map: negative blue, zero white, positive red; |v| >= 1 saturates.
      const channels = ui.view === 'all' ? Array.from({ length: C }, (_, c) => c) : [parseInt(ui.view.slice(2), 10)];
      channels.forEach((c, tile) => {
        const ox = (tile % cols) * (W + gap), oy = Math.floor(tile / cols) * (H + gap);
        for (let i = 0; i < H; i++) {
          for (let j = 0; j < W; j++) {
            const v = Math.max(-1, Math.min(1, x[c * HW + i * W + j]));
            const o = 4 * ((oy + i) * cw + ox + j);
            d[o] = v < 0 ? Math.round(255 * (1 + v)) : 255;
            d[o + 1] = Math.round(255 * (1 - Math.abs(v)));
            d[o + 2] = v > 0 ? Math.round(255 * (1 - v)) : 255;
          }
        }
      });
      if (gap) {
        for (let yy = 0; yy < ch; yy++) {
          for (let xx = 0; xx < cw; xx++) {
            if (xx % (W + gap) === W || yy % (H + gap) === H) {
              const o = 4 * (yy * cw + xx);
              d[o] = d[o + 1] = d[o + 2] = 120;
            }
          }
        }
      }
    }
    ctx.putImageData(img, 0, 0);
    $('steps').textContent = String(auto.steps);
    $('alive').textContent = String(auto.aliveCount(x));
    ui.dirty = false;
  }

  // --- pointer: drag erases, a click without a drag plants a seed ------------------------------------------
  function cellAt(ev) {
    const r = board.getBoundingClientRect(), m = ui.auto.model;
    const { gap, px: f } = layout();
    const px = ((ev.clientX - r.left) / r.width) * board.width / f;
    const py = ((ev.clientY - r.top) / r.height) * board.height / f;
    // Continuous cell coordinates: cell (i, j) covers [i, i+1) x [j, j+1), its centre is at (i, j) here.
    return [(py % (m.H + gap)) - 0.5, (px % (m.W + gap)) - 0.5];
  }

  let drag = null;
  board.addEventListener('pointerdown', (ev) => {
    if (!ui.auto) return;
    board.setPointerCapture(ev.pointerId);
    drag = { x: ev.clientX, y: ev.clientY, moved: false, last: cellAt(ev) };
    ev.preventDefault();
  });
  board.addEventListener('pointermove', (ev) => {
    if (!drag) return;
    if (!drag.moved && Math.hypot(ev.clientX - drag.x, ev.clientY - drag.y) < 4) return;
    drag.moved = true;
    const cell = cellAt(ev), [r0, c0] = drag.last;
    const n = Math.max(1, Math.ceil(2 * Math.hypot(cell[0] - r0, cell[1] - c0)));
    const discs = [];
    for (let i = 0; i <= n; i++) discs.push([r0 + ((cell[0] - r0) * i) / n, c0 + ((cell[1] - c0) * i) / n, ui.brush]);
    drag.last = cell;
    eraseDiscs(discs);
  });
  const endDrag = (ev) => {
    if (!drag) return;
    if (!drag.moved && ev.type === 'pointerup') {
      const [row, col] = cellAt(ev);
      ui.auto.plant(Math.round(row), Math.round(col));
      ui.dirty = true;
    }
    drag = null;
  };
  board.addEventListener('pointerup', endDrag);
  board.addEventListener('pointercancel', endDrag);

  // Every erase (a mouse stroke, window.nca.erase, window.ncalab.erase) goes through here: discs [row, col, radius]
  // in cell coordinates (cell (i, j) is centred on (i, j)), the radius defaulting to the brush.
  function eraseDiscs(discs) {
    for (const d of discs) ui.pendingErase.push([+d[0], +d[1], d.length > 2 && d[2] != null ? +d[2] : ui.brush]);
    flushErase();
  }

  function flushErase() {
    if (!ui.pendingErase.length) return;
    ui.auto.eraseMany(ui.pendingErase);
    ui.pendingErase = [];
    ui.dirty = true;
  }

  // Every run of the automaton (the animation loop, the Step button, window.nca.step, window.ncalab.step).
  function advance(n) {
    ui.auto.step(n);
    ui.dirty = true;
  }

  // --- controls --------------------------------------------------------------------------------------------
  function setPaused(p) {
    ui.paused = !!p;
    $('pause').textContent = ui.paused ? 'Run' : 'Pause';
  }
  $('reset').addEventListener('click', () => { ui.auto.reset(); ui.dirty = true; });
  $('pause').addEventListener('click', () => setPaused(!ui.paused));
  $('step').addEventListener('click', () => advance(1));
  $('speed').addEventListener('input', (e) => { ui.speed = +e.target.value; $('speed-out').textContent = e.target.value; });
  $('brush').addEventListener('input', (e) => { ui.brush = +e.target.value; $('brush-out').textContent = e.target.value; });
  $('fire').addEventListener('input', (e) => { ui.auto.fireRate = +e.target.value; $('fire-out').textContent = (+e.target.value).toFixed(2); });
  $('view').addEventListener('change', (e) => { ui.view = e.target.value; ui.dirty = true; });
  $('backend').addEventListener('change', (e) => {
    params.set('backend', e.target.value);
    location.search = params.toString();
  });
  $('file').addEventListener('change', (e) => loadFiles(e.target.files).catch(showError));
  picker.addEventListener('change', (e) => {
    const name = e.target.value;
    if (!name) return; // the extra option of a model loaded by file or URL
    selectModel(name).catch((err) => {
      showError(err);
      picker.value = ui.current === null ? '' : ui.current;
    });
  });
  document.addEventListener('keydown', (e) => {
    if (e.target.tagName === 'INPUT' || e.target.tagName === 'SELECT') return;
    if (e.key === ' ') { setPaused(!ui.paused); e.preventDefault(); }
    else if (e.key === 'r' || e.key === 'R') { ui.auto.reset(); ui.dirty = true; }
    else if (e.key === 's' || e.key === 'S') advance(1);
  });
  $('speed').value = String(Math.min(64, ui.speed));
  $('speed-out').textContent = String(ui.speed);
  $('brush-out').textContent = String(ui.brush);

  function frame(now) {
    if (ui.auto) {
      if (!ui.paused) {
        advance(ui.speed);
        ui.spsSteps += ui.speed;
      }
      if (ui.dirty) render(); // reads the state back, which also waits for the GPU
      const dt = now - ui.spsSince;
      if (dt >= 1000) {
        ui.sps = (1000 * ui.spsSteps) / dt;
        $('sps').textContent = ui.paused ? 'paused' : ui.sps.toFixed(1);
        ui.spsSteps = 0;
        ui.spsSince = now;
      }
    }
    requestAnimationFrame(frame);
  }

  // --- window.nca: the page's API ----------------------------------------------------------------------------
  const api = {
    get backend() { return ui.auto.backend.name; },
    get backendError() { return ui.auto.backendError; },
    get steps() { return ui.auto.steps; },
    get meta() { return ui.auto.model.meta; },
    get paused() { return ui.paused; },
    get sps() { return ui.sps; },
    step(n = 1) { advance(n); ui.auto.backend.sync(); return ui.auto.steps; },
    readState() { return ui.auto.readState(); },
    readStateArray() { return Array.from(ui.auto.readState()); },
    // The drawn image (premultiplied RGBA, 4 x H*px x W*px; a decoder model's drawing at its real size).
    readImageArray() { return Array.from(ui.auto.readImage()); },
    setState(x) { ui.auto.setState(Float32Array.from(x)); ui.dirty = true; },
    setFireRate(r) { ui.auto.fireRate = r; $('fire').value = String(r); $('fire-out').textContent = (+r).toFixed(2); },
    reset(seed) { ui.auto.reset(seed); ui.dirty = true; },
    erase(row, col, radius = ui.brush) { eraseDiscs([[row, col, radius]]); },
    plant(row, col) { ui.auto.plant(row, col); ui.dirty = true; },
    pause(p = true) { setPaused(p); },
    setSpeed(n) { ui.speed = n; $('speed').value = String(n); $('speed-out').textContent = String(n); },
    setBrush(r) { ui.brush = r; $('brush').value = String(r); $('brush-out').textContent = String(r); },
    setView(v) { ui.view = v; $('view').value = v; ui.dirty = true; },
    aliveCount() { return ui.auto.aliveCount(); },
    render() { render(); },
    // Steps per second of `n` synchronous steps (state read back at the end, so GPU work is counted).
    benchmark(n = 32) {
      const t0 = performance.now();
      ui.auto.step(n);
      ui.auto.readState();
      return (1000 * n) / (performance.now() - t0);
    },
    async load(url) {
      const token = ++ui.loadToken, model = await NCAModel.fetch(url);
      if (token === ui.loadToken) use(model, targetOf(model), null, 'URL');
    },
    models() { return index ? index.models.map((e) => e.name) : []; },
    get current() { return ui.current; },
    select(name) { return selectModel(name); },
  };

  // --- window.ncalab: the test hook ----------------------------------------------------------------------------
  // A small, stable surface for tests and scripts that goes through the page's own code paths (the same
  // functions the animation loop, the mouse and the model picker call), so that what it checks is what a
  // visitor gets. Cell coordinates: row i, column j, cell (i, j) centred on (i, j).
  //   ready          Promise, resolved (to this hook) once the first model runs
  //   models()       names offered by the model picker, in its order ([] for a page without models.js)
  //   model()        {name, meta, backend, steps, fireRate}: the running model (name: its picker name, or null)
  //   select(name)   Promise: choose `name` as the picker does (loaded once, run from a seed); true when it ran
  //   step(n)        run n steps as the animation loop does (fire mask from the page's seeded RNG at the
  //                  current fire rate); waits for the backend; returns the step count since the seed
  //   erase(discs)   erase [[row, col, radius], ...] as a mouse stroke does; returns the number of discs
  //   rgba()         {steps, H, W, data}: the premultiplied RGBA state (channels 0-3, float32 values) as a plain
  //                  array, data[(c * H + i) * W + j]; no pixels are scraped
  //   image()        {steps, H, W, data}: the drawn image (premultiplied RGBA, H x W pixels: the state's channels
  //                  0-3, or a decoder model's drawing at its real size), laid out as rgba()'s
  //   alive()        the page's readout of alive cells (3x3 max of alpha above the model's threshold)
  //   render()       draw the current state now (before a screenshot)
  const hook = {
    ready: null,
    models: api.models,
    model() {
      const a = ui.auto;
      return { name: ui.current, meta: a.model.meta, backend: a.backend.name, steps: a.steps, fireRate: a.fireRate };
    },
    select(name) { return selectModel(name); },
    step(n = 1) { return api.step(n); },
    erase(discs) { eraseDiscs(discs); return discs.length; },
    rgba() {
      const m = ui.auto.model, x = ui.auto.readState();
      return { steps: ui.auto.steps, H: m.H, W: m.W, data: Array.from(x.subarray(0, 4 * m.H * m.W)) };
    },
    image() {
      const m = ui.auto.model, px = m.px || 1;
      return { steps: ui.auto.steps, H: m.H * px, W: m.W * px, data: Array.from(ui.auto.readImage()) };
    },
    alive() { return ui.auto.aliveCount(); },
    render() { render(); },
  };

  window.nca = api;
  window.ncalab = hook;
  setupPicker();
  api.ready = initialModel()
    .then(() => {
      setPaused(ui.paused);
      requestAnimationFrame(frame);
      document.body.dataset.ready = '1';
      return api;
    })
    .catch((e) => {
      showError(e);
      document.body.dataset.ready = 'error';
      throw e;
    });
  hook.ready = api.ready.then(() => hook);
})();
