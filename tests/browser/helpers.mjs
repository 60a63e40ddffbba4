//! Shared pieces of the real-browser tests: start/stop the wshub binary on a
//! free loopback port with a temp config.yaml, launch Debian's Chromium via
//! playwright-core, open demo pages. Touches only 127.0.0.1, temp dirs and
//! the processes it starts (killed by PID).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = process.env.WSHUB_BIN || path.join(REPO, 'target/debug/wshub');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

const started = new Set();
process.on('exit', () => {
  // Last resort if a test died before its own cleanup: never leave a server behind.
  for (const child of started) if (child.exitCode === null) process.kill(child.pid, 'SIGKILL');
});

/** A free TCP port on 127.0.0.1: listen on port 0, note the port, close. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * config.yaml for a test server; `jwtSecret` turns token checks on,
 * `compression` permessage-deflate, `tls` ({cert, key} file paths) TLS,
 * `historySize` history (section `history:`).
 */
export function configYaml({ port, jwtSecret = '', adminToken = '', compression = false, tls = null, historySize = 0 }) {
  const tlsLines = tls ? ['tls:', `  cert: "${tls.cert}"`, `  key: "${tls.key}"`] : [];
  const historyLines = historySize > 0 ? ['history:', `  size: ${historySize}`] : [];
  return [
    'app:',
    '  host: "127.0.0.1"',
    `  port: "${port}"`,
    '  demo: true',
    'log:',
    '  level: info',
    'websocket:',
    '  enable: true',
    '  ping_period: 2s',
    '  pong_wait: 6s',
    '  shutdown_timeout: 2s',
    `  admin_token: "${adminToken}"`,
    `  compression: ${compression}`,
    'jwt:',
    `  secret: "${jwtSecret}"`,
    ...tlsLines,
    ...historyLines,
    '',
  ].join('\n');
}

/** One wshub process with its own temp config; `stderr` keeps its log for failure messages. */
export class WshubServer {
  constructor(options) {
    this.options = options;
    this.port = options.port;
    this.base = `${options.tls ? 'https' : 'http'}://${options.tls ? 'localhost' : '127.0.0.1'}:${options.port}`;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wshub-browser-'));
    this.config = path.join(this.dir, 'config.yaml');
    fs.writeFileSync(this.config, configYaml(options));
    this.child = null;
    this.stderr = '';
  }

  static async start(options = {}) {
    const server = new WshubServer({ ...options, port: options.port ?? (await freePort()) });
    await server.start();
    return server;
  }

