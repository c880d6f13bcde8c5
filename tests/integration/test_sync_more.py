#!/usr/bin/env python3
"""More of the two-way IMAP sync (issue 4) against a real Dovecot, through
`mailsync --config CFG sync ACCOUNT`: a UIDVALIDITY change re-matched
without a second download, APPEND without UIDPLUS, a clean LOGOUT, 50 MB
messages both ways with bounded memory, delete_folders both ways, and
max_size / max_age_days skips on every run.

Scenarios that depend on the server path run under the three capability
profiles of synctest.PROFILES: a Dovecot with QRESYNC/CONDSTORE and
LIST-STATUS (…Qresync), one with CONDSTORE only, as Gmail offers
(…Condstore), and one that hides them all (…Fallback). NoUidplus and
SessionEnd run once: the first is its own capability set (no UIDPLUS), and
LOGOUT and streaming 50 MB messages do not depend on the sync path."""

import collections
import glob
import os
import re
import shutil
import subprocess
import time
import unittest

import dovecot
import mailgen
import mstest
from synctest import CONDSTORE_CAPS, FALLBACK_CAPS, SyncFixture, letters

NO_UIDPLUS_CAPS = "IMAP4rev1 ID ENABLE IDLE LITERAL+ SPECIAL-USE"


def simple(subject, body, msgid=None, extra=b""):
    """A small CRLF message; msgid None leaves the Message-ID out."""
    h = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: " + subject + b"\r\n"
    h += b"Date: Mon, 2 Jan 2023 10:00:00 +0000\r\n"
    if msgid is not None:
        h += b"Message-ID: " + msgid + b"\r\n"
    return h + extra + b"\r\n" + body


# ---- UIDVALIDITY ---------------------------------------------------------------


