/* UID sets, dates and mailbox names for the IMAP client. Pure functions. */
#include "sync/imap.h"
#include "sync/imap_int.h"
#include "sync/utf7.h"

#include "core/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int imap_uid_range_format(uint32_t lo, uint32_t hi, char *buf, size_t cap)
{
    if (lo == 0 || hi < lo) {
        return -EINVAL;
    }
    int n;
    if (hi == IMAP_UID_STAR) {
        n = snprintf(buf, cap, "%u:*", (unsigned)lo);
    } else if (hi == lo) {
        n = snprintf(buf, cap, "%u", (unsigned)lo);
    } else {
        n = snprintf(buf, cap, "%u:%u", (unsigned)lo, (unsigned)hi);
    }
    return n < 0 || (size_t)n >= cap ? -ENOSPC : 0;
}

size_t imap_uidset_format(const uint32_t *uids, size_t n, size_t max_len, char ***sets_r)
{
    if (max_len == 0) {
        max_len = 8000;
    }
    /* One range is at most "4294967295:4294967295," (22 bytes): keep room
     * for that so that every set holds at least one range. */
    if (max_len < 24) {
        max_len = 24;
    }
    uint32_t *sorted = xmalloc(n * sizeof(*sorted) + 1);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (uids[i] != 0) {
            sorted[m++] = uids[i];
        }
    }
    qsort(sorted, m, sizeof(*sorted), cmp_u32);

    char **sets = NULL;
    size_t nsets = 0, cap = 0;
    struct sbuf sb = {0};
    size_t i = 0;
    while (i < m) {
        uint32_t lo = sorted[i], hi = lo;
        while (i < m && (sorted[i] == hi || sorted[i] == hi + 1)) {
            hi = sorted[i++];
        }
        char piece[32];
        int len = lo == hi ? snprintf(piece, sizeof(piece), "%u", lo)
                           : snprintf(piece, sizeof(piece), "%u:%u", lo, hi);
        if (sb.len > 0 && sb.len + 1 + (size_t)len > max_len) {
            xgrow(&sets, &cap, nsets + 1, sizeof(*sets));
            sets[nsets++] = sbuf_detach(&sb);
        }
        if (sb.len > 0) {
            sbuf_addc(&sb, ',');
        }
        sbuf_add(&sb, piece, (size_t)len);
    }
    if (sb.len > 0) {
        xgrow(&sets, &cap, nsets + 1, sizeof(*sets));
        sets[nsets++] = sbuf_detach(&sb);
    }
    sbuf_free(&sb);
    free(sorted);
    *sets_r = sets;
    return nsets;
}

static int parse_uid(const char **pp, uint32_t *v_r)
{
    const char *p = *pp;
    if (*p == '*') {
        *v_r = UINT32_MAX;
        *pp = p + 1;
        return 0;
    }
    if (*p < '0' || *p > '9') {
        return -EINVAL;
    }
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX) {
            return -EINVAL;
        }
        p++;
    }
    if (v == 0) {
        return -EINVAL;
    }
    *v_r = (uint32_t)v;
    *pp = p;
    return 0;
}

static int cmp_range(const void *a, const void *b)
{
    const struct imap_uid_range *x = a, *y = b;
    if (x->lo != y->lo) {
        return x->lo < y->lo ? -1 : 1;
    }
    return x->hi < y->hi ? -1 : x->hi > y->hi;
}

int imap_uidset_parse(const char *s, struct imap_uid_range **ranges_r, size_t *n_r)
{
    struct imap_uid_range *r = NULL;
    size_t n = 0, cap = 0;
    const char *p = s;
    if (*p == '\0') {
        goto bad;
    }
    for (;;) {
        uint32_t lo, hi;
        if (parse_uid(&p, &lo) < 0) {
            goto bad;
        }
        hi = lo;
        if (*p == ':') {
            p++;
            if (parse_uid(&p, &hi) < 0) {
                goto bad;
            }
        }
        if (lo > hi) {
            uint32_t t = lo;
            lo = hi;
            hi = t;
        }
        xgrow(&r, &cap, n + 1, sizeof(*r));
        r[n].lo = lo;
        r[n].hi = hi;
        n++;
        if (*p == '\0') {
            break;
        }
        if (*p != ',') {
            goto bad;
        }
        p++;
    }
    qsort(r, n, sizeof(*r), cmp_range);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m > 0 && (r[i].lo <= r[m - 1].hi || r[i].lo - 1 == r[m - 1].hi)) {
            if (r[i].hi > r[m - 1].hi) {
                r[m - 1].hi = r[i].hi;
            }
        } else {
            r[m++] = r[i];
        }
    }
    *ranges_r = r;
    *n_r = m;
    return 0;
