/* Modified UTF-7 <-> UTF-8; see utf7.h. */
#include "sync/utf7.h"

#include "core/util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int b64value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == ',') {
        return 63;
    }
    return -1;
}

static void add_utf8(struct sbuf *sb, uint32_t cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xc0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xe0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        b[0] = (char)(0xf0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    sbuf_add(sb, b, n);
}

/* Decodes one "&...-" run starting after the "&"; *s_p is left after the
 * "-". */
static int decode_run(const unsigned char **s_p, struct sbuf *sb)
{
    const unsigned char *s = *s_p;
    uint32_t bits = 0, high = 0;
    unsigned nbits = 0;
    for (; *s != '-'; s++) {
        int v = b64value(*s);
        if (v < 0) {
            return -EILSEQ; /* includes the end of the string */
        }
        bits = (bits << 6) | (uint32_t)v;
        nbits += 6;
        if (nbits < 16) {
            continue;
        }
        nbits -= 16;
        uint32_t u = (bits >> nbits) & 0xffff;
        bits &= (1u << nbits) - 1;
        if (high != 0) {
            if (u < 0xdc00 || u > 0xdfff) {
                return -EILSEQ;
            }
            add_utf8(sb, 0x10000 + ((high - 0xd800) << 10) + (u - 0xdc00));
            high = 0;
        } else if (u >= 0xd800 && u <= 0xdbff) {
            high = u;
        } else if (u >= 0xdc00 && u <= 0xdfff) {
            return -EILSEQ;
        } else if (u == 0 || (u >= 0x20 && u <= 0x7e)) {
            /* Printable US-ASCII must stand for itself (RFC 3501 5.1.3). */
            return -EILSEQ;
        } else {
            add_utf8(sb, u);
        }
    }
    /* A correct encoder leaves fewer than 6 bits, all zero. This also
     * rejects a run too short to hold one UTF-16 unit. */
    if (high != 0 || nbits >= 6 || bits != 0) {
        return -EILSEQ;
    }
    *s_p = s + 1;
    return 0;
}

int utf7_to_utf8(const char *in, char **out_r)
{
    struct sbuf sb = {0};
    const unsigned char *s = (const unsigned char *)in;
    bool after_run = false;
    *out_r = NULL;
    while (*s != '\0') {
        unsigned char c = *s;
        if (c < 0x20 || c > 0x7e) {
            goto bad;
        }
        if (c != '&') {
            sbuf_addc(&sb, (char)c);
            s++;
            after_run = false;
            continue;
        }
        s++;
        if (*s == '-') {
            sbuf_addc(&sb, '&');
            s++;
            after_run = false;
            continue;
        }
        if (after_run || decode_run(&s, &sb) != 0) {
            goto bad;
        }
        after_run = true;
    }
    *out_r = sbuf_detach(&sb);
    return 0;
bad:
    sbuf_free(&sb);
    return -EILSEQ;
}

/* Decodes one UTF-8 sequence at *s_p strictly; returns the code point or -1. */
static int32_t next_utf8(const unsigned char **s_p)
{
    const unsigned char *s = *s_p;
    uint32_t cp;
    unsigned n;
    uint32_t min;
    if (s[0] < 0x80) {
        *s_p = s + 1;
        return s[0];
    } else if ((s[0] & 0xe0) == 0xc0) {
        cp = s[0] & 0x1f;
        n = 1;
        min = 0x80;
    } else if ((s[0] & 0xf0) == 0xe0) {
        cp = s[0] & 0x0f;
        n = 2;
        min = 0x800;
    } else if ((s[0] & 0xf8) == 0xf0) {
        cp = s[0] & 0x07;
        n = 3;
        min = 0x10000;
    } else {
        return -1;
    }
    for (unsigned i = 1; i <= n; i++) {
        /* Also stops at the terminating NUL of a truncated sequence. */
        if ((s[i] & 0xc0) != 0x80) {
            return -1;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return -1;
    }
    *s_p = s + n + 1;
    return (int32_t)cp;
}

struct b64_run {
    uint32_t bits;
    unsigned nbits;
    bool open;
};

static void run_add_unit(struct sbuf *sb, struct b64_run *run, uint32_t u)
{
    run->bits = (run->bits << 16) | u;
    run->nbits += 16;
    while (run->nbits >= 6) {
        run->nbits -= 6;
        sbuf_addc(sb, b64chars[(run->bits >> run->nbits) & 0x3f]);
    }
    run->bits &= (1u << run->nbits) - 1;
}

static void run_close(struct sbuf *sb, struct b64_run *run)
{
    if (run->nbits > 0) {
        sbuf_addc(sb, b64chars[(run->bits << (6 - run->nbits)) & 0x3f]);
    }
    sbuf_addc(sb, '-');
    run->bits = 0;
    run->nbits = 0;
    run->open = false;
}

int utf8_to_utf7(const char *in, char **out_r)
{
    struct sbuf sb = {0};
    struct b64_run run = {0};
    const unsigned char *s = (const unsigned char *)in;
    *out_r = NULL;
    while (*s != '\0') {
        int32_t cp = next_utf8(&s);
        if (cp < 0) {
            sbuf_free(&sb);
            return -EILSEQ;
        }
        if (cp >= 0x20 && cp <= 0x7e) {
            if (run.open) {
                run_close(&sb, &run);
            }
            if (cp == '&') {
                sbuf_adds(&sb, "&-");
            } else {
                sbuf_addc(&sb, (char)cp);
            }
            continue;
        }
        if (!run.open) {
            sbuf_addc(&sb, '&');
            run.open = true;
        }
        if (cp >= 0x10000) {
            uint32_t v = (uint32_t)cp - 0x10000;
            run_add_unit(&sb, &run, 0xd800 | (v >> 10));
            run_add_unit(&sb, &run, 0xdc00 | (v & 0x3ff));
        } else {
            run_add_unit(&sb, &run, (uint32_t)cp);
        }
    }
    if (run.open) {
        run_close(&sb, &run);
    }
    *out_r = sbuf_detach(&sb);
    return 0;
}
