/* LINK: ms_sync ms_store ms_core */
/* Tests for the pure sync planner: the three-way flag and keyword merge as a
 * table, new mail both ways, deletions both ways (complete and delta server
 * views, each on_local_delete mode), deletion/edit races that copy a message
 * back, the mass-deletion guard and --force, max_size/max_age skips, UID
 * STORE grouping, keywords the local side cannot hold, the dry-run
 * printout, taking an upload out of a plan, and matching messages without
 * UIDs (Message-ID + size, then header hash). Views are written as short
 * strings: "uid:FLAGS:kw,kw" for the server, "lid:FLAGS:kw" for the local
 * side, "uid:lid:FLAGS:kw" for the base. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "store/maildir.h"
#include "sync/plan.h"

static unsigned letters(const char *s)
{
    unsigned f = 0;
    for (; *s != '\0'; s++) {
        switch (*s) {
        case 'D':
            f |= MD_FLAG_DRAFT;
            break;
        case 'F':
            f |= MD_FLAG_FLAGGED;
            break;
        case 'P':
            f |= MD_FLAG_PASSED;
            break;
        case 'R':
            f |= MD_FLAG_REPLIED;
            break;
        case 'S':
            f |= MD_FLAG_SEEN;
            break;
        case 'T':
            f |= MD_FLAG_TRASHED;
            break;
        default:
            fail_msg("bad flag letter %c", *s);
        }
    }
    return f;
}

/* Splits "a:b:c" into at most 4 fields (missing ones are ""). */
static void fields(const char *spec, char out[4][64])
{
    memset(out, 0, 4 * 64);
    size_t k = 0, j = 0;
    for (const char *p = spec; *p != '\0'; p++) {
        if (*p == ':' && k < 3) {
            k++;
            j = 0;
            continue;
        }
        if (j < 63) {
            out[k][j++] = *p;
        }
    }
}

/* Keyword list "a,b" -> array of pointers into storage. */
struct kwlist {
    char buf[64];
    const char *v[8];
    size_t n;
};

static void kwsplit(const char *s, struct kwlist *k)
{
    snprintf(k->buf, sizeof(k->buf), "%s", s);
    k->n = 0;
    char *save = NULL;
    for (char *t = strtok_r(k->buf, ",", &save); t != NULL && k->n < 8;
         t = strtok_r(NULL, ",", &save)) {
        k->v[k->n++] = t;
    }
}

#define MAXM 64

struct fx {
    struct plan_server_msg srv[MAXM];
    struct kwlist srvkw[MAXM];
    size_t nsrv;
    uint32_t van[MAXM];
    size_t nvan;
    struct plan_local_msg loc[MAXM];
    struct kwlist lockw[MAXM];
    char lids[MAXM][64];
    size_t nloc;
    struct idx_msg base[MAXM];
    size_t nbase;
    struct plan_input in;
};

static void fx_init(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    f->in.server.complete = true;
    f->in.on_local_delete = PLAN_LOCAL_DELETE_EXPUNGE;
    f->in.max_delete_ratio = 0.5;
    f->in.folder = "INBOX";
    f->in.account = "work";
}

static void srv(struct fx *f, const char *spec)
{
    char fl[4][64];
    fields(spec, fl);
    struct plan_server_msg *m = &f->srv[f->nsrv];
    kwsplit(fl[2], &f->srvkw[f->nsrv]);
    m->uid = (uint32_t)strtoul(fl[0], NULL, 10);
    m->flags = letters(fl[1]);
    m->kw = f->srvkw[f->nsrv].v;
    m->nkw = f->srvkw[f->nsrv].n;
    m->size = 1000;
    f->nsrv++;
}

static void loc(struct fx *f, const char *spec)
{
    char fl[4][64];
    fields(spec, fl);
    struct plan_local_msg *m = &f->loc[f->nloc];
    snprintf(f->lids[f->nloc], sizeof(f->lids[0]), "%s", fl[0]);
    kwsplit(fl[2], &f->lockw[f->nloc]);
    m->lid = f->lids[f->nloc];
    m->flags = letters(fl[1]);
    m->kw = f->lockw[f->nloc].v;
    m->nkw = f->lockw[f->nloc].n;
    f->nloc++;
}

static void base(struct fx *f, const char *spec)
{
    char fl[4][64];
    fields(spec, fl);
    struct idx_msg *m = &f->base[f->nbase++];
    memset(m, 0, sizeof(*m));
    m->uid = (uint32_t)strtoul(fl[0], NULL, 10);
    m->state = IDX_MSG_SYNCED;
    snprintf(m->lid, sizeof(m->lid), "%s", fl[1]);
    m->flags = (uint8_t)letters(fl[2]);
    for (char *p = fl[3]; *p != '\0'; p++) {
        if (*p == ',') {
            *p = ' ';
        }
    }
    snprintf(m->keywords, sizeof(m->keywords), "%s", fl[3]);
}

/* A message on all three sides with the same flags. */
static void synced(struct fx *f, uint32_t uid, const char *flags)
{
    char s[64];
    snprintf(s, sizeof(s), "%u:%s", (unsigned)uid, flags);
    srv(f, s);
    snprintf(s, sizeof(s), "l%u:%s", (unsigned)uid, flags);
    loc(f, s);
    snprintf(s, sizeof(s), "%u:l%u:%s", (unsigned)uid, (unsigned)uid, flags);
    base(f, s);
}

static struct plan *build(struct fx *f)
{
    f->in.server.msgs = f->srv;
    f->in.server.nmsgs = f->nsrv;
    f->in.server.vanished = f->van;
    f->in.server.nvanished = f->nvan;
    f->in.local.msgs = f->loc;
    f->in.local.nmsgs = f->nloc;
    /* The base as the engine holds it: compact rows, built from the
     * table's records (the plan copies what it keeps). */
    struct idx_rows rows = {0};
    for (size_t i = 0; i < f->nbase; i++) {
        idx_rows_add(&rows, &f->base[i]);
    }
    f->in.base = &rows;
    struct plan *p = plan_build(&f->in);
    f->in.base = NULL;
    idx_rows_free(&rows);
    return p;
}

