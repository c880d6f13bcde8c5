#!/usr/bin/env python3
"""What a local move costs (issue 12): N messages of SIZE bytes moved from
INBOX to a new folder in the local Maildir (as mutt saves them), then one
sync; mailsync against mbsync in the same run, each on its own Dovecot user
holding the same corpus.

Reported, never asserted (a report, not a test): the bytes each tool sent to
the server during the sync after the move (Dovecot's own "in=" count per
connection, summed over the run's connections), the bytes it received, the
wall time, and which commands carried the move (mailsync: UID MOVE; mbsync:
APPEND to the new folder and \\Deleted in the old one). mbsync's ",U=" part
of the file names is taken off on the move, as its manual asks of a client
that moves files between folders.

Usage: tests/bench/run --moves [--messages N] [--size BYTES] [--keep] [--bin MAILSYNC]
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "harness"))
sys.path.insert(0, HERE)

import bench  # noqa: E402
import dovecot  # noqa: E402
from bench import MailsyncImap, Mbsync, fmt_bytes, fmt_s, log  # noqa: E402

USERS = {"mailsync": ("benchms", "pw-benchms"), "mbsync": ("benchmb", "pw-benchmb")}


def message(i, size):
    """A message of about size bytes (LF line ends, 76-column body lines)."""
    head = ("From: a@example.org\nTo: b@example.org\nSubject: moved %d\n"
            "Date: Mon, 2 Jan 2023 10:00:00 +0000\nMessage-ID: <bench-move-%d@example.org>\n\n"
            % (i, i)).encode()
    line = (b"%075d\n" % i)
    return head + line * max(1, (size - len(head)) // len(line))


def seed(d, user, n, size):
    root = os.path.join(d.home(user), "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    base = int(time.time()) - 86400
    for i in range(n):
        with open(os.path.join(root, "cur", "%d.M%dP1.bench:2,S" % (base + i, i)), "wb") as f:
            f.write(message(i, size))
    if d.is_root:
        for dp, dn, fn in os.walk(d.home(user)):
            for x in dn + fn:
                os.lchown(os.path.join(dp, x), dovecot.MAIL_UID, dovecot.MAIL_UID)
        os.chown(d.home(user), dovecot.MAIL_UID, dovecot.MAIL_UID)


def move_all(inbox, dest, strip_uid):
    """Moves every message file of the Maildir inbox into dest/cur, as a
    mail client's save does; returns how many."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(dest, sub), exist_ok=True)
    n = 0
    for sub in ("cur", "new"):
        for name in os.listdir(os.path.join(inbox, sub)):
            if name.startswith("."):
                continue
            new = re.sub(r",U=\d+", "", name) if strip_uid else name
            if ":2," not in new:
                new += ":2,"
            os.rename(os.path.join(inbox, sub, name), os.path.join(dest, "cur", new))
            n += 1
    return n


class Bench:
    """What bench.py's tool classes expect: work, dovecot, args.bin, server_log."""

    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="mailsync-moves-", dir="/tmp")
        os.chmod(self.work, 0o755)
        self.dovecot = None
        self.server_log = None


def main(argv=None):
    ap = argparse.ArgumentParser(description="mailsync vs mbsync: moving messages locally")
    ap.add_argument("--moves", action="store_true")
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--size", type=int, default=1024 * 1024)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    b = Bench(args)
    d = dovecot.Dovecot(users={u: p for u, p in USERS.values()})
    log("moves: %d messages of %s per user, written into Dovecot's Maildirs"
        % (args.messages, fmt_bytes(args.size)))
    for user, _pw in USERS.values():
        seed(d, user, args.messages, args.size)
    d.start()
    b.dovecot = d
    results = {}
    try:
        for tool_cls, key in ((MailsyncImap, "mailsync"), (Mbsync, "mbsync")):
            if key == "mbsync" and not shutil.which("mbsync"):
                log("  mbsync: not installed, not measured")
                continue
            user, pw = USERS[key]
            bench.IMAP_USER, bench.IMAP_PASSWORD = user, pw
            tool = tool_cls(b)
            b.server_log = bench.ServerLog(d, user)
            tool.reset()
            first = tool.run()
            log("  %-8s first download  %8s  %s" % (key, fmt_s(first.wall), "ok" if first.ok else
                                                    "PROBLEM: " + first.first_error_line()))
            inbox = os.path.join(tool.maildir, "INBOX")
            moved = move_all(inbox, os.path.join(tool.maildir, "Archive"), key == "mbsync")
            mark = b.server_log.mark()
            m = tool.run()
            io = b.server_log.since(mark) or {}
            results[key] = {"moved": moved, "wall": m.wall, "ok": m.ok,
                            "sent": io.get("in"), "received": io.get("out"),
                            "connections": io.get("connections")}
            log("  %-8s sync after moving %d: sent %s, received %s, %s%s"
                % (key, moved, fmt_bytes(io.get("in") or 0), fmt_bytes(io.get("out") or 0),
                   fmt_s(m.wall), "" if m.ok else "  PROBLEM: " + m.first_error_line()))
        counts = d.counts(USERS["mailsync"][0])
        log("  server after mailsync's sync: %s" % json.dumps(counts, sort_keys=True))
    finally:
        d.stop()
        if not args.keep:
            shutil.rmtree(b.work, ignore_errors=True)
    print(json.dumps({"messages": args.messages, "size": args.size, "results": results},
                     indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
