"""A TCP proxy on loopback that cuts the server's byte stream at a chosen
offset, for the broken-connection tests of issue 9
(tests/integration/test_sync_cut.py, test_pop3_cut.py).

    proxy = CutProxy.for_test(self, dovecot.port_imap, farewell=IMAP_FAREWELL)
    run = proxy.arm(cut_at=2560)         # this run: cut after 2560 bytes
    p = mailsync(...)                    # the account points at proxy.port
    run = proxy.finish()                 # what happened in the run
    assert_outcome(self, p, run)         # exit status against the cut

The proxy listens on a free port of 127.0.0.1 and forwards every
connection to a target on 127.0.0.1, byte for byte, in both directions.
Armed with cut_at=N it forwards exactly N bytes of what the server sends and
then, when the server has sent more, resets both sides (SO_LINGER 0 makes
close() send RST, as a dropped Wi-Fi or a NAT timeout looks to the client).
The N bytes are counted over the first connection of the run (scope
"first") or over all its connections together (scope "all"); connections
that do not count pass untouched, as do all after the cut.

The cut fires only when byte N+1 arrives, never merely when the count
reaches N: a stream of exactly N bytes is not cut. So a cut always means the
server had more to say, and when that "more" was the answer to LOGOUT (or
POP3 QUIT) the client had sent the command before the cut: the proxy
records the client's bytes before it forwards them, and the server answers
only what it received. Run.farewell_before_cut says whether that was so,
which is when a run may have finished its work although it was cut.

With a plaintext account (tls: none plus allow_plaintext: true, which the
test Dovecot permits on its port_imap and port_pop3) the offsets count
protocol bytes and Run keeps both streams as a trace of the run
(Run.trace()).

MAILSYNC_CUT_VERBOSE=1 makes assert_outcome print one line per run: the
offset, whether it was cut, and the client's last command before the cut.

For the daemon's fault tests (tests/integration/test_daemon_faults.py)
the proxy also acts on connections already open, whatever the run:

    proxy.reset_all()                    # RST every open connection now
    proxy.blackhole()                    # stop forwarding, close nothing
    proxy.restore()                      # forward again (held bytes flow)

A black hole holds both directions: nothing is read from either side, so
what was sent waits in the socket buffers, as it waits in a real network's
retransmissions, and flows on restore() unless a side gave up and closed
meanwhile. Connections accepted during a black hole are held the same way
(the client's connect succeeds but no greeting comes).

Bounded: threads are daemon threads, every socket is closed by close()
(registered with addCleanup by for_test), and the listener stops by itself
after `lifetime` seconds in any case."""

import os
import re
import selectors
import socket
import struct
import sys
import threading
import time

# The client's last command of a session, at the start of a line.
IMAP_FAREWELL = re.compile(rb"(?:^|\n)[!-~]+ LOGOUT\r\n", re.I)
POP3_FAREWELL = re.compile(rb"(?:^|\n)QUIT\r\n", re.I)

# Exit status of a run that failed for a reason that clears up by itself.
EX_TEMPFAIL = 75


