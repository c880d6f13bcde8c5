/* The folder planner: see folderplan.h. */
#include "sync/folderplan.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/util.h"
#include "sync/imap.h"

static bool inbox_prefixed(const char *name)
{
    return strncasecmp(name, "INBOX", 5) == 0 && (name[5] == '\0' || name[5] == '/');
}

static bool is_inbox(const char *name)
{
    return strcasecmp(name, "INBOX") == 0;
}

/* The mapping to a local path writes the INBOX level in one spelling
 * (IMAP's INBOX is case-insensitive) and is exact for everything else. */
bool folderplan_same_local(const char *a, const char *b)
{
    if (inbox_prefixed(a) && inbox_prefixed(b)) {
        return strcmp(a + 5, b + 5) == 0;
    }
    return strcmp(a, b) == 0;
}

uint64_t folderplan_local_hash(const char *name)
{
    if (inbox_prefixed(name)) {
        uint64_t h = str_hash(name + 5, strlen(name + 5));
        return h ^ 0x9e3779b97f4a7c15ull; /* apart from a name without the INBOX level */
    }
    return str_hash(name, strlen(name));
}

const char *folderplan_action_name(enum folderplan_action a)
{
    switch (a) {
    case FOLDERPLAN_NONE:
        return "none";
    case FOLDERPLAN_SYNC:
        return "sync";
    case FOLDERPLAN_CREATE_LOCAL:
        return "create-local";
    case FOLDERPLAN_CREATE_SERVER:
        return "create-server";
    case FOLDERPLAN_RESYNC:
        return "resync";
    case FOLDERPLAN_DELETE_SERVER:
        return "delete-server";
    case FOLDERPLAN_DELETE_LOCAL:
        return "delete-local";
    case FOLDERPLAN_FORGET:
        return "forget";
    case FOLDERPLAN_REFUSE:
        return "refuse";
    case FOLDERPLAN_RENAME_SERVER:
        return "rename-server";
    case FOLDERPLAN_RENAME_LOCAL:
        return "rename-local";
    }
    return "?";
}

/* The plan under construction. Lookups go by local directory through
 * hashes: a server with 50,000 folders names each of them in LIST, and a
 * linear search per name made the listing quadratic. */
struct build {
    const struct folderplan_input *in;
    struct folderplan *p;
    size_t folders_cap, skips_cap;
    struct strindex folder_ix; /* local directory of a folder -> position */
    /* Selectable listed folders, as positions in in->server. */
    size_t *listed;
    size_t nlisted, listed_cap;
    struct strindex listed_ix;
    /* Listed folders whose local directory was taken by an earlier listed
     * spelling: positions in in->server, settled once the list is in. */
    size_t *collide;
    size_t ncollide, collide_cap;
};

static struct folderplan_folder *find_folder(struct build *b, const char *name)
{
    uint64_t h = folderplan_local_hash(name);
    size_t it = 0, i;
    while (strindex_next(&b->folder_ix, h, &it, &i)) {
        if (folderplan_same_local(b->p->folders[i].name, name)) {
            return &b->p->folders[i];
        }
    }
    return NULL;
}

static struct folderplan_folder *add_folder(struct build *b, const char *name)
{
    struct folderplan_folder *f = find_folder(b, name);
    if (f != NULL) {
        return f;
    }
    struct folderplan *p = b->p;
    xgrow(&p->folders, &b->folders_cap, p->nfolders + 1, sizeof(*p->folders));
    f = &p->folders[p->nfolders++];
    memset(f, 0, sizeof(*f));
    f->name = xstrdup(is_inbox(name) ? "INBOX" : name);
    f->server = -1;
    strindex_add(&b->folder_ix, folderplan_local_hash(f->name), p->nfolders - 1);
    return f;
}

