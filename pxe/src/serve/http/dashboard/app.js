// ironseed dashboard. Plain JS, no dependencies, served by pxe (docs/dashboard.md).
// Rules: everything that came from the network goes into the page with textContent (never
// parsed as HTML: pxe/tests/dashboard.rs checks); the API token lives in sessionStorage and
// travels only in the Authorization header (the event stream is read with fetch(): the
// browser's built-in SSE client cannot set headers, and a token in the URL ends up in logs).
'use strict';

const TOKEN_KEY = 'ironseed-api-token';
const PAGE_SIZE = 100;
const ROLE_ORDER = { server: 0, agent: 1, nfs: 2 };
const ROLE_TITLE = { server: 'servers', agent: 'agents', nfs: 'NFS' };
// A symbol and the state's name beside every colour: the state never relies on colour alone.
const STATE_ICON = {
  disarmed: '○', armed: '◎', booting: '↻', installing: '⇣', installed: '✓', booted: '●',
  failed: '✗',
};
// Silence after which the stream counts as dead (pxe sends a heartbeat every 15 s).
const STREAM_STALL_MS = 40000;

const $ = (id) => document.getElementById(id);
const nodes = new Map();  // hostname -> node view (from the API)
const rates = new Map();  // hostname -> {t, bytes, rate}
let page = 0;
let filter = '';
let detailHost = null;
let stream = null;       // AbortController of the running stream
let renderQueued = false;
let dirtyRows = new Set();
let pageHosts = [];
let rowEls = new Map();  // hostname -> <tr> on the current page
// Figures the browser tests read (time to first render, updates applied).
window.ironseed = { firstRenderMs: null, tokenAt: null, updates: 0, connected: false, streams: 0 };

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: 'Bearer ' + token() }, opts.headers || {});
  const r = await fetch('/api/v1' + path, Object.assign({}, opts, { headers, cache: 'no-store' }));
  if (r.status === 401) { loggedOut('the token was refused'); throw new Error('unauthorized'); }
  return r;
}

function bytes(n) {
  if (!n) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + ' ' + u[i];
}

function ago(ms) {
  if (!ms) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 16);
}

function duration(s) {
  if (!isFinite(s) || s < 0) return '—';
  s = Math.round(s);
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.round((s % 3600) / 60) + ' min';
}

// ---------- login ----------

function loggedOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (stream) stream.abort();
  stream = null;
  $('main').hidden = true;
  $('detail').hidden = true;
  $('forget').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = why || '';
  setConn('off', 'not connected');
  $('token').focus();
}

function loggedIn() {
  $('login').hidden = true;
  $('main').hidden = false;
  $('forget').hidden = false;
  connect();
}

$('login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('token').value.trim();
  if (!t) return;
  $('token').value = '';
  sessionStorage.setItem(TOKEN_KEY, t);
  window.ironseed.tokenAt = performance.now();
  loggedIn();
});
$('forget').addEventListener('click', () => loggedOut(''));

// ---------- the event stream ----------

function setConn(kind, text) {
  const c = $('conn');
  c.className = 'conn conn-' + kind;
  c.textContent = (kind === 'live' ? '● ' : kind === 'wait' ? '↻ ' : '○ ') + text;
  window.ironseed.connected = kind === 'live';
}

async function connect() {
  if (stream) stream.abort();
  const ctrl = new AbortController();
  stream = ctrl;
  let delay = 500;
  while (stream === ctrl && token()) {
    try {
      await readStream(ctrl);
      delay = 500;
    } catch (e) {
      if (stream !== ctrl || e.message === 'unauthorized') return;
    }
    if (stream !== ctrl) return;
    setConn('wait', 'reconnecting…');
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

async function readStream(ctrl) {
  const r = await api('/events/stream', { signal: ctrl.signal });
  if (!r.ok) throw new Error('stream: HTTP ' + r.status);
  window.ironseed.streams++;
  setConn('live', 'live');
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  let stall = null;
  const arm = () => {
    clearTimeout(stall);
    stall = setTimeout(() => ctrl.abort(), STREAM_STALL_MS);
  };
  arm();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      arm();
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        onFrame(block);
      }
      // A frame larger than this is not from pxe: drop the stream rather than grow.
      if (buf.length > 8 << 20) throw new Error('oversized frame');
    }
  } finally {
    clearTimeout(stall);
  }
}

