/* The on_new_mail hook; see hooks.h for the contract.
 *
 * Lifetime: the struct hook holds three timers (the coalescing window, the
 * run's timeout, the SIGKILL after SIGTERM); a run holds a process handle
 * and the read end of its output pipe, in a struct hook_run of its own so
 * that a run still closing never shares handles with the next. Every open
 * handle counts in hook.open_handles; hook_close closes the timers once no
 * run is left, and the last close callback frees everything. */
#include "daemon/hooks.h"

#include "core/log.h"
#include "core/util.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HOOK_DEFAULT_DELAY_MS 2000u
#define HOOK_DEFAULT_TIMEOUT_MS 60000u
#define HOOK_DEFAULT_KILL_AFTER_MS 5000u
#define HOOK_DEFAULT_MAX_LINE 1000u
#define HOOK_READ_BUF 4096

struct hook_run {
    struct hook *h;
    uv_process_t proc;
    uv_pipe_t out;
    bool out_open; /* the pipe handle is initialised and not yet closing */
    struct hook_result result;
    unsigned open_handles;
    struct sbuf line;
    bool line_cut; /* the line went over max_line; the rest is dropped */
    char rbuf[HOOK_READ_BUF];
};

struct hook {
    uv_loop_t *loop;
    char *account;
    char **argv;
    unsigned delay_ms;
    unsigned timeout_ms;
    unsigned kill_after_ms;
    size_t max_line;
    void (*on_done)(struct hook *h, const struct hook_result *r, void *arg);
    void *arg;

    /* Notes not yet handed to a run. */
    bool pending;
    uint64_t pend_new;
    char **pend_folders;
    size_t n_pend_folders;
    size_t cap_pend_folders;
    uint64_t first_note; /* loop time of the first pending note */

    struct hook_run *run; /* the running command, or NULL */
    uint64_t run_deadline;
    uv_timer_t delay_timer;
    uv_timer_t timeout_timer;
    uv_timer_t kill_timer;

    bool closing;
    bool timers_closed;
    unsigned open_handles;
    void (*on_closed)(void *arg);
    void *closed_arg;
};

static void start_run(struct hook *h);

/* ---- closing ------------------------------------------------------------ */

static void hook_release(struct hook *h)
{
    if (--h->open_handles > 0) {
        return;
    }
    void (*on_closed)(void *arg) = h->on_closed;
    void *arg = h->closed_arg;
    for (size_t i = 0; i < h->n_pend_folders; i++) {
        free(h->pend_folders[i]);
    }
    free(h->pend_folders);
    for (char **a = h->argv; *a != NULL; a++) {
        free(*a);
    }
    free(h->argv);
    free(h->account);
    free(h);
    if (on_closed != NULL) {
        on_closed(arg);
    }
}

static void on_hook_handle_closed(uv_handle_t *handle)
{
    hook_release(handle->data);
}

/* Once closing and no run is left, the timers go, and with the last of
 * them (or of the run's handles, whichever closes last) the hook. */
static void maybe_finish_close(struct hook *h)
{
    if (!h->closing || h->run != NULL || h->timers_closed) {
        return;
    }
    h->timers_closed = true;
    uv_close((uv_handle_t *)&h->delay_timer, on_hook_handle_closed);
    uv_close((uv_handle_t *)&h->timeout_timer, on_hook_handle_closed);
    uv_close((uv_handle_t *)&h->kill_timer, on_hook_handle_closed);
}

static void on_run_handle_closed(uv_handle_t *handle)
{
    struct hook_run *run = handle->data;
    struct hook *h = run->h;
    if (--run->open_handles == 0) {
        sbuf_free(&run->line);
        free(run);
    }
    /* The hook's count covers the run's handles too, so the hook outlives
     * every run that points at it. */
    hook_release(h);
}

/* ---- output ------------------------------------------------------------- */

static void emit_line(struct hook_run *run)
{
    struct hook *h = run->h;
    size_t len = run->line.len;
    if (len > 0 && run->line.buf[len - 1] == '\r') {
        len--;
    }
    log_info("%s: on_new_mail: %.*s%s", h->account, (int)len, len > 0 ? run->line.buf : "",
             run->line_cut ? " [cut]" : "");
    sbuf_reset(&run->line);
    run->line_cut = false;
}

