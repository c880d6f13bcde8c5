/* LINK: ms_sync ms_core */
/* The IMAP client's pure helpers (UID sets, dates, folder names) and its
 * queue behaviour against an in-process fake server on the same libuv
 * loop: pipelining depth, commands held until ready, callbacks never from
 * inside an API call, IDLE ended automatically by a new command, and
 * imap_free from inside a callback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "daemon/util.h"
#include "sync/imap.h"
#include "sync/imap_int.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    uv_timer_t timer;
    /* Script state. */
    char pending[64][16]; /* NOOP tags not answered yet */
    int npending, max_pending;
    struct sbuf log; /* command lines received, one per line, tags removed */
    bool idle_seen;
    char idle_tag[16];
    /* Client side. */
    struct imap *im;
    bool in_api;
    int done_count, ok_count;
    bool ready, errored, free_in_callback;
    char *error;
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

static void fake_line(struct fake *f, char *line)
{
    char *sp = strchr(line, ' ');
    if (strcmp(line, "DONE") == 0) {
        sbuf_adds(&f->log, "DONE\n");
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
    if (strcmp(cmd, "LIST \"\" \"\"") == 0) {
        snprintf(resp, sizeof(resp), "* LIST (\\Noselect) \"/\" \"\"\r\n%s OK listed\r\n", tag);
        fake_send(f, resp);
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

static void fake_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct fake *f = s->data;
    if (n > 0) {
        sbuf_add(&f->in, buf->base, (size_t)n);
        char *eol;
        while ((eol = strstr(f->in.buf, "\r\n")) != NULL) {
            *eol = '\0';
            char *line = xstrdup(f->in.buf);
            size_t used = (size_t)(eol - f->in.buf) + 2;
            memmove(f->in.buf, f->in.buf + used, f->in.len - used + 1);
            f->in.len -= used;
            fake_line(f, line);
            free(line);
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
    uv_read_start((uv_stream_t *)&f->client, fake_alloc, fake_read);
    fake_send(f, "* PREAUTH [CAPABILITY IMAP4rev1 IDLE] fake ready\r\n");
}

static int fake_start(struct fake *f)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_tcp_init(&f->loop, &f->server);
    f->server.data = f;
    uv_timer_init(&f->loop, &f->timer);
    f->timer.data = f;
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
    uv_close((uv_handle_t *)&f->server, NULL);
    uv_close((uv_handle_t *)&f->timer, NULL);
    if (f->have_client) {
        uv_close((uv_handle_t *)&f->client, NULL);
    }
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    sbuf_free(&f->in);
    sbuf_free(&f->log);
    free(f->error);
}

static void on_ready(struct imap *im, void *arg)
{
    struct fake *f = arg;
    assert_false(f->in_api);
    f->ready = true;
}

static void on_error(struct imap *im, int err, const char *msg, void *arg)
{
    struct fake *f = arg;
    assert_false(f->in_api);
    f->errored = true;
    f->error = xstrdup(msg);
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

static const struct imap_cb fake_cb = {.on_ready = on_ready, .on_error = on_error};

static void connect_client(struct fake *f, int port, unsigned depth)
{
    struct imap_opts o = {
        .net = {.host = "127.0.0.1", .port = (uint16_t)port, .tls = NET_TLS_NONE},
        .user = "alice",
        .secret = "pw",
        .allow_plaintext = true,
        .pipeline_depth = depth,
    };
    f->in_api = true;
    assert_int_equal(imap_connect(&f->loop, &o, &fake_cb, f, &f->im), 0);
    f->in_api = false;
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
    uv_close((uv_handle_t *)&f.timer, NULL);
    assert_int_equal(uv_run(&f.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f.loop), 0);
    free(f.error);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uidset_format),
        cmocka_unit_test(test_uidset_parse),
        cmocka_unit_test(test_datetime),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_header_message_id),
        cmocka_unit_test(test_pipeline_depth_and_held_commands),
        cmocka_unit_test(test_idle_ends_when_a_command_is_queued),
        cmocka_unit_test(test_command_queued_behind_idle),
        cmocka_unit_test(test_free_inside_callback),
        cmocka_unit_test(test_fetch_message_id_and_header),
        cmocka_unit_test(test_pipelined_searches_keep_their_results),
        cmocka_unit_test(test_connection_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
