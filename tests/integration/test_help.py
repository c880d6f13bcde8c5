"""mailsync --help and mailsync COMMAND --help: every command listed has
its own help (exit 0, on stdout, no configuration read), `help COMMAND`
prints the same, usage errors exit 2; and the man page and the shell
completions know every command and every option the help texts name."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

import mstest

MAN1 = os.path.join(mstest.SOURCE_DIR, "contrib", "man", "mailsync.1")
BASH = os.path.join(mstest.SOURCE_DIR, "contrib", "completion", "mailsync.bash")
ZSH = os.path.join(mstest.SOURCE_DIR, "contrib", "completion", "_mailsync")


def run(*args, env=None):
    binary = mstest.mailsync_bin()
    if binary is None:
        raise AssertionError("no mailsync binary (MAILSYNC_BIN)")
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([binary] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=60, env=full)


def commands():
    """The commands `mailsync --help` lists."""
    out = run("--help").stdout
    block = out.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in block.splitlines()]


def options(help_text):
    """The long options a help text names."""
    return sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", help_text)))


class TmpTestCase(unittest.TestCase):
    """A fresh temporary directory per test in self.tmp; no server."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)


class Help(TmpTestCase):
    def test_top_level_help(self):
        """--help, -h and `help` print the command list on stdout, exit 0;
        no command is a usage error (exit 2) on stderr."""
        r = run("--help")
        self.assertEqual(r.returncode, 0)
        self.assertTrue(r.stdout.startswith("usage: mailsync [--config FILE] [-v|-q] COMMAND"))
        self.assertEqual(commands(), ["init", "sync", "daemon", "ctl", "status", "check",
                                      "mailboxes", "version", "help"])
        self.assertEqual(run("-h").stdout, r.stdout)
        self.assertEqual(run("help").stdout, r.stdout)
        for line in r.stdout.splitlines():
            self.assertLessEqual(len(line), 79, line)
        r = run()
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage: mailsync", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_each_command_help(self):
        """Every command: `mailsync CMD --help` and `-h` print its usage and
        exit 0 without reading a configuration (none exists here), and
        `mailsync help CMD` prints the same."""
        env = {"HOME": self.tmp, "XDG_CONFIG_HOME": os.path.join(self.tmp, "nowhere")}
        for cmd in commands():
            with self.subTest(cmd=cmd):
                r = run(cmd, "--help", env=env)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stderr, "")
                self.assertTrue(r.stdout.startswith("usage: mailsync [--config FILE] [-v|-q] %s"
                                                    % cmd), r.stdout)
                self.assertEqual(run(cmd, "-h", env=env).stdout, r.stdout)
                if cmd != "help":
                    self.assertEqual(run("help", cmd, env=env).stdout, r.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "nowhere")))

    def test_usage_errors(self):
        r = run("frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown command 'frobnicate' (try 'mailsync --help')", r.stderr)
        r = run("help", "frobnicate")
        self.assertEqual(r.returncode, 2)
        r = run("sync", "--bogus")
        self.assertEqual(r.returncode, 2)
        self.assertIn("sync: unknown option '--bogus'", r.stderr)
        r = run("init", "--bogus", "x")
        self.assertEqual(r.returncode, 2)
        self.assertIn("init: unknown option '--bogus'", r.stderr)
        r = run("init", "x", "--user")
        self.assertEqual(r.returncode, 2)
        self.assertIn("init: option '--user' needs a value", r.stderr)
        r = run("init", "--port", "99999", "x")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--port must be a number from 1 to 65535", r.stderr)
        r = run("init")
        self.assertEqual(r.returncode, 2)
        self.assertIn("init: name the account", r.stderr)
        # `--` ends the options: a literal --help after it is an account.
        r = run("--config", os.path.join(self.tmp, "none.yaml"), "check", "--", "--help")
        self.assertEqual(r.returncode, 1)

    def test_man_page_and_completions_know_every_option(self):
        """Each command and each long option of its --help appears in
        mailsync(1), in the bash completion and in the zsh completion."""
        with open(MAN1) as f:
            man = f.read().replace("\\-", "-")
        with open(BASH) as f:
            bash = f.read()
        with open(ZSH) as f:
            zsh = f.read()
        for cmd in commands():
            with self.subTest(cmd=cmd):
                self.assertIn(".SS %s\n" % cmd, man)
                self.assertRegex(bash, r"commands=\"[^\"]*\b%s\b" % cmd)
                self.assertIn("'%s:" % cmd, zsh)
                for opt in options(run(cmd, "--help").stdout):
                    if opt in ("--config",):
                        continue
                    self.assertIn(opt, man)
                    self.assertIn(opt, bash)
                    self.assertIn(opt, zsh)


class Completion(TmpTestCase):
    """The bash completion, run in bash the way readline calls it."""

    def complete(self, *words):
        script = ('source %s\nCOMP_WORDS=(%s)\nCOMP_CWORD=%d\n_mailsync\n'
                  'printf "%%s\\n" "${COMPREPLY[@]}"\n'
                  % (BASH, " ".join("'%s'" % w for w in words), len(words) - 1))
        r = subprocess.run(["bash", "--norc", "-c", script], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=30,
                           env=dict(os.environ, HOME=self.tmp, XDG_CONFIG_HOME=self.tmp))
        self.assertEqual(r.stderr, "")
        return [w for w in r.stdout.splitlines() if w]

    def test_bash(self):
        """Subcommands, a command's options, account names from the file
        named by --config (comments and nested keys ignored) and from the
        default path."""
        cfg = os.path.join(self.tmp, "c.yaml")
        with open(cfg, "w") as f:
            f.write("# accounts: fake\naccounts:\n  # old: gone\n  work:\n    host: h\n"
                    "    pop:\n      since: 2020-01-01\n\n  'w2':\n    host: h\nstate_dir: /x\n")
        self.assertEqual(self.complete("mailsync", "s"), ["sync", "status"])
        self.assertEqual(self.complete("mailsync", "sync", "--d"), ["--dry-run"])
        self.assertEqual(self.complete("mailsync", "-c", cfg, "sync", ""), ["work", "w2"])
        self.assertEqual(self.complete("mailsync", "--config", cfg, "mailboxes", "--named", "w"),
                         ["work", "w2"])
        self.assertEqual(self.complete("mailsync", "init", "x", "--tls", ""),
                         ["implicit", "starttls", "none"])
        os.makedirs(os.path.join(self.tmp, "mailsync"))
        os.rename(cfg, os.path.join(self.tmp, "mailsync", "config.yaml"))
        self.assertEqual(self.complete("mailsync", "status", "w"), ["work", "w2"])

    def test_zsh_parses_and_reads_accounts(self):
        """The zsh completion parses (zsh -n), and its account reader finds
        the same names."""
        if subprocess.run(["sh", "-c", "command -v zsh"], stdout=subprocess.DEVNULL).returncode:
            self.skipTest("zsh is not installed (tests/run installs it)")
        r = subprocess.run(["zsh", "-n", ZSH], stderr=subprocess.PIPE, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        cfg = os.path.join(self.tmp, "c.yaml")
        with open(cfg, "w") as f:
            f.write("accounts:\n    a1:\n        host: h\n    # x:\n    b-2:\n        host: h\n")
        # Every line but the last (the call of _mailsync itself) defines
        # the functions.
        r = subprocess.run(["zsh", "-f", "-c", 'eval "$(sed \\$d %s)"; _mailsync_accounts %s'
                            % (ZSH, cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=30)
        self.assertEqual(r.stderr, "")
        self.assertEqual(r.stdout.split(), ["a1", "b-2"])


if __name__ == "__main__":
    mstest.main()
