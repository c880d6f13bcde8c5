#!/usr/bin/env python3
"""A broken POP3 connection is a failure, never a partial listing taken as
complete (issue 9): `mailsync sync` of a POP3 account through a proxy that
cuts the server's byte stream (tests/harness/cutproxy.py), with
`keep_on_server: false` and with `delete_after_days` (the clock moved with
MAILSYNC_NOW).

Each test cuts 15 runs at seeded offsets spread over the stream the run is
expected to produce (greeting, login, UIDL and LIST, the RETRs, the DELEs
and QUIT), with new mail arriving between runs so that every run has
something to download. After every run:

- exit 75 when the cut came before QUIT, 0 when the run was not cut, the
  reason on stderr at -q (cutproxy.assert_outcome);
- nothing lost: every message delivered is on the server or in the
  Maildir; nothing doubled: at most one local copy, and every local file
  is a message that was delivered; a local file is never removed;
- a run cut before QUIT deleted nothing on the server (POP3 commits DELE
  only at QUIT); what a run deleted on the server is in the Maildir.

A final clean run must leave exactly what the policy says on the server
and every message exactly once locally.

The account is plaintext on loopback (tls: none, allow_plaintext: true), so
offsets count protocol bytes. MAILSYNC_CUT_SEED=N draws other offsets."""

import collections
import os
import random
import re
import time

import mstest
from cutproxy import POP3_FAREWELL, CutProxy, assert_outcome

SEED = int(os.environ.get("MAILSYNC_CUT_SEED", "909"))
N_CUTS = 15
DAY = 86400
# What Dovecot answers to one DELE, for estimating a run's stream.
DELE_REPLY = len(b"+OK Marked to be deleted.\r\n")


