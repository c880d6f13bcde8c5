/* Maildir folders: scan, streaming delivery, flag changes, removal, keywords,
 * and the mapping between server folder names and local directories.
 *
 * Ownership: md_folder_open returns a struct md_folder that the caller
 * closes with md_folder_close. A struct md_scan (from md_scan) is
 * independent of its folder and freed with md_scan_free. A struct md_writer
 * belongs to its folder: commit or abort it before closing the folder.
 *
 * Errors: functions return 0 or a negative errno. Where the failure needs a
 * fuller explanation, md_folder_error(f) returns the last message for that
 * folder (a copy, valid until the calling thread's next call); it always
 * names the path.
 *
 * Threads: a struct md_folder is used by one thread at a time, with one
 * exception: while one thread makes a batch of writers durable and commits
 * them (md_writer_finish, md_writers_sync, md_keyword_index,
 * md_writer_commit), another may open and fill new writers of the same
 * folder (md_writer_open, md_writer_write, and a writer made by
 * md_writer_new). md_folder_error may be called on any thread at any time.
 * Nothing here touches the event loop, so the sync engine runs these calls
 * in threadpool jobs. */
#ifndef MAILSYNC_MAILDIR_H
#define MAILSYNC_MAILDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "core/util.h"

/* How folder names map to directories under the Maildir root (see
 * md_folder_local_path). */
enum md_layout {
    MD_LAYOUT_VERBATIM = 0,
    MD_LAYOUT_MAILDIRPP,
};

/* Standard flags, one bit each; the letters in ASCII order as Maildir
 * requires. */
enum {
    MD_FLAG_DRAFT = 1 << 0,   /* D  \Draft */
    MD_FLAG_FLAGGED = 1 << 1, /* F  \Flagged */
    MD_FLAG_PASSED = 1 << 2,  /* P  $Forwarded */
    MD_FLAG_REPLIED = 1 << 3, /* R  \Answered */
    MD_FLAG_SEEN = 1 << 4,    /* S  \Seen */
    MD_FLAG_TRASHED = 1 << 5, /* T  \Deleted */
};
#define MD_FLAGS_ALL 0x3fu

/* Keywords are letters a-z in the file name; bit i is letter 'a' + i. What
 * each letter means is per folder, from its dovecot-keywords file. */
typedef uint32_t md_keywords;

struct md_folder;

/* A message file. Strings are malloc'd and owned by the struct, except
 * in a scan's entries, which hold less (100,000 files are two strings
 * each otherwise, 13 MiB): there id is the scan's (id_borrowed), and
 * name is NULL when the file's name is what the facts say it is
 * (md_msg_name). Every function here takes either form. */
struct md_msg {           /* 32 bytes: a scan holds one per file */
    char *id;             /* identity: the file name up to ":2," (or the whole name) */
    char *name;           /* current file name, in new/ or cur/; see md_msg_name */
    char *unknown_flags;  /* NULL or letters we do not interpret (kept on rename) */
    md_keywords keywords; /* a-z letters present */
    uint8_t flags;        /* MD_FLAG_* */
    bool in_new;          /* true when in new/ */
    bool id_borrowed;     /* id belongs to the scan: md_msg_clear leaves it */
};

struct md_scan_ids;
struct md_scan {
    struct md_msg *msgs; /* sorted by id */
    size_t count;
    struct md_scan_ids *ids; /* where the entries' identities are kept */
};

/* Opens the Maildir folder at path. With create, creates path (and parents)
 * with cur/ new/ tmp/ mode 0700 when missing; with maildirpp_sub also writes
 * the empty "maildirfolder" marker. Without create a missing folder or one
 * lacking cur/new/tmp is -ENOENT with an explanation in *err_r when err_r is
 * not NULL (caller frees). */
/* Directories whose fsync a caller postpones, to make them durable in one
 * go before the index records anything that depends on them (a sync of
 * many small folders then pays one journal commit for a whole batch
 * instead of several per folder). A path is kept once. Zero-initialise. */
