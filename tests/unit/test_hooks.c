/* LINK: ms_daemon ms_core */
/* daemon/hooks.c with real commands (/bin/sh scripts writing into a
 * temporary directory): the environment a hook sees (systemd's variables
 * gone even when set here, MAILSYNC_* right, folder names escaped),
 * coalescing of a burst into one run, never two runs at once with exactly
 * one follow-up, the timeout's SIGTERM and SIGKILL, output lines in the
 * log (stderr captured into a file), a command that cannot start, and
 * hook_close with a command running or notes pending. Every test ends
 * with uv_loop_close returning 0, which proves that every handle closed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/hooks.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define MAX_RUNS 8

struct t {
    uv_loop_t loop;
    struct hook *h;
    char dir[64];
    char logpath[128];
    int saved_stderr;
    char *log; /* what the module logged, once captured */
    uint64_t t0;
    int runs;
    struct hook_result res[MAX_RUNS];
    uint64_t t_done[MAX_RUNS];
    int close_after;   /* close the hook this long after run number want_runs */
    int want_runs;     /* ... ends; 0: the test closes it itself */
    unsigned grace_ms; /* for that hook_close */
    bool closed;       /* on_closed was called */
    uv_timer_t aux;    /* the settle timer, then the test's own uses */
    uv_timer_t feeder; /* notes over time */
    int feed_left;
    unsigned feed_n; /* the n_new of the next fed note */
    bool fed_while_running;
};

static struct t T;

/* ---- harness ------------------------------------------------------------ */

static void on_closed(void *arg)
{
    assert_ptr_equal(arg, &T);
    assert_false(T.closed);
    T.closed = true;
    uv_close((uv_handle_t *)&T.aux, NULL);
    uv_close((uv_handle_t *)&T.feeder, NULL);
}

static void close_hook(void)
{
    hook_close(T.h, T.grace_ms, on_closed, &T);
}

static void on_settled(uv_timer_t *t)
{
    (void)t;
    close_hook();
}

static void cb_done(struct hook *h, const struct hook_result *r, void *arg)
{
    assert_ptr_equal(h, T.h);
    assert_ptr_equal(arg, &T);
    assert_false(hook_running(h));
    assert_true(T.runs < MAX_RUNS);
    T.res[T.runs] = *r;
    T.t_done[T.runs] = uv_now(&T.loop);
    T.runs++;
    if (T.want_runs != 0 && T.runs == T.want_runs) {
        /* Wait a while for a run that should not come. */
        uv_timer_start(&T.aux, on_settled, (uint64_t)T.close_after, 0);
    }
}

static void t_init(void)
{
    memset(&T, 0, sizeof(T));
    assert_int_equal(uv_loop_init(&T.loop), 0);
    uv_timer_init(&T.loop, &T.aux);
    uv_timer_init(&T.loop, &T.feeder);
    snprintf(T.dir, sizeof(T.dir), "/tmp/mailsync-hooks-XXXXXX");
    assert_non_null(mkdtemp(T.dir));
    snprintf(T.logpath, sizeof(T.logpath), "%s/log", T.dir);
    /* The module logs to stderr: send it to a file for the test to read. */
    fflush(stderr);
    T.saved_stderr = dup(2);
    int fd = open(T.logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(dup2(fd, 2), 2);
    close(fd);
    T.t0 = uv_now(&T.loop);
}

static char *read_file(const char *dir, const char *name)
{
    char *path = path_join(dir, name);
    FILE *f = fopen(path, "r");
    free(path);
    if (f == NULL) {
        return NULL;
    }
    struct sbuf sb = {0};
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        sbuf_add(&sb, buf, n);
    }
    fclose(f);
    return sbuf_detach(&sb);
}

static void t_start(const char *const *argv, struct hook_opts *o)
{
    o->account = "acct";
    o->argv = argv;
    o->on_done = cb_done;
    o->arg = &T;
    assert_int_equal(hook_new(&T.loop, o, &T.h), 0);
}

