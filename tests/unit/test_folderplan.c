/* LINK: ms_sync ms_store ms_core */
/* Tests for the folder planner (sync/folderplan.h): one table row per case
 * that matters (new on either side, deleted on either side with and without
 * delete_folders, both gone, index-only, the vanished-folder guard with and
 * without --force, INBOX never deleted, spellings that share a local
 * directory, folders filtered out by the patterns, \Noselect, virtual
 * folders, subscribed_only, dry runs), each asserting the decision, its
 * reason, the exact guard message and the whole plan; then the choice of
 * the trash folder, and a listing of 50,000 folders.
 *
 * Views are short strings: the server "name:attrs,..." in LIST order
 * (attrs: n \Noselect, x \NonExistent, a \All, f \Flagged, s \Subscribed,
 * t \Trash, - not selected by the patterns), the local side "name,name:-"
 * (- not selected), the index "name,...". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "sync/folderplan.h"
#include "sync/imap.h"

#define MAXN 8

struct views {
    char buf[3][256];
    struct folderplan_server server[MAXN];
    struct folderplan_local local[MAXN];
    const char *index[MAXN];
    size_t nserver, nlocal, nindex;
};

/* Splits s (in place) at ',' into at most MAXN pieces. */
static size_t split(char *s, char **out)
{
    size_t n = 0;
    if (*s == '\0') {
        return 0;
    }
    for (char *p = s;; p++) {
        if (n == 0 || p[-1] == '\0') {
            assert_true(n < MAXN);
            out[n++] = p;
        }
        if (*p == '\0') {
            break;
        }
        if (*p == ',') {
            *p = '\0';
        }
    }
    return n;
}

/* Cuts "name:attrs" at the last ':' (names in these tables have none). */
static const char *attrs_of(char *item)
{
    char *c = strrchr(item, ':');
    if (c == NULL) {
        return "";
    }
    *c = '\0';
    return c + 1;
}

static void parse(struct views *v, const char *server, const char *local, const char *index)
{
    char *items[MAXN];
    memset(v, 0, sizeof(*v));
    snprintf(v->buf[0], sizeof(v->buf[0]), "%s", server);
    snprintf(v->buf[1], sizeof(v->buf[1]), "%s", local);
    snprintf(v->buf[2], sizeof(v->buf[2]), "%s", index);
    v->nserver = split(v->buf[0], items);
    for (size_t i = 0; i < v->nserver; i++) {
        const char *a = attrs_of(items[i]);
        struct folderplan_server *s = &v->server[i];
        s->name = items[i];
        s->selected = true;
        for (; *a != '\0'; a++) {
            switch (*a) {
            case 'n':
                s->attrs |= IMAP_LIST_NOSELECT;
                break;
            case 'x':
                s->attrs |= IMAP_LIST_NONEXISTENT;
                break;
            case 'a':
                s->attrs |= IMAP_LIST_ALL;
                break;
            case 'f':
                s->attrs |= IMAP_LIST_FLAGGED;
                break;
            case 's':
                s->attrs |= IMAP_LIST_SUBSCRIBED;
                break;
            case 't':
                s->attrs |= IMAP_LIST_TRASH;
                break;
            case '-':
                s->selected = false;
                break;
            default:
                fail_msg("bad attribute letter %c", *a);
            }
        }
    }
    v->nlocal = split(v->buf[1], items);
    for (size_t i = 0; i < v->nlocal; i++) {
        const char *a = attrs_of(items[i]);
        v->local[i].name = items[i];
        v->local[i].selected = strcmp(a, "-") != 0;
    }
    v->nindex = split(v->buf[2], (char **)v->index);
}

static bool known(const char *name, void *arg)
{
    const struct views *v = arg;
    for (size_t i = 0; i < v->nindex; i++) {
        if (strcmp(v->index[i], name) == 0) {
            return true;
        }
    }
    return false;
}

