/* LINK: ms_idx_v1 ms_store ms_core */
/* Tests for the LMDB sync index: record round trips and replacement rules,
 * walks and counts, folder deletion, POP3 and meta records, persistence,
 * file modes, the per-account lock (also across fork), schema version
 * refusal, map growth and corrupt records, and read-only opening beside a
 * writer. Raw LMDB is used only while the index is closed, to look at or
 * damage what it wrote. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <lmdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/util.h"
#include "store/index.h"
#include "tests/tools/idx_v1.h"

#define INITIAL_MAP ((size_t)8 << 20)

struct fx {
    char dir[256];
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
    snprintf(fx->dir, sizeof(fx->dir), "%s/test_index.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(fx->dir) == NULL) {
        free(fx);
        return -1;
    }
    umask(022);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (!getenv("KEEP"))
        nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else
        fprintf(stderr, "kept %s\n", fx->dir);
    free(fx);
    return 0;
}

static struct idx *open_ok(struct fx *fx, const char *account)
{
    struct idx *idx = NULL;
    char *err = NULL;
    int rc = idx_open(fx->dir, account, &idx, &err);
    if (rc != 0) {
        fail_msg("idx_open(%s): %d %s", account, rc, err ? err : "(no message)");
    }
    assert_null(err);
    assert_non_null(idx);
    return idx;
}

static struct idx *open_ro_ok(struct fx *fx, const char *account)
{
    struct idx *idx = NULL;
    char *err = NULL;
    int rc = idx_open_readonly(fx->dir, account, &idx, &err);
    if (rc != 0) {
        fail_msg("idx_open_readonly(%s): %d %s", account, rc, err ? err : "(no message)");
    }
    assert_null(err);
    assert_non_null(idx);
    return idx;
}

static struct idx_txn *begin(struct idx *idx, bool write)
{
    struct idx_txn *t = NULL;
    int rc = idx_begin(idx, write, &t);
    if (rc != 0) {
        fail_msg("idx_begin: %d %s", rc, idx_error(idx));
    }
    return t;
}

static void commit(struct idx *idx, struct idx_txn *t)
{
    int rc = idx_commit(t);
    if (rc != 0) {
        fail_msg("idx_commit: %d %s", rc, idx_error(idx));
    }
}

static void make_msg(struct idx_msg *m, uint32_t uid, const char *lid, uint8_t state,
                     const char *keywords)
{
    memset(m, 0, sizeof(*m));
    m->uid = uid;
    m->state = state;
    m->flags = (uint8_t)(uid & 0x3f);
    m->size = 1000ull * uid + 7;
    snprintf(m->lid, sizeof(m->lid), "%s", lid);
    snprintf(m->keywords, sizeof(m->keywords), "%s", keywords);
    for (int i = 0; i < 16; i++) {
        m->msgid_hash[i] = (uint8_t)(uid * 31 + (uint32_t)i);
    }
    /* Odd UIDs carry an EMAILID hash (a version 3 record), even ones do
     * not (version 2, as older indexes hold): both round-trip. */
    for (int i = 0; i < 8 && (uid & 1); i++) {
        m->emailid_hash[i] = (uint8_t)(uid * 7 + (uint32_t)i + 1);
    }
}

static void assert_msg_equal(const struct idx_msg *a, const struct idx_msg *b)
{
    assert_int_equal(a->uid, b->uid);
    assert_int_equal(a->state, b->state);
    assert_int_equal(a->flags, b->flags);
    assert_int_equal(a->size, b->size);
    assert_string_equal(a->lid, b->lid);
    assert_string_equal(a->keywords, b->keywords);
    assert_memory_equal(a->msgid_hash, b->msgid_hash, 16);
    assert_memory_equal(a->emailid_hash, b->emailid_hash, 8);
}

static void put_msg(struct idx *idx, struct idx_txn *t, const char *folder, const struct idx_msg *m)
{
    int rc = idx_msg_put(t, folder, m);
    if (rc != 0) {
        fail_msg("idx_msg_put(%s, %u, %s): %d %s", folder, m->uid, m->lid, rc, idx_error(idx));
    }
}

/* Raw LMDB access to a closed index. */
struct raw {
    MDB_env *env;
    MDB_txn *txn;
};

static void raw_open(struct fx *fx, const char *account, struct raw *r)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s/index.mdb", fx->dir, account);
    assert_int_equal(mdb_env_create(&r->env), 0);
    assert_int_equal(mdb_env_set_maxdbs(r->env, 16), 0);
    assert_int_equal(mdb_env_open(r->env, path, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(r->env, NULL, 0, &r->txn), 0);
}

static MDB_dbi raw_dbi(struct raw *r, const char *name)
{
    MDB_dbi dbi;
    assert_int_equal(mdb_dbi_open(r->txn, name, 0, &dbi), 0);
    return dbi;
}

static void raw_put(struct raw *r, const char *db, const void *key, size_t klen, const void *val,
                    size_t vlen)
{
    MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
    MDB_val v = {.mv_size = vlen, .mv_data = (void *)val};
    assert_int_equal(mdb_put(r->txn, raw_dbi(r, db), &k, &v, 0), 0);
}

static int raw_get(struct raw *r, const char *db, const void *key, size_t klen, MDB_val *v)
{
    MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
    return mdb_get(r->txn, raw_dbi(r, db), &k, v);
}

static size_t raw_entries(struct raw *r, const char *db)
{
    MDB_stat st;
    assert_int_equal(mdb_stat(r->txn, raw_dbi(r, db), &st), 0);
    return st.ms_entries;
}

static void raw_close(struct raw *r)
{
    assert_int_equal(mdb_txn_commit(r->txn), 0);
    mdb_env_close(r->env);
}

static void uid_key(uint8_t key[8], uint32_t fid, uint32_t uid)
{
    key[0] = (uint8_t)(fid >> 24);
    key[1] = (uint8_t)(fid >> 16);
    key[2] = (uint8_t)(fid >> 8);
    key[3] = (uint8_t)fid;
    key[4] = (uint8_t)(uid >> 24);
    key[5] = (uint8_t)(uid >> 16);
    key[6] = (uint8_t)(uid >> 8);
    key[7] = (uint8_t)uid;
}

/* Folders */

static int count_folder(const char *folder, const struct idx_folder *st, void *arg)
{
    (*(int *)arg)++;
    return 0;
}

/* An empty index walks nothing (and must not hand qsort a NULL array), and
 * two read transactions can be open at once on one thread (MDB_NOTLS), as
 * happens when a walk callback reads again or a threadpool job reuses a
 * thread. */
static void test_empty_walk_and_two_readers(void **state)
{
    struct idx *idx = open_ok(*state, "acct");
    struct idx_txn *r1 = begin(idx, false);
    int n = 0;
    assert_int_equal(idx_folder_foreach(r1, count_folder, &n), 0);
    assert_int_equal(n, 0);
    struct idx_txn *r2 = begin(idx, false);
    struct idx_folder st;
    assert_int_equal(idx_folder_get(r2, "INBOX", &st), -ENOENT);
    idx_abort(r2);
    idx_abort(r1);
    idx_close(idx);
}

static void assert_folder_equal(const struct idx_folder *a, const struct idx_folder *b)
{
    assert_int_equal(a->uidvalidity, b->uidvalidity);
    assert_int_equal(a->uidnext, b->uidnext);
    assert_true(a->highestmodseq == b->highestmodseq);
    assert_true(a->last_full_sync == b->last_full_sync);
    assert_int_equal(a->messages, b->messages);
    assert_true(a->cur_ctime_ns == b->cur_ctime_ns);
    assert_true(a->new_ctime_ns == b->new_ctime_ns);
    assert_true(a->scan_time_ns == b->scan_time_ns);
}

/* Every field of a folder record round trips, extremes included, in the
 * writing transaction and from the file after a reopen. */
static void test_folder_roundtrip(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_folder st = {.uidvalidity = 1700000001u,
                            .uidnext = 4242,
                            .highestmodseq = (1ull << 62) + 5,
                            .last_full_sync = -12345678901ll,
                            .messages = 4000000000u,
                            .cur_ctime_ns = 1733500000123456789ll,
                            .new_ctime_ns = -1,
                            .scan_time_ns = INT64_MAX};
    struct idx_folder top = {.uidvalidity = UINT32_MAX,
                             .uidnext = UINT32_MAX,
                             .highestmodseq = UINT64_MAX,
                             .last_full_sync = INT64_MIN,
                             .messages = UINT32_MAX,
                             .cur_ctime_ns = INT64_MIN,
                             .new_ctime_ns = INT64_MAX,
                             .scan_time_ns = 0};
    assert_int_equal(idx_folder_put(t, "INBOX", &st), 0);
    assert_int_equal(idx_folder_put(t, "Top", &top), 0);
    struct idx_folder got;
    memset(&got, 0xaa, sizeof(got));
    assert_int_equal(idx_folder_get(t, "INBOX", &got), 0);
    assert_folder_equal(&got, &st);

    /* Replacing keeps one entry with the new values. */
    st.uidnext = 5000;
    st.highestmodseq = 77;
    st.new_ctime_ns = 5;
    assert_int_equal(idx_folder_put(t, "INBOX", &st), 0);
    assert_int_equal(idx_folder_get(t, "INBOX", &got), 0);
    assert_folder_equal(&got, &st);

    assert_int_equal(idx_folder_get(t, "Nope", &got), -ENOENT);
    assert_non_null(strstr(idx_error(idx), "Nope"));
    commit(idx, t);
    idx_close(idx);

    idx = open_ok(fx, "acct");
    t = begin(idx, false);
    memset(&got, 0x55, sizeof(got));
    assert_int_equal(idx_folder_get(t, "INBOX", &got), 0);
    assert_folder_equal(&got, &st);
    assert_int_equal(idx_folder_get(t, "Top", &got), 0);
    assert_folder_equal(&got, &top);
    idx_abort(t);
    idx_close(idx);
}

static void assert_mailboxid(struct idx_txn *t, const char *folder, const char *want)
{
    char id[IDX_MAILBOXID_MAX + 1];
    memset(id, 'x', sizeof(id));
    assert_int_equal(idx_folder_mailboxid_get(t, folder, id), 0);
    assert_string_equal(id, want);
}

/* A folder's MAILBOXID (RFC 8474): set, replaced and forgotten; left alone
 * by idx_folder_put; moved by idx_folder_rename (the old name, created
 * again, has none); removed with the folder (so the same name created
 * again has none); kept across a reopen; and absent, not an error, for a
 * folder written without one, as every folder of an older index is. */
static void test_folder_mailboxid(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_folder st = {.uidvalidity = 7, .uidnext = 3, .messages = 2};
    assert_int_equal(idx_folder_put(t, "Old", &st), 0);
    assert_int_equal(idx_folder_put(t, "Other", &st), 0);
    assert_mailboxid(t, "Old", "");
    assert_int_equal(idx_folder_mailboxid_put(t, "Old", "F-first_1"), 0);
    assert_mailboxid(t, "Old", "F-first_1");
    assert_int_equal(idx_folder_mailboxid_put(t, "Old", "F-second"), 0);
    assert_mailboxid(t, "Old", "F-second");
    assert_mailboxid(t, "Other", "");
    char big[IDX_MAILBOXID_MAX + 2];
    memset(big, 'b', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(idx_folder_mailboxid_put(t, "Other", big), -EINVAL);
    big[IDX_MAILBOXID_MAX] = '\0';
    assert_int_equal(idx_folder_mailboxid_put(t, "Other", big), 0);
    assert_mailboxid(t, "Other", big);
    assert_int_equal(idx_folder_mailboxid_put(t, "Other", ""), 0);
    assert_mailboxid(t, "Other", "");
    assert_int_equal(idx_folder_mailboxid_put(t, "Nope", "F1"), -ENOENT);
    char id[IDX_MAILBOXID_MAX + 1];
    assert_int_equal(idx_folder_mailboxid_get(t, "Nope", id), -ENOENT);
    /* The folder's state replaced: the id stays. */
    st.uidnext = 9;
    assert_int_equal(idx_folder_put(t, "Old", &st), 0);
    assert_mailboxid(t, "Old", "F-second");
    /* Caller meta keys live beside it untouched. */
    assert_int_equal(idx_meta_put(t, "mailboxid", "v", 1), 0);
    commit(idx, t);

    t = begin(idx, true);
    assert_int_equal(idx_folder_rename(t, "Old", "New"), 0);
    assert_mailboxid(t, "New", "F-second");
    assert_int_equal(idx_folder_put(t, "Old", &st), 0);
    assert_mailboxid(t, "Old", "");
    assert_int_equal(idx_folder_mailboxid_put(t, "Other", "F-other"), 0);
    commit(idx, t);
    idx_close(idx);

    idx = open_ok(fx, "acct");
    t = begin(idx, false);
    assert_mailboxid(t, "New", "F-second");
    assert_mailboxid(t, "Other", "F-other");
    assert_mailboxid(t, "Old", "");
    size_t len = 0;
    char v[4];
    assert_int_equal(idx_meta_get(t, "mailboxid", v, sizeof(v), &len), 0);
    assert_int_equal(len, 1);
    idx_abort(t);

    /* Deleted with its folder: nothing is left in the meta database. */
    t = begin(idx, true);
    assert_int_equal(idx_folder_delete(t, "Other"), 0);
    assert_int_equal(idx_folder_delete(t, "New"), 0);
    assert_int_equal(idx_folder_put(t, "Other", &st), 0);
    assert_mailboxid(t, "Other", "");
    commit(idx, t);
    idx_close(idx);
    struct raw r;
    raw_open(fx, "acct", &r);
    /* schema_version, next_folder_id and the caller's key. */
    assert_int_equal(raw_entries(&r, "meta"), 3);
    raw_close(&r);
}

struct name_list {
    char *names[16];
    struct idx_folder st[16];
    size_t n;
    size_t stop_after;
};

static int collect_folder(const char *folder, const struct idx_folder *st, void *arg)
{
    struct name_list *l = arg;
    l->names[l->n] = xstrdup(folder);
    l->st[l->n] = *st;
    l->n++;
    return l->n == l->stop_after ? 99 : 0;
}

static void free_names(struct name_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->names[i]);
    }
}

static void test_folder_long_names_and_order(void **state)
{
    struct idx *idx = open_ok(*state, "acct");
    /* Two names longer than the 400-byte plain-key limit sharing their
     * first 400 bytes, so only the hash tells them apart, and one of 1000
     * bytes. */
    char *long_a = xmalloc(1001), *long_b = xmalloc(1001), *long_c = xmalloc(1001);
    memset(long_a, 'M', 1000);
    long_a[1000] = '\0';
    memset(long_b, 'M', 450);
    long_b[450] = '\0';
    memset(long_c, 'M', 450);
    memcpy(long_c + 440, "0000000000", 10);
    long_c[450] = '\0';
    const char *order[] = {
        "Archive", "INBOX", long_c, long_b, long_a, "Sent", "Z/\xc3\xa9t\xc3\xa9"};
    const char *insert[] = {"Sent", long_a,    "INBOX", "Z/\xc3\xa9t\xc3\xa9",
                            long_b, "Archive", long_c};

    struct idx_txn *t = begin(idx, true);
    for (size_t i = 0; i < ARRAY_SIZE(insert); i++) {
        struct idx_folder st = {.uidvalidity = (uint32_t)(100 + i), .uidnext = (uint32_t)i};
        assert_int_equal(idx_folder_put(t, insert[i], &st), 0);
    }
    commit(idx, t);

    t = begin(idx, false);
    struct idx_folder got;
    assert_int_equal(idx_folder_get(t, long_a, &got), 0);
    assert_int_equal(got.uidvalidity, 101);
    assert_int_equal(idx_folder_get(t, long_b, &got), 0);
    assert_int_equal(got.uidvalidity, 104);
    assert_int_equal(idx_folder_get(t, long_c, &got), 0);
    assert_int_equal(got.uidvalidity, 106);

    struct name_list l = {.n = 0};
    assert_int_equal(idx_folder_foreach(t, collect_folder, &l), 0);
    assert_int_equal(l.n, ARRAY_SIZE(order));
    for (size_t i = 0; i < l.n; i++) {
        assert_string_equal(l.names[i], order[i]);
    }
    assert_int_equal(l.st[4].uidvalidity, 101); /* long_a */
    free_names(&l);

    /* A non-zero return stops the walk and is returned. */
    struct name_list l2 = {.stop_after = 2};
    assert_int_equal(idx_folder_foreach(t, collect_folder, &l2), 99);
    assert_int_equal(l2.n, 2);
    free_names(&l2);
    idx_abort(t);

    /* Too long a name is refused. */
    char *huge = xmalloc(5000);
    memset(huge, 'x', 4999);
    huge[4999] = '\0';
    t = begin(idx, true);
    struct idx_folder st = {0};
    assert_int_equal(idx_folder_put(t, huge, &st), -EINVAL);
    assert_int_equal(idx_folder_put(t, "", &st), -EINVAL);
    idx_abort(t);
    free(huge);
    free(long_a);
    free(long_b);
    free(long_c);
    idx_close(idx);
}

