#!/usr/bin/env node
/*
 * One sign-in in headless Chromium, as a device's web view does it: opens URL (the challenge
 * url with ?user-identifier=...), types PASSWORD, submits, and prints the access token the
 * browser was sent to (apple-remotemanagement-user-login://authentication-results?access-token=T).
 * Used by the Python re-authentication tests. Exit status 1 (and nothing on stdout) if the
 * browser was not sent to the custom scheme.
 *   node tests/browser/signin_once.mjs URL PASSWORD
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), 'package.json'));
const { chromium } = require('playwright-core');
const [url, password] = process.argv.slice(2);
const RE = /^apple-remotemanagement-user-login:\/\/authentication-results\?access-token=([A-Za-z0-9_-]{43})$/;

const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--ignore-certificate-errors'],
});
let code = 1;
try {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    let target = null;
    // Chromium cannot open the custom scheme: the navigation ends on an error page whose
    // unreachableUrl is where the 308 sent the browser.
    cdp.on('Page.frameNavigated', e => {
        if (!e.frame.parentId && e.frame.unreachableUrl) target = e.frame.unreachableUrl;
    });
    await cdp.send('Page.enable');
    await page.goto(url);
    await page.locator('input[type=password]').fill(password);
    await page.locator('form button[type=submit]').click({ noWaitAfter: true });
    for (let i = 0; i < 200 && target === null; i++)
        await new Promise(r => setTimeout(r, 50));
    const m = RE.exec(target || '');
    if (m) {
        console.log(m[1]);
        code = 0;
    } else {
        console.error(`signin_once: the browser was not sent to the custom scheme (got ${target})`);
    }
} finally {
    await browser.close();
}
process.exit(code);
