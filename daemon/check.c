#include "daemon/check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/syncopts.h"
#include "store/maildir.h"
#include "sync/imap.h"
#include "sync/pop3.h"
#include "sync/secret.h"

/* One account being checked. Accounts are checked one after another so that
 * the report reads in order. */
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

struct check {
    uv_loop_t *loop;
    FILE *out;
    const struct cfg_account *acct;
    struct sync_account *sa; /* the sync layer's copy of acct */
    struct secret_req *sreq;
    struct imap *im;
    struct pop3 *pop;
    unsigned folders;
    unsigned selected;
    bool failed;
    bool done;
};

static void check_finish(struct check *ck, bool failed)
{
    ck->failed = failed;
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

/* Prints how the connection is protected; shared by IMAP and POP3. */
static void print_connection(struct check *ck, struct net_conn *c)
{
    outf(ck->out, "  connected to %s", net_peer_address(c));
    if (net_tls_version(c) != NULL) {
        outf(ck->out, " with %s (%s), certificate verified\n", net_tls_version(c),
             net_tls_cipher(c));
        outf(ck->out, "  certificate fingerprint: %s\n", net_tls_fingerprint(c));
    } else {
        outf(ck->out, " WITHOUT TLS (allow_plaintext is set)\n");
    }
    outf(ck->out, "  logged in as %s\n", ck->acct->user);
}

static void on_pop_quit(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    check_finish(arg, false);
}

static void on_pop_stat(struct pop3 *p, const struct pop3_status *st, void *arg)
{
    struct check *ck = arg;
    unsigned count;
    uint64_t size;
    if (st->err < 0 || !st->ok || !pop3_parse_stat(st->text, &count, &size)) {
        outf(ck->out, "  STAT failed: %s\n", st->text);
        check_finish(ck, true);
        return;
    }
    outf(ck->out, "  mailbox: %u messages, %.1f MB\n", count, (double)size / 1e6);
    if (!(pop3_caps(p) & POP3_CAP_UIDL)) {
        outf(ck->out, "  note: the server does not list UIDL; messages will be recognised by "
                      "a hash of their headers\n");
    }
    if (pop3_quit(p, on_pop_quit, ck) != 0) {
        check_finish(ck, false);
    }
}

static void on_pop_ready(struct pop3 *p, void *arg)
{
    struct check *ck = arg;
    print_connection(ck, pop3_conn(p));
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
    outf(ck->out, "  capabilities:");
    for (size_t i = 0; i < ARRAY_SIZE(caps); i++) {
        if (pop3_caps(p) & caps[i].bit) {
            outf(ck->out, " %s", caps[i].name);
        }
    }
    outf(ck->out, "%s\n", pop3_capa_known(p) ? "" : " (the server refused CAPA)");
    if (pop3_stat(p, on_pop_stat, ck) != 0) {
        check_finish(ck, true);
    }
}

static void on_pop_error(struct pop3 *p, int err, enum pop3_errkind kind, const char *msg,
                         void *arg)
{
    struct check *ck = arg;
    outf(ck->out, "  FAILED: %s\n", msg);
    check_finish(ck, true);
}

static void on_logout(struct imap *im, const struct imap_result *res, void *arg)
{
    struct check *ck = arg;
    check_finish(ck, false);
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
        outf(ck->out, "    ");
        out_padded(ck->out, f->raw_name, 30);
        outf(ck->out, "  cannot be synced: %s\n",
             f->unsyncable != NULL ? f->unsyncable : "unusable name");
        return;
    }
    bool sel = cfg_folder_selected(ck->acct, f->name) && !(f->attrs & IMAP_LIST_NOSELECT) &&
               !(f->attrs & IMAP_LIST_NONEXISTENT);
    if (sel) {
        ck->selected++;
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
        outf(ck->out, "  LIST failed: %s\n", res->text);
        check_finish(ck, true);
        return;
    }
    outf(ck->out, "  %u folders, %u selected for sync (marked *)\n", ck->folders, ck->selected);
    if (imap_logout(im, on_logout, ck) != 0) {
        check_finish(ck, false);
    }
}

static void on_ready(struct imap *im, void *arg)
{
    struct check *ck = arg;
    struct net_conn *c = imap_net(im);
    print_connection(ck, c);
    outf(ck->out, "  capabilities: %s\n", imap_capability_string(im));
    outf(ck->out, "  in use: CONDSTORE %s, QRESYNC %s, COMPRESS %s\n",
         imap_condstore_enabled(im) ? "yes" : "no", imap_qresync_enabled(im) ? "yes" : "no",
         net_compressed(c) ? "yes" : "no");
    outf(ck->out, "  folders:\n");
    if (imap_list(im, on_folder, on_list, ck) != 0) {
        check_finish(ck, true);
    }
}

static void on_error(struct imap *im, int err, const char *msg, void *arg)
{
    struct check *ck = arg;
    outf(ck->out, "  FAILED: %s\n", msg);
    check_finish(ck, true);
}

static void on_secret(int err, const char *secret, const char *msg, void *arg)
{
    struct check *ck = arg;
    ck->sreq = NULL;
    if (err < 0) {
        outf(ck->out, "  FAILED: %s\n", msg);
        check_finish(ck, true);
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
        static const struct imap_cb cb = {.on_ready = on_ready, .on_error = on_error};
        r = imap_connect(ck->loop, &opts, &cb, ck, &ck->im);
    }
    if (r < 0) {
        outf(ck->out, "  FAILED: cannot start the connection: %s\n", strerror(-r));
        check_finish(ck, true);
    }
}

static bool check_one(uv_loop_t *loop, const struct cfg *cfg, const struct cfg_account *acct,
                      FILE *out)
{
    struct check ck = {.loop = loop, .out = out, .acct = acct, .sa = syncopts_account(cfg, acct)};
    outf(out, "account '%s': %s %s:%u (tls: %s)\n", acct->name, cfg_protocol_name(acct->protocol),
         acct->host, acct->port, cfg_tls_name(acct->tls));
    int r = secret_get_account(loop, ck.sa, 0, on_secret, &ck, &ck.sreq);
    if (r < 0) {
        outf(out, "  FAILED: no password or password_command\n");
        sync_account_free(ck.sa);
        return false;
    }
    while (!ck.done) {
        uv_run(loop, UV_RUN_ONCE);
    }
    /* Let the closed handles finish before the next account. */
    uv_run(loop, UV_RUN_NOWAIT);
    fflush(out);
    sync_account_free(ck.sa);
    return !ck.failed;
}

int check_connect(const struct cfg *cfg, char *const *accounts, int count, FILE *out)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        log_error("cannot initialise the event loop");
        return 1;
    }
    bool ok = true;
    for (size_t i = 0; i < cfg->naccounts; i++) {
        const struct cfg_account *acct = &cfg->accounts[i];
        bool wanted = count == 0;
        for (int j = 0; j < count && !wanted; j++) {
            wanted = strcmp(accounts[j], acct->name) == 0;
        }
        if (wanted && !check_one(&loop, cfg, acct, out)) {
            ok = false;
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        log_warnx("event loop did not close cleanly");
    }
    return ok ? 0 : 1;
}
