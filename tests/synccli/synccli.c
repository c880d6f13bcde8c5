/* synccli: one IMAP account of a configuration file as a session that
 * stays logged in (sync/engine.h, stay_open), driven by lines on standard
 * input, for the integration tests of folder sync on demand.
 *
 * Usage: synccli [-v|-vv] CONFIG ACCOUNT
 *
 * The first pass syncs every selected folder, as `mailsync sync` does;
 * then the session waits. Commands, one per line:
 *   sync FOLDER   sync that folder again on the same connection
 *   reconnect     log out, then start a new session of the same account
 *                 (sync/account.h: the index stays open and the secret is
 *                 kept, so password_command does not run again)
 *   close         log out and end
 * End of input is close. Output lines (standard output, flushed each):
 *   idle                              every folder asked for is done
 *   folder NAME new_down=N flags_down=N deleted_down=N new_up=N flags_up=N
 *          deleted_up=N error=TEXT    an on-demand folder ended (error=-)
 *   dirty NAME                        the server said NAME changed
 *   refused NAME: TEXT                engine_sync_folder refused it
 *   done KIND                         the session ended (ok, transient,
 *                                     auth, permanent), then the summary
 *   logins N secret_fetches N         after each done: the account's counts
 * Exit status: 0 ok, 75 transient, 1 otherwise. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/config.h"
#include "daemon/syncopts.h"
#include "sync/account.h"
#include "sync/engine.h"

struct cli {
    uv_loop_t loop;
    uv_pipe_t in;
    struct sbuf line;
    struct engine *e;
    struct account *account;
    const struct sync_account *sa;
    bool reconnect;
    bool done;
    int rc;
};

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static void on_idle(void *arg)
{
    (void)arg;
    out("idle\n");
}

static void on_folder_done(const struct engine_folder_result *r, void *arg)
{
    (void)arg;
    const struct engine_counts *c = &r->counts;
    out("folder %s new_down=%u flags_down=%u deleted_down=%u new_up=%u flags_up=%u "
        "deleted_up=%u error=%s\n",
        r->name, c->new_down, c->flags_down, c->deleted_down, c->new_up, c->flags_up, c->deleted_up,
        r->error != NULL ? r->error : "-");
}

static void on_dirty(const char *folder, void *arg)
{
    (void)arg;
    out("dirty %s\n", folder);
}

static int session_start(struct cli *c);

static void on_done(const struct engine_result *res, void *arg)
{
    struct cli *c = arg;
    static const char *const kinds[] = {"ok", "transient", "auth", "permanent"};
    out("done %s\n", kinds[res->kind]);
    char *sum = engine_summary(res);
    out("%s\n", sum);
    free(sum);
    if (res->error != NULL) {
        fprintf(stderr, "synccli: %s\n", res->error);
    }
    c->rc = res->kind == SYNC_OK ? 0 : res->kind == SYNC_TRANSIENT ? 75 : 1;
    const struct account_totals *t = account_totals(c->account);
    out("logins %u secret_fetches %u\n", t->logins, t->secret_fetches);
    c->e = NULL;
    if (c->reconnect) {
        c->reconnect = false;
        if (session_start(c) == 0) {
            return;
        }
    }
    c->done = true;
    if (!uv_is_closing((uv_handle_t *)&c->in)) {
        uv_close((uv_handle_t *)&c->in, NULL);
    }
}

static void command(struct cli *c, const char *cmd)
{
    if (c->e == NULL) {
        return;
    }
    if (strncmp(cmd, "sync ", 5) == 0) {
        int r = engine_sync_folder(c->e, cmd + 5);
        if (r < 0) {
            out("refused %s: %s\n", cmd + 5, strerror(-r));
        }
    } else if (strcmp(cmd, "close") == 0) {
        engine_close(c->e);
    } else if (strcmp(cmd, "reconnect") == 0) {
        c->reconnect = true;
        engine_close(c->e);
    } else if (cmd[0] != '\0') {
        out("refused %s: unknown command\n", cmd);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = xmalloc(suggested);
    buf->len = suggested;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct cli *c = s->data;
    if (n < 0) {
        free(buf->base);
        uv_close((uv_handle_t *)s, NULL);
        if (c->e != NULL) {
            engine_close(c->e);
        }
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (buf->base[i] == '\n') {
            sbuf_addc(&c->line, '\0');
            command(c, c->line.buf);
            c->line.len = 0;
        } else {
            sbuf_addc(&c->line, buf->base[i]);
        }
    }
    free(buf->base);
}

static int session_start(struct cli *c)
{
    struct engine_opts eo = {
        .stay_open = true,
        .on_idle = on_idle,
        .on_folder_done = on_folder_done,
        .on_dirty = on_dirty,
        .session_arg = c,
        .account = c->account,
    };
    if (engine_start(&c->loop, c->sa, &eo, on_done, c, &c->e) < 0) {
        fprintf(stderr, "synccli: cannot start\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int verbose = 0;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        verbose += strcmp(argv[i], "-vv") == 0 ? 2 : strcmp(argv[i], "-v") == 0 ? 1 : 0;
    }
    if (argc - i != 2) {
        fprintf(stderr, "usage: synccli [-v|-vv] CONFIG ACCOUNT\n");
        return 2;
    }
    log_set_level(verbose >= 2 ? LOG_LEVEL_TRACE : verbose == 1 ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO);
    struct cfg *cfg;
    char *err = NULL;
    if (cfg_load(argv[i], &cfg, &err) < 0) {
        fprintf(stderr, "%s\n", err);
        free(err);
        return 1;
    }
    const struct cfg_account *a = cfg_find_account(cfg, argv[i + 1]);
    if (a == NULL || a->protocol != CFG_PROTO_IMAP) {
        fprintf(stderr, "synccli: no IMAP account '%s'\n", argv[i + 1]);
        cfg_free(cfg);
        return 1;
    }
    struct sync_account *sa = syncopts_account(cfg, a);
    struct cli c = {.rc = 1};
    uv_loop_init(&c.loop);
    uv_pipe_init(&c.loop, &c.in, 0);
    c.in.data = &c;
    if (uv_pipe_open(&c.in, 0) != 0 || uv_read_start((uv_stream_t *)&c.in, on_alloc, on_read)) {
        fprintf(stderr, "synccli: standard input must be a pipe\n");
        return 1;
    }
    c.sa = sa;
    c.account = account_new(&c.loop, sa, false);
    if (session_start(&c) < 0) {
        return 1;
    }
    uv_run(&c.loop, UV_RUN_DEFAULT);
    account_free(c.account);
    if (uv_loop_close(&c.loop) != 0) {
        fprintf(stderr, "synccli: loop did not close clean\n");
        c.rc = c.rc != 0 ? c.rc : 1;
    }
    sbuf_free(&c.line);
    sync_account_free(sa);
    cfg_free(cfg);
    return c.rc;
}
