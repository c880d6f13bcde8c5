"""A scripted fake IMAP server for what a real Dovecot will not do on
demand: BYE in the middle of a literal, connection resets, plaintext
injected after STARTTLS, silence, malformed or oversized responses.

    def script(c):                      # runs in a thread per connection
        c.greet()                       # "* OK [CAPABILITY ...] fake"
        c.serve({"SELECT": on_select})  # answers the login sequence and
                                        # common commands; handlers for the
                                        # rest (return True to stop serving)
    with FakeIMAP(script, tls="implicit") as srv:
        run imapcli against 127.0.0.1:srv.port with --ca srv.ca_cert

The server listens on 127.0.0.1 on a free port, in a thread; TLS uses a
test CA made with the same openssl helpers as the Dovecot harness
(certificate for localhost and 127.0.0.1). Exceptions raised by a script
are kept in srv.errors so that a test can assert there were none.
"""

import base64
import os
import re
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time

import dovecot

# Capabilities after login unless a script says otherwise.
DEFAULT_CAPS = "IMAP4rev1 SASL-IR AUTH=PLAIN ID ENABLE IDLE UIDPLUS LITERAL+"

_pki_lock = threading.Lock()
_pki = None


def test_pki():
    """(ca_cert, server_cert, server_key), made once per process."""
    global _pki
    with _pki_lock:
        if _pki is None:
            d = tempfile.mkdtemp(prefix="mailsync-fakeimap-")
            ca = dovecot._make_ca(d, "ca", "mailsync fake IMAP test CA")
            leaf = dovecot._issue(d, ca, "server")
            _pki = (ca + ".pem", leaf + ".pem", leaf + ".key", d)
        return _pki[:3]


def cleanup_pki():
    global _pki
    with _pki_lock:
        if _pki is not None:
            shutil.rmtree(_pki[3], ignore_errors=True)
            _pki = None


class Closed(Exception):
    """The client closed the connection."""


