//! The offline queue (bound, order, overflow) and room re-joins after a reconnect.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeWebSocket, makeClient } from './fakes.mjs';

test('sends while disconnected are queued and flushed in order on open', async () => {
  const { client } = await makeClient();
  assert.equal(client.send('chat', { to: 'bob', content: 'one' }), false);
  client.connect();
  assert.equal(client.send('chat', { to: 'bob', content: 'two' }), false);
  assert.equal(client.sendRaw({ type: 'custom', x: 1 }), false);
  assert.equal(client.queued, 3);
  FakeWebSocket.last().open();
  assert.deepEqual(FakeWebSocket.last().sent, [
    { type: 'chat', to: 'bob', content: 'one' },
    { type: 'chat', to: 'bob', content: 'two' },
    { type: 'custom', x: 1 },
  ]);
  assert.equal(client.queued, 0);
  assert.equal(client.send('chat', { content: 'three' }), true);
  assert.deepEqual(FakeWebSocket.last().sent.at(-1), { type: 'chat', content: 'three' });
});

test('over maxQueue the oldest message is dropped with an overflow event', async () => {
  const { client, of } = await makeClient({ options: { maxQueue: 3 } });
  client.connect();
  for (let i = 0; i < 5; i++) client.send('chat', { content: i });
  assert.equal(client.queued, 3);
  assert.deepEqual(of('overflow'), [
    { dropped: { type: 'chat', content: 0 }, queued: 3 },
    { dropped: { type: 'chat', content: 1 }, queued: 3 },
  ]);
  assert.equal(client.stats.dropped, 2);
  FakeWebSocket.last().open();
  assert.deepEqual(FakeWebSocket.last().sent.map((m) => m.content), [2, 3, 4]);
});

test('the default queue holds exactly 100 messages', async () => {
  const { client, of } = await makeClient();
  for (let i = 0; i < 101; i++) client.send('n', { content: i });
  assert.equal(client.queued, 100);
  assert.deepEqual(of('overflow').map((o) => o.dropped.content), [0]);
});

test('messages survive a reconnect in the queue, sent after the room joins', async () => {
  const { client, clock, of } = await makeClient();
  client.connect();
  FakeWebSocket.last().open();
  client.join('r1');
  FakeWebSocket.last().end(1006);
  client.send('chat', { room: 'r1', content: 'queued while away' });
  clock.advance(of('reconnecting')[0].delay);
  FakeWebSocket.last().open();
  assert.deepEqual(FakeWebSocket.last().sent, [
    { type: 'join', room: 'r1' },
    { type: 'chat', room: 'r1', content: 'queued while away' },
  ]);
});

test('close() drops the queue, and send after close() throws', async () => {
  const { client } = await makeClient();
  client.connect();
  client.send('chat', { content: 'x' });
  client.close();
  assert.equal(client.queued, 0);
  assert.throws(() => client.send('chat', { content: 'y' }), /send after close\(\)/);
});

test('send leaves out empty to/room and absent content; type is required', async () => {
  const { client } = await makeClient();
  client.connect();
  FakeWebSocket.last().open();
  client.send('chat', { to: '', room: '', content: null });
  client.send('typing');
  assert.deepEqual(FakeWebSocket.last().sent, [{ type: 'chat', content: null }, { type: 'typing' }]);
  assert.throws(() => client.send(''), TypeError);
  assert.throws(() => client.send(undefined, { content: 1 }), TypeError);
});

test('rooms are re-joined after every reconnect; left rooms are not', async () => {
  const { client, clock, of } = await makeClient();
  client.connect();
  client.join('lobby'); // before open: joined on open, not queued twice
  FakeWebSocket.last().open();
  client.join('r1');
  client.join('r2');
  client.leave('r2');
  assert.deepEqual(FakeWebSocket.last().sent, [
    { type: 'join', room: 'lobby' },
    { type: 'join', room: 'r1' },
    { type: 'join', room: 'r2' },
    { type: 'leave', room: 'r2' },
  ]);
  for (let i = 0; i < 2; i++) {
    FakeWebSocket.last().end(1012);
    clock.advance(of('reconnecting').at(-1).delay);
    FakeWebSocket.last().open();
    assert.deepEqual(FakeWebSocket.last().sent, [
      { type: 'join', room: 'lobby' },
      { type: 'join', room: 'r1' },
    ]);
  }
  assert.deepEqual([...client.rooms], ['lobby', 'r1']);
  assert.throws(() => client.join(''), TypeError);
});

test('join tokens go with the join and with every re-join; presence reaches on()', async () => {
  const { client, clock, of } = await makeClient();
  client.connect();
  client.join('order:1', { token: 'T1' }); // before open
  FakeWebSocket.last().open();
  client.join('lobby');
  const seen = [];
  client.on('joined', (m) => seen.push(['joined', m.from, m.room]));
  client.on('left', (m) => seen.push(['left', m.from, m.room]));
  FakeWebSocket.last().receive({ type: 'joined', from: 'amy', room: 'lobby' });
  FakeWebSocket.last().receive({ type: 'left', from: 'amy', room: 'lobby' });
  assert.deepEqual(seen, [
    ['joined', 'amy', 'lobby'],
    ['left', 'amy', 'lobby'],
  ]);
  FakeWebSocket.last().end(1006);
  clock.advance(of('reconnecting').at(-1).delay);
  FakeWebSocket.last().open();
  assert.deepEqual(FakeWebSocket.last().sent, [
    { type: 'join', room: 'order:1', token: 'T1' },
    { type: 'join', room: 'lobby' },
  ]);
  // Joining again without a token forgets it; leaving forgets it too.
  client.join('order:1');
  client.leave('lobby');
  FakeWebSocket.last().end(1006);
  clock.advance(of('reconnecting').at(-1).delay);
  FakeWebSocket.last().open();
  assert.deepEqual(FakeWebSocket.last().sent, [{ type: 'join', room: 'order:1' }]);
  assert.throws(() => client.join('r', { token: '' }), TypeError);
  assert.throws(() => client.join('r', { token: 5 }), TypeError);
});
