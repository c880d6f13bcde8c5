#!/usr/bin/env python3
"""`mailsync status [--json] [ACCOUNT...]` against a real Dovecot: what the
index knows of each account, read offline.

Covered: a never synced account (nothing created); an IMAP account after a
sync with max_size / max_age_days, whose skipped messages are listed with
UID, reason, size and date in both outputs and checked against the server;
a POP3 account (counts against the server's UIDL listing, a local deletion,
an intent left by an interrupted run); account selection and an unknown
account; status while a sync holds the account lock and an LMDB write
transaction, and during a real concurrent sync; folder names with quotes,
backslashes and non-ASCII from the server, and with control characters and
bytes that are not UTF-8 (put into the index directly: Dovecot refuses
control characters in mailbox names) escaped per RFC 8259 in JSON and shown
as escapes on the terminal; a schema version from the future, a damaged
index and a malformed skip list."""

import ctypes
import ctypes.util
import fcntl
import json
import os
import re
import socket
import struct
import subprocess
import time
import unicodedata
import unittest

import dovecot
import mailgen
import mstest

BUILD = os.environ.get("MAILSYNC_BUILD_DIR", os.path.join(mstest.SOURCE_DIR, "build"))
POPCLI = os.path.join(BUILD, "tests", "popcli", "popcli")

# 2023-06-01 00:00 UTC: messages dated January 2023 are recent for
# max_age_days 365, one dated 2001 is not.
NOW_2023 = 1685577600
RECENT = b"Mon, 2 Jan 2023 10:00:00 +0000"
OLD = b"Tue, 2 Jan 2001 10:00:00 +0000"
UTC = {"TZ": "UTC"}


def dated(subject, date, body):
    return (b"From: a@example.org\r\nSubject: " + subject + b"\r\nDate: " + date +
            b"\r\nMessage-ID: <" + subject.replace(b" ", b".") + b"@status>\r\n\r\n" + body)


def big(subject):
    return dated(subject, RECENT, (b"y" * 76 + b"\r\n") * 1000)


def kib(n):
    return "%d B" % n if n < 1024 else "%.1f KiB" % (n / 1024)


def cells(line):
    """line with a filler after each double-width character, so that an
    index into it is a terminal column."""
    return "".join(ch + ("\0" if unicodedata.east_asian_width(ch) in "WF" else "") for ch in line)


def server_sizes(d, user, folder="INBOX"):
    """{uid: RFC822.SIZE} of the folder, from the server."""
    return {uid: len(body) for uid, _flags, body in d.fetch_all(user, folder)}


# ---- raw LMDB access to an index (as tests/unit/test_index.c does in C) ----

class _Val(ctypes.Structure):
    _fields_ = [("mv_size", ctypes.c_size_t), ("mv_data", ctypes.c_void_p)]


