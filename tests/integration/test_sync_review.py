#!/usr/bin/env python3
"""Regression tests for engine bugs a review of issue 9 found, fixed in
e1d7584 (each test fails on the code before it, 89d9732). The first bug, an
extra connection taking an unsubscribed folder for deleted on the server,
is tested in test_sync_lanes.py with the other lane tests.

- A second connection dropped while it runs CREATE for a folder made
  locally: the run is incomplete, so exit 75 with the folder named on
  stderr (also with -q); the next clean run creates and uploads it, once.
  Before: exit 0 and no word of the folder.
- A server without UIDPLUS: the FETCH that looks for the UIDs of two
  uploads answers one message, then NO. Nothing may be recorded from that
  partial answer: both index rows stay upload intents, which the next run
  resolves by Message-ID, and every message ends up once on each side.
  Before: the upload the partial answer named was recorded from it.
- QRESYNC, SELECT of folder B while A is selected: untagged data before
  the server's [CLOSED] is A's (RFC 7162 section 3.2.11) and must not
  change B; B's own changes, sent after [CLOSED], are synced. A server
  that sends no [CLOSED] at all: what came with the SELECT cannot be told
  apart, so the client lists B's changes with CHANGEDSINCE and UID SEARCH
  instead. Before: A's VANISHED deleted B's local copies and A's FETCH set
  \\Flagged on B's message, with exit 0."""

import os
import re
import shutil
import tempfile
import unittest

import fakeimap
import mailgen
import mstest
from fakeimap import CommandProxy, Mailbox, mailbox_script, mailsync_sync
from synctest import SyncFixture, letters


def message(name, i):
    """A small message (LF) with Message-ID <NAME-I@example.org>."""
    return (b"From: a@example.org\nTo: b@example.org\nSubject: %s %d\n"
            b"Message-ID: <%s-%d@example.org>\n\nbody of %s %d\n"
            % (name.encode(), i, name.encode(), i, name.encode(), i))


def assert_same_as_box(test, maildir, folder, box):
    """The local folder holds box's messages, each once, with its flags."""
    local = sorted((b, fl) for _u, fl, b in
                   mstest.maildir_messages(os.path.join(maildir, folder)))
    server = sorted((mstest.crlf_to_lf(m.body), letters(m.flags)) for m in box.messages)
    test.assertEqual(local, server, folder)


# ---- a lane dropped while it creates a folder on the server ----------------------------

