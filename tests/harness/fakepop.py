#!/usr/bin/env python3
"""A scripted fake POP3 server for mailsync's tests of what real servers
rarely do: no UIDL, reused UIDLs, a connection dropped in the middle of a
RETR, and hostile replies (an endless line, a body without its "."
terminator).

    with FakePop(msgs, uidls=["a", "b"]) as srv:   # plaintext on 127.0.0.1
        srv.port                                   # its port
        srv.commands                               # every command received
        srv.messages = [...]                       # change the mailbox

Options (attributes, changeable between sessions):
    messages      list of bytes, CRLF line endings, each ending with CRLF
    uidls         list of UIDL strings (default "u1", "u2", ...), or None for
                  a server without UIDL ("-ERR" to UIDL, not in CAPA)
    pipelining    advertise PIPELINING (default True)
    top           support TOP (default True)
    top_fail      set of message numbers whose TOP answers "-ERR [SYS/TEMP]"
    synthetic     (count, first, size): UIDL and LIST list count messages
                  numbered from first, UIDLs "s<number>", each of LIST size
                  size, instead of the mailbox; there is nothing to RETR
    dup_list      a message number LIST names a second time
    drop_in_retr  message number: send half of its body, then close
    endless_in_retr  message number: answer "+OK" and then an endless line
                  (endless_bytes bytes without a line ending, then hang)
    no_terminator_in_retr  message number: send its body without the final
                  ".", then close
    password      accepted password / OAuth token ("pw")
    sasl          SASL mechanisms to offer: PLAIN, XOAUTH2, OAUTHBEARER
    apop          put an APOP timestamp in the greeting and accept APOP
    stls          offer STLS (refused with "-ERR" unless tls_cert is set)
    tls_cert      (certificate file, key file): STLS then starts TLS for real
    stls_inject   answer STLS with "+OK" and a second, injected reply in the
                  same packet
    auth_log      what each login carried, decoded (for assertions)

Deletions (DELE) take effect at QUIT, as RFC 1939 says; a dropped connection
deletes nothing.
"""

import base64
import hashlib
import socket
import socketserver
import ssl
import threading

APOP_STAMP = b"<1896.697170952@fakepop.example>"


def dot_stuff(msg):
    out = []
    for line in msg.split(b"\r\n")[:-1] if msg.endswith(b"\r\n") else msg.split(b"\r\n"):
        out.append(b"." + line if line.startswith(b".") else line)
    return b"\r\n".join(out) + b"\r\n"


