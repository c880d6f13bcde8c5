/* The IMAP client as the engine's server (sync/remote.h): each operation
 * forwards to the imap_* function of the same name; the connection handle
 * is the struct imap itself. */
#include "sync/remote.h"

#define IM(r) ((struct imap *)(r))
#define CIM(r) ((const struct imap *)(r))

static int r_connect(uv_loop_t *loop, const struct imap_opts *opts, const struct imap_cb *cb,
                     void *arg, void *driver_arg, struct remote **r_r)
{
    (void)driver_arg;
    struct imap *im = NULL;
    int r = imap_connect(loop, opts, cb, arg, &im);
    *r_r = (struct remote *)im;
    return r;
}

static void r_free(struct remote *r)
{
    imap_free(IM(r));
}

static enum imap_state r_state(const struct remote *r)
{
    return imap_get_state(CIM(r));
}

static unsigned r_caps(const struct remote *r)
{
    return imap_caps(CIM(r));
}

static bool r_condstore(const struct remote *r)
{
    return imap_condstore_enabled(CIM(r));
}

static bool r_qresync(const struct remote *r)
{
    return imap_qresync_enabled(CIM(r));
}

static const char *r_error(const struct remote *r)
{
    return imap_error(CIM(r));
}

static int r_list(struct remote *r,
                  void (*on_folder)(struct imap *, const struct imap_folder *, void *),
                  imap_done_cb done, void *arg)
{
    return imap_list(IM(r), on_folder, done, arg);
}

static int r_status(struct remote *r, const char *folder, unsigned items,
                    void (*on_status)(struct imap *, const struct imap_status_info *, void *),
                    imap_done_cb done, void *arg)
{
    return imap_status(IM(r), folder, items, on_status, done, arg);
}

static int r_select(struct remote *r, const char *folder, const struct imap_select_opts *opts,
                    imap_done_cb done, void *arg)
{
    return imap_select(IM(r), folder, opts, done, arg);
}

static int r_uid_fetch(struct remote *r, const char *uidset, unsigned items, uint64_t changedsince,
                       bool vanished, const struct imap_fetch_cb *cb, void *arg)
{
    return imap_uid_fetch(IM(r), uidset, items, changedsince, vanished, cb, arg);
}

static int r_uid_search(struct remote *r, const char *criteria, imap_done_cb done, void *arg)
{
    return imap_uid_search(IM(r), criteria, done, arg);
}

static int r_uid_store(struct remote *r, const char *uidset, char op, unsigned flags,
                       const char *const *keywords, size_t nkeywords, uint64_t unchangedsince,
                       imap_done_cb done, void *arg)
{
    return imap_uid_store(IM(r), uidset, op, flags, keywords, nkeywords, unchangedsince, done, arg);
}

static int r_append(struct remote *r, const struct imap_append *a, imap_done_cb done, void *arg)
{
    return imap_append(IM(r), a, done, arg);
}

static int r_uid_expunge(struct remote *r, const char *uidset, imap_done_cb done, void *arg)
{
    return imap_uid_expunge(IM(r), uidset, done, arg);
}

static int r_uid_move(struct remote *r, const char *uidset, const char *folder, imap_done_cb done,
                      void *arg)
{
    return imap_uid_move(IM(r), uidset, folder, done, arg);
}

static int r_create(struct remote *r, const char *folder, imap_done_cb done, void *arg)
{
    return imap_create(IM(r), folder, done, arg);
}

static int r_delete(struct remote *r, const char *folder, imap_done_cb done, void *arg)
{
    return imap_delete(IM(r), folder, done, arg);
}

static int r_rename(struct remote *r, const char *from, const char *to, imap_done_cb done,
                    void *arg)
{
    return imap_rename(IM(r), from, to, done, arg);
}

static int r_logout(struct remote *r, imap_done_cb done, void *arg)
{
    return imap_logout(IM(r), done, arg);
}

static void r_resume(struct remote *r)
{
    imap_resume(IM(r));
}

const struct remote_ops remote_imap = {
    .name = "imap",
    .connect = r_connect,
    .free = r_free,
    .state = r_state,
    .caps = r_caps,
    .condstore_enabled = r_condstore,
    .qresync_enabled = r_qresync,
    .error = r_error,
    .list = r_list,
    .status = r_status,
    .select = r_select,
    .uid_fetch = r_uid_fetch,
    .uid_search = r_uid_search,
    .uid_store = r_uid_store,
    .append = r_append,
    .uid_expunge = r_uid_expunge,
    .uid_move = r_uid_move,
    .create = r_create,
    .delete = r_delete,
    .logout = r_logout,
    .resume = r_resume,
    .rename = r_rename,
};