static struct folderplan_skip *add_skip(struct build *b, const char *name, long server, long local,
                                        const char *reason)
{
    struct folderplan *p = b->p;
    xgrow(&p->skips, &b->skips_cap, p->nskips + 1, sizeof(*p->skips));
    struct folderplan_skip *s = &p->skips[p->nskips++];
    s->name = xstrdup(name);
    s->server = server;
    s->local = local;
    s->reason = reason;
    s->warning = NULL;
    return s;
}

static bool listed(const struct build *b, const char *name)
{
    uint64_t h = folderplan_local_hash(name);
    size_t it = 0, i;
    while (strindex_next(&b->listed_ix, h, &it, &i)) {
        if (folderplan_same_local(b->in->server[b->listed[i]].name, name)) {
            return true;
        }
    }
    return false;
}

static bool known(const struct build *b, const char *name)
{
    return b->in->known != NULL && b->in->known(name, b->in->known_arg);
}

/* One listed folder: a candidate, a collision to settle later, or a skip. */
static void take_server(struct build *b, size_t i)
{
    const struct folderplan_input *in = b->in;
    const struct folderplan_server *s = &in->server[i];
    if ((s->attrs & IMAP_LIST_TRASH) && in->trash == NULL && b->p->trash == NULL) {
        b->p->trash = xstrdup(s->name);
    }
    if (!(s->attrs & (IMAP_LIST_NOSELECT | IMAP_LIST_NONEXISTENT))) {
        xgrow(&b->listed, &b->listed_cap, b->nlisted + 1, sizeof(*b->listed));
        b->listed[b->nlisted] = i;
        strindex_add(&b->listed_ix, folderplan_local_hash(s->name), b->nlisted++);
    }
    if (s->attrs & (IMAP_LIST_NOSELECT | IMAP_LIST_NONEXISTENT)) {
        add_skip(b, s->name, (long)i, -1, "not selectable (\\Noselect or \\NonExistent)");
        return;
    }
    if (s->attrs & (IMAP_LIST_ALL | IMAP_LIST_FLAGGED)) {
        add_skip(b, s->name, (long)i, -1, "a virtual folder (\\All or \\Flagged)");
        return;
    }
    if (!s->selected) {
        add_skip(b, s->name, (long)i, -1, "not selected by the folder patterns");
        return;
    }
    if (in->subscribed_only && !(s->attrs & IMAP_LIST_SUBSCRIBED) && !is_inbox(s->name)) {
        add_skip(b, s->name, (long)i, -1, "not subscribed (subscribed_only)");
        return;
    }
    struct folderplan_folder *prev = find_folder(b, s->name);
    if (prev != NULL && prev->on_server && strcmp(prev->name, s->name) != 0 && !is_inbox(s->name)) {
        /* A server that keeps "inbox/x" apart from "INBOX/x" (Dovecot does
         * not): both would land in one directory and mix. */
        xgrow(&b->collide, &b->collide_cap, b->ncollide + 1, sizeof(*b->collide));
        b->collide[b->ncollide++] = i;
        return;
    }
    struct folderplan_folder *f = add_folder(b, s->name);
    f->on_server = true;
    f->server = (long)i;
}

/* Of listed folders that would share one local directory, the one the index
 * already syncs there keeps it, else the one first in byte order: a rule
 * that does not depend on the order of the LIST answer, so the same folder
 * keeps the directory on every run. Settled one newcomer at a time against
 * the current holder, which picks the same winner in any order. */
