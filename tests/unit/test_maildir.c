/* LINK: ms_store ms_core */
/* Maildir folders: delivery (streamed, CRLF split across chunks, error
 * paths), scanning, flag renames racing with clients, keywords and tmp/
 * cleanup, all checked against the files on disk. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "store/maildir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct fixture {
    char *root; /* the temp directory */
    char *path; /* the Maildir folder inside it */
    struct md_folder *f;
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_rf(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof(*fx));
    const char *tmpdir = getenv("TMPDIR");
    char *tmpl = xasprintf("%s/test_maildir.XXXXXX", tmpdir != NULL ? tmpdir : "/tmp");
    if (mkdtemp(tmpl) == NULL) {
        fail_msg("mkdtemp: %s", strerror(errno));
    }
    fx->root = tmpl;
    fx->path = path_join(fx->root, "Mail/INBOX");
    char *err = NULL;
    assert_int_equal(md_folder_open(fx->path, true, false, &fx->f, &err), 0);
    assert_null(err);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    md_folder_close(fx->f);
    rm_rf(fx->root);
    free(fx->root);
    free(fx->path);
    free(fx);
    return 0;
}

static char *sub(struct fixture *fx, const char *dir, const char *name)
{
    return xasprintf("%s/%s/%s", fx->path, dir, name);
}

static void touch(struct fixture *fx, const char *dir, const char *name, const char *content)
{
    char *p = sub(fx, dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    size_t len = strlen(content);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
    free(p);
}

static bool exists(struct fixture *fx, const char *dir, const char *name)
{
    char *p = sub(fx, dir, name);
    struct stat st;
    bool ok = lstat(p, &st) == 0;
    free(p);
    return ok;
}

static char *read_all(const char *path, size_t *len_r)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    struct sbuf sb = {0};
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        sbuf_add(&sb, buf, (size_t)n);
    }
    assert_true(n == 0);
    close(fd);
    *len_r = sb.len;
    return sbuf_detach(&sb);
}

/* Number of entries in a directory, without "." and "..". */
static size_t count_entries(struct fixture *fx, const char *dir)
{
    char *p = path_join(fx->path, dir);
    DIR *d = opendir(p);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            n++;
        }
    }
    closedir(d);
    free(p);
    return n;
}

static void deliver(struct fixture *fx, const char *data, bool to_cur, unsigned flags,
                    md_keywords kw, struct md_msg *msg_r)
{
    struct md_writer *w = NULL;
    assert_int_equal(md_writer_open(fx->f, true, &w), 0);
    assert_int_equal(md_writer_write(w, data, strlen(data)), 0);
    assert_int_equal(md_writer_commit(w, to_cur, flags, kw, 0, false, msg_r), 0);
}

/* ---- Folders ---------------------------------------------------------- */

static void test_folder_open(void **state)
{
    struct fixture *fx = *state;
    struct stat st;
    char *cur = path_join(fx->path, "cur");
    assert_int_equal(stat(cur, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    free(cur);
    assert_false(exists(fx, ".", "maildirfolder"));
    assert_string_equal(md_folder_path(fx->f), fx->path);

    /* A missing folder without create is -ENOENT with a reason. */
    char *missing = path_join(fx->root, "nope");
    struct md_folder *f = NULL;
    char *err = NULL;
    assert_int_equal(md_folder_open(missing, false, false, &f, &err), -ENOENT);
    assert_null(f);
    assert_non_null(err);
    assert_non_null(strstr(err, missing));
    free(err);

    /* A directory without tmp/ is not a Maildir. */
    char *half = path_join(fx->root, "half");
    assert_int_equal(mkdir(half, 0700), 0);
    char *p = path_join(half, "cur");
    assert_int_equal(mkdir(p, 0700), 0);
    free(p);
    p = path_join(half, "new");
    assert_int_equal(mkdir(p, 0700), 0);
    free(p);
    err = NULL;
    assert_int_equal(md_folder_open(half, false, false, &f, &err), -ENOENT);
    assert_non_null(strstr(err, "tmp"));
    free(err);

    /* maildir++ subfolders get the empty marker file. */
    char *pp = path_join(fx->root, "Mail/.Lists.dev/");
    assert_int_equal(md_folder_open(pp, true, true, &f, NULL), 0);
    char *marker = path_join(fx->root, "Mail/.Lists.dev/maildirfolder");
    assert_int_equal(stat(marker, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_size, 0);
    /* The trailing slash is not part of the folder's path. */
    assert_string_equal(strrchr(md_folder_path(f), '/'), "/.Lists.dev");
    md_folder_close(f);
    free(marker);
    free(pp);
    free(half);
    free(missing);
}

/* ---- Delivery --------------------------------------------------------- */

static bool valid_unique_name(const char *name)
{
    /* <secs>.M<usecs>P<pid>Q<counter>R<16 hex>.<host> */
    const char *p = name;
    if (!(*p >= '0' && *p <= '9')) {
        return false;
    }
    while (*p >= '0' && *p <= '9') {
        p++;
    }
    if (strncmp(p, ".M", 2) != 0) {
        return false;
    }
    char *r = strchr(p, 'R');
    if (r == NULL || strchr(p, 'P') == NULL || strchr(p, 'Q') == NULL) {
        return false;
    }
    for (int i = 1; i <= 16; i++) {
        if (strchr("0123456789abcdef", r[i]) == NULL) {
            return false;
        }
    }
    return r[17] == '.' && r[18] != '\0' && strchr(name, '/') == NULL && strchr(name, ':') == NULL;
}

static void test_deliver_small_new(void **state)
{
    struct fixture *fx = *state;
    struct md_msg m;
    deliver(fx, "Subject: hi\r\n\r\nbody\r\n", false, 0, 0, &m);
    assert_true(m.in_new);
    assert_string_equal(m.id, m.name);
    assert_true(valid_unique_name(m.id));
    assert_int_equal(m.flags, 0);
    assert_null(m.unknown_flags);
    char *p = sub(fx, "new", m.name);
    size_t len;
    char *data = read_all(p, &len);
    assert_int_equal(len, strlen("Subject: hi\n\nbody\n"));
    assert_memory_equal(data, "Subject: hi\n\nbody\n", len);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(count_entries(fx, "tmp"), 0);
    assert_int_equal(count_entries(fx, "cur"), 0);
    free(data);
    free(p);
    md_msg_clear(&m);
}

/* A batch made durable at once: md_writer_finish sets the date,
 * md_writers_sync covers every writer (one syncfs for three or more), a
 * failed writer is skipped, and commit then renames without an fsync. */
static void test_writers_sync_batch(void **state)
{
    struct fixture *fx = *state;
    enum {
        N = 5
    };
    struct md_writer *ws[N + 1] = {0};
    for (int i = 0; i < N; i++) {
        assert_int_equal(md_writer_open(fx->f, true, &ws[i]), 0);
        char body[32];
        int n = snprintf(body, sizeof(body), "message %d\r\nline\r", i);
        assert_int_equal(md_writer_write(ws[i], body, (size_t)n), 0);
    }
    /* Writer 1 is finished with a date; a later write is refused and makes
     * it fail, so the batch skips it. */
    assert_int_equal(md_writer_finish(ws[0], 1000000000), 0);
    assert_int_equal(md_writer_finish(ws[1], 0), 0);
    assert_int_equal(md_writer_write(ws[1], "more", 4), -EINVAL);
    /* NULL entries are allowed. */
    assert_int_equal(md_writers_sync(fx->f, ws, N + 1), 0);
    assert_int_equal(md_writer_commit(ws[1], false, 0, 0, 0, true, NULL), -EINVAL);
    for (int i = 0; i < N; i++) {
        if (i == 1) {
            continue;
        }
        struct md_msg m;
        assert_int_equal(md_writer_commit(ws[i], false, 0, 0, 0, true, &m), 0);
        assert_true(m.in_new);
        char *p = sub(fx, "new", m.name);
        size_t len;
        char *data = read_all(p, &len);
        char want[32];
        int n = snprintf(want, sizeof(want), "message %d\nline\r", i);
        assert_int_equal(len, (size_t)n);
        assert_memory_equal(data, want, len);
        if (i == 0) {
            struct stat st;
            assert_int_equal(stat(p, &st), 0);
            assert_int_equal(st.st_mtime, 1000000000);
        }
        free(data);
        free(p);
        md_msg_clear(&m);
    }
    assert_int_equal(md_folder_sync(fx->f), 0);
    assert_int_equal(count_entries(fx, "new"), N - 1);
    assert_int_equal(count_entries(fx, "tmp"), 0);

    /* Two writers: one fsync each, same outcome. */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(md_writer_open(fx->f, false, &ws[i]), 0);
        assert_int_equal(md_writer_write(ws[i], "x\n", 2), 0);
    }
    assert_int_equal(md_writers_sync(fx->f, ws, 2), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(md_writer_commit(ws[i], true, MD_FLAG_SEEN, 0, 0, false, NULL), 0);
    }
    assert_int_equal(count_entries(fx, "cur"), 2);
}

static void test_deliver_cur_flags_keywords(void **state)
{
    struct fixture *fx = *state;
    struct md_msg m;
    struct md_writer *w = NULL;
    assert_int_equal(md_writer_open(fx->f, false, &w), 0);
    /* Without conversion, CRLF is kept byte for byte. */
    assert_int_equal(md_writer_write(w, "a\r\nb", 4), 0);
    assert_int_equal(md_writer_size(w), 4);
    time_t when = 1000000000;
    assert_int_equal(md_writer_commit(w, false, MD_FLAG_SEEN | MD_FLAG_FLAGGED,
                                      (1u << 0) | (1u << 2), when, false, &m),
                     0);
    assert_false(m.in_new);
    size_t idlen = strlen(m.id);
    assert_string_equal(m.name + idlen, ":2,FSac");
    char *p = sub(fx, "cur", m.name);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mtime, when);
    size_t len;
    char *data = read_all(p, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(data, "a\r\nb", 4);
    free(data);
    free(p);
    md_msg_clear(&m);

    /* to_cur with no flags: cur/NAME:2, with an empty info part. */
    deliver(fx, "x", true, 0, 0, &m);
    assert_false(m.in_new);
    assert_string_equal(m.name + strlen(m.id), ":2,");
    assert_true(exists(fx, "cur", m.name));
    md_msg_clear(&m);

    /* Keywords alone also go to cur/ (new/ files carry no info). */
    deliver(fx, "y", false, 0, 1u << 25, &m);
    assert_false(m.in_new);
    assert_string_equal(m.name + strlen(m.id), ":2,z");
    md_msg_clear(&m);
    assert_int_equal(count_entries(fx, "tmp"), 0);
    assert_int_equal(count_entries(fx, "new"), 0);
}

/* The reference conversion: the whole message at once. */
static char *crlf_reference(const char *in, size_t len, size_t *len_r)
{
    char *out = xmalloc(len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '\r' && i + 1 < len && in[i + 1] == '\n') {
            continue;
        }
        out[n++] = in[i];
    }
    *len_r = n;
    return out;
}

/* Resident memory of this process in KiB (Linux: VmRSS). */
static long rss_kib(void)
{
    FILE *fp = fopen("/proc/self/status", "r");
    assert_non_null(fp);
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof(line), fp) != NULL) {
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) {
            break;
        }
    }
    fclose(fp);
    assert_true(kib > 0);
    return kib;
}

