/* POP3 client: one struct pop3 per connection, driven on the libuv loop.
 *
 * The client connects (sync/net.h), reads the greeting, asks CAPA,
 * negotiates TLS (implicit, or STLS only when the server lists it),
 * authenticates (USER/PASS, SASL PLAIN / XOAUTH2 / OAUTHBEARER per RFC 5034,
 * or APOP only when asked for), asks CAPA again in the TRANSACTION state and
 * then reports on_ready. It is an explicit state machine (enum pop3_state,
 * one logged transition function) over the pure reply parser
 * (sync/pop3_parser.h).
 *
 * Commands: every pop3_* command function queues a command and returns 0
 * (or a negative errno when it cannot be queued; then no callback follows).
 * Commands queued before on_ready are held and sent once the session is
 * ready. With PIPELINING advertised, up to opts.pipeline_depth commands are
 * in flight at once (answers come in order, RFC 2449 section 6.6); without
 * it, one at a time. Each command ends with exactly one call of its
 * completion callback (pop3_done_cb) carrying the status, the RFC 2449/3206
 * response code and the text, or a negative err when no answer can come
 * (connection lost). Multi-line answers arrive before it, line by line
 * (UIDL, LIST) or as body chunks (RETR, TOP) with LF line endings and the
 * dot-stuffing removed. Callbacks are never called synchronously from a
 * pop3_* call: they always come from the loop.
 *
 * Backpressure: a callback may call pop3_pause; no further callback comes
 * until pop3_resume (bytes already read are kept and replayed from the
 * loop).
 *
 * Errors: on a fatal error (connection lost, TLS failure, protocol error,
 * login failure, STLS not offered when required) every pending command's
 * callback is called with err < 0 and the error text, then cb->on_error
 * once, with a kind that tells the owner what to do about it; after that
 * nothing else is called and the owner calls pop3_free.
 *
 * Ownership: pop3_connect returns a struct pop3 owned by the caller, who
 * calls pop3_free exactly once (also after on_error, and also from inside a
 * callback). pop3_free calls no callback; memory is released from libuv
 * close callbacks, so the loop closes clean. The secret passed in the
 * options is copied and wiped on free; it never appears in logs: the
 * protocol trace (log_trace, "C: "/"S: " lines) shows PASS, AUTH and APOP
 * arguments and SASL responses as "<redacted>". */
#ifndef MAILSYNC_POP3_H
#define MAILSYNC_POP3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "sync/net.h"
#include "sync/pop3_parser.h"

enum pop3_state {
    POP3_STATE_CONNECTING = 0, /* resolving, TCP, implicit TLS handshake */
    POP3_STATE_GREETING,       /* waiting for "+OK" */
    POP3_STATE_CAPA,           /* CAPA before authentication */
    POP3_STATE_STLS,           /* STLS sent, waiting for its +OK */
    POP3_STATE_TLS_HANDSHAKE,  /* net_start_tls running */
    POP3_STATE_AUTH,           /* USER/PASS, AUTH or APOP in flight */
    POP3_STATE_POSTAUTH,       /* CAPA in the TRANSACTION state */
    POP3_STATE_READY,          /* commands flow */
    POP3_STATE_QUIT,           /* QUIT sent */
    POP3_STATE_CLOSED,         /* QUIT answered: the server commits deletions */
    POP3_STATE_FAILED,         /* fatal error reported */
};

const char *pop3_state_name(enum pop3_state s);

enum pop3_auth {
    POP3_AUTH_AUTO = 0,    /* AUTH PLAIN when SASL PLAIN is listed, else USER/PASS */
    POP3_AUTH_USER,        /* USER / PASS (RFC 1939) */
    POP3_AUTH_PLAIN,       /* AUTH PLAIN */
    POP3_AUTH_XOAUTH2,     /* secret is the OAuth2 access token */
    POP3_AUTH_OAUTHBEARER, /* secret is the OAuth2 access token */
    POP3_AUTH_APOP,        /* APOP with the greeting's timestamp (MD5: avoid) */
};

/* What the owner should do about a failure. */
enum pop3_errkind {
    POP3_ERRKIND_NONE = 0,
    /* Try again later: network trouble, [IN-USE], [LOGIN-DELAY],
     * [SYS/TEMP], a protocol error from the server. */
    POP3_ERRKIND_TRANSIENT,
    /* The credentials were refused ([AUTH], or a failed login without a
     * code): retrying with the same secret will not help. */
    POP3_ERRKIND_AUTH,
    /* Needs the user: [SYS/PERM], certificate problems, STLS not offered
     * when required, no usable login method, plaintext not allowed. */
    POP3_ERRKIND_PERMANENT,
};

const char *pop3_errkind_name(enum pop3_errkind k);
/* The kind for an "-ERR" with this response code (NULL: none). */
enum pop3_errkind pop3_code_kind(const char *code, enum pop3_errkind without_code);

