#!/usr/bin/env python3
"""`mailsync daemon` under faults (issue 14), against a real Dovecot under
the three capability profiles, asserting files on disk and server state:
- Dovecot restarted under the daemon: it reconnects by itself and pushes
  again;
- every connection reset (RST) through the cutting proxy: it reconnects and
  catches up with what changed on both sides while it was cut off;
- a black hole (the proxy forwards nothing and closes nothing): the sync
  session waiting for an answer gives up after `timeout` seconds, status
  says "backing off" with the timeout, and a new session finishes the job
  once the proxy forwards again, without duplicates;
- the daemon frozen (SIGSTOP) while Dovecot restarts and new mail comes,
  then SIGCONT: it catches up by itself, without any request;
- SIGTERM during a large first download: exit 0 within the stop deadline,
  no partial file in tmp/, and the next start finishes with every message
  exactly once on both sides.
Profile-independent (one Dovecot, QRESYNC):
- the control socket refuses another uid (a client run as nobody through
  setpriv), by its directory's mode and, with that opened up, by
  SO_PEERCRED; the daemon keeps serving its own uid;
- an account whose host refuses connections backs off with the error in
  status while the good account beside it keeps pushing.

The helpers (Daemon, wait_for, wait_state, status, ask) are those of
test_daemon.py; its tests are not run again here."""

import errno
import json
import os
import signal
import socket
import subprocess
import threading
import time
import unittest

import mailgen
import mstest
from cutproxy import CutProxy
from dovecot import MAIL_UID
from synctest import PROFILES
from test_daemon import PUSH_TIMEOUT, DaemonScenarios

# The daemon's own deadline for SIGTERM (STOP_DEADLINE_MS in daemon.c),
# plus slack for a loaded machine and ASAN.
STOP_DEADLINE = 5
# The smallest `timeout` an account accepts: the black hole is noticed
# after it.
TIMEOUT = 5


