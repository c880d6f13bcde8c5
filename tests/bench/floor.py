# The "server floor" client of tests/bench: only what every mail client must
# do on a one-shot run, nothing else. bench.py starts it as
#
#     python3 -S -I floor.py imap|pop3 HOST PORT CA_FILE USER PASSWORD [--stdlib]
#
# with the same measure() as mailsync, mbsync and mpop. It loads OpenSSL,
# makes a client TLS context that trusts only CA_FILE, resolves HOST,
# connects, does implicit TLS verifying the certificate and the host name,
# reads the greeting, logs in (IMAP "a LOGIN"; POP3 USER and PASS), logs out
# and waits for the server's answer. On success it prints one line of
# CLOCK_MONOTONIC timestamps, the same clock as bench.py's time.monotonic():
#
#     floor start=S ready=R tls=T login=L end=E
#
# start: the script's first line; ready: OpenSSL loaded and the context
# made; tls: connected and handshake done; login: greeting read and logged
# in; end: logout answered. bench.py uses them to take the Python
# interpreter's own start-up and shutdown out of the figure (see
# tests/bench/README.md, "The server floor").
#
# Why the private _ssl and _socket modules and not ssl and socket: importing
# ssl.py (enum, collections, re, base64, socket, selectors ...) costs 25-40
# ms on the 2-core benchmark machine, as much as the server's whole TLS
# handshake, and none of it is work a C client does. _ssl and _socket are
# the C modules under them; importing them costs the loading and
# initialisation of OpenSSL, which the C tools pay as well. --stdlib uses
# ssl.py instead, for comparison only.
from time import monotonic

START = monotonic()

import sys  # noqa: E402


def fail(msg):
    sys.stderr.write("floor: %s\n" % msg)
    sys.exit(1)


def setup_stdlib(ca_file):
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=ca_file)

    def connect(host, port):
        sock = socket.create_connection((host, port), timeout=30)
        conn = ctx.wrap_socket(sock, server_hostname=host)
        return conn.recv, conn.sendall, sock

    return connect


def setup_fast(ca_file):
    import _socket
    import _ssl

    # What ssl.create_default_context(cafile=...) sets up for a client: the
    # TLS client method with OpenSSL's defaults, certificate and host name
    # verification, and only the given CA.
    ctx = _ssl._SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = _ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_verify_locations(ca_file)
    # _ssl keeps a weak reference to the socket, which the bare C type does
    # not allow; a subclass does (socket.socket is one, too).
    sock_type = type("Sock", (_socket.socket,), {})

    def connect(host, port):
        # The host as bytes: given a str, getaddrinfo() encodes it with the
        # "idna" codec, whose import (unicodedata, stringprep) costs 25 ms.
        family, type_, proto, _name, addr = _socket.getaddrinfo(host.encode("ascii"), port, 0,
                                                                _socket.SOCK_STREAM)[0]
        sock = sock_type(family, type_, proto)
        sock.settimeout(30)
        sock.connect(addr)
        tls = ctx._wrap_socket(sock, False, host)
        tls.do_handshake()

        def send(data):
            while data:
                data = data[tls.write(data):]

        return tls.read, send, sock

    return connect


class Lines:
    """Reads CRLF-terminated lines from the TLS stream."""

    def __init__(self, recv):
        self.recv = recv
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.recv(16384)
            if not chunk:
                fail("connection closed by the server")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def tagged(self, tag):
        """The tagged IMAP answer to tag, past any untagged lines."""
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                return line


def imap(lines, send, user, password):
    if not lines.line().startswith(b"* OK"):
        fail("no IMAP greeting")
    send(b'a LOGIN "%s" "%s"\r\n' % (user, password))
    if not lines.tagged(b"a").startswith(b"a OK"):
        fail("IMAP LOGIN refused")
    logged_in = monotonic()
    send(b"b LOGOUT\r\n")
    if not lines.tagged(b"b").startswith(b"b OK"):
        fail("IMAP LOGOUT refused")
    return logged_in


def pop3(lines, send, user, password):
    if not lines.line().startswith(b"+OK"):
        fail("no POP3 greeting")
    send(b"USER %s\r\n" % user)
    if not lines.line().startswith(b"+OK"):
        fail("POP3 USER refused")
    send(b"PASS %s\r\n" % password)
    if not lines.line().startswith(b"+OK"):
        fail("POP3 PASS refused")
    logged_in = monotonic()
    send(b"QUIT\r\n")
    if not lines.line().startswith(b"+OK"):
        fail("POP3 QUIT refused")
    return logged_in


def main(argv):
    if len(argv) not in (7, 8) or argv[1] not in ("imap", "pop3") or argv[7:] not in ([], ["--stdlib"]):
        fail("usage: floor.py imap|pop3 HOST PORT CA_FILE USER PASSWORD [--stdlib]")
    proto, host, port, ca_file = argv[1], argv[2], int(argv[3]), argv[4]
    user, password = argv[5].encode(), argv[6].encode()
    connect = (setup_stdlib if argv[7:] else setup_fast)(ca_file)
    ready = monotonic()
    recv, send, sock = connect(host, port)
    tls = monotonic()
    logged_in = (imap if proto == "imap" else pop3)(Lines(recv), send, user, password)
    end = monotonic()
    # No TLS close_notify exchange: the session is over once the logout is
    # answered, and waiting for the server's close would add its teardown.
    sock.close()
    sys.stdout.write("floor start=%.6f ready=%.6f tls=%.6f login=%.6f end=%.6f\n"
                     % (START, ready, tls, logged_in, end))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
