#!/usr/bin/env python3
"""Proves the test harness itself: the throwaway Dovecot, its certificates,
the message generator, and the helpers that read mail back byte for byte.
Every other integration test trusts these, so they are checked against the
server over each way in (IMAPS, STARTTLS, POP3S, STLS, doveadm)."""

import imaplib
import os
import poplib
import socket
import ssl
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import dovecot  # noqa: E402
import mailgen  # noqa: E402
import mstest  # noqa: E402
from dovecot import Dovecot  # noqa: E402

FOLDERS = ("INBOX", "Lists/dev", "Entwürfe")


class SeededServer(unittest.TestCase):
    """One Dovecot with ~50 generated messages over three folders."""

    @classmethod
    def setUpClass(cls):
        cls.d = Dovecot().start()
        cls.corpus = mailgen.corpus(48, seed=42, folders=FOLDERS, max_size=512 * 1024)
        # One big message: large literals are where line-based code breaks.
        cls.big = mailgen.message(seed=42, size=3 * 1024 * 1024)
        cls.corpus["INBOX"].insert(3, cls.big)
        cls.flags = {}
        cls.uids = {}
        conn = cls.d.imap()
        try:
            for folder, msgs in cls.corpus.items():
                flags = ["\\Seen" if i % 2 else "" for i in range(len(msgs))]
                if folder == "Lists/dev":
                    flags[0] = "\\Flagged \\Answered"
                cls.flags[folder] = flags
                cls.uids[folder] = cls.d.save_many("alice", folder, msgs, flags, conn=conn)
        finally:
            conn.logout()
        # Dovecot's POP3 sets \\Seen on RETR, so POP3 tests read a copy of
        # INBOX in their own account and leave alice's flags alone.
        cls.d.add_user("pop", "secret-pop")
        cls.d.save_many("pop", "INBOX", cls.corpus["INBOX"])

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def assert_folder(self, folder, got):
        want = self.corpus[folder]
        self.assertEqual(len(got), len(want), folder)
        for i, ((uid, flags, body), msg) in enumerate(zip(got, want)):
            self.assertEqual(uid, self.uids[folder][i])
            # Compare lengths first so a mismatch does not print megabytes.
            self.assertEqual(len(body), len(msg), "%s message %d" % (folder, i))
            self.assertTrue(body == msg, "%s message %d differs" % (folder, i))
            self.assertEqual(sorted(flags), sorted(self.flags[folder][i].split()))

    def test_seeded_over_imaps(self):
        self.assertEqual(sum(map(len, self.corpus.values())), 49)
        self.assertIn(len(self.big), range(3 * 1024 * 1024 - 4096, 3 * 1024 * 1024 + 300 * 1024))
        conn = self.d.imap()
        try:
            for folder in FOLDERS:
                self.assert_folder(folder, self.d.fetch_all("alice", folder, conn=conn))
        finally:
            conn.logout()

    def test_uids_from_appenduid(self):
        for folder in FOLDERS:
            self.assertEqual(self.uids[folder], list(range(1, len(self.corpus[folder]) + 1)))

    def test_folders_listed_with_special_use(self):
        names = self.d.folders()
        for f in FOLDERS + ("Drafts", "Sent", "Trash", "Junk"):
            self.assertIn(f, names)
        conn = self.d.imap()
        try:
            attrs = dict((n, a) for a, n in dovecot.list_mailboxes(conn))
            self.assertIn("\\Trash", attrs["Trash"])
            self.assertIn("\\Sent", attrs["Sent"])
            typ, data = conn.list('""', '"Entw*"')
            self.assertIn(b"Entw&APw-rfe", data[0])
        finally:
            conn.logout()
        # Dovecot stores the name in modified UTF-7 on disk (Maildir++).
        self.assertTrue(os.path.isdir(os.path.join(self.d.home(), "Maildir", ".Entw&APw-rfe", "cur")))

    def test_starttls(self):
        conn = self.d.imap(starttls=True)
        try:
            self.assertIsInstance(conn.sock, ssl.SSLSocket)
            self.assertIn(conn.sock.version(), ("TLSv1.2", "TLSv1.3"))
            self.assert_folder("Lists/dev", self.d.fetch_all("alice", "Lists/dev", conn=conn))
        finally:
            conn.logout()

    def test_certificate_checked_for_ip_address(self):
        ctx = self.d.ssl_context()
        conn = imaplib.IMAP4_SSL("127.0.0.1", self.d.port_imaps, ssl_context=ctx, timeout=30)
        try:
            cert = conn.sock.getpeercert()
            self.assertIn(("IP Address", "127.0.0.1"), cert["subjectAltName"])
            self.assertIn(("DNS", "localhost"), cert["subjectAltName"])
        finally:
            conn.shutdown()

    def test_other_ca_refused(self):
        ctx = self.d.ssl_context(ca_file=self.d.other_ca_cert)
        with self.assertRaises(ssl.SSLCertVerificationError):
            imaplib.IMAP4_SSL("localhost", self.d.port_imaps, ssl_context=ctx, timeout=30)

    def test_wrong_host_name_refused(self):
        ctx = self.d.ssl_context()
        raw = socket.create_connection(("127.0.0.1", self.d.port_imaps), timeout=30)
        with self.assertRaises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="imap.example.org")
        raw.close()

    def test_pop3s_retr(self):
        msgs = self.d.pop3_all("pop")
        self.assertEqual(len(msgs), len(self.corpus["INBOX"]))
        uidls = set()
        for i, ((uidl, body), want) in enumerate(zip(msgs, self.corpus["INBOX"])):
            self.assertEqual(len(body), len(want), "message %d" % i)
            self.assertTrue(body == want, "message %d differs" % i)
            uidls.add(uidl)
        self.assertEqual(len(uidls), len(msgs))
        # The default pop3_uidl_format is UID then UIDVALIDITY in hex.
        self.assertTrue(all(len(u) == 16 for u in uidls))

    def test_pop3_stls(self):
        conn = self.d.pop3("pop", stls=True)
        try:
            self.assertIsInstance(conn.sock, ssl.SSLSocket)
            count, size = conn.stat()
            self.assertEqual(count, len(self.corpus["INBOX"]))
            self.assertEqual(size, sum(len(m) for m in self.corpus["INBOX"]))
            top = conn.top(1, 0)[1]
            self.assertTrue(any(line.startswith(b"Date: ") for line in top))
        finally:
            conn.quit()

    def test_dot_and_from_lines_survive(self):
        # The corpus must contain the awkward lines for the byte comparisons
        # above to mean something.
        all_msgs = [m for ms in self.corpus.values() for m in ms]
        self.assertTrue(any(b"\r\n.\r\n" in m for m in all_msgs))
        self.assertTrue(any(b"\r\n..\r\n" in m or b"\r\n.hidden" in m for m in all_msgs))
        self.assertTrue(any(b"\r\nFrom " in m for m in all_msgs))

    def test_wrong_password_refused(self):
        with self.assertRaises(imaplib.IMAP4.error):
            self.d.imap(password="not-the-password")
        with self.assertRaises(poplib.error_proto):
            self.d.pop3(password="not-the-password")
        with self.assertRaises(imaplib.IMAP4.error):
            self.d.imap(user="mallory", password="x")

    def test_add_user_while_running(self):
        self.d.add_user("bob", "secret-bob")
        uid = self.d.save("bob", "INBOX", self.corpus["INBOX"][0], "\\Seen")
        self.assertEqual(uid, 1)
        self.assertEqual(self.d.fetch_all("bob"), [(1, ("\\Seen",), self.corpus["INBOX"][0])])
        # alice's mail is not bob's.
        self.assertEqual(len(self.d.fetch_all("alice")), len(self.corpus["INBOX"]))

    def test_doveadm_sees_the_same(self):
        out = self.d.doveadm("mailbox", "status", "-u", "alice", "messages", "Entwürfe").stdout
        self.assertEqual(out.split(), ["Entwürfe", "messages=%d" % len(self.corpus["Entwürfe"])])
        counts = self.d.counts()
        self.assertEqual(counts["Lists/dev"], len(self.corpus["Lists/dev"]))
        self.assertEqual(counts["Trash"], 0)

    def test_compress_offered(self):
        conn = self.d.imap()
        try:
            caps = conn.capability()[1][0].split()
            self.assertIn(b"COMPRESS=DEFLATE", caps)
            self.assertIn(b"QRESYNC", caps)
            # imaplib does not know COMPRESS; teach it the state it is valid in.
            imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))
            typ, _ = conn._simple_command("COMPRESS", "DEFLATE")
            self.assertEqual(typ, "OK")
        finally:
            conn.sock.close()

    def test_many_connections_allowed(self):
        # Tests open several connections per user; Dovecot's default is 10.
        conns = [self.d.imap() for _ in range(12)]
        for c in conns:
            c.logout()

    def test_mailsync_accepts_generated_config(self):
        binary = mstest.mailsync_bin()
        if binary is None or not os.path.exists(binary):
            self.skipTest("no mailsync binary")
        with tempfile.TemporaryDirectory() as tmp:
            cfg = os.path.join(tmp, "config.yaml")
            dovecot.write_mailsync_config(cfg, {
                "imap": dovecot.imap_account(self.d, os.path.join(tmp, "Mail"), folders=["*", "!Junk"]),
                "pop": dovecot.pop3_account(self.d, os.path.join(tmp, "Pop"), tls="starttls"),
            }, state_dir=os.path.join(tmp, "state"))
            self.assertEqual(os.stat(cfg).st_mode & 0o777, 0o600)
            p = mstest.run_mailsync(cfg, "check", timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(str(self.d.port_imaps), p.stdout)
            self.assertIn(str(self.d.port_pop3), p.stdout)


class Certificates(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Dovecot()  # not started: only the PKI is needed

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def verify(self, ca, cert):
        return subprocess.run(["openssl", "verify", "-CAfile", ca, cert],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def test_server_cert_verifies(self):
        p = self.verify(self.d.ca_cert, self.d.server_cert)
        self.assertEqual(p.returncode, 0, p.stdout)
        p = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", self.d.server_cert],
                           stdout=subprocess.PIPE, text=True, check=True)
        self.assertIn("DNS:localhost", p.stdout)
        self.assertIn("IP Address:127.0.0.1", p.stdout)

    def test_expired_cert_is_expired(self):
        p = self.verify(self.d.ca_cert, self.d.expired_cert)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("expired", p.stdout)

    def test_other_ca(self):
        p = self.verify(self.d.other_ca_cert, self.d.other_cert)
        self.assertEqual(p.returncode, 0, p.stdout)
        p = self.verify(self.d.ca_cert, self.d.other_cert)
        self.assertNotEqual(p.returncode, 0)
        p = self.verify(self.d.other_ca_cert, self.d.server_cert)
        self.assertNotEqual(p.returncode, 0)

    def test_keys_match(self):
        for cert, key in ((self.d.server_cert, self.d.server_key), (self.d.expired_cert, self.d.expired_key),
                          (self.d.other_cert, self.d.other_key),
                          (self.d.self_signed_cert, self.d.self_signed_key)):
            a = subprocess.run(["openssl", "x509", "-noout", "-pubkey", "-in", cert], stdout=subprocess.PIPE,
                               check=True).stdout
            b = subprocess.run(["openssl", "pkey", "-pubout", "-in", key], stdout=subprocess.PIPE,
                               check=True).stdout
            self.assertEqual(a, b, cert)


class LifeCycle(unittest.TestCase):
    def test_options_and_stop(self):
        d = Dovecot(imap_capability=dovecot.MINIMAL_IMAP_CAPABILITY, cert="expired",
                    pop3_uidl_format="%v-%u", extra_conf="# extra\nimap_idle_notify_interval = 1 mins\n")
        d.start()
        try:
            with open(d.conf_path) as f:
                conf = f.read()
            self.assertIn("imap_idle_notify_interval = 1 mins", conf)
            # The expired certificate is served: verification must fail.
            with self.assertRaises(ssl.SSLCertVerificationError) as cm:
                d.imap()
            self.assertIn("expired", str(cm.exception))
            # Switch back to the good certificate without restarting.
            d.cert = "server"
            d.reload()
            conn = d.imap()
            try:
                caps = conn.capability()[1][0].split()
                self.assertNotIn(b"CONDSTORE", caps)
                self.assertNotIn(b"QRESYNC", caps)
                self.assertIn(b"UIDPLUS", caps)
                self.assertIn(b"MOVE", caps)
            finally:
                conn.logout()
            d.save("alice", "INBOX", mailgen.message(seed=1, size=2000))
            uidl = d.pop3_all()[0][0]
            self.assertRegex(uidl, r"^\d+-1$")  # UIDVALIDITY-UID
            pids = d.processes()
            self.assertGreaterEqual(len(pids), 3)
            root = d.dir
        finally:
            d.stop()
        self.assertEqual([p for p in pids if dovecot._alive(p)], [])
        self.assertFalse(os.path.exists(root))
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", d.port_imaps), timeout=2).close()
        d.stop()  # twice is harmless

    def test_context_manager_and_port_clash(self):
        # Another process takes a port between the harness picking it and
        # Dovecot binding it: start() must retry with new ports.
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real = dovecot._free_ports
        calls = []

        def fake(n):
            calls.append(n)
            ports = real(n)
            return [taken] + ports[1:] if len(calls) == 1 else ports

        dovecot._free_ports = fake
        try:
            with Dovecot() as d:
                self.assertEqual(len(calls), 2)
                self.assertNotEqual(d.port_imap, taken)
                self.assertEqual(d.imap().logout()[0], "BYE")
                root = d.dir
        finally:
            dovecot._free_ports = real
            squatter.close()
        self.assertFalse(os.path.exists(root))

    def test_start_failure_reports_log(self):
        d = Dovecot(extra_conf="this_is_not_a_setting = 1\n")
        try:
            with self.assertRaises(dovecot.DovecotError) as cm:
                d.start(timeout=10)
            self.assertIn("this_is_not_a_setting", str(cm.exception))
        finally:
            d.stop()


class Helpers(unittest.TestCase):
    def test_mutf7(self):
        cases = {
            "INBOX": "INBOX",
            "Entwürfe": "Entw&APw-rfe",
            "a&b": "a&-b",
            "~peter/mail/台北/日本語": "~peter/mail/&U,BTFw-/&ZeVnLIqe-",
            "Ünïcødé & more": "&ANw-n&AO8-c&APg-d&AOk- &- more",
            "😀": "&2D3eAA-",
        }
        for plain, enc in cases.items():
            self.assertEqual(dovecot.mutf7_encode(plain), enc)
            self.assertEqual(dovecot.mutf7_decode(enc), plain)

    def test_mailgen_deterministic_and_clean(self):
        a = mailgen.generate(60, seed=9)
        self.assertEqual(a, mailgen.generate(60, seed=9))
        self.assertNotEqual(a, mailgen.generate(60, seed=10))
        for m in a:
            self.assertTrue(m.endswith(b"\r\n"))
            self.assertEqual(m.count(b"\n"), m.count(b"\r\n"))
            self.assertEqual(m.count(b"\r"), m.count(b"\r\n"))
            self.assertNotIn(b"\0", m)
            self.assertLessEqual(max(len(line) for line in m.split(b"\r\n")), 998)
            head = m.split(b"\r\n\r\n", 1)[0]
            self.assertTrue(head.isascii())
        ids = [line for m in a for line in m.split(b"\r\n") if line.startswith(b"Message-ID:")]
        self.assertEqual(len(ids), len(set(ids)))
        capped = mailgen.generate(200, seed=3, max_size=100000)
        self.assertLess(max(map(len, capped)), 110000)

    def test_mailgen_cli(self):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, mailgen.__file__, "--count", "7", "--seed", "5", "--out", tmp],
                           check=True, stdout=subprocess.PIPE)
            files = sorted(os.listdir(tmp))
            self.assertEqual(len(files), 7)
            with open(os.path.join(tmp, files[0]), "rb") as f:
                self.assertEqual(f.read(), mailgen.generate(7, 5)[0])

    def test_maildir_helpers(self):
        with tempfile.TemporaryDirectory() as tmp:
            for sub in ("cur", "new", "tmp", ".Sub/cur", ".Sub/new", ".Sub/tmp"):
                os.makedirs(os.path.join(tmp, sub))
            with open(os.path.join(tmp, "cur", "1.a.host:2,RS"), "wb") as f:
                f.write(b"A: b\n\nx\n")
            with open(os.path.join(tmp, "new", "2.b.host"), "wb") as f:
                f.write(b"C: d\n\ny\n")
            msgs = mstest.maildir_messages(tmp)
            self.assertEqual(msgs, [("1.a.host", "RS", b"A: b\n\nx\n"), ("2.b.host", "", b"C: d\n\ny\n")])
            self.assertEqual(mstest.lf_to_crlf(msgs[0][2]), b"A: b\r\n\r\nx\r\n")
            self.assertEqual(mstest.maildir_folders(tmp), [".", ".Sub"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
