#!/usr/bin/env python3
"""mailsync against a scripted IMAP server with many one-message folders
(issue 9, item 5): the client's wall time, user and system CPU time and
peak RSS for a first sync into a fresh Maildir and state_dir, then for a
second sync with nothing changed. A report, never a pass/fail test.

    manyfolders.py --bin BUILD/mailsync [--folders N[,N...]] [--caps PROFILE]
                   [--tls] [--keep] [--serve-only]

The server (ManyServer, below) is a lean asyncio IMAP server in its own
process, so that its CPU time is measured apart from the client's (from
/proc/PID/stat around each run) and never shares the client's core
accounting. It serves INBOX and N folders f/GGG/NNNNN (1,000 per group;
f and f/GGG are \\Noselect parents), each holding one small message with
UID 1 and a fixed UIDVALIDITY, and answers what mailsync sends for a
first and a no-change sync: CAPABILITY, LOGIN, AUTHENTICATE PLAIN, ID,
ENABLE, NAMESPACE, LIST (plain, the delimiter query, and RETURN
(SUBSCRIBED SPECIAL-USE STATUS (...))), LSUB, STATUS, SELECT and EXAMINE
(with CONDSTORE or QRESYNC), UID FETCH (any of UID FLAGS RFC822.SIZE
INTERNALDATE MODSEQ BODY.PEEK[...], with CHANGEDSINCE and VANISHED), UID
SEARCH (ALL, UID set; ESEARCH RETURN (ALL)), NOOP, CHECK, CLOSE, UNSELECT,
LOGOUT. Anything else gets a BAD and is counted; the report lists such
commands so that a change in what mailsync sends is seen, not hidden.

Capability profiles (--caps), the same three as the integration tests
(tests/harness/synctest.py): "fallback" (no CONDSTORE, QRESYNC or
LIST-EXTENDED: LIST then LSUB, and per folder SELECT + UID FETCH 1:*
(FLAGS)), "condstore" (adds CONDSTORE) and "full" (Dovecot's set:
QRESYNC, CONDSTORE, LIST-EXTENDED, LIST-STATUS, ESEARCH). The default is
fallback, the path issue 9 measured (LIST and LSUB matched separately).
"""

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "harness"))
sys.path.insert(0, HERE)

import dovecot  # noqa: E402
from bench import fs_type, log  # noqa: E402
from synctest import CONDSTORE_CAPS, FALLBACK_CAPS  # noqa: E402

USER, PASSWORD = "alice", "secret-alice"
GROUP = 1000  # folders per f/GGG parent
RUN_TIMEOUT = 1800  # seconds; a run that takes longer is killed and reported
GNU_TIME = "/usr/bin/time"

# Dovecot 2.3's capabilities after login, less what a one-shot sync never
# uses and this server does not answer (SORT, THREAD, NOTIFY, COMPRESS, ...).
FULL_CAPS = ("IMAP4rev1 SASL-IR ID ENABLE IDLE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED "
             "CONDSTORE QRESYNC ESEARCH LIST-STATUS MOVE LITERAL+ SPECIAL-USE")
PROFILES = {"fallback": FALLBACK_CAPS, "condstore": CONDSTORE_CAPS, "full": FULL_CAPS}


