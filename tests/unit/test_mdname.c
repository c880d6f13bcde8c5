/* LINK: ms_store ms_core */
/* Folder names <-> local paths: hostile names stay under the root, the
 * mapping reverses exactly through md_list_folders on a real tree, and
 * md_folder_remove only removes empty folders. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "store/maildir.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ROOT "/srv/mail"

struct name_case {
    const char *name;
    int ret;               /* expected return */
    const char *verbatim;  /* path relative to ROOT, verbatim layout */
    const char *maildirpp; /* path relative to ROOT, maildir++ ("" is ROOT) */
    const char *canon;     /* the name md_list_folders gives back */
};

static const struct name_case cases[] = {
    {"INBOX", 0, "INBOX", "", "INBOX"},
    {"inbox", 0, "INBOX", "", "INBOX"},
    {"InBoX/Sub", 0, "INBOX/Sub", ".INBOX.Sub", "INBOX/Sub"},
    {"inbox/Sub", 0, "INBOX/Sub", ".INBOX.Sub", "INBOX/Sub"},
    {"Sub/INBOX", 0, "Sub/INBOX", ".Sub.INBOX", "Sub/INBOX"},
    {"INBOX.x", 0, "INBOX.x", ".INBOX%2Ex", "INBOX.x"},
    {"Lists/dev", 0, "Lists/dev", ".Lists.dev", "Lists/dev"},
    {"Sent Items", 0, "Sent Items", ".Sent Items", "Sent Items"},
    {"..", 0, "%2E.", ".%2E%2E", ".."},
    {".", 0, "%2E", ".%2E", "."},
    {"../etc", 0, "%2E./etc", ".%2E%2E.etc", "../etc"},
    {"a/../../b", 0, "a/%2E./%2E./b", ".a.%2E%2E.%2E%2E.b", "a/../../b"},
    {".hidden", 0, "%2Ehidden", ".%2Ehidden", ".hidden"},
    {"a.b", 0, "a.b", ".a%2Eb", "a.b"},
    {"a..b.", 0, "a..b.", ".a%2E%2Eb%2E", "a..b."},
    {"cur", 0, "%63ur", ".%63ur", "cur"},
    {"new", 0, "%6Eew", ".%6Eew", "new"},
    {"tmp", 0, "%74mp", ".%74mp", "tmp"},
    {"x/new", 0, "x/%6Eew", ".x.%6Eew", "x/new"},
    {"cur/tmp/new", 0, "%63ur/%74mp/%6Eew", ".%63ur.%74mp.%6Eew", "cur/tmp/new"},
    {"Cur", 0, "Cur", ".Cur", "Cur"},
    {"curl", 0, "curl", ".curl", "curl"},
    {"%", 0, "%25", ".%25", "%"},
    {"100%/a%41", 0, "100%25/a%2541", ".100%25.a%2541", "100%/a%41"},
    {"a\tb\x7f", 0, "a%09b%7F", ".a%09b%7F", "a\tb\x7f"},
    {"\x01\x1f", 0, "%01%1F", ".%01%1F", "\x01\x1f"},
    {"line\nbreak", 0, "line%0Abreak", ".line%0Abreak", "line\nbreak"},
    {"Entwürfe", 0, "Entwürfe", ".Entwürfe", "Entwürfe"},
    {"日本語/メール", 0, "日本語/メール", ".日本語.メール", "日本語/メール"},
    {"~user", 0, "~user", ".~user", "~user"},
    {"back\\slash", 0, "back\\slash", ".back\\slash", "back\\slash"},
    {"maildirfolder", 0, "maildirfolder", ".maildirfolder", "maildirfolder"},
    {"", -EINVAL, NULL, NULL, NULL},
    {"/", -EINVAL, NULL, NULL, NULL},
    {"/a", -EINVAL, NULL, NULL, NULL},
    {"a/", -EINVAL, NULL, NULL, NULL},
    {"a//b", -EINVAL, NULL, NULL, NULL},
    {"INBOX/", -EINVAL, NULL, NULL, NULL},
    {"\xff", -EILSEQ, NULL, NULL, NULL},
    {"a\xc3", -EILSEQ, NULL, NULL, NULL},
    {"\xc0\xaf", -EILSEQ, NULL, NULL, NULL},         /* overlong '/' */
    {"\xe0\x80\xaf", -EILSEQ, NULL, NULL, NULL},     /* overlong '/' */
    {"\xed\xa0\x80", -EILSEQ, NULL, NULL, NULL},     /* surrogate */
    {"\xf4\x90\x80\x80", -EILSEQ, NULL, NULL, NULL}, /* above U+10FFFF */
    {"Entw\xfcrfe", -EILSEQ, NULL, NULL, NULL},      /* Latin-1, not UTF-8 */
};