static void resolve_collisions(struct build *b)
{
    const struct folderplan_server *srv = b->in->server;
    for (size_t i = 0; i < b->ncollide; i++) {
        size_t c = b->collide[i];
        struct folderplan_folder *f = find_folder(b, srv[c].name);
        bool f_known = known(b, f->name);
        bool c_known = known(b, srv[c].name);
        if ((c_known && !f_known) || (c_known == f_known && strcmp(srv[c].name, f->name) < 0)) {
            /* The newcomer takes the folder; the old holder is the loser. */
            size_t old = (size_t)f->server;
            free(f->name);
            f->name = xstrdup(srv[c].name);
            f->server = (long)c;
            b->collide[i] = old;
        }
    }
    for (size_t i = 0; i < b->ncollide; i++) {
        const char *name = srv[b->collide[i]].name;
        struct folderplan_skip *s =
            add_skip(b, name, (long)b->collide[i], -1, "its local directory is another folder's");
        s->warning = xasprintf("folder %s is not synced: its local directory is the one of "
                               "folder %s (INBOX is case-insensitive on disk); rename one of "
                               "them on the server",
                               name, find_folder(b, name)->name);
    }
}

/* ---- renames ------------------------------------------------------------------------------- */

/* Messages two sorted identity lists share. */
static size_t overlap(const struct folderplan_ids *a, const struct folderplan_ids *b)
{
    size_t i = 0, j = 0, n = 0;
    while (i < a->n && j < b->n) {
        int c = strcmp(a->v[i], b->v[j]);
        if (c == 0) {
            n++;
            i++;
            j++;
        } else if (c < 0) {
            i++;
        } else {
            j++;
        }
    }
    return n;
}

static bool has_id(const struct folderplan_ids *ids, const char *id)
{
    size_t lo = 0, hi = ids->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ids->v[mid], id);
        if (c == 0) {
            return true;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return false;
}

/* Where a rename can start or end: not INBOX, and a name no listed
 * folder has (a RENAME onto it would fail). */
static bool vanished_here(const struct folderplan_folder *f)
{
    return f->on_server && f->in_index && !f->on_local && !is_inbox(f->name);
}

static bool new_here(const struct build *b, const struct folderplan_folder *f)
{
    return f->on_local && !f->in_index && !f->on_server && !is_inbox(f->name) &&
           !listed(b, f->name);
}

static bool gone_from_server(const struct build *b, const struct folderplan_folder *f)
{
    return f->on_local && f->in_index && !f->on_server && !is_inbox(f->name) && !listed(b, f->name);
}

static bool new_on_server(const struct folderplan_folder *f)
{
    return f->on_server && !f->in_index && !f->on_local && !is_inbox(f->name);
}

struct pair {
    size_t from, to; /* positions in p->folders */
    size_t score;    /* larger pairs first */
    bool verify;
};

static int pair_cmp(const void *a, const void *b)
{
    const struct pair *x = a, *y = b;
    if (x->score != y->score) {
        return x->score > y->score ? -1 : 1;
    }
    if (x->from != y->from) {
        return x->from < y->from ? -1 : 1;
    }
    return x->to < y->to ? -1 : x->to > y->to;
}

/* Whether the messages of a local folder new here are those the index
 * records for a folder that vanished here: at least 90 % of either set in
 * the other. Returns the overlap, 0 when they do not match. */
static size_t local_match(const struct build *b, const char *from, const char *to)
{
    const struct folderplan_input *in = b->in;
    struct folderplan_ids old, now;
    if (!in->index_ids(from, &old, in->facts_arg) || !in->local_ids(to, &now, in->facts_arg) ||
        old.n == 0 || now.n == 0) {
        return 0;
    }
    size_t n = overlap(&old, &now);
    if (n * 10 < old.n * 9 || n * 10 < now.n * 9) {
        return 0;
    }
    return n;
}

/* Whether a listed folder new here may be a folder deleted on the server
 * under its new name: 2 certain (same MAILBOXID, or the engine confirmed
 * it), 1 to be confirmed (same UIDVALIDITY, or the server did not say),
 * 0 not. */