static const char *kwstr(const struct plan_kw *kw)
{
    static char buf[256];
    assert_true(plan_kw_format(kw, buf, sizeof(buf)));
    return buf;
}

static void test_initial_download(void **state)
{
    struct fx f;
    fx_init(&f);
    srv(&f, "3:S:");
    srv(&f, "1::");
    srv(&f, "2:FR:$label1,Work");
    struct plan *p = build(&f);
    assert_int_equal(p->ndownloads, 3);
    /* Downloads follow the server listing's order after sorting by UID. */
    assert_int_equal(p->downloads[0].uid, 1);
    assert_int_equal(p->downloads[0].flags, 0);
    assert_int_equal(p->downloads[1].uid, 2);
    assert_int_equal(p->downloads[1].flags, MD_FLAG_FLAGGED | MD_FLAG_REPLIED);
    assert_string_equal(kwstr(&p->downloads[1].kw), "$label1 Work");
    assert_int_equal(p->downloads[2].flags, MD_FLAG_SEEN);
    assert_false(p->downloads[2].recopy);
    assert_int_equal(p->nuploads, 0);
    assert_false(plan_empty(p));
    plan_free(p);
}

static void test_new_local_upload(void **state)
{
    struct fx f;
    fx_init(&f);
    synced(&f, 1, "S");
    loc(&f, "new1:FS:todo");
    loc(&f, "new2::");
    struct plan *p = build(&f);
    assert_int_equal(p->ndownloads, 0);
    assert_int_equal(p->nuploads, 2);
    assert_string_equal(p->uploads[0].lid, "new1");
    assert_int_equal(p->uploads[0].flags, MD_FLAG_FLAGGED | MD_FLAG_SEEN);
    assert_string_equal(kwstr(&p->uploads[0].kw), "todo");
    assert_int_equal(p->uploads[0].old_uid, 0);
    assert_string_equal(p->uploads[1].lid, "new2");
    assert_int_equal(p->nstores + p->nlocal_flags + p->nupdates + p->ndrops, 0);
    plan_free(p);
}

static void test_unchanged_is_empty(void **state)
{
    struct fx f;
    fx_init(&f);
    for (uint32_t u = 1; u <= 30; u++) {
        synced(&f, u, u % 2 ? "S" : "FRS");
    }
    struct plan *p = build(&f);
    assert_true(plan_empty(p));
    assert_null(p->error);
    plan_free(p);

    /* The same as a delta that mentions nothing. */
    fx_init(&f);
    for (uint32_t u = 1; u <= 5; u++) {
        char s[64];
        snprintf(s, sizeof(s), "%u:l%u:S", (unsigned)u, (unsigned)u);
        base(&f, s);
        snprintf(s, sizeof(s), "l%u:S", (unsigned)u);
        loc(&f, s);
    }
    f.in.server.complete = false;
    p = build(&f);
    assert_true(plan_empty(p));
    plan_free(p);
}

/* The merge table: base, local, server -> result, and which sides change. */
static void test_merge_table(void **state)
{
    static const struct {
        const char *b, *l, *s, *want;
        bool local_change, server_change;
    } t[] = {
        {"", "", "", "", false, false},
        {"", "S", "", "S", false, true},      /* read locally */
        {"", "", "S", "S", true, false},      /* read elsewhere */
        {"S", "", "S", "", false, true},      /* marked unread locally */
        {"S", "S", "", "", true, false},      /* marked unread on the server */
        {"S", "", "FS", "F", true, true},     /* different flags on each side */
        {"", "S", "S", "S", false, false},    /* the same change on both sides */
        {"F", "S", "", "S", false, true},     /* F removed on both, S added locally */
        {"S", "FS", "RS", "FRS", true, true}, /* different flags added on each side */
        {"", "DFPRST", "", "DFPRST", false, true},
        {"DFPRST", "DFPRST", "", "", true, false},
        {"R", "", "RS", "S", true, true}, /* per flag: R removed here, S added there */
    };
    for (size_t i = 0; i < ARRAY_SIZE(t); i++) {
        struct fx f;
        fx_init(&f);
        char s[64];
        snprintf(s, sizeof(s), "7:m7:%s", t[i].b);
        base(&f, s);
        snprintf(s, sizeof(s), "m7:%s", t[i].l);
        loc(&f, s);
        snprintf(s, sizeof(s), "7:%s", t[i].s);
        srv(&f, s);
        struct plan *p = build(&f);
        unsigned want = letters(t[i].want);
        if (t[i].local_change) {
            assert_int_equal(p->nlocal_flags, 1);
            assert_int_equal(p->local_flags[0].flags, want);
            assert_string_equal(p->local_flags[0].lid, "m7");
            assert_int_equal(p->local_flags[0].uid, 7);
        } else {
            assert_int_equal(p->nlocal_flags, 0);
        }
        if (t[i].server_change) {
            unsigned srvf = letters(t[i].s);
            assert_true(p->nstores >= 1);
            for (size_t j = 0; j < p->nstores; j++) {
                assert_int_equal(p->stores[j].nuids, 1);
                assert_int_equal(p->stores[j].uids[0], 7);
                if (p->stores[j].op == '+') {
                    srvf |= p->stores[j].flags;
                } else {
                    srvf &= ~p->stores[j].flags;
                }
            }
            assert_int_equal(srvf, want);
        } else {
            assert_int_equal(p->nstores, 0);
        }
        if (want != letters(t[i].b)) {
            assert_int_equal(p->nupdates, 1);
            assert_int_equal(p->updates[0].flags, want);
            assert_int_equal(p->updates[0].uid, 7);
            assert_string_equal(p->updates[0].lid, "m7");
        } else {
            assert_int_equal(p->nupdates, 0);
        }
        plan_free(p);
    }
}