static void feed_output(struct hook_run *run, const char *data, size_t len)
{
    size_t max = run->h->max_line;
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl != NULL ? (size_t)(nl - data) : len;
        if (!run->line_cut) {
            size_t room = max > run->line.len ? max - run->line.len : 0;
            sbuf_add(&run->line, data, take < room ? take : room);
            run->line_cut = take > room;
        }
        if (nl == NULL) {
            return;
        }
        emit_line(run);
        data += take + 1;
        len -= take + 1;
    }
}

static void flush_output(struct hook_run *run)
{
    if (run->line.len > 0 || run->line_cut) {
        emit_line(run);
    }
}

static void close_output(struct hook_run *run)
{
    if (run->out_open) {
        run->out_open = false;
        flush_output(run);
        uv_close((uv_handle_t *)&run->out, on_run_handle_closed);
    }
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct hook_run *run = handle->data;
    (void)suggested;
    *buf = uv_buf_init(run->rbuf, sizeof(run->rbuf));
}

static void on_output(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct hook_run *run = stream->data;
    if (nread > 0) {
        feed_output(run, buf->base, (size_t)nread);
    } else if (nread < 0) {
        close_output(run);
    }
}

/* The command has exited, so everything it wrote is in the pipe already:
 * read it now rather than wait for an end of file that a process it left
 * running in the background could hold back for ever. */
