/* The server as the sync engine sees it: the narrow set of operations a
 * folder sync needs (connect, list, select, changes since, fetch bodies and
 * headers, search, store flags, append, expunge / move, create / delete,
 * logout), behind a table of functions.
 *
 * Two implementations: the IMAP client (remote_imap, sync/remote_imap.c,
 * every call forwards to the imap_* function of the same name, see
 * sync/imap.h for the semantics) and an in-memory fake server used by the
 * C unit tests to drive folder syncs on an open session and to inject a
 * failure at any step. The engine never calls imap_* commands directly, so
 * whatever the fake proves about the engine holds for the real client.
 *
 * The contract is sync/imap.h's, word for word: every command returns 0 and
 * later calls its completion callback exactly once, from the loop and never
 * synchronously, or returns a negative errno and calls nothing; FETCH
 * responses of a command go to its callbacks, unsolicited data (EXISTS,
 * EXPUNGE, VANISHED, FETCH, STATUS, BYE) to cb->on_event; a fatal error
 * completes every pending command with err < 0, then calls cb->on_error
 * once; after that nothing is called and the owner frees the connection.
 * The data types (struct imap_result, imap_msg, imap_mailbox, imap_folder,
 * imap_event) are the IMAP client's.
 *
 * The `struct imap *` first argument of every callback is not part of the
 * interface: the fake passes NULL. Callers identify the connection through
 * their own callback argument. */
#ifndef MAILSYNC_REMOTE_H
#define MAILSYNC_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "sync/imap.h"

/* One connection (opaque; for remote_imap it is the struct imap). */
struct remote;

struct remote_ops {
    const char *name; /* "imap", "fake": for log lines */
    /* Connects and logs in; cb->on_ready or cb->on_error follows. arg is
     * the callbacks' argument, driver_arg the one given with the table
     * (the fake's server state; unused by the IMAP client). */
    int (*connect)(uv_loop_t *loop, const struct imap_opts *opts, const struct imap_cb *cb,
                   void *arg, void *driver_arg, struct remote **r_r);
    void (*free)(struct remote *r);
    enum imap_state (*state)(const struct remote *r);
    unsigned (*caps)(const struct remote *r); /* IMAP_CAP_* */
    bool (*condstore_enabled)(const struct remote *r);
    bool (*qresync_enabled)(const struct remote *r);
    const char *(*error)(const struct remote *r); /* last fatal error or NULL */

    int (*list)(struct remote *r,
                void (*on_folder)(struct imap *, const struct imap_folder *, void *),
                imap_done_cb done, void *arg);
    int (*select)(struct remote *r, const char *folder, const struct imap_select_opts *opts,
                  imap_done_cb done, void *arg);
    int (*uid_fetch)(struct remote *r, const char *uidset, unsigned items, uint64_t changedsince,
                     bool vanished, const struct imap_fetch_cb *cb, void *arg);
    int (*uid_search)(struct remote *r, const char *criteria, imap_done_cb done, void *arg);
    int (*uid_store)(struct remote *r, const char *uidset, char op, unsigned flags,
                     const char *const *keywords, size_t nkeywords, uint64_t unchangedsince,
                     imap_done_cb done, void *arg);
    int (*append)(struct remote *r, const struct imap_append *a, imap_done_cb done, void *arg);
    int (*uid_expunge)(struct remote *r, const char *uidset, imap_done_cb done, void *arg);
    int (*uid_move)(struct remote *r, const char *uidset, const char *folder, imap_done_cb done,
                    void *arg);
    int (*create)(struct remote *r, const char *folder, imap_done_cb done, void *arg);
    int (*delete)(struct remote *r, const char *folder, imap_done_cb done, void *arg);
    int (*logout)(struct remote *r, imap_done_cb done, void *arg);
    /* RENAME (children move with the folder). NULL for a server interface
     * that has none: folders renamed on one side are then not carried out
     * as renames. */
    int (*rename)(struct remote *r, const char *from, const char *to, imap_done_cb done, void *arg);
    /* STATUS of one folder (on_status once, then done). NULL for a server
     * interface without it: the engine then knows no folder's figures
     * before it selects it, as with a server without LIST-STATUS. */
    int (*status)(struct remote *r, const char *folder, unsigned items,
                  void (*on_status)(struct imap *, const struct imap_status_info *, void *),
                  imap_done_cb done, void *arg);
    /* Reading on after a body sink returned IMAP_SINK_PAUSE (imap_resume).
     * NULL when the server never pauses (the fake delivers bodies whole):
     * the engine then never asks for a pause. */
    void (*resume)(struct remote *r);
};

/* The IMAP client (sync/imap.h). */
extern const struct remote_ops remote_imap;

#endif
