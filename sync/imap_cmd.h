/* Internals of the IMAP client shared by imap.c (connection, writer,
 * dispatch) and imap_cmd.c (commands and their results). Not part of the
 * public interface: only sync/imap*.c include it. */
#ifndef MAILSYNC_IMAP_CMD_H
#define MAILSYNC_IMAP_CMD_H

#include "sync/imap.h"

#include "core/util.h"

enum imap_cmd_kind {
    /* Login sequence (internal, no owner callback). */
    IMAP_CMD_CAPABILITY = 0,
    IMAP_CMD_STARTTLS,
    IMAP_CMD_LOGIN,
    IMAP_CMD_AUTH_PLAIN,
    IMAP_CMD_AUTH_XOAUTH2,
    IMAP_CMD_AUTH_OAUTHBEARER,
    IMAP_CMD_COMPRESS,
    IMAP_CMD_ID,
    IMAP_CMD_ENABLE,
    IMAP_CMD_DELIM, /* LIST "" "" */
    /* Owner commands. */
    IMAP_CMD_NOOP,
    IMAP_CMD_LIST,
    IMAP_CMD_STATUS,
    IMAP_CMD_SELECT,
    IMAP_CMD_FETCH,
    IMAP_CMD_SEARCH,
    IMAP_CMD_STORE,
    IMAP_CMD_APPEND,
    IMAP_CMD_EXPUNGE,
    IMAP_CMD_MOVE,
    IMAP_CMD_COPY,
    IMAP_CMD_CREATE,
    IMAP_CMD_DELETE,
    IMAP_CMD_IDLE,
    IMAP_CMD_NOTIFY,
    IMAP_CMD_LOGOUT,
    IMAP_CMD_RENAME,
};

enum imap_part_type {
    IMAP_PART_TEXT = 0, /* bytes sent as they are */
    IMAP_PART_LITERAL,  /* {n} or {n+}, then data (inline or the APPEND source) */
    IMAP_PART_CONT,     /* wait for "+", then send data (a SASL response) */
};

struct imap_part {
    enum imap_part_type type;
    char *data;
    size_t len;
    uint64_t size; /* LITERAL */
    bool source;   /* LITERAL: data comes from the APPEND source */
    bool secret;   /* wipe data when freed */
    bool announced;
};

struct imap_folder_item {
    struct imap_folder f;
    char *name, *raw;
    const char *why;
    char *status_folder;
};

struct imap_cmd {
    struct imap_cmd *next;
    enum imap_cmd_kind kind;
    char tag[16];
    bool internal;
    bool built;
    unsigned stage; /* multi-step commands: LIST+LSUB, MOVE fallback */
    /* Wire form, built when the command leaves the queue (the delimiter
     * and capabilities are known by then). */
    struct imap_part *parts;
    size_t nparts, cap_parts;
    size_t wpart;
    struct sbuf trace;
    /* Owner's request. */
    imap_done_cb done;
    void *arg;
    char *folder;  /* UTF-8 name */
    char *folder2; /* server form, after build */
    char *uidset;
    char *criteria;
    unsigned items;
    uint64_t modseq;
    bool vanished;
    char op;
    unsigned flags;
    char **keywords;
    size_t nkeywords;
    struct imap_select_opts sel;
    char *qresync_known;
    struct imap_fetch_cb fcb;
    struct imap_uid_range *ranges; /* FETCH routing */
    size_t nranges;
    void (*on_folder)(struct imap *, const struct imap_folder *, void *);
    void (*on_status)(struct imap *, const struct imap_status_info *, void *);
    struct imap_append app;
    uint64_t src_sent;
    bool src_prev_cr;
    /* Results collected before the tagged answer. */
    struct imap_mailbox mb;
    /* SELECT while another mailbox is selected, under QRESYNC: untagged
     * data before the server's [CLOSED] is the old mailbox's (RFC 7162
     * section 3.2.11) and is dropped; dropped counts it. */
    bool await_closed;
    unsigned dropped;
    struct imap_folder_item *folders;
    size_t nfolders, cap_folders;
    struct strindex folder_ix; /* raw name -> position in folders */
    uint32_t *uids;
    size_t nuids, cap_uids;
    bool search_seen; /* its untagged SEARCH arrived (pipelined SEARCHes) */
    uint32_t copy_uidvalidity;
    struct sbuf copy_src, copy_dst;
    bool move_not_expunged;
    /* Local failure, completed from the loop. */
    int local_err;
    char *local_msg;
};

