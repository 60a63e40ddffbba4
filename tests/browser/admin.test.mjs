//! With websocket.admin_token set, the page's status poll gets 401 and says
//! so; once the admin token is typed in, the online list and the REST
//! broadcast form work.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { WshubServer, launchBrowser, openDemo, waitMessage, waitState } from './helpers.mjs';

const ADMIN = 'browser-admin-token';
let server;
let browser;

before(async () => {
  server = await WshubServer.start({ adminToken: ADMIN });
  browser = await launchBrowser();
}, { timeout: 60000 });

after(async () => {
  if (browser) await browser.close();
  if (server) await server.dispose();
}, { timeout: 30000 });

test('the status poll explains a 401 and recovers with the admin token', { timeout: 40000 }, async () => {
  const page = await openDemo(browser, server, { user: 'dora', connect: '1' });
  await waitState(page, 'open');
  await page.waitForFunction(() => document.querySelector('#status-note').textContent.includes('admin token'), null, { timeout: 10000 });
  assert.equal(await page.textContent('#online-count'), '–');

  await page.fill('#bc-content', 'denied');
  await page.click('#broadcast');
  await page.waitForSelector('#broadcast-result[data-status="401"]', { timeout: 10000 });

  await page.fill('#admin-token', ADMIN);
  await page.waitForFunction(() => document.querySelector('#online-count').textContent === '1', null, { timeout: 10000 });
  assert.deepEqual(await page.locator('#online-users li').allTextContents(), ['dora']);
  assert.equal(await page.textContent('#status-note'), '');
  await page.fill('#bc-content', '{"n": 1}');
  await page.click('#broadcast');
  await page.waitForSelector('#broadcast-result[data-status="200"]', { timeout: 10000 });
  assert.equal(await waitMessage(page, { type: 'notification' }), '{"n":1}');
  assert.equal(await page.locator('#messages li[data-content="denied"]').count(), 0);
  assert.deepEqual(page.pageErrors, []);
});
