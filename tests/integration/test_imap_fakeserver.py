#!/usr/bin/env python3
"""The IMAP client against a scripted fake server (tests/harness/fakeimap.py)
for what Dovecot will not do on demand: BYE in the middle of a literal,
connection resets, plaintext injected after STARTTLS, a server without
STARTTLS, silence, malformed and oversized responses, and the
authentication variants. Each asserts the exact error text imapcli prints
and that the client exits cleanly (the sanitizers would fail it
otherwise)."""

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import fakeimap  # noqa: E402
from fakeimap import FakeIMAP  # noqa: E402

PASSWORD = "pw-\u00e4\"odd"


def imapcli_path():
    d = os.environ.get("MAILSYNC_BUILD_DIR")
    if not d:
        here = os.path.dirname(os.path.abspath(__file__))
        d = os.path.join(here, "..", "..", "build")
    p = os.path.join(d, "tests", "imapcli", "imapcli")
    if not os.access(p, os.X_OK):
        raise unittest.SkipTest("imapcli not built at %s" % p)
    return p


def run_cli(srv, *commands, tls="implicit", extra=(), password=PASSWORD, timeout=60):
    """Runs imapcli against srv with commands (each a string of words);
    returns (CompletedProcess, stdout lines)."""
    args = [imapcli_path(), "--host", "127.0.0.1", "--port", str(srv.port), "--tls", tls,
            "--ca", srv.ca_cert, "--user", "alice"]
    if password is not None:
        args += ["--pass-env", "IMAPCLI_PW"]
    args += list(extra)
    for i, c in enumerate(commands):
        if i:
            args.append(";")
        args += c.split(" ")
    env = dict(os.environ, IMAPCLI_PW=password or "")
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout, env=env)
    return p, p.stdout.splitlines()


