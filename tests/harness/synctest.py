"""Fixture shared by the two-way IMAP sync tests (tests/integration/test_sync*.py):
a per-test Dovecot user, its account "a" in a config, `mailsync sync`, and
the two views of a folder (the local Maildir and the server).

    from synctest import FALLBACK_CAPS, SyncFixture, letters

    class Scenarios(SyncFixture):
        def test_x(self):
            cfg = self.config()
            self.sync(cfg)
            self.assert_same()

    class Qresync(Scenarios, mstest.DovecotTestCase):
        pass

    class Condstore(Scenarios, mstest.DovecotTestCase):
        dovecot_options = {"imap_capability": CONDSTORE_CAPS}

    class Fallback(Scenarios, mstest.DovecotTestCase):
        dovecot_options = {"imap_capability": FALLBACK_CAPS}
"""

import collections
import os
import re

import dovecot
import mstest

# Dovecot's capabilities without QRESYNC/CONDSTORE and LIST-STATUS: the
# engine takes the full-listing path instead of the delta path.
FALLBACK_CAPS = "IMAP4rev1 ID ENABLE IDLE UIDPLUS LITERAL+ MOVE SPECIAL-USE"
# CONDSTORE without QRESYNC, as Gmail offers: flag changes by CHANGEDSINCE,
# expunges by UID SEARCH of the known range.
CONDSTORE_CAPS = FALLBACK_CAPS + " CONDSTORE"
# The three capability profiles every scenario table runs under.
PROFILES = {"Qresync": {}, "Condstore": {"imap_capability": CONDSTORE_CAPS},
            "Fallback": {"imap_capability": FALLBACK_CAPS}}

LETTER = {"\\Seen": "S", "\\Answered": "R", "\\Flagged": "F", "\\Deleted": "T",
          "\\Draft": "D", "$Forwarded": "P"}


def letters(flags):
    """IMAP flags -> sorted Maildir letters (keywords are left out)."""
    return "".join(sorted(LETTER[f] for f in flags if f in LETTER))


class SyncFixture:
    """Mixin for a mstest.DovecotTestCase. Each test gets its own Dovecot
    user so that tests do not see each other's mail; layout is the local
    Maildir layout ("verbatim" or "maildir++")."""

    layout = "verbatim"

    def setUp(self):
        super().setUp()
        self.user = "u%d" % (abs(hash(self.id())) % 10**8)
        self.dovecot.add_user(self.user, "pw-" + self.user)
        self.maildir = os.path.join(self.tmp, "Mail")

    def config(self, **extra):
        extra.setdefault("layout", self.layout)
        acct = self.imap_account(user=self.user, **extra)
        return self.write_config({"a": acct})

    def sync(self, cfg, *flags, ok=True, env=None, trace=False):
        """Runs one sync; with trace the protocol trace is in p.stderr."""
        pre = ("-vv",) if trace else ()
        p = self.mailsync(cfg, *pre, "sync", *flags, "a", env=env)
        if ok and p.returncode != 0:
            self.fail("mailsync sync %s exited %d\nstdout:\n%s\nstderr:\n%s"
                      % (" ".join(flags), p.returncode, p.stdout, p.stderr))
        return p

    def folder_dir(self, name):
        if self.layout == "verbatim":
            return os.path.join(self.maildir, *name.split("/"))
        if name.upper() == "INBOX":
            return self.maildir
        return os.path.join(self.maildir, "." + name.replace("/", "."))

    def local(self, name="INBOX"):
        return mstest.maildir_messages(self.folder_dir(name))

    def server(self, name="INBOX"):
        return self.dovecot.fetch_all(self.user, name)

    def assert_same(self, name="INBOX"):
        """Both sides hold the same messages with the same flags."""
        srv = sorted((mstest.crlf_to_lf(b), letters(f)) for _u, f, b in self.server(name))
        loc = sorted((b, fl) for _u, fl, b in self.local(name))
        self.assertEqual(len(srv), len(loc), "message count differs in %s" % name)
        self.assertEqual(srv, loc, "messages or flags differ in %s" % name)

    def assert_no_duplicates(self, name="INBOX"):
        srv = collections.Counter(mstest.crlf_to_lf(b) for _u, _f, b in self.server(name))
        loc = collections.Counter(b for _u, _f, b in self.local(name))
        self.assertEqual([b[:80] for b, n in srv.items() if n > 1], [], "server duplicates")
        self.assertEqual([b[:80] for b, n in loc.items() if n > 1], [], "local duplicates")

    # ---- the server, over IMAP as another client --------------------------------

    def imap(self):
        return self.dovecot.imap(self.user)

    def status(self, folder, items="UIDVALIDITY"):
        c = self.imap()
        try:
            typ, data = c.status(dovecot.imap_mailbox(folder), "(%s)" % items)
            self.assertEqual(typ, "OK", data)
            return {k.decode(): int(v) for k, v in re.findall(rb"([A-Z]+) (\d+)", data[0])}
        finally:
            c.logout()

    def store(self, folder, uid, op, flags):
        c = self.imap()
        try:
            c.select(dovecot.imap_mailbox(folder))
            typ, data = c.uid("STORE", str(uid), op, "(%s)" % flags)
            self.assertEqual(typ, "OK", data)
        finally:
            c.logout()

    def expunge(self, folder, uids):
        c = self.imap()
        try:
            c.select(dovecot.imap_mailbox(folder))
            c.uid("STORE", ",".join(map(str, uids)), "+FLAGS.SILENT", "(\\Deleted)")
            c.expunge()
        finally:
            c.logout()

    # ---- the local Maildir, as a mail client -------------------------------------

    def local_file(self, name, unique):
        d = self.folder_dir(name)
        for sub in ("cur", "new"):
            for fn in os.listdir(os.path.join(d, sub)):
                if fn.split(":2,")[0] == unique:
                    return os.path.join(d, sub, fn)
        raise AssertionError("no local file %s" % unique)

    def set_local_flags(self, name, unique, flags):
        """Renames like mutt: into cur/ with :2,FLAGS."""
        path = self.local_file(name, unique)
        os.rename(path, os.path.join(self.folder_dir(name), "cur", unique + ":2," + flags))

    def deliver_local(self, name, data, unique):
        """Delivers data into new/ through tmp/, creating the folder's
        cur/ new/ tmp/ where they are missing."""
        d = self.folder_dir(name)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        tmp = os.path.join(d, "tmp", unique)
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(d, "new", unique))

    def unique_of(self, name, body_lf):
        for u, _fl, b in self.local(name):
            if b == body_lf:
                return u
        raise AssertionError("message not found locally")
