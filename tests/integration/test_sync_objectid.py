#!/usr/bin/env python3
"""Folder renames on the server decided by RFC 8474's MAILBOXID (OBJECTID),
against a scripted server (Dovecot 2.3 has no OBJECTID): the server offers
OBJECTID, LIST-STATUS answers each folder's MAILBOXID and every SELECT says
it in a [MAILBOXID (id)] response code.

What is proven: a folder renamed on the server (same MAILBOXID under a new
name) is renamed here in one step without the UIDVALIDITY check (no
EXAMINE, no body downloaded) even beside a decoy folder that UIDVALIDITY
alone could not tell from it; the index follows (the next run is quiet);
and a folder that has the UIDVALIDITY, UIDNEXT and the very messages of
the vanished one but another MAILBOXID is not taken for it (MAILBOXID is
authoritative: it is a new folder, and the old one is kept by the guard)."""

import os
import re
import shutil
import tempfile
import unittest

import mailgen
import mstest
from fakeimap import QRESYNC_CAPS, Mailbox, fetch_kind, mailbox_script, mailsync_sync

CAPS = QRESYNC_CAPS + " LIST-EXTENDED LIST-STATUS OBJECTID"


def bodies_of(box):
    return sorted(mstest.crlf_to_lf(m.body) for m in box.messages)


class ObjectIdRenames(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-objectid-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        inbox = Mailbox(uidvalidity=100, mailboxid="M-inbox")
        inbox.add(mailgen.message(seed=1, index=0, size=800))
        old = Mailbox(uidvalidity=200, mailboxid="M-archive_1")
        for i in range(4):
            old.add(mailgen.message(seed=2, index=i, size=1200), flags=["\\Seen"] if i % 2 else [])
        self.boxes = {"INBOX": inbox, "Archive": old}

    def sync(self, *flags, caps=CAPS):
        """One `mailsync -v sync a` against the boxes; returns the process
        and every command line the server saw."""
        p, srv = mailsync_sync(self.tmp, mailbox_script(self.boxes, caps=caps), "-v", *flags)
        self.assertEqual(srv.errors, [])
        return p, [line for c in srv.conns for line in c.commands]

    def local(self, folder):
        """The message files of a local folder: {unique name: body}."""
        d = os.path.join(self.tmp, "Mail", folder)
        out = {}
        for sub in ("cur", "new"):
            for name in os.listdir(os.path.join(d, sub)):
                with open(os.path.join(d, sub, name), "rb") as f:
                    out[name.split(":2,")[0]] = f.read()
        return out

    @staticmethod
    def bodies_fetched(cmds):
        return [c for c in cmds if re.search(r" UID FETCH ", c) and
                fetch_kind(c.split(" UID FETCH ", 1)[1]) == "body"]

    def first_sync(self, caps=CAPS):
        p, cmds = self.sync(caps=caps)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        lists = [c for c in cmds if " LIST " in c and "RETURN" in c]
        self.assertTrue(lists and all(("MAILBOXID" in c) == ("OBJECTID" in caps) for c in lists),
                        lists)
        self.assertEqual(len(self.bodies_fetched(cmds)), 2)  # one per folder
        before = self.local("Archive")
        self.assertEqual(sorted(before.values()), bodies_of(self.boxes["Archive"]))
        return before

    def rename_beside_decoy(self, old, new, decoy, before):
        """The server renames old to new (UIDs, UIDVALIDITY and MAILBOXID
        kept, as RFC 8474 says) and gains a folder decoy with the same
        UIDVALIDITY and UIDNEXT and another MAILBOXID; the run must rename
        the local directory by the MAILBOXID alone: nothing downloaded,
        nothing EXAMINEd (the UIDVALIDITY rule would have to check the
        candidates on the server), exit 0, the decoy a new empty folder."""
        arch = self.boxes.pop(old)
        self.boxes[new] = arch
        d = Mailbox(uidvalidity=arch.uidvalidity, mailboxid="M-" + decoy)
        d.uidnext = arch.uidnext
        self.boxes[decoy] = d
        p, cmds = self.sync()
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("folder %s was renamed on the server: renamed to %s here too" % (old, new),
                      p.stdout)
        self.assertEqual(self.bodies_fetched(cmds), [])
        self.assertEqual([c for c in cmds if " EXAMINE " in c], [])
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "Mail", old)))
        self.assertEqual(self.local(new), before)
        self.assertEqual(self.local(decoy), {})

    def assert_quiet(self):
        p, cmds = self.sync()
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("renamed", p.stdout)
        self.assertEqual(self.bodies_fetched(cmds), [])
        self.assertEqual([c for c in cmds if re.search(r" (APPEND|EXAMINE|RENAME) ", c)], [])

    def test_same_mailboxid_is_a_rename_without_the_uidvalidity_check(self):
        """Archive renamed to Archive2023 on the server beside a decoy (see
        rename_beside_decoy): renamed here by the MAILBOXID; the next run
        is quiet; and the index moved the MAILBOXID with the folder: a
        second rename (Archive2023 to Archive2024, beside another decoy)
        is found by it too."""
        before = self.first_sync()
        self.rename_beside_decoy("Archive", "Archive2023", "Decoy", before)
        self.assert_quiet()
        self.assertEqual(self.local("Archive2023"), before)
        self.rename_beside_decoy("Archive2023", "Archive2024", "Decoy2", before)
        self.assert_quiet()

    def test_mailboxid_recorded_for_a_folder_synced_without_it(self):
        """A first sync while the server offered no OBJECTID records no
        MAILBOXID (nothing asked for it); a quiet run once it does (the
        SELECT is skipped, nothing changed) takes it from LIST-STATUS, as
        the folder's UIDVALIDITY is the one the index knows; a rename after
        that is found by the MAILBOXID alone."""
        ids = {name: box.mailboxid for name, box in self.boxes.items()}
        for box in self.boxes.values():
            box.mailboxid = None
        before = self.first_sync(caps=QRESYNC_CAPS + " LIST-EXTENDED LIST-STATUS")
        for name, box in self.boxes.items():
            box.mailboxid = ids[name]
        p, cmds = self.sync()
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual([c for c in cmds if re.search(r" (SELECT|EXAMINE) ", c)], [])
        self.rename_beside_decoy("Archive", "Archive2023", "Decoy", before)

    def test_other_mailboxid_is_not_a_rename_whatever_else_matches(self):
        """Archive deleted on the server and Archive2023 created with the
        same UIDVALIDITY, UIDNEXT and messages (all the UIDVALIDITY rule and
        its check on the server look at) but another MAILBOXID: not a
        rename. Archive2023 is downloaded as a new folder, the local
        Archive is kept and the guard names it (exit 1)."""
        before = self.first_sync()
        arch = self.boxes.pop("Archive")
        arch.mailboxid = "M-other"
        self.boxes["Archive2023"] = arch

        p, cmds = self.sync()
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertNotIn("renamed", p.stdout)
        self.assertIn("Archive", p.stdout + p.stderr)
        self.assertEqual(len(self.bodies_fetched(cmds)), 1)  # Archive2023's, as a new folder
        self.assertEqual(self.local("Archive"), before)
        self.assertEqual(sorted(self.local("Archive2023").values()), sorted(before.values()))


