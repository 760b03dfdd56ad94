'use strict';
// The technician's page. State, verdict and faults come through the authenticated stream
// (snapshot, then per-key changes); while it is down the page polls /api/v1/status instead and
// says so. Module values come through the stream too (a "values" message every second); while it
// is down they are read from /api/v1/modules/{role} every second. Each value's age is the agent's
// own plus the time since the page received it.
// Everything is rendered with textContent, never as HTML.
const TOKEN = 'oht-agent-token';
const ROLES = ['viewer', 'operator', 'technician', 'admin'];
const PLOT_S = 180; // the plot's time span
const SPEED_MAX = 100; // %, M1_ACTUAL_SPEED's range
const POSITION_MAX = 300; // cm, M1_POSITION_CURRENT's range
const STREAM_RETRY_MS = 5000;
// [label, module role, register]: what the live panel shows.
const VALUES = [
  ['travel speed', 'travel', 'M1_ACTUAL_SPEED'],
  ['travel position', 'travel', 'M1_POSITION_CURRENT'],
  ['battery charge', 'power', 'BATTERY_SOC'],
  ['battery voltage', 'power', 'BATTERY_VOLTAGE'],
  ['obstacle 1', 'safety', 'ANALOG_INPUT_1'],
  ['obstacle 2', 'safety', 'ANALOG_INPUT_2'],
  ['obstacle 3', 'safety', 'ANALOG_INPUT_3'],
  ['obstacle 4', 'safety', 'ANALOG_INPUT_4'],
];
const $ = (id) => document.getElementById(id);

const page = {
  role: '',
  status: null,
  ws: null,
  streaming: false,
  retry: null,
  timer: null,
  ticks: 0,
  modules: {}, // role -> {view, at} | {missing: reason}
  history: [], // {t, speed, position}
};

function token() { return sessionStorage.getItem(TOKEN); }

async function api(method, path, body) {
  const headers = {'Accept': 'application/json'};
  const t = token();
  if (t) headers['Authorization'] = 'Bearer ' + t;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (e) {
    return {status: 0, data: {code: 'NETWORK', message: 'the agent did not answer', hint: 'Check the network.'}};
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.status === 401 && token()) { showLogin(); }
  return {status: res.status, data};
}

// An error answer as the technician needs it: code, message, hint.
function describe(r) {
  const d = r.data || {};
  const code = d.code || ('HTTP ' + r.status);
  return code + ': ' + (d.message || '') + (d.hint ? ' - ' + d.hint : '');
}

// A command's result in one short line: its plain top-level values (read-backs stay in the API).
function summary(result) {
  if (typeof result !== 'object') return String(result);
  const parts = [];
  for (const [key, value] of Object.entries(result)) {
    if (value === null || typeof value !== 'object') parts.push(key + ' ' + value);
  }
  return parts.join(', ').slice(0, 160);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function cell(row, text, cls) { row.appendChild(el('td', text, cls)); }

// ------------------------------------------------------------------ login

function showLogin() {
  sessionStorage.removeItem(TOKEN);
  stopUpdates();
  page.status = null;
  $('panel').hidden = true; $('logout').hidden = true; $('login').hidden = false; $('who').textContent = '';
}

function showPanel(role) {
  page.role = role || '';
  $('login').hidden = true; $('panel').hidden = false; $('logout').hidden = false;
  $('who').textContent = page.role;
  $('reset').hidden = ROLES.indexOf(page.role) < ROLES.indexOf('technician');
  startUpdates();
}

function startUpdates() {
  if (page.timer) return;
  page.ticks = 0;
  tick();
  page.timer = setInterval(tick, 1000);
  openStream();
}

function stopUpdates() {
  if (page.timer) { clearInterval(page.timer); page.timer = null; }
  if (page.retry) { clearTimeout(page.retry); page.retry = null; }
  const ws = page.ws;
  page.ws = null;
  page.streaming = false;
  if (ws) ws.close();
}

// ------------------------------------------------------------------ the stream

async function openStream() {
  if (page.ws || !token()) return;
  const r = await api('POST', '/api/v1/stream/ticket');
  if (!page.timer) return; // logged out meanwhile
  if (r.status !== 200 || !r.data) { streamDown('no ticket: ' + describe(r)); return; }
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  const ws = new WebSocket(scheme + location.host + '/api/v1/stream?ticket=' + encodeURIComponent(r.data.ticket));
  page.ws = ws;
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (msg.type === 'snapshot') {
      page.status = msg.status;
      page.streaming = true;
      showLink();
    } else if (msg.type === 'values') {
      const at = performance.now();
      for (const [role, values] of Object.entries(msg.modules || {})) page.modules[role] = {view: {values}, at};
      recordHistory();
      renderValues();
      drawPlot();
      return;
    } else if (msg.type === 'change' && page.status) {
      for (const [key, value] of Object.entries(msg.changes || {})) {
        if (value === null) delete page.status[key]; else page.status[key] = value;
      }
    }
    renderStatus();
  };
  ws.onclose = (ev) => {
    if (page.ws !== ws) return; // closed on purpose
    page.ws = null;
    streamDown('closed (' + ev.code + (ev.reason ? ' ' + ev.reason : '') + ')');
  };
}