enum {
    DEL = 1,   /* delete_folders */
    FORCE = 2, /* --force */
    DRY = 4,   /* --dry-run */
    SUBS = 8,  /* subscribed_only */
    IDXO = 16, /* the index's folders are passed as indexed (neither side) */
};

static struct folderplan *build(struct views *v, unsigned opts, const char *trash)
{
    struct folderplan_input in = {
        .server = v->server,
        .nserver = v->nserver,
        .local = v->local,
        .nlocal = v->nlocal,
        .known = known,
        .known_arg = v,
        .indexed = (opts & IDXO) ? v->index : NULL,
        .nindexed = (opts & IDXO) ? v->nindex : 0,
        .delete_folders = (opts & DEL) != 0,
        .force = (opts & FORCE) != 0,
        .dry_run = (opts & DRY) != 0,
        .subscribed_only = (opts & SUBS) != 0,
        .trash = trash,
        .account = "acct",
    };
    return folderplan_build(&in);
}

/* The whole plan as "name=action ... -skipped ...", in plan order. */
static void render(const struct folderplan *p, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < p->nfolders; i++) {
        len += (size_t)snprintf(buf + len, cap - len, "%s%s=%s", len > 0 ? " " : "",
                                p->folders[i].name, folderplan_action_name(p->folders[i].action));
        assert_true(len < cap);
    }
    for (size_t i = 0; i < p->nskips; i++) {
        len +=
            (size_t)snprintf(buf + len, cap - len, "%s-%s", len > 0 ? " " : "", p->skips[i].name);
        assert_true(len < cap);
    }
}

#define SKIPPED (-1) /* the row's folder is in skips, not in folders */

#define VANISHED(f)                                                                                \
    "folder '" f "': the local folder vanished; not deleting the messages on the server. To "      \
    "download it again, run 'mailsync sync --force acct' (or set delete_folders: true to "         \
    "delete it on the server too)"
#define SRV_DELETED(f)                                                                             \
    "folder '" f "' was deleted on the server; the local copy is kept (delete it yourself, move "  \
    "its messages to another folder to upload them, or set delete_folders: true to delete it "     \
    "here too)"
#define COLLIDES(f, g)                                                                             \
    "folder " f " is not synced: its local directory is the one of folder " g " (INBOX is "        \
    "case-insensitive on disk); rename one of them on the server"

static const char STILL_LISTED[] =
    "still on the server, only not selected now (subscribed_only, the patterns, a virtual folder)";

struct row {
    const char *what;
    const char *server, *local, *index;
    unsigned opts;
    const char *folder; /* the folder the row is about */
    int action;         /* enum folderplan_action, or SKIPPED */
    const char *reason;
    const char *message; /* the refusal (folders) or the warning (skips); NULL = none */
    const char *plan;    /* render() of the whole plan */
};

