#!/usr/bin/env python3
"""POP3: a Maildir whose cur/ and new/ are as the last scan left them is not
read again, and every change to it is still seen (issue 13)."""
import hashlib
import os
import shutil
import time
import unittest

import mstest
from fakepop import FakePop
from test_pop3 import FakePopFixture, inbox, local_bodies, popcli, wire_to_local

SKIPPED = "the Maildir is as the last scan left it: not reading it"
SETTLE = 2.2  # STAMP_SETTLE_SECS and a little


class Pop3Stamp(FakePopFixture, unittest.TestCase):
    def settled(self, cfg):
        """Waits until cur/ and new/ are old enough to be recorded, runs
        once (which scans and records them) and checks the next run skips
        the scan."""
        time.sleep(SETTLE)
        p = popcli(cfg, "p", "-v")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn(SKIPPED, p.stderr)
        p = popcli(cfg, "p", "-v")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(SKIPPED, p.stderr)
        return p

    def test_unchanged_maildir_is_not_read_and_changes_are_seen(self):
        """Once recorded, an unchanged Maildir is not read; a file deleted,
        one moved from new/ to cur/ (a mail client reading it) and one
        renamed with a flag are all seen by the next run, within the same
        second as the change."""
        msgs = self.msgs(4, 41)
        with FakePop(msgs, uidls=["a1", "a2", "a3", "a4"]) as srv:
            cfg = self.config(srv, pop={"keep_on_server": True, "delete_when_deleted_locally": True})
            self.assertEqual(popcli(cfg).stats["downloaded"], 4)
            p = self.settled(cfg)
            self.assertEqual(p.stats["known"], 4)
            self.assertEqual(p.stats["deleted_on_server"], 0)
            new = os.path.join(inbox(self.maildir), "new")
            cur = os.path.join(inbox(self.maildir), "cur")
            names = sorted(os.listdir(new))
            os.rename(os.path.join(new, names[0]), os.path.join(cur, names[0] + ":2,S"))
            os.unlink(os.path.join(new, names[1]))
            p = popcli(cfg, "p", "-v")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertNotIn(SKIPPED, p.stderr)
            self.assertEqual(p.stats["deleted_locally"], 1, p.stdout)
            self.assertEqual(p.stats["deleted_on_server"], 1, p.stdout)
            self.assertEqual(len(srv.messages), 3)
            # The run after the settled one again skips the scan, and
            # deletes nothing more.
            p = self.settled(cfg)
            self.assertEqual(p.stats["deleted_on_server"], 0)
            self.assertEqual(len(srv.messages), 3)
            self.assertEqual(sum(local_bodies(self.maildir).values()), 3)

    def test_interrupted_download_reads_the_maildir(self):
        """An intent row left by a crash is checked against the Maildir even
        when the directories are unchanged: its message is downloaded when
        its file is missing, adopted when it is there."""
        a, b = self.msgs(2, 42)
        with FakePop([a], uidls=["a"]) as srv:
            cfg = self.config(srv)
            self.assertEqual(popcli(cfg).stats["downloaded"], 1)
            # A file stored just before a crash, then the directories settle.
            local = wire_to_local(b)
            lid = "1700000000.P9Q9.host"
            with open(os.path.join(inbox(self.maildir), "new", lid), "wb") as f:
                f.write(local)
            self.settled(cfg)
            srv.messages = [a, b, b]
            srv.uidls = ["a", "b", "c"]
            hh = hashlib.sha256(local[:local.index(b"\n\n") + 1]).hexdigest()[:32]
            p = popcli(cfg, "p", "-v", "-I", "b=%s:%d:%s" % (lid, len(b), hh))
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("an interrupted download is recorded: reading the Maildir", p.stderr)
            self.assertEqual(p.stats["adopted"], 1, p.stdout)
            self.assertEqual(p.stats["downloaded"], 1, p.stdout)  # "c"
        with FakePop([a, b], uidls=["a", "x"]) as srv:
            cfg = self.config(srv)
            self.settled(cfg)
            # An intent whose file never made it: downloaded, not adopted.
            p = popcli(cfg, "p", "-v", "-I", "x=1700000001.P9Q9.host")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("an interrupted download is recorded: reading the Maildir", p.stderr)
            self.assertEqual(p.stats["adopted"], 0, p.stdout)
            self.assertEqual(p.stats["downloaded"], 1, p.stdout)
            self.assertEqual(local_bodies(self.maildir)[wire_to_local(b)], 3)

    def test_replaced_maildir_is_read(self):
        """A Maildir moved away and replaced by an empty one (same path) is
        read, and the mass-deletion guard still stops the run."""
        msgs = self.msgs(5, 43)
        with FakePop(msgs, uidls=["b1", "b2", "b3", "b4", "b5"]) as srv:
            cfg = self.config(srv, pop={"keep_on_server": True, "delete_when_deleted_locally": True})
            self.assertEqual(popcli(cfg).stats["downloaded"], 5)
            self.settled(cfg)
            shutil.move(self.maildir, self.maildir + ".old")
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(inbox(self.maildir), sub))
            time.sleep(SETTLE)
            p = popcli(cfg, "p", "-v")
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertNotIn(SKIPPED, p.stderr)
            self.assertIn("are gone from", p.stderr)
            self.assertEqual(len(srv.messages), 5)


if __name__ == "__main__":
    mstest.main()