class Conn:
    """One client connection as seen by a script."""

    def __init__(self, server, sock):
        self.server = server
        self.sock = sock
        self.buf = b""
        self.caps = DEFAULT_CAPS
        self.commands = []  # every command line received, decoded
        self.user = None

    # -- raw I/O ------------------------------------------------------------

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed()
        self.buf += chunk

    def line(self):
        """The next CRLF-terminated line, without CRLF (bytes)."""
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def command(self):
        """(tag, VERB, rest-of-line str, raw line bytes). Synchronizing
        literals are answered with "+" and their bytes appended to the raw
        line; non-synchronizing ones are read directly."""
        raw = self.line()
        while True:
            m = re.search(rb"\{(\d+)(\+?)\}$", raw)
            if not m:
                break
            if not m.group(2):
                self.send("+ go ahead\r\n")
            n = int(m.group(1))
            raw = raw + b"\r\n" + self.read_exact(n) + self.line()
        text = raw.decode("utf-8", "replace")
        self.commands.append(text)
        parts = text.split(" ", 2)
        tag = parts[0]
        verb = parts[1].upper() if len(parts) > 1 else ""
        rest = parts[2] if len(parts) > 2 else ""
        if verb == "UID" and rest:
            sub, _, rest = rest.partition(" ")
            verb = "UID " + sub.upper()
        return tag, verb, rest, raw

    def starttls(self):
        ctx = self.server.server_context()
        self.sock = ctx.wrap_socket(self.sock, server_side=True)

    def reset(self):
        """Closes with a TCP RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # -- scripted behaviour ---------------------------------------------------

    def greet(self, caps="IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+", text="fake IMAP ready"):
        self.send("* OK [CAPABILITY %s] %s\r\n" % (caps, text) if caps else "* OK %s\r\n" % text)

    def ok(self, tag, text="done"):
        self.send("%s OK %s\r\n" % (tag, text))

    def finish(self, timeout=5):
        """Closes the connection with a FIN however many pipelined commands
        the client sent that were never read (closing a socket with unread
        data sends a RST, and the client would see a reset instead):
        writing is shut down first, then the client's bytes are read until
        it closes."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.wait_closed(timeout)

    def wait_closed(self, timeout=5):
        """Reads and drops whatever the client sends until it closes the
        connection (or timeout seconds pass), so that the client meets an
        error of its own before the server's close could explain it."""
        self.sock.settimeout(timeout)
        try:
            while True:
                self._fill()
                self.buf = b""
        except (Closed, OSError):
            pass

    def serve(self, handlers=None, stop_after=None):
        """Answers commands until a handler returns True, the client logs
        out or closes. Handlers: VERB -> fn(conn, tag, rest, raw)."""
        handlers = handlers or {}
        while True:
            try:
                tag, verb, rest, raw = self.command()
            except Closed:
                return
            h = handlers.get(verb)
            if h is not None:
                if h(self, tag, rest, raw):
                    return
                continue
            if not self.default(tag, verb, rest, raw):
                return

    def default(self, tag, verb, rest, raw):
        if verb == "CAPABILITY":
            self.send("* CAPABILITY %s\r\n" % self.caps)
            self.ok(tag)
        elif verb == "AUTHENTICATE":
            mech, _, ir = rest.partition(" ")
            if not ir:
                self.send("+ \r\n")
                ir = self.line().decode()
            parts = base64.b64decode(ir).split(b"\0")
            self.user = parts[1].decode()
            self.send("%s OK [CAPABILITY %s] Logged in\r\n" % (tag, self.caps))
        elif verb == "LOGIN":
            self.user = rest.split(" ", 1)[0]
            self.send("%s OK [CAPABILITY %s] Logged in\r\n" % (tag, self.caps))
        elif verb == "ID":
            self.send('* ID ("name" "fake")\r\n')
            self.ok(tag)
        elif verb == "ENABLE":
            # Enables what was asked for and is offered, as a server does.
            offered = self.caps.upper().split()
            on = [x for x in rest.split() if x.upper() in offered]
            if on:
                self.send("* ENABLED %s\r\n" % " ".join(on))
            self.ok(tag)
        elif verb == "LIST" and rest.startswith('"" ""'):
            self.send('* LIST (\\Noselect) "/" ""\r\n')
            self.ok(tag)
        elif verb in ("LIST", "LSUB"):
            self.send('* %s () "/" INBOX\r\n' % verb)
            self.ok(tag)
        elif verb in ("SELECT", "EXAMINE"):
            self.send("* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n")
            self.send("%s OK [READ-WRITE] selected\r\n" % tag)
        elif verb in ("NOOP", "CREATE", "DELETE"):
            self.ok(tag)
        elif verb == "LOGOUT":
            self.send("* BYE bye\r\n")
            self.ok(tag)
            self.close()
            return False
        else:
            self.send("%s BAD unknown command\r\n" % tag)
        return True


class FakeIMAP:
    """A listening fake server. tls: None (plaintext, STARTTLS possible via
    Conn.starttls) or "implicit"."""

    def __init__(self, script, tls="implicit"):
        self.script = script
        self.tls = tls
        self.ca_cert, self.cert, self.key = test_pki()
        self.errors = []
        self.conns = []
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.stopping = False
        self.threads = []
        self.accept_thread = threading.Thread(target=self._accept, daemon=True)

    def server_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def start(self):
        self.accept_thread.start()
        return self

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._run, args=(s,), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, s):
        try:
            if self.tls == "implicit":
                s = self.server_context().wrap_socket(s, server_side=True)
            c = Conn(self, s)
            self.conns.append(c)
            self.script(c)
        except (Closed, ConnectionError, ssl.SSLError, BrokenPipeError):
            pass
        except Exception as e:  # noqa: BLE001 - reported to the test
            self.errors.append(repr(e))
        finally:
            try:
                s.close()
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        try:
            self.lsock.close()
        except OSError:
            pass
        for t in self.threads:
            t.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


# -- a proxy that acts on the client's commands --------------------------------


