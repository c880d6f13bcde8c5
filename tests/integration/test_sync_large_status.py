#!/usr/bin/env python3
"""Large folders without CONDSTORE are not asked STATUS (issue 13), against
a real Dovecot under the three capability profiles of synctest.PROFILES.

Without CONDSTORE a folder that held messages at its last sync is selected
whatever its STATUS says (only an empty folder can be known unchanged from
STATUS alone), and Dovecot's STATUS of a large Maildir folder costs as much
as the SELECT that follows: it opens the folder for either. So a folder
whose last sync saw at least 10,000 messages (STATUS_SKIP_MIN) is not asked
STATUS there; the small folders still are. With CONDSTORE the STATUS (or
LIST-STATUS) is what lets a quiet folder go without a SELECT, so it is
always asked.

What is proven, on a folder "Lists" of 10,000 messages written straight
into Dovecot's Maildir, next to a small folder "Archive":
- without CONDSTORE no STATUS of Lists is sent (Archive's is), with
  CONDSTORE Lists' figures are asked as before;
- another client's flag change, expunges and new message in Lists, and a
  local flag change there, all reach the other side;
- messages another client moved from Lists to Archive are carried out as
  moves (no body downloaded, the same files): a folder not asked STATUS
  may have lost messages, so it is synced before the folders STATUS says
  lost none, although Archive comes first by name."""

import os
import re
import unittest

import dovecot
import mstest
from synctest import PROFILES, SyncFixture, letters

BIG = 10000  # sync/engine.c STATUS_SKIP_MIN
NOTHING = "\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted"


def msg(i):
    """A message (LF line ends, as in a Maildir file) with a unique
    Message-ID and its number in the subject."""
    return (b"From: a@example.org\nTo: b@example.org\nSubject: big %d\n"
            b"Date: Mon, 2 Jan 2023 10:%02d:00 +0000\nMessage-ID: <big-%d@example.org>\n"
            b"\nbody of message %d\n" % (i, i % 60, i, i))