static int server_match(const struct build *b, const struct folderplan_folder *from,
                        const struct folderplan_folder *to)
{
    const struct folderplan_input *in = b->in;
    const struct folderplan_server *s = &in->server[to->server];
    struct folderplan_istate st;
    if (!in->index_state(from->name, &st, in->facts_arg)) {
        return 0;
    }
    const char *known = st.mailboxid;
    if (known == NULL && in->index_mailboxid != NULL) {
        known = in->index_mailboxid(from->name, in->mailboxid_arg);
    }
    if (known != NULL && known[0] != '\0' && s->mailboxid != NULL && s->mailboxid[0] != '\0') {
        /* RFC 8474: a MAILBOXID is never reused for another folder, and a
         * RENAME keeps it. */
        return strcmp(known, s->mailboxid) == 0 ? 2 : 0;
    }
    int v = in->verdict != NULL ? in->verdict(from->name, to->name, in->facts_arg)
                                : FOLDERPLAN_UNCHECKED;
    if (v == FOLDERPLAN_RENAMED) {
        return 2;
    }
    if (v == FOLDERPLAN_NOT_RENAMED || st.uidvalidity == 0 || in->verdict == NULL) {
        return 0;
    }
    if (s->has_status && (s->uidvalidity != st.uidvalidity || s->uidnext < st.uidnext)) {
        return 0;
    }
    return 1;
}

static void add_pair(struct pair **v, size_t *n, size_t *cap, size_t from, size_t to, size_t score,
                     bool verify)
{
    xgrow(v, cap, *n + 1, sizeof(**v));
    (*v)[(*n)++] = (struct pair){.from = from, .to = to, .score = score, .verify = verify};
}

/* Whether child is parent + "/" + tail, returning the tail. */
static const char *tail_of(const char *child, const char *parent)
{
    size_t n = strlen(parent);
    if (strncmp(child, parent, n) == 0 && child[n] == '/') {
        return child + n + 1;
    }
    return NULL;
}

static void find_renames(struct build *b)
{
    const struct folderplan_input *in = b->in;
    struct folderplan *p = b->p;
    struct pair *pairs = NULL;
    size_t npairs = 0, cap = 0;
    bool up = in->local_ids != NULL && in->index_ids != NULL;
    bool down = in->index_state != NULL;
    for (size_t i = 0; i < p->nfolders; i++) {
        const struct folderplan_folder *from = &p->folders[i];
        bool v = up && vanished_here(from), g = down && gone_from_server(b, from);
        for (size_t j = 0; (v || g) && j < p->nfolders; j++) {
            const struct folderplan_folder *to = &p->folders[j];
            if (v && new_here(b, to)) {
                size_t n = local_match(b, from->name, to->name);
                if (n > 0) {
                    add_pair(&pairs, &npairs, &cap, i, j, n, false);
                }
            } else if (g && new_on_server(to)) {
                int m = server_match(b, from, to);
                if (m > 0) {
                    /* Certain pairs before those still to be confirmed. */
                    add_pair(&pairs, &npairs, &cap, i, j, m == 2 ? SIZE_MAX : 1, m == 1);
                }
            }
        }
    }
    if (npairs > 1) {
        qsort(pairs, npairs, sizeof(*pairs), pair_cmp);
    }
    bool *used = xcalloc(p->nfolders + 1, sizeof(*used));
    for (size_t k = 0; k < npairs; k++) {
        struct pair *q = &pairs[k];
        if (used[q->from] || used[q->to]) {
            continue;
        }
        used[q->from] = used[q->to] = true;
        struct folderplan_folder *from = &p->folders[q->from], *to = &p->folders[q->to];
        bool local_side = from->on_local; /* renamed on the server */
        to->action = local_side ? FOLDERPLAN_RENAME_LOCAL : FOLDERPLAN_RENAME_SERVER;
        to->reason = local_side ? "renamed on the server" : "renamed here";
        to->rename_from = xstrdup(from->name);
        to->rename_verify = q->verify;
        from->action = FOLDERPLAN_NONE;
        from->reason = local_side ? "renamed on the server" : "renamed here";
        from->renamed_to = xstrdup(to->name);
        p->nrenames++;
        p->nverify += q->verify;
    }
    /* Children carried by their parent's rename. */
    for (size_t i = 0; i < p->nfolders; i++) {
        struct folderplan_folder *c = &p->folders[i];
        if (c->rename_from == NULL) {
            continue;
        }
        for (size_t j = 0; j < p->nfolders && !c->rename_implied; j++) {
            const struct folderplan_folder *q = &p->folders[j];
            const char *t1, *t2;
            if (q != c && q->rename_from != NULL && q->action == c->action &&
                (t1 = tail_of(c->rename_from, q->rename_from)) != NULL &&
                (t2 = tail_of(c->name, q->name)) != NULL && strcmp(t1, t2) == 0) {
                c->rename_implied = true;
            }
        }
    }
    free(used);
    free(pairs);
}

