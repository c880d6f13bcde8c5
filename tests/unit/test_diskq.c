/* LINK: ms_sync ms_store ms_core */
/* The downloads' write queue (sync/diskq.c) on a real libuv loop and
 * thread pool, and the writers it writes into (md_writer_new: the file is
 * created by the first write, on whichever thread that runs): contents,
 * order, aborts, a commit job draining the queue while a queue job runs,
 * and the failures of the late creation, all checked on disk. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "store/maildir.h"
#include "sync/diskq.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

struct fixture {
    char *root;
    char *path;
    struct md_folder *f;
    uv_loop_t loop;
    unsigned drained;
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof(*fx));
    const char *tmpdir = getenv("TMPDIR");
    fx->root = xasprintf("%s/test_diskq.XXXXXX", tmpdir != NULL ? tmpdir : "/tmp");
    if (mkdtemp(fx->root) == NULL) {
        fail_msg("mkdtemp: %s", strerror(errno));
    }
    fx->path = path_join(fx->root, "INBOX");
    assert_int_equal(md_folder_open(fx->path, true, false, &fx->f, NULL), 0);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    md_folder_close(fx->f);
    nftw(fx->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fx->root);
    free(fx->path);
    free(fx);
    return 0;
}

static unsigned count_entries(struct fixture *fx, const char *sub)
{
    char *dir = path_join(fx->path, sub);
    unsigned n = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        n += de->d_name[0] != '.';
    }
    closedir(d);
    free(dir);
    return n;
}

static char *read_file(const char *path, size_t *len_r)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    char *buf = NULL;
    size_t len = 0;
    char tmp[65536];
    size_t k;
    while ((k = fread(tmp, 1, sizeof(tmp), fp)) > 0) {
        buf = xrealloc(buf, len + k + 1);
        memcpy(buf + len, tmp, k);
        len += k;
    }
    fclose(fp);
    *len_r = len;
    return buf;
}

static void on_drained(void *arg)
{
    struct fixture *fx = arg;
    fx->drained++;
}

/* Message i's bytes: CRLF lines of a pattern of its own, so that pieces
 * and chunks split CR from LF now and then. */
static char *message(unsigned i, size_t n)
{
    char *m = xmalloc(n);
    for (size_t k = 0; k < n; k++) {
        m[k] = (k % 61 == 59) ? '\r' : (k % 61 == 60) ? '\n' : (char)('a' + (i * 7 + k) % 26);
    }
    return m;
}

/* The same with CRLF written as LF, as the writer stores it. */
static char *as_stored(const char *m, size_t n, size_t *len_r)
{
    char *out = xmalloc(n + 1);
    size_t o = 0;
    for (size_t k = 0; k < n; k++) {
        if (m[k] == '\r' && k + 1 < n && m[k + 1] == '\n') {
            continue;
        }
        out[o++] = m[k];
    }
    *len_r = o;
    return out;
}

static void commit_and_check(struct fixture *fx, struct md_writer *w, const char *m, size_t n)
{
    struct md_msg msg = {0};
    assert_int_equal(md_writer_commit(w, false, 0, 0, 0, false, &msg), 0);
    char *path = path_join(fx->path, "new");
    char *file = path_join(path, msg.name);
    size_t got_len = 0;
    char *got = read_file(file, &got_len);
    size_t want_len = 0;
    char *want = as_stored(m, n, &want_len);
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
    free(got);
    free(want);
    free(file);
    free(path);
    md_msg_clear(&msg);
}

