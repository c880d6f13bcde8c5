/* IMAP client commands: queueing, wire form, routing of untagged data to
 * the command that asked for it, and completion. */
#include "sync/imap_cmd.h"
#include "sync/imap.h"
#include "sync/imap_int.h"

#include "core/log.h"
#include "core/util.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A server that expands a search result beyond this is hostile. */
#define MAX_SEARCH_UIDS 10000000u

static const char *const kind_names[] = {
    [IMAP_CMD_CAPABILITY] = "CAPABILITY",
    [IMAP_CMD_STARTTLS] = "STARTTLS",
    [IMAP_CMD_LOGIN] = "LOGIN",
    [IMAP_CMD_AUTH_PLAIN] = "AUTHENTICATE PLAIN",
    [IMAP_CMD_AUTH_XOAUTH2] = "AUTHENTICATE XOAUTH2",
    [IMAP_CMD_AUTH_OAUTHBEARER] = "AUTHENTICATE OAUTHBEARER",
    [IMAP_CMD_COMPRESS] = "COMPRESS",
    [IMAP_CMD_ID] = "ID",
    [IMAP_CMD_ENABLE] = "ENABLE",
    [IMAP_CMD_DELIM] = "LIST",
    [IMAP_CMD_NOOP] = "NOOP",
    [IMAP_CMD_LIST] = "LIST",
    [IMAP_CMD_STATUS] = "STATUS",
    [IMAP_CMD_SELECT] = "SELECT",
    [IMAP_CMD_FETCH] = "UID FETCH",
    [IMAP_CMD_SEARCH] = "UID SEARCH",
    [IMAP_CMD_STORE] = "UID STORE",
    [IMAP_CMD_APPEND] = "APPEND",
    [IMAP_CMD_EXPUNGE] = "UID EXPUNGE",
    [IMAP_CMD_MOVE] = "UID MOVE",
    [IMAP_CMD_COPY] = "UID COPY",
    [IMAP_CMD_CREATE] = "CREATE",
    [IMAP_CMD_DELETE] = "DELETE",
    [IMAP_CMD_IDLE] = "IDLE",
    [IMAP_CMD_NOTIFY] = "NOTIFY",
    [IMAP_CMD_LOGOUT] = "LOGOUT",
    [IMAP_CMD_RENAME] = "RENAME",
};

const char *imap_cmd_kind_name(enum imap_cmd_kind k)
{
    return (size_t)k < ARRAY_SIZE(kind_names) ? kind_names[k] : "?";
}

/* ---- Command objects and queues ---- */

static struct imap_cmd *cmd_new(enum imap_cmd_kind kind, imap_done_cb done, void *arg)
{
    struct imap_cmd *c = xcalloc(1, sizeof(*c));
    c->kind = kind;
    c->done = done;
    c->arg = arg;
    c->app.fd = -1;
    return c;
}

static void cmd_clear_parts(struct imap_cmd *c)
{
    for (size_t i = 0; i < c->nparts; i++) {
        if (c->parts[i].data != NULL) {
            explicit_bzero(c->parts[i].data, c->parts[i].len);
        }
        free(c->parts[i].data);
    }
    free(c->parts);
    c->parts = NULL;
    c->nparts = c->cap_parts = c->wpart = 0;
    sbuf_free(&c->trace);
    c->built = false;
}

static void cmd_free(struct imap_cmd *c)
{
    cmd_clear_parts(c);
    free(c->folder);
    free(c->folder2);
    free(c->uidset);
    free(c->criteria);
    for (size_t i = 0; i < c->nkeywords; i++) {
        free(c->keywords[i]);
    }
    free(c->keywords);
    free(c->qresync_known);
    free(c->ranges);
    for (size_t i = 0; i < c->nfolders; i++) {
        free(c->folders[i].name);
        free(c->folders[i].raw);
        free(c->folders[i].status_folder);
    }
    free(c->folders);
    strindex_free(&c->folder_ix);
    free(c->uids);
    sbuf_free(&c->copy_src);
    sbuf_free(&c->copy_dst);
    free(c->local_msg);
    free((char *)c->app.folder);
    free(c);
}

static void q_push(struct imap_cmd **h, struct imap_cmd **t, struct imap_cmd *c)
{
    c->next = NULL;
    if (*t != NULL) {
        (*t)->next = c;
    } else {
        *h = c;
    }
    *t = c;
}

static void q_push_front(struct imap_cmd **h, struct imap_cmd **t, struct imap_cmd *c)
{
    c->next = *h;
    *h = c;
    if (*t == NULL) {
        *t = c;
    }
}

static struct imap_cmd *q_pop(struct imap_cmd **h, struct imap_cmd **t)
{
    struct imap_cmd *c = *h;
    if (c != NULL) {
        *h = c->next;
        if (*h == NULL) {
            *t = NULL;
        }
        c->next = NULL;
    }
    return c;
}

static bool q_remove(struct imap_cmd **h, struct imap_cmd **t, struct imap_cmd *c)
{
    struct imap_cmd *prev = NULL;
    for (struct imap_cmd *x = *h; x != NULL; prev = x, x = x->next) {
        if (x != c) {
            continue;
        }
        if (prev != NULL) {
            prev->next = x->next;
        } else {
            *h = x->next;
        }
        if (*t == x) {
            *t = prev;
        }
        x->next = NULL;
        return true;
    }
    return false;
}

void imap_cmd_inflight_add(struct imap *im, struct imap_cmd *c)
{
    q_push(&im->inflight, &im->inflight_tail, c);
    im->ninflight++;
    if (c->kind == IMAP_CMD_LOGOUT) {
        imap_set_state(im, IMAP_STATE_LOGOUT);
    }
}

struct imap_cmd *imap_cmd_inflight_kind(struct imap *im, enum imap_cmd_kind kind)
{
    for (struct imap_cmd *c = im->inflight; c != NULL; c = c->next) {
        if (c->kind == kind) {
            return c;
        }
    }
    return NULL;
}

/* Commands after which nothing may be sent until their tagged answer. */
static bool is_barrier(enum imap_cmd_kind k)
{
    switch (k) {
    case IMAP_CMD_STARTTLS:
    case IMAP_CMD_LOGIN:
    case IMAP_CMD_AUTH_PLAIN:
    case IMAP_CMD_AUTH_XOAUTH2:
    case IMAP_CMD_AUTH_OAUTHBEARER:
    case IMAP_CMD_COMPRESS:
    case IMAP_CMD_IDLE:
        return true;
    default:
        return false;
    }
}

/* Queues a failure (or, with err 0, a synthesized OK) to be reported from
 * the loop. */
static void cmd_local_done(struct imap *im, struct imap_cmd *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void cmd_local_done(struct imap *im, struct imap_cmd *c, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(c->local_msg);
    c->local_msg = xvasprintf(fmt, ap);
    va_end(ap);
    c->local_err = err;
    q_push(&im->local_done, &im->local_done_tail, c);
    imap_defer(im);
}

/* ---- Building the wire form ---- */

static struct imap_part *new_part(struct imap_cmd *c, enum imap_part_type type)
{
    xgrow(&c->parts, &c->cap_parts, c->nparts + 1, sizeof(*c->parts));
    struct imap_part *p = &c->parts[c->nparts++];
    memset(p, 0, sizeof(*p));
    p->type = type;
    return p;
}

static void b_add(struct imap_cmd *c, const char *s, size_t len, bool secret)
{
    struct imap_part *p = NULL;
    if (!secret && c->nparts > 0 && c->parts[c->nparts - 1].type == IMAP_PART_TEXT &&
        !c->parts[c->nparts - 1].secret) {
        p = &c->parts[c->nparts - 1];
    } else {
        p = new_part(c, IMAP_PART_TEXT);
        p->secret = secret;
    }
    p->data = xrealloc(p->data, p->len + len + 1);
    memcpy(p->data + p->len, s, len);
    p->len += len;
    p->data[p->len] = '\0';
    if (secret) {
        sbuf_adds(&c->trace, "<redacted>");
    } else {
        /* The trace is one line: stop at the line end. The byte that marks
         * a literal's "+" (IMAP_TRACE_LITERAL) never comes from the data. */
        size_t n = strcspn(s, "\r\n");
        n = n < len ? n : len;
        for (size_t i = 0; i < n; i++) {
            sbuf_addc(&c->trace, s[i] == IMAP_TRACE_LITERAL[0] ? '?' : s[i]);
        }
    }
}

static void b_text(struct imap_cmd *c, const char *s)
{
    b_add(c, s, strlen(s), false);
}

static void b_textf(struct imap_cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void b_textf(struct imap_cmd *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = xvasprintf(fmt, ap);
    va_end(ap);
    b_add(c, s, strlen(s), false);
    free(s);
}

/* An astring: atom when possible, quoted string when it is 7-bit text
 * (8-bit too once UTF8=ACCEPT is enabled), else a literal. */
static void b_astring(struct imap *im, struct imap_cmd *c, const char *s, size_t len, bool secret)
{
    if (imap_is_atom(s, len) && !(len == 3 && strncasecmp(s, "NIL", 3) == 0)) {
        b_add(c, s, len, secret);
        return;
    }
    bool quotable = len < 1024;
    for (size_t i = 0; i < len && quotable; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\0' || ch == '\r' || ch == '\n' || (ch >= 0x80 && !im->utf8)) {
            quotable = false;
        }
    }
    if (quotable) {
        struct sbuf q = {0};
        sbuf_addc(&q, '"');
        for (size_t i = 0; i < len; i++) {
            if (s[i] == '"' || s[i] == '\\') {
                sbuf_addc(&q, '\\');
            }
            sbuf_addc(&q, s[i]);
        }
        sbuf_addc(&q, '"');
        b_add(c, q.buf, q.len, secret);
        explicit_bzero(q.buf, q.len);
        sbuf_free(&q);
        return;
    }
    struct imap_part *p = new_part(c, IMAP_PART_LITERAL);
    p->data = xmalloc(len + 1);
    memcpy(p->data, s, len);
    p->len = len;
    p->size = len;
    p->secret = secret;
    /* IMAP_TRACE_LITERAL stands where "+" goes if the literal is sent
     * non-synchronizing, decided only when it is written. */
    sbuf_addf(&c->trace, "{%zu" IMAP_TRACE_LITERAL "}", len);
    if (secret) {
        sbuf_adds(&c->trace, "<redacted>");
    }
}

static void b_mailbox(struct imap *im, struct imap_cmd *c, const char *raw)
{
    b_astring(im, c, raw, strlen(raw), false);
}

/* A SASL response sent after the server's "+". */
static void b_cont(struct imap_cmd *c, const char *data)
{
    struct imap_part *p = new_part(c, IMAP_PART_CONT);
    p->data = xasprintf("%s\r\n", data);
    p->len = strlen(p->data);
    p->secret = true;
}

static char *base64(const void *data, size_t len)
{
    char *out = xmalloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

static void b_sasl(struct imap *im, struct imap_cmd *c, const char *mech, const char *payload,
                   size_t len)
{
    char *b64 = base64(payload, len);
    b_textf(c, "AUTHENTICATE %s", mech);
    if (im->caps & IMAP_CAP_SASL_IR) {
        b_text(c, " ");
        b_add(c, b64, strlen(b64), true);
        b_text(c, "\r\n");
    } else {
        b_text(c, "\r\n");
        b_cont(c, b64);
    }
    explicit_bzero(b64, strlen(b64));
    free(b64);
}

static void b_flags(struct imap_cmd *c, unsigned flags, char *const *kw, size_t nkw)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {
        {IMAP_FLAG_SEEN, "\\Seen"},       {IMAP_FLAG_ANSWERED, "\\Answered"},
        {IMAP_FLAG_FLAGGED, "\\Flagged"}, {IMAP_FLAG_DELETED, "\\Deleted"},
        {IMAP_FLAG_DRAFT, "\\Draft"},
    };
    b_text(c, "(");
    bool first = true;
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (flags & names[i].bit) {
            b_textf(c, "%s%s", first ? "" : " ", names[i].name);
            first = false;
        }
    }
    for (size_t i = 0; i < nkw; i++) {
        b_textf(c, "%s%s", first ? "" : " ", kw[i]);
        first = false;
    }
    b_text(c, ")");
}

