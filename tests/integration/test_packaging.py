"""Packaging: the man pages render without warnings; `cmake --install`
puts the binary, man pages, completions, systemd user units (ExecStart=
naming the installed binary) and examples under the prefix; `cpack -G DEB`
builds a package with its library dependencies that dpkg installs into a
scratch root, and `mailsync version` runs from there.

The install and the package are made from a fresh Release tree of this
source (what a user builds), configured and built once for the class."""

import glob
import gzip
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import mstest

SRC = mstest.SOURCE_DIR
MAN_PAGES = sorted(glob.glob(os.path.join(SRC, "contrib", "man", "*.[0-9]")))


def project_version():
    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        return re.search(r"project\(mailsync VERSION ([0-9.]+)", f.read()).group(1)


def sh(args, **kw):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=kw.pop("timeout", 600), **kw)


def render(test, page):
    """Renders a man page (source or .gz) as man(1) does, and with groff's
    warnings on; both must be silent."""
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80")
    r = sh(["man", "--warnings", "-l", page], env=env)
    test.assertEqual(r.returncode, 0, r.stderr)
    test.assertEqual(r.stderr, "", page)
    text = r.stdout
    if page.endswith(".gz"):
        with gzip.open(page, "rt") as f:
            source = f.read()
    else:
        with open(page) as f:
            source = f.read()
    r = subprocess.run(["groff", "-man", "-ww", "-z"], input=source, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    test.assertEqual(r.returncode, 0, r.stderr)
    test.assertEqual(r.stderr, "", page)
    return text


class ManPages(unittest.TestCase):
    def test_render_without_warnings(self):
        """Both pages exist, render with no warning at 80 columns, and say
        what they are."""
        if shutil.which("man") is None or shutil.which("groff") is None:
            self.skipTest("man-db or groff is not installed")
        self.assertEqual([os.path.basename(p) for p in MAN_PAGES], ["mailsync.1", "mailsync.yaml.5"])
        text = render(self, MAN_PAGES[0])
        self.assertIn("mailsync - keep Maildir folders in sync", text)
        self.assertIn("source \"mailsync mailboxes|\"", text)
        text = render(self, MAN_PAGES[1])
        self.assertIn("password_command", text)
        for line in text.splitlines():
            self.assertLessEqual(len(line), 80, line)


class Packaging(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("cmake") is None:
            raise unittest.SkipTest("cmake is not installed")
        cls.tmp = tempfile.mkdtemp(prefix="mailsync-pkg-")
        cls.tree = os.path.join(cls.tmp, "build")
        r = sh(["cmake", "-S", SRC, "-B", cls.tree, "-DCMAKE_BUILD_TYPE=Release",
                "-DMAILSYNC_TESTS=OFF", "-DMAILSYNC_FUZZ=OFF"])
        if r.returncode != 0:
            raise AssertionError("configure failed:\n" + r.stdout + r.stderr)
        r = sh(["cmake", "--build", cls.tree, "-j2"], timeout=800)
        if r.returncode != 0:
            raise AssertionError("build failed:\n" + r.stdout[-3000:] + r.stderr[-3000:])

    @classmethod
    def tearDownClass(cls):
        if os.environ.get("MAILSYNC_KEEP_TMP"):
            print("keeping %s" % cls.tmp)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_cmake_install(self):
        """cmake --install --prefix P: every file in its place; the units
        start P/bin/mailsync; the installed binary and pages work."""
        prefix = os.path.join(self.tmp, "prefix")
        r = sh(["cmake", "--install", self.tree, "--prefix", prefix])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for rel in ["bin/mailsync", "share/man/man1/mailsync.1.gz",
                    "share/man/man5/mailsync.yaml.5.gz",
                    "share/bash-completion/completions/mailsync",
                    "share/zsh/site-functions/_mailsync",
                    "share/systemd/user/mailsync-sync.service",
                    "share/systemd/user/mailsync-sync.timer",
                    "share/doc/mailsync/README.md",
                    "share/doc/mailsync/examples/config.example.yaml"]:
            self.assertTrue(os.path.isfile(os.path.join(prefix, rel)), rel)
        with open(os.path.join(prefix, "share/systemd/user/mailsync-sync.service")) as f:
            unit = f.read()
        self.assertRegex(unit, r"(?m)^ExecStart=%s/bin/mailsync -q sync$" % re.escape(prefix))
        r = sh([os.path.join(prefix, "bin", "mailsync"), "version"])
        self.assertEqual(r.stdout, "mailsync %s\n" % project_version())
        if shutil.which("man") is not None and shutil.which("groff") is not None:
            text = render(self, os.path.join(prefix, "share/man/man1/mailsync.1.gz"))
            self.assertIn("mailsync %s" % project_version(), text)
            render(self, os.path.join(prefix, "share/man/man5/mailsync.yaml.5.gz"))
        # The example configuration installed is one mailsync accepts.
        r = sh([os.path.join(prefix, "bin", "mailsync"), "--config",
                os.path.join(prefix, "share/doc/mailsync/examples/config.example.yaml"), "check"],
               env=dict(os.environ, HOME=self.tmp))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_deb_package(self):
        """cpack -G DEB: a package named mailsync with the version, the
        shared libraries it needs as Depends, and every file under /usr;
        dpkg installs it into a scratch root and the binary runs there."""
        for tool in ("cpack", "dpkg", "dpkg-deb", "dpkg-shlibdeps"):
            if shutil.which(tool) is None:
                self.skipTest("%s is not installed (Debian: apt-get install cmake dpkg-dev)" % tool)
        r = sh(["cpack", "-G", "DEB"], cwd=self.tree)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        debs = glob.glob(os.path.join(self.tree, "mailsync_*.deb"))
        self.assertEqual(len(debs), 1, os.listdir(self.tree))
        deb = debs[0]
        info = sh(["dpkg-deb", "-f", deb]).stdout
        self.assertIn("Package: mailsync\n", info)
        self.assertIn("Version: %s\n" % project_version(), info)
        self.assertIn("Section: mail\n", info)
        depends = re.search(r"(?m)^Depends: (.*)$", info).group(1)
        for lib in ("libc6", "libuv1", "libssl3", "liblmdb0", "libyaml-0-2"):
            self.assertIn(lib, depends)
        files = sh(["dpkg-deb", "-c", deb]).stdout
        for path in ["./usr/bin/mailsync", "./usr/share/man/man1/mailsync.1.gz",
                     "./usr/share/man/man5/mailsync.yaml.5.gz",
                     "./usr/share/bash-completion/completions/mailsync",
                     "./usr/share/zsh/vendor-completions/_mailsync",
                     "./usr/lib/systemd/user/mailsync-sync.service",
                     "./usr/lib/systemd/user/mailsync-sync.timer",
                     "./usr/share/doc/mailsync/examples/config.example.yaml"]:
            self.assertRegex(files, r"(?m) %s$" % re.escape(path))
        # Install with dpkg into a scratch root with a database of its own;
        # the libraries it depends on are the host's, not the root's.
        root = os.path.join(self.tmp, "root")
        for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates"):
            os.makedirs(os.path.join(root, d))
        open(os.path.join(root, "var/lib/dpkg/status"), "w").close()
        r = sh(["dpkg", "--root=" + root, "--force-depends", "--force-not-root",
                "--log=/dev/null", "-i", deb])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        listed = sh(["dpkg", "--root=" + root, "-L", "mailsync"]).stdout.split()
        self.assertIn("/usr/bin/mailsync", listed)
        r = sh([os.path.join(root, "usr/bin/mailsync"), "version"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "mailsync %s\n" % project_version())
        with open(os.path.join(root, "usr/lib/systemd/user/mailsync-sync.service")) as f:
            self.assertRegex(f.read(), r"(?m)^ExecStart=/usr/bin/mailsync -q sync$")


if __name__ == "__main__":
    mstest.main()