function onFrame(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    if (line.startsWith('event: ')) event = line.slice(7);
    else if (line.startsWith('data: ')) data.push(line.slice(6));
  }
  if (!data.length) return;
  const v = JSON.parse(data.join('\n'));
  if (event === 'snapshot') {
    nodes.clear();
    for (const n of v.nodes) { nodes.set(n.hostname, n); sample(n); }
    $('cluster').textContent = v.cluster ? '· ' + v.cluster : '';
    hasTopology = v.topology === true;
    // A reloaded bundle brings its own picture.
    if (v.bundle !== bundleId) { bundleId = v.bundle; topologyLoaded = false; }
    if (!hasTopology) {
      topologyLoaded = false;
      $('topology').replaceChildren();
      $('topology-note').textContent = 'This bundle has no topology.svg (render it with a newer builder).';
    } else if (!topologyLoaded) loadTopology();
    renderPage();
    colourTopology();
    if (window.ironseed.firstRenderMs === null && window.ironseed.tokenAt !== null) {
      window.ironseed.firstRenderMs = performance.now() - window.ironseed.tokenAt;
    }
  } else if (event === 'node') {
    nodes.set(v.hostname, v);
    sample(v);
    dirtyRows.add(v.hostname);
    queueRender();
    if (detailHost === v.hostname) loadDetail(v.hostname);
  }
  window.ironseed.updates++;
}

// Install rate from successive byte counts (smoothed), for the rate and ETA.
function sample(n) {
  const now = Date.now();
  const prev = rates.get(n.hostname);
  if (n.state !== 'installing') { rates.delete(n.hostname); return; }
  if (!prev || n.bytes_written < prev.bytes) {
    rates.set(n.hostname, { t: now, bytes: n.bytes_written, rate: null });
    return;
  }
  const dt = (now - prev.t) / 1000;
  if (dt <= 0.2) return;
  const r = (n.bytes_written - prev.bytes) / dt;
  rates.set(n.hostname, { t: now, bytes: n.bytes_written, rate: prev.rate === null ? r : prev.rate * 0.7 + r * 0.3 });
}

// ---------- the node table (paged: a 1,000-node bundle keeps 100 rows in the DOM) ----------

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    for (const h of dirtyRows) {
      const tr = rowEls.get(h);
      if (tr) fillRow(tr, nodes.get(h));
    }
    const changedSet = matches(dirtyRows);
    dirtyRows = new Set();
    if (changedSet) renderPage(); else renderSummary();
    // Once per frame, however many events arrived: the picture has a group per node.
    colourTopology();
  });
}

// Whether a change moves a node in or out of the filtered page (then the page is redrawn).
function matches(hosts) {
  if (!filter) return false;
  for (const h of hosts) {
    const n = nodes.get(h);
    if (n && rowEls.has(h) !== matchesFilter(n)) return true;
  }
  return false;
}

function matchesFilter(n) {
  if (!filter) return true;
  const hay = [n.hostname, n.state, n.ip, n.mac, n.role, n.profile].join(' ').toLowerCase();
  return hay.includes(filter);
}

function sorted() {
  return [...nodes.values()].filter(matchesFilter).sort((a, b) =>
    (ROLE_ORDER[a.role] ?? 9) - (ROLE_ORDER[b.role] ?? 9) || a.hostname.localeCompare(b.hostname));
}

function renderSummary() {
  const counts = {};
  for (const n of nodes.values()) counts[n.state] = (counts[n.state] || 0) + 1;
  $('summary').textContent = nodes.size + ' nodes · ' +
    Object.keys(counts).sort().map((s) => (STATE_ICON[s] || '') + ' ' + s + ' ' + counts[s]).join(' · ');
  document.body.dataset.nodes = String(nodes.size);
}