/* A 100 MB message goes to disk through the writer's buffer: the resident
 * size grows by far less than the message. */
static void test_deliver_100mb_bounded_memory(void **state)
{
    struct fixture *fx = *state;
    enum {
        CHUNK = 256 * 1024,
        CHUNKS = 400
    };
    char *chunk = xmalloc(CHUNK);
    for (size_t i = 0; i < CHUNK; i++) {
        chunk[i] = (i % 78 == 76) ? '\r' : (i % 78 == 77) ? '\n' : (char)('a' + i % 26);
    }
    long before = rss_kib();
    struct md_writer *w = NULL;
    assert_int_equal(md_writer_open(fx->f, true, &w), 0);
    for (int i = 0; i < CHUNKS; i++) {
        assert_int_equal(md_writer_write(w, chunk, CHUNK), 0);
    }
    /* Measured while the writer is still open: whatever it kept of the
     * message would be resident now. */
    long growth = rss_kib() - before;
    struct md_msg m;
    memset(&m, 0, sizeof(m));
    assert_int_equal(md_writer_commit(w, false, 0, 0, 0, false, &m), 0);
    free(chunk);
    /* 100 MiB went through; allow 16 MiB for allocator and sanitizer noise. */
    assert_true(growth < 16 * 1024);
    char *path = path_join(fx->path, "new");
    char *file = path_join(path, m.name);
    struct stat st;
    assert_int_equal(stat(file, &st), 0);
    /* CRLF became LF: each chunk's CHUNK / 78 whole lines lost a byte. */
    assert_int_equal(st.st_size, (off_t)CHUNKS * (CHUNK - CHUNK / 78));
    free(file);
    free(path);
    free((char *)m.id);
    free((char *)m.name);
}

static void test_deliver_large_streamed(void **state)
{
    struct fixture *fx = *state;
    size_t len = 5 * 1024 * 1024;
    char *msg = xmalloc(len);
    uint32_t seed = 12345;
    for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r = (seed >> 16) % 64;
        /* Plenty of CRLF, some lone CRs, some bare LFs, CR CR LF. */
        msg[i] = r < 3 ? '\r' : r == 3 ? '\n' : (char)('A' + r % 26);
        if (r == 0 && i + 1 < len) {
            msg[++i] = '\n';
        }
    }
    msg[len - 1] = '\r'; /* a CR at the very end stays */

    /* Odd chunk sizes, and chunks cut exactly between CR and LF. */
    static const size_t sizes[] = {1, 7, 4093, 65537, 3, 131071, 2, 65536, 999, 0, 17};
    struct md_writer *w = NULL;
    assert_int_equal(md_writer_open(fx->f, true, &w), 0);
    size_t off = 0;
    size_t k = 0;
    size_t split_crlf = 0;
    while (off < len) {
        size_t n = sizes[k++ % ARRAY_SIZE(sizes)];
        if (n > len - off) {
            n = len - off;
        }
        /* Every few chunks, end the chunk right after a CR that has its LF
         * in the next chunk. */
        if (k % 5 == 0) {
            char *cr = memchr(msg + off, '\r', len - off);
            if (cr != NULL && cr + 1 < msg + len && cr[1] == '\n') {
                n = (size_t)(cr - (msg + off)) + 1;
                split_crlf++;
            }
        }
        assert_int_equal(md_writer_write(w, msg + off, n), 0);
        off += n;
    }
    assert_true(split_crlf > 10);
    size_t exp_len;
    char *expect = crlf_reference(msg, len, &exp_len);
    /* The trailing CR is held back until commit. */
    assert_int_equal(md_writer_size(w), exp_len - 1);
    struct md_msg m;
    assert_int_equal(md_writer_commit(w, false, 0, 0, 0, false, &m), 0);
    char *p = sub(fx, "new", m.name);
    size_t got_len;
    char *got = read_all(p, &got_len);
    assert_int_equal(got_len, exp_len);
    assert_memory_equal(got, expect, exp_len);
    assert_int_equal(got[got_len - 1], '\r');
    free(got);
    free(p);
    free(expect);
    free(msg);
    md_msg_clear(&m);
}