/* A folder that vanished here without a rename: how many of the messages
 * the index records for it are in other local folders now. */
static void count_moved(const struct build *b, struct folderplan_folder *f)
{
    const struct folderplan_input *in = b->in;
    struct folderplan_ids old;
    if (in->index_ids == NULL || in->local_ids == NULL ||
        !in->index_ids(f->name, &old, in->facts_arg) || old.n == 0) {
        return;
    }
    f->known_msgs = old.n;
    bool *found = xcalloc(old.n + 1, sizeof(*found));
    const struct folderplan *p = b->p;
    for (size_t i = 0; i < p->nfolders; i++) {
        struct folderplan_ids now;
        if (!p->folders[i].on_local || !in->local_ids(p->folders[i].name, &now, in->facts_arg)) {
            continue;
        }
        for (size_t k = 0; k < old.n; k++) {
            if (!found[k] && has_id(&now, old.v[k])) {
                found[k] = true;
                f->moved_msgs++;
            }
        }
    }
    if (f->moved_msgs > 0) {
        f->lost_ids = xcalloc(old.n - f->moved_msgs + 1, sizeof(*f->lost_ids));
        for (size_t k = 0; k < old.n; k++) {
            if (!found[k]) {
                f->lost_ids[f->nlost++] = xstrdup(old.v[k]);
            }
        }
    }
    free(found);
}

/* Whether the index records no message for the folder (asked, not
 * assumed: without the callback nothing is known). */
static bool index_empty(const struct folderplan_input *in, const char *name)
{
    struct folderplan_ids ids;
    return in->index_ids != NULL && in->index_ids(name, &ids, in->facts_arg) && ids.n == 0;
}

