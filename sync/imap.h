/* IMAP client: one struct imap per connection, driven on the libuv loop.
 *
 * The client connects (sync/net.h), reads the greeting, negotiates TLS
 * (implicit, or STARTTLS only when the server lists it), authenticates,
 * enables CONDSTORE/QRESYNC (and UTF8=ACCEPT when offered), optionally turns
 * on COMPRESS=DEFLATE, learns the hierarchy delimiter, and then reports
 * on_ready. It is an explicit state machine (enum imap_state, one logged
 * transition function) over the pure response parser (sync/imap_parser.h).
 *
 * Commands: every imap_* command function queues a tagged command and
 * returns 0 (or a negative errno when the arguments are invalid; then no
 * callback follows). Commands queued before on_ready are held and sent once
 * the session is ready. Up to opts.pipeline_depth commands are in flight at
 * once. Each command ends with exactly one call of its completion callback
 * (imap_done_cb) carrying the tagged status, the response code and the text,
 * or a negative err when no tagged answer can come (connection lost, command
 * refused locally). Completion, folder, message and event callbacks are
 * never called synchronously from an imap_* call: they always come from the
 * loop. (An APPEND body's read() source is the exception: it is pulled
 * whenever the client writes, which may be inside any imap_* call.)
 *
 * Folder names in this API are UTF-8 with '/' as the hierarchy separator.
 * The client converts them to the server's form (modified UTF-7 unless
 * UTF8=ACCEPT is enabled, server delimiter) and back.
 *
 * Events: untagged responses that no command asked for (EXISTS, EXPUNGE,
 * VANISHED, FETCH with flag/modseq updates, STATUS from NOTIFY, [ALERT],
 * untagged NO/BAD, BYE) go to cb->on_event. FETCH responses whose UID lies in
 * the set of an in-flight imap_uid_fetch go to that command instead.
 * VANISHED (EARLIER) and FETCH responses caused by SELECT ... (QRESYNC ...)
 * or by FETCH ... (CHANGEDSINCE m VANISHED) arrive as events before that
 * command's completion callback.
 *
 * Errors: on a fatal error (connection lost, TLS failure, protocol error,
 * untagged BYE outside LOGOUT, login failure) every pending command's
 * callback is called with err < 0 and the error text, then cb->on_error once;
 * after that nothing else is called and the owner calls imap_free.
 *
 * Ownership: imap_connect returns a struct imap owned by the caller, who
 * calls imap_free exactly once (also after on_error). imap_free calls no
 * callback (pending commands are dropped silently); memory is released from
 * libuv close callbacks, so the loop closes clean. The secret passed in the
 * options is copied and wiped on free; it never appears in logs: the
 * protocol trace (log_trace, "C: "/"S: " lines) redacts LOGIN's password and
 * AUTHENTICATE payloads to "<redacted>". */
#ifndef MAILSYNC_IMAP_H
#define MAILSYNC_IMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include <uv.h>

#include "sync/imap_parser.h"
#include "sync/net.h"

enum imap_state {
    IMAP_STATE_CONNECTING = 0, /* resolving, TCP, implicit TLS handshake */
    IMAP_STATE_GREETING,       /* waiting for "* OK" / "* PREAUTH" */
    IMAP_STATE_CAPABILITY,     /* CAPABILITY before authentication */
    IMAP_STATE_STARTTLS,       /* STARTTLS sent, waiting for its OK */
    IMAP_STATE_TLS_HANDSHAKE,  /* net_start_tls running */
    IMAP_STATE_AUTHENTICATE,   /* AUTHENTICATE or LOGIN in flight */
    IMAP_STATE_POSTAUTH,       /* CAPABILITY after login, when the OK carried none */
    IMAP_STATE_COMPRESS,       /* COMPRESS DEFLATE in flight */
    IMAP_STATE_ENABLE,         /* ENABLE, ID, LIST "" "" in flight */
    IMAP_STATE_READY,          /* commands flow */
    IMAP_STATE_IDLE,           /* IDLE accepted ("+ idling"); only DONE may be sent */
    IMAP_STATE_LOGOUT,         /* LOGOUT sent */
    IMAP_STATE_CLOSED,         /* logged out cleanly */
    IMAP_STATE_FAILED,         /* fatal error reported */
};

