/* LINK: ms_sync ms_core */
/* sync/net.c on a real libuv loop against a small server in this file,
 * listening on 127.0.0.1: plaintext, implicit TLS, STARTTLS, DEFLATE,
 * timeouts, peer close, backpressure and a 20 MB TLS round trip. Every test
 * ends with the loop running dry and uv_loop_close returning 0, which
 * proves that net_close released every handle. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "sync/net.h"
#include "sync/tls.h"
#include "testcerts.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#include <zlib.h>

static struct testcerts tc;

/* ---- the test server --------------------------------------------------- */

enum {
    SF_TLS = 1 << 0,      /* implicit TLS */
    SF_STARTTLS = 1 << 1, /* send the greeting in plaintext, then TLS */
    SF_DEFLATE = 1 << 2,  /* raw DEFLATE both ways from the start (inside TLS) */
    SF_SILENT = 1 << 3,   /* read and ignore everything, never answer */
    SF_TICK = 1 << 4,     /* send "x" every 100 ms, 4 times */
    SF_BYE = 1 << 5,      /* send "BYE\r\n" once ready, then shut down */
    SF_ECHO = 1 << 6,     /* echo plaintext */
    SF_HANGUP = 1 << 7,   /* shut down right after the (plaintext) greeting */
};

#define MAX_SCONN 4

struct sconn {
    uv_tcp_t tcp;
    uv_timer_t tick;
    struct server *srv;
    struct tls_conn *tls;
    bool z;
    z_stream zin, zout;
    int ticks;
    int closes_pending;
    bool closing;
    uv_shutdown_t shutdown_req;
};

struct server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uint16_t port;
    unsigned flags;
    const char *greeting;
    size_t greeting_len; /* 0: strlen(greeting) */
    struct tls_ctx *ctx;
    struct sconn *conns[MAX_SCONN];
    uint64_t raw_in;
    uint64_t plain_in;
    bool stopped;
};

struct swrite {
    uv_write_t req;
    char data[];
};

static void s_on_written(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void s_write_raw(struct sconn *s, const void *data, size_t len)
{
    if (s->closing || len == 0) {
        return;
    }
    struct swrite *w = xmalloc(sizeof(*w) + len);
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, s_on_written) < 0) {
        free(w);
    }
}

static void s_flush_tls(struct sconn *s)
{
    char buf[65536];
    size_t n;
    while ((n = tls_conn_take_out(s->tls, buf, sizeof(buf))) > 0) {
        s_write_raw(s, buf, n);
    }
}

static void s_send_stage2(struct sconn *s, const void *data, size_t len)
{
    if (s->tls != NULL) {
        assert_int_equal(tls_conn_write(s->tls, data, len), (ssize_t)len);
        s_flush_tls(s);
    } else {
        s_write_raw(s, data, len);
    }
}

static void s_send(struct sconn *s, const void *data, size_t len)
{
    if (!s->z) {
        s_send_stage2(s, data, len);
        return;
    }
    char out[16384];
    s->zout.next_in = (Bytef *)data;
    s->zout.avail_in = (uInt)len;
    do {
        s->zout.next_out = (Bytef *)out;
        s->zout.avail_out = sizeof(out);
        int r = deflate(&s->zout, Z_SYNC_FLUSH);
        assert_true(r == Z_OK || r == Z_BUF_ERROR);
        s_send_stage2(s, out, sizeof(out) - s->zout.avail_out);
    } while (s->zout.avail_out == 0);
}

static void s_on_sconn_closed(uv_handle_t *h)
{
    struct sconn *s = h->data;
    if (--s->closes_pending > 0) {
        return;
    }
    tls_conn_free(s->tls);
    if (s->z) {
        inflateEnd(&s->zin);
        deflateEnd(&s->zout);
    }
    free(s);
}

static void s_close(struct sconn *s)
{
    if (s->closing) {
        return;
    }
    s->closing = true;
    for (int i = 0; i < MAX_SCONN; i++) {
        if (s->srv->conns[i] == s) {
            s->srv->conns[i] = NULL;
        }
    }
    s->closes_pending = 2;
    uv_close((uv_handle_t *)&s->tcp, s_on_sconn_closed);
    uv_close((uv_handle_t *)&s->tick, s_on_sconn_closed);
}

static void s_on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

static void s_bye(struct sconn *s)
{
    s_send(s, "BYE\r\n", 5);
    if (s->tls != NULL) {
        tls_conn_shutdown(s->tls);
        s_flush_tls(s);
    }
    uv_shutdown(&s->shutdown_req, (uv_stream_t *)&s->tcp, s_on_shutdown);
}

/* Plaintext (after TLS and before DEFLATE) from the client. */
static void s_plain(struct sconn *s, const char *data, size_t len)
{
    struct server *srv = s->srv;
    if (srv->flags & SF_SILENT) {
        return;
    }
    if (!s->z) {
        srv->plain_in += len;
        if (srv->flags & SF_ECHO) {
            s_send(s, data, len);
        }
        return;
    }
    char out[16384];
    s->zin.next_in = (Bytef *)data;
    s->zin.avail_in = (uInt)len;
    do {
        s->zin.next_out = (Bytef *)out;
        s->zin.avail_out = sizeof(out);
        int r = inflate(&s->zin, Z_SYNC_FLUSH);
        assert_true(r == Z_OK || r == Z_BUF_ERROR);
        size_t n = sizeof(out) - s->zin.avail_out;
        srv->plain_in += n;
        if (n > 0 && (srv->flags & SF_ECHO)) {
            s_send(s, out, n);
        }
    } while (s->zin.avail_out == 0 || s->zin.avail_in > 0);
}

static void s_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = xmalloc(suggested);
    buf->len = suggested;
}

static void s_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct sconn *s = st->data;
    if (nread < 0) {
        s_close(s);
    }
    if (nread <= 0 || s->closing) {
        free(buf->base);
        return;
    }
    s->srv->raw_in += (uint64_t)nread;
    if (s->tls == NULL) {
        s_plain(s, buf->base, (size_t)nread);
        free(buf->base);
        return;
    }
    assert_int_equal(tls_conn_feed(s->tls, buf->base, (size_t)nread), 0);
    free(buf->base);
    if (!tls_conn_established(s->tls)) {
        int r = tls_conn_handshake(s->tls);
        s_flush_tls(s);
        if (r < 0) {
            s_close(s);
            return;
        }
        if (r == 0) {
            return;
        }
        if (s->srv->flags & SF_BYE) {
            s_bye(s);
        }
    }
    char plain[16384];
    ssize_t n;
    while ((n = tls_conn_read(s->tls, plain, sizeof(plain))) > 0) {
        s_flush_tls(s);
        s_plain(s, plain, (size_t)n);
    }
    s_flush_tls(s);
    if (n < 0) {
        s_close(s);
    }
}

static void s_on_tick(uv_timer_t *t)
{
    struct sconn *s = t->data;
    s_send(s, "x", 1);
    if (++s->ticks == 4) {
        uv_timer_stop(t);
    }
}

