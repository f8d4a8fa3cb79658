// Drives the Sluice console in headless Chromium (Playwright over Debian's /usr/bin/chromium):
// open the console, see the job, click Start, watch items progress, click Stop > Gracefully,
// see the session end WARNING and canceled with its NOT_PROCESSED items; click Retry, stop the
// retry Immediately and see it end FAILED with CANCELED items; then see both sessions in
// History, the agent and the coordinator, and verify a restore point. On a secure cluster it
// first signs in with an API token (the console keeps it in sessionStorage).
//
// Run by the end-to-end test `console::start_stop_and_retry_in_the_browser`, which starts
// the cluster and the job. Environment:
//   CONSOLE_URL      the console, e.g. https://127.0.0.1:7480/
//   TOKEN            an API token (operator or admin) to sign in with; none on an insecure cluster
//   CONSOLE_CERT     the coordinator's certificate (PEM): the browser accepts that key (and no
//                    other) for the cluster CA's certificate, which it does not know
//   JOB              the job to start (its items must run for seconds: a rate-limited agent)
//   SCREENSHOT_DIR   where the screenshots go (session-view.png always, failure.png on failure)
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
const STEP_MS = 60_000;

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
    await page.getByLabel('API token').fill(token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#who').getByText(/\((operator|admin)\)/).waitFor({ timeout: STEP_MS });
  }
  const jobRow = page.getByRole('row').filter({ has: page.getByRole('rowheader', { name: job, exact: true }) });
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
  step('done');
}

// Waits until the session view shows STOPPED; its result, canceled flag and item states.
async function stoppedOutcome(page) {
  await page.waitForFunction(() => {
    const field = (name) => document.querySelector(`[data-field="${name}"]`)?.textContent.trim();
    return field('state') === 'STOPPED';
  }, null, { timeout: STEP_MS * 3, polling: 100 });
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
  await points.first().getByRole('button', { name: 'Verify' }).click();
  await points.first().getByText(/ OK: .* checked on /).waitFor({ timeout: STEP_MS });
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
