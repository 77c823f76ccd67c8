#!/usr/bin/python3
"""
Issue 13, item 1 (bounded parsing before trust), against a running `orchard serve`: each hostile
plist goes, without any credential, to the three routes that parse a device's plist before
knowing who sent it (PUT /mdm/checkin, PUT /mdm/connect, POST /enroll/<domain>). Each must get a
4xx quickly, the server must keep answering /healthz, and its memory (VmHWM of the server
process) must stay bounded. On the old main the first of these killed the server (stack overflow
in libplist's recursion), and the reference bombs and the one-bucket dictionary ran for minutes
while growing to gigabytes.

The plists are built here (small binary-plist writer below); the same files, minimised, are in
fuzz/corpus/bplist/ and fuzz/corpus/plist/.
"""
import os
import plistlib
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import orchard  # noqa: E402
from orchard import Server, ok, status_4xx, test  # noqa: E402

# The server's answer to any of these must come within this (ASan build, TLS, up to 3.5 MB body).
QUICK_S = 3.0
# Growth of the server's peak RSS over the whole file. Without the budget the reference bomb alone
# passes a gigabyte; with it the peak is the request bodies plus ASan's bookkeeping.
RSS_GROWTH_LIMIT_KB = 200 * 1024

_srv = None
_baseline_hwm = None


def proc_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def srv():
    global _srv, _baseline_hwm
    if _srv is None:
        # A small ASan quarantine, so freed request bodies do not pile up and read as growth.
        asan = os.environ.get("ASAN_OPTIONS", "")
        _srv = Server(name="hostile", env={"ASAN_OPTIONS": (asan + ":" if asan else "") + "quarantine_size_mb=16"})
        _srv.start()
        for path in ("/healthz", "/healthz"):
            _srv.get(path)
        _baseline_hwm = proc_kb(_srv.proc.pid, "VmHWM")
    return _srv


# --- a minimal binary-plist writer ---------------------------------------------------------------

def be(v, n):
    return v.to_bytes(n, "big")


def marker(kind, count):
    if count < 15:
        return bytes([kind | count])
    lg = 0 if count < 0x100 else 1 if count < 0x10000 else 2
    return bytes([kind | 0xF, 0x10 | lg]) + be(count, 1 << lg)


def bp_array(refs, rs):
    return marker(0xA0, len(refs)) + b"".join(be(r, rs) for r in refs)


def bp_dict(keys, vals, rs):
    return marker(0xD0, len(keys)) + b"".join(be(r, rs) for r in keys + vals)


def bp_string(s):
    return marker(0x50, len(s)) + s.encode()


def bp_file(objects, rs, os_, top=0):
    """objects: encoded objects in index order; rs/os_: reference and offset sizes."""
    out = bytearray(b"bplist00")
    offsets = []
    for o in objects:
        offsets.append(len(out))
        out += o
    table = len(out)
    for off in offsets:
        out += be(off, os_)
    out += bytes(6) + bytes([os_, rs]) + struct.pack(">QQQ", len(objects), top, table)
    return bytes(out)


# --- the reproductions ---------------------------------------------------------------------------

def binary_deep(levels=100000):
    """Issue 13 (a): arrays nested 100,000 deep, ~900 KB."""
    objs = [bp_array([i + 1], 4) for i in range(levels)] + [bp_array([], 4)]
    return bp_file(objs, 4, 4)


def xml_comment_trick(levels=190000):
    """Issue 13 (b): a first-line comment full of "</arra" fragments counted the old textual
    depth guard down, so 190,000 levels of nesting (3.99 MB, under the 4 MiB body limit) reached
    libplist, whose recursive free overflowed the worker's stack."""
    return (b"<!-- " + b"</arra" * levels + b" -->\n<plist>" + b"<array>" * levels
            + b"</array>" * levels + b"</plist>")


def reference_bomb(levels=7, fan=12):
    """Issue 13 (c): every level references the next `fan` times: fan^levels values, ~141 bytes."""
    objs = [bp_array([l + 1] * fan, 1) for l in range(levels)] + [bp_string("x")]
    return bp_file(objs, 1, 1)


def text_bomb():
    """A 4 KB string referenced 1,000 x 1,000 times: 4 GB of text from 8 KB."""
    objs = [bp_array([1] * 1000, 2), bp_array([2] * 1000, 2), bp_string("a" * 4096)]
    return bp_file(objs, 2, 2)


def reference_cycle():
    """{"MessageType": [[...itself...]]}: libplist would loop until its path check; refused."""
    objs = [bp_dict([1], [2], 1), bp_string("MessageType"), bp_array([3], 1), bp_array([2], 1)]
    return bp_file(objs, 1, 1)


def utf16_nul_key():
    """Found by fuzz_bplist: a dictionary key in UTF-16 holding U+0000. libplist 2.2 asserts that a
    key's length equals its strlen when the key is read back, so on the old main this 52-byte file
    sent to /mdm/connect aborted the server."""
    key = bytes([0x62]) + b"\x00\x00\x00a"  # UTF-16BE, 2 units: U+0000 'a'
    return bp_file([bp_dict([1], [2], 1), key, bytes([0x09])], 1, 1)


