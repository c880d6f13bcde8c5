#!/usr/bin/env python3
"""Rough edges of two-way sync found in a mutt user's trial (issue 12),
against a real Dovecot under the three capability profiles of
synctest.PROFILES (QRESYNC, CONDSTORE only, neither):

- `sync --dry-run` plans what the real run then does, counts included,
  also for folders created on either side;
- `on_local_delete: trash` on a server that marks no folder \\Trash: a
  folder named Trash (in any case) is used, else the deletions are made as
  \\Deleted flags with one warning naming the `trash` key, and a deletion
  made once is never made (or counted) again;
- a zero-byte file in a Maildir is named, left out of later runs, and
  listed by `mailsync status`, while the rest of its folder syncs."""

import json
import os
import re

import mailgen
import mstest
from synctest import PROFILES, SyncFixture

SUMMARY = re.compile(r"^a: \u2193 (\d+) new, (\d+) flags, (\d+) deleted; "
                     r"\u2191 (\d+) new, (\d+) flags, (\d+) deleted", re.M)
KEYS = ("new_down", "flags_down", "deleted_down", "new_up", "flags_up", "deleted_up")

# Dovecot's test configuration with the Trash mailbox neither marked
# \Trash (SPECIAL-USE) nor created by itself.
NO_TRASH_CONF = """
namespace inbox {
  mailbox Trash {
    special_use =
    auto = no
  }
}
"""


def summary(p):
    """The counts of the account's summary line, by name."""
    m = SUMMARY.search(p.stdout)
    if m is None:
        raise AssertionError("no summary line in:\n" + p.stdout + p.stderr)
    return dict(zip(KEYS, map(int, m.groups())))


def plan_counts(out):
    """The same counts, taken from the plan --dry-run prints: one line per
    download, upload, local flag change and deletion; the server flag
    changes as the distinct UIDs of the `server flags` lines of a folder."""
    c = dict.fromkeys(KEYS, 0)
    stored = set()
    for line in out.splitlines():
        folder, _, what = line.partition(": ")
        if what.startswith("download uid "):
            c["new_down"] += 1
        elif what.startswith("upload "):
            c["new_up"] += 1
        elif what.startswith("set local flags of "):
            c["flags_down"] += 1
        elif what.startswith("delete local "):
            c["deleted_down"] += 1
        elif what.startswith("delete on the server uid "):
            c["deleted_up"] += 1
        elif what.startswith("server flags "):
            uids = what.split(":", 1)[1].split()
            stored.update((folder, u) for u in uids)
    c["flags_up"] = len(stored)
    return c


def msg(seed, i, size=2500):
    return mailgen.message(seed=seed, index=i, size=size)


