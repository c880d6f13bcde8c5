#!/usr/bin/env python3
"""`mailsync sync` against a scripted IMAP server, for what Dovecot will not
do: a server that keeps "inbox/x" apart from "INBOX/x". Both would land in
one local directory (INBOX is case-insensitive, and written in one spelling
on disk), so the second is refused with a warning on every run instead of
mixing two folders' mail."""

import os
import re
import shutil
import tempfile
import unittest

import dovecot
import mstest
from fakeimap import FakeIMAP


def empty_folder_server(names, log):
    """A script for a server whose folders (names, in LIST order) are all
    empty. Every command line is appended to log."""

    def on_list(c, tag, rest, raw):
        if rest.startswith('"" ""'):
            c.send('* LIST (\\Noselect) "/" ""\r\n')
        else:
            for n in names:
                c.send('* LIST (\\HasNoChildren) "/" "%s"\r\n' % n)
        c.ok(tag)

    def on_status(c, tag, rest, raw):
        name = re.match(r'"?([^"]+)"? ', rest).group(1)
        c.send('* STATUS "%s" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 7 UNSEEN 0)\r\n' % name)
        c.ok(tag)

    def on_select(c, tag, rest, raw):
        c.send("* 0 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 1] ok\r\n"
               "* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)\r\n")
        c.send("%s OK [READ-WRITE] selected\r\n" % tag)

    def on_uid(c, tag, rest, raw):
        c.ok(tag)

    def script(c):
        c.greet(caps="IMAP4rev1 LITERAL+ UIDPLUS")
        handlers = {"LIST": on_list, "STATUS": on_status, "SELECT": on_select,
                    "EXAMINE": on_select, "UID": on_uid, "CLOSE": on_uid, "UNSELECT": on_uid}
        try:
            c.serve(handlers)
        finally:
            log.extend(c.commands)

    return script


class InboxCase(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-fake-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_inbox_spellings_never_share_a_directory(self):
        log = []
        with FakeIMAP(empty_folder_server(["INBOX", "INBOX/x", "inbox/x", "Inbox/y"], log)) as srv:
            maildir = os.path.join(self.tmp, "Mail")
            acct = {"host": "127.0.0.1", "port": srv.port, "tls": "implicit",
                    "ca_file": srv.ca_cert, "user": "alice", "password": "pw",
                    "maildir": maildir}
            cfg = os.path.join(self.tmp, "config.yaml")
            dovecot.write_mailsync_config(cfg, {"a": acct},
                                          state_dir=os.path.join(self.tmp, "state"))
            # The second run finds the local directories and must take them
            # for the server's folders, not for new local ones.
            runs = [mstest.run_mailsync(cfg, "-v", "sync", "a", timeout=60) for _ in range(2)]
            self.assertEqual(srv.errors, [])
        for p in runs:
            self.check_run(p, log, maildir)

    def check_run(self, p, log, maildir):
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("a: folder inbox/x is not synced: its local directory is the one of "
                      "folder INBOX/x (INBOX is case-insensitive on disk); rename one of them "
                      "on the server", p.stderr)
        self.assertNotIn("Inbox/y is not synced", p.stderr)
        selected = [re.sub(r"^\S+ ", "", cmd) for cmd in log
                    if re.match(r"^\S+ (SELECT|EXAMINE) ", cmd)]
        self.assertFalse(any("inbox/x" in s for s in selected), selected)
        self.assertTrue(any('INBOX/x' in s for s in selected), selected)
        # No CREATE for the local spelling of a folder the server has.
        self.assertFalse([cmd for cmd in log if " CREATE " in cmd], log)
        self.assertEqual(mstest.maildir_folders(maildir), ["INBOX", "INBOX/x", "INBOX/y"])


if __name__ == "__main__":
    mstest.main()
