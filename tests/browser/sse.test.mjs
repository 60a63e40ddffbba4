//! Server-Sent Events in a real browser: Chromium's own EventSource
//! receives what is pushed, the connection is cut (a loopback TCP relay
//! between the browser and the server drops it and refuses reconnects for
//! a while), messages are pushed meanwhile, and the browser's automatic
//! reconnect with Last-Event-ID gets every one of them once, in order,
//! before live ones.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { WshubServer, freePort, launchBrowser, sleep } from './helpers.mjs';

const cleanup = [];
after(async () => {
  for (const fn of cleanup.reverse()) await fn();
}, { timeout: 30000 });

/** A TCP relay on 127.0.0.1 that the test can cut and hold shut. */
async function relay(targetPort) {
  const port = await freePort();
  const pairs = new Set();
  const heads = [];
  let open = true;
  const server = net.createServer((client) => {
    if (!open) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    let head = '';
    client.on('data', (d) => {
      if (head.length < 4096) {
        head += d.toString('latin1');
        if (head.includes('\r\n\r\n')) heads.push(head.slice(0, head.indexOf('\r\n\r\n')));
      }
    });
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    port,
    heads,
    /** Drops every relayed connection and refuses new ones. */
    cut() {
      open = false;
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
    },
    reopen() {
      open = true;
    },
    close: () => new Promise((resolve) => {
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      server.close(resolve);
    }),
  };
}

test('EventSource receives, survives a cut and resumes with nothing lost or repeated', { timeout: 90000 }, async () => {
  const server = await WshubServer.start({ adminToken: 'adm', historySize: 100 });
  cleanup.push(() => server.dispose());
  const proxy = await relay(server.port);
  cleanup.push(() => proxy.close());
  const browser = await launchBrowser();
  cleanup.push(() => browser.close());
  const context = await browser.newContext();
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  await page.goto(`http://127.0.0.1:${proxy.port}/health`);
  await page.evaluate(() => {
    window.got = [];
    window.ids = [];
    window.resets = [];
    window.opens = 0;
    const source = new EventSource('/api/ws/sse?user_id=amy&rooms=lobby');
    source.onopen = () => {
      window.opens += 1;
    };
    source.onmessage = (event) => {
      window.got.push(JSON.parse(event.data));
      window.ids.push(event.lastEventId);
    };
    source.addEventListener('reset', (event) => window.resets.push(event.data));
    window.source = source;
  });
  await page.waitForFunction(() => window.opens === 1, null, { timeout: 10000 });

  const auth = { Authorization: 'Bearer adm' };
  // Three streams: the user's, the room's and everyone's.
  const push = async (n) => {
    const kind = ['send', 'room', 'all'][n % 3];
    const body = kind === 'send'
      ? { type: 'n', to: 'amy', content: n }
      : kind === 'room' ? { type: 'n', room: 'lobby', content: n } : { type: 'n', content: n };
    const path = kind === 'send' ? '/api/ws/send' : '/api/ws/broadcast';
    const res = await server.json('POST', path, body, auth);
    assert.equal(res.status, 200, JSON.stringify(res.body));
  };
  for (let n = 1; n <= 6; n++) await push(n);
  await page.waitForFunction(() => window.got.length === 6, null, { timeout: 10000 });
  const ids = await page.evaluate(() => window.ids);
  assert.ok(ids.every((id) => id !== ''), `every event has an id: ${ids}`);

  // Cut: the browser sees the stream drop and keeps retrying through the
  // relay, which refuses it while the next messages are pushed.
  proxy.cut();
  await sleep(300);
  for (let n = 7; n <= 12; n++) await push(n);
  await sleep(500);
  proxy.reopen();
  await page.waitForFunction(() => window.opens === 2, null, { timeout: 20000 });
  for (let n = 13; n <= 15; n++) await push(n);
  await page.waitForFunction(() => window.got.length >= 15, null, { timeout: 10000 });
  await sleep(300);
  const got = await page.evaluate(() => window.got.map((m) => m.content));
  assert.equal(got.length, 15, `nothing repeated: ${got}`);
  assert.deepEqual(got.slice(0, 6), [1, 2, 3, 4, 5, 6]);
  // The missed ones are replayed stream by stream, each stream in order,
  // all of them before the live ones.
  const missed = got.slice(6, 12);
  assert.deepEqual([...missed].sort((a, b) => a - b), [7, 8, 9, 10, 11, 12], `nothing lost: ${got}`);
  for (const stream of [0, 1, 2]) {
    const own = missed.filter((n) => n % 3 === stream);
    assert.deepEqual(own, [...own].sort((a, b) => a - b), `stream ${stream} in order: ${got}`);
  }
  assert.deepEqual(got.slice(12), [13, 14, 15]);
  assert.deepEqual(await page.evaluate(() => window.resets), []);
  const resumed = proxy.heads.filter((h) => h.startsWith('GET /api/ws/sse')).at(-1);
  assert.match(resumed, /\r\nLast-Event-ID: \S+/i, `the browser sent its last id:\n${resumed}`);
  assert.deepEqual(pageErrors, []);
});