class UidvalidityScenarios(SyncFixture):

    def corpus(self):
        """Messages that only the header hash can tell apart, next to
        ordinary ones: two without a Message-ID and of the same size, two
        sharing one Message-ID and size, and generated mail."""
        msgs = mailgen.generate(8, seed=21, max_size=20000)
        msgs += [
            simple(b"no id A", b"same body\r\n"),
            simple(b"no id B", b"same body\r\n"),
            simple(b"dup id A", b"same body\r\n", msgid=b"<dup@example.org>"),
            simple(b"dup id B", b"same body\r\n", msgid=b"<dup@example.org>"),
        ]
        flags = ["", "\\Seen", "\\Seen \\Flagged", "\\Answered", "", "\\Seen", "\\Draft", "",
                 "\\Seen", "\\Flagged", "\\Answered", ""]
        return msgs, flags

    def recreate(self, folder, msgs, flags):
        """Deletes the mailbox on the server and saves msgs again: Dovecot
        gives the new mailbox a new UIDVALIDITY."""
        self.dovecot.doveadm("mailbox", "delete", "-u", self.user, folder)
        self.dovecot.save_many(self.user, folder, msgs, flags)

    def test_uidvalidity_change_rematches(self):
        msgs, flags = self.corpus()
        self.dovecot.save_many(self.user, "Work", msgs, flags)
        cfg = self.config(folders=["Work"])
        self.sync(cfg)
        self.assert_same("Work")
        before = {u for u, _f, _b in self.local("Work")}
        self.assertEqual(len(before), 12)
        uv = self.status("Work")["UIDVALIDITY"]

        # Local changes since the last sync: a flag (on a message that only
        # the header hash identifies) and a new message.
        lost = msgs[0]
        no_id_a = self.unique_of("Work", mstest.crlf_to_lf(msgs[8]))
        self.set_local_flags("Work", no_id_a, "FS")
        new_local = mstest.crlf_to_lf(simple(b"written offline", b"new here\r\n",
                                             msgid=b"<offline@example.org>"))
        self.deliver_local("Work", new_local, "1700000001.M1P1.mutt")

        # The server recreates the folder: same messages in another order
        # (so the UIDs change too), one lost, one new, one flag changed.
        new_server = simple(b"arrived meanwhile", b"new there\r\n", msgid=b"<there@example.org>")
        order = list(range(1, 12))[::-1]
        re_msgs = [msgs[i] for i in order] + [new_server]
        re_flags = [flags[i] for i in order] + ["\\Seen"]
        re_flags[order.index(3)] = "\\Answered \\Seen"  # msgs[3] was only \Answered
        self.recreate("Work", re_msgs, re_flags)
        self.assertNotEqual(self.status("Work")["UIDVALIDITY"], uv, "UIDVALIDITY did not change")

        p = self.sync(cfg, trace=True)
        # Header blocks were fetched for the four look-alikes only (saved
        # first, so UIDs 1-4), in one command.
        self.assertEqual(re.findall(r"C: \S+ UID FETCH (\S+) \(UID BODY\.PEEK\[HEADER\]\)",
                                    p.stderr), ["1:4"])
        self.assertIn("UIDVALIDITY of Work changed: 11 matched, 1 downloaded, 2 uploaded",
                      p.stdout)
        self.assertIn("\u2193 1 new", p.stdout)
        self.assertIn("\u2191 2 new", p.stdout)
        after = {u for u, _f, _b in self.local("Work")}
        # Every file already here was kept: nothing was downloaded twice.
        self.assertTrue(before <= after, before - after)
        self.assertEqual(len(after), 14)
        self.assert_no_duplicates("Work")
        self.assert_same("Work")
        srv = {mstest.crlf_to_lf(b): letters(f) for _u, f, b in self.server("Work")}
        self.assertEqual(srv[mstest.crlf_to_lf(msgs[8])], "FS")  # the local change won
        self.assertEqual(srv[mstest.crlf_to_lf(msgs[9])], "F")   # its twin kept its own
        self.assertEqual(srv[mstest.crlf_to_lf(msgs[3])], "RS")  # the server change won
        self.assertEqual(srv[mstest.crlf_to_lf(msgs[10])], "R")
        self.assertEqual(srv[mstest.crlf_to_lf(msgs[11])], "")
        self.assertIn(mstest.crlf_to_lf(lost), srv)  # uploaded again, not deleted
        self.assertIn(new_local, srv)

        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.assertNotIn("UIDVALIDITY", p.stdout)
        self.assert_same("Work")

    def test_uidvalidity_change_by_lost_index(self):
        """Dovecot also renumbers a folder whose index and uidlist are lost
        (e.g. restored from a file backup): same UIDs, new UIDVALIDITY."""
        msgs = mailgen.generate(6, seed=22, max_size=8000)
        self.dovecot.save_many(self.user, "Old", msgs, "\\Seen")
        cfg = self.config(folders=["Old"])
        self.sync(cfg)
        uv = self.status("Old")["UIDVALIDITY"]
        fdir = os.path.join(self.dovecot.home(self.user), "Maildir", ".Old")
        for f in glob.glob(os.path.join(fdir, "dovecot-uidlist")) + \
                glob.glob(os.path.join(fdir, "dovecot.index*")):
            os.unlink(f)
        self.assertNotEqual(self.status("Old")["UIDVALIDITY"], uv)
        before = self.local("Old")
        # A dry run tells what would happen and changes nothing.
        p = self.sync(cfg, "--dry-run")
        self.assertIn("UIDVALIDITY of Old changed: 6 matched, 0 to download, 0 to upload",
                      p.stdout)
        p = self.sync(cfg)
        self.assertIn("UIDVALIDITY of Old changed: 6 matched, 0 downloaded, 0 uploaded", p.stdout)
        self.assertEqual(self.local("Old"), before)
        self.assert_same("Old")


class UidvalidityQresync(UidvalidityScenarios, mstest.DovecotTestCase):
    pass


