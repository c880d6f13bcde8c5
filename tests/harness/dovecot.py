#!/usr/bin/env python3
"""A throwaway Dovecot 2.3 on loopback for mailsync's integration tests.

    with Dovecot() as d:                      # starts, stops on exit
        d.save("alice", "INBOX", msg_bytes)   # deliver via IMAP APPEND
        imap = d.imap("alice")                # logged-in IMAP4_SSL
        d.fetch_all("alice", "INBOX")         # [(uid, flags, bytes), ...]

Everything lives in one fresh temporary directory: configuration, base_dir
(sockets, master.pid), state_dir, the log, users' homes, and a small PKI made
with the openssl CLI:

    ca_cert                     test CA; signed server_cert (pass as ca_file)
    server_cert, server_key     CN=localhost, SAN DNS:localhost, IP:127.0.0.1
    expired_cert, expired_key   same names, signed by the test CA, valid only
                                on 2020-01-01
    other_ca_cert               a second CA that signed only other_cert
    other_cert, other_key       same names as server_cert, signed by other CA
    self_signed_cert/_key       same names, self-signed

Dovecot serves server_cert unless Dovecot(cert="expired"|"other"|
"self_signed") is given. Ports are free ports on 127.0.0.1 picked at start:
port_imap (STARTTLS), port_imaps, port_pop3 (STLS), port_pop3s.

As root, mail is owned by nobody/nogroup (65534) and the login and internal
processes run as Debian's dovenull/dovecot users; as a normal user,
everything runs as that user. The Dovecot master runs in the foreground as
our child with PR_SET_PDEATHSIG, so a test that dies, even by SIGKILL, takes
its Dovecot with it (note: the signal fires when the *thread* that started
it exits, so start it from the main thread). stop() also runs at exit.

MAILSYNC_KEEP_TMP=1 keeps the directory after stop() for post-mortems.

Command line (used by contrib/demo):
    dovecot.py demo --state DIR [--count N]   start, seed mail, write
                                              DIR/config.yaml, leave running
    dovecot.py info --state DIR               folders and message counts
    dovecot.py stop --state DIR               stop the demo server
"""

import argparse
import atexit
import base64
import ctypes
import email.utils
import imaplib
import json
import os
import poplib
import pwd
import grp
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

DOVECOT = os.environ.get("MAILSYNC_DOVECOT", "/usr/sbin/dovecot")
DOVEADM = os.environ.get("MAILSYNC_DOVEADM", "/usr/bin/doveadm")

DEFAULT_USER = "alice"
DEFAULT_PASSWORD = "secret-alice"

# A capability list without CONDSTORE, QRESYNC, NOTIFY, LIST-STATUS,
# COMPRESS and friends, for tests of the fallback paths.
MINIMAL_IMAP_CAPABILITY = "IMAP4rev1 ID ENABLE IDLE UIDPLUS LITERAL+ MOVE SPECIAL-USE"

MAIL_UID = 65534  # nobody/nogroup: the owner of mail files when run as root


class _IMAP4SSLFrom(imaplib.IMAP4_SSL):
    """IMAP4_SSL connecting from a given local address."""

    def __init__(self, source, *args, **kw):
        self._source = source
        super().__init__(*args, **kw)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class DovecotError(RuntimeError):
    pass


# ---------------------------------------------------------------------------
# IMAP helpers that imaplib lacks


def mutf7_encode(name):
    """Modified UTF-7 of RFC 3501 section 5.1.3 for an IMAP mailbox name."""
    out = []
    pending = []

    def flush():
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(name):
    """The inverse of mutf7_encode."""
    if isinstance(name, bytes):
        name = name.decode("ascii")

    def dec(m):
        body = m.group(1)
        if body == "":
            return "&"
        b = body.replace(",", "/")
        b += "=" * (-len(b) % 4)
        return base64.b64decode(b).decode("utf-16-be")

    return re.sub(r"&([^-]*)-", dec, name)