static void test_keyword_merge(void **state)
{
    struct fx f;
    fx_init(&f);
    base(&f, "1:a:S:old,both");
    loc(&f, "a:S:both,mine");       /* removed old, added mine */
    srv(&f, "1:S:both,old,theirs"); /* added theirs */
    struct plan *p = build(&f);
    assert_int_equal(p->nlocal_flags, 1);
    assert_string_equal(kwstr(&p->local_flags[0].kw), "both mine theirs");
    assert_int_equal(p->nstores, 2);
    for (size_t i = 0; i < p->nstores; i++) {
        assert_int_equal(p->stores[i].flags, 0);
        if (p->stores[i].op == '+') {
            assert_string_equal(kwstr(&p->stores[i].kw), "mine");
        } else {
            assert_int_equal(p->stores[i].op, '-');
            assert_string_equal(kwstr(&p->stores[i].kw), "old");
        }
    }
    assert_int_equal(p->nupdates, 1);
    assert_string_equal(p->updates[0].keywords, "both mine theirs");
    plan_free(p);
}

static bool only_short(const char *name, void *arg)
{
    (void)arg;
    return strlen(name) <= 3;
}

/* A keyword the local side cannot hold is never taken as removed locally. */
static void test_keyword_not_representable(void **state)
{
    struct fx f;
    fx_init(&f);
    f.in.local.kw_ok = only_short;
    base(&f, "1:a::longname");
    loc(&f, "a:S:");
    srv(&f, "1::longname,new");
    struct plan *p = build(&f);
    assert_int_equal(p->nstores, 1);
    assert_int_equal(p->stores[0].op, '+');
    assert_int_equal(p->stores[0].flags, MD_FLAG_SEEN);
    assert_int_equal(p->stores[0].kw.n, 0);
    assert_int_equal(p->nupdates, 1);
    assert_string_equal(p->updates[0].keywords, "longname new");
    plan_free(p);

    /* Deleted on the server while the local copy only "lacks" such a
     * keyword: not a local change, so the local copy goes. */
    fx_init(&f);
    f.in.local.kw_ok = only_short;
    base(&f, "1:a:S:longname");
    loc(&f, "a:S:");
    p = build(&f);
    assert_int_equal(p->nlocal_deletes, 1);
    assert_int_equal(p->nuploads, 0);
    plan_free(p);
}

static void test_server_deletion(void **state)
{
    /* Complete view: gone from the listing. */
    struct fx f;
    fx_init(&f);
    synced(&f, 1, "S");
    base(&f, "2:l2:S");
    loc(&f, "l2:S");
    struct plan *p = build(&f);
    assert_int_equal(p->nlocal_deletes, 1);
    assert_string_equal(p->local_deletes[0].lid, "l2");
    assert_int_equal(p->local_deletes[0].uid, 2);
    assert_int_equal(p->nserver_deletes, 0);
    assert_int_equal(p->ndrops, 0);
    plan_free(p);

    /* Delta view: only what VANISHED names is gone. */
    fx_init(&f);
    f.in.server.complete = false;
    base(&f, "1:l1:S");
    loc(&f, "l1:S");
    base(&f, "2:l2:");
    loc(&f, "l2:");
    f.van[f.nvan++] = 2;
    f.van[f.nvan++] = 99; /* never known: ignored */
    p = build(&f);
    assert_int_equal(p->nlocal_deletes, 1);
    assert_int_equal(p->local_deletes[0].uid, 2);
    assert_int_equal(p->ndownloads + p->nuploads + p->nstores + p->nlocal_flags, 0);
    plan_free(p);
}

static void test_local_deletion_modes(void **state)
{
    static const enum plan_local_delete modes[] = {PLAN_LOCAL_DELETE_EXPUNGE,
                                                   PLAN_LOCAL_DELETE_TRASH, PLAN_LOCAL_DELETE_FLAG};
    for (size_t i = 0; i < ARRAY_SIZE(modes); i++) {
        struct fx f;
        fx_init(&f);
        f.in.on_local_delete = modes[i];
        synced(&f, 1, "S");
        base(&f, "2:l2:S");
        srv(&f, "2:S");
        struct plan *p = build(&f);
        assert_int_equal(p->nserver_deletes, 1);
        assert_int_equal(p->server_deletes[0].uid, 2);
        assert_string_equal(p->server_deletes[0].lid, "l2");
        assert_int_equal(p->nlocal_deletes + p->ndownloads + p->ndrops, 0);
        plan_free(p);
    }
    /* Flag mode, already \Deleted on the server: nothing more to do, and
     * the message is not downloaded again. */
    struct fx f;
    fx_init(&f);
    f.in.on_local_delete = PLAN_LOCAL_DELETE_FLAG;
    base(&f, "2:l2:ST");
    srv(&f, "2:ST");
    struct plan *p = build(&f);
    assert_true(plan_empty(p));
    plan_free(p);
}

/* What the engine relies on when a trash folder is missing (it then plans
 * with on_local_delete flag): a message it flagged \Deleted keeps its
 * record marked T. Planned as 'trash', that record is a deletion to make
 * (the move into a trash folder, once there is one); planned as 'flag', it
 * is done, so it is neither deleted nor counted again on later runs. */
