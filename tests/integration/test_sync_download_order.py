#!/usr/bin/env python3
"""A first download takes its messages in UID order (issue 13): Dovecot
runs pipelined UID FETCH commands side by side and interleaves their
answers, and records written out of UID order half-fill the index's pages
(the index grew by about 30 bytes a message). The body FETCH commands go
one at a time: the trace shows each one answered before the next is sent,
the messages arrive in ascending UID order, and every message is on disk
with its flags."""

import re

import mailgen
import mstest
from synctest import PROFILES, SyncFixture

COUNT = 1200


class DownloadOrder(SyncFixture):

    def test_bodies_fetched_one_command_at_a_time(self):
        msgs = mailgen.generate(COUNT, seed=411, max_size=1200)
        flags = ["\\Seen" if i % 3 else "\\Flagged" for i in range(COUNT)]
        self.dovecot.save_many(self.user, "INBOX", msgs, flags=flags)
        cfg = self.config(folders=["INBOX"])
        p = self.sync(cfg, trace=True)
        body_tags = []
        open_tag = None
        uids = []
        for line in p.stderr.splitlines():
            m = re.search(r"C: (\S+) UID FETCH \S+ \(UID BODY\.PEEK\[\]", line)
            if m:
                self.assertIsNone(open_tag, "a body FETCH sent while %s was still open:\n%s"
                                  % (open_tag, line))
                open_tag = m.group(1)
                body_tags.append(open_tag)
                continue
            m = re.search(r"S: \* \d+ FETCH \(UID (\d+) BODY", line)
            if m:
                uids.append(int(m.group(1)))
            m = re.search(r"S: (\S+) OK", line)
            if m and m.group(1) == open_tag:
                open_tag = None
        self.assertGreaterEqual(len(body_tags), 3, "one command would prove nothing")
        self.assertEqual(len(uids), COUNT, "the trace does not show the bodies' UIDs")
        self.assertEqual(uids, sorted(uids), "bodies arrived out of UID order")
        local = {b: fl for _u, fl, b in self.local("INBOX")}
        self.assertEqual(len(local), COUNT)
        for msg, fl in zip(msgs, flags):
            self.assertEqual(local[mstest.crlf_to_lf(msg)], "S" if fl == "\\Seen" else "F")


for _name, _opts in PROFILES.items():
    globals()["DownloadOrder" + _name] = type("DownloadOrder" + _name,
                                              (DownloadOrder, mstest.DovecotTestCase),
                                              {"dovecot_options": _opts})
del DownloadOrder

if __name__ == "__main__":
    mstest.main()
