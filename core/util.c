#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void oom(void)
{
    static const char msg[] = "mailsync: out of memory\n";
    ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)n;
    abort();
}

void *xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (p == NULL) {
        oom();
    }
    return p;
}

void *xcalloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (p == NULL) {
        oom();
    }
    return p;
}

void *xrealloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);
    if (p == NULL) {
        oom();
    }
    return p;
}

void xgrow(void *ptr_p, size_t *cap, size_t need, size_t elem)
{
    void **pp = ptr_p;
    if (need <= *cap) {
        return;
    }
    size_t ncap = *cap ? *cap : 8;
    while (ncap < need) {
        if (ncap > ((size_t)-1) / 2 / elem) {
            oom();
        }
        ncap *= 2;
    }
    *pp = xrealloc(*pp, ncap * elem);
    *cap = ncap;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xvasprintf(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        oom();
    }
    char *p = xmalloc((size_t)n + 1);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = xvasprintf(fmt, ap);
    va_end(ap);
    return p;
}

void sbuf_add(struct sbuf *sb, const void *data, size_t len)
{
    xgrow(&sb->buf, &sb->cap, sb->len + len + 1, 1);
    if (len > 0) {
        memcpy(sb->buf + sb->len, data, len);
    }
    sb->len += len;
    sb->buf[sb->len] = '\0';
}

void sbuf_adds(struct sbuf *sb, const char *s)
{
    sbuf_add(sb, s, strlen(s));
}

void sbuf_addc(struct sbuf *sb, char c)
{
    sbuf_add(sb, &c, 1);
}

void sbuf_addf(struct sbuf *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = xvasprintf(fmt, ap);
    va_end(ap);
    sbuf_adds(sb, s);
    free(s);
}

void sbuf_reset(struct sbuf *sb)
{
    sb->len = 0;
    if (sb->buf != NULL) {
        sb->buf[0] = '\0';
    }
}

char *sbuf_detach(struct sbuf *sb)
{
    char *p = sb->buf != NULL ? sb->buf : xstrdup("");
    sb->buf = NULL;
    sb->len = sb->cap = 0;
    return p;
}

void sbuf_free(struct sbuf *sb)
{
    free(sb->buf);
    sb->buf = NULL;
    sb->len = sb->cap = 0;
}

static bool var_char(char c, bool first)
{
    return c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (!first && c >= '0' && c <= '9');
}

int path_expand(const char *path, char **out_r, char **err_r)
{
    struct sbuf sb = {0};
    const char *p = path;
    *err_r = NULL;
    if (p[0] == '~' && (p[1] == '/' || p[1] == '\0')) {
        const char *home = getenv("HOME");
        if (home == NULL || *home == '\0') {
            *err_r = xstrdup("'~' used but $HOME is not set");
            return -1;
        }
        sbuf_adds(&sb, home);
        p++;
    }
    while (*p != '\0') {
        if (*p != '$') {
            sbuf_addc(&sb, *p++);
            continue;
        }
        const char *start = p + 1;
        bool braced = *start == '{';
        if (braced) {
            start++;
        }
        const char *end = start;
        while (var_char(*end, end == start)) {
            end++;
        }
        if (end == start || (braced && *end != '}')) {
            /* A lone '$' is kept literally. */
            sbuf_addc(&sb, *p++);
            continue;
        }
        char *name = xstrndup(start, (size_t)(end - start));
        const char *val = getenv(name);
        if (val == NULL) {
            *err_r = xasprintf("environment variable $%s is not set", name);
            free(name);
            sbuf_free(&sb);
            return -1;
        }
        free(name);
        sbuf_adds(&sb, val);
        p = braced ? end + 1 : end;
    }
    *out_r = sbuf_detach(&sb);
    return 0;
}

static int sync_now(const char *path, void *arg)
{
    return fsync_dir(path);
}

int mkdir_p_durable(const char *dir, mode_t mode, bool durable)
{
    return mkdir_p_each(dir, mode, durable ? sync_now : NULL, NULL);
}

