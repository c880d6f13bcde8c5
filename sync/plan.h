/* The sync planner: a pure function from three views of one folder to the
 * list of changes that make both sides agree (DESIGN.md invariants 3 and 6).
 *
 *   server: what the server has now, either complete (every UID with its
 *           flags) or a delta from CONDSTORE/QRESYNC (changed and new UIDs
 *           with their flags, plus vanished UIDs; known UIDs not mentioned
 *           are unchanged since the base);
 *   local:  what the Maildir holds now (identity, flags, keyword names);
 *   base:   the index records (what both sides last agreed on).
 *
 * Flags are MD_FLAG_* bits on every side (the engine maps \Seen <-> S,
 * \Answered <-> R, \Flagged <-> F, \Deleted <-> T, \Draft <-> D and
 * $Forwarded <-> P before calling); keywords are names. Each flag and each
 * keyword merges three-way: changed locally since the base -> the local
 * value; else changed on the server -> the server value; else the base.
 *
 * A message gone from one side is deleted on the other only when the side
 * that still has it did not change its flags since the base; otherwise it is
 * copied back to the side that lost it (nothing is lost to a race between a
 * deletion and an edit). Deletions beyond max_delete_ratio of a folder with
 * more than PLAN_GUARD_MIN messages, on either side, trip the guard unless
 * force is set: the plan then carries an error and no deletion. Messages
 * moved to another folder (plan_input.moved, and parked orphans) are not
 * deletions: a folder emptied into another one does not trip the guard.
 *
 * No I/O, no clock, no allocation failure paths (xmalloc aborts): the unit
 * tests drive it with tables. Ownership: plan_build returns a struct plan
 * that owns all of its arrays and strings (copies of the input); free it
 * with plan_free. */
#ifndef MAILSYNC_PLAN_H
#define MAILSYNC_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "store/index.h"

/* What a message deleted locally becomes on the server. */
enum plan_local_delete {
    PLAN_LOCAL_DELETE_EXPUNGE = 0, /* \Deleted and expunged */
    PLAN_LOCAL_DELETE_TRASH,       /* moved to the trash folder */
    PLAN_LOCAL_DELETE_FLAG,        /* \Deleted set, left for the user to expunge */
};

/* The guard applies only to folders with more messages than this. */
#define PLAN_GUARD_MIN 20

/* A set of keyword names, sorted with strcmp, no duplicates. */
struct plan_kw {
    char **names;
    size_t n;
};

struct plan_server_msg {
    uint32_t uid;
    unsigned flags;        /* MD_FLAG_* */
    const char *const *kw; /* keyword names (any order, duplicates allowed) */
    size_t nkw;
    uint64_t size;       /* RFC822.SIZE; 0 if unknown */
    time_t internaldate; /* 0 if unknown */
};

struct plan_server {
    /* true: msgs lists every message of the folder; false: a delta. */
    bool complete;
    const struct plan_server_msg *msgs; /* any order */
    size_t nmsgs;
    const uint32_t *vanished; /* delta only: expunged since the base */
    size_t nvanished;
};

/* 24 bytes: a folder's local view holds one per file. */
struct plan_local_msg {
    const char *lid; /* identity (unique name) */
    const char *const *kw;
    unsigned flags; /* MD_FLAG_* */
    uint32_t nkw;
};

struct plan_local {
    const struct plan_local_msg *msgs; /* any order */
    size_t nmsgs;
    /* Whether the local side can carry a keyword (a dovecot-keywords letter
     * exists or can be assigned). A keyword it cannot carry is taken as
     * unchanged locally, so it is never dropped from the server. NULL = all
     * can. */
    bool (*kw_ok)(const char *name, void *arg);
    void *kw_arg;
};