/* Messages */

static void test_msg_synced_roundtrip(void **state)
{
    struct idx *idx = open_ok(*state, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m, got;
    make_msg(&m, 17, "1700000000.M1P2.host", IDX_MSG_SYNCED, "$Junk $label1 work");
    m.size = 0xfedcba9876543210ull;
    put_msg(idx, t, "INBOX", &m);
    commit(idx, t);

    t = begin(idx, false);
    memset(&got, 0x55, sizeof(got));
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 17, &got), 0);
    assert_msg_equal(&got, &m);
    memset(&got, 0x55, sizeof(got));
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "1700000000.M1P2.host", &got), 0);
    assert_msg_equal(&got, &m);
    assert_int_equal(idx_msg_count(t, "INBOX"), 1);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 18, &got), -ENOENT);
    assert_non_null(strstr(idx_error(idx), "UID 18"));
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "other", &got), -ENOENT);
    assert_int_equal(idx_msg_get_uid(t, "Other", 17, &got), -ENOENT);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 0, &got), -EINVAL);
    assert_int_equal(idx_msg_count(t, "Other"), 0);

    /* The first message put created the folder, never synced. */
    struct idx_folder fst;
    assert_int_equal(idx_folder_get(t, "INBOX", &fst), 0);
    assert_int_equal(fst.uidvalidity, 0);
    idx_abort(t);

    /* Maximum sizes round trip. */
    t = begin(idx, true);
    char kw[IDX_KEYWORDS_MAX + 1], lid[IDX_LID_MAX + 1];
    memset(kw, 'k', IDX_KEYWORDS_MAX);
    kw[IDX_KEYWORDS_MAX] = '\0';
    memset(lid, 'l', IDX_LID_MAX);
    lid[IDX_LID_MAX] = '\0';
    make_msg(&m, UINT32_MAX, lid, IDX_MSG_SYNCED, kw);
    put_msg(idx, t, "INBOX", &m);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", UINT32_MAX, &got), 0);
    assert_msg_equal(&got, &m);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", lid, &got), 0);
    assert_msg_equal(&got, &m);
    commit(idx, t);
    idx_close(idx);
}

static void test_msg_appending_to_synced(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m, got;
    make_msg(&m, 0, "local.1", IDX_MSG_APPENDING, "");
    put_msg(idx, t, "INBOX", &m);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "local.1", &got), 0);
    assert_msg_equal(&got, &m);
    assert_int_equal(got.state, IDX_MSG_APPENDING);
    assert_int_equal(idx_msg_count(t, "INBOX"), 1);
    commit(idx, t);
    idx_close(idx);

    struct raw r;
    raw_open(fx, "acct", &r);
    assert_int_equal(raw_entries(&r, "messages_appending"), 1);
    assert_int_equal(raw_entries(&r, "messages"), 0);
    raw_close(&r);

    /* APPENDUID arrived: same lid, now with a UID. */
    idx = open_ok(fx, "acct");
    t = begin(idx, true);
    make_msg(&m, 321, "local.1", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "local.1", &got), 0);
    assert_msg_equal(&got, &m);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 321, &got), 0);
    assert_int_equal(got.state, IDX_MSG_SYNCED);
    assert_int_equal(idx_msg_count(t, "INBOX"), 1);
    commit(idx, t);
    idx_close(idx);

    raw_open(fx, "acct", &r);
    assert_int_equal(raw_entries(&r, "messages_appending"), 0);
    assert_int_equal(raw_entries(&r, "messages"), 1);
    assert_int_equal(raw_entries(&r, "message_lids"), 1);
    raw_close(&r);

    /* And back (a message that must be appended again): the UID keys go. */
    idx = open_ok(fx, "acct");
    t = begin(idx, true);
    make_msg(&m, 0, "local.1", IDX_MSG_APPENDING, "x");
    put_msg(idx, t, "INBOX", &m);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 321, &got), -ENOENT);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "local.1", &got), 0);
    assert_msg_equal(&got, &m);
    assert_int_equal(idx_msg_count(t, "INBOX"), 1);
    commit(idx, t);
    idx_close(idx);

    raw_open(fx, "acct", &r);
    assert_int_equal(raw_entries(&r, "messages_appending"), 1);
    assert_int_equal(raw_entries(&r, "messages"), 0);
    assert_int_equal(raw_entries(&r, "message_lids"), 0);
    raw_close(&r);
}

static void test_msg_lid_change(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m, got;
    make_msg(&m, 5, "old.lid", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    make_msg(&m, 5, "new.lid", IDX_MSG_SYNCED, "a");
    put_msg(idx, t, "INBOX", &m);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "old.lid", &got), -ENOENT);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "new.lid", &got), 0);
    assert_msg_equal(&got, &m);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 5, &got), 0);
    assert_string_equal(got.lid, "new.lid");
    assert_int_equal(idx_msg_count(t, "INBOX"), 1);
    commit(idx, t);
    idx_close(idx);

    struct raw r;
    raw_open(fx, "acct", &r);
    assert_int_equal(raw_entries(&r, "message_lids"), 1);
    assert_int_equal(raw_entries(&r, "messages"), 1);
    raw_close(&r);
}

static void test_msg_uid_change(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m, got;
    make_msg(&m, 5, "the.lid", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    make_msg(&m, 9, "the.lid", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 5, &got), -ENOENT);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 9, &got), 0);
    assert_msg_equal(&got, &m);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "the.lid", &got), 0);
    assert_int_equal(got.uid, 9);
    assert_int_equal(idx_msg_count(t, "INBOX"), 1);

    /* A UID taken over by another lid while that lid's record lives on
     * elsewhere: uid 9 moves to "second"; "the.lid" loses its record. */
    make_msg(&m, 9, "second", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "the.lid", &got), -ENOENT);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "second", &got), 0);
    assert_int_equal(idx_msg_count(t, "INBOX"), 1);
    commit(idx, t);
    idx_close(idx);

    struct raw r;
    raw_open(fx, "acct", &r);
    assert_int_equal(raw_entries(&r, "message_lids"), 1);
    assert_int_equal(raw_entries(&r, "messages"), 1);
    raw_close(&r);
}

static void test_msg_delete(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m, got;
    make_msg(&m, 1, "one", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    make_msg(&m, 2, "two", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    make_msg(&m, 0, "three", IDX_MSG_APPENDING, "");
    put_msg(idx, t, "INBOX", &m);

    assert_int_equal(idx_msg_delete_lid(t, "INBOX", "one"), 0);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 1, &got), -ENOENT);
    assert_int_equal(idx_msg_delete_uid(t, "INBOX", 2), 0);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "two", &got), -ENOENT);
    assert_int_equal(idx_msg_delete_lid(t, "INBOX", "three"), 0);
    assert_int_equal(idx_msg_count(t, "INBOX"), 0);

    assert_int_equal(idx_msg_delete_lid(t, "INBOX", "one"), -ENOENT);
    assert_int_equal(idx_msg_delete_uid(t, "INBOX", 2), -ENOENT);
    assert_int_equal(idx_msg_delete_uid(t, "Nope", 2), -ENOENT);
    commit(idx, t);
    idx_close(idx);

    struct raw r;
    raw_open(fx, "acct", &r);
    assert_int_equal(raw_entries(&r, "message_lids"), 0);
    assert_int_equal(raw_entries(&r, "messages"), 0);
    assert_int_equal(raw_entries(&r, "messages_appending"), 0);
    raw_close(&r);
}

struct msg_list {
    uint32_t uids[64];
    char lids[64][IDX_LID_MAX + 1];
    uint8_t states[64];
    size_t n;
    size_t stop_after;
};

static int collect_msg(const struct idx_msg *m, void *arg)
{
    struct msg_list *l = arg;
    l->uids[l->n] = m->uid;
    snprintf(l->lids[l->n], sizeof(l->lids[0]), "%s", m->lid);
    l->states[l->n] = m->state;
    l->n++;
    return l->n == l->stop_after ? 7 : 0;
}

static void test_msg_foreach_order_and_count(void **state)
{
    struct idx *idx = open_ok(*state, "acct");
    struct idx_txn *t = begin(idx, true);
    /* UIDs that sort differently as little-endian bytes or text. */
    static const uint32_t uids[] = {256, 3, 70000, 1, 65536, 255, 4000000000u, 10};
    static const uint32_t sorted[] = {1, 3, 10, 255, 256, 65536, 70000, 4000000000u};
    static const char *const pending[] = {"p.b", "p.a", "p.c"};
    struct idx_msg m;
    char lid[32];
    for (size_t i = 0; i < ARRAY_SIZE(uids); i++) {
        snprintf(lid, sizeof(lid), "lid.%u", uids[i]);
        make_msg(&m, uids[i], lid, IDX_MSG_SYNCED, "");
        put_msg(idx, t, "INBOX", &m);
    }
    for (size_t i = 0; i < ARRAY_SIZE(pending); i++) {
        make_msg(&m, 0, pending[i], IDX_MSG_APPENDING, "");
        put_msg(idx, t, "INBOX", &m);
    }
    /* Another folder's records must not show up. */
    make_msg(&m, 2, "other", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "Other", &m);
    commit(idx, t);

    t = begin(idx, false);
    assert_int_equal(idx_msg_count(t, "INBOX"), ARRAY_SIZE(uids) + ARRAY_SIZE(pending));
    assert_int_equal(idx_msg_count(t, "Other"), 1);
    struct msg_list l = {.n = 0};
    assert_int_equal(idx_msg_foreach(t, "INBOX", collect_msg, &l), 0);
    assert_int_equal(l.n, 11);
    for (size_t i = 0; i < ARRAY_SIZE(sorted); i++) {
        assert_int_equal(l.uids[i], sorted[i]);
        assert_int_equal(l.states[i], IDX_MSG_SYNCED);
    }
    assert_string_equal(l.lids[8], "p.a");
    assert_string_equal(l.lids[9], "p.b");
    assert_string_equal(l.lids[10], "p.c");
    assert_int_equal(l.uids[10], 0);
    assert_int_equal(l.states[10], IDX_MSG_APPENDING);

    struct msg_list l2 = {.stop_after = 3};
    assert_int_equal(idx_msg_foreach(t, "INBOX", collect_msg, &l2), 7);
    assert_int_equal(l2.n, 3);
    assert_int_equal(idx_msg_foreach(t, "Nope", collect_msg, &l2), -ENOENT);
    idx_abort(t);
    idx_close(idx);
}

struct deleter {
    struct idx_txn *txn;
    size_t seen;
};

static int delete_each(const struct idx_msg *m, void *arg)
{
    struct deleter *d = arg;
    d->seen++;
    return m->uid != 0 ? idx_msg_delete_uid(d->txn, "INBOX", m->uid)
                       : idx_msg_delete_lid(d->txn, "INBOX", m->lid);
}

/* The walk tolerates its callback writing to the same folder. */
static void test_msg_foreach_while_deleting(void **state)
{
    struct idx *idx = open_ok(*state, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m;
    char lid[32];
    for (uint32_t uid = 1; uid <= 3000; uid++) {
        snprintf(lid, sizeof(lid), "lid.%u", uid);
        make_msg(&m, uid % 3 == 0 ? 0 : uid, lid, uid % 3 == 0 ? IDX_MSG_APPENDING : 0, "");
        put_msg(idx, t, "INBOX", &m);
    }
    struct deleter d = {.txn = t};
    assert_int_equal(idx_msg_foreach(t, "INBOX", delete_each, &d), 0);
    assert_int_equal(d.seen, 3000);
    assert_int_equal(idx_msg_count(t, "INBOX"), 0);
    commit(idx, t);
    idx_close(idx);
}

static void test_folder_delete_only_that_folder(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m, got;
    char lid[32];
    static const char *const folders[] = {"A", "B", "C"};
    for (size_t f = 0; f < 3; f++) {
        struct idx_folder st = {.uidvalidity = 7};
        assert_int_equal(idx_folder_put(t, folders[f], &st), 0);
        for (uint32_t uid = 1; uid <= 2500; uid++) {
            snprintf(lid, sizeof(lid), "%s.%u", folders[f], uid);
            make_msg(&m, uid, lid, IDX_MSG_SYNCED, "");
            put_msg(idx, t, folders[f], &m);
        }
        snprintf(lid, sizeof(lid), "%s.pending", folders[f]);
        make_msg(&m, 0, lid, IDX_MSG_APPENDING, "");
        put_msg(idx, t, folders[f], &m);
    }
    commit(idx, t);

    t = begin(idx, true);
    assert_int_equal(idx_folder_delete(t, "B"), 0);
    assert_int_equal(idx_folder_delete(t, "B"), -ENOENT);
    commit(idx, t);

    t = begin(idx, false);
    struct idx_folder st;
    assert_int_equal(idx_folder_get(t, "B", &st), -ENOENT);
    assert_int_equal(idx_msg_count(t, "B"), 0);
    assert_int_equal(idx_msg_count(t, "A"), 2501);
    assert_int_equal(idx_msg_count(t, "C"), 2501);
    assert_int_equal(idx_msg_get_uid(t, "A", 1234, &got), 0);
    assert_string_equal(got.lid, "A.1234");
    assert_int_equal(idx_msg_get_uid(t, "C", 1234, &got), 0);
    assert_string_equal(got.lid, "C.1234");
    assert_int_equal(idx_msg_get_lid(t, "C", "C.pending", &got), 0);
    idx_abort(t);

    /* A folder re-created under the old name starts empty. */
    t = begin(idx, true);
    st = (struct idx_folder){.uidvalidity = 8};
    assert_int_equal(idx_folder_put(t, "B", &st), 0);
    assert_int_equal(idx_msg_count(t, "B"), 0);
    assert_int_equal(idx_msg_get_uid(t, "B", 1234, &got), -ENOENT);
    commit(idx, t);

    /* Within one transaction: use a folder, delete it, use it again. The
     * message lands in the new folder, not under the deleted one's id. */
    t = begin(idx, true);
    make_msg(&m, 1, "B.x", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "B", &m);
    assert_int_equal(idx_folder_delete(t, "B"), 0);
    make_msg(&m, 2, "B.y", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "B", &m);
    assert_int_equal(idx_msg_count(t, "B"), 1);
    assert_int_equal(idx_msg_get_uid(t, "B", 1, &got), -ENOENT);
    assert_int_equal(idx_msg_get_uid(t, "B", 2, &got), 0);
    assert_int_equal(idx_folder_delete(t, "B"), 0);
    commit(idx, t);
    idx_close(idx);

    struct raw r;
    raw_open(fx, "acct", &r);
    assert_int_equal(raw_entries(&r, "messages"), 5000);
    assert_int_equal(raw_entries(&r, "message_lids"), 5000);
    assert_int_equal(raw_entries(&r, "messages_appending"), 2);
    raw_close(&r);
}

/* POP3 */

struct pop_list {
    char uidls[8][IDX_UIDL_MAX + 1];
    size_t n;
};

static int collect_pop(const struct idx_pop *p, void *arg)
{
    struct pop_list *l = arg;
    snprintf(l->uidls[l->n++], sizeof(l->uidls[0]), "%s", p->uidl);
    return 0;
}

static void make_pop(struct idx_pop *p, const char *uidl, const char *lid, uint32_t flags)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->uidl, sizeof(p->uidl), "%s", uidl);
    snprintf(p->lid, sizeof(p->lid), "%s", lid);
    p->first_seen = 1700000000 + (int64_t)strlen(uidl);
    p->size = 123456789012ull;
    p->flags = flags;
    for (int i = 0; i < 16; i++) {
        p->header_hash[i] = (uint8_t)(0xf0 ^ i);
    }
}

