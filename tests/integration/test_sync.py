#!/usr/bin/env python3
"""Two-way IMAP <-> Maildir sync (issue 4) against a real Dovecot, through
`mailsync --config CFG sync [--dry-run] [--force] ACCOUNT`.

Every scenario runs under the three capability profiles of synctest.PROFILES:
a Dovecot with QRESYNC/CONDSTORE and LIST-STATUS (SyncQresync), one with
CONDSTORE only, as Gmail offers (SyncCondstore: flag changes by CHANGEDSINCE,
expunges by UID SEARCH), and one that hides them all (SyncFallback), so the
QRESYNC delta path, the CONDSTORE delta path and the full-listing path are
all covered. SyncMaildirpp runs them once more with the Maildir++ layout."""

import collections
import os
import re
import shutil
import time
import unittest

import mailgen
import mstest
from dovecot import Dovecot
from synctest import CONDSTORE_CAPS, FALLBACK_CAPS, SyncFixture, letters

FOLDERS = ["INBOX", "Lists/dev", "Archive/2023", "Entwürfe"]
NOTHING = "\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted"


class SyncScenarios(SyncFixture):
    """Scenarios shared by every server profile (each test with its own
    Dovecot user, see SyncFixture)."""

    def seed(self, n=12, seed=1, folders=FOLDERS):
        corpus = mailgen.corpus(n, seed=seed, folders=folders, max_size=60000)
        for folder, msgs in corpus.items():
            flags = [["", "\\Seen", "\\Seen \\Flagged", "\\Answered $Forwarded", "\\Draft"][i % 5]
                     for i in range(len(msgs))]
            self.dovecot.save_many(self.user, folder, msgs, flags)
        return corpus

    # ---- scenarios ----------------------------------------------------------

    def test_initial_download_and_rerun(self):
        corpus = self.seed(16)
        cfg = self.config()
        p = self.sync(cfg)
        self.assertIn("16 new", p.stdout)
        for folder, msgs in corpus.items():
            self.assert_same(folder)
            bodies = sorted(b for _u, _f, b in self.local(folder))
            self.assertEqual(bodies, sorted(mstest.crlf_to_lf(m) for m in msgs))
        self.assertTrue(os.path.isdir(os.path.join(self.folder_dir("Entwürfe"), "cur")))
        before = {f: self.local(f) for f in corpus}
        p = self.sync(cfg)
        self.assertIn("0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted", p.stdout)
        for f in corpus:
            self.assertEqual(self.local(f), before[f])
            self.assert_same(f)

    def test_new_on_server(self):
        self.seed(4, folders=["INBOX"])
        cfg = self.config()
        self.sync(cfg)
        msg = mailgen.message(seed=9, index=1, size=3000)
        self.dovecot.save(self.user, "INBOX", msg, "\\Flagged")
        p = self.sync(cfg)
        self.assertIn("1 new", p.stdout)
        self.assert_same()
        self.assertEqual(len(self.local()), 5)

    def test_new_locally_appended_once(self):
        self.seed(3, folders=["INBOX"])
        cfg = self.config()
        self.sync(cfg)
        msg = mstest.crlf_to_lf(mailgen.message(seed=5, index=2, size=5000))
        self.deliver_local("INBOX", msg, "1700000000.M1P1.mutt")
        p = self.sync(cfg)
        self.assertIn("\u2191 1 new", p.stdout)
        srv = self.server()
        self.assertEqual(len(srv), 4)
        self.assertEqual(sum(1 for _u, _f, b in srv if mstest.crlf_to_lf(b) == msg), 1)
        self.sync(cfg)
        self.sync(cfg)
        self.assertEqual(len(self.server()), 4)
        self.assertEqual(len(self.local()), 4)
        self.assert_same()

    def test_flags_both_ways_and_merge(self):
        self.seed(6, folders=["INBOX"])  # flags: "", S, SF, RP, D, ""
        cfg = self.config()
        self.sync(cfg)
        srv = self.server()
        by_uid = {u: b for u, _f, b in srv}
        loc = {mstest.crlf_to_lf(b): u for u, _f, b in self.local()}
        uniq = {uid: loc[mstest.crlf_to_lf(b)] for uid, b in by_uid.items()}
        uids = sorted(by_uid)
        # Server side: uid0 read; local side: uid1 flagged (keeps S) ;
        # both on uid2: server removes \Flagged, local adds R.
        self.store("INBOX", uids[0], "+FLAGS", "\\Seen")
        self.set_local_flags("INBOX", uniq[uids[1]], "FS")
        self.store("INBOX", uids[2], "-FLAGS", "\\Flagged")
        self.set_local_flags("INBOX", uniq[uids[2]], "FRS")
        self.sync(cfg)
        flags = {u: letters(f) for u, f, _b in self.server()}
        self.assertEqual(flags[uids[0]], "S")
        self.assertEqual(flags[uids[1]], "FS")
        self.assertEqual(flags[uids[2]], "RS")  # F removed there, R added here
        self.assert_same()
        p = self.sync(cfg)
        self.assertIn("0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags", p.stdout)

    def test_keywords_both_ways(self):
        self.seed(2, folders=["INBOX"])
        cfg = self.config()
        self.sync(cfg)
        uids = [u for u, _f, _b in self.server()]
        self.store("INBOX", uids[0], "+FLAGS", "work")
        self.sync(cfg)
        with open(os.path.join(self.folder_dir("INBOX"), "dovecot-keywords")) as f:
            kw = {name: int(n) for n, name in (ln.split(None, 1) for ln in f.read().splitlines())}
        letter = chr(ord("a") + kw["work"])
        flagged = [fl for _u, fl, _b in self.local() if letter in fl]
        self.assertEqual(len(flagged), 1)
        # Locally: take the keyword away again (rename, keeping other letters).
        unique = [u for u, fl, _b in self.local() if letter in fl][0]
        path = self.local_file("INBOX", unique)
        info = path.split(":2,")[1].replace(letter, "")
        self.set_local_flags("INBOX", unique, info)
        self.sync(cfg)
        self.assertFalse(any("work" in f for _u, f, _b in self.server()))

    def test_delete_on_server(self):
        self.seed(5, folders=["INBOX"])
        cfg = self.config()
        self.sync(cfg)
        uids = [u for u, _f, _b in self.server()]
        self.expunge("INBOX", uids[:2])
        p = self.sync(cfg)
        self.assertIn("2 deleted", p.stdout)
        self.assertEqual(len(self.local()), 3)
        self.assert_same()

    def _delete_locally(self, mode):
        self.seed(5, folders=["INBOX"])
        if mode == "trash":
            self.dovecot.create_folder(self.user, "Trash")
        cfg = self.config(on_local_delete=mode, **({"trash": "Trash"} if mode == "trash" else {}))
        self.sync(cfg)
        victim = self.local()[0]
        os.unlink(self.local_file("INBOX", victim[0]))
        p = self.sync(cfg)
        self.assertIn("\u2191 0 new, 0 flags, 1 deleted", p.stdout)
        return victim

    def test_delete_locally_expunge(self):
        victim = self._delete_locally("expunge")
        self.assertEqual(len(self.server()), 4)
        self.assert_same()
        self.sync(self.config(on_local_delete="expunge"))
        self.assertEqual(len(self.server()), 4)

    def test_delete_locally_trash(self):
        victim = self._delete_locally("trash")
        self.assertEqual(len(self.server()), 4)
        trash = self.server("Trash")
        self.assertEqual([mstest.crlf_to_lf(b) for _u, _f, b in trash], [victim[2]])

    def test_delete_locally_flag(self):
        self._delete_locally("flag")
        srv = self.server()
        self.assertEqual(len(srv), 5)
        self.assertEqual(sum(1 for _u, f, _b in srv if "\\Deleted" in f), 1)
        # Not downloaded again.
        cfg = self.config(on_local_delete="flag")
        self.sync(cfg)
        self.assertEqual(len(self.local()), 4)

    def test_mass_delete_guard_and_force(self):
        msgs = mailgen.generate(24, seed=3, max_size=4000)
        self.dovecot.save_many(self.user, "INBOX", msgs)
        cfg = self.config()
        self.sync(cfg)
        uids = [u for u, _f, _b in self.server()]
        self.expunge("INBOX", uids[:15])
        p = self.sync(cfg, ok=False)
        self.assertNotEqual(p.returncode, 0)
        out = p.stdout + p.stderr
        self.assertIn("INBOX", out)
        self.assertIn("mailsync sync --force a", out)
        self.assertEqual(len(self.local()), 24)
        p = self.sync(cfg, "--force")
        self.assertEqual(len(self.local()), 9)
        self.assert_same()

    def test_dry_run_changes_nothing(self):
        self.seed(5, folders=["INBOX"])
        cfg = self.config()
        p = self.sync(cfg, "--dry-run")
        self.assertIn("download uid", p.stdout)
        self.assertEqual(mstest.maildir_folders(self.maildir) if os.path.isdir(self.maildir)
                         else [], [])
        self.sync(cfg)
        self.deliver_local("INBOX", b"Subject: x\nMessage-ID: <dry@x>\n\nbody\n", "1.dry.host")
        before = self.server()
        p = self.sync(cfg, "--dry-run")
        self.assertIn("upload 1.dry.host", p.stdout)
        self.assertEqual(self.server(), before)

    def make_local_folder(self, name):
        """A new local folder as a mail client makes it (cur/ new/ tmp/, and
        maildirfolder in a Maildir++ subfolder)."""
        d = self.folder_dir(name)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(d, sub))
        if self.layout == "maildir++":
            open(os.path.join(d, "maildirfolder"), "w").close()

    def assert_quiet_rerun(self, cfg, folders):
        """One more run: exit 0 (self.sync checks it), nothing moved either
        way, no folder appeared or vanished on either side, and both sides
        of each folder in folders are equal."""
        srv_folders = sorted(self.dovecot.folders(self.user))
        loc_folders = mstest.maildir_folders(self.maildir)
        before = {f: self.local(f) for f in folders}
        p = self.sync(cfg)
        self.assertIn(NOTHING, p.stdout)
        self.assertEqual(p.stderr, "")
        self.assertEqual(sorted(self.dovecot.folders(self.user)), srv_folders)
        self.assertEqual(mstest.maildir_folders(self.maildir), loc_folders)
        for f in folders:
            self.assertEqual(self.local(f), before[f], "local files changed in %s" % f)
            self.assert_same(f)

    def test_folder_created_locally(self):
        self.seed(2, folders=["INBOX"])
        cfg = self.config()
        self.sync(cfg)
        self.make_local_folder("Projects/alpha")
        self.deliver_local("Projects/alpha", b"Subject: p\nMessage-ID: <p@x>\n\nproject\n", "2.p.h")
        self.sync(cfg)
        self.assertIn("Projects/alpha", self.dovecot.folders(self.user))
        self.assertEqual(len(self.server("Projects/alpha")), 1)
        self.assert_same("Projects/alpha")
        self.assert_quiet_rerun(cfg, ["INBOX", "Projects/alpha"])

    def test_non_ascii_nested_folder_created_locally_then_resynced(self):
        """Issue 9, item 3: a folder made here with a non-ASCII nested name
        and two messages is created on the server and uploaded, and every
        later run leaves it alone with exit 0. Under CONDSTORE without
        QRESYNC the later runs used to send `UID SEARCH RETURN (ALL) UID
        1:0` (an inverted range the server answers BAD), exit 1."""
        self.seed(2, folders=["INBOX"])
        cfg = self.config()
        self.sync(cfg)
        name = "草稿/测试"
        msgs = [b"Subject: draft %d\nMessage-ID: <draft%d@x>\n\nentwurf %d\n" % (i, i, i)
                for i in range(2)]
        self.make_local_folder(name)
        for i, data in enumerate(msgs):
            self.deliver_local(name, data, "17000000%02d.M1P1.mutt" % i)
        p = self.sync(cfg)
        self.assertIn("\u2191 2 new", p.stdout)
        self.assertIn(name, self.dovecot.folders(self.user))
        self.assertEqual(sorted(mstest.crlf_to_lf(b) for _u, _f, b in self.server(name)), msgs)
        self.assert_same(name)
        for _ in range(2):
            self.assert_quiet_rerun(cfg, ["INBOX", name])

    def test_folder_created_empty_on_server_then_first_message(self):
        """A folder created on the server with nothing in it comes down as
        an empty Maildir folder, stays quiet on the next run, and its first
        message (UID 1, after a folder state recorded with UIDNEXT 1) comes
        down like any other."""
        self.seed(2, folders=["INBOX"])
        cfg = self.config()
        self.sync(cfg)
        name = "Projekte/Übersicht"
        self.dovecot.create_folder(self.user, name)
        p = self.sync(cfg)
        self.assertIn(NOTHING, p.stdout)
        self.assertTrue(os.path.isdir(os.path.join(self.folder_dir(name), "cur")))
        self.assertEqual(self.local(name), [])
        self.assert_quiet_rerun(cfg, ["INBOX", name])
        msg = mailgen.message(seed=11, index=1, size=2000)
        self.assertEqual(self.dovecot.save(self.user, name, msg, "\\Seen"), 1)
        p = self.sync(cfg)
        self.assertIn("\u2193 1 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.assertEqual([(f, b) for _u, f, b in self.local(name)],
                         [("S", mstest.crlf_to_lf(msg))])
        self.assert_same(name)
        self.assert_quiet_rerun(cfg, ["INBOX", name])


class SyncQresync(SyncScenarios, mstest.DovecotTestCase):
    pass


class SyncCondstore(SyncScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": CONDSTORE_CAPS}


class SyncFallback(SyncScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": FALLBACK_CAPS}


class SyncMaildirpp(SyncScenarios, mstest.DovecotTestCase):
    layout = "maildir++"


if __name__ == "__main__":
    mstest.main()
