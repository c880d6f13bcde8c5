#!/usr/bin/env python3
"""The Maildir store's system calls, traced with strace around a real
`mailsync --config CFG sync ACCOUNT` against Dovecot:

- a resync with nothing changed reads new/ and cur/ with getdents64 and
  never stats, opens, accesses or readlinks a message file in them;
- every delivery follows DESIGN.md invariant 4: the file is created in tmp/
  with O_CREAT|O_EXCL, made durable (fsync of the file, or one syncfs after
  its last write), renamed into new/ or cur/, and that directory is fsynced
  before the index (LMDB data.mdb) is written again;
- the loop thread (the process's first thread, which serves every
  connection) never creates, writes, syncs or renames a message file: a
  file system waits for its journal there (sync/diskq.h); in a download
  into an existing index it calls no fsync, fdatasync or syncfs at all.

strace must be installed (tests/run installs it); without it the tests
fail rather than skip."""

import os
import re
import shutil
import subprocess
import unittest

import mailgen
import mstest

STRACE = shutil.which("strace") or "/usr/bin/strace"

# '?' keeps strace quiet about names this architecture does not have.
STAT_TRACE = ("%%stat,?stat,?lstat,?fstat,?newfstatat,?fstatat64,?statx,?open,?openat,?openat2,"
              "?creat,?access,?faccessat,?faccessat2,?readlink,?readlinkat,getdents64")
WRITE_TRACE = ("?open,?openat,?openat2,?creat,write,?pwrite64,?writev,?pwritev,?pwritev2,fsync,"
               "fdatasync,syncfs,?sync_file_range,msync,?utimensat,?rename,?renameat,?renameat2,"
               "close")

LINE = re.compile(r"^(\d+)\s+(.*)$")
UNFINISHED = " <unfinished ...>"
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
CALL = re.compile(r"^(\w+)\((.*)\) += (.*)$", re.S)
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
FD = re.compile(r"^(-?\d+)<([^>]*)>")
FD_ANY = re.compile(r"(?<![\w])\d+<([^>]*)>")
ARG_SPLIT = re.compile(r",\s*(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)")

OPENS = {"open", "openat", "openat2", "creat"}
RENAMES = {"rename", "renameat", "renameat2"}
FILE_WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2", "utimensat"}
INDEX_WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2", "fsync", "fdatasync",
                "sync_file_range", "msync"}


class Call:
    """One traced system call: its position in the trace, name, argument
    text and return text (with -y, fds print as N</path>)."""

    def __init__(self, pos, name, args, ret, pid=None):
        self.pos, self.name, self.args, self.ret = pos, name, args, ret
        self.pid = pid  # the thread that made it

    def fd_path(self):
        """The -y path of the first argument when it is a file descriptor."""
        m = FD.match(self.args)
        return m.group(2) if m else None

    def ok(self):
        return re.match(r"\d", self.ret) is not None

    def retval(self):
        m = re.match(r"-?\d+", self.ret)
        return int(m.group(0)) if m else None

    def __repr__(self):
        args = self.args if len(self.args) < 300 else self.args[:300] + "..."
        return "#%d %s(%s) = %s" % (self.pos, self.name, args, self.ret)


def parse_strace(path):
    """The calls of an `strace -f -o path` file in trace order. A call split
    by another thread's call (<unfinished ...> / <... resumed>) is joined and
    keeps the position where it started."""
    slots = []
    pending = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            m = LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            pid, text = m.group(1), m.group(2)
            r = RESUMED.match(text)
            if r:
                if pid not in pending:
                    continue
                pos, head = pending.pop(pid)
                text = head + r.group(2)
            else:
                pos = len(slots)
                slots.append(None)
                if text.endswith(UNFINISHED):
                    pending[pid] = (pos, text[:-len(UNFINISHED)])
                    continue
            c = CALL.match(text)
            if c:
                slots[pos] = (c.group(1), c.group(2), c.group(3), int(pid))
    return [Call(i, *s) for i, s in enumerate(slots) if s is not None]