static void test_writer_created_late(void **state)
{
    struct fixture *fx = *state;
    struct md_writer *w = NULL;
    assert_int_equal(md_writer_new(fx->f, true, &w), 0);
    assert_non_null(md_writer_id(w));
    /* Nothing on disk until bytes must go to the file. */
    assert_int_equal(count_entries(fx, "tmp"), 0);
    assert_int_equal(md_writer_write(w, "Subject: x\r\n\r\nhi\r\n", 19), 0);
    assert_int_equal(count_entries(fx, "tmp"), 0);
    assert_int_equal(md_writer_finish(w, 1000000000), 0);
    assert_int_equal(count_entries(fx, "tmp"), 1);
    commit_and_check(fx, w, "Subject: x\r\n\r\nhi\r\n", 19);
    assert_int_equal(count_entries(fx, "tmp"), 0);

    /* An empty message is a file too. */
    assert_int_equal(md_writer_new(fx->f, false, &w), 0);
    struct md_msg msg = {0};
    assert_int_equal(md_writer_commit(w, false, 0, 0, 0, false, &msg), 0);
    assert_int_equal(count_entries(fx, "new"), 2);
    md_msg_clear(&msg);

    /* An abort before any write removes nothing (there is nothing). */
    assert_int_equal(md_writer_new(fx->f, false, &w), 0);
    md_writer_abort(w);
    assert_int_equal(count_entries(fx, "tmp"), 0);
}

static void test_writer_create_fails(void **state)
{
    struct fixture *fx = *state;
    /* Another file already has the writer's name: the writer fails with
     * EEXIST, names the path, and never removes that file. */
    struct md_writer *w = NULL;
    assert_int_equal(md_writer_new(fx->f, false, &w), 0);
    char *tmp = path_join(fx->path, "tmp");
    char *other = path_join(tmp, md_writer_id(w));
    int fd = open(other, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "theirs", 6), 6);
    close(fd);
    char *big = xcalloc(1, 100000);
    assert_int_equal(md_writer_write(w, big, 100000), -EEXIST);
    assert_non_null(strstr(md_folder_error(fx->f), other));
    assert_non_null(strstr(md_folder_error(fx->f), "cannot create"));
    struct md_msg msg = {0};
    assert_int_equal(md_writer_commit(w, false, 0, 0, 0, false, &msg), -EEXIST);
    struct stat st;
    assert_int_equal(stat(other, &st), 0);
    assert_int_equal(st.st_size, 6);
    assert_int_equal(unlink(other), 0);
    assert_int_equal(count_entries(fx, "new"), 0);

    /* tmp/ gone (a Maildir edited underneath): the write says so. */
    assert_int_equal(md_writer_new(fx->f, false, &w), 0);
    assert_int_equal(rmdir(tmp), 0);
    assert_int_equal(md_writer_write(w, big, 100000), -ENOENT);
    assert_non_null(strstr(md_folder_error(fx->f), tmp));
    md_writer_abort(w);
    assert_int_equal(mkdir(tmp, 0700), 0);
    free(big);
    free(other);
    free(tmp);
}

static void run_until_idle(struct fixture *fx, struct diskq *q)
{
    while (diskq_busy(q)) {
        uv_run(&fx->loop, UV_RUN_ONCE);
    }
}