struct md_dirsync {
    char **paths;
    size_t n, cap;
    struct strindex ix;
};
void md_dirsync_add(struct md_dirsync *ds, const char *path);
/* fsyncs every directory added (one that is gone meanwhile needs nothing)
 * and empties the set. Returns 0, or a negative errno with *err_r (caller
 * frees) naming the directory; the set is kept then. */
int md_dirsync_run(struct md_dirsync *ds, char **err_r);
void md_dirsync_free(struct md_dirsync *ds);
/* Moves every directory of src into dst (src is left empty). */
void md_dirsync_take(struct md_dirsync *dst, struct md_dirsync *src);
/* True when this open created the folder's new/, cur/ and tmp/ (all three
 * were missing): the folder was empty an instant ago, so a caller about to
 * scan it may take it as empty. */
bool md_folder_created(const struct md_folder *f);
/* md_folder_open; with create and ds not NULL, the directories the
 * creation must make durable are added to ds instead of fsynced. */
int md_folder_open_ds(const char *path, bool create, bool maildirpp_sub, struct md_dirsync *ds,
                      struct md_folder **f_r, char **err_r);
/* md_folder_sync, postponed: adds the directories it would fsync to ds. */
void md_folder_sync_later(struct md_folder *f, struct md_dirsync *ds);
int md_folder_open(const char *path, bool create, bool maildirpp_sub, struct md_folder **f_r,
                   char **err_r);
void md_folder_close(struct md_folder *f);
const char *md_folder_path(const struct md_folder *f);
const char *md_folder_error(const struct md_folder *f);

/* Lists every message in new/ and cur/ with one readdir each and no stat per
 * file. Dotfiles and names that cannot be Maildir messages are skipped. A
 * message renamed by a client while the scan runs is reported once (if it
 * appears in both directories it is reported with its cur/ name). */
int md_scan(struct md_folder *f, struct md_scan **scan_r);
void md_scan_free(struct md_scan *scan);
/* Points the identity of every entry equal to one of the n strings id_at
 * yields (in any order) at that string, and frees the scan's own copies
 * of them: a caller holding the same names already (the sync's base) then
 * does not pay for them twice. The strings must stay where they are until
 * md_scan_free. */
void md_scan_share_ids(struct md_scan *scan, size_t n, const char *(*id_at)(size_t i, void *arg),
                       void *arg);
/* Binary search of a scan by identity; NULL when absent. */
struct md_msg *md_scan_find(const struct md_scan *scan, const char *id);
/* md_scan_find for a caller that looks identities up in roughly the scan's
 * order (a folder's base by UID, whose names mostly sort the same way):
 * *hint (0 to start) is where the next one is tried first, with the
 * binary search only when that entry is not it. The same answer as
 * md_scan_find (identities in a scan are unique). */
struct md_msg *md_scan_find_near(const struct md_scan *scan, const char *id, size_t *hint);

/* A folder's change stamp: the change times (st_ctim) of its cur/ and new/
 * directories, and the wall-clock time they were read at, in nanoseconds
 * since the epoch (0 = unknown). Adding, removing or renaming an entry in
 * a directory moves its change time, and so does every flag change a
 * client makes (a rename in cur/) or a delivery (new/). The change time,
 * not the modification time: no program can set a change time back
 * (utimensat, "touch -d", rsync -t and tar all set mtime, and moving it
 * moves ctime to now), so a directory restored or touched by another
 * program never looks as it was. */
struct md_stamp {
    int64_t cur_ns;
    int64_t new_ns;
    int64_t taken_ns;
};
/* How old a change time must be at the time a stamp is taken for the stamp
 * to vouch for it: a file system stores change times from a coarse clock
 * (ticks of milliseconds, or whole seconds), so a second change within the
 * same tick as the first one leaves the time as it was. Dovecot's Maildir
 * code uses the same two seconds. */
#define MD_STAMP_SETTLE_NS (2 * 1000000000LL)
/* Reads the stamp of f: two stats, then the clock. -EOPNOTSUPP on a file
 * system where a stat may answer from a cache another host does not
 * invalidate (anything but ext2/3/4, xfs, btrfs, f2fs and tmpfs: NFS keeps
 * a directory's attributes for up to a minute), where only a scan tells. */
