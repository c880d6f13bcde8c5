#!/usr/bin/env python3
"""`mailsync sync` against a scripted server (fakeimap.mailbox_script) that
breaks in ways a real server never does, or a proxy cannot make, in the
middle of a listing or a download (issue 9, invariant 9 of the design
brief): BYE inside a literal, a malformed response, garbage where a FETCH
item should be, a literal or a line beyond the client's limits, NUL bytes,
BYE, a close (at a line boundary or in the middle of a line), a reset, and
a tagged NO or BAD for the listing command.

Each test syncs INBOX (5 messages with flags) cleanly, changes the server
as its target needs, then runs `mailsync sync` twice against the broken
server (at default verbosity and with -q) and proves after each broken run
that:
- the exit status is 75 (connection breaks and protocol errors: README,
  "network down or dropped") or what the docstring says for NO and BAD;
- stderr names the folder and the cause ("a: INBOX: ... CAUSE"), also
  with -q;
- the Maildir (names and contents in new/, cur/ and tmp/), `mailsync status
  --json` and the LMDB data file are byte for byte as before, and the
  server's messages and flags are as before;
and that a following clean run exits 0 and leaves the Maildir equal to the
server: every message once, with the server's flags.

The targets (the command that breaks):
- listing: the full `UID FETCH 1:* (UID FLAGS ...)` scan of a server
  without CONDSTORE, cut after 2 of 5 messages (the rest would look
  deleted on the server);
- changedsince: the CONDSTORE `UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE n)`
  after flag changes on 4 messages, cut after the first;
- select: the QRESYNC resync data (FETCH) inside the SELECT answer, same
  changes, cut after the first;
- search: the CONDSTORE `UID SEARCH UID 1:5` that finds expunges (only
  for NO, BAD and a close: a partial result would delete messages);
- body: `UID FETCH 6 (UID BODY.PEEK[])` of a new message on a CONDSTORE
  server, cut in its first and only response: the message must not be
  delivered, nor HIGHESTMODSEQ/UIDNEXT recorded past it."""

import json
import os
import re
import shutil
import tempfile
import time
import unittest

import fakeimap
import mstest
from fakeimap import Mailbox, mailbox_script, mailsync_sync
from synctest import letters

HISTORY = [["\\Seen"], [], ["\\Flagged", "\\Seen"], ["\\Answered", "\\Seen"], ["\\Draft"]]

BIG_LITERAL = 2 ** 31  # beyond the parser's default max_literal of 1 GiB


# ---- how a response is broken --------------------------------------------------------
#
# Each action gets the connection, the command's tag and the untagged
# responses the server would send, sends some of them intact (after) and
# then breaks; it returns what the client must name as the cause.

def literal_in(r):
    """r with a literal to break into: its own one (BODY[]), else its
    INTERNALDATE sent as a literal, else an INTERNALDATE literal added
    (servers may send unrequested items, and any string as a literal)."""
    if re.search(rb"\{\d+\}\r\n", r):
        return r
    date = b"02-Jan-2023 10:00:00 +0000"
    m = re.search(rb'INTERNALDATE "([^"]*)"', r)
    if m:
        return r[:m.start()] + b"INTERNALDATE {%d}\r\n%s" % (len(m.group(1)), m.group(1)) + r[m.end():]
    return r[:-3] + b" INTERNALDATE {%d}\r\n%s)\r\n" % (len(date), date)


def after_uid(r):
    """Offset just past "(UID n" of a FETCH response."""
    return re.search(rb"\(UID \d+", r).end()


