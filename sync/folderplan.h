/* The folder planner: a pure function from what the server listed, what
 * the Maildir holds and what the index knows to one decision per folder
 * (sync, create on one side, delete on one side, forget, refuse with a
 * guard's message, nothing) and the list of folders that are not synced
 * with the reason (DESIGN.md invariant 6: a folder that vanished stops
 * with a clear error instead of deleting the other side).
 *
 * The rules, in the order they apply:
 *   - A listed folder is a candidate when it is selectable (not \Noselect
 *     or \NonExistent), not virtual (\All, \Flagged), selected by the
 *     folder patterns and, with subscribed_only, subscribed (INBOX always
 *     is). Every selectable listed folder counts as "still on the server"
 *     for the deleted-on-the-server rule, selected or not.
 *   - Names that share one local directory (INBOX/x and inbox/x: the INBOX
 *     level is case-insensitive, everything else exact) are one folder.
 *     When the server lists two spellings, the one the index knows keeps
 *     the directory, else the first in byte order; the others are skipped
 *     with a warning the engine logs on every run.
 *   - On the server and here, or new on the server: sync (the sync creates
 *     the local folder).
 *   - On the server and in the index but not here (the local folder
 *     vanished): --force forgets the base and downloads it again; else
 *     delete_folders deletes it on the server (never INBOX); else refuse.
 *   - Here only, unknown to the index: create it on the server, then sync.
 *   - Here and in the index but not listed: delete_folders removes the
 *     local copy (never INBOX); else refuse. A folder the server still
 *     lists (filtered out by subscribed_only or the patterns, or virtual)
 *     was not deleted: nothing to do.
 *   - Known only to the index: forget its records (not in a dry run).
 *
 * Renames (issue 12) are found before those rules apply, and only then do
 * the vanished-folder guard and delete_folders see what is left:
 *   - Renamed here: a folder that vanished here (on the server and in the
 *     index) and a local folder new to both the index and the server whose
 *     messages are those the index records for the vanished one (at least
 *     90 % of either set in the other: a few messages may have been deleted
 *     or delivered on the way; the folder sync handles those as usual). The
 *     new name gets RENAME_SERVER (RENAME on the server, then sync), the
 *     old one nothing. The best overlap pairs first, each folder once.
 *   - Renamed on the server: a folder deleted on the server (here and in
 *     the index, not listed) and a listed folder new to both the index and
 *     here, with the same MAILBOXID (RFC 8474) when both are known; else
 *     with the same UIDVALIDITY (when the server said it), which the
 *     engine must confirm on the server (rename_verify) and report through
 *     the verdict callback before the pair is carried out. The new name
 *     gets RENAME_LOCAL (rename the local directory, then sync).
 *   - A rename whose old and new names are children of another rename's,
 *     with the same tail (Lists/dev -> Lists2/dev beside Lists -> Lists2),
 *     is carried by its parent's (rename_implied): IMAP RENAME moves the
 *     children, and so does rename(2) of a directory that holds them.
 *   - INBOX is never renamed (IMAP's RENAME of INBOX moves its messages).
 *   - A folder that vanished here without a rename, whose messages the
 *     index knows are found (by their Maildir unique names) in other local
 *     folders, was emptied by moves, not lost: --force deletes those
 *     messages on the server and downloads only the others again
 *     (lost_ids), and delete_folders deletes it there when all moved.
 *     When the run carries out moves (input moves), the syncs of the
 *     folders they moved to move them on the server, so a folder all of
 *     whose messages moved needs nothing (no guard), and one with some left
 *     is refused for those only.
 *   - A folder that vanished here while the index records no message in
 *     it (all moved away, or none ever synced) loses nothing either way:
 *     delete_folders deletes it on the server, else it is made again here
 *     and synced, as a folder new on the server (mail that arrived there
 *     meanwhile comes down; nothing it had is duplicated).
 * Deletions are decisions to try: the executor still checks that the side
 * it deletes holds nothing the index does not know, and reports the folder
 * otherwise.
 *
 * The trash folder is chosen here too: the configured one, else the first
 * folder the server marks \Trash, else a selectable folder named Trash in
 * any case.
 *
 * No I/O, no clock: the index is asked through a callback; the unit tests
 * (tests/unit/test_folderplan.c) drive it with tables. Ownership:
 * folderplan_build returns a struct folderplan that owns every string in
 * it (copies); free it with folderplan_free. */
#ifndef MAILSYNC_FOLDERPLAN_H
#define MAILSYNC_FOLDERPLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum folderplan_action {
    FOLDERPLAN_NONE,          /* nothing to do this run (reason says why) */
    FOLDERPLAN_SYNC,          /* on both sides: sync */
    FOLDERPLAN_CREATE_LOCAL,  /* new on the server: sync, which creates it here */
    FOLDERPLAN_CREATE_SERVER, /* new here: CREATE on the server, then sync */
    FOLDERPLAN_RESYNC,        /* vanished here, --force: forget the base, then sync */
    FOLDERPLAN_DELETE_SERVER, /* deleted here: delete on the server if it holds no unknown mail */
    FOLDERPLAN_DELETE_LOCAL,  /* deleted on the server: remove here if it holds no unknown mail */
    FOLDERPLAN_FORGET,        /* gone from both sides: drop its index records */
    FOLDERPLAN_REFUSE,        /* a guard: error is the folder's error, nothing is changed */
    FOLDERPLAN_RENAME_SERVER, /* renamed here from rename_from: RENAME on the server, then sync */
    FOLDERPLAN_RENAME_LOCAL,  /* renamed on the server from rename_from: rename here, then sync */
};

/* One folder of the server's LIST answer, in the order the server sent
 * them (the first \Trash wins). */
