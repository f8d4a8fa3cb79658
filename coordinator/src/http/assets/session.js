// The Sluice console's live view of one session: its facts, Stop and Retry, and per item its
// state, phase, agent, progress, rate, bytes and waiting reason, from the session's events.
'use strict';

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
    fact('Ended', stopped ? when(s.endedAt) : '—'),
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
    h('td', { class: note ? 'note' : 'note muted' }, note || '—'));
}

// Shown while the event stream is down, until its next event clears it: what the page shows
// is then as of the break, not live.
const LOST = 'Lost the connection to this coordinator; reconnecting. The session goes on; '
  + 'what this page shows is as of the break.';

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
        } else {
          alertBox(LOST);
        }
      } catch (error) {
        if (stopped) return;
        alertBox(LOST);
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
