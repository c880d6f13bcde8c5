#!/usr/bin/env python3
"""Folder renames (issue 12) against a real Dovecot 2.3 (which has no
OBJECTID) under the three capability profiles of synctest.PROFILES
(QRESYNC, CONDSTORE only, neither), in the verbatim and maildir++ layouts:

- a local folder renamed (mv), nested, with children: one RENAME on the
  server, no message uploaded or downloaded, no guard, and the index
  follows (the next run has nothing to do, flags changed afterwards
  travel as flag changes);
- a server folder renamed by another client (RENAME, children along):
  recognised by its UIDVALIDITY and a few of its messages, the local
  directory renamed, nothing downloaded;
- a local folder whose messages were all moved to other folders before it
  was removed (not a rename): the guard says so, and --force deletes those
  messages on the server instead of downloading them again;
- a kill -9 between RENAME and the index move, and between the local
  rename(2) and the index move: the next run completes, with no message
  lost or copied;
- --dry-run plans renames, folder creations and deletions on both sides
  and message changes, and its counts are the real run's.

The kills are placed with strace: every index write (pwrite64/fdatasync of
data.mdb, and the fsyncs around them) is held for a while on entry, so once
the test sees the rename made on one side, the process is waiting to write
its index and is killed there."""

import os
import re
import shutil
import signal
import subprocess
import time

import mailgen
import mstest
import test_sync_rough
from synctest import PROFILES, SyncFixture

SUMMARY = re.compile(r"^a: \u2193 (\d+) new, (\d+) flags, (\d+) deleted; "
                     r"\u2191 (\d+) new, (\d+) flags, (\d+) deleted", re.M)
KEYS = ("new_down", "flags_down", "deleted_down", "new_up", "flags_up", "deleted_up")
ZERO = dict.fromkeys(KEYS, 0)


def summary(p):
    m = SUMMARY.search(p.stdout)
    if m is None:
        raise AssertionError("no summary line in:\n" + p.stdout + p.stderr)
    return dict(zip(KEYS, map(int, m.groups())))


def plan_counts(out):
    """test_sync_rough.plan_counts, plus whole folders deleted on either
    side ("delete the folder and its N message(s) on the server", "delete
    the local folder and its N message(s)")."""
    c = test_sync_rough.plan_counts(out)
    for n in re.findall(r"^[^\n]*: delete the folder and its (\d+) message", out, re.M):
        c["deleted_up"] += int(n)
    for n in re.findall(r"^[^\n]*: delete the local folder and its (\d+) message", out, re.M):
        c["deleted_down"] += int(n)
    return c


def msg(seed, i, size=1500):
    return mailgen.message(seed=seed, index=i, size=size)


def commands(trace, verb):
    """The client's commands of one verb in a -vv protocol trace."""
    return re.findall(r"C: \S+ (?:UID )?%s\b[^\n]*" % verb, trace)