/* Converts the owner's folder name to the server's form into c->folder2. */
static int cmd_server_name(struct imap *im, struct imap_cmd *c, const char *folder)
{
    free(c->folder2);
    c->folder2 = NULL;
    if (strcasecmp(folder, "INBOX") == 0) {
        c->folder2 = xstrdup("INBOX");
        return 0;
    }
    const char *why;
    if (imap_name_to_server(folder, im->delim, im->utf8, &c->folder2, &why) < 0) {
        cmd_local_done(im, c, -EINVAL, "%s: cannot use folder '%s': %s", im->hostport, folder, why);
        return -EINVAL;
    }
    return 0;
}

static int cmd_need(struct imap *im, struct imap_cmd *c, unsigned cap, const char *capname)
{
    if (im->caps & cap) {
        return 0;
    }
    cmd_local_done(im, c, IMAP_ENOTSUP, "%s: %s needs %s, which the server does not offer",
                   im->hostport, imap_cmd_kind_name(c->kind), capname);
    return -ENOTSUP;
}

static void build_list(struct imap *im, struct imap_cmd *c)
{
    if (c->stage == 1) {
        b_text(c, "LSUB \"\" \"*\"\r\n");
        return;
    }
    if (!(im->caps & IMAP_CAP_LIST_EXTENDED)) {
        b_text(c, "LIST \"\" \"*\"\r\n");
        return;
    }
    b_text(c, "LIST \"\" \"*\" RETURN (SUBSCRIBED");
    if (im->caps & IMAP_CAP_SPECIAL_USE) {
        b_text(c, " SPECIAL-USE");
    }
    if (im->caps & IMAP_CAP_LIST_STATUS) {
        b_text(c, " STATUS (MESSAGES UIDNEXT UIDVALIDITY");
        if (im->caps & IMAP_CAP_CONDSTORE) {
            b_text(c, " HIGHESTMODSEQ");
        }
        if (im->caps & IMAP_CAP_OBJECTID) {
            /* The folder planner's surest sign of a rename (RFC 8474). */
            b_text(c, " MAILBOXID");
        }
        b_text(c, ")");
    }
    b_text(c, ")\r\n");
}

static void build_status_items(struct imap *im, struct imap_cmd *c, unsigned items)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {
        {IMAP_STATUS_MESSAGES, "MESSAGES"},           {IMAP_STATUS_UIDNEXT, "UIDNEXT"},
        {IMAP_STATUS_UIDVALIDITY, "UIDVALIDITY"},     {IMAP_STATUS_UNSEEN, "UNSEEN"},
        {IMAP_STATUS_HIGHESTMODSEQ, "HIGHESTMODSEQ"}, {IMAP_STATUS_RECENT, "RECENT"},
        {IMAP_STATUS_MAILBOXID, "MAILBOXID"},
    };
    if (!(im->caps & IMAP_CAP_CONDSTORE)) {
        items &= ~(unsigned)IMAP_STATUS_HIGHESTMODSEQ;
    }
    if (!(im->caps & IMAP_CAP_OBJECTID)) {
        items &= ~(unsigned)IMAP_STATUS_MAILBOXID;
    }
    if (items == 0) {
        items = IMAP_STATUS_MESSAGES;
    }
    b_text(c, " (");
    bool first = true;
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (items & names[i].bit) {
            b_textf(c, "%s%s", first ? "" : " ", names[i].name);
            first = false;
        }
    }
    b_text(c, ")\r\n");
}

static int build_auth(struct imap *im, struct imap_cmd *c)
{
    const char *user = im->opts.user, *secret = im->opts.secret;
    struct sbuf pl = {0};
    switch (c->kind) {
    case IMAP_CMD_LOGIN:
        b_text(c, "LOGIN ");
        b_astring(im, c, user, strlen(user), false);
        b_text(c, " ");
        b_astring(im, c, secret, strlen(secret), true);
        b_text(c, "\r\n");
        return 0;
    case IMAP_CMD_AUTH_PLAIN:
        sbuf_addc(&pl, '\0');
        sbuf_adds(&pl, user);
        sbuf_addc(&pl, '\0');
        sbuf_adds(&pl, secret);
        b_sasl(im, c, "PLAIN", pl.buf, pl.len);
        break;
    case IMAP_CMD_AUTH_XOAUTH2:
        sbuf_addf(&pl, "user=%s\001auth=Bearer %s\001\001", user, secret);
        b_sasl(im, c, "XOAUTH2", pl.buf, pl.len);
        break;
    case IMAP_CMD_AUTH_OAUTHBEARER:
        /* RFC 7628: the authzid escapes ',' and '='. */
        sbuf_adds(&pl, "n,a=");
        for (const char *p = user; *p != '\0'; p++) {
            if (*p == ',') {
                sbuf_adds(&pl, "=2C");
            } else if (*p == '=') {
                sbuf_adds(&pl, "=3D");
            } else {
                sbuf_addc(&pl, *p);
            }
        }
        sbuf_addf(&pl, ",\001host=%s\001port=%u\001auth=Bearer %s\001\001", im->opts.net.host,
                  (unsigned)im->opts.net.port, secret);
        b_sasl(im, c, "OAUTHBEARER", pl.buf, pl.len);
        break;
    default:
        break;
    }
    if (pl.buf != NULL) {
        explicit_bzero(pl.buf, pl.cap);
    }
    sbuf_free(&pl);
    return 0;
}