int md_folder_stamp(const struct md_folder *f, struct md_stamp *s_r);
/* Whether the folder is certainly as it was when rec was taken, given the
 * stamp now taken just now; pure, for table tests. False, meaning "read
 * it", unless: both stamps are known; cur/ and new/ have the change times
 * rec recorded; rec was taken at least MD_STAMP_SETTLE_NS after both
 * (else a later change in the same clock tick could have left them as they
 * were); the times carry nanoseconds (a file system with whole-second
 * times always reads); and no time lies ahead of the clock that read it
 * or behind rec (the wall clock stepped back: nothing can be told from
 * times then). md_unchanged_since(s, s) says whether s is worth recording. */
bool md_unchanged_since(const struct md_stamp *rec, const struct md_stamp *now);

/* The message's current file name. A scan entry holds none when the name
 * is the canonical one: the identity alone for a message in new/ without
 * letters, else the identity and ":2," with its flags, keywords and
 * unknown letters in ASCII order (md_info_suffix); it is made (and kept
 * in msg, owned) on the first call. */
const char *md_msg_name(struct md_msg *msg);
/* Parses a file name into identity, flags and keywords. Returns false for
 * names that are not Maildir messages (dotfiles, empty, containing '/').
 * On success the strings in *msg_r are malloc'd; free with md_msg_clear. */
bool md_parse_name(const char *name, bool in_new, struct md_msg *msg_r);
void md_msg_clear(struct md_msg *msg);
/* Formats the ":2,<letters>" suffix for flags and keywords (plus unknown
 * letters, kept in ASCII order). Caller frees. */
char *md_info_suffix(unsigned flags, md_keywords kw, const char *unknown);

/* Streaming delivery. md_writer_open creates tmp/<new unique name> with
 * O_EXCL and mode 0600. With crlf_to_lf, CRLF line endings in the data are
 * written as LF (a CR split from its LF across two chunks is handled). */
struct md_writer;
int md_writer_open(struct md_folder *f, bool crlf_to_lf, struct md_writer **w_r);
/* The same, but the temp file is created by the first write (or by
 * md_writer_finish), on whichever thread that runs: the caller can hand
 * the writer to another thread without having touched the file system.
 * md_writer_id is known at once; a failure to create the file is the
 * writer's error from then on (md_folder_error names the path). Never
 * fails (returns 0). */
int md_writer_new(struct md_folder *f, bool crlf_to_lf, struct md_writer **w_r);
int md_writer_write(struct md_writer *w, const void *data, size_t len);
/* Bytes written to the file so far (after conversion). */
uint64_t md_writer_size(const struct md_writer *w);
/* The identity the message will have once committed: the unique name of
 * the temp file, which commit keeps (only the ":2," suffix is added). Known
 * before commit so that an owner can record its intent durably first and
 * adopt the file after a crash. Valid until commit or abort. */
const char *md_writer_id(const struct md_writer *w);
/* Ends the data: writes what is buffered and, with mtime non-zero, sets the
 * file's modification time (Dovecot and mutt use it as the received date).
 * Later writes fail. commit calls it when the owner did not. */
int md_writer_finish(struct md_writer *w, time_t mtime);
/* Makes the bytes of n finished writers durable at once (unfinished ones are
 * finished with mtime 0; NULL entries are skipped): one syncfs of the file
 * system for a batch of three or more on ext4, xfs, btrfs, f2fs and tmpfs,
 * else one fsync per file; writers that failed are skipped, their commit
 * reports the error. f is the folder the writers were opened on, or another
 * handle on the same file system opened before they wrote (its tmp/ fd,
 * opened with the folder, is what syncfs reports errors through). On
 * failure none of them is
 * known durable: abort them all. md_writer_commit then skips its fsync. */
