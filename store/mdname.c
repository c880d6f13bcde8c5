/* Folder names <-> local directories (the mapping described in
 * store/maildir.h).
 *
 * Names come from the server, so they are hostile input: every component is
 * encoded so that it can neither escape the root ("..", "/"), nor hide as a
 * dotfile, nor collide with a Maildir's own cur/ new/ tmp/, nor (under
 * maildir++) with the '.' that separates levels. '%' is the escape
 * character, so it is encoded too and the mapping reverses exactly. Listing
 * accepts only directory names that this encoding produces, which keeps a
 * user's own odd directories from turning into folders with other names. */
#include "store/maildir.h"

#include "core/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* The longest directory entry the file systems we care about allow. */
#define MD_NAME_MAX 255
/* Deeper trees than this are not mail folders; the limit also bounds the
 * recursion of the verbatim walk. */
#define MD_WALK_DEPTH_MAX 64

static const char hexdig[] = "0123456789ABCDEF";

/* Checks that s is well-formed UTF-8: no overlong forms, no surrogates,
 * nothing above U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned char lo = 0x80;
        unsigned char hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) {
                lo = 0xa0; /* overlong */
            } else if (c == 0xed) {
                hi = 0x9f; /* surrogates */
            }
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) {
                lo = 0x90; /* overlong */
            } else if (c == 0xf4) {
                hi = 0x8f; /* above U+10FFFF */
            }
        } else {
            return false;
        }
        if (n - i < len) {
            return false;
        }
        if (s[i + 1] < lo || s[i + 1] > hi) {
            return false;
        }
        for (size_t k = 2; k < len; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xbf) {
                return false;
            }
        }
        i += len;
    }
    return true;
}

static void add_escaped(struct sbuf *sb, unsigned char c)
{
    char e[3] = {'%', hexdig[c >> 4], hexdig[c & 0xf]};
    sbuf_add(sb, e, sizeof(e));
}

/* Appends the encoded form of one component. */
static void encode_component(struct sbuf *sb, const char *comp, size_t len, bool maildirpp)
{
    /* "cur", "new" and "tmp" would be taken for the Maildir's own
     * directories (verbatim) or look like them (maildir++): encoding the
     * first letter keeps every layout free of them. */
    bool reserved = len == 3 && (memcmp(comp, "cur", 3) == 0 || memcmp(comp, "new", 3) == 0 ||
                                 memcmp(comp, "tmp", 3) == 0);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)comp[i];
        if (c == '%' || c < 0x20 || c == 0x7f || c == '/' || (c == '.' && (i == 0 || maildirpp)) ||
            (i == 0 && reserved)) {
            add_escaped(sb, c);
        } else {
            sbuf_addc(sb, (char)c);
        }
    }
}

int md_folder_local_path(const char *root, enum md_layout layout, const char *name, char **path_r)
{
    *path_r = NULL;
    if (name == NULL || name[0] == '\0') {
        return -EINVAL;
    }
    size_t nlen = strlen(name);
    if (!utf8_valid((const unsigned char *)name, nlen)) {
        return -EILSEQ;
    }
    bool maildirpp = layout == MD_LAYOUT_MAILDIRPP;
    struct sbuf rel = {0};
    int ret = 0;
    if (maildirpp) {
        sbuf_addc(&rel, '.');
    }
    const char *p = name;
    bool first = true;
    bool inbox_only = false;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash != NULL ? (size_t)(slash - p) : strlen(p);
        if (len == 0) {
            ret = -EINVAL; /* leading, trailing or doubled '/' */
            goto out;
        }
        size_t start = rel.len;
        if (!first) {
            sbuf_addc(&rel, maildirpp ? '.' : '/');
            start = rel.len;
        }
        if (first && len == 5 && strncasecmp(p, "INBOX", 5) == 0) {
            /* INBOX is case-insensitive in IMAP; one spelling on disk. */
            sbuf_adds(&rel, "INBOX");
            inbox_only = slash == NULL;
        } else {
            encode_component(&rel, p, len, maildirpp);
        }
        /* Under maildir++ the whole ".A.B" is one directory entry. */
        if ((maildirpp ? rel.len : rel.len - start) > MD_NAME_MAX) {
            ret = -EINVAL;
            goto out;
        }
        first = false;
        if (slash == NULL) {
            break;
        }
        p = slash + 1;
    }
    if (maildirpp && inbox_only) {
        /* Maildir++ keeps INBOX in the root itself. */
        size_t l = strlen(root);
        while (l > 1 && root[l - 1] == '/') {
            l--;
        }
        *path_r = xstrndup(root, l);
    } else if (rel.len == 0) {
        ret = -EINVAL; /* nothing may map to the root in the verbatim layout */
    } else {
        *path_r = path_join(root, rel.buf);
    }