def imap_quote(s):
    """A quoted string for an IMAP command (imaplib no longer quotes)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def imap_mailbox(name):
    """A folder name (UTF-8, '/' separated) as a quoted mUTF-7 argument."""
    return imap_quote(mutf7_encode(name))


def parse_fetch(data):
    """imaplib FETCH response data -> list of dicts with 'uid', 'flags'
    (tuple of str) and 'body' (bytes or None), in server order.

    imaplib returns a (prefix, literal) tuple for every message with a
    literal, followed by bytes holding whatever came after the literal (at
    least ')'); items such as FLAGS may sit on either side of it."""
    out = []
    cur = None
    for item in data or []:
        if item is None:
            continue
        if isinstance(item, tuple):
            cur = {"meta": item[0], "body": item[1]}
            out.append(cur)
        elif cur is not None and not re.match(rb"^\d+ \(", item):
            cur["meta"] += b" " + item
        else:
            cur = {"meta": item, "body": None}
            out.append(cur)
    result = []
    for c in out:
        meta = c["meta"]
        m = re.search(rb"\bUID (\d+)", meta)
        f = re.search(rb"\bFLAGS \(([^)]*)\)", meta)
        result.append(
            {
                "uid": int(m.group(1)) if m else None,
                "flags": tuple(f.group(1).decode().split()) if f else None,
                "body": c["body"],
            }
        )
    return result


def list_mailboxes(conn):
    """LIST "" "*" over an imaplib connection: [(attributes, name)] with
    name decoded from modified UTF-7; \\Noselect and \\NonExistent
    entries left out."""
    typ, data = conn.list('""', '"*"')
    if typ != "OK":
        raise DovecotError("LIST: %s" % data)
    out = []
    for line in data:
        if line is None:
            continue
        if isinstance(line, tuple):  # the name came as a literal
            m = re.match(rb"^\(([^)]*)\)", line[0])
            attrs, name = (m.group(1) if m else b""), line[1]
        else:
            m = re.match(rb'^\(([^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (.*)$', line)
            if not m:
                continue
            attrs, name = m.group(1), m.group(2)
            if name.startswith(b'"'):
                name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
        if b"\\Noselect" in attrs or b"\\NonExistent" in attrs:
            continue
        out.append((attrs.decode(), mutf7_decode(name)))
    return out


def pop3_retr(conn, which):
    """RETR via poplib, returning the message bytes as the server has them.

    poplib strips each line's CRLF and undoes dot-stuffing; a message on
    the wire always ends with CRLF before the terminating '.', so joining
    with CRLF and adding a final CRLF gives the exact bytes."""
    _resp, lines, _octets = conn.retr(which)
    return b"\r\n".join(lines) + b"\r\n"


# ---------------------------------------------------------------------------
# Small helpers


def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run(args):
    """Runs a helper command (openssl); raises with its output on failure."""
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise DovecotError("%s failed (%d):\n%s" % (" ".join(args), p.returncode, p.stdout))
    return p


def _alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _children(pid):
    """pid and all its descendants, from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(d)] = int(fields[1])
    found = [pid]
    i = 0
    while i < len(found):
        found += [p for p, pp in parent.items() if pp == found[i] and p not in found]
        i += 1
    return [p for p in found if p in parent]


_libc = None