const char *imap_state_name(enum imap_state s);

enum imap_auth {
    IMAP_AUTH_AUTO = 0, /* AUTHENTICATE PLAIN when offered, else LOGIN */
    IMAP_AUTH_PLAIN,
    IMAP_AUTH_LOGIN,
    IMAP_AUTH_XOAUTH2,     /* secret is the OAuth2 access token */
    IMAP_AUTH_OAUTHBEARER, /* secret is the OAuth2 access token */
};

struct imap_opts {
    struct net_opts net; /* host, port, tls mode, ca_file, fingerprint, timeouts */
    const char *user;
    const char *secret; /* password or token; copied */
    enum imap_auth auth;
    /* Permit sending the secret over a connection without TLS. The
     * configuration layer decides (allow_plaintext); without it the client
     * refuses to authenticate in the clear. */
    bool allow_plaintext;
    bool compress;           /* use COMPRESS=DEFLATE when offered */
    bool compress_local;     /* ... also towards loopback and private addresses */
    bool no_id;              /* do not send ID */
    unsigned pipeline_depth; /* commands in flight at once; 0 = 64 */
    unsigned quick_reply_ms; /* deadline for DONE and NOOP; 0 = IMAP_QUICK_REPLY_MS */
    const struct imap_parser_limits *limits; /* NULL = parser defaults */
    /* Name used in log lines ("imap ACCOUNT: ..."); NULL = host. */
    const char *log_name;
};

/* Capabilities the client uses, as a bitmask (imap_caps). */
enum {
    IMAP_CAP_IMAP4REV1 = 1u << 0,
    IMAP_CAP_STARTTLS = 1u << 1,
    IMAP_CAP_LOGINDISABLED = 1u << 2,
    IMAP_CAP_AUTH_PLAIN = 1u << 3,
    IMAP_CAP_AUTH_XOAUTH2 = 1u << 4,
    IMAP_CAP_AUTH_OAUTHBEARER = 1u << 5,
    IMAP_CAP_SASL_IR = 1u << 6,
    IMAP_CAP_ID = 1u << 7,
    IMAP_CAP_ENABLE = 1u << 8,
    IMAP_CAP_CONDSTORE = 1u << 9,
    IMAP_CAP_QRESYNC = 1u << 10,
    IMAP_CAP_UTF8_ACCEPT = 1u << 11,
    IMAP_CAP_COMPRESS = 1u << 12, /* COMPRESS=DEFLATE */
    IMAP_CAP_LITERALPLUS = 1u << 13,
    IMAP_CAP_LITERALMINUS = 1u << 14,
    IMAP_CAP_IDLE = 1u << 15,
    IMAP_CAP_UIDPLUS = 1u << 16,
    IMAP_CAP_MOVE = 1u << 17,
    IMAP_CAP_ESEARCH = 1u << 18,
    IMAP_CAP_LIST_EXTENDED = 1u << 19,
    IMAP_CAP_LIST_STATUS = 1u << 20,
    IMAP_CAP_SPECIAL_USE = 1u << 21,
    IMAP_CAP_NOTIFY = 1u << 22,
    IMAP_CAP_OBJECTID = 1u << 23,
    IMAP_CAP_IMAP4REV2 = 1u << 24,
};

/* Standard system flags, as a bitmask. */
enum {
    IMAP_FLAG_SEEN = 1u << 0,
    IMAP_FLAG_ANSWERED = 1u << 1,
    IMAP_FLAG_FLAGGED = 1u << 2,
    IMAP_FLAG_DELETED = 1u << 3,
    IMAP_FLAG_DRAFT = 1u << 4,
    IMAP_FLAG_RECENT = 1u << 5, /* only ever reported, never stored */
};

/* A UID range lo..hi inclusive (lo <= hi). */
struct imap_uid_range {
    uint32_t lo, hi;
};

/* RFC 8474 section 4: objectid = 1*255(ALPHA / DIGIT / "_" / "-"). A
 * MAILBOXID that breaks this grammar is a protocol error naming the
 * folder, since an identity that cannot be trusted would decide renames. */
