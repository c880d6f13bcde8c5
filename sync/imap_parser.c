/* Incremental IMAP response parser; see imap_parser.h for the contract.
 *
 * How it works: bytes are cut into "segments", each running up to and
 * including an LF. A segment is tokenized only once it is complete, so no
 * token ever straddles two feed calls and the result cannot depend on how the
 * input was chunked. A segment is parsed straight from the caller's buffer
 * when it arrives whole, and is collected in p->line otherwise. A response is
 * one segment, or several joined by literals: a segment that ends in {n} is
 * followed by n literal bytes and then the next segment of the same response.
 *
 * While a response is being parsed, every string is copied into one arena
 * (p->strs) and every argument is recorded by offset in p->work, so that the
 * arena and the argument vectors may grow by realloc. When a list closes, its
 * items move from the end of p->work to p->items, which therefore holds every
 * closed list's items contiguously. Only when a response (or a partial one,
 * for LITERAL_BEGIN) is handed out are the offsets turned into the public
 * struct imap_arg arrays, all in p->pub. The buffers are kept from one
 * response to the next, so a steady stream of responses allocates nothing. */
#include "sync/imap_parser.h"

#include "core/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_MAX_LINE ((size_t)64 * 1024)
#define DEFAULT_MAX_LITERAL ((uint64_t)1024 * 1024 * 1024)
#define DEFAULT_INLINE_LITERAL_MAX ((size_t)64 * 1024)
#define DEFAULT_MAX_DEPTH 32u
#define DEFAULT_MAX_ARGS ((size_t)1000000)
#define DEFAULT_MAX_RESPONSE ((size_t)16 * 1024 * 1024)

/* Buffers that grew beyond this for one unusual response are released when
 * the next response starts, so that a single huge response does not pin its
 * memory for the life of the connection. */
#define KEEP_BYTES ((size_t)1024 * 1024)

/* More digits than this cannot be a literal size we would ever accept (and
 * 20 digits already cover every uint64_t). */
#define MAX_LITERAL_DIGITS 20

#define NONE SIZE_MAX

enum parser_state {
    ST_LINE = 0,   /* collecting or parsing segments */
    ST_LIT_INLINE, /* copying an inline literal into the arena */
    ST_LIT_STREAM, /* handing out DATA chunks of a streamed literal */
    ST_LIT_END,    /* every byte delivered, END not yet returned */
};

enum parser_phase {
    PH_START = 0, /* at the start of a response */
    PH_ARGS,      /* generic arguments of a non-status response */
    PH_CODE_ARGS, /* arguments of a status response's [CODE args] */
};

/* Results of parsing one segment, internal to this file. */
enum seg_result {
    SEG_MORE = 0,  /* the response continues (an inline literal follows) */
    SEG_RESPONSE,  /* the response is complete */
    SEG_BEGIN,     /* a streamed literal follows */
    SEG_CODE_DONE, /* parse_args only: the ']' closing a response code */
};

struct iarg {
    enum imap_arg_type type;
    size_t off;   /* strings: offset in strs; lists: index in items */
    uint64_t len; /* strings: length; lists: item count; streamed: size */
};

struct imap_parser {
    struct imap_parser_limits lim;
    enum parser_state state;
    enum parser_phase phase;
    int last;        /* the last result returned by feed */
    bool need_clear; /* a response was handed out: clear the arena first */
    bool failed;

    /* A segment that arrived in pieces. */
    char *line;
    size_t line_len, line_cap;

    /* The arena and the argument vectors of the current response. */
    char *strs;
    size_t strs_len, strs_cap;
    struct iarg *work;
    size_t work_len, work_cap;
    struct iarg *items;
    size_t items_len, items_cap;
    size_t *levels; /* work index where each open list starts */
    size_t levels_cap;
    unsigned depth;
    size_t nargs; /* arguments so far, for max_args */
    struct imap_arg *pub;
    size_t pub_cap;

    /* Accounting of the current response. */
    size_t line_bytes;           /* bytes of segments, for max_line */
    size_t resp_bytes;           /* segments plus inline literals, for max_response */
    size_t seg_base;             /* line_bytes before the current segment */
    const char *seg;             /* start of the current segment, for error offsets */
    const char *code_args_start; /* in the current segment, or NULL */
    bool no_sections;            /* a '[' in this segment found no ']' */

    enum imap_resp_kind kind;
    enum imap_status status;
    size_t tag_off, code_off, text_off;

    uint64_t lit_remaining;
    size_t lit_off;

    struct imap_response resp;
    struct imap_literal lit;
    char err[256];
};

static int fail(struct imap_parser *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct imap_parser *p, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof(p->err), fmt, ap);
    va_end(ap);
    p->failed = true;
    return code;
}