function renderPage() {
  const list = sorted();
  const pages = Math.max(1, Math.ceil(list.length / PAGE_SIZE));
  page = Math.min(page, pages - 1);
  const slice = list.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
  const tbody = $('rows');
  const frag = document.createDocumentFragment();
  rowEls = new Map();
  let role = null;
  for (const n of slice) {
    if (n.role !== role) {
      role = n.role;
      const count = list.filter((x) => x.role === role).length;
      const tr = el('tr', null, 'group');
      const th = el('th', (ROLE_TITLE[role] || role || 'other') + ' (' + count + ')');
      th.colSpan = 10;
      tr.append(th);
      frag.append(tr);
    }
    const tr = newRow(n.hostname);
    fillRow(tr, n);
    rowEls.set(n.hostname, tr);
    frag.append(tr);
  }
  tbody.replaceChildren(frag);
  pageHosts = slice.map((n) => n.hostname);
  $('page').textContent = 'page ' + (page + 1) + ' / ' + pages;
  $('prev').disabled = page === 0;
  $('next').disabled = page >= pages - 1;
  renderSummary();
}

function newRow(host) {
  const tr = el('tr', null, 'node');
  tr.dataset.node = host;
  const name = el('button', host, 'link');
  name.type = 'button';
  name.addEventListener('click', () => openDetail(host));
  const td = el('td');
  td.append(name);
  tr.append(td);
  for (const k of ['role', 'profile', 'mac', 'ip', 'state', 'progress', 'installs', 'last', 'error']) {
    const c = el('td', null, 'c-' + k);
    tr.append(c);
  }
  const bar = document.createElement('progress');
  bar.max = 1;
  bar.value = 0;
  const label = el('span', '', 'plabel');
  tr.querySelector('.c-progress').append(bar, label);
  return tr;
}

function fillRow(tr, n) {
  const cell = (k) => tr.querySelector('.c-' + k);
  cell('role').textContent = n.role || '—';
  cell('profile').textContent = n.profile || '—';
  cell('mac').textContent = n.mac || '—';
  cell('ip').textContent = n.ip || '—';
  const st = cell('state');
  st.replaceChildren(badge(n.state));
  tr.dataset.state = n.state;
  const bar = tr.querySelector('progress');
  const label = tr.querySelector('.plabel');
  const total = n.bytes_total || 0;
  if (total > 0 && ['installing', 'installed', 'booted', 'failed'].includes(n.state)) {
    bar.max = total;
    bar.value = Math.min(n.bytes_written, total);
    bar.hidden = false;
    let t = bytes(n.bytes_written) + ' / ' + bytes(total);
    const r = rates.get(n.hostname);
    if (n.state === 'installing' && r && r.rate > 0) {
      t += ' · ' + bytes(r.rate) + '/s · ETA ' + duration((total - n.bytes_written) / r.rate);
    }
    label.textContent = t;
  } else {
    bar.hidden = true;
    label.textContent = '';
  }
  tr.dataset.written = String(n.bytes_written || 0);
  cell('installs').textContent = String(n.installs ?? 0);
  const last = cell('last');
  last.textContent = ago(n.last_event_ms);
  last.title = n.last_event_ms ? new Date(n.last_event_ms).toISOString() : '';
  cell('error').textContent = n.last_error || '';
}

function badge(state) {
  const b = el('span', (STATE_ICON[state] || '?') + ' ' + state, 'badge st-' + state);
  return b;
}

$('filter').addEventListener('input', () => {
  filter = $('filter').value.trim().toLowerCase();
  page = 0;
  renderPage();
});
$('prev').addEventListener('click', () => { page = Math.max(0, page - 1); renderPage(); });
$('next').addEventListener('click', () => { page++; renderPage(); });
// "last event" ages without events.
setInterval(() => {
  for (const h of pageHosts) {
    const tr = rowEls.get(h);
    const n = nodes.get(h);
    if (tr && n) tr.querySelector('.c-last').textContent = ago(n.last_event_ms);
  }
}, 10000);

// ---------- tabs ----------

for (const b of document.querySelectorAll('.tab')) {
  b.addEventListener('click', () => {
    for (const o of document.querySelectorAll('.tab')) o.classList.toggle('active', o === b);
    for (const p of document.querySelectorAll('.tabpane')) p.hidden = p.id !== 'tab-' + b.dataset.tab;
    if (b.dataset.tab === 'discovered') loadDiscovered();
    if (b.dataset.tab === 'topology') loadTopology();
  });
}

// ---------- detail view ----------

