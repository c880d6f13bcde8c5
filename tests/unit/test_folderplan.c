/* LINK: ms_sync ms_store ms_core */
/* Tests for the folder planner (sync/folderplan.h): one table row per case
 * that matters (new on either side, deleted on either side with and without
 * delete_folders, both gone, index-only, the vanished-folder guard with and
 * without --force, INBOX never deleted, spellings that share a local
 * directory, folders filtered out by the patterns, \Noselect, virtual
 * folders, subscribed_only, dry runs), each asserting the decision, its
 * reason, the exact guard message and the whole plan; then the choice of
 * the trash folder, and a listing of 50,000 folders. Then renames (issue
 * 12), one table row per case: renamed here (exact, 90 %, too few, extra
 * mail, empty, INBOX, two candidates, a parent with its children),
 * renamed on the server (same UIDVALIDITY to be confirmed, confirmed,
 * refuted, another UIDVALIDITY, no STATUS, MAILBOXID equal or not, UIDNEXT
 * gone back, a folder never synced), and a folder that vanished here after
 * its messages moved to other folders (all, some, none; with --force and
 * delete_folders), with the guard's exact messages.
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
    DEL = 1,    /* delete_folders */
    FORCE = 2,  /* --force */
    DRY = 4,    /* --dry-run */
    SUBS = 8,   /* subscribed_only */
    IDXO = 16,  /* the index's folders are passed as indexed (neither side) */
    MOVES = 32, /* the run carries out local moves (UIDPLUS) */
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
    const char *seen[FOLDERPLAN_RENAME_LOCAL + 1];
    for (int a = FOLDERPLAN_NONE; a <= FOLDERPLAN_RENAME_LOCAL; a++) {
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

/* ---- renames ----------------------------------------------------------------------------------
 */

/* Facts of a rename row, as "kind NAME=value;..." with kinds
 *   l  the local folder's message identities ("a b c"),
 *   i  the identities the index records for the folder,
 *   s  the index's state "uidvalidity/uidnext/messages[/mailboxid]",
 *   S  the server's STATUS of a listed folder, same form,
 *   m  the MAILBOXID the index keeps apart from the state (index_mailboxid),
 *   v  a verdict "FROM>TO" = 1 (renamed) or 0 (not). */
#define MAXF 12

struct fact {
    char kind;
    char name[32];
    char value[96];
    struct folderplan_ids ids;
    const char *idv[16];
    char idbuf[96];
};

struct facts {
    struct views *v;
    struct fact f[MAXF];
    size_t n;
};

static void parse_facts(struct facts *fs, const char *text)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", text);
    fs->n = 0;
    char *save = NULL;
    for (char *it = strtok_r(buf, ";", &save); it != NULL; it = strtok_r(NULL, ";", &save)) {
        assert_true(fs->n < MAXF);
        struct fact *f = &fs->f[fs->n++];
        memset(f, 0, sizeof(*f));
        char *eq = strchr(it, '=');
        assert_non_null(eq);
        *eq = '\0';
        f->kind = it[0];
        snprintf(f->name, sizeof(f->name), "%s", it + 2);
        snprintf(f->value, sizeof(f->value), "%s", eq + 1);
        snprintf(f->idbuf, sizeof(f->idbuf), "%s", eq + 1);
        char *s2 = NULL;
        for (char *id = strtok_r(f->idbuf, " ", &s2); id != NULL; id = strtok_r(NULL, " ", &s2)) {
            assert_true(f->ids.n < 16);
            f->idv[f->ids.n++] = id;
        }
        f->ids.v = f->idv;
    }
}

static const struct fact *fact(const struct facts *fs, char kind, const char *name)
{
    for (size_t i = 0; i < fs->n; i++) {
        if (fs->f[i].kind == kind && strcmp(fs->f[i].name, name) == 0) {
            return &fs->f[i];
        }
    }
    return NULL;
}

static bool f_local_ids(const char *name, struct folderplan_ids *ids_r, void *arg)
{
    const struct fact *f = fact(arg, 'l', name);
    ids_r->v = f != NULL ? f->ids.v : NULL;
    ids_r->n = f != NULL ? f->ids.n : 0;
    return true;
}