static void test_pop_roundtrip_and_foreach(void **state)
{
    struct idx *idx = open_ok(*state, "pop");
    struct idx_txn *t = begin(idx, true);
    struct idx_pop p, got;
    char uidl70[IDX_UIDL_MAX + 1];
    memset(uidl70, '~', IDX_UIDL_MAX);
    uidl70[IDX_UIDL_MAX] = '\0';
    make_pop(&p, "000000c1.4f3e", "1700000000.M1P1.host", IDX_POP_DELIVERED);
    assert_int_equal(idx_pop_put(t, &p), 0);
    make_pop(&p, uidl70, "", IDX_POP_SKIPPED);
    p.first_seen = -1;
    assert_int_equal(idx_pop_put(t, &p), 0);
    make_pop(&p, "!", "x", IDX_POP_DELIVERED | IDX_POP_DELETED_ON_SERVER);
    assert_int_equal(idx_pop_put(t, &p), 0);
    commit(idx, t);

    t = begin(idx, false);
    memset(&got, 0x77, sizeof(got));
    assert_int_equal(idx_pop_get(t, uidl70, &got), 0);
    assert_string_equal(got.uidl, uidl70);
    assert_string_equal(got.lid, "");
    assert_true(got.first_seen == -1);
    assert_true(got.size == 123456789012ull);
    assert_int_equal(got.flags, IDX_POP_SKIPPED);
    assert_memory_equal(got.header_hash, p.header_hash, 16);
    assert_int_equal(idx_pop_get(t, "000000c1.4f3e", &got), 0);
    assert_string_equal(got.lid, "1700000000.M1P1.host");
    assert_int_equal(got.flags, IDX_POP_DELIVERED);
    assert_int_equal(idx_pop_get(t, "missing", &got), -ENOENT);

    struct pop_list l = {.n = 0};
    assert_int_equal(idx_pop_foreach(t, collect_pop, &l), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.uidls[0], "!");
    assert_string_equal(l.uidls[1], "000000c1.4f3e");
    assert_string_equal(l.uidls[2], uidl70);
    idx_abort(t);

    t = begin(idx, true);
    assert_int_equal(idx_pop_delete(t, "!"), 0);
    assert_int_equal(idx_pop_delete(t, "!"), -ENOENT);
    /* Invalid UIDLs. */
    make_pop(&p, "has space", "", 0);
    assert_int_equal(idx_pop_put(t, &p), -EINVAL);
    make_pop(&p, "", "", 0);
    assert_int_equal(idx_pop_put(t, &p), -EINVAL);
    make_pop(&p, "del\x7f", "", 0);
    assert_int_equal(idx_pop_put(t, &p), -EINVAL);
    memset(&p, 'a', sizeof(p.uidl)); /* 71 chars, no NUL */
    p.lid[0] = '\0';
    assert_int_equal(idx_pop_put(t, &p), -EINVAL);
    assert_int_equal(idx_pop_get(t, "a b", &got), -EINVAL);
    commit(idx, t);

    t = begin(idx, false);
    l.n = 0;
    assert_int_equal(idx_pop_foreach(t, collect_pop, &l), 0);
    assert_int_equal(l.n, 2);
    idx_abort(t);
    idx_close(idx);
}

/* idx_pop_walk: what popsync merges the listing against. */
struct pop_walk {
    char last[IDX_UIDL_MAX + 1];
    size_t n;
    size_t stop_at; /* return 7 after this many records (0: never) */
    bool in_order;
    bool fields_ok;
};

static int walk_pop(const struct idx_pop *p, void *arg)
{
    struct pop_walk *w = arg;
    if (w->n > 0 && strcmp(w->last, p->uidl) >= 0) {
        w->in_order = false;
    }
    snprintf(w->last, sizeof(w->last), "%s", p->uidl);
    /* make_pop below: lid "L" + uidl, flags from the number. */
    char lid[IDX_UIDL_MAX + 2];
    snprintf(lid, sizeof(lid), "L%s", p->uidl);
    unsigned num = (unsigned)strtoul(p->uidl + 1, NULL, 10);
    if (strcmp(p->lid, lid) != 0 || p->flags != (num % 2 != 0 ? IDX_POP_DELIVERED : 0) ||
        p->size != 123456789012ull || p->header_hash[15] != (uint8_t)(0xf0 ^ 15)) {
        w->fields_ok = false;
    }
    w->n++;
    return w->stop_at != 0 && w->n == w->stop_at ? 7 : 0;
}

static void test_pop_walk(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, false);
    struct pop_walk w = {.in_order = true, .fields_ok = true};
    assert_int_equal(idx_pop_walk(t, walk_pop, &w), 0);
    assert_int_equal(w.n, 0);
    idx_abort(t);

    /* Keys of different lengths ("u7" sorts after "u10"), put in an order
     * of their own: the walk gives every row once, in strcmp order, with
     * its fields. */
    t = begin(idx, true);
    for (unsigned i = 0; i < 3000; i++) {
        unsigned num = (i * 7919u) % 3000u;
        char uidl[16], lid[20];
        snprintf(uidl, sizeof(uidl), "u%u", num);
        snprintf(lid, sizeof(lid), "L%s", uidl);
        struct idx_pop p;
        make_pop(&p, uidl, lid, num % 2 != 0 ? IDX_POP_DELIVERED : 0);
        assert_int_equal(idx_pop_put(t, &p), 0);
    }
    commit(idx, t);
    t = begin(idx, false);
    w = (struct pop_walk){.in_order = true, .fields_ok = true};
    assert_int_equal(idx_pop_walk(t, walk_pop, &w), 0);
    assert_int_equal(w.n, 3000);
    assert_true(w.in_order);
    assert_true(w.fields_ok);
    assert_string_equal(w.last, "u999");
    /* A non-zero return stops the walk and is returned. */
    w = (struct pop_walk){.in_order = true, .fields_ok = true, .stop_at = 10};
    assert_int_equal(idx_pop_walk(t, walk_pop, &w), 7);
    assert_int_equal(w.n, 10);
    assert_string_equal(w.last, "u1005");
    idx_abort(t);
    idx_close(idx);

    /* A corrupt row stops the walk with -EBADMSG naming its key. */
    struct raw r;
    raw_open(fx, "acct", &r);
    raw_put(&r, "pop", "u1000", 5, "\x01short", 6);
    raw_close(&r);
    idx = open_ok(fx, "acct");
    t = begin(idx, false);
    w = (struct pop_walk){.in_order = true, .fields_ok = true};
    assert_int_equal(idx_pop_walk(t, walk_pop, &w), -EBADMSG);
    assert_int_equal(w.n, 4); /* u0, u1, u10, u100 */
    assert_non_null(strstr(idx_error(idx), "corrupt POP record under key 'u1000'"));
    idx_abort(t);
    idx_close(idx);
}

/* idx_pop_cursor: what popsync merges a listing against while it arrives.
 * It must give every row once, in the same order and with the same fields
 * as idx_pop_walk, stop with -ENOENT, say whether a row is an intent, and
 * see the index as it was when its transaction began. */
static void test_pop_cursor(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, false);
    struct idx_pop_cursor *c;
    const char *key;
    size_t klen;
    struct idx_pop_brief b;
    assert_int_equal(idx_pop_cursor_open(t, &c), 0);
    assert_int_equal(idx_pop_cursor_next(c, &key, &klen, &b), -ENOENT);
    idx_pop_cursor_close(c);
    idx_abort(t);

    /* The rows of test_pop_walk, plus an intent (a lid, no flag) and a
     * key of the greatest length. */
    t = begin(idx, true);
    for (unsigned i = 0; i < 3000; i++) {
        unsigned num = (i * 7919u) % 3000u;
        char uidl[16], lid[20];
        snprintf(uidl, sizeof(uidl), "u%u", num);
        snprintf(lid, sizeof(lid), "L%s", uidl);
        struct idx_pop p;
        make_pop(&p, uidl, lid, num % 2 != 0 ? IDX_POP_DELIVERED : 0);
        assert_int_equal(idx_pop_put(t, &p), 0);
    }
    char uidl70[IDX_UIDL_MAX + 1];
    memset(uidl70, '~', IDX_UIDL_MAX);
    uidl70[IDX_UIDL_MAX] = '\0';
    struct idx_pop p;
    make_pop(&p, uidl70, "", IDX_POP_SKIPPED);
    assert_int_equal(idx_pop_put(t, &p), 0);
    commit(idx, t);

    t = begin(idx, false);
    /* A row written after the reader began is not seen by it. */
    struct idx_txn *w = begin(idx, true);
    make_pop(&p, "zzz", "Lzzz", IDX_POP_DELIVERED);
    assert_int_equal(idx_pop_put(w, &p), 0);
    commit(idx, w);

    struct pop_walk walk = {.in_order = true, .fields_ok = true};
    assert_int_equal(idx_pop_cursor_open(t, &c), 0);
    size_t n = 0, intents = 0;
    int r;
    while ((r = idx_pop_cursor_next(c, &key, &klen, &b)) == 0) {
        assert_true(klen >= 1 && klen <= IDX_UIDL_MAX);
        if (klen == IDX_UIDL_MAX) {
            assert_memory_equal(key, uidl70, IDX_UIDL_MAX);
            assert_string_equal(b.lid, "");
            assert_int_equal(b.flags, IDX_POP_SKIPPED);
            assert_false(idx_pop_brief_is_intent(&b));
            n++;
            continue;
        }
        /* The same checks as the walk's, on a record built from the brief. */
        struct idx_pop full;
        memset(&full, 0, sizeof(full));
        memcpy(full.uidl, key, klen);
        snprintf(full.lid, sizeof(full.lid), "%s", b.lid);
        full.flags = b.flags;
        full.first_seen = b.first_seen;
        full.size = b.size;
        memcpy(full.header_hash, b.header_hash, 16);
        assert_true(full.first_seen == 1700000000 + (int64_t)klen);
        assert_int_equal(walk_pop(&full, &walk), 0);
        assert_true(idx_pop_brief_is_intent(&b) == (b.flags == 0));
        intents += idx_pop_brief_is_intent(&b);
        n++;
    }
    assert_int_equal(r, -ENOENT);
    /* After the end it stays at the end. */
    assert_int_equal(idx_pop_cursor_next(c, &key, &klen, &b), -ENOENT);
    idx_pop_cursor_close(c);
    assert_int_equal(n, 3001);
    assert_int_equal(walk.n, 3000);
    assert_int_equal(intents, 1500);
    assert_true(walk.in_order);
    assert_true(walk.fields_ok);
    assert_string_equal(walk.last, "u999");
    idx_abort(t);
    idx_close(idx);

    /* A corrupt row is -EBADMSG naming its key; the rows before it came. */
    struct raw raw;
    raw_open(fx, "acct", &raw);
    raw_put(&raw, "pop", "u1000", 5, "\x01short", 6);
    raw_close(&raw);
    idx = open_ok(fx, "acct");
    t = begin(idx, false);
    assert_int_equal(idx_pop_cursor_open(t, &c), 0);
    n = 0;
    while ((r = idx_pop_cursor_next(c, &key, &klen, &b)) == 0) {
        n++;
    }
    assert_int_equal(r, -EBADMSG);
    assert_int_equal(n, 4); /* u0, u1, u10, u100 */
    assert_non_null(strstr(idx_error(idx), "corrupt POP record under key 'u1000'"));
    idx_pop_cursor_close(c);
    idx_pop_cursor_close(NULL);
    idx_abort(t);
    idx_close(idx);
}

/* Meta */

static void test_meta(void **state)
{
    struct idx *idx = open_ok(*state, "acct");
    struct idx_txn *t = begin(idx, true);
    assert_int_equal(idx_meta_put(t, "pop:last_run", "1700000000", 10), 0);
    assert_int_equal(idx_meta_put(t, "empty", NULL, 0), 0);
    uint8_t bin[5] = {0, 1, 2, 0, 255};
    assert_int_equal(idx_meta_put(t, "bin", bin, sizeof(bin)), 0);
    assert_int_equal(idx_meta_put(t, "schema_version", "x", 1), -EINVAL);
    assert_non_null(strstr(idx_error(idx), "reserved"));
    assert_int_equal(idx_meta_put(t, "", "x", 1), -EINVAL);
    commit(idx, t);

    t = begin(idx, false);
    char buf[32];
    size_t len = 0;
    assert_int_equal(idx_meta_get(t, "pop:last_run", buf, sizeof(buf), &len), 0);
    assert_int_equal(len, 10);
    assert_memory_equal(buf, "1700000000", 10);
    /* A short buffer gets a prefix and the full length. */
    memset(buf, 0, sizeof(buf));
    assert_int_equal(idx_meta_get(t, "pop:last_run", buf, 4, &len), 0);
    assert_int_equal(len, 10);
    assert_memory_equal(buf, "1700\0", 5);
    assert_int_equal(idx_meta_get(t, "empty", buf, sizeof(buf), &len), 0);
    assert_int_equal(len, 0);
    assert_int_equal(idx_meta_get(t, "bin", buf, sizeof(buf), &len), 0);
    assert_int_equal(len, 5);
    assert_memory_equal(buf, bin, 5);
    assert_int_equal(idx_meta_get(t, "missing", buf, sizeof(buf), &len), -ENOENT);
    /* The schema version can be read, as 4 little-endian bytes. */
    assert_int_equal(idx_meta_get(t, "schema_version", buf, sizeof(buf), &len), 0);
    assert_int_equal(len, 4);
    assert_memory_equal(buf, "\x02\0\0\0", 4);
    /* Meta values are read-only in a read transaction. */
    assert_int_equal(idx_meta_delete(t, "bin"), -EROFS);
    idx_abort(t);

    /* Deleting: gone afterwards, absent is fine, reserved keys are not. */
    t = begin(idx, true);
    assert_int_equal(idx_meta_delete(t, "bin"), 0);
    assert_int_equal(idx_meta_delete(t, "bin"), 0);
    assert_int_equal(idx_meta_delete(t, "never-there"), 0);
    assert_int_equal(idx_meta_delete(t, "schema_version"), -EINVAL);
    commit(idx, t);
    t = begin(idx, false);
    assert_int_equal(idx_meta_get(t, "bin", buf, sizeof(buf), &len), -ENOENT);
    assert_int_equal(idx_meta_get(t, "pop:last_run", buf, sizeof(buf), &len), 0);
    assert_int_equal(idx_meta_get(t, "schema_version", buf, sizeof(buf), &len), 0);
    idx_abort(t);
    idx_close(idx);
}

/* Persistence, modes, lock */

static void test_persistence(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_folder st = {.uidvalidity = 99, .uidnext = 3, .highestmodseq = 12};
    assert_int_equal(idx_folder_put(t, "INBOX", &st), 0);
    struct idx_msg m, got;
    make_msg(&m, 2, "persist", IDX_MSG_SYNCED, "kw");
    put_msg(idx, t, "INBOX", &m);
    struct idx_pop p, pgot;
    make_pop(&p, "U1", "persist", IDX_POP_DELIVERED);
    assert_int_equal(idx_pop_put(t, &p), 0);
    assert_int_equal(idx_meta_put(t, "k", "v", 1), 0);
    commit(idx, t);

    /* An aborted transaction leaves nothing behind. */
    t = begin(idx, true);
    make_msg(&m, 3, "aborted", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    idx_abort(t);
    idx_close(idx);

    idx = open_ok(fx, "acct");
    t = begin(idx, false);
    struct idx_folder fgot;
    assert_int_equal(idx_folder_get(t, "INBOX", &fgot), 0);
    assert_int_equal(fgot.uidvalidity, 99);
    assert_true(fgot.highestmodseq == 12);
    make_msg(&m, 2, "persist", IDX_MSG_SYNCED, "kw");
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "persist", &got), 0);
    assert_msg_equal(&got, &m);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 3, &got), -ENOENT);
    assert_int_equal(idx_pop_get(t, "U1", &pgot), 0);
    assert_string_equal(pgot.lid, "persist");
    char v[4];
    size_t len;
    assert_int_equal(idx_meta_get(t, "k", v, sizeof(v), &len), 0);
    assert_int_equal(len, 1);
    assert_int_equal(v[0], 'v');
    idx_abort(t);
    assert_true(idx_map_size(idx) >= INITIAL_MAP);
    idx_close(idx);
}

static mode_t mode_of(const char *dir, const char *rel)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    struct stat st;
    if (stat(path, &st) != 0) {
        fail_msg("stat %s: %s", path, strerror(errno));
    }
    return st.st_mode & 07777;
}

static void test_modes(void **state)
{
    struct fx *fx = *state;
    /* A pre-existing account directory and lock file with loose modes are
     * tightened. */
    char path[512];
    snprintf(path, sizeof(path), "%s/loose", fx->dir);
    assert_int_equal(mkdir(path, 0755), 0);
    assert_int_equal(chmod(path, 0755), 0);
    snprintf(path, sizeof(path), "%s/loose/lock", fx->dir);
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(chmod(path, 0644), 0);

    umask(0);
    struct idx *a = open_ok(fx, "loose");
    struct idx *b = open_ok(fx, "fresh");
    umask(022);
    assert_int_equal(mode_of(fx->dir, "loose"), 0700);
    assert_int_equal(mode_of(fx->dir, "loose/lock"), 0600);
    assert_int_equal(mode_of(fx->dir, "loose/index.mdb"), 0700);
    assert_int_equal(mode_of(fx->dir, "loose/index.mdb/data.mdb"), 0600);
    assert_int_equal(mode_of(fx->dir, "loose/index.mdb/lock.mdb"), 0600);
    assert_int_equal(mode_of(fx->dir, "fresh"), 0700);
    assert_int_equal(mode_of(fx->dir, "fresh/lock"), 0600);
    assert_int_equal(mode_of(fx->dir, "fresh/index.mdb"), 0700);
    assert_int_equal(mode_of(fx->dir, "fresh/index.mdb/data.mdb"), 0600);
    assert_int_equal(mode_of(fx->dir, "fresh/index.mdb/lock.mdb"), 0600);
    idx_close(a);
    idx_close(b);

    /* A state directory that does not exist yet is created (mkdir -p). */
    struct idx *idx = NULL;
    char *err = NULL;
    snprintf(path, sizeof(path), "%s/deep/er", fx->dir);
    assert_int_equal(idx_open(path, "acct", &idx, &err), 0);
    idx_close(idx);
    assert_int_equal(mode_of(fx->dir, "deep/er/acct"), 0700);
}

