#!/usr/bin/env python3
"""`mailsync check --connect` as a doctor: every way a connection or a login
can fail comes out as its own cause and fix, specific to the account's
provider where one is set, against the test Dovecot and scripted fake
servers: a refused password with each response code, plain text on a TLS
port, TLS on a plain-text port, an unknown host, a closed port, an
untrusted or expired certificate, a server without IMAP4rev1, POP3 without
UIDL. The exit status is 0 only when every account connects and logs in,
and the password never appears in the output."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import dovecot
import mstest
from fakeimap import FakeIMAP
from fakepop import FakePop

SECRET = "s3cret-Pw-never-shown"


def json_supported():
    """Whether the binary's `check` takes --json (daemon/main.c passes it to
    check_run)."""
    binary = mstest.mailsync_bin()
    if binary is None:
        return False
    r = subprocess.run([binary, "--config", "/nonexistent", "check", "--json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    return "unknown option" not in r.stderr


class DoctorMixin:
    def check(self, cfg, *args, code=None):
        """Runs `check --connect [args]`, asserts the exit status (when
        given) and that the password is nowhere in the output."""
        r = self.mailsync(cfg, "check", "--connect", *args, timeout=120)
        if code is not None:
            self.assertEqual(r.returncode, code, r.stdout + r.stderr)
        self.assertNotIn(SECRET, r.stdout + r.stderr)
        return r

    def check_json(self, cfg, *args):
        if not json_supported():
            self.skipTest("this mailsync does not pass --json to check yet (daemon/main.c)")
        r = self.check(cfg, "--json", *args)
        return r, json.loads(r.stdout)

    def assertFix(self, out, text):
        """text appears in a "fix:" line (or its continuation)."""
        fixes = re.findall(r"^  fix: (.*(?:\n {7}.*)*)", out, re.M)
        self.assertTrue(any(text in f for f in fixes), "no fix with %r in:\n%s" % (text, out))


class DoctorDovecot(DoctorMixin, mstest.DovecotTestCase):
    """Against the real Dovecot."""

    def account(self, user=None, **extra):
        """alice's IMAP account on the Dovecot; user= only changes the
        name the account logs in with (the login then fails), and
        password="wrong" puts SECRET, which must never be printed, in."""
        acct = self.imap_account(**extra)
        if user is not None:
            acct["user"] = user
        if acct.get("password") == "wrong":
            acct["password"] = SECRET
        return acct

    def test_zoho_wrong_password(self):
        """Dovecot's [AUTHENTICATIONFAILED] for a Zoho account: enable IMAP
        in Zoho Mail (where, as the guide shows), the full address, an
        application-specific password for two-factor or federated sign-in,
        and the organisation server."""
        cfg = self.write_config({"z": self.account(provider="zoho", password="wrong")})
        r = self.check(cfg, code=1)
        self.assertIn("account 'z': imap localhost:%d (tls: implicit, provider: zoho)"
                      % self.dovecot.port_imaps, r.stdout)
        self.assertIn("  FAILED: login failed for alice at localhost: [AUTHENTICATIONFAILED] "
                      "Authentication failed.",
                      r.stdout)
        self.assertIn("  cause: localhost refused the user name or the password "
                      "([AUTHENTICATIONFAILED])\n", r.stdout)
        self.assertFix(r.stdout, "the user name must be the full address (like "
                                 "alice@example.com), not 'alice'")
        self.assertFix(r.stdout, "IMAP access must be switched on in Zoho Mail: log in at "
                                 "https://mail.zoho.com, open Settings » Mail » Mail Forwarding "
                                 "and POP/IMAP")
        self.assertFix(r.stdout, "create an application-specific password")
        self.assertFix(r.stdout, "federated sign-in")
        self.assertFix(r.stdout, "set host: imappro.zoho.com")

    def test_zoho_eu_pop3_wrong_password(self):
        """A POP3 account names POP access, and the EU data centre's web
        mail."""
        acct = self.pop3_account(provider="zoho", region="eu", password=SECRET)
        cfg = self.write_config({"p": acct})
        r = self.check(cfg, code=1)
        self.assertIn("provider: zoho.eu)", r.stdout)
        self.assertIn("FAILED: localhost:%d: authentication failed:" % self.dovecot.port_pop3s,
                      r.stdout)
        self.assertFix(r.stdout, "POP access must be switched on in Zoho Mail: log in at "
                                 "https://mail.zoho.eu")
        self.assertFix(r.stdout, "set host: poppro.zoho.eu")
        self.assertNotIn("IMAP access must", r.stdout)

    def test_no_provider_generic_advice(self):
        cfg = self.write_config({"a": self.account(password="wrong")})
        r = self.check(cfg, code=1)
        self.assertFix(r.stdout, "check user: (many servers want the full address) and the "
                                 "password")
        self.assertFix(r.stdout, "set provider:")

    def test_plaintext_on_tls_port(self):
        """tls: implicit towards Dovecot's plain-text IMAP port."""
        cfg = self.write_config({"a": self.account(port=self.dovecot.port_imap)})
        r = self.check(cfg, code=1)
        self.assertIn("the server answered in plain text, not TLS", r.stdout)
        self.assertIn("  cause: localhost port %d answered in plain text, but tls is "
                      "'implicit', which expects TLS from the first byte" % self.dovecot.port_imap,
                      r.stdout)
        self.assertFix(r.stdout, "set tls: starttls to keep port %d" % self.dovecot.port_imap)
        self.assertFix(r.stdout, "or keep tls: implicit and use the TLS port: port: 993")

    def test_tls_on_plain_port(self):
        """tls: starttls towards Dovecot's TLS port: the server waits for a
        ClientHello and says nothing; the doctor tries a TLS handshake and
        names the fix."""
        cfg = self.write_config({"a": self.account(tls="starttls", port=self.dovecot.port_imaps,
                                                   timeout=5)})
        good = self.check(self.write_config({"a": self.account()}, name="good.yaml"), code=0)
        fp = re.search(r"certificate fingerprint: (sha256:[0-9a-f]{64})", good.stdout).group(1)
        r = self.check(cfg, code=1)
        self.assertIn("the server sent nothing at all", r.stdout)
        self.assertIn("  cause: localhost port %d speaks TLS from the first byte (it answered a "
                      "TLS handshake, certificate %s), but tls is 'starttls'"
                      % (self.dovecot.port_imaps, fp), r.stdout)
        self.assertFix(r.stdout, "set tls: implicit for port %d" % self.dovecot.port_imaps)

    def test_closed_port(self):
        cfg = self.write_config({"a": self.account(port=1)})
        r = self.check(cfg, code=1)
        self.assertIn("connection refused", r.stdout)
        self.assertIn("  cause: nothing accepts connections on localhost port 1 (connection "
                      "refused)", r.stdout)
        self.assertFix(r.stdout, "check port: IMAP servers listen on 993 (tls: implicit) or 143 "
                                 "(tls: starttls)")

    def test_closed_port_proton_bridge(self):
        """Proton Mail Bridge: a refused connection means the Bridge is not
        running (or moved its port)."""
        acct = self.account(provider="proton-bridge", port=1, user="alice@proton.me")
        del acct["host"]
        del acct["tls"]
        cfg = self.write_config({"b": acct})
        r = self.check(cfg, code=1)
        self.assertIn("imap 127.0.0.1:1 (tls: starttls, provider: proton-bridge)", r.stdout)
        self.assertFix(r.stdout, "Proton Mail Bridge must be running and logged in")
        self.assertFix(r.stdout, "listens on port 1143 with tls: starttls")

    def test_unknown_host(self):
        """A host that does not resolve, on a Zoho account: Zoho's own
        server, and the data centres."""
        cfg = self.write_config({"a": self.account(provider="zoho", host="imap.zoho.invalid",
                                                   user="alice@example.com")})
        r = self.check(cfg, code=1)
        self.assertIn("could not resolve host", r.stdout)
        self.assertIn("  cause: the name imap.zoho.invalid could not be turned into an address",
                      r.stdout)
        self.assertFix(r.stdout, "Zoho Mail (US data centre)'s IMAP server is imap.zoho.com: "
                                 "remove host: from the account to use it")
        self.assertFix(r.stdout, "eu (imap.zoho.eu)")
        self.assertFix(r.stdout, "check the spelling of host: (imap.zoho.invalid)")

    def test_untrusted_certificate(self):
        """No ca_file: the certificate's fingerprint, where its authority's
        certificate comes from, and the pin."""
        good = self.check(self.write_config({"a": self.account()}, name="good.yaml"), code=0)
        fp = re.search(r"certificate fingerprint: (sha256:[0-9a-f]{64})", good.stdout).group(1)
        acct = self.account()
        del acct["ca_file"]
        r = self.check(self.write_config({"a": acct}), code=1)
        self.assertIn("certificate verification failed: unable to get local issuer certificate",
                      r.stdout)
        self.assertIn("  cause: the certificate of localhost (%s) is not signed by an authority "
                      "this computer trusts" % fp, r.stdout)
        self.assertFix(r.stdout, "openssl s_client -connect localhost:%d -showcerts </dev/null; "
                                 "then set ca_file: to it" % self.dovecot.port_imaps)
        self.assertFix(r.stdout, "tls_fingerprint: %s" % fp)
        # The advice works: the authority's certificate as ca_file, with the
        # pin.
        self.check(self.write_config({"a": self.account(tls_fingerprint=fp)}), code=0)

    def test_untrusted_certificate_starttls_and_bridge(self):
        """With STARTTLS the probe speaks STARTTLS first; Proton Mail
        Bridge's own certificate has its own hint."""
        good = self.check(self.write_config({"a": self.account()}, name="good.yaml"), code=0)
        fp = re.search(r"certificate fingerprint: (sha256:[0-9a-f]{64})", good.stdout).group(1)
        acct = self.account(provider="proton-bridge", tls="starttls", user="alice@proton.me",
                            port=self.dovecot.port_imap)
        del acct["ca_file"]
        r = self.check(self.write_config({"b": acct}), code=1)
        self.assertIn("(%s) is not signed" % fp, r.stdout)
        self.assertFix(r.stdout, "Export it (Bridge » Settings » Advanced settings » Export TLS "
                                 "certificates) and set ca_file:")
        self.assertFix(r.stdout, "-starttls imap -showcerts")

    def test_exit_status_all_or_nothing(self):
        """0 only when every account connects and logs in."""
        good = self.account()
        bad = self.account(password="wrong", maildir=os.path.join(self.tmp, "Mail2"))
        cfg = self.write_config({"good": good, "bad": bad})
        r = self.check(cfg, code=1)
        self.assertIn("account 'good'", r.stdout)
        self.assertIn("account 'bad'", r.stdout)
        self.check(cfg, "good", code=0)
        self.check(cfg, "bad", code=1)

    def test_json_same_findings(self):
        good = self.account()
        bad = self.account(provider="gmail", password="wrong", user="alice@gmail.com",
                           maildir=os.path.join(self.tmp, "Mail2"))
        cfg = self.write_config({"good": good, "bad": bad})
        r, doc = self.check_json(cfg)
        self.assertEqual(r.returncode, 1)
        self.assertFalse(doc["ok"])
        byname = {a["account"]: a for a in doc["accounts"]}
        self.assertTrue(byname["good"]["ok"])
        self.assertTrue(byname["good"]["logged_in"])
        self.assertRegex(byname["good"]["fingerprint"], r"^sha256:[0-9a-f]{64}$")
        self.assertIn("IMAP4rev1", byname["good"]["capabilities"])
        self.assertEqual(byname["good"]["problems"], [])
        b = byname["bad"]
        self.assertFalse(b["ok"])
        self.assertEqual(b["provider"], "gmail")
        self.assertEqual([p["kind"] for p in b["problems"]], ["login_refused"])
        self.assertEqual(b["problems"][0]["severity"], "error")
        self.assertTrue(any("https://myaccount.google.com/apppasswords" in f
                            for f in b["problems"][0]["fix"]))
        r, doc = self.check_json(cfg, "good")
        self.assertEqual(r.returncode, 0)
        self.assertTrue(doc["ok"])