#define IMAP_MAILBOXID_MAX 255

/* Mailbox facts from SELECT/EXAMINE. */
struct imap_mailbox {
    uint32_t uidvalidity;
    uint32_t uidnext;       /* 0 when the server sent none */
    uint32_t exists;        /* message count, updated by EXISTS/EXPUNGE/VANISHED events */
    uint64_t highestmodseq; /* 0 with NOMODSEQ or without CONDSTORE */
    bool nomodseq;
    bool readonly;            /* [READ-ONLY] */
    unsigned permanent_flags; /* IMAP_FLAG_* from PERMANENTFLAGS */
    bool permanent_keywords;  /* PERMANENTFLAGS contains \* */
    /* Under QRESYNC, untagged data arrived during this SELECT with no
     * [CLOSED] to tell the previous mailbox's from this one's: it was
     * dropped, so the changes the SELECT reported may be incomplete and
     * the owner lists them another way. */
    bool closed_unsure;
    /* RFC 8474's MAILBOXID from the [MAILBOXID (id)] response code, "" when
     * the server sent none. */
    char mailboxid[IMAP_MAILBOXID_MAX + 1];
};

enum {
    IMAP_STATUS_MESSAGES = 1u << 0,
    IMAP_STATUS_UIDNEXT = 1u << 1,
    IMAP_STATUS_UIDVALIDITY = 1u << 2,
    IMAP_STATUS_UNSEEN = 1u << 3,
    IMAP_STATUS_HIGHESTMODSEQ = 1u << 4,
    IMAP_STATUS_RECENT = 1u << 5,
    /* RFC 8474: asked for only when the server offers OBJECTID. */
    IMAP_STATUS_MAILBOXID = 1u << 6,
};

/* One STATUS answer; have says which fields were present. */
struct imap_status_info {
    const char *folder; /* UTF-8, '/' separated; NULL if the name could not be decoded */
    unsigned have;      /* IMAP_STATUS_* */
    uint32_t messages, uidnext, uidvalidity, unseen, recent;
    uint64_t highestmodseq;
    /* RFC 8474's MAILBOXID (IMAP_STATUS_MAILBOXID): the folder's identity,
     * which a RENAME keeps; "" when absent. Held here rather than pointed
     * to, so that the struct can be copied and kept like the numbers. */
    char mailboxid[IMAP_MAILBOXID_MAX + 1];
};

/* LIST attributes, as a bitmask. */
enum {
    IMAP_LIST_NOSELECT = 1u << 0,
    IMAP_LIST_NOINFERIORS = 1u << 1,
    IMAP_LIST_NONEXISTENT = 1u << 2,
    IMAP_LIST_HASCHILDREN = 1u << 3,
    IMAP_LIST_HASNOCHILDREN = 1u << 4,
    IMAP_LIST_MARKED = 1u << 5,
    IMAP_LIST_UNMARKED = 1u << 6,
    IMAP_LIST_SUBSCRIBED = 1u << 7,
    IMAP_LIST_REMOTE = 1u << 8,
    /* SPECIAL-USE */
    IMAP_LIST_ALL = 1u << 9,
    IMAP_LIST_ARCHIVE = 1u << 10,
    IMAP_LIST_DRAFTS = 1u << 11,
    IMAP_LIST_FLAGGED = 1u << 12,
    IMAP_LIST_JUNK = 1u << 13,
    IMAP_LIST_SENT = 1u << 14,
    IMAP_LIST_TRASH = 1u << 15,
    IMAP_LIST_IMPORTANT = 1u << 16,
};

/* One folder from LIST. */
struct imap_folder {
    /* UTF-8 with '/' as separator; NULL when the folder cannot be synced
     * (reason in unsyncable, e.g. its name contains '/' while the server's
     * delimiter is '.', or it is not valid modified UTF-7). */
    const char *name;
    const char *unsyncable;
    const char *raw_name; /* exactly as the server sent it */
    char delim;           /* server delimiter, '\0' for NIL */
    unsigned attrs;       /* IMAP_LIST_* */
    bool has_status;      /* LIST-STATUS answered for this folder */
    struct imap_status_info status;
};