function streamDown(why) {
  page.streaming = false;
  showLink(why);
  if (page.timer && !page.retry) {
    page.retry = setTimeout(() => { page.retry = null; openStream(); }, STREAM_RETRY_MS);
  }
}

function showLink(why) {
  const p = $('link');
  if (page.streaming) {
    p.textContent = 'live: status and values through the stream';
    p.className = 'muted';
  } else {
    p.textContent = 'stream dropped' + (why ? ' - ' + why : '') + ': polling every second, retrying the stream';
    p.className = 'link-polling';
  }
}

// ------------------------------------------------------------------ polling

async function tick() {
  page.ticks += 1;
  const work = [];
  if (!page.streaming) work.push(refreshStatus(), refreshValues());
  if (page.ticks % 3 === 1) work.push(refreshCommands());
  if (page.ticks % 5 === 1) work.push(refreshUpstream());
  await Promise.all(work);
  $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
}

async function refreshStatus() {
  const r = await api('GET', '/api/v1/status');
  if (r.status !== 200 || !r.data) {
    if (r.status !== 401) $('verdict').textContent = 'status unavailable: ' + describe(r);
    return;
  }
  page.status = r.data;
  renderStatus();
}

async function refreshValues() {
  const roles = [...new Set(VALUES.map((v) => v[1]))];
  await Promise.all(roles.map(async (role) => {
    const r = await api('GET', '/api/v1/modules/' + role);
    page.modules[role] = r.status === 200 && r.data ? {view: r.data, at: performance.now()} : {missing: describe(r)};
  }));
  recordHistory();
  renderValues();
  drawPlot();
}

function recordHistory() {
  const travel = page.modules.travel && page.modules.travel.view;
  if (!travel) return;
  const speed = travel.values.M1_ACTUAL_SPEED, position = travel.values.M1_POSITION_CURRENT;
  const now = Date.now();
  page.history.push({t: now, speed: speed ? speed.value : null, position: position ? position.value : null});
  while (page.history.length && page.history[0].t < now - PLOT_S * 1000) page.history.shift();
}

async function refreshCommands() {
  const r = await api('GET', '/api/v1/commands?limit=8');
  if (r.status !== 200 || !Array.isArray(r.data)) return;
  const body = $('commands');
  body.replaceChildren();
  for (const c of r.data) {
    const tr = el('tr');
    cell(tr, (c.created_at || '').slice(11, 19)); // the time of day, UTC
    cell(tr, c.type);
    cell(tr, c.state);
    let result = '';
    if (c.error_code) result = c.error_code + (c.error_message ? ': ' + c.error_message : '');
    else if (c.result !== null && c.result !== undefined) result = summary(c.result);
    cell(tr, result);
    body.appendChild(tr);
  }
  if (!r.data.length) { const tr = el('tr'); tr.appendChild(el('td', 'no commands yet')); body.appendChild(tr); }
}

