// The Sluice console: a page of the coordinator, talking only to its /api/v1 (protobuf JSON
// mapping). Views are chosen by the URL's hash; each returns a function that ends its polling
// or event stream when another view replaces it.
'use strict';

const TOKEN_KEY = 'sluice.token';
const POLL_MS = 2000;

// Which roles may use what: the same table as the coordinator's (`role_allows` in auth.rs).
const ACCESS = {
  view: ['viewer', 'operator', 'restore-operator', 'admin'],
  operate: ['operator', 'admin'],
  administer: ['admin'],
};

let principal = null;
let leaveView = () => {};

function roleAllows(access) {
  return principal !== null && ACCESS[access].includes(principal.role);
}

// ---------------------------------------------------------------- DOM and formatting helpers

function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (name === 'class') element.className = value;
    else if (value === true) element.setAttribute(name, '');
    else element.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// Replaces the children of `element`, skipping empty ones (`replaceChildren` would show "null").
function fill(element, ...children) {
  element.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
}

function show(...content) {
  fill(document.getElementById('main'), ...content);
}

function alertBox(message) {
  const box = document.getElementById('alert');
  box.textContent = message || '';
  box.hidden = !message;
}

// `SESSION_RESULT_WARNING` -> `WARNING`.
function short(value, prefix) {
  if (!value) return '';
  return value.startsWith(prefix) ? value.slice(prefix.length) : value;
}

function badge(text) {
  if (!text || text === 'NONE' || text === 'UNSPECIFIED') return h('span', { class: 'muted' }, '—');
  return h('span', { class: `badge ${text.toLowerCase()}` }, text);
}

function bytes(value) {
  const n = Number(value || 0);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let size = n;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? size : size.toFixed(1)} ${units[unit]}`;
}

function when(timestamp) {
  if (!timestamp) return '—';
  const date = new Date(timestamp);
  return date.toLocaleString();
}

function seconds(from, to) {
  if (!from) return null;
  const end = to ? new Date(to) : new Date();
  return Math.max(0, (end - new Date(from)) / 1000);
}

function duration(from, to) {
  const total = seconds(from, to);
  if (total === null) return '—';
  const s = Math.round(total);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

// Whether a session was canceled, '—' until it has ended (as its result): a session just
// stopped is STOPPING and not yet marked canceled, and "no" read as "not stopped".
function canceledText(session) {
  if (session.state !== 'SESSION_STATE_STOPPED') return '—';
  return session.canceled ? 'yes' : 'no';
}

function sessionLink(id) {
  return h('a', { href: `#/sessions/${encodeURIComponent(id)}` }, id);
}

// ---------------------------------------------------------------- API

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// What a call that got no answer says: the cluster may well be up behind another coordinator.
const UNREACHABLE = 'Cannot reach this coordinator (it may be down or restarting). '
  + "The cluster's other coordinators serve the same console and data.";
// Longest a call of the console waits for its answer.
const API_TIMEOUT_MS = 20000;
const SILENT = `No answer from this coordinator within ${API_TIMEOUT_MS / 1000} s `
  + '(a frozen link, or the browser waiting for a free connection); the action may not have '
  + 'been sent.';

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { ...authHeaders() };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  // A call whose answer does not begin (a frozen link, every connection taken) says so
  // instead of leaving the page as it was without a word; a large answer may take longer.
  const waiting = new AbortController();
  const timer = setTimeout(() => waiting.abort(), API_TIMEOUT_MS);
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: waiting.signal,
    });
  } catch (error) {
    if (waiting.signal.aborted) throw new ApiError(0, 'DEADLINE_EXCEEDED', SILENT);
    // fetch says only "Failed to fetch": no answer came at all.
    throw new ApiError(0, 'UNAVAILABLE', UNREACHABLE);
  } finally {
    clearTimeout(timer);
  }
  const text = await response.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch (_) {
    data = { message: text };
  }
  if (!response.ok) {
    if (response.status === 401) showLogin(data.message);
    throw new ApiError(response.status, data.code || '', data.message || response.statusText);
  }
  return data;
}

// Runs an action of a button; a failure shows in the alert box.
async function act(action) {
  alertBox('');
  try {
    await action();
  } catch (error) {
    // A 401 has shown the sign-in form, which says why.
    if (error.status !== 401) alertBox(error.message);
  }
}

// Calls `load` now and every POLL_MS until the view is left; returns the function that stops.
// An error it showed goes once a call succeeds again (unless something else replaced it).
function poll(load) {
  let stopped = false;
  let timer = null;
  let shown = null;
  const run = async () => {
    try {
      await load();
      if (shown !== null && document.getElementById('alert').textContent === shown) alertBox('');
      shown = null;
    } catch (error) {
      if (!stopped && error.status !== 401) {
        shown = error.message;
        alertBox(shown);
      }
    }
    if (!stopped) timer = setTimeout(run, POLL_MS);
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// ---------------------------------------------------------------- sign-in

// Why the sign-in form shows, in the words of its reader rather than the API's.
function signInMessage(message) {
  const text = message || '';
  if (/\brevoked\b/.test(text) && !/\bunknown\b/.test(text)) return 'Your token was revoked: sign in with another one.';
  if (/\bexpired\b/.test(text)) return 'Your token has expired: sign in with another one.';
  if (/unknown or revoked/.test(text)) return 'This token is unknown or was revoked: sign in with another one.';
  if (!text || /token is required/.test(text)) return 'This cluster needs an API token.';
  return text;
}

function showLogin(message) {
  leaveView();
  leaveView = () => {};
  principal = null;
  // Whatever a view said (a lost stream, a failed call) no longer applies.
  alertBox('');
  renderWho();
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true });
  const form = h('form', { class: 'login panel', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Sign in'),
    h('p', { class: 'muted', 'data-field': 'sign-in-reason' }, signInMessage(message)),
    h('div', { class: 'field' }, h('label', { for: 'token' }, 'API token'), input),
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    start();
  });
  show(form);
  input.focus();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  start();
}