class FakeServerTest(unittest.TestCase):
    def run_script(self, script, *commands, tls="implicit", server_tls="implicit", **kw):
        with FakeIMAP(script, tls=server_tls) as srv:
            t0 = time.monotonic()
            p, lines = run_cli(srv, *commands, tls=tls, **kw)
            self.elapsed = time.monotonic() - t0
            self.host = "127.0.0.1:%d" % srv.port
        self.assertEqual(srv.errors, [], "fake server script failed")
        self.srv = srv
        return p, lines

    def assertFatal(self, p, lines, message):
        self.assertIn("ERROR " + message, lines, p.stdout + p.stderr[-3000:])
        self.assertEqual(p.returncode, 1, p.stderr[-3000:])
        self.assertTrue(lines[-1].startswith("VMHWM "), lines)

    # -- connection loss ----------------------------------------------------

    def test_bye_in_the_middle_of_a_fetch_literal(self):
        tail = b"\r\n* BYE going down now\r\n"

        def on_fetch(c, tag, rest, raw):
            c.send(b"* 1 FETCH (UID 1 BODY[] {100000}\r\n" + b"x" * 30000 + tail)
            time.sleep(0.2)
            c.close()
            return True

        def script(c):
            c.greet()
            c.serve({"UID FETCH": on_fetch})

        p, lines = self.run_script(script, "select INBOX", "fetch 1 body")
        msg = "%s: connection closed by the server" % self.host
        # The BYE arrived inside the literal: it is message data, not a BYE.
        self.assertIn("BODYABORT bytes=%d" % (30000 + len(tail)), lines)
        self.assertIn("DONE fetch ERR " + msg, lines)
        self.assertFatal(p, lines, msg)
        self.assertNotIn("EVENT BYE", p.stdout)

    def test_bye_between_fetch_responses(self):
        def on_fetch(c, tag, rest, raw):
            c.send("* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n* BYE Server shutting down\r\n")
            time.sleep(0.2)
            c.close()
            return True

        def script(c):
            c.greet()
            c.serve({"UID FETCH": on_fetch})

        p, lines = self.run_script(script, "select INBOX", "fetch 1:* flags")
        msg = "%s: server closed the connection: Server shutting down" % self.host
        self.assertIn("MSG seq=1 uid=1 flags=\\Seen", lines)
        self.assertIn("EVENT BYE Server shutting down", lines)
        self.assertIn("DONE fetch ERR " + msg, lines)
        self.assertFatal(p, lines, msg)

    def test_connection_reset(self):
        def on_select(c, tag, rest, raw):
            c.reset()
            return True

        def script(c):
            c.greet()
            c.serve({"SELECT": on_select})

        p, lines = self.run_script(script, "select INBOX")
        msg = "%s: connection reset by peer" % self.host
        self.assertIn("DONE select ERR " + msg, lines)
        self.assertFatal(p, lines, msg)

    def test_server_never_answers(self):
        def script(c):
            time.sleep(4)
            c.close()

        p, lines = self.run_script(script, "noop", extra=["--timeout", "1"])
        self.assertLess(self.elapsed, 3.5)
        self.assertFatal(p, lines, "%s: timed out after 1 s waiting for the server" % self.host)

    def test_command_never_answered(self):
        def on_select(c, tag, rest, raw):
            time.sleep(4)
            return True

        def script(c):
            c.greet()
            c.serve({"SELECT": on_select})

        p, lines = self.run_script(script, "select INBOX", extra=["--timeout", "1"])
        msg = "%s: timed out after 1 s waiting for the server" % self.host
        self.assertIn("DONE select ERR " + msg, lines)
        self.assertFatal(p, lines, msg)

    # -- TLS ------------------------------------------------------------------

    def test_starttls_with_injected_plaintext(self):
        def script(c):
            c.greet(caps="IMAP4rev1 STARTTLS AUTH=PLAIN")
            tag, verb, rest, raw = c.command()
            assert verb == "STARTTLS", verb
            # Both in one send: the classic injection.
            c.send("%s OK Begin TLS\r\n* OK injected\r\n" % tag)
            time.sleep(0.5)

        p, lines = self.run_script(script, "noop", tls="starttls", server_tls=None)
        self.assertFatal(p, lines, "%s: the server sent data right after its answer to STARTTLS, "
                         "before TLS started (possible injection attack)" % self.host)

    def test_starttls_not_offered(self):
        def script(c):
            c.greet(caps="IMAP4rev1 AUTH=PLAIN")
            try:
                c.serve()
            except fakeimap.Closed:
                pass

        p, lines = self.run_script(script, "noop", tls="starttls", server_tls=None)
        self.assertFatal(p, lines, "%s: server does not offer STARTTLS; refusing to continue "
                         "without TLS (tls: starttls)" % self.host)
        # Nothing was sent: certainly not the password.
        self.assertEqual(self.srv.conns[0].commands, [])

    def test_starttls_then_capability_again(self):
        def script(c):
            c.greet(caps="IMAP4rev1 STARTTLS LOGINDISABLED")
            tag, verb, rest, raw = c.command()
            assert verb == "STARTTLS", verb
            c.ok(tag, "Begin TLS")
            c.starttls()
            c.serve()

        p, lines = self.run_script(script, "noop", tls="starttls", server_tls=None)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        cmds = [x.split(" ", 1)[1] for x in self.srv.conns[0].commands]
        # The pre-TLS capabilities (LOGINDISABLED) were forgotten and asked
        # for again; the password went only over TLS.
        self.assertEqual(cmds[:2], ["STARTTLS", "CAPABILITY"])
        self.assertTrue(cmds[2].startswith("AUTHENTICATE PLAIN "), cmds)

    def test_plaintext_refused_without_allow_plaintext(self):
        def script(c):
            c.greet()
            c.serve()

        p, lines = self.run_script(script, "noop", tls="none", server_tls=None)
        self.assertFatal(p, lines, "%s: refusing to send the password over a connection without "
                         "TLS (set allow_plaintext to permit it)" % self.host)
        self.assertEqual(self.srv.conns[0].commands, [])

    def test_plaintext_allowed(self):
        def script(c):
            c.greet()
            c.serve()

        p, lines = self.run_script(script, "noop", tls="none", server_tls=None,
                                   extra=["--allow-plaintext"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertIn("DONE noop OK done", lines)

    # -- malformed input --------------------------------------------------------

    def test_not_an_imap_greeting(self):
        def script(c):
            c.send("+OK POP3 server ready\r\n")
            time.sleep(0.5)

        p, lines = self.run_script(script, "noop")
        self.assertFatal(p, lines, "%s: the server's greeting is not an IMAP greeting" % self.host)

    def test_bye_greeting(self):
        def script(c):
            c.send("* BYE Too many connections\r\n")
            time.sleep(0.3)

        p, lines = self.run_script(script, "noop")
        self.assertFatal(p, lines, "%s: server refused the connection: Too many connections"
                         % self.host)

    def test_preauth_refused_when_starttls_required(self):
        def script(c):
            c.send("* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] welcome\r\n")
            time.sleep(0.3)

        p, lines = self.run_script(script, "noop", tls="starttls", server_tls=None)
        self.assertFatal(p, lines, "%s: server sent PREAUTH, so STARTTLS is impossible; refusing "
                         "to continue without TLS (tls: starttls)" % self.host)

    def test_malformed_response(self):
        def on_select(c, tag, rest, raw):
            c.send("* 1 FETCH (UID 1 FLAGS (\\Seen)))\r\n")
            time.sleep(0.5)
            return True

        def script(c):
            c.greet()
            c.serve({"SELECT": on_select})

        p, lines = self.run_script(script, "select INBOX")
        err = [x for x in lines if x.startswith("ERROR ")]
        self.assertEqual(len(err), 1, lines)
        self.assertTrue(err[0].startswith("ERROR %s: malformed response from the server: "
                                          % self.host), err)
        self.assertEqual(p.returncode, 1)

    def test_malformed_fetch_items(self):
        def on_fetch(c, tag, rest, raw):
            c.send("* 1 FETCH (UID notanumber)\r\n")
            time.sleep(0.5)
            return True

        def script(c):
            c.greet()
            c.serve({"UID FETCH": on_fetch})

        p, lines = self.run_script(script, "select INBOX", "fetch 1 flags")
        msg = "%s: malformed FETCH response for message 1" % self.host
        self.assertIn("DONE fetch ERR " + msg, lines)
        self.assertFatal(p, lines, msg)

    def test_oversized_literal(self):
        def on_fetch(c, tag, rest, raw):
            c.send("* 1 FETCH (UID 1 BODY[] {5000}\r\n")
            time.sleep(0.5)
            return True

        def script(c):
            c.greet()
            c.serve({"UID FETCH": on_fetch})

        p, lines = self.run_script(script, "select INBOX", "fetch 1 body",
                                   extra=["--max-literal", "1000"])
        msg = ("%s: malformed response from the server: literal of 5000 bytes exceeds the "
               "limit of 1000 (max_literal)" % self.host)
        self.assertIn("DONE fetch ERR " + msg, lines)
        self.assertFatal(p, lines, msg)

    def test_unknown_tag(self):
        def on_noop(c, tag, rest, raw):
            c.send("Z99 OK what\r\n")
            time.sleep(0.5)
            return True

        def script(c):
            c.greet()
            c.serve({"NOOP": on_noop})

        p, lines = self.run_script(script, "noop")
        self.assertFatal(p, lines, "%s: tagged response for unknown command 'Z99'" % self.host)

    def test_hostile_but_parseable_responses(self):
        """Responses that parse but make no sense must end in a clean error
        or be ignored: never a crash, a sanitizer report or a hang."""
        cases = [
            ("* 4294967296 EXISTS\r\n", None),
            ("* 1 FETCH (UID 1 FLAGS \\Seen)\r\n", "malformed FETCH response for message 1"),
            ("* 1 FETCH (UID)\r\n", "malformed FETCH response for message 1"),
            ("* 1 FETCH\r\n", "malformed FETCH response"),
            ("* 1 FETCH (MODSEQ (x) UID 1)\r\n", "malformed FETCH response for message 1"),
            ("* 1 FETCH (INTERNALDATE \"yesterday\" UID 1)\r\n",
             "malformed FETCH response for message 1"),
            ("* 0 FETCH (UID 0 FLAGS ())\r\n", None),
            ("* OK [PERMANENTFLAGS]\r\n* OK [COPYUID 1 2]\r\n* OK [UIDNEXT x]\r\n", None),
            ("* VANISHED (EARLIER)\r\n", "malformed VANISHED response"),
            ("* VANISHED 5:x\r\n", "malformed VANISHED response"),
            ('* LIST () "ab" x\r\n', "malformed LIST delimiter"),
            ("* STATUS x y\r\n", "malformed STATUS response"),
            ("* SEARCH 1 2 x\r\n", None),
            ('* ESEARCH (TAG "A99") UID ALL 1:4294967295\r\n', None),
            ("* ENABLED\r\n* CAPABILITY\r\n* FLAGS\r\n* 3 RECENT\r\n", None),
            ("+ unexpected\r\n", "unexpected continuation request from the server: unexpected"),
            ("* BYE\r\n", "server closed the connection: BYE"),
            ("* NO [ALERT] disk on fire\r\n", None),
        ]
        for resp, err in cases:
            with self.subTest(resp=resp):
                def on_noop(c, tag, rest, raw, resp=resp):
                    c.send(resp)
                    c.ok(tag)

                def script(c):
                    c.greet()
                    c.serve({"NOOP": on_noop})

                p, lines = self.run_script(script, "noop", "list", "noop", "logout")
                self.assertNotIn("Sanitizer", p.stderr)
                self.assertNotIn("runtime error", p.stderr)
                self.assertTrue(lines[-1].startswith("VMHWM"), lines)
                if err is None:
                    self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-2000:])
                else:
                    self.assertIn("ERROR %s: %s" % (self.host, err), lines)
                    self.assertEqual(p.returncode, 1)

        # The alert reached the owner as an event.
        self.assertIn("EVENT ALERT disk on fire", lines)

    def test_search_result_too_large(self):
        def on_search(c, tag, rest, raw):
            c.send('* ESEARCH (TAG "%s") UID ALL 1:4294967295\r\n' % tag)
            c.ok(tag)

        def script(c):
            c.caps = "IMAP4rev1 ESEARCH"
            c.greet()
            c.serve({"UID SEARCH": on_search})

        p, lines = self.run_script(script, "select INBOX", "search ALL")
        msg = "%s: search result too large" % self.host
        self.assertIn("DONE search ERR " + msg, lines)
        self.assertFatal(p, lines, msg)

    # -- authentication -----------------------------------------------------------

    def test_login_with_literal_password_waits_for_continuation(self):
        seen = {}

        def on_login(c, tag, rest, raw):
            seen["raw"] = raw
            c.send("%s OK [CAPABILITY %s] Logged in\r\n" % (tag, c.caps))

        def script(c):
            c.greet(caps="IMAP4rev1")  # no AUTH=PLAIN, no LITERAL+
            c.serve({"LOGIN": on_login})

        p, lines = self.run_script(script, "noop", extra=["--trace"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        pw = PASSWORD.encode()
        self.assertTrue(seen["raw"].endswith(b"LOGIN alice {%d}\r\n%s" % (len(pw), pw)),
                        seen["raw"])
        # The fake server answered "+" before the literal (Conn.command).
        self.assertNotIn(PASSWORD, p.stderr)
        self.assertIn("C: A1 LOGIN alice {%d}<redacted>" % len(pw), p.stderr)

    def test_login_quoted_password(self):
        seen = {}

        def on_login(c, tag, rest, raw):
            seen["rest"] = rest
            c.send("%s OK [CAPABILITY %s] Logged in\r\n" % (tag, c.caps))

        def script(c):
            c.greet(caps="IMAP4rev1 LITERAL+")
            c.serve({"LOGIN": on_login})

        p, lines = self.run_script(script, "noop", password='a "quoted" \\pw', extra=["--trace"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertEqual(seen["rest"], 'alice "a \\"quoted\\" \\\\pw"')
        self.assertNotIn("quoted", p.stderr)

    def test_authenticate_plain_without_sasl_ir(self):
        seen = {}

        def on_auth(c, tag, rest, raw):
            seen["rest"] = rest
            c.send("+ \r\n")
            seen["resp"] = c.line()
            c.send("%s OK [CAPABILITY %s] Logged in\r\n" % (tag, c.caps))

        def script(c):
            c.greet(caps="IMAP4rev1 AUTH=PLAIN")
            c.serve({"AUTHENTICATE": on_auth})

        p, lines = self.run_script(script, "noop", extra=["--trace"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertEqual(seen["rest"], "PLAIN")
        self.assertEqual(base64.b64decode(seen["resp"]), b"\0alice\0" + PASSWORD.encode())
        self.assertNotIn(seen["resp"].decode(), p.stderr)
        self.assertIn("C: <redacted>", p.stderr)

    def test_xoauth2_failure_challenge(self):
        seen = {}

        def on_auth(c, tag, rest, raw):
            mech, ir = rest.split(" ")
            seen["mech"], seen["ir"] = mech, base64.b64decode(ir)
            c.send("+ %s\r\n" % base64.b64encode(b'{"status":"401"}').decode())
            seen["empty"] = c.line()
            c.send("%s NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n" % tag)

        def script(c):
            c.greet(caps="IMAP4rev1 SASL-IR AUTH=XOAUTH2")
            c.serve({"AUTHENTICATE": on_auth})

        p, lines = self.run_script(script, "noop", password="tok123",
                                   extra=["--auth", "xoauth2"])
        self.assertEqual(seen["mech"], "XOAUTH2")
        self.assertEqual(seen["ir"], b"user=alice\x01auth=Bearer tok123\x01\x01")
        self.assertEqual(seen["empty"], b"")
        self.assertFatal(p, lines,
                         "login failed for alice at 127.0.0.1: [AUTHENTICATIONFAILED] Invalid "
                         "credentials (Failure)")

    def test_oauthbearer_payload(self):
        seen = {}

        def on_auth(c, tag, rest, raw):
            mech, ir = rest.split(" ")
            seen["mech"], seen["ir"] = mech, base64.b64decode(ir)
            c.send("%s OK [CAPABILITY %s] Logged in\r\n" % (tag, c.caps))

        def script(c):
            c.greet(caps="IMAP4rev1 SASL-IR AUTH=OAUTHBEARER")
            c.serve({"AUTHENTICATE": on_auth})

        p, lines = self.run_script(script, "noop", password="tok456",
                                   extra=["--auth", "oauthbearer"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertEqual(seen["mech"], "OAUTHBEARER")
        self.assertEqual(seen["ir"], b"n,a=alice,\x01host=127.0.0.1\x01port=%d\x01auth=Bearer "
                         b"tok456\x01\x01" % self.srv.port)

    def test_logindisabled_without_mechanism(self):
        def script(c):
            c.greet(caps="IMAP4rev1 LOGINDISABLED")
            c.serve()

        p, lines = self.run_script(script, "noop")
        self.assertFatal(p, lines, "login failed for alice at 127.0.0.1: the server disables "
                         "LOGIN and offers no supported authentication mechanism")
        self.assertEqual(self.srv.conns[0].commands, [])

    def test_capability_after_login_when_ok_has_none(self):
        def on_auth(c, tag, rest, raw):
            c.ok(tag, "Logged in")

        def script(c):
            c.caps = "IMAP4rev1 MOVE UIDPLUS IDLE"
            c.greet()
            c.serve({"AUTHENTICATE": on_auth})

        p, lines = self.run_script(script, "caps")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertIn("CAPS IMAP4rev1 MOVE UIDPLUS IDLE", lines)
        cmds = [x.split(" ", 1)[1].split(" ")[0] for x in self.srv.conns[0].commands]
        self.assertEqual(cmds[:2], ["AUTHENTICATE", "CAPABILITY"])

    # -- commands -------------------------------------------------------------

    def test_append_refused_before_literal(self):
        seen = {}

        def on_append(c, tag, rest, raw):
            seen["append"] = raw
            return False

        def script(c):
            c.caps = "IMAP4rev1 UIDPLUS"  # no LITERAL+: synchronizing literal
            c.greet()
            while True:
                raw = c.line()
                tag, verb = raw.decode().split(" ")[:2]
                c.commands.append(raw.decode())
                if verb == "APPEND":
                    # Refuse instead of sending "+": the body never comes.
                    c.send("%s NO [TRYCREATE] Mailbox does not exist\r\n" % tag)
                    continue
                if verb == "AUTHENTICATE":
                    c.send("%s OK [CAPABILITY %s] Logged in\r\n" % (tag, c.caps))
                    continue
                if not c.default(tag, verb.upper(), raw.decode().split(" ", 2)[-1], raw):
                    return

        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "imapcli-append-%d" % os.getpid())
        with open(path, "wb") as f:
            f.write(b"Subject: x\n\nbody\n")
        try:
            p, lines = self.run_script(script, "append Missing " + path, "noop", "logout")
        finally:
            os.unlink(path)
        self.assertIn("DONE append NO [TRYCREATE] Mailbox does not exist", lines)
        self.assertIn("DONE noop OK done", lines)
        self.assertIn("DONE logout OK done", lines)
        self.assertEqual(p.returncode, 3)

    def test_utf8_accept(self):
        seen = {}

        def on_enable(c, tag, rest, raw):
            seen["enable"] = rest
            c.send("* ENABLED UTF8=ACCEPT\r\n")
            c.ok(tag)

        def on_list(c, tag, rest, raw):
            if rest == '"" ""':
                c.send('* LIST (\\Noselect) "/" ""\r\n')
            else:
                c.send('* LIST () "/" "Entw\u00fcrfe/\u00c4lter"\r\n')
            c.ok(tag)

        def on_create(c, tag, rest, raw):
            seen["create"] = raw
            c.ok(tag)

        def script(c):
            c.caps = "IMAP4rev1 ENABLE UTF8=ACCEPT LITERAL+"
            c.greet()
            c.serve({"ENABLE": on_enable, "LIST": on_list, "CREATE": on_create,
                     "LSUB": lambda c, tag, rest, raw: c.ok(tag)})

        p, lines = self.run_script(script, "caps", "list", "create Ünïcödé/Straße")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertEqual(seen["enable"], "UTF8=ACCEPT")
        self.assertIn("utf8=1", [x for x in lines if x.startswith("ENABLED")][0])
        self.assertIn("FOLDER\tEntwürfe/Älter\t\t", lines)
        # UTF-8 as it is (quoted), not modified UTF-7.
        self.assertTrue(seen["create"].endswith(' CREATE "Ünïcödé/Straße"'.encode()),
                        seen["create"])

    def test_literal_minus(self):
        seen = []

        def on_append(c, tag, rest, raw):
            seen.append(raw)
            c.send("%s OK [APPENDUID 7 %d] done\r\n" % (tag, len(seen)))

        def script(c):
            c.caps = "IMAP4rev1 LITERAL- UIDPLUS"
            c.greet()
            c.serve({"APPEND": on_append})

        tmp = os.environ.get("TMPDIR", "/tmp")
        small = os.path.join(tmp, "imapcli-small-%d" % os.getpid())
        big = os.path.join(tmp, "imapcli-big-%d" % os.getpid())
        with open(small, "wb") as f:
            f.write(b"Subject: s\r\n\r\nsmall\r\n")
        with open(big, "wb") as f:
            f.write(b"Subject: b\r\n\r\n" + b"y" * 5000 + b"\r\n")
        try:
            p, lines = self.run_script(script, "append INBOX " + small, "append INBOX " + big)
        finally:
            os.unlink(small)
            os.unlink(big)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertEqual(lines.count("APPENDED uidvalidity=7 uid=1"), 1)
        self.assertEqual(lines.count("APPENDED uidvalidity=7 uid=2"), 1)
        # LITERAL-: {n+} up to 4096 bytes, a synchronizing literal above.
        self.assertIn(b"APPEND INBOX {21+}\r\nSubject: s", seen[0])
        self.assertIn(b"APPEND INBOX {5016}\r\nSubject: b", seen[1])

    def test_folder_names(self):
        def on_list(c, tag, rest, raw):
            c.send('* LIST (\\HasNoChildren) "." INBOX\r\n'
                   '* LIST (\\HasNoChildren) "." "Gel&APY-scht.Sub"\r\n'
                   '* LIST (\\HasNoChildren) "." "a/b"\r\n'
                   '* LIST (\\HasNoChildren) "." "x..y"\r\n'
                   '* LIST (\\HasNoChildren) "." "bad&-utf7&Jjo"\r\n')
            c.ok(tag)

        def on_lsub(c, tag, rest, raw):
            c.send('* LSUB () "." "Gel&APY-scht.Sub"\r\n')
            c.ok(tag)

        def script(c):
            c.caps = "IMAP4rev1 UIDPLUS"  # no LIST-EXTENDED: LIST then LSUB
            c.greet()
            c.serve({"LIST": lambda c, t, r, raw: on_list(c, t, r, raw) if r != '"" ""'
                     else (c.send('* LIST (\\Noselect) "." ""\r\n'), c.ok(t)) and False,
                     "LSUB": on_lsub})

        p, lines = self.run_script(script, "list", "caps")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertIn("FOLDER\tINBOX\thasnochildren\t", lines)
        self.assertIn("FOLDER\tGelöscht/Sub\thasnochildren,subscribed\t", lines)
        self.assertIn("UNSYNCABLE\ta/b\tfolder name contains '/', which is not the server's "
                      "hierarchy delimiter", lines)
        self.assertIn("UNSYNCABLE\tx..y\tfolder name has an empty, '.' or '..' component", lines)
        self.assertIn("UNSYNCABLE\tbad&-utf7&Jjo\tfolder name is not valid modified UTF-7",
                      lines)
        self.assertIn("delim=.", " ".join(lines))


    # -- events -----------------------------------------------------------------

    @staticmethod
    def selected_with(exists=5, uidvalidity=7, uidnext=9, extra=""):
        def on_select(c, tag, rest, raw):
            c.send("* %d EXISTS\r\n* OK [UIDVALIDITY %d] ok\r\n* OK [UIDNEXT %d] ok\r\n%s"
                   % (exists, uidvalidity, uidnext, extra))
            c.send("%s OK [READ-WRITE] selected\r\n" % tag)
        return on_select

    def between(self, lines, first, last):
        """The lines after the one starting with first, up to the one
        starting with last."""
        i = next(n for n, x in enumerate(lines) if x.startswith(first))
        j = next(n for n, x in enumerate(lines) if n > i and x.startswith(last))
        return lines[i + 1:j]

    def test_untagged_expunge_reaches_the_owner(self):
        """`* n EXPUNGE` while a folder is selected: one event per response,
        with its sequence number (repeated numbers are the usual case when
        consecutive messages go), and the count the client keeps drops."""
        def on_noop(c, tag, rest, raw):
            c.send("* 3 EXPUNGE\r\n* 3 EXPUNGE\r\n* 1 EXPUNGE\r\n")
            c.ok(tag)

        def on_idle(c, tag, rest, raw):
            c.send("+ idling\r\n")
            time.sleep(0.2)
            c.send("* 2 EXPUNGE\r\n")
            self.assertEqual(c.line(), b"DONE")
            c.ok(tag, "IDLE terminated")

        def script(c):
            c.greet()
            c.serve({"SELECT": self.selected_with(exists=5), "NOOP": on_noop, "IDLE": on_idle})

        p, lines = self.run_script(script, "select INBOX", "noop", "selected", "idle 1",
                                   "selected", "logout")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertIn("SELECTED uidvalidity=7 uidnext=9 exists=5 highestmodseq=0 nomodseq=0 "
                      "readonly=0 permflags= permkw=0", lines)
        self.assertEqual(self.between(lines, "DONE select", "DONE noop"),
                         ["EVENT EXPUNGE 3", "EVENT EXPUNGE 3", "EVENT EXPUNGE 1"])
        now = [x for x in lines if x.startswith("SELECTEDNOW")]
        self.assertEqual(now[0], "SELECTEDNOW uidvalidity=7 uidnext=9 exists=2 highestmodseq=0")
        self.assertEqual(self.between(lines, "DONE selected", "DONE idle"),
                         ["IDLING", "EVENT EXPUNGE 2"])
        self.assertEqual(now[1], "SELECTEDNOW uidvalidity=7 uidnext=9 exists=1 highestmodseq=0")

    def test_untagged_no_and_bad_are_notices(self):
        """Untagged NO and BAD are server warnings: surfaced as NOTICE events
        with their text (without the response code), and the session goes
        on. An [ALERT] is an ALERT only, not a NOTICE as well."""
        def on_noop(c, tag, rest, raw):
            c.send("* NO Mailbox is 95% full\r\n"
                   "* BAD [PARSE] Ignoring a header that cannot be parsed\r\n"
                   "* NO [ALERT] Maintenance at 22:00\r\n")
            c.ok(tag)

        def script(c):
            c.greet()
            c.serve({"NOOP": on_noop})

        p, lines = self.run_script(script, "noop", "noop", "logout")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        first = self.between(lines, "READY", "DONE noop")
        self.assertEqual(first, ["EVENT NOTICE Mailbox is 95% full",
                                 "EVENT NOTICE Ignoring a header that cannot be parsed",
                                 "EVENT ALERT Maintenance at 22:00"])
        self.assertEqual(lines.count("DONE noop OK done"), 2)
        self.assertEqual(lines.count("EVENT NOTICE Mailbox is 95% full"), 2)
        self.assertIn("DONE logout OK done", lines)

    def test_uidvalidity_change_while_selected(self):
        """`* OK [UIDVALIDITY n]` with a new value while a folder is selected
        is an event (the owner must resynchronise); the same value, one
        during SELECT and one with nothing selected are not."""
        n = {"noop": 0}

        def on_noop(c, tag, rest, raw):
            n["noop"] += 1
            c.send({1: "* OK [UIDVALIDITY 5] not selected yet\r\n",
                    2: "* OK [UIDVALIDITY 7] same as before\r\n",
                    3: "* OK [UIDVALIDITY 4000000000] folder recreated\r\n"}[n["noop"]])
            c.ok(tag)

        def script(c):
            c.greet()
            c.serve({"SELECT": self.selected_with(uidvalidity=7), "NOOP": on_noop})

        p, lines = self.run_script(script, "noop", "select INBOX", "noop", "noop", "selected")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        events = [x for x in lines if x.startswith("EVENT")]
        # (EXISTS from the SELECT itself.)
        self.assertEqual(events, ["EVENT EXISTS 5", "EVENT UIDVALIDITY 4000000000"])
        self.assertEqual(lines[lines.index("EVENT UIDVALIDITY 4000000000") + 1], "DONE noop OK done")
        self.assertIn("SELECTED uidvalidity=7 ", " ".join(lines))
        self.assertIn("SELECTEDNOW uidvalidity=4000000000 uidnext=9 exists=5 highestmodseq=0",
                      lines)

    def test_unsolicited_fetch_delivers_flags_and_modseq(self):
        """FETCH responses nobody asked for (flag changes by another client)
        reach the owner with their flags, keywords and 63-bit MODSEQ; one
        that arrives during a UID FETCH for other UIDs is an event too,
        while the one for the fetched UID goes to that command."""
        def on_noop(c, tag, rest, raw):
            c.send("* 2 FETCH (UID 5 FLAGS (\\Seen $Label1) MODSEQ (12345678901))\r\n"
                   "* 3 FETCH (FLAGS () UID 6 MODSEQ (9223372036854775807))\r\n")
            c.ok(tag)

        def on_fetch(c, tag, rest, raw):
            self.assertTrue(rest.startswith("1 (UID FLAGS"), rest)
            c.send("* 4 FETCH (UID 7 FLAGS (\\Flagged) MODSEQ (20))\r\n"
                   "* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n")
            c.ok(tag)

        def script(c):
            c.caps = "IMAP4rev1 ENABLE CONDSTORE"
            c.greet()
            c.serve({"SELECT": self.selected_with(extra="* OK [HIGHESTMODSEQ 10] ok\r\n"),
                     "NOOP": on_noop, "UID FETCH": on_fetch})

        p, lines = self.run_script(script, "select INBOX", "noop", "fetch 1 flags")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertEqual(self.between(lines, "DONE select", "DONE noop"), [
            "EVENT FETCH seq=2 uid=5 flags=\\Seen,$Label1 modseq=12345678901",
            "EVENT FETCH seq=3 uid=6 flags= modseq=9223372036854775807"])
        self.assertEqual(self.between(lines, "DONE noop", "DONE fetch"), [
            "EVENT FETCH seq=4 uid=7 flags=\\Flagged modseq=20",
            "MSG seq=1 uid=1 flags=\\Seen",
            "FETCHED msgs=1"])

    # -- backpressure -------------------------------------------------------------

    def test_paused_sink_stops_the_socket(self):
        """While the body sink is paused (IMAP_SINK_PAUSE) the client takes
        nothing off the socket: imapcli sees no body data and no wire bytes
        between the pause and the resume, and the server's writes block for
        the length of the pause, far from the end of the body. After the
        resume the body completes byte-identical."""
        size = 8 * 1024 * 1024
        body = bytes((b"0123456789abcdefghijklmnopqrstuvwxyz\r\n"[(i + i // 4093) % 38]
                      for i in range(65536))) * (size // 65536)
        progress = []

        def on_fetch(c, tag, rest, raw):
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
            c.send(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % size)
            progress.append((time.monotonic(), 0))
            for off in range(0, size, 65536):
                c.send(body[off:off + 65536])
                progress.append((time.monotonic(), off + 65536))
            c.send(b")\r\n")
            c.ok(tag, "fetched")

        def script(c):
            c.greet()
            c.serve({"UID FETCH": on_fetch})

        out = tempfile.mkdtemp(prefix="imapcli-pause-")
        try:
            p, lines = self.run_script(script, "select INBOX", "fetch 1 body dir " + out,
                                       extra=["--pause-sink", "1500"])
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
            with open(os.path.join(out, "1.eml"), "rb") as f:
                self.assertTrue(f.read() == body, "body differs")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        self.assertIn("MSG seq=1 uid=1 body=%d" % size, lines)
        resume = [x for x in lines if x.startswith("RESUME ")]
        self.assertEqual(resume, ["RESUME in_during=0 in_second_half=0 calls_during=0"], lines)
        sink = [x for x in lines if x.startswith("SINK ")][0]
        self.assertTrue(sink.endswith(" violations=0"), sink)
        self.assertGreater(int(sink.split()[1].split("=")[1]), 10)
        # The server: its longest wait for the socket spans the pause.
        gaps = [(b[0] - a[0], a[1]) for a, b in zip(progress, progress[1:])]
        longest, sent_before = max(gaps)
        self.assertGreater(longest, 1.2, gaps[:5])
        self.assertLess(sent_before, size // 4)

    # -- session ------------------------------------------------------------------

    @staticmethod
    def project_version():
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "..", "..", "CMakeLists.txt")) as f:
            return re.search(r"project\(mailsync VERSION ([0-9.]+)", f.read()).group(1)

    def test_id_sent_after_login(self):
        """ID goes out only after login, even when offered before (it
        names the client), with the client's name and version, before the
        session is ready; --no-id and a server without ID mean no ID."""
        def script(c):
            c.caps = "IMAP4rev1 ID UIDPLUS"
            c.greet(caps="IMAP4rev1 SASL-IR AUTH=PLAIN ID")
            c.serve()

        p, lines = self.run_script(script, "noop")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        cmds = [x.split(" ", 1)[1] for x in self.srv.conns[0].commands]
        self.assertTrue(cmds[0].startswith("AUTHENTICATE PLAIN "), cmds)
        self.assertEqual(cmds[1:], ['ID ("name" "mailsync" "version" "%s")'
                                    % self.project_version(), 'LIST "" ""', "NOOP"])

        p, lines = self.run_script(script, "noop", extra=["--no-id"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertEqual([x.split(" ")[1] for x in self.srv.conns[0].commands],
                         ["AUTHENTICATE", "LIST", "NOOP"])

        def no_id(c):
            c.caps = "IMAP4rev1 UIDPLUS"
            c.greet(caps="IMAP4rev1 SASL-IR AUTH=PLAIN ID")
            c.serve()

        p, lines = self.run_script(no_id, "noop")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertEqual([x.split(" ")[1] for x in self.srv.conns[0].commands],
                         ["AUTHENTICATE", "LIST", "NOOP"])

    def test_qresync_select_parameters(self):
        """SELECT ... (QRESYNC (uidvalidity modseq [known-uids])) exactly as
        the options say once QRESYNC is enabled; the VANISHED (EARLIER) and
        FETCH it causes arrive before the SELECT completes. Sequence match
        data is not part of the API. Without QRESYNC enabled the same call
        asks for CONDSTORE only."""
        def on_select(c, tag, rest, raw):
            extra = "* OK [HIGHESTMODSEQ 12345678990] ok\r\n"
            if "QRESYNC" in rest:
                extra += ("* VANISHED (EARLIER) 3:4,11\r\n"
                          "* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (12345678950))\r\n")
            self.selected_with(extra=extra)(c, tag, rest, raw)

        def script(c):
            c.caps = "IMAP4rev1 ENABLE CONDSTORE QRESYNC UIDPLUS"
            c.greet()
            c.serve({"SELECT": on_select})

        p, lines = self.run_script(script, "select INBOX qresync 7 12345678901 1:10,15",
                                   "select INBOX qresync 7 99", "select INBOX condstore",
                                   "select INBOX qresync 7 99 1:x", "caps")
        self.assertEqual(p.returncode, 3, p.stdout + p.stderr[-3000:])
        self.assertIn("qresync=1", [x for x in lines if x.startswith("ENABLED")][0])
        sel = [x.split(" ", 1)[1] for x in self.srv.conns[0].commands if " SELECT " in x]
        self.assertEqual(sel, ["SELECT INBOX (QRESYNC (7 12345678901 1:10,15))",
                               "SELECT INBOX (QRESYNC (7 99))",
                               "SELECT INBOX (CONDSTORE)"])
        # An invalid known-UID set is refused before anything is sent.
        self.assertIn("DONE select ERR invalid arguments", lines)
        first = self.between(lines, "READY", "SELECTED ")
        self.assertEqual(first, ["EVENT EXISTS 5", "EVENT VANISHED earlier=1 3:4,11",
                                 "EVENT FETCH seq=2 uid=2 flags=\\Seen modseq=12345678950"])
        self.assertIn("SELECTED uidvalidity=7 uidnext=9 exists=5 highestmodseq=12345678990 "
                      "nomodseq=0 readonly=0 permflags= permkw=0", lines)

        def no_enable(c):
            # QRESYNC offered, but ENABLE is not: the client cannot use it.
            c.caps = "IMAP4rev1 CONDSTORE QRESYNC UIDPLUS"
            c.greet()
            c.serve({"SELECT": on_select})

        p, lines = self.run_script(no_enable, "select INBOX qresync 7 99 1:10", "caps")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertIn("qresync=0", [x for x in lines if x.startswith("ENABLED")][0])
        sel = [x.split(" ", 1)[1] for x in self.srv.conns[0].commands if " SELECT " in x]
        self.assertEqual(sel, ["SELECT INBOX (CONDSTORE)"])

    def test_literal_minus_boundary(self):
        """LITERAL-: non-synchronizing up to exactly 4096 bytes, and a
        synchronizing literal (waiting for "+") from 4097 on. With LITERAL+
        as well, every size is non-synchronizing."""
        seen = []

        def on_append(c, tag, rest, raw):
            seen.append(raw)
            c.send("%s OK [APPENDUID 7 %d] done\r\n" % (tag, len(seen)))

        def script(c, caps):
            c.caps = caps
            c.greet()
            c.serve({"APPEND": on_append})

        tmp = tempfile.mkdtemp(prefix="imapcli-litminus-")
        try:
            paths = []
            for size in (4096, 4097):
                path = os.path.join(tmp, "m%d" % size)
                head = b"Subject: x\r\n\r\n"
                with open(path, "wb") as f:
                    f.write(head + b"y" * (size - len(head) - 2) + b"\r\n")
                paths.append(path)
            cmds = ["append INBOX " + x for x in paths]
            p, lines = self.run_script(lambda c: script(c, "IMAP4rev1 LITERAL- UIDPLUS"), *cmds,
                                       extra=["--trace"])
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
            self.assertTrue(seen[0].startswith(b"A3 APPEND INBOX {4096+}\r\nSubject: x"), seen[0])
            self.assertTrue(seen[1].startswith(b"A4 APPEND INBOX {4097}\r\nSubject: x"), seen[1])
            # Only the second waited for the server's "+".
            self.assertEqual(p.stderr.count("S: + go ahead"), 1)
            del seen[:]
            p, lines = self.run_script(
                lambda c: script(c, "IMAP4rev1 LITERAL+ LITERAL- UIDPLUS"), *cmds,
                extra=["--trace"])
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
            self.assertIn(b"APPEND INBOX {4096+}\r\n", seen[0])
            self.assertIn(b"APPEND INBOX {4097+}\r\n", seen[1])
            self.assertNotIn("S: + ", p.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- OAuth2 -------------------------------------------------------------------

    def oauth_script(self, mech, seen, sasl_ir=True):
        def on_auth(c, tag, rest, raw):
            m, _, ir = rest.partition(" ")
            seen["mech"] = m
            if not ir:
                c.send("+ \r\n")
                ir = c.line().decode()
            seen["b64"] = ir
            seen["payload"] = base64.b64decode(ir)
            c.send("%s OK [CAPABILITY %s] Logged in\r\n" % (tag, c.caps))

        def script(c):
            c.greet(caps="IMAP4rev1 %sAUTH=%s" % ("SASL-IR " if sasl_ir else "", mech))
            c.serve({"AUTHENTICATE": on_auth})
        return script

    def test_oauth_trace_redacted(self):
        """At trace level the AUTHENTICATE line of XOAUTH2 and OAUTHBEARER
        shows <redacted>: neither the token nor its base64 form appears,
        with SASL-IR and with the payload sent after "+"."""
        token = "ya29.SECRET-token_0123456789"
        for mech, sasl_ir in (("XOAUTH2", True), ("XOAUTH2", False), ("OAUTHBEARER", True),
                              ("OAUTHBEARER", False)):
            with self.subTest(mech=mech, sasl_ir=sasl_ir):
                seen = {}
                p, lines = self.run_script(self.oauth_script(mech, seen, sasl_ir), "noop",
                                           password=token,
                                           extra=["--auth", mech.lower(), "--trace"])
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
                self.assertEqual(seen["mech"], mech)
                self.assertIn(b"auth=Bearer " + token.encode() + b"\x01\x01", seen["payload"])
                if sasl_ir:
                    self.assertIn("C: A1 AUTHENTICATE %s <redacted>" % mech, p.stderr)
                else:
                    self.assertIn("C: A1 AUTHENTICATE %s\n" % mech, p.stderr)
                    self.assertIn("C: <redacted>", p.stderr)
                self.assertNotIn("SECRET", p.stderr + p.stdout)
                self.assertNotIn(seen["b64"], p.stderr + p.stdout)
                self.assertNotIn(seen["b64"][8:40], p.stderr)

    def test_oauth_token_from_password_command(self):
        """The token comes from password_command (first line only) all the
        way into the SASL payload: through imapcli, and through mailsync
        check --connect -vv with a configuration file, whose trace never
        shows it."""
        token = "ya29.from-command_SECRET"
        tmp = tempfile.mkdtemp(prefix="imapcli-oauth-")
        try:
            cmd = os.path.join(tmp, "token.sh")
            with open(cmd, "w") as f:
                f.write("#!/bin/sh\necho '%s'\necho 'second line, ignored'\n" % token)
            os.chmod(cmd, 0o700)

            seen = {}
            p, lines = self.run_script(self.oauth_script("XOAUTH2", seen), "noop", password=None,
                                       extra=["--auth", "xoauth2", "--pass-cmd", cmd, "--trace"])
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
            self.assertEqual(seen["payload"], b"user=alice\x01auth=Bearer %s\x01\x01"
                             % token.encode())
            self.assertNotIn("SECRET", p.stderr)

            import mstest
            from dovecot import write_mailsync_config
            for mech in ("xoauth2", "oauthbearer"):
                with self.subTest(mech=mech):
                    seen = {}
                    with FakeIMAP(self.oauth_script(mech.upper(), seen)) as srv:
                        cfg = os.path.join(tmp, "config.yaml")
                        write_mailsync_config(cfg, {"acc": {
                            "protocol": "imap", "host": "127.0.0.1", "port": srv.port,
                            "tls": "implicit", "ca_file": srv.ca_cert, "user": "alice",
                            "password_command": [cmd], "auth": mech,
                            "maildir": os.path.join(tmp, "Mail")}},
                            state_dir=os.path.join(tmp, "state"))
                        r = mstest.run_mailsync(cfg, "-vv", "check", "--connect", timeout=120)
                    self.assertEqual(srv.errors, [])
                    self.assertEqual(r.returncode, 0, r.stdout + r.stderr[-3000:])
                    self.assertIn("logged in as alice", r.stdout)
                    self.assertIn("C: A1 AUTHENTICATE %s <redacted>" % mech.upper(), r.stderr)
                    if mech == "xoauth2":
                        want = b"user=alice\x01auth=Bearer %s\x01\x01" % token.encode()
                    else:
                        want = (b"n,a=alice,\x01host=127.0.0.1\x01port=%d\x01auth=Bearer %s"
                                b"\x01\x01" % (srv.port, token.encode()))
                    self.assertEqual(seen["payload"], want)
                    self.assertNotIn("SECRET", r.stdout + r.stderr)
                    self.assertNotIn(seen["b64"][8:40], r.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    try:
        unittest.main(verbosity=2)
    finally:
        fakeimap.cleanup_pki()