int mkdir_p_each(const char *dir, mode_t mode, int (*need_sync)(const char *path, void *arg),
                 void *arg)
{
    if (dir[0] == '\0') {
        return -EINVAL;
    }
    /* Most calls find it there already: one stat instead of a failing
     * mkdir per path component. */
    struct stat st0;
    if (stat(dir, &st0) == 0 && S_ISDIR(st0.st_mode)) {
        return 0;
    }
    char *tmp = xstrdup(dir);
    int ret = 0;
    /* Where the first directory this call creates is: its parent and every
     * directory below it need an fsync to make the new entries durable. */
    char *first_made = NULL;
    /* Usually only the last level is missing: one mkdir, not one per
     * component (the walk below then finds everything there). */
    bool direct = mkdir(dir, mode) == 0;
    if (direct) {
        first_made = xstrdup(dir);
    }
    for (char *p = tmp + 1; !direct; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(tmp, mode) == 0) {
                if (first_made == NULL) {
                    first_made = xstrdup(tmp);
                }
            } else if (errno != EEXIST) {
                ret = -errno;
                break;
            }
            *p = saved;
            if (saved == '\0') {
                break;
            }
        }
    }
    if (ret == 0) {
        struct stat st;
        if (stat(dir, &st) != 0) {
            ret = -errno;
        } else if (!S_ISDIR(st.st_mode)) {
            ret = -ENOTDIR;
        }
    }
    if (ret == 0 && need_sync != NULL && first_made != NULL) {
        /* Each new directory's entry lives in its parent: fsync the parents
         * of dir, of its parent, ... up to and including the parent of the
         * first directory made here. */
        size_t made_len = strlen(first_made);
        char *p = xstrdup(dir);
        size_t len = strlen(p);
        while (ret == 0 && len >= made_len) {
            while (len > 0 && p[len - 1] != '/') {
                len--;
            }
            /* p[0..len) is now the parent with its trailing '/'. */
            p[len > 1 ? len - 1 : len] = '\0';
            ret = need_sync(p[0] != '\0' ? p : ".", arg);
            len = strlen(p);
            if (len <= 1) {
                break;
            }
        }
        free(p);
    }
    free(first_made);
    free(tmp);
    return ret;
}

int mkdir_p(const char *dir, mode_t mode)
{
    return mkdir_p_durable(dir, mode, false);
}

int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    int ret = 0;
    if (fsync(fd) != 0) {
        ret = -errno;
    }
    close(fd);
    return ret;
}

char *path_join(const char *a, const char *b)
{
    size_t la = strlen(a);
    while (la > 1 && a[la - 1] == '/') {
        la--;
    }
    while (*b == '/') {
        b++;
    }
    return xasprintf("%.*s/%s", (int)la, a, b);
}

unsigned long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000ULL + (unsigned long long)ts.tv_nsec / 1000000ULL;
}

int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp_r)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c < 0x80) {
        *cp_r = c;
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = cp << 6 | (s[i] & 0x3f);
    }
    *cp_r = cp;
    return len;
}

/* Code points that reorder or hide the text around them (Unicode bidi
 * controls): in a log line they could make one folder name look like
 * another, or hide the rest of the line. */
static bool is_bidi_control(uint32_t cp)
{
    return cp == 0x061c || cp == 0x200e || cp == 0x200f || (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069);
}

size_t term_safe(char *buf, size_t len)
{
    unsigned char *p = (unsigned char *)buf;
    size_t out = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t n = utf8_seq(p + i, len - i, &cp);
        if (n == 0) {
            p[out++] = '?';
            i++;
            continue;
        }
        if ((cp < 0x20 && cp != '\t') || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) ||
            is_bidi_control(cp)) {
            p[out++] = '?';
        } else {
            memmove(p + out, p + i, n);
            out += n;
        }
        i += n;
    }
    return out;
}

/* ---- strindex ---- */

