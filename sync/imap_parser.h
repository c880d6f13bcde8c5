/* Incremental IMAP response parser (RFC 3501 / 9051 response grammar).
 *
 * Pure: no I/O, no event loop. The owner feeds it whatever bytes arrived, in
 * chunks of any size (down to one byte), and pulls results:
 *
 *   size_t used;
 *   for (;;) {
 *       int r = imap_parser_feed(p, data, len, &used);
 *       data += used; len -= used;
 *       if (r == IMAP_PARSE_NEED_MORE) break;        // all input consumed
 *       if (r == IMAP_PARSE_RESPONSE) handle(imap_parser_response(p));
 *       else if (r == IMAP_PARSE_LITERAL_BEGIN) open_sink(imap_parser_literal(p));
 *       else if (r == IMAP_PARSE_LITERAL_DATA) write_sink(imap_parser_literal(p)->data, ...->len);
 *       else if (r == IMAP_PARSE_LITERAL_END) close_sink();
 *       else fail(imap_parser_error(p));              // r < 0, connection is dead
 *   }
 *
 * The owner may stop calling feed at any point (backpressure) and resume
 * later with the unconsumed bytes.
 *
 * Literals no larger than limits.inline_literal_max are collected into the
 * response as strings. Larger ones (message bodies) are streamed: BEGIN
 * (with the partial response parsed so far, so the owner can see e.g. the
 * sequence number and the FETCH item name), DATA chunks pointing into the
 * caller's input buffer (zero copy), END; in the finished response such an
 * argument has type IMAP_ARG_LITERAL_STREAMED and carries only its size.
 *
 * Status responses (OK/NO/BAD/BYE/PREAUTH, tagged or untagged) are parsed
 * into code and text: "* OK [UIDNEXT 5] Predicted" gives code "UIDNEXT",
 * code_args [5], text "Predicted". The text after a status keyword is free
 * form and never parsed as arguments.
 *
 * Ownership: a response and every pointer in it stay valid until the next
 * call to imap_parser_feed or imap_parser_free. Strings are NUL-terminated
 * (a string may also contain NUL bytes when it came from a literal; use len).
 *
 * Errors (negative returns) are final for the connection: the text from
 * imap_parser_error says what was wrong and where, e.g. "literal of 2147483648
 * bytes exceeds the limit of 104857600". */
#ifndef MAILSYNC_IMAP_PARSER_H
#define MAILSYNC_IMAP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum imap_parse_result {
    IMAP_PARSE_NEED_MORE = 0,
    IMAP_PARSE_RESPONSE = 1,
    IMAP_PARSE_LITERAL_BEGIN = 2,
    IMAP_PARSE_LITERAL_DATA = 3,
    IMAP_PARSE_LITERAL_END = 4,
    IMAP_PARSE_ERROR = -1,
};

struct imap_parser_limits {
    size_t max_line;           /* bytes of one response excluding literals; default 64 KiB */
    uint64_t max_literal;      /* largest literal accepted; default 1 GiB */
    size_t inline_literal_max; /* literals up to this are kept inline; default 64 KiB */
    unsigned max_depth;        /* list nesting; default 32 */
    size_t max_args;           /* total arguments in one response; default 1,000,000 */
    size_t max_response; /* total inline bytes of one response (line + inline literals); default 16
                            MiB */
};

enum imap_arg_type {
    IMAP_ARG_ATOM = 0, /* includes numbers, flags like \Seen, BODY[HEADER.FIELDS (..)] kept as one
                          atom up to ']' */
    IMAP_ARG_STRING,   /* quoted string (unescaped) */
    IMAP_ARG_LITERAL,  /* inline literal */
    IMAP_ARG_LITERAL_STREAMED, /* literal delivered through LITERAL_* results */
    IMAP_ARG_NIL,
    IMAP_ARG_LIST,
};

struct imap_arg {
    enum imap_arg_type type;
    union {
        struct {
            const char *s; /* NUL-terminated */
            size_t len;
        } str; /* ATOM, STRING, LITERAL */
        struct {
            const struct imap_arg *items;
            size_t count;
        } list;
        uint64_t literal_size; /* LITERAL_STREAMED */
    } u;
};

enum imap_resp_kind {
    IMAP_RESP_UNTAGGED = 0, /* "* ..." */
    IMAP_RESP_TAGGED,       /* "A1 OK ..." */
    IMAP_RESP_CONTINUATION, /* "+ ..." */
};

enum imap_status {
    IMAP_STATUS_NONE = 0, /* not a status response (e.g. "* 3 EXISTS", "* LIST ...") */
    IMAP_STATUS_OK,
    IMAP_STATUS_NO,
    IMAP_STATUS_BAD,
    IMAP_STATUS_BYE,
    IMAP_STATUS_PREAUTH,
};

struct imap_response {
    enum imap_resp_kind kind;
    const char *tag; /* TAGGED only */
    enum imap_status status;
    /* Status responses: optional [code args] and the text. */
    const char *code; /* NULL when none; upper-cased */
    const struct imap_arg *code_args;
    size_t ncode_args;
    const char *text; /* "" when none; for CONTINUATION the rest of the line */
    /* Non-status responses: every argument after "*", e.g. for
     * "* 12 FETCH (UID 5 FLAGS (\Seen))": ATOM "12", ATOM "FETCH", LIST. */
    const struct imap_arg *args;
    size_t nargs;
};

/* During LITERAL_BEGIN / DATA / END. */
struct imap_literal {
    uint64_t size;                       /* announced size */
    uint64_t offset;                     /* bytes delivered before this chunk */
    const char *data;                    /* DATA: chunk, points into the fed buffer */
    size_t len;                          /* DATA: chunk length */
    const struct imap_response *partial; /* BEGIN: the response parsed so far */
    /* BEGIN: the argument just before the literal inside the innermost open
     * list (e.g. ATOM "BODY[]"), or NULL. */
    const struct imap_arg *preceding;
};

struct imap_parser;

/* limits may be NULL for defaults; zero fields also take defaults. */
struct imap_parser *imap_parser_new(const struct imap_parser_limits *limits);
void imap_parser_free(struct imap_parser *p);
/* Forgets any partial response (e.g. after STARTTLS or COMPRESS). */
void imap_parser_reset(struct imap_parser *p);

int imap_parser_feed(struct imap_parser *p, const char *data, size_t len, size_t *used_r);
const struct imap_response *imap_parser_response(const struct imap_parser *p);
const struct imap_literal *imap_parser_literal(const struct imap_parser *p);
const char *imap_parser_error(const struct imap_parser *p);
/* True while in the middle of a response (bytes buffered or a literal in
 * progress): used to detect plaintext injected after STARTTLS's OK. */
bool imap_parser_busy(const struct imap_parser *p);

/* Helpers for consumers. */
bool imap_arg_is_atom(const struct imap_arg *a, const char *upper); /* case-insensitive */
/* ATOM/STRING/LITERAL contents; NULL for others. NIL gives NULL. */
const char *imap_arg_str(const struct imap_arg *a);
/* Parses an unsigned decimal number (nz-number/number/number64); false if not one. */
bool imap_arg_number(const struct imap_arg *a, uint64_t *n_r);

#endif
