//! recover: true — positions kept from welcome and each message's pos,
//! sent back as ?since= and join's since after a reconnect, and
//! 'recovered' naming the streams that could not be recovered.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeWebSocket, makeClient } from './fakes.mjs';

function query(ws) {
  return new URL(ws.url).searchParams;
}

async function openRecovering() {
  const made = await makeClient({ options: { recover: true, baseDelay: 10 } });
  made.client.connect();
  FakeWebSocket.last().open();
  const recovered = [];
  made.client.on('recovered', (e) => recovered.push(e));
  return { ...made, ws: FakeWebSocket.last(), recovered };
}

/** Drops the socket and opens the next one (the retry delay elapsed). */
function reconnect(clock) {
  FakeWebSocket.last().end(1006);
  clock.advance(1000);
  const ws = FakeWebSocket.last();
  ws.open();
  return ws;
}

test('without recover nothing is added to the URL and nothing is tracked', async () => {
  const { client } = await makeClient();
  client.connect();
  const ws = FakeWebSocket.last();
  assert.equal(ws.url, 'ws://hub.test:8889/api/ws/connect?user_id=alice');
  ws.open();
  ws.receive({ type: 'news', content: 1, pos: 'a:E:1' });
  assert.equal(client.positions.size, 0);
});

test('positions come from welcome and messages, and go back as since', async () => {
  const { client, clock, ws } = await openRecovering();
  assert.equal(query(ws).get('recover'), '1');
  assert.equal(query(ws).get('since'), null);
  assert.equal(query(ws).get('user_id'), 'alice');
  ws.receive({ type: 'welcome', content: { a: 'a:E:3', u: 'u:F:0' } });
  ws.receive({ type: 'news', content: 1, pos: 'a:E:4' });
  ws.receive({ type: 'dm', to: 'alice', content: 2, pos: 'u:F:1' });
  client.join('lobby');
  ws.receive({ type: 'welcome', room: 'lobby', content: { r: 'r:G:7' } });
  ws.receive({ type: 'talk', room: 'lobby', content: 3, pos: 'r:G:8' });
  assert.deepEqual([...client.positions], [['a', 'a:E:4'], ['u', 'u:F:1'], ['r:lobby', 'r:G:8']]);

  const next = reconnect(clock);
  assert.equal(query(next).get('since'), 'a:E:4,u:F:1');
  assert.deepEqual(next.sent, [{ type: 'join', room: 'lobby', since: 'r:G:8' }]);
});

test('a drop during the replay resumes from what arrived, not from the welcome', async () => {
  const { client, clock, ws } = await openRecovering();
  ws.receive({ type: 'welcome', content: { a: 'a:E:2' } });
  let next = reconnect(clock);
  assert.equal(query(next).get('since'), 'a:E:2');
  next.receive({ type: 'welcome', content: { a: 'a:E:9' } });
  next.receive({ type: 'news', content: 3, pos: 'a:E:3' });
  assert.equal(client.positions.get('a'), 'a:E:3');
  next = reconnect(clock);
  assert.equal(query(next).get('since'), 'a:E:3');
});

test('recovered reports the failed streams and moves them to the welcome position', async () => {
  const { client, clock, ws, recovered } = await openRecovering();
  const all = [];
  client.on('*', (m) => all.push(m.type));
  ws.receive({ type: 'welcome', content: { a: 'a:E:2', u: 'u:F:5' } });
  client.join('lobby');
  ws.receive({ type: 'welcome', room: 'lobby', content: { r: 'r:G:1' } });
  const next = reconnect(clock);
  next.receive({ type: 'welcome', content: { a: 'a:X:40', u: 'u:F:6' } });
  next.receive({ type: 'dm', content: 6, pos: 'u:F:6' });
  next.receive({ type: 'recovered', content: { a: { ok: false, replayed: 0 }, u: { ok: true, replayed: 1 } } });
  next.receive({ type: 'welcome', room: 'lobby', content: { r: 'r:G:3' } });
  next.receive({ type: 'talk', room: 'lobby', content: 1, pos: 'r:G:2' });
  next.receive({ type: 'talk', room: 'lobby', content: 2, pos: 'r:G:3' });
  next.receive({ type: 'recovered', room: 'lobby', content: { ok: true, replayed: 2 } });
  assert.deepEqual(recovered.map(({ failed, replayed, room }) => ({ failed, replayed, room })), [
    { failed: ['a'], replayed: 1, room: undefined },
    { failed: [], replayed: 2, room: 'lobby' },
  ]);
  assert.deepEqual([...client.positions], [['a', 'a:X:40'], ['u', 'u:F:6'], ['r:lobby', 'r:G:3']]);
  assert.equal(all.filter((t) => t === 'recovered').length, 2, "'*' sees recovered once each");
  client.leave('lobby');
  assert.equal(client.positions.has('r:lobby'), false);
});

test('a room that failed continues from its welcome position', async () => {
  const { client, clock, ws } = await openRecovering();
  client.join('r1');
  ws.receive({ type: 'welcome', room: 'r1', content: { r: 'r:G:1' } });
  const next = reconnect(clock);
  assert.deepEqual(next.sent, [{ type: 'join', room: 'r1', since: 'r:G:1' }]);
  next.receive({ type: 'welcome', room: 'r1', content: { r: 'r:H:0' } });
  next.receive({ type: 'recovered', room: 'r1', content: { ok: false, replayed: 0 } });
  assert.equal(client.positions.get('r:r1'), 'r:H:0');
});

test('a URL function is read at every attempt, with since added', async () => {
  let n = 0;
  const { WshubClient } = await import('../../clients/js/wshub.js');
  const made = await makeClient();
  const client = new WshubClient(() => `ws://hub.test/api/ws/connect?token=t${++n}`, {
    WebSocket: FakeWebSocket, clock: made.clock, fetch: made.fetch, recover: true, baseDelay: 10,
  });
  client.connect();
  FakeWebSocket.last().open();
  FakeWebSocket.last().receive({ type: 'welcome', content: { a: 'a:E:1' } });
  const next = reconnect(made.clock);
  assert.equal(query(next).get('token'), 't2');
  assert.equal(query(next).get('since'), 'a:E:1');
});