static void test_crlf_edges(void **state)
{
    struct fixture *fx = *state;
    static const struct {
        const char *chunks[4];
        const char *expect;
    } cases[] = {
        {{"a\r", "\nb", NULL}, "a\nb"},
        {{"a\r", "b", NULL}, "a\rb"},         /* lone CR kept */
        {{"a\r", "", "\n", NULL}, "a\n"},     /* empty chunk keeps the CR held */
        {{"a\r", "\r", "\n", NULL}, "a\r\n"}, /* CR CR LF: only the pair converts */
        {{"\r\n\r\n", NULL}, "\n\n"},
        {{"x\r", NULL}, "x\r"}, /* held CR written at commit */
        {{"\n\r", "\r", NULL}, "\n\r\r"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct md_writer *w = NULL;
        assert_int_equal(md_writer_open(fx->f, true, &w), 0);
        for (int c = 0; cases[i].chunks[c] != NULL; c++) {
            assert_int_equal(md_writer_write(w, cases[i].chunks[c], strlen(cases[i].chunks[c])), 0);
        }
        struct md_msg m;
        assert_int_equal(md_writer_commit(w, false, 0, 0, 0, true, &m), 0);
        char *p = sub(fx, "new", m.name);
        size_t len;
        char *data = read_all(p, &len);
        assert_int_equal(len, strlen(cases[i].expect));
        assert_memory_equal(data, cases[i].expect, len);
        free(data);
        free(p);
        md_msg_clear(&m);
    }
    assert_int_equal(md_folder_sync(fx->f), 0);
}

/* The writer's buffer starts small and grows with the message (store/
 * maildir.c, MD_WBUF_MIN): pieces that fill it exactly, cross each size it
 * doubles through, go straight past it or arrive after a large one all
 * land in order, with and without the CRLF conversion, and a message
 * written in one call per byte too. */
static void test_writer_buffer_growth(void **state)
{
    struct fixture *fx = *state;
    static const size_t pieces[][10] = {
        {1, 4095, 1, 5000, 70000, 3, 65536, 20000, 0},
        {4096, 4096, 8192, 16384, 32768, 65536, 1, 0},
        {100000, 1, 2, 131072, 7, 0},
        {65535, 1, 65536, 65537, 0},
        {4097, 0},
    };
    for (int crlf = 0; crlf < 2; crlf++) {
        for (size_t c = 0; c < ARRAY_SIZE(pieces); c++) {
            struct sbuf in = {0};
            struct sbuf want = {0};
            struct md_writer *w = NULL;
            assert_int_equal(md_writer_open(fx->f, crlf != 0, &w), 0);
            unsigned x = (unsigned)(c * 7919 + (size_t)crlf);
            for (int k = 0; pieces[c][k] != 0; k++) {
                size_t n = pieces[c][k];
                char *piece = xmalloc(n);
                for (size_t i = 0; i < n; i++) {
                    x = x * 1103515245u + 12345u;
                    /* Lines of varying length, CRLF-terminated, some lone CRs. */
                    unsigned r = (x >> 16) % 61;
                    piece[i] = r == 0 ? '\r' : r == 1 ? '\n' : (char)('a' + r % 26);
                }
                sbuf_add(&in, piece, n);
                assert_int_equal(md_writer_write(w, piece, n), 0);
                free(piece);
            }
            for (size_t i = 0; i < in.len; i++) {
                /* What the conversion keeps: every byte but a CR before LF. */
                if (!(crlf && in.buf[i] == '\r' && i + 1 < in.len && in.buf[i + 1] == '\n')) {
                    sbuf_addc(&want, in.buf[i]);
                }
            }
            assert_int_equal(md_writer_size(w), want.len);
            struct md_msg m;
            assert_int_equal(md_writer_commit(w, false, 0, 0, 0, true, &m), 0);
            char *p = sub(fx, "new", m.name);
            size_t len;
            char *data = read_all(p, &len);
            assert_int_equal(len, want.len);
            assert_memory_equal(data, want.buf, len);
            free(data);
            free(p);
            md_msg_clear(&m);
            sbuf_free(&in);
            sbuf_free(&want);
        }
    }
    /* One byte a call, past two doublings. */
    struct md_writer *w = NULL;
    assert_int_equal(md_writer_open(fx->f, false, &w), 0);
    for (size_t i = 0; i < 10000; i++) {
        char ch = (char)('a' + i % 26);
        assert_int_equal(md_writer_write(w, &ch, 1), 0);
    }
    struct md_msg m;
    assert_int_equal(md_writer_commit(w, false, 0, 0, 0, true, &m), 0);
    char *p = sub(fx, "new", m.name);
    size_t len;
    char *data = read_all(p, &len);
    assert_int_equal(len, 10000);
    for (size_t i = 0; i < len; i++) {
        assert_int_equal(data[i], (char)('a' + i % 26));
    }
    free(data);
    free(p);
    md_msg_clear(&m);
    assert_int_equal(md_folder_sync(fx->f), 0);
}

static void test_abort_removes_temp(void **state)
{
    struct fixture *fx = *state;
    struct md_writer *w = NULL;
    assert_int_equal(md_writer_open(fx->f, true, &w), 0);
    assert_int_equal(count_entries(fx, "tmp"), 1);
    assert_int_equal(md_writer_write(w, "partial", 7), 0);
    md_writer_abort(w);
    assert_int_equal(count_entries(fx, "tmp"), 0);
    assert_int_equal(count_entries(fx, "new"), 0);
    assert_int_equal(count_entries(fx, "cur"), 0);
}

static void test_write_error(void **state)
{
    struct fixture *fx = *state;
    /* Tests run as root, where permissions do not stop writes; a file size
     * limit does, with EFBIG once SIGXFSZ is ignored. */
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 100000;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);

    struct md_writer *w = NULL;
    assert_int_equal(md_writer_open(fx->f, false, &w), 0);
    char *chunk = xmalloc(10000);
    memset(chunk, 'x', 10000);
    int ret = 0;
    for (int i = 0; i < 100 && ret == 0; i++) {
        ret = md_writer_write(w, chunk, 10000);
    }
    /* The error is sticky: a later write reports it again. */
    int again = md_writer_write(w, chunk, 10);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);

    assert_int_equal(ret, -EFBIG);
    assert_int_equal(again, -EFBIG);
    const char *err = md_folder_error(fx->f);
    assert_non_null(strstr(err, fx->path));
    assert_non_null(strstr(err, "/tmp/"));
    assert_non_null(strstr(err, strerror(EFBIG)));
    /* The half-written file is already gone, before commit or abort. */
    assert_int_equal(count_entries(fx, "tmp"), 0);
    struct md_msg m = {0};
    assert_int_equal(md_writer_commit(w, false, 0, 0, 0, false, &m), -EFBIG);
    assert_null(m.name);
    assert_int_equal(count_entries(fx, "tmp"), 0);
    assert_int_equal(count_entries(fx, "new"), 0);
    free(chunk);

    /* The same limit hit on the final flush inside commit. */
    assert_int_equal(md_writer_open(fx->f, false, &w), 0);
    chunk = xmalloc(60000);
    memset(chunk, 'y', 60000);
    assert_int_equal(md_writer_write(w, chunk, 60000), 0);
    signal(SIGXFSZ, SIG_IGN);
    lim.rlim_cur = 1000;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    ret = md_writer_commit(w, false, 0, 0, 0, false, &m);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(ret, -EFBIG);
    assert_non_null(strstr(md_folder_error(fx->f), strerror(EFBIG)));
    assert_int_equal(count_entries(fx, "tmp"), 0);
    assert_int_equal(count_entries(fx, "new"), 0);
    free(chunk);
}

