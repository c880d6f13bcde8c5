/* The pure sync planner: see plan.h. */
#include "sync/plan.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/util.h"
#include "store/maildir.h"

/* ---- keyword sets --------------------------------------------------------- */

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void plan_kw_from(const char *const *names, size_t n, struct plan_kw *kw_r)
{
    kw_r->names = NULL;
    kw_r->n = 0;
    if (n == 0) {
        return;
    }
    char **v = xmalloc(n * sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        v[i] = xstrdup(names[i]);
    }
    qsort(v, n, sizeof(*v), str_cmp);
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        if (out > 0 && strcmp(v[out - 1], v[i]) == 0) {
            free(v[i]);
            continue;
        }
        v[out++] = v[i];
    }
    kw_r->names = v;
    kw_r->n = out;
}

void plan_kw_parse(const char *s, struct plan_kw *kw_r)
{
    kw_r->names = NULL;
    kw_r->n = 0;
    if (s == NULL) {
        return;
    }
    const char **tmp = NULL;
    size_t n = 0, cap = 0;
    char *copy = xstrdup(s);
    char *save = NULL;
    for (char *t = strtok_r(copy, " ", &save); t != NULL; t = strtok_r(NULL, " ", &save)) {
        xgrow(&tmp, &cap, n + 1, sizeof(*tmp));
        tmp[n++] = t;
    }
    plan_kw_from(tmp, n, kw_r);
    free(tmp);
    free(copy);
}

bool plan_kw_format(const struct plan_kw *kw, char *buf, size_t cap)
{
    size_t len = 0;
    if (cap == 0) {
        return false;
    }
    buf[0] = '\0';
    for (size_t i = 0; i < kw->n; i++) {
        size_t l = strlen(kw->names[i]);
        if (len + (i > 0) + l + 1 > cap) {
            return false;
        }
        if (i > 0) {
            buf[len++] = ' ';
        }
        memcpy(buf + len, kw->names[i], l + 1);
        len += l;
    }
    return true;
}

bool plan_kw_has(const struct plan_kw *kw, const char *name)
{
    if (kw->n == 0) {
        return false;
    }
    return bsearch(&name, kw->names, kw->n, sizeof(*kw->names), str_cmp) != NULL;
}

void plan_kw_free(struct plan_kw *kw)
{
    for (size_t i = 0; i < kw->n; i++) {
        free(kw->names[i]);
    }
    free(kw->names);
    kw->names = NULL;
    kw->n = 0;
}

static bool kw_equal(const struct plan_kw *a, const struct plan_kw *b)
{
    if (a->n != b->n) {
        return false;
    }
    for (size_t i = 0; i < a->n; i++) {
        if (strcmp(a->names[i], b->names[i]) != 0) {
            return false;
        }
    }
    return true;
}

static void kw_copy(const struct plan_kw *src, struct plan_kw *dst)
{
    plan_kw_from((const char *const *)src->names, src->n, dst);
}

void plan_flag_letters(unsigned flags, char *buf)
{
    static const struct {
        unsigned bit;
        char c;
    } map[] = {
        {MD_FLAG_DRAFT, 'D'},   {MD_FLAG_FLAGGED, 'F'}, {MD_FLAG_PASSED, 'P'},
        {MD_FLAG_REPLIED, 'R'}, {MD_FLAG_SEEN, 'S'},    {MD_FLAG_TRASHED, 'T'},
    };
    size_t n = 0;
    for (size_t i = 0; i < ARRAY_SIZE(map); i++) {
        if (flags & map[i].bit) {
            buf[n++] = map[i].c;
        }
    }
    buf[n] = '\0';
}

/* ---- lookups ------------------------------------------------------------- */

struct srv_ent {
    const struct plan_server_msg *m;
    bool used;
};

struct loc_ent {
    const struct plan_local_msg *m;
    bool used;
};

static int srv_cmp(const void *a, const void *b)
{
    uint32_t x = ((const struct srv_ent *)a)->m->uid, y = ((const struct srv_ent *)b)->m->uid;
    return x < y ? -1 : x > y;
}