/* Builds the wire form. Returns 0, or -1 after queueing a local failure. */
static int cmd_build(struct imap *im, struct imap_cmd *c)
{
    cmd_clear_parts(c);
    c->built = true;
    switch (c->kind) {
    case IMAP_CMD_CAPABILITY:
        b_text(c, "CAPABILITY\r\n");
        break;
    case IMAP_CMD_STARTTLS:
        b_text(c, "STARTTLS\r\n");
        break;
    case IMAP_CMD_LOGIN:
    case IMAP_CMD_AUTH_PLAIN:
    case IMAP_CMD_AUTH_XOAUTH2:
    case IMAP_CMD_AUTH_OAUTHBEARER:
        build_auth(im, c);
        break;
    case IMAP_CMD_COMPRESS:
        b_text(c, "COMPRESS DEFLATE\r\n");
        break;
    case IMAP_CMD_ID:
        b_text(c, "ID (\"name\" \"mailsync\" \"version\" \"" MAILSYNC_VERSION "\")\r\n");
        break;
    case IMAP_CMD_ENABLE:
        b_text(c, "ENABLE");
        if (im->caps & IMAP_CAP_CONDSTORE) {
            b_text(c, " CONDSTORE");
        }
        if (im->caps & IMAP_CAP_QRESYNC) {
            b_text(c, " QRESYNC");
        }
        if (im->caps & IMAP_CAP_UTF8_ACCEPT) {
            b_text(c, " UTF8=ACCEPT");
        }
        b_text(c, "\r\n");
        break;
    case IMAP_CMD_DELIM:
        b_text(c, "LIST \"\" \"\"\r\n");
        break;
    case IMAP_CMD_NOOP:
        b_text(c, "NOOP\r\n");
        break;
    case IMAP_CMD_LIST:
        build_list(im, c);
        break;
    case IMAP_CMD_STATUS:
        if (cmd_server_name(im, c, c->folder) < 0) {
            return -1;
        }
        b_text(c, "STATUS ");
        b_mailbox(im, c, c->folder2);
        build_status_items(im, c, c->items);
        break;
    case IMAP_CMD_SELECT:
        if (cmd_server_name(im, c, c->folder) < 0) {
            return -1;
        }
        c->await_closed = im->selected && im->qresync;
        b_text(c, c->sel.readonly ? "EXAMINE " : "SELECT ");
        b_mailbox(im, c, c->folder2);
        if (c->sel.qresync_uidvalidity != 0 && im->qresync) {
            b_textf(c, " (QRESYNC (%u %llu", c->sel.qresync_uidvalidity,
                    (unsigned long long)c->sel.qresync_modseq);
            if (c->qresync_known != NULL) {
                b_textf(c, " %s", c->qresync_known);
            }
            b_text(c, "))");
        } else if ((c->sel.condstore || c->sel.qresync_uidvalidity != 0) && im->condstore) {
            b_text(c, " (CONDSTORE)");
        }
        b_text(c, "\r\n");
        break;
    case IMAP_CMD_FETCH:
        b_textf(c, "UID FETCH %s (UID", c->uidset);
        if (c->items & IMAP_FETCH_FLAGS) {
            b_text(c, " FLAGS");
        }
        if (c->items & IMAP_FETCH_SIZE) {
            b_text(c, " RFC822.SIZE");
        }
        if (c->items & IMAP_FETCH_INTERNALDATE) {
            b_text(c, " INTERNALDATE");
        }
        if ((c->items & IMAP_FETCH_MODSEQ) && im->condstore) {
            b_text(c, " MODSEQ");
        }
        if (c->items & IMAP_FETCH_MESSAGE_ID) {
            b_text(c, " BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]");
        }
        if (c->items & IMAP_FETCH_HEADER) {
            b_text(c, " BODY.PEEK[HEADER]");
        }
        if ((c->items & IMAP_FETCH_EMAILID) && (im->caps & IMAP_CAP_OBJECTID)) {
            b_text(c, " EMAILID");
        }
        if (c->items & IMAP_FETCH_BODY) {
            b_text(c, " BODY.PEEK[]");
        }
        b_text(c, ")");
        if (c->modseq != 0 && im->condstore) {
            b_textf(c, " (CHANGEDSINCE %llu%s)", (unsigned long long)c->modseq,
                    c->vanished && im->qresync ? " VANISHED" : "");
        }
        b_text(c, "\r\n");
        break;
    case IMAP_CMD_SEARCH:
        b_textf(c, "UID SEARCH %s%s\r\n", (im->caps & IMAP_CAP_ESEARCH) ? "RETURN (ALL) " : "",
                c->criteria);
        break;
    case IMAP_CMD_STORE:
        b_textf(c, "UID STORE %s ", c->uidset);
        if (c->modseq != 0 && im->condstore) {
            b_textf(c, "(UNCHANGEDSINCE %llu) ", (unsigned long long)c->modseq);
        }
        b_textf(c, "%cFLAGS.SILENT ", c->op);
        b_flags(c, c->flags, c->keywords, c->nkeywords);
        b_text(c, "\r\n");
        break;
    case IMAP_CMD_APPEND: {
        if (cmd_server_name(im, c, c->folder) < 0) {
            return -1;
        }
        b_text(c, "APPEND ");
        b_mailbox(im, c, c->folder2);
        b_text(c, " ");
        if ((c->flags & ~(unsigned)IMAP_FLAG_RECENT) != 0 || c->nkeywords > 0) {
            b_flags(c, c->flags & ~(unsigned)IMAP_FLAG_RECENT, c->keywords, c->nkeywords);
            b_text(c, " ");
        }
        if (c->app.internaldate != 0) {
            char date[40];
            imap_format_datetime(c->app.internaldate, date, sizeof(date));
            b_textf(c, "\"%s\" ", date);
        }
        struct imap_part *p = new_part(c, IMAP_PART_LITERAL);
        p->size = c->app.size;
        p->source = true;
        sbuf_addf(&c->trace, "{%llu" IMAP_TRACE_LITERAL "}", (unsigned long long)c->app.size);
        b_add(c, "\r\n", 2, false);
        c->src_sent = 0;
        c->src_prev_cr = false;
        break;
    }
    case IMAP_CMD_EXPUNGE:
        if (cmd_need(im, c, IMAP_CAP_UIDPLUS, "UIDPLUS") < 0) {
            return -1;
        }
        b_textf(c, "UID EXPUNGE %s\r\n", c->uidset);
        break;
    case IMAP_CMD_MOVE:
    case IMAP_CMD_COPY:
        if (c->stage == 0) {
            if (cmd_server_name(im, c, c->folder) < 0) {
                return -1;
            }
            bool move = c->kind == IMAP_CMD_MOVE && (im->caps & IMAP_CAP_MOVE);
            b_textf(c, "UID %s %s ", move ? "MOVE" : "COPY", c->uidset);
            b_mailbox(im, c, c->folder2);
            b_text(c, "\r\n");
        } else if (c->stage == 1) {
            b_textf(c, "UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n", c->uidset);
        } else {
            b_textf(c, "UID EXPUNGE %s\r\n", c->uidset);
        }
        break;
    case IMAP_CMD_CREATE:
    case IMAP_CMD_DELETE:
        if (cmd_server_name(im, c, c->folder) < 0) {
            return -1;
        }
        b_text(c, c->kind == IMAP_CMD_CREATE ? "CREATE " : "DELETE ");
        b_mailbox(im, c, c->folder2);
        b_text(c, "\r\n");
        break;
    case IMAP_CMD_RENAME: {
        /* RENAME old new: the new name rides in criteria. */
        if (cmd_server_name(im, c, c->criteria) < 0) {
            return -1;
        }
        char *to = c->folder2;
        c->folder2 = NULL;
        if (cmd_server_name(im, c, c->folder) < 0) {
            free(to);
            return -1;
        }
        b_text(c, "RENAME ");
        b_mailbox(im, c, c->folder2);
        b_text(c, " ");
        b_mailbox(im, c, to);
        b_text(c, "\r\n");
        free(to);
        break;
    }
    case IMAP_CMD_IDLE:
        if (cmd_need(im, c, IMAP_CAP_IDLE, "IDLE") < 0) {
            return -1;
        }
        b_text(c, "IDLE\r\n");
        break;
    case IMAP_CMD_NOTIFY:
        if (cmd_need(im, c, IMAP_CAP_NOTIFY, "NOTIFY") < 0) {
            return -1;
        }
        b_text(c, "NOTIFY ");
        b_text(c, c->folder);
        b_text(c, "\r\n");
        break;
    case IMAP_CMD_LOGOUT:
        b_text(c, "LOGOUT\r\n");
        break;
    }
    return 0;
}

struct imap_cmd *imap_cmd_next(struct imap *im)
{
    for (struct imap_cmd *x = im->inflight; x != NULL; x = x->next) {
        if (is_barrier(x->kind)) {
            return NULL;
        }
    }
    if (im->iq != NULL) {
        if (is_barrier(im->iq->kind) && im->inflight != NULL) {
            return NULL;
        }
        struct imap_cmd *c = q_pop(&im->iq, &im->iq_tail);
        cmd_build(im, c);
        return c;
    }
    if (im->state != IMAP_STATE_READY && im->state != IMAP_STATE_LOGOUT) {
        return NULL;
    }
    while (im->uq != NULL) {
        if (im->ninflight >= im->depth) {
            return NULL;
        }
        if (is_barrier(im->uq->kind) && im->inflight != NULL) {
            return NULL;
        }
        struct imap_cmd *c = q_pop(&im->uq, &im->uq_tail);
        if (!c->built && cmd_build(im, c) < 0) {
            continue;
        }
        return c;
    }
    return NULL;
}

void imap_cmd_internal(struct imap *im, enum imap_cmd_kind kind)
{
    struct imap_cmd *c = cmd_new(kind, NULL, NULL);
    c->internal = true;
    q_push(&im->iq, &im->iq_tail, c);
    imap_pump(im);
}

/* ---- Parsing helpers ---- */

static bool arg_u32(const struct imap_arg *a, uint32_t *v_r)
{
    uint64_t v;
    if (!imap_arg_number(a, &v) || v > UINT32_MAX) {
        return false;
    }
    *v_r = (uint32_t)v;
    return true;
}

static const struct imap_arg *list_items(const struct imap_arg *a, size_t *n_r)
{
    if (a == NULL || a->type != IMAP_ARG_LIST) {
        *n_r = 0;
        return NULL;
    }
    *n_r = a->u.list.count;
    return a->u.list.items;
}

static unsigned parse_flag(const char *s)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {
        {"\\Seen", IMAP_FLAG_SEEN},       {"\\Answered", IMAP_FLAG_ANSWERED},
        {"\\Flagged", IMAP_FLAG_FLAGGED}, {"\\Deleted", IMAP_FLAG_DELETED},
        {"\\Draft", IMAP_FLAG_DRAFT},     {"\\Recent", IMAP_FLAG_RECENT},
    };
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            return names[i].bit;
        }
    }
    return 0;
}

/* Whether untagged data naming UIDs (FETCH, VANISHED) arriving now may be
 * about the mailbox a SELECT in flight is leaving: then it is dropped (and
 * counted) rather than taken for the new mailbox's. EXISTS is not: the new
 * mailbox's own EXISTS always follows and sets the count. */
static bool old_mailbox_data(struct imap *im)
{
    struct imap_cmd *c = imap_cmd_inflight_kind(im, IMAP_CMD_SELECT);
    if (c == NULL || !c->await_closed) {
        return false;
    }
    c->dropped++;
    return true;
}

static struct imap_mailbox *select_target(struct imap *im)
{
    struct imap_cmd *c = imap_cmd_inflight_kind(im, IMAP_CMD_SELECT);
    if (c != NULL) {
        return &c->mb;
    }
    return im->selected ? &im->sel : NULL;
}

/* ---- Untagged data ---- */

struct fetch_parse {
    struct imap_msg msg;
    const char **kw;
    const struct imap_arg *body; /* BODY[] value, inline */
    char *message_id;            /* msg.message_id, owned */
};

static void fetch_parse_clear(struct fetch_parse *fp)
{
    free(fp->kw);
    free(fp->message_id);
    fp->kw = NULL;
    fp->message_id = NULL;
}

