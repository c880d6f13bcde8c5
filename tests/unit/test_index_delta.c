/* LINK: ms_store ms_core */
/* Tests for what a sync of a server delta asks the index without reading a
 * folder's whole base (idx_msg_uid_last): the highest UID a folder holds a
 * record under, and whether a record without UID (an intent) waits, found
 * between neighbouring folders whose keys sort right before and after. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "store/index.h"

struct fx {
    char dir[256];
    struct idx *idx;
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
    struct fx *fx = xcalloc(1, sizeof(*fx));
    const char *tmp = getenv("TMPDIR");
    snprintf(fx->dir, sizeof(fx->dir), "%s/test_index_delta.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(fx->dir) == NULL) {
        free(fx);
        return -1;
    }
    char *err = NULL;
    if (idx_open(fx->dir, "acct", &fx->idx, &err) != 0) {
        free(err);
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    idx_close(fx->idx);
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

static void put(struct idx *idx, const char *folder, uint32_t uid, const char *lid, uint8_t state)
{
    struct idx_txn *t;
    assert_int_equal(idx_begin(idx, true, &t), 0);
    struct idx_msg *m = xcalloc(1, sizeof(*m));
    m->uid = uid;
    m->state = state;
    snprintf(m->lid, sizeof(m->lid), "%s", lid);
    assert_int_equal(idx_msg_put(t, folder, m), 0);
    free(m);
    assert_int_equal(idx_commit(t), 0);
}

static void drop_uid(struct idx *idx, const char *folder, uint32_t uid)
{
    struct idx_txn *t;
    assert_int_equal(idx_begin(idx, true, &t), 0);
    assert_int_equal(idx_msg_delete_uid(t, folder, uid), 0);
    assert_int_equal(idx_commit(t), 0);
}

static void drop_lid(struct idx *idx, const char *folder, const char *lid)
{
    struct idx_txn *t;
    assert_int_equal(idx_begin(idx, true, &t), 0);
    assert_int_equal(idx_msg_delete_lid(t, folder, lid), 0);
    assert_int_equal(idx_commit(t), 0);
}

/* Asks idx_msg_uid_last in a read transaction; returns its result. */
static int last(struct idx *idx, const char *folder, uint32_t *uid_r, bool *pending_r)
{
    struct idx_txn *t;
    assert_int_equal(idx_begin(idx, false, &t), 0);
    *uid_r = 12345;
    *pending_r = true;
    int rc = idx_msg_uid_last(t, folder, uid_r, pending_r);
    idx_abort(t);
    return rc;
}

/* The highest UID of the folder asked about, never a neighbour's: folders
 * created before and after it hold higher and lower UIDs. */
static void test_uid_last(void **state)
{
    struct fx *fx = *state;
    uint32_t uid;
    bool pending;
    assert_int_equal(last(fx->idx, "INBOX", &uid, &pending), -ENOENT);

    put(fx->idx, "A", 900, "a900", IDX_MSG_SYNCED); /* the folder before */
    put(fx->idx, "INBOX", 7, "l7", IDX_MSG_SYNCED);
    put(fx->idx, "INBOX", 3, "l3", IDX_MSG_SYNCED);
    put(fx->idx, "INBOX", 41, "l41", IDX_MSG_SYNCED);
    put(fx->idx, "Z", 2, "z2", IDX_MSG_SYNCED); /* the folder after */

    assert_int_equal(last(fx->idx, "INBOX", &uid, &pending), 0);
    assert_int_equal(uid, 41);
    assert_false(pending);
    assert_int_equal(last(fx->idx, "A", &uid, &pending), 0);
    assert_int_equal(uid, 900);
    assert_int_equal(last(fx->idx, "Z", &uid, &pending), 0);
    assert_int_equal(uid, 2);

    /* A download intent has its UID: it counts. */
    put(fx->idx, "INBOX", 50, "l50", IDX_MSG_APPENDING);
    assert_int_equal(last(fx->idx, "INBOX", &uid, &pending), 0);
    assert_int_equal(uid, 50);
    assert_false(pending);

    /* The highest UID at the top of the range. */
    put(fx->idx, "INBOX", UINT32_MAX, "lmax", IDX_MSG_SYNCED);
    assert_int_equal(last(fx->idx, "INBOX", &uid, &pending), 0);
    assert_int_equal(uid, UINT32_MAX);
    drop_uid(fx->idx, "INBOX", UINT32_MAX);
    drop_uid(fx->idx, "INBOX", 50);
    assert_int_equal(last(fx->idx, "INBOX", &uid, &pending), 0);
    assert_int_equal(uid, 41);

    /* Every record gone: 0, not a neighbour's UID. */
    drop_uid(fx->idx, "INBOX", 3);
    drop_uid(fx->idx, "INBOX", 7);
    drop_uid(fx->idx, "INBOX", 41);
    assert_int_equal(last(fx->idx, "INBOX", &uid, &pending), 0);
    assert_int_equal(uid, 0);
    assert_false(pending);
}

/* An upload intent (no UID) is seen in its own folder only. */
static void test_pending(void **state)
{
    struct fx *fx = *state;
    uint32_t uid;
    bool pending;
    put(fx->idx, "A", 0, "up-a", IDX_MSG_APPENDING);
    put(fx->idx, "INBOX", 5, "l5", IDX_MSG_SYNCED);
    put(fx->idx, "Z", 0, "up-z", IDX_MSG_APPENDING);
    assert_int_equal(last(fx->idx, "INBOX", &uid, &pending), 0);
    assert_int_equal(uid, 5);
    assert_false(pending);
    assert_int_equal(last(fx->idx, "A", &uid, &pending), 0);
    assert_int_equal(uid, 0);
    assert_true(pending);

    put(fx->idx, "INBOX", 0, "up-inbox", IDX_MSG_APPENDING);
    assert_int_equal(last(fx->idx, "INBOX", &uid, &pending), 0);
    assert_int_equal(uid, 5);
    assert_true(pending);
    drop_lid(fx->idx, "INBOX", "up-inbox");
    assert_int_equal(last(fx->idx, "INBOX", &uid, &pending), 0);
    assert_false(pending);
}

/* idx_map_drop gives the mapped pages back (where the map was found):
 * the drop count grows, and the records read before it read the same
 * after it. */
static void test_map_drop(void **state)
{
    struct fx *fx = *state;
    for (uint32_t u = 1; u <= 200; u++) {
        char lid[32];
        snprintf(lid, sizeof(lid), "lid-%u", (unsigned)u);
        put(fx->idx, "INBOX", u, lid, IDX_MSG_SYNCED);
    }
    const void *start;
    size_t len;
    uint64_t before, after;
    bool found = idx_map_range(fx->idx, &start, &len, &before);
    struct idx_txn *t;
    assert_int_equal(idx_begin(fx->idx, false, &t), 0);
    struct idx_msg *m = xcalloc(1, sizeof(*m));
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 150, m), 0);
    assert_string_equal(m->lid, "lid-150");
    idx_map_drop(fx->idx);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 150, m), 0);
    assert_string_equal(m->lid, "lid-150");
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 7, m), 0);
    assert_string_equal(m->lid, "lid-7");
    idx_abort(t);
    free(m);
    idx_map_range(fx->idx, &start, &len, &after);
    assert_int_equal(after, found ? before + 1 : before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_uid_last, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_drop, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
