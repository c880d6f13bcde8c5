/* LINK: ms_core */
/* Helpers shared by every module: path expansion, directory creation,
 * string buffers, and the log's protection against control characters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/log.h"
#include "core/util.h"

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

static int collect_path(const char *path, void *arg)
{
    sbuf_addf(arg, "%s;", path);
    return 0;
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

    /* mkdir_p_each names exactly the directories whose fsync makes the new
     * entries durable: the parent of the one level made, or every parent
     * from the new leaf up to the parent of the first level made. */
    struct sbuf got = {0};
    char *leaf = xasprintf("%s/a/b/c/d", base);
    assert_int_equal(mkdir_p_each(leaf, 0700, collect_path, &got), 0);
    char *want = xasprintf("%s/a/b/c;", base);
    assert_string_equal(got.buf, want);
    free(want);
    sbuf_reset(&got);
    assert_int_equal(mkdir_p_each(leaf, 0700, collect_path, &got), 0);
    assert_int_equal(got.len, 0); /* there already: nothing to make durable */
    char *two = xasprintf("%s/x/y", base);
    assert_int_equal(mkdir_p_each(two, 0700, collect_path, &got), 0);
    want = xasprintf("%s/x;%s;", base, base);
    assert_string_equal(got.buf, want);
    assert_int_equal(stat(two, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    free(want);
    free(two);
    free(leaf);
    sbuf_free(&got);
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

/* C1 controls (U+009B is CSI on some terminals), bidi controls and bytes
 * that are not UTF-8 are replaced; other UTF-8 text is kept as it is. */
static void test_term_safe(void **state)
{
    (void)state;
    struct {
        const char *in, *out;
    } cases[] = {
        {"Entw\xc3\xbcrfe \xe2\x82\xac \xf0\x9f\x93\xa7",
         "Entw\xc3\xbcrfe \xe2\x82\xac \xf0\x9f\x93\xa7"},
        {"a\xc2\x9b"
         "31mred",
         "a?31mred"},                                     /* C1 CSI */
        {"x\xc2\x85y\xc2\x9fz\xc2\xa0", "x?y?z\xc2\xa0"}, /* NEL, APC; NBSP kept */
        {"inbox\xe2\x80\xae"
         "gpj.exe",
         "inbox?gpj.exe"}, /* RIGHT-TO-LEFT OVERRIDE */
        {"\xe2\x81\xa6"
         "a\xe2\x81\xa9\xe2\x80\x8f\xd8\x9c",
         "?a???"}, /* isolates, RLM, ALM */
        {"raw \x9b"
         "2J \xff \xc3",
         "raw ?2J ? ?"},                     /* not UTF-8 */
        {"\xed\xa0\x80 \xc0\xaf", "??? ??"}, /* surrogate, overlong */
        {"tab\tkept\x1b\x7f", "tab\tkept??"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *buf = xstrdup(cases[i].in);
        size_t n = term_safe(buf, strlen(buf));
        assert_true(n <= strlen(cases[i].in));
        buf[n] = '\0';
        assert_string_equal(buf, cases[i].out);
        free(buf);
    }
}

/* strindex: every added position is found under its hash, positions that
 * share a hash are all yielded (the caller tells them apart), unknown
 * hashes yield nothing, and reset empties it for reuse. */
static void test_strindex(void **state)
{
    struct strindex x = {0};
    char key[32];
    for (size_t i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "f/%05zu", i);
        strindex_add(&x, str_hash(key, strlen(key)), i);
    }
    /* Three more under one hash, as colliding names would be. */
    uint64_t same = str_hash("f/00007", 7);
    strindex_add(&x, same, 9001);
    strindex_add(&x, same, 9002);
    for (size_t i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "f/%05zu", i);
        size_t it = 0, pos, seen = 0;
        bool found = false;
        while (strindex_next(&x, str_hash(key, strlen(key)), &it, &pos)) {
            found = found || pos == i;
            seen++;
        }
        assert_true(found);
        assert_int_equal(seen, i == 7 ? 3 : 1);
    }
    size_t it = 0, pos;
    assert_false(strindex_next(&x, str_hash("absent", 6), &it, &pos));
    strindex_reset(&x);
    it = 0;
    assert_false(strindex_next(&x, same, &it, &pos));
    strindex_add(&x, same, 4);
    it = 0;
    assert_true(strindex_next(&x, same, &it, &pos));
    assert_int_equal(pos, 4);
    strindex_free(&x);
    it = 0;
    assert_false(strindex_next(&x, same, &it, &pos));
}

/* JSON strings: quotes, backslashes and controls escaped, stray bytes as
 * U+FFFD, U+2028 escaped, valid UTF-8 kept, NULL as null. */
static void test_sbuf_add_json(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"plain", "\"plain\""},
        {"a\"b\\c", "\"a\\\"b\\\\c\""},
        {"t\tn\nr\r\x01\x7f", "\"t\\tn\\nr\\r\\u0001\\u007f\""},
        {"caf\xc3\xa9 \xe8\x8d\x89\xe7\xa8\xbf", "\"caf\xc3\xa9 \xe8\x8d\x89\xe7\xa8\xbf\""},
        {"bad\xff\xc3", "\"bad\\ufffd\\ufffd\""},
        {"ls\xe2\x80\xa8", "\"ls\\u2028\""},
        {NULL, "null"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sbuf sb = {0};
        sbuf_add_json(&sb, cases[i].in);
        sbuf_addc(&sb, '\0');
        assert_string_equal(sb.buf, cases[i].out);
        sbuf_free(&sb);
    }
}