static void s_on_connection(uv_stream_t *l, int status)
{
    struct server *srv = l->data;
    assert_int_equal(status, 0);
    struct sconn *s = xcalloc(1, sizeof(*s));
    s->srv = srv;
    uv_tcp_init(srv->loop, &s->tcp);
    uv_timer_init(srv->loop, &s->tick);
    s->tcp.data = s;
    s->tick.data = s;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&s->tcp), 0);
    int slot = -1;
    for (int i = 0; i < MAX_SCONN; i++) {
        if (srv->conns[i] == NULL) {
            slot = i;
            break;
        }
    }
    assert_true(slot >= 0);
    srv->conns[slot] = s;
    if (srv->greeting != NULL) {
        s_write_raw(s, srv->greeting,
                    srv->greeting_len ? srv->greeting_len : strlen(srv->greeting));
    }
    if (srv->flags & (SF_TLS | SF_STARTTLS)) {
        char *err = NULL;
        assert_int_equal(tls_conn_new(srv->ctx, NULL, &s->tls, &err), 0);
    }
    if (srv->flags & SF_DEFLATE) {
        s->z = true;
        assert_int_equal(inflateInit2(&s->zin, -15), Z_OK);
        assert_int_equal(
            deflateInit2(&s->zout, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY),
            Z_OK);
    }
    if (srv->flags & SF_TICK) {
        uv_timer_start(&s->tick, s_on_tick, 100, 100);
    }
    if ((srv->flags & SF_BYE) && s->tls == NULL) {
        s_bye(s);
    }
    if (srv->flags & SF_HANGUP) {
        uv_shutdown(&s->shutdown_req, (uv_stream_t *)&s->tcp, s_on_shutdown);
    }
    uv_read_start((uv_stream_t *)&s->tcp, s_alloc, s_on_read);
}

static void server_start(struct server *srv, uv_loop_t *loop, unsigned flags, const char *cert,
                         const char *key)
{
    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->flags = flags;
    if (flags & (SF_TLS | SF_STARTTLS)) {
        char *err = NULL;
        if (tls_ctx_new_server(cert, key, &srv->ctx, &err) < 0) {
            fail_msg("server context: %s", err);
        }
    }
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    assert_int_equal(uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&srv->listener, 8, s_on_connection), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
    srv->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void server_stop(struct server *srv)
{
    if (srv->stopped) {
        return;
    }
    srv->stopped = true;
    uv_close((uv_handle_t *)&srv->listener, NULL);
    for (int i = 0; i < MAX_SCONN; i++) {
        if (srv->conns[i] != NULL) {
            s_close(srv->conns[i]);
        }
    }
}

/* ---- the client side harness ------------------------------------------- */

struct harness {
    uv_loop_t loop;
    struct server srv;
    bool have_server;
    uv_timer_t guard;
    uv_timer_t aux; /* for pause/resume and similar */
    bool finished;
    bool guard_fired;

    struct net_conn *c;
    bool closed;
    int connects, tls_ups, drains, errors, datas;
    int err;
    char msg[512];
    struct sbuf got;
    bool paused;
    uint64_t t_start, t_connect, t_error;

    /* Per test behaviour. */
    void (*on_connect)(void);
    void (*on_data)(const char *data, size_t len);
    void (*on_tls)(void);
    void (*on_drain)(void);
    bool keep_data; /* append received data to got */
};

static struct harness H;

static void finish(void)
{
    if (H.finished) {
        return;
    }
    H.finished = true;
    if (H.c != NULL && !H.closed) {
        net_close(H.c);
        H.closed = true;
    }
    if (H.have_server) {
        server_stop(&H.srv);
    }
    uv_close((uv_handle_t *)&H.guard, NULL);
    uv_close((uv_handle_t *)&H.aux, NULL);
}

static void on_guard(uv_timer_t *t)
{
    (void)t;
    H.guard_fired = true;
    finish();
}

static void cb_connect(struct net_conn *c, void *arg)
{
    assert_ptr_equal(c, H.c);
    assert_ptr_equal(arg, &H);
    assert_false(H.closed);
    H.connects++;
    H.t_connect = uv_now(&H.loop);
    if (H.on_connect != NULL) {
        H.on_connect();
    }
}

static void cb_data(struct net_conn *c, const char *data, size_t len, void *arg)
{
    assert_ptr_equal(c, H.c);
    (void)arg;
    assert_false(H.closed);
    assert_false(H.paused);
    assert_true(len > 0);
    H.datas++;
    if (H.keep_data) {
        sbuf_add(&H.got, data, len);
    }
    if (H.on_data != NULL) {
        H.on_data(data, len);
    }
}

static void cb_tls(struct net_conn *c, void *arg)
{
    (void)c;
    (void)arg;
    assert_false(H.closed);
    H.tls_ups++;
    if (H.on_tls != NULL) {
        H.on_tls();
    }
}

static void cb_drain(struct net_conn *c, void *arg)
{
    (void)c;
    (void)arg;
    assert_false(H.closed);
    H.drains++;
    if (H.on_drain != NULL) {
        H.on_drain();
    }
}

/* Every test closes the connection from inside on_error. */
static void cb_error(struct net_conn *c, int err, const char *msg, void *arg)
{
    (void)arg;
    assert_ptr_equal(c, H.c);
    assert_false(H.closed);
    H.errors++;
    H.err = err;
    H.t_error = uv_now(&H.loop);
    snprintf(H.msg, sizeof(H.msg), "%s", msg);
    finish();
}

static const struct net_cb CB = {
    .on_connect = cb_connect,
    .on_data = cb_data,
    .on_tls = cb_tls,
    .on_drain = cb_drain,
    .on_error = cb_error,
};

static void harness_init(unsigned server_flags, const char *cert, const char *key)
{
    memset(&H, 0, sizeof(H));
    assert_int_equal(uv_loop_init(&H.loop), 0);
    uv_timer_init(&H.loop, &H.guard);
    uv_timer_init(&H.loop, &H.aux);
    uv_timer_start(&H.guard, on_guard, 10000, 0);
    H.keep_data = true;
    H.t_start = uv_now(&H.loop);
    if (server_flags != 0) {
        server_start(&H.srv, &H.loop, server_flags, cert != NULL ? cert : tc.server_cert,
                     key != NULL ? key : tc.server_key);
        H.have_server = true;
    }
}

static void harness_connect(struct net_opts *o)
{
    if (o->host == NULL) {
        o->host = "127.0.0.1";
    }
    if (o->port == 0) {
        o->port = H.srv.port;
    }
    assert_int_equal(net_connect(&H.loop, o, &CB, &H, &H.c), 0);
    assert_non_null(H.c);
}

/* Runs the loop dry and checks that it closes clean. */
static void harness_run(void)
{
    assert_int_equal(uv_run(&H.loop, UV_RUN_DEFAULT), 0);
    assert_true(H.finished);
    assert_false(H.guard_fired);
    assert_int_equal(uv_loop_close(&H.loop), 0);
    if (H.srv.ctx != NULL) {
        tls_ctx_free(H.srv.ctx);
    }
}

static void harness_done(void)
{
    sbuf_free(&H.got);
}

static void write_str(const char *s)
{
    assert_int_equal(net_write(H.c, s, strlen(s)), 0);
}

static bool got_is(const char *s)
{
    return H.got.len == strlen(s) && memcmp(H.got.buf, s, H.got.len) == 0;
}

/* ---- plaintext echo ---------------------------------------------------- */

static void echo_connect(void)
{
    write_str("a1 NOOP\r\n");
    net_expect(H.c, true);
}

static void echo_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (got_is("a1 NOOP\r\n")) {
        finish();
    }
}

static void early_echo_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (got_is("a0 a1 NOOP\r\n")) {
        finish();
    }
}

