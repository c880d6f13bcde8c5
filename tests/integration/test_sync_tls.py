"""Exit statuses of `mailsync sync` for TLS failures that trying again later
cannot mend, against the test Dovecot, for IMAP and POP3: a certificate
that fails verification (unknown CA, expired), a tls_fingerprint that does
not match, and implicit TLS against the plaintext (STARTTLS) port. Each
must exit 1 ("needs the user"), not 75 ("try again later"), name the
reason, and leave the Maildir and the server untouched. The reverse
mistake (tls: starttls against the TLS port) gets a message that points at
tls: implicit.

The IMAP exit statuses depend on sync/engine.c classifying the connection
error with net_err_permanent(); POP3 classifies it in sync/pop3.c."""

import os
import re
import subprocess

import dovecot
import mstest

MESSAGE = b"Subject: keep me\r\nMessage-ID: <tls-exit@example.com>\r\n\r\nbody\r\n"


class TlsExitBase:
    """Mixin: protocol is "imap" or "pop3"; the class's Dovecot holds one
    message in alice's INBOX that no failed run may touch. The server side
    is read and written with doveadm, which needs no TLS (one class serves
    an expired certificate)."""

    protocol = "imap"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        subprocess.run([dovecot.DOVEADM, "-c", cls.dovecot.conf_path, "save", "-u", "alice", "-m",
                        "INBOX"], input=MESSAGE, check=True)

    def server_count(self):
        out = self.dovecot.doveadm("mailbox", "status", "-u", "alice", "messages", "INBOX").stdout
        return int(re.search(r"messages=(\d+)", out).group(1))

    def account(self, port=None, **extra):
        if self.protocol == "pop3":
            acct = self.pop3_account(**extra)
        else:
            acct = self.imap_account(**extra)
        if port is not None:
            # After the helper, which picks the port from tls by itself.
            acct["port"] = port
        return acct

    def plaintext_port(self):
        return self.dovecot.port_pop3 if self.protocol == "pop3" else self.dovecot.port_imap

    def tls_port(self):
        return self.dovecot.port_pop3s if self.protocol == "pop3" else self.dovecot.port_imaps

    def sync(self, acct, *args):
        cfg = self.write_config({"a": acct})
        return self.mailsync(cfg, *args, "sync", "a", timeout=120)

    def assert_needs_user(self, r, text):
        """Exit 1, the reason on stderr (and in the summary), and nothing
        changed on either side."""
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 1, out)
        self.assertIn(text, r.stderr)
        self.assertEqual(mstest.maildir_messages(os.path.join(self.tmp, "Mail", "INBOX")), [])
        self.assertEqual(mstest.maildir_messages(os.path.join(self.tmp, "Mail")), [])
        self.assertEqual(self.server_count(), 1)


class TlsExitCases(TlsExitBase):
    """The cases against a server with a good certificate."""

    def test_untrusted_certificate(self):
        """The server's CA is not trusted (no ca_file): exit 1, the
        verification failure named."""
        acct = self.account()
        del acct["ca_file"]
        r = self.sync(acct)
        self.assert_needs_user(
            r, "certificate verification failed: unable to get local issuer certificate")

    def test_untrusted_certificate_quiet(self):
        """With -q the reason is still printed and the status still 1."""
        acct = self.account()
        del acct["ca_file"]
        r = self.sync(acct, "-q")
        self.assert_needs_user(r, "certificate verification failed")

    def test_pin_mismatch(self):
        """A tls_fingerprint that does not match the server's certificate:
        exit 1, both fingerprints named."""
        pin = "sha256:" + "ab" * 32
        r = self.sync(self.account(tls_fingerprint=pin))
        self.assert_needs_user(r, "does not match the configured tls_fingerprint " + pin)
        self.assertRegex(r.stderr, r"certificate fingerprint sha256:[0-9a-f]{64} does not match")

    def test_implicit_tls_on_plaintext_port(self):
        """tls: implicit against the plaintext port: exit 1 with a sentence
        saying the port answered in plain text and what to set instead,
        rather than OpenSSL's 'wrong version number'."""
        port = self.plaintext_port()
        r = self.sync(self.account(port=port, tls="implicit"))
        name = "IMAP" if self.protocol == "imap" else "POP3"
        usual = 993 if self.protocol == "imap" else 995
        self.assert_needs_user(
            r, "localhost:%d: the server answered in plain text, not TLS (\"" % port)
        self.assertIn("this looks like a plaintext %s port, which starts TLS with STARTTLS; use "
                      "tls: starttls, or the port where %s speaks TLS from the start (usually %d)"
                      % (name, name, usual), r.stderr)
        self.assertNotIn("wrong version number", r.stdout + r.stderr)

    def test_check_connect_names_plaintext_port(self):
        """`check --connect` gives the same sentence for the same mistake."""
        port = self.plaintext_port()
        cfg = self.write_config({"a": self.account(port=port, tls="implicit")})
        r = self.mailsync(cfg, "check", "--connect", "a", timeout=120)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"FAILED: localhost:%d: the server answered in plain text, "
                         r"not TLS \(\"[-+*].*\"\): this looks like a plaintext "
                         r"(IMAP|POP3) port" % port)
        self.assertIn("use tls: starttls", r.stdout)

    def test_starttls_on_tls_port(self):
        """tls: starttls against the port that speaks TLS from the start:
        the server waits for a ClientHello and sends nothing, so the run
        times out; the message says that nothing at all came and points at
        tls: implicit. (Still 75: a silent server may also be a hung one.)"""
        r = self.sync(self.account(port=self.tls_port(), tls="starttls", timeout=5))
        self.assertEqual(r.returncode, 75, r.stdout + r.stderr)
        self.assertIn("timed out after 5 s waiting for the server", r.stderr)
        self.assertIn("the server sent nothing at all", r.stderr)
        self.assertIn("use tls: implicit", r.stderr)

    def test_good_settings_sync(self):
        """The control: the same account with correct settings syncs the
        message and exits 0, so the failures above are the settings'."""
        r = self.sync(self.account())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        got = mstest.maildir_messages(os.path.join(self.tmp, "Mail", "INBOX"))
        self.assertEqual([mstest.crlf_to_lf(body) for _u, _f, body in got],
                         [mstest.crlf_to_lf(MESSAGE)])


class ExpiredCases(TlsExitBase):
    """Mixin for a Dovecot serving an expired certificate from the trusted
    test CA."""

    dovecot_options = {"cert": "expired"}

    def test_expired_certificate(self):
        """The certificate has expired: exit 1, the reason named."""
        r = self.sync(self.account())
        self.assert_needs_user(r, "certificate verification failed: certificate has expired")


class ImapTls(TlsExitCases, mstest.DovecotTestCase):
    protocol = "imap"


class Pop3Tls(TlsExitCases, mstest.DovecotTestCase):
    protocol = "pop3"


class ImapExpired(ExpiredCases, mstest.DovecotTestCase):
    protocol = "imap"


class Pop3Expired(ExpiredCases, mstest.DovecotTestCase):
    protocol = "pop3"


if __name__ == "__main__":
    mstest.main()
