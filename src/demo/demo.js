//! src/demo/demo.js — wires the demo page (src/demo/index.html) to a
//! WshubClient from /wshub.js, polls GET /api/ws/status and the members of
//! the selected room (GET /api/ws/rooms/R, again on each joined/left event)
//! and posts to /api/ws/broadcast. Touches only this page's DOM and this server.
//! Query parameters (used by tests/browser/): user, token, connect=1,
//! base, cap, maxRejections, stableAfter (client options, milliseconds).
import { WshubClient } from '/wshub.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MAX_ROWS = 200;
const POLL_MS = 2000;

/** Client options from the query string; anything absent keeps the client default. */
function clientOptions() {
  // Resumes after a reconnect when the server keeps history (ignored otherwise).
  const opts = { recover: true };
  for (const [param, key] of [['base', 'baseDelay'], ['cap', 'maxDelay'], ['maxRejections', 'maxRejections'], ['stableAfter', 'stableAfter']]) {
    const value = Number(params.get(param));
    if (params.has(param) && Number.isFinite(value) && value >= 0) opts[key] = value;
  }
  return opts;
}

function socketUrl(user, token) {
  const url = new URL('/api/ws/connect', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  if (user) url.searchParams.set('user_id', user);
  if (token) url.searchParams.set('token', token);
  return url.toString();
}

let client = null;

// ---- connection ------------------------------------------------------------

function connect() {
  if (client) client.close();
  const user = $('user-id').value.trim();
  client = new WshubClient(socketUrl(user, $('token').value.trim()), clientOptions());
  window.demo.client = client;
  wire(client, user);
  client.connect();
  renderRooms();
}

function wire(c, user) {
  const mine = (handler) => (payload) => c === client && handler(payload);
  c.on('state', mine(({ state }) => renderState(state)));
  c.on('open', mine(({ reconnect }) => logEvent(reconnect ? 'reconnected' : `connected as ${user || '(anonymous)'}`)));
  c.on('close', mine(({ code, reason, willReconnect }) => {
    logEvent(`closed ${code}${reason ? ` "${reason}"` : ''}${willReconnect ? '' : ' (final)'}`);
  }));
  c.on('reconnecting', mine(({ attempt, delay, code }) => {
    $('state-detail').textContent = `retry ${attempt} in ${(delay / 1000).toFixed(1)} s (after ${code})`;
    logEvent(`reconnecting: attempt ${attempt} in ${delay} ms`);
  }));
  c.on('fatal', mine(({ reason }) => {
    $('state-detail').textContent = `gave up: ${reason}`;
    logEvent(`gave up: ${reason}`);
  }));
  c.on('recovered', mine(({ room, replayed, failed }) => {
    const where = room ? ` in ${room}` : '';
    const lost = failed.length > 0 ? `; could not recover ${failed.join(', ')}: reload` : '';
    logEvent(`recovered ${replayed} message${replayed === 1 ? '' : 's'}${where}${lost}`);
  }));
  c.on('overflow', mine(({ dropped }) => logEvent(`offline queue full: dropped a "${dropped.type}" message`)));
  c.on('*', mine((msg) => addMessage('in', msg)));
  c.on('joined', mine(() => pollMembers()));
  c.on('left', mine(() => pollMembers()));
}

function renderState(state) {
  const badge = $('state');
  badge.textContent = state;
  badge.dataset.state = state;
  if (state === 'open' || state === 'connecting') $('state-detail').textContent = '';
  $('disconnect').disabled = !client || state === 'closed' || state === 'fatal';
  renderStats();
}

function renderStats() {
  $('attempts').textContent = client ? client.stats.attempts : 0;
  $('opens').textContent = client ? client.stats.opens : 0;
  $('queued').textContent = client ? client.queued : 0;
}

// ---- sending and rooms -----------------------------------------------------

function sendTo(target) {
  const text = $('message').value;
  if (!client || text === '') return;
  const fields = { content: text };
  if (target === 'user') fields.to = $('send-to').value.trim();
  if (target === 'room') fields.room = $('send-room').value;
  if ((target === 'user' && !fields.to) || (target === 'room' && !fields.room)) {
    logEvent(target === 'user' ? 'enter a user id to send to' : 'join a room first');
    return;
  }
  try {
    const now = client.send('chat', fields);
    addMessage('out', { type: 'chat', ...fields }, now ? '' : 'queued');
    $('message').value = '';
  } catch (err) {
    logEvent(err.message);
  }
  renderStats();
}

function renderRooms() {
  const rooms = client ? [...client.rooms] : [];
  const list = $('rooms');
  list.replaceChildren(...rooms.map((room) => chip(room)));
  const select = $('send-room');
  const selected = select.value;
  select.replaceChildren(...rooms.map((room) => new Option(room, room, false, room === selected)));
  pollMembers();
}

/** Shows who is in the room selected under "To room" (the room you are in). */
async function pollMembers() {
  const room = $('send-room').value;
  $('members-room').textContent = room ? `#${room}` : '(no room)';
  if (!room) {
    $('members').replaceChildren();
    return;
  }
  try {
    const res = await fetch(`/api/ws/rooms/${encodeURIComponent(room)}`, { headers: adminHeaders(), cache: 'no-store' });
    if (!res.ok || $('send-room').value !== room) return;
    const listing = await res.json();
    const users = Array.isArray(listing.users) ? listing.users : [];
    $('members').replaceChildren(...users.map((u) => chip(u)));
  } catch {
    // The status poll reports an unreachable server.
  }
}

function roomAction(join) {
  const room = $('room-name').value.trim();
  if (!client || room === '') return;
  if (join) client.join(room);
  else client.leave(room);
  logEvent(`${join ? 'joined' : 'left'} room ${room}`);
  renderRooms();
}

// ---- rendering messages ----------------------------------------------------

function addMessage(dir, msg, note = '') {
  const li = document.createElement('li');
  li.className = `msg ${dir}`;
  li.dataset.dir = dir;
  li.dataset.type = msg.type;
  if (msg.from) li.dataset.from = msg.from;
  if (msg.room) li.dataset.room = msg.room;
  const content = typeof msg.content === 'string' ? msg.content : JSON.stringify(msg.content ?? null);
  li.dataset.content = content;
  li.append(
    span('time', clockTime()),
    span('type', msg.type),
    span('route', route(dir, msg)),
    span('content', content),
  );
  if (note) li.append(span('note', note));
  prepend($('messages'), li);
}

function route(dir, msg) {
  if (dir === 'out') return msg.room ? `→ #${msg.room}` : msg.to ? `→ ${msg.to}` : '→ everyone';
  const from = msg.from || 'server';
  return msg.room ? `${from} in #${msg.room}` : from;
}

function logEvent(text) {
  const li = document.createElement('li');
  li.append(span('time', clockTime()), document.createTextNode(` ${text}`));
  prepend($('events'), li);
}

function prepend(list, li) {
  list.prepend(li);
  while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
}

function clockTime() {
  return new Date().toTimeString().slice(0, 8);
}

function span(cls, text) {
  const el = document.createElement('span');
  el.className = cls;
  el.textContent = text;
  return el;
}

function chip(text, onClick) {
  const li = document.createElement('li');
  li.textContent = text;
  if (onClick) {
    li.tabIndex = 0;
    li.title = 'send to this user';
    li.addEventListener('click', onClick);
  }
  return li;
}

// ---- REST: status poll and broadcast ---------------------------------------

function adminHeaders() {
  const token = $('admin-token').value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function pollStatus() {
  const note = $('status-note');
  try {
    const res = await fetch('/api/ws/status', { headers: adminHeaders(), cache: 'no-store' });
    if (res.status === 401) {
      note.textContent = 'The server has an admin token set: enter it under REST broadcast to see who is online.';
      return;
    }
    if (!res.ok) {
      note.textContent = `GET /api/ws/status answered ${res.status}`;
      return;
    }
    const status = await res.json();
    note.textContent = '';
    $('online-count').textContent = status.online_count;
    const users = Array.isArray(status.online_users) ? status.online_users : [];
    $('online-users').replaceChildren(...users.map((u) => chip(u, () => {
      $('send-to').value = u;
      $('message').focus();
    })));
  } catch {
    note.textContent = 'Server unreachable.';
  }
}

async function broadcast() {
  const out = $('broadcast-result');
  const raw = $('bc-content').value;
  let content = raw;
  try {
    content = JSON.parse(raw);
  } catch {
    // Not JSON: send the text as a string.
  }
  const body = { type: $('bc-type').value.trim() || 'notification', content };
  const room = $('bc-room').value.trim();
  if (room) body.room = room;
  try {
    const res = await fetch('/api/ws/broadcast', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...adminHeaders() },
      body: JSON.stringify(body),
    });
    const reply = await res.json().catch(() => ({}));
    out.textContent = res.ok ? `sent to ${reply.sent} session(s)` : `${res.status}: ${reply.error || 'failed'}`;
    out.dataset.status = res.status;
  } catch (err) {
    out.textContent = `failed: ${err.message}`;
    out.dataset.status = 'error';
  }
}

// ---- start -----------------------------------------------------------------

function onSubmit(id, fn) {
  $(id).addEventListener('submit', (ev) => {
    ev.preventDefault();
    fn();
  });
}

function start() {
  window.demo = { client: null };
  $('user-id').value = params.get('user') || `user-${1000 + Math.floor(Math.random() * 9000)}`;
  $('token').value = params.get('token') || '';
  onSubmit('connect-form', connect);
  onSubmit('send-form', () => sendTo('user'));
  onSubmit('room-form', () => roomAction(true));
  onSubmit('broadcast-form', broadcast);
  $('disconnect').addEventListener('click', () => client && client.close());
  $('send-room-btn').addEventListener('click', () => sendTo('room'));
  $('send-all').addEventListener('click', () => sendTo('all'));
  $('leave').addEventListener('click', () => roomAction(false));
  $('clear').addEventListener('click', () => $('messages').replaceChildren());
  $('send-room').addEventListener('change', () => pollMembers());
  pollStatus();
  setInterval(() => {
    pollStatus();
    pollMembers();
  }, POLL_MS);
  if (params.get('connect') === '1') connect();
  document.body.dataset.ready = '1';
}

start();