static void test_account_names(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = (struct idx *)1;
    char *err = NULL;
    assert_int_equal(idx_open(fx->dir, "a/b", &idx, &err), -EINVAL);
    assert_null(idx);
    assert_string_equal(err, "invalid account name 'a/b': must not contain '/'");
    free(err);
    assert_int_equal(idx_open(fx->dir, ".hidden", &idx, &err), -EINVAL);
    assert_string_equal(err, "invalid account name '.hidden': must not start with '.'");
    free(err);
    assert_int_equal(idx_open(fx->dir, "..", &idx, &err), -EINVAL);
    free(err);
    assert_int_equal(idx_open(fx->dir, "", &idx, &err), -EINVAL);
    assert_non_null(err);
    free(err);
}

static char *lock_message(const char *account, long pid)
{
    return xasprintf("account '%s' is already being synced by another mailsync process (pid %ld)",
                     account, pid);
}

static void test_lock_same_process(void **state)
{
    struct fx *fx = *state;
    struct idx *a = open_ok(fx, "work");

    /* The lock file names us. */
    char path[512], buf[32] = {0};
    snprintf(path, sizeof(path), "%s/work/lock", fx->dir);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_true(read(fd, buf, sizeof(buf) - 1) > 0);
    close(fd);
    char want[32];
    snprintf(want, sizeof(want), "%ld\n", (long)getpid());
    assert_string_equal(buf, want);

    struct idx *again = (struct idx *)1;
    char *err = NULL;
    assert_int_equal(idx_open(fx->dir, "work", &again, &err), -EWOULDBLOCK);
    assert_null(again);
    char *msg = lock_message("work", (long)getpid());
    assert_string_equal(err, msg);
    free(msg);
    free(err);

    /* Another account is independent. */
    struct idx *b = open_ok(fx, "home");
    idx_close(b);

    /* The first handle still works after the failed attempt. */
    struct idx_txn *t = begin(a, true);
    assert_int_equal(idx_meta_put(t, "k", "v", 1), 0);
    commit(a, t);

    /* Closing releases the lock. */
    idx_close(a);
    a = open_ok(fx, "work");
    idx_close(a);
}

/* A lock held by a program that is not mailsync (flock(1) around a backup)
 * while the file still names an earlier holder that has exited: the
 * message must not blame that pid. */
static void test_lock_held_by_other_program(void **state)
{
    struct fx *fx = *state;
    struct idx *a = open_ok(fx, "work");
    idx_close(a);
    pid_t gone = fork();
    assert_true(gone >= 0);
    if (gone == 0) {
        _exit(0);
    }
    assert_int_equal(waitpid(gone, NULL, 0), gone);
    char path[512], buf[32];
    snprintf(path, sizeof(path), "%s/work/lock", fx->dir);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    int len = snprintf(buf, sizeof(buf), "%ld\n", (long)gone);
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, buf, (size_t)len, 0), len);
    assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);
    struct idx *again = NULL;
    char *err = NULL;
    assert_int_equal(idx_open(fx->dir, "work", &again, &err), -EWOULDBLOCK);
    char *want = xasprintf("account 'work' is locked by another process (%s is held)", path);
    assert_string_equal(err, want);
    free(want);
    free(err);
    close(fd);
    a = open_ok(fx, "work");
    idx_close(a);
}

static int child_status(pid_t pid)
{
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void test_lock_forked_child(void **state)
{
    struct fx *fx = *state;
    struct idx *a = open_ok(fx, "work");
    long parent = (long)getpid();
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct idx *idx = NULL;
        char *err = NULL;
        int rc = idx_open(fx->dir, "work", &idx, &err);
        char *msg = lock_message("work", parent);
        int code = rc == -EWOULDBLOCK && idx == NULL && err != NULL && strcmp(err, msg) == 0 ? 0
                   : rc == 0                                                                 ? 2
                                                                                             : 3;
        _exit(code);
    }
    assert_int_equal(child_status(pid), 0);

    /* Once the parent lets go, the child gets the account. */
    idx_close(a);
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct idx *idx = NULL;
        char *err = NULL;
        int rc = idx_open(fx->dir, "work", &idx, &err);
        if (rc != 0) {
            _exit(3);
        }
        struct idx_txn *t = NULL;
        if (idx_begin(idx, true, &t) != 0 || idx_meta_put(t, "child", "1", 1) != 0 ||
            idx_commit(t) != 0) {
            _exit(4);
        }
        idx_close(idx);
        _exit(0);
    }
    assert_int_equal(child_status(pid), 0);

    a = open_ok(fx, "work");
    struct idx_txn *t = begin(a, false);
    char v;
    size_t len;
    assert_int_equal(idx_meta_get(t, "child", &v, 1, &len), 0);
    assert_int_equal(v, '1');
    idx_abort(t);
    idx_close(a);
}

/* Schema */

static void set_schema(struct fx *fx, const char *account, uint32_t version)
{
    struct raw r;
    raw_open(fx, account, &r);
    uint8_t v[4] = {(uint8_t)version, (uint8_t)(version >> 8), (uint8_t)(version >> 16),
                    (uint8_t)(version >> 24)};
    raw_put(&r, "meta", "schema_version", 14, v, 4);
    raw_close(&r);
}

static void test_schema_newer_refused(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    idx_close(idx);
    set_schema(fx, "acct", IDX_SCHEMA_VERSION + 1);

    for (int i = 0; i < 2; i++) {
        idx = (struct idx *)1;
        char *err = NULL;
        assert_int_equal(idx_open(fx->dir, "acct", &idx, &err), -EPROTO);
        assert_null(idx);
        char *want = xasprintf("index %s/acct/index.mdb was written by a newer mailsync (schema "
                               "%u, this build understands up to %u); upgrade mailsync or move "
                               "the index away",
                               fx->dir, IDX_SCHEMA_VERSION + 1, IDX_SCHEMA_VERSION);
        assert_string_equal(err, want);
        free(want);
        free(err);
    }

    /* Refusing wrote nothing: the newer version is still there. */
    struct raw r;
    raw_open(fx, "acct", &r);
    MDB_val v;
    assert_int_equal(raw_get(&r, "meta", "schema_version", 14, &v), 0);
    assert_int_equal(v.mv_size, 4);
    assert_int_equal(((uint8_t *)v.mv_data)[0], IDX_SCHEMA_VERSION + 1);
    raw_close(&r);

    /* A malformed version is corruption, not a version. */
    raw_open(fx, "acct", &r);
    raw_put(&r, "meta", "schema_version", 14, "\x01\x00", 2);
    raw_close(&r);
    char *err = NULL;
    assert_int_equal(idx_open(fx->dir, "acct", &idx, &err), -EBADMSG);
    assert_non_null(strstr(err, "schema"));
    free(err);

    set_schema(fx, "acct", IDX_SCHEMA_VERSION);
    idx = open_ok(fx, "acct");
    idx_close(idx);
}

/* Map growth */

#define BULK_COUNT 200000
#define BULK_BATCH 20000

static void bulk_keywords(char *kw, size_t cap, uint32_t i)
{
    snprintf(kw, cap,
             "$Forwarded $Junk $MDNSent $label-%07u-project-alpha $label-%07u-project-beta "
             "$label-%07u-project-gamma $label-%07u-travel $label-%07u-receipts NonJunk",
             i, i + 1, i + 2, i + 3, i + 4);
}

static void bulk_lid(char *lid, size_t cap, uint32_t i)
{
    snprintf(lid, cap, "1700%06u.M%uP4242Q%u.mailhost.example.org", i, i * 7, i % 13);
}

struct bulk {
    struct idx *idx;
    uint32_t start, end;
    unsigned calls;
};

static int bulk_fn(struct idx_txn *t, void *arg)
{
    struct bulk *b = arg;
    b->calls++;
    struct idx_msg m;
    char lid[80], kw[400];
    for (uint32_t i = b->start; i < b->end; i++) {
        bulk_lid(lid, sizeof(lid), i);
        bulk_keywords(kw, sizeof(kw), i);
        make_msg(&m, i + 1, lid, IDX_MSG_SYNCED, kw);
        int rc = idx_msg_put(t, "INBOX", &m);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

static void bulk_check(struct idx *idx, uint32_t start, uint32_t end, uint32_t step)
{
    struct idx_txn *t = begin(idx, false);
    struct idx_msg got, want;
    char lid[80], kw[400];
    for (uint32_t i = start; i < end; i += step) {
        bulk_lid(lid, sizeof(lid), i);
        bulk_keywords(kw, sizeof(kw), i);
        make_msg(&want, i + 1, lid, IDX_MSG_SYNCED, kw);
        int rc = idx_msg_get_uid(t, "INBOX", i + 1, &got);
        if (rc != 0) {
            fail_msg("UID %u: %d %s", i + 1, rc, idx_error(idx));
        }
        assert_msg_equal(&got, &want);
        assert_int_equal(idx_msg_get_lid(t, "INBOX", lid, &got), 0);
        assert_int_equal(got.uid, i + 1);
    }
    idx_abort(t);
}

static void test_growth_many_records(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "big");
    assert_int_equal(idx_map_size(idx), INITIAL_MAP);
    unsigned calls = 0;
    for (uint32_t start = 0; start < BULK_COUNT; start += BULK_BATCH) {
        struct bulk b = {.idx = idx, .start = start, .end = start + BULK_BATCH};
        int rc = idx_write(idx, bulk_fn, &b);
        if (rc != 0) {
            fail_msg("idx_write: %d %s", rc, idx_error(idx));
        }
        calls += b.calls;
    }
    size_t grown = idx_map_size(idx);
    assert_true(grown > INITIAL_MAP);
    print_message("map grew to %zu MiB; %u calls for %d batches\n", grown >> 20, calls,
                  BULK_COUNT / BULK_BATCH);

    struct idx_txn *t = begin(idx, false);
    assert_int_equal(idx_msg_count(t, "INBOX"), BULK_COUNT);
    idx_abort(t);
    bulk_check(idx, 0, BULK_COUNT, 1);
    idx_close(idx);

    /* The grown map size is kept across a reopen. */
    idx = open_ok(fx, "big");
    assert_true(idx_map_size(idx) >= grown);
    bulk_check(idx, 0, BULK_COUNT, 997);
    idx_close(idx);
}

static void test_map_full_midway(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "full");
    assert_int_equal(idx_map_size(idx), INITIAL_MAP);

    /* One transaction that outgrows the 8 MiB map part way through. */
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m;
    char lid[80], kw[400];
    uint32_t i;
    int rc = 0;
    for (i = 0; i < 100000; i++) {
        bulk_lid(lid, sizeof(lid), i);
        bulk_keywords(kw, sizeof(kw), i);
        make_msg(&m, i + 1, lid, IDX_MSG_SYNCED, kw);
        rc = idx_msg_put(t, "INBOX", &m);
        if (rc != 0) {
            break;
        }
    }
    assert_int_equal(rc, IDX_ERETRY);
    assert_true(i > 1000);
    assert_int_equal(idx_map_size(idx), 2 * INITIAL_MAP);
    assert_non_null(strstr(idx_error(idx), "map full"));
    /* The handle is dead: further use says so, and a stray abort or commit
     * is harmless. */
    assert_int_equal(idx_msg_put(t, "INBOX", &m), IDX_ERETRY);
    idx_abort(t);
    assert_int_equal(idx_commit(t), IDX_ERETRY);

    /* Nothing of it was committed. */
    t = begin(idx, false);
    struct idx_msg got;
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 1, &got), -ENOENT);
    idx_abort(t);

    /* Redone through idx_write, a larger transaction needs several rounds of
     * growth and succeeds. */
    struct bulk b = {.idx = idx, .start = 0, .end = 3 * i};
    rc = idx_write(idx, bulk_fn, &b);
    if (rc != 0) {
        fail_msg("idx_write: %d %s", rc, idx_error(idx));
    }
    assert_true(b.calls > 1);
    assert_true(idx_map_size(idx) >= 4 * INITIAL_MAP);
    bulk_check(idx, 0, 3 * i, 1);
    idx_close(idx);
}

/* A read transaction open in this process pins the map: growth waits for
 * it, and the writer is told why instead of looping. */
static void test_map_full_with_reader_open(void **state)
{
    struct idx *idx = open_ok(*state, "pinned");
    struct idx_txn *reader = begin(idx, false);
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m;
    char lid[80], kw[400];
    int rc = 0;
    for (uint32_t i = 0; i < 100000 && rc == 0; i++) {
        bulk_lid(lid, sizeof(lid), i);
        bulk_keywords(kw, sizeof(kw), i);
        make_msg(&m, i + 1, lid, IDX_MSG_SYNCED, kw);
        rc = idx_msg_put(t, "INBOX", &m);
    }
    assert_int_equal(rc, IDX_ERETRY);
    assert_int_equal(idx_map_size(idx), INITIAL_MAP);
    assert_non_null(strstr(idx_error(idx), "read transaction"));
    struct idx_txn *t2 = NULL;
    assert_int_equal(idx_begin(idx, true, &t2), -EBUSY);
    assert_non_null(strstr(idx_error(idx), "cannot grow"));
    /* The reader still sees its snapshot. */
    struct idx_msg got;
    assert_int_equal(idx_msg_get_uid(reader, "INBOX", 1, &got), -ENOENT);
    idx_abort(reader);

    t2 = begin(idx, true);
    assert_int_equal(idx_map_size(idx), 2 * INITIAL_MAP);
    idx_abort(t2);
    idx_close(idx);
}

/* Small batches never overflow: idx_begin grows the map ahead of need. */
static void test_map_grows_ahead(void **state)
{
    struct idx *idx = open_ok(*state, "ahead");
    unsigned batches = 0, calls = 0;
    uint32_t start = 0;
    while (idx_map_size(idx) == INITIAL_MAP && batches < 200) {
        struct bulk b = {.idx = idx, .start = start, .end = start + 500};
        assert_int_equal(idx_write(idx, bulk_fn, &b), 0);
        start += 500;
        batches++;
        calls += b.calls;
    }
    assert_int_equal(idx_map_size(idx), 2 * INITIAL_MAP);
    assert_int_equal(calls, batches);
    idx_close(idx);
}

/* Dropping the map's pages */

#define DROP_COUNT 6000

/* The Rss (kB) of this process's mapping that starts at start, from
 * /proc/self/smaps; -1 when there is none. */
static long mapping_rss_kb(const void *start)
{
    FILE *f = fopen("/proc/self/smaps", "re");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    bool in = false;
    long rss = -1;
    while (rss < 0 && getline(&line, &cap, f) > 0) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2) {
            in = s == (unsigned long)(uintptr_t)start;
        } else if (in && strncmp(line, "Rss:", 4) == 0) {
            assert_int_equal(sscanf(line, "Rss: %ld kB", &rss), 1);
        }
    }
    free(line);
    fclose(f);
    return rss;
}

/* The key idx_pop_cursor_next gives in a read transaction points into
 * LMDB's map: it must lie in the range the index found. */
static void assert_key_in_range(struct idx *idx, const void *start, size_t len)
{
    struct idx_txn *t = begin(idx, false);
    struct idx_pop_cursor *c;
    const char *key;
    size_t klen;
    struct idx_pop_brief b;
    assert_int_equal(idx_pop_cursor_open(t, &c), 0);
    assert_int_equal(idx_pop_cursor_next(c, &key, &klen, &b), 0);
    assert_int_equal(klen, strlen("drop-uidl"));
    assert_memory_equal(key, "drop-uidl", klen);
    assert_true((uintptr_t)key >= (uintptr_t)start);
    assert_true((uintptr_t)key + klen <= (uintptr_t)start + len);
    idx_pop_cursor_close(c);
    idx_abort(t);
}

static bool msg_same(const struct idx_msg *a, const struct idx_msg *b)
{
    return a->uid == b->uid && a->state == b->state && a->flags == b->flags && a->size == b->size &&
           strcmp(a->lid, b->lid) == 0 && strcmp(a->keywords, b->keywords) == 0 &&
           memcmp(a->msgid_hash, b->msgid_hash, 16) == 0 &&
           memcmp(a->emailid_hash, b->emailid_hash, 8) == 0;
}

/* bulk_fn's record i. */
static void bulk_want(struct idx_msg *m, uint32_t i)
{
    char lid[80], kw[400];
    bulk_lid(lid, sizeof(lid), i);
    bulk_keywords(kw, sizeof(kw), i);
    make_msg(m, i + 1, lid, IDX_MSG_SYNCED, kw);
}

struct drop_walk {
    const void *start;
    uint32_t n, bad;
    long rss_before, rss_after; /* the mapping's around the first drop */
};

static int drop_walk_fn(const struct idx_msg *m, void *arg)
{
    struct drop_walk *w = arg;
    struct idx_msg want;
    bulk_want(&want, w->n);
    w->bad += !msg_same(m, &want);
    w->n++;
    if (w->n == 2048) {
        w->rss_before = mapping_rss_kb(w->start);
    } else if (w->n == 2049) {
        w->rss_after = mapping_rss_kb(w->start);
    }
    return 0;
}

