#!/usr/bin/env node
/*
 * Federated sign-in (issue 8) in headless Chromium against a real OpenID Connect provider:
 * tests/oidc/provider.mjs runs the npm package `oidc-provider` on loopback over TLS (a
 * throwaway CA and certificate are made here with openssl and given to Orchard with
 * --oidc-ca-file). The browser does what a device's ASWebAuthenticationSession does: opens the
 * 401 challenge's url with `user-identifier`, is sent to the IdP (login page, consent page),
 * comes back to Orchard's /auth/oidc/callback and is sent on to
 * `apple-remotemanagement-user-login://authentication-results?access-token=T`; T then gets the
 * enrollment profile. A re-authentication in the same browser (IdP session still alive) must
 * show the IdP's login page again (prompt=login) and yield a new token. Then two refusals
 * against the same provider: a replayed code and a wrong state.
 *
 * How the custom-scheme navigation is observed: as in signin.test.mjs (CDP `unreachableUrl`).
 * Output: `ok NAME` / `FAIL NAME` lines on stdout (tests/run.sh), diagnostics on stderr.
 * Needs /usr/bin/chromium, `npm ci --prefix tests/browser` and `npm ci --prefix tests/oidc`.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.resolve(ROOT, process.env.ORCHARD_BIN ||
    (fs.existsSync(path.join(ROOT, 'build/san/orchard')) ? 'build/san/orchard' : 'build/orchard'));
const SPEC = path.resolve(ROOT, process.env.ORCHARD_SPEC || '../shared/spec');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const KEEP = process.env.ORCHARD_TEST_KEEP === '1';
const DEADLINE_MS = 150_000;

const DOMAIN = 'example.com';
const USER = 'alice@example.com';
const CLIENT_ID = 'orchard-browser';
const CLIENT_SECRET = 'browser-test-secret-4Kp';
const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };
const LOCATION_RE = /^apple-remotemanagement-user-login:\/\/authentication-results\?access-token=([A-Za-z0-9_-]{43})$/;
const SANITIZER_MARKS = ['ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:',
    'SUMMARY: UndefinedBehaviorSanitizer'];
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const log = (...a) => console.error(...a);
const tests = [];
const test = (name, fn) => tests.push({ name, fn });
let failed = 0;
function assert(cond, msg) { if (!cond) throw new Error(msg); }
function eq(actual, expected, what) {
    if (actual !== expected) throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}
const state = {};
function need(key) {
    if (state[key] === undefined) throw new Error(`prerequisite missing: ${key} (an earlier case failed)`);
    return state[key];
}

function freePort() {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.once('error', reject);
        s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
    });
}
function hermeticEnv() {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ORCHARD_')));
    env.ORCHARD_APNS_URL = 'https://127.0.0.1:9';
    return env;
}
function spkiOf(pemFile) {
    const leaf = new X509Certificate(fs.readFileSync(pemFile));
    return createHash('sha256').update(leaf.publicKey.export({ type: 'spki', format: 'der' })).digest('base64');
}
function run(cmd, args, opts = {}) {
    const p = spawnSync(cmd, args, { encoding: 'utf8', env: hermeticEnv(), cwd: ROOT, timeout: 120_000, ...opts });
    if (p.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${p.status ?? p.signal}\n${p.stdout}\n${p.stderr}`);
    return p.stdout;
}
async function until(cond, ms, what) {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
        if (cond()) return;
        await new Promise(r => setTimeout(r, 50));
    }
    throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

// ------------------------------------------------------------------------------------------------
// Orchard + the IdP
// ------------------------------------------------------------------------------------------------
const env = { procs: [] };

function makeTls(dir) {
    const o = { cwd: dir };
    run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
        '-subj', '/CN=Orchard OIDC browser-test CA', '-addext', 'basicConstraints=critical,CA:TRUE',
        '-addext', 'keyUsage=critical,keyCertSign'], o);
    run('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'idp.key', '-out', 'idp.csr', '-subj', '/CN=127.0.0.1'], o);
    fs.writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
    run('openssl', ['x509', '-req', '-in', 'idp.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'idp.pem',
        '-days', '2', '-extfile', 'ext.cnf'], o);
}

function startProc(name, cmd, args, readyRe) {
    const logPath = path.join(env.tmp, `${name}.log`);
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: hermeticEnv(), cwd: ROOT });
    const rec = { name, p, logPath, exit: null };
    rec.exited = new Promise(r => p.once('exit', (code, signal) => { rec.exit = { code, signal }; r(); }));
    env.procs.push(rec);
    let buffered = '';
    return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${name} not ready after 30 s\n${fs.existsSync(logPath) ? fs.readFileSync(logPath, 'utf8') : ''}`)), 30_000);
        const onData = d => {
            fs.appendFileSync(logPath, d);
            if (buffered === null) return;
            buffered += d;
            if (readyRe.test(buffered)) { buffered = null; clearTimeout(t); resolve(rec); }
        };
        p.stdout.on('data', onData);
        p.stderr.on('data', onData);
        p.once('exit', () => { clearTimeout(t); if (buffered !== null) reject(new Error(`${name} exited during start-up (log ${logPath})`)); });
    });
}

async function setup() {
    env.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'orchard-oidc-browser-'));
    env.data = path.join(env.tmp, 'data');
    makeTls(env.tmp);
    env.port = await freePort();
    env.idpPort = await freePort();
    env.url = `https://127.0.0.1:${env.port}`;
    env.issuer = `https://127.0.0.1:${env.idpPort}`;
    run(BIN, ['init', '--data', env.data, '--public-url', env.url, '--domain', DOMAIN]);
    run(BIN, ['domain', 'set', '--data', env.data, DOMAIN, '--auth', 'oidc', '--oidc-issuer', env.issuer,
        '--oidc-client-id', CLIENT_ID, '--oidc-client-secret-stdin', '--oidc-ca-file', path.join(env.tmp, 'ca.pem'),
        '--oidc-jit-users'], { input: CLIENT_SECRET + '\n' });
    const show = run(BIN, ['domain', 'show', '--data', env.data, DOMAIN]);
    assert(!show.includes(CLIENT_SECRET), 'domain show must not print the secret');
    assert(show.includes(`${env.url}/auth/oidc/callback`), `domain show prints the redirect URI:\n${show}`);
    env.orchardCa = fs.readFileSync(path.join(env.data, 'tls', 'ca.pem'));
    env.idpCa = fs.readFileSync(path.join(env.tmp, 'ca.pem'));
    await startProc('idp', 'node', [path.join(ROOT, 'tests', 'oidc', 'provider.mjs'), '--port', String(env.idpPort),
        '--cert', path.join(env.tmp, 'idp.pem'), '--key', path.join(env.tmp, 'idp.key'), '--client-id', CLIENT_ID,
        '--client-secret', CLIENT_SECRET, '--redirect-uri', `${env.url}/auth/oidc/callback`], /^ready /m);
    env.orchard = await startProc('orchard', BIN, ['serve', '--data', env.data, '--listen', `127.0.0.1:${env.port}`], /event=serving/);
    env.spki = [spkiOf(path.join(env.data, 'tls', 'server.pem')), spkiOf(path.join(env.tmp, 'idp.pem'))].join(',');
}

async function teardown() {
    const problems = [];
    for (const rec of env.procs.reverse()) {
        if (!rec.exit) {
            rec.p.kill('SIGTERM');
            const hung = await Promise.race([rec.exited.then(() => false), new Promise(r => setTimeout(() => r(true), 20_000).unref())]);
            if (hung) { rec.p.kill('SIGKILL'); await rec.exited; problems.push(`${rec.name} did not exit on SIGTERM`); }
        }
        if (rec.name === 'orchard') {
            if (rec.exit.code !== 0) problems.push(`orchard serve ended with ${JSON.stringify(rec.exit)} (log ${rec.logPath})`);
            const text = fs.readFileSync(rec.logPath, 'utf8');
            const reports = text.split('\n').filter(l => SANITIZER_MARKS.some(m => l.includes(m)));
            if (reports.length) problems.push(`sanitizer reports in ${rec.logPath}:\n    ${reports.slice(0, 10).join('\n    ')}`);
            if (text.includes(CLIENT_SECRET)) problems.push('the client secret appears in the server log');
        }
    }
    return problems;
}

// One HTTPS request to Orchard (trusting its CA only); never follows redirects.
function request(method, url, { body, headers = {} } = {}) {
    const u = new URL(url, env.url);
    return new Promise((resolve, reject) => {
        const req = https.request({ method, host: u.hostname, port: u.port, path: u.pathname + u.search,
            ca: u.port === String(env.idpPort) ? env.idpCa : env.orchardCa, servername: '',
            headers: { ...headers, ...(body ? { 'Content-Length': body.length } : {}) }, timeout: 30_000 }, res => {
            const chunks = [];
            res.on('data', c => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        });
        req.on('timeout', () => req.destroy(new Error(`${method} ${u} timed out`)));
        req.on('error', reject);
        req.end(body);
    });
}

// ------------------------------------------------------------------------------------------------
// Browser
// ------------------------------------------------------------------------------------------------
let browser;

// CDP observation of a page: raw responses by request, navigations that ended on an error page
// (the custom scheme), CSP/security messages.
async function watch(context, page) {
    const w = { requests: new Map(), responses: new Map(), unreachable: [], security: [] };
    const cdp = await context.newCDPSession(page);
    cdp.on('Network.requestWillBeSent', e => w.requests.set(e.requestId, e.request.url));
    cdp.on('Network.responseReceivedExtraInfo', e => {
        const headers = Object.fromEntries(Object.entries(e.headers).map(([k, v]) => [k.toLowerCase(), v]));
        w.responses.set(e.requestId, { status: e.statusCode, headers });
    });
    // A redirect reuses the requestId: remember each hop's URL with the response that ended it.
    w.hops = [];
    cdp.on('Network.requestWillBeSent', e => {
        if (e.redirectResponse) w.hops.push({ url: e.redirectResponse.url, status: e.redirectResponse.status, location: e.request.url });
    });
    cdp.on('Page.frameNavigated', e => { if (!e.frame.parentId && e.frame.unreachableUrl) w.unreachable.push(e.frame.unreachableUrl); });
    cdp.on('Log.entryAdded', e => { if (e.entry.source === 'security') w.security.push(e.entry.text.trim()); });
    await Promise.all(['Network.enable', 'Page.enable', 'Log.enable'].map(m => cdp.send(m)));
    return w;
}

async function newPhone() {
    const context = await browser.newContext({ ...PHONE, locale: 'en-US' });
    const page = await context.newPage();
    page.setDefaultTimeout(15_000);
    return { context, page };
}

// From Orchard's sign-in URL through the IdP's login and consent pages to the custom scheme.
// Returns { token, callbackUrl, sawLogin }.
async function federatedSignIn(page, w) {
    const hopsBefore = w.hops.length;
    // The browser followed the callback's 308 to the custom scheme: Chromium either commits an
    // error page naming it (`unreachableUrl`) or drops the navigation after issuing the request
    // (a redirect hop whose target is the custom scheme). Either proves the browser went there.
    const reached = () => w.hops.slice(hopsBefore).find(h => LOCATION_RE.test(h.location));
    await page.goto(state.signinUrlWithUser);
    assert(page.url().startsWith(`${env.issuer}/interaction/`), `the browser is at the IdP: ${page.url()}`);
    let sawLogin = false;
    for (let step = 0; step < 4 && !reached(); step++) {
        await page.waitForLoadState('load');
        const pw = page.locator('input[type=password]');
        if (await pw.count()) {
            sawLogin = true;
            eq(await page.locator('input[name=login]').inputValue(), USER, 'IdP login field pre-filled from login_hint');
            await pw.fill('any password (dev interactions)');
        }
        const url = page.url();
        let navigated = false;
        const onNav = f => { if (f === page.mainFrame()) navigated = true; };
        page.on('framenavigated', onNav);
        await page.locator('form button[type=submit]').click({ noWaitAfter: true });
        await until(() => reached() || (navigated && page.url() !== url), 15_000, `the IdP page ${url} to move on`);
        page.off('framenavigated', onNav);
    }
    const hop = reached();
    assert(hop, `the browser never reached the custom scheme; hops: ${JSON.stringify(w.hops.map(h => h.status + ' ' + h.url))}`);
    assert(w.security.length === 0, `security messages: ${w.security.join(' | ')}`);
    eq(new URL(hop.url).pathname, '/auth/oidc/callback', 'the hop that sent the browser to the custom scheme');
    eq(hop.status, 308, 'status of the callback');
    return { token: LOCATION_RE.exec(hop.location)[1], callbackUrl: hop.url, sawLogin };
}

// ------------------------------------------------------------------------------------------------
// Cases
// ------------------------------------------------------------------------------------------------
test('discovery and the 401 challenge lead to the sign-in URL', async () => {
    const wk = await request('GET', `/.well-known/com.apple.remotemanagement?user-identifier=${encodeURIComponent(USER)}&model-family=iPhone`,
        { headers: { Host: DOMAIN } });
    eq(wk.status, 200, 'discovery');
    state.baseUrl = JSON.parse(wk.body).Servers[0].BaseURL;
    state.machineInfo = Buffer.from(fs.readFileSync(path.join(SPEC, 'fixtures', 'oreore-ios-mdm', 'enroll_body.b64'), 'latin1')
        .replace(/\s+/g, ''), 'base64');
    const r = await request('POST', state.baseUrl, { body: state.machineInfo, headers: { 'Content-Type': 'application/pkcs7-signature' } });
    eq(r.status, 401, 'POST BaseURL without a token');
    const m = /^Bearer method="apple-as-web", url="([^"]+)"$/.exec(r.headers['www-authenticate'] || '');
    assert(m, `WWW-Authenticate: ${r.headers['www-authenticate']}`);
    const u = new URL(m[1]);
    u.searchParams.append('user-identifier', USER);
    state.signinUrlWithUser = u.toString();
});

test('enrollment sign-in: Orchard -> IdP login and consent -> back -> custom scheme with a token', async () => {
    need('signinUrlWithUser');
    const { context, page } = await newPhone();
    const w = await watch(context, page);
    state.context = context;
    state.page = page;
    state.w = w;
    const r = await federatedSignIn(page, w);
    assert(r.sawLogin, 'the IdP showed its login page');
    state.token = r.token;
    state.callbackUrl = r.callbackUrl;
    log(`  custom scheme reached; token ${r.token.slice(0, 6)}…`);
});

test('the token from the federated sign-in gets the signed enrollment profile', async () => {
    const token = need('token');
    const r = await request('POST', state.baseUrl, { body: state.machineInfo,
        headers: { 'Content-Type': 'application/pkcs7-signature', Authorization: `Bearer ${token}` } });
    eq(r.status, 200, 'POST BaseURL with the token');
    eq((r.headers['content-type'] || '').split(';')[0], 'application/x-apple-aspen-config', 'content-type');
    assert(r.body.includes(Buffer.from(USER)), `the profile carries the Managed Apple Account ${USER} (maid claim = email)`);
});

test('re-authentication in the same browser: the IdP asks again (prompt=login) and a new token is issued', async () => {
    need('page');
    // The same browser profile (the IdP's session cookies carried over) in a fresh tab: a device's
    // web view may share its cookies with the browser, so the IdP would know the person already.
    const storage = await state.context.storageState();
    assert(storage.cookies.some(c => c.domain === '127.0.0.1' && c.name.startsWith('_session')),
        `the IdP session cookie exists: ${JSON.stringify(storage.cookies.map(c => c.name))}`);
    await state.context.close();
    const context = await browser.newContext({ ...PHONE, locale: 'en-US', storageState: storage });
    const page = await context.newPage();
    page.setDefaultTimeout(15_000);
    state.context = context;
    state.page = page;
    state.w = await watch(context, page);
    const r = await federatedSignIn(page, state.w);
    assert(r.sawLogin, 'the IdP showed its login page again although its session was still alive');
    assert(r.token !== state.token, 'a new token');
    state.reauthToken = r.token;
});

test('replayed code against the same provider: refused, no token', async () => {
    const old = new URL(need('callbackUrl'));
    // A fresh sign-in gives a valid state and its cookie; the old code is then replayed with it.
    const s = await request('GET', state.signinUrlWithUser);
    eq(s.status, 302, 'GET sign-in redirects to the IdP');
    const fresh = new URL(s.headers.location).searchParams.get('state');
    const cookie = (s.headers['set-cookie'] || []).map(c => c.split(';')[0]).find(c => c.startsWith('orchard_oidc='));
    assert(fresh && cookie, 'state and cookie');
    const cb = `/auth/oidc/callback?code=${encodeURIComponent(old.searchParams.get('code'))}&state=${fresh}&iss=${encodeURIComponent(env.issuer)}`;
    const r = await request('GET', cb, { headers: { Cookie: cookie } });
    assert(r.status >= 400 && r.status < 500, `status ${r.status}`);
    eq(r.headers.location, undefined, 'Location');
    assert(!r.body.includes(Buffer.from('access-token')), 'no token in the page');
    // And the original callback URL itself, replayed: its state is gone.
    const again = await request('GET', old.pathname + old.search, { headers: { Cookie: cookie } });
    assert(again.status >= 400 && again.status < 500 && !again.headers.location, `replayed callback: ${again.status}`);
});

test('wrong state in the browser: friendly 4xx page, no token, no custom-scheme navigation', async () => {
    const page = need('page');
    const w = state.w;
    const before = w.unreachable.length;
    const resp = await page.goto(`${env.url}/auth/oidc/callback?code=abc&state=${'B'.repeat(43)}`);
    assert(resp.status() >= 400 && resp.status() < 500, `status ${resp.status()}`);
    const text = await page.locator('main').innerText();
    assert(/expired|start again/i.test(text), `page text: ${text}`);
    eq(w.unreachable.length, before, 'no navigation to the custom scheme');
});

// ------------------------------------------------------------------------------------------------
async function main() {
    const watchdog = setTimeout(() => {
        console.log('FAIL oidc browser tests finished within the deadline');
        for (const r of env.procs) r.p.kill('SIGKILL');
        process.exit(1);
    }, DEADLINE_MS);
    watchdog.unref();
    const setupProblems = [];
    let chromium;
    try {
        ({ chromium } = await import('playwright-core'));
    } catch (e) {
        setupProblems.push(`cannot load playwright-core (npm ci --prefix tests/browser): ${e.message}`);
    }
    if (!fs.existsSync(path.join(ROOT, 'tests', 'oidc', 'node_modules', 'oidc-provider')))
        setupProblems.push('oidc-provider is not installed (npm ci --prefix tests/oidc)');
    if (!fs.existsSync(BIN)) setupProblems.push(`server binary ${BIN} does not exist`);
    if (!fs.existsSync(CHROMIUM)) setupProblems.push(`${CHROMIUM} does not exist`);
    if (!setupProblems.length) {
        try {
            await setup();
            browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, timeout: 30_000,
                args: [...CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${env.spki}`] });
            log(`  ${BIN}; Chromium ${browser.version()}; Orchard ${env.url}; IdP ${env.issuer}`);
        } catch (e) {
            setupProblems.push(`set-up failed: ${e.stack || e.message}`);
        }
    }
    for (const { name, fn } of tests) {
        if (setupProblems.length) { failed++; console.log(`FAIL ${name}`); continue; }
        const t0 = Date.now();
        try {
            await fn();
            console.log(`ok ${name}`);
            log(`ok ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
        } catch (e) {
            failed++;
            console.log(`FAIL ${name}`);
            log(`---- FAIL ${name}\n${e.stack || e.message}`);
            if (state.page) log(`  page at ${state.page.url()}; security: ${JSON.stringify(state.w?.security)}; hops: ${JSON.stringify(state.w?.hops?.map(h => h.status + ' ' + h.url.slice(0, 80)))}`);
        }
    }
    setupProblems.forEach(p => log(`  ${p}`));
    if (state.context) await state.context.close().catch(() => {});
    if (browser) await browser.close().catch(() => {});
    if (env.tmp) {
        const problems = await teardown();
        if (env.orchard) {
            if (problems.length) { failed++; console.log('FAIL server exited cleanly with no sanitizer reports or secrets in the log'); }
            else console.log('ok server exited cleanly with no sanitizer reports or secrets in the log');
        }
        problems.forEach(p => log(`  ${p}`));
        if (KEEP || problems.length || failed) log(`  kept ${env.tmp}`);
        else fs.rmSync(env.tmp, { recursive: true, force: true });
    }
    clearTimeout(watchdog);
    process.exitCode = failed || setupProblems.length ? 1 : 0;
}

process.on('SIGINT', () => { for (const r of env.procs) r.p.kill('SIGTERM'); process.exit(130); });
main().catch(e => { log(e.stack || e.message); for (const r of env.procs) r.p.kill('SIGKILL'); process.exit(1); });
