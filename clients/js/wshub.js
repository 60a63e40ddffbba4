//! wshub.js — the browser (and Node ≥ 20) client for a wshub server.
//! Holds one class, `WshubClient`: connect, reconnect with full-jitter
//! backoff, the handshake-rejection policy (probe `GET /health`), the offline
//! queue, room re-joins, `flush()`, (opt-in, `recover`) positions kept and
//! resumed after a reconnect, and (opt-in, `sseFallback`) receiving
//! over Server-Sent Events when WebSocket upgrades keep failing while the
//! server is up. It touches nothing but the WebSocket, EventSource, fetch
//! and timer implementations it is given (globals by default).
//! No dependencies, no build step: serve it as-is and `import` it.

/** Close codes after which the client reconnects (transient conditions). */
export const RETRY_CODES = new Set([
  1001, // going away: the server is restarting or shutting down
  1005, // no status: the peer closed without a code
  1006, // abnormal: TCP dropped, or the upgrade failed (see the rejection policy)
  1011, // internal error on the server
  1012, // service restart
  1013, // try again later: wshub closed us as a slow consumer
  1014, // bad gateway (a proxy could not reach the server)
]);

/** Close codes after which retrying cannot help: the client stops ('fatal'). */
export const FATAL_CODES = new Set([
  1000, // normal closure: the session was ended on purpose
  1002, // protocol error
  1003, // unsupported data
  1007, // invalid payload (bad UTF-8)
  1008, // policy violation
  1009, // message too big
  1010, // mandatory extension missing
  1015, // TLS handshake failure
]);

/**
 * Whether a close with `code` (not caused by our own `close()`) is retried.
 * 4000–4999 are application codes: never retried. Codes this table does not
 * name (3000–3999, unassigned 1xxx) are treated as transient and retried.
 * @param {number} code
 * @returns {boolean}
 */
export function shouldRetry(code) {
  if (RETRY_CODES.has(code)) return true;
  if (FATAL_CODES.has(code)) return false;
  if (code >= 4000 && code <= 4999) return false;
  return true;
}

/**
 * Full-jitter backoff: a uniform delay in [0, min(cap, base * 2^attempt)).
 * @param {number} attempt 0 for the first retry of a streak
 * @param {number} base milliseconds
 * @param {number} cap milliseconds
 * @param {() => number} random uniform in [0, 1)
 * @returns {number} whole milliseconds
 */
export function backoffDelay(attempt, base, cap, random) {
  const bound = Math.min(cap, base * 2 ** attempt);
  return Math.floor(random() * bound);
}

/** Names the client emits itself; a server message of one of these types is delivered to '*' only. */
export const LIFECYCLE_EVENTS = Object.freeze([
  'open', 'close', 'reconnecting', 'fatal', 'overflow', 'state', 'invalid', 'fallback',
]);

/**
 * The stream a position belongs to: 'a', 'u', or 'r:<room>' ('' if the
 * text is not a position).
 * @param {string} pos "<kind>:<epoch>:<offset>"
 * @param {string} [room] the message's room, for 'r' positions
 */
export function streamOf(pos, room) {
  if (typeof pos !== 'string') return '';
  const kind = pos.split(':', 1)[0];
  if (kind === 'a' || kind === 'u') return kind;
  if (kind === 'r' && typeof room === 'string' && room !== '') return `r:${room}`;
  return '';
}

const DEFAULTS = Object.freeze({
  baseDelay: 500,
  maxDelay: 30000,
  stableAfter: 5000,
  maxRejections: 3,
  maxQueue: 100,
  probeTimeout: 5000,
  sseFallback: false,
  recover: false,
});

const OPEN = 1;
const STREAM_CLOSED = 2; // EventSource.CLOSED: the browser will not retry
let nonceCounter = 0;