struct folderplan_server {
    const char *name; /* UTF-8, '/' as separator */
    unsigned attrs;   /* IMAP_LIST_* (sync/imap.h) */
    bool selected;    /* by the folder patterns */
    /* What STATUS (LIST-STATUS, or a probe) said, for renames: has_status
     * false when nothing is known. mailboxid is RFC 8474's, or NULL. */
    bool has_status;
    uint32_t uidvalidity, uidnext, messages;
    const char *mailboxid;
};

/* One local Maildir folder, named as the server would name it. */
struct folderplan_local {
    const char *name;
    bool selected; /* by the folder patterns */
};

/* Identities of messages (Maildir unique names), sorted by strcmp, each
 * once. */
struct folderplan_ids {
    const char *const *v;
    size_t n;
};

/* What the index knows of a folder, for renames. */
struct folderplan_istate {
    uint32_t uidvalidity; /* 0: never synced */
    uint32_t uidnext;
    uint32_t messages;
    const char *mailboxid; /* NULL when unknown */
};

/* The verdict callback's answers. */
enum {
    FOLDERPLAN_UNCHECKED = -1,
    FOLDERPLAN_NOT_RENAMED = 0,
    FOLDERPLAN_RENAMED = 1,
};

struct folderplan_input {
    const struct folderplan_server *server;
    size_t nserver;
    const struct folderplan_local *local;
    size_t nlocal;
    /* Whether the index has a state for this exact folder name. NULL: it
     * knows none. */
    bool (*known)(const char *name, void *arg);
    void *known_arg;
    /* Folders the index knows that may be on neither side (the engine does
     * not enumerate the index today and passes none). */
    const char *const *indexed;
    size_t nindexed;
    bool delete_folders;
    /* The run carries out local moves on the server (UIDPLUS: sync/moves.c):
     * messages of a vanished folder found in other local folders are moved
     * there on the server by those folders' syncs, which empties it. */
    bool moves;
    bool force; /* mailsync sync --force */
    bool dry_run;
    bool subscribed_only;
    const char *trash;   /* the configured trash folder, NULL when none */
    const char *account; /* for the guard's message */
    /* Facts for renames, asked only about candidates (and, for a folder
     * that vanished here without a rename, about every local folder).
     * Any may be NULL: the rules that need it then find nothing. The
     * answers must stay valid until folderplan_build returns. */
    bool (*local_ids)(const char *name, struct folderplan_ids *ids_r, void *arg);
    bool (*index_ids)(const char *name, struct folderplan_ids *ids_r, void *arg);
    bool (*index_state)(const char *name, struct folderplan_istate *st_r, void *arg);
    /* Whether the server confirmed that from was renamed to (FOLDERPLAN_*
     * above). */
    int (*verdict)(const char *from, const char *to, void *arg);
    void *facts_arg;
    /* The MAILBOXID the index records for a folder, asked when index_state
     * gave none (the engine keeps it apart from the rest of the folder's
     * state); NULL, or an answer of NULL or "": none known. The answer must
     * stay valid until folderplan_build returns. */
    const char *(*index_mailboxid)(const char *name, void *arg);
    void *mailboxid_arg;
};

/* A folder the run handles, in sync order (INBOX first, then byte order). */
struct folderplan_folder {
    char *name;     /* the server's spelling when listed ("INBOX" for INBOX) */
    long server;    /* index into input server, -1 when not listed */
    bool on_server; /* listed and a candidate */
    bool on_local;  /* here and selected */
    bool in_index;
    enum folderplan_action action;
    const char *reason; /* why, one short phrase (static) */
    /* FOLDERPLAN_REFUSE: the message for the folder's result, and whether
     * it waits for the user (configuration, --force) rather than clearing
     * up by itself. */
    char *error;
    bool user_fix;
    /* RENAME_SERVER / RENAME_LOCAL: the old name; whether the pair waits
     * for the engine's check on the server (the run must not carry it out
     * before the verdict callback says RENAMED); whether its parent's
     * rename carries it. */
    char *rename_from;
    bool rename_verify;
    bool rename_implied;
    /* The old name of a rename (action NONE): the new name. */
    char *renamed_to;
    /* Vanished here, no rename: messages the index records for it, how
     * many of them are in other local folders now, and the identities of
     * the others (RESYNC: only those are downloaded again). */
    size_t known_msgs, moved_msgs;
    char **lost_ids;
    size_t nlost;
};

/* A listed folder or a local folder that is not synced. */
struct folderplan_skip {
    char *name;
    long server;        /* index into input server, -1 for a local folder */
    long local;         /* index into input local, -1 for a listed folder */
    const char *reason; /* static */
    char *warning;      /* to log on every run (without the account), or NULL */
};

struct folderplan {
    struct folderplan_folder *folders;
    size_t nfolders;
    /* Listed folders filtered out (LIST order), then listed spellings that
     * lost their local directory, then unselected local folders. */
    struct folderplan_skip *skips;
    size_t nskips;
    char *trash; /* NULL when there is none */
    /* Renames in the plan, and how many of them wait for a check on the
     * server (rename_verify). */
    size_t nrenames, nverify;
};

struct folderplan *folderplan_build(const struct folderplan_input *in);
void folderplan_free(struct folderplan *p);

/* "sync", "create-local", ...: for logs and tests. */
const char *folderplan_action_name(enum folderplan_action a);

/* Whether two folder names share one local directory (the INBOX level in
 * any case, the rest exact), and a hash that agrees with it, for lookups
 * by local directory. */
bool folderplan_same_local(const char *a, const char *b);
uint64_t folderplan_local_hash(const char *name);

#endif
