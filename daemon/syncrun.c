#include "daemon/syncrun.h"

#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/supervisor.h"
#include "daemon/syncopts.h"
#include "sync/account.h"
#include "sync/engine.h"
#include "sync/popsync.h"
#include "sync/result.h"

enum run_state {
    RUN_PENDING = 0,
    RUN_RUNNING,
    RUN_DONE,
};

struct run {
    struct syncrun *sr;
    struct sync_account *acct; /* the sync layer's copy of the account */
    /* The long-lived account (sync/account.h): owns acct; index, lock and
     * secret for the IMAP engine. */
    struct account *account;
    struct sup sup; /* the run-once policy: connect, list, sync, log out */
    enum run_state state;
    bool failed;
    bool transient;
    /* Progress, for the terminal display. */
    unsigned done, total;
    uint64_t bytes;
    unsigned long long start_ms;
    char folder[48]; /* the folder that moved last (IMAP) */
};

/* The loop-stall probe: the longest time one loop iteration spent working
 * (callbacks, store work on the loop thread) rather than waiting in the
 * kernel for I/O. Every account shares the loop, so this is how long the
 * slowest piece of work held up every other connection's reads, writes and
 * timers. Measured at each uv_prepare (once per iteration) from the loop's
 * idle-time metric. */
struct stall_probe {
    uv_prepare_t prepare;
    uint64_t last_ns, last_idle_ns, last_cpu_ns;
    uint64_t max_ns;
    /* The most CPU time the loop thread used in one iteration: the same
     * figure without the time the thread waited for a core (on a loaded
     * machine that wait counts as a stall above, but is not our work). */
    uint64_t max_cpu_ns;
    /* Where the longest iteration's time went, from the kernel's per-thread
     * schedstat (CPU time, time runnable but waiting for a core): the rest
     * of it was spent blocked in a system call (a disk wait, a lock). */
    int schedstat_fd;
    uint64_t last_run_ns, last_wait_ns;
    uint64_t max_run_ns, max_wait_ns;
    bool started;
};

/* Reads this thread's CPU and run-queue wait times in nanoseconds from
 * /proc/thread-self/schedstat (opened once); false when unavailable. */
static bool read_schedstat(int fd, uint64_t *run_r, uint64_t *wait_r)
{
    char buf[128];
    if (fd < 0) {
        return false;
    }
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) {
        return false;
    }
    buf[n] = '\0';
    unsigned long long run = 0;
    unsigned long long wait = 0;
    if (sscanf(buf, "%llu %llu", &run, &wait) != 2) {
        return false;
    }
    *run_r = run;
    *wait_r = wait;
    return true;
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) {
        return 0;
    }
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct syncrun {
    uv_loop_t loop;
    struct stall_probe stall;
    const struct cfg *cfg;
    const struct syncrun_opts *opts;
    struct run *runs;
    size_t nruns;
    size_t running;
    bool progress_shown;
    unsigned long long last_draw;
};

/* The clock the engines use; MAILSYNC_NOW (unix seconds) overrides it so
 * that tests can move time forward (delete_after_days). */
static time_t run_clock(void)
{
    const char *now = getenv("MAILSYNC_NOW");
    if (now != NULL && *now != '\0') {
        return (time_t)strtoll(now, NULL, 10);
    }
    return 0;
}

static void progress_clear(struct syncrun *sr)
{
    if (sr->progress_shown) {
        fputs("\r\033[K", stderr);
        sr->progress_shown = false;
    }
}

