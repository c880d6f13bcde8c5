/* POP3 client state machine: see pop3.h. */
#include "sync/pop3.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "core/log.h"
#include "core/util.h"

/* RFC 2449 section 4: command lines may be up to 255 octets. A SASL initial
 * response that does not fit is sent after the "+ " continuation instead
 * (RFC 5034 section 4). */
#define POP3_MAX_CMD_LINE 255
#define DEFAULT_PIPELINE_DEPTH 32

struct cmd {
    struct cmd *next;
    char *line; /* the command with CRLF; NULL for the greeting */
    size_t len;
    char *trace; /* what the protocol trace shows (secrets redacted) */
    enum pop3_expect expect;
    pop3_chunk_cb chunk;
    pop3_done_cb done;
    void *arg;
    bool is_quit;
    /* The "+OK" line of a multi-line answer, kept until its terminator. */
    char *ok_text;
    char *ok_code;
};

struct pop3 {
    uv_loop_t *loop;
    struct pop3_cb cb;
    void *arg;
    char *name;  /* for logs: "pop3 NAME" */
    char *where; /* for messages: "host:port" */
    char *host;
    uint16_t port;
    char *user;
    char *secret;
    enum pop3_auth auth;
    bool allow_plaintext;
    enum net_tls_mode tls_mode;
    unsigned depth_max;

    struct net_conn *c;
    struct pop3_parser *parser;
    enum pop3_state state;
    unsigned caps;
    bool capa_known;
    bool tls_active;
    char *timestamp; /* APOP "<...>" from the greeting */

    /* Commands sent and awaiting answers (FIFO), and commands waiting to be
     * sent. */
    struct cmd *sent_head, *sent_tail;
    size_t nsent;
    struct cmd *queue_head, *queue_tail;
    size_t nqueued;

    /* SASL exchange in progress. */
    char *sasl_resp;         /* base64 response still to send after "+ " */
    const char *sasl_cancel; /* what to answer an error challenge with */

    /* Backpressure: bytes read but not yet parsed while paused. */
    bool paused;
    struct sbuf pending;
    bool replay_due;
    uv_timer_t replay;
    size_t in_left; /* unparsed bytes of the current read, for STLS injection */
    bool quit_queued;
    /* A failure found inside a pop3_* call, reported from the loop. */
    int later_err;
    char *later_msg;

    /* Callback nesting and deferred free. */
    int depth;
    bool freed;
};

static const char *const state_names[] = {
    [POP3_STATE_CONNECTING] = "CONNECTING",
    [POP3_STATE_GREETING] = "GREETING",
    [POP3_STATE_CAPA] = "CAPA",
    [POP3_STATE_STLS] = "STLS",
    [POP3_STATE_TLS_HANDSHAKE] = "TLS_HANDSHAKE",
    [POP3_STATE_AUTH] = "AUTH",
    [POP3_STATE_POSTAUTH] = "POSTAUTH",
    [POP3_STATE_READY] = "READY",
    [POP3_STATE_QUIT] = "QUIT",
    [POP3_STATE_CLOSED] = "CLOSED",
    [POP3_STATE_FAILED] = "FAILED",
};

const char *pop3_state_name(enum pop3_state s)
{
    if ((size_t)s < ARRAY_SIZE(state_names) && state_names[s] != NULL) {
        return state_names[s];
    }
    return "?";
}

const char *pop3_errkind_name(enum pop3_errkind k)
{
    switch (k) {
    case POP3_ERRKIND_NONE:
        return "ok";
    case POP3_ERRKIND_TRANSIENT:
        return "transient";
    case POP3_ERRKIND_AUTH:
        return "auth";
    case POP3_ERRKIND_PERMANENT:
        return "permanent";
    }
    return "?";
}

static bool code_is(const char *code, const char *want)
{
    size_t n = strlen(want);
    /* Codes are hierarchical (RFC 2449 section 8): "SYS/TEMP/X" is SYS/TEMP. */
    return strncmp(code, want, n) == 0 && (code[n] == '\0' || code[n] == '/');
}

enum pop3_errkind pop3_code_kind(const char *code, enum pop3_errkind without_code)
{
    if (code == NULL) {
        return without_code;
    }
    if (code_is(code, "IN-USE") || code_is(code, "LOGIN-DELAY") || code_is(code, "SYS/TEMP")) {
        return POP3_ERRKIND_TRANSIENT;
    }
    if (code_is(code, "AUTH")) {
        return POP3_ERRKIND_AUTH;
    }
    if (code_is(code, "SYS/PERM")) {
        return POP3_ERRKIND_PERMANENT;
    }
    return without_code;
}

/* The one place where the state changes, so that every transition is in
 * the debug log. */
static void set_state(struct pop3 *p, enum pop3_state s)
{
    if (p->state == s) {
        return;
    }
    log_debug("%s: %s -> %s", p->name, pop3_state_name(p->state), pop3_state_name(s));
    p->state = s;
}

