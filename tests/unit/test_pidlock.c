/* LINK: ms_daemonctl ms_core */
/* One daemon per state directory (daemon/pidlock.c): the lock file's mode
 * and contents, a second taker refused with the holder's pid (a forked
 * child holding the lock, and a second open in the same process), a file
 * left by a killed holder taken over, and release. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "daemon/pidlock.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char *tmp_base(void)
{
    char tmpl[] = "/tmp/test_pidlock.XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    return xstrdup(tmpl);
}

static char *slurp(const char *path)
{
    char buf[256] = {0};
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    assert_true(n >= 0);
    close(fd);
    return xstrdup(buf);
}

static void rm_rf(const char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
}

/* A child that takes the lock, says so on a pipe, and then waits until
 * its stdin pipe closes (or it is killed). Returns its pid. */
static pid_t spawn_holder(const char *state_dir, int *release_fd_r)
{
    int ready[2], hold[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(hold), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        close(hold[1]);
        struct pidlock *lock = NULL;
        char *err = NULL;
        char c = pidlock_take(state_dir, &lock, NULL, &err) == 0 ? 'y' : 'n';
        if (write(ready[1], &c, 1) != 1) {
            _exit(2);
        }
        while (read(hold[0], &c, 1) > 0) {
        }
        pidlock_release(lock);
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    char c = 0;
    assert_int_equal(read(ready[0], &c, 1), 1);
    assert_int_equal(c, 'y');
    close(ready[0]);
    *release_fd_r = hold[1];
    return pid;
}

/* The first taker creates the state directory (0700) and a 0600 file
 * holding its pid; release empties the file and leaves it in place. */
static void test_take_and_release(void **state)
{
    (void)state;
    char *base = tmp_base();
    char *dir = path_join(base, "state");
    struct pidlock *lock = NULL;
    char *err = NULL;
    assert_int_equal(pidlock_take(dir, &lock, NULL, &err), 0);
    char *path = path_join(dir, "daemon.pid");
    assert_string_equal(pidlock_path(lock), path);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    char *text = slurp(path);
    char *want = xasprintf("%ld\n", (long)getpid());
    assert_string_equal(text, want);
    free(text);

    /* A second open in the same process is refused too: flock belongs to
     * the open file, not the process, so even a daemon that reloads its
     * configuration cannot take its own state directory twice. */
    struct pidlock *again = NULL;
    pid_t holder = 0;
    assert_int_equal(pidlock_take(dir, &again, &holder, &err), -EWOULDBLOCK);
    assert_null(again);
    assert_int_equal(holder, getpid());
    char *msg = xasprintf("another mailsync daemon (pid %ld) holds %s", (long)getpid(), dir);
    assert_string_equal(err, msg);
    free(msg);
    free(err);

    pidlock_release(lock);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 0);
    assert_int_equal(pidlock_take(dir, &lock, NULL, &err), 0);
    text = slurp(path);
    assert_string_equal(text, want);
    free(text);
    pidlock_release(lock);
    pidlock_release(NULL);
    free(want);
    free(path);
    free(dir);
    rm_rf(base);
    free(base);
}

/* A live holder in another process refuses us with its pid; once it
 * releases, we take the lock. */
static void test_child_holds(void **state)
{
    (void)state;
    char *dir = tmp_base();
    int release_fd;
    pid_t child = spawn_holder(dir, &release_fd);
    struct pidlock *lock = NULL;
    pid_t holder = 0;
    char *err = NULL;
    assert_int_equal(pidlock_take(dir, &lock, &holder, &err), -EWOULDBLOCK);
    assert_int_equal(holder, child);
    char *msg = xasprintf("another mailsync daemon (pid %ld) holds %s", (long)child, dir);
    assert_string_equal(err, msg);
    free(msg);
    free(err);

    close(release_fd);
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(pidlock_take(dir, &lock, NULL, &err), 0);
    pidlock_release(lock);
    rm_rf(dir);
    free(dir);
}

/* A holder killed with SIGKILL leaves its pid in the file but no lock: the
 * file is stale and taken over, with our pid written over its. */
static void test_stale_taken_over(void **state)
{
    (void)state;
    char *dir = tmp_base();
    int release_fd;
    pid_t child = spawn_holder(dir, &release_fd);
    assert_int_equal(kill(child, SIGKILL), 0);
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    close(release_fd);
    char *path = path_join(dir, "daemon.pid");
    char *text = slurp(path);
    char *old = xasprintf("%ld\n", (long)child);
    assert_string_equal(text, old);
    free(text);
    free(old);

    struct pidlock *lock = NULL;
    char *err = NULL;
    assert_int_equal(pidlock_take(dir, &lock, NULL, &err), 0);
    text = slurp(path);
    char *want = xasprintf("%ld\n", (long)getpid());
    assert_string_equal(text, want);
    free(text);
    free(want);
    pidlock_release(lock);
    free(path);
    rm_rf(dir);
    free(dir);
}

/* A file others can read is tightened to 0600; a symlink in its place is
 * refused rather than followed (it could point at any file of ours). */
static void test_mode_and_symlink(void **state)
{
    (void)state;
    char *dir = tmp_base();
    char *path = path_join(dir, "daemon.pid");
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    assert_true(fd >= 0);
    assert_int_equal(fchmod(fd, 0644), 0);
    close(fd);
    struct pidlock *lock = NULL;
    char *err = NULL;
    assert_int_equal(pidlock_take(dir, &lock, NULL, &err), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    pidlock_release(lock);

    assert_int_equal(unlink(path), 0);
    char *target = path_join(dir, "victim");
    fd = open(target, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "keep", 4), 4);
    close(fd);
    assert_int_equal(symlink(target, path), 0);
    assert_int_equal(pidlock_take(dir, &lock, NULL, &err), -ELOOP);
    assert_null(lock);
    char *msg = xasprintf("cannot open %s: %s", path, strerror(ELOOP));
    assert_string_equal(err, msg);
    free(msg);
    free(err);
    char *text = slurp(target);
    assert_string_equal(text, "keep");
    free(text);
    free(target);
    free(path);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_take_and_release),
        cmocka_unit_test(test_child_holds),
        cmocka_unit_test(test_stale_taken_over),
        cmocka_unit_test(test_mode_and_symlink),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
