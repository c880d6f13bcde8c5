/* Client connections on the libuv loop; see net.h for the contract.
 *
 * Byte path, inbound:  uv_tcp read -> [TLS decrypt] -> [inflate] -> on_data
 *            outbound: net_write -> [deflate] -> [TLS encrypt] -> uv_write
 *
 * The bytes between compression and TLS ("stage 2") are what is held in
 * pending_out while the connection cannot send yet (still connecting, or a
 * TLS handshake in progress), so that compression state and record order
 * never depend on when the handshake finishes.
 *
 * Lifetime: every libuv handle (timers, the defer idle handle, the current
 * TCP handle and any earlier one still closing) and an outstanding
 * getaddrinfo request each hold a reference on the connection. net_close
 * closes the handles and cancels the request; the memory goes with the last
 * reference. Write requests finish (with UV_ECANCELED at worst) before their
 * TCP handle's close callback, so the TCP reference covers them.
 *
 * Re-entrancy: the owner may call any net_* function, net_close included,
 * from inside any callback. Every loop that calls the owner re-checks the
 * state afterwards and stops as soon as the connection failed or closed. */
#include "sync/net.h"

#include "core/util.h"
#include "sync/tls.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define NET_DEFAULT_CONNECT_MS 30000u
#define NET_DEFAULT_ATTEMPT_MS 10000u
#define NET_DEFAULT_IDLE_MS 60000u
#define NET_DEFAULT_MAX_WQ ((size_t)8 << 20)
#define NET_DEFAULT_KEEPIDLE_S 60u
#define NET_DEFAULT_KEEPINTVL_S 15u
#define NET_DEFAULT_KEEPCNT 3u
#define NET_DEFAULT_USER_TIMEOUT_MS 90000u
#define NET_READ_BUF 65536
#define NET_PLAIN_BUF 16384
#define NET_Z_BUF 16384
/* Input is delivered to the owner in slices: once one loop iteration has
 * worked this long, reading stops and what is buffered (in OpenSSL, in the
 * inflate input, or read in plain text) is delivered from the next
 * iteration. A download of many small messages (a file opened per message)
 * would otherwise hold the loop for the whole 64 KiB read and the up to 32
 * reads libuv makes in a row: tens of milliseconds in which no other
 * connection, timer or account of the loop runs (issue 11). */
#define NET_SLICE_MS 4

enum net_state {
    NS_RESOLVING = 0,
    NS_CONNECTING, /* TCP connect to one of the addresses */
    NS_HANDSHAKE,  /* TLS handshake, implicit or after net_start_tls */
    NS_OPEN,       /* plaintext flows (possibly over TLS) */
    NS_FAILED,     /* error recorded; on_error delivered or pending */
};

struct net_write_req {
    uv_write_t req;
    struct net_conn *c;
    size_t len;
    char data[];
};

struct net_conn {
    uv_loop_t *loop;
    struct net_cb cb;
    void *arg;

    /* Options, copied. */
    char *host;     /* as given, for messages */
    char *hostport; /* "host:port" or "[v6]:port", prefix of every message */
    char *resolve_host;
    uint16_t port;
    enum net_tls_mode tls_mode;
    char *fingerprint;
    bool insecure;
    unsigned connect_ms;
    uint64_t connect_start; /* loop time net_connect started the clock */
    unsigned idle_ms;       /* the deadline in force (idle_conf_ms or shorter) */
    unsigned idle_conf_ms;  /* the configured one */
    size_t max_wq;
    unsigned ka_idle_s; /* keepalive options resolved, or NET_KEEPALIVE_OS */
    unsigned ka_intvl_s;
    unsigned ka_count;
    unsigned user_timeout_ms;

    enum net_state state;
    bool closing; /* net_close was called */
    bool error_reported;
    int err;
    char *errmsg;
    bool paused;
    bool expecting;
    bool reading;
    bool want_drain;
    bool need_pump;    /* resume: deliver what is buffered, from the loop */
    bool yielded;      /* the iteration's slice is spent: not reading, see yield() */
    bool yield_polled; /* a poll for I/O came since the yield: deliver at the next check */
    bool in_read;      /* inside on_read (the loop's poll phase) */
    bool starttls;     /* the TLS handshake was started by net_start_tls */
    uint64_t last_rx;  /* loop time of the last byte, or of net_expect(true) */

    unsigned refs;
    uv_timer_t connect_timer;
    uv_timer_t idle_timer;
    uv_idle_t defer;
    uv_check_t slice; /* delivers what a yield held, after the next poll */
    uv_getaddrinfo_t gai;
    bool gai_active;
    /* The addresses to try, in order (resolver order, or net_opts.addrs). */
    struct sockaddr_storage *alist;
    size_t nalist;
    size_t anext;
    unsigned attempt_ms;     /* the most one address may take */
    unsigned cur_attempt_ms; /* what the current address was given */
    uv_timer_t attempt_timer;
    unsigned attempts;
    struct sbuf attempt_log; /* "addr: reason; ..." for the final message */
    int last_connect_err;
    char *last_connect_text;
    uv_tcp_t
        *tcp; /* current handle (in a struct tcp_attempt); NULL before connect and after close */
    char peer[INET6_ADDRSTRLEN + 8];
    bool peer_local; /* see net_peer_is_local */

    struct tls_ctx *tls_ctx;
    char *ca_file; /* for the context, built once the first connect is on its way */
    struct tls_conn *tls;

    bool compress;
    z_stream zin;
    z_stream zout;
    struct sbuf zpend; /* compressed input not yet inflated (paused) */
    size_t zpend_off;
    struct sbuf rpend; /* plain input not yet delivered, from rpend_off on */
    size_t rpend_off;
    bool zin_more; /* inflate may hold output that did not fit last time */

    struct sbuf pending_out; /* stage-2 bytes waiting until the link is up */
    size_t inflight;         /* bytes inside uv_write requests */
    uint64_t bytes_in;
    uint64_t bytes_out;

    char *rbuf;  /* ciphertext or plaintext from the socket */
    char *pbuf;  /* plaintext out of TLS */
    char *zibuf; /* inflate output */
    char *zobuf; /* deflate output */
};

static void pump_input(struct net_conn *c);
static void flush_pending(struct net_conn *c);
static void on_defer(uv_idle_t *h);
static void update_reading(struct net_conn *c);