def message(i, size=1500):
    head = ("From: Sender %d <sender%d@example.com>\r\nTo: user@example.com\r\n"
            "Subject: pop cut test %d\r\nMessage-ID: <popcut-%d@example.com>\r\n"
            "Date: Mon, 06 Jan 2025 %02d:%02d:00 +0000\r\n\r\n"
            % (i, i % 13, i, i, 8 + i // 60 % 10, i % 60))
    line = "message %d of the POP3 cut test, a line of filler\r\n" % i
    return (head + line * max(1, (size - len(head)) // len(line))).encode()


def message_id(data):
    m = re.search(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", data, re.M | re.I)
    return m.group(1).decode() if m else None


class PopCut(mstest.DovecotTestCase):
    def setUp(self):
        super().setUp()
        self.user = "p%d" % (abs(hash(self.id())) % 10**8)
        self.dovecot.add_user(self.user, "pw-" + self.user)
        self.maildir = os.path.join(self.tmp, "Mail")
        self.proxy = CutProxy.for_test(self, self.dovecot.port_pop3, farewell=POP3_FAREWELL)
        self.rng = random.Random("%s-%s" % (SEED, self.id()))
        self.known = {}  # Message-ID -> LF bytes of every message delivered
        self.prefix = None  # server bytes before the first RETR/DELE (greeting .. LIST)
        self.n = 0

    def config(self, **pop):
        acct = self.pop3_account(self.maildir, user=self.user, tls="none", allow_plaintext=True,
                                 host="127.0.0.1", pop=pop)
        acct["port"] = self.proxy.port  # pop3_account sets Dovecot's own port
        return self.write_config({"p": acct})

    def deliver(self, count, size=1500):
        msgs = [message(self.n + i, size) for i in range(count)]
        self.n += count
        self.dovecot.save_many(self.user, "INBOX", msgs)
        for m in msgs:
            self.known[message_id(m)] = mstest.crlf_to_lf(m)

    def server(self):
        return collections.Counter(message_id(b) for _u, b in self.dovecot.pop3_all(self.user))

    def local(self):
        return mstest.maildir_messages(os.path.join(self.maildir, "INBOX"))

    # ---- runs --------------------------------------------------------------

    def run_sync(self, cfg, cut_at, label, now, *flags):
        """One `mailsync -q sync p` at clock `now`, cut after cut_at server
        bytes (None: not cut); checks the exit status and both sides."""
        srv_before = self.server_before = self.server()
        loc_before = {message_id(b) for _u, _f, b in self.local()}
        self.proxy.arm(cut_at)
        p = self.mailsync(cfg, "-q", "sync", *flags, "p", env={"MAILSYNC_NOW": str(now)})
        run = self.proxy.finish()
        what = "%s, cut at %s: %r\n%s" % (label, cut_at, run, run.trace())
        if "--dry-run" in flags:
            self.assertEqual(p.returncode, 0, what + p.stderr)
        else:
            assert_outcome(self, p, run, label)
        self.learn_prefix(run)

        srv = self.server()
        loc = collections.Counter()
        for _u, _f, body in self.local():
            mid = message_id(body)
            loc[mid] += 1
            self.assertEqual(body, self.known.get(mid), "%s: local %s is not a delivered "
                                                        "message" % (what, mid))
        self.assertEqual([m for m, c in loc.items() if c > 1], [], what + ": local duplicates")
        self.assertEqual([m for m, c in srv.items() if c > 1], [], what + ": server duplicates")
        self.assertEqual(sorted(set(self.known) - set(srv) - set(loc)), [], what + ": lost")
        self.assertEqual(sorted(loc_before - set(loc)), [], what + ": local copies removed")
        deleted = set(srv_before) - set(srv)
        if run.cut and not run.farewell_before_cut:
            self.assertEqual(sorted(deleted), [], what + ": deleted on the server by a run "
                                                         "that was cut before QUIT")
        self.assertEqual(sorted(deleted - set(loc)), [], what + ": deleted on the server "
                                                              "without a local copy")
        return run, srv, loc

    def learn_prefix(self, run):
        """Where the run's first RETR or DELE was sent (else its QUIT):
        the length of greeting, login and listing, which the next run's
        stream starts with (plus a line per message delivered since)."""
        if not run.c2s:
            return
        c2s = bytes(run.c2s[0])
        m = re.search(rb"(?m)^(RETR|DELE|TOP|QUIT)\b", c2s)
        if m:
            self.prefix = run.server_offset(0, m.start())
            self.prefix_listed = len(self.server_before)

    def estimate(self, srv, loc, checked, deleting):
        """Server bytes a run will send: the listing, a RETR for every
        message not yet here, the header (TOP n 0) of every message checked
        before its DELE, a DELE answer for every one to be deleted, QUIT."""
        wire = {m: self.known[m].replace(b"\n", b"\r\n") for m in srv}
        retr = sum(len(wire[m]) + 20 for m in srv if m not in loc)
        top = sum(len(wire[m].split(b"\r\n\r\n")[0]) + 12 for m in checked)
        listing = 32 * (len(srv) - self.prefix_listed)  # a UIDL and a LIST line each
        return self.prefix + listing + retr + top + DELE_REPLY * deleting + 20

    def cut_runs(self, cfg, now, to_delete):
        """N_CUTS runs, new mail before each, cut at seeded fractions of the
        stream each is expected to produce; to_delete(srv, loc) says which
        messages the run will DELE."""
        fractions = [(i + self.rng.random()) / N_CUTS for i in range(N_CUTS)]
        self.rng.shuffle(fractions)
        cut = 0
        for i, frac in enumerate(fractions):
            self.deliver(2)
            srv = self.server()
            loc = {message_id(b) for _u, _f, b in self.local()}
            dele = to_delete(srv, loc)
            off = int(frac * self.estimate(srv, loc, dele & loc, len(dele)))
            run, _srv, _loc = self.run_sync(cfg, off, "cut run %d (%.2f)" % (i, frac), now)
            cut += run.cut
        self.assertGreaterEqual(cut, N_CUTS - 2, "too few runs were actually cut")

    # ---- tests ---------------------------------------------------------------

    def test_keep_on_server_false(self):
        """Cut runs never delete on the server, lose or double a message;
        the clean run then leaves the server empty and everything here."""
        self.deliver(30)
        cfg = self.config(keep_on_server=False)
        now = int(time.time())
        self.run_sync(cfg, None, "dry run", now, "--dry-run")
        self.cut_runs(cfg, now, lambda srv, loc: set(srv))
        run, srv, loc = self.run_sync(cfg, None, "clean run", now)
        self.assertFalse(run.cut)
        self.assertEqual(srv, collections.Counter())
        self.assertEqual(sorted(loc), sorted(self.known))

    def test_unfinished_sync_never_exits_zero(self):
        """Keeping mail on the server (the default), a first download cut
        at the greeting, inside the UIDL listing, inside the LIST listing's
        terminating line and across the RETRs never exits 0 (unless cut
        after QUIT), stores nothing twice and deletes nothing; the clean
        run then fetches the rest."""
        self.deliver(12)
        cfg = self.config()
        now = int(time.time())
        dry, _srv, _loc = self.run_sync(cfg, None, "dry run", now, "--dry-run")
        c2s = bytes(dry.c2s[0])
        uidl = dry.server_offset(0, c2s.index(b"UIDL\r\n"))
        quit_at = dry.server_offset(0, c2s.index(b"QUIT\r\n"))
        points = [0, 30, uidl + 5, (uidl + quit_at) // 2, quit_at - 2, quit_at - 1,
                  quit_at + 100, quit_at + 2500, quit_at + 9000]
        runs = [self.run_sync(cfg, off, "first download", now)[0] for off in points]
        self.assertGreaterEqual(sum(r.cut for r in runs), len(points) - 1, runs)
        run, srv, loc = self.run_sync(cfg, None, "clean run", now)
        self.assertEqual(sorted(loc), sorted(self.known))
        self.assertEqual(sorted(srv), sorted(self.known))

    def test_delete_after_days(self):
        """With delete_after_days: 3 and the clock 4 days on, cut runs
        delete nothing; the clean run deletes just the messages first seen
        more than 3 days ago, and keeps every message here once."""
        self.deliver(20)
        cfg = self.config(delete_after_days=3)
        now = int(time.time())
        self.run_sync(cfg, None, "first download", now)
        old = set(self.known)
        later = now + 4 * DAY
        self.run_sync(cfg, None, "dry run", later, "--dry-run")
        self.cut_runs(cfg, later, lambda srv, loc: old & set(srv))
        run, srv, loc = self.run_sync(cfg, None, "clean run", later)
        self.assertFalse(run.cut)
        self.assertEqual(sorted(srv), sorted(set(self.known) - old),
                         "the server should hold exactly the messages first seen 4 days later")
        self.assertEqual(sorted(loc), sorted(self.known))
        run, srv, loc = self.run_sync(cfg, None, "clean run 4 days later", later + 4 * DAY)
        self.assertEqual(srv, collections.Counter())
        self.assertEqual(sorted(loc), sorted(self.known))


if __name__ == "__main__":
    mstest.main()