/* Runs the loop dry, restores stderr, and reads the log. */
static void t_run(void)
{
    assert_int_equal(uv_run(&T.loop, UV_RUN_DEFAULT), 0);
    assert_true(T.closed);
    assert_int_equal(uv_loop_close(&T.loop), 0);
    fflush(stderr);
    dup2(T.saved_stderr, 2);
    close(T.saved_stderr);
    T.log = read_file(T.dir, "log");
    assert_non_null(T.log);
    printf("--- log:\n%s---\n", T.log);
}

static void t_done(void)
{
    char *cmd = xasprintf("rm -rf '%s'", T.dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(T.log);
}

/* A /bin/sh script run as argv (no shell of ours): $1 is the directory. */
#define SH(script)                                                                                 \
    (const char *const[])                                                                          \
    {                                                                                              \
        "/bin/sh", "-c", script, "sh", T.dir, NULL                                                 \
    }

/* ---- the environment ---------------------------------------------------- */

static void test_environment(void **state)
{
    (void)state;
    /* Set in the daemon, as systemd does; the hook must not see them. */
    setenv("NOTIFY_SOCKET", "/run/user/0/systemd/notify", 1);
    setenv("WATCHDOG_USEC", "30000000", 1);
    setenv("WATCHDOG_PID", "1", 1);
    setenv("MAILSYNC_TEST_KEEP", "kept", 1);
    t_init();
    struct hook_opts o = {.delay_ms = 30};
    t_start(SH("{ echo notify=${NOTIFY_SOCKET-absent}; echo usec=${WATCHDOG_USEC-absent};"
               " echo pid=${WATCHDOG_PID-absent}; echo keep=$MAILSYNC_TEST_KEEP;"
               " echo account=$MAILSYNC_ACCOUNT; echo new=$MAILSYNC_NEW; } > \"$1/env\";"
               " printf %s \"$MAILSYNC_FOLDERS\" > \"$1/folders\""),
            &o);
    T.want_runs = 1;
    hook_note(T.h, "INBOX", 2);
    hook_note(T.h, "Lists/a\\b", 1);
    hook_note(T.h, "INBOX", 3);
    hook_note(T.h, "odd\nname", 1);
    hook_note(T.h, "Empty", 0); /* nothing new: not a note */
    assert_int_equal(T.runs, 0);
    assert_false(hook_running(T.h));
    t_run();
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    assert_int_equal(T.runs, 1);
    assert_int_equal(T.res[0].spawn_err, 0);
    assert_int_equal(T.res[0].exit_status, 0);
    assert_int_equal(T.res[0].n_new, 7);
    char *env = read_file(T.dir, "env");
    assert_non_null(env);
    assert_string_equal(env, "notify=absent\nusec=absent\npid=absent\nkeep=kept\naccount=acct\n"
                             "new=7\n");
    char *folders = read_file(T.dir, "folders");
    assert_non_null(folders);
    assert_string_equal(folders, "INBOX\nLists/a\\\\b\nodd\\nname");
    free(env);
    free(folders);
    t_done();
}

static void test_child_env(void **state)
{
    (void)state;
    /* The function the lead reuses for password_command: scrubbed, with
     * extra replacing what it names, everything else kept. */
    setenv("NOTIFY_SOCKET", "@notify", 1);
    setenv("WATCHDOG_PID", "42", 1);
    setenv("MAILSYNC_TEST_KEEP", "kept", 1);
    setenv("MAILSYNC_TEST_OVER", "old", 1);
    const char *extra[] = {"MAILSYNC_TEST_OVER=new", "MAILSYNC_TEST_ADDED=1", NULL};
    char **env = child_env(extra);
    int keep = 0, over = 0, added = 0, path = 0;
    for (char **e = env; *e != NULL; e++) {
        assert_true(strncmp(*e, "NOTIFY_SOCKET=", 14) != 0);
        assert_true(strncmp(*e, "WATCHDOG_PID=", 13) != 0);
        assert_true(strncmp(*e, "MAILSYNC_TEST_OVER=old", 22) != 0);
        keep += strcmp(*e, "MAILSYNC_TEST_KEEP=kept") == 0;
        over += strcmp(*e, "MAILSYNC_TEST_OVER=new") == 0;
        added += strcmp(*e, "MAILSYNC_TEST_ADDED=1") == 0;
        path += strncmp(*e, "PATH=", 5) == 0;
    }
    assert_int_equal(keep, 1);
    assert_int_equal(over, 1);
    assert_int_equal(added, 1);
    assert_int_equal(path, getenv("PATH") != NULL ? 1 : 0);
    child_env_free(env);
    /* A variable whose name only starts like a scrubbed one stays. */
    setenv("NOTIFY_SOCKETS", "x", 1);
    env = child_env(NULL);
    int found = 0;
    for (char **e = env; *e != NULL; e++) {
        found += strcmp(*e, "NOTIFY_SOCKETS=x") == 0;
    }
    assert_int_equal(found, 1);
    child_env_free(env);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("NOTIFY_SOCKETS");
    unsetenv("WATCHDOG_PID");
    unsetenv("MAILSYNC_TEST_OVER");
}

/* ---- coalescing and overlap -------------------------------------------- */

static void on_feed(uv_timer_t *t)
{
    (void)t;
    if (hook_running(T.h)) {
        T.fed_while_running = true;
    }
    hook_note(T.h, "INBOX", T.feed_n++);
    if (--T.feed_left == 0) {
        uv_timer_stop(&T.feeder);
    }
}

static void test_coalescing(void **state)
{
    (void)state;
    /* Five notes 10 ms apart inside a 300 ms window: one run, with the
     * sum, no sooner than the window's end; nothing after it. */
    t_init();
    struct hook_opts o = {.delay_ms = 300};
    t_start(SH("echo \"run $MAILSYNC_NEW $MAILSYNC_FOLDERS\" >> \"$1/runs\""), &o);
    T.want_runs = 1;
    T.close_after = 400;
    hook_note(T.h, "INBOX", 1);
    T.feed_n = 2;
    T.feed_left = 4;
    uv_timer_start(&T.feeder, on_feed, 10, 10);
    t_run();
    assert_int_equal(T.runs, 1);
    assert_int_equal(T.res[0].n_new, 15);
    assert_true(T.t_done[0] >= T.t0 + 300);
    char *runs = read_file(T.dir, "runs");
    assert_non_null(runs);
    assert_string_equal(runs, "run 15 INBOX\n");
    free(runs);
    t_done();
}

static void test_no_overlap(void **state)
{
    (void)state;
    /* A hook that takes 0.4 s; notes arrive while it runs: they give
     * exactly one more run, after the first one ended, with their sum. */
    t_init();
    struct hook_opts o = {.delay_ms = 20};
    t_start(SH("echo \"start $MAILSYNC_NEW\" >> \"$1/runs\"; sleep 0.4;"
               " echo end >> \"$1/runs\""),
            &o);
    T.want_runs = 2;
    T.close_after = 300;
    hook_note(T.h, "INBOX", 1);
    T.feed_n = 2;
    T.feed_left = 3;
    uv_timer_start(&T.feeder, on_feed, 150, 50); /* at 150, 200, 250 ms */
    t_run();
    assert_true(T.fed_while_running);
    assert_int_equal(T.runs, 2);
    assert_int_equal(T.res[0].n_new, 1);
    assert_int_equal(T.res[1].n_new, 9);
    char *runs = read_file(T.dir, "runs");
    assert_non_null(runs);
    assert_string_equal(runs, "start 1\nend\nstart 9\nend\n");
    free(runs);
    t_done();
}

/* ---- timeout ------------------------------------------------------------ */

static void test_timeout_sigterm(void **state)
{
    (void)state;
    /* The shell waits for sleep: SIGTERM to the process group ends both,
     * so the run ends well before the SIGKILL would come. */
    t_init();
    struct hook_opts o = {.delay_ms = 10, .timeout_ms = 150, .kill_after_ms = 3000};
    t_start(SH("echo started >> \"$1/runs\"; sleep 10; echo finished >> \"$1/runs\""), &o);
    T.want_runs = 1;
    hook_note(T.h, "INBOX", 1);
    t_run();
    assert_int_equal(T.runs, 1);
    assert_true(T.res[0].timed_out);
    assert_int_equal(T.res[0].term_signal, SIGTERM);
    assert_true(T.t_done[0] >= T.t0 + 150);
    assert_true(T.t_done[0] < T.t0 + 2500);
    char *runs = read_file(T.dir, "runs");
    assert_string_equal(runs, "started\n");
    free(runs);
    assert_non_null(
        strstr(T.log, "warning: acct: on_new_mail command '/bin/sh' still running after 0.15 s"));
    assert_non_null(strstr(T.log, "warning: acct: on_new_mail command '/bin/sh' was killed by "
                                  "signal 15 (Terminated) after its timeout\n"));
    t_done();
}

static void test_timeout_sigkill(void **state)
{
    (void)state;
    /* SIGTERM ignored (sleep inherits that): SIGKILL kill_after_ms later. */
    t_init();
    struct hook_opts o = {.delay_ms = 10, .timeout_ms = 100, .kill_after_ms = 150};
    t_start(SH("trap '' TERM; echo started >> \"$1/runs\"; sleep 10"), &o);
    T.want_runs = 1;
    hook_note(T.h, "INBOX", 1);
    t_run();
    assert_int_equal(T.runs, 1);
    assert_true(T.res[0].timed_out);
    assert_int_equal(T.res[0].term_signal, SIGKILL);
    assert_true(T.t_done[0] >= T.t0 + 250);
    assert_true(T.t_done[0] < T.t0 + 5000);
    assert_non_null(strstr(T.log, "acct: on_new_mail command '/bin/sh' did not stop after "
                                  "SIGTERM: sending SIGKILL"));
    assert_non_null(strstr(T.log, "was killed by signal 9 (Killed) after its timeout"));
    t_done();
}

/* ---- output and failures ------------------------------------------------ */

static void test_output_in_log(void **state)
{
    (void)state;
    /* stdout and stderr line by line, in order, prefixed with the account;
     * a long line cut; a last line without newline; exit status 3 warned. */
    t_init();
    struct hook_opts o = {.delay_ms = 10, .max_line = 40};
    t_start(SH("echo hello; echo oops >&2; printf 'crlf\\r\\n';"
               " head -c 5000 /dev/zero | tr '\\0' x; echo; echo world;"
               " printf tail; exit 3"),
            &o);
    T.want_runs = 1;
    hook_note(T.h, "INBOX", 1);
    t_run();
    assert_int_equal(T.runs, 1);
    assert_int_equal(T.res[0].exit_status, 3);
    assert_int_equal(T.res[0].term_signal, 0);
    const char *want = "acct: on_new_mail: hello\n"
                       "acct: on_new_mail: oops\n"
                       "acct: on_new_mail: crlf\n"
                       "acct: on_new_mail: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx [cut]\n"
                       "acct: on_new_mail: world\n"
                       "acct: on_new_mail: tail\n"
                       "warning: acct: on_new_mail command '/bin/sh' exited with status 3\n";
    assert_string_equal(T.log, want);
    t_done();
}

static void test_exec_failure(void **state)
{
    (void)state;
    /* A command that does not exist: reported with the account, the
     * command and the reason; the next note tries again. */
    t_init();
    struct hook_opts o = {.delay_ms = 10};
    const char *argv[] = {"/nonexistent/mailsync-notify", "--flag", NULL};
    t_start(argv, &o);
    T.want_runs = 2;
    hook_note(T.h, "INBOX", 1);
    T.feed_n = 4;
    T.feed_left = 1;
    uv_timer_start(&T.feeder, on_feed, 100, 0);
    t_run();
    assert_int_equal(T.runs, 2);
    assert_int_equal(T.res[0].spawn_err, UV_ENOENT);
    assert_int_equal(T.res[1].spawn_err, UV_ENOENT);
    assert_int_equal(T.res[1].n_new, 4);
    const char *line = "warning: acct: on_new_mail command '/nonexistent/mailsync-notify' could "
                       "not be started: no such file or directory\n";
    const char *first = strstr(T.log, line);
    assert_non_null(first);
    assert_non_null(strstr(first + 1, line));
    t_done();
}

static void test_path_lookup(void **state)
{
    (void)state;
    /* argv[0] without a slash is looked up in PATH, as execvp does. */
    t_init();
    struct hook_opts o = {.delay_ms = 10};
    const char *argv[] = {"touch", "ran", NULL};
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(T.dir), 0);
    t_start(argv, &o);
    T.want_runs = 1;
    hook_note(T.h, NULL, 1);
    t_run();
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(T.res[0].exit_status, 0);
    char *ran = read_file(T.dir, "ran");
    assert_non_null(ran);
    free(ran);
    t_done();
}