class RenameScenarios(SyncFixture):

    def seed(self, folder, n, seed):
        msgs = [msg(seed, i) for i in range(n)]
        self.dovecot.save_many(self.user, folder, msgs)
        return msgs

    def bodies(self, folder):
        return sorted(b for _u, _f, b in self.local(folder))

    def server_bodies(self, folder):
        return sorted(mstest.crlf_to_lf(b) for _u, _f, b in self.server(folder))

    def assert_quiet(self, cfg):
        """A run with nothing to do: no transfer, no error."""
        p = self.sync(cfg, trace=True)
        self.assertEqual(summary(p), ZERO, p.stdout)
        self.assertEqual(commands(p.stderr, "APPEND"), [])
        self.assertEqual(commands(p.stderr, "RENAME"), [])
        return p

    def rename_local(self, old, new):
        src, dst = self.folder_dir(old), self.folder_dir(new)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.rename(src, dst)

    def server_rename(self, old, new):
        c = self.imap()
        try:
            typ, data = c.rename(old, new)
            self.assertEqual(typ, "OK", data)
        finally:
            c.logout()

    # ---- renamed here -----------------------------------------------------------------

    def test_local_rename_is_a_server_rename(self):
        """mv Lists/dev Lists/devel (25 messages, flags on some): one RENAME
        Lists/dev Lists/devel, no APPEND, no FETCH of a body, exit 0; both
        sides hold the 25 once, under the new name only; the next run has
        nothing to do, and a flag set afterwards goes up as a flag."""
        self.seed("INBOX", 2, 1)
        self.seed("Lists/dev", 25, 2)
        cfg = self.config()
        self.sync(cfg)
        uniq = self.local("Lists/dev")[0][0]
        self.set_local_flags("Lists/dev", uniq, "F")
        self.sync(cfg)
        before = self.bodies("Lists/dev")
        self.rename_local("Lists/dev", "Lists/devel")
        p = self.sync(cfg, trace=True)
        self.assertEqual(summary(p), ZERO, p.stdout + p.stderr)
        self.assertEqual([c.split(" ", 2)[2] for c in commands(p.stderr, "RENAME")],
                         ["RENAME Lists/dev Lists/devel"], p.stderr)
        self.assertEqual(commands(p.stderr, "APPEND"), [])
        self.assertNotIn("BODY.PEEK[]", p.stderr)
        self.assertIn("folder Lists/dev was renamed here: renamed to Lists/devel on the server",
                      p.stdout)
        self.assertNotIn("Lists/dev", self.dovecot.folders(self.user))
        self.assertEqual(self.server_bodies("Lists/devel"), before)
        self.assert_same("Lists/devel")
        self.assert_no_duplicates("Lists/devel")
        self.assertFalse(os.path.exists(self.folder_dir("Lists/dev")))
        self.assert_quiet(cfg)
        self.set_local_flags("Lists/devel", uniq, "FS")
        p = self.sync(cfg)
        self.assertEqual(summary(p), dict(ZERO, flags_up=1), p.stdout)
        self.assert_same("Lists/devel")

    def test_local_rename_of_a_parent_with_children(self):
        """Projects (4 messages) with Projects/a (3) and Projects/a/b (2)
        renamed to Work: in the verbatim layout one mv moves all three, in
        maildir++ each directory is renamed (.Projects -> .Work,
        .Projects.a -> .Work.a, ...). One RENAME Projects Work carries the
        children on the server; nothing is copied; a later run is quiet."""
        self.seed("Projects", 4, 3)
        self.seed("Projects/a", 3, 4)
        self.seed("Projects/a/b", 2, 5)
        cfg = self.config()
        self.sync(cfg)
        names = ("", "/a", "/a/b")
        before = {t: self.bodies("Projects" + t) for t in names}
        if self.layout == "verbatim":
            self.rename_local("Projects", "Work")
        else:
            for t in names:
                self.rename_local("Projects" + t, "Work" + t)
        p = self.sync(cfg, trace=True)
        self.assertEqual(summary(p), ZERO, p.stdout + p.stderr)
        self.assertEqual(len(commands(p.stderr, "RENAME")), 1, p.stderr)
        self.assertIn(" RENAME Projects Work\n", p.stderr)
        server = self.dovecot.folders(self.user)
        for t in names:
            self.assertNotIn("Projects" + t, server)
            self.assertEqual(self.server_bodies("Work" + t), before[t])
            self.assert_same("Work" + t)
        self.assert_quiet(cfg)

    def test_maildirpp_child_not_renamed_along_stays(self):
        """maildir++ keeps .Box and .Box.sub apart: renaming only .Box to
        .Crate renames Box to Crate on the server, and Box/sub, which IMAP
        RENAME moved along, is renamed back; every folder keeps its
        messages, nothing is copied, and the next run is quiet."""
        if self.layout != "maildir++":
            self.skipTest("only maildir++ can rename a folder without its children")
        self.seed("Box", 3, 6)
        self.seed("Box/sub", 2, 7)
        cfg = self.config()
        self.sync(cfg)
        box, sub = self.bodies("Box"), self.bodies("Box/sub")
        self.rename_local("Box", "Crate")
        p = self.sync(cfg, trace=True)
        self.assertEqual(summary(p), ZERO, p.stdout + p.stderr)
        self.assertIn(" RENAME Box Crate\n", p.stderr)
        self.assertIn(" RENAME Crate/sub Box/sub\n", p.stderr)
        self.assertEqual(self.server_bodies("Crate"), box)
        self.assertEqual(self.server_bodies("Box/sub"), sub)
        self.assertNotIn("Crate/sub", self.dovecot.folders(self.user))
        self.assert_same("Box/sub")
        self.assert_quiet(cfg)

    # ---- renamed on the server ---------------------------------------------------------

    def test_server_rename_is_a_local_rename(self):
        """Another client's RENAME Archive Archive2023 (30 messages) and of
        a parent with a child (Old -> New, Old/x -> New/x): the local
        directories are renamed, nothing is downloaded (no body FETCH),
        exit 0, the old names are gone here, and the next run is quiet."""
        self.seed("Archive", 30, 8)
        self.seed("Old", 2, 9)
        self.seed("Old/x", 3, 10)
        cfg = self.config()
        self.sync(cfg)
        before = {f: self.bodies(f) for f in ("Archive", "Old", "Old/x")}
        self.server_rename("Archive", "Archive2023")
        self.server_rename("Old", "New")
        p = self.sync(cfg, trace=True)
        self.assertEqual(summary(p), ZERO, p.stdout + p.stderr)
        self.assertNotIn("BODY.PEEK[]", p.stderr)
        self.assertIn("folder Archive was renamed on the server: renamed to Archive2023 here too",
                      p.stdout)
        for old, new in (("Archive", "Archive2023"), ("Old", "New"), ("Old/x", "New/x")):
            self.assertFalse(os.path.exists(self.folder_dir(old)), old)
            self.assertEqual(self.bodies(new), before[old])
            self.assert_same(new)
        self.assert_quiet(cfg)

    def test_server_folder_with_same_uidvalidity_but_other_mail_is_not_a_rename(self):
        """A folder deleted on the server while another one appeared whose
        UIDVALIDITY is the same (forced with doveadm) but whose messages are
        others: not a rename. The deleted one is kept here with the usual
        error, the new one is downloaded into its own directory."""
        self.seed("Gone", 3, 11)
        cfg = self.config()
        self.sync(cfg)
        uv = self.status("Gone")["UIDVALIDITY"]
        c = self.imap()
        c.delete("Gone")
        c.logout()
        self.seed("Fresh", 3, 12)
        self.dovecot.doveadm("mailbox", "update", "-u", self.user, "--uid-validity", str(uv),
                             "Fresh")
        self.assertEqual(self.status("Fresh")["UIDVALIDITY"], uv)
        p = self.sync(cfg, ok=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("folder 'Gone' was deleted on the server; the local copy is kept",
                      p.stdout + p.stderr)
        self.assertEqual(len(self.local("Gone")), 3)
        self.assertEqual(summary(p)["new_down"], 3)
        self.assert_same("Fresh")

    # ---- a folder emptied by moves, then removed ------------------------------------------

    def test_vanished_folder_whose_messages_moved_is_not_downloaded_again(self):
        """All 5 messages of Lists/old are moved (mv, as mutt's save keeps
        the unique name) into INBOX and Keep, then Lists/old is removed:
        the syncs of INBOX and Keep move them on the server (UID MOVE, no
        upload), no guard trips, nothing is downloaded again; the folder,
        now empty on both sides, is made again here on the next run
        (delete_folders is not set, so no folder is deleted on the
        server); both sides hold each message once."""
        self.seed("INBOX", 1, 13)
        self.seed("Keep", 1, 14)
        self.seed("Lists/old", 5, 15)
        cfg = self.config()
        self.sync(cfg)
        old = self.folder_dir("Lists/old")
        for i, (unique, fl, _b) in enumerate(self.local("Lists/old")):
            dest = self.folder_dir("INBOX" if i % 2 else "Keep")
            src = self.local_file("Lists/old", unique)
            os.rename(src, os.path.join(dest, "cur", os.path.basename(src)))
        shutil.rmtree(old)
        p = self.sync(cfg)
        c = summary(p)
        self.assertEqual((c["new_down"], c["new_up"], c["deleted_up"]), (0, 0, 0), p.stdout)
        self.assertIn("5 moved between folders", p.stdout)
        self.assertEqual(len(self.server("Lists/old")), 0)
        self.assertFalse(os.path.isdir(old))
        p = self.sync(cfg)
        c = summary(p)
        self.assertEqual((c["new_down"], c["new_up"], c["deleted_up"]), (0, 0, 0), p.stdout)
        self.assertTrue(os.path.isdir(os.path.join(old, "cur")), "the empty folder not made again")
        self.assertEqual(self.local("Lists/old"), [])
        for f in ("INBOX", "Keep", "Lists/old"):
            self.assert_same(f)
        every = [b for f in ("INBOX", "Keep", "Lists/old") for b in self.server_bodies(f)]
        self.assertEqual(len(every), len(set(every)))
        self.assertEqual(len(every), 7)
        self.assert_quiet(cfg)

    def test_vanished_folder_with_some_messages_moved(self):
        """Two of Lists/part's 4 messages are moved to INBOX, then the
        folder is removed: the two are moved on the server; the guard
        refuses the folder for the other two only, saying so; --force then
        downloads those two again, and nothing is duplicated."""
        self.seed("INBOX", 1, 16)
        self.seed("Lists/part", 4, 17)
        cfg = self.config()
        self.sync(cfg)
        part = self.folder_dir("Lists/part")
        for unique, _fl, _b in self.local("Lists/part")[:2]:
            src = self.local_file("Lists/part", unique)
            os.rename(src, os.path.join(self.folder_dir("INBOX"), "cur", os.path.basename(src)))
        shutil.rmtree(part)
        p = self.sync(cfg, ok=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("folder 'Lists/part': the local folder vanished; 2 of its 4 messages are in "
                      "other local folders now and are moved there on the server, the other 2 are "
                      "not deleted on the server", p.stdout + p.stderr)
        self.assertIn("2 moved between folders", p.stdout)
        self.assertEqual(len(self.server("Lists/part")), 2)
        self.assertEqual(len(self.server("INBOX")), 3)
        p = self.sync(cfg, "--force")
        c = summary(p)
        self.assertEqual((c["new_down"], c["new_up"], c["deleted_up"]), (2, 0, 0), p.stdout)
        for f in ("INBOX", "Lists/part"):
            self.assert_same(f)
        every = [b for f in ("INBOX", "Lists/part") for b in self.server_bodies(f)]
        self.assertEqual(len(every), len(set(every)))
        self.assertEqual(len(every), 5)
        self.assert_quiet(cfg)

    # ---- --dry-run ------------------------------------------------------------------------

    def test_dry_run_plan_equals_the_real_run(self):
        """With delete_folders: a table of folders created and deleted on
        each side, renamed on each side, and message changes in INBOX. The
        dry run changes nothing, prints each rename, each folder to create
        or delete and each message to move, and its counts (summed from the
        printed plan, and in its summary line) are the table's, which the
        real run then reports; both sides end equal, with no duplicate, and
        the plan after that is empty."""
        self.seed("INBOX", 6, 20)
        self.seed("GoneHere", 3, 21)
        self.seed("GoneThere", 4, 22)
        self.seed("MovedHere", 5, 23)
        self.seed("MovedThere", 2, 24)
        cfg = self.config(delete_folders=True)
        self.sync(cfg)
        srv = {u: b for u, _f, b in self.server()}
        uids = sorted(srv)
        # INBOX: 2 new on the server, one flag there, one expunge there;
        # 1 new here, one flag here, one deletion here.
        self.dovecot.save_many(self.user, "INBOX", [msg(25, 0), msg(25, 1)])
        self.store("INBOX", uids[0], "+FLAGS", "\\Flagged")
        self.expunge("INBOX", [uids[1]])
        self.deliver_local("INBOX", mstest.crlf_to_lf(msg(26, 0)), "1700000001.M1P1.mutt")
        self.set_local_flags("INBOX", self.unique_of("INBOX", mstest.crlf_to_lf(srv[uids[2]])),
                             "S")
        os.unlink(self.local_file("INBOX", self.unique_of("INBOX",
                                                          mstest.crlf_to_lf(srv[uids[3]]))))
        # Folders: created here (2) and there (3), deleted here (3) and
        # there (4), renamed here and there.
        self.deliver_local("NewHere", mstest.crlf_to_lf(msg(27, 0)), "1700000002.M1P1.mutt")
        self.deliver_local("NewHere", mstest.crlf_to_lf(msg(27, 1)), "1700000003.M1P1.mutt")
        self.seed("NewThere", 3, 28)
        shutil.rmtree(self.folder_dir("GoneHere"))
        c = self.imap()
        c.delete("GoneThere")
        c.logout()
        self.rename_local("MovedHere", "MovedHere2")
        self.server_rename("MovedThere", "MovedThere2")
        want = {"new_down": 2 + 3, "flags_down": 1, "deleted_down": 1 + 4,
                "new_up": 1 + 2, "flags_up": 1, "deleted_up": 1 + 3}
        folders = ["INBOX", "NewHere", "NewThere", "MovedHere2", "MovedThere2"]

        local_before = {f: self.local(f) for f in folders + ["MovedHere", "MovedThere",
                                                             "GoneThere"]
                        if os.path.isdir(self.folder_dir(f))}
        server_before = sorted(self.dovecot.folders(self.user))
        dry = self.sync(cfg, "--dry-run")
        self.assertEqual({f: self.local(f) for f in local_before}, local_before)
        self.assertEqual(sorted(self.dovecot.folders(self.user)), server_before)
        out = dry.stdout
        self.assertIn("MovedHere2: rename the server folder MovedHere to MovedHere2 "
                      "(renamed here)\n", out)
        self.assertIn("MovedThere2: rename the local folder MovedThere to MovedThere2 "
                      "(renamed on the server)\n", out)
        self.assertIn("NewHere: create the folder on the server\n", out)
        self.assertIn("NewThere: create the folder locally\n", out)
        self.assertIn("GoneHere: delete the folder and its 3 message(s) on the server", out)
        self.assertIn("GoneThere: delete the local folder and its 4 message(s)", out)
        self.assertEqual(plan_counts(out), want, out)
        self.assertEqual(summary(dry), want, out)

        real = self.sync(cfg)
        self.assertEqual(summary(real), want, real.stdout)
        for f in folders:
            self.assert_same(f)
            self.assert_no_duplicates(f)
        gone = set(self.dovecot.folders(self.user))
        for f in ("GoneHere", "GoneThere", "MovedHere", "MovedThere"):
            self.assertNotIn(f, gone)
            self.assertFalse(os.path.exists(self.folder_dir(f)), f)
        dry = self.sync(cfg, "--dry-run")
        self.assertEqual(summary(dry), ZERO, dry.stdout)
        self.assertEqual(plan_counts(dry.stdout), ZERO, dry.stdout)

    # ---- kill -9 ------------------------------------------------------------------------

    def killed_run(self, cfg, done):
        """Runs `mailsync sync a` with every write of the index held on
        entry (strace) and kills it (SIGKILL) as soon as done() is true;
        fails when the run ends first."""
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
        held = "pwrite64,pwritev,fdatasync,fsync,msync"
        argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=" + held,
                "-e", "inject=%s:delay_enter=1500000" % held,
                mstest.mailsync_bin(), "--config", cfg, "sync", "a"]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             start_new_session=True)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                if done():
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)
                    return
                if p.poll() is not None:
                    out, err = p.communicate()
                    self.fail("the run ended before the kill:\n%s\n%s"
                              % (out.decode(), err.decode()))
                time.sleep(0.05)
            self.fail("the rename was never made")
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            p.stdout.close()
            p.stderr.close()

    def test_kill_between_server_rename_and_index(self):
        """Renamed here; the run is killed once the server has renamed the
        folder and before the index followed. The next run moves the index
        (the intent says what was under way) without a transfer, and the
        one after is quiet."""
        self.seed("Lists/dev", 6, 16)
        cfg = self.config()
        self.sync(cfg)
        before = self.bodies("Lists/dev")
        self.rename_local("Lists/dev", "Lists/devel")
        self.killed_run(cfg, lambda: "Lists/devel" in self.dovecot.folders(self.user))
        self.assertNotIn("Lists/dev", self.dovecot.folders(self.user))
        p = self.sync(cfg, trace=True)
        self.assertEqual(summary(p), ZERO, p.stdout + p.stderr)
        self.assertIn("folder Lists/dev was renamed to Lists/devel on the server by an "
                      "interrupted run", p.stderr)
        self.assertEqual(self.server_bodies("Lists/devel"), before)
        self.assert_same("Lists/devel")
        self.assert_quiet(cfg)

    def test_kill_between_local_rename_and_index(self):
        """Renamed on the server; the run is killed once the local
        directory is renamed and before the index followed. The next run
        moves the index without a transfer; the one after is quiet."""
        self.seed("Archive", 6, 17)
        cfg = self.config()
        self.sync(cfg)
        before = self.bodies("Archive")
        self.server_rename("Archive", "Archive2023")
        new_dir = self.folder_dir("Archive2023")
        self.killed_run(cfg, lambda: os.path.isdir(new_dir))
        self.assertFalse(os.path.exists(self.folder_dir("Archive")))
        p = self.sync(cfg, trace=True)
        self.assertEqual(summary(p), ZERO, p.stdout + p.stderr)
        self.assertIn("folder Archive was renamed to Archive2023 here by an interrupted run",
                      p.stderr)
        self.assertEqual(self.bodies("Archive2023"), before)
        self.assert_same("Archive2023")
        self.assert_quiet(cfg)


for _name, _opts in PROFILES.items():
    for _layout in ("verbatim", "maildir++"):
        _cls = "Renames%s%s" % (_name, "" if _layout == "verbatim" else "Maildirpp")
        globals()[_cls] = type(_cls, (RenameScenarios, mstest.DovecotTestCase),
                               {"dovecot_options": _opts, "layout": _layout})


if __name__ == "__main__":
    mstest.main()
