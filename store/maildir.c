/* Maildir folders: scan, streaming delivery, flag renames, removal, keywords
 * and tmp/ cleanup. The folder-name mapping lives in store/mdname.c.
 *
 * The write order follows the Maildir rules of DESIGN.md invariant 4: a
 * message is written to tmp/ under a name no other process can choose,
 * fsynced, renamed into new/ or cur/, and the directory is fsynced before
 * anyone records the message. Clients (mutt, notmuch, Dovecot) rename files
 * at any moment, so every operation on an existing message finds the file
 * again by its identity when its last known name has gone. */
#include "store/maildir.h"

#include "core/log.h"
#include "core/util.h"
#include "store/echo.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

/* The size of a writer's buffer: big enough that a multi-megabyte message
 * costs few write() calls, small enough that many concurrent deliveries stay
 * cheap. The message itself is never held whole in memory. */
#define MD_WBUF_SIZE (64 * 1024)
/* A writer's buffer starts this small and doubles up to MD_WBUF_SIZE as a
 * message needs it: a download keeps two batches of writers open (128),
 * and 64 KiB each was 8 MiB of a first download's peak for messages of a
 * few KB. */
#define MD_WBUF_MIN (4 * 1024)
/* tmp/ files older than this are debris of interrupted deliveries. */
#define MD_TMP_MAX_AGE (36 * 60 * 60)
#define MD_KW_COUNT 26
#define MD_KW_FILE "dovecot-keywords"
/* A keywords file is 26 short lines; anything far bigger is not one. */
#define MD_KW_FILE_MAX (1024 * 1024)
#define MD_KW_MASK ((md_keywords)((1u << MD_KW_COUNT) - 1))

struct md_folder {
    char *path;
    char *path_new;
    char *path_cur;
    char *path_tmp;
    /* The last error's text, replaced under err_mu by any thread: a write
     * on the thread pool can fail while another thread reports the batch
     * before it (md_folder_error copies it out under the lock). */
    pthread_mutex_t err_mu;
    char *err;
    /* new/ or cur/ had an entry renamed in or out, or removed, through
     * this handle since the last md_folder_sync: only those need the
     * directory fsync. */
    bool dirty_new, dirty_cur;

    /* The dovecot-keywords table, valid while the file on disk still has
     * the identity recorded here (checked by stat before every use). */
    char *kw_names[MD_KW_COUNT];
    bool kw_loaded;
    bool kw_exists;
    dev_t kw_dev;
    ino_t kw_ino;
    off_t kw_size;
    struct timespec kw_mtim;
    struct timespec kw_ctim;

    /* tmp/, opened with the folder (before any delivery): syncfs on it
     * reports every write-back error on the file system since it was opened
     * (Linux 5.8), so md_writers_sync can make a batch durable with one
     * call, on the file systems where syncfs writes everything back. */
    int sync_fd;
    bool syncfs_ok;
    /* This open created new/, cur/ and tmp/ (md_folder_created). */
    bool created;
};

struct md_writer {
    struct md_folder *f;
    int fd;
    char *uname;    /* the unique name, which becomes the identity */
    char *tmp_path; /* NULL once the temp file has been removed */
    bool crlf_to_lf;
    bool held_cr;  /* a CR ended the last chunk; the next one decides */
    bool finished; /* md_writer_finish: no more data */
    bool synced;   /* md_writers_sync: the bytes are durable */
    bool created;  /* the temp file exists (md_writer_new creates it late) */
    int err;       /* sticky negative errno after a failed write */
    uint64_t size;
    size_t blen;
    size_t bcap; /* of buf: 0, or MD_WBUF_MIN doubled up to MD_WBUF_SIZE */
    char *buf;
};

/* Process-wide delivery counter: with the pid and the microseconds it keeps
 * names apart inside one process, even between threads in the same
 * microsecond. */
static atomic_ulong md_delivery_counter;

static void set_err(struct md_folder *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_err(struct md_folder *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&f->err_mu);
    free(f->err);
    f->err = msg;
    pthread_mutex_unlock(&f->err_mu);
}

/* Records "PATH: WHAT: strerror" and returns the negative errno. */
static int fail(struct md_folder *f, int err, const char *path, const char *what)
{
    set_err(f, "%s: %s: %s", path, what, strerror(err));
    return -err;
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ---- Folders ---------------------------------------------------------- */

static int mkdir_sub(const char *path, char **err_r)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        int e = errno;
        if (err_r != NULL) {
            *err_r = xasprintf("%s: cannot create directory: %s", path, strerror(e));
        }
        return -e;
    }
    return 0;
}

/* Local file systems whose syncfs writes back every dirty file. FUSE ones
 * (gocryptfs, sshfs, ...) and stacked ones such as eCryptfs do not pass it
 * on, so files there are made durable one fsync at a time. */
static bool syncfs_trusted(int fd)
{
    struct statfs sf;
    if (fstatfs(fd, &sf) != 0) {
        return false;
    }
    switch ((unsigned long)sf.f_type) {
    case 0xEF53UL:     /* ext2/3/4 */
    case 0x58465342UL: /* xfs */
    case 0x9123683EUL: /* btrfs */
    case 0xF2F52010UL: /* f2fs */
    case 0x01021994UL: /* tmpfs */
        return true;
    default:
        return false;
    }
}