class DoctorExpired(DoctorMixin, mstest.DovecotTestCase):
    dovecot_options = {"cert": "expired"}

    def test_expired_certificate(self):
        r = self.check(self.write_config({"a": self.imap_account()}), code=1)
        self.assertIn("certificate verification failed: certificate has expired", r.stdout)
        self.assertIn("  cause: the certificate of localhost is outside its validity period",
                      r.stdout)
        self.assertFix(r.stdout, "check this computer's clock")


class DoctorSelfSigned(DoctorMixin, mstest.DovecotTestCase):
    dovecot_options = {"cert": "self_signed"}

    def test_self_signed_advice_works(self):
        """A self-signed certificate: the doctor's commands, run as given,
        save it; named as ca_file and pinned, the account then checks out."""
        acct = self.imap_account()
        del acct["ca_file"]
        r = self.check(self.write_config({"a": acct}), code=1)
        self.assertIn("certificate verification failed: self-signed certificate", r.stdout)
        m = re.search(r"\n {11}(openssl s_client .*)\n", r.stdout)
        self.assertIsNotNone(m, r.stdout)
        fp = re.search(r"check that its fingerprint is (sha256:[0-9a-f]{64})", r.stdout).group(1)
        self.assertIn("  cause: the certificate of localhost (%s) is self-signed" % fp, r.stdout)
        saved = os.path.join(self.tmp, "a.pem")
        cmd = m.group(1).replace("~/.config/mailsync/a.pem", saved)
        subprocess.run(["sh", "-c", cmd], check=True, timeout=60, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        self.assertFix(r.stdout, "    ca_file: ~/.config/mailsync/a.pem")
        self.assertFix(r.stdout, "    tls_fingerprint: %s" % fp)
        acct.update(ca_file=saved, tls_fingerprint=fp)
        good = self.check(self.write_config({"a": acct}), code=0)
        self.assertIn("certificate fingerprint: %s" % fp, good.stdout)


class DoctorFake(DoctorMixin, unittest.TestCase):
    """Against scripted servers, for what Dovecot does not say on demand."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-doctor-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def mailsync(self, config, *args, **kw):
        return mstest.run_mailsync(config, *args, **kw)

    def write_config(self, accounts):
        path = os.path.join(self.tmp, "config.yaml")
        dovecot.write_mailsync_config(path, accounts, state_dir=os.path.join(self.tmp, "state"))
        return path

    def fake_check(self, script, *args, code=None, **account):
        with FakeIMAP(script) as srv:
            acct = {"host": "127.0.0.1", "port": srv.port, "tls": "implicit",
                    "ca_file": srv.ca_cert, "user": "alice@example.com", "password": SECRET,
                    "maildir": os.path.join(self.tmp, "Mail")}
            acct.update(account)
            r = self.check(self.write_config({"a": acct}), *args, code=code)
        self.assertEqual(srv.errors, [])
        return r, srv

    def refusing(self, answer, caps="IMAP4rev1 AUTH=PLAIN LITERAL+", alert=None):
        """A server that answers every login with answer."""
        def refuse(c, tag, rest, raw):
            if rest.split(" ", 1)[0].upper() in ("PLAIN", "XOAUTH2", "OAUTHBEARER") and \
                    len(rest.split(" ")) == 1:
                c.send("+ \r\n")
                c.line()
            if alert:
                c.send("* OK [ALERT] %s\r\n" % alert)
            c.send("%s %s\r\n" % (tag, answer))
            return False

        def script(c):
            c.greet(caps=caps)
            c.serve({"LOGIN": refuse, "AUTHENTICATE": refuse})
        return script

    def test_alert_application_specific_password(self):
        """NO [ALERT] Application-specific password required, on Zoho."""
        r, _ = self.fake_check(self.refusing("NO [ALERT] Application-specific password required"),
                               provider="zoho", code=1)
        self.assertIn("  FAILED: login failed for alice@example.com at 127.0.0.1: [ALERT] "
                      "Application-specific password required", r.stdout)
        self.assertIn("  cause: 127.0.0.1 wants an application-specific password, not the "
                      "account's own (\"Application-specific password required\")", r.stdout)
        self.assertFix(r.stdout, "Zoho Accounts » Security » App Passwords")
        self.assertNotIn("must be the full address", r.stdout)

    def test_untagged_alert_then_authenticationfailed(self):
        """The [ALERT] can come untagged before a plain failure; it is shown
        and still recognised."""
        r, _ = self.fake_check(self.refusing("NO [AUTHENTICATIONFAILED] Invalid credentials",
                                             alert="Please use an app password"),
                               provider="gmail", code=1)
        self.assertIn("  server alert: Please use an app password", r.stdout)
        self.assertIn("wants an application-specific password", r.stdout)
        self.assertFix(r.stdout, "https://myaccount.google.com/apppasswords")
        self.assertFix(r.stdout, '["oama", "access", "alice@example.com"]')

    def test_authenticationfailed_gmail(self):
        r, _ = self.fake_check(self.refusing("NO [AUTHENTICATIONFAILED] Invalid credentials "
                                             "(Failure)"),
                               provider="gmail", code=1)
        self.assertIn("  cause: 127.0.0.1 refused the user name or the password "
                      "([AUTHENTICATIONFAILED])\n", r.stdout)
        self.assertFix(r.stdout, "Google does not accept your Google password from mail clients")
        self.assertFix(r.stdout, "auth: xoauth2")

    def test_microsoft365_oauth(self):
        """Microsoft 365: xoauth2 by default, and the fix is a working
        password_command for a token helper, with the account's address."""
        r, srv = self.fake_check(self.refusing("NO AUTHENTICATE failed.",
                                               caps="IMAP4rev1 AUTH=XOAUTH2 SASL-IR"),
                                 provider="microsoft365", code=1)
        self.assertTrue(any(" AUTHENTICATE XOAUTH2" in cmd for conn in srv.conns
                            for cmd in conn.commands))
        self.assertIn("  cause: 127.0.0.1 refused the user name or the password\n", r.stdout)
        self.assertFix(r.stdout, "basic authentication is switched off")
        self.assertIn('\n           password_command: ["oama", "access", "alice@example.com"]\n',
                      r.stdout)
        self.assertIn('password_command: ["sh", "-c", "mutt_oauth2.py ~/.mutt_oauth2.tokens"]',
                      r.stdout)
        self.assertFix(r.stdout, "Set-CASMailbox -ImapEnabled $true")
        self.assertFix(r.stdout, "password is an OAuth2 access token")

    def test_unavailable_and_inuse(self):
        for code, word in (("UNAVAILABLE", "Backend down"), ("INUSE", "Another session")):
            with self.subTest(code=code):
                r, _ = self.fake_check(self.refusing("NO [%s] %s" % (code, word)),
                                       provider="zoho", code=1)
                self.assertIn("  cause: 127.0.0.1 refused the login for now ([%s]); the password "
                              "was not checked" % code, r.stdout)
                self.assertFix(r.stdout, "try again later")
                self.assertNotIn("App Passwords", r.stdout)
        self.assertFix(r.stdout, "another program holds the mailbox")

    def test_expired_and_privacyrequired(self):
        r, _ = self.fake_check(self.refusing("NO [EXPIRED] Password expired"), code=1)
        self.assertIn("  cause: 127.0.0.1 says the password has expired ([EXPIRED])", r.stdout)
        self.assertFix(r.stdout, "set a new password")
        r, _ = self.fake_check(self.refusing("NO [PRIVACYREQUIRED] Use TLS"), code=1)
        self.assertIn("refuses this login without TLS ([PRIVACYREQUIRED])", r.stdout)

    def test_no_code(self):
        r, _ = self.fake_check(self.refusing("NO Go away"), code=1)
        self.assertIn("  FAILED: login failed for alice@example.com at 127.0.0.1: Go away",
                      r.stdout)
        self.assertIn("  cause: 127.0.0.1 refused the user name or the password\n", r.stdout)

    def test_server_without_imap4rev1(self):
        """A server that logs in but does not announce IMAP4rev1 fails the
        check, with the reason."""
        caps = "IMAP2 AUTH=PLAIN"

        def script(c):
            c.caps = caps
            c.greet(caps=caps)
            c.serve()
        r, _ = self.fake_check(script, code=1)
        self.assertIn("logged in as alice@example.com", r.stdout)
        self.assertIn("  FAILED: the server does not announce IMAP4rev1", r.stdout)
        self.assertIn("do not include IMAP4rev1 (RFC 3501)", r.stdout)
        self.assertFix(r.stdout, "check that host and port point at the provider's IMAP server")

    def test_good_fake_server(self):
        """The control: the same fake server with a normal login passes."""
        def script(c):
            c.greet()
            c.serve()
        r, _ = self.fake_check(script, code=0)
        self.assertNotIn("FAILED", r.stdout)

    def pop_check(self, srv, *args, code=None, **account):
        acct = {"protocol": "pop3", "host": "127.0.0.1", "port": srv.port, "tls": "none",
                "allow_plaintext": True, "user": "alice", "password": SECRET,
                "maildir": os.path.join(self.tmp, "Mail")}
        acct.update(account)
        return self.check(self.write_config({"p": acct}), *args, code=code)

    def test_pop3_without_uidl(self):
        """POP3 without UIDL: a warning with its consequence, and the check
        still passes (sync works by header hashes)."""
        with FakePop([b"Subject: a\r\n\r\nbody\r\n"], uidls=None, password=SECRET) as srv:
            r = self.pop_check(srv, code=0)
            doc = None
            if json_supported():
                doc = json.loads(self.pop_check(srv, "--json", code=0).stdout)
        self.assertIn("mailbox: 1 messages", r.stdout)
        self.assertIn("  warning: the server does not support UIDL:", r.stdout)
        self.assertNotIn("FAILED", r.stdout)
        if doc is not None:
            problems = doc["accounts"][0]["problems"]
            self.assertEqual([(p["kind"], p["severity"]) for p in problems],
                             [("no_uidl", "warning")])
            self.assertTrue(doc["ok"])

    def test_pop3_with_uidl_no_warning(self):
        with FakePop([b"Subject: a\r\n\r\nbody\r\n"], password=SECRET) as srv:
            r = self.pop_check(srv, code=0)
        self.assertNotIn("UIDL:", r.stdout.replace("capabilities:", ""))
        self.assertNotIn("warning", r.stdout)

    def test_pop3_wrong_password_gmail(self):
        """POP3 refused on a Gmail account: POP must be switched on in
        Gmail."""
        with FakePop([], password="other") as srv:
            r = self.pop_check(srv, code=1, provider="gmail", user="alice@gmail.com")
        self.assertIn("authentication failed", r.stdout)
        self.assertFix(r.stdout, "POP must be switched on in Gmail: Settings » See all settings "
                                 "» Forwarding and POP/IMAP")


if __name__ == "__main__":
    mstest.main()
