/* The in-memory IMAP server of the executor tests (see fake_remote.h). */
#include "fake_remote.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/util.h"

/* ---- server state ---- */

struct gone {
    uint32_t uid;
    uint64_t modseq; /* the mailbox's MODSEQ when it was expunged */
};

struct fbox {
    char *name;
    unsigned attrs;
    uint32_t uidvalidity, uidnext;
    uint64_t modseq; /* HIGHESTMODSEQ */
    struct fake_msg *msgs;
    size_t n, cap;
    struct gone *gone;
    size_t ngone, gone_cap;
};

struct oplog {
    enum fake_op kind;
    bool body;
    char *text;
};

struct fake_server {
    unsigned caps;
    struct fbox **boxes;
    size_t nboxes, boxes_cap;
    uint32_t next_uidvalidity;
    unsigned connections, logins;
    struct remote *conns; /* open connections */
    unsigned counts[FAKE_OP_COUNT_];
    struct oplog *log;
    size_t nlog, log_cap;
    enum fake_op fault_op;
    unsigned fault_n;
    enum fake_fault fault;
    bool fault_fired;
};

/* ---- connections and queued commands ---- */

struct fcmd {
    struct fcmd *next;
    enum fake_op op;
    bool is_event;
    enum fake_fault fault;
    imap_done_cb done;
    void *arg;
    void (*on_folder)(struct imap *, const struct imap_folder *, void *);
    struct imap_fetch_cb fcb;
    char *folder, *uidset, *criteria;
    unsigned items;
    uint64_t changedsince;
    bool vanished;
    struct imap_select_opts so;
    char sop;
    unsigned flags;
    char **kw;
    size_t nkw;
    uint64_t unchangedsince;
    /* APPEND: where the body comes from; it is read when the command is
     * processed, as the real client reads it when it writes. */
    int fd;
    bool lf_to_crlf;
    ssize_t (*read)(void *, char *, size_t);
    void *read_arg;
    uint64_t size;
    time_t date;
    /* Events. */
    struct imap_event ev;
    struct imap_uid_range *ev_ranges;
    struct imap_msg ev_msg;
    char **ev_kw;
};

struct remote {
    struct fake_server *s;
    struct remote *next_conn;
    uv_timer_t timer;
    struct imap_cb cb;
    void *arg;
    enum imap_state state;
    bool condstore, qresync;
    char *selected;
    char *error;
    struct fcmd *head, *tail;
    int depth;
    bool freed;
};

static const char *const op_names[FAKE_OP_COUNT_] = {
    "ANY",    "CONNECT", "LIST", "SELECT", "FETCH",  "SEARCH", "STORE",
    "APPEND", "EXPUNGE", "MOVE", "CREATE", "DELETE", "LOGOUT",
};

const char *fake_op_name(enum fake_op op)
{
    return op < FAKE_OP_COUNT_ ? op_names[op] : "?";
}

static const char *const fault_names[FAKE_FAULT_COUNT_] = {
    "none", "drop", "drop-after", "NO", "BAD", "malformed", "drop-mid-body",
};

const char *fake_fault_name(enum fake_fault f)
{
    return f < FAKE_FAULT_COUNT_ ? fault_names[f] : "?";
}

unsigned fake_profile_caps(enum fake_profile p)
{
    unsigned base = IMAP_CAP_IMAP4REV1 | IMAP_CAP_ID | IMAP_CAP_ENABLE | IMAP_CAP_IDLE |
                    IMAP_CAP_LITERALPLUS | IMAP_CAP_SPECIAL_USE | IMAP_CAP_AUTH_PLAIN |
                    IMAP_CAP_SASL_IR | IMAP_CAP_UIDPLUS | IMAP_CAP_MOVE;
    switch (p) {
    case FAKE_PROFILE_QRESYNC:
        return base | IMAP_CAP_CONDSTORE | IMAP_CAP_QRESYNC | IMAP_CAP_LIST_EXTENDED |
               IMAP_CAP_LIST_STATUS | IMAP_CAP_ESEARCH | IMAP_CAP_NOTIFY;
    case FAKE_PROFILE_CONDSTORE:
        return base | IMAP_CAP_CONDSTORE;
    case FAKE_PROFILE_PLAIN:
        return base;
    }
    return base;
}

const char *fake_profile_name(enum fake_profile p)
{
    switch (p) {
    case FAKE_PROFILE_QRESYNC:
        return "qresync";
    case FAKE_PROFILE_CONDSTORE:
        return "condstore";
    case FAKE_PROFILE_PLAIN:
        return "plain";
    }
    return "?";
}

/* ---- mailboxes ---- */

static void msg_free(struct fake_msg *m)
{
    for (size_t i = 0; i < m->nkeywords; i++) {
        free(m->keywords[i]);
    }
    free(m->keywords);
    free(m->body);
}

static void box_free(struct fbox *b)
{
    for (size_t i = 0; i < b->n; i++) {
        msg_free(&b->msgs[i]);
    }
    free(b->msgs);
    free(b->gone);
    free(b->name);
    free(b);
}

static struct fbox *find_box(const struct fake_server *s, const char *name)
{
    if (s == NULL || name == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < s->nboxes; i++) {
        const char *n = s->boxes[i]->name;
        /* INBOX is case-insensitive (RFC 3501 section 5.1). */
        if (strcmp(n, name) == 0 ||
            (strcasecmp(n, "INBOX") == 0 && strcasecmp(name, "INBOX") == 0)) {
            return s->boxes[i];
        }
    }
    return NULL;
}

static ssize_t msg_index(const struct fbox *b, uint32_t uid)
{
    size_t lo = 0, hi = b->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b->msgs[mid].uid < uid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < b->n && b->msgs[lo].uid == uid ? (ssize_t)lo : -1;
}

struct fake_server *fake_server_new(unsigned caps)
{
    struct fake_server *s = xcalloc(1, sizeof(*s));
    s->caps = caps;
    s->next_uidvalidity = 1000;
    return s;
}

void fake_ops_reset(struct fake_server *s)
{
    memset(s->counts, 0, sizeof(s->counts));
    for (size_t i = 0; i < s->nlog; i++) {
        free(s->log[i].text);
    }
    s->nlog = 0;
    s->fault = FAKE_FAULT_NONE;
    s->fault_fired = false;
}

void fake_server_free(struct fake_server *s)
{
    if (s == NULL) {
        return;
    }
    /* Connections the engine has not freed yet must not reach back. */
    for (struct remote *c = s->conns; c != NULL; c = c->next_conn) {
        c->s = NULL;
    }
    for (size_t i = 0; i < s->nboxes; i++) {
        box_free(s->boxes[i]);
    }
    free(s->boxes);
    fake_ops_reset(s);
    free(s->log);
    free(s);
}

int fake_mailbox_add(struct fake_server *s, const char *name, unsigned attrs)
{
    if (find_box(s, name) != NULL) {
        return -EEXIST;
    }
    struct fbox *b = xcalloc(1, sizeof(*b));
    b->name = xstrdup(name);
    b->attrs = attrs;
    b->uidvalidity = s->next_uidvalidity++;
    b->uidnext = 1;
    b->modseq = 1;
    xgrow(&s->boxes, &s->boxes_cap, s->nboxes + 1, sizeof(*s->boxes));
    s->boxes[s->nboxes++] = b;
    return 0;
}

bool fake_mailbox_exists(const struct fake_server *s, const char *name)
{
    return find_box(s, name) != NULL;
}

uint32_t fake_mailbox_uidvalidity(const struct fake_server *s, const char *name)
{
    const struct fbox *b = find_box(s, name);
    return b != NULL ? b->uidvalidity : 0;
}

uint64_t fake_mailbox_highestmodseq(const struct fake_server *s, const char *name)
{
    const struct fbox *b = find_box(s, name);
    return b != NULL ? b->modseq : 0;
}

int fake_mailbox_renumber(struct fake_server *s, const char *box)
{
    struct fbox *b = find_box(s, box);
    if (b == NULL) {
        return -ENOENT;
    }
    b->uidvalidity = s->next_uidvalidity++;
    b->uidnext = 1;
    for (size_t i = 0; i < b->n; i++) {
        b->msgs[i].uid = b->uidnext++;
        b->msgs[i].modseq = ++b->modseq;
    }
    b->ngone = 0;
    return 0;
}

size_t fake_message_count(const struct fake_server *s, const char *box)
{
    const struct fbox *b = find_box(s, box);
    return b != NULL ? b->n : 0;
}