def folder_names(n):
    """INBOX, then the N one-message folders in server order."""
    return ["INBOX"] + ["f/%03d/%05d" % (i // GROUP, i) for i in range(n)]


def parent_names(n):
    groups = sorted({i // GROUP for i in range(n)})
    return (["f"] if n else []) + ["f/%03d" % g for g in groups]


def message(i, name):
    return ("From: Bench <bench@example.org>\r\n"
            "To: alice@example.org\r\n"
            "Subject: the one message in %s\r\n"
            "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
            "Message-ID: <%d.manyfolders@example.org>\r\n"
            "\r\n"
            "Body of message %d.\r\n" % (name, i, i)).encode()


# ---------------------------------------------------------------------------
# The server


class Folder:
    __slots__ = ("name", "uidvalidity", "body", "flags", "header", "msgid_header")

    def __init__(self, i, name):
        self.name = name
        self.uidvalidity = 1000 + i
        self.body = message(i, name)
        # Every other message is read, so that flags are carried both ways.
        self.flags = "\\Seen" if i % 2 == 0 else ""
        self.header = self.body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        self.msgid_header = b"Message-ID: <%d.manyfolders@example.org>\r\n\r\n" % i


TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
FETCH_ITEM = re.compile(r"BODY(?:\.PEEK)?\[[^\]]*\](?:<[\d.]+>)?|[A-Za-z0-9.\-]+")


def first_arg(rest):
    """(first argument unquoted, remainder) of a command's arguments."""
    m = TOKEN.match(rest)
    if not m:
        return "", ""
    if m.group(1) is not None:
        arg = re.sub(r"\\(.)", r"\1", m.group(1))
    else:
        arg = m.group(2)
    return arg, rest[m.end():].lstrip()


def in_uidset(uidset, uid, maxuid):
    """Whether uid is in an IMAP sequence set; * is maxuid (RFC 3501 6.4.8)."""
    for part in uidset.split(","):
        a, _, b = part.partition(":")
        try:
            lo = maxuid if a == "*" else int(a)
            hi = lo if not b else (maxuid if b == "*" else int(b))
        except ValueError:
            return False
        if min(lo, hi) <= uid <= max(lo, hi):
            return True
    return False


def quote(name):
    return '"%s"' % name.replace("\\", "\\\\").replace('"', '\\"')


class ManyServer:
    """The folders and the cached answers that do not depend on a
    connection (the LIST replies run to megabytes at 50,000 folders)."""

    def __init__(self, n, caps):
        self.caps = caps
        self.condstore = "CONDSTORE" in caps.split() or "QRESYNC" in caps.split()
        self.folders = {}
        for i, name in enumerate(folder_names(n)):
            self.folders[name] = Folder(i, name)
        self.parents = parent_names(n)
        self.list_cache = {}
        self.unknown = {}  # verb -> count, for commands answered with BAD
        self.counts = {}  # verb -> count

    def status_items(self, f, items):
        vals = {"MESSAGES": 1, "UIDNEXT": 2, "UIDVALIDITY": f.uidvalidity, "UNSEEN": 0 if f.flags else 1,
                "RECENT": 0, "HIGHESTMODSEQ": 1, "SIZE": len(f.body)}
        out = []
        for it in items:
            if it in vals:
                out.append("%s %d" % (it, vals[it]))
        return " ".join(out)

    def list_reply(self, verb, rest):
        """The whole untagged reply to LIST or LSUB, cached by its text."""
        key = verb + " " + rest
        cached = self.list_cache.get(key)
        if cached is not None:
            return cached
        ref, rest2 = first_arg(rest)
        pattern, ret = first_arg(rest2)
        lines = []
        if verb == "LIST" and pattern == "":
            lines.append('* LIST (\\Noselect) "/" ""\r\n')
        elif pattern in ("*", "%") or verb == "LSUB":
            m = re.search(r"RETURN \((.*)\)\s*$", ret, re.I)
            ret_opts = m.group(1).upper() if m else ""
            subscribed = "SUBSCRIBED" in ret_opts
            sm = re.search(r"STATUS \(([^)]*)\)", ret_opts)
            status = sm.group(1).split() if sm else None
            for p in self.parents:
                lines.append('* %s (\\Noselect \\HasChildren) "/" %s\r\n' % (verb, quote(p)))
            for name, f in self.folders.items():
                attrs = "\\HasNoChildren"
                if subscribed or verb == "LSUB":
                    attrs += " \\Subscribed" if verb == "LIST" else ""
                lines.append("* %s (%s) \"/\" %s\r\n" % (verb, attrs.strip(), quote(name)))
                if status:
                    lines.append("* STATUS %s (%s)\r\n" % (quote(name), self.status_items(f, status)))
        data = "".join(lines).encode()
        self.list_cache[key] = data
        return data


class Conn(asyncio.Protocol):
    """One client connection: splits lines, answers each command, and
    writes all answers to one read's worth of pipelined commands at once."""

    def __init__(self, srv):
        self.srv = srv
        self.buf = b""
        self.sel = None  # selected Folder
        self.literal = 0  # bytes of a client literal still to skip
        self.pending = b""  # command line before a literal

    def connection_made(self, transport):
        self.t = transport
        self.t.write(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+ ID ENABLE] manyfolders ready\r\n")

    def data_received(self, data):
        self.buf += data
        out = []
        while True:
            if self.literal:
                take = min(self.literal, len(self.buf))
                self.pending += self.buf[:take]
                self.buf = self.buf[take:]
                self.literal -= take
                if self.literal:
                    break
            i = self.buf.find(b"\r\n")
            if i < 0:
                break
            line, self.buf = self.pending + self.buf[:i], self.buf[i + 2:]
            self.pending = b""
            m = re.search(rb"\{(\d+)(\+?)\}$", line)
            if m:
                # A literal argument (APPEND, a non-ASCII name): its bytes
                # become part of the command line.
                if not m.group(2):
                    out.append(b"+ go ahead\r\n")
                self.pending = line + b"\r\n"
                self.literal = int(m.group(1))
                continue
            if self.answer(line.decode("utf-8", "replace"), out):
                self.t.write(b"".join(out))
                self.t.close()
                return
        if out:
            self.t.write(b"".join(out))

    def answer(self, line, out):
        """Appends the answer to one command to out; True after LOGOUT."""
        srv = self.srv
        parts = line.split(" ", 2)
        tag = parts[0]
        verb = parts[1].upper() if len(parts) > 1 else ""
        rest = parts[2] if len(parts) > 2 else ""
        if verb == "UID":
            sub, _, rest = rest.partition(" ")
            verb = "UID " + sub.upper()
        srv.counts[verb] = srv.counts.get(verb, 0) + 1
        ok = ("%s OK done\r\n" % tag).encode()
        if verb == "CAPABILITY":
            out.append(("* CAPABILITY %s AUTH=PLAIN\r\n" % srv.caps).encode() + ok)
        elif verb == "LOGIN":
            user, rest2 = first_arg(rest)
            pw, _ = first_arg(rest2)
            out.append(self.login(tag, user, pw))
        elif verb == "AUTHENTICATE":
            _mech, _, ir = rest.partition(" ")
            try:
                _authz, user, pw = base64.b64decode(ir).decode().split("\0")
            except ValueError:
                user = pw = ""
            out.append(self.login(tag, user, pw))
        elif verb == "ID":
            out.append(b'* ID ("name" "manyfolders")\r\n' + ok)
        elif verb == "ENABLE":
            on = [x for x in rest.upper().split() if x in srv.caps.split()]
            out.append((("* ENABLED %s\r\n" % " ".join(on)) if on else "").encode() + ok)
        elif verb == "NAMESPACE":
            out.append(b'* NAMESPACE (("" "/")) NIL NIL\r\n' + ok)
        elif verb in ("LIST", "LSUB"):
            out.append(srv.list_reply(verb, rest) + ok)
        elif verb == "STATUS":
            name, items = first_arg(rest)
            f = self.folder(name)
            if f is None:
                out.append(("%s NO [NONEXISTENT] no such mailbox\r\n" % tag).encode())
            else:
                its = items.strip("() ").upper().split()
                out.append(("* STATUS %s (%s)\r\n" % (quote(f.name), srv.status_items(f, its))).encode() + ok)
        elif verb in ("SELECT", "EXAMINE"):
            out.append(self.select(tag, verb, rest))
        elif verb == "UID FETCH":
            out.append(self.fetch(tag, rest))
        elif verb == "UID SEARCH":
            out.append(self.search(tag, rest))
        elif verb in ("NOOP", "CHECK"):
            out.append(ok)
        elif verb in ("CLOSE", "UNSELECT"):
            self.sel = None
            out.append(ok)
        elif verb == "LOGOUT":
            out.append(b"* BYE logging out\r\n" + ok)
            return True
        else:
            srv.unknown[verb] = srv.unknown.get(verb, 0) + 1
            out.append(("%s BAD not scripted in manyfolders\r\n" % tag).encode())
        return False

    def login(self, tag, user, pw):
        if (user, pw) != (USER, PASSWORD):
            return ("%s NO [AUTHENTICATIONFAILED] wrong password\r\n" % tag).encode()
        return ("%s OK [CAPABILITY %s] Logged in\r\n" % (tag, self.srv.caps)).encode()

    def folder(self, name):
        return self.srv.folders.get("INBOX" if name.upper() == "INBOX" else name)

    def select(self, tag, verb, rest):
        name, params = first_arg(rest)
        f = self.folder(name)
        if f is None:
            self.sel = None
            return ("%s NO [NONEXISTENT] no such mailbox\r\n" % tag).encode()
        self.sel = f
        lines = ["* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
                 "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] ok\r\n",
                 "* 1 EXISTS\r\n", "* 0 RECENT\r\n",
                 "* OK [UIDVALIDITY %d] ok\r\n" % f.uidvalidity, "* OK [UIDNEXT 2] ok\r\n"]
        if self.srv.condstore:
            lines.append("* OK [HIGHESTMODSEQ 1] ok\r\n")
        q = re.search(r"QRESYNC \((\d+) (\d+)", params, re.I)
        if q and int(q.group(1)) == f.uidvalidity and int(q.group(2)) < 1:
            lines.append("* 1 FETCH (UID 1 FLAGS (%s) MODSEQ (1))\r\n" % f.flags)
        mode = "READ-ONLY" if verb == "EXAMINE" else "READ-WRITE"
        lines.append("%s OK [%s] %s completed\r\n" % (tag, mode, verb))
        return "".join(lines).encode()

    def fetch(self, tag, rest):
        f = self.sel
        if f is None:
            return ("%s BAD no mailbox selected\r\n" % tag).encode()
        uidset, _, items = rest.partition(" ")
        changed = re.search(r"\(CHANGEDSINCE (\d+)( VANISHED)?\)\s*$", items, re.I)
        if changed:
            items = items[:changed.start()]
            if int(changed.group(1)) >= 1:
                return ("%s OK done\r\n" % tag).encode()
        if not in_uidset(uidset, 1, 1):
            return ("%s OK done\r\n" % tag).encode()
        parts = [b"UID 1"]
        for it in FETCH_ITEM.findall(items.strip().strip("()")):
            u = it.upper()
            if u == "UID":
                continue
            if u == "FLAGS":
                parts.append(("FLAGS (%s)" % f.flags).encode())
            elif u == "RFC822.SIZE":
                parts.append(b"RFC822.SIZE %d" % len(f.body))
            elif u == "INTERNALDATE":
                parts.append(b'INTERNALDATE "01-Jan-2024 00:00:00 +0000"')
            elif u == "MODSEQ":
                parts.append(b"MODSEQ (1)")
            elif u.startswith("BODY"):
                section = u[u.index("["):u.index("]") + 1]
                if section == "[]":
                    data = f.body
                elif section == "[HEADER]":
                    data = f.header
                elif section.startswith("[HEADER.FIELDS (MESSAGE-ID"):
                    data = f.msgid_header
                else:
                    return ("%s BAD fetch section %s not scripted\r\n" % (tag, section)).encode()
                parts.append(b"BODY%s {%d}\r\n%s" % (section.encode(), len(data), data))
            else:
                return ("%s BAD fetch item %s not scripted\r\n" % (tag, it)).encode()
        return b"* 1 FETCH (" + b" ".join(parts) + b")\r\n" + ("%s OK done\r\n" % tag).encode()

    def search(self, tag, rest):
        if self.sel is None:
            return ("%s BAD no mailbox selected\r\n" % tag).encode()
        esearch = False
        m = re.match(r"RETURN \(([^)]*)\)\s*", rest, re.I)
        if m:
            esearch = True
            rest = rest[m.end():]
        crit = rest.split()
        hit = True
        i = 0
        while i < len(crit):
            c = crit[i].upper()
            if c == "UID" and i + 1 < len(crit):
                hit = hit and in_uidset(crit[i + 1], 1, 1)
                i += 2
            elif c == "ALL":
                i += 1
            else:
                return ("%s BAD search key %s not scripted\r\n" % (tag, c)).encode()
        if esearch:
            res = '* ESEARCH (TAG "%s") UID%s\r\n' % (tag, " ALL 1" if hit else "")
        else:
            res = "* SEARCH%s\r\n" % (" 1" if hit else "")
        return (res + "%s OK done\r\n" % tag).encode()


def serve(args):
    """The server process: prints its port, serves until SIGTERM, then
    prints its command counts as JSON."""
    srv = ManyServer(args.folders, PROFILES[args.caps])
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Conn(srv), "127.0.0.1", 0, ssl=ctx, backlog=64)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print(server.sockets[0].getsockname()[1], flush=True)
        await stop.wait()
        server.close()

    asyncio.run(main())
    print(json.dumps({"counts": srv.counts, "unknown": srv.unknown}), flush=True)


# ---------------------------------------------------------------------------
# The client side: starting the server, measuring mailsync


def proc_cpu(pid):
    """(user, system) seconds a live process has used, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


class Server:
    """The server process (this file with --serve)."""

    def __init__(self, n, caps, tls):
        self.tls = tls
        argv = [sys.executable, "-u", os.path.abspath(__file__), "--serve", "--folders", str(n), "--caps", caps]
        if tls:
            import fakeimap  # the harness's test CA, made with the Dovecot harness's openssl helpers

            self.ca, cert, key = fakeimap.test_pki()
            argv += ["--tls", "--cert", cert, "--key", key]
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError("manyfolders server did not start")
        self.port = int(line)

    def cpu(self):
        return proc_cpu(self.p.pid)

    def stop(self):
        """Stops it and returns its command counts."""
        self.p.send_signal(signal.SIGTERM)
        out, _ = self.p.communicate(timeout=30)
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {}


def run_sync(binary, cfg, extra=()):
    """Runs `mailsync --config CFG sync a` under GNU time; returns a dict
    with wall, user, sys (wait4() of GNU time, which includes its reaped
    child; time's own share is a millisecond) and maxrss_kib (GNU time's
    %M: a wait4() here would report this Python process's peak instead,
    since Linux carries the pre-exec high-water mark into ru_maxrss)."""
    use_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.NamedTemporaryFile(prefix="manyfolders-time-") as tf, \
            tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        argv = [binary, "--config", cfg] + list(extra) + ["sync", "a"]
        if use_time:
            argv = [GNU_TIME, "-o", tf.name, "-f", "%M"] + argv
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        # The timer kills only the child it started, before it is reaped
        # (wait4 below), so a recycled pid is never signalled.
        timer = threading.Timer(RUN_TIMEOUT, p.kill)
        timer.daemon = True
        timer.start()
        _pid, status, ru = os.wait4(p.pid, 0)
        timer.cancel()
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        maxrss = 0
        if use_time:
            tf.seek(0)
            words = tf.read().decode("utf-8", "replace").split()
            maxrss = int(words[-1]) if words and words[-1].isdigit() else 0
        out.seek(0)
        err.seek(0)
        return {"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "maxrss_kib": maxrss,
                "rc": p.returncode, "stdout": out.read().decode("utf-8", "replace"),
                "stderr": err.read().decode("utf-8", "replace")}


def maildir_count(root):
    """(folders with a cur/ directory, messages in cur/ and new/) below root."""
    folders = messages = 0
    for dirpath, dirnames, _files in os.walk(root):
        if "cur" in dirnames:
            folders += 1
        for sub in ("new", "cur"):
            if sub in dirnames:
                messages += sum(1 for x in os.listdir(os.path.join(dirpath, sub)) if not x.startswith("."))
        dirnames[:] = [d for d in dirnames if d not in ("cur", "new", "tmp")]
    return folders, messages


def next_second():
    """Waits until the wall clock's second has moved on, so that the second
    sync never sees a directory modified in the current second (a client
    may treat those as possibly still changing)."""
    s = int(time.time())
    while int(time.time()) == s:
        time.sleep(0.02)


def bench_one(binary, n, caps, tls, keep, extra, where=None):
    """First and no-change sync at N folders; returns a result dict."""
    log("== %d folders (caps %s, %s) ==" % (n, caps, "implicit TLS" if tls else "plaintext"))
    t0 = time.monotonic()
    server = Server(n, caps, tls)
    log("server up on port %d in %.1f s" % (server.port, time.monotonic() - t0))
    tmp = tempfile.mkdtemp(prefix="mailsync-manyfolders-", dir=where)
    result = {"folders": n, "caps": caps, "tls": tls, "fs": fs_type(tmp), "runs": {}}
    log("Maildir and state under %s (%s)" % (tmp, result["fs"]))
    try:
        maildir = os.path.join(tmp, "Mail")
        acct = {"protocol": "imap", "host": "127.0.0.1", "port": server.port, "user": USER,
                "password": PASSWORD, "maildir": maildir}
        if tls:
            acct.update({"tls": "implicit", "ca_file": server.ca})
        else:
            acct.update({"tls": "none", "allow_plaintext": True})
        cfg = os.path.join(tmp, "config.yaml")
        dovecot.write_mailsync_config(cfg, {"a": acct}, state_dir=os.path.join(tmp, "state"))
        for run in ("first", "nochange"):
            if run == "nochange":
                next_second()
            os.sync()  # the previous run's writeback is not this run's cost
            s0 = server.cpu()
            m = run_sync(binary, cfg, extra)
            s1 = server.cpu()
            m["server_user"], m["server_sys"] = s1[0] - s0[0], s1[1] - s0[1]
            nf, nm = maildir_count(maildir)
            m["local_folders"], m["local_messages"] = nf, nm
            problems = []
            if m["rc"] != 0:
                problems.append("exit status %d" % m["rc"])
            if nm != n + 1:
                problems.append("%d messages in the Maildir, expected %d" % (nm, n + 1))
            m["problems"] = problems
            for line in (m["stderr"] + m["stdout"]).splitlines():
                if line.strip():
                    m["first_line"] = line.strip()
                    break
            log("%-9s wall %7.2f s  user %7.2f s  sys %7.2f s  maxrss %6.1f MiB  server cpu %6.2f s  %s"
                % (run, m["wall"], m["user"], m["sys"], m["maxrss_kib"] / 1024,
                   m["server_user"] + m["server_sys"], "; ".join(problems) or "ok"))
            if problems:
                log("  mailsync said: %s" % (m["stderr"].strip()[-2000:] or m["stdout"].strip()[-2000:]))
            del m["stdout"]
            m["stderr"] = m["stderr"][-4000:]
            result["runs"][run] = m
    finally:
        counts = server.stop()
        result["server_commands"] = counts.get("counts", {})
        result["unscripted"] = counts.get("unknown", {})
        if result["unscripted"]:
            log("commands the server does not script (answered BAD): %s" % result["unscripted"])
        if keep:
            log("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def report(results):
    lines = ["| folders | fs | run | wall s | user s | sys s | user+sys s | peak RSS MiB | server CPU s | per folder (client CPU) |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for run, m in r["runs"].items():
            cpu = m["user"] + m["sys"]
            lines.append("| %d | %s | %s%s | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f | %.0f µs |"
                         % (r["folders"], r["fs"], run, " (FAILED: %s)" % "; ".join(m["problems"]) if m["problems"] else "",
                            m["wall"], m["user"], m["sys"], cpu, m["maxrss_kib"] / 1024,
                            m["server_user"] + m["server_sys"], cpu / max(r["folders"], 1) * 1e6))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", help="the mailsync binary to measure")
    ap.add_argument("--folders", default="5000,50000",
                    help="comma-separated folder counts (default 5000,50000)")
    ap.add_argument("--caps", choices=sorted(PROFILES), default="fallback")
    ap.add_argument("--tls", action="store_true", help="implicit TLS instead of plaintext")
    ap.add_argument("--keep", action="store_true", help="keep the Maildir, state and config")
    ap.add_argument("--dir", help="where the Maildir and state_dir go (default: $TMPDIR); "
                    "/dev/shm makes fsync free, see README")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("mailsync_args", nargs="*", help="extra options for mailsync before `sync` (after --)")
    args = ap.parse_args(argv)
    if args.serve:
        args.folders = int(args.folders)
        serve(args)
        return 0
    if not args.bin:
        ap.error("--bin is required")
    counts = [int(x) for x in args.folders.split(",") if x.strip()]
    log("mailsync %s; %s; load %s" % (args.bin, " ".join(os.uname()[2:3]),
                                       " ".join("%.2f" % x for x in os.getloadavg())))
    results = [bench_one(os.path.abspath(args.bin), n, args.caps, args.tls, args.keep, args.mailsync_args, args.dir)
               for n in counts]
    table = report(results)
    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "manyfolders.json"), "w") as f:
        json.dump({"bin": args.bin, "load_end": os.getloadavg(), "results": results}, f, indent=1)
    with open(os.path.join(out_dir, "manyfolders.md"), "w") as f:
        f.write(table + "\n")
    log("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