static bool f_index_ids(const char *name, struct folderplan_ids *ids_r, void *arg)
{
    const struct fact *f = fact(arg, 'i', name);
    ids_r->v = f != NULL ? f->ids.v : NULL;
    ids_r->n = f != NULL ? f->ids.n : 0;
    return true;
}

/* "uv/next/msgs[/mailboxid]" */
static void state_of(const char *value, uint32_t *uv, uint32_t *next, uint32_t *msgs,
                     const char **mbid)
{
    unsigned a = 0, b = 0, c = 0;
    int used = 0;
    assert_true(sscanf(value, "%u/%u/%u%n", &a, &b, &c, &used) == 3);
    *uv = a;
    *next = b;
    *msgs = c;
    *mbid = value[used] == '/' ? value + used + 1 : NULL;
}

static bool f_index_state(const char *name, struct folderplan_istate *st_r, void *arg)
{
    const struct fact *f = fact(arg, 's', name);
    if (f == NULL) {
        return false;
    }
    memset(st_r, 0, sizeof(*st_r));
    state_of(f->value, &st_r->uidvalidity, &st_r->uidnext, &st_r->messages, &st_r->mailboxid);
    return true;
}

static const char *f_index_mailboxid(const char *name, void *arg)
{
    const struct fact *f = fact(arg, 'm', name);
    return f != NULL ? f->value : NULL;
}

static int f_verdict(const char *from, const char *to, void *arg)
{
    char key[80];
    snprintf(key, sizeof(key), "%s>%s", from, to);
    const struct fact *f = fact(arg, 'v', key);
    return f == NULL ? FOLDERPLAN_UNCHECKED : atoi(f->value);
}

struct rename_row {
    const char *what;
    const char *server, *local, *index;
    unsigned opts;
    const char *facts;
    const char *plan;   /* render() of the whole plan */
    const char *folder; /* the folder the rest is about */
    const char *from;   /* its rename_from, or NULL */
    bool verify, implied;
    const char *reason;
    const char *message; /* its refusal, or NULL */
    const char *lost;    /* its lost_ids, space separated ("" none) */
};

#define SAME3 "i Old=a b c;l New=a b c"
#define TEN "a b c d e f g h i j"
#define ALL_MOVED(f, n)                                                                            \
    "folder '" f "': the local folder vanished and all its " n " messages are in other local "     \
    "folders now; not deleting them on the server. To delete them there (the folder stays, "       \
    "empty), run 'mailsync sync --force acct'; to delete the folder there too, set "               \
    "delete_folders: true"