const struct fake_msg *fake_message_at(const struct fake_server *s, const char *box, size_t i)
{
    const struct fbox *b = find_box(s, box);
    return b != NULL && i < b->n ? &b->msgs[i] : NULL;
}

const struct fake_msg *fake_message_find(const struct fake_server *s, const char *box, uint32_t uid)
{
    const struct fbox *b = find_box(s, box);
    ssize_t i = b != NULL ? msg_index(b, uid) : -1;
    return i >= 0 ? &b->msgs[i] : NULL;
}

bool fake_msg_has_keyword(const struct fake_msg *m, const char *kw)
{
    for (size_t i = 0; i < m->nkeywords; i++) {
        if (strcasecmp(m->keywords[i], kw) == 0) {
            return true;
        }
    }
    return false;
}

/* Body bytes with CRLF line ends (a lone LF becomes CRLF). */
static char *to_crlf(const char *data, size_t len, size_t *len_r)
{
    struct sbuf sb = {0};
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\n' && (i == 0 || data[i - 1] != '\r')) {
            sbuf_addc(&sb, '\r');
        }
        sbuf_addc(&sb, data[i]);
    }
    *len_r = sb.len;
    return sb.buf != NULL ? sbuf_detach(&sb) : xstrdup("");
}

static bool kw_add(struct fake_msg *m, const char *kw)
{
    if (fake_msg_has_keyword(m, kw)) {
        return false;
    }
    m->keywords = xrealloc(m->keywords, (m->nkeywords + 1) * sizeof(char *));
    m->keywords[m->nkeywords++] = xstrdup(kw);
    return true;
}

static bool kw_remove(struct fake_msg *m, const char *kw)
{
    for (size_t i = 0; i < m->nkeywords; i++) {
        if (strcasecmp(m->keywords[i], kw) == 0) {
            free(m->keywords[i]);
            memmove(&m->keywords[i], &m->keywords[i + 1], (m->nkeywords - i - 1) * sizeof(char *));
            m->nkeywords--;
            return true;
        }
    }
    return false;
}

/* Adds a message with CRLF bytes taken over; returns it. */
static struct fake_msg *box_add(struct fbox *b, char *crlf, size_t len, unsigned flags,
                                const char *const *kw, size_t nkw, time_t date)
{
    xgrow(&b->msgs, &b->cap, b->n + 1, sizeof(*b->msgs));
    struct fake_msg *m = &b->msgs[b->n++];
    memset(m, 0, sizeof(*m));
    m->uid = b->uidnext++;
    m->flags = flags & ~(unsigned)IMAP_FLAG_RECENT;
    for (size_t i = 0; i < nkw; i++) {
        kw_add(m, kw[i]);
    }
    m->modseq = ++b->modseq;
    m->internaldate = date != 0 ? date : time(NULL);
    m->body = crlf;
    m->len = len;
    return m;
}

/* Removes the message at index i, remembering its UID for VANISHED. */
static void box_remove(struct fbox *b, size_t i)
{
    xgrow(&b->gone, &b->gone_cap, b->ngone + 1, sizeof(*b->gone));
    b->gone[b->ngone++] = (struct gone){b->msgs[i].uid, ++b->modseq};
    msg_free(&b->msgs[i]);
    memmove(&b->msgs[i], &b->msgs[i + 1], (b->n - i - 1) * sizeof(*b->msgs));
    b->n--;
}

/* ---- the queue ---- */

static void conn_tick(uv_timer_t *t);

static void cmd_free(struct fcmd *c)
{
    free(c->folder);
    free(c->uidset);
    free(c->criteria);
    free((char *)c->so.qresync_known_uids);
    for (size_t i = 0; i < c->nkw; i++) {
        free(c->kw[i]);
    }
    free(c->kw);
    free(c->ev_ranges);
    if (c->ev_kw != NULL) {
        for (size_t i = 0; c->ev_kw[i] != NULL; i++) {
            free(c->ev_kw[i]);
        }
        free(c->ev_kw);
    }
    free(c);
}

static bool usable(const struct remote *c)
{
    return c != NULL && !c->freed && c->s != NULL && c->state != IMAP_STATE_FAILED &&
           c->state != IMAP_STATE_CLOSED && c->state != IMAP_STATE_LOGOUT;
}

static void enqueue(struct remote *c, struct fcmd *cmd)
{
    if (c->tail != NULL) {
        c->tail->next = cmd;
    } else {
        c->head = cmd;
    }
    c->tail = cmd;
    if (c->depth == 0) {
        uv_timer_start(&c->timer, conn_tick, 0, 0);
    }
}

static struct fcmd *dequeue(struct remote *c)
{
    struct fcmd *cmd = c->head;
    if (cmd != NULL) {
        c->head = cmd->next;
        if (c->head == NULL) {
            c->tail = NULL;
        }
        cmd->next = NULL;
    }
    return cmd;
}

/* Counts one accepted operation call and decides whether the armed fault
 * hits it. text is taken over for the log. */
static enum fake_fault count_op(struct fake_server *s, enum fake_op op, bool body, char *text)
{
    s->counts[FAKE_OP_ANY]++;
    s->counts[op]++;
    xgrow(&s->log, &s->log_cap, s->nlog + 1, sizeof(*s->log));
    s->log[s->nlog++] = (struct oplog){op, body, text};
    if (s->fault == FAKE_FAULT_NONE || s->fault_fired) {
        return FAKE_FAULT_NONE;
    }
    if (s->fault_op != FAKE_OP_ANY && s->fault_op != op) {
        return FAKE_FAULT_NONE;
    }
    if (s->counts[s->fault_op] != s->fault_n) {
        return FAKE_FAULT_NONE;
    }
    s->fault_fired = true;
    return s->fault;
}

static struct fcmd *new_cmd(struct remote *c, enum fake_op op, bool body, char *text,
                            imap_done_cb done, void *arg)
{
    struct fcmd *cmd = xcalloc(1, sizeof(*cmd));
    cmd->op = op;
    cmd->fd = -1;
    cmd->done = done;
    cmd->arg = arg;
    cmd->fault = count_op(c->s, op, body, text);
    return cmd;
}

void fake_fault_at(struct fake_server *s, enum fake_op op, unsigned n, enum fake_fault f)
{
    fake_ops_reset(s);
    s->fault_op = op;
    s->fault_n = n;
    s->fault = f;
}

bool fake_fault_fired(const struct fake_server *s)
{
    return s->fault_fired;
}

unsigned fake_op_count(const struct fake_server *s, enum fake_op op)
{
    return op < FAKE_OP_COUNT_ ? s->counts[op] : 0;
}

enum fake_op fake_op_kind_at(const struct fake_server *s, unsigned n)
{
    return n >= 1 && n <= s->nlog ? s->log[n - 1].kind : FAKE_OP_ANY;
}

const char *fake_op_text_at(const struct fake_server *s, unsigned n)
{
    return n >= 1 && n <= s->nlog ? s->log[n - 1].text : NULL;
}

bool fake_op_is_body_fetch(const struct fake_server *s, unsigned n)
{
    return n >= 1 && n <= s->nlog && s->log[n - 1].body;
}

unsigned fake_connections(const struct fake_server *s)
{
    return s->connections;
}

unsigned fake_logins(const struct fake_server *s)
{
    return s->logins;
}

unsigned fake_open_connections(const struct fake_server *s)
{
    unsigned n = 0;
    for (const struct remote *c = s->conns; c != NULL; c = c->next_conn) {
        n++;
    }
    return n;
}

/* ---- failing a connection ---- */

static void call_done(struct fcmd *cmd, const struct imap_result *res)
{
    imap_done_cb done = cmd->op == FAKE_OP_FETCH ? cmd->fcb.done : cmd->done;
    if (done != NULL) {
        done(NULL, res, cmd->arg);
    }
}

/* As the client's imap_fail: FAILED first (so the owner sees it inside the
 * completions), every pending command completes with err, then on_error;
 * an owner that frees the connection meanwhile hears nothing more. cur is
 * the command being processed (already off the queue) or NULL. */
static void fail_conn(struct remote *c, struct fcmd *cur, int err, const char *msg)
{
    if (c->state == IMAP_STATE_FAILED) {
        return;
    }
    c->state = IMAP_STATE_FAILED;
    free(c->error);
    c->error = xstrdup(msg);
    struct imap_result res = {.err = err, .status = IMAP_STATUS_NONE, .text = c->error};
    if (cur != NULL && !cur->is_event && cur->op != FAKE_OP_CONNECT) {
        call_done(cur, &res);
    }
    struct fcmd *cmd;
    while (!c->freed && (cmd = dequeue(c)) != NULL) {
        if (!cmd->is_event && cmd->op != FAKE_OP_CONNECT) {
            call_done(cmd, &res);
        }
        cmd_free(cmd);
    }
    if (!c->freed && c->cb.on_error != NULL) {
        c->cb.on_error(NULL, err, c->error, c->arg);
    }
}