static const struct row rows[] = {
    /* New on either side. */
    {"on both sides, synced before", "X", "X", "X", 0, "X", FOLDERPLAN_SYNC,
     "on the server and here", NULL, "X=sync"},
    {"on both sides, new to the index (first sync, adopt)", "X", "X", "", 0, "X", FOLDERPLAN_SYNC,
     "on the server and here", NULL, "X=sync"},
    {"new on the server", "X", "", "", 0, "X", FOLDERPLAN_CREATE_LOCAL, "new on the server", NULL,
     "X=create-local"},
    {"new on the server, dry run", "X", "", "", DRY, "X", FOLDERPLAN_CREATE_LOCAL,
     "new on the server", NULL, "X=create-local"},
    {"new here", "", "X", "", 0, "X", FOLDERPLAN_CREATE_SERVER, "new here", NULL,
     "X=create-server"},
    {"new here, dry run (the engine prints it and plans against nothing)", "", "X", "", DRY, "X",
     FOLDERPLAN_CREATE_SERVER, "new here", NULL, "X=create-server"},
    {"new here, delete_folders changes nothing", "", "X", "", DEL, "X", FOLDERPLAN_CREATE_SERVER,
     "new here", NULL, "X=create-server"},

    /* The local folder vanished (on the server and in the index). */
    {"vanished here: the guard", "X", "", "X", 0, "X", FOLDERPLAN_REFUSE,
     "the local folder vanished", VANISHED("X"), "X=refuse"},
    {"vanished here, dry run: the guard still", "X", "", "X", DRY, "X", FOLDERPLAN_REFUSE,
     "the local folder vanished", VANISHED("X"), "X=refuse"},
    {"vanished here, --force downloads it again", "X", "", "X", FORCE, "X", FOLDERPLAN_RESYNC,
     "the local folder vanished; --force downloads it again", NULL, "X=resync"},
    {"vanished here, delete_folders deletes it on the server", "X", "", "X", DEL, "X",
     FOLDERPLAN_DELETE_SERVER, "deleted here, and delete_folders is set", NULL, "X=delete-server"},
    {"vanished here, --force wins over delete_folders", "X", "", "X", DEL | FORCE, "X",
     FOLDERPLAN_RESYNC, "the local folder vanished; --force downloads it again", NULL, "X=resync"},
    {"vanished here, delete_folders in a dry run (the engine prints after its checks)", "X", "",
     "X", DEL | DRY, "X", FOLDERPLAN_DELETE_SERVER, "deleted here, and delete_folders is set", NULL,
     "X=delete-server"},
    {"INBOX vanished here: never deleted on the server", "INBOX", "", "INBOX", DEL, "INBOX",
     FOLDERPLAN_REFUSE, "the local folder vanished", VANISHED("INBOX"), "INBOX=refuse"},
    {"INBOX vanished here, --force", "INBOX", "", "INBOX", FORCE, "INBOX", FOLDERPLAN_RESYNC,
     "the local folder vanished; --force downloads it again", NULL, "INBOX=resync"},
    {"an unselected local spelling of a selected server folder looks vanished", "INBOX/x",
     "INBOX/x:-", "INBOX/x", 0, "INBOX/x", FOLDERPLAN_REFUSE, "the local folder vanished",
     VANISHED("INBOX/x"), "INBOX/x=refuse -INBOX/x"},

    /* Deleted on the server (here and in the index, not listed). */
    {"deleted on the server: the local copy is kept", "", "X", "X", 0, "X", FOLDERPLAN_REFUSE,
     "deleted on the server", SRV_DELETED("X"), "X=refuse"},
    {"deleted on the server, --force changes nothing", "", "X", "X", FORCE, "X", FOLDERPLAN_REFUSE,
     "deleted on the server", SRV_DELETED("X"), "X=refuse"},
    {"deleted on the server, delete_folders removes it here", "", "X", "X", DEL, "X",
     FOLDERPLAN_DELETE_LOCAL, "deleted on the server, and delete_folders is set", NULL,
     "X=delete-local"},
    {"deleted on the server, delete_folders in a dry run", "", "X", "X", DEL | DRY, "X",
     FOLDERPLAN_DELETE_LOCAL, "deleted on the server, and delete_folders is set", NULL,
     "X=delete-local"},
    {"INBOX deleted on the server: never deleted here", "", "INBOX", "INBOX", DEL, "INBOX",
     FOLDERPLAN_REFUSE, "deleted on the server", SRV_DELETED("INBOX"), "INBOX=refuse"},
    {"only \\Noselect on the server now (a parent kept for its children): deleted", "X:n", "X", "X",
     DEL, "X", FOLDERPLAN_DELETE_LOCAL, "deleted on the server, and delete_folders is set", NULL,
     "X=delete-local -X"},
    {"\\NonExistent on the server: deleted", "X:x", "X", "X", 0, "X", FOLDERPLAN_REFUSE,
     "deleted on the server", SRV_DELETED("X"), "X=refuse -X"},
    {"still listed, not subscribed (subscribed_only): not a deletion", "X", "X", "X", SUBS | DEL,
     "X", FOLDERPLAN_NONE, STILL_LISTED, NULL, "X=none -X"},
    {"still listed, not selected by the patterns there: not a deletion", "X:-", "X", "X", DEL, "X",
     FOLDERPLAN_NONE, STILL_LISTED, NULL, "X=none -X"},
    {"still listed as a virtual folder: not a deletion", "X:a", "X", "X", DEL, "X", FOLDERPLAN_NONE,
     STILL_LISTED, NULL, "X=none -X"},
    {"still listed in another INBOX spelling: not a deletion", "inbox/x:-", "INBOX/x", "INBOX/x",
     DEL, "INBOX/x", FOLDERPLAN_NONE, STILL_LISTED, NULL, "INBOX/x=none -inbox/x"},

    /* Gone from both sides. */
    {"gone from both sides, known to the index: forgotten", "", "", "X", IDXO, "X",
     FOLDERPLAN_FORGET, "gone from both sides", NULL, "X=forget"},
    {"gone from both sides, dry run: records kept", "", "", "X", IDXO | DRY, "X", FOLDERPLAN_NONE,
     "gone from both sides (a dry run keeps its records)", NULL, "X=none"},
    {"an indexed name that is on the server is decided as usual", "X", "X", "X", IDXO, "X",
     FOLDERPLAN_SYNC, "on the server and here", NULL, "X=sync"},

    /* Listed folders that are not synced. */
    {"\\Noselect", "X:n", "", "", 0, "X", SKIPPED, "not selectable (\\Noselect or \\NonExistent)",
     NULL, "-X"},
    {"\\NonExistent", "X:x", "", "", 0, "X", SKIPPED,
     "not selectable (\\Noselect or \\NonExistent)", NULL, "-X"},
    {"\\All", "All:a", "", "", 0, "All", SKIPPED, "a virtual folder (\\All or \\Flagged)", NULL,
     "-All"},
    {"\\Flagged", "Starred:f", "", "", 0, "Starred", SKIPPED,
     "a virtual folder (\\All or \\Flagged)", NULL, "-Starred"},
    {"not selected by the patterns", "X:-", "", "", 0, "X", SKIPPED,
     "not selected by the folder patterns", NULL, "-X"},
    {"a local folder not selected by the patterns", "", "X:-", "X", DEL, "X", SKIPPED,
     "not selected by the folder patterns", NULL, "-X"},
    {"subscribed_only, not subscribed", "X", "", "", SUBS, "X", SKIPPED,
     "not subscribed (subscribed_only)", NULL, "-X"},
    {"subscribed_only, subscribed", "X:s", "", "", SUBS, "X", FOLDERPLAN_CREATE_LOCAL,
     "new on the server", NULL, "X=create-local"},
    {"subscribed_only, INBOX is always synced", "inbox", "", "", SUBS, "INBOX",
     FOLDERPLAN_CREATE_LOCAL, "new on the server", NULL, "INBOX=create-local"},
    {"subscribed_only, not subscribed, synced before and vanished here", "X", "", "X", SUBS, "X",
     SKIPPED, "not subscribed (subscribed_only)", NULL, "-X"},
    {"subscribed_only, an unsubscribed folder new here is created (CREATE will fail)", "X", "X", "",
     SUBS, "X", FOLDERPLAN_CREATE_SERVER, "new here", NULL, "X=create-server -X"},

    /* Spellings that share a local directory. */
    {"INBOX/x and inbox/x, neither known: byte order", "inbox/x,INBOX/x", "", "", 0, "inbox/x",
     SKIPPED, "its local directory is another folder's", COLLIDES("inbox/x", "INBOX/x"),
     "INBOX/x=create-local -inbox/x"},
    {"the same, listed the other way round", "INBOX/x,inbox/x", "", "", 0, "inbox/x", SKIPPED,
     "its local directory is another folder's", COLLIDES("inbox/x", "INBOX/x"),
     "INBOX/x=create-local -inbox/x"},
    {"the one the index knows keeps the directory", "INBOX/x,inbox/x", "INBOX/x", "inbox/x", 0,
     "inbox/x", FOLDERPLAN_SYNC, "on the server and here", NULL, "inbox/x=sync -INBOX/x"},
    {"the loser is named with the winner", "INBOX/x,inbox/x", "INBOX/x", "inbox/x", 0, "INBOX/x",
     SKIPPED, "its local directory is another folder's", COLLIDES("INBOX/x", "inbox/x"),
     "inbox/x=sync -INBOX/x"},
    {"three spellings", "inbox/x,Inbox/x,INBOX/x", "", "", 0, "Inbox/x", SKIPPED,
     "its local directory is another folder's", COLLIDES("Inbox/x", "INBOX/x"),
     "INBOX/x=create-local -inbox/x -Inbox/x"},
    {"INBOX in two cases is one folder, not a collision", "inbox,INBOX", "INBOX", "INBOX", 0,
     "INBOX", FOLDERPLAN_SYNC, "on the server and here", NULL, "INBOX=sync"},
    {"a local INBOX/x joins the server's inbox/x", "inbox/x", "INBOX/x", "", 0, "inbox/x",
     FOLDERPLAN_SYNC, "on the server and here", NULL, "inbox/x=sync"},
    {"other levels are exact: X/a and x/a are two folders", "X/a,x/a", "", "", 0, "x/a",
     FOLDERPLAN_CREATE_LOCAL, "new on the server", NULL, "X/a=create-local x/a=create-local"},

    /* Order: INBOX first, then byte order. */
    {"sync order", "b,a,INBOX,B", "c", "", 0, "c", FOLDERPLAN_CREATE_SERVER, "new here", NULL,
     "INBOX=create-local B=create-local a=create-local b=create-local c=create-server"},
};