/** A WebSocket client for wshub's JSON message protocol. */
export class WshubClient {
  /**
   * @param {string | (() => string)} url ws:// or wss:// URL of /api/ws/connect,
   *   or a function returning it (read at every attempt: refresh a token there)
   * @param {object} [options] see clients/js/README.md for every option
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' | 'fatal' */
    this.state = 'idle';
    /** Counters since construction; `attempts` counts WebSocket constructions. */
    this.stats = { attempts: 0, opens: 0, rejections: 0, dropped: 0 };
    this.rooms = new Set();
    /** room → the join token it was joined with (token mode), re-sent on reconnect. */
    this._roomTokens = new Map();
    /** 'websocket', or 'sse' after the fallback (receiving only). */
    this.transport = 'websocket';
    this._handlers = new Map();
    this._queue = [];
    this._flushes = new Map();
    this._ws = null;
    this._source = null;
    this._timer = null;
    this._retry = 0;
    this._rejections = 0;
    this._openedAt = null;
    this._generation = 0; // bumped per attempt so a stale probe cannot act
    /**
     * With `recover: true`: the last position seen per stream ('a', 'u',
     * 'r:<room>'), sent back on reconnect to resume.
     */
    this.positions = new Map();
    this._asked = new Set(); // streams this connection asked to resume
    this._welcome = new Map(); // this connection's welcome positions
  }

  // ---- public API ---------------------------------------------------------

  /** Starts connecting (also after `close()` or 'fatal'). No-op while active. */
  connect() {
    if (this.state === 'connecting' || this.state === 'open' || this.state === 'reconnecting') return;
    this._closeStream();
    this._retry = 0;
    this._rejections = 0;
    this._attempt();
  }

  /**
   * Closes for good: no reconnect, the offline queue is dropped and pending
   * `flush()` promises reject. `connect()` may start again later.
   * @param {number} [code] 1000 or 3000–4999, as the WebSocket API allows
   * @param {string} [reason]
   */
  close(code = 1000, reason = '') {
    this._clearTimer();
    this._queue = [];
    this._rejectFlushes(() => true, 'client closed');
    this._setState('closed');
    this._closeStream();
    const ws = this._ws;
    if (ws && ws.readyState <= OPEN) ws.close(code, reason);
  }

  /**
   * Registers `handler` for a lifecycle event or a message type; '*' gets every message.
   * @returns {() => void} a function that unregisters it
   */
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this.off(type, handler);
  }

  /** Unregisters a handler registered with `on`. */
  off(type, handler) {
    const set = this._handlers.get(type);
    if (set) set.delete(handler);
  }

  /**
   * Sends `{type, to?, room?, content?}`; empty `to`/`room` are left out.
   * @returns {boolean} true if written to the socket now, false if queued
   */
  send(type, { to, room, content } = {}) {
    if (typeof type !== 'string' || type === '') throw new TypeError('wshub: type must be a non-empty string');
    const msg = { type };
    if (to) msg.to = to;
    if (room) msg.room = room;
    if (content !== undefined) msg.content = content;
    return this.sendRaw(msg);
  }

  /**
   * Sends any object as one JSON text frame; queued while disconnected.
   * @returns {boolean} true if written to the socket now, false if queued
   */
  sendRaw(obj) {
    if (this.state === 'closed') throw new Error('wshub: send after close()');
    const text = JSON.stringify(obj);
    if (this._isOpen()) {
      this._ws.send(text);
      return true;
    }
    this._enqueue(text, obj);
    return false;
  }

  /**
   * Joins `room` now (if open) and again after every reconnect. `token`: a
   * join token from your backend (server in `rooms.join: token` mode), sent
   * with this join and every re-join. A refused join arrives as an `error`.
   */
  join(room, { token } = {}) {
    if (typeof room !== 'string' || room === '') throw new TypeError('wshub: room must be a non-empty string');
    if (token !== undefined && (typeof token !== 'string' || token === '')) {
      throw new TypeError('wshub: token must be a non-empty string');
    }
    const added = !this.rooms.has(room);
    this.rooms.add(room);
    if (token === undefined) this._roomTokens.delete(room);
    else this._roomTokens.set(room, token);
    if (this._isOpen()) this._ws.send(this._joinText(room));
    else if (added && this._source) this._openStream();
  }

  /** Leaves `room` and stops re-joining it. */
  leave(room) {
    const removed = this.rooms.delete(room);
    this.positions.delete(`r:${room}`);
    this._roomTokens.delete(room);
    if (this._isOpen()) this._ws.send(JSON.stringify({ type: 'leave', room }));
    else if (removed && this._source) this._openStream();
  }

  _joinText(room, since) {
    const join = { type: 'join', room };
    const token = this._roomTokens.get(room);
    if (token !== undefined) join.token = token;
    if (since) join.since = since;
    return JSON.stringify(join);
  }

  /**
   * Resolves once the server has processed everything sent before it: sends
   * `{"type":"ping","content":<nonce>}` and waits for the pong carrying the
   * same nonce. Rejects if the connection carrying the ping closes, on
   * `close()`/'fatal', if the ping is dropped from a full queue, or after
   * `timeoutMs` (0: no timeout).
   * @param {number} [timeoutMs]
   * @returns {Promise<void>}
   */
  flush(timeoutMs = 0) {
    if (this.state === 'closed' || this.state === 'fatal') {
      return Promise.reject(new Error(`wshub: flush while ${this.state}`));
    }
    const nonce = `wshub-flush-${++nonceCounter}-${Math.floor(this._random() * 1e9)}`;
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, socket: null, timer: null };
      this._flushes.set(nonce, entry);
      if (timeoutMs > 0) {
        entry.timer = this._clock().setTimeout(() => this._settleFlush(nonce, new Error('wshub: flush timed out')), timeoutMs);
      }
      if (this.sendRaw({ type: 'ping', content: nonce })) entry.socket = this._ws;
    });
  }

  /** Number of messages waiting in the offline queue. */
  get queued() {
    return this._queue.length;
  }

  // ---- connection lifecycle ----------------------------------------------

  _attempt() {
    this._timer = null;
    this._generation += 1;
    this._setState('connecting');
    this.stats.attempts += 1;
    const Impl = this.options.WebSocket || globalThis.WebSocket;
    let ws;
    try {
      if (typeof Impl !== 'function') throw new Error('no WebSocket implementation (pass options.WebSocket)');
      ws = new Impl(this._resumeUrl());
    } catch (err) {
      this._fatal({ reason: `cannot create WebSocket: ${err.message}` });
      return;
    }
    this._ws = ws;
    this._openedAt = null;
    ws.onopen = () => this._ws === ws && this._onOpen();
    ws.onmessage = (ev) => this._ws === ws && this._onMessage(ev.data);
    ws.onclose = (ev) => this._ws === ws && this._onClose(ws, ev.code, ev.reason || '');
    // 'error' on a socket is always followed by 'close', which decides what to do.
    ws.onerror = () => {};
  }

  _onOpen() {
    this._openedAt = this._clock().now();
    this._rejections = 0;
    this.stats.opens += 1;
    this._setState('open');
    for (const room of this.rooms) {
      const since = this.options.recover ? this.positions.get(`r:${room}`) : undefined;
      if (since) this._asked.add(`r:${room}`);
      this._ws.send(this._joinText(room, since));
    }
    const queue = this._queue;
    this._queue = [];
    for (const item of queue) {
      this._ws.send(item.text);
      const flush = item.nonce !== undefined && this._flushes.get(item.nonce);
      if (flush) flush.socket = this._ws;
    }
    this._emit('open', { reconnect: this.stats.opens > 1 });
  }

  _onClose(ws, code, reason) {
    this._ws = null;
    const opened = this._openedAt !== null;
    this._rejectFlushes((f) => f.socket === ws, `connection closed (${code})`);
    if (this.state === 'closed') {
      this._emit('close', { code, reason, willReconnect: false });
      return;
    }
    if (opened && this._clock().now() - this._openedAt >= this.options.stableAfter) this._retry = 0;
    if (!shouldRetry(code)) {
      this._emit('close', { code, reason, willReconnect: false });
      this._fatal({ reason: `closed with code ${code}`, code });
      return;
    }
    this._emit('close', { code, reason, willReconnect: true });
    if (opened) this._scheduleRetry(code);
    else this._probeThenRetry(code);
  }

  // An upgrade refused with 401/403/503 looks like 1006 before 'open'; only
  // the health endpoint tells a rejection from a server that is down.
  async _probeThenRetry(code) {
    const generation = this._generation;
    this._setState('reconnecting');
    const up = await this._serverIsUp();
    if (this.state !== 'reconnecting' || this._generation !== generation) return; // close() or connect() meanwhile
    if (!up) {
      this._rejections = 0; // down, not refusing: the streak of rejections is broken
    } else {
      this._rejections += 1;
      this.stats.rejections += 1;
      if (this._rejections >= this.options.maxRejections) {
        // Something between us and the server (a proxy) may break upgrades:
        // receive over Server-Sent Events instead, if the app asked for it.
        if (this.options.sseFallback && this._openStream()) return;
        this._fatal({ reason: `handshake rejected ${this._rejections} times while the server is up`, code });
        return;
      }
    }
    this._scheduleRetry(code);
  }

  async _serverIsUp() {
    const url = this._healthUrl();
    const fetchImpl = this.options.fetch || globalThis.fetch;
    if (!url || typeof fetchImpl !== 'function') return false;
    const ctl = typeof AbortController === 'function' ? new AbortController() : null;
    const timer = ctl ? this._clock().setTimeout(() => ctl.abort(), this.options.probeTimeout) : null;
    try {
      const res = await fetchImpl(url, { mode: 'no-cors', cache: 'no-store', signal: ctl ? ctl.signal : undefined });
      return res.type === 'opaque' || res.ok === true;
    } catch {
      return false;
    } finally {
      if (timer !== null) this._clock().clearTimeout(timer);
    }
  }

  _scheduleRetry(code) {
    const delay = backoffDelay(this._retry, this.options.baseDelay, this.options.maxDelay, () => this._random());
    this._retry += 1;
    this._setState('reconnecting');
    this._timer = this._clock().setTimeout(() => this._attempt(), delay);
    this._emit('reconnecting', { attempt: this._retry, delay, code });
  }

  // ---- Server-Sent Events fallback (receiving only) ------------------------

  // Opens (or re-opens, with the current rooms) the event stream; false if
  // there is no EventSource or no URL for it.
  _openStream() {
    const Impl = this.options.EventSource || globalThis.EventSource;
    const url = this._streamUrl();
    if (typeof Impl !== 'function' || !url) return false;
    const previous = this._source;
    this._source = null;
    if (previous) previous.close();
    let source;
    try {
      source = new Impl(url);
    } catch {
      return false;
    }
    this._generation += 1;
    this._source = source;
    this.stats.streams = (this.stats.streams || 0) + 1;
    if (this.transport !== 'sse') {
      this.transport = 'sse';
      this._emit('fallback', { transport: 'sse', url });
    }
    this._setState('connecting');
    source.onopen = () => this._source === source && this._onStreamOpen();
    source.onmessage = (ev) => this._source === source && this._onMessage(ev.data);
    source.onerror = () => this._source === source && this._onStreamError(source);
    return true;
  }

  _onStreamOpen() {
    this._rejections = 0;
    this.stats.opens += 1;
    this._setState('open');
    this._emit('open', { reconnect: this.stats.opens > 1, transport: 'sse' });
  }

  // The browser reconnects an interrupted stream by itself; a refused one
  // (an HTTP error, a wrong content type) is closed for good.
  _onStreamError(source) {
    if (source.readyState === STREAM_CLOSED) {
      this._source = null;
      this._emit('close', { code: 1006, reason: 'event stream refused', willReconnect: false });
      this._fatal({ reason: 'event stream refused', code: 1006 });
      return;
    }
    if (this.state === 'reconnecting') return;
    this._setState('reconnecting');
    this._emit('close', { code: 1006, reason: 'event stream interrupted', willReconnect: true });
  }

  _closeStream() {
    const source = this._source;
    this._source = null;
    if (source) source.close();
    this.transport = 'websocket';
  }

  // The WebSocket URL with http(s), `/sse` for `/connect`, and the rooms.
  _streamUrl() {
    try {
      const u = new URL(this.options.sseUrl || this._currentUrl());
      if (u.protocol === 'ws:') u.protocol = 'http:';
      if (u.protocol === 'wss:') u.protocol = 'https:';
      if (!this.options.sseUrl) u.pathname = u.pathname.replace(/\/connect$/, '/sse');
      if (this.rooms.size > 0) u.searchParams.set('rooms', [...this.rooms].join(','));
      return u.toString();
    } catch {
      return null;
    }
  }

  _fatal(detail) {
    this._clearTimer();
    this._rejectFlushes(() => true, `gave up: ${detail.reason}`);
    this._setState('fatal');
    this._emit('fatal', detail);
  }

  // ---- messages, queue, flush --------------------------------------------

  _onMessage(data) {
    if (typeof data !== 'string') return; // wshub sends text frames only
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (err) {
      this._emit('invalid', { data, error: err.message });
      return;
    }
    if (msg === null || typeof msg !== 'object' || typeof msg.type !== 'string') {
      this._emit('invalid', { data, error: 'not an object with a string type' });
      return;
    }
    if (msg.type === 'pong' && typeof msg.content === 'string' && this._flushes.has(msg.content)) {
      this._settleFlush(msg.content, null);
      return;
    }
    if (this.options.recover && this._track(msg)) return;
    if (!LIFECYCLE_EVENTS.includes(msg.type)) this._emit(msg.type, msg);
    this._emit('*', msg);
  }

  // ---- recovery (`recover: true`) ------------------------------------------

  // The URL with `recover=1` and the `a`/`u` positions held as `since`.
  _resumeUrl() {
    const url = this._currentUrl();
    this._asked = new Set();
    this._welcome = new Map();
    if (!this.options.recover) return url;
    try {
      const u = new URL(url);
      u.searchParams.set('recover', '1');
      const since = ['a', 'u'].filter((s) => this.positions.has(s));
      for (const s of since) this._asked.add(s);
      if (since.length > 0) u.searchParams.set('since', since.map((s) => this.positions.get(s)).join(','));
      else u.searchParams.delete('since');
      return u.toString();
    } catch {
      return url;
    }
  }

  // Keeps positions from welcome, each message's `pos` and `recovered`;
  // true when the message was a `recovered` (emitted here, enriched).
  _track(msg) {
    if (msg.type === 'welcome' && msg.content && typeof msg.content === 'object') {
      for (const [kind, pos] of Object.entries(msg.content)) {
        const stream = kind === 'r' ? streamOf(pos, msg.room) : streamOf(pos);
        if (!stream) continue;
        this._welcome.set(stream, pos);
        // A stream being resumed keeps its old position until `recovered`,
        // so a drop during the replay resumes from what really arrived.
        if (!this._asked.has(stream)) this.positions.set(stream, pos);
      }
      return false;
    }
    if (msg.type === 'recovered' && msg.content && typeof msg.content === 'object') {
      const results = typeof msg.room === 'string'
        ? [[`r:${msg.room}`, msg.content]]
        : Object.entries(msg.content).map(([kind, r]) => [kind, r]);
      const failed = [];
      let replayed = 0;
      for (const [stream, result] of results) {
        this._asked.delete(stream);
        if (result && result.ok === true) replayed += Number(result.replayed) || 0;
        else failed.push(stream);
        // Reloaded or complete: continue from the welcome's position.
        const fresh = this._welcome.get(stream);
        if (fresh && !(result && result.ok === true && this.positions.has(stream))) this.positions.set(stream, fresh);
      }
      const event = { ...msg, failed, replayed };
      this._emit('recovered', event);
      this._emit('*', event);
      return true;
    }
    if (typeof msg.pos === 'string') {
      const stream = streamOf(msg.pos, msg.room);
      if (stream) this.positions.set(stream, msg.pos);
    }
    return false;
  }

  _enqueue(text, obj) {
    const nonce = obj && obj.type === 'ping' && this._flushes.has(obj.content) ? obj.content : undefined;
    this._queue.push({ text, nonce });
    while (this._queue.length > Math.max(0, this.options.maxQueue)) {
      const dropped = this._queue.shift();
      this.stats.dropped += 1;
      if (dropped.nonce !== undefined) this._settleFlush(dropped.nonce, new Error('wshub: flush ping dropped from a full queue'));
      this._emit('overflow', { dropped: JSON.parse(dropped.text), queued: this._queue.length });
    }
  }

  _settleFlush(nonce, error) {
    const entry = this._flushes.get(nonce);
    if (!entry) return;
    this._flushes.delete(nonce);
    if (entry.timer !== null) this._clock().clearTimeout(entry.timer);
    if (error) entry.reject(error);
    else entry.resolve();
  }

  _rejectFlushes(pred, why) {
    for (const [nonce, entry] of [...this._flushes]) {
      if (pred(entry)) this._settleFlush(nonce, new Error(`wshub: flush failed: ${why}`));
    }
  }

  // ---- small helpers -----------------------------------------------------

  _emit(type, payload) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(payload);
      } catch (err) {
        // One broken handler must not stop the others or the client.
        if (typeof console !== 'undefined') console.error(`wshub: '${type}' handler threw`, err);
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    const previous = this.state;
    this.state = state;
    this._emit('state', { state, previous });
  }

  _isOpen() {
    return this.state === 'open' && this._ws !== null && this._ws.readyState === OPEN;
  }

  _clearTimer() {
    if (this._timer !== null) this._clock().clearTimeout(this._timer);
    this._timer = null;
  }

  _currentUrl() {
    return typeof this.url === 'function' ? this.url() : this.url;
  }

  _healthUrl() {
    if (this.options.healthUrl !== undefined) return this.options.healthUrl;
    try {
      const u = new URL(this._currentUrl());
      u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
      u.pathname = '/health';
      u.search = '';
      u.hash = '';
      return u.toString();
    } catch {
      return null;
    }
  }

  _random() {
    return this.options.random ? this.options.random() : Math.random();
  }

  _clock() {
    return this.options.clock || SYSTEM_CLOCK;
  }
}

const SYSTEM_CLOCK = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id),
});