static int loc_cmp(const void *a, const void *b)
{
    return strcmp(((const struct loc_ent *)a)->m->lid, ((const struct loc_ent *)b)->m->lid);
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static struct srv_ent *find_srv(struct srv_ent *v, size_t n, uint32_t uid)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid].m->uid == uid) {
            return &v[mid];
        }
        if (v[mid].m->uid < uid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

static struct loc_ent *find_loc(struct loc_ent *v, size_t n, const char *lid)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(v[mid].m->lid, lid);
        if (c == 0) {
            return &v[mid];
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

/* find_loc for the base's rows in order, whose names mostly sort as the
 * base does: the entry after the last one found (*hint) is tried first.
 * Taken only when it is the one lid of its kind, so the answer is the
 * binary search's. */
static struct loc_ent *find_loc_near(struct loc_ent *v, size_t n, const char *lid, size_t *hint)
{
    size_t h = *hint;
    if (h < n && strcmp(v[h].m->lid, lid) == 0 && (h == 0 || strcmp(v[h - 1].m->lid, lid) != 0) &&
        (h + 1 == n || strcmp(v[h + 1].m->lid, lid) != 0)) {
        *hint = h + 1;
        return &v[h];
    }
    struct loc_ent *le = find_loc(v, n, lid);
    if (le != NULL) {
        *hint = (size_t)(le - v) + 1;
    }
    return le;
}

static bool is_vanished(const struct plan_input *in, const uint32_t *sorted, uint32_t uid)
{
    return in->server.nvanished > 0 &&
           bsearch(&uid, sorted, in->server.nvanished, sizeof(uint32_t), u32_cmp) != NULL;
}

/* ---- building ------------------------------------------------------------ */

/* A flags + keywords state of one side. */
struct fstate {
    unsigned flags;
    struct plan_kw kw;
};

static void fs_free(struct fstate *s)
{
    plan_kw_free(&s->kw);
}

static bool fs_equal(const struct fstate *a, const struct fstate *b)
{
    return a->flags == b->flags && kw_equal(&a->kw, &b->kw);
}

/* Three-way merge per flag and per keyword. */
static void merge(const struct plan_input *in, const struct fstate *l, const struct fstate *s,
                  const struct fstate *b, struct fstate *out)
{
    unsigned lc = (l->flags ^ b->flags) & MD_FLAGS_ALL;
    unsigned sc = (s->flags ^ b->flags) & MD_FLAGS_ALL;
    out->flags = (b->flags & ~(lc | sc)) | (l->flags & lc) | (s->flags & sc & ~lc);
    out->flags &= MD_FLAGS_ALL;

    /* The union of names on the three sides, each decided alone. */
    const char **all = NULL;
    size_t n = 0, cap = 0;
    const struct plan_kw *sets[3] = {&l->kw, &s->kw, &b->kw};
    for (size_t k = 0; k < 3; k++) {
        for (size_t i = 0; i < sets[k]->n; i++) {
            xgrow(&all, &cap, n + 1, sizeof(*all));
            all[n++] = sets[k]->names[i];
        }
    }
    const char **keep = NULL;
    size_t nkeep = 0, kcap = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = all[i];
        bool bv = plan_kw_has(&b->kw, name);
        bool sv = plan_kw_has(&s->kw, name);
        bool lv = plan_kw_has(&l->kw, name);
        if (in->local.kw_ok != NULL && !in->local.kw_ok(name, in->local.kw_arg)) {
            /* The local side cannot hold it: not a local change. */
            lv = bv;
        }
        bool v = lv != bv ? lv : sv != bv ? sv : bv;
        if (v) {
            xgrow(&keep, &kcap, nkeep + 1, sizeof(*keep));
            keep[nkeep++] = name;
        }
    }
    plan_kw_from(keep, nkeep, &out->kw);
    free(keep);
    free(all);
}

/* A growable array helper that keeps the code below short. */
#define PUSH(arr, n, cap) (xgrow(&(arr), &(cap), (n) + 1, sizeof(*(arr))), &(arr)[(n)++])

struct builder {
    struct plan *p;
    size_t cap_dl, cap_ul, cap_lf, cap_st, cap_ld, cap_sd, cap_dr, cap_up, cap_sk, cap_or;
};

/* Adds uid to the store group with exactly this change, creating it. */
static void add_store(struct builder *b, char op, unsigned flags, const struct plan_kw *kw,
                      uint32_t uid)
{
    if (flags == 0 && kw->n == 0) {
        return;
    }
    struct plan *p = b->p;
    struct plan_store *st = NULL;
    for (size_t i = 0; i < p->nstores; i++) {
        if (p->stores[i].op == op && p->stores[i].flags == flags &&
            kw_equal(&p->stores[i].kw, kw)) {
            st = &p->stores[i];
            break;
        }
    }
    if (st == NULL) {
        st = PUSH(p->stores, p->nstores, b->cap_st);
        memset(st, 0, sizeof(*st));
        st->op = op;
        st->flags = flags;
        kw_copy(kw, &st->kw);
    }
    st->uids = xrealloc(st->uids, (st->nuids + 1) * sizeof(*st->uids));
    st->uids[st->nuids++] = uid;
}

/* Keywords in a but not in b. */
static void kw_minus(const struct plan_kw *a, const struct plan_kw *b, struct plan_kw *out)
{
    const char **v = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (!plan_kw_has(b, a->names[i])) {
            xgrow(&v, &cap, n + 1, sizeof(*v));
            v[n++] = a->names[i];
        }
    }
    plan_kw_from(v, n, out);
    free(v);
}

