/* LINK: ms_sync ms_core */
/* The IMAP client's pure helpers (UID sets, dates, folder names) and its
 * queue behaviour against an in-process fake server on the same libuv
 * loop: pipelining depth, commands held until ready, callbacks never from
 * inside an API call (every command, held, pipelined, refused locally, after
 * a failure and after LOGOUT), IDLE ended automatically by a new command,
 * imap_free from inside a callback, backpressure from a paused body sink
 * down to the socket, and TCP keepalive on the client's socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "sync/imap.h"
#include "sync/imap_int.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

/* ---- Pure helpers ---- */

static void test_uidset_format(void **state)
{
    uint32_t uids[] = {9, 3, 1, 2, 12, 10, 11, 3, 20};
    char **sets;
    size_t n = imap_uidset_format(uids, ARRAY_SIZE(uids), 0, &sets);
    assert_int_equal(n, 1);
    assert_string_equal(sets[0], "1:3,9:12,20");
    free(sets[0]);
    free(sets);

    /* Every other UID up to 10,000: no ranges, so the set must be split
     * into pieces of at most 100 bytes that together hold every UID. */
    uint32_t *many = xmalloc(5000 * sizeof(*many));
    for (uint32_t i = 0; i < 5000; i++) {
        many[i] = 2 * i + 1;
    }
    n = imap_uidset_format(many, 5000, 100, &sets);
    assert_true(n > 1);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(strlen(sets[i]) <= 100);
        struct imap_uid_range *r;
        size_t nr;
        assert_int_equal(imap_uidset_parse(sets[i], &r, &nr), 0);
        total += nr;
        free(r);
        free(sets[i]);
    }
    free(sets);
    assert_int_equal(total, 5000);
    free(many);

    n = imap_uidset_format(NULL, 0, 0, &sets);
    assert_int_equal(n, 0);
    free(sets);
}

/* A tiny deterministic generator (xorshift32), so that a failure names a
 * round that can be replayed. */
