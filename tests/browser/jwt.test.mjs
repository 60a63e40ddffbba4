//! A page with an invalid JWT: every upgrade is refused (401, which a
//! browser only sees as 1006), /health answers, so the client gives up after
//! maxRejections, shows 'fatal' and makes no further attempts. A page with a
//! valid token connects as the token's user.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  WshubServer, launchBrowser, openDemo, rawUpgradeStatusLine, signJwt, sleep, waitState,
} from './helpers.mjs';

const SECRET = 'browser-test-secret';
let server;
let browser;

before(async () => {
  server = await WshubServer.start({ jwtSecret: SECRET });
  browser = await launchBrowser();
}, { timeout: 60000 });

after(async () => {
  if (browser) await browser.close();
  if (server) await server.dispose();
}, { timeout: 30000 });

/** wshub_handshake_failures_total{reason="auth"} from GET /metrics. */
async function authFailures() {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('wshub_handshake_failures_total{reason="auth"} '));
  assert.ok(line, `no auth handshake-failure counter in /metrics:\n${text}`);
  return Number(line.split(' ')[1]);
}

test('an invalid token stops after 3 rejections and stays stopped', { timeout: 40000 }, async () => {
  const page = await openDemo(browser, server, { user: 'mallory', token: 'bad', connect: '1', base: '100', cap: '400' });
  await waitState(page, 'fatal', 15000);
  assert.equal(await page.textContent('#attempts'), '3');
  assert.equal(await page.textContent('#opens'), '0');
  assert.match(await page.textContent('#state-detail'), /^gave up: handshake rejected 3 times while the server is up$/);
  await sleep(4000); // ten times the backoff cap: any retry loop would show here
  assert.equal(await page.textContent('#attempts'), '3');
  assert.equal(await page.getAttribute('#state', 'data-state'), 'fatal');
  assert.equal(await page.evaluate(() => window.demo.client.stats.attempts), 3);
  // The server saw the same three refused upgrades, and no more.
  assert.equal(await authFailures(), 3);
  const status = await server.json('GET', '/api/ws/status');
  assert.equal(status.status, 200);
  assert.equal(status.body.online_count, 0);
  // The same upgrade from outside the browser shows what the page could not see.
  assert.match(await rawUpgradeStatusLine(server.port, '/api/ws/connect?token=bad'), /^HTTP\/1\.1 401 /);
  assert.deepEqual(page.pageErrors, []);
});

test('a valid token connects as its sub claim, overriding user_id', { timeout: 30000 }, async () => {
  const token = signJwt({ sub: 'carol', exp: Math.floor(Date.now() / 1000) + 3600 }, SECRET);
  const page = await openDemo(browser, server, { user: 'not-carol', token, connect: '1' });
  await waitState(page, 'open');
  await page.waitForFunction(() => document.querySelector('#online-count').textContent === '1', null, { timeout: 10000 });
  assert.deepEqual(await page.locator('#online-users li').allTextContents(), ['carol']);
  assert.equal(await page.textContent('#attempts'), '1');
  assert.deepEqual(page.pageErrors, []);
});