/* FETCH items (UID is always fetched). */
enum {
    IMAP_FETCH_FLAGS = 1u << 0,
    IMAP_FETCH_SIZE = 1u << 1, /* RFC822.SIZE */
    IMAP_FETCH_INTERNALDATE = 1u << 2,
    IMAP_FETCH_MODSEQ = 1u << 3,
    IMAP_FETCH_BODY = 1u << 4, /* BODY.PEEK[], streamed to the sink */
    /* BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]: the Message-ID, unfolded and
     * trimmed, in imap_msg.message_id (NULL when the message has none). */
    IMAP_FETCH_MESSAGE_ID = 1u << 5,
    /* BODY.PEEK[HEADER]: the header block (CRLF line ends, with the empty
     * line that ends it) in imap_msg.header. Only blocks up to the parser's
     * inline_literal_max are delivered; a larger one leaves header NULL. */
    IMAP_FETCH_HEADER = 1u << 6,
    /* EMAILID (RFC 8474), sent only where the server offers OBJECTID: in
     * imap_msg.emailid. */
    IMAP_FETCH_EMAILID = 1u << 7,
};

/* One message from FETCH; have says which items were present. */
struct imap_msg {
    uint32_t seq;
    uint32_t uid;                /* 0 if the response had none (only in events) */
    unsigned have;               /* IMAP_FETCH_* */
    unsigned flags;              /* IMAP_FLAG_* */
    const char *const *keywords; /* other flags, as sent (e.g. "$Forwarded") */
    size_t nkeywords;
    uint64_t size;
    time_t internaldate;
    uint64_t modseq;
    uint64_t body_size;     /* bytes delivered to the sink (IMAP_FETCH_BODY) */
    const char *message_id; /* IMAP_FETCH_MESSAGE_ID; NULL when absent */
    const char *header;     /* IMAP_FETCH_HEADER; NULL when absent or too large */
    size_t header_len;
    const char *emailid; /* IMAP_FETCH_EMAILID; NULL when absent */
};

enum imap_event_type {
    IMAP_EV_EXISTS = 0,  /* n = message count */
    IMAP_EV_EXPUNGE,     /* n = sequence number */
    IMAP_EV_VANISHED,    /* ranges/nranges; earlier = VANISHED (EARLIER) */
    IMAP_EV_FETCH,       /* msg: unsolicited flag/modseq update */
    IMAP_EV_STATUS,      /* status: untagged STATUS no command asked for (NOTIFY) */
    IMAP_EV_ALERT,       /* text: [ALERT] text, must be shown to the user */
    IMAP_EV_NOTICE,      /* text: untagged NO/BAD (server warning) */
    IMAP_EV_BYE,         /* text: BYE text; on_error follows unless logging out */
    IMAP_EV_UIDVALIDITY, /* n = new UIDVALIDITY announced while selected */
    IMAP_EV_MAILBOX,     /* text: raw name of an unasked LIST (NOTIFY MailboxName) */
};

struct imap_event {
    enum imap_event_type type;
    uint32_t n;
    bool earlier;
    const struct imap_uid_range *ranges;
    size_t nranges;
    const struct imap_msg *msg;
    const struct imap_status_info *status;
    const char *text;
};

struct imap;

struct imap_cb {
    /* Logged in, capabilities known, ENABLE answered: commands flow. */
    void (*on_ready)(struct imap *im, void *arg);
    /* Fatal; see "Errors" above. err is a negative errno, UV_*, NET_E* or
     * IMAP_E*; msg names the host. */
    void (*on_error)(struct imap *im, int err, const char *msg, void *arg);
    /* Unsolicited responses; may be NULL. */
    void (*on_event)(struct imap *im, const struct imap_event *ev, void *arg);
};

