// Opens a web page in headless Chromium (Debian's package) and prints, one per line on stdout,
// every console.log message of the page that is JSON; any other console message, and page
// errors, go to stdout as {"console": type, "text": ...} so a test can refuse them. It runs
// until it is killed. Used by tests/browser_pages.rs: node tests/clients/page.mjs <page URL>
import { chromium } from 'playwright-core';

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
const page = await browser.newPage();
page.on('console', (m) => {
  if (m.type() === 'log') {
    try {
      console.log(JSON.stringify(JSON.parse(m.text())));
      return;
    } catch {}
  }
  console.log(JSON.stringify({ console: m.type(), text: m.text() }));
});
page.on('pageerror', (e) => console.log(JSON.stringify({ console: 'pageerror', text: String(e) })));
await page.goto(url);
process.on('SIGTERM', async () => { await browser.close(); process.exit(0); });
await new Promise(() => {});
