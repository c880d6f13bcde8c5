#!/usr/bin/env python3
"""mailsync at scale against mbsync and mpop (issue 13), on one throwaway
Dovecot and one machine, in one run: a report, never a pass/fail test.

    scale.py --bin BUILD/mailsync [--messages N] [--pop-messages N] [--runs R]
             [--only imap|pop3|million] [--million [--million-messages N]
             [--million-no-peer]] [--no-callgrind] [--seed S] [--keep] [--out FILE]

IMAP: one INBOX of --messages (100,000) small messages (at most 2 KB),
mailsync against mbsync: first download; the first resync after it (which
mailsync spends reading the directory its download changed, and recording
its change times); resync with nothing changed (the steady state);
resync after 1% of the messages' flags were changed on the server;
resync after 1% were changed locally (mutt-style renames in cur/, the
same messages in both tools' Maildirs); all under Dovecot's own
capabilities (QRESYNC), then resync with nothing changed with CONDSTORE
and QRESYNC hidden (imap_capability). POP3: --pop-messages (20,000) small
messages, mailsync against mpop: first download and nothing new.
--million adds an account of --million-messages (1,000,000) in 50 folders:
first download, the first resync after it and nothing changed, both tools
(--million-no-peer: mailsync alone; --only million: this part alone), with
mailsync's memory sampled over each run (MemTrace). The first download
always runs: the resyncs need each tool's own state of the account.

Per run: wall time, CPU time (user + system), peak RSS (bench.measure);
for mailsync, whether it read INBOX's directory (its -v log says when the
change-time shortcut spared it); every run starts at least 2 s after the
same tool's previous one (SETTLE_S). Per tool: the sync state's size per
message (mailsync's state directory, mbsync's .mbsyncstate/.uidvalidity
files, mpop's UIDL file); and the
instruction counts of the runs with nothing to do, under valgrind's
callgrind (or perf stat, when the machine has the counters), which are
steady on a loaded machine where times are not. The mail is written
straight into Dovecot's Maildir before it starts (an APPEND of 100,000
messages would take longer than the benchmark). See tests/bench/README.md.
"""

import argparse
import collections
import json
import multiprocessing
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "harness"))
sys.path.insert(0, HERE)

import bench  # noqa: E402
import dovecot  # noqa: E402
import mailgen  # noqa: E402
from bench import (IMAP_PASSWORD, IMAP_USER, POP_PASSWORD, POP_USER, MailsyncImap, MailsyncPop, Mbsync,  # noqa: E402
                   Mpop, check_imap, check_pop, fmt_mib, fmt_s, log, order, server_stats)

MAX_SIZE = 2048  # "small (~2 KB) messages"
# mailsync believes a folder's recorded cur/ and new/ change times only when
# they were read at least 2 s after the last change (store/maildir.h,
# MD_STAMP_SETTLE_NS; Dovecot's Maildir code waits as long). Syncs a user
# sees are minutes apart, so every run here starts at least this long after
# the same tool's previous run ended (the margin covers the clock reads).
SETTLE_S = 2.1
# What mailsync -v logs when the change-time shortcut spares a folder both
# its directory read and its base (sync/folder.c, quiet_done).
SHORTCUT_RE = re.compile(r"^debug: [^:]+: INBOX: unchanged on both sides, not scanned$", re.M)
# The same line for any folder (the million's 50 folders).
# A run that read only the rows and files a QRESYNC delta named (issue 13,
# step 6 of docs/notes/memory-100k.md): not the directory, not the base.
DELTA_RE = re.compile(r"^debug: [^:]+: INBOX: unchanged locally, changed on the server: scanning "
                      r"only what the (delta names|listing changed)", re.M)
ANY_SHORTCUT_RE = re.compile(r"^debug: [^:]+: .+: unchanged on both sides, not scanned$", re.M)
FLAG_LETTERS = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R"}
MILLION_FOLDERS = 50

# Issue 13's targets: wall-time ratio mailsync ÷ peer, and peak RSS in MiB.
TARGETS = {
    "imap_first": 0.3,
    "imap_nochange": 0.1,
    "imap_server1": 0.3,
    "imap_local1": 0.3,
    "imap_nochange_fallback": 0.7,
    "pop3_nothing": 1.0,
}
RSS_TARGETS = {"imap": 32, "pop3": 16, "million": 64}


# ---------------------------------------------------------------------------
# Seeding: Maildir files written straight into a Dovecot user's Maildir++
# before the server starts, with flags in their names.


def seed_folder(job):
    """Writes one folder's messages (a job of seed_maildir; a top-level
    function so that a process pool can run it)."""
    root, fi, name, count, seed, flags, base = job
    fdir = root if name == "INBOX" else os.path.join(root, "." + name)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(fdir, sub), exist_ok=True)
    fl = bench.realistic_flags(count, fi) if flags else [""] * count
    g = mailgen._Gen(seed * 1000003 + fi)
    for i in range(count):
        msg = g.build(i, max_size=MAX_SIZE).replace(b"\r\n", b"\n")
        letters = "".join(sorted(FLAG_LETTERS[f] for f in fl[i].split() if f in FLAG_LETTERS))
        name_ = "%d.M%dP%d.scale:2,%s" % (base + i, i, fi, letters)
        with open(os.path.join(fdir, "cur", name_), "wb") as f:
            f.write(msg)
    return count