static void test_unique_names(void **state)
{
    struct fixture *fx = *state;
    enum {
        N = 2000
    };
    char **names = xcalloc(N, sizeof(*names));
    for (int i = 0; i < N; i++) {
        struct md_msg m;
        deliver(fx, "x", false, 0, 0, &m);
        assert_true(valid_unique_name(m.id));
        names[i] = m.id;
        m.id = NULL;
        md_msg_clear(&m);
    }
    assert_int_equal(count_entries(fx, "new"), N);
    for (int i = 1; i < N; i++) {
        assert_string_not_equal(names[i], names[i - 1]);
    }
    /* A child process delivering at the same time gets other names. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    for (int i = 0; i < 200; i++) {
        struct md_writer *w = NULL;
        if (md_writer_open(fx->f, true, &w) != 0 ||
            md_writer_commit(w, false, 0, 0, 0, true, NULL) != 0) {
            if (pid == 0) {
                _exit(1);
            }
            fail_msg("delivery failed");
        }
    }
    if (pid == 0) {
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(count_entries(fx, "new"), N + 400);
    for (int i = 0; i < N; i++) {
        free(names[i]);
    }
    free(names);
}

/* ---- Names ------------------------------------------------------------ */

static void test_parse_name(void **state)
{
    (void)state;
    struct md_msg m;
    assert_true(md_parse_name("123.M1P2.host,S=42:2,RSa9Zb", false, &m));
    assert_string_equal(m.id, "123.M1P2.host,S=42");
    assert_string_equal(m.name, "123.M1P2.host,S=42:2,RSa9Zb");
    assert_int_equal(m.flags, MD_FLAG_REPLIED | MD_FLAG_SEEN);
    assert_int_equal(m.keywords, (1u << 0) | (1u << 1));
    assert_string_equal(m.unknown_flags, "9Z");
    assert_false(m.in_new);
    md_msg_clear(&m);
    assert_null(m.id);

    /* A ':' without "2," keeps the whole name as identity. */
    assert_true(md_parse_name("abc:1,S", true, &m));
    assert_string_equal(m.id, "abc:1,S");
    assert_int_equal(m.flags, 0);
    assert_true(m.in_new);
    md_msg_clear(&m);

    assert_true(md_parse_name("abc:2,", false, &m));
    assert_string_equal(m.id, "abc");
    assert_null(m.unknown_flags);
    md_msg_clear(&m);

    /* Unknown letters come out sorted and once each. */
    assert_true(md_parse_name("abc:2,ZSXZ1", false, &m));
    assert_string_equal(m.unknown_flags, "1XZ");
    md_msg_clear(&m);

    assert_false(md_parse_name("", false, &m));
    assert_false(md_parse_name(".hidden", false, &m));
    assert_false(md_parse_name("a/b", false, &m));
    assert_false(md_parse_name(":2,S", false, &m));
    assert_null(m.id);
}

static void test_info_suffix(void **state)
{
    (void)state;
    char *s = md_info_suffix(MD_FLAGS_ALL, 0, NULL);
    assert_string_equal(s, ":2,DFPRST");
    free(s);
    s = md_info_suffix(0, 0, NULL);
    assert_string_equal(s, ":2,");
    free(s);
    s = md_info_suffix(MD_FLAG_TRASHED | MD_FLAG_DRAFT, (1u << 25) | (1u << 3), "ZE1");
    assert_string_equal(s, ":2,1DETZdz");
    free(s);
    /* Without unknown letters (the path that builds no set). */
    s = md_info_suffix(MD_FLAG_TRASHED | MD_FLAG_FLAGGED | MD_FLAG_REPLIED, (1u << 25) | 1u, NULL);
    assert_string_equal(s, ":2,FRTaz");
    free(s);
    /* Known letters and '/' in "unknown" cannot sneak in. */
    s = md_info_suffix(MD_FLAG_SEEN, 0, "Fa/X");
    assert_string_equal(s, ":2,SX");
    free(s);
}

/* ---- Scan ------------------------------------------------------------- */

static void test_scan(void **state)
{
    struct fixture *fx = *state;
    touch(fx, "new", "100.a.host", "");
    touch(fx, "cur", "200.b.host:2,S", "");
    touch(fx, "cur", "300.c.host:2,FRSab", "");
    touch(fx, "cur", "400.d.host:2,SXZ9", "");
    touch(fx, "cur", "500.e.host:1,foo", "");
    touch(fx, "cur", ".hidden:2,S", "");
    touch(fx, "new", ".dot", "");
    touch(fx, "tmp", "600.f.host", "");
    char *d = sub(fx, "cur", "subdir");
    assert_int_equal(mkdir(d, 0700), 0);
    free(d);

    struct md_scan *scan = NULL;
    assert_int_equal(md_scan(fx->f, &scan), 0);
    assert_int_equal(scan->count, 5);
    for (size_t i = 1; i < scan->count; i++) {
        assert_true(strcmp(scan->msgs[i - 1].id, scan->msgs[i].id) < 0);
    }
    struct md_msg *m = md_scan_find(scan, "100.a.host");
    assert_non_null(m);
    assert_true(m->in_new);
    assert_string_equal(md_msg_name(m), "100.a.host");
    assert_int_equal(m->flags, 0);

    m = md_scan_find(scan, "200.b.host");
    assert_non_null(m);
    assert_false(m->in_new);
    assert_int_equal(m->flags, MD_FLAG_SEEN);

    m = md_scan_find(scan, "300.c.host");
    assert_non_null(m);
    assert_int_equal(m->flags, MD_FLAG_FLAGGED | MD_FLAG_REPLIED | MD_FLAG_SEEN);
    assert_int_equal(m->keywords, 3);
    assert_null(m->unknown_flags);

    m = md_scan_find(scan, "400.d.host");
    assert_non_null(m);
    assert_string_equal(m->unknown_flags, "9XZ");

    m = md_scan_find(scan, "500.e.host:1,foo");
    assert_non_null(m);
    assert_int_equal(m->flags, 0);

    assert_null(md_scan_find(scan, ".hidden"));
    assert_null(md_scan_find(scan, "600.f.host"));
    assert_null(md_scan_find(scan, "200.b"));
    assert_null(md_scan_find(scan, "zzz"));

    /* md_scan_find_near gives md_scan_find's answer whatever the hint: in
     * order (each found where the hint points), out of order, and for
     * identities that are not there. */
    const char *const ids[] = {
        "100.a.host", "200.b.host", "300.c.host", "400.d.host", "500.e.host:1,foo", "200.b.host",
        "zzz",        "100.a.host", "400.d.host", "200.b",      "500.e.host:1,foo", ".hidden"};
    size_t hint = 0;
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        assert_ptr_equal(md_scan_find_near(scan, ids[i], &hint), md_scan_find(scan, ids[i]));
        if (i < 5) {
            assert_int_equal(hint, i + 1);
        }
    }
    hint = 99;
    assert_ptr_equal(md_scan_find_near(scan, "300.c.host", &hint), &scan->msgs[2]);
    assert_int_equal(hint, 3);
    md_scan_free(scan);
    hint = 0;
    assert_null(md_scan_find_near(NULL, "100.a.host", &hint));
}

static void test_scan_duplicate_prefers_cur(void **state)
{
    struct fixture *fx = *state;
    /* What a scan sees when a client moves new/X to cur/X:2,S between the
     * two readdirs: both names. */
    touch(fx, "new", "700.x.host", "");
    touch(fx, "cur", "700.x.host:2,S", "");
    /* Two names for one identity inside cur/ (a readdir that saw a rename
     * twice, or a stray copy): reported once. */
    touch(fx, "cur", "800.y.host:2,S", "");
    touch(fx, "cur", "800.y.host:2,RS", "");
    touch(fx, "new", "900.w.host", "");
    struct md_scan *scan = NULL;
    assert_int_equal(md_scan(fx->f, &scan), 0);
    assert_int_equal(scan->count, 3);
    struct md_msg *m = md_scan_find(scan, "700.x.host");
    assert_non_null(m);
    assert_false(m->in_new);
    assert_string_equal(md_msg_name(m), "700.x.host:2,S");
    m = md_scan_find(scan, "800.y.host");
    assert_non_null(m);
    assert_false(m->in_new);
    assert_string_equal(md_msg_name(m), "800.y.host:2,RS");
    m = md_scan_find(scan, "900.w.host");
    assert_non_null(m);
    assert_true(m->in_new);
    md_scan_free(scan);
}

static void test_scan_many(void **state)
{
    struct fixture *fx = *state;
    enum {
        N = 20000
    };
    char name[128];
    for (int i = 0; i < N; i++) {
        if (i % 2 == 0) {
            snprintf(name, sizeof(name), "1700000000.M%dP4242Q%d.host", i, i);
            touch(fx, "new", name, "");
        } else {
            snprintf(name, sizeof(name), "1700000000.M%dP4242Q%d.host:2,%s", i, i,
                     i % 3 == 0 ? "FS" : "S");
            touch(fx, "cur", name, "");
        }
    }
    struct md_scan *scan = NULL;
    assert_int_equal(md_scan(fx->f, &scan), 0);
    assert_int_equal(scan->count, N);
    struct md_msg *m = md_scan_find(scan, "1700000000.M0P4242Q0.host");
    assert_non_null(m);
    assert_true(m->in_new);
    m = md_scan_find(scan, "1700000000.M9999P4242Q9999.host");
    assert_non_null(m);
    assert_false(m->in_new);
    assert_int_equal(m->flags, MD_FLAG_FLAGGED | MD_FLAG_SEEN);
    m = md_scan_find(scan, "1700000000.M19997P4242Q19997.host");
    assert_non_null(m);
    assert_int_equal(m->flags, MD_FLAG_SEEN);
    assert_string_equal(md_msg_name(m), "1700000000.M19997P4242Q19997.host:2,S");
    assert_null(md_scan_find(scan, "1700000000.M20000P4242Q20000.host"));
    md_scan_free(scan);
}

/* ---- Flags and races -------------------------------------------------- */

static void rename_behind(struct fixture *fx, const char *fdir, const char *fname, const char *tdir,
                          const char *tname)
{
    char *a = sub(fx, fdir, fname);
    char *b = sub(fx, tdir, tname);
    assert_int_equal(rename(a, b), 0);
    free(a);
    free(b);
}

/* A scan keeps a file's name only when it is not the one its facts give
 * (store/maildir.h, struct md_msg); every name still comes out as it is
 * on disk, and the operations act on the file under it. */