static void check_under_root(const char *root, enum md_layout layout, const char *name,
                             const char *path)
{
    size_t rl = strlen(root);
    assert_memory_equal(path, root, rl);
    if (path[rl] == '\0') {
        /* Only maildir++ INBOX maps to the root itself. */
        assert_int_equal(layout, MD_LAYOUT_MAILDIRPP);
        assert_int_equal(strncasecmp(name, "INBOX", 5), 0);
        assert_int_equal(strlen(name), 5);
        return;
    }
    assert_int_equal(path[rl], '/');
    const char *rel = path + rl + 1;
    assert_true(rel[0] != '\0');
    if (layout == MD_LAYOUT_MAILDIRPP) {
        /* One directory entry: a leading '.', then levels that are never
         * empty and never start with '.'. */
        assert_null(strchr(rel, '/'));
        assert_int_equal(rel[0], '.');
        assert_true(rel[1] != '.' && rel[1] != '\0');
        assert_null(strstr(rel, ".."));
        assert_true(rel[strlen(rel) - 1] != '.');
        assert_true(strlen(rel) <= 255);
        return;
    }
    const char *p = rel;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash != NULL ? (size_t)(slash - p) : strlen(p);
        assert_true(len > 0 && len <= 255);
        assert_true(p[0] != '.');
        assert_false(len == 3 && (strncmp(p, "cur", 3) == 0 || strncmp(p, "new", 3) == 0 ||
                                  strncmp(p, "tmp", 3) == 0));
        if (slash == NULL) {
            break;
        }
        p = slash + 1;
    }
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const struct name_case *c = &cases[i];
        for (int l = 0; l < 2; l++) {
            enum md_layout layout = l == 0 ? MD_LAYOUT_VERBATIM : MD_LAYOUT_MAILDIRPP;
            char *path = (char *)1;
            int ret = md_folder_local_path(ROOT, layout, c->name, &path);
            if (ret != c->ret) {
                fail_msg("case %zu (layout %d): got %d, expected %d", i, l, ret, c->ret);
            }
            if (ret != 0) {
                assert_null(path);
                continue;
            }
            const char *rel = l == 0 ? c->verbatim : c->maildirpp;
            char *want = rel[0] != '\0' ? xasprintf("%s/%s", ROOT, rel) : xstrdup(ROOT);
            if (strcmp(path, want) != 0) {
                fail_msg("case %zu (layout %d): got '%s', expected '%s'", i, l, path, want);
            }
            check_under_root(ROOT, layout, c->name, path);
            free(want);
            free(path);
        }
    }
    /* A trailing '/' on the root changes nothing. */
    char *path = NULL;
    assert_int_equal(md_folder_local_path(ROOT "/", MD_LAYOUT_MAILDIRPP, "INBOX", &path), 0);
    assert_string_equal(path, ROOT);
    free(path);
    assert_int_equal(md_folder_local_path(ROOT "/", MD_LAYOUT_VERBATIM, "a/b", &path), 0);
    assert_string_equal(path, ROOT "/a/b");
    free(path);
}

static void test_lengths(void **state)
{
    (void)state;
    char name[1024];
    char *path = NULL;
    /* Verbatim: each component at most 255 bytes after encoding. */
    memset(name, 'a', 255);
    name[255] = '\0';
    assert_int_equal(md_folder_local_path(ROOT, MD_LAYOUT_VERBATIM, name, &path), 0);
    free(path);
    name[255] = 'a';
    name[256] = '\0';
    assert_int_equal(md_folder_local_path(ROOT, MD_LAYOUT_VERBATIM, name, &path), -EINVAL);
    memset(name, '%', 85); /* 255 bytes encoded */
    name[85] = '\0';
    assert_int_equal(md_folder_local_path(ROOT, MD_LAYOUT_VERBATIM, name, &path), 0);
    free(path);
    name[85] = '%';
    name[86] = '\0';
    assert_int_equal(md_folder_local_path(ROOT, MD_LAYOUT_VERBATIM, name, &path), -EINVAL);
    /* Three 100-byte levels: fine as directories, too long as one
     * maildir++ entry. */
    memset(name, 'b', 302);
    name[100] = name[201] = '/';
    name[302] = '\0';
    assert_int_equal(md_folder_local_path(ROOT, MD_LAYOUT_VERBATIM, name, &path), 0);
    free(path);
    assert_int_equal(md_folder_local_path(ROOT, MD_LAYOUT_MAILDIRPP, name, &path), -EINVAL);
    memset(name, 'c', 254);
    name[254] = '\0';
    assert_int_equal(md_folder_local_path(ROOT, MD_LAYOUT_MAILDIRPP, name, &path), 0);
    assert_int_equal(strlen(strrchr(path, '/') + 1), 255);
    free(path);
    name[254] = 'c';
    name[255] = '\0';
    assert_int_equal(md_folder_local_path(ROOT, MD_LAYOUT_MAILDIRPP, name, &path), -EINVAL);
}