static void fail_fault(struct remote *c, struct fcmd *cur)
{
    if (cur->fault == FAKE_FAULT_MALFORMED) {
        fail_conn(c, cur, IMAP_EPROTO, "fake: malformed response (injected)");
    } else {
        fail_conn(c, cur, UV_ECONNRESET, "fake: connection reset by peer (injected)");
    }
}

/* How many of n untagged responses a command sends before its fault
 * strikes (all of them without one). */
static size_t untagged_limit(const struct fcmd *cmd, size_t n)
{
    switch (cmd->fault) {
    case FAKE_FAULT_DROP:
    case FAKE_FAULT_MALFORMED:
    case FAKE_FAULT_DROP_MID_BODY:
        return n / 2;
    default:
        return n;
    }
}

static bool cut_short(const struct fcmd *cmd)
{
    return cmd->fault == FAKE_FAULT_DROP || cmd->fault == FAKE_FAULT_DROP_AFTER ||
           cmd->fault == FAKE_FAULT_MALFORMED || cmd->fault == FAKE_FAULT_DROP_MID_BODY;
}

static void done_status(struct remote *c, struct fcmd *cmd, enum imap_status st, const char *code,
                        const char *text)
{
    (void)c;
    struct imap_result res = {.status = st, .code = code, .text = text};
    call_done(cmd, &res);
}

/* ---- events ---- */

static struct fcmd *event_cmd(enum imap_event_type type)
{
    struct fcmd *e = xcalloc(1, sizeof(*e));
    e->is_event = true;
    e->fd = -1;
    e->ev.type = type;
    return e;
}

static struct fcmd *ev_exists(const struct fbox *b)
{
    struct fcmd *e = event_cmd(IMAP_EV_EXISTS);
    e->ev.n = (uint32_t)b->n;
    return e;
}

static struct fcmd *ev_fetch(const struct remote *c, const struct fbox *b, size_t i, bool flags)
{
    const struct fake_msg *m = &b->msgs[i];
    struct fcmd *e = event_cmd(IMAP_EV_FETCH);
    e->ev_msg.seq = (uint32_t)i + 1;
    e->ev_msg.uid = m->uid;
    if (flags) {
        e->ev_msg.have |= IMAP_FETCH_FLAGS;
        e->ev_msg.flags = m->flags;
        e->ev_kw = xcalloc(m->nkeywords + 1, sizeof(char *));
        for (size_t k = 0; k < m->nkeywords; k++) {
            e->ev_kw[k] = xstrdup(m->keywords[k]);
        }
        e->ev_msg.keywords = (const char *const *)e->ev_kw;
        e->ev_msg.nkeywords = m->nkeywords;
    }
    if (c->condstore) {
        e->ev_msg.have |= IMAP_FETCH_MODSEQ;
        e->ev_msg.modseq = m->modseq;
    }
    e->ev.msg = &e->ev_msg;
    return e;
}

static struct fcmd *ev_vanished(const uint32_t *uids, size_t n, bool earlier)
{
    struct fcmd *e = event_cmd(IMAP_EV_VANISHED);
    e->ev_ranges = xcalloc(n + 1, sizeof(*e->ev_ranges));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k > 0 && e->ev_ranges[k - 1].hi + 1 == uids[i]) {
            e->ev_ranges[k - 1].hi = uids[i];
        } else {
            e->ev_ranges[k++] = (struct imap_uid_range){uids[i], uids[i]};
        }
    }
    e->ev.ranges = e->ev_ranges;
    e->ev.nranges = k;
    e->ev.earlier = earlier;
    return e;
}

static struct fcmd *ev_expunge(uint32_t seq)
{
    struct fcmd *e = event_cmd(IMAP_EV_EXPUNGE);
    e->ev.n = seq;
    return e;
}

/* Delivers an event now (the connection is processing a command from the
 * loop) or queues it (a test call, or another connection's change). */
static void emit(struct remote *to, struct remote *cur, struct fcmd *ev)
{
    if (to == cur) {
        if (!to->freed && to->state != IMAP_STATE_FAILED && to->cb.on_event != NULL) {
            to->cb.on_event(NULL, &ev->ev, to->arg);
        }
        cmd_free(ev);
        return;
    }
    enqueue(to, ev);
}

static bool selects(const struct remote *c, const struct fbox *b)
{
    return usable(c) && c->selected != NULL && find_box(c->s, c->selected) == b;
}

/* EXISTS to the other connections that have b selected; self (when it has
 * b selected and allow) hears it now. */
static void tell_exists(struct fake_server *s, struct fbox *b, struct remote *self, bool allow)
{
    for (struct remote *c = s->conns; c != NULL; c = c->next_conn) {
        if (selects(c, b) && (c != self || allow)) {
            emit(c, self, ev_exists(b));
        }
    }
}

/* The removal of the messages at the ascending indexes ix[0..n) of b,
 * told to every connection that has b selected (before they are removed,
 * so that sequence numbers are right): VANISHED under QRESYNC, else
 * EXPUNGE from the highest sequence number down. */
static void tell_expunge(struct fake_server *s, struct fbox *b, const size_t *ix, size_t n,
                         struct remote *self, bool allow)
{
    if (n == 0) {
        return;
    }
    uint32_t *uids = xcalloc(n, sizeof(*uids));
    for (size_t i = 0; i < n; i++) {
        uids[i] = b->msgs[ix[i]].uid;
    }
    for (struct remote *c = s->conns; c != NULL; c = c->next_conn) {
        if (!selects(c, b) || (c == self && !allow)) {
            continue;
        }
        if (c->qresync) {
            emit(c, self, ev_vanished(uids, n, false));
        } else {
            for (size_t i = n; i > 0; i--) {
                emit(c, self, ev_expunge((uint32_t)ix[i - 1] + 1));
            }
        }
    }
    free(uids);
}

uint32_t fake_message_add(struct fake_server *s, const char *box, const char *body, unsigned flags,
                          const char *const *keywords, size_t nkeywords, time_t internaldate)
{
    struct fbox *b = find_box(s, box);
    if (b == NULL) {
        return 0;
    }
    size_t len;
    char *crlf = to_crlf(body, strlen(body), &len);
    uint32_t uid = box_add(b, crlf, len, flags, keywords, nkeywords, internaldate)->uid;
    tell_exists(s, b, NULL, false);
    return uid;
}

static bool apply_flags(struct fake_msg *m, char op, unsigned flags, const char *const *kw,
                        size_t nkw)
{
    unsigned old = m->flags;
    bool changed = false;
    flags &= ~(unsigned)IMAP_FLAG_RECENT;
    if (op == '+') {
        m->flags |= flags;
    } else if (op == '-') {
        m->flags &= ~flags;
    } else {
        m->flags = flags;
    }
    for (size_t i = 0; i < nkw; i++) {
        if (op == '-') {
            changed |= kw_remove(m, kw[i]);
        } else {
            changed |= kw_add(m, kw[i]);
        }
    }
    return changed || old != m->flags;
}

int fake_message_flags(struct fake_server *s, const char *box, uint32_t uid, char op,
                       unsigned flags, const char *const *keywords, size_t nkeywords)
{
    struct fbox *b = find_box(s, box);
    ssize_t i = b != NULL ? msg_index(b, uid) : -1;
    if (i < 0) {
        return -ENOENT;
    }
    if (apply_flags(&b->msgs[i], op, flags, keywords, nkeywords)) {
        b->msgs[i].modseq = ++b->modseq;
        for (struct remote *c = s->conns; c != NULL; c = c->next_conn) {
            if (selects(c, b)) {
                emit(c, NULL, ev_fetch(c, b, (size_t)i, true));
            }
        }
    }
    return 0;
}

int fake_message_expunge(struct fake_server *s, const char *box, uint32_t uid)
{
    struct fbox *b = find_box(s, box);
    ssize_t i = b != NULL ? msg_index(b, uid) : -1;
    if (i < 0) {
        return -ENOENT;
    }
    size_t ix = (size_t)i;
    tell_expunge(s, b, &ix, 1, NULL, false);
    box_remove(b, ix);
    return 0;
}

unsigned fake_notify_exists(struct fake_server *s, const char *box)
{
    struct fbox *b = find_box(s, box);
    unsigned n = 0;
    for (struct remote *c = s->conns; b != NULL && c != NULL; c = c->next_conn) {
        if (selects(c, b)) {
            emit(c, NULL, ev_exists(b));
            n++;
        }
    }
    return n;
}

