"""mailsync init: the account is written into the configuration file (a new
file 0600 with a header; an existing one keeps every other byte), a
duplicate name or a result that would not load writes nothing, the server
comes from a preset, --host or RFC 6186 SRV records (answered by a scripted
DNS server), prompts happen only on a terminal, and the doctor (check
--connect) runs against a real Dovecot afterwards."""

import os
import pty
import select
import stat
import subprocess
import time

import mstest
from fakedns import FakeDNS

# A configuration with comments everywhere, odd indentation and a top-level
# key after the accounts: none of it may change.
COMMENTED = """\
# My mail.   (a comment with trailing spaces)   
# second line

state_dir: {state}   # inline

accounts:
    # the work account
    work:
        host: imap.example.com     # aligned comment
        user: "me@example.com"
        password_command: ['pass', 'show', 'work']
        maildir: {tmp}/Mail/work
        folders:
            - INBOX
            - "Lists/%"
        # max_size: 10M  (commented out, stays with work)

    # POP3 at the old ISP
    isp:
        protocol: pop3
        host: pop.example.net
        user: jdoe
        password_command: pass show isp
        maildir: {tmp}/Mail/isp
        pop:
            since: 2013-09-10

# trailing comment at the end of the file
"""


class Init(mstest.DovecotTestCase):
    def run_init(self, config, *args, env=None, stdin=subprocess.DEVNULL):
        binary = mstest.mailsync_bin()
        full_env = dict(os.environ, HOME=self.home)
        full_env.pop("XDG_CONFIG_HOME", None)
        full_env.pop("MAILSYNC_DNS_SERVER", None)
        full_env.update(env or {})
        cmd = [binary] + (["--config", config] if config else []) + ["init"] + list(args)
        return subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=120, env=full_env)

    def setUp(self):
        super().setUp()
        self.home = os.path.join(self.tmp, "home")
        os.makedirs(self.home)

    def check(self, config, *accounts):
        r = mstest.run_mailsync(config, "check", *accounts, env={"HOME": self.home})
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def commented_file(self, mode=0o640):
        path = os.path.join(self.tmp, "config.yaml")
        text = COMMENTED.format(state=os.path.join(self.tmp, "state"), tmp=self.tmp)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path, text

    def test_missing_file_created_private_with_header(self):
        """No configuration yet and no --config: the default path is
        created (directory 0700, file 0600) with a commented header, and
        `mailsync check` loads the account with the preset applied."""
        r = self.run_init(None, "personal", "--provider", "gmail", "--user", "me@gmail.com",
                          "--password-command", "pass show mail/gmail", "--no-check")
        self.assertEqual(r.returncode, 0, r.stderr)
        path = os.path.join(self.home, ".config", "mailsync", "config.yaml")
        self.assertIn("created %s (mode 0600) with account 'personal'" % path, r.stderr)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        with open(path) as f:
            text = f.read()
        self.assertTrue(text.startswith("# mailsync configuration"), text)
        self.assertTrue(text.endswith("accounts:\n"
                                      "  personal:\n"
                                      "    provider: gmail\n"
                                      "    user: me@gmail.com\n"
                                      '    password_command: "pass show mail/gmail"\n'
                                      "    maildir: ~/Mail/personal\n"), text)
        out = self.check(path)
        self.assertIn("host: imap.gmail.com", out)
        self.assertIn('password_command: ["pass", "show", "mail/gmail"]', out)
        self.assertIn("maildir: %s/Mail/personal" % self.home, out)

    def test_existing_file_keeps_comments_and_accounts(self):
        """An account added to a file with comments and two accounts: the
        file is the old one with the new block inserted after the last
        account (its trailing commented-out option included), byte for
        byte; its mode is kept, the other accounts resolve as before, and
        the new one uses the file's four-space indentation."""
        path, before = self.commented_file(0o640)
        old = self.check(path)
        r = self.run_init(path, "new", "--pop3", "--host", "pop.example.org", "--port", "1995",
                          "--tls", "starttls", "--user", "j d",
                          "--password-command", "pass show \"new one\"",
                          "--maildir", os.path.join(self.tmp, "Mail", "new 'one'"), "--no-check")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("added account 'new' to %s" % path, r.stderr)
        with open(path) as f:
            after = f.read()
        block = ("\n"
                 "    new:\n"
                 "        protocol: pop3\n"
                 "        host: pop.example.org\n"
                 "        port: 1995\n"
                 "        tls: starttls\n"
                 '        user: "j d"\n'
                 '        password_command: "pass show \\"new one\\""\n'
                 '        maildir: "%s/Mail/new \'one\'"\n' % self.tmp)
        cut = before.index("\n# trailing comment")
        self.assertEqual(after, before[:cut] + block + before[cut:])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        # check prints every account resolved: the old ones exactly as
        # before, then the new one.
        out = self.check(path)
        self.assertEqual(out[:len(old)], old)
        self.assertTrue(out[len(old):].startswith("  new:\n"), out[len(old):])
        self.assertIn('password_command: ["pass", "show", "new one"]', out)
        self.assertIn("maildir: \"%s/Mail/new 'one'\"" % self.tmp, out)
        self.assertIn("port: 1995", out)
        self.assertIn("tls: starttls", out)

    def test_duplicate_refused_file_untouched(self):
        """A name that exists: exit 1 naming the file and line, and the file
        is the same file (same inode) with the same bytes; it still loads."""
        path, before = self.commented_file()
        ino = os.stat(path).st_ino
        r = self.run_init(path, "isp", "--provider", "gmail", "--user", "x@gmail.com",
                          "--password-command", "p", "--no-check")
        self.assertEqual(r.returncode, 1)
        self.assertIn("%s:19: an account named 'isp' already exists" % path, r.stderr)
        with open(path) as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(os.stat(path).st_ino, ino)
        self.check(path)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["config.yaml", "home"])

    def test_result_that_would_not_load_is_not_written(self):
        """The new account shares the maildir of 'work': the configuration
        module's error is shown and nothing is written."""
        path, before = self.commented_file()
        r = self.run_init(path, "again", "--host", "h.example.org", "--user", "u",
                          "--password-command", "p", "--maildir",
                          os.path.join(self.tmp, "Mail", "work"), "--no-check")
        self.assertEqual(r.returncode, 1)
        self.assertIn("is also the maildir of account 'work'", r.stderr)
        self.assertIn("would not load with account 'again' added (above); nothing was written",
                      r.stderr)
        with open(path) as f:
            self.assertEqual(f.read(), before)

    def test_preset_from_the_domain(self):
        """Without --provider the address's domain picks the preset: the
        domain itself when it names one (zoho.eu, the EU data centre), else
        the label before the top-level domain (gmail.com)."""
        path = os.path.join(self.tmp, "c.yaml")
        r = self.run_init(path, "eu", "--user", "me@zoho.eu", "--password-command", "p",
                          "--no-check")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("using the 'zoho.eu' provider preset for zoho.eu (imap.zoho.eu)", r.stderr)
        r = self.run_init(path, "g", "--user", "me@gmail.com", "--password-command", "p",
                          "--no-check")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("using the 'gmail' provider preset for gmail.com (imap.gmail.com)", r.stderr)
        with open(path) as f:
            text = f.read()
        self.assertIn("  eu:\n    provider: zoho.eu\n    user: me@zoho.eu\n", text)
        self.assertIn("  g:\n    provider: gmail\n    user: me@gmail.com\n", text)
        self.assertIn("host: imap.zoho.eu", self.check(path, "eu"))

    def test_symlink_followed(self):
        """A configuration kept elsewhere behind a symbolic link: the file it
        points to is edited and the link stays a link."""
        path, before = self.commented_file()
        link = os.path.join(self.home, "config.yaml")
        os.symlink(path, link)
        r = self.run_init(link, "third", "--provider", "fastmail", "--user", "me@fastmail.com",
                          "--password-command", "p", "--no-check")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.islink(link))
        with open(path) as f:
            self.assertIn("    third:\n        provider: fastmail\n", f.read())

    def test_usage_errors_without_terminal(self):
        """Without a terminal nothing is asked: missing values are usage
        errors (exit 2) naming the option, and no file is created."""
        path = os.path.join(self.tmp, "new.yaml")
        r = self.run_init(path, "a", "--provider", "gmail", "--password-command", "p")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--user ADDRESS is required (there is no terminal to ask on)", r.stderr)
        r = self.run_init(path, "a", "--user", "me@gmail.com")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--password-command CMD is required", r.stderr)
        r = self.run_init(path, "a", "--provider", "nosuch", "--user", "u", "--password-command", "p")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--provider: no provider preset named 'nosuch'; the presets are: zoho, ",
                      r.stderr)
        r = self.run_init(path, "bad name", "--provider", "gmail", "--user", "u",
                          "--password-command", "p")
        self.assertEqual(r.returncode, 2)
        self.assertIn("'bad name' cannot be an account name", r.stderr)
        r = self.run_init(path, "a", "--tls", "ssl")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--tls must be implicit, starttls or none (got 'ssl')", r.stderr)
        self.assertFalse(os.path.exists(path))

    def test_doctor_runs_after_writing(self):
        """Without --no-check the account is checked against the server:
        a good password logs in (exit 0), a wrong one leaves the account
        written and says so (exit 1)."""
        path = os.path.join(self.tmp, "c.yaml")
        env = {"SSL_CERT_FILE": self.dovecot.ca_cert}
        r = self.run_init(path, "dove", "--host", "localhost", "--port", str(self.dovecot.port_imaps),
                          "--user", "alice", "--password-command",
                          "echo " + self.dovecot.password("alice"),
                          "--maildir", os.path.join(self.tmp, "Mail"), env=env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("checking it (mailsync check --connect dove)", r.stderr)
        self.assertIn("logged in as alice", r.stdout)
        self.assertNotIn(self.dovecot.password("alice"), r.stdout.replace("echo ", ""))
        r = self.run_init(path, "wrong", "--host", "localhost", "--port",
                          str(self.dovecot.port_imap), "--tls", "starttls", "--user", "alice",
                          "--password-command", "echo not-the-password",
                          "--maildir", os.path.join(self.tmp, "Mail2"), env=env)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("account 'wrong' is written to %s, but the check failed" % path, r.stderr)
        self.check(path, "wrong")

    def test_srv_records_used_end_to_end(self):
        """alice@localhost has no preset: _imaps._tcp.localhost names
        localhost and Dovecot's implicit-TLS port, init writes that host and
        port, and the doctor logs in there."""
        self.dovecot.add_user("alice@localhost", "pw-srv")
        records = {"_imaps._tcp.localhost": [(10, 0, self.dovecot.port_imaps, "localhost")]}
        with FakeDNS(records) as dns:
            r = self.run_init(os.path.join(self.tmp, "c.yaml"), "srv", "--user", "alice@localhost",
                              "--password-command", "echo pw-srv",
                              "--maildir", os.path.join(self.tmp, "Mail"),
                              env={"MAILSYNC_DNS_SERVER": dns.address,
                                   "SSL_CERT_FILE": self.dovecot.ca_cert})
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("localhost names its IMAP server in DNS (_imaps._tcp.localhost): localhost, "
                      "port %d, implicit TLS" % self.dovecot.port_imaps, r.stderr)
        self.assertEqual(dns.queries, [("_imaps._tcp.localhost", 33)])
        with open(os.path.join(self.tmp, "c.yaml")) as f:
            self.assertIn("  srv:\n    host: localhost\n    port: %d\n    user: alice@localhost\n"
                          % self.dovecot.port_imaps, f.read())
        self.assertIn("logged in as alice@localhost", r.stdout)

    def test_srv_starttls_and_pop3(self):
        """No _imaps record: _imap._tcp gives STARTTLS on the default port
        (no port written). With --pop3, _pop3s._tcp is asked first."""
        records = {"_imap._tcp.example.org": [(0, 0, 143, "mail.example.org")],
                   "_pop3s._tcp.example.org": [(5, 1, 995, "pop.example.org"),
                                               (1, 1, 995, "pop1.example.org")]}
        path = os.path.join(self.tmp, "c.yaml")
        with FakeDNS(records) as dns:
            env = {"MAILSYNC_DNS_SERVER": dns.address}
            r = self.run_init(path, "imap", "--user", "me@example.org",
                              "--password-command", "p", "--no-check", env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = self.run_init(path, "pop", "--pop3", "--user", "me@example.org",
                              "--password-command", "p", "--no-check", env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(dns.queries, [("_imaps._tcp.example.org", 33),
                                       ("_imap._tcp.example.org", 33),
                                       ("_pop3s._tcp.example.org", 33)])
        with open(path) as f:
            text = f.read()
        self.assertIn("  imap:\n    host: mail.example.org\n    tls: starttls\n    user: me@example.org\n",
                      text)
        self.assertIn("  pop:\n    protocol: pop3\n    host: pop1.example.org\n    user: me@example.org\n",
                      text)
        self.check(path)

    def test_srv_outside_domain_not_taken_without_asking(self):
        """A DNS answer naming a server outside the address's domain is not
        used without a terminal to confirm it (RFC 6186 section 6); a domain
        without records is told apart; nothing is written either time."""
        records = {"_imaps._tcp.example.org": [(0, 0, 993, "imap.evil.example")]}
        path = os.path.join(self.tmp, "c.yaml")
        with FakeDNS(records) as dns:
            env = {"MAILSYNC_DNS_SERVER": dns.address}
            r = self.run_init(path, "a", "--user", "me@example.org", "--password-command", "p",
                              "--no-check", env=env)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("imap.evil.example is not in example.org, so it is not taken without "
                          "asking: give --host imap.evil.example to use it", r.stderr)
            r = self.run_init(path, "a", "--user", "me@nothing.example", "--password-command", "p",
                              "--no-check", env=env)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("nothing.example has no provider preset and names no IMAP server in DNS",
                          r.stderr)
            self.assertIn("give --provider NAME, or --host HOST", r.stderr)
        self.assertFalse(os.path.exists(path))

    def test_prompts_on_a_terminal(self):
        """On a terminal the missing values are asked for: the login name,
        the password command (a default offered) and the maildir; the
        address's domain picks the preset."""
        path = os.path.join(self.tmp, "c.yaml")
        binary = mstest.mailsync_bin()
        master, slave = pty.openpty()
        env = dict(os.environ, HOME=self.home)
        p = subprocess.Popen([binary, "--config", path, "init", "box", "--no-check"], stdin=slave,
                             stdout=subprocess.DEVNULL, stderr=slave, env=env)
        os.close(slave)
        seen = b""
        answers = [(b"Login name", b"me@fastmail.com\n"),
                   (b"Command that prints the password [pass show mail/box]:", b"\n"),
                   (b"Maildir for this account [~/Mail/box]:", b"~/mail/box\n")]
        deadline = time.monotonic() + 60
        for prompt, answer in answers:
            while prompt not in seen:
                self.assertLess(time.monotonic(), deadline, seen)
                ready, _, _ = select.select([master], [], [], 1)
                if ready:
                    seen += os.read(master, 4096)
            seen = seen[seen.index(prompt) + len(prompt):]
            os.write(master, answer)
        p.wait(timeout=60)
        os.close(master)
        self.assertEqual(p.returncode, 0)
        with open(path) as f:
            self.assertTrue(f.read().endswith("  box:\n"
                                              "    provider: fastmail\n"
                                              "    user: me@fastmail.com\n"
                                              '    password_command: "pass show mail/box"\n'
                                              "    maildir: ~/mail/box\n"))


if __name__ == "__main__":
    mstest.main()