function openDetail(host) {
  detailHost = host;
  $('detail').hidden = false;
  $('d-error').textContent = '';
  loadDetail(host);
}

$('d-close').addEventListener('click', () => { detailHost = null; $('detail').hidden = true; });

let detailSeq = 0;
async function loadDetail(host) {
  const seq = ++detailSeq;
  let n;
  try {
    const r = await api('/nodes/' + encodeURIComponent(host));
    if (!r.ok) { $('d-error').textContent = 'HTTP ' + r.status; return; }
    n = await r.json();
  } catch (e) { return; }
  if (seq !== detailSeq || detailHost !== host) return;
  $('d-host').textContent = host;
  const tl = n.timeline || [];
  const lastOf = (ev, prefix) => {
    for (let i = tl.length - 1; i >= 0; i--) {
      if (tl[i].event === ev && (!prefix || (tl[i].detail || '').startsWith(prefix))) return tl[i];
    }
    return null;
  };
  const disk = lastOf('installing');
  const phone = lastOf('note', 'phone-home');
  const k3s = lastOf('note', 'k3s-config');
  const p = n.last_power;
  const facts = [
    ['state', null, badge(n.state)],
    ['role · profile', (n.role || '—') + ' · ' + (n.profile || '—')],
    ['MAC · IP', (n.mac || '—') + ' · ' + (n.ip || '—')],
    ['install disk (installer)', disk ? disk.detail : '—'],
    ['image sha256', n.installed_sha256 || '—'],
    ['installs', String(n.installs)],
    ['install window', n.install_secret ? 'open until ' + new Date(n.install_window_ends_ms).toLocaleString() : 'closed (not armed)'],
    ['first boot', phone ? phone.detail.replace(/^phone-home: /, '') : '—'],
    ['k3s config', k3s ? k3s.detail.replace(/^k3s-config: /, '') : '—'],
    ['power', p ? p.action + ': ' + p.result + ' (' + ago(p.at_ms) + ')' : 'unknown'],
    ['last error', n.last_error || '—'],
  ];
  const dl = $('d-facts');
  dl.replaceChildren();
  for (const [k, v, node] of facts) {
    const dd = el('dd');
    if (node) dd.append(node); else dd.textContent = v;
    dl.append(el('dt', k), dd);
  }
  const rows = document.createDocumentFragment();
  for (let i = tl.length - 1; i >= 0; i--) {
    const tr = el('tr');
    tr.append(el('td', new Date(tl[i].at_ms).toISOString().replace('T', ' ').slice(0, 19)),
      el('td', tl[i].event), el('td', tl[i].detail || ''));
    rows.append(tr);
  }
  $('d-timeline').tBodies[0].replaceChildren(rows);
}

function confirmAction(text, ok) {
  return new Promise((resolve) => {
    const d = $('confirm');
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = ok;
    const done = (v) => () => { d.close(); resolve(v); };
    $('confirm-ok').onclick = done(true);
    $('confirm-cancel').onclick = done(false);
    d.showModal();
  });
}

async function action(what) {
  const host = detailHost;
  if (!host) return;
  const text = what === 'arm'
    ? 'Arm ' + host + ' for reinstall? At its next PXE boot the installer ERASES its install disk ' +
      'and writes the OS image again; everything on that disk is lost. The install secret lives ' +
      'for the install window.'
    : 'Disarm ' + host + '? It boots its local disk at its next PXE boot; its disk is not ' +
      'touched, and a live install secret dies.';
  if (!(await confirmAction(text, what + ' ' + host))) return;
  try {
    const r = await api('/nodes/' + encodeURIComponent(host) + '/' + what, { method: 'POST' });
    $('d-error').textContent = r.ok ? '' : (await r.text());
  } catch (e) {
    $('d-error').textContent = String(e.message);
  }
  loadDetail(host);
}
$('d-arm').addEventListener('click', () => action('arm'));
$('d-disarm').addEventListener('click', () => action('disarm'));

// ---------- discovered machines ----------