static void test_flagged_deletion_is_done_in_flag_mode_only(void **state)
{
    static const struct {
        enum plan_local_delete mode;
        size_t deletes;
    } rows[] = {
        {PLAN_LOCAL_DELETE_TRASH, 1},
        {PLAN_LOCAL_DELETE_EXPUNGE, 1},
        {PLAN_LOCAL_DELETE_FLAG, 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
        struct fx f;
        fx_init(&f);
        f.in.on_local_delete = rows[i].mode;
        synced(&f, 1, "S");
        base(&f, "2:l2:ST");
        srv(&f, "2:ST");
        struct plan *p = build(&f);
        assert_int_equal(p->nserver_deletes, rows[i].deletes);
        assert_int_equal(p->nuploads + p->ndownloads + p->nstores + p->nlocal_flags, 0);
        plan_free(p);
    }
}

/* plan_drop_upload takes one upload out (an empty file the engine cannot
 * upload) and keeps the others in order; an index past the end changes
 * nothing. */
static void test_drop_upload(void **state)
{
    struct fx f;
    fx_init(&f);
    loc(&f, "a:S:todo");
    loc(&f, "b::");
    loc(&f, "c:F:");
    struct plan *p = build(&f);
    assert_int_equal(p->nuploads, 3);
    plan_drop_upload(p, 1);
    assert_int_equal(p->nuploads, 2);
    assert_string_equal(p->uploads[0].lid, "a");
    assert_string_equal(kwstr(&p->uploads[0].kw), "todo");
    assert_string_equal(p->uploads[1].lid, "c");
    assert_int_equal(p->uploads[1].flags, MD_FLAG_FLAGGED);
    plan_drop_upload(p, 2);
    assert_int_equal(p->nuploads, 2);
    plan_drop_upload(p, 1);
    plan_drop_upload(p, 0);
    assert_int_equal(p->nuploads, 0);
    assert_true(plan_empty(p));
    plan_free(p);
}

static void test_deleted_both_sides(void **state)
{
    struct fx f;
    fx_init(&f);
    base(&f, "5:l5:S");
    struct plan *p = build(&f);
    assert_int_equal(p->ndrops, 1);
    assert_int_equal(p->drops[0], 5);
    assert_int_equal(p->nlocal_deletes + p->nserver_deletes, 0);
    plan_free(p);
}

/* A deletion on one side races an edit on the other: the edit wins and the
 * message is copied back (no loss). */
static void test_delete_edit_race(void **state)
{
    struct fx f;
    fx_init(&f);
    base(&f, "3:l3:");
    loc(&f, "l3:F"); /* flagged here, expunged there */
    struct plan *p = build(&f);
    assert_int_equal(p->nlocal_deletes, 0);
    assert_int_equal(p->nuploads, 1);
    assert_string_equal(p->uploads[0].lid, "l3");
    assert_int_equal(p->uploads[0].flags, MD_FLAG_FLAGGED);
    assert_int_equal(p->uploads[0].old_uid, 3);
    plan_free(p);

    fx_init(&f);
    base(&f, "3:l3:");
    srv(&f, "3:S"); /* read there, deleted here */
    p = build(&f);
    assert_int_equal(p->nserver_deletes, 0);
    assert_int_equal(p->ndownloads, 1);
    assert_int_equal(p->downloads[0].uid, 3);
    assert_int_equal(p->downloads[0].flags, MD_FLAG_SEEN);
    assert_true(p->downloads[0].recopy);
    plan_free(p);
}

static void test_guard(void **state)
{
    /* 30 messages, 16 gone from the server: over 50%. */
    struct fx f;
    fx_init(&f);
    for (uint32_t u = 1; u <= 30; u++) {
        char s[64];
        snprintf(s, sizeof(s), "%u:l%u:S", (unsigned)u, (unsigned)u);
        base(&f, s);
        snprintf(s, sizeof(s), "l%u:S", (unsigned)u);
        loc(&f, s);
        if (u > 16) {
            snprintf(s, sizeof(s), "%u:S", (unsigned)u);
            srv(&f, s);
        }
    }
    loc(&f, "fresh:"); /* other work still planned */
    struct plan *p = build(&f);
    assert_non_null(p->error);
    assert_non_null(strstr(p->error, "folder 'INBOX'"));
    assert_non_null(strstr(p->error, "mailsync sync --force work"));
    assert_int_equal(p->guard_local, 16);
    assert_int_equal(p->nlocal_deletes + p->nserver_deletes, 0);
    assert_int_equal(p->nuploads, 1);
    plan_free(p);

    f.in.force = true;
    p = build(&f);
    assert_null(p->error);
    assert_int_equal(p->nlocal_deletes, 16);
    plan_free(p);

    /* Exactly half is allowed; the other side is guarded too. */
    fx_init(&f);
    for (uint32_t u = 1; u <= 30; u++) {
        char s[64];
        snprintf(s, sizeof(s), "%u:l%u:", (unsigned)u, (unsigned)u);
        base(&f, s);
        snprintf(s, sizeof(s), "%u:", (unsigned)u);
        srv(&f, s);
        if (u > 15) {
            snprintf(s, sizeof(s), "l%u:", (unsigned)u);
            loc(&f, s);
        }
    }
    p = build(&f);
    assert_null(p->error);
    assert_int_equal(p->nserver_deletes, 15);
    plan_free(p);
    f.in.max_delete_ratio = 0.4;
    p = build(&f);
    assert_non_null(p->error);
    assert_int_equal(p->guard_server, 15);
    plan_free(p);

    /* Small folders are never guarded. */
    fx_init(&f);
    for (uint32_t u = 1; u <= PLAN_GUARD_MIN; u++) {
        char s[64];
        snprintf(s, sizeof(s), "%u:l%u:", (unsigned)u, (unsigned)u);
        base(&f, s);
        snprintf(s, sizeof(s), "l%u:", (unsigned)u);
        loc(&f, s);
    }
    p = build(&f);
    assert_null(p->error);
    assert_int_equal(p->nlocal_deletes, PLAN_GUARD_MIN);
    plan_free(p);
}

/* A partial base (the rows a QRESYNC delta names, for a quiet Maildir):
 * the guard measures against the folder's total (nbase_total), not the
 * rows handed in. 25 rows named, all vanished: of a folder of 1,000 that
 * is 2.5% and goes through; of a folder of 40 it is 62.5% and trips, as it
 * would with the whole base; without the total, 25 of 25 trips too. */
static void test_guard_partial_base(void **state)
{
    (void)state;
    static const struct {
        size_t total;
        bool tripped;
    } rows[] = {{1000, false}, {40, true}, {0, true}, {10, true}};
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        struct fx f;
        fx_init(&f);
        f.in.server.complete = false;
        for (uint32_t u = 1; u <= 25; u++) {
            char s[64];
            snprintf(s, sizeof(s), "%u:l%u:S", (unsigned)u, (unsigned)u);
            base(&f, s);
            snprintf(s, sizeof(s), "l%u:S", (unsigned)u);
            loc(&f, s);
            f.van[f.nvan++] = u;
        }
        f.in.nbase_total = rows[r].total;
        struct plan *p = build(&f);
        if (rows[r].tripped) {
            assert_non_null(p->error);
            assert_int_equal(p->guard_local, 25);
            assert_int_equal(p->nlocal_deletes, 0);
            char of[64];
            snprintf(of, sizeof(of), "25 of %zu messages", rows[r].total > 25 ? rows[r].total : 25);
            assert_non_null(strstr(p->error, of));
        } else {
            assert_null(p->error);
            assert_int_equal(p->nlocal_deletes, 25);
        }
        plan_free(p);
    }
}