static void open_sync_fd(struct md_folder *f)
{
    f->sync_fd = open(f->path_tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    f->syncfs_ok = f->sync_fd >= 0 && syncfs_trusted(f->sync_fd);
}

static int add_to_dirsync(const char *path, void *arg)
{
    md_dirsync_add(arg, path);
    return 0;
}

void md_dirsync_add(struct md_dirsync *ds, const char *path)
{
    uint64_t h = str_hash(path, strlen(path));
    size_t it = 0, i;
    while (strindex_next(&ds->ix, h, &it, &i)) {
        if (strcmp(ds->paths[i], path) == 0) {
            return;
        }
    }
    xgrow(&ds->paths, &ds->cap, ds->n + 1, sizeof(*ds->paths));
    ds->paths[ds->n] = xstrdup(path);
    strindex_add(&ds->ix, h, ds->n++);
}

/* Directories in a set from which one syncfs is cheaper than an fsync of
 * each (many new folders of a first sync). */
#define MD_DIRSYNC_SYNCFS_MIN 16

/* One syncfs for the whole set when every directory in it lives on one
 * local file system where syncfs writes everything back: the first
 * directory's file system is synced and the others are checked to share
 * its device. Returns 1 when done that way, 0 to fall back to fsyncs, or
 * a negative errno with *err_r. */
static int dirsync_syncfs(struct md_dirsync *ds, char **err_r)
{
    if (ds->n < MD_DIRSYNC_SYNCFS_MIN) {
        return 0;
    }
    int fd = open(ds->paths[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    struct stat st0;
    if (fstat(fd, &st0) != 0 || !syncfs_trusted(fd)) {
        close(fd);
        return 0;
    }
    for (size_t i = 1; i < ds->n; i++) {
        struct stat st;
        if (stat(ds->paths[i], &st) == 0 && st.st_dev != st0.st_dev) {
            close(fd);
            return 0; /* another file system (a mount inside the Maildir) */
        }
    }
    int r = syncfs(fd) == 0 ? 1 : -errno;
    close(fd);
    if (r < 0) {
        *err_r = xasprintf("%s: syncfs failed: %s", ds->paths[0], strerror(-r));
    }
    return r;
}

int md_dirsync_run(struct md_dirsync *ds, char **err_r)
{
    *err_r = NULL;
    int sr = dirsync_syncfs(ds, err_r);
    if (sr < 0) {
        return sr;
    }
    for (size_t i = 0; sr == 0 && i < ds->n; i++) {
        /* Once the file system committed its journal for the first, the
         * others have little or nothing left to write. */
        int r = fsync_dir(ds->paths[i]);
        if (r < 0 && r != -ENOENT) {
            *err_r = xasprintf("%s: fsync failed: %s", ds->paths[i], strerror(-r));
            return r;
        }
    }
    for (size_t i = 0; i < ds->n; i++) {
        free(ds->paths[i]);
    }
    ds->n = 0;
    strindex_reset(&ds->ix);
    return 0;
}

void md_dirsync_free(struct md_dirsync *ds)
{
    for (size_t i = 0; i < ds->n; i++) {
        free(ds->paths[i]);
    }
    free(ds->paths);
    strindex_free(&ds->ix);
    memset(ds, 0, sizeof(*ds));
}

void md_dirsync_take(struct md_dirsync *dst, struct md_dirsync *src)
{
    if (dst->n == 0) {
        md_dirsync_free(dst);
        *dst = *src;
        memset(src, 0, sizeof(*src));
        return;
    }
    for (size_t i = 0; i < src->n; i++) {
        md_dirsync_add(dst, src->paths[i]);
    }
    md_dirsync_free(src);
}

void md_folder_sync_later(struct md_folder *f, struct md_dirsync *ds)
{
    if (f->dirty_new) {
        md_dirsync_add(ds, f->path_new);
        f->dirty_new = false;
    }
    if (f->dirty_cur) {
        md_dirsync_add(ds, f->path_cur);
        f->dirty_cur = false;
    }
}

int md_folder_open(const char *path, bool create, bool maildirpp_sub, struct md_folder **f_r,
                   char **err_r)
{
    return md_folder_open_ds(path, create, maildirpp_sub, NULL, f_r, err_r);
}

int md_folder_open_ds(const char *path, bool create, bool maildirpp_sub, struct md_dirsync *ds,
                      struct md_folder **f_r, char **err_r)
{
    if (err_r != NULL) {
        *err_r = NULL;
    }
    *f_r = NULL;
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') {
        len--;
    }
    if (len == 0) {
        if (err_r != NULL) {
            *err_r = xstrdup("empty Maildir path");
        }
        return -EINVAL;
    }
    struct md_folder *f = xcalloc(1, sizeof(*f));
    pthread_mutex_init(&f->err_mu, NULL);
    f->sync_fd = -1;
    f->path = xstrndup(path, len);
    f->path_new = path_join(f->path, "new");
    f->path_cur = path_join(f->path, "cur");
    f->path_tmp = path_join(f->path, "tmp");
    int ret = 0;
    bool created[3] = {false, false, false};

    if (create) {
        /* Durable: a folder whose messages the index records must not
         * vanish in a crash because its own directory entry was lost. */
        ret = ds != NULL ? mkdir_p_each(f->path, 0700, add_to_dirsync, ds)
                         : mkdir_p_durable(f->path, 0700, true);
        if (ret < 0) {
            if (err_r != NULL) {
                *err_r = xasprintf("%s: cannot create directory: %s", f->path, strerror(-ret));
            }
            goto out;
        }
        bool made = false;
        const char *subs[] = {f->path_cur, f->path_new, f->path_tmp};
        for (size_t i = 0; i < ARRAY_SIZE(subs); i++) {
            /* mkdir first: in a folder this run creates, all three are
             * missing, and an EEXIST costs no more than a stat. */
            if (mkdir(subs[i], 0700) == 0) {
                created[i] = true;
                made = true;
                continue;
            }
            if (errno != EEXIST) {
                if ((ret = mkdir_sub(subs[i], err_r)) < 0) {
                    goto out;
                }
                created[i] = true;
                made = true;
            }
        }
        f->created = created[0] && created[1] && created[2];
        if (maildirpp_sub) {
            char *marker = path_join(f->path, "maildirfolder");
            int fd = open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
            if (fd < 0) {
                ret = -errno;
                if (err_r != NULL) {
                    *err_r = xasprintf("%s: cannot create: %s", marker, strerror(errno));
                }
                free(marker);
                goto out;
            }
            close(fd);
            free(marker);
        }
        /* A folder created here must survive a crash before the first
         * delivery into it is recorded anywhere. */
        if (made && ds != NULL) {
            md_dirsync_add(ds, f->path);
        } else if (made && (ret = fsync_dir(f->path)) < 0) {
            if (err_r != NULL) {
                *err_r = xasprintf("%s: fsync failed: %s", f->path, strerror(-ret));
            }
            goto out;
        }
    }
    const char *subs[] = {f->path_cur, f->path_new, f->path_tmp};
    for (size_t i = 0; i < ARRAY_SIZE(subs); i++) {
        if (!created[i] && !is_dir(subs[i])) {
            ret = -ENOENT;
            if (err_r != NULL) {
                *err_r = xasprintf("%s: not a Maildir folder (%s is missing)", f->path, subs[i]);
            }
            goto out;
        }
    }
    open_sync_fd(f);
    *f_r = f;
    return 0;
out:
    md_folder_close(f);
    return ret;
}

bool md_folder_created(const struct md_folder *f)
{
    return f->created;
}

static void kw_clear(struct md_folder *f)
{
    for (int i = 0; i < MD_KW_COUNT; i++) {
        free(f->kw_names[i]);
        f->kw_names[i] = NULL;
    }
}

void md_folder_close(struct md_folder *f)
{
    if (f == NULL) {
        return;
    }
    kw_clear(f);
    if (f->sync_fd >= 0) {
        close(f->sync_fd);
    }
    free(f->path);
    free(f->path_new);
    free(f->path_cur);
    free(f->path_tmp);
    free(f->err);
    pthread_mutex_destroy(&f->err_mu);
    free(f);
}

const char *md_folder_path(const struct md_folder *f)
{
    return f->path;
}

const char *md_folder_error(const struct md_folder *f)
{
    /* A copy per thread: the folder's text may be replaced by another
     * thread at any time. Long enough for the longest message, which
     * names two paths. */
    static _Thread_local char copy[3 * PATH_MAX];
    struct md_folder *m = (struct md_folder *)f;
    pthread_mutex_lock(&m->err_mu);
    snprintf(copy, sizeof(copy), "%s", m->err != NULL ? m->err : "");
    pthread_mutex_unlock(&m->err_mu);
    return copy;
}

int md_folder_sync(struct md_folder *f)
{
    if (f->dirty_new) {
        int ret = fsync_dir(f->path_new);
        if (ret < 0) {
            return fail(f, -ret, f->path_new, "fsync failed");
        }
        f->dirty_new = false;
    }
    if (f->dirty_cur) {
        int ret = fsync_dir(f->path_cur);
        if (ret < 0) {
            return fail(f, -ret, f->path_cur, "fsync failed");
        }
        f->dirty_cur = false;
    }
    return 0;
}

/* ---- Names ------------------------------------------------------------ */

static const char md_flag_letters[] = "DFPRST";

static int flag_bit(unsigned char c)
{
    switch (c) {
    case 'D':
        return MD_FLAG_DRAFT;
    case 'F':
        return MD_FLAG_FLAGGED;
    case 'P':
        return MD_FLAG_PASSED;
    case 'R':
        return MD_FLAG_REPLIED;
    case 'S':
        return MD_FLAG_SEEN;
    case 'T':
        return MD_FLAG_TRASHED;
    default:
        return 0;
    }
}

/* Letters with a meaning of their own: they are never carried as unknown. */
static bool known_letter(unsigned char c)
{
    return flag_bit(c) != 0 || (c >= 'a' && c <= 'z');
}

/* Finds where the info part starts: the first ":2,". A name with ':' but no
 * ":2," (an experimental ":1," info, or a foreign tool) is all identity. */
static size_t id_len(const char *name)
{
    const char *info = strstr(name, ":2,");
    return info != NULL ? (size_t)(info - name) : strlen(name);
}

/* The letters of name's info part (idlen is where ":2," starts, or the
 * whole length) as flags, keywords and the unknown ones, those malloc'd
 * in ASCII order without duplicates (NULL when none). */
static void parse_info(const char *name, size_t idlen, unsigned *flags_r, md_keywords *kw_r,
                       char **unknown_r)
{
    unsigned flags = 0;
    md_keywords kw = 0;
    /* Unknown letters are collected as a set so that they come out in ASCII
     * order without duplicates, which is how they are written back. */
    uint8_t unknown[256] = {0};
    size_t nunknown = 0;
    if (name[idlen] != '\0') {
        for (const unsigned char *p = (const unsigned char *)name + idlen + 3; *p != '\0'; p++) {
            int bit = flag_bit(*p);
            if (bit != 0) {
                flags |= (unsigned)bit;
            } else if (*p >= 'a' && *p <= 'z') {
                kw |= (md_keywords)1 << (*p - 'a');
            } else if (!unknown[*p]) {
                unknown[*p] = 1;
                nunknown++;
            }
        }
    }
    *flags_r = flags;
    *kw_r = kw;
    *unknown_r = NULL;
    if (nunknown > 0) {
        char *u = xmalloc(nunknown + 1);
        size_t n = 0;
        for (int c = 1; c < 256; c++) {
            if (unknown[c]) {
                u[n++] = (char)c;
            }
        }
        u[n] = '\0';
        *unknown_r = u;
    }
}

/* Whether name can be a Maildir message's; its identity's length then. */
static bool name_ok(const char *name, size_t *idlen_r)
{
    if (name == NULL || name[0] == '\0' || name[0] == '.' || strchr(name, '/') != NULL) {
        return false;
    }
    *idlen_r = id_len(name);
    return *idlen_r > 0;
}

bool md_parse_name(const char *name, bool in_new, struct md_msg *msg_r)
{
    memset(msg_r, 0, sizeof(*msg_r));
    size_t idlen;
    if (!name_ok(name, &idlen)) {
        return false;
    }
    unsigned flags;
    parse_info(name, idlen, &flags, &msg_r->keywords, &msg_r->unknown_flags);
    msg_r->flags = (uint8_t)flags;
    msg_r->id = xstrndup(name, idlen);
    msg_r->name = xstrdup(name);
    msg_r->in_new = in_new;
    return true;
}

void md_msg_clear(struct md_msg *msg)
{
    if (msg == NULL) {
        return;
    }
    if (!msg->id_borrowed) {
        free(msg->id);
    }
    free(msg->name);
    free(msg->unknown_flags);
    memset(msg, 0, sizeof(*msg));
}

/* The ":2,<letters>" suffix into buf (MD_SUFFIX_MAX bytes), NUL-terminated;
 * returns its length. */
#define MD_SUFFIX_MAX (3 + 256)
static size_t info_suffix(unsigned flags, md_keywords kw, const char *unknown, char *buf)
{
    /* Every letter goes into one set and comes out in ASCII order: that is
     * the order Maildir requires (uppercase flags, then keywords), and
     * unknown letters fall into their places. */
    if (unknown == NULL) {
        /* The common case, without the set: the flag letters are in ASCII
         * order already, and every one sorts before the keyword letters. */
        size_t n = 0;
        buf[n++] = ':';
        buf[n++] = '2';
        buf[n++] = ',';
        for (int i = 0; md_flag_letters[i] != '\0'; i++) {
            if (flags & (unsigned)flag_bit((unsigned char)md_flag_letters[i])) {
                buf[n++] = md_flag_letters[i];
            }
        }
        for (int i = 0; kw != 0 && i < MD_KW_COUNT; i++) {
            if (kw & ((md_keywords)1 << i)) {
                buf[n++] = (char)('a' + i);
            }
        }
        buf[n] = '\0';
        return n;
    }
    uint8_t set[256] = {0};
    for (int i = 0; md_flag_letters[i] != '\0'; i++) {
        if (flags & (unsigned)flag_bit((unsigned char)md_flag_letters[i])) {
            set[(unsigned char)md_flag_letters[i]] = 1;
        }
    }
    for (int i = 0; i < MD_KW_COUNT; i++) {
        if (kw & ((md_keywords)1 << i)) {
            set['a' + i] = 1;
        }
    }
    if (unknown != NULL) {
        for (const unsigned char *p = (const unsigned char *)unknown; *p != '\0'; p++) {
            /* A known letter here would turn on a flag the caller did not
             * ask for, and '/' would leave the directory. */
            if (!known_letter(*p) && *p != '/') {
                set[*p] = 1;
            }
        }
    }
    size_t n = 0;
    buf[n++] = ':';
    buf[n++] = '2';
    buf[n++] = ',';
    for (int c = 1; c < 256; c++) {
        if (set[c]) {
            buf[n++] = (char)c;
        }
    }
    buf[n] = '\0';
    return n;
}

char *md_info_suffix(unsigned flags, md_keywords kw, const char *unknown)
{
    char buf[MD_SUFFIX_MAX];
    size_t n = info_suffix(flags, kw, unknown, buf);
    return xstrndup(buf, n);
}

/* The name a message with these facts has when nothing but this code
 * named it: the bare identity for a message in new/ without letters (as
 * delivered), else the identity and the suffix of its letters in order.
 * A scan keeps no name of its own for a file named so (see struct
 * md_msg); the suffix goes to buf (MD_SUFFIX_MAX bytes). */
static const char *canonical_suffix(const struct md_msg *m, char *buf)
{
    if (m->in_new && m->flags == 0 && m->keywords == 0 && m->unknown_flags == NULL) {
        return "";
    }
    info_suffix(m->flags, m->keywords, m->unknown_flags, buf);
    return buf;
}

const char *md_msg_name(struct md_msg *msg)
{
    if (msg->name == NULL && msg->id != NULL) {
        char buf[MD_SUFFIX_MAX];
        msg->name = xasprintf("%s%s", msg->id, canonical_suffix(msg, buf));
    }
    return msg->name;
}

/* ---- Scan ------------------------------------------------------------- */

/* A scan's identities, in blocks of 64 KiB that never move (an entry's id
 * points into them): no allocation and no malloc header per file. */
#define MD_IDS_BLOCK ((size_t)64 << 10)
struct md_scan_ids {
    char **blocks;
    size_t n, cap, used;
};

static char *ids_add(struct md_scan_ids *ids, const char *s, size_t len)
{
    if (ids->n == 0 || ids->used + len + 1 > MD_IDS_BLOCK) {
        xgrow(&ids->blocks, &ids->cap, ids->n + 1, sizeof(*ids->blocks));
        /* A directory entry's name is at most 255 bytes: it always fits. */
        ids->blocks[ids->n++] = xmalloc(MD_IDS_BLOCK);
        ids->used = 0;
    }
    char *p = ids->blocks[ids->n - 1] + ids->used;
    memcpy(p, s, len);
    p[len] = '\0';
    ids->used += len + 1;
    return p;
}

static void ids_free(struct md_scan_ids *ids)
{
    if (ids == NULL) {
        return;
    }
    for (size_t i = 0; i < ids->n; i++) {
        free(ids->blocks[i]);
    }
    free(ids->blocks);
    free(ids);
}

struct msgvec {
    struct md_msg *v;
    size_t n;
    size_t cap;
    struct md_scan_ids *ids;
};

/* The kernel's dirent64 record, as getdents64 returns it. */
struct md_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Where a one-call read of a directory gives up and reads in pieces. */
#define MD_SCAN_BUF_MAX (64u << 20)

static void scan_entry(const struct md_dirent64 *de, bool in_new, struct msgvec *mv)
{
    if (de->d_name[0] == '.') {
        return;
    }
    /* No stat per file: d_type is trusted when the file system fills it in,
     * and DT_UNKNOWN (some network file systems) counts as a file. */
    if (de->d_type != DT_UNKNOWN && de->d_type != DT_REG) {
        return;
    }
    size_t idlen;
    if (!name_ok(de->d_name, &idlen)) {
        return;
    }
    xgrow(&mv->v, &mv->cap, mv->n + 1, sizeof(*mv->v));
    struct md_msg *m = &mv->v[mv->n++];
    memset(m, 0, sizeof(*m));
    unsigned flags;
    parse_info(de->d_name, idlen, &flags, &m->keywords, &m->unknown_flags);
    m->flags = (uint8_t)flags;
    m->in_new = in_new;
    m->id = ids_add(mv->ids, de->d_name, idlen);
    m->id_borrowed = true;
    /* Most names are canonical (this code and every mail client write
     * them so): only the others are kept. */
    char buf[MD_SUFFIX_MAX];
    if (strcmp(de->d_name + idlen, canonical_suffix(m, buf)) != 0) {
        m->name = xstrdup(de->d_name);
    }
}

static void msgvec_truncate(struct msgvec *mv, size_t n)
{
    while (mv->n > n) {
        md_msg_clear(&mv->v[--mv->n]);
    }
}

/* Reads a directory with getdents64 into a buffer big enough for all of it
 * in one call. Linux holds the directory's lock for the length of one call,
 * so a client renaming a message inside the directory is seen under the old
 * name or the new one, never under neither (which plain readdir in pieces
 * allows, and which would read as a deletion). A directory that does not fit
 * in one call is read again with a larger buffer, up to MD_SCAN_BUF_MAX;
 * beyond that it is read in pieces and md_scan's repeated passes cover it. */
static int scan_dir(struct md_folder *f, const char *dir, bool in_new, struct msgvec *mv,
                    bool *whole_r)
{
    *whole_r = false;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return fail(f, errno, dir, "cannot open directory");
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fail(f, e, dir, "cannot read directory");
    }
    /* A directory's size bounds its entries on the common file systems; the
     * records returned are a little larger than the ones on disk. */
    size_t cap = 65536;
    if (st.st_size > 0 && (uint64_t)st.st_size < MD_SCAN_BUF_MAX / 2) {
        cap += (size_t)st.st_size * 2;
    }
    if (cap > MD_SCAN_BUF_MAX) {
        cap = MD_SCAN_BUF_MAX;
    }
    size_t start = mv->n;
    char *buf = xmalloc(cap);
    int ret = 0;
    for (;;) {
        unsigned calls = 0;
        bool restart = false;
        for (;;) {
            ssize_t got = getdents64(fd, buf, cap);
            if (got < 0) {
                ret = fail(f, errno, dir, "cannot read directory");
                break;
            }
            if (got == 0) {
                break;
            }
            if (++calls > 1 && cap < MD_SCAN_BUF_MAX) {
                restart = true;
                break;
            }
            for (ssize_t off = 0; off < got;) {
                const struct md_dirent64 *de = (const struct md_dirent64 *)(buf + off);
                scan_entry(de, in_new, mv);
                off += de->d_reclen;
            }
        }
        if (ret < 0 || !restart) {
            *whole_r = ret == 0 && calls <= 1;
            break;
        }
        /* It did not fit: read it all again, in one call this time. */
        msgvec_truncate(mv, start);
        cap = cap * 4 < MD_SCAN_BUF_MAX ? cap * 4 : MD_SCAN_BUF_MAX;
        free(buf);
        buf = xmalloc(cap);
        if (lseek(fd, 0, SEEK_SET) != 0) {
            ret = fail(f, errno, dir, "cannot read directory");
            break;
        }
    }
    free(buf);
    close(fd);
    if (ret < 0) {
        msgvec_truncate(mv, start);
    }
    return ret;
}

static int msg_cmp(const void *a, const void *b)
{
    const struct md_msg *x = a;
    const struct md_msg *y = b;
    int c = strcmp(x->id, y->id);
    if (c != 0) {
        return c;
    }
    /* cur/ before new/: for the same identity the cur/ copy is preferred. */
    if (x->in_new != y->in_new) {
        return x->in_new ? 1 : -1;
    }
    /* The same identity starts both names. */
    char bx[MD_SUFFIX_MAX], by[MD_SUFFIX_MAX];
    size_t idlen = strlen(x->id);
    return strcmp(x->name != NULL ? x->name + idlen : canonical_suffix(x, bx),
                  y->name != NULL ? y->name + idlen : canonical_suffix(y, by));
}

static char *msg_path(const struct md_folder *f, const struct md_msg *msg);

static bool msg_exists(struct md_folder *f, const struct md_msg *m)
{
    char *path = msg_path(f, m);
    struct stat st;
    bool ok = lstat(path, &st) == 0;
    free(path);
    return ok;
}

/* The change stamps of new/ and cur/: any entry added, removed or renamed
 * in a directory moves its mtime/ctime. */
struct dir_stamp {
    struct timespec mtime[2], ctime[2];
    bool ok;
};

static struct dir_stamp dir_stamps(const struct md_folder *f)
{
    struct dir_stamp ds = {.ok = true};
    const char *dirs[2] = {f->path_new, f->path_cur};
    for (int i = 0; i < 2; i++) {
        struct stat st;
        if (stat(dirs[i], &st) != 0) {
            ds.ok = false;
            continue;
        }
        ds.mtime[i] = st.st_mtim;
        ds.ctime[i] = st.st_ctim;
    }
    return ds;
}

static bool ts_eq(struct timespec a, struct timespec b)
{
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

static bool dir_stamps_eq(const struct dir_stamp *a, const struct dir_stamp *b)
{
    if (!a->ok || !b->ok) {
        return false;
    }
    for (int i = 0; i < 2; i++) {
        if (!ts_eq(a->mtime[i], b->mtime[i]) || !ts_eq(a->ctime[i], b->ctime[i])) {
            return false;
        }
    }
    return true;
}

/* True when a directory changed within the last 50 ms. File system
 * timestamps come from a coarse clock (a few milliseconds), so a second
 * change in the same tick would not move them: a folder that was touched
 * just now is treated as still changing. */
static bool dir_stamps_recent(const struct dir_stamp *ds)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long now_ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    for (int i = 0; i < 2; i++) {
        const struct timespec *t[2] = {&ds->mtime[i], &ds->ctime[i]};
        for (int j = 0; j < 2; j++) {
            long long ms = (long long)t[j]->tv_sec * 1000 + t[j]->tv_nsec / 1000000;
            if (now_ms - ms < 50) {
                return true;
            }
        }
    }
    return false;
}

/* Whether new/ changed since st was taken, or within the last 50 ms
 * (dir_stamps_recent). */
static bool new_changed(const struct md_folder *f, const struct stat *st)
{
    struct stat now;
    if (stat(f->path_new, &now) != 0) {
        return true;
    }
    struct dir_stamp ds = {
        .ok = true, .mtime = {now.st_mtim, now.st_mtim}, .ctime = {now.st_ctim, now.st_ctim}};
    return !ts_eq(now.st_mtim, st->st_mtim) || !ts_eq(now.st_ctim, st->st_ctim) ||
           dir_stamps_recent(&ds);
}

static int64_t ts_ns(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int md_folder_stamp(const struct md_folder *f, struct md_stamp *s_r)
{
    memset(s_r, 0, sizeof(*s_r));
    if (!f->syncfs_ok) {
        return -EOPNOTSUPP;
    }
    struct stat st;
    if (stat(f->path_cur, &st) != 0) {
        return -errno;
    }
    s_r->cur_ns = ts_ns(st.st_ctim);
    if (stat(f->path_new, &st) != 0) {
        return -errno;
    }
    s_r->new_ns = ts_ns(st.st_ctim);
    /* After the stats: a change made after them then has a change time no
     * earlier than about taken_ns (see MD_STAMP_SETTLE_NS for the slack). */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    s_r->taken_ns = ts_ns(now);
    return 0;
}

bool md_unchanged_since(const struct md_stamp *rec, const struct md_stamp *now)
{
    if (rec->cur_ns <= 0 || rec->new_ns <= 0 || rec->taken_ns <= 0 || now->taken_ns <= 0) {
        return false;
    }
    if (now->cur_ns != rec->cur_ns || now->new_ns != rec->new_ns) {
        return false;
    }
    /* Whole seconds on both: a file system without sub-second times (or one
     * that drops them), where equal times say little. */
    if (rec->cur_ns % 1000000000LL == 0 && rec->new_ns % 1000000000LL == 0) {
        return false;
    }
    int64_t newest = rec->cur_ns > rec->new_ns ? rec->cur_ns : rec->new_ns;
    /* Checked as a difference of non-negative values: no overflow. */
    if (rec->taken_ns - newest < MD_STAMP_SETTLE_NS) {
        return false; /* also a change time ahead of the clock that read it */
    }
    /* The clock stepped back since rec was taken: a change made since may
     * carry a time the folder had before. */
    if (now->taken_ns < rec->taken_ns) {
        return false;
    }
    return true;
}

/* How many passes a scan makes at most while clients keep changing the
 * folder under it. */
#define MD_SCAN_MAX_PASSES 4

int md_scan(struct md_folder *f, struct md_scan **scan_r)
{
    struct msgvec mv = {.ids = xcalloc(1, sizeof(*mv.ids))};
    int ret = 0;
    /* A rename inside one directory while readdir runs can hide the message
     * under both names (hashed directory order puts the new name behind the
     * read position after the old one was passed). scan_dir reads each
     * directory in one call, which Linux makes atomic against renames on its
     * local file systems; for the others (and directories too big for one
     * call) missing a message would read as a deletion, so when the
     * directories changed during a pass we
     * read them again and keep the union of every pass: a message seen in
     * any pass is reported (the duplicates are collapsed below). A message
     * really deleted during the scan is then reported once more, which is
     * harmless: the operations on it find it gone. */
    for (int pass = 0; pass < MD_SCAN_MAX_PASSES; pass++) {
        /* On the local file systems syncfs_ok names (the ones that make a
         * one-call getdents64 atomic), a pass that read both directories in
         * one call each is the whole truth and needs no stamps; that is
         * what keeps a scan of a small folder at two opens. */
        bool stamped = !f->syncfs_ok || pass > 0;
        struct dir_stamp before = {0};
        if (stamped) {
            before = dir_stamps(f);
        }
        bool whole_new = false;
        bool whole_cur = false;
        struct stat new_before;
        bool new_known = stat(f->path_new, &new_before) == 0;
        /* new/ is read before cur/: a client moving a message from new/ to
         * cur/ while we read can then only make us see it twice. */
        ret = scan_dir(f, f->path_new, true, &mv, &whole_new);
        if (ret == 0) {
            ret = scan_dir(f, f->path_cur, false, &mv, &whole_cur);
        }
        if (ret < 0) {
            break;
        }
        if (f->syncfs_ok && whole_new && whole_cur) {
            /* A message moved back from cur/ to new/ between the two reads
             * (a client marking it unread) was in neither, and would read
             * as a deletion: new/ is read once more when it changed since
             * its read began, or so recently that its times cannot tell. */
            if (!new_known || new_changed(f, &new_before)) {
                bool whole = false;
                ret = scan_dir(f, f->path_new, true, &mv, &whole);
            }
            break;
        }
        if (!stamped) {
            continue; /* a directory too big for one call: compare stamps from now on */
        }
        struct dir_stamp after = dir_stamps(f);
        if (dir_stamps_eq(&before, &after) && !dir_stamps_recent(&after)) {
            break;
        }
    }
    if (ret < 0) {
        for (size_t i = 0; i < mv.n; i++) {
            md_msg_clear(&mv.v[i]);
        }
        free(mv.v);
        ids_free(mv.ids);
        return ret;
    }
    if (mv.n > 1) {
        qsort(mv.v, mv.n, sizeof(*mv.v), msg_cmp);
    }
    /* Collapse entries that share an identity. They come from renames that
     * happened during the scan (readdir may show a renamed entry under both
     * names), so the one that still exists wins, preferring cur/; the stat
     * here is paid only for these rare duplicates. */
    size_t out = 0;
    for (size_t i = 0; i < mv.n;) {
        size_t j = i + 1;
        while (j < mv.n && strcmp(mv.v[j].id, mv.v[i].id) == 0) {
            j++;
        }
        size_t keep = i;
        if (j - i > 1) {
            for (size_t k = i; k < j; k++) {
                if (msg_exists(f, &mv.v[k])) {
                    keep = k;
                    break;
                }
            }
        }
        for (size_t k = i; k < j; k++) {
            if (k != keep) {
                md_msg_clear(&mv.v[k]);
            }
        }
        mv.v[out++] = mv.v[keep];
        i = j;
    }
    struct md_scan *scan = xmalloc(sizeof(*scan));
    scan->msgs = mv.v;
    scan->count = out;
    scan->ids = mv.ids;
    *scan_r = scan;
    return 0;
}

void md_scan_free(struct md_scan *scan)
{
    if (scan == NULL) {
        return;
    }
    for (size_t i = 0; i < scan->count; i++) {
        md_msg_clear(&scan->msgs[i]);
    }
    free(scan->msgs);
    ids_free(scan->ids);
    free(scan);
}

void md_scan_share_ids(struct md_scan *scan, size_t n, const char *(*id_at)(size_t i, void *arg),
                       void *arg)
{
    if (scan == NULL || scan->ids == NULL || scan->count == 0) {
        return;
    }
    bool *shared = xcalloc(scan->count, sizeof(*shared));
    size_t hint = 0;
    for (size_t k = 0; k < n; k++) {
        const char *s = id_at(k, arg);
        struct md_msg *m = md_scan_find_near(scan, s, &hint);
        if (m != NULL && !shared[m - scan->msgs]) {
            /* Never written through: an entry's id is only read (a
             * rename keeps it, md_msg_clear leaves a borrowed one). */
            m->id = (char *)s;
            shared[m - scan->msgs] = true;
        }
    }
    /* The others move to blocks of their own; the old blocks go. */
    struct md_scan_ids *ids = xcalloc(1, sizeof(*ids));
    for (size_t i = 0; i < scan->count; i++) {
        if (!shared[i]) {
            struct md_msg *m = &scan->msgs[i];
            m->id = ids_add(ids, m->id, strlen(m->id));
        }
    }
    free(shared);
    ids_free(scan->ids);
    scan->ids = ids;
}

static int msg_id_cmp(const void *key, const void *elem)
{
    const struct md_msg *m = elem;
    return strcmp(key, m->id);
}

struct md_msg *md_scan_find(const struct md_scan *scan, const char *id)
{
    if (scan == NULL || scan->count == 0) {
        return NULL;
    }
    return bsearch(id, scan->msgs, scan->count, sizeof(*scan->msgs), msg_id_cmp);
}

struct md_msg *md_scan_find_near(const struct md_scan *scan, const char *id, size_t *hint)
{
    if (scan == NULL || scan->count == 0) {
        return NULL;
    }
    if (*hint < scan->count && strcmp(scan->msgs[*hint].id, id) == 0) {
        return &scan->msgs[(*hint)++];
    }
    struct md_msg *m = bsearch(id, scan->msgs, scan->count, sizeof(*scan->msgs), msg_id_cmp);
    if (m != NULL) {
        *hint = (size_t)(m - scan->msgs) + 1;
    }
    return m;
}

/* ---- Finding messages in another folder ---------------------------------- */

static int strp_cmp_ids(const void *a, const void *b)
{
    return strcmp((const char *)a, *(const char *const *)b);
}

/* Opens path's subdirectory sub ("new" or "cur"): 0 with *d_r NULL when
 * it does not exist (a folder another program left half made). */
static int open_sub(const char *path, const char *sub, DIR **d_r)
{
    char *dir = xasprintf("%s/%s", path, sub);
    *d_r = opendir(dir);
    int err = errno;
    free(dir);
    if (*d_r == NULL && err != ENOENT && err != ENOTDIR) {
        return -err;
    }
    return 0;
}

int md_find_ids(const char *path, const char *const *ids, size_t n, bool *found_r,
                unsigned *flags_r)
{
    int found = 0;
    for (int sub = 0; sub < 2 && n > 0; sub++) {
        DIR *d;
        int r = open_sub(path, sub == 0 ? "new" : "cur", &d);
        if (r < 0) {
            return r;
        }
        if (d == NULL) {
            continue;
        }
        struct dirent *de;
        char key[NAME_MAX + 1];
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.') {
                continue;
            }
            size_t len = id_len(de->d_name);
            if (len == 0 || len >= sizeof(key)) {
                continue;
            }
            memcpy(key, de->d_name, len);
            key[len] = '\0';
            const char *const *hit = bsearch(key, ids, n, sizeof(*ids), strp_cmp_ids);
            if (hit == NULL) {
                continue;
            }
            size_t i = (size_t)(hit - ids);
            if (!found_r[i]) {
                found++;
            }
            found_r[i] = true;
            if (flags_r != NULL) {
                struct md_msg m;
                flags_r[i] = md_parse_name(de->d_name, sub == 0, &m) ? m.flags : 0;
                md_msg_clear(&m);
            }
        }
        closedir(d);
    }
    return found;
}

