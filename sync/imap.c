/* IMAP client: connection state machine, command queue and writer, and
 * response dispatch. Command builders and their result handling are in
 * imap_cmd.c; pure helpers in imap_util.c. */
#include "sync/imap.h"
#include "sync/imap_cmd.h"
#include "sync/imap_int.h"

#include "core/log.h"
#include "core/util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const imap_state_names[] = {
    [IMAP_STATE_CONNECTING] = "connecting",
    [IMAP_STATE_GREETING] = "greeting",
    [IMAP_STATE_CAPABILITY] = "capability",
    [IMAP_STATE_STARTTLS] = "starttls",
    [IMAP_STATE_TLS_HANDSHAKE] = "tls-handshake",
    [IMAP_STATE_AUTHENTICATE] = "authenticate",
    [IMAP_STATE_POSTAUTH] = "postauth",
    [IMAP_STATE_COMPRESS] = "compress",
    [IMAP_STATE_ENABLE] = "enable",
    [IMAP_STATE_READY] = "ready",
    [IMAP_STATE_IDLE] = "idle",
    [IMAP_STATE_LOGOUT] = "logout",
    [IMAP_STATE_CLOSED] = "closed",
    [IMAP_STATE_FAILED] = "failed",
};

const char *imap_state_name(enum imap_state s)
{
    if ((size_t)s < ARRAY_SIZE(imap_state_names) && imap_state_names[s] != NULL) {
        return imap_state_names[s];
    }
    return "?";
}

/* The one place where the state changes, so that the debug log shows every
 * transition. */
void imap_set_state(struct imap *im, enum imap_state s)
{
    if (im->state == s) {
        return;
    }
    log_debug("imap %s: %s -> %s", im->name, imap_state_name(im->state), imap_state_name(s));
    im->state = s;
}

bool imap_dead(const struct imap *im)
{
    return im->freeing || im->state == IMAP_STATE_FAILED;
}

/* ---- Capabilities ---- */

static const struct {
    const char *name;
    unsigned bit;
} cap_names[] = {
    {"IMAP4REV1", IMAP_CAP_IMAP4REV1},
    {"IMAP4REV2", IMAP_CAP_IMAP4REV2},
    {"STARTTLS", IMAP_CAP_STARTTLS},
    {"LOGINDISABLED", IMAP_CAP_LOGINDISABLED},
    {"AUTH=PLAIN", IMAP_CAP_AUTH_PLAIN},
    {"AUTH=XOAUTH2", IMAP_CAP_AUTH_XOAUTH2},
    {"AUTH=OAUTHBEARER", IMAP_CAP_AUTH_OAUTHBEARER},
    {"SASL-IR", IMAP_CAP_SASL_IR},
    {"ID", IMAP_CAP_ID},
    {"ENABLE", IMAP_CAP_ENABLE},
    {"CONDSTORE", IMAP_CAP_CONDSTORE},
    {"QRESYNC", IMAP_CAP_QRESYNC},
    {"UTF8=ACCEPT", IMAP_CAP_UTF8_ACCEPT},
    {"COMPRESS=DEFLATE", IMAP_CAP_COMPRESS},
    {"LITERAL+", IMAP_CAP_LITERALPLUS},
    {"LITERAL-", IMAP_CAP_LITERALMINUS},
    {"IDLE", IMAP_CAP_IDLE},
    {"UIDPLUS", IMAP_CAP_UIDPLUS},
    {"MOVE", IMAP_CAP_MOVE},
    {"ESEARCH", IMAP_CAP_ESEARCH},
    {"LIST-EXTENDED", IMAP_CAP_LIST_EXTENDED},
    {"LIST-STATUS", IMAP_CAP_LIST_STATUS},
    {"SPECIAL-USE", IMAP_CAP_SPECIAL_USE},
    {"NOTIFY", IMAP_CAP_NOTIFY},
    {"OBJECTID", IMAP_CAP_OBJECTID},
};

/* Replaces the capability set with the atoms in args (from "* CAPABILITY"
 * or a [CAPABILITY ...] code). */
static void set_caps(struct imap *im, const struct imap_arg *args, size_t n)
{
    unsigned caps = 0;
    struct sbuf sb = {0};
    for (size_t i = 0; i < n; i++) {
        const char *s = imap_arg_str(&args[i]);
        if (s == NULL || args[i].type != IMAP_ARG_ATOM) {
            continue;
        }
        if (sb.len > 0) {
            sbuf_addc(&sb, ' ');
        }
        sbuf_adds(&sb, s);
        for (size_t k = 0; k < ARRAY_SIZE(cap_names); k++) {
            if (strcasecmp(s, cap_names[k].name) == 0) {
                caps |= cap_names[k].bit;
            }
        }
    }
    /* QRESYNC implies CONDSTORE (RFC 7162 §3.2.3); IMAP4rev2 includes
     * LIST-EXTENDED and has no LSUB (RFC 9051 §7.2.2). */
    if (caps & IMAP_CAP_QRESYNC) {
        caps |= IMAP_CAP_CONDSTORE;
    }
    if (caps & IMAP_CAP_IMAP4REV2) {
        caps |= IMAP_CAP_LIST_EXTENDED;
    }
    free(im->caps_str);
    im->caps_str = sbuf_detach(&sb);
    im->caps = caps;
    im->caps_known = true;
    im->caps_gen++;
    log_debug("imap %s: capabilities: %s", im->name, im->caps_str);
}

/* ---- Errors ---- */

/* Reports a fatal error: every command still queued or in flight completes
 * with err, then on_error. Nothing is called after that. */
