#!/usr/bin/env python3
"""The IMAP client (sync/imap.h, driven by tests/imapcli) against a real
Dovecot from the harness: logins over implicit TLS and STARTTLS, a wrong
password, every command with its results checked through imaplib, bodies
byte for byte, a 20 MB message with bounded memory, 5,000 pipelined
FETCHes, IDLE, and the fallbacks when extensions are hidden."""

import hashlib
import imaplib
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import mailgen  # noqa: E402
from dovecot import Dovecot, imap_mailbox  # noqa: E402


def imapcli_path():
    d = os.environ.get("MAILSYNC_BUILD_DIR")
    if not d:
        here = os.path.dirname(os.path.abspath(__file__))
        d = os.path.join(here, "..", "..", "build")
    p = os.path.join(d, "tests", "imapcli", "imapcli")
    if not os.access(p, os.X_OK):
        raise unittest.SkipTest("imapcli not built at %s" % p)
    return p


def cli_args(d, commands, tls="implicit", user="alice", extra=(), port=None):
    if port is None:
        port = d.port_imaps if tls == "implicit" else d.port_imap
    args = [imapcli_path(), "--host", "localhost", "--port", str(port), "--tls", tls,
            "--ca", d.ca_cert, "--user", user, "--pass-env", "IMAPCLI_PW"] + list(extra)
    for i, c in enumerate(commands):
        if i:
            args.append(";")
        args += c if isinstance(c, list) else c.split(" ")
    return args


def run_cli(d, *commands, tls="implicit", password=None, extra=(), env=None, timeout=300,
            port=None):
    env_all = dict(os.environ, IMAPCLI_PW=password if password is not None else d.password("alice"))
    env_all.update(env or {})
    p = subprocess.run(cli_args(d, commands, tls=tls, extra=extra, port=port),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout, env=env_all)
    return p, p.stdout.splitlines()


