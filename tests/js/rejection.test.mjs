//! The handshake-rejection policy: a failed upgrade is followed by a
//! GET /health probe; "up" counts as a rejection (fatal after maxRejections
//! in a row), "down" keeps retrying with capped backoff.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeWebSocket, makeClient, settle, stubRandom } from './fakes.mjs';

/** Fails the current attempt before open, lets the probe finish, runs the backoff timer. */
async function failAttempt(clock, of) {
  FakeWebSocket.last().end(1006);
  await settle();
  const r = of('reconnecting');
  if (clockHasTimer(clock)) clock.advance(r[r.length - 1].delay);
}

const clockHasTimer = (clock) => clock.pending().length > 0;

test('three rejections while the server is up: fatal, and no further attempts', async () => {
  const url = 'ws://hub.test:8889/api/ws/connect?user_id=alice&token=bad';
  const { client, clock, fetch, of } = await makeClient({ fetchMode: 'up', url });
  client.connect();
  for (let i = 0; i < 3; i++) await failAttempt(clock, of);
  assert.equal(client.state, 'fatal');
  assert.equal(FakeWebSocket.instances.length, 3);
  assert.deepEqual(fetch.calls.map((c) => c.url), Array(3).fill('http://hub.test:8889/health'));
  assert.equal(fetch.calls[0].init.cache, 'no-store');
  assert.deepEqual(of('fatal'), [{ reason: 'handshake rejected 3 times while the server is up', code: 1006 }]);
  assert.equal(of('reconnecting').length, 2);
  assert.equal(client.stats.rejections, 3);
  assert.deepEqual(clock.pending(), []);
  clock.advance(10 * 60 * 1000);
  await settle();
  assert.equal(FakeWebSocket.instances.length, 3);
  assert.equal(client.stats.attempts, 3);
});

test('the probe of a wss:// URL goes to https://', async () => {
  const { client, clock, fetch, of } = await makeClient({
    fetchMode: 'up',
    url: 'wss://hub.test/api/ws/connect?token=x',
  });
  client.connect();
  await failAttempt(clock, of);
  assert.deepEqual(fetch.calls.map((c) => c.url), ['https://hub.test/health']);
});

test('a server that is down is retried forever, with the delay capped', async () => {
  const restore = stubRandom(() => 0.5);
  try {
    const { client, clock, fetch, of } = await makeClient({ fetchMode: 'down' });
    client.connect();
    for (let i = 0; i < 25; i++) await failAttempt(clock, of);
    assert.equal(client.state, 'connecting');
    assert.equal(of('fatal').length, 0);
    assert.equal(FakeWebSocket.instances.length, 26);
    assert.equal(fetch.calls.length, 25);
    const delays = of('reconnecting').map((r) => r.delay);
    assert.deepEqual(delays.slice(0, 8), [250, 500, 1000, 2000, 4000, 8000, 15000, 15000]);
    assert.ok(delays.slice(6).every((d) => d === 15000));
    assert.equal(client.stats.rejections, 0);
  } finally {
    restore();
  }
});

test('a 502 from /health (a proxy in front of a dead server) counts as down', async () => {
  const { client, clock, of } = await makeClient({ fetchMode: 'bad-gateway' });
  client.connect();
  for (let i = 0; i < 6; i++) await failAttempt(clock, of);
  assert.equal(of('fatal').length, 0);
  assert.equal(FakeWebSocket.instances.length, 7);
});

test('only consecutive rejections count: a down probe breaks the streak', async () => {
  const { client, clock, fetch, of } = await makeClient({ fetchMode: 'up' });
  client.connect();
  await failAttempt(clock, of);
  await failAttempt(clock, of);
  fetch.mode = 'down';
  await failAttempt(clock, of);
  fetch.mode = 'up';
  await failAttempt(clock, of);
  await failAttempt(clock, of);
  assert.equal(client.state, 'connecting');
  await failAttempt(clock, of);
  assert.equal(client.state, 'fatal');
  assert.equal(FakeWebSocket.instances.length, 6);
});

test('an open connection resets the rejection streak', async () => {
  const { client, clock, fetch, of } = await makeClient({ fetchMode: 'up' });
  client.connect();
  await failAttempt(clock, of);
  await failAttempt(clock, of);
  FakeWebSocket.last().open();
  FakeWebSocket.last().end(1006); // dropped after open: no probe
  assert.equal(fetch.calls.length, 2);
  clock.advance(of('reconnecting').at(-1).delay);
  await failAttempt(clock, of);
  await failAttempt(clock, of);
  assert.equal(client.state, 'connecting');
  await failAttempt(clock, of);
  assert.equal(client.state, 'fatal');
});

test('maxRejections: 1 gives up after the first rejection', async () => {
  const { client, clock, of } = await makeClient({ fetchMode: 'up', options: { maxRejections: 1 } });
  client.connect();
  await failAttempt(clock, of);
  assert.equal(client.state, 'fatal');
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(of('reconnecting').length, 0);
});

test('healthUrl: null disables the probe; failures are retried as "down"', async () => {
  const { client, clock, fetch, of } = await makeClient({ fetchMode: 'up', options: { healthUrl: null } });
  client.connect();
  for (let i = 0; i < 5; i++) await failAttempt(clock, of);
  assert.equal(fetch.calls.length, 0);
  assert.equal(of('fatal').length, 0);
  assert.equal(FakeWebSocket.instances.length, 6);
});

test('close() while the probe is in flight: the probe result is ignored', async () => {
  const { client, clock, fetch, of } = await makeClient({ fetchMode: 'up' });
  client.connect();
  FakeWebSocket.last().end(1006);
  client.close();
  await settle();
  assert.equal(fetch.calls.length, 1);
  assert.equal(client.state, 'closed');
  assert.equal(of('reconnecting').length, 0);
  assert.deepEqual(clock.pending(), []);
});
