//! Test doubles for clients/js/wshub.js: a scripted WebSocket, a manual
//! clock, a scripted fetch and a seeded Math.random. Touches no network.

/** A WebSocket whose lifecycle the test drives by hand. */
export class FakeWebSocket {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.instances.push(this);
  }

  /** The most recently constructed socket. */
  static last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  }

  static reset() {
    FakeWebSocket.instances = [];
  }

  send(text) {
    if (this.readyState !== 1) throw new Error(`send on readyState ${this.readyState}`);
    this.sent.push(JSON.parse(text));
  }

  close(code = 1000, reason = '') {
    this.closedWith = { code, reason };
    this.readyState = 2;
  }

  // ---- driven by the test ----
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(obj) {
    this.onmessage?.({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) });
  }

  /** The connection ends with `code` (1006 before open = a failed upgrade). */
  end(code, reason = '') {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }
}

/** A clock whose time only moves when the test calls `advance`. */
export class FakeClock {
  constructor() {
    this.t = 0;
    this.timers = new Map();
    this.nextId = 1;
  }

  now() {
    return this.t;
  }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + ms, fn, ms });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** Delays of the timers still pending, in creation order. */
  pending() {
    return [...this.timers.values()].map((t) => t.ms);
  }

  /** Moves time forward, firing due timers in deadline order. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let due = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (due === null || timer.at < due[1].at)) due = [id, timer];
      }
      if (due === null) break;
      this.timers.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
    }
    this.t = end;
  }
}

/** A fetch that answers every call with `mode`: 'up' (200), 'down' (throws) or 'bad-gateway' (502). */
export function fakeFetch(mode = 'up') {
  const f = async (url, init) => {
    f.calls.push({ url, init });
    if (f.mode === 'down') throw new TypeError('fetch failed');
    const status = f.mode === 'bad-gateway' ? 502 : 200;
    return { type: 'basic', ok: status < 300, status };
  };
  f.calls = [];
  f.mode = mode;
  return f;
}

/** mulberry32: a small seeded PRNG giving uniform floats in [0, 1). */
export function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Replaces Math.random with `fn` until the returned restore function runs. */
export function stubRandom(fn) {
  const original = Math.random;
  Math.random = fn;
  return () => {
    Math.random = original;
  };
}

/** Lets pending promise callbacks (the health probe) run. */
export async function settle() {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

export const URL_WS = 'ws://hub.test:8889/api/ws/connect?user_id=alice';

/**
 * A client wired to the fakes, with every lifecycle event recorded.
 * `fetchMode` scripts the health probe ('down' unless given).
 */
export async function makeClient({ fetchMode = 'down', options = {}, url = URL_WS } = {}) {
  const { WshubClient } = await import('../../clients/js/wshub.js');
  FakeWebSocket.reset();
  const clock = new FakeClock();
  const fetch = fakeFetch(fetchMode);
  const client = new WshubClient(url, { WebSocket: FakeWebSocket, clock, fetch, ...options });
  const events = [];
  for (const name of ['open', 'close', 'reconnecting', 'fatal', 'overflow', 'state', 'invalid']) {
    client.on(name, (payload) => events.push([name, payload]));
  }
  const of = (name) => events.filter((e) => e[0] === name).map((e) => e[1]);
  return { client, clock, fetch, events, of };
}