static void add_download(struct builder *b, const struct plan_input *in,
                         const struct plan_server_msg *m, const struct fstate *st, bool recopy)
{
    struct plan *p = b->p;
    bool too_big = in->max_size > 0 && m->size > in->max_size;
    bool too_old = !recopy && in->max_age_days > 0 && m->internaldate > 0 &&
                   m->internaldate < in->now - (time_t)in->max_age_days * 86400;
    if (too_big || too_old) {
        struct plan_skip *sk = PUSH(p->skips, p->nskips, b->cap_sk);
        sk->uid = m->uid;
        sk->size = m->size;
        sk->too_old = !too_big;
        return;
    }
    struct plan_download *d = PUSH(p->downloads, p->ndownloads, b->cap_dl);
    memset(d, 0, sizeof(*d));
    d->uid = m->uid;
    d->flags = st->flags;
    kw_copy(&st->kw, &d->kw);
    d->size = m->size;
    d->internaldate = m->internaldate;
    d->recopy = recopy;
}

static void add_upload(struct builder *b, const char *lid, const struct fstate *st,
                       uint32_t old_uid)
{
    struct plan *p = b->p;
    struct plan_upload *u = PUSH(p->uploads, p->nuploads, b->cap_ul);
    memset(u, 0, sizeof(*u));
    u->lid = xstrdup(lid);
    u->flags = st->flags;
    kw_copy(&st->kw, &u->kw);
    u->old_uid = old_uid;
}

static void add_delete(struct plan_delete **arr, size_t *n, size_t *cap, const char *lid,
                       uint32_t uid)
{
    struct plan_delete *d = PUSH(*arr, *n, *cap);
    d->lid = xstrdup(lid);
    d->uid = uid;
}

/* The new record of base row bi: the row with flags and keywords st. */
static void add_update(struct builder *b, const struct idx_rows *base, size_t bi,
                       const struct fstate *st)
{
    struct plan *p = b->p;
    struct idx_msg *u = PUSH(p->updates, p->nupdates, b->cap_up);
    idx_rows_get(base, bi, u);
    u->flags = (uint8_t)st->flags;
    if (!plan_kw_format(&st->kw, u->keywords, sizeof(u->keywords))) {
        /* More keyword text than a record holds: keep the old text, so the
         * next run sees the difference again rather than losing keywords. */
        snprintf(u->keywords, sizeof(u->keywords), "%s", idx_rows_keywords(base, bi));
    }
}

/* Both sides have base row bi: merge and plan the changes on each side. */
static void plan_both(struct builder *b, const struct plan_input *in, size_t bi,
                      const struct fstate *bs, const struct fstate *ls, const struct fstate *ss)
{
    const struct idx_row *base = &in->base->v[bi];
    struct fstate mg;
    merge(in, ls, ss, bs, &mg);
    struct plan *p = b->p;
    if (!fs_equal(&mg, ls)) {
        struct plan_local_flags *lf = PUSH(p->local_flags, p->nlocal_flags, b->cap_lf);
        lf->lid = xstrdup(idx_rows_lid(in->base, bi));
        lf->uid = base->uid;
        lf->flags = mg.flags;
        kw_copy(&mg.kw, &lf->kw);
    }
    if (!fs_equal(&mg, ss)) {
        struct plan_kw add, del;
        kw_minus(&mg.kw, &ss->kw, &add);
        kw_minus(&ss->kw, &mg.kw, &del);
        add_store(b, '+', mg.flags & ~ss->flags, &add, base->uid);
        add_store(b, '-', ss->flags & ~mg.flags, &del, base->uid);
        plan_kw_free(&add);
        plan_kw_free(&del);
    }
    if (!fs_equal(&mg, bs)) {
        add_update(b, in->base, bi, &mg);
    }
    fs_free(&mg);
}

static void fs_from_local(const struct plan_local_msg *m, struct fstate *s)
{
    s->flags = m->flags & MD_FLAGS_ALL;
    plan_kw_from(m->kw, m->nkw, &s->kw);
}

static void fs_from_server(const struct plan_server_msg *m, struct fstate *s)
{
    s->flags = m->flags & MD_FLAGS_ALL;
    plan_kw_from(m->kw, m->nkw, &s->kw);
}

/* Whether the local state differs from the base in what the local side can
 * hold. */
static bool local_changed(const struct plan_input *in, const struct fstate *ls,
                          const struct fstate *bs)
{
    if (ls->flags != bs->flags) {
        return true;
    }
    struct fstate mg;
    /* Merging with the server side equal to the base yields the local view
     * restricted to what the local side can carry. */
    merge(in, ls, bs, bs, &mg);
    bool changed = !kw_equal(&mg.kw, &bs->kw);
    fs_free(&mg);
    return changed;
}

struct plan *plan_build(const struct plan_input *in)
{
    struct plan *p = xcalloc(1, sizeof(*p));
    struct builder b = {.p = p};