/* ---- UID sets ---- */

/* The indexes of b's messages in the UID set, ascending. As servers do,
 * "n:*" with n past the last UID means the last message (RFC 9051 section
 * 6.4.9: "*" is the largest UID in use). Returns -EINVAL for a bad set. */
static int match_set(const struct fbox *b, const char *set, size_t **ix_r, size_t *n_r)
{
    struct imap_uid_range *r;
    size_t nr;
    if (imap_uidset_parse(set, &r, &nr) < 0) {
        return -EINVAL;
    }
    uint32_t max = b->n > 0 ? b->msgs[b->n - 1].uid : 0;
    for (size_t k = 0; k < nr; k++) {
        if (r[k].hi == UINT32_MAX) {
            r[k].hi = max;
            if (r[k].lo > max) {
                r[k].lo = max;
            }
        }
    }
    size_t *ix = xcalloc(b->n + 1, sizeof(*ix));
    size_t n = 0;
    for (size_t i = 0; i < b->n; i++) {
        uint32_t u = b->msgs[i].uid;
        for (size_t k = 0; k < nr; k++) {
            if (u >= r[k].lo && u <= r[k].hi) {
                ix[n++] = i;
                break;
            }
        }
    }
    free(r);
    *ix_r = ix;
    *n_r = n;
    return 0;
}

static char *format_uids(const uint32_t *uids, size_t n)
{
    if (n == 0) {
        return NULL;
    }
    char **sets;
    size_t ns = imap_uidset_format(uids, n, 0, &sets);
    struct sbuf sb = {0};
    for (size_t i = 0; i < ns; i++) {
        sbuf_addf(&sb, "%s%s", i > 0 ? "," : "", sets[i]);
        free(sets[i]);
    }
    free(sets);
    return sbuf_detach(&sb);
}

/* ---- commands ---- */

static struct fbox *selected_box(struct remote *c)
{
    return c->selected != NULL ? find_box(c->s, c->selected) : NULL;
}

static void run_connect(struct remote *c, struct fcmd *cmd)
{
    switch (cmd->fault) {
    case FAKE_FAULT_NONE:
        break;
    case FAKE_FAULT_NO:
        fail_conn(c, cmd, IMAP_EAUTH, "fake: login refused (injected NO)");
        return;
    case FAKE_FAULT_BAD:
        fail_conn(c, cmd, IMAP_ECMD, "fake: login answered BAD (injected)");
        return;
    default:
        fail_fault(c, cmd);
        return;
    }
    c->s->logins++;
    c->state = IMAP_STATE_READY;
    c->condstore = (c->s->caps & (IMAP_CAP_CONDSTORE | IMAP_CAP_QRESYNC)) != 0;
    c->qresync = (c->s->caps & IMAP_CAP_QRESYNC) != 0;
    if (c->cb.on_ready != NULL) {
        c->cb.on_ready(NULL, c->arg);
    }
}

static int box_cmp(const void *a, const void *b)
{
    const struct fbox *x = *(struct fbox *const *)a, *y = *(struct fbox *const *)b;
    bool xi = strcasecmp(x->name, "INBOX") == 0, yi = strcasecmp(y->name, "INBOX") == 0;
    if (xi != yi) {
        return xi ? -1 : 1;
    }
    return strcmp(x->name, y->name);
}

static void run_list(struct remote *c, struct fcmd *cmd)
{
    struct fake_server *s = c->s;
    /* Sorted once so a listing is stable whatever the creation order. */
    qsort(s->boxes, s->nboxes, sizeof(*s->boxes), box_cmp);
    size_t n = s->nboxes, limit = untagged_limit(cmd, n);
    char **names = xcalloc(n + 1, sizeof(*names));
    struct imap_folder *fo = xcalloc(n + 1, sizeof(*fo));
    for (size_t i = 0; i < n; i++) {
        const struct fbox *b = s->boxes[i];
        names[i] = xstrdup(b->name);
        fo[i].name = names[i];
        fo[i].raw_name = names[i];
        fo[i].delim = '/';
        fo[i].attrs = b->attrs | IMAP_LIST_SUBSCRIBED;
        bool kids = false;
        size_t len = strlen(b->name);
        for (size_t k = 0; k < n; k++) {
            kids |= strncmp(s->boxes[k]->name, b->name, len) == 0 && s->boxes[k]->name[len] == '/';
        }
        fo[i].attrs |= kids ? IMAP_LIST_HASCHILDREN : IMAP_LIST_HASNOCHILDREN;
        if (s->caps & IMAP_CAP_LIST_STATUS) {
            fo[i].has_status = true;
            struct imap_status_info *st = &fo[i].status;
            st->folder = names[i];
            st->have = IMAP_STATUS_MESSAGES | IMAP_STATUS_UIDNEXT | IMAP_STATUS_UIDVALIDITY;
            st->messages = (uint32_t)b->n;
            st->uidnext = b->uidnext;
            st->uidvalidity = b->uidvalidity;
            if (c->condstore) {
                st->have |= IMAP_STATUS_HIGHESTMODSEQ;
                st->highestmodseq = b->modseq;
            }
        }
    }
    /* The real client reports the folders just before done. */
    for (size_t i = 0; i < limit && !c->freed && cmd->on_folder != NULL; i++) {
        cmd->on_folder(NULL, &fo[i], cmd->arg);
    }
    for (size_t i = 0; i < n; i++) {
        free(names[i]);
    }
    free(names);
    free(fo);
    if (c->freed) {
        return;
    }
    if (cut_short(cmd)) {
        fail_fault(c, cmd);
        return;
    }
    done_status(c, cmd, IMAP_STATUS_OK, NULL, "LIST completed");
}

static void run_select(struct remote *c, struct fcmd *cmd)
{
    struct fbox *b = find_box(c->s, cmd->folder);
    free(c->selected);
    c->selected = NULL;
    if (b == NULL) {
        done_status(c, cmd, IMAP_STATUS_NO, "NONEXISTENT", "Mailbox doesn't exist");
        return;
    }
    c->selected = xstrdup(b->name);
    /* QRESYNC (RFC 7162 section 3.2.5): what changed since the given
     * MODSEQ, as VANISHED (EARLIER) and FETCH, before the tagged OK. */
    struct fcmd **evs = NULL;
    size_t nev = 0, evcap = 0;
    if (c->qresync && cmd->so.qresync_uidvalidity != 0 &&
        cmd->so.qresync_uidvalidity == b->uidvalidity) {
        uint64_t since = cmd->so.qresync_modseq;
        uint32_t *gone = xcalloc(b->ngone + 1, sizeof(*gone));
        size_t ng = 0;
        for (size_t i = 0; i < b->ngone; i++) {
            if (b->gone[i].modseq > since) {
                gone[ng++] = b->gone[i].uid;
            }
        }
        if (ng > 0) {
            xgrow(&evs, &evcap, nev + 1, sizeof(*evs));
            evs[nev++] = ev_vanished(gone, ng, true);
        }
        free(gone);
        for (size_t i = 0; i < b->n; i++) {
            if (b->msgs[i].modseq > since) {
                xgrow(&evs, &evcap, nev + 1, sizeof(*evs));
                evs[nev++] = ev_fetch(c, b, i, true);
            }
        }
    }
    size_t limit = untagged_limit(cmd, nev);
    for (size_t i = 0; i < nev; i++) {
        if (i < limit) {
            emit(c, c, evs[i]);
        } else {
            cmd_free(evs[i]);
        }
    }
    free(evs);
    if (c->freed) {
        return;
    }
    if (cut_short(cmd)) {
        fail_fault(c, cmd);
        return;
    }
    struct imap_mailbox mb = {
        .uidvalidity = b->uidvalidity,
        .uidnext = b->uidnext,
        .exists = (uint32_t)b->n,
        .highestmodseq = c->condstore ? b->modseq : 0,
        .readonly = cmd->so.readonly,
        .permanent_flags = IMAP_FLAG_SEEN | IMAP_FLAG_ANSWERED | IMAP_FLAG_FLAGGED |
                           IMAP_FLAG_DELETED | IMAP_FLAG_DRAFT,
        .permanent_keywords = true,
    };
    struct imap_result res = {.status = IMAP_STATUS_OK,
                              .code = cmd->so.readonly ? "READ-ONLY" : "READ-WRITE",
                              .text = "Select completed",
                              .mailbox = &mb};
    call_done(cmd, &res);
}