/* Copies peer text for messages, replacing control characters so that a
 * hostile server cannot drive the user's terminal. */
static char *clean_text(const char *s)
{
    char *t = xstrdup(s != NULL ? s : "");
    for (char *q = t; *q != '\0'; q++) {
        if ((unsigned char)*q < 0x20 || *q == 0x7f) {
            *q = '?';
        }
    }
    return t;
}

static void free_cmd(struct cmd *c)
{
    if (c->line != NULL) {
        explicit_bzero(c->line, c->len);
    }
    free(c->line);
    free(c->trace);
    free(c->ok_text);
    free(c->ok_code);
    free(c);
}

static void really_free(struct pop3 *p);

static void enter(struct pop3 *p)
{
    p->depth++;
}

/* Leaves a callback section; returns true when p was freed meanwhile (the
 * caller must not touch it any more). */
static bool leave(struct pop3 *p)
{
    if (--p->depth == 0 && p->freed) {
        really_free(p);
        return true;
    }
    return p->freed;
}

/* Fails the session: every command's callback gets the error, then the
 * owner's on_error. */
__attribute__((format(printf, 4, 5))) static void fail(struct pop3 *p, int err,
                                                       enum pop3_errkind kind, const char *fmt, ...)
{
    if (p->state == POP3_STATE_FAILED || p->freed) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    set_state(p, POP3_STATE_FAILED);
    log_debug("%s: failed (%s): %s", p->name, pop3_errkind_name(kind), msg);
    if (p->c != NULL) {
        net_expect(p->c, false);
    }
    enter(p);
    struct pop3_status st = {.err = err, .text = msg, .kind = kind};
    /* Detach the lists first: a callback may call pop3_free. */
    struct cmd *lists[2] = {p->sent_head, p->queue_head};
    p->sent_head = p->sent_tail = p->queue_head = p->queue_tail = NULL;
    p->nsent = p->nqueued = 0;
    for (int i = 0; i < 2; i++) {
        struct cmd *c = lists[i];
        while (c != NULL) {
            struct cmd *next = c->next;
            if (c->done != NULL && !p->freed) {
                c->done(p, &st, c->arg);
            }
            free_cmd(c);
            c = next;
        }
    }
    if (!p->freed && p->cb.on_error != NULL) {
        p->cb.on_error(p, err, kind, msg, p->arg);
    }
    free(msg);
    leave(p);
}

/* Points the parser at the oldest command in flight when it is between
 * replies. */
static void arm_parser(struct pop3 *p)
{
    if (p->sent_head != NULL && pop3_parser_expecting(p->parser) == POP3_EXPECT_NOTHING &&
        !pop3_parser_busy(p->parser)) {
        pop3_parser_expect(p->parser, p->sent_head->expect);
    }
}

static void update_expect(struct pop3 *p)
{
    if (p->c != NULL && p->state != POP3_STATE_FAILED) {
        net_expect(p->c, p->nsent > 0 && !p->paused);
    }
}

static void on_replay(uv_timer_t *t);

static int write_line(struct pop3 *p, const char *line, size_t len, const char *trace)
{
    if (log_enabled(LOG_LEVEL_TRACE)) {
        log_trace("%s: C: %s", p->name, trace);
    }
    int r = net_write(p->c, line, len);
    if (r < 0 && p->later_msg == NULL) {
        /* This may run inside a pop3_* call, where no callback may come:
         * report from the loop. */
        p->later_err = r;
        p->later_msg = xasprintf("%s: cannot send a command: %s", p->where, uv_strerror(r));
        uv_timer_start(&p->replay, on_replay, 0, 0);
    }
    return r;
}

static void send_cmd(struct pop3 *p, struct cmd *c)
{
    if (c->is_quit) {
        set_state(p, POP3_STATE_QUIT);
    }
    c->next = NULL;
    if (p->sent_tail != NULL) {
        p->sent_tail->next = c;
    } else {
        p->sent_head = c;
    }
    p->sent_tail = c;
    p->nsent++;
    arm_parser(p);
    update_expect(p);
    write_line(p, c->line, c->len, c->trace);
}

/* Sends queued owner commands as far as the pipelining window allows. */
static void flush_queue(struct pop3 *p)
{
    if (p->state != POP3_STATE_READY) {
        return;
    }
    size_t window = (p->caps & POP3_CAP_PIPELINING) ? p->depth_max : 1;
    while (p->queue_head != NULL && p->nsent < window && p->state == POP3_STATE_READY) {
        struct cmd *c = p->queue_head;
        p->queue_head = c->next;
        if (p->queue_head == NULL) {
            p->queue_tail = NULL;
        }
        p->nqueued--;
        send_cmd(p, c);
    }
}