/* Offset of pos within the current response (literal bytes not counted), so
 * that error texts say where the problem is. */
static size_t offset_of(const struct imap_parser *p, const char *pos)
{
    return p->seg_base + (size_t)(pos - p->seg);
}

static int fail_char(struct imap_parser *p, const char *pos)
{
    unsigned char c = (unsigned char)*pos;
    if (c == '\0') {
        return fail(p, -EILSEQ, "NUL byte at offset %zu", offset_of(p, pos));
    }
    if (c == '\r') {
        return fail(p, -EILSEQ, "bare CR at offset %zu", offset_of(p, pos));
    }
    return fail(p, -EILSEQ, "control character 0x%02x at offset %zu", c, offset_of(p, pos));
}

static bool is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* Characters that continue an atom. Inside a response code ']' ends the
 * atom and '[' is ordinary; elsewhere ']' is ordinary (astrings such as
 * mailbox names may contain it) and '[' opens a section (see parse_atom).
 * 8-bit bytes are accepted for UTF8=ACCEPT servers. */
static bool is_atom_char(unsigned char c, bool code)
{
    if (c <= ' ' || c == 0x7f) {
        return false;
    }
    switch (c) {
    case '(':
    case ')':
    case '"':
        return false;
    case '[':
        return code;
    case ']':
        return !code;
    default:
        return true;
    }
}

/* Tags are ours, so only plain printable ASCII without specials. */
static bool is_tag_char(unsigned char c)
{
    if (c <= ' ' || c >= 0x7f) {
        return false;
    }
    return strchr("(){\"\\%*", c) == NULL;
}

static size_t str_reserve(struct imap_parser *p, size_t n)
{
    if (p->strs_len + n + 1 > p->strs_cap) {
        xgrow(&p->strs, &p->strs_cap, p->strs_len + n + 1, 1);
    }
    return p->strs_len;
}

static size_t str_add(struct imap_parser *p, const char *s, size_t n)
{
    size_t off = str_reserve(p, n);
    memcpy(p->strs + off, s, n);
    p->strs[off + n] = '\0';
    p->strs_len += n + 1;
    return off;
}

static void push_arg(struct imap_parser *p, enum imap_arg_type type, size_t off, uint64_t len)
{
    if (p->work_len == p->work_cap) {
        xgrow(&p->work, &p->work_cap, p->work_len + 1, sizeof(*p->work));
    }
    struct iarg *a = &p->work[p->work_len++];
    a->type = type;
    a->off = off;
    a->len = len;
}

static int count_arg(struct imap_parser *p, const char *pos)
{
    if (p->nargs >= p->lim.max_args) {
        return fail(p, -E2BIG, "argument count exceeds the limit of %zu (max_args) at offset %zu",
                    p->lim.max_args, offset_of(p, pos));
    }
    p->nargs++;
    return 0;
}

static void convert_arg(struct imap_parser *p, struct imap_arg *dst, const struct iarg *src)
{
    dst->type = src->type;
    switch (src->type) {
    case IMAP_ARG_ATOM:
    case IMAP_ARG_STRING:
    case IMAP_ARG_LITERAL:
        dst->u.str.s = p->strs + src->off;
        dst->u.str.len = (size_t)src->len;
        break;
    case IMAP_ARG_LIST:
        dst->u.list.items = src->len > 0 ? p->pub + src->off : NULL;
        dst->u.list.count = (size_t)src->len;
        break;
    case IMAP_ARG_LITERAL_STREAMED:
        dst->u.literal_size = src->len;
        break;
    case IMAP_ARG_NIL:
        memset(&dst->u, 0, sizeof(dst->u));
        break;
    }
}

/* Builds the public response from the offsets recorded so far. Lists still
 * open (only while a streamed literal begins) are shown closed with the
 * items they have, so the owner sees e.g. "* 12 FETCH (UID 5 BODY[]". The
 * innermost open level is laid out first, right after the closed lists'
 * items, so each outer level can point at the level inside it; *preceding_r
 * gets the last argument of the innermost level. */