enum {
    IMAP_EPROTO = -21001,  /* malformed or unexpected server response */
    IMAP_EAUTH = -21002,   /* authentication failed or impossible */
    IMAP_EBYE = -21003,    /* server sent BYE */
    IMAP_ENOTLS = -21004,  /* STARTTLS required but not offered / plaintext refused */
    IMAP_ENOTSUP = -21005, /* command needs an extension the server lacks */
    IMAP_ECMD = -21006,    /* command failed (NO/BAD) in the login sequence */
    /* Login refused for now ([UNAVAILABLE], [INUSE]; RFC 5530): the
     * credentials were not judged, try again later. */
    IMAP_EUNAVAIL = -21007,
    /* Login refused for a limit ([LIMIT], RFC 5530), usually too many
     * connections for the user (Dovecot's mail_max_userip_connections, a
     * phone holding the rest): not a judgement of the credentials. */
    IMAP_ELIMIT = -21008,
};

/* Completion of one command. Pointers are valid only during the callback. */
struct imap_result {
    int err;                 /* 0: a tagged answer arrived (see status); < 0: none will */
    enum imap_status status; /* IMAP_STATUS_OK / NO / BAD; NONE when err < 0 */
    const char *code;        /* response code, upper-case, or NULL */
    const struct imap_arg *code_args;
    size_t ncode_args;
    const char *text; /* server text, or the error message when err < 0 */
    /* SELECT / EXAMINE (on OK). */
    const struct imap_mailbox *mailbox;
    /* APPEND: [APPENDUID v uid]; 0 when absent. */
    uint32_t append_uidvalidity, append_uid;
    /* COPY / MOVE: [COPYUID v src dst] (from the tagged or untagged OKs,
     * several joined with ','); NULL when absent. */
    uint32_t copy_uidvalidity;
    const char *copy_src, *copy_dst;
    /* MOVE without MOVE and UIDPLUS: messages were copied and flagged
     * \Deleted but could not be expunged safely. */
    bool move_not_expunged;
    /* STORE: [MODIFIED set] (UIDs not changed because of UNCHANGEDSINCE). */
    const struct imap_uid_range *modified;
    size_t nmodified;
    /* SEARCH: matching UIDs, ascending. */
    const uint32_t *uids;
    size_t nuids;
};

typedef void (*imap_done_cb)(struct imap *im, const struct imap_result *res, void *arg);

/* Returned by imap_fetch_cb.body_data to ask for a pause (backpressure):
 * the client stops reading until imap_resume. */
#define IMAP_SINK_PAUSE 1

struct imap_fetch_cb {
    /* A message body begins (IMAP_FETCH_BODY). Returns the owner's sink
     * handle, passed back to body_data/body_end/on_message. uid is 0 when the
     * server sent UID after the body. */
    void *(*body_begin)(struct imap *im, uint32_t seq, uint32_t uid, uint64_t size, void *arg);
    /* A chunk of the body. Return 0 to go on, IMAP_SINK_PAUSE to pause
     * after this chunk, or a negative errno to fail the connection. */
    int (*body_data)(struct imap *im, void *sink, const char *data, size_t len, void *arg);
    /* The body ended: complete = all announced bytes arrived; false when
     * the connection died mid-body (the owner discards what it wrote). */
    void (*body_end)(struct imap *im, void *sink, bool complete, void *arg);
    /* One FETCH response finished; sink is the body's handle or NULL. */
    void (*on_message)(struct imap *im, const struct imap_msg *msg, void *sink, void *arg);
    imap_done_cb done;
};

/* Connects and logs in. Returns 0 and *im_r, or a negative errno (bad
 * options); afterwards everything is reported through cb. */
int imap_connect(uv_loop_t *loop, const struct imap_opts *opts, const struct imap_cb *cb, void *arg,
                 struct imap **im_r);
void imap_free(struct imap *im);

enum imap_state imap_get_state(const struct imap *im);
unsigned imap_caps(const struct imap *im); /* IMAP_CAP_* */
/* The capability list as the server last sent it, space separated. */
const char *imap_capability_string(const struct imap *im);
bool imap_condstore_enabled(const struct imap *im);
bool imap_qresync_enabled(const struct imap *im);
bool imap_utf8_enabled(const struct imap *im);
char imap_delimiter(const struct imap *im); /* '\0' until known or for NIL */
struct net_conn *imap_net(const struct imap *im);
/* The last fatal error message, or NULL. */
const char *imap_error(const struct imap *im);
/* The selected folder's facts (kept current from events) or NULL. */
const struct imap_mailbox *imap_selected(const struct imap *im);

