// Opens a plain EventSource in headless Chromium (Debian's package) and prints every event it
// dispatches as one JSON line on stdout: {"id": lastEventId, "type": ..., "data": ...}; errors
// (the browser's reconnect attempts) as {"error": readyState}. It runs until it is killed.
// Used by tests/real_clients.rs: node tests/clients/chromium.mjs <stream URL> [type,type,...]
// (the event types to listen for besides `message`).
import { chromium } from 'playwright-core';

const url = process.argv[2];
const types = (process.argv[3] || '').split(',').filter(Boolean);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
const page = await browser.newPage();
page.on('console', (m) => console.error(`console.${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => console.error(`pageerror: ${e}`));
await page.exposeFunction('report', (line) => console.log(line));
await page.evaluate(({ url, types }) => {
  const es = new EventSource(url);
  const report = (e) => window.report(JSON.stringify({ id: e.lastEventId, type: e.type, data: e.data }));
  es.onmessage = report;
  for (const type of types) es.addEventListener(type, report);
  es.onerror = () => window.report(JSON.stringify({ error: es.readyState }));
}, { url, types });
process.on('SIGTERM', async () => { await browser.close(); process.exit(0); });
await new Promise(() => {});
