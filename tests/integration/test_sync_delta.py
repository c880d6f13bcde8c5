#!/usr/bin/env python3
"""Touch only what changed when the local side is quiet (issue 13, step 6):
a folder whose Maildir is as the last complete sync recorded it (the
change-time shortcut's stamp holds) and whose server sends a QRESYNC delta
is synced from the delta's rows alone: each changed or vanished UID is
looked up in the index by key, its file found by the name the row implies
(or by identity when a client wrote another form of it), and the plan made
from those rows and files, without reading the whole base or the whole
directory. Run under the three capability profiles of synctest.PROFILES:
only with QRESYNC is the delta path taken (the -v line "delta: N rows
looked up"); the others take the full path, and every outcome is the same.

What is proven, with the files on disk and the flags on both sides: flag
changes on the server rename exactly those files and no other; expunges
(VANISHED) remove exactly those files; new server mail is downloaded; a
file whose name is not the one its row implies is still found (by
identity) and renamed; a rename by another client at once after the last
sync makes the folder be read whole, and both sides' changes merge; the
mass-deletion guard still trips when the server expunges most of a folder
(measured against the whole folder, not the rows looked up), and --force
then deletes; and under strace the delta path reads neither cur/ nor new/
with getdents64 (the full path does, so the check can fail)."""

import os
import re
import subprocess
import time
import unittest

import mailgen
import mstest
from synctest import PROFILES, SyncFixture, letters
from test_store_syscalls import STRACE, parse_strace

QUIET = "INBOX: unchanged on both sides, not scanned"
DELTA = re.compile(r"INBOX: unchanged locally, changed on the server: scanning only what the "
                   r"delta names: delta: (\d+) rows looked up \(0 for files another program "
                   r"changed\), (\d+) found \((\d+) files by "
                   r"name, (\d+) by identity\) of (\d+)")
FULL = "INBOX: unchanged locally, changed on the server: scanning"
LISTING = "INBOX: unchanged locally, changed on the server: scanning only what the listing changed"
NOTHING = "\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted"
# A change time is believed once it is two seconds older than the scan
# that recorded it (MD_STAMP_SETTLE_NS).
SETTLE = 2.2