__attribute__((format(printf, 6, 7))) static struct cmd *
new_cmd(enum pop3_expect expect, pop3_chunk_cb chunk, pop3_done_cb done, void *arg,
        const char *trace, const char *fmt, ...)
{
    struct cmd *c = xcalloc(1, sizeof(*c));
    va_list ap;
    va_start(ap, fmt);
    char *s = xvasprintf(fmt, ap);
    va_end(ap);
    c->trace = xstrdup(trace != NULL ? trace : s);
    c->line = xasprintf("%s\r\n", s);
    c->len = strlen(c->line);
    explicit_bzero(s, strlen(s));
    free(s);
    c->expect = expect;
    c->chunk = chunk;
    c->done = done;
    c->arg = arg;
    return c;
}

/* Internal (session setup) commands go out at once: setup is sequential. */
static void send_internal(struct pop3 *p, struct cmd *c)
{
    send_cmd(p, c);
}

/* Owner commands wait for READY and the pipelining window. */
static int queue_cmd(struct pop3 *p, struct cmd *c)
{
    if (p->freed || p->state == POP3_STATE_FAILED || p->quit_queued) {
        free_cmd(c);
        return -EPIPE;
    }
    p->quit_queued = c->is_quit;
    if (p->queue_tail != NULL) {
        p->queue_tail->next = c;
    } else {
        p->queue_head = c;
    }
    p->queue_tail = c;
    p->nqueued++;
    /* Sending from here is fine: only callbacks must not be synchronous,
     * and a failed write is reported from the loop. */
    flush_queue(p);
    return 0;
}

/* ---- session setup ---------------------------------------------------- */

static void on_capa_line(struct pop3 *p, const char *line, size_t len, void *arg);
static void on_capa_done(struct pop3 *p, const struct pop3_status *st, void *arg);

static void send_capa(struct pop3 *p)
{
    p->caps &= POP3_CAP_APOP;
    p->capa_known = false;
    send_internal(p, new_cmd(POP3_EXPECT_LINES, on_capa_line, on_capa_done, NULL, NULL, "CAPA"));
}

static void on_greeting(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    if (st->err < 0) {
        return;
    }
    if (!st->ok) {
        char *t = clean_text(st->text);
        fail(p, -ECONNREFUSED, pop3_code_kind(st->code, POP3_ERRKIND_TRANSIENT),
             "%s: the server refused the session: %s", p->where, t);
        free(t);
        return;
    }
    /* RFC 1939 section 7: an APOP-capable server puts a msg-id style
     * timestamp in its greeting. */
    const char *lt = strchr(st->text, '<');
    const char *gt = lt != NULL ? strchr(lt, '>') : NULL;
    if (lt != NULL && gt != NULL && gt - lt > 2) {
        p->timestamp = xstrndup(lt, (size_t)(gt - lt + 1));
        p->caps |= POP3_CAP_APOP;
    }
    set_state(p, POP3_STATE_CAPA);
    send_capa(p);
}

static void on_capa_line(struct pop3 *p, const char *line, size_t len, void *arg)
{
    char word[32];
    size_t n = strcspn(line, " ");
    if (n >= sizeof(word)) {
        return;
    }
    memcpy(word, line, n);
    word[n] = '\0';
    static const struct {
        const char *name;
        unsigned bit;
    } tags[] = {
        {"TOP", POP3_CAP_TOP},
        {"UIDL", POP3_CAP_UIDL},
        {"USER", POP3_CAP_USER},
        {"STLS", POP3_CAP_STLS},
        {"PIPELINING", POP3_CAP_PIPELINING},
        {"RESP-CODES", POP3_CAP_RESP_CODES},
        {"AUTH-RESP-CODE", POP3_CAP_AUTH_RESP_CODE},
    };
    for (size_t i = 0; i < ARRAY_SIZE(tags); i++) {
        if (strcasecmp(word, tags[i].name) == 0) {
            p->caps |= tags[i].bit;
        }
    }
    if (strcasecmp(word, "SASL") == 0) {
        const char *s = line + n;
        while (*s != '\0') {
            while (*s == ' ') {
                s++;
            }
            size_t m = strcspn(s, " ");
            if (m == 5 && strncasecmp(s, "PLAIN", 5) == 0) {
                p->caps |= POP3_CAP_SASL_PLAIN;
            } else if (m == 7 && strncasecmp(s, "XOAUTH2", 7) == 0) {
                p->caps |= POP3_CAP_SASL_XOAUTH2;
            } else if (m == 11 && strncasecmp(s, "OAUTHBEARER", 11) == 0) {
                p->caps |= POP3_CAP_SASL_OAUTHBEARER;
            }
            s += m;
        }
    }
}

static void start_auth(struct pop3 *p);