/* ---- closing ------------------------------------------------------------ */

static void close_when_running(uv_timer_t *t)
{
    (void)t;
    if (!hook_running(T.h)) {
        return;
    }
    uv_timer_stop(&T.feeder);
    T.t0 = uv_now(&T.loop);
    close_hook();
}

static void test_close_kills_running(void **state)
{
    (void)state;
    /* hook_close with no grace while the command runs: SIGTERM at once,
     * the run reported, on_closed called, the loop closes clean. */
    t_init();
    struct hook_opts o = {.delay_ms = 10};
    t_start(SH("sleep 10"), &o);
    hook_note(T.h, "INBOX", 1);
    uv_timer_start(&T.feeder, close_when_running, 5, 5);
    t_run();
    assert_int_equal(T.runs, 1);
    assert_int_equal(T.res[0].term_signal, SIGTERM);
    assert_false(T.res[0].timed_out);
    assert_true(T.t_done[0] < T.t0 + 2000);
    /* Stopped on purpose: not a warning. */
    assert_string_equal(
        T.log, "acct: on_new_mail command '/bin/sh' stopped (signal 15): the account stops\n");
    t_done();
}

static void test_close_waits(void **state)
{
    (void)state;
    /* With a grace period a command that finishes within it completes. */
    t_init();
    struct hook_opts o = {.delay_ms = 10};
    t_start(SH("sleep 0.2; echo done > \"$1/done\""), &o);
    T.grace_ms = 5000;
    hook_note(T.h, "INBOX", 1);
    uv_timer_start(&T.feeder, close_when_running, 5, 5);
    t_run();
    assert_int_equal(T.runs, 1);
    assert_int_equal(T.res[0].exit_status, 0);
    assert_int_equal(T.res[0].term_signal, 0);
    char *done = read_file(T.dir, "done");
    assert_string_equal(done, "done\n");
    free(done);
    t_done();
}