/* ---- Finding a renamed message again ---------------------------------- */

static bool name_has_id(const char *name, const char *id, size_t idlen)
{
    return strncmp(name, id, idlen) == 0 &&
           (name[idlen] == '\0' || strncmp(name + idlen, ":2,", 3) == 0);
}

static int refind_in(struct md_folder *f, const char *dir, bool in_new, struct md_msg *msg,
                     bool *found_r)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        return fail(f, errno, dir, "cannot open directory");
    }
    size_t idlen = strlen(msg->id);
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno != 0) {
                int e = errno;
                closedir(d);
                return fail(f, e, dir, "cannot read directory");
            }
            break;
        }
        if (de->d_name[0] == '.' || !name_has_id(de->d_name, msg->id, idlen)) {
            continue;
        }
        if (de->d_type != DT_UNKNOWN && de->d_type != DT_REG) {
            continue;
        }
        struct md_msg found;
        if (!md_parse_name(de->d_name, in_new, &found)) {
            continue;
        }
        /* The identity stays the caller's string; everything that the
         * client may have changed is taken from the name found on disk. */
        free(msg->name);
        free(msg->unknown_flags);
        msg->name = found.name;
        msg->unknown_flags = found.unknown_flags;
        msg->in_new = in_new;
        msg->flags = found.flags;
        msg->keywords = found.keywords;
        free(found.id);
        *found_r = true;
        break;
    }
    closedir(d);
    return 0;
}