static void progress_draw(struct syncrun *sr, bool force)
{
    if (!sr->opts->progress) {
        return;
    }
    unsigned long long now = now_ms();
    if (!force && now - sr->last_draw < 100) {
        return;
    }
    sr->last_draw = now;
    struct sbuf sb = {0};
    for (size_t i = 0; i < sr->nruns; i++) {
        struct run *r = &sr->runs[i];
        if (r->state != RUN_RUNNING) {
            continue;
        }
        double secs = (double)(now - r->start_ms) / 1000.0;
        sbuf_addf(&sb, "%s%s: %u/%u, %.1f MB", sb.len ? "  " : "", r->acct->name, r->done, r->total,
                  (double)r->bytes / 1e6);
        if (secs >= 1.0) {
            sbuf_addf(&sb, ", %.1f MB/s", (double)r->bytes / 1e6 / secs);
        }
        if (r->folder[0] != '\0') {
            sbuf_addf(&sb, " (%s)", r->folder);
        }
    }
    if (sb.len > 0) {
        fprintf(stderr, "\r\033[K%s", sb.buf);
        sr->progress_shown = true;
    }
    sbuf_free(&sb);
}

static void on_pop_progress(unsigned done, unsigned total, uint64_t bytes, void *arg)
{
    struct run *r = arg;
    sup_set(&r->sup, SUP_SYNCING, NULL); /* logged in and listed: downloads go on */
    r->done = done;
    r->total = total;
    r->bytes = bytes;
    progress_draw(r->sr, false);
}

static void on_engine_phase(enum engine_phase p, void *arg)
{
    struct run *r = arg;
    sup_set(&r->sup, sup_from_phase(p), NULL);
}

/* The run-once policy's last step: the account is left disconnected (or
 * failed, when its credentials were refused: nothing changes that by
 * itself). */
static void sup_end(struct run *r, enum sync_kind kind)
{
    switch (kind) {
    case SYNC_OK:
        sup_set(&r->sup, SUP_DISCONNECTED, "done");
        break;
    case SYNC_AUTH:
        sup_set(&r->sup, SUP_FAILED_AUTH, "the server refused the credentials");
        break;
    case SYNC_TRANSIENT:
        sup_set(&r->sup, SUP_DISCONNECTED, "a temporary failure; the next run retries");
        break;
    case SYNC_PERMANENT:
        sup_set(&r->sup, SUP_DISCONNECTED, "failed");
        break;
    }
}

static void run_finished(struct run *r, bool failed, bool transient)
{
    r->state = RUN_DONE;
    r->failed = failed;
    r->transient = transient;
    r->sr->running--;
}

static void on_pop_done(const struct popsync_result *res, void *arg)
{
    struct run *r = arg;
    struct syncrun *sr = r->sr;
    progress_clear(sr);
    if (res->kind != SYNC_OK) {
        log_error("%s: %s", r->acct->name, res->error != NULL ? res->error : "failed");
    }
    if (!sr->opts->quiet || res->kind != SYNC_OK) {
        char *line = popsync_summary(res);
        printf("%s\n", line);
        fflush(stdout);
        free(line);
    }
    sup_end(r, res->kind);
    run_finished(r, res->kind != SYNC_OK, res->kind == SYNC_TRANSIENT);
    progress_draw(sr, true);
}

static void on_engine_progress(const char *folder, unsigned done, unsigned total, uint64_t bytes,
                               void *arg)
{
    struct run *r = arg;
    r->done = done;
    r->total = total;
    r->bytes = bytes;
    /* Cut at a character boundary: names are UTF-8. */
    size_t n = strlen(folder);
    if (n >= sizeof(r->folder)) {
        n = sizeof(r->folder) - 1;
        while (n > 0 && ((unsigned char)folder[n] & 0xc0) == 0x80) {
            n--;
        }
    }
    /* A server's folder name must not drive the terminal. */
    memcpy(r->folder, folder, n);
    r->folder[term_safe(r->folder, n)] = '\0';
    progress_draw(r->sr, false);
}

