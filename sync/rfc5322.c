/* RFC 5322 header fields and dates: see rfc5322.h. */
#include "sync/rfc5322.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/util.h"

char *rfc5322_find_header(const char *headers, size_t len, const char *name)
{
    size_t nlen = strlen(name);
    const char *s = headers, *end = headers + len;
    while (s < end) {
        const char *eol = memchr(s, '\n', (size_t)(end - s));
        size_t ll = eol != NULL ? (size_t)(eol - s) : (size_t)(end - s);
        if (ll == 0) {
            break; /* end of the header block */
        }
        if (ll > nlen && strncasecmp(s, name, nlen) == 0 && s[nlen] == ':') {
            struct sbuf v = {0};
            sbuf_add(&v, s + nlen + 1, ll - nlen - 1);
            /* Unfold continuation lines. */
            const char *q = eol != NULL ? eol + 1 : end;
            while (q < end && (*q == ' ' || *q == '\t')) {
                const char *e2 = memchr(q, '\n', (size_t)(end - q));
                size_t l2 = e2 != NULL ? (size_t)(e2 - q) : (size_t)(end - q);
                sbuf_add(&v, q, l2);
                q = e2 != NULL ? e2 + 1 : end;
            }
            for (size_t i = 0; i < v.len; i++) {
                if (v.buf[i] == '\r' || v.buf[i] == '\0') {
                    v.buf[i] = ' ';
                }
            }
            return sbuf_detach(&v);
        }
        s = eol != NULL ? eol + 1 : end;
    }
    return NULL;
}

/* Copies s without RFC 5322 comments, commas and extra spaces, as
 * space-separated tokens; ':' is kept inside tokens. */
static char *date_tokens(const char *s)
{
    struct sbuf out = {0};
    int depth = 0;
    bool space = true;
    for (; *s != '\0'; s++) {
        char c = *s;
        if (c == '\\' && depth > 0 && s[1] != '\0') {
            s++;
            continue;
        }
        if (c == '(') {
            depth++;
            continue;
        }
        if (c == ')' && depth > 0) {
            depth--;
            continue;
        }
        if (depth > 0) {
            continue;
        }
        if (c == ',' || isspace((unsigned char)c)) {
            if (!space) {
                sbuf_addc(&out, ' ');
                space = true;
            }
            continue;
        }
        if (c == ':' && out.len > 0 && out.buf[out.len - 1] == ' ') {
            /* obs-time allows spaces around ':' */
            out.len--;
            out.buf[out.len] = '\0';
        }
        sbuf_addc(&out, c);
        space = c == ':';
    }
    if (out.buf == NULL) {
        sbuf_adds(&out, "");
    }
    return sbuf_detach(&out);
}

static int month_index(const char *t)
{
    static const char *const months[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                         "jul", "aug", "sep", "oct", "nov", "dec"};
    if (strlen(t) < 3) {
        return -1;
    }
    for (int i = 0; i < 12; i++) {
        if (strncasecmp(t, months[i], 3) == 0) {
            return i;
        }
    }
    return -1;
}

static bool is_weekday(const char *t)
{
    static const char *const days[] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
    for (int i = 0; i < 7; i++) {
        if (strncasecmp(t, days[i], 3) == 0) {
            return true;
        }
    }
    return false;
}

static bool all_digits(const char *t)
{
    if (*t == '\0') {
        return false;
    }
    for (; *t != '\0'; t++) {
        if (!isdigit((unsigned char)*t)) {
            return false;
        }
    }
    return true;
}

/* A decimal token of up to 9 digits (atoi could overflow on hostile
 * input); -1 when longer. */
static int small_num(const char *t)
{
    if (strlen(t) > 9) {
        return -1;
    }
    return (int)strtol(t, NULL, 10);
}

static bool parse_time(const char *t, int *h, int *mi, int *sec)
{
    int n = 0;
    *sec = 0;
    if (sscanf(t, "%2d:%2d:%2d%n", h, mi, sec, &n) == 3 && t[n] == '\0') {
        return *h < 24 && *mi < 60 && *sec <= 60;
    }
    n = 0;
    if (sscanf(t, "%2d:%2d%n", h, mi, &n) == 2 && t[n] == '\0') {
        return *h < 24 && *mi < 60;
    }
    return false;
}

