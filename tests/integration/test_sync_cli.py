"""`mailsync sync` as a user runs it: several accounts at once on one loop,
a summary line per account, exit status 0 / 1 / 75, --dry-run, -q, and
account selection on the command line. The POP3 engine itself is tested in
depth by test_pop3.py; here it is the command around it."""

import collections
import os

import mailgen
import mstest


def bodies(folder):
    return collections.Counter(b for _u, _f, b in mstest.maildir_messages(folder))


class SyncCommand(mstest.DovecotTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dovecot.add_user("bob", "secret-bob")
        cls.alice_msgs = mailgen.generate(25, seed=11)
        cls.bob_msgs = mailgen.generate(15, seed=12)
        cls.dovecot.save_many("alice", "INBOX", cls.alice_msgs)
        cls.dovecot.save_many("bob", "INBOX", cls.bob_msgs)

    def accounts(self):
        return {
            "alice": self.pop3_account(os.path.join(self.tmp, "alice")),
            "bob": self.pop3_account(os.path.join(self.tmp, "bob"), user="bob",
                                     password="secret-bob"),
        }

    def test_two_accounts_at_once(self):
        cfg = self.write_config(self.accounts())
        r = self.mailsync(cfg, "sync")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"(?m)^alice: 25 new \(")
        self.assertRegex(r.stdout, r"(?m)^bob: 15 new \(")
        self.assertEqual(bodies(os.path.join(self.tmp, "alice", "INBOX")),
                         collections.Counter(mstest.crlf_to_lf(m) for m in self.alice_msgs))
        self.assertEqual(bodies(os.path.join(self.tmp, "bob", "INBOX")),
                         collections.Counter(mstest.crlf_to_lf(m) for m in self.bob_msgs))
        r = self.mailsync(cfg, "sync")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"(?m)^alice: 0 new, .*25 already here")

    def test_select_one_account(self):
        cfg = self.write_config(self.accounts())
        r = self.mailsync(cfg, "sync", "bob")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("alice", r.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "alice")))
        self.assertEqual(len(bodies(os.path.join(self.tmp, "bob", "INBOX"))), 15)

    def test_unknown_account(self):
        cfg = self.write_config(self.accounts())
        r = self.mailsync(cfg, "sync", "carol")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no account named 'carol'", r.stderr)

    def test_dry_run_writes_nothing(self):
        cfg = self.write_config(self.accounts())
        r = self.mailsync(cfg, "sync", "--dry-run", "alice")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("25 new (dry run)", r.stdout)
        self.assertEqual(len(bodies(os.path.join(self.tmp, "alice", "INBOX"))), 0)
        r = self.mailsync(cfg, "sync", "alice")
        self.assertIn("alice: 25 new", r.stdout)

    def test_quiet(self):
        cfg = self.write_config(self.accounts())
        r = self.mailsync(cfg, "-q", "sync")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertEqual(r.stderr, "")

    def test_one_failing_account_does_not_stop_the_other(self):
        accts = self.accounts()
        accts["bob"]["password"] = "wrong"
        cfg = self.write_config(accts)
        r = self.mailsync(cfg, "sync")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"error: bob: .*")
        self.assertNotIn("wrong", r.stderr.replace("wrong password", ""))
        self.assertEqual(len(bodies(os.path.join(self.tmp, "alice", "INBOX"))), 25)

    def test_transient_failure_exit_75(self):
        accts = self.accounts()
        accts["alice"]["port"] = 1  # connection refused: try again later
        cfg = self.write_config({"alice": accts["alice"]})
        r = self.mailsync(cfg, "sync")
        self.assertEqual(r.returncode, 75, r.stdout + r.stderr)
        self.assertIn("connection refused", r.stderr)

    def states(self, stderr, account):
        """The supervisor's logged transitions of an account, in order."""
        prefix = "%s: state " % account
        return [line.split(prefix, 1)[1] for line in stderr.splitlines() if prefix in line]

    def test_supervisor_states_run_once(self):
        """With -v each account's supervisor logs every transition of the
        run-once policy: an IMAP account goes connecting, listing,
        syncing, logging out, disconnected; refused credentials end in
        failed (auth); a refused connection in disconnected with the
        reason; a POP3 account goes connecting, syncing, disconnected."""
        cfg = self.write_config({
            "imap": self.imap_account(os.path.join(self.tmp, "imap")),
            "badpw": self.imap_account(os.path.join(self.tmp, "badpw"), password="wrong"),
            "down": dict(self.imap_account(os.path.join(self.tmp, "down")), port=1),
            "pop": self.accounts()["alice"],
        })
        r = self.mailsync(cfg, "-v", "sync")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(self.states(r.stderr, "imap"),
                         ["disconnected -> connecting", "connecting -> listing",
                          "listing -> syncing", "syncing -> logging out",
                          "logging out -> disconnected: done"], r.stderr)
        self.assertEqual(self.states(r.stderr, "badpw"),
                         ["disconnected -> connecting",
                          "connecting -> failed (auth): the server refused the credentials"])
        self.assertEqual(self.states(r.stderr, "down"),
                         ["disconnected -> connecting",
                          "connecting -> disconnected: a temporary failure; the next run "
                          "retries"])
        self.assertEqual(self.states(r.stderr, "pop"),
                         ["disconnected -> connecting", "connecting -> syncing",
                          "syncing -> disconnected: done"])
        r = self.mailsync(cfg, "sync", "imap")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("state ", r.stderr)  # debug lines only with -v

    def test_unknown_option(self):
        cfg = self.write_config(self.accounts())
        r = self.mailsync(cfg, "sync", "--bogus")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown option '--bogus'", r.stderr)


if __name__ == "__main__":
    mstest.main()
