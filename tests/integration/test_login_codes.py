#!/usr/bin/env python3
"""A refused IMAP login, told apart by its response code (RFC 5530), through
`mailsync sync` against a scripted server: [UNAVAILABLE] and [INUSE] are
"try again later" (exit status 75, nothing said about the password), while
[AUTHENTICATIONFAILED], [EXPIRED] and [PRIVACYREQUIRED] are credential
failures (exit status 1) with a hint where the code gives one. Nothing is
written to the Maildir in either case."""

import os
import shutil
import tempfile
import unittest

import mstest
from fakeimap import mailsync_sync


class LoginCodes(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-login-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def run_sync(self, answer):
        """Runs one sync against a server that answers LOGIN with answer
        (the text after the tag)."""
        def on_login(c, tag, rest, raw):
            c.send("%s %s\r\n" % (tag, answer))
            return False

        def script(c):
            c.greet(caps="IMAP4rev1 LITERAL+")
            c.serve({"LOGIN": on_login})

        p, srv = mailsync_sync(self.tmp, script, password="s3cret-pw")
        self.assertEqual(srv.errors, [])
        logins = [cmd for conn in srv.conns for cmd in conn.commands if " LOGIN " in cmd]
        self.assertEqual(len(logins), 1, "one LOGIN, no retry loop inside one run")
        self.assertNotIn("s3cret-pw", p.stdout + p.stderr)
        self.assertEqual(mstest.maildir_messages(os.path.join(self.tmp, "Mail", "INBOX")), [])
        return p

    def test_unavailable_is_temporary(self):
        p = self.run_sync("NO [UNAVAILABLE] Mailbox backend down for maintenance")
        self.assertEqual(p.returncode, 75, p.stderr)
        self.assertIn("127.0.0.1 refused the login for now ([UNAVAILABLE] Mailbox backend down "
                      "for maintenance); the password was not checked, try again later", p.stderr)
        self.assertNotIn("login failed", p.stderr)

    def test_inuse_is_temporary(self):
        p = self.run_sync("NO [INUSE] Another session is active")
        self.assertEqual(p.returncode, 75, p.stderr)
        self.assertIn("refused the login for now ([INUSE] Another session is active)", p.stderr)

    def test_limit_is_temporary(self):
        """[LIMIT] (too many connections for the user) did not judge the
        password: exit 75, and the message says so."""
        p = self.run_sync("NO [LIMIT] Maximum number of connections from user+IP exceeded")
        self.assertEqual(p.returncode, 75, p.stderr)
        self.assertIn("127.0.0.1 refused another connection ([LIMIT] Maximum number of "
                      "connections from user+IP exceeded); the password was not checked", p.stderr)

    def test_authenticationfailed_is_a_credential_failure(self):
        p = self.run_sync("NO [AUTHENTICATIONFAILED] Authentication failed.")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("login failed for alice at 127.0.0.1: [AUTHENTICATIONFAILED] Authentication failed.", p.stderr)

    def test_expired_names_the_cause(self):
        p = self.run_sync("NO [EXPIRED] Password expired")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("login failed for alice at 127.0.0.1: [EXPIRED] Password expired; the "
                      "password has expired: renew it with the provider", p.stderr)

    def test_privacyrequired_names_the_cause(self):
        p = self.run_sync("NO [PRIVACYREQUIRED] Use TLS")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("[PRIVACYREQUIRED] Use TLS; the server wants TLS for this login", p.stderr)

    def test_no_code_keeps_the_text(self):
        p = self.run_sync("NO Go away")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("login failed for alice at 127.0.0.1: Go away", p.stderr)


if __name__ == "__main__":
    mstest.main()
