//! Which close codes reconnect and which stop the client for good,
//! including our own close().
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FATAL_CODES, RETRY_CODES, shouldRetry } from '../../clients/js/wshub.js';
import { FakeWebSocket, makeClient, stubRandom } from './fakes.mjs';

const RETRIED = [1001, 1005, 1006, 1011, 1012, 1013, 1014, 1016, 3000, 3999];
const FATAL = [1000, 1002, 1003, 1007, 1008, 1009, 1010, 1015, 4000, 4001, 4999];

test('shouldRetry follows the documented table', () => {
  assert.deepEqual([...RETRY_CODES], [1001, 1005, 1006, 1011, 1012, 1013, 1014]);
  assert.deepEqual([...FATAL_CODES], [1000, 1002, 1003, 1007, 1008, 1009, 1010, 1015]);
  for (const code of RETRIED) assert.equal(shouldRetry(code), true, `code ${code}`);
  for (const code of FATAL) assert.equal(shouldRetry(code), false, `code ${code}`);
});

for (const code of RETRIED) {
  test(`close ${code} after open reconnects without probing /health`, async () => {
    const restore = stubRandom(() => 0.5);
    try {
      const { client, clock, fetch, of } = await makeClient();
      client.connect();
      FakeWebSocket.last().open();
      FakeWebSocket.last().end(code, 'bye');
      assert.deepEqual(of('close'), [{ code, reason: 'bye', willReconnect: true }]);
      assert.deepEqual(of('reconnecting'), [{ attempt: 1, delay: 250, code }]);
      assert.equal(client.state, 'reconnecting');
      assert.equal(fetch.calls.length, 0);
      clock.advance(249);
      assert.equal(FakeWebSocket.instances.length, 1);
      clock.advance(1);
      assert.equal(FakeWebSocket.instances.length, 2);
      assert.equal(client.state, 'connecting');
      assert.equal(of('fatal').length, 0);
    } finally {
      restore();
    }
  });
}

for (const code of FATAL) {
  test(`close ${code} from the server stops the client with 'fatal'`, async () => {
    const { client, clock, of } = await makeClient();
    client.connect();
    FakeWebSocket.last().open();
    FakeWebSocket.last().end(code, 'no');
    assert.deepEqual(of('close'), [{ code, reason: 'no', willReconnect: false }]);
    assert.deepEqual(of('fatal'), [{ reason: `closed with code ${code}`, code }]);
    assert.equal(client.state, 'fatal');
    assert.deepEqual(clock.pending(), []);
    clock.advance(10 * 60 * 1000);
    assert.equal(FakeWebSocket.instances.length, 1);
  });
}

test('our own close() ends the session: 1000 is sent, nothing reconnects', async () => {
  const { client, clock, of } = await makeClient();
  client.connect();
  const ws = FakeWebSocket.last();
  ws.open();
  client.close();
  assert.deepEqual(ws.closedWith, { code: 1000, reason: '' });
  assert.equal(client.state, 'closed');
  ws.end(1000);
  assert.deepEqual(of('close'), [{ code: 1000, reason: '', willReconnect: false }]);
  assert.equal(of('fatal').length, 0);
  assert.equal(of('reconnecting').length, 0);
  clock.advance(10 * 60 * 1000);
  assert.equal(FakeWebSocket.instances.length, 1);
});

test('close() while the socket is still connecting does not reconnect on its 1006', async () => {
  const { client, clock, fetch, of } = await makeClient({ fetchMode: 'up' });
  client.connect();
  client.close();
  FakeWebSocket.last().end(1006);
  assert.equal(client.state, 'closed');
  assert.equal(fetch.calls.length, 0);
  assert.equal(of('reconnecting').length, 0);
  clock.advance(60000);
  assert.equal(FakeWebSocket.instances.length, 1);
});

test('close() during the backoff wait cancels the pending attempt', async () => {
  const { client, clock, of } = await makeClient();
  client.connect();
  FakeWebSocket.last().open();
  FakeWebSocket.last().end(1012);
  assert.equal(clock.pending().length, 1);
  client.close();
  assert.deepEqual(clock.pending(), []);
  clock.advance(60000);
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(of('reconnecting').length, 1);
  assert.equal(client.state, 'closed');
});

test('connect() after fatal starts a fresh streak', async () => {
  const { client, of } = await makeClient();
  client.connect();
  FakeWebSocket.last().open();
  FakeWebSocket.last().end(1008);
  assert.equal(client.state, 'fatal');
  client.connect();
  assert.equal(FakeWebSocket.instances.length, 2);
  FakeWebSocket.last().open();
  assert.equal(client.state, 'open');
  assert.deepEqual(of('open'), [{ reconnect: false }, { reconnect: true }]);
});

test('without a WebSocket implementation the client goes fatal at once', async () => {
  const { client, of } = await makeClient({ options: { WebSocket: 42 } });
  client.connect();
  assert.equal(client.state, 'fatal');
  assert.deepEqual(of('fatal'), [{ reason: 'cannot create WebSocket: no WebSocket implementation (pass options.WebSocket)' }]);
});