static void materialize(struct imap_parser *p, const struct imap_arg **preceding_r)
{
    size_t need = p->items_len + p->work_len + p->depth;
    if (need > p->pub_cap) {
        xgrow(&p->pub, &p->pub_cap, need, sizeof(*p->pub));
    }
    for (size_t i = 0; i < p->items_len; i++) {
        convert_arg(p, &p->pub[i], &p->items[i]);
    }
    size_t pos = p->items_len;
    size_t child = 0, nchild = 0;
    if (preceding_r != NULL) {
        *preceding_r = NULL;
    }
    for (unsigned k = p->depth + 1; k-- > 0;) {
        size_t start = k == 0 ? 0 : p->levels[k - 1];
        size_t end = k == p->depth ? p->work_len : p->levels[k];
        size_t block = pos;
        for (size_t j = start; j < end; j++) {
            convert_arg(p, &p->pub[pos++], &p->work[j]);
        }
        if (k == p->depth && end > start && preceding_r != NULL) {
            *preceding_r = &p->pub[pos - 1];
        }
        if (k < p->depth) {
            struct imap_arg *l = &p->pub[pos++];
            l->type = IMAP_ARG_LIST;
            l->u.list.items = nchild > 0 ? p->pub + child : NULL;
            l->u.list.count = nchild;
        }
        child = block;
        nchild = pos - block;
    }

    struct imap_response *r = &p->resp;
    memset(r, 0, sizeof(*r));
    r->kind = p->kind;
    r->tag = p->tag_off != NONE ? p->strs + p->tag_off : NULL;
    r->status = p->status;
    r->code = p->code_off != NONE ? p->strs + p->code_off : NULL;
    r->text = p->text_off != NONE ? p->strs + p->text_off : "";
    const struct imap_arg *top = nchild > 0 ? p->pub + child : NULL;
    if (p->status != IMAP_STATUS_NONE) {
        r->code_args = top;
        r->ncode_args = nchild;
    } else {
        r->args = top;
        r->nargs = nchild;
    }
}

/* Forgets the previous response. Its pointers were valid until this feed
 * call, so this runs at the start of the call after the response. */
static void clear_response(struct imap_parser *p)
{
    if (p->strs_cap > KEEP_BYTES) {
        free(p->strs);
        p->strs = NULL;
        p->strs_cap = 0;
    }
    if (p->work_cap * sizeof(*p->work) > KEEP_BYTES) {
        free(p->work);
        p->work = NULL;
        p->work_cap = 0;
    }
    if (p->items_cap * sizeof(*p->items) > KEEP_BYTES) {
        free(p->items);
        p->items = NULL;
        p->items_cap = 0;
    }
    if (p->pub_cap * sizeof(*p->pub) > KEEP_BYTES) {
        free(p->pub);
        p->pub = NULL;
        p->pub_cap = 0;
    }
    p->strs_len = 0;
    p->work_len = 0;
    p->items_len = 0;
    p->depth = 0;
    p->nargs = 0;
    p->line_bytes = 0;
    p->resp_bytes = 0;
    p->kind = IMAP_RESP_UNTAGGED;
    p->status = IMAP_STATUS_NONE;
    p->tag_off = NONE;
    p->code_off = NONE;
    p->text_off = NONE;
    p->phase = PH_START;
    p->need_clear = false;
}

/* Free text after a status keyword or response code, or after "+": never
 * parsed. It ends up in logs and error messages, so NUL and bare CR are
 * errors and other control bytes become '?' (a server may quote a folder
 * name holding one in "Mailbox doesn't exist: ..."; that must not make the
 * connection unusable). Surrounding spaces are dropped. */
static int parse_text(struct imap_parser *p, const char *pos, const char *ce)
{
    for (const char *q = pos; q < ce; q++) {
        unsigned char c = (unsigned char)*q;
        if (c == '\0' || c == '\r') {
            return fail_char(p, q);
        }
    }
    while (pos < ce && *pos == ' ') {
        pos++;
    }
    while (ce > pos && (ce[-1] == ' ' || ce[-1] == '\t')) {
        ce--;
    }
    size_t len = (size_t)(ce - pos);
    p->text_off = str_add(p, pos, len);
    char *t = p->strs + p->text_off;
    for (size_t i = 0; i < len; i++) {
        if (is_ctl((unsigned char)t[i]) && t[i] != '\t') {
            t[i] = '?';
        }
    }
    return SEG_RESPONSE;
}

/* An atom, which may hold "[...]" sections (BODY[HEADER.FIELDS (DATE)]<0>)
 * with spaces, parentheses and quotes inside: such a section is taken whole
 * up to its matching ']'. Mailbox names sent as atoms may contain a lone '['
 * too, so when no matching ']' is found on the line the '[' is an ordinary
 * character; the line is not searched again after that, which keeps a line
 * full of '[' linear. */
static int parse_atom(struct imap_parser *p, const char **pos_p, const char *ce, bool code)
{
    const char *start = *pos_p, *pos = start;
    int r = count_arg(p, pos);
    if (r < 0) {
        return r;
    }
    for (;;) {
        while (pos < ce && is_atom_char((unsigned char)*pos, code)) {
            pos++;
        }
        if (pos == ce || *pos != '[' || code) {
            break;
        }
        if (!p->no_sections) {
            unsigned nest = 0;
            const char *q = pos;
            for (; q < ce; q++) {
                if (*q == '[') {
                    nest++;
                } else if (*q == ']') {
                    if (--nest == 0) {
                        break;
                    }
                } else if (is_ctl((unsigned char)*q)) {
                    break;
                }
            }
            if (q < ce && *q == ']') {
                pos = q + 1;
                continue;
            }
            p->no_sections = true;
        }
        pos++;
    }
    size_t len = (size_t)(pos - start);
    if (len == 3 && strncasecmp(start, "NIL", 3) == 0) {
        push_arg(p, IMAP_ARG_NIL, 0, 0);
    } else {
        push_arg(p, IMAP_ARG_ATOM, str_add(p, start, len), len);
    }
    *pos_p = pos;
    return 0;
}

