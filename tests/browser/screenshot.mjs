//! Regenerates docs/demo.png: two demo pages (alice and bob) chatting on a
//! real wshub server, side by side. Not a test; run `npm run screenshot`
//! in tests/browser (WSHUB_BIN as for the tests). Writes only docs/demo.png.
import path from 'node:path';
import {
  REPO, WshubServer, launchBrowser, openDemo, sendChat, waitMessage, waitState,
} from './helpers.mjs';

const OUT = path.join(REPO, 'docs/demo.png');

async function main() {
  const server = await WshubServer.start();
  const browser = await launchBrowser();
  try {
    const alice = await openDemo(browser, server, { user: 'alice', connect: '1' });
    const bob = await openDemo(browser, server, { user: 'bob', connect: '1' });
    await Promise.all([waitState(alice, 'open'), waitState(bob, 'open')]);
    for (const page of [alice, bob]) {
      await page.fill('#room-name', 'lobby');
      await page.click('#join');
      await page.evaluate(() => window.demo.client.flush(5000));
    }
    await sendChat(alice, { text: 'Hi Bob! Did the order ship?', to: 'bob' });
    await waitMessage(bob, { from: 'alice', content: 'Hi Bob! Did the order ship?' });
    await sendChat(bob, { text: 'Yes, tracking SF123456789', to: 'alice' });
    await waitMessage(alice, { from: 'bob', content: 'Yes, tracking SF123456789' });
    await sendChat(alice, { text: 'Thanks, see you in the lobby', room: 'lobby' });
    await waitMessage(bob, { from: 'alice', room: 'lobby' });
    await server.json('POST', '/api/ws/broadcast', { type: 'notification', content: { title: 'Maintenance tonight at 22:00' } });
    await waitMessage(alice, { type: 'notification' });
    await waitMessage(bob, { type: 'notification' });
    for (const page of [alice, bob]) {
      await page.fill('#send-to', page === alice ? 'bob' : 'alice');
      await page.waitForFunction(() => document.querySelector('#online-count').textContent === '2', null, { timeout: 10000 });
    }

    const shots = await Promise.all([alice, bob].map((p) => p.screenshot({ type: 'png' })));
    const canvas = await (await browser.newContext({ viewport: { width: 1816, height: 820 } })).newPage();
    const img = (buf) => `<img src="data:image/png;base64,${buf.toString('base64')}">`;
    await canvas.setContent(`<body style="margin:0;display:flex;gap:16px;background:#c9ced8">${img(shots[0])}${img(shots[1])}</body>`);
    await canvas.waitForFunction(() => [...document.images].every((i) => i.complete));
    await canvas.screenshot({ path: OUT, type: 'png' });
    process.stdout.write(`wrote ${OUT}\n`);
  } finally {
    await browser.close();
    await server.dispose();
  }
}

main().catch((err) => {
  process.stderr.write(`${err.stack}\n`);
  process.exitCode = 1;
});
