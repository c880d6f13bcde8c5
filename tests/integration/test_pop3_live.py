#!/usr/bin/env python3
"""The POP3 listing merged with the index while it arrives (issue 13).

popsync merges the UIDL listing with the index row by row as the lines
arrive, when the keys come in strictly ascending order (as Dovecot's do),
and walks the index after the listing only when that merge cannot be
trusted: a row of the index that is not listed (to be forgotten or matched
under a new UIDL), keys out of order (a key could be listed twice), an
interrupted download while the Maildir scan was skipped. These tests prove
that both ways give the same outcome: nothing downloaded twice, nothing
missed, unlisted rows forgotten. Which way a run took is read from its
debug line "matching after the listing instead of during it: WHY"."""

import collections
import os
import unittest

import mailgen
import mstest
from fakepop import FakePop
from test_pop3 import FakePopFixture, local_bodies, popcli, wire_to_local

FALLBACK = "matching after the listing instead of during it"


def keys(n, prefix="a"):
    return ["%s%02d" % (prefix, i) for i in range(1, n + 1)]


class LiveMatch(FakePopFixture, unittest.TestCase):
    def run_ok(self, cfg):
        p = popcli(cfg, "p", "-v")
        self.assertEqual(p.returncode, 0, "popcli failed:\n%s\n%s" % (p.stdout, p.stderr))
        return p

    def assert_local(self, msgs):
        self.assertEqual(local_bodies(self.maildir), collections.Counter(wire_to_local(m) for m in msgs))

    def test_ordered_listing_is_matched_while_it_arrives(self):
        """With keys in order, resyncs take the live merge, whether the new
        keys come after every row or between two of them, and download
        exactly the new messages."""
        msgs = self.msgs(20, 11)
        with FakePop(msgs, uidls=keys(20)) as srv:
            cfg = self.config(srv)
            p = self.run_ok(cfg)
            self.assertEqual(p.stats["downloaded"], 20)
            p = self.run_ok(cfg)
            self.assertNotIn(FALLBACK, p.stderr)
            self.assertEqual((p.stats["downloaded"], p.stats["known"], p.stats["listed"]), (0, 20, 20))
            self.assert_local(msgs)
            # New keys after the last row, and one between a10 and a11.
            more = self.msgs(3, 12)
            srv.messages = msgs[:10] + [more[0]] + msgs[10:] + more[1:]
            srv.uidls = keys(10) + ["a10x"] + keys(20)[10:] + ["a21", "a22"]
            p = self.run_ok(cfg)
            self.assertNotIn(FALLBACK, p.stderr)
            self.assertEqual((p.stats["downloaded"], p.stats["known"]), (3, 20))
            self.assert_local(msgs + more)
            p = self.run_ok(cfg)
            self.assertNotIn(FALLBACK, p.stderr)
            self.assertEqual((p.stats["downloaded"], p.stats["known"]), (0, 23))

    def test_unlisted_rows_fall_back_and_are_forgotten(self):
        """A message gone from the server (in the middle, then the last
        one) makes the run walk the index after the listing; the row is
        forgotten there, so the next run takes the live merge again, and
        the local copies stay."""
        msgs = self.msgs(8, 13)
        with FakePop(msgs, uidls=keys(8)) as srv:
            cfg = self.config(srv)
            self.assertEqual(self.run_ok(cfg).stats["downloaded"], 8)
            for gone in (4, 6):  # a05 (a row before a listed key), then a08 (after the last)
                del srv.messages[gone]
                del srv.uidls[gone]
                p = self.run_ok(cfg)
                self.assertIn(FALLBACK + ": a row of the index is not listed", p.stderr)
                self.assertEqual(p.stats["downloaded"], 0)
                self.assertEqual(p.stats["known"], len(srv.messages))
                p = self.run_ok(cfg)
                self.assertNotIn(FALLBACK, p.stderr)
                self.assertEqual((p.stats["downloaded"], p.stats["known"]), (0, len(srv.messages)))
            self.assert_local(msgs)
            # A forgotten UIDL listed again names a new message: downloaded.
            again = self.msgs(1, 14)[0]
            srv.messages.append(again)
            srv.uidls.append("a08")
            p = self.run_ok(cfg)
            self.assertNotIn(FALLBACK, p.stderr)
            self.assertEqual(p.stats["downloaded"], 1)
            self.assert_local(msgs + [again])

    def test_unordered_listing_falls_back(self):
        """Keys out of order take the walk after the listing, with the same
        outcome: nothing downloaded twice, the new message found. A key
        below the one before it is caught even when every row was matched
        so far (it could be a second listing of a key)."""
        msgs = self.msgs(5, 15)
        order = ["k3", "k1", "k5", "k2", "k4"]
        with FakePop(msgs, uidls=order) as srv:
            cfg = self.config(srv)
            p = self.run_ok(cfg)
            self.assertEqual(p.stats["downloaded"], 5)
            p = self.run_ok(cfg)
            self.assertIn(FALLBACK, p.stderr)
            self.assertEqual((p.stats["downloaded"], p.stats["known"]), (0, 5))
            # The same messages in key order, then a new one whose key sorts
            # first.
            by_key = sorted(zip(order, msgs))
            new = self.msgs(1, 16)[0]
            srv.uidls = [k for k, _m in by_key] + ["j0"]
            srv.messages = [m for _k, m in by_key] + [new]
            p = self.run_ok(cfg)
            self.assertIn(FALLBACK + ": the UIDL listing is not in key order", p.stderr)
            self.assertEqual((p.stats["downloaded"], p.stats["known"]), (1, 5))
            self.assert_local(msgs + [new])
            p = self.run_ok(cfg)
            self.assertEqual((p.stats["downloaded"], p.stats["known"]), (0, 6))

    def test_renumbered_uidls_fall_back_and_match(self):
        """Every UIDL changed at once (a new UIDVALIDITY) while the keys
        still ascend: the old rows are unlisted, so the run walks the
        index and matches the messages under their new UIDLs instead of
        downloading them again; the next run takes the live merge."""
        msgs = self.msgs(6, 17)
        with FakePop(msgs, uidls=keys(6, "a")) as srv:
            cfg = self.config(srv)
            self.assertEqual(self.run_ok(cfg).stats["downloaded"], 6)
            srv.uidls = keys(6, "b")
            p = self.run_ok(cfg)
            self.assertIn(FALLBACK, p.stderr)
            self.assertEqual((p.stats["downloaded"], p.stats["known"]), (0, 6))
            p = self.run_ok(cfg)
            self.assertNotIn(FALLBACK, p.stderr)
            self.assertEqual((p.stats["downloaded"], p.stats["known"]), (0, 6))
            self.assert_local(msgs)

    def test_long_listing_in_slices(self):
        """A listing longer than one slice (4,096 lines) is handled a slice
        per loop iteration, the connection paused in between: every line
        is still matched once, live, and a new message after the pauses is
        found."""
        msgs = mailgen.generate(5000, seed=18, max_size=400)
        with FakePop(msgs, uidls=["m%05d" % i for i in range(1, 5001)]) as srv:
            cfg = self.config(srv)
            p = popcli(cfg, timeout=600)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stats["downloaded"], 5000)
            new = self.msgs(1, 19)[0]
            srv.messages.append(new)
            srv.uidls.append("m05001")
            p = self.run_ok(cfg)
            self.assertNotIn(FALLBACK, p.stderr)
            self.assertEqual((p.stats["downloaded"], p.stats["known"], p.stats["listed"]), (1, 5000, 5001))
            self.assert_local(msgs + [new])


if __name__ == "__main__":
    mstest.main()
