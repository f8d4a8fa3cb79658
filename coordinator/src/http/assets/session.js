// The Sluice console's live view of one session: its facts, Stop and Retry, and per item its
// state, phase, agent, progress, rate, bytes and waiting reason, from the session's events.
'use strict';

// ---------------------------------------------------------------- a session, live

// Items shown per page of a large session: rebuilding thousands of rows per event would keep
// the browser busy for longer than the events are apart. The event stream is asked for this
// page alone (`itemOffset`, `itemLimit`); its counts by state cover every item.
const ITEMS_PER_PAGE = 500;

function viewSession(id) {
  const facts = h('dl', { class: 'facts' });
  const buttons = h('div', { class: 'actions' });
  const items = h('tbody');
  const counts = h('p', { class: 'muted', 'aria-live': 'polite', 'data-field': 'item-counts' });
  const pager = itemPager((page) => follow(page));
  show(
    h('h1', {}, 'Session ', h('span', { class: 'muted' }, id)),
    h('section', { class: 'panel', 'aria-label': 'Session' }, facts, h('p'), buttons),
    counts,
    pager.element,
    h('table', { class: 'items', 'aria-label': 'Items' },
      h('thead', {}, h('tr', {},
        ['Item', 'State', 'Phase', 'Agent', 'Progress', 'Rate', 'Read / transferred', 'Waiting / message']
          .map((title) => h('th', { scope: 'col' }, title)))),
      items));
  let job = null;
  let latest = null;
  let buttonsKey = '';
  const draw = (session) => {
    if (!session) return;
    if (!job || job.name !== session.job) {
      job = { name: session.job };
      api('GET', `/jobs/${encodeURIComponent(session.job)}`).then((j) => { job = j; }).catch(() => {});
    }
    renderSessionFacts(facts, session);
    // Kept as they are while nothing they depend on changed: a button replaced between
    // pointer down and up would lose the click.
    const key = sessionButtonsKey(session);
    if (key !== buttonsKey) {
      buttonsKey = key;
      renderSessionButtons(buttons, session, () => job);
    }
    const shown = session.items || [];
    counts.textContent = itemCounts(session);
    pager.show(itemTotal(session), shown.length);
    fill(items, ...shown.map(itemRow));
  };
  const render = coalesced((session) => {
    latest = session;
    draw(session);
  });
  // One stream at a time, of the page shown: turning the page follows the new one.
  let stopFollowing = () => {};
  const follow = (page) => {
    stopFollowing();
    render.cancel();
    const query = `itemOffset=${page * ITEMS_PER_PAGE}&itemLimit=${ITEMS_PER_PAGE}`;
    stopFollowing = followSession(id, query, render);
  };
  follow(0);
  const stopTicking = tickDuration(facts, () => latest);
  return () => {
    render.cancel();
    stopFollowing();
    stopTicking();
  };
}

// How many items the session has: its count (sessions started before it was stored have
// none), else what its counts or items add up to.
function itemTotal(s) {
  if (s.itemCount) return Number(s.itemCount);
  if (s.itemStateCounts) return Object.values(s.itemStateCounts).reduce((a, n) => a + Number(n), 0);
  return (s.items || []).length;
}

// Calls `render` with the newest of the sessions given, at most once per animation frame:
// a browser that cannot keep up skips snapshots instead of queueing them.
function coalesced(render) {
  let pending = null;
  let frame = null;
  const run = () => {
    frame = null;
    const session = pending;
    pending = null;
    if (session) render(session);
  };
  const schedule = (session) => {
    pending = session;
    if (frame === null) frame = requestAnimationFrame(run);
  };
  schedule.cancel = () => {
    if (frame !== null) cancelAnimationFrame(frame);
    frame = null;
    pending = null;
  };
  return schedule;
}

// A running session's Duration moves each second, not only when an event comes.
function tickDuration(facts, current) {
  const timer = setInterval(() => {
    const session = current();
    const field = facts.querySelector('[data-field="duration"]');
    if (session && field && session.state !== 'SESSION_STATE_STOPPED') {
      field.textContent = duration(session.createdAt, session.endedAt);
    }
  }, 1000);
  return () => clearInterval(timer);
}