def string_paths(call, cwd):
    """The string arguments of a call in order, each resolved against the
    directory fd before it (its -y path) or the working directory."""
    out = []
    base = cwd
    for piece in ARG_SPLIT.split(call.args):
        piece = piece.strip()
        fd = FD.match(piece)
        if fd:
            base = fd.group(2)
        elif piece.startswith("AT_FDCWD"):
            base = cwd
        else:
            q = QUOTED.fullmatch(piece)
            if q and q.group(1):
                out.append(os.path.normpath(os.path.join(base, q.group(1))))
    return out


def call_paths(call, cwd):
    """Every path one call names: its -y fd paths (arguments and result)
    and its resolved string arguments."""
    return (set(FD_ANY.findall(call.args)) | set(FD_ANY.findall(call.ret))
            | set(string_paths(call, cwd)))


def message_file_calls(calls, maildir, cwd):
    """The calls (other than getdents64) that name a file inside a cur/ or
    new/ directory under maildir."""
    inside = re.compile(r"^%s/(?:.+/)?(?:cur|new)/[^/]+" % re.escape(maildir))
    return [c for c in calls if c.name != "getdents64"
            and any(inside.match(p) for p in call_paths(c, cwd))]


def deliveries(calls, maildir, cwd):
    """[(rename call, tmp path, destination path)] of the successful renames
    of maildir/.../tmp/X to .../new/X or .../cur/X:2,... ."""
    out = []
    for r in calls:
        if r.name not in RENAMES or not r.ok():
            continue
        names = string_paths(r, cwd)
        if len(names) != 2 or not names[0].startswith(maildir + "/"):
            continue
        src, dst = names
        m = re.match(r"^(.*)/tmp/([^/]+)$", src)
        if m and re.match(r"^%s/(?:new|cur)/%s(?::2,.*)?$"
                          % (re.escape(m.group(1)), re.escape(m.group(2))), dst):
            out.append((r, src, dst))
    return out


def delivery_order_problems(calls, maildir, state_dir, cwd):
    """Checks invariant 4 for every delivery in the trace; returns the
    deliveries and a list of the violations found (empty when it holds)."""
    data_mdb = re.compile(r"^%s/.*/data\.mdb$" % re.escape(state_dir))

    def in_maildir(path):
        return path is not None and (path == maildir or path.startswith(maildir + "/"))

    index_io = [c for c in calls if c.ok() and (
        c.name == "msync" or (c.name in INDEX_WRITES and data_mdb.match(c.fd_path() or "")))]
    problems = []
    if not index_io:
        problems.append("no write to the LMDB data file under %s was traced" % state_dir)
    found = deliveries(calls, maildir, cwd)
    for r, src, dst in found:
        ctx = "delivery %s -> %s" % (src, dst)
        before = [c for c in calls if c.pos < r.pos]
        # (a) created in tmp/ with O_CREAT|O_EXCL
        opens = [c for c in before if c.name in OPENS and c.ok() and src in call_paths(c, cwd)]
        if not opens:
            problems.append("%s: the tmp file was never opened before %r" % (ctx, r))
            continue
        o = opens[0]
        if o.name != "creat" and not ("O_CREAT" in o.args and "O_EXCL" in o.args):
            problems.append("%s: not created with O_CREAT|O_EXCL: %r" % (ctx, o))
        # (b) durable before the rename: an fsync/fdatasync of the file, or
        # a syncfs on the maildir's file system, after its last write
        mods = [c for c in before if c.pos > o.pos and c.name in FILE_WRITES
                and c.fd_path() == src]
        if not mods:
            problems.append("%s: nothing was written to the tmp file" % ctx)
            continue
        last = mods[-1]
        syncs = [c for c in before if c.pos > last.pos and c.ok() and (
            (c.name in ("fsync", "fdatasync") and c.fd_path() == src)
            or (c.name == "syncfs" and in_maildir(c.fd_path())))]
        if not syncs:
            problems.append("%s: no fsync/fdatasync of the file nor syncfs between its last "
                            "write %r and the rename %r" % (ctx, last, r))
        # (c) the destination directory is fsynced after the rename and
        # before the index is written again
        ddir = os.path.dirname(dst)
        after = [c for c in index_io if c.pos > r.pos]
        if not after:
            problems.append("%s: the index was not written after the rename %r" % (ctx, r))
            continue
        first = after[0]
        # (an fsync of it, or a syncfs of the Maildir's file system, which
        # many new folders' directories share)
        dsync = [c for c in calls if r.pos < c.pos < first.pos and c.ok() and (
            (c.name in ("fsync", "fdatasync") and c.fd_path() == ddir)
            or (c.name == "syncfs" and in_maildir(c.fd_path())))]
        if not dsync:
            problems.append("%s: the index was written (%r) after the rename %r before any "
                            "fsync of %s" % (ctx, first, r, ddir))
    return found, problems


