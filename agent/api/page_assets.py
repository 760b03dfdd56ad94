"""The status page: static HTML, CSS and JS, kept as strings so they ship inside the package.

No inline script or style (the Content-Security-Policy forbids both), no secret in the page:
the script asks for a login, keeps the session token in `sessionStorage` (gone with the tab,
never a cookie), and renders every value with `textContent`, never as HTML.
"""

INDEX_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OHT-50 agent</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<header><h1>OHT-50 agent <span id="agent"></span></h1><span id="who"></span>
<button id="logout" hidden>Log out</button></header>
<main>
<form id="login" hidden>
  <label>User <input id="username" autocomplete="username" required></label>
  <label>Password <input id="password" type="password" autocomplete="current-password" required></label>
  <button type="submit">Log in</button>
  <p id="login-error" class="error"></p>
</form>
<section id="panel" hidden>
  <button id="estop" class="estop">E-STOP</button>
  <p id="estop-result"></p>
  <h2>State</h2>
  <p><b id="state">-</b> <span id="verdict"></span></p>
  <h2>Faults</h2>
  <ul id="faults"></ul>
  <h2>Modules</h2>
  <table><thead><tr><th>Role</th><th>Address</th><th>Profile</th><th>Online</th><th>Quality</th></tr></thead>
  <tbody id="modules"></tbody></table>
  <p id="updated" class="muted"></p>
</section>
</main>
</body>
</html>
"""

APP_CSS = """body{font-family:system-ui,sans-serif;margin:0;background:#f5f5f5;color:#222}
header{display:flex;gap:1em;align-items:center;padding:.5em 1em;background:#223;color:#fff}
header h1{font-size:1.2em;margin:0;flex:1}
main{padding:1em;max-width:60em}
form label{display:block;margin:.5em 0}
.error{color:#b00}
.muted{color:#777;font-size:.9em}
.estop{background:#c00;color:#fff;font-size:1.5em;font-weight:bold;padding:.5em 2em;border:0;border-radius:.3em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
"""

APP_JS = """'use strict';
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
"""
