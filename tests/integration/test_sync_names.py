#!/usr/bin/env python3
"""Folder names that cannot be synced must not stop an account, hang a run
or leave it half done: server folders whose names hold control characters
(raw in a quoted string, or encoded in modified UTF-7 as "&AAk-") and a
local folder whose name cannot be created on the server. Each is reported
by name; every other folder syncs. Each runs under the three capability
profiles of synctest.PROFILES (QRESYNC, CONDSTORE only, neither)."""

import os
import subprocess

import mstest
from synctest import CONDSTORE_CAPS, FALLBACK_CAPS


class NameScenarios:
    def make_server_folder(self, user, dirname):
        """A Maildir++ folder made by hand in the user's Dovecot Maildir,
        as another client or an admin might leave it."""
        md = os.path.join(self.dovecot.home(user), "Maildir", dirname)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "65534:65534", md], check=True)

    def test_server_folders_with_control_characters(self):
        user = "names"
        self.dovecot.add_user(user, "pw-names")
        self.dovecot.save(user, "INBOX", b"Subject: one\r\n\r\nbody\r\n")
        self.dovecot.save(user, "Lists/dev", b"Subject: two\r\n\r\nbody\r\n")
        self.make_server_folder(user, ".Tab\there")
        self.make_server_folder(user, ".Bell\x07x")
        acct = self.imap_account(user=user)
        acct["password"] = "pw-names"
        cfg = self.write_config({"a": acct})
        r = self.mailsync(cfg, "sync", timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("a: \u2193 2 new", r.stdout)
        self.assertIn("folder Tab&AAk-here is not synced: folder name contains a control character",
                      r.stderr)
        self.assertIn("folder Bell&AAc-x is not synced: folder name contains a control character",
                      r.stderr)
        # No control character reaches the terminal.
        self.assertNotIn("\x07", r.stderr + r.stdout)
        root = os.path.join(self.tmp, "Mail")
        self.assertEqual(len(mstest.maildir_messages(os.path.join(root, "INBOX"))), 1)
        self.assertEqual(len(mstest.maildir_messages(os.path.join(root, "Lists/dev"))), 1)
        for name in os.listdir(root):
            self.assertFalse(any(ord(c) < 32 for c in name), repr(name))
        # Again: same outcome, nothing new.
        r = self.mailsync(cfg, "sync", timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("a: \u2193 0 new", r.stdout)

    def test_local_folder_with_a_control_character(self):
        # A local directory whose name holds a control character is not a
        # folder name mailsync writes, so it is left alone (never created
        # on the server, its files untouched, the user told) and the rest
        # syncs.
        user = "localbad"
        self.dovecot.add_user(user, "pw-localbad")
        self.dovecot.save(user, "INBOX", b"Subject: one\r\n\r\nbody\r\n")
        acct = self.imap_account(user=user)
        acct["password"] = "pw-localbad"
        cfg = self.write_config({"a": acct})
        r = self.mailsync(cfg, "sync", timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        bad = os.path.join(self.tmp, "Mail", "Bad\x01dir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(bad, sub))
        with open(os.path.join(bad, "cur", "1700000000.M1P1.host:2,S"), "wb") as f:
            f.write(b"Subject: local\n\nbody\n")
        good = os.path.join(self.tmp, "Mail", "Good")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(good, sub))
        with open(os.path.join(good, "cur", "1700000000.M2P1.host:2,S"), "wb") as f:
            f.write(b"Subject: local good\n\nbody\n")
        r = self.mailsync(cfg, "sync", timeout=60)
        self.assertNotIn("\x01", r.stderr + r.stdout)
        # The good folder went up whatever happened to the bad one.
        self.assertEqual(len(self.dovecot.fetch_all(user, "Good")), 1)
        # The local file of the bad folder is untouched.
        self.assertTrue(os.path.exists(os.path.join(bad, "cur", "1700000000.M1P1.host:2,S")))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("\u2191 1 new", r.stdout)
        # Said, with the control character shown as '?'.
        said = ("local directory %s is not synced: its name maps to no folder name"
                % os.path.join(self.tmp, "Mail", "Bad?dir"))
        self.assertIn(said, r.stderr)
        # The run after the folder was created: nothing to do, exit 0, and
        # the bad directory is named again.
        r = self.mailsync(cfg, "sync", timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("a: \u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      r.stdout)
        self.assertIn(said, r.stderr)
        self.assertEqual(len(self.dovecot.fetch_all(user, "Good")), 1)
        self.assertTrue(os.path.exists(os.path.join(bad, "cur", "1700000000.M1P1.host:2,S")))


class NamesQresync(NameScenarios, mstest.DovecotTestCase):
    pass


class NamesCondstore(NameScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": CONDSTORE_CAPS}


class NamesFallback(NameScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": FALLBACK_CAPS}


if __name__ == "__main__":
    mstest.main()
