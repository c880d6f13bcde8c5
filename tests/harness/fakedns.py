"""A scripted DNS server on 127.0.0.1 (UDP) that answers SRV questions,
for `mailsync init`'s RFC 6186 lookups; mailsync asks it when
MAILSYNC_DNS_SERVER=127.0.0.1:PORT is set.

    with FakeDNS({"_imaps._tcp.example.org": [(10, 0, 993, "imap.example.org")]}) as dns:
        env = {"MAILSYNC_DNS_SERVER": dns.address}
        ...
        dns.queries   # [(name, qtype), ...] in the order they came

A name in the table gets its records (an empty list: NOERROR without
answers, i.e. NODATA); any other name NXDOMAIN. Target "." is written as
the root name, which RFC 2782 reads as "service not offered"."""

import socket
import struct
import threading


def _encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def _read_name(msg, off):
    labels = []
    while True:
        n = msg[off]
        off += 1
        if n == 0:
            return ".".join(labels), off
        labels.append(msg[off:off + n].decode("ascii", "replace"))
        off += n


class FakeDNS:
    def __init__(self, records):
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self.sock.close()
        self._thread.join(timeout=5)

    def _serve(self):
        while not self._stop:
            try:
                msg, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                reply = self._answer(msg)
            except (IndexError, struct.error):
                continue
            try:
                self.sock.sendto(reply, peer)
            except OSError:
                return

    def _answer(self, msg):
        qid, _flags, qd = struct.unpack(">HHH", msg[:6])
        name, off = _read_name(msg, 12)
        qtype, qclass = struct.unpack(">HH", msg[off:off + 4])
        question = msg[12:off + 4]
        self.queries.append((name, qtype))
        recs = self.records.get(name.lower())
        answers = b""
        count = 0
        rcode = 3 if recs is None else 0
        if recs is not None and qtype == 33:
            for prio, weight, port, target in recs:
                rdata = struct.pack(">HHH", prio, weight, port) + _encode_name(target)
                # Owner: a compression pointer to the question's name.
                answers += struct.pack(">HHHIH", 0xC00C, 33, 1, 300, len(rdata)) + rdata
                count += 1
        flags = 0x8180 | rcode  # response, recursion desired and available
        return struct.pack(">HHHHHH", qid, flags, 1, count, 0, 0) + question + answers