static void test_plain_echo(void **state)
{
    (void)state;
    harness_init(SF_ECHO, NULL, NULL);
    H.on_connect = echo_connect;
    H.on_data = early_echo_data;
    struct net_opts o = {.tls = NET_TLS_NONE};
    harness_connect(&o);
    /* Written before the connection is up: held until it is. */
    write_str("a0 ");
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_int_equal(H.connects, 1);
    assert_int_equal(H.got.len, 12);
    assert_memory_equal(H.got.buf, "a0 a1 NOOP\r\n", 12);
    harness_done();
}

static void peer_check_connect(void)
{
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%u", H.srv.port);
    assert_string_equal(net_peer_address(H.c), want);
    assert_null(net_tls_version(H.c));
    assert_null(net_tls_fingerprint(H.c));
    assert_false(net_compressed(H.c));
    assert_true(net_peer_is_local(H.c));
    echo_connect();
}

static void test_addr_is_local(void **state)
{
    (void)state;
    static const struct {
        const char *ip;
        bool local;
    } cases[] = {
        {"127.0.0.1", true},    {"127.8.9.10", true},      {"10.1.2.3", true},
        {"172.16.0.1", true},   {"172.31.255.254", true},  {"172.32.0.1", false},
        {"172.15.0.1", false},  {"192.168.1.1", true},     {"192.169.1.1", false},
        {"169.254.3.4", true},  {"8.8.8.8", false},        {"::1", true},
        {"::2", false},         {"fd12:3456::1", true},    {"fc00::1", true},
        {"fe80::1", true},      {"febf::1", true},         {"fec0::1", false},
        {"2001:db8::1", false}, {"::ffff:10.0.0.1", true}, {"::ffff:1.2.3.4", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        if (strchr(cases[i].ip, ':') != NULL) {
            assert_int_equal(uv_ip6_addr(cases[i].ip, 993, (struct sockaddr_in6 *)&ss), 0);
        } else {
            assert_int_equal(uv_ip4_addr(cases[i].ip, 993, (struct sockaddr_in *)&ss), 0);
        }
        if (net_addr_is_local((const struct sockaddr *)&ss) != cases[i].local) {
            fail_msg("%s: expected %s", cases[i].ip, cases[i].local ? "local" : "remote");
        }
    }
}

static void peer_check_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (got_is("a1 NOOP\r\n")) {
        assert_int_equal(net_bytes_in(H.c), 9);
        assert_int_equal(net_bytes_out(H.c), 9);
        finish();
    }
}

/* "localhost" may resolve to ::1 before 127.0.0.1 while the server only
 * listens on IPv4: every address is tried until one connects. */
static void test_localhost_every_address(void **state)
{
    (void)state;
    harness_init(SF_ECHO, NULL, NULL);
    H.on_connect = peer_check_connect;
    H.on_data = peer_check_data;
    struct net_opts o = {.host = "localhost"};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_true(got_is("a1 NOOP\r\n"));
    harness_done();
}

/* A listener whose accept queue is full: connecting to it hangs (SYNs are
 * dropped), as an unreachable address does. */
struct hanging {
    int listener;
    int fill[3];
    uint16_t port;
};

static void hanging_close(struct hanging *h)
{
    for (int i = 0; i < 3; i++) {
        close(h->fill[i]);
    }
    close(h->listener);
}

static void hanging_open(struct hanging *h)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(l >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(l, 0), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &len), 0);
    for (int i = 0; i < 3; i++) {
        h->fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(h->fill[i] >= 0);
        (void)connect(h->fill[i], (struct sockaddr *)&a, sizeof(a));
    }
    usleep(100 * 1000);
    h->port = ntohs(a.sin_port);
    h->listener = l;
}

static void loopback_addr(struct sockaddr_storage *ss, uint16_t port)
{
    memset(ss, 0, sizeof(*ss));
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)ss), 0);
}

/* The first address never answers: after its share of the time the next
 * one is tried, long before the whole connect timeout. */
static void test_hanging_address_skipped(void **state)
{
    (void)state;
    struct hanging hang;
    hanging_open(&hang);
    harness_init(SF_ECHO, NULL, NULL);
    H.on_connect = peer_check_connect;
    H.on_data = peer_check_data;
    struct sockaddr_storage addrs[2];
    loopback_addr(&addrs[0], hang.port);
    loopback_addr(&addrs[1], H.srv.port);
    struct net_opts o = {.host = "imap.example.test",
                         .connect_timeout_ms = 8000,
                         .attempt_timeout_ms = 300,
                         .addrs = addrs,
                         .naddrs = 2};
    uint64_t t0 = uv_hrtime();
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_int_equal(H.connects, 1);
    assert_true(got_is("a1 NOOP\r\n"));
    /* Well inside the guard (10 s) and the connect timeout (8 s). */
    assert_true(uv_hrtime() - t0 < 5000ull * 1000 * 1000);
    harness_done();
    hanging_close(&hang);
}

/* Three unreachable addresses before a working one, with a per-address
 * limit longer than the whole connect timeout: each gets an equal share of
 * the time left, so the fourth is still reached. */
static void test_unreachable_addresses_share_the_time(void **state)
{
    (void)state;
    struct hanging hang[3];
    for (int i = 0; i < 3; i++) {
        hanging_open(&hang[i]);
    }
    harness_init(SF_ECHO, NULL, NULL);
    H.on_connect = peer_check_connect;
    H.on_data = peer_check_data;
    struct sockaddr_storage addrs[4];
    for (int i = 0; i < 3; i++) {
        loopback_addr(&addrs[i], hang[i].port);
    }
    loopback_addr(&addrs[3], H.srv.port);
    struct net_opts o = {.host = "imap.example.test",
                         .connect_timeout_ms = 2400,
                         .attempt_timeout_ms = 10000,
                         .addrs = addrs,
                         .naddrs = 4};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_int_equal(H.connects, 1);
    assert_true(got_is("a1 NOOP\r\n"));
    harness_done();
    for (int i = 0; i < 3; i++) {
        hanging_close(&hang[i]);
    }
}

/* No address answers: the error names every one of them. */
static void test_every_address_hangs(void **state)
{
    (void)state;
    struct hanging ha, hb;
    hanging_open(&ha);
    hanging_open(&hb);
    uint16_t pa = ha.port, pb = hb.port;
    harness_init(0, NULL, NULL);
    struct sockaddr_storage addrs[2];
    loopback_addr(&addrs[0], pa);
    loopback_addr(&addrs[1], pb);
    struct net_opts o = {.host = "imap.example.test",
                         .port = 993,
                         .connect_timeout_ms = 1200,
                         .attempt_timeout_ms = 300,
                         .addrs = addrs,
                         .naddrs = 2};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.connects, 0);
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, NET_ETIMEOUT);
    char want[256];
    snprintf(want, sizeof(want),
             "imap.example.test:993: timed out after 1.2 s connecting (tried 2 addresses: "
             "127.0.0.1:%u: no answer within 0.3 s; 127.0.0.1:%u: no answer)",
             pa, pb);
    assert_string_equal(H.msg, want);
    harness_done();
    hanging_close(&ha);
    hanging_close(&hb);
}

/* ---- implicit TLS ------------------------------------------------------ */

static void tls_check_connect(void)
{
    assert_string_equal(net_tls_version(H.c), "TLSv1.3");
    assert_non_null(net_tls_cipher(H.c));
    assert_string_equal(net_tls_fingerprint(H.c), tc.server_fp);
    echo_connect();
}

static void test_tls_echo(void **state)
{
    (void)state;
    harness_init(SF_TLS | SF_ECHO, NULL, NULL);
    H.on_connect = tls_check_connect;
    H.on_data = echo_data;
    struct net_opts o = {.host = "localhost", .tls = NET_TLS_IMPLICIT, .ca_file = tc.ca};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_int_equal(H.connects, 1);
    assert_true(got_is("a1 NOOP\r\n"));
    harness_done();
}

