// vccid console: plain JavaScript, no dependencies. Every value from the server is untrusted
// text: it reaches the page through textContent only.
'use strict';
(() => {
  const MAX_ROWS = 2000;
  const CHART_N = 300;
  const SOON_MS = 30 * 86400 * 1000;
  const $ = (id) => document.getElementById(id);

  // helpers
  const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  const obj = (v) => (isObj(v) ? v : {});
  const arr = (v) => (Array.isArray(v) ? v : []);
  const str = (v, d = '') => (v === null || v === undefined ? d : String(v));
  const errText = (e) => (e && e.message ? e.message : str(e, 'error'));

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function option(value, text, selected, disabled) {
    const o = el('option', '', text);
    o.value = value;
    if (selected) o.selected = true;
    if (disabled) o.disabled = true;
    return o;
  }

  // the token: read once, then out of the address bar
  let token = '';
  try {
    const q = new URLSearchParams(location.search);
    token = q.get('token') || '';
    if (q.has('token')) {
      q.delete('token');
      const rest = q.toString();
      history.replaceState(history.state, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
    }
  } catch (e) {
    token = '';
  }

  // messages
  function showMessage(text, kind) {
    const m = $('message');
    if (!m) return;
    m.className = 'message ' + (kind || 'error');
    $('message-text').textContent = text;
    m.hidden = false;
  }
  function hideMessage() {
    const m = $('message');
    if (m) m.hidden = true;
  }

  // connection indicator
  function setConn(state, text) {
    const c = $('conn');
    if (!c) return;
    c.className = 'conn ' + state;
    c.dataset.state = state;
    c.textContent = text;
  }

  // API
  async function api(method, path, body) {
    const opts = {
      method,
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
      credentials: 'same-origin',
    };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (!res.ok || (isObj(data) && data.error !== undefined && data.error !== null) ||
        (isObj(data) && data.ok === false)) {
      const why = isObj(data) && data.error ? str(data.error) : `HTTP ${res.status} ${res.statusText}`.trim();
      throw new Error(why);
    }
    return data;
  }

  async function refresh() {
    if (!token) return;
    try {
      render(await api('GET', '/api/state'));
    } catch (e) {
      showMessage('Cannot read the state: ' + errText(e));
    }
  }

  async function post(path, body, what, button) {
    if (button) button.disabled = true;
    try {
      await api('POST', path, body);
      refresh();
      return true;
    } catch (e) {
      showMessage(what + ': ' + errText(e));
      return false;
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  }

  // state
  let slotReader = new Map(); // slot id -> reader id

  function render(s) {
    s = obj(s);
    const v = $('version');
    if (v) v.textContent = str(s.version);
    const readers = arr(s.readers).map(obj);
    const cards = arr(s.cards).map(obj);
    slotReader = new Map();
    for (const r of readers) for (const sl of arr(r.slots).map(obj)) slotReader.set(str(sl.id), str(r.id));
    renderReaders(readers, cards);
    renderCards(cards);
    renderNewCardReaders(readers);
    renderTraceReaders(readers);
  }

  function emptyRow(tbody, cols, text) {
    const tr = el('tr');
    const td = el('td', 'muted', text);
    td.colSpan = cols;
    tr.append(td);
    tbody.replaceChildren(tr);
  }

  function renderReaders(readers, cards) {
    const tbody = $('readers-body');
    if (!tbody) return;
    // Keep what the user chose in the insert selects across redraws.
    const chosen = new Map();
    for (const s of tbody.querySelectorAll('select.insert-card')) chosen.set(s.dataset.slot, s.value);
    const used = new Set();
    for (const r of readers) for (const sl of arr(r.slots).map(obj)) if (sl.card != null) used.add(String(sl.card));
    const free = cards
      .filter((c) => c.id != null && c.slot == null && !used.has(String(c.id)))
      .map((c) => String(c.id));
    if (!readers.length) return emptyRow(tbody, 8, 'No readers.');
    const frag = document.createDocumentFragment();
    for (const r of readers) {
      const rid = str(r.id, '?');
      const slots = arr(r.slots).map(obj);
      const n = Math.max(1, slots.length);
      for (let i = 0; i < n; i++) {
        const sl = slots[i];
        const tr = el('tr');
        if (i === 0) {
          tr.className = 'reader-first';
          tr.dataset.reader = rid;
          for (const [text, cls] of [[rid, 'id'], [str(r.transport, '—'), ''], [str(r.address, '—'), 'mono']]) {
            const td = el('td', cls, text);
            td.rowSpan = n;
            tr.append(td);
          }
        }
        if (sl) {
          const sid = str(sl.id, rid);
          tr.classList.add('slot-row');
          tr.dataset.slot = sid;
          tr.append(el('td', 'id', sid));
          const card = sl.card == null ? null : String(sl.card);
          tr.append(el('td', card ? 'card' : 'muted', card === null ? 'empty' : card));
          const host = sl.host == null || sl.host === '' ? null : String(sl.host);
          tr.append(el('td', host ? 'mono' : 'muted', host === null ? 'no host' : host));
          const act = el('td', 'actions');
          if (card !== null) {
            const b = el('button', 'eject', 'Eject');
            b.type = 'button';
            b.dataset.slot = sid;
            b.title = `Eject ${card} from ${sid}`;
            act.append(b);
          } else {
            const sel = el('select', 'insert-card');
            sel.dataset.slot = sid;
            sel.setAttribute('aria-label', `Card to insert into ${sid}`);
            if (free.length) {
              const want = chosen.get(sid);
              for (const c of free) sel.append(option(c, c, c === want));
            } else {
              sel.append(option('', 'no free card', true));
              sel.disabled = true;
            }
            const b = el('button', 'insert', 'Insert…');
            b.type = 'button';
            b.dataset.slot = sid;
            b.disabled = !free.length;
            act.append(sel, b);
          }
          tr.append(act);
        } else {
          const td = el('td', 'muted', 'no slots');
          td.colSpan = 4;
          tr.append(td);
        }
        if (i === 0) {
          const td = el('td');
          td.rowSpan = n;
          const a = el('a', 'pcap', 'Download pcap');
          a.href = `/api/pcap?reader=${encodeURIComponent(rid)}&token=${encodeURIComponent(token)}`;
          a.setAttribute('download', '');
          a.dataset.reader = rid;
          a.title = 'The exchanges seen while this page was open, as a usbmon capture for Wireshark';
          td.append(a);
          tr.append(td);
        }
        frag.append(tr);
      }
    }
    tbody.replaceChildren(frag);
  }

  function certItem(c) {
    c = obj(c);
    const li = el('li');
    if (c.label != null) li.append(el('span', 'cert-label', c.label));
    li.append(el('span', 'cert-subject', str(c.subject, '(no subject)')));
    if (c.not_after != null) {
      const when = str(c.not_after);
      const t = Date.parse(when);
      const date = el('span', 'cert-date', 'until ' + when.slice(0, 10));
      date.title = when;
      if (Number.isFinite(t)) {
        const left = t - Date.now();
        if (left <= 0) {
          li.className = 'cert-expired';
          date.textContent += ' (expired)';
        } else if (left <= SOON_MS) {
          li.className = 'cert-soon';
          const days = Math.floor(left / 86400000);
          date.textContent += days < 1 ? ' (expires today)' : ` (${days} day${days === 1 ? '' : 's'} left)`;
        }
      }
      li.append(date);
    }
    return li;
  }

  function renderCards(cards) {
    const tbody = $('cards-body');
    if (!tbody) return;
    if (!cards.length) return emptyRow(tbody, 8, 'No cards.');
    const frag = document.createDocumentFragment();
    for (const c of cards) {
      const tr = el('tr');
      const id = str(c.id, '?');
      tr.dataset.card = id;
      tr.append(el('td', 'id', id));
      tr.append(el('td', '', str(c.kind, '—')));
      tr.append(el('td', c.profile == null ? 'muted' : '', str(c.profile, '—')));
      tr.append(el('td', c.keys == null ? 'muted' : '', str(c.keys, '—')));
      tr.append(el('td', '', c.ephemeral === true ? 'yes' : 'no'));
      tr.append(el('td', c.slot == null ? 'muted' : 'mono', str(c.slot, 'none')));
      const tries = c.pin_tries_left;
      const tn = Number(tries);
      let cls = 'muted';
      if (tries != null && Number.isFinite(tn)) cls = tn <= 0 ? 'bad' : tn === 1 ? 'warn' : '';
      tr.append(el('td', cls, tries == null ? '—' : str(tries) + (tn <= 0 ? ' (blocked)' : '')));
      const td = el('td');
      const certs = arr(c.certificates);
      if (certs.length) {
        const ul = el('ul', 'certs');
        for (const cert of certs) ul.append(certItem(cert));
        td.append(ul);
      } else {
        td.className = 'muted';
        td.textContent = 'none';
      }
      tr.append(td);
      frag.append(tr);
    }
    tbody.replaceChildren(frag);
  }

  function renderNewCardReaders(readers) {
    const sel = $('new-card-reader');
    if (!sel) return;
    const want = sel.value;
    const opts = [option('', 'no reader', want === '')];
    for (const r of readers) {
      for (const sl of arr(r.slots).map(obj)) {
        const sid = str(sl.id);
        if (!sid) continue;
        const busy = sl.card != null;
        opts.push(option(sid, busy ? `${sid} (has ${str(sl.card)})` : sid, sid === want && !busy, busy));
      }
    }
    sel.replaceChildren(...opts);
    if (sel.selectedIndex < 0 || (sel.options[sel.selectedIndex] || {}).disabled) sel.value = '';
  }

  function renderTraceReaders(readers) {
    const sel = $('trace-reader');
    if (!sel) return;
    const want = sel.value;
    const ids = readers.map((r) => str(r.id)).filter((x) => x);
    const opts = [option('', 'all readers', want === '')];
    for (const id of ids) opts.push(option(id, id, id === want));
    // A reader that went away stays selectable while it is the filter.
    if (want && !ids.includes(want)) opts.push(option(want, want + ' (gone)', true));
    sel.replaceChildren(...opts);
    sel.value = want;
  }

  // actions
  function wireActions() {
    const rb = $('readers-body');
    if (rb) {
      rb.addEventListener('click', (ev) => {
        const t = ev.target instanceof Element ? ev.target.closest('button') : null;
        if (!t) return;
        const sid = t.dataset.slot || '';
        if (t.classList.contains('eject')) {
          post('/api/eject', { what: sid }, `Eject ${sid}`, t);
        } else if (t.classList.contains('insert')) {
          const row = t.closest('tr');
          const sel = row ? row.querySelector('select.insert-card') : null;
          const card = sel ? sel.value : '';
          if (!card) return showMessage(`Insert into ${sid}: no card chosen`);
          post('/api/insert', { card, reader: sid }, `Insert ${card} into ${sid}`, t);
        }
      });
    }
    const create = $('new-card');
    const idInput = $('new-card-id');
    if (create && idInput) {
      create.addEventListener('click', async () => {
        const id = idInput.value.trim();
        if (!id) {
          showMessage('New card: give it an id');
          idInput.focus();
          return;
        }
        const body = { id, profile: ($('new-card-profile') || {}).value || 'cac' };
        const reader = ($('new-card-reader') || {}).value || '';
        if (reader) body.reader = reader;
        if (await post('/api/cards', body, `New card ${id}`, create)) idInput.value = '';
      });
      idInput.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter') {
          ev.preventDefault();
          create.click();
        }
      });
    }
    const close = $('message-close');
    if (close) close.addEventListener('click', hideMessage);
  }

  // live trace
  const rows = []; // {el, slot, text}, oldest first
  const incoming = []; // received, not yet on the page
  const pending = []; // received while paused
  let pausedCount = 0;
  let paused = false;
  let flushTimer = 0;
  let filterReader = '';
  let filterText = '';

  function swClass(sw) {
    const s = str(sw).toUpperCase();
    if (/^(90|61)/.test(s)) return 'ok';
    if (s.startsWith('63')) return 'warn';
    return s ? 'err' : 'unknown';
  }

  const pad = (n, w) => String(n).padStart(w, '0');
  function fmtTime(d) {
    const s = Number(d.seconds);
    if (!Number.isFinite(s)) return '--:--:--.---';
    const us = Number(d.microseconds);
    const t = new Date(s * 1000);
    const ms = Number.isFinite(us) ? Math.floor(us / 1000) % 1000 : 0;
    return `${pad(t.getHours(), 2)}:${pad(t.getMinutes(), 2)}:${pad(t.getSeconds(), 2)}.${pad(ms, 3)}`;
  }

  function fmtMicros(v) {
    const n = Number(v);
    return Number.isFinite(n) ? `${Math.round(n)} µs` : '';
  }

  function readerMatches(slot, reader) {
    return !reader || slot === reader || slot.startsWith(reader + '/') || slotReader.get(slot) === reader;
  }

  function applyFilter(r) {
    const show = readerMatches(r.slot, filterReader) && (!filterText || r.text.includes(filterText));
    if (r.el.hidden === show) r.el.hidden = !show;
  }

  function makeRow(d) {
    const slot = str(d.slot);
    const line = str(d.line);
    const det = el('details', 'apdu-row sw-' + swClass(d.sw));
    det.dataset.slot = slot;
    if (d.card != null) det.dataset.card = str(d.card);
    if (d.sw != null) det.dataset.sw = str(d.sw);
    const sum = el('summary');
    sum.append(el('span', 't', fmtTime(d)), el('span', 'slot', slot), el('span', 'line', line));
    const us = el('span', 'us', fmtMicros(d.micros));
    sum.append(us);
    const pieces = Number(d.pieces);
    if (Number.isFinite(pieces) && pieces > 1) sum.append(el('span', 'pieces', `${pieces} pieces`));
    sum.title = line;
    det.append(sum);
    const detail = str(d.detail).replace(/\s+$/, '');
    // The <pre> is made on the first opening: 2000 rows stay light.
    det.addEventListener('toggle', () => {
      if (det.open && !det.querySelector('pre')) det.append(el('pre', 'detail', detail || '(no data field)'));
    });
    return { el: det, slot, text: line.toLowerCase() };
  }

  function updateCount() {
    const c = $('trace-count');
    if (c) {
      const shown = rows.reduce((n, r) => n + (r.el.hidden ? 0 : 1), 0);
      c.textContent = rows.length === shown ? `${rows.length} exchanges` : `${shown} of ${rows.length} exchanges shown`;
    }
    const p = $('trace-pause');
    if (p) {
      p.textContent = paused ? (pausedCount ? `Resume (${pausedCount} new)` : 'Resume') : 'Pause';
      p.setAttribute('aria-pressed', paused ? 'true' : 'false');
    }
  }

  function scheduleFlush() {
    if (!flushTimer) flushTimer = setTimeout(flush, 60);
  }

  function flush() {
    flushTimer = 0;
    const box = $('trace');
    if (!box || !incoming.length) return;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    const batch = incoming.splice(0, incoming.length);
    const frag = document.createDocumentFragment();
    for (let i = Math.max(0, batch.length - MAX_ROWS); i < batch.length; i++) {
      const r = makeRow(batch[i]);
      applyFilter(r);
      rows.push(r);
      frag.append(r.el);
    }
    box.append(frag);
    if (rows.length > MAX_ROWS) for (const r of rows.splice(0, rows.length - MAX_ROWS)) r.el.remove();
    if (atBottom) box.scrollTop = box.scrollHeight;
    updateCount();
  }

  function onApdu(ev) {
    let d;
    try {
      d = JSON.parse(ev.data);
    } catch (e) {
      return;
    }
    if (!isObj(d)) return;
    chartAdd(d);
    if (paused) {
      pausedCount++;
      pending.push(d);
      if (pending.length > MAX_ROWS) pending.splice(0, pending.length - MAX_ROWS);
      updateCount();
      return;
    }
    incoming.push(d);
    if (incoming.length > MAX_ROWS) incoming.splice(0, incoming.length - MAX_ROWS);
    scheduleFlush();
  }

  function refilter() {
    const f = $('trace-filter');
    const r = $('trace-reader');
    filterText = f ? f.value.toLowerCase() : '';
    filterReader = r ? r.value : '';
    for (const row of rows) applyFilter(row);
    updateCount();
    scheduleDraw();
  }

  function wireTrace() {
    const f = $('trace-filter');
    if (f) f.addEventListener('input', refilter);
    const r = $('trace-reader');
    if (r) r.addEventListener('change', refilter);
    const p = $('trace-pause');
    if (p) {
      p.addEventListener('click', () => {
        paused = !paused;
        if (!paused) {
          incoming.push(...pending.splice(0, pending.length));
          pausedCount = 0;
          if (flushTimer) clearTimeout(flushTimer);
          const box = $('trace');
          if (box) box.scrollTop = box.scrollHeight;
          flush();
        }
        updateCount();
      });
    }
    const c = $('trace-clear');
    if (c) {
      c.addEventListener('click', () => {
        rows.length = 0;
        incoming.length = 0;
        pending.length = 0;
        pausedCount = 0;
        points.length = 0;
        const box = $('trace');
        if (box) box.replaceChildren();
        updateCount();
        scheduleDraw();
      });
    }
  }

  // latency chart
  const points = []; // {t (ms), us, cls, slot}
  let drawScheduled = false;
  let lastDraw = 0;
  let colors = null;

  function chartAdd(d) {
    const us = Number(d.micros);
    if (!Number.isFinite(us)) return;
    let t = Number(d.seconds) * 1000 + (Number(d.microseconds) || 0) / 1000;
    if (!Number.isFinite(t)) t = Date.now();
    points.push({ t, us: Math.max(0, us), cls: swClass(d.sw), slot: str(d.slot) });
    if (points.length > MAX_ROWS) points.splice(0, points.length - MAX_ROWS);
    scheduleDraw();
  }

  function scheduleDraw() {
    if (drawScheduled) return;
    drawScheduled = true;
    const wait = Math.max(0, 250 - (performance.now() - lastDraw));
    setTimeout(() => requestAnimationFrame(draw), wait);
  }

  function cssColor(name, fallback) {
    try {
      const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
      return v || fallback;
    } catch (e) {
      return fallback;
    }
  }

  function fmtAxis(us) {
    if (us >= 1e6) return `${us / 1e6} s`;
    if (us >= 1e3) return `${us / 1e3} ms`;
    return `${us} µs`;
  }

  function fmtClock(ms) {
    const t = new Date(ms);
    return `${pad(t.getHours(), 2)}:${pad(t.getMinutes(), 2)}:${pad(t.getSeconds(), 2)}`;
  }

  function draw() {
    drawScheduled = false;
    lastDraw = performance.now();
    const cv = $('latency');
    if (!cv || !cv.getContext) return;
    const ctx = cv.getContext('2d');
    if (!ctx) return;
    if (!colors) {
      colors = {
        ok: cssColor('--ok', '#1a7f37'),
        warn: cssColor('--warn', '#9a6700'),
        err: cssColor('--err', '#cf222e'),
        unknown: cssColor('--muted', '#656d76'),
        grid: '#e4e8ec',
        text: cssColor('--muted', '#656d76'),
      };
    }
    const w = cv.clientWidth || cv.width;
    const h = cv.clientHeight || cv.height;
    if (!w || !h) return;
    const dpr = window.devicePixelRatio || 1;
    const pw = Math.round(w * dpr);
    const ph = Math.round(h * dpr);
    if (cv.width !== pw || cv.height !== ph) {
      cv.width = pw;
      cv.height = ph;
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = '11px system-ui, sans-serif';
    ctx.textBaseline = 'middle';

    const pts = [];
    for (let i = points.length - 1; i >= 0 && pts.length < CHART_N; i--) {
      if (readerMatches(points[i].slot, filterReader)) pts.push(points[i]);
    }
    pts.reverse();

    const L = 62, R = 12, T = 10, B = 22;
    const cw = w - L - R;
    const ch = h - T - B;
    if (cw <= 10 || ch <= 10) return;

    let max = 1;
    let min = Infinity;
    for (const p of pts) {
      if (p.us > max) max = p.us;
      if (p.us < min) min = p.us;
    }
    let lo = Math.floor(Math.log10(Math.max(1, Number.isFinite(min) ? min : 1)));
    let hi = Math.ceil(Math.log10(Math.max(10, max)));
    if (hi <= lo) hi = lo + 1;
    const y = (us) => T + ch - ((Math.log10(Math.max(us, 1)) - lo) / (hi - lo)) * ch;

    // Grid and y labels, one per power of ten.
    ctx.strokeStyle = colors.grid;
    ctx.fillStyle = colors.text;
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    for (let k = lo; k <= hi; k++) {
      const yy = Math.round(y(10 ** k)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(L, yy);
      ctx.lineTo(L + cw, yy);
      ctx.stroke();
      ctx.fillText(fmtAxis(10 ** k), L - 6, yy);
    }
    // Axis title.
    ctx.save();
    ctx.translate(11, T + ch / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = 'center';
    ctx.fillText('latency (log)', 0, 0);
    ctx.restore();

    if (!pts.length) {
      ctx.textAlign = 'center';
      ctx.fillText('No exchanges yet.', L + cw / 2, T + ch / 2);
      return;
    }

    const t0 = pts[0].t;
    const t1 = pts[pts.length - 1].t;
    const span = t1 - t0;
    const x = span > 0
      ? (p) => L + ((p.t - t0) / span) * cw
      : (p, i) => L + (pts.length > 1 ? (i / (pts.length - 1)) * cw : cw / 2);

    // x labels: the first and last exchange's time.
    ctx.textBaseline = 'alphabetic';
    ctx.textAlign = 'left';
    ctx.fillText(fmtClock(t0), L, h - 6);
    ctx.textAlign = 'right';
    ctx.fillText(`${fmtClock(t1)} · ${pts.length} exchanges`, L + cw, h - 6);

    const base = T + ch;
    pts.forEach((p, i) => {
      const xx = x(p, i);
      const yy = y(p.us);
      ctx.fillStyle = colors[p.cls] || colors.unknown;
      ctx.globalAlpha = 0.25;
      ctx.fillRect(xx - 0.5, yy, 1, base - yy);
      ctx.globalAlpha = 1;
      ctx.fillRect(xx - 2, yy - 2, 4, 4);
    });
  }

  // event stream
  let source = null;
  let retryTimer = 0;
  let retryDelay = 2000;

  function connect() {
    retryTimer = 0;
    if (!token || typeof EventSource === 'undefined') return;
    let es;
    try {
      es = new EventSource('/api/events?token=' + encodeURIComponent(token));
    } catch (e) {
      setConn('closed', 'disconnected');
      return;
    }
    source = es;
    setConn('connecting', 'connecting…');
    es.addEventListener('open', () => {
      retryDelay = 2000;
      setConn('live', 'live');
    });
    es.addEventListener('error', () => {
      if (source !== es) return;
      if (es.readyState === 2) {
        // Closed for good (the server refused): a token the service no longer takes (it
        // restarted, with a new one) ends the page; anything else, try again later.
        es.close();
        source = null;
        fetch('/api/state', { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' })
          .then((res) => {
            if (res.status === 403) {
              setConn('closed', 'token expired');
              showMessage('The service no longer takes this page\'s token (it restarted?): ' +
                'open the new URL that `vccid ctl console-url` prints.');
              return;
            }
            setConn('closed', 'disconnected, retrying…');
            if (!retryTimer) retryTimer = setTimeout(connect, retryDelay);
            retryDelay = Math.min(retryDelay * 2, 30000);
          })
          .catch(() => {
            setConn('closed', 'disconnected, retrying…');
            if (!retryTimer) retryTimer = setTimeout(connect, retryDelay);
            retryDelay = Math.min(retryDelay * 2, 30000);
          });
      } else {
        setConn('reconnecting', 'reconnecting…');
      }
    });
    es.addEventListener('state', (ev) => {
      let s;
      try {
        s = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      try {
        render(s);
      } catch (e) {
        showMessage('Cannot show the state: ' + errText(e));
      }
    });
    es.addEventListener('apdu', onApdu);
  }

  // start
  function start() {
    wireActions();
    wireTrace();
    updateCount();
    window.addEventListener('resize', scheduleDraw);
    window.addEventListener('pagehide', () => {
      if (source) source.close();
      source = null;
      if (retryTimer) clearTimeout(retryTimer);
    });
    scheduleDraw();
    if (!token) {
      setConn('closed', 'no token');
      showMessage('No access token in the address: open the URL that vccid serve printed (vccid ctl console-url).');
      for (const id of ['readers-body', 'cards-body']) {
        const tb = $(id);
        if (tb) emptyRow(tb, 8, 'Not connected.');
      }
      return;
    }
    refresh();
    connect();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