class UidvalidityCondstore(UidvalidityScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": CONDSTORE_CAPS}


class UidvalidityFallback(UidvalidityScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": FALLBACK_CAPS}


# ---- APPEND without UIDPLUS -------------------------------------------------------


class NoUidplus(SyncFixture, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": NO_UIDPLUS_CAPS}

    def test_appended_messages_recorded_in_the_same_run(self):
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(3, seed=31, max_size=5000))
        cfg = self.config()
        self.sync(cfg)
        with_id = mstest.crlf_to_lf(simple(b"with id", b"one\r\n", msgid=b"<one@example.org>"))
        local = [
            (with_id, "1700000010.M1P1.h", ""),
            (with_id, "1700000011.M1P1.h", ""),  # a copy: a second message
            (mstest.crlf_to_lf(simple(b"no id A", b"same\r\n")), "1700000012.M1P1.h", "S"),
            (mstest.crlf_to_lf(simple(b"no id B", b"same\r\n")), "1700000013.M1P1.h", "F"),
            (mstest.crlf_to_lf(simple(b"dup A", b"same\r\n", msgid=b"<dup@x>")),
             "1700000014.M1P1.h", "R"),
            (mstest.crlf_to_lf(simple(b"dup B", b"same\r\n", msgid=b"<dup@x>")),
             "1700000015.M1P1.h", ""),
        ]
        for data, unique, fl in local:
            self.deliver_local("INBOX", data, unique)
            if fl:
                self.set_local_flags("INBOX", unique, fl)
        p = self.sync(cfg, trace=True)
        self.assertIn("\u2191 6 new", p.stdout)
        self.assertNotIn("UID SEARCH", p.stderr)
        # One listing of the new UIDs, then header blocks only for the
        # messages a Message-ID cannot tell apart (all but none: the copies
        # share one, two have none, two share one).
        self.assertEqual(len(re.findall(r"C: \S+ UID FETCH 4:\* \(UID RFC822\.SIZE "
                                        r"BODY\.PEEK\[HEADER\.FIELDS \(MESSAGE-ID\)\]\)",
                                        p.stderr)), 1, p.stderr[-3000:])
        self.assertEqual(re.findall(r"C: \S+ UID FETCH (\S+) \(UID BODY\.PEEK\[HEADER\]\)",
                                    p.stderr), ["4:9"])
        self.assert_same()
        self.assert_no_duplicates_except(with_id, 2)
        # Everything was recorded: later runs neither append, nor search,
        # nor adopt anything.
        for _ in range(2):
            p = self.sync(cfg, trace=True)
            self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                          p.stdout)
            self.assertNotIn("adopted", p.stdout)
            self.assertNotIn("APPEND", p.stderr)
            self.assertNotIn("UID SEARCH", p.stderr)
        self.assertEqual(len(self.server()), 9)
        self.assertEqual(len(self.local()), 9)
        self.assert_same()

    def assert_no_duplicates_except(self, data, count):
        srv = collections.Counter(mstest.crlf_to_lf(b) for _u, _f, b in self.server())
        loc = collections.Counter(b for _u, _f, b in self.local())
        self.assertEqual(srv, loc)
        for b, n in srv.items():
            self.assertEqual(n, count if b == data else 1, b[:60])


# ---- delete_folders ---------------------------------------------------------------


class DeleteFolderScenarios(SyncFixture):

    def setup_folder(self, **extra):
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(2, seed=61, max_size=3000))
        self.dovecot.save_many(self.user, "Old/Stuff", mailgen.generate(4, seed=62, max_size=3000),
                               "\\Seen")
        cfg = self.config(**extra)
        self.sync(cfg)
        self.assertEqual(len(self.local("Old/Stuff")), 4)
        return cfg

    def delete_on_server(self, folder):
        self.dovecot.doveadm("mailbox", "delete", "-u", self.user, folder)
        self.assertNotIn(folder, self.dovecot.folders(self.user))

    # Deleted on the server.

    def test_server_deletion_kept_without_option(self):
        cfg = self.setup_folder()
        self.delete_on_server("Old/Stuff")
        p = self.sync(cfg, ok=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("folder 'Old/Stuff' was deleted on the server; the local copy is kept",
                      p.stdout + p.stderr)
        self.assertIn("delete_folders: true", p.stdout + p.stderr)
        self.assertEqual(len(self.local("Old/Stuff")), 4)
        self.assertNotIn("Old/Stuff", self.dovecot.folders(self.user))

    def test_server_deletion_removes_synced_local_copy(self):
        cfg = self.setup_folder(delete_folders=True)
        # A flag changed here is no unsynced mail.
        unique = self.local("Old/Stuff")[0][0]
        self.set_local_flags("Old/Stuff", unique, "FS")
        self.delete_on_server("Old/Stuff")
        p = self.sync(cfg, "--dry-run")
        self.assertIn("Old/Stuff: delete the local folder and its 4 message(s)", p.stdout)
        self.assertEqual(len(self.local("Old/Stuff")), 4)
        p = self.sync(cfg)
        self.assertIn("folder Old/Stuff was deleted on the server: deleted here too (4 messages)",
                      p.stdout)
        self.assertIn("\u2193 0 new, 0 flags, 4 deleted", p.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.folder_dir("Old/Stuff"), "cur")))
        self.assertEqual(len(self.local("INBOX")), 2)
        # Forgotten: not created again on either side.
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.assertNotIn("Old/Stuff", self.dovecot.folders(self.user))

    def test_server_deletion_keeps_unsynced_local_mail(self):
        cfg = self.setup_folder(delete_folders=True)
        new = mstest.crlf_to_lf(simple(b"written here", b"keep me\r\n", msgid=b"<keep@x>"))
        self.deliver_local("Old/Stuff", new, "1700000200.M1P1.h")
        self.delete_on_server("Old/Stuff")
        p = self.sync(cfg, ok=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("folder 'Old/Stuff' was deleted on the server; the local copy holds 1 "
                      "message(s) that were never synced, so it is kept", p.stdout + p.stderr)
        self.assertEqual(len(self.local("Old/Stuff")), 5)
        self.assertIn(new, [b for _u, _f, b in self.local("Old/Stuff")])

    def test_unsubscribed_folder_is_not_a_deletion(self):
        self.setup_folder(delete_folders=True)
        c = self.imap()
        try:
            typ, data = c.unsubscribe(dovecot.imap_mailbox("Old/Stuff"))
            self.assertEqual(typ, "OK", data)
        finally:
            c.logout()
        cfg = self.config(delete_folders=True, subscribed_only=True)
        p = self.sync(cfg)
        self.assertNotIn("Old/Stuff", p.stdout + p.stderr)
        self.assertEqual(len(self.local("Old/Stuff")), 4)
        self.assertEqual(len(self.server("Old/Stuff")), 4)

    # Deleted locally.

    def test_local_deletion_kept_without_option(self):
        cfg = self.setup_folder()
        shutil.rmtree(self.folder_dir("Old/Stuff"))
        p = self.sync(cfg, ok=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("folder 'Old/Stuff': the local folder vanished; not deleting the messages "
                      "on the server", p.stdout + p.stderr)
        self.assertEqual(len(self.server("Old/Stuff")), 4)

    def test_local_deletion_deletes_known_server_folder(self):
        cfg = self.setup_folder(delete_folders=True)
        shutil.rmtree(self.folder_dir("Old/Stuff"))
        p = self.sync(cfg, "--dry-run")
        self.assertIn("Old/Stuff: delete the folder and its 4 message(s) on the server", p.stdout)
        self.assertIn("Old/Stuff", self.dovecot.folders(self.user))
        p = self.sync(cfg, trace=True)
        self.assertIn("folder Old/Stuff was deleted locally: deleted on the server too "
                      "(4 messages)", p.stdout)
        self.assertIn("\u2191 0 new, 0 flags, 4 deleted", p.stdout)
        self.assertNotIn("Old/Stuff", self.dovecot.folders(self.user))
        self.assertIn("logout -> closed", p.stderr)  # the session survived the DELETE
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.assertFalse(os.path.exists(self.folder_dir("Old/Stuff")))

    def test_local_deletion_keeps_server_folder_with_new_mail(self):
        cfg = self.setup_folder(delete_folders=True)
        shutil.rmtree(self.folder_dir("Old/Stuff"))
        self.dovecot.save(self.user, "Old/Stuff", simple(b"arrived", b"new\r\n", msgid=b"<n@x>"))
        p = self.sync(cfg, ok=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("folder 'Old/Stuff' was deleted locally; the server copy holds 1 message(s) "
                      "that were never synced, so it is not deleted on the server",
                      p.stdout + p.stderr)
        self.assertEqual(len(self.server("Old/Stuff")), 5)
        # --force brings it back instead.
        self.sync(cfg, "--force")
        self.assertEqual(len(self.local("Old/Stuff")), 5)
        self.assert_same("Old/Stuff")


# ---- counts ---------------------------------------------------------------------------


class CountScenarios(SyncFixture):

    def test_flag_added_and_removed_counts_one_message(self):
        """A message that gains one flag and loses another is in two UID
        STOREs: both must apply, and it counts as one."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(3, seed=71, max_size=3000),
                               "\\Seen")
        cfg = self.config()
        self.sync(cfg)
        unique = self.local()[0][0]
        self.set_local_flags("INBOX", unique, "F")  # +\Flagged, -\Seen
        p = self.sync(cfg, trace=True)
        # Both STOREs apply: the second one touches a message the first one
        # changed, so it cannot be conditional on the MODSEQ seen before.
        self.assertEqual(len(re.findall(r"C: \S+ UID STORE", p.stderr)), 2)
        self.assertNotIn("[MODIFIED", p.stderr)
        self.assertIn("\u2191 0 new, 1 flags, 0 deleted", p.stdout)
        self.assert_same()
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)


class KeywordLockScenarios(SyncFixture):

    def test_local_keyword_name_that_is_no_atom_stays_local(self):
        """dovecot-keywords written by another program may name a letter
        with something no IMAP keyword can be ("bogus line"). A message
        carrying that letter syncs its other flags; the name never goes to
        the server, and nothing flips back on the next run."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(1, seed=74, max_size=3000))
        cfg = self.config()
        self.sync(cfg)
        with open(os.path.join(self.folder_dir("INBOX"), "dovecot-keywords"), "w") as f:
            f.write("0 bogus line\n")
        unique = self.local()[0][0]
        self.set_local_flags("INBOX", unique, "Sa")
        p = self.sync(cfg)
        self.assertIn("\u2191 0 new, 1 flags", p.stdout)
        flags = [f for _u, f, _b in self.server()][0]
        self.assertEqual(sorted(flags), ["\\Seen"])
        self.assertEqual([fl for _u, fl, _b in self.local()], ["Sa"])
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.assertEqual([fl for _u, fl, _b in self.local()], ["Sa"])

    def test_keyword_lock_held_fails_folder_and_keeps_keyword(self):
        """A new keyword needs a letter in dovecot-keywords, which is only
        assigned under dovecot-uidlist.lock. While a live process holds that
        lock the folder fails with an error naming the lock, and nothing is
        recorded: the next run must neither lose the keyword on the server
        nor download a second copy."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(3, seed=73, max_size=3000),
                               "\\Seen")
        cfg = self.config()
        self.sync(cfg)
        uids = [u for u, _f, _b in self.server()]
        self.store("INBOX", uids[0], "+FLAGS", "work")
        # A local deletion waits with the rest (and must not trip the run).
        gone = [(u, b) for u, _f, b in self.server() if u == uids[2]][0][1]
        victim = [un for un, _f, b in self.local() if b == mstest.crlf_to_lf(gone)][0]
        os.unlink(self.local_file("INBOX", victim))
        self.dovecot.save_many(self.user, "INBOX",
                               [simple(b"new with keyword", b"body\r\n", b"<kw-new@x>")],
                               "\\Seen home")
        lock = os.path.join(self.folder_dir("INBOX"), "dovecot-uidlist.lock")
        with open(lock, "w") as f:
            f.write("%d:%s" % (os.getpid(), os.uname().nodename))
        old = time.time() - 30
        os.utime(lock, (old, old))
        p = self.sync(cfg, ok=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("dovecot-uidlist.lock: held by process %d" % os.getpid(), p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.folder_dir("INBOX"),
                                                     "dovecot-keywords")))
        self.assertEqual(len(self.local()), 2)
        self.assertEqual(len(self.server()), 4, "nothing deleted on the server yet")
        os.unlink(lock)
        p = self.sync(cfg)
        flags = {u: f for u, f, _b in self.server()}
        self.assertIn("work", flags[uids[0]])
        self.assertNotIn(uids[2], flags)
        self.assertEqual(len(self.local()), 3)
        self.assert_no_duplicates()
        with open(os.path.join(self.folder_dir("INBOX"), "dovecot-keywords")) as f:
            kw = {name: int(n) for n, name in (ln.split(None, 1) for ln in f.read().splitlines())}
        self.assertEqual(sorted(kw), ["home", "work"])
        have = sorted(fl for _u, fl, _b in self.local())
        self.assertEqual(have, sorted(["S", "S" + chr(ord("a") + kw["work"]),
                                       "S" + chr(ord("a") + kw["home"])]))
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)


class DeleteFoldersQresync(DeleteFolderScenarios, mstest.DovecotTestCase):
    pass


class DeleteFoldersCondstore(DeleteFolderScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": CONDSTORE_CAPS}


class DeleteFoldersFallback(DeleteFolderScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": FALLBACK_CAPS}


class KeywordLockQresync(KeywordLockScenarios, mstest.DovecotTestCase):
    pass


class KeywordLockCondstore(KeywordLockScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": CONDSTORE_CAPS}


class KeywordLockFallback(KeywordLockScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": FALLBACK_CAPS}


class CountsQresync(CountScenarios, mstest.DovecotTestCase):
    pass


class CountsCondstore(CountScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": CONDSTORE_CAPS}


class CountsFallback(CountScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": FALLBACK_CAPS}


# ---- max_size / max_age_days -------------------------------------------------------

NOW_2023 = "1685620800"  # 2023-06-01: messages dated January 2023 are recent


def dated(subject, date, body):
    return (b"From: a@example.org\r\nSubject: " + subject + b"\r\nDate: " + date +
            b"\r\nMessage-ID: <" + subject.replace(b" ", b".") + b"@skip>\r\n\r\n" + body)


class SkipScenarios(SyncFixture):

    def test_skipped_messages_reported_and_kept_skipped(self):
        recent = b"Mon, 2 Jan 2023 10:00:00 +0000"
        small = [dated(b"small %d" % i, recent, b"short\r\n") for i in range(3)]
        big = [dated(b"big %d" % i, recent, b"x" * 76 + b"\r\n") for i in range(2)]
        big = [m.replace(b"\r\n\r\n", b"\r\n\r\n" + (b"y" * 76 + b"\r\n") * 1000, 1)
               for m in big]
        old = dated(b"old one", b"Tue, 2 Jan 2001 10:00:00 +0000", b"ancient\r\n")
        uids = self.dovecot.save_many(self.user, "INBOX", small + big + [old])
        env = {"MAILSYNC_NOW": NOW_2023}
        cfg = self.config(max_size=50000, max_age_days=365)
        skipped = "; 2 skipped over max_size; 1 skipped older than max_age_days"
        p = self.sync(cfg, env=env)
        self.assertIn("\u2193 3 new", p.stdout)
        self.assertIn(skipped, p.stdout)
        self.assertEqual(len(self.local()), 3)
        # Nothing changed: still reported.
        p = self.sync(cfg, env=env)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted", p.stdout)
        self.assertIn(skipped, p.stdout)
        # Flags change on skipped messages (an incremental resync hears of
        # them) and a new message arrives: only the new one comes down.
        self.store("INBOX", uids[3], "+FLAGS", "\\Flagged")
        self.store("INBOX", uids[5], "+FLAGS", "\\Seen")
        self.dovecot.save(self.user, "INBOX", dated(b"small new", recent, b"new\r\n"))
        p = self.sync(cfg, env=env)
        self.assertIn("\u2193 1 new", p.stdout)
        self.assertIn(skipped, p.stdout)
        bodies = [b for _u, _f, b in self.local()]
        self.assertEqual(len(bodies), 4)
        self.assertFalse(any(b"big" in b or b"old one" in b for b in bodies))
        # The folder state advanced past the skipped messages.
        p = self.sync(cfg, env=env, trace=True)
        self.assertIn(skipped, p.stdout)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted", p.stdout)
        if self.incremental:
            self.assertNotRegex(p.stderr, r"C: \S+ SELECT INBOX")
        # A higher max_size lets the large ones come down (with their flags).
        cfg = self.config(max_size=500000, max_age_days=365)
        p = self.sync(cfg, env=env)
        self.assertIn("\u2193 2 new", p.stdout)
        self.assertIn("; 1 skipped older than max_age_days", p.stdout)
        self.assertNotIn("over max_size", p.stdout)
        loc = {b: fl for _u, fl, b in self.local()}
        self.assertEqual(loc[mstest.crlf_to_lf(big[0])], "F")
        self.assertEqual(len(loc), 6)
        p = self.sync(cfg, env=env)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        self.assertIn("; 1 skipped older than max_age_days", p.stdout)


# incremental: LIST-STATUS tells that the folder did not move, so it is not
# selected at all. Without LIST-STATUS (the other two profiles) every folder
# is selected on every run: the engine asks no per-folder STATUS.
class SkipQresync(SkipScenarios, mstest.DovecotTestCase):
    incremental = True


class SkipCondstore(SkipScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": CONDSTORE_CAPS}
    incremental = False


class SkipFallback(SkipScenarios, mstest.DovecotTestCase):
    dovecot_options = {"imap_capability": FALLBACK_CAPS}
    incremental = False


# ---- LOGOUT and 50 MB messages ----------------------------------------------------

BIG = 50 * 1024 * 1024
RSS_LIMIT_KB = 40 * 1024


def big_message(seed, subject):
    """About 50 MB: a text part and a base64 attachment of random bytes."""
    import base64
    import random
    raw = random.Random(seed).randbytes(BIG * 3 // 4 - 4096)
    b64 = base64.b64encode(raw)
    lines = b"\r\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    return (b"From: big@example.org\r\nTo: b@example.org\r\nSubject: " + subject + b"\r\n"
            b"Date: Mon, 2 Jan 2023 10:00:00 +0000\r\nMessage-ID: <" + subject + b"@big>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
            b"--b\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + lines + b"\r\n--b--\r\n")


def under_asan(binary):
    """AddressSanitizer multiplies memory use: peak RSS means nothing then."""
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


class SessionEnd(SyncFixture, mstest.DovecotTestCase):

    def run_measured(self, cfg, *args):
        """Runs mailsync under /usr/bin/time, returning (returncode, stdout,
        stderr, peak RSS in kB or None). Not os.wait4: a child forked from
        this test (which holds 50 MB messages) inherits its high-water mark
        across exec, so only a small parent such as time(1) measures right."""
        binary = mstest.mailsync_bin()
        rss_path = os.path.join(self.tmp, "rss.txt")
        timer = ["/usr/bin/time", "-f", "%M", "-o", rss_path] if os.access(
            "/usr/bin/time", os.X_OK) else []
        p = subprocess.run(timer + [binary, "--config", cfg] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=600)
        rss = None
        if timer:
            with open(rss_path) as f:
                rss = int(f.read().split()[-1])
        return p.returncode, p.stdout, p.stderr, rss

    def test_logout_at_the_end(self):
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(3, seed=41, max_size=4000))
        cfg = self.config()
        p = self.sync(cfg, trace=True)
        self.assertRegex(p.stderr, r"C: \S+ LOGOUT")
        self.assertIn("logout -> closed", p.stderr)
        self.assertNotIn("logout -> failed", p.stderr)
        log = [ln for ln in self.dovecot.log().splitlines() if "imap(%s)" % self.user in ln]
        self.assertTrue(any("Logged out" in ln for ln in log), log)
        self.assertFalse(any("Connection closed" in ln for ln in log), log)

    def test_50mb_messages_both_ways(self):
        binary = mstest.mailsync_bin()
        if binary is None:
            raise unittest.SkipTest("no mailsync binary")
        check_rss = not under_asan(binary)
        down = big_message(51, b"down")
        self.assertGreaterEqual(len(down), BIG - 8192)
        self.dovecot.save(self.user, "INBOX", down, "\\Seen")
        cfg = self.config()
        rc, out, err, rss = self.run_measured(cfg, "sync", "a")
        self.assertEqual(rc, 0, out + err[-3000:])
        self.assertIn("\u2193 1 new", out)
        loc = self.local()
        self.assertEqual(len(loc), 1)
        self.assertEqual(loc[0][1], "S")
        self.assertTrue(loc[0][2] == mstest.crlf_to_lf(down), "downloaded bytes differ")
        if check_rss and rss is not None:
            self.assertLess(rss, RSS_LIMIT_KB, "peak RSS %d kB downloading 50 MB" % rss)
            print("(peak RSS downloading 50 MB: %d kB)" % rss)
        del loc

        up = mstest.crlf_to_lf(big_message(52, b"up"))
        self.deliver_local("INBOX", up, "1700000100.M1P1.big")
        rc, out, err, rss = self.run_measured(cfg, "sync", "a")
        self.assertEqual(rc, 0, out + err[-3000:])
        self.assertIn("\u2191 1 new", out)
        srv = {mstest.crlf_to_lf(b) for _u, _f, b in self.server()}
        self.assertEqual(len(srv), 2)
        self.assertIn(up, srv, "uploaded bytes differ")
        if check_rss and rss is not None:
            self.assertLess(rss, RSS_LIMIT_KB, "peak RSS %d kB uploading 50 MB" % rss)
            print("(peak RSS uploading 50 MB: %d kB)" % rss)
        p = self.sync(cfg)
        self.assertIn("\u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted",
                      p.stdout)
        if not check_rss:
            print("(peak RSS not checked: this mailsync is built with AddressSanitizer)")


if __name__ == "__main__":
    mstest.main()
