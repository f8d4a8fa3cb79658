// Drives the Sluice console in headless Chromium (Playwright over Debian's /usr/bin/chromium):
// open the console, see the job, click Start, watch items progress, click Stop > Gracefully,
// see the session end WARNING and canceled with its NOT_PROCESSED items.
//
// Run by the end-to-end test `console::start_and_stop_gracefully_in_the_browser`, which starts
// the cluster and the job. Environment:
//   CONSOLE_URL      the console, e.g. http://127.0.0.1:7480/
//   JOB              the job to start (its items must run for seconds: a rate-limited agent)
//   SCREENSHOT_DIR   where the screenshots go (session-view.png always, failure.png on failure)
//   CHROMIUM         the browser (default /usr/bin/chromium)
// Prints one line per step; exits 0 when every step passed.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const consoleUrl = required('CONSOLE_URL');
const job = required('JOB');
const screenshots = required('SCREENSHOT_DIR');
const STEP_MS = 60_000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`console.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

function step(text) {
  console.log(`step: ${text}`);
}

async function run(page) {
  step(`open ${consoleUrl}`);
  await page.goto(consoleUrl);
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
  await page.waitForFunction(() => {
    const field = (name) => document.querySelector(`[data-field="${name}"]`)?.textContent.trim();
    return field('state') === 'STOPPED';
  }, null, { timeout: STEP_MS * 3, polling: 100 });
  const outcome = await page.evaluate(() => {
    const field = (name) => document.querySelector(`[data-field="${name}"]`)?.textContent.trim();
    const states = [...document.querySelectorAll('table.items tr[data-state]')].map((r) => r.dataset.state);
    return { result: field('result'), canceled: field('canceled'), states };
  });
  console.log(`outcome: ${JSON.stringify(outcome)}`);
  const notProcessed = outcome.states.filter((s) => s === 'NOT_PROCESSED').length;
  const succeeded = outcome.states.filter((s) => s === 'SUCCESS').length;
  if (outcome.result !== 'WARNING' || outcome.canceled !== 'yes' || notProcessed === 0 || succeeded === 0) {
    throw new Error(`expected WARNING, canceled, SUCCESS and NOT_PROCESSED items; saw ${JSON.stringify(outcome)}`);
  }
  await page.screenshot({ path: join(screenshots, 'session-view.png') });
  step('done');
}

async function main() {
  mkdirSync(screenshots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
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