static void run_tls_failure(const char *cert, const char *key, const char *fingerprint,
                            int want_err, const char *text)
{
    harness_init(SF_TLS | SF_ECHO, cert, key);
    char want[512];
    snprintf(want, sizeof(want), "localhost:%u: %s", H.srv.port, text);
    struct net_opts o = {
        .host = "localhost", .tls = NET_TLS_IMPLICIT, .ca_file = tc.ca, .fingerprint = fingerprint};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.connects, 0);
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, want_err);
    assert_string_equal(H.msg, want);
    harness_done();
}

static void test_tls_verify_failures(void **state)
{
    (void)state;
    run_tls_failure(tc.expired_cert, tc.expired_key, NULL, NET_EVERIFY,
                    "certificate verification failed: certificate has expired");
    run_tls_failure(tc.wrong_cert, tc.wrong_key, NULL, NET_EVERIFY,
                    "certificate verification failed: hostname mismatch");
    run_tls_failure(tc.untrusted_cert, tc.untrusted_key, NULL, NET_EVERIFY,
                    "certificate verification failed: unable to get local issuer certificate");
}

static void test_tls_pin_mismatch(void **state)
{
    (void)state;
    char text[300];
    snprintf(text, sizeof(text),
             "certificate fingerprint %s does not match the configured tls_fingerprint %s",
             tc.server_fp, tc.other_fp);
    run_tls_failure(tc.server_cert, tc.server_key, tc.other_fp, NET_EPIN, text);
}

/* ---- STARTTLS ---------------------------------------------------------- */

static void starttls_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (H.tls_ups == 0 && got_is("OK\r\n")) {
        assert_null(net_tls_version(H.c));
        sbuf_reset(&H.got);
        assert_int_equal(net_start_tls(H.c, false), 0);
        /* Queued until TLS is up, then sent encrypted. */
        write_str("a2 CAPABILITY\r\n");
        return;
    }
    if (H.tls_ups == 1 && got_is("a2 CAPABILITY\r\n")) {
        finish();
    }
}

static void starttls_up(void)
{
    assert_string_equal(net_tls_fingerprint(H.c), tc.server_fp);
    assert_non_null(net_tls_version(H.c));
    assert_int_equal(H.got.len, 0);
}

static void test_starttls(void **state)
{
    (void)state;
    harness_init(SF_STARTTLS | SF_ECHO, NULL, NULL);
    H.srv.greeting = "OK\r\n";
    H.on_data = starttls_data;
    H.on_tls = starttls_up;
    struct net_opts o = {.host = "localhost", .tls = NET_TLS_LATER, .ca_file = tc.ca};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_int_equal(H.connects, 1);
    assert_int_equal(H.tls_ups, 1);
    assert_true(got_is("a2 CAPABILITY\r\n"));
    harness_done();
}

static int inject_rc;

static void inject_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    /* The owner's parser consumed "OK\r\n" and still holds "EVIL\r\n". */
    if (got_is("OK\r\nEVIL\r\n")) {
        inject_rc = net_start_tls(H.c, true);
    }
}

static void test_starttls_injection(void **state)
{
    (void)state;
    harness_init(SF_STARTTLS | SF_ECHO, NULL, NULL);
    H.srv.greeting = "OK\r\nEVIL\r\n";
    H.on_data = inject_data;
    inject_rc = 0;
    struct net_opts o = {.host = "localhost", .tls = NET_TLS_LATER, .ca_file = tc.ca};
    harness_connect(&o);
    harness_run();
    assert_int_equal(inject_rc, NET_EINJECT);
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, NET_EINJECT);
    assert_int_equal(H.tls_ups, 0);
    char want[256];
    snprintf(want, sizeof(want),
             "localhost:%u: the server sent data right after its answer to STARTTLS, before TLS "
             "started (possible injection attack)",
             H.srv.port);
    assert_string_equal(H.msg, want);
    harness_done();
}

static void starttls_silent_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (got_is("OK\r\n")) {
        assert_int_equal(net_start_tls(H.c, false), 0);
        /* Only once: a second call is a usage error. */
        assert_int_equal(net_start_tls(H.c, false), -EINVAL);
    }
}

static void test_starttls_handshake_timeout(void **state)
{
    (void)state;
    /* The server says OK and then ignores the ClientHello. */
    harness_init(SF_SILENT, NULL, NULL);
    H.srv.greeting = "OK\r\n";
    H.on_data = starttls_silent_data;
    struct net_opts o = {.tls = NET_TLS_LATER, .ca_file = tc.ca, .connect_timeout_ms = 200};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.connects, 1);
    assert_int_equal(H.tls_ups, 0);
    assert_int_equal(H.err, NET_ETIMEOUT);
    char want[128];
    snprintf(want, sizeof(want), "127.0.0.1:%u: timed out after 0.2 s in the TLS handshake",
             H.srv.port);
    assert_string_equal(H.msg, want);
    harness_done();
}

/* ---- connection failures ----------------------------------------------- */

static void test_connection_refused(void **state)
{
    (void)state;
    /* A port that was just free: bind, learn it, close. */
    harness_init(0, NULL, NULL);
    uv_tcp_t probe;
    uv_tcp_init(&H.loop, &probe);
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_bind(&probe, (const struct sockaddr *)&addr, 0), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&probe, (struct sockaddr *)&ss, &len);
    uint16_t port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&probe, NULL);

    struct net_opts o = {.port = port};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.connects, 0);
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, UV_ECONNREFUSED);
    char want[128];
    snprintf(want, sizeof(want), "127.0.0.1:%u: connection refused", port);
    assert_string_equal(H.msg, want);
    harness_done();
}

static void test_connect_timeout_in_tls(void **state)
{
    (void)state;
    /* TCP is accepted, the ClientHello is read and never answered. */
    harness_init(SF_SILENT, NULL, NULL);
    struct net_opts o = {.tls = NET_TLS_IMPLICIT, .ca_file = tc.ca, .connect_timeout_ms = 300};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.connects, 0);
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, NET_ETIMEOUT);
    char want[128];
    snprintf(want, sizeof(want), "127.0.0.1:%u: timed out after 0.3 s connecting", H.srv.port);
    assert_string_equal(H.msg, want);
    assert_true(H.t_error - H.t_start >= 290);
    assert_true(H.srv.raw_in > 0); /* the ClientHello went out */
    harness_done();
}

static void test_bad_ca_file(void **state)
{
    (void)state;
    harness_init(SF_TLS, NULL, NULL);
    struct net_opts o = {.tls = NET_TLS_IMPLICIT, .ca_file = "/nonexistent/ca.pem"};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, NET_ETLS);
    char want[128];
    snprintf(want, sizeof(want),
             "127.0.0.1:%u: cannot load ca_file /nonexistent/ca.pem: ", H.srv.port);
    assert_true(strncmp(H.msg, want, strlen(want)) == 0);
    harness_done();
}

/* Implicit TLS against a server that greets in plain text (a plaintext or
 * STARTTLS port): NET_ENOTTLS, with what the server said and which setting
 * to change, the port named after the protocol its greeting shows. */