/* Every record of bulk_fn's [0, n) by idx_msg_walk and idx_msg_walk_rows,
 * while the walks drop the map's pages; the walk that crosses record 2,048
 * shows the drop in the mapping's Rss, and after each walk nothing of the
 * map is resident. */
static void drop_walks(struct idx *idx, const void *start, uint32_t n)
{
    const void *s;
    size_t len;
    uint64_t drops0, drops;
    assert_true(idx_map_range(idx, &s, &len, &drops0));
    struct idx_txn *t = begin(idx, false);
    struct drop_walk w = {.start = start};
    assert_int_equal(idx_msg_walk(t, "INBOX", drop_walk_fn, &w), 0);
    assert_int_equal(w.n, n);
    assert_int_equal(w.bad, 0);
    assert_true(w.rss_before > 0);
    assert_true(w.rss_after < w.rss_before);
    assert_int_equal(mapping_rss_kb(start), 0);
    assert_true(idx_map_range(idx, &s, &len, &drops));
    assert_true(drops >= drops0 + n / 2048 + 1);

    struct idx_rows rows = {0};
    assert_int_equal(idx_msg_walk_rows(t, "INBOX", &rows), 0);
    assert_int_equal(rows.n, n);
    uint32_t bad = 0;
    struct idx_msg *got = xmalloc(sizeof(*got)), *want = xmalloc(sizeof(*want));
    for (uint32_t i = 0; i < n; i++) {
        idx_rows_get(&rows, i, got);
        bulk_want(want, i);
        bad += !msg_same(got, want);
    }
    free(got);
    free(want);
    idx_rows_free(&rows);
    assert_int_equal(bad, 0);
    assert_int_equal(mapping_rss_kb(start), 0);
    idx_abort(t);
}

/* The index finds LMDB's mapping of data.mdb (as long as the map size LMDB
 * reports, holding the very keys LMDB hands out) and drops its pages while
 * writing and walking; records read back after many drops, and after the
 * map grew and moved, are intact; a second mapping of the same file in the
 * process makes the read-only handle find nothing rather than guess. */
static void test_map_drop(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    const void *start;
    size_t len;
    uint64_t drops0, drops;
#ifndef __linux__
    assert_false(idx_map_range(idx, &start, &len, &drops0));
    idx_close(idx);
    return;
#endif
    assert_true(idx_map_range(idx, &start, &len, &drops0));
    assert_int_equal(len, idx_map_size(idx));
    assert_int_equal(len, INITIAL_MAP);

    struct idx_txn *t = begin(idx, true);
    struct idx_pop p;
    make_pop(&p, "drop-uidl", "Ldrop", IDX_POP_DELIVERED);
    assert_int_equal(idx_pop_put(t, &p), 0);
    commit(idx, t);
    assert_true(idx_map_range(idx, &start, &len, &drops));
    assert_int_equal(drops, drops0 + 1); /* the commit */
    assert_key_in_range(idx, start, len);

    /* One transaction of puts drops every 32 puts (IDX_DROP_PUTS) and at its commit. */
    assert_true(idx_map_range(idx, &start, &len, &drops0));
    struct bulk b = {.idx = idx, .start = 0, .end = DROP_COUNT};
    assert_int_equal(idx_write(idx, bulk_fn, &b), 0);
    assert_int_equal(b.calls, 1);
    assert_true(idx_map_range(idx, &start, &len, &drops));
    assert_int_equal(drops, drops0 + DROP_COUNT / 32 + 1);
    assert_int_equal(mapping_rss_kb(start), 0);
    drop_walks(idx, start, DROP_COUNT);
    bulk_check(idx, 0, DROP_COUNT, 1);

    /* The same file opened again in this process: two mappings of it, so
     * the second handle cannot tell which is its own and drops nothing;
     * the first keeps its range. */
    struct idx *ro = open_ro_ok(fx, "acct");
    const void *ro_start;
    size_t ro_len;
    assert_false(idx_map_range(ro, &ro_start, &ro_len, &drops));
    assert_int_equal(ro_len, 0);
    idx_close(ro);
    const void *again;
    assert_true(idx_map_range(idx, &again, &len, &drops));
    assert_ptr_equal(again, start);

    /* Grow the map: LMDB maps the file again, elsewhere, and the index
     * follows it. */
    uint32_t n = DROP_COUNT;
    while (idx_map_size(idx) == INITIAL_MAP && n < 100000) {
        b = (struct bulk){.idx = idx, .start = n, .end = n + 2000};
        assert_int_equal(idx_write(idx, bulk_fn, &b), 0);
        n += 2000;
    }
    assert_true(idx_map_size(idx) > INITIAL_MAP);
    assert_true(idx_map_range(idx, &start, &len, &drops));
    assert_int_equal(len, idx_map_size(idx));
    assert_key_in_range(idx, start, len);
    drop_walks(idx, start, n);
    bulk_check(idx, 0, n, 1);
    idx_close(idx);
}

/* Corruption */

static void test_corrupt_records(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_folder st = {.uidvalidity = 1};
    assert_int_equal(idx_folder_put(t, "INBOX", &st), 0); /* folder id 1 */
    assert_int_equal(idx_folder_put(t, "Bad", &st), 0);
    struct idx_msg m;
    make_msg(&m, 5, "five", IDX_MSG_SYNCED, "kw");
    put_msg(idx, t, "INBOX", &m);
    make_msg(&m, 6, "six", IDX_MSG_SYNCED, "some keywords");
    put_msg(idx, t, "INBOX", &m);
    make_msg(&m, 7, "seven", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    struct idx_pop p;
    make_pop(&p, "U2", "", 0);
    assert_int_equal(idx_pop_put(t, &p), 0);
    commit(idx, t);
    idx_close(idx);

    /* Damage the records with raw LMDB: garbage, every truncation of a
     * valid record, an unknown version, trailing bytes, an unknown header
     * bit, a NUL inside the lid, a keyword set that does not exist. */
    struct raw r;
    raw_open(fx, "acct", &r);
    uint8_t key[8], good[2048];
    MDB_val v;
    uid_key(key, 1, 6);
    assert_int_equal(raw_get(&r, "messages", key, 8, &v), 0);
    size_t good_len = v.mv_size;
    assert_true(good_len < sizeof(good));
    memcpy(good, v.mv_data, good_len);
    /* header (version 2, has hash, has keywords), flags, size 6007 in two
     * varint bytes, keyword set 2, the hash, lid length 3, "six". */
    assert_int_equal(good_len, 1 + 1 + 2 + 1 + 16 + 1 + 3);
    assert_int_equal(good[0], 0x26);
    assert_int_equal(good[4], 2);

    uid_key(key, 1, 5);
    raw_put(&r, "messages", key, 8, "\x01garbage\xff", 9);
    for (size_t len = 0; len < good_len; len++) {
        uid_key(key, 1, (uint32_t)(1000 + len));
        raw_put(&r, "messages", key, 8, good, len);
    }
    uint8_t bad[2048];
    memcpy(bad, good, good_len);
    bad[0] = 0x36; /* version 3 */
    uid_key(key, 1, 6);
    raw_put(&r, "messages", key, 8, bad, good_len);
    memcpy(bad, good, good_len);
    bad[good_len] = 0;
    uid_key(key, 1, 2000);
    raw_put(&r, "messages", key, 8, bad, good_len + 1); /* trailing byte */
    memcpy(bad, good, good_len);
    bad[0] |= 0x09; /* orphan and appending at once: no record is both */
    uid_key(key, 1, 2001);
    raw_put(&r, "messages", key, 8, bad, good_len);
    memcpy(bad, good, good_len);
    bad[good_len - 2] = '\0'; /* NUL inside "six" */
    uid_key(key, 1, 2002);
    raw_put(&r, "messages", key, 8, bad, good_len);
    memcpy(bad, good, good_len);
    bad[4] = 99; /* keyword set 99 does not exist */
    uid_key(key, 1, 2003);
    raw_put(&r, "messages", key, 8, bad, good_len);
    raw_put(&r, "folders", "Bad", 3, "\x02\x02\x03", 3);
    raw_put(&r, "pop", "U2", 2, "", 0);
    raw_close(&r);

    idx = open_ok(fx, "acct");
    t = begin(idx, true);
    struct idx_msg got;
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 5, &got), -EBADMSG);
    assert_non_null(strstr(idx_error(idx), "corrupt message record for UID 5 in folder 'INBOX'"));
    assert_non_null(strstr(idx_error(idx), "index.mdb"));
    /* The identity entry of "five" leads to the corrupt record, which may
     * be its own: that is not "no such message". */
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "five", &got), -EBADMSG);
    for (size_t len = 0; len < good_len; len++) {
        assert_int_equal(idx_msg_get_uid(t, "INBOX", (uint32_t)(1000 + len), &got), -EBADMSG);
    }
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 6, &got), -EBADMSG);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 2000, &got), -EBADMSG);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 2001, &got), -EBADMSG);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 2002, &got), -EBADMSG);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 2003, &got), -EBADMSG);
    assert_non_null(strstr(idx_error(idx), "keyword set 99 of 'six' in folder 'INBOX' is missing"));
    /* A record that is fine is still found. */
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "seven", &got), 0);
    assert_int_equal(got.uid, 7);
    struct msg_list l = {.n = 0};
    assert_int_equal(idx_msg_foreach(t, "INBOX", collect_msg, &l), -EBADMSG);
    assert_int_equal(l.n, 0);
    assert_int_equal(idx_msg_walk(t, "INBOX", collect_msg, &l), -EBADMSG);
    assert_int_equal(l.n, 0);
    struct idx_folder fst;
    assert_int_equal(idx_folder_get(t, "Bad", &fst), -EBADMSG);
    struct name_list nl = {.n = 0};
    assert_int_equal(idx_folder_foreach(t, collect_folder, &nl), -EBADMSG);
    free_names(&nl);
    struct idx_pop pgot;
    assert_int_equal(idx_pop_get(t, "U2", &pgot), -EBADMSG);
    struct pop_list pl = {.n = 0};
    assert_int_equal(idx_pop_foreach(t, collect_pop, &pl), -EBADMSG);
    /* Replacing over a corrupt record is refused rather than guessed at. */
    make_msg(&m, 5, "five", IDX_MSG_SYNCED, "");
    assert_int_equal(idx_msg_put(t, "INBOX", &m), -EBADMSG);

    /* Deleting is the way out: the corrupt UID record goes; its identity
     * entry then leads nowhere and "five" is simply unknown, and a new
     * record for it can be written (which drops the stale entry). */
    assert_int_equal(idx_msg_delete_uid(t, "INBOX", 5), 0);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "five", &got), -ENOENT);
    assert_int_equal(idx_msg_delete_lid(t, "INBOX", "five"), -ENOENT);
    put_msg(idx, t, "INBOX", &m);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "five", &got), 0);
    assert_msg_equal(&got, &m);
    /* Deleting by lid removes a corrupt record its entry leads to. */
    assert_int_equal(idx_msg_delete_uid(t, "INBOX", 5), 0);
    make_msg(&m, 6, "six", IDX_MSG_SYNCED, "");
    assert_int_equal(idx_msg_delete_lid(t, "INBOX", "six"), 0);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 6, &got), -ENOENT);
    put_msg(idx, t, "INBOX", &m);
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "six", &got), 0);
    assert_msg_equal(&got, &m);
    commit(idx, t);
    idx_close(idx);

    /* Of the identity entries only those of live records are left: five's
     * stale one went with the put, six's with the delete. */
    raw_open(fx, "acct", &r);
    assert_int_equal(raw_entries(&r, "message_lids"), 2); /* seven and six */
    raw_close(&r);
}

/* Keyword sets */

/* The records of "keyword_sets": two per live set (the set, and its entry
 * under the hash of its string). */
static size_t kw_records(struct fx *fx, const char *account)
{
    struct raw r;
    raw_open(fx, account, &r);
    size_t n = raw_entries(&r, "keyword_sets");
    raw_close(&r);
    return n;
}

static void expect_keywords(struct idx *idx, const char *folder, uint32_t uid, const char *want)
{
    struct idx_txn *t = begin(idx, false);
    struct idx_msg got;
    int rc = idx_msg_get_uid(t, folder, uid, &got);
    if (rc != 0) {
        fail_msg("UID %u: %d %s", uid, rc, idx_error(idx));
    }
    assert_string_equal(got.keywords, want);
    idx_abort(t);
}

/* A keyword string is stored once per folder however many messages carry
 * it; changing a message's keywords moves it to another set, and a set
 * goes when its last message leaves it, by a change, a deletion by UID or
 * by lid, an APPENDING record replaced, or its folder's deletion. */
static void test_keyword_sets_shared_and_cleaned(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m;
    char lid[32];
    for (uint32_t uid = 1; uid <= 30; uid++) {
        snprintf(lid, sizeof(lid), "m%u", uid);
        make_msg(&m, uid, lid, IDX_MSG_SYNCED, uid <= 20 ? "$Junk NonJunk" : "work");
        put_msg(idx, t, "INBOX", &m);
    }
    make_msg(&m, 0, "pending", IDX_MSG_APPENDING, "work");
    put_msg(idx, t, "INBOX", &m);
    /* The same string in another folder is that folder's own set. */
    make_msg(&m, 1, "other", IDX_MSG_SYNCED, "work");
    put_msg(idx, t, "Other", &m);
    commit(idx, t);
    assert_int_equal(kw_records(fx, "acct"), 2 * 3);
    expect_keywords(idx, "INBOX", 7, "$Junk NonJunk");
    expect_keywords(idx, "INBOX", 27, "work");

    /* A flag change keeps the set; a keyword change moves the message. */
    t = begin(idx, true);
    make_msg(&m, 7, "m7", IDX_MSG_SYNCED, "$Junk NonJunk");
    m.flags = 0x3f;
    put_msg(idx, t, "INBOX", &m);
    make_msg(&m, 8, "m8", IDX_MSG_SYNCED, "work");
    put_msg(idx, t, "INBOX", &m);
    make_msg(&m, 9, "m9", IDX_MSG_SYNCED, "brand new");
    put_msg(idx, t, "INBOX", &m);
    commit(idx, t);
    assert_int_equal(kw_records(fx, "acct"), 2 * 4);
    expect_keywords(idx, "INBOX", 7, "$Junk NonJunk");
    expect_keywords(idx, "INBOX", 8, "work");
    expect_keywords(idx, "INBOX", 9, "brand new");

    /* The only message with "brand new" loses its keywords: the set goes. */
    t = begin(idx, true);
    make_msg(&m, 9, "m9", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    commit(idx, t);
    assert_int_equal(kw_records(fx, "acct"), 2 * 3);
    expect_keywords(idx, "INBOX", 9, "");

    /* Every "$Junk NonJunk" message goes, by UID and by lid. */
    t = begin(idx, true);
    for (uint32_t uid = 1; uid <= 20; uid++) {
        if (uid == 8 || uid == 9) {
            continue;
        }
        snprintf(lid, sizeof(lid), "m%u", uid);
        assert_int_equal(
            uid % 2 ? idx_msg_delete_uid(t, "INBOX", uid) : idx_msg_delete_lid(t, "INBOX", lid), 0);
    }
    commit(idx, t);
    assert_int_equal(kw_records(fx, "acct"), 2 * 2);

    /* The APPENDING record gets its UID and then other keywords; the last
     * "work" messages of INBOX go; "Other" keeps its own. */
    t = begin(idx, true);
    make_msg(&m, 500, "pending", IDX_MSG_SYNCED, "work");
    put_msg(idx, t, "INBOX", &m);
    make_msg(&m, 500, "pending", IDX_MSG_SYNCED, "later");
    put_msg(idx, t, "INBOX", &m);
    for (uint32_t uid = 21; uid <= 30; uid++) {
        assert_int_equal(idx_msg_delete_uid(t, "INBOX", uid), 0);
    }
    assert_int_equal(idx_msg_delete_uid(t, "INBOX", 8), 0);
    commit(idx, t);
    assert_int_equal(kw_records(fx, "acct"), 2 * 2); /* INBOX "later", Other "work" */
    expect_keywords(idx, "INBOX", 500, "later");
    expect_keywords(idx, "Other", 1, "work");

    /* A message that takes over another's UID takes its place in the sets
     * too; then the folder goes with its sets. */
    t = begin(idx, true);
    make_msg(&m, 500, "thief", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "INBOX", &m);
    commit(idx, t);
    assert_int_equal(kw_records(fx, "acct"), 2 * 1);
    t = begin(idx, true);
    assert_int_equal(idx_folder_delete(t, "Other"), 0);
    commit(idx, t);
    assert_int_equal(kw_records(fx, "acct"), 0);
    idx_close(idx);
}

/* Thousands of distinct keyword sets in one folder (every message its own,
 * the longest allowed among them) each come back with their message, by
 * UID, by lid and in both walks, and all go when the messages do. */
static void test_keyword_sets_many(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "acct");
    enum {
        N = 3000
    };
    char kw[IDX_KEYWORDS_MAX + 1], lid[IDX_LID_MAX + 1];
    struct idx_msg m;
    struct idx_txn *t = begin(idx, true);
    for (uint32_t i = 1; i <= N; i++) {
        snprintf(lid, sizeof(lid), "1700000000.M%06uP1.host", i);
        if (i == N) {
            memset(kw, 'k', IDX_KEYWORDS_MAX);
            kw[IDX_KEYWORDS_MAX] = '\0';
        } else {
            /* Half the messages share their set with a neighbour. */
            snprintf(kw, sizeof(kw), "$label%u other", (i + 1) / 2);
        }
        make_msg(&m, i, lid, IDX_MSG_SYNCED, kw);
        put_msg(idx, t, "INBOX", &m);
    }
    commit(idx, t);
    assert_int_equal(kw_records(fx, "acct"), 2 * ((N - 1 + 1) / 2 + 1));

    t = begin(idx, false);
    struct idx_msg got;
    for (uint32_t i = 1; i <= N; i++) {
        snprintf(lid, sizeof(lid), "1700000000.M%06uP1.host", i);
        assert_int_equal(idx_msg_get_lid(t, "INBOX", lid, &got), 0);
        assert_int_equal(got.uid, i);
        if (i == N) {
            assert_int_equal(strlen(got.keywords), IDX_KEYWORDS_MAX);
        } else {
            snprintf(kw, sizeof(kw), "$label%u other", (i + 1) / 2);
            assert_string_equal(got.keywords, kw);
        }
    }
    idx_abort(t);

    t = begin(idx, true);
    for (uint32_t i = 1; i <= N; i++) {
        assert_int_equal(idx_msg_delete_uid(t, "INBOX", i), 0);
    }
    assert_int_equal(idx_msg_count(t, "INBOX"), 0);
    commit(idx, t);
    assert_int_equal(kw_records(fx, "acct"), 0);
    idx_close(idx);
}

