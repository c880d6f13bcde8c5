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


def wait_for(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def mailsync_sync(tmp, script, *flags, password="pw"):
    """Runs `mailsync [flags] sync a` once against a fake server running
    script: account a with its Maildir (tmp/Mail) and state (tmp/state)
    kept from run to run. Returns (CompletedProcess, server), the server
    stopped, with its connections (commands seen) and errors."""
    import mstest  # the harness module that runs the binary

    with FakeIMAP(script) as srv:
        acct = {"host": "127.0.0.1", "port": srv.port, "tls": "implicit",
                "ca_file": srv.ca_cert, "user": "alice", "password": password,
                "maildir": os.path.join(tmp, "Mail")}
        cfg = os.path.join(tmp, "config.yaml")
        dovecot.write_mailsync_config(cfg, {"a": acct}, state_dir=os.path.join(tmp, "state"))
        p = mstest.run_mailsync(cfg, *flags, "sync", "a", timeout=60)
    return p, srv
