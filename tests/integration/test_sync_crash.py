#!/usr/bin/env python3
"""Crash safety of the IMAP sync engine (issue 4): `mailsync sync` is
killed with SIGKILL at random moments while it downloads a corpus and
uploads local mail, then run to completion. Afterwards both sides must
hold every message exactly once (no loss, no duplicates), with the same
flags. The scenario runs against a full Dovecot and against one without
UIDPLUS (no APPENDUID)."""

import collections
import os
import random
import signal
import subprocess
import time
import unittest

import mailgen
import mstest

FOLDERS = ["INBOX", "Lists/dev"]


class CrashScenario:
    seed = 4242

    def test_kill9_at_random_points(self):
        user = "crash"
        self.dovecot.add_user(user, "pw-crash")
        maildir = os.path.join(self.tmp, "Mail")
        corpus = mailgen.corpus(400, seed=11, folders=FOLDERS, max_size=40000)
        for folder, msgs in corpus.items():
            self.dovecot.save_many(user, folder, msgs,
                                   ["\\Seen" if i % 3 else "" for i in range(len(msgs))])
        cfg = self.write_config({"a": self.imap_account(user=user)})
        binary = mstest.mailsync_bin()
        if binary is None:
            raise unittest.SkipTest("no mailsync binary")

        # Local mail to upload, written like a mail client would.
        local_new = mailgen.generate(60, seed=12, max_size=20000)
        inbox = os.path.join(maildir, "INBOX")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(inbox, sub), exist_ok=True)
        for i, m in enumerate(local_new):
            with open(os.path.join(inbox, "new", "1700000000.M%dP1.client" % i), "wb") as f:
                f.write(mstest.crlf_to_lf(m))

        rng = random.Random(self.seed)
        for _ in range(10):
            p = subprocess.Popen([binary, "--config", cfg, "sync", "a"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.05, 1.5))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            out, err = p.communicate()
        for _ in range(2):
            p = mstest.run_mailsync(cfg, "sync", "a")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

        expected = {f: collections.Counter(mstest.crlf_to_lf(m) for m in msgs)
                    for f, msgs in corpus.items()}
        expected["INBOX"].update(mstest.crlf_to_lf(m) for m in local_new)
        for folder in FOLDERS:
            srv = collections.Counter(mstest.crlf_to_lf(b)
                                      for _u, _f, b in self.dovecot.fetch_all(user, folder))
            d = os.path.join(maildir, *folder.split("/"))
            loc = collections.Counter(b for _u, _f, b in mstest.maildir_messages(d))
            self.assertEqual(sum(srv.values()), sum(expected[folder].values()),
                             "server count in %s" % folder)
            self.assertEqual(srv, expected[folder], "server side of %s" % folder)
            self.assertEqual(loc, expected[folder], "local side of %s" % folder)


class SyncCrash(CrashScenario, mstest.DovecotTestCase):
    pass


class SyncCrashNoUidplus(CrashScenario, mstest.DovecotTestCase):
    """Without UIDPLUS an APPEND's UID is found after the fact (Message-ID,
    size, header hash): kills between the APPEND and that search must not
    duplicate anything either."""

    dovecot_options = {"imap_capability": "IMAP4rev1 ID ENABLE IDLE LITERAL+ SPECIAL-USE"}
    seed = 4343


if __name__ == "__main__":
    mstest.main()
