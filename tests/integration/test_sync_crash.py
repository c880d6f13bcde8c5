#!/usr/bin/env python3
"""Crash safety of the IMAP sync engine (issue 4): `mailsync sync` is
killed with SIGKILL at many moments while it downloads a corpus of a few
thousand messages, uploads several hundred local ones (written as a mail
client writes them) and carries flag changes both ways, then run to
completion. Afterwards both sides must hold every message exactly once
(no loss, no duplicates, counted by body and by Message-ID) in its folder,
with the same flags, and a further run must have nothing to do.

How the kills are placed. One uncut run over a fifth of the corpus (a
second Dovecot user and a copy of every fifth local file) is traced with
-vv and timed: how long connecting takes on this machine, and how long
downloading and uploading the whole corpus would (an ASan build on a
loaded CI box is many times slower than a release build on a laptop).
Each kill round then waits for an anchor in the protocol trace of the run
it kills and kills at a random delay after it: the process start (kills
while connecting and listing), the first body FETCH or APPEND (the
transfer rounds: the delays are drawn so that the kills walk across the
downloads and uploads of the whole corpus in order, whatever reconnecting
costs), then an APPEND, a STORE, the n-th SELECT, LOGOUT and the CREATE of
a folder made locally half-way (rounds that mostly carry flag changes and
folder state). Between rounds the test delivers new messages and changes
flags on both sides, as a user and other clients would. Where each kill
landed is read from the trace, per connection (the engine may use several:
imap a, imap a#2): the oldest command not yet answered, or the last
answered one. The kills must cover connect/LIST, downloads, uploads and
the flag/state work, and at least 15 runs must have been killed.

Flags are kept free of conflicts so that the expected result is exact:
every message has one owner side (from its body hash), and only that side
ever changes its flags. So besides "both sides agree", the test checks
that they agree on the owner's last change ("flags reverted" when not).

Everything is seeded: a failure prints the seed and the table of anchors,
delays and landing phases (the landing itself depends on timing, so a
seed reproduces the schedule, not always the exact failure).
MAILSYNC_CRASH_SEED=N runs another seed; MAILSYNC_KEEP_TMP=1 keeps the
Maildir, the index and every round's trace.

The scenario runs against a full Dovecot and against one without UIDPLUS
(no APPENDUID: uploads are found again by Message-ID, size and header
hash). test_flags_pushed_by_a_killed_run_then_reverted is a deterministic
reproducer of the failure the random rounds find most often."""

import collections
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import dovecot
import mailgen
import mstest
from synctest import LETTER

SERVER_FOLDERS = ["INBOX", "Archive/2023", "Lists/dev"]
# A folder the user makes locally half-way through (before the first flag
# round), with mail filed into it: the engine CREATEs it on the server.
# Made late on purpose: folders are synced INBOX first, then by name, so a
# kill timed from the CREATE in an early round would let all of INBOX go
# through uncut.
LOCAL_ONLY = "Archive/2022"
N_LOCAL_ONLY = 80

# Users known to Dovecot from the start (adding one later waits for Dovecot
# to re-read its passwd file).
USER = "crash"
CAL_USER = "crashcal"
REVERT_USER = "revert"
USERS = {USER: "pw-crash", CAL_USER: "pw-crashcal", REVERT_USER: "pw-revert"}
# The calibration run syncs this share of the corpus.
CAL_SHARE = 5

N_TRANSFER = 11  # kill rounds that walk across the downloads and uploads

N_SERVER = 2300
N_SERVER_LARGE = 12  # a few larger ones, so some bodies span several reads
N_LOCAL = {"INBOX": 200, "Archive/2023": 70, "Lists/dev": 70}
MAX_SIZE = 4000
LARGE_SIZE = 120000
NEW_PER_ROUND = 6  # new messages per side before a round with changes
FLAG_CHANGES = 25  # flag changes per side before a round with changes

IMAP_FLAG = {v: k for k, v in LETTER.items()}
CHANGE_LETTERS = "FPRS"

NOTHING_TO_DO = "a: \u2193 0 new, 0 flags, 0 deleted; \u2191 0 new, 0 flags, 0 deleted"


def letters_of(flags):
    """IMAP flags -> sorted Maildir letters; unknown keywords are kept as
    {name} so that a stray one shows up in a comparison."""
    out = []
    for f in flags:
        if f in LETTER:
            out.append(LETTER[f])
        elif f != "\\Recent":
            out.append("{%s}" % f)
    return "".join(sorted(out))


def body_hash(lf_bytes):
    return hashlib.sha256(lf_bytes).hexdigest()


