'use strict';
const TOKEN = 'oht-agent-token';
const $ = (id) => document.getElementById(id);
let timer = null;

function token() { return sessionStorage.getItem(TOKEN); }

async function api(method, path, body) {
  const headers = {'Accept': 'application/json'};
  const t = token();
  if (t) headers['Authorization'] = 'Bearer ' + t;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.status === 401) { showLogin(); }
  return {status: res.status, data};
}

function showLogin() {
  sessionStorage.removeItem(TOKEN);
  if (timer) { clearInterval(timer); timer = null; }
  $('panel').hidden = true; $('logout').hidden = true; $('login').hidden = false; $('who').textContent = '';
}

function showPanel(role) {
  $('login').hidden = true; $('panel').hidden = false; $('logout').hidden = false;
  $('who').textContent = role || '';
  refresh();
  if (!timer) timer = setInterval(refresh, 1000);
}

function cell(row, text) { const td = document.createElement('td'); td.textContent = String(text); row.appendChild(td); }

async function refresh() {
  const r = await api('GET', '/api/v1/status');
  if (r.status !== 200 || !r.data) return;
  const s = r.data;
  $('state').textContent = s.state || '-';
  const v = s.verdict || {};
  $('verdict').textContent = v.level ? ('safety: ' + v.level) : '';
  const faults = $('faults'); faults.replaceChildren();
  for (const f of (v.faults || [])) {
    const li = document.createElement('li');
    li.textContent = (f.code || '') + ': ' + (f.message || '') + (f.hint ? ' (' + f.hint + ')' : '');
    faults.appendChild(li);
  }
  const body = $('modules'); body.replaceChildren();
  for (const [role, m] of Object.entries(s.modules || {})) {
    const tr = document.createElement('tr');
    cell(tr, role); cell(tr, m.address ?? ''); cell(tr, m.profile ?? ''); cell(tr, m.online ?? ''); cell(tr, m.quality ?? '');
    body.appendChild(tr);
  }
  $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
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
  $('estop').addEventListener('click', async () => {
    const r = await api('POST', '/api/v1/estop', {reason: 'status page'});
    $('estop-result').textContent = r.status === 200 ? 'E-stop confirmed' : ('E-stop NOT confirmed: ' + ((r.data && r.data.message) || r.status));
  });
  if (token()) {
    const me = await api('GET', '/api/v1/auth/me');
    if (me.status === 200) { showPanel(me.data.role); return; }
  }
  showLogin();
});