/* Looks the identity up in new/ and then cur/, updating msg. The order is
 * the scan's: a message moving from new/ to cur/ meanwhile cannot slip
 * between the two reads. A rename inside cur/ during its readdir can hide
 * the entry, so an unsuccessful search is repeated once before the message
 * is declared gone. Returns 0, -ENOENT when gone, or another error. */
static int refind(struct md_folder *f, struct md_msg *msg)
{
    for (int pass = 0; pass < 2; pass++) {
        bool found = false;
        int ret = refind_in(f, f->path_new, true, msg, &found);
        if (ret == 0 && !found) {
            ret = refind_in(f, f->path_cur, false, msg, &found);
        }
        if (ret < 0) {
            return ret;
        }
        if (found) {
            return 0;
        }
    }
    set_err(f, "%s: message %s is gone", f->path, msg->id);
    return -ENOENT;
}

static char *msg_path(const struct md_folder *f, const struct md_msg *msg)
{
    const char *dir = msg->in_new ? f->path_new : f->path_cur;
    if (msg->name != NULL) {
        return path_join(dir, msg->name);
    }
    char buf[MD_SUFFIX_MAX];
    return xasprintf("%s/%s%s", dir, msg->id, canonical_suffix(msg, buf));
}

/* The identity and name come from our own scans or from the index; still,
 * a '/' or a leading '.' in them must never turn a rename or unlink into
 * one outside the folder. */