struct pop3_opts {
    struct net_opts net; /* host, port, tls mode, ca_file, fingerprint, timeouts */
    const char *user;
    const char *secret; /* password or token; copied */
    enum pop3_auth auth;
    /* Permit sending the secret over a connection without TLS. */
    bool allow_plaintext;
    unsigned pipeline_depth;                 /* commands in flight at once; 0 = 32 */
    const struct pop3_parser_limits *limits; /* NULL = parser defaults */
    const char *log_name;                    /* "pop3 NAME: ..." in logs; NULL = host */
};

/* Capabilities (from CAPA; pop3_caps). */
enum {
    POP3_CAP_TOP = 1u << 0,
    POP3_CAP_UIDL = 1u << 1,
    POP3_CAP_USER = 1u << 2,
    POP3_CAP_STLS = 1u << 3,
    POP3_CAP_PIPELINING = 1u << 4,
    POP3_CAP_RESP_CODES = 1u << 5,
    POP3_CAP_AUTH_RESP_CODE = 1u << 6,
    POP3_CAP_SASL_PLAIN = 1u << 7,
    POP3_CAP_SASL_XOAUTH2 = 1u << 8,
    POP3_CAP_SASL_OAUTHBEARER = 1u << 9,
    POP3_CAP_APOP = 1u << 10, /* not a CAPA tag: the greeting has a timestamp */
};

struct pop3;

struct pop3_cb {
    /* Logged in; commands flow. */
    void (*on_ready)(struct pop3 *p, void *arg);
    /* Fatal error; msg names the server, e.g. "pop.example.com:995:
     * authentication failed: -ERR [AUTH] Authentication failed.". */
    void (*on_error)(struct pop3 *p, int err, enum pop3_errkind kind, const char *msg, void *arg);
};

/* The result of one command. */
struct pop3_status {
    int err;                /* 0 when the server answered, else < 0 (connection lost ...) */
    bool ok;                /* "+OK" */
    const char *code;       /* response code, upper-cased, or NULL */
    const char *text;       /* the server's text, or the error message when err < 0 */
    enum pop3_errkind kind; /* for -ERR / err < 0 */
};

typedef void (*pop3_done_cb)(struct pop3 *p, const struct pop3_status *st, void *arg);
/* A listing line (UIDL, LIST; NUL-terminated) or a body chunk (RETR, TOP). */
typedef void (*pop3_chunk_cb)(struct pop3 *p, const char *data, size_t len, void *arg);

int pop3_connect(uv_loop_t *loop, const struct pop3_opts *opts, const struct pop3_cb *cb, void *arg,
                 struct pop3 **p_r);
void pop3_free(struct pop3 *p);

enum pop3_state pop3_get_state(const struct pop3 *p);
unsigned pop3_caps(const struct pop3 *p);
/* False when the server refused CAPA (pop3_caps then only has what the
 * greeting showed). */
bool pop3_capa_known(const struct pop3 *p);
/* The connection, for net_tls_version & co. (NULL after failure). */
struct net_conn *pop3_conn(const struct pop3 *p);
/* Commands queued or in flight. */
size_t pop3_pending(const struct pop3 *p);

/* STAT: text is "count size"; see pop3_parse_stat. */
int pop3_stat(struct pop3 *p, pop3_done_cb done, void *arg);
/* UIDL / LIST for all messages: one line per message ("n uidl", "n size"). */
int pop3_uidl(struct pop3 *p, pop3_chunk_cb line, pop3_done_cb done, void *arg);
int pop3_list(struct pop3 *p, pop3_chunk_cb line, pop3_done_cb done, void *arg);
/* TOP n lines / RETR n: the body streamed in chunks. */
int pop3_top(struct pop3 *p, unsigned msgno, unsigned lines, pop3_chunk_cb data, pop3_done_cb done,
             void *arg);
int pop3_retr(struct pop3 *p, unsigned msgno, pop3_chunk_cb data, pop3_done_cb done, void *arg);
int pop3_dele(struct pop3 *p, unsigned msgno, pop3_done_cb done, void *arg);
int pop3_rset(struct pop3 *p, pop3_done_cb done, void *arg);
int pop3_noop(struct pop3 *p, pop3_done_cb done, void *arg);
/* QUIT: its "+OK" means the server committed the DELEs (RFC 1939 section
 * 6). The connection is closed by the server afterwards; that is not an
 * error. */
int pop3_quit(struct pop3 *p, pop3_done_cb done, void *arg);

void pop3_pause(struct pop3 *p);
void pop3_resume(struct pop3 *p);

/* Parsers for replies. */
bool pop3_parse_stat(const char *text, unsigned *count_r, uint64_t *size_r);
/* "n rest" (UIDL, LIST lines): the message number and the rest (spaces
 * skipped, trailing spaces kept out by the caller). */
bool pop3_parse_listing(const char *line, unsigned *msgno_r, const char **rest_r);

#endif
