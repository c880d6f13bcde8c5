/* Incremental POP3 reply parser: see pop3_parser.h. */
#include "sync/pop3_parser.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define DEFAULT_MAX_LINE (8u * 1024)
#define DEFAULT_MAX_DATA_LINE (1024u * 1024)
#define DEFAULT_MAX_BODY (1024ull * 1024 * 1024)
#define DEFAULT_CHUNK (64u * 1024)

/* Where the parser is inside the current reply. */
enum phase {
    PH_STATUS,     /* reading the status line */
    PH_LINES,      /* reading listing lines */
    PH_DATA,       /* streaming a body */
    PH_DATA_ENDED, /* the terminator was seen; END is still to be returned */
    PH_ERROR,
};

/* Position inside a body line, for dot-unstuffing and CRLF conversion. */
enum data_state {
    DS_BOL,   /* at the beginning of a line */
    DS_DOT,   /* saw "." at the beginning of a line */
    DS_DOTCR, /* saw ".\r" at the beginning of a line */
    DS_MID,   /* inside a line */
    DS_CR,    /* saw "\r" inside a line, not yet written */
};

struct pop3_parser {
    struct pop3_parser_limits lim;
    enum pop3_expect expect;
    enum phase phase;
    enum data_state ds;

    /* The current status or listing line. */
    char *line;
    size_t line_len;
    bool line_cr; /* the last byte stored was a CR that may end the line */

    /* Parsed status line; code and text point into line_copy. */
    char *line_copy;
    char *code;
    struct pop3_reply reply;

    /* Results: the last LINE (in line_copy) or DATA chunk (in out). */
    enum pop3_parse_result last;
    size_t item_len;
    char *out;
    size_t out_len;
    size_t data_line_len; /* bytes of the current body line so far */
    uint64_t body_len;

    char err[256];
};

struct pop3_parser *pop3_parser_new(const struct pop3_parser_limits *limits)
{
    struct pop3_parser *p = xcalloc(1, sizeof(*p));
    if (limits != NULL) {
        p->lim = *limits;
    }
    if (p->lim.max_line == 0) {
        p->lim.max_line = DEFAULT_MAX_LINE;
    }
    if (p->lim.max_data_line == 0) {
        p->lim.max_data_line = DEFAULT_MAX_DATA_LINE;
    }
    if (p->lim.max_body == 0) {
        p->lim.max_body = DEFAULT_MAX_BODY;
    }
    if (p->lim.chunk_size == 0) {
        p->lim.chunk_size = DEFAULT_CHUNK;
    }
    /* stream_data needs room for two bytes at a time. */
    if (p->lim.chunk_size < 16) {
        p->lim.chunk_size = 16;
    }
    /* One spare byte for the terminating NUL of a full line. */
    p->line = xmalloc(p->lim.max_line + 1);
    p->line_copy = xmalloc(p->lim.max_line + 1);
    p->out = xmalloc(p->lim.chunk_size);
    return p;
}

void pop3_parser_free(struct pop3_parser *p)
{
    if (p == NULL) {
        return;
    }
    free(p->line);
    free(p->line_copy);
    free(p->out);
    free(p);
}

void pop3_parser_reset(struct pop3_parser *p)
{
    p->expect = POP3_EXPECT_NOTHING;
    p->phase = PH_STATUS;
    p->ds = DS_BOL;
    p->line_len = 0;
    p->line_cr = false;
    p->out_len = 0;
    p->data_line_len = 0;
    p->body_len = 0;
    p->err[0] = '\0';
}

void pop3_parser_expect(struct pop3_parser *p, enum pop3_expect e)
{
    if (p->phase == PH_ERROR) {
        return;
    }
    p->expect = e;
    p->phase = PH_STATUS;
}

enum pop3_expect pop3_parser_expecting(const struct pop3_parser *p)
{
    return p->expect;
}

const struct pop3_reply *pop3_parser_reply(const struct pop3_parser *p)
{
    return &p->reply;
}