class RoughScenarios(SyncFixture):

    def seed_inbox(self, n, seed=1, folder="INBOX"):
        msgs = [msg(seed, i) for i in range(n)]
        self.dovecot.save_many(self.user, folder, msgs)
        return msgs

    def snapshot(self, folders):
        return ({f: self.local(f) for f in folders},
                {f: sorted((fl, b) for _u, fl, b in self.server(f)) for f in folders
                 if f in self.dovecot.folders(self.user)})

    def test_dry_run_plan_equals_the_real_run(self):
        """A table of mixed changes (new mail each way, flags each way,
        deletions each way, a folder created locally and one created on
        the server): the plan --dry-run prints, and the counts of its
        summary, are what the real run then reports, which is the table;
        the dry run changes nothing on either side."""
        self.seed_inbox(8)
        cfg = self.config()
        self.sync(cfg)
        srv = {u: b for u, _f, b in self.server()}
        uids = sorted(srv)
        # Server side, as another client: 2 new, one flag change, one expunge.
        self.dovecot.save_many(self.user, "INBOX", [msg(2, 0), msg(2, 1)])
        self.store("INBOX", uids[0], "+FLAGS", "\\Flagged")
        self.expunge("INBOX", [uids[1]])
        # Local side, as mutt: 2 new, one flag change, one deletion.
        self.deliver_local("INBOX", mstest.crlf_to_lf(msg(3, 0)), "1700000001.M1P1.mutt")
        self.deliver_local("INBOX", mstest.crlf_to_lf(msg(3, 1)), "1700000002.M1P1.mutt")
        self.set_local_flags("INBOX", self.unique_of("INBOX", mstest.crlf_to_lf(srv[uids[2]])),
                             "S")
        os.unlink(self.local_file("INBOX", self.unique_of("INBOX",
                                                          mstest.crlf_to_lf(srv[uids[3]]))))
        # A folder created locally with 2 messages, one on the server with 3.
        self.deliver_local("Projects", mstest.crlf_to_lf(msg(4, 0)), "1700000003.M1P1.mutt")
        self.deliver_local("Projects", mstest.crlf_to_lf(msg(4, 1)), "1700000004.M1P1.mutt")
        self.seed_inbox(3, seed=5, folder="Archive")
        want = {"new_down": 2 + 3, "flags_down": 1, "deleted_down": 1,
                "new_up": 2 + 2, "flags_up": 1, "deleted_up": 1}

        folders = ["INBOX", "Projects", "Archive"]
        before = self.snapshot(folders)
        dry = self.sync(cfg, "--dry-run")
        self.assertEqual(self.snapshot(folders), before, "the dry run changed something")
        self.assertFalse(os.path.exists(self.folder_dir("Archive")))
        self.assertIn("Projects: create the folder on the server\n", dry.stdout)
        self.assertEqual(len(re.findall(r"^Projects: upload ", dry.stdout, re.M)), 2, dry.stdout)
        self.assertIn("Archive: create the folder locally\n", dry.stdout)
        self.assertEqual(len(re.findall(r"^Archive: download uid ", dry.stdout, re.M)), 3,
                         dry.stdout)
        self.assertIn("(dry run: nothing changed)", dry.stdout)
        self.assertEqual(plan_counts(dry.stdout), want, dry.stdout)
        self.assertEqual(summary(dry), want, dry.stdout)

        real = self.sync(cfg)
        self.assertEqual(summary(real), want, real.stdout)
        for f in folders:
            self.assert_same(f)
            self.assert_no_duplicates(f)
        # Afterwards the plan is empty, and so is the run.
        dry = self.sync(cfg, "--dry-run")
        self.assertEqual(summary(dry), dict.fromkeys(KEYS, 0), dry.stdout)

    def test_missing_or_empty_maildir_is_not_taken_as_deleted_folders(self):
        """With delete_folders on, a Maildir that is moved away, or an empty
        directory where it was (an unmounted mount point), stops the run
        with an error naming it: no folder is deleted on the server. Put
        back, nothing is copied; with --force a missing one is downloaded
        again, and still nothing is deleted on the server."""
        self.seed_inbox(3)
        self.seed_inbox(4, seed=2, folder="Archive")
        self.seed_inbox(2, seed=3, folder="Lists/dev")
        cfg = self.config(delete_folders=True)
        self.sync(cfg)
        folders = ["INBOX", "Archive", "Lists/dev"]
        before = self.snapshot(folders)
        server_folders = sorted(self.dovecot.folders(self.user))
        moved = self.maildir + ".moved"
        os.rename(self.maildir, moved)
        for state, what in (("missing", "is missing"), ("empty", "holds no folder")):
            if state == "empty":
                os.mkdir(self.maildir)
            p = self.sync(cfg, ok=False)
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            self.assertIn("the Maildir %s %s, but the index knows folders synced into it"
                          % (self.maildir, what), p.stderr)
            self.assertIn("mailsync sync --force a", p.stderr)
            self.assertEqual(sorted(self.dovecot.folders(self.user)), server_folders,
                             "a server folder went (%s)" % state)
            for f in folders:
                self.assertEqual(sorted((fl, b) for _u, fl, b in self.server(f)), before[1][f])
        os.rmdir(self.maildir)
        os.rename(moved, self.maildir)
        self.assertEqual(summary(self.sync(cfg)), dict.fromkeys(KEYS, 0))
        self.assertEqual(self.snapshot(folders), before)
        # --force on a missing Maildir: everything downloaded again.
        os.rename(self.maildir, moved)
        c = summary(self.sync(cfg, "--force"))
        self.assertEqual((c["new_down"], c["deleted_up"], c["new_up"]), (9, 0, 0))
        self.assertEqual(sorted(self.dovecot.folders(self.user)), server_folders)
        for f in folders:
            self.assertEqual(sorted(b for _u, _fl, b in self.local(f)),
                             sorted(b for _u, _fl, b in before[0][f]))

    def test_empty_file_named_once_then_left_out(self):
        """A zero-byte file in cur/ (no IMAP server stores an empty
        message; Dovecot answers NO): the first run names the file by its
        path and exits 1, since the file needs the user (delete it, or give
        it content) and waiting mends nothing, so it is no temporary failure
        (75); the folder's other messages sync both ways in that run. Later
        runs do not try the file again (no APPEND of it in the protocol
        trace), do not fail (exit 0), mention it in the summary, and
        `mailsync status` lists it. Once the file has content it is uploaded
        and leaves the list."""
        self.seed_inbox(2)
        cfg = self.config()
        self.sync(cfg)
        cur = os.path.join(self.folder_dir("INBOX"), "cur")
        empty = os.path.join(cur, "1700000010.M1P1.host:2,S")
        open(empty, "wb").close()
        self.deliver_local("INBOX", mstest.crlf_to_lf(msg(11, 0)), "1700000011.M1P1.mutt")
        self.dovecot.save(self.user, "INBOX", msg(12, 0))

        p = self.sync(cfg, ok=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(empty + ": an empty file (0 bytes)", p.stdout + p.stderr)
        self.assertEqual(summary(p), {"new_down": 1, "flags_down": 0, "deleted_down": 0,
                                      "new_up": 1, "flags_up": 0, "deleted_up": 0}, p.stdout)
        srv = sorted(mstest.crlf_to_lf(b) for _u, _f, b in self.server())
        self.assertEqual(len(srv), 4)
        self.assertEqual(sorted(b for _u, _f, b in self.local() if b), srv)

        self.deliver_local("INBOX", mstest.crlf_to_lf(msg(13, 0)), "1700000013.M1P1.mutt")
        for n in range(2):
            p = self.sync(cfg, trace=True)
            self.assertIn("INBOX: 1 empty file not uploaded (see 'mailsync status')", p.stdout)
            self.assertNotIn("an empty file (0 bytes)", p.stdout + p.stderr)
            self.assertEqual(len(re.findall(r"C: A\d+ APPEND ", p.stderr)), 1 - n, p.stderr)
            self.assertEqual(summary(p)["new_up"], 1 - n, p.stdout)
        self.assertEqual(len(self.server()), 5)
        self.assertTrue(os.path.exists(empty))

        st = self.mailsync(cfg, "status", "a")
        self.assertEqual(st.returncode, 0, st.stderr)
        self.assertIn("Not uploaded from INBOX:", st.stdout)
        self.assertIn(empty, st.stdout)
        self.assertIn("1 local file not uploaded", st.stdout)
        data = json.loads(self.mailsync(cfg, "status", "--json", "a").stdout)
        inbox = next(f for f in data["accounts"][0]["folders"] if f["name"] == "INBOX")
        self.assertEqual(inbox["local_skipped"], [{"file": empty, "reason": "empty"}])
        self.assertEqual(data["accounts"][0]["totals"]["local_skipped"], 1)

        # Given content, it is an ordinary new message.
        body = mstest.crlf_to_lf(msg(14, 0))
        with open(empty, "wb") as f:
            f.write(body)
        p = self.sync(cfg)
        self.assertEqual(summary(p)["new_up"], 1, p.stdout)
        self.assertNotIn("empty file", p.stdout)
        self.assert_same()
        data = json.loads(self.mailsync(cfg, "status", "--json", "a").stdout)
        inbox = next(f for f in data["accounts"][0]["folders"] if f["name"] == "INBOX")
        self.assertEqual(inbox["local_skipped"], [])


class TrashScenarios(SyncFixture):
    """on_local_delete: trash on a Dovecot whose Trash is no \\Trash
    (NO_TRASH_CONF)."""

    def delete_locally(self, folder, n):
        """Deletes the first n local messages of folder, as mutt does
        (unlink); returns their bodies (LF)."""
        gone = []
        for unique, _fl, body in self.local(folder)[:n]:
            os.unlink(self.local_file(folder, unique))
            gone.append(body)
        return gone

    def test_folder_named_trash_is_used(self):
        """With no \\Trash folder but a top-level folder named 'trash'
        (another case than 'Trash'), locally deleted messages are moved
        there: exit 0, the 3 deletions counted once, and never again."""
        c = self.imap()
        c.create("trash")
        c.logout()
        self.dovecot.save_many(self.user, "INBOX", [msg(7, i) for i in range(5)])
        cfg = self.config(on_local_delete="trash")
        self.sync(cfg)
        gone = self.delete_locally("INBOX", 3)
        p = self.sync(cfg)
        self.assertEqual(summary(p)["deleted_up"], 3, p.stdout)
        self.assertNotIn("trash: FOLDER", p.stderr)
        self.assertEqual(len(self.server("INBOX")), 2)
        self.assertEqual(sorted(mstest.crlf_to_lf(b) for _u, _f, b in self.server("trash")),
                         sorted(gone))
        self.assert_same("INBOX")
        self.assert_same("trash")
        p = self.sync(cfg)
        self.assertEqual(summary(p), dict.fromkeys(KEYS, 0), p.stdout)

    def test_no_trash_folder_says_once_what_to_set(self):
        """With no \\Trash and no folder named Trash, locally deleted
        messages are flagged \\Deleted on the server and the run says once
        (for two folders with deletions) to set the 'trash' key. That is a
        warning, not a failure: the deletions were made in the only way the
        server allows, so the run exits 0. The next runs neither count nor
        flag them again, and exit 0."""
        self.dovecot.save_many(self.user, "INBOX", [msg(8, i) for i in range(5)])
        self.dovecot.save_many(self.user, "Work", [msg(9, i) for i in range(3)])
        cfg = self.config(on_local_delete="trash")
        self.sync(cfg)
        self.delete_locally("INBOX", 3)
        self.delete_locally("Work", 1)
        p = self.sync(cfg)
        self.assertEqual(summary(p)["deleted_up"], 4, p.stdout)
        self.assertEqual(p.stderr.count("Set 'trash: FOLDER' in account 'a'"), 1, p.stderr)
        self.assertIn("no folder named Trash", p.stderr)
        flagged = [u for u, f, _b in self.server("INBOX") if "\\Deleted" in f]
        self.assertEqual(len(flagged), 3)
        self.assertEqual(len(self.server("INBOX")), 5)
        for _ in range(2):
            p = self.sync(cfg)
            self.assertEqual(summary(p), dict.fromkeys(KEYS, 0), p.stdout + p.stderr)
            self.assertNotIn("trash: FOLDER", p.stderr)
        self.assertEqual(len(self.local("INBOX")), 2)
        self.assertEqual(len(self.local("Work")), 2)


for _name, _opts in PROFILES.items():
    globals()["Rough" + _name] = type("Rough" + _name, (RoughScenarios, mstest.DovecotTestCase),
                                      {"dovecot_options": _opts})
    globals()["Trash" + _name] = type(
        "Trash" + _name, (TrashScenarios, mstest.DovecotTestCase),
        {"dovecot_options": dict(_opts, extra_conf=NO_TRASH_CONF)})


if __name__ == "__main__":
    mstest.main()
