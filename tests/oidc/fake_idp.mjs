#!/usr/bin/env node
/*
 * A deliberately misbehaving OpenID Connect provider for Orchard's negative tests: discovery,
 * JWKS, an authorization endpoint that answers at once (no login page) and a token endpoint
 * whose ID token is crafted by the current "mode" (tampered, wrong audience, expired, unknown
 * kid, HS256 signed with the public key, alg none, ...). A real provider (provider.mjs) cannot
 * be made to do these things; this one exists only to prove that Orchard refuses them.
 * The token endpoint itself behaves: client authentication, single-use codes, PKCE S256.
 *
 *   node tests/oidc/fake_idp.mjs --port P --cert CERT.pem --key KEY.pem --client-id ID \
 *        --client-secret SECRET
 *
 * Prints "ready https://127.0.0.1:P". Control: POST /control with JSON
 *   {"mode": "good" | "tampered" | "wrong_aud" | "multi_aud_no_azp" | "expired" | "future_iat" |
 *            "wrong_nonce" | "wrong_iss" | "unknown_kid" | "hs256_pubkey" | "alg_none" |
 *            "no_kid" | "other_email" | "other_sub" | "error_access_denied" | "error_server",
 *    "algs": ["RS256", ...]   (announced id_token_signing_alg_values_supported),
 *    "rotate": true           (publish a new key, retire the old one, sign with the new one)}
 * GET /stats answers {"token_requests": n, "jwks_requests": n}.
 */