static void test_scan_names(void **state)
{
    struct fixture *fx = *state;
    static const struct {
        const char *dir, *name, *id;
        bool kept; /* not canonical: the scan holds the name itself */
    } files[] = {
        {"new", "1.a.host", "1.a.host", false},
        {"new", "2.b.host:2,", "2.b.host", true},   /* new/ with an empty info */
        {"new", "3.c.host:2,S", "3.c.host", false}, /* letters in new/, in order */
        {"cur", "4.d.host", "4.d.host", true},      /* cur/ without an info */
        {"cur", "5.e.host:2,", "5.e.host", false},
        {"cur", "6.f.host:2,FRSab", "6.f.host", false},
        {"cur", "7.g.host:2,SF", "7.g.host", true},   /* out of order */
        {"cur", "8.h.host:2,SS", "8.h.host", true},   /* a letter twice */
        {"cur", "9.i.host:2,19S", "9.i.host", false}, /* unknown letters, in order */
        {"cur", "10.j.host:2,S91", "10.j.host", true},
        {"cur", "11.k.host:1,foo", "11.k.host:1,foo", true}, /* no ":2," in cur/ */
    };
    for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
        touch(fx, files[i].dir, files[i].name, files[i].id);
    }
    struct md_scan *scan = NULL;
    assert_int_equal(md_scan(fx->f, &scan), 0);
    assert_int_equal(scan->count, ARRAY_SIZE(files));
    for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
        struct md_msg *m = md_scan_find(scan, files[i].id);
        assert_non_null(m);
        assert_true(m->id_borrowed);
        assert_int_equal(m->in_new, strcmp(files[i].dir, "new") == 0);
        assert_int_equal(m->name != NULL, files[i].kept);
        assert_string_equal(md_msg_name(m), files[i].name);
        /* The file under that name is the one opened. */
        int fd = md_open_msg(fx->f, md_scan_find(scan, files[i].id));
        assert_true(fd >= 0);
        char buf[64] = {0};
        assert_true(read(fd, buf, sizeof(buf) - 1) > 0);
        close(fd);
        assert_string_equal(buf, files[i].id);
    }
    md_scan_free(scan);

    /* Entries without a name of their own, renamed and removed. */
    assert_int_equal(md_scan(fx->f, &scan), 0);
    struct md_msg *m = md_scan_find(scan, "6.f.host");
    assert_null(m->name);
    assert_int_equal(md_set_flags(fx->f, m, MD_FLAG_SEEN, 0, false), 0);
    assert_true(exists(fx, "cur", "6.f.host:2,S"));
    assert_false(exists(fx, "cur", "6.f.host:2,FRSab"));
    assert_string_equal(m->name, "6.f.host:2,S");
    m = md_scan_find(scan, "1.a.host");
    assert_null(m->name);
    assert_int_equal(md_set_flags(fx->f, m, MD_FLAG_FLAGGED, 1, false), 0);
    assert_true(exists(fx, "cur", "1.a.host:2,Fa"));
    assert_false(exists(fx, "new", "1.a.host"));
    m = md_scan_find(scan, "9.i.host");
    assert_null(m->name);
    assert_int_equal(md_set_flags(fx->f, m, MD_FLAG_SEEN | MD_FLAG_REPLIED, 0, false), 0);
    assert_true(exists(fx, "cur", "9.i.host:2,19RS"));
    m = md_scan_find(scan, "5.e.host");
    assert_null(m->name);
    assert_int_equal(md_remove(fx->f, m), 0);
    assert_false(exists(fx, "cur", "5.e.host:2,"));
    /* Renamed by a client after the scan: found again by identity. */
    m = md_scan_find(scan, "3.c.host");
    assert_null(m->name);
    rename_behind(fx, "new", "3.c.host:2,S", "cur", "3.c.host:2,RS");
    assert_int_equal(md_set_flags(fx->f, m, MD_FLAG_SEEN | MD_FLAG_FLAGGED, 0, false), 0);
    assert_true(exists(fx, "cur", "3.c.host:2,FRS"));
    md_scan_free(scan);
}

static const char *share_at(size_t i, void *arg)
{
    return ((const char *const *)arg)[i];
}

/* md_scan_share_ids: entries named by the caller's strings point at them,
 * the others keep equal copies of their own (the old blocks are freed:
 * under ASan a stale pointer into them would be caught), and the scan
 * still finds, renames and removes every entry. */
static void test_scan_share_ids(void **state)
{
    struct fixture *fx = *state;
    touch(fx, "new", "1.a.host", "");
    touch(fx, "cur", "2.b.host:2,S", "");
    touch(fx, "cur", "3.c.host:2,SF", "");
    touch(fx, "cur", "4.d.host:2,RS", "");
    struct md_scan *scan = NULL;
    assert_int_equal(md_scan(fx->f, &scan), 0);
    assert_int_equal(scan->count, 4);
    /* In any order, with a name the scan does not hold and one twice. */
    char *mine[] = {xstrdup("4.d.host"), xstrdup("9.z.host"), xstrdup("2.b.host"),
                    xstrdup("4.d.host")};
    md_scan_share_ids(scan, ARRAY_SIZE(mine), share_at, mine);
    struct md_msg *m4 = md_scan_find(scan, "4.d.host");
    struct md_msg *m2 = md_scan_find(scan, "2.b.host");
    assert_true(m4->id == mine[0] || m4->id == mine[3]);
    assert_ptr_equal(m2->id, mine[2]);
    assert_null(md_scan_find(scan, "9.z.host"));
    for (size_t i = 1; i < scan->count; i++) {
        assert_true(strcmp(scan->msgs[i - 1].id, scan->msgs[i].id) < 0);
    }
    struct md_msg *m1 = md_scan_find(scan, "1.a.host");
    struct md_msg *m3 = md_scan_find(scan, "3.c.host");
    assert_non_null(m1);
    assert_non_null(m3);
    for (size_t k = 0; k < ARRAY_SIZE(mine); k++) {
        assert_ptr_not_equal(m1->id, mine[k]);
        assert_ptr_not_equal(m3->id, mine[k]);
    }
    assert_string_equal(md_msg_name(m3), "3.c.host:2,SF");
    assert_int_equal(md_set_flags(fx->f, m3, MD_FLAG_SEEN, 0, false), 0);
    assert_true(exists(fx, "cur", "3.c.host:2,S"));
    assert_int_equal(md_set_flags(fx->f, m4, MD_FLAG_SEEN | MD_FLAG_FLAGGED, 0, false), 0);
    assert_true(exists(fx, "cur", "4.d.host:2,FS"));
    assert_int_equal(md_remove(fx->f, m1), 0);
    assert_false(exists(fx, "new", "1.a.host"));
    /* Sharing again (the strings of a later read): what it does not name
     * gets a copy of its own again. */
    char *again = xstrdup("3.c.host");
    md_scan_share_ids(scan, 1, share_at, &again);
    assert_ptr_equal(md_scan_find(scan, "3.c.host")->id, again);
    assert_ptr_not_equal(md_scan_find(scan, "2.b.host")->id, mine[2]);
    assert_string_equal(md_scan_find(scan, "2.b.host")->id, "2.b.host");
    md_scan_free(scan);
    /* The caller's strings are left to the caller. */
    assert_string_equal(mine[2], "2.b.host");
    for (size_t k = 0; k < ARRAY_SIZE(mine); k++) {
        free(mine[k]);
    }
    free(again);
}

static void test_set_flags(void **state)
{
    struct fixture *fx = *state;
    struct md_msg m;
    deliver(fx, "x", false, 0, 0, &m);
    char *id = xstrdup(m.id);
    char *want;

    /* In new/, no flags and no move: the file stays. */
    assert_int_equal(md_set_flags(fx->f, &m, 0, 0, false), 0);
    assert_true(m.in_new);
    assert_true(exists(fx, "new", id));

    /* Flags move it to cur/ even without move_to_cur. */
    assert_int_equal(md_set_flags(fx->f, &m, MD_FLAG_SEEN | MD_FLAG_DRAFT, 1u << 4, false), 0);
    assert_false(m.in_new);
    want = xasprintf("%s:2,DSe", id);
    assert_string_equal(m.name, want);
    assert_true(exists(fx, "cur", want));
    assert_false(exists(fx, "new", id));
    assert_int_equal(m.flags, MD_FLAG_SEEN | MD_FLAG_DRAFT);
    assert_int_equal(m.keywords, 1u << 4);
    free(want);

    /* Unknown letters survive our renames. */
    rename_behind(fx, "cur", m.name, "cur", "tmpname");
    want = xasprintf("%s:2,9DSeX", id);
    rename_behind(fx, "cur", "tmpname", "cur", want);
    free(want);
    assert_int_equal(md_set_flags(fx->f, &m, MD_FLAG_TRASHED | MD_FLAG_FLAGGED, 0, false), 0);
    want = xasprintf("%s:2,9FTX", id);
    assert_string_equal(m.name, want);
    assert_string_equal(m.unknown_flags, "9X");
    assert_true(exists(fx, "cur", want));
    assert_int_equal(count_entries(fx, "cur"), 1);
    free(want);
    md_msg_clear(&m);

    /* move_to_cur with no flags: cur/NAME:2, */
    deliver(fx, "y", false, 0, 0, &m);
    assert_int_equal(md_set_flags(fx->f, &m, 0, 0, true), 0);
    assert_false(m.in_new);
    want = xasprintf("%s:2,", m.id);
    assert_string_equal(m.name, want);
    assert_true(exists(fx, "cur", want));
    free(want);
    md_msg_clear(&m);
    free(id);
}