bad:
    free(r);
    *ranges_r = NULL;
    *n_r = 0;
    return -EINVAL;
}

bool imap_uidset_contains(const struct imap_uid_range *ranges, size_t n, uint32_t uid)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (uid < ranges[mid].lo) {
            hi = mid;
        } else if (uid > ranges[mid].hi) {
            lo = mid + 1;
        } else {
            return true;
        }
    }
    return false;
}

/* The end of the line starting at p: its '\n', or end. */
static const char *line_end(const char *p, const char *end)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return nl != NULL ? nl : end;
}

char *imap_header_message_id(const char *hdr, size_t len)
{
    const char *p = hdr, *end = hdr + len;
    while (p < end) {
        const char *eol = line_end(p, end);
        const char *le = eol > p && eol[-1] == '\r' ? eol - 1 : eol;
        if (le == p) {
            break; /* the empty line that ends the header block */
        }
        const char *q = p + 10;
        bool named = (size_t)(le - p) > 10 && strncasecmp(p, "Message-ID", 10) == 0;
        while (named && q < le && (*q == ' ' || *q == '\t')) {
            q++; /* obsolete syntax allows white space before the colon */
        }
        if (named && q < le && *q == ':') {
            /* The value runs over continuation lines (starting with a space
             * or tab); unfolding drops the line breaks and keeps the rest. */
            struct sbuf v = {0};
            const char *s = q + 1;
            for (;;) {
                sbuf_add(&v, s, (size_t)(le - s));
                p = eol < end ? eol + 1 : end;
                if (p >= end || (*p != ' ' && *p != '\t')) {
                    break;
                }
                eol = line_end(p, end);
                le = eol > p && eol[-1] == '\r' ? eol - 1 : eol;
                s = p;
            }
            /* A NUL ends the value: nothing after it can be compared as a
             * string. */
            size_t n = strnlen(v.buf != NULL ? v.buf : "", v.len);
            size_t a = 0;
            while (a < n && (v.buf[a] == ' ' || v.buf[a] == '\t')) {
                a++;
            }
            while (n > a && (v.buf[n - 1] == ' ' || v.buf[n - 1] == '\t')) {
                n--;
            }
            char *out = n > a ? xstrndup(v.buf + a, n - a) : NULL;
            sbuf_free(&v);
            return out;
        }
        p = eol < end ? eol + 1 : end;
    }
    return NULL;
}

static const char *const month_names[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

static bool digits(const char *s, int n, int *v_r)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        v = v * 10 + (s[i] - '0');
    }
    *v_r = v;
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (no timegm, which is
 * not in C11 and depends on the TZ environment). */
static int64_t days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int imap_parse_datetime(const char *s, time_t *t_r)
{
    /* "dd-Mon-yyyy hh:mm:ss +zzzz" with dd possibly " d" or "d". */
    int day, year, hh, mm, ss, zh, zm, mon = -1;
    while (*s == ' ') {
        s++;
    }
    if (s[0] >= '0' && s[0] <= '9' && s[1] == '-') {
        day = s[0] - '0';
        s += 2;
    } else if (digits(s, 2, &day) && s[2] == '-') {
        s += 3;
    } else {
        return -EINVAL;
    }
    for (int i = 0; i < 12; i++) {
        if (strncasecmp(s, month_names[i], 3) == 0) {
            mon = i + 1;
        }
    }
    if (mon < 0 || s[3] != '-') {
        return -EINVAL;
    }
    s += 4;
    if (!digits(s, 4, &year) || s[4] != ' ' || !digits(s + 5, 2, &hh) || s[7] != ':' ||
        !digits(s + 8, 2, &mm) || s[10] != ':' || !digits(s + 11, 2, &ss) || s[13] != ' ' ||
        (s[14] != '+' && s[14] != '-') || !digits(s + 15, 2, &zh) || !digits(s + 17, 2, &zm)) {
        return -EINVAL;
    }
    if (day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 || zm > 59) {
        return -EINVAL;
    }
    int64_t t = days_from_civil(year, mon, day) * 86400 + hh * 3600 + mm * 60 + ss;
    int64_t off = (zh * 60 + zm) * 60;
    t = s[14] == '+' ? t - off : t + off;
    *t_r = (time_t)t;
    return 0;
}

void imap_format_datetime(time_t t, char *buf, size_t size)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, size, "%02d-%s-%04d %02d:%02d:%02d +0000", tm.tm_mday, month_names[tm.tm_mon],
             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