static void check_row(const struct row *r)
{
    struct views v;
    parse(&v, r->server, r->local, r->index);
    struct folderplan *p = build(&v, r->opts, NULL);
    char got[512];
    render(p, got, sizeof(got));
    if (strcmp(got, r->plan) != 0) {
        fail_msg("%s: plan '%s', expected '%s'", r->what, got, r->plan);
    }
    const char *reason = NULL, *message = NULL;
    int action = -2;
    bool user_fix = false;
    for (size_t i = 0; i < p->nfolders; i++) {
        if (strcmp(p->folders[i].name, r->folder) == 0) {
            action = (int)p->folders[i].action;
            reason = p->folders[i].reason;
            message = p->folders[i].error;
            user_fix = p->folders[i].user_fix;
        }
    }
    for (size_t i = 0; action == -2 && i < p->nskips; i++) {
        if (strcmp(p->skips[i].name, r->folder) == 0) {
            action = SKIPPED;
            reason = p->skips[i].reason;
            message = p->skips[i].warning;
        }
    }
    if (action != r->action) {
        fail_msg("%s: %s is %s, expected %s", r->what, r->folder,
                 action == SKIPPED ? "skipped"
                 : action < 0      ? "absent"
                                   : folderplan_action_name((enum folderplan_action)action),
                 r->action == SKIPPED ? "skipped"
                                      : folderplan_action_name((enum folderplan_action)r->action));
    }
    if (strcmp(reason, r->reason) != 0) {
        fail_msg("%s: reason '%s', expected '%s'", r->what, reason, r->reason);
    }
    if ((message == NULL) != (r->message == NULL) ||
        (message != NULL && strcmp(message, r->message) != 0)) {
        fail_msg("%s: message '%s', expected '%s'", r->what, message ? message : "(none)",
                 r->message ? r->message : "(none)");
    }
    /* A refusal waits for the user (configuration or --force); nothing
     * else carries an error. */
    assert_int_equal(user_fix, r->action == FOLDERPLAN_REFUSE);
    folderplan_free(p);
}

