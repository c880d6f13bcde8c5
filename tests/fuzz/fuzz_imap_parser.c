/* LINK: ms_sync ms_core */
/* RUNS: 200000 (inputs fuzz/run_imap_parser tries: about 15 s on two cores) */
/* Fuzz target for the IMAP response parser (and, on the strings it yields,
 * modified UTF-7).
 *
 * The first input byte is a chunk size; the rest is server output. It is
 * parsed twice, once whole and once cut into chunks of that size, with
 * small limits so that every limit is reachable. Both runs must report the
 * same transcript: every field of every response, every streamed literal's
 * bytes (as a hash), and the error text. Along the way the feed contract is
 * checked (used <= len, NEED_MORE consumes everything, DATA points into the
 * fed buffer, offsets add up). Any violation aborts. */
#include "core/util.h"
#include "sync/imap_parser.h"
#include "sync/utf7.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    }
    return h;
}

/* A string the parser produced must round-trip through modified UTF-7
 * exactly whenever it converts at all: both directions are strict. */
static void check_utf7(const char *s, size_t len)
{
    if (strlen(s) != len) {
        return;
    }
    char *a = NULL, *b = NULL;
    if (utf7_to_utf8(s, &a) == 0) {
        CHECK(utf8_to_utf7(a, &b) == 0);
        CHECK(strcmp(b, s) == 0);
        free(b);
        b = NULL;
    } else {
        CHECK(a == NULL);
    }
    free(a);
    a = NULL;
    if (utf8_to_utf7(s, &a) == 0) {
        CHECK(utf7_to_utf8(a, &b) == 0);
        CHECK(strcmp(b, s) == 0);
        free(b);
    } else {
        CHECK(a == NULL);
    }
    free(a);
}

static void dump_arg(struct sbuf *sb, const struct imap_arg *a, unsigned depth)
{
    CHECK(depth < 64);
    switch (a->type) {
    case IMAP_ARG_ATOM:
    case IMAP_ARG_STRING:
    case IMAP_ARG_LITERAL:
        CHECK(a->u.str.s != NULL);
        CHECK(a->u.str.s[a->u.str.len] == '\0');
        if (a->type != IMAP_ARG_LITERAL) {
            CHECK(strlen(a->u.str.s) == a->u.str.len);
        }
        if (a->type == IMAP_ARG_ATOM) {
            CHECK(a->u.str.len > 0);
        }
        CHECK(imap_arg_str(a) == a->u.str.s);
        sbuf_addf(sb, "%c%zu:", "ASL"[a->type], a -> u.str.len);
        sbuf_add(sb, a->u.str.s, a->u.str.len);
        check_utf7(a->u.str.s, a->u.str.len);
        {
            uint64_t n;
            if (imap_arg_number(a, &n)) {
                CHECK(a->type == IMAP_ARG_ATOM);
                sbuf_addf(sb, "=%llu", (unsigned long long)n);
            }
        }
        break;
    case IMAP_ARG_LITERAL_STREAMED:
        sbuf_addf(sb, "{%llu}", (unsigned long long)a->u.literal_size);
        break;
    case IMAP_ARG_NIL:
        CHECK(imap_arg_str(a) == NULL);
        sbuf_adds(sb, "NIL");
        break;
    case IMAP_ARG_LIST:
        CHECK(a->u.list.count == 0 || a->u.list.items != NULL);
        sbuf_addc(sb, '(');
        for (size_t i = 0; i < a->u.list.count; i++) {
            sbuf_addc(sb, ' ');
            dump_arg(sb, &a->u.list.items[i], depth + 1);
        }
        sbuf_addc(sb, ')');
        break;
    default:
        CHECK(!"bad arg type");
    }
}

static void dump_response(struct sbuf *sb, const struct imap_response *r)
{
    CHECK(r != NULL);
    CHECK(r->text != NULL);
    CHECK((r->kind == IMAP_RESP_TAGGED) == (r->tag != NULL));
    sbuf_addf(sb, "k%d s%d ", (int)r->kind, (int)r->status);
    if (r->tag != NULL) {
        CHECK(r->tag[0] != '\0');
        sbuf_addf(sb, "tag=%s ", r->tag);
    }
    if (r->status == IMAP_STATUS_NONE) {
        CHECK(r->code == NULL && r->ncode_args == 0);
    } else {
        CHECK(r->nargs == 0);
    }
    if (r->kind == IMAP_RESP_CONTINUATION) {
        CHECK(r->status == IMAP_STATUS_NONE && r->nargs == 0);
    }
    if (r->code != NULL) {
        CHECK(r->code[0] != '\0');
        for (const char *c = r->code; *c != '\0'; c++) {
            CHECK(!(*c >= 'a' && *c <= 'z'));
        }
        sbuf_addf(sb, "[%s", r->code);
        for (size_t i = 0; i < r->ncode_args; i++) {
            sbuf_addc(sb, ' ');
            dump_arg(sb, &r->code_args[i], 0);
        }
        sbuf_adds(sb, "] ");
    }
    sbuf_addf(sb, "text=%s |", r->text);
    for (size_t i = 0; i < r->nargs; i++) {
        sbuf_addc(sb, ' ');
        dump_arg(sb, &r->args[i], 0);
    }
}