static void run_plaintext_port(unsigned flags, const char *greeting, const char *text)
{
    harness_init(flags, NULL, NULL);
    H.srv.greeting = greeting;
    struct net_opts o = {.host = "localhost", .tls = NET_TLS_IMPLICIT, .ca_file = tc.ca};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.connects, 0);
    assert_int_equal(H.datas, 0); /* the greeting never reaches the owner */
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, NET_ENOTTLS);
    assert_true(net_err_permanent(H.err));
    char want[512];
    snprintf(want, sizeof(want), "localhost:%u: %s", H.srv.port, text);
    assert_string_equal(H.msg, want);
    harness_done();
}

static void test_tls_plaintext_port(void **state)
{
    (void)state;
    run_plaintext_port(SF_SILENT, "* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
                       "the server answered in plain text, not TLS (\"* OK [CAPABILITY "
                       "IMAP4rev1 STARTTLS] ready\"): this looks like a plaintext IMAP port, "
                       "which starts TLS with STARTTLS; use tls: starttls, or the port where IMAP "
                       "speaks TLS from the start (usually 993)");
    run_plaintext_port(SF_SILENT, "+OK POP3 ready\r\n",
                       "the server answered in plain text, not TLS (\"+OK POP3 ready\"): this "
                       "looks like a plaintext POP3 port, which starts TLS with STARTTLS; use "
                       "tls: starttls, or the port where POP3 speaks TLS from the start (usually "
                       "995)");
    run_plaintext_port(SF_SILENT, "SSH-2.0-OpenSSH_9.2\r\n",
                       "the server answered in plain text, not TLS (\"SSH-2.0-OpenSSH_9.2\"): "
                       "this port does not speak TLS; check port and tls");
    /* Three bytes and the end of the stream: too little for OpenSSL to
     * fail on, still recognised as a plaintext server rather than a
     * connection closed during the handshake. */
    run_plaintext_port(SF_SILENT | SF_HANGUP, "+OK",
                       "the server answered in plain text, not TLS (\"+OK\"): this looks like a "
                       "plaintext POP3 port, which starts TLS with STARTTLS; use tls: starttls, "
                       "or the port where POP3 speaks TLS from the start (usually 995)");
}

/* A TLS server that hangs up in the handshake without a byte is still a
 * closed connection (temporary), not a plaintext port. */
static void test_tls_hangup_is_not_plaintext(void **state)
{
    (void)state;
    harness_init(SF_SILENT | SF_HANGUP, NULL, NULL);
    struct net_opts o = {.host = "localhost", .tls = NET_TLS_IMPLICIT, .ca_file = tc.ca};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.err, NET_ECLOSED);
    assert_false(net_err_permanent(H.err));
    char want[256];
    snprintf(want, sizeof(want),
             "localhost:%u: connection closed by the server during the TLS handshake", H.srv.port);
    assert_string_equal(H.msg, want);
    harness_done();
}

/* Which failures trying again later cannot mend: those that need the user
 * (a certificate, a pin, a port or tls setting, an attack on STARTTLS). */
static void test_err_permanent(void **state)
{
    (void)state;
    assert_true(net_err_permanent(NET_EVERIFY));
    assert_true(net_err_permanent(NET_EPIN));
    assert_true(net_err_permanent(NET_ENOTTLS));
    assert_true(net_err_permanent(NET_EINJECT));
    assert_false(net_err_permanent(NET_ETLS));
    assert_false(net_err_permanent(NET_ETIMEOUT));
    assert_false(net_err_permanent(NET_ECLOSED));
    assert_false(net_err_permanent(NET_ECOMPRESS));
    assert_false(net_err_permanent(UV_ECONNREFUSED));
    assert_false(net_err_permanent(UV_ECONNRESET));
    assert_false(net_err_permanent(UV_EAI_NONAME));
    assert_false(net_err_permanent(-ENOSPC));
    assert_false(net_err_permanent(0));
    /* The TLS layer's own codes never reach an owner: net translates them. */
    assert_false(net_err_permanent(TLS_EVERIFY));
}

static void test_close_right_away(void **state)
{
    (void)state;
    /* net_close while the resolver request is outstanding: no callback,
     * and the loop still closes clean. */
    harness_init(SF_ECHO, NULL, NULL);
    struct net_opts o = {.host = "localhost"};
    harness_connect(&o);
    finish();
    harness_run();
    assert_int_equal(H.connects + H.errors + H.datas, 0);
    harness_done();
}

/* ---- TCP keepalive ------------------------------------------------------ */

struct sockopts {
    int keepalive, idle, intvl, cnt, user_timeout;
};

static int getopt_int(int fd, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof(v);
    assert_int_equal(getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

static void read_sockopts(int fd, struct sockopts *o)
{
    o->keepalive = getopt_int(fd, SOL_SOCKET, SO_KEEPALIVE);
    o->idle = getopt_int(fd, IPPROTO_TCP, TCP_KEEPIDLE);
    o->intvl = getopt_int(fd, IPPROTO_TCP, TCP_KEEPINTVL);
    o->cnt = getopt_int(fd, IPPROTO_TCP, TCP_KEEPCNT);
    o->user_timeout = getopt_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT);
}

/* net keeps its socket to itself, so the test finds it the way a sysadmin
 * would: the one descriptor of this process connected to the server's
 * port (the server's own sockets have the client's port as their peer). */
static int client_fd(void)
{
    int found = -1;
    for (int fd = 3; fd < 1024; fd++) {
        struct sockaddr_in peer;
        socklen_t len = sizeof(peer);
        if (getpeername(fd, (struct sockaddr *)&peer, &len) != 0 || peer.sin_family != AF_INET) {
            continue;
        }
        if (ntohs(peer.sin_port) == H.srv.port) {
            assert_int_equal(found, -1);
            found = fd;
        }
    }
    assert_int_not_equal(found, -1);
    return found;
}

static struct sockopts ka_got;

static void keepalive_connect(void)
{
    read_sockopts(client_fd(), &ka_got);
    finish();
}

static void test_keepalive_defaults(void **state)
{
    (void)state;
    /* A connection opened with no keepalive options set gets SO_KEEPALIVE,
     * 60 s idle, 15 s interval, 3 probes and a 90 s user timeout. */
    harness_init(SF_ECHO, NULL, NULL);
    H.on_connect = keepalive_connect;
    struct net_opts o = {0};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.connects, 1);
    assert_int_equal(ka_got.keepalive, 1);
    assert_int_equal(ka_got.idle, 60);
    assert_int_equal(ka_got.intvl, 15);
    assert_int_equal(ka_got.cnt, 3);
    assert_int_equal(ka_got.user_timeout, 90000);
    harness_done();
}

static void test_keepalive_options(void **state)
{
    (void)state;
    /* Values given are set as given; NET_KEEPALIVE_OS leaves the value a
     * fresh socket of this system has. */
    int fresh = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fresh >= 0);
    struct sockopts os;
    read_sockopts(fresh, &os);
    close(fresh);

    harness_init(SF_ECHO, NULL, NULL);
    H.on_connect = keepalive_connect;
    struct net_opts o = {.keepalive_idle_s = 7,
                         .keepalive_intvl_s = NET_KEEPALIVE_OS,
                         .keepalive_count = 5,
                         .user_timeout_ms = NET_KEEPALIVE_OS};
    harness_connect(&o);
    harness_run();
    assert_int_equal(ka_got.keepalive, 1);
    assert_int_equal(ka_got.idle, 7);
    assert_int_equal(ka_got.intvl, os.intvl);
    assert_int_equal(ka_got.cnt, 5);
    assert_int_equal(ka_got.user_timeout, os.user_timeout);
    harness_done();
}

/* ---- timeouts and peer close ------------------------------------------- */