static void test_rows(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        check_row(&rows[i]);
    }
}

/* What each folder carries besides the decision: the sides it is on and
 * the LIST entry (its attributes and status) the engine takes. */
static void test_sides_and_entries(void **state)
{
    (void)state;
    struct views v;
    parse(&v, "inbox/x,INBOX/x:s,Gone:n,Y", "INBOX/x,Z", "inbox/x,Z,Y");
    struct folderplan *p = build(&v, 0, NULL);
    assert_int_equal(p->nfolders, 3);
    /* inbox/x (known) takes the directory from INBOX/x, listed second. */
    assert_string_equal(p->folders[0].name, "Y");
    assert_int_equal(p->folders[0].server, 3);
    assert_true(p->folders[0].on_server && !p->folders[0].on_local && p->folders[0].in_index);
    assert_string_equal(p->folders[1].name, "Z");
    assert_int_equal(p->folders[1].server, -1);
    assert_true(!p->folders[1].on_server && p->folders[1].on_local && p->folders[1].in_index);
    assert_string_equal(p->folders[2].name, "inbox/x");
    assert_int_equal(p->folders[2].server, 0);
    assert_true(p->folders[2].on_server && p->folders[2].on_local && p->folders[2].in_index);
    assert_int_equal(p->nskips, 2);
    assert_string_equal(p->skips[0].name, "Gone");
    assert_int_equal(p->skips[0].server, 2);
    assert_int_equal(p->skips[0].local, -1);
    assert_null(p->skips[0].warning);
    assert_string_equal(p->skips[1].name, "INBOX/x");
    assert_int_equal(p->skips[1].server, 1);
    assert_non_null(p->skips[1].warning);
    folderplan_free(p);

    /* An unselected local folder's skip points at the local entry. */
    parse(&v, "", "A,B:-", "");
    p = build(&v, 0, NULL);
    assert_int_equal(p->nskips, 1);
    assert_int_equal(p->skips[0].server, -1);
    assert_int_equal(p->skips[0].local, 1);
    folderplan_free(p);
}