class LaneDroppedInCreate(SyncFixture, mstest.DovecotTestCase):
    NEW = "Notes"  # made locally; after INBOX, Drafts and Junk in folder order

    def account_config(self, proxy):
        acct = self.imap_account(user=self.user, host="127.0.0.1", port=proxy.port, tls="none",
                                 allow_plaintext=True, max_connections=2, layout=self.layout)
        del acct["ca_file"]  # plaintext to the proxy
        return self.write_config({"a": acct})

    def test_create_on_second_connection_reset(self):
        """The second connection takes the folder made locally and sends
        CREATE; the proxy resets that connection instead of passing it on.
        The run must not look complete: exit 75, "a: Notes: folder 'Notes':
        ... connection reset by peer" on stderr at default verbosity and
        with -q, nothing created, the local message kept, and the other
        folders synced by the first connection. A clean run then creates
        Notes and uploads its message once. The first connection's answer
        to SELECT INBOX is held until the CREATE, so that the second one
        is the one that meets Notes whatever the timing."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(2, seed=61, max_size=3000))
        self.dovecot.save_many(self.user, "Work", mailgen.generate(2, seed=63, max_size=3000))
        proxy = CommandProxy.for_test(self, self.dovecot.port_imap)
        cfg = self.account_config(proxy)
        self.sync(cfg)
        note = message("note", 1)
        self.deliver_local(self.NEW, note, "1700000001.M1P1.client")

        def on_command(proxy, n, line):
            if n == 1 and re.match(r"\S+ SELECT INBOX", line):
                proxy.hold(1)
            elif re.match(r"\S+ CREATE ", line):
                proxy.release(1)
                return "reset"
            return None

        for k, flags in enumerate(((), ("-q",))):
            # New mail in two folders: worth a second connection.
            self.dovecot.save_many(self.user, "INBOX",
                                   mailgen.generate(70, seed=71 + k, max_size=3000))
            self.dovecot.save_many(self.user, "Work",
                                   mailgen.generate(10, seed=81 + k, max_size=3000))
            proxy.arm(on_command)
            p = self.mailsync(cfg, *flags, "sync", "a")
            out = "flags %s\nstdout:\n%s\nstderr:\n%s" % (flags, p.stdout, p.stderr[-3000:])
            self.assertEqual([(n, line.split(" ", 1)[1]) for n, line in proxy.resets],
                             [(2, "CREATE " + self.NEW)], out)
            self.assertEqual(p.returncode, 75, out)
            self.assertRegex(p.stderr, r"(?m)^error: a: Notes: folder 'Notes': "
                                       r"127\.0\.0\.1:\d+: connection reset by peer$", out)
            self.assertNotIn(self.NEW, self.dovecot.folders(self.user))
            self.assertEqual([b for _u, _f, b in self.local(self.NEW)], [note])
            for folder in ("INBOX", "Work"):
                self.assert_same(folder)
        proxy.arm(None)
        p = self.sync(cfg)
        self.assertIn("\u2191 1 new", p.stdout)
        self.assertEqual([mstest.crlf_to_lf(b) for _u, _f, b in self.server(self.NEW)], [note])
        for folder in (self.NEW, "INBOX", "Work"):
            self.assert_same(folder)
            self.assert_no_duplicates(folder)
        p = self.sync(cfg)
        self.assertIn("a: \u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.assertEqual(len(self.server(self.NEW)), 1)


# ---- the UIDs of uploads, looked up with a FETCH that ends NO ---------------------------

class UploadLookupRefused(unittest.TestCase):
    CAPS = fakeimap.FALLBACK_CAPS.replace(" UIDPLUS", "")  # no APPENDUID

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-review-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.maildir = os.path.join(self.tmp, "Mail")
        self.box = Mailbox()
        self.box.add(message("server", 1), ["\\Seen"])

    def sync(self, *flags, hook=None):
        p, srv = mailsync_sync(self.tmp, mailbox_script(self.box, self.CAPS, hook), *flags)
        self.assertEqual(srv.errors, [], p.stderr[-3000:])
        return p, srv.conns[0].commands

    def test_partial_uid_lookup_records_nothing(self):
        """Two messages delivered locally are uploaded to a server without
        UIDPLUS; the client then asks for the new messages' Message-IDs
        (UID FETCH 2:*), and the server sends the first of the two and
        then NO [SERVERBUG]. The run fails (exit 1, the server's words on
        stderr), and neither upload is recorded from the partial answer:
        the next run looks up both by Message-ID (UID SEARCH HEADER
        Message-ID) and settles them, exit 0, every message once on the
        server and once locally, nothing uploaded again."""
        p, _ = self.sync()
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        inbox = os.path.join(self.maildir, "INBOX")
        uploads = [message("up", 1), message("up", 2)]
        for i, body in enumerate(uploads):
            with open(os.path.join(inbox, "new", "170000000%d.M1P1.client" % i), "wb") as f:
                f.write(body)
        fired = []

        def hook(c, tag, kind, responses):
            # The lookup after the uploads (the listing of new mail before
            # them may ask for Message-IDs too, to pair moves).
            appended = any(" APPEND " in x.upper() for x in c.commands[:-1])
            if kind == "fetch" and "MESSAGE-ID" in c.commands[-1].upper() and appended and \
                    not fired:
                fired.append(len(responses))
                c.send(responses[0])
                c.send("%s NO [SERVERBUG] lookup failed half-way\r\n" % tag)
                return False
            return None

        p, _ = self.sync(hook=hook)
        out = "stdout:\n%s\nstderr:\n%s" % (p.stdout, p.stderr[-3000:])
        self.assertEqual(fired, [2], "the lookup of both uploads was never sent\n" + out)
        self.assertEqual(p.returncode, 1, out)
        self.assertIn("error: a: INBOX: UID FETCH: [SERVERBUG] lookup failed half-way", p.stderr)
        self.assertEqual(len(self.box.messages), 3)
        # Both rows are still intents: each is looked up by its Message-ID.
        p, commands = self.sync()
        out = "stdout:\n%s\nstderr:\n%s" % (p.stdout, p.stderr[-3000:])
        self.assertEqual(p.returncode, 0, out)
        searches = sorted(c.split(" ", 1)[1] for c in commands if " UID SEARCH " in c)
        self.assertEqual(searches, ['UID SEARCH HEADER Message-ID "<up-1@example.org>"',
                                    'UID SEARCH HEADER Message-ID "<up-2@example.org>"'], out)
        self.assertFalse([c for c in commands if " APPEND " in c], out)
        self.assertEqual(len(self.box.messages), 3)
        assert_same_as_box(self, self.maildir, "INBOX", self.box)
        # Settled: nothing left to look up or to upload.
        p, commands = self.sync()
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        self.assertIn("a: \u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.assertFalse([c for c in commands if " UID SEARCH " in c or " APPEND " in c])
        assert_same_as_box(self, self.maildir, "INBOX", self.box)


# ---- QRESYNC: the old folder's data before [CLOSED] ------------------------------------

# What a server may still say about A, the folder selected before, while it
# answers SELECT B: UIDs that B has too.
OLD_FOLDER_DATA = b"* VANISHED 1:3\r\n* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (99))\r\n"


class QresyncClosed(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-review-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.maildir = os.path.join(self.tmp, "Mail")
        self.boxes = {"A": Mailbox(uidvalidity=11), "B": Mailbox(uidvalidity=12)}
        for name, box in self.boxes.items():
            for i in range(5):
                box.add(message(name, i), ["\\Seen"] if i % 2 else [])

    def sync(self, hook=None):
        # One connection: A and B are selected one after the other on it.
        p, srv = mailsync_sync(self.tmp, mailbox_script(self.boxes, fakeimap.QRESYNC_CAPS, hook),
                               max_connections=1)
        self.assertEqual(srv.errors, [], p.stderr[-3000:])
        self.assertEqual(len(srv.conns), 1)
        return p, srv.conns[0].commands

    def check(self, closed):
        """Syncs A and B, changes B's UID 4 on the server (\\Answered), then
        syncs with OLD_FOLDER_DATA sent at the start of the answer to SELECT
        B, followed by [CLOSED] when closed. Returns the commands after
        SELECT B."""
        p, _ = self.sync()
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        self.boxes["B"].set_flags(4, ["\\Answered"])
        # A's HIGHESTMODSEQ moves too (nothing else): STATUS then says it
        # changed, so A is selected before B, as the test needs.
        self.boxes["A"].modseq += 1
        fired = []

        def hook(c, tag, kind, responses):
            if kind == "closed":
                fired.append((c.folder, c.commands[-1].split(" ", 2)[2]))
                c.send(OLD_FOLDER_DATA + (responses[0] if closed else b""))
                return False
            return None

        p, commands = self.sync(hook)
        out = "stdout:\n%s\nstderr:\n%s" % (p.stdout, p.stderr[-3000:])
        self.assertEqual(fired, [("A", "B (QRESYNC (12 6))")], out)
        self.assertEqual(p.returncode, 0, out)
        self.assertIn("a: \u2193 0 new, 1 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        for name, box in self.boxes.items():
            self.assertEqual([(m.uid, m.flags) for m in box.messages],
                             [(u, ["\\Seen"] if u % 2 == 0 else []) for u in range(1, 6)]
                             if name == "A" else
                             [(1, []), (2, ["\\Seen"]), (3, []), (4, ["\\Answered"]), (5, [])])
            assert_same_as_box(self, self.maildir, name, box)
        after = commands[[i for i, c in enumerate(commands) if " SELECT B " in c][0] + 1:]
        p, _ = self.sync()
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        self.assertIn("a: \u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        for name, box in self.boxes.items():
            assert_same_as_box(self, self.maildir, name, box)
        return after

    def test_old_folder_data_before_closed_is_dropped(self):
        """A compliant server: A's VANISHED and FETCH come before [CLOSED].
        B keeps all five messages and its flags (UID 2 not \\Flagged), B's
        own change that follows [CLOSED] (UID 4 \\Answered) arrives, exit 0;
        B's changes are taken from the SELECT (no CHANGEDSINCE, no search)."""
        after = self.check(closed=True)
        self.assertFalse([c for c in after if "CHANGEDSINCE" in c or " UID SEARCH " in c], after)

    def test_no_closed_lists_changes_the_condstore_way(self):
        """A server that sends no [CLOSED]: A's data and B's own come with
        the SELECT and cannot be told apart, so all of it is dropped and
        B's changes are listed with UID FETCH 1:* (CHANGEDSINCE 6) and
        expunges found with UID SEARCH UID 1:5. Still no loss in B, and
        B's change (UID 4 \\Answered) arrives, exit 0."""
        after = self.check(closed=False)
        self.assertTrue([c for c in after
                         if re.search(r" UID FETCH 1:\* \(UID FLAGS\) \(CHANGEDSINCE 6\)$", c)],
                        after)
        self.assertTrue([c for c in after if c.endswith(" UID SEARCH UID 1:5")], after)


if __name__ == "__main__":
    mstest.main()