/* Counts and walks against a model */

struct model_msg {
    bool live;
    uint32_t uid;
    uint8_t state;
    uint8_t flags;
    char lid[IDX_LID_MAX + 1];
    const char *kw;
};

struct model {
    struct model_msg v[512];
    size_t n;
};

static struct model_msg *model_find_lid(struct model *md, const char *lid)
{
    for (size_t i = 0; i < md->n; i++) {
        if (md->v[i].live && strcmp(md->v[i].lid, lid) == 0) {
            return &md->v[i];
        }
    }
    return NULL;
}

static struct model_msg *model_find_uid(struct model *md, uint32_t uid)
{
    for (size_t i = 0; i < md->n; i++) {
        if (md->v[i].live && md->v[i].uid == uid) {
            return &md->v[i];
        }
    }
    return NULL;
}

static size_t model_count(const struct model *md, int which)
{
    size_t n = 0;
    for (size_t i = 0; i < md->n; i++) {
        if (md->v[i].live && (which < 0 || (which == 0) == (md->v[i].uid != 0))) {
            n++;
        }
    }
    return n;
}

static int model_cmp(const void *a, const void *b)
{
    const struct model_msg *x = a, *y = b;
    if ((x->uid == 0) != (y->uid == 0)) {
        return x->uid == 0 ? 1 : -1;
    }
    if (x->uid != y->uid) {
        return x->uid < y->uid ? -1 : 1;
    }
    return strcmp(x->lid, y->lid);
}

struct walk_check {
    const struct model_msg *want; /* live records in walk order */
    size_t n, seen;
    bool ok;
};

static int walk_compare(const struct idx_msg *m, void *arg)
{
    struct walk_check *w = arg;
    if (w->seen >= w->n) {
        w->ok = false;
        return 0;
    }
    const struct model_msg *e = &w->want[w->seen++];
    if (m->uid != e->uid || m->state != e->state || m->flags != e->flags ||
        strcmp(m->lid, e->lid) != 0 || strcmp(m->keywords, e->kw) != 0) {
        w->ok = false;
    }
    return 0;
}

/* Whether two records hold the same values (not the bytes past a NUL). */
static bool same_msg(const struct idx_msg *a, const struct idx_msg *b)
{
    return a->uid == b->uid && a->state == b->state && a->flags == b->flags && a->size == b->size &&
           strcmp(a->lid, b->lid) == 0 && strcmp(a->keywords, b->keywords) == 0 &&
           memcmp(a->msgid_hash, b->msgid_hash, sizeof(a->msgid_hash)) == 0 &&
           memcmp(a->emailid_hash, b->emailid_hash, sizeof(a->emailid_hash)) == 0;
}

struct rows_check {
    const struct idx_rows *rows;
    size_t seen;
    bool ok;
};

static int rows_compare(const struct idx_msg *m, void *arg)
{
    struct rows_check *c = arg;
    struct idx_msg got;
    if (c->seen >= c->rows->n) {
        c->ok = false;
        return 0;
    }
    idx_rows_get(c->rows, c->seen, &got);
    c->ok = c->ok && same_msg(m, &got) && strcmp(idx_rows_lid(c->rows, c->seen), m->lid) == 0 &&
            strcmp(idx_rows_keywords(c->rows, c->seen), m->keywords) == 0;
    c->seen++;
    return 0;
}

/* idx_msg_walk_rows gives what idx_msg_walk does, record by record and
 * field by field; returns the walk's result. */
static int rows_check_walk(struct idx_txn *t, const char *folder)
{
    struct idx_rows rows = {0};
    int rc = idx_msg_walk_rows(t, folder, &rows);
    if (rc == 0) {
        struct rows_check c = {.rows = &rows, .ok = true};
        assert_int_equal(idx_msg_walk(t, folder, rows_compare, &c), 0);
        assert_true(c.ok);
        assert_int_equal(c.seen, rows.n);
    }
    idx_rows_free(&rows);
    return rc;
}

/* The index against a model of what it should hold, checked after every
 * round: the count, both walks record by record (order, every field), and
 * the raw number of records in each database (no stale identity entry, no
 * keyword set without a message). */
static void model_check(struct fx *fx, struct idx *idx, struct model *md, bool exists,
                        size_t nsets_live)
{
    struct model_msg *sorted = xcalloc(md->n + 1, sizeof(*sorted));
    size_t n = 0;
    for (size_t i = 0; i < md->n; i++) {
        if (md->v[i].live) {
            sorted[n++] = md->v[i];
        }
    }
    qsort(sorted, n, sizeof(*sorted), model_cmp);
    struct idx_txn *t = begin(idx, false);
    assert_int_equal(idx_msg_count(t, "INBOX"), n);
    struct walk_check w = {.want = sorted, .n = n, .ok = true};
    assert_int_equal(idx_msg_walk(t, "INBOX", walk_compare, &w), exists ? 0 : -ENOENT);
    assert_true(w.ok);
    assert_int_equal(w.seen, n);
    struct walk_check w2 = {.want = sorted, .n = n, .ok = true};
    assert_int_equal(idx_msg_foreach(t, "INBOX", walk_compare, &w2), exists ? 0 : -ENOENT);
    assert_true(w2.ok);
    assert_int_equal(w2.seen, n);
    assert_int_equal(rows_check_walk(t, "INBOX"), exists ? 0 : -ENOENT);
    idx_abort(t);
    free(sorted);

    idx_close(idx);
    struct raw r;
    raw_open(fx, "acct", &r);
    assert_int_equal(raw_entries(&r, "messages"), model_count(md, 0));
    assert_int_equal(raw_entries(&r, "message_lids"), model_count(md, 0));
    assert_int_equal(raw_entries(&r, "messages_appending"), model_count(md, 1));
    assert_int_equal(raw_entries(&r, "keyword_sets"), 2 * nsets_live);
    raw_close(&r);
}

static uint32_t rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*s >> 33);
}

/* Random puts (new, replacing, moving a lid to another UID, taking a UID
 * from another lid, APPENDING and back), deletions by UID and by lid, and
 * a folder deletion, checked against the model after every round. The
 * 300 lids share their time and microseconds, so that their identity
 * entries collide often (12 bits of hash tell them apart). */
static void test_msg_count_and_walk_model(void **state)
{
    struct fx *fx = *state;
    static const char *const kws[] = {"", "", "", "a", "b c", "$Junk", "zz top"};
    struct model *md = xcalloc(1, sizeof(*md));
    uint64_t seed = 42;
    bool exists = false;
    for (int round = 0; round < 12; round++) {
        struct idx *idx = open_ok(fx, "acct");
        struct idx_txn *t = begin(idx, true);
        for (int op = 0; op < 250; op++) {
            uint32_t r = rnd(&seed) % 100;
            char lid[48];
            snprintf(lid, sizeof(lid), "1700000000.M000042P%u.host", rnd(&seed) % 300);
            uint32_t uid = rnd(&seed) % 400 + 1;
            if (r < 70) {
                struct idx_msg m;
                bool pending = rnd(&seed) % 8 == 0;
                const char *kw = kws[rnd(&seed) % ARRAY_SIZE(kws)];
                make_msg(&m, pending ? 0 : uid, lid, pending ? IDX_MSG_APPENDING : IDX_MSG_SYNCED,
                         kw);
                m.flags = (uint8_t)(rnd(&seed) & 0xff);
                put_msg(idx, t, "INBOX", &m);
                exists = true;
                struct model_msg *old = model_find_lid(md, lid);
                if (old != NULL) {
                    old->live = false;
                }
                old = pending ? NULL : model_find_uid(md, uid);
                if (old != NULL) {
                    old->live = false;
                }
                size_t slot = md->n;
                for (size_t i = 0; i < md->n; i++) {
                    if (!md->v[i].live) {
                        slot = i;
                        break;
                    }
                }
                assert_true(slot < ARRAY_SIZE(md->v));
                md->n += slot == md->n;
                md->v[slot] = (struct model_msg){
                    .live = true, .uid = m.uid, .state = m.state, .flags = m.flags, .kw = kw};
                snprintf(md->v[slot].lid, sizeof(md->v[slot].lid), "%s", lid);
            } else if (r < 85) {
                struct model_msg *old = model_find_uid(md, uid);
                assert_int_equal(idx_msg_delete_uid(t, "INBOX", uid), old != NULL ? 0 : -ENOENT);
                if (old != NULL) {
                    old->live = false;
                }
            } else if (r < 99) {
                struct model_msg *old = model_find_lid(md, lid);
                assert_int_equal(idx_msg_delete_lid(t, "INBOX", lid), old != NULL ? 0 : -ENOENT);
                if (old != NULL) {
                    old->live = false;
                }
            } else if (round % 4 == 3) {
                /* A folder exists from its first put until it is deleted. */
                assert_int_equal(idx_folder_delete(t, "INBOX"), exists ? 0 : -ENOENT);
                exists = false;
                md->n = 0;
            }
            assert_int_equal(idx_msg_count(t, "INBOX"), model_count(md, -1));
        }
        commit(idx, t);
        size_t nsets = 0;
        for (size_t k = 3; k < ARRAY_SIZE(kws); k++) {
            for (size_t i = 0; i < md->n; i++) {
                if (md->v[i].live && strcmp(md->v[i].kw, kws[k]) == 0) {
                    nsets++;
                    break;
                }
            }
        }
        model_check(fx, idx, md, exists, nsets); /* closes idx */
    }
    free(md);
}

/* idx_msg_walk: the order of idx_msg_foreach, every field including the
 * keywords, an early stop, an empty and an unknown folder. */
static void test_msg_walk(void **state)
{
    struct idx *idx = open_ok(*state, "acct");
    struct idx_txn *t = begin(idx, true);
    static const uint32_t uids[] = {256, 3, 70000, 1, 65536, 255, 4000000000u, 10};
    static const char *const pending[] = {"p.b", "p.a", "p.c"};
    struct idx_msg m;
    char lid[32];
    for (size_t i = 0; i < ARRAY_SIZE(uids); i++) {
        snprintf(lid, sizeof(lid), "lid.%u", uids[i]);
        make_msg(&m, uids[i], lid, IDX_MSG_SYNCED, i % 2 ? "odd one" : "");
        put_msg(idx, t, "INBOX", &m);
    }
    for (size_t i = 0; i < ARRAY_SIZE(pending); i++) {
        make_msg(&m, 0, pending[i], IDX_MSG_APPENDING, "p");
        put_msg(idx, t, "INBOX", &m);
    }
    make_msg(&m, 2, "other", IDX_MSG_SYNCED, "");
    put_msg(idx, t, "Other", &m);
    struct idx_folder st = {.uidvalidity = 1};
    assert_int_equal(idx_folder_put(t, "Empty", &st), 0);
    commit(idx, t);

    t = begin(idx, false);
    struct msg_list a = {.n = 0}, b = {.n = 0};
    assert_int_equal(idx_msg_foreach(t, "INBOX", collect_msg, &a), 0);
    assert_int_equal(idx_msg_walk(t, "INBOX", collect_msg, &b), 0);
    assert_int_equal(b.n, 11);
    assert_int_equal(a.n, b.n);
    for (size_t i = 0; i < b.n; i++) {
        assert_int_equal(a.uids[i], b.uids[i]);
        assert_string_equal(a.lids[i], b.lids[i]);
        assert_int_equal(a.states[i], b.states[i]);
    }
    assert_int_equal(b.uids[0], 1);
    assert_int_equal(b.uids[7], 4000000000u);
    assert_string_equal(b.lids[8], "p.a");
    assert_string_equal(b.lids[10], "p.c");
    /* Every field, keywords included, as idx_msg_get_uid gives them. */
    struct walk_check w = {.ok = true};
    struct model_msg want[11];
    for (size_t i = 0; i < 11; i++) {
        struct idx_msg got;
        if (b.uids[i] != 0) {
            assert_int_equal(idx_msg_get_uid(t, "INBOX", b.uids[i], &got), 0);
        } else {
            assert_int_equal(idx_msg_get_lid(t, "INBOX", b.lids[i], &got), 0);
        }
        want[i] = (struct model_msg){
            .uid = got.uid, .state = got.state, .flags = got.flags, .kw = xstrdup(got.keywords)};
        snprintf(want[i].lid, sizeof(want[i].lid), "%s", got.lid);
    }
    w.want = want;
    w.n = 11;
    assert_int_equal(idx_msg_walk(t, "INBOX", walk_compare, &w), 0);
    assert_true(w.ok);
    assert_int_equal(w.seen, 11);
    for (size_t i = 0; i < 11; i++) {
        free((char *)want[i].kw);
    }

    struct msg_list stop = {.stop_after = 9};
    assert_int_equal(idx_msg_walk(t, "INBOX", collect_msg, &stop), 7);
    assert_int_equal(stop.n, 9);
    struct msg_list none = {.n = 0};
    assert_int_equal(idx_msg_walk(t, "Empty", collect_msg, &none), 0);
    assert_int_equal(none.n, 0);
    assert_int_equal(idx_msg_walk(t, "Other", collect_msg, &none), 0);
    assert_int_equal(none.n, 1);
    assert_int_equal(idx_msg_walk(t, "Nope", collect_msg, &none), -ENOENT);
    idx_abort(t);
    idx_close(idx);
}

/* idx_msg_walk_rows: every record as idx_msg_walk gives it (orphans,
 * intents, both hashes, a keyword set of the full IDX_KEYWORDS_MAX bytes),
 * more lids than one 64 KiB block holds, each set held once; rows added,
 * changed and removed afterwards; lid pointers that stay put while rows
 * are added. */