/* The index is optional: without it every folder is new. */
static void test_no_index(void **state)
{
    (void)state;
    struct views v;
    parse(&v, "X,inbox/y,INBOX/y", "X,W", "");
    struct folderplan_input in = {
        .server = v.server,
        .nserver = v.nserver,
        .local = v.local,
        .nlocal = v.nlocal,
        .account = "acct",
    };
    struct folderplan *p = folderplan_build(&in);
    char got[256];
    render(p, got, sizeof(got));
    assert_string_equal(got, "INBOX/y=create-local W=create-server X=sync -inbox/y");
    folderplan_free(p);
}

struct trash_row {
    const char *server;
    const char *configured;
    const char *trash; /* NULL = none */
};

static const struct trash_row trash_rows[] = {
    /* The configured folder, whatever the server says (listed or not). */
    {"Bin:t,Trash", "Deleted", "Deleted"},
    /* The first \Trash, before a folder named Trash. */
    {"Trash,Bin:t,Bin2:t", NULL, "Bin"},
    /* \Trash counts even when filtered out or not selectable. */
    {"Bin:t-,Trash", NULL, "Bin"},
    {"Bin:tn,Trash", NULL, "Bin"},
    /* No \Trash: a listed selectable folder named Trash in any case. */
    {"INBOX,TRASH", NULL, "TRASH"},
    {"INBOX,trash:-", NULL, "trash"},
    {"INBOX,trash:a", NULL, "trash"},
    {"INBOX,Trash:n", NULL, NULL},
    {"INBOX,Old/Trash", NULL, NULL},
    {"", NULL, NULL},
};

