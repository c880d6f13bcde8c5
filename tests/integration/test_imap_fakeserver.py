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
import subprocess
import sys
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
            "--ca", srv.ca_cert, "--user", "alice", "--pass-env", "IMAPCLI_PW"] + list(extra)
    for i, c in enumerate(commands):
        if i:
            args.append(";")
        args += c.split(" ")
    env = dict(os.environ, IMAPCLI_PW=password)
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
                         "login failed for alice at 127.0.0.1: Invalid credentials (Failure)")

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


if __name__ == "__main__":
    try:
        unittest.main(verbosity=2)
    finally:
        fakeimap.cleanup_pki()