void imap_fail(struct imap *im, int err, const char *fmt, ...)
{
    if (imap_dead(im) || im->state == IMAP_STATE_CLOSED) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    free(im->error);
    im->error = msg;
    im->error_code = err;
    log_debug("imap %s: error: %s", im->name, msg);
    imap_set_state(im, IMAP_STATE_FAILED);
    if (im->net != NULL) {
        net_close(im->net);
        im->net = NULL;
    }
    imap_cmd_abort_all(im, err, msg);
    if (im->freeing) {
        return;
    }
    if (im->cb.on_error != NULL) {
        im->cb.on_error(im, err, msg, im->arg);
    }
}

/* Reports a fatal error from the loop rather than from inside the current
 * call: errors found while writing can happen inside an imap_* call, and
 * the owner's callbacks must never run from there. Nothing more is
 * written meanwhile. */
static void fail_later(struct imap *im, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail_later(struct imap *im, int err, const char *fmt, ...)
{
    if (im->deferred_msg != NULL || imap_dead(im)) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    im->deferred_msg = xvasprintf(fmt, ap);
    va_end(ap);
    im->deferred_err = err;
    im->wblocked = true;
    imap_defer(im);
}

/* ---- Writer ---- */

static bool flush_out(struct imap *im)
{
    if (im->out.len == 0) {
        return true;
    }
    if (im->net == NULL) {
        return false;
    }
    int r = net_write(im->net, im->out.buf, im->out.len);
    if (r == -ENOBUFS) {
        im->wblocked = true;
        return false;
    }
    if (r < 0) {
        fail_later(im, r, "%s: write failed: %s", im->hostport, uv_strerror(r));
        return false;
    }
    /* The bytes may hold a password: wipe before the buffer is reused. */
    explicit_bzero(im->out.buf, im->out.len);
    sbuf_reset(&im->out);
    return true;
}

/* Bytes of output collected before they are handed to net_write. */
#define OUT_CHUNK (256 * 1024)

static bool nonsync_literal(const struct imap *im, uint64_t size)
{
    if (im->caps & IMAP_CAP_LITERALPLUS) {
        return true;
    }
    return (im->caps & IMAP_CAP_LITERALMINUS) && size <= 4096;
}

/* Logs a command as it goes out, each literal announced in the form the
 * writer will use ({N} or {N+}). */
static void trace_command(struct imap *im, const struct imap_cmd *c)
{
    struct sbuf t = {0};
    const char *p = c->trace.buf != NULL ? c->trace.buf : "";
    for (;;) {
        const char *mark = strchr(p, IMAP_TRACE_LITERAL[0]);
        if (mark == NULL) {
            sbuf_adds(&t, p);
            break;
        }
        sbuf_add(&t, p, (size_t)(mark - p));
        const char *brace = mark;
        while (brace > c->trace.buf && brace[-1] >= '0' && brace[-1] <= '9') {
            brace--;
        }
        uint64_t size = strtoull(brace, NULL, 10);
        if (nonsync_literal(im, size)) {
            sbuf_addc(&t, '+');
        }
        p = mark + 1;
    }
    log_trace("imap %s: C: %s %s", im->name, c->tag, t.buf != NULL ? t.buf : "");
    sbuf_free(&t);
}

/* Reads the next piece of an APPEND body into out. Returns 1 when more is
 * to come, 0 when the body is complete, -1 after a fatal error. */
static int write_source(struct imap *im, struct imap_cmd *c, struct imap_part *p)
{
    uint64_t left = p->size - c->src_sent;
    if (left == 0) {
        return 0;
    }
    char raw[32768];
    size_t want = sizeof(raw) / 2; /* LF to CRLF can double it */
    if (!c->app.lf_to_crlf) {
        want = sizeof(raw);
    }
    if (want > left) {
        want = (size_t)left;
    }
    ssize_t n;
    if (c->app.fd >= 0) {
        do {
            n = read(c->app.fd, raw, want);
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            n = -errno;
        }
    } else {
        n = c->app.read(c->app.read_arg, raw, want);
    }
    if (n < 0) {
        fail_later(im, (int)n, "%s: reading the message to append failed: %s", im->hostport,
                   strerror((int)-n));
        return -1;
    }
    if (n == 0) {
        fail_later(im, -EIO,
                   "%s: the message to append ended after %llu of %llu bytes; the connection "
                   "cannot continue",
                   im->hostport, (unsigned long long)c->src_sent, (unsigned long long)p->size);
        return -1;
    }
    if (c->app.fd >= 0 && c->app.lf_to_crlf) {
        char conv[sizeof(raw) * 2];
        size_t m = 0;
        for (ssize_t i = 0; i < n; i++) {
            if (raw[i] == '\n' && !c->src_prev_cr) {
                conv[m++] = '\r';
            }
            conv[m++] = raw[i];
            c->src_prev_cr = raw[i] == '\r';
        }
        if (m > left) {
            fail_later(im, -EIO,
                       "%s: the message to append is longer than the %llu bytes announced; the "
                       "connection cannot continue",
                       im->hostport, (unsigned long long)p->size);
            return -1;
        }
        sbuf_add(&im->out, conv, m);
        c->src_sent += m;
    } else {
        if ((uint64_t)n > left) {
            n = (ssize_t)left;
        }
        sbuf_add(&im->out, raw, (size_t)n);
        c->src_sent += (uint64_t)n;
    }
    return c->src_sent < p->size ? 1 : 0;
}

/* Writes as much of the current command as possible. Returns true when the
 * command is completely written. */
static bool write_parts(struct imap *im)
{
    struct imap_cmd *c = im->wcmd;
    while (c->wpart < c->nparts) {
        struct imap_part *p = &c->parts[c->wpart];
        switch (p->type) {
        case IMAP_PART_TEXT:
            sbuf_add(&im->out, p->data, p->len);
            c->wpart++;
            break;
        case IMAP_PART_LITERAL:
            if (!p->announced) {
                bool ns = nonsync_literal(im, p->size);
                sbuf_addf(&im->out, "{%llu%s}\r\n", (unsigned long long)p->size, ns ? "+" : "");
                p->announced = true;
                if (!ns) {
                    im->wait_cont = true;
                    return false;
                }
            }
            if (im->wait_cont) {
                return false;
            }
            if (!p->source) {
                sbuf_add(&im->out, p->data, p->len);
                c->wpart++;
                break;
            }
            for (;;) {
                if (im->out.len >= OUT_CHUNK && !flush_out(im)) {
                    return false;
                }
                int r = write_source(im, c, p);
                if (r < 0) {
                    return false;
                }
                if (r == 0) {
                    break;
                }
            }
            c->wpart++;
            break;
        case IMAP_PART_CONT:
            if (!p->announced) {
                p->announced = true;
                im->wait_cont = true;
                return false;
            }
            if (im->wait_cont) {
                return false;
            }
            sbuf_add(&im->out, p->data, p->len);
            log_trace("imap %s: C: <redacted>", im->name);
            c->wpart++;
            break;
        }
        if (im->out.len >= OUT_CHUNK && !flush_out(im)) {
            return c->wpart >= c->nparts && !imap_dead(im);
        }
    }
    return true;
}

static void update_expect(struct imap *im)
{
    if (im->net == NULL) {
        return;
    }
    /* The login sequence always waits for the server; later only while a
     * command is outstanding, and never during IDLE or while the owner
     * holds reading paused. */
    bool done_sent = im->idling && im->idle_stop_requested;
    bool expecting =
        im->state < IMAP_STATE_READY || (im->inflight != NULL && (!im->idling || done_sent));
    /* DONE and NOOP are answered at once by a live server: a connection
     * that leaves them unanswered for IMAP_QUICK_REPLY_MS is dead (a NAT
     * box dropped the flow, a half-open TCP link), found well before the
     * general timeout. Anything else in flight keeps the full timeout. */
    bool quick = done_sent;
    if (!quick && im->inflight != NULL) {
        quick = true;
        for (const struct imap_cmd *c = im->inflight; c != NULL; c = c->next) {
            if (c->kind != IMAP_CMD_NOOP) {
                quick = false;
                break;
            }
        }
    }
    net_expect_within(
        im->net, expecting && !im->paused,
        quick ? (im->opts.quick_reply_ms ? im->opts.quick_reply_ms : IMAP_QUICK_REPLY_MS) : 0);
}

/* Sends queued commands while the pipeline has room. */
void imap_pump(struct imap *im)
{
    if (im->net == NULL || imap_dead(im) || im->state == IMAP_STATE_CONNECTING ||
        im->state == IMAP_STATE_TLS_HANDSHAKE || im->pumping) {
        return;
    }
    im->pumping = true;
    if (im->wblocked) {
        goto out;
    }
    for (;;) {
        if (im->wcmd == NULL) {
            struct imap_cmd *c = imap_cmd_next(im);
            if (c == NULL) {
                break;
            }
            snprintf(c->tag, sizeof(c->tag), "A%u", ++im->tagseq);
            imap_cmd_inflight_add(im, c);
            im->wcmd = c;
            sbuf_addf(&im->out, "%s ", c->tag);
            if (log_enabled(LOG_LEVEL_TRACE)) {
                trace_command(im, c);
            }
        }
        if (!write_parts(im)) {
            break;
        }
        im->wcmd = NULL;
        if (imap_dead(im)) {
            break;
        }
    }
    if (!imap_dead(im)) {
        flush_out(im);
    }
out:
    im->pumping = false;
    if (!imap_dead(im)) {
        update_expect(im);
    }
}

/* Raw text outside any command (DONE, an empty SASL response). */
void imap_send_raw(struct imap *im, const char *s, const char *trace)
{
    sbuf_adds(&im->out, s);
    log_trace("imap %s: C: %s", im->name, trace);
    flush_out(im);
    if (!imap_dead(im)) {
        update_expect(im); /* a DONE waits for its answer */
    }
}

/* ---- Login sequence ---- */

static void start_auth(struct imap *im);
static void post_auth(struct imap *im);

static void after_caps(struct imap *im)
{
    if (im->opts.net.tls == NET_TLS_LATER && !im->tls_active) {
        if (!(im->caps & IMAP_CAP_STARTTLS)) {
            imap_fail(im, IMAP_ENOTLS,
                      "%s: server does not offer STARTTLS; refusing to continue without TLS (tls: "
                      "starttls)",
                      im->hostport);
            return;
        }
        imap_set_state(im, IMAP_STATE_STARTTLS);
        imap_cmd_internal(im, IMAP_CMD_STARTTLS);
        return;
    }
    if (im->authenticated) {
        post_auth(im);
        return;
    }
    start_auth(im);
}

static void start_auth(struct imap *im)
{
    if (!im->tls_active && !im->opts.allow_plaintext) {
        imap_fail(im, IMAP_ENOTLS,
                  "%s: refusing to send the password over a connection without TLS (set "
                  "allow_plaintext to permit it)",
                  im->hostport);
        return;
    }
    enum imap_cmd_kind kind;
    switch (im->opts.auth) {
    case IMAP_AUTH_AUTO:
        if (im->caps & IMAP_CAP_AUTH_PLAIN) {
            kind = IMAP_CMD_AUTH_PLAIN;
        } else if (!(im->caps & IMAP_CAP_LOGINDISABLED)) {
            kind = IMAP_CMD_LOGIN;
        } else {
            imap_fail(im, IMAP_EAUTH,
                      "login failed for %s at %s: the server disables LOGIN and offers no "
                      "supported authentication mechanism",
                      im->opts.user, im->opts.net.host);
            return;
        }
        break;
    case IMAP_AUTH_PLAIN:
        kind = IMAP_CMD_AUTH_PLAIN;
        break;
    case IMAP_AUTH_LOGIN:
        if (im->caps & IMAP_CAP_LOGINDISABLED) {
            imap_fail(im, IMAP_EAUTH, "login failed for %s at %s: the server disables LOGIN",
                      im->opts.user, im->opts.net.host);
            return;
        }
        kind = IMAP_CMD_LOGIN;
        break;
    case IMAP_AUTH_XOAUTH2:
        kind = IMAP_CMD_AUTH_XOAUTH2;
        break;
    case IMAP_AUTH_OAUTHBEARER:
        kind = IMAP_CMD_AUTH_OAUTHBEARER;
        break;
    default:
        kind = IMAP_CMD_LOGIN;
        break;
    }
    static const struct {
        enum imap_cmd_kind kind;
        unsigned cap;
        const char *name;
    } need[] = {
        {IMAP_CMD_AUTH_PLAIN, IMAP_CAP_AUTH_PLAIN, "PLAIN"},
        {IMAP_CMD_AUTH_XOAUTH2, IMAP_CAP_AUTH_XOAUTH2, "XOAUTH2"},
        {IMAP_CMD_AUTH_OAUTHBEARER, IMAP_CAP_AUTH_OAUTHBEARER, "OAUTHBEARER"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(need); i++) {
        if (need[i].kind == kind && !(im->caps & need[i].cap)) {
            imap_fail(im, IMAP_EAUTH,
                      "login failed for %s at %s: the server does not offer AUTH=%s", im->opts.user,
                      im->opts.net.host, need[i].name);
            return;
        }
    }
    im->auth_caps_gen = im->caps_gen;
    imap_set_state(im, IMAP_STATE_AUTHENTICATE);
    imap_cmd_internal(im, kind);
}

static void enable_stage(struct imap *im)
{
    imap_set_state(im, IMAP_STATE_ENABLE);
    im->setup_pending = 0;
    if ((im->caps & IMAP_CAP_ID) && !im->opts.no_id) {
        imap_cmd_internal(im, IMAP_CMD_ID);
        im->setup_pending++;
    }
    if ((im->caps & IMAP_CAP_ENABLE) &&
        (im->caps & (IMAP_CAP_CONDSTORE | IMAP_CAP_QRESYNC | IMAP_CAP_UTF8_ACCEPT))) {
        imap_cmd_internal(im, IMAP_CMD_ENABLE);
        im->setup_pending++;
    }
    imap_cmd_internal(im, IMAP_CMD_DELIM);
    im->setup_pending++;
}

static void post_auth(struct imap *im)
{
    if (!im->caps_known || im->caps_gen == im->auth_caps_gen) {
        /* Capabilities may change after login and the OK carried none. */
        if (im->state != IMAP_STATE_POSTAUTH) {
            imap_set_state(im, IMAP_STATE_POSTAUTH);
            imap_cmd_internal(im, IMAP_CMD_CAPABILITY);
            return;
        }
    }
    if (im->opts.compress && (im->caps & IMAP_CAP_COMPRESS) && !im->compressed &&
        !im->compress_refused && (im->opts.compress_local || !net_peer_is_local(im->net))) {
        imap_set_state(im, IMAP_STATE_COMPRESS);
        imap_cmd_internal(im, IMAP_CMD_COMPRESS);
        return;
    }
    enable_stage(im);
}

/* A refused login, told apart by its response code (RFC 5530): a server
 * that is down for maintenance or busy with another session has not judged
 * the credentials, so that must not read as a wrong password. */
static void login_failed(struct imap *im, const struct imap_response *resp)
{
    const char *code = resp->code;
    const char *text = resp->text[0] ? resp->text : "no reason given";
    if (code != NULL && (strcmp(code, "UNAVAILABLE") == 0 || strcmp(code, "INUSE") == 0)) {
        imap_fail(im, IMAP_EUNAVAIL,
                  "%s refused the login for now ([%s] %s); the password was not checked, "
                  "try again later",
                  im->opts.net.host, code, text);
        return;
    }
    if (code != NULL && strcmp(code, "LIMIT") == 0) {
        imap_fail(im, IMAP_ELIMIT,
                  "%s refused another connection ([LIMIT] %s); the password was not checked",
                  im->opts.net.host, text);
        return;
    }
    const char *hint = "";
    if (code != NULL && strcmp(code, "EXPIRED") == 0) {
        hint = "; the password has expired: renew it with the provider";
    } else if (code != NULL && strcmp(code, "PRIVACYREQUIRED") == 0) {
        hint = "; the server wants TLS for this login: set tls: implicit or starttls";
    } else if (code != NULL && strcmp(code, "AUTHORIZATIONFAILED") == 0) {
        hint = "; the credentials are valid but may not use this mailbox";
    }
    /* The code stays in the message (also AUTHENTICATIONFAILED): the
     * doctor tells a judged refusal from an unexplained one by it. */
    if (code != NULL) {
        imap_fail(im, IMAP_EAUTH, "login failed for %s at %s: [%s] %s%s", im->opts.user,
                  im->opts.net.host, code, text, hint);
    } else {
        imap_fail(im, IMAP_EAUTH, "login failed for %s at %s: %s", im->opts.user, im->opts.net.host,
                  text);
    }
}

static void become_ready(struct imap *im)
{
    if (im->delim_unknown) {
        im->delim = '/';
    }
    /* Without ENABLE, CONDSTORE is switched on by its first use (RFC 7162
     * §3.1): SELECT ... (CONDSTORE) or a MODSEQ item. */
    if (im->caps & IMAP_CAP_CONDSTORE) {
        im->condstore = true;
    }
    imap_set_state(im, IMAP_STATE_READY);
    log_debug("imap %s: ready (condstore %d, qresync %d, utf8 %d, compress %d, delimiter '%c')",
              im->name, im->condstore, im->qresync, im->utf8, im->compressed,
              im->delim ? im->delim : ' ');
    if (im->cb.on_ready != NULL) {
        im->cb.on_ready(im, im->arg);
    }
    if (!imap_dead(im)) {
        imap_pump(im);
    }
}

/* A login-sequence command finished with the tagged response resp. */
void imap_internal_done(struct imap *im, struct imap_cmd *c, const struct imap_response *resp)
{
    bool ok = resp->status == IMAP_STATUS_OK;
    switch (c->kind) {
    case IMAP_CMD_CAPABILITY:
        if (!ok || !im->caps_known) {
            imap_fail(im, IMAP_ECMD, "%s: CAPABILITY failed: %s", im->hostport,
                      ok ? "no capabilities listed" : resp->text);
            return;
        }
        if (im->state == IMAP_STATE_POSTAUTH) {
            post_auth(im);
        } else {
            after_caps(im);
        }
        return;
    case IMAP_CMD_STARTTLS:
        if (!ok) {
            imap_fail(im, IMAP_ENOTLS, "%s: STARTTLS failed: %s", im->hostport, resp->text);
            return;
        }
        /* The caller (the input loop) checks for injected plaintext and
         * starts TLS; nothing more may be parsed before that. */
        im->starttls_ok = true;
        return;
    case IMAP_CMD_LOGIN:
    case IMAP_CMD_AUTH_PLAIN:
    case IMAP_CMD_AUTH_XOAUTH2:
    case IMAP_CMD_AUTH_OAUTHBEARER:
        if (!ok) {
            login_failed(im, resp);
            return;
        }
        im->authenticated = true;
        log_debug("imap %s: logged in as %s", im->name, im->opts.user);
        post_auth(im);
        return;
    case IMAP_CMD_COMPRESS:
        if (ok) {
            int r = net_start_compress(im->net);
            if (r < 0) {
                imap_fail(im, r, "%s: could not start compression: %s", im->hostport,
                          uv_strerror(r));
                return;
            }
            im->compressed = true;
        } else {
            /* Not fatal: go on uncompressed, and do not ask again. */
            log_debug("imap %s: COMPRESS refused: %s", im->name, resp->text);
            im->compress_refused = true;
        }
        enable_stage(im);
        return;
    case IMAP_CMD_ID:
    case IMAP_CMD_ENABLE:
    case IMAP_CMD_DELIM:
        if (!ok) {
            log_debug("imap %s: %s failed: %s", im->name, imap_cmd_kind_name(c->kind), resp->text);
        }
        if (c->kind == IMAP_CMD_DELIM && !ok) {
            im->delim_unknown = true;
        }
        if (--im->setup_pending == 0) {
            become_ready(im);
        }
        return;
    default:
        return;
    }
}

/* ---- Untagged responses ---- */

static void emit(struct imap *im, const struct imap_event *ev)
{
    if (im->cb.on_event != NULL && !imap_dead(im)) {
        im->cb.on_event(im, ev, im->arg);
    }
}

void imap_emit_text(struct imap *im, enum imap_event_type type, const char *text)
{
    struct imap_event ev = {.type = type, .text = text};
    emit(im, &ev);
}

static void handle_status_code(struct imap *im, const struct imap_response *r)
{
    if (r->code == NULL) {
        return;
    }
    if (strcmp(r->code, "CAPABILITY") == 0) {
        set_caps(im, r->code_args, r->ncode_args);
    } else if (strcmp(r->code, "ALERT") == 0) {
        imap_emit_text(im, IMAP_EV_ALERT, r->text);
    }
}

static void handle_untagged_status(struct imap *im, const struct imap_response *r)
{
    handle_status_code(im, r);
    if (imap_dead(im)) {
        return;
    }
    switch (r->status) {
    case IMAP_STATUS_OK:
        imap_cmd_untagged_ok(im, r);
        break;
    case IMAP_STATUS_NO:
    case IMAP_STATUS_BAD:
        if (r->code == NULL || strcmp(r->code, "ALERT") != 0) {
            imap_emit_text(im, IMAP_EV_NOTICE, r->text);
        }
        break;
    case IMAP_STATUS_BYE:
        imap_emit_text(im, IMAP_EV_BYE, r->text);
        if (imap_dead(im)) {
            return;
        }
        if (im->state == IMAP_STATE_LOGOUT) {
            im->got_bye = true;
            return;
        }
        imap_fail(im, IMAP_EBYE, "%s: server closed the connection: %s", im->hostport,
                  r->text[0] ? r->text : "BYE");
        break;
    case IMAP_STATUS_PREAUTH:
        imap_fail(im, IMAP_EPROTO, "%s: unexpected PREAUTH", im->hostport);
        break;
    default:
        break;
    }
}

static void handle_greeting(struct imap *im, const struct imap_response *r)
{
    if (r->kind != IMAP_RESP_UNTAGGED ||
        (r->status != IMAP_STATUS_OK && r->status != IMAP_STATUS_PREAUTH &&
         r->status != IMAP_STATUS_BYE)) {
        imap_fail(im, IMAP_EPROTO, "%s: the server's greeting is not an IMAP greeting",
                  im->hostport);
        return;
    }
    if (r->status == IMAP_STATUS_BYE) {
        imap_fail(im, IMAP_EBYE, "%s: server refused the connection: %s", im->hostport,
                  r->text[0] ? r->text : "BYE");
        return;
    }
    handle_status_code(im, r);
    if (imap_dead(im)) {
        return;
    }
    if (r->status == IMAP_STATUS_PREAUTH) {
        if (im->opts.net.tls == NET_TLS_LATER) {
            imap_fail(im, IMAP_ENOTLS,
                      "%s: server sent PREAUTH, so STARTTLS is impossible; refusing to continue "
                      "without TLS (tls: starttls)",
                      im->hostport);
            return;
        }
        im->authenticated = true;
        im->auth_caps_gen = im->caps_known ? im->caps_gen - 1 : im->caps_gen;
    }
    if (im->caps_known) {
        if (im->authenticated) {
            post_auth(im);
        } else {
            after_caps(im);
        }
        return;
    }
    imap_set_state(im, im->authenticated ? IMAP_STATE_POSTAUTH : IMAP_STATE_CAPABILITY);
    imap_cmd_internal(im, IMAP_CMD_CAPABILITY);
}

static void handle_continuation(struct imap *im, const struct imap_response *r)
{
    if (im->wait_cont) {
        im->wait_cont = false;
        imap_pump(im);
        return;
    }
    struct imap_cmd *c = imap_cmd_inflight_kind(im, IMAP_CMD_IDLE);
    if (c != NULL && !im->idling) {
        im->idling = true;
        imap_set_state(im, IMAP_STATE_IDLE);
        /* Commands queued behind the IDLE end it at once. */
        if (im->idle_stop_requested || im->uq != NULL) {
            im->idle_stop_requested = true;
            imap_send_raw(im, "DONE\r\n", "DONE");
        }
        update_expect(im);
        return;
    }
    if (im->state == IMAP_STATE_AUTHENTICATE) {
        /* A SASL challenge after the initial response is XOAUTH2's error
         * report: the client answers with an empty line and gets the
         * tagged NO. */
        imap_send_raw(im, "\r\n", "");
        return;
    }
    imap_fail(im, IMAP_EPROTO, "%s: unexpected continuation request from the server: %s",
              im->hostport, r->text);
}

static void handle_untagged(struct imap *im, const struct imap_response *r)
{
    if (r->status != IMAP_STATUS_NONE) {
        handle_untagged_status(im, r);
        return;
    }
    if (r->nargs == 0) {
        return;
    }
    const struct imap_arg *a = r->args;
    if (imap_arg_is_atom(&a[0], "CAPABILITY")) {
        set_caps(im, a + 1, r->nargs - 1);
        return;
    }
    if (imap_arg_is_atom(&a[0], "ENABLED")) {
        for (size_t i = 1; i < r->nargs; i++) {
            if (imap_arg_is_atom(&a[i], "CONDSTORE")) {
                im->condstore = true;
            } else if (imap_arg_is_atom(&a[i], "QRESYNC")) {
                im->qresync = true;
                im->condstore = true;
            } else if (imap_arg_is_atom(&a[i], "UTF8=ACCEPT")) {
                im->utf8 = true;
            }
        }
        return;
    }
    imap_cmd_untagged(im, r);
}

static void trace_arg(struct sbuf *sb, const struct imap_arg *a, unsigned depth)
{
    if (sb->len > 2000) {
        return;
    }
    switch (a->type) {
    case IMAP_ARG_ATOM:
        sbuf_add(sb, a->u.str.s, a->u.str.len);
        break;
    case IMAP_ARG_STRING:
        sbuf_addc(sb, '"');
        sbuf_add(sb, a->u.str.s, a->u.str.len > 200 ? 200 : a->u.str.len);
        sbuf_addc(sb, '"');
        break;
    case IMAP_ARG_LITERAL:
        sbuf_addf(sb, "{%zu}", a->u.str.len);
        break;
    case IMAP_ARG_LITERAL_STREAMED:
        sbuf_addf(sb, "{%llu}", (unsigned long long)a->u.literal_size);
        break;
    case IMAP_ARG_NIL:
        sbuf_adds(sb, "NIL");
        break;
    case IMAP_ARG_LIST:
        sbuf_addc(sb, '(');
        for (size_t i = 0; i < a->u.list.count && depth < 8; i++) {
            if (i > 0) {
                sbuf_addc(sb, ' ');
            }
            trace_arg(sb, &a->u.list.items[i], depth + 1);
        }
        sbuf_addc(sb, ')');
        break;
    }
}

static void trace_response(struct imap *im, const struct imap_response *r)
{
    static const char *const st[] = {"", "OK", "NO", "BAD", "BYE", "PREAUTH"};
    struct sbuf sb = {0};
    if (r->kind == IMAP_RESP_CONTINUATION) {
        sbuf_addf(&sb, "+ %s", r->text);
    } else {
        sbuf_adds(&sb, r->kind == IMAP_RESP_TAGGED ? r->tag : "*");
        if (r->status != IMAP_STATUS_NONE) {
            sbuf_addf(&sb, " %s", st[r->status]);
            if (r->code != NULL) {
                sbuf_addf(&sb, " [%s", r->code);
                for (size_t i = 0; i < r->ncode_args; i++) {
                    sbuf_addc(&sb, ' ');
                    trace_arg(&sb, &r->code_args[i], 0);
                }
                sbuf_addc(&sb, ']');
            }
            sbuf_addf(&sb, " %s", r->text);
        } else {
            for (size_t i = 0; i < r->nargs; i++) {
                sbuf_addc(&sb, ' ');
                trace_arg(&sb, &r->args[i], 0);
            }
        }
    }
    log_trace("imap %s: S: %s", im->name, sb.buf);
    sbuf_free(&sb);
}

static void handle_response(struct imap *im, const struct imap_response *r)
{
    if (log_enabled(LOG_LEVEL_TRACE)) {
        trace_response(im, r);
    }
    if (im->state == IMAP_STATE_GREETING) {
        handle_greeting(im, r);
        return;
    }
    switch (r->kind) {
    case IMAP_RESP_CONTINUATION:
        handle_continuation(im, r);
        return;
    case IMAP_RESP_UNTAGGED:
        handle_untagged(im, r);
        return;
    case IMAP_RESP_TAGGED:
        handle_status_code(im, r);
        if (imap_dead(im)) {
            return;
        }
        imap_cmd_tagged(im, r);
        return;
    }
}

/* ---- Input ---- */

static void start_tls_now(struct imap *im, bool buffered)
{
    im->starttls_ok = false;
    imap_parser_reset(im->parser);
    imap_set_state(im, IMAP_STATE_TLS_HANDSHAKE);
    int r = net_start_tls(im->net, buffered);
    if (r < 0) {
        /* Same words as the transport's own report of it. */
        imap_fail(im, r,
                  "%s: the server sent data right after its answer to STARTTLS, before TLS "
                  "started (possible injection attack)",
                  im->hostport);
    }
}

/* Feeds data to the parser and handles what comes out, until the input is
 * used up, the owner's sink asks for a pause, or the connection dies. */
static void process_input(struct imap *im, const char *data, size_t len)
{
    for (;;) {
        if (imap_dead(im)) {
            return;
        }
        if (im->paused) {
            /* Keep the rest for imap_resume. */
            if (len > 0) {
                struct sbuf nb = {0};
                sbuf_add(&nb, data, len);
                sbuf_free(&im->backlog);
                im->backlog = nb;
            }
            return;
        }
        size_t used = 0;
        int r = imap_parser_feed(im->parser, data, len, &used);
        data += used;
        len -= used;
        if (r == IMAP_PARSE_NEED_MORE) {
            return;
        }
        switch (r) {
        case IMAP_PARSE_RESPONSE:
            handle_response(im, imap_parser_response(im->parser));
            if (!imap_dead(im) && im->starttls_ok) {
                start_tls_now(im, len > 0 || imap_parser_busy(im->parser));
                return;
            }
            break;
        case IMAP_PARSE_LITERAL_BEGIN:
        case IMAP_PARSE_LITERAL_DATA:
        case IMAP_PARSE_LITERAL_END:
            imap_cmd_literal(im, r, imap_parser_literal(im->parser));
            break;
        default:
            imap_fail(im, IMAP_EPROTO, "%s: malformed response from the server: %s", im->hostport,
                      imap_parser_error(im->parser));
            return;
        }
    }
}

/* Entry points from libuv callbacks hold a reference so that imap_free
 * called from an owner's callback releases the memory only after the
 * stack unwinds. */
static void enter(struct imap *im)
{
    im->busy++;
}

static void really_free(struct imap *im);

static void leave(struct imap *im)
{
    if (--im->busy == 0 && im->freeing) {
        really_free(im);
    }
}

static void on_net_connect(struct net_conn *c, void *arg)
{
    struct imap *im = arg;
    enter(im);
    im->tls_active = im->opts.net.tls == NET_TLS_IMPLICIT;
    imap_set_state(im, IMAP_STATE_GREETING);
    update_expect(im);
    leave(im);
}

static void on_net_data(struct net_conn *c, const char *data, size_t len, void *arg)
{
    struct imap *im = arg;
    enter(im);
    if (im->paused || im->backlog.len > 0) {
        sbuf_add(&im->backlog, data, len);
    } else {
        process_input(im, data, len);
    }
    leave(im);
}

static void on_net_tls(struct net_conn *c, void *arg)
{
    struct imap *im = arg;
    enter(im);
    im->tls_active = true;
    /* Forget everything learned before TLS (RFC 3501 §6.2.1). */
    im->caps = 0;
    im->caps_known = false;
    imap_set_state(im, IMAP_STATE_CAPABILITY);
    imap_cmd_internal(im, IMAP_CMD_CAPABILITY);
    leave(im);
}

static void on_net_drain(struct net_conn *c, void *arg)
{
    struct imap *im = arg;
    enter(im);
    if (im->deferred_msg == NULL) {
        im->wblocked = false;
    }
    if (!im->wblocked && flush_out(im)) {
        imap_pump(im);
    }
    leave(im);
}

static void on_net_error(struct net_conn *c, int err, const char *msg, void *arg)
{
    struct imap *im = arg;
    enter(im);
    if (im->state == IMAP_STATE_LOGOUT &&
        (im->got_bye || err == NET_ECLOSED || err == NET_ECOMPRESS)) {
        /* The server closed after LOGOUT: that is the expected end. Under
         * COMPRESS it ends its deflate stream first, and the transport
         * reports that as an error (possibly before handing over the BYE
         * that came in the same final block). */
        net_close(im->net);
        im->net = NULL;
        imap_cmd_logout_closed(im);
        imap_set_state(im, IMAP_STATE_CLOSED);
    } else if (im->state == IMAP_STATE_CLOSED) {
        net_close(im->net);
        im->net = NULL;
    } else {
        imap_fail(im, err, "%s", msg);
    }
    leave(im);
}

static const struct net_cb imap_net_cb = {
    .on_connect = on_net_connect,
    .on_data = on_net_data,
    .on_tls = on_net_tls,
    .on_drain = on_net_drain,
    .on_error = on_net_error,
};

/* ---- Deferred work (never call back from inside an API call) ---- */

static void on_defer(uv_timer_t *t)
{
    struct imap *im = t->data;
    enter(im);
    if (im->deferred_msg != NULL) {
        char *msg = im->deferred_msg;
        im->deferred_msg = NULL;
        imap_fail(im, im->deferred_err, "%s", msg);
        free(msg);
        leave(im);
        return;
    }
    imap_cmd_run_local(im);
    if (!imap_dead(im) && im->resume_pending) {
        im->resume_pending = false;
        if (im->backlog.len > 0) {
            struct sbuf b = im->backlog;
            im->backlog = (struct sbuf){0};
            process_input(im, b.buf, b.len);
            sbuf_free(&b);
        }
        if (!imap_dead(im) && !im->paused && im->net != NULL) {
            net_resume(im->net);
            update_expect(im);
        }
    }
    leave(im);
}

void imap_defer(struct imap *im)
{
    if (!im->freeing) {
        uv_timer_start(&im->defer, on_defer, 0, 0);
    }
}

void imap_pause_input(struct imap *im)
{
    if (im->paused) {
        return;
    }
    im->paused = true;
    if (im->net != NULL) {
        net_pause(im->net);
    }
    update_expect(im);
}

void imap_resume(struct imap *im)
{
    if (!im->paused || imap_dead(im)) {
        return;
    }
    im->paused = false;
    im->resume_pending = true;
    imap_defer(im);
}

/* ---- Life cycle ---- */

int imap_connect(uv_loop_t *loop, const struct imap_opts *opts, const struct imap_cb *cb, void *arg,
                 struct imap **im_r)
{
    if (opts->net.host == NULL || opts->user == NULL || opts->secret == NULL) {
        return -EINVAL;
    }
    struct imap *im = xcalloc(1, sizeof(*im));
    im->loop = loop;
    im->opts = *opts;
    im->opts.net.host = xstrdup(opts->net.host);
    im->opts.net.ca_file = opts->net.ca_file ? xstrdup(opts->net.ca_file) : NULL;
    im->opts.net.fingerprint = opts->net.fingerprint ? xstrdup(opts->net.fingerprint) : NULL;
    im->opts.user = xstrdup(opts->user);
    im->opts.secret = xstrdup(opts->secret);
    im->opts.log_name = NULL;
    im->opts.limits = NULL;
    im->name = xstrdup(opts->log_name ? opts->log_name : opts->net.host);
    im->hostport = xasprintf("%s:%u", opts->net.host, (unsigned)opts->net.port);
    im->depth = opts->pipeline_depth ? opts->pipeline_depth : 64;
    im->cb = *cb;
    im->arg = arg;
    im->parser = imap_parser_new(opts->limits);
    uv_timer_init(loop, &im->defer);
    im->defer.data = im;
    im->state = IMAP_STATE_CONNECTING;
    int r = net_connect(loop, &im->opts.net, &imap_net_cb, im, &im->net);
    if (r < 0) {
        im->net = NULL;
        im->freeing = true;
        really_free(im);
        return r;
    }
    log_debug("imap %s: connecting to %s", im->name, im->hostport);
    *im_r = im;
    return 0;
}

static void on_defer_closed(uv_handle_t *h)
{
    struct imap *im = h->data;
    imap_parser_free(im->parser);
    explicit_bzero((char *)im->opts.secret, strlen(im->opts.secret));
    free((char *)im->opts.secret);
    free((char *)im->opts.user);
    free((char *)im->opts.net.host);
    free((char *)im->opts.net.ca_file);
    free((char *)im->opts.net.fingerprint);
    if (im->out.buf != NULL) {
        explicit_bzero(im->out.buf, im->out.cap);
    }
    sbuf_free(&im->out);
    sbuf_free(&im->backlog);
    free(im->caps_str);
    free(im->deferred_msg);
    free(im->error);
    free(im->name);
    free(im->hostport);
    free(im);
}

static void really_free(struct imap *im)
{
    imap_cmd_free_all(im);
    uv_close((uv_handle_t *)&im->defer, on_defer_closed);
}

void imap_free(struct imap *im)
{
    if (im == NULL || im->freeing) {
        return;
    }
    im->freeing = true;
    if (im->net != NULL) {
        net_close(im->net);
        im->net = NULL;
    }
    if (im->busy == 0) {
        really_free(im);
    }
}

enum imap_state imap_get_state(const struct imap *im)
{
    return im->state;
}

unsigned imap_caps(const struct imap *im)
{
    return im->caps;
}

const char *imap_capability_string(const struct imap *im)
{
    return im->caps_str != NULL ? im->caps_str : "";
}

bool imap_condstore_enabled(const struct imap *im)
{
    return im->condstore;
}

bool imap_qresync_enabled(const struct imap *im)
{
    return im->qresync;
}

bool imap_utf8_enabled(const struct imap *im)
{
    return im->utf8;
}

char imap_delimiter(const struct imap *im)
{
    return im->delim;
}

struct net_conn *imap_net(const struct imap *im)
{
    return im->net;
}

const char *imap_error(const struct imap *im)
{
    return im->error;
}

const struct imap_mailbox *imap_selected(const struct imap *im)
{
    return im->selected ? &im->sel : NULL;
}