const char *pop3_parser_data(const struct pop3_parser *p, size_t *len_r)
{
    if (p->last == POP3_PARSE_LINE) {
        *len_r = p->item_len;
        return p->line_copy;
    }
    if (p->last == POP3_PARSE_DATA) {
        *len_r = p->out_len;
        return p->out;
    }
    *len_r = 0;
    return "";
}

const char *pop3_parser_error(const struct pop3_parser *p)
{
    return p->err[0] != '\0' ? p->err : "no error";
}

bool pop3_parser_busy(const struct pop3_parser *p)
{
    return p->phase == PH_LINES || p->phase == PH_DATA || p->phase == PH_DATA_ENDED ||
           (p->phase == PH_STATUS && (p->line_len > 0 || p->line_cr));
}

__attribute__((format(printf, 2, 3))) static int fail(struct pop3_parser *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof(p->err), fmt, ap);
    va_end(ap);
    p->phase = PH_ERROR;
    p->expect = POP3_EXPECT_NOTHING;
    return POP3_PARSE_ERROR;
}

/* A short, printable excerpt of peer input for error messages. */
static const char *excerpt(const char *s, size_t len, char *buf, size_t cap)
{
    size_t o = 0, i = 0;
    /* Room for one escaped byte (4), "..." (3) and the NUL. */
    for (; i < len && o + 8 <= cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f) {
            buf[o++] = (char)c;
        } else {
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
        }
    }
    if (i < len) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

/* Collects one line into p->line. Returns 1 when a complete line is there
 * (without its ending, NUL-terminated), 0 when all input was consumed, or an
 * error. */
static int collect_line(struct pop3_parser *p, const char *data, size_t len, size_t *used_r)
{
    size_t i = 0;
    while (i < len) {
        char c = data[i++];
        if (c == '\n') {
            /* A CR just before the LF belongs to the line ending. */
            p->line_cr = false;
            p->line[p->line_len] = '\0';
            *used_r = i;
            return 1;
        }
        if (p->line_cr) {
            /* The previous CR was not followed by LF: keep it. */
            p->line_cr = false;
            if (p->line_len >= p->lim.max_line) {
                goto too_long;
            }
            p->line[p->line_len++] = '\r';
        }
        if (c == '\r') {
            p->line_cr = true;
            continue;
        }
        if (c == '\0') {
            *used_r = i;
            return fail(p, "NUL byte in a reply line");
        }
        if (p->line_len >= p->lim.max_line) {
            goto too_long;
        }
        p->line[p->line_len++] = c;
    }
    *used_r = i;
    return 0;

too_long:
    *used_r = i;
    snprintf(p->err, sizeof(p->err), "reply line longer than %zu bytes", p->lim.max_line);
    p->phase = PH_ERROR;
    p->expect = POP3_EXPECT_NOTHING;
    return POP3_PARSE_ERROR;
}

/* Parses the status line in p->line into p->reply. */
static int parse_status(struct pop3_parser *p, size_t n)
{
    memcpy(p->line_copy, p->line, n + 1);
    char *s = p->line_copy;
    struct pop3_reply *r = &p->reply;
    memset(r, 0, sizeof(*r));
    r->line = p->line;
    char *rest;
    if (strncasecmp(s, "+OK", 3) == 0 && (s[3] == '\0' || s[3] == ' ' || s[3] == '\t')) {
        r->ok = true;
        rest = s + 3;
    } else if (strncasecmp(s, "-ERR", 4) == 0 && (s[4] == '\0' || s[4] == ' ' || s[4] == '\t')) {
        rest = s + 4;
    } else if (p->expect == POP3_EXPECT_SASL && s[0] == '+' && (s[1] == '\0' || s[1] == ' ')) {
        r->continuation = true;
        rest = s + 1;
        while (*rest == ' ') {
            rest++;
        }
        r->text = rest;
        return POP3_PARSE_CONTINUATION;
    } else {
        char buf[80];
        return fail(p, "malformed reply \"%s\" (expected +OK or -ERR)",
                    excerpt(s, n, buf, sizeof(buf)));
    }
    while (*rest == ' ' || *rest == '\t') {
        rest++;
    }
    /* RFC 2449 section 8: a response code is in brackets right after the
     * status indicator. Only well-formed codes (no spaces, closed bracket)
     * count; anything else is ordinary text. */
    if (rest[0] == '[') {
        char *close = strchr(rest, ']');
        size_t clen = close != NULL ? (size_t)(close - rest - 1) : 0;
        if (close != NULL && clen > 0 && strcspn(rest + 1, " \t") >= clen) {
            *close = '\0';
            r->code = rest + 1;
            for (char *q = rest + 1; *q != '\0'; q++) {
                *q = (char)toupper((unsigned char)*q);
            }
            rest = close + 1;
            while (*rest == ' ' || *rest == '\t') {
                rest++;
            }
        }
    }
    r->text = rest;
    return POP3_PARSE_STATUS;
}

