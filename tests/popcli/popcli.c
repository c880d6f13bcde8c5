/* popcli: runs one POP3 account of a configuration file to completion and
 * prints the summary, the way `mailsync sync ACCOUNT` will.
 *
 * Usage: popcli [-n] [-f] [-v|-vv] [-k] [-I UIDL=LID] CONFIG ACCOUNT
 *   -n  dry run          -v  debug log, -vv protocol trace
 *   -f  force (accept a mass local deletion)
 *   -k  skip certificate verification (tests only)
 *   -I  UIDL=LID[:SIZE:HASH] before the run, records an intent row (UIDL,
 *       Maildir id, LIST size, 32 hex digits of header hash; by default 0
 *       and none), as a crash between an intent and its delivered row
 *       leaves it: the recovery tests need one without racing a kill -9
 * POPCLI_MAX_LISTING=N sets popsync_opts.max_listing.
 * MAILSYNC_NOW=unix-seconds overrides the clock (delete_after_days tests).
 *
 * Exit status: 0 ok, 75 transient (try later), 77 credentials refused, 1
 * other errors; the summary goes to standard output, the error to standard
 * error as "popcli: <kind>: <message>". */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/config.h"
#include "daemon/syncopts.h"
#include "store/index.h"
#include "sync/popsync.h"

static const char *intent_arg;

static int put_intent(struct idx_txn *txn, void *arg)
{
    struct idx_pop p = {0};
    const char *eq = strchr(intent_arg, '=');
    snprintf(p.uidl, sizeof(p.uidl), "%.*s", (int)(eq - intent_arg), intent_arg);
    const char *colon = strchr(eq + 1, ':');
    size_t lidlen = colon != NULL ? (size_t)(colon - eq - 1) : strlen(eq + 1);
    snprintf(p.lid, sizeof(p.lid), "%.*s", (int)lidlen, eq + 1);
    if (colon != NULL) {
        char *end;
        p.size = strtoull(colon + 1, &end, 10);
        if (*end == ':' && strlen(end + 1) == 32) {
            for (int i = 0; i < 16; i++) {
                unsigned v;
                if (sscanf(end + 1 + 2 * i, "%2x", &v) != 1) {
                    return -EINVAL;
                }
                p.header_hash[i] = (uint8_t)v;
            }
        }
    }
    p.first_seen = *(const time_t *)arg;
    return idx_pop_put(txn, &p);
}

static int make_intent(const struct cfg *cfg, const char *account, time_t now)
{
    struct idx *idx;
    char *err = NULL;
    if (strchr(intent_arg, '=') == NULL) {
        fprintf(stderr, "popcli: -I wants UIDL=LID\n");
        return -1;
    }
    if (idx_open(cfg->state_dir, account, &idx, &err) < 0) {
        fprintf(stderr, "popcli: %s\n", err != NULL ? err : "cannot open the index");
        free(err);
        return -1;
    }
    int r = idx_write(idx, put_intent, &now);
    if (r < 0) {
        fprintf(stderr, "popcli: %s\n", idx_error(idx));
    }
    idx_close(idx);
    return r;
}

static void on_progress(unsigned done, unsigned total, uint64_t bytes, void *arg)
{
    if (isatty(STDERR_FILENO)) {
        fprintf(stderr, "\r%u/%u messages", done, total);
        if (done == total) {
            fputc('\n', stderr);
        }
    }
}

struct run {
    struct popsync *ps;
    bool done;
    struct popsync_result res; /* strings copied */
};

static void on_done(const struct popsync_result *res, void *arg)
{
    struct run *r = arg;
    r->res = *res;
    r->res.error = res->error != NULL ? xstrdup(res->error) : NULL;
    r->res.account = res->account != NULL ? xstrdup(res->account) : NULL;
    r->done = true;
    r->ps = NULL;
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct run *r = h->data;
    if (r->ps != NULL && !r->done) {
        popsync_cancel(r->ps);
    }
}