def entity_bomb():
    return (b'<?xml version="1.0"?><!DOCTYPE plist [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;'
            b'&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><plist><dict><key>'
            b'MessageType</key><string>&c;</string></dict></plist>')


def one_bucket_dict(keys=60000):
    """libplist 2.2 hashes dictionary keys into 4,096 buckets (djb2 & 0xFFF) and compares each new
    key with its bucket: keys built from the colliding blocks "Aa"/"B@" all land in one bucket,
    and 60,000 of them (3 MB) cost minutes of CPU. Refused at 512 keys per dictionary here."""
    body = [b"<plist><dict>"]
    for i in range(keys):
        k = "".join("Aa" if (i >> b) & 1 else "B@" for b in range(17))
        body.append(b"<key>" + k.encode() + b"</key><true/>")
    body.append(b"</dict></plist>")
    return b"".join(body)


def processing_instruction_trick():
    """libplist ends "<?>" at once; a scanner looking for "?>" after "<?" would skip the arrays."""
    return b"<?><plist>" + b"<array>" * 5000 + b"</array>" * 5000 + b"</plist><?x?>"


def binary_idle():
    """A well-formed binary Idle: Apple's devices send XML here, so binary is refused outright."""
    return plistlib.dumps({"Status": "Idle", "EnrollmentID": "8D4C1A0E-9B1E-4F53-A1C6-5E4C7A2B9F10"},
                          fmt=plistlib.FMT_BINARY)


ROUTES = (("PUT", "/mdm/checkin"), ("PUT", "/mdm/connect"), ("POST", "/enroll/example.com"))


def send_everywhere(body, what, log_reason=None):
    """Sends body to every pre-authentication plist route and checks the answers."""
    s = srv()
    for method, path in ROUTES:
        before = len(s.log_text())
        t0 = time.monotonic()
        # A (bogus) Mdm-Signature gets a device route past the identity pre-check on the
        # headers: the plist is parsed before the signature is verified.
        r = s.request(method, path, body=body,
                      headers={"Content-Type": "application/x-apple-aspen-mdm-checkin",
                               "Mdm-Signature": "AAAA"}, timeout=120)
        took = time.monotonic() - t0
        status_4xx(r, "%s %s with %s" % (method, path, what))
        ok(took < QUICK_S, "%s %s with %s answered in %.2fs (limit %.1fs)" % (method, path, what, took, QUICK_S))
        ok(s.running(), "the server is still running after %s to %s" % (what, path))
        h = s.get("/healthz", timeout=10)
        ok(h.status == 200, "/healthz answers after %s to %s" % (what, path), h)
        if log_reason and r.status != 413:  # 413: the route's body limit came first
            deadline = time.monotonic() + 5
            while log_reason not in s.log_text()[before:] and time.monotonic() < deadline:
                time.sleep(0.05)
            ok(log_reason in s.log_text()[before:],
               "the log names the refusal (%r) for %s to %s" % (log_reason, what, path))


@test
def binary_plist_nested_100000_deep_is_refused():
    body = binary_deep()
    ok(len(body) > 800000, "the reproduction is ~900 KB")
    send_everywhere(body, "a binary plist nested 100,000 deep", "binary plists are not accepted here")


@test
def xml_comment_hiding_closing_tags_is_refused():
    send_everywhere(xml_comment_trick(), "the XML comment trick", "plist nested deeper than 32")


@test
def binary_reference_bomb_is_refused():
    body = reference_bomb()
    ok(len(body) < 150, "the reproduction is ~141 bytes, got %d" % len(body))
    send_everywhere(body, "a 141-byte reference bomb")
    send_everywhere(text_bomb(), "a binary text bomb")


@test
def binary_reference_cycle_is_refused():
    send_everywhere(reference_cycle(), "a binary reference cycle")


@test
def binary_key_with_nul_is_refused():
    send_everywhere(utf16_nul_key(), "a UTF-16 key holding U+0000")


@test
def xml_entity_bomb_is_refused():
    send_everywhere(entity_bomb(), "an XML entity bomb", "internal subset")


@test
def dictionary_of_colliding_keys_is_refused():
    send_everywhere(one_bucket_dict(), "60,000 keys in one hash bucket", "more than 512 keys")


@test
def processing_instruction_trick_is_refused():
    send_everywhere(processing_instruction_trick(), "a '<?>' before deep nesting",
                    "processing instruction without a target")


@test
def binary_plists_are_refused_on_device_routes():
    send_everywhere(binary_idle(), "a binary Idle", "binary plists are not accepted here")


@test
def memory_stayed_bounded():
    s = srv()
    hwm = proc_kb(s.proc.pid, "VmHWM")
    rss = proc_kb(s.proc.pid, "VmRSS")
    orchard.log("  server VmRSS %d kB, VmHWM %d kB (baseline VmHWM %d kB)" % (rss, hwm, _baseline_hwm))
    ok(hwm - _baseline_hwm < RSS_GROWTH_LIMIT_KB,
       "peak RSS grew by %d kB over the hostile plists (limit %d kB)" % (hwm - _baseline_hwm, RSS_GROWTH_LIMIT_KB))
    ok(s.get("/healthz").status == 200, "/healthz still answers")


if __name__ == "__main__":
    orchard.main()
