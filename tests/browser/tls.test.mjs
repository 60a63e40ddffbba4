//! TLS with a real browser: the demo page over https:// and the JS client
//! over wss:// (the page picks the scheme from its own location), with a
//! certificate made by openssl at test time; Chromium runs with
//! --ignore-certificate-errors because nothing trusts that certificate.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  WshubServer, launchBrowser, makeCert, openDemo, sendChat, waitMessage, waitState,
} from './helpers.mjs';

// Node's own fetch (health checks, REST pushes) must accept the test certificate too.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';

let dir;
let server;
let browser;
let alice;
let bob;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wshub-browser-tls-'));
  server = await WshubServer.start({ tls: makeCert(dir) });
  browser = await launchBrowser({ ignoreCertificateErrors: true });
  alice = await openDemo(browser, server, { user: 'alice', connect: '1' });
  bob = await openDemo(browser, server, { user: 'bob', connect: '1' });
  await Promise.all([waitState(alice, 'open'), waitState(bob, 'open')]);
}, { timeout: 60000 });

after(async () => {
  if (browser) await browser.close();
  if (server) await server.dispose();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
}, { timeout: 30000 });

test('the demo page over https:// connects with wss:// and chats', { timeout: 40000 }, async () => {
  assert.match(alice.url(), /^https:\/\//);
  const url = await alice.evaluate(() => window.demo.client._ws.url);
  assert.match(url, /^wss:\/\/localhost:\d+\/api\/ws\/connect/);
  await sendChat(alice, { text: 'hello over TLS', to: 'bob' });
  assert.equal(await waitMessage(bob, { type: 'chat', from: 'alice', content: 'hello over TLS' }), 'hello over TLS');
  await sendChat(bob, { text: 'and back', to: 'alice' });
  assert.equal(await waitMessage(alice, { type: 'chat', from: 'bob', content: 'and back' }), 'and back');

  const res = await server.json('POST', '/api/ws/broadcast', { type: 'notification', content: 'over https' });
  assert.deepEqual(res.body, { sent: 2 });
  assert.equal(await waitMessage(alice, { type: 'notification' }), 'over https');
  assert.equal(await waitMessage(bob, { type: 'notification' }), 'over https');
  assert.deepEqual(alice.pageErrors, []);
  assert.deepEqual(bob.pageErrors, []);
});