  async start(timeoutMs = 15000) {
    if (!fs.existsSync(BIN)) throw new Error(`wshub binary not found at ${BIN} (build it or set WSHUB_BIN)`);
    const child = spawn(BIN, ['--config', this.config], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    started.add(child);
    child.stderr.on('data', (d) => {
      if (this.stderr.length < 200000) this.stderr += d;
    });
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`wshub exited early (${child.exitCode}):\n${this.stderr}`);
      if (await this.healthy()) return;
      await sleep(50);
    }
    throw new Error(`wshub not healthy after ${timeoutMs} ms:\n${this.stderr}`);
  }

  async healthy() {
    try {
      const res = await fetch(`${this.base}/health`, { signal: AbortSignal.timeout(1000) });
      return res.status === 200;
    } catch {
      return false;
    }
  }

  /** SIGTERM by PID and wait for the exit; SIGKILL if it overstays `timeoutMs`. */
  async stop(timeoutMs = 10000) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return this.exited;
    process.kill(child.pid, 'SIGTERM');
    let timer;
    const overstay = new Promise((resolve) => {
      timer = setTimeout(() => resolve(null), timeoutMs);
    });
    const result = await Promise.race([this.exited, overstay]);
    clearTimeout(timer);
    if (result === null) {
      process.kill(child.pid, 'SIGKILL');
      await this.exited;
      throw new Error(`wshub ignored SIGTERM for ${timeoutMs} ms:\n${this.stderr}`);
    }
    started.delete(child);
    return result;
  }

  /** Stops the server if it still runs and removes its temp dir. */
  async dispose() {
    try {
      await this.stop();
    } finally {
      if (process.env.WSHUB_TEST_LOG) process.stderr.write(`--- wshub on port ${this.port} ---\n${this.stderr}`);
      fs.rmSync(this.dir, { recursive: true, force: true });
    }
  }

  async json(method, urlPath, body, headers = {}) {
    const res = await fetch(`${this.base}${urlPath}`, {
      method,
      headers: body === undefined ? headers : { 'Content-Type': 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
    return { status: res.status, type: res.headers.get('content-type'), body: parsed };
  }
}

/**
 * Chromium from Debian with the flags this machine needs. playwright's
 * launch() gives every browser a fresh temporary --user-data-dir and
 * removes it on close.
 */
export function launchBrowser({ ignoreCertificateErrors = false } = {}) {
  const args = ignoreCertificateErrors ? [...CHROMIUM_ARGS, '--ignore-certificate-errors'] : CHROMIUM_ARGS;
  return chromium.launch({ executablePath: CHROMIUM, args, timeout: 30000 });
}

/**
 * A self-signed certificate for localhost and 127.0.0.1, made with openssl
 * in `dir`; returns the file paths.
 */
export function makeCert(dir) {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', key, '-out', cert,
  ], { stdio: 'ignore' });
  return { cert, key };
}

/**
 * Opens the demo page in its own browser context. Uncaught page errors are
 * collected in `page.pageErrors` so tests can assert there were none.
 */
export async function openDemo(browser, server, query) {
  const context = await browser.newContext({ viewport: { width: 900, height: 820 }, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.pageErrors = [];
  page.on('pageerror', (err) => page.pageErrors.push(err.message));
  await page.goto(`${server.base}/?${new URLSearchParams(query)}`);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 10000 });
  return page;
}

/** Waits until the page's connection badge shows `state`. */
export function waitState(page, state, timeout = 10000) {
  return page.waitForSelector(`#state[data-state="${state}"]`, { timeout });
}

/** Text of the first incoming message matching the attribute filter, waiting for it. */
export async function waitMessage(page, attrs, timeout = 10000) {
  const sel = Object.entries({ dir: 'in', ...attrs }).map(([k, v]) => `[data-${k}="${v}"]`).join('');
  const el = await page.waitForSelector(`#messages li${sel}`, { timeout });
  return el.getAttribute('data-content');
}

/** Sends a chat from the page's Send panel. */
export async function sendChat(page, { text, to, room, all }) {
  await page.fill('#message', text);
  if (to) {
    await page.fill('#send-to', to);
    await page.click('#send-user');
  } else if (room) {
    await page.selectOption('#send-room', room);
    await page.click('#send-room-btn');
  } else if (all) {
    await page.click('#send-all');
  }
}

/** HS256 JWT for `claims`, signed with `secret`. */
export function signJwt(claims, secret) {
  const enc = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const unsigned = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
  const sig = crypto.createHmac('sha256', secret).update(unsigned).digest('base64url');
  return `${unsigned}.${sig}`;
}

/** Status line of a raw WebSocket upgrade request (what a browser never shows). */
export function rawUpgradeStatusLine(port, target, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let data = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no status line from ${target} within ${timeoutMs} ms (got ${JSON.stringify(data)})`));
    }, timeoutMs);
    sock.on('connect', () => sock.write([
      `GET ${target} HTTP/1.1`, `Host: 127.0.0.1:${port}`, 'Connection: Upgrade', 'Upgrade: websocket',
      'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', '', '',
    ].join('\r\n')));
    sock.on('data', (d) => {
      data += d;
      const end = data.indexOf('\r\n');
      if (end >= 0) {
        clearTimeout(timer);
        sock.destroy();
        resolve(data.slice(0, end));
      }
    });
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