/* Moves do not trip the guard (table): 30 messages in sync, 20 of them
 * moved to another folder. Locally moved (gone locally, still on the
 * server, listed in moved): no server deletion at all, no error. Moved on
 * the server by another client (gone there, file still here, with a
 * Message-ID hash): they cannot be told from a mass expunge until paired,
 * so the guard counts them and nothing is parked. The same 20 as plain
 * deletions trip it too. */
static void test_guard_ignores_moves(void **state)
{
    (void)state;
    static const struct {
        bool local_side; /* the 20 are gone locally (else: gone on the server) */
        bool as_moves;   /* listed in moved / parked */
        size_t want_ldel, want_sdel, want_orphans;
        bool want_error;
    } rows[] = {
        {true, true, 0, 0, 0, false},
        {true, false, 0, 0, 0, true},
        {false, true, 0, 0, 0, true}, /* a mass expunge looks the same: guarded */
        {false, false, 0, 0, 0, true},
    };
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        struct fx f;
        fx_init(&f);
        uint32_t moved[32];
        size_t nmoved = 0;
        for (uint32_t u = 1; u <= 30; u++) {
            char s[64];
            snprintf(s, sizeof(s), "%u:l%u:S", (unsigned)u, (unsigned)u);
            base(&f, s);
            f.base[f.nbase - 1].msgid_hash[0] = (uint8_t)u;
            bool gone = u <= 20;
            if (!gone || !rows[r].local_side) {
                snprintf(s, sizeof(s), "l%u:S", (unsigned)u);
                loc(&f, s);
            }
            if (!gone || rows[r].local_side) {
                snprintf(s, sizeof(s), "%u:S", (unsigned)u);
                srv(&f, s);
            }
            if (gone) {
                moved[nmoved++] = u;
            }
        }
        if (rows[r].as_moves && rows[r].local_side) {
            f.in.moved = moved;
            f.in.nmoved = nmoved;
        }
        f.in.park_orphans = rows[r].as_moves && !rows[r].local_side;
        struct plan *p = build(&f);
        assert_int_equal(p->error != NULL, rows[r].want_error);
        assert_int_equal(p->nlocal_deletes, rows[r].want_ldel);
        assert_int_equal(p->nserver_deletes, rows[r].want_sdel);
        assert_int_equal(p->norphans, rows[r].want_orphans);
        assert_int_equal(p->nuploads + p->ndownloads, 0);
        plan_free(p);
    }
}

/* A record listed in moved (another job moves the message) while the
 * server still has its UID: nothing happens to it, even with the server's
 * flags changed. Gone from the server too (a move run killed after its
 * MOVE, or another client expunged the original): dropped, as any message
 * gone from both sides, never left for a later run to delete on the
 * server. Complete listing and delta (VANISHED) alike. */
static void test_moved_gone_from_server(void **state)
{
    (void)state;
    for (int delta = 0; delta <= 1; delta++) {
        struct fx f;
        fx_init(&f);
        f.in.server.complete = !delta;
        synced(&f, 1, "S");
        base(&f, "2:l2:"); /* moved, still on the server, flagged there */
        srv(&f, "2:F");
        base(&f, "3:l3:S"); /* moved, gone from the server */
        if (delta) {
            f.van[f.nvan++] = 3;
        }
        base(&f, "4:l4:"); /* moved, not in the delta: still there */
        if (!delta) {
            srv(&f, "4:");
        }
        static const uint32_t moved[] = {2, 3, 4};
        f.in.moved = moved;
        f.in.nmoved = 3;
        struct plan *p = build(&f);
        assert_int_equal(p->ndrops, 1);
        assert_int_equal(p->drops[0], 3);
        assert_int_equal(p->nserver_deletes + p->nlocal_deletes, 0);
        assert_int_equal(p->ndownloads + p->nuploads + p->nstores + p->nlocal_flags, 0);
        assert_null(p->error);
        plan_free(p);
    }
}

/* Orphans: a record without a Message-ID hash is deleted as before; one
 * edited locally is parked with changed set (not copied back); a parked
 * record (IDX_MSG_ORPHAN) is listed again while its file stays and
 * dropped once it is gone; and its file is never taken for a new upload. */