static void idle_connect(void)
{
    net_expect(H.c, true);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    /* The server sends a byte every 100 ms four times: each resets the
     * 250 ms inactivity timer, which fires only after the last. */
    harness_init(SF_TICK, NULL, NULL);
    H.on_connect = idle_connect;
    struct net_opts o = {.idle_timeout_ms = 250};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, NET_ETIMEOUT);
    assert_true(got_is("xxxx"));
    char want[128];
    snprintf(want, sizeof(want), "127.0.0.1:%u: timed out after 0.25 s waiting for the server",
             H.srv.port);
    assert_string_equal(H.msg, want);
    uint64_t after = H.t_error - H.t_connect;
    assert_true(after >= 600);
    assert_true(after < 400 + 1000);
    harness_done();
}

/* A server that accepts and never sends a byte (a TLS-only port reached
 * with tls: starttls or none waits for a ClientHello): still a temporary
 * timeout, but the message names the likely mistake. A server that sent
 * something and then went quiet gets no such hint (test_idle_timeout). */
static void test_silent_server_hint(void **state)
{
    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        harness_init(SF_SILENT, NULL, NULL);
        H.on_connect = idle_connect;
        struct net_opts o = {.tls = mode == 0 ? NET_TLS_LATER : NET_TLS_NONE,
                             .ca_file = tc.ca,
                             .idle_timeout_ms = 200};
        harness_connect(&o);
        harness_run();
        assert_int_equal(H.connects, 1);
        assert_int_equal(H.errors, 1);
        assert_int_equal(H.err, NET_ETIMEOUT);
        assert_false(net_err_permanent(H.err));
        char want[512];
        snprintf(want, sizeof(want),
                 "127.0.0.1:%u: timed out after 0.2 s waiting for the server; the server sent "
                 "nothing at all, not even a greeting: if this port speaks TLS from the start "
                 "(usually 993 for IMAP, 995 for POP3), use tls: implicit",
                 H.srv.port);
        assert_string_equal(H.msg, want);
        harness_done();
    }
}

static void disarm_connect(void)
{
    net_expect(H.c, true);
    net_expect(H.c, false);
}

static void on_aux_finish(uv_timer_t *t)
{
    (void)t;
    finish();
}

static void test_idle_disarmed(void **state)
{
    (void)state;
    harness_init(SF_SILENT, NULL, NULL);
    H.on_connect = disarm_connect;
    uv_timer_start(&H.aux, on_aux_finish, 400, 0);
    struct net_opts o = {.idle_timeout_ms = 100};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_int_equal(H.connects, 1);
    harness_done();
}

static void pause_resume(uv_timer_t *t)
{
    (void)t;
    H.paused = false;
    net_resume(H.c);
    /* Resuming twice is harmless. */
    net_resume(H.c);
}

static void pause_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (H.datas == 1) {
        /* cb_data asserts that nothing arrives while paused. */
        H.paused = true;
        net_pause(H.c);
        uv_timer_start(&H.aux, pause_resume, 250, 0);
    }
    if (got_is("xxxx")) {
        finish();
    }
}

static void test_pause_resume(void **state)
{
    (void)state;
    harness_init(SF_TICK, NULL, NULL);
    H.on_data = pause_data;
    struct net_opts o = {0};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_true(got_is("xxxx"));
    harness_done();
}

/* ---- input slices --------------------------------------------------------- */

/* The owner's work on input delivered in one loop iteration is bounded
 * (sync/net.c NET_SLICE_MS): a burst of input at once, with 1.5 ms of work
 * per piece, never goes to the owner in more than a few pieces per
 * iteration, arrives whole and in order, and a pause in the middle holds. */
#define SLICE_TOTAL ((size_t)1 << 21)
#define SLICE_PIECE 16384

static struct {
    uv_prepare_t prep;
    uint64_t iter, last_iter;
    size_t iter_bytes, max_iter_bytes, iters_with_data;
    char *sent;
    bool pause_once, paused_done;
} SL;

static void slice_prepare(uv_prepare_t *h)
{
    (void)h;
    SL.iter++;
}

static void slice_connect(void)
{
    assert_int_equal(net_write(H.c, SL.sent, SLICE_TOTAL), 0);
    net_expect(H.c, true);
}

static void slice_resume(uv_timer_t *t)
{
    (void)t;
    H.paused = false;
    net_resume(H.c);
}

static void slice_data(const char *data, size_t len)
{
    (void)data;
    if (SL.iter != SL.last_iter || SL.iters_with_data == 0) {
        SL.last_iter = SL.iter;
        SL.iter_bytes = 0;
        SL.iters_with_data++;
    }
    SL.iter_bytes += len;
    if (SL.iter_bytes > SL.max_iter_bytes) {
        SL.max_iter_bytes = SL.iter_bytes;
    }
    usleep(1500); /* work per piece, as a file opened per small message */
    if (SL.pause_once && !SL.paused_done && H.got.len > SLICE_TOTAL / 2) {
        SL.paused_done = true;
        H.paused = true; /* cb_data asserts that nothing arrives meanwhile */
        net_pause(H.c);
        uv_timer_start(&H.aux, slice_resume, 30, 0);
    }
    if (H.got.len >= SLICE_TOTAL) {
        finish();
    }
}

static void run_slices(unsigned flags, bool pause)
{
    memset(&SL, 0, sizeof(SL));
    SL.pause_once = pause;
    SL.sent = xmalloc(SLICE_TOTAL);
    for (size_t i = 0; i < SLICE_TOTAL; i++) {
        SL.sent[i] = (char)('a' + (i * 7 + i / 4093) % 26);
    }
    harness_init(flags | SF_ECHO, NULL, NULL);
    uv_prepare_init(&H.loop, &SL.prep);
    uv_prepare_start(&SL.prep, slice_prepare);
    uv_unref((uv_handle_t *)&SL.prep);
    H.on_connect = slice_connect;
    H.on_data = slice_data;
    struct net_opts o = {.tls = NET_TLS_NONE};
    if (flags & SF_TLS) {
        o.host = "localhost";
        o.tls = NET_TLS_IMPLICIT;
        o.ca_file = tc.ca;
    }
    harness_connect(&o);
    assert_int_equal(uv_run(&H.loop, UV_RUN_DEFAULT), 0);
    uv_close((uv_handle_t *)&SL.prep, NULL);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_int_equal(H.got.len, SLICE_TOTAL);
    assert_memory_equal(H.got.buf, SL.sent, SLICE_TOTAL);
    /* 4 ms per iteration: the third piece of 1.5 ms spends it. */
    assert_true(SL.max_iter_bytes <= 3 * SLICE_PIECE);
    assert_true(SL.iters_with_data >= SLICE_TOTAL / (3 * SLICE_PIECE));
    if (pause) {
        assert_true(SL.paused_done);
    }
    free(SL.sent);
    harness_done();
}

static void test_input_slices_plain(void **state)
{
    (void)state;
    run_slices(0, false);
    run_slices(0, true);
}

static void test_input_slices_tls(void **state)
{
    (void)state;
    run_slices(SF_TLS, false);
    run_slices(SF_TLS, true);
}

/* Bytes after the server's answer to STARTTLS in the same read are refused
 * as injected, also when the answer ends exactly where a piece of input
 * handed to the owner ends (the rest of the read not delivered yet). */
static int inj2_rc = 1;
static char inj2_greet[16384 + 16];

static void inj2_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (H.got.len >= 4 && memcmp(H.got.buf + H.got.len - 4, "OK\r\n", 4) == 0 && inj2_rc == 1) {
        /* The owner's parser holds nothing past the OK. */
        inj2_rc = net_start_tls(H.c, false);
    }
}