static uint32_t prop_next(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

static int prop_u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Property (issue 9, item 3): whatever UIDs the engine hands over, every
 * set that comes out is valid and non-empty (no "1:0", no inverted or zero
 * range, within max_len), the sets together hold exactly the non-zero UIDs
 * given, and nothing at all comes out when there are none, so that no
 * command is ever sent for an empty set. */
static void test_uidset_format_property(void **state)
{
    uint32_t seed = 0x9e3779b9u;
    for (int round = 0; round < 2000; round++) {
        size_t n = prop_next(&seed) % 300;
        uint32_t *uids = xcalloc(n + 1, sizeof(*uids));
        uint32_t base = prop_next(&seed) % 4 == 0 ? UINT32_MAX - 400 : prop_next(&seed) % 5000;
        for (size_t i = 0; i < n; i++) {
            switch (prop_next(&seed) % 6) {
            case 0:
                uids[i] = 0; /* must be ignored */
                break;
            case 1:
                uids[i] = UINT32_MAX - prop_next(&seed) % 3;
                break;
            default:
                uids[i] = base + prop_next(&seed) % 400;
                break;
            }
        }
        size_t max_len = prop_next(&seed) % 3 == 0 ? 0 : 1 + prop_next(&seed) % 120;
        /* What the sets must hold: the distinct non-zero UIDs. */
        uint32_t *want = xcalloc(n + 1, sizeof(*want));
        size_t nwant = 0;
        for (size_t i = 0; i < n; i++) {
            if (uids[i] != 0) {
                want[nwant++] = uids[i];
            }
        }
        qsort(want, nwant, sizeof(*want), prop_u32_cmp);
        size_t d = 0;
        for (size_t i = 0; i < nwant; i++) {
            if (d == 0 || want[d - 1] != want[i]) {
                want[d++] = want[i];
            }
        }
        nwant = d;

        char **sets = NULL;
        size_t nsets = imap_uidset_format(uids, n, max_len, &sets);
        if (nwant == 0) {
            assert_int_equal(nsets, 0);
        }
        size_t got = 0;
        for (size_t k = 0; k < nsets; k++) {
            assert_true(sets[k][0] != '\0');
            assert_true(strlen(sets[k]) <= (max_len == 0 ? 8000 : (max_len < 24 ? 24 : max_len)));
            struct imap_uid_range *r;
            size_t nr;
            assert_int_equal(imap_uidset_parse(sets[k], &r, &nr), 0);
            assert_true(nr > 0);
            for (size_t i = 0; i < nr; i++) {
                assert_true(r[i].lo >= 1);
                assert_true(r[i].lo <= r[i].hi);
                for (uint64_t u = r[i].lo; u <= r[i].hi; u++) {
                    assert_true(got < nwant);
                    assert_int_equal(u, want[got]);
                    got++;
                }
            }
            free(r);
            free(sets[k]);
        }
        assert_int_equal(got, nwant);
        free(sets);
        free(want);
        free(uids);
    }
}

/* One range: valid ones are formatted, empty or inverted ones refused. */
static void test_uid_range_format(void **state)
{
    char buf[32];
    assert_int_equal(imap_uid_range_format(1, 9, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "1:9");
    assert_int_equal(imap_uid_range_format(7, 7, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "7");
    assert_int_equal(imap_uid_range_format(7, IMAP_UID_STAR, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "7:*");
    /* The CONDSTORE expunge check of a folder that never held mail
     * (UIDNEXT 1, so the known range is 1:UIDNEXT-1): "UID 1:0" must not
     * be sent. */
    uint32_t uidnext = 1;
    assert_int_equal(imap_uid_range_format(1, uidnext - 1, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(imap_uid_range_format(0, 5, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(imap_uid_range_format(0, 0, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(imap_uid_range_format(9, 3, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(imap_uid_range_format(100000, 200000, buf, 5), -ENOSPC);
    /* Every formatted range parses back to itself. */
    uint32_t seed = 12345;
    for (int i = 0; i < 5000; i++) {
        uint32_t lo = prop_next(&seed) % 1000, hi = prop_next(&seed) % 1000;
        if (hi == 999) {
            hi = IMAP_UID_STAR;
        }
        int r = imap_uid_range_format(lo, hi, buf, sizeof(buf));
        if (lo == 0 || hi < lo) {
            assert_int_equal(r, -EINVAL);
            continue;
        }
        assert_int_equal(r, 0);
        struct imap_uid_range *rg;
        size_t nr;
        assert_int_equal(imap_uidset_parse(buf, &rg, &nr), 0);
        assert_int_equal(nr, 1);
        assert_int_equal(rg[0].lo, lo);
        assert_int_equal(rg[0].hi, hi);
        free(rg);
    }
}

static void test_uidset_parse(void **state)
{
    struct imap_uid_range *r;
    size_t n;
    assert_int_equal(imap_uidset_parse("5:3,1,2,10:*", &r, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(r[0].lo, 1);
    assert_int_equal(r[0].hi, 5);
    assert_int_equal(r[1].lo, 10);
    assert_int_equal(r[1].hi, UINT32_MAX);
    assert_true(imap_uidset_contains(r, n, 4));
    assert_false(imap_uidset_contains(r, n, 7));
    assert_true(imap_uidset_contains(r, n, 4000000000u));
    free(r);
    const char *bad[] = {"", "0", "1,", ",1", "1:", "a", "4294967296", "1 2", "1::2"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        assert_int_equal(imap_uidset_parse(bad[i], &r, &n), -EINVAL);
        assert_null(r);
    }
}

static void test_datetime(void **state)
{
    time_t t;
    assert_int_equal(imap_parse_datetime("17-Jul-1996 02:44:25 -0700", &t), 0);
    assert_int_equal(t, 837596665);
    assert_int_equal(imap_parse_datetime(" 1-Jan-2024 00:00:00 +0000", &t), 0);
    assert_int_equal(t, 1704067200);
    assert_int_equal(imap_parse_datetime("1-Jan-2024 01:30:00 +0130", &t), 0);
    assert_int_equal(t, 1704067200);
    assert_int_equal(imap_parse_datetime("32-Jan-2024 00:00:00 +0000", &t), -EINVAL);
    assert_int_equal(imap_parse_datetime("01-Foo-2024 00:00:00 +0000", &t), -EINVAL);
    assert_int_equal(imap_parse_datetime("01-Jan-2024 00:00:00", &t), -EINVAL);
    char buf[40];
    imap_format_datetime(1700000000, buf, sizeof(buf));
    assert_string_equal(buf, "14-Nov-2023 22:13:20 +0000");
    assert_int_equal(imap_parse_datetime(buf, &t), 0);
    assert_int_equal(t, 1700000000);
}

static void test_names(void **state)
{
    char *name;
    const char *why = NULL;
    assert_int_equal(imap_name_from_server("Gel&APY-scht.Alt", 16, '.', false, &name, &why), 0);
    assert_string_equal(name, "Gelöscht/Alt");
    free(name);
    assert_int_equal(imap_name_from_server("inbox", 5, '/', false, &name, &why), 0);
    assert_string_equal(name, "INBOX");
    free(name);
    assert_int_equal(imap_name_from_server("a/b", 3, '.', false, &name, &why), -EINVAL);
    assert_string_equal(why, "folder name contains '/', which is not the server's hierarchy "
                             "delimiter");
    assert_int_equal(imap_name_from_server("a/../b", 6, '/', false, &name, &why), -EINVAL);
    assert_int_equal(imap_name_from_server("/abs", 4, '/', false, &name, &why), -EINVAL);
    assert_int_equal(imap_name_from_server("x\ny", 3, '/', false, &name, &why), -EINVAL);
    assert_int_equal(imap_name_from_server("a\0b", 3, '/', false, &name, &why), -EINVAL);
    /* A control character is refused encoded as well as raw ("&AAk-" is a TAB). */
    assert_int_equal(imap_name_from_server("Tab&AAk-here", 12, '/', false, &name, &why), -EINVAL);
    assert_string_equal(why, "folder name contains a control character");
    assert_int_equal(imap_name_from_server("Bell\x07x", 6, '/', false, &name, &why), -EINVAL);
    assert_string_equal(why, "folder name contains a control character");
    assert_int_equal(imap_name_from_server("Entwürfe", 9, '/', true, &name, &why), 0);
    assert_string_equal(name, "Entwürfe");
    free(name);

    char *raw;
    assert_int_equal(imap_name_to_server("Gelöscht/Alt", '.', false, &raw, &why), 0);
    assert_string_equal(raw, "Gel&APY-scht.Alt");
    free(raw);
    assert_int_equal(imap_name_to_server("a.b/c", '.', false, &raw, &why), -EINVAL);
    assert_string_equal(why, "folder name contains the server's hierarchy delimiter");
    assert_int_equal(imap_name_to_server("a/b", '\0', false, &raw, &why), -EINVAL);
    assert_int_equal(imap_name_to_server("../x", '/', false, &raw, &why), -EINVAL);
}

static void test_header_message_id(void **state)
{
    static const struct {
        const char *hdr;
        const char *want;
    } cases[] = {
        {"Subject: x\r\nMessage-ID: <a@b>\r\n\r\n", "<a@b>"},
        {"Subject: x\nmessage-id:   <a@b>  \t\nTo: y\n\n", "<a@b>"},
        /* Folded over two lines, CRLF and LF. */
        {"Message-ID:\r\n <folded@x>\r\n\r\n", "<folded@x>"},
        {"Message-Id: <one\n\ttwo@x>\nX: y\n", "<one\ttwo@x>"},
        /* Obsolete white space before the colon. */
        {"Message-ID : <ws@x>\n\n", "<ws@x>"},
        /* Only the header block counts, and only the first field. */
        {"Subject: x\n\nMessage-ID: <body@x>\n", NULL},
        {"Message-ID: <first@x>\nMessage-ID: <second@x>\n\n", "<first@x>"},
        /* Look-alike names and empty values. */
        {"Message-IDs: <no@x>\nX-Message-ID: <no@x>\n\n", NULL},
        {"Message-ID:   \r\n\r\n", NULL},
        {"", NULL},
        /* No final line break. */
        {"Message-ID: <end@x>", "<end@x>"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *id = imap_header_message_id(cases[i].hdr, strlen(cases[i].hdr));
        if (cases[i].want == NULL) {
            assert_null(id);
        } else {
            assert_non_null(id);
            assert_string_equal(id, cases[i].want);
        }
        free(id);
    }
    /* A NUL inside the value ends it. */
    static const char nul[] = "Message-ID: <a@b>\0junk\n\n";
    char *id = imap_header_message_id(nul, sizeof(nul) - 1);
    assert_string_equal(id, "<a@b>");
    free(id);
}

/* ---- In-process fake server ---- */

struct fake {
    uv_loop_t loop;
    uv_tcp_t server, client;
    bool have_client;
    struct sbuf in;
    size_t acked_at; /* 1 + offset of the synchronizing literal answered with "+" */
    uv_timer_t timer;
    /* Script state. */
    const char *caps;     /* in the PREAUTH greeting; NULL = "IMAP4rev1 IDLE" */
    int sndbuf;           /* SO_SNDBUF of the server's socket, 0 = default */
    char pending[64][16]; /* NOOP tags not answered yet */
    int npending, max_pending;
    struct sbuf log;      /* command lines received, one per line, tags removed */
    struct sbuf appended; /* the last APPEND's literal */
    bool idle_seen;
    char idle_tag[16];
    bool deaf; /* DONE and NOOP are logged, never answered (a dead flow) */
    /* RFC 8474: the MAILBOXID item said for Sub in STATUS answers (those of
     * LIST-STATUS too, when the LIST asks for STATUS) and the response
     * code of every SELECT, e.g. "(F-1_a)"; NULL: the older answers. */
    const char *mailboxid;
    /* UID FETCH ... BODY.PEEK[]: a body of big_body bytes (body_byte()),
     * written with uv_try_write so that the server sees when the client's
     * socket stops taking data. */
    size_t big_body, push_off;
    bool push_blocked; /* the last uv_try_write found the socket full */
    unsigned push_eagain;
    char push_tag[16];
    uv_timer_t push;
    /* Client side. */
    struct imap *im;
    bool in_api;
    int done_count, ok_count;
    bool ready, errored, free_in_callback;
    char *error;
    int error_code;
    int events;
    struct sbuf evlog; /* events, one per line */
    void (*ready_hook)(struct fake *f);
};

static void on_write_done(uv_write_t *w, int status)
{
    free(w->data);
    free(w);
}

static void fake_send(struct fake *f, const char *s)
{
    uv_write_t *w = xmalloc(sizeof(*w));
    char *copy = xstrdup(s);
    w->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)strlen(copy));
    uv_write(w, (uv_stream_t *)&f->client, &b, 1, on_write_done);
}

static void answer_pending(uv_timer_t *t)
{
    struct fake *f = t->data;
    for (int i = 0; i < f->npending; i++) {
        char line[64];
        snprintf(line, sizeof(line), "%s OK NOOP done\r\n", f->pending[i]);
        fake_send(f, line);
    }
    f->npending = 0;
}

/* Byte i of the big body: text lines with CRLF, varied enough that a
 * chunk delivered twice, dropped or out of order changes the result. */
static char body_byte(size_t i)
{
    static const char pat[] =
        "abcdefghijklmnopqrstuvwxyz0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ!\r\n";
    return pat[(i + i / 4093) % (sizeof(pat) - 1)];
}

/* Writes the big body as fast as the client's socket takes it. */
static void push_body(uv_timer_t *t)
{
    struct fake *f = t->data;
    char chunk[65536];
    while (f->push_off < f->big_body) {
        size_t n = f->big_body - f->push_off;
        if (n > sizeof(chunk)) {
            n = sizeof(chunk);
        }
        for (size_t i = 0; i < n; i++) {
            chunk[i] = body_byte(f->push_off + i);
        }
        uv_buf_t b = uv_buf_init(chunk, (unsigned)n);
        int r = uv_try_write((uv_stream_t *)&f->client, &b, 1);
        if (r == UV_EAGAIN) {
            f->push_blocked = true;
            f->push_eagain++;
            return;
        }
        assert_true(r > 0);
        f->push_off += (size_t)r;
        f->push_blocked = false;
    }
    uv_timer_stop(t);
    char resp[64];
    snprintf(resp, sizeof(resp), ")\r\n%s OK fetched\r\n", f->push_tag);
    fake_send(f, resp);
}

/* LIST, STATUS and SELECT answers that carry f->mailboxid. */
static bool mailboxid_answer(struct fake *f, const char *tag, const char *cmd)
{
    struct sbuf r = {0};
    if (strncmp(cmd, "LIST ", 5) == 0 && strcmp(cmd, "LIST \"\" \"\"") != 0) {
        sbuf_adds(&r, "* LIST () \"/\" INBOX\r\n* LIST (\\HasNoChildren) \"/\" Sub\r\n");
        if (strstr(cmd, " STATUS (") != NULL) {
            sbuf_addf(&r, "* STATUS Sub (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 7 MAILBOXID %s)\r\n",
                      f->mailboxid);
        }
        sbuf_addf(&r, "%s OK listed\r\n", tag);
    } else if (strncmp(cmd, "STATUS ", 7) == 0) {
        sbuf_addf(&r, "* STATUS Sub (MESSAGES 3 MAILBOXID %s)\r\n%s OK status\r\n", f->mailboxid,
                  tag);
    } else if (strncmp(cmd, "SELECT ", 7) == 0 || strncmp(cmd, "EXAMINE ", 8) == 0) {
        sbuf_addf(&r,
                  "* 3 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n* OK [MAILBOXID %s] m\r\n%s OK "
                  "[READ-WRITE] selected\r\n",
                  f->mailboxid, tag);
    } else {
        return false;
    }
    fake_send(f, r.buf);
    sbuf_free(&r);
    return true;
}

static void fake_line(struct fake *f, char *line, const char *lit, size_t litlen)
{
    char *sp = strchr(line, ' ');
    if (strcmp(line, "DONE") == 0) {
        sbuf_adds(&f->log, "DONE\n");
        if (f->deaf) {
            return;
        }
        char resp[64];
        snprintf(resp, sizeof(resp), "%s OK IDLE terminated\r\n", f->idle_tag);
        fake_send(f, resp);
        return;
    }
    assert_non_null(sp);
    *sp = '\0';
    const char *tag = line, *cmd = sp + 1;
    sbuf_addf(&f->log, "%s\n", cmd);
    char resp[256];
    if (f->mailboxid != NULL && mailboxid_answer(f, tag, cmd)) {
        return;
    }
    if (strcmp(cmd, "LIST \"\" \"\"") == 0) {
        snprintf(resp, sizeof(resp), "* LIST (\\Noselect) \"/\" \"\"\r\n%s OK listed\r\n", tag);
        fake_send(f, resp);
    } else if (strcmp(cmd, "NOOP") == 0 && f->deaf) {
        /* Never answered. */
    } else if (strcmp(cmd, "NOOP") == 0) {
        /* Hold answers for a moment so that the client's pipeline fills. */
        snprintf(f->pending[f->npending++], sizeof(f->pending[0]), "%s", tag);
        if (f->npending > f->max_pending) {
            f->max_pending = f->npending;
        }
        uv_timer_start(&f->timer, answer_pending, 20, 0);
    } else if (strcmp(cmd, "IDLE") == 0) {
        f->idle_seen = true;
        snprintf(f->idle_tag, sizeof(f->idle_tag), "%s", tag);
        fake_send(f, "+ idling\r\n* 3 EXISTS\r\n");
    } else if (strncmp(cmd, "UID SEARCH ", 11) == 0) {
        /* Hold the first answer: both untagged results then come before
         * both tagged OKs, as Dovecot sends them for pipelined searches. */
        snprintf(f->pending[f->npending++], sizeof(f->pending[0]), "%s", tag);
        if (f->npending == 2) {
            snprintf(resp, sizeof(resp), "* SEARCH 1\r\n* SEARCH 2 3\r\n%s OK s\r\n%s OK s\r\n",
                     f->pending[0], f->pending[1]);
            f->npending = 0;
            fake_send(f, resp);
        }
    } else if (strncmp(cmd, "UID FETCH ", 10) == 0 && f->big_body > 0) {
        snprintf(resp, sizeof(resp), "* 1 FETCH (UID 1 BODY[] {%zu}\r\n", f->big_body);
        fake_send(f, resp);
        snprintf(f->push_tag, sizeof(f->push_tag), "%s", tag);
        f->push_off = 0;
        uv_timer_start(&f->push, push_body, 0, 1);
    } else if (strncmp(cmd, "UID FETCH ", 10) == 0) {
        /* Message-ID and header sections: one folded Message-ID, one
         * message without any, and a header that the server sends as NIL. */
        static const char hf1[] = "Message-ID:\r\n <folded@fake>\r\n\r\n";
        static const char hd1[] = "Subject: one\r\nMessage-ID:\r\n <folded@fake>\r\n\r\n";
        struct sbuf r = {0};
        sbuf_addf(&r,
                  "* 1 FETCH (UID 7 RFC822.SIZE 99 BODY[HEADER.FIELDS (MESSAGE-ID)] {%zu}\r\n%s "
                  "BODY[HEADER] {%zu}\r\n%s)\r\n",
                  strlen(hf1), hf1, strlen(hd1), hd1);
        sbuf_adds(&r, "* 2 FETCH (UID 8 BODY[HEADER.FIELDS (MESSAGE-ID)] {2}\r\n\r\n "
                      "BODY[HEADER] NIL)\r\n");
        sbuf_addf(&r, "%s OK fetched\r\n", tag);
        fake_send(f, r.buf);
        sbuf_free(&r);
    } else if (strcmp(cmd, "LOGOUT") == 0) {
        snprintf(resp, sizeof(resp), "* BYE bye\r\n%s OK bye\r\n", tag);
        fake_send(f, resp);
    } else if (strncmp(cmd, "LIST ", 5) == 0) {
        snprintf(resp, sizeof(resp),
                 "* LIST () \"/\" INBOX\r\n* LIST (\\HasNoChildren) \"/\" Sub\r\n%s OK listed\r\n",
                 tag);
        fake_send(f, resp);
    } else if (strncmp(cmd, "LSUB ", 5) == 0) {
        snprintf(resp, sizeof(resp), "* LSUB () \"/\" Sub\r\n%s OK lsub\r\n", tag);
        fake_send(f, resp);
    } else if (strncmp(cmd, "STATUS ", 7) == 0) {
        snprintf(resp, sizeof(resp), "* STATUS Sub (MESSAGES 3 UIDNEXT 4)\r\n%s OK status\r\n",
                 tag);
        fake_send(f, resp);
    } else if (strncmp(cmd, "SELECT ", 7) == 0 || strncmp(cmd, "EXAMINE ", 8) == 0) {
        snprintf(resp, sizeof(resp),
                 "* 3 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n* OK [UIDNEXT 4] n\r\n%s OK "
                 "[READ-WRITE] selected\r\n",
                 tag);
        fake_send(f, resp);
    } else if (strncmp(cmd, "UID STORE ", 10) == 0) {
        snprintf(resp, sizeof(resp), "%s OK stored\r\n", tag);
        fake_send(f, resp);
    } else if (strncmp(cmd, "APPEND ", 7) == 0) {
        sbuf_reset(&f->appended);
        sbuf_add(&f->appended, lit, litlen);
        snprintf(resp, sizeof(resp), "%s OK [APPENDUID 7 9] appended\r\n", tag);
        fake_send(f, resp);
    } else if (strncmp(cmd, "UID EXPUNGE ", 12) == 0) {
        snprintf(resp, sizeof(resp), "* 2 EXPUNGE\r\n%s OK expunged\r\n", tag);
        fake_send(f, resp);
    } else if (strncmp(cmd, "UID MOVE ", 9) == 0) {
        snprintf(resp, sizeof(resp), "* OK [COPYUID 7 1 5] moved\r\n* 1 EXPUNGE\r\n%s OK done\r\n",
                 tag);
        fake_send(f, resp);
    } else if (strncmp(cmd, "UID COPY ", 9) == 0) {
        snprintf(resp, sizeof(resp), "%s OK [COPYUID 7 2 6] copied\r\n", tag);
        fake_send(f, resp);
    } else if (strncmp(cmd, "CREATE ", 7) == 0 || strncmp(cmd, "DELETE ", 7) == 0) {
        snprintf(resp, sizeof(resp), "%s OK done\r\n", tag);
        fake_send(f, resp);
    } else {
        snprintf(resp, sizeof(resp), "%s BAD unexpected\r\n", tag);
        fake_send(f, resp);
    }
}

static void fake_alloc(uv_handle_t *h, size_t sugg, uv_buf_t *buf)
{
    buf->base = xmalloc(4096);
    buf->len = 4096;
}

/* If the line s[0..len) ends with a literal announcement {N} or {N+},
 * returns true with its size and kind. */
static bool literal_marker(const char *s, size_t len, size_t *n_r, bool *plus_r)
{
    if (len < 3 || s[len - 1] != '}') {
        return false;
    }
    size_t i = len - 1;
    *plus_r = s[i - 1] == '+';
    if (*plus_r) {
        i--;
    }
    size_t end = i, n = 0;
    while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9') {
        i--;
    }
    if (i == end || i == 0 || s[i - 1] != '{') {
        return false;
    }
    for (size_t k = i; k < end; k++) {
        n = n * 10 + (size_t)(s[k] - '0');
    }
    *n_r = n;
    return true;
}

/* The length of the first complete command in f->in, literals included, or
 * 0 while more bytes are needed. A synchronizing literal is answered with
 * "+" as soon as its announcement is in. */
static size_t command_length(struct fake *f)
{
    size_t off = 0;
    for (;;) {
        const char *eol = memmem(f->in.buf + off, f->in.len - off, "\r\n", 2);
        if (eol == NULL) {
            return 0;
        }
        size_t end = (size_t)(eol - f->in.buf);
        size_t n;
        bool plus;
        if (!literal_marker(f->in.buf + off, end - off, &n, &plus)) {
            return end + 2;
        }
        if (!plus && f->acked_at < end + 1) {
            f->acked_at = end + 1;
            fake_send(f, "+ go ahead\r\n");
        }
        if (f->in.len < end + 2 + n) {
            return 0;
        }
        off = end + 2 + n;
    }
}

static void fake_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct fake *f = s->data;
    if (n > 0) {
        sbuf_add(&f->in, buf->base, (size_t)n);
        size_t len;
        while (f->in.len > 0 && (len = command_length(f)) > 0) {
            char *cmd = xmalloc(len + 1);
            memcpy(cmd, f->in.buf, len);
            cmd[len] = '\0';
            memmove(f->in.buf, f->in.buf + len, f->in.len - len);
            f->in.len -= len;
            f->acked_at = 0;
            /* The first line, and the literal that ends it if any. */
            char *eol = memmem(cmd, len, "\r\n", 2);
            *eol = '\0';
            size_t first = (size_t)(eol - cmd), litlen = 0;
            bool plus;
            const char *lit = NULL;
            if (literal_marker(cmd, first, &litlen, &plus)) {
                lit = eol + 2;
            }
            fake_line(f, cmd, lit, litlen);
            free(cmd);
        }
    } else if (n < 0) {
        uv_read_stop(s);
    }
    free(buf->base);
}

static void on_fake_conn(uv_stream_t *srv, int status)
{
    struct fake *f = srv->data;
    assert_int_equal(status, 0);
    uv_tcp_init(&f->loop, &f->client);
    f->client.data = f;
    assert_int_equal(uv_accept(srv, (uv_stream_t *)&f->client), 0);
    f->have_client = true;
    if (f->sndbuf > 0) {
        uv_os_fd_t fd;
        assert_int_equal(uv_fileno((uv_handle_t *)&f->client, &fd), 0);
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &f->sndbuf, sizeof(f->sndbuf)), 0);
    }
    uv_read_start((uv_stream_t *)&f->client, fake_alloc, fake_read);
    char greeting[256];
    snprintf(greeting, sizeof(greeting), "* PREAUTH [CAPABILITY %s] fake ready\r\n",
             f->caps != NULL ? f->caps : "IMAP4rev1 IDLE");
    fake_send(f, greeting);
}

static int fake_start(struct fake *f)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_tcp_init(&f->loop, &f->server);
    f->server.data = f;
    uv_timer_init(&f->loop, &f->timer);
    f->timer.data = f;
    uv_timer_init(&f->loop, &f->push);
    f->push.data = f;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_bind(&f->server, (const struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&f->server, 4, on_fake_conn), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&f->server, (struct sockaddr *)&ss, &len);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void fake_close_all(struct fake *f)
{
    if (!uv_is_closing((uv_handle_t *)&f->server)) {
        uv_close((uv_handle_t *)&f->server, NULL);
    }
    uv_close((uv_handle_t *)&f->timer, NULL);
    uv_close((uv_handle_t *)&f->push, NULL);
    if (f->have_client) {
        uv_close((uv_handle_t *)&f->client, NULL);
    }
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    sbuf_free(&f->in);
    sbuf_free(&f->log);
    sbuf_free(&f->appended);
    sbuf_free(&f->evlog);
    free(f->error);
}

static void on_ready(struct imap *im, void *arg)
{
    struct fake *f = arg;
    assert_false(f->in_api);
    f->ready = true;
    if (f->ready_hook != NULL) {
        f->ready_hook(f);
    }
}

static void on_error(struct imap *im, int err, const char *msg, void *arg)
{
    struct fake *f = arg;
    assert_false(f->in_api);
    assert_false(f->errored); /* once */
    f->errored = true;
    f->error = xstrdup(msg);
    f->error_code = err;
}

static void on_event(struct imap *im, const struct imap_event *ev, void *arg)
{
    struct fake *f = arg;
    assert_false(f->in_api);
    f->events++;
    sbuf_addf(&f->evlog, "%d %u\n", (int)ev->type, ev->n);
}

static void on_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct fake *f = arg;
    assert_false(f->in_api);
    f->done_count++;
    if (res->err == 0 && res->status == IMAP_STATUS_OK) {
        f->ok_count++;
    }
    if (f->free_in_callback && f->done_count == 3) {
        imap_free(f->im);
        f->im = NULL;
    }
}

static const struct imap_cb fake_cb = {
    .on_ready = on_ready, .on_error = on_error, .on_event = on_event};

static void connect_client_quick(struct fake *f, int port, unsigned depth, unsigned quick_ms)
{
    struct imap_opts o = {
        .net = {.host = "127.0.0.1", .port = (uint16_t)port, .tls = NET_TLS_NONE},
        .user = "alice",
        .secret = "pw",
        .allow_plaintext = true,
        .pipeline_depth = depth,
        .quick_reply_ms = quick_ms,
    };
    f->in_api = true;
    assert_int_equal(imap_connect(&f->loop, &o, &fake_cb, f, &f->im), 0);
    f->in_api = false;
}

static void connect_client(struct fake *f, int port, unsigned depth)
{
    connect_client_quick(f, port, depth, 0);
}

static void run_until(struct fake *f, bool *flag, int *count, int want)
{
    uint64_t deadline = uv_hrtime() + 10000000000ull;
    while ((flag ? !*flag : *count < want) && uv_hrtime() < deadline) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}

static void test_pipeline_depth_and_held_commands(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    connect_client(&f, port, 4);
    /* Queued before the session is ready: held, then sent 4 at a time. */
    f.in_api = true;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(imap_noop(f.im, on_done, &f), 0);
    }
    f.in_api = false;
    assert_int_equal(f.done_count, 0);
    run_until(&f, NULL, &f.done_count, 20);
    assert_true(f.ready);
    assert_int_equal(f.ok_count, 20);
    assert_int_equal(f.max_pending, 4);
    assert_false(f.errored);
    imap_free(f.im);
    fake_close_all(&f);
}

static void test_idle_ends_when_a_command_is_queued(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    connect_client(&f, port, 0);
    run_until(&f, &f.ready, NULL, 0);
    f.in_api = true;
    assert_int_equal(imap_idle_start(f.im, on_done, &f), 0);
    f.in_api = false;
    while (imap_get_state(f.im) != IMAP_STATE_IDLE) {
        uv_run(&f.loop, UV_RUN_ONCE);
    }
    f.in_api = true;
    assert_int_equal(imap_noop(f.im, on_done, &f), 0);
    f.in_api = false;
    run_until(&f, NULL, &f.done_count, 2);
    assert_int_equal(f.ok_count, 2);
    assert_int_equal(imap_get_state(f.im), IMAP_STATE_READY);
    assert_string_equal(f.log.buf, "LIST \"\" \"\"\nIDLE\nDONE\nNOOP\n");
    imap_free(f.im);
    fake_close_all(&f);
}

/* A DONE or a NOOP left unanswered (a NAT box dropped the flow while the
 * watcher idled) fails the connection after the quick deadline, not after
 * the account's whole timeout (60 s here) and not never: before, a DONE
 * was not even awaited, so an IDLE restart on a dead link hung for good. */
static void quick_deadline_case(bool idle)
{
    struct fake f;
    int port = fake_start(&f);
    connect_client_quick(&f, port, 0, 300);
    run_until(&f, &f.ready, NULL, 0);
    f.deaf = true;
    f.in_api = true;
    if (idle) {
        assert_int_equal(imap_idle_start(f.im, on_done, &f), 0);
    } else {
        assert_int_equal(imap_noop(f.im, on_done, &f), 0);
    }
    f.in_api = false;
    if (idle) {
        while (imap_get_state(f.im) != IMAP_STATE_IDLE) {
            uv_run(&f.loop, UV_RUN_ONCE);
        }
        /* Idling itself awaits nothing: no deadline runs out. */
        uint64_t until = uv_hrtime() + 600000000ull;
        while (uv_hrtime() < until) {
            uv_run(&f.loop, UV_RUN_NOWAIT);
        }
        assert_false(f.errored);
        imap_idle_stop(f.im);
    }
    uint64_t t0 = uv_hrtime();
    run_until(&f, &f.errored, NULL, 0);
    uint64_t took_ms = (uv_hrtime() - t0) / 1000000u;
    assert_true(f.errored);
    assert_int_equal(f.error_code, NET_ETIMEOUT);
    assert_non_null(strstr(f.error, "timed out after"));
    assert_true(took_ms < 5000);       /* the quick deadline, far below 60 s */
    assert_int_equal(f.done_count, 1); /* the command failed with the link */
    assert_int_equal(f.ok_count, 0);
    assert_string_equal(f.log.buf,
                        idle ? "LIST \"\" \"\"\nIDLE\nDONE\n" : "LIST \"\" \"\"\nNOOP\n");
    imap_free(f.im);
    fake_close_all(&f);
}

static void test_unanswered_done_times_out_quickly(void **state)
{
    quick_deadline_case(true);
}

static void test_unanswered_noop_times_out_quickly(void **state)
{
    quick_deadline_case(false);
}

static void test_command_queued_behind_idle(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    connect_client(&f, port, 0);
    /* Both queued before the session is ready: the IDLE starts and ends
     * as soon as the server accepts it, because a command waits. */
    assert_int_equal(imap_idle_start(f.im, on_done, &f), 0);
    assert_int_equal(imap_noop(f.im, on_done, &f), 0);
    run_until(&f, NULL, &f.done_count, 2);
    assert_int_equal(f.ok_count, 2);
    assert_string_equal(f.log.buf, "LIST \"\" \"\"\nIDLE\nDONE\nNOOP\n");
    imap_free(f.im);
    fake_close_all(&f);
}

static void test_free_inside_callback(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    connect_client(&f, port, 2);
    f.free_in_callback = true;
    for (int i = 0; i < 10; i++) {
        assert_int_equal(imap_noop(f.im, on_done, &f), 0);
    }
    run_until(&f, NULL, &f.done_count, 3);
    /* Let the loop run on: nothing more may be called back. */
    for (int i = 0; i < 20; i++) {
        uv_run(&f.loop, UV_RUN_NOWAIT);
    }
    assert_null(f.im);
    assert_int_equal(f.done_count, 3);
    assert_false(f.errored);
    fake_close_all(&f);
}

struct hdr_seen {
    struct fake *f;
    int n;
    char *msgid[2];
    char *header[2];
    unsigned have[2];
};

static void on_hdr_message(struct imap *im, const struct imap_msg *m, void *sink, void *arg)
{
    struct hdr_seen *h = arg;
    assert_true(h->n < 2);
    h->have[h->n] = m->have;
    h->msgid[h->n] = m->message_id != NULL ? xstrdup(m->message_id) : NULL;
    h->header[h->n] = m->header != NULL ? xstrndup(m->header, m->header_len) : NULL;
    h->n++;
}

static void on_hdr_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct hdr_seen *h = arg;
    on_done(im, res, h->f);
}

static void test_fetch_message_id_and_header(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    connect_client(&f, port, 0);
    struct hdr_seen h = {.f = &f};
    struct imap_fetch_cb cb = {.on_message = on_hdr_message, .done = on_hdr_done};
    assert_int_equal(
        imap_uid_fetch(f.im, "7:8", IMAP_FETCH_MESSAGE_ID | IMAP_FETCH_HEADER, 0, false, &cb, &h),
        0);
    run_until(&f, NULL, &f.done_count, 1);
    assert_int_equal(f.ok_count, 1);
    assert_string_equal(f.log.buf, "LIST \"\" \"\"\nUID FETCH 7:8 (UID "
                                   "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)] BODY.PEEK[HEADER])\n");
    assert_int_equal(h.n, 2);
    unsigned both = IMAP_FETCH_MESSAGE_ID | IMAP_FETCH_HEADER;
    assert_int_equal(h.have[0] & both, both);
    assert_string_equal(h.msgid[0], "<folded@fake>");
    assert_string_equal(h.header[0], "Subject: one\r\nMessage-ID:\r\n <folded@fake>\r\n\r\n");
    assert_int_equal(h.have[1] & both, both);
    assert_null(h.msgid[1]);
    assert_null(h.header[1]);
    for (int i = 0; i < 2; i++) {
        free(h.msgid[i]);
        free(h.header[i]);
    }
    imap_free(f.im);
    fake_close_all(&f);
}

struct search_seen {
    struct fake *f;
    size_t n;
    uint32_t uids[4];
};

static void on_search(struct imap *im, const struct imap_result *res, void *arg)
{
    struct search_seen *ss = arg;
    ss->n = res->nuids;
    for (size_t i = 0; i < res->nuids && i < 4; i++) {
        ss->uids[i] = res->uids[i];
    }
    on_done(im, res, ss->f);
}

static void test_pipelined_searches_keep_their_results(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    connect_client(&f, port, 0);
    struct search_seen a = {.f = &f}, b = {.f = &f};
    assert_int_equal(imap_uid_search(f.im, "HEADER Message-ID \"<a@x>\"", on_search, &a), 0);
    assert_int_equal(imap_uid_search(f.im, "HEADER Message-ID \"<b@x>\"", on_search, &b), 0);
    run_until(&f, NULL, &f.done_count, 2);
    assert_int_equal(f.ok_count, 2);
    assert_int_equal(a.n, 1);
    assert_int_equal(a.uids[0], 1);
    assert_int_equal(b.n, 2);
    assert_int_equal(b.uids[0], 2);
    assert_int_equal(b.uids[1], 3);
    imap_free(f.im);
    fake_close_all(&f);
}

static void test_connection_refused(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    /* Close the listener so that the port refuses. */
    uv_close((uv_handle_t *)&f.server, NULL);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    connect_client(&f, port, 0);
    assert_int_equal(imap_noop(f.im, on_done, &f), 0);
    run_until(&f, &f.errored, NULL, 0);
    assert_int_equal(f.done_count, 1);
    assert_int_equal(f.ok_count, 0);
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%d: connection refused", port);
    assert_string_equal(f.error, want);
    assert_int_equal(imap_get_state(f.im), IMAP_STATE_FAILED);
    assert_string_equal(imap_error(f.im), want);
    imap_free(f.im);
    fake_close_all(&f);
}

/* ---- No callback from inside any API call ---- */

/* Sets in_api around one API call: every callback asserts it is clear, so a
 * callback made synchronously from inside the call fails the test. */
#define API(f, expr)                                                                               \
    ({                                                                                             \
        (f)->in_api = true;                                                                        \
        int r_ = (expr);                                                                           \
        (f)->in_api = false;                                                                       \
        r_;                                                                                        \
    })

struct call {
    struct fake *f;
    const char *name;
    int ndone;
    int err;
    enum imap_status status;
    char *text;
    uint32_t append_uid;
    char *copy_src;
    size_t nuids;
    int items; /* on_folder / on_status / on_message calls */
};

static void on_call_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct call *c = arg;
    assert_false(c->f->in_api);
    c->ndone++;
    c->err = res->err;
    c->status = res->status;
    free(c->text);
    c->text = xstrdup(res->text != NULL ? res->text : "");
    c->append_uid = res->append_uid;
    free(c->copy_src);
    c->copy_src = res->copy_src != NULL ? xstrdup(res->copy_src) : NULL;
    c->nuids = res->nuids;
    c->f->done_count++;
}

static void on_call_folder(struct imap *im, const struct imap_folder *fo, void *arg)
{
    struct call *c = arg;
    assert_false(c->f->in_api);
    c->items++;
}

static void on_call_status(struct imap *im, const struct imap_status_info *st, void *arg)
{
    struct call *c = arg;
    assert_false(c->f->in_api);
    assert_int_equal(st->messages, 3);
    c->items++;
}

static void on_call_message(struct imap *im, const struct imap_msg *m, void *sink, void *arg)
{
    struct call *c = arg;
    assert_false(c->f->in_api);
    c->items++;
}

static void free_calls(struct call *calls, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(calls[i].text);
        free(calls[i].copy_src);
    }
}

static const char append_msg[] = "Subject: held\r\n\r\nbody\r\n";

/* An fd positioned at the start of append_msg. */
static int append_fd(void)
{
    FILE *fp = tmpfile();
    assert_non_null(fp);
    int fd = dup(fileno(fp));
    fclose(fp);
    assert_int_equal(write(fd, append_msg, sizeof(append_msg) - 1), sizeof(append_msg) - 1);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    return fd;
}

enum {
    NCALLS = 16
};

/* Issues every command once (search twice: the fake answers searches in
 * pairs), each wrapped in in_api; all must be accepted. The fd is for
 * APPEND (closed by the caller). */
static void issue_all(struct fake *f, struct call *calls, int fd)
{
    static const char *const names[NCALLS] = {
        "noop",   "list",    "status", "select", "fetch", "search", "search", "store",
        "append", "expunge", "move",   "copy",   "idle",  "create", "delete", "noop2"};
    memset(calls, 0, NCALLS * sizeof(*calls));
    for (size_t i = 0; i < NCALLS; i++) {
        calls[i].f = f;
        calls[i].name = names[i];
    }
    struct imap *im = f->im;
    struct imap_select_opts so = {0};
    struct imap_fetch_cb fcb = {.on_message = on_call_message, .done = on_call_done};
    struct imap_append a = {
        .folder = "INBOX", .flags = IMAP_FLAG_SEEN, .size = sizeof(append_msg) - 1, .fd = fd};
    assert_int_equal(API(f, imap_noop(im, on_call_done, &calls[0])), 0);
    assert_int_equal(API(f, imap_list(im, on_call_folder, on_call_done, &calls[1])), 0);
    assert_int_equal(API(f, imap_status(im, "Sub", IMAP_STATUS_MESSAGES, on_call_status,
                                        on_call_done, &calls[2])),
                     0);
    assert_int_equal(API(f, imap_select(im, "INBOX", &so, on_call_done, &calls[3])), 0);
    assert_int_equal(
        API(f, imap_uid_fetch(im, "7:8", IMAP_FETCH_MESSAGE_ID, 0, false, &fcb, &calls[4])), 0);
    assert_int_equal(API(f, imap_uid_search(im, "ALL", on_call_done, &calls[5])), 0);
    assert_int_equal(API(f, imap_uid_search(im, "SEEN", on_call_done, &calls[6])), 0);
    assert_int_equal(
        API(f, imap_uid_store(im, "1", '+', IMAP_FLAG_SEEN, NULL, 0, 0, on_call_done, &calls[7])),
        0);
    assert_int_equal(API(f, imap_append(im, &a, on_call_done, &calls[8])), 0);
    assert_int_equal(API(f, imap_uid_expunge(im, "2", on_call_done, &calls[9])), 0);
    assert_int_equal(API(f, imap_uid_move(im, "1", "Sub", on_call_done, &calls[10])), 0);
    assert_int_equal(API(f, imap_uid_copy(im, "2", "Sub", on_call_done, &calls[11])), 0);
    assert_int_equal(API(f, imap_idle_start(im, on_call_done, &calls[12])), 0);
    /* Queued behind the IDLE: ends it (from the loop). */
    assert_int_equal(API(f, imap_create(im, "New", on_call_done, &calls[13])), 0);
    assert_int_equal(API(f, imap_delete(im, "New", on_call_done, &calls[14])), 0);
    assert_int_equal(API(f, imap_noop(im, on_call_done, &calls[15])), 0);
}

/* Every command completed exactly once with its real result. */
static void check_all(struct fake *f, struct call *calls)
{
    for (size_t i = 0; i < NCALLS; i++) {
        if (calls[i].ndone != 1 || calls[i].err != 0 || calls[i].status != IMAP_STATUS_OK) {
            fail_msg("%s: ndone %d err %d status %d text '%s'", calls[i].name, calls[i].ndone,
                     calls[i].err, (int)calls[i].status, calls[i].text ? calls[i].text : "");
        }
    }
    assert_int_equal(calls[1].items, 2); /* INBOX, Sub */
    assert_int_equal(calls[2].items, 1);
    assert_int_equal(calls[4].items, 2); /* UIDs 7 and 8 */
    assert_int_equal(calls[5].nuids, 1);
    assert_int_equal(calls[6].nuids, 2);
    assert_int_equal(calls[8].append_uid, 9);
    assert_string_equal(calls[10].copy_src, "1");
    assert_string_equal(calls[11].copy_src, "2");
    assert_int_equal(f->appended.len, sizeof(append_msg) - 1);
    assert_memory_equal(f->appended.buf, append_msg, sizeof(append_msg) - 1);
    assert_false(f->errored);
}

#define FULL_CAPS "IMAP4rev1 IDLE UIDPLUS MOVE LITERAL+"

static void logout_and_refuse_everything(struct fake *f);

/* Commands queued before the session is ready (held, sent later), then
 * the same set once it is ready (sent at once, from inside the calls). */
static void test_no_callback_inside_any_api_call(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    f.caps = FULL_CAPS;
    connect_client(&f, port, 0);
    struct call held[NCALLS], ready[NCALLS];
    int fd1 = append_fd(), fd2 = append_fd();
    issue_all(&f, held, fd1);
    assert_int_equal(f.done_count, 0);
    run_until(&f, NULL, &f.done_count, NCALLS);
    assert_true(f.ready);
    check_all(&f, held);

    sbuf_reset(&f.appended);
    issue_all(&f, ready, fd2);
    run_until(&f, NULL, &f.done_count, 2 * NCALLS);
    check_all(&f, ready);
    /* EXPUNGE and MOVE answers carried "* n EXPUNGE": events, from the loop. */
    assert_true(f.events >= 4);
    close(fd1);
    close(fd2);
    free_calls(held, NCALLS);
    free_calls(ready, NCALLS);
    logout_and_refuse_everything(&f);
    imap_free(f.im);
    fake_close_all(&f);
}

/* The same from inside a callback (on_ready): the nested calls must not
 * call back either. */
static struct call nested_calls[NCALLS];
static int nested_fd = -1;

static void issue_in_ready(struct fake *f)
{
    issue_all(f, nested_calls, nested_fd);
}

static void test_no_callback_inside_api_calls_made_from_a_callback(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    f.caps = FULL_CAPS;
    f.ready_hook = issue_in_ready;
    nested_fd = append_fd();
    connect_client(&f, port, 0);
    run_until(&f, NULL, &f.done_count, NCALLS);
    check_all(&f, nested_calls);
    close(nested_fd);
    free_calls(nested_calls, NCALLS);
    imap_free(f.im);
    fake_close_all(&f);
}

/* After LOGOUT (and, in the refused-connection test, after a failure)
 * every command is refused with -ENOTCONN and nothing is called back,
 * then or later. */
static void refuse_everything(struct fake *f)
{
    struct imap *im = f->im;
    struct call c = {.f = f, .name = "refused"};
    struct imap_select_opts so = {0};
    struct imap_fetch_cb fcb = {.on_message = on_call_message, .done = on_call_done};
    struct imap_append a = {.folder = "INBOX", .size = 5, .fd = 0};
    int before = f->done_count;
    assert_int_equal(API(f, imap_noop(im, on_call_done, &c)), -ENOTCONN);
    assert_int_equal(API(f, imap_list(im, on_call_folder, on_call_done, &c)), -ENOTCONN);
    assert_int_equal(API(f, imap_status(im, "Sub", 0, on_call_status, on_call_done, &c)),
                     -ENOTCONN);
    assert_int_equal(API(f, imap_select(im, "INBOX", &so, on_call_done, &c)), -ENOTCONN);
    assert_int_equal(API(f, imap_uid_fetch(im, "1", IMAP_FETCH_FLAGS, 0, false, &fcb, &c)),
                     -ENOTCONN);
    assert_int_equal(API(f, imap_uid_search(im, "ALL", on_call_done, &c)), -ENOTCONN);
    assert_int_equal(
        API(f, imap_uid_store(im, "1", '+', IMAP_FLAG_SEEN, NULL, 0, 0, on_call_done, &c)),
        -ENOTCONN);
    assert_int_equal(API(f, imap_append(im, &a, on_call_done, &c)), -ENOTCONN);
    assert_int_equal(API(f, imap_uid_expunge(im, "1", on_call_done, &c)), -ENOTCONN);
    assert_int_equal(API(f, imap_uid_move(im, "1", "Sub", on_call_done, &c)), -ENOTCONN);
    assert_int_equal(API(f, imap_uid_copy(im, "1", "Sub", on_call_done, &c)), -ENOTCONN);
    assert_int_equal(API(f, imap_create(im, "X", on_call_done, &c)), -ENOTCONN);
    assert_int_equal(API(f, imap_delete(im, "X", on_call_done, &c)), -ENOTCONN);
    assert_int_equal(API(f, imap_idle_start(im, on_call_done, &c)), -ENOTCONN);
    assert_int_equal(API(f, imap_logout(im, on_call_done, &c)), -ENOTCONN);
    f->in_api = true;
    imap_idle_stop(im);
    imap_resume(im);
    f->in_api = false;
    uint64_t until = uv_hrtime() + 100000000ull;
    while (uv_hrtime() < until) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
    }
    assert_int_equal(c.ndone, 0);
    assert_int_equal(f->done_count, before);
    free_calls(&c, 1);
}

static void logout_and_refuse_everything(struct fake *f)
{
    struct call c = {.f = f, .name = "logout"};
    assert_int_equal(API(f, imap_logout(f->im, on_call_done, &c)), 0);
    int want = f->done_count + 1;
    run_until(f, NULL, &f->done_count, want);
    assert_int_equal(c.ndone, 1);
    assert_int_equal(c.status, IMAP_STATUS_OK);
    assert_int_equal(imap_get_state(f->im), IMAP_STATE_CLOSED);
    free_calls(&c, 1);
    refuse_everything(f);
    assert_false(f->errored);
}

/* Commands the client refuses by itself still complete from the loop:
 * folder names it cannot send, UID EXPUNGE without UIDPLUS and an IDLE
 * stopped before it started (both queued before the capabilities were
 * known). Invalid arguments are refused with -EINVAL and no callback. */
static void test_local_refusals_complete_from_the_loop(void **state)
{
    struct fake f;
    int port = fake_start(&f); /* IMAP4rev1 IDLE: no UIDPLUS */
    connect_client(&f, port, 0);
    struct call expunge = {.f = &f, .name = "expunge"}, idle = {.f = &f, .name = "idle"};
    assert_int_equal(API(&f, imap_uid_expunge(f.im, "1", on_call_done, &expunge)), 0);
    assert_int_equal(API(&f, imap_idle_start(f.im, on_call_done, &idle)), 0);
    f.in_api = true;
    imap_idle_stop(f.im);
    f.in_api = false;
    run_until(&f, NULL, &f.done_count, 2);
    assert_int_equal(expunge.ndone, 1);
    assert_int_equal(expunge.err, IMAP_ENOTSUP);
    char want[200];
    snprintf(want, sizeof(want),
             "127.0.0.1:%d: UID EXPUNGE needs UIDPLUS, which the server does not offer", port);
    assert_string_equal(expunge.text, want);
    assert_int_equal(idle.ndone, 1);
    assert_int_equal(idle.err, 0);
    assert_int_equal(idle.status, IMAP_STATUS_OK);
    assert_string_equal(idle.text, "IDLE stopped before it started");
    run_until(&f, &f.ready, NULL, 0);

    /* Ready now: expunge is refused at once, without a callback. */
    assert_int_equal(API(&f, imap_uid_expunge(f.im, "1", on_call_done, &expunge)), IMAP_ENOTSUP);

    /* A name with a ".." component cannot be sent. */
    const char *bad = "a/../b";
    struct call c[7];
    memset(c, 0, sizeof(c));
    for (size_t i = 0; i < ARRAY_SIZE(c); i++) {
        c[i].f = &f;
        c[i].name = "badname";
    }
    struct imap_select_opts so = {0};
    struct imap_append a = {.folder = bad, .size = 5, .fd = 0};
    assert_int_equal(API(&f, imap_status(f.im, bad, 0, on_call_status, on_call_done, &c[0])), 0);
    assert_int_equal(API(&f, imap_select(f.im, bad, &so, on_call_done, &c[1])), 0);
    assert_int_equal(API(&f, imap_append(f.im, &a, on_call_done, &c[2])), 0);
    assert_int_equal(API(&f, imap_create(f.im, bad, on_call_done, &c[3])), 0);
    assert_int_equal(API(&f, imap_delete(f.im, bad, on_call_done, &c[4])), 0);
    assert_int_equal(API(&f, imap_uid_move(f.im, "1", bad, on_call_done, &c[5])), 0);
    assert_int_equal(API(&f, imap_uid_copy(f.im, "1", bad, on_call_done, &c[6])), 0);
    for (size_t i = 0; i < ARRAY_SIZE(c); i++) {
        assert_int_equal(c[i].ndone, 0);
    }

    /* Invalid arguments: -EINVAL, no callback ever. */
    struct call inval = {.f = &f, .name = "inval"};
    struct imap_fetch_cb fcb = {.done = on_call_done};
    assert_int_equal(API(&f, imap_uid_fetch(f.im, "1:x", IMAP_FETCH_FLAGS, 0, false, &fcb, &inval)),
                     -EINVAL);
    assert_int_equal(
        API(&f, imap_uid_store(f.im, "1", '*', IMAP_FLAG_SEEN, NULL, 0, 0, on_call_done, &inval)),
        -EINVAL);
    assert_int_equal(API(&f, imap_uid_search(f.im, "ALL\r\nX", on_call_done, &inval)), -EINVAL);
    struct imap_select_opts badknown = {.qresync_uidvalidity = 1, .qresync_known_uids = "1 2"};
    assert_int_equal(API(&f, imap_select(f.im, "INBOX", &badknown, on_call_done, &inval)), -EINVAL);

    struct call noop = {.f = &f, .name = "noop"};
    assert_int_equal(API(&f, imap_noop(f.im, on_call_done, &noop)), 0);
    run_until(&f, NULL, &noop.ndone, 1);
    snprintf(want, sizeof(want), "127.0.0.1:%d: cannot use folder 'a/../b': ", port);
    for (size_t i = 0; i < ARRAY_SIZE(c); i++) {
        assert_int_equal(c[i].ndone, 1);
        assert_int_equal(c[i].err, -EINVAL);
        assert_int_equal(c[i].status, IMAP_STATUS_NONE);
        assert_true(strncmp(c[i].text, want, strlen(want)) == 0);
    }
    assert_int_equal(noop.status, IMAP_STATUS_OK);
    assert_int_equal(inval.ndone, 0);
    assert_int_equal(expunge.ndone, 1);
    /* None of the refused commands reached the server. */
    assert_string_equal(f.log.buf, "LIST \"\" \"\"\nNOOP\n");
    assert_false(f.errored);
    free_calls(c, ARRAY_SIZE(c));
    free_calls(&expunge, 1);
    free_calls(&idle, 1);
    free_calls(&noop, 1);
    imap_free(f.im);
    fake_close_all(&f);
}

/* APPEND's body source fails while the command is written, which happens
 * inside imap_append: the failure is reported from the loop. */
struct src {
    const char *data;
    size_t len, pos;
    int err;
};

static ssize_t src_read(void *arg, char *buf, size_t len)
{
    struct src *s = arg;
    if (s->err != 0) {
        return s->err;
    }
    size_t n = s->len - s->pos < len ? s->len - s->pos : len;
    memcpy(buf, s->data + s->pos, n);
    s->pos += n;
    return (ssize_t)n;
}

static void append_source_failure(struct src *src, uint64_t size, int want_err, const char *what)
{
    struct fake f;
    int port = fake_start(&f);
    f.caps = FULL_CAPS; /* LITERAL+: the body goes out inside imap_append */
    connect_client(&f, port, 0);
    run_until(&f, &f.ready, NULL, 0);
    struct call c = {.f = &f, .name = "append"};
    struct imap_append a = {
        .folder = "INBOX", .size = size, .fd = -1, .read = src_read, .read_arg = src};
    assert_int_equal(API(&f, imap_append(f.im, &a, on_call_done, &c)), 0);
    assert_true(src->pos > 0 || src->err != 0); /* the source was read inside the call */
    assert_int_equal(c.ndone, 0);
    assert_false(f.errored);
    run_until(&f, &f.errored, NULL, 0);
    char want[256];
    snprintf(want, sizeof(want), "127.0.0.1:%d: %s", port, what);
    assert_int_equal(c.ndone, 1);
    assert_int_equal(c.err, want_err);
    assert_string_equal(c.text, want);
    assert_string_equal(f.error, want);
    assert_int_equal(f.error_code, want_err);
    assert_int_equal(imap_get_state(f.im), IMAP_STATE_FAILED);
    refuse_everything(&f);
    free_calls(&c, 1);
    imap_free(f.im);
    fake_close_all(&f);
}

static void test_append_source_failure_reported_from_the_loop(void **state)
{
    struct src broken = {.err = -EIO};
    append_source_failure(&broken, 100, -EIO,
                          "reading the message to append failed: Input/output error");
    struct src shorter = {.data = "12345", .len = 5};
    append_source_failure(&shorter, 100, -EIO,
                          "the message to append ended after 5 of 100 bytes; the "
                          "connection cannot continue");
}

/* Every command queued while the connection is refused completes with the
 * error from the loop, then on_error; afterwards everything is refused. */
static void test_connection_refused_completes_every_command(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    uv_close((uv_handle_t *)&f.server, NULL);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    connect_client(&f, port, 0);
    struct call calls[NCALLS];
    int fd = append_fd();
    issue_all(&f, calls, fd);
    run_until(&f, &f.errored, NULL, 0);
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%d: connection refused", port);
    for (size_t i = 0; i < NCALLS; i++) {
        assert_int_equal(calls[i].ndone, 1);
        assert_int_equal(calls[i].err, UV_ECONNREFUSED);
        assert_string_equal(calls[i].text, want);
    }
    assert_string_equal(f.error, want);
    refuse_everything(&f);
    close(fd);
    free_calls(calls, NCALLS);
    imap_free(f.im);
    fake_close_all(&f);
}

/* ---- Backpressure: a paused sink stops the socket ---- */

struct bp {
    struct fake *f;
    struct sbuf body;
    bool paused; /* IMAP_SINK_PAUSE returned, imap_resume not called yet */
    unsigned calls, pauses, violations;
    int begins, ends;
    bool complete;
    uint64_t msg_body_size;
    int done;
    enum imap_status status;
    uv_timer_t resume;
};

static void *bp_begin(struct imap *im, uint32_t seq, uint32_t uid, uint64_t size, void *arg)
{
    struct bp *b = arg;
    assert_false(b->f->in_api);
    assert_int_equal(uid, 1);
    assert_int_equal(size, b->f->big_body);
    b->begins++;
    return b;
}

static void bp_resume(uv_timer_t *t)
{
    struct bp *b = t->data;
    b->paused = false;
    b->f->in_api = true;
    imap_resume(b->f->im);
    b->f->in_api = false;
}

static int bp_data(struct imap *im, void *sink, const char *data, size_t len, void *arg)
{
    struct bp *b = arg;
    assert_ptr_equal(sink, b);
    assert_false(b->f->in_api);
    if (b->paused) {
        b->violations++;
    }
    sbuf_add(&b->body, data, len);
    b->calls++;
    if (b->calls == 1) {
        /* The test resumes this one by hand. */
        b->paused = true;
        b->pauses++;
        return IMAP_SINK_PAUSE;
    }
    if (b->calls % 4 == 0) {
        b->paused = true;
        b->pauses++;
        uv_timer_start(&b->resume, bp_resume, 1, 0);
        return IMAP_SINK_PAUSE;
    }
    return 0;
}

static void bp_end(struct imap *im, void *sink, bool complete, void *arg)
{
    struct bp *b = arg;
    assert_false(b->f->in_api);
    b->ends++;
    b->complete = complete;
}

static void bp_message(struct imap *im, const struct imap_msg *m, void *sink, void *arg)
{
    struct bp *b = arg;
    assert_false(b->f->in_api);
    assert_true(m->have & IMAP_FETCH_BODY);
    b->msg_body_size = m->body_size;
}

static void bp_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct bp *b = arg;
    assert_false(b->f->in_api);
    b->done++;
    b->status = res->status;
}

static void run_for(struct fake *f, unsigned ms)
{
    uint64_t until = uv_hrtime() + (uint64_t)ms * 1000000ull;
    while (uv_hrtime() < until) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(200);
    }
}

static void test_paused_sink_stops_reading_the_socket(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    f.big_body = 4u << 20;
    f.sndbuf = 16384;
    connect_client(&f, port, 0);
    run_until(&f, &f.ready, NULL, 0);
    struct bp b = {.f = &f};
    uv_timer_init(&f.loop, &b.resume);
    b.resume.data = &b;
    struct imap_fetch_cb cb = {.body_begin = bp_begin,
                               .body_data = bp_data,
                               .body_end = bp_end,
                               .on_message = bp_message,
                               .done = bp_done};
    assert_int_equal(API(&f, imap_uid_fetch(f.im, "1", IMAP_FETCH_BODY, 0, false, &cb, &b)), 0);
    run_until(&f, &b.paused, NULL, 0);
    assert_int_equal(b.calls, 1);

    /* Paused: the client reads nothing more, so the server's writes soon
     * block for good (uv_try_write: EAGAIN), long before the body is out. */
    uint64_t in0 = net_bytes_in(imap_net(f.im));
    run_for(&f, 300);
    assert_true(f.push_blocked);
    size_t sent1 = f.push_off;
    unsigned eagain1 = f.push_eagain;
    run_for(&f, 300);
    assert_true(f.push_blocked);
    /* Hardly anything more went out (the kernel may still find a little
     * room in the client's receive queue), though the server kept trying. */
    assert_true(f.push_off - sent1 <= 65536);
    assert_true(f.push_eagain > eagain1 + 10);
    assert_true(sent1 < f.big_body / 2);
    assert_int_equal(net_bytes_in(imap_net(f.im)), in0); /* the socket was not read */
    assert_int_equal(b.calls, 1);                        /* and nothing was delivered */
    assert_int_equal(b.done, 0);

    /* Resume: nothing is delivered inside the call; the body then
     * completes, byte-identical, with many more pauses on the way. */
    b.paused = false;
    f.in_api = true;
    imap_resume(f.im);
    f.in_api = false;
    assert_int_equal(b.calls, 1);
    run_until(&f, NULL, &b.done, 1);
    assert_int_equal(b.status, IMAP_STATUS_OK);
    assert_int_equal(b.violations, 0);
    assert_true(b.pauses > 10);
    assert_int_equal(b.begins, 1);
    assert_int_equal(b.ends, 1);
    assert_true(b.complete);
    assert_int_equal(b.msg_body_size, f.big_body);
    assert_int_equal(b.body.len, f.big_body);
    for (size_t i = 0; i < f.big_body; i++) {
        if (b.body.buf[i] != body_byte(i)) {
            fail_msg("body differs at byte %zu", i);
        }
    }
    assert_false(f.errored);
    sbuf_free(&b.body);
    uv_close((uv_handle_t *)&b.resume, NULL);
    imap_free(f.im);
    fake_close_all(&f);
}

/* ---- TCP keepalive ---- */

struct tcp_walk {
    struct fake *f;
    uv_os_fd_t fds[8];
    int n;
};

static void find_client_tcp(uv_handle_t *h, void *arg)
{
    struct tcp_walk *w = arg;
    if (h->type != UV_TCP || uv_is_closing(h) || h == (uv_handle_t *)&w->f->server ||
        h == (uv_handle_t *)&w->f->client) {
        return;
    }
    uv_os_fd_t fd;
    if (uv_fileno(h, &fd) == 0 && w->n < 8) {
        w->fds[w->n++] = fd;
    }
}

static int sockopt(int fd, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof(v);
    assert_int_equal(getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

/* The client's socket (the only TCP handle on the loop that is not the
 * fake server's) has SO_KEEPALIVE on with a 60 s idle time. There is no
 * accessor for it in the API; the client shares the test's loop. */
static void test_tcp_keepalive_on_client_socket(void **state)
{
    struct fake f;
    int port = fake_start(&f);
    connect_client(&f, port, 0);
    run_until(&f, &f.ready, NULL, 0);
    struct tcp_walk w = {.f = &f};
    uv_walk(&f.loop, find_client_tcp, &w);
    assert_int_equal(w.n, 1);
    int fd = w.fds[0];
    /* It really is the client end of the fake server's connection. */
    struct sockaddr_in mine, peer;
    socklen_t len = sizeof(mine);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&mine, &len), 0);
    int plen = sizeof(peer);
    assert_int_equal(uv_tcp_getpeername(&f.client, (struct sockaddr *)&peer, &plen), 0);
    assert_int_equal(mine.sin_port, peer.sin_port);
    assert_int_equal(sockopt(fd, SOL_SOCKET, SO_KEEPALIVE), 1);
    assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE), 60);
    assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_NODELAY), 1);
    /* The check can tell: the server's end has no keepalive. */
    uv_os_fd_t sfd;
    assert_int_equal(uv_fileno((uv_handle_t *)&f.client, &sfd), 0);
    assert_int_equal(sockopt(sfd, SOL_SOCKET, SO_KEEPALIVE), 0);
    imap_free(f.im);
    fake_close_all(&f);
}