def _set_pdeathsig():
    """Runs in the child between fork and exec: the kernel sends SIGTERM to
    Dovecot's master when the test process dies, however it dies."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


_running = []


@atexit.register
def _stop_all():
    for d in list(_running):
        try:
            d.stop()
        except Exception as e:  # at exit there is no one left to tell but stderr
            print("dovecot harness: stop failed: %s" % e, file=sys.stderr)


# ---------------------------------------------------------------------------
# The PKI


_CA_CNF = """\
[ req ]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[ dn ]
CN = {cn}
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ ca ]
default_ca = testca
[ testca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
certificate = {dir}.pem
private_key = {dir}.key
default_md = sha256
policy = pol
unique_subject = no
email_in_dn = no
copy_extensions = none
x509_extensions = server
[ pol ]
commonName = supplied
[ server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_LEAF_CNF = """\
[ req ]
distinguished_name = dn
prompt = no
x509_extensions = server
[ dn ]
CN = localhost
[ server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
"""

# EC keys: generating them takes milliseconds where RSA takes a noticeable
# fraction of a second, and every test run makes five.
_NEWKEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _make_ca(tls, name, cn):
    base = os.path.join(tls, name)
    os.makedirs(base + "/newcerts")
    open(base + "/index.txt", "w").close()
    with open(base + "/serial", "w") as f:
        f.write("%016X\n" % int.from_bytes(os.urandom(7), "big"))
    cnf = base + ".cnf"
    with open(cnf, "w") as f:
        f.write(_CA_CNF.format(cn=cn, dir=base))
    _run(["openssl", "req", "-x509", "-config", cnf] + _NEWKEY
         + ["-keyout", base + ".key", "-out", base + ".pem", "-days", "3650"])
    return base


def _issue(tls, ca, name, start=None, end=None):
    """A leaf key and certificate for localhost signed by ca."""
    base = os.path.join(tls, name)
    with open(base + ".cnf", "w") as f:
        f.write(_LEAF_CNF)
    _run(["openssl", "req", "-new", "-config", base + ".cnf"] + _NEWKEY
         + ["-keyout", base + ".key", "-out", base + ".csr"])
    args = ["openssl", "ca", "-batch", "-notext", "-config", ca + ".cnf",
            "-in", base + ".csr", "-out", base + ".pem"]
    # openssl 3.0's x509 command cannot backdate; "ca" can, which is the
    # only way to an expired certificate without faking the clock.
    if start is not None:
        args += ["-startdate", start, "-enddate", end]
    else:
        args += ["-days", "825"]
    _run(args)
    return base


def _self_signed(tls, name):
    base = os.path.join(tls, name)
    with open(base + ".cnf", "w") as f:
        f.write(_LEAF_CNF)
    _run(["openssl", "req", "-x509", "-config", base + ".cnf"] + _NEWKEY
         + ["-keyout", base + ".key", "-out", base + ".pem", "-days", "825"])
    return base


# ---------------------------------------------------------------------------
# The server


class Dovecot:
    """One Dovecot instance. Constructor options:

    imap_capability  None for Dovecot's own list, or a string that replaces
                     the post-login CAPABILITY (see MINIMAL_IMAP_CAPABILITY)
    extra_conf       text appended to dovecot.conf
    pop3_uidl_format Dovecot's pop3_uidl_format (default %08Xu%08Xv)
    mail_location    default maildir:~/Maildir (Maildir++ layout)
    separator        IMAP hierarchy separator, default '/'
    cert             which certificate to serve: server (default), expired,
                     other, self_signed
    users            dict name -> password (default alice/secret-alice)
    root             directory to use instead of a fresh mkdtemp (must be
                     empty or absent)
    detached         no PDEATHSIG and no stop at exit: the server outlives
                     this process (the demo)
    auth_failure_delay  seconds Dovecot waits before answering a failed
                     login (Dovecot's default is 2; 0 here for fast tests).
                     Dovecot's growing per-IP penalty is always off.

    Attributes: dir, conf_path, log_path, base_dir, home(user), users,
    host ('localhost'), port_imap, port_imaps, port_pop3, port_pop3s, pid,
    and the certificate paths listed in the module docstring.
    """

    def __init__(self, imap_capability=None, extra_conf="", pop3_uidl_format="%08Xu%08Xv",
                 mail_location="maildir:~/Maildir", separator="/", cert="server", users=None,
                 root=None, detached=False, auth_failure_delay=0):
        self.imap_capability = imap_capability
        self.extra_conf = extra_conf
        self.pop3_uidl_format = pop3_uidl_format
        self.mail_location = mail_location
        self.separator = separator
        self.cert = cert
        self.detached = detached
        self.auth_failure_delay = auth_failure_delay
        self.users = dict(users) if users is not None else {DEFAULT_USER: DEFAULT_PASSWORD}
        self.host = "localhost"
        self.proc = None
        self.pid = None
        self.is_root = os.geteuid() == 0

        if root is None:
            self.dir = tempfile.mkdtemp(prefix="mailsync-dovecot-")
        else:
            os.makedirs(root, exist_ok=True)
            if os.listdir(root):
                raise DovecotError("%s is not empty" % root)
            self.dir = os.path.abspath(root)
        try:
            self._prepare()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.port_imap = self.port_imaps = self.port_pop3 = self.port_pop3s = None

    # -- setup ----------------------------------------------------------

    def _prepare(self):
        # The mail and login processes run as other users when we are root
        # and must be able to traverse the directory and its parents.
        os.chmod(self.dir, 0o755)
        if self.is_root:
            parent = os.path.dirname(self.dir)
            while parent != "/":
                if not os.stat(parent).st_mode & 0o001:
                    raise DovecotError(
                        "%s is not searchable by others: Dovecot's mail processes run as nobody "
                        "when started by root and cannot reach %s; use a directory under /tmp"
                        % (parent, self.dir))
                parent = os.path.dirname(parent)
        self.base_dir = os.path.join(self.dir, "run")
        self.state_dir = os.path.join(self.dir, "state")
        self.home_root = os.path.join(self.dir, "home")
        self.log_path = os.path.join(self.dir, "dovecot.log")
        self.conf_path = os.path.join(self.dir, "dovecot.conf")
        self.passwd_path = os.path.join(self.dir, "users")
        self.stderr_path = os.path.join(self.dir, "master.stderr")
        for d in (self.base_dir, self.state_dir, self.home_root):
            os.makedirs(d, mode=0o755)
        if self.is_root:
            os.chown(self.home_root, MAIL_UID, MAIL_UID)
        self._make_pki()
        self._write_users()

    def _make_pki(self):
        tls = os.path.join(self.dir, "tls")
        os.makedirs(tls)
        ca = _make_ca(tls, "ca", "mailsync test CA")
        other = _make_ca(tls, "other-ca", "mailsync other test CA")
        server = _issue(tls, ca, "server")
        expired = _issue(tls, ca, "expired", "20200101000000Z", "20200102000000Z")
        otherleaf = _issue(tls, other, "other")
        selfs = _self_signed(tls, "self-signed")
        self.tls_dir = tls
        self.ca_cert = ca + ".pem"
        self.other_ca_cert = other + ".pem"
        self.server_cert, self.server_key = server + ".pem", server + ".key"
        self.expired_cert, self.expired_key = expired + ".pem", expired + ".key"
        self.other_cert, self.other_key = otherleaf + ".pem", otherleaf + ".key"
        self.self_signed_cert, self.self_signed_key = selfs + ".pem", selfs + ".key"
        # Keys must be readable by Dovecot's config process only, but that
        # runs as root or as us, so the default mode is fine.

    def cert_paths(self, which=None):
        which = which or self.cert
        name = {"server": "server", "expired": "expired", "other": "other",
                "self_signed": "self-signed"}[which]
        base = os.path.join(self.tls_dir, name)
        return base + ".pem", base + ".key"

    def _write_users(self):
        # passwd-file with scheme=PLAIN: "user:password". Dovecot re-reads
        # the file when it changes, so users can be added while running.
        tmp = self.passwd_path + ".tmp"
        with open(tmp, "w") as f:
            for name, pw in self.users.items():
                f.write("%s:%s\n" % (name, pw))
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.passwd_path)

    def add_user(self, name, password):
        """Adds a user or changes a password, at any time. When running,
        returns once Dovecot accepts the new password: its passwd-file
        driver looks at the file at most once a second."""
        self.users[name] = password
        self._write_users()
        if self.pid is None:
            return
        deadline = time.monotonic() + 5
        while True:
            p = self.doveadm("auth", "test", name, password, check=False)
            if p.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise DovecotError("user %s not accepted: %s%s" % (name, p.stdout, p.stderr))
            time.sleep(0.2)

    def _config(self):
        if self.is_root:
            internal_user, internal_group, login_user = "dovecot", "dovecot", "dovenull"
            uid = gid = MAIL_UID
            first_valid_uid = 500
        else:
            internal_user = pwd.getpwuid(os.getuid()).pw_name
            internal_group = grp.getgrgid(os.getgid()).gr_name
            login_user = internal_user
            uid, gid = os.getuid(), os.getgid()
            first_valid_uid = 1
        cert, key = self.cert_paths()
        capability = ""
        if self.imap_capability is not None:
            capability = "  imap_capability = %s\n" % self.imap_capability
        sep = self.separator
        return f"""\
# Written by tests/harness/dovecot.py for one test run.
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_path}
instance_name = mailsync-test-{os.path.basename(self.dir)}
protocols = imap pop3
listen = 127.0.0.1
shutdown_clients = yes

default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {first_valid_uid}
first_valid_gid = 0

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = {self.auth_failure_delay} secs
auth_verbose = yes

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_path}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.home_root}/%u
}}

mail_location = {self.mail_location}
namespace inbox {{
  inbox = yes
  separator = {sep}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
}}

service imap-login {{
  chroot =
  inet_listener imap {{
    port = {self.port_imap}
  }}
  inet_listener imaps {{
    port = {self.port_imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {self.port_pop3}
  }}
  inet_listener pop3s {{
    port = {self.port_pop3s}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # Dovecot delays logins from an IP after failed ones (2, 4, 8... s, via
  # anvil). Tests fail logins on purpose; moving the socket the auth
  # process looks for switches the penalty off (it treats a missing socket
  # as "no penalty tracking").
  unix_listener anvil-auth-penalty {{
    path = anvil-auth-penalty-disabled
  }}
}}

protocol imap {{
  mail_plugins = $mail_plugins imap_zlib
  mail_max_userip_connections = 50
{capability}}}
protocol pop3 {{
  pop3_uidl_format = {self.pop3_uidl_format}
  mail_max_userip_connections = 50
}}
{self.extra_conf}
"""

    # -- life cycle -----------------------------------------------------

    def start(self, timeout=20):
        global _libc
        if self.proc is not None or self.pid is not None:
            raise DovecotError("already started")
        if _libc is None and not self.detached:
            _libc = ctypes.CDLL(None, use_errno=True)
        last_err = None
        for _attempt in range(5):
            self.port_imap, self.port_imaps, self.port_pop3, self.port_pop3s = _free_ports(4)
            with open(self.conf_path, "w") as f:
                f.write(self._config())
            err = self._try_start(timeout)
            if err is None:
                if not self.detached:
                    _running.append(self)
                return self
            last_err = err
            # Another process took one of our ports between picking and
            # binding: pick new ones.
            if "Address already in use" not in err:
                break
        raise DovecotError("dovecot did not start:\n" + last_err)

    def _try_start(self, timeout):
        # Each attempt starts with empty logs so that the error reported is
        # the one of the last attempt.
        for path in (self.stderr_path, self.log_path):
            if os.path.exists(path):
                os.truncate(path, 0)
        stderr = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", self.conf_path],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                start_new_session=True,
                preexec_fn=None if self.detached else _set_pdeathsig,
            )
        finally:
            stderr.close()
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        pending = [self.port_imap, self.port_imaps, self.port_pop3, self.port_pop3s]
        # The master logs "starting up" only after it has bound every
        # listener. Waiting for it, not just for connectable ports, matters
        # when another process holds one of our ports: a connect would
        # succeed to that process while Dovecot is exiting with EADDRINUSE.
        started = False
        while pending or not started:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = self.pid = None
                return "dovecot exited with status %s\n%s" % (code, self._log_tail())
            if not started:
                started = "starting up" in self.log()
            if started and pending:
                try:
                    socket.create_connection(("127.0.0.1", pending[0]), timeout=1).close()
                    pending.pop(0)
                    continue
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self._kill()
                return "dovecot not ready after %ds (ports %s not listening)\n%s" % (
                    timeout, pending, self._log_tail())
            time.sleep(0.02)
        return None

    def _log_tail(self, lines=30):
        """The end of the log, or of the master's stderr when the log is
        empty (errors before the log process runs go only there)."""
        for p in (self.log_path, self.stderr_path):
            try:
                with open(p, errors="replace") as f:
                    text = "".join(f.readlines()[-lines:])
            except OSError:
                continue
            if text:
                return text
        return "(no log output)"

    def log(self):
        """The whole Dovecot log so far (for assertions and failure output)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def processes(self):
        """PIDs of the master and every process it started."""
        if self.pid is None or not _alive(self.pid):
            return []
        return _children(self.pid)

    def _kill(self):
        """SIGTERM the master (it stops its children), wait, escalate."""
        if self.pid is None:
            return
        pids = _children(self.pid) if _alive(self.pid) else []
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    break
            elif not _alive(self.pid):
                break
            time.sleep(0.05)
        else:
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.proc is not None:
                self.proc.wait()
        # Children exit when they see the master go; give them a moment so
        # that the caller can rely on "nothing left" after stop().
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in pids:
            if _alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = self.pid = None

    def stop(self):
        """Stops Dovecot and removes the directory (unless MAILSYNC_KEEP_TMP
        is set). Safe to call twice."""
        if self in _running:
            _running.remove(self)
        self._kill()
        if self.dir is not None and os.path.isdir(self.dir):
            if os.environ.get("MAILSYNC_KEEP_TMP"):
                print("dovecot harness: keeping %s" % self.dir, file=sys.stderr)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)

    def reload(self):
        """Rewrites the configuration (e.g. after changing self.cert or
        self.imap_capability) and makes Dovecot re-read it. Existing
        connections keep their old settings."""
        with open(self.conf_path, "w") as f:
            f.write(self._config())
        self.doveadm("reload")
        # The master restarts its services asynchronously; wait for the
        # listeners to answer again.
        deadline = time.monotonic() + 10
        for port in (self.port_imap, self.port_imaps, self.port_pop3, self.port_pop3s):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise DovecotError("port %d gone after reload" % port)
                    time.sleep(0.05)

    def __enter__(self):
        if self.pid is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- access ---------------------------------------------------------

    def ssl_context(self, ca_file=None):
        """A client context that verifies against the test CA (or ca_file)
        and checks the host name."""
        return ssl.create_default_context(cafile=ca_file or self.ca_cert)

    def password(self, user):
        return self.users[user]

    def home(self, user=DEFAULT_USER):
        return os.path.join(self.home_root, user)

    def doveadm(self, *args, check=True):
        """Runs `doveadm -c CONF args...`; returns the CompletedProcess
        (text mode). Raises DovecotError with its output on failure."""
        p = subprocess.run([DOVEADM, "-c", self.conf_path] + [str(a) for a in args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and p.returncode != 0:
            raise DovecotError("doveadm %s failed (%d): %s%s" % (" ".join(map(str, args)), p.returncode,
                                                                p.stdout, p.stderr))
        return p

    def imap(self, user=DEFAULT_USER, password=None, starttls=False, login=True, timeout=30,
             source=None):
        """An imaplib connection, TLS verified against the test CA with host
        name 'localhost': implicit TLS on port_imaps, or STARTTLS on
        port_imap. Logged in unless login=False. source: the local address
        to connect from (e.g. "127.0.0.2", so that the test's own
        connection does not count against mail_max_userip_connections,
        which counts per user and remote address)."""
        ctx = self.ssl_context()
        if starttls and source is not None:
            raise ValueError("imap(): source is for implicit TLS only")
        if starttls:
            conn = imaplib.IMAP4(self.host, self.port_imap, timeout=timeout)
            conn.starttls(ssl_context=ctx)
        elif source is not None:
            conn = _IMAP4SSLFrom(source, self.host, self.port_imaps, ssl_context=ctx,
                                 timeout=timeout)
        else:
            conn = imaplib.IMAP4_SSL(self.host, self.port_imaps, ssl_context=ctx, timeout=timeout)
        if login:
            try:
                conn.login(user, password if password is not None else self.users[user])
            except BaseException:
                conn.shutdown()
                raise
        return conn

    def pop3(self, user=DEFAULT_USER, password=None, stls=False, login=True, timeout=30):
        """A poplib connection (POP3S, or STLS on port_pop3), logged in."""
        ctx = self.ssl_context()
        if stls:
            conn = poplib.POP3(self.host, self.port_pop3, timeout=timeout)
            conn.stls(context=ctx)
        else:
            conn = poplib.POP3_SSL(self.host, self.port_pop3s, context=ctx, timeout=timeout)
        if login:
            try:
                conn.user(user)
                conn.pass_(password if password is not None else self.users[user])
            except BaseException:
                conn.close()
                raise
        return conn

    # -- mail -----------------------------------------------------------

    @staticmethod
    def _internaldate(msg):
        """The message's Date header as an IMAP date-time, or None."""
        m = re.search(rb"^Date:[ \t]*([^\r\n]*)", msg.split(b"\r\n\r\n", 1)[0], re.M | re.I)
        if not m:
            return None
        try:
            dt = email.utils.parsedate_to_datetime(m.group(1).decode("ascii", "replace"))
            if dt.tzinfo is None:
                return None
            return imaplib.Time2Internaldate(dt)
        except (TypeError, ValueError, OverflowError):
            return None

    def create_folder(self, user, folder, conn=None):
        """Creates folder (and parents) if it does not exist yet."""
        own = conn is None
        conn = conn or self.imap(user)
        try:
            typ, data = conn.create(imap_mailbox(folder))
            if typ != "OK" and b"ALREADYEXISTS" not in b" ".join(d for d in data if d):
                raise DovecotError("CREATE %s: %s" % (folder, data))
            conn.subscribe(imap_mailbox(folder))
        finally:
            if own:
                conn.logout()

    def save_many(self, user, folder, msgs, flags=None, conn=None):
        """APPENDs every message of msgs to folder (created if needed) over
        one connection. flags: None, a string like "\\Seen \\Flagged", or a
        list of such strings, one per message. The internal date is taken
        from each message's Date header. Returns the list of UIDs."""
        own = conn is None
        conn = conn or self.imap(user)
        try:
            if folder.upper() != "INBOX":
                self.create_folder(user, folder, conn)
            uids = []
            for i, msg in enumerate(msgs):
                fl = flags[i] if isinstance(flags, (list, tuple)) else flags
                fl = "(%s)" % fl if fl else None
                typ, data = conn.append(imap_mailbox(folder), fl, self._internaldate(msg), msg)
                if typ != "OK":
                    raise DovecotError("APPEND to %s: %s" % (folder, data))
                m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
                uids.append(int(m.group(1)) if m else None)
            return uids
        finally:
            if own:
                conn.logout()

    def save(self, user, folder, msg, flags=None):
        """Delivers one message (IMAP APPEND); returns its UID."""
        return self.save_many(user, folder, [msg], flags)[0]

    def folders(self, user=DEFAULT_USER):
        """Folder names (decoded UTF-8, '/' separated), selectable only."""
        conn = self.imap(user)
        try:
            return [name for _attrs, name in list_mailboxes(conn)]
        finally:
            conn.logout()

    def counts(self, user=DEFAULT_USER):
        """dict folder -> number of messages."""
        out = {}
        conn = self.imap(user)
        try:
            for f in self.folders(user):
                typ, data = conn.status(imap_mailbox(f), "(MESSAGES)")
                m = re.search(rb"MESSAGES (\d+)", data[0])
                out[f] = int(m.group(1))
        finally:
            conn.logout()
        return out

    def fetch_all(self, user=DEFAULT_USER, folder="INBOX", conn=None):
        """[(uid, flags tuple, bytes)] of every message in folder, in UID
        order, read with BODY.PEEK[] so that \\Seen is not set. \\Recent
        is left out of the flags."""
        own = conn is None
        conn = conn or self.imap(user)
        try:
            typ, data = conn.select(imap_mailbox(folder), readonly=True)
            if typ != "OK":
                raise DovecotError("EXAMINE %s: %s" % (folder, data))
            if int(data[0]) == 0:
                return []
            typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            if typ != "OK":
                raise DovecotError("FETCH %s: %s" % (folder, data))
            # \Recent is per session and would make comparisons flaky.
            msgs = [
                (m["uid"], tuple(f for f in m["flags"] if f != "\\Recent"), m["body"])
                for m in parse_fetch(data)
                if m["body"] is not None
            ]
            conn.close()
            return sorted(msgs)
        finally:
            if own:
                conn.logout()

    def pop3_all(self, user=DEFAULT_USER, stls=False):
        """[(uidl, bytes)] of INBOX over POP3, in message-number order."""
        conn = self.pop3(user, stls=stls)
        try:
            _resp, listing, _ = conn.uidl()
            out = []
            for line in listing:
                num, uidl = line.split(None, 1)
                out.append((uidl.decode(), pop3_retr(conn, int(num))))
            return out
        finally:
            conn.quit()