class RecordingProxy:
    """A TCP relay on 127.0.0.1 to target_port that records the bytes of
    one connection in each direction (c2s, s2c): what the client really
    sent, for a plaintext session."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.c2s = bytearray()
        self.s2c = bytearray()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.threads = [threading.Thread(target=self._run, daemon=True)]
        self.threads[0].start()

    def _pump(self, src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                record += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _run(self):
        client, _ = self.lsock.accept()
        server = socket.create_connection(("127.0.0.1", self.target_port))
        t = threading.Thread(target=self._pump, args=(server, client, self.s2c), daemon=True)
        t.start()
        self._pump(client, server, self.c2s)
        t.join(timeout=30)
        client.close()
        server.close()

    def close(self):
        for t in self.threads:
            t.join(timeout=30)
        self.lsock.close()


def msg(i, body=b"hello\r\n"):
    return (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: test %d\r\n"
            b"Date: Mon, 2 Jan 2023 10:00:%02d +0000\r\nMessage-ID: <%d@t>\r\n\r\n"
            % (i, i % 60, i)) + body


def kv(line):
    return dict(x.split("=", 1) for x in line.split(" ") if "=" in x)


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # imap_id_log: Dovecot logs the ID it receives, and which process
        # got it (imap-login before login, imap(user) after).
        cls.d = Dovecot(extra_conf="imap_id_log = *\n").start()
        cls.tmp = tempfile.mkdtemp(prefix="imapcli-test-")

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def ok(self, p, lines):
        self.assertEqual(p.returncode, 0, p.stdout[-4000:] + p.stderr[-4000:])
        self.assertEqual(lines[0], "READY")
        return lines

    def folder(self, name, msgs=(), flags=None):
        self.d.create_folder("alice", name)
        return self.d.save_many("alice", name, list(msgs), flags=flags) if msgs else []

    # -- logins -----------------------------------------------------------

    def test_implicit_tls_login(self):
        p, lines = run_cli(self.d, "caps", "logout", extra=["--trace"])
        self.ok(p, lines)
        caps = [x for x in lines if x.startswith("CAPS ")][0]
        self.assertIn("CONDSTORE", caps)  # the post-login list
        self.assertIn("ENABLED condstore=1 qresync=1 utf8=0 compress=0 delim=/", lines)
        self.assertIn("DONE logout OK Logout completed", " ".join(lines))
        # The password never reaches the log, even at trace level.
        self.assertIn("AUTHENTICATE PLAIN <redacted>", p.stderr)
        self.assertNotIn(self.d.password("alice"), p.stderr)

    def test_starttls_login(self):
        p, lines = run_cli(self.d, "caps", tls="starttls", extra=["--trace"])
        self.ok(p, lines)
        self.assertIn("C: A1 STARTTLS", p.stderr)
        self.assertRegex(p.stderr, r"C: A2 CAPABILITY")
        self.assertIn("ENABLED condstore=1 qresync=1", " ".join(lines))
        self.assertNotIn(self.d.password("alice"), p.stderr)

    def test_login_command(self):
        p, lines = run_cli(self.d, "noop", extra=["--auth", "login", "--trace"])
        self.ok(p, lines)
        self.assertIn("C: A1 LOGIN alice <redacted>", p.stderr)
        self.assertNotIn(self.d.password("alice"), p.stderr)

    def test_id_sent_after_login(self):
        """ID goes to the server after login, with the client's name and
        version: Dovecot's own log shows what it received, in the
        logged-in imap process (not imap-login)."""
        p, lines = run_cli(self.d, "noop", extra=["--trace"])
        self.ok(p, lines)
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "..", "..", "CMakeLists.txt")) as f:
            version = re.search(r"project\(mailsync VERSION ([0-9.]+)", f.read()).group(1)
        self.assertIn('C: A2 ID ("name" "mailsync" "version" "%s")' % version, p.stderr)
        self.assertIn("C: A1 AUTHENTICATE PLAIN <redacted>", p.stderr)
        self.assertRegex(p.stderr, r'S: \* ID \("name" "Dovecot"')
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = [x for x in self.d.log().splitlines()
                   if "ID sent: name=mailsync, version=%s" % version in x]
            if got:
                break
            time.sleep(0.05)
        self.assertTrue(got, self.d.log()[-2000:])
        self.assertIn("imap(alice)", got[-1])
        self.assertNotIn("imap-login", got[-1])

    def test_wrong_password(self):
        p, lines = run_cli(self.d, "noop", password="wrong-password")
        self.assertEqual(p.returncode, 1)
        self.assertIn("ERROR login failed for alice at localhost: [AUTHENTICATIONFAILED] Authentication failed.", lines)

    def test_compress(self):
        self.folder("Zip", [msg(i, b"compressible " * 2000 + b"\r\n") for i in range(3)])
        out = os.path.join(self.tmp, "zip")
        os.makedirs(out)
        p, lines = run_cli(self.d, "caps", "select Zip", "fetch 1:* body dir " + out,
                           extra=["--compress"])
        self.ok(p, lines)
        self.assertIn("compress=1", [x for x in lines if x.startswith("ENABLED")][0])
        for uid, _flags, body in self.d.fetch_all("alice", "Zip"):
            with open(os.path.join(out, "%d.eml" % uid), "rb") as f:
                self.assertEqual(f.read(), body)

    # -- folders ------------------------------------------------------------

    def test_list_with_non_ascii_folder(self):
        self.folder("Entwürfe/Ünter ordner", [msg(1), msg(2)])
        p, lines = run_cli(self.d, "list")
        self.ok(p, lines)
        folders = {x.split("\t")[1]: x.split("\t") for x in lines if x.startswith("FOLDER\t")}
        self.assertIn("Entwürfe/Ünter ordner", folders)
        self.assertIn("INBOX", folders)
        self.assertIn("trash", folders["Trash"][2])
        st = kv(folders["Entwürfe/Ünter ordner"][3])
        self.assertEqual(st["messages"], "2")
        self.assertEqual(st["uidnext"], "3")
        self.assertIn("subscribed", folders["Entwürfe/Ünter ordner"][2])

    def test_status(self):
        self.folder("Stat", [msg(1), msg(2), msg(3)], flags=["\\Seen", None, None])
        p, lines = run_cli(self.d, "status Stat")
        self.ok(p, lines)
        st = [x for x in lines if x.startswith("STATUS\t")][0].split("\t")
        self.assertEqual(st[1], "Stat")
        v = kv(st[2])
        conn = self.d.imap()
        typ, data = conn.status("Stat", "(UIDVALIDITY HIGHESTMODSEQ)")
        conn.logout()
        self.assertEqual(v["messages"], "3")
        self.assertEqual(v["unseen"], "2")
        self.assertEqual(v["uidnext"], "4")
        self.assertIn("UIDVALIDITY %s" % v["uidvalidity"], data[0].decode())
        self.assertIn("HIGHESTMODSEQ %s" % v["highestmodseq"], data[0].decode())

    def test_create_delete(self):
        p, lines = run_cli(self.d, ["create", "Neu/Ordner é"], "list")
        self.ok(p, lines)
        self.assertIn("Neu/Ordner é", [x.split("\t")[1] for x in lines if x.startswith("FOLDER")])
        self.assertIn("Neu/Ordner é", self.d.folders())
        p, lines = run_cli(self.d, ["delete", "Neu/Ordner é"])
        self.ok(p, lines)
        self.assertNotIn("Neu/Ordner é", self.d.folders())

    # -- select ---------------------------------------------------------------

    def test_select_condstore_and_qresync(self):
        uids = self.folder("Sel", [msg(i) for i in range(4)])
        p, lines = run_cli(self.d, "select Sel condstore")
        self.ok(p, lines)
        sel = kv([x for x in lines if x.startswith("SELECTED ")][0])
        conn = self.d.imap()
        typ, data = conn.status("Sel", "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ MESSAGES)")
        status = data[0].decode()
        self.assertIn("UIDVALIDITY %s" % sel["uidvalidity"], status)
        self.assertIn("UIDNEXT %s" % sel["uidnext"], status)
        self.assertIn("HIGHESTMODSEQ %s" % sel["highestmodseq"], status)
        self.assertEqual(sel["exists"], "4")
        self.assertEqual(sel["nomodseq"], "0")
        self.assertIn("\\Seen", sel["permflags"])
        base = int(sel["highestmodseq"])
        # Another client changes a flag and expunges a message.
        conn.select("Sel")
        conn.uid("STORE", str(uids[1]), "+FLAGS", "(\\Flagged)")
        conn.uid("STORE", str(uids[2]), "+FLAGS", "(\\Deleted)")
        conn.expunge()
        conn.logout()
        p, lines = run_cli(self.d, "select Sel qresync %s %d" % (sel["uidvalidity"], base))
        self.ok(p, lines)
        self.assertIn("EVENT VANISHED earlier=1 %d" % uids[2], lines)
        ev = [x for x in lines if x.startswith("EVENT FETCH")]
        self.assertEqual(len(ev), 1, lines)
        self.assertEqual(kv(ev[0])["uid"], str(uids[1]))
        self.assertIn("\\Flagged", kv(ev[0])["flags"])
        # The flag change's MODSEQ came with it: newer than the old state.
        self.assertGreater(int(kv(ev[0])["modseq"]), base)
        sel2 = kv([x for x in lines if x.startswith("SELECTED ")][0])
        self.assertGreater(int(sel2["highestmodseq"]), base)
        self.assertEqual(sel2["exists"], "3")
        # CHANGEDSINCE with VANISHED mid-session gives the same picture.
        p, lines = run_cli(self.d, "select Sel", "fetch 1:* flags,modseq changedsince %d vanished"
                           % base)
        self.ok(p, lines)
        self.assertIn("EVENT VANISHED earlier=1 %d" % uids[2], lines)
        self.assertEqual([kv(x)["uid"] for x in lines if x.startswith("MSG ")], [str(uids[1])])

    def test_select_qresync_known_uids(self):
        """SELECT ... (QRESYNC (v m known-uids)): Dovecot reports as
        vanished only the expunged UIDs inside the known set, so the
        parameters really reached it."""
        uids = self.folder("Known", [msg(i) for i in range(6)])
        p, lines = run_cli(self.d, "select Known condstore")
        self.ok(p, lines)
        sel = kv([x for x in lines if x.startswith("SELECTED ")][0])
        conn = self.d.imap()
        conn.select("Known")
        conn.uid("STORE", "%d,%d" % (uids[1], uids[4]), "+FLAGS", "(\\Deleted)")
        conn.expunge()
        conn.logout()
        base = int(sel["highestmodseq"])
        p, lines = run_cli(self.d, "select Known qresync %s %d %d:%d"
                           % (sel["uidvalidity"], base, uids[0], uids[2]), extra=["--trace"])
        self.ok(p, lines)
        self.assertRegex(p.stderr, r"C: A\d+ SELECT Known \(QRESYNC \(%s %d %d:%d\)\)"
                         % (sel["uidvalidity"], base, uids[0], uids[2]))
        self.assertEqual([x for x in lines if x.startswith("EVENT VANISHED")],
                         ["EVENT VANISHED earlier=1 %d" % uids[1]])
        p, lines = run_cli(self.d, "select Known qresync %s %d" % (sel["uidvalidity"], base))
        self.ok(p, lines)
        self.assertEqual([x for x in lines if x.startswith("EVENT VANISHED")],
                         ["EVENT VANISHED earlier=1 %d,%d" % (uids[1], uids[4])])
        self.assertIn("exists=4", [x for x in lines if x.startswith("SELECTED ")][0])

    # -- fetch ----------------------------------------------------------------

    def test_fetch_flags_and_bodies_byte_identical(self):
        msgs = mailgen.generate(12, seed=7, max_size=300 * 1024)
        flags = ["\\Seen", "\\Flagged $Forwarded", None, "\\Answered \\Seen"] * 3
        uids = self.folder("Bodies", msgs, flags=flags)
        out = os.path.join(self.tmp, "bodies")
        os.makedirs(out)
        p, lines = run_cli(self.d, "examine Bodies",
                           "fetch 1:* flags,size,date,modseq,body dir " + out)
        self.ok(p, lines)
        got = {int(kv(x)["uid"]): kv(x) for x in lines if x.startswith("MSG ")}
        self.assertEqual(sorted(got), uids)
        stored = self.d.fetch_all("alice", "Bodies")
        conn = self.d.imap()
        conn.select("Bodies", readonly=True)
        typ, data = conn.uid("FETCH", "1:*", "(INTERNALDATE)")
        conn.logout()
        dates = {int(re.search(rb"UID (\d+)", x).group(1)):
                 imaplib.Internaldate2tuple(x) for x in data}
        for uid, fl, body in stored:
            m = got[uid]
            with open(os.path.join(out, "%d.eml" % uid), "rb") as f:
                self.assertEqual(f.read(), body, "message %d differs" % uid)
            self.assertEqual(int(m["size"]), len(body))
            self.assertEqual(int(m["body"]), len(body))
            self.assertEqual(sorted(x for x in m["flags"].split(",") if x and x != "\\Recent"),
                             sorted(fl))
            self.assertEqual(int(m["date"]), int(time.mktime(dates[uid])))
            self.assertGreater(int(m["modseq"]), 0)

    def test_fetch_message_id_and_header(self):
        folded = (b"From: a@example.org\r\nSubject: folded\r\nMessage-ID:\r\n"
                  b"  <folded.1@t>\r\n\r\nbody\r\n")
        none = b"From: a@example.org\r\nSubject: no id\r\n\r\nbody\r\n"
        uids = self.folder("Ids", [msg(1), folded, none])
        p, lines = run_cli(self.d, "examine Ids", "fetch 1:* size,msgid,header")
        self.ok(p, lines)
        got = {int(kv(x)["uid"]): kv(x) for x in lines if x.startswith("MSG ")}
        self.assertEqual(got[uids[0]]["msgid"], "<1@t>")
        self.assertEqual(got[uids[1]]["msgid"], "<folded.1@t>")
        self.assertEqual(got[uids[2]]["msgid"], "NIL")
        for uid, m in ((uids[0], msg(1)), (uids[1], folded), (uids[2], none)):
            # The header block with the empty line that ends it.
            self.assertEqual(int(got[uid]["header"]), m.index(b"\r\n\r\n") + 4)
            self.assertEqual(int(got[uid]["size"]), len(m))

    def test_fetch_with_paused_sink(self):
        body = b"".join(b"line %06d of a slowly stored message\r\n" % i for i in range(20000))
        uids = self.folder("Slow", [msg(1, body)])
        out = os.path.join(self.tmp, "slow")
        os.makedirs(out)
        p, lines = run_cli(self.d, "select Slow", "fetch 1:* body dir " + out, "noop",
                           extra=["--slow-sink"])
        self.ok(p, lines)
        with open(os.path.join(out, "%d.eml" % uids[0]), "rb") as f:
            self.assertEqual(f.read(), msg(1, body))
        # No body data between a pause and its resume.
        sink = [x for x in lines if x.startswith("SINK ")][0]
        self.assertTrue(sink.endswith(" violations=0"), sink)
        self.assertGreater(int(sink.split()[1].split("=")[1]), 10)
        os.unlink(os.path.join(out, "%d.eml" % uids[0]))
        # One long pause at the first chunk: not a byte is read off the
        # socket (imap_net's counter) and no chunk delivered until the
        # resume; then the body completes.
        p, lines = run_cli(self.d, "select Slow", "fetch 1:* body dir " + out, "noop",
                           extra=["--pause-sink", "600"])
        self.ok(p, lines)
        self.assertIn("RESUME in_during=0 in_second_half=0 calls_during=0", lines)
        paused = kv([x for x in lines if x.startswith("PAUSED ")][0])
        self.assertLess(int(paused["body"]), len(body) // 2)
        sink = [x for x in lines if x.startswith("SINK ")][0]
        self.assertTrue(sink.endswith(" violations=0"), sink)
        with open(os.path.join(out, "%d.eml" % uids[0]), "rb") as f:
            self.assertEqual(f.read(), msg(1, body))

    def test_big_message_bounded_memory(self):
        big = mailgen.message(seed=3, size=20 * 1024 * 1024)
        self.assertGreaterEqual(len(big), 20 * 1024 * 1024)
        uid = self.folder("Big", [big, msg(1)])
        out = os.path.join(self.tmp, "big")
        os.makedirs(out)
        # ASan keeps freed memory in quarantine; keep it small so that the
        # peak reflects what the client holds, not what ASan holds back.
        env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=1"}
        p, lines = run_cli(self.d, "select Big", "fetch %d body dir %s" % (uid[1], out), env=env)
        self.ok(p, lines)
        small = int(lines[-1].split()[1])
        p, lines = run_cli(self.d, "select Big", "fetch %d body dir %s" % (uid[0], out), env=env)
        self.ok(p, lines)
        hwm = int(lines[-1].split()[1])
        with open(os.path.join(out, "%d.eml" % uid[0]), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(big).hexdigest())
        # The 20 MB body never sits in memory: the peak grows by far less
        # than its size over a run that fetched a tiny message, and stays
        # under 40 MB (about 9 MB without sanitizers, 25 MB under ASan).
        self.assertLess(hwm - small, 8 * 1024, (small, hwm))
        self.assertLess(hwm, 40 * 1024, (small, hwm))

    def test_5000_pipelined_fetches(self):
        n = 5000
        conn = self.d.imap()
        self.d.save_many("alice", "Many", [msg(i, b"x\r\n") for i in range(n)], conn=conn)
        conn.logout()
        t0 = time.monotonic()
        p, lines = run_cli(self.d, "select Many", "fetchmany %d" % n, "logout",
                           extra=["--trace"])
        elapsed = time.monotonic() - t0
        self.ok(p, lines)
        self.assertIn("FETCHMANY ok=%d msgs=%d" % (n, n), lines)
        # Pipelined: many commands went out before their answers came.
        sent = answered = max_out = 0
        for line in p.stderr.splitlines():
            if re.search(r"C: A\d+ UID FETCH", line):
                sent += 1
            elif re.search(r"S: A\d+ OK Fetch", line):
                answered += 1
            max_out = max(max_out, sent - answered)
        self.assertEqual(sent, n)
        self.assertGreater(max_out, 32)
        self.assertLessEqual(max_out, 64)
        self.assertLess(elapsed, 120)

    # -- search / store / append / expunge / move -------------------------------

    def test_search(self):
        uids = self.folder("Find", [msg(i) for i in range(6)],
                           flags=["\\Seen", None, "\\Seen", None, None, "\\Flagged"])
        p, lines = run_cli(self.d, "select Find", "search UNSEEN", "search ALL",
                           "search UID 2:4 SEEN", "search SUBJECT nomatch")
        self.ok(p, lines)
        s = [x for x in lines if x.startswith("SEARCH")]
        self.assertEqual(s[0], "SEARCH " + " ".join(str(uids[i]) for i in (1, 3, 4, 5)))
        self.assertEqual(s[1], "SEARCH " + " ".join(map(str, uids)))
        self.assertEqual(s[2], "SEARCH %d" % uids[2])
        self.assertEqual(s[3], "SEARCH")

    def test_store(self):
        uids = self.folder("Flags", [msg(i) for i in range(5)], flags="\\Seen")
        p, lines = run_cli(self.d, "select Flags condstore",
                           "store %d:%d + \\Flagged,$Label1" % (uids[0], uids[2]),
                           "store %d - \\Seen" % uids[1])
        self.ok(p, lines)
        stored = {u: set(f) for u, f, _ in self.d.fetch_all("alice", "Flags")}
        self.assertEqual(stored[uids[0]], {"\\Seen", "\\Flagged", "$Label1"})
        self.assertEqual(stored[uids[1]], {"\\Flagged", "$Label1"})
        self.assertEqual(stored[uids[3]], {"\\Seen"})
        # UNCHANGEDSINCE below the messages' modseq: nothing changes and
        # the conflict comes back as [MODIFIED].
        p, lines = run_cli(self.d, "select Flags condstore",
                           "store %d,%d + \\Draft unchangedsince 1" % (uids[3], uids[4]))
        self.ok(p, lines)
        self.assertIn("MODIFIED %d:%d" % (uids[3], uids[4]), lines)
        stored = {u: set(f) for u, f, _ in self.d.fetch_all("alice", "Flags")}
        self.assertNotIn("\\Draft", stored[uids[3]] | stored[uids[4]])

    def test_append(self):
        self.folder("Up")
        path = os.path.join(self.tmp, "up.eml")
        lf = msg(1, b"line one\r\nline two\r\n").replace(b"\r\n", b"\n")
        with open(path, "wb") as f:
            f.write(lf)
        p, lines = run_cli(self.d, "append Up %s flags=\\Seen,$Forwarded date=1700000000" % path,
                           "append Up %s reader" % path)
        self.ok(p, lines)
        app = [kv(x) for x in lines if x.startswith("APPENDED ")]
        self.assertEqual(len(app), 2)
        conn = self.d.imap()
        typ, data = conn.status("Up", "(UIDVALIDITY)")
        self.assertIn("UIDVALIDITY %s" % app[0]["uidvalidity"], data[0].decode())
        conn.select("Up", readonly=True)
        typ, data = conn.uid("FETCH", app[0]["uid"], "(INTERNALDATE)")
        conn.logout()
        self.assertEqual(time.mktime(imaplib.Internaldate2tuple(data[0])), 1700000000)
        stored = {u: (set(f), b) for u, f, b in self.d.fetch_all("alice", "Up")}
        crlf = lf.replace(b"\n", b"\r\n")
        fl, body = stored[int(app[0]["uid"])]
        self.assertEqual(body, crlf)
        self.assertEqual(fl, {"\\Seen", "$Forwarded"})
        self.assertEqual(stored[int(app[1]["uid"])][1], crlf)

    def test_append_to_missing_folder(self):
        path = os.path.join(self.tmp, "missing.eml")
        with open(path, "wb") as f:
            f.write(msg(1))
        p, lines = run_cli(self.d, "append NoSuchFolder " + path, "noop")
        self.assertEqual(p.returncode, 3)
        self.assertTrue(any(x.startswith("DONE append NO [TRYCREATE]") for x in lines), lines)
        self.assertIn("DONE noop OK", " ".join(lines))

    def test_append_uses_literal_plus(self):
        """Dovecot offers LITERAL+: APPEND announces {N+} and sends the body
        at once, never waiting for a continuation. Checked on the wire
        through a recording relay (plaintext, so the bytes are visible)."""
        self.folder("Plus")
        path = os.path.join(self.tmp, "plus.eml")
        body = msg(1, b"x" * 6000 + b"\r\n")
        with open(path, "wb") as f:
            f.write(body)
        proxy = RecordingProxy(self.d.port_imap)
        try:
            p, lines = run_cli(self.d, "caps", "append Plus %s" % path,
                               "append Plus %s reader" % path, "logout", tls="none",
                               port=proxy.port, extra=["--allow-plaintext", "--trace"])
        finally:
            proxy.close()
        self.ok(p, lines)
        self.assertIn("LITERAL+", [x for x in lines if x.startswith("CAPS ")][0].split())
        c2s, s2c = bytes(proxy.c2s), bytes(proxy.s2c)
        announce = b" APPEND Plus {%d+}\r\n" % len(body)
        self.assertEqual(c2s.count(announce + body + b"\r\n"), 2, c2s[:300])
        self.assertNotIn(b"{%d}" % len(body), c2s)
        # No continuation request ever came from the server.
        self.assertFalse([x for x in s2c.split(b"\r\n") if x.startswith(b"+")], s2c[:500])
        self.assertNotIn("S: + ", p.stderr)
        self.assertEqual([b for _, _, b in self.d.fetch_all("alice", "Plus")], [body, body])

    def test_trace_shows_literal_plus(self):
        # CLIENT BUG (reported to the owner of sync/, not fixed here; this
        # test fails until it is): the protocol trace writes a
        # non-synchronizing literal as "{N}" although "{N+}" goes on the wire
        # (imap_cmd.c records "{%llu}" in the trace when the command is built;
        # whether the literal is synchronizing is only decided in imap.c
        # write_parts), so a trace cannot tell LITERAL+ from a synchronizing
        # literal. test_append_uses_literal_plus proves the wire is right.
        self.folder("PlusTrace")
        path = os.path.join(self.tmp, "plustrace.eml")
        body = msg(1)
        with open(path, "wb") as f:
            f.write(body)
        p, lines = run_cli(self.d, "append PlusTrace %s" % path, extra=["--trace"])
        self.ok(p, lines)
        # Today the trace says "C: A5 APPEND PlusTrace {N}".
        self.assertRegex(p.stderr, r"C: A\d+ APPEND PlusTrace \{%d\+\}" % len(body))

    def test_uid_expunge(self):
        uids = self.folder("Exp", [msg(i) for i in range(3)], flags="\\Deleted")
        p, lines = run_cli(self.d, "select Exp", "expunge %d" % uids[1])
        self.ok(p, lines)
        self.assertIn("EVENT VANISHED earlier=0 %d" % uids[1], lines)
        # Only the named UID went; the other \Deleted messages stay.
        self.assertEqual([u for u, _, _ in self.d.fetch_all("alice", "Exp")], [uids[0], uids[2]])

    def test_move(self):
        uids = self.folder("From", [msg(i) for i in range(3)])
        self.folder("To", [msg(9)])
        p, lines = run_cli(self.d, "select From", "move %d:%d To" % (uids[0], uids[1]))
        self.ok(p, lines)
        cu = kv([x for x in lines if x.startswith("COPYUID ")][0])
        self.assertEqual(cu["src"], "%d:%d" % (uids[0], uids[1]))
        self.assertEqual(cu["dst"], "2:3")
        self.assertEqual([u for u, _, _ in self.d.fetch_all("alice", "From")], [uids[2]])
        to = self.d.fetch_all("alice", "To")
        self.assertEqual([u for u, _, _ in to], [1, 2, 3])
        self.assertEqual(to[1][2], msg(0))

    # -- IDLE -------------------------------------------------------------------

    def test_idle_sees_exists_within_a_second(self):
        self.folder("Idle", [msg(1)])
        env = dict(os.environ, IMAPCLI_PW=self.d.password("alice"))
        proc = subprocess.Popen(cli_args(self.d, ["select Idle", "idle 6"]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            lines = []

            def read_until(prefix, timeout):
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    r, _, _ = select.select([proc.stdout], [], [], 0.05)
                    if r:
                        line = proc.stdout.readline().decode().rstrip("\n")
                        if not line:
                            return None
                        lines.append(line)
                        if line.startswith(prefix):
                            return line
                return None

            conn = self.d.imap()
            self.assertIsNotNone(read_until("IDLING", 20), lines)
            t0 = time.monotonic()
            conn.append("Idle", None, None, msg(2))
            ev = read_until("EVENT EXISTS", 5)
            conn.logout()
            elapsed = time.monotonic() - t0
            self.assertEqual(ev, "EVENT EXISTS 2", lines)
            self.assertLess(elapsed, 1.0)
            out, err = proc.communicate(timeout=30)
            lines += out.decode().splitlines()
            self.assertEqual(proc.returncode, 0, err.decode()[-3000:])
            self.assertTrue(any(x.startswith("DONE idle OK") for x in lines), lines)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


class FallbackTest(unittest.TestCase):
    """A Dovecot that hides MOVE, LITERAL+, LIST-EXTENDED, ESEARCH and
    CONDSTORE after login: the client falls back to COPY + STORE + UID
    EXPUNGE, synchronizing literals, LIST + LSUB and plain SEARCH."""

    @classmethod
    def setUpClass(cls):
        cls.d = Dovecot(imap_capability="IMAP4rev1 ID ENABLE IDLE UIDPLUS").start()
        cls.tmp = tempfile.mkdtemp(prefix="imapcli-test-")

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_fallbacks(self):
        self.d.create_folder("alice", "Dst")
        uids = self.d.save_many("alice", "INBOX", [msg(i) for i in range(3)])
        path = os.path.join(self.tmp, "a.eml")
        with open(path, "wb") as f:
            f.write(msg(7).replace(b"\r\n", b"\n"))
        p, lines = run_cli(self.d, "caps", "list", "select INBOX", "search ALL",
                           "move %d Dst" % uids[0], "append Dst %s flags=\\Seen" % path,
                           extra=["--trace"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-4000:])
        self.assertIn("ENABLED condstore=0 qresync=0 utf8=0 compress=0 delim=/", lines)
        self.assertRegex(p.stderr, r'C: A\d+ LIST "" "\*"\n')
        self.assertRegex(p.stderr, r'C: A\d+ LSUB "" "\*"')
        self.assertTrue(any(x.startswith("FOLDER\tDst\t") and "subscribed" in x for x in lines),
                        lines)
        self.assertIn("SEARCH " + " ".join(map(str, uids)), lines)
        self.assertRegex(p.stderr, r"C: A\d+ UID COPY %d Dst" % uids[0])
        self.assertRegex(p.stderr, r"C: A\d+ UID STORE %d \+FLAGS.SILENT \(\\Deleted\)" % uids[0])
        self.assertRegex(p.stderr, r"C: A\d+ UID EXPUNGE %d" % uids[0])
        self.assertRegex(p.stderr, r"C: A\d+ APPEND Dst \(\\Seen\) \{\d+\}")
        self.assertRegex(p.stderr, r"S: \+ OK")  # waited for the continuation
        self.assertIn("COPYUID", " ".join(lines))
        self.assertEqual([u for u, _, _ in self.d.fetch_all("alice", "INBOX")], uids[1:])
        dst = self.d.fetch_all("alice", "Dst")
        self.assertEqual([b for _, _, b in dst], [msg(0), msg(7)])

    def test_untagged_expunge_event(self):
        """Without QRESYNC Dovecot reports a removal as `* n EXPUNGE`: the
        owner gets it with the message's sequence number, and the count
        the client keeps for the folder drops."""
        uids = self.d.save_many("alice", "ExpEv", [msg(i) for i in range(4)], flags="\\Deleted")
        p, lines = run_cli(self.d, "caps", "select ExpEv", "expunge %d" % uids[2], "selected",
                           "expunge %d" % uids[0], "selected")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-4000:])
        self.assertIn("ENABLED condstore=0 qresync=0", " ".join(lines))
        self.assertEqual([x for x in lines if x.startswith(("EVENT EXPUNGE", "EVENT VANISHED",
                                                            "SELECTEDNOW"))],
                         ["EVENT EXPUNGE 3", "SELECTEDNOW uidvalidity=%s uidnext=5 exists=3 "
                          "highestmodseq=0" % self.uidvalidity("ExpEv"),
                          "EVENT EXPUNGE 1", "SELECTEDNOW uidvalidity=%s uidnext=5 exists=2 "
                          "highestmodseq=0" % self.uidvalidity("ExpEv")])
        self.assertEqual([u for u, _, _ in self.d.fetch_all("alice", "ExpEv")],
                         [uids[1], uids[3]])

    def uidvalidity(self, folder):
        conn = self.d.imap()
        typ, data = conn.status(folder, "(UIDVALIDITY)")
        conn.logout()
        return re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1).decode()

    def test_expunge_needs_uidplus(self):
        d = Dovecot(imap_capability="IMAP4rev1 ID ENABLE IDLE").start()
        try:
            uids = d.save_many("alice", "INBOX", [msg(1), msg(2)])
            d.create_folder("alice", "Dst")
            p, lines = run_cli(d, "select INBOX", "expunge %d" % uids[0],
                               "move %d Dst" % uids[0])
            self.assertEqual(p.returncode, 3, p.stdout + p.stderr[-3000:])
            self.assertIn("DONE expunge ERR not supported", lines)
            # Without MOVE and UIDPLUS the message is copied and flagged but
            # not expunged (a plain EXPUNGE would remove others' too).
            self.assertIn("NOTEXPUNGED", lines)
            inbox = d.fetch_all("alice", "INBOX")
            self.assertEqual([u for u, _, _ in inbox], uids)
            self.assertIn("\\Deleted", inbox[0][1])
            self.assertEqual(len(d.fetch_all("alice", "Dst")), 1)
        finally:
            d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
