#!/usr/bin/env python3
"""The first sync of a Maildir that already holds the mail (issue 10), against
a real Dovecot under the three capability profiles: the index is lost, or
the Maildir was written by mbsync or OfflineIMAP. mailsync must match the
local files to the server's messages (Message-ID and size, then the header
block where those cannot decide, tolerant of the X-TUID line mbsync adds and
of mbox-era Status lines), record the pairs as in sync, merge their flags as
a union, and copy only what one side alone holds, also when a run is killed
half-way through the matching.

The mbsync and OfflineIMAP scenarios run the real programs (Debian's isync
and offlineimap3); they are skipped, saying why, where those are not
installed."""

import os
import re
import shutil
import subprocess

import mailgen
import mstest
from synctest import PROFILES, SyncFixture, letters
from test_sync_more import simple

FLAG_LETTERS = set("DFPRST")
# Header fields that other programs add to the mail they store (mbsync's
# X-TUID; mutt's mbox past) and that mailsync leaves in the file.
ADDED = re.compile(rb"^(X-TUID|Status|X-Status)[ \t]*:.*\n([ \t].*\n)*", re.I | re.M)


def without_added_lines(lf_bytes):
    """The message as the server holds it: without the header lines other
    programs added to the stored copy."""
    head, sep, body = lf_bytes.partition(b"\n\n")
    return ADDED.sub(b"", head + b"\n")[:-1] + sep + body


def local_view(folder_dir):
    """{unique name: (letters, bytes)} of a Maildir folder; the flags are
    read from the name in new/ too (OfflineIMAP puts flagged mail there)."""
    out = {}
    for sub in ("new", "cur"):
        d = os.path.join(folder_dir, sub)
        for name in os.listdir(d) if os.path.isdir(d) else ():
            if name.startswith("."):
                continue
            unique, _, info = name.partition(":2,")
            with open(os.path.join(d, name), "rb") as f:
                out[unique] = ("".join(sorted(set(info) & FLAG_LETTERS)), f.read())
    return out


def snapshot(paths):
    """{path: (bytes, mtime_ns)} of files, to prove they were not touched."""
    out = {}
    for p in paths:
        st = os.stat(p)
        with open(p, "rb") as f:
            out[p] = (f.read(), st.st_mtime_ns)
    return out