// Prev / Next over the items of a session with more than ITEMS_PER_PAGE; hidden otherwise.
// `turnTo(page)` follows the page chosen; `show(total, shown)` says what the page shows.
function itemPager(turnTo) {
  let page = 0;
  let pages = 1;
  const label = h('span', { 'data-field': 'item-range' });
  const turn = (by) => () => {
    const to = Math.min(Math.max(page + by, 0), pages - 1);
    if (to === page) return;
    page = to;
    prev.disabled = true;
    next.disabled = true;
    turnTo(page);
  };
  const prev = h('button', { type: 'button', onclick: turn(-1) }, 'Prev');
  const next = h('button', { type: 'button', onclick: turn(1) }, 'Next');
  const element = h('nav', { class: 'pager', 'aria-label': 'Item pages', hidden: true }, prev, label, next);
  const show = (total, shown) => {
    pages = Math.max(1, Math.ceil(total / ITEMS_PER_PAGE));
    element.hidden = pages === 1;
    const first = page * ITEMS_PER_PAGE;
    label.textContent = shown > 0
      ? `Items ${count(first + 1)}–${count(first + shown)} of ${count(total)}`
      : `No items from ${count(first + 1)} of ${count(total)}`;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  };
  return { element, show };
}

function count(n) {
  return n.toLocaleString('en-US');
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
    fact('Canceled', h('span', { 'data-field': 'canceled' }, canceledText(s))),
    fact('Stop', stopMode && stopMode !== 'UNSPECIFIED'
      ? `${stopMode.toLowerCase()} by ${s.stoppedBy || '?'} at ${when(s.stopRequestedAt)}` : '—'),
    fact('Message', s.message || '—'),
    fact('Started', when(s.createdAt)),
    fact('Ended', stopped ? when(s.endedAt) : '—'),
    fact('Duration', h('span', { 'data-field': 'duration' }, duration(s.createdAt, s.endedAt))),
    fact('Owner', s.owner ? `${s.owner} (epoch ${s.epoch})` : '—'),
    s.retryOf ? fact('Retry of', sessionLink(s.retryOf)) : null,
    s.startedBy ? fact('Started by', s.startedBy) : null);
}

// What RetrySession runs again: failed and not-processed items, of every page.
function retryable(s) {
  if (s.state !== 'SESSION_STATE_STOPPED') return false;
  if (s.itemStateCounts) return Number(s.itemStateCounts.failed) + Number(s.itemStateCounts.notProcessed) > 0;
  return (s.items || []).some((i) => i.state === 'ITEM_STATE_FAILED' || i.state === 'ITEM_STATE_NOT_PROCESSED');
}

// What the buttons show depends on only these.
function sessionButtonsKey(s) {
  return JSON.stringify([s.id, s.job, s.state, retryable(s)]);
}

// `job` gives the job as last read (its graceful timeout is the Stop dialog's default).
function renderSessionButtons(buttons, s, job) {
  const stopped = s.state === 'SESSION_STATE_STOPPED';
  const operate = roleAllows('operate');
  fill(buttons,
    operate && !stopped ? h('button', { type: 'button', 'aria-haspopup': 'dialog',
      onclick: () => askStop(s.job, job() && job().gracefulTimeoutSeconds, s.id) }, 'Stop') : null,
    operate && retryable(s) ? h('button', { type: 'button',
      onclick: () => act(() => retrySession(s.id)) }, 'Retry') : null,
    h('a', { href: `#/history?job=${encodeURIComponent(s.job)}` }, 'Session history'));
}

// Items per state, of every item (the session's counts; of the items shown without them).
const COUNTED_STATES = [
  ['pending', 'PENDING'], ['processing', 'PROCESSING'], ['success', 'SUCCESS'], ['warning', 'WARNING'],
  ['failed', 'FAILED'], ['canceled', 'CANCELED'], ['notProcessed', 'NOT_PROCESSED'],
];

