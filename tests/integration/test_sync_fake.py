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

import mstest
from fakeimap import mailsync_sync


def empty_folder_server(names, log, on_append=None):
    """A script for a server whose folders (names, in LIST order) are all
    empty. Every command line is appended to log; on_append(c, tag, rest)
    answers APPEND (after its literal has been read)."""

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
        for verb in ("UID FETCH", "UID SEARCH", "UID STORE", "UID EXPUNGE"):
            handlers[verb] = on_uid
        if on_append is not None:
            handlers["APPEND"] = lambda c, tag, rest, raw: on_append(c, tag, rest)
        try:
            c.serve(handlers)
        finally:
            log.extend(c.commands)

    return script


class Fixture(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-fake-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def sync_with(self, script, *flags):
        """One `mailsync sync` of account a (Maildir and state in self.tmp,
        kept from run to run) against a fake server running script."""
        p, srv = mailsync_sync(self.tmp, script, *flags)
        self.assertEqual(srv.errors, [])
        return p

    def sync_runs(self, lists, on_append=None):
        """One sync per entry of lists (the server's folders for that run);
        returns [(CompletedProcess, commands the server saw)]."""
        out = []
        for names in lists:
            log = []
            p = self.sync_with(empty_folder_server(names, log, on_append), "-v")
            out.append((p, log))
        return out


class InboxCase(Fixture):

    def check_run(self, p, log, kept, refused):
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("a: folder %s is not synced: its local directory is the one of "
                      "folder %s (INBOX is case-insensitive on disk); rename one of them "
                      "on the server" % (refused, kept), p.stderr)
        self.assertNotIn("Inbox/y is not synced", p.stderr)
        selected = [m.group(1) for m in
                    (re.match(r'^\S+ (?:SELECT|EXAMINE) "?([^" ]+)"?', cmd) for cmd in log) if m]
        self.assertNotIn(refused, selected)
        self.assertIn(kept, selected)
        # No CREATE for the local spelling of a folder the server has.
        self.assertFalse([cmd for cmd in log if " CREATE " in cmd], log)
        self.assertEqual(mstest.maildir_folders(os.path.join(self.tmp, "Mail")),
                         ["INBOX", "INBOX/x", "INBOX/y"])

    def test_inbox_spellings_never_share_a_directory(self):
        # The second run finds the local directories and must take them
        # for the server's folders, not for new local ones; the LIST order
        # changes between the runs and must not change which folder wins.
        runs = self.sync_runs([["INBOX", "INBOX/x", "inbox/x", "Inbox/y"],
                               ["INBOX", "inbox/x", "Inbox/y", "INBOX/x"]])
        for p, log in runs:
            self.check_run(p, log, "INBOX/x", "inbox/x")

    def test_the_folder_already_synced_keeps_the_directory(self):
        runs = self.sync_runs([["INBOX", "inbox/x", "Inbox/y"],
                               ["INBOX", "INBOX/x", "inbox/x", "Inbox/y"]])
        self.assertNotIn("is not synced", runs[0][0].stderr)
        self.check_run(runs[1][0], runs[1][1], "inbox/x", "INBOX/x")



class AppendRefused(Fixture):
    """A server that refuses an upload ([OVERQUOTA]): the folder fails with
    the server's words, the local message stays as it is, and the next run
    uploads it once the server takes it, exactly once."""

    def test_overquota_then_accepted(self):
        maildir = os.path.join(self.tmp, "Mail")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(maildir, "INBOX", sub))
        body = (b"From: a@example.org\nTo: b@example.org\nSubject: local draft\n"
                b"Message-ID: <quota-1@example.org>\nDate: Mon, 2 Jan 2023 10:00:00 +0000\n"
                b"\nwritten offline\n")
        path = os.path.join(maildir, "INBOX", "cur", "1700000000.M1P1.host:2,S")
        with open(path, "wb") as f:
            f.write(body)
        answers = ["NO [OVERQUOTA] Quota exceeded (mailbox for user is full)",
                   "OK [APPENDUID 7 1] Append completed"]
        runs = []
        for answer in answers:
            def on_append(c, tag, rest, answer=answer):
                c.send("%s %s\r\n" % (tag, answer))
            runs += self.sync_runs([["INBOX"]], on_append)
        (p1, log1), (p2, log2) = runs
        self.assertNotEqual(p1.returncode, 0, p1.stderr)
        self.assertIn("a: INBOX: ", p1.stderr)
        self.assertIn("[OVERQUOTA] Quota exceeded (mailbox for user is full)", p1.stderr)
        self.assertEqual(len([c for c in log1 if " APPEND " in c]), 1)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), body)
        self.assertEqual(p2.returncode, 0, p2.stderr)
        appends = [c for c in log2 if " APPEND " in c]
        self.assertEqual(len(appends), 1)
        self.assertIn("(\\Seen)", appends[0])
        self.assertIn("written offline\r\n", appends[0])
        self.assertIn("\u2191 1 new", p2.stdout)


class DroppedConnection(Fixture):
    """A connection the server drops in the middle of a folder is a reason
    to try again later (exit status 75), with the folder named."""

    def test_drop_during_select_is_temporary(self):
        def script(c):
            c.greet(caps="IMAP4rev1 LITERAL+ UIDPLUS")

            def on_list(c, tag, rest, raw):
                if rest.startswith('"" ""'):
                    c.send('* LIST (\\Noselect) "/" ""\r\n')
                else:
                    c.send('* LIST (\\HasNoChildren) "/" INBOX\r\n')
                c.ok(tag)

            def on_select(c, tag, rest, raw):
                c.reset()
                return True

            c.serve({"LIST": on_list, "SELECT": on_select, "EXAMINE": on_select})

        p = self.sync_with(script)
        self.assertEqual(p.returncode, 75, p.stdout + p.stderr)
        self.assertIn("a: INBOX: ", p.stderr)
        self.assertIn("1 folder error", p.stdout)


if __name__ == "__main__":
    mstest.main()
