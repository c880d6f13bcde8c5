/* Incremental POP3 reply parser (RFC 1939, 2449, 3206, 5034).
 *
 * Pure: no I/O, no event loop. The owner feeds it whatever bytes arrived, in
 * chunks of any size (down to one byte), and pulls results:
 *
 *   pop3_parser_expect(p, POP3_EXPECT_DATA);       // before RETR's reply
 *   size_t used;
 *   for (;;) {
 *       int r = pop3_parser_feed(p, data, len, &used);
 *       data += used; len -= used;
 *       if (r == POP3_PARSE_NEED_MORE) break;       // all input consumed
 *       if (r == POP3_PARSE_STATUS) status(pop3_parser_reply(p));
 *       else if (r == POP3_PARSE_LINE || r == POP3_PARSE_DATA) chunk(pop3_parser_data(p, &n), n);
 *       else if (r == POP3_PARSE_END) done();        // "." terminator seen
 *       else if (r == POP3_PARSE_CONTINUATION) sasl(pop3_parser_reply(p)->text);
 *       else fail(pop3_parser_error(p));             // r < 0, connection is dead
 *   }
 *
 * POP3 replies do not say whether a multi-line body follows: "+OK" to LIST
 * is followed by lines, "+OK" to LIST 3 is not. So before every reply the
 * owner tells the parser what the command it sent expects, with
 * pop3_parser_expect. With PIPELINING the owner keeps its own queue of sent
 * commands and calls pop3_parser_expect for the next one as soon as a reply
 * completes (after a STATUS that ends the reply, or after END); the parser
 * stops at each reply boundary (feed returns and leaves the rest of the input
 * unconsumed) so that this is always possible. Bytes that arrive while no
 * reply is expected are a protocol error.
 *
 * A reply is complete after:
 *   - STATUS for POP3_EXPECT_SINGLE, or for any "-ERR";
 *   - CONTINUATION (the owner sends the SASL response and expects again);
 *   - END for a multi-line reply whose status was "+OK".
 *
 * Multi-line bodies: the "." terminator line ends them and a leading "." on
 * any other line is removed (dot-unstuffing). POP3_EXPECT_LINES returns one
 * line at a time without its line ending (CAPA, UIDL, LIST: short lines,
 * bounded by max_line). POP3_EXPECT_DATA streams the body (RETR, TOP) in
 * chunks of at most chunk_size bytes, never holding a whole message.
 *
 * Line endings: DATA chunks have LF line endings (CRLF converted to LF,
 * DESIGN.md invariant 5), so they go to md_writer with crlf_to_lf = false.
 * A bare LF is accepted as a line end (some servers send it); a bare CR
 * inside a line is kept as it is.
 *
 * Ownership: the reply and data pointers stay valid until the next call to
 * pop3_parser_feed, pop3_parser_reset or pop3_parser_free.
 *
 * Errors (negative returns) are final for the connection: the text from
 * pop3_parser_error says what was wrong, e.g. "reply line longer than 8192
 * bytes". */
#ifndef MAILSYNC_POP3_PARSER_H
#define MAILSYNC_POP3_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum pop3_parse_result {
    POP3_PARSE_NEED_MORE = 0,
    POP3_PARSE_STATUS = 1,       /* the "+OK" / "-ERR" line of a reply */
    POP3_PARSE_CONTINUATION = 2, /* "+ base64" (POP3_EXPECT_SASL only) */
    POP3_PARSE_LINE = 3,         /* one line of a POP3_EXPECT_LINES body */
    POP3_PARSE_DATA = 4,         /* a chunk of a POP3_EXPECT_DATA body */
    POP3_PARSE_END = 5,          /* the "." terminator of a multi-line body */
    POP3_PARSE_ERROR = -1,
};

enum pop3_expect {
    POP3_EXPECT_NOTHING = 0, /* no reply is due: any byte is an error */
    POP3_EXPECT_SINGLE,      /* one status line (USER, PASS, STAT, DELE, QUIT, ...) */
    POP3_EXPECT_SASL,        /* a status line or a "+ " continuation (AUTH) */
    POP3_EXPECT_LINES,       /* "+OK" then lines up to "." (CAPA, UIDL, LIST) */
    POP3_EXPECT_DATA,        /* "+OK" then a streamed body up to "." (RETR, TOP) */
};

struct pop3_parser_limits {
    size_t max_line;      /* status and listing lines; default 8 KiB */
    size_t max_data_line; /* one line inside a DATA body; default 1 MiB */
    uint64_t max_body;    /* bytes of one DATA body after unstuffing; default 1 GiB */
    size_t chunk_size;    /* largest DATA chunk returned; default 64 KiB */
};

struct pop3_reply {
    bool ok;           /* "+OK" (false for "-ERR" and for a continuation) */
    bool continuation; /* "+ ..." SASL challenge */
    /* RFC 2449 response code in brackets after the status, upper-cased, e.g.
     * "IN-USE", "SYS/TEMP", "AUTH"; NULL when none. */
    const char *code;
    /* The rest of the line after the status and the code, leading spaces
     * removed; for a continuation the base64 challenge ("" when none). */
    const char *text;
    const char *line; /* the whole line without its line ending */
};

struct pop3_parser;

/* limits may be NULL for defaults; zero fields also take defaults. */
struct pop3_parser *pop3_parser_new(const struct pop3_parser_limits *limits);
void pop3_parser_free(struct pop3_parser *p);
/* Forgets any partial reply and the expectation (e.g. after STLS). */
void pop3_parser_reset(struct pop3_parser *p);

/* Sets what the next reply is. Only allowed between replies (not busy). */
void pop3_parser_expect(struct pop3_parser *p, enum pop3_expect e);
/* What the parser waits for now (POP3_EXPECT_NOTHING between replies
 * before the owner calls pop3_parser_expect again). */
enum pop3_expect pop3_parser_expecting(const struct pop3_parser *p);

int pop3_parser_feed(struct pop3_parser *p, const char *data, size_t len, size_t *used_r);
/* After STATUS / CONTINUATION. */
const struct pop3_reply *pop3_parser_reply(const struct pop3_parser *p);
/* After LINE (NUL-terminated, no line ending) or DATA (LF line endings). */
const char *pop3_parser_data(const struct pop3_parser *p, size_t *len_r);
const char *pop3_parser_error(const struct pop3_parser *p);
/* True while in the middle of a reply (bytes of it buffered or a body in
 * progress). */
bool pop3_parser_busy(const struct pop3_parser *p);

#endif