    struct srv_ent *sv = xcalloc(in->server.nmsgs + 1, sizeof(*sv));
    for (size_t i = 0; i < in->server.nmsgs; i++) {
        sv[i].m = &in->server.msgs[i];
    }
    qsort(sv, in->server.nmsgs, sizeof(*sv), srv_cmp);
    struct loc_ent *lv = xcalloc(in->local.nmsgs + 1, sizeof(*lv));
    for (size_t i = 0; i < in->local.nmsgs; i++) {
        lv[i].m = &in->local.msgs[i];
    }
    qsort(lv, in->local.nmsgs, sizeof(*lv), loc_cmp);
    uint32_t *van = xmalloc((in->server.nvanished + 1) * sizeof(*van));
    if (in->server.nvanished > 0) {
        memcpy(van, in->server.vanished, in->server.nvanished * sizeof(*van));
        qsort(van, in->server.nvanished, sizeof(*van), u32_cmp);
    }

    /* Pending deletions, kept apart until the guard has been checked. */
    struct plan_delete *ldel = NULL, *sdel = NULL;
    size_t nldel = 0, nsdel = 0, cap_ldel = 0, cap_sdel = 0;
    size_t nsynced = 0;

    uint32_t *moved = xmalloc((in->nmoved + 1) * sizeof(*moved));
    if (in->nmoved > 0) {
        memcpy(moved, in->moved, in->nmoved * sizeof(*moved));
        qsort(moved, in->nmoved, sizeof(*moved), u32_cmp);
    }
    static const uint8_t no_hash[sizeof(((struct idx_row *)NULL)->msgid_hash)];

    /* Each keyword set of the base parsed once, not once a row: the rows'
     * base states borrow these (never freed with the row's state). */
    size_t nbase = in->base != NULL ? in->base->n : 0;
    size_t nsets = nbase > 0 ? in->base->nkwsets : 0;
    struct plan_kw *sets = xcalloc(nsets + 1, sizeof(*sets));
    for (size_t k = 0; k < nsets; k++) {
        plan_kw_parse(in->base->kwsets[k], &sets[k]);
    }

    size_t lhint = 0;
    for (size_t i = 0; i < nbase; i++) {
        const struct idx_row *base = &in->base->v[i];
        const char *lid = idx_rows_lid(in->base, i);
        if (base->state == IDX_MSG_ORPHAN && base->uid != 0) {
            /* Parked in an earlier run or job: still waiting while its file
             * stays; forgotten once the user deleted the file. */
            struct loc_ent *le = find_loc_near(lv, in->local.nmsgs, lid, &lhint);
            if (le == NULL) {
                *PUSH(p->drops, p->ndrops, b.cap_dr) = base->uid;
                continue;
            }
            le->used = true;
            struct fstate bs = {.flags = base->flags & MD_FLAGS_ALL, .kw = sets[base->kwset]}, ls;
            fs_from_local(le->m, &ls);
            struct plan_orphan *o = PUSH(p->orphans, p->norphans, b.cap_or);
            *o = (struct plan_orphan){.lid = xstrdup(lid),
                                      .uid = base->uid,
                                      .changed = local_changed(in, &ls, &bs),
                                      .parked = true};
            fs_free(&ls);
            continue;
        }
        if (base->state != IDX_MSG_SYNCED || base->uid == 0) {
            continue;
        }
        nsynced++;
        struct srv_ent *se = find_srv(sv, in->server.nmsgs, base->uid);
        bool on_server = se != NULL || (!in->server.complete && !is_vanished(in, van, base->uid));
        if (on_server && in->nmoved > 0 &&
            bsearch(&base->uid, moved, in->nmoved, sizeof(*moved), u32_cmp)) {
            /* Another folder's job moves it (or takes it over): nothing
             * happens to it from here. Once gone from the server (moved by
             * a run killed before its record, or expunged by another
             * client), it is dropped below like any message gone from both
             * sides: kept, it would be deleted on the server by the next
             * run, once no longer listed here as moved. */
            if (se != NULL) {
                se->used = true;
            }
            struct loc_ent *le = find_loc_near(lv, in->local.nmsgs, lid, &lhint);
            if (le != NULL) {
                le->used = true;
            }
            continue;
        }
        struct fstate bs = {.flags = base->flags & MD_FLAGS_ALL, .kw = sets[base->kwset]};

        struct fstate ss;
        if (se != NULL) {
            se->used = true;
            fs_from_server(se->m, &ss);
        } else if (on_server) {
            ss.flags = bs.flags;
            kw_copy(&bs.kw, &ss.kw);
        } else {
            memset(&ss, 0, sizeof(ss));
        }

        struct loc_ent *le = find_loc_near(lv, in->local.nmsgs, lid, &lhint);
        struct fstate ls = {0};
        if (le != NULL) {
            le->used = true;
            fs_from_local(le->m, &ls);
        }

        if (on_server && le != NULL) {
            plan_both(&b, in, i, &bs, &ls, &ss);
        } else if (!on_server && le != NULL && in->park_orphans &&
                   (memcmp(base->msgid_hash, no_hash, sizeof(no_hash)) != 0 ||
                    memcmp(base->emailid_hash, no_hash, sizeof(base->emailid_hash)) != 0)) {
            /* Maybe moved by another client: parked, not deleted (and not
             * copied back when edited here: a pair merges the edit). */
            struct plan_orphan *o = PUSH(p->orphans, p->norphans, b.cap_or);
            *o = (struct plan_orphan){
                .lid = xstrdup(lid), .uid = base->uid, .changed = local_changed(in, &ls, &bs)};
        } else if (!on_server && le != NULL) {
            if (local_changed(in, &ls, &bs)) {
                /* Edited here while expunged there: copy it back. */
                struct fstate up;
                merge(in, &ls, &bs, &bs, &up);
                add_upload(&b, lid, &up, base->uid);
                fs_free(&up);
            } else {
                add_delete(&ldel, &nldel, &cap_ldel, lid, base->uid);
            }
        } else if (on_server && le == NULL) {
            if (!fs_equal(&ss, &bs)) {
                /* Edited there while deleted here: fetch it again. The old
                 * record is replaced when the download is recorded. */
                if (se != NULL) {
                    add_download(&b, in, se->m, &ss, true);
                } else {
                    /* Cannot happen: an unlisted delta UID is unchanged. */
                    add_delete(&sdel, &nsdel, &cap_sdel, lid, base->uid);
                }
            } else if (in->on_local_delete == PLAN_LOCAL_DELETE_FLAG) {
                if (!(ss.flags & MD_FLAG_TRASHED)) {
                    add_delete(&sdel, &nsdel, &cap_sdel, lid, base->uid);
                }
                /* Already flagged: the record stays so that the message is
                 * not downloaded again; nothing to do. */
            } else {
                add_delete(&sdel, &nsdel, &cap_sdel, lid, base->uid);
            }
        } else {
            uint32_t *d = PUSH(p->drops, p->ndrops, b.cap_dr);
            *d = base->uid;
        }
        fs_free(&ss);
        fs_free(&ls);
    }