static void format_seconds(char *buf, size_t len, unsigned ms)
{
    snprintf(buf, len, "%g s", ms / 1000.0);
}

static void conn_free(struct net_conn *c)
{
    free(c->alist);
    tls_conn_free(c->tls);
    tls_ctx_free(c->tls_ctx);
    free(c->ca_file);
    if (c->compress) {
        inflateEnd(&c->zin);
        deflateEnd(&c->zout);
    }
    sbuf_free(&c->zpend);
    sbuf_free(&c->rpend);
    sbuf_free(&c->pending_out);
    sbuf_free(&c->attempt_log);
    free(c->last_connect_text);
    free(c->errmsg);
    free(c->host);
    free(c->hostport);
    free(c->resolve_host);
    free(c->fingerprint);
    free(c->rbuf);
    free(c->pbuf);
    free(c->zibuf);
    free(c->zobuf);
    free(c);
}

static void unref(struct net_conn *c)
{
    if (--c->refs == 0) {
        conn_free(c);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    unref(h->data);
}

/* One connection attempt: the handle and its connect request live and die
 * together. When the handle is closed while connecting, libuv calls the
 * connect callback (UV_ECANCELED) before the close callback, so the request
 * is done with by the time on_tcp_closed frees both. */
struct tcp_attempt {
    uv_tcp_t tcp; /* first: the handle pointer is the attempt pointer */
    uv_connect_t req;
};

static void on_tcp_closed(uv_handle_t *h)
{
    struct net_conn *c = h->data;
    free(h);
    unref(c);
}

static void close_tcp(struct net_conn *c)
{
    if (c->tcp != NULL) {
        uv_close((uv_handle_t *)c->tcp, on_tcp_closed);
        c->tcp = NULL;
        c->reading = false;
    }
}

static void schedule(struct net_conn *c)
{
    if (!c->closing) {
        uv_idle_start(&c->defer, on_defer);
    }
}

static size_t queued(const struct net_conn *c)
{
    return c->pending_out.len + c->inflight;
}

/* Records a fatal error, stops all I/O and timers, and arranges for
 * on_error to be called from the loop. The handles stay open until the
 * owner calls net_close. Only the first error counts. */
static void fail(struct net_conn *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct net_conn *c, int err, const char *fmt, ...)
{
    if (c->closing || c->state == NS_FAILED) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *text = xvasprintf(fmt, ap);
    va_end(ap);
    c->errmsg = xasprintf("%s: %s", c->hostport, text);
    free(text);
    c->err = err;
    c->state = NS_FAILED;
    if (c->tcp != NULL && c->reading) {
        uv_read_stop((uv_stream_t *)c->tcp);
        c->reading = false;
    }
    uv_timer_stop(&c->connect_timer);
    uv_timer_stop(&c->attempt_timer);
    uv_timer_stop(&c->idle_timer);
    if (c->gai_active) {
        uv_cancel((uv_req_t *)&c->gai);
    }
    schedule(c);
}

bool net_err_permanent(int err)
{
    return err == NET_EVERIFY || err == NET_EPIN || err == NET_ENOTTLS || err == NET_EINJECT;
}

/* The server spoke plain text where the TLS handshake was due: the port
 * or the tls setting is wrong, so the message says which of them to change.
 * The greeting tells an IMAP server ("* OK") from a POP3 one ("+OK"). */
static void fail_not_tls(struct net_conn *c)
{
    const char *sample = tls_conn_plaintext(c->tls);
    char *said = xasprintf("the server answered in plain text, not TLS (\"%s\")",
                           sample != NULL ? sample : "");
    if (c->starttls) {
        fail(c, NET_ENOTTLS, "%s, after agreeing to start TLS", said);
        free(said);
        return;
    }
    const char *proto = NULL;
    unsigned tls_port = 0;
    if (sample != NULL && strncmp(sample, "* ", 2) == 0) {
        proto = "IMAP";
        tls_port = 993;
    } else if (sample != NULL && strncmp(sample, "+OK", 3) == 0) {
        proto = "POP3";
        tls_port = 995;
    }
    if (proto == NULL) {
        fail(c, NET_ENOTTLS, "%s: this port does not speak TLS; check port and tls", said);
    } else if (c->port == tls_port) {
        fail(c, NET_ENOTTLS,
             "%s: this server speaks %s in plain text on port %u, where TLS is usual; "
             "use tls: starttls",
             said, proto, tls_port);
    } else {
        fail(c, NET_ENOTTLS,
             "%s: this looks like a plaintext %s port, which starts TLS with STARTTLS; use "
             "tls: starttls, or the port where %s speaks TLS from the start (usually %u)",
             said, proto, proto, tls_port);
    }
    free(said);
}

static void fail_tls(struct net_conn *c, int r)
{
    int err;
    switch (r) {
    case TLS_ENOTTLS:
        fail_not_tls(c);
        return;
    case TLS_EVERIFY:
        err = NET_EVERIFY;
        break;
    case TLS_EPIN:
        err = NET_EPIN;
        break;
    case TLS_ECLOSED:
        fail(c, NET_ECLOSED, "connection closed by the server");
        return;
    default:
        err = NET_ETLS;
        break;
    }
    const char *text = tls_conn_error(c->tls);
    fail(c, err, "%s", text != NULL ? text : "TLS error");
}

static void on_defer(uv_idle_t *h)
{
    struct net_conn *c = h->data;
    if (!c->yielded || c->closing || c->state == NS_FAILED) {
        uv_idle_stop(h);
    }
    if (c->closing) {
        return;
    }
    if (c->state == NS_FAILED) {
        if (!c->error_reported) {
            c->error_reported = true;
            c->cb.on_error(c, c->err, c->errmsg, c->arg);
        }
        return;
    }
    if (c->need_pump && !c->yielded) {
        /* (While yielded, on_slice delivers.) */
        c->need_pump = false;
        pump_input(c);
    }
}

/* ---- timers ------------------------------------------------------------ */

static void on_connect_timeout(uv_timer_t *h)
{
    struct net_conn *c = h->data;
    char secs[32];
    format_seconds(secs, sizeof(secs), c->connect_ms);
    if (c->starttls) {
        fail(c, NET_ETIMEOUT, "timed out after %s in the TLS handshake", secs);
    } else if (c->attempts > 1 && c->state == NS_CONNECTING && c->tcp != NULL) {
        /* Say what became of every address, the last one included. */
        sbuf_addf(&c->attempt_log, "; %s: no answer", c->peer);
        fail(c, NET_ETIMEOUT, "timed out after %s connecting (tried %u addresses: %s)", secs,
             c->attempts, c->attempt_log.buf);
    } else {
        fail(c, NET_ETIMEOUT, "timed out after %s connecting", secs);
    }
}

/* The idle timer is armed only while the owner expects an answer and the
 * link is open. Rather than restarting a timer for every read, reads only
 * note the time; the timer re-arms itself for the remainder when it fires
 * early. */
static void on_idle_timeout(uv_timer_t *h)
{
    struct net_conn *c = h->data;
    uint64_t now = uv_now(c->loop);
    uint64_t elapsed = now - c->last_rx;
    if (elapsed < c->idle_ms) {
        uv_timer_start(&c->idle_timer, on_idle_timeout, c->idle_ms - elapsed, 0);
        return;
    }
    char secs[32];
    format_seconds(secs, sizeof(secs), c->idle_ms);
    if (c->tls == NULL && c->bytes_in == 0) {
        /* IMAP and POP3 servers greet first, in plain text unless the port
         * speaks TLS from the start; such a port waits for a ClientHello
         * and is silent. Still a timeout (a hung server is silent too), but
         * the likely mistake is named. */
        fail(c, NET_ETIMEOUT,
             "timed out after %s waiting for the server; the server sent nothing at all, not "
             "even a greeting: if this port speaks TLS from the start (usually 993 for IMAP, "
             "995 for POP3), use tls: implicit",
             secs);
        return;
    }
    fail(c, NET_ETIMEOUT, "timed out after %s waiting for the server", secs);
}

static void update_idle_timer(struct net_conn *c)
{
    if (c->expecting && c->state == NS_OPEN && !c->closing) {
        if (!uv_is_active((uv_handle_t *)&c->idle_timer)) {
            uint64_t elapsed = uv_now(c->loop) - c->last_rx;
            uint64_t left = elapsed < c->idle_ms ? c->idle_ms - elapsed : 0;
            uv_timer_start(&c->idle_timer, on_idle_timeout, left, 0);
        }
    } else {
        uv_timer_stop(&c->idle_timer);
    }
}

/* ---- writing ----------------------------------------------------------- */

static void on_written(uv_write_t *req, int status)
{
    struct net_write_req *w = (struct net_write_req *)req;
    struct net_conn *c = w->c;
    c->inflight -= w->len;
    if (status == 0) {
        c->bytes_out += w->len;
    }
    free(w);
    if (c->closing || c->state == NS_FAILED) {
        return;
    }
    if (status < 0) {
        fail(c, status, "%s", uv_strerror(status));
        return;
    }
    if (c->want_drain && queued(c) <= c->max_wq / 2) {
        c->want_drain = false;
        if (c->cb.on_drain != NULL) {
            c->cb.on_drain(c, c->arg);
        }
    }
}

/* Hands a filled request to libuv, which keeps it (and its bytes) until
 * on_written. */
static void write_req(struct net_conn *c, struct net_write_req *w)
{
    if (c->tcp == NULL) {
        free(w);
        return;
    }
    w->c = c;
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)w->len);
    c->inflight += w->len;
    int r = uv_write(&w->req, (uv_stream_t *)c->tcp, &buf, 1, on_written);
    if (r < 0) {
        c->inflight -= w->len;
        free(w);
        fail(c, r, "%s", uv_strerror(r));
    }
}