/* ---- Real trees ------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static char *make_root(void)
{
    const char *tmpdir = getenv("TMPDIR");
    char *tmpl = xasprintf("%s/test_mdname.XXXXXX", tmpdir != NULL ? tmpdir : "/tmp");
    if (mkdtemp(tmpl) == NULL) {
        fail_msg("mkdtemp: %s", strerror(errno));
    }
    return tmpl;
}

static void free_root(char *root)
{
    nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(root);
}

static void create_folder(const char *root, enum md_layout layout, const char *name)
{
    char *path = NULL;
    assert_int_equal(md_folder_local_path(root, layout, name, &path), 0);
    struct md_folder *f = NULL;
    bool sub = layout == MD_LAYOUT_MAILDIRPP && strcmp(path, root) != 0;
    assert_int_equal(md_folder_open(path, true, sub, &f, NULL), 0);
    md_folder_close(f);
    free(path);
}

/* A Maildir-shaped directory made by hand, bypassing the encoder. */
static void make_maildir(const char *root, const char *rel)
{
    char *path = path_join(root, rel);
    struct md_folder *f = NULL;
    assert_int_equal(md_folder_open(path, true, false, &f, NULL), 0);
    md_folder_close(f);
    free(path);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts and deduplicates a list of names in place; returns the count. */
static size_t sort_unique(const char **v, size_t n)
{
    qsort(v, n, sizeof(*v), str_cmp);
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        if (out == 0 || strcmp(v[out - 1], v[i]) != 0) {
            v[out++] = v[i];
        }
    }
    return out;
}

static void expect_list(const char *root, enum md_layout layout, const char **want, size_t n)
{
    char **names = NULL;
    size_t count = 0;
    assert_int_equal(md_list_folders(root, layout, &names, &count), 0);
    n = sort_unique(want, n);
    for (size_t i = 0; i < count && i < n; i++) {
        if (strcmp(names[i], want[i]) != 0) {
            fail_msg("layout %d: entry %zu is '%s', expected '%s'", layout, i, names[i], want[i]);
        }
    }
    if (count != n) {
        for (size_t i = 0; i < count; i++) {
            print_message("listed: '%s'\n", names[i]);
        }
        fail_msg("layout %d: %zu folders listed, expected %zu", layout, count, n);
    }
    md_free_names(names, count);
}

static void roundtrip_table(enum md_layout layout)
{
    char *root = make_root();
    const char *want[ARRAY_SIZE(cases)];
    size_t n = 0;
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        if (cases[i].ret == 0) {
            create_folder(root, layout, cases[i].name);
            want[n++] = cases[i].canon;
        }
    }
    expect_list(root, layout, want, n);
    free_root(root);
}

static void test_roundtrip_verbatim(void **state)
{
    (void)state;
    roundtrip_table(MD_LAYOUT_VERBATIM);
}

static void test_roundtrip_maildirpp(void **state)
{
    (void)state;
    roundtrip_table(MD_LAYOUT_MAILDIRPP);
}

/* Random names made of the troublesome pieces: every one either is refused
 * or maps under the root and lists back as itself. */