static size_t header_len(const struct fake_msg *m)
{
    if (m->len >= 2 && m->body[0] == '\r' && m->body[1] == '\n') {
        return 2;
    }
    for (size_t i = 0; i + 3 < m->len; i++) {
        if (memcmp(m->body + i, "\r\n\r\n", 4) == 0) {
            return i + 4;
        }
    }
    return m->len;
}

/* One FETCH response; returns false when the connection ended meanwhile
 * (freed, failed by the sink, or cut by the fault in its body). */
static bool fetch_one(struct remote *c, struct fcmd *cmd, const struct fake_msg *src, uint32_t seq,
                      bool cut_body)
{
    /* A copy: the owner's callbacks may queue commands, never change the
     * mailbox, but the copy keeps this independent of that. */
    struct fake_msg m = *src;
    const struct imap_fetch_cb *cb = &cmd->fcb;
    struct imap_msg im = {.seq = seq, .uid = m.uid};
    unsigned items = cmd->items;
    void *sink = NULL;
    if (items & IMAP_FETCH_BODY) {
        if (cb->body_begin != NULL) {
            sink = cb->body_begin(NULL, seq, m.uid, m.len, cmd->arg);
        }
        size_t end = cut_body ? m.len / 2 : m.len;
        size_t chunk = m.len / 3 + 1;
        for (size_t pos = 0; pos < end && !c->freed; pos += chunk) {
            size_t k = end - pos < chunk ? end - pos : chunk;
            int r =
                cb->body_data != NULL ? cb->body_data(NULL, sink, m.body + pos, k, cmd->arg) : 0;
            if (r < 0 && !c->freed) {
                if (cb->body_end != NULL) {
                    cb->body_end(NULL, sink, false, cmd->arg);
                }
                if (!c->freed) {
                    fail_conn(c, cmd, r, "fake: the body sink failed");
                }
                return false;
            }
        }
        if (c->freed) {
            return false;
        }
        if (cut_body) {
            if (cb->body_end != NULL) {
                cb->body_end(NULL, sink, false, cmd->arg);
            }
            if (!c->freed) {
                fail_fault(c, cmd);
            }
            return false;
        }
        if (cb->body_end != NULL) {
            cb->body_end(NULL, sink, true, cmd->arg);
        }
        if (c->freed) {
            return false;
        }
        im.have |= IMAP_FETCH_BODY;
        im.body_size = m.len;
    }
    if (items & IMAP_FETCH_FLAGS) {
        im.have |= IMAP_FETCH_FLAGS;
        im.flags = m.flags;
        im.keywords = (const char *const *)m.keywords;
        im.nkeywords = m.nkeywords;
    }
    if (items & IMAP_FETCH_SIZE) {
        im.have |= IMAP_FETCH_SIZE;
        im.size = m.len;
    }
    if (items & IMAP_FETCH_INTERNALDATE) {
        im.have |= IMAP_FETCH_INTERNALDATE;
        im.internaldate = m.internaldate;
    }
    /* RFC 7162 section 3.1.4.1: CHANGEDSINCE implies MODSEQ. */
    if (c->condstore && ((items & IMAP_FETCH_MODSEQ) || cmd->changedsince > 0)) {
        im.have |= IMAP_FETCH_MODSEQ;
        im.modseq = m.modseq;
    }
    size_t hl = header_len(&m);
    char *msgid = NULL;
    if (items & IMAP_FETCH_MESSAGE_ID) {
        im.have |= IMAP_FETCH_MESSAGE_ID;
        msgid = imap_header_message_id(m.body, hl);
        im.message_id = msgid;
    }
    if (items & IMAP_FETCH_HEADER) {
        im.have |= IMAP_FETCH_HEADER;
        im.header = m.body;
        im.header_len = hl;
    }
    if (cb->on_message != NULL) {
        cb->on_message(NULL, &im, sink, cmd->arg);
    }
    free(msgid);
    return !c->freed && c->state != IMAP_STATE_FAILED;
}

static void run_fetch(struct remote *c, struct fcmd *cmd)
{
    struct fbox *b = selected_box(c);
    if (b == NULL) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "No mailbox selected");
        return;
    }
    if (cmd->changedsince > 0 && !c->condstore) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "CHANGEDSINCE needs CONDSTORE");
        return;
    }
    size_t *ix, n;
    if (match_set(b, cmd->uidset, &ix, &n) < 0) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "Invalid UID set");
        return;
    }
    if (cmd->changedsince > 0) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (b->msgs[ix[i]].modseq > cmd->changedsince) {
                ix[k++] = ix[i];
            }
        }
        n = k;
    }
    /* The UIDs, so that nothing depends on b staying put during the
     * callbacks. */
    uint32_t *uids = xcalloc(n + 1, sizeof(*uids));
    for (size_t i = 0; i < n; i++) {
        uids[i] = b->msgs[ix[i]].uid;
    }
    free(ix);
    if (cmd->vanished && cmd->changedsince > 0 && c->qresync) {
        /* RFC 7162 section 3.2.6: VANISHED (EARLIER) before the FETCHes. */
        uint32_t *gone = xcalloc(b->ngone + 1, sizeof(*gone));
        size_t ng = 0;
        struct imap_uid_range *r;
        size_t nr;
        if (imap_uidset_parse(cmd->uidset, &r, &nr) == 0) {
            for (size_t i = 0; i < b->ngone; i++) {
                if (b->gone[i].modseq > cmd->changedsince &&
                    imap_uidset_contains(r, nr, b->gone[i].uid)) {
                    gone[ng++] = b->gone[i].uid;
                }
            }
            free(r);
        }
        if (ng > 0 && untagged_limit(cmd, 2) > 0) {
            emit(c, c, ev_vanished(gone, ng, true));
        }
        free(gone);
    }
    bool body = (cmd->items & IMAP_FETCH_BODY) != 0;
    size_t limit = untagged_limit(cmd, n);
    bool ok = !c->freed;
    for (size_t i = 0; i < limit && ok; i++) {
        ssize_t k = msg_index(b, uids[i]);
        ok = k >= 0 && fetch_one(c, cmd, &b->msgs[k], (uint32_t)k + 1, false);
    }
    if (ok && cmd->fault == FAKE_FAULT_DROP_MID_BODY && body && limit < n) {
        ssize_t k = msg_index(b, uids[limit]);
        if (k >= 0) {
            fetch_one(c, cmd, &b->msgs[k], (uint32_t)k + 1, true);
        }
        ok = false;
    }
    free(uids);
    if (c->freed || c->state == IMAP_STATE_FAILED) {
        return;
    }
    if (cut_short(cmd)) {
        fail_fault(c, cmd);
        return;
    }
    done_status(c, cmd, IMAP_STATUS_OK, NULL, "Fetch completed");
}

/* The value of the quoted string at *p (backslash escapes), advancing *p;
 * NULL when malformed. */
static char *parse_quoted(const char **p)
{
    const char *s = *p;
    if (*s != '"') {
        return NULL;
    }
    struct sbuf sb = {0};
    sbuf_adds(&sb, "");
    for (s++; *s != '"'; s++) {
        if (*s == '\0') {
            sbuf_free(&sb);
            return NULL;
        }
        if (*s == '\\' && s[1] != '\0') {
            s++;
        }
        sbuf_addc(&sb, *s);
    }
    *p = s + 1;
    return sbuf_detach(&sb);
}

/* The three criteria the engine sends: "ALL", "UID set" and
 * "HEADER Message-ID \"...\"" (a case-insensitive substring of the field,
 * RFC 3501 section 6.4.4). Anything else is BAD, so a test notices when the
 * engine starts to send something this fake does not know. */
static void run_search(struct remote *c, struct fcmd *cmd)
{
    struct fbox *b = selected_box(c);
    if (b == NULL) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "No mailbox selected");
        return;
    }
    const char *q = cmd->criteria;
    uint32_t *uids = xcalloc(b->n + 1, sizeof(*uids));
    size_t n = 0;
    if (strcasecmp(q, "ALL") == 0) {
        for (size_t i = 0; i < b->n; i++) {
            uids[n++] = b->msgs[i].uid;
        }
    } else if (strncasecmp(q, "UID ", 4) == 0) {
        size_t *ix, ni;
        if (match_set(b, q + 4, &ix, &ni) < 0) {
            free(uids);
            done_status(c, cmd, IMAP_STATUS_BAD, NULL, "Invalid UID set");
            return;
        }
        for (size_t i = 0; i < ni; i++) {
            uids[n++] = b->msgs[ix[i]].uid;
        }
        free(ix);
    } else if (strncasecmp(q, "HEADER Message-ID ", 18) == 0) {
        const char *p = q + 18;
        char *needle = parse_quoted(&p);
        if (needle == NULL || *p != '\0') {
            free(needle);
            free(uids);
            done_status(c, cmd, IMAP_STATUS_BAD, NULL, "Invalid search string");
            return;
        }
        for (size_t i = 0; i < b->n; i++) {
            const struct fake_msg *m = &b->msgs[i];
            char *id = imap_header_message_id(m->body, header_len(m));
            if (id != NULL && strcasestr(id, needle) != NULL) {
                uids[n++] = m->uid;
            }
            free(id);
        }
        free(needle);
    } else {
        free(uids);
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "fake: search criteria not implemented");
        return;
    }
    if (cut_short(cmd)) {
        free(uids);
        fail_fault(c, cmd);
        return;
    }
    struct imap_result res = {
        .status = IMAP_STATUS_OK, .text = "Search completed", .uids = uids, .nuids = n};
    call_done(cmd, &res);
    free(uids);
}