class Run:
    """What the proxy saw during one armed run."""

    def __init__(self, cut_at, scope):
        self.cut_at = cut_at  # None: never cut
        self.scope = scope
        self.cut = False  # the stream was cut
        self.connections = 0  # connections accepted during the run
        self.s2c = []  # per connection: bytes the server sent that the client got
        self.c2s = []  # per connection: bytes the client sent
        # per connection: (client bytes so far, server bytes so far) each time
        # the client sent something, to tell where in the server's stream a
        # command was sent (see command_offsets)
        self.marks = []
        self.counted = 0  # server bytes counted towards cut_at
        self.cut_conn = None  # index of the connection that was cut
        self.farewell_before_cut = False  # LOGOUT/QUIT sent on the cut connection before the cut
        self.farewell_any = False  # LOGOUT/QUIT sent on any connection

    @property
    def bytes_seen(self):
        return sum(len(b) for b in self.s2c)

    def trace(self, tail=1500):
        """The ends of both streams of the cut connection (or the last one),
        for failure messages: the client's commands and what the server
        had said when the cut came."""
        if not self.s2c:
            return "(no connection)"
        i = self.cut_conn if self.cut_conn is not None else len(self.s2c) - 1
        # The test account's password is no secret, but keep it out of logs
        # anyway, as mailsync's own trace does.
        c2s = re.sub(rb"(?im)^(\S+ AUTHENTICATE \S+ |\S+ LOGIN \S+ |PASS |AUTH PLAIN ).*$",
                     rb"\1<redacted>", bytes(self.c2s[i]))
        s2c = bytes(self.s2c[i])
        return ("connection %d of %d, %s after %d server bytes\n"
                "-- client sent (last %d bytes):\n%s\n-- server sent (last %d bytes):\n%s"
                % (i + 1, len(self.s2c), "cut" if self.cut else "not cut", len(s2c), tail,
                   c2s[-tail:].decode("utf-8", "replace"), tail,
                   s2c[-tail:].decode("utf-8", "replace")))

    def server_offset(self, conn, client_offset):
        """How many server bytes the client had been sent when it sent its
        byte at client_offset on connection conn."""
        at = 0
        for c_off, s_off in self.marks[conn]:
            if c_off > client_offset:
                break
            at = s_off
        return at

    def landing(self):
        """The client's last command line before the cut (or before the
        end), password-free, e.g. 'A7 UID FETCH 1:* (UID FLAGS)'."""
        if not self.c2s:
            return ""
        i = self.cut_conn if self.cut_conn is not None else len(self.c2s) - 1
        lines = [ln for ln in bytes(self.c2s[i]).split(b"\r\n") if ln.strip()]
        if not lines:
            return "(before the client's first command)"
        last = lines[-1].decode("utf-8", "replace")[:70]
        return re.sub(r"(?i)^(\S+ AUTHENTICATE \S+|\S+ LOGIN|PASS|AUTH PLAIN)\b.*", r"\1 ...",
                      last)

    def __repr__(self):
        return ("Run(cut_at=%s, cut=%s, farewell_before_cut=%s, connections=%d, bytes=%d)"
                % (self.cut_at, self.cut, self.farewell_before_cut, self.connections,
                   self.bytes_seen))


def _reset(sock):
    """Closes sock with RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class CutProxy:
    """The proxy. target_port on 127.0.0.1 (target_host must be loopback);
    farewell: a compiled regex for the client's closing command, or None."""

    def __init__(self, target_port, target_host="127.0.0.1", farewell=None, lifetime=900):
        if not target_host.startswith("127."):
            raise ValueError("the cutting proxy only forwards to loopback")
        self.target = (target_host, target_port)
        self.farewell = farewell
        self.lock = threading.Lock()
        self.run = Run(None, "first")
        self.armed = False
        self.closed = threading.Event()
        self.socks = set()
        self.holding = threading.Event()  # black hole: forward nothing
        self.resets = 0  # bumped by reset_all(); a pump started before it resets
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.deadline = time.monotonic() + lifetime
        self.thread = threading.Thread(target=self._accept_loop, name="cutproxy-accept",
                                       daemon=True)
        self.thread.start()

    @classmethod
    def for_test(cls, test, target_port, **kw):
        """A proxy closed when the test ends (test.addCleanup)."""
        proxy = cls(target_port, **kw)
        test.addCleanup(proxy.close)
        return proxy

    # ---- runs --------------------------------------------------------------

    def arm(self, cut_at=None, scope="first"):
        """Starts a run: cut the server's stream after cut_at bytes
        (None: forward everything) counted over the run's first connection
        ("first") or all of them ("all"). Returns the Run being recorded."""
        if scope not in ("first", "all"):
            raise ValueError("scope must be 'first' or 'all'")
        with self.lock:
            self.run = Run(cut_at, scope)
            self.armed = True
            return self.run

    def finish(self):
        """Ends the run (after the client exited) and returns its Run.
        Connections still open are left to run out unrecorded."""
        with self.lock:
            run, self.run, self.armed = self.run, Run(None, "first"), False
        return run

    def reset_all(self):
        """Resets (RST) every connection open now, on both sides, within
        the pumps' half-second select; later connections pass."""
        with self.lock:
            self.resets += 1

    def blackhole(self):
        """Stops forwarding in both directions without closing anything."""
        self.holding.set()

    def restore(self):
        """Ends a black hole: held bytes and new ones are forwarded again."""
        self.holding.clear()

    def close(self):
        self.closed.set()
        with self.lock:
            socks, self.socks = list(self.socks), set()
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        try:
            self.listener.close()
        except OSError:
            pass
        self.thread.join(5)

    # ---- forwarding ----------------------------------------------------------

    def _accept_loop(self):
        while not self.closed.is_set() and time.monotonic() < self.deadline:
            try:
                client, _addr = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            client.setblocking(True)
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                _reset(client)
                continue
            with self.lock:
                run = self.run
                idx = run.connections
                run.connections += 1
                run.s2c.append(bytearray())
                run.c2s.append(bytearray())
                run.marks.append([])
                self.socks.update((client, server))
                resets = self.resets
            threading.Thread(target=self._pump, args=(run, idx, client, server, resets),
                             name="cutproxy-conn", daemon=True).start()
        try:
            self.listener.close()
        except OSError:
            pass

    def _budget(self, run, idx):
        """Server bytes this connection may still pass before the cut; None
        when it does not count (called with the lock held)."""
        if run.cut_at is None or run.cut:
            return None
        if run.scope == "first" and idx != 0:
            return None
        return run.cut_at - run.counted

    def _pump(self, run, idx, client, server, resets):
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, "c")
        sel.register(server, selectors.EVENT_READ, "s")
        server.settimeout(None)
        cut = False
        farewell = False
        open_dirs = 2
        try:
            while open_dirs and not self.closed.is_set() and time.monotonic() < self.deadline:
                if self.resets != resets:
                    cut = True
                    return
                if self.holding.is_set():
                    time.sleep(0.05)
                    continue
                for key, _mask in sel.select(timeout=0.5):
                    src = key.fileobj
                    dst = server if src is client else client
                    try:
                        data = src.recv(65536)
                    except OSError:
                        return
                    if not data:
                        # One side closed: pass its FIN on and keep reading
                        # what the other one still says.
                        sel.unregister(src)
                        open_dirs -= 1
                        try:
                            dst.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        continue
                    if key.data == "c":
                        # Recorded before it is forwarded: an answer the server
                        # gives to it then always finds it recorded.
                        with self.lock:
                            buf = run.c2s[idx]
                            start = max(0, len(buf) - 64)
                            run.marks[idx].append((len(buf), len(run.s2c[idx])))
                            buf += data
                            if (not farewell and self.farewell is not None
                                    and self.farewell.search(buf, start)):
                                farewell = True
                                run.farewell_any = True
                        server.sendall(data)
                        continue
                    with self.lock:
                        budget = self._budget(run, idx)
                        cut = budget is not None and len(data) > budget
                        if cut:
                            data = data[:budget]
                            run.cut = True
                            run.cut_conn = idx
                            run.farewell_before_cut = farewell
                        if budget is not None:
                            run.counted += len(data)
                        run.s2c[idx] += data
                    if data:
                        client.sendall(data)
                    if cut:
                        return
        except OSError:
            cut = True  # a side went away mid-write: nothing left to be gentle with
        finally:
            sel.close()
            with self.lock:
                self.socks.discard(client)
                self.socks.discard(server)
            if cut:
                _reset(client)
                _reset(server)
            else:
                client.close()
                server.close()


