#!/usr/bin/env python3
"""POP3 keep-on-server download (issue 5) against a real Dovecot POP3, a
scripted fake server for what Dovecot never does, and mpop for comparison.

The engine is run through tests/popcli (one account of a configuration
file, summary on stdout, "stats k=v ..." line, exit 0 / 75 transient / 77
credentials) until `mailsync sync` drives it."""

import collections
import datetime
import email.utils
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import dovecot
import mailgen
import mstest
from dovecot import Dovecot
from fakepop import FakePop

BUILD = os.environ.get("MAILSYNC_BUILD_DIR", os.path.join(mstest.SOURCE_DIR, "build"))
POPCLI = os.path.join(BUILD, "tests", "popcli", "popcli")


def popcli(config, account="p", *flags, env=None, timeout=300):
    if not os.access(POPCLI, os.X_OK):
        raise unittest.SkipTest("popcli is not built (%s)" % POPCLI)
    full = dict(os.environ)
    full.update(env or {})
    p = subprocess.run([POPCLI] + list(flags) + [config, account], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, env=full)
    p.stdout = p.stdout.decode("utf-8", "replace")
    p.stderr = p.stderr.decode("utf-8", "replace")
    m = re.search(r"^stats (.*)$", p.stdout, re.M)
    p.stats = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())} if m else {}
    return p


def inbox(maildir):
    return os.path.join(maildir, "INBOX")


def local_bodies(maildir):
    """Multiset of the message bytes in the account's INBOX."""
    return collections.Counter(b for _u, _f, b in mstest.maildir_messages(inbox(maildir)))


def wire_to_local(msg):
    return mstest.crlf_to_lf(msg)


def tmp_files(maildir):
    d = os.path.join(inbox(maildir), "tmp")
    return os.listdir(d) if os.path.isdir(d) else []


# Lines beginning with "." (alone, doubled, before text) must survive the
# dot-stuffing round trip byte for byte.
DOT_MSG = (b"From: dots@example.com\r\nTo: alice@example.com\r\nSubject: dots\r\n"
           b"Message-ID: <dots@example.com>\r\nDate: Mon, 06 Jan 2025 10:00:00 +0000\r\n\r\n"
           b".\r\n..\r\n.leading\r\n...three\r\n. space\r\nend\r\n")


