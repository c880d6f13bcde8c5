#!/usr/bin/env python3
"""A refused body FETCH in the middle of a first download (scripted fake
server). The bodies are asked for one command at a time, 500 UIDs each
(test_sync_download_order); a tagged NO for the second command, after part
of its answer, fails the folder with the server's words, but the third
command is still sent and its messages kept, as when every command was in
flight at once. Nothing is lost or doubled: the next run downloads exactly
what is missing. RFC 5530's [EXPUNGEISSUED] (another client expunged
meanwhile) is temporary, exit 75; [SERVERBUG] is not, exit 1."""

import os
import re
import shutil
import tempfile
import unittest

import fakeimap
import mstest
from fakeimap import Mailbox, mailbox_script, mailsync_sync

COUNT = 1100  # three body commands: 500, 500, 100
EXPUNGED = "NO [EXPUNGEISSUED] Some of the requested messages no longer exist"
SERVERBUG = "NO [SERVERBUG] Internal error reading the message"


class BodyRefused(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-body-no-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.box = Mailbox()
        for i in range(COUNT):
            self.box.add(b"From: a@example.org\nSubject: message %d\n"
                         b"Message-ID: <refused-%d@example.org>\n\nbody %d\n" % (i, i, i),
                         ["\\Seen"] if i % 2 else [])

    def local(self):
        return mstest.maildir_messages(os.path.join(self.tmp, "Mail", "INBOX"))

    def test_expungeissued_is_temporary(self):
        self.refused_once(EXPUNGED, 75)

    def test_serverbug_is_permanent(self):
        self.refused_once(SERVERBUG, 1)

    def refused_once(self, text, status):
        seen = []

        def hook(c, tag, kind, responses):
            if kind != "body":
                return None
            seen.append(len(responses))
            if len(seen) != 2:
                return None
            c.send(b"".join(responses[:200]))
            c.send("%s %s\r\n" % (tag, text))
            return False  # the session goes on

        p, srv = mailsync_sync(self.tmp, mailbox_script(self.box, fakeimap.CONDSTORE_CAPS, hook),
                               "-vv")
        self.assertEqual(srv.errors, [], p.stderr[-3000:])
        self.assertEqual(seen, [500, 500, 100], "the commands after the NO were not all sent")
        self.assertEqual(p.returncode, status, p.stdout + p.stderr[-3000:])
        words = text.split("] ", 1)[1]
        self.assertTrue(re.search(r"a: INBOX: .*%s" % re.escape(words), p.stderr),
                        p.stderr[-3000:])
        self.assertIn(words, p.stdout)
        self.assertIn("\u2193 800 new", p.stdout)
        self.assertIn("1 folder error", p.stdout)
        local = self.local()
        self.assertEqual(len(local), 500 + 200 + 100)
        bodies = [b for _u, _f, b in local]
        self.assertEqual(len(set(bodies)), len(bodies))

        p, srv = mailsync_sync(self.tmp, mailbox_script(self.box, fakeimap.CONDSTORE_CAPS))
        self.assertEqual(srv.errors, [], p.stderr[-3000:])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertIn("\u2193 300 new", p.stdout)
        local = sorted((b, fl) for _u, fl, b in self.local())
        server = sorted((mstest.crlf_to_lf(m.body), "S" if "\\Seen" in m.flags else "")
                        for m in self.box.messages)
        self.assertEqual(local, server)


if __name__ == "__main__":
    mstest.main()
