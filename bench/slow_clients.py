#!/usr/bin/env python3
"""
Slow-client load for `orchard serve` (docs/HTTP.md, "Memory under slow clients"): opens N TLS
connections that each hold the server as long as it lets them, and reports what the server
process costs meanwhile (VmRSS / VmHWM from /proc).

Modes (what every connection does after its TLS handshake):
  headers        sends a request line and then one header byte every --interval seconds
  body           sends PUT /mdm/connect headers (Mdm-Signature, Content-Length 512 KiB), then
                 one body byte every --interval seconds
  stuffed        like body, but first sends --stuff bytes of body at once (bodies held in memory)
  unknown-route  PUT of 4 MiB to a route that does not exist, sent as fast as the server takes it
                 (issue 13's reproduction used 20 such connections)

Connections come from many loopback source addresses (127.0.<i>.<j>, --per-address each) so that
the per-address limit is not what is measured. Needs `ulimit -n` above N (+ a few).

  bench/slow_clients.py --port 8443 --ca var/tls/ca.pem --pid $(pidof orchard) -n 10000 --mode body
"""
import argparse
import asyncio
import os
import ssl
import sys
import time

MIB = 1024 * 1024


def rss(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def source(i, per_address):
    n = i // per_address
    return "127.%d.%d.%d" % (1 + n // 65536 % 250, n // 256 % 256, 1 + n % 250)


class Load:
    def __init__(self, args):
        self.a = args
        self.ctx = ssl.create_default_context(cafile=args.ca) if args.ca else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        if not args.ca:
            self.ctx.verify_mode = ssl.CERT_NONE
        self.open = self.failed = self.cut = self.answered = 0
        self.statuses = {}
        self.sem = asyncio.Semaphore(args.handshakes)
        self.stop = asyncio.Event()

    def request_head(self):
        m = self.a.mode
        if m == "headers":
            return b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        if m == "unknown-route":
            return b"PUT /no/such/route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % (4 * MIB)
        return (b"PUT /mdm/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nMdm-Signature: MIIB\r\n"
                b"Content-Type: application/x-apple-aspen-mdm\r\nContent-Length: %d\r\n\r\n" % (512 * 1024))

    async def watch(self, reader):
        """Counts an answer or the server closing the connection."""
        try:
            data = await reader.read(256)
        except (OSError, ssl.SSLError):
            data = b""
        if self.stop.is_set():
            return  # our own close at the end
        if data.startswith(b"HTTP/1.1 "):
            self.answered += 1
            code = data[9:12].decode("latin-1")
            self.statuses[code] = self.statuses.get(code, 0) + 1
        else:
            self.cut += 1

    async def one(self, i):
        src = source(i, self.a.per_address)
        async with self.sem:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", self.a.port, ssl=self.ctx, server_hostname="127.0.0.1",
                    local_addr=(src, 0)), 60)
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                self.failed += 1
                return
        self.open += 1
        watcher = asyncio.ensure_future(self.watch(reader))
        try:
            writer.write(self.request_head())
            if self.a.mode == "stuffed":
                writer.write(b"s" * self.a.stuff)
            elif self.a.mode == "unknown-route":
                writer.write(b"u" * (4 * MIB - 1))
            await writer.drain()
            while not self.stop.is_set() and not watcher.done():
                await asyncio.sleep(self.a.interval)
                writer.write(b"a")
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        await asyncio.wait([watcher], timeout=0.1)
        self.open -= 1
        writer.close()

    async def run(self):
        t0 = time.monotonic()
        base = rss(self.a.pid) if self.a.pid else {}
        tasks = [asyncio.ensure_future(self.one(i)) for i in range(self.a.connections)]
        peak_open = 0
        while time.monotonic() - t0 < self.a.ramp + self.a.hold:
            await asyncio.sleep(1)
            peak_open = max(peak_open, self.open)
            r = rss(self.a.pid) if self.a.pid else {}
            print("t=%4.0fs open=%5d failed=%5d cut=%5d answered=%5d %s rss=%.1f MiB hwm=%.1f MiB" % (
                time.monotonic() - t0, self.open, self.failed, self.cut, self.answered,
                dict(sorted(self.statuses.items())), r.get("VmRSS", 0) / MIB, r.get("VmHWM", 0) / MIB),
                flush=True)
        end = rss(self.a.pid) if self.a.pid else {}
        self.stop.set()
        await asyncio.wait(tasks, timeout=30)
        print("summary: mode=%s connections=%d peak_open=%d failed=%d cut=%d answered=%d statuses=%s "
              "rss_before=%.1f MiB rss_held=%.1f MiB hwm=%.1f MiB" % (
                  self.a.mode, self.a.connections, peak_open, self.failed, self.cut, self.answered,
                  dict(sorted(self.statuses.items())), base.get("VmRSS", 0) / MIB, end.get("VmRSS", 0) / MIB,
                  end.get("VmHWM", 0) / MIB), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", help="CA file of the server certificate (default: no verification)")
    p.add_argument("--pid", type=int, help="orchard serve's pid, for its memory")
    p.add_argument("-n", "--connections", type=int, default=10000)
    p.add_argument("--mode", choices=("headers", "body", "stuffed", "unknown-route"), default="body")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between trickled bytes")
    p.add_argument("--stuff", type=int, default=100 * 1024, help="body bytes sent at once (stuffed)")
    p.add_argument("--per-address", type=int, default=50, help="connections per source address")
    p.add_argument("--handshakes", type=int, default=64, help="TLS handshakes in flight at once")
    p.add_argument("--ramp", type=float, default=60, help="seconds to let connections open")
    p.add_argument("--hold", type=float, default=30, help="seconds to hold them afterwards")
    a = p.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.connections + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.connections + 256), hard))
    asyncio.run(Load(a).run())


if __name__ == "__main__":
    sys.exit(main())