def bye_in_literal(c, tag, rs, after):
    r = literal_in(rs[after])
    m = re.search(rb"\{(\d+)\}\r\n", r)
    tail = b"\r\n* BYE going down now\r\n"
    size = int(m.group(1))
    part = r[m.end():m.end() + size // 2]
    # The literal is announced larger than what follows it (part and the
    # BYE line): the BYE stays inside the literal, however short the
    # original string (an INTERNALDATE) was.
    size = max(size, 2 * (len(part) + len(tail)))
    c.send(b"".join(rs[:after]) + r[:m.start()] + b"{%d}\r\n" % size + part + tail)
    c.finish()
    # The BYE is literal data: the client sees the connection end.
    return "connection closed by the server"


def malformed(c, tag, rs, after):
    c.send(b"".join(rs[:after]) + rs[after][:-2] + b")\r\n")  # one ')' too many
    c.wait_closed()
    return "malformed response from the server"


def garbage_item(c, tag, rs, after):
    r = rs[after]
    c.send(b"".join(rs[:after]) + r[:-3] + b" garbage)\r\n")
    c.wait_closed()
    return "malformed FETCH response for message %d" % int(r.split()[1])


def big_literal(c, tag, rs, after):
    r = literal_in(rs[after])
    m = re.search(rb"\{\d+\}\r\n", r)
    c.send(b"".join(rs[:after]) + r[:m.start()] + b"{%d}\r\n" % BIG_LITERAL)
    c.wait_closed()
    return "literal of %d bytes exceeds the limit of %d (max_literal)" % (BIG_LITERAL, 2 ** 30)


def long_line(c, tag, rs, after):
    r = rs[after]
    k = after_uid(r)
    flags = b" ".join(b"$kw%05d" % i for i in range(9000))  # 72 KB
    c.send(b"".join(rs[:after]) + r[:k] + b" FLAGS (" + flags + b")" + r[k:])
    c.wait_closed()
    return "response exceeds the limit of 65536 bytes without literals (max_line)"


def nul_bytes(c, tag, rs, after):
    r = rs[after]
    k = after_uid(r)
    c.send(b"".join(rs[:after]) + r[:k - 1] + b"\0\0" + r[k - 1:])
    c.wait_closed()
    return "NUL byte at offset"


def bye(c, tag, rs, after):
    c.send(b"".join(rs[:after]) + b"* BYE server shutting down\r\n")
    c.finish()
    return "server closed the connection: server shutting down"


def closed(c, tag, rs, after):
    c.send(b"".join(rs[:after]))
    c.finish()
    return "connection closed by the server"


def closed_midline(c, tag, rs, after):
    c.send(b"".join(rs[:after]) + rs[after][:len(rs[after]) // 2])
    c.finish()
    return "connection closed by the server"


def reset(c, tag, rs, after):
    c.send(b"".join(rs[:after]))
    time.sleep(0.2)
    c.reset()
    return "connection reset by peer"


def refused(text):
    """A tagged NO or BAD (text) after part of the answer; the session
    goes on (keeps_session), as a server's does after a refused command."""
    def action(c, tag, rs, after):
        c.send(b"".join(rs[:after]))
        c.send("%s %s\r\n" % (tag, text))
        return text.split(" ", 1)[1]
    action.keeps_session = True
    return action


def partial_search(action):
    """For the search target: a SEARCH result that lacks UIDs 3 to 5
    before action breaks; acted upon, it would delete them locally."""
    def act(c, tag, rs, after):
        return action(c, tag, [b"* SEARCH 1 2\r\n", b""], 1 if action is not closed_midline else 0)
    act.keeps_session = getattr(action, "keeps_session", False)
    return act


NO_TEXT = "NO listing refused by the fake server"
BAD_TEXT = "BAD listing rejected by the fake server"
UNAVAILABLE_TEXT = "NO [UNAVAILABLE] backend down, try again later"

# action name -> (function, exit status)
BREAKS = {
    "bye_in_literal": (bye_in_literal, 75),
    "malformed": (malformed, 75),
    "garbage_item": (garbage_item, 75),
    "big_literal": (big_literal, 75),
    "long_line": (long_line, 75),
    "nul_bytes": (nul_bytes, 75),
    "bye": (bye, 75),
    "closed": (closed, 75),
    "closed_midline": (closed_midline, 75),
    "reset": (reset, 75),
}

# target -> (capabilities, hook kind, responses sent intact before the break)
TARGETS = {
    "listing": (fakeimap.FALLBACK_CAPS, "listing", 2),
    "changedsince": (fakeimap.CONDSTORE_CAPS, "changedsince", 1),
    "select": (fakeimap.QRESYNC_CAPS, "select", 1),
    "search": (fakeimap.CONDSTORE_CAPS, "search", 0),
    "body": (fakeimap.CONDSTORE_CAPS, "body", 0),
}


class Breaks(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mailsync-breaks-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.box = Mailbox()
        for i, flags in enumerate(HISTORY):
            self.box.add(b"From: a@example.org\nTo: b@example.org\nSubject: message %d\n"
                         b"Message-ID: <history-%d@example.org>\n\nbody of message %d\n"
                         % (i, i, i), flags)
        self.maildir = os.path.join(self.tmp, "Mail")
        self.cfg = os.path.join(self.tmp, "config.yaml")

    def sync(self, caps, *flags, hook=None):
        p, srv = mailsync_sync(self.tmp, mailbox_script(self.box, caps, hook), *flags)
        self.assertEqual(srv.errors, [], p.stderr[-3000:])
        return p

    def snapshot(self):
        """The Maildir (every file of INBOX's new/, cur/ and tmp/ with its
        bytes), what `mailsync status --json` says, the LMDB data file's
        bytes, and the server's messages (UIDs and flags)."""
        files = {}
        for sub in ("new", "cur", "tmp"):
            d = os.path.join(self.maildir, "INBOX", sub)
            for name in sorted(os.listdir(d)):
                with open(os.path.join(d, name), "rb") as f:
                    files[sub + "/" + name] = f.read()
        st = mstest.run_mailsync(self.cfg, "status", "--json", "a", timeout=60)
        self.assertEqual(st.returncode, 0, st.stderr)
        with open(os.path.join(self.tmp, "state", "a", "index.mdb", "data.mdb"), "rb") as f:
            data = f.read()
        server = [(m.uid, sorted(m.flags)) for m in self.box.messages]
        return files, json.loads(st.stdout), data, server

    def assert_same_as_server(self):
        local = sorted((b, fl) for _u, fl, b in
                       mstest.maildir_messages(os.path.join(self.maildir, "INBOX")))
        server = sorted((mstest.crlf_to_lf(m.body), letters(m.flags)) for m in self.box.messages)
        self.assertEqual(local, server)

    def prepare(self, target):
        """Changes the server after the clean first run so that the
        target command is sent and has something to list."""
        if target in ("changedsince", "select", "search"):
            for uid, flags in ((2, ["\\Seen"]), (3, ["\\Seen"]), (4, ["\\Answered", "\\Flagged"]),
                               (5, ["\\Draft", "\\Seen"])):
                self.box.set_flags(uid, flags)
        elif target == "body":
            self.box.add(b"From: c@example.org\nSubject: new on the server\n"
                         b"Message-ID: <new-1@example.org>\n\nnew body, " + b"x" * 400 + b"\n",
                         ["\\Seen"])

    def check(self, target, action, status):
        caps, kind, after = TARGETS[target]
        p = self.sync(caps)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assert_same_as_server()
        self.prepare(target)
        before = self.snapshot()
        for flags in ((), ("-q",)):
            fired = []

            def hook(c, tag, k, responses):
                if k != kind or fired:
                    return None
                fired.append(action(c, tag, responses, after))
                return not getattr(action, "keeps_session", False)

            p = self.sync(caps, *flags, hook=hook)
            out = "flags %s\nstdout:\n%s\nstderr:\n%s" % (flags, p.stdout, p.stderr[-4000:])
            self.assertEqual(len(fired), 1, "the %s command was never sent\n%s" % (kind, out))
            print("\n[%s %s] exit %d\n%s%s" % (self.id().split(".")[-1], " ".join(flags),
                                              p.returncode, p.stdout, p.stderr[-1500:]))
            self.assertEqual(p.returncode, status, out)
            lines = [x for x in p.stderr.splitlines()
                     if re.match(r"(error: )?a: INBOX: .*%s" % re.escape(fired[0]), x)]
            self.assertTrue(lines, "no 'a: INBOX: ... %s' line\n%s" % (fired[0], out))
            self.assertEqual(self.snapshot(), before, "a broken run changed local state\n" + out)
        p = self.sync(caps)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assert_same_as_server()
        after_run = self.snapshot()
        self.assertEqual(sum(f["messages"] for f in after_run[1]["accounts"][0]["folders"]),
                         len(self.box.messages))


def add_test(target, name, action, status, doc):
    def test(self):
        self.check(target, action, status)
    test.__doc__ = doc
    setattr(Breaks, "test_%s_%s" % (target, name), test)


for _target in ("listing", "changedsince", "select", "body"):
    for _name, (_fn, _status) in BREAKS.items():
        add_test(_target, _name, _fn, _status,
                 "%s broken by %s: exit 75, cause named, nothing changed locally."
                 % (_target, _name))

add_test("search", "closed", partial_search(closed), 75,
         "A close after a SEARCH result that lacks three UIDs: exit 75, nothing deleted.")
add_test("search", "closed_midline", partial_search(closed_midline), 75,
         "A close in the middle of the SEARCH result: exit 75, nothing deleted.")

_REFUSED_DOC = ("A tagged %s for the %s command after part of its answer. The server refused "
                "the command and nothing says that trying again will help (no response code), "
                "so the folder fails permanently: exit 1 (cmd_ok -> folder_fail), the server's "
                "text in the error, nothing changed locally.")
for _target in ("listing", "changedsince", "search"):
    for _status, _text in (("NO", NO_TEXT), ("BAD", BAD_TEXT)):
        _fn = refused(_text)
        if _target == "search":
            _fn = partial_search(_fn)
        add_test(_target, _status.lower(), _fn, 1, _REFUSED_DOC % (_status, _target))

add_test("listing", "no_unavailable", refused(UNAVAILABLE_TEXT), 75,
         "A tagged NO [UNAVAILABLE] for the flag listing: RFC 5530 says the failure is "
         "temporary (a subsystem is down), as the login's [UNAVAILABLE] already is "
         "(README: exit 75, try later), so the run exits 75 with the server's words.")


if __name__ == "__main__":
    mstest.main()
