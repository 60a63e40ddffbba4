//! permessage-deflate with a real browser: Chromium offers the extension by
//! itself; with `compression: true` the server accepts it, Chromium
//! compresses what it sends (keeping its context from message to message)
//! and inflates what the server sends, through the JS client and demo page.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  WshubServer, launchBrowser, openDemo, sendChat, waitMessage, waitState,
} from './helpers.mjs';

let server;
let browser;
let alice;
let bob;

/** What the page's WebSocket negotiated (`WebSocket.extensions`). */
const extensions = (page) => page.evaluate(() => window.demo.client._ws.extensions);

before(async () => {
  server = await WshubServer.start({ compression: true });
  browser = await launchBrowser();
  alice = await openDemo(browser, server, { user: 'alice', connect: '1' });
  bob = await openDemo(browser, server, { user: 'bob', connect: '1' });
  await Promise.all([waitState(alice, 'open'), waitState(bob, 'open')]);
}, { timeout: 60000 });

after(async () => {
  if (browser) await browser.close();
  if (server) await server.dispose();
}, { timeout: 30000 });

test('Chromium negotiates permessage-deflate with server_no_context_takeover', { timeout: 20000 }, async () => {
  for (const page of [alice, bob]) {
    const negotiated = await extensions(page);
    assert.match(negotiated, /^permessage-deflate/, `negotiated: ${negotiated}`);
    assert.match(negotiated, /server_no_context_takeover/);
  }
});

test('long messages both ways, compressed with context takeover, arrive intact', { timeout: 40000 }, async () => {
  // Each message repeats much of the previous one, so Chromium's compressor
  // refers back across messages: the server must follow its context.
  for (let i = 0; i < 4; i += 1) {
    const text = `round ${i}: ${'compressed chat text, over the 128-byte minimum. '.repeat(4 + i)}`;
    await sendChat(alice, { text, to: 'bob' });
    assert.equal(await waitMessage(bob, { type: 'chat', from: 'alice', content: text }), text);
    const answer = `answer ${i}: ${text}`;
    await sendChat(bob, { text: answer, to: 'alice' });
    assert.equal(await waitMessage(alice, { type: 'chat', from: 'bob', content: answer }), answer);
  }
  // Short ones go out uncompressed and arrive all the same.
  await sendChat(alice, { text: 'short', to: 'bob' });
  assert.equal(await waitMessage(bob, { type: 'chat', from: 'alice', content: 'short' }), 'short');
});

test('a room message and a REST broadcast reach both pages', { timeout: 40000 }, async () => {
  await bob.fill('#room-name', 'lobby');
  await bob.click('#join');
  await alice.fill('#room-name', 'lobby');
  await alice.click('#join');
  await bob.evaluate(() => window.demo.client.flush(5000));
  await alice.evaluate(() => window.demo.client.flush(5000));
  const text = 'room message over the compression threshold. '.repeat(5);
  await sendChat(alice, { text, room: 'lobby' });
  assert.equal(await waitMessage(bob, { type: 'chat', from: 'alice', room: 'lobby' }), text);

  const content = { title: 'maintenance', body: 'the service restarts at 22:00 UTC; '.repeat(6) };
  const res = await server.json('POST', '/api/ws/broadcast', { type: 'notification', content });
  assert.deepEqual(res.body, { sent: 2 });
  const want = JSON.stringify(content);
  assert.equal(await waitMessage(alice, { type: 'notification' }), want);
  assert.equal(await waitMessage(bob, { type: 'notification' }), want);
  assert.deepEqual(alice.pageErrors, []);
  assert.deepEqual(bob.pageErrors, []);
  // Both sessions survived every message: no close along the way.
  assert.equal(await alice.getAttribute('#state', 'data-state'), 'open');
  assert.equal(await bob.getAttribute('#state', 'data-state'), 'open');
});
