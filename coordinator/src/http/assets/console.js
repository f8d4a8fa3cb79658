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
  restore: ['restore-operator', 'admin'],
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

function sessionLink(id) {
  return h('a', { href: `#/sessions/${encodeURIComponent(id)}` }, id);
}

// ---------------------------------------------------------------- API

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

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
  const response = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
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
    alertBox(error.message);
  }
}

// Calls `load` now and every POLL_MS until the view is left; returns the function that stops.
function poll(load) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    try {
      await load();
    } catch (error) {
      if (!stopped && error.status !== 401) alertBox(error.message);
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

function showLogin(message) {
  leaveView();
  leaveView = () => {};
  principal = null;
  renderWho();
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true });
  const form = h('form', { class: 'login panel', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Sign in'),
    h('p', { class: 'muted' }, message || 'This cluster needs an API token.'),
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

// Asks how to stop the active session of `job`, then stops it.
function askStop(job, defaultTimeout) {
  const dialog = document.getElementById('stop-dialog');
  document.getElementById('stop-title').textContent = `Stop ${job}`;
  document.getElementById('stop-what').textContent = `The running session of job ${job}.`;
  const timeout = document.getElementById('stop-timeout');
  timeout.value = String(defaultTimeout || 0);
  dialog.returnValue = '';
  dialog.onclose = () => {
    const mode = dialog.returnValue;
    if (!mode.startsWith('STOP_MODE_')) return;
    const body = { mode };
    if (mode === 'STOP_MODE_GRACEFUL') body.gracefulTimeoutSeconds = Number(timeout.value || 0);
    act(async () => {
      const session = await api('POST', `/jobs/${encodeURIComponent(job)}/stop`, body);
      if (!location.hash.startsWith('#/sessions/')) location.hash = `#/sessions/${session.id}`;
    });
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

// ---------------------------------------------------------------- Home

function viewHome() {
  const body = h('tbody');
  show(
    h('h1', {}, 'Jobs'),
    h('table', { 'aria-label': 'Jobs' },
      h('thead', {}, h('tr', {},
        ['Job', 'Type', 'Items', 'Schedule', 'Last result', 'Last run', 'Next run', 'Actions']
          .map((title) => h('th', { scope: 'col' }, title)))),
      body));
  return poll(async () => {
    const [jobs, sessions] = await Promise.all([api('GET', '/jobs'), api('GET', '/sessions')]);
    const byJob = new Map();
    for (const session of sessions.sessions || []) {
      if (!byJob.has(session.job)) byJob.set(session.job, []);
      byJob.get(session.job).push(session);
    }
    const rows = (jobs.jobs || []).map((job) => jobRow(job, byJob.get(job.name) || []));
    fill(body, ...(rows.length ? rows
      : [h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No jobs yet: create one with `sluice job create -f FILE`.'))]));
  });
}

function jobRow(job, sessions) {
  const active = sessions.find((s) => s.state !== 'SESSION_STATE_STOPPED');
  const last = sessions.find((s) => s.state === 'SESSION_STATE_STOPPED');
  const latest = active || last;
  const schedule = job.schedule || null;
  const scheduleText = schedule && !schedule.disabled
    ? (schedule.cron || (schedule.afterJob ? `after ${schedule.afterJob}` : '—')) : '—';
  const operate = roleAllows('operate');
  const retryable = !active && last && last.result !== 'SESSION_RESULT_SUCCESS';
  const actions = h('div', { class: 'actions' },
    operate ? h('button', { type: 'button', class: 'primary', disabled: Boolean(active),
      onclick: () => act(() => startJob(job.name)) }, 'Start') : null,
    operate ? h('button', { type: 'button', disabled: !active, 'aria-haspopup': 'dialog',
      onclick: () => askStop(job.name, job.gracefulTimeoutSeconds) }, 'Stop') : null,
    operate && retryable ? h('button', { type: 'button',
      onclick: () => act(() => retrySession(last.id)) }, 'Retry') : null,
    latest ? h('a', { href: `#/sessions/${latest.id}` }, active ? 'Watch' : 'Last session') : null);
  return h('tr', { 'data-job': job.name },
    h('th', { scope: 'row' }, h('a', { href: `#/history?job=${encodeURIComponent(job.name)}` }, job.name)),
    h('td', {}, short(job.type, 'JOB_TYPE_')),
    h('td', { class: 'num' }, (job.items || []).length),
    h('td', {}, scheduleText),
    h('td', {}, active ? badge(short(active.state, 'SESSION_STATE_'))
      : last ? badge(short(last.result, 'SESSION_RESULT_')) : badge('')),
    h('td', {}, latest ? when(latest.createdAt) : '—'),
    h('td', {}, job.nextRunAt ? when(job.nextRunAt) : '—'),
    h('td', {}, actions));
}

// ---------------------------------------------------------------- a session, live

function viewSession(id) {
  const facts = h('dl', { class: 'facts' });
  const buttons = h('div', { class: 'actions' });
  const items = h('tbody');
  const counts = h('p', { class: 'muted', 'aria-live': 'polite' });
  show(
    h('h1', {}, 'Session ', h('span', { class: 'muted' }, id)),
    h('section', { class: 'panel', 'aria-label': 'Session' }, facts, h('p'), buttons),
    counts,
    h('table', { class: 'items', 'aria-label': 'Items' },
      h('thead', {}, h('tr', {},
        ['Item', 'State', 'Phase', 'Agent', 'Progress', 'Rate', 'Read / transferred', 'Waiting / message']
          .map((title) => h('th', { scope: 'col' }, title)))),
      items));
  let job = null;
  const render = (session) => {
    if (!job || job.name !== session.job) {
      job = { name: session.job };
      api('GET', `/jobs/${encodeURIComponent(session.job)}`).then((j) => { job = j; }).catch(() => {});
    }
    renderSessionFacts(facts, session);
    renderSessionButtons(buttons, session, job);
    counts.textContent = itemCounts(session.items || []);
    fill(items, ...(session.items || []).map(itemRow));
  };
  return followSession(id, render);
}

function fact(term, value) {
  return h('div', {}, h('dt', {}, term), h('dd', {}, value));
}

function renderSessionFacts(facts, s) {
  const stopped = s.state === 'SESSION_STATE_STOPPED';
  const stopMode = short(s.stopMode, 'STOP_MODE_');
  fill(facts,
    fact('Job', h('a', { href: `#/history?job=${encodeURIComponent(s.job)}` }, s.job)),
    fact('State', h('span', { 'data-field': 'state' }, badge(short(s.state, 'SESSION_STATE_')))),
    fact('Result', h('span', { 'data-field': 'result' }, badge(short(s.result, 'SESSION_RESULT_')))),
    fact('Canceled', h('span', { 'data-field': 'canceled' }, s.canceled ? 'yes' : 'no')),
    fact('Stop', stopMode && stopMode !== 'UNSPECIFIED'
      ? `${stopMode.toLowerCase()} by ${s.stoppedBy || '?'} at ${when(s.stopRequestedAt)}` : '—'),
    fact('Message', s.message || '—'),
    fact('Started', when(s.createdAt)),
    fact(stopped ? 'Ended' : 'Running for', stopped ? when(s.endedAt) : duration(s.createdAt)),
    fact('Duration', duration(s.createdAt, s.endedAt)),
    fact('Owner', s.owner ? `${s.owner} (epoch ${s.epoch})` : '—'),
    s.retryOf ? fact('Retry of', sessionLink(s.retryOf)) : null,
    s.startedBy ? fact('Started by', s.startedBy) : null);
}

function renderSessionButtons(buttons, s, job) {
  const stopped = s.state === 'SESSION_STATE_STOPPED';
  const operate = roleAllows('operate');
  // What RetrySession runs again: failed and not-processed items.
  const retryable = stopped && (s.items || []).some((i) =>
    i.state === 'ITEM_STATE_FAILED' || i.state === 'ITEM_STATE_NOT_PROCESSED');
  fill(buttons,
    operate && !stopped ? h('button', { type: 'button', 'aria-haspopup': 'dialog',
      onclick: () => askStop(s.job, job && job.gracefulTimeoutSeconds) }, 'Stop') : null,
    operate && retryable ? h('button', { type: 'button',
      onclick: () => act(() => retrySession(s.id)) }, 'Retry') : null,
    h('a', { href: `#/history?job=${encodeURIComponent(s.job)}` }, 'Session history'));
}

function itemCounts(items) {
  const counts = new Map();
  for (const item of items) {
    const state = short(item.state, 'ITEM_STATE_');
    counts.set(state, (counts.get(state) || 0) + 1);
  }
  return [...counts].map(([state, n]) => `${n} ${state}`).join(', ');
}

function itemRow(item) {
  const state = short(item.state, 'ITEM_STATE_');
  const phase = short(item.phase, 'TASK_PHASE_');
  const done = Number(item.bytesDone || 0);
  const total = Number(item.bytesTotal || 0);
  const percent = total > 0 ? Math.min(100, Math.floor((done * 100) / total)) : (state === 'SUCCESS' ? 100 : 0);
  const elapsed = seconds(item.startedAt, item.endedAt);
  const rate = elapsed && done > 0 ? `${bytes(done / elapsed)}/s` : '—';
  const read = item.bytesRead !== undefined ? item.bytesRead : item.bytesDone;
  const transferred = item.bytesTransferred !== undefined ? item.bytesTransferred : item.bytesDone;
  const note = item.waitingReason || item.message || '';
  return h('tr', { 'data-item': item.name, 'data-state': state },
    h('th', { scope: 'row' }, item.name),
    h('td', {}, badge(state)),
    h('td', {}, phase && phase !== 'UNSPECIFIED' ? phase : '—'),
    h('td', {}, item.agent || '—'),
    h('td', {}, h('span', { class: 'progress' },
      h('progress', { max: 100, value: percent, 'aria-label': `${item.name} progress` }), `${percent}%`)),
    h('td', { class: 'num' }, rate),
    h('td', { class: 'num' }, `${bytes(read)} / ${bytes(transferred)}`),
    h('td', { class: note ? '' : 'muted' }, note || '—'));
}

// Follows `/sessions/{id}/events` (Server-Sent Events, read with fetch so the bearer token
// goes along) until the session is STOPPED; reconnects after a break. Returns the stopper.
function followSession(id, render) {
  const controller = new AbortController();
  let stopped = false;
  const connect = async () => {
    while (!stopped) {
      try {
        const response = await fetch(`/api/v1/sessions/${encodeURIComponent(id)}/events`,
          { headers: authHeaders(), signal: controller.signal });
        if (!response.ok) {
          const data = await response.json().catch(() => ({}));
          if (response.status === 401) return showLogin(data.message);
          alertBox(data.message || response.statusText);
          if (response.status === 404) return;
        } else if (await readEvents(response, render)) {
          return;
        }
      } catch (error) {
        if (stopped) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  };
  connect();
  return () => {
    stopped = true;
    controller.abort();
  };
}

// Reads one event stream; true once the session is STOPPED.
async function readEvents(response, render) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let ended = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return ended;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = parseEvent(block);
      if (event.type === 'session') {
        const session = JSON.parse(event.data).session;
        alertBox('');
        render(session);
        ended = session.state === 'SESSION_STATE_STOPPED';
      } else if (event.type === 'error') {
        alertBox(JSON.parse(event.data).message);
      }
    }
  }
}

function parseEvent(block) {
  const event = { type: 'message', data: '' };
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) event.type = line.slice(6).trim();
    else if (line.startsWith('data:')) event.data += line.slice(5).replace(/^ /, '');
  }
  return event;
}

// ---------------------------------------------------------------- history

function viewHistory(query) {
  const job = query.get('job') || '';
  const body = h('tbody');
  show(
    h('h1', {}, job ? `Sessions of ${job}` : 'Sessions'),
    job ? h('p', {}, h('a', { href: '#/history' }, 'All jobs')) : null,
    h('table', { 'aria-label': 'Sessions' },
      h('thead', {}, h('tr', {}, ['Session', 'Job', 'State', 'Result', 'Canceled', 'Started', 'Duration', 'Stopped by']
        .map((title) => h('th', { scope: 'col' }, title)))),
      body));
  return poll(async () => {
    const list = await api('GET', `/sessions${job ? `?job=${encodeURIComponent(job)}` : ''}`);
    fill(body, ...(list.sessions || []).map((s) => h('tr', {},
      h('th', { scope: 'row' }, sessionLink(s.id)),
      h('td', {}, s.job),
      h('td', {}, badge(short(s.state, 'SESSION_STATE_'))),
      h('td', {}, badge(short(s.result, 'SESSION_RESULT_'))),
      h('td', {}, s.canceled ? 'yes' : 'no'),
      h('td', {}, when(s.createdAt)),
      h('td', {}, duration(s.createdAt, s.endedAt)),
      h('td', {}, s.stoppedBy || '—'))));
  });
}

// ---------------------------------------------------------------- agents and coordinators

function viewAgents() {
  const body = h('tbody');
  show(
    h('h1', {}, 'Agents'),
    h('table', { 'aria-label': 'Agents' },
      h('thead', {}, h('tr', {}, ['Agent', 'State', 'Slots in use', 'Computer', 'Address', 'Heartbeats to', 'Version', 'Actions']
        .map((title) => h('th', { scope: 'col' }, title)))),
      body));
  return poll(async () => {
    const list = await api('GET', '/agents');
    fill(body, ...(list.agents || []).map((a) => {
      const state = short(a.state, 'AGENT_STATE_');
      const drain = roleAllows('administer') && state === 'ONLINE'
        ? h('button', { type: 'button', class: 'danger', onclick: () => act(async () => {
          if (!window.confirm(`Drain agent ${a.id}? It takes no new tasks and leaves once its tasks end.`)) return;
          await api('POST', `/agents/${encodeURIComponent(a.id)}/drain`, {});
        }) }, 'Drain') : null;
      return h('tr', {},
        h('th', { scope: 'row' }, a.id),
        h('td', {}, badge(state === 'DRAINING' ? 'DRAINING' : state)),
        h('td', {}, h('span', { class: 'progress' },
          h('progress', { max: a.slots || 1, value: a.runningTasks || 0, 'aria-label': `${a.id} slots in use` }),
          `${a.runningTasks || 0} / ${a.slots || 0}`)),
        h('td', {}, a.computer || '—'),
        h('td', {}, a.address),
        h('td', {}, a.coordinator || '—'),
        h('td', {}, a.version || '—'),
        h('td', {}, drain));
    }));
  });
}

function viewCoordinators() {
  const body = h('tbody');
  show(
    h('h1', {}, 'Coordinators'),
    h('table', { 'aria-label': 'Coordinators' },
      h('thead', {}, h('tr', {}, ['Coordinator', 'Address', 'Joined', 'Owns (epoch)']
        .map((title) => h('th', { scope: 'col' }, title)))),
      body));
  return poll(async () => {
    const list = await api('GET', '/coordinators');
    fill(body, ...(list.coordinators || []).map((c) => h('tr', {},
      h('th', { scope: 'row' }, c.id),
      h('td', {}, c.address),
      h('td', {}, when(c.startedAt)),
      h('td', {}, (c.sessions || []).length
        ? (c.sessions || []).flatMap((s, i) => [i ? ', ' : '', sessionLink(s.sessionId), ` (${s.epoch})`])
        : h('span', { class: 'muted' }, 'nothing')))));
  });
}

// ---------------------------------------------------------------- restore points

function viewRestorePoints(query) {
  const job = query.get('job') || '';
  const select = h('select', { id: 'rp-job', onchange: (e) => {
    location.hash = `#/restore-points?job=${encodeURIComponent(e.target.value)}`;
  } }, h('option', { value: '' }, 'Choose a job'));
  const body = h('tbody');
  show(
    h('h1', {}, 'Restore points'),
    h('div', { class: 'toolbar' }, h('div', { class: 'field' }, h('label', { for: 'rp-job' }, 'Job'), select)),
    h('table', { 'aria-label': 'Restore points' },
      h('thead', {}, h('tr', {}, ['Restore point', 'Item', 'Session', 'Created', 'Size', 'Path', 'Verify']
        .map((title) => h('th', { scope: 'col' }, title)))),
      body));
  act(async () => {
    const jobs = await api('GET', '/jobs');
    select.append(...(jobs.jobs || []).map((j) => h('option', { value: j.name, selected: j.name === job }, j.name)));
    if (!job) return;
    const list = await api('GET', `/jobs/${encodeURIComponent(job)}/restore-points`);
    fill(body, ...(list.restorePoints || []).map((rp) => restorePointRow(job, rp)));
  });
  return () => {};
}

function restorePointRow(job, rp) {
  const outcome = h('span', { 'aria-live': 'polite' });
  const verify = roleAllows('restore') ? h('button', { type: 'button', onclick: (event) => act(async () => {
    event.target.disabled = true;
    outcome.textContent = ' checking…';
    try {
      const result = await api('POST', `/restore-points/${encodeURIComponent(rp.id)}/verify`, { job });
      outcome.textContent = result.ok
        ? ` OK: ${bytes(result.bytesChecked)} checked on ${result.agent}`
        : ` ${(result.problems || []).length} problem(s): ${(result.problems || []).join('; ')}`;
    } finally {
      event.target.disabled = false;
    }
  }) }, 'Verify') : null;
  return h('tr', {},
    h('th', { scope: 'row' }, rp.id),
    h('td', {}, rp.item),
    h('td', {}, sessionLink(rp.sessionId)),
    h('td', {}, when(rp.createdAt)),
    h('td', { class: 'num' }, bytes(rp.sizeBytes)),
    h('td', { class: 'small' }, rp.path),
    h('td', {}, verify, outcome));
}

// ---------------------------------------------------------------- routing

function route() {
  leaveView();
  alertBox('');
  const [path, search] = (location.hash.slice(1) || '/').split('?');
  const query = new URLSearchParams(search || '');
  const session = path.match(/^\/sessions\/(.+)$/);
  if (session) leaveView = viewSession(decodeURIComponent(session[1]));
  else if (path === '/history') leaveView = viewHistory(query);
  else if (path === '/agents') leaveView = viewAgents();
  else if (path === '/coordinators') leaveView = viewCoordinators();
  else if (path === '/restore-points') leaveView = viewRestorePoints(query);
  else leaveView = viewHome();
  document.getElementById('main').focus({ preventScroll: true });
}

async function start() {
  try {
    principal = await api('GET', '/whoami');
  } catch (error) {
    if (error.status !== 401) alertBox(`cannot reach the coordinator: ${error.message}`);
    return;
  }
  renderWho();
  route();
}

window.addEventListener('hashchange', () => {
  if (principal) route();
});
document.addEventListener('DOMContentLoaded', start);