static void run_store(struct remote *c, struct fcmd *cmd)
{
    struct fbox *b = selected_box(c);
    if (b == NULL) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "No mailbox selected");
        return;
    }
    if (cmd->unchangedsince > 0 && !c->condstore) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "UNCHANGEDSINCE needs CONDSTORE");
        return;
    }
    size_t *ix, n;
    if (match_set(b, cmd->uidset, &ix, &n) < 0) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "Invalid UID set");
        return;
    }
    uint32_t *modified = xcalloc(n + 1, sizeof(*modified));
    size_t nmod = 0;
    size_t *changed = xcalloc(n + 1, sizeof(*changed));
    size_t nch = 0;
    for (size_t i = 0; i < n; i++) {
        struct fake_msg *m = &b->msgs[ix[i]];
        /* RFC 7162 section 3.1.3: not changed, and listed in [MODIFIED],
         * when someone changed it since. */
        if (cmd->unchangedsince > 0 && m->modseq > cmd->unchangedsince) {
            modified[nmod++] = m->uid;
            continue;
        }
        if (apply_flags(m, cmd->sop, cmd->flags, (const char *const *)cmd->kw, cmd->nkw)) {
            m->modseq = ++b->modseq;
            changed[nch++] = ix[i];
        }
    }
    free(ix);
    /* .SILENT: this connection hears only the new MODSEQ (under
     * CONDSTORE, as Dovecot sends it); the others hear the flags. */
    bool tell_self = cmd->fault != FAKE_FAULT_MALFORMED;
    for (struct remote *o = c->s->conns; o != NULL; o = o->next_conn) {
        for (size_t i = 0; i < nch && selects(o, b); i++) {
            if (o != c) {
                emit(o, c, ev_fetch(o, b, changed[i], true));
            } else if (tell_self && c->condstore) {
                emit(c, c, ev_fetch(c, b, changed[i], false));
            }
        }
    }
    free(changed);
    if (c->freed) {
        free(modified);
        return;
    }
    if (cut_short(cmd)) {
        free(modified);
        fail_fault(c, cmd);
        return;
    }
    struct imap_uid_range *mr = NULL;
    size_t nmr = 0;
    char *mset = format_uids(modified, nmod);
    if (mset != NULL) {
        imap_uidset_parse(mset, &mr, &nmr);
    }
    struct imap_result res = {.status = IMAP_STATUS_OK,
                              .code = nmod > 0 ? "MODIFIED" : NULL,
                              .text = nmod > 0 ? "Conditional STORE failed" : "Store completed",
                              .modified = mr,
                              .nmodified = nmr};
    call_done(cmd, &res);
    free(mr);
    free(mset);
    free(modified);
}

/* The APPEND body as the client would send it; -EPROTO when it is not
 * exactly the announced size (the real client fails the connection: the
 * literal framing is lost). */
static int read_body(struct fcmd *cmd, char **body_r, size_t *len_r)
{
    struct sbuf sb = {0};
    char buf[4096];
    for (;;) {
        ssize_t r = cmd->fd >= 0 ? read(cmd->fd, buf, sizeof(buf))
                                 : cmd->read(cmd->read_arg, buf, sizeof(buf));
        if (r < 0 && cmd->fd >= 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            sbuf_free(&sb);
            return -EIO;
        }
        if (r == 0) {
            break;
        }
        sbuf_add(&sb, buf, (size_t)r);
    }
    char *body;
    size_t len;
    if (cmd->lf_to_crlf) {
        body = to_crlf(sb.buf != NULL ? sb.buf : "", sb.len, &len);
        sbuf_free(&sb);
    } else {
        len = sb.len;
        body = sb.buf != NULL ? sbuf_detach(&sb) : xstrdup("");
    }
    if (len != cmd->size) {
        free(body);
        return -EPROTO;
    }
    *body_r = body;
    *len_r = len;
    return 0;
}

static void run_append(struct remote *c, struct fcmd *cmd)
{
    char *body;
    size_t len;
    if (read_body(cmd, &body, &len) < 0) {
        fail_conn(c, cmd, IMAP_EPROTO, "fake: APPEND body does not match its announced size");
        return;
    }
    struct fbox *b = find_box(c->s, cmd->folder);
    if (b == NULL) {
        free(body);
        done_status(c, cmd, IMAP_STATUS_NO, "TRYCREATE", "Mailbox doesn't exist");
        return;
    }
    struct fake_msg *m =
        box_add(b, body, len, cmd->flags, (const char *const *)cmd->kw, cmd->nkw, cmd->date);
    uint32_t uid = m->uid;
    tell_exists(c->s, b, c, cmd->fault != FAKE_FAULT_MALFORMED);
    if (c->freed) {
        return;
    }
    if (cut_short(cmd)) {
        fail_fault(c, cmd);
        return;
    }
    struct imap_result res = {.status = IMAP_STATUS_OK, .text = "Append completed"};
    if (c->s->caps & IMAP_CAP_UIDPLUS) {
        res.code = "APPENDUID";
        res.append_uidvalidity = b->uidvalidity;
        res.append_uid = uid;
    }
    call_done(cmd, &res);
}

/* Removes the messages at ix (ascending) from b, telling everyone. */
static void expunge_ix(struct remote *c, struct fbox *b, const size_t *ix, size_t n, bool tell_self)
{
    tell_expunge(c->s, b, ix, n, c, tell_self);
    for (size_t i = n; i > 0; i--) {
        box_remove(b, ix[i - 1]);
    }
}

static void run_expunge(struct remote *c, struct fcmd *cmd)
{
    struct fbox *b = selected_box(c);
    if (b == NULL) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "No mailbox selected");
        return;
    }
    size_t *ix, n;
    if (match_set(b, cmd->uidset, &ix, &n) < 0) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "Invalid UID set");
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (b->msgs[ix[i]].flags & IMAP_FLAG_DELETED) {
            ix[k++] = ix[i];
        }
    }
    expunge_ix(c, b, ix, k, cmd->fault != FAKE_FAULT_MALFORMED);
    free(ix);
    if (c->freed) {
        return;
    }
    if (cut_short(cmd)) {
        fail_fault(c, cmd);
        return;
    }
    done_status(c, cmd, IMAP_STATUS_OK, NULL, "Expunge completed");
}

/* UID MOVE, or what the client does without MOVE (COPY, STORE \Deleted,
 * and UID EXPUNGE when UIDPLUS allows it), as one command. */
static void run_move(struct remote *c, struct fcmd *cmd)
{
    struct fbox *b = selected_box(c);
    if (b == NULL) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "No mailbox selected");
        return;
    }
    struct fbox *to = find_box(c->s, cmd->folder);
    if (to == NULL) {
        done_status(c, cmd, IMAP_STATUS_NO, "TRYCREATE", "Mailbox doesn't exist");
        return;
    }
    size_t *ix, n;
    if (match_set(b, cmd->uidset, &ix, &n) < 0) {
        done_status(c, cmd, IMAP_STATUS_BAD, NULL, "Invalid UID set");
        return;
    }
    uint32_t *src = xcalloc(n + 1, sizeof(*src)), *dst = xcalloc(n + 1, sizeof(*dst));
    for (size_t i = 0; i < n; i++) {
        struct fake_msg *m = &b->msgs[ix[i]];
        src[i] = m->uid;
        char *copy = xmalloc(m->len + 1);
        memcpy(copy, m->body, m->len);
        copy[m->len] = '\0';
        dst[i] = box_add(to, copy, m->len, m->flags, (const char *const *)m->keywords, m->nkeywords,
                         m->internaldate)
                     ->uid;
    }
    tell_exists(c->s, to, c, false);
    bool expunged = (c->s->caps & (IMAP_CAP_MOVE | IMAP_CAP_UIDPLUS)) != 0;
    if (expunged) {
        expunge_ix(c, b, ix, n, cmd->fault != FAKE_FAULT_MALFORMED);
    } else {
        for (size_t i = 0; i < n; i++) {
            b->msgs[ix[i]].flags |= IMAP_FLAG_DELETED;
            b->msgs[ix[i]].modseq = ++b->modseq;
        }
    }
    free(ix);
    char *s_src = format_uids(src, n), *s_dst = format_uids(dst, n);
    free(src);
    free(dst);
    if (!c->freed && cut_short(cmd)) {
        fail_fault(c, cmd);
    } else if (!c->freed) {
        struct imap_result res = {
            .status = IMAP_STATUS_OK, .text = "Move completed", .move_not_expunged = !expunged};
        if ((c->s->caps & IMAP_CAP_UIDPLUS) && s_src != NULL) {
            res.copy_uidvalidity = to->uidvalidity;
            res.copy_src = s_src;
            res.copy_dst = s_dst;
        }
        call_done(cmd, &res);
    }
    free(s_src);
    free(s_dst);
}