static void test_msg_walk_rows(void **state)
{
    struct idx *idx = open_ok(*state, "acct");
    struct idx_txn *t = begin(idx, true);
    char longkw[IDX_KEYWORDS_MAX + 1];
    for (size_t i = 0; i < IDX_KEYWORDS_MAX; i++) {
        longkw[i] = i % 9 == 8 ? ' ' : (char)('a' + i % 26);
    }
    longkw[IDX_KEYWORDS_MAX] = '\0';
    const char *kws[] = {"", "$Junk", longkw, "a b"};
    struct idx_msg m;
    char lid[IDX_LID_MAX + 1];
    const size_t n = 700; /* 700 lids of 200 bytes: three blocks */
    for (size_t i = 1; i <= n; i++) {
        snprintf(lid, sizeof(lid), "%0199zu", i);
        make_msg(&m, (uint32_t)i, lid, i % 50 == 0 ? IDX_MSG_ORPHAN : IDX_MSG_SYNCED,
                 kws[i % ARRAY_SIZE(kws)]);
        put_msg(idx, t, "INBOX", &m);
    }
    make_msg(&m, 0, "pending.lid", IDX_MSG_APPENDING, "a b");
    put_msg(idx, t, "INBOX", &m);
    make_msg(&m, 1, "other", IDX_MSG_SYNCED, "x");
    put_msg(idx, t, "Other", &m);
    commit(idx, t);

    t = begin(idx, false);
    assert_int_equal(rows_check_walk(t, "INBOX"), 0);
    assert_int_equal(rows_check_walk(t, "Other"), 0);
    struct idx_rows rows = {0};
    assert_int_equal(idx_msg_walk_rows(t, "Nope", &rows), -ENOENT);
    assert_int_equal(rows.n, 0);
    idx_rows_reserve(&rows, n + 1);
    assert_int_equal(idx_msg_walk_rows(t, "INBOX", &rows), 0);
    idx_abort(t);
    assert_int_equal(rows.n, n + 1);
    assert_int_equal(rows.cap, n + 1); /* reserved: nothing grown */
    assert_true(sizeof(struct idx_row) <= 48);
    assert_true(rows.nblocks >= 3);
    assert_int_equal(rows.nkwsets, ARRAY_SIZE(kws));          /* "" and each set once */
    assert_string_equal(idx_rows_keywords(&rows, 0), kws[1]); /* UID 1 */
    assert_string_equal(idx_rows_keywords(&rows, 1), longkw);
    assert_int_equal(rows.v[49].state, IDX_MSG_ORPHAN);
    assert_int_equal(rows.v[n].state, IDX_MSG_APPENDING);
    assert_string_equal(idx_rows_lid(&rows, n), "pending.lid");

    /* Added rows: their strings interned, earlier lids where they were. */
    const char *first = idx_rows_lid(&rows, 0);
    for (uint32_t u = 1; u <= 400; u++) {
        snprintf(lid, sizeof(lid), "new.%0190u", u);
        make_msg(&m, 10000 + u, lid, IDX_MSG_SYNCED, u % 2 ? longkw : "fresh");
        idx_rows_add(&rows, &m);
    }
    assert_ptr_equal(idx_rows_lid(&rows, 0), first);
    assert_int_equal(rows.nkwsets, ARRAY_SIZE(kws) + 1);
    struct idx_msg got;
    idx_rows_get(&rows, n + 400, &got);
    assert_true(same_msg(&got, &m));

    /* Changed in place: the lid kept (not copied again), keywords moved. */
    idx_rows_get(&rows, 2, &got);
    uint32_t off = rows.v[2].lid_off;
    got.flags ^= 0x81;
    snprintf(got.keywords, sizeof(got.keywords), "%s", "a b");
    idx_rows_set(&rows, 2, &got);
    assert_int_equal(rows.v[2].lid_off, off);
    struct idx_msg back;
    idx_rows_get(&rows, 2, &back);
    assert_true(same_msg(&back, &got));
    snprintf(got.lid, sizeof(got.lid), "%s", "renamed");
    idx_rows_set(&rows, 2, &got);
    assert_string_equal(idx_rows_lid(&rows, 2), "renamed");

    /* Removed: the order of the others kept. */
    uint32_t next = rows.v[3].uid;
    idx_rows_remove(&rows, 2);
    assert_int_equal(rows.n, n + 400);
    assert_int_equal(rows.v[2].uid, next);
    idx_rows_free(&rows);
    assert_int_equal(rows.n, 0);
    idx_close(idx);
}

/* Conversion from schema 1 */

/* Kill points for test_upgrade_killed (see idx_convert_test_point in
 * store/index.c): -1 never. */
static int kill_at_done = -1;
static bool kill_at_committed;

void idx_convert_test_point(unsigned done, bool committed);
void idx_convert_test_point(unsigned done, bool committed)
{
    if ((int)done == kill_at_done && committed == kill_at_committed) {
        raise(SIGKILL);
    }
}

#define V1_FOLDERS 4

/* A schema 1 account: INBOX with records of every kind (the longest lid and
 * keywords, APPENDING with and without a UID, zero and non-zero hashes,
 * shared keyword strings), a folder with a name over the 400-byte key
 * limit, an empty folder and a folder of 2,000 messages; POP3 records and a
 * meta value written by schema 2 beforehand, which the conversion keeps. */
struct v1_fixture {
    struct idx_msg inbox[6];
    struct idx_msg *big;
    struct idx_msg longf[1];
    struct idx_v1_folder folders[V1_FOLDERS];
    char long_name[600];
    char max_lid[IDX_LID_MAX + 1];
    char max_kw[IDX_KEYWORDS_MAX + 1];
};

#define V1_BIG 2000

static struct v1_fixture *v1_fixture_write(struct fx *fx, const char *account)
{
    struct v1_fixture *v = xcalloc(1, sizeof(*v));
    memset(v->long_name, 'N', sizeof(v->long_name) - 1);
    memset(v->max_lid, 'l', IDX_LID_MAX);
    memset(v->max_kw, 'k', IDX_KEYWORDS_MAX);
    make_msg(&v->inbox[0], 5, "1733500000.M1P1.host,U=5", IDX_MSG_SYNCED, "$Junk work");
    make_msg(&v->inbox[1], 6, "1733500001.M2P1.host,U=6", IDX_MSG_SYNCED, "$Junk work");
    make_msg(&v->inbox[2], UINT32_MAX, v->max_lid, IDX_MSG_SYNCED, v->max_kw);
    make_msg(&v->inbox[3], 9, "appending.with.uid", IDX_MSG_APPENDING, "");
    make_msg(&v->inbox[4], 0, "appending.without", IDX_MSG_APPENDING, "later");
    make_msg(&v->inbox[5], 11, "no.hash", IDX_MSG_SYNCED, "");
    memset(v->inbox[5].msgid_hash, 0, sizeof(v->inbox[5].msgid_hash));
    v->inbox[5].flags = IDX_FLAGS_UNSETTLED | 0x11;
    v->big = xcalloc(V1_BIG, sizeof(*v->big));
    for (uint32_t i = 0; i < V1_BIG; i++) {
        char lid[64];
        snprintf(lid, sizeof(lid), "%u.M%06uP9.host", 1733000000u + i, i);
        make_msg(&v->big[i], 3 * i + 1, lid, IDX_MSG_SYNCED, i % 3 == 0 ? "$label1" : "");
    }
    make_msg(&v->longf[0], 1, "x", IDX_MSG_SYNCED, "");
    /* Schema 1 has no EMAILID: the converted records carry none. */
    for (size_t i = 0; i < ARRAY_SIZE(v->inbox); i++) {
        memset(v->inbox[i].emailid_hash, 0, sizeof(v->inbox[i].emailid_hash));
    }
    for (uint32_t i = 0; i < V1_BIG; i++) {
        memset(v->big[i].emailid_hash, 0, sizeof(v->big[i].emailid_hash));
    }
    memset(v->longf[0].emailid_hash, 0, sizeof(v->longf[0].emailid_hash));
    v->folders[0] = (struct idx_v1_folder){.name = "INBOX",
                                           .st = {.uidvalidity = 1700000001u,
                                                  .uidnext = 4242,
                                                  .highestmodseq = (1ull << 62) + 5,
                                                  .last_full_sync = -12345678901ll,
                                                  .messages = 4000000000u},
                                           .msgs = v->inbox,
                                           .nmsgs = ARRAY_SIZE(v->inbox)};
    v->folders[1] = (struct idx_v1_folder){
        .name = v->long_name, .st = {.uidvalidity = 3}, .msgs = v->longf, .nmsgs = 1};
    v->folders[2] = (struct idx_v1_folder){.name = "Empty", .st = {.uidvalidity = 0}};
    v->folders[3] = (struct idx_v1_folder){.name = "Archive/2024",
                                           .st = {.uidvalidity = 9, .uidnext = 3 * V1_BIG},
                                           .msgs = v->big,
                                           .nmsgs = V1_BIG};

    /* POP3 records and meta values live on through both formats. */
    struct idx *idx = open_ok(fx, account);
    struct idx_txn *t = begin(idx, true);
    struct idx_pop p;
    make_pop(&p, "U1", "pop.lid", IDX_POP_DELIVERED);
    assert_int_equal(idx_pop_put(t, &p), 0);
    assert_int_equal(idx_meta_put(t, "pop:last_run", "1700", 4), 0);
    commit(idx, t);
    idx_close(idx);

    char *env = idx_path(fx->dir, account);
    char *err = NULL;
    if (idx_v1_write(env, v->folders, V1_FOLDERS, &err) != 0) {
        fail_msg("idx_v1_write: %s", err);
    }
    free(env);
    return v;
}

static void v1_fixture_free(struct v1_fixture *v)
{
    free(v->big);
    free(v);
}

/* The converted index holds everything the schema 1 one did, and works. */
static void v1_fixture_check(struct fx *fx, const char *account, const struct v1_fixture *v)
{
    struct idx *idx = open_ok(fx, account);
    struct idx_txn *t = begin(idx, false);
    for (size_t f = 0; f < V1_FOLDERS; f++) {
        const struct idx_v1_folder *vf = &v->folders[f];
        struct idx_folder st;
        assert_int_equal(idx_folder_get(t, vf->name, &st), 0);
        assert_folder_equal(&st, &vf->st); /* the change times are 0 */
        assert_int_equal(idx_msg_count(t, vf->name), vf->nmsgs);
        for (size_t i = 0; i < vf->nmsgs; i++) {
            const struct idx_msg *want = &vf->msgs[i];
            struct idx_msg got;
            if (want->uid != 0) {
                assert_int_equal(idx_msg_get_uid(t, vf->name, want->uid, &got), 0);
                assert_msg_equal(&got, want);
            }
            assert_int_equal(idx_msg_get_lid(t, vf->name, want->lid, &got), 0);
            assert_msg_equal(&got, want);
        }
        struct msg_list l = {.n = 0};
        if (vf->nmsgs <= ARRAY_SIZE(l.uids)) {
            assert_int_equal(idx_msg_walk(t, vf->name, collect_msg, &l), 0);
            assert_int_equal(l.n, vf->nmsgs);
        }
    }
    struct idx_pop p;
    assert_int_equal(idx_pop_get(t, "U1", &p), 0);
    assert_string_equal(p.lid, "pop.lid");
    char buf[8];
    size_t len = 0;
    assert_int_equal(idx_meta_get(t, "pop:last_run", buf, sizeof(buf), &len), 0);
    assert_int_equal(len, 4);
    assert_memory_equal(buf, "1700", 4);
    assert_int_equal(idx_meta_get(t, "schema_version", buf, sizeof(buf), &len), 0);
    assert_memory_equal(buf, "\x02\0\0\0", 4);
    idx_abort(t);

    /* A new folder gets an id of its own: nothing of another shows up. */
    t = begin(idx, true);
    struct idx_msg m;
    make_msg(&m, 1, "new.one", IDX_MSG_SYNCED, "$Junk work");
    put_msg(idx, t, "New", &m);
    assert_int_equal(idx_msg_count(t, "New"), 1);
    struct msg_list l = {.n = 0};
    assert_int_equal(idx_msg_walk(t, "New", collect_msg, &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(idx_folder_delete(t, "New"), 0);
    commit(idx, t);
    idx_close(idx);

    /* Schema 1's databases are gone. */
    struct raw r;
    raw_open(fx, account, &r);
    static const char *const v1_dbs[] = {"msg_uid", "msg_lid", "msg_pending"};
    for (size_t i = 0; i < ARRAY_SIZE(v1_dbs); i++) {
        MDB_dbi dbi;
        assert_int_equal(mdb_dbi_open(r.txn, v1_dbs[i], 0, &dbi), MDB_NOTFOUND);
    }
    raw_close(&r);
}

static char *older_message(struct fx *fx, const char *account)
{
    return xasprintf("index %s/%s/index.mdb was written by an older mailsync (schema 1, this "
                     "build uses %u); run 'mailsync sync' once to convert it",
                     fx->dir, account, IDX_SCHEMA_VERSION);
}

/* A schema 1 index: idx_open_readonly refuses it and says how to convert
 * it (it must not write); idx_open converts it, keeping every record. */
static void test_upgrade_from_v1(void **state)
{
    struct fx *fx = *state;
    struct v1_fixture *v = v1_fixture_write(fx, "acct");

    struct idx *idx = (struct idx *)1;
    char *err = NULL;
    assert_int_equal(idx_open_readonly(fx->dir, "acct", &idx, &err), -EPROTO);
    assert_null(idx);
    char *want = older_message(fx, "acct");
    assert_string_equal(err, want);
    free(want);
    free(err);

    v1_fixture_check(fx, "acct", v);
    /* Converted once: opening again changes nothing, and so does the
     * read-only open now. */
    v1_fixture_check(fx, "acct", v);
    idx = open_ro_ok(fx, "acct");
    struct idx_txn *t = begin(idx, false);
    assert_int_equal(idx_msg_count(t, "Archive/2024"), V1_BIG);
    idx_abort(t);
    idx_close(idx);
    v1_fixture_free(v);
}

/* Raw view of a conversion in progress: folders whose record is already
 * schema 2, and the schema version. */
static void conversion_state(struct fx *fx, const char *account, size_t *converted_r,
                             uint32_t *version_r)
{
    struct raw r;
    raw_open(fx, account, &r);
    MDB_cursor *c;
    assert_int_equal(mdb_cursor_open(r.txn, raw_dbi(&r, "folders"), &c), 0);
    MDB_val k, v;
    size_t n = 0, all = 0;
    while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
        all++;
        n += v.mv_size > 0 && ((const uint8_t *)v.mv_data)[0] == 2;
    }
    mdb_cursor_close(c);
    assert_int_equal(all, V1_FOLDERS);
    assert_int_equal(raw_get(&r, "meta", "schema_version", 14, &v), 0);
    *version_r = ((const uint8_t *)v.mv_data)[0];
    raw_close(&r);
    *converted_r = n;
}

static void open_killed(struct fx *fx, const char *account, int done, bool committed)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        kill_at_done = done;
        kill_at_committed = committed;
        struct idx *idx = NULL;
        char *err = NULL;
        idx_open(fx->dir, account, &idx, &err);
        _exit(3); /* not killed: the kill point was never reached */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
}

/* kill -9 in the middle of a conversion, inside a folder's transaction and
 * between two: every folder is either untouched or wholly converted, the
 * index stays schema 1 (the read-only open still refuses it, with the same
 * words), and the next idx_open finishes the job with nothing lost. */
static void test_upgrade_killed(void **state)
{
    struct fx *fx = *state;
    struct v1_fixture *v = v1_fixture_write(fx, "acct");
    size_t converted;
    uint32_t version;

    /* Killed while the first folder's records are written. */
    open_killed(fx, "acct", 0, false);
    conversion_state(fx, "acct", &converted, &version);
    assert_int_equal(converted, 0);
    assert_int_equal(version, 1);

    /* Killed after two folders were committed. */
    open_killed(fx, "acct", 2, true);
    conversion_state(fx, "acct", &converted, &version);
    assert_int_equal(converted, 2);
    assert_int_equal(version, 1);
    struct idx *idx = NULL;
    char *err = NULL;
    assert_int_equal(idx_open_readonly(fx->dir, "acct", &idx, &err), -EPROTO);
    char *want = older_message(fx, "acct");
    assert_string_equal(err, want);
    free(want);
    free(err);

    /* Killed in the last folder's transaction (the second this run
     * converts: the counts are this run's), after the earlier ones were done
     * by the run before. */
    open_killed(fx, "acct", 1, false);
    conversion_state(fx, "acct", &converted, &version);
    assert_int_equal(converted, 3);
    assert_int_equal(version, 1);

    /* Killed after every folder (this run has one left), before the
     * version was stamped. */
    open_killed(fx, "acct", 1, true);
    conversion_state(fx, "acct", &converted, &version);
    assert_int_equal(converted, V1_FOLDERS);
    assert_int_equal(version, 1);

    v1_fixture_check(fx, "acct", v);
    v1_fixture_free(v);
}

/* Size */

/* Bytes of data.mdb, and of a copy compacted as `mdb_copy -c` does. */
static void index_size(struct fx *fx, const char *account, size_t *written_r, size_t *compact_r)
{
    char path[512], copy[512];
    snprintf(path, sizeof(path), "%s/%s/index.mdb", fx->dir, account);
    snprintf(copy, sizeof(copy), "%s/%s-compact", fx->dir, account);
    struct stat st;
    char data[600];
    snprintf(data, sizeof(data), "%s/data.mdb", path);
    assert_int_equal(stat(data, &st), 0);
    *written_r = (size_t)st.st_size;
    MDB_env *env;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
    assert_int_equal(mdb_env_open(env, path, MDB_RDONLY, 0600), 0);
    assert_int_equal(mkdir(copy, 0700), 0);
    assert_int_equal(mdb_env_copy2(env, copy, MDB_CP_COMPACT), 0);
    mdb_env_close(env);
    snprintf(data, sizeof(data), "%s/data.mdb", copy);
    assert_int_equal(stat(data, &st), 0);
    *compact_r = (size_t)st.st_size;
}

/* Messages as the first sync of a folder records them: names as Dovecot,
 * mailsync and mbsync write them, in delivery order, committed in batches,
 * a tenth with a keyword. */
static size_t size_fill(struct idx *idx, uint32_t from, uint32_t to)
{
    size_t names = 0;
    struct idx_msg m;
    for (uint32_t start = from; start < to; start += 500) {
        struct idx_txn *t = begin(idx, true);
        for (uint32_t i = start; i < start + 500 && i < to; i++) {
            char lid[64];
            snprintf(lid, sizeof(lid), "%u.M%06uP4242.host,U=%u", 1733500000u + i / 7,
                     (i % 7) * 140000u + i % 1000, i + 1);
            make_msg(&m, i + 1, lid, IDX_MSG_SYNCED, i % 10 == 0 ? "$Junk" : "");
            m.size = 1500 + (i * 37) % 40000;
            put_msg(idx, t, "INBOX", &m);
            names += strlen(lid);
        }
        commit(idx, t);
    }
    return names;
}