struct imap {
    uv_loop_t *loop;
    struct imap_opts opts;
    struct imap_cb cb;
    void *arg;
    char *name;
    char *hostport;
    enum imap_state state;
    struct net_conn *net;
    struct imap_parser *parser;
    uv_timer_t defer;
    unsigned busy;
    bool freeing;

    /* Connection facts. */
    bool tls_active;
    bool authenticated;
    bool compressed, compress_refused;
    unsigned caps;
    bool caps_known;
    unsigned caps_gen, auth_caps_gen;
    char *caps_str;
    bool condstore, qresync, utf8;
    char delim;
    bool delim_unknown;
    unsigned setup_pending;
    bool starttls_ok;
    bool got_bye;
    char *error;
    int error_code;
    char *deferred_msg; /* a fatal error waiting to be reported from the loop */
    int deferred_err;

    /* Selected mailbox. */
    bool selected;
    struct imap_mailbox sel;

    /* Commands: internal (login sequence) and owner queues, in flight. */
    struct imap_cmd *iq, *iq_tail;
    struct imap_cmd *uq, *uq_tail;
    struct imap_cmd *inflight, *inflight_tail;
    unsigned ninflight;
    struct imap_cmd *local_done, *local_done_tail;
    unsigned depth;
    unsigned tagseq;

    /* Writer. */
    struct sbuf out;
    struct imap_cmd *wcmd;
    bool wait_cont;
    bool wblocked;
    bool pumping;

    /* IDLE. */
    bool idling;
    bool idle_stop_requested;

    /* Reader / body streaming. */
    bool paused, resume_pending;
    struct sbuf backlog;
    bool body_active;
    struct imap_cmd *body_cmd;
    void *body_sink;
    uint64_t body_bytes;
    uint32_t body_seq;
    bool body_have;
};

/* imap.c */
void imap_set_state(struct imap *im, enum imap_state s);
bool imap_dead(const struct imap *im);
void imap_fail(struct imap *im, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void imap_pump(struct imap *im);
void imap_send_raw(struct imap *im, const char *s, const char *trace);
void imap_internal_done(struct imap *im, struct imap_cmd *c, const struct imap_response *resp);
void imap_emit_text(struct imap *im, enum imap_event_type type, const char *text);
void imap_defer(struct imap *im);
void imap_pause_input(struct imap *im);

/* imap_cmd.c */
const char *imap_cmd_kind_name(enum imap_cmd_kind k);
void imap_cmd_internal(struct imap *im, enum imap_cmd_kind kind);
struct imap_cmd *imap_cmd_next(struct imap *im);
void imap_cmd_inflight_add(struct imap *im, struct imap_cmd *c);
struct imap_cmd *imap_cmd_inflight_kind(struct imap *im, enum imap_cmd_kind kind);
void imap_cmd_tagged(struct imap *im, const struct imap_response *r);
void imap_cmd_untagged(struct imap *im, const struct imap_response *r);
void imap_cmd_untagged_ok(struct imap *im, const struct imap_response *r);
void imap_cmd_literal(struct imap *im, int what, const struct imap_literal *lit);
void imap_cmd_abort_all(struct imap *im, int err, const char *msg);
void imap_cmd_free_all(struct imap *im);
void imap_cmd_run_local(struct imap *im);
void imap_cmd_logout_closed(struct imap *im);

#endif