static void inj2_up(void)
{
    finish();
}

static void test_starttls_injection_at_piece_end(void **state)
{
    (void)state;
    inj2_rc = 1;
    memset(inj2_greet, 'x', 16378);
    memcpy(inj2_greet + 16378, "\r\nOK\r\nEVIL\r\n", 12);
    inj2_greet[16390] = 0;
    harness_init(SF_STARTTLS | SF_ECHO, NULL, NULL);
    H.srv.greeting = inj2_greet;
    H.on_data = inj2_data;
    H.on_tls = inj2_up;
    struct net_opts o = {.host = "localhost", .tls = NET_TLS_LATER, .ca_file = tc.ca};
    harness_connect(&o);
    harness_run();
    assert_int_equal(inj2_rc, NET_EINJECT);
    assert_int_equal(H.tls_ups, 0);
    assert_int_equal(H.errors, 1);
    harness_done();
}

/* Compressed bytes that follow the answer to COMPRESS in the same read go
 * through inflate, also past the end of the piece that held the answer. */
static char cz_greet[16384 + 256];
static int cz_state;

static void cz_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (cz_state == 0 && H.got.len == 16384) {
        assert_int_equal(net_start_compress(H.c), 0);
        cz_state = 1;
        sbuf_reset(&H.got);
        return;
    }
    if (cz_state == 1) {
        cz_state = 2;
        finish();
    }
}

static void test_compress_after_piece_end(void **state)
{
    (void)state;
    cz_state = 0;
    memset(cz_greet, 'x', 16378);
    memcpy(cz_greet + 16378, "\r\nOK\r\n", 6);
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(
        deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = (Bytef *)"HELLO\r\n";
    z.avail_in = 7;
    z.next_out = (Bytef *)cz_greet + 16384;
    z.avail_out = 200;
    deflate(&z, Z_SYNC_FLUSH);
    size_t len = 16384 + (200 - z.avail_out);
    deflateEnd(&z);
    harness_init(SF_ECHO, NULL, NULL);
    H.srv.greeting = cz_greet;
    H.srv.greeting_len = len;
    H.on_data = cz_data;
    struct net_opts o = {.tls = NET_TLS_NONE};
    harness_connect(&o);
    harness_run();
    assert_int_equal(cz_state, 2);
    assert_int_equal(H.got.len, 7);
    assert_memory_equal(H.got.buf, "HELLO\r\n", 7);
    harness_done();
}

static void test_peer_close(void **state)
{
    (void)state;
    harness_init(SF_BYE, NULL, NULL);
    struct net_opts o = {0};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, NET_ECLOSED);
    assert_true(got_is("BYE\r\n"));
    char want[128];
    snprintf(want, sizeof(want), "127.0.0.1:%u: connection closed by the server", H.srv.port);
    assert_string_equal(H.msg, want);
    harness_done();

    /* The same over TLS, where the server also sends close_notify. */
    harness_init(SF_BYE | SF_TLS, NULL, NULL);
    struct net_opts t = {.host = "localhost", .tls = NET_TLS_IMPLICIT, .ca_file = tc.ca};
    harness_connect(&t);
    harness_run();
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, NET_ECLOSED);
    assert_true(got_is("BYE\r\n"));
    snprintf(want, sizeof(want), "localhost:%u: connection closed by the server", H.srv.port);
    assert_string_equal(H.msg, want);
    harness_done();
}

/* ---- DEFLATE ----------------------------------------------------------- */

static struct sbuf text;

static void make_text(void)
{
    sbuf_reset(&text);
    for (int i = 0; text.len < 200000; i++) {
        sbuf_addf(&text, "Line %d of a message body that compresses rather well.\r\n", i);
    }
}

static void deflate_connect(void)
{
    assert_int_equal(net_start_compress(H.c), 0);
    assert_int_equal(net_start_compress(H.c), -EALREADY);
    assert_true(net_compressed(H.c));
    /* In pieces, each flushed on its own. */
    size_t half = text.len / 2;
    assert_int_equal(net_write(H.c, text.buf, half), 0);
    assert_int_equal(net_write(H.c, text.buf + half, text.len - half), 0);
}

static void deflate_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (H.got.len >= text.len) {
        /* Compressed on the wire: far fewer bytes than delivered. */
        assert_true(net_bytes_in(H.c) < text.len / 4);
        assert_true(net_bytes_out(H.c) < text.len / 4);
        finish();
    }
}

static void run_deflate(unsigned flags)
{
    make_text();
    harness_init(SF_DEFLATE | SF_ECHO | flags, NULL, NULL);
    H.on_connect = deflate_connect;
    H.on_data = deflate_data;
    struct net_opts o = {.host = "localhost",
                         .tls = (flags & SF_TLS) ? NET_TLS_IMPLICIT : NET_TLS_NONE,
                         .ca_file = tc.ca};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_int_equal(H.got.len, text.len);
    assert_memory_equal(H.got.buf, text.buf, text.len);
    assert_int_equal(H.srv.plain_in, text.len);
    /* Compressed on the wire in both directions. */
    assert_true(H.srv.raw_in < text.len / 4);
    harness_done();
}

static void test_deflate(void **state)
{
    (void)state;
    run_deflate(0);
    run_deflate(SF_TLS);
    sbuf_free(&text);
}

static void test_deflate_garbage(void **state)
{
    (void)state;
    /* Compression starts in on_connect, before the server's bytes (sent at
     * accept time) are read: they must inflate, and do not. */
    harness_init(SF_ECHO, NULL, NULL);
    H.srv.greeting = "\xff\xff\xff\xff not deflate";
    H.on_connect = deflate_connect;
    make_text();
    struct net_opts o = {0};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, NET_ECOMPRESS);
    assert_int_equal(H.datas, 0);
    char want[128];
    snprintf(want, sizeof(want), "127.0.0.1:%u: bad compressed data from the server: ", H.srv.port);
    assert_true(strncmp(H.msg, want, strlen(want)) == 0);
    harness_done();
    sbuf_free(&text);
}

static void bye_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
}

/* A server that ends its DEFLATE stream: what came before the end reaches
 * the owner, then the connection fails. */
static void test_deflate_stream_end(void **state)
{
    (void)state;
    static unsigned char z[256];
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    assert_int_equal(
        deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    static const char bye[] = "* BYE shutting down\r\n";
    zs.next_in = (Bytef *)bye;
    zs.avail_in = sizeof(bye) - 1;
    zs.next_out = z;
    zs.avail_out = sizeof(z);
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    size_t zlen = sizeof(z) - zs.avail_out;
    deflateEnd(&zs);

    harness_init(SF_ECHO, NULL, NULL);
    H.srv.greeting = (const char *)z;
    H.srv.greeting_len = zlen;
    H.on_connect = deflate_connect;
    H.on_data = bye_data;
    make_text();
    struct net_opts o = {0};
    harness_connect(&o);
    harness_run();
    assert_true(got_is(bye));
    assert_int_equal(H.errors, 1);
    assert_int_equal(H.err, NET_ECOMPRESS);
    char want[128];
    snprintf(want, sizeof(want), "127.0.0.1:%u: the server ended the compressed stream",
             H.srv.port);
    assert_string_equal(H.msg, want);
    harness_done();
    sbuf_free(&text);
}

/* ---- backpressure ------------------------------------------------------ */

static size_t bp_sent;
static int bp_refusals;

static void bp_fill(void)
{
    static char chunk[16384];
    memset(chunk, 'q', sizeof(chunk));
    for (;;) {
        int r = net_write(H.c, chunk, sizeof(chunk));
        if (r == -ENOBUFS) {
            bp_refusals++;
            return;
        }
        assert_int_equal(r, 0);
        bp_sent += sizeof(chunk);
    }
}

static void bp_drain(void)
{
    /* Below half of 64 KiB again: writing works. */
    assert_int_equal(net_write(H.c, "end", 3), 0);
    bp_sent += 3;
}

static void bp_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (H.got.len == bp_sent && H.drains == 1) {
        finish();
    }
}