uint64_t str_hash(const void *data, size_t len)
{
    /* FNV-1a, then a final mix so that the low bits used as the slot
     * depend on every byte. */
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* Open addressing with linear probing; pos is stored as pos + 1 so that 0
 * marks a free slot. Kept at most half full. */
static void strindex_put(uint64_t *hash, size_t *pos, size_t cap, uint64_t h, size_t p1)
{
    size_t i = (size_t)h & (cap - 1);
    while (pos[i] != 0) {
        i = (i + 1) & (cap - 1);
    }
    hash[i] = h;
    pos[i] = p1;
}

void strindex_add(struct strindex *x, uint64_t hash, size_t pos)
{
    if (2 * (x->n + 1) > x->cap) {
        size_t cap = x->cap == 0 ? 64 : 2 * x->cap;
        uint64_t *nh = xcalloc(cap, sizeof(*nh));
        size_t *np = xcalloc(cap, sizeof(*np));
        for (size_t i = 0; i < x->cap; i++) {
            if (x->pos[i] != 0) {
                strindex_put(nh, np, cap, x->hash[i], x->pos[i]);
            }
        }
        free(x->hash);
        free(x->pos);
        x->hash = nh;
        x->pos = np;
        x->cap = cap;
    }
    strindex_put(x->hash, x->pos, x->cap, hash, pos + 1);
    x->n++;
}

bool strindex_next(const struct strindex *x, uint64_t hash, size_t *iter_r, size_t *pos_r)
{
    if (x->cap == 0) {
        return false;
    }
    /* *iter_r counts the slots probed so far from the hash's home slot. */
    for (size_t k = *iter_r; k < x->cap; k++) {
        size_t i = ((size_t)hash + k) & (x->cap - 1);
        if (x->pos[i] == 0) {
            *iter_r = x->cap;
            return false;
        }
        if (x->hash[i] == hash) {
            *iter_r = k + 1;
            *pos_r = x->pos[i] - 1;
            return true;
        }
    }
    *iter_r = x->cap;
    return false;
}

void strindex_reset(struct strindex *x)
{
    if (x->cap > 0) {
        memset(x->pos, 0, x->cap * sizeof(*x->pos));
    }
    x->n = 0;
}

void strindex_free(struct strindex *x)
{
    free(x->hash);
    free(x->pos);
    memset(x, 0, sizeof(*x));
}

void sbuf_add_json(struct sbuf *sb, const char *s)
{
    if (s == NULL) {
        sbuf_adds(sb, "null");
        return;
    }
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    sbuf_addc(sb, '"');
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        uint32_t cp;
        size_t len = utf8_seq(p + i, n - i, &cp);
        if (c == '"' || c == '\\') {
            sbuf_addc(sb, '\\');
            sbuf_addc(sb, (char)c);
        } else if (c == '\b') {
            sbuf_adds(sb, "\\b");
        } else if (c == '\f') {
            sbuf_adds(sb, "\\f");
        } else if (c == '\n') {
            sbuf_adds(sb, "\\n");
        } else if (c == '\r') {
            sbuf_adds(sb, "\\r");
        } else if (c == '\t') {
            sbuf_adds(sb, "\\t");
        } else if (c < 0x20 || c == 0x7f) {
            sbuf_addf(sb, "\\u%04x", c);
        } else if (len == 0) {
            /* JSON text is UTF-8: a stray byte cannot be carried over. */
            sbuf_adds(sb, "\\ufffd");
            len = 1;
        } else if (cp == 0x2028 || cp == 0x2029) {
            /* Legal in JSON, but line breaks to JavaScript. */
            sbuf_addf(sb, "\\u%04" PRIx32, cp);
        } else {
            sbuf_add(sb, p + i, len);
        }
        i += len > 0 ? len : 1;
    }
    sbuf_addc(sb, '"');
}

/* ---- child processes --------------------------------------------------- */

static const char *const child_scrubbed[] = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"};

static bool same_env_name(const char *a, const char *b)
{
    size_t la = strcspn(a, "=");
    size_t lb = strcspn(b, "=");
    return la == lb && memcmp(a, b, la) == 0;
}

char **child_env(const char *const *extra)
{
    size_t n_env = 0;
    size_t n_extra = 0;
    while (environ != NULL && environ[n_env] != NULL) {
        n_env++;
    }
    while (extra != NULL && extra[n_extra] != NULL) {
        n_extra++;
    }
    char **env = xcalloc(n_env + n_extra + 1, sizeof(*env));
    size_t n = 0;
    for (size_t i = 0; i < n_env; i++) {
        bool drop = false;
        for (size_t j = 0; j < sizeof(child_scrubbed) / sizeof(child_scrubbed[0]) && !drop; j++) {
            drop = same_env_name(environ[i], child_scrubbed[j]);
        }
        for (size_t j = 0; j < n_extra && !drop; j++) {
            drop = same_env_name(environ[i], extra[j]);
        }
        if (!drop) {
            env[n++] = xstrdup(environ[i]);
        }
    }
    for (size_t j = 0; j < n_extra; j++) {
        env[n++] = xstrdup(extra[j]);
    }
    env[n] = NULL;
    return env;
}

