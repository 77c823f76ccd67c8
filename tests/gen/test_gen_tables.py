#!/usr/bin/env python3
"""Tests for tools/gen_tables.py: the PROTOCOL.md 12.1 derivation on a tiny synthetic
schema, determinism, --check, and that the committed src/mdm/ue_tables.[ch] are current.

Run: python3 tests/gen/test_gen_tables.py [TEST_NAME]   (prints "ok NAME" lines; exit 0 = pass)
"""
import contextlib
import io
import os
import shutil
import sys
import tempfile
import textwrap
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
import gen_tables as g  # noqa: E402

IOS, MACOS, VISIONOS = 0, 1, 2

FILES = {
    "mdm/commands/alpha.yaml": """
        title: Alpha
        payload:
          requesttype: Alpha
          supportedOS:
            iOS:
              introduced: '4.0'
              userenrollment:
                mode: allowed
            macOS:
              introduced: '10.7'
              devicechannel: true
              userenrollment:
                mode: forbidden
        payloadkeys:
        - key: Inherit
          type: <string>
        - key: NotOnIOS
          type: <boolean>
          supportedOS:
            iOS:
              introduced: n/a
        - key: Sup
          type: <integer>
          presence: required
          supportedOS:
            iOS:
              supervised: true
        - key: Ign
          type: <dictionary>
          supportedOS:
            iOS:
              userenrollment:
                mode: ignored
              removed: '18.0'
          subkeys:
          - key: Child
            type: <string>
          - key: Late
            type: <string>
            supportedOS:
              iOS:
                introduced: 10.13.4
        - key: Rec
          type: <dictionary>
          subkeys: &rec
          - key: Self
            type: <dictionary>
            subkeys: *rec
        - key: Queries
          type: <array>
          subkeys:
          - key: QueriesItem
            type: <string>
            subkeys:
            - key: UDID
              type: <string>
              supportedOS:
                iOS:
                  userenrollment:
                    mode: forbidden
            - key: OSVersion
              type: <string>
    """,
    "mdm/commands/information.device.yaml": """
        title: DeviceInformation
        payload:
          requesttype: DeviceInformation
          supportedOS:
            iOS:
              introduced: '4.0'
        payloadkeys:
        - key: Queries
          type: <array>
          subkeys:
          - key: QueriesItem
            type: <string>
            subkeys:
            - key: UDID
              type: <string>
              supportedOS:
                iOS:
                  userenrollment:
                    mode: forbidden
    """,
    "mdm/commands/information.security.yaml": """
        title: SecurityInfo
        payload:
          requesttype: SecurityInfo
          supportedOS:
            iOS:
              introduced: '4.0'
            macOS:
              introduced: '10.7'
        responsekeys:
        - key: SecurityInfo
          type: <dictionary>
          subkeys:
          - key: PasscodePresent
            type: <boolean>
            supportedOS:
              iOS:
                userenrollment:
                  mode: forbidden
              macOS:
                introduced: n/a
          - key: PasscodeCompliant
            type: <boolean>
            supportedOS:
              macOS:
                introduced: n/a
          - key: FDE_Enabled
            type: <boolean>
            supportedOS:
              iOS:
                introduced: n/a
    """,
    "mdm/checkin/auth.yaml": """
        title: Authenticate
        payload:
          requesttype: Authenticate
          supportedOS:
            iOS:
              introduced: '4.0'
    """,
    "mdm/profiles/TopLevel.yaml": """
        title: TopLevel
        payload:
          payloadtype: TopLevel
          supportedOS:
            iOS:
              introduced: '4.0'
        payloadkeys:
        - key: ConsentText
          type: <dictionary>
          subkeys:
          - key: ConsentTextItem
            type: <dictionary>
            presence: required
            subkeys:
            - key: ANY
              type: <string>
    """,
    "mdm/profiles/CommonPayloadKeys.yaml": """
        title: Common
        payload:
          payloadtype: CommonPayloadKeys
          supportedOS:
            iOS:
              introduced: '4.0'
        payloadkeys:
        - key: PayloadType
          type: <string>
          presence: required
    """,
    "mdm/profiles/x(a).yaml": """
        title: X variant A
        payload:
          payloadtype: com.example.x
          supportedOS:
            macOS:
              introduced: '10.7'
              userenrollment:
                mode: forbidden
        payloadkeys:
        - key: Shared
          type: <boolean>
          presence: required
        - key: OnlyA
          type: <string>
    """,
    "mdm/profiles/x(b).yaml": """
        title: X variant B
        payload:
          payloadtype: com.example.x
          supportedOS:
            macOS:
              introduced: '10.9'
        payloadkeys:
        - key: Shared
          type: <boolean>
        - key: OnlyB
          type: <integer>
    """,
    "mdm/profiles/com.apple.extensiblesso.yaml": """
        title: SSO
        payload:
          payloadtype: com.apple.extensiblesso
          supportedOS:
            iOS:
              introduced: '13.0'
        payloadkeys:
        - key: ExtensionData
          type: <dictionary>
          subkeys:
          - key: domainRealmMapping
            type: <dictionary>
            subkeys:
            - key: Realm
              type: <array>
              subkeys:
              - key: RealmItem
                type: <string>
    """,
}


