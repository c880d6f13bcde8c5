"""contrib/demo, the README's first Quick start command: it must start a
demo server with sample mail, sync it into a Maildir and say how to read
it. Run with --once so the server stops at the end, against the build that
the test run already made."""

import os
import shutil
import subprocess
import tempfile
import unittest

import mstest


class Demo(unittest.TestCase):
    def test_demo_once(self):
        build = os.environ.get("MAILSYNC_BUILD_DIR")
        if not build:
            raise unittest.SkipTest("MAILSYNC_BUILD_DIR is not set")
        d = tempfile.mkdtemp(prefix="mailsync-demo-test-")
        os.chmod(d, 0o755)
        self.addCleanup(shutil.rmtree, d, True)
        demo = os.path.join(mstest.SOURCE_DIR, "contrib", "demo")
        p = subprocess.run([demo, "--once", "--dir", os.path.join(d, "demo"), "--build-dir", build],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=600)
        self.assertEqual(p.returncode, 0, p.stdout[-4000:])
        self.assertIn("configuration OK", p.stdout)
        self.assertIn("Read it with:  neomutt -f", p.stdout)
        inbox = os.path.join(d, "demo", "Mail", "INBOX")
        msgs = mstest.maildir_messages(inbox)
        self.assertGreater(len(msgs), 10, p.stdout[-4000:])
        folders = mstest.maildir_folders(os.path.join(d, "demo", "Mail"))
        self.assertIn("Lists/dev", folders)
        self.assertTrue(any("Entw" in f for f in folders), folders)


if __name__ == "__main__":
    mstest.main()