/* What the client kept of the MAILBOXIDs it was told. */
struct objid_seen {
    struct fake *f;
    int nfolders, nstatus;
    bool sub_has_status;
    unsigned sub_have, status_have;
    char sub_id[IMAP_MAILBOXID_MAX + 1], status_id[IMAP_MAILBOXID_MAX + 1];
    char select_id[IMAP_MAILBOXID_MAX + 1];
};

static void on_objid_folder(struct imap *im, const struct imap_folder *fo, void *arg)
{
    struct objid_seen *o = arg;
    o->nfolders++;
    if (fo->name != NULL && strcmp(fo->name, "Sub") == 0) {
        o->sub_has_status = fo->has_status;
        o->sub_have = fo->status.have;
        snprintf(o->sub_id, sizeof(o->sub_id), "%s", fo->status.mailboxid);
    }
}

static void on_objid_status(struct imap *im, const struct imap_status_info *st, void *arg)
{
    struct objid_seen *o = arg;
    o->nstatus++;
    o->status_have = st->have;
    snprintf(o->status_id, sizeof(o->status_id), "%s", st->mailboxid);
}

static void on_objid_select(struct imap *im, const struct imap_result *res, void *arg)
{
    struct objid_seen *o = arg;
    if (res->err == 0 && res->mailbox != NULL) {
        snprintf(o->select_id, sizeof(o->select_id), "%s", res->mailbox->mailboxid);
    }
    on_done(im, res, o->f);
}