static void on_stls_done(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    if (st->err < 0) {
        return;
    }
    if (!st->ok) {
        char *t = clean_text(st->text);
        fail(p, -EPROTO, POP3_ERRKIND_PERMANENT, "%s: the server refused STLS: %s", p->where, t);
        free(t);
        return;
    }
    /* RFC 2595 section 4 / CVE-2011-0411: anything after the +OK that came
     * before the handshake was not protected by TLS. */
    bool buffered = p->in_left > 0 || p->pending.len > 0 || pop3_parser_busy(p->parser);
    set_state(p, POP3_STATE_TLS_HANDSHAKE);
    int r = net_start_tls(p->c, buffered);
    if (r < 0) {
        if (r == NET_EINJECT) {
            fail(p, r, POP3_ERRKIND_PERMANENT,
                 "%s: the server sent data right after its answer to STLS, before TLS started "
                 "(possible injection attack)",
                 p->where);
        } else {
            fail(p, r, POP3_ERRKIND_TRANSIENT, "%s: cannot start TLS: %s", p->where,
                 uv_strerror(r));
        }
        return;
    }
    update_expect(p);
}

static void on_capa_done(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    if (st->err < 0) {
        return;
    }
    p->capa_known = st->ok;
    if (!st->ok) {
        /* A server without CAPA (RFC 1939 only) still has USER, and may
         * have UIDL and TOP: the owner tries them and copes with -ERR. */
        p->caps |= POP3_CAP_USER;
    }
    if (p->state == POP3_STATE_POSTAUTH) {
        set_state(p, POP3_STATE_READY);
        log_debug("%s: ready (caps 0x%x)", p->name, p->caps);
        if (p->cb.on_ready != NULL) {
            p->cb.on_ready(p, p->arg);
        }
        if (!p->freed) {
            flush_queue(p);
        }
        return;
    }
    if (p->tls_mode == NET_TLS_LATER && !p->tls_active) {
        if (!(p->caps & POP3_CAP_STLS)) {
            fail(p, -EPROTO, POP3_ERRKIND_PERMANENT,
                 "%s: the server does not offer STLS; refusing to continue without TLS "
                 "(tls: starttls)",
                 p->where);
            return;
        }
        set_state(p, POP3_STATE_STLS);
        send_internal(p, new_cmd(POP3_EXPECT_SINGLE, NULL, on_stls_done, NULL, NULL, "STLS"));
        return;
    }
    start_auth(p);
}

static void on_login_done(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    if (st->err < 0) {
        return;
    }
    free(p->sasl_resp);
    p->sasl_resp = NULL;
    if (!st->ok) {
        char *t = clean_text(st->text);
        if (st->code != NULL) {
            char *full = xasprintf("[%s] %s", st->code, t);
            free(t);
            t = full;
        }
        enum pop3_errkind kind = pop3_code_kind(st->code, POP3_ERRKIND_AUTH);
        fail(p, -EACCES, kind, "%s: %s: %s", p->where,
             kind == POP3_ERRKIND_TRANSIENT ? "login refused for now" : "authentication failed", t);
        free(t);
        return;
    }
    log_debug("%s: logged in as %s", p->name, p->user);
    set_state(p, POP3_STATE_POSTAUTH);
    send_capa(p);
}

static void on_user_done(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    if (st->err < 0) {
        return;
    }
    if (!st->ok) {
        on_login_done(p, st, arg);
        return;
    }
    send_internal(p, new_cmd(POP3_EXPECT_SINGLE, NULL, on_login_done, NULL, "PASS <redacted>",
                             "PASS %s", p->secret));
}

