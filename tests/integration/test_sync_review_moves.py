#!/usr/bin/env python3
"""Review of 5a1f0c1 (STATUS without LIST-STATUS, sources of server moves
first, demand jobs on the next loop turn) and 0f002da (a message moved out
of a folder and back keeps its file; --dry-run pairs server moves), against
a real Dovecot under the three capability profiles of synctest.PROFILES.

- An orphan parked by a run that was killed after the folder's state (its
  HIGHESTMODSEQ) was written, then moved back into its folder by another
  client: the clean run must find it as "back on the server" (file kept,
  nothing downloaded, nothing deleted or uploaded twice). With QRESYNC the
  old UID is not in the SELECT's VANISHED (it vanished before the stored
  HIGHESTMODSEQ), and the orphan row must still count as lost.
- --dry-run of a server move whose message carries a keyword the
  destination's Maildir has no letter for yet: the real run gives it a
  letter and moves the file; the dry run must count it as the real run
  does (moved, not new + deleted).
- (fake server) A server without LIST-STATUS that lists a folder STATUS
  cannot name (a NIL-delimiter folder whose name holds the account's
  delimiter): the STATUS is refused locally, not by a dead connection, and
  the run must still end (the folder failing, as its SELECT did before),
  not wait forever."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

import dovecot
import fakeimap
import mstest
from synctest import PROFILES

import test_sync_moves as moves

BODY_FETCH = re.compile(r"C: \S+ UID FETCH \S+ \([^)]*BODY\.PEEK\[\]")
QUIET = "a: \u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted"


def summary(out):
    """The account's summary line without the dry run's suffix."""
    return re.search(r"(?m)^(a: .*?)(?: \(dry run: nothing changed\))?$", out).group(1)


class ReviewScenarios(moves.MoveFixture):

    server_move = moves.ServerMoveScenarios.server_move

    def test_killed_orphan_moved_back_after_state_saved(self):
        """INBOX loses five messages to Work (another client's UID MOVE),
        one of them flagged here. The run parks them in INBOX, then syncs
        Mid (a new message there: its download intent commits INBOX's
        deferred state with the new HIGHESTMODSEQ) and is killed at Work's
        SELECT. The other client moves the five back into INBOX (new UIDs).
        The clean run keeps each of the five once, in INBOX, in the file it
        had: no body downloaded, nothing deleted, nothing uploaded; the
        flag given here reaches the server; a third run has nothing to do."""
        cfg = self.cfg = self.seed({"INBOX": [(i, "") for i in range(8)],
                                    "Mid": [(200, "")], "Work": [(100, "")]})
        moved = [0, 1, 2, 3, 4]
        uniq = self.uniques("INBOX", moved)
        self.set_local_flags("INBOX", uniq[1], "F")
        self.server_move("INBOX", "Work", moved)
        self.dovecot.save(self.user, "Mid", moves.msg(201))
        killed, trace = moves.run_killed(mstest.mailsync_bin(), cfg,
                                         r"imap a\S*: C: \S+ SELECT Work\b", 0.0)
        self.assertTrue(killed, trace[-3000:])
        self.assertRegex(trace, r"gone from the server kept locally for now")
        self.assertIn("SELECT Mid", trace)  # Mid's records went in before the kill
        self.server_move("Work", "INBOX", moved)
        p = self.sync(cfg, trace=True)
        ctx = p.stdout + p.stderr[-5000:]
        self.assertIsNone(BODY_FETCH.search(p.stderr), ctx)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 1 flags, 0 deleted",
                      p.stdout, ctx)
        for f in ("INBOX", "Work", "Mid"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        loc = self.local_numbers("INBOX")
        self.assertEqual([loc[i][0] for i in moved], uniq, ctx)
        self.assertEqual(self.server_flags("INBOX"),
                         {0: "", 1: "F", 2: "", 3: "", 4: "", 5: "", 6: "", 7: ""})
        p = self.sync(cfg)
        self.assertEqual(p.stdout.strip(), QUIET, p.stdout + p.stderr[-3000:])
        for f in ("INBOX", "Work"):
            self.assert_same(f)
            self.assert_no_duplicates(f)

    def test_dry_run_counts_server_move_with_new_keyword(self):
        """Another client moves a message INBOX -> Work and gives it a
        keyword Work's Maildir has no letter for yet. The real run assigns
        the letter first and moves the file (1 moved, nothing downloaded);
        the dry run, which assigns no letter, must still say and count the
        same (it said "download" and "delete local": 1 new, 1 deleted)."""
        cfg = self.seed({"INBOX": [(i, "") for i in range(4)], "Work": [(100, "")]})
        u = self.uniques("INBOX", [0])[0]
        self.server_move("INBOX", "Work", [0])
        wuid = [x for x, _f, b in self.server("Work") if b"move 0\r\n" in b][0]
        self.store("Work", wuid, "+FLAGS", "$Review")
        dry = self.sync(cfg, "--dry-run")
        real = self.sync(cfg, trace=True)
        self.assertIsNone(BODY_FETCH.search(real.stderr), real.stderr[-3000:])
        self.assertIn("1 moved between folders", real.stdout)
        self.assertEqual(self.local_numbers("Work")[0][0], u)
        self.assertRegex(dry.stdout, r"(?m)^Work: move local %s here from INBOX " % re.escape(u))
        self.assertEqual(summary(dry.stdout), summary(real.stdout),
                         "dry run:\n" + dry.stdout + "\nreal run:\n" + real.stdout)


class StatusRefusedLocally(unittest.TestCase):
    """STATUS the client itself refuses to send (statuses_ask)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-review-s20-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    @staticmethod
    def script(c):
        def on_list(c, tag, rest, raw):
            if rest.startswith('"" ""'):
                c.send('* LIST (\\Noselect) "." ""\r\n')  # the account's delimiter: "."
            else:
                c.send('* LIST (\\HasNoChildren) "." INBOX\r\n')
                # A flat folder (NIL delimiter) whose name holds a ".": it
                # is listed as "foo.bar", which no command can name with ".".
                c.send('* LIST (\\HasNoChildren) NIL "foo.bar"\r\n')
            c.ok(tag)

        def on_status(c, tag, rest, raw):
            c.send("* STATUS INBOX (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 7)\r\n")
            c.ok(tag)

        def on_select(c, tag, rest, raw):
            c.send("* 0 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 1] ok\r\n")
            c.send("%s OK [READ-WRITE] selected\r\n" % tag)

        c.caps = fakeimap.FALLBACK_CAPS  # no LIST-STATUS: STATUS is asked
        c.greet()
        c.serve({"LIST": on_list, "STATUS": on_status, "SELECT": on_select})

    def test_status_refused_locally_ends_the_run(self):
        """The run ends within 30 s (it hung: the local refusal was taken
        for a dead connection, whose error path never came), INBOX synced
        and foo.bar reported as failed."""
        with fakeimap.FakeIMAP(self.script) as srv:
            acct = {"host": "127.0.0.1", "port": srv.port, "tls": "implicit",
                    "ca_file": srv.ca_cert, "user": "alice", "password": "pw",
                    "maildir": os.path.join(self.tmp, "Mail")}
            cfg = os.path.join(self.tmp, "config.yaml")
            dovecot.write_mailsync_config(cfg, {"a": acct},
                                          state_dir=os.path.join(self.tmp, "state"))
            try:
                p = mstest.run_mailsync(cfg, "-vv", "sync", "a", timeout=30)
            except subprocess.TimeoutExpired as ex:
                err = ex.stderr.decode("utf-8", "replace") if ex.stderr else ""
                self.fail("mailsync sync hung after STATUS was refused locally:\n"
                          + err[-3000:])
        self.assertRegex(p.stderr, r"C: \S+ STATUS INBOX ")
        self.assertRegex(p.stderr, r"C: \S+ SELECT INBOX\b")  # INBOX is synced
        # foo.bar fails as its SELECT did before STATUS was asked: a folder
        # error (exit 1), said with the reason.
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr[-3000:])
        self.assertIn("foo.bar: SELECT: ", p.stderr)
        self.assertIn("folder name contains the server's hierarchy delimiter", p.stderr)


for _name, _opts in PROFILES.items():
    globals()["Review" + _name] = type("Review" + _name,
                                       (ReviewScenarios, mstest.DovecotTestCase),
                                       {"dovecot_options": _opts})

if __name__ == "__main__":
    mstest.main()