static void write_wire(struct net_conn *c, const void *data, size_t len)
{
    while (len > 0 && c->state != NS_FAILED) {
        /* uv_buf_t lengths are unsigned int. */
        size_t n = len > (1u << 30) ? (1u << 30) : len;
        struct net_write_req *w = xmalloc(sizeof(*w) + n);
        w->len = n;
        memcpy(w->data, data, n);
        write_req(c, w);
        data = (const char *)data + n;
        len -= n;
    }
}

/* Moves whatever TLS produced onto the wire. Called after every SSL
 * operation: a read can produce output too (TLS 1.3 key updates, alerts). */
static void flush_tls(struct net_conn *c)
{
    size_t n;
    while (c->tcp != NULL && (n = tls_conn_out_pending(c->tls)) > 0) {
        struct net_write_req *w = xmalloc(sizeof(*w) + n);
        w->len = tls_conn_take_out(c->tls, w->data, n);
        if (w->len == 0) {
            free(w);
            break;
        }
        write_req(c, w);
    }
}

/* Sends stage-2 bytes now if the link is up and nothing older is waiting;
 * otherwise queues them behind what is waiting. */
static void send_stage2(struct net_conn *c, const void *data, size_t len)
{
    if (c->state != NS_OPEN || c->pending_out.len > 0) {
        sbuf_add(&c->pending_out, data, len);
        return;
    }
    if (c->tls == NULL) {
        write_wire(c, data, len);
        return;
    }
    ssize_t n = tls_conn_write(c->tls, data, len);
    flush_tls(c);
    if (n < 0) {
        fail_tls(c, (int)n);
    } else if (n == 0) {
        /* The TLS layer wants input first; keep the bytes for later. */
        sbuf_add(&c->pending_out, data, len);
    }
}

static void flush_pending(struct net_conn *c)
{
    if (c->state != NS_OPEN || c->pending_out.len == 0) {
        return;
    }
    if (c->tls == NULL) {
        write_wire(c, c->pending_out.buf, c->pending_out.len);
        sbuf_reset(&c->pending_out);
        return;
    }
    ssize_t n = tls_conn_write(c->tls, c->pending_out.buf, c->pending_out.len);
    flush_tls(c);
    if (n < 0) {
        fail_tls(c, (int)n);
    } else if (n > 0) {
        sbuf_reset(&c->pending_out);
    }
}