static void drain_output(struct hook_run *run)
{
    uv_os_fd_t fd;
    if (!run->out_open || uv_fileno((const uv_handle_t *)&run->out, &fd) < 0) {
        return;
    }
    for (;;) {
        ssize_t n = read(fd, run->rbuf, sizeof(run->rbuf));
        if (n > 0) {
            feed_output(run, run->rbuf, (size_t)n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            break;
        }
    }
    close_output(run);
}

/* ---- running ------------------------------------------------------------ */

static void signal_group(struct hook_run *run, int sig)
{
    /* The command leads a process group of its own (UV_PROCESS_DETACHED):
     * the signal reaches what it started too. It has not been reaped yet
     * (this runs only before the exit callback), so the id is still its. */
    if (kill(-run->proc.pid, sig) < 0) {
        uv_process_kill(&run->proc, sig);
    }
}

static void on_kill_timer(uv_timer_t *t)
{
    struct hook *h = t->data;
    if (h->run != NULL) {
        log_warnx("%s: on_new_mail command '%s' did not stop after SIGTERM: sending SIGKILL",
                  h->account, h->argv[0]);
        signal_group(h->run, SIGKILL);
    }
}

static void terminate(struct hook *h)
{
    signal_group(h->run, SIGTERM);
    uv_timer_start(&h->kill_timer, on_kill_timer, h->kill_after_ms, 0);
}

static void on_timeout(uv_timer_t *t)
{
    struct hook *h = t->data;
    if (h->run == NULL) {
        return;
    }
    if (!h->closing) {
        h->run->result.timed_out = true;
        log_warnx("%s: on_new_mail command '%s' still running after %g s: stopping it", h->account,
                  h->argv[0], h->timeout_ms / 1000.0);
    }
    terminate(h);
}

static void on_delay(uv_timer_t *t)
{
    start_run(t->data);
}

/* Arms the window's end for the pending notes, unless a run is going (its
 * end calls this again). */
static void schedule(struct hook *h)
{
    if (!h->pending || h->run != NULL || h->closing) {
        return;
    }
    uint64_t now = uv_now(h->loop);
    uint64_t due = h->first_note + h->delay_ms;
    uv_timer_start(&h->delay_timer, on_delay, due > now ? due - now : 0, 0);
}

static void finish_run(struct hook *h, const struct hook_result *r)
{
    h->run = NULL;
    uv_timer_stop(&h->timeout_timer);
    uv_timer_stop(&h->kill_timer);
    if (r->spawn_err != 0) {
        log_warnx("%s: on_new_mail command '%s' could not be started: %s", h->account, h->argv[0],
                  uv_strerror(r->spawn_err));
    } else if (r->term_signal != 0 && h->closing) {
        /* Stopped on purpose: the account (or the daemon) is stopping. */
        log_info("%s: on_new_mail command '%s' stopped (signal %d): the account stops", h->account,
                 h->argv[0], r->term_signal);
    } else if (r->term_signal != 0) {
        log_warnx("%s: on_new_mail command '%s' was killed by signal %d (%s)%s", h->account,
                  h->argv[0], r->term_signal, strsignal(r->term_signal),
                  r->timed_out ? " after its timeout" : "");
    } else if (r->exit_status != 0) {
        log_warnx("%s: on_new_mail command '%s' exited with status %lld", h->account, h->argv[0],
                  (long long)r->exit_status);
    } else {
        log_debug("%s: on_new_mail command '%s' done (%llu new)", h->account, h->argv[0],
                  (unsigned long long)r->n_new);
    }
    if (h->on_done != NULL) {
        h->on_done(h, r, h->arg);
    }
    schedule(h);
    maybe_finish_close(h);
}

static void on_exit_cb(uv_process_t *proc, int64_t exit_status, int term_signal)
{
    struct hook_run *run = proc->data;
    struct hook *h = run->h;
    run->result.exit_status = exit_status;
    run->result.term_signal = term_signal;
    drain_output(run);
    struct hook_result result = run->result;
    uv_close((uv_handle_t *)&run->proc, on_run_handle_closed);
    finish_run(h, &result);
}

static void add_folders_env(struct sbuf *sb, struct hook *h)
{
    sbuf_adds(sb, "MAILSYNC_FOLDERS=");
    for (size_t i = 0; i < h->n_pend_folders; i++) {
        if (i > 0) {
            sbuf_addc(sb, '\n');
        }
        for (const char *p = h->pend_folders[i]; *p != '\0'; p++) {
            if (*p == '\\') {
                sbuf_adds(sb, "\\\\");
            } else if (*p == '\n') {
                sbuf_adds(sb, "\\n");
            } else {
                sbuf_addc(sb, *p);
            }
        }
    }
}

static void take_pending(struct hook *h, struct hook_run *run, struct sbuf *folders)
{
    run->result.n_new = h->pend_new;
    add_folders_env(folders, h);
    for (size_t i = 0; i < h->n_pend_folders; i++) {
        free(h->pend_folders[i]);
    }
    h->n_pend_folders = 0;
    h->pend_new = 0;
    h->pending = false;
}

static void start_run(struct hook *h)
{
    if (h->run != NULL || h->closing || !h->pending) {
        return;
    }
    struct hook_run *run = xcalloc(1, sizeof(*run));
    run->h = h;
    struct sbuf folders = {0};
    take_pending(h, run, &folders);
    char *account_var = xasprintf("MAILSYNC_ACCOUNT=%s", h->account);
    char *new_var = xasprintf("MAILSYNC_NEW=%llu", (unsigned long long)run->result.n_new);
    const char *extra[] = {account_var, new_var, folders.buf, NULL};
    char **env = child_env(extra);
    free(account_var);
    free(new_var);
    sbuf_free(&folders);

    /* One pipe for stdout and stderr, so that their lines keep their
     * order; libuv makes both ends close-on-exec, and dup2 onto 1 and 2 in
     * the child clears that there only. */
    uv_file fds[2];
    int r = uv_pipe(fds, 0, 0);
    if (r == 0) {
        uv_pipe_init(h->loop, &run->out, 0);
        run->out.data = run;
        run->out_open = true;
        run->open_handles++;
        h->open_handles++;
        r = uv_pipe_open(&run->out, fds[0]);
        if (r < 0) {
            close(fds[0]);
            close(fds[1]);
        }
    }
    uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE}};
    if (r == 0) {
        stdio[1].flags = UV_INHERIT_FD;
        stdio[1].data.fd = fds[1];
        stdio[2] = stdio[1];
        uv_process_options_t po = {
            .exit_cb = on_exit_cb,
            .file = h->argv[0],
            .args = h->argv,
            .env = env,
            .flags = UV_PROCESS_DETACHED,
            .stdio_count = 3,
            .stdio = stdio,
        };
        run->proc.data = run;
        r = uv_spawn(h->loop, &run->proc, &po);
        close(fds[1]);
        /* uv_spawn initialises the handle even when it fails. */
        run->open_handles++;
        h->open_handles++;
        if (r < 0) {
            uv_close((uv_handle_t *)&run->proc, on_run_handle_closed);
        }
    }
    child_env_free(env);
    if (r < 0) {
        struct hook_result result = run->result;
        result.spawn_err = r;
        close_output(run);
        if (run->open_handles == 0) {
            free(run);
        }
        finish_run(h, &result);
        return;
    }
    h->run = run;
    uv_read_start((uv_stream_t *)&run->out, on_alloc, on_output);
    uv_timer_start(&h->timeout_timer, on_timeout, h->timeout_ms, 0);
    h->run_deadline = uv_now(h->loop) + h->timeout_ms;
}

