#!/usr/bin/env python3
"""A large first download with few file descriptors (issue 13's 100,000-
message run failed with "Too many open files"): while a batch of downloads
is made durable on the thread pool the connection keeps delivering into
the next batch, each message holding an open file in tmp/; the engine
stops reading once two batches wait, so the number of open files stays
bounded whatever the speed of the server and the disk. Run under a limit
of 192 descriptors (the code before the bound kept far more files open
here), the download completes, every message once."""

import os
import subprocess

import mailgen
import mstest
from synctest import PROFILES, SyncFixture


class BacklogScenarios(SyncFixture):

    def test_download_within_a_small_descriptor_limit(self):
        msgs = mailgen.generate(1500, seed=81, max_size=1500)
        self.dovecot.save_many(self.user, "INBOX", msgs)
        cfg = self.config(folders=["INBOX"])
        binary = mstest.mailsync_bin()
        p = subprocess.run(["prlimit", "--nofile=192:192", binary, "--config", cfg, "sync"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=600)
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        self.assertIn("a: \u2193 1500 new", p.stdout)
        self.assertEqual(len(self.local("INBOX")), 1500)
        self.assert_no_duplicates("INBOX")
        self.assert_same("INBOX")
        self.assertEqual(os.listdir(os.path.join(self.folder_dir("INBOX"), "tmp")), [])


for _name, _opts in PROFILES.items():
    globals()["Backlog" + _name] = type("Backlog" + _name,
                                        (BacklogScenarios, mstest.DovecotTestCase),
                                        {"dovecot_options": _opts})


if __name__ == "__main__":
    mstest.main()