    /* The guard: deletions against the folder's size at the base. */
    bool tripped = false;
    /* Orphans parked now count: until a pair shows they were moved, a
     * mass expunge on the server looks the same and must stay guarded. */
    size_t nnew_orphans = 0;
    for (size_t i = 0; i < p->norphans; i++) {
        nnew_orphans += !p->orphans[i].parked;
    }
    /* A partial base (only the rows a delta names) is measured against
     * the whole folder, or a mass expunge of a large folder would look
     * like the loss of most of a small one, or slip past as a few. */
    if (in->nbase_total > nsynced) {
        nsynced = in->nbase_total;
    }
    if (!in->force && nsynced > PLAN_GUARD_MIN) {
        double limit = in->max_delete_ratio * (double)nsynced;
        if ((double)(nldel + nnew_orphans) > limit || (double)nsdel > limit) {
            tripped = true;
            p->guard_local = (unsigned)(nldel + nnew_orphans);
            p->guard_server = (unsigned)nsdel;
            p->error = xasprintf(
                "folder '%s': refusing to delete %zu of %zu messages locally and %zu on the "
                "server (more than %.0f%%); if that is intended, run 'mailsync sync --force %s'",
                in->folder != NULL ? in->folder : "?", nldel + nnew_orphans, nsynced, nsdel,
                in->max_delete_ratio * 100.0, in->account != NULL ? in->account : "ACCOUNT");
        }
    }
    if (tripped) {
        for (size_t i = 0; i < nldel; i++) {
            free(ldel[i].lid);
        }
        for (size_t i = 0; i < nsdel; i++) {
            free(sdel[i].lid);
        }
        free(ldel);
        free(sdel);
        size_t out = 0;
        for (size_t i = 0; i < p->norphans; i++) {
            if (p->orphans[i].parked) {
                p->orphans[out++] = p->orphans[i];
            } else {
                free(p->orphans[i].lid);
            }
        }
        p->norphans = out;
    } else {
        p->local_deletes = ldel;
        p->nlocal_deletes = nldel;
        p->server_deletes = sdel;
        p->nserver_deletes = nsdel;
    }

    /* Server messages nobody knows: new there. */
    for (size_t i = 0; i < in->server.nmsgs; i++) {
        if (sv[i].used) {
            continue;
        }
        struct fstate ss;
        fs_from_server(sv[i].m, &ss);
        add_download(&b, in, sv[i].m, &ss, false);
        fs_free(&ss);
    }
    /* Local messages nobody knows: new here. */
    for (size_t i = 0; i < in->local.nmsgs; i++) {
        if (lv[i].used) {
            continue;
        }
        struct fstate ls;
        fs_from_local(lv[i].m, &ls);
        add_upload(&b, lv[i].m->lid, &ls, 0);
        fs_free(&ls);
    }