/* A header section's value: the bytes of an inline string or literal, or
 * NULL for NIL or a literal too large to be kept inline (streamed past). */
static const char *section_bytes(const struct imap_arg *v, size_t *len_r)
{
    if (v->type != IMAP_ARG_STRING && v->type != IMAP_ARG_LITERAL && v->type != IMAP_ARG_ATOM) {
        *len_r = 0;
        return NULL;
    }
    *len_r = v->u.str.len;
    return v->u.str.s;
}

static int parse_fetch(struct imap *im, uint32_t seq, const struct imap_arg *list,
                       struct fetch_parse *fp)
{
    memset(fp, 0, sizeof(*fp));
    fp->msg.seq = seq;
    size_t n;
    const struct imap_arg *it = list_items(list, &n);
    if (it == NULL || n % 2 != 0) {
        return -1;
    }
    for (size_t i = 0; i < n; i += 2) {
        const struct imap_arg *k = &it[i], *v = &it[i + 1];
        if (imap_arg_is_atom(k, "UID")) {
            if (!arg_u32(v, &fp->msg.uid)) {
                return -1;
            }
        } else if (imap_arg_is_atom(k, "FLAGS")) {
            size_t nf;
            const struct imap_arg *f = list_items(v, &nf);
            if (v->type != IMAP_ARG_LIST) {
                return -1;
            }
            free(fp->kw);
            fp->msg.nkeywords = 0;
            fp->msg.flags = 0;
            fp->kw = xcalloc(nf + 1, sizeof(*fp->kw));
            for (size_t j = 0; j < nf; j++) {
                const char *s = imap_arg_str(&f[j]);
                if (s == NULL) {
                    continue;
                }
                unsigned bit = parse_flag(s);
                if (bit != 0) {
                    fp->msg.flags |= bit;
                } else if (s[0] != '\\') {
                    fp->kw[fp->msg.nkeywords++] = s;
                }
            }
            fp->msg.keywords = fp->kw;
            fp->msg.have |= IMAP_FETCH_FLAGS;
        } else if (imap_arg_is_atom(k, "RFC822.SIZE")) {
            if (!imap_arg_number(v, &fp->msg.size)) {
                return -1;
            }
            fp->msg.have |= IMAP_FETCH_SIZE;
        } else if (imap_arg_is_atom(k, "INTERNALDATE")) {
            const char *s = imap_arg_str(v);
            if (s == NULL || imap_parse_datetime(s, &fp->msg.internaldate) < 0) {
                return -1;
            }
            fp->msg.have |= IMAP_FETCH_INTERNALDATE;
        } else if (imap_arg_is_atom(k, "MODSEQ")) {
            size_t nm;
            const struct imap_arg *m = list_items(v, &nm);
            if (nm != 1 || !imap_arg_number(&m[0], &fp->msg.modseq)) {
                return -1;
            }
            fp->msg.have |= IMAP_FETCH_MODSEQ;
        } else if (imap_arg_is_atom(k, "BODY[]") || imap_arg_is_atom(k, "RFC822")) {
            fp->body = v;
        } else if (k->type == IMAP_ARG_ATOM &&
                   strncasecmp(k->u.str.s, "BODY[HEADER.FIELDS", 18) == 0) {
            /* Only MESSAGE-ID is ever asked for this way. */
            size_t len;
            const char *h = section_bytes(v, &len);
            free(fp->message_id);
            fp->message_id = h != NULL ? imap_header_message_id(h, len) : NULL;
            fp->msg.message_id = fp->message_id;
            fp->msg.have |= IMAP_FETCH_MESSAGE_ID;
        } else if (imap_arg_is_atom(k, "BODY[HEADER]") || imap_arg_is_atom(k, "RFC822.HEADER")) {
            fp->msg.header = section_bytes(v, &fp->msg.header_len);
            fp->msg.have |= IMAP_FETCH_HEADER;
        } else if (imap_arg_is_atom(k, "EMAILID")) {
            /* RFC 8474: "(" objectid ")", objectid 1*255 of ALPHA, DIGIT,
             * "_" and "-"; anything else is no id (left out, not fatal:
             * only a move's pairing uses it). */
            size_t ne;
            const struct imap_arg *e = list_items(v, &ne);
            const char *id = ne == 1 ? imap_arg_str(&e[0]) : NULL;
            size_t len = id != NULL ? strlen(id) : 0;
            bool ok = len >= 1 && len <= 255;
            for (size_t j = 0; ok && j < len; j++) {
                char ch = id[j];
                ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                     (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
            }
            fp->msg.emailid = ok ? id : NULL;
            fp->msg.have |= IMAP_FETCH_EMAILID;
        }
    }
    (void)im;
    return 0;
}

static struct imap_cmd *route_fetch(struct imap *im, uint32_t uid)
{
    if (uid == 0) {
        return NULL;
    }
    for (struct imap_cmd *c = im->inflight; c != NULL; c = c->next) {
        if (c->kind == IMAP_CMD_FETCH && imap_uidset_contains(c->ranges, c->nranges, uid)) {
            return c;
        }
    }
    return NULL;
}

static void handle_fetch(struct imap *im, uint32_t seq, const struct imap_arg *list)
{
    struct fetch_parse fp;
    if (parse_fetch(im, seq, list, &fp) < 0) {
        fetch_parse_clear(&fp);
        imap_fail(im, IMAP_EPROTO, "%s: malformed FETCH response for message %u", im->hostport,
                  seq);
        return;
    }
    struct imap_cmd *c = NULL;
    void *sink = NULL;
    bool pause = false;
    if (im->body_have && im->body_seq == seq) {
        c = im->body_cmd;
        sink = im->body_sink;
        fp.msg.have |= IMAP_FETCH_BODY;
        fp.msg.body_size = im->body_bytes;
        im->body_have = false;
        im->body_cmd = NULL;
        im->body_sink = NULL;
    } else {
        c = route_fetch(im, fp.msg.uid);
        if (c != NULL && fp.body != NULL && fp.body->type != IMAP_ARG_NIL &&
            (c->items & IMAP_FETCH_BODY)) {
            /* A small body came inline: give it to the sink the same way. */
            const char *s = imap_arg_str(fp.body);
            size_t len = s != NULL ? fp.body->u.str.len : 0;
            if (c->fcb.body_begin != NULL) {
                sink = c->fcb.body_begin(im, seq, fp.msg.uid, len, c->arg);
            }
            if (!imap_dead(im) && c->fcb.body_data != NULL && len > 0) {
                int r = c->fcb.body_data(im, sink, s, len, c->arg);
                if (r == IMAP_SINK_PAUSE) {
                    pause = true;
                } else if (r < 0) {
                    fetch_parse_clear(&fp);
                    imap_fail(im, r, "%s: storing a message body failed: %s", im->hostport,
                              strerror(-r));
                    return;
                }
            }
            if (!imap_dead(im) && c->fcb.body_end != NULL) {
                c->fcb.body_end(im, sink, true, c->arg);
            }
            fp.msg.have |= IMAP_FETCH_BODY;
            fp.msg.body_size = len;
        }
    }
    if (imap_dead(im)) {
        fetch_parse_clear(&fp);
        return;
    }
    if (c != NULL) {
        if (c->fcb.on_message != NULL) {
            c->fcb.on_message(im, &fp.msg, sink, c->arg);
        }
    } else if (!old_mailbox_data(im)) {
        struct imap_event ev = {.type = IMAP_EV_FETCH, .n = seq, .msg = &fp.msg};
        if (im->cb.on_event != NULL) {
            im->cb.on_event(im, &ev, im->arg);
        }
    }
    fetch_parse_clear(&fp);
    if (pause && !imap_dead(im)) {
        imap_pause_input(im);
    }
}

/* The hash of a raw folder name as find_folder compares them: INBOX in any
 * case is one name. */
static uint64_t folder_hash(const char *raw)
{
    return strcasecmp(raw, "INBOX") == 0 ? str_hash("INBOX", 5) : str_hash(raw, strlen(raw));
}

/* A lookup by hash: LIST, LSUB and LIST-STATUS replies name every folder,
 * and a linear search per reply line made 50,000 folders take seconds. */
static struct imap_folder_item *find_folder(struct imap_cmd *c, const char *raw)
{
    uint64_t h = folder_hash(raw);
    size_t it = 0, i;
    while (strindex_next(&c->folder_ix, h, &it, &i)) {
        if (strcmp(c->folders[i].raw, raw) == 0 ||
            (strcasecmp(raw, "INBOX") == 0 && strcasecmp(c->folders[i].raw, "INBOX") == 0)) {
            return &c->folders[i];
        }
    }
    return NULL;
}

static unsigned parse_list_attrs(const struct imap_arg *a)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {
        {"\\Noselect", IMAP_LIST_NOSELECT},
        {"\\NoInferiors", IMAP_LIST_NOINFERIORS},
        {"\\NonExistent", IMAP_LIST_NONEXISTENT | IMAP_LIST_NOSELECT},
        {"\\HasChildren", IMAP_LIST_HASCHILDREN},
        {"\\HasNoChildren", IMAP_LIST_HASNOCHILDREN},
        {"\\Marked", IMAP_LIST_MARKED},
        {"\\Unmarked", IMAP_LIST_UNMARKED},
        {"\\Subscribed", IMAP_LIST_SUBSCRIBED},
        {"\\Remote", IMAP_LIST_REMOTE},
        {"\\All", IMAP_LIST_ALL},
        {"\\Archive", IMAP_LIST_ARCHIVE},
        {"\\Drafts", IMAP_LIST_DRAFTS},
        {"\\Flagged", IMAP_LIST_FLAGGED},
        {"\\Junk", IMAP_LIST_JUNK},
        {"\\Sent", IMAP_LIST_SENT},
        {"\\Trash", IMAP_LIST_TRASH},
        {"\\Important", IMAP_LIST_IMPORTANT},
    };
    unsigned attrs = 0;
    size_t n;
    const struct imap_arg *it = list_items(a, &n);
    for (size_t i = 0; i < n; i++) {
        const char *s = imap_arg_str(&it[i]);
        for (size_t k = 0; s != NULL && k < ARRAY_SIZE(names); k++) {
            if (strcasecmp(s, names[k].name) == 0) {
                attrs |= names[k].bit;
            }
        }
    }
    return attrs;
}

