//! Two real Chromium pages on the demo, against the real wshub binary:
//! the static files are served, users chat (to a user, a room, everyone),
//! the online list fills, and a REST broadcast reaches both pages.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  WshubServer, launchBrowser, openDemo, sendChat, waitMessage, waitState,
} from './helpers.mjs';

let server;
let browser;
let alice;
let bob;

before(async () => {
  server = await WshubServer.start();
  browser = await launchBrowser();
  alice = await openDemo(browser, server, { user: 'alice', connect: '1' });
  bob = await openDemo(browser, server, { user: 'bob', connect: '1' });
  await Promise.all([waitState(alice, 'open'), waitState(bob, 'open')]);
}, { timeout: 60000 });

after(async () => {
  if (browser) await browser.close();
  if (server) await server.dispose();
}, { timeout: 30000 });

test('the demo page and its scripts are served with the right types', { timeout: 20000 }, async () => {
  const expected = {
    '/': 'text/html',
    '/demo.js': 'javascript',
    '/demo.css': 'text/css',
    '/wshub.js': 'javascript',
  };
  for (const [urlPath, type] of Object.entries(expected)) {
    const res = await fetch(`${server.base}${urlPath}`);
    assert.equal(res.status, 200, `GET ${urlPath}`);
    assert.ok((res.headers.get('content-type') || '').includes(type), `GET ${urlPath}: ${res.headers.get('content-type')}`);
  }
});

test('alice sends to bob; bob sees it from alice and answers', { timeout: 30000 }, async () => {
  await sendChat(alice, { text: 'hello bob', to: 'bob' });
  assert.equal(await waitMessage(bob, { type: 'chat', from: 'alice' }), 'hello bob');
  await sendChat(bob, { text: 'hi alice', to: 'alice' });
  assert.equal(await waitMessage(alice, { type: 'chat', from: 'bob' }), 'hi alice');
  // Anything the server sent alice for her own message would arrive before this flush's pong.
  await alice.evaluate(() => window.demo.client.flush(5000));
  assert.equal(await alice.locator('#messages li[data-dir="in"][data-from="alice"]').count(), 0, 'alice does not get her message to bob');
});

test('a room message reaches the other member, not the sender; "everyone" reaches the others', { timeout: 30000 }, async () => {
  await bob.fill('#room-name', 'lobby');
  await bob.click('#join');
  await alice.fill('#room-name', 'lobby');
  await alice.click('#join');
  // Both joins are processed once a flush on each page has round-tripped.
  await bob.evaluate(() => window.demo.client.flush(5000));
  await alice.evaluate(() => window.demo.client.flush(5000));
  await sendChat(alice, { text: 'hi room', room: 'lobby' });
  assert.equal(await waitMessage(bob, { type: 'chat', from: 'alice', room: 'lobby' }), 'hi room');
  await alice.evaluate(() => window.demo.client.flush(5000));
  assert.equal(await alice.locator('#messages li[data-dir="in"][data-room="lobby"]').count(), 0, 'the sender is not echoed');
  await sendChat(bob, { text: 'to all', all: true });
  assert.equal(await waitMessage(alice, { from: 'bob', content: 'to all' }), 'to all');
});

test('the online panel lists both users', { timeout: 20000 }, async () => {
  await alice.waitForFunction(() => document.querySelector('#online-count').textContent === '2', null, { timeout: 10000 });
  const users = await alice.locator('#online-users li').allTextContents();
  assert.deepEqual(users, ['alice', 'bob']);
  assert.equal(await alice.textContent('#status-note'), '');
});

test('a REST broadcast reaches both pages', { timeout: 30000 }, async () => {
  const res = await server.json('POST', '/api/ws/broadcast', { type: 'notification', content: { title: 'maintenance at 22:00' } });
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, { sent: 2 });
  const want = JSON.stringify({ title: 'maintenance at 22:00' });
  assert.equal(await waitMessage(alice, { type: 'notification' }), want);
  assert.equal(await waitMessage(bob, { type: 'notification' }), want);
});

test("the page's own broadcast form posts and reports the count", { timeout: 30000 }, async () => {
  await bob.fill('#bc-type', 'announcement');
  await bob.fill('#bc-content', 'from the form');
  await bob.click('#broadcast');
  await bob.waitForSelector('#broadcast-result[data-status="200"]', { timeout: 10000 });
  assert.equal(await bob.textContent('#broadcast-result'), 'sent to 2 session(s)');
  assert.equal(await waitMessage(alice, { type: 'announcement' }), 'from the form');
  assert.equal(await waitMessage(bob, { type: 'announcement' }), 'from the form');
  assert.deepEqual([...alice.pageErrors, ...bob.pageErrors], []);
});