static void test_rename_race(void **state)
{
    struct fixture *fx = *state;
    struct md_msg a, b, c;
    deliver(fx, "message A", false, 0, 0, &a);
    deliver(fx, "message B", false, 0, 0, &b);
    deliver(fx, "message C", true, MD_FLAG_SEEN, 0, &c);
    struct md_scan *scan = NULL;
    assert_int_equal(md_scan(fx->f, &scan), 0);
    assert_int_equal(scan->count, 3);
    struct md_msg *ma = md_scan_find(scan, a.id);
    struct md_msg *mb = md_scan_find(scan, b.id);
    struct md_msg *mc = md_scan_find(scan, c.id);
    assert_non_null(ma);
    assert_non_null(mb);
    assert_non_null(mc);

    /* A client moves A new -> cur with S, behind our back. */
    char *an = xasprintf("%s:2,S", a.id);
    rename_behind(fx, "new", a.name, "cur", an);
    /* The caller adds F to what it saw (nothing); the client's S stays. */
    assert_int_equal(md_set_flags(fx->f, ma, MD_FLAG_FLAGGED, 0, false), 0);
    char *want = xasprintf("%s:2,FS", a.id);
    assert_string_equal(ma->name, want);
    assert_false(ma->in_new);
    assert_true(exists(fx, "cur", want));
    assert_false(exists(fx, "cur", an));
    free(want);
    free(an);

    /* A client changes C's flag letters; our open finds it again. */
    char *cn = xasprintf("%s:2,RS", c.id);
    rename_behind(fx, "cur", c.name, "cur", cn);
    int fd = md_open_msg(fx->f, mc);
    assert_true(fd >= 0);
    char buf[32];
    ssize_t n = read(fd, buf, sizeof(buf));
    close(fd);
    assert_int_equal(n, 9);
    assert_memory_equal(buf, "message C", 9);
    assert_string_equal(mc->name, cn);
    /* The flags seen on disk are reported after the re-find. */
    assert_int_equal(mc->flags, MD_FLAG_REPLIED | MD_FLAG_SEEN);
    free(cn);

    /* ... and a flag change after another rename. */
    cn = xasprintf("%s:2,DRS", c.id);
    rename_behind(fx, "cur", mc->name, "cur", cn);
    free(cn);
    /* The caller saw RS and removes R; the client's D stays. */
    assert_int_equal(md_set_flags(fx->f, mc, MD_FLAG_SEEN, 0, false), 0);
    cn = xasprintf("%s:2,DS", c.id);
    assert_string_equal(mc->name, cn);
    assert_true(exists(fx, "cur", cn));
    free(cn);

    /* B moves to cur/; removing it removes the moved file. */
    char *bn = xasprintf("%s:2,", b.id);
    rename_behind(fx, "new", b.name, "cur", bn);
    assert_int_equal(md_remove(fx->f, mb), 0);
    assert_false(exists(fx, "cur", bn));
    free(bn);
    /* Removing it again: already gone is success. */
    assert_int_equal(md_remove(fx->f, mb), 0);

    /* The user flags C after the caller decided to remove it: nothing is
     * removed, and the caller is told its facts are stale. */
    cn = xasprintf("%s:2,DFS", c.id);
    rename_behind(fx, "cur", mc->name, "cur", cn);
    assert_int_equal(md_remove(fx->f, mc), -ESTALE);
    assert_true(exists(fx, "cur", cn));
    assert_non_null(strstr(md_folder_error(fx->f), "changed by another program"));
    free(cn);

    /* A deleted behind our back: -ENOENT for flags and open. */
    char *p = sub(fx, "cur", ma->name);
    assert_int_equal(unlink(p), 0);
    free(p);
    assert_int_equal(md_set_flags(fx->f, ma, MD_FLAG_SEEN, 0, false), -ENOENT);
    assert_int_equal(md_open_msg(fx->f, ma), -ENOENT);
    assert_non_null(strstr(md_folder_error(fx->f), a.id));
    assert_int_equal(md_remove(fx->f, ma), 0);

    assert_int_equal(count_entries(fx, "cur"), 1);
    assert_int_equal(count_entries(fx, "new"), 0);
    md_scan_free(scan);
    md_msg_clear(&a);
    md_msg_clear(&b);
    md_msg_clear(&c);
}

/* A message built by hand from an index record (identity and last known
 * name), as the sync engine does, is found again the same way. */
static void test_hand_built_msg(void **state)
{
    struct fixture *fx = *state;
    touch(fx, "cur", "900.z.host:2,RS", "zz");
    struct md_msg m = {0};
    m.id = xstrdup("900.z.host");
    m.name = xstrdup("900.z.host");
    m.in_new = true;
    /* The caller believed the message had no flags and asks for F and S;
     * the file found again has R and S, and R is kept: only the caller's
     * change is applied on top of what is on disk. */
    assert_int_equal(md_set_flags(fx->f, &m, MD_FLAG_SEEN | MD_FLAG_FLAGGED, 0, false), 0);
    assert_string_equal(m.name, "900.z.host:2,FRS");
    assert_true(exists(fx, "cur", "900.z.host:2,FRS"));
    md_msg_clear(&m);

    /* Unknown letters in the name are kept even when the caller did not
     * parse them. */
    touch(fx, "cur", "901.z.host:2,9S", "zz");
    m.id = xstrdup("901.z.host");
    m.name = xstrdup("901.z.host:2,9S");
    assert_int_equal(md_set_flags(fx->f, &m, MD_FLAG_FLAGGED, 0, false), 0);
    assert_string_equal(m.name, "901.z.host:2,9F");
    assert_string_equal(m.unknown_flags, "9");
    assert_true(exists(fx, "cur", "901.z.host:2,9F"));

    md_msg_clear(&m);

    /* Names that would leave the folder are refused. */
    m.id = xstrdup("../../x");
    m.name = xstrdup("../../x");
    assert_int_equal(md_set_flags(fx->f, &m, MD_FLAG_SEEN, 0, false), -EINVAL);
    assert_int_equal(md_remove(fx->f, &m), -EINVAL);
    assert_int_equal(md_open_msg(fx->f, &m), -EINVAL);

    /* An identity that is a prefix of another is not confused with it. */
    md_msg_clear(&m);
    m.id = xstrdup("900.z");
    m.name = xstrdup("900.z");
    assert_int_equal(md_open_msg(fx->f, &m), -ENOENT);
    md_msg_clear(&m);
}

/* ---- Keywords --------------------------------------------------------- */