static const struct rename_row rename_rows[] = {
    /* Renamed here. */
    {"renamed here, the same messages", "Old", "New", "Old", 0, SAME3, "New=rename-server Old=none",
     "New", "Old", false, false, "renamed here", NULL, ""},
    {"the old name of it carries nothing", "Old", "New", "Old", 0, SAME3,
     "New=rename-server Old=none", "Old", NULL, false, false, "renamed here", NULL, ""},
    {"renamed here in a dry run: the same decision (the engine prints it)", "Old", "New", "Old",
     DRY, SAME3, "New=rename-server Old=none", "New", "Old", false, false, "renamed here", NULL,
     ""},
    {"renamed here, --force and delete_folders change nothing", "Old", "New", "Old", FORCE | DEL,
     SAME3, "New=rename-server Old=none", "New", "Old", false, false, "renamed here", NULL, ""},
    {"renamed here, 9 of 10 left (90 %)", "Old", "New", "Old", 0,
     "i Old=" TEN ";l New=a b c d e f g h i", "New=rename-server Old=none", "New", "Old", false,
     false, "renamed here", NULL, ""},
    {"8 of 10 left: not a rename, the guard and a new folder", "Old", "New", "Old", 0,
     "i Old=" TEN ";l New=a b c d e f g h", "New=create-server Old=refuse", "New", NULL, false,
     false, "new here", NULL, ""},
    {"10 of 10 and 2 new ones (83 %): not a rename", "Old", "New", "Old", 0,
     "i Old=" TEN ";l New=" TEN " x y", "New=create-server Old=refuse", "New", NULL, false, false,
     "new here", NULL, ""},
    {"10 of 10 and 1 new one (91 %): a rename", "Old", "New", "Old", 0,
     "i Old=" TEN ";l New=" TEN " x", "New=rename-server Old=none", "New", "Old", false, false,
     "renamed here", NULL, ""},
    {"empty on both sides: nothing tells, not a rename", "Old", "New", "Old", 0, "",
     "New=create-server Old=create-local", "New", NULL, false, false, "new here", NULL, ""},
    {"vanished here, the index records no message in it: made again", "Old", "", "Old", 0, "",
     "Old=create-local", "Old", NULL, false, false,
     "the local folder vanished while the index recorded no message in it: made again "
     "(delete_folders: true deletes such a folder on the server)",
     NULL, ""},
    {"... with delete_folders: deleted on the server", "Old", "", "Old", DEL, "",
     "Old=delete-server", "Old", NULL, false, false, "deleted here, and delete_folders is set",
     NULL, ""},
    {"INBOX is never renamed", "INBOX", "New", "INBOX", 0, "i INBOX=a b c;l New=a b c",
     "INBOX=refuse New=create-server", "New", NULL, false, false, "new here", NULL, ""},
    {"a name the server lists (filtered out) is not a rename's target", "Old,New:-", "New", "Old",
     0, SAME3, "New=create-server Old=refuse -New", "New", NULL, false, false, "new here", NULL,
     ""},
    {"two candidates: the larger overlap wins, the other is new", "Old", "A,B", "Old", 0,
     "i Old=a b c d e f g h i j;l A=a b c d e f g h i j;l B=a b c d e f g h i",
     "A=rename-server B=create-server Old=none", "A", "Old", false, false, "renamed here", NULL,
     ""},
    {"a parent with its children: the children ride on its RENAME", "P,P/a,P/a/b", "W,W/a,W/a/b",
     "P,P/a,P/a/b", 0, "i P=a;i P/a=b;i P/a/b=c;l W=a;l W/a=b;l W/a/b=c",
     "P=none P/a=none P/a/b=none W=rename-server W/a=rename-server W/a/b=rename-server", "W/a/b",
     "P/a/b", false, true, "renamed here", NULL, ""},
    {"the parent itself is not implied", "P,P/a", "W,W/a", "P,P/a", 0,
     "i P=a;i P/a=b;l W=a;l W/a=b", "P=none P/a=none W=rename-server W/a=rename-server", "W", "P",
     false, false, "renamed here", NULL, ""},
    {"a child moved elsewhere is its own rename", "P,P/a", "W,X/a", "P,P/a", 0,
     "i P=a;i P/a=b;l W=a;l X/a=b", "P=none P/a=none W=rename-server X/a=rename-server", "X/a",
     "P/a", false, false, "renamed here", NULL, ""},

    /* Renamed on the server. */
    {"renamed on the server, same UIDVALIDITY: to be confirmed", "New", "Old", "Old", 0,
     "s Old=7/11/10;S New=7/11/10", "New=rename-local Old=none", "New", "Old", true, false,
     "renamed on the server", NULL, ""},
    {"confirmed by the engine", "New", "Old", "Old", 0, "s Old=7/11/10;S New=7/11/10;v Old>New=1",
     "New=rename-local Old=none", "New", "Old", false, false, "renamed on the server", NULL, ""},
    {"refuted by the engine: deleted there, and a new folder", "New", "Old", "Old", 0,
     "s Old=7/11/10;S New=7/11/10;v Old>New=0", "New=create-local Old=refuse", "Old", NULL, false,
     false, "deleted on the server", SRV_DELETED("Old"), ""},
    {"another UIDVALIDITY: not a rename", "New", "Old", "Old", 0, "s Old=7/11/10;S New=8/11/10",
     "New=create-local Old=refuse", "New", NULL, false, false, "new on the server", NULL, ""},
    {"UIDNEXT went back: not the same folder", "New", "Old", "Old", 0, "s Old=7/11/10;S New=7/5/4",
     "New=create-local Old=refuse", "New", NULL, false, false, "new on the server", NULL, ""},
    {"more mail since (UIDNEXT grew): still to be confirmed", "New", "Old", "Old", 0,
     "s Old=7/11/10;S New=7/15/14", "New=rename-local Old=none", "New", "Old", true, false,
     "renamed on the server", NULL, ""},
    {"no STATUS (no LIST-STATUS): to be confirmed", "New", "Old", "Old", 0, "s Old=7/11/10",
     "New=rename-local Old=none", "New", "Old", true, false, "renamed on the server", NULL, ""},
    {"the same MAILBOXID: certain", "New", "Old", "Old", 0, "s Old=7/11/10/M1;S New=9/1/0/M1",
     "New=rename-local Old=none", "New", "Old", false, false, "renamed on the server", NULL, ""},
    {"another MAILBOXID: not a rename, whatever UIDVALIDITY says", "New", "Old", "Old", 0,
     "s Old=7/11/10/M1;S New=7/11/10/M2", "New=create-local Old=refuse", "New", NULL, false, false,
     "new on the server", NULL, ""},
    {"the MAILBOXID kept apart from the state: certain", "New", "Old", "Old", 0,
     "s Old=7/11/10;m Old=M1;S New=7/11/10/M1", "New=rename-local Old=none", "New", "Old", false,
     false, "renamed on the server", NULL, ""},
    {"another MAILBOXID kept apart: not a rename", "New", "Old", "Old", 0,
     "s Old=7/11/10;m Old=M1;S New=7/11/10/M2;v Old>New=1", "New=create-local Old=refuse", "New",
     NULL, false, false, "new on the server", NULL, ""},
    {"two new folders with its UIDVALIDITY: the MAILBOXID picks one, unchecked", "A,New", "Old",
     "Old", 0, "s Old=7/11/10;m Old=M1;S A=7/11/10/M2;S New=7/11/10/M1",
     "A=create-local New=rename-local Old=none", "New", "Old", false, false,
     "renamed on the server", NULL, ""},
    {"no MAILBOXID listed (OBJECTID gone): UIDVALIDITY, to be confirmed", "New", "Old", "Old", 0,
     "s Old=7/11/10;m Old=M1;S New=7/11/10", "New=rename-local Old=none", "New", "Old", true, false,
     "renamed on the server", NULL, ""},
    {"a folder never synced (UIDVALIDITY 0) cannot be found again", "New", "Old", "Old", 0,
     "s Old=0/0/0", "New=create-local Old=refuse", "New", NULL, false, false, "new on the server",
     NULL, ""},
    {"INBOX is never renamed locally", "New", "INBOX", "INBOX", 0, "s INBOX=7/11/10;S New=7/11/10",
     "INBOX=refuse New=create-local", "New", NULL, false, false, "new on the server", NULL, ""},
    {"with delete_folders the rename still comes first", "New", "Old", "Old", DEL,
     "s Old=7/11/10;S New=7/11/10;v Old>New=1", "New=rename-local Old=none", "New", "Old", false,
     false, "renamed on the server", NULL, ""},
    {"a parent renamed on the server with a child", "N,N/x", "O,O/x", "O,O/x", 0,
     "s O=7/2/1;s O/x=8/2/1;S N=7/2/1;S N/x=8/2/1;v O>N=1;v O/x>N/x=1",
     "N=rename-local N/x=rename-local O=none O/x=none", "N/x", "O/x", false, true,
     "renamed on the server", NULL, ""},

    /* Vanished here after its messages moved to other folders. */
    {"all moved: the guard says so", "X", "A,B", "X", 0, "i X=a b c;l A=a;l B=b c",
     "A=create-server B=create-server X=refuse", "X", NULL, false, false,
     "the local folder vanished; its messages moved to other folders", ALL_MOVED("X", "3"), ""},
    {"all moved, --force: deleted on the server, nothing downloaded", "X", "A,B", "X", FORCE,
     "i X=a b c;l A=a;l B=b c", "A=create-server B=create-server X=resync", "X", NULL, false, false,
     "the local folder vanished and its messages are in other local folders; --force deletes "
     "them on the server",
     NULL, ""},
    {"all moved, delete_folders (and --force): the folder is deleted on the server", "X", "A,B",
     "X", DEL | FORCE, "i X=a b c;l A=a;l B=b c", "A=create-server B=create-server X=delete-server",
     "X", NULL, false, false,
     "deleted here after its messages were moved to other folders, and delete_folders is set", NULL,
     ""},
    {"all moved, the run moves them: no guard, nothing to do here", "X", "A,B", "X", MOVES,
     "i X=a b c;l A=a;l B=b c", "A=create-server B=create-server X=none", "X", NULL, false, false,
     "the local folder vanished after its messages were moved to other folders; they are moved "
     "on the server too",
     NULL, ""},
    {"all moved, the run moves them, --force: as without moves", "X", "A,B", "X", MOVES | FORCE,
     "i X=a b c;l A=a;l B=b c", "A=create-server B=create-server X=resync", "X", NULL, false, false,
     "the local folder vanished and its messages are in other local folders; --force deletes "
     "them on the server",
     NULL, ""},
    {"some moved, the run moves them: refused for the others only", "X", "A", "X", MOVES,
     "i X=a b c;l A=a", "A=create-server X=refuse", "X", NULL, false, false,
     "the local folder vanished; some of its messages moved to other folders",
     "folder 'X': the local folder vanished; 1 of its 3 messages are in other local folders now "
     "and are moved there on the server, the other 2 are not deleted on the server. To download "
     "those again, run 'mailsync sync --force acct' (or set delete_folders: true to delete the "
     "folder on the server)",
     "b c"},
    {"some moved: the guard says how many", "X", "A", "X", 0, "i X=a b c;l A=a",
     "A=create-server X=refuse", "X", NULL, false, false,
     "the local folder vanished; its messages moved to other folders",
     "folder 'X': the local folder vanished and 1 of its 3 messages are in other local folders "
     "now; not deleting anything on the server. To download the other 2 again and delete those 1 "
     "on the server, run 'mailsync sync --force acct' (or set delete_folders: true to delete the "
     "folder on the server)",
     "b c"},
    {"some moved, --force: only the others are downloaded again", "X", "A", "X", FORCE,
     "i X=a b c;l A=a", "A=create-server X=resync", "X", NULL, false, false,
     "the local folder vanished and some of its messages are in other local folders; --force "
     "deletes those on the server and downloads the others again",
     NULL, "b c"},
    {"some moved, delete_folders: deleted on the server as before", "X", "A", "X", DEL,
     "i X=a b c;l A=a", "A=create-server X=delete-server", "X", NULL, false, false,
     "deleted here, and delete_folders is set", NULL, "b c"},
    {"none moved: the guard as before", "X", "A", "X", 0, "i X=a b c;l A=z",
     "A=create-server X=refuse", "X", NULL, false, false, "the local folder vanished",
     VANISHED("X"), ""},
    {"none moved, --force: downloaded again", "X", "A", "X", FORCE, "i X=a b c;l A=z",
     "A=create-server X=resync", "X", NULL, false, false,
     "the local folder vanished; --force downloads it again", NULL, ""},
};

