#!/usr/bin/env python3
"""Folder sync on demand on a session that stays logged in (issue 11):
tests/synccli drives sync/engine.c with engine_opts.stay_open against a
real Dovecot under the three capability profiles. After the first pass the
session stays connected; another client then changes a folder, and a
folder job for it on the same session, with no new login, brings the
change down (or sends the local one up). Folders the run does not sync are
refused by name, and `close` logs out with the usual summary and status."""

import os
import queue
import re
import subprocess
import threading
import time

import mailgen
import mstest
from synctest import PROFILES, SyncFixture, letters

BUILD = os.environ.get("MAILSYNC_BUILD_DIR") or os.path.join(mstest.SOURCE_DIR, "build")
SYNCCLI = os.path.join(BUILD, "tests", "synccli", "synccli")


class Session:
    """A running synccli: lines of its standard output in a queue."""

    def __init__(self, cfg):
        if not os.access(SYNCCLI, os.X_OK):
            raise AssertionError("no synccli at %s (build the tests)" % SYNCCLI)
        self.p = subprocess.Popen([SYNCCLI, cfg, "a"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def expect(self, prefix, timeout=60):
        """The next line starting with prefix (others are kept in seen)."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError("synccli ended before %r; output: %s; stderr: %s"
                                     % (prefix, self.seen, self.p.stderr.read()))
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def close(self):
        self.send("close")
        self.expect("done ")
        summary = self.expect("a: ")
        rc = self.p.wait(timeout=60)
        return rc, summary

    def end(self):
        """Kills it if still running; closes the pipes."""
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=60)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            try:
                f.close()
            except OSError:
                pass


def fields(line):
    """{key: value} of a `folder NAME k=v ...` line (error last, may hold spaces)."""
    head, _, err = line.partition(" error=")
    out = dict(kv.split("=", 1) for kv in head.split()[2:])
    out["error"] = err
    return out


class SessionScenarios(SyncFixture):

    def open_sessions(self, want=None, count=None, timeout=30):
        """The imap process ids of the user's connections that logged in
        and have not disconnected, from Dovecot's log; with want (a set) or
        count, waits (the log process writes a little late, and the test's
        own connections end a little after their LOGOUT) until they are
        that set, or that many."""
        login = re.compile(r"Login: user=<%s>.*?mpid=(\d+)" % re.escape(self.user))
        gone = re.compile(r"imap\(%s\)<(\d+)>.*Disconnected" % re.escape(self.user))
        deadline = time.monotonic() + timeout
        while True:
            log = self.dovecot.log()
            found = set(login.findall(log)) - set(gone.findall(log))
            done = (want is None or found == want) and (count is None or len(found) == count)
            if done or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def test_folder_job_on_the_open_session(self):
        """First pass, then: a message another client appends to Archive
        comes down with `sync Archive`, a flag set locally in INBOX goes up
        with `sync INBOX`, a second `sync INBOX` changes nothing; all on the
        session's one connection; `close` exits 0."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(3, seed=51, max_size=3000))
        self.dovecot.save_many(self.user, "Archive", mailgen.generate(2, seed=52, max_size=3000))
        cfg = self.config(folders=["INBOX", "Archive"])
        s = Session(cfg)
        try:
            s.expect("idle")
            self.assertEqual(len(self.local("INBOX")), 3)
            self.assertEqual(len(self.local("Archive")), 2)
            session = self.open_sessions(count=1)
            self.assertEqual(len(session), 1, "one connection stays open after the first pass")
            new = mailgen.generate(1, seed=53, max_size=3000)[0]
            self.dovecot.save_many(self.user, "Archive", [new])  # one login of its own
            s.send("sync Archive")
            got = fields(s.expect("folder Archive "))
            self.assertEqual((got["new_down"], got["new_up"], got["error"]), ("1", "0", "-"))
            s.expect("idle")
            self.assertIn(mstest.crlf_to_lf(new), [b for _u, _f, b in self.local("Archive")])
            self.assert_same("Archive")

            unique = self.local("INBOX")[0][0]
            self.set_local_flags("INBOX", unique, "F")
            s.send("sync INBOX")
            got = fields(s.expect("folder INBOX "))
            self.assertEqual((got["flags_up"], got["new_down"], got["error"]), ("1", "0", "-"))
            s.expect("idle")
            self.assertEqual(sum("F" in letters(f) for _u, f, _b in self.server("INBOX")), 1)
            self.assert_same("INBOX")
            s.send("sync INBOX")
            got = fields(s.expect("folder INBOX "))
            self.assertEqual({k: v for k, v in got.items() if k != "error"},
                             dict.fromkeys(("new_down", "flags_down", "deleted_down", "new_up",
                                            "flags_up", "deleted_up"), "0"))
            s.expect("idle")
            # The test's own connections have ended; the session's is the
            # one still open: a folder job that logged in again would have
            # left its own (the session stays open).
            self.assertEqual(self.open_sessions(want=session), session,
                             "the folder jobs did not run on the first connection:\n"
                             + self.dovecot.log()[-3000:])
            rc, summary = s.close()
            self.assertEqual(rc, 0, summary)
        finally:
            s.end()

    def test_new_session_of_the_same_account_keeps_the_secret(self):
        """The account outlives its sessions (sync/account.h): after a
        session logs out, a new one of the same account logs in again
        without running password_command again, and syncs as before."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(2, seed=56, max_size=2000))
        acct = self.imap_account(user=self.user, layout=self.layout, folders=["INBOX"])
        counter = os.path.join(self.tmp, "pw-runs")
        acct["password_command"] = ["/bin/sh", "-c",
                                    "echo run >> '%s'; echo '%s'" % (counter, acct["password"])]
        del acct["password"]
        cfg = self.write_config({"a": acct})
        s = Session(cfg)
        try:
            s.expect("idle")
            s.send("reconnect")
            self.assertEqual(s.expect("done "), "done ok")
            self.assertEqual(s.expect("logins "), "logins 1 secret_fetches 1")
            s.expect("idle")
            new = mailgen.generate(1, seed=57, max_size=2000)[0]
            self.dovecot.save_many(self.user, "INBOX", [new])
            s.send("sync INBOX")
            got = fields(s.expect("folder INBOX "))
            self.assertEqual((got["new_down"], got["error"]), ("1", "-"))
            s.expect("idle")
            self.assertEqual(len(self.local("INBOX")), 3)
            self.assert_same("INBOX")
            rc, summary = s.close()
            self.assertEqual(rc, 0, summary)
            self.assertEqual(s.expect("logins "), "logins 2 secret_fetches 1")
            with open(counter) as f:
                self.assertEqual(f.read(), "run\n")
        finally:
            s.end()

    def test_unknown_folder_refused(self):
        """A folder the run does not sync is refused by name; the session
        goes on and closes cleanly."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(1, seed=54, max_size=2000))
        self.dovecot.save_many(self.user, "Other", mailgen.generate(1, seed=55, max_size=2000))
        cfg = self.config(folders=["INBOX"])
        s = Session(cfg)
        try:
            s.expect("idle")
            for name in ("Nope", "Other"):
                s.send("sync " + name)
                self.assertEqual(s.expect("refused "), "refused %s: No such file or directory" % name)
            s.send("sync INBOX")
            self.assertEqual(fields(s.expect("folder INBOX "))["error"], "-")
            s.expect("idle")
            rc, _summary = s.close()
            self.assertEqual(rc, 0)
        finally:
            s.end()


for _name, _opts in PROFILES.items():
    globals()["Session" + _name] = type("Session" + _name,
                                        (SessionScenarios, mstest.DovecotTestCase),
                                        {"dovecot_options": _opts})


if __name__ == "__main__":
    mstest.main()
