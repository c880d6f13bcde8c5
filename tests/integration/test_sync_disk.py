#!/usr/bin/env python3
"""`mailsync sync` (IMAP) into a Maildir on a file system that fills up
half-way through the download: the run fails with the reason and the
folder, nothing on the server is touched (a message that could not be
stored is not a local deletion), no half-written file is left in new/ or
cur/, and once there is room again the next run finishes the job without
a duplicate. Needs a tmpfs (mounting as root); skipped where that is not
allowed."""

import collections
import os
import re
import shutil
import subprocess

import dovecot
import mailgen
import mstest


class DiskFull(mstest.DovecotTestCase):

    def setUp(self):
        super().setUp()
        self.user = "diskfull-" + self._testMethodName[-12:]
        self.dovecot.add_user(self.user, "pw-" + self.user)

    def local_bodies(self, maildir):
        out = collections.Counter()
        for d in mstest.maildir_folders(maildir):
            for _u, _f, body in mstest.maildir_messages(os.path.join(maildir, d)):
                out[body] += 1
        return out

    def in_flight_files(self, maildir):
        """Files in tmp/ (debris) anywhere under the Maildir."""
        found = []
        for dirpath, _dirs, files in os.walk(maildir):
            if os.path.basename(dirpath) == "tmp":
                found += files
        return found

    def test_disk_full_then_room(self):
        self.run_disk_full(state_on_small_disk=False)

    def test_disk_full_with_the_index_on_it(self):
        """The index shares the full file system (the default layout puts
        both under the home directory): whichever write fails first, the
        Maildir's or the index's, the run is one to try again later."""
        self.run_disk_full(state_on_small_disk=True)

    def test_disk_full_stops_the_download(self):
        """Once the disk is full, no further body FETCH is sent (the
        bodies are asked for 500 at a time): of 1,100 messages the run asks
        for the first 500 only, and the next run with room gets exactly
        the rest."""
        msgs = mailgen.generate(1100, seed=33, max_size=1500)
        self.dovecot.save_many(self.user, "INBOX", msgs)
        mnt = mstest.small_disk(self, "400k")
        maildir = os.path.join(mnt, "Mail")
        cfg = os.path.join(self.tmp, "config.yaml")
        dovecot.write_mailsync_config(
            cfg, {"a": self.imap_account(maildir=maildir, user=self.user, folders=["INBOX"])},
            state_dir=os.path.join(self.tmp, "state"))
        p = mstest.run_mailsync(cfg, "-vv", "sync", "a", timeout=120)
        self.assertEqual(p.returncode, 75, p.stdout + p.stderr[-3000:])
        self.assertIn("No space left on device", p.stderr)
        bodies = [line for line in p.stderr.splitlines()
                  if re.search(r"C: \S+ UID FETCH \S+ \(UID BODY\.PEEK\[\]", line)]
        self.assertEqual(len(bodies), 1, "body FETCHes after the disk filled:\n" + "\n".join(bodies))
        have = self.local_bodies(maildir)
        self.assertGreater(sum(have.values()), 0)
        self.assertTrue(all(n == 1 for n in have.values()))
        subprocess.run(["mount", "-o", "remount,size=16m", mnt], check=True)
        p = mstest.run_mailsync(cfg, "sync", "a", timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertEqual(self.local_bodies(maildir),
                         collections.Counter(mstest.crlf_to_lf(b) for b in msgs))
        self.assertEqual(self.in_flight_files(maildir), [])

    def run_disk_full(self, state_on_small_disk):
        msgs = {"INBOX": [mailgen.message(seed=31, index=i, size=100000) for i in range(8)],
                "Lists/dev": [mailgen.message(seed=32, index=i, size=100000) for i in range(6)]}
        for folder, m in msgs.items():
            self.dovecot.save_many(self.user, folder, m, "\\Seen")
        want = collections.Counter(mstest.crlf_to_lf(b) for m in msgs.values() for b in m)
        server_before = {f: len(self.dovecot.fetch_all(self.user, f)) for f in msgs}

        mnt = mstest.small_disk(self, "700k")
        maildir = os.path.join(mnt, "Mail")
        cfg = os.path.join(self.tmp, "config.yaml")
        state = os.path.join(mnt if state_on_small_disk else self.tmp, "state")
        dovecot.write_mailsync_config(
            cfg, {"a": self.imap_account(maildir=maildir, user=self.user)}, state_dir=state)
        p = mstest.run_mailsync(cfg, "sync", "a", timeout=120)
        # A full disk clears up: "try again later", as for POP3.
        self.assertEqual(p.returncode, 75, p.stdout + p.stderr)
        self.assertIn("No space left on device", p.stderr)
        self.assertRegex(p.stderr, r"a: (INBOX|Lists/dev): ")
        have = self.local_bodies(maildir)
        self.assertLess(sum(have.values()), len(want))
        self.assertTrue(all(n == 1 and b in want for b, n in have.items()))
        self.assertEqual(self.in_flight_files(maildir), [], "half-written files left in tmp/")
        self.assertNotIn("a: failed", p.stderr)
        # Nothing was deleted or changed on the server.
        self.assertEqual({f: len(self.dovecot.fetch_all(self.user, f)) for f in msgs},
                         server_before)

        # A second run on the still full disk changes nothing either.
        p = mstest.run_mailsync(cfg, "sync", "a", timeout=120)
        self.assertEqual(p.returncode, 75, p.stdout + p.stderr)
        self.assertEqual({f: len(self.dovecot.fetch_all(self.user, f)) for f in msgs},
                         server_before)

        # Room again: the next run finishes the job, without a duplicate.
        subprocess.run(["mount", "-o", "remount,size=16m", mnt], check=True)
        p = mstest.run_mailsync(cfg, "sync", "a", timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(self.local_bodies(maildir), want)
        self.assertEqual(self.in_flight_files(maildir), [])
        self.assertEqual({f: len(self.dovecot.fetch_all(self.user, f)) for f in msgs},
                         server_before)
        p = mstest.run_mailsync(cfg, "sync", "a", timeout=120)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)


if __name__ == "__main__":
    mstest.main()