static void test_backpressure(void **state)
{
    (void)state;
    bp_sent = 0;
    bp_refusals = 0;
    harness_init(SF_ECHO, NULL, NULL);
    H.on_connect = bp_fill;
    H.on_drain = bp_drain;
    H.on_data = bp_data;
    struct net_opts o = {.max_write_queue = 65536};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_int_equal(bp_refusals, 1);
    assert_int_equal(H.drains, 1);
    assert_int_equal(bp_sent, 4 * 16384 + 3);
    assert_int_equal(H.got.len, bp_sent);
    assert_memory_equal(H.got.buf + bp_sent - 3, "end", 3);
    harness_done();
}

/* ---- 20 MB through TLS, with a pause in the middle --------------------- */

#define BIG_CHUNK 251000 /* a multiple of the pattern period 251 */
#define BIG_TOTAL ((size_t)BIG_CHUNK * 84)

static char *big_pattern;
static size_t big_tx, big_rx;
static bool big_paused_once;

static void big_fill(void)
{
    while (big_tx < BIG_TOTAL) {
        int r = net_write(H.c, big_pattern, BIG_CHUNK);
        if (r == -ENOBUFS) {
            return;
        }
        assert_int_equal(r, 0);
        big_tx += BIG_CHUNK;
    }
}

static void big_resume(uv_timer_t *t)
{
    (void)t;
    H.paused = false;
    net_resume(H.c);
}

static void big_data(const char *data, size_t len)
{
    size_t off = big_rx % 251;
    assert_true(len <= 65536);
    if (memcmp(data, big_pattern + off, len) != 0) {
        fail_msg("byte mismatch near offset %zu", big_rx);
    }
    big_rx += len;
    if (!big_paused_once && big_rx >= BIG_TOTAL / 4) {
        big_paused_once = true;
        H.paused = true;
        net_pause(H.c);
        uv_timer_start(&H.aux, big_resume, 50, 0);
    }
    if (big_rx == BIG_TOTAL) {
        assert_true(net_bytes_in(H.c) > BIG_TOTAL);
        assert_true(net_bytes_out(H.c) > BIG_TOTAL);
        finish();
    }
}

static void test_big_tls_transfer(void **state)
{
    (void)state;
    big_pattern = xmalloc(BIG_CHUNK);
    for (size_t i = 0; i < BIG_CHUNK; i++) {
        big_pattern[i] = (char)(i % 251);
    }
    big_tx = big_rx = 0;
    big_paused_once = false;
    harness_init(SF_TLS | SF_ECHO, NULL, NULL);
    H.keep_data = false;
    H.on_connect = big_fill;
    H.on_drain = big_fill;
    H.on_data = big_data;
    struct net_opts o = {
        .host = "localhost", .tls = NET_TLS_IMPLICIT, .ca_file = tc.ca, .max_write_queue = 1 << 20};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 0);
    assert_true(big_paused_once);
    assert_int_equal(big_tx, BIG_TOTAL);
    assert_int_equal(big_rx, BIG_TOTAL);
    assert_true(H.drains > 0);
    free(big_pattern);
    harness_done();
}

/* ---- closing from inside callbacks ------------------------------------- */

static void close_in_data_connect(void)
{
    /* Enough for several TLS records and several on_data calls. */
    static char lots[200000];
    memset(lots, 'z', sizeof(lots));
    assert_int_equal(net_write(H.c, lots, sizeof(lots)), 0);
}

static void close_in_data(const char *data, size_t len)
{
    (void)data;
    (void)len;
    net_close(H.c);
    H.closed = true;
    finish();
}

static void test_close_inside_on_data(void **state)
{
    (void)state;
    harness_init(SF_TLS | SF_ECHO, NULL, NULL);
    H.on_connect = close_in_data_connect;
    H.on_data = close_in_data;
    struct net_opts o = {.host = "localhost", .tls = NET_TLS_IMPLICIT, .ca_file = tc.ca};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.datas, 1);
    assert_int_equal(H.errors, 0);
    harness_done();

    /* The same with a plaintext, compressed link. */
    make_text();
    harness_init(SF_DEFLATE | SF_ECHO, NULL, NULL);
    H.on_connect = deflate_connect;
    H.on_data = close_in_data;
    struct net_opts p = {0};
    harness_connect(&p);
    harness_run();
    assert_int_equal(H.datas, 1);
    assert_int_equal(H.errors, 0);
    harness_done();
    sbuf_free(&text);
}

static void test_close_inside_on_error(void **state)
{
    (void)state;
    /* cb_error always closes from inside on_error; here the error comes
     * while a large write is still queued on the socket. */
    harness_init(SF_BYE, NULL, NULL);
    H.on_connect = close_in_data_connect;
    struct net_opts o = {0};
    harness_connect(&o);
    harness_run();
    assert_int_equal(H.errors, 1);
    assert_true(H.err == NET_ECLOSED || H.err == UV_ECONNRESET || H.err == UV_EPIPE);
    harness_done();
}

static int setup_group(void **state)
{
    (void)state;
    return testcerts_create(&tc);
}

static int teardown_group(void **state)
{
    (void)state;
    testcerts_destroy(&tc);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_echo),
        cmocka_unit_test(test_addr_is_local),
        cmocka_unit_test(test_localhost_every_address),
        cmocka_unit_test(test_hanging_address_skipped),
        cmocka_unit_test(test_every_address_hangs),
        cmocka_unit_test(test_unreachable_addresses_share_the_time),
        cmocka_unit_test(test_tls_echo),
        cmocka_unit_test(test_tls_verify_failures),
        cmocka_unit_test(test_tls_pin_mismatch),
        cmocka_unit_test(test_starttls),
        cmocka_unit_test(test_starttls_injection),
        cmocka_unit_test(test_starttls_handshake_timeout),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_connect_timeout_in_tls),
        cmocka_unit_test(test_bad_ca_file),
        cmocka_unit_test(test_close_right_away),
        cmocka_unit_test(test_keepalive_defaults),
        cmocka_unit_test(test_keepalive_options),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_idle_disarmed),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_peer_close),
        cmocka_unit_test(test_deflate),
        cmocka_unit_test(test_deflate_garbage),
        cmocka_unit_test(test_deflate_stream_end),
        cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_big_tls_transfer),
        cmocka_unit_test(test_close_inside_on_data),
        cmocka_unit_test(test_close_inside_on_error),
        cmocka_unit_test(test_tls_plaintext_port),
        cmocka_unit_test(test_tls_hangup_is_not_plaintext),
        cmocka_unit_test(test_err_permanent),
        cmocka_unit_test(test_silent_server_hint),
        cmocka_unit_test(test_input_slices_plain),
        cmocka_unit_test(test_input_slices_tls),
        cmocka_unit_test(test_starttls_injection_at_piece_end),
        cmocka_unit_test(test_compress_after_piece_end),
    };
    return cmocka_run_group_tests(tests, setup_group, teardown_group);
}
