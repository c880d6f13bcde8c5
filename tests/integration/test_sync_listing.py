#!/usr/bin/env python3
"""The full listing of a server without CONDSTORE (issue 13): every
message is listed for its flags, but only the messages new since the last
complete sync (from its UIDNEXT on) are listed with a size and a date; the
others are in the base, or skipped with the size and date they were
skipped for. Proven against Dovecot with CONDSTORE and QRESYNC hidden: the
protocol trace shows the two listings; a flag changed on the server reaches
the file; new mail is downloaded with its internal date as the file's
mtime; a message skipped for its size stays skipped, and is downloaded
once max_size is raised (its size came from the skip list, not the
listing); and a last run has nothing to do."""

import email.utils
import os
import re

import mailgen
import mstest
from synctest import PROFILES, SyncFixture

NOTHING = "\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted"


class ListingFallback(SyncFixture, mstest.DovecotTestCase):
    dovecot_options = PROFILES["Fallback"]

    def fetches(self, trace):
        return re.findall(r"C: \S+ (UID FETCH \S+ \([^)]*\))", trace)

    def test_known_messages_listed_with_flags_only(self):
        small = mailgen.generate(4, seed=301, max_size=1500)
        big = (b"From: Big <big@example.org>\r\nTo: a@example.org\r\nSubject: big\r\n"
               b"Date: Mon, 02 Jan 2023 10:00:00 +0000\r\nMessage-ID: <big-302@example.org>\r\n"
               b"\r\n" + b"x" * 70 + b"\r\n") * 1 + (b"y" * 70 + b"\r\n") * 100
        self.dovecot.save_many(self.user, "INBOX", small + [big])
        cfg = self.config(max_size=4000, folders=["INBOX"])
        p = self.sync(cfg)
        self.assertEqual(len(self.local("INBOX")), 4, p.stdout)

        # A flag on a known message, and two new messages.
        uids = [u for u, _f, _b in self.server("INBOX")]
        self.store("INBOX", uids[0], "+FLAGS", "\\Flagged")
        new = mailgen.generate(2, seed=303, max_size=1500)
        self.dovecot.save_many(self.user, "INBOX", new)
        p = self.sync(cfg, trace=True)
        got = self.fetches(p.stderr)
        self.assertIn("UID FETCH 1:5 (UID FLAGS)", got, got)
        self.assertTrue(any(re.fullmatch(r"UID FETCH 6:\* \(UID FLAGS RFC822\.SIZE "
                                         r"INTERNALDATE.*\)", f) for f in got), got)
        self.assertFalse(any(f.startswith("UID FETCH 1:*") for f in got), got)
        local = {b: fl for _u, fl, b in self.local("INBOX")}
        self.assertEqual(len(local), 6)
        self.assertEqual(local[mstest.crlf_to_lf(small[0])], "F")
        self.assertNotIn(mstest.crlf_to_lf(big), local)
        # The new mail's file carries its internal date (the Date header,
        # as the harness APPENDs it).
        for m in new:
            body = mstest.crlf_to_lf(m)
            unique = self.unique_of("INBOX", body)
            date = re.search(rb"^Date: (.*)$", body, re.M | re.I).group(1).decode().strip()
            want = email.utils.parsedate_to_datetime(date).timestamp()
            self.assertEqual(int(os.stat(self.local_file("INBOX", unique)).st_mtime), int(want))

        # Still skipped, listed by flags alone: its size came from the skip
        # list. Raised limit: downloaded.
        p = self.sync(cfg)
        self.assertIn(NOTHING, p.stdout)
        self.assertNotIn(mstest.crlf_to_lf(big), [b for _u, _f, b in self.local("INBOX")])
        cfg = self.config(max_size=20000, folders=["INBOX"])
        p = self.sync(cfg)
        self.assertIn("\u2193 1 new", p.stdout)
        self.assert_same("INBOX")
        p = self.sync(cfg)
        self.assertIn(NOTHING, p.stdout)


if __name__ == "__main__":
    mstest.main()