int net_write(struct net_conn *c, const void *data, size_t len)
{
    if (c == NULL || c->closing) {
        return -EINVAL;
    }
    if (c->state == NS_FAILED) {
        return -EPIPE;
    }
    if (len == 0) {
        return 0;
    }
    /* A single write larger than the whole limit is accepted on an empty
     * queue, or it could never be sent at all. */
    size_t q = queued(c);
    if (q > 0 && q + len > c->max_wq) {
        c->want_drain = true;
        return -ENOBUFS;
    }
    if (!c->compress) {
        send_stage2(c, data, len);
        return 0;
    }
    c->zout.next_in = (Bytef *)data;
    size_t left = len;
    do {
        /* zlib counts in uInt; feed very large writes in slices. */
        uInt slice = left > (1u << 30) ? (1u << 30) : (uInt)left;
        c->zout.avail_in = slice;
        do {
            c->zout.next_out = (Bytef *)c->zobuf;
            c->zout.avail_out = NET_Z_BUF;
            int r = deflate(&c->zout, Z_SYNC_FLUSH);
            if (r != Z_OK && r != Z_BUF_ERROR) {
                fail(c, NET_ECOMPRESS, "compression failed: %s",
                     c->zout.msg != NULL ? c->zout.msg : "zlib error");
                return 0;
            }
            size_t n = NET_Z_BUF - c->zout.avail_out;
            if (n > 0) {
                send_stage2(c, c->zobuf, n);
            }
        } while (c->zout.avail_out == 0);
        left -= slice;
    } while (left > 0);
    return 0;
}

/* ---- reading ----------------------------------------------------------- */

/* True once this loop iteration has worked NET_SLICE_MS since it woke up
 * (the loop's time is taken when it wakes from polling). */
static bool slice_spent(const struct net_conn *c)
{
    return uv_hrtime() / 1000000u >= uv_now(c->loop) + NET_SLICE_MS;
}

static void on_slice(uv_check_t *h);

/* Stops reading; what is buffered is delivered in the check phase that
 * follows the loop's next poll for I/O, so that every other connection and
 * timer of the loop gets its turn in between. The idle handle keeps that
 * poll from blocking. */
static void yield(struct net_conn *c)
{
    c->yielded = true;
    /* In the poll phase, the next check is this same iteration's. */
    c->yield_polled = !c->in_read;
    update_reading(c);
    uv_check_start(&c->slice, on_slice);
    uv_idle_start(&c->defer, on_defer);
}

static void on_slice(uv_check_t *h)
{
    struct net_conn *c = h->data;
    if (c->closing) {
        uv_check_stop(h);
        return;
    }
    if (!c->yield_polled) {
        c->yield_polled = true;
        return;
    }
    uv_check_stop(h);
    c->yielded = false;
    if (c->state == NS_FAILED) {
        return; /* on_defer reports it */
    }
    pump_input(c);
    if (!c->yielded && !c->closing && c->state != NS_FAILED) {
        update_reading(c); /* all delivered: read on */
    }
}

static void inflate_pending(struct net_conn *c)
{
    while (c->state == NS_OPEN && !c->closing && !c->paused &&
           (c->zpend_off < c->zpend.len || c->zin_more)) {
        size_t avail = c->zpend.len - c->zpend_off;
        uInt in = avail > (1u << 30) ? (1u << 30) : (uInt)avail;
        c->zin.next_in = (Bytef *)c->zpend.buf + c->zpend_off;
        c->zin.avail_in = in;
        c->zin.next_out = (Bytef *)c->zibuf;
        c->zin.avail_out = NET_Z_BUF;
        int r = inflate(&c->zin, Z_SYNC_FLUSH);
        size_t used = in - c->zin.avail_in;
        size_t produced = NET_Z_BUF - c->zin.avail_out;
        c->zpend_off += used;
        c->zin_more = c->zin.avail_out == 0;
        if (r == Z_STREAM_END) {
            /* What came before the end (a BYE, say) still reaches the
             * owner; nothing may follow it. */
            if (produced > 0) {
                c->cb.on_data(c, c->zibuf, produced, c->arg);
            }
            if (c->state != NS_FAILED && !c->closing) {
                fail(c, NET_ECOMPRESS, "the server ended the compressed stream");
            }
            return;
        }
        if (r != Z_OK && r != Z_BUF_ERROR) {
            fail(c, NET_ECOMPRESS, "bad compressed data from the server: %s",
                 c->zin.msg != NULL ? c->zin.msg : "zlib error");
            return;
        }
        if (produced > 0) {
            c->cb.on_data(c, c->zibuf, produced, c->arg);
            if (c->state == NS_OPEN && !c->closing && !c->paused &&
                (c->zpend_off < c->zpend.len || c->zin_more) && slice_spent(c)) {
                yield(c);
                break;
            }
        } else if (used == 0) {
            c->zin_more = false;
            break;
        }
    }
    if (c->closing) {
        return;
    }
    if (c->zpend_off == c->zpend.len) {
        sbuf_reset(&c->zpend);
        c->zpend_off = 0;
    } else if (c->zpend_off > NET_READ_BUF) {
        memmove(c->zpend.buf, c->zpend.buf + c->zpend_off, c->zpend.len - c->zpend_off);
        c->zpend.len -= c->zpend_off;
        c->zpend_off = 0;
    }
}

/* Delivers what waits in rpend in NET_PLAIN_BUF pieces until the owner
 * pauses or the iteration's slice is spent (at least one piece goes, so
 * that every iteration makes progress). A piece is taken off rpend before
 * it goes, so that while the owner handles it rpend holds exactly what
 * came after it: net_start_tls refuses that as injected, and
 * net_start_compress takes it as compressed. */
static void pump_rpend(struct net_conn *c)
{
    bool first = true;
    while (c->rpend_off < c->rpend.len && c->state == NS_OPEN && !c->closing && !c->paused &&
           !c->compress) {
        if (!first && slice_spent(c)) {
            yield(c);
            break;
        }
        first = false;
        size_t n = c->rpend.len - c->rpend_off;
        if (n > NET_PLAIN_BUF) {
            n = NET_PLAIN_BUF;
        }
        /* The buffer is not reallocated or compacted until this returns. */
        const char *piece = c->rpend.buf + c->rpend_off;
        c->rpend_off += n;
        c->cb.on_data(c, piece, n, c->arg);
    }
    if (c->closing) {
        return;
    }
    if (c->rpend_off >= c->rpend.len) {
        sbuf_reset(&c->rpend);
        c->rpend_off = 0;
    } else if (c->rpend_off > NET_READ_BUF) {
        memmove(c->rpend.buf, c->rpend.buf + c->rpend_off, c->rpend.len - c->rpend_off);
        c->rpend.len -= c->rpend_off;
        c->rpend_off = 0;
    }
}