out:
    sbuf_free(&rel);
    return ret;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* Appends the decoded form of one encoded component; false when it is not
 * something the encoder could have written (bad escape, empty). */
static bool decode_component(struct sbuf *sb, const char *comp, size_t len)
{
    if (len == 0) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (comp[i] != '%') {
            sbuf_addc(sb, comp[i]);
            continue;
        }
        if (len - i < 3) {
            return false;
        }
        int h = hexval(comp[i + 1]);
        int l = hexval(comp[i + 2]);
        if (h < 0 || l < 0 || (h == 0 && l == 0)) {
            return false;
        }
        sbuf_addc(sb, (char)(h << 4 | l));
        i += 2;
    }
    return true;
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool has_maildir(const char *dir)
{
    static const char *const subs[] = {"cur", "new", "tmp"};
    for (size_t i = 0; i < ARRAY_SIZE(subs); i++) {
        char *p = path_join(dir, subs[i]);
        bool ok = is_dir(p);
        free(p);
        if (!ok) {
            return false;
        }
    }
    return true;
}

/* A directory entry that is a real directory (symbolic links are not
 * followed: they could loop or lead out of the root). */
static bool entry_is_dir(DIR *d, const struct dirent *de)
{
    if (de->d_type == DT_DIR) {
        return true;
    }
    if (de->d_type != DT_UNKNOWN) {
        return false;
    }
    struct stat st;
    return fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

/* True when name maps back to exactly path: only then is the directory one
 * that the encoder produced for that name. */
static bool canonical(const char *root, enum md_layout layout, const char *name, const char *path)
{
    char *p = NULL;
    bool ok = md_folder_local_path(root, layout, name, &p) == 0 && strcmp(p, path) == 0;
    free(p);
    return ok;
}

struct namevec {
    char **v;
    size_t n;
    size_t cap;
    /* Maildir folders whose directory name is not one the encoder writes
     * (so no folder name maps to them): their paths, when asked for. */
    char **bad;
    size_t nbad, bad_cap;
    bool want_bad;
};

static void bad_add(struct namevec *nv, const char *path)
{
    if (!nv->want_bad) {
        return;
    }
    xgrow(&nv->bad, &nv->bad_cap, nv->nbad + 1, sizeof(*nv->bad));
    nv->bad[nv->nbad++] = xstrdup(path);
}

static void names_add(struct namevec *nv, char *name)
{
    xgrow(&nv->v, &nv->cap, nv->n + 1, sizeof(*nv->v));
    nv->v[nv->n++] = name;
}

static int walk_verbatim(const char *root, const char *dir, const char *prefix, int depth,
                         struct namevec *nv)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        /* The root must be readable; a subdirectory that vanished or is
         * unreadable simply holds no folders we can use. */
        return prefix == NULL ? -errno : 0;
    }
    int ret = 0;
    struct sbuf name = {0};
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno != 0) {
                ret = -errno;
            }
            break;
        }
        /* Dot directories (".notmuch", ".git") are never ours, and
         * cur/new/tmp belong to the folder around them. */
        if (de->d_name[0] == '.' || strcmp(de->d_name, "cur") == 0 ||
            strcmp(de->d_name, "new") == 0 || strcmp(de->d_name, "tmp") == 0) {
            continue;
        }
        if (!entry_is_dir(d, de)) {
            continue;
        }
        sbuf_reset(&name);
        if (prefix != NULL) {
            sbuf_adds(&name, prefix);
            sbuf_addc(&name, '/');
        }
        char *child = path_join(dir, de->d_name);
        if (!decode_component(&name, de->d_name, strlen(de->d_name))) {
            if (has_maildir(child)) {
                bad_add(nv, child);
            }
            free(child);
            continue;
        }
        /* A directory whose name the encoder would not write holds nothing
         * we could name either, so its whole subtree is skipped. */
        if (!canonical(root, MD_LAYOUT_VERBATIM, name.buf, child) && has_maildir(child)) {
            bad_add(nv, child);
        }
        if (canonical(root, MD_LAYOUT_VERBATIM, name.buf, child)) {
            if (has_maildir(child)) {
                names_add(nv, xstrdup(name.buf));
            }
            if (depth + 1 < MD_WALK_DEPTH_MAX) {
                ret = walk_verbatim(root, child, name.buf, depth + 1, nv);
            }
        }
        free(child);
        if (ret < 0) {
            break;
        }
    }
    sbuf_free(&name);
    closedir(d);
    return ret;
}

