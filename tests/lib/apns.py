"""The APNs stand-in for integration tests: tests/push/apns_stub.mjs, an HTTP/2 TLS server that
checks the client certificate, records every request and answers as scripted."""
import json
import os
import subprocess
import time
import urllib.request

import orchard
from orchard import ok

STUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "push", "apns_stub.mjs")


class Stub:
    """The APNs stand-in, using the server's TLS identity and trusting its push certificate."""

    def __init__(self, s, fast=False, cert=None, key=None):
        """cert/key: the stub's TLS identity (default: the server's, which Orchard trusts)."""
        args = ["node", STUB, "--cert", cert or s.path("tls", "server.pem"), "--key", key or s.path("tls", "server.key"),
                "--client-ca", s.path("push", "cert.pem")]
        if fast:
            args.append("--fast")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(os.path.join(s.tmp, "stub.log"), "ab"))
        line = self.proc.stdout.readline()
        ok(line, "the APNs stub did not start (see %s/stub.log)" % s.tmp)
        info = json.loads(line)
        self.url = "https://127.0.0.1:%d" % info["port"]
        self.control = "http://127.0.0.1:%d" % info["control"]
        orchard.on_exit(self.stop)

    def _call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.control + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def requests(self):
        return self._call("GET", "/requests")

    def stats(self):
        return self._call("GET", "/stats")

    def script(self, default=None, queue=None, tokens=None):
        self._call("POST", "/script", {"default": default or {"status": 200}, "queue": queue or [],
                                       "tokens": tokens or {}})

    def reset(self):
        self._call("POST", "/reset", {})

    def for_token(self, hex_token):
        return [r for r in self.requests() if r["path"] == "/3/device/" + hex_token]

    def wait_for(self, hex_token, n, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.for_token(hex_token)
            if len(got) >= n and got[n - 1]["status"]:
                return got
            time.sleep(0.1)
        raise AssertionError("expected %d push(es) to %s..., got %r" % (n, hex_token[:8], self.for_token(hex_token)))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