static void on_objid_done(struct imap *im, const struct imap_result *res, void *arg)
{
    on_done(im, res, ((struct objid_seen *)arg)->f);
}

enum {
    OBJID_LIST = 1,
    OBJID_STATUS = 2,
    OBJID_SELECT = 4,
    OBJID_ALL = 7,
};

/* LIST (with LIST-STATUS), STATUS and SELECT (those of which) against a
 * server that says mailboxid, until each has completed. */
static void objid_run(struct fake *f, const char *caps, const char *mailboxid, unsigned which,
                      struct objid_seen *o)
{
    int port = fake_start(f);
    f->caps = caps;
    f->mailboxid = mailboxid;
    memset(o, 0, sizeof(*o));
    o->f = f;
    connect_client(f, port, 0);
    struct imap_select_opts so = {0};
    int n = 0;
    if (which & OBJID_LIST) {
        assert_int_equal(imap_list(f->im, on_objid_folder, on_objid_done, o), 0);
        n++;
    }
    if (which & OBJID_STATUS) {
        assert_int_equal(imap_status(f->im, "Sub", IMAP_STATUS_MESSAGES | IMAP_STATUS_MAILBOXID,
                                     on_objid_status, on_objid_done, o),
                         0);
        n++;
    }
    if (which & OBJID_SELECT) {
        assert_int_equal(imap_select(f->im, "Sub", &so, on_objid_select, o), 0);
        n++;
    }
    run_until(f, NULL, &f->done_count, n);
}