class DovecotPop(mstest.DovecotTestCase):
    def setUp(self):
        super().setUp()
        # Each test starts from an empty INBOX on the server.
        self.dovecot.doveadm("expunge", "-u", "alice", "mailbox", "INBOX", "all")
        self.maildir = os.path.join(self.tmp, "Mail")

    def config(self, **extra):
        return self.write_config({"p": self.pop3_account(self.maildir, **extra)})

    def run_ok(self, cfg, *flags, env=None):
        p = popcli(cfg, "p", *flags, env=env)
        self.assertEqual(p.returncode, 0, "popcli failed:\n%s\n%s" % (p.stdout, p.stderr))
        return p

    def server(self):
        return self.dovecot.pop3_all("alice")

    def test_first_download_rerun_new_mail_and_keep(self):
        msgs = mailgen.generate(60, seed=5, max_size=300000) + [DOT_MSG]
        self.dovecot.save_many("alice", "INBOX", msgs)
        on_server = self.server()
        cfg = self.config()
        p = self.run_ok(cfg)
        self.assertEqual(p.stats["downloaded"], len(msgs))
        self.assertEqual(p.stats["listed"], len(msgs))
        self.assertIn("p: %d new" % len(msgs), p.stdout)
        # Byte-identical to the server's copies, modulo CRLF -> LF.
        self.assertEqual(local_bodies(self.maildir),
                         collections.Counter(wire_to_local(b) for _u, b in on_server))
        self.assertIn(wire_to_local(DOT_MSG), local_bodies(self.maildir))
        self.assertEqual(p.stats["bytes"], sum(len(wire_to_local(b)) for _u, b in on_server))
        self.assertEqual(tmp_files(self.maildir), [])
        # Second run: nothing new, nothing deleted on the server.
        p = self.run_ok(cfg)
        self.assertEqual(p.stats["downloaded"], 0)
        self.assertEqual(p.stats["known"], len(msgs))
        self.assertEqual(sum(local_bodies(self.maildir).values()), len(msgs))
        self.assertEqual(self.server(), on_server)
        # New mail on the server appears; the old stays on the server.
        more = mailgen.generate(3, seed=77)
        self.dovecot.save_many("alice", "INBOX", more)
        p = self.run_ok(cfg)
        self.assertEqual(p.stats["downloaded"], 3)
        self.assertEqual(sum(local_bodies(self.maildir).values()), len(msgs) + 3)
        for m in more:
            self.assertIn(wire_to_local(m), local_bodies(self.maildir))
        self.assertEqual(len(self.server()), len(msgs) + 3)

    def test_dry_run_changes_nothing(self):
        self.dovecot.save_many("alice", "INBOX", mailgen.generate(5, seed=3))
        p = self.run_ok(self.config(), "-n")
        self.assertEqual(p.stats["downloaded"], 5)
        self.assertIn("(dry run)", p.stdout)
        self.assertEqual(sum(local_bodies(self.maildir).values()), 0)
        p = self.run_ok(self.config())
        self.assertEqual(p.stats["downloaded"], 5)

    def test_delete_after_days_with_clock(self):
        self.dovecot.save_many("alice", "INBOX", mailgen.generate(6, seed=11))
        now = int(time.time())
        cfg = self.config(pop={"delete_after_days": 3})
        p = self.run_ok(cfg, env={"MAILSYNC_NOW": str(now)})
        self.assertEqual(p.stats["downloaded"], 6)
        self.assertEqual(p.stats["deleted_on_server"], 0)
        # Two days later: still kept. Three more new ones arrive meanwhile.
        self.dovecot.save_many("alice", "INBOX", mailgen.generate(2, seed=12))
        p = self.run_ok(cfg, env={"MAILSYNC_NOW": str(now + 2 * 86400)})
        self.assertEqual(p.stats["downloaded"], 2)
        self.assertEqual(p.stats["deleted_on_server"], 0)
        self.assertEqual(len(self.server()), 8)
        # Three days after the first download: the first six go, the two
        # first seen a day later stay.
        p = self.run_ok(cfg, env={"MAILSYNC_NOW": str(now + 3 * 86400)})
        self.assertEqual(p.stats["deleted_on_server"], 6)
        self.assertEqual(len(self.server()), 2)
        self.assertEqual(sum(local_bodies(self.maildir).values()), 8)
        # And the next run neither re-downloads nor forgets wrongly.
        p = self.run_ok(cfg, env={"MAILSYNC_NOW": str(now + 3 * 86400)})
        self.assertEqual(p.stats["downloaded"], 0)
        self.assertEqual(p.stats["deleted_on_server"], 0)
        p = self.run_ok(cfg, env={"MAILSYNC_NOW": str(now + 5 * 86400)})
        self.assertEqual(p.stats["deleted_on_server"], 2)
        self.assertEqual(self.server(), [])
        self.assertEqual(sum(local_bodies(self.maildir).values()), 8)

    def test_keep_on_server_false(self):
        msgs = mailgen.generate(12, seed=21)
        self.dovecot.save_many("alice", "INBOX", msgs)
        on_server = self.server()
        p = self.run_ok(self.config(pop={"keep_on_server": False}))
        self.assertEqual(p.stats["downloaded"], 12)
        self.assertEqual(p.stats["deleted_on_server"], 12)
        self.assertEqual(self.server(), [])
        self.assertEqual(local_bodies(self.maildir),
                         collections.Counter(wire_to_local(b) for _u, b in on_server))

    def test_since(self):
        msgs = mailgen.generate(40, seed=31)
        self.dovecot.save_many("alice", "INBOX", msgs)
        since = datetime.datetime(2022, 1, 1, tzinfo=datetime.timezone.utc)

        def wanted(m):
            head = m.split(b"\r\n\r\n", 1)[0]
            mm = re.search(rb"^Date:[ \t]*([^\r\n]*)", head, re.M | re.I)
            try:
                return email.utils.parsedate_to_datetime(mm.group(1).decode()) >= since
            except (TypeError, ValueError, AttributeError):
                return True

        want = [m for m in msgs if wanted(m)]
        self.assertTrue(0 < len(want) < len(msgs), "corpus should straddle the date")
        cfg = self.config(pop={"since": "2022-01-01"})
        p = self.run_ok(cfg)
        self.assertEqual(p.stats["downloaded"], len(want))
        self.assertEqual(p.stats["skipped_since"], len(msgs) - len(want))
        self.assertEqual(local_bodies(self.maildir), collections.Counter(wire_to_local(m) for m in want))
        # Skipped ones are remembered: the next run reads nothing again.
        p = self.run_ok(cfg)
        self.assertEqual(p.stats["downloaded"], 0)
        self.assertEqual(p.stats["skipped_since"], 0)
        self.assertEqual(p.stats["known"], len(msgs))
        # Without "since" any more, what it skipped is downloaded.
        p = self.run_ok(self.config())
        self.assertEqual(p.stats["downloaded"], len(msgs) - len(want))
        self.assertEqual(local_bodies(self.maildir), collections.Counter(wire_to_local(m) for m in msgs))

    def test_max_size(self):
        msgs = mailgen.generate(30, seed=41, max_size=200000)
        self.dovecot.save_many("alice", "INBOX", msgs)
        limit = 20000
        on_server = self.server()
        small = [b for _u, b in on_server if len(b) <= limit]
        self.assertTrue(0 < len(small) < len(on_server))
        cfg = self.config(max_size=limit)
        p = self.run_ok(cfg)
        self.assertEqual(p.stats["downloaded"], len(small))
        self.assertEqual(p.stats["skipped_size"], len(on_server) - len(small))
        self.assertIn("over max_size: %d" % (len(on_server) - len(small)), p.stdout)
        self.assertEqual(local_bodies(self.maildir), collections.Counter(wire_to_local(b) for b in small))
        # Raising the limit fetches the rest (skips by size are not recorded).
        p = self.run_ok(self.config())
        self.assertEqual(p.stats["downloaded"], len(on_server) - len(small))

    def test_stls(self):
        msgs = mailgen.generate(4, seed=51)
        self.dovecot.save_many("alice", "INBOX", msgs)
        p = self.run_ok(self.config(tls="starttls"), "-vv")
        self.assertEqual(p.stats["downloaded"], 4)
        self.assertIn("C: STLS", p.stderr)
        self.assertIn("TLS started", p.stderr)
        # The trace never shows the password.
        self.assertNotIn(self.dovecot.password("alice"), p.stderr)
        self.assertIn("<redacted>", p.stderr)

    def test_wrong_password(self):
        self.dovecot.save_many("alice", "INBOX", mailgen.generate(2, seed=61))
        p = popcli(self.config(password="wrong"), "p", "-vv")
        self.assertEqual(p.returncode, 77, p.stderr)
        self.assertIn("popcli: auth: localhost:%d: authentication failed: [AUTH] Authentication failed."
                      % self.dovecot.port_pop3s, p.stderr)
        self.assertNotIn("wrong", p.stderr.replace("popcli: auth", ""))
        self.assertEqual(sum(local_bodies(self.maildir).values()), 0)

    def test_kill9_during_download_then_rerun(self):
        msgs = mailgen.generate(150, seed=71, max_size=400000)
        self.dovecot.save_many("alice", "INBOX", msgs)
        on_server = self.server()
        want = collections.Counter(wire_to_local(b) for _u, b in on_server)
        cfg = self.config()
        if not os.access(POPCLI, os.X_OK):
            self.skipTest("popcli is not built")
        new_dir = os.path.join(inbox(self.maildir), "new")
        # Kill at several points of the download, then finish with a clean
        # run: never a lost or duplicated message.
        for target in (1, 40, 90):
            proc = subprocess.Popen([POPCLI, cfg, "p"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                if os.path.isdir(new_dir) and len(os.listdir(new_dir)) >= target:
                    break
                time.sleep(0.002)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate()
            have = local_bodies(self.maildir)
            dups = [b[:60] for b, n in have.items() if n > 1]
            self.assertEqual(dups, [], "duplicates after kill at %d" % target)
            self.assertTrue(all(b in want for b in have), "unknown message stored")
        p = self.run_ok(cfg)
        self.assertEqual(local_bodies(self.maildir), want)
        p = self.run_ok(cfg)
        self.assertEqual(p.stats["downloaded"], 0)
        self.assertEqual(local_bodies(self.maildir), want)

    def test_cancel_keeps_what_is_complete(self):
        msgs = mailgen.generate(120, seed=73, max_size=400000)
        self.dovecot.save_many("alice", "INBOX", msgs)
        want = collections.Counter(wire_to_local(b) for _u, b in self.server())
        cfg = self.config()
        if not os.access(POPCLI, os.X_OK):
            self.skipTest("popcli is not built")
        new_dir = os.path.join(inbox(self.maildir), "new")
        proc = subprocess.Popen([POPCLI, cfg, "p"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if os.path.isdir(new_dir) and len(os.listdir(new_dir)) >= 10:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        have = local_bodies(self.maildir)
        if proc.returncode == 75:
            self.assertIn(b"popcli: transient: cancelled", err)
            self.assertLess(sum(have.values()), len(msgs))
        else:
            self.assertEqual(proc.returncode, 0, err)  # finished before the signal
        self.assertEqual(tmp_files(self.maildir), [])
        self.assertTrue(all(n == 1 and b in want for b, n in have.items()))
        # What a cancelled run stored is recorded: the rerun fetches the rest.
        m = re.search(rb"downloaded=(\d+)", out)
        p = self.run_ok(cfg)
        self.assertEqual(p.stats["adopted"], 0)
        self.assertEqual(p.stats["downloaded"], len(msgs) - int(m.group(1)))
        self.assertEqual(local_bodies(self.maildir), want)

    def test_deleted_locally(self):
        self.dovecot.save_many("alice", "INBOX", mailgen.generate(5, seed=81))
        cfg = self.config()
        self.run_ok(cfg)
        local = mstest.maildir_messages(inbox(self.maildir))
        victim = local[0]
        for sub in ("new", "cur"):
            d = os.path.join(inbox(self.maildir), sub)
            for n in os.listdir(d):
                if n.startswith(victim[0]):
                    os.unlink(os.path.join(d, n))
        p = self.run_ok(cfg)
        self.assertEqual(p.stats["deleted_locally"], 1)
        self.assertEqual(p.stats["downloaded"], 0)
        self.assertNotIn(victim[2], local_bodies(self.maildir))
        self.assertEqual(len(self.server()), 5)
        # With delete_when_deleted_locally the server copy goes too.
        p = self.run_ok(self.config(pop={"delete_when_deleted_locally": True}))
        self.assertEqual(p.stats["deleted_on_server"], 1)
        self.assertEqual(p.stats["downloaded"], 0)
        self.assertEqual(len(self.server()), 4)
        self.assertNotIn(mstest.lf_to_crlf(victim[2]), [b for _u, b in self.server()])

    def test_vanished_maildir_is_not_a_mass_deletion(self):
        self.dovecot.save_many("alice", "INBOX", mailgen.generate(6, seed=83))
        self.run_ok(self.config())
        # The Maildir disappears (moved disk, changed path): it must not
        # count as six local deletions, above all not on the server.
        shutil.rmtree(self.maildir)
        p = popcli(self.config(pop={"delete_when_deleted_locally": True}))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("6 of the 6 downloaded messages are gone from", p.stderr)
        self.assertIn("refusing to treat that many as deleted locally (more than 50%)", p.stderr)
        self.assertEqual(len(self.server()), 6)
        self.assertEqual(sum(local_bodies(self.maildir).values()), 0)
        # With --force the user confirms: deleted locally, and (as asked)
        # on the server too; nothing is downloaded again.
        p = popcli(self.config(pop={"delete_when_deleted_locally": True}), "p", "-f")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stats["deleted_locally"], 6)
        self.assertEqual(p.stats["deleted_on_server"], 6)
        self.assertEqual(p.stats["downloaded"], 0)
        self.assertEqual(self.server(), [])

    def test_mpop_same_messages(self):
        mpop = shutil.which("mpop")
        if mpop is None:
            self.skipTest("mpop is not installed")
        msgs = mailgen.generate(40, seed=91, max_size=300000) + [DOT_MSG]
        self.dovecot.save_many("alice", "INBOX", msgs)
        p = self.run_ok(self.config())
        self.assertEqual(p.stats["downloaded"], len(msgs))
        mdir = os.path.join(self.tmp, "mpop-maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(mdir, sub))
        rc = os.path.join(self.tmp, "mpoprc")
        with open(rc, "w") as f:
            f.write("defaults\n"
                    "tls on\ntls_starttls off\ntls_trust_file %s\n"
                    "account test\nhost localhost\nport %d\nuser alice\npassword %s\n"
                    "auth user\nkeep on\ndelivery maildir %s\nuidls_file %s\n"
                    % (self.dovecot.ca_cert, self.dovecot.port_pop3s, self.dovecot.password("alice"),
                       mdir, os.path.join(self.tmp, "mpop-uidls")))
        os.chmod(rc, 0o600)
        r = subprocess.run([mpop, "-C", rc, "-q", "test"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)

        def strip_mpop(b):
            # mpop prepends one "Received: from localhost by <host> (mpop)
            # with POP3; <date>" header (received_header defaults to on),
            # folded over two lines, at delivery; nothing else is changed
            # (it writes LF line endings into Maildir like mailsync).
            m = re.match(rb"Received: [^\n]*\(mpop\)[^\n]*\n(?:[ \t][^\n]*\n)*", b)
            if m is None:
                m = re.match(rb"Received: [^\n]*\n(?:[ \t][^\n]*\n)*", b)
                self.assertIsNotNone(m, "mpop added no Received header: %r" % b[:80])
            return b[m.end():]

        theirs = collections.Counter(strip_mpop(b) for _u, _f, b in mstest.maildir_messages(mdir))
        ours = local_bodies(self.maildir)
        self.assertEqual(sum(theirs.values()), len(msgs))
        self.assertEqual(ours, theirs)


class DovecotPopLocked(mstest.DovecotTestCase):
    # Dovecot locks the POP3 mailbox for the whole session only with
    # pop3_lock_session; a second session then gets [IN-USE].
    dovecot_options = {"extra_conf": "pop3_lock_session = yes\n"}

    def test_in_use_is_try_later(self):
        self.dovecot.save_many("alice", "INBOX", mailgen.generate(2, seed=101))
        maildir = os.path.join(self.tmp, "Mail")
        cfg = self.write_config({"p": self.pop3_account(maildir)})
        held = self.dovecot.pop3("alice")
        try:
            p = popcli(cfg)
        finally:
            held.quit()
        self.assertEqual(p.returncode, 75, p.stdout + p.stderr)
        self.assertRegex(p.stderr, r"popcli: transient: localhost:\d+: login refused for now: \[IN-USE\]")
        self.assertEqual(sum(local_bodies(maildir).values()), 0)
        # Once the other session is gone the same configuration works.
        p = popcli(cfg)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stats["downloaded"], 2)


class FakePopFixture:
    """A temporary Maildir and state for a POP3 account against a FakePop
    server (mixin for a unittest.TestCase)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-fakepop-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.maildir = os.path.join(self.tmp, "Mail")

    def config(self, srv, **extra):
        acct = {"protocol": "pop3", "host": "127.0.0.1", "port": srv.port, "tls": "none",
                "allow_plaintext": True, "user": "u", "password": "pw", "maildir": self.maildir,
                "timeout": 5}
        acct.update(extra)
        path = os.path.join(self.tmp, "config.yaml")
        dovecot.write_mailsync_config(path, {"p": acct}, state_dir=os.path.join(self.tmp, "state"))
        return path

    def msgs(self, n, seed):
        return mailgen.generate(n, seed=seed, max_size=100000)


class FakePopTests(FakePopFixture, unittest.TestCase):
    def test_no_uidl_falls_back_to_header_hash(self):
        msgs = self.msgs(6, 1)
        with FakePop(msgs, uidls=None) as srv:
            cfg = self.config(srv)
            p = popcli(cfg)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 6)
            self.assertEqual(p.stderr.count("the server has no UIDL"), 1)
            self.assertEqual(local_bodies(self.maildir), collections.Counter(wire_to_local(m) for m in msgs))
            p = popcli(cfg)
            self.assertEqual(p.stats["downloaded"], 0)
            self.assertEqual(p.stats["known"], 6)
            # A new message is found among the old ones.
            srv.messages = msgs[:3] + self.msgs(1, 2) + msgs[3:]
            p = popcli(cfg)
            self.assertEqual(p.stats["downloaded"], 1)
            self.assertEqual(sum(local_bodies(self.maildir).values()), 7)

    def test_no_uidl_failed_top_forgets_nothing(self):
        msgs = self.msgs(3, 7)
        with FakePop(msgs, uidls=None) as srv:
            cfg = self.config(srv)
            p = popcli(cfg)
            self.assertEqual(p.stats["downloaded"], 3, p.stderr)
            # Message 2 cannot be keyed in this run: its row must survive.
            srv.top_fail = {2}
            p = popcli(cfg)
            self.assertEqual(p.stats["downloaded"], 0, p.stderr)
            self.assertEqual(p.stats["errors"], 1)
            srv.top_fail = set()
            p = popcli(cfg)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 0)
            self.assertEqual(p.stats["known"], 3)
            self.assertEqual(local_bodies(self.maildir), collections.Counter(wire_to_local(m) for m in msgs))

    def test_neither_uidl_nor_top(self):
        with FakePop(self.msgs(3, 16), uidls=None) as srv:
            srv.top = False
            p = popcli(self.config(srv))
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn("the server has neither UIDL nor TOP", p.stderr)
            self.assertFalse(any(c.startswith("RETR") for c in srv.commands))
            self.assertEqual(sum(local_bodies(self.maildir).values()), 0)

    def test_reused_uidl_downloads_the_new_message(self):
        a, b = self.msgs(2, 3)
        c = self.msgs(1, 4)[0]
        self.assertNotEqual(len(a), len(c))
        with FakePop([a, b], uidls=["one", "two"]) as srv:
            cfg = self.config(srv)
            p = popcli(cfg)
            self.assertEqual(p.stats["downloaded"], 2, p.stderr)
            # "one" deleted elsewhere, its UIDL given to a new message.
            srv.messages = [c, b]
            srv.uidls = ["one", "two"]
            p = popcli(cfg)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 1)
            self.assertIn("now names a different message", p.stderr)
            self.assertEqual(local_bodies(self.maildir),
                             collections.Counter(wire_to_local(m) for m in (a, b, c)))
            # Stable afterwards.
            p = popcli(cfg)
            self.assertEqual(p.stats["downloaded"], 0)

    def test_reused_uidl_same_size_is_downloaded_before_dele(self):
        def msg(subj):
            return (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subj +
                    b"\r\nMessage-ID: <" + subj + b"@x>\r\n\r\nbody body\r\n")
        a, c = msg(b"AAAA"), msg(b"CCCC")
        self.assertEqual(len(a), len(c))
        for policy in ({"keep_on_server": False},):
            with self.subTest(policy=policy), FakePop([a], uidls=["one"]) as srv:
                shutil.rmtree(self.tmp, True)
                os.makedirs(self.tmp)
                cfg = self.config(srv, pop=policy)
                p = popcli(cfg)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(p.stats["downloaded"], 1)
                self.assertEqual(srv.messages, [])
                # The server hands "one" to a new message of the same size.
                srv.messages = [c]
                srv.uidls = ["one"]
                del srv.commands[:]
                p = popcli(cfg)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(p.stats["downloaded"], 1)
                self.assertEqual(local_bodies(self.maildir),
                                 collections.Counter(wire_to_local(m) for m in (a, c)))
                acts = [x for x in srv.commands if x.startswith(("RETR", "DELE"))]
                self.assertEqual(acts, ["RETR 1", "DELE 1"])
                self.assertEqual(srv.messages, [])

    def test_policy_dele_checks_headers_of_known_message(self):
        # A delivered message still listed under its UIDL, but the server
        # now serves other headers (same size) under it: a DELE policy must
        # not delete what was never downloaded.
        def msg(subj):
            return (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subj +
                    b"\r\nMessage-ID: <" + subj + b"@x>\r\n\r\nbody body\r\n")
        a, c = msg(b"AAAA"), msg(b"CCCC")
        with FakePop([a], uidls=["one"]) as srv:
            now = int(time.time())
            cfg = self.config(srv, pop={"delete_after_days": 3})
            p = popcli(cfg, env={"MAILSYNC_NOW": str(now)})
            self.assertEqual(p.stats["downloaded"], 1, p.stderr)
            self.assertEqual(len(srv.messages), 1)
            srv.messages = [c]
            del srv.commands[:]
            p = popcli(cfg, env={"MAILSYNC_NOW": str(now + 4 * 86400)})
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 1)
            self.assertIn("TOP 1 0", srv.commands)
            self.assertEqual(local_bodies(self.maildir),
                             collections.Counter(wire_to_local(m) for m in (a, c)))
            # C was downloaded in this run (first seen now): kept for 3 days.
            self.assertEqual(srv.messages, [c])
            # The same message, verified by TOP, is deleted when due.
            del srv.commands[:]
            p = popcli(cfg, env={"MAILSYNC_NOW": str(now + 8 * 86400)})
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 0)
            self.assertEqual(p.stats["deleted_on_server"], 1)
            self.assertIn("TOP 1 0", srv.commands)
            self.assertEqual(srv.messages, [])

    def test_adoption_is_durable_before_dele(self):
        a = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: AAAA\r\n"
             b"Message-ID: <AAAA@x>\r\n\r\nbody body\r\n")
        with FakePop([], uidls=[]) as srv:
            cfg = self.config(srv, pop={"keep_on_server": False})
            self.assertEqual(popcli(cfg).returncode, 0)
            # A crash left the file in new/ and only the intent row.
            lid = "1700000000.P1Q1.host"
            with open(os.path.join(inbox(self.maildir), "new", lid), "wb") as f:
                f.write(wire_to_local(a))
            srv.messages = [a]
            srv.uidls = ["one"]
            p = popcli(cfg, "p", "-vv", "-I", "one=" + lid)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["adopted"], 1)
            self.assertEqual(p.stats["downloaded"], 0)
            self.assertEqual(p.stats["deleted_on_server"], 1)
            self.assertEqual(srv.messages, [])
            self.assertEqual(local_bodies(self.maildir), collections.Counter([wire_to_local(a)]))
            # The adopted row was fsynced and committed before DELE went out.
            committed = p.stderr.find("adopted message recorded before deleting")
            dele = p.stderr.find("C: DELE 1")
            self.assertGreaterEqual(committed, 0, p.stderr)
            self.assertGreater(dele, committed, p.stderr)
            # And it stays recorded: nothing comes back.
            p = popcli(cfg)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["adopted"], 0)
            self.assertEqual(sum(local_bodies(self.maildir).values()), 1)

    def test_intent_matched_after_renumbering(self):
        a = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: AAAA\r\n"
             b"Message-ID: <AAAA@x>\r\n\r\nbody body\r\n")
        with FakePop([], uidls=[]) as srv:
            cfg = self.config(srv)
            self.assertEqual(popcli(cfg).returncode, 0)
            # Stored just before a crash under "old"; then every UIDL changed.
            local = wire_to_local(a)
            lid = "1700000000.P2Q2.host"
            with open(os.path.join(inbox(self.maildir), "new", lid), "wb") as f:
                f.write(local)
            hh = hashlib.sha256(local[:local.index(b"\n\n") + 1]).hexdigest()[:32]
            srv.messages = [a]
            srv.uidls = ["new1"]
            p = popcli(cfg, "p", "-I", "old=%s:%d:%s" % (lid, len(a), hh))
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 0, p.stderr)
            self.assertEqual(p.stats["adopted"], 1)
            self.assertIn("message old is new1 under a new UIDL", p.stderr)
            self.assertEqual(local_bodies(self.maildir), collections.Counter([local]))
            p = popcli(cfg)
            self.assertEqual(p.stats["downloaded"], 0)
            self.assertEqual(p.stats["known"], 1)
            self.assertEqual(sum(local_bodies(self.maildir).values()), 1)

    def test_renumbered_uidls_are_not_downloaded_again(self):
        msgs = self.msgs(4, 5)
        with FakePop(msgs, uidls=["a1", "a2", "a3", "a4"]) as srv:
            cfg = self.config(srv)
            self.assertEqual(popcli(cfg).stats["downloaded"], 4)
            # Every UIDL changes at once (a Dovecot UIDVALIDITY change).
            srv.uidls = ["b1", "b2", "b3", "b4"]
            p = popcli(cfg)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 0)
            self.assertEqual(p.stats["known"], 4)
            self.assertEqual(sum(local_bodies(self.maildir).values()), 4)

    def test_connection_drop_mid_retr(self):
        msgs = self.msgs(5, 6)
        with FakePop(msgs) as srv:
            srv.drop_in_retr = 3
            cfg = self.config(srv)
            p = popcli(cfg)
            self.assertEqual(p.returncode, 75, p.stderr)
            self.assertIn("popcli: transient:", p.stderr)
            have = local_bodies(self.maildir)
            # The two complete messages before the drop are kept; nothing
            # half-written is.
            self.assertEqual(have, collections.Counter(wire_to_local(m) for m in msgs[:2]))
            self.assertEqual(tmp_files(self.maildir), [])
            self.assertNotIn("DELE 1", " ".join(srv.commands))
            srv.drop_in_retr = None
            p = popcli(cfg)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 3)
            self.assertEqual(local_bodies(self.maildir), collections.Counter(wire_to_local(m) for m in msgs))

    def test_endless_line(self):
        msgs = self.msgs(3, 7)
        with FakePop(msgs) as srv:
            srv.endless_in_retr = 2
            p = popcli(self.config(srv), timeout=120)
            self.assertEqual(p.returncode, 75, p.stderr)
            self.assertIn("protocol error: line in message body longer than 1048576 bytes", p.stderr)
            self.assertEqual(local_bodies(self.maildir), collections.Counter([wire_to_local(msgs[0])]))
            self.assertEqual(tmp_files(self.maildir), [])

    def test_missing_terminator(self):
        msgs = self.msgs(2, 8)
        with FakePop(msgs) as srv:
            srv.no_terminator_in_retr = 1
            p = popcli(self.config(srv), timeout=120)
            self.assertEqual(p.returncode, 75, p.stderr)
            self.assertIn("in the middle of a reply", p.stderr)
            self.assertEqual(sum(local_bodies(self.maildir).values()), 0)
            self.assertEqual(tmp_files(self.maildir), [])

    def test_auth_mechanisms(self):
        msgs = self.msgs(1, 10)
        long_token = "tok-" + "x" * 400  # forces the two-step SASL exchange
        cases = [
            ("plain", "pw", ("PLAIN", "u", True, False)),
            ("xoauth2", long_token, ("XOAUTH2", "u", True, True)),
            ("oauthbearer", long_token, ("OAUTHBEARER", "u", True, True)),
            ("apop", "pw", ("APOP", "u", True)),
        ]
        for auth, secret, want in cases:
            with self.subTest(auth=auth), FakePop(msgs, password=secret) as srv:
                srv.sasl = ["PLAIN", "XOAUTH2", "OAUTHBEARER"]
                srv.apop = True
                shutil.rmtree(self.tmp, True)
                os.makedirs(self.tmp)
                p = popcli(self.config(srv, auth=auth, password=secret), "p", "-vv")
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(p.stats["downloaded"], 1)
                self.assertEqual(srv.auth_log, [want])
                self.assertNotIn(secret, p.stderr)
                self.assertIn("<redacted>", p.stderr)
        # auth: login is USER/PASS.
        with FakePop(msgs) as srv:
            srv.sasl = ["PLAIN"]
            shutil.rmtree(self.tmp, True)
            os.makedirs(self.tmp)
            p = popcli(self.config(srv, auth="login"), "p", "-vv")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("USER u", srv.commands)
            self.assertIn("C: PASS <redacted>", p.stderr)

    def test_apop_after_stls(self):
        # RFC 2595: the greeting's APOP timestamp stays valid after STLS.
        cert, key = os.path.join(self.tmp, "cert.pem"), os.path.join(self.tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                        "-keyout", key, "-out", cert, "-days", "2"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        msgs = self.msgs(1, 18)
        with FakePop(msgs) as srv:
            srv.stls = True
            srv.apop = True
            srv.tls_cert = (cert, key)
            p = popcli(self.config(srv, tls="starttls", allow_plaintext=False, auth="apop"), "p", "-k")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 1)
            self.assertEqual(srv.commands[:3], ["CAPA", "STLS", "CAPA"])
            self.assertEqual(srv.auth_log, [("APOP", "u", True)])
            self.assertEqual(local_bodies(self.maildir), collections.Counter([wire_to_local(msgs[0])]))

    def test_oauth_token_refused(self):
        with FakePop(self.msgs(1, 11), password="good") as srv:
            srv.sasl = ["XOAUTH2"]
            p = popcli(self.config(srv, auth="xoauth2", password="bad-token"))
            self.assertEqual(p.returncode, 77, p.stderr)
            self.assertIn("popcli: auth: 127.0.0.1:%d: authentication failed: [AUTH] bad token" % srv.port,
                          p.stderr)
            # The client answered the error challenge with an empty line.
            self.assertEqual(srv.auth_log[-1], ("answer", b""))

    def test_stls_injection_refused(self):
        with FakePop(self.msgs(1, 12)) as srv:
            srv.stls = True
            srv.stls_inject = True
            p = popcli(self.config(srv, tls="starttls", allow_plaintext=False))
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn("possible injection attack", p.stderr)
            self.assertNotIn("USER u", srv.commands)
            self.assertFalse(any(c.startswith("AUTH") for c in srv.commands))

    def test_stls_not_offered_refused(self):
        with FakePop(self.msgs(1, 13)) as srv:
            p = popcli(self.config(srv, tls="starttls", allow_plaintext=False))
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn("does not offer STLS; refusing to continue without TLS", p.stderr)
            self.assertEqual(srv.commands, ["CAPA"])

    def test_duplicate_uidl_in_listing(self):
        msgs = self.msgs(3, 14)
        with FakePop(msgs, uidls=["same", "same", "other"]) as srv:
            p = popcli(self.config(srv))
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 2)
            self.assertEqual(p.stats["errors"], 1)
            self.assertIn("has the same UIDL as message 1", p.stderr)

    def test_large_sparse_listing_and_limit(self):
        with FakePop([]) as srv:
            # 100,000 messages numbered from 2, all over max_size: the
            # listing is indexed by number, not searched for each line.
            srv.synthetic = (100000, 2, 5000)
            p = popcli(self.config(srv, max_size=1000), timeout=240)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["listed"], 100000)
            self.assertEqual(p.stats["skipped_size"], 100000)
            self.assertFalse(any(c.startswith("RETR") for c in srv.commands))
            # Over the limit: the run fails with a clear error.
            srv.synthetic = (1001, 1, 5000)
            p = popcli(self.config(srv, max_size=1000), env={"POPCLI_MAX_LISTING": "1000"})
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn("the server lists more than 1000 messages", p.stderr)
            srv.synthetic = (1000, 1, 5000)
            p = popcli(self.config(srv, max_size=1000), env={"POPCLI_MAX_LISTING": "1000"})
            self.assertEqual(p.returncode, 0, p.stderr)
        # A message number listed twice is a broken listing, not two messages.
        with FakePop(self.msgs(2, 17)) as srv:
            srv.dup_list = 1
            p = popcli(self.config(srv))
            self.assertEqual(p.returncode, 75, p.stderr)
            self.assertIn("message 1 is listed twice in the LIST listing", p.stderr)
            self.assertFalse(any(c.startswith("RETR") for c in srv.commands))

    def test_disk_full_then_room(self):
        msgs = [mailgen.message(seed=15, index=i, size=100000) for i in range(12)]
        want = collections.Counter(wire_to_local(m) for m in msgs)
        for pipelining in (False, True):
            with self.subTest(pipelining=pipelining), FakePop(msgs, pipelining=pipelining) as srv:
                mnt = mstest.small_disk(self, "600k")
                self.maildir = os.path.join(mnt, "Mail")
                cfg = self.config(srv)
                os.makedirs(os.path.join(self.tmp, "state"), exist_ok=True)
                p = popcli(cfg, timeout=120)
                self.assertEqual(p.returncode, 75, p.stdout + p.stderr)
                self.assertIn("No space left on device", p.stderr)
                have = local_bodies(self.maildir)
                self.assertTrue(0 < sum(have.values()) < len(msgs))
                self.assertTrue(all(n == 1 and b in want for b, n in have.items()))
                self.assertEqual(tmp_files(self.maildir), [])
                # Room again: the next run finishes the job, no duplicate.
                subprocess.run(["mount", "-o", "remount,size=8m", mnt], check=True)
                p = popcli(cfg, timeout=120)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(p.stats["adopted"], 0)
                self.assertEqual(local_bodies(self.maildir), want)
                subprocess.run(["umount", mnt])
                shutil.rmtree(os.path.join(self.tmp, "state"))
                os.rmdir(mnt)

    def test_no_pipelining(self):
        msgs = self.msgs(5, 9)
        with FakePop(msgs, pipelining=False) as srv:
            p = popcli(self.config(srv))
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(local_bodies(self.maildir), collections.Counter(wire_to_local(m) for m in msgs))


if __name__ == "__main__":
    mstest.main()
