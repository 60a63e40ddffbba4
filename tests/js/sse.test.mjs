//! The opt-in Server-Sent Events fallback: after maxRejections failed
//! upgrades while /health answers, a client with `sseFallback: true`
//! receives over an EventSource on /api/ws/sse (same query, its rooms in
//! `?rooms=`); without the option it goes fatal as before.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeWebSocket, makeClient, settle } from './fakes.mjs';

/** An EventSource whose lifecycle the test drives by hand. */
class FakeEventSource {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.closed = false;
    FakeEventSource.instances.push(this);
  }

  static last() {
    return FakeEventSource.instances[FakeEventSource.instances.length - 1];
  }

  close() {
    this.closed = true;
    this.readyState = 2;
  }

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(obj) {
    this.onmessage?.({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) });
  }

  /** A dropped stream (the browser retries: CONNECTING) or a refused one (CLOSED). */
  fail(readyState) {
    this.readyState = readyState;
    this.onerror?.({});
  }
}

async function rejectedThrice(options) {
  FakeEventSource.instances = [];
  const made = await makeClient({
    fetchMode: 'up',
    url: 'ws://hub.test:8889/api/ws/connect?user_id=alice&token=t%2B1',
    options: { EventSource: FakeEventSource, ...options },
  });
  const fallbacks = [];
  made.client.on('fallback', (d) => fallbacks.push(d));
  made.client.join('lobby');
  made.client.join('team,x');
  made.client.connect();
  for (let i = 0; i < 3; i++) {
    FakeWebSocket.last().end(1006);
    await settle();
    if (made.clock.pending().length > 0) made.clock.advance(60_000);
  }
  return { ...made, fallbacks };
}

test('without sseFallback, three rejections while up are still fatal', async () => {
  const { client, of } = await rejectedThrice({});
  assert.equal(client.state, 'fatal');
  assert.equal(FakeEventSource.instances.length, 0);
  assert.equal(of('fatal').length, 1);
});

test('with sseFallback, the client receives over an event stream', async () => {
  const { client, of, fallbacks } = await rejectedThrice({ sseFallback: true });
  assert.equal(FakeWebSocket.instances.length, 3, 'no fourth upgrade');
  assert.equal(FakeEventSource.instances.length, 1);
  const url = new URL(FakeEventSource.last().url);
  assert.equal(url.protocol, 'http:');
  assert.equal(url.pathname, '/api/ws/sse');
  assert.equal(url.searchParams.get('user_id'), 'alice');
  assert.equal(url.searchParams.get('token'), 't+1', 'the query is kept as it was');
  assert.equal(url.searchParams.get('rooms'), 'lobby,team,x');
  assert.equal(client.transport, 'sse');
  assert.deepEqual(fallbacks, [{ transport: 'sse', url: FakeEventSource.last().url }]);
  assert.equal(of('fatal').length, 0);
  assert.equal(client.state, 'connecting');
  FakeEventSource.last().open();
  assert.equal(client.state, 'open');
  assert.deepEqual(of('open').at(-1), { reconnect: false, transport: 'sse' });
  const got = [];
  client.on('chat', (m) => got.push(m));
  FakeEventSource.last().receive({ type: 'chat', room: 'lobby', content: 'hi' });
  FakeEventSource.last().receive('not json');
  assert.deepEqual(got, [{ type: 'chat', room: 'lobby', content: 'hi' }]);
  assert.equal(of('invalid').length, 1);
  // Receiving only: a send is queued, as while offline.
  assert.equal(client.send('chat', { room: 'lobby', content: 'x' }), false);
  assert.equal(client.queued, 1);
});

test('the stream reconnects by itself, re-opens with new rooms, and a refused one is fatal', async () => {
  const { client, of } = await rejectedThrice({ sseFallback: true });
  const first = FakeEventSource.last();
  first.open();
  first.fail(0);
  assert.equal(client.state, 'reconnecting');
  assert.equal(of('close').at(-1).willReconnect, true);
  first.open();
  assert.equal(client.state, 'open');
  assert.deepEqual(of('open').at(-1), { reconnect: true, transport: 'sse' });
  client.join('news');
  assert.ok(first.closed);
  const second = FakeEventSource.last();
  assert.equal(new URL(second.url).searchParams.get('rooms'), 'lobby,team,x,news');
  client.leave('lobby');
  assert.equal(new URL(FakeEventSource.last().url).searchParams.get('rooms'), 'team,x,news');
  // Events of a replaced stream are ignored.
  const got = [];
  client.on('*', (m) => got.push(m));
  second.receive({ type: 'old' });
  assert.deepEqual(got, []);
  FakeEventSource.last().fail(2);
  assert.equal(client.state, 'fatal');
  assert.equal(of('fatal').at(-1).reason, 'event stream refused');
  // connect() starts over with a WebSocket.
  client.connect();
  assert.equal(client.transport, 'websocket');
  assert.equal(FakeWebSocket.instances.length, 4);
});

test('close() ends the stream; a wss:// URL streams over https://', async () => {
  const { client } = await rejectedThrice({ sseFallback: true });
  const source = FakeEventSource.last();
  client.close();
  assert.ok(source.closed);
  assert.equal(client.state, 'closed');
  FakeEventSource.instances = [];
  const made = await makeClient({
    fetchMode: 'up',
    url: 'wss://hub.test/api/ws/connect',
    options: { EventSource: FakeEventSource, sseFallback: true, maxRejections: 1 },
  });
  made.client.connect();
  FakeWebSocket.last().end(1006);
  await settle();
  assert.equal(FakeEventSource.last().url, 'https://hub.test/api/ws/sse');
});
