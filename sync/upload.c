/* Uploads whose UID is not known yet, and finding them on the server.
 *
 * An APPEND answered without APPENDUID (a server without UIDPLUS): after
 * the folder's last APPEND one FETCH of the new UIDs lists their
 * Message-ID and size, header blocks decide the rest, and the matches are
 * recorded in this run (ul_resolve_*). An upload intent (an APPENDING row
 * without UID) left by an interrupted run: the header hash of the file or
 * a search by Message-ID finds the message the APPEND stored, which becomes
 * the record; without a match the message is uploaded again
 * (intents_*, recover_intents, settle_intents).
 *
 * Separate from the folder executor (sync/folder.c), which only sends the
 * APPENDs, because this is what keeps an upload from being lost or made
 * twice when its answer never came: matching, not transfer. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "store/index.h"
#include "store/maildir.h"
#include "sync/engine_int.h"
#include "sync/imap.h"
#include "sync/msgfacts.h"
#include "sync/plan.h"

/* ---- folder: upload intents left by a crash ------------------------------------------ */

struct rec_ctx {
    struct session *e;
    size_t index;
};

static bool base_has_uid(const struct fstate *f, uint32_t uid)
{
    for (size_t i = 0; i < f->base.n; i++) {
        if (f->base.v[i].uid == uid) {
            return true;
        }
    }
    return false;
}

static void on_recover_search(struct imap *im, const struct imap_result *res, void *arg)
{
    struct rec_ctx *rc = arg;
    struct session *e = rc->e;
    size_t ix = rc->index;
    free(rc);
    if (e->finished) {
        return;
    }
    struct fstate *f = e->f;
    if (cmd_ok(e, res, "UID SEARCH")) {
        struct idx_msg *m = &f->intents[ix];
        /* The newest match nobody else claims is the one we appended. */
        for (size_t i = res->nuids; i > 0 && m->uid == 0; i--) {
            uint32_t uid = res->uids[i - 1];
            bool taken = base_has_uid(f, uid);
            for (size_t k = 0; k < f->nintents && !taken; k++) {
                taken = f->intents[k].uid == uid;
            }
            if (!taken) {
                m->uid = uid;
            }
        }
    }
    phase_cmd_done(e);
}

static void quote_into(struct sbuf *sb, const char *s)
{
    sbuf_addc(sb, '"');
    for (; *s != '\0'; s++) {
        if (*s == '"' || *s == '\\') {
            sbuf_addc(sb, '\\');
        }
        sbuf_addc(sb, *s);
    }
    sbuf_addc(sb, '"');
}

/* For each APPENDING row whose file is still here and that the header hash
 * did not resolve: search the server by Message-ID. A match becomes the
 * record; no match means the APPEND never happened and the message is
 * uploaded as new. */
void recover_intents(struct session *e)
{
    struct fstate *f = e->f;
    f->phase = FP_RECOVER;
    f->pending = 1;
    for (size_t i = 0; i < f->nintents && f->selected && f->md != NULL; i++) {
        struct idx_msg *m = &f->intents[i];
        if (m->uid != 0 || i >= f->nitf || f->itf[i].msgid == NULL) {
            continue;
        }
        struct sbuf sb = {0};
        sbuf_adds(&sb, "HEADER Message-ID ");
        quote_into(&sb, f->itf[i].msgid);
        struct rec_ctx *rc = xmalloc(sizeof(*rc));
        rc->e = e;
        rc->index = i;
        f->pending++;
        int r = e->ro->uid_search(e->im, sb.buf, on_recover_search, rc);
        if (r < 0) {
            f->pending--;
            free(rc);
            queue_failed(e, r, "UID SEARCH");
        }
        sbuf_free(&sb);
    }
    phase_cmd_done(e);
}

/* Turns resolved intents into base records and drops the others. */
int settle_intents(struct session *e)
{
    struct fstate *f = e->f;
    if (f->nintents == 0) {
        return 0;
    }
    struct idx_msg *puts = xcalloc(f->nintents, sizeof(*puts));
    const char **drops = xcalloc(f->nintents, sizeof(*drops));
    size_t np = 0, nd = 0;
    for (size_t i = 0; i < f->nintents; i++) {
        struct idx_msg *m = &f->intents[i];
        if (m->uid != 0) {
            m->state = IDX_MSG_SYNCED;
            m->flags &= (uint8_t)~IDX_FLAGS_MOVING; /* a move's intent, found */
            puts[np++] = *m;
            idx_rows_add(&f->base, m);
            fcounts(e)->adopted++;
        } else {
            drops[nd++] = m->lid;
        }
    }
    struct idx_ops o = {
        .folder = f->job->name, .puts = puts, .nputs = np, .drop_lids = drops, .ndrop_lids = nd};
    int r = idx_apply(e, &o);
    free(puts);
    free(drops);
    f->nintents = 0;
    return r;
}

/* Upload intents left by an interrupted run: reads each file's header (and
 * the wire size of those without a Message-ID), and lines those up with
 * the server messages of the same size that no record claims. Their header
 * hash decides (intents_finish); the others are searched by Message-ID. */