def dotfiles(root):
    """Every file under root whose name starts with '.' (mbsync's state)."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files if f.startswith(".")]
    return sorted(found)


def all_files(root):
    found = []
    for dirpath, _dirs, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files]
    return sorted(found)


class AdoptScenarios(SyncFixture):

    # ---- views -------------------------------------------------------------------

    def sides(self, folder):
        """(server, local) as {comparable bytes: letters}; a message held
        twice on a side fails the test."""
        srv, loc = {}, {}
        for _u, f, b in self.server(folder):
            key = mstest.crlf_to_lf(b)
            self.assertNotIn(key, srv, "duplicate on the server in %s: %r" % (folder, key[:80]))
            srv[key] = letters(f)
        for _u, (fl, b) in local_view(self.folder_dir(folder)).items():
            key = without_added_lines(mstest.crlf_to_lf(b))
            self.assertNotIn(key, loc, "duplicate locally in %s: %r" % (folder, key[:80]))
            loc[key] = fl
        return srv, loc

    def union(self, folder):
        """What a flag-union merge of the two sides gives, per message."""
        srv, loc = self.sides(folder)
        out = dict(srv)
        for k, fl in loc.items():
            out[k] = "".join(sorted(set(out.get(k, "")) | set(fl)))
        return out

    def assert_sides(self, folder, want):
        srv, loc = self.sides(folder)
        self.assertEqual(len(srv), len(want), "server message count in %s" % folder)
        self.assertEqual(srv, want, "server messages or flags in %s" % folder)
        self.assertEqual(loc, want, "local messages or flags in %s" % folder)

    def server_uids(self, folder):
        return sorted(u for u, _f, _b in self.server(folder))

    def drop_index(self):
        shutil.rmtree(os.path.join(self.tmp, "state", "a"))

    def assert_quiet_rerun(self, cfg):
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.assertNotIn("matched", p.stdout)

    # ---- the index is lost -----------------------------------------------------------

    def test_lost_index_matches_and_merges_flags(self):
        """After a full sync the index is deleted while flags change on both
        sides: the next run matches every message (nothing downloaded or
        uploaded, no file renamed but for flags, no UID added), and each
        message ends with the union of both sides' flags."""
        inbox = mailgen.generate(24, seed=101, max_size=6000)
        archive = mailgen.generate(8, seed=102, max_size=6000)
        self.dovecot.save_many(self.user, "INBOX", inbox,
                               ["\\Seen", "", "\\Flagged", "\\Seen \\Answered"] * 6)
        self.dovecot.save_many(self.user, "Archive", archive, "\\Seen")
        cfg = self.config()
        self.sync(cfg)
        self.assert_same("INBOX")
        self.assert_same("Archive")

        # Changes on both sides while the index is gone, some on one
        # message from both sides.
        self.drop_index()
        uids = self.server_uids("INBOX")
        self.store("INBOX", uids[1], "+FLAGS", "\\Seen")
        self.store("INBOX", uids[2], "-FLAGS", "\\Flagged")
        self.store("INBOX", uids[4], "+FLAGS", "\\Flagged")
        self.store("Archive", self.server_uids("Archive")[0], "+FLAGS", "$Forwarded")
        def unique(i):
            return self.unique_of("INBOX", mstest.crlf_to_lf(inbox[i]))
        self.set_local_flags("INBOX", unique(5), "FRS")
        self.set_local_flags("INBOX", unique(3), "")  # \Seen and \Answered taken away locally
        self.set_local_flags("INBOX", unique(4), "DS")
        want_inbox, want_archive = self.union("INBOX"), self.union("Archive")
        names_before = {f: set(local_view(self.folder_dir(f))) for f in ("INBOX", "Archive")}
        uids_before = {f: self.server_uids(f) for f in ("INBOX", "Archive")}

        # A dry run says what would happen and changes nothing.
        sides = self.sides("INBOX")
        p = self.sync(cfg, "--dry-run")
        self.assertIn("INBOX: 24 matched with the server, 0 to download, 0 to upload", p.stdout)
        self.assertEqual(self.sides("INBOX"), sides)

        p = self.sync(cfg)
        self.assertIn("INBOX: 24 matched with the server, 0 downloaded, 0 uploaded", p.stdout)
        self.assertIn("Archive: 8 matched with the server, 0 downloaded, 0 uploaded", p.stdout)
        self.assertIn("\u2193 0 new", p.stdout)
        self.assertIn("\u2191 0 new", p.stdout)
        for f, want in (("INBOX", want_inbox), ("Archive", want_archive)):
            self.assert_sides(f, want)
            self.assertEqual(set(local_view(self.folder_dir(f))), names_before[f])
            self.assertEqual(self.server_uids(f), uids_before[f])
        # A flag set on either side won; none was taken away.
        srv, _loc = self.sides("INBOX")
        for i, fl in ((1, "S"), (2, "F"), (3, "RS"), (4, "DFS"), (5, "FRS"), (6, "F")):
            self.assertEqual(srv[mstest.crlf_to_lf(inbox[i])], fl, "message %d" % i)
        self.assert_quiet_rerun(cfg)

    # ---- Maildirs written by other tools ---------------------------------------------

    def local_changes(self, folder):
        """A few flag changes as mutt makes them (the name's unique part is
        kept), one on the server (so that mailsync renames one of the
        tool's files), one message delivered only locally, one only on the
        server. Returns the new messages (local, server)."""
        view = sorted(local_view(self.folder_dir(folder)).items())
        for (unique, (fl, _b)), add in zip(view[:3], ("S", "F", "RS")):
            path = self.local_file(folder, unique)
            new = "".join(sorted(set(fl) | set(add)))
            os.rename(path, os.path.join(self.folder_dir(folder), "cur", unique + ":2," + new))
        uid = self.server_uids(folder)[-1]
        self.store(folder, uid, "+FLAGS", "\\Draft")
        only_local = mstest.crlf_to_lf(simple(b"written offline", b"local only\r\n",
                                              msgid=b"<offline@example.org>"))
        self.deliver_local(folder, only_local, "1700000001.M1P1.mutt")
        only_server = simple(b"arrived meanwhile", b"server only\r\n",
                             msgid=b"<there@example.org>")
        self.dovecot.save(self.user, folder, only_server, "\\Flagged")
        return only_local, mstest.crlf_to_lf(only_server)

    def seed_for_tool(self):
        inbox = mailgen.generate(12, seed=111, max_size=8000)
        archive = mailgen.generate(5, seed=112, max_size=8000)
        self.dovecot.save_many(self.user, "INBOX", inbox,
                               ["", "\\Seen", "\\Flagged", "\\Answered \\Seen"] * 3)
        self.dovecot.save_many(self.user, "Archive", archive, "\\Seen")

    def run_tool(self, *args):
        r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, "%s failed:\n%s" % (args[0], r.stdout))

    def first_mailsync_run(self, state_files, names_must_stay):
        """Runs mailsync on the Maildir another tool wrote and checks the
        outcome the issue asks for."""
        want_inbox, want_archive = self.union("INBOX"), self.union("Archive")
        before = snapshot(state_files)
        n_inbox, n_archive = len(self.server("INBOX")), len(self.server("Archive"))
        cfg = self.config()
        p = self.sync(cfg)
        self.assertIn("INBOX: 12 matched with the server, 1 downloaded, 1 uploaded", p.stdout)
        self.assertIn("Archive: 5 matched with the server, 0 downloaded, 0 uploaded", p.stdout)
        self.assertIn("\u2193 1 new", p.stdout)
        self.assertIn("\u2191 1 new", p.stdout)
        # Server counts unchanged but for the one upload.
        self.assertEqual(len(self.server("INBOX")), n_inbox + 1)
        self.assertEqual(len(self.server("Archive")), n_archive)
        self.assert_sides("INBOX", want_inbox)
        self.assert_sides("Archive", want_archive)
        # The tool's state files are untouched, and its file names (with
        # their ,U= and ,FMD5= parts) kept: it can still find its messages.
        self.assertEqual(snapshot(state_files), before)
        for folder, names in names_must_stay.items():
            self.assertTrue(names <= set(local_view(self.folder_dir(folder))),
                            names - set(local_view(self.folder_dir(folder))))
        self.assert_quiet_rerun(cfg)

    def test_mbsync_maildir(self):
        """A Maildir written by mbsync (SubFolders Verbatim, X-TUID in every
        message, .mbsyncstate and .uidvalidity in every folder, ,U= in the
        names) is taken over without a copy."""
        if shutil.which("mbsync") is None:
            self.skipTest("mbsync is not installed (Debian package isync)")
        self.seed_for_tool()
        os.makedirs(self.maildir)
        rc = os.path.join(self.tmp, "mbsyncrc")
        with open(rc, "w") as f:
            f.write("IMAPAccount t\nHost localhost\nPort %d\nUser %s\nPass %s\nSSLType IMAPS\n"
                    "CertificateFile %s\n\nIMAPStore remote\nAccount t\n\n"
                    "MaildirStore local\nPath %s/\nInbox %s/INBOX\nSubFolders Verbatim\n\n"
                    "Channel ch\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\n"
                    "SyncState *\n"
                    % (self.dovecot.port_imaps, self.user, self.dovecot.users[self.user],
                       self.dovecot.ca_cert, self.maildir, self.maildir))
        self.run_tool("mbsync", "-c", rc, "-a")
        view = local_view(self.folder_dir("INBOX"))
        self.assertEqual(len(view), 12)
        self.assertTrue(all(b"\nX-TUID: " in b for _fl, b in view.values()),
                        "mbsync no longer adds X-TUID: this test lost its point")
        self.assertTrue(all(",U=" in u for u in view))
        state = dotfiles(self.maildir)
        self.assertIn(os.path.join(self.folder_dir("INBOX"), ".mbsyncstate"), state)
        self.assertIn(os.path.join(self.folder_dir("INBOX"), ".uidvalidity"), state)
        names = {f: set(local_view(self.folder_dir(f))) for f in ("INBOX", "Archive")}
        self.local_changes("INBOX")
        self.first_mailsync_run(state, names)

    def test_offlineimap_maildir(self):
        """A Maildir written by OfflineIMAP (,U= and ,FMD5= in the names,
        flags on files in new/, its state outside the Maildir) is taken over
        without a copy."""
        if shutil.which("offlineimap") is None:
            self.skipTest("offlineimap is not installed (Debian package offlineimap3)")
        self.seed_for_tool()
        meta = os.path.join(self.tmp, "offlineimap")
        rc = os.path.join(self.tmp, "offlineimaprc")
        with open(rc, "w") as f:
            f.write("[general]\naccounts = t\nmetadata = %s\n\n[Account t]\nlocalrepository = L\n"
                    "remoterepository = R\n\n[Repository L]\ntype = Maildir\nlocalfolders = %s\n"
                    "sep = /\n\n[Repository R]\ntype = IMAP\nremotehost = localhost\n"
                    "remoteport = %d\nremoteuser = %s\nremotepass = %s\nssl = yes\n"
                    "sslcacertfile = %s\n"
                    % (meta, self.maildir, self.dovecot.port_imaps, self.user,
                       self.dovecot.users[self.user], self.dovecot.ca_cert))
        self.run_tool("offlineimap", "-c", rc, "-o", "-u", "basic")
        view = local_view(self.folder_dir("INBOX"))
        self.assertEqual(len(view), 12)
        self.assertTrue(all(",U=" in u and ",FMD5=" in u for u in view))
        state = all_files(meta) + dotfiles(self.maildir)
        self.assertTrue(state)
        names = {f: set(local_view(self.folder_dir(f))) for f in ("INBOX", "Archive")}
        self.local_changes("INBOX")
        self.first_mailsync_run(state, names)

    # ---- look-alikes and the lines other tools add -----------------------------------

    def test_lookalikes_matched_by_header_never_crossed(self):
        """Messages without a Message-ID and messages sharing one (each pair
        of one size) are told apart by their header blocks: every local
        file is paired with its own server message, which the flags prove
        (each side's flags differ per message, and the result is each
        message's own union). Local copies with an X-TUID line (at the top
        or the bottom of the header) or a Status line, and a server copy
        with an X-TUID line, still match."""
        plain = [
            simple(b"no id A", b"same body\r\n"),
            simple(b"no id B", b"same body\r\n"),
            simple(b"dup id A", b"same body\r\n", msgid=b"<dup@example.org>"),
            simple(b"dup id B", b"same body\r\n", msgid=b"<dup@example.org>"),
            simple(b"tuid last", b"body 5\r\n", msgid=b"<t5@example.org>"),
            simple(b"tuid first", b"body 6\r\n"),
            simple(b"status", b"body 7\r\n", msgid=b"<s7@example.org>"),
        ]
        # The server's copy of one carries the line mbsync adds on upload.
        server_tuid = simple(b"server tuid", b"body 8\r\n", msgid=b"<t8@example.org>",
                             extra=b"X-TUID: srvtuid12345\r\n")
        srv_msgs = plain + [server_tuid]
        srv_flags = ["\\Seen", "\\Flagged", "\\Answered", "", "\\Seen", "", "\\Flagged", ""]
        self.dovecot.save_many(self.user, "INBOX", srv_msgs, srv_flags)
        local = [mstest.crlf_to_lf(m) for m in plain]
        local[4] = local[4].replace(b"\n\n", b"\nX-TUID: abcdefghijkl\n\n", 1)
        local[5] = b"X-TUID: mnopqrstuvwx\n" + local[5]
        local[6] = local[6].replace(b"\n\n", b"\nStatus: RO\nX-Status: A\n\n", 1)
        local.append(mstest.crlf_to_lf(simple(b"server tuid", b"body 8\r\n",
                                              msgid=b"<t8@example.org>")))
        local_flags = ["", "", "S", "F", "F", "R", "", "S"]
        for i, (data, fl) in enumerate(zip(local, local_flags)):
            self.deliver_local("INBOX", data, "17000000%02d.M%dP1.host" % (i, i))
            if fl:
                self.set_local_flags("INBOX", "17000000%02d.M%dP1.host" % (i, i), fl)
        want = {}
        for i, m in enumerate(srv_msgs):
            want[mstest.crlf_to_lf(m)] = "".join(sorted(set(letters(srv_flags[i].split())) |
                                                        set(local_flags[i])))
        names = set(local_view(self.folder_dir("INBOX")))
        cfg = self.config(folders=["INBOX"])
        p = self.sync(cfg)
        self.assertIn("INBOX: 8 matched with the server, 0 downloaded, 0 uploaded", p.stdout)
        srv = {mstest.crlf_to_lf(b): letters(f) for _u, f, b in self.server("INBOX")}
        self.assertEqual(srv, want)
        loc = {u: fl for u, (fl, _b) in local_view(self.folder_dir("INBOX")).items()}
        self.assertEqual(set(loc), names)
        for i in range(len(local)):
            self.assertEqual(loc["17000000%02d.M%dP1.host" % (i, i)],
                             want[mstest.crlf_to_lf(srv_msgs[i])], "message %d" % i)
        self.assert_quiet_rerun(cfg)

    # ---- kill -9 ----------------------------------------------------------------------

    def run_until(self, cfg, pattern):
        """Runs `mailsync -vv sync a` and kills it with SIGKILL as soon as
        its protocol trace shows pattern; returns whether it did (a run
        that ended first is fine too: it then finished cleanly)."""
        p = subprocess.Popen([mstest.mailsync_bin(), "-vv", "--config", cfg, "sync", "a"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             errors="replace")
        killed = False
        try:
            for line in p.stderr:
                if re.search(pattern, line):
                    p.kill()
                    killed = True
                    break
        finally:
            p.stderr.close()
            p.wait(timeout=120)
        return killed

    def test_kill9_during_matching(self):
        """A run killed while it lists the server for matching, while it
        fetches header blocks, and while it merges flags after recording
        the matches, followed by a clean run: no message is copied on
        either side and the flags end as the union."""
        msgs = mailgen.generate(150, seed=121, max_size=3000)
        # Look-alikes so that header blocks are fetched.
        msgs += [simple(b"no id %d" % i, b"same body\r\n") for i in range(4)]
        self.dovecot.save_many(self.user, "INBOX", msgs, ["\\Seen", "", "\\Flagged"] * 51 + [""])
        cfg = self.config(folders=["INBOX"])
        self.sync(cfg)
        self.drop_index()
        for unique, _fl, _b in self.local("INBOX")[::7]:
            self.set_local_flags("INBOX", unique, "DR")
        want = self.union("INBOX")
        uids = self.server_uids("INBOX")
        names = set(local_view(self.folder_dir("INBOX")))
        kills = 0
        for pattern in (r"C: \S+ UID FETCH 1:\* \(.*HEADER\.FIELDS \(MESSAGE-ID\)",
                        r"C: \S+ UID FETCH \S+ \(UID BODY\.PEEK\[HEADER\]\)",
                        r"C: \S+ UID STORE "):
            kills += self.run_until(cfg, pattern)
        self.assertEqual(kills, 3, "a kill point never came")
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new", p.stdout)
        self.assertIn("\u2191 0 new", p.stdout)
        self.assert_sides("INBOX", want)
        self.assertEqual(self.server_uids("INBOX"), uids)
        self.assertEqual(set(local_view(self.folder_dir("INBOX"))), names)
        self.assert_quiet_rerun(cfg)

    def test_kill9_before_first_records_of_new_folders(self):
        """A first sync of several folders writes no download intents (the
        index knows nothing of them): a run killed after the files are in
        place but before any record is written (at each of the first index
        commits, by strace's fault injection), followed by a clean run,
        leaves every message once on each side, nothing uploaded, and the
        flags as on the server."""
        strace = shutil.which("strace")
        if strace is None:
            self.skipTest("strace is not installed (tests/run installs it)")
        folders = ["F%d" % i for i in range(6)]
        for n, name in enumerate(folders):
            self.dovecot.create_folder(self.user, name)
            msgs = mailgen.generate(4, seed=300 + n, max_size=2000)
            self.dovecot.save_many(self.user, name, msgs, ["\\Seen", "", "\\Flagged", "\\Seen"])
        cfg = self.config(folders=folders)
        uids = {name: self.server_uids(name) for name in folders}
        want = {name: {mstest.crlf_to_lf(b): letters(f) for _u, f, b in self.server(name)}
                for name in folders}
        killed_with_files = 0
        for when in range(1, 5):
            shutil.rmtree(self.maildir, ignore_errors=True)
            shutil.rmtree(os.path.join(self.tmp, "state"), ignore_errors=True)
            p = subprocess.run([strace, "-f", "-o", "/dev/null", "-e", "trace=fdatasync",
                                "-e", "inject=fdatasync:signal=KILL:when=%d" % when,
                                mstest.mailsync_bin(), "--config", cfg, "sync", "a"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               errors="replace", timeout=120)
            if p.returncode == 0:
                continue  # the run had fewer commits than that: it finished
            files = sum(len(local_view(self.folder_dir(n))) for n in folders
                        if os.path.isdir(self.folder_dir(n)))
            if files > 0:
                killed_with_files += 1
            r = self.sync(cfg)
            self.assertIn("\u2191 0 new", r.stdout, "uploaded after kill at commit %d" % when)
            for name in folders:
                self.assert_sides(name, want[name])
                self.assertEqual(self.server_uids(name), uids[name])
            self.assert_quiet_rerun(cfg)
        self.assertGreater(killed_with_files, 0, "no kill came after files were in place")


for _name, _opts in PROFILES.items():
    globals()["Adopt" + _name] = type("Adopt" + _name, (AdoptScenarios, mstest.DovecotTestCase),
                                      {"dovecot_options": _opts})


if __name__ == "__main__":
    mstest.main()
