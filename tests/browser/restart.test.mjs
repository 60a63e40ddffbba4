//! Server restart: SIGTERM closes every page with 1001, the server exits 0,
//! a new server starts on the same port, and both pages reconnect within
//! the backoff bound, re-join their room and chat again.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  WshubServer, launchBrowser, openDemo, sendChat, sleep, waitMessage, waitState,
} from './helpers.mjs';

const BASE_MS = 200;
const CAP_MS = 2000;
// After the server is back, a page waits at most one backoff delay (< cap)
// plus one failed attempt and its /health probe, both on loopback.
const RECONNECT_BOUND_MS = CAP_MS + 2000;

const cleanup = [];
after(async () => {
  for (const fn of cleanup.reverse()) await fn();
}, { timeout: 30000 });

test('both pages reconnect after a server restart and chat again', { timeout: 90000 }, async () => {
  const first = await WshubServer.start();
  const port = first.port;
  cleanup.push(() => first.dispose());
  const browser = await launchBrowser();
  cleanup.push(() => browser.close());
  const query = { connect: '1', base: String(BASE_MS), cap: String(CAP_MS) };
  const alice = await openDemo(browser, first, { ...query, user: 'alice' });
  const bob = await openDemo(browser, first, { ...query, user: 'bob' });
  await Promise.all([waitState(alice, 'open'), waitState(bob, 'open')]);
  for (const page of [alice, bob]) {
    await page.fill('#room-name', 'ops');
    await page.click('#join');
    await page.evaluate(() => window.demo.client.flush(5000));
  }

  const exit = await first.stop();
  assert.deepEqual(exit, { code: 0, signal: null }, `exit after SIGTERM; log:\n${first.stderr}`);
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => ['connecting', 'reconnecting'].includes(document.querySelector('#state').dataset.state), null, { timeout: 5000 });
    const events = await page.locator('#events li').allTextContents();
    assert.ok(events.some((e) => e.includes('closed 1001')), `a Close 1001 was seen: ${events.join(' | ')}`);
  }
  await sleep(1500); // both pages try (and fail) while the server is down

  const second = new WshubServer({ port });
  cleanup.push(() => second.dispose());
  await second.start();
  const back = Date.now();
  await Promise.all([waitState(alice, 'open', RECONNECT_BOUND_MS + 5000), waitState(bob, 'open', RECONNECT_BOUND_MS + 5000)]);
  const took = Date.now() - back;
  assert.ok(took <= RECONNECT_BOUND_MS, `reconnected ${took} ms after the restart (bound ${RECONNECT_BOUND_MS} ms)`);
  for (const page of [alice, bob]) {
    assert.equal(await page.textContent('#opens'), '2');
    assert.equal(await page.evaluate(() => window.demo.client.stats.rejections <= 1), true, 'at most one probe raced the restart');
  }

  // Rooms were re-joined by the client: a room message flows without a new join.
  await alice.evaluate(() => window.demo.client.flush(5000));
  await bob.evaluate(() => window.demo.client.flush(5000));
  await sendChat(alice, { text: 'back in ops', room: 'ops' });
  assert.equal(await waitMessage(bob, { type: 'chat', from: 'alice', room: 'ops' }), 'back in ops');
  await sendChat(bob, { text: 'welcome back', to: 'alice' });
  assert.equal(await waitMessage(alice, { type: 'chat', from: 'bob', content: 'welcome back' }), 'welcome back');
  assert.deepEqual([...alice.pageErrors, ...bob.pageErrors], []);
});
