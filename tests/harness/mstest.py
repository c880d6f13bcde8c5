"""Shared helpers for mailsync's integration tests (tests/integration).

ctest runs each test as `python3 -u FILE` with MAILSYNC_BIN (the built
binary), MAILSYNC_BUILD_DIR and PYTHONPATH=tests/harness.

    import mstest
    from dovecot import Dovecot

    class T(mstest.DovecotTestCase):
        def test_x(self):
            self.dovecot.save("alice", "INBOX", msg)
            cfg = self.write_config({"a": self.imap_account()})
            r = self.mailsync(cfg, "sync")
            ...

    if __name__ == "__main__":
        mstest.main()
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import dovecot
from dovecot import Dovecot  # noqa: F401  (re-exported for tests)

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))


def mailsync_bin():
    """Path of the mailsync binary: $MAILSYNC_BIN, or build/mailsync in
    the source tree; None when there is none."""
    p = os.environ.get("MAILSYNC_BIN")
    if p:
        return p
    for d in (os.environ.get("MAILSYNC_BUILD_DIR"), os.path.join(SOURCE_DIR, "build")):
        if d and os.access(os.path.join(d, "mailsync"), os.X_OK):
            return os.path.join(d, "mailsync")
    return None


def run_mailsync(config, *args, timeout=300, env=None, check=False):
    """Runs `mailsync --config CONFIG args...` and returns the
    CompletedProcess (text). A test fails rather than hangs on timeout."""
    binary = mailsync_bin()
    if binary is None:
        raise unittest.SkipTest("MAILSYNC_BIN is not set and no build/mailsync exists")
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.run([binary, "--config", config] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout, env=full_env)
    if check and p.returncode != 0:
        raise AssertionError("mailsync %s exited %d\nstdout:\n%s\nstderr:\n%s"
                             % (" ".join(map(str, args)), p.returncode, p.stdout, p.stderr))
    return p


def lf_to_crlf(data):
    """Maildir (LF) bytes to wire (CRLF) bytes."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_to_lf(data):
    return data.replace(b"\r\n", b"\n")


def maildir_messages(folder_dir):
    """[(unique_name, flags, bytes)] of the messages in one Maildir folder
    (the directory holding cur/ new/ tmp/), sorted by unique name; flags are
    the letters after ':2,' ('' for new/). Dotfiles are skipped."""
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(folder_dir, sub)
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name.startswith("."):
                continue
            unique, _, info = name.partition(":2,")
            with open(os.path.join(d, name), "rb") as f:
                out.append((unique, info if sub == "cur" else "", f.read()))
    return sorted(out)


def maildir_folders(root):
    """Directories under root that are Maildir folders (have cur/), as
    paths relative to root ('.' for root itself)."""
    found = []
    for dirpath, dirnames, _files in os.walk(root):
        if os.path.isdir(os.path.join(dirpath, "cur")) and os.path.isdir(os.path.join(dirpath, "new")):
            found.append(os.path.relpath(dirpath, root))
        dirnames[:] = [d for d in dirnames if d not in ("cur", "new", "tmp")]
    return sorted(found)


def small_disk(test, size):
    """Mounts a tmpfs of the given size (e.g. "600k") in test.tmp and returns
    its path; unmounted when the test ends. Skips the test where mounting is
    not allowed (it needs root)."""
    mnt = os.path.join(test.tmp, "small")
    os.makedirs(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", mnt],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        test.skipTest("cannot mount a tmpfs here: %s" % r.stderr.decode().strip())
    test.addCleanup(subprocess.run, ["umount", "-l", mnt], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    return mnt


class DovecotTestCase(unittest.TestCase):
    """One Dovecot for the class (options from dovecot_options), a fresh
    temporary directory per test in self.tmp."""

    dovecot_options = {}

    @classmethod
    def setUpClass(cls):
        cls.dovecot = Dovecot(**cls.dovecot_options).start()

    @classmethod
    def tearDownClass(cls):
        cls.dovecot.stop()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-test-")
        self.addCleanup(self._cleanup_tmp)

    def _cleanup_tmp(self):
        if os.environ.get("MAILSYNC_KEEP_TMP"):
            print("keeping %s" % self.tmp, file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def imap_account(self, maildir=None, **extra):
        return dovecot.imap_account(self.dovecot, maildir or os.path.join(self.tmp, "Mail"), **extra)

    def pop3_account(self, maildir=None, **extra):
        return dovecot.pop3_account(self.dovecot, maildir or os.path.join(self.tmp, "Mail"), **extra)

    def write_config(self, accounts, name="config.yaml"):
        path = os.path.join(self.tmp, name)
        dovecot.write_mailsync_config(path, accounts, state_dir=os.path.join(self.tmp, "state"))
        return path

    def mailsync(self, config, *args, **kw):
        return run_mailsync(config, *args, **kw)


def main():
    """unittest.main with verbose output; exits non-zero on failure."""
    unittest.main(verbosity=2)