static int check_msg(struct md_folder *f, const struct md_msg *msg)
{
    if (msg->id == NULL || msg->name == NULL || msg->id[0] == '\0' || msg->id[0] == '.' ||
        msg->name[0] == '.' || strchr(msg->id, '/') != NULL || strchr(msg->name, '/') != NULL) {
        set_err(f, "%s: invalid message name", f->path);
        return -EINVAL;
    }
    return 0;
}

/* How many times an operation is retried after finding the file again. */
#define MD_REFIND_TRIES 2

/* Applies flags to msg once at its current name. Returns 0, or a positive
 * errno (ENOENT when the file is not there) without touching the folder
 * error. */
static int set_flags_once(struct md_folder *f, struct md_msg *msg, unsigned flags, md_keywords kw,
                          bool move_to_cur)
{
    /* A file in new/ must not carry an info part (Maildir rules), so any
     * flag or keyword moves it to cur/ whatever move_to_cur says;
     * move_to_cur forces the move even with no flags. A file in new/ that
     * already has an info part (a foreign tool put it there) moves to cur/
     * too, where such names belong. */
    bool stay_in_new =
        msg->in_new && !move_to_cur && flags == 0 && kw == 0 && strcmp(msg->name, msg->id) == 0;
    char *src = msg_path(f, msg);
    char *dst_name = NULL;
    char *dst = NULL;
    char *unknown = NULL;
    int e = 0;
    /* The unknown letters are taken from the name itself, which is what is
     * on disk, so that a message built by hand from an index record (an
     * identity and a name, no parsed letters) keeps them too. */
    struct md_msg parsed;
    if (md_parse_name(msg->name, msg->in_new, &parsed)) {
        unknown = parsed.unknown_flags;
        parsed.unknown_flags = NULL;
        md_msg_clear(&parsed);
    }
    if (!stay_in_new) {
        char *suffix = md_info_suffix(flags, kw, unknown);
        dst_name = xasprintf("%s%s", msg->id, suffix);
        free(suffix);
        dst = path_join(f->path_cur, dst_name);
    }
    if (dst != NULL && strcmp(src, dst) != 0) {
        f->dirty_cur = true;
        f->dirty_new = f->dirty_new || msg->in_new;
        /* Never replace an existing file: a copy with the same identity is
         * a different message (PROTOCOLS.md) and must survive. */
        /* Before the rename: its events may be read before it returns. */
        md_echo_note(src);
        md_echo_note(dst);
        if (renameat2(AT_FDCWD, src, AT_FDCWD, dst, RENAME_NOREPLACE) != 0) {
            e = errno;
            md_echo_forget(src);
            md_echo_forget(dst);
            if (e == EEXIST) {
                set_err(f, "%s: cannot rename to %s: another message already has that name", src,
                        dst);
            } else if (e != ENOENT) {
                set_err(f, "%s: cannot rename to %s: %s", src, dst, strerror(e));
            }
        }
    } else {
        /* Nothing to rename, but the caller still learns whether the
         * message exists. */
        struct stat st;
        if (lstat(src, &st) != 0) {
            e = errno;
            if (e != ENOENT) {
                set_err(f, "%s: cannot stat: %s", src, strerror(e));
            }
        }
    }
    if (e == 0) {
        if (dst_name != NULL) {
            free(msg->name);
            msg->name = dst_name;
            dst_name = NULL;
            msg->in_new = false;
        }
        msg->flags = flags;
        msg->keywords = kw;
        free(msg->unknown_flags);
        msg->unknown_flags = unknown;
        unknown = NULL;
    }
    free(unknown);
    free(src);
    free(dst_name);
    free(dst);
    return e;
}

int md_set_flags(struct md_folder *f, struct md_msg *msg, unsigned flags, md_keywords kw,
                 bool move_to_cur)
{
    md_msg_name(msg);
    int checked = check_msg(f, msg);
    if (checked < 0) {
        return checked;
    }
    flags &= MD_FLAGS_ALL;
    kw &= MD_KW_MASK;
    /* The change the caller means, relative to the flags it saw. If a client
     * renamed the file meanwhile, its own changes are kept and only this
     * difference is applied on top. */
    unsigned add = flags & ~msg->flags, del = msg->flags & ~flags;
    md_keywords kw_add = kw & ~msg->keywords, kw_del = msg->keywords & ~kw;
    for (int attempt = 0;; attempt++) {
        int e = set_flags_once(f, msg, flags, kw, move_to_cur);
        if (e == 0) {
            return 0;
        }
        if (e != ENOENT) {
            return -e;
        }
        if (attempt == MD_REFIND_TRIES) {
            /* Found under a new name every time and gone again before we
             * got to it: it exists, so this is not "gone". */
            set_err(f, "%s: message %s keeps moving away", f->path, msg->id);
            return -EAGAIN;
        }
        int ret = refind(f, msg);
        if (ret < 0) {
            return ret;
        }
        flags = (msg->flags | add) & ~del;
        kw = (msg->keywords | kw_add) & ~kw_del;
    }
}

int md_remove(struct md_folder *f, struct md_msg *msg)
{
    md_msg_name(msg);
    int checked = check_msg(f, msg);
    if (checked < 0) {
        return checked;
    }
    unsigned seen_flags = msg->flags;
    md_keywords seen_kw = msg->keywords;
    for (int attempt = 0;; attempt++) {
        char *path = msg_path(f, msg);
        /* Wherever it is found again, its directory changes. */
        f->dirty_new = f->dirty_new || msg->in_new;
        f->dirty_cur = f->dirty_cur || !msg->in_new;
        md_echo_note(path);
        int e = unlink(path) == 0 ? 0 : errno;
        if (e != 0) {
            md_echo_forget(path);
        }
        if (e != 0 && e != ENOENT) {
            fail(f, e, path, "cannot remove");
        }
        free(path);
        if (e != ENOENT) {
            return -e;
        }
        if (attempt == MD_REFIND_TRIES) {
            /* Found under a new name every time and gone again before the
             * unlink: it exists, so it was not removed. */
            set_err(f, "%s: message %s keeps moving away", f->path, msg->id);
            return -EAGAIN;
        }
        int ret = refind(f, msg);
        if (ret == -ENOENT) {
            return 0;
        }
        if (ret < 0) {
            return ret;
        }
        if (msg->flags != seen_flags || msg->keywords != seen_kw) {
            /* The user changed the message after the caller looked at it:
             * that decision was made on stale facts. */
            set_err(f, "%s: message %s was changed by another program meanwhile; not removed",
                    f->path, msg->id);
            return -ESTALE;
        }
    }
}

int md_open_msg(struct md_folder *f, struct md_msg *msg)
{
    md_msg_name(msg);
    int checked = check_msg(f, msg);
    if (checked < 0) {
        return checked;
    }
    for (int attempt = 0;; attempt++) {
        char *path = msg_path(f, msg);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        int e = fd >= 0 ? 0 : errno;
        if (e != 0 && e != ENOENT) {
            fail(f, e, path, "cannot open");
        }
        free(path);
        if (e != ENOENT) {
            return e == 0 ? fd : -e;
        }
        if (attempt == MD_REFIND_TRIES) {
            /* Found under a new name every time and gone again before we
             * got to it: it exists, so this is not "gone". */
            set_err(f, "%s: message %s keeps moving away", f->path, msg->id);
            return -EAGAIN;
        }
        int ret = refind(f, msg);
        if (ret < 0) {
            return ret;
        }
    }
}

/* ---- Delivery --------------------------------------------------------- */

/* Escapes the host name as Maildir names require: '/' and ':' cannot appear
 * in a file name or before the info part. */
static void append_host(struct sbuf *sb)
{
    char host[256];
    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0') {
        strcpy(host, "localhost");
    }
    host[sizeof(host) - 1] = '\0';
    for (const char *p = host; *p != '\0'; p++) {
        if (*p == '/') {
            sbuf_adds(sb, "\\057");
        } else if (*p == ':') {
            sbuf_adds(sb, "\\072");
        } else {
            sbuf_addc(sb, *p);
        }
    }
}

static uint64_t random64(void)
{
    uint64_t r = 0;
    size_t got = 0;
    unsigned char *p = (unsigned char *)&r;
    while (got < sizeof(r)) {
        ssize_t n = getrandom(p + got, sizeof(r) - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            /* Without getrandom the counter, pid and time still make the
             * name unique; the random part only guards against pid reuse
             * across machines sharing a folder. */
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            return (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
        }
        got += (size_t)n;
    }
    return r;
}

/* "<secs>.M<usecs>P<pid>Q<counter>R<random>.<host>", the Dovecot/qmail
 * style: the pid and counter separate deliveries of this host, the random
 * part separates hosts that share a name or pids that get reused. */
static char *unique_name(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long q = atomic_fetch_add(&md_delivery_counter, 1);
    struct sbuf sb = {0};
    sbuf_addf(&sb, "%lld.M%ldP%ldQ%luR%016llx.", (long long)ts.tv_sec, ts.tv_nsec / 1000,
              (long)getpid(), q, (unsigned long long)random64());
    append_host(&sb);
    return sbuf_detach(&sb);
}

static struct md_writer *writer_alloc(struct md_folder *f, bool crlf_to_lf)
{
    struct md_writer *w = xmalloc(sizeof(*w));
    w->f = f;
    w->fd = -1;
    w->uname = unique_name();
    w->tmp_path = path_join(f->path_tmp, w->uname);
    w->crlf_to_lf = crlf_to_lf;
    w->held_cr = false;
    w->finished = false;
    w->synced = false;
    w->created = false;
    w->err = 0;
    w->size = 0;
    w->blen = 0;
    w->bcap = 0;
    w->buf = NULL;
    return w;
}

/* Creates the temp file of a writer made by md_writer_new. Not a retry on
 * EEXIST here: the name was handed out already (md_writer_id), and it
 * cannot collide (see md_writer_open). */
static int writer_create(struct md_writer *w)
{
    if (w->fd >= 0 || w->err < 0) {
        return w->err;
    }
    int fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0) {
        int e = errno;
        fail(w->f, e, w->tmp_path, "cannot create");
        /* Not ours to remove: nothing was created, or another file has
         * the name. */
        free(w->tmp_path);
        w->tmp_path = NULL;
        w->err = -e;
        return -e;
    }
    w->fd = fd;
    w->created = true;
    return 0;
}