struct plan_input {
    struct plan_server server;
    struct plan_local local;
    /* SYNCED records (APPENDING ones are ignored), compact; NULL = none.
     * Each keyword set is parsed once, whatever the rows sharing it. */
    const struct idx_rows *base;
    /* The folder's synced records in all, when base holds only some of
     * them (the rows a server delta names, for a Maildir nobody touched
     * since the last sync): the guard measures deletions against the
     * larger of this and the synced rows of base. 0 = base is whole. */
    size_t nbase_total;
    enum plan_local_delete on_local_delete;
    double max_delete_ratio;
    uint64_t max_size;     /* 0 = no limit */
    unsigned max_age_days; /* 0 = no limit; applies to downloads with a known date */
    time_t now;            /* for max_age_days */
    bool force;            /* ignore the deletion guard */
    /* UIDs of base records whose message is being moved to another folder
     * of the account (sync/moves.c: moved locally, the move carried out by
     * another job or later): never deleted on the server from here, never
     * downloaded or uploaded, and not deletions for the guard. Any order. */
    const uint32_t *moved;
    size_t nmoved;
    /* Messages gone from the server whose local file stays, with a non-zero
     * msgid_hash, are parked as orphans (plan.orphans: maybe moved by
     * another client to another folder) instead of being deleted locally or
     * copied back; not deletions for the guard. Records already parked
     * (IDX_MSG_ORPHAN) are listed again as long as their file stays. */
    bool park_orphans;
    const char *folder;  /* for messages */
    const char *account; /* for the guard's message */
};

/* New on the server (or to be copied back): download uid, give it flags. */
struct plan_download {
    uint32_t uid;
    unsigned flags;
    struct plan_kw kw;
    uint64_t size;
    time_t internaldate;
    bool recopy; /* deleted locally but changed on the server */
};

/* New locally (or to be copied back): append lid with flags. */
struct plan_upload {
    char *lid;
    unsigned flags;
    struct plan_kw kw;
    uint32_t old_uid; /* recopy: the UID the server expunged, else 0 */
};

/* Flags to set on a local file. */
struct plan_local_flags {
    char *lid;
    uint32_t uid;
    unsigned flags; /* the complete new set */
    struct plan_kw kw;
};

/* One UID STORE: op '+' or '-' with these flags and keywords, on uids. */
struct plan_store {
    char op;
    unsigned flags;
    struct plan_kw kw;
    uint32_t *uids; /* ascending */
    size_t nuids;
};

/* A message to delete on one side: lid locally, uid on the server. With
 * on_local_delete flag, a server message already carrying \Deleted is not
 * listed again (its record stays, so it is not downloaded again). */
struct plan_delete {
    char *lid;
    uint32_t uid;
};

/* A message gone from the server under uid whose local file lid stays:
 * parked (its record becomes IDX_MSG_ORPHAN) until a new server message of
 * another folder pairs with it or the run's pass ends. changed: the local
 * file's flags differ from the base (at the end of the pass it is then
 * uploaded again, as an edit racing an expunge is, rather than deleted).
 * parked: the
 * base record is an orphan already. */
struct plan_orphan {
    char *lid;
    uint32_t uid;
    bool changed;
    bool parked;
};

struct plan_skip {
    uint32_t uid;
    uint64_t size;
    bool too_old; /* else too large */
};

struct plan {
    struct plan_download *downloads;
    size_t ndownloads;
    struct plan_upload *uploads;
    size_t nuploads;
    struct plan_local_flags *local_flags;
    size_t nlocal_flags;
    struct plan_store *stores;
    size_t nstores;
    struct plan_delete *local_deletes; /* gone from the server */
    size_t nlocal_deletes;
    struct plan_delete *server_deletes; /* gone locally, per on_local_delete */
    size_t nserver_deletes;
    /* Records to drop now: gone from both sides. The records of deletions
     * are the executor's to change once each deletion is done (dropped;
     * with on_local_delete flag, kept with MD_FLAG_TRASHED so the message
     * is not fetched again). */
    uint32_t *drops;
    size_t ndrops;
    /* New base for messages on both sides whose merged flags differ from
     * the base; record only after the flag changes on both sides are done. */
    struct idx_msg *updates;
    size_t nupdates;
    struct plan_skip *skips;
    size_t nskips;
    struct plan_orphan *orphans;
    size_t norphans;
    /* Set when the guard tripped: no deletion is planned on either side. */
    char *error;
    unsigned guard_local, guard_server; /* deletions that tripped it */
};