/* A quoted string; only \\ and \" are escapes, any other backslash is kept
 * as it is rather than silently dropping bytes of, say, a folder name. */
static int parse_quoted(struct imap_parser *p, const char **pos_p, const char *ce)
{
    const char *pos = *pos_p;
    int r = count_arg(p, pos);
    if (r < 0) {
        return r;
    }
    const char *open = pos++;
    /* The unescaped string is never longer than the rest of the line. */
    size_t off = str_reserve(p, (size_t)(ce - pos));
    char *out = p->strs + off, *o = out;
    for (;;) {
        if (pos == ce) {
            return fail(p, -EPROTO, "unterminated quoted string at offset %zu", offset_of(p, open));
        }
        unsigned char c = (unsigned char)*pos;
        if (c == '"') {
            pos++;
            break;
        }
        /* RFC 3501 allows every CHAR but CR and LF in a quoted string
         * (TEXT-CHAR): a folder name with a control character must not
         * make the whole response, and so the account, unreadable. Users
         * of the string sanitise it for logs and terminals. */
        if (c == '\0' || c == '\r' || c == '\n') {
            return fail_char(p, pos);
        }
        if (c == '\\' && pos + 1 < ce) {
            unsigned char n = (unsigned char)pos[1];
            if (n == '"' || n == '\\') {
                *o++ = (char)n;
                pos += 2;
                continue;
            }
        }
        *o++ = (char)c;
        pos++;
    }
    *o = '\0';
    size_t len = (size_t)(o - out);
    p->strs_len += len + 1;
    push_arg(p, IMAP_ARG_STRING, off, len);
    *pos_p = pos;
    return 0;
}

/* "{n}", "{n+}" or "~{n}" at the end of a segment. The digits are counted
 * before they are converted, and the conversion stops as soon as the value
 * passes max_literal, so no size can overflow. */
static int parse_literal(struct imap_parser *p, const char *pos, const char *ce)
{
    const char *start = pos;
    int r = count_arg(p, pos);
    if (r < 0) {
        return r;
    }
    if (*pos == '~') {
        pos++;
    }
    pos++; /* '{' */
    const char *digits = pos;
    while (pos < ce && *pos >= '0' && *pos <= '9') {
        pos++;
    }
    size_t ndigits = (size_t)(pos - digits);
    if (ndigits == 0) {
        return fail(p, -EPROTO, "invalid literal size at offset %zu", offset_of(p, start));
    }
    if (ndigits > MAX_LITERAL_DIGITS) {
        return fail(p, -EPROTO, "literal size has more than %d digits at offset %zu",
                    MAX_LITERAL_DIGITS, offset_of(p, start));
    }
    uint64_t max = p->lim.max_literal, size = 0;
    bool too_big = false;
    for (const char *d = digits; d < pos; d++) {
        unsigned dv = (unsigned)(*d - '0');
        if (max < dv || size > (max - dv) / 10) {
            too_big = true;
            break;
        }
        size = size * 10 + dv;
    }
    if (too_big) {
        /* Print the digits as sent: the value may not fit in any integer. */
        while (digits < pos - 1 && *digits == '0') {
            digits++;
        }
        return fail(p, -E2BIG,
                    "literal of %.*s bytes exceeds the limit of %" PRIu64 " (max_literal)",
                    (int)(pos - digits), digits, max);
    }
    if (pos < ce && *pos == '+') {
        pos++;
    }
    if (pos == ce || *pos != '}') {
        return fail(p, -EPROTO, "invalid literal size at offset %zu", offset_of(p, start));
    }
    pos++;
    if (pos != ce) {
        return fail(p, -EPROTO, "literal size not followed by CRLF at offset %zu",
                    offset_of(p, start));
    }

    p->lit_remaining = size;
    if (size <= p->lim.inline_literal_max) {
        if (size > p->lim.max_response - p->resp_bytes) {
            return fail(p, -E2BIG, "response size exceeds the limit of %zu bytes (max_response)",
                        p->lim.max_response);
        }
        p->resp_bytes += (size_t)size;
        p->lit_off = str_reserve(p, (size_t)size);
        p->strs_len += (size_t)size + 1;
        p->strs[p->lit_off + size] = '\0';
        push_arg(p, IMAP_ARG_LITERAL, p->lit_off, size);
        p->state = ST_LIT_INLINE;
        return SEG_MORE;
    }

    memset(&p->lit, 0, sizeof(p->lit));
    p->lit.size = size;
    materialize(p, &p->lit.preceding);
    p->lit.partial = &p->resp;
    /* Recorded only now, so that the partial response stops before it. */
    push_arg(p, IMAP_ARG_LITERAL_STREAMED, 0, size);
    p->state = ST_LIT_STREAM;
    return SEG_BEGIN;
}