/* json_string_field reads back what sbuf_add_json writes, finds the key
 * among others, and refuses what is not a well-formed string. */
static void test_json_string_field(void **state)
{
    (void)state;
    const char *ins[] = {
        "plain", "a\"b\\c", "t\tn\nr\r\x01\x7f", "caf\xc3\xa9 \xe8\x8d\x89", "ls\xe2\x80\xa8", ""};
    for (size_t i = 0; i < sizeof(ins) / sizeof(ins[0]); i++) {
        struct sbuf sb = {0};
        sbuf_adds(&sb, "{\"ok\":true,\"texts\":1,\"text\":");
        sbuf_add_json(&sb, ins[i]);
        sbuf_adds(&sb, ",\"after\":\"x\"}");
        char *got = json_string_field(sb.buf, "text");
        assert_non_null(got);
        assert_string_equal(got, ins[i]);
        free(got);
        sbuf_free(&sb);
    }
    char *s = json_string_field("{\"k\" : \"\\ud83d\\ude00\\u00e9\\/\"}", "k");
    assert_string_equal(s, "\xf0\x9f\x98\x80\xc3\xa9/");
    free(s);
    assert_null(json_string_field("{\"k\":1}", "k"));
    assert_null(json_string_field("{\"other\":\"v\"}", "k"));
    assert_null(json_string_field("{\"k\":\"unterminated", "k"));
    assert_null(json_string_field("{\"k\":\"bad \\x escape\"}", "k"));
    assert_null(json_string_field("{\"k\":\"bad \\u12 hex\"}", "k"));

    unsigned long long v = 9;
    const char *j = "{\"ok\":true,\"no\":false,\"n\": 42,\"neg\":-1,\"f\":1.5,\"s\":\"3\"}";
    assert_int_equal(json_uint_field(j, "ok", &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(json_uint_field(j, "no", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(json_uint_field(j, "n", &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(json_uint_field(j, "neg", &v), -1);
    assert_int_equal(json_uint_field(j, "f", &v), -1);
    assert_int_equal(json_uint_field(j, "s", &v), -1);
    assert_int_equal(json_uint_field(j, "absent", &v), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_expand), cmocka_unit_test(test_mkdir_p),
        cmocka_unit_test(test_sbuf),        cmocka_unit_test(test_log_sanitizes),
        cmocka_unit_test(test_term_safe),   cmocka_unit_test(test_sbuf_add_json),
        cmocka_unit_test(test_strindex),    cmocka_unit_test(test_json_string_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