def seed_maildir(d, user, folders, seed, flags=True):
    """folders: [(name, count)]; INBOX is the Maildir root, others .NAME.
    Returns the total number of messages written. Several folders are
    written by a pool of processes, one per core: mailgen takes about
    0.5 ms a message, so the million's 50 folders would otherwise spend
    8 minutes on one core before anything is measured (each folder's
    messages depend only on the seed and the folder's position)."""
    home = d.home(user)
    root = os.path.join(home, "Maildir")
    base = int(time.time()) - 10 * 86400
    jobs = [(root, fi, name, count, seed, flags, base) for fi, (name, count) in enumerate(folders)]
    if len(jobs) > 1:
        with multiprocessing.Pool(len(os.sched_getaffinity(0))) as pool:
            total = sum(pool.map(seed_folder, jobs, chunksize=1))
    else:
        total = sum(seed_folder(j) for j in jobs)
    if d.is_root:
        for dp, dn, fn in os.walk(home):
            for x in dn + fn:
                os.lchown(os.path.join(dp, x), dovecot.MAIL_UID, dovecot.MAIL_UID)
        os.chown(home, dovecot.MAIL_UID, dovecot.MAIL_UID)
    return total


def settled_run(tool):
    """tool.run() (which itself waits for the next second, for mbsync),
    started at least SETTLE_S after the tool's previous run ended; for
    mailsync, m.inbox_scanned says whether that run read INBOX's directory
    (False: the change-time shortcut was taken)."""
    if tool.last_end is not None:
        wait = tool.last_end + SETTLE_S - time.time()
        if wait > 0:
            time.sleep(wait)
    trace = None
    if isinstance(tool, MailsyncImap) and getattr(tool, "trace_memory", False):
        with MemTrace(tool) as trace:
            m = tool.run()
    else:
        m = tool.run()
    m.mem_trace = trace
    m.inbox_scanned = None
    m.folders_skipped = None
    if isinstance(tool, MailsyncImap):
        m.inbox_scanned = SHORTCUT_RE.search(m.stderr) is None and DELTA_RE.search(m.stderr) is None
        m.folders_skipped = len(ANY_SHORTCUT_RE.findall(m.stderr))
    return m