/* Generic arguments, up to the end of the segment, a literal, or (inside a
 * response code) the closing ']'. */
static int parse_args(struct imap_parser *p, const char **pos_p, const char *ce, bool code)
{
    const char *pos = *pos_p;
    int r = 0;
    for (;;) {
        while (pos < ce && *pos == ' ') {
            pos++;
        }
        if (pos == ce) {
            if (code) {
                return fail(p, -EPROTO, "response code not closed by ']' at offset %zu",
                            offset_of(p, pos));
            }
            if (p->depth > 0) {
                return fail(p, -EPROTO, "missing ')' at offset %zu", offset_of(p, pos));
            }
            *pos_p = pos;
            return SEG_RESPONSE;
        }
        unsigned char c = (unsigned char)*pos;
        switch (c) {
        case '(':
            if (p->depth >= p->lim.max_depth) {
                return fail(p, -E2BIG,
                            "list nesting exceeds the limit of %u (max_depth) at offset %zu",
                            p->lim.max_depth, offset_of(p, pos));
            }
            if ((r = count_arg(p, pos)) < 0) {
                return r;
            }
            if (p->depth >= p->levels_cap) {
                xgrow(&p->levels, &p->levels_cap, (size_t)p->depth + 1, sizeof(*p->levels));
            }
            p->levels[p->depth++] = p->work_len;
            pos++;
            break;
        case ')': {
            if (p->depth == 0) {
                return fail(p, -EPROTO, "unbalanced ')' at offset %zu", offset_of(p, pos));
            }
            size_t start = p->levels[--p->depth];
            size_t n = p->work_len - start;
            if (n > 0) {
                if (p->items_len + n > p->items_cap) {
                    xgrow(&p->items, &p->items_cap, p->items_len + n, sizeof(*p->items));
                }
                memcpy(p->items + p->items_len, p->work + start, n * sizeof(*p->work));
            }
            p->work_len = start;
            push_arg(p, IMAP_ARG_LIST, p->items_len, n);
            p->items_len += n;
            pos++;
            break;
        }
        case '"':
            if ((r = parse_quoted(p, &pos, ce)) < 0) {
                return r;
            }
            break;
        case '{':
            return parse_literal(p, pos, ce);
        case '~':
            if (pos + 1 < ce && pos[1] == '{') {
                return parse_literal(p, pos, ce);
            }
            if ((r = parse_atom(p, &pos, ce, code)) < 0) {
                return r;
            }
            break;
        case ']':
            if (code) {
                if (p->depth > 0) {
                    return fail(p, -EPROTO, "missing ')' in response code at offset %zu",
                                offset_of(p, pos));
                }
                *pos_p = pos + 1;
                return SEG_CODE_DONE;
            }
            if ((r = parse_atom(p, &pos, ce, code)) < 0) {
                return r;
            }
            break;
        default:
            if (is_ctl(c)) {
                return fail_char(p, pos);
            }
            if ((r = parse_atom(p, &pos, ce, code)) < 0) {
                return r;
            }
            break;
        }
    }
}

/* Recognises OK/NO/BAD/BYE/PREAUTH in any case, followed by a space, a '['
 * or the end of the line (some servers send a bare "* OK"). */
static enum imap_status match_status(const char *pos, const char *ce, const char **end_r)
{
    static const struct {
        const char *name;
        enum imap_status status;
    } words[] = {
        {"OK", IMAP_STATUS_OK},   {"NO", IMAP_STATUS_NO},           {"BAD", IMAP_STATUS_BAD},
        {"BYE", IMAP_STATUS_BYE}, {"PREAUTH", IMAP_STATUS_PREAUTH},
    };
    const char *e = pos;
    while (e < ce && ((*e >= 'A' && *e <= 'Z') || (*e >= 'a' && *e <= 'z'))) {
        e++;
    }
    if (e < ce && *e != ' ' && *e != '[') {
        return IMAP_STATUS_NONE;
    }
    size_t len = (size_t)(e - pos);
    for (size_t i = 0; i < ARRAY_SIZE(words); i++) {
        if (strlen(words[i].name) == len && strncasecmp(pos, words[i].name, len) == 0) {
            *end_r = e;
            return words[i].status;
        }
    }
    return IMAP_STATUS_NONE;
}