/* Plaintext from the peer (out of TLS when TLS is on). */
static void deliver(struct net_conn *c, const char *data, size_t len)
{
    if (!c->compress) {
        /* Behind whatever waits: the order is kept. */
        sbuf_add(&c->rpend, data, len);
        pump_rpend(c);
        return;
    }
    sbuf_add(&c->zpend, data, len);
    inflate_pending(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct net_conn *c = h->data;
    (void)suggested;
    /* Every read is consumed before the next one starts, so one buffer per
     * connection suffices. */
    *buf = uv_buf_init(c->rbuf, NET_READ_BUF);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* Reads only while the link needs input: always during a handshake, and
 * otherwise unless the owner paused delivery. */
static void update_reading(struct net_conn *c)
{
    bool want = c->tcp != NULL && !c->closing &&
                (c->state == NS_HANDSHAKE || (c->state == NS_OPEN && !c->paused && !c->yielded));
    if (want && !c->reading) {
        int r = uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read);
        if (r < 0) {
            fail(c, r, "%s", uv_strerror(r));
            return;
        }
        c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)c->tcp);
        c->reading = false;
    }
}

static void handshake_done(struct net_conn *c)
{
    uv_timer_stop(&c->connect_timer);
    c->state = NS_OPEN;
    /* The inactivity clock starts when the link is up, not when the owner
     * first said it expects an answer (that may have been before connecting). */
    c->last_rx = uv_now(c->loop);
    update_reading(c);
    flush_pending(c);
    if (c->state != NS_OPEN) {
        return;
    }
    update_idle_timer(c);
    if (c->starttls) {
        if (c->cb.on_tls != NULL) {
            c->cb.on_tls(c, c->arg);
        }
    } else if (c->cb.on_connect != NULL) {
        c->cb.on_connect(c, c->arg);
    }
}

/* Runs the TLS engine over whatever ciphertext has been fed: finishes the
 * handshake, then decrypts and delivers records until it needs more input
 * or the owner paused, closed, or the link failed. */
static void pump_tls(struct net_conn *c)
{
    if (c->state == NS_HANDSHAKE) {
        int r = tls_conn_handshake(c->tls);
        flush_tls(c);
        if (r < 0) {
            fail_tls(c, r);
            return;
        }
        if (r == 0) {
            return;
        }
        handshake_done(c);
    }
    bool first = true;
    while (c->state == NS_OPEN && !c->closing && !c->paused && !c->yielded) {
        if (c->compress && (c->zpend_off < c->zpend.len || c->zin_more)) {
            inflate_pending(c);
            if (c->state != NS_OPEN || c->closing || c->paused || c->yielded) {
                break;
            }
        }
        if (!c->compress && c->rpend_off < c->rpend.len) {
            /* What a pause or a yield held back goes first. */
            pump_rpend(c);
            if (c->state != NS_OPEN || c->closing || c->paused || c->yielded ||
                c->rpend_off < c->rpend.len) {
                break;
            }
        }
        if (!first && slice_spent(c)) {
            yield(c);
            break;
        }
        first = false;
        ssize_t n = tls_conn_read(c->tls, c->pbuf, NET_PLAIN_BUF);
        flush_tls(c);
        if (n < 0) {
            fail_tls(c, (int)n);
            return;
        }
        if (n == 0) {
            break;
        }
        deliver(c, c->pbuf, (size_t)n);
    }
    /* A write that had to wait for the peer can go now. */
    if (!c->closing) {
        flush_pending(c);
    }
}

static void pump_input(struct net_conn *c)
{
    if (c->closing || c->state == NS_FAILED) {
        return;
    }
    if (c->tls != NULL) {
        pump_tls(c);
    } else if (c->compress && c->state == NS_OPEN) {
        inflate_pending(c);
    } else if (c->state == NS_OPEN) {
        pump_rpend(c);
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct net_conn *c = s->data;
    if (c->closing || c->state == NS_FAILED || nread == 0) {
        return;
    }
    if (nread < 0) {
        if (nread == UV_EOF) {
            if (c->state == NS_HANDSHAKE && tls_conn_plaintext(c->tls) != NULL) {
                /* Too few bytes for OpenSSL to fail on, but plain text. */
                fail_not_tls(c);
            } else if (c->state == NS_HANDSHAKE) {
                fail(c, NET_ECLOSED, "connection closed by the server during the TLS handshake");
            } else {
                fail(c, NET_ECLOSED, "connection closed by the server");
            }
        } else {
            fail(c, (int)nread, "%s", uv_strerror((int)nread));
        }
        return;
    }
    c->bytes_in += (uint64_t)nread;
    c->last_rx = uv_now(c->loop);
    c->in_read = true;
    if (c->tls != NULL) {
        int r = tls_conn_feed(c->tls, buf->base, (size_t)nread);
        if (r < 0) {
            fail_tls(c, r);
        } else {
            pump_tls(c);
        }
    } else {
        deliver(c, buf->base, (size_t)nread);
    }
    c->in_read = false;
}

/* ---- connecting -------------------------------------------------------- */

static int start_tls_engine(struct net_conn *c)
{
    struct tls_conn_opts o = {
        .host = c->host,
        .fingerprint = c->fingerprint,
        .insecure_skip_verify = c->insecure,
    };
    char *err = NULL;
    int r = tls_conn_new(c->tls_ctx, &o, &c->tls, &err);
    if (r < 0) {
        fail(c, NET_ETLS, "%s", err != NULL ? err : "cannot start TLS");
        free(err);
        return r;
    }
    c->state = NS_HANDSHAKE;
    update_reading(c);
    /* Sends the ClientHello; the answer arrives through on_read. */
    pump_tls(c);
    return 0;
}

static void try_next_address(struct net_conn *c);

static void note_attempt_failed(struct net_conn *c, int err, const char *why)
{
    c->last_connect_err = err;
    free(c->last_connect_text);
    c->last_connect_text = xstrdup(why);
    sbuf_addf(&c->attempt_log, "%s%s: %s", c->attempts > 1 ? "; " : "", c->peer, why);
}

/* This address did not accept the connection in its share of the time:
 * give it up for the next one (the connect timer still bounds the whole). */
static void on_attempt_timeout(uv_timer_t *h)
{
    struct net_conn *c = h->data;
    if (c->closing || c->state != NS_CONNECTING || c->tcp == NULL) {
        return;
    }
    char secs[32];
    format_seconds(secs, sizeof(secs), c->cur_attempt_ms);
    char *why = xasprintf("no answer within %s", secs);
    note_attempt_failed(c, NET_ETIMEOUT, why);
    free(why);
    close_tcp(c);
    try_next_address(c);
}

static void set_tcp_option(uv_os_fd_t fd, int level, int name, unsigned value)
{
    if (value == NET_KEEPALIVE_OS) {
        return;
    }
    int v = value > INT_MAX ? INT_MAX : (int)value;
    (void)setsockopt(fd, level, name, &v, sizeof(v));
}

/* Set once the socket is connected: Linux accepts every one of these on a
 * connected socket, and TCP_USER_TIMEOUT set before connect would also cut
 * short the SYN retries, which the attempt timer already bounds. */
static void set_keepalive(struct net_conn *c, uv_tcp_t *tcp)
{
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)tcp, &fd) < 0) {
        return;
    }
    set_tcp_option(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
    set_tcp_option(fd, IPPROTO_TCP, TCP_KEEPIDLE, c->ka_idle_s);
    set_tcp_option(fd, IPPROTO_TCP, TCP_KEEPINTVL, c->ka_intvl_s);
    set_tcp_option(fd, IPPROTO_TCP, TCP_KEEPCNT, c->ka_count);
    set_tcp_option(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, c->user_timeout_ms);
}

