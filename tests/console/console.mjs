// Drives the Sluice console in headless Chromium (Playwright over Debian's /usr/bin/chromium):
// open the console, see the job, click Start, watch items progress, click Stop > Gracefully,
// see the session end WARNING and canceled with its NOT_PROCESSED items; click Retry, stop the
// retry Immediately and see it end FAILED with CANCELED items; then see both sessions in
// History, the agent and the coordinator, and verify a restore point (and see how the view
// renders one being merged). Until a session has ended its Canceled field says '—', never "no".
// On a secure cluster it first signs in with an API token (the console keeps it in
// sessionStorage). Then, with LARGE_JOB, it starts a session of more than a page of items and
// pages through them; with REVOKED_TOKEN too, it watches that session signed in with that
// token, prints REVOKE_NOW and waits for the Sign in form saying the token was revoked (and no
// banner); it signs in again and stops the large session Immediately.
//
// Run by the end-to-end test `console::start_stop_and_retry_in_the_browser`, which starts
// the cluster and the job. Environment:
//   CONSOLE_URL      the console, e.g. https://127.0.0.1:7480/
//   TOKEN            an API token (operator or admin) to sign in with; none on an insecure cluster
//   CONSOLE_CERT     the coordinator's certificate (PEM): the browser accepts that key (and no
//                    other) for the cluster CA's certificate, which it does not know
//   JOB              the job to start (its items must run for seconds: a rate-limited agent)
//   LARGE_JOB        a job of 1,001 to 1,500 items that runs for minutes (optional)
//   REVOKED_TOKEN    a second operator token, which the caller revokes when the script prints
//                    REVOKE_NOW (optional; only with LARGE_JOB)
//   SCREENSHOT_DIR   where the screenshots go (session-view.png always, large-session.png with
//                    LARGE_JOB, failure.png on failure)
//   CHROMIUM         the browser (default /usr/bin/chromium)
// Prints one line per step; exits 0 when every step passed.
import { createHash, X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const consoleUrl = required('CONSOLE_URL');
const job = required('JOB');
const screenshots = required('SCREENSHOT_DIR');
const token = process.env.TOKEN || '';
const pinnedCert = process.env.CONSOLE_CERT || '';
const largeJob = process.env.LARGE_JOB || '';
const revokedToken = process.env.REVOKED_TOKEN || '';
const STEP_MS = 60_000;
const REVOKE_NOW = 'await: revoke the second token';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`console.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

// Chromium's flag that accepts one server key by its SPKI hash, for the coordinator's
// certificate (the cluster CA is not in the browser's trust store).
function pinArgs() {
  if (!pinnedCert) return [];
  const key = new X509Certificate(readFileSync(pinnedCert)).publicKey;
  const spki = key.export({ type: 'spki', format: 'der' });
  return [`--ignore-certificate-errors-spki-list=${createHash('sha256').update(spki).digest('base64')}`];
}

function step(text) {
  console.log(`step: ${text}`);
}

async function run(page) {
  step(`open ${consoleUrl}`);
  await page.goto(consoleUrl);
  if (token) {
    step('sign in with the API token');
    await signIn(page, token);
  }
  const jobRow = rowOf(page, job);
  await jobRow.waitFor({ timeout: STEP_MS });

  step('click Start');
  await jobRow.getByRole('button', { name: 'Start' }).click();
  await page.waitForURL(/#\/sessions\//, { timeout: STEP_MS });
  await page.getByRole('table', { name: 'Items' }).waitFor({ timeout: STEP_MS });

  step('watch items progress');
  await page.waitForFunction(() => {
    const bars = [...document.querySelectorAll('table.items progress')];
    const states = [...document.querySelectorAll('table.items tr[data-state]')].map((r) => r.dataset.state);
    return bars.some((bar) => bar.value > 0) && states.includes('PROCESSING') && states.includes('PENDING');
  }, null, { timeout: STEP_MS, polling: 100 });

  step('click Stop > Gracefully');
  await page.getByRole('region', { name: 'Session' }).getByRole('button', { name: 'Stop' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.waitFor({ timeout: STEP_MS });
  // The dialog names the job's graceful timeout and starts from it.
  const named = (await dialog.locator('#stop-default').textContent()).match(/graceful timeout: (\d+) s/);
  const given = await dialog.getByLabel(/Graceful timeout/).inputValue();
  if (!named || named[1] !== given) throw new Error(`the Stop dialog names ${named && named[1]} s and starts from ${given}`);
  await dialog.getByRole('button', { name: 'Gracefully' }).click();

  step('see the session end WARNING, canceled, with NOT_PROCESSED items');
  const outcome = await stoppedOutcome(page);
  console.log(`outcome: ${JSON.stringify(outcome)}`);
  const notProcessed = outcome.states.filter((s) => s === 'NOT_PROCESSED').length;
  const succeeded = outcome.states.filter((s) => s === 'SUCCESS').length;
  if (outcome.result !== 'WARNING' || outcome.canceled !== 'yes' || notProcessed === 0 || succeeded === 0) {
    throw new Error(`expected WARNING, canceled, SUCCESS and NOT_PROCESSED items; saw ${JSON.stringify(outcome)}`);
  }
  await page.screenshot({ path: join(screenshots, 'session-view.png') });
  const stoppedSession = page.url();

  await retryAndStopImmediately(page, stoppedSession);
  await visitTheOtherViews(page);
  if (largeJob) {
    const large = await pageThroughALargeSession(page);
    if (revokedToken) await seeTheTokenRevoked(page, large);
    await stopTheLargeSession(page, large);
  }
  step('done');
}

async function signIn(page, secret) {
  await page.getByLabel('API token').fill(secret);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#who').getByText(/\((operator|admin)\)/).waitFor({ timeout: STEP_MS });
}

// The row of a job on Home.
function rowOf(page, name) {
  return page.getByRole('row').filter({ has: page.getByRole('rowheader', { name, exact: true }) });
}

// Waits until the items table shows `count` rows.
async function itemRows(page, count) {
  await page.waitForFunction(
    (n) => document.querySelectorAll('table.items tbody tr[data-item]').length === n,
    count, { timeout: STEP_MS, polling: 100 });
}

// A session of more items than a page (500) shows them a page at a time, with Prev / Next;
// the event stream is asked for the page shown alone, and the counts cover every item.
// Returns the session's URL.
async function pageThroughALargeSession(page) {
  step(`start ${largeJob} and page through its items`);
  const asked = [];
  const listen = (request) => {
    const url = new URL(request.url());
    if (url.pathname.endsWith('/events')) asked.push(url.search);
  };
  page.on('request', listen);
  await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: 'Home' }).click();
  const row = rowOf(page, largeJob);
  await row.waitFor({ timeout: STEP_MS });
  await row.getByRole('button', { name: 'Start' }).click();
  await page.waitForURL(/#\/sessions\//, { timeout: STEP_MS });
  const pager = page.getByRole('navigation', { name: 'Item pages' });
  const range = pager.locator('[data-field="item-range"]');
  await range.getByText(/^Items 1–500 of 1,\d{3}$/).waitFor({ timeout: STEP_MS });
  await itemRows(page, 500);
  const first = await page.locator('table.items tbody tr[data-item]').first().getAttribute('data-item');
  await pager.getByRole('button', { name: 'Next' }).click();
  await range.getByText(/^Items 501–1,000 of /).waitFor({ timeout: STEP_MS });
  await itemRows(page, 500);
  const second = await page.locator('table.items tbody tr[data-item]').first().getAttribute('data-item');
  if (first === second) throw new Error(`page 2 starts with the item of page 1, ${first}`);
  for (const query of ['?itemOffset=0&itemLimit=500', '?itemOffset=500&itemLimit=500']) {
    if (!asked.includes(query)) throw new Error(`no event stream asked for ${query}: ${JSON.stringify(asked)}`);
  }
  const counted = await page.locator('[data-field="item-counts"]').textContent();
  const sum = [...counted.matchAll(/([\d,]+) [A-Z_]+/g)].reduce((a, m) => a + Number(m[1].replace(/,/g, '')), 0);
  const total = Number((await range.textContent()).replace(/.* of /, '').replace(/,/g, ''));
  if (sum !== total) throw new Error(`the counts (${counted}) do not add up to the ${total} items`);
  await pager.getByRole('button', { name: 'Next' }).click();
  await range.getByText(/^Items 1,001–1,\d{3} of /).waitFor({ timeout: STEP_MS });
  if (!await pager.getByRole('button', { name: 'Next' }).isDisabled()) throw new Error('Next is enabled on the last page');
  await pager.getByRole('button', { name: 'Prev' }).click();
  await range.getByText(/^Items 501–1,000 of /).waitFor({ timeout: STEP_MS });
  // The page answers while events come (no timing asserted: it must answer at all).
  const state = await page.evaluate(() => document.querySelector('[data-field="state"]')?.textContent.trim());
  page.off('request', listen);
  console.log(`large session: ${state}, ${await range.textContent()}, ${counted}`);
  await page.screenshot({ path: join(screenshots, 'large-session.png') });
  return page.url();
}

// Watching the large session with a token that gets revoked shows Sign in, saying so, and
// no "lost the connection" banner, neither there nor after going Home.
async function seeTheTokenRevoked(page, sessionUrl) {
  step('watch the large session with the second token');
  await page.locator('#who').getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('API token').waitFor({ timeout: STEP_MS });
  await page.evaluate((url) => { location.hash = new URL(url).hash; }, sessionUrl);
  await signIn(page, revokedToken);
  await page.getByRole('navigation', { name: 'Item pages' }).waitFor({ timeout: STEP_MS });
  console.log(REVOKE_NOW);
  step('see Sign in say that the token was revoked, without a banner');
  await page.locator('[data-field="sign-in-reason"]').getByText(/token was revoked/).waitFor({ timeout: STEP_MS });
  await noBanner(page, 'on the sign-in form');
  await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: 'Home' }).click();
  await page.getByLabel('API token').waitFor({ timeout: STEP_MS });
  await noBanner(page, 'after going Home');
}

async function noBanner(page, where) {
  const alert = page.locator('#alert');
  if (await alert.isVisible()) throw new Error(`a banner ${where}: ${await alert.textContent()}`);
}

// Signs in again (when signed out) and stops the large session Immediately.
async function stopTheLargeSession(page, sessionUrl) {
  step('stop the large session Immediately');
  if (await page.getByLabel('API token').isVisible()) {
    await page.evaluate((url) => { location.hash = new URL(url).hash; }, sessionUrl);
    await signIn(page, token);
  }
  await page.getByRole('navigation', { name: 'Item pages' }).waitFor({ timeout: STEP_MS });
  await page.getByRole('region', { name: 'Session' }).getByRole('button', { name: 'Stop' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Immediately' }).click();
  const outcome = await stoppedOutcome(page);
  console.log(`large outcome: ${outcome.result}, canceled ${outcome.canceled}, ${outcome.states.length} rows shown`);
  if (outcome.canceled !== 'yes' || outcome.states.length !== 500) {
    throw new Error(`expected a canceled session showing a page of 500 items; saw ${outcome.canceled}, ${outcome.states.length}`);
  }
}

// Waits until the session view shows STOPPED; its result, canceled flag and item states.
// Until then (STOPPING) the canceled flag must say '—': "no" reads as "not stopped".
async function stoppedOutcome(page) {
  await page.waitForFunction(() => {
    const field = (name) => document.querySelector(`[data-field="${name}"]`)?.textContent.trim();
    const state = field('state');
    if (state && state !== 'STOPPED' && field('canceled') !== '—') {
      window.canceledBeforeTheEnd = `${state}: canceled ${field('canceled')}`;
    }
    return state === 'STOPPED';
  }, null, { timeout: STEP_MS * 3, polling: 100 });
  const early = await page.evaluate(() => window.canceledBeforeTheEnd);
  if (early) throw new Error(`the session showed ${early} before it ended`);
  return page.evaluate(() => {
    const field = (name) => document.querySelector(`[data-field="${name}"]`)?.textContent.trim();
    const states = [...document.querySelectorAll('table.items tr[data-state]')].map((r) => r.dataset.state);
    return { result: field('result'), canceled: field('canceled'), states };
  });
}

// Retry runs the NOT_PROCESSED items again in a new session; Stop > Immediately cancels them.
async function retryAndStopImmediately(page, stoppedSession) {
  step('click Retry');
  await page.getByRole('region', { name: 'Session' }).getByRole('button', { name: 'Retry' }).click();
  await page.waitForURL((url) => url.href !== stoppedSession && /#\/sessions\//.test(url.href), { timeout: STEP_MS });
  await page.getByText('Retry of').waitFor({ timeout: STEP_MS });

  step('click Stop > Immediately once the retried items run');
  await page.waitForFunction(() => {
    const states = [...document.querySelectorAll('table.items tr[data-state]')].map((r) => r.dataset.state);
    return states.length === 2 && states.every((s) => s === 'PROCESSING');
  }, null, { timeout: STEP_MS, polling: 100 });
  await page.getByRole('region', { name: 'Session' }).getByRole('button', { name: 'Stop' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Immediately' }).click();

  step('see the retry end FAILED and canceled, its items CANCELED');
  const outcome = await stoppedOutcome(page);
  console.log(`retry outcome: ${JSON.stringify(outcome)}`);
  if (outcome.result !== 'FAILED' || outcome.canceled !== 'yes'
    || outcome.states.length !== 2 || !outcome.states.every((s) => s === 'CANCELED')) {
    throw new Error(`expected FAILED, canceled, two CANCELED items; saw ${JSON.stringify(outcome)}`);
  }
}

// History lists both sessions; Agents and Coordinators list the cluster; a restore point
// of the graceful session verifies.
async function visitTheOtherViews(page) {
  const nav = page.getByRole('navigation', { name: 'Sections' });
  step('see both sessions in History');
  await nav.getByRole('link', { name: 'History' }).click();
  const sessions = page.getByRole('table', { name: 'Sessions' }).locator('tbody tr');
  await page.waitForFunction(
    (job) => [...document.querySelectorAll('table tbody tr')].filter((r) => r.textContent.includes(job)).length === 2,
    job, { timeout: STEP_MS, polling: 100 });
  console.log(`history rows: ${await sessions.count()}`);
  step('see how the retry\'s items ended in its History row');
  await page.waitForFunction(
    (job) => [...document.querySelectorAll('table tbody tr')]
      .some((r) => r.textContent.includes(job) && r.textContent.includes('2 CANCELED')),
    job, { timeout: STEP_MS, polling: 100 });

  step('see the agent online in Agents');
  await nav.getByRole('link', { name: 'Agents' }).click();
  await page.getByRole('table', { name: 'Agents' }).getByText('ONLINE').first().waitFor({ timeout: STEP_MS });

  step('see this coordinator in Coordinators');
  await nav.getByRole('link', { name: 'Coordinators' }).click();
  await page.getByRole('table', { name: 'Coordinators' }).locator('tbody tr').first().waitFor({ timeout: STEP_MS });

  step('verify a restore point');
  await nav.getByRole('link', { name: 'Restore points' }).click();
  await page.getByLabel('Job', { exact: true }).selectOption(job);
  const points = page.getByRole('table', { name: 'Restore points' }).locator('tbody tr');
  await points.first().waitFor({ timeout: STEP_MS });
  const count = await points.count();
  if (count !== 2) throw new Error(`expected the 2 restore points of the graceful session, saw ${count}`);
  // Each VM's first restore point is a full one, without a parent.
  const kind = (await points.first().locator('[data-field="kind"]').textContent()).trim();
  const parent = (await points.first().locator('[data-field="parent"]').textContent()).trim();
  if (kind !== 'FULL' || parent !== '—') throw new Error(`expected a FULL point without a parent, saw ${kind}, ${parent}`);
  await points.first().getByRole('button', { name: 'Verify' }).click();
  await points.first().getByText(/ OK: .* checked on /).waitFor({ timeout: STEP_MS });
  await seeAMergingRestorePointRendered(page);
}

// A full restore point retention is merging into its child (a failed merge takes a full
// repository; the e2e merge test checks the API's JSON): the row the view makes of such an
// entry says "merging into CHILD" and why the merge failed, both as text, and offers no Verify.
async function seeAMergingRestorePointRendered(page) {
  step('see a restore point being merged rendered as text');
  const shown = await page.evaluate(() => {
    const child = 'rp-<img src=x onerror="window.injected = true">';
    const problem = '<b>No space left on device</b>';
    const row = restorePointRow('j', { id: 'rp-1', item: 'vm-0', kind: 'RESTORE_POINT_KIND_FULL',
      sessionId: 's1', mergingInto: child, mergeProblem: problem });
    document.body.append(row);
    const field = (name) => row.querySelector(`[data-field="${name}"]`).textContent;
    const shown = { kind: field('kind'), damage: field('damage'), markup: row.querySelectorAll('img, b').length,
      verifyDisabled: row.querySelector('button').disabled };
    row.remove();
    return { ...shown, expected: { kind: `merging into ${child}`, damage: `merge failed: ${problem}` } };
  });
  if (shown.kind !== shown.expected.kind || shown.damage !== shown.expected.damage
    || shown.markup !== 0 || !shown.verifyDisabled || await page.evaluate(() => window.injected === true)) {
    throw new Error(`a merging restore point rendered as ${JSON.stringify(shown)}`);
  }
}

async function main() {
  mkdirSync(screenshots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...pinArgs()],
  });
  const context = await browser.newContext({ viewport: { width: 1180, height: 640 } });
  const page = await context.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') console.log(`browser console: ${message.text()}`);
  });
  page.on('pageerror', (error) => console.log(`page error: ${error.message}`));
  try {
    await run(page);
  } catch (error) {
    const path = join(screenshots, 'failure.png');
    await page.screenshot({ path, fullPage: true }).catch(() => {});
    console.error(`console test failed: ${error.message}\nscreenshot: ${path}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

await main();