static void check_rename_row(const struct rename_row *r)
{
    struct views v;
    struct facts fs;
    parse(&v, r->server, r->local, r->index);
    parse_facts(&fs, r->facts);
    for (size_t i = 0; i < v.nserver; i++) {
        const struct fact *f = fact(&fs, 'S', v.server[i].name);
        if (f != NULL) {
            v.server[i].has_status = true;
            state_of(f->value, &v.server[i].uidvalidity, &v.server[i].uidnext,
                     &v.server[i].messages, &v.server[i].mailboxid);
        }
    }
    struct folderplan_input in = {
        .server = v.server,
        .nserver = v.nserver,
        .local = v.local,
        .nlocal = v.nlocal,
        .known = known,
        .known_arg = &v,
        .delete_folders = (r->opts & DEL) != 0,
        .force = (r->opts & FORCE) != 0,
        .dry_run = (r->opts & DRY) != 0,
        .moves = (r->opts & MOVES) != 0,
        .account = "acct",
        .local_ids = f_local_ids,
        .index_ids = f_index_ids,
        .index_state = f_index_state,
        .verdict = f_verdict,
        .facts_arg = &fs,
        .index_mailboxid = f_index_mailboxid,
        .mailboxid_arg = &fs,
    };
    struct folderplan *p = folderplan_build(&in);
    char got[512];
    render(p, got, sizeof(got));
    if (strcmp(got, r->plan) != 0) {
        fail_msg("%s: plan '%s', expected '%s'", r->what, got, r->plan);
    }
    const struct folderplan_folder *f = NULL;
    size_t renames = 0, verify = 0;
    for (size_t i = 0; i < p->nfolders; i++) {
        if (strcmp(p->folders[i].name, r->folder) == 0) {
            f = &p->folders[i];
        }
        renames += p->folders[i].rename_from != NULL;
        verify += p->folders[i].rename_verify;
    }
    assert_non_null(f);
    assert_int_equal(p->nrenames, renames);
    assert_int_equal(p->nverify, verify);
    if ((f->rename_from == NULL) != (r->from == NULL) ||
        (r->from != NULL && strcmp(f->rename_from, r->from) != 0)) {
        fail_msg("%s: %s renamed from '%s', expected '%s'", r->what, r->folder,
                 f->rename_from ? f->rename_from : "(none)", r->from ? r->from : "(none)");
    }
    if (f->rename_verify != r->verify || f->rename_implied != r->implied) {
        fail_msg("%s: verify %d implied %d, expected %d %d", r->what, f->rename_verify,
                 f->rename_implied, r->verify, r->implied);
    }
    if (strcmp(f->reason, r->reason) != 0) {
        fail_msg("%s: reason '%s', expected '%s'", r->what, f->reason, r->reason);
    }
    if ((f->error == NULL) != (r->message == NULL) ||
        (f->error != NULL && strcmp(f->error, r->message) != 0)) {
        fail_msg("%s: message '%s', expected '%s'", r->what, f->error ? f->error : "(none)",
                 r->message ? r->message : "(none)");
    }
    assert_int_equal(f->user_fix, f->action == FOLDERPLAN_REFUSE);
    char lost[128] = "";
    size_t len = 0;
    for (size_t i = 0; i < f->nlost; i++) {
        len += (size_t)snprintf(lost + len, sizeof(lost) - len, "%s%s", i > 0 ? " " : "",
                                f->lost_ids[i]);
    }
    if (strcmp(lost, r->lost) != 0) {
        fail_msg("%s: lost '%s', expected '%s'", r->what, lost, r->lost);
    }
    /* The old name of a rename points at the new one. */
    for (size_t i = 0; i < p->nfolders; i++) {
        const struct folderplan_folder *n = &p->folders[i];
        for (size_t k = 0; n->rename_from != NULL && k < p->nfolders; k++) {
            if (strcmp(p->folders[k].name, n->rename_from) == 0) {
                assert_non_null(p->folders[k].renamed_to);
                assert_string_equal(p->folders[k].renamed_to, n->name);
                assert_int_equal(p->folders[k].action, FOLDERPLAN_NONE);
            }
        }
    }
    folderplan_free(p);
}

static void test_renames(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(rename_rows) / sizeof(rename_rows[0]); i++) {
        check_rename_row(&rename_rows[i]);
    }
}

/* Without the facts callbacks (or the verdict callback) no rename is
 * found: the plan is the one of the rows above. */
static void test_renames_need_facts(void **state)
{
    (void)state;
    struct views v;
    parse(&v, "Old", "New", "Old");
    struct folderplan *p = build(&v, 0, NULL);
    char got[256];
    render(p, got, sizeof(got));
    assert_string_equal(got, "New=create-server Old=refuse");
    assert_int_equal(p->nrenames, 0);
    folderplan_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_sides_and_entries),
        cmocka_unit_test(test_no_index),
        cmocka_unit_test(test_trash),
        cmocka_unit_test(test_action_names),
        cmocka_unit_test(test_same_local),
        cmocka_unit_test(test_many_folders),
        cmocka_unit_test(test_renames),
        cmocka_unit_test(test_renames_need_facts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
