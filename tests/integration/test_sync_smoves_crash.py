#!/usr/bin/env python3
"""Messages moved on the server by another client (issue 12), with the run
that handles the move killed (SIGKILL) along the way, against a real
Dovecot under the three capability profiles of synctest.PROFILES.

Another client moves five of INBOX's eight messages into Work (UID MOVE);
meanwhile one of them is flagged here and two are marked \\Answered there.
`mailsync -vv sync a` is killed at a point of the move handling (INBOX's
listing; orphans parked; Work's SELECT; Work's listing with the
Message-ID fetch; the files being moved into Work, between a file's
rename and the index transaction that records it; the LOGOUT), then a
clean run: every message is on each side once, the moved ones in Work
with both changes, the rest in INBOX, no tmp/ leftovers, no body is
fetched by either run, and a third run changes nothing.

And the pair that never comes: the run is killed with the orphans parked
and Work not synced yet, then the other client moves the five back into
INBOX: the clean run keeps each message once, in INBOX, neither deleted
nor duplicated."""

import os
import re

import mstest
from synctest import PROFILES

import test_sync_moves as moves

# The seed: INBOX 0..7 (odd ones \Seen), Work 100. MOVED go to Work;
# LOCAL_FLAG is flagged here meanwhile, ANSWERED marked \Answered in Work.
SEED = {"INBOX": [(i, "\\Seen" if i % 2 else "") for i in range(8)], "Work": [(100, "")]}
MOVED = [0, 1, 2, 3, 4]
LOCAL_FLAG = 1
ANSWERED = [1, 3]
WANT_WORK = {0: "", 1: "FRS", 2: "", 3: "RS", 4: "", 100: ""}
WANT_INBOX = {5: "S", 6: "", 7: "S"}

# An account's trace lines carry "imap a:" or, on another connection of
# the run, "imap a#2:".
C = r"imap a\S*: C: \S+ "
S = r"imap a\S*: S: "
# Where the run is killed: (label, anchor regex on a -vv line, delay s).
KILL_POINTS = [
    # INBOX's listing: the VANISHED of QRESYNC's SELECT, else the first
    # UID FETCH / UID SEARCH (INBOX is synced first).
    ("inbox_listing", S + r"\* VANISHED|" + C + r"UID (FETCH|SEARCH) ", 0.0),
    # The orphans parked (their index rows written, files in INBOX).
    ("parked", r"gone from the server kept locally for now", 0.0),
    ("work_select", C + r"SELECT Work\b", 0.0),
    ("work_listing", C + r"UID FETCH \S+ \(.*MESSAGE-ID", 0.0),
    # The first pair recorded; the others' renames and transactions are
    # under way: the kill lands between a rename and its transaction, or
    # after them, whichever.
    ("moved", r"moved from INBOX to Work on the server: file moved", 0.0),
    ("moved_late", r"moved from INBOX to Work on the server: file moved", 0.004),
    ("logout", r"imap a: C: \S+ LOGOUT", 0.0),
]

BODY_FETCH = re.compile(r"C: \S+ UID FETCH \S+ \([^)]*BODY\.PEEK\[\]")
# A run with nothing to do: the whole summary line (no "adopted after an
# interruption", no move, nothing left over for it to finish).
QUIET = "a: \u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted"


class _Shared:
    """One IMAP connection of the test for every look at the server (a
    login costs more than the fetch): logout() leaves it open."""

    def __init__(self, conn):
        self._conn = conn

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def logout(self):
        pass