static void test_orphans(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f);
    f.in.park_orphans = true;
    base(&f, "1:a:S");
    loc(&f, "a:S"); /* no hash: deleted locally */
    base(&f, "2:b:S");
    f.base[1].msgid_hash[3] = 7;
    loc(&f, "b:FS"); /* flagged here since */
    base(&f, "3:c:");
    f.base[2].msgid_hash[3] = 8;
    f.base[2].state = IDX_MSG_ORPHAN;
    loc(&f, "c:");
    base(&f, "4:d:");
    f.base[3].msgid_hash[3] = 9;
    f.base[3].state = IDX_MSG_ORPHAN; /* its file is gone */
    struct plan *p = build(&f);
    assert_null(p->error);
    assert_int_equal(p->nlocal_deletes, 1);
    assert_string_equal(p->local_deletes[0].lid, "a");
    assert_int_equal(p->norphans, 2);
    assert_string_equal(p->orphans[0].lid, "b");
    assert_true(p->orphans[0].changed);
    assert_false(p->orphans[0].parked);
    assert_string_equal(p->orphans[1].lid, "c");
    assert_false(p->orphans[1].changed);
    assert_true(p->orphans[1].parked);
    assert_int_equal(p->ndrops, 1);
    assert_int_equal(p->drops[0], 4);
    assert_int_equal(p->nuploads, 0);
    assert_false(plan_empty(p));
    plan_free(p);

    /* Without park_orphans (a one-folder account): as before. */
    f.in.park_orphans = false;
    f.base[2].state = IDX_MSG_SYNCED;
    f.base[3].state = IDX_MSG_SYNCED;
    p = build(&f);
    assert_int_equal(p->norphans, 0);
    assert_int_equal(p->nlocal_deletes, 2); /* a, c */
    assert_int_equal(p->nuploads, 1);       /* b, edited: copied back */
    plan_free(p);
}

static void test_skips(void **state)
{
    struct fx f;
    fx_init(&f);
    srv(&f, "1:");
    srv(&f, "2:");
    srv(&f, "3:");
    f.srv[0].size = 5000;                          /* too big */
    f.srv[1].internaldate = 10000000 - 40 * 86400; /* too old */
    f.srv[2].internaldate = 10000000 - 2 * 86400;
    f.in.max_size = 4096;
    f.in.max_age_days = 30;
    f.in.now = 10000000;
    struct plan *p = build(&f);
    assert_int_equal(p->ndownloads, 1);
    assert_int_equal(p->downloads[0].uid, 3);
    assert_int_equal(p->nskips, 2);
    assert_int_equal(p->skips[0].uid, 1);
    assert_false(p->skips[0].too_old);
    assert_int_equal(p->skips[1].uid, 2);
    assert_true(p->skips[1].too_old);
    plan_free(p);
}

static void test_store_grouping(void **state)
{
    struct fx f;
    fx_init(&f);
    for (uint32_t u = 10; u >= 1; u--) {
        char s[64];
        snprintf(s, sizeof(s), "%u:l%u:", (unsigned)u, (unsigned)u);
        base(&f, s);
        snprintf(s, sizeof(s), "%u:", (unsigned)u);
        srv(&f, s);
        /* Odd ones read locally, even ones flagged. */
        snprintf(s, sizeof(s), "l%u:%s", (unsigned)u, u % 2 ? "S" : "F");
        loc(&f, s);
    }
    struct plan *p = build(&f);
    assert_int_equal(p->nstores, 2);
    for (size_t i = 0; i < 2; i++) {
        const struct plan_store *st = &p->stores[i];
        assert_int_equal(st->op, '+');
        assert_int_equal(st->nuids, 5);
        uint32_t first = st->flags == MD_FLAG_SEEN ? 1 : 2;
        for (size_t j = 0; j < 5; j++) {
            assert_int_equal(st->uids[j], first + 2 * j);
        }
    }
    assert_int_equal(p->nupdates, 10);
    plan_free(p);
}

static void test_kw_helpers(void **state)
{
    struct plan_kw kw;
    plan_kw_parse("zeta  alpha beta alpha", &kw);
    assert_int_equal(kw.n, 3);
    assert_true(plan_kw_has(&kw, "beta"));
    assert_false(plan_kw_has(&kw, "gamma"));
    char buf[32];
    assert_true(plan_kw_format(&kw, buf, sizeof(buf)));
    assert_string_equal(buf, "alpha beta zeta");
    assert_false(plan_kw_format(&kw, buf, 10));
    plan_kw_free(&kw);
    plan_kw_parse("", &kw);
    assert_int_equal(kw.n, 0);
    assert_true(plan_kw_format(&kw, buf, sizeof(buf)));
    assert_string_equal(buf, "");
    char fl[8];
    plan_flag_letters(MD_FLAGS_ALL, fl);
    assert_string_equal(fl, "DFPRST");
    plan_flag_letters(MD_FLAG_SEEN | MD_FLAG_DRAFT, fl);
    assert_string_equal(fl, "DS");
}

static void test_print(void **state)
{
    struct fx f;
    fx_init(&f);
    srv(&f, "4:S:");
    loc(&f, "up1:F:");
    base(&f, "2:l2:");
    loc(&f, "l2:");
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    struct plan *p = build(&f);
    plan_print(p, "Lists/dev", fp);
    fclose(fp);
    assert_non_null(strstr(buf, "Lists/dev: download uid 4 (1000 bytes) flags 'S'\n"));
    assert_non_null(strstr(buf, "Lists/dev: upload up1 flags 'F'\n"));
    assert_non_null(strstr(buf, "Lists/dev: delete local l2 (uid 2 gone from the server)\n"));
    free(buf);
    plan_free(p);
}