int md_writers_sync(struct md_folder *f, struct md_writer *const *ws, size_t n);
/* Finishes the writer (mtime as in md_writer_finish, ignored when it was
 * finished already), fsyncs it unless md_writers_sync made it durable,
 * closes it, then renames it into new/ (when flags and keywords are both
 * zero and to_cur is false) or cur/ with the info suffix. The directory is
 * fsynced unless
 * defer_dir_sync, in which case the caller must call md_folder_sync before
 * recording the message anywhere. On success the writer is freed and
 * *msg_r (when not NULL) describes the new message. On failure the temp file
 * is removed and the writer freed. */
int md_writer_commit(struct md_writer *w, bool to_cur, unsigned flags, md_keywords kw, time_t mtime,
                     bool defer_dir_sync, struct md_msg *msg_r);
/* Removes the temp file and frees the writer. */
void md_writer_abort(struct md_writer *w);
/* fsyncs new/ and cur/ where entries were renamed or removed through this
 * handle since the last call (after deferred commits, md_set_flags and
 * md_remove). */
int md_folder_sync(struct md_folder *f);

/* Neither md_set_flags nor md_remove fsyncs the directory: call
 * md_folder_sync before recording their effect in the index, or a crash can
 * bring a removed file back and it would be uploaded again as new mail.
 *
 * Renames msg to carry flags and kw (unknown letters are kept). When the file
 * is no longer at msg->name (a client renamed it meanwhile) the folder is
 * searched for the same identity and the rename retried; -ENOENT means the
 * message is gone. msg is updated to the new name on success. Moving a
 * message from new/ to cur/ happens only when move_to_cur is set (or when
 * it gets flags, which new/ cannot carry).
 *
 * The change applied is relative to msg->flags / msg->keywords as the
 * caller saw them: when a client renamed the file meanwhile, its changes are
 * kept and only what the caller added or removed is applied on top. A
 * rename never replaces another file: -EEXIST when a different message
 * already has the target name. */
int md_set_flags(struct md_folder *f, struct md_msg *msg, unsigned flags, md_keywords kw,
                 bool move_to_cur);
/* Removes the message (found again by identity if renamed). Already gone is
 * success. When the file was renamed meanwhile to different flags (the user
 * touched it after the caller decided), nothing is removed and -ESTALE is
 * returned: decide again on fresh facts. */
int md_remove(struct md_folder *f, struct md_msg *msg);
/* Opens the message file read-only (found again by identity if renamed).
 * Returns a file descriptor or a negative errno; updates msg. */
int md_open_msg(struct md_folder *f, struct md_msg *msg);

/* Keywords (dovecot-keywords file: lines "N name", N 0..25). md_keyword_index
 * returns the index 0..25 for name, assigning a free one and rewriting the
 * file atomically when create is set; -ENOENT when absent, MD_EKWFULL when
 * all 26 are used, another negative errno (-ENOSPC: disk full, -EAGAIN:
 * locked) when the file cannot be written. md_keyword_name returns NULL for
 * an unassigned index. The file is read lazily and re-read when it changes
 * on disk.
 *
 * New assignments are made under the folder's dovecot-uidlist.lock, the
 * dotlock under which Dovecot changes the file, so that a Dovecot serving
 * the same Maildir cannot give the same letter to another name meanwhile.
 * Taking it blocks the caller: a lock that a live process keeps longer than
 * the wait (3 s) gives -EAGAIN with the folder's error naming the lock file;
 * a stale one (dead local pid, or unchanged for two minutes) is taken over. */
#define MD_EKWFULL (-100001)
int md_keyword_index(struct md_folder *f, const char *name, bool create);
/* Assigns letters to every valid name of names[0..n) that has none, in one
 * look at the lock and one rewrite of the file. Names that find no free
 * letter stay without one (not an error). Returns 0 or a negative errno as
 * md_keyword_index does for a failed write. */
int md_keywords_assign(struct md_folder *f, const char *const *names, size_t n);
/* The whole table at once (one look at the file): names_r[i] is the name
 * of letter 'a' + i or NULL, valid until the next keyword call on f.
 * Returns the number of unassigned letters; when the file cannot be read,
 * every name is NULL and 0 letters count as free. */
