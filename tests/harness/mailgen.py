#!/usr/bin/env python3
"""Deterministic generator of realistic RFC 5322 messages for mailsync tests.

Every message is bytes with CRLF line endings and ends with CRLF, no line is
longer than 998 octets (RFC 5322 section 2.1.1; it also keeps Python's
poplib, which refuses lines over 2048 bytes, usable on them), and there are
no NUL bytes or bare CR/LF, so a message survives an IMAP APPEND and a POP3
RETR unchanged. The same (count, seed, max_size) always gives the same bytes.

The mix is meant to look like a real mailbox: plain text, HTML,
multipart/alternative and multipart/mixed with base64 attachments, RFC 2047
encoded UTF-8 headers, raw UTF-8 bodies, replies with In-Reply-To/References,
list mail, Date headers spread over years, a few messages without a
Message-ID, and body lines that begin with "." (alone, too) or "From " so
that dot-stuffing and mbox "From " escaping are exercised. Sizes are mostly
2-50 KB with a tail up to several MB.

API:
    generate(n, seed, max_size=None) -> list of bytes
    corpus(n, seed, folders=None, max_size=None) -> dict folder -> list
    message(seed, index=0, size=None, kind=None) -> bytes (one message)

CLI:
    python3 mailgen.py --count N --seed S --out DIR [--max-size BYTES]
"""

import argparse
import base64
import datetime
import math
import os
import quopri
import random
import sys
import urllib.parse

CRLF = b"\r\n"

# Kinds of message bodies generate() chooses from, with weights.
KINDS = (
    ("plain", 40),
    ("plain8bit", 10),
    ("html", 8),
    ("alternative", 22),
    ("mixed", 20),
)

DEFAULT_FOLDERS = ("INBOX", "Lists/dev", "Archive/2023", "Entwürfe")

_WORDS = (
    "the of and to in is that for it as with was on be at by this had not are but from or "
    "have an they which one you were all we her she there would their will when who him been "
    "has more if no out do so can what up said about other into than its time only could new "
    "them man some these then two first may any like now my such make over our even most me "
    "state after also made many did must before back see through way where get much go well "
    "your know should down work year because come people just say each those take day good "
    "how long very both between life being under never same another know while last might us "
    "great old off come since against go came right used take three server mailbox folder "
    "sync message release build patch review deadline meeting invoice budget schedule report "
    "draft kernel network protocol cache index backup archive thread reply quarterly budget"
).split()

_UTF8_WORDS = (
    "Grüße Entwürfe Straße Übermorgen façade naïve café résumé smörgåsbord Zürich "
    "København Ærø Łódź Ελληνικά καλημέρα Здравствуйте спасибо こんにちは 日本語 "
    "你好 世界 안녕하세요 שלום مرحبا ☃ ✓ € — “quoted” 🙂 📎"
).split()

_FIRST = (
    "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy "
    "Rupert Sybil Trent Victor Walter Zoë Jürgen François Søren Małgorzata Ηλίας Наталья "
    "Hiroshi Mei"
).split()
_LAST = (
    "Smith Jones Müller Dubois García Rossi Nowak Andersen Tanaka Chen Kim Ivanova "
    "O'Brien Papadopoulos Svensson Kowalski"
).split()
_DOMAINS = (
    "example.com example.org example.net mail.example.de lists.example.org "
    "corp.example.co.uk uni.example.edu"
).split()

_ATTACHMENTS = (
    ("application/pdf", "pdf"),
    ("image/png", "png"),
    ("image/jpeg", "jpg"),
    ("application/zip", "zip"),
    ("application/octet-stream", "bin"),
    ("text/csv", "csv"),
)

_ATTACH_NAMES = (
    "report",
    "invoice-2023",
    "photo",
    "Präsentation",
    "résumé",
    "backup",
    "scan 0001",
    "données",
)


def _ascii_only(s):
    return all(ord(c) < 128 for c in s)