/* The issue-13 budget: at most 64 bytes a message besides its name, for
 * the file compacted (everything counted) and as written (what each further
 * message adds, from 10,000 to 20,000, so that the pages every index has
 * whatever its size are not spread over the messages). */
static void test_size_per_message(void **state)
{
    struct fx *fx = *state;
    struct idx *idx = open_ok(fx, "size");
    size_t names = size_fill(idx, 0, 10000);
    idx_close(idx);
    size_t written, compact;
    index_size(fx, "size", &written, &compact);
    double name = (double)names / 10000;
    double per_compact = (double)compact / 10000 - name;
    print_message("10,000 messages, names of %.1f bytes: %zu bytes compacted (%.1f + name a "
                  "message), %zu as written\n",
                  name, compact, per_compact, written);
    assert_true(per_compact <= 64);

    idx = open_ok(fx, "size");
    size_t names2 = size_fill(idx, 10000, 20000);
    idx_close(idx);
    size_t written2, compact2;
    char path[512];
    snprintf(path, sizeof(path), "%s/size-compact", fx->dir);
    char data[600];
    snprintf(data, sizeof(data), "%s/data.mdb", path);
    assert_int_equal(unlink(data), 0);
    snprintf(data, sizeof(data), "%s/lock.mdb", path);
    unlink(data);
    assert_int_equal(rmdir(path), 0);
    index_size(fx, "size", &written2, &compact2);
    double per_written = (double)(written2 - written) / 10000 - (double)names2 / 10000;
    print_message("20,000 messages: %zu bytes as written, %.1f + name a message more\n", written2,
                  per_written);
    assert_true(per_written <= 64);
    assert_true((double)compact2 / 20000 - (double)(names + names2) / 20000 <= 64);
}

/* Validation and transaction rules */

static void test_validation(void **state)
{
    struct idx *idx = open_ok(*state, "acct");
    struct idx_txn *t = begin(idx, true);
    struct idx_msg m, got;

    make_msg(&m, 1, "x", IDX_MSG_SYNCED, "");
    memset(m.lid, 'l', sizeof(m.lid)); /* 256 bytes, no terminator */
    assert_int_equal(idx_msg_put(t, "INBOX", &m), -EINVAL);
    assert_non_null(strstr(idx_error(idx), "longer than 255"));
    make_msg(&m, 1, "", IDX_MSG_SYNCED, "");
    assert_int_equal(idx_msg_put(t, "INBOX", &m), -EINVAL);
    make_msg(&m, 1, "x", IDX_MSG_SYNCED, "");
    memset(m.keywords, 'k', sizeof(m.keywords));
    assert_int_equal(idx_msg_put(t, "INBOX", &m), -EINVAL);
    make_msg(&m, 1, "x", 3, "");
    assert_int_equal(idx_msg_put(t, "INBOX", &m), -EINVAL);
    make_msg(&m, 0, "x", IDX_MSG_ORPHAN, ""); /* an orphan keeps its old UID */
    assert_int_equal(idx_msg_put(t, "INBOX", &m), -EINVAL);
    /* An orphan round-trips with its state, hash and keywords, and is
     * found by UID and by lid like a synced record. */
    make_msg(&m, 7, "orph", IDX_MSG_ORPHAN, "$Work");
    m.msgid_hash[5] = 0x5a;
    m.size = 4242;
    assert_int_equal(idx_msg_put(t, "INBOX", &m), 0);
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 7, &got), 0);
    assert_int_equal(got.state, IDX_MSG_ORPHAN);
    assert_int_equal(got.msgid_hash[5], 0x5a);
    assert_int_equal(got.size, 4242);
    assert_string_equal(got.keywords, "$Work");
    assert_int_equal(idx_msg_get_lid(t, "INBOX", "orph", &got), 0);
    assert_int_equal(got.state, IDX_MSG_ORPHAN);
    assert_int_equal(idx_msg_delete_uid(t, "INBOX", 7), 0);
    make_msg(&m, 0, "x", IDX_MSG_SYNCED, "");
    assert_int_equal(idx_msg_put(t, "INBOX", &m), -EINVAL);
    make_msg(&m, 1, "x", IDX_MSG_SYNCED, "");
    assert_int_equal(idx_msg_put(t, "", &m), -EINVAL);
    char lid[IDX_LID_MAX + 2];
    memset(lid, 'l', IDX_LID_MAX + 1);
    lid[IDX_LID_MAX + 1] = '\0';
    assert_int_equal(idx_msg_get_lid(t, "INBOX", lid, &got), -EINVAL);
    assert_int_equal(idx_msg_delete_lid(t, "INBOX", lid), -EINVAL);
    assert_int_equal(idx_msg_delete_uid(t, "INBOX", 0), -EINVAL);

    /* Only one write transaction at a time. */
    struct idx_txn *t2 = (struct idx_txn *)1;
    assert_int_equal(idx_begin(idx, true, &t2), -EBUSY);
    assert_null(t2);
    idx_abort(t);

    /* Read transactions refuse writes. */
    t = begin(idx, false);
    make_msg(&m, 1, "x", IDX_MSG_SYNCED, "");
    assert_int_equal(idx_msg_put(t, "INBOX", &m), -EROFS);
    struct idx_folder st = {0};
    assert_int_equal(idx_folder_put(t, "INBOX", &st), -EROFS);
    assert_int_equal(idx_meta_put(t, "k", "v", 1), -EROFS);
    /* A read and a write transaction may be open together. */
    t2 = begin(idx, true);
    put_msg(idx, t2, "INBOX", &m);
    commit(idx, t2);
    idx_abort(t);
    idx_close(idx);
}

/* idx_write passes fn's errors through and aborts. */
static int failing_fn(struct idx_txn *t, void *arg)
{
    struct idx_msg m;
    make_msg(&m, 1, "x", IDX_MSG_SYNCED, "");
    int rc = idx_msg_put(t, "INBOX", &m);
    (*(int *)arg)++;
    return rc != 0 ? rc : -ECANCELED;
}

static void test_write_error(void **state)
{
    struct idx *idx = open_ok(*state, "acct");
    int calls = 0;
    assert_int_equal(idx_write(idx, failing_fn, &calls), -ECANCELED);
    assert_int_equal(calls, 1);
    struct idx_txn *t = begin(idx, false);
    struct idx_msg got;
    assert_int_equal(idx_msg_get_uid(t, "INBOX", 1, &got), -ENOENT);
    idx_abort(t);
    idx_close(idx);
}

/* Read-only opening (`mailsync status` beside a running sync) */

static bool exists(const char *dir, const char *rel)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    struct stat st;
    return lstat(path, &st) == 0;
}

static void test_readonly_no_index(void **state)
{
    struct fx *fx = *state;
    char *path = idx_path(fx->dir, "acct");
    char *want = xasprintf("%s/acct/index.mdb", fx->dir);
    assert_string_equal(path, want);
    free(path);

    /* No state directory at all: nothing is created, not even it. */
    char *state_dir = xasprintf("%s/nostate", fx->dir);
    struct idx *idx = (struct idx *)1;
    char *err = NULL;
    assert_int_equal(idx_open_readonly(state_dir, "acct", &idx, &err), -ENOENT);
    assert_null(idx);
    char *msg = xasprintf("no index at %s/nostate/acct/index.mdb", fx->dir);
    assert_string_equal(err, msg);
    free(msg);
    free(err);
    assert_false(exists(fx->dir, "nostate"));
    free(state_dir);

    /* An account directory without an index stays as it is. */
    char *acct_dir = xasprintf("%s/acct", fx->dir);
    assert_int_equal(mkdir(acct_dir, 0755), 0);
    assert_int_equal(idx_open_readonly(fx->dir, "acct", &idx, &err), -ENOENT);
    msg = xasprintf("no index at %s", want);
    assert_string_equal(err, msg);
    free(msg);
    free(err);
    assert_false(exists(fx->dir, "acct/index.mdb"));
    assert_false(exists(fx->dir, "acct/lock"));
    free(acct_dir);

    /* An environment that idx_open never set up (no meta database) is no
     * index either. */
    char *env_dir = xasprintf("%s/bare/index.mdb", fx->dir);
    assert_int_equal(mkdir_p(env_dir, 0700), 0);
    MDB_env *env;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_open(env, env_dir, 0, 0600), 0);
    mdb_env_close(env);
    assert_int_equal(idx_open_readonly(fx->dir, "bare", &idx, &err), -ENOENT);
    msg = xasprintf("index %s holds no data yet", env_dir);
    assert_string_equal(err, msg);
    free(msg);
    free(err);
    free(env_dir);

    /* An empty data file is one that a first idx_open is creating. */
    env_dir = xasprintf("%s/empty/index.mdb", fx->dir);
    assert_int_equal(mkdir_p(env_dir, 0700), 0);
    char *data = xasprintf("%s/data.mdb", env_dir);
    int fd = open(data, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(idx_open_readonly(fx->dir, "empty", &idx, &err), -ENOENT);
    msg = xasprintf("index %s holds no data yet", env_dir);
    assert_string_equal(err, msg);
    free(msg);
    free(err);
    assert_false(exists(fx->dir, "empty/index.mdb/lock.mdb"));
    free(data);
    free(env_dir);

    /* Account names are checked as idx_open checks them. */
    assert_int_equal(idx_open_readonly(fx->dir, "../x", &idx, &err), -EINVAL);
    assert_string_equal(err, "invalid account name '../x': must not contain '/'");
    free(err);
    free(want);
}

static void test_readonly_beside_writer(void **state)
{
    struct fx *fx = *state;
    struct idx *w = open_ok(fx, "acct");
    struct idx_txn *t = begin(w, true);
    struct idx_folder st = {.uidvalidity = 77,
                            .uidnext = 9,
                            .highestmodseq = 1ull << 40,
                            .last_full_sync = 1700000000,
                            .messages = 3};
    assert_int_equal(idx_folder_put(t, "INBOX", &st), 0);
    struct idx_msg m;
    make_msg(&m, 5, "1.lid.host", IDX_MSG_SYNCED, "");
    put_msg(w, t, "INBOX", &m);
    struct idx_pop p = {.first_seen = 1600000000, .size = 12, .flags = IDX_POP_DELIVERED};
    snprintf(p.uidl, sizeof(p.uidl), "u1");
    snprintf(p.lid, sizeof(p.lid), "2.lid.host");
    assert_int_equal(idx_pop_put(t, &p), 0);
    assert_int_equal(idx_meta_put(t, "k", "v1", 2), 0);
    commit(w, t);

    /* The writer holds the account lock; a reader opens all the same. */
    struct idx *ro = open_ro_ok(fx, "acct");
    struct idx_txn *r1 = begin(ro, false);
    struct idx_folder got;
    assert_int_equal(idx_folder_get(r1, "INBOX", &got), 0);
    assert_int_equal(got.uidvalidity, 77);
    assert_true(got.highestmodseq == 1ull << 40);
    assert_true(got.last_full_sync == 1700000000);
    assert_int_equal(idx_msg_count(r1, "INBOX"), 1);
    struct idx_pop gp;
    assert_int_equal(idx_pop_get(r1, "u1", &gp), 0);
    assert_string_equal(gp.lid, "2.lid.host");

    /* It cannot write. */
    struct idx_txn *wt = (struct idx_txn *)1;
    assert_int_equal(idx_begin(ro, true, &wt), -EROFS);
    assert_null(wt);
    char *msg = xasprintf("index %s/acct/index.mdb: opened read-only, cannot write", fx->dir);
    assert_string_equal(idx_error(ro), msg);
    free(msg);

    /* The writer commits while the reader's transaction is open: the reader
     * keeps its snapshot, a new read transaction sees the change. */
    t = begin(w, true);
    assert_int_equal(idx_folder_put(t, "Archive", &st), 0);
    assert_int_equal(idx_meta_put(t, "k", "v2", 2), 0);
    commit(w, t);
    char v[2];
    size_t len = 0;
    assert_int_equal(idx_meta_get(r1, "k", v, sizeof(v), &len), 0);
    assert_memory_equal(v, "v1", 2);
    assert_int_equal(idx_folder_get(r1, "Archive", &got), -ENOENT);
    struct idx_txn *r2 = begin(ro, false);
    assert_int_equal(idx_meta_get(r2, "k", v, sizeof(v), &len), 0);
    assert_memory_equal(v, "v2", 2);
    assert_int_equal(idx_folder_get(r2, "Archive", &got), 0);
    idx_abort(r1);
    idx_abort(r2);

    /* The reader holds no lock: once the writer is gone, another writer
     * gets the account while the reader is still open. */
    idx_close(w);
    w = open_ok(fx, "acct");

    /* The writer grows the map well past its initial size; the reader
     * adopts the new size on its next transaction. */
    size_t big = (size_t)900 << 10;
    char *val = xmalloc(big);
    for (int i = 0; i < 12; i++) {
        memset(val, 'a' + i, big);
        char key[16];
        snprintf(key, sizeof(key), "big%d", i);
        t = begin(w, true);
        int rc = idx_meta_put(t, key, val, big);
        if (rc == IDX_ERETRY) {
            t = begin(w, true);
            rc = idx_meta_put(t, key, val, big);
        }
        assert_int_equal(rc, 0);
        commit(w, t);
    }
    assert_true(idx_map_size(w) > INITIAL_MAP);
    r1 = begin(ro, false);
    len = 0;
    assert_int_equal(idx_meta_get(r1, "big11", val, big, &len), 0);
    assert_int_equal(len, big);
    assert_int_equal(val[0], 'a' + 11);
    assert_int_equal(val[big - 1], 'a' + 11);
    idx_abort(r1);
    assert_int_equal(idx_map_size(ro), idx_map_size(w));
    free(val);
    idx_close(ro);
    idx_close(w);
}

static void test_readonly_creates_nothing(void **state)
{
    struct fx *fx = *state;
    struct idx *w = open_ok(fx, "acct");
    idx_close(w);
    /* Loose modes and a missing lock file are left exactly as they are:
     * fixing them is idx_open's business, under the lock. */
    char path[512];
    snprintf(path, sizeof(path), "%s/acct/lock", fx->dir);
    assert_int_equal(unlink(path), 0);
    snprintf(path, sizeof(path), "%s/acct", fx->dir);
    assert_int_equal(chmod(path, 0750), 0);
    struct idx *ro = open_ro_ok(fx, "acct");
    struct idx_txn *t = begin(ro, false);
    struct idx_folder got;
    assert_int_equal(idx_folder_get(t, "INBOX", &got), -ENOENT);
    assert_int_equal(idx_msg_count(t, "INBOX"), 0);
    idx_abort(t);
    idx_close(ro);
    assert_false(exists(fx->dir, "acct/lock"));
    assert_int_equal(mode_of(fx->dir, "acct"), 0750);
}

static void test_readonly_schema(void **state)
{
    struct fx *fx = *state;
    struct idx *w = open_ok(fx, "acct");
    idx_close(w);
    set_schema(fx, "acct", IDX_SCHEMA_VERSION + 1);
    struct idx *idx = (struct idx *)1;
    char *err = NULL;
    assert_int_equal(idx_open_readonly(fx->dir, "acct", &idx, &err), -EPROTO);
    assert_null(idx);
    /* The same words as idx_open. */
    char *rw_err = NULL;
    assert_int_equal(idx_open(fx->dir, "acct", &idx, &rw_err), -EPROTO);
    assert_string_equal(err, rw_err);
    assert_non_null(strstr(err, "was written by a newer mailsync"));
    free(err);
    free(rw_err);

    struct raw r;
    raw_open(fx, "acct", &r);
    raw_put(&r, "meta", "schema_version", 14, "\x01\x00", 2);
    raw_close(&r);
    assert_int_equal(idx_open_readonly(fx->dir, "acct", &idx, &err), -EBADMSG);
    char *msg = xasprintf("index %s/acct/index.mdb: corrupt schema version record", fx->dir);
    assert_string_equal(err, msg);
    free(msg);
    free(err);

    set_schema(fx, "acct", IDX_SCHEMA_VERSION);
    idx = open_ro_ok(fx, "acct");
    idx_close(idx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty_walk_and_two_readers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_folder_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_folder_mailboxid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_folder_long_names_and_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_synced_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_appending_to_synced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_lid_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_uid_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_foreach_order_and_count, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_foreach_while_deleting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_folder_delete_only_that_folder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pop_roundtrip_and_foreach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pop_walk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pop_cursor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persistence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_account_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_same_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_held_by_other_program, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_forked_child, setup, teardown),
        cmocka_unit_test_setup_teardown(test_schema_newer_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_growth_many_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_full_midway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_full_with_reader_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_grows_ahead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_drop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyword_sets_shared_and_cleaned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyword_sets_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_count_and_walk_model, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_walk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_walk_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_from_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_per_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_no_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_beside_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_creates_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_schema, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