def no_msgid_message(i):
    """A message without a Message-ID header (Message-ID pairing cannot
    find it; EMAILID can)."""
    return (b"From: a@example.org\nTo: b@example.org\nSubject: no id %d\n"
            b"Date: Mon, 2 Jan 2023 10:00:00 +0000\n\nbody %d\n" % (i, i))


class ObjectIdMoves(unittest.TestCase):
    """Messages moved on the server by another client, paired by RFC 8474's
    EMAILID where the server offers OBJECTID: it names the message and
    stays across a MOVE, so a message without a Message-ID is paired too,
    and it decides over a matching Message-ID and size."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-objectid-moves-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        inbox = Mailbox(uidvalidity=100, mailboxid="M-inbox")
        self.bodies = [no_msgid_message(0), no_msgid_message(1),
                       mailgen.message(seed=3, index=2, size=900),
                       mailgen.message(seed=3, index=3, size=900)]
        for i, b in enumerate(self.bodies):
            inbox.add(b, flags=["\\Seen"] if i % 2 else [], emailid="E%d" % i)
        self.boxes = {"INBOX": inbox, "Work": Mailbox(uidvalidity=300, mailboxid="M-work")}

    sync = ObjectIdRenames.sync
    local = ObjectIdRenames.local
    bodies_fetched = staticmethod(ObjectIdRenames.bodies_fetched)

    def move(self, index, emailid=None):
        """Another client's UID MOVE INBOX -> Work of message index (its
        EMAILID kept, or replaced by emailid: then it is another message
        as far as the server is concerned)."""
        inbox = self.boxes["INBOX"]
        m = [x for x in inbox.messages if x.emailid == "E%d" % index][0]
        inbox.expunge([m])
        self.boxes["Work"].add(m.body, flags=m.flags, emailid=emailid or m.emailid)

    def test_moves_paired_by_emailid(self):
        """Messages 0 (no Message-ID) and 2 moved INBOX -> Work: the files
        move into Work's Maildir under their unique names, no body is
        fetched, nothing is counted as new or deleted, and every listing
        of new mail asked for EMAILID. Message 3 moved too but came out
        with another EMAILID (a copy as far as the server says): EMAILID
        decides, so it is downloaded and its old file deleted, although
        its Message-ID and size match."""
        p, cmds = self.sync()
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        before = self.local("INBOX")
        names = {body: name for name, body in before.items()}
        self.move(0)
        self.move(2)
        self.move(3, emailid="E3-copy")
        p, cmds = self.sync()
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        fetched = self.bodies_fetched(cmds)
        self.assertEqual(len(fetched), 1, cmds)
        self.assertIn("2 moved between folders", p.stdout)
        self.assertIn("\u2193 1 new, 0 flags, 1 deleted", p.stdout)
        work = self.local("Work")
        def lf(b):
            return b.replace(b"\r\n", b"\n")
        for i in (0, 2):
            self.assertEqual(work[names[lf(self.bodies[i])]], lf(self.bodies[i]))
        self.assertEqual(sorted(work.values()), bodies_of(self.boxes["Work"]))
        self.assertEqual(sorted(self.local("INBOX").values()), bodies_of(self.boxes["INBOX"]))
        self.assertTrue(all("EMAILID" in c for c in cmds if " UID FETCH " in c and
                            "RFC822.SIZE" in c), cmds)
        p, cmds = self.sync()
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)


if __name__ == "__main__":
    mstest.main()
