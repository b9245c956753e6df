// ncalab demo page: controls, drawing, and the window.nca API used by people (console) and tests.
//
// Query parameters: ?backend=auto|webgl|js  ?model=<url of model.json>  ?paused=1  ?seed=<int>  ?speed=<n>
(function () {
  'use strict';
  const { NCAModel, Automaton } = window.NCALab;
  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);
  const board = $('board');
  const ctx = board.getContext('2d');

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
  };

  function showError(e) {
    const el = $('error');
    el.textContent = String((e && e.message) || e);
    el.hidden = false;
  }

  // --- loading ---------------------------------------------------------------------------------------------
  async function defaultModel() {
    const url = params.get('model');
    if (url) return NCAModel.fetch(url);
    if (window.NCA_EMBEDDED_MODEL) return NCAModel.fromEmbedded(window.NCA_EMBEDDED_MODEL);
    return NCAModel.fetch('model.json');
  }

  function use(model, targetUrl) {
    const seed = parseInt(params.get('seed') || '1', 10) || 0;
    if (ui.auto) ui.auto.backend.dispose();
    ui.auto = new Automaton(model, params.get('backend') || 'auto', seed);
    const m = model.meta, pr = m.perception;
    $('model-name').textContent = '· ' + model.name;
    $('model-info').textContent = pr.name + ' (' + pr.n_ops + ' x ' + pr.kernel_size + 'x' + pr.kernel_size +
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
    use(model, null);
  }

  // --- drawing ---------------------------------------------------------------------------------------------
  function layout() {
    const m = ui.auto.model;
    if (ui.view === 'all') {
      const cols = Math.ceil(Math.sqrt(m.C));
      return { cols, rows: Math.ceil(m.C / cols), gap: 1 };
    }
    return { cols: 1, rows: 1, gap: 0 };
  }

  function render() {
    const auto = ui.auto, m = auto.model, { H, W, C } = m, HW = H * W;
    const x = auto.readState();
    const { cols, rows, gap } = layout();
    const cw = cols * W + (cols - 1) * gap, ch = rows * H + (rows - 1) * gap;
    if (board.width !== cw || board.height !== ch) {
      board.width = cw;
      board.height = ch;
    }
    const img = ctx.createImageData(cw, ch);
    const d = img.data;
    d.fill(255);
    const clamp = (v) => (v < 0 ? 0 : v > 1 ? 1 : v);
    if (ui.view === 'rgb') {
      for (let i = 0; i < HW; i++) {
        const a = clamp(x[3 * HW + i]);
        for (let c = 0; c < 3; c++) d[4 * i + c] = Math.round(clamp(clamp(x[c * HW + i]) + 1 - a) * 255);
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
    const { gap } = layout();
    const px = ((ev.clientX - r.left) / r.width) * board.width;
    const py = ((ev.clientY - r.top) / r.height) * board.height;
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
    for (let i = 0; i <= n; i++) {
      ui.pendingErase.push([r0 + ((cell[0] - r0) * i) / n, c0 + ((cell[1] - c0) * i) / n, ui.brush]);
    }
    drag.last = cell;
    flushErase();
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

  function flushErase() {
    if (!ui.pendingErase.length) return;
    ui.auto.eraseMany(ui.pendingErase);
    ui.pendingErase = [];
    ui.dirty = true;
  }

  // --- controls --------------------------------------------------------------------------------------------
  function setPaused(p) {
    ui.paused = !!p;
    $('pause').textContent = ui.paused ? 'Run' : 'Pause';
  }
  $('reset').addEventListener('click', () => { ui.auto.reset(); ui.dirty = true; });
  $('pause').addEventListener('click', () => setPaused(!ui.paused));
  $('step').addEventListener('click', () => { ui.auto.step(1); ui.dirty = true; });
  $('speed').addEventListener('input', (e) => { ui.speed = +e.target.value; $('speed-out').textContent = e.target.value; });
  $('brush').addEventListener('input', (e) => { ui.brush = +e.target.value; $('brush-out').textContent = e.target.value; });
  $('fire').addEventListener('input', (e) => { ui.auto.fireRate = +e.target.value; $('fire-out').textContent = (+e.target.value).toFixed(2); });
  $('view').addEventListener('change', (e) => { ui.view = e.target.value; ui.dirty = true; });
  $('backend').addEventListener('change', (e) => {
    params.set('backend', e.target.value);
    location.search = params.toString();
  });
  $('file').addEventListener('change', (e) => loadFiles(e.target.files).catch(showError));
  document.addEventListener('keydown', (e) => {
    if (e.target.tagName === 'INPUT' || e.target.tagName === 'SELECT') return;
    if (e.key === ' ') { setPaused(!ui.paused); e.preventDefault(); }
    else if (e.key === 'r' || e.key === 'R') { ui.auto.reset(); ui.dirty = true; }
    else if (e.key === 's' || e.key === 'S') { ui.auto.step(1); ui.dirty = true; }
  });
  $('speed').value = String(Math.min(64, ui.speed));
  $('speed-out').textContent = String(ui.speed);
  $('brush-out').textContent = String(ui.brush);

  function frame(now) {
    if (ui.auto) {
      if (!ui.paused) {
        ui.auto.step(ui.speed);
        ui.spsSteps += ui.speed;
        ui.dirty = true;
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
    step(n = 1) { ui.auto.step(n); ui.auto.backend.sync(); ui.dirty = true; return ui.auto.steps; },
    readState() { return ui.auto.readState(); },
    readStateArray() { return Array.from(ui.auto.readState()); },
    setState(x) { ui.auto.setState(Float32Array.from(x)); ui.dirty = true; },
    setFireRate(r) { ui.auto.fireRate = r; $('fire').value = String(r); $('fire-out').textContent = (+r).toFixed(2); },
    reset(seed) { ui.auto.reset(seed); ui.dirty = true; },
    erase(row, col, radius = ui.brush) { ui.auto.erase(row, col, radius); ui.dirty = true; },
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
    async load(url) { use(await NCAModel.fetch(url), null); },
  };

  window.nca = api;
  api.ready = defaultModel()
    .then((model) => {
      const targetUrl = model.meta.target ? new URL(model.meta.target, model.baseUrl || location.href).href : null;
      use(model, targetUrl);
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
})();