static void handle_list(struct imap *im, const struct imap_response *r, bool lsub)
{
    if (r->nargs < 4 || r->args[1].type != IMAP_ARG_LIST) {
        imap_fail(im, IMAP_EPROTO, "%s: malformed LIST response", im->hostport);
        return;
    }
    const struct imap_arg *d = &r->args[2];
    char delim = '\0';
    if (d->type != IMAP_ARG_NIL) {
        const char *ds = imap_arg_str(d);
        if (ds == NULL || d->u.str.len != 1) {
            imap_fail(im, IMAP_EPROTO, "%s: malformed LIST delimiter", im->hostport);
            return;
        }
        delim = ds[0];
    }
    struct imap_cmd *c = NULL;
    for (struct imap_cmd *x = im->inflight; x != NULL; x = x->next) {
        if (x->kind == IMAP_CMD_DELIM || x->kind == IMAP_CMD_LIST) {
            c = x;
            break;
        }
    }
    if (c == NULL) {
        /* Unasked: NOTIFY's MailboxName (a folder created, renamed or
         * deleted). The raw name goes to the owner, who lists again. */
        const char *raw = imap_arg_str(&r->args[3]);
        imap_emit_text(im, IMAP_EV_MAILBOX, raw != NULL ? raw : "");
        return;
    }
    if (c->kind == IMAP_CMD_DELIM) {
        im->delim = delim;
        return;
    }
    const char *raw = imap_arg_str(&r->args[3]);
    if (raw == NULL) {
        imap_fail(im, IMAP_EPROTO, "%s: malformed LIST mailbox name", im->hostport);
        return;
    }
    size_t rawlen = r->args[3].u.str.len;
    if (im->delim == '\0' && delim != '\0') {
        im->delim = delim;
    }
    if (lsub || c->stage == 1) {
        struct imap_folder_item *f = find_folder(c, raw);
        if (f != NULL) {
            f->f.attrs |= IMAP_LIST_SUBSCRIBED;
        }
        return;
    }
    if (find_folder(c, raw) != NULL) {
        return;
    }
    xgrow(&c->folders, &c->cap_folders, c->nfolders + 1, sizeof(*c->folders));
    struct imap_folder_item *f = &c->folders[c->nfolders++];
    memset(f, 0, sizeof(*f));
    f->raw = xstrndup(raw, rawlen);
    strindex_add(&c->folder_ix, folder_hash(f->raw), c->nfolders - 1);
    f->f.delim = delim;
    f->f.attrs = parse_list_attrs(&r->args[1]);
    if (imap_name_from_server(raw, rawlen, delim, im->utf8, &f->name, &f->why) < 0) {
        log_debug("imap %s: folder '%s' cannot be synced: %s", im->name, f->raw, f->why);
    }
}

/* An RFC 8474 objectid in parentheses, "(F2212ea87-6097)", into out:
 * 1 to IMAP_MAILBOXID_MAX letters, digits, '-' and '_'. */
static bool parse_objectid(const struct imap_arg *a, char out[IMAP_MAILBOXID_MAX + 1])
{
    size_t n;
    const struct imap_arg *it = list_items(a, &n);
    if (n != 1 || it[0].type != IMAP_ARG_ATOM) {
        return false;
    }
    const char *s = it[0].u.str.s;
    size_t len = it[0].u.str.len;
    if (len == 0 || len > IMAP_MAILBOXID_MAX) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
        if (!ok) {
            return false;
        }
    }
    memcpy(out, s, len);
    out[len] = '\0';
    return true;
}

/* Returns false when an item the owner relies on is malformed (MAILBOXID);
 * other items it cannot read are left out of st->have. */
static bool parse_status_items(const struct imap_arg *list, struct imap_status_info *st)
{
    size_t n;
    const struct imap_arg *it = list_items(list, &n);
    for (size_t i = 0; i + 1 < n; i += 2) {
        uint64_t v;
        if (imap_arg_is_atom(&it[i], "MAILBOXID")) {
            if (!parse_objectid(&it[i + 1], st->mailboxid)) {
                return false;
            }
            st->have |= IMAP_STATUS_MAILBOXID;
            continue;
        }
        if (!imap_arg_number(&it[i + 1], &v)) {
            continue;
        }
        uint32_t v32 = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
        if (imap_arg_is_atom(&it[i], "MESSAGES")) {
            st->messages = v32;
            st->have |= IMAP_STATUS_MESSAGES;
        } else if (imap_arg_is_atom(&it[i], "UIDNEXT")) {
            st->uidnext = v32;
            st->have |= IMAP_STATUS_UIDNEXT;
        } else if (imap_arg_is_atom(&it[i], "UIDVALIDITY")) {
            st->uidvalidity = v32;
            st->have |= IMAP_STATUS_UIDVALIDITY;
        } else if (imap_arg_is_atom(&it[i], "UNSEEN")) {
            st->unseen = v32;
            st->have |= IMAP_STATUS_UNSEEN;
        } else if (imap_arg_is_atom(&it[i], "RECENT")) {
            st->recent = v32;
            st->have |= IMAP_STATUS_RECENT;
        } else if (imap_arg_is_atom(&it[i], "HIGHESTMODSEQ")) {
            st->highestmodseq = v;
            st->have |= IMAP_STATUS_HIGHESTMODSEQ;
        }
    }
    return true;
}

static bool same_mailbox(const char *a, const char *b)
{
    if (strcasecmp(a, "INBOX") == 0) {
        return strcasecmp(b, "INBOX") == 0;
    }
    return strcmp(a, b) == 0;
}

static void handle_status(struct imap *im, const struct imap_response *r)
{
    if (r->nargs < 3) {
        imap_fail(im, IMAP_EPROTO, "%s: malformed STATUS response", im->hostport);
        return;
    }
    const char *raw = imap_arg_str(&r->args[1]);
    if (raw == NULL || r->args[2].type != IMAP_ARG_LIST) {
        imap_fail(im, IMAP_EPROTO, "%s: malformed STATUS response", im->hostport);
        return;
    }
    struct imap_status_info st = {0};
    bool items_ok = parse_status_items(&r->args[2], &st);
    char *name = NULL;
    const char *why;
    imap_name_from_server(raw, r->args[1].u.str.len, im->delim, im->utf8, &name, &why);
    if (!items_ok) {
        imap_fail(im, IMAP_EPROTO, "%s: malformed MAILBOXID in the STATUS of folder '%s'",
                  im->hostport, name != NULL ? name : raw);
        free(name);
        return;
    }
    st.folder = name;
    for (struct imap_cmd *c = im->inflight; c != NULL; c = c->next) {
        if (c->kind == IMAP_CMD_STATUS && c->folder2 != NULL && same_mailbox(c->folder2, raw)) {
            if (c->on_status != NULL) {
                c->on_status(im, &st, c->arg);
            }
            free(name);
            return;
        }
        if (c->kind == IMAP_CMD_LIST) {
            struct imap_folder_item *f = find_folder(c, raw);
            if (f != NULL) {
                f->f.has_status = true;
                f->f.status = st;
                free(f->status_folder);
                f->status_folder = name;
                return;
            }
        }
    }
    struct imap_event ev = {.type = IMAP_EV_STATUS, .status = &st};
    if (im->cb.on_event != NULL) {
        im->cb.on_event(im, &ev, im->arg);
    }
    free(name);
}

static int add_uid(struct imap *im, struct imap_cmd *c, uint32_t uid)
{
    if (c->nuids >= MAX_SEARCH_UIDS) {
        imap_fail(im, IMAP_EPROTO, "%s: search result too large", im->hostport);
        return -1;
    }
    xgrow(&c->uids, &c->cap_uids, c->nuids + 1, sizeof(*c->uids));
    c->uids[c->nuids++] = uid;
    return 0;
}

static void handle_search(struct imap *im, const struct imap_response *r)
{
    /* A plain SEARCH answer carries no tag. Every SEARCH gets exactly one,
     * and a server runs such commands in order (RFC 3501 section 5.5), but
     * it may send several answers before the first tagged OK: each belongs
     * to the oldest SEARCH in flight that has none yet. */
    struct imap_cmd *c = NULL;
    for (struct imap_cmd *x = im->inflight; x != NULL; x = x->next) {
        if (x->kind == IMAP_CMD_SEARCH && !x->search_seen) {
            c = x;
            break;
        }
    }
    if (c == NULL) {
        c = imap_cmd_inflight_kind(im, IMAP_CMD_SEARCH);
    }
    if (c == NULL) {
        return;
    }
    c->search_seen = true;
    for (size_t i = 1; i < r->nargs; i++) {
        uint32_t uid;
        if (r->args[i].type == IMAP_ARG_LIST) {
            continue; /* (MODSEQ n) */
        }
        if (!arg_u32(&r->args[i], &uid)) {
            imap_fail(im, IMAP_EPROTO, "%s: malformed SEARCH response", im->hostport);
            return;
        }
        if (add_uid(im, c, uid) < 0) {
            return;
        }
    }
}