int main(int argc, char **argv)
{
    /* A peer that closes while we write must be an error return, not a
     * signal: libuv writes to sockets with plain write(). */
    signal(SIGPIPE, SIG_IGN);
    struct popsync_opts opts = {0};
    int verbose = 0;
    int c;
    while ((c = getopt(argc, argv, "nfvkI:")) != -1) {
        switch (c) {
        case 'n':
            opts.dry_run = true;
            break;
        case 'f':
            opts.force = true;
            break;
        case 'v':
            verbose++;
            break;
        case 'k':
            opts.insecure_skip_verify = true;
            break;
        case 'I':
            intent_arg = optarg;
            break;
        default:
            fprintf(stderr, "usage: popcli [-n] [-v] [-k] CONFIG ACCOUNT\n");
            return 2;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: popcli [-n] [-v] [-k] CONFIG ACCOUNT\n");
        return 2;
    }
    log_set_level(verbose >= 2 ? LOG_LEVEL_TRACE : verbose == 1 ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO);
    const char *now = getenv("MAILSYNC_NOW");
    if (now != NULL && *now != '\0') {
        opts.now = (time_t)strtoll(now, NULL, 10);
    }
    opts.progress = on_progress;
    const char *maxl = getenv("POPCLI_MAX_LISTING");
    if (maxl != NULL && *maxl != '\0') {
        opts.max_listing = (unsigned)strtoul(maxl, NULL, 10);
    }

    struct cfg *cfg;
    char *err = NULL;
    if (cfg_load(argv[optind], &cfg, &err) < 0) {
        fprintf(stderr, "%s\n", err);
        free(err);
        return 1;
    }
    const struct cfg_account *acct = cfg_find_account(cfg, argv[optind + 1]);
    if (acct == NULL) {
        fprintf(stderr, "popcli: no account '%s'\n", argv[optind + 1]);
        cfg_free(cfg);
        return 1;
    }
    if (intent_arg != NULL &&
        make_intent(cfg, acct->name, opts.now != 0 ? opts.now : time(NULL)) < 0) {
        cfg_free(cfg);
        return 1;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct run r = {0};
    struct popsync *ps;
    struct sync_account *sa = syncopts_account(cfg, acct);
    if (popsync_start(&loop, sa, &opts, on_done, &r, &ps) < 0) {
        fprintf(stderr, "popcli: account '%s' is not a POP3 account\n", acct->name);
        sync_account_free(sa);
        cfg_free(cfg);
        return 1;
    }
    r.ps = ps;
    /* SIGINT / SIGTERM cancel the run the way the daemon stops it. */
    uv_signal_t sigint, sigterm;
    uv_signal_init(&loop, &sigint);
    uv_signal_init(&loop, &sigterm);
    sigint.data = sigterm.data = &r;
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    while (!r.done) {
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&sigint, NULL);
    uv_close((uv_handle_t *)&sigterm, NULL);
    struct popsync_result res = r.res;
    char *sum = popsync_summary(&res);
    printf("%s\n", sum);
    printf("stats listed=%u known=%u downloaded=%u adopted=%u skipped_size=%u skipped_since=%u "
           "deleted_on_server=%u deleted_locally=%u errors=%u bytes=%llu\n",
           res.listed, res.known, res.downloaded, res.adopted, res.skipped_size, res.skipped_since,
           res.deleted_on_server, res.deleted_locally, res.errors, (unsigned long long)res.bytes);
    free(sum);
    int rc = 0;
    if (res.kind != POPSYNC_OK) {
        fprintf(stderr, "popcli: %s: %s\n", popsync_kind_name(res.kind), res.error);
        rc = res.kind == POPSYNC_TRANSIENT ? 75 : res.kind == POPSYNC_AUTH ? 77 : 1;
    }
    popsync_result_clear(&res);
    /* The loop must close clean: every handle was closed by the engine. */
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        fprintf(stderr, "popcli: loop did not close clean\n");
        rc = rc != 0 ? rc : 1;
    }
    sync_account_free(sa);
    cfg_free(cfg);
    return rc;
}
