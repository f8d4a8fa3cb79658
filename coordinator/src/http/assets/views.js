// The Sluice console's list views: Home (jobs, Start, Stop, Retry), session history, agents,
// coordinators and restore points (Verify). Each polls the API while it is shown.
'use strict';

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
    // A job's active session, if any, and its last ended one: not its whole history.
    const [jobs, sessions] = await Promise.all([jobSummaries(), api('GET', '/sessions?newestPerJob=2')]);
    const byJob = new Map();
    for (const session of sessions.sessions || []) {
      if (!byJob.has(session.job)) byJob.set(session.job, []);
      byJob.get(session.job).push(session);
    }
    const rows = jobs.map((job) => jobRow(job, byJob.get(job.name) || []));
    fill(body, ...(rows.length ? rows
      : [h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No jobs yet: create one with `sluice job create -f FILE`.'))]));
  });
}

// Every job without its items, page after page, each with its summary's item count and
// next run: a Home view of large jobs stays small.
async function jobSummaries() {
  const jobs = [];
  let token = '';
  do {
    const page = await api('GET', `/jobs?omitItems=true&pageSize=100&pageToken=${encodeURIComponent(token)}`);
    const summaries = page.summaries || [];
    (page.jobs || []).forEach((job, i) => jobs.push({ ...job, summary: summaries[i] || {} }));
    token = page.nextPageToken || '';
  } while (token);
  return jobs;
}

function jobRow(job, sessions) {
  const active = sessions.find((s) => s.state !== 'SESSION_STATE_STOPPED');
  const last = sessions.find((s) => s.state === 'SESSION_STATE_STOPPED');
  const latest = active || last;
  const scheduleText = describeSchedule(job.schedule);
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
    h('td', { class: 'num' }, job.summary.itemCount ?? (job.items || []).length),
    h('td', {}, scheduleText),
    h('td', {}, active ? badge(short(active.state, 'SESSION_STATE_'))
      : last ? badge(short(last.result, 'SESSION_RESULT_')) : badge('')),
    h('td', {}, latest ? when(latest.createdAt) : '—'),
    h('td', {}, nextRunText(job)),
    h('td', {}, actions));
}

// As the CLI says it: '—' only for a job without a cron schedule that runs.
function nextRunText(job) {
  if (job.summary.nextRunAt) return when(job.summary.nextRunAt);
  const schedule = job.schedule;
  if (!schedule || schedule.disabled || !schedule.cron) return '—';
  return job.backupWindow ? 'none in the backup window' : '—';
}

// As the CLI says it: the cron in its time zone, or after which job; kept but disabled ones too.
function describeSchedule(schedule) {
  if (!schedule) return '—';
  const text = schedule.cron ? `${schedule.cron} (${schedule.timezone || 'UTC'})`
    : schedule.afterJob ? `after ${schedule.afterJob}` : '—';
  return schedule.disabled ? `${text}, disabled` : text;
}

// ---------------------------------------------------------------- history

// Sessions a history page shows, the newest: a history of thousands was read every 2 s.
const HISTORY_SHOWN = 200;

function viewHistory(query) {
  const job = query.get('job') || '';
  const body = h('tbody');
  const more = h('p', { class: 'muted', hidden: true },
    `The newest ${HISTORY_SHOWN} sessions; \`sluice session list\` lists all of them.`);
  show(
    h('h1', {}, job ? `Sessions of ${job}` : 'Sessions'),
    job ? h('p', {}, h('a', { href: '#/history' }, 'All jobs')) : null,
    h('table', { 'aria-label': 'Sessions' },
      h('thead', {}, h('tr', {}, ['Session', 'Job', 'State', 'Result', 'Canceled', 'Started', 'Duration', 'Stopped by', 'Items']
        .map((title) => h('th', { scope: 'col' }, title)))),
      body),
    more);
  return poll(async () => {
    const list = await api('GET', `/sessions?limit=${HISTORY_SHOWN}${job ? `&job=${encodeURIComponent(job)}` : ''}`);
    more.hidden = (list.sessions || []).length < HISTORY_SHOWN;
    fill(body, ...(list.sessions || []).map((s) => h('tr', {},
      h('th', { scope: 'row' }, sessionLink(s.id)),
      h('td', {}, s.job),
      h('td', {}, badge(short(s.state, 'SESSION_STATE_'))),
      h('td', {}, badge(short(s.result, 'SESSION_RESULT_'))),
      h('td', {}, canceledText(s)),
      h('td', {}, when(s.createdAt)),
      h('td', {}, duration(s.createdAt, s.endedAt)),
      h('td', {}, s.stoppedBy || '—'),
      // Counted when a session ends; a running one's are on its own page.
      h('td', {}, s.itemStateCounts ? itemCounts(s) : '—'))));
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
        ? h('button', { type: 'button', class: 'danger', 'aria-haspopup': 'dialog',
          onclick: () => askDrain(a.id) }, 'Drain') : null;
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
      h('thead', {}, h('tr', {}, ['Restore point', 'Item', 'Kind', 'Parent', 'Session', 'Created', 'Size', 'Path', 'Damage', 'Verify']
        .map((title) => h('th', { scope: 'col' }, title)))),
      body));
  act(async () => {
    const jobs = await jobSummaries();
    select.append(...jobs.map((j) => h('option', { value: j.name, selected: j.name === job }, j.name)));
    if (!job) return;
    const list = await api('GET', `/jobs/${encodeURIComponent(job)}/restore-points`);
    fill(body, ...(list.restorePoints || []).map((rp) => restorePointRow(job, rp)));
  });
  return () => {};
}

function restorePointRow(job, rp) {
  const outcome = h('span', { 'aria-live': 'polite' });
  // A full point retention is merging into its child is neither verifiable nor restorable
  // until the merge ends (the child and later points are).
  const merging = rp.mergingInto || '';
  const verify = roleAllows('operate') ? h('button', { type: 'button', disabled: Boolean(merging),
    title: merging ? `being merged into ${merging}` : null, onclick: (event) => act(async () => {
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
    // Unspecified: a computer or sim point, or a VM point from before kinds (it stands alone).
    // A merge's base says so instead, as `sluice restore-point list` does.
    h('td', { 'data-field': 'kind' }, merging ? `merging into ${merging}`
      : badge(short(rp.kind, 'RESTORE_POINT_KIND_'))),
    h('td', { 'data-field': 'parent' }, rp.parentId || '—'),
    h('td', {}, sessionLink(rp.sessionId)),
    h('td', {}, when(rp.createdAt)),
    h('td', { class: 'num' }, bytes(rp.sizeBytes)),
    h('td', { class: 'small' }, rp.path),
    // Known damage (a verify or retention's merge check found it): the next backup is full.
    // Else why a merge has not finished yet (the next retention tries again).
    h('td', { class: 'small', 'data-field': 'damage' }, rp.damage ? rp.damage.problem
      : rp.mergeProblem ? `merge failed: ${rp.mergeProblem}` : '—'),
    h('td', {}, verify, outcome));
}