# ---------------------------------------------------------------------------
# The demo: a server that outlives this process, with sample mail and a
# mailsync configuration pointing at it.

DEMO_FOLDERS = ("INBOX", "Lists/dev", "Archive/2023", "Entwürfe")


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(str(v), ensure_ascii=False)


def _yaml_lines(value, indent):
    pad = "  " * indent
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                out.append("%s%s:" % (pad, _yaml_scalar(k) if not re.match(r"^[A-Za-z_][\w.-]*$", k) else k))
                out += _yaml_lines(v, indent + 1)
            else:
                key = k if re.match(r"^[A-Za-z_][\w.-]*$", k) else _yaml_scalar(k)
                out.append("%s%s: %s" % (pad, key, _yaml_inline(v)))
    else:
        for v in value:
            out.append("%s- %s" % (pad, _yaml_inline(v)))
    return out


def _yaml_inline(v):
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join("%s: %s" % (_yaml_scalar(k), _yaml_scalar(x)) for k, x in v.items()) + "}"
    return _yaml_scalar(v)


def mailsync_config_text(accounts, state_dir=None, comment=None):
    """mailsync's config.yaml: accounts is a dict account name -> dict of
    settings (keys as in daemon/config.c: protocol, host, port, tls,
    ca_file, user, password, maildir, folders, pop: {...}, ...)."""
    top = {}
    if state_dir is not None:
        top["state_dir"] = state_dir
    top["accounts"] = accounts
    head = "".join("# %s\n" % line for line in (comment or "").splitlines())
    return head + "\n".join(_yaml_lines(top, 0)) + "\n"


