#!/usr/bin/env python3
"""An index written before the compact format (schema 1) against a real
Dovecot: an account is synced, its index rewritten in the schema 1 layout
by tests/tools/idx_downgrade, and the next `mailsync sync` converts it and
finds everything in sync: nothing is downloaded or uploaded again, no file
in the Maildir changes, and flags and keywords still go both ways
afterwards. Until then `mailsync status` refuses the old index with a
message that says how to convert it. Runs with QRESYNC (the delta path)
and without CONDSTORE/QRESYNC (the full listing, which compares every
message with the converted base)."""

import os
import subprocess
import unittest

import mailgen
import mstest
from synctest import FALLBACK_CAPS, SyncFixture, letters

FOLDERS = ["INBOX", "Lists/dev", "Entwürfe"]
NOTHING = "a: \u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted"


def downgrade_tool():
    d = os.environ.get("MAILSYNC_BUILD_DIR") or os.path.join(mstest.SOURCE_DIR, "build")
    p = os.path.join(d, "tests", "tools", "idx_downgrade")
    if not os.access(p, os.X_OK):
        raise unittest.SkipTest("idx_downgrade not built at %s" % p)
    return p


def tree(root):
    """{relative path: bytes} of every file under root (a Maildir: message
    files, dovecot-keywords, maildirfolder markers)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


class UpgradeScenarios(SyncFixture):

    def assert_in_sync(self, folder):
        """Both sides hold the same messages with the same flags and
        keywords (the local keyword letters read through the folder's
        dovecot-keywords)."""
        letter = {}
        path = os.path.join(self.folder_dir(folder), "dovecot-keywords")
        if os.path.exists(path):
            with open(path) as f:
                for line in f.read().splitlines():
                    n, name = line.split(None, 1)
                    letter[name] = chr(ord("a") + int(n))
        srv = sorted((mstest.crlf_to_lf(b),
                      "".join(sorted(letters(f) + "".join(letter.get(k, "") for k in f))))
                     for _u, f, b in self.server(folder))
        loc = sorted((b, "".join(sorted(fl))) for _u, fl, b in self.local(folder))
        self.assertEqual(len(srv), len(loc), "message count differs in %s" % folder)
        self.assertEqual(srv, loc, "messages, flags or keywords differ in %s" % folder)

    def seed(self):
        corpus = mailgen.corpus(30, seed=13, folders=FOLDERS, max_size=20000)
        for folder, msgs in corpus.items():
            flags = [["", "\\Seen", "\\Seen \\Flagged", "\\Answered $Forwarded", "work \\Seen"][i % 5]
                     for i in range(len(msgs))]
            self.dovecot.save_many(self.user, folder, msgs, flags)
        return corpus

    def downgrade(self):
        p = subprocess.run([downgrade_tool(), os.path.join(self.tmp, "state"), "a"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout.strip()

    def test_schema1_index_converted_without_downloading_again(self):
        corpus = self.seed()
        cfg = self.config()
        p = self.sync(cfg)
        self.assertIn("a: \u2193 30 new", p.stdout)
        self.store("INBOX", self.server()[0][0], "+FLAGS", "\\Flagged")
        self.sync(cfg)  # an index with a flag change behind it
        before = tree(self.maildir)
        nfolders = len(self.dovecot.folders(self.user))  # the seeded ones and Dovecot's own
        self.assertEqual(self.downgrade(), "%d folders, 30 messages" % nfolders)

        # `mailsync status` reads only, so it leaves the conversion to sync.
        p = self.mailsync(cfg, "status", "a")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("was written by an older mailsync (schema 1, this build uses 2); "
                      "run 'mailsync sync' once to convert it", p.stderr)

        p = self.sync(cfg)
        self.assertEqual(p.stdout.strip().splitlines()[-1], NOTHING)
        self.assertIn("converted from schema 1 to 2 (%d folders, 30 message records" % nfolders,
                      p.stderr)
        self.assertEqual(tree(self.maildir), before, "the Maildir changed")
        for folder in corpus:
            self.assert_in_sync(folder)
            self.assert_no_duplicates(folder)
        p = self.mailsync(cfg, "status", "a")
        self.assertEqual(p.returncode, 0, p.stderr)

        # Flags still go both ways, per flag, on the converted base; a
        # keyword the index knew stays known (no spurious change).
        srv = self.server("Lists/dev")
        uid0, uid1 = srv[0][0], srv[1][0]
        by_body = {mstest.crlf_to_lf(b): u for u, _f, b in srv}
        uniq = {by_body[b]: u for u, _fl, b in self.local("Lists/dev")}
        self.store("Lists/dev", uid0, "+FLAGS", "\\Answered")
        self.set_local_flags("Lists/dev", uniq[uid1], "FS")
        p = self.sync(cfg)
        self.assertEqual(p.stdout.strip().splitlines()[-1],
                         "a: \u2193 0 new, 1 flags, 0 deleted; \u2191 0 new, 1 flags, 0 deleted")
        flags = {u: letters(f) for u, f, _b in self.server("Lists/dev")}
        self.assertIn("R", flags[uid0])
        self.assertEqual(flags[uid1], "FS")
        for folder in corpus:
            self.assert_in_sync(folder)
        self.assertEqual(sum("work" in f for _u, f, _b in self.server("INBOX")),
                         len(corpus["INBOX"]) // 5)
        p = self.sync(cfg)
        self.assertEqual(p.stdout.strip().splitlines()[-1], NOTHING)
        self.assertNotIn("converted", p.stderr)


class UpgradeQresync(UpgradeScenarios, mstest.DovecotTestCase):
    pass


class UpgradeFallback(UpgradeScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": FALLBACK_CAPS}


if __name__ == "__main__":
    mstest.main()