def message_id(data):
    head = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    m = re.search(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", head, re.M | re.I)
    return m.group(1).decode("ascii", "replace") if m else None


def folder_dir(root, folder):
    return os.path.join(root, *folder.split("/"))


def scan_local(root):
    """[(folder, path, unique, letters, lf_bytes)] of every message in the
    Maildir tree at root (verbatim layout)."""
    out = []
    for rel in mstest.maildir_folders(root):
        if rel == ".":
            continue
        folder = rel.replace(os.sep, "/")
        for sub in ("new", "cur"):
            d = os.path.join(root, rel, sub)
            for name in os.listdir(d):
                if name.startswith("."):
                    continue
                unique, _, info = name.partition(":2,")
                path = os.path.join(d, name)
                with open(path, "rb") as f:
                    data = f.read()
                letters = "".join(sorted(info)) if sub == "cur" else ""
                out.append((folder, path, unique, letters, data))
    return out


def write_import_file(root, folder, msg, letters, n):
    """One message for `doveadm import` from the Maildir++ tree at root
    (INBOX at the top, other folders as .A.B), with flags as letters."""
    d = os.path.join(root, "" if folder == "INBOX" else "." + folder.replace("/", "."))
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    with open(os.path.join(d, "cur", "1600000000.M%dP1.seed:2,%s" % (n, letters)), "wb") as f:
        f.write(mstest.crlf_to_lf(msg))


def tmp_leftovers(root):
    n = 0
    for rel in mstest.maildir_folders(root):
        d = os.path.join(root, rel, "tmp")
        if os.path.isdir(d):
            n += len(os.listdir(d))
    return n


# ---------------------------------------------------------------------------
# Where in the sync a run is, from its -vv protocol trace.

# The engine may use several connections ("lanes": imap a, imap a#2, ...),
# each with its own tags.
_CMD = re.compile(rb"^trace: imap (\S+): C: (A\d+) (.*?)\r?$")
_TAGGED = re.compile(rb"^trace: imap (\S+): S: (A\d+) (?:OK|NO|BAD)\b")

# Kill anchors: trace lines of the commands a kill is timed from.
ANCHORS = {
    "transfer": rb"C: A\d+ (?:UID FETCH .*BODY\.PEEK\[\]|APPEND )",
    "APPEND": rb"C: A\d+ APPEND ",
    "CREATE": rb"C: A\d+ CREATE ",
    "STORE": rb"C: A\d+ UID STORE ",
    "LOGOUT": rb"C: A\d+ LOGOUT",
    "SELECT": rb"C: A\d+ SELECT ",
}

# Phase -> the group of the list a kill there counts for:
# connect/LIST, downloads, uploads, and the flag and state work around
# them (listing and planning, STOREs and local renames, the folder's state
# written after its last upload, LOGOUT).
GROUPS = {
    "startup": "connect",
    "connect/LIST": "connect",
    "after connect/LIST": "connect",
    "download": "download",
    "after download": "download",
    "create": "upload",
    "after create": "upload",
    "upload": "upload",
    "upload recovery": "upload",
    "after upload recovery": "upload",
    "finished": "none",
}


def groups_of(phase):
    """The groups of a phase as Tracer.phase gives it (lanes joined by " | ")."""
    return {GROUPS.get(p, "flags/state") for p in phase.split(" | ")}


def _command_phase(cmd, previous):
    verb = cmd.split(b" ", 2)
    word = verb[0].upper()
    if word == b"UID" and len(verb) > 1:
        word = b"UID " + verb[1].upper()
    if word in (b"SELECT", b"EXAMINE"):
        return "select/listing"
    if word == b"UID FETCH":
        if re.search(rb"BODY\.PEEK\[\]", cmd):
            return "download"
        # Without APPENDUID the engine looks for the new UIDs right after
        # its APPENDs: that is still the upload.
        return "upload" if previous == "upload" else "select/listing"
    if word in (b"APPEND",):
        return "upload"
    if word in (b"UID STORE", b"STORE"):
        return "flags"
    if word == b"CREATE":
        return "create"
    if word == b"LOGOUT":
        return "logout"
    if word in (b"UID SEARCH", b"SEARCH"):
        # A search by header looks for the messages of upload intents that
        # a killed run left (was the APPEND done?).
        if b" HEADER " in cmd.upper():
            return "upload recovery"
        return previous or "select/listing"
    return "connect/LIST"


class Tracer:
    """Follows a run's trace line by line. A connection's phase is the
    phase of its oldest command still unanswered, or "after X" when every
    command it sent has been answered (the engine is working locally: scan,
    plan, renames, index commits). The run's phase joins those of its
    connections with " | " (a connection that logged out is left out while
    another one works)."""

    def __init__(self):
        self.lanes = collections.OrderedDict()  # name -> [outstanding, last]
        self.last_line = b""

    def feed(self, line):
        self.last_line = line
        m = _CMD.match(line)
        if m:
            lane = self.lanes.setdefault(m.group(1), [collections.OrderedDict(), None])
            ph = _command_phase(m.group(3), lane[1])
            lane[0][m.group(2)] = ph
            lane[1] = ph
            return
        m = _TAGGED.match(line)
        if m and m.group(1) in self.lanes:
            self.lanes[m.group(1)][0].pop(m.group(2), None)

    @property
    def phase(self):
        if not self.lanes:
            return "startup" if not self.last_line else "connect/LIST"
        phases = []
        for outstanding, last in self.lanes.values():
            ph = next(iter(outstanding.values())) if outstanding else "after " + last
            if ph not in phases:
                phases.append(ph)
        if len(phases) > 1 and "after logout" in phases:
            phases.remove("after logout")
        return " | ".join(phases)


class TracedRun:
    """One `mailsync -vv sync a` with its trace read live, timestamped and
    written to log_path; killed at `delay` seconds after the nth line that
    matches anchor (None: after the start; "never": not at all)."""

    def __init__(self, binary, cfg, log_path):
        self.binary = binary
        self.cfg = cfg
        self.log_path = log_path
        self.transitions = []  # (seconds since start, phase)

    def run(self, anchor=None, nth=1, delay=0.0, timeout=300):
        anchor_re = re.compile(anchor) if anchor not in (None, "never") else None
        tracer = Tracer()
        anchored = threading.Event()
        state = {"seen": 0, "anchor_t": None}
        with open(self.log_path, "wb") as log:
            t0 = time.monotonic()
            p = subprocess.Popen([self.binary, "-vv", "--config", self.cfg, "sync", "a"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

            def reader():
                last_phase = None
                for line in p.stdout:
                    t = time.monotonic()
                    log.write(b"%.4f " % (t - t0) + line)
                    tracer.feed(line.rstrip(b"\n"))
                    ph = tracer.phase
                    if ph != last_phase:
                        self.transitions.append((t - t0, ph))
                        last_phase = ph
                    if (anchor_re is not None and state["anchor_t"] is None
                            and anchor_re.search(line)):
                        state["seen"] += 1
                        if state["seen"] >= nth:
                            state["anchor_t"] = t
                            anchored.set()
                anchored.set()

            th = threading.Thread(target=reader, daemon=True)
            th.start()
            killed = False
            if anchor != "never":
                if anchor_re is None:
                    target = t0 + delay
                else:
                    anchored.wait(timeout)
                    target = (state["anchor_t"] or time.monotonic()) + delay
                while p.poll() is None and time.monotonic() < target:
                    time.sleep(min(0.002, max(0.0, target - time.monotonic())))
                if p.poll() is None:
                    p.kill()
                    killed = True
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
                raise AssertionError("mailsync sync hung for %ds; trace in %s"
                                     % (timeout, self.log_path))
            th.join(30)
            p.stdout.close()
            self.elapsed = time.monotonic() - t0
        self.killed = killed
        self.returncode = rc
        self.phase = tracer.phase if killed else "finished"
        self.last_line = tracer.last_line.decode("utf-8", "replace")[:120]
        return self


class TransferDelay:
    """A transfer round's delay, as a fraction of a window known only just
    before the round (CrashScenario.transfer_window)."""

    def __init__(self, fraction):
        self.fraction = fraction


# ---------------------------------------------------------------------------


class CrashScenario:
    seed = 4242

    def setUp(self):
        super().setUp()
        env_seed = os.environ.get("MAILSYNC_CRASH_SEED")
        self.seed_used = int(env_seed) if env_seed else self.seed
        self.rng = random.Random(self.seed_used)
        self.binary = mstest.mailsync_bin()
        if self.binary is None:
            raise unittest.SkipTest("no mailsync binary")
        self.user = USER
        self.maildir = os.path.join(self.tmp, "Mail")
        self.expect = {}  # body hash -> dict(folder, letters, msgid, owner, origin)
        self.log = []  # one row per round, for the report
        self.timing = collections.OrderedDict()
        self.msg_seq = 0
        self.local_folders = list(SERVER_FOLDERS)
        self._server_seen = {}
        self._server_mids = {}
        self._local_hashes = {}

    # -- the model ------------------------------------------------------

    def _add_expected(self, data, folder, letters, origin):
        lf = mstest.crlf_to_lf(data)
        h = body_hash(lf)
        if h in self.expect:
            raise AssertionError("generated corpus holds the same message twice (%s)" % origin)
        mid = message_id(lf)
        letters = "".join(sorted(letters))
        self.expect[h] = {
            "folder": folder,
            "letters": letters,
            "msgid": mid,
            "owner": "server" if int(h[:2], 16) % 2 == 0 else "local",
            "origin": origin,
            "history": ["%s '%s'" % (origin, letters)],
        }
        return h

    def _random_letters(self, pool="FRS"):
        return "".join(sorted(c for c in pool if self.rng.random() < 0.35))

    def _new_messages(self, n, max_size=MAX_SIZE):
        self.msg_seq += 1
        seed = self.seed_used * 1000 + 100 + self.msg_seq
        return mailgen.generate(n, seed=seed, max_size=max_size)

    # -- seeding --------------------------------------------------------

    def seed_server_source(self):
        """The server corpus as Maildir++ trees for `doveadm import`
        (thousands of APPENDs over IMAP take many seconds; one import takes
        a fraction of one): the whole corpus, and every CAL_SHARE-th
        message for the calibration user. Returns both paths."""
        top = self.import_top()
        src, cal_src = os.path.join(top, "all"), os.path.join(top, "cal")
        corpus = mailgen.corpus(N_SERVER, seed=self.seed_used, folders=SERVER_FOLDERS,
                                max_size=MAX_SIZE)
        large = mailgen.generate(N_SERVER_LARGE, seed=self.seed_used + 7, max_size=LARGE_SIZE)
        for i, m in enumerate(large):
            corpus[SERVER_FOLDERS[i % len(SERVER_FOLDERS)]].append(m)
        n = 0
        for folder, msgs in corpus.items():
            for m in msgs:
                n += 1
                letters = self._random_letters()
                self._add_expected(m, folder, letters, "server seed")
                for root in (src, cal_src) if n % CAL_SHARE == 0 else (src,):
                    write_import_file(root, folder, m, letters, n)
        self.server_counts = {f: len(m) for f, m in corpus.items()}
        return src, cal_src

    def import_top(self):
        """A directory for import trees, removed at the end of the test."""
        top = tempfile.mkdtemp(prefix="mailsync-crash-seed-")
        self.addCleanup(shutil.rmtree, top, True)
        os.chmod(top, 0o755)
        return top

    def import_server(self, user, src):
        """doveadm import of a tree written with write_import_file; returns
        the number of messages added per folder, checked against the tree."""
        if os.geteuid() == 0:
            # Dovecot's mail processes run as nobody when we are root.
            for dirpath, _dirs, files in os.walk(src):
                os.chown(dirpath, dovecot.MAIL_UID, dovecot.MAIL_UID)
                for f in files:
                    os.chown(os.path.join(dirpath, f), dovecot.MAIL_UID, dovecot.MAIL_UID)
        before = self.dovecot.counts(user)
        self.dovecot.doveadm("import", "-s", "-u", user, "maildir:" + src, "", "all")
        after = self.dovecot.counts(user)
        expected = collections.Counter()
        for dirpath, _dirs, files in os.walk(src):
            if os.path.basename(dirpath) == "cur":
                rel = os.path.relpath(os.path.dirname(dirpath), src)
                expected["INBOX" if rel == "." else rel[1:].replace(".", "/")] += len(files)
        for f, n in expected.items():
            self.assertEqual(after.get(f, 0) - before.get(f, 0), n,
                             "doveadm import into %s/%s: %s -> %s" % (user, f, before, after))
        return dict(expected)

    def deliver_local(self, root, folder, data, letters, unique):
        """Writes like a mail client: tmp/, then rename into new/ (no flags)
        or cur/ with :2,FLAGS."""
        d = folder_dir(root, folder)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        tmp = os.path.join(d, "tmp", unique)
        with open(tmp, "wb") as f:
            f.write(mstest.crlf_to_lf(data))
        if letters is None:
            os.rename(tmp, os.path.join(d, "new", unique))
        else:
            os.rename(tmp, os.path.join(d, "cur", unique + ":2," + letters))

    def seed_local(self):
        total = sum(N_LOCAL.values())
        msgs = mailgen.generate(total, seed=self.seed_used + 1, max_size=MAX_SIZE)
        i = 0
        for folder, n in N_LOCAL.items():
            for _ in range(n):
                letters = None if self.rng.random() < 0.4 else self._random_letters(CHANGE_LETTERS)
                self._add_expected(msgs[i], folder, letters or "", "local seed")
                self.deliver_local(self.maildir, folder, msgs[i], letters,
                                   "1700000000.M%dP2.client" % i)
                i += 1

    # -- changes between rounds -----------------------------------------

    def server_view(self, conn):
        """Message-ID -> (folder, uid) of every server message that has a
        Message-ID. Nothing is ever expunged here, so only UIDs above those
        seen last time are fetched."""
        for _attrs, folder in dovecot.list_mailboxes(conn):
            seen = self._server_seen.setdefault(folder, 0)
            typ, data = conn.select(dovecot.imap_mailbox(folder), readonly=True)
            if typ != "OK" or int(data[0]) == 0:
                continue
            typ, data = conn.uid("FETCH", "%d:*" % (seen + 1),
                                 "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            self.assertEqual(typ, "OK", data)
            for m in dovecot.parse_fetch(data):
                # n:* always includes the highest UID, even below n.
                if m["uid"] is None or m["uid"] <= seen:
                    continue
                self._server_seen[folder] = max(self._server_seen[folder], m["uid"])
                mid = message_id(m["body"] or b"")
                if mid is not None:
                    self._server_mids.setdefault(mid, (folder, m["uid"]))
        return self._server_mids

    def local_view(self):
        """[(folder, path, unique, body hash)] of the local messages; a
        Maildir file's content never changes, so each is hashed once."""
        out = []
        for rel in mstest.maildir_folders(self.maildir):
            folder = rel.replace(os.sep, "/")
            for sub in ("new", "cur"):
                d = os.path.join(self.maildir, rel, sub)
                for name in os.listdir(d):
                    if name.startswith("."):
                        continue
                    unique = name.partition(":2,")[0]
                    path = os.path.join(d, name)
                    h = self._local_hashes.get((folder, unique))
                    if h is None:
                        with open(path, "rb") as f:
                            h = self._local_hashes[(folder, unique)] = body_hash(f.read())
                    out.append((folder, path, unique, h))
        return out

    def make_local_folder(self, rnd):
        """The user makes a new folder and files mail into it."""
        for k, m in enumerate(self._new_messages(N_LOCAL_ONLY)):
            letters = None if self.rng.random() < 0.4 else self._random_letters(CHANGE_LETTERS)
            self._add_expected(m, LOCAL_ONLY, letters or "", "local folder, round %d" % rnd)
            self.deliver_local(self.maildir, LOCAL_ONLY, m, letters,
                               "18%08d.M%dP4.client" % (rnd, k))
        self.local_folders.append(LOCAL_ONLY)

    def make_changes(self, rnd):
        """New mail on both sides and flag changes on both sides, each by
        the side that owns the message's flags."""
        rng = self.rng
        conn = self.dovecot.imap(self.user)
        try:
            # New on the server (folders that exist there).
            on_server = [f for _a, f in dovecot.list_mailboxes(conn) if f in self.local_folders]
            for m in self._new_messages(NEW_PER_ROUND):
                folder = rng.choice(on_server)
                letters = self._random_letters()
                self._add_expected(m, folder, letters, "server round %d" % rnd)
                flags = " ".join(IMAP_FLAG[c] for c in letters)
                self.dovecot.save_many(self.user, folder, [m], flags, conn=conn)
            # New locally.
            for k, m in enumerate(self._new_messages(NEW_PER_ROUND)):
                folder = rng.choice(self.local_folders)
                letters = None if rng.random() < 0.5 else self._random_letters(CHANGE_LETTERS)
                self._add_expected(m, folder, letters or "", "local round %d" % rnd)
                self.deliver_local(self.maildir, folder, m, letters,
                                   "17%08d.M%dP3.client" % (rnd, k))
            # Server-side flag changes on server-owned messages.
            view = self.server_view(conn)
            by_mid = {e["msgid"]: h for h, e in self.expect.items()
                      if e["msgid"] and e["owner"] == "server"}
            cands = sorted(mid for mid in view if mid in by_mid)
            picks = rng.sample(cands, min(FLAG_CHANGES, len(cands)))
            picks.sort(key=lambda mid: view[mid][0])
            selected = None
            for mid in picks:
                folder, uid = view[mid]
                e = self.expect[by_mid[mid]]
                new = self._changed_letters(e["letters"])
                if selected != folder:
                    conn.select(dovecot.imap_mailbox(folder))
                    selected = folder
                flags = " ".join(IMAP_FLAG[c] for c in new)
                typ, data = conn.uid("STORE", str(uid), "FLAGS.SILENT", "(%s)" % flags)
                self.assertEqual(typ, "OK", data)
                e["history"].append("round %d: server uid %d '%s'" % (rnd, uid, new))
                e["letters"] = new
        finally:
            conn.logout()
        # Local flag changes on local-owned messages, and files a client
        # moves from new/ to cur/ without changing a flag (not a change).
        local = self.local_view()
        cands = sorted((path, unique, folder, h) for folder, path, unique, h in local
                       if self.expect.get(h, {}).get("owner") == "local")
        for path, unique, folder, h in rng.sample(cands, min(FLAG_CHANGES, len(cands))):
            e = self.expect[h]
            new = self._changed_letters(e["letters"])
            cur = os.path.join(folder_dir(self.maildir, folder), "cur")
            os.rename(path, os.path.join(cur, unique + ":2," + new))
            e["history"].append("round %d: local %s '%s'" % (rnd, unique, new))
            e["letters"] = new
        news = sorted(path for _f, path, _u, _h in local
                      if os.path.basename(os.path.dirname(path)) == "new")
        for path in rng.sample(news, min(10, len(news))):
            if os.path.exists(path):
                d = os.path.dirname(os.path.dirname(path))
                os.rename(path, os.path.join(d, "cur", os.path.basename(path) + ":2,"))

    def _changed_letters(self, old):
        while True:
            new = "".join(sorted(c for c in CHANGE_LETTERS if self.rng.random() < 0.4))
            if new != old:
                return new

    # -- calibration and schedule ---------------------------------------

    def calibrate(self, cal_src):
        """An uncut, traced run over one CAL_SHARE-th of the corpus (a
        second Dovecot user and a copy of every CAL_SHARE-th local file):
        how long connecting takes here, and downloading and uploading the
        whole corpus would take, scaled from the per-message times. A
        full-size copy would cost thousands more files to write and delete
        for little more precision."""
        n_down = sum(self.import_server(CAL_USER, cal_src).values())
        root = os.path.join(self.tmp, "cal")
        n_up = 0
        for i, (_f, path, _u, _l, _d) in enumerate(sorted(scan_local(self.maildir))):
            if i % CAL_SHARE == 0:
                rel = os.path.relpath(path, self.maildir)
                os.makedirs(os.path.dirname(os.path.join(root, "Mail", rel)), exist_ok=True)
                shutil.copyfile(path, os.path.join(root, "Mail", rel))
                n_up += 1
        cfg = os.path.join(root, "config.yaml")
        dovecot.write_mailsync_config(
            cfg, {"a": self.imap_account(maildir=os.path.join(root, "Mail"), user=CAL_USER)},
            state_dir=os.path.join(root, "state"))
        run = TracedRun(self.binary, cfg, os.path.join(root, "uncut.log")).run(anchor="never")
        self.assertEqual(run.returncode, 0, "uncut calibration run failed; see %s" % run.log_path)
        spans = collections.Counter()
        tr = run.transitions + [(run.elapsed, "end")]
        for (t, ph), (t2, _n) in zip(tr, tr[1:]):
            for g in groups_of(ph):
                spans[g] += t2 - t
        first_select = next((t for t, ph in run.transitions if "select/listing" in ph),
                            run.elapsed)
        cal = {"sample run": run.elapsed, "connect": first_select,
               "download per message": spans["download"] / max(1, n_down),
               "upload per message": spans["upload"] / max(1, n_up)}
        print("calibration over %d+%d messages (s): %s"
              % (n_down, n_up, ", ".join("%s %.4f" % kv for kv in cal.items())), file=sys.stderr)
        return cal

    def schedule(self, cal):
        """The kill rounds: (label, anchor, nth, delay, what to change
        before the round: None, "changes" or "folder").

        First a few kills while connecting. Then the transfer rounds: each
        is timed from the first body FETCH or APPEND of its run, so that
        whatever the reconnection costs, the kills walk in order across
        the downloads and uploads of the uncut run (INBOX down, INBOX up,
        the next folder...), about one share of the transfer time still to
        do apart, landing in each phase about as often as it takes time.
        Then the rounds that mostly carry flag changes, state and small
        transfers, timed from the commands of those phases."""
        rng = self.rng
        start = ("start", None, 1)
        # Within the first half of the calibrated connect time: a run that
        # connects a little faster than the calibration run must still be
        # killed before its first SELECT.
        rounds = [start + (rng.uniform(0, 0.5 * cal["connect"]), None) for _ in range(2)]
        # A transfer round's delay is a fraction (drawn now) of a window
        # computed just before the round from the work left (see
        # transfer_window), so the walk neither stops short nor runs out
        # of work early.
        for i in range(N_TRANSFER):
            rounds.append(("transfer", ANCHORS["transfer"], 1, TransferDelay(rng.random()),
                           "changes" if i % 4 == 3 else None))
        flag_rounds = [
            ("APPEND", ANCHORS["APPEND"], 1, rng.uniform(0, 0.03)),
            ("APPEND", ANCHORS["APPEND"], rng.randint(2, 5), rng.uniform(0, 0.01)),
            ("STORE", ANCHORS["STORE"], 1, rng.uniform(0, 0.02)),
            ("STORE", ANCHORS["STORE"], 1, rng.uniform(0, 0.02)),
            ("LOGOUT", ANCHORS["LOGOUT"], 1, rng.uniform(0, 0.005)),
            # Only folders that changed are selected: a few each round.
            ("SELECT", ANCHORS["SELECT"], rng.randint(1, 3), rng.uniform(0, 0.03)),
            ("SELECT", ANCHORS["SELECT"], rng.randint(1, 3), rng.uniform(0, 0.03)),
        ]
        rng.shuffle(flag_rounds)
        # The new local folder, with its CREATE killed, opens the flag rounds.
        rounds.append(("CREATE", ANCHORS["CREATE"], 1, rng.uniform(0, 0.01), "folder"))
        rounds += [r + ("changes",) for r in flag_rounds]
        return rounds

    def transfer_window(self, cal, rounds_left):
        """The delay window of a transfer round: 1.6 times the calibrated
        time of the transfers still to do (messages missing on either
        side) shared among the transfer rounds left, so each round moves
        the walk on by a bit less than its share on average."""
        local = sum(1 for _ in self.local_view())
        conn = self.dovecot.imap(self.user)
        try:
            server = 0
            for _attrs, folder in dovecot.list_mailboxes(conn):
                typ, data = conn.status(dovecot.imap_mailbox(folder), "(MESSAGES)")
                server += int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))
        finally:
            conn.logout()
        left = (max(0, len(self.expect) - local) * cal["download per message"]
                + max(0, len(self.expect) - server) * cal["upload per message"])
        return max(0.01, 1.6 * left / rounds_left)

    # -- the check ------------------------------------------------------

    def check_both_sides(self):
        """Problems found, as readable lines, in three lists: "messages"
        (a message missing, twice, in the wrong folder, or one that is not
        in the corpus), "flags differ" (the two sides disagree) and "flags
        reverted" (both sides agree, but not on the last change made on
        the side that owns the message's flags)."""
        problems = {"messages": [], "flags differ": [], "flags reverted": []}
        where = collections.defaultdict(lambda: {"server": [], "local": []})
        msgids = {"server": collections.Counter(), "local": collections.Counter()}
        conn = self.dovecot.imap(self.user)
        try:
            for _attrs, folder in dovecot.list_mailboxes(conn):
                for uid, flags, body in self.dovecot.fetch_all(self.user, folder, conn=conn):
                    lf = mstest.crlf_to_lf(body)
                    where[body_hash(lf)]["server"].append(
                        (folder, "uid %d" % uid, letters_of(flags)))
                    mid = message_id(lf)
                    if mid:
                        msgids["server"][(folder, mid)] += 1
        finally:
            conn.logout()
        for folder, path, _u, letters, data in scan_local(self.maildir):
            where[body_hash(data)]["local"].append(
                (folder, os.path.relpath(path, self.maildir), letters))
            mid = message_id(data)
            if mid:
                msgids["local"][(folder, mid)] += 1

        def describe(e):
            return "%s (%s, in %s)" % (e["msgid"] or "no Message-ID", e["origin"], e["folder"])

        msg = problems["messages"]
        ordered = sorted(self.expect.items(),
                         key=lambda kv: (kv[1]["folder"], kv[1]["msgid"] or ""))
        for h, e in ordered:
            for side in ("server", "local"):
                copies = where[h][side]
                if len(copies) != 1:
                    msg.append("%s: %d copies of %s: %s" % (side, len(copies), describe(e), copies))
                elif copies[0][0] != e["folder"]:
                    msg.append("%s: %s is in %s (%s)"
                               % (side, describe(e), copies[0][0], copies[0][1]))
            if len(where[h]["server"]) != 1 or len(where[h]["local"]) != 1:
                continue
            (_f, uid, srv), (_f2, path, loc) = where[h]["server"][0], where[h]["local"][0]
            history = "flags changed only on the %s side: %s" % (e["owner"],
                                                                 "; ".join(e["history"]))
            if srv != loc:
                problems["flags differ"].append(
                    "%s: server '%s' (%s), local '%s' (%s), expected '%s'; %s"
                    % (describe(e), srv, uid, loc, path, e["letters"], history))
            elif srv != e["letters"]:
                problems["flags reverted"].append(
                    "%s: both sides '%s' (%s, %s), but the last change was to '%s'; %s"
                    % (describe(e), srv, uid, path, e["letters"], history))
        for h, sides in where.items():
            if h not in self.expect:
                for side in ("server", "local"):
                    for folder, ident, _l in sides[side]:
                        msg.append("%s: unexpected message in %s (%s): not in the corpus (a "
                                   "partial or altered copy?)" % (side, folder, ident))
        for side, counter in msgids.items():
            for (folder, mid), n in sorted(counter.items()):
                if n > 1:
                    msg.append("%s: Message-ID %s appears %d times in %s" % (side, mid, n, folder))
        return problems

    def report(self, title, problems=()):
        rows = ["%s (seed %d: MAILSYNC_CRASH_SEED=%d gives this schedule again; "
                "MAILSYNC_KEEP_TMP=1 keeps the traces, Maildir and index in %s)"
                % (title, self.seed_used, self.seed_used, self.tmp)]
        rows.append("round anchor      nth  delay(s)  changes  landed in            "
                    "last trace line")
        for r in self.log:
            rows.append("%5d %-11s %3d  %8.4f  %-7s  %-20s %s" % r)
        rows.append("times (s): %s" % ", ".join("%s %.1f" % kv for kv in self.timing.items()))
        if problems:
            more = ", first 60" if len(problems) > 60 else ""
            rows.append("%d problem(s)%s:" % (len(problems), more))
            rows += ["  " + p for p in problems[:60]]
        return "\n".join(rows)

    # -- the test -------------------------------------------------------

    def test_kill9_at_random_points(self):
        t_start = time.monotonic()
        src, cal_src = self.seed_server_source()
        self.assertEqual(self.import_server(self.user, src), self.server_counts)
        self.seed_local()
        self.timing["seed"] = time.monotonic() - t_start
        cal = self.calibrate(cal_src)
        self.timing["calibrate"] = time.monotonic() - t_start - self.timing["seed"]

        cfg = self.write_config({"a": self.imap_account(user=self.user)})
        rounds_dir = os.path.join(self.tmp, "rounds")
        os.makedirs(rounds_dir)
        t_rounds = time.monotonic()
        schedule = self.schedule(cal)
        for i, (label, anchor, nth, delay, changes) in enumerate(schedule):
            if changes:
                t_c = time.monotonic()
                if changes == "folder":
                    self.make_local_folder(i)
                self.make_changes(i)
                self.timing["changes"] = self.timing.get("changes", 0) + time.monotonic() - t_c
            if isinstance(delay, TransferDelay):
                left = sum(1 for r in schedule[i:] if isinstance(r[3], TransferDelay))
                delay = delay.fraction * self.transfer_window(cal, left)
            run = TracedRun(self.binary, cfg, os.path.join(rounds_dir, "%02d.log" % i))
            run.run(anchor=anchor, nth=nth, delay=delay)
            self.log.append((i, label, nth, delay, changes or "", run.phase, run.last_line))
            if not run.killed and run.returncode != 0:
                self.fail(self.report("round %d finished by itself with exit %d (see %s)"
                                      % (i, run.returncode, run.log_path)))
        self.timing["kill rounds"] = time.monotonic() - t_rounds

        kills = [r for r in self.log if r[5] != "finished"]
        groups = collections.Counter(g for r in kills for g in groups_of(r[5]))
        print(self.report("kill rounds done"), file=sys.stderr)
        print("kills by phase group: %s" % dict(groups), file=sys.stderr)
        self.assertGreaterEqual(len(kills), 15, self.report("too few runs were killed"))
        for g in ("connect", "download", "upload", "flags/state"):
            self.assertGreater(groups[g], 0, self.report("no kill landed in the %s phase" % g))

        # Run to completion, then compare both sides message by message.
        t_final = time.monotonic()
        p = mstest.run_mailsync(cfg, "sync", "a")
        self.assertEqual(p.returncode, 0, self.report("the run after the kills failed:\n%s%s"
                                                      % (p.stdout, p.stderr)))
        print("completing run: %s" % p.stdout.strip(), file=sys.stderr)
        self.timing["completing run"] = time.monotonic() - t_final
        problems = self.check_both_sides()
        self.timing["check"] = time.monotonic() - t_final - self.timing["completing run"]
        leftovers = tmp_leftovers(self.maildir)
        # Each check is its own subtest, so that one failing does not hide
        # the others.
        checks = [
            ("messages", "every message exactly once on each side, in its folder (by body and by "
                         "Message-ID)"),
            ("flags differ", "the same flags on both sides"),
            ("flags reverted", "the last flag change made on a message's owner side is kept"),
        ]
        for key, what in checks:
            with self.subTest(check=key):
                if problems[key]:
                    self.fail(self.report("after the kills, not %s" % what, problems[key]))
        with self.subTest(check="nothing left to do"):
            p = mstest.run_mailsync(cfg, "sync", "a")
            self.assertEqual(p.returncode, 0,
                             self.report("the further run failed:\n%s%s" % (p.stdout, p.stderr)))
            self.assertEqual(p.stdout.strip(), NOTHING_TO_DO,
                             self.report("the further run still had work to do"))
        self.timing["final"] = time.monotonic() - t_final
        self.timing["total"] = time.monotonic() - t_start
        times = ", ".join("%s %.1f" % kv for kv in self.timing.items())
        print("%d messages checked on both sides; %d file(s) left in tmp/; times (s): %s"
              % (len(self.expect), leftovers, times), file=sys.stderr)


# Dovecot's own fsyncs only slow the server down here: it is the client
# that gets killed.
FAST_SERVER = "mail_fsync = never\n"


class SyncCrash(CrashScenario, mstest.DovecotTestCase):
    dovecot_options = {"extra_conf": FAST_SERVER, "users": USERS}

    def test_flags_pushed_by_a_killed_run_then_reverted(self):
        """The failure the random rounds find now and then, made
        deterministic: a run applies flag changes both ways (local renames
        for changes made on the server, UID STOREs for changes made here)
        and is killed in the downloads that follow, before it records the
        new flags as the base. Then each change is undone on the side that
        made it. The next run must keep the undo: the other side still
        holds only what the killed run itself propagated."""
        user, n_synced, n_new, n_each = REVERT_USER, 120, 400, 20
        maildir = os.path.join(self.tmp, "Mail")
        msgs = mailgen.generate(n_synced + n_new, seed=99, max_size=MAX_SIZE)
        top = self.import_top()
        for i, m in enumerate(msgs[:n_synced]):
            write_import_file(os.path.join(top, "first"), "INBOX", m, "S", i)
        self.import_server(user, os.path.join(top, "first"))
        cfg = self.write_config({"a": self.imap_account(user=user)})
        mstest.run_mailsync(cfg, "sync", "a", check=True)

        # Flag n_each messages on the server and n_each others here.
        srv = {body_hash(mstest.crlf_to_lf(b)): uid for uid, _f, b in self.dovecot.fetch_all(user)}
        self.assertEqual(len(scan_local(maildir)), n_synced)
        hashes = sorted(srv)
        on_server, here = hashes[:n_each], hashes[n_each:2 * n_each]

        def store(uids, op):
            c = self.dovecot.imap(user)
            try:
                c.select("INBOX")
                uidset = ",".join(str(srv[h]) for h in uids)
                typ, data = c.uid("STORE", uidset, op, "(\\Flagged)")
                self.assertEqual(typ, "OK", data)
            finally:
                c.logout()

        def rename_local(hs, letters):
            for _f, path, unique, _l, d in scan_local(maildir):
                if body_hash(d) in hs:
                    os.rename(path,
                              os.path.join(maildir, "INBOX", "cur", unique + ":2," + letters))

        store(on_server, "+FLAGS.SILENT")
        rename_local(set(here), "FS")
        # New mail, so that the run has downloads to do after its flags.
        for i, m in enumerate(msgs[n_synced:]):
            write_import_file(os.path.join(top, "second"), "INBOX", m, "", n_synced + i)
        self.import_server(user, os.path.join(top, "second"))

        run = TracedRun(self.binary, cfg, os.path.join(self.tmp, "killed.log"))
        run.run(anchor=ANCHORS["transfer"], delay=0.02)
        if not run.killed or "download" not in groups_of(run.phase):
            self.fail("setting up: the run was meant to be killed in its downloads, but %s in %s "
                      "(last line: %s)"
                      % ("was" if run.killed else "was not", run.phase, run.last_line))
        # The killed run did propagate both sets of changes.
        flagged = {body_hash(mstest.crlf_to_lf(b)) for _u, f, b in self.dovecot.fetch_all(user)
                   if "\\Flagged" in f}
        self.assertTrue(set(here) <= flagged,
                        "setting up: the killed run did not STORE the local changes")
        local_flagged = {body_hash(d) for _f, _p, _u, letters, d in scan_local(maildir)
                         if "F" in letters}
        self.assertTrue(set(on_server) <= local_flagged,
                        "setting up: the killed run did not apply the server's changes here")

        # Each side undoes its own change; then a complete run.
        store(on_server, "-FLAGS.SILENT")
        rename_local(set(here), "S")
        p = mstest.run_mailsync(cfg, "sync", "a", check=True)

        srv_flags = {body_hash(mstest.crlf_to_lf(b)): letters_of(f)
                     for _u, f, b in self.dovecot.fetch_all(user)}
        loc_flags = {body_hash(d): letters for _f, _p, _u, letters, d in scan_local(maildir)}
        wrong = []
        for side_changed, hs in (("server", on_server), ("local", here)):
            for h in hs:
                if srv_flags.get(h) != "S" or loc_flags.get(h) != "S":
                    wrong.append("uid %d: flagged then unflagged on the %s side; now server '%s', "
                                 "local '%s'"
                                 % (srv[h], side_changed, srv_flags.get(h), loc_flags.get(h)))
        if wrong:
            self.fail("%d of %d undone flag changes came back: the changes the killed run (killed "
                      "in its %s) propagated but had not recorded as the base were taken for "
                      "changes made on the other side. The completing run said: %s. Trace of the "
                      "killed run (kept with MAILSYNC_KEEP_TMP=1): %s\n%s"
                      % (len(wrong), 2 * n_each, run.phase, p.stdout.strip(), run.log_path,
                         "\n".join(wrong)))


class SyncCrashNoUidplus(CrashScenario, mstest.DovecotTestCase):
    """Without UIDPLUS an APPEND's UID is found after the fact (Message-ID,
    size, header hash): kills between the APPEND and that search must not
    duplicate anything either."""

    dovecot_options = {"imap_capability": "IMAP4rev1 ID ENABLE IDLE LITERAL+ SPECIAL-USE",
                       "extra_conf": FAST_SERVER, "users": USERS}
    seed = 4343


if __name__ == "__main__":
    mstest.main()