static void on_engine_done(const struct engine_result *res, void *arg)
{
    struct run *r = arg;
    struct syncrun *sr = r->sr;
    progress_clear(sr);
    for (size_t i = 0; i < res->nfolders; i++) {
        if (res->folders[i].error != NULL) {
            log_error("%s: %s: %s", r->acct->name, res->folders[i].name, res->folders[i].error);
        }
    }
    if (res->kind != SYNC_OK && (res->error != NULL || res->folder_errors == 0)) {
        /* Without an account-wide error the folder lines above say it all. */
        log_error("%s: %s", r->acct->name, res->error != NULL ? res->error : "failed");
    }
    bool failed = res->kind != SYNC_OK || res->folder_errors > 0;
    if (!sr->opts->quiet || failed) {
        char *line = engine_summary(res);
        printf("%s\n", line);
        fflush(stdout);
        free(line);
    }
    sup_end(r, res->kind);
    run_finished(r, failed, res->kind == SYNC_TRANSIENT && res->folders_transient);
    progress_draw(sr, true);
}

static void run_start(struct run *r)
{
    struct syncrun *sr = r->sr;
    r->state = RUN_RUNNING;
    r->start_ms = now_ms();
    sr->running++;
    sup_set(&r->sup, SUP_CONNECTING, NULL);
    if (r->acct->protocol == SYNC_PROTO_POP3) {
        struct popsync_opts po = {
            .dry_run = sr->opts->dry_run,
            .force = sr->opts->force,
            .now = run_clock(),
            .progress = on_pop_progress,
            .progress_arg = r,
        };
        struct popsync *ps;
        int rc = popsync_start(&sr->loop, r->acct, &po, on_pop_done, r, &ps);
        if (rc < 0) {
            log_error("%s: cannot start: %s", r->acct->name, strerror(-rc));
            sup_end(r, SYNC_PERMANENT);
            run_finished(r, true, false);
        }
        return;
    }
    struct engine_opts eo = {
        .dry_run = sr->opts->dry_run,
        .force = sr->opts->force,
        .now = run_clock(),
        .progress = on_engine_progress,
        .progress_arg = r,
        .on_phase = on_engine_phase,
        .session_arg = r,
        .account = r->account,
    };
    struct engine *e;
    int rc = engine_start(&sr->loop, r->acct, &eo, on_engine_done, r, &e);
    if (rc < 0) {
        log_error("%s: cannot start: %s", r->acct->name, strerror(-rc));
        sup_end(r, SYNC_PERMANENT);
        run_finished(r, true, false);
    }
}

static void on_stall_prepare(uv_prepare_t *h)
{
    struct stall_probe *p = h->data;
    uint64_t now = uv_hrtime();
    uint64_t idle = uv_metrics_idle_time(h->loop);
    uint64_t cpu = thread_cpu_ns();
    uint64_t run = 0;
    uint64_t wait = 0;
    bool sched = read_schedstat(p->schedstat_fd, &run, &wait);
    if (p->started) {
        uint64_t elapsed = now - p->last_ns;
        uint64_t waited = idle - p->last_idle_ns;
        uint64_t busy = elapsed > waited ? elapsed - waited : 0;
        if (busy > p->max_ns) {
            p->max_ns = busy;
            p->max_run_ns = sched ? run - p->last_run_ns : 0;
            p->max_wait_ns = sched ? wait - p->last_wait_ns : 0;
        }
        if (cpu - p->last_cpu_ns > p->max_cpu_ns) {
            p->max_cpu_ns = cpu - p->last_cpu_ns;
        }
    }
    p->started = true;
    p->last_ns = now;
    p->last_idle_ns = idle;
    p->last_cpu_ns = cpu;
    p->last_run_ns = run;
    p->last_wait_ns = wait;
}

