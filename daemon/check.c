/* `mailsync check --connect`: see daemon/check.h.
 *
 * Each account is checked in two steps. The session step connects and logs
 * in through the same IMAP or POP3 client that sync uses, and records what
 * happened: what the server offered, or the error code and message it
 * failed with (and any [ALERT] the server sent). The diagnosis step turns a
 * failure into a problem: its kind, the cause in words, and the fixes, from
 * the error code, the server's response code and text, the account's
 * settings and its provider's hints. Where the message alone cannot tell
 * (a silent server: down, or TLS on the port?; an untrusted certificate:
 * which one?), the diagnosis probes the port once more without sending any
 * credential. Nothing here ever prints the password. */
#include "daemon/check.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/providers.h"
#include "daemon/syncopts.h"
#include "store/maildir.h"
#include "sync/imap.h"
#include "sync/pop3.h"
#include "sync/secret.h"

/* ---- Output ---- */

/* Everything printed here may carry server text (capabilities, folder
 * names, error messages): each line is made terminal-safe on the way out. */
static void outf(FILE *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void outf(FILE *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = xvasprintf(fmt, ap);
    va_end(ap);
    for (char *line = text; *line != '\0';) {
        size_t n = strcspn(line, "\n");
        bool nl = line[n] == '\n';
        fwrite(line, 1, term_safe(line, n), out);
        if (nl) {
            fputc('\n', out);
            n++;
        }
        line += n;
    }
    free(text);
}

/* Pads s to width terminal columns, counting code points instead of bytes
 * so that non-ASCII folder names line up. */
static void out_padded(FILE *out, const char *s, size_t width)
{
    char *safe = xstrdup(s);
    safe[term_safe(safe, strlen(safe))] = '\0';
    fputs(safe, out);
    size_t cols = 0;
    for (const unsigned char *p = (const unsigned char *)safe; *p != '\0'; p++) {
        cols += (*p & 0xc0) != 0x80;
    }
    free(safe);
    for (; cols < width; cols++) {
        fputc(' ', out);
    }
}

/* ---- Findings ---- */

/* One problem found: what kind (a stable name for scripts), the message the
 * client gave, the cause in words, and what to do, in order. */
struct problem {
    const char *kind;
    bool error; /* false: a warning, the account still works */
    char *message;
    char *cause;
    char **fixes;
    size_t nfixes;
};

struct check {
    uv_loop_t *loop;
    FILE *out;
    bool json;
    const struct cfg_account *acct;
    const struct provider *prov; /* NULL without a provider */
    struct sync_account *sa;     /* the sync layer's copy of acct */
    struct secret_req *sreq;
    struct imap *im;
    struct pop3 *pop;
    bool done;
    /* What the session learnt. */
    bool connected;
    bool logged_in;
    char *peer;
    char *tls_version;
    char *fingerprint;
    char *caps;
    unsigned folders;
    unsigned selected;
    bool listed;
    long messages; /* POP3; -1 unknown */
    char *alert;   /* the last [ALERT] text */
    /* How it failed: err < 0 with errmsg, or a failed password_command. */
    int err;
    char *errmsg;
    bool secret_failed;
    enum pop3_errkind popkind;
    struct problem *problems;
    size_t nproblems;
    size_t cap;
};

static struct problem *add_problem(struct check *ck, const char *kind, bool error,
                                   const char *message, const char *cause_fmt, ...)
    __attribute__((format(printf, 5, 6)));

static struct problem *add_problem(struct check *ck, const char *kind, bool error,
                                   const char *message, const char *cause_fmt, ...)
{
    xgrow(&ck->problems, &ck->cap, ck->nproblems + 1, sizeof(*ck->problems));
    struct problem *pb = &ck->problems[ck->nproblems++];
    *pb = (struct problem){.kind = kind, .error = error};
    pb->message = xstrdup(message != NULL ? message : "");
    va_list ap;
    va_start(ap, cause_fmt);
    pb->cause = xvasprintf(cause_fmt, ap);
    va_end(ap);
    return pb;
}

static void add_fix(struct problem *pb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add_fix(struct problem *pb, const char *fmt, ...)
{
    pb->fixes = xrealloc(pb->fixes, (pb->nfixes + 1) * sizeof(*pb->fixes));
    va_list ap;
    va_start(ap, fmt);
    pb->fixes[pb->nfixes++] = xvasprintf(fmt, ap);
    va_end(ap);
}

/* A provider hint with its template fields filled in, as a fix. */
static void add_hint(struct check *ck, struct problem *pb, const char *hint)
{
    if (ck->prov == NULL || hint == NULL) {
        return;
    }
    char *text =
        provider_expand(ck->prov, ck->acct->protocol, hint, ck->acct->user, ck->acct->host);
    add_fix(pb, "%s", text);
    free(text);
}

static void check_free(struct check *ck)
{
    for (size_t i = 0; i < ck->nproblems; i++) {
        struct problem *pb = &ck->problems[i];
        free(pb->message);
        free(pb->cause);
        for (size_t j = 0; j < pb->nfixes; j++) {
            free(pb->fixes[j]);
        }
        free(pb->fixes);
    }
    free(ck->problems);
    sync_account_free(ck->sa);
    free(ck->peer);
    free(ck->tls_version);
    free(ck->fingerprint);
    free(ck->caps);
    free(ck->alert);
    free(ck->errmsg);
}

static bool check_ok(const struct check *ck)
{
    if (!ck->connected || !ck->logged_in || ck->err < 0 || ck->secret_failed) {
        return false;
    }
    for (size_t i = 0; i < ck->nproblems; i++) {
        if (ck->problems[i].error) {
            return false;
        }
    }
    return true;
}

/* ---- The session ---- */

static void session_end(struct check *ck)
{
    ck->done = true;
    if (ck->im != NULL) {
        imap_free(ck->im);
        ck->im = NULL;
    }
    if (ck->pop != NULL) {
        pop3_free(ck->pop);
        ck->pop = NULL;
    }
}

/* Records a fatal error; the diagnosis turns it into a problem. */
static void session_failed(struct check *ck, int err, const char *msg)
{
    if (ck->err == 0) {
        ck->err = err < 0 ? err : -1;
        ck->errmsg = xstrdup(msg);
    }
    session_end(ck);
}

/* How the connection is protected; shared by IMAP and POP3. */
static void note_connection(struct check *ck, struct net_conn *c)
{
    ck->connected = true;
    ck->logged_in = true;
    ck->peer = xstrdup(net_peer_address(c));
    if (net_tls_version(c) != NULL) {
        ck->tls_version = xasprintf("%s (%s)", net_tls_version(c), net_tls_cipher(c));
        ck->fingerprint = xstrdup(net_tls_fingerprint(c));
    }
    if (ck->json) {
        return;
    }
    outf(ck->out, "  connected to %s", ck->peer);
    if (ck->tls_version != NULL) {
        outf(ck->out, " with %s, certificate verified\n", ck->tls_version);
        outf(ck->out, "  certificate fingerprint: %s\n", ck->fingerprint);
    } else {
        outf(ck->out, " WITHOUT TLS (allow_plaintext is set)\n");
    }
    outf(ck->out, "  logged in as %s\n", ck->acct->user);
}

static void on_pop_quit(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    session_end(arg);
}

static void quit_pop(struct check *ck)
{
    if (pop3_quit(ck->pop, on_pop_quit, ck) != 0) {
        session_end(ck);
    }
}

static void on_pop_uidl_line(struct pop3 *p, const char *data, size_t len, void *arg)
{
}

/* A POP3 server without UIDL still works (messages are told apart by a
 * hash of their headers), but worse: say so, as a warning. */
static void on_pop_uidl(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    struct check *ck = arg;
    if (st->err < 0) {
        session_failed(ck, st->err, st->text);
        return;
    }
    if (!st->ok) {
        struct problem *pb =
            add_problem(ck, "no_uidl", false, st->text,
                        "the server refused UIDL (%s), so messages have no identity that lasts "
                        "from one session to the next",
                        st->text);
        add_fix(pb, "nothing to change for mailsync: it recognises messages by a hash of their "
                    "headers instead, but a message whose headers repeat may be taken for one "
                    "already downloaded; where the provider offers it, turn UIDL on or use IMAP "
                    "(protocol: imap)");
        if (!ck->json) {
            outf(ck->out, "  warning: the server does not support UIDL: %s\n", st->text);
        }
    }
    quit_pop(ck);
}

static void on_pop_stat(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    struct check *ck = arg;
    unsigned count;
    uint64_t size;
    if (st->err < 0 || !st->ok || !pop3_parse_stat(st->text, &count, &size)) {
        session_failed(ck, st->err < 0 ? st->err : -EPROTO, st->err < 0 ? st->text : "STAT failed");
        return;
    }
    ck->messages = count;
    if (!ck->json) {
        outf(ck->out, "  mailbox: %u messages, %.1f MB\n", count, (double)size / 1e6);
    }
    if (pop3_uidl(p, on_pop_uidl_line, on_pop_uidl, ck) != 0) {
        quit_pop(ck);
    }
}

static void on_pop_ready(struct pop3 *p, void *arg)
{
    struct check *ck = arg;
    note_connection(ck, pop3_conn(p));
    static const struct {
        unsigned bit;
        const char *name;
    } caps[] = {
        {POP3_CAP_TOP, "TOP"},
        {POP3_CAP_UIDL, "UIDL"},
        {POP3_CAP_USER, "USER"},
        {POP3_CAP_STLS, "STLS"},
        {POP3_CAP_PIPELINING, "PIPELINING"},
        {POP3_CAP_RESP_CODES, "RESP-CODES"},
        {POP3_CAP_AUTH_RESP_CODE, "AUTH-RESP-CODE"},
        {POP3_CAP_SASL_PLAIN, "SASL PLAIN"},
        {POP3_CAP_SASL_XOAUTH2, "SASL XOAUTH2"},
        {POP3_CAP_SASL_OAUTHBEARER, "SASL OAUTHBEARER"},
    };
    struct sbuf sb = {0};
    sbuf_adds(&sb, "");
    for (size_t i = 0; i < ARRAY_SIZE(caps); i++) {
        if (pop3_caps(p) & caps[i].bit) {
            sbuf_addf(&sb, "%s%s", sb.len > 0 ? " " : "", caps[i].name);
        }
    }
    ck->caps = sbuf_detach(&sb);
    if (!ck->json) {
        outf(ck->out, "  capabilities: %s%s\n", ck->caps,
             pop3_capa_known(p) ? "" : " (the server refused CAPA)");
    }
    if (pop3_stat(p, on_pop_stat, ck) != 0) {
        session_failed(ck, -EPROTO, "STAT could not be sent");
    }
}

static void on_pop_error(struct pop3 *p, int err, enum pop3_errkind kind, const char *msg,
                         void *arg)
{
    struct check *ck = arg;
    ck->popkind = kind;
    session_failed(ck, err, msg);
}

static void on_logout(struct imap *im, const struct imap_result *res, void *arg)
{
    session_end(arg);
}

static void print_attrs(FILE *out, unsigned attrs)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {
        {IMAP_LIST_NOSELECT, "\\Noselect"},
        {IMAP_LIST_NONEXISTENT, "\\NonExistent"},
        {IMAP_LIST_SUBSCRIBED, "\\Subscribed"},
        {IMAP_LIST_ALL, "\\All"},
        {IMAP_LIST_ARCHIVE, "\\Archive"},
        {IMAP_LIST_DRAFTS, "\\Drafts"},
        {IMAP_LIST_FLAGGED, "\\Flagged"},
        {IMAP_LIST_JUNK, "\\Junk"},
        {IMAP_LIST_SENT, "\\Sent"},
        {IMAP_LIST_TRASH, "\\Trash"},
        {IMAP_LIST_IMPORTANT, "\\Important"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (attrs & names[i].bit) {
            outf(out, " %s", names[i].name);
        }
    }
}

static void on_folder(struct imap *im, const struct imap_folder *f, void *arg)
{
    struct check *ck = arg;
    ck->folders++;
    if (f->name == NULL) {
        if (!ck->json) {
            outf(ck->out, "    ");
            out_padded(ck->out, f->raw_name, 30);
            outf(ck->out, "  cannot be synced: %s\n",
                 f->unsyncable != NULL ? f->unsyncable : "unusable name");
        }
        return;
    }
    bool sel = cfg_folder_selected(ck->acct, f->name) && !(f->attrs & IMAP_LIST_NOSELECT) &&
               !(f->attrs & IMAP_LIST_NONEXISTENT);
    if (sel) {
        ck->selected++;
    }
    if (ck->json) {
        return;
    }
    outf(ck->out, "    %c ", sel ? '*' : ' ');
    out_padded(ck->out, f->name, 28);
    if (f->has_status && (f->status.have & IMAP_STATUS_MESSAGES)) {
        outf(ck->out, " %6u messages", f->status.messages);
    }
    print_attrs(ck->out, f->attrs);
    if (sel) {
        char *path = NULL;
        int r = md_folder_local_path(ck->sa->maildir, ck->sa->layout, f->name, &path);
        if (r == 0) {
            outf(ck->out, " -> %s", path);
            free(path);
        } else {
            outf(ck->out, " -> (no safe local name: %s)", strerror(-r));
        }
    }
    fputc('\n', ck->out);
}

static void on_list(struct imap *im, const struct imap_result *res, void *arg)
{
    struct check *ck = arg;
    if (res->err < 0 || res->status != IMAP_STATUS_OK) {
        char *msg = xasprintf("LIST failed: %s", res->text);
        session_failed(ck, res->err < 0 ? res->err : IMAP_ECMD, msg);
        free(msg);
        return;
    }
    ck->listed = true;
    if (!ck->json) {
        outf(ck->out, "  %u folders, %u selected for sync (marked *)\n", ck->folders, ck->selected);
    }
    if (imap_logout(im, on_logout, ck) != 0) {
        session_end(ck);
    }
}

static void on_ready(struct imap *im, void *arg)
{
    struct check *ck = arg;
    struct net_conn *c = imap_net(im);
    note_connection(ck, c);
    ck->caps = xstrdup(imap_capability_string(im));
    if (!ck->json) {
        outf(ck->out, "  capabilities: %s\n", ck->caps);
        outf(ck->out, "  in use: CONDSTORE %s, QRESYNC %s, COMPRESS %s\n",
             imap_condstore_enabled(im) ? "yes" : "no", imap_qresync_enabled(im) ? "yes" : "no",
             net_compressed(c) ? "yes" : "no");
    }
    if (!(imap_caps(im) & (IMAP_CAP_IMAP4REV1 | IMAP_CAP_IMAP4REV2))) {
        /* Everything sync does (UID commands, BODY.PEEK, flags as IMAP4rev1
         * defines them) needs it; a server that does not say so is an older
         * protocol or something else on an IMAP port. */
        struct problem *pb = add_problem(
            ck, "not_imap4rev1", true, "the server does not announce IMAP4rev1",
            "%s logged in, but its capabilities (%s) do not include IMAP4rev1 (RFC 3501) or "
            "IMAP4rev2, which mailsync needs",
            ck->acct->host, ck->caps);
        add_fix(pb, "check that host and port point at the provider's IMAP server");
        add_fix(pb, "if the server only speaks an older IMAP, use protocol: pop3 where it "
                    "offers POP3");
    }
    if (!ck->json) {
        outf(ck->out, "  folders:\n");
    }
    if (imap_list(im, on_folder, on_list, ck) != 0) {
        session_failed(ck, IMAP_ECMD, "LIST could not be sent");
    }
}

static void on_error(struct imap *im, int err, const char *msg, void *arg)
{
    session_failed(arg, err, msg);
}

/* [ALERT]s must reach the user (RFC 3501 section 7.1); a refused login's
 * alert often names the fix ("Application-specific password required"). */
static void on_event(struct imap *im, const struct imap_event *ev, void *arg)
{
    struct check *ck = arg;
    if (ev->type != IMAP_EV_ALERT || ev->text == NULL) {
        return;
    }
    free(ck->alert);
    ck->alert = xstrdup(ev->text);
    if (!ck->json) {
        outf(ck->out, "  server alert: %s\n", ev->text);
    }
}

static void on_secret(int err, const char *secret, const char *msg, void *arg)
{
    struct check *ck = arg;
    ck->sreq = NULL;
    if (err < 0) {
        ck->secret_failed = true;
        session_failed(ck, err, msg);
        return;
    }
    int r;
    if (ck->acct->protocol == CFG_PROTO_POP3) {
        struct pop3_opts opts;
        sync_pop3_opts(ck->sa, secret, &opts);
        static const struct pop3_cb cb = {.on_ready = on_pop_ready, .on_error = on_pop_error};
        r = pop3_connect(ck->loop, &opts, &cb, ck, &ck->pop);
    } else {
        struct imap_opts opts;
        sync_imap_opts(ck->sa, secret, &opts);
        static const struct imap_cb cb = {
            .on_ready = on_ready, .on_error = on_error, .on_event = on_event};
        r = imap_connect(ck->loop, &opts, &cb, ck, &ck->im);
    }
    if (r < 0) {
        char *m = xasprintf("cannot start the connection: %s", strerror(-r));
        session_failed(ck, r, m);
        free(m);
    }
}

/* ---- Probing a port without logging in ---- */

/* Connects to the account's host and port with TLS (implicit, or after
 * STARTTLS / STLS) without verifying the certificate, only to learn whether
 * the port speaks TLS and which certificate it shows. No credential is
 * sent. */
struct probe {
    struct net_conn *c;
    bool pop3;
    bool starttls;
    int stage; /* 0: greeting, 1: STARTTLS answer, 2: handshake */
    struct sbuf in;
    bool done;
    char *fingerprint;
};

static void probe_end(struct probe *pr, const char *fingerprint)
{
    if (!pr->done && fingerprint != NULL) {
        pr->fingerprint = xstrdup(fingerprint);
    }
    pr->done = true;
}

static void probe_on_connect(struct net_conn *c, void *arg)
{
    struct probe *pr = arg;
    if (!pr->starttls) {
        probe_end(pr, net_tls_fingerprint(c));
        return;
    }
    net_expect(c, true);
}

static void probe_on_tls(struct net_conn *c, void *arg)
{
    probe_end(arg, net_tls_fingerprint(c));
}

static void probe_on_data(struct net_conn *c, const char *data, size_t len, void *arg)
{
    struct probe *pr = arg;
    sbuf_add(&pr->in, data, len);
    char *nl;
    while (!pr->done && pr->stage < 2 && pr->in.buf != NULL &&
           (nl = memchr(pr->in.buf, '\n', pr->in.len)) != NULL) {
        size_t n = (size_t)(nl - pr->in.buf) + 1;
        char *line = xstrndup(pr->in.buf, n);
        memmove(pr->in.buf, pr->in.buf + n, pr->in.len - n);
        pr->in.len -= n;
        const char *ok = pr->pop3 ? "+OK" : (pr->stage == 0 ? "* OK" : "P OK");
        if (!pr->pop3 && pr->stage == 1 && strncmp(line, "* ", 2) == 0) {
            free(line);
            continue;
        }
        bool good = strncmp(line, ok, strlen(ok)) == 0;
        free(line);
        if (!good) {
            probe_end(pr, NULL);
        } else if (pr->stage == 0) {
            const char *cmd = pr->pop3 ? "STLS\r\n" : "P STARTTLS\r\n";
            net_write(c, cmd, strlen(cmd));
            pr->stage = 1;
        } else {
            pr->stage = 2;
            net_start_tls(c, pr->in.len > 0);
        }
    }
}

static void probe_on_error(struct net_conn *c, int err, const char *msg, void *arg)
{
    probe_end(arg, NULL);
}

/* Returns the certificate's fingerprint, or NULL when the port did not
 * complete a TLS handshake in that mode. Caller frees. */
static char *probe_tls(uv_loop_t *loop, const struct sync_account *a, bool starttls)
{
    struct probe pr = {.pop3 = a->protocol == SYNC_PROTO_POP3, .starttls = starttls};
    struct net_opts o;
    sync_net_opts(a, &o);
    o.tls = starttls ? NET_TLS_LATER : NET_TLS_IMPLICIT;
    o.fingerprint = NULL;
    /* Only to see the certificate; nothing is sent that needs protecting. */
    o.insecure_skip_verify = true;
    if (o.connect_timeout_ms > 10000) {
        o.connect_timeout_ms = o.idle_timeout_ms = 10000;
    }
    static const struct net_cb cb = {.on_connect = probe_on_connect,
                                     .on_data = probe_on_data,
                                     .on_tls = probe_on_tls,
                                     .on_error = probe_on_error};
    if (net_connect(loop, &o, &cb, &pr, &pr.c) != 0) {
        return NULL;
    }
    while (!pr.done) {
        uv_run(loop, UV_RUN_ONCE);
    }
    net_close(pr.c);
    uv_run(loop, UV_RUN_NOWAIT);
    sbuf_free(&pr.in);
    return pr.fingerprint;
}

/* ---- Diagnosis ---- */

static bool contains(const char *hay, const char *needle)
{
    return hay != NULL && strcasestr(hay, needle) != NULL;
}

/* The response code in a client message ("...: [CODE] text" or "... ([CODE]
 * text)"), or NULL. */
static char *response_code(const char *msg)
{
    const char *b = strstr(msg, ": [");
    const char *paren = strstr(msg, "([");
    if (b == NULL || (paren != NULL && paren < b)) {
        b = paren;
    }
    if (b == NULL) {
        return NULL;
    }
    b += b == paren ? 2 : 3;
    size_t n = strcspn(b, "] ");
    return b[n] == ']' ? xstrndup(b, n) : NULL;
}

static const char *proto_name(const struct cfg_account *a)
{
    return a->protocol == CFG_PROTO_POP3 ? "POP3" : "IMAP";
}

static unsigned tls_port(const struct cfg_account *a)
{
    return a->protocol == CFG_PROTO_POP3 ? 995 : 993;
}

static unsigned plain_port(const struct cfg_account *a)
{
    return a->protocol == CFG_PROTO_POP3 ? 110 : 143;
}

/* When the account's server differs from its provider's, naming the
 * provider's is often the whole fix. */
static void fix_provider_server(struct check *ck, struct problem *pb)
{
    if (ck->prov == NULL) {
        return;
    }
    const struct provider_server *s = provider_server(ck->prov, ck->acct->protocol);
    if (s->host == NULL) {
        return;
    }
    if (strcasecmp(s->host, ck->acct->host) != 0 &&
        (s->org_host == NULL || strcasecmp(s->org_host, ck->acct->host) != 0)) {
        add_fix(pb, "%s's %s server is %s: remove host: from the account to use it",
                ck->prov->title, proto_name(ck->acct), s->host);
    } else if (s->port != ck->acct->port || s->tls != ck->acct->tls) {
        add_fix(pb,
                "%s's %s server listens on port %u with tls: %s: remove port: and tls: from "
                "the account to use them",
                ck->prov->title, proto_name(ck->acct), s->port, cfg_tls_name(s->tls));
    }
}

/* The data centres of the account's provider, when it has several. */
static void fix_regions(struct check *ck, struct problem *pb)
{
    if (ck->prov == NULL || ck->prov->regions[0] == NULL) {
        return;
    }
    struct sbuf sb = {0};
    for (size_t i = 0; i < provider_count(); i++) {
        const struct provider *q = provider_at(i);
        if (strcmp(q->family, ck->prov->family) == 0) {
            sbuf_addf(&sb, "%s%s (%s)", sb.len > 0 ? ", " : "", q->regions[0],
                      provider_server(q, ck->acct->protocol)->host);
        }
    }
    add_fix(pb,
            "each data centre of %s has its own servers, and an account lives in one: set "
            "region: to yours: %s",
            ck->prov->family, sb.buf);
    sbuf_free(&sb);
}

static void diagnose_dns(struct check *ck, const char *msg)
{
    const struct cfg_account *a = ck->acct;
    struct problem *pb = add_problem(ck, "dns", true, msg,
                                     "the name %s could not be turned into an address", a->host);
    fix_provider_server(ck, pb);
    fix_regions(ck, pb);
    add_fix(pb, "check the spelling of host: (%s)", a->host);
    add_fix(pb,
            "check that this computer resolves names at all (network, VPN, DNS): getent "
            "hosts %s",
            a->host);
}

static void diagnose_refused(struct check *ck, const char *msg)
{
    const struct cfg_account *a = ck->acct;
    struct problem *pb = add_problem(ck, "refused", true, msg,
                                     "nothing accepts connections on %s port %u (connection "
                                     "refused)",
                                     a->host, a->port);
    add_hint(ck, pb, ck->prov != NULL ? ck->prov->hints.connect : NULL);
    fix_provider_server(ck, pb);
    add_fix(pb, "check port: %s servers listen on %u (tls: implicit) or %u (tls: starttls)",
            proto_name(a), tls_port(a), plain_port(a));
    add_fix(pb, "a firewall on the way may also refuse the connection");
}

static void diagnose_timeout(struct check *ck, const char *msg)
{
    const struct cfg_account *a = ck->acct;
    if (contains(msg, "sent nothing at all") && a->tls != CFG_TLS_IMPLICIT) {
        char *fp = probe_tls(ck->loop, ck->sa, false);
        if (fp != NULL) {
            struct problem *pb = add_problem(
                ck, "tls_on_plain_port", true, msg,
                "%s port %u speaks TLS from the first byte (it answered a TLS handshake, "
                "certificate %s), but tls is '%s', so mailsync waited for a plain-text greeting "
                "that never comes",
                a->host, a->port, fp, cfg_tls_name(a->tls));
            add_fix(pb, "set tls: implicit for port %u", a->port);
            add_fix(pb, "or keep tls: %s and use the plain-text port, usually %u",
                    cfg_tls_name(a->tls), plain_port(a));
            free(fp);
            return;
        }
        struct problem *pb = add_problem(ck, "timeout", true, msg,
                                         "%s port %u accepted the connection but sent nothing, "
                                         "not even a greeting, for %u s",
                                         a->host, a->port, a->timeout_seconds);
        add_fix(pb, "check port: (%s: %u with tls: implicit, %u with tls: starttls)", proto_name(a),
                tls_port(a), plain_port(a));
        add_fix(pb, "the server may be overloaded or broken: try again later");
        return;
    }
    struct problem *pb =
        add_problem(ck, "timeout", true, msg,
                    "%s port %u did not answer within %u s: the server is down, or a firewall "
                    "drops the packets on the way",
                    a->host, a->port, a->timeout_seconds);
    add_hint(ck, pb, ck->prov != NULL ? ck->prov->hints.connect : NULL);
    fix_provider_server(ck, pb);
    add_fix(pb,
            "check port: (%s: %u with tls: implicit, %u with tls: starttls) and that the "
            "network lets it through",
            proto_name(a), tls_port(a), plain_port(a));
    add_fix(pb, "on a slow link, raise timeout: (now %u s)", a->timeout_seconds);
}

static void diagnose_not_tls(struct check *ck, const char *msg)
{
    const struct cfg_account *a = ck->acct;
    if (contains(msg, "after agreeing to start TLS")) {
        struct problem *pb = add_problem(ck, "starttls_failed", true, msg,
                                         "the server agreed to start TLS and then went on in "
                                         "plain text");
        add_fix(pb,
                "something between this computer and the server interferes with STARTTLS: "
                "use tls: implicit on port %u",
                tls_port(a));
        return;
    }
    struct problem *pb = add_problem(ck, "plaintext_on_tls_port", true, msg,
                                     "%s port %u answered in plain text, but tls is 'implicit', "
                                     "which expects TLS from the first byte",
                                     a->host, a->port);
    fix_provider_server(ck, pb);
    add_fix(pb, "set tls: starttls to keep port %u (TLS then starts after the greeting)", a->port);
    if (a->port != tls_port(a)) {
        add_fix(pb, "or keep tls: implicit and use the TLS port: port: %u", tls_port(a));
    }
}

/* How to trust a certificate that no trusted authority signed: the user
 * decides, mailsync never does by itself. A self-signed certificate can be
 * its own ca_file; one from a private authority needs that authority's. */
static void fix_trust(struct check *ck, struct problem *pb, const char *fp, bool self_signed)
{
    const struct cfg_account *a = ck->acct;
    const char *starttls = a->tls != CFG_TLS_STARTTLS      ? ""
                           : a->protocol == CFG_PROTO_POP3 ? " -starttls pop3"
                                                           : " -starttls imap";
    if (!self_signed) {
        add_fix(pb,
                "the server's certificate comes from an authority this computer does not "
                "know: get that authority's certificate (PEM) from the server's "
                "administrator, or as the last one listed by: openssl s_client -connect "
                "%s:%u%s -showcerts </dev/null; then set ca_file: to it",
                a->host, a->port, starttls);
        if (fp != NULL) {
            add_fix(pb,
                    "and, to notice if the certificate is ever replaced, pin it: "
                    "tls_fingerprint: %s (after checking it with the administrator)",
                    fp);
        }
        return;
    }
    add_fix(pb,
            "the certificate is self-signed: to trust it, save it with\n"
            "    openssl s_client -connect %s:%u%s </dev/null | openssl x509 > "
            "~/.config/mailsync/%s.pem\n"
            "check that its fingerprint is %s (with the server's administrator, or on the "
            "server: openssl x509 -noout -fingerprint -sha256 -in CERT), then set\n"
            "    ca_file: ~/.config/mailsync/%s.pem\n"
            "    tls_fingerprint: %s\n"
            "(the pin makes a later change of certificate an error instead of a silent switch)",
            a->host, a->port, starttls, a->name, fp != NULL ? fp : "(unknown)", a->name,
            fp != NULL ? fp : "sha256:...");
}

static void diagnose_verify(struct check *ck, const char *msg)
{
    const struct cfg_account *a = ck->acct;
    if (contains(msg, "expired") || contains(msg, "not yet valid")) {
        struct problem *pb = add_problem(ck, "certificate_expired", true, msg,
                                         "the certificate of %s is outside its validity "
                                         "period (%s)",
                                         a->host, msg);
        add_fix(pb, "check this computer's clock (date); if it is right, the server's "
                    "administrator must renew the certificate");
        return;
    }
    char *fp = probe_tls(ck->loop, ck->sa, a->tls == CFG_TLS_STARTTLS);
    if (contains(msg, "hostname mismatch") || contains(msg, "host name mismatch")) {
        struct problem *pb = add_problem(ck, "certificate_name", true, msg,
                                         "the certificate %s presents is for another name, not "
                                         "%s",
                                         a->host, a->host);
        fix_provider_server(ck, pb);
        add_fix(pb,
                "set host: to a name the certificate is for (see: openssl s_client -connect "
                "%s:%u </dev/null | openssl x509 -noout -subject -ext subjectAltName)",
                a->host, a->port);
        free(fp);
        return;
    }
    bool self_signed = contains(msg, "self-signed") || contains(msg, "self signed");
    struct problem *pb =
        add_problem(ck, "certificate_untrusted", true, msg, "the certificate of %s (%s) is %s",
                    a->host, fp != NULL ? fp : "fingerprint unknown",
                    self_signed ? "self-signed: no authority vouches for it"
                                : "not signed by an authority this computer "
                                  "trusts");
    add_hint(ck, pb, ck->prov != NULL ? ck->prov->hints.certificate : NULL);
    fix_trust(ck, pb, fp, self_signed);
    free(fp);
}

static void diagnose_pin(struct check *ck, const char *msg)
{
    const char *seen = strstr(msg, "fingerprint sha256:");
    char *fp = seen != NULL ? xstrndup(seen + 12, strcspn(seen + 12, " ")) : NULL;
    struct problem *pb = add_problem(ck, "certificate_pin", true, msg,
                                     "the server's certificate is not the one pinned with "
                                     "tls_fingerprint");
    add_fix(pb,
            "find out why it changed (a renewed certificate, or someone in between); if the "
            "new one is right, set tls_fingerprint: %s",
            fp != NULL ? fp : "(the new fingerprint)");
    free(fp);
}

/* The server refused the credentials: which fixes apply depends on the
 * provider (where to enable access, which password it wants, the user
 * name's form) and on the response code. */
static void diagnose_login(struct check *ck, const char *msg)
{
    const struct cfg_account *a = ck->acct;
    const struct provider *p = ck->prov;
    char *code = response_code(msg);
    const char *alert = ck->alert;
    bool app = false;
    static const char *const app_words[] = {"application-specific", "application specific",
                                            "app-specific",         "app password",
                                            "app-password",         "application password"};
    for (size_t i = 0; i < ARRAY_SIZE(app_words); i++) {
        app |= contains(msg, app_words[i]) || contains(alert, app_words[i]);
    }
    const char *said = alert != NULL ? alert : msg;
    struct problem *pb;
    if (code != NULL && strcmp(code, "EXPIRED") == 0) {
        pb = add_problem(ck, "password_expired", true, msg,
                         "%s says the password has expired ([EXPIRED])", a->host);
        add_fix(pb, "log in to the provider's web site, set a new password, and put it where "
                    "password or password_command finds it");
        goto out;
    }
    if (code != NULL && strcmp(code, "PRIVACYREQUIRED") == 0) {
        pb = add_problem(ck, "privacy_required", true, msg,
                         "%s refuses this login without TLS ([PRIVACYREQUIRED])", a->host);
        add_fix(pb, "set tls: implicit (port %u) or tls: starttls, and remove allow_plaintext",
                tls_port(a));
        goto out;
    }
    if (code != NULL && strcmp(code, "AUTHORIZATIONFAILED") == 0) {
        pb = add_problem(ck, "authorization_failed", true, msg,
                         "%s accepted the credentials but this user may not use the mailbox "
                         "([AUTHORIZATIONFAILED])",
                         a->host);
        add_fix(pb, "check user: it must name the mailbox owner, not an alias or a shared "
                    "mailbox");
        goto out;
    }
    if (app) {
        pb = add_problem(ck, "app_password_required", true, msg,
                         "%s wants an application-specific password, not the account's own "
                         "(\"%s\")",
                         a->host, said);
    } else {
        pb = add_problem(
            ck, "login_refused", true, msg, "%s refused the user name or the password%s%s%s",
            a->host, code != NULL ? " ([" : "", code != NULL ? code : "", code != NULL ? "])" : "");
    }
    if (p != NULL && p->login == PROVIDER_LOGIN_ADDRESS && strchr(a->user, '@') == NULL) {
        add_fix(pb, "the user name must be the full address (like %s@example.com), not '%s'",
                a->user, a->user);
    }
    if (p != NULL) {
        add_hint(ck, pb,
                 a->protocol == CFG_PROTO_POP3 ? p->hints.enable_pop3 : p->hints.enable_imap);
        add_hint(ck, pb, p->hints.password);
        if (!provider_supports_auth(p, a->auth)) {
            add_fix(pb, "%s does not offer auth: %s; remove auth: from the account", p->title,
                    cfg_auth_name(a->auth));
        }
        add_hint(ck, pb, p->hints.login);
    } else {
        add_fix(pb, "check user: (many servers want the full address) and the password");
        add_fix(pb, "providers with two-factor sign-in usually want an application-specific "
                    "password for mail clients; for a known provider, set provider: (e.g. "
                    "provider: zoho) to get its specific advice");
    }
    if (a->auth == CFG_AUTH_XOAUTH2 || a->auth == CFG_AUTH_OAUTHBEARER) {
        add_fix(pb,
                "with auth: %s the password is an OAuth2 access token: check that "
                "password_command prints a fresh one (tokens expire within about an hour)",
                cfg_auth_name(a->auth));
    }
out:
    free(code);
}

static void diagnose_busy(struct check *ck, const char *msg)
{
    char *code = response_code(msg);
    struct problem *pb = add_problem(ck, "login_unavailable", true, msg,
                                     "%s refused the login for now%s%s%s; the password was not "
                                     "checked",
                                     ck->acct->host, code != NULL ? " ([" : "",
                                     code != NULL ? code : "", code != NULL ? "])" : "");
    if (code != NULL && (strcmp(code, "INUSE") == 0 || strcmp(code, "IN-USE") == 0)) {
        add_fix(pb, "another program holds the mailbox (POP3 allows one session at a time): "
                    "close it, or wait for it to finish");
    } else if (code != NULL && strcmp(code, "LOGIN-DELAY") == 0) {
        add_fix(pb, "the server limits how often you may log in: check less often");
    }
    add_fix(pb, "try again later (mailsync sync exits with 75 for this, so timers retry)");
    free(code);
}

/* A connection closed or refused with BYE: often a connection limit. */
static void diagnose_closed(struct check *ck, const char *msg)
{
    const struct provider *p = ck->prov;
    struct problem *pb = add_problem(ck, "closed", true, msg,
                                     "the server ended the connection before the login "
                                     "finished (%s)",
                                     msg);
    if (p != NULL && p->connection_limit > 0) {
        add_fix(pb,
                "%s allows about %u connections per account, shared with every other "
                "device and program: close some, or lower max_connections (now %u)",
                p->title, p->connection_limit, ck->acct->max_connections);
    }
    add_fix(pb, "check that port %u is the %s port, and try again later", ck->acct->port,
            proto_name(ck->acct));
}

static void diagnose(struct check *ck)
{
    const struct cfg_account *a = ck->acct;
    int err = ck->err;
    const char *msg = ck->errmsg != NULL ? ck->errmsg : "";
    bool pop = a->protocol == CFG_PROTO_POP3;
    struct problem *pb;
    if (ck->secret_failed) {
        pb = add_problem(ck, "password_command", true, msg, "the password could not be read: %s",
                         msg);
        add_fix(pb, "run the password_command yourself: its first line of output must be the "
                    "password (or token)");
    } else if (contains(msg, "could not resolve host") || err == UV_EAI_NONAME ||
               err == UV_EAI_AGAIN || err == UV_EAI_FAIL || err == UV_EAI_NODATA) {
        diagnose_dns(ck, msg);
    } else if (err == UV_ECONNREFUSED) {
        diagnose_refused(ck, msg);
    } else if (err == UV_ENETUNREACH || err == UV_EHOSTUNREACH) {
        pb = add_problem(ck, "unreachable", true, msg,
                         "there is no route to %s: the network is down, or the host is on a "
                         "network this computer cannot reach",
                         a->host);
        add_fix(pb, "check the network connection (and VPN, for a server inside one)");
    } else if (err == NET_ETIMEOUT) {
        diagnose_timeout(ck, msg);
    } else if (err == NET_ENOTTLS) {
        diagnose_not_tls(ck, msg);
    } else if (err == NET_EVERIFY) {
        diagnose_verify(ck, msg);
    } else if (err == NET_EPIN) {
        diagnose_pin(ck, msg);
    } else if (err == NET_EINJECT) {
        pb = add_problem(ck, "starttls_attacked", true, msg,
                         "data was slipped into the connection together with the server's "
                         "answer to STARTTLS: something between you and the server tampers "
                         "with it");
        add_fix(pb, "use tls: implicit on port %u, and check the network you are on", tls_port(a));
    } else if (contains(msg, "does not offer STARTTLS") || contains(msg, "does not offer STLS") ||
               contains(msg, "STARTTLS is impossible")) {
        pb = add_problem(ck, "no_starttls", true, msg,
                         "tls is 'starttls' but the server does not offer it; mailsync never "
                         "goes on without TLS");
        add_fix(pb, "use tls: implicit on the TLS port (usually %u), where the server has one",
                tls_port(a));
    } else if (contains(msg, "without TLS (set allow_plaintext") ||
               contains(msg, "refusing to send the password") ||
               contains(msg, "refusing to send credentials")) {
        pb = add_problem(ck, "plaintext_refused", true, msg,
                         "tls is 'none', and mailsync does not send a password unencrypted");
        add_fix(pb, "use tls: implicit or tls: starttls");
        add_fix(pb, "only for a server on a trusted network (this computer), set "
                    "allow_plaintext: true");
    } else if (err == IMAP_EUNAVAIL || err == IMAP_ELIMIT ||
               (pop && err == -EACCES && ck->popkind == POP3_ERRKIND_TRANSIENT)) {
        diagnose_busy(ck, msg);
    } else if ((err == IMAP_EAUTH || (pop && err == -EPROTO)) &&
               (contains(msg, "does not offer AUTH=") || contains(msg, "disables LOGIN") ||
                contains(msg, "no supported") || contains(msg, "no usable"))) {
        pb = add_problem(ck, "auth_method", true, msg,
                         "the server does not offer the login method mailsync was to use");
        add_fix(pb, "set auth: to a method the server lists (AUTH=... in its capabilities), or "
                    "remove auth: to let mailsync choose");
        add_hint(ck, pb, ck->prov != NULL ? ck->prov->hints.password : NULL);
    } else if (err == IMAP_EAUTH || (pop && err == -EACCES)) {
        diagnose_login(ck, msg);
    } else if (contains(msg, "not an IMAP greeting")) {
        pb = add_problem(ck, "not_imap", true, msg, "the server on %s port %u does not speak IMAP",
                         a->host, a->port);
        add_fix(pb, "check port: IMAP is on %u (tls: implicit) or %u (tls: starttls)", tls_port(a),
                plain_port(a));
        add_fix(pb, "for a POP3 server, set protocol: pop3");
    } else if (err == NET_ECLOSED || err == IMAP_EBYE || err == -ECONNREFUSED ||
               err == UV_ECONNRESET || err == UV_EOF) {
        diagnose_closed(ck, msg);
    } else if (err == NET_ETLS) {
        pb = add_problem(ck, "tls", true, msg, "the TLS handshake with %s failed (%s)", a->host,
                         msg);
        add_fix(pb, "check port: and tls: (%s: %u with implicit, %u with starttls)", proto_name(a),
                tls_port(a), plain_port(a));
    } else {
        pb = add_problem(ck, "error", true, msg, "%s", msg);
    }
}

/* ---- Reporting ---- */

static void print_problems(const struct check *ck)
{
    for (size_t i = 0; i < ck->nproblems; i++) {
        const struct problem *pb = &ck->problems[i];
        if (!pb->error) {
            /* Warnings were said where they were found. */
            continue;
        }
        if (pb->message[0] != '\0') {
            outf(ck->out, "  FAILED: %s\n", pb->message);
        }
        outf(ck->out, "  cause: %s\n", pb->cause);
        for (size_t j = 0; j < pb->nfixes; j++) {
            /* Continuation lines line up under the text. */
            outf(ck->out, "  fix: ");
            for (const char *line = pb->fixes[j]; *line != '\0';) {
                size_t n = strcspn(line, "\n");
                char *one = xstrndup(line, n);
                outf(ck->out, "%s%s\n", line == pb->fixes[j] ? "" : "       ", one);
                free(one);
                line += n + (line[n] == '\n');
            }
        }
    }
}

static void json_report(struct sbuf *sb, const struct check *ck)
{
    const struct cfg_account *a = ck->acct;
    sbuf_adds(sb, "{\"account\":");
    sbuf_add_json(sb, a->name);
    sbuf_adds(sb, ",\"protocol\":");
    sbuf_add_json(sb, cfg_protocol_name(a->protocol));
    sbuf_adds(sb, ",\"provider\":");
    sbuf_add_json(sb, a->provider);
    sbuf_adds(sb, ",\"host\":");
    sbuf_add_json(sb, a->host);
    sbuf_addf(sb, ",\"port\":%u,\"tls\":", a->port);
    sbuf_add_json(sb, cfg_tls_name(a->tls));
    sbuf_addf(sb, ",\"ok\":%s,\"connected\":%s,\"logged_in\":%s,\"tls_version\":",
              check_ok(ck) ? "true" : "false", ck->connected ? "true" : "false",
              ck->logged_in ? "true" : "false");
    sbuf_add_json(sb, ck->tls_version);
    sbuf_adds(sb, ",\"fingerprint\":");
    sbuf_add_json(sb, ck->fingerprint);
    sbuf_adds(sb, ",\"capabilities\":[");
    for (const char *c = ck->caps; c != NULL && *c != '\0';) {
        size_t n = strcspn(c, " ");
        /* POP3's "SASL PLAIN" stays one name. */
        if (strncmp(c, "SASL ", 5) == 0) {
            n = 5 + strcspn(c + 5, " ");
        }
        char *one = xstrndup(c, n);
        if (c != ck->caps) {
            sbuf_addc(sb, ',');
        }
        sbuf_add_json(sb, one);
        free(one);
        c += n + (c[n] == ' ');
    }
    sbuf_adds(sb, "]");
    if (ck->listed) {
        sbuf_addf(sb, ",\"folders\":%u,\"selected\":%u", ck->folders, ck->selected);
    } else {
        sbuf_adds(sb, ",\"folders\":null,\"selected\":null");
    }
    if (ck->messages >= 0) {
        sbuf_addf(sb, ",\"messages\":%ld", ck->messages);
    } else {
        sbuf_adds(sb, ",\"messages\":null");
    }
    sbuf_adds(sb, ",\"problems\":[");
    for (size_t i = 0; i < ck->nproblems; i++) {
        const struct problem *pb = &ck->problems[i];
        sbuf_adds(sb, i > 0 ? ",{\"kind\":" : "{\"kind\":");
        sbuf_add_json(sb, pb->kind);
        sbuf_addf(sb, ",\"severity\":\"%s\",\"message\":", pb->error ? "error" : "warning");
        sbuf_add_json(sb, pb->message);
        sbuf_adds(sb, ",\"cause\":");
        sbuf_add_json(sb, pb->cause);
        sbuf_adds(sb, ",\"fix\":[");
        for (size_t j = 0; j < pb->nfixes; j++) {
            if (j > 0) {
                sbuf_addc(sb, ',');
            }
            sbuf_add_json(sb, pb->fixes[j]);
        }
        sbuf_adds(sb, "]}");
    }
    sbuf_adds(sb, "]}");
}

/* Checks one account on loop; its JSON object goes to json_out when that
 * is set, else the text report to out. */
static bool check_one(uv_loop_t *loop, const struct cfg *cfg, const struct cfg_account *acct,
                      FILE *out, struct sbuf *json_out)
{
    struct check ck = {.loop = loop,
                       .out = out,
                       .json = json_out != NULL,
                       .acct = acct,
                       .messages = -1,
                       .prov = acct->provider != NULL ? provider_find(acct->provider, NULL) : NULL,
                       .sa = syncopts_account(cfg, acct)};
    if (!ck.json) {
        outf(out, "account '%s': %s %s:%u (tls: %s%s%s)\n", acct->name,
             cfg_protocol_name(acct->protocol), acct->host, acct->port, cfg_tls_name(acct->tls),
             acct->provider != NULL ? ", provider: " : "",
             acct->provider != NULL ? acct->provider : "");
    }
    int r = secret_get_account(loop, ck.sa, 0, on_secret, &ck, &ck.sreq);
    if (r < 0) {
        ck.secret_failed = true;
        ck.err = r;
        ck.errmsg = xstrdup("no password or password_command");
    } else {
        while (!ck.done) {
            uv_run(loop, UV_RUN_ONCE);
        }
        /* Let the closed handles finish before the next connection. */
        uv_run(loop, UV_RUN_NOWAIT);
    }
    if (ck.err < 0) {
        diagnose(&ck);
    }
    bool ok = check_ok(&ck);
    if (ck.json) {
        json_report(json_out, &ck);
    } else {
        print_problems(&ck);
        fflush(out);
    }
    check_free(&ck);
    return ok;
}

static int run_accounts(const struct cfg *cfg, const struct cfg_account *only,
                        char *const *accounts, int count, bool json, FILE *out)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        log_error("cannot initialise the event loop");
        return 1;
    }
    bool ok = true;
    struct sbuf sb = {0};
    size_t n = 0;
    for (size_t i = 0; i < cfg->naccounts; i++) {
        const struct cfg_account *acct = &cfg->accounts[i];
        bool wanted = only != NULL ? acct == only : count == 0;
        for (int j = 0; j < count && !wanted && only == NULL; j++) {
            wanted = strcmp(accounts[j], acct->name) == 0;
        }
        if (!wanted) {
            continue;
        }
        if (json && only == NULL) {
            sbuf_adds(&sb, n > 0 ? "," : "");
        }
        if (!check_one(&loop, cfg, acct, out, json ? &sb : NULL)) {
            ok = false;
        }
        n++;
    }
    if (only != NULL && n == 0) {
        /* An account outside cfg: checked all the same. */
        ok = check_one(&loop, cfg, only, out, json ? &sb : NULL);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        log_warnx("event loop did not close cleanly");
    }
    if (json) {
        if (only == NULL) {
            fprintf(out, "{\"ok\":%s,\"accounts\":[%s]}\n", ok ? "true" : "false",
                    sb.buf != NULL ? sb.buf : "");
        } else {
            fprintf(out, "%s\n", sb.buf != NULL ? sb.buf : "{}");
        }
        fflush(out);
    }
    sbuf_free(&sb);
    return ok ? 0 : 1;
}

int check_run(const struct cfg *cfg, char *const *accounts, int count, bool json, FILE *out)
{
    return run_accounts(cfg, NULL, accounts, count, json, out);
}

int check_connect(const struct cfg *cfg, char *const *accounts, int count, FILE *out)
{
    return check_run(cfg, accounts, count, false, out);
}

int check_account_connect(const struct cfg *cfg, const struct cfg_account *a, bool json, FILE *out)
{
    return run_accounts(cfg, a, NULL, 0, json, out);
}