/* Feeds in[0..len) in chunks of `chunk` bytes (0 = all at once) and writes
 * the transcript (which may hold NUL bytes from literals) to log. */
static void run(const char *in, size_t len, size_t chunk, struct sbuf *log_r)
{
    static const struct imap_parser_limits lim = {
        .max_line = 200,
        .max_literal = 5000,
        .inline_literal_max = 16,
        .max_depth = 6,
        .max_args = 40,
        .max_response = 600,
    };
    struct imap_parser *p = imap_parser_new(&lim);
    struct sbuf log = {0};
    sbuf_add(&log, "", 0);
    uint64_t hash = 0, got = 0;
    bool dead = false, in_literal = false;
    size_t off = 0;
    while (off < len && !dead) {
        size_t n = chunk == 0 || chunk > len - off ? len - off : chunk;
        const char *d = in + off;
        size_t left = n;
        for (;;) {
            size_t used = (size_t)-1;
            int r = imap_parser_feed(p, d, left, &used);
            CHECK(used <= left);
            const char *at = d;
            d += used;
            left -= used;
            if (r == IMAP_PARSE_NEED_MORE) {
                CHECK(left == 0);
                break;
            }
            if (r == IMAP_PARSE_ERROR) {
                CHECK(imap_parser_error(p) != NULL);
                sbuf_addf(&log, "X %s\n", imap_parser_error(p));
                CHECK(imap_parser_feed(p, "* OK\r\n", 6, &used) == IMAP_PARSE_ERROR);
                CHECK(used == 0);
                CHECK(!imap_parser_busy(p));
                dead = true;
                break;
            }
            CHECK(imap_parser_error(p) == NULL);
            if (r == IMAP_PARSE_RESPONSE) {
                CHECK(!in_literal);
                CHECK(imap_parser_literal(p) == NULL);
                CHECK(!imap_parser_busy(p));
                sbuf_adds(&log, "R ");
                dump_response(&log, imap_parser_response(p));
                sbuf_addc(&log, '\n');
                continue;
            }
            CHECK(imap_parser_response(p) == NULL);
            const struct imap_literal *l = imap_parser_literal(p);
            CHECK(l != NULL);
            CHECK(imap_parser_busy(p));
            if (r == IMAP_PARSE_LITERAL_BEGIN) {
                CHECK(!in_literal);
                CHECK(l->size > lim.inline_literal_max && l->size <= lim.max_literal);
                CHECK(l->offset == 0);
                sbuf_addf(&log, "B %llu ", (unsigned long long)l->size);
                dump_response(&log, l->partial);
                sbuf_adds(&log, " prev=");
                if (l->preceding != NULL) {
                    dump_arg(&log, l->preceding, 0);
                }
                sbuf_addc(&log, '\n');
                in_literal = true;
                hash = 0xcbf29ce484222325ULL;
                got = 0;
            } else if (r == IMAP_PARSE_LITERAL_DATA) {
                CHECK(in_literal);
                CHECK(l->data == at && l->len == used && l->len > 0);
                CHECK(l->offset == got);
                hash = fnv(hash, l->data, l->len);
                got += l->len;
                CHECK(got <= l->size);
            } else {
                CHECK(r == IMAP_PARSE_LITERAL_END);
                CHECK(in_literal && used == 0 && got == l->size);
                sbuf_addf(&log, "E %llu %016llx\n", (unsigned long long)l->size,
                          (unsigned long long)hash);
                in_literal = false;
            }
        }
        off += n;
    }
    sbuf_addf(&log, "busy=%d\n", (int)imap_parser_busy(p));
    imap_parser_free(p);
    *log_r = log;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    size_t chunk = data[0] == 0 ? 1 : data[0];
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    struct sbuf whole, split;
    run(in, len, 0, &whole);
    run(in, len, chunk, &split);
    if (whole.len != split.len || memcmp(whole.buf, split.buf, whole.len) != 0) {
        fprintf(stderr, "transcripts differ (chunk %zu)\n--- whole:\n%s--- split:\n%s", chunk,
                whole.buf, split.buf);
        abort();
    }
    sbuf_free(&whole);
    sbuf_free(&split);
    return 0;
}