/* Zone to seconds east of UTC; unknown zones count as UTC (RFC 5322
 * section 4.3: military zones and unknown names are "-0000"). */
static bool parse_zone(const char *t, long *off_r)
{
    if ((t[0] == '+' || t[0] == '-') && strlen(t) == 5 && all_digits(t + 1)) {
        long v = strtol(t + 1, NULL, 10);
        long hh = v / 100, mm = v % 100;
        if (hh > 23 || mm > 59) {
            return false;
        }
        *off_r = (t[0] == '-' ? -1 : 1) * (hh * 3600 + mm * 60);
        return true;
    }
    static const struct {
        const char *name;
        int hours;
    } zones[] = {{"UT", 0},   {"UTC", 0},  {"GMT", 0},  {"Z", 0},    {"EST", -5}, {"EDT", -4},
                 {"CST", -6}, {"CDT", -5}, {"MST", -7}, {"MDT", -6}, {"PST", -8}, {"PDT", -7}};
    for (size_t i = 0; i < ARRAY_SIZE(zones); i++) {
        if (strcasecmp(t, zones[i].name) == 0) {
            *off_r = zones[i].hours * 3600L;
            return true;
        }
    }
    *off_r = 0;
    return isalpha((unsigned char)t[0]);
}

bool rfc5322_parse_date(const char *s, time_t *t_r)
{
    char *toks = date_tokens(s);
    char *tok[12];
    size_t nt = 0;
    char *save = NULL;
    for (char *t = strtok_r(toks, " ", &save); t != NULL && nt < ARRAY_SIZE(tok);
         t = strtok_r(NULL, " ", &save)) {
        tok[nt++] = t;
    }
    size_t i = 0;
    bool ok = false;
    int day = 0, mon = -1, year = -1, h = 0, mi = 0, sec = 0;
    long off = 0;
    if (i < nt && is_weekday(tok[i]) && !all_digits(tok[i])) {
        i++;
    }
    if (i < nt && all_digits(tok[i])) {
        /* RFC 5322: day month year time [zone] */
        if (i + 3 >= nt) {
            goto out;
        }
        day = small_num(tok[i]);
        mon = month_index(tok[i + 1]);
        if (!all_digits(tok[i + 2]) || !parse_time(tok[i + 3], &h, &mi, &sec)) {
            goto out;
        }
        year = small_num(tok[i + 2]);
        size_t ylen = strlen(tok[i + 2]);
        i += 4;
        /* obs-year: two digits are 19xx/20xx, three digits add 1900. */
        if (ylen == 2) {
            year += year < 50 ? 2000 : 1900;
        } else if (ylen == 3) {
            year += 1900;
        }
        if (i < nt && !parse_zone(tok[i], &off)) {
            goto out;
        }
    } else if (i + 2 < nt && month_index(tok[i]) >= 0) {
        /* asctime: month day time year (common in old or broken mail) */
        mon = month_index(tok[i]);
        if (!all_digits(tok[i + 1]) || !parse_time(tok[i + 2], &h, &mi, &sec)) {
            goto out;
        }
        day = small_num(tok[i + 1]);
        i += 3;
        if (i < nt && !all_digits(tok[i])) {
            parse_zone(tok[i], &off);
            i++;
        }
        if (i >= nt || !all_digits(tok[i])) {
            goto out;
        }
        year = small_num(tok[i]);
    } else {
        goto out;
    }
    if (mon < 0 || day < 1 || day > 31 || year < 1900 || year > 9999) {
        goto out;
    }
    struct tm tm = {0};
    tm.tm_year = year - 1900;
    tm.tm_mon = mon;
    tm.tm_mday = day;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec > 59 ? 59 : sec;
    time_t t = timegm(&tm);
    if (t == (time_t)-1 && year != 1969) {
        goto out;
    }
    *t_r = t - off;
    ok = true;
out:
    free(toks);
    return ok;
}