bool imap_is_atom(const char *s, size_t len)
{
    if (len == 0) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c) != NULL) {
            return false;
        }
    }
    return true;
}

/* Checks the '/' separated components of a decoded name: none may be empty,
 * "." or "..", so that a name can never climb out of the Maildir root or
 * collide with another one when mapped to a path. */
static const char *check_components(const char *name)
{
    const char *p = name;
    if (*p == '\0') {
        return "folder name is empty";
    }
    for (;;) {
        const char *e = strchr(p, '/');
        size_t n = e != NULL ? (size_t)(e - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) {
            return "folder name has an empty, '.' or '..' component";
        }
        if (e == NULL) {
            return NULL;
        }
        p = e + 1;
    }
}

static bool valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p != '\0') {
        size_t n;
        uint32_t cp;
        if (*p < 0x80) {
            p++;
            continue;
        } else if ((*p & 0xe0) == 0xc0) {
            n = 1;
            cp = *p & 0x1f;
        } else if ((*p & 0xf0) == 0xe0) {
            n = 2;
            cp = *p & 0x0f;
        } else if ((*p & 0xf8) == 0xf0) {
            n = 3;
            cp = *p & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        p += n + 1;
    }
    return true;
}

int imap_name_from_server(const char *raw, size_t len, char delim, bool utf8, char **name_r,
                          const char **why_r)
{
    *name_r = NULL;
    if (strlen(raw) != len) {
        *why_r = "folder name contains a NUL byte";
        return -EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)raw[i] < 0x20 || raw[i] == 0x7f) {
            *why_r = "folder name contains a control character";
            return -EINVAL;
        }
    }
    if (delim != '/' && strchr(raw, '/') != NULL) {
        *why_r = "folder name contains '/', which is not the server's hierarchy delimiter";
        return -EINVAL;
    }
    char *dec;
    if (utf8) {
        if (!valid_utf8(raw)) {
            *why_r = "folder name is not valid UTF-8";
            return -EINVAL;
        }
        dec = xstrdup(raw);
    } else if (utf7_to_utf8(raw, &dec) < 0) {
        *why_r = "folder name is not valid modified UTF-7";
        return -EINVAL;
    }
    /* Encoded control characters ("&AAk-" is a TAB) are refused like raw
     * ones: no local name or command could carry them back unchanged. */
    for (const char *p = dec; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            free(dec);
            *why_r = "folder name contains a control character";
            return -EINVAL;
        }
    }
    /* A '/' can only come out of decoding when it was encoded, which a
     * server with another delimiter uses for a literal slash. */
    if (delim != '/' && strchr(dec, '/') != NULL) {
        free(dec);
        *why_r = "folder name contains '/', which is not the server's hierarchy delimiter";
        return -EINVAL;
    }
    if (delim != '\0' && delim != '/') {
        for (char *p = dec; *p != '\0'; p++) {
            if (*p == delim) {
                *p = '/';
            }
        }
    }
    if (strcasecmp(dec, "INBOX") == 0) {
        memcpy(dec, "INBOX", 5);
    }
    const char *why = check_components(dec);
    if (why != NULL) {
        free(dec);
        *why_r = why;
        return -EINVAL;
    }
    *name_r = dec;
    return 0;
}

int imap_name_to_server(const char *name, char delim, bool utf8, char **raw_r, const char **why_r)
{
    *raw_r = NULL;
    const char *why = check_components(name);
    if (why != NULL) {
        *why_r = why;
        return -EINVAL;
    }
    if (!valid_utf8(name)) {
        *why_r = "folder name is not valid UTF-8";
        return -EINVAL;
    }
    for (const char *p = name; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            *why_r = "folder name contains a control character";
            return -EINVAL;
        }
    }
    if (delim != '/' && delim != '\0' && strchr(name, delim) != NULL) {
        *why_r = "folder name contains the server's hierarchy delimiter";
        return -EINVAL;
    }
    if (delim == '\0' && strchr(name, '/') != NULL) {
        *why_r = "the server has no folder hierarchy";
        return -EINVAL;
    }
    char *conv = xstrdup(name);
    if (delim != '\0' && delim != '/') {
        for (char *p = conv; *p != '\0'; p++) {
            if (*p == '/') {
                *p = delim;
            }
        }
    }
    if (utf8) {
        *raw_r = conv;
        return 0;
    }
    char *enc;
    int r = utf8_to_utf7(conv, &enc);
    free(conv);
    if (r < 0) {
        *why_r = "folder name cannot be encoded in modified UTF-7";
        return -EINVAL;
    }
    *raw_r = enc;
    return 0;
}