class ServerMoveCrashScenarios(moves.MoveFixture):
    """The move run killed at each of KILL_POINTS, then a clean run: no
    message lost, none twice on either side, none downloaded, the moved
    ones in Work with their unique names and both sides' flag changes, and
    a third run with nothing to do (no intent or orphan left behind)."""

    server_move = moves.ServerMoveScenarios.server_move

    def imap(self):
        if getattr(self, "_shared", None) is None:
            conn = self.dovecot.imap(self.user)
            self._shared = _Shared(conn)
            self.addCleanup(conn.logout)
        return self._shared

    def server(self, name="INBOX"):
        return self.dovecot.fetch_all(self.user, name, conn=self.imap())

    def work_uids(self):
        return {int(re.search(rb"Subject: move (\d+)", b).group(1)): u
                for u, _f, b in self.server("Work")}

    def prepare(self):
        """Seeds, syncs, then has the move (and the flag changes on both
        sides) happen; returns cfg."""
        cfg = self.seed(SEED)
        u = self.uniques("INBOX", [LOCAL_FLAG])[0]
        self.set_local_flags("INBOX", u, "FS")
        self.server_move("INBOX", "Work", MOVED)
        wuids = self.work_uids()
        for i in ANSWERED:
            self.store("Work", wuids[i], "+FLAGS", "\\Answered")
        return cfg

    def kill(self, cfg, anchor, delay):
        killed, trace = moves.run_killed(mstest.mailsync_bin(), cfg, anchor, delay)
        self.assertTrue(killed, "the run ended before the kill point:\n" + trace[-3000:])
        return trace

    def assert_settled(self, want, traces):
        """Each folder's messages once on each side with these flags, no
        tmp/ leftovers, and a further run that changes nothing."""
        ctx = "\n".join(t[-4000:] for t in traces)
        for f in ("INBOX", "Work"):
            self.assert_same(f)
            self.assert_no_duplicates(f)
            self.assertEqual(os.listdir(os.path.join(self.folder_dir(f), "tmp")), [],
                             "tmp/ leftovers in %s" % f)
        for f, flags in want.items():
            self.assertEqual(self.server_flags(f), flags, "%s on the server\n%s" % (f, ctx))
            self.assertEqual({n: fl for n, (_u, fl) in self.local_numbers(f).items()}, flags,
                             "%s locally" % f)
        p = self.sync(self.cfg, trace=True)
        self.assertEqual(p.stdout.strip(), QUIET, ctx + p.stderr[-3000:])

    def check_killed(self, anchor, delay, label):
        cfg = self.cfg = self.prepare()
        uniq = self.uniques("INBOX", MOVED)
        trace = self.kill(cfg, anchor, delay)
        parked = label == "parked" and not re.search(C + r"SELECT Work\b", trace)
        if parked:
            # Killed with the orphans parked and Work not reached: every
            # file is still in INBOX (the flagged one as flagged here).
            loc = self.local_numbers("INBOX")
            self.assertEqual(sorted(loc), list(range(8)), trace[-3000:])
            self.assertEqual(loc[LOCAL_FLAG][1], "FS")
        p = self.sync(cfg, trace=True)
        if parked:
            # ... and the clean run pairs all five from there.
            self.assertEqual(len(re.findall(r"moved from INBOX to Work on the server: file moved",
                                            p.stderr)), 5, p.stderr[-4000:])
        # Nothing of the move is downloaded, by the killed run or after it:
        # the files are moved (or adopted where a kill left the file moved
        # and the record not written).
        for t in (trace, p.stderr):
            self.assertIsNone(BODY_FETCH.search(t), t[-4000:])
        self.assertIn("\u2193 0 new", p.stdout, p.stderr[-4000:])
        self.assert_settled({"Work": WANT_WORK, "INBOX": WANT_INBOX}, [trace, p.stderr])
        # The files kept their unique names on the way.
        loc = self.local_numbers("Work")
        self.assertEqual([loc[i][0] for i in MOVED], uniq)

    def test_pair_never_comes(self):
        """Killed with INBOX's orphans parked and Work not synced; the
        other client moves the five back into INBOX (new UIDs there, the
        \\Answered going with them): the clean run leaves each message once,
        in INBOX, in the file it had (nothing deleted, nothing downloaded),
        with the flag given here and the server's \\Answered; Work keeps
        only its own message."""
        cfg = self.cfg = self.prepare()
        uniq = self.uniques("INBOX", MOVED)
        trace = self.kill(cfg, C + r"SELECT Work\b", 0.0)
        self.server_move("Work", "INBOX", MOVED)
        p = self.sync(cfg, trace=True)
        want = dict(WANT_INBOX)
        want.update({i: WANT_WORK[i] for i in MOVED})
        self.assert_settled({"INBOX": want, "Work": {100: ""}}, [trace, p.stderr, p.stdout])
        # The files stayed (not deleted and downloaded again under new names).
        self.assertIsNone(BODY_FETCH.search(p.stderr), p.stderr[-4000:])
        loc = self.local_numbers("INBOX")
        self.assertEqual([loc[i][0] for i in MOVED], uniq, p.stdout + p.stderr[-4000:])


def _crash_test(label, anchor, delay):
    def test(self):
        self.check_killed(anchor, delay, label)
    test.__doc__ = "Killed at %s (delay %g s), then a clean run." % (label, delay)
    return test


for _label, _anchor, _delay in KILL_POINTS:
    setattr(ServerMoveCrashScenarios, "test_kill_at_" + _label,
            _crash_test(_label, _anchor, _delay))

for _name, _opts in PROFILES.items():
    globals()["ServerMoveCrash" + _name] = type("ServerMoveCrash" + _name,
                                                (ServerMoveCrashScenarios,
                                                 mstest.DovecotTestCase),
                                                {"dovecot_options": _opts})

if __name__ == "__main__":
    mstest.main()