static int list_maildirpp(const char *root, struct namevec *nv)
{
    if (has_maildir(root)) {
        names_add(nv, xstrdup("INBOX"));
    }
    DIR *d = opendir(root);
    if (d == NULL) {
        return -errno;
    }
    int ret = 0;
    struct sbuf name = {0};
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno != 0) {
                ret = -errno;
            }
            break;
        }
        if (de->d_name[0] != '.' || !entry_is_dir(d, de)) {
            continue;
        }
        sbuf_reset(&name);
        const char *p = de->d_name + 1;
        bool ok = true;
        for (;;) {
            const char *dot = strchr(p, '.');
            size_t len = dot != NULL ? (size_t)(dot - p) : strlen(p);
            if (name.len > 0) {
                sbuf_addc(&name, '/');
            }
            if (!decode_component(&name, p, len)) {
                ok = false;
                break;
            }
            if (dot == NULL) {
                break;
            }
            p = dot + 1;
        }
        if (!ok && (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)) {
            continue;
        }
        char *child = path_join(root, de->d_name);
        if (ok && canonical(root, MD_LAYOUT_MAILDIRPP, name.buf, child)) {
            if (has_maildir(child)) {
                names_add(nv, xstrdup(name.buf));
            }
        } else if (has_maildir(child)) {
            /* Empty levels, bad escapes, names the encoder would not write. */
            bad_add(nv, child);
        }
        free(child);
    }
    sbuf_free(&name);
    closedir(d);
    return ret;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int md_list_folders(const char *root, enum md_layout layout, char ***names_r, size_t *count_r)
{
    return md_list_folders_unusable(root, layout, names_r, count_r, NULL, NULL);
}

int md_list_folders_unusable(const char *root, enum md_layout layout, char ***names_r,
                             size_t *count_r, char ***bad_r, size_t *nbad_r)
{
    struct namevec nv = {.want_bad = bad_r != NULL};
    *names_r = NULL;
    *count_r = 0;
    if (bad_r != NULL) {
        *bad_r = NULL;
        *nbad_r = 0;
    }
    int ret = layout == MD_LAYOUT_MAILDIRPP ? list_maildirpp(root, &nv)
                                            : walk_verbatim(root, root, NULL, 0, &nv);
    if (ret < 0) {
        md_free_names(nv.v, nv.n);
        md_free_names(nv.bad, nv.nbad);
        return ret;
    }
    if (bad_r != NULL) {
        if (nv.nbad > 1) {
            qsort(nv.bad, nv.nbad, sizeof(*nv.bad), name_cmp);
        }
        *bad_r = nv.bad;
        *nbad_r = nv.nbad;
    }
    if (nv.n > 1) {
        qsort(nv.v, nv.n, sizeof(*nv.v), name_cmp);
    }
    *names_r = nv.v;
    *count_r = nv.n;
    return 0;
}

void md_free_names(char **names, size_t count)
{
    if (names == NULL) {
        return;
    }
    for (size_t i = 0; i < count; i++) {
        free(names[i]);
    }
    free(names);
}

/* Files a Maildir folder may hold besides its messages: the maildir++
 * marker and Dovecot's (and our) metadata. They go with the folder. */
static bool folder_metadata(const char *name)
{
    return strcmp(name, "maildirfolder") == 0 || strncmp(name, "dovecot", 7) == 0;
}

static int empty_dir_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        return errno == ENOENT ? 0 : -errno;
    }
    int ret = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            ret = errno != 0 ? -errno : 0;
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        if (unlinkat(dirfd(d), de->d_name, 0) != 0 && errno != ENOENT) {
            ret = -errno;
            break;
        }
    }
    closedir(d);
    return ret;
}

int md_folder_remove(const char *path)
{
    char *cur = path_join(path, "cur");
    char *new = path_join(path, "new");
    char *tmp = path_join(path, "tmp");
    int ret = 0;
    /* rmdir itself is the emptiness test, so a message delivered a moment
     * ago cannot be lost between a check and the removal. cur/ goes first;
     * if new/ then turns out to hold mail, cur/ is put back so that the
     * folder stays a working Maildir. */
    if (rmdir(cur) != 0) {
        ret = errno == EEXIST ? -ENOTEMPTY : -errno;
        goto out;
    }
    if (rmdir(new) != 0) {
        ret = errno == EEXIST ? -ENOTEMPTY : -errno;
        mkdir(cur, 0700);
        goto out;
    }
    /* What is left in tmp/ are unfinished deliveries into a folder that is
     * going away. */
    if ((ret = empty_dir_files(tmp)) < 0) {
        goto out;
    }
    if (rmdir(tmp) != 0 && errno != ENOENT) {
        ret = -errno;
        goto out;
    }
    DIR *d = opendir(path);
    if (d != NULL) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_type != DT_DIR && folder_metadata(de->d_name)) {
                unlinkat(dirfd(d), de->d_name, 0);
            }
        }
        closedir(d);
    }
    /* Subfolders (verbatim layout) or a user's own files keep the
     * directory; it no longer is a Maildir folder either way. */
    if (rmdir(path) != 0 && errno != ENOTEMPTY && errno != EEXIST) {
        ret = -errno;
    }
out:
    free(cur);
    free(new);
    free(tmp);
    return ret;
}