class CommandProxy:
    """A proxy on 127.0.0.1 in front of a real server (the test Dovecot's
    plaintext port; the account needs tls: none and allow_plaintext), for
    what a byte-offset cut (cutproxy.py) cannot aim at: a given command of
    a given connection, or an order between connections.

        proxy = CommandProxy.for_test(self, self.dovecot.port_imap)
        proxy.on_command = lambda proxy, n, line: ...
        ... account with host 127.0.0.1, port proxy.port ...

    on_command(proxy, n, line) sees every line the client sends (str, CRLF
    stripped; n counts the connections from 1 since the last arm()) before
    it is forwarded, and returns "reset" to reset that connection instead
    (both sides get a RST; the line never reaches the server), ("rewrite",
    LINE) to send LINE in its place (a server that accepts a command it
    never carries out), or None.
    hold(n) stops forwarding what the server sends on connection n until
    release(n) (or HOLD_LIMIT seconds, so that a test fails rather than
    hangs): a test makes one connection wait for another. resets lists the
    (n, line) of each reset."""

    HOLD_LIMIT = 30

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.lock = threading.Lock()
        self.on_command = None
        self.resets = []
        self.conns = 0
        self.gates = {}  # n -> threading.Event, set when it may forward
        self.socks = []
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def for_test(cls, test, target_port):
        proxy = cls(target_port)
        test.addCleanup(proxy.close)
        return proxy

    def arm(self, on_command=None):
        """Starts counting connections anew with on_command (None: forward
        everything)."""
        with self.lock:
            self.on_command = on_command
            self.resets = []
            self.conns = 0
            for g in self.gates.values():
                g.set()
            self.gates = {}

    def gate(self, n):
        with self.lock:
            return self.gates.setdefault(n, threading.Event())

    def hold(self, n):
        self.gate(n).clear()

    def release(self, n):
        self.gate(n).set()

    def close(self):
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            for g in self.gates.values():
                g.set()
            socks, self.socks = self.socks, []
        for sk in socks:
            try:
                sk.close()
            except OSError:
                pass

    def _accept(self):
        while True:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.conns += 1
                n = self.conns
                self.socks += [client, server]
            gate = self.gate(n)
            gate.set()
            threading.Thread(target=self._client_side, args=(n, client, server),
                             daemon=True).start()
            threading.Thread(target=self._server_side, args=(gate, client, server),
                             daemon=True).start()

    def _client_side(self, n, client, server):
        buf = b""
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    server.shutdown(socket.SHUT_WR)
                    return
                sent = len(buf)  # the start of an unfinished line, forwarded before
                buf += data
                *lines, buf = buf.split(b"\r\n")
                hook = self.on_command
                out = data
                for i, line in enumerate(lines):
                    text = line.decode("utf-8", "replace")
                    verdict = hook(self, n, text) if hook is not None else None
                    if verdict == "reset":
                        with self.lock:
                            self.resets.append((n, text))
                        for sk in (client, server):
                            sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
                            sk.close()
                        return
                    if isinstance(verdict, tuple) and verdict[0] == "rewrite":
                        lines[i] = verdict[1].encode()
                        out = None
                if out is None:
                    # Rewritten: this chunk's part of the lines as they now
                    # read (a line begun in an earlier chunk keeps its
                    # forwarded start), then the start of the next one.
                    out = b"".join(line + b"\r\n" for line in lines) + buf
                    server.sendall(out[sent:])
                    continue
                server.sendall(data)
        except OSError:
            pass

    def _server_side(self, gate, client, server):
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    client.shutdown(socket.SHUT_WR)
                    return
                gate.wait(self.HOLD_LIMIT)
                client.sendall(data)
        except OSError:
            pass


# -- a folder with state ------------------------------------------------------

# Capabilities after login of the three profiles the sync tests use.
FALLBACK_CAPS = DEFAULT_CAPS
CONDSTORE_CAPS = DEFAULT_CAPS + " CONDSTORE"
QRESYNC_CAPS = DEFAULT_CAPS + " CONDSTORE QRESYNC"

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class Message:
    def __init__(self, uid, body, flags, modseq, date, emailid=None):
        self.uid = uid
        self.body = body  # CRLF bytes, as on the wire
        self.flags = list(flags)
        self.modseq = modseq
        self.date = date  # INTERNALDATE text
        # RFC 8474's EMAILID, answered to FETCH EMAILID when set (serve it
        # with OBJECTID among the caps); a move keeps it.
        self.emailid = emailid