/* ---- the owner's calls --------------------------------------------------- */

int hook_new(uv_loop_t *loop, const struct hook_opts *opts, struct hook **h_r)
{
    if (loop == NULL || opts == NULL || h_r == NULL || opts->account == NULL ||
        opts->argv == NULL || opts->argv[0] == NULL || opts->argv[0][0] == '\0') {
        return -EINVAL;
    }
    struct hook *h = xcalloc(1, sizeof(*h));
    h->loop = loop;
    h->account = xstrdup(opts->account);
    size_t argc = 0;
    while (opts->argv[argc] != NULL) {
        argc++;
    }
    h->argv = xcalloc(argc + 1, sizeof(*h->argv));
    for (size_t i = 0; i < argc; i++) {
        h->argv[i] = xstrdup(opts->argv[i]);
    }
    h->delay_ms = opts->delay_ms ? opts->delay_ms : HOOK_DEFAULT_DELAY_MS;
    h->timeout_ms = opts->timeout_ms ? opts->timeout_ms : HOOK_DEFAULT_TIMEOUT_MS;
    h->kill_after_ms = opts->kill_after_ms ? opts->kill_after_ms : HOOK_DEFAULT_KILL_AFTER_MS;
    h->max_line = opts->max_line ? opts->max_line : HOOK_DEFAULT_MAX_LINE;
    h->on_done = opts->on_done;
    h->arg = opts->arg;
    uv_timer_t *timers[] = {&h->delay_timer, &h->timeout_timer, &h->kill_timer};
    for (size_t i = 0; i < ARRAY_SIZE(timers); i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = h;
        h->open_handles++;
    }
    *h_r = h;
    return 0;
}

void hook_note(struct hook *h, const char *folder, unsigned n_new)
{
    if (h == NULL || h->closing || n_new == 0) {
        return;
    }
    if (!h->pending) {
        h->pending = true;
        h->first_note = uv_now(h->loop);
    }
    h->pend_new += n_new;
    if (folder != NULL) {
        bool known = false;
        /* A run's folders are few (those with new mail in two seconds), so
         * a linear search costs less than an index would. */
        for (size_t i = 0; i < h->n_pend_folders && !known; i++) {
            known = strcmp(h->pend_folders[i], folder) == 0;
        }
        if (!known) {
            xgrow(&h->pend_folders, &h->cap_pend_folders, h->n_pend_folders + 1,
                  sizeof(*h->pend_folders));
            h->pend_folders[h->n_pend_folders++] = xstrdup(folder);
        }
    }
    schedule(h);
}

bool hook_running(const struct hook *h)
{
    return h->run != NULL;
}

void hook_close(struct hook *h, unsigned grace_ms, void (*on_closed)(void *arg), void *arg)
{
    if (h == NULL || h->closing) {
        return;
    }
    h->closing = true;
    h->on_closed = on_closed;
    h->closed_arg = arg;
    if (h->pending) {
        log_debug("%s: on_new_mail not run for %llu new message(s): stopping", h->account,
                  (unsigned long long)h->pend_new);
        h->pending = false;
    }
    uv_timer_stop(&h->delay_timer);
    if (h->run != NULL) {
        if (grace_ms == 0) {
            terminate(h);
        } else {
            uint64_t now = uv_now(h->loop);
            uint64_t left = h->run_deadline > now ? h->run_deadline - now : 0;
            uv_timer_start(&h->timeout_timer, on_timeout, grace_ms < left ? grace_ms : left, 0);
        }
    }
    maybe_finish_close(h);
}