static void run_create(struct remote *c, struct fcmd *cmd)
{
    if (fake_mailbox_add(c->s, cmd->folder, 0) < 0) {
        done_status(c, cmd, IMAP_STATUS_NO, "ALREADYEXISTS", "Mailbox already exists");
        return;
    }
    if (cut_short(cmd)) {
        fail_fault(c, cmd);
        return;
    }
    done_status(c, cmd, IMAP_STATUS_OK, NULL, "Create completed");
}

static void run_delete(struct remote *c, struct fcmd *cmd)
{
    struct fake_server *s = c->s;
    struct fbox *b = find_box(s, cmd->folder);
    if (b == NULL || strcasecmp(b->name, "INBOX") == 0) {
        done_status(c, cmd, IMAP_STATUS_NO, b == NULL ? "NONEXISTENT" : "CANNOT",
                    b == NULL ? "Mailbox doesn't exist" : "INBOX can't be deleted");
        return;
    }
    for (size_t i = 0; i < s->nboxes; i++) {
        if (s->boxes[i] == b) {
            memmove(&s->boxes[i], &s->boxes[i + 1], (s->nboxes - i - 1) * sizeof(*s->boxes));
            s->nboxes--;
            break;
        }
    }
    box_free(b);
    if (cut_short(cmd)) {
        fail_fault(c, cmd);
        return;
    }
    done_status(c, cmd, IMAP_STATUS_OK, NULL, "Delete completed");
}

static void run_logout(struct remote *c, struct fcmd *cmd)
{
    if (cut_short(cmd)) {
        fail_fault(c, cmd);
        return;
    }
    c->state = IMAP_STATE_CLOSED;
    done_status(c, cmd, IMAP_STATUS_OK, NULL, "Logout completed");
}

static void run_cmd(struct remote *c, struct fcmd *cmd)
{
    if (cmd->is_event) {
        if (c->state == IMAP_STATE_READY && c->cb.on_event != NULL) {
            c->cb.on_event(NULL, &cmd->ev, c->arg);
        }
        return;
    }
    if (cmd->op == FAKE_OP_CONNECT) {
        run_connect(c, cmd);
        return;
    }
    if (cmd->fault == FAKE_FAULT_NO || cmd->fault == FAKE_FAULT_BAD) {
        bool no = cmd->fault == FAKE_FAULT_NO;
        done_status(c, cmd, no ? IMAP_STATUS_NO : IMAP_STATUS_BAD, NULL,
                    no ? "fake: command refused (injected NO)"
                       : "fake: command not understood (injected BAD)");
        return;
    }
    /* A drop before the server acted: nothing changes; a FETCH sends what
     * it can first. */
    if ((cmd->fault == FAKE_FAULT_DROP || cmd->fault == FAKE_FAULT_DROP_MID_BODY) &&
        cmd->op != FAKE_OP_FETCH) {
        fail_fault(c, cmd);
        return;
    }
    switch (cmd->op) {
    case FAKE_OP_LIST:
        run_list(c, cmd);
        break;
    case FAKE_OP_SELECT:
        run_select(c, cmd);
        break;
    case FAKE_OP_FETCH:
        run_fetch(c, cmd);
        break;
    case FAKE_OP_SEARCH:
        run_search(c, cmd);
        break;
    case FAKE_OP_STORE:
        run_store(c, cmd);
        break;
    case FAKE_OP_APPEND:
        run_append(c, cmd);
        break;
    case FAKE_OP_EXPUNGE:
        run_expunge(c, cmd);
        break;
    case FAKE_OP_MOVE:
        run_move(c, cmd);
        break;
    case FAKE_OP_CREATE:
        run_create(c, cmd);
        break;
    case FAKE_OP_DELETE:
        run_delete(c, cmd);
        break;
    case FAKE_OP_LOGOUT:
        run_logout(c, cmd);
        break;
    default:
        break;
    }
}

static void on_conn_closed(uv_handle_t *h)
{
    struct remote *c = h->data;
    struct fcmd *cmd;
    while ((cmd = dequeue(c)) != NULL) {
        cmd_free(cmd);
    }
    free(c->selected);
    free(c->error);
    free(c);
}

static void conn_release(struct remote *c)
{
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

/* One command (or event) per loop iteration, so that thread-pool work and
 * timers of the owner interleave with the answers as with a real server. */
static void conn_tick(uv_timer_t *t)
{
    struct remote *c = t->data;
    c->depth++;
    struct fcmd *cmd = c->state != IMAP_STATE_FAILED ? dequeue(c) : NULL;
    if (cmd != NULL) {
        if (c->s == NULL) {
            fail_conn(c, cmd, UV_ECONNRESET, "fake: the server is gone");
        } else {
            run_cmd(c, cmd);
        }
        cmd_free(cmd);
    }
    c->depth--;
    if (c->freed) {
        conn_release(c);
        return;
    }
    if (c->head != NULL && c->state != IMAP_STATE_FAILED) {
        uv_timer_start(&c->timer, conn_tick, 0, 0);
    }
}

/* ---- the operations ---- */

static int f_connect(uv_loop_t *loop, const struct imap_opts *opts, const struct imap_cb *cb,
                     void *arg, void *driver_arg, struct remote **r_r)
{
    (void)opts;
    struct fake_server *s = driver_arg;
    if (s == NULL) {
        return -EINVAL;
    }
    struct remote *c = xcalloc(1, sizeof(*c));
    c->s = s;
    c->cb = *cb;
    c->arg = arg;
    c->state = IMAP_STATE_CONNECTING;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->next_conn = s->conns;
    s->conns = c;
    s->connections++;
    enqueue(c, new_cmd(c, FAKE_OP_CONNECT, false, xstrdup("CONNECT"), NULL, NULL));
    *r_r = c;
    return 0;
}

static void f_free(struct remote *c)
{
    if (c == NULL || c->freed) {
        return;
    }
    c->freed = true;
    if (c->s != NULL) {
        for (struct remote **p = &c->s->conns; *p != NULL; p = &(*p)->next_conn) {
            if (*p == c) {
                *p = c->next_conn;
                break;
            }
        }
    }
    if (c->depth == 0) {
        conn_release(c);
    }
}

static enum imap_state f_state(const struct remote *c)
{
    return c->state;
}

static unsigned f_caps(const struct remote *c)
{
    return c->s != NULL ? c->s->caps : 0;
}

static bool f_condstore(const struct remote *c)
{
    return c->condstore;
}

static bool f_qresync(const struct remote *c)
{
    return c->qresync;
}

static const char *f_error(const struct remote *c)
{
    return c->error;
}

static int f_list(struct remote *c,
                  void (*on_folder)(struct imap *, const struct imap_folder *, void *),
                  imap_done_cb done, void *arg)
{
    if (!usable(c)) {
        return -ENOTCONN;
    }
    struct fcmd *cmd = new_cmd(c, FAKE_OP_LIST, false, xstrdup("LIST"), done, arg);
    cmd->on_folder = on_folder;
    enqueue(c, cmd);
    return 0;
}

static int f_select(struct remote *c, const char *folder, const struct imap_select_opts *opts,
                    imap_done_cb done, void *arg)
{
    if (!usable(c)) {
        return -ENOTCONN;
    }
    if (folder == NULL) {
        return -EINVAL;
    }
    struct imap_select_opts so = opts != NULL ? *opts : (struct imap_select_opts){0};
    char *text;
    if (so.qresync_uidvalidity != 0) {
        text = xasprintf("%s %s (QRESYNC (%u %llu))", so.readonly ? "EXAMINE" : "SELECT", folder,
                         (unsigned)so.qresync_uidvalidity, (unsigned long long)so.qresync_modseq);
    } else {
        text = xasprintf("%s %s%s", so.readonly ? "EXAMINE" : "SELECT", folder,
                         so.condstore ? " (CONDSTORE)" : "");
    }
    struct fcmd *cmd = new_cmd(c, FAKE_OP_SELECT, false, text, done, arg);
    cmd->folder = xstrdup(folder);
    cmd->so = so;
    cmd->so.qresync_known_uids =
        so.qresync_known_uids != NULL ? xstrdup(so.qresync_known_uids) : NULL;
    enqueue(c, cmd);
    return 0;
}

static void items_text(struct sbuf *sb, unsigned items)
{
    static const char *const names[] = {"FLAGS", "RFC822.SIZE", "INTERNALDATE", "MODSEQ",
                                        "BODY",  "MESSAGE-ID",  "HEADER"};
    sbuf_adds(sb, "(UID");
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (items & (1u << i)) {
            sbuf_addf(sb, " %s", names[i]);
        }
    }
    sbuf_adds(sb, ")");
}