async function refreshUpstream() {
  const r = await api('GET', '/api/v1/upstream');
  const p = $('upstream'), list = $('upstream-streams');
  list.replaceChildren();
  if (r.status !== 200 || !r.data) { p.textContent = 'unknown: ' + describe(r); return; }
  const u = r.data;
  if (!u.enabled) { p.textContent = 'off: no broker in [upstream], or its setup failed (see the log)'; return; }
  const up = u.uplink || {};
  p.textContent = (up.connected ? 'connected' : 'NOT connected') + ' to the broker; published ' + up.published
    + ' (' + up.resent + ' resent, ' + up.publish_failures + ' failed); commands from the centre '
    + (u.commands ? 'taken' : 'off') + '; device key ' + u.device_key;
  for (const [name, s] of Object.entries(up.streams || {})) {
    list.appendChild(el('li', name + ': acknowledged ' + s.acked + ' of ' + s.last_seq + ', ' + s.in_flight + ' in flight'));
  }
}

// ------------------------------------------------------------------ rendering

function renderStatus() {
  const s = page.status;
  if (!s) return;
  $('agent').textContent = s.agent_id || '';
  const state = $('state');
  state.textContent = s.state || '-';
  state.className = ['IDLE', 'MOVE', 'DOCK', 'PAUSED'].includes(s.state) ? 'state-ok' : 'state-bad';
  const v = s.verdict || {};
  $('verdict').textContent = v.level ? ('safety: ' + v.level + (v.estop_input ? ', E-stop input active' : '')) : '';
  const faults = $('faults');
  faults.replaceChildren();
  for (const f of (v.faults || [])) {
    const li = el('li');
    li.appendChild(el('span', f.code, 'code'));
    li.appendChild(document.createTextNode(' ' + f.level + (f.latched ? ', latched' : '')
      + (f.cause_present ? ', cause present' : ', cause gone') + (f.detail ? ': ' + f.detail : '')));
    li.appendChild(el('span', f.hint || '', 'hint'));
    faults.appendChild(li);
  }
  $('no-faults').hidden = (v.faults || []).length > 0;
  const body = $('modules');
  body.replaceChildren();
  for (const [role, m] of Object.entries(s.modules || {})) {
    const tr = el('tr');
    cell(tr, role); cell(tr, m.address ?? ''); cell(tr, m.profile ?? ''); cell(tr, m.online ?? '');
    cell(tr, m.quality ?? '', m.quality === 'fresh' ? '' : 'stale');
    body.appendChild(tr);
  }
}

function renderValues() {
  const body = $('values');
  if (!body.children.length) {
    for (const [label, role, register] of VALUES) {
      const tr = el('tr');
      cell(tr, label);
      cell(tr, '-'); tr.lastChild.id = 'v-' + role + '-' + register;
      cell(tr, '-'); tr.lastChild.id = 'a-' + role + '-' + register;
      body.appendChild(tr);
    }
  }
  const now = performance.now();
  for (const [, role, register] of VALUES) {
    const valueCell = $('v-' + role + '-' + register), ageCell = $('a-' + role + '-' + register);
    const m = page.modules[role];
    const reading = m && m.view ? m.view.values[register] : undefined;
    if (!reading) {
      valueCell.textContent = m && m.missing ? 'unavailable' : '-';
      ageCell.textContent = m && m.missing ? m.missing : '';
      valueCell.className = ageCell.className = 'stale';
      continue;
    }
    valueCell.textContent = reading.value + (reading.unit ? ' ' + reading.unit : '');
    const age = (reading.age_ms + (now - m.at)) / 1000;
    ageCell.textContent = age.toFixed(1) + ' s' + (reading.quality === 'fresh' ? '' : ' (' + reading.quality + ')');
    valueCell.className = ageCell.className = reading.quality === 'fresh' ? '' : 'stale';
  }
}

