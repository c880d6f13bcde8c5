/* LINK: ms_daemonctl ms_core */
/* The systemd notify protocol (daemon/sdnotify.c) against a test datagram
 * socket standing in for systemd: the exact datagrams for a path and an
 * abstract NOTIFY_SOCKET, no-ops without one, the watchdog's cadence on a
 * real loop (and its silence while the loop hangs, or when WATCHDOG_PID
 * names another process), the environment for child processes; and the
 * journal mode of core/log.c (priority prefixes, no timestamps, switched
 * on only when stderr is the stream JOURNAL_STREAM names). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/sdnotify.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char self_exe[4096];

struct listener {
    int fd;
    char dir[64];
    char path[100];
};

/* A datagram socket bound at a file path, set as NOTIFY_SOCKET. */
static void listen_path(struct listener *l)
{
    snprintf(l->dir, sizeof(l->dir), "/tmp/test_sdnotify.XXXXXX");
    assert_non_null(mkdtemp(l->dir));
    assert_true((size_t)snprintf(l->path, sizeof(l->path), "%s/notify", l->dir) < sizeof(l->path));
    l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(l->fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", l->path);
    assert_int_equal(bind(l->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    setenv("NOTIFY_SOCKET", l->path, 1);
}

/* The same with an abstract name: NOTIFY_SOCKET=@name. */
static void listen_abstract(struct listener *l)
{
    l->dir[0] = '\0';
    snprintf(l->path, sizeof(l->path), "@mailsync-test-sdnotify-%ld", (long)getpid());
    l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(l->fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(l->path);
    memcpy(sa.sun_path, l->path, len);
    sa.sun_path[0] = '\0';
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    assert_int_equal(bind(l->fd, (struct sockaddr *)&sa, salen), 0);
    setenv("NOTIFY_SOCKET", l->path, 1);
}

static void listener_close(struct listener *l)
{
    close(l->fd);
    if (l->dir[0] != '\0') {
        unlink(l->path);
        rmdir(l->dir);
    }
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

/* The next datagram within timeout_ms as a string (caller frees), or NULL
 * when none came. */
static char *recv_msg(struct listener *l, int timeout_ms)
{
    struct pollfd pfd = {.fd = l->fd, .events = POLLIN};
    if (poll(&pfd, 1, timeout_ms) != 1) {
        return NULL;
    }
    char buf[512];
    ssize_t n = recv(l->fd, buf, sizeof(buf) - 1, 0);
    assert_true(n >= 0);
    buf[n] = '\0';
    return xstrdup(buf);
}

static int drain(struct listener *l, const char *expect)
{
    int count = 0;
    char *msg;
    while ((msg = recv_msg(l, 0)) != NULL) {
        assert_string_equal(msg, expect);
        free(msg);
        count++;
    }
    return count;
}

static unsigned long long mono_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL;
}

static void expect_msg(struct listener *l, const char *want)
{
    char *got = recv_msg(l, 1000);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

/* Each call sends exactly one datagram with exactly the documented
 * assignments; a newline in a status cannot start an assignment of its
 * own. */
static void test_messages_path(void **state)
{
    (void)state;
    struct listener l;
    listen_path(&l);
    assert_int_equal(sdn_ready(), 0);
    expect_msg(&l, "READY=1");
    assert_int_equal(sdn_status("%d accounts, %s", 3, "2 idle\nREADY=1"), 0);
    expect_msg(&l, "STATUS=3 accounts, 2 idle READY=1");
    assert_int_equal(sdn_stopping(), 0);
    expect_msg(&l, "STOPPING=1");
    unsigned long long before = mono_usec();
    assert_int_equal(sdn_reloading(), 0);
    unsigned long long after = mono_usec();
    char *got = recv_msg(&l, 1000);
    assert_non_null(got);
    unsigned long long usec = 0;
    int used = 0;
    assert_int_equal(sscanf(got, "RELOADING=1\nMONOTONIC_USEC=%llu%n", &usec, &used), 1);
    assert_int_equal(used, (int)strlen(got));
    assert_true(usec >= before && usec <= after);
    free(got);
    assert_int_equal(sdn_notify("A=1\nB=2"), 0);
    expect_msg(&l, "A=1\nB=2");
    assert_null(recv_msg(&l, 0));
    listener_close(&l);
}

static void test_messages_abstract(void **state)
{
    (void)state;
    struct listener l;
    listen_abstract(&l);
    assert_int_equal(sdn_ready(), 0);
    expect_msg(&l, "READY=1");
    assert_int_equal(sdn_status("syncing %s", "work"), 0);
    expect_msg(&l, "STATUS=syncing work");
    assert_null(recv_msg(&l, 0));
    listener_close(&l);
}

/* Without NOTIFY_SOCKET nothing is sent and nothing fails; a form this
 * module does not speak, or a socket nobody listens on, is an error the
 * caller can log. */
static void test_unset_and_errors(void **state)
{
    (void)state;
    struct listener l;
    listen_path(&l);
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(sdn_ready(), 0);
    assert_int_equal(sdn_status("x"), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    assert_int_equal(sdn_stopping(), 0);
    assert_null(recv_msg(&l, 50));
    setenv("NOTIFY_SOCKET", "vsock:2:1234", 1);
    assert_int_equal(sdn_ready(), -EAFNOSUPPORT);
    char *missing = xasprintf("%s/nobody", l.dir);
    setenv("NOTIFY_SOCKET", missing, 1);
    assert_int_equal(sdn_ready(), -ENOENT);
    free(missing);
    char longname[200];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[0] = '/';
    longname[sizeof(longname) - 1] = '\0';
    setenv("NOTIFY_SOCKET", longname, 1);
    assert_int_equal(sdn_ready(), -ENAMETOOLONG);
    listener_close(&l);
}

struct wd_test {
    struct listener *l;
    uv_timer_t hang, stop;
    int during_hang;
    int before_hang;
    struct sdn_watchdog *wd;
};

/* Blocks the loop for 250 ms, five intervals: a watchdog driven by the
 * loop must not ping meanwhile. */
static void on_hang(uv_timer_t *t)
{
    struct wd_test *wt = t->data;
    wt->before_hang = drain(wt->l, "WATCHDOG=1");
    usleep(250000);
    wt->during_hang = drain(wt->l, "WATCHDOG=1");
}

static void on_stop(uv_timer_t *t)
{
    struct wd_test *wt = t->data;
    sdn_watchdog_stop(wt->wd);
    uv_close((uv_handle_t *)&wt->hang, NULL);
    uv_close((uv_handle_t *)&wt->stop, NULL);
}

/* WATCHDOG_USEC=100000: WATCHDOG=1 every 50 ms from the loop (about six
 * in the first 320 ms), none while the loop is blocked, and pings again
 * once it runs; after sdn_watchdog_stop the loop closes clean. */
static void test_watchdog_cadence(void **state)
{
    (void)state;
    struct listener l;
    listen_path(&l);
    setenv("WATCHDOG_USEC", "100000", 1);
    unsetenv("WATCHDOG_PID");
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct wd_test wt = {.l = &l};
    assert_int_equal(sdn_watchdog_start(&loop, &wt.wd), 1);
    assert_non_null(wt.wd);
    assert_int_equal(sdn_watchdog_interval_usec(wt.wd), 50000);
    uv_timer_init(&loop, &wt.hang);
    uv_timer_init(&loop, &wt.stop);
    wt.hang.data = wt.stop.data = &wt;
    uv_timer_start(&wt.hang, on_hang, 320, 0);
    uv_timer_start(&wt.stop, on_stop, 700, 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    /* 320 ms / 50 ms: 6 pings; a loaded machine (sanitizers, 2 shared
     * cores) may fire a late timer once less, never more. */
    assert_true(wt.before_hang >= 4 && wt.before_hang <= 6);
    assert_int_equal(wt.during_hang, 0);
    /* From the end of the hang (570 ms) to the stop (700 ms): pings again. */
    int after = drain(&l, "WATCHDOG=1");
    assert_true(after >= 1 && after <= 4);
    assert_int_equal(uv_loop_close(&loop), 0);
    listener_close(&l);
}

/* The watchdog timer is unreferenced: a loop with nothing else to do
 * returns at once instead of pinging forever. */
static void test_watchdog_unref(void **state)
{
    (void)state;
    struct listener l;
    listen_path(&l);
    setenv("WATCHDOG_USEC", "20000", 1);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct sdn_watchdog *wd = NULL;
    assert_int_equal(sdn_watchdog_start(&loop, &wd), 1);
    unsigned long long t0 = mono_usec();
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_true(mono_usec() - t0 < 10000);
    sdn_watchdog_stop(wd);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_null(recv_msg(&l, 0));
    listener_close(&l);
}

static void on_quit(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, NULL);
}

/* Runs a loop with wd (if any) for ms and returns the pings received. */
static int pings_in(struct listener *l, int ms, int expect_rc, const char *usec, const char *pid)
{
    setenv("WATCHDOG_USEC", usec, 1);
    if (pid != NULL) {
        setenv("WATCHDOG_PID", pid, 1);
    } else {
        unsetenv("WATCHDOG_PID");
    }
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct sdn_watchdog *wd = (struct sdn_watchdog *)&loop; /* must be reset */
    assert_int_equal(sdn_watchdog_start(&loop, &wd), expect_rc);
    if (expect_rc != 1) {
        assert_null(wd);
    }
    uv_timer_t quit;
    uv_timer_init(&loop, &quit);
    uv_timer_start(&quit, on_quit, (uint64_t)ms, 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    sdn_watchdog_stop(wd);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    return drain(l, "WATCHDOG=1");
}

/* WATCHDOG_PID of another process (the variable leaked into a shell or a
 * child) disables the watchdog; our own pid enables it; a malformed value
 * is -EINVAL; without NOTIFY_SOCKET there is no watchdog. */
static void test_watchdog_pid(void **state)
{
    (void)state;
    struct listener l;
    listen_path(&l);
    char other[32], self[32];
    snprintf(other, sizeof(other), "%ld", (long)getppid());
    snprintf(self, sizeof(self), "%ld", (long)getpid());
    assert_int_equal(pings_in(&l, 150, 0, "20000", other), 0);
    assert_true(pings_in(&l, 150, 1, "20000", self) >= 3);
    assert_int_equal(pings_in(&l, 50, -EINVAL, "20000", "12x"), 0);
    assert_int_equal(pings_in(&l, 50, -EINVAL, "soon", NULL), 0);
    assert_int_equal(pings_in(&l, 50, -EINVAL, "0", NULL), 0);
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(pings_in(&l, 50, 0, "20000", NULL), 0);
    listener_close(&l);
}

static char *file_text(int fd)
{
    char buf[1024] = {0};
    assert_true(pread(fd, buf, sizeof(buf) - 1, 0) >= 0);
    return xstrdup(buf);
}

/* JOURNAL_STREAM is "DEV:INO" of the file on the descriptor, nothing else. */
static void test_journal_stream_matches(void **state)
{
    (void)state;
    char path[] = "/tmp/test_sdnotify_log.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    char buf[64];
    snprintf(buf, sizeof(buf), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    assert_int_equal(log_journal_stream_matches(buf, fd), 1);
    snprintf(buf, sizeof(buf), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino + 1);
    assert_int_equal(log_journal_stream_matches(buf, fd), 0);
    snprintf(buf, sizeof(buf), "%llu:%llux", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    assert_int_equal(log_journal_stream_matches(buf, fd), 0);
    assert_int_equal(log_journal_stream_matches(":", fd), 0);
    assert_int_equal(log_journal_stream_matches("", fd), 0);
    assert_int_equal(log_journal_stream_matches(NULL, fd), 0);
    close(fd);
    unlink(path);
}

/* In journal mode each level carries its syslog priority and no
 * timestamp, even when timestamps were asked for. */
static void test_journal_prefixes(void **state)
{
    (void)state;
    char path[] = "/tmp/test_sdnotify_log.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    enum log_level old = log_get_level();
    log_set_level(LOG_LEVEL_TRACE);
    log_set_timestamps(1);
    log_set_journal(1);
    assert_int_equal(log_get_journal(), 1);
    log_error("e %d", 1);
    errno = ENOENT;
    log_warn("w");
    log_warnx("wx");
    log_info("i");
    log_debug("d");
    log_trace("t");
    log_set_journal(0);
    log_set_timestamps(0);
    log_info("plain");
    log_set_level(old);
    fflush(stderr);
    assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);
    char *text = file_text(fd);
    char *want = xasprintf("<3>error: e 1\n<4>warning: w: %s\n<4>warning: wx\n<6>i\n"
                           "<7>debug: d\n<7>trace: t\nplain\n",
                           strerror(ENOENT));
    assert_string_equal(text, want);
    free(want);
    free(text);
    close(fd);
    unlink(path);
}

/* The automatic switch, in a fresh process (the decision is made once,
 * before the first line): re-executes this test program with
 * --log-child, stderr on a file, and JOURNAL_STREAM naming that file or
 * another one. */
static void run_log_child(int match, const char *want)
{
    char path[] = "/tmp/test_sdnotify_log.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    char value[64];
    snprintf(value, sizeof(value), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino + (match ? 0 : 1));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fd, STDERR_FILENO);
        setenv("JOURNAL_STREAM", value, 1);
        execl(self_exe, self_exe, "--log-child", (char *)NULL);
        _exit(127);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char *text = file_text(fd);
    assert_string_equal(text, want);
    free(text);
    close(fd);
    unlink(path);
}

static void test_journal_auto(void **state)
{
    (void)state;
    run_log_child(1, "<4>warning: child\n<6>info line\n");
    run_log_child(0, "warning: child\ninfo line\n");
}

static int log_child(void)
{
    log_set_timestamps(0);
    log_warnx("child");
    log_info("info line");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--log-child") == 0) {
        return log_child();
    }
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
    if (n <= 0) {
        return 1;
    }
    self_exe[n] = '\0';
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_messages_path),          cmocka_unit_test(test_messages_abstract),
        cmocka_unit_test(test_unset_and_errors),       cmocka_unit_test(test_watchdog_cadence),
        cmocka_unit_test(test_watchdog_unref),         cmocka_unit_test(test_watchdog_pid),
        cmocka_unit_test(test_journal_stream_matches), cmocka_unit_test(test_journal_prefixes),
        cmocka_unit_test(test_journal_auto),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