static void decide_vanished(const struct build *b, struct folderplan_folder *f)
{
    const struct folderplan_input *in = b->in;
    bool may_delete = in->delete_folders && !is_inbox(f->name);
    count_moved(b, f);
    bool all_moved = f->known_msgs > 0 && f->moved_msgs == f->known_msgs;
    if (all_moved && may_delete) {
        /* Nothing of it is lost here: its messages live in other local
         * folders, so the folder itself is what the user deleted. */
        f->action = FOLDERPLAN_DELETE_SERVER;
        f->reason = "deleted here after its messages were moved to other folders, and "
                    "delete_folders is set";
    } else if (in->moves && all_moved && !in->force) {
        /* The folders they moved to move them on the server in this run:
         * nothing is left to guard. The next run finds it empty. */
        f->action = FOLDERPLAN_NONE;
        f->reason = "the local folder vanished after its messages were moved to other folders; "
                    "they are moved on the server too";
    } else if (in->force && f->moved_msgs > 0) {
        /* Downloading it again would make a second copy here of every
         * message that lives in another folder now. */
        f->action = FOLDERPLAN_RESYNC;
        f->reason = all_moved ? "the local folder vanished and its messages are in other local "
                                "folders; --force deletes them on the server"
                              : "the local folder vanished and some of its messages are in other "
                                "local folders; --force deletes those on the server and "
                                "downloads the others again";
    } else if (in->force) {
        f->action = FOLDERPLAN_RESYNC;
        f->reason = "the local folder vanished; --force downloads it again";
    } else if (may_delete) {
        f->action = FOLDERPLAN_DELETE_SERVER;
        f->reason = "deleted here, and delete_folders is set";
    } else if (f->moved_msgs > 0 && in->moves) {
        f->action = FOLDERPLAN_REFUSE;
        f->reason = "the local folder vanished; some of its messages moved to other folders";
        f->error = xasprintf("folder '%s': the local folder vanished; %zu of its %zu messages are "
                             "in other local folders now and are moved there on the server, the "
                             "other %zu are not deleted on the server. To download those again, "
                             "run 'mailsync sync --force %s' (or set delete_folders: true to "
                             "delete the folder on the server)",
                             f->name, f->moved_msgs, f->known_msgs, f->known_msgs - f->moved_msgs,
                             in->account);
        f->user_fix = true;
    } else if (f->moved_msgs > 0) {
        f->action = FOLDERPLAN_REFUSE;
        f->reason = "the local folder vanished; its messages moved to other folders";
        if (all_moved) {
            f->error = xasprintf("folder '%s': the local folder vanished and all its %zu messages "
                                 "are in other local folders now; not deleting them on the "
                                 "server. To delete them there (the folder stays, empty), run "
                                 "'mailsync sync --force %s'; to delete the folder there too, set "
                                 "delete_folders: true",
                                 f->name, f->known_msgs, in->account);
        } else {
            f->error = xasprintf("folder '%s': the local folder vanished and %zu of its %zu "
                                 "messages are in other local folders now; not deleting anything "
                                 "on the server. To download the other %zu again and delete those "
                                 "%zu on the server, run 'mailsync sync --force %s' (or set "
                                 "delete_folders: true to delete the folder on the server)",
                                 f->name, f->moved_msgs, f->known_msgs,
                                 f->known_msgs - f->moved_msgs, f->moved_msgs, in->account);
        }
        f->user_fix = true;
    } else if (index_empty(in, f->name)) {
        /* Nothing synced of it was here (its messages moved away, or it
         * never had any): syncing it again can neither duplicate nor bring
         * back anything, and the guard (which keeps the server's copy of
         * what vanished) has nothing to keep. Folders are deleted on the
         * server only with delete_folders (above). */
        f->action = FOLDERPLAN_CREATE_LOCAL;
        f->reason = "the local folder vanished while the index recorded no message in it: made "
                    "again (delete_folders: true deletes such a folder on the server)";
    } else {
        f->action = FOLDERPLAN_REFUSE;
        f->reason = "the local folder vanished";
        f->error = xasprintf("folder '%s': the local folder vanished; not deleting the "
                             "messages on the server. To download it again, run 'mailsync "
                             "sync --force %s' (or set delete_folders: true to delete it on "
                             "the server too)",
                             f->name, in->account);
        f->user_fix = true;
    }
}

static void decide(const struct build *b, struct folderplan_folder *f)
{
    const struct folderplan_input *in = b->in;
    bool may_delete = in->delete_folders && !is_inbox(f->name);
    if (f->rename_from != NULL || f->renamed_to != NULL) {
        return; /* find_renames decided */
    }
    if (f->on_server && f->on_local) {
        f->action = FOLDERPLAN_SYNC;
        f->reason = "on the server and here";
    } else if (f->on_server && !f->in_index) {
        f->action = FOLDERPLAN_CREATE_LOCAL;
        f->reason = "new on the server";
    } else if (f->on_server) {
        decide_vanished(b, f);
    } else if (f->on_local && !f->in_index) {
        f->action = FOLDERPLAN_CREATE_SERVER;
        f->reason = "new here";
    } else if (f->on_local) {
        if (listed(b, f->name)) {
            f->action = FOLDERPLAN_NONE;
            f->reason = "still on the server, only not selected now (subscribed_only, the "
                        "patterns, a virtual folder)";
        } else if (may_delete) {
            f->action = FOLDERPLAN_DELETE_LOCAL;
            f->reason = "deleted on the server, and delete_folders is set";
        } else {
            f->action = FOLDERPLAN_REFUSE;
            f->reason = "deleted on the server";
            f->error = xasprintf("folder '%s' was deleted on the server; the local copy is kept "
                                 "(delete it yourself, move its messages to another folder to "
                                 "upload them, or set delete_folders: true to delete it here too)",
                                 f->name);
            f->user_fix = true;
        }
    } else if (f->in_index && !in->dry_run) {
        f->action = FOLDERPLAN_FORGET;
        f->reason = "gone from both sides";
    } else {
        f->action = FOLDERPLAN_NONE;
        f->reason =
            f->in_index ? "gone from both sides (a dry run keeps its records)" : "on neither side";
    }
}