/* The start of a response: tag or '*' or '+', the status keyword and the
 * response code name. Leaves *pos_p where arguments start when the response
 * goes on with them. */
static int parse_start(struct imap_parser *p, const char **pos_p, const char *ce)
{
    const char *pos = *pos_p;
    if (pos == ce) {
        return fail(p, -EPROTO, "empty response line");
    }
    if (*pos == '+') {
        p->kind = IMAP_RESP_CONTINUATION;
        return parse_text(p, pos + 1, ce);
    }
    if (*pos == '*') {
        p->kind = IMAP_RESP_UNTAGGED;
        pos++;
        if (pos == ce || *pos != ' ') {
            if (pos < ce && is_ctl((unsigned char)*pos)) {
                return fail_char(p, pos);
            }
            return fail(p, -EPROTO, "expected a space after '*' at offset %zu", offset_of(p, pos));
        }
        while (pos < ce && *pos == ' ') {
            pos++;
        }
        if (pos == ce) {
            return fail(p, -EPROTO, "empty untagged response");
        }
        p->status = match_status(pos, ce, &pos);
        if (p->status == IMAP_STATUS_NONE) {
            p->phase = PH_ARGS;
            *pos_p = pos;
            return SEG_MORE;
        }
    } else {
        p->kind = IMAP_RESP_TAGGED;
        const char *tag = pos;
        while (pos < ce && is_tag_char((unsigned char)*pos)) {
            pos++;
        }
        if (pos < ce && is_ctl((unsigned char)*pos)) {
            return fail_char(p, pos);
        }
        if (pos == tag || pos == ce || *pos != ' ') {
            return fail(p, -EPROTO, "invalid tag at offset %zu", offset_of(p, pos));
        }
        p->tag_off = str_add(p, tag, (size_t)(pos - tag));
        while (pos < ce && *pos == ' ') {
            pos++;
        }
        const char *word = pos;
        p->status = match_status(pos, ce, &pos);
        if (p->status != IMAP_STATUS_OK && p->status != IMAP_STATUS_NO &&
            p->status != IMAP_STATUS_BAD) {
            p->status = IMAP_STATUS_NONE;
            return fail(p, -EPROTO, "tagged response without OK, NO or BAD at offset %zu",
                        offset_of(p, word));
        }
    }

    /* A status response: optional [CODE args], then text. */
    while (pos < ce && *pos == ' ') {
        pos++;
    }
    if (pos == ce || *pos != '[') {
        return parse_text(p, pos, ce);
    }
    const char *name = ++pos;
    while (pos < ce && is_atom_char((unsigned char)*pos, true)) {
        pos++;
    }
    if (pos == name) {
        if (pos < ce && is_ctl((unsigned char)*pos)) {
            return fail_char(p, pos);
        }
        return fail(p, -EPROTO, "missing response code name at offset %zu", offset_of(p, pos));
    }
    p->code_off = str_add(p, name, (size_t)(pos - name));
    for (char *u = p->strs + p->code_off; *u != '\0'; u++) {
        if (*u >= 'a' && *u <= 'z') {
            *u = (char)(*u - 'a' + 'A');
        }
    }
    if (pos < ce && *pos == ']') {
        return parse_text(p, pos + 1, ce);
    }
    if (pos < ce && *pos == ' ') {
        p->phase = PH_CODE_ARGS;
        p->code_args_start = pos;
        *pos_p = pos;
        return SEG_MORE;
    }
    if (pos < ce && is_ctl((unsigned char)*pos)) {
        return fail_char(p, pos);
    }
    return fail(p, -EPROTO, "response code not closed by ']' at offset %zu", offset_of(p, pos));
}

/* Some servers put free text in response codes ("[XYZ don't (know]") that
 * is not valid argument syntax. When the code's arguments fail to parse as
 * such, but the code and its closing ']' are on this one line, the text up
 * to the first ']' becomes a single atom instead. Limit and character
 * errors are not excused this way. */
static int code_fallback(struct imap_parser *p, const char *ce)
{
    const char *start = p->code_args_start;
    while (start < ce && *start == ' ') {
        start++;
    }
    const char *close = memchr(start, ']', (size_t)(ce - start));
    if (close == NULL) {
        return -EPROTO;
    }
    for (const char *q = start; q < close; q++) {
        if (is_ctl((unsigned char)*q)) {
            return fail_char(p, q);
        }
    }
    p->work_len = 0;
    p->items_len = 0;
    p->depth = 0;
    p->nargs = 1;
    const char *end = close;
    while (end > start && end[-1] == ' ') {
        end--;
    }
    push_arg(p, IMAP_ARG_ATOM, str_add(p, start, (size_t)(end - start)), (uint64_t)(end - start));
    p->failed = false;
    p->err[0] = '\0';
    return parse_text(p, close + 1, ce);
}

