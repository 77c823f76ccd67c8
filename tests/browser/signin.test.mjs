#!/usr/bin/env node
/*
 * The apple-as-web sign-in page (PROTOCOL 5.1) driven in headless Chromium, the way a device's
 * ASWebAuthenticationSession drives it: discover BaseURL, get the 401 challenge, open its `url`
 * with `user-identifier`, type the password, and watch the browser being sent to
 * `apple-remotemanagement-user-login://authentication-results?access-token=T`; then use T the
 * way the device does (re-POST the MachineInfo with `Authorization: Bearer T`).
 *
 * Output follows tests/run.sh: one stdout line per case, `ok NAME` or `FAIL NAME`; diagnostics on
 * stderr; exit status 1 if anything failed. Screenshots at phone size go to tests/artifacts/.
 *
 * How the custom-scheme navigation is observed: Chromium cannot open an unknown scheme, so it
 * ends the navigation on an error page whose CDP `Page.frameNavigated` carries the target as
 * `unreachableUrl`; that is the proof that the browser itself followed the 308 (a CSP
 * `form-action` that does not allow the scheme blocks it, which a plain HTTP client would never
 * notice). The raw 308 and its Location come from CDP `Network.responseReceivedExtraInfo`.
 *
 * Needs: /usr/bin/chromium (Debian `chromium`), `npm ci --prefix tests/browser` (playwright-core;
 * never `playwright`, which downloads browsers).
 * Environment: ORCHARD_BIN (default build/san/orchard, else build/orchard), ORCHARD_SPEC (default
 * ../shared/spec), CHROMIUM (default /usr/bin/chromium), ORCHARD_TEST_KEEP=1 keeps the data dir.
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
const ARTIFACTS = path.join(ROOT, 'tests', 'artifacts');
const KEEP = process.env.ORCHARD_TEST_KEEP === '1';
const DEADLINE_MS = 120_000; // the whole file normally takes ~5 s

const DOMAIN = 'example.com';
const USER = 'alice@example.com';
const MAID = 'alice@appleid.example.com';
const PASSWORD = 'correct horse battery staple';
const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };
const SCHEME = 'apple-remotemanagement-user-login:';
const LOCATION_RE = /^apple-remotemanagement-user-login:\/\/authentication-results\?access-token=([A-Za-z0-9_-]{43})$/;
const SANITIZER_MARKS = ['ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:',
    'ERROR: ThreadSanitizer', 'SUMMARY: UndefinedBehaviorSanitizer'];

const log = (...a) => console.error(...a);

// ------------------------------------------------------------------------------------------------
// Tiny runner
// ------------------------------------------------------------------------------------------------
const tests = [];
const test = (name, fn) => tests.push({ name, fn });
let failed = 0;

function assert(cond, msg) {
    if (!cond) throw new Error(msg);
}
function eq(actual, expected, what) {
    if (actual !== expected)
        throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}
// A value an earlier case produces; a later case that needs it fails with a clear reason.
const state = {};
function need(key, producer) {
    if (state[key] === undefined) throw new Error(`prerequisite missing: ${key} (see "${producer}")`);
    return state[key];
}

// ------------------------------------------------------------------------------------------------
// Server
// ------------------------------------------------------------------------------------------------
function freePort() {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.once('error', reject);
        s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
    });
}

// The caller's environment minus every ORCHARD_* variable, and never talk to Apple.
function hermeticEnv() {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ORCHARD_')));
    env.ORCHARD_APNS_URL = 'https://127.0.0.1:9';
    return env;
}

class Server {
    constructor() {
        this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'orchard-browser-'));
        this.data = path.join(this.tmp, 'data');
        this.logPath = path.join(this.tmp, 'serve.log');
        this.proc = null;
        this.exit = null; // { code, signal }
    }
    cli(args, input) {
        const p = spawnSync(BIN, args, { input, encoding: 'utf8', env: hermeticEnv(), cwd: ROOT, timeout: 120_000 });
        if (p.status !== 0)
            throw new Error(`orchard ${args.join(' ')} exited ${p.status ?? p.signal}\n${p.stdout}\n${p.stderr}`);
        return p.stdout;
    }
    async init() {
        this.port = await freePort();
        this.url = `https://127.0.0.1:${this.port}`;
        this.cli(['init', '--data', this.data, '--public-url', this.url, '--domain', DOMAIN]);
        this.cli(['user', 'add', '--data', this.data, '--email', USER, '--managed-apple-id', MAID,
            '--password-stdin'], PASSWORD + '\n');
        this.ca = fs.readFileSync(path.join(this.data, 'tls', 'ca.pem'));
        // Chromium is told to accept exactly this server key (no blanket ignoreHTTPSErrors).
        const leaf = new X509Certificate(fs.readFileSync(path.join(this.data, 'tls', 'server.pem')));
        this.spki = createHash('sha256').update(leaf.publicKey.export({ type: 'spki', format: 'der' })).digest('base64');
    }
    async start() {
        const out = fs.openSync(this.logPath, 'a');
        this.proc = spawn(BIN, ['serve', '--data', this.data, '--listen', `127.0.0.1:${this.port}`],
            { stdio: ['ignore', out, out], env: hermeticEnv(), cwd: ROOT });
        fs.closeSync(out);
        this.exited = new Promise(resolve => this.proc.once('exit', (code, signal) => {
            this.exit = { code, signal };
            resolve();
        }));
        const deadline = Date.now() + 30_000;
        let last;
        while (Date.now() < deadline) {
            if (this.exit) throw new Error(`orchard serve exited during start-up (${JSON.stringify(this.exit)})\n${this.logTail(30)}`);
            try {
                const r = await this.request('GET', '/healthz');
                if (r.status === 200) return;
                last = `status ${r.status}`;
            } catch (e) {
                last = e.message;
            }
            await new Promise(r => setTimeout(r, 100));
        }
        throw new Error(`server not ready after 30 s (last: ${last})\n${this.logTail(30)}`);
    }
    // SIGTERM and wait (SIGKILL after 20 s). Returns a list of problems (empty when clean).
    async stop() {
        if (!this.proc) return [];
        const problems = [];
        if (!this.exit) {
            this.proc.kill('SIGTERM');
            const hung = await Promise.race([this.exited.then(() => false),
                new Promise(r => setTimeout(() => r(true), 20_000).unref())]);
            if (hung) {
                this.proc.kill('SIGKILL');
                await this.exited;
                problems.push('orchard serve did not exit within 20 s of SIGTERM');
            }
        }
        if (this.exit.code !== 0)
            problems.push(`orchard serve ended with ${JSON.stringify(this.exit)} after SIGTERM (log ${this.logPath})\n${this.logTail(25)}`);
        const reports = this.logText().split('\n').filter(l => SANITIZER_MARKS.some(m => l.includes(m)));
        if (reports.length) problems.push(`sanitizer reports in ${this.logPath}:\n    ${reports.slice(0, 10).join('\n    ')}`);
        this.proc = null;
        return problems;
    }
    cleanup(keep) {
        if (KEEP || keep) log(`  kept ${this.tmp}`);
        else fs.rmSync(this.tmp, { recursive: true, force: true });
    }
    logText() {
        try { return fs.readFileSync(this.logPath, 'utf8'); } catch { return ''; }
    }
    logTail(n) {
        return this.logText().trimEnd().split('\n').slice(-n).map(l => '    ' + l).join('\n');
    }
    // One HTTPS request trusting only DIR/tls/ca.pem; never follows redirects.
    request(method, urlOrPath, { body, headers = {} } = {}) {
        const u = new URL(urlOrPath, this.url);
        assert(u.protocol === 'https:' && u.hostname === '127.0.0.1', `tests only talk to loopback https: ${u}`);
        return new Promise((resolve, reject) => {
            const req = https.request({
                method, host: u.hostname, port: u.port, path: u.pathname + u.search, ca: this.ca,
                servername: '', headers: { ...headers, ...(body ? { 'Content-Length': body.length } : {}) },
                timeout: 30_000,
            }, res => {
                const chunks = [];
                res.on('data', c => chunks.push(c));
                res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks) }));
                res.on('error', reject);
            });
            req.on('timeout', () => req.destroy(new Error(`${method} ${u} timed out`)));
            req.on('error', reject);
            req.end(body);
        });
    }
}

const describe = r => `${r.status} ${JSON.stringify(r.headers)} body(${r.body.length})=${JSON.stringify(r.body.subarray(0, 300).toString('latin1'))}`;

// ------------------------------------------------------------------------------------------------
// Browser helpers
// ------------------------------------------------------------------------------------------------
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'];

// Records, through CDP, what happens to the page's navigations: raw responses (status + headers,
// redirects included), navigations that ended on an error page (their real target is in
// `unreachableUrl`), failed loads, and security messages (CSP violations).
async function watch(context, page) {
    const w = { responses: new Map(), unreachable: [], failures: [], security: [], cspIssues: [], requests: new Map() };
    const cdp = await context.newCDPSession(page);
    cdp.on('Network.requestWillBeSent', e => w.requests.set(e.requestId, { method: e.request.method, url: e.request.url }));
    cdp.on('Network.responseReceivedExtraInfo', e => {
        const headers = Object.fromEntries(Object.entries(e.headers).map(([k, v]) => [k.toLowerCase(), v]));
        w.responses.set(e.requestId, { status: e.statusCode, headers });
    });
    cdp.on('Network.loadingFailed', e => w.failures.push({ requestId: e.requestId, error: e.errorText, blockedReason: e.blockedReason, at: Date.now() }));
    cdp.on('Page.frameNavigated', e => {
        if (!e.frame.parentId && e.frame.unreachableUrl) w.unreachable.push(e.frame.unreachableUrl);
    });
    cdp.on('Log.entryAdded', e => { if (e.entry.source === 'security') w.security.push(e.entry.text.trim()); });
    cdp.on('Audits.issueAdded', e => {
        const d = e.issue.details?.contentSecurityPolicyIssueDetails;
        if (d) w.cspIssues.push(`${d.violatedDirective} blocked ${d.blockedURL}`);
    });
    await Promise.all(['Network.enable', 'Page.enable', 'Log.enable', 'Audits.enable'].map(m => cdp.send(m)));
    // The POST the form submitted, with its raw response (if any).
    w.formPost = () => {
        for (const [id, r] of w.requests)
            if (r.method === 'POST' && new URL(r.url).pathname === new URL(state.signinUrl).pathname)
                return { ...r, response: w.responses.get(id), failure: w.failures.find(f => f.requestId === id) };
        return null;
    };
    return w;
}

async function until(cond, ms, what) {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
        if (cond()) return;
        await new Promise(r => setTimeout(r, 50));
    }
    throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

let browser, server, artifactsOk = false;

async function newPhone(extra = {}) {
    const context = await browser.newContext({ ...PHONE, locale: 'en-US', ...extra });
    const page = await context.newPage();
    page.setDefaultTimeout(10_000);
    page.on('pageerror', e => log(`  page error: ${e.message}`));
    return { context, page };
}

async function screenshot(page, name) {
    if (!artifactsOk) return;
    const file = path.join(ARTIFACTS, name);
    await page.screenshot({ path: file, fullPage: true });
    log(`  screenshot ${path.relative(ROOT, file)}`);
}

// Signs in from a fresh context (page opened at `url`) and waits for the outcome of the form POST:
// either the main frame commits a new document (the answer page, or Chromium's error page for an
// unreachable custom-scheme target) and loads it, or the POST fails without a navigation (e.g.
// blocked by CSP) and 3 s pass. CDP events of different sessions and the raw-header events
// arrive in no guaranteed order, so each condition is waited for on its own.
async function signIn(password, url = state.signinUrlWithUser) {
    const { context, page } = await newPhone();
    const w = await watch(context, page);
    const resp = await page.goto(url);
    eq(resp.status(), 200, `GET ${url}`);
    await page.locator('input[type=password]').fill(password);
    let navigated = false;
    const onNav = f => { if (f === page.mainFrame() && w.formPost()) navigated = true; };
    page.on('framenavigated', onNav);
    await page.locator('form button[type=submit], form input[type=submit]').click({ noWaitAfter: true });
    await until(() => {
        const p = w.formPost();
        return navigated || (p?.failure && (w.security.length > 0 || w.cspIssues.length > 0 ||
            Date.now() - p.failure.at > 3000));
    }, 15_000, 'the sign-in POST to end in a navigation or a failure');
    page.off('framenavigated', onNav);
    if (navigated) await page.waitForLoadState('load');
    // Raw headers of the POST, and for a redirect the error page naming its target, may lag.
    await until(() => {
        const r = w.formPost().response;
        return r && (r.status !== 308 || !navigated || w.unreachable.length > 0);
    }, 2000, 'raw response of the sign-in POST').catch(e => log(`  ${e.message}`));
    return { context, page, w, post: w.formPost(), navigated };
}

// ------------------------------------------------------------------------------------------------
// Cases
// ------------------------------------------------------------------------------------------------
test('discovery and the 401 challenge lead to the sign-in URL', async () => {
    const wk = await server.request('GET',
        `/.well-known/com.apple.remotemanagement?user-identifier=${encodeURIComponent(USER)}&model-family=iPhone`,
        { headers: { Host: DOMAIN } });
    eq(wk.status, 200, `discovery: ${describe(wk)}`);
    const servers = JSON.parse(wk.body).Servers;
    assert(Array.isArray(servers) && servers.length === 1 && servers[0].Version === 'mdm-byod',
        `discovery body: ${wk.body}`);
    state.baseUrl = servers[0].BaseURL;
    state.machineInfo = Buffer.from(
        fs.readFileSync(path.join(SPEC, 'fixtures', 'oreore-ios-mdm', 'enroll_body.b64'), 'latin1').replace(/\s+/g, ''),
        'base64');
    assert(state.machineInfo.length > 100, 'enroll_body.b64 decodes to a body');
    const r = await server.request('POST', state.baseUrl,
        { body: state.machineInfo, headers: { 'Content-Type': 'application/pkcs7-signature' } });
    eq(r.status, 401, `POST BaseURL without a token: ${describe(r)}`);
    const m = /^Bearer method="apple-as-web", url="([^"]+)"$/.exec(r.headers['www-authenticate'] || '');
    assert(m, `WWW-Authenticate: ${r.headers['www-authenticate']}`);
    state.signinUrl = m[1];
    // The device appends user-identifier, keeping any query already there.
    const u = new URL(state.signinUrl);
    u.searchParams.append('user-identifier', USER);
    state.signinUrlWithUser = u.toString();
    log(`  BaseURL ${state.baseUrl}; sign-in ${state.signinUrlWithUser}`);
});

test('sign-in page renders at phone size with the identifier pre-filled and a password field', async () => {
    need('signinUrl', 'discovery and the 401 challenge lead to the sign-in URL');
    const { context, page } = await newPhone();
    try {
        const resp = await page.goto(state.signinUrlWithUser);
        eq(resp.status(), 200, 'status');
        assert(/^text\/html\b/.test(resp.headers()['content-type'] || ''), `content-type ${resp.headers()['content-type']}`);
        eq(await page.locator('form').count(), 1, 'number of <form>s');
        const form = page.locator('form');
        eq((await form.getAttribute('method') || '').toLowerCase(), 'post', 'form method');
        eq(await form.locator('input[type=password]').count(), 1, 'password inputs');
        const visibleText = form.locator('input[type=email], input[type=text], input:not([type])');
        eq(await visibleText.count(), 1, 'text/email inputs');
        eq(await visibleText.inputValue(), USER, 'pre-filled identifier');
        eq(await form.locator('input[type=password]').inputValue(), '', 'password starts empty');
        const pw = form.locator('input[type=password]');
        assert(await pw.isVisible(), 'password field is visible');
        assert(await pw.isEditable(), 'password field is editable');
        const submit = form.locator('button[type=submit], button:not([type]), input[type=submit]');
        eq(await submit.count(), 1, 'submit buttons');
        assert(await submit.isVisible(), 'submit button is visible');
        assert(await page.evaluate(() => document.activeElement?.type === 'password'),
            'the password field has focus when the identifier is pre-filled');

        // Phone ergonomics: no sideways scrolling, no iOS zoom-on-focus (font-size >= 16 px),
        // touch targets at least 44 pt (Apple HIG), the whole form inside the first screen.
        const m = await page.evaluate(() => {
            const box = el => { const r = el.getBoundingClientRect(); return { top: r.top, bottom: r.bottom, left: r.left, right: r.right, height: r.height }; };
            const controls = [...document.querySelectorAll('form input:not([type=hidden]), form button')];
            return {
                scrollWidth: document.documentElement.scrollWidth,
                innerWidth: window.innerWidth,
                innerHeight: window.innerHeight,
                controls: controls.map(el => ({ name: el.name || el.textContent.trim(), fontSize: parseFloat(getComputedStyle(el).fontSize), ...box(el) })),
            };
        });
        assert(m.scrollWidth <= m.innerWidth, `page scrolls sideways: scrollWidth ${m.scrollWidth} > ${m.innerWidth}`);
        for (const c of m.controls) {
            assert(c.fontSize >= 16, `${c.name}: font-size ${c.fontSize}px < 16px makes iOS zoom on focus`);
            assert(c.height >= 44, `${c.name}: ${c.height}px tall, below the 44 pt touch target`);
            assert(c.left >= 0 && c.right <= m.innerWidth && c.bottom <= m.innerHeight,
                `${c.name} is not within the first screen: ${JSON.stringify(c)}`);
        }
        log(`  controls: ${m.controls.map(c => `${c.name} ${c.fontSize}px/${Math.round(c.height)}px`).join(', ')}`);
        await screenshot(page, 'signin-phone.png');

        const dark = await newPhone({ colorScheme: 'dark' });
        try {
            await dark.page.goto(state.signinUrlWithUser);
            await screenshot(dark.page, 'signin-phone-dark.png');
        } finally {
            await dark.context.close();
        }
    } finally {
        await context.close();
    }
});

test('correct password: the browser is sent to apple-remotemanagement-user-login://authentication-results?access-token=T', async () => {
    need('signinUrl', 'discovery and the 401 challenge lead to the sign-in URL');
    const { context, w, post } = await signIn(PASSWORD);
    try {
        assert(post.response, `the sign-in POST got no response (failure: ${JSON.stringify(post.failure)})`);
        eq(post.response.status, 308, 'status of the sign-in POST');
        const location = post.response.headers.location;
        const m = LOCATION_RE.exec(location || '');
        assert(m, `Location ${JSON.stringify(location)} is not ${SCHEME}//authentication-results?access-token=<43 base64url chars>`);
        // The server minted a token; keep it for the next case even if the browser refuses to go there.
        state.token = m[1];
        const blocked = [...w.security, ...w.cspIssues];
        assert(blocked.length === 0,
            `Chromium refused to follow the 308 to ${SCHEME}//…: ${blocked.join(' | ')}\n` +
            `  (CSP form-action also governs the redirects of a form submission: the sign-in page's ` +
            `Content-Security-Policy needs "form-action 'self' ${SCHEME}")`);
        assert(w.unreachable.includes(location),
            `the browser did not navigate to ${location}; navigations that ended on an error page: ` +
            `${JSON.stringify(w.unreachable)}; POST failure: ${JSON.stringify(post.failure)}`);
        log(`  browser navigated to ${SCHEME}//authentication-results?access-token=${m[1].slice(0, 6)}…`);
    } finally {
        await context.close();
    }
});

test('the token from the redirect gets the signed enrollment profile at BaseURL', async () => {
    const token = need('token', 'correct password: the browser is sent to …');
    const r = await server.request('POST', state.baseUrl, {
        body: state.machineInfo,
        headers: { 'Content-Type': 'application/pkcs7-signature', Authorization: `Bearer ${token}` },
    });
    eq(r.status, 200, `POST BaseURL with the token: ${describe(r)}`);
    eq((r.headers['content-type'] || '').split(';')[0].trim(), 'application/x-apple-aspen-config', 'content-type');
    eq(r.body[0], 0x30, 'profile is DER (CMS SignedData starts with a SEQUENCE)');
    assert(r.body.includes(Buffer.from(MAID)), `the profile carries ${MAID}`);
    assert(r.body.includes(Buffer.from('com.apple.mdm')), 'the profile has a com.apple.mdm payload');
});

test('wrong password: error shown, status 401, no token, no navigation to the custom scheme', async () => {
    need('signinUrl', 'discovery and the 401 challenge lead to the sign-in URL');
    const { context, page, w, post, navigated } = await signIn('not the password');
    try {
        assert(post.response, `the sign-in POST got no response (failure: ${JSON.stringify(post.failure)})`);
        assert(navigated, 'the browser shows the answer to the POST');
        eq(post.response.status, 401, 'status of the sign-in POST');
        eq(post.response.headers.location, undefined, 'Location header');
        eq(w.unreachable.length, 0, `navigations to an unreachable URL (${JSON.stringify(w.unreachable)})`);
        assert(page.url().startsWith('https://'), `page left https: ${page.url()}`);
        const html = await page.content();
        assert(!html.includes('access-token') && !html.includes(SCHEME), 'the error page mentions no token or custom scheme');
        const alert = page.locator('[role=alert], .error');
        assert(await alert.first().isVisible(), 'an error message is visible');
        const text = (await alert.first().innerText()).trim();
        assert(/not correct|incorrect|invalid|try again/i.test(text), `error text: ${JSON.stringify(text)}`);
        state.errorText = text;
        eq(await page.locator('input[type=password]').inputValue(), '', 'password field is cleared');
        eq(await page.locator('form input[type=email], form input[type=text]').inputValue(), USER,
            'identifier is still filled in');
        await screenshot(page, 'signin-phone-error.png');
        await page.emulateMedia({ colorScheme: 'dark' });
        await screenshot(page, 'signin-phone-error-dark.png');
    } finally {
        await context.close();
    }
});

test('unknown account: the same generic error and status as a wrong password', async () => {
    const expected = need('errorText', 'wrong password: …');
    const u = new URL(state.signinUrl);
    u.searchParams.append('user-identifier', `nobody@${DOMAIN}`);
    const { context, page, post } = await signIn(PASSWORD, u.toString());
    try {
        assert(post.response, `the sign-in POST got no response (failure: ${JSON.stringify(post.failure)})`);
        eq(post.response.status, 401, 'status of the sign-in POST');
        eq((await page.locator('[role=alert], .error').first().innerText()).trim(), expected, 'error text');
    } finally {
        await context.close();
    }
});

// ------------------------------------------------------------------------------------------------
// Main
// ------------------------------------------------------------------------------------------------
async function main() {
    const watchdog = setTimeout(() => {
        log(`---- deadline of ${DEADLINE_MS / 1000} s exceeded`);
        console.log('FAIL browser tests finished within the deadline');
        server?.proc?.kill('SIGKILL');
        process.exit(1);
    }, DEADLINE_MS);
    watchdog.unref();

    const setupProblems = [];
    let chromium;
    try {
        ({ chromium } = await import('playwright-core'));
    } catch (e) {
        setupProblems.push(`cannot load playwright-core (run: npm ci --prefix tests/browser): ${e.message}`);
    }
    if (!fs.existsSync(BIN)) setupProblems.push(`server binary ${BIN} does not exist (set ORCHARD_BIN or build it)`);
    if (!fs.existsSync(CHROMIUM)) setupProblems.push(`${CHROMIUM} does not exist (apt-get install chromium)`);
    try {
        fs.mkdirSync(ARTIFACTS, { recursive: true });
        artifactsOk = true;
    } catch (e) {
        log(`  cannot create ${ARTIFACTS}: ${e.message}`);
    }
    if (!setupProblems.length) {
        try {
            server = new Server();
            await server.init();
            await server.start();
            // Playwright gives the browser a fresh temporary user-data dir and removes it on close.
            browser = await chromium.launch({
                executablePath: CHROMIUM, headless: true, timeout: 30_000,
                args: [...CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${server.spki}`],
            });
            log(`  ${BIN}; Chromium ${browser.version()}; server ${server.url}`);
        } catch (e) {
            setupProblems.push(`set-up failed: ${e.stack || e.message}`);
        }
    }

    for (const { name, fn } of tests) {
        const t0 = Date.now();
        if (setupProblems.length) {
            failed++;
            console.log(`FAIL ${name}`);
            continue;
        }
        try {
            await fn();
            console.log(`ok ${name}`);
            log(`ok ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
        } catch (e) {
            failed++;
            console.log(`FAIL ${name}`);
            log(`---- FAIL ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)\n${e.stack || e.message}`);
            if (server) log(`  server log tail (${server.logPath}):\n${server.logTail(10)}`);
        }
    }
    for (const p of setupProblems) log(`  ${p}`);

    if (browser) await browser.close().catch(e => log(`  browser close: ${e.message}`));
    if (server) {
        const problems = await server.stop();
        if (server.port) {
            if (problems.length) {
                failed++;
                console.log('FAIL server exited cleanly with no sanitizer reports');
                problems.forEach(p => log(`  ${p}`));
            } else {
                console.log('ok server exited cleanly with no sanitizer reports');
            }
        }
        server.cleanup(problems.length > 0);
    }
    clearTimeout(watchdog);
    process.exitCode = failed || setupProblems.length ? 1 : 0;
}

process.on('SIGINT', () => { server?.proc?.kill('SIGTERM'); process.exit(130); });
main().catch(e => {
    log(e.stack || e.message);
    server?.proc?.kill('SIGKILL');
    process.exit(1);
});
