#!/usr/bin/env python3
"""Messages moved between folders of one account (issue 12), against a real
Dovecot under the three capability profiles of synctest.PROFILES.

A message moved locally (as mutt saves it: the file leaves one folder's
Maildir and appears in another's with the same unique name, flags maybe
changed on the way) is moved on the server with one UID MOVE per
destination: no APPEND, no body sent, the index follows, and flags merge
three-way with changes another client made to the original meanwhile. A
move racing another client's expunge of the original loses nothing. A run
killed (SIGKILL) around its MOVE, then a clean run: nothing lost, nothing
twice on either side. --dry-run lists moves as moves.

Without MOVE the client's COPY + STORE \\Deleted + UID EXPUNGE does the
same; without UIDPLUS (no COPYUID) the message is uploaded and deleted as
before. Both run once: the capability set is their own."""

import os
import re
import subprocess
import sys
import time
import unittest

import dovecot
import mstest
from synctest import PROFILES, SyncFixture

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

NO_MOVE_CAPS = "IMAP4rev1 ID ENABLE IDLE UIDPLUS LITERAL+ SPECIAL-USE CONDSTORE"
NO_UIDPLUS_CAPS = "IMAP4rev1 ID ENABLE IDLE LITERAL+ MOVE SPECIAL-USE"


def msg(i, size=0):
    """A CRLF message with a unique Message-ID (size: body bytes to add)."""
    body = b"body of message %d\r\n" % i + b"x" * size + b"\r\n"
    return (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: move %d\r\n"
            b"Date: Mon, 2 Jan 2023 10:%02d:00 +0000\r\nMessage-ID: <move-%d@example.org>\r\n"
            b"\r\n" % (i, i % 60, i)) + body


def commands(stderr, verb):
    """The client's commands of a -vv trace with this verb ("UID MOVE")."""
    return re.findall(r"C: \S+ (" + verb + r"\b[^\r\n]*)", stderr)


class MoveFixture(SyncFixture):

    def seed(self, folders):
        """folders: {name: [(i, flags)]}; saves them, syncs, returns cfg."""
        for name, items in folders.items():
            self.dovecot.save_many(self.user, name, [msg(i) for i, _ in items],
                                   [fl for _, fl in items])
        cfg = self.config()
        self.sync(cfg)
        for name in folders:
            self.assert_same(name)
        return cfg

    def move_local(self, src, dst, unique, flags=None):
        """Moves a message's file as mutt does: same unique name, into
        dst's cur/ (flags: the new letters, None keeps them)."""
        path = self.local_file(src, unique)
        name = os.path.basename(path)
        if flags is not None:
            name = unique + ":2," + flags
        elif ":2," not in name:
            name = unique + ":2,"
        d = self.folder_dir(dst)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        os.rename(path, os.path.join(d, "cur", name))

    def uniques(self, folder, numbers):
        return [self.unique_of(folder, mstest.crlf_to_lf(msg(i))) for i in numbers]

    def server_flags(self, folder):
        """{message number: flags letters} on the server."""
        from synctest import letters
        out = {}
        for _u, fl, body in self.server(folder):
            m = re.search(rb"Subject: move (\d+)", body)
            out[int(m.group(1))] = letters(fl)
        return out

    def local_numbers(self, folder):
        out = {}
        for u, fl, body in self.local(folder):
            m = re.search(rb"Subject: move (\d+)", body)
            out[int(m.group(1))] = (u, fl)
        return out