    /* Ascending UIDs make compact ranges and a predictable order. */
    for (size_t i = 0; i < p->nstores; i++) {
        qsort(p->stores[i].uids, p->stores[i].nuids, sizeof(uint32_t), u32_cmp);
    }
    free(sv);
    free(lv);
    free(van);
    free(moved);
    for (size_t k = 0; k < nsets; k++) {
        plan_kw_free(&sets[k]);
    }
    free(sets);
    return p;
}

/* ---- matching without UIDs ----------------------------------------------- */

static int match_id_cmp(const void *a, const void *b)
{
    const struct plan_match *x = a, *y = b;
    if ((x->msgid == NULL) != (y->msgid == NULL)) {
        return x->msgid == NULL ? -1 : 1;
    }
    if (x->msgid != NULL) {
        int c = strcmp(x->msgid, y->msgid);
        if (c != 0) {
            return c;
        }
    }
    if (x->size != y->size) {
        return x->size < y->size ? -1 : 1;
    }
    return x->ix < y->ix ? -1 : x->ix > y->ix;
}

static bool same_id(const struct plan_match *x, const struct plan_match *y)
{
    if ((x->msgid == NULL) != (y->msgid == NULL) || x->size != y->size) {
        return false;
    }
    return x->msgid == NULL || strcmp(x->msgid, y->msgid) == 0;
}

void plan_match_ids(struct plan_match *srv, size_t nsrv, struct plan_match *loc, size_t nloc)
{
    if (nsrv > 1) {
        qsort(srv, nsrv, sizeof(*srv), match_id_cmp);
    }
    if (nloc > 1) {
        qsort(loc, nloc, sizeof(*loc), match_id_cmp);
    }
    size_t i = 0, k = 0;
    while (i < nsrv && k < nloc) {
        if (!same_id(&srv[i], &loc[k])) {
            /* Different keys: the comparison is decided before ix. */
            if (match_id_cmp(&srv[i], &loc[k]) < 0) {
                i++;
            } else {
                k++;
            }
            continue;
        }
        size_t i2 = i, k2 = k;
        while (i2 < nsrv && same_id(&srv[i2], &srv[i])) {
            i2++;
        }
        while (k2 < nloc && same_id(&loc[k2], &loc[k])) {
            k2++;
        }
        if (i2 - i == 1 && k2 - k == 1 && srv[i].msgid != NULL) {
            srv[i].pair = (long)loc[k].ix;
            loc[k].pair = (long)srv[i].ix;
        } else {
            for (size_t x = i; x < i2; x++) {
                srv[x].need_hh = true;
            }
            for (size_t x = k; x < k2; x++) {
                loc[x].need_hh = true;
            }
        }
        i = i2;
        k = k2;
    }
}

static int match_hh_cmp(const void *a, const void *b)
{
    const struct plan_match *x = *(const struct plan_match *const *)a;
    const struct plan_match *y = *(const struct plan_match *const *)b;
    int c = memcmp(x->hh, y->hh, 16);
    if (c != 0) {
        return c;
    }
    if (x->size != y->size) {
        return x->size < y->size ? -1 : 1;
    }
    return x->ix < y->ix ? -1 : x->ix > y->ix;
}

static struct plan_match **hh_list(struct plan_match *v, size_t n, size_t *m_r)
{
    struct plan_match **out = xcalloc(n + 1, sizeof(*out));
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i].need_hh && v[i].pair < 0 && v[i].hh != NULL) {
            out[m++] = &v[i];
        }
    }
    if (m > 1) {
        qsort(out, m, sizeof(*out), match_hh_cmp);
    }
    *m_r = m;
    return out;
}

void plan_match_headers(struct plan_match *srv, size_t nsrv, struct plan_match *loc, size_t nloc)
{
    size_t ms, ml;
    struct plan_match **a = hh_list(srv, nsrv, &ms), **b = hh_list(loc, nloc, &ml);
    size_t i = 0, k = 0;
    while (i < ms && k < ml) {
        int c = memcmp(a[i]->hh, b[k]->hh, 16);
        if (c == 0 && a[i]->size != b[k]->size) {
            c = a[i]->size < b[k]->size ? -1 : 1;
        }
        if (c < 0) {
            i++;
        } else if (c > 0) {
            k++;
        } else {
            a[i]->pair = (long)b[k]->ix;
            b[k]->pair = (long)a[i]->ix;
            i++;
            k++;
        }
    }
    free(a);
    free(b);
}

/* Groups the candidates by Message-ID alone (all those without one form one
 * group): where a group has unpaired members on both sides, they are
 * marked need_hh, so that header blocks decide whether the sizes differ
 * only by lines another tool added. */