/* Resumes reading after body_data returned IMAP_SINK_PAUSE. */
void imap_resume(struct imap *im);

/* Commands. uidset is an IMAP sequence set of UIDs ("1:5,7,9:*"). */
/* NOOP and DONE (imap_idle_stop) must be answered within this long (or the
 * account's timeout if shorter; imap_opts.quick_reply_ms overrides it), else
 * the connection is failed with NET_ETIMEOUT: a live server answers them at
 * once. */
#define IMAP_QUICK_REPLY_MS 30000u
int imap_noop(struct imap *im, imap_done_cb done, void *arg);
/* LIST "" "*" with RETURN (SPECIAL-USE SUBSCRIBED STATUS (...)) when
 * offered, else LIST plus LSUB. on_folder is called once per folder, in
 * server order, just before done. */
int imap_list(struct imap *im, void (*on_folder)(struct imap *, const struct imap_folder *, void *),
              imap_done_cb done, void *arg);
int imap_status(struct imap *im, const char *folder, unsigned items,
                void (*on_status)(struct imap *, const struct imap_status_info *, void *),
                imap_done_cb done, void *arg);

struct imap_select_opts {
    bool readonly;  /* EXAMINE */
    bool condstore; /* (CONDSTORE), when enabled and no QRESYNC values */
    /* (QRESYNC (uidvalidity modseq [known_uids])) when uidvalidity != 0 and
     * QRESYNC is enabled. */
    uint32_t qresync_uidvalidity;
    uint64_t qresync_modseq;
    const char *qresync_known_uids; /* NULL or a UID set */
};
int imap_select(struct imap *im, const char *folder, const struct imap_select_opts *opts,
                imap_done_cb done, void *arg);

/* UID FETCH uidset (items) [(CHANGEDSINCE m [VANISHED])]. changedsince = 0
 * means none; vanished needs QRESYNC enabled. */
int imap_uid_fetch(struct imap *im, const char *uidset, unsigned items, uint64_t changedsince,
                   bool vanished, const struct imap_fetch_cb *cb, void *arg);

/* UID SEARCH criteria (raw IMAP search criteria, e.g. "UID 1:500" or
 * "ALL"); uses ESEARCH's RETURN (ALL) when offered. */
int imap_uid_search(struct imap *im, const char *criteria, imap_done_cb done, void *arg);

/* UID STORE uidset [(UNCHANGEDSINCE m)] +FLAGS.SILENT / -FLAGS.SILENT (...).
 * op is '+' or '-'; unchangedsince = 0 means none. */
int imap_uid_store(struct imap *im, const char *uidset, char op, unsigned flags,
                   const char *const *keywords, size_t nkeywords, uint64_t unchangedsince,
                   imap_done_cb done, void *arg);

/* APPEND. The body is exactly size bytes on the wire (CRLF line ends; the
 * owner computes the size). It comes from fd (read from its current
 * position; with lf_to_crlf the file has LF line ends and is converted on
 * the fly) or, when fd < 0, from read(), which fills buf and returns the
 * number of bytes, 0 at the end, or a negative errno. A body that ends
 * early or runs long fails the connection (the literal framing is lost).
 * read() is called whenever the client writes (from the loop, or inside
 * imap_append or any other imap_* call that sends queued commands): it must
 * not call back into the client. */
struct imap_append {
    const char *folder;
    unsigned flags; /* IMAP_FLAG_* (RECENT ignored) */
    const char *const *keywords;
    size_t nkeywords;
    time_t internaldate; /* 0 = none */
    uint64_t size;
    int fd;
    bool lf_to_crlf;
    ssize_t (*read)(void *read_arg, char *buf, size_t len);
    void *read_arg;
};
int imap_append(struct imap *im, const struct imap_append *a, imap_done_cb done, void *arg);

/* UID EXPUNGE uidset. Without UIDPLUS: returns IMAP_ENOTSUP when the
 * session is ready, else the done callback gets err IMAP_ENOTSUP (a plain
 * EXPUNGE would also remove other clients' \Deleted messages). */
