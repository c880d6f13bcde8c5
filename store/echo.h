#ifndef MAILSYNC_STORE_ECHO_H
#define MAILSYNC_STORE_ECHO_H

#include <stdbool.h>

/* What the store itself did to a folder's new/ and cur/, so that a watcher
 * of those directories can tell its own changes from another program's.
 *
 * The daemon watches every folder with inotify, and each file a folder job
 * created, renamed or removed woke it again: one more, empty sync of the
 * folder after every change (2-13 ms each, measured). With the journal on,
 * every such operation notes the file's path before its system call, and
 * the watcher takes each event whose path was noted.
 *
 * A note is used up by one create, move or removal event of its path (a
 * rename notes both of its paths); while a note is kept, attribute and
 * content events of that path are taken too. Notes are dropped 5 s after
 * they were made: an event the kernel never delivered (a queue overflow, a
 * directory not watched) must not hide a later change by another program
 * for longer than that. Thread-safe: notes come from the thread pool. */

/* Turns the journal on or off (off: notes are dropped, nothing is taken). */
void md_echo_enable(bool on);

/* Notes that the store is about to create, rename or remove `path`. */
void md_echo_note(const char *path);

/* Withdraws one note of `path` (the operation failed, so the kernel has
 * nothing to report). */
void md_echo_forget(const char *path);

/* Drops every note of a path under `dir` (a watcher that starts watching
 * there now would never see the events of the earlier ones, and a later
 * change by another program to the same path must not be taken for
 * them). */
void md_echo_drop(const char *dir);

/* Whether an event on `name` in directory `dir` is the store's own:
 * `moved` for a create, move or removal (which uses up a note), false for
 * an attribute or content change. */
bool md_echo_take(const char *dir, const char *name, bool moved);

/* Notes kept now (tests). */
unsigned md_echo_pending(void);

#endif