int md_keyword_table(struct md_folder *f, const char *names_r[26]);
/* How long md_keyword_index waits for the lock (tests shorten it). */
void md_set_lock_wait(unsigned ms);
/* The returned pointer is valid until the next keyword call on f (which may
 * re-read the file). */
const char *md_keyword_name(struct md_folder *f, int index);

/* Removes tmp/ files older than 36 hours (debris of interrupted deliveries).
 * Returns the number removed or a negative errno. */
int md_clean_tmp(struct md_folder *f, time_t now);

/* Folder names <-> local paths.
 *
 * Server names are UTF-8 with '/' as the hierarchy separator (the IMAP layer
 * converts from modified UTF-7 and the server's delimiter). Each component
 * is mapped to a safe directory name: '%' and anything unsafe (control
 * characters, '/', a leading '.', the names "cur" "new" "tmp", and '.' itself
 * under maildir++) become %XX, so no name can escape the root and the
 * mapping reverses exactly. Empty components, and names longer than a
 * directory entry allows, are refused with -EINVAL.
 *
 * verbatim: INBOX -> ROOT/INBOX, "Lists/dev" -> ROOT/Lists/dev
 * maildir++: INBOX -> ROOT, "Lists/dev" -> ROOT/.Lists.dev
 * "INBOX" matches case-insensitively. */
int md_folder_local_path(const char *root, enum md_layout layout, const char *name, char **path_r);
/* Lists the folders that exist under root (directories with cur/ new/ tmp/),
 * as server-style names, sorted. */
int md_list_folders(const char *root, enum md_layout layout, char ***names_r, size_t *count_r);
/* The same, and also the paths of Maildir folders (with cur/ new/ tmp/)
 * whose directory names map to no folder name (control characters, bad
 * %XX escapes, empty maildir++ levels): they are never synced, and the
 * caller tells the user. Free both lists with md_free_names. */
int md_list_folders_unusable(const char *root, enum md_layout layout, char ***names_r,
                             size_t *count_r, char ***bad_r, size_t *nbad_r);
void md_free_names(char **names, size_t count);
/* Which of the identities ids[0..n) (unique names, sorted with strcmp) the
 * Maildir folder at path holds in new/ or cur/: found_r[i] is set for each
 * one present (and left alone for the others); with flags_r, the flag
 * letters of its name there (MD_FLAG_* bits). One readdir of each
 * directory and no stat, so that looking for a few messages in many
 * folders (a message moved between folders) costs a directory listing per
 * folder. A folder or directory that does not exist holds nothing. Returns
 * the number found or a negative errno. */
int md_find_ids(const char *path, const char *const *ids, size_t n, bool *found_r,
                unsigned *flags_r);
/* Moves the message with identity id from the Maildir folder at src into
 * the one at dst (its cur/, same unique name, flags and kw as the new info
 * suffix), or with link_only hard-links it there and leaves the source
 * (copying it when the two are on different file systems), then fsyncs the
 * directories changed. *flags_r (may be NULL) gets the flags the file had.
 * -ENOENT when src holds no such message, -EEXIST when dst holds one. */
int md_move_between(const char *src, const char *dst, const char *id, unsigned flags,
                    md_keywords kw, bool link_only, unsigned *flags_r);
/* Removes the message with identity id from the Maildir folder at path and
 * fsyncs its directory. Already gone is 0. With only_flags non-negative,
 * a file whose flags differ from it (the user changed it since) is left
 * alone: -ESTALE. */
int md_remove_id(const char *path, const char *id, int only_flags);
/* Removes a folder's directory when it holds no messages (cur/ new/ empty);
 * -ENOTEMPTY otherwise. Subfolders (verbatim layout) are left alone. */
int md_folder_remove(const char *path);
/* Renames a folder's directory (with what it holds) from one path to
 * another, creating the new one's parents, and makes both directory
 * entries durable. -EEXIST when to exists. */
int md_folder_rename(const char *from, const char *to);

#endif