static void write_file(const char *path, const char *content)
{
    char *tmp = xasprintf("%s.new", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    assert_int_equal(rename(tmp, path), 0);
    free(tmp);
}

static void test_keywords(void **state)
{
    struct fixture *fx = *state;
    char *kwpath = path_join(fx->path, "dovecot-keywords");
    assert_int_equal(md_keyword_index(fx->f, "$Junk", false), -ENOENT);
    assert_null(md_keyword_name(fx->f, 0));
    struct stat st;
    assert_int_equal(stat(kwpath, &st), -1);

    assert_int_equal(md_keyword_index(fx->f, "$Junk", true), 0);
    assert_int_equal(md_keyword_index(fx->f, "$Forwarded", true), 1);
    assert_int_equal(md_keyword_index(fx->f, "$Junk", true), 0);
    assert_string_equal(md_keyword_name(fx->f, 1), "$Forwarded");
    size_t len;
    char *data = read_all(kwpath, &len);
    assert_string_equal(data, "0 $Junk\n1 $Forwarded\n");
    free(data);
    assert_int_equal(stat(kwpath, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(md_keyword_index(fx->f, "bad name", true), -EINVAL);

    /* Another program (Dovecot) rewrites the file: re-read. */
    write_file(kwpath, "0 $Junk\n5 work\n1 $Forwarded\n7 bogus line\nnonsense\n30 toobig\n");
    assert_string_equal(md_keyword_name(fx->f, 5), "work");
    assert_null(md_keyword_name(fx->f, 2));
    assert_int_equal(md_keyword_index(fx->f, "work", false), 5);
    assert_string_equal(md_keyword_name(fx->f, 7), "bogus line");
    const char *table[26];
    assert_int_equal(md_keyword_table(fx->f, table), 26 - 4);
    assert_string_equal(table[0], "$Junk");
    assert_string_equal(table[5], "work");
    assert_string_equal(table[7], "bogus line");
    assert_null(table[2]);
    /* A new name takes the lowest free index and keeps the others. */
    assert_int_equal(md_keyword_index(fx->f, "home", true), 2);
    data = read_all(kwpath, &len);
    assert_string_equal(data, "0 $Junk\n1 $Forwarded\n2 home\n5 work\n7 bogus line\n");
    free(data);

    /* Fill all 26 letters. */
    for (int i = 0;; i++) {
        char name[16];
        snprintf(name, sizeof(name), "kw%d", i);
        int idx = md_keyword_index(fx->f, name, true);
        if (idx == MD_EKWFULL) {
            assert_int_equal(i, 26 - 5);
            break;
        }
        assert_true(idx >= 0 && idx < 26);
    }
    assert_int_equal(md_keyword_index(fx->f, "one-too-many", true), MD_EKWFULL);
    assert_non_null(strstr(md_folder_error(fx->f), "dovecot-keywords"));
    /* With no letter free, the lock is not even waited for. */
    char *lock = path_join(fx->path, "dovecot-uidlist.lock");
    char host[256] = {0};
    assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
    char *who = xasprintf("%ld:%s", (long)getppid(), host);
    write_file(lock, who);
    free(who);
    uint64_t t0 = now_ms();
    assert_int_equal(md_keyword_index(fx->f, "still-too-many", true), MD_EKWFULL);
    const char *more[] = {"x1", "x2"};
    assert_int_equal(md_keywords_assign(fx->f, more, 2), 0);
    assert_true(now_ms() - t0 < 1000);
    assert_int_equal(unlink(lock), 0);
    free(lock);
    assert_string_equal(md_keyword_name(fx->f, 25), "kw20");
    assert_int_equal(md_keyword_index(fx->f, "kw20", false), 25);
    assert_null(md_keyword_name(fx->f, 26));
    assert_null(md_keyword_name(fx->f, -1));

    /* Removed by someone: nothing is assigned any more. */
    assert_int_equal(unlink(kwpath), 0);
    assert_null(md_keyword_name(fx->f, 0));
    assert_int_equal(md_keyword_index(fx->f, "kw0", false), -ENOENT);
    free(kwpath);
}

static void set_mtime_ago(const char *path, time_t secs)
{
    struct timespec ts[2];
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    ts[0].tv_sec -= secs;
    ts[1] = ts[0];
    assert_int_equal(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static char *this_host(void)
{
    char host[256] = {0};
    assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
    return xstrdup(host);
}

/* A new keyword is assigned only under dovecot-uidlist.lock, the lock
 * Dovecot holds when it changes dovecot-keywords. */
static void test_keywords_lock(void **state)
{
    struct fixture *fx = *state;
    char *kwpath = path_join(fx->path, "dovecot-keywords");
    char *lock = path_join(fx->path, "dovecot-uidlist.lock");
    char *host = this_host();
    md_set_lock_wait(300);

    /* Held by a live local process (our parent): wait, then give up with
     * an error that names the lock, and write nothing. */
    char *who = xasprintf("%ld:%s", (long)getppid(), host);
    write_file(lock, who);
    free(who);
    set_mtime_ago(lock, 30);
    assert_int_equal(md_keyword_index(fx->f, "$Junk", true), -EAGAIN);
    assert_non_null(strstr(md_folder_error(fx->f), "dovecot-uidlist.lock"));
    assert_non_null(strstr(md_folder_error(fx->f), "held by process"));
    struct stat st;
    assert_int_equal(stat(kwpath, &st), -1);
    assert_int_equal(stat(lock, &st), 0);

    /* Made by another host, and fresh: no pid to check, so it is kept. */
    write_file(lock, "12345:some-other-host.example");
    assert_int_equal(md_keyword_index(fx->f, "$Junk", true), -EAGAIN);
    assert_non_null(strstr(md_folder_error(fx->f), "held by another program"));
    assert_int_equal(stat(kwpath, &st), -1);

    /* The same lock unchanged for three minutes (and no dovecot-uidlist
     * changed meanwhile) is stale: taken over, then released. */
    set_mtime_ago(lock, 180);
    assert_int_equal(md_keyword_index(fx->f, "$Junk", true), 0);
    assert_int_equal(stat(lock, &st), -1);
    size_t len;
    char *data = read_all(kwpath, &len);
    assert_string_equal(data, "0 $Junk\n");
    free(data);

    /* But not while dovecot-uidlist itself changed recently. */
    char *uidlist = path_join(fx->path, "dovecot-uidlist");
    write_file(uidlist, "3 V1 N1\n");
    write_file(lock, "12345:some-other-host.example");
    set_mtime_ago(lock, 180);
    assert_int_equal(md_keyword_index(fx->f, "work", true), -EAGAIN);
    set_mtime_ago(uidlist, 180);
    assert_int_equal(md_keyword_index(fx->f, "work", true), 1);
    free(uidlist);

    /* A local pid that no longer runs: taken over at once. */
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        _exit(0);
    }
    assert_int_equal(waitpid(child, NULL, 0), child);
    who = xasprintf("%ld:%s", (long)child, host);
    write_file(lock, who);
    free(who);
    set_mtime_ago(lock, 10);
    assert_int_equal(md_keyword_index(fx->f, "home", true), 2);
    assert_int_equal(stat(lock, &st), -1);

    /* Several names in one take of the lock; known and invalid names are
     * left alone. */
    const char *names[] = {"home", "a", "bad name", "b", "a"};
    assert_int_equal(md_keywords_assign(fx->f, names, 5), 0);
    assert_int_equal(stat(lock, &st), -1);
    data = read_all(kwpath, &len);
    assert_string_equal(data, "0 $Junk\n1 work\n2 home\n3 a\n4 b\n");
    free(data);
    /* Nothing to assign: the lock is not even looked at. */
    write_file(lock, "12345:some-other-host.example");
    const char *known[] = {"a", "work"};
    assert_int_equal(md_keywords_assign(fx->f, known, 2), 0);
    assert_int_equal(unlink(lock), 0);

    md_set_lock_wait(3000);
    free(host);
    free(lock);
    free(kwpath);
}

/* A keywords file that cannot be written (here: a file size limit of 0,
 * as a full disk would do) is an error of its own, never "all letters in
 * use": the engine must not take it for a keyword the Maildir cannot hold. */
static void test_keywords_write_failure(void **state)
{
    struct fixture *fx = *state;
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit zero = {.rlim_cur = 0, .rlim_max = old.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &zero), 0);
    int r = md_keyword_index(fx->f, "$Label1", true);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    assert_int_equal(r, -EFBIG);
    assert_non_null(strstr(md_folder_error(fx->f), "dovecot-keywords"));
    /* Nothing was assigned, and the lock is gone. */
    assert_int_equal(md_keyword_index(fx->f, "$Label1", false), -ENOENT);
    char *lock = path_join(fx->path, "dovecot-uidlist.lock");
    struct stat st;
    assert_int_equal(stat(lock, &st), -1);
    free(lock);
    assert_int_equal(md_keyword_index(fx->f, "$Label1", true), 0);
}

/* ---- tmp/ cleanup ----------------------------------------------------- */

static void test_clean_tmp(void **state)
{
    struct fixture *fx = *state;
    touch(fx, "tmp", "old", "o");
    touch(fx, "tmp", "fresh", "f");
    time_t now = time(NULL);
    /* A delivery in progress gives its temp file the (old) received date as
     * mtime before the rename; its ctime is now, so it must survive. */
    char *p = sub(fx, "tmp", "old");
    struct timespec ts[2] = {{.tv_sec = now - 37 * 3600}, {.tv_sec = now - 37 * 3600}};
    assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
    free(p);
    assert_int_equal(md_clean_tmp(fx->f, now), 0);
    assert_true(exists(fx, "tmp", "old"));
    assert_true(exists(fx, "tmp", "fresh"));
    /* 35 hours later both are still young enough. */
    assert_int_equal(md_clean_tmp(fx->f, now + 35 * 3600), 0);
    /* 37 hours after both were last touched they are debris. */
    assert_int_equal(md_clean_tmp(fx->f, now + 37 * 3600), 2);
    assert_false(exists(fx, "tmp", "old"));
    assert_false(exists(fx, "tmp", "fresh"));
    assert_int_equal(md_clean_tmp(fx->f, now + 37 * 3600), 0);
}

/* ---- Clients renaming inside cur/ while we scan ------------------------- */

struct flipper {
    char *a, *b;
    atomic_bool stop;
    unsigned flips;
};

static void *flip_thread(void *arg)
{
    struct flipper *fl = arg;
    while (!atomic_load(&fl->stop)) {
        if (rename(fl->a, fl->b) == 0) {
            fl->flips++;
        }
        if (rename(fl->b, fl->a) == 0) {
            fl->flips++;
        }
    }
    return NULL;
}

static void test_scan_while_client_renames(void **state)
{
    struct fixture *fx = *state;
    enum {
        N = 3000,
        SCANS = 150
    };
    for (int i = 0; i < N; i++) {
        char name[64];
        snprintf(name, sizeof(name), "1700000000.M%dP1.host:2,S", i);
        touch(fx, "cur", name, "x");
    }
    /* A mail client toggling one message's flags as fast as it can. */
    struct flipper fl = {
        .a = sub(fx, "cur", "1700000000.M1234P1.host:2,S"),
        .b = sub(fx, "cur", "1700000000.M1234P1.host:2,RS"),
    };
    atomic_init(&fl.stop, false);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, flip_thread, &fl), 0);
    int missing = 0;
    for (int i = 0; i < SCANS; i++) {
        struct md_scan *scan = NULL;
        assert_int_equal(md_scan(fx->f, &scan), 0);
        if (scan->count != N || md_scan_find(scan, "1700000000.M1234P1.host") == NULL) {
            missing++;
        }
        md_scan_free(scan);
    }
    atomic_store(&fl.stop, true);
    pthread_join(th, NULL);
    free(fl.a);
    free(fl.b);
    assert_true(fl.flips > 0);
    /* Never missing: a missing message would be taken for a deletion. */
    assert_int_equal(missing, 0);
}

/* A copy with the same identity is a different message: a flag change must
 * never rename one onto the other. */
static void test_rename_never_replaces(void **state)
{
    struct fixture *fx = *state;
    touch(fx, "cur", "1700000001.M1P1.host:2,S", "original");
    touch(fx, "cur", "1700000001.M1P1.host:2,FS", "a copy");
    struct md_msg m;
    assert_true(md_parse_name("1700000001.M1P1.host:2,S", false, &m));
    assert_int_equal(md_set_flags(fx->f, &m, MD_FLAG_FLAGGED | MD_FLAG_SEEN, 0, false), -EEXIST);
    assert_true(exists(fx, "cur", "1700000001.M1P1.host:2,S"));
    assert_true(exists(fx, "cur", "1700000001.M1P1.host:2,FS"));
    assert_non_null(strstr(md_folder_error(fx->f), "another message already has that name"));
    md_msg_clear(&m);
}

/* md_unchanged_since, table-driven with injected times: equal settled
 * nanosecond times are believed; anything else (a change, a change time
 * within two seconds of the recorded scan as on a file system with
 * whole-second times touched by another program in the same second,
 * whole-second times, times ahead of the clock, a clock stepped back,
 * unknown values) means "read the folder". */
static void test_unchanged_since_table(void **state)
{
    (void)state;
    const int64_t S = 1000000000LL;
    const int64_t T = 1733500000LL * S; /* a recent wall-clock time */
    struct {
        const char *what;
        struct md_stamp rec, now;
        bool unchanged;
    } cases[] = {
        {"settled and equal", {T + 123, T + 456, T + 10 * S}, {T + 123, T + 456, T + 20 * S}, true},
        {"settled exactly two seconds",
         {T + 1, T + 2, T + 2 + 2 * S},
         {T + 1, T + 2, T + 5 * S},
         true},
        {"the same instant read twice", {T + 1, T + 2, T + 9 * S}, {T + 1, T + 2, T + 9 * S}, true},
        {"cur/ changed", {T + 123, T + 456, T + 10 * S}, {T + 124, T + 456, T + 20 * S}, false},
        {"new/ changed", {T + 123, T + 456, T + 10 * S}, {T + 123, T + 457, T + 20 * S}, false},
        {"recorded scan within two seconds of cur/",
         {T + 5 * S + 1, T + 2, T + 6 * S},
         {T + 5 * S + 1, T + 2, T + 60 * S},
         false},
        {"recorded scan within two seconds of new/",
         {T + 1, T + 5 * S + 7, T + 7 * S},
         {T + 1, T + 5 * S + 7, T + 60 * S},
         false},
        {"whole-second file system, same second as the scan",
         {T + 5 * S, T + 5 * S, T + 5 * S + 400000000LL},
         {T + 5 * S, T + 5 * S, T + 60 * S},
         false},
        {"whole-second file system, settled",
         {T, T + S, T + 30 * S},
         {T, T + S, T + 60 * S},
         false},
        {"one directory with whole seconds is fine",
         {T, T + 9, T + 30 * S},
         {T, T + 9, T + 60 * S},
         true},
        {"change time ahead of the recording clock",
         {T + 50 * S + 3, T + 1, T + 10 * S},
         {T + 50 * S + 3, T + 1, T + 60 * S},
         false},
        {"clock stepped back since the record",
         {T + 3, T + 4, T + 10 * S},
         {T + 3, T + 4, T + 9 * S},
         false},
        {"clock stepped back before the epoch of the record",
         {T + 3, T + 4, T + 10 * S},
         {T + 3, T + 4, 5 * S},
         false},
        {"nothing recorded", {0, 0, 0}, {T + 3, T + 4, T + 9 * S}, false},
        {"no scan time recorded", {T + 3, T + 4, 0}, {T + 3, T + 4, T + 9 * S}, false},
        {"no stamp now", {T + 3, T + 4, T + 9 * S}, {0, 0, 0}, false},
        {"negative times", {-5, -4, T}, {-5, -4, T + S}, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (md_unchanged_since(&cases[i].rec, &cases[i].now) != cases[i].unchanged) {
            fail_msg("case '%s': expected %s", cases[i].what,
                     cases[i].unchanged ? "unchanged" : "read it");
        }
    }
}

/* md_folder_stamp reads the change times of cur/ and new/ and the clock:
 * a rename inside cur/ (a flag change), a delivery into new/ and a
 * removal each move the stamp, even when made at once (same second) after
 * the previous stamp; a stamp read again without a change is equal, and a
 * fresh one is never believed by itself (it is not two seconds old). */
static void test_folder_stamp(void **state)
{
    struct fixture *fx = *state;
    struct md_stamp a, b;
    int r = md_folder_stamp(fx->f, &a);
    if (r == -EOPNOTSUPP) {
        skip(); /* TMPDIR on a file system whose stat may be cached */
    }
    assert_int_equal(r, 0);
    assert_true(a.cur_ns > 0 && a.new_ns > 0 && a.taken_ns >= a.cur_ns && a.taken_ns >= a.new_ns);
    assert_int_equal(md_folder_stamp(fx->f, &b), 0);
    assert_true(b.cur_ns == a.cur_ns && b.new_ns == a.new_ns && b.taken_ns >= a.taken_ns);
    /* Just made: too fresh to vouch for the folder. */
    assert_false(md_unchanged_since(&a, &b));
    struct md_stamp settled = a;
    settled.taken_ns = a.taken_ns + MD_STAMP_SETTLE_NS;
    struct md_stamp later = b;
    later.taken_ns = settled.taken_ns + 1;
    assert_true(md_unchanged_since(&settled, &later));

    touch(fx, "cur", "1700000001.M1P1.host:2,", "x");
    assert_int_equal(md_folder_stamp(fx->f, &b), 0);
    assert_true(b.cur_ns != a.cur_ns);
    assert_true(b.new_ns == a.new_ns);
    a = b;
    char *from = sub(fx, "cur", "1700000001.M1P1.host:2,");
    char *to = sub(fx, "cur", "1700000001.M1P1.host:2,S");
    assert_int_equal(rename(from, to), 0);
    assert_int_equal(md_folder_stamp(fx->f, &b), 0);
    assert_true(b.cur_ns != a.cur_ns);
    a = b;
    touch(fx, "new", "1700000002.M2P2.host", "y");
    assert_int_equal(md_folder_stamp(fx->f, &b), 0);
    assert_true(b.new_ns != a.new_ns && b.cur_ns == a.cur_ns);
    a = b;
    assert_int_equal(unlink(to), 0);
    assert_int_equal(md_folder_stamp(fx->f, &b), 0);
    assert_true(b.cur_ns != a.cur_ns);
    free(from);
    free(to);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_folder_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deliver_small_new, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writers_sync_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deliver_cur_flags_keywords, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deliver_large_streamed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deliver_100mb_bounded_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crlf_edges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_buffer_growth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_removes_temp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unique_names, setup, teardown),
        cmocka_unit_test(test_parse_name),
        cmocka_unit_test(test_info_suffix),
        cmocka_unit_test_setup_teardown(test_scan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_duplicate_prefers_cur, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_share_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rename_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_while_client_renames, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rename_never_replaces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hand_built_msg, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keywords, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keywords_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keywords_write_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clean_tmp, setup, teardown),
        cmocka_unit_test(test_unchanged_since_table),
        cmocka_unit_test_setup_teardown(test_folder_stamp, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