class _Handler(socketserver.StreamRequestHandler):
    def send(self, data):
        self.wfile.write(data)
        self.wfile.flush()

    def handle(self):
        try:
            self._session()
        except (ConnectionError, BrokenPipeError):
            pass  # the client went away: that is what some tests do

    def _session(self):
        srv = self.server.fake
        msgs = list(srv.messages)
        uidls = None if srv.uidls is None else list(srv.uidls or ["u%d" % (i + 1) for i in range(len(msgs))])
        deleted = set()
        authed = False
        self.send(b"+OK fakepop ready" + (b" " + APOP_STAMP if srv.apop else b"") + b"\r\n")
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("latin-1")
            with srv.lock:
                srv.commands.append(cmd if not cmd.upper().startswith("PASS ") else "PASS <redacted>")
            word = cmd.split(" ", 1)[0].upper()
            args = cmd.split()[1:]
            if word == "CAPA":
                caps = ["USER", "RESP-CODES"] + (["TOP"] if srv.top else [])
                if uidls is not None:
                    caps.append("UIDL")
                if srv.pipelining:
                    caps.append("PIPELINING")
                if srv.sasl:
                    caps.append("SASL " + " ".join(srv.sasl))
                if srv.stls:
                    caps.append("STLS")
                self.send(b"+OK\r\n" + b"".join(c.encode() + b"\r\n" for c in caps) + b".\r\n")
            elif word == "STLS" and srv.stls:
                if srv.stls_inject:
                    self.send(b"+OK begin TLS\r\n+OK injected\r\n")
                elif srv.tls_cert:
                    self.send(b"+OK begin TLS\r\n")
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    ctx.load_cert_chain(*srv.tls_cert)
                    self.request = ctx.wrap_socket(self.request, server_side=True)
                    self.rfile = self.request.makefile("rb")
                    self.wfile = self.request.makefile("wb")
                else:
                    self.send(b"-ERR no TLS in this fake\r\n")
            elif word == "USER":
                self.send(b"+OK\r\n")
            elif word == "APOP" and srv.apop and len(args) == 2:
                want = hashlib.md5(APOP_STAMP + srv.password.encode()).hexdigest()
                self._log(srv, ("APOP", args[0], args[1] == want))
                if args[1] == want:
                    authed = True
                    self.send(b"+OK logged in\r\n")
                else:
                    self.send(b"-ERR [AUTH] bad digest\r\n")
            elif word == "AUTH" and args and args[0].upper() in srv.sasl:
                mech = args[0].upper()
                if len(args) > 1:
                    resp = args[1]
                    two_step = False
                else:
                    self.send(b"+ \r\n")
                    resp = self.rfile.readline(65536).rstrip(b"\r\n").decode("latin-1")
                    two_step = True
                try:
                    raw = base64.b64decode(resp)
                except ValueError:
                    raw = b""
                ok, user = self._check_sasl(srv, mech, raw)
                self._log(srv, (mech, user, ok, two_step))
                if ok:
                    authed = True
                    self.send(b"+OK logged in\r\n")
                elif mech in ("XOAUTH2", "OAUTHBEARER"):
                    # RFC 7628 / Google: an error challenge, then the
                    # client's dummy answer, then -ERR.
                    self.send(b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n")
                    answer = self.rfile.readline(4096).rstrip(b"\r\n")
                    self._log(srv, ("answer", answer))
                    self.send(b"-ERR [AUTH] bad token\r\n")
                else:
                    self.send(b"-ERR [AUTH] bad password\r\n")
            elif word == "PASS":
                if args and args[0] == srv.password:
                    authed = True
                    self.send(b"+OK logged in\r\n")
                else:
                    self.send(b"-ERR [AUTH] bad password\r\n")
            elif word == "QUIT":
                if authed:
                    with srv.lock:
                        srv.messages = [m for i, m in enumerate(msgs) if i + 1 not in deleted]
                        if srv.uidls:
                            srv.uidls = [u for i, u in enumerate(uidls) if i + 1 not in deleted]
                self.send(b"+OK bye\r\n")
                return
            elif not authed:
                self.send(b"-ERR not logged in\r\n")
            elif word == "STAT":
                self.send(b"+OK %d %d\r\n" % (len(msgs), sum(len(m) for m in msgs)))
            elif word in ("UIDL", "LIST") and not args and srv.synthetic:
                count, first, size = srv.synthetic
                fmt = b"%d s%d\r\n" if word == "UIDL" else b"%d %d\r\n"
                if word == "UIDL":
                    body = b"".join(fmt % (n, n) for n in range(first, first + count))
                else:
                    body = b"".join(fmt % (n, size) for n in range(first, first + count))
                self.send(b"+OK\r\n" + body + b".\r\n")
            elif word == "UIDL" and not args:
                if uidls is None:
                    self.send(b"-ERR no UIDL here\r\n")
                else:
                    body = b"".join(b"%d %s\r\n" % (i + 1, u.encode()) for i, u in enumerate(uidls)
                                    if i + 1 not in deleted)
                    self.send(b"+OK\r\n" + body + b".\r\n")
            elif word == "LIST" and not args:
                body = b"".join(b"%d %d\r\n" % (i + 1, len(m)) for i, m in enumerate(msgs) if i + 1 not in deleted)
                if srv.dup_list:
                    body += b"%d 10\r\n" % srv.dup_list
                self.send(b"+OK\r\n" + body + b".\r\n")
            elif word == "TOP" and not srv.top:
                self.send(b"-ERR no TOP here\r\n")
            elif word in ("RETR", "TOP") and args:
                n = int(args[0])
                if n < 1 or n > len(msgs) or n in deleted:
                    self.send(b"-ERR no such message\r\n")
                    continue
                msg = msgs[n - 1]
                if word == "TOP" and n in srv.top_fail:
                    self.send(b"-ERR [SYS/TEMP] try later\r\n")
                    continue
                if word == "TOP":
                    head = msg.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                    self.send(b"+OK\r\n" + dot_stuff(head) + b".\r\n")
                    continue
                if n == srv.drop_in_retr:
                    body = dot_stuff(msg)
                    self.send(b"+OK %d octets\r\n" % len(msg) + body[: len(body) // 2])
                    self._close()
                    return
                if n == srv.endless_in_retr:
                    self.send(b"+OK\r\nSubject: endless\r\n\r\n")
                    chunk = b"x" * 65536
                    sent = 0
                    try:
                        while sent < srv.endless_bytes:
                            self.send(chunk)
                            sent += len(chunk)
                    except OSError:
                        return
                    # Hang until the client gives up.
                    try:
                        self.rfile.read()
                    except OSError:
                        pass
                    return
                if n == srv.no_terminator_in_retr:
                    self.send(b"+OK\r\n" + dot_stuff(msg))
                    self._close()
                    return
                self.send(b"+OK %d octets\r\n" % len(msg) + dot_stuff(msg) + b".\r\n")
            elif word == "DELE" and args:
                deleted.add(int(args[0]))
                self.send(b"+OK deleted\r\n")
            elif word == "NOOP":
                self.send(b"+OK\r\n")
            elif word == "RSET":
                deleted.clear()
                self.send(b"+OK\r\n")
            else:
                self.send(b"-ERR unknown command\r\n")

    @staticmethod
    def _log(srv, entry):
        with srv.lock:
            srv.auth_log.append(entry)

    @staticmethod
    def _check_sasl(srv, mech, raw):
        pw = srv.password.encode()
        if mech == "PLAIN":
            parts = raw.split(b"\0")
            return len(parts) == 3 and parts[2] == pw, parts[1].decode() if len(parts) == 3 else None
        fields = raw.split(b"\x01")
        if mech == "XOAUTH2":
            user = fields[0][5:].decode() if fields[0].startswith(b"user=") else None
            return b"auth=Bearer " + pw in fields and raw.endswith(b"\x01\x01"), user
        if mech == "OAUTHBEARER":
            gs2 = fields[0].split(b",")
            user = gs2[1][2:].decode() if len(gs2) > 1 and gs2[1].startswith(b"a=") else None
            return (gs2[0] == b"n" and b"auth=Bearer " + pw in fields and any(f.startswith(b"host=") for f in fields)
                    and raw.endswith(b"\x01\x01")), user
        return False, None

    def _close(self):
        """Ends the connection with a FIN after what was sent: pipelined
        commands still unread are drained first, since closing with unread
        input makes the kernel send a RST, which may discard data the client
        has not read yet and would make the tests racy."""
        try:
            self.wfile.flush()
            self.request.shutdown(socket.SHUT_WR)
            self.request.settimeout(0.5)
            while self.request.recv(65536):
                pass
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakePop:
    def __init__(self, messages=(), uidls=(), pipelining=True, password="pw"):
        self.messages = list(messages)
        # () means "u1", "u2", ... per message; None means no UIDL at all.
        self.uidls = None if uidls is None else list(uidls)
        self.pipelining = pipelining
        self.password = password
        self.sasl = []
        self.top = True
        self.top_fail = set()
        self.synthetic = None
        self.dup_list = None
        self.apop = False
        self.stls = False
        self.stls_inject = False
        self.tls_cert = None
        self.auth_log = []
        self.drop_in_retr = None
        self.endless_in_retr = None
        self.endless_bytes = 4 * 1024 * 1024
        self.no_terminator_in_retr = None
        self.commands = []
        self.lock = threading.Lock()
        self._srv = _Server(("127.0.0.1", 0), _Handler)
        self._srv.fake = self
        self.port = self._srv.server_address[1]
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._srv.shutdown()
        self._srv.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