class DeltaScenarios(SyncFixture):
    # The profile sends QRESYNC deltas (the delta path is taken).
    qresync = True
    # ... and has CONDSTORE (a quiet folder is skipped when nothing changed).
    condstore = True
    # Without CONDSTORE the full listing is compared with the base, and
    # only the rows that differ are looked at (ldiff_start).
    listing = False

    def vsync(self, cfg, *flags, ok=True):
        """One sync at -v; returns the process."""
        p = self.mailsync(cfg, "-v", "sync", *flags, "a")
        if ok and p.returncode != 0:
            self.fail("mailsync sync exited %d\nstdout:\n%s\nstderr:\n%s"
                      % (p.returncode, p.stdout, p.stderr))
        return p

    def names(self):
        """Every message file of INBOX: {unique: "cur/name" or "new/name"}."""
        d = self.folder_dir("INBOX")
        out = {}
        for sub in ("cur", "new"):
            for fn in os.listdir(os.path.join(d, sub)):
                out[fn.split(":2,")[0]] = sub + "/" + fn
        return out

    def settled(self, n, flags=None, before_settle=None):
        """n messages synced down, then a sync that records a stamp old
        enough to be believed: the next sync finds the Maildir quiet.
        before_settle runs after the download, before that sync."""
        msgs = mailgen.generate(n, seed=31, max_size=2500)
        if flags is None:
            flags = ["\\Seen" if i % 2 else "" for i in range(n)]
        self.dovecot.save_many(self.user, "INBOX", msgs, flags)
        cfg = self.config()
        self.assertIn("\u2193 %d new" % n, self.sync(cfg).stdout)
        if before_settle is not None:
            before_settle()
        time.sleep(SETTLE)
        p = self.vsync(cfg)
        self.assertIn(NOTHING, p.stdout)
        if self.condstore:
            self.assertIn(QUIET, self.vsync(cfg).stderr)
        return cfg

    def assert_same(self, name="INBOX"):
        """synctest's check, with keyword letters (lowercase) left out of
        the local side, as letters() leaves keywords out of the server's."""
        srv = sorted((mstest.crlf_to_lf(b), letters(f)) for _u, f, b in self.server(name))
        loc = sorted((b, "".join(c for c in fl if not c.islower()))
                     for _u, fl, b in self.local(name))
        self.assertEqual(srv, loc, "messages or flags differ in %s" % name)

    def uid_of(self):
        """{uid: unique} from the message bodies on both sides."""
        local = {b: u for u, _f, b in self.local()}
        return {uid: local[mstest.crlf_to_lf(b)] for uid, _f, b in self.server()}

    def delta(self, p, looked=None, found=None, by_name=None, by_id=None, total=None):
        """Asserts the delta line (QRESYNC) or its absence, and the figures."""
        m = DELTA.search(p.stderr)
        if not self.qresync:
            self.assertIsNone(m, p.stderr)
            self.assertIn(FULL, p.stderr)
            if self.listing:
                self.assertIn(LISTING, p.stderr)
            return
        self.assertIsNotNone(m, "no delta line:\n" + p.stderr)
        got = [int(x) for x in m.groups()]
        for i, want in enumerate((looked, found, by_name, by_id, total)):
            if want is not None:
                self.assertEqual(got[i], want, "delta line: %s" % m.group(0))

    def test_server_flags_rename_only_those_files(self):
        """Three flag changes on the server: exactly those three files are
        renamed (with their new letters, keyword included), every other
        name stays, and the server keeps what was set there. Then a change
        to the message with the keyword: its file is found by the name
        with the keyword's letter."""
        cfg = self.settled(30)
        before = self.names()
        uids = sorted(self.uid_of())
        u2 = self.uid_of()
        seen = [u for u, f, _b in self.server() if "\\Seen" in f]
        unseen = [u for u, f, _b in self.server() if "\\Seen" not in f]
        self.store("INBOX", seen[3], "+FLAGS", "\\Flagged")
        self.store("INBOX", seen[5], "-FLAGS", "\\Seen")
        self.store("INBOX", unseen[2], "+FLAGS", "\\Answered $Label1")
        p = self.vsync(cfg)
        self.assertIn("\u2193 0 new, 3 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.delta(p, looked=3, found=3, by_name=3, by_id=0, total=30)
        after = self.names()
        changed = {u2[seen[3]], u2[seen[5]], u2[unseen[2]]}
        self.assertEqual(set(after), set(before))
        for u in before:
            if u not in changed:
                self.assertEqual(after[u], before[u], "file %s was touched" % u)
        self.assertEqual(after[u2[seen[3]]], "cur/%s:2,FS" % u2[seen[3]])
        self.assertEqual(after[u2[seen[5]]], "cur/%s:2," % u2[seen[5]])
        self.assertTrue(re.fullmatch(r"cur/%s:2,R[a-z]" % re.escape(u2[unseen[2]]),
                                     after[u2[unseen[2]]]), after[u2[unseen[2]]])
        srv = {u: f for u, f, _b in self.server()}
        self.assertEqual(letters(srv[seen[3]]), "FS")
        self.assertEqual(letters(srv[seen[5]]), "")
        self.assertIn("$Label1", srv[unseen[2]])
        self.assertEqual(len(uids), 30)
        self.assert_same()
        # Both sides agree: the next runs change nothing.
        self.assertIn(NOTHING, self.vsync(cfg).stdout)
        time.sleep(SETTLE)
        self.vsync(cfg)
        self.assertIn(NOTHING, self.vsync(cfg).stdout)
        self.assertEqual(self.names(), after)
        # A row with a keyword: its file is found under the name with the
        # keyword's letter, and keeps it.
        self.store("INBOX", unseen[2], "+FLAGS", "\\Flagged")
        p = self.vsync(cfg)
        self.assertIn("\u2193 0 new, 1 flags, 0 deleted", p.stdout)
        self.delta(p, looked=1, found=1, by_name=1, by_id=0)
        self.assertTrue(re.fullmatch(r"cur/%s:2,FR[a-z]" % re.escape(u2[unseen[2]]),
                                     self.names()[u2[unseen[2]]]), self.names()[u2[unseen[2]]])
        self.assertIn("$Label1", {u: f for u, f, _b in self.server()}[unseen[2]])
        self.assert_same()

    def test_flags_pushed_up_leave_nothing_to_settle(self):
        """A run that pushed flags up marks those rows before its STOREs
        (a kill before their answers must not undo a change); once it
        completes, its record settles them, so the next server change on
        the still quiet Maildir is synced from the delta alone, and both
        sides keep both changes."""
        cfg = self.settled(20, flags=[""] * 20)
        u2 = self.uid_of()
        uids = sorted(u2)
        # mutt sets \Flagged on one message; once the change time is old
        # enough to be believed, a run pushes it up and records a stamp.
        self.set_local_flags("INBOX", u2[uids[3]], "F")
        time.sleep(SETTLE)
        p = self.vsync(cfg)
        self.assertIn("\u2191 0 new, 1 flags, 0 deleted", p.stdout)
        self.store("INBOX", uids[9], "+FLAGS", "\\Seen")
        p = self.vsync(cfg)
        self.assertIn("\u2193 0 new, 1 flags, 0 deleted", p.stdout)
        # The delta names the message of the run's own STORE too (its
        # MODSEQ is past the recorded HIGHESTMODSEQ): two rows, no change.
        self.delta(p, looked=2, found=2, by_name=2, by_id=0, total=20)
        srv = {u: letters(f) for u, f, _b in self.server()}
        self.assertEqual((srv[uids[3]], srv[uids[9]]), ("F", "S"))
        self.assertEqual(self.names()[u2[uids[9]]], "cur/%s:2,S" % u2[uids[9]])
        self.assert_same()

    def test_vanished_remove_only_those_files(self):
        """Three messages expunged on the server: exactly their files go."""
        cfg = self.settled(30)
        before = self.names()
        u2 = self.uid_of()
        gone = sorted(u2)[4:7]
        self.expunge("INBOX", gone)
        p = self.vsync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 3 deleted", p.stdout)
        self.delta(p, looked=3, found=3, by_name=3, total=30)
        after = self.names()
        self.assertEqual(after, {u: n for u, n in before.items()
                                 if u not in {u2[g] for g in gone}})
        self.assertEqual(len(self.server()), 27)
        self.assert_same()

    def test_new_mail_and_a_flag_change(self):
        """Two new messages on the server and one flag change: both are
        downloaded, the one file renamed; new UIDs need no row."""
        cfg = self.settled(20)
        before = self.names()
        u2 = self.uid_of()
        first = sorted(u2)[0]
        self.store("INBOX", first, "+FLAGS", "\\Flagged")
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(2, seed=77, max_size=2000))
        p = self.vsync(cfg)
        self.assertIn("\u2193 2 new, 1 flags, 0 deleted", p.stdout)
        self.delta(p, found=1, by_name=1, total=20)
        after = self.names()
        self.assertEqual(len(after), 22)
        for u, n in before.items():
            if u != u2[first]:
                self.assertEqual(after[u], n)
        self.assertNotEqual(after[u2[first]], before[u2[first]])
        self.assert_same()
        self.assert_no_duplicates()

    def test_file_not_under_its_row_name_is_found(self):
        """A file another client named in another form (flag letters out of
        order, "SF" for "FS") while the last full sync saw it: the name its
        row implies does not exist, the file is found by identity, and the
        server's change is applied to it."""
        box = {}

        def reorder():
            u2 = self.uid_of()
            uid = sorted(u2)[1]
            box["uid"], box["u"] = uid, u2[uid]
            path = self.local_file("INBOX", u2[uid])
            os.rename(path, os.path.join(self.folder_dir("INBOX"), "cur", u2[uid] + ":2,SF"))

        cfg = self.settled(25, flags=["\\Seen \\Flagged"] * 25, before_settle=reorder)
        self.assertEqual(self.names()[box["u"]], "cur/%s:2,SF" % box["u"])
        self.store("INBOX", box["uid"], "+FLAGS", "\\Answered")
        p = self.vsync(cfg)
        self.assertIn("\u2193 0 new, 1 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.delta(p, looked=1, found=1, by_name=0, by_id=1)
        name = self.names()[box["u"]]
        self.assertTrue(name.startswith("cur/%s:2," % box["u"]), name)
        self.assertEqual("".join(sorted(name.split(":2,")[1])), "FRS")
        self.assertEqual(letters({u: f for u, f, _b in self.server()}[box["uid"]]), "FRS")
        self.assert_same()

    def test_rename_right_after_sync_merges(self):
        """Another client renames a file at once after the last sync (the
        same second) while the server changes another flag of the same
        message: the stamp no longer vouches for the Maildir, the folder is
        read whole (no delta line), and both changes end on both sides."""
        cfg = self.settled(20)
        u2 = self.uid_of()
        uid = sorted(u2)[3]
        self.vsync(cfg)
        self.set_local_flags("INBOX", u2[uid], "F")
        self.store("INBOX", uid, "+FLAGS", "\\Answered")
        p = self.vsync(cfg)
        self.assertIsNone(DELTA.search(p.stderr), p.stderr)
        self.assertNotIn(QUIET, p.stderr)
        self.assertIn("\u2193 0 new, 1 flags, 0 deleted; \u2191 0 new, 1 flags, 0 deleted",
                      p.stdout)
        self.assertEqual(letters({u: f for u, f, _b in self.server()}[uid]), "FR")
        self.assertEqual(self.names()[u2[uid]], "cur/%s:2,FR" % u2[uid])
        self.assert_same()

    def test_guard_measures_the_whole_folder(self):
        """The guard counts the whole folder, not the delta's rows. The
        server expunges 25 of 60 messages (under the folder's
        max_delete_ratio, half): all 25 files go, though every row the
        planner sees is a deletion. Then it expunges 30 of the 35 left:
        nothing is deleted locally, the run says why and fails; --force
        then deletes exactly those 30 files."""
        cfg = self.settled(60)
        before = self.names()
        u2 = self.uid_of()
        first = sorted(u2)[5:30]
        self.expunge("INBOX", first)
        p = self.vsync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 25 deleted", p.stdout)
        self.delta(p, looked=25, found=25, total=60)
        before = {u: n for u, n in before.items() if u not in {u2[g] for g in first}}
        self.assertEqual(self.names(), before)
        # The deletions changed cur/ and new/: one full sync records them.
        time.sleep(SETTLE)
        self.assertIn(NOTHING, self.vsync(cfg).stdout)
        gone = [u for u in sorted(u2) if u not in first][:30]
        self.expunge("INBOX", gone)
        p = self.vsync(cfg, ok=False)
        self.assertNotEqual(p.returncode, 0)
        out = p.stdout + p.stderr
        self.assertIn("refusing to delete 30 of 35 messages locally", out)
        self.assertIn("mailsync sync --force a", out)
        self.delta(p, looked=30, found=30, total=35)
        self.assertEqual(self.names(), before)
        p = self.vsync(cfg, "--force")
        self.assertIn("30 deleted", p.stdout)
        self.assertEqual(self.names(), {u: n for u, n in before.items()
                                        if u not in {u2[g] for g in gone}})
        self.assert_same()

    def test_no_directory_read_on_the_delta_path(self):
        """Under strace: with QRESYNC a server flag change on a quiet
        folder of 300 messages is applied without a getdents64 of cur/ or
        new/, and so it is without CONDSTORE (the full listing compared
        with the base); with CONDSTORE alone the same sync reads both (so
        the check can fail)."""
        if not os.access(STRACE, os.X_OK):
            self.fail("strace is not installed (%s); tests/run installs it" % STRACE)
        cfg = self.settled(300)
        u2 = self.uid_of()
        uid = sorted(u2)[150]
        self.store("INBOX", uid, "+FLAGS", "\\Flagged")
        trace = os.path.join(self.tmp, "delta.strace")
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
        p = subprocess.run(
            [STRACE, "-f", "-qq", "-y", "-e", "trace=getdents64,rename,renameat,renameat2",
             "-o", trace, mstest.mailsync_bin(), "--config", cfg, "-v", "sync", "a"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            timeout=300, env=env, cwd=self.tmp)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("\u2193 0 new, 1 flags, 0 deleted", p.stdout)
        inbox = os.path.realpath(self.folder_dir("INBOX"))
        calls = parse_strace(trace)
        reads = [c for c in calls if c.name == "getdents64"
                 and c.fd_path() in (os.path.join(inbox, "cur"), os.path.join(inbox, "new"))]
        renames = [c for c in calls if c.name.startswith("rename") and c.ok()
                   and (inbox in c.args or self.folder_dir("INBOX") in c.args)]
        self.assertEqual(len(renames), 1, renames)
        if self.qresync or self.listing:
            self.assertEqual(reads, [], "the delta path read a directory")
            self.delta(p, looked=1, found=1, by_name=1, total=300)
        else:
            self.assertTrue(reads, "the full path read no directory")
        self.assertTrue(self.names()[u2[uid]].endswith(":2,F") or
                        self.names()[u2[uid]].endswith(":2,FS"))
        self.assert_same()


class DeltaQresync(DeltaScenarios, mstest.DovecotTestCase):
    dovecot_options = PROFILES["Qresync"]


class DeltaCondstore(DeltaScenarios, mstest.DovecotTestCase):
    dovecot_options = PROFILES["Condstore"]
    qresync = False


class DeltaFallback(DeltaScenarios, mstest.DovecotTestCase):
    dovecot_options = PROFILES["Fallback"]
    qresync = False
    condstore = False
    listing = True


if __name__ == "__main__":
    mstest.main()