static void test_queue_order_and_aborts(void **state)
{
    struct fixture *fx = *state;
    struct diskq *q = diskq_new(&fx->loop, on_drained, fx);
    enum {
        N = 6
    };
    size_t sizes[N] = {1, 61, 70000, 200003, 5000, 131072};
    char *msgs[N];
    size_t sent[N] = {0};
    struct md_writer *ws[N];
    for (unsigned i = 0; i < N; i++) {
        msgs[i] = message(i, sizes[i]);
        assert_int_equal(md_writer_new(fx->f, true, &ws[i]), 0);
    }
    /* Interleaved pieces of odd sizes, as several FETCH literals would not
     * be, but the queue must not care. Message 3 is aborted half-way. */
    unsigned seed = 7;
    bool left = true;
    while (left) {
        left = false;
        for (unsigned i = 0; i < N; i++) {
            if (sent[i] == sizes[i] || (i == 3 && sent[i] > 100000)) {
                continue;
            }
            seed = seed * 1103515245u + 12345u;
            size_t k = 1 + (seed >> 8) % 9000;
            if (k > sizes[i] - sent[i]) {
                k = sizes[i] - sent[i];
            }
            diskq_write(q, ws[i], msgs[i] + sent[i], k);
            sent[i] += k;
            left = true;
        }
    }
    char *tmp = path_join(fx->path, "tmp");
    char *aborted = path_join(tmp, md_writer_id(ws[3]));
    diskq_abort(q, ws[3]);
    ws[3] = NULL;
    diskq_kick(q);
    assert_true(diskq_busy(q));
    run_until_idle(fx, q);
    assert_true(fx->drained >= 1);
    assert_int_equal(diskq_bytes(q), 0);
    /* The aborted message's file (it had 100,000 bytes written) is gone;
     * the two others larger than the writer's buffer are in tmp/ (the
     * small ones are still buffered), and all are complete once
     * committed. */
    struct stat st;
    assert_int_equal(stat(aborted, &st), -1);
    assert_int_equal(count_entries(fx, "tmp"), 2);
    free(aborted);
    free(tmp);
    for (unsigned i = 0; i < N; i++) {
        if (ws[i] != NULL) {
            commit_and_check(fx, ws[i], msgs[i], sizes[i]);
        }
        free(msgs[i]);
    }
    assert_int_equal(count_entries(fx, "tmp"), 0);
    assert_int_equal(count_entries(fx, "new"), N - 1);
    diskq_free(q);
}

struct runner {
    uv_thread_t t;
    struct diskq *q;
};

static void run_thread(void *arg)
{
    struct runner *r = arg;
    diskq_run(r->q);
}

static void test_run_beside_a_job(void **state)
{
    struct fixture *fx = *state;
    struct diskq *q = diskq_new(&fx->loop, on_drained, fx);
    enum {
        N = 50,
        SIZE = 50000
    };
    struct md_writer *ws[N];
    char *msgs[N];
    for (unsigned i = 0; i < N; i++) {
        msgs[i] = message(i, SIZE);
        assert_int_equal(md_writer_new(fx->f, true, &ws[i]), 0);
    }
    /* Each message in two pieces: the first half of all of them queued
     * (jobs start as chunks fill), then another thread carries out what
     * is queued, as a batch's commit job does, while the rest is queued. */
    for (unsigned i = 0; i < N; i++) {
        diskq_write(q, ws[i], msgs[i], SIZE / 2);
    }
    assert_true(diskq_busy(q));
    assert_true(diskq_bytes(q) > 0);
    struct runner r = {.q = q};
    assert_int_equal(uv_thread_create(&r.t, run_thread, &r), 0);
    for (unsigned i = 0; i < N; i++) {
        diskq_write(q, ws[i], msgs[i] + SIZE / 2, SIZE - SIZE / 2);
    }
    diskq_kick(q);
    assert_int_equal(uv_thread_join(&r.t), 0);
    run_until_idle(fx, q);
    /* Whatever the interleaving, every byte is in its file, in order. */
    diskq_run(q);
    assert_int_equal(diskq_bytes(q), 0);
    for (unsigned i = 0; i < N; i++) {
        commit_and_check(fx, ws[i], msgs[i], SIZE);
        free(msgs[i]);
    }
    diskq_free(q);
}

static void test_free_drops_queued(void **state)
{
    struct fixture *fx = *state;
    struct diskq *q = diskq_new(&fx->loop, on_drained, fx);
    struct md_writer *w = NULL;
    assert_int_equal(md_writer_new(fx->f, false, &w), 0);
    /* Below a chunk and not kicked: still queued, no job. */
    diskq_write(q, w, "abc", 3);
    assert_false(diskq_busy(q));
    assert_int_equal(diskq_bytes(q), 3);
    /* A folder torn down: the queue is freed, the write dropped (it never
     * reached a file), and the owner aborts the writer. */
    diskq_free(q);
    assert_int_equal(count_entries(fx, "tmp"), 0);
    md_writer_abort(w);
    assert_int_equal(count_entries(fx, "tmp"), 0);
    assert_int_equal(fx->drained, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_writer_created_late, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_create_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_order_and_aborts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_beside_a_job, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_drops_queued, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