function drawPlot() {
  const canvas = $('plot');
  const ctx = canvas.getContext('2d');
  const w = canvas.width, h = canvas.height, left = 34, right = 40, top = 8, bottom = 18;
  const pw = w - left - right, ph = h - top - bottom;
  ctx.clearRect(0, 0, w, h);
  ctx.font = '11px sans-serif';
  ctx.strokeStyle = '#ddd'; ctx.fillStyle = '#777'; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i += 1) {
    const y = top + ph * i / 4;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + pw, y); ctx.stroke();
    ctx.textAlign = 'right'; ctx.fillText(String(SPEED_MAX * (4 - i) / 4), left - 4, y + 4);
    ctx.textAlign = 'left'; ctx.fillText(String(POSITION_MAX * (4 - i) / 4), left + pw + 4, y + 4);
  }
  ctx.textAlign = 'center';
  ctx.fillText('-' + (PLOT_S / 60) + ' min', left + 20, h - 4);
  ctx.fillText('now', left + pw - 10, h - 4);
  const now = Date.now();
  const x = (t) => left + pw * (1 - (now - t) / (PLOT_S * 1000));
  const line = (key, max, colour) => {
    ctx.strokeStyle = colour; ctx.lineWidth = 2; ctx.beginPath();
    let drawing = false;
    for (const p of page.history) {
      if (p[key] === null) { drawing = false; continue; }
      const y = top + ph * (1 - Math.min(Math.max(p[key] / max, 0), 1));
      if (drawing) ctx.lineTo(x(p.t), y); else ctx.moveTo(x(p.t), y);
      drawing = true;
    }
    ctx.stroke();
  };
  line('speed', SPEED_MAX, '#06c');
  line('position', POSITION_MAX, '#c60');
}

// ------------------------------------------------------------------ actions

async function estop() {
  const out = $('estop-result');
  $('reset-result').textContent = '';
  out.textContent = 'E-stop requested...';
  const r = await api('POST', '/api/v1/estop', {reason: 'technician page'});
  out.textContent = r.status === 200
    ? 'E-stop confirmed on the bus' + (r.data && r.data.confirm_ms != null ? ' in ' + r.data.confirm_ms.toFixed(1) + ' ms' : '')
    : 'E-stop NOT confirmed: ' + describe(r) + ' Use the hardware E-stop.';
  out.className = r.status === 200 ? 'result' : 'result error';
  if (!page.streaming) await refreshStatus();
}

async function reset() {
  const out = $('reset-result');
  out.textContent = 'reset requested...';
  const r = await api('POST', '/api/v1/reset');
  if (r.status === 200 && r.data) {
    out.textContent = 'Reset: cleared ' + ((r.data.cleared || []).join(', ') || 'nothing') + '; state ' + r.data.state;
    out.className = 'result';
    $('estop-result').textContent = '';
  } else {
    out.textContent = 'Reset refused: ' + describe(r);
    out.className = 'result error';
  }
  if (!page.streaming) await refreshStatus();
  refreshCommands();
}

document.addEventListener('DOMContentLoaded', async () => {
  $('login').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('login-error').textContent = '';
    const r = await api('POST', '/api/v1/auth/login', {username: $('username').value, password: $('password').value});
    $('password').value = '';
    if (r.status === 200 && r.data && r.data.token) {
      sessionStorage.setItem(TOKEN, r.data.token);
      showPanel(r.data.role);
    } else {
      $('login-error').textContent = (r.data && r.data.message) || ('login failed (' + r.status + ')');
    }
  });
  $('logout').addEventListener('click', async () => { await api('POST', '/api/v1/auth/logout'); showLogin(); });
  $('estop').addEventListener('click', estop);
  $('reset').addEventListener('click', reset);
  if (token()) {
    const me = await api('GET', '/api/v1/auth/me');
    if (me.status === 200 && me.data) { showPanel(me.data.role); return; }
  }
  showLogin();
});