int md_writer_new(struct md_folder *f, bool crlf_to_lf, struct md_writer **w_r)
{
    *w_r = writer_alloc(f, crlf_to_lf);
    return 0;
}

int md_writer_open(struct md_folder *f, bool crlf_to_lf, struct md_writer **w_r)
{
    *w_r = NULL;
    /* The name cannot collide; the retry only guards against a clock that
     * jumped back together with a reused pid and an unlucky random part. */
    for (int tries = 0;; tries++) {
        struct md_writer *w = writer_alloc(f, crlf_to_lf);
        int ret = writer_create(w);
        if (ret == 0) {
            *w_r = w;
            return 0;
        }
        free(w->uname);
        free(w);
        if (ret != -EEXIST || tries >= 3) {
            return ret;
        }
    }
}

/* Removes the temp file after a failure: a half-written message must never
 * be mistaken for a delivery. */
static void writer_discard(struct md_writer *w)
{
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    if (w->tmp_path != NULL) {
        if (w->created) {
            unlink(w->tmp_path);
        }
        free(w->tmp_path);
        w->tmp_path = NULL;
    }
}

static int writer_fail(struct md_writer *w, int e, const char *what)
{
    fail(w->f, e, w->tmp_path, what);
    w->err = -e;
    writer_discard(w);
    return -e;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (k == 0) {
            return -EIO;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int writer_flush(struct md_writer *w)
{
    if (w->blen == 0) {
        return 0;
    }
    int ret = writer_create(w);
    if (ret < 0) {
        return ret;
    }
    ret = write_all(w->fd, w->buf, w->blen);
    w->blen = 0;
    if (ret < 0) {
        return writer_fail(w, -ret, "write failed");
    }
    return 0;
}

static int writer_put(struct md_writer *w, const char *p, size_t n)
{
    w->size += n;
    /* Large pieces bypass the buffer once it is empty. */
    if (w->blen == 0 && n >= MD_WBUF_SIZE) {
        int ret = writer_create(w);
        if (ret < 0) {
            return ret;
        }
        ret = write_all(w->fd, p, n);
        return ret < 0 ? writer_fail(w, -ret, "write failed") : 0;
    }
    while (n > 0) {
        if (w->bcap < MD_WBUF_SIZE && w->blen + n > w->bcap) {
            size_t cap = w->bcap != 0 ? w->bcap : MD_WBUF_MIN;
            while (cap < w->blen + n && cap < MD_WBUF_SIZE) {
                cap *= 2;
            }
            w->bcap = cap < MD_WBUF_SIZE ? cap : MD_WBUF_SIZE;
            w->buf = xrealloc(w->buf, w->bcap);
        }
        if (w->blen == w->bcap) {
            int ret = writer_flush(w);
            if (ret < 0) {
                return ret;
            }
        }
        size_t k = w->bcap - w->blen;
        if (k > n) {
            k = n;
        }
        memcpy(w->buf + w->blen, p, k);
        w->blen += k;
        p += k;
        n -= k;
    }
    return 0;
}

int md_writer_write(struct md_writer *w, const void *data, size_t len)
{
    if (w->err != 0) {
        return w->err;
    }
    if (w->finished) {
        return writer_fail(w, EINVAL, "write after the message was finished");
    }
    const char *p = data;
    const char *end = p + len;
    int ret;
    if (!w->crlf_to_lf) {
        return len > 0 ? writer_put(w, p, len) : 0;
    }
    if (w->held_cr && p < end) {
        /* The CR that ended the previous chunk: dropped when this chunk
         * starts with its LF, kept when it was a lone CR. */
        w->held_cr = false;
        if (*p != '\n' && (ret = writer_put(w, "\r", 1)) < 0) {
            return ret;
        }
    }
    while (p < end) {
        const char *cr = memchr(p, '\r', (size_t)(end - p));
        if (cr == NULL) {
            return writer_put(w, p, (size_t)(end - p));
        }
        if (cr + 1 == end) {
            w->held_cr = true;
            return writer_put(w, p, (size_t)(cr - p));
        }
        /* Keep everything up to the CR, and the CR itself unless an LF
         * follows; the LF is written with the next run. */
        size_t run = (size_t)(cr - p) + (cr[1] == '\n' ? 0 : 1);
        if ((ret = writer_put(w, p, run)) < 0) {
            return ret;
        }
        p = cr + 1;
    }
    return 0;
}

const char *md_writer_id(const struct md_writer *w)
{
    return w->uname;
}

uint64_t md_writer_size(const struct md_writer *w)
{
    return w->size;
}

void md_writer_abort(struct md_writer *w)
{
    if (w == NULL) {
        return;
    }
    writer_discard(w);
    free(w->uname);
    free(w->buf);
    free(w);
}

int md_writer_finish(struct md_writer *w, time_t mtime)
{
    if (w->err < 0) {
        return w->err;
    }
    if (w->finished) {
        return 0;
    }
    int ret;
    if (w->held_cr) {
        /* A CR at the very end has no LF after it: it stays. */
        w->held_cr = false;
        if ((ret = writer_put(w, "\r", 1)) < 0) {
            return ret;
        }
    }
    if ((ret = writer_flush(w)) < 0 || (ret = writer_create(w)) < 0) {
        return ret;
    }
    /* No more data: a finished writer waiting for its batch's sync holds
     * no buffer. */
    free(w->buf);
    w->buf = NULL;
    w->bcap = 0;
    if (mtime != 0) {
        /* Set before the data is made durable so that the received date is
         * as durable as the bytes. */
        struct timespec ts[2] = {{.tv_sec = mtime, .tv_nsec = 0}, {.tv_sec = mtime, .tv_nsec = 0}};
        if (futimens(w->fd, ts) != 0) {
            return writer_fail(w, errno, "cannot set the modification time");
        }
    }
    w->finished = true;
    return 0;
}

/* Below this many files a batch is made durable file by file: syncfs writes
 * back everything dirty on the file system, which a single fsync does not
 * wait for. */
#define MD_SYNCFS_MIN 3

int md_writers_sync(struct md_folder *f, struct md_writer *const *ws, size_t n)
{
    size_t todo = 0;
    for (size_t i = 0; i < n; i++) {
        struct md_writer *w = ws[i];
        if (w == NULL || w->synced || w->err < 0 || md_writer_finish(w, 0) < 0) {
            continue;
        }
        todo++;
    }
    if (todo == 0) {
        return 0;
    }
    if (todo >= MD_SYNCFS_MIN && f->syncfs_ok) {
        /* One write-back and one journal commit for the whole batch instead
         * of one per file: on ext4 this is several times faster for a batch
         * of mail. The error, if any, cannot be pinned to one file, so the
         * whole batch fails. */
        if (syncfs(f->sync_fd) != 0) {
            return fail(f, errno, f->path_tmp, "syncfs failed");
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            struct md_writer *w = ws[i];
            if (w == NULL || w->synced || w->err < 0) {
                continue;
            }
            if (fsync(w->fd) != 0) {
                int e = errno;
                fail(f, e, w->tmp_path, "fsync failed");
                return -e;
            }
            w->synced = true;
        }
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (ws[i] != NULL && ws[i]->err == 0) {
            ws[i]->synced = true;
        }
    }
    return 0;
}

int md_writer_commit(struct md_writer *w, bool to_cur, unsigned flags, md_keywords kw, time_t mtime,
                     bool defer_dir_sync, struct md_msg *msg_r)
{
    struct md_folder *f = w->f;
    int ret = w->err;
    flags &= MD_FLAGS_ALL;
    kw &= MD_KW_MASK;
    if (ret < 0) {
        goto out;
    }
    if ((ret = md_writer_finish(w, mtime)) < 0) {
        goto out;
    }
    if (!w->synced && fsync(w->fd) != 0) {
        ret = writer_fail(w, errno, "fsync failed");
        goto out;
    }
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0 && errno != EINTR) {
        ret = writer_fail(w, errno, "close failed");
        goto out;
    }

    bool in_new = !to_cur && flags == 0 && kw == 0;
    char *name;
    if (in_new) {
        name = xstrdup(w->uname);
    } else {
        char *suffix = md_info_suffix(flags, kw, NULL);
        name = xasprintf("%s%s", w->uname, suffix);
        free(suffix);
    }
    char *dst = path_join(in_new ? f->path_new : f->path_cur, name);
    /* rename() is enough: the unique name cannot exist in new/ or cur/. */
    md_echo_note(dst);
    if (rename(w->tmp_path, dst) != 0) {
        int e = errno;
        md_echo_forget(dst);
        set_err(f, "%s: cannot rename to %s: %s", w->tmp_path, dst, strerror(e));
        w->err = -e;
        writer_discard(w);
        ret = -e;
        free(name);
        free(dst);
        goto out;
    }
    free(w->tmp_path);
    w->tmp_path = NULL;
    if (defer_dir_sync) {
        if (in_new) {
            f->dirty_new = true;
        } else {
            f->dirty_cur = true;
        }
    } else {
        ret = fsync_dir(in_new ? f->path_new : f->path_cur);
        if (ret < 0) {
            /* The message is not known to be durable, so it must not count
             * as delivered: remove it, and the caller delivers it again
             * later. Leaving it would risk a duplicate on that retry. */
            set_err(f, "%s: fsync failed: %s", in_new ? f->path_new : f->path_cur, strerror(-ret));
            md_echo_note(dst);
            if (unlink(dst) != 0) {
                md_echo_forget(dst);
            }
            free(name);
            free(dst);
            goto out;
        }
    }
    free(dst);
    if (msg_r != NULL) {
        msg_r->id = w->uname;
        msg_r->id_borrowed = false;
        w->uname = NULL;
        msg_r->name = name;
        msg_r->in_new = in_new;
        msg_r->flags = flags;
        msg_r->keywords = kw;
        msg_r->unknown_flags = NULL;
    } else {
        free(name);
    }
    ret = 0;
out:
    md_writer_abort(w);
    return ret;
}

/* ---- Keywords --------------------------------------------------------- */

static bool same_time(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

static void kw_remember(struct md_folder *f, const struct stat *st)
{
    f->kw_loaded = true;
    f->kw_exists = true;
    f->kw_dev = st->st_dev;
    f->kw_ino = st->st_ino;
    f->kw_size = st->st_size;
    f->kw_mtim = st->st_mtim;
    f->kw_ctim = st->st_ctim;
}

static void kw_parse(struct md_folder *f, const char *data, size_t len)
{
    kw_clear(f);
    const char *p = data;
    const char *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl != NULL ? nl : end;
        const char *q = p;
        int idx = 0;
        int digits = 0;
        while (q < eol && *q >= '0' && *q <= '9' && digits < 3) {
            idx = idx * 10 + (*q - '0');
            q++;
            digits++;
        }
        const char *name_end = eol;
        if (name_end > q && name_end[-1] == '\r') {
            name_end--;
        }
        if (digits > 0 && idx < MD_KW_COUNT && q < name_end && *q == ' ' && q + 1 < name_end &&
            f->kw_names[idx] == NULL) {
            f->kw_names[idx] = xstrndup(q + 1, (size_t)(name_end - q - 1));
        }
        p = nl != NULL ? nl + 1 : end;
    }
}

/* Brings the table up to date with the file, re-reading it only when its
 * inode, size or times changed (Dovecot rewrites it by rename). */
static int kw_refresh(struct md_folder *f)
{
    char *path = path_join(f->path, MD_KW_FILE);
    struct stat st;
    int ret = 0;
    int fd = -1;
    char *data = NULL;
    if (stat(path, &st) != 0) {
        if (errno != ENOENT) {
            ret = fail(f, errno, path, "cannot stat");
            goto out;
        }
        kw_clear(f);
        f->kw_loaded = true;
        f->kw_exists = false;
        goto out;
    }
    if (f->kw_loaded && f->kw_exists && f->kw_dev == st.st_dev && f->kw_ino == st.st_ino &&
        f->kw_size == st.st_size && same_time(&f->kw_mtim, &st.st_mtim) &&
        same_time(&f->kw_ctim, &st.st_ctim)) {
        goto out;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ret = fail(f, errno, path, "cannot open");
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        ret = fail(f, errno, path, "cannot stat");
        goto out;
    }
    if (st.st_size > MD_KW_FILE_MAX) {
        set_err(f, "%s: too large for a keywords file", path);
        ret = -EFBIG;
        goto out;
    }
    size_t want = (size_t)st.st_size;
    data = xmalloc(want + 1);
    size_t got = 0;
    while (got < want) {
        ssize_t n = read(fd, data + got, want - got);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            ret = fail(f, errno, path, "read failed");
            goto out;
        }
        if (n == 0) {
            break;
        }
        got += (size_t)n;
    }
    kw_parse(f, data, got);
    kw_remember(f, &st);
out:
    if (fd >= 0) {
        close(fd);
    }
    free(data);
    free(path);
    return ret;
}