/* Parses one complete segment [s, ce), ce being where CRLF or LF starts. */
static int parse_segment(struct imap_parser *p, const char *s, const char *ce)
{
    const char *pos = s;
    int r = SEG_MORE;
    p->seg = s;
    p->no_sections = false;
    p->code_args_start = NULL;
    if (p->phase == PH_START) {
        r = parse_start(p, &pos, ce);
        if (r != SEG_MORE) {
            return r;
        }
    }
    if (p->phase == PH_ARGS) {
        return parse_args(p, &pos, ce, false);
    }
    r = parse_args(p, &pos, ce, true);
    if (r == SEG_CODE_DONE) {
        return parse_text(p, pos, ce);
    }
    if (r == -EPROTO && p->code_args_start != NULL) {
        char saved[sizeof(p->err)];
        memcpy(saved, p->err, sizeof(saved));
        r = code_fallback(p, ce);
        if (r == -EPROTO) {
            memcpy(p->err, saved, sizeof(saved));
            p->failed = true;
        }
    }
    return r;
}

/* Looks for the end of the current segment in the new bytes, parses it when
 * found, and buffers the bytes otherwise. The LF is searched only within
 * what max_line still allows, so a 10 MB line without one is rejected as
 * soon as it passes the limit, and the same way however it was chunked. */
static int line_step(struct imap_parser *p, const char *data, size_t len, size_t *used_r)
{
    size_t allow = p->lim.max_line - p->line_bytes - p->line_len;
    const char *lf = memchr(data, '\n', len < allow ? len : allow);
    if (lf == NULL) {
        if (len > allow) {
            return fail(p, -E2BIG,
                        "response exceeds the limit of %zu bytes without literals (max_line)",
                        p->lim.max_line);
        }
        if (p->line_len + len > p->line_cap) {
            xgrow(&p->line, &p->line_cap, p->line_len + len, 1);
        }
        memcpy(p->line + p->line_len, data, len);
        p->line_len += len;
        *used_r = len;
        return SEG_MORE;
    }

    size_t n = (size_t)(lf - data) + 1;
    const char *seg = data;
    size_t total = n;
    if (p->line_len > 0) {
        if (p->line_len + n > p->line_cap) {
            xgrow(&p->line, &p->line_cap, p->line_len + n, 1);
        }
        memcpy(p->line + p->line_len, data, n);
        p->line_len += n;
        seg = p->line;
        total = p->line_len;
    }
    *used_r = n;
    if (total > p->lim.max_response - p->resp_bytes) {
        p->line_len = 0;
        return fail(p, -E2BIG, "response size exceeds the limit of %zu bytes (max_response)",
                    p->lim.max_response);
    }
    p->seg_base = p->line_bytes;
    p->line_bytes += total;
    p->resp_bytes += total;
    const char *ce = seg + total - 1;
    if (ce > seg && ce[-1] == '\r') {
        ce--;
    }
    int r = parse_segment(p, seg, ce);
    p->line_len = 0;
    return r;
}

struct imap_parser *imap_parser_new(const struct imap_parser_limits *limits)
{
    struct imap_parser *p = xcalloc(1, sizeof(*p));
    if (limits != NULL) {
        p->lim = *limits;
    }
    if (p->lim.max_line == 0) {
        p->lim.max_line = DEFAULT_MAX_LINE;
    }
    if (p->lim.max_literal == 0) {
        p->lim.max_literal = DEFAULT_MAX_LITERAL;
    }
    if (p->lim.inline_literal_max == 0) {
        p->lim.inline_literal_max = DEFAULT_INLINE_LITERAL_MAX;
    }
    if (p->lim.max_depth == 0) {
        p->lim.max_depth = DEFAULT_MAX_DEPTH;
    }
    if (p->lim.max_args == 0) {
        p->lim.max_args = DEFAULT_MAX_ARGS;
    }
    if (p->lim.max_response == 0) {
        p->lim.max_response = DEFAULT_MAX_RESPONSE;
    }
    imap_parser_reset(p);
    return p;
}

void imap_parser_free(struct imap_parser *p)
{
    if (p == NULL) {
        return;
    }
    free(p->line);
    free(p->strs);
    free(p->work);
    free(p->items);
    free(p->levels);
    free(p->pub);
    free(p);
}

void imap_parser_reset(struct imap_parser *p)
{
    clear_response(p);
    p->state = ST_LINE;
    p->line_len = 0;
    p->last = IMAP_PARSE_NEED_MORE;
    p->failed = false;
    p->err[0] = '\0';
    memset(&p->resp, 0, sizeof(p->resp));
    memset(&p->lit, 0, sizeof(p->lit));
}

