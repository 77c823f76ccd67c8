#!/usr/bin/env node
/*
 * A real OpenID Connect provider for Orchard's federation tests: the npm package
 * `oidc-provider` on loopback over TLS, with its built-in login and consent pages
 * (devInteractions). Test accounts: alice@example.com and bob@example.com (the dev login page
 * accepts any password; the point is the protocol, not the IdP's password check).
 *
 *   node tests/oidc/provider.mjs --port P --cert CERT.pem --key KEY.pem \
 *       --client-id ID --client-secret SECRET --redirect-uri https://127.0.0.1:Q/auth/oidc/callback
 *
 * Prints "ready https://127.0.0.1:P" on stdout once listening (the issuer); stops on SIGTERM.
 * Only 127.0.0.1. Needs `npm ci --prefix tests/oidc`.
 */
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: a } = parseArgs({
    options: {
        port: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' },
        'client-id': { type: 'string' }, 'client-secret': { type: 'string' },
        'redirect-uri': { type: 'string', multiple: true },
    },
});
for (const k of ['port', 'cert', 'key', 'client-id', 'client-secret', 'redirect-uri'])
    if (!a[k]) { console.error(`provider.mjs: --${k} is required`); process.exit(2); }

const ISSUER = `https://127.0.0.1:${a.port}`;
const ACCOUNTS = {
    'alice@example.com': { sub: 'alice-0001', name: 'Alice Example' },
    'bob@example.com': { sub: 'bob-0002', name: 'Bob Example' },
};

// A throwaway signing key (RS256), new for every run.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256-1', alg: 'RS256', use: 'sig' };

const provider = new Provider(ISSUER, {
    clients: [{
        client_id: a['client-id'],
        client_secret: a['client-secret'],
        redirect_uris: a['redirect-uri'],
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [jwk] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    // Put the scope's claims in the ID token too (Orchard reads the ID token, not userinfo).
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: true } },
    pkce: { required: () => true },
    cookies: { keys: ['orchard-test-cookie-key-not-secret'] },
    async findAccount(ctx, id) {
        const acct = ACCOUNTS[String(id).toLowerCase()];
        if (!acct) return undefined;
        return {
            accountId: id,
            async claims() {
                return { sub: acct.sub, email: String(id).toLowerCase(), email_verified: true, name: acct.name };
            },
        };
    },
});
provider.on('server_error', (ctx, err) => console.error('provider server_error', err));

const server = https.createServer({ cert: fs.readFileSync(a.cert), key: fs.readFileSync(a.key) }, provider.callback());
server.listen(Number(a.port), '127.0.0.1', () => console.log(`ready ${ISSUER}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.on('SIGINT', () => server.close(() => process.exit(0)));