static char *b64(const void *data, size_t len)
{
    char *out = xmalloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

static void start_sasl(struct pop3 *p, const char *mech, const char *raw, size_t rawlen,
                       const char *cancel)
{
    char *resp = b64(raw, rawlen);
    char trace[64];
    snprintf(trace, sizeof(trace), "AUTH %s <redacted>", mech);
    p->sasl_cancel = cancel;
    if (strlen("AUTH  \r\n") + strlen(mech) + strlen(resp) <= POP3_MAX_CMD_LINE) {
        send_internal(p, new_cmd(POP3_EXPECT_SASL, NULL, on_login_done, NULL, trace, "AUTH %s %s",
                                 mech, resp));
        explicit_bzero(resp, strlen(resp));
        free(resp);
    } else {
        p->sasl_resp = resp;
        send_internal(p,
                      new_cmd(POP3_EXPECT_SASL, NULL, on_login_done, NULL, NULL, "AUTH %s", mech));
    }
}

static void on_continuation(struct pop3 *p, const char *challenge)
{
    if (p->state != POP3_STATE_AUTH) {
        fail(p, -EPROTO, POP3_ERRKIND_TRANSIENT, "%s: unexpected continuation from the server",
             p->where);
        return;
    }
    pop3_parser_expect(p->parser, POP3_EXPECT_SASL);
    if (p->sasl_resp != NULL) {
        char *line = xasprintf("%s\r\n", p->sasl_resp);
        size_t n = strlen(line);
        explicit_bzero(p->sasl_resp, strlen(p->sasl_resp));
        free(p->sasl_resp);
        p->sasl_resp = NULL;
        write_line(p, line, n, "<redacted>");
        explicit_bzero(line, n);
        free(line);
        return;
    }
    /* A challenge after our response is an error report (XOAUTH2 sends a
     * JSON status, OAUTHBEARER likewise): answer as the mechanism requires
     * and the server follows with -ERR. */
    char *line = xasprintf("%s\r\n", p->sasl_cancel != NULL ? p->sasl_cancel : "*");
    write_line(p, line, strlen(line), p->sasl_cancel != NULL ? p->sasl_cancel : "*");
    free(line);
}

static void start_auth(struct pop3 *p)
{
    if (!p->tls_active && !p->allow_plaintext) {
        fail(p, -EPERM, POP3_ERRKIND_PERMANENT,
             "%s: refusing to send credentials without TLS (set allow_plaintext: true to permit "
             "it)",
             p->where);
        return;
    }
    set_state(p, POP3_STATE_AUTH);
    enum pop3_auth a = p->auth;
    if (a == POP3_AUTH_AUTO) {
        a = (p->caps & POP3_CAP_SASL_PLAIN) ? POP3_AUTH_PLAIN : POP3_AUTH_USER;
    }
    struct sbuf raw = {0};
    switch (a) {
    case POP3_AUTH_AUTO:
    case POP3_AUTH_USER:
        send_internal(
            p, new_cmd(POP3_EXPECT_SINGLE, NULL, on_user_done, NULL, NULL, "USER %s", p->user));
        break;
    case POP3_AUTH_PLAIN:
        sbuf_addc(&raw, '\0');
        sbuf_adds(&raw, p->user);
        sbuf_addc(&raw, '\0');
        sbuf_adds(&raw, p->secret);
        start_sasl(p, "PLAIN", raw.buf, raw.len, "*");
        break;
    case POP3_AUTH_XOAUTH2:
        sbuf_addf(&raw, "user=%s\001auth=Bearer %s\001\001", p->user, p->secret);
        start_sasl(p, "XOAUTH2", raw.buf, raw.len, "");
        break;
    case POP3_AUTH_OAUTHBEARER:
        /* RFC 7628 section 3.1; on an error challenge the client sends
         * a single %x01 (base64 "AQ==") and gets the final -ERR. */
        sbuf_addf(&raw, "n,a=%s,\001host=%s\001port=%u\001auth=Bearer %s\001\001", p->user, p->host,
                  p->port, p->secret);
        start_sasl(p, "OAUTHBEARER", raw.buf, raw.len, "AQ==");
        break;
    case POP3_AUTH_APOP: {
        if (p->timestamp == NULL) {
            fail(p, -EPROTO, POP3_ERRKIND_PERMANENT,
                 "%s: auth: apop was asked for but the server's greeting has no APOP timestamp",
                 p->where);
            break;
        }
        sbuf_adds(&raw, p->timestamp);
        sbuf_adds(&raw, p->secret);
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        if (EVP_Digest(raw.buf, raw.len, md, &mdlen, EVP_md5(), NULL) != 1) {
            fail(p, -EPROTO, POP3_ERRKIND_PERMANENT, "%s: MD5 is not available for APOP", p->where);
            break;
        }
        char hex[2 * EVP_MAX_MD_SIZE + 1];
        for (unsigned i = 0; i < mdlen; i++) {
            snprintf(hex + 2 * i, 3, "%02x", md[i]);
        }
        char *trace = xasprintf("APOP %s <redacted>", p->user);
        send_internal(p, new_cmd(POP3_EXPECT_SINGLE, NULL, on_login_done, NULL, trace, "APOP %s %s",
                                 p->user, hex));
        free(trace);
        break;
    }
    }
    if (raw.buf != NULL) {
        explicit_bzero(raw.buf, raw.len);
    }
    sbuf_free(&raw);
}

/* ---- input ------------------------------------------------------------- */

/* Finishes the oldest command in flight. */
static void complete_head(struct pop3 *p, const struct pop3_status *st)
{
    struct cmd *c = p->sent_head;
    p->sent_head = c->next;
    if (p->sent_head == NULL) {
        p->sent_tail = NULL;
    }
    p->nsent--;
    if (c->is_quit) {
        /* Whatever QUIT answered, the session is over; the server closes the
         * connection next, which is not an error. */
        set_state(p, POP3_STATE_CLOSED);
    }
    if (c->done != NULL) {
        c->done(p, st, c->arg);
    }
    free_cmd(c);
    if (p->freed || p->state == POP3_STATE_FAILED) {
        return;
    }
    arm_parser(p);
    flush_queue(p);
    update_expect(p);
}

/* Parses input and dispatches results; stops (keeping the rest) when the
 * owner pauses, and on failure. */
static void process_input(struct pop3 *p, const char *data, size_t len)
{
    enter(p);
    for (;;) {
        if (p->freed || p->state == POP3_STATE_FAILED) {
            break;
        }
        if (p->paused) {
            /* Even with no bytes left the parser may owe an END: replay. */
            sbuf_add(&p->pending, data, len);
            p->replay_due = true;
            break;
        }
        if (p->state == POP3_STATE_CLOSED && p->sent_head == NULL) {
            break; /* whatever follows QUIT's answer is of no interest */
        }
        size_t used = 0;
        int r = pop3_parser_feed(p->parser, data, len, &used);
        data += used;
        len -= used;
        p->in_left = len;
        if (r == POP3_PARSE_NEED_MORE) {
            break;
        }
        if (r < 0) {
            fail(p, -EPROTO, POP3_ERRKIND_TRANSIENT, "%s: protocol error: %s", p->where,
                 pop3_parser_error(p->parser));
            break;
        }
        struct cmd *c = p->sent_head;
        if (c == NULL) {
            /* The parser refuses input while nothing is expected. */
            fail(p, -EPROTO, POP3_ERRKIND_TRANSIENT, "%s: unexpected reply", p->where);
            break;
        }
        const struct pop3_reply *rep = pop3_parser_reply(p->parser);
        size_t dl;
        const char *dd;
        switch (r) {
        case POP3_PARSE_STATUS: {
            if (log_enabled(LOG_LEVEL_TRACE)) {
                char *t = clean_text(rep->line);
                log_trace("%s: S: %s", p->name, t);
                free(t);
            }
            bool complete = pop3_parser_expecting(p->parser) == POP3_EXPECT_NOTHING &&
                            !pop3_parser_busy(p->parser);
            if (complete) {
                struct pop3_status st = {.ok = rep->ok, .code = rep->code, .text = rep->text};
                if (!rep->ok) {
                    st.kind = pop3_code_kind(rep->code, POP3_ERRKIND_PERMANENT);
                }
                complete_head(p, &st);
            } else {
                c->ok_text = xstrdup(rep->text);
                c->ok_code = rep->code != NULL ? xstrdup(rep->code) : NULL;
            }
            break;
        }
        case POP3_PARSE_CONTINUATION:
            log_trace("%s: S: + %s", p->name, rep->text);
            on_continuation(p, rep->text);
            break;
        case POP3_PARSE_LINE:
        case POP3_PARSE_DATA:
            dd = pop3_parser_data(p->parser, &dl);
            if (c->chunk != NULL) {
                c->chunk(p, dd, dl, c->arg);
            }
            break;
        case POP3_PARSE_END: {
            struct pop3_status st = {.ok = true, .code = c->ok_code, .text = c->ok_text};
            complete_head(p, &st);
            break;
        }
        default:
            break;
        }
    }
    leave(p);
}

static void on_replay(uv_timer_t *t)
{
    struct pop3 *p = t->data;
    if (p->freed) {
        return;
    }
    if (p->later_msg != NULL) {
        char *msg = p->later_msg;
        p->later_msg = NULL;
        fail(p, p->later_err, POP3_ERRKIND_TRANSIENT, "%s", msg);
        free(msg);
        return;
    }
    if (p->paused) {
        return;
    }
    p->replay_due = false;
    struct sbuf buf = p->pending;
    memset(&p->pending, 0, sizeof(p->pending));
    enter(p);
    process_input(p, buf.buf != NULL ? buf.buf : "", buf.len);
    sbuf_free(&buf);
    if (!p->freed && !p->paused && p->c != NULL && p->state != POP3_STATE_FAILED) {
        net_resume(p->c);
        update_expect(p);
    }
    leave(p);
}

void pop3_pause(struct pop3 *p)
{
    if (p->paused || p->freed) {
        return;
    }
    p->paused = true;
    if (p->c != NULL) {
        net_pause(p->c);
        net_expect(p->c, false);
    }
}

void pop3_resume(struct pop3 *p)
{
    if (!p->paused || p->freed) {
        return;
    }
    p->paused = false;
    if (p->replay_due || p->pending.len > 0) {
        /* Replay from the loop, never from inside this call. */
        uv_timer_start(&p->replay, on_replay, 0, 0);
        return;
    }
    if (p->c != NULL && p->state != POP3_STATE_FAILED) {
        net_resume(p->c);
        update_expect(p);
    }
}

/* ---- net callbacks ----------------------------------------------------- */

static void on_net_connect(struct net_conn *c, void *arg)
{
    struct pop3 *p = arg;
    p->tls_active = p->tls_mode == NET_TLS_IMPLICIT;
    log_debug("%s: connected to %s%s", p->name, net_peer_address(c) ? net_peer_address(c) : "?",
              p->tls_active ? " with TLS" : "");
    set_state(p, POP3_STATE_GREETING);
    update_expect(p);
}

static void on_net_data(struct net_conn *c, const char *data, size_t len, void *arg)
{
    struct pop3 *p = arg;
    if (p->paused || p->replay_due) {
        sbuf_add(&p->pending, data, len);
        return;
    }
    process_input(p, data, len);
}

static void on_net_tls(struct net_conn *c, void *arg)
{
    struct pop3 *p = arg;
    enter(p);
    p->tls_active = true;
    log_debug("%s: TLS started (%s)", p->name,
              net_tls_version(c) != NULL ? net_tls_version(c) : "?");
    /* RFC 2595 section 4: forget what was learnt in plaintext and ask
     * again. The greeting's APOP timestamp is kept: there is no second
     * greeting, APOP after STLS is legitimate, and a timestamp altered in
     * plaintext can only make the login fail (the digest goes over TLS). */
    pop3_parser_reset(p->parser);
    p->caps = 0;
    set_state(p, POP3_STATE_CAPA);
    send_capa(p);
    leave(p);
}

static void on_net_error(struct net_conn *c, int err, const char *msg, void *arg)
{
    struct pop3 *p = arg;
    if (p->state == POP3_STATE_CLOSED && p->sent_head == NULL) {
        /* The server closes the connection after QUIT. */
        return;
    }
    /* A certificate that fails verification or the pin, or a port that
     * does not speak TLS, stays so until the user acts: trying later is no
     * answer. */
    enum pop3_errkind kind =
        net_err_permanent(err) ? POP3_ERRKIND_PERMANENT : POP3_ERRKIND_TRANSIENT;
    const char *what = "";
    if (err == NET_ECLOSED && pop3_parser_busy(p->parser)) {
        what = " in the middle of a reply";
    }
    fail(p, err, kind, "%s%s", msg, what);
}

/* ---- public API ---------------------------------------------------------- */

int pop3_connect(uv_loop_t *loop, const struct pop3_opts *opts, const struct pop3_cb *cb, void *arg,
                 struct pop3 **p_r)
{
    if (opts->net.host == NULL || opts->user == NULL || opts->secret == NULL) {
        return -EINVAL;
    }
    struct pop3 *p = xcalloc(1, sizeof(*p));
    p->loop = loop;
    p->cb = *cb;
    p->arg = arg;
    p->host = xstrdup(opts->net.host);
    p->port = opts->net.port;
    p->where = xasprintf("%s:%u", p->host, p->port);
    p->name = xasprintf("pop3 %s", opts->log_name != NULL ? opts->log_name : p->host);
    p->user = xstrdup(opts->user);
    p->secret = xstrdup(opts->secret);
    p->auth = opts->auth;
    p->allow_plaintext = opts->allow_plaintext;
    p->tls_mode = opts->net.tls;
    p->depth_max = opts->pipeline_depth != 0 ? opts->pipeline_depth : DEFAULT_PIPELINE_DEPTH;
    p->parser = pop3_parser_new(opts->limits);
    p->state = POP3_STATE_CONNECTING;
    uv_timer_init(loop, &p->replay);
    p->replay.data = p;

    /* The greeting is the answer to no command: it is queued as a pseudo-command so its answer is
     * matched like any other. */
    struct cmd *g = xcalloc(1, sizeof(*g));
    g->trace = xstrdup("(greeting)");
    g->expect = POP3_EXPECT_SINGLE;
    g->done = on_greeting;
    p->sent_head = p->sent_tail = g;
    p->nsent = 1;
    pop3_parser_expect(p->parser, POP3_EXPECT_SINGLE);

    static const struct net_cb ncb = {
        .on_connect = on_net_connect,
        .on_data = on_net_data,
        .on_tls = on_net_tls,
        .on_error = on_net_error,
    };
    int r = net_connect(loop, &opts->net, &ncb, p, &p->c);
    if (r < 0) {
        p->c = NULL;
        p->freed = true;
        really_free(p);
        return r;
    }
    *p_r = p;
    return 0;
}

static void on_replay_closed(uv_handle_t *h)
{
    free(h->data);
}

static void really_free(struct pop3 *p)
{
    struct cmd *lists[2] = {p->sent_head, p->queue_head};
    for (int i = 0; i < 2; i++) {
        while (lists[i] != NULL) {
            struct cmd *next = lists[i]->next;
            free_cmd(lists[i]);
            lists[i] = next;
        }
    }
    p->sent_head = p->queue_head = NULL;
    if (p->secret != NULL) {
        explicit_bzero(p->secret, strlen(p->secret));
    }
    if (p->sasl_resp != NULL) {
        explicit_bzero(p->sasl_resp, strlen(p->sasl_resp));
    }
    free(p->sasl_resp);
    free(p->secret);
    free(p->user);
    free(p->host);
    free(p->where);
    free(p->name);
    free(p->timestamp);
    free(p->later_msg);
    sbuf_free(&p->pending);
    pop3_parser_free(p->parser);
    uv_close((uv_handle_t *)&p->replay, on_replay_closed);
}

void pop3_free(struct pop3 *p)
{
    if (p == NULL || p->freed) {
        return;
    }
    p->freed = true;
    if (p->c != NULL) {
        net_close(p->c);
        p->c = NULL;
    }
    if (p->depth == 0) {
        really_free(p);
    }
}

enum pop3_state pop3_get_state(const struct pop3 *p)
{
    return p->state;
}

unsigned pop3_caps(const struct pop3 *p)
{
    return p->caps;
}

bool pop3_capa_known(const struct pop3 *p)
{
    return p->capa_known;
}

struct net_conn *pop3_conn(const struct pop3 *p)
{
    return p->state == POP3_STATE_FAILED ? NULL : p->c;
}

size_t pop3_pending(const struct pop3 *p)
{
    return p->nsent + p->nqueued;
}

int pop3_stat(struct pop3 *p, pop3_done_cb done, void *arg)
{
    return queue_cmd(p, new_cmd(POP3_EXPECT_SINGLE, NULL, done, arg, NULL, "STAT"));
}

int pop3_uidl(struct pop3 *p, pop3_chunk_cb line, pop3_done_cb done, void *arg)
{
    return queue_cmd(p, new_cmd(POP3_EXPECT_LINES, line, done, arg, NULL, "UIDL"));
}

int pop3_list(struct pop3 *p, pop3_chunk_cb line, pop3_done_cb done, void *arg)
{
    return queue_cmd(p, new_cmd(POP3_EXPECT_LINES, line, done, arg, NULL, "LIST"));
}

int pop3_top(struct pop3 *p, unsigned msgno, unsigned lines, pop3_chunk_cb data, pop3_done_cb done,
             void *arg)
{
    if (msgno == 0) {
        return -EINVAL;
    }
    return queue_cmd(p,
                     new_cmd(POP3_EXPECT_DATA, data, done, arg, NULL, "TOP %u %u", msgno, lines));
}

int pop3_retr(struct pop3 *p, unsigned msgno, pop3_chunk_cb data, pop3_done_cb done, void *arg)
{
    if (msgno == 0) {
        return -EINVAL;
    }
    return queue_cmd(p, new_cmd(POP3_EXPECT_DATA, data, done, arg, NULL, "RETR %u", msgno));
}

int pop3_dele(struct pop3 *p, unsigned msgno, pop3_done_cb done, void *arg)
{
    if (msgno == 0) {
        return -EINVAL;
    }
    return queue_cmd(p, new_cmd(POP3_EXPECT_SINGLE, NULL, done, arg, NULL, "DELE %u", msgno));
}

int pop3_rset(struct pop3 *p, pop3_done_cb done, void *arg)
{
    return queue_cmd(p, new_cmd(POP3_EXPECT_SINGLE, NULL, done, arg, NULL, "RSET"));
}

int pop3_noop(struct pop3 *p, pop3_done_cb done, void *arg)
{
    return queue_cmd(p, new_cmd(POP3_EXPECT_SINGLE, NULL, done, arg, NULL, "NOOP"));
}

int pop3_quit(struct pop3 *p, pop3_done_cb done, void *arg)
{
    struct cmd *c = new_cmd(POP3_EXPECT_SINGLE, NULL, done, arg, NULL, "QUIT");
    c->is_quit = true;
    return queue_cmd(p, c);
}

bool pop3_parse_stat(const char *text, unsigned *count_r, uint64_t *size_r)
{
    char *end;
    errno = 0;
    unsigned long n = strtoul(text, &end, 10);
    if (end == text || *end != ' ' || errno != 0 || n > UINT32_MAX) {
        return false;
    }
    const char *s = end + 1;
    unsigned long long sz = strtoull(s, &end, 10);
    if (end == s || !isdigit((unsigned char)*s) || errno != 0 || (*end != '\0' && *end != ' ')) {
        return false;
    }
    *count_r = (unsigned)n;
    *size_r = sz;
    return true;
}

bool pop3_parse_listing(const char *line, unsigned *msgno_r, const char **rest_r)
{
    if (!isdigit((unsigned char)line[0])) {
        return false;
    }
    /* Plain digits: strtoul's locale and base machinery cost more than
     * the rest of a listing line, and a listing has one line per message. */
    const char *end = line;
    uint64_t n = 0;
    while (*end >= '0' && *end <= '9') {
        n = n * 10 + (uint64_t)(*end - '0');
        if (n > UINT32_MAX) {
            return false;
        }
        end++;
    }
    if (n == 0 || (*end != ' ' && *end != '\t')) {
        return false;
    }
    while (*end == ' ' || *end == '\t') {
        end++;
    }
    *msgno_r = (unsigned)n;
    *rest_r = end;
    return true;
}