void intents_prepare(struct session *e)
{
    struct fstate *f = e->f;
    f->itf = xcalloc(f->nintents + 1, sizeof(*f->itf));
    f->nitf = f->nintents;
    f->it_l = xcalloc(f->nintents + 1, sizeof(*f->it_l));
    f->it_nl = 0;
    for (size_t i = 0; i < f->nintents; i++) {
        struct lfact *lf = &f->itf[i];
        struct md_msg *lm = md_scan_find(f->scan, f->intents[i].lid);
        int fd = lm != NULL ? md_open_msg(f->md, lm) : -ENOENT;
        if (fd < 0) {
            continue;
        }
        if (msgfacts_read_file(fd, &lf->msgid, lf->hh, &lf->have_hh, NULL) == 0 &&
            lf->msgid == NULL && lf->have_hh && wire_size(fd, &lf->wire) == 0) {
            lf->have_wire = true;
            f->it_l[f->it_nl++] =
                (struct plan_match){.size = lf->wire, .hh = lf->hh, .ix = i, .pair = -1};
        }
        close(fd);
    }
    if (f->it_nl == 0) {
        return;
    }
    uint32_t *known = xcalloc(f->base.n + 1, sizeof(*known));
    for (size_t i = 0; i < f->base.n; i++) {
        known[i] = f->base.v[i].uid;
    }
    qsort(known, f->base.n, sizeof(*known), u32_cmp);
    f->it_s = xcalloc(f->nsmsgs + 1, sizeof(*f->it_s));
    f->it_ns = 0;
    for (size_t i = 0; i < f->nsmsgs; i++) {
        const struct smsg *sm = &f->smsgs[i];
        if (sm->size == 0 || bsearch(&sm->uid, known, f->base.n, sizeof(*known), u32_cmp) != NULL) {
            continue;
        }
        f->it_s[f->it_ns++] = (struct plan_match){.size = sm->size, .ix = i, .pair = -1};
    }
    free(known);
    plan_match_ids(f->it_s, f->it_ns, f->it_l, f->it_nl);
}

void intents_finish(struct session *e)
{
    struct fstate *f = e->f;
    if (f->it_nl == 0) {
        return;
    }
    for (size_t i = 0; i < f->it_ns; i++) {
        const struct smsg *sm = &f->smsgs[f->it_s[i].ix];
        f->it_s[i].hh = sm->have_hh ? sm->hh : NULL;
    }
    plan_match_headers(f->it_s, f->it_ns, f->it_l, f->it_nl);
    for (size_t k = 0; k < f->it_nl; k++) {
        if (f->it_l[k].pair >= 0) {
            f->intents[f->it_l[k].ix].uid = f->smsgs[f->it_l[k].pair].uid;
        }
    }
}

/* ---- uploads without APPENDUID ----------------------------------------------------------------
 */

static bool claimed_uid(const struct fstate *f, uint32_t uid)
{
    for (size_t i = 0; i < f->nul_done; i++) {
        if (f->ul_done[i].uid == uid) {
            return true;
        }
    }
    return false;
}

static void on_ulres_msg(struct imap *im, const struct imap_msg *m, void *sink, void *arg)
{
    struct session *e = arg;
    struct fstate *f = e->f;
    /* "UID n:*" also answers the last message below n: not ours. */
    if (f == NULL || m->uid < f->ul_first || !(m->have & IMAP_FETCH_SIZE) ||
        claimed_uid(f, m->uid)) {
        return;
    }
    xgrow(&f->ul_srv, &f->ul_srv_cap, f->nul_srv + 1, sizeof(*f->ul_srv));
    struct smsg *s = &f->ul_srv[f->nul_srv++];
    memset(s, 0, sizeof(*s));
    s->uid = m->uid;
    s->size = m->size;
    s->msgid = m->message_id != NULL ? xstrdup(m->message_id) : NULL;
}

/* The FETCHes that find the uploads' UIDs: one that did not end OK gave a
 * partial answer, and matching on it could pair an upload with the wrong
 * message, so then none is resolved in this run. */
static void on_ul_fetch_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct session *e = arg;
    if (e->finished) {
        return;
    }
    if (!cmd_ok(e, res, "UID FETCH") && e->f != NULL) {
        e->f->ul_lookup_failed = true;
    }
    phase_cmd_done(e);
}

static const struct imap_fetch_cb ulres_cb = {.on_message = on_ulres_msg, .done = on_ul_fetch_done};

static int smsg_uid_cmp(const void *a, const void *b)
{
    uint32_t x = ((const struct smsg *)a)->uid, y = ((const struct smsg *)b)->uid;
    return x < y ? -1 : x > y;
}

static void on_ulhdr_msg(struct imap *im, const struct imap_msg *m, void *sink, void *arg)
{
    struct session *e = arg;
    struct fstate *f = e->f;
    if (f == NULL || m->uid == 0 || m->header == NULL) {
        return;
    }
    struct smsg key = {.uid = m->uid};
    struct smsg *s = bsearch(&key, f->ul_srv, f->nul_srv, sizeof(*f->ul_srv), smsg_uid_cmp);
    if (s != NULL) {
        msgfacts_header_hash(m->header, m->header_len, s->hh, NULL);
        s->have_hh = true;
    }
}