static int finish_response(struct imap_parser *p)
{
    materialize(p, NULL);
    p->phase = PH_START;
    p->state = ST_LINE;
    p->need_clear = true;
    return IMAP_PARSE_RESPONSE;
}

static int feed_step(struct imap_parser *p, const char *data, size_t len, size_t *used_r)
{
    size_t used = 0;
    for (;;) {
        switch (p->state) {
        case ST_LIT_END:
            p->lit.offset = p->lit.size;
            p->lit.data = NULL;
            p->lit.len = 0;
            p->state = ST_LINE;
            *used_r = used;
            return IMAP_PARSE_LITERAL_END;
        case ST_LIT_STREAM: {
            if (used == len) {
                *used_r = used;
                return IMAP_PARSE_NEED_MORE;
            }
            size_t n = len - used;
            if (n > p->lit_remaining) {
                n = (size_t)p->lit_remaining;
            }
            p->lit.offset = p->lit.size - p->lit_remaining;
            p->lit.data = data + used;
            p->lit.len = n;
            p->lit_remaining -= n;
            used += n;
            if (p->lit_remaining == 0) {
                p->state = ST_LIT_END;
            }
            *used_r = used;
            return IMAP_PARSE_LITERAL_DATA;
        }
        case ST_LIT_INLINE: {
            size_t n = len - used;
            if (n > p->lit_remaining) {
                n = (size_t)p->lit_remaining;
            }
            if (n > 0) {
                memcpy(p->strs + p->lit_off, data + used, n);
                p->lit_off += n;
            }
            p->lit_remaining -= n;
            used += n;
            if (p->lit_remaining > 0) {
                *used_r = used;
                return IMAP_PARSE_NEED_MORE;
            }
            p->state = ST_LINE;
            break;
        }
        case ST_LINE: {
            if (used == len) {
                *used_r = used;
                return IMAP_PARSE_NEED_MORE;
            }
            size_t n = 0;
            int r = line_step(p, data + used, len - used, &n);
            used += n;
            *used_r = used;
            if (r < 0) {
                return IMAP_PARSE_ERROR;
            }
            if (r == SEG_RESPONSE) {
                return finish_response(p);
            }
            if (r == SEG_BEGIN) {
                return IMAP_PARSE_LITERAL_BEGIN;
            }
            break;
        }
        }
    }
}

int imap_parser_feed(struct imap_parser *p, const char *data, size_t len, size_t *used_r)
{
    *used_r = 0;
    if (p->failed) {
        return IMAP_PARSE_ERROR;
    }
    if (p->need_clear) {
        clear_response(p);
    }
    p->last = feed_step(p, data, len, used_r);
    return p->last;
}

const struct imap_response *imap_parser_response(const struct imap_parser *p)
{
    return p->last == IMAP_PARSE_RESPONSE ? &p->resp : NULL;
}

const struct imap_literal *imap_parser_literal(const struct imap_parser *p)
{
    switch (p->last) {
    case IMAP_PARSE_LITERAL_BEGIN:
    case IMAP_PARSE_LITERAL_DATA:
    case IMAP_PARSE_LITERAL_END:
        return &p->lit;
    default:
        return NULL;
    }
}

const char *imap_parser_error(const struct imap_parser *p)
{
    return p->failed ? p->err : NULL;
}

/* After an error there is no response in progress any more, only a dead
 * connection: false, whatever was buffered when the error was found. */
bool imap_parser_busy(const struct imap_parser *p)
{
    return !p->failed && (p->line_len > 0 || p->phase != PH_START || p->state != ST_LINE);
}

bool imap_arg_is_atom(const struct imap_arg *a, const char *upper)
{
    return a != NULL && a->type == IMAP_ARG_ATOM && strcasecmp(a->u.str.s, upper) == 0;
}

const char *imap_arg_str(const struct imap_arg *a)
{
    if (a == NULL) {
        return NULL;
    }
    switch (a->type) {
    case IMAP_ARG_ATOM:
    case IMAP_ARG_STRING:
    case IMAP_ARG_LITERAL:
        return a->u.str.s;
    default:
        return NULL;
    }
}

bool imap_arg_number(const struct imap_arg *a, uint64_t *n_r)
{
    if (a == NULL || a->type != IMAP_ARG_ATOM || a->u.str.len == 0) {
        return false;
    }
    uint64_t n = 0;
    for (size_t i = 0; i < a->u.str.len; i++) {
        char c = a->u.str.s[i];
        if (c < '0' || c > '9') {
            return false;
        }
        unsigned d = (unsigned)(c - '0');
        if (n > (UINT64_MAX - d) / 10) {
            return false;
        }
        n = n * 10 + d;
    }
    *n_r = n;
    return true;
}