/* ---- matching without UIDs ---- */

static void mset(struct plan_match *m, size_t ix, const char *msgid, uint64_t size,
                 const uint8_t *hh)
{
    memset(m, 0, sizeof(*m));
    m->msgid = msgid;
    m->size = size;
    m->hh = hh;
    m->ix = ix;
    m->pair = -1;
}

/* The partner of the candidate with this ix, or -2 when ix is absent. */
static long partner(const struct plan_match *v, size_t n, size_t ix)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i].ix == ix) {
            return v[i].pair;
        }
    }
    return -2;
}

static bool needs_hh(const struct plan_match *v, size_t n, size_t ix)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i].ix == ix) {
            return v[i].need_hh;
        }
    }
    return false;
}

static void test_match_by_message_id(void **state)
{
    static const uint8_t h1[16] = {1}, h2[16] = {2}, h3[16] = {3};
    struct plan_match s[7], l[7];
    /* Server: unique ids <a> <b>; <c> twice with one size; one without id;
     * <d> whose size differs locally; <e> only on the server. */
    mset(&s[0], 10, "<a>", 100, NULL);
    mset(&s[1], 11, "<b>", 200, NULL);
    mset(&s[2], 12, "<c>", 300, NULL);
    mset(&s[3], 13, "<c>", 300, NULL);
    mset(&s[4], 14, NULL, 400, NULL);
    mset(&s[5], 15, "<d>", 500, NULL);
    mset(&s[6], 16, "<e>", 600, NULL);
    /* Local: the same, listed in another order; <c> once; two without id
     * of the same size; <d> one byte longer. */
    mset(&l[0], 0, "<b>", 200, h1);
    mset(&l[1], 1, "<a>", 100, h2);
    mset(&l[2], 2, "<c>", 300, h3);
    mset(&l[3], 3, NULL, 400, h1);
    mset(&l[4], 4, NULL, 400, h2);
    mset(&l[5], 5, "<d>", 501, h3);
    mset(&l[6], 6, "<f>", 700, h3);
    plan_match_ids(s, 7, l, 7);
    assert_int_equal(partner(s, 7, 10), 1);
    assert_int_equal(partner(s, 7, 11), 0);
    assert_int_equal(partner(l, 7, 0), 11);
    assert_int_equal(partner(l, 7, 1), 10);
    /* A repeated id and missing ids are left to the header hash. */
    assert_int_equal(partner(s, 7, 12), -1);
    assert_true(needs_hh(s, 7, 12));
    assert_true(needs_hh(s, 7, 13));
    assert_true(needs_hh(l, 7, 2));
    assert_true(needs_hh(s, 7, 14));
    assert_true(needs_hh(l, 7, 3));
    assert_true(needs_hh(l, 7, 4));
    /* Sizes differ or one side only: no match and no header needed. */
    assert_int_equal(partner(s, 7, 15), -1);
    assert_false(needs_hh(s, 7, 15));
    assert_false(needs_hh(l, 7, 5));
    assert_false(needs_hh(s, 7, 16));
    assert_false(needs_hh(l, 7, 6));
}

static void test_match_by_header_hash(void **state)
{
    static const uint8_t ha[16] = {0xa}, hb[16] = {0xb}, hc[16] = {0xc};
    struct plan_match s[5], l[4];
    /* Two copies of A on the server and one locally; B on both sides; a
     * server message whose header could not be fetched; C only locally. */
    mset(&s[0], 20, NULL, 50, ha);
    mset(&s[1], 21, NULL, 50, hb);
    mset(&s[2], 22, NULL, 50, ha);
    mset(&s[3], 23, NULL, 50, NULL);
    mset(&s[4], 24, "<x>", 70, hb); /* same hash but a different size */
    mset(&l[0], 0, NULL, 50, hb);
    mset(&l[1], 1, NULL, 50, ha);
    mset(&l[2], 2, NULL, 50, hc);
    mset(&l[3], 3, "<x>", 71, hb);
    plan_match_ids(s, 5, l, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_true(needs_hh(s, 5, 20 + i));
    }
    plan_match_headers(s, 5, l, 4);
    assert_int_equal(partner(s, 5, 20), 1); /* the first copy of A, by UID order */
    assert_int_equal(partner(s, 5, 22), -1);
    assert_int_equal(partner(s, 5, 21), 0);
    assert_int_equal(partner(s, 5, 23), -1);
    assert_int_equal(partner(s, 5, 24), -1);
    assert_int_equal(partner(l, 4, 2), -1);
    assert_int_equal(partner(l, 4, 3), -1);

    /* Equal copies pair one to one in order. */
    struct plan_match s2[3], l2[2];
    for (size_t i = 0; i < 3; i++) {
        mset(&s2[i], 30 + i, "<same>", 80, ha);
    }
    mset(&l2[0], 1, "<same>", 80, ha);
    mset(&l2[1], 0, "<same>", 80, ha);
    plan_match_ids(s2, 3, l2, 2);
    plan_match_headers(s2, 3, l2, 2);
    assert_int_equal(partner(s2, 3, 30), 0);
    assert_int_equal(partner(s2, 3, 31), 1);
    assert_int_equal(partner(s2, 3, 32), -1);
    /* Nothing on one side. */
    plan_match_ids(NULL, 0, l2, 2);
    plan_match_headers(NULL, 0, l2, 2);
}

/* After the exact pass, a Message-ID (or its absence) shared by unpaired
 * candidates on both sides leaves the decision to the header blocks, so a
 * copy whose size differs only by lines another tool added can still pair;
 * pairs already made and one-sided ids are left alone. */