class MemTrace:
    """Samples a mailsync run's memory from /proc while bench.measure()
    runs it (measure() gives only the peak): every INTERVAL s, VmRSS and
    its parts (RssAnon: the heap and stacks; RssFile: mapped files, LMDB's
    map among them; RssShmem), and which Maildir folders the process has
    files open in, so that a peak can be put in a phase (which folder was
    being downloaded or read). The process is found by its command line
    (the binary and the tool's config file) under GNU time."""

    INTERVAL = 0.1
    FIND_INTERVAL = 0.005  # until the process is found: a run with nothing to do lasts 0.1 s
    FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")

    def __init__(self, tool):
        self.tool = tool
        self.samples = []  # (seconds since start, {field: KiB}, [folders])
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.t0 = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.thread.join()

    def _find(self):
        want = [self.tool.bench.args.bin, self.tool.config]
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    argv = f.read().decode("utf-8", "replace").split("\0")
            except OSError:
                continue
            if argv and argv[0] == want[0] and want[1] in argv:
                return pid
        return None

    def _folders(self, pid):
        root = self.tool.maildir + os.sep
        out = set()
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
        except OSError:
            return []
        for fd in fds:
            try:
                target = os.readlink("/proc/%s/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith(root):
                out.add(target[len(root):].split(os.sep)[0])
        return sorted(out)

    def _run(self):
        pid = None
        while not self.stop_ev.is_set():
            if pid is None:
                pid = self._find()
                if pid is None:
                    self.stop_ev.wait(self.FIND_INTERVAL)
                    continue
            if pid is not None:
                try:
                    with open("/proc/%s/status" % pid) as f:
                        text = f.read()
                except OSError:
                    return  # the process has ended
                vals = {}
                for k in self.FIELDS:
                    m = re.search(r"^%s:\s+(\d+)" % k, text, re.M)
                    if m:
                        vals[k] = int(m.group(1))
                if vals:
                    self.samples.append((round(time.monotonic() - self.t0, 2), vals, self._folders(pid)))
            self.stop_ev.wait(self.INTERVAL)

    def summary(self):
        """The sample with the largest VmRSS and the largest of each part,
        or None when no sample was taken."""
        if not self.samples:
            return None
        peak = max(self.samples, key=lambda x: x[1].get("VmRSS", 0))
        return collections.OrderedDict([
            ("samples", len(self.samples)),
            ("duration_s", self.samples[-1][0]),
            ("peak_at_s", peak[0]),
            ("at_peak_kib", peak[1]),
            ("folders_open_at_peak", peak[2]),
            ("largest_kib", {k: max(x[1].get(k, 0) for x in self.samples) for k in self.FIELDS}),
        ])


def scanned_text(flags):
    """"2 of 3" runs that read INBOX's directory, or "—" for a peer."""
    known = [f for f in flags if f is not None]
    return "%d of %d" % (sum(known), len(known)) if known else "—"


def warm_server(d, user, folders):
    """Builds Dovecot's indexes and caches (every run is warm-cache, and the
    first tool must not pay for the index the others then use)."""
    for name, _count in folders:
        d.doveadm("fetch", "-u", user, "uid flags size.virtual date.received", "mailbox", name, "all")


def _timed_command(conn, tag, line):
    """Sends one command on imaplib connection conn's socket and reads the
    answer without parsing it (imaplib's own parsing of 100,000 FETCH lines
    would take longer than the server); returns the tagged status word."""
    conn.sock.sendall(b"%s %s\r\n" % (tag, line))
    tail = b"\r\n"
    mark = b"\r\n" + tag + b" "
    while True:
        chunk = conn.sock.recv(1 << 20)
        if not chunk:
            raise dovecot.DovecotError("connection closed during %s" % line.decode())
        tail = (tail + chunk)[-8192:]
        k = tail.rfind(mark)
        if k >= 0 and tail.endswith(b"\r\n") and tail.find(b"\r\n", k + 2) == len(tail) - 2:
            return tail[k + len(mark):].split(b" ", 1)[0].decode()


def server_floor(d, commands, setup=(), runs=3):
    """The server's own time for the least any client must ask in a
    scenario: seconds from sending the first of commands (raw command
    lines, bytes, sent one after the other) to the tagged answer of the
    last, on a connection already logged in and past setup (untimed); the
    median of runs. No client can take less on this server whatever it
    does on its side, so floor ÷ peer's wall time is the least ratio a
    target can ask of it."""
    times = []
    for _ in range(runs):
        conn = d.imap(IMAP_USER)
        try:
            n = 0
            for line in setup:
                n += 1
                _timed_command(conn, b"F%d" % n, line)
            t = time.perf_counter()
            for line in commands:
                n += 1
                st = _timed_command(conn, b"F%d" % n, line)
                if st != "OK":
                    raise dovecot.DovecotError("%s: %s" % (line.decode(), st))
            times.append(time.perf_counter() - t)
        finally:
            conn.logout()
    return statistics.median(times)


def inbox_status(d):
    """INBOX's STATUS (UIDVALIDITY, HIGHESTMODSEQ) over a new connection;
    it also makes Dovecot read its changed Maildir now (see settle_server)."""
    conn = d.imap(IMAP_USER)
    try:
        typ, data = conn.status("INBOX", "(UIDVALIDITY HIGHESTMODSEQ)")
        if typ != "OK":
            raise dovecot.DovecotError("STATUS INBOX: %s" % data)
        return {k.decode(): int(v) for k, v in re.findall(rb"([A-Z]+) (\d+)", data[0])}
    finally:
        conn.logout()


# ---------------------------------------------------------------------------
# Changes between runs


def change_server_flags(d, rng, share):
    """Toggles \\Seen or \\Flagged on share of INBOX's messages (UID STORE
    in chunks). Returns how many."""
    conn = d.imap(IMAP_USER)
    try:
        typ, data = conn.select("INBOX")
        typ, data = conn.uid("SEARCH", "ALL")
        uids = [int(u) for u in data[0].split()]
        picks = sorted(rng.sample(uids, max(1, round(len(uids) * share))))
        typ, data = conn.uid("SEARCH", "SEEN")
        seen = set(int(u) for u in data[0].split())
        typ, data = conn.uid("SEARCH", "FLAGGED")
        flagged = set(int(u) for u in data[0].split())
        ops = collections.defaultdict(list)
        for i, uid in enumerate(picks):
            flag, have = ("\\Seen", seen) if i % 2 == 0 else ("\\Flagged", flagged)
            ops[("-FLAGS" if uid in have else "+FLAGS", flag)].append(uid)
        for (op, flag), us in ops.items():
            for k in range(0, len(us), 500):
                typ, data = conn.uid("STORE", ",".join(map(str, us[k:k + 500])), op + ".SILENT", "(%s)" % flag)
                if typ != "OK":
                    raise dovecot.DovecotError("STORE: %s" % data)
        conn.close()
    finally:
        conn.logout()
    return len(picks)


def message_ids(cur_dirs):
    """{Message-ID: (dir, unique part)} of the files in the given cur/ and
    new/ directories."""
    out = {}
    for d in cur_dirs:
        for name in os.listdir(d):
            with open(os.path.join(d, name), "rb") as f:
                head = f.read(4096)
            m = re.search(rb"^Message-ID:[ \t]*(\S+)", head, re.M | re.I)
            if m:
                out[m.group(1)] = (d, name.partition(":2,")[0])
    return out


def toggle_local(ids, picks):
    """Renames the picked messages' files as mutt does when F is toggled:
    new/ files move to cur/, the flag letters stay sorted. Returns how many
    files were renamed."""
    by_dir = collections.defaultdict(dict)
    for mid in picks:
        d, uniq = ids[mid]
        by_dir[os.path.dirname(d)][uniq] = True
    done = 0
    for folder, uniqs in by_dir.items():
        for sub in ("cur", "new"):
            sd = os.path.join(folder, sub)
            for name in os.listdir(sd):
                uniq, _sep, info = name.partition(":2,")
                if uniq not in uniqs:
                    continue
                letters = set(info)
                letters ^= {"F"}
                new = "%s:2,%s" % (uniq, "".join(sorted(letters)))
                os.rename(os.path.join(sd, name), os.path.join(folder, "cur", new))
                done += 1
    return done


# ---------------------------------------------------------------------------
# Measuring


def state_bytes(tool):
    """Bytes of the tool's sync state (apparent sizes)."""
    total = 0
    if isinstance(tool, (MailsyncImap, MailsyncPop)):
        for dp, _dn, fn in os.walk(os.path.join(tool.dir, "state")):
            total += sum(os.path.getsize(os.path.join(dp, f)) for f in fn if f != "lock")
    elif isinstance(tool, Mbsync):
        for dp, _dn, fn in os.walk(tool.maildir):
            total += sum(os.path.getsize(os.path.join(dp, f)) for f in fn
                         if f.startswith((".mbsyncstate", ".uidvalidity", ".isyncuidmap")))
    elif isinstance(tool, Mpop):
        p = os.path.join(tool.dir, "uidls")
        total = os.path.getsize(p) if os.path.exists(p) else 0
    return total


def perf_works():
    try:
        p = subprocess.run(["perf", "stat", "-x,", "-e", "instructions:u", "true"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0 and re.search(r"^\d+,", p.stderr, re.M) is not None


def count_instructions(tool, use_perf):
    """Instructions of one run of tool (which must have nothing to do):
    (count, how, stderr), or (None, why not, stderr)."""
    argv = tool.argv()
    if use_perf:
        p = subprocess.run(["perf", "stat", "-x,", "-e", "instructions:u"] + argv, cwd=tool.dir,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        m = re.search(r"^(\d+),", p.stderr, re.M)
        if m and p.returncode == 0:
            return int(m.group(1)), "perf stat -e instructions:u", p.stderr
        return None, "perf failed", p.stderr
    if not shutil.which("valgrind"):
        return None, "valgrind not installed", ""
    p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"] + argv, cwd=tool.dir,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    m = re.search(r"Collected : (\d+)", p.stderr) or re.search(r"I\s+refs:\s+([\d,]+)", p.stderr)
    if p.returncode != 0 or m is None:
        return None, "exit %d under callgrind" % p.returncode, p.stderr
    return int(m.group(1).replace(",", "")), "valgrind --tool=callgrind (all threads)", p.stderr


def problem(m):
    """Why a run failed: the sanity check's text, with the run's error lines
    (mailsync runs with -v, so its first line is a debug line)."""
    errors = [line.strip() for line in m.stderr.splitlines() if line.startswith(("error:", "mbsync:", "mpop:"))]
    text = m.problem or ("exit status %d" % m.rc)
    return text + ("; " + " | ".join(errors[-3:]) if errors else "")


class ScaleBench:
    """What bench.py's Tool classes expect of their bench (work directory,
    Dovecot, args.bin, server_log), plus the results."""

    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="mailsync-scale-", dir="/tmp")
        os.chmod(self.work, 0o755)
        self.dovecot = None
        self.server_log = None
        self.results = collections.OrderedDict()  # key -> {title, peer, runs: {tool: [..]}}
        self.state = collections.OrderedDict()  # part -> {tool: bytes per message}
        self.instructions = collections.OrderedDict()
        self.notes = []
        self.facts = collections.OrderedDict()
        self.mem = collections.OrderedDict()  # key -> [{summary, samples}] of mailsync's runs (MemTrace)
        self.million_server_folders = None
        self.floors = collections.OrderedDict()  # key -> {what, seconds: [..]} (server_floor)

    def start_dovecot(self, imap_folders, pop_count):
        d = dovecot.Dovecot(users={IMAP_USER: IMAP_PASSWORD, POP_USER: POP_PASSWORD})
        t = time.monotonic()
        n = seed_maildir(d, IMAP_USER, imap_folders, self.args.seed) if imap_folders else 0
        if pop_count:
            n += seed_maildir(d, POP_USER, [("INBOX", pop_count)], self.args.seed + 1, flags=False)
        log("  wrote %d messages into Dovecot's Maildirs in %.1f s" % (n, time.monotonic() - t))
        d.start()
        self.dovecot = d
        self.server_log = bench.ServerLog(d, IMAP_USER)
        t = time.monotonic()
        if imap_folders:
            warm_server(d, IMAP_USER, imap_folders)
        if pop_count:
            warm_server(d, POP_USER, [("INBOX", pop_count)])
        log("  Dovecot's indexes built in %.1f s" % (time.monotonic() - t))

    def stop_dovecot(self):
        if self.dovecot is not None:
            self.dovecot.stop()
            self.dovecot = None

    def record(self, key, title, peer, tool, m):
        sc = self.results.setdefault(key, {"title": title, "peer": peer, "runs": collections.OrderedDict()})
        sc["runs"].setdefault(tool.name, []).append(m)
        status = "ok" if m.ok else "PROBLEM: " + problem(m)
        scanned = getattr(m, "inbox_scanned", None)
        if scanned is not None:
            status += ", INBOX scanned" if scanned else ", INBOX not scanned (shortcut or delta)"
        if key.startswith("million") and getattr(m, "folders_skipped", None) is not None:
            status += ", %d of %d folders not scanned" % (m.folders_skipped, self.million_server_folders)
        log("  %-44s %-8s %8s  CPU %8s  peak RSS %9s  %s"
            % (title, tool.name, fmt_s(m.wall), fmt_s(m.cpu), fmt_mib(m.maxrss_kib / 1024.0), status))

    def state_size(self, part, tools, messages):
        self.state[part] = collections.OrderedDict(
            (t.name, {"bytes": state_bytes(t), "per_message": state_bytes(t) / max(1, messages)}) for t in tools)

    def instr(self, key, title, tools):
        if self.args.no_callgrind:
            return
        use_perf = perf_works()
        for tool in tools:
            # Spaced as settled_run spaces the measured runs.
            if tool.last_end is not None:
                time.sleep(max(0.0, tool.last_end + SETTLE_S - time.time()))
            n, how, err = count_instructions(tool, use_perf)
            tool.last_end = time.time()
            scanned = (SHORTCUT_RE.search(err) is None and DELTA_RE.search(err) is None
                       if isinstance(tool, MailsyncImap) else None)
            self.instructions.setdefault(key, {"title": title, "tools": collections.OrderedDict()})
            self.instructions[key]["tools"][tool.name] = {"instructions": n, "how": how, "inbox_scanned": scanned}
            log("  %-44s %-8s %s instructions (%s)%s" % (title, tool.name, "{:,}".format(n) if n else "—", how,
                                                       "" if scanned is None else
                                                       ", INBOX scanned" if scanned else ", INBOX not scanned"))

    def floor(self, key, what, commands, setup=()):
        """Records server_floor() of a scenario (see the report's floor
        column)."""
        secs = server_floor(self.dovecot, commands, setup)
        fl = self.floors.setdefault(key, {"what": what, "seconds": []})
        fl["seconds"].append(secs)
        log("  %-44s server floor %s (%s)" % (key, fmt_s(secs), what))

    # -- parts ------------------------------------------------------------

    def part_imap(self):
        n = self.args.messages
        log("\nIMAP: one INBOX of %d messages, mailsync vs mbsync" % n)
        ms, mb = MailsyncImap(self), Mbsync(self)
        tools = [ms, mb]
        runs = self.args.runs
        expect = server_stats(self.dovecot, IMAP_USER)

        def run(key, title, tool, expect):
            m = settled_run(tool)
            check_imap(m, tool, expect)
            self.record(key, title, "mbsync", tool, m)

        for tool in tools:
            tool.reset()
            run("imap_first", "IMAP first download", tool, expect)
        self.state_size("imap", tools, n)
        # mailsync's first resync after its download reads the directory
        # whatever the timing: the download changed cur/ after the change
        # times the index holds (a folder the download created holds none),
        # and so does every sync after one that changed the Maildir. That
        # run records the change times; the steady state a user sees, the
        # next rows, then reads neither the directory nor the base.
        for tool in tools:
            run("imap_after_first", "IMAP first resync after the download", tool, expect)
        for rep in range(runs):
            for tool in order(tools, rep):
                run("imap_nochange", "IMAP resync, nothing changed (QRESYNC)", tool, expect)
        self.instr("imap_nochange", "IMAP resync, nothing changed (QRESYNC)", tools)
        self.floor("imap_nochange", "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)",
                   [b"STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"])
        rng = random.Random(self.args.seed * 31 + 7)
        for rep in range(runs):
            before = inbox_status(self.dovecot)
            k = change_server_flags(self.dovecot, rng, 0.01)
            # The STOREs renamed files of Dovecot's Maildir: the next client
            # to open INBOX pays its re-read of cur/ (0.2 s at 100,000
            # messages). The bench pays it here, so that neither tool does
            # (before, whichever tool went first in a round did).
            inbox_status(self.dovecot)
            expect = server_stats(self.dovecot, IMAP_USER)
            for tool in order(tools, rep):
                run("imap_server1", "IMAP resync, 1% flags changed on the server", tool, expect)
            self.floor("imap_server1", "SELECT INBOX (QRESYNC (UIDVALIDITY MODSEQ-before-the-change))",
                       [b"SELECT INBOX (QRESYNC (%d %d))" % (before["UIDVALIDITY"], before["HIGHESTMODSEQ"])],
                       setup=[b"ENABLE QRESYNC"])
        self.notes.append("1%% on the server: \\Seen or \\Flagged toggled on %d messages before each round; "
                          "then the bench's own STATUS INBOX, so that Dovecot's re-read of its Maildir is paid "
                          "by neither tool." % k)
        ids = {t.name: message_ids([os.path.join(t.maildir, "INBOX", s) for s in ("cur", "new")]) for t in tools}
        common = sorted(set(ids[ms.name]) & set(ids[mb.name]))
        if len(common) != n:
            # mailgen leaves the Message-ID out of a few messages on
            # purpose; the picks come from those that have one.
            self.notes.append("1%% locally: picked among the %d of %d messages with a Message-ID (what "
                              "finds the same message in both Maildirs)" % (len(common), n))
        for rep in range(runs):
            picks = rng.sample(common, max(1, round(n * 0.01)))
            renamed = {t.name: toggle_local(ids[t.name], picks) for t in tools}
            for tool in order(tools, rep):
                m = settled_run(tool)
                check_imap(m, tool, server_stats(self.dovecot, IMAP_USER))
                self.record("imap_local1", "IMAP resync, 1% changed locally (renames)", "mbsync", tool, m)
            # Each tool's rename was pushed by it and pulled by the other
            # (the same flags, in the same direction): one more round of
            # nothing-changed settles both before the next round.
            for tool in tools:
                settled_run(tool)
        self.notes.append("1%% locally: F toggled (mutt-style rename into cur/) on the same %d messages in "
                          "both Maildirs before each round (files renamed: %s)." % (len(picks), renamed))
        # Without CONDSTORE/QRESYNC.
        caps = bench.server_capabilities(self.dovecot, IMAP_USER)
        self.dovecot.imap_capability = " ".join(c for c in caps if c not in ("CONDSTORE", "QRESYNC"))
        self.dovecot.reload()
        try:
            expect = server_stats(self.dovecot, IMAP_USER)
            m = settled_run(ms)  # forgets the modseqs: a warm-up, not measured
            log("  warm-up: mailsync without CONDSTORE/QRESYNC %s (%s)" % (fmt_s(m.wall), "ok" if m.ok else
                                                                         m.first_error_line()))
            for rep in range(runs):
                for tool in order(tools, rep):
                    run("imap_nochange_fallback", "IMAP resync, nothing changed, no CONDSTORE/QRESYNC", tool, expect)
            self.instr("imap_nochange_fallback", "IMAP resync, nothing changed, no CONDSTORE/QRESYNC", tools)
            self.floor("imap_nochange_fallback", "SELECT INBOX, UID FETCH 1:* (UID FLAGS)",
                       [b"SELECT INBOX", b"UID FETCH 1:* (UID FLAGS)"])
        finally:
            self.dovecot.imap_capability = None
            self.dovecot.reload()

    def part_pop3(self):
        n = self.args.pop_messages
        log("\nPOP3: %d messages, mailsync vs mpop" % n)
        ms, mp = MailsyncPop(self), Mpop(self)
        tools = [ms, mp] if shutil.which("mpop") else [ms]
        for tool in tools:
            tool.reset()
            m = settled_run(tool)
            check_pop(m, tool, n, n)
            self.record("pop3_first", "POP3 first download", "mpop", tool, m)
        self.state_size("pop3", tools, n)
        for rep in range(max(3, self.args.runs)):
            for tool in order(tools, rep):
                m = settled_run(tool)
                check_pop(m, tool, n, 0)
                self.record("pop3_nothing", "POP3 nothing new", "mpop", tool, m)
        self.instr("pop3_nothing", "POP3 nothing new", tools)

    def part_million(self):
        n = self.args.million_messages
        per = n // MILLION_FOLDERS
        total = per * MILLION_FOLDERS
        log("\nIMAP: %d messages in %d folders, mailsync%s" % (total, MILLION_FOLDERS,
                                                              "" if self.args.million_no_peer else " vs mbsync"))
        self.stop_dovecot()
        folders = [("INBOX", per)] + [("f%02d" % i, per) for i in range(1, MILLION_FOLDERS)]
        self.start_dovecot(folders, 0)
        ms, mb = MailsyncImap(self), Mbsync(self)
        ms.slug, mb.slug = "mailsync-million", "mbsync-million"
        ms.dir, mb.dir = os.path.join(self.work, ms.slug), os.path.join(self.work, mb.slug)
        ms.trace_memory = True
        tools = [ms] if self.args.million_no_peer else [ms, mb]
        expect = server_stats(self.dovecot, IMAP_USER)
        conn = self.dovecot.imap(IMAP_USER)
        try:
            self.million_server_folders = len(dovecot.list_mailboxes(conn))
        finally:
            conn.logout()
        self.facts["million account"] = ("%d messages of at most %d bytes in %d folders of %d (the server lists "
                                         "%d folders: Dovecot adds its empty Drafts, Junk, Sent, Trash)"
                                         % (total, MAX_SIZE, MILLION_FOLDERS, per, self.million_server_folders))
        label = "IMAP %s in %d folders" % ("{:,}".format(total), MILLION_FOLDERS)

        def run(key, title, tool):
            m = settled_run(tool)
            check_imap(m, tool, expect)
            self.record(key, "%s: %s" % (label, title), "mbsync", tool, m)
            if m.mem_trace is not None:
                summ = m.mem_trace.summary()
                self.mem.setdefault(key, []).append({"summary": summ, "samples": m.mem_trace.samples})
                if summ:
                    at = summ["at_peak_kib"]
                    log("    memory: peak VmRSS %.1f MiB at %.1f s of %.1f s (anon %.1f, file %.1f, shmem %.1f MiB;"
                        " folders open: %s); largest anon %.1f MiB, largest file %.1f MiB"
                        % (at.get("VmRSS", 0) / 1024, summ["peak_at_s"], summ["duration_s"],
                           at.get("RssAnon", 0) / 1024, at.get("RssFile", 0) / 1024, at.get("RssShmem", 0) / 1024,
                           ", ".join(summ["folders_open_at_peak"]) or "none",
                           summ["largest_kib"]["RssAnon"] / 1024, summ["largest_kib"]["RssFile"] / 1024))

        # Both tools need the state of their own first download before any
        # resync can be measured (mbsync without its .mbsyncstate files
        # would copy every message both ways, see README), so the first
        # download always runs and is measured; --million is the flag that
        # makes this part, and its time, optional, and --million-no-peer
        # leaves out mbsync (whose first download is most of that time).
        for tool in tools:
            tool.reset()
            run("million_first", "first download", tool)
        self.state_size("million", tools, total)
        for tool in tools:  # as in part_imap: the one resync that scans after a download
            run("million_after_first", "first resync after the download", tool)
        for rep in range(self.args.runs):
            for tool in order(tools, rep):
                run("million_nochange", "nothing changed", tool)
        self.state_size("million, after the resyncs", tools, total)

    # -- report -------------------------------------------------------------

    def summary(self):
        out = collections.OrderedDict()
        for key, sc in self.results.items():
            row = collections.OrderedDict([("title", sc["title"]), ("peer", sc["peer"])])
            for tool, ms in sc["runs"].items():
                ok = [m for m in ms if m.ok]
                row[tool] = collections.OrderedDict([
                    ("runs", len(ms)), ("failed", len(ms) - len(ok)),
                    ("wall_s", statistics.median(m.wall for m in ok) if ok else None),
                    ("cpu_s", statistics.median(m.cpu for m in ok) if ok else None),
                    ("peak_rss_mib", max(m.maxrss_kib for m in ms) / 1024.0),
                    ("all_wall_s", [round(m.wall, 4) for m in ms]),
                    ("problems", [problem(m) for m in ms if not m.ok]),
                    ("failed_wall_s", [round(m.wall, 4) for m in ms if not m.ok]),
                    ("inbox_scanned", [getattr(m, "inbox_scanned", None) for m in ms]),
                    ("folders_skipped", [getattr(m, "folders_skipped", None) for m in ms]),
                    ("stall_ms", [m.stall_ms for m in ms]),
                ])
            a, b = row.get("mailsync"), row.get(sc["peer"])
            if a and b and a["wall_s"] and b["wall_s"]:
                row["wall_ratio"] = a["wall_s"] / b["wall_s"]
                row["cpu_ratio"] = a["cpu_s"] / b["cpu_s"] if b["cpu_s"] else None
                row["rss_ratio"] = a["peak_rss_mib"] / b["peak_rss_mib"]
            row["target"] = TARGETS.get(key)
            fl = self.floors.get(key)
            if fl:
                row["server_floor_s"] = statistics.median(fl["seconds"])
                row["server_floor_what"] = fl["what"]
                if b and b["wall_s"]:
                    row["floor_ratio"] = row["server_floor_s"] / b["wall_s"]
            out[key] = row
        return out

    def report(self, summary):
        r = lambda v: "—" if v is None else "%.2f×" % v  # noqa: E731
        lines = ["# mailsync at scale (issue 13)", "",
                 "Ratios are mailsync ÷ peer (lower is better for mailsync); wall and CPU are medians, peak "
                 "RSS the largest run. Warm caches; Dovecot shares the cores.", "",
                 "\"INBOX scanned\": in how many of mailsync's runs it read INBOX's directory and base (the "
                 "others took the change-time shortcut, or read only what a QRESYNC delta named).", "",
                 "\"server floor\": the server's own time for the least any client must ask in that scenario "
                 "(below), as a ratio of the peer's wall time: no client can do better than that ratio on this "
                 "server.", "",
                 "| scenario | mailsync wall | CPU | peak RSS | INBOX scanned | peer | wall | CPU | peak RSS "
                 "| wall ratio | CPU ratio | target | server floor |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, row in summary.items():
            a, b = row.get("mailsync") or {}, row.get(row["peer"]) or {}
            for t, v in (("mailsync", a), (row["peer"], b)):
                if v.get("failed"):
                    self.notes.append("%s, %s: %d of %d runs failed (wall %s): %s" % (
                        row["title"], t, v["failed"], v["runs"], ", ".join("%.2f s" % w for w in v["failed_wall_s"]),
                        "; ".join(v["problems"])))
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                row["title"] + (" (some runs failed: see the notes)" if a.get("failed") or b.get("failed") else ""),
                fmt_s(a.get("wall_s")), fmt_s(a.get("cpu_s")), fmt_mib(a.get("peak_rss_mib")),
                scanned_text(a.get("inbox_scanned", [])),
                row["peer"], fmt_s(b.get("wall_s")), fmt_s(b.get("cpu_s")), fmt_mib(b.get("peak_rss_mib")),
                r(row.get("wall_ratio")), r(row.get("cpu_ratio")),
                "≤ %.1f×" % row["target"] if row.get("target") else "—",
                "%s (%s)" % (fmt_s(row["server_floor_s"]), r(row.get("floor_ratio")))
                if row.get("server_floor_s") is not None else "—"))
        floors = [(row["title"], row["server_floor_what"]) for row in summary.values() if row.get("server_floor_what")]
        if floors:
            lines += ["", "Server floors (commands timed on a connection already logged in; median of 3 per "
                      "round):", ""] + ["- %s: `%s`" % x for x in floors] + [
                "- IMAP resync, 1% changed locally: no floor measured (it would change the flags the next "
                "round starts from); a `-vv` trace shows Dovecot's own times of the SELECT and the STOREs."]
        lines += ["", "## Peak RSS against the targets", ""]
        for part, target in RSS_TARGETS.items():
            rows = [row["mailsync"]["peak_rss_mib"] for k, row in summary.items()
                    if k.startswith(part) and "mailsync" in row]
            if rows:
                lines.append("- %s: mailsync's largest %.1f MiB (target ≤ %d MiB)" % (part, max(rows), target))
        if self.mem:
            lines += ["", "## mailsync's memory in the million runs", "",
                      "Sampled from /proc/PID/status every %.1f s (MemTrace): the sample with the largest VmRSS, "
                      "its parts (anon: heap and stacks; file: mapped files, LMDB's map among them), when it "
                      "came and which Maildir folders the process had files open in then; and the largest "
                      "anon and file figures of the run. GNU time's peak (the table) can be a little higher: "
                      "a sample can miss a short peak." % MemTrace.INTERVAL, "",
                      "| scenario | run | peak VmRSS | anon | file | shmem | at | of | folders open | largest anon "
                      "| largest file | folders not scanned |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for key, runs in self.mem.items():
                title = self.results[key]["title"]
                skipped = [m.folders_skipped for m in self.results[key]["runs"].get("mailsync", [])]
                for i, r in enumerate(runs):
                    su = r["summary"]
                    if su is None:
                        lines.append("| %s | %d | no sample (shorter than the sampling) |  |  |  |  |  |  |  |  "
                                     "|  |" % (title, i + 1))
                        continue
                    at, lg = su["at_peak_kib"], su["largest_kib"]
                    lines.append("| %s | %d | %.1f MiB | %.1f | %.1f | %.1f | %.1f s | %.1f s | %s | %.1f MiB "
                                 "| %.1f MiB | %s |" % (
                                     title, i + 1, at.get("VmRSS", 0) / 1024, at.get("RssAnon", 0) / 1024,
                                     at.get("RssFile", 0) / 1024, at.get("RssShmem", 0) / 1024, su["peak_at_s"],
                                     su["duration_s"], ", ".join(su["folders_open_at_peak"]) or "none",
                                     lg["RssAnon"] / 1024, lg["RssFile"] / 1024,
                                     "%s of %s" % (skipped[i], self.million_server_folders)
                                     if i < len(skipped) and skipped[i] is not None else "—"))
        lines += ["", "## Sync state per message", "", "| part | tool | bytes | bytes per message |",
                  "|---|---|---|---|"]
        for part, tools in self.state.items():
            for tool, s in tools.items():
                lines.append("| %s | %s | %d | %.1f |" % (part, tool, s["bytes"], s["per_message"]))
        lines += ["", "## Instructions of the runs with nothing to do", "",
                  "| scenario | tool | instructions | ratio | INBOX scanned | counted with |",
                  "|---|---|---|---|---|---|"]
        for _key, sc in self.instructions.items():
            tools = sc["tools"]
            base = [v["instructions"] for k, v in tools.items() if k != "mailsync" and v["instructions"]]
            for tool, v in tools.items():
                ratio = ("%.2f×" % (tools["mailsync"]["instructions"] / base[0])
                         if tool == "mailsync" and base and tools["mailsync"]["instructions"] else "")
                scanned = v.get("inbox_scanned")
                lines.append("| %s | %s | %s | %s | %s | %s |" % (
                    sc["title"], tool, "{:,}".format(v["instructions"]) if v["instructions"] else "—", ratio,
                    "—" if scanned is None else "yes" if scanned else "no", v["how"]))
        lines += ["", "## Facts", ""] + ["- %s: %s" % kv for kv in self.facts.items()]
        if self.notes:
            lines += ["", "## Notes", ""] + ["- " + n for n in self.notes]
        return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description="mailsync at scale against mbsync and mpop (issue 13).")
    ap.add_argument("--bin", required=True, help="the mailsync binary (a Release build)")
    ap.add_argument("--scale", action="store_true", help=argparse.SUPPRESS)  # tests/bench/run's switch
    ap.add_argument("--messages", type=int, default=100000, help="IMAP INBOX size (default 100000)")
    ap.add_argument("--pop-messages", type=int, default=20000, help="POP3 mailbox size (default 20000)")
    ap.add_argument("--runs", type=int, default=1, help="measured runs of each resync per tool (default 1; "
                                                        "POP3 nothing new: at least 3)")
    ap.add_argument("--only", choices=("imap", "pop3", "million"),
                    help="run one part only (million: the million-message account alone, implies --million)")
    ap.add_argument("--million", action="store_true", help="add the 1,000,000-message account of 50 folders")
    ap.add_argument("--million-messages", type=int, default=1000000,
                    help="size of the --million account (default 1000000, spread over 50 folders)")
    ap.add_argument("--million-no-peer", action="store_true",
                    help="measure mailsync alone in the million part (mbsync's first download of it takes "
                         "about 40 minutes on the 2-core machine)")
    ap.add_argument("--no-callgrind", action="store_true",
                    help="skip the instruction counts (valgrind takes minutes at 100,000 messages)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "scale.md"))
    args = ap.parse_args(argv)
    if args.only == "million":
        args.million = True
    if args.million and args.million_messages < MILLION_FOLDERS:
        ap.error("--million-messages must be at least %d" % MILLION_FOLDERS)
    if args.messages < 100 or args.pop_messages < 100 or args.runs < 1:
        ap.error("--messages and --pop-messages must be at least 100, --runs at least 1")
    args.bin = os.path.abspath(args.bin)
    bench.RUN_TIMEOUT = 4 * 3600  # a million-message first download is long
    t0 = time.monotonic()
    b = ScaleBench(args)
    f = b.facts
    f["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
    f["nproc"] = str(len(os.sched_getaffinity(0)))
    f["load average at start"] = "%.2f %.2f %.2f" % os.getloadavg()
    f["work directory filesystem"] = bench.fs_type(b.work)
    f["mailsync"] = bench.first_line([args.bin, "--version"])
    f["mbsync"] = bench.first_line(["mbsync", "-v"]) if shutil.which("mbsync") else "not installed"
    f["mpop"] = bench.first_line(["mpop", "--version"]) if shutil.which("mpop") else "not installed"
    f["dovecot"] = bench.first_line(["dovecot", "--version"])
    try:
        if args.only != "million":
            log("Seeding Dovecot ...")
            b.start_dovecot([("INBOX", args.messages)] if args.only in (None, "imap") else [],
                            args.pop_messages if args.only in (None, "pop3") else 0)
        if args.only in (None, "pop3"):
            b.part_pop3()
        if args.only in (None, "imap"):
            b.part_imap()
        if args.million and args.only != "pop3":
            b.part_million()
    finally:
        b.stop_dovecot()
        if args.keep:
            log("keeping %s" % b.work)
        else:
            shutil.rmtree(b.work, ignore_errors=True)
    f["load average at end"] = "%.2f %.2f %.2f" % os.getloadavg()
    f["benchmark duration"] = "%.0f s" % (time.monotonic() - t0)
    summary = b.summary()
    text = b.report(summary)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fp:
        fp.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fp:
        json.dump({"facts": b.facts, "args": {k: v for k, v in vars(args).items() if k != "bin"},
                   "scenarios": summary, "state": b.state, "instructions": b.instructions, "notes": b.notes,
                   "memory": b.mem, "server_floors": b.floors},
                  fp, indent=1)
    print("\n" + text)
    print("(written to %s)" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