def _q_encode(raw):
    """RFC 2047 "Q" encoding, restricted to the characters section 5 (3)
    allows inside a phrase, so the result is valid in any header."""
    out = []
    for b in raw:
        c = chr(b)
        if c == " ":
            out.append("_")
        elif c.isascii() and (c.isalnum() or c in "!*+-/"):
            out.append(c)
        else:
            out.append("=%02X" % b)
    return "".join(out)


def encode_word(text, rng=None):
    """RFC 2047 encoded-word(s) for a header value; ASCII passes unchanged.

    Long values become several encoded words (each well under the 75
    character limit of section 2, split on character boundaries) separated
    by spaces, which _fold() may turn into folds. With rng, Q or B encoding
    is chosen at random; without, B is used."""
    if _ascii_only(text):
        return text
    use_q = rng is not None and rng.random() < 0.4
    words = []
    chunk = ""
    for ch in text:
        cand = chunk + ch
        raw = cand.encode("utf-8")
        enc_len = len(_q_encode(raw)) if use_q else (len(raw) + 2) // 3 * 4
        if enc_len > 45 and chunk:
            words.append(chunk)
            chunk = ch
        else:
            chunk = cand
    if chunk:
        words.append(chunk)
    out = []
    for w in words:
        raw = w.encode("utf-8")
        if use_q:
            out.append("=?UTF-8?Q?" + _q_encode(raw) + "?=")
        else:
            out.append("=?UTF-8?B?" + base64.b64encode(raw).decode("ascii") + "?=")
    return " ".join(out)


def _fold(name, value):
    """A header line folded at spaces so no physical line exceeds 78 chars
    where possible (and never 998)."""
    line = name + ": "
    lines = []
    for tok in value.split(" "):
        if len(line) + len(tok) + 1 > 78 and line.strip() and not line.endswith(": "):
            lines.append(line.rstrip(" "))
            line = " "
        line += tok + " "
    lines.append(line.rstrip(" "))
    return "\r\n".join(lines)