def free_port():
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class FaultFixture(DaemonScenarios):
    """DaemonScenarios' helpers without its tests."""

    def restart_dovecot(self):
        """Stops the class's Dovecot and starts it again on the same ports
        (Dovecot.start() picks new ports, which the daemon's configuration
        does not know); mail and users stay."""
        d = self.dovecot
        d._kill()
        err = d._try_start(20)
        if err is not None:
            self.fail("Dovecot did not come back: %s" % err)

    def seed_server_maildir(self, n, seed, size=300):
        """n small messages written straight into the test user's INBOX on
        the server (Dovecot reads them when the mailbox is first opened):
        thousands in a second, where APPEND takes 15 ms each here. The
        user's mailbox must not have been opened yet. Returns the
        messages (CRLF-free bytes, as Maildir holds them)."""
        home = self.dovecot.home(self.user)
        cur = os.path.join(home, "Maildir", "cur")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(home, "Maildir", sub), exist_ok=True)
        base = int(time.time()) - 86400
        msgs = []
        for i in range(n):
            # Written here rather than by mailgen, which takes milliseconds
            # a message: only the count matters.
            body = (b"From: sender%d@example.org\nTo: alice@example.org\n"
                    b"Subject: seeded message %d of %d\nMessage-ID: <seed-%d-%d@example.org>\n"
                    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\n\n" % (i, i, seed, seed, i)
                    + b"body line\n" * (size // 10))
            with open(os.path.join(cur, "%d.M%dP1.seed:2," % (base + i, i)), "wb") as f:
                f.write(body)
            msgs.append(body)
        if self.dovecot.is_root:
            for dp, dn, fn in os.walk(home):
                for x in dn + fn:
                    os.lchown(os.path.join(dp, x), MAIL_UID, MAIL_UID)
            os.chown(home, MAIL_UID, MAIL_UID)
        return msgs

    def has_body(self, body, folder="INBOX"):
        return mstest.crlf_to_lf(body) in [b for _u, _f, b in self.local(folder)]

    def on_server(self, body, folder="INBOX"):
        return mstest.crlf_to_lf(body) in [mstest.crlf_to_lf(b) for _u, _f, b in
                                           self.server(folder)]

    def count_local(self, folder="INBOX"):
        """Files in new/ and cur/, without reading them."""
        return sum(len(os.listdir(os.path.join(self.folder_dir(folder), sub)))
                   for sub in ("new", "cur") if os.path.isdir(os.path.join(self.folder_dir(folder), sub)))

    def tmp_files(self, folder="INBOX"):
        d = os.path.join(self.folder_dir(folder), "tmp")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def wait_status(self, what, cfg, d, pred, name="a", timeout=PUSH_TIMEOUT):
        """The first status of account name for which pred is true."""
        def check():
            st = self.status(cfg, name)
            return st if st is not None and pred(st) else None
        return self.wait_for(what, check, d, timeout)

    def wait_pushing(self, cfg, d, name="a"):
        """Idle, with the watcher up (NOTIFY or IDLE): a new message will be
        pushed."""
        return self.wait_status("account %s idle with its watcher" % name, cfg, d,
                                lambda st: st["state"] == "idle" and st["push"] in ("idle", "notify"),
                                name)

    def proxy(self):
        return CutProxy.for_test(self, self.dovecot.port_imaps)

    def sigterm_at_first_file(self, d):
        """SIGTERM as soon as the first download is under way: messages
        are written to tmp/ and moved into new/ a batch at a time, and the
        whole download takes a second or two, so tmp/ is polled tightly.
        Returns (seconds until the daemon exited, messages stored then)."""
        deadline = time.monotonic() + 60
        while not self.tmp_files() and not self.count_local():
            self.assertLess(time.monotonic(), deadline, "no download: " + d.log()[-3000:])
            self.assertIsNone(d.p.poll(), d.log()[-3000:])
            time.sleep(0.005)
        t0 = time.monotonic()
        d.p.send_signal(signal.SIGTERM)
        d.stop(timeout=STOP_DEADLINE + 15)
        return time.monotonic() - t0, self.count_local()

    def start_in_black_hole(self):
        """A daemon idling through a proxy, then the proxy black-holed and
        a message delivered locally: the session starts the upload and
        waits for the server. Returns (cfg, daemon, proxy, body, logins,
        time of the black hole)."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(1, seed=106, max_size=2000))
        proxy = self.proxy()
        cfg = self.daemon_config(folders=["INBOX"], poll_interval=3600, host="127.0.0.1",
                                 port=proxy.port, timeout=TIMEOUT)
        d = self.start(cfg)
        self.wait_pushing(cfg, d)
        logins = self.status(cfg)["logins"]
        proxy.blackhole()
        t0 = time.monotonic()
        up = mstest.crlf_to_lf(mailgen.generate(1, seed=107, max_size=2000)[0])
        self.deliver_local("INBOX", up, "1700000000.hole1.host")
        return cfg, d, proxy, up, logins, t0


# unittest finds tests by callable attributes: the inherited ones are
# hidden (they run in test_daemon.py).
for _name in dir(DaemonScenarios):
    if _name.startswith("test_"):
        setattr(FaultFixture, _name, None)


class FaultScenarios(FaultFixture):

    def test_dovecot_restart(self):
        """Dovecot stopped and started again under a daemon in IDLE: both
        connections are lost, the daemon reconnects by itself, and a
        message appended afterwards is pushed (no poll sweep in the test);
        the mail that was there is neither lost nor doubled."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(2, seed=101, max_size=2000))
        cfg = self.daemon_config(folders=["INBOX"], poll_interval=3600)
        d = self.start(cfg)
        self.wait_pushing(cfg, d)
        logins = self.status(cfg)["logins"]
        self.restart_dovecot()
        self.wait_for("the lost session noticed", lambda: "backing off" in d.log(), d)
        self.wait_for("a new session", lambda: self.status(cfg)["logins"] > logins, d)
        self.wait_pushing(cfg, d)
        new = mailgen.generate(1, seed=102, max_size=2000)[0]
        self.dovecot.save_many(self.user, "INBOX", [new])
        self.wait_for("the message appended after the restart", lambda: self.has_body(new), d)
        self.assertEqual(d.stop(), 0, d.log()[-3000:])
        self.assert_same("INBOX")
        self.assert_no_duplicates("INBOX")

    def test_connection_reset_mid_session(self):
        """Every connection reset (RST) through the proxy while the daemon
        idles; while it backs off, a message arrives on the server and one
        is delivered locally: after the reconnect both sides hold both,
        once, without any request."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(2, seed=103, max_size=2000))
        proxy = self.proxy()
        cfg = self.daemon_config(folders=["INBOX"], poll_interval=3600, host="127.0.0.1",
                                 port=proxy.port)
        d = self.start(cfg)
        self.wait_pushing(cfg, d)
        before = d.log().count("backing off")
        proxy.reset_all()
        self.wait_for("the reset noticed", lambda: d.log().count("backing off") > before, d)
        down = mailgen.generate(1, seed=104, max_size=2000)[0]
        self.dovecot.save_many(self.user, "INBOX", [down])
        up = mstest.crlf_to_lf(mailgen.generate(1, seed=105, max_size=2000)[0])
        self.deliver_local("INBOX", up, "1700000000.reset1.host")
        self.wait_for("the server's message on disk", lambda: self.has_body(down), d)
        self.wait_for("the local message on the server", lambda: self.on_server(up), d)
        self.wait_pushing(cfg, d)
        st = self.status(cfg)
        self.assertIsNotNone(st["last_error"])
        self.assertEqual(d.stop(), 0, d.log()[-3000:])
        self.assertEqual(len(self.local("INBOX")), 4)
        self.assert_same("INBOX")
        self.assert_no_duplicates("INBOX")

    def test_black_hole(self):
        """The proxy stops forwarding without closing while a local message
        waits to go up. Status says "syncing" while the session waits;
        after `timeout` (5 s) the session is closed and status says
        "backing off" with the timeout as last error. Once the proxy
        forwards again a new session uploads the message, exactly once."""
        cfg, d, proxy, up, logins, t0 = self.start_in_black_hole()
        self.wait_status("the session stuck in the black hole", cfg, d,
                         lambda st: st["state"] == "syncing", timeout=TIMEOUT)
        st = self.wait_state(cfg, d, "backing off", timeout=TIMEOUT * 3)
        waited = time.monotonic() - t0
        self.assertGreaterEqual(waited, TIMEOUT - 0.5, "gave up before the timeout")
        self.assertRegex(st["last_error"] or "", r"timed out after 5 s", st)
        self.assertIsNotNone(st["last_error_at"])
        self.assertFalse(self.on_server(up), "uploaded through a black hole?")
        proxy.restore()
        self.wait_for("the local message on the server after the black hole",
                      lambda: self.on_server(up), d, timeout=PUSH_TIMEOUT + 30)
        self.wait_pushing(cfg, d)
        self.assertGreater(self.status(cfg)["logins"], logins)
        self.assertIn("timed out after 5 s waiting for the server", d.log())
        self.assertEqual(d.stop(), 0, d.log()[-3000:])
        self.assert_same("INBOX")
        self.assert_no_duplicates("INBOX")

    def test_sigstop_while_the_server_restarts(self):
        """SIGSTOP, Dovecot restarted, a new message appended, SIGCONT: the
        daemon finds its connections dead, reconnects and brings the
        message down by itself (no request, no poll sweep)."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(1, seed=108, max_size=2000))
        cfg = self.daemon_config(folders=["INBOX"], poll_interval=3600)
        d = self.start(cfg)
        self.wait_pushing(cfg, d)
        os.kill(d.p.pid, signal.SIGSTOP)
        try:
            self.restart_dovecot()
            new = mailgen.generate(1, seed=109, max_size=2000)[0]
            self.dovecot.save_many(self.user, "INBOX", [new])
        finally:
            os.kill(d.p.pid, signal.SIGCONT)
        t0 = time.monotonic()
        self.wait_for("the message after SIGCONT", lambda: self.has_body(new), d)
        caught_up = time.monotonic() - t0
        # The figure; not a timed assertion beyond PUSH_TIMEOUT
        # (a loaded CI machine), but said when it is missed.
        if caught_up > 10:
            print("note: caught up %.1f s after SIGCONT (target 10 s)" % caught_up)
        self.wait_pushing(cfg, d)
        self.assertEqual(d.stop(), 0, d.log()[-3000:])
        self.assert_same("INBOX")
        self.assert_no_duplicates("INBOX")

    def test_sigterm_during_a_large_first_download(self):
        """SIGTERM while the first pass downloads 3,000 messages: exit 0
        within the stop deadline, nothing left in tmp/; the next daemon
        finishes with every message exactly once on both sides."""
        msgs = self.seed_server_maildir(3000, seed=110)
        cfg = self.daemon_config(folders=["INBOX"], poll_interval=3600)
        d = self.start(cfg)
        took, _got = self.sigterm_at_first_file(d)
        self.assertEqual(d.p.returncode, 0, d.log()[-3000:])
        self.assertLess(took, STOP_DEADLINE + 1, "SIGTERM took %.1f s" % took)
        self.assertEqual(self.tmp_files(), [], "partial files left in tmp/")
        self.assert_no_duplicates("INBOX")

        d2 = self.start(cfg)
        self.wait_state(cfg, d2, "idle", timeout=120)
        self.assertEqual(d2.stop(), 0, d2.log()[-3000:])
        self.assertEqual(self.tmp_files(), [])
        self.assertEqual(sorted(b for _u, _f, b in self.local("INBOX")), sorted(msgs))
        self.assertEqual(len(self.server("INBOX")), len(msgs))
        self.assert_no_duplicates("INBOX")
        self.assert_same("INBOX")


class FaultScenariosOnce(FaultFixture, mstest.DovecotTestCase):
    """What does not depend on the server's capabilities."""

    def test_control_socket_refuses_another_uid(self):
        """A client running as nobody cannot use the control socket: first
        its 0700 directory stops it (EACCES); with directory and socket
        opened up, SO_PEERCRED does (the JSON permission error). The
        daemon goes on answering its own uid."""
        if os.geteuid() != 0:
            self.skipTest("needs root to run a client as another uid")
        cfg = self.daemon_config(folders=["INBOX"], poll_interval=3600)
        d = self.start(cfg)
        self.wait_state(cfg, d, "idle")
        sock = os.path.join(self.runtime, "mailsync", "control")
        client = ("import json, socket, sys\n"
                  "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                  "s.settimeout(20)\n"
                  "try:\n"
                  "    s.connect(sys.argv[1])\n"
                  "except OSError as e:\n"
                  "    print(json.dumps({'connect': e.errno})); sys.exit(0)\n"
                  "try:\n"
                  "    s.sendall(b'status\\n')\n"
                  "except BrokenPipeError:\n"
                  "    pass  # refused and closed before reading: the refusal is waiting\n"
                  "buf = b''\n"
                  "while not buf.endswith(b'\\n'):\n"
                  "    c = s.recv(4096)\n"
                  "    if not c: break\n"
                  "    buf += c\n"
                  "print(json.dumps({'reply': buf.decode()}))\n")

        def as_nobody():
            p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                "python3", "-c", client, sock], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
            return json.loads(p.stdout)

        self.assertEqual(as_nobody(), {"connect": errno.EACCES})
        # Open the path up: only the daemon's uid check is left.
        for path in (self.tmp, self.runtime, os.path.dirname(sock)):
            os.chmod(path, 0o711)
        os.chmod(sock, 0o666)
        got = as_nobody()
        self.assertIn("reply", got, got)
        reply = json.loads(got["reply"])
        self.assertEqual(reply, {"ok": False, "error": "permission denied: uid 65534 may not "
                                 "control the daemon of uid 0"})
        self.assertIn("refused a connection from uid 65534", d.log())
        r = self.ask("status")
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["pid"], d.p.pid)
        self.assertEqual([a["state"] for a in r["accounts"]], ["idle"])
        self.assertEqual(d.stop(), 0, d.log()[-3000:])

    # Was a daemon bug (fixed): a session that ended by itself answered only
    # the requests for a whole pass; `sync ACCOUNT FOLDER` hung until the
    # network came back.
    def test_black_hole_folder_request_answered(self):
        """`sync a INBOX` sent while the session is stuck in a black hole
        is answered when that session gives up (a temporary error naming
        the timeout), not left hanging until the network comes back."""
        cfg, d, proxy, _up, _logins, _t0 = self.start_in_black_hole()
        answer = {}

        def request():
            try:
                answer["reply"] = self.ask("sync a INBOX")
            except Exception as e:  # noqa: BLE001 (reported by the assertion below)
                answer["exception"] = repr(e)
        asker = threading.Thread(target=request, daemon=True)
        asker.start()
        self.wait_state(cfg, d, "backing off", timeout=TIMEOUT * 3)
        asker.join(TIMEOUT)
        hanging = asker.is_alive()
        proxy.restore()
        asker.join(PUSH_TIMEOUT)
        self.assertFalse(hanging, "the sync request was left hanging after the session failed; "
                         "answered after the black hole ended: %s" % answer)
        r = answer["reply"]
        self.assertEqual((r["ok"], r["account"], r["folder"], r["temporary"]),
                         (False, "a", "INBOX", True), r)
        self.assertRegex(r["error"], r"timed out", r)
        self.assertEqual(d.stop(), 0, d.log()[-3000:])

    # Was a daemon bug (fixed: engine_cancel stops a session in the middle of
    # a folder at once): SIGTERM let the whole first download finish.
    def test_sigterm_stops_the_download_at_the_next_message(self):
        """SIGTERM during a first download of 3,000 messages stops it at
        the next message: the daemon exits within a second, not after
        downloading the rest."""
        self.seed_server_maildir(3000, seed=114)
        cfg = self.daemon_config(folders=["INBOX"], poll_interval=3600)
        d = self.start(cfg)
        took, got = self.sigterm_at_first_file(d)
        self.assertEqual(d.p.returncode, 0, d.log()[-3000:])
        self.assertLess(got, 3000, "SIGTERM let the whole download finish (%.1f s)" % took)
        self.assertLess(took, 1.0, "SIGTERM took %.1f s" % took)

    def test_unreachable_host_beside_a_good_account(self):
        """An account whose host refuses connections (a closed port on
        127.0.0.1) backs off, again and again, with the error in status;
        the good account beside it keeps pushing both ways."""
        self.dovecot.save_many(self.user, "INBOX", mailgen.generate(1, seed=111, max_size=2000))
        good = self.imap_account(user=self.user, layout=self.layout, folders=["INBOX"],
                                 poll_interval=3600, local_delay=0)
        bad = self.imap_account(maildir=os.path.join(self.tmp, "Bad"), user=self.user,
                                folders=["INBOX"], poll_interval=3600, host="127.0.0.1",
                                port=free_port(), timeout=TIMEOUT)
        cfg = self.write_config({"a": good, "b": bad})
        d = self.start(cfg)
        self.wait_pushing(cfg, d)
        st = self.wait_state(cfg, d, "backing off", name="b")
        self.assertRegex(st["last_error"] or "", r"(?i)refused", st)
        self.assertIsNotNone(st["last_error_at"])
        self.assertEqual(st["connections"], 0, st)
        new = mailgen.generate(1, seed=112, max_size=2000)[0]
        self.dovecot.save_many(self.user, "INBOX", [new])
        self.wait_for("the good account's push down", lambda: self.has_body(new), d)
        up = mstest.crlf_to_lf(mailgen.generate(1, seed=113, max_size=2000)[0])
        self.deliver_local("INBOX", up, "1700000000.good1.host")
        self.wait_for("the good account's push up", lambda: self.on_server(up), d)
        # The bad one keeps trying (back-off 1 s, 2 s, ...), never reaching
        # another state.
        self.wait_for("a second attempt of b",
                      lambda: d.log().count("b: state connecting") >= 2, d)
        st = self.status(cfg, "b")
        self.assertIn(st["state"], ("backing off", "connecting"), st)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "Bad", "INBOX", "cur"))
                         and os.listdir(os.path.join(self.tmp, "Bad", "INBOX", "cur")))
        self.assertEqual(d.stop(), 0, d.log()[-3000:])
        self.assert_same("INBOX")


for _name, _opts in PROFILES.items():
    globals()["Faults" + _name] = type("Faults" + _name,
                                       (FaultScenarios, mstest.DovecotTestCase),
                                       {"dovecot_options": _opts})

if __name__ == "__main__":
    mstest.main()