/* Checks that n more body bytes on the current line stay within the limits. */
static int data_room(struct pop3_parser *p, size_t n)
{
    if (p->data_line_len + n > p->lim.max_data_line) {
        snprintf(p->err, sizeof(p->err), "line in message body longer than %zu bytes",
                 p->lim.max_data_line);
    } else if (p->body_len + n > p->lim.max_body) {
        snprintf(p->err, sizeof(p->err), "message body larger than %llu bytes",
                 (unsigned long long)p->lim.max_body);
    } else {
        return 0;
    }
    p->phase = PH_ERROR;
    p->expect = POP3_EXPECT_NOTHING;
    return POP3_PARSE_ERROR;
}

/* Appends one byte to the DATA output, enforcing the line and body limits. */
static int out_byte(struct pop3_parser *p, char c)
{
    if (c != '\n' && data_room(p, 1) < 0) {
        return POP3_PARSE_ERROR;
    }
    p->data_line_len = c == '\n' ? 0 : p->data_line_len + 1;
    p->body_len++;
    p->out[p->out_len++] = c;
    return 0;
}

/* Streams body bytes into p->out until it is full, the input ends, or the
 * terminator is seen. Returns 0 or an error; sets *used_r. */
static int stream_data(struct pop3_parser *p, const char *data, size_t len, size_t *used_r)
{
    size_t i = 0;
    /* Room for the worst case of one input byte producing two output bytes
     * (a held CR followed by a non-LF). */
    while (i < len && p->out_len + 2 <= p->lim.chunk_size) {
        char c = data[i];
        switch (p->ds) {
        case DS_BOL:
            if (c == '.') {
                p->ds = DS_DOT;
                i++;
                continue;
            }
            p->ds = DS_MID;
            continue; /* handle c as a line byte */
        case DS_DOT:
            if (c == '\r') {
                p->ds = DS_DOTCR;
                i++;
                continue;
            }
            if (c == '\n') {
                i++;
                p->phase = PH_DATA_ENDED;
                *used_r = i;
                return 0;
            }
            /* A stuffed dot: drop it and keep the rest of the line. */
            p->ds = DS_MID;
            continue;
        case DS_DOTCR:
            if (c == '\n') {
                i++;
                p->phase = PH_DATA_ENDED;
                *used_r = i;
                return 0;
            }
            /* ".\r" followed by something else: the dot was stuffing and
             * the CR is part of the line. */
            p->ds = DS_CR;
            continue;
        case DS_CR:
            i++;
            if (c == '\n') {
                if (out_byte(p, '\n') < 0) {
                    goto err;
                }
                p->ds = DS_BOL;
                continue;
            }
            if (out_byte(p, '\r') < 0) {
                goto err;
            }
            if (c == '\r') {
                continue; /* still a held CR */
            }
            p->ds = DS_MID;
            if (out_byte(p, c) < 0) {
                goto err;
            }
            continue;
        case DS_MID: {
            /* Fast path: copy up to the next CR or LF. */
            size_t room = p->lim.chunk_size - p->out_len;
            size_t j = i;
            size_t lim = len - i < room ? len : i + room;
            while (j < lim && data[j] != '\r' && data[j] != '\n') {
                j++;
            }
            size_t n = j - i;
            if (n > 0) {
                if (data_room(p, n) < 0) {
                    goto err;
                }
                memcpy(p->out + p->out_len, data + i, n);
                p->out_len += n;
                p->data_line_len += n;
                p->body_len += n;
                i = j;
                continue;
            }
            if (c == '\r') {
                p->ds = DS_CR;
                i++;
                continue;
            }
            /* A bare LF ends the line too. */
            i++;
            if (out_byte(p, '\n') < 0) {
                goto err;
            }
            p->ds = DS_BOL;
            continue;
        }
        }
    }
    *used_r = i;
    return 0;

err:
    *used_r = i;
    return POP3_PARSE_ERROR;
}