static int f_uid_fetch(struct remote *c, const char *uidset, unsigned items, uint64_t changedsince,
                       bool vanished, const struct imap_fetch_cb *cb, void *arg)
{
    if (!usable(c)) {
        return -ENOTCONN;
    }
    if (uidset == NULL || cb == NULL) {
        return -EINVAL;
    }
    struct sbuf sb = {0};
    sbuf_addf(&sb, "UID FETCH %s ", uidset);
    items_text(&sb, items);
    if (changedsince > 0) {
        sbuf_addf(&sb, " (CHANGEDSINCE %llu%s)", (unsigned long long)changedsince,
                  vanished ? " VANISHED" : "");
    }
    struct fcmd *cmd =
        new_cmd(c, FAKE_OP_FETCH, (items & IMAP_FETCH_BODY) != 0, sbuf_detach(&sb), cb->done, arg);
    cmd->fcb = *cb;
    cmd->uidset = xstrdup(uidset);
    cmd->items = items;
    cmd->changedsince = changedsince;
    cmd->vanished = vanished;
    enqueue(c, cmd);
    return 0;
}

static int f_uid_search(struct remote *c, const char *criteria, imap_done_cb done, void *arg)
{
    if (!usable(c)) {
        return -ENOTCONN;
    }
    if (criteria == NULL) {
        return -EINVAL;
    }
    struct fcmd *cmd =
        new_cmd(c, FAKE_OP_SEARCH, false, xasprintf("UID SEARCH %s", criteria), done, arg);
    cmd->criteria = xstrdup(criteria);
    enqueue(c, cmd);
    return 0;
}

static char **kw_copy(const char *const *kw, size_t n)
{
    char **v = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        v[i] = xstrdup(kw[i]);
    }
    return v;
}

static int f_uid_store(struct remote *c, const char *uidset, char op, unsigned flags,
                       const char *const *keywords, size_t nkeywords, uint64_t unchangedsince,
                       imap_done_cb done, void *arg)
{
    if (!usable(c)) {
        return -ENOTCONN;
    }
    if (uidset == NULL || (op != '+' && op != '-')) {
        return -EINVAL;
    }
    struct sbuf sb = {0};
    sbuf_addf(&sb, "UID STORE %s", uidset);
    if (unchangedsince > 0) {
        sbuf_addf(&sb, " (UNCHANGEDSINCE %llu)", (unsigned long long)unchangedsince);
    }
    sbuf_addf(&sb, " %cFLAGS.SILENT (flags 0x%x", op, flags);
    for (size_t i = 0; i < nkeywords; i++) {
        sbuf_addf(&sb, " %s", keywords[i]);
    }
    sbuf_adds(&sb, ")");
    struct fcmd *cmd = new_cmd(c, FAKE_OP_STORE, false, sbuf_detach(&sb), done, arg);
    cmd->uidset = xstrdup(uidset);
    cmd->sop = op;
    cmd->flags = flags;
    cmd->kw = kw_copy(keywords, nkeywords);
    cmd->nkw = nkeywords;
    cmd->unchangedsince = unchangedsince;
    enqueue(c, cmd);
    return 0;
}

static int f_append(struct remote *c, const struct imap_append *a, imap_done_cb done, void *arg)
{
    if (!usable(c)) {
        return -ENOTCONN;
    }
    if (a == NULL || a->folder == NULL || (a->fd < 0 && a->read == NULL)) {
        return -EINVAL;
    }
    struct fcmd *cmd = new_cmd(c, FAKE_OP_APPEND, false,
                               xasprintf("APPEND %s (flags 0x%x) {%llu}", a->folder, a->flags,
                                         (unsigned long long)a->size),
                               done, arg);
    cmd->folder = xstrdup(a->folder);
    cmd->flags = a->flags;
    cmd->kw = kw_copy(a->keywords, a->nkeywords);
    cmd->nkw = a->nkeywords;
    cmd->date = a->internaldate;
    cmd->size = a->size;
    cmd->fd = a->fd;
    cmd->lf_to_crlf = a->lf_to_crlf;
    cmd->read = a->read;
    cmd->read_arg = a->read_arg;
    enqueue(c, cmd);
    return 0;
}

static int f_set_cmd(struct remote *c, enum fake_op op, const char *uidset, const char *folder,
                     imap_done_cb done, void *arg)
{
    if (!usable(c)) {
        return -ENOTCONN;
    }
    if (uidset == NULL || (op == FAKE_OP_MOVE && folder == NULL)) {
        return -EINVAL;
    }
    if (op == FAKE_OP_EXPUNGE && c->state == IMAP_STATE_READY && !(c->s->caps & IMAP_CAP_UIDPLUS)) {
        return IMAP_ENOTSUP; /* as imap_uid_expunge */
    }
    char *text = op == FAKE_OP_MOVE ? xasprintf("UID MOVE %s %s", uidset, folder)
                                    : xasprintf("UID EXPUNGE %s", uidset);
    struct fcmd *cmd = new_cmd(c, op, false, text, done, arg);
    cmd->uidset = xstrdup(uidset);
    cmd->folder = folder != NULL ? xstrdup(folder) : NULL;
    enqueue(c, cmd);
    return 0;
}

static int f_uid_expunge(struct remote *c, const char *uidset, imap_done_cb done, void *arg)
{
    return f_set_cmd(c, FAKE_OP_EXPUNGE, uidset, NULL, done, arg);
}

static int f_uid_move(struct remote *c, const char *uidset, const char *folder, imap_done_cb done,
                      void *arg)
{
    return f_set_cmd(c, FAKE_OP_MOVE, uidset, folder, done, arg);
}

static int f_folder_cmd(struct remote *c, enum fake_op op, const char *folder, imap_done_cb done,
                        void *arg)
{
    if (!usable(c)) {
        return -ENOTCONN;
    }
    if (folder == NULL) {
        return -EINVAL;
    }
    struct fcmd *cmd =
        new_cmd(c, op, false, xasprintf("%s %s", fake_op_name(op), folder), done, arg);
    cmd->folder = xstrdup(folder);
    enqueue(c, cmd);
    return 0;
}

static int f_create(struct remote *c, const char *folder, imap_done_cb done, void *arg)
{
    return f_folder_cmd(c, FAKE_OP_CREATE, folder, done, arg);
}

static int f_delete(struct remote *c, const char *folder, imap_done_cb done, void *arg)
{
    return f_folder_cmd(c, FAKE_OP_DELETE, folder, done, arg);
}

static int f_logout(struct remote *c, imap_done_cb done, void *arg)
{
    if (!usable(c)) {
        return -ENOTCONN;
    }
    enqueue(c, new_cmd(c, FAKE_OP_LOGOUT, false, xstrdup("LOGOUT"), done, arg));
    return 0;
}

const struct remote_ops fake_remote_ops = {
    .name = "fake",
    .connect = f_connect,
    .free = f_free,
    .state = f_state,
    .caps = f_caps,
    .condstore_enabled = f_condstore,
    .qresync_enabled = f_qresync,
    .error = f_error,
    .list = f_list,
    .select = f_select,
    .uid_fetch = f_uid_fetch,
    .uid_search = f_uid_search,
    .uid_store = f_uid_store,
    .append = f_append,
    .uid_expunge = f_uid_expunge,
    .uid_move = f_uid_move,
    .create = f_create,
    .delete = f_delete,
    .logout = f_logout,
};