static void test_close_drops_pending(void **state)
{
    (void)state;
    /* Notes still inside their window when the hook closes never run. */
    t_init();
    struct hook_opts o = {.delay_ms = 50};
    t_start(SH("echo ran > \"$1/ran\""), &o);
    hook_note(T.h, "INBOX", 1);
    close_hook();
    hook_note(T.h, "INBOX", 1); /* after close: ignored */
    assert_false(T.closed);     /* on_closed only from the loop */
    t_run();
    assert_int_equal(T.runs, 0);
    char path[128];
    snprintf(path, sizeof(path), "%s/ran", T.dir);
    assert_int_equal(access(path, F_OK), -1);
    t_done();
}

static void test_bad_args(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct hook *h = NULL;
    const char *empty[] = {NULL};
    struct hook_opts o = {.account = "acct", .argv = empty};
    assert_int_equal(hook_new(&loop, &o, &h), -EINVAL);
    o.argv = NULL;
    assert_int_equal(hook_new(&loop, &o, &h), -EINVAL);
    assert_null(h);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    log_set_level(LOG_LEVEL_INFO);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_environment),     cmocka_unit_test(test_child_env),
        cmocka_unit_test(test_coalescing),      cmocka_unit_test(test_no_overlap),
        cmocka_unit_test(test_timeout_sigterm), cmocka_unit_test(test_timeout_sigkill),
        cmocka_unit_test(test_output_in_log),   cmocka_unit_test(test_exec_failure),
        cmocka_unit_test(test_path_lookup),     cmocka_unit_test(test_close_kills_running),
        cmocka_unit_test(test_close_waits),     cmocka_unit_test(test_close_drops_pending),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