# What a failed run must say on stderr about a broken connection, at every
# output level (-q included).
REASON = re.compile(r"(?i)connection|reset|closed|broken|dropped|unexpected end|timed out")


def report(run, p, what=""):
    """With MAILSYNC_CUT_VERBOSE=1 in the environment, one line per run on
    stderr: where the cut landed and how the run ended."""
    if os.environ.get("MAILSYNC_CUT_VERBOSE"):
        print("  %-40s cut_at=%-6s %-7s bytes=%-6d exit=%d  last: %s"
              % (what[:40], run.cut_at, "CUT" if run.cut else "clean", run.bytes_seen,
                 p.returncode, run.landing()), file=sys.stderr)


def assert_outcome(test, p, run, what=""):
    """The exit status a run must have given what the proxy did to it:

    - cut before the client sent its farewell (LOGOUT, QUIT): the sync did
      not finish, so never 0, and 75 because a dropped connection clears up
      by itself; the reason is on stderr;
    - cut after the farewell: 0 or 75 (the work may have been complete);
    - not cut: 0.
    p is a CompletedProcess (text) of mailsync; what labels the run."""
    report(run, p, what)
    ctx = "\n%s: %r, exit %d\nstdout:\n%s\nstderr:\n%s\n%s" % (
        what, run, p.returncode, p.stdout, p.stderr, run.trace())
    if run.cut and not run.farewell_before_cut:
        test.assertNotEqual(p.returncode, 0, "a sync that did not finish exited 0" + ctx)
        test.assertEqual(p.returncode, EX_TEMPFAIL, "a dropped connection is not exit 75" + ctx)
    elif run.cut:
        test.assertIn(p.returncode, (0, EX_TEMPFAIL), "cut after the farewell" + ctx)
    else:
        test.assertEqual(p.returncode, 0, "a run that was not cut failed" + ctx)
    if p.returncode != 0:
        test.assertRegex(p.stderr, REASON, "the reason is not on stderr" + ctx)