static void handle_esearch(struct imap *im, const struct imap_response *r)
{
    /* * ESEARCH (TAG "A5") UID ALL 1:3,5 */
    if (r->nargs < 2 || r->args[1].type != IMAP_ARG_LIST) {
        return;
    }
    size_t n;
    const struct imap_arg *t = list_items(&r->args[1], &n);
    const char *tag = n == 2 && imap_arg_is_atom(&t[0], "TAG") ? imap_arg_str(&t[1]) : NULL;
    struct imap_cmd *c = NULL;
    for (struct imap_cmd *x = im->inflight; x != NULL && tag != NULL; x = x->next) {
        if (x->kind == IMAP_CMD_SEARCH && strcmp(x->tag, tag) == 0) {
            c = x;
        }
    }
    if (c == NULL) {
        return;
    }
    for (size_t i = 2; i + 1 < r->nargs; i++) {
        if (!imap_arg_is_atom(&r->args[i], "ALL")) {
            continue;
        }
        const char *set = imap_arg_str(&r->args[i + 1]);
        struct imap_uid_range *rg;
        size_t nr;
        if (set == NULL || imap_uidset_parse(set, &rg, &nr) < 0) {
            imap_fail(im, IMAP_EPROTO, "%s: malformed ESEARCH response", im->hostport);
            return;
        }
        for (size_t k = 0; k < nr; k++) {
            for (uint64_t u = rg[k].lo; u <= rg[k].hi; u++) {
                if (add_uid(im, c, (uint32_t)u) < 0) {
                    free(rg);
                    return;
                }
            }
        }
        free(rg);
        i++;
    }
}

static void handle_vanished(struct imap *im, const struct imap_response *r)
{
    bool earlier = false;
    size_t i = 1;
    if (i < r->nargs && r->args[i].type == IMAP_ARG_LIST) {
        size_t n;
        const struct imap_arg *it = list_items(&r->args[i], &n);
        earlier = n == 1 && imap_arg_is_atom(&it[0], "EARLIER");
        i++;
    }
    const char *set = i < r->nargs ? imap_arg_str(&r->args[i]) : NULL;
    struct imap_uid_range *rg;
    size_t nr;
    if (set == NULL || imap_uidset_parse(set, &rg, &nr) < 0) {
        imap_fail(im, IMAP_EPROTO, "%s: malformed VANISHED response", im->hostport);
        return;
    }
    if (old_mailbox_data(im)) {
        free(rg);
        return;
    }
    if (!earlier) {
        struct imap_mailbox *mb = select_target(im);
        uint64_t count = 0;
        for (size_t k = 0; k < nr; k++) {
            count += (uint64_t)rg[k].hi - rg[k].lo + 1;
        }
        if (mb != NULL) {
            mb->exists = count >= mb->exists ? 0 : mb->exists - (uint32_t)count;
        }
    }
    struct imap_event ev = {
        .type = IMAP_EV_VANISHED, .earlier = earlier, .ranges = rg, .nranges = nr};
    if (im->cb.on_event != NULL) {
        im->cb.on_event(im, &ev, im->arg);
    }
    free(rg);
}

void imap_cmd_untagged(struct imap *im, const struct imap_response *r)
{
    const struct imap_arg *a = r->args;
    uint32_t n;
    if (r->nargs >= 2 && arg_u32(&a[0], &n)) {
        struct imap_event ev = {.n = n};
        if (imap_arg_is_atom(&a[1], "EXISTS")) {
            struct imap_mailbox *mb = select_target(im);
            if (mb != NULL) {
                mb->exists = n;
            }
            ev.type = IMAP_EV_EXISTS;
        } else if (imap_arg_is_atom(&a[1], "EXPUNGE")) {
            struct imap_mailbox *mb = select_target(im);
            if (mb != NULL && mb->exists > 0) {
                mb->exists--;
            }
            ev.type = IMAP_EV_EXPUNGE;
        } else if (imap_arg_is_atom(&a[1], "FETCH")) {
            if (r->nargs < 3) {
                imap_fail(im, IMAP_EPROTO, "%s: malformed FETCH response", im->hostport);
                return;
            }
            handle_fetch(im, n, &a[2]);
            return;
        } else {
            return; /* RECENT and anything unknown */
        }
        if (im->cb.on_event != NULL) {
            im->cb.on_event(im, &ev, im->arg);
        }
        return;
    }
    if (imap_arg_is_atom(&a[0], "LIST")) {
        handle_list(im, r, false);
    } else if (imap_arg_is_atom(&a[0], "LSUB")) {
        handle_list(im, r, true);
    } else if (imap_arg_is_atom(&a[0], "STATUS")) {
        handle_status(im, r);
    } else if (imap_arg_is_atom(&a[0], "SEARCH")) {
        handle_search(im, r);
    } else if (imap_arg_is_atom(&a[0], "ESEARCH")) {
        handle_esearch(im, r);
    } else if (imap_arg_is_atom(&a[0], "VANISHED")) {
        handle_vanished(im, r);
    }
}

static void add_copyuid(struct imap_cmd *c, const struct imap_response *r)
{
    uint32_t v;
    if (r->ncode_args != 3 || !arg_u32(&r->code_args[0], &v)) {
        return;
    }
    const char *src = imap_arg_str(&r->code_args[1]), *dst = imap_arg_str(&r->code_args[2]);
    if (src == NULL || dst == NULL) {
        return;
    }
    c->copy_uidvalidity = v;
    if (c->copy_src.len > 0) {
        sbuf_addc(&c->copy_src, ',');
        sbuf_addc(&c->copy_dst, ',');
    }
    sbuf_adds(&c->copy_src, src);
    sbuf_adds(&c->copy_dst, dst);
}

/* Returns false for a malformed MAILBOXID; other codes it cannot read are
 * ignored. */
static bool select_code(struct imap_mailbox *mb, const struct imap_response *r)
{
    uint64_t v;
    const char *code = r->code;
    if (strcmp(code, "MAILBOXID") == 0) {
        return r->ncode_args == 1 && parse_objectid(&r->code_args[0], mb->mailboxid);
    }
    if (strcmp(code, "UIDVALIDITY") == 0 && r->ncode_args == 1 &&
        imap_arg_number(&r->code_args[0], &v)) {
        mb->uidvalidity = (uint32_t)v;
    } else if (strcmp(code, "UIDNEXT") == 0 && r->ncode_args == 1 &&
               imap_arg_number(&r->code_args[0], &v)) {
        mb->uidnext = (uint32_t)v;
    } else if (strcmp(code, "HIGHESTMODSEQ") == 0 && r->ncode_args == 1 &&
               imap_arg_number(&r->code_args[0], &v)) {
        mb->highestmodseq = v;
        mb->nomodseq = false;
    } else if (strcmp(code, "NOMODSEQ") == 0) {
        mb->nomodseq = true;
        mb->highestmodseq = 0;
    } else if (strcmp(code, "PERMANENTFLAGS") == 0 && r->ncode_args == 1) {
        size_t n;
        const struct imap_arg *it = list_items(&r->code_args[0], &n);
        mb->permanent_flags = 0;
        mb->permanent_keywords = false;
        for (size_t i = 0; i < n; i++) {
            const char *s = imap_arg_str(&it[i]);
            if (s == NULL) {
                continue;
            }
            if (strcmp(s, "\\*") == 0) {
                mb->permanent_keywords = true;
            } else {
                mb->permanent_flags |= parse_flag(s) & ~(unsigned)IMAP_FLAG_RECENT;
            }
        }
    }
    return true;
}

void imap_cmd_untagged_ok(struct imap *im, const struct imap_response *r)
{
    if (r->code == NULL) {
        return;
    }
    if (strcmp(r->code, "COPYUID") == 0) {
        for (struct imap_cmd *c = im->inflight; c != NULL; c = c->next) {
            if (c->kind == IMAP_CMD_MOVE || c->kind == IMAP_CMD_COPY) {
                add_copyuid(c, r);
                return;
            }
        }
        return;
    }
    struct imap_cmd *sc = imap_cmd_inflight_kind(im, IMAP_CMD_SELECT);
    if (sc != NULL && strcmp(r->code, "CLOSED") == 0) {
        /* What follows is the new mailbox's. */
        sc->await_closed = false;
        sc->dropped = 0;
        return;
    }
    if (sc != NULL) {
        if (!select_code(&sc->mb, r)) {
            imap_fail(im, IMAP_EPROTO, "%s: malformed MAILBOXID in the SELECT of folder '%s'",
                      im->hostport, sc->folder != NULL ? sc->folder : "?");
        }
        return;
    }
    if (im->selected && strcmp(r->code, "UIDVALIDITY") == 0) {
        uint32_t old = im->sel.uidvalidity;
        (void)select_code(&im->sel, r);
        if (im->sel.uidvalidity != old) {
            struct imap_event ev = {.type = IMAP_EV_UIDVALIDITY, .n = im->sel.uidvalidity};
            if (im->cb.on_event != NULL) {
                im->cb.on_event(im, &ev, im->arg);
            }
        }
    } else if (im->selected) {
        /* A MAILBOXID said while selected does not change what the SELECT
         * reported: a malformed one is ignored here. */
        (void)select_code(&im->sel, r);
    }
}

/* ---- Literals (streamed bodies) ---- */

static uint32_t partial_uid(const struct imap_response *p)
{
    if (p == NULL || p->nargs < 3 || p->args[2].type != IMAP_ARG_LIST) {
        return 0;
    }
    size_t n;
    const struct imap_arg *it = list_items(&p->args[2], &n);
    for (size_t i = 0; i + 1 < n; i += 2) {
        uint32_t v;
        if (imap_arg_is_atom(&it[i], "UID") && arg_u32(&it[i + 1], &v)) {
            return v;
        }
    }
    return 0;
}