static void on_connected(uv_connect_t *req, int status)
{
    uv_tcp_t *tcp = (uv_tcp_t *)req->handle;
    struct net_conn *c = tcp->data;
    if (status == UV_ECANCELED || c->closing || c->state == NS_FAILED) {
        return;
    }
    uv_timer_stop(&c->attempt_timer);
    if (status < 0) {
        note_attempt_failed(c, status, uv_strerror(status));
        close_tcp(c);
        try_next_address(c);
        return;
    }
    /* Keepalive finds a dead peer during long IDLEs behind NATs; nodelay
     * because every write here is a whole command that waits for an
     * answer. Neither failing is a reason to give up the connection. */
    uv_tcp_nodelay(tcp, 1);
    set_keepalive(c, tcp);
    if (c->tls_mode == NET_TLS_IMPLICIT) {
        start_tls_engine(c);
        return;
    }
    uv_timer_stop(&c->connect_timer);
    c->state = NS_OPEN;
    /* The inactivity clock starts when the link is up, not when the owner
     * first said it expects an answer (that may have been before connecting). */
    c->last_rx = uv_now(c->loop);
    update_reading(c);
    flush_pending(c);
    if (c->state != NS_OPEN) {
        return;
    }
    update_idle_timer(c);
    if (c->cb.on_connect != NULL) {
        c->cb.on_connect(c, c->arg);
    }
}

static void format_peer(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        uv_ip6_name(a, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        uv_ip4_name(a, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, ntohs(a->sin_port));
    }
}

static bool ip4_is_local(const uint8_t a[4])
{
    return a[0] == 127 || a[0] == 10 || (a[0] == 172 && (a[1] & 0xf0) == 16) ||
           (a[0] == 192 && a[1] == 168) || (a[0] == 169 && a[1] == 254);
}

bool net_addr_is_local(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        return ip4_is_local((const uint8_t *)&a->sin_addr.s_addr);
    }
    if (sa->sa_family != AF_INET6) {
        return false;
    }
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t loop6[16] = {[15] = 1};
    static const uint8_t mapped[12] = {[10] = 0xff, [11] = 0xff};
    if (memcmp(b, loop6, 16) == 0) {
        return true;
    }
    if (memcmp(b, mapped, 12) == 0) {
        return ip4_is_local(b + 12);
    }
    /* fc00::/7 unique local, fe80::/10 link-local. */
    return (b[0] & 0xfe) == 0xfc || (b[0] == 0xfe && (b[1] & 0xc0) == 0x80);
}

/* Tries the addresses in resolver order (which follows RFC 6724, so IPv6
 * first where it works) until one connects. Each failure is noted; when
 * none is left, the error carries the last reason and the list. */
static void try_next_address(struct net_conn *c)
{
    while (c->anext < c->nalist) {
        const struct sockaddr *sa = (const struct sockaddr *)&c->alist[c->anext++];
        c->attempts++;
        format_peer(sa, c->peer, sizeof(c->peer));
        c->peer_local = net_addr_is_local(sa);
        struct tcp_attempt *at = xmalloc(sizeof(*at));
        uv_tcp_t *tcp = &at->tcp;
        int r = uv_tcp_init(c->loop, tcp);
        if (r < 0) {
            free(at);
            fail(c, r, "%s", uv_strerror(r));
            return;
        }
        tcp->data = c;
        c->refs++;
        c->tcp = tcp;
        r = uv_tcp_connect(&at->req, tcp, sa, on_connected);
        if (r == 0) {
            c->state = NS_CONNECTING;
            if (c->anext < c->nalist) {
                /* An equal share of the time left for each address still to
                 * try, at most attempt_ms: unreachable addresses at the head
                 * of the list cannot use up the time of a working one. */
                uint64_t spent = uv_now(c->loop) - c->connect_start;
                uint64_t left = spent < c->connect_ms ? c->connect_ms - spent : 0;
                uint64_t share = left / (c->nalist - c->anext + 1);
                uint64_t ms = share < c->attempt_ms ? share : c->attempt_ms;
                c->cur_attempt_ms = (unsigned)(ms > 0 ? ms : 1);
                uv_timer_start(&c->attempt_timer, on_attempt_timeout, c->cur_attempt_ms, 0);
            }
            if (c->tls_mode != NET_TLS_NONE && c->tls_ctx == NULL) {
                /* Built while the TCP handshake and the server's accept
                 * (a local Dovecot forks its login process then) run:
                 * OpenSSL 3 takes milliseconds to set up a context, which
                 * this overlaps instead of adding. */
                char *err = NULL;
                if (tls_ctx_new_client(c->ca_file, &c->tls_ctx, &err) < 0) {
                    fail(c, NET_ETLS, "%s", err != NULL ? err : "cannot set up TLS");
                }
                free(err);
            }
            return;
        }
        note_attempt_failed(c, r, uv_strerror(r));
        close_tcp(c);
    }
    c->peer[0] = '\0';
    if (c->attempts == 0) {
        fail(c, UV_EAI_NONAME, "could not resolve host: no usable address");
    } else if (c->attempts == 1) {
        fail(c, c->last_connect_err, "%s", c->last_connect_text);
    } else {
        fail(c, c->last_connect_err, "%s (tried %u addresses: %s)", c->last_connect_text,
             c->attempts, c->attempt_log.buf);
    }
}