class RawIndex:
    """An account's LMDB environment opened directly (liblmdb through
    ctypes), for what no server can produce and to hold a write transaction
    open the way a running sync does. Layout: see store/index.c."""

    def __init__(self, path):
        name = ctypes.util.find_library("lmdb")
        if name is None:
            raise unittest.SkipTest("liblmdb not found")
        self.lib = lib = ctypes.CDLL(name)
        lib.mdb_strerror.restype = ctypes.c_char_p
        self.env = ctypes.c_void_p()
        self._ok(lib.mdb_env_create(ctypes.byref(self.env)))
        self._ok(lib.mdb_env_set_maxdbs(self.env, 8))
        self._ok(lib.mdb_env_open(self.env, path.encode(), 0, 0o600))
        self.txn = None

    def _ok(self, rc):
        if rc != 0:
            raise AssertionError("lmdb: %s" % self.lib.mdb_strerror(rc).decode())

    def begin(self):
        self.txn = ctypes.c_void_p()
        self._ok(self.lib.mdb_txn_begin(self.env, None, 0, ctypes.byref(self.txn)))

    def _dbi(self, db):
        dbi = ctypes.c_uint()
        self._ok(self.lib.mdb_dbi_open(self.txn, db.encode(), 0, ctypes.byref(dbi)))
        return dbi

    def put(self, db, key, val):
        kb, vb = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(val, len(val))
        k = _Val(len(key), ctypes.cast(kb, ctypes.c_void_p))
        v = _Val(len(val), ctypes.cast(vb, ctypes.c_void_p))
        self._ok(self.lib.mdb_put(self.txn, self._dbi(db), ctypes.byref(k), ctypes.byref(v), 0))

    def get(self, db, key):
        kb = ctypes.create_string_buffer(key, len(key))
        k, v = _Val(len(key), ctypes.cast(kb, ctypes.c_void_p)), _Val()
        rc = self.lib.mdb_get(self.txn, self._dbi(db), ctypes.byref(k), ctypes.byref(v))
        if rc == -30798:  # MDB_NOTFOUND
            return None
        self._ok(rc)
        return ctypes.string_at(v.mv_data, v.mv_size)

    def commit(self):
        self._ok(self.lib.mdb_txn_commit(self.txn))
        self.txn = None

    def abort(self):
        self.lib.mdb_txn_abort(self.txn)
        self.txn = None

    def close(self):
        if self.txn is not None:
            self.abort()
        self.lib.mdb_env_close(self.env)

    def add_folder(self, name, uidvalidity, uidnext, modseq, last_sync, messages):
        """A folder record as idx_folder_put writes it (schema 2, name <= 400
        bytes): version 2, then LEB128 varints (zigzag for signed ones) id,
        UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, last sync, messages, record
        count 0, next keyword-set id 1, three change times 0, the name's
        length and the name."""
        def varint(n):
            out = b""
            while n >= 0x80:
                out += bytes([n & 0x7f | 0x80])
                n >>= 7
            return out + bytes([n])

        def zigzag(n):
            return varint(n << 1 if n >= 0 else (-n << 1) - 1)

        fid = struct.unpack("<I", self.get("meta", b"next_folder_id"))[0]
        self.put("meta", b"next_folder_id", struct.pack("<I", fid + 1))
        rec = (b"\x02" + varint(fid) + varint(uidvalidity) + varint(uidnext) + varint(modseq)
               + zigzag(last_sync) + varint(messages) + varint(0) + varint(1) + zigzag(0) * 3
               + varint(len(name)) + name)
        self.put("folders", name, rec)

    def put_skips(self, name, uidvalidity, entries):
        """A skip list as sync/skiplist.c packs it: (uid, too_old, size, date)."""
        val = struct.pack("<II", uidvalidity, len(entries))
        for uid, too_old, size, date in entries:
            val += struct.pack("<IBQq", uid, 1 if too_old else 0, size, date)
        self.put("meta", b"skip:" + name, val)