void imap_cmd_literal(struct imap *im, int what, const struct imap_literal *lit)
{
    if (what == IMAP_PARSE_LITERAL_BEGIN) {
        const struct imap_response *p = lit->partial;
        uint32_t seq;
        im->body_active = true;
        im->body_cmd = NULL;
        im->body_sink = NULL;
        im->body_bytes = 0;
        im->body_have = false;
        if (p == NULL || p->kind != IMAP_RESP_UNTAGGED || p->nargs < 2 ||
            !arg_u32(&p->args[0], &seq) || !imap_arg_is_atom(&p->args[1], "FETCH") ||
            lit->preceding == NULL ||
            !(imap_arg_is_atom(lit->preceding, "BODY[]") ||
              imap_arg_is_atom(lit->preceding, "RFC822"))) {
            return;
        }
        uint32_t uid = partial_uid(p);
        struct imap_cmd *c = route_fetch(im, uid);
        if (c == NULL) {
            for (struct imap_cmd *x = im->inflight; x != NULL; x = x->next) {
                if (x->kind == IMAP_CMD_FETCH && (x->items & IMAP_FETCH_BODY)) {
                    c = x;
                    break;
                }
            }
        }
        if (c == NULL) {
            return;
        }
        im->body_cmd = c;
        im->body_seq = seq;
        if (c->fcb.body_begin != NULL) {
            im->body_sink = c->fcb.body_begin(im, seq, uid, lit->size, c->arg);
        }
        return;
    }
    if (what == IMAP_PARSE_LITERAL_DATA) {
        struct imap_cmd *c = im->body_cmd;
        if (c == NULL) {
            return;
        }
        im->body_bytes += lit->len;
        if (c->fcb.body_data == NULL || lit->len == 0) {
            return;
        }
        int r = c->fcb.body_data(im, im->body_sink, lit->data, lit->len, c->arg);
        if (r == IMAP_SINK_PAUSE) {
            imap_pause_input(im);
        } else if (r < 0) {
            imap_fail(im, r, "%s: storing a message body failed: %s", im->hostport, strerror(-r));
        }
        return;
    }
    /* LITERAL_END */
    im->body_active = false;
    if (im->body_cmd != NULL) {
        im->body_have = true;
        if (im->body_cmd->fcb.body_end != NULL) {
            im->body_cmd->fcb.body_end(im, im->body_sink, true, im->body_cmd->arg);
        }
    }
}

/* ---- Completion ---- */

static void result_from_resp(struct imap_result *res, const struct imap_response *r)
{
    memset(res, 0, sizeof(*res));
    res->status = r->status;
    res->code = r->code;
    res->code_args = r->code_args;
    res->ncode_args = r->ncode_args;
    res->text = r->text;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void deliver_folders(struct imap *im, struct imap_cmd *c)
{
    for (size_t i = 0; i < c->nfolders && !imap_dead(im); i++) {
        struct imap_folder_item *f = &c->folders[i];
        f->f.name = f->name;
        f->f.raw_name = f->raw;
        f->f.unsyncable = f->name == NULL ? f->why : NULL;
        f->f.status.folder = f->status_folder;
        if (c->on_folder != NULL) {
            c->on_folder(im, &f->f, c->arg);
        }
    }
}

/* Puts a multi-step command back at the head of the owner queue for its
 * next step. */
static void requeue(struct imap *im, struct imap_cmd *c)
{
    c->built = false;
    c->tag[0] = '\0';
    q_push_front(&im->uq, &im->uq_tail, c);
}

static void complete_user(struct imap *im, struct imap_cmd *c, const struct imap_response *r)
{
    bool ok = r->status == IMAP_STATUS_OK;
    struct imap_result res;
    result_from_resp(&res, r);
    struct imap_uid_range *mod = NULL;

    switch (c->kind) {
    case IMAP_CMD_LIST:
        if (ok && c->stage == 0 && !(im->caps & IMAP_CAP_LIST_EXTENDED)) {
            c->stage = 1;
            requeue(im, c);
            return;
        }
        if (ok) {
            deliver_folders(im, c);
        }
        break;
    case IMAP_CMD_SELECT:
        if (ok) {
            c->mb.readonly = c->sel.readonly || (r->code && strcmp(r->code, "READ-ONLY") == 0);
            if (!im->condstore || c->mb.nomodseq) {
                c->mb.highestmodseq = c->mb.nomodseq ? 0 : c->mb.highestmodseq;
            }
            c->mb.closed_unsure = c->await_closed && c->dropped > 0;
            im->sel = c->mb;
            im->selected = true;
            res.mailbox = &im->sel;
        } else {
            im->selected = false;
        }
        break;
    case IMAP_CMD_STORE:
        if (r->code != NULL && strcmp(r->code, "MODIFIED") == 0 && r->ncode_args == 1) {
            const char *s = imap_arg_str(&r->code_args[0]);
            if (s != NULL && imap_uidset_parse(s, &mod, &res.nmodified) == 0) {
                res.modified = mod;
            }
        }
        break;
    case IMAP_CMD_APPEND:
        if (ok && r->code != NULL && strcmp(r->code, "APPENDUID") == 0 && r->ncode_args == 2) {
            arg_u32(&r->code_args[0], &res.append_uidvalidity);
            arg_u32(&r->code_args[1], &res.append_uid);
        }
        break;
    case IMAP_CMD_MOVE:
    case IMAP_CMD_COPY:
        if (r->code != NULL && strcmp(r->code, "COPYUID") == 0) {
            add_copyuid(c, r);
        }
        if (ok && c->kind == IMAP_CMD_MOVE && !(im->caps & IMAP_CAP_MOVE) && c->stage < 2) {
            c->stage++;
            if (c->stage == 2 && !(im->caps & IMAP_CAP_UIDPLUS)) {
                c->move_not_expunged = true;
            } else {
                requeue(im, c);
                return;
            }
        }
        if (c->copy_src.len > 0) {
            res.copy_uidvalidity = c->copy_uidvalidity;
            res.copy_src = c->copy_src.buf;
            res.copy_dst = c->copy_dst.buf;
        }
        res.move_not_expunged = c->move_not_expunged;
        break;
    case IMAP_CMD_SEARCH:
        if (c->nuids > 1) {
            qsort(c->uids, c->nuids, sizeof(*c->uids), cmp_u32);
        }
        res.uids = c->uids;
        res.nuids = c->nuids;
        break;
    case IMAP_CMD_IDLE:
        im->idling = false;
        im->idle_stop_requested = false;
        if (im->state == IMAP_STATE_IDLE) {
            imap_set_state(im, IMAP_STATE_READY);
        }
        break;
    case IMAP_CMD_LOGOUT:
        imap_set_state(im, IMAP_STATE_CLOSED);
        break;
    default:
        break;
    }
    if (!imap_dead(im) && c->done != NULL) {
        c->done(im, &res, c->arg);
    }
    free(mod);
    cmd_free(c);
}

void imap_cmd_tagged(struct imap *im, const struct imap_response *r)
{
    struct imap_cmd *c = NULL;
    for (struct imap_cmd *x = im->inflight; x != NULL; x = x->next) {
        if (strcmp(x->tag, r->tag) == 0) {
            c = x;
            break;
        }
    }
    if (c == NULL) {
        imap_fail(im, IMAP_EPROTO, "%s: tagged response for unknown command '%s'", im->hostport,
                  r->tag);
        return;
    }
    if (im->wcmd == c) {
        if (!im->wait_cont) {
            imap_fail(im, IMAP_EPROTO, "%s: server answered %s before it was sent completely",
                      im->hostport, imap_cmd_kind_name(c->kind));
            return;
        }
        /* The server refused a synchronizing literal (e.g. APPEND to a
         * missing folder): the rest of the command is never sent. */
        im->wcmd = NULL;
        im->wait_cont = false;
    }
    q_remove(&im->inflight, &im->inflight_tail, c);
    im->ninflight--;
    if (im->body_have && im->body_cmd == c) {
        im->body_have = false;
        im->body_cmd = NULL;
    }
    if (r->status == IMAP_STATUS_BAD || r->status == IMAP_STATUS_NO) {
        log_debug("imap %s: %s %s: %s", im->name, c->tag, imap_cmd_kind_name(c->kind), r->text);
    }
    if (c->internal) {
        imap_internal_done(im, c, r);
        cmd_free(c);
    } else {
        complete_user(im, c, r);
    }
    if (!imap_dead(im)) {
        imap_pump(im);
    }
}

static void call_done_err(struct imap *im, struct imap_cmd *c, int err, const char *msg)
{
    if (c->internal || c->done == NULL || im->freeing) {
        return;
    }
    struct imap_result res = {.err = err, .status = IMAP_STATUS_NONE, .text = msg};
    if (err == 0) {
        res.status = IMAP_STATUS_OK;
    }
    c->done(im, &res, c->arg);
}

void imap_cmd_abort_all(struct imap *im, int err, const char *msg)
{
    if (im->body_active && im->body_cmd != NULL && im->body_cmd->fcb.body_end != NULL &&
        !im->freeing) {
        im->body_cmd->fcb.body_end(im, im->body_sink, false, im->body_cmd->arg);
    }
    im->body_active = false;
    im->body_cmd = NULL;
    im->wcmd = NULL;
    struct imap_cmd **lists[][2] = {
        {&im->inflight, &im->inflight_tail},
        {&im->local_done, &im->local_done_tail},
        {&im->iq, &im->iq_tail},
        {&im->uq, &im->uq_tail},
    };
    for (size_t i = 0; i < ARRAY_SIZE(lists); i++) {
        struct imap_cmd *c;
        while ((c = q_pop(lists[i][0], lists[i][1])) != NULL) {
            if (c->local_msg != NULL && c->local_err != 0) {
                call_done_err(im, c, c->local_err, c->local_msg);
            } else {
                call_done_err(im, c, err, msg);
            }
            cmd_free(c);
        }
    }
    im->ninflight = 0;
}

void imap_cmd_free_all(struct imap *im)
{
    struct imap_cmd **lists[][2] = {
        {&im->inflight, &im->inflight_tail},
        {&im->local_done, &im->local_done_tail},
        {&im->iq, &im->iq_tail},
        {&im->uq, &im->uq_tail},
    };
    for (size_t i = 0; i < ARRAY_SIZE(lists); i++) {
        struct imap_cmd *c;
        while ((c = q_pop(lists[i][0], lists[i][1])) != NULL) {
            cmd_free(c);
        }
    }
    im->ninflight = 0;
    im->wcmd = NULL;
}

void imap_cmd_run_local(struct imap *im)
{
    struct imap_cmd *c;
    while (!imap_dead(im) && (c = q_pop(&im->local_done, &im->local_done_tail)) != NULL) {
        call_done_err(im, c, c->local_err, c->local_msg);
        cmd_free(c);
    }
}

void imap_cmd_logout_closed(struct imap *im)
{
    struct imap_cmd *c = imap_cmd_inflight_kind(im, IMAP_CMD_LOGOUT);
    if (c == NULL) {
        return;
    }
    q_remove(&im->inflight, &im->inflight_tail, c);
    im->ninflight--;
    call_done_err(im, c, 0, "connection closed after LOGOUT");
    cmd_free(c);
}

/* ---- API ---- */

static bool usable(const struct imap *im)
{
    return !imap_dead(im) && im->state != IMAP_STATE_CLOSED && im->state != IMAP_STATE_LOGOUT;
}

static void enqueue(struct imap *im, struct imap_cmd *c)
{
    q_push(&im->uq, &im->uq_tail, c);
    if (c->kind != IMAP_CMD_IDLE && imap_cmd_inflight_kind(im, IMAP_CMD_IDLE) != NULL) {
        imap_idle_stop(im);
    }
    imap_pump(im);
}

static bool valid_uidset(const char *s)
{
    if (s == NULL || *s == '\0') {
        return false;
    }
    return strspn(s, "0123456789:,*") == strlen(s);
}

static bool valid_text(const char *s)
{
    return s != NULL && *s != '\0' && strpbrk(s, "\r\n") == NULL;
}

static int copy_keywords(struct imap_cmd *c, const char *const *kw, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (kw[i] == NULL || !imap_is_atom(kw[i], strlen(kw[i])) || kw[i][0] == '\\') {
            return -EINVAL;
        }
    }
    c->keywords = xcalloc(n + 1, sizeof(*c->keywords));
    for (size_t i = 0; i < n; i++) {
        c->keywords[i] = xstrdup(kw[i]);
    }
    c->nkeywords = n;
    return 0;
}