void plan_match_loose(struct plan_match *srv, size_t nsrv, struct plan_match *loc, size_t nloc)
{
    /* Both arrays are sorted by (Message-ID, size, ix) by plan_match_ids,
     * so equal Message-IDs are adjacent. */
    size_t i = 0, k = 0;
    while (i < nsrv && k < nloc) {
        const char *a = srv[i].msgid, *b = loc[k].msgid;
        int c = (a == NULL) != (b == NULL) ? (a == NULL ? -1 : 1) : a == NULL ? 0 : strcmp(a, b);
        if (c < 0) {
            i++;
            continue;
        }
        if (c > 0) {
            k++;
            continue;
        }
        size_t i2 = i, k2 = k;
        bool s_open = false, l_open = false;
        while (i2 < nsrv && (srv[i2].msgid == NULL) == (a == NULL) &&
               (a == NULL || strcmp(srv[i2].msgid, a) == 0)) {
            s_open |= srv[i2].pair < 0;
            i2++;
        }
        while (k2 < nloc && (loc[k2].msgid == NULL) == (b == NULL) &&
               (b == NULL || strcmp(loc[k2].msgid, b) == 0)) {
            l_open |= loc[k2].pair < 0;
            k2++;
        }
        if (s_open && l_open) {
            for (size_t x = i; x < i2; x++) {
                srv[x].need_hh |= srv[x].pair < 0;
            }
            for (size_t x = k; x < k2; x++) {
                loc[x].need_hh |= loc[x].pair < 0;
            }
        }
        i = i2;
        k = k2;
    }
}

/* A field that other programs add to a message they store, and that says
 * nothing about which message it is: mbsync's X-TUID (how it finds an
 * appended message again), and the Status / X-Status lines of mbox-era
 * mail readers. */
static bool ignored_field(const char *line, size_t len)
{
    static const char *const names[] = {"X-TUID", "Status", "X-Status"};
    for (size_t n = 0; n < sizeof(names) / sizeof(names[0]); n++) {
        size_t nl = strlen(names[n]);
        if (len <= nl || strncasecmp(line, names[n], nl) != 0) {
            continue;
        }
        size_t p = nl;
        while (p < len && (line[p] == ' ' || line[p] == '\t')) {
            p++;
        }
        if (p < len && line[p] == ':') {
            return true;
        }
    }
    return false;
}

char *plan_header_clean(const char *h, size_t len, size_t *len_r, uint64_t *strip_r)
{
    char *out = xmalloc(len + 1);
    size_t n = 0;
    uint64_t strip = 0;
    bool dropping = false;
    size_t p = 0;
    while (p < len) {
        const char *nl = memchr(h + p, '\n', len - p);
        size_t end = nl != NULL ? (size_t)(nl - h) + 1 : len; /* past the line's LF */
        size_t body = end;                                    /* the line without its ending */
        if (nl != NULL) {
            body--;
            if (body > p && h[body - 1] == '\r') {
                body--;
            }
        }
        bool cont = body > p && (h[p] == ' ' || h[p] == '\t');
        if (!cont) {
            dropping = body > p && ignored_field(h + p, body - p);
        }
        if (dropping) {
            /* Its size on the wire: as it is, plus the CR a bare LF gets. */
            strip += end - p;
            if (nl != NULL && (end - p < 2 || h[end - 2] != '\r')) {
                strip++;
            }
        } else {
            memcpy(out + n, h + p, body - p);
            n += body - p;
            if (nl != NULL) {
                out[n++] = '\n';
            }
        }
        p = end;
    }
    out[n] = '\0';
    *len_r = n;
    if (strip_r != NULL) {
        *strip_r = strip;
    }
    return out;
}

void plan_free(struct plan *p)
{
    if (p == NULL) {
        return;
    }
    for (size_t i = 0; i < p->ndownloads; i++) {
        plan_kw_free(&p->downloads[i].kw);
    }
    free(p->downloads);
    for (size_t i = 0; i < p->nuploads; i++) {
        free(p->uploads[i].lid);
        plan_kw_free(&p->uploads[i].kw);
    }
    free(p->uploads);
    for (size_t i = 0; i < p->nlocal_flags; i++) {
        free(p->local_flags[i].lid);
        plan_kw_free(&p->local_flags[i].kw);
    }
    free(p->local_flags);
    for (size_t i = 0; i < p->nstores; i++) {
        plan_kw_free(&p->stores[i].kw);
        free(p->stores[i].uids);
    }
    free(p->stores);
    for (size_t i = 0; i < p->nlocal_deletes; i++) {
        free(p->local_deletes[i].lid);
    }
    free(p->local_deletes);
    for (size_t i = 0; i < p->nserver_deletes; i++) {
        free(p->server_deletes[i].lid);
    }
    free(p->server_deletes);
    free(p->drops);
    free(p->updates);
    free(p->skips);
    for (size_t i = 0; i < p->norphans; i++) {
        free(p->orphans[i].lid);
    }
    free(p->orphans);
    free(p->error);
    free(p);
}