class StatusTests(mstest.DovecotTestCase):

    def setUp(self):
        super().setUp()
        self.user = "u%d" % (abs(hash(self.id())) % 10**8)
        self.password = "pw-%s-Z9" % self.user
        self.dovecot.add_user(self.user, self.password)
        self.state = os.path.join(self.tmp, "state")

    def imap(self, sub="Mail", **extra):
        return self.imap_account(os.path.join(self.tmp, sub), user=self.user,
                                 password=self.password, **extra)

    def pop(self, sub="Pop", **extra):
        return self.pop3_account(os.path.join(self.tmp, sub), user=self.user,
                                 password=self.password, **extra)

    def status(self, cfg, *args, ok=True, timeout=60):
        p = self.mailsync(cfg, "status", *args, env=UTC, timeout=timeout)
        if ok and p.returncode != 0:
            self.fail("mailsync status %s exited %d\nstdout:\n%s\nstderr:\n%s"
                      % (" ".join(args), p.returncode, p.stdout, p.stderr))
        self.assertNotIn(self.password, p.stdout + p.stderr)
        return p

    def status_json(self, cfg, *args, ok=True):
        p = self.status(cfg, "--json", *args, ok=ok)
        self.assertTrue(p.stdout.endswith("}\n"), p.stdout)
        return json.loads(p.stdout)

    def sync(self, cfg, *args, env=None):
        p = self.mailsync(cfg, "sync", *args, env=env)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        return p

    def index(self, account):
        return os.path.join(self.state, account, "index.mdb")

    def folder(self, data, name):
        found = [f for f in data["folders"] if f["name"] == name]
        self.assertEqual(len(found), 1, [f["name"] for f in data["folders"]])
        return found[0]

    # ---- never synced --------------------------------------------------------------

    def test_never_synced(self):
        cfg = self.write_config({"fresh": self.imap(), "pop": self.pop()})
        p = self.status(cfg)
        self.assertEqual(p.stderr, "")
        self.assertEqual(p.stdout,
                         "fresh: IMAP\n"
                         "  maildir  %s\n"
                         "  index    %s\n"
                         "  status   never synced\n"
                         "\n"
                         "pop: POP3\n"
                         "  maildir  %s\n"
                         "  index    %s\n"
                         "  status   never synced\n"
                         % (os.path.join(self.tmp, "Mail"), self.index("fresh"),
                            os.path.join(self.tmp, "Pop"), self.index("pop")))
        data = self.status_json(cfg)
        fresh, pop = data["accounts"]
        self.assertEqual(fresh, {
            "name": "fresh", "protocol": "imap", "maildir": os.path.join(self.tmp, "Mail"),
            "state_dir": os.path.join(self.state, "fresh"), "index": self.index("fresh"),
            "max_size": 0, "max_age_days": 0, "synced": False, "error": None, "folders": [],
            "totals": {"folders": 0, "messages": 0, "skipped": 0, "skipped_max_size": 0,
                       "skipped_max_age_days": 0, "local_skipped": 0}})
        self.assertEqual(pop["protocol"], "pop3")
        self.assertFalse(pop["synced"])
        self.assertEqual(pop["pop3"], {"known": 0, "delivered": 0, "deleted_locally": 0,
                                       "intents": 0, "skipped": 0, "deleted_on_server": 0,
                                       "oldest_first_seen": None})
        # Nothing was created: no state directory, no Maildir.
        self.assertFalse(os.path.exists(self.state))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "Mail")))
        # An account directory left without an index is still never synced,
        # and stays as it is.
        os.makedirs(os.path.join(self.state, "fresh"))
        data = self.status_json(cfg, "fresh")
        self.assertFalse(data["accounts"][0]["synced"])
        self.assertEqual(os.listdir(os.path.join(self.state, "fresh")), [])

    # ---- IMAP with skipped messages ---------------------------------------------

    def test_imap_skipped_listed(self):
        small = [dated(b"small %d" % i, RECENT, b"short\r\n") for i in range(3)]
        msgs = [small[0], big(b"big one"), small[1], dated(b"old one", OLD, b"ancient\r\n"),
                big(b"big two"), small[2]]
        uids = self.dovecot.save_many(self.user, "INBOX", msgs)
        self.dovecot.save_many(self.user, "Archive/2023", [big(b"archived big")])
        sizes = server_sizes(self.dovecot, self.user)
        arch_sizes = server_sizes(self.dovecot, self.user, "Archive/2023")
        cfg = self.write_config({"work": self.imap(max_size=50000, max_age_days=365)})
        env = {"MAILSYNC_NOW": str(NOW_2023)}
        p = self.sync(cfg, env=env)
        self.assertIn("3 skipped over max_size; 1 skipped older than max_age_days", p.stdout)

        data = self.status_json(cfg)
        self.assertEqual(len(data["accounts"]), 1)
        acct = data["accounts"][0]
        self.assertTrue(acct["synced"])
        self.assertIsNone(acct["error"])
        self.assertEqual(acct["max_size"], 50000)
        self.assertEqual(acct["max_age_days"], 365)
        inbox = self.folder(acct, "INBOX")
        expected = [
            {"uid": uids[1], "reason": "max_size", "size": sizes[uids[1]], "date": 1672653600},
            {"uid": uids[3], "reason": "max_age_days", "size": sizes[uids[3]], "date": 978429600},
            {"uid": uids[4], "reason": "max_size", "size": sizes[uids[4]], "date": 1672653600},
        ]
        self.assertEqual(inbox["skipped"], expected)
        self.assertEqual(inbox["messages"], 3)
        self.assertEqual(inbox["server_messages"], 6)
        self.assertEqual(inbox["last_full_sync"], NOW_2023)
        # The server's own view of the folder.
        conn = self.dovecot.imap(self.user, self.password)
        try:
            typ, st = conn.status("INBOX", "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ)")
        finally:
            conn.logout()
        st = st[0].decode()
        self.assertEqual(inbox["uidvalidity"], int(re.search(r"UIDVALIDITY (\d+)", st).group(1)))
        self.assertEqual(inbox["uidnext"], int(re.search(r"UIDNEXT (\d+)", st).group(1)))
        self.assertEqual(inbox["highestmodseq"],
                         int(re.search(r"HIGHESTMODSEQ (\d+)", st).group(1)))
        arch = self.folder(acct, "Archive/2023")
        self.assertEqual([(s["uid"], s["reason"], s["size"]) for s in arch["skipped"]],
                         [(1, "max_size", arch_sizes[1])])
        self.assertEqual(arch["messages"], 0)
        self.assertEqual(acct["totals"], {"folders": len(acct["folders"]), "messages": 3,
                                          "skipped": 4, "skipped_max_size": 3,
                                          "skipped_max_age_days": 1, "local_skipped": 0})

        # The same on the terminal, in aligned columns.
        out = self.status(cfg).stdout
        self.assertTrue(out.startswith("work: IMAP\n"), out)
        self.assertIn("  limits   max_size 48.8 KiB, max_age_days 365\n", out)
        lines = out.splitlines()
        head = lines.index(next(l for l in lines if l.startswith("  FOLDER ")))
        table = lines[head:lines.index("", head)]
        self.assertEqual(table[0].split(), ["FOLDER", "MESSAGES", "UIDVALIDITY", "HIGHESTMODSEQ",
                                            "LAST", "FULL", "SYNC", "SKIPPED"])
        for title in ("MESSAGES", "UIDVALIDITY", "HIGHESTMODSEQ", "SKIPPED"):
            end = table[0].index(title) + len(title)
            for row in table[1:]:
                self.assertTrue(row[end - 1].isdigit() or row[end - 1] == "-", (title, row))
                self.assertTrue(end == len(row) or row[end] == " ", (title, row))
        when = table[0].index("LAST FULL SYNC")
        inbox_row = next(r for r in table if r.startswith("  INBOX "))
        self.assertEqual(inbox_row[when:when + 16], "2023-06-01 00:00")
        self.assertEqual(inbox_row.split()[1:3], ["3", str(inbox["uidvalidity"])])
        self.assertTrue(inbox_row.endswith(" 3"), inbox_row)
        for line in lines:
            self.assertEqual(line, line.rstrip(), "trailing blanks: %r" % line)

        start = lines.index("  Skipped in INBOX:")
        listing = lines[start + 1:start + 5]
        self.assertEqual(listing[0].split(), ["UID", "REASON", "SIZE", "DATE"])
        rows = [re.split(r"\s{2,}", l.strip()) for l in listing[1:]]
        self.assertEqual(rows, [
            [str(uids[1]), "larger than max_size", kib(sizes[uids[1]]), "2023-01-02 10:00"],
            [str(uids[3]), "older than max_age_days", kib(sizes[uids[3]]), "2001-01-02 10:00"],
            [str(uids[4]), "larger than max_size", kib(sizes[uids[4]]), "2023-01-02 10:00"],
        ])
        # Columns line up: the reasons start together, sizes end together.
        reason_col = {l.index("larger") if "larger" in l else l.index("older") for l in listing[1:]}
        self.assertEqual(reason_col, {listing[0].index("REASON")})
        size_end = {l.index(" KiB") + 4 if "KiB" in l else l.index(" B ") + 2 for l in listing[1:]}
        self.assertEqual(size_end, {listing[0].index("SIZE") + 4})
        self.assertEqual({l.index("20") for l in listing[1:]}, {listing[0].index("DATE")})
        self.assertEqual(lines[lines.index("  Skipped in Archive/2023:") + 2].split()[:5],
                         ["1", "larger", "than", "max_size", kib(arch_sizes[1]).split()[0]])
        self.assertIn("\n  Total: %d folders, 3 messages, 4 skipped (3 larger than max_size, "
                      "1 older than max_age_days)\n" % len(acct["folders"]), out)

        # Raising max_size brings the large ones down: status follows.
        cfg = self.write_config({"work": self.imap(max_size=500000, max_age_days=365)})
        self.sync(cfg, env=env)
        inbox = self.folder(self.status_json(cfg)["accounts"][0], "INBOX")
        self.assertEqual(inbox["skipped"], expected[1:2])
        self.assertEqual(inbox["messages"], 5)

    # ---- POP3 ----------------------------------------------------------------------------

    def test_pop3_counts(self):
        msgs = mailgen.generate(7, seed=91, max_size=4000)
        self.dovecot.save_many(self.user, "INBOX", msgs)
        cfg = self.write_config({"isp": self.pop()})
        first = 1700000000  # 2023-11-14 22:13:20 UTC
        self.sync(cfg, env={"MAILSYNC_NOW": str(first)})
        listing = self.dovecot.pop3_all(self.user)
        self.assertEqual(len(listing), 7)
        data = self.status_json(cfg)
        self.assertEqual(data["accounts"][0]["pop3"], {
            "known": 7, "delivered": 7, "deleted_locally": 0, "intents": 0, "skipped": 0,
            "deleted_on_server": 0, "oldest_first_seen": first})

        # A message deleted locally, and two more on the server, seen later.
        inbox = os.path.join(self.tmp, "Pop", "INBOX")
        victim = sorted(os.listdir(os.path.join(inbox, "new")))[0]
        os.unlink(os.path.join(inbox, "new", victim))
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(2, seed=92, max_size=4000))
        self.sync(cfg, env={"MAILSYNC_NOW": str(first + 86400)})
        pop = self.status_json(cfg)["accounts"][0]["pop3"]
        self.assertEqual(len(self.dovecot.pop3_all(self.user)), 9)
        self.assertEqual(pop, {"known": 9, "delivered": 9, "deleted_locally": 1, "intents": 0,
                               "skipped": 0, "deleted_on_server": 0,
                               "oldest_first_seen": first})
        out = self.status(cfg).stdout
        self.assertEqual(out,
                         "isp: POP3\n"
                         "  maildir              %s\n"
                         "  index                %s\n"
                         "  known by UIDL        9\n"
                         "  stored locally       9 (1 deleted locally since)\n"
                         "  in flight (intents)  0\n"
                         "  skipped (since)      0\n"
                         "  deleted on server    0\n"
                         "  oldest first seen    2023-11-14 22:13\n"
                         % (os.path.join(self.tmp, "Pop"), self.index("isp")))

    def test_pop3_intent_in_flight(self):
        if not os.access(POPCLI, os.X_OK):
            self.skipTest("popcli is not built (%s)" % POPCLI)
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(2, seed=93, max_size=3000))
        cfg = self.write_config({"isp": self.pop()})
        self.sync(cfg)
        # An intent row as a run interrupted between recording it and
        # renaming the file into new/ leaves it (the run itself fails: no
        # server listens there).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        acct = self.pop(timeout=5)
        acct["port"] = dead
        bad = self.write_config({"isp": acct}, name="bad.yaml")
        p = subprocess.run([POPCLI, "-I", "ZZ-intent=1700000000.M1P1.host", bad, "isp"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        self.assertEqual(p.returncode, 75, p.stdout + p.stderr)
        pop = self.status_json(cfg)["accounts"][0]["pop3"]
        self.assertEqual((pop["known"], pop["delivered"], pop["intents"]), (3, 2, 1))
        self.assertIn("  in flight (intents)  1\n", self.status(cfg).stdout)

    # ---- selection ---------------------------------------------------------------------

    def test_named_accounts_and_unknown(self):
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(2, seed=94, max_size=3000))
        cfg = self.write_config({"a": self.imap("A"), "b": self.pop("B"), "c": self.imap("C")})
        self.sync(cfg, "b")
        data = self.status_json(cfg, "c", "b")
        # Configuration order, as sync runs them.
        self.assertEqual([a["name"] for a in data["accounts"]], ["b", "c"])
        self.assertEqual(data["accounts"][0]["pop3"]["known"], 2)
        self.assertFalse(data["accounts"][1]["synced"])
        out = self.status(cfg, "b").stdout
        self.assertTrue(out.startswith("b: POP3\n"), out)
        self.assertNotIn("a: IMAP", out)
        self.assertNotIn("c: IMAP", out)
        self.assertEqual(len(self.status_json(cfg)["accounts"]), 3)

        # An unknown name is an error naming it, like `sync` and `check`.
        p = self.status(cfg, "b", "zzz", ok=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no account named 'zzz'", p.stderr)
        self.assertEqual(p.stdout, "")
        p = self.status(cfg, "--json", "zzz", ok=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no account named 'zzz'", p.stderr)
        self.assertEqual(p.stdout, "")
        # An unknown option is a usage error.
        p = self.status(cfg, "--bogus", ok=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("status: unknown option '--bogus'", p.stderr)
        # "--" ends the options.
        self.assertEqual(self.status_json(cfg, "--", "a")["accounts"][0]["name"], "a")

    # ---- beside a running sync ------------------------------------------------------

    def test_while_sync_holds_the_lock(self):
        self.dovecot.save_many(self.user, "INBOX", [big(b"too big")] +
                               mailgen.generate(3, seed=95, max_size=3000))
        cfg = self.write_config({"a": self.imap(max_size=40000)})
        self.sync(cfg)
        before = self.status_json(cfg)
        lock = os.path.join(self.state, "a", "lock")
        # Hold what a running sync holds: the account lock and LMDB's write
        # transaction (with a change not committed yet).
        fd = os.open(lock, os.O_RDWR)
        raw = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, b"%d\n" % os.getpid())
            raw = RawIndex(self.index("a"))
            raw.begin()
            raw.put("meta", b"status-test", b"uncommitted")
            # The sync is really locked out...
            p = self.mailsync(cfg, "sync", timeout=60)
            self.assertEqual(p.returncode, 75, p.stdout + p.stderr)
            self.assertIn("already being synced by another mailsync process (pid %d)"
                          % os.getpid(), p.stderr)
            # ...and status neither waits nor fails.
            t0 = time.monotonic()
            during = self.status_json(cfg)
            human = self.status(cfg)
            self.assertLess(time.monotonic() - t0, 20)
            self.assertEqual(during, before)
            self.assertIn("larger than max_size", human.stdout)
            self.assertEqual(human.stderr, "")
            raw.abort()
        finally:
            if raw is not None:
                raw.close()
            os.close(fd)
        with open(lock) as f:
            self.assertEqual(f.read(), "%d\n" % os.getpid())

    def test_during_a_real_sync(self):
        n = 400
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(n, seed=96, max_size=6000))
        cfg = self.write_config({"a": self.imap()})
        sync = subprocess.Popen([mstest.mailsync_bin(), "--config", cfg, "sync"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen, overlapped = [], 0
        try:
            while sync.poll() is None:
                p = self.status(cfg, "--json", timeout=30)
                data = json.loads(p.stdout)
                acct = data["accounts"][0]
                count = sum(f["messages"] for f in acct["folders"])
                seen.append(count)
                overlapped += sync.poll() is None
        finally:
            out, err = sync.communicate(timeout=300)
        self.assertEqual(sync.returncode, 0, out + err)
        self.assertGreater(overlapped, 0, "the sync ended before status could run beside it")
        # Every status saw a committed state: counts only grow during the
        # first download, and never beyond the server's.
        self.assertEqual(seen, sorted(seen))
        self.assertLessEqual(max(seen), n)
        inbox = self.folder(self.status_json(cfg)["accounts"][0], "INBOX")
        self.assertEqual(inbox["messages"], n)
        self.assertEqual(inbox["server_messages"], n)

    # ---- names ---------------------------------------------------------------------------

    def test_folder_names_escaped(self):
        names = ['Quote"d', "Back\\slash", "Entw\u00fcrfe/\u65e5\u672c", "\U0001F4EC mail"]
        for i, name in enumerate(names):
            self.dovecot.save_many(self.user, name, [dated(b"n%d" % i, RECENT, b"x\r\n")])
        cfg = self.write_config({"a": self.imap()})
        self.sync(cfg)
        # Dovecot refuses control characters in mailbox names, so those
        # (and bytes that are not UTF-8) are put into the index directly.
        ctl = b"Ctl\x01\x1f\x7f\t\n\r\x08\x0c end"
        bad = b"Bad \xff\xfe \xc3 \xed\xa0\x80 ok"
        c1 = "C1 \u009b[31m".encode()
        raw = RawIndex(self.index("a"))
        try:
            raw.begin()
            for i, name in enumerate((ctl, bad, c1)):
                raw.add_folder(name, 4242 + i, 2, 0, 0, 0)
            raw.put_skips(ctl, 4242, [(1, False, 99999, 0)])
            # A list of another UIDVALIDITY names other messages: not shown.
            raw.put_skips(bad, 1, [(7, True, 10, 1)])
            raw.commit()
        finally:
            raw.close()

        p = self.status(cfg, "--json")
        # RFC 8259: control characters escaped, the rest UTF-8 as it is.
        self.assertIn('"Ctl\\u0001\\u001f\\u007f\\t\\n\\r\\b\\f end"', p.stdout)
        self.assertIn('"Quote\\"d"', p.stdout)
        self.assertIn('"Back\\\\slash"', p.stdout)
        self.assertIn('"Entw\u00fcrfe/\u65e5\u672c"', p.stdout)
        self.assertTrue(all(ord(ch) >= 0x20 for ch in p.stdout[:-1]), repr(p.stdout))
        acct = json.loads(p.stdout)["accounts"][0]
        got = {f["name"] for f in acct["folders"]}
        for name in names + [ctl.decode(), "Bad \ufffd\ufffd \ufffd \ufffd\ufffd\ufffd ok",
                             c1.decode()]:
            self.assertIn(name, got)
        ctl_folder = self.folder(acct, ctl.decode())
        self.assertEqual(ctl_folder["skipped"],
                         [{"uid": 1, "reason": "max_size", "size": 99999, "date": None}])
        self.assertIsNone(ctl_folder["highestmodseq"])
        self.assertEqual(self.folder(acct, bad.decode("utf-8", "replace"))["skipped"], [])
        self.assertIsNone(ctl_folder["last_full_sync"])

        # On the terminal: escapes, never the raw control characters.
        out = self.status(cfg).stdout
        self.assertTrue(all(ord(ch) >= 0x20 or ch == "\n" for ch in out), repr(out))
        self.assertNotIn("\u009b", out)
        self.assertIn("  Ctl\\x01\\x1f\\x7f\\t\\n\\r\\x08\\x0c end ", out)
        self.assertIn("  Bad \\xff\\xfe \\xc3 \\xed\\xa0\\x80 ok ", out)
        self.assertIn("  C1 \\u009b[31m ", out)
        self.assertIn("\n  Skipped in Ctl\\x01\\x1f\\x7f\\t\\n\\r\\x08\\x0c end:\n", out)
        self.assertIn("  Entw\u00fcrfe/\u65e5\u672c ", out)
        row = next(l for l in out.splitlines() if "Ctl\\x01" in l and "never" in l)
        self.assertEqual(row.split()[-6:], ["end", "0", "4242", "-", "never", "1"])
        # Columns count terminal cells, not bytes or code points: the rows
        # with non-ASCII and double-width names line up too.
        lines = out.splitlines()
        head = next(l for l in lines if l.startswith("  FOLDER "))
        end = head.index("MESSAGES") + len("MESSAGES")
        rows = lines[lines.index(head) + 1:]
        rows = [cells(l) for l in rows[:rows.index("")]]
        self.assertEqual(len(rows), len(acct["folders"]))
        for l in rows:
            self.assertTrue(l[end - 1].isdigit() and l[end] == " ", repr(l))

    # ---- damaged indexes ------------------------------------------------------------

    def test_index_errors(self):
        self.dovecot.save_many(self.user, "INBOX", [big(b"large")])
        cfg = self.write_config({"a": self.imap(max_size=40000), "b": self.imap("B")})
        self.sync(cfg)

        # A malformed skip list reads as an empty one.
        raw = RawIndex(self.index("a"))
        try:
            raw.begin()
            raw.put("meta", b"skip:INBOX", b"\x01\x02\x03")
            raw.commit()
        finally:
            raw.close()
        inbox = self.folder(self.status_json(cfg, "a")["accounts"][0], "INBOX")
        self.assertEqual(inbox["skipped"], [])
        self.assertNotIn("Skipped in", self.status(cfg, "a").stdout)

        # An index written by a newer mailsync: the index's own refusal.
        raw = RawIndex(self.index("a"))
        try:
            raw.begin()
            raw.put("meta", b"schema_version", struct.pack("<I", 99))
            raw.commit()
        finally:
            raw.close()
        msg = ("index %s was written by a newer mailsync (schema 99, this build understands up "
               "to 2); upgrade mailsync or move the index away" % self.index("a"))
        p = self.status(cfg, "--json", ok=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("a: " + msg, p.stderr)
        data = json.loads(p.stdout)
        self.assertEqual(data["accounts"][0]["error"], msg)
        self.assertEqual(data["accounts"][0]["folders"], [])
        self.assertIsNone(data["accounts"][1]["error"])
        self.assertTrue(data["accounts"][1]["synced"])
        p = self.status(cfg, ok=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("\n  error    %s\n" % msg, p.stdout)
        self.assertIn("b: IMAP\n", p.stdout)

        # A data file that is not LMDB at all.
        data_mdb = os.path.join(self.index("b"), "data.mdb")
        with open(data_mdb, "wb") as f:
            f.write(b"not an index" * 1000)
        p = self.status(cfg, "b", ok=False)
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, r"b: cannot open index %s: MDB_INVALID" % re.escape(self.index("b")))
        self.assertEqual(os.path.getsize(data_mdb), 12000)


if __name__ == "__main__":
    mstest.main()