def imap_account(d, maildir, user=DEFAULT_USER, tls="implicit", **extra):
    """Settings of a mailsync IMAP account on Dovecot d (for
    mailsync_config_text)."""
    acct = {
        "protocol": "imap",
        "host": "localhost",
        "port": d.port_imaps if tls == "implicit" else d.port_imap,
        "tls": tls,
        "ca_file": d.ca_cert,
        "user": user,
        "password": d.users[user],
        "maildir": maildir,
    }
    acct.update(extra)
    return acct


def pop3_account(d, maildir, user=DEFAULT_USER, tls="implicit", **extra):
    """Settings of a mailsync POP3 account on Dovecot d."""
    acct = imap_account(d, maildir, user, tls, **extra)
    acct["protocol"] = "pop3"
    acct["port"] = d.port_pop3s if tls == "implicit" else d.port_pop3
    return acct


def write_mailsync_config(path, accounts, state_dir=None, comment=None):
    """Writes mailsync_config_text(...) to path with mode 0600 (mailsync
    warns about passwords in files others can read)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(mailsync_config_text(accounts, state_dir, comment))
    os.chmod(path, 0o600)


def _demo_state(state):
    with open(os.path.join(state, "demo.json")) as f:
        return json.load(f)


def _demo_stop(state, quiet=False):
    """Stops a demo server recorded in state/demo.json. Returns True if one
    was running."""
    try:
        info = _demo_state(state)
    except (OSError, ValueError):
        return False
    pid = info.get("pid")
    was = False
    # Only signal the pid if it is still the Dovecot we started: pids are
    # reused, and a stale demo.json must not kill an unrelated process.
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read().split(b"\0")
        ours = info["conf"].encode() in cmd
    except (OSError, TypeError):
        ours = False
    if ours and _alive(pid):
        was = True
        pids = _children(pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    os.unlink(os.path.join(state, "demo.json"))
    if not quiet and was:
        print("demo server (pid %d) stopped" % pid)
    return was


def _demo(args):
    import mailgen

    state = os.path.abspath(args.state)
    if os.path.exists(os.path.join(state, "demo.json")):
        _demo_stop(state)
    # Start from a clean directory so that an old Maildir never meets a new
    # server (new UIDVALIDITY): but only wipe what a demo made.
    if os.path.isdir(state) and os.listdir(state):
        if not os.path.exists(os.path.join(state, "server")):
            print("%s exists and is not a demo directory; refusing to wipe it" % state, file=sys.stderr)
            return 1
        shutil.rmtree(state)
    os.makedirs(state, mode=0o755, exist_ok=True)
    os.chmod(state, 0o755)
    d = Dovecot(root=os.path.join(state, "server"), detached=True)
    d.start()
    ok = False
    try:
        corpus = mailgen.corpus(args.count, seed=args.seed, folders=DEMO_FOLDERS, max_size=2 * 1024 * 1024)
        conn = d.imap()
        try:
            for i, (folder, msgs) in enumerate(corpus.items()):
                # Realistic flags: most old mail read, some flagged/answered.
                flags = []
                for j in range(len(msgs)):
                    f = []
                    if (j + i) % 4 != 0:
                        f.append("\\Seen")
                    if j % 11 == 3:
                        f.append("\\Flagged")
                    if j % 7 == 2:
                        f.append("\\Answered")
                    flags.append(" ".join(f))
                d.save_many(DEFAULT_USER, folder, msgs, flags, conn=conn)
        finally:
            conn.logout()
        maildir = os.path.join(state, "Mail")
        config = os.path.join(state, "config.yaml")
        write_mailsync_config(
            config,
            {"demo": imap_account(d, maildir)},
            state_dir=os.path.join(state, "mailsync-state"),
            comment="mailsync configuration for the throwaway demo server started by\n"
            "tests/harness/dovecot.py; stop it with: contrib/demo stop",
        )
        info = {
            "pid": d.pid, "conf": d.conf_path, "dir": d.dir, "host": d.host,
            "port_imap": d.port_imap, "port_imaps": d.port_imaps,
            "port_pop3": d.port_pop3, "port_pop3s": d.port_pop3s,
            "ca_cert": d.ca_cert, "user": DEFAULT_USER, "password": d.users[DEFAULT_USER],
            "config": config, "maildir": maildir, "log": d.log_path,
        }
        fd = os.open(os.path.join(state, "demo.json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=2)
        ok = True
    finally:
        if not ok:
            d.stop()
    total = sum(len(v) for v in corpus.values())
    print("Dovecot demo server running (pid %d), %d messages for %s:" % (d.pid, total, DEFAULT_USER))
    print("  IMAP  localhost:%d (implicit TLS), localhost:%d (STARTTLS)" % (d.port_imaps, d.port_imap))
    print("  POP3  localhost:%d (implicit TLS), localhost:%d (STLS)" % (d.port_pop3s, d.port_pop3))
    print("  user %s, password %s, CA certificate %s" % (DEFAULT_USER, d.users[DEFAULT_USER], d.ca_cert))
    print("  mailsync configuration: %s" % config)
    print("  server log: %s" % d.log_path)
    return 0


def _info(args):
    state = os.path.abspath(args.state)
    try:
        info = _demo_state(state)
    except (OSError, ValueError):
        print("no demo server recorded in %s" % state, file=sys.stderr)
        return 1
    ctx = ssl.create_default_context(cafile=info["ca_cert"])
    conn = imaplib.IMAP4_SSL(info["host"], info["port_imaps"], ssl_context=ctx, timeout=30)
    conn.login(info["user"], info["password"])
    rows = []
    for _attrs, name in list_mailboxes(conn):
        typ, st = conn.status(imap_mailbox(name), "(MESSAGES UNSEEN)")
        mm = re.search(rb"MESSAGES (\d+) UNSEEN (\d+)", st[0])
        rows.append((name, int(mm.group(1)), int(mm.group(2))))
    conn.logout()
    print("Folders on the demo server (%s@localhost:%d):" % (info["user"], info["port_imaps"]))
    for name, n, unseen in sorted(rows):
        print("  %-20s %5d messages, %4d unseen" % (name, n, unseen))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="Throwaway Dovecot for mailsync tests and the demo.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="start a demo server with sample mail")
    p.add_argument("--state", required=True)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--seed", type=int, default=2024)
    p = sub.add_parser("info", help="show the demo server's folders")
    p.add_argument("--state", required=True)
    p = sub.add_parser("stop", help="stop the demo server")
    p.add_argument("--state", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "demo":
        return _demo(args)
    if args.cmd == "info":
        return _info(args)
    if not _demo_stop(os.path.abspath(args.state)):
        print("no demo server was running")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