int syncrun(const struct cfg *cfg, char *const *accounts, int count,
            const struct syncrun_opts *opts)
{
    struct syncrun sr = {.cfg = cfg, .opts = opts};
    /* One malloc arena for every thread, as daemon_run: the pool threads'
     * own arenas keep the pages of a large scan or plan resident after it
     * is freed (about 1.5 MiB of a 100,000-message run's peak). */
    mallopt(M_ARENA_MAX, 1);
    if (uv_loop_init(&sr.loop) != 0) {
        log_error("cannot initialise the event loop");
        return 1;
    }
    /* Idle time is only counted when asked for before the loop runs. The
     * probe runs only where it is printed (-v): it costs two system calls
     * per loop iteration (the thread's CPU clock and its schedstat). */
    bool probe = log_get_level() >= LOG_LEVEL_DEBUG &&
                 uv_loop_configure(&sr.loop, UV_METRICS_IDLE_TIME) == 0;
    if (probe) {
        uv_prepare_init(&sr.loop, &sr.stall.prepare);
        sr.stall.prepare.data = &sr.stall;
        sr.stall.schedstat_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
        uv_prepare_start(&sr.stall.prepare, on_stall_prepare);
        /* The probe alone must not keep the loop running. */
        uv_unref((uv_handle_t *)&sr.stall.prepare);
    }
    sr.runs = xcalloc(cfg->naccounts, sizeof(*sr.runs));
    for (size_t i = 0; i < cfg->naccounts; i++) {
        const struct cfg_account *acct = &cfg->accounts[i];
        bool wanted = count == 0;
        for (int j = 0; j < count && !wanted; j++) {
            wanted = strcmp(accounts[j], acct->name) == 0;
        }
        if (wanted) {
            struct run *r = &sr.runs[sr.nruns++];
            *r = (struct run){.sr = &sr, .acct = syncopts_account(cfg, acct)};
            r->account = account_new(&sr.loop, r->acct, true);
            r->sup.account = r->acct->name;
        }
    }
    /* Every account runs at once: each has its own connections and index,
     * and the loop interleaves them. */
    for (size_t i = 0; i < sr.nruns; i++) {
        run_start(&sr.runs[i]);
    }
    uv_run(&sr.loop, UV_RUN_DEFAULT);
    progress_clear(&sr);
    if (probe) {
        /* The probe's own figure first (tests/bench parses it), then the
         * worst iteration's split: its CPU time, its wait for a core (the
         * machine's load, not our work) and the rest, blocked in the
         * kernel (a system call that waited for the disk or a lock). */
        const struct stall_probe *p = &sr.stall;
        if (p->schedstat_fd >= 0) {
            uint64_t other = p->max_run_ns + p->max_wait_ns;
            uint64_t blocked = p->max_ns > other ? p->max_ns - other : 0;
            log_debug("loop: longest stall %.1f ms (%.1f ms of CPU); in it %.1f ms of CPU, "
                      "%.1f ms waiting for a core, %.1f ms blocked",
                      (double)p->max_ns / 1e6, (double)p->max_cpu_ns / 1e6,
                      (double)p->max_run_ns / 1e6, (double)p->max_wait_ns / 1e6,
                      (double)blocked / 1e6);
            close(p->schedstat_fd);
        } else {
            log_debug("loop: longest stall %.1f ms (%.1f ms of CPU)", (double)p->max_ns / 1e6,
                      (double)p->max_cpu_ns / 1e6);
        }
        uv_close((uv_handle_t *)&sr.stall.prepare, NULL);
        uv_run(&sr.loop, UV_RUN_NOWAIT);
    }
    if (uv_loop_close(&sr.loop) != 0) {
        log_warnx("event loop did not close cleanly");
    }
    int ret = 0;
    bool all_transient = true;
    for (size_t i = 0; i < sr.nruns; i++) {
        if (sr.runs[i].state != RUN_DONE) {
            log_error("%s: the run ended without a result", sr.runs[i].acct->name);
            sr.runs[i].failed = true;
        }
        if (sr.runs[i].failed) {
            ret = 1;
            all_transient = all_transient && sr.runs[i].transient;
        }
    }
    for (size_t i = 0; i < sr.nruns; i++) {
        account_free(sr.runs[i].account); /* and the index, and acct */
    }
    free(sr.runs);
    if (ret != 0 && all_transient) {
        ret = SYNC_EXIT_TEMPFAIL;
    }
    return ret;
}