class MoveScenarios(MoveFixture):

    def check_local_move(self, src, dst):
        """Ten messages moved src -> dst, three with flags changed on the
        way: one UID MOVE, no APPEND, no body fetched, both sides equal,
        unique names kept, and a second run changes nothing."""
        cfg = self.seed({src: [(i, "\\Seen" if i % 2 else "") for i in range(12)],
                         dst: [(100, "")]})
        moved = list(range(10))
        uniq = self.uniques(src, moved)
        for i, u in zip(moved, uniq):
            if i == 0:
                self.move_local(src, dst, u, "FS")   # flagged on the way
            elif i == 1:
                self.move_local(src, dst, u, "")     # \Seen taken away
            elif i == 2:
                self.move_local(src, dst, u, "RS")   # replied on the way
            else:
                self.move_local(src, dst, u)
        p = self.sync(cfg, trace=True)
        self.assertEqual(len(commands(p.stderr, "UID MOVE")), 1, p.stderr[-3000:])
        self.assertEqual(commands(p.stderr, "APPEND"), [])
        self.assertNotRegex(p.stderr, r"C: \S+ UID FETCH \S+ \([^)]*BODY\.PEEK\[\]")
        self.assertIn("10 moved between folders", p.stdout)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 3 flags, 0 deleted",
                      p.stdout)
        for f in (src, dst):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        srv = self.server_flags(dst)
        self.assertEqual(sorted(srv), sorted(moved + [100]))
        self.assertEqual(srv[0], "FS")
        self.assertEqual(srv[1], "")
        self.assertEqual(srv[2], "RS")
        self.assertEqual(srv[3], "S")
        self.assertEqual(sorted(self.server_flags(src)), [10, 11])
        loc = self.local_numbers(dst)
        self.assertEqual([loc[i][0] for i in moved], uniq)  # the files kept their names
        p = self.sync(cfg, trace=True)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.assertEqual(commands(p.stderr, "UID MOVE"), [])
        for f in (src, dst):
            self.assert_same(f)

    def test_local_move_into_later_folder(self):
        # INBOX is synced before Work: the move is found from INBOX's side.
        self.check_local_move("INBOX", "Work")

    def test_local_move_into_earlier_folder(self):
        # Archive is synced before INBOX: the move is found from Archive's side.
        self.check_local_move("INBOX", "Archive")

    def test_move_into_new_local_folder(self):
        """mutt's save to a folder that does not exist yet: the folder is
        created on the server and the messages moved into it."""
        cfg = self.seed({"INBOX": [(i, "") for i in range(5)]})
        uniq = self.uniques("INBOX", range(3))
        for u in uniq:
            self.move_local("INBOX", "Saved/2023", u)
        p = self.sync(cfg, trace=True)
        self.assertEqual(len(commands(p.stderr, "UID MOVE")), 1, p.stderr[-3000:])
        self.assertEqual(commands(p.stderr, "APPEND"), [])
        for f in ("INBOX", "Saved/2023"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        self.assertEqual(sorted(self.server_flags("Saved/2023")), [0, 1, 2])

    def test_copy_is_not_a_move(self):
        """A file copied (still in the source) is a new message: uploaded."""
        cfg = self.seed({"INBOX": [(1, "")], "Work": []})
        u = self.uniques("INBOX", [1])[0]
        src = self.local_file("INBOX", u)
        d = self.folder_dir("Work")
        with open(src, "rb") as fi, open(os.path.join(d, "new", u), "wb") as fo:
            fo.write(fi.read())
        p = self.sync(cfg, trace=True)
        self.assertEqual(commands(p.stderr, "UID MOVE"), [])
        self.assertEqual(len(commands(p.stderr, "APPEND")), 1)
        for f in ("INBOX", "Work"):
            self.assert_same(f)
        self.assertEqual(sorted(self.server_flags("INBOX")), [1])
        self.assertEqual(sorted(self.server_flags("Work")), [1])

    def test_move_races_flag_change_on_original(self):
        """Moved locally (and flagged \\Flagged on the way) while another
        client marks the original \\Answered: one message, in the new
        folder, on both sides, with both changes."""
        cfg = self.seed({"INBOX": [(1, "\\Seen"), (2, "")], "Work": [(50, "")]})
        u = self.uniques("INBOX", [1])[0]
        self.move_local("INBOX", "Work", u, "FS")
        uid = [x for x, _f, b in self.server("INBOX") if b"move 1\r\n" in b][0]
        self.store("INBOX", uid, "+FLAGS", "\\Answered")
        self.sync(cfg)
        for f in ("INBOX", "Work"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        self.assertEqual(self.server_flags("Work")[1], "FRS")
        self.assertNotIn(1, self.server_flags("INBOX"))

    def test_move_races_expunge_of_original(self):
        """Moved locally while another client expunged the original: the
        message survives in the new folder on both sides (uploaded)."""
        cfg = self.seed({"INBOX": [(1, ""), (2, "")], "Work": [(50, "")]})
        u = self.uniques("INBOX", [1])[0]
        self.move_local("INBOX", "Work", u, "S")
        uid = [x for x, _f, b in self.server("INBOX") if b"move 1\r\n" in b][0]
        self.expunge("INBOX", [uid])
        self.sync(cfg)
        for f in ("INBOX", "Work"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        self.assertEqual(self.server_flags("Work"), {1: "S", 50: ""})
        self.assertEqual(sorted(self.server_flags("INBOX")), [2])
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)

    def test_large_move_is_not_a_mass_deletion(self):
        """26 of 30 messages moved out of INBOX (synced first) into a new
        local folder and into Work: far over max_delete_ratio, but moves,
        not deletions: neither --dry-run nor the real run trips the guard,
        and nothing is deleted or uploaded."""
        cfg = self.seed({"INBOX": [(i, "") for i in range(30)], "Work": [(100, "")]})
        uniq = self.uniques("INBOX", range(26))
        for n, u in enumerate(uniq):
            self.move_local("INBOX", "Work" if n < 13 else "Saved", u)
        p = self.sync(cfg, "--dry-run")
        self.assertNotIn("refusing", p.stdout + p.stderr)
        self.assertNotIn("delete on the server", p.stdout)
        p = self.sync(cfg, trace=True)
        self.assertNotIn("refusing", p.stdout + p.stderr)
        self.assertEqual(commands(p.stderr, "APPEND"), [])
        self.assertIn("26 moved between folders", p.stdout)
        for f in ("INBOX", "Work", "Saved"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        self.assertEqual(sorted(self.server_flags("INBOX")), [26, 27, 28, 29])
        self.assertEqual(sorted(self.server_flags("Saved")), list(range(13, 26)))

    def test_dry_run_lists_moves(self):
        """--dry-run says "move" for each message and neither an upload nor
        a deletion; its counts are the real run's."""
        cfg = self.seed({"INBOX": [(i, "") for i in range(4)], "Work": []})
        uniq = self.uniques("INBOX", [0, 1])
        for u in uniq:
            self.move_local("INBOX", "Work", u)
        p = self.sync(cfg, "--dry-run")
        moves = re.findall(r"^INBOX: move uid \d+ to Work \((\S+) moved locally\)$", p.stdout,
                           re.M)
        self.assertEqual(sorted(moves), sorted(uniq))
        self.assertNotIn("upload", p.stdout)
        self.assertNotIn("delete on the server", p.stdout)
        self.assertIn("2 moved between folders", p.stdout)
        p2 = self.sync(cfg)
        self.assertIn("2 moved between folders", p2.stdout)
        for f in ("INBOX", "Work"):
            self.assert_same(f)


class ServerMoveScenarios(MoveFixture):
    """Messages another client moves on the server (UID MOVE A -> B)."""

    def server_move(self, src, dst, numbers):
        """Moves the messages with these numbers as another client does."""
        uids = [u for u, _f, b in self.server(src)
                if int(re.search(rb"Subject: move (\d+)", b).group(1)) in numbers]
        c = self.imap()
        try:
            c.select(dovecot.imap_mailbox(src))
            typ, _ = c.uid("MOVE", ",".join(map(str, uids)), dovecot.imap_mailbox(dst))
            self.assertEqual(typ, "OK")
        finally:
            c.logout()

    def test_server_move_source_first(self):
        """Ten messages moved INBOX -> Work by another client (INBOX is
        synced first), two of them flagged there on the way and one
        changed locally meanwhile: no body downloaded, the files moved into
        Work's Maildir with their unique names, flags merged, counted as
        moved (not new + deleted), and a second run changes nothing."""
        cfg = self.seed({"INBOX": [(i, "\\Seen" if i % 2 else "") for i in range(12)],
                         "Work": [(100, "")]})
        moved = list(range(10))
        uniq = self.uniques("INBOX", moved)
        self.set_local_flags("INBOX", uniq[4], "F")  # changed here meanwhile
        self.server_move("INBOX", "Work", moved)
        wuids = {int(re.search(rb"Subject: move (\d+)", b).group(1)): u
                 for u, _f, b in self.server("Work")}
        self.store("Work", wuids[0], "+FLAGS", "\\Answered")
        self.store("Work", wuids[4], "+FLAGS", "\\Answered")
        p = self.sync(cfg, trace=True)
        self.assertNotRegex(p.stderr, r"C: \S+ UID FETCH \S+ \([^)]*BODY\.PEEK\[\]")
        self.assertIn("10 moved between folders", p.stdout)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted", p.stdout)
        for f in ("INBOX", "Work"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        loc = self.local_numbers("Work")
        self.assertEqual(sorted(loc), sorted(moved + [100]))
        self.assertEqual([loc[i][0] for i in moved], uniq)
        self.assertEqual(sorted(self.local_numbers("INBOX")), [10, 11])
        srv = self.server_flags("Work")
        self.assertEqual(srv[0], "R")
        self.assertEqual(srv[1], "S")
        self.assertEqual(srv[4], "FR")  # both changes
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)

    def test_server_move_destination_first(self):
        """Moved Work -> Archive by another client: Archive comes before
        Work by name, yet Work (which lost messages, as STATUS tells) is
        synced first, so its messages are parked and Archive's job pairs
        them: no body downloaded, nothing deleted, a second run quiet."""
        cfg = self.seed({"INBOX": [(50, "")], "Archive": [(100, "")],
                         "Work": [(i, "\\Seen" if i % 2 else "") for i in range(6)]})
        moved = [0, 1, 2, 3]
        uniq = self.uniques("Work", moved)
        self.server_move("Work", "Archive", moved)
        p = self.sync(cfg, trace=True)
        self.assertNotRegex(p.stderr, r"C: \S+ UID FETCH \S+ \([^)]*BODY\.PEEK\[\]")
        self.assertIn("4 moved between folders", p.stdout)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted", p.stdout)
        for f in ("Work", "Archive"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        loc = self.local_numbers("Archive")
        self.assertEqual(sorted(loc), moved + [100])
        self.assertEqual([loc[i][0] for i in moved], uniq)
        self.assertEqual(self.server_flags("Archive"), {0: "", 1: "S", 2: "", 3: "S", 100: ""})
        self.assertEqual(sorted(self.local_numbers("Work")), [4, 5])
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)

    def test_dry_run_lists_server_moves(self):
        """--dry-run of messages another client moved (three INBOX -> Work,
        one expunged): it says "move local ... here from INBOX" for each
        moved message and "delete" for the expunged one, counts them as
        the real run then does, and changes nothing (a second dry run says
        the same, the files are still in INBOX)."""
        cfg = self.seed({"INBOX": [(i, "") for i in range(6)], "Work": [(100, "")]})
        uniq = self.uniques("INBOX", [0, 1, 2])
        gone = self.uniques("INBOX", [5])[0]
        self.server_move("INBOX", "Work", [0, 1, 2])
        uid = [x for x, _f, b in self.server("INBOX") if b"move 5\r\n" in b][0]
        self.expunge("INBOX", [uid])
        before = sorted(self.local_numbers("INBOX"))
        dry = [self.sync(cfg, "--dry-run") for _ in range(2)]
        self.assertEqual(dry[0].stdout, dry[1].stdout)
        moves = re.findall(r"^Work: move local (\S+) here from INBOX ", dry[0].stdout, re.M)
        self.assertEqual(sorted(moves), sorted(uniq))
        self.assertRegex(dry[0].stdout, r"(?m)^INBOX: delete local %s \(uid \d+ gone from the "
                         r"server, in no other folder\)$" % re.escape(gone))
        self.assertNotIn("download uid", dry[0].stdout)
        self.assertEqual(sorted(self.local_numbers("INBOX")), before)
        summary = re.search(r"(?m)^(a: .*?)(?: \(dry run: nothing changed\))?$",
                            dry[0].stdout).group(1)
        self.assertIn("\u2193 0 new, 0 flags, 1 deleted", summary)
        self.assertIn("3 moved between folders", summary)
        p = self.sync(cfg)
        self.assertEqual(re.search(r"(?m)^a: .*$", p.stdout).group(0), summary)
        for f in ("INBOX", "Work"):
            self.assert_same(f)
            self.assert_no_duplicates(f)

    def test_moved_out_and_back_while_flagged_here(self):
        """Another client moves a message out of INBOX and back (a new
        UID) and answers it, while the user flagged it here: the record
        takes the new UID, the file stays (no body downloaded, nothing
        uploaded or deleted), and both flag changes are on both sides,
        once."""
        cfg = self.seed({"INBOX": [(1, ""), (2, "")], "Work": [(100, "")]})
        u = self.uniques("INBOX", [1])[0]
        self.set_local_flags("INBOX", u, "F")
        self.server_move("INBOX", "Work", [1])
        self.server_move("Work", "INBOX", [1])
        uid = [x for x, _f, b in self.server("INBOX") if b"move 1\r\n" in b][0]
        self.store("INBOX", uid, "+FLAGS", "\\Answered")
        p = self.sync(cfg, trace=True)
        self.assertNotRegex(p.stderr, r"C: \S+ UID FETCH \S+ \([^)]*BODY\.PEEK\[\]")
        self.assertIn("\u2193 0 new, 1 flags, 0 deleted; \u2191 0 new, 1 flags, 0 deleted",
                      p.stdout)
        for f in ("INBOX", "Work"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        self.assertEqual(self.server_flags("INBOX"), {1: "FR", 2: ""})
        self.assertEqual(self.local_numbers("INBOX")[1][0], u)
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)

    def test_server_move_then_local_delete(self):
        """Moved on the server while the user deleted the file locally: the
        message stays in the destination on both sides (the move is newer
        than the deletion the index knew of), no duplicate, nothing lost."""
        cfg = self.seed({"INBOX": [(1, ""), (2, "")], "Work": [(100, "")]})
        u = self.uniques("INBOX", [1])[0]
        os.unlink(self.local_file("INBOX", u))
        self.server_move("INBOX", "Work", [1])
        self.sync(cfg)
        for f in ("INBOX", "Work"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        self.assertEqual(sorted(self.server_flags("Work")), [1, 100])
        self.assertEqual(sorted(self.server_flags("INBOX")), [2])

    def test_server_expunge_still_deletes(self):
        """Expunged (not moved) by another client: the local file is deleted
        by the end of the run, counted as a deletion."""
        cfg = self.seed({"INBOX": [(1, ""), (2, "")], "Work": [(100, "")]})
        uid = [x for x, _f, b in self.server("INBOX") if b"move 1\r\n" in b][0]
        self.expunge("INBOX", [uid])
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 1 deleted", p.stdout)
        for f in ("INBOX", "Work"):
            self.assert_same(f)
        self.assertEqual(sorted(self.local_numbers("INBOX")), [2])

    def test_expunged_while_edited_is_uploaded_next_run(self):
        """Expunged by another client while flagged here, with Work still to
        sync: parked, paired with nothing, so its record goes and the file
        stays; the next run uploads it even though neither side of INBOX
        changed since (the change-time shortcut must not skip a folder
        whose orphans were dealt with at the end of the run)."""
        cfg = self.seed({"INBOX": [(1, ""), (2, "")], "Work": [(100, "")]})
        u = self.uniques("INBOX", [1])[0]
        self.set_local_flags("INBOX", u, "F")
        time.sleep(2.2)  # the next scan's change-time stamp is believed
        uid = [x for x, _f, b in self.server("INBOX") if b"move 1\r\n" in b][0]
        self.expunge("INBOX", [uid])
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted", p.stdout)
        self.assertEqual(sorted(self.local_numbers("INBOX")), [1, 2])
        p = self.sync(cfg)
        self.assertIn("\u2191 1 new", p.stdout)
        self.assertEqual(self.server_flags("INBOX"), {1: "F", 2: ""})
        for f in ("INBOX", "Work"):
            self.assert_same(f)
            self.assert_no_duplicates(f)


def run_killed(binary, cfg, anchor, delay, timeout=60):
    """Runs `mailsync -vv sync a` and kills it (SIGKILL) delay seconds
    after the first trace line matching anchor; returns (killed, trace)."""
    rx = re.compile(anchor)
    p = subprocess.Popen([binary, "-vv", "--config", cfg, "sync", "a"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    killed = False
    t_end = time.monotonic() + timeout
    for line in p.stdout:
        lines.append(line.decode("utf-8", "replace"))
        if not killed and rx.search(lines[-1]):
            if delay > 0:
                time.sleep(delay)
            if p.poll() is None:
                p.kill()
                killed = True
        if time.monotonic() > t_end:
            p.kill()
            raise AssertionError("mailsync sync hung")
    p.wait(timeout)
    p.stdout.close()
    return killed, "".join(lines)


# Where a move run is killed: the source SELECTed, the UID MOVE sent (and
# a little later, when the server has done it and the answer may or may
# not have been read), the COPYUID answer read (its records may or may not
# be written).
KILL_POINTS = [
    ("select", r"C: \S+ SELECT \S+ \(CONDSTORE\)|C: \S+ SELECT [^(]*$", 0.0),
    ("move", r"C: \S+ UID (MOVE|COPY) ", 0.0),
    ("move_late", r"C: \S+ UID (MOVE|COPY) ", 0.02),
    ("copyuid", r"S: .*COPYUID", 0.0),
]


class MoveCrashScenarios(MoveFixture):
    """A move run killed at each point, then a clean run: every message
    once on each side, the moved ones in the destination with the flags
    they were given, and a third run that changes nothing."""

    def check_killed(self, dst, anchor, delay):
        cfg = self.seed({"INBOX": [(i, "\\Seen" if i % 2 else "") for i in range(8)],
                         dst: [(100, "")]})
        moved = [0, 1, 2, 3, 4]
        for i, u in zip(moved, self.uniques("INBOX", moved)):
            self.move_local("INBOX", dst, u, "F" if i < 2 else None)
        killed, trace = run_killed(mstest.mailsync_bin(), cfg, anchor, delay)
        if not killed and delay > 0:
            # The rest of the run took less than the delay (a fast machine,
            # or the server answering at once): the point after the move
            # was never reached, and the kill at the move covers the rest.
            self.skipTest("the run ended within %.0f ms of the move" % (delay * 1000))
        self.assertTrue(killed, "the run ended before the kill point:\n" + trace[-3000:])
        p = self.sync(cfg)
        for f in ("INBOX", dst):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        self.assertEqual(sorted(self.server_flags("INBOX")), [5, 6, 7])
        want = {0: "F", 1: "F", 2: "", 3: "S", 4: "", 100: ""}
        self.assertEqual(self.server_flags(dst), want, trace[-3000:] + p.stdout)
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)


def _crash_test(dst, anchor, delay):
    def test(self):
        self.check_killed(dst, anchor, delay)
    return test


for _label, _anchor, _delay in KILL_POINTS:
    for _dst, _order in (("Work", "source_first"), ("Archive", "destination_first")):
        setattr(MoveCrashScenarios, "test_kill_at_%s_%s" % (_label, _order),
                _crash_test(_dst, _anchor, _delay))


for _name, _opts in PROFILES.items():
    globals()["MoveCrash" + _name] = type("MoveCrash" + _name,
                                          (MoveCrashScenarios, mstest.DovecotTestCase),
                                          {"dovecot_options": _opts})

for _name, _opts in PROFILES.items():
    globals()["ServerMoves" + _name] = type("ServerMoves" + _name,
                                            (ServerMoveScenarios, mstest.DovecotTestCase),
                                            {"dovecot_options": _opts})

for _name, _opts in PROFILES.items():
    globals()["Moves" + _name] = type("Moves" + _name, (MoveScenarios, mstest.DovecotTestCase),
                                      {"dovecot_options": _opts})


class MovesWithoutMove(MoveFixture, mstest.DovecotTestCase):
    """No MOVE: the client's UID COPY + UID STORE + UID EXPUNGE moves it."""
    dovecot_options = {"imap_capability": NO_MOVE_CAPS}

    def test_copy_store_expunge(self):
        cfg = self.seed({"INBOX": [(i, "") for i in range(4)], "Work": []})
        for u in self.uniques("INBOX", [0, 1, 2]):
            self.move_local("INBOX", "Work", u, "S")
        p = self.sync(cfg, trace=True)
        self.assertEqual(commands(p.stderr, "UID MOVE"), [])
        self.assertEqual(len(commands(p.stderr, "UID COPY")), 1)
        self.assertEqual(commands(p.stderr, "APPEND"), [])
        for f in ("INBOX", "Work"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
        self.assertEqual(self.server_flags("Work"), {0: "S", 1: "S", 2: "S"})


class MovesWithoutUidplus(MoveFixture, mstest.DovecotTestCase):
    """No UIDPLUS (no COPYUID to learn the new UIDs from): uploaded and
    deleted, as before."""
    dovecot_options = {"imap_capability": NO_UIDPLUS_CAPS}

    def test_upload_and_delete(self):
        cfg = self.seed({"INBOX": [(i, "") for i in range(4)], "Work": []})
        for u in self.uniques("INBOX", [0, 1]):
            self.move_local("INBOX", "Work", u)
        # Without UIDPLUS the originals are only flagged \Deleted (no UID
        # EXPUNGE), which the run reports as it always did.
        p = self.sync(cfg, trace=True, ok=False)
        self.assertEqual(p.returncode, 1, p.stderr[-2000:])
        self.assertIn("the server lacks UIDPLUS: deleted messages were only flagged", p.stderr)
        self.assertEqual(commands(p.stderr, "UID MOVE"), [])
        self.assertEqual(len(commands(p.stderr, "APPEND")), 2)
        self.assertEqual(sorted(self.server_flags("INBOX")), [0, 1, 2, 3])
        self.assertEqual({n: f for n, f in self.server_flags("INBOX").items() if "T" in f},
                         {0: "T", 1: "T"})
        self.assertEqual(sorted(self.server_flags("Work")), [0, 1])
        self.assertEqual(len(self.local("Work")), 2)
        self.assert_no_duplicates("Work")


if __name__ == "__main__":
    mstest.main()