static void test_roundtrip_random(void **state)
{
    (void)state;
    static const char *const pieces[] = {".", "%",  "/",   "cur",   "new", "a",    "Z",  "\x01",
                                         "ü", "..", "%2E", "INBOX", " ",   "\x7f", "tmp"};
    for (int l = 0; l < 2; l++) {
        enum md_layout layout = l == 0 ? MD_LAYOUT_VERBATIM : MD_LAYOUT_MAILDIRPP;
        char *root = make_root();
        enum {
            N = 300
        };
        char **made = xcalloc(N, sizeof(*made));
        const char **want = xcalloc(N, sizeof(*want));
        size_t n = 0;
        uint32_t seed = 99u + (uint32_t)l;
        for (int i = 0; i < N; i++) {
            struct sbuf sb = {0};
            int len = 1 + (int)((seed >> 8) % 6);
            for (int k = 0; k < len; k++) {
                seed = seed * 1664525u + 1013904223u;
                sbuf_adds(&sb, pieces[(seed >> 16) % ARRAY_SIZE(pieces)]);
            }
            char *name = sbuf_detach(&sb);
            char *path = NULL;
            int ret = md_folder_local_path(root, layout, name, &path);
            if (ret != 0) {
                /* Only empty levels can be wrong with these pieces. */
                assert_int_equal(ret, -EINVAL);
                assert_true(name[0] == '/' || name[strlen(name) - 1] == '/' ||
                            strstr(name, "//") != NULL);
                free(name);
                continue;
            }
            check_under_root(root, layout, name, path);
            free(path);
            create_folder(root, layout, name);
            /* INBOX spelled in any case comes back as "INBOX". */
            if (strncasecmp(name, "INBOX", 5) == 0 && (name[5] == '\0' || name[5] == '/')) {
                memcpy(name, "INBOX", 5);
            }
            made[n] = name;
            want[n] = name;
            n++;
        }
        assert_true(n > 100);
        expect_list(root, layout, want, n);
        for (size_t i = 0; i < n; i++) {
            free(made[i]);
        }
        free(made);
        free(want);
        free_root(root);
    }
}

/* The unusable Maildir folders md_list_folders_unusable reports, as paths
 * relative to root, compared with want (sorted). */
static void expect_unusable(const char *root, enum md_layout layout, const char *const *want,
                            size_t nwant)
{
    char **names = NULL, **bad = NULL;
    size_t n = 0, nbad = 0;
    assert_int_equal(md_list_folders_unusable(root, layout, &names, &n, &bad, &nbad), 0);
    size_t rl = strlen(root);
    assert_int_equal(nbad, nwant);
    for (size_t i = 0; i < nbad; i++) {
        assert_memory_equal(bad[i], root, rl);
        assert_string_equal(bad[i] + rl + 1, want[i]);
    }
    md_free_names(names, n);
    md_free_names(bad, nbad);
}