static void test_trash(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(trash_rows) / sizeof(trash_rows[0]); i++) {
        const struct trash_row *r = &trash_rows[i];
        struct views v;
        parse(&v, r->server, "", "");
        struct folderplan *p = build(&v, 0, r->configured);
        if ((p->trash == NULL) != (r->trash == NULL) ||
            (p->trash != NULL && strcmp(p->trash, r->trash) != 0)) {
            fail_msg("trash of '%s' (configured %s): '%s', expected '%s'", r->server,
                     r->configured ? r->configured : "none", p->trash ? p->trash : "none",
                     r->trash ? r->trash : "none");
        }
        folderplan_free(p);
    }
}

static void test_action_names(void **state)
{
    (void)state;
    const char *seen[FOLDERPLAN_REFUSE + 1];
    for (int a = FOLDERPLAN_NONE; a <= FOLDERPLAN_REFUSE; a++) {
        seen[a] = folderplan_action_name((enum folderplan_action)a);
        assert_string_not_equal(seen[a], "?");
        for (int b = FOLDERPLAN_NONE; b < a; b++) {
            assert_string_not_equal(seen[a], seen[b]);
        }
    }
}

/* The INBOX level in any case shares a directory, the rest is exact, and
 * the hash agrees with the comparison. */
static void test_same_local(void **state)
{
    (void)state;
    static const struct {
        const char *a, *b;
        bool same;
    } pairs[] = {
        {"INBOX", "inbox", true},
        {"INBOX/x", "inbox/x", true},
        {"Inbox/x", "iNbOx/x", true},
        {"INBOX/x", "INBOX/X", false},
        {"X/a", "x/a", false},
        {"INBOXx", "inboxx", false},
        {"INBOX", "INBOX/", false},
        {"x", "x", true},
        {"", "", true},
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        bool same = folderplan_same_local(pairs[i].a, pairs[i].b);
        if (same != pairs[i].same) {
            fail_msg("'%s' vs '%s': %d", pairs[i].a, pairs[i].b, same);
        }
        if (same) {
            assert_true(folderplan_local_hash(pairs[i].a) == folderplan_local_hash(pairs[i].b));
        }
    }
    /* A name with the INBOX level hashes apart from the same name without. */
    assert_true(folderplan_local_hash("INBOX/x") != folderplan_local_hash("/x"));
}

/* 50,000 listed folders, half of them here: the lookups go through hashes
 * (a linear search per name took minutes), and every one is decided. */
static void test_many_folders(void **state)
{
    (void)state;
    enum {
        N = 50000
    };
    struct folderplan_server *srv = xcalloc(N, sizeof(*srv));
    struct folderplan_local *loc = xcalloc(N / 2, sizeof(*loc));
    char **names = xcalloc(N, sizeof(*names));
    for (size_t i = 0; i < N; i++) {
        names[i] = xasprintf("f%05zu", i);
        srv[i].name = names[i];
        srv[i].selected = true;
    }
    for (size_t i = 0; i < N / 2; i++) {
        loc[i].name = names[2 * i];
        loc[i].selected = true;
    }
    struct folderplan_input in = {
        .server = srv, .nserver = N, .local = loc, .nlocal = N / 2, .account = "acct"};
    struct folderplan *p = folderplan_build(&in);
    assert_int_equal(p->nfolders, N);
    for (size_t i = 0; i < N; i++) {
        assert_string_equal(p->folders[i].name, names[i]);
        assert_int_equal(p->folders[i].action,
                         i % 2 == 0 ? FOLDERPLAN_SYNC : FOLDERPLAN_CREATE_LOCAL);
    }
    folderplan_free(p);
    for (size_t i = 0; i < N; i++) {
        free(names[i]);
    }
    free(names);
    free(srv);
    free(loc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows),         cmocka_unit_test(test_sides_and_entries),
        cmocka_unit_test(test_no_index),     cmocka_unit_test(test_trash),
        cmocka_unit_test(test_action_names), cmocka_unit_test(test_same_local),
        cmocka_unit_test(test_many_folders),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