void child_env_free(char **env)
{
    if (env == NULL) {
        return;
    }
    for (char **e = env; *e != NULL; e++) {
        free(*e);
    }
    free(env);
}

/* ---- reading JSON strings ---------------------------------------------- */

static int hex4(const char *p, unsigned *v_r)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= (unsigned)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            v |= (unsigned)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            v |= (unsigned)(c - 'A' + 10);
        } else {
            return -1;
        }
    }
    *v_r = v;
    return 0;
}

static void add_utf8(struct sbuf *sb, unsigned cp)
{
    if (cp < 0x80) {
        sbuf_addc(sb, (char)cp);
    } else if (cp < 0x800) {
        sbuf_addc(sb, (char)(0xc0 | (cp >> 6)));
        sbuf_addc(sb, (char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        sbuf_addc(sb, (char)(0xe0 | (cp >> 12)));
        sbuf_addc(sb, (char)(0x80 | ((cp >> 6) & 0x3f)));
        sbuf_addc(sb, (char)(0x80 | (cp & 0x3f)));
    } else {
        sbuf_addc(sb, (char)(0xf0 | (cp >> 18)));
        sbuf_addc(sb, (char)(0x80 | ((cp >> 12) & 0x3f)));
        sbuf_addc(sb, (char)(0x80 | ((cp >> 6) & 0x3f)));
        sbuf_addc(sb, (char)(0x80 | (cp & 0x3f)));
    }
}

/* Where the value of "key" starts (after the colon and spaces), or NULL. */
static const char *json_value_of(const char *json, const char *key)
{
    size_t klen = strlen(key);
    for (const char *p = strchr(json, '"'); p != NULL; p = strchr(p + 1, '"')) {
        if (strncmp(p + 1, key, klen) != 0 || p[1 + klen] != '"') {
            continue;
        }
        const char *q = p + 2 + klen;
        while (*q == ' ') {
            q++;
        }
        if (*q != ':') {
            continue;
        }
        q++;
        while (*q == ' ') {
            q++;
        }
        return q;
    }
    return NULL;
}

int json_uint_field(const char *json, const char *key, unsigned long long *v_r)
{
    const char *q = json_value_of(json, key);
    if (q == NULL) {
        return -1;
    }
    if (strncmp(q, "true", 4) == 0 || strncmp(q, "false", 5) == 0) {
        *v_r = q[0] == 't';
        return 0;
    }
    if (*q < '0' || *q > '9') {
        return -1;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(q, &end, 10);
    if (errno != 0 || *end == '.' || *end == 'e' || *end == 'E') {
        return -1;
    }
    *v_r = v;
    return 0;
}

char *json_string_field(const char *json, const char *key)
{
    const char *q = json_value_of(json, key);
    if (q == NULL || *q != '"') {
        return NULL;
    }
    q++;
    struct sbuf sb = {0};
    sbuf_adds(&sb, "");
    for (;;) {
        char c = *q++;
        if (c == '\0' || (unsigned char)c < 0x20) {
            sbuf_free(&sb);
            return NULL;
        }
        if (c == '"') {
            return sbuf_detach(&sb);
        }
        if (c != '\\') {
            sbuf_addc(&sb, c);
            continue;
        }
        c = *q++;
        unsigned cp, lo;
        switch (c) {
        case '"':
        case '\\':
        case '/':
            sbuf_addc(&sb, c);
            break;
        case 'b':
            sbuf_addc(&sb, '\b');
            break;
        case 'f':
            sbuf_addc(&sb, '\f');
            break;
        case 'n':
            sbuf_addc(&sb, '\n');
            break;
        case 'r':
            sbuf_addc(&sb, '\r');
            break;
        case 't':
            sbuf_addc(&sb, '\t');
            break;
        case 'u':
            if (hex4(q, &cp) < 0) {
                sbuf_free(&sb);
                return NULL;
            }
            q += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && q[0] == '\\' && q[1] == 'u' &&
                hex4(q + 2, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                q += 6;
            } else if (cp >= 0xd800 && cp < 0xe000) {
                cp = 0xfffd; /* a lone surrogate */
            }
            add_utf8(&sb, cp);
            break;
        default:
            sbuf_free(&sb);
            return NULL;
        }
    }
}