void plan_drop_upload(struct plan *p, size_t i)
{
    if (i >= p->nuploads) {
        return;
    }
    free(p->uploads[i].lid);
    plan_kw_free(&p->uploads[i].kw);
    memmove(&p->uploads[i], &p->uploads[i + 1], (p->nuploads - i - 1) * sizeof(*p->uploads));
    p->nuploads--;
}

void plan_drop_server_delete(struct plan *p, size_t i)
{
    if (i >= p->nserver_deletes) {
        return;
    }
    free(p->server_deletes[i].lid);
    memmove(&p->server_deletes[i], &p->server_deletes[i + 1],
            (p->nserver_deletes - i - 1) * sizeof(*p->server_deletes));
    p->nserver_deletes--;
}

bool plan_empty(const struct plan *p)
{
    return p->ndownloads == 0 && p->nuploads == 0 && p->nlocal_flags == 0 && p->nstores == 0 &&
           p->nlocal_deletes == 0 && p->nserver_deletes == 0 && p->ndrops == 0 &&
           p->nupdates == 0 && p->norphans == 0;
}

static void print_kw(FILE *fp, const struct plan_kw *kw)
{
    for (size_t i = 0; i < kw->n; i++) {
        fprintf(fp, " %s", kw->names[i]);
    }
}

void plan_print(const struct plan *p, const char *folder, FILE *fp)
{
    char fl[8];
    if (p->error != NULL) {
        fprintf(fp, "%s: error: %s\n", folder, p->error);
    }
    for (size_t i = 0; i < p->ndownloads; i++) {
        const struct plan_download *d = &p->downloads[i];
        plan_flag_letters(d->flags, fl);
        fprintf(fp, "%s: download uid %u (%llu bytes) flags '%s'", folder, (unsigned)d->uid,
                (unsigned long long)d->size, fl);
        print_kw(fp, &d->kw);
        fputs(d->recopy ? " (changed on the server, deleted locally)\n" : "\n", fp);
    }
    for (size_t i = 0; i < p->nuploads; i++) {
        const struct plan_upload *u = &p->uploads[i];
        plan_flag_letters(u->flags, fl);
        fprintf(fp, "%s: upload %s flags '%s'", folder, u->lid, fl);
        print_kw(fp, &u->kw);
        fputs(u->old_uid != 0 ? " (changed locally, expunged on the server)\n" : "\n", fp);
    }
    for (size_t i = 0; i < p->nlocal_flags; i++) {
        const struct plan_local_flags *lf = &p->local_flags[i];
        plan_flag_letters(lf->flags, fl);
        fprintf(fp, "%s: set local flags of %s (uid %u) to '%s'", folder, lf->lid,
                (unsigned)lf->uid, fl);
        print_kw(fp, &lf->kw);
        fputc('\n', fp);
    }
    for (size_t i = 0; i < p->nstores; i++) {
        const struct plan_store *st = &p->stores[i];
        plan_flag_letters(st->flags, fl);
        fprintf(fp, "%s: server flags %c'%s'", folder, st->op, fl);
        print_kw(fp, &st->kw);
        fprintf(fp, " on %zu message(s):", st->nuids);
        for (size_t j = 0; j < st->nuids; j++) {
            fprintf(fp, " %u", (unsigned)st->uids[j]);
        }
        fputc('\n', fp);
    }
    for (size_t i = 0; i < p->nlocal_deletes; i++) {
        fprintf(fp, "%s: delete local %s (uid %u gone from the server)\n", folder,
                p->local_deletes[i].lid, (unsigned)p->local_deletes[i].uid);
    }
    for (size_t i = 0; i < p->norphans; i++) {
        const struct plan_orphan *o = &p->orphans[i];
        if (o->changed) {
            fprintf(fp,
                    "%s: keep local %s (uid %u gone from the server, changed here): uploaded "
                    "again by the next run unless another folder's new message pairs with it\n",
                    folder, o->lid, (unsigned)o->uid);
        } else {
            /* Not "delete local": whether it is deleted is said when the
             * run knows (sync/moves.c: a move, or the deletion). */
            fprintf(fp,
                    "%s: park local %s (uid %u gone from the server): deleted at the end of the "
                    "run unless another folder's new message pairs with it\n",
                    folder, o->lid, (unsigned)o->uid);
        }
    }
    for (size_t i = 0; i < p->nserver_deletes; i++) {
        fprintf(fp, "%s: delete on the server uid %u (%s deleted locally)\n", folder,
                (unsigned)p->server_deletes[i].uid, p->server_deletes[i].lid);
    }
    for (size_t i = 0; i < p->nskips; i++) {
        fprintf(fp, "%s: skip uid %u (%llu bytes): %s\n", folder, (unsigned)p->skips[i].uid,
                (unsigned long long)p->skips[i].size,
                p->skips[i].too_old ? "older than max_age_days" : "larger than max_size");
    }
}