function renderWho() {
  const who = document.getElementById('who');
  if (!principal) {
    fill(who);
    return;
  }
  const signedIn = sessionStorage.getItem(TOKEN_KEY);
  fill(who,
    h('span', {}, `${principal.name} (${principal.role})`),
    signedIn ? h('button', { type: 'button', onclick: signOut }, 'Sign out') : null);
}

// ---------------------------------------------------------------- stopping

// Asks how to stop the active session of `job` (session `sessionId` when given: a stop that
// reaches the server late then never stops a later session of the job), then stops it.
function askStop(job, defaultTimeout, sessionId) {
  const dialog = document.getElementById('stop-dialog');
  document.getElementById('stop-title').textContent = `Stop ${job}`;
  document.getElementById('stop-what').textContent = `The running session of job ${job}.`;
  const timeout = document.getElementById('stop-timeout');
  timeout.value = String(defaultTimeout || 0);
  // The job's own timeout is the default: 0 there means a graceful stop waits without limit.
  document.getElementById('stop-default').textContent = defaultTimeout === undefined ? ''
    : defaultTimeout > 0 ? `The job's graceful timeout: ${defaultTimeout} s.`
      : "The job's graceful timeout: none (a graceful stop waits without limit).";
  dialog.returnValue = '';
  dialog.onclose = () => {
    const mode = dialog.returnValue;
    if (!mode.startsWith('STOP_MODE_')) return;
    const body = { mode };
    if (sessionId) body.sessionId = sessionId;
    if (mode === 'STOP_MODE_GRACEFUL') body.gracefulTimeoutSeconds = Number(timeout.value || 0);
    act(async () => {
      const session = await api('POST', `/jobs/${encodeURIComponent(job)}/stop`, body);
      if (!location.hash.startsWith('#/sessions/')) location.hash = `#/sessions/${session.id}`;
    });
  };
  dialog.showModal();
}

// Asks for a deadline, then drains agent `id`.
function askDrain(id) {
  const dialog = document.getElementById('drain-dialog');
  document.getElementById('drain-title').textContent = `Drain agent ${id}`;
  const deadline = document.getElementById('drain-deadline');
  deadline.value = '600';
  dialog.returnValue = '';
  dialog.onclose = () => {
    if (dialog.returnValue !== 'drain') return;
    const body = { deadlineSeconds: Number(deadline.value || 600) };
    act(() => api('POST', `/agents/${encodeURIComponent(id)}/drain`, body));
  };
  dialog.showModal();
}

async function startJob(job) {
  const session = await api('POST', `/jobs/${encodeURIComponent(job)}/start`, {});
  location.hash = `#/sessions/${session.id}`;
}

async function retrySession(id) {
  const session = await api('POST', `/sessions/${encodeURIComponent(id)}/retry`, {});
  location.hash = `#/sessions/${session.id}`;
}

// ---------------------------------------------------------------- routing

function route() {
  leaveView();
  alertBox('');
  const [path, search] = (location.hash.slice(1) || '/').split('?');
  const query = new URLSearchParams(search || '');
  const session = path.match(/^\/sessions\/(.+)$/);
  let id = null;
  try {
    id = session ? decodeURIComponent(session[1]) : null;
  } catch (_) {
    // A link cut inside an escape (`%E0%A4%A`): say so rather than keep the previous view.
    fill(document.getElementById('main'), h('p', {}, 'This link is not a session link.'));
    alertBox(`The link ${location.hash} is malformed.`);
    return;
  }
  if (session) leaveView = viewSession(id);
  else if (path === '/history') leaveView = viewHistory(query);
  else if (path === '/agents') leaveView = viewAgents();
  else if (path === '/coordinators') leaveView = viewCoordinators();
  else if (path === '/restore-points') leaveView = viewRestorePoints(query);
  else leaveView = viewHome();
  document.getElementById('main').focus({ preventScroll: true });
}

// Signs in, or keeps trying while the coordinator cannot answer (restarting, etcd away).
async function start() {
  try {
    principal = await api('GET', '/whoami');
  } catch (error) {
    if (error.status === 401) return;
    alertBox(error.status === 0 ? `${error.message} Trying again.` : `cannot reach the coordinator: ${error.message}; trying again`);
    setTimeout(start, POLL_MS);
    return;
  }
  alertBox('');
  renderWho();
  route();
}

window.addEventListener('hashchange', () => {
  if (principal) route();
});
document.addEventListener('DOMContentLoaded', start);