class _Gen:
    """Holds the random source and precomputed text pools of one seed."""

    def __init__(self, seed):
        self.seed = seed
        self.rng = random.Random(seed)
        rng = self.rng
        # A pool of sentences lets bodies of many kilobytes be assembled by
        # joining pool entries, which is what makes thousands of messages
        # take seconds instead of minutes.
        self.sentences = []
        for _ in range(1500):
            n = rng.randint(5, 18)
            words = rng.choices(_WORDS, k=n)
            if rng.random() < 0.15:
                words[rng.randrange(n)] = rng.choice(_UTF8_WORDS)
            s = " ".join(words)
            self.sentences.append(s[0].upper() + s[1:] + rng.choice("..........?!"))
        self.people = []
        for _ in range(60):
            first = rng.choice(_FIRST)
            last = rng.choice(_LAST)
            local = "".join(c for c in (first + "." + last).lower() if c.isascii() and c.isalnum() or c == ".")
            self.people.append((first + " " + last, local.strip(".") or "user", rng.choice(_DOMAINS)))
        self.lists = ["dev", "announce", "users", "security"]
        self.csv_rows = [
            "%d,%s,%d.%02d\r\n" % (i, rng.choice(_WORDS), rng.randint(0, 9999), rng.randint(0, 99))
            for i in range(500)
        ]
        self.csv_avg = sum(map(len, self.csv_rows)) // len(self.csv_rows)
        self.msgids = []

    # -- small pieces -------------------------------------------------

    def address(self):
        name, local, domain = self.rng.choice(self.people)
        shown = encode_word(name, self.rng)
        if shown == name and any(c in name for c in "',."):
            shown = '"' + name + '"'
        return "%s <%s@%s>" % (shown, local, domain)

    def subject(self):
        rng = self.rng
        s = rng.choice(self.sentences).rstrip(".?!")
        words = s.split()[: rng.randint(2, 9)]
        subj = " ".join(words)
        r = rng.random()
        if r < 0.25:
            subj = "Re: " + subj
        elif r < 0.3:
            subj = "Fwd: " + subj
        if rng.random() < 0.2:
            subj += " " + rng.choice(_UTF8_WORDS)
        if rng.random() < 0.03:
            # An occasional very long subject, folded over several lines.
            subj = " ".join([subj] * 6)
        return subj

    def date(self):
        # Spread over 2005-2024 so date-based features (POP3 "since",
        # max_age_days) have something to select.
        start = datetime.datetime(2005, 1, 1, tzinfo=datetime.timezone.utc)
        secs = self.rng.randrange(20 * 365 * 86400)
        offset = datetime.timedelta(minutes=self.rng.choice((-480, -300, 0, 60, 120, 330, 540)))
        tz = datetime.timezone(offset)
        return (start + datetime.timedelta(seconds=secs)).astimezone(tz)

    def text_lines(self, target):
        """Plain text lines totalling about target bytes, including the
        awkward ones: '.', '..x', 'From ', long lines, blank lines."""
        rng = self.rng
        lines = []
        size = 0
        while size < target:
            r = rng.random()
            if r < 0.02:
                line = rng.choice((".", "..", ".hidden line starting with a dot", ". ", ".."))
            elif r < 0.04:
                line = "From " + rng.choice(self.sentences)
            elif r < 0.05:
                line = ">From the archive: " + rng.choice(self.sentences)
            elif r < 0.06:
                # A long line close to the 998 octet limit.
                line = " ".join(rng.choice(self.sentences) for _ in range(20))
                line = line.encode("utf-8")[: rng.randint(300, 990)].decode("utf-8", "ignore")
            elif r < 0.16:
                line = ""
            elif r < 0.2:
                line = "> " + rng.choice(self.sentences)
            else:
                parts = []
                n = 0
                while n < 60:
                    s = rng.choice(self.sentences)
                    parts.append(s)
                    n += len(s) + 1
                line = " ".join(parts)
                # Wrap at 72 columns like most mail clients.
                while len(line) > 72:
                    cut = line.rfind(" ", 0, 72)
                    if cut <= 0:
                        cut = 72
                    lines.append(line[:cut])
                    size += len(lines[-1]) + 2
                    line = line[cut + 1 :]
            lines.append(line)
            size += len(line.encode("utf-8")) + 2
        return lines

    def text_body(self, target, allow_8bit):
        text = "\r\n".join(self.text_lines(target)) + "\r\n"
        if not allow_8bit:
            text = text.encode("ascii", "replace").decode("ascii")
        return text.encode("utf-8")

    def html_body(self, target):
        rng = self.rng
        out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\"><title>mail</title></head>", "<body>"]
        size = 0
        while size < target:
            para = " ".join(rng.choice(self.sentences) for _ in range(rng.randint(2, 8)))
            tag = rng.choice(("p", "p", "p", "div", "blockquote"))
            line = "<%s>%s</%s>" % (tag, para.replace("&", "&amp;").replace("<", "&lt;"), tag)
            out.append(line)
            size += len(line) + 2
        out.append("</body></html>")
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    def qp(self, raw):
        """Quoted-printable with CRLF line endings (quopri emits LF)."""
        enc = quopri.encodestring(raw.replace(b"\r\n", b"\n"))
        return enc.replace(b"\n", b"\r\n")

    def b64(self, raw):
        # base64.encodebytes() works in 57-byte steps in Python; encoding
        # at once and slicing is several times faster for MB attachments.
        enc = base64.b64encode(raw)
        return b"".join(enc[i : i + 76] + CRLF for i in range(0, len(enc), 76))

    def boundary(self, index):
        return "=_mailsync_%d_%d_%08x" % (self.seed, index, self.rng.getrandbits(32))

    # -- whole messages -----------------------------------------------

    def headers(self, index, kind):
        rng = self.rng
        h = []
        if rng.random() < 0.4:
            h.append(
                _fold(
                    "Received",
                    "from mx%d.%s (mx%d.%s [192.0.2.%d]) by mail.example.net with ESMTPS id %08X; %s"
                    % (
                        rng.randint(1, 9),
                        rng.choice(_DOMAINS),
                        rng.randint(1, 9),
                        rng.choice(_DOMAINS),
                        rng.randint(1, 254),
                        rng.getrandbits(32),
                        self.date().strftime("%a, %d %b %Y %H:%M:%S %z"),
                    ),
                )
            )
        d = self.date()
        h.append("Date: " + d.strftime("%a, %d %b %Y %H:%M:%S %z"))
        h.append(_fold("From", self.address()))
        tos = ", ".join(self.address() for _ in range(rng.choice((1, 1, 1, 2, 3))))
        h.append(_fold("To", tos))
        if rng.random() < 0.2:
            h.append(_fold("Cc", ", ".join(self.address() for _ in range(rng.randint(1, 4)))))
        h.append(_fold("Subject", encode_word(self.subject(), rng)))
        # A few messages have no Message-ID, as real mail sometimes does;
        # sync code must still match them without one.
        if rng.random() >= 0.03:
            mid = "<%d.%d.%08x@%s>" % (self.seed, index, rng.getrandbits(32), rng.choice(_DOMAINS))
            h.append("Message-ID: " + mid)
            if self.msgids and rng.random() < 0.25:
                parent = rng.choice(self.msgids)
                h.append("In-Reply-To: " + parent)
                refs = rng.sample(self.msgids, min(len(self.msgids), rng.randint(1, 6)))
                h.append(_fold("References", " ".join(refs)))
            self.msgids.append(mid)
        if rng.random() < 0.2:
            lst = rng.choice(self.lists)
            h.append("List-Id: %s <%s.lists.example.org>" % (lst.capitalize(), lst))
            h.append("List-Unsubscribe: <mailto:%s-leave@lists.example.org>" % lst)
        if rng.random() < 0.3:
            h.append("X-Mailer: " + rng.choice(("NeoMutt/20220429", "Thunderbird 102.4", "Apple Mail (2.3696)")))
        h.append("MIME-Version: 1.0")
        return h

    def build(self, index, size=None, kind=None, max_size=None):
        rng = self.rng
        if kind is None:
            kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        if size is None:
            size = self.pick_size()
            if max_size is not None:
                size = min(size, max_size)
        # Multi-megabyte mail in real mailboxes is attachments.
        if size > 200 * 1024 and kind != "mixed":
            kind = "mixed"
        head = self.headers(index, kind)
        hsize = sum(len(x) + 2 for x in head) + 200
        body_target = max(200, size - hsize)

        if kind in ("plain", "plain8bit"):
            eightbit = kind == "plain8bit"
            body = self.text_body(body_target, eightbit)
            if eightbit:
                head.append("Content-Type: text/plain; charset=utf-8; format=flowed")
                head.append("Content-Transfer-Encoding: 8bit")
            else:
                head.append("Content-Type: text/plain; charset=us-ascii")
                head.append("Content-Transfer-Encoding: 7bit")
        elif kind == "html":
            body = self.qp(self.html_body(body_target * 9 // 10))
            head.append("Content-Type: text/html; charset=utf-8")
            head.append("Content-Transfer-Encoding: quoted-printable")
        elif kind == "alternative":
            b = self.boundary(index)
            head.append('Content-Type: multipart/alternative; boundary="%s"' % b)
            text = self.text_body(body_target // 3, True)
            html = self.qp(self.html_body(body_target // 2))
            body = b"".join(
                [
                    b"This is a multi-part message in MIME format.\r\n\r\n",
                    b"--" + b.encode() + CRLF,
                    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
                    text,
                    b"--" + b.encode() + CRLF,
                    b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
                    html,
                    b"--" + b.encode() + b"--" + CRLF,
                ]
            )
        else:
            b = self.boundary(index)
            head.append('Content-Type: multipart/mixed; boundary="%s"' % b)
            text = self.text_body(min(body_target // 4, 8000) + 100, True)
            parts = [
                b"This is a multi-part message in MIME format.\r\n\r\n",
                b"--" + b.encode() + CRLF,
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
                text,
            ]
            remaining = max(64, body_target - len(text))
            nattach = 1 if remaining < 20000 else rng.randint(1, 3)
            for i in range(nattach):
                share = remaining // (nattach - i)
                remaining -= share
                ctype, ext = rng.choice(_ATTACHMENTS)
                fname = "%s-%d.%s" % (rng.choice(_ATTACH_NAMES), i + 1, ext)
                # base64 grows 57 raw bytes into a 78-byte line.
                raw_len = max(16, share * 57 // 78 - 100)
                if ext == "csv":
                    rows = rng.choices(self.csv_rows, k=raw_len // self.csv_avg + 1)
                    raw = "".join(rows).encode()
                else:
                    raw = rng.randbytes(raw_len)
                enc_name = encode_word(fname)
                if enc_name == fname:
                    disp = 'attachment; filename="%s"' % fname
                else:
                    # RFC 2231 for the parameter, the way most clients write it.
                    disp = "attachment;\r\n filename*=utf-8''%s" % urllib.parse.quote(fname)
                parts += [
                    b"--" + b.encode() + CRLF,
                    ('Content-Type: %s; name="%s"\r\n' % (ctype, enc_name)).encode(),
                    (("Content-Disposition: %s\r\n" % disp).encode()),
                    b"Content-Transfer-Encoding: base64\r\n\r\n",
                    self.b64(raw),
                ]
            parts.append(b"--" + b.encode() + b"--" + CRLF)
            body = b"".join(parts)

        msg = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + body
        if not msg.endswith(CRLF):
            msg += CRLF
        return msg

    def pick_size(self):
        """A size drawn from a distribution like real mail: a few tiny, most
        2-50 KB, some up to 1 MB, and a few of 1-5 MB."""
        rng = self.rng
        r = rng.random()
        if r < 0.05:
            lo, hi = 800, 2048
        elif r < 0.85:
            lo, hi = 2048, 50 * 1024
        elif r < 0.975:
            lo, hi = 50 * 1024, 1024 * 1024
        else:
            lo, hi = 1024 * 1024, 5 * 1024 * 1024
        # Log-uniform inside each band: small sizes are more common.
        return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def generate(n, seed=0, max_size=None):
    """n messages (list of bytes), deterministic for (n, seed, max_size)."""
    g = _Gen(seed)
    return [g.build(i, max_size=max_size) for i in range(n)]


def message(seed=0, index=0, size=None, kind=None):
    """One message of roughly size bytes (None: drawn like generate()).
    kind is one of plain, plain8bit, html, alternative, mixed."""
    g = _Gen(seed * 100003 + index)
    return g.build(index, size=size, kind=kind)


def corpus(n, seed=0, folders=None, max_size=None):
    """n messages spread over folders (default: INBOX, Lists/dev,
    Archive/2023, Entwürfe), INBOX getting the largest share. Returns a
    dict folder -> list of bytes; every folder gets at least one message
    when n allows."""
    folders = list(folders or DEFAULT_FOLDERS)
    msgs = generate(n, seed, max_size)
    rng = random.Random(seed ^ 0x5EED)
    weights = [3] + [1] * (len(folders) - 1)
    out = {f: [] for f in folders}
    for i, m in enumerate(msgs):
        if i < len(folders):
            out[folders[i]].append(m)
        else:
            out[rng.choices(folders, weights)[0]].append(m)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write generated test messages as .eml files.")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-size", type=int, default=None, help="cap on a message's size in bytes")
    ap.add_argument("--out", required=True, help="directory to write NNNNNN.eml files into")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for i, m in enumerate(generate(args.count, args.seed, args.max_size)):
        with open(os.path.join(args.out, "%06d.eml" % i), "wb") as f:
            f.write(m)
        total += len(m)
    print("wrote %d messages, %d bytes, to %s" % (args.count, total, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
