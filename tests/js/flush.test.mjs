//! flush() and message dispatch: the matching pong only resolves, closes
//! reject, and every message reaches its type's handlers and '*'.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeWebSocket, makeClient, settle } from './fakes.mjs';

/** Tracks a promise's outcome without awaiting it. */
function watch(promise) {
  const w = { state: 'pending', error: null };
  promise.then(
    () => (w.state = 'resolved'),
    (e) => {
      w.state = 'rejected';
      w.error = e.message;
    },
  );
  return w;
}

async function openClient() {
  const made = await makeClient();
  made.client.connect();
  FakeWebSocket.last().open();
  return { ...made, ws: FakeWebSocket.last() };
}

test('flush resolves on the pong with its nonce, and on nothing else', async () => {
  const { client, ws } = await openClient();
  const pongs = [];
  client.on('pong', (m) => pongs.push(m));
  client.send('chat', { content: 'a' });
  const w = watch(client.flush());
  const ping = ws.sent.at(-1);
  assert.equal(ping.type, 'ping');
  assert.match(ping.content, /^wshub-flush-\d+-\d+$/);
  assert.deepEqual(Object.keys(ping).sort(), ['content', 'type']);
  ws.receive({ type: 'pong' });
  ws.receive({ type: 'pong', content: 'someone-else' });
  ws.receive({ type: 'chat', content: ping.content });
  await settle();
  assert.equal(w.state, 'pending');
  ws.receive({ type: 'pong', content: ping.content });
  await settle();
  assert.equal(w.state, 'resolved');
  // Unrelated pongs reach handlers; the flush's own pong does not.
  assert.deepEqual(pongs, [{ type: 'pong' }, { type: 'pong', content: 'someone-else' }]);
});

test('two flushes are told apart by nonce', async () => {
  const { client, ws } = await openClient();
  const first = watch(client.flush());
  const second = watch(client.flush());
  const [n1, n2] = ws.sent.map((m) => m.content);
  assert.notEqual(n1, n2);
  ws.receive({ type: 'pong', content: n2 });
  await settle();
  assert.deepEqual([first.state, second.state], ['pending', 'resolved']);
  ws.receive({ type: 'pong', content: n1 });
  await settle();
  assert.equal(first.state, 'resolved');
});

test('flush rejects when the connection carrying its ping closes', async () => {
  const { client, ws } = await openClient();
  const w = watch(client.flush());
  ws.end(1006);
  await settle();
  assert.equal(w.state, 'rejected');
  assert.equal(w.error, 'wshub: flush failed: connection closed (1006)');
});

test('flush rejects on close() and after it', async () => {
  const { client } = await openClient();
  const w = watch(client.flush());
  client.close();
  await settle();
  assert.equal(w.error, 'wshub: flush failed: client closed');
  await assert.rejects(client.flush(), /flush while closed/);
});

test('flush while disconnected waits for the reconnect and its queued ping', async () => {
  const { client, clock, of } = await makeClient();
  client.connect();
  FakeWebSocket.last().open();
  FakeWebSocket.last().end(1001);
  client.send('chat', { content: 'later' });
  const w = watch(client.flush());
  clock.advance(of('reconnecting')[0].delay);
  const ws = FakeWebSocket.last();
  ws.open();
  assert.deepEqual(ws.sent.map((m) => m.type), ['chat', 'ping']);
  ws.end(1006); // the ping was written on this socket: its answer can no longer come
  await settle();
  assert.equal(w.state, 'rejected');
});

test('a flush ping dropped from a full queue rejects', async () => {
  const { client, of } = await makeClient({ options: { maxQueue: 1 } });
  const w = watch(client.flush());
  client.send('chat', { content: 'pushes the ping out' });
  await settle();
  assert.equal(w.error, 'wshub: flush ping dropped from a full queue');
  assert.equal(of('overflow')[0].dropped.type, 'ping');
});

test('flush rejects on fatal and after its timeout', async () => {
  const { client, clock, ws } = await openClient();
  const timed = watch(client.flush(1000));
  clock.advance(999);
  await settle();
  assert.equal(timed.state, 'pending');
  clock.advance(1);
  await settle();
  assert.equal(timed.error, 'wshub: flush timed out');
  const w = watch(client.flush());
  ws.end(1008);
  await settle();
  assert.equal(w.state, 'rejected');
  await assert.rejects(client.flush(), /flush while fatal/);
});

test('messages reach their type, then "*"; lifecycle names reach "*" only', async () => {
  const { client, ws, of } = await openClient();
  const seen = [];
  client.on('chat', (m) => seen.push(['chat', m.content]));
  client.on('error', (m) => seen.push(['error', m.content]));
  client.on('*', (m) => seen.push(['*', m.type]));
  const off = client.on('notice', () => seen.push(['notice']));
  off();
  ws.receive({ type: 'chat', from: 'bob', content: 'hi' });
  ws.receive({ type: 'error', content: 'not in room r1' });
  ws.receive({ type: 'notice' });
  ws.receive({ type: 'open', content: 'from server' });
  ws.receive('not json');
  ws.receive({ no: 'type' });
  assert.deepEqual(seen, [
    ['chat', 'hi'],
    ['*', 'chat'],
    ['error', 'not in room r1'],
    ['*', 'error'],
    ['*', 'notice'],
    ['*', 'open'],
  ]);
  assert.equal(of('open').length, 1, 'a message typed "open" is not a lifecycle event');
  assert.equal(of('invalid').length, 2);
});

test('a throwing handler does not stop the others', async () => {
  const { client, ws } = await openClient();
  const seen = [];
  const originalError = console.error;
  console.error = () => {};
  try {
    client.on('chat', () => {
      throw new Error('boom');
    });
    client.on('chat', (m) => seen.push(m.content));
    ws.receive({ type: 'chat', content: 'still here' });
  } finally {
    console.error = originalError;
  }
  assert.deepEqual(seen, ['still here']);
});