import { createHash, createHmac, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import { parseArgs } from 'node:util';

const { values: a } = parseArgs({
    options: {
        port: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' },
        'client-id': { type: 'string' }, 'client-secret': { type: 'string' },
    },
});
const ISSUER = `https://127.0.0.1:${a.port}`;
const b64u = b => Buffer.from(b).toString('base64url');

function newKey(kid) {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    return { kid, privateKey, publicKey, jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' } };
}
let keyN = 1;
let current = newKey(`k${keyN}`);
const ghost = newKey('ghost');
const state = { mode: 'good', algs: ['RS256'], published: [current], tokenRequests: 0, jwksRequests: 0 };
const codes = new Map(); // code -> { nonce, challenge, redirect_uri, login_hint, used }

function rs256(header, claims, key) {
    const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(claims))}`;
    return `${input}.${b64u(sign('sha256', Buffer.from(input), key.privateKey))}`;
}

function idToken(c) {
    const now = Math.floor(Date.now() / 1000);
    const claims = { iss: ISSUER, aud: a['client-id'], sub: `sub-${c.login_hint}`, email: c.login_hint,
        email_verified: true, nonce: c.nonce, iat: now, exp: now + 300, auth_time: now };
    const header = { alg: 'RS256', typ: 'JWT', kid: current.kid };
    switch (state.mode) {
    case 'good': return rs256(header, claims, current);
    case 'no_kid': { delete header.kid; return rs256(header, claims, current); }
    case 'tampered': {
        const [h, , s] = rs256(header, claims, current).split('.');
        return `${h}.${b64u(JSON.stringify({ ...claims, sub: 'sub-mallory', email: c.login_hint }))}.${s}`;
    }
    case 'wrong_aud': return rs256(header, { ...claims, aud: 'someone-else' }, current);
    case 'multi_aud_no_azp': return rs256(header, { ...claims, aud: [a['client-id'], 'someone-else'] }, current);
    case 'expired': return rs256(header, { ...claims, iat: now - 7200, exp: now - 3600 }, current);
    case 'future_iat': return rs256(header, { ...claims, iat: now + 3600, exp: now + 7200 }, current);
    case 'wrong_nonce': return rs256(header, { ...claims, nonce: 'not-the-nonce' }, current);
    case 'wrong_iss': return rs256(header, { ...claims, iss: 'https://evil.example' }, current);
    case 'unknown_kid': return rs256({ ...header, kid: 'ghost' }, claims, ghost);
    case 'other_email': return rs256(header, { ...claims, email: 'bob@example.com' }, current);
    case 'other_sub': return rs256(header, { ...claims, sub: 'sub-someone-else' }, current);
    case 'hs256_pubkey': {
        // The classic confusion: HMAC keyed with the RSA public key the verifier has.
        const h = { alg: 'HS256', typ: 'JWT', kid: current.kid };
        const input = `${b64u(JSON.stringify(h))}.${b64u(JSON.stringify(claims))}`;
        const pem = current.publicKey.export({ type: 'spki', format: 'pem' });
        return `${input}.${createHmac('sha256', pem).update(input).digest('base64url')}`;
    }
    case 'alg_none': {
        const h = { alg: 'none', typ: 'JWT' };
        return `${b64u(JSON.stringify(h))}.${b64u(JSON.stringify(claims))}.`;
    }
    default: throw new Error(`unknown mode ${state.mode}`);
    }
}

function send(res, status, body, headers = {}) {
    const data = typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', ...headers });
    res.end(data);
}

async function readBody(req) {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    return Buffer.concat(chunks).toString();
}

const server = https.createServer({ cert: fs.readFileSync(a.cert), key: fs.readFileSync(a.key) }, async (req, res) => {
    const u = new URL(req.url, ISSUER);
    try {
        if (req.method === 'GET' && u.pathname === '/.well-known/openid-configuration') {
            return send(res, 200, {
                issuer: ISSUER, authorization_endpoint: `${ISSUER}/authorize`, token_endpoint: `${ISSUER}/token`,
                jwks_uri: `${ISSUER}/jwks`, response_types_supported: ['code'], subject_types_supported: ['public'],
                id_token_signing_alg_values_supported: state.algs, code_challenge_methods_supported: ['S256'],
                token_endpoint_auth_methods_supported: ['client_secret_basic'],
            });
        }
        if (req.method === 'GET' && u.pathname === '/jwks') {
            state.jwksRequests++;
            return send(res, 200, { keys: state.published.map(k => k.jwk) });
        }
        if (req.method === 'GET' && u.pathname === '/stats')
            return send(res, 200, { token_requests: state.tokenRequests, jwks_requests: state.jwksRequests });
        if (req.method === 'GET' && u.pathname === '/authorize') {
            const p = Object.fromEntries(u.searchParams);
            const back = new URL(p.redirect_uri);
            if (state.mode.startsWith('error_')) {
                back.searchParams.set('error', state.mode === 'error_access_denied' ? 'access_denied' : 'server_error');
            } else {
                const code = randomBytes(16).toString('base64url');
                codes.set(code, { nonce: p.nonce, challenge: p.code_challenge, method: p.code_challenge_method,
                    redirect_uri: p.redirect_uri, login_hint: p.login_hint, prompt: p.prompt, used: false });
                back.searchParams.set('code', code);
            }
            back.searchParams.set('state', p.state);
            res.writeHead(302, { Location: back.toString() });
            return res.end();
        }
        if (req.method === 'POST' && u.pathname === '/token') {
            state.tokenRequests++;
            const f = new URLSearchParams(await readBody(req));
            const auth = req.headers.authorization || '';
            const want = 'Basic ' + Buffer.from(`${encodeURIComponent(a['client-id'])}:${encodeURIComponent(a['client-secret'])}`).toString('base64');
            if (auth !== want) return send(res, 401, { error: 'invalid_client' });
            const c = codes.get(f.get('code'));
            if (!c || f.get('grant_type') !== 'authorization_code') return send(res, 400, { error: 'invalid_grant' });
            if (c.used) return send(res, 400, { error: 'invalid_grant', error_description: 'code already used' });
            c.used = true;
            if (f.get('redirect_uri') !== c.redirect_uri) return send(res, 400, { error: 'invalid_grant' });
            const challenge = createHash('sha256').update(f.get('code_verifier') || '').digest('base64url');
            if (c.method !== 'S256' || challenge !== c.challenge) return send(res, 400, { error: 'invalid_grant', error_description: 'PKCE' });
            return send(res, 200, { access_token: randomBytes(16).toString('base64url'), token_type: 'Bearer', expires_in: 300, id_token: idToken(c) });
        }
        if (req.method === 'POST' && u.pathname === '/control') {
            const c = JSON.parse(await readBody(req) || '{}');
            if (c.mode) state.mode = c.mode;
            if (c.algs) state.algs = c.algs;
            if (c.rotate) {
                current = newKey(`k${++keyN}`);
                state.published = [current];
            }
            return send(res, 200, { mode: state.mode, algs: state.algs, kid: current.kid });
        }
        send(res, 404, { error: 'not_found' });
    } catch (e) {
        console.error(e);
        send(res, 500, { error: 'server_error' });
    }
});
server.listen(Number(a.port), '127.0.0.1', () => console.log(`ready ${ISSUER}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.on('SIGINT', () => server.close(() => process.exit(0)));
