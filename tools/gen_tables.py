#!/usr/bin/env python3
"""Generate Orchard's User Enrollment protocol tables from Apple's device-management YAML.

Reads mdm/commands, mdm/checkin and mdm/profiles from a vendored copy of
https://github.com/apple/device-management and writes src/mdm/ue_tables.h and
src/mdm/ue_tables.c: for every MDM command, check-in message and profile payload, and for
every key below it (recursively), the per-OS availability, User Enrollment mode and
supervision flags, derived mechanically as described in PROTOCOL.md section 12.1:

  1. start from payload.supportedOS[OS];
  2. shallow-merge each key's own supportedOS[OS] over its parent's merged value, going
     down subkeys; nested objects (userenrollment, sharedipad) merge field by field;
  3. introduced missing or "n/a" means not on that OS;
  4. userenrollment.mode is allowed / forbidden / required / ignored (default allowed);
  5. supervised: true means supervision is required (never true for a user enrollment).

The C code that interprets the tables lives in src/mdm/ue_rules.c; this script only
flattens the schema. Descriptive text (content, title) is not emitted.

Usage:
  python3 tools/gen_tables.py             regenerate the two files in place
  python3 tools/gen_tables.py --check     exit 1 if the committed files are stale
Spec directory: --spec DIR, else $ORCHARD_SPEC (the spec folder or its apple-device-management/),
else ../shared/spec/apple-device-management
relative to the repository root.
"""
import argparse
import hashlib
import os
import re
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - environment problem, not a code path
    sys.exit("gen_tables.py: PyYAML is required (apt-get install python3-yaml)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SPEC = os.path.join(REPO, "..", "shared", "spec", "apple-device-management")
OUT_H = os.path.join("src", "mdm", "ue_tables.h")
OUT_C = os.path.join("src", "mdm", "ue_tables.c")

# Enum order in C. iOS covers iPadOS. tvOS and watchOS have no User Enrollment but cost
# little to keep, and keep the tables a faithful flattening of the schema.
OSES = ("iOS", "macOS", "visionOS", "tvOS", "watchOS")
OS_ENUM = ("UE_OS_IOS", "UE_OS_MACOS", "UE_OS_VISIONOS", "UE_OS_TVOS", "UE_OS_WATCHOS")

MODES = ("allowed", "forbidden", "required", "ignored")
TYPES = {
    "<string>": "STRING",
    "<integer>": "INTEGER",
    "<real>": "REAL",
    "<boolean>": "BOOLEAN",
    "<date>": "DATE",
    "<data>": "DATA",
    "<array>": "ARRAY",
    "<dictionary>": "DICTIONARY",
    "<any>": "ANY",
}

# Per-OS flags (struct ue_os_info.flags), short names used inside the .c file.
F_SUP, F_DEV, F_USR, F_DEP, F_DEPR, F_REM, F_BETA = 1, 2, 4, 8, 16, 32, 64
OS_FLAG_NAMES = (
    (F_SUP, "SUP", "UE_F_SUPERVISED", "supervision required"),
    (F_DEV, "DEV", "UE_F_DEVICE_CHANNEL", "schema says devicechannel: true"),
    (F_USR, "USR", "UE_F_USER_CHANNEL", "schema says userchannel: true"),
    (F_DEP, "DEP", "UE_F_REQUIRES_DEP", "requiresdep: true (Automated Device Enrollment only)"),
    (F_DEPR, "DPR", "UE_F_DEPRECATED", "a deprecated version is given"),
    (F_REM, "REM", "UE_F_REMOVED", "a removed version is given (see removed)"),
    (F_BETA, "BETA", "UE_F_BETA", "beta on this OS"),
)

# Key flags (struct ue_key.flags).
K_REQUIRED, K_WILDCARD, K_ENUM, K_VARIANTS = 1, 2, 4, 8

VERSION_RE = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?$")
NA = ("NA", 0, None, None)


class SchemaError(Exception):
    pass


def parse_version(v, where):
    if not isinstance(v, str):
        raise SchemaError("%s: version %r is not a string (quote it in YAML)" % (where, v))
    if v == "all":  # loginwindow.yaml: available in every version
        return (0, 0, 0)
    m = VERSION_RE.match(v)
    if not m:
        raise SchemaError("%s: cannot parse version %r" % (where, v))
    parts = tuple(int(x) if x else 0 for x in m.groups())
    if parts[0] >= 64 or parts[1] >= 64 or parts[2] >= 16:
        raise SchemaError("%s: version %r does not fit UE_VERSION()" % (where, v))
    return parts


def merge_os(parent, own, where):
    """Step 2 of PROTOCOL.md 12.1: the key's supportedOS[OS] over the parent's merged value."""
    if own is not None and not isinstance(own, dict):
        raise SchemaError("%s: supportedOS is not a mapping" % where)
    out = {}
    for name in OSES:
        base = parent.get(name, {})
        mine = (own or {}).get(name)
        if mine is None:
            out[name] = base
            continue
        merged = dict(base)
        for field, value in mine.items():
            if isinstance(value, dict) and isinstance(merged.get(field), dict):
                sub = dict(merged[field])
                sub.update(value)
                merged[field] = sub
            else:
                merged[field] = value
        out[name] = merged
    return out


def os_record(m, where):
    """Steps 3-5: one OS's merged supportedOS value -> (mode, flags, introduced, removed)."""
    intro = m.get("introduced")
    if intro is None or intro == "n/a":
        return NA
    ue = m.get("userenrollment") or {}
    mode = ue.get("mode", "allowed")
    if mode not in MODES:
        raise SchemaError("%s: unknown userenrollment.mode %r" % (where, mode))
    flags = 0
    if m.get("supervised") is True:
        flags |= F_SUP
    if m.get("devicechannel") is True:
        flags |= F_DEV
    if m.get("userchannel") is True:
        flags |= F_USR
    if m.get("requiresdep") is True:
        flags |= F_DEP
    if m.get("deprecated") not in (None, "n/a"):
        flags |= F_DEPR
    if m.get("beta") is True:
        flags |= F_BETA
    removed = None
    if m.get("removed") not in (None, "n/a"):
        flags |= F_REM
        removed = parse_version(m["removed"], where)
    return (mode, flags, parse_version(intro, where), removed)


def os_records(merged, where):
    return tuple(os_record(merged[name], "%s [%s]" % (where, name)) for name in OSES)


def sort_key(name):
    # The C side compares with strcmp(), i.e. by bytes.
    return name.encode("utf-8")


class Node:
    """One payload key. children is a list (possibly empty); link is set instead when the
    schema's subkeys refer back to an ancestor (YAML alias cycles, e.g. homescreenlayout)."""

    __slots__ = ("name", "type", "flags", "os", "children", "link", "first")

    def __init__(self, name, ctype, flags, os_):
        self.name, self.type, self.flags, self.os = name, ctype, flags, os_
        self.children, self.link, self.first = [], None, 0


def build_keys(keys, parent, where, stack):
    if not isinstance(keys, list):
        raise SchemaError("%s: subkeys is not a list" % where)
    nodes, seen = [], set()
    for k in keys:
        name = k.get("key")
        if not isinstance(name, str):
            raise SchemaError("%s: key without a name" % where)
        path = "%s.%s" % (where, name)
        if name in seen:
            raise SchemaError("%s: duplicate key" % path)
        seen.add(name)
        if k.get("type") not in TYPES:
            raise SchemaError("%s: unknown type %r" % (path, k.get("type")))
        merged = merge_os(parent, k.get("supportedOS"), path)
        flags = K_REQUIRED if k.get("presence") == "required" else 0
        if name == "ANY":
            flags |= K_WILDCARD
        node = Node(name, TYPES[k["type"]], flags, os_records(merged, path))
        sub = k.get("subkeys")
        if sub:
            if id(sub) in stack:
                node.link = stack[id(sub)]
            else:
                stack[id(sub)] = node
                node.children = build_keys(sub, merged, path, stack)
                del stack[id(sub)]
            kids = node.link.children if node.link else node.children
            if node.type not in ("ARRAY", "DICTIONARY"):
                # A scalar with subkeys lists its allowed values, each with its own
                # supportedOS (DeviceInformation Queries items).
                node.flags |= K_ENUM
            elif node.type == "ARRAY" and len(kids) > 1:
                # Heterogeneous array items told apart by their "Item" value (Settings). The
                # C code matches that value against the variant's name, so they must agree.
                for v in sub:
                    item = next((c for c in v.get("subkeys") or [] if c.get("key") == "Item"),
                                None)
                    if v.get("type") != "<dictionary>" or item is None:
                        raise SchemaError("%s: array variant %s has no Item key"
                                          % (path, v.get("key")))
                    if item.get("rangelist") != [v["key"]]:
                        raise SchemaError("%s.%s: Item rangelist %r does not match the name"
                                          % (path, v["key"], item.get("rangelist")))
                node.flags |= K_VARIANTS
        nodes.append(node)
    nodes.sort(key=lambda n: sort_key(n.name))
    return nodes


def rank(rec):
    """How usable a per-OS record is; used to merge files that share one PayloadType."""
    mode, flags = rec[0], rec[1]
    return (mode != "NA", mode != "forbidden", not flags & F_SUP, mode in ("allowed", "required"))


def merge_records(a, b):
    return tuple(x if rank(x) >= rank(y) else y for x, y in zip(a, b))


def merge_nodes(a, b, where, notes):
    """Union of two key lists (several YAML files describe one PayloadType, e.g. com.apple.MCX
    and the Kerberos variant of com.apple.extensiblesso). A key in both keeps the more
    permissive per-OS record: the validator must not reject what either variant allows."""
    by_name = {n.name: n for n in a}
    for n in b:
        old = by_name.get(n.name)
        if old is None:
            by_name[n.name] = n
            continue
        path = "%s.%s" % (where, n.name)
        if old.type != n.type:
            notes.append("%s: type %s vs %s, using ANY" % (path, old.type, n.type))
            old.type = "ANY"
            old.flags &= ~(K_ENUM | K_VARIANTS)
        old.os = merge_records(old.os, n.os)
        old.flags = (old.flags & ~K_REQUIRED) | (old.flags & n.flags & K_REQUIRED)
        if old.link or n.link:
            raise SchemaError("%s: cannot merge recursive keys" % path)
        if not old.children or not n.children:
            old.children = []  # one variant leaves it free-form: stay lenient
        else:
            old.children = merge_nodes(old.children, n.children, path, notes)
    return sorted(by_name.values(), key=lambda n: sort_key(n.name))


# Places where the schema names a placeholder instead of marking a free-form key, which
# would make the validator warn about every real key. Each entry turns the placeholder
# into the schema's own "ANY" wildcard (keeping its per-OS data); kept short on purpose.
QUIRKS = {
    # {"default": "...", "en": "..."}: language codes to strings, modelled as a nested
    # dictionary "ConsentTextItem" of ANY strings.
    ("TopLevel", "ConsentText.ConsentTextItem"): "STRING",
    # {"REALM.EXAMPLE.COM": ["domain", ...]}: realm names mapped to domain arrays.
    ("com.apple.extensiblesso", "ExtensionData.domainRealmMapping.Realm"): "ARRAY",
}


def apply_quirks(entry, used):
    for (name, path), ctype in QUIRKS.items():
        if name != entry.name:
            continue
        *parents, leaf = path.split(".")
        nodes = entry.children
        for part in parents + [leaf]:
            node = next((n for n in nodes if n.name == part), None)
            if node is None:
                raise SchemaError("QUIRKS: %s has no key %s" % (name, path))
            if part != leaf:
                nodes = node.children
        if any(n.name == "ANY" for n in nodes):
            raise SchemaError("QUIRKS: %s %s already has an ANY sibling" % (name, path))
        node.name, node.type = "ANY", ctype
        node.flags = (node.flags | K_WILDCARD) & ~K_REQUIRED
        if ctype != "ARRAY":
            node.children = []
        nodes.sort(key=lambda n: sort_key(n.name))
        used.add((name, path))


class Entry:
    __slots__ = ("name", "os", "children", "files", "first")

    def __init__(self, name, os_, children, files):
        self.name, self.os, self.children, self.files, self.first = name, os_, children, files, 0


def load_dir(spec, sub, type_field, allow_dupes, notes):
    entries = {}
    folder = os.path.join(spec, "mdm", sub)
    if not os.path.isdir(folder):
        raise SchemaError("%s: no such directory" % folder)
    for fname in sorted(os.listdir(folder)):
        if not fname.endswith(".yaml"):
            continue
        path = os.path.join(folder, fname)
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        where = "%s/%s" % (sub, fname)
        payload = doc.get("payload") or {}
        name = payload.get(type_field)
        if not isinstance(name, str):
            raise SchemaError("%s: no payload.%s" % (where, type_field))
        merged = merge_os({}, payload.get("supportedOS") or {}, where)
        keys = doc.get("payloadkeys") or []
        e = Entry(name, os_records(merged, where), build_keys(keys, merged, name, {}), [fname])
        old = entries.get(name)
        if old is None:
            entries[name] = e
        elif not allow_dupes:
            raise SchemaError("%s: %s %s also in %s" % (where, type_field, name, old.files))
        else:
            old.os = merge_records(old.os, e.os)
            old.children = merge_nodes(old.children, e.children, name, notes)
            old.files.append(fname)
    out = [entries[k] for k in sorted(entries, key=sort_key)]
    used = set()
    for e in out:
        apply_quirks(e, used)
    if sub == "profiles" and used != set(QUIRKS):
        raise SchemaError("QUIRKS no longer match the schema: %s" % sorted(set(QUIRKS) - used))
    return out


def spec_digest(spec):
    h = hashlib.sha256()
    for sub in ("checkin", "commands", "profiles"):
        folder = os.path.join(spec, "mdm", sub)
        for fname in sorted(os.listdir(folder)):
            if fname.endswith(".yaml"):
                h.update(("mdm/%s/%s\0" % (sub, fname)).encode())
                with open(os.path.join(folder, fname), "rb") as f:
                    h.update(f.read())
                h.update(b"\0")
    return h.hexdigest()


def c_str(s):
    if not all(32 <= ord(ch) < 127 for ch in s):
        raise SchemaError("non-ASCII name %r" % s)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def layout(groups):
    """Places every key in one flat array, breadth first, so each key's children are a
    contiguous, sorted run [first, first + count)."""
    table = []
    for entries in groups:
        for e in entries:
            e.first = len(table) if e.children else 0
            table.extend(e.children)
    i = 0
    while i < len(table):
        n = table[i]
        if n.children:
            n.first = len(table)
            table.extend(n.children)
        i += 1
    for n in table:
        if n.link is not None:
            n.first = n.link.first
    if len(table) >= 65536:
        raise SchemaError("too many keys for uint16_t indexes: %d" % len(table))
    return table


def fmt_version(v):
    return "0" if v is None else "V(%d, %d, %d)" % v


def fmt_flags(flags):
    names = [short for bit, short, _, _ in OS_FLAG_NAMES if flags & bit]
    return "|".join(names) if names else "0"


def fmt_record(rec):
    if rec == NA:
        return "NA"
    mode, flags, intro, removed = rec
    return "OS(%s, %s, %s, %s)" % (mode.upper(), fmt_flags(flags), fmt_version(intro),
                                  fmt_version(removed))


def key_flags(flags):
    names = [n for bit, n in ((K_REQUIRED, "UE_K_REQUIRED"), (K_WILDCARD, "UE_K_WILDCARD"),
                              (K_ENUM, "UE_K_ENUM"), (K_VARIANTS, "UE_K_VARIANTS")) if flags & bit]
    return "|".join(names) if names else "0"


def unusable(rec):
    return rec[0] == "forbidden" or (rec[0] != "NA" and rec[1] & (F_SUP | F_DEP))


def forbidden_queries(commands):
    """DeviceInformation Queries items per OS that a user enrollment may not ask for: the
    values are the subkeys of Queries.QueriesItem (PROTOCOL.md 12.2)."""
    cmd = next(e for e in commands if e.name == "DeviceInformation")
    queries = next(n for n in cmd.children if n.name == "Queries")
    item = queries.children[0]
    if not item.flags & K_ENUM:
        raise SchemaError("DeviceInformation.Queries items are no longer enumerated")
    out = []
    for i, name in enumerate(OSES):
        names = [c.name for c in item.children if unusable(c.os[i])]
        out.append("static const char *const forbidden_queries_%s[] = {" % name.lower())
        line = "   "
        for q in names + ["NULL"]:
            word = (c_str(q) if q != "NULL" else q) + ("," if q != "NULL" else "")
            if len(line) + 1 + len(word) > 100:
                out.append(line)
                line = "   "
            line += " " + word
        out.append(line)
        out.append("};")
    out.append("const char *const *const ue_devinfo_forbidden_queries[UE_OS_COUNT] = {")
    out.extend("    forbidden_queries_%s," % name.lower() for name in OSES)
    out.append("};")
    return out


def c_list(out, cname, names):
    """A NULL-terminated `static const char *const cname[]` wrapped at 100 columns."""
    out.append("static const char *const %s[] = {" % cname)
    line = "   "
    for q in names + ["NULL"]:
        word = (c_str(q) + ",") if q != "NULL" else q
        if len(line) + 1 + len(word) > 100:
            out.append(line)
            line = "   "
        line += " " + word
    out.append(line)
    out.append("};")


def securityinfo_keys(spec):
    """The keys of the SecurityInfo response dictionary that a user-enrolled device reports,
    per OS: the subkeys of responsekeys.SecurityInfo in information.security.yaml, with
    supportedOS merged down from the command as for payload keys (PROTOCOL.md 12.1), keeping
    those on the OS and neither forbidden nor supervised-only. Orchard's inventory reads only
    these (src/mdm/inventory.c)."""
    where = "commands/information.security.yaml"
    with open(os.path.join(spec, "mdm", "commands", "information.security.yaml"),
              encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    merged = merge_os({}, (doc.get("payload") or {}).get("supportedOS") or {}, where)
    top = next((k for k in doc.get("responsekeys") or [] if k.get("key") == "SecurityInfo"), None)
    if top is None:
        raise SchemaError("%s: no responsekeys.SecurityInfo" % where)
    merged = merge_os(merged, top.get("supportedOS"), where)
    per_os = [[] for _ in OSES]
    for sub in top.get("subkeys") or []:
        name = sub.get("key")
        if not isinstance(name, str):
            raise SchemaError("%s: a SecurityInfo subkey has no name" % where)
        recs = os_records(merge_os(merged, sub.get("supportedOS"), "%s %s" % (where, name)),
                          "%s %s" % (where, name))
        for i, rec in enumerate(recs):
            if rec != NA and not unusable(rec):
                per_os[i].append(name)
    out = []
    for i, name in enumerate(OSES):
        c_list(out, "securityinfo_keys_%s" % name.lower(), sorted(per_os[i], key=sort_key))
    out.append("const char *const *const ue_securityinfo_keys[UE_OS_COUNT] = {")
    out.extend("    securityinfo_keys_%s," % name.lower() for name in OSES)
    out.append("};")
    return out


HEADER_TEMPLATE = """\
/*
 * Generated by tools/gen_tables.py from Apple's device-management YAML. DO NOT EDIT:
 * change the generator (or re-vendor the spec) and run `python3 tools/gen_tables.py`;
 * `make gen-check` fails when this file is stale.
 *
 * What the tables hold (PROTOCOL.md 12.1): for every MDM command (RequestType), check-in
 * message (MessageType) and profile payload (PayloadType), and for every key below it,
 * the per-OS availability, User Enrollment mode and supervision flags, with supportedOS
 * merged down the key tree. Descriptive text, value ranges and defaults are left out.
 * src/mdm/ue_rules.h is the API over these tables; most callers should use that.
 *
 * Layout: entries (struct ue_entry) are sorted by name for bsearch(). All keys of all
 * entries live in ue_keys[]; the keys directly below an entry or key are the run
 * ue_keys[first .. first + count), sorted by name (strcmp order). Per-OS data is shared
 * through ue_avail[], which holds each distinct five-OS record once.
 *
 * Spec: %(digest)s
 */
#ifndef ORCHARD_MDM_UE_TABLES_H
#define ORCHARD_MDM_UE_TABLES_H

#include <stdint.h>

/* The OS families of Apple's schema. iOS covers iPadOS. */
enum ue_os {
%(os_enum)s
    UE_OS_COUNT
};

/* userenrollment.mode of PROTOCOL.md 12.1 step 4, plus "not on this OS" (step 3). */
enum ue_mode {
    UE_MODE_NA = 0,    /* introduced missing or n/a: the OS does not know it */
    UE_MODE_ALLOWED,   /* works with or without User Enrollment */
    UE_MODE_FORBIDDEN, /* not in User Enrollment */
    UE_MODE_REQUIRED,  /* only in User Enrollment (e.g. EnrollmentID) */
    UE_MODE_IGNORED    /* accepted, but has no effect in User Enrollment */
};

/* The schema's value types; UE_T_ANY means any plist value. */
enum ue_type {
    UE_T_STRING,
    UE_T_INTEGER,
    UE_T_REAL,
    UE_T_BOOLEAN,
    UE_T_DATE,
    UE_T_DATA,
    UE_T_ARRAY,
    UE_T_DICTIONARY,
    UE_T_ANY
};

/* struct ue_os_info.flags */
%(os_flags)s

/* struct ue_key.flags */
#define UE_K_REQUIRED 0x01 /* presence: required */
#define UE_K_WILDCARD 0x02 /* the schema's "ANY" key: matches keys not listed */
#define UE_K_ENUM 0x04     /* scalar whose children are its allowed values (Queries items) */
#define UE_K_VARIANTS 0x08 /* array of dicts; the child named by an item's "Item" applies */

/* OS versions packed into 16 bits so they compare as integers: 10.13.4 > 10.13. */
#define UE_VERSION(major, minor, patch) ((uint16_t)(((major) << 10) | ((minor) << 4) | (patch)))

/* One OS's view of a command, message, payload or key. */
struct ue_os_info {
    uint8_t mode;        /* enum ue_mode */
    uint8_t flags;       /* UE_F_* */
    uint16_t introduced; /* UE_VERSION(); 0 when mode is UE_MODE_NA */
    uint16_t removed;    /* UE_VERSION(); 0 unless UE_F_REMOVED */
};

struct ue_avail {
    struct ue_os_info os[UE_OS_COUNT]; /* indexed by enum ue_os */
};

struct ue_key {
    const char *name; /* Apple's spelling; array items carry the schema's item name */
    uint16_t avail;   /* index into ue_avail[] */
    uint16_t first;   /* children: ue_keys[first .. first + count) */
    uint16_t count;
    uint8_t type;  /* enum ue_type */
    uint8_t flags; /* UE_K_* */
};

/* A RequestType, MessageType or PayloadType and its top-level keys. */
struct ue_entry {
    const char *name;
    uint16_t avail;
    uint16_t first;
    uint16_t count;
};

#define UE_N_AVAIL %(n_avail)d
#define UE_N_KEYS %(n_keys)d
#define UE_N_COMMANDS %(n_commands)d
#define UE_N_CHECKINS %(n_checkins)d
#define UE_N_PAYLOADS %(n_payloads)d

extern const struct ue_avail ue_avail[UE_N_AVAIL];
extern const struct ue_key ue_keys[UE_N_KEYS];
/* mdm/commands/ (one per YAML file), by RequestType */
extern const struct ue_entry ue_commands[UE_N_COMMANDS];
/* mdm/checkin/, by MessageType */
extern const struct ue_entry ue_checkins[UE_N_CHECKINS];
/* mdm/profiles/, by PayloadType (files sharing one are merged), without the two below */
extern const struct ue_entry ue_payloads[UE_N_PAYLOADS];
/* TopLevel.yaml: the keys of the profile's outer dictionary */
extern const struct ue_entry ue_profile_toplevel;
/* CommonPayloadKeys.yaml: PayloadIdentifier, PayloadUUID, ... valid in every payload */
extern const struct ue_entry ue_payload_common;
/* DeviceInformation Queries items that are forbidden (or supervised-only) in User
 * Enrollment, per OS, sorted, NULL-terminated. Derived from the same key tree as ue_keys. */
extern const char *const *const ue_devinfo_forbidden_queries[UE_OS_COUNT];
/* SecurityInfo response keys a user-enrolled device reports, per OS (on the OS and neither
 * forbidden nor supervised-only in User Enrollment), sorted, NULL-terminated. From the
 * command's responsekeys, which ue_keys does not hold. */
extern const char *const *const ue_securityinfo_keys[UE_OS_COUNT];

#endif
"""


def aligned(rows):
    """Code and trailing comments, the comments in one column as clang-format puts them."""
    width = max(len(code) for code, _ in rows) + 1
    return "\n".join(code.ljust(width) + comment for code, comment in rows)


def render(spec):
    notes = []
    commands = load_dir(spec, "commands", "requesttype", False, notes)
    checkins = load_dir(spec, "checkin", "requesttype", False, notes)
    profiles = load_dir(spec, "profiles", "payloadtype", True, notes)
    special = {e.name: e for e in profiles if e.name in ("TopLevel", "CommonPayloadKeys")}
    if len(special) != 2:
        raise SchemaError("profiles: TopLevel.yaml or CommonPayloadKeys.yaml missing")
    payloads = [e for e in profiles if e.name not in special]
    toplevel, common = special["TopLevel"], special["CommonPayloadKeys"]

    table = layout([commands, checkins, payloads, [toplevel, common]])
    avail_index = {}

    def avail(os_):
        if os_ not in avail_index:
            avail_index[os_] = len(avail_index)
        return avail_index[os_]

    def entry_init(e):
        return "{%s, %d, %d, %d}" % (c_str(e.name), avail(e.os), e.first, len(e.children))

    def entry_line(e):
        return "    %s, /* %s */" % (entry_init(e), ", ".join(e.files))

    body = []
    for title, entries in (("commands", commands), ("checkins", checkins),
                           ("payloads", payloads)):
        body.append("const struct ue_entry ue_%s[UE_N_%s] = {" % (title, title.upper()))
        body.extend(entry_line(e) for e in entries)
        body.append("};")
        body.append("")
    for cname, e in (("ue_profile_toplevel", toplevel), ("ue_payload_common", common)):
        body.append("const struct ue_entry %s = %s;" % (cname, entry_init(e)))
    body.append("")

    # Label each sibling run with its parent so the file can be read by hand.
    owner = {}
    for group in (commands, checkins, payloads, [toplevel, common]):
        for e in group:
            if e.children:
                owner[e.first] = e.name
    for n in table:
        if n.children and n.link is None:
            owner.setdefault(n.first, n.name)
    keys = ["const struct ue_key ue_keys[UE_N_KEYS] = {"]
    for i, n in enumerate(table):
        if i in owner:
            keys.append("    /* %d: %s */" % (i, owner[i]))
        kids = n.link.children if n.link else n.children
        keys.append("    {%s, %d, %d, %d, UE_T_%s, %s}," % (c_str(n.name), avail(n.os), n.first,
                                                            len(kids), n.type, key_flags(n.flags)))
    keys.append("};")

    keys.append("")
    keys.extend(forbidden_queries(commands))
    keys.append("")
    keys.extend(securityinfo_keys(spec))

    av = ["const struct ue_avail ue_avail[UE_N_AVAIL] = {"]
    for os_, i in sorted(avail_index.items(), key=lambda kv: kv[1]):
        av.append("    /* %d */ {{%s}}," % (i, ", ".join(fmt_record(r) for r in os_)))
    av.append("};")

    digest = spec_digest(spec)
    n = dict(digest="sha256 " + digest, n_avail=len(avail_index), n_keys=len(table),
             n_commands=len(commands), n_checkins=len(checkins), n_payloads=len(payloads))
    n["os_enum"] = aligned([("    %s," % c, "/* %s */" % o) for c, o in zip(OS_ENUM, OSES)])
    n["os_flags"] = aligned([("#define %s 0x%02x" % (cname, bit), "/* %s */" % doc)
                             for bit, _, cname, doc in OS_FLAG_NAMES])
    header = HEADER_TEMPLATE % n

    out = []
    out.append("/* Generated by tools/gen_tables.py from Apple's device-management YAML.")
    out.append(" * DO NOT EDIT; see ue_tables.h.")
    out.append(" * Spec sha256 %s */" % digest)
    out.append("// clang-format off")
    out.append('#include "mdm/ue_tables.h"')
    out.append("")
    out.append("#include <stddef.h>")
    out.append("")
    out.append("#define V UE_VERSION")
    out.append("#define NA {UE_MODE_NA, 0, 0, 0}")
    out.append("#define OS(mode, flags, introduced, removed) "
               "{UE_MODE_##mode, (flags), (introduced), (removed)}")
    for bit, short, cname, _ in OS_FLAG_NAMES:
        out.append("#define %s %s" % (short, cname))
    out.append("")
    out.extend(av)
    out.append("")
    out.extend(body)
    out.extend(keys)
    out.append("// clang-format on")
    out.append("")
    for note in notes:
        print("gen_tables.py: note: %s" % note, file=sys.stderr)
    return {OUT_H: header, OUT_C: "\n".join(out)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", help="apple-device-management directory (default: $ORCHARD_SPEC "
                    "or ../shared/spec/apple-device-management from the repo root)")
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if the committed files differ")
    ap.add_argument("--out-dir", default=REPO,
                    help="repository root to write into (default: %(default)s)")
    args = ap.parse_args(argv)
    spec = args.spec or os.environ.get("ORCHARD_SPEC") or DEFAULT_SPEC
    # ORCHARD_SPEC may name the whole spec folder (as tests/run.sh sets it) or the YAML itself.
    if os.path.isdir(os.path.join(spec, "apple-device-management")):
        spec = os.path.join(spec, "apple-device-management")
    try:
        files = render(os.path.normpath(spec))
    except (SchemaError, OSError, yaml.YAMLError) as e:
        print("gen_tables.py: %s" % e, file=sys.stderr)
        return 2
    stale = []
    for rel, text in sorted(files.items()):
        path = os.path.join(args.out_dir, rel)
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        if args.check:
            stale.append(rel)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print("gen_tables.py: wrote %s" % rel)
    if stale:
        print("gen_tables.py: %s out of date; run `python3 tools/gen_tables.py` and commit"
              % " and ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