/* Writes the table to a temp file beside dovecot-keywords, fsyncs it and
 * renames it over the old one, so a reader sees either file whole. */
static int kw_write(struct md_folder *f)
{
    char *path = path_join(f->path, MD_KW_FILE);
    char *uname = unique_name();
    char *tmp = xasprintf("%s/%s.%s.tmp", f->path, MD_KW_FILE, uname);
    struct sbuf sb = {0};
    int ret = 0;
    for (int i = 0; i < MD_KW_COUNT; i++) {
        if (f->kw_names[i] != NULL) {
            sbuf_addf(&sb, "%d %s\n", i, f->kw_names[i]);
        }
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        ret = fail(f, errno, tmp, "cannot create");
        goto out;
    }
    struct stat st;
    if ((ret = write_all(fd, sb.buf != NULL ? sb.buf : "", sb.len)) < 0) {
        fail(f, -ret, tmp, "write failed");
    } else if (fsync(fd) != 0 || fstat(fd, &st) != 0) {
        ret = fail(f, errno, tmp, "fsync failed");
    }
    if (close(fd) != 0 && ret == 0 && errno != EINTR) {
        ret = fail(f, errno, tmp, "close failed");
    }
    if (ret == 0 && rename(tmp, path) != 0) {
        ret = -errno;
        set_err(f, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    }
    if (ret < 0) {
        unlink(tmp);
        goto out;
    }
    /* Messages will carry the new letter only after this returns: the
     * assignment must be durable first. */
    if ((ret = fsync_dir(f->path)) < 0) {
        fail(f, -ret, f->path, "fsync failed");
        goto out;
    }
    kw_remember(f, &st);
out:
    sbuf_free(&sb);
    free(uname);
    free(tmp);
    free(path);
    return ret;
}

/* Dovecot changes dovecot-keywords only while it holds dovecot-uidlist.lock,
 * a dotlock: created with O_EXCL, "pid:host" inside, overridden when its
 * local pid is gone or when neither it nor dovecot-uidlist changed for two
 * minutes. Taking the same lock means a letter assigned here and one that a
 * Dovecot serving the same Maildir assigns at the same moment cannot clash. */
#define MD_LOCK_FILE "dovecot-uidlist.lock"
#define MD_LOCK_PROTECTED "dovecot-uidlist"
#define MD_LOCK_STALE_SECS 120
/* A lock younger than this is not checked for a dead pid: its owner most
 * likely still runs (as in Dovecot). */
#define MD_LOCK_FRESH_SECS 2

static unsigned md_lock_wait_ms = 3000;

void md_set_lock_wait(unsigned ms)
{
    md_lock_wait_ms = ms;
}

static char *host_name(void)
{
    char host[256];
    if (gethostname(host, sizeof(host) - 1) != 0) {
        return xstrdup("localhost");
    }
    host[sizeof(host) - 1] = '\0';
    return xstrdup(host);
}

/* The pid a lock file names when it was made on this host, else 0. */
static pid_t lock_local_pid(const char *lock)
{
    char buf[300];
    int fd = open(lock, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    char *colon = strchr(buf, ':');
    if (colon == NULL) {
        return 0;
    }
    *colon = '\0';
    char *host = host_name();
    bool ours = strcmp(colon + 1, host) == 0;
    free(host);
    char *end = NULL;
    long pid = strtol(buf, &end, 10);
    if (!ours || end == buf || *end != '\0' || pid <= 0 || pid > INT32_MAX) {
        return 0;
    }
    return (pid_t)pid;
}

/* Whether the existing lock may be taken over; *holder_r gets its pid when
 * it names a live local process. */
static bool lock_is_stale(struct md_folder *f, const char *lock, time_t now, pid_t *holder_r,
                          struct stat *st_r)
{
    struct stat st;
    *holder_r = 0;
    if (lstat(lock, &st) != 0) {
        return false; /* gone meanwhile: simply try again */
    }
    *st_r = st;
    if (st.st_mtime < now - MD_LOCK_FRESH_SECS) {
        pid_t pid = lock_local_pid(lock);
        if (pid > 0) {
            if (pid != getpid() && (kill(pid, 0) == 0 || errno != ESRCH)) {
                *holder_r = pid;
                return false;
            }
            return true;
        }
    }
    if (st.st_mtime >= now - MD_LOCK_STALE_SECS) {
        return false;
    }
    char *prot = path_join(f->path, MD_LOCK_PROTECTED);
    struct stat pst;
    bool quiet = stat(prot, &pst) != 0 || pst.st_mtime < now - MD_LOCK_STALE_SECS;
    free(prot);
    return quiet;
}

/* Takes the folder's dovecot-uidlist.lock, waiting up to md_lock_wait_ms.
 * Returns 0 with *lock_r (the path, for kw_unlock) or a negative errno with
 * the folder's error set; -EAGAIN when another program kept it. */
static int kw_lock(struct md_folder *f, char **lock_r)
{
    char *lock = path_join(f->path, MD_LOCK_FILE);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long sleep_ms = 5;
    /* Bounds the take-overs of stale locks too (each is followed by a
     * pause); a lock that keeps going stale is not fought over forever. */
    for (int round = 0;; round++) {
        int fd = open(lock, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char *host = host_name();
            char *who = xasprintf("%ld:%s", (long)getpid(), host);
            /* Without the pid the lock is still a lock; it only goes stale
             * by time instead of by a dead pid. */
            (void)write_all(fd, who, strlen(who));
            free(who);
            free(host);
            close(fd);
            *lock_r = lock;
            return 0;
        }
        if (errno != EEXIST) {
            int r = fail(f, errno, lock, "cannot create");
            free(lock);
            return r;
        }
        pid_t holder = 0;
        struct stat seen;
        if (lock_is_stale(f, lock, time(NULL), &holder, &seen)) {
            /* Only the very file judged stale goes: another program may
             * have replaced it meanwhile (as Dovecot checks again too). */
            struct stat again;
            if (lstat(lock, &again) == 0 && again.st_dev == seen.st_dev &&
                again.st_ino == seen.st_ino && same_time(&again.st_mtim, &seen.st_mtim)) {
                if (unlink(lock) != 0 && errno != ENOENT) {
                    int r = fail(f, errno, lock, "cannot remove the stale lock");
                    free(lock);
                    return r;
                }
                /* A random pause, so that two programs overriding the same
                 * stale lock do not take turns removing each other's. */
                struct timespec ts = {.tv_sec = 0,
                                      .tv_nsec = (long)(50 + random64() % 100) * 1000000};
                nanosleep(&ts, NULL);
            }
            if (round < 100) {
                continue;
            }
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long waited = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (waited >= (long)md_lock_wait_ms) {
            if (holder > 0) {
                set_err(f,
                        "%s: held by process %ld (Dovecot or another mail program) for more than "
                        "%g s; a new keyword cannot be assigned now, the next sync tries again",
                        lock, (long)holder, md_lock_wait_ms / 1000.0);
            } else {
                set_err(f,
                        "%s: held by another program for more than %g s; a new keyword cannot "
                        "be assigned now, the next sync tries again (remove the file if no "
                        "program holds it)",
                        lock, md_lock_wait_ms / 1000.0);
            }
            free(lock);
            return -EAGAIN;
        }
        struct timespec ts = {.tv_sec = 0, .tv_nsec = sleep_ms * 1000000};
        nanosleep(&ts, NULL);
        if (sleep_ms < 100) {
            sleep_ms *= 2;
        }
    }
}

static void kw_unlock(struct md_folder *f, char *lock)
{
    if (unlink(lock) != 0 && errno != ENOENT) {
        /* Left behind it would hold off Dovecot until it goes stale. */
        log_warnx("%s: cannot remove the lock: %s", lock, strerror(errno));
    }
    (void)f;
    free(lock);
}

static bool kw_valid_name(const char *name)
{
    if (name[0] == '\0') {
        return false;
    }
    for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++) {
        /* IMAP keywords are atoms; spaces and controls would also break the
         * line format of the file. */
        if (*p <= 0x20 || *p == 0x7f) {
            return false;
        }
    }
    return true;
}

static int kw_find(const struct md_folder *f, const char *name)
{
    for (int i = 0; i < MD_KW_COUNT; i++) {
        if (f->kw_names[i] != NULL && strcmp(f->kw_names[i], name) == 0) {
            return i;
        }
    }
    return -1;
}

int md_keywords_assign(struct md_folder *f, const char *const *names, size_t n)
{
    int ret = kw_refresh(f);
    if (ret < 0) {
        return ret;
    }
    bool missing = false;
    for (size_t i = 0; i < n && !missing; i++) {
        missing = kw_valid_name(names[i]) && kw_find(f, names[i]) < 0;
    }
    bool room = false;
    for (int k = 0; k < MD_KW_COUNT && !room; k++) {
        room = f->kw_names[k] == NULL;
    }
    if (!missing || !room) {
        /* Nothing to assign, or no letter to assign it: no lock needed
         * (the next look at the file sees letters another program frees). */
        return 0;
    }
    char *lock = NULL;
    if ((ret = kw_lock(f, &lock)) < 0) {
        return ret;
    }
    /* Read the file again under the lock: another program may have assigned
     * these names, or the free letters, since the table was loaded. */
    f->kw_loaded = false;
    if ((ret = kw_refresh(f)) < 0) {
        goto out;
    }
    bool changed = false;
    for (size_t i = 0; i < n; i++) {
        if (!kw_valid_name(names[i]) || kw_find(f, names[i]) >= 0) {
            continue;
        }
        int free_ix = -1;
        for (int k = 0; k < MD_KW_COUNT && free_ix < 0; k++) {
            if (f->kw_names[k] == NULL) {
                free_ix = k;
            }
        }
        if (free_ix < 0) {
            break; /* the rest stay without a letter */
        }
        f->kw_names[free_ix] = xstrdup(names[i]);
        changed = true;
    }
    if (changed && (ret = kw_write(f)) < 0) {
        /* Forget the table so the next call reads what is really on disk. */
        kw_clear(f);
        f->kw_loaded = false;
    }
out:
    kw_unlock(f, lock);
    return ret;
}

int md_keyword_index(struct md_folder *f, const char *name, bool create)
{
    int ret = kw_refresh(f);
    if (ret < 0) {
        return ret;
    }
    int ix = kw_find(f, name);
    if (ix >= 0) {
        return ix;
    }
    if (!create) {
        return -ENOENT;
    }
    if (!kw_valid_name(name)) {
        set_err(f, "%s: invalid keyword name", f->path);
        return -EINVAL;
    }
    if ((ret = md_keywords_assign(f, &name, 1)) < 0) {
        return ret;
    }
    ix = kw_find(f, name);
    if (ix < 0) {
        set_err(f, "%s/%s: all %d keyword letters are in use", f->path, MD_KW_FILE, MD_KW_COUNT);
        return MD_EKWFULL;
    }
    return ix;
}

int md_keyword_table(struct md_folder *f, const char *names_r[26])
{
    int ret = kw_refresh(f);
    int n = 0;
    for (int i = 0; i < MD_KW_COUNT; i++) {
        names_r[i] = ret < 0 ? NULL : f->kw_names[i];
        n += ret < 0 || f->kw_names[i] == NULL ? 0 : 1;
    }
    return ret < 0 ? 0 : MD_KW_COUNT - n;
}

const char *md_keyword_name(struct md_folder *f, int index)
{
    if (index < 0 || index >= MD_KW_COUNT) {
        return NULL;
    }
    if (kw_refresh(f) < 0) {
        return NULL;
    }
    return f->kw_names[index];
}

/* ---- tmp/ cleanup ----------------------------------------------------- */

int md_clean_tmp(struct md_folder *f, time_t now)
{
    DIR *d = opendir(f->path_tmp);
    if (d == NULL) {
        return fail(f, errno, f->path_tmp, "cannot open directory");
    }
    int removed = 0;
    int ret = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno != 0) {
                ret = fail(f, errno, f->path_tmp, "cannot read directory");
            }
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            continue; /* removed meanwhile */
        }
        /* The newer of mtime and ctime: a delivery in progress sets the
         * file's mtime to the (old) received date before its rename, which
         * moves ctime to now. */
        time_t touched = st.st_mtime > st.st_ctime ? st.st_mtime : st.st_ctime;
        if (S_ISDIR(st.st_mode) || now - touched <= MD_TMP_MAX_AGE) {
            continue;
        }
        if (unlinkat(dirfd(d), de->d_name, 0) == 0) {
            removed++;
        } else if (errno != ENOENT) {
            char *path = path_join(f->path_tmp, de->d_name);
            ret = fail(f, errno, path, "cannot remove");
            free(path);
            break;
        }
    }
    closedir(d);
    return ret < 0 ? ret : removed;
}

