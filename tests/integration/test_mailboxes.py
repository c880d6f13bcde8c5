"""mailsync mailboxes: one neomutt `mailboxes` (or `named-mailboxes`) line
per folder the account syncs, INBOX first, quoted so that neomutt itself
reads back the exact paths of folders named with spaces, quotes,
backslashes, '$', '`', non-ASCII characters and a leading '-'. neomutt is
the judge: it is run on `source "mailsync mailboxes|"` and its debug log
says which Maildir paths it watches."""

import os
import re
import shutil
import subprocess

import mstest

TRICKY = ["with space", 'quote"d', "it's", "back\\slash", "dollar$HOME", "-dash", "`tick`",
          "ünï", "ünï/Sub", "semi;colon #hash"]


def make_maildir(path):
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)


def neomutt_watched(test, rc_text, home):
    """Runs neomutt on a muttrc and returns the Maildir paths it watches
    (from its debug log), failing the test on any configuration error."""
    neomutt = shutil.which("neomutt")
    if neomutt is None:
        test.skipTest("neomutt is not installed (tests/run installs it: apt-get install neomutt)")
    rc = os.path.join(home, "muttrc")
    with open(rc, "w", encoding="utf-8") as f:
        f.write(rc_text)
    log = os.path.join(home, "neomutt.log")
    env = dict(os.environ, HOME=home, LC_ALL="C.UTF-8", TERM="dumb")
    # -Q prints a variable and exits after reading the configuration, which
    # declares the mailboxes; the level-3 debug log names each watched one.
    r = subprocess.run([neomutt, "-n", "-F", rc, "-d", "3", "-l", log, "-Q", "folder"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=60)
    err = r.stderr.decode("utf-8", "replace")
    test.assertEqual(r.returncode, 0, err)
    test.assertNotIn("Error", err)
    with open(log + "0", encoding="utf-8", errors="replace") as f:
        text = f.read()
    return sorted(re.findall(r"inotify_add_watch descriptor=\d+ for '(.*)/new'$", text, re.M))


class Mailboxes(mstest.DovecotTestCase):
    def setUp(self):
        super().setUp()
        self.home = os.path.join(self.tmp, "home")
        os.makedirs(self.home)
        self.root = os.path.join(self.tmp, "Mail")
        for name in ["INBOX", "Spam"] + TRICKY:
            make_maildir(os.path.join(self.root, name))
        # A directory that is not a Maildir, and POP3 and maildir++ roots.
        os.makedirs(os.path.join(self.root, "notes"))
        self.pop = os.path.join(self.tmp, "Pop")
        make_maildir(os.path.join(self.pop, "INBOX"))
        make_maildir(os.path.join(self.pop, "Other"))
        self.pp = os.path.join(self.tmp, "PP")
        make_maildir(self.pp)
        make_maildir(os.path.join(self.pp, ".My Lists.dev's"))
        self.cfg = self.write_config({
            "a": self.imap_account(self.root, folders=["*", "!Spam"]),
            "p": self.pop3_account(self.pop),
            "m": self.imap_account(self.pp, layout="maildir++"),
            "never": self.imap_account(os.path.join(self.tmp, "Never")),
        })

    def expected_paths(self):
        paths = [os.path.join(self.root, n) for n in ["INBOX"] + TRICKY]
        paths.append(os.path.join(self.pop, "INBOX"))
        paths += [self.pp, os.path.join(self.pp, ".My Lists.dev's")]
        return sorted(paths)

    def test_lines_quoted_inbox_first(self):
        """The exact lines: INBOX first, then by name; single quotes unless
        the path holds one, then double quotes with \\ escapes; excluded
        (Spam), non-Maildir (notes) and POP3 folders other than INBOX are
        left out; a Maildir not made yet is a warning, not an error."""
        r = self.mailsync(self.cfg, "mailboxes")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        root = self.root
        self.assertEqual(lines[0], "mailboxes '%s/INBOX'" % root)
        self.assertIn("mailboxes '%s/with space'" % root, lines)
        self.assertIn("mailboxes \"%s/it's\"" % root, lines)
        self.assertIn("mailboxes '%s/back\\slash'" % root, lines)
        self.assertIn("mailboxes '%s/dollar$HOME'" % root, lines)
        self.assertIn("mailboxes '%s/ünï/Sub'" % root, lines)
        self.assertNotIn("Spam", r.stdout)
        self.assertNotIn("notes", r.stdout)
        self.assertNotIn("Other", r.stdout)
        self.assertIn("mailboxes '%s/INBOX'" % self.pop, lines)
        self.assertIn("mailboxes '%s'" % self.pp, lines)
        self.assertIn("mailboxes \"%s/.My Lists.dev's\"" % self.pp, lines)
        self.assertEqual(len(lines), len(self.expected_paths()))
        self.assertIn("never: maildir %s/Never does not exist yet" % self.tmp, r.stderr)

    def test_neomutt_reads_back_every_path(self):
        """neomutt sourcing `mailsync mailboxes|` watches exactly the
        expected folders, tricky names included, without an error."""
        rc = 'source "%s --config %s mailboxes|"\n' % (mstest.mailsync_bin(), self.cfg)
        self.assertEqual(neomutt_watched(self, rc, self.home), self.expected_paths())

    def test_named_mailboxes(self):
        """--named: `named-mailboxes 'ACCOUNT/FOLDER' PATH`; the labels, quoted
        the same way, do not disturb the paths neomutt reads."""
        r = self.mailsync(self.cfg, "mailboxes", "--named", "a")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0], "named-mailboxes 'a/INBOX' '%s/INBOX'" % self.root)
        self.assertIn("named-mailboxes \"a/it's\" \"%s/it's\"" % self.root, lines)
        self.assertIn("named-mailboxes 'a/-dash' '%s/-dash'" % self.root, lines)
        self.assertIn("named-mailboxes 'a/ünï/Sub' '%s/ünï/Sub'" % self.root, lines)
        watched = neomutt_watched(self, r.stdout, self.home)
        self.assertEqual(watched, sorted(os.path.join(self.root, n) for n in ["INBOX"] + TRICKY))

    def test_unknown_account(self):
        r = self.mailsync(self.cfg, "mailboxes", "zzz")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no account named 'zzz'", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_after_a_real_sync(self):
        """Folders created by a sync from Dovecot (a space, an apostrophe,
        non-ASCII, a subfolder) are listed and watched by neomutt."""
        folders = ["Lists/dev team", "Über", "it's"]
        for f in folders:
            self.dovecot.save("alice", f, b"Subject: x\r\n\r\nbody\r\n")
        mail = os.path.join(self.tmp, "Synced")
        cfg = self.write_config({"d": self.imap_account(mail)}, name="d.yaml")
        r = self.mailsync(cfg, "sync")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = self.mailsync(cfg, "mailboxes")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[0], "mailboxes '%s/INBOX'" % mail)
        want = sorted(os.path.join(mail, f) for f in mstest.maildir_folders(mail))
        for f in folders:
            self.assertIn(os.path.join(mail, f), want)
        self.assertEqual(neomutt_watched(self, r.stdout, self.home), want)


if __name__ == "__main__":
    mstest.main()