/* Builds the plan. Never fails (inputs are trusted to be well formed:
 * unique UIDs and identities). */
struct plan *plan_build(const struct plan_input *in);
void plan_free(struct plan *p);

/* Takes upload i out of the plan (a file the executor finds it cannot
 * upload), keeping the order of the others. */
void plan_drop_upload(struct plan *p, size_t i);
/* Takes server deletion i out of the plan (a message moved to another
 * folder: the move takes it off this folder), keeping the order. */
void plan_drop_server_delete(struct plan *p, size_t i);

/* True when the plan changes nothing anywhere (no index writes either). */
bool plan_empty(const struct plan *p);

/* Prints the plan for --dry-run, one change per line, prefixed with the
 * folder name. */
void plan_print(const struct plan *p, const char *folder, FILE *fp);

/* Matching messages that have no UID in common (a changed UIDVALIDITY, an
 * APPEND without APPENDUID): a server message and a local file are the same
 * message when their Message-ID and wire size agree and that pair is unique
 * on both sides; where the Message-ID is missing or repeated, when their
 * header hash (the header block with CRLF taken as LF) and size agree. */
struct plan_match {
    const char *msgid; /* NULL when the message has none */
    uint64_t size;     /* size on the wire (CRLF) */
    const uint8_t *hh; /* 16-byte header hash; NULL when unknown */
    size_t ix;         /* the caller's index of this message */
    bool need_hh;      /* set by plan_match_ids: only a header hash can decide */
    long pair;         /* the partner's ix; the caller sets -1 before matching */
};

/* Pairs server and local candidates whose (Message-ID, size) is unique on
 * both sides, and marks need_hh on the members of every group that has
 * candidates on both sides but no Message-ID or more than one member on a
 * side. Sorts both arrays (use ix to find your data again). */
void plan_match_ids(struct plan_match *srv, size_t nsrv, struct plan_match *loc, size_t nloc);
/* Pairs the need_hh candidates still unpaired that have a header hash, by
 * (header hash, size). Equal copies pair in ix order, so n copies on each
 * side make n pairs and a surplus stays unpaired. */
void plan_match_headers(struct plan_match *srv, size_t nsrv, struct plan_match *loc, size_t nloc);

/* For the first sync of a folder that already holds mail locally (a lost
 * index, a Maildir another tool wrote): after plan_match_ids, marks need_hh
 * on every unpaired candidate whose Message-ID (or lack of one) is shared
 * by an unpaired candidate on the other side, whatever the sizes, so that
 * plan_match_headers can pair copies whose sizes differ only by lines
 * plan_header_clean leaves out. Keeps the order plan_match_ids left. */
void plan_match_loose(struct plan_match *srv, size_t nsrv, struct plan_match *loc, size_t nloc);

/* The header block as matching compares it: CRLF taken as LF, and the lines
 * that other programs add to stored mail left out (a field named X-TUID,
 * mbsync's, or Status / X-Status, mbox-era readers', with its continuation
 * lines), wherever they are. Returns a malloc'd copy of *len_r bytes (NUL
 * terminated); *strip_r (may be NULL) gets the wire size (CRLF) of the
 * lines left out, which taken from the message's wire size gives the size
 * of the message without them. */
char *plan_header_clean(const char *h, size_t len, size_t *len_r, uint64_t *strip_r);

/* Helpers shared with the engine. */

/* Parses "a b c" (the index's keyword form) into a sorted set. */
void plan_kw_parse(const char *s, struct plan_kw *kw_r);
/* Builds a sorted set from names (copied; duplicates dropped). */
void plan_kw_from(const char *const *names, size_t n, struct plan_kw *kw_r);
/* Formats a set as "a b c" into buf (cap bytes); false when it does not fit. */
bool plan_kw_format(const struct plan_kw *kw, char *buf, size_t cap);
bool plan_kw_has(const struct plan_kw *kw, const char *name);
void plan_kw_free(struct plan_kw *kw);

/* Letters for flags: "DFPRST" subset in ASCII order, into buf (>= 7 bytes). */
void plan_flag_letters(unsigned flags, char *buf);

#endif