def _flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _flatten(t)
        else:
            yield t


def by_name(nodes, name):
    return next(n for n in nodes if n.name == name)


class SyntheticSchema(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="gen_tables_test.")
        for rel, text in FILES.items():
            path = os.path.join(self.dir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(textwrap.dedent(text).lstrip())
        self.notes = []
        self.commands = g.load_dir(self.dir, "commands", "requesttype", False, self.notes)
        self.profiles = g.load_dir(self.dir, "profiles", "payloadtype", True, self.notes)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def alpha(self):
        return by_name(self.commands, "Alpha")

    def test_entry_records(self):
        e = self.alpha()
        self.assertEqual(e.os[IOS], ("allowed", 0, (4, 0, 0), None))
        self.assertEqual(e.os[MACOS], ("forbidden", g.F_DEV, (10, 7, 0), None))
        self.assertEqual(e.os[VISIONOS], g.NA)  # no visionOS entry at all

    def test_keys_inherit_and_override(self):
        keys = self.alpha().children
        self.assertEqual([n.name for n in keys],
                         ["Ign", "Inherit", "NotOnIOS", "Queries", "Rec", "Sup"])  # sorted
        self.assertEqual(by_name(keys, "Inherit").os[IOS], ("allowed", 0, (4, 0, 0), None))
        self.assertEqual(by_name(keys, "Inherit").os[MACOS][0], "forbidden")
        self.assertEqual(by_name(keys, "NotOnIOS").os[IOS], g.NA)
        self.assertEqual(by_name(keys, "NotOnIOS").os[MACOS][0], "forbidden")
        sup = by_name(keys, "Sup")
        self.assertEqual(sup.os[IOS], ("allowed", g.F_SUP, (4, 0, 0), None))
        self.assertTrue(sup.flags & g.K_REQUIRED)

    def test_nested_merge_goes_down_subkeys(self):
        ign = by_name(self.alpha().children, "Ign")
        self.assertEqual(ign.os[IOS], ("ignored", g.F_REM, (4, 0, 0), (18, 0, 0)))
        # The child inherits the parent's merged value; its own fields override one by one.
        self.assertEqual(by_name(ign.children, "Child").os[IOS], ign.os[IOS])
        self.assertEqual(by_name(ign.children, "Late").os[IOS],
                         ("ignored", g.F_REM, (10, 13, 4), (18, 0, 0)))

    def test_enum_and_cycle(self):
        keys = self.alpha().children
        item = by_name(keys, "Queries").children[0]
        self.assertTrue(item.flags & g.K_ENUM)
        self.assertEqual(by_name(item.children, "UDID").os[IOS][0], "forbidden")
        rec = by_name(keys, "Rec")
        self.assertIs(rec.children[0].link, rec)
        table = g.layout([self.commands])
        self.assertEqual(rec.children[0].first, rec.first)
        self.assertLess(len(table), 100)

    def test_same_payload_type_merges_permissively(self):
        x = by_name(self.profiles, "com.example.x")
        self.assertEqual(x.files, ["x(a).yaml", "x(b).yaml"])
        self.assertEqual(x.os[MACOS], ("allowed", 0, (10, 9, 0), None))
        self.assertEqual([n.name for n in x.children], ["OnlyA", "OnlyB", "Shared"])
        shared = by_name(x.children, "Shared")
        self.assertFalse(shared.flags & g.K_REQUIRED)  # required only in one variant
        self.assertEqual(by_name(x.children, "OnlyA").os[MACOS][0], "forbidden")

    def test_quirks(self):
        top = by_name(self.profiles, "TopLevel")
        consent = by_name(top.children, "ConsentText")
        self.assertEqual([(n.name, n.type) for n in consent.children], [("ANY", "STRING")])
        self.assertTrue(consent.children[0].flags & g.K_WILDCARD)
        self.assertFalse(consent.children[0].flags & g.K_REQUIRED)

    def test_render_is_deterministic_and_checkable(self):
        out = tempfile.mkdtemp(prefix="gen_tables_out.")
        try:
            os.makedirs(os.path.join(out, "src", "mdm"))
            quiet = io.StringIO()
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                self.assertEqual(g.main(["--spec", self.dir, "--out-dir", out, "--check"]), 1)
                self.assertEqual(g.main(["--spec", self.dir, "--out-dir", out]), 0)
                self.assertEqual(g.main(["--spec", self.dir, "--out-dir", out, "--check"]), 0)
                with open(os.path.join(out, g.OUT_C), "a") as f:
                    f.write("/* edited */\n")
                self.assertEqual(g.main(["--spec", self.dir, "--out-dir", out, "--check"]), 1)
            self.assertEqual(g.render(self.dir), g.render(self.dir))
        finally:
            shutil.rmtree(out)

    def test_securityinfo_keys_follow_the_response_schema(self):
        text = "\n".join(g.securityinfo_keys(self.dir))
        # iOS: PasscodePresent is forbidden in User Enrollment, FDE_Enabled is not on iOS.
        self.assertIn('securityinfo_keys_ios[] = {\n    "PasscodeCompliant", NULL', text)
        # macOS: the passcode keys are n/a; FDE_Enabled inherits the command's record.
        self.assertIn('securityinfo_keys_macos[] = {\n    "FDE_Enabled", NULL', text)
        # visionOS: the command is not there, so none of its keys are.
        self.assertIn('securityinfo_keys_visionos[] = {\n    NULL', text)

    def test_bad_version_is_an_error(self):
        path = os.path.join(self.dir, "mdm/checkin/bad.yaml")
        with open(path, "w") as f:
            f.write("payload:\n  requesttype: Bad\n  supportedOS:\n    iOS:\n"
                    "      introduced: 10.10\n")  # unquoted: YAML reads the float 10.1
        with self.assertRaises(g.SchemaError):
            g.load_dir(self.dir, "checkin", "requesttype", False, [])


class CommittedTables(unittest.TestCase):
    def test_committed_tables_are_current(self):
        spec = os.environ.get("ORCHARD_SPEC") or g.DEFAULT_SPEC
        if not os.path.isdir(spec):
            self.skipTest("no spec at %s" % spec)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = g.main(["--check"])
        self.assertEqual(rc, 0, err.getvalue())


class HarnessResult(unittest.TestResult):
    """One "ok NAME" / "FAIL NAME" line per test on stdout, like tests/unit/harness.h, so
    tests/run.sh can count them; tracebacks go to stderr."""

    def _line(self, word, test):
        print("%s %s" % (word, test.id().rsplit(".", 1)[-1]), flush=True)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._line("ok", test)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._line("ok", test)
        print("skipped %s: %s" % (test.id(), reason), file=sys.stderr)

    def _bad(self, test, err):
        self._line("FAIL", test)
        print(self._exc_info_to_string(err, test), file=sys.stderr)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._bad(test, err)

    def addError(self, test, err):
        super().addError(test, err)
        self._bad(test, err)


if __name__ == "__main__":
    tests = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    if len(sys.argv) > 1:  # run one test by name, like the C harness
        tests = unittest.TestSuite(t for t in _flatten(tests) if t.id().endswith("." + sys.argv[1]))
    result = HarnessResult()
    tests.run(result)
    sys.exit(0 if result.wasSuccessful() and result.testsRun else 1)