int pop3_parser_feed(struct pop3_parser *p, const char *data, size_t len, size_t *used_r)
{
    *used_r = 0;
    p->last = POP3_PARSE_NEED_MORE;
    if (p->phase == PH_ERROR) {
        return POP3_PARSE_ERROR;
    }
    if (p->phase == PH_DATA) {
        p->out_len = 0;
        size_t used;
        int r = stream_data(p, data, len, &used);
        *used_r = used;
        if (r < 0) {
            return POP3_PARSE_ERROR;
        }
        if (p->out_len > 0) {
            /* END (if the terminator was seen) comes with the next call. */
            p->last = POP3_PARSE_DATA;
            return POP3_PARSE_DATA;
        }
    }
    if (p->phase == PH_DATA_ENDED) {
        p->out_len = 0;
        p->phase = PH_STATUS;
        p->expect = POP3_EXPECT_NOTHING;
        p->ds = DS_BOL;
        return POP3_PARSE_END;
    }
    if (p->phase == PH_DATA) {
        return POP3_PARSE_NEED_MORE;
    }
    if (len == 0) {
        return POP3_PARSE_NEED_MORE;
    }
    if (p->phase == PH_STATUS && p->expect == POP3_EXPECT_NOTHING) {
        char buf[80];
        return fail(p, "unexpected data from the server: \"%s\"",
                    excerpt(data, len < 60 ? len : 60, buf, sizeof(buf)));
    }

    size_t used;
    int r = collect_line(p, data, len, &used);
    *used_r = used;
    if (r <= 0) {
        return r < 0 ? POP3_PARSE_ERROR : POP3_PARSE_NEED_MORE;
    }
    size_t n = p->line_len;
    p->line_len = 0;
    if (p->phase == PH_LINES) {
        if (n == 1 && p->line[0] == '.') {
            p->phase = PH_STATUS;
            p->expect = POP3_EXPECT_NOTHING;
            return POP3_PARSE_END;
        }
        const char *s = p->line;
        if (s[0] == '.') {
            s++;
            n--;
        }
        memmove(p->line_copy, s, n);
        p->line_copy[n] = '\0';
        p->item_len = n;
        p->last = POP3_PARSE_LINE;
        return POP3_PARSE_LINE;
    }

    /* A status line. */
    r = parse_status(p, n);
    if (r < 0) {
        return r;
    }
    if (r == POP3_PARSE_CONTINUATION) {
        p->expect = POP3_EXPECT_NOTHING;
        return r;
    }
    if (p->reply.ok && p->expect == POP3_EXPECT_LINES) {
        p->phase = PH_LINES;
    } else if (p->reply.ok && p->expect == POP3_EXPECT_DATA) {
        p->phase = PH_DATA;
        p->ds = DS_BOL;
        p->data_line_len = 0;
        p->body_len = 0;
        p->out_len = 0;
    } else {
        p->expect = POP3_EXPECT_NOTHING;
    }
    return POP3_PARSE_STATUS;
}