def message_file_touches(calls, maildir):
    """The calls that name a file under a tmp/, cur/ or new/ directory of
    maildir, by a -y fd path or an absolute path argument (mailsync names
    message files by absolute path). Cheaper than call_paths, whose split
    of the arguments is slow on written data full of quotes."""
    inside = re.compile(r"^%s/(?:.+/)?(?:tmp|cur|new)/[^/]+$" % re.escape(maildir))
    out = []
    for c in calls:
        if maildir not in c.args and maildir not in c.ret:
            continue
        paths = set(FD_ANY.findall(c.args)) | set(FD_ANY.findall(c.ret))
        paths |= {os.path.normpath(q) for q in QUOTED.findall(c.args) if q.startswith("/")}
        if any(inside.match(x) for x in paths):
            out.append(c)
    return out


class StoreSyscalls(mstest.DovecotTestCase):

    def setUp(self):
        super().setUp()
        self.user = "u%d" % (abs(hash(self.id())) % 10**8)
        self.dovecot.add_user(self.user, "pw-" + self.user)
        # strace prints resolved paths: compare against the real one.
        self.tmp = os.path.realpath(self.tmp)
        self.maildir = os.path.join(self.tmp, "Mail")
        self.state = os.path.join(self.tmp, "state")
        if not os.access(STRACE, os.X_OK):
            self.fail("strace is not installed (%s); tests/run installs it" % STRACE)

    def config(self):
        acct = self.imap_account(self.maildir, user=self.user, layout="verbatim")
        return self.write_config({"a": acct})

    def sync(self, cfg, trace=None, expr=None):
        """Runs `mailsync sync a` in self.tmp, under strace -f -y writing
        to trace when given."""
        binary = mstest.mailsync_bin()
        if binary is None:
            raise unittest.SkipTest("MAILSYNC_BIN is not set and no build/mailsync exists")
        cmd = [binary, "--config", cfg, "sync", "a"]
        env = dict(os.environ)
        if trace is not None:
            cmd = [STRACE, "-f", "-qq", "-y", "-e", "trace=" + expr, "-o", trace] + cmd
            # LeakSanitizer stops the process with ptrace at exit, which a
            # process traced by strace cannot allow.
            env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=300, env=env, cwd=self.tmp)
        if p.returncode != 0:
            self.fail("%s exited %d\nstdout:\n%s\nstderr:\n%s"
                      % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
        return p

    def folder_dir(self, name):
        return os.path.join(self.maildir, *name.split("/"))

    # ---- 1: a resync touches no message file --------------------------------

    def test_resync_reads_directories_only(self):
        msgs = mailgen.generate(600, seed=11, max_size=1500)
        flags = ["\\Seen" if i % 3 else "" for i in range(len(msgs))]
        self.dovecot.save_many(self.user, "INBOX", msgs, flags)
        cfg = self.config()
        p = self.sync(cfg)
        self.assertIn("600 new", p.stdout)
        inbox = self.folder_dir("INBOX")
        cur, new = os.path.join(inbox, "cur"), os.path.join(inbox, "new")
        self.assertEqual(len(os.listdir(cur)), 400)
        self.assertEqual(len(os.listdir(new)), 200)
        before = (sorted(os.listdir(cur)), sorted(os.listdir(new)))

        trace = os.path.join(self.tmp, "resync.strace")
        p = self.sync(cfg, trace, STAT_TRACE)
        self.assertIn("0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted", p.stdout)
        self.assertEqual((sorted(os.listdir(cur)), sorted(os.listdir(new))), before)
        calls = parse_strace(trace)
        self.assertTrue(calls, "empty strace output")

        bad = message_file_calls(calls, self.maildir, self.tmp)
        self.assertEqual(bad, [], "the resync named message files in cur/ or new/:\n%s"
                         % "\n".join(map(repr, bad[:20])))

        # Both directories were opened as directories and read with
        # getdents64, entries and all: the test cannot pass by not scanning.
        for d, n in ((cur, 400), (new, 200)):
            opened = [c for c in calls if c.name in OPENS and c.ok()
                      and "O_DIRECTORY" in c.args and d in string_paths(c, self.tmp)]
            self.assertTrue(opened, "no open of %s with O_DIRECTORY" % d)
            reads = [c for c in calls if c.name == "getdents64" and c.fd_path() == d]
            got = sum(int(m) for c in reads for m in re.findall(r"/\* (\d+) entries \*/", c.args))
            self.assertGreaterEqual(got, n + 2, "getdents64 on %s: %s" % (d, reads))

    # ---- 2: tmp/, fsync, rename, directory fsync, then the index ------------

    def test_delivery_write_order(self):
        # INBOX: one batch of 5, made durable with one syncfs on the file
        # systems that allow it; Lists/dev: 2, an fsync per file.
        seeded = {"INBOX": mailgen.generate(5, seed=21, max_size=4000),
                  "Lists/dev": mailgen.generate(2, seed=22, max_size=4000)}
        for folder, msgs in seeded.items():
            flags = ["\\Seen" if i % 2 else "" for i in range(len(msgs))]
            self.dovecot.save_many(self.user, folder, msgs, flags)
        cfg = self.config()
        trace = os.path.join(self.tmp, "first.strace")
        p = self.sync(cfg, trace, WRITE_TRACE)
        self.assertIn("7 new", p.stdout)
        calls = parse_strace(trace)

        found, problems = delivery_order_problems(calls, self.maildir, self.state, self.tmp)
        # Every seeded message came by such a rename, into new/ without
        # flags and cur/ with them, and is there now.
        by_dir = {}
        for _r, _src, dst in found:
            self.assertTrue(os.path.exists(dst), dst)
            by_dir.setdefault(os.path.relpath(os.path.dirname(dst), self.maildir), []).append(dst)
        self.assertEqual({d: len(v) for d, v in by_dir.items()},
                         {"INBOX/new": 3, "INBOX/cur": 2, "Lists/dev/new": 1, "Lists/dev/cur": 1},
                         "renames tmp/ -> new/|cur/: %s" % [r for r, _s, _d in found])
        for folder, msgs in seeded.items():
            local = mstest.maildir_messages(self.folder_dir(folder))
            self.assertEqual(sorted(b for _u, _f, b in local),
                             sorted(mstest.crlf_to_lf(m) for m in msgs))
        self.assertEqual(problems, [], "invariant 4 broken:\n" + "\n".join(problems))

    def assert_loop_thread_untouched(self, trace):
        """Every call of the trace on a file under tmp/, cur/ or new/ was
        made by a thread other than the loop thread, and there were such
        calls (creating, writing and renaming files)."""
        calls = parse_strace(trace)
        self.assertTrue(calls, "empty strace output")
        # strace -f names the traced process's first thread by the pid it
        # printed first: the loop thread.
        loop_tid = calls[0].pid
        touched = message_file_touches(calls, self.maildir)
        # The test cannot pass by tracing nothing.
        self.assertTrue(any(c.name in OPENS and "O_CREAT" in c.args for c in touched), touched[:5])
        self.assertTrue(any(c.name in RENAMES for c in touched))
        self.assertTrue(any(c.name in FILE_WRITES for c in touched))
        on_loop = [c for c in touched if c.pid == loop_tid]
        self.assertEqual(on_loop, [], "the loop thread touched message files:\n%s"
                         % "\n".join(map(repr, on_loop[:20])))

    def test_loop_thread_never_writes_message_files(self):
        """A first download of messages small and large (several chunks
        each) over IMAP: every call on a file under tmp/, new/ or cur/ is
        made by a thread-pool thread, none by the loop thread."""
        # A first run with nothing to download creates the index (its
        # schema is written as it is opened, on the loop thread, once).
        cfg = self.config()
        self.assertEqual(mstest.run_mailsync(cfg, "sync", "a").returncode, 0)
        msgs = mailgen.generate(150, seed=31, max_size=300000)
        self.dovecot.save_many(self.user, "INBOX", msgs, ["\\Seen" if i % 2 else ""
                                                          for i in range(len(msgs))])
        trace = os.path.join(self.tmp, "loop.strace")
        p = self.sync(cfg, trace, WRITE_TRACE)
        self.assertIn("150 new", p.stdout)
        self.assert_loop_thread_untouched(trace)
        # Nor does it wait for a disk anywhere else in the download: the
        # index commits (the run's last one included) and the directories'
        # fsyncs are made on the thread pool too.
        calls = parse_strace(trace)
        syncs = [c for c in calls if c.name in ("fsync", "fdatasync", "syncfs", "msync")]
        self.assertTrue(syncs, "no fsync traced at all")
        on_loop = [c for c in syncs if c.pid == calls[0].pid]
        self.assertEqual(on_loop, [], "the loop thread waited for the disk:\n%s"
                         % "\n".join(map(repr, on_loop[:20])))
        local = mstest.maildir_messages(self.folder_dir("INBOX"))
        self.assertEqual(sorted(hash(b) for _u, _f, b in local),
                         sorted(hash(mstest.crlf_to_lf(m)) for m in msgs))

    def test_pop3_loop_thread_never_writes_message_files(self):
        """The same for the POP3 engine's downloads."""
        msgs = mailgen.generate(120, seed=33, max_size=300000)
        self.dovecot.save_many(self.user, "INBOX", msgs, [""] * len(msgs))
        acct = self.pop3_account(self.maildir, user=self.user)
        cfg = self.write_config({"a": acct})
        trace = os.path.join(self.tmp, "pop3.strace")
        p = self.sync(cfg, trace, WRITE_TRACE)
        self.assertIn("120 new", p.stdout)
        self.assert_loop_thread_untouched(trace)
        # Compared as hashes: a difference in bodies this large would make
        # unittest's diff of the lists run for minutes.
        local = mstest.maildir_messages(self.folder_dir("INBOX"))
        self.assertEqual(sorted(hash(b) for _u, _f, b in local),
                         sorted(hash(mstest.crlf_to_lf(m)) for m in msgs))

    def test_many_new_folders_write_order(self):
        """A first sync of many one-message folders: the new folders'
        directories are made durable together (one syncfs instead of an
        fsync each, on file systems where syncfs writes everything back),
        and still before the index records their messages."""
        n = 24
        for i in range(n):
            self.dovecot.save_many(self.user, "many/f%02d" % i,
                                   mailgen.generate(1, seed=40 + i, max_size=2000), [""])
        cfg = self.config()
        trace = os.path.join(self.tmp, "many.strace")
        p = self.sync(cfg, trace, WRITE_TRACE)
        self.assertIn("%d new" % n, p.stdout)
        calls = parse_strace(trace)
        found, problems = delivery_order_problems(calls, self.maildir, self.state, self.tmp)
        self.assertEqual(len(found), n, "renames: %s" % [r for r, _s, _d in found])
        self.assertEqual(problems, [], "invariant 4 broken:\n" + "\n".join(problems))
        for i in range(n):
            self.assertEqual(len(mstest.maildir_messages(self.folder_dir("many/f%02d" % i))), 1)
        fs = subprocess.run(["stat", "-f", "-c", "%T", self.maildir], stdout=subprocess.PIPE,
                            text=True).stdout.strip()
        if fs in ("ext2/ext3", "xfs", "btrfs", "tmpfs", "f2fs"):
            dir_syncfs = [c for c in calls if c.name == "syncfs" and c.ok()
                          and os.path.isdir(c.fd_path() or "")]
            self.assertTrue(dir_syncfs, "no syncfs of the new folders' directories on %s" % fs)


if __name__ == "__main__":
    mstest.main()