/* A folder renamed on the server (issue 12) is renamed here in one
 * rename(2), its messages and (verbatim layout) subfolders with it, so no
 * file is copied and a crash leaves it under one name or the other. */
int md_folder_rename(const char *from, const char *to)
{
    struct stat st;
    if (lstat(to, &st) == 0) {
        return -EEXIST;
    }
    char *parent = xstrdup(to);
    char *slash = strrchr(parent, '/');
    int r = 0;
    if (slash != NULL && slash != parent) {
        *slash = '\0';
        r = mkdir_p_durable(parent, 0700, true);
    }
    if (r == 0 && rename(from, to) < 0) {
        r = -errno;
    }
    if (r == 0 && slash != NULL && slash != parent) {
        /* Both directory entries: the new one and the one that went. */
        r = fsync_dir(parent);
        char *old_parent = xstrdup(from);
        char *os = strrchr(old_parent, '/');
        if (r == 0 && os != NULL && os != old_parent) {
            *os = '\0';
            if (strcmp(old_parent, parent) != 0) {
                r = fsync_dir(old_parent);
            }
        }
        free(old_parent);
    }
    free(parent);
    return r;
}

/* ---- Messages between folders (sync/moves.c) --------------------------- */

/* The current file name of identity id in path's new/ or cur/: *sub_r is
 * "new" or "cur", *name_r malloc'd. -ENOENT when absent. */
static int find_by_id(const char *path, const char *id, const char **sub_r, char **name_r)
{
    size_t idlen = strlen(id);
    for (int sub = 0; sub < 2; sub++) {
        const char *sname = sub == 0 ? "cur" : "new";
        DIR *d;
        int r = open_sub(path, sname, &d);
        if (r < 0) {
            return r;
        }
        if (d == NULL) {
            continue;
        }
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] != '.' && name_has_id(de->d_name, id, idlen)) {
                *sub_r = sname;
                *name_r = xstrdup(de->d_name);
                closedir(d);
                return 0;
            }
        }
        closedir(d);
    }
    return -ENOENT;
}

static int copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        return -errno;
    }
    int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
        int r = -errno;
        close(in);
        return r;
    }
    char buf[65536];
    ssize_t n;
    int r = 0;
    while ((n = read(in, buf, sizeof(buf))) > 0) {
        if (write(out, buf, (size_t)n) != n) {
            r = errno != 0 ? -errno : -EIO;
            break;
        }
    }
    if (n < 0) {
        r = -errno;
    }
    if (r == 0 && fsync(out) < 0) {
        r = -errno;
    }
    close(in);
    close(out);
    if (r < 0) {
        unlink(to);
    }
    return r;
}

int md_move_between(const char *src, const char *dst, const char *id, unsigned flags,
                    md_keywords kw, bool link_only, unsigned *flags_r)
{
    const char *sub;
    char *name = NULL;
    int r = find_by_id(src, id, &sub, &name);
    if (r < 0) {
        return r;
    }
    const char *dsub;
    char *dname = NULL;
    if (find_by_id(dst, id, &dsub, &dname) == 0) {
        free(dname);
        free(name);
        return -EEXIST;
    }
    if (flags_r != NULL) {
        struct md_msg m;
        *flags_r = md_parse_name(name, strcmp(sub, "new") == 0, &m) ? m.flags : 0;
        md_msg_clear(&m);
    }
    char *suffix = md_info_suffix(flags, kw, NULL);
    char *from = xasprintf("%s/%s/%s", src, sub, name);
    char *to = xasprintf("%s/cur/%s%s", dst, id, suffix);
    char *to_dir = xasprintf("%s/cur", dst);
    char *from_dir = xasprintf("%s/%s", src, sub);
    md_echo_note(to);
    if (!link_only) {
        md_echo_note(from);
    }
    if (link_only) {
        if (link(from, to) < 0) {
            r = errno == EXDEV || errno == EPERM || errno == EMLINK ? copy_file(from, to) : -errno;
        }
    } else if (link(from, to) == 0) {
        /* link + unlink, not rename: rename would replace a file of that
         * name that appeared meanwhile. */
        if (unlink(from) < 0 && errno != ENOENT) {
            r = -errno;
        }
    } else if (errno == EXDEV || errno == EPERM || errno == EMLINK) {
        r = copy_file(from, to);
        if (r == 0 && unlink(from) < 0 && errno != ENOENT) {
            r = -errno;
        }
    } else {
        r = -errno;
    }
    if (r < 0) {
        /* Withdraw the notes of the paths that did not change. */
        if (access(to, F_OK) != 0) {
            md_echo_forget(to);
        }
        if (!link_only && access(from, F_OK) == 0) {
            md_echo_forget(from);
        }
    }
    if (r == 0) {
        r = fsync_dir(to_dir);
    }
    if (r == 0 && !link_only) {
        r = fsync_dir(from_dir);
    }
    free(suffix);
    free(from);
    free(to);
    free(to_dir);
    free(from_dir);
    free(name);
    return r;
}

int md_remove_id(const char *path, const char *id, int only_flags)
{
    const char *sub;
    char *name = NULL;
    int r = find_by_id(path, id, &sub, &name);
    if (r == -ENOENT) {
        return 0;
    }
    if (r < 0) {
        return r;
    }
    if (only_flags >= 0) {
        struct md_msg m;
        unsigned fl = md_parse_name(name, strcmp(sub, "new") == 0, &m) ? m.flags : 0;
        md_msg_clear(&m);
        if (fl != (unsigned)only_flags) {
            free(name);
            return -ESTALE;
        }
    }
    char *file = xasprintf("%s/%s/%s", path, sub, name);
    char *dir = xasprintf("%s/%s", path, sub);
    md_echo_note(file);
    if (unlink(file) < 0) {
        r = errno != ENOENT ? -errno : 0;
        md_echo_forget(file);
    }
    if (r == 0) {
        r = fsync_dir(dir);
    }
    free(file);
    free(dir);
    free(name);
    return r;
}
