// A stand-in for Apple's push service (api.push.apple.com) for Orchard's tests and benchmark:
// an HTTP/2 TLS server that demands a client certificate signed by the given CA (the push
// identity), records every request and answers from a script.
//
//   node tests/push/apns_stub.mjs --cert server.pem --key server.key --client-ca push.pem
//        [--port 0] [--control-port 0] [--fast]
//
// Prints one JSON line {"port": P, "control": C} once listening. The control server is plain
// HTTP/1.1 on 127.0.0.1:C:
//   GET  /requests          every recorded request: {method, path, headers, body, session,
//                           client_subject, status (what was answered, 0 = dropped/pending)}
//   GET  /stats             {"requests": N, "answered": N, "sessions": N, "ok": N}
//   POST /script            {"default": ANSWER, "queue": [ANSWER...], "tokens": {HEX: [ANSWER...]}}
//   POST /reset             forget requests and script
// ANSWER = {"status": 200|4xx|5xx, "reason": "...", "delay_ms": N, "drop": true, "goaway": true}
// "drop" destroys the whole connection (every stream on it fails), like a lost connection.
// "goaway" answers, then sends GOAWAY naming this stream as the last one processed: streams
// with higher ids on that connection are refused (REFUSED_STREAM), never answered or recorded,
// as APNs does when it shuts a connection down gracefully.
// --fast records nothing but counters (benchmark mode).
import http from 'node:http';
import http2 from 'node:http2';
import fs from 'node:fs';
import crypto from 'node:crypto';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, arr) => {
  if (a.startsWith('--')) acc.push([a.slice(2), arr[i + 1] && !arr[i + 1].startsWith('--') ? arr[i + 1] : true]);
  return acc;
}, []));
const fast = !!args.fast;

let requests = [];
let script = { default: { status: 200 }, queue: [], tokens: {} };
let stats = { requests: 0, answered: 0, sessions: 0, ok: 0 };
let sessionSeq = 0;

function nextAnswer(token) {
  const t = script.tokens && script.tokens[token];
  if (t && t.length) return t.shift();
  if (script.queue && script.queue.length) return script.queue.shift();
  return script.default || { status: 200 };
}

const server = http2.createSecureServer({
  cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key),
  ca: fs.readFileSync(args['client-ca']), requestCert: true, rejectUnauthorized: true,
  settings: { maxConcurrentStreams: 1000 }, maxSessionMemory: 1000, maxSessionRejectedStreams: 1e9, maxSessionInvalidFrames: 1e9,
});
server.on('session', (session) => {
  session.stubId = ++sessionSeq;
  stats.sessions++;
  session.on('error', (e) => process.stderr.write(`session ${session.stubId} error ${e.code || e.message}\n`));
  session.on('goaway', (code) => process.stderr.write(`session ${session.stubId} goaway from client ${code}\n`));
  session.on('close', () => process.stderr.write(`session ${session.stubId} closed\n`));
});
server.on('stream', (stream, headers) => {
  const session = stream.session; // kept: stream.session is undefined once the session is gone
  const lastId = session.goawayLastId;
  if (lastId !== undefined && stream.id > lastId) {
    stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
    return;
  }
  stats.requests++;
  const chunks = [];
  stream.on('data', (c) => { if (!fast) chunks.push(c); });
  stream.on('error', () => {});
  stream.on('end', () => {
    const path = headers[':path'] || '';
    const token = path.startsWith('/3/device/') ? path.slice(10) : '';
    let rec = null;
    if (!fast) {
      const peer = session.socket && !session.destroyed ? session.socket.getPeerCertificate() : null;
      rec = {
        method: headers[':method'], path, headers: Object.fromEntries(Object.entries(headers).filter(([k]) => !k.startsWith(':'))),
        body: Buffer.concat(chunks).toString('utf8'), session: session.stubId,
        client_subject: peer && peer.subject ? peer.subject : null, status: 0, t: Date.now(),
      };
      requests.push(rec);
    }
    const ans = fast ? script.default || { status: 200 } : nextAnswer(token);
    const respond = () => {
      const g = session.goawayLastId;
      if (g !== undefined && stream.id > g) { // announced as never processed: refuse, forget
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
        stats.requests--;
        if (rec) requests.splice(requests.indexOf(rec), 1);
        return;
      }
      if (ans.drop) {
        session.destroy();
        return;
      }
      if (stream.destroyed || stream.closed) return;
      const status = ans.status || 200;
      if (status === 200) {
        stream.respond({ ':status': 200, 'apns-id': crypto.randomUUID() });
        stream.end();
        stats.ok++;
      } else {
        const body = JSON.stringify(status === 410 ? { reason: ans.reason || 'Unregistered', timestamp: Date.now() }
          : { reason: ans.reason || 'InternalServerError' });
        stream.respond({ ':status': status, 'content-type': 'application/json', 'apns-id': crypto.randomUUID() });
        stream.end(body);
      }
      stats.answered++;
      if (rec) rec.status = status;
      if (ans.goaway && !session.destroyed) {
        session.goawayLastId = stream.id;
        session.goaway(http2.constants.NGHTTP2_NO_ERROR, stream.id);
      }
    };
    if (ans.delay_ms) setTimeout(respond, ans.delay_ms); else respond();
  });
});
server.on('tlsClientError', () => {});

const control = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const send = (code, obj) => { res.writeHead(code, { 'content-type': 'application/json' }); res.end(JSON.stringify(obj)); };
    if (req.method === 'GET' && req.url === '/requests') return send(200, requests);
    if (req.method === 'GET' && req.url === '/stats') return send(200, stats);
    if (req.method === 'POST' && req.url === '/script') {
      const s = JSON.parse(Buffer.concat(chunks).toString() || '{}');
      script = { default: s.default || { status: 200 }, queue: s.queue || [], tokens: s.tokens || {} };
      return send(200, { ok: true });
    }
    if (req.method === 'POST' && req.url === '/reset') {
      requests = []; script = { default: { status: 200 }, queue: [], tokens: {} };
      stats = { requests: 0, answered: 0, sessions: 0, ok: 0 };
      return send(200, { ok: true });
    }
    send(404, { error: 'not found' });
  });
});

server.listen(Number(args.port || 0), '127.0.0.1', () => {
  control.listen(Number(args['control-port'] || 0), '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ port: server.address().port, control: control.address().port }) + '\n');
  });
});
// A client may close a connection while an answer is pending (GOAWAY, drops): a late callback
// must not take the stub down in the middle of a test. Log it and carry on.
process.on('uncaughtException', (e) => process.stderr.write(`stub: ignored ${e.stack || e}\n`));

const stop = () => { server.close(); control.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