#define OBJID_CAPS "IMAP4rev1 IDLE LIST-EXTENDED LIST-STATUS OBJECTID"

/* RFC 8474: with OBJECTID, LIST-STATUS and STATUS ask for MAILBOXID, and
 * the id of the STATUS answers and of the SELECT's response code reaches
 * the owner; without OBJECTID nothing asks for it (a server that sends it
 * anyway is still understood). */
static void test_mailboxid_asked_and_parsed(void **state)
{
    struct fake f;
    struct objid_seen o;
    objid_run(&f, OBJID_CAPS, "(F2212ea87-6097_x)", OBJID_ALL, &o);
    assert_int_equal(f.ok_count, 3);
    assert_false(f.errored);
    assert_non_null(strstr(f.log.buf, "LIST \"\" \"*\" RETURN (SUBSCRIBED STATUS (MESSAGES UIDNEXT "
                                      "UIDVALIDITY MAILBOXID))\n"));
    assert_non_null(strstr(f.log.buf, "STATUS Sub (MESSAGES MAILBOXID)\n"));
    assert_int_equal(o.nfolders, 2);
    assert_true(o.sub_has_status);
    assert_true(o.sub_have & IMAP_STATUS_MAILBOXID);
    assert_string_equal(o.sub_id, "F2212ea87-6097_x");
    assert_int_equal(o.nstatus, 1);
    assert_true(o.status_have & IMAP_STATUS_MAILBOXID);
    assert_string_equal(o.status_id, "F2212ea87-6097_x");
    assert_string_equal(o.select_id, "F2212ea87-6097_x");
    imap_free(f.im);
    fake_close_all(&f);

    objid_run(&f, "IMAP4rev1 IDLE LIST-EXTENDED LIST-STATUS", "(abc)", OBJID_ALL, &o);
    assert_int_equal(f.ok_count, 3);
    assert_null(strstr(f.log.buf, "MAILBOXID"));
    assert_non_null(strstr(f.log.buf, "STATUS Sub (MESSAGES)\n"));
    assert_string_equal(o.select_id, "abc");
    imap_free(f.im);
    fake_close_all(&f);

    /* The longest id the grammar allows. */
    char id[IMAP_MAILBOXID_MAX + 3];
    id[0] = '(';
    memset(id + 1, 'z', IMAP_MAILBOXID_MAX);
    snprintf(id + 1 + IMAP_MAILBOXID_MAX, 2, ")");
    objid_run(&f, OBJID_CAPS, id, OBJID_ALL, &o);
    assert_int_equal(f.ok_count, 3);
    assert_false(f.errored);
    assert_int_equal(strlen(o.select_id), IMAP_MAILBOXID_MAX);
    assert_int_equal(strlen(o.status_id), IMAP_MAILBOXID_MAX);
    imap_free(f.im);
    fake_close_all(&f);
}