async function loadDiscovered() {
  let list;
  try {
    const r = await api('/discovered');
    if (!r.ok) return;
    list = (await r.json()).machines;
  } catch (e) { return; }
  const frag = document.createDocumentFragment();
  for (const m of list) {
    const tr = el('tr');
    const f = m.facts;
    const facts = el('td');
    if (f) {
      const d = el('details');
      const dmi = f.dmi || {};
      d.append(el('summary', [dmi.sys_vendor, dmi.product_name].filter(Boolean).join(' ') +
        ' · ' + (f.disks || []).length + ' disks · ' + (f.nics || []).length + ' NICs · ' +
        bytes(f.memory_bytes)));
      d.append(el('pre', JSON.stringify(f, null, 2)));
      facts.append(d);
    } else facts.textContent = '—';
    const boot = m.arch === 0 ? 'BIOS' : m.arch === null || m.arch === undefined ? '?' : 'UEFI (' + m.arch + ')';
    tr.append(el('td', m.mac), el('td', boot), el('td', m.vendor_class || '—'), el('td', String(m.count)),
      el('td', ago(m.last_seen_ms)), el('td', m.inspect ? 'armed' : '—'), facts);
    frag.append(tr);
  }
  $('disc-rows').replaceChildren(frag);
}
setInterval(() => { if (!$('tab-discovered').hidden && token()) loadDiscovered(); }, 10000);

// ---------- topology ----------

// The picture comes from the bundle (builder render); it is parsed as XML and stripped of
// anything active before it joins the page. The CSP is the real guard: an event handler or
// inline style left in the file is blocked (and reported) when it is parsed.
function sanitizeSvg(svg) {
  const bad = new Set(['script', 'foreignobject', 'iframe', 'style', 'object', 'embed']);
  const walk = (e) => {
    for (const c of [...e.children]) {
      if (bad.has(c.localName.toLowerCase())) { c.remove(); continue; }
      for (const a of [...c.attributes]) {
        const n = a.name.toLowerCase();
        if (n.startsWith('on') || n === 'style' ||
            ((n === 'href' || n === 'xlink:href') && !a.value.startsWith('#'))) {
          c.removeAttribute(a.name);
        }
      }
      walk(c);
    }
  };
  for (const a of [...svg.attributes]) {
    if (a.name.toLowerCase().startsWith('on') || a.name === 'style') svg.removeAttribute(a.name);
  }
  walk(svg);
  return svg;
}

let topologyLoaded = false;
let topologyLoading = false;
let hasTopology = false;
let bundleId = null;
async function loadTopology() {
  if (topologyLoaded || topologyLoading || !hasTopology) return;
  topologyLoading = true;
  try { await fetchTopology(); } finally { topologyLoading = false; }
}

async function fetchTopology() {
  let r;
  try { r = await api('/topology.svg'); } catch (e) { return; }
  if (r.status === 404) {
    $('topology-note').textContent = 'This bundle has no topology.svg (render it with a newer builder).';
    return;
  }
  if (!r.ok) return;
  // The picture's own <style> goes before parsing: the page's policy allows no inline style
  // (parsing it would already be reported as a violation); app.css styles its classes.
  const text = (await r.text()).replace(/<style[\s\S]*?<\/style>/gi, '');
  const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
  const svg = doc.documentElement;
  if (svg.localName !== 'svg' || doc.querySelector('parsererror')) {
    $('topology-note').textContent = 'topology.svg is not valid SVG.';
    return;
  }
  $('topology').replaceChildren(document.importNode(sanitizeSvg(svg), true));
  $('topology-note').textContent = 'Node colours follow the live state.';
  topologyLoaded = true;
  colourTopology();
}

function colourTopology() {
  if (!topologyLoaded) return;
  for (const g of $('topology').querySelectorAll('g.node[data-node]')) {
    const n = nodes.get(g.dataset.node);
    const st = n ? n.state : 'unknown';
    if (g.dataset.state === st) continue;
    for (const c of [...g.classList]) if (c.startsWith('st-')) g.classList.remove(c);
    g.classList.add('st-' + st);
    g.dataset.state = st;
    let t = g.querySelector(':scope > title');
    if (!t) { t = document.createElementNS('http://www.w3.org/2000/svg', 'title'); g.prepend(t); }
    t.textContent = g.dataset.node + ': ' + st;
  }
}

// ---------- start ----------

if (token()) loggedIn(); else loggedOut('');