function itemCounts(s) {
  const counts = new Map();
  if (s.itemStateCounts) {
    for (const [field, state] of COUNTED_STATES) counts.set(state, Number(s.itemStateCounts[field] || 0));
  } else {
    for (const item of s.items || []) {
      const state = short(item.state, 'ITEM_STATE_');
      counts.set(state, (counts.get(state) || 0) + 1);
    }
  }
  return [...counts].filter(([, n]) => n > 0).map(([state, n]) => `${count(n)} ${state}`).join(', ');
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

// The server sends a comment at least every 15 s: a stream silent for longer than this is
// broken (a frozen link sends nothing, not even an end), and the page would show stale data
// as live.
const SILENT_MS = 35000;

// Resolves once the page is visible (at once if it is).
function whenVisible() {
  return new Promise((resolve) => {
    if (!document.hidden) return resolve();
    const wake = () => {
      if (document.hidden) return;
      document.removeEventListener('visibilitychange', wake);
      resolve();
    };
    document.addEventListener('visibilitychange', wake);
  });
}

// Follows `/sessions/{id}/events?query` (Server-Sent Events, read with fetch so the bearer
// token goes along; `query` names the page of items) until the session is STOPPED; reconnects after a break. A stream the server
// ends because the token was revoked or expired is no break: the sign-in form says why.
// A hidden page holds no stream: a browser allows 6 HTTP/1.1 connections per host, and six
// tabs with live streams left none for any other call of the console. Returns the stopper.
function followSession(id, query, render) {
  let stopped = false;
  // A stopped follower renders nothing more, not even a read it had in hand.
  const mine = (session) => { if (!stopped) render(session); };
  let attempt = null;
  const hide = () => { if (document.hidden && attempt) attempt.abort(); };
  document.addEventListener('visibilitychange', hide);
  const connect = async () => {
    while (!stopped) {
      await whenVisible();
      if (stopped) return undefined;
      attempt = new AbortController();
      const current = attempt;
      // No answer at all (a frozen link, no free connection) is a break too.
      const unanswered = setTimeout(() => current.abort(), SILENT_MS);
      try {
        const response = await fetch(`/api/v1/sessions/${encodeURIComponent(id)}/events?${query}`,
          { headers: authHeaders(), signal: attempt.signal }).finally(() => clearTimeout(unanswered));
        if (!response.ok) {
          const data = await response.json().catch(() => ({}));
          if (response.status === 401) return showLogin(data.message);
          alertBox(data.message || response.statusText);
          // No such session, or an id the server refuses: asking again changes nothing.
          if (response.status === 404 || response.status === 400) return undefined;
        } else {
          const end = await readEvents(response, mine, attempt);
          if (end.signIn !== undefined) return stopped ? undefined : showLogin(end.signIn);
          if (end.stopped) return undefined;
          if (!document.hidden) alertBox(LOST);
        }
      } catch (error) {
        if (stopped) return undefined;
        // Closed on purpose while hidden: it follows again once visible, at once.
        if (document.hidden) continue;
        alertBox(LOST);
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    return undefined;
  };
  connect();
  return () => {
    stopped = true;
    document.removeEventListener('visibilitychange', hide);
    if (attempt) attempt.abort();
  };
}

// Reads one event stream until it ends: `{stopped: true}` once the session is STOPPED,
// `{signIn: message}` when the server ended it with UNAUTHENTICATED, else `{}` (a break).
// Of the session events that came in one read only the newest is parsed and rendered: each
// holds the whole session (with its page of items). A stream silent for SILENT_MS is aborted
// through `attempt`.
async function readEvents(response, render, attempt) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let silent = setTimeout(() => attempt.abort(), SILENT_MS);
  try {
    return await readAll(reader, render, () => {
      clearTimeout(silent);
      silent = setTimeout(() => attempt.abort(), SILENT_MS);
    });
  } finally {
    clearTimeout(silent);
  }
}

async function readAll(reader, render, heard) {
  let buffer = '';
  let ended = false;
  for (;;) {
    const { value, done } = await reader.read();
    heard();
    if (done) return { stopped: ended };
    buffer += value;
    let newest = null;
    let start = 0;
    let cut;
    while ((cut = buffer.indexOf('\n\n', start)) >= 0) {
      const event = parseEvent(buffer.slice(start, cut));
      start = cut + 2;
      if (event.type === 'session') {
        newest = event.data;
      } else if (event.type === 'error') {
        const error = JSON.parse(event.data);
        if (error.code === 'UNAUTHENTICATED') {
          reader.cancel().catch(() => {});
          return { signIn: error.message || '' };
        }
        alertBox(error.message);
      }
    }
    buffer = buffer.slice(start);
    if (newest !== null) {
      const session = JSON.parse(newest).session;
      alertBox('');
      render(session);
      ended = session.state === 'SESSION_STATE_STOPPED';
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