class LargeStatusScenarios(SyncFixture):
    condstore = True

    def seed_big(self, folder, n):
        """Writes n messages into the server's Maildir of folder (created
        over IMAP first), every third one \\Seen; Dovecot gives them UIDs
        when the folder is next opened."""
        self.dovecot.create_folder(self.user, folder)
        fdir = os.path.join(self.dovecot.home(self.user), "Maildir", "." + folder)
        d = os.path.join(fdir, "cur")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(fdir, sub), exist_ok=True)
            if self.dovecot.is_root:
                os.lchown(os.path.join(fdir, sub), dovecot.MAIL_UID, dovecot.MAIL_UID)
        for i in range(n):
            path = os.path.join(d, "%d.M%dP7.seed:2,%s" % (1700000000 + i, i, "S" if i % 3 == 0 else ""))
            with open(path, "wb") as f:
                f.write(msg(i))
            if self.dovecot.is_root:
                os.lchown(path, dovecot.MAIL_UID, dovecot.MAIL_UID)

    def setup_account(self):
        self.seed_big("Lists", BIG)
        self.dovecot.save_many(self.user, "Archive", [msg(BIG + 1), msg(BIG + 2)])
        cfg = self.config()
        p = self.sync(cfg)
        self.assertIn("\u2193 %d new" % (BIG + 2), p.stdout)
        return cfg

    def status_sent(self, stderr, folder):
        return re.findall(r"C: \S+ STATUS %s \(([^)]*)\)" % folder, stderr)

    def numbers(self, folder):
        """{message number: (unique name, flag letters)} of the Maildir."""
        out = {}
        for u, fl, b in self.local(folder):
            out[int(re.search(rb"Subject: big (\d+)", b).group(1))] = (u, fl)
        return out

    def server_uids(self, folder):
        """{message number: uid} on the server (headers only)."""
        c = self.imap()
        try:
            c.select(dovecot.imap_mailbox(folder), readonly=True)
            typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            self.assertEqual(typ, "OK")
            out = {}
            for item in data:
                if isinstance(item, tuple):
                    uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                    out[int(re.search(rb"big (\d+)", item[1]).group(1))] = uid
            return out
        finally:
            c.logout()

    def check_status_asked(self, stderr):
        asked = self.status_sent(stderr, "Lists")
        if self.condstore:
            # LIST-STATUS (Qresync) or STATUS with HIGHESTMODSEQ (Condstore).
            self.assertTrue(asked == [] and re.search(r"C: \S+ LIST .*RETURN \(.*STATUS", stderr)
                            or any("HIGHESTMODSEQ" in a for a in asked), asked)
            self.assertNotIn("no STATUS asked", stderr)
        else:
            self.assertEqual(asked, [])
            self.assertIn("Lists: no STATUS asked (no CONDSTORE, %d messages at the last sync)"
                          % BIG, stderr)
            self.assertEqual(self.status_sent(stderr, "Archive"), ["MESSAGES UIDNEXT UIDVALIDITY"])

    def test_changes_both_ways_in_a_large_folder(self):
        """A flag set, two expunges and a new message from another client,
        and a local flag change, in the 10,000-message folder: all applied,
        both sides the same, a second run quiet."""
        cfg = self.setup_account()
        self.assert_same("Lists")
        uids = self.server_uids("Lists")
        self.store("Lists", uids[5], "+FLAGS", "\\Flagged")
        self.expunge("Lists", [uids[7], uids[9000]])
        self.dovecot.save(self.user, "Lists", msg(BIG + 3).replace(b"\n", b"\r\n"))
        local = self.numbers("Lists")
        self.set_local_flags("Lists", local[11][0], "RS")
        p = self.sync(cfg, trace=True)
        self.check_status_asked(p.stderr)
        self.assertIn("\u2193 1 new, 1 flags, 2 deleted; \u2191 0 new, 1 flags, 0 deleted",
                      p.stdout)
        self.assert_same("Lists")
        after = self.numbers("Lists")
        self.assertEqual(after[5][1], "F")
        self.assertNotIn(7, after)
        self.assertNotIn(9000, after)
        self.assertIn(BIG + 3, after)
        self.assertEqual(len(after), BIG - 1)
        srv = {u: letters(f) for u, f, _b in self.server("Lists")}
        self.assertEqual(srv[uids[11]], "RS")
        self.assertIn(NOTHING, self.sync(cfg).stdout)

    def test_moves_out_of_a_large_folder(self):
        """Five messages another client moved Lists -> Archive: carried out
        as moves (no body downloaded, the same unique names, flags kept),
        although Archive comes first by name and STATUS was not asked of
        Lists without CONDSTORE."""
        cfg = self.setup_account()
        uids = self.server_uids("Lists")
        moved = [0, 1, 2, 3, 4]
        before = self.numbers("Lists")
        c = self.imap()
        try:
            c.select(dovecot.imap_mailbox("Lists"))
            typ, data = c.uid("MOVE", ",".join(str(uids[i]) for i in moved),
                              dovecot.imap_mailbox("Archive"))
            self.assertEqual(typ, "OK", data)
        finally:
            c.logout()
        p = self.sync(cfg, trace=True)
        self.check_status_asked(p.stderr)
        body = re.search(r"C: \S+ UID FETCH \S+ \([^)]*BODY\.PEEK\[\][^\n]*", p.stderr)
        self.assertIsNone(body, "a body was downloaded: %s" % (body and body.group(0)))
        self.assertIn("5 moved between folders", p.stdout)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted", p.stdout)
        arch = self.numbers("Archive")
        self.assertEqual(sorted(arch), moved + [BIG + 1, BIG + 2])
        self.assertEqual([arch[i] for i in moved], [before[i] for i in moved])
        self.assertFalse(set(moved) & set(self.numbers("Lists")))
        self.assert_same("Archive")
        self.assert_no_duplicates("Archive")
        self.assertIn(NOTHING, self.sync(cfg).stdout)


class LargeStatusQresync(LargeStatusScenarios, mstest.DovecotTestCase):
    dovecot_options = PROFILES["Qresync"]


class LargeStatusCondstore(LargeStatusScenarios, mstest.DovecotTestCase):
    dovecot_options = PROFILES["Condstore"]


class LargeStatusFallback(LargeStatusScenarios, mstest.DovecotTestCase):
    dovecot_options = PROFILES["Fallback"]
    condstore = False


if __name__ == "__main__":
    mstest.main()
