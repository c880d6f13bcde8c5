"""mailsync check: offline validation through the binary, and --connect
against a real Dovecot: TLS verified, login, capabilities and folders, and a
precise reason for every way it can fail."""

import os
import stat
import subprocess

import mstest
from dovecot import Dovecot


class CheckOffline(mstest.DovecotTestCase):
    def test_example_config_accepted(self):
        example = os.path.join(mstest.SOURCE_DIR, "contrib", "config.example.yaml")
        r = self.mailsync(example, "check")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK (3 accounts)", r.stderr)
        self.assertIn("host: imap.zoho.com", r.stdout)
        self.assertIn("port: 993", r.stdout)

    def test_provider_presets_shown_resolved(self):
        """`check` prints what a preset filled in: the data centre picked by
        region, Gmail's excluded views and connection default, Microsoft's
        OAuth2; keys the account sets win."""
        path = os.path.join(self.tmp, "p.yaml")
        with open(path, "w") as f:
            f.write("accounts:\n"
                    "  z:\n    provider: zoho\n    region: eu\n    user: me@example.com\n"
                    "    password_command: pass x\n    maildir: /tmp/z\n"
                    "  g:\n    provider: gmail\n    user: me@gmail.com\n"
                    "    password_command: pass x\n    maildir: /tmp/g\n"
                    "  m:\n    provider: office365\n    user: me@corp.example\n"
                    "    password_command: pass x\n    maildir: /tmp/m\n    max_connections: 4\n")
        r = self.mailsync(path, "check")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("    provider: zoho.eu  # Zoho Mail (EU data centre)\n"
                      "    host: imap.zoho.eu\n    port: 993\n    tls: implicit\n", r.stdout)
        self.assertIn('    folders: ["*", "![Gmail]/All Mail", "![Gmail]/Important", '
                      '"![Gmail]/Starred"', r.stdout)
        self.assertIn("    provider: microsoft365  # Microsoft 365 (Exchange Online)\n"
                      "    host: outlook.office365.com\n", r.stdout)
        self.assertIn("    auth: xoauth2\n", r.stdout)
        self.assertIn("    max_connections: 4\n", r.stdout)

    def test_broken_config_rejected_with_location(self):
        path = os.path.join(self.tmp, "bad.yaml")
        with open(path, "w") as f:
            f.write("accounts:\n"
                    "  work:\n"
                    "    host: imap.example.com\n"
                    "    tls: ssl\n"
                    "    user: me\n"
                    "    pasword_command: pass show x\n"
                    "    maildir: /tmp/x\n")
        r = self.mailsync(path, "check")
        self.assertEqual(r.returncode, 1)
        self.assertIn("%s:4:10: account 'work': key 'tls' must be one of implicit, starttls, none "
                      "(got 'ssl')" % path, r.stderr)
        self.assertIn("did you mean 'password_command'?", r.stderr)
        self.assertIn("%s:6:5:" % path, r.stderr)

    def test_missing_file(self):
        r = self.mailsync(os.path.join(self.tmp, "nope.yaml"), "check")
        self.assertEqual(r.returncode, 1)
        self.assertIn("nope.yaml: cannot read: No such file or directory", r.stderr)

    def test_missing_default_file_says_where_it_goes(self):
        """The first run, with no --config: the path it looked at, and where
        to start."""
        binary = mstest.mailsync_bin()
        home = os.path.join(self.tmp, "home")
        os.makedirs(home)
        env = dict(os.environ, HOME=home)
        env.pop("XDG_CONFIG_HOME", None)
        r = subprocess.run([binary, "check"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        want = os.path.join(home, ".config", "mailsync", "config.yaml")
        self.assertIn(want + ": cannot read: No such file or directory", r.stderr)
        self.assertIn("mailsync reads its accounts from " + want, r.stderr)
        self.assertIn("contrib/config.example.yaml", r.stderr)
        self.assertIn("--config FILE", r.stderr)

    def test_quiet_and_verbose_refused(self):
        cfg = self.write_config({"a": self.imap_account()})
        r = self.mailsync(cfg, "-q", "-v", "check")
        self.assertEqual(r.returncode, 2)
        self.assertIn("-q and -v contradict each other", r.stderr)

    def test_unknown_account_named(self):
        cfg = self.write_config({"a": self.imap_account()})
        r = self.mailsync(cfg, "check", "zzz")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no account named 'zzz'", r.stderr)

    def test_password_redacted_and_world_readable_warning(self):
        cfg = self.write_config({"a": self.imap_account()})
        os.chmod(cfg, 0o644)
        r = self.mailsync(cfg, "check")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn(self.dovecot.password("alice"), r.stdout + r.stderr)
        self.assertIn("<redacted>", r.stdout)
        self.assertIn("warning:", r.stderr)


class CheckConnect(mstest.DovecotTestCase):
    def setUp(self):
        super().setUp()
        self.dovecot.save("alice", "INBOX", b"Subject: one\r\n\r\nbody\r\n")
        self.dovecot.save("alice", "Lists/dev", b"Subject: two\r\n\r\nbody\r\n")

    def connect(self, **acct):
        cfg = self.write_config({"acc": self.imap_account(**acct)})
        return self.mailsync(cfg, "check", "--connect", timeout=120)

    def test_implicit_tls(self):
        r = self.connect()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"connected to 127\.0\.0\.1:\d+ with TLSv1\.[23] .*certificate verified")
        self.assertIn("logged in as alice", r.stdout)
        self.assertIn("QRESYNC", r.stdout)
        self.assertRegex(r.stdout, r"\* Lists/dev +\d+ messages .*-> %s/Mail/Lists/dev" % self.tmp)
        self.assertRegex(r.stdout, r"\* INBOX +\d+ messages")
        self.assertIn("Trash", r.stdout)

    def test_compress_auto_skips_loopback(self):
        # The test server offers COMPRESS=DEFLATE; towards 127.0.0.1 the
        # default (auto) does not use it, compress: true does.
        r = self.connect()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("COMPRESS=DEFLATE", r.stdout)
        self.assertIn("COMPRESS no", r.stdout)
        r = self.connect(compress=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("COMPRESS yes", r.stdout)
        r = self.connect(compress=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("COMPRESS no", r.stdout)

    def test_starttls(self):
        r = self.connect(tls="starttls")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"with TLSv1\.[23]")

    def test_folder_patterns_shown(self):
        r = self.connect(folders=["*", "!Lists/*"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"\n {6}Lists/dev ")
        self.assertRegex(r.stdout, r"\n {4}\* INBOX ")

    def test_wrong_password(self):
        r = self.connect(password="wrong")
        self.assertEqual(r.returncode, 1)
        self.assertIn("FAILED", r.stdout)
        self.assertIn("login failed for alice", r.stdout)
        self.assertNotIn("wrong", r.stdout.replace("login failed", ""))

    def test_untrusted_certificate(self):
        acct = self.imap_account()
        del acct["ca_file"]
        cfg = self.write_config({"acc": acct})
        r = self.mailsync(cfg, "check", "--connect")
        self.assertEqual(r.returncode, 1)
        self.assertIn("certificate verification failed", r.stdout)

    def test_fingerprint_mismatch(self):
        r = self.connect(tls_fingerprint="sha256:" + "ab" * 32)
        self.assertEqual(r.returncode, 1)
        self.assertIn("does not match the configured tls_fingerprint sha256:" + "ab" * 32, r.stdout)

    def test_fingerprint_match(self):
        first = self.connect()
        fp = [l for l in first.stdout.splitlines() if "fingerprint:" in l][0].split()[-1]
        r = self.connect(tls_fingerprint=fp)
        self.assertEqual(r.returncode, 0, r.stdout)

    def test_password_command(self):
        script = os.path.join(self.tmp, "pw.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho %s\n" % self.dovecot.password("alice"))
        os.chmod(script, stat.S_IRWXU)
        acct = self.imap_account()
        del acct["password"]
        acct["password_command"] = [script]
        cfg = self.write_config({"acc": acct})
        r = self.mailsync(cfg, "check", "--connect")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_failing_password_command(self):
        acct = self.imap_account()
        del acct["password"]
        acct["password_command"] = ["/bin/false"]
        cfg = self.write_config({"acc": acct})
        r = self.mailsync(cfg, "check", "--connect")
        self.assertEqual(r.returncode, 1)
        self.assertIn("password_command '/bin/false' exited with status 1", r.stdout)

    def test_connection_refused(self):
        r = self.connect(port=1)
        self.assertEqual(r.returncode, 1)
        self.assertIn("localhost:1: connection refused", r.stdout)

    def test_trace_never_shows_secret(self):
        cfg = self.write_config({"acc": self.imap_account(auth="login")})
        r = self.mailsync(cfg, "-vv", "check", "--connect")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("C: ", r.stderr)
        self.assertNotIn(self.dovecot.password("alice"), r.stdout + r.stderr)


class CheckConnectPop3(mstest.DovecotTestCase):
    def test_pop3s(self):
        self.dovecot.save("alice", "INBOX", b"Subject: one\r\n\r\nbody\r\n")
        cfg = self.write_config({"p": self.pop3_account()})
        r = self.mailsync(cfg, "check", "--connect")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"connected to 127\.0\.0\.1:\d+ with TLSv1\.[23]")
        self.assertIn("UIDL", r.stdout)
        self.assertRegex(r.stdout, r"mailbox: [1-9]\d* messages")

    def test_stls(self):
        cfg = self.write_config({"p": self.pop3_account(tls="starttls")})
        r = self.mailsync(cfg, "check", "--connect")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"with TLSv1\.[23]")

    def test_wrong_password(self):
        cfg = self.write_config({"p": self.pop3_account(password="wrong")})
        r = self.mailsync(cfg, "check", "--connect")
        self.assertEqual(r.returncode, 1)
        self.assertIn("FAILED", r.stdout)
        self.assertIn("authentication failed", r.stdout)


class CheckConnectExpired(mstest.DovecotTestCase):
    dovecot_options = {"cert": "expired"}

    def test_expired_certificate(self):
        cfg = self.write_config({"acc": self.imap_account()})
        r = self.mailsync(cfg, "check", "--connect")
        self.assertEqual(r.returncode, 1)
        self.assertIn("certificate verification failed: certificate has expired", r.stdout)


class CheckConnectOtherCA(mstest.DovecotTestCase):
    dovecot_options = {"cert": "other"}

    def test_certificate_from_another_ca(self):
        # The server's certificate names the right host but comes from a CA
        # that ca_file does not trust.
        cfg = self.write_config({"acc": self.imap_account()})
        r = self.mailsync(cfg, "check", "--connect")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("certificate verification failed: unable to get local issuer certificate",
                      r.stdout)

    def test_trusted_with_its_ca(self):
        cfg = self.write_config({"acc": self.imap_account(ca_file=self.dovecot.other_ca_cert)})
        r = self.mailsync(cfg, "check", "--connect")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    mstest.main()
