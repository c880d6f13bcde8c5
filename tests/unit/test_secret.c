/* LINK: ms_sync ms_core */
/* secret_get: a configured password, and password_command run without a
 * shell: first line of stdout, CR/LF stripped, failures with clear text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sync/secret.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

struct outcome {
    int calls;
    int err;
    char *secret;
    char *msg;
    bool returned; /* secret_get had returned when the callback ran */
};

static void on_secret(int err, const char *secret, const char *msg, void *arg)
{
    struct outcome *o = arg;
    o->calls++;
    o->err = err;
    o->secret = secret ? strdup(secret) : NULL;
    o->msg = msg ? strdup(msg) : NULL;
}

static void run(const char *password, char *const *argv, unsigned timeout_ms, struct outcome *o)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct secret_req *req = NULL;
    memset(o, 0, sizeof(*o));
    assert_int_equal(secret_get(&loop, password, argv, timeout_ms, on_secret, o, &req), 0);
    /* Never called back from inside secret_get. */
    assert_int_equal(o->calls, 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(o->calls, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void clear(struct outcome *o)
{
    free(o->secret);
    free(o->msg);
}

static void test_password(void **state)
{
    struct outcome o;
    run("hunter2", NULL, 0, &o);
    assert_int_equal(o.err, 0);
    assert_string_equal(o.secret, "hunter2");
    clear(&o);
}

static void test_echo_first_line(void **state)
{
    char *argv[] = {"/bin/echo", "s3cret token", NULL};
    struct outcome o;
    run(NULL, argv, 0, &o);
    assert_int_equal(o.err, 0);
    assert_string_equal(o.secret, "s3cret token");
    clear(&o);
}

static void test_printf_crlf(void **state)
{
    char *argv[] = {"/usr/bin/printf", "pw-with-crlf\\r\\nsecond line\\n", NULL};
    struct outcome o;
    run(NULL, argv, 0, &o);
    assert_int_equal(o.err, 0);
    assert_string_equal(o.secret, "pw-with-crlf");
    clear(&o);
}

static void test_false(void **state)
{
    char *argv[] = {"/bin/false", NULL};
    struct outcome o;
    run(NULL, argv, 0, &o);
    assert_true(o.err < 0);
    assert_null(o.secret);
    assert_string_equal(o.msg, "password_command '/bin/false' exited with status 1");
    clear(&o);
}

static void test_stderr_reported(void **state)
{
    char *argv[] = {"/bin/sh", "-c", "echo 'gpg: decryption failed' >&2; exit 2", NULL};
    struct outcome o;
    run(NULL, argv, 0, &o);
    assert_true(o.err < 0);
    assert_string_equal(o.msg,
                        "password_command '/bin/sh' exited with status 2: gpg: decryption failed");
    clear(&o);
}

static void test_timeout(void **state)
{
    char *argv[] = {"/bin/sleep", "10", NULL};
    struct outcome o;
    uint64_t t0 = uv_hrtime();
    run(NULL, argv, 300, &o);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(o.err, -ETIMEDOUT);
    assert_string_equal(o.msg, "password_command '/bin/sleep' timed out after 0.3 s");
    assert_true(ms < 5000);
    clear(&o);
}

/* Gone, or a zombie waiting for a parent that is not us. */
static bool process_gone(long pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        return true;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp != NULL && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X');
}

/* Without a controlling terminal (systemd, cron), a command that times out
 * takes what it started with it: a helper left behind would keep running. */
static void test_timeout_kills_what_the_command_started(void **state)
{
    char dir[] = "/tmp/test_secret.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pidfile[128], script[512];
    snprintf(pidfile, sizeof(pidfile), "%s/pid", dir);
    snprintf(script, sizeof(script), "sleep 30 & echo $! > %s; sleep 30", pidfile);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    /* In a session of its own, as under systemd: no controlling terminal
     * even when the tests run on one. */
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        setsid();
        uv_loop_t loop;
        struct outcome o = {0};
        struct secret_req *req = NULL;
        if (uv_loop_init(&loop) != 0 ||
            secret_get(&loop, NULL, argv, 300, on_secret, &o, &req) != 0) {
            _exit(2);
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        _exit(o.calls == 1 && o.err == -ETIMEDOUT ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    FILE *fp = fopen(pidfile, "r");
    assert_non_null(fp);
    long pid = 0;
    assert_int_equal(fscanf(fp, "%ld", &pid), 1);
    fclose(fp);
    bool gone = false;
    for (int i = 0; i < 100 && !gone; i++) {
        gone = process_gone(pid);
        if (!gone) {
            usleep(20 * 1000);
        }
    }
    if (!gone) {
        kill((pid_t)pid, SIGKILL);
    }
    assert_true(gone);
    unlink(pidfile);
    rmdir(dir);
}

static void test_empty_output(void **state)
{
    char *argv[] = {"/bin/true", NULL};
    struct outcome o;
    run(NULL, argv, 0, &o);
    assert_true(o.err < 0);
    assert_string_equal(o.msg, "password_command '/bin/true' printed nothing on standard output");
    clear(&o);
}

static void test_missing_command(void **state)
{
    char *argv[] = {"/nonexistent/pass-helper", NULL};
    struct outcome o;
    run(NULL, argv, 0, &o);
    assert_true(o.err < 0);
    assert_string_equal(o.msg, "password_command '/nonexistent/pass-helper' could not be "
                               "started: no such file or directory");
    clear(&o);
}

static void test_cancel(void **state)
{
    char *argv[] = {"/bin/sleep", "10", NULL};
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct outcome o = {0};
    struct secret_req *req;
    assert_int_equal(secret_get(&loop, NULL, argv, 0, on_secret, &o, &req), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    secret_cancel(req);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(o.calls, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    /* The killed command was reaped: no zombie (nor any other child) is
     * left behind. */
    errno = 0;
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
}

/* The command does not inherit systemd's notify socket or watchdog: it
 * must not speak for the daemon. Other variables pass. */
static void test_no_notify_socket(void **state)
{
    (void)state;
    setenv("NOTIFY_SOCKET", "/run/user/0/systemd/notify", 1);
    setenv("WATCHDOG_USEC", "60000000", 1);
    setenv("MS_SECRET_TEST", "kept", 1);
    char *argv[] = {"/bin/sh", "-c",
                    "echo \"${NOTIFY_SOCKET:-none} ${WATCHDOG_USEC:-none} $MS_SECRET_TEST\"", NULL};
    struct outcome o;
    run(NULL, argv, 0, &o);
    assert_int_equal(o.err, 0);
    assert_string_equal(o.secret, "none none kept");
    clear(&o);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("MS_SECRET_TEST");
}

static void test_nothing_given(void **state)
{
    uv_loop_t loop;
    struct secret_req *req;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(secret_get(&loop, NULL, NULL, 0, on_secret, NULL, &req), -EINVAL);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_password),
        cmocka_unit_test(test_echo_first_line),
        cmocka_unit_test(test_printf_crlf),
        cmocka_unit_test(test_false),
        cmocka_unit_test(test_stderr_reported),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_timeout_kills_what_the_command_started),
        cmocka_unit_test(test_empty_output),
        cmocka_unit_test(test_missing_command),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_nothing_given),
        cmocka_unit_test(test_no_notify_socket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