class Mailbox:
    """The server side of one folder, INBOX, kept from run to run so that
    a test can sync it cleanly, change it, then serve a broken run and a
    clean one (mailbox_script). Every change raises HIGHESTMODSEQ, as
    CONDSTORE requires."""

    def __init__(self, uidvalidity=7, mailboxid=None):
        self.uidvalidity = uidvalidity
        # RFC 8474's MAILBOXID: said in STATUS and SELECT when set (serve
        # it with OBJECTID among the caps); a RENAME keeps it.
        self.mailboxid = mailboxid
        self.messages = []  # in UID order
        self.uidnext = 1
        self.modseq = 1
        self.expunged = []  # (uid, modseq), for VANISHED (EARLIER)

    def bump(self):
        self.modseq += 1
        return self.modseq

    def add(self, body, flags=(), date="02-Jan-2023 10:00:00 +0000", emailid=None):
        """Adds body (LF or CRLF bytes) as a new message; returns its UID."""
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        m = Message(self.uidnext, body, flags, self.bump(), date, emailid)
        self.messages.append(m)
        self.uidnext += 1
        return m.uid

    def set_flags(self, uid, flags):
        m = self.get(uid)
        m.flags = list(flags)
        m.modseq = self.bump()

    def get(self, uid):
        for m in self.messages:
            if m.uid == uid:
                return m
        raise KeyError(uid)

    def seq(self, m):
        return self.messages.index(m) + 1

    def uids(self, uidset):
        """The messages a UID set names (RFC 3501: "n:*" holds the last
        message even when its UID is below n)."""
        top = self.messages[-1].uid if self.messages else 0
        out = []
        for part in uidset.split(","):
            lo, _, hi = part.partition(":")
            lo = top if lo == "*" else int(lo)
            hi = lo if not hi else (top if hi == "*" else int(hi))
            lo, hi = min(lo, hi), max(lo, hi)
            out += [m for m in self.messages if lo <= m.uid <= hi and m not in out]
        return sorted(out, key=lambda m: m.uid)

    def expunge(self, msgs):
        """Removes msgs; returns their sequence numbers as they were
        reported one after the other (highest first keeps them valid)."""
        seqs = []
        for m in sorted(msgs, key=lambda m: -m.uid):
            seqs.append(self.seq(m))
            self.messages.remove(m)
            self.expunged.append((m.uid, self.bump()))
        return seqs


def _flag_list(flags):
    return "(%s)" % " ".join(flags)


def fetch_response(box, m, items, modseq=False):
    """One untagged FETCH response (bytes, CRLF-terminated) for message m
    and the items of a UID FETCH command line."""
    head = "* %d FETCH (UID %d" % (box.seq(m), m.uid)
    if "FLAGS" in items.upper():
        head += " FLAGS %s" % _flag_list(m.flags)
    if "RFC822.SIZE" in items.upper():
        head += " RFC822.SIZE %d" % len(m.body)
    if "INTERNALDATE" in items.upper():
        head += ' INTERNALDATE "%s"' % m.date
    if modseq or "MODSEQ" in items.upper():
        head += " MODSEQ (%d)" % m.modseq
    if re.search(r"\bEMAILID\b", items.upper()) and m.emailid is not None:
        head += " EMAILID (%s)" % m.emailid
    out = head.encode()
    header = m.body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    if "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]" in items.upper():
        field = b"".join(line + b"\r\n" for line in header.split(b"\r\n")
                         if line.lower().startswith(b"message-id:")) + b"\r\n"
        out += b" BODY[HEADER.FIELDS (MESSAGE-ID)] {%d}\r\n%s" % (len(field), field)
    if "BODY.PEEK[HEADER]" in items.upper():
        out += b" BODY[HEADER] {%d}\r\n%s" % (len(header), header)
    if "BODY.PEEK[]" in items.upper():
        out += b" BODY[] {%d}\r\n%s" % (len(m.body), m.body)
    return out + b")\r\n"


def fetch_kind(rest):
    """What a UID FETCH (rest: the line after "UID FETCH") is for:
    "body" (BODY.PEEK[]), "changedsince" (a CONDSTORE flag listing),
    "listing" (the full flag scan: 1:*, or 1:N of the messages the last
    complete sync knew, which are listed without size and date),
    "fetch" (anything else)."""
    r = rest.upper()
    if "BODY.PEEK[]" in r:
        return "body"
    if "CHANGEDSINCE" in r:
        return "changedsince"
    if re.match(r"1:(\*|\d+) ", r) and "FLAGS" in r:
        return "listing"
    return "fetch"


def _atom_or_quoted(name):
    """A folder name as a server writes it in LIST and STATUS: an atom when
    it is one, else a quoted mUTF-7 string."""
    return name if re.fullmatch(r"[A-Za-z0-9_./-]+", name) else dovecot.imap_mailbox(name)