int imap_notify(struct imap *im, const char *spec, imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    /* The spec is ours (a constant of the caller), never a server's
     * string: it must hold no line break. */
    if (spec == NULL || strpbrk(spec, "\r\n") != NULL) {
        return -EINVAL;
    }
    struct imap_cmd *c = cmd_new(IMAP_CMD_NOTIFY, done, arg);
    c->folder = xstrdup(spec);
    enqueue(im, c);
    return 0;
}

int imap_noop(struct imap *im, imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    enqueue(im, cmd_new(IMAP_CMD_NOOP, done, arg));
    return 0;
}

int imap_list(struct imap *im, void (*on_folder)(struct imap *, const struct imap_folder *, void *),
              imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    struct imap_cmd *c = cmd_new(IMAP_CMD_LIST, done, arg);
    c->on_folder = on_folder;
    enqueue(im, c);
    return 0;
}

int imap_status(struct imap *im, const char *folder, unsigned items,
                void (*on_status)(struct imap *, const struct imap_status_info *, void *),
                imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    if (folder == NULL) {
        return -EINVAL;
    }
    struct imap_cmd *c = cmd_new(IMAP_CMD_STATUS, done, arg);
    c->folder = xstrdup(folder);
    c->items = items;
    c->on_status = on_status;
    enqueue(im, c);
    return 0;
}

int imap_select(struct imap *im, const char *folder, const struct imap_select_opts *opts,
                imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    if (folder == NULL || (opts != NULL && opts->qresync_known_uids != NULL &&
                           !valid_uidset(opts->qresync_known_uids))) {
        return -EINVAL;
    }
    struct imap_cmd *c = cmd_new(IMAP_CMD_SELECT, done, arg);
    c->folder = xstrdup(folder);
    if (opts != NULL) {
        c->sel = *opts;
        if (opts->qresync_known_uids != NULL) {
            c->qresync_known = xstrdup(opts->qresync_known_uids);
        }
    }
    c->sel.qresync_known_uids = NULL;
    enqueue(im, c);
    return 0;
}

int imap_uid_fetch(struct imap *im, const char *uidset, unsigned items, uint64_t changedsince,
                   bool vanished, const struct imap_fetch_cb *cb, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    if (!valid_uidset(uidset) || cb == NULL) {
        return -EINVAL;
    }
    struct imap_cmd *c = cmd_new(IMAP_CMD_FETCH, cb->done, arg);
    if (imap_uidset_parse(uidset, &c->ranges, &c->nranges) < 0) {
        cmd_free(c);
        return -EINVAL;
    }
    c->uidset = xstrdup(uidset);
    c->items = items;
    c->modseq = changedsince;
    c->vanished = vanished;
    c->fcb = *cb;
    enqueue(im, c);
    return 0;
}

int imap_uid_search(struct imap *im, const char *criteria, imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    if (!valid_text(criteria)) {
        return -EINVAL;
    }
    struct imap_cmd *c = cmd_new(IMAP_CMD_SEARCH, done, arg);
    c->criteria = xstrdup(criteria);
    enqueue(im, c);
    return 0;
}

int imap_uid_store(struct imap *im, const char *uidset, char op, unsigned flags,
                   const char *const *keywords, size_t nkeywords, uint64_t unchangedsince,
                   imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    if (!valid_uidset(uidset) || (op != '+' && op != '-')) {
        return -EINVAL;
    }
    struct imap_cmd *c = cmd_new(IMAP_CMD_STORE, done, arg);
    if (copy_keywords(c, keywords, nkeywords) < 0) {
        cmd_free(c);
        return -EINVAL;
    }
    c->uidset = xstrdup(uidset);
    c->op = op;
    c->flags = flags & ~(unsigned)IMAP_FLAG_RECENT;
    c->modseq = unchangedsince;
    enqueue(im, c);
    return 0;
}

int imap_append(struct imap *im, const struct imap_append *a, imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    if (a->folder == NULL || (a->fd < 0 && a->read == NULL)) {
        return -EINVAL;
    }
    struct imap_cmd *c = cmd_new(IMAP_CMD_APPEND, done, arg);
    if (copy_keywords(c, a->keywords, a->nkeywords) < 0) {
        cmd_free(c);
        return -EINVAL;
    }
    c->app = *a;
    c->app.folder = xstrdup(a->folder);
    c->app.keywords = NULL;
    c->folder = xstrdup(a->folder);
    c->flags = a->flags;
    enqueue(im, c);
    return 0;
}

static int simple_set_cmd(struct imap *im, enum imap_cmd_kind kind, const char *uidset,
                          const char *folder, imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    if (!valid_uidset(uidset) || ((kind == IMAP_CMD_MOVE || kind == IMAP_CMD_COPY) && !folder)) {
        return -EINVAL;
    }
    if (kind == IMAP_CMD_EXPUNGE && im->caps_known && im->state == IMAP_STATE_READY &&
        !(im->caps & IMAP_CAP_UIDPLUS)) {
        return IMAP_ENOTSUP;
    }
    struct imap_cmd *c = cmd_new(kind, done, arg);
    c->uidset = xstrdup(uidset);
    c->folder = folder ? xstrdup(folder) : NULL;
    enqueue(im, c);
    return 0;
}

int imap_uid_expunge(struct imap *im, const char *uidset, imap_done_cb done, void *arg)
{
    return simple_set_cmd(im, IMAP_CMD_EXPUNGE, uidset, NULL, done, arg);
}

int imap_uid_move(struct imap *im, const char *uidset, const char *folder, imap_done_cb done,
                  void *arg)
{
    return simple_set_cmd(im, IMAP_CMD_MOVE, uidset, folder, done, arg);
}

int imap_uid_copy(struct imap *im, const char *uidset, const char *folder, imap_done_cb done,
                  void *arg)
{
    return simple_set_cmd(im, IMAP_CMD_COPY, uidset, folder, done, arg);
}

static int folder_cmd(struct imap *im, enum imap_cmd_kind kind, const char *folder,
                      imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    if (folder == NULL) {
        return -EINVAL;
    }
    struct imap_cmd *c = cmd_new(kind, done, arg);
    c->folder = xstrdup(folder);
    enqueue(im, c);
    return 0;
}

int imap_create(struct imap *im, const char *folder, imap_done_cb done, void *arg)
{
    return folder_cmd(im, IMAP_CMD_CREATE, folder, done, arg);
}

int imap_delete(struct imap *im, const char *folder, imap_done_cb done, void *arg)
{
    return folder_cmd(im, IMAP_CMD_DELETE, folder, done, arg);
}

int imap_rename(struct imap *im, const char *from, const char *to, imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    if (from == NULL || to == NULL) {
        return -EINVAL;
    }
    struct imap_cmd *c = cmd_new(IMAP_CMD_RENAME, done, arg);
    c->folder = xstrdup(from);
    c->criteria = xstrdup(to);
    enqueue(im, c);
    return 0;
}

int imap_idle_start(struct imap *im, imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    if (im->caps_known && im->state == IMAP_STATE_READY && !(im->caps & IMAP_CAP_IDLE)) {
        return IMAP_ENOTSUP;
    }
    im->idle_stop_requested = false;
    struct imap_cmd *c = cmd_new(IMAP_CMD_IDLE, done, arg);
    q_push(&im->uq, &im->uq_tail, c);
    imap_pump(im);
    return 0;
}

void imap_idle_stop(struct imap *im)
{
    if (imap_dead(im)) {
        return;
    }
    struct imap_cmd *c = imap_cmd_inflight_kind(im, IMAP_CMD_IDLE);
    if (c != NULL) {
        bool send = im->idling && !im->idle_stop_requested;
        im->idle_stop_requested = true;
        if (send) {
            imap_send_raw(im, "DONE\r\n", "DONE"); /* arms the quick deadline */
        }
        return;
    }
    /* Not sent yet: it simply never starts. */
    for (c = im->uq; c != NULL; c = c->next) {
        if (c->kind == IMAP_CMD_IDLE) {
            q_remove(&im->uq, &im->uq_tail, c);
            cmd_local_done(im, c, 0, "IDLE stopped before it started");
            return;
        }
    }
}

int imap_logout(struct imap *im, imap_done_cb done, void *arg)
{
    if (!usable(im)) {
        return -ENOTCONN;
    }
    enqueue(im, cmd_new(IMAP_CMD_LOGOUT, done, arg));
    return 0;
}
