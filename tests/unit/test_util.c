/* LINK: ms_core */
/* Helpers shared by every module: path expansion, directory creation,
 * string buffers, and the log's protection against control characters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "daemon/log.h"
#include "daemon/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_path_expand(void **state)
{
    (void)state;
    setenv("HOME", "/home/u", 1);
    setenv("MS_X", "xx", 1);
    unsetenv("MS_UNSET");
    char *out = NULL, *err = NULL;
    assert_int_equal(path_expand("~/Mail/$MS_X/${MS_X}y", &out, &err), 0);
    assert_string_equal(out, "/home/u/Mail/xx/xxy");
    free(out);
    assert_int_equal(path_expand("/a/~b/$", &out, &err), 0);
    assert_string_equal(out, "/a/~b/$");
    free(out);
    assert_int_equal(path_expand("/a/$MS_UNSET/b", &out, &err), -1);
    assert_string_equal(err, "environment variable $MS_UNSET is not set");
    free(err);
}

static void test_mkdir_p(void **state)
{
    (void)state;
    char base[] = "/tmp/test_util.XXXXXX";
    assert_non_null(mkdtemp(base));
    char *deep = xasprintf("%s/a/b/c", base);
    assert_int_equal(mkdir_p_durable(deep, 0700, true), 0);
    struct stat st;
    assert_int_equal(stat(deep, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    /* Existing: fine. A file in the way: -ENOTDIR. Empty: -EINVAL. */
    assert_int_equal(mkdir_p(deep, 0700), 0);
    char *file = xasprintf("%s/f", base);
    int fd = open(file, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(mkdir_p(file, 0700), -ENOTDIR);
    assert_int_equal(mkdir_p("", 0700), -EINVAL);
    char *cmd = xasprintf("rm -rf %s", base);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(file);
    free(deep);
}

static void test_sbuf(void **state)
{
    (void)state;
    struct sbuf sb = {0};
    sbuf_adds(&sb, "a");
    sbuf_addc(&sb, 'b');
    sbuf_addf(&sb, "%d", 42);
    sbuf_add(&sb, "xyz", 2);
    assert_string_equal(sb.buf, "ab42xy");
    assert_int_equal(sb.len, 6);
    char *s = sbuf_detach(&sb);
    assert_string_equal(s, "ab42xy");
    assert_null(sb.buf);
    free(s);
    char *j = path_join("/a/", "/b");
    assert_string_equal(j, "/a/b");
    free(j);
}

/* Text from a server may carry CR, LF or escape sequences: a log line must
 * stay one line and never drive the terminal. */
static void test_log_sanitizes(void **state)
{
    (void)state;
    char path[] = "/tmp/test_util_log.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    log_set_level(LOG_LEVEL_INFO);
    log_info("server says: %s", "hi\r\n* OK forged\x1b[2J\x7f end");
    log_debug("not shown at info level");
    log_warnx("tab\tkept");
    fflush(stderr);
    assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);
    char buf[512] = {0};
    assert_true(pread(fd, buf, sizeof(buf) - 1, 0) > 0);
    close(fd);
    unlink(path);
    assert_string_equal(buf, "server says: hi??* OK forged?[2J? end\n"
                             "warning: tab\tkept\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_expand),
        cmocka_unit_test(test_mkdir_p),
        cmocka_unit_test(test_sbuf),
        cmocka_unit_test(test_log_sanitizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