def _mailbox_arg(rest):
    """(folder name, rest of the line) of a command whose first argument
    is a mailbox (an atom or a quoted string, mUTF-7)."""
    m = re.match(r'"((?:[^"\\]|\\.)*)"|(\S+)', rest)
    if m.group(1) is not None:
        name = dovecot.mutf7_decode(re.sub(r"\\(.)", r"\1", m.group(1)))
    else:
        name = m.group(2)
    if name.upper() == "INBOX":
        name = "INBOX"
    return name, rest[m.end():].lstrip(" ")


def mailbox_script(box, caps=QRESYNC_CAPS, hook=None):
    """A script serving box as the account's only folder, INBOX, with caps
    after login (FALLBACK_CAPS, CONDSTORE_CAPS or QRESYNC_CAPS).

    box may also be a dict {folder name: Mailbox} (INBOX spelt "INBOX"):
    then every one of them is listed and served, and a SELECT on a
    connection that has a folder selected and QRESYNC enabled first
    announces the end of the old one with "* OK [CLOSED]" (RFC 7162
    section 3.2.11), offered to the hook as kind "closed" (responses: that
    one line; a hook that answers returns False to go on with the SELECT,
    after sending what it likes of the old folder's data, with or without
    the [CLOSED]; c.folder is still the old folder's name, the SELECT is
    c.commands[-1]). UID SEARCH also understands HEADER Message-ID "<id>"
    (the lookup of uploads an interrupted run left unresolved).

    hook(c, tag, kind, responses) is offered every command that lists or
    downloads before it is answered: kind is "select" (responses: the
    QRESYNC resync part, VANISHED and FETCH, of a SELECT answer; the rest
    was sent already), "listing", "changedsince", "fetch", "body" (a UID
    FETCH, see fetch_kind) or "search"; responses are the untagged
    responses (bytes, each ending in CRLF) the server would send before
    its tagged OK. A hook that answers the command itself returns True to
    end the session there (the socket is closed) or False to go on serving
    the next commands; None lets the server answer normally. Commands the script does not know are errors of the
    script (srv.errors), so a test never passes on a half-served run."""

    boxes = box if isinstance(box, dict) else {"INBOX": box}

    def verb_of(raw):
        return raw.split(b" ", 2)[1].decode().upper()

    def fail(c, tag, why):
        c.server.errors.append(why)
        c.send("%s BAD %s\r\n" % (tag, why))

    def offer(c, tag, kind, responses, ok):
        took = hook(c, tag, kind, responses) if hook is not None else None
        if took is not None:
            return took
        c.send(b"".join(responses))
        c.send("%s OK %s\r\n" % (tag, ok))
        return False

    def on_enable(c, tag, rest, raw):
        words = rest.upper().split()
        c.condstore = c.condstore or "CONDSTORE" in words or "QRESYNC" in words
        c.qresync = c.qresync or "QRESYNC" in words
        c.default(tag, "ENABLE", rest, raw)

    def status_line(name, asked):
        """The untagged STATUS of folder name for the items asked (a list
        of item names); MAILBOXID only for a box that has one."""
        box = boxes[name]
        values = {"MESSAGES": len(box.messages), "UIDNEXT": box.uidnext,
                  "UIDVALIDITY": box.uidvalidity, "HIGHESTMODSEQ": box.modseq,
                  "RECENT": 0, "UNSEEN": len([m for m in box.messages if "\\Seen" not in m.flags])}
        items = ["%s %d" % (k, values[k]) for k in asked if k in values]
        if "MAILBOXID" in asked and box.mailboxid is not None:
            items.append("MAILBOXID (%s)" % box.mailboxid)
        return "* STATUS %s (%s)\r\n" % (_atom_or_quoted(name), " ".join(items))

    def on_list(c, tag, rest, raw):
        if rest.startswith('"" ""'):
            c.send('* LIST (\\Noselect) "/" ""\r\n')
        else:
            # LIST-STATUS (RFC 5819): RETURN (... STATUS (items)) adds each
            # folder's STATUS after its LIST line.
            st = re.search(r"\bSTATUS \(([^)]*)\)", rest, re.I)
            for name in boxes:
                c.send('* %s (\\HasNoChildren) "/" %s\r\n' % (verb_of(raw), _atom_or_quoted(name)))
                if st and verb_of(raw) == "LIST":
                    c.send(status_line(name, st.group(1).upper().split()))
        c.ok(tag)

    def on_status(c, tag, rest, raw):
        name, rest = _mailbox_arg(rest)
        asked = re.search(r"\(([^)]*)\)", rest).group(1).upper().split()
        c.send(status_line(name, asked))
        c.ok(tag)

    def on_select(c, tag, rest, raw):
        name, params = _mailbox_arg(rest)
        if name not in boxes:
            c.send("%s NO [NONEXISTENT] no such folder\r\n" % tag)
            return None
        box = boxes[name]
        if c.selected and c.qresync and len(boxes) > 1:
            took = (hook(c, tag, "closed", [b"* OK [CLOSED] previous mailbox closed\r\n"])
                    if hook is not None else None)
            if took:
                return True
            if took is None:
                c.send("* OK [CLOSED] previous mailbox closed\r\n")
        c.box, c.folder, c.selected = box, name, True
        upper = params.upper()
        c.condstore = c.condstore or "CONDSTORE" in upper or "QRESYNC" in upper
        c.send("* FLAGS (%s)\r\n* OK [PERMANENTFLAGS (%s \\*)] ok\r\n"
               % (" ".join(SYSTEM_FLAGS), " ".join(SYSTEM_FLAGS)))
        c.send("* %d EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY %d] ok\r\n* OK [UIDNEXT %d] ok\r\n"
               % (len(box.messages), box.uidvalidity, box.uidnext))
        if c.condstore:
            c.send("* OK [HIGHESTMODSEQ %d] ok\r\n" % box.modseq)
        if box.mailboxid is not None:
            c.send("* OK [MAILBOXID (%s)] ok\r\n" % box.mailboxid)
        responses = []
        q = re.search(r"\(QRESYNC \((\d+) (\d+)", upper)
        if q and c.qresync and int(q.group(1)) == box.uidvalidity:
            since = int(q.group(2))
            gone = [u for u, ms in box.expunged if ms > since]
            if gone:
                responses.append(("* VANISHED (EARLIER) %s\r\n"
                                  % ",".join(map(str, sorted(gone)))).encode())
            responses += [fetch_response(box, m, "FLAGS", modseq=True)
                          for m in box.messages if m.modseq > since]
        ro = verb_of(raw) == "EXAMINE"
        return offer(c, tag, "select", responses, "[READ-%s] selected" % ("ONLY" if ro else "WRITE"))

    def on_fetch(c, tag, rest, raw):
        box = c.box
        uidset, _, items = rest.partition(" ")
        msgs = box.uids(uidset)
        cs = re.search(r"\(CHANGEDSINCE (\d+)( VANISHED)?\)\s*$", items, re.I)
        if cs:
            c.condstore = True
            msgs = [m for m in msgs if m.modseq > int(cs.group(1))]
            items = items[:cs.start()]
        responses = [fetch_response(box, m, items, modseq=c.condstore) for m in msgs]
        return offer(c, tag, fetch_kind(rest), responses, "fetched")

    def on_search(c, tag, rest, raw):
        box = c.box
        crit = re.sub(r"^RETURN \(ALL\) ", "", rest, flags=re.I)
        m = re.fullmatch(r"UID (\S+)", crit, re.I)
        h = re.fullmatch(r'HEADER Message-ID "([^"\\]*)"', crit, re.I)
        if h:
            field = ("message-id: " + h.group(1)).lower().encode()
            uids = [x.uid for x in box.messages
                    if field in x.body.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")]
        elif not m:
            return fail(c, tag, "fake server cannot search for %r" % rest)
        else:
            uids = [x.uid for x in box.uids(m.group(1))]
        if rest.upper().startswith("RETURN"):
            return fail(c, tag, "ESEARCH is not offered")
        return offer(c, tag, "search", [("* SEARCH%s\r\n" % "".join(" %d" % u for u in uids))
                                        .encode()], "searched")

    def on_store(c, tag, rest, raw):
        m = re.fullmatch(r"(\S+) (?:\(UNCHANGEDSINCE (\d+)\) )?([+-]?)FLAGS(?:\.SILENT)? \((.*)\)",
                         rest, re.I)
        if not m:
            return fail(c, tag, "fake server cannot store %r" % rest)
        flags = m.group(4).split()
        modified = []
        box = c.box
        for msg in box.uids(m.group(1)):
            if m.group(2) and msg.modseq > int(m.group(2)):
                modified.append(msg.uid)
                continue
            if m.group(3) == "+":
                new = msg.flags + [f for f in flags if f not in msg.flags]
            elif m.group(3) == "-":
                new = [f for f in msg.flags if f not in flags]
            else:
                new = flags
            if new != msg.flags:
                box.set_flags(msg.uid, new)
        code = "[MODIFIED %s] " % ",".join(map(str, modified)) if modified else ""
        c.ok(tag, code + "stored")

    def on_append(c, tag, rest, raw):
        m = re.match(rb'[^ ]+ [^ ]+ ("[^"]*"|[^ "]+) (?:\(([^)]*)\) )?(?:"([^"]*)" )?'
                     rb'\{(\d+)\+?\}\r\n', raw, re.I)
        name = _mailbox_arg(m.group(1).decode())[0] if m else None
        if name not in boxes:
            return fail(c, tag, "fake server cannot parse APPEND %r" % raw[:200])
        box = boxes[name]
        body = raw[m.end():m.end() + int(m.group(4))]
        kw = {}
        if m.group(3):
            kw["date"] = m.group(3).decode()
        uid = box.add(body, (m.group(2) or b"").decode().split(), **kw)
        c.ok(tag, "[APPENDUID %d %d] appended" % (box.uidvalidity, uid))

    def expunge(c, msgs, silent=False):
        box = c.box
        seqs = box.expunge([m for m in msgs if "\\Deleted" in m.flags])
        if silent:
            return
        if c.qresync and seqs:
            c.send("* VANISHED %s\r\n" % ",".join(str(u) for u, _ms in box.expunged[-len(seqs):]))
        else:
            c.send("".join("* %d EXPUNGE\r\n" % s for s in seqs))

    def on_uid_expunge(c, tag, rest, raw):
        expunge(c, c.box.uids(rest))
        c.ok(tag)

    def on_expunge(c, tag, rest, raw):
        expunge(c, list(c.box.messages))
        c.ok(tag)

    def on_close(c, tag, rest, raw):
        expunge(c, list(c.box.messages), silent=True)
        c.selected = False
        c.ok(tag)

    def on_unselect(c, tag, rest, raw):
        c.selected = False
        c.ok(tag)

    def script(c):
        c.caps = caps
        c.condstore = c.qresync = False
        # The folder of the last SELECT (c.folder its name) and whether it
        # is still selected (CLOSE and UNSELECT end that).
        c.box = None if len(boxes) > 1 else boxes["INBOX"]
        c.folder = None
        c.selected = False
        c.greet(caps="IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+")
        handlers = {"ENABLE": on_enable, "LIST": on_list, "LSUB": on_list, "STATUS": on_status,
                    "SELECT": on_select, "EXAMINE": on_select, "UID FETCH": on_fetch,
                    "UID SEARCH": on_search, "UID STORE": on_store, "APPEND": on_append,
                    "UID EXPUNGE": on_uid_expunge, "EXPUNGE": on_expunge, "CLOSE": on_close,
                    "UNSELECT": on_unselect}
        c.serve(handlers)

    return script


def wait_for(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def mailsync_sync(tmp, script, *flags, password="pw", **account):
    """Runs `mailsync [flags] sync a` once against a fake server running
    script: account a with its Maildir (tmp/Mail) and state (tmp/state)
    kept from run to run; account holds further settings of the account
    (e.g. max_connections=1). Returns (CompletedProcess, server), the
    server stopped, with its connections (commands seen) and errors."""
    import mstest  # the harness module that runs the binary

    with FakeIMAP(script) as srv:
        acct = {"host": "127.0.0.1", "port": srv.port, "tls": "implicit",
                "ca_file": srv.ca_cert, "user": "alice", "password": password,
                "maildir": os.path.join(tmp, "Mail")}
        acct.update(account)
        cfg = os.path.join(tmp, "config.yaml")
        dovecot.write_mailsync_config(cfg, {"a": acct}, state_dir=os.path.join(tmp, "state"))
        p = mstest.run_mailsync(cfg, *flags, "sync", "a", timeout=60)
    return p, srv