static void test_match_loose(void **state)
{
    static const uint8_t ha[16] = {0xa}, hb[16] = {0xb};
    struct plan_match s[5], l[5];
    mset(&s[0], 10, "<a>", 100, NULL); /* pairs exactly */
    mset(&s[1], 11, "<t>", 200, NULL); /* the server copy carries an X-TUID line */
    mset(&s[2], 12, NULL, 300, NULL);  /* no id, sizes differ */
    mset(&s[3], 13, "<s>", 400, NULL); /* only the server has this id */
    mset(&s[4], 14, "<u>", 500, NULL); /* ... and a local copy of another size */
    mset(&l[0], 0, "<a>", 100, ha);
    mset(&l[1], 1, "<t>", 178, ha);
    mset(&l[2], 2, NULL, 290, hb);
    mset(&l[3], 3, "<l>", 400, hb); /* only local */
    mset(&l[4], 4, "<u>", 510, hb);
    plan_match_ids(s, 5, l, 5);
    assert_false(needs_hh(s, 5, 11));
    plan_match_loose(s, 5, l, 5);
    assert_int_equal(partner(s, 5, 10), 0);
    assert_false(needs_hh(s, 5, 10));
    assert_false(needs_hh(l, 5, 0));
    assert_true(needs_hh(s, 5, 11));
    assert_true(needs_hh(l, 5, 1));
    assert_true(needs_hh(s, 5, 12));
    assert_true(needs_hh(l, 5, 2));
    assert_false(needs_hh(s, 5, 13));
    assert_false(needs_hh(l, 5, 3));
    assert_true(needs_hh(s, 5, 14));
    assert_true(needs_hh(l, 5, 4));
    /* The header blocks then decide, on the sizes without the added lines:
     * the engine gives the server's clean size once its header is known.
     * Different headers never pair, whatever the sizes. */
    for (size_t i = 0; i < 5; i++) {
        if (s[i].ix == 11) {
            s[i].hh = ha;
            s[i].size = 178;
        } else if (s[i].ix == 12) {
            s[i].hh = ha;
            s[i].size = 290;
        } else if (s[i].ix == 14) {
            s[i].hh = hb;
        }
    }
    plan_match_headers(s, 5, l, 5);
    assert_int_equal(partner(s, 5, 11), 1);
    assert_int_equal(partner(l, 5, 1), 11);
    assert_int_equal(partner(s, 5, 12), -1); /* same size, other header */
    assert_int_equal(partner(s, 5, 14), -1); /* same header, other size */
    assert_int_equal(partner(l, 5, 2), -1);
    /* Nothing on one side. */
    plan_match_loose(NULL, 0, l, 5);
    plan_match_loose(s, 5, NULL, 0);
}

static void check_clean(const char *in, const char *want, uint64_t want_strip)
{
    size_t n;
    uint64_t strip = 12345;
    char *out = plan_header_clean(in, strlen(in), &n, &strip);
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
    assert_int_equal(strip, want_strip);
    free(out);
}

/* The header block compared by matching: CRLF as LF, and X-TUID, Status
 * and X-Status fields (with continuation lines, in any case, anywhere)
 * left out; strip is their size on the wire, CRLF counted for a bare LF. */
static void test_header_clean(void **state)
{
    check_clean("From: a\r\nSubject: x\r\n\r\n", "From: a\nSubject: x\n\n", 0);
    /* mbsync puts X-TUID at the top or the bottom of the header. */
    check_clean("X-TUID: abcdefghijkl\nFrom: a\n\n", "From: a\n\n", 22);
    check_clean("From: a\nX-TUID: abcdefghijkl\n\n", "From: a\n\n", 22);
    check_clean("From: a\r\nx-tuid : abcdefghijkl\r\n\r\n", "From: a\n\n", 23);
    /* mutt's mbox past, with a continuation line. */
    check_clean("Status: RO\nX-Status: A\n\tmore\nSubject: s\n\n", "Subject: s\n\n", 12 + 13 + 7);
    /* Look-alikes stay: other names, a name without a colon, a body-like
     * continuation of a kept field. */
    check_clean("X-Status-Foo: 1\nStatusbar: 2\nStatus\nSubject: s\n Status: RO\n\n",
                "X-Status-Foo: 1\nStatusbar: 2\nStatus\nSubject: s\n Status: RO\n\n", 0);
    /* A header block that ends without a newline, and an empty one. */
    check_clean("Subject: s\nStatus: O", "Subject: s\n", 9);
    check_clean("", "", 0);
    size_t n;
    char *out = plan_header_clean("Status: O\n", 10, &n, NULL);
    assert_int_equal(n, 0);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_initial_download),
        cmocka_unit_test(test_new_local_upload),
        cmocka_unit_test(test_unchanged_is_empty),
        cmocka_unit_test(test_merge_table),
        cmocka_unit_test(test_keyword_merge),
        cmocka_unit_test(test_keyword_not_representable),
        cmocka_unit_test(test_server_deletion),
        cmocka_unit_test(test_local_deletion_modes),
        cmocka_unit_test(test_flagged_deletion_is_done_in_flag_mode_only),
        cmocka_unit_test(test_drop_upload),
        cmocka_unit_test(test_deleted_both_sides),
        cmocka_unit_test(test_delete_edit_race),
        cmocka_unit_test(test_guard),
        cmocka_unit_test(test_guard_partial_base),
        cmocka_unit_test(test_guard_ignores_moves),
        cmocka_unit_test(test_moved_gone_from_server),
        cmocka_unit_test(test_orphans),
        cmocka_unit_test(test_skips),
        cmocka_unit_test(test_store_grouping),
        cmocka_unit_test(test_kw_helpers),
        cmocka_unit_test(test_print),
        cmocka_unit_test(test_match_by_message_id),
        cmocka_unit_test(test_match_by_header_hash),
        cmocka_unit_test(test_match_loose),
        cmocka_unit_test(test_header_clean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
