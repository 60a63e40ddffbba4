//! Backoff: full-jitter bounds, the exact delays for a seeded Math.random,
//! the reset after a stable connection, and no reconnect storm after a
//! server restart (Close 1001 to everyone).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay } from '../../clients/js/wshub.js';
import { FakeWebSocket, makeClient, seeded, settle, stubRandom } from './fakes.mjs';

const BASE = 500;
const CAP = 30000;
const bound = (attempt) => Math.min(CAP, BASE * 2 ** attempt);

test('backoffDelay spans [0, min(cap, base*2^attempt)) exactly', () => {
  const largest = 1 - 2 ** -53; // the largest value Math.random can return
  const expectedBounds = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000];
  expectedBounds.forEach((b, attempt) => {
    assert.equal(bound(attempt), b);
    assert.equal(backoffDelay(attempt, BASE, CAP, () => 0), 0);
    assert.equal(backoffDelay(attempt, BASE, CAP, () => largest), b - 1);
    assert.equal(backoffDelay(attempt, BASE, CAP, () => 0.5), b / 2);
  });
  assert.equal(backoffDelay(5000, BASE, CAP, () => 0.5), 15000, 'a huge attempt stays capped');
});

test('a client whose server is down waits exactly the seeded full-jitter delays', async () => {
  const restore = stubRandom(seeded(42));
  try {
    const { client, clock, of } = await makeClient({ fetchMode: 'down' });
    client.connect();
    for (let i = 0; i < 12; i++) {
      FakeWebSocket.last().end(1006);
      await settle();
      assert.deepEqual(clock.pending(), [of('reconnecting')[i].delay]);
      clock.advance(of('reconnecting')[i].delay);
    }
    const expectedRandom = seeded(42);
    const expected = Array.from({ length: 12 }, (_, i) => Math.floor(expectedRandom() * bound(i)));
    assert.deepEqual(of('reconnecting').map((r) => r.delay), expected);
    assert.deepEqual(of('reconnecting').map((r) => r.attempt), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    of('reconnecting').forEach((r, i) => assert.ok(r.delay >= 0 && r.delay < bound(i), `delay ${i} in range`));
    assert.equal(FakeWebSocket.instances.length, 13);
    assert.equal(of('fatal').length, 0);
  } finally {
    restore();
  }
});

test('the backoff streak resets only after a connection stayed open for stableAfter', async () => {
  const restore = stubRandom(() => 0.5); // delay = bound / 2 reveals the attempt
  try {
    const { client, clock, of } = await makeClient({ options: { stableAfter: 5000 } });
    client.connect();
    // Three short-lived connections: the streak keeps growing.
    for (let i = 0; i < 3; i++) {
      FakeWebSocket.last().open();
      clock.advance(4999);
      FakeWebSocket.last().end(1011);
      clock.advance(of('reconnecting')[i].delay);
    }
    assert.deepEqual(of('reconnecting').map((r) => r.delay), [250, 500, 1000]);
    // One that stayed open for 5 s: the next delay is drawn from [0, base) again.
    FakeWebSocket.last().open();
    clock.advance(5000);
    FakeWebSocket.last().end(1011);
    assert.equal(of('reconnecting')[3].delay, 250);
    assert.equal(of('reconnecting')[3].attempt, 1);
  } finally {
    restore();
  }
});

test('Close 1001 to 200 long-lived clients spreads their reconnects over [0, base)', async () => {
  const restore = stubRandom(seeded(7));
  try {
    const delays = [];
    for (let i = 0; i < 200; i++) {
      const { client, clock, of } = await makeClient();
      client.connect();
      FakeWebSocket.last().open();
      clock.advance(60000);
      FakeWebSocket.last().end(1001, 'server shutting down');
      assert.equal(of('reconnecting').length, 1);
      delays.push(of('reconnecting')[0].delay);
    }
    const expectedRandom = seeded(7); // one draw per client, in order
    assert.deepEqual(delays, Array.from({ length: 200 }, () => Math.floor(expectedRandom() * BASE)));
    assert.equal(Math.min(...delays), 1);
    assert.equal(Math.max(...delays), 497);
    // Per 50 ms slice: about 20 clients each, never all 200 at one instant.
    const perSlice = Array(10).fill(0);
    for (const d of delays) perSlice[Math.floor(d / 50)] += 1;
    assert.deepEqual(perSlice, [16, 19, 16, 17, 19, 27, 21, 19, 21, 25]);
    const perMs = new Map();
    for (const d of delays) perMs.set(d, (perMs.get(d) || 0) + 1);
    assert.equal(Math.max(...perMs.values()), 4, 'the busiest millisecond holds 4 of 200 clients');
  } finally {
    restore();
  }
});