static void test_list_skips_foreign_verbatim(void **state)
{
    (void)state;
    char *root = make_root();
    create_folder(root, MD_LAYOUT_VERBATIM, "INBOX");
    create_folder(root, MD_LAYOUT_VERBATIM, "Lists/dev");
    create_folder(root, MD_LAYOUT_VERBATIM, "a.b");
    /* Directories the encoder never writes: not folders of ours. */
    make_maildir(root, ".notmuch");
    make_maildir(root, "inbox");
    make_maildir(root, "100%");
    make_maildir(root, "a%41");
    make_maildir(root, "x%2Fy");
    make_maildir(root, "bad%00");
    make_maildir(root, "Lists/cur/inside");
    make_maildir(root, "%2E%2E");
    /* A plain directory in between is descended into. */
    make_maildir(root, "plain/sub");
    /* A symbolic link to a folder is not followed. */
    char *target = path_join(root, "Lists/dev");
    char *link = path_join(root, "link");
    assert_int_equal(symlink(target, link), 0);
    /* A file with a folder-like name is not a folder. */
    char *file = path_join(root, "file");
    int fd = open(file, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    const char *want[] = {"INBOX", "Lists/dev", "a.b", "plain/sub"};
    expect_list(root, MD_LAYOUT_VERBATIM, want, ARRAY_SIZE(want));
    /* Those with cur/ new/ tmp/ are reported (dot directories are never
     * ours, and what is inside cur/ is a folder's own business). */
    const char *unusable[] = {"%2E%2E", "100%", "a%41", "bad%00", "inbox", "x%2Fy"};
    expect_unusable(root, MD_LAYOUT_VERBATIM, unusable, ARRAY_SIZE(unusable));
    free(target);
    free(link);
    free(file);
    free_root(root);

    /* A missing root is an error, not an empty list. */
    char **names = NULL;
    size_t count = 5;
    assert_int_equal(md_list_folders("/nonexistent/mail/root", MD_LAYOUT_VERBATIM, &names, &count),
                     -ENOENT);
    assert_int_equal(count, 0);
    assert_null(names);
}

static void test_list_skips_foreign_maildirpp(void **state)
{
    (void)state;
    char *root = make_root();
    /* Without cur/new/tmp in the root there is no INBOX. */
    create_folder(root, MD_LAYOUT_MAILDIRPP, "Lists/dev");
    const char *want1[] = {"Lists/dev"};
    expect_list(root, MD_LAYOUT_MAILDIRPP, want1, 1);

    create_folder(root, MD_LAYOUT_MAILDIRPP, "INBOX");
    create_folder(root, MD_LAYOUT_MAILDIRPP, "a.b");
    make_maildir(root, ".a..b");
    make_maildir(root, ".inbox.x");
    make_maildir(root, ".INBOX");
    make_maildir(root, "...");
    make_maildir(root, ".trailing.");
    make_maildir(root, "nodot");
    make_maildir(root, ".bad%zz");
    make_maildir(root, ".x%2Fy");
    const char *want2[] = {"INBOX", "Lists/dev", "a.b"};
    expect_list(root, MD_LAYOUT_MAILDIRPP, want2, ARRAY_SIZE(want2));
    const char *unusable[] = {"...",      ".INBOX",     ".a..b", ".bad%zz",
                              ".inbox.x", ".trailing.", ".x%2Fy"};
    expect_unusable(root, MD_LAYOUT_MAILDIRPP, unusable, ARRAY_SIZE(unusable));
    free_root(root);
}

/* ---- Removal ---------------------------------------------------------- */

static void put_file(const char *dir, const char *rel)
{
    char *p = path_join(dir, rel);
    int fd = open(p, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    free(p);
}

static bool dir_exists(const char *dir, const char *rel)
{
    char *p = path_join(dir, rel);
    struct stat st;
    bool ok = stat(p, &st) == 0 && S_ISDIR(st.st_mode);
    free(p);
    return ok;
}

static void test_folder_remove(void **state)
{
    (void)state;
    char *root = make_root();
    create_folder(root, MD_LAYOUT_VERBATIM, "Full");
    create_folder(root, MD_LAYOUT_VERBATIM, "NewOnly");
    create_folder(root, MD_LAYOUT_VERBATIM, "Empty");
    create_folder(root, MD_LAYOUT_VERBATIM, "Parent");
    create_folder(root, MD_LAYOUT_VERBATIM, "Parent/Child");
    char *full = path_join(root, "Full");
    char *newonly = path_join(root, "NewOnly");
    char *empty = path_join(root, "Empty");
    char *parent = path_join(root, "Parent");

    put_file(full, "cur/1.a.host:2,S");
    assert_int_equal(md_folder_remove(full), -ENOTEMPTY);
    assert_true(dir_exists(full, "cur") && dir_exists(full, "new") && dir_exists(full, "tmp"));

    /* Mail in new/ only: cur/ is put back, the folder still works. */
    put_file(newonly, "new/2.b.host");
    assert_int_equal(md_folder_remove(newonly), -ENOTEMPTY);
    assert_true(dir_exists(newonly, "cur") && dir_exists(newonly, "new") &&
                dir_exists(newonly, "tmp"));

    /* Empty apart from tmp/ debris and metadata: gone entirely. */
    put_file(empty, "tmp/3.c.host");
    put_file(empty, "dovecot-keywords");
    put_file(empty, "maildirfolder");
    assert_int_equal(md_folder_remove(empty), 0);
    struct stat st;
    assert_int_equal(stat(empty, &st), -1);
    assert_int_equal(errno, ENOENT);

    /* A parent with a subfolder: it stops being a folder, the child stays. */
    assert_int_equal(md_folder_remove(parent), 0);
    assert_true(dir_exists(parent, "Child/cur"));
    assert_false(dir_exists(parent, "cur"));
    const char *want[] = {"Full", "NewOnly", "Parent/Child"};
    expect_list(root, MD_LAYOUT_VERBATIM, want, ARRAY_SIZE(want));

    /* Not a folder at all. */
    char *missing = path_join(root, "Missing");
    assert_int_equal(md_folder_remove(missing), -ENOENT);

    free(missing);
    free(full);
    free(newonly);
    free(empty);
    free(parent);
    free_root(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_roundtrip_verbatim),
        cmocka_unit_test(test_roundtrip_maildirpp),
        cmocka_unit_test(test_roundtrip_random),
        cmocka_unit_test(test_list_skips_foreign_verbatim),
        cmocka_unit_test(test_list_skips_foreign_maildirpp),
        cmocka_unit_test(test_folder_remove),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