static int folder_cmp(const void *a, const void *b)
{
    const struct folderplan_folder *x = a, *y = b;
    /* INBOX first, then by name. */
    bool xi = is_inbox(x->name), yi = is_inbox(y->name);
    if (xi != yi) {
        return xi ? -1 : 1;
    }
    return strcmp(x->name, y->name);
}

struct folderplan *folderplan_build(const struct folderplan_input *in)
{
    struct build b = {.in = in, .p = xcalloc(1, sizeof(struct folderplan))};
    for (size_t i = 0; i < in->nserver; i++) {
        take_server(&b, i);
    }
    if (in->trash != NULL) {
        free(b.p->trash);
        b.p->trash = xstrdup(in->trash);
    } else if (b.p->trash == NULL) {
        /* No SPECIAL-USE \Trash (a server without the extension, or one
         * that marks nothing): a top-level folder named Trash, in any case,
         * is where mail clients put deleted mail. */
        for (size_t i = 0; i < b.nlisted; i++) {
            if (strcasecmp(in->server[b.listed[i]].name, "Trash") == 0) {
                b.p->trash = xstrdup(in->server[b.listed[i]].name);
                break;
            }
        }
    }
    resolve_collisions(&b);
    for (size_t i = 0; i < in->nlocal; i++) {
        if (in->local[i].selected) {
            add_folder(&b, in->local[i].name)->on_local = true;
        } else {
            add_skip(&b, in->local[i].name, -1, (long)i, "not selected by the folder patterns");
        }
    }
    for (size_t i = 0; i < in->nindexed; i++) {
        add_folder(&b, in->indexed[i]);
    }
    struct folderplan *p = b.p;
    for (size_t i = 0; i < p->nfolders; i++) {
        p->folders[i].in_index = known(&b, p->folders[i].name);
    }
    find_renames(&b);
    for (size_t i = 0; i < p->nfolders; i++) {
        decide(&b, &p->folders[i]);
    }
    if (p->nfolders > 1) {
        qsort(p->folders, p->nfolders, sizeof(*p->folders), folder_cmp);
    }
    strindex_free(&b.folder_ix);
    strindex_free(&b.listed_ix);
    free(b.listed);
    free(b.collide);
    return p;
}

void folderplan_free(struct folderplan *p)
{
    if (p == NULL) {
        return;
    }
    for (size_t i = 0; i < p->nfolders; i++) {
        free(p->folders[i].name);
        free(p->folders[i].error);
        free(p->folders[i].rename_from);
        free(p->folders[i].renamed_to);
        for (size_t k = 0; k < p->folders[i].nlost; k++) {
            free(p->folders[i].lost_ids[k]);
        }
        free(p->folders[i].lost_ids);
    }
    free(p->folders);
    for (size_t i = 0; i < p->nskips; i++) {
        free(p->skips[i].name);
        free(p->skips[i].warning);
    }
    free(p->skips);
    free(p->trash);
    free(p);
}