static const struct imap_fetch_cb ulhdr_cb = {.on_message = on_ulhdr_msg, .done = on_ul_fetch_done};

/* Some APPENDs came back without APPENDUID (the server lacks UIDPLUS):
 * list the UIDs the APPENDs can have (from the UIDNEXT seen at SELECT on)
 * with Message-ID and size, in one command, to record them in this run. */
void ul_resolve_fetch(struct session *e)
{
    struct fstate *f = e->f;
    f->phase = FP_UL_FETCH;
    f->pending = 1;
    uint32_t first = f->mb.uidnext;
    if (first == 0) {
        /* No UIDNEXT from SELECT: everything after the UIDs known here. */
        first = 1;
        for (size_t i = 0; i < f->base.n; i++) {
            first = f->base.v[i].uid >= first ? f->base.v[i].uid + 1 : first;
        }
        for (size_t i = 0; i < f->nsmsgs; i++) {
            first = f->smsgs[i].uid >= first ? f->smsgs[i].uid + 1 : first;
        }
    }
    f->ul_first = first;
    char set[32];
    int r = imap_uid_range_format(first, IMAP_UID_STAR, set, sizeof(set));
    if (r == 0) {
        f->pending++;
        r = e->ro->uid_fetch(e->im, set, IMAP_FETCH_SIZE | IMAP_FETCH_MESSAGE_ID, 0, false,
                             &ulres_cb, e);
        if (r < 0) {
            f->pending--;
        }
    }
    if (r < 0) {
        queue_failed(e, r, "UID FETCH");
    }
    phase_cmd_done(e);
}

/* Pairs the answered APPENDs with the new UIDs by Message-ID and size, and
 * fetches the header blocks that must decide the rest. */
void ul_resolve_headers(struct session *e)
{
    struct fstate *f = e->f;
    f->phase = FP_UL_HEADERS;
    f->pending = 1;
    if (f->nul_srv > 1) {
        qsort(f->ul_srv, f->nul_srv, sizeof(*f->ul_srv), smsg_uid_cmp);
    }
    f->ul_ms = xcalloc(f->nul_srv + 1, sizeof(*f->ul_ms));
    for (size_t i = 0; i < f->nul_srv; i++) {
        f->ul_ms[i] = (struct plan_match){
            .msgid = f->ul_srv[i].msgid, .size = f->ul_srv[i].size, .ix = i, .pair = -1};
    }
    f->ul_nms = f->nul_srv;
    f->ul_ml = xcalloc(f->nul_pend + 1, sizeof(*f->ul_ml));
    for (size_t k = 0; k < f->nul_pend; k++) {
        const struct lfact *lf = &f->ulf[f->ul_pend_ix[k]];
        f->ul_ml[k] = (struct plan_match){.msgid = lf->msgid,
                                          .size = f->ul_pend[k].size,
                                          .hh = lf->have_hh ? lf->hh : NULL,
                                          .ix = k,
                                          .pair = -1};
    }
    f->ul_nml = f->nul_pend;
    plan_match_ids(f->ul_ms, f->ul_nms, f->ul_ml, f->ul_nml);
    uint32_t *uids = xcalloc(f->ul_nms + 1, sizeof(*uids));
    size_t n = 0;
    for (size_t i = 0; i < f->ul_nms; i++) {
        if (f->ul_ms[i].need_hh) {
            uids[n++] = f->ul_srv[f->ul_ms[i].ix].uid;
        }
    }
    fetch_uids(e, uids, n, IMAP_FETCH_HEADER, &ulhdr_cb, "UID FETCH");
    free(uids);
    phase_cmd_done(e);
}

/* Records the APPENDs whose UID was found; the others keep their intent row
 * (the next run finds them) and hold the folder state back, so that the
 * next run lists their UIDs again. */
void ul_resolve_finish(struct session *e)
{
    struct fstate *f = e->f;
    for (size_t i = 0; i < f->ul_nms; i++) {
        const struct smsg *s = &f->ul_srv[f->ul_ms[i].ix];
        f->ul_ms[i].hh = s->have_hh ? s->hh : NULL;
    }
    plan_match_headers(f->ul_ms, f->ul_nms, f->ul_ml, f->ul_nml);
    for (size_t k = 0; k < f->ul_nml; k++) {
        const struct plan_match *m = &f->ul_ml[k];
        if (m->pair < 0) {
            f->ul_unresolved++;
            continue;
        }
        struct idx_msg rec = f->ul_pend[m->ix];
        rec.uid = f->ul_srv[m->pair].uid;
        rec.state = IDX_MSG_SYNCED;
        xgrow(&f->ul_done, &f->ul_done_cap, f->nul_done + 1, sizeof(*f->ul_done));
        f->ul_done[f->nul_done++] = rec;
    }
    if (f->ul_unresolved > 0) {
        log_info("%s: %s: %u uploaded message(s) not found among the new UIDs (the server sends "
                 "no APPENDUID); the next run looks for them again",
                 e->acct->name, f->job->name, f->ul_unresolved);
    }
}