/* Keeps the IPv4 and IPv6 addresses of a resolver answer, in its order. */
static void take_addresses(struct net_conn *c, const struct addrinfo *res)
{
    size_t n = 0;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        n++;
    }
    c->alist = xcalloc(n + 1, sizeof(*c->alist));
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
            ai->ai_addrlen <= sizeof(*c->alist)) {
            memcpy(&c->alist[c->nalist++], ai->ai_addr, ai->ai_addrlen);
        }
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct net_conn *c = req->data;
    c->gai_active = false;
    if (c->closing || c->state == NS_FAILED) {
        if (res != NULL) {
            uv_freeaddrinfo(res);
        }
        unref(c);
        return;
    }
    if (status < 0) {
        fail(c, status, "could not resolve host: %s", uv_strerror(status));
    } else {
        take_addresses(c, res);
        uv_freeaddrinfo(res);
        try_next_address(c);
    }
    unref(c);
}

static char *make_hostport(const char *host, uint16_t port)
{
    if (strchr(host, ':') != NULL && host[0] != '[') {
        return xasprintf("[%s]:%u", host, port);
    }
    return xasprintf("%s:%u", host, port);
}

int net_connect(uv_loop_t *loop, const struct net_opts *opts, const struct net_cb *cb, void *arg,
                struct net_conn **c_r)
{
    if (c_r != NULL) {
        *c_r = NULL;
    }
    if (loop == NULL || opts == NULL || cb == NULL || c_r == NULL || opts->host == NULL ||
        opts->host[0] == '\0' || opts->port == 0 || cb->on_data == NULL || cb->on_error == NULL) {
        return -EINVAL;
    }
    if (opts->tls != NET_TLS_NONE && opts->tls != NET_TLS_IMPLICIT && opts->tls != NET_TLS_LATER) {
        return -EINVAL;
    }
    struct net_conn *c = xcalloc(1, sizeof(*c));
    c->loop = loop;
    c->cb = *cb;
    c->arg = arg;
    c->host = xstrdup(opts->host);
    c->port = opts->port;
    c->hostport = make_hostport(opts->host, opts->port);
    size_t hl = strlen(opts->host);
    if (hl >= 2 && opts->host[0] == '[' && opts->host[hl - 1] == ']') {
        c->resolve_host = xstrndup(opts->host + 1, hl - 2);
    } else {
        c->resolve_host = xstrdup(opts->host);
    }
    c->tls_mode = opts->tls;
    c->fingerprint = opts->fingerprint != NULL ? xstrdup(opts->fingerprint) : NULL;
    c->insecure = opts->insecure_skip_verify;
    c->connect_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms : NET_DEFAULT_CONNECT_MS;
    c->idle_ms = opts->idle_timeout_ms ? opts->idle_timeout_ms : NET_DEFAULT_IDLE_MS;
    c->idle_conf_ms = c->idle_ms;
    c->max_wq = opts->max_write_queue ? opts->max_write_queue : NET_DEFAULT_MAX_WQ;
    c->ka_idle_s = opts->keepalive_idle_s ? opts->keepalive_idle_s : NET_DEFAULT_KEEPIDLE_S;
    c->ka_intvl_s = opts->keepalive_intvl_s ? opts->keepalive_intvl_s : NET_DEFAULT_KEEPINTVL_S;
    c->ka_count = opts->keepalive_count ? opts->keepalive_count : NET_DEFAULT_KEEPCNT;
    c->user_timeout_ms =
        opts->user_timeout_ms ? opts->user_timeout_ms : NET_DEFAULT_USER_TIMEOUT_MS;
    c->rbuf = xmalloc(NET_READ_BUF);
    c->pbuf = xmalloc(NET_PLAIN_BUF);
    c->state = NS_RESOLVING;
    c->last_rx = uv_now(loop);

    c->attempt_ms = opts->attempt_timeout_ms ? opts->attempt_timeout_ms : NET_DEFAULT_ATTEMPT_MS;
    uv_timer_init(loop, &c->connect_timer);
    uv_timer_init(loop, &c->attempt_timer);
    uv_timer_init(loop, &c->idle_timer);
    uv_idle_init(loop, &c->defer);
    c->connect_timer.data = c;
    c->attempt_timer.data = c;
    c->idle_timer.data = c;
    c->defer.data = c;
    uv_check_init(loop, &c->slice);
    c->slice.data = c;
    c->refs = 5;
    *c_r = c;

    if (c->tls_mode != NET_TLS_NONE) {
        c->ca_file = opts->ca_file != NULL ? xstrdup(opts->ca_file) : NULL;
        /* Refuse a malformed pin before any traffic, with a clear text. */
        unsigned char pin[32];
        if (c->fingerprint != NULL && tls_fingerprint_parse(c->fingerprint, pin) < 0) {
            fail(c, NET_ETLS, "invalid tls_fingerprint: expected sha256: and 64 hex digits");
            return 0;
        }
    }

    /* The timeout counts from now, not from whenever the loop last looked
     * at the clock. */
    uv_update_time(loop);
    c->last_rx = uv_now(loop);
    c->connect_start = uv_now(loop);
    uv_timer_start(&c->connect_timer, on_connect_timeout, c->connect_ms, 0);

