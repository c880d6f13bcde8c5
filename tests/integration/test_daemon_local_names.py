#!/usr/bin/env python3
"""The daemon's watches keep the names of the files another program
changed (daemon/daemon.c note_foreign), and a folder job looks at those
files alone when it can (sync/folder.c local_names_plain, delta_local,
delta_local_file). Attacker scenarios around those names, each ending
with both sides equal and a one-shot sync that finds nothing to do:
a file moved back to new/, keyword letters, a rename into another
identity, a file deleted and created again under its name, more names
than a watch keeps, an event on the directory itself, a server change
racing a rename of the same message, renames hammered while jobs run, a
message moved from cur/ back to new/ while a scan reads (store/maildir.c
md_scan reads new/ again), a name whose message was since removed with
its row, a rename racing an expunge, and a move to another folder
followed by a flag. Under QRESYNC (the job takes the names' rows by key)
and without CONDSTORE (the job reads the folder)."""

import os
import re
import threading
import time
import unittest

import mailgen
import mstest
from synctest import PROFILES, letters
from test_daemon import DaemonFixture

ALONE = "files changed by another program: scanning only what the delta names"


class LocalNamesScenarios(DaemonFixture):

    def qresync(self):
        return "imap_capability" not in self.dovecot_options

    def job_done(self, d, folder, counts, since):
        """As DaemonScenarios.job_done."""
        pat = re.compile(r"a: %s: [^\n]*%s[^\n]*\n" % (re.escape(folder), re.escape(counts)))
        m = self.wait_for("the job with %s" % counts, lambda: pat.search(d.log(), since), d)
        return m.end()

    def server_flags(self, uid, folder="INBOX"):
        got = [f for u, f, _b in self.server(folder) if u == uid]
        return got[0] if got else ["<gone>"]

    def settle(self, cfg, d):
        self.wait_state(cfg, d, "idle")
        time.sleep(0.5)
        self.wait_state(cfg, d, "idle")

    def begin(self, n, seed):
        msgs = mailgen.generate(n, seed=seed, max_size=2000)
        self.dovecot.save_many(self.user, "INBOX", msgs)
        cfg = self.daemon_config(folders=["INBOX"], poll_interval=3600, local_delay=0)
        d = self.start(cfg)
        self.wait_state(cfg, d, "idle")
        uids = [u for u, _f, _b in self.server("INBOX")]
        uniq = [self.unique_of("INBOX", mstest.crlf_to_lf(m)) for m in msgs]
        # A server change first: its job scans after the watches began, so
        # later jobs can be vouched for.
        self.store("INBOX", uids[-1], "+FLAGS", "\\Flagged")
        self.job_done(d, "INBOX", "\u2193 0 new, 1 flags, 0 deleted", len(d.log()))
        self.settle(cfg, d)
        return msgs, cfg, d, uids, uniq

    def assert_same_kw(self, name="INBOX"):
        """assert_same with keyword letters (lowercase) left out locally."""
        srv = sorted((mstest.crlf_to_lf(b), letters(f)) for _u, f, b in self.server(name))
        loc = sorted((b, "".join(c for c in fl if not c.islower()))
                     for _u, fl, b in self.local(name))
        self.assertEqual(srv, loc, "messages or flags differ in %s" % name)

    def finish_unscanned(self, cfg, d, uids):
        """A server change after the rest: its job does not read the
        folder (no stale name keeps every job scanning); then finish."""
        self.settle(cfg, d)
        since = len(d.log())
        self.store("INBOX", uids[1], "+FLAGS", "\\Flagged")
        after = self.job_done(d, "INBOX", "\u2193 0 new, 1 flags, 0 deleted", since)
        self.assertNotIn("scanning (", d.log()[since:after])
        self.finish(cfg, d)

    def finish(self, cfg, d):
        self.settle(cfg, d)
        self.assertEqual(d.stop(), 0, d.log()[-3000:])
        self.assert_same_kw("INBOX")
        self.assert_no_duplicates("INBOX")
        r = self.sync(cfg)
        self.assertIn("a: \u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      r.stdout, d.log()[-6000:])

    def test_moved_back_to_new(self):
        """Another program moves a read message back to new/ (unread): the
        \\Seen goes away on the server."""
        _msgs, cfg, d, uids, uniq = self.begin(3, 201)
        self.set_local_flags("INBOX", uniq[0], "S")
        self.wait_for("\\Seen up", lambda: "\\Seen" in self.server_flags(uids[0]), d)
        self.settle(cfg, d)
        path = self.local_file("INBOX", uniq[0])
        os.rename(path, os.path.join(self.folder_dir("INBOX"), "new", uniq[0]))
        self.wait_for("\\Seen gone", lambda: "\\Seen" not in self.server_flags(uids[0]), d)
        self.finish(cfg, d)

    def test_keyword_letter(self):
        """A keyword letter another program gives a file (dovecot-keywords
        already names it) goes up as the keyword; taking it away too."""
        _msgs, cfg, d, uids, uniq = self.begin(3, 202)
        self.store("INBOX", uids[0], "+FLAGS", "$Label1")
        self.wait_for("the letter on disk", lambda: any(
            u == uniq[0] and "a" in f for u, f, _b in self.local("INBOX")), d)
        self.settle(cfg, d)
        self.set_local_flags("INBOX", uniq[1], "Sa")
        self.wait_for("$Label1 up", lambda: "$Label1" in self.server_flags(uids[1]), d)
        self.settle(cfg, d)
        self.set_local_flags("INBOX", uniq[0], "")
        self.wait_for("$Label1 gone", lambda: "$Label1" not in self.server_flags(uids[0]), d)
        self.finish(cfg, d)

    def test_renamed_into_another_identity(self):
        """Another program renames a file to another identity: one message
        on each side, no duplicate."""
        _msgs, cfg, d, uids, uniq = self.begin(3, 203)
        path = self.local_file("INBOX", uniq[0])
        os.rename(path, os.path.join(self.folder_dir("INBOX"), "cur", "1765000001.M9P9.other:2,S"))
        time.sleep(2)
        self.finish(cfg, d)

    def test_deleted_and_recreated(self):
        """Another program removes a file and writes it again under the same
        name with other flags through tmp/ (a restore): the flags go up."""
        msgs, cfg, d, uids, uniq = self.begin(3, 204)
        path = self.local_file("INBOX", uniq[0])
        with open(path, "rb") as f:
            data = f.read()
        os.unlink(path)
        tmp = os.path.join(self.folder_dir("INBOX"), "tmp", uniq[0])
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.folder_dir("INBOX"), "cur", uniq[0] + ":2,FS"))
        self.wait_for("\\Flagged up", lambda: "\\Flagged" in self.server_flags(uids[0]), d)
        self.finish(cfg, d)

    def test_many_names_then_quiet(self):
        """One file moved between new/ and cur/ 40 times (80 names for one
        identity): the job scans; the next server change is looked at
        alone again (the names do not keep every job scanning)."""
        _msgs, cfg, d, uids, uniq = self.begin(3, 205)
        for i in range(40):
            self.set_local_flags("INBOX", uniq[0], "S" if i % 2 == 0 else "")
            if i % 2 == 1:
                p = self.local_file("INBOX", uniq[0])
                os.rename(p, os.path.join(self.folder_dir("INBOX"), "new", uniq[0]))
        self.set_local_flags("INBOX", uniq[0], "R")
        self.wait_for("\\Answered up", lambda: "\\Answered" in self.server_flags(uids[0]), d)
        self.finish_unscanned(cfg, d, uids)

    def test_directory_attrib(self):
        """An event on cur/ itself (its mode changed): the job scans once,
        and later jobs are not all scans."""
        _msgs, cfg, d, uids, uniq = self.begin(3, 206)
        cur = os.path.join(self.folder_dir("INBOX"), "cur")
        os.chmod(cur, 0o750)
        os.chmod(cur, 0o700)
        self.set_local_flags("INBOX", uniq[0], "S")
        self.wait_for("\\Seen up", lambda: "\\Seen" in self.server_flags(uids[0]), d)
        self.finish_unscanned(cfg, d, uids)

    def test_server_and_local_race(self):
        """A server flag and another program's rename of the same file, many
        times over: every flag ends on both sides."""
        _msgs, cfg, d, uids, uniq = self.begin(4, 207)
        flags = ["\\Flagged", "\\Answered", "\\Draft"]
        local = ["S", "ST", "SP"]
        for k in range(3):
            self.store("INBOX", uids[k], "+FLAGS", flags[k])
            cur = [f for u, f, _b in self.local("INBOX") if u == uniq[k]][0]
            self.set_local_flags("INBOX", uniq[k], "".join(sorted(set(cur) | set(local[k]))))
        self.settle(cfg, d)
        time.sleep(1)
        self.finish(cfg, d)

    def hammer(self, seq, pause, rounds):
        """Another program renames INBOX's first message through the
        names of seq ("new": back to new/) every `pause` seconds while
        `rounds` server changes keep jobs running; then sets PS on it.
        Returns (cfg, d, uid of the message at the start)."""
        _msgs, cfg, d, uids, uniq = self.begin(6, 208)
        stop = threading.Event()

        def run():
            i = 0
            while not stop.is_set():
                fl = seq[i % len(seq)]
                try:
                    p = self.local_file("INBOX", uniq[0])
                    if fl == "new":
                        os.rename(p, os.path.join(self.folder_dir("INBOX"), "new", uniq[0]))
                    else:
                        os.rename(p, os.path.join(self.folder_dir("INBOX"), "cur",
                                                  uniq[0] + ":2," + fl))
                except (OSError, AssertionError):
                    pass  # renamed under us by the daemon: again
                i += 1
                if pause:
                    time.sleep(pause)

        t = threading.Thread(target=run)
        t.start()
        try:
            for k in range(rounds):
                self.store("INBOX", uids[1 + k % 4], "+FLAGS" if k % 2 == 0 else "-FLAGS",
                           "\\Flagged")
                time.sleep(0.15)
        finally:
            stop.set()
            t.join()
        p = self.local_file("INBOX", uniq[0])
        os.rename(p, os.path.join(self.folder_dir("INBOX"), "cur", uniq[0] + ":2,PS"))
        self.wait_for("the last flags on the server", lambda: letters(
            self.server_flags(uids[0])) == "PS" or uids[0] not in [
                u for u, _f, _b in self.server("INBOX")], d)
        return cfg, d, uids[0]

    def test_hammered_while_jobs_run(self):
        """Another program renames one file over and over in cur/ (flags
        on and off, mutt-like) while server changes keep jobs running,
        most of them on the delta path with the file's names: once it
        stops, its last flags are on the server, under the same UID."""
        cfg, d, uid = self.hammer(["S", "", "RS", "F", "S", "DS"], 0.02, 12)
        self.assertIn(uid, [u for u, _f, _b in self.server("INBOX")], d.log()[-6000:])
        self.finish(cfg, d)

    def test_scan_sees_file_moving_cur_to_new(self):
        """A file another program moves from cur/ to new/ between the
        scan's read of new/ and its read of cur/ was in neither; on a file
        system where one pass is trusted whole the scan reported it
        deleted, the server copy was expunged and the file uploaded again
        under a new UID. md_scan now reads new/ again when it changed. A
        race of two getdents calls: it failed in most runs without the fix,
        in the profiles where every job scans."""
        cfg, d, uid = self.hammer(["S", "new"], 0.01, 16)
        self.assertIn(uid, [u for u, _f, _b in self.server("INBOX")],
                      "the message was expunged on the server and uploaded again:\n"
                      + "\n".join(l for l in d.log().splitlines()
                                  if "INBOX: \u2193" in l and "deleted; \u2191 0 new, 0 flags, 0 deleted" not in l))
        self.finish(cfg, d)

    def test_name_of_a_message_since_removed(self):
        """Another program marks a message read (its names are kept), the
        job pushes it; then the server expunges it and the job removes the
        file and its row. The next job, for a server change elsewhere, has
        nothing of that message left to look at: its names (no row, no
        file) must not send it the whole way as "a file new to the
        folder"."""
        _msgs, cfg, d, uids, uniq = self.begin(4, 212)
        self.set_local_flags("INBOX", uniq[0], "S")
        self.wait_for("\\Seen up", lambda: "\\Seen" in self.server_flags(uids[0]), d)
        self.settle(cfg, d)
        since = len(d.log())
        self.expunge("INBOX", [uids[0]])
        since = self.job_done(d, "INBOX", "\u2193 0 new, 0 flags, 1 deleted", since)
        self.settle(cfg, d)
        self.store("INBOX", uids[1], "+FLAGS", "\\Flagged")
        after = self.job_done(d, "INBOX", "\u2193 0 new, 1 flags, 0 deleted", since)
        if self.qresync():
            self.assertNotIn("scanning (a file new to the folder)", d.log()[since:after])
            self.assertIn("scanning only what the delta names", d.log()[since:after])
        self.finish(cfg, d)

    def test_renamed_while_expunged(self):
        """Another program flags a message the server expunges at the same
        time: it is not lost (copied back or parked), and no duplicate."""
        msgs, cfg, d, uids, uniq = self.begin(4, 209)
        self.expunge("INBOX", [uids[0]])
        self.set_local_flags("INBOX", uniq[0], "F")
        time.sleep(2)
        self.settle(cfg, d)
        self.assertEqual(d.stop(), 0, d.log()[-3000:])
        self.assert_same_kw("INBOX")
        self.assert_no_duplicates("INBOX")

    def test_move_to_other_folder_then_flag(self):
        """mutt moves a message from INBOX to Archive and flags it there,
        while INBOX is vouched for (a server change since the watches
        began): the job that finds the file gone must pair the move (UID
        MOVE), not expunge it in INBOX and upload it into Archive as new
        (the scan after the SELECT, lazy_scan, skipped moves_start); the
        flag on the server, nothing duplicated."""
        msgs = mailgen.generate(3, seed=210, max_size=2000)
        self.dovecot.save_many(self.user, "INBOX", msgs)
        self.dovecot.save_many(self.user, "Archive", mailgen.generate(1, seed=211, max_size=2000))
        cfg = self.daemon_config(folders=["INBOX", "Archive"], poll_interval=3600, local_delay=0)
        d = self.start(cfg)
        self.wait_state(cfg, d, "idle")
        uids = [u for u, _f, _b in self.server("INBOX")]
        uniq = [self.unique_of("INBOX", mstest.crlf_to_lf(m)) for m in msgs]
        # A server change in INBOX: its job scans after the watches began,
        # so later INBOX jobs are vouched for.
        self.store("INBOX", uids[0], "+FLAGS", "\\Flagged")
        self.job_done(d, "INBOX", "\u2193 0 new, 1 flags, 0 deleted", len(d.log()))
        self.settle(cfg, d)
        src = self.local_file("INBOX", uniq[1])
        dst = os.path.join(self.folder_dir("Archive"), "cur", uniq[1] + ":2,S")
        os.rename(src, dst)
        os.rename(dst, os.path.join(self.folder_dir("Archive"), "cur", uniq[1] + ":2,FS"))
        body = mstest.crlf_to_lf(msgs[1])
        self.wait_for("the message flagged in Archive on the server", lambda: any(
            mstest.crlf_to_lf(b) == body and "\\Flagged" in f
            for _u, f, b in self.server("Archive")), d)
        self.settle(cfg, d)
        time.sleep(1)
        self.assertEqual(d.stop(), 0, d.log()[-3000:])
        # A server move (UID MOVE), not an expunge in INBOX and an upload
        # into Archive.
        self.assertIn("1 moved between folders", d.log(), d.log()[-6000:])
        self.assertNotRegex(d.log(), r"a: Archive: [^\n]*\u2191 1 new")
        self.assertNotRegex(d.log(), r"a: INBOX: [^\n]*\u2191 0 new, \d+ flags, 1 deleted")
        for f in ("INBOX", "Archive"):
            self.assert_same_kw(f)
            self.assert_no_duplicates(f)
        self.assertEqual(len(self.server("INBOX")), 2)


for _name in ("Qresync", "Fallback"):
    globals()["LocalNames" + _name] = type("LocalNames" + _name,
                                           (LocalNamesScenarios, mstest.DovecotTestCase),
                                           {"dovecot_options": PROFILES[_name]})


if __name__ == "__main__":
    mstest.main()