/* A MAILBOXID outside RFC 8474's grammar (a character it does not allow,
 * more than 255 characters, empty, not one atom in parentheses) is a
 * protocol error that names the folder: an identity the planner cannot
 * trust must not decide a rename. */
static void test_mailboxid_malformed(void **state)
{
    char big[IMAP_MAILBOXID_MAX + 4];
    big[0] = '(';
    memset(big + 1, 'a', IMAP_MAILBOXID_MAX + 1);
    snprintf(big + 2 + IMAP_MAILBOXID_MAX, 2, ")");
    const char *bad[] = {"(a.b)", big, "()", "(a b)", "abc", "(\"abc\")", "((abc))"};
    static const struct {
        unsigned which;
        const char *where;
    } cmds[] = {{OBJID_LIST, "in the STATUS of folder 'Sub'"},
                {OBJID_STATUS, "in the STATUS of folder 'Sub'"},
                {OBJID_SELECT, "in the SELECT of folder 'Sub'"}};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        for (size_t k = 0; k < ARRAY_SIZE(cmds); k++) {
            struct fake f;
            struct objid_seen o;
            objid_run(&f, OBJID_CAPS, bad[i], cmds[k].which, &o);
            run_until(&f, &f.errored, NULL, 0);
            if (!f.errored || f.error_code != IMAP_EPROTO || f.error == NULL ||
                strstr(f.error, "malformed MAILBOXID") == NULL ||
                strstr(f.error, cmds[k].where) == NULL) {
                fail_msg("%s, %u: errored %d code %d error '%s'", bad[i], cmds[k].which, f.errored,
                         f.error_code, f.error != NULL ? f.error : "");
            }
            assert_string_equal(o.sub_id, "");
            assert_string_equal(o.status_id, "");
            assert_string_equal(o.select_id, "");
            imap_free(f.im);
            fake_close_all(&f);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uidset_format),
        cmocka_unit_test(test_uidset_format_property),
        cmocka_unit_test(test_uid_range_format),
        cmocka_unit_test(test_uidset_parse),
        cmocka_unit_test(test_datetime),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_header_message_id),
        cmocka_unit_test(test_pipeline_depth_and_held_commands),
        cmocka_unit_test(test_idle_ends_when_a_command_is_queued),
        cmocka_unit_test(test_command_queued_behind_idle),
        cmocka_unit_test(test_unanswered_done_times_out_quickly),
        cmocka_unit_test(test_unanswered_noop_times_out_quickly),
        cmocka_unit_test(test_free_inside_callback),
        cmocka_unit_test(test_fetch_message_id_and_header),
        cmocka_unit_test(test_pipelined_searches_keep_their_results),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_no_callback_inside_any_api_call),
        cmocka_unit_test(test_no_callback_inside_api_calls_made_from_a_callback),
        cmocka_unit_test(test_local_refusals_complete_from_the_loop),
        cmocka_unit_test(test_append_source_failure_reported_from_the_loop),
        cmocka_unit_test(test_connection_refused_completes_every_command),
        cmocka_unit_test(test_paused_sink_stops_reading_the_socket),
        cmocka_unit_test(test_tcp_keepalive_on_client_socket),
        cmocka_unit_test(test_mailboxid_asked_and_parsed),
        cmocka_unit_test(test_mailboxid_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