    if (opts->naddrs > 0 && opts->addrs != NULL) {
        c->alist = xcalloc(opts->naddrs, sizeof(*c->alist));
        for (size_t i = 0; i < opts->naddrs; i++) {
            int fam = opts->addrs[i].ss_family;
            if (fam == AF_INET || fam == AF_INET6) {
                c->alist[c->nalist++] = opts->addrs[i];
            }
        }
        try_next_address(c);
        return 0;
    }

    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_protocol = IPPROTO_TCP,
        .ai_flags = AI_NUMERICSERV,
    };
    char service[8];
    snprintf(service, sizeof(service), "%u", opts->port);
    c->gai.data = c;
    int r = uv_getaddrinfo(loop, &c->gai, on_resolved, c->resolve_host, service, &hints);
    if (r < 0) {
        fail(c, r, "could not resolve host: %s", uv_strerror(r));
        return 0;
    }
    c->gai_active = true;
    c->refs++;
    return 0;
}

/* ---- owner controls ---------------------------------------------------- */

int net_start_tls(struct net_conn *c, bool buffered_plaintext)
{
    if (c == NULL || c->closing || c->tls_mode != NET_TLS_LATER || c->tls != NULL || c->compress) {
        return -EINVAL;
    }
    if (c->state != NS_OPEN) {
        return c->state == NS_FAILED ? -EPIPE : -ENOTCONN;
    }
    if (buffered_plaintext || c->rpend.len > c->rpend_off) {
        /* Whatever followed the server's OK in the same packet was sent
         * before TLS and could have been injected by anyone on the path
         * (CVE-2011-0411 and its many relatives): never trust it. The error
         * is returned and reported through on_error as well, so an owner
         * may rely on either. */
        fail(c, NET_EINJECT,
             "the server sent data right after its answer to STARTTLS, before TLS "
             "started (possible injection attack)");
        return NET_EINJECT;
    }
    c->starttls = true;
    uv_timer_start(&c->connect_timer, on_connect_timeout, c->connect_ms, 0);
    uv_timer_stop(&c->idle_timer);
    start_tls_engine(c);
    return 0;
}

int net_start_compress(struct net_conn *c)
{
    if (c == NULL || c->closing) {
        return -EINVAL;
    }
    if (c->compress) {
        return -EALREADY;
    }
    if (c->state != NS_OPEN) {
        return c->state == NS_FAILED ? -EPIPE : -ENOTCONN;
    }
    /* Raw DEFLATE (negative window bits), as RFC 4978 requires; memLevel 8
     * and the full 32 KiB window keep the ratio good on mail text. */
    memset(&c->zin, 0, sizeof(c->zin));
    memset(&c->zout, 0, sizeof(c->zout));
    if (inflateInit2(&c->zin, -15) != Z_OK) {
        return -ENOMEM;
    }
    if (deflateInit2(&c->zout, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK) {
        inflateEnd(&c->zin);
        return -ENOMEM;
    }
    c->zibuf = xmalloc(NET_Z_BUF);
    c->zobuf = xmalloc(NET_Z_BUF);
    c->compress = true;
    if (c->rpend.len > c->rpend_off) {
        /* Read after the server's OK, not delivered yet: compressed. It is
         * marked taken rather than freed, since the owner may be handling
         * the piece before it, which lives in the same buffer. */
        sbuf_add(&c->zpend, c->rpend.buf + c->rpend_off, c->rpend.len - c->rpend_off);
        c->rpend_off = c->rpend.len;
        c->need_pump = true;
        schedule(c);
    }
    return 0;
}

void net_pause(struct net_conn *c)
{
    if (c == NULL || c->closing) {
        return;
    }
    c->paused = true;
    update_reading(c);
}

void net_resume(struct net_conn *c)
{
    if (c == NULL || c->closing || !c->paused) {
        return;
    }
    c->paused = false;
    if (c->state == NS_FAILED) {
        return;
    }
    update_reading(c);
    /* TLS, inflate or rpend may hold plaintext that arrived before the
     * pause; deliver it from the loop, never from inside this call. */
    if (c->tls != NULL || c->compress || c->rpend.len > c->rpend_off) {
        c->need_pump = true;
        schedule(c);
    }
}

void net_expect(struct net_conn *c, bool expecting)
{
    net_expect_within(c, expecting, 0);
}

void net_expect_within(struct net_conn *c, bool expecting, unsigned ms)
{
    if (c == NULL || c->closing) {
        return;
    }
    if (expecting && !c->expecting) {
        c->last_rx = uv_now(c->loop);
    }
    unsigned want = ms != 0 && ms < c->idle_conf_ms ? ms : c->idle_conf_ms;
    if (want != c->idle_ms) {
        /* The running timer was set for the old deadline: re-arm it (from
         * the last byte received, as always). */
        c->idle_ms = want;
        uv_timer_stop(&c->idle_timer);
    }
    c->expecting = expecting;
    update_idle_timer(c);
}

void net_close(struct net_conn *c)
{
    if (c == NULL || c->closing) {
        return;
    }
    c->closing = true;
    if (c->gai_active) {
        /* If the lookup already runs on a pool thread it cannot be
         * cancelled; its callback then comes later and drops the last
         * reference itself. */
        uv_cancel((uv_req_t *)&c->gai);
    }
    close_tcp(c);
    uv_close((uv_handle_t *)&c->connect_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->attempt_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->idle_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->defer, on_handle_closed);
    uv_close((uv_handle_t *)&c->slice, on_handle_closed);
}

/* ---- facts ------------------------------------------------------------- */

const char *net_peer_address(const struct net_conn *c)
{
    return c->peer[0] != '\0' ? c->peer : NULL;
}

bool net_peer_is_local(const struct net_conn *c)
{
    return c->peer[0] != '\0' && c->peer_local;
}

const char *net_tls_version(const struct net_conn *c)
{
    return c->tls != NULL ? tls_conn_version(c->tls) : NULL;
}

const char *net_tls_cipher(const struct net_conn *c)
{
    return c->tls != NULL ? tls_conn_cipher(c->tls) : NULL;
}

const char *net_tls_fingerprint(const struct net_conn *c)
{
    return c->tls != NULL ? tls_conn_fingerprint(c->tls) : NULL;
}

bool net_compressed(const struct net_conn *c)
{
    return c->compress;
}

uint64_t net_bytes_in(const struct net_conn *c)
{
    return c->bytes_in;
}

uint64_t net_bytes_out(const struct net_conn *c)
{
    return c->bytes_out;
}