int imap_uid_expunge(struct imap *im, const char *uidset, imap_done_cb done, void *arg);
/* UID MOVE uidset folder; without MOVE: UID COPY + UID STORE +FLAGS.SILENT
 * (\Deleted) + UID EXPUNGE (UIDPLUS) as one logical command. */
int imap_uid_move(struct imap *im, const char *uidset, const char *folder, imap_done_cb done,
                  void *arg);
int imap_uid_copy(struct imap *im, const char *uidset, const char *folder, imap_done_cb done,
                  void *arg);
int imap_create(struct imap *im, const char *folder, imap_done_cb done, void *arg);
int imap_delete(struct imap *im, const char *folder, imap_done_cb done, void *arg);
/* RENAME from to (RFC 3501 section 6.3.5): the server renames the folder's
 * children with it. */
int imap_rename(struct imap *im, const char *from, const char *to, imap_done_cb done, void *arg);

/* IDLE: done is called when the IDLE command ends (after imap_idle_stop,
 * or when the server ends it). Events arrive meanwhile; the state is
 * IMAP_STATE_IDLE once the server accepted it. Queuing any other command
 * while idling ends IDLE first automatically. Without IDLE: IMAP_ENOTSUP
 * as for imap_uid_expunge. The owner re-issues IDLE before 29 minutes. */
int imap_idle_start(struct imap *im, imap_done_cb done, void *arg);
void imap_idle_stop(struct imap *im);

/* NOTIFY (RFC 5465): spec is the rest of the command, e.g. "SET
 * (SELECTED-DELAYED (MessageNew MessageExpunge FlagChange)) (PERSONAL
 * (MessageNew MessageExpunge))" or "NONE". What the server then announces
 * arrives as events: untagged STATUS (IMAP_EV_STATUS) for other folders,
 * EXISTS/EXPUNGE/FETCH for the selected one. Without NOTIFY: IMAP_ENOTSUP
 * as for imap_uid_expunge. */
int imap_notify(struct imap *im, const char *spec, imap_done_cb done, void *arg);

/* LOGOUT: done is called after the server's BYE and tagged OK; no
 * on_error follows for the BYE. */
int imap_logout(struct imap *im, imap_done_cb done, void *arg);

/* UID set helpers. */

/* Formats uids (any order, duplicates allowed) as compressed ranges
 * ("1:3,5,9:12"), split into several sets so that none is longer than
 * max_len bytes (0 = 8000). Returns the number of sets; *sets_r is an
 * array of that many malloc'd strings (free each, then the array). */
size_t imap_uidset_format(const uint32_t *uids, size_t n, size_t max_len, char ***sets_r);
/* "*" as the upper end of a range for imap_uid_range_format. */
#define IMAP_UID_STAR UINT32_MAX
/* Formats the one range lo:hi into buf ("7", "1:9", "7:*" for hi
 * IMAP_UID_STAR). Returns 0, or -EINVAL when the range is empty or invalid
 * (lo 0, or hi below lo): then no command must be sent for it, as "1:0" is
 * no valid set and servers answer BAD. -ENOSPC when buf is too small. */
int imap_uid_range_format(uint32_t lo, uint32_t hi, char *buf, size_t cap);
/* Parses a UID set into ascending, merged ranges ('*' is taken as
 * 4294967295). Returns 0, or -EINVAL for a malformed set. *ranges_r is
 * malloc'd. */
int imap_uidset_parse(const char *s, struct imap_uid_range **ranges_r, size_t *n_r);
/* True when uid is inside one of the ranges. */
bool imap_uidset_contains(const struct imap_uid_range *ranges, size_t n, uint32_t uid);
/* Whether s (len bytes) is an IMAP atom (RFC 3501 section 9), as a keyword
 * must be. */
bool imap_is_atom(const char *s, size_t len);

/* The Message-ID of a header block (CRLF or LF line ends; only the lines
 * before the first empty line count): the first Message-ID field, unfolded
 * (a line break followed by a space or tab is removed) with white space
 * trimmed from both ends. Returns a malloc'd string, or NULL when there is
 * no such field or it is empty. The engine applies the same function to
 * local files and to the server's answer, so both sides compare equal. */
char *imap_header_message_id(const char *hdr, size_t len);

#endif
