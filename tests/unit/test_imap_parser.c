/* LINK: ms_sync ms_core */
/* Tests for the incremental IMAP response parser: a table of real server
 * responses, each fed whole, one byte at a time and in random chunks with
 * identical results; streamed literals; pipelining; and hostile input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "sync/imap_parser.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- A transcript of everything the parser reports ------------------- */

static void dump_bytes(struct sbuf *sb, const char *s, size_t len, bool quoted)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            sbuf_addf(sb, "\\x%02x", c);
        } else if (quoted && (c == '"' || c == '\\')) {
            sbuf_addc(sb, '\\');
            sbuf_addc(sb, (char)c);
        } else {
            sbuf_addc(sb, (char)c);
        }
    }
}

/* Atoms are written bare (in <> when they hold a space, as BODY[...] may),
 * strings quoted, literals as {n}"...", streamed literals as {n}*. */
static void dump_arg(struct sbuf *sb, const struct imap_arg *a)
{
    switch (a->type) {
    case IMAP_ARG_ATOM: {
        bool space = memchr(a->u.str.s, ' ', a->u.str.len) != NULL;
        assert_int_equal(strlen(a->u.str.s), a->u.str.len);
        sbuf_adds(sb, space ? "<" : "");
        dump_bytes(sb, a->u.str.s, a->u.str.len, false);
        sbuf_adds(sb, space ? ">" : "");
        break;
    }
    case IMAP_ARG_STRING:
        assert_int_equal(strlen(a->u.str.s), a->u.str.len);
        sbuf_addc(sb, '"');
        dump_bytes(sb, a->u.str.s, a->u.str.len, true);
        sbuf_addc(sb, '"');
        break;
    case IMAP_ARG_LITERAL:
        assert_int_equal(a->u.str.s[a->u.str.len], '\0');
        sbuf_addf(sb, "{%zu}\"", a->u.str.len);
        dump_bytes(sb, a->u.str.s, a->u.str.len, true);
        sbuf_addc(sb, '"');
        break;
    case IMAP_ARG_LITERAL_STREAMED:
        sbuf_addf(sb, "{%llu}*", (unsigned long long)a->u.literal_size);
        break;
    case IMAP_ARG_NIL:
        assert_null(imap_arg_str(a));
        sbuf_adds(sb, "NIL");
        break;
    case IMAP_ARG_LIST:
        sbuf_addc(sb, '(');
        for (size_t i = 0; i < a->u.list.count; i++) {
            if (i > 0) {
                sbuf_addc(sb, ' ');
            }
            dump_arg(sb, &a->u.list.items[i]);
        }
        sbuf_addc(sb, ')');
        break;
    }
}

/* Writes every field of a response, and checks the fields that must be
 * empty for its kind. */
static void dump_response(struct sbuf *sb, const struct imap_response *r)
{
    switch (r->kind) {
    case IMAP_RESP_UNTAGGED:
        assert_null(r->tag);
        sbuf_addc(sb, '*');
        break;
    case IMAP_RESP_TAGGED:
        assert_non_null(r->tag);
        sbuf_adds(sb, r->tag);
        break;
    case IMAP_RESP_CONTINUATION:
        assert_null(r->tag);
        assert_int_equal(r->status, IMAP_STATUS_NONE);
        sbuf_adds(sb, "+");
        break;
    }
    assert_non_null(r->text);
    static const char *const names[] = {"", "OK", "NO", "BAD", "BYE", "PREAUTH"};
    if (r->status != IMAP_STATUS_NONE) {
        assert_int_equal(r->nargs, 0);
        assert_null(r->args);
        sbuf_addf(sb, " %s", names[r->status]);
        if (r->code != NULL) {
            sbuf_addf(sb, " [%s", r->code);
            for (size_t i = 0; i < r->ncode_args; i++) {
                sbuf_addc(sb, ' ');
                dump_arg(sb, &r->code_args[i]);
            }
            sbuf_addc(sb, ']');
        } else {
            assert_int_equal(r->ncode_args, 0);
        }
        sbuf_addf(sb, " \"%s\"", r->text);
    } else if (r->kind == IMAP_RESP_CONTINUATION) {
        assert_int_equal(r->nargs, 0);
        assert_null(r->code);
        sbuf_addf(sb, " \"%s\"", r->text);
    } else {
        assert_null(r->code);
        assert_int_equal(r->ncode_args, 0);
        assert_string_equal(r->text, "");
        for (size_t i = 0; i < r->nargs; i++) {
            sbuf_addc(sb, ' ');
            dump_arg(sb, &r->args[i]);
        }
    }
}

enum feed_mode {
    FEED_WHOLE,
    FEED_BYTES,
    FEED_RANDOM,
    FEED_FIXED, /* chunks of `chunk` bytes */
};

struct drive {
    struct sbuf log; /* one line per result */
    struct sbuf lit; /* bytes of streamed literals, when keep_lit */
    bool keep_lit;
    bool busy;         /* imap_parser_busy at the end of input */
    const char *error; /* copy of the error text, or NULL */
    size_t consumed;   /* bytes accepted before the result that ended it */
    unsigned responses;
};

static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    }
    return h;
}

static unsigned rnd_next(unsigned *state)
{
    *state = *state * 1103515245u + 12345u;
    return (*state >> 16) & 0x7fff;
}

/* Drives the feed loop the way imap_parser.h describes, over input cut into
 * chunks by mode, and records a transcript. Streamed literal data is
 * summarised at END so that transcripts compare across chunkings. */
static void drive(struct drive *d, const char *in, size_t len, const struct imap_parser_limits *lim,
                  enum feed_mode mode, unsigned seed, size_t chunk_size)
{
    struct imap_parser *p = imap_parser_new(lim);
    size_t off = 0;
    uint64_t hash = 0, got = 0;
    bool dead = false;
    unsigned state = seed;
    while (off < len && !dead) {
        size_t chunk = len;
        if (mode == FEED_BYTES) {
            chunk = 1;
        } else if (mode == FEED_FIXED) {
            chunk = chunk_size;
        } else if (mode == FEED_RANDOM) {
            unsigned r = rnd_next(&state);
            chunk = (r & 3) == 0 ? 1 + rnd_next(&state) % 3000 : 1 + rnd_next(&state) % 13;
        }
        if (chunk > len - off) {
            chunk = len - off;
        }
        const char *data = in + off;
        size_t left = chunk;
        for (;;) {
            size_t used = 12345;
            int r = imap_parser_feed(p, data, left, &used);
            assert_true(used <= left);
            const char *at = data;
            data += used;
            left -= used;
            d->consumed = off + (size_t)(data - (in + off));
            if (r == IMAP_PARSE_NEED_MORE) {
                assert_int_equal(left, 0);
                break;
            }
            if (r == IMAP_PARSE_RESPONSE) {
                assert_null(imap_parser_literal(p));
                sbuf_adds(&d->log, "R ");
                dump_response(&d->log, imap_parser_response(p));
                sbuf_addc(&d->log, '\n');
                d->responses++;
                continue;
            }
            if (r < 0) {
                assert_int_equal(r, IMAP_PARSE_ERROR);
                const char *e = imap_parser_error(p);
                assert_non_null(e);
                sbuf_addf(&d->log, "X %s\n", e);
                d->error = xstrdup(e);
                /* Errors are final. */
                assert_int_equal(imap_parser_feed(p, "* OK\r\n", 6, &used), IMAP_PARSE_ERROR);
                assert_int_equal(used, 0);
                dead = true;
                break;
            }
            assert_null(imap_parser_response(p));
            const struct imap_literal *l = imap_parser_literal(p);
            assert_non_null(l);
            if (r == IMAP_PARSE_LITERAL_BEGIN) {
                assert_int_equal(l->offset, 0);
                assert_non_null(l->partial);
                sbuf_addf(&d->log, "B {%llu} ", (unsigned long long)l->size);
                dump_response(&d->log, l->partial);
                sbuf_adds(&d->log, " prev=");
                if (l->preceding != NULL) {
                    dump_arg(&d->log, l->preceding);
                } else {
                    sbuf_adds(&d->log, "-");
                }
                sbuf_addc(&d->log, '\n');
                hash = 0xcbf29ce484222325ULL;
                got = 0;
            } else if (r == IMAP_PARSE_LITERAL_DATA) {
                /* Zero copy: the chunk is the bytes just consumed. */
                assert_ptr_equal(l->data, at);
                assert_int_equal(l->len, used);
                assert_true(l->len > 0);
                assert_int_equal(l->offset, got);
                hash = fnv(hash, l->data, l->len);
                got += l->len;
                assert_true(got <= l->size);
                if (d->keep_lit) {
                    sbuf_add(&d->lit, l->data, l->len);
                }
            } else {
                assert_int_equal(r, IMAP_PARSE_LITERAL_END);
                assert_int_equal(used, 0);
                assert_int_equal(got, l->size);
                sbuf_addf(&d->log, "E {%llu} %016llx\n", (unsigned long long)l->size,
                          (unsigned long long)hash);
            }
        }
        off += chunk;
    }
    d->busy = imap_parser_busy(p);
    imap_parser_free(p);
}

static void drive_free(struct drive *d)
{
    sbuf_free(&d->log);
    sbuf_free(&d->lit);
    free((char *)d->error);
}

/* Feeds input whole, byte by byte and in random chunks (three seeds) and
 * checks that every way gives the same transcript; returns it. */
static char *drive_all(const char *in, size_t len, const struct imap_parser_limits *lim,
                       bool *busy_r)
{
    struct drive whole = {0};
    drive(&whole, in, len, lim, FEED_WHOLE, 0, 0);
    struct drive bytes = {0};
    drive(&bytes, in, len, lim, FEED_BYTES, 0, 0);
    assert_string_equal(whole.log.buf ? whole.log.buf : "", bytes.log.buf ? bytes.log.buf : "");
    assert_int_equal(whole.busy, bytes.busy);
    for (unsigned seed = 1; seed <= 3; seed++) {
        struct drive rnd = {0};
        drive(&rnd, in, len, lim, FEED_RANDOM, seed * 7919, 0);
        assert_string_equal(whole.log.buf ? whole.log.buf : "", rnd.log.buf ? rnd.log.buf : "");
        assert_int_equal(whole.busy, rnd.busy);
        drive_free(&rnd);
    }
    if (busy_r != NULL) {
        *busy_r = whole.busy;
    }
    drive_free(&bytes);
    char *log = sbuf_detach(&whole.log);
    drive_free(&whole);
    return log;
}

/* ---- The table of real responses ------------------------------------- */

struct sample {
    const char *in;
    size_t len;
    const char *expect;
};

#define S(in, expect)                                                                              \
    {                                                                                              \
        in, sizeof(in) - 1, expect                                                                 \
    }

static const struct sample samples[] = {
    /* Greetings: Dovecot, Gmail, Exchange (text ending in brackets that are
     * not a code), Cyrus. */
    S("* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
      "AUTH=PLAIN] Dovecot (Debian) ready.\r\n",
      "R * OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
      "AUTH=PLAIN] \"Dovecot (Debian) ready.\"\n"),
    S("* OK Gimap ready for requests from 192.0.2.10 x12mb34567890qkb\r\n",
      "R * OK \"Gimap ready for requests from 192.0.2.10 x12mb34567890qkb\"\n"),
    S("* OK The Microsoft Exchange IMAP4 service is ready. "
      "[TQBOADIAUABSADAAMQBDAEEAMAAwADQAMgAuAG4AYQBtAHAAcgBkADAAMQAuAHAAcgBvAGQA]\r\n",
      "R * OK \"The Microsoft Exchange IMAP4 service is ready. "
      "[TQBOADIAUABSADAAMQBDAEEAMAAwADQAMgAuAG4AYQBtAHAAcgBkADAAMQAuAHAAcgBvAGQA]\"\n"),
    S("* OK [CAPABILITY IMAP4rev1 LITERAL+ ID ENABLE AUTH=PLAIN AUTH=SCRAM-SHA-256 SASL-IR] "
      "imap.example.org Cyrus IMAP 3.6.1-Debian server ready\r\n",
      "R * OK [CAPABILITY IMAP4rev1 LITERAL+ ID ENABLE AUTH=PLAIN AUTH=SCRAM-SHA-256 SASL-IR] "
      "\"imap.example.org Cyrus IMAP 3.6.1-Debian server ready\"\n"),
    S("* PREAUTH [CAPABILITY IMAP4rev1 IDLE] Logged in as joe\r\n",
      "R * PREAUTH [CAPABILITY IMAP4rev1 IDLE] \"Logged in as joe\"\n"),
    /* Gmail's CAPABILITY, and Dovecot's after login as a tagged code. */
    S("* CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 "
      "UIDPLUS COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED "
      "LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584\r\n",
      "R * CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 "
      "UIDPLUS COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED "
      "LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584\n"),
    S("a1 OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
      "THREAD=REFERENCES MULTIAPPEND UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED "
      "I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS "
      "BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY LITERAL+ NOTIFY SPECIAL-USE] Logged in\r\n",
      "R a1 OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
      "THREAD=REFERENCES MULTIAPPEND UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED "
      "I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS "
      "BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY LITERAL+ NOTIFY SPECIAL-USE] \"Logged in\"\n"),
    /* LIST: quoted names, NIL delimiter, Gmail's [Gmail] folders, atoms
     * (with a lone '['), LIST-EXTENDED data, modified UTF-7, a literal. */
    S("* LIST (\\HasNoChildren) \"/\" \"Sent Items\"\r\n",
      "R * LIST (\\HasNoChildren) \"/\" \"Sent Items\"\n"),
    S("* LIST (\\Noselect) NIL \"\"\r\n", "R * LIST (\\Noselect) NIL \"\"\n"),
    S("* LIST (\\All \\HasNoChildren) \"/\" \"[Gmail]/All Mail\"\r\n",
      "R * LIST (\\All \\HasNoChildren) \"/\" \"[Gmail]/All Mail\"\n"),
    S("* LIST (\\HasNoChildren) \".\" INBOX\r\n", "R * LIST (\\HasNoChildren) \".\" INBOX\n"),
    S("* LIST (\\HasNoChildren) \".\" foo[bar\r\n", "R * LIST (\\HasNoChildren) \".\" foo[bar\n"),
    S("* LIST (\\Subscribed \\HasChildren) \"/\" \"Foo\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n",
      "R * LIST (\\Subscribed \\HasChildren) \"/\" \"Foo\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\n"),
    S("* LIST (\\HasNoChildren \\Drafts) \"/\" \"Entw&APw-rfe\"\r\n",
      "R * LIST (\\HasNoChildren \\Drafts) \"/\" \"Entw&APw-rfe\"\n"),
    S("* LIST () \"/\" {9}\r\nfoo bar b\r\n", "R * LIST () \"/\" {9}\"foo bar b\"\n"),
    S("* LIST () \"\\\\\" \"a\\\"b\\\\c\"\r\n", "R * LIST () \"\\\\\" \"a\\\"b\\\\c\"\n"),
    S("* LIST () \"/\" \"Entw\xc3\xbcrfe\"\r\n", "R * LIST () \"/\" \"Entw\xc3\xbcrfe\"\n"),
    S("* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n", "R * NAMESPACE ((\"\" \"/\")) NIL NIL\n"),
    /* STATUS, with an atom name, a quoted name, and a literal name. */
    S("* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n",
      "R * STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\n"),
    S("* STATUS \"Sent Items\" (MESSAGES 12 UIDNEXT 13 UIDVALIDITY 1700000000 HIGHESTMODSEQ "
      "715194045007)\r\n",
      "R * STATUS \"Sent Items\" (MESSAGES 12 UIDNEXT 13 UIDVALIDITY 1700000000 HIGHESTMODSEQ "
      "715194045007)\n"),
    S("* STATUS {5}\r\nHello (MESSAGES 1)\r\n", "R * STATUS {5}\"Hello\" (MESSAGES 1)\n"),
    /* SELECT responses. */
    S("* 172 EXISTS\r\n", "R * 172 EXISTS\n"),
    S("* 3 EXPUNGE\r\n", "R * 3 EXPUNGE\n"),
    S("* OK [UNSEEN 12] Message 12 is first unseen\r\n",
      "R * OK [UNSEEN 12] \"Message 12 is first unseen\"\n"),
    S("* OK [UIDVALIDITY 3857529045] UIDs valid\r\n",
      "R * OK [UIDVALIDITY 3857529045] \"UIDs valid\"\n"),
    S("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)\r\n",
      "R * FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)\n"),
    S("* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags "
      "permitted.\r\n",
      "R * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] \"Flags "
      "permitted.\"\n"),
    S("* OK [HIGHESTMODSEQ 715194045007] Highest\r\n",
      "R * OK [HIGHESTMODSEQ 715194045007] \"Highest\"\n"),
    S("* OK [NOMODSEQ] Sorry, this mailbox format doesn't support modsequences\r\n",
      "R * OK [NOMODSEQ] \"Sorry, this mailbox format doesn't support modsequences\"\n"),
    S("A142 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n",
      "R A142 OK [READ-WRITE] \"Select completed (0.001 + 0.000 secs).\"\n"),
    S("* OK [CLOSED] Previous mailbox closed.\r\n",
      "R * OK [CLOSED] \"Previous mailbox closed.\"\n"),
    /* FETCH. */
    S("* 12 FETCH (UID 4827313 FLAGS (\\Seen $Forwarded) MODSEQ (65402))\r\n",
      "R * 12 FETCH (UID 4827313 FLAGS (\\Seen $Forwarded) MODSEQ (65402))\n"),
    S("* 2 FETCH (UID 41 INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE 4286 FLAGS "
      "())\r\n",
      "R * 2 FETCH (UID 41 INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE 4286 FLAGS "
      "())\n"),
    S("* 3 FETCH (UID 42 BODY[] {21}\r\nSubject: hi\r\n\r\nbody\r\n FLAGS (\\Seen))\r\n",
      "R * 3 FETCH (UID 42 BODY[] {21}\"Subject: hi\\x0d\\x0a\\x0d\\x0abody\\x0d\\x0a\" FLAGS "
      "(\\Seen))\n"),
    S("* 4 FETCH (BODY[HEADER.FIELDS (DATE FROM)] {85}\r\nDate: Wed, 17 Jul 1996 02:23:25 "
      "-0700\r\nFrom: Terry Gray <gray@cac.washington.edu>\r\n\r\n)\r\n",
      "R * 4 FETCH (<BODY[HEADER.FIELDS (DATE FROM)]> {85}\"Date: Wed, 17 Jul 1996 02:23:25 "
      "-0700\\x0d\\x0aFrom: Terry Gray <gray@cac.washington.edu>\\x0d\\x0a\\x0d\\x0a\")\n"),
    S("* 5 FETCH (BODY[]<0> {5}\r\nHello UID 7)\r\n",
      "R * 5 FETCH (BODY[]<0> {5}\"Hello\" UID 7)\n"),
    S("* 1 FETCH (UID 5 BODY[HEADER] {0}\r\n)\r\n", "R * 1 FETCH (UID 5 BODY[HEADER] {0}\"\")\n"),
    S("* 1 FETCH (BINARY[1] ~{3}\r\na\0b)\r\n", "R * 1 FETCH (BINARY[1] {3}\"a\\x00b\")\n"),
    /* LITERAL+ syntax is not sent by servers, but is accepted. */
    S("* 1 FETCH (BODY[] {3+}\r\nabc)\r\n", "R * 1 FETCH (BODY[] {3}\"abc\")\n"),
    /* UTF8=ACCEPT: 8-bit bytes in atoms. */
    S("* LIST () \"/\" Entw\xc3\xbcrfe\r\n", "R * LIST () \"/\" Entw\xc3\xbcrfe\n"),
    S("* 49 FETCH (UID 49 MODSEQ (12111230047) FLAGS (\\Seen \\Deleted))\r\n",
      "R * 49 FETCH (UID 49 MODSEQ (12111230047) FLAGS (\\Seen \\Deleted))\n"),
    S("* 1 FETCH (X-GM-LABELS (\\Inbox \"\\\\Important\" Foo) UID 3)\r\n",
      "R * 1 FETCH (X-GM-LABELS (\\Inbox \"\\\\Important\" Foo) UID 3)\n"),
    S("* 1 FETCH (EMAILID (M6d99ac3275bb4e) THREADID (T64b478a75b7ea9))\r\n",
      "R * 1 FETCH (EMAILID (M6d99ac3275bb4e) THREADID (T64b478a75b7ea9))\n"),
    /* RFC 3501 section 8's ENVELOPE and BODY, and 7.4.2's multipart
     * BODYSTRUCTURE, whose parts follow each other with no space. */
    S("* 12 FETCH (FLAGS (\\Seen) INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE 4286 "
      "ENVELOPE (\"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\" \"IMAP4rev1 WG mtg summary and "
      "minutes\" ((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) ((\"Terry Gray\" NIL "
      "\"gray\" \"cac.washington.edu\")) ((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) "
      "((NIL NIL \"imap\" \"cac.washington.edu\")) ((NIL NIL \"minutes\" "
      "\"CNRI.Reston.VA.US\")(\"John Klensin\" NIL \"KLENSIN\" \"MIT.EDU\")) NIL NIL "
      "\"<B27397-0100000@cac.washington.edu>\") BODY (\"TEXT\" \"PLAIN\" (\"CHARSET\" "
      "\"US-ASCII\") NIL NIL \"7BIT\" 3028 92))\r\n",
      "R * 12 FETCH (FLAGS (\\Seen) INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE 4286 "
      "ENVELOPE (\"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\" \"IMAP4rev1 WG mtg summary and "
      "minutes\" ((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) ((\"Terry Gray\" NIL "
      "\"gray\" \"cac.washington.edu\")) ((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) "
      "((NIL NIL \"imap\" \"cac.washington.edu\")) ((NIL NIL \"minutes\" "
      "\"CNRI.Reston.VA.US\") (\"John Klensin\" NIL \"KLENSIN\" \"MIT.EDU\")) NIL NIL "
      "\"<B27397-0100000@cac.washington.edu>\") BODY (\"TEXT\" \"PLAIN\" (\"CHARSET\" "
      "\"US-ASCII\") NIL NIL \"7BIT\" 3028 92))\n"),
    S("* 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" "
      "1152 23)(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\" \"NAME\" \"cc.diff\") "
      "\"<960723163407.20117h@cac.washington.edu>\" \"Compiler diff\" \"BASE64\" 4554 73) "
      "\"MIXED\"))\r\n",
      "R * 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" "
      "1152 23) (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\" \"NAME\" \"cc.diff\") "
      "\"<960723163407.20117h@cac.washington.edu>\" \"Compiler diff\" \"BASE64\" 4554 73) "
      "\"MIXED\"))\n"),
    /* QRESYNC, ESEARCH, SEARCH, ENABLE, ID, QUOTA. */
    S("* VANISHED (EARLIER) 41,43:116,118,120:211,214:540\r\n",
      "R * VANISHED (EARLIER) 41,43:116,118,120:211,214:540\n"),
    S("* VANISHED 405,407,410,425\r\n", "R * VANISHED 405,407,410,425\n"),
    S("* ESEARCH (TAG \"A1\") UID ALL 1:3,5\r\n", "R * ESEARCH (TAG \"A1\") UID ALL 1:3,5\n"),
    S("* SEARCH 2 3 6\r\n", "R * SEARCH 2 3 6\n"),
    S("* SEARCH\r\n", "R * SEARCH\n"),
    S("* ENABLED QRESYNC CONDSTORE\r\n", "R * ENABLED QRESYNC CONDSTORE\n"),
    S("* ID (\"name\" \"Dovecot\")\r\n", "R * ID (\"name\" \"Dovecot\")\n"),
    S("* ID (\"name\" \"GImap\" \"vendor\" \"Google, Inc.\" \"support-url\" NIL)\r\n",
      "R * ID (\"name\" \"GImap\" \"vendor\" \"Google, Inc.\" \"support-url\" NIL)\n"),
    S("* QUOTA \"\" (STORAGE 10 512)\r\n", "R * QUOTA \"\" (STORAGE 10 512)\n"),
    /* Control bytes in free text are shown as '?', never passed on. */
    S("* OK hi \x1b[31m\r\n", "R * OK \"hi ?[31m\"\n"),
    S("* NO Mailbox doesn't exist: Bell\x07x\r\n", "R * NO \"Mailbox doesn't exist: Bell?x\"\n"),
    /* Control characters other than CR and LF are TEXT-CHARs (RFC 3501). */
    S("* LIST () \"/\" \"Bell\x07x\tTab\x7f\"\r\n",
      "R * LIST () \"/\" \"Bell\\x07x\\x09Tab\\x7f\"\n"),
    /* Tagged completions with codes. */
    S("A3 NO [TRYCREATE] Mailbox doesn't exist: Foo\r\n",
      "R A3 NO [TRYCREATE] \"Mailbox doesn't exist: Foo\"\n"),
    S("A4 BAD Error in IMAP command UID FETCH: Invalid messageset (0.001 + 0.000 secs).\r\n",
      "R A4 BAD \"Error in IMAP command UID FETCH: Invalid messageset (0.001 + 0.000 secs).\"\n"),
    S("A5 OK [COPYUID 38505 304,319:320 3956:3958] Move completed.\r\n",
      "R A5 OK [COPYUID 38505 304,319:320 3956:3958] \"Move completed.\"\n"),
    S("A003 OK [APPENDUID 38505 3955] APPEND completed\r\n",
      "R A003 OK [APPENDUID 38505 3955] \"APPEND completed\"\n"),
    S("d105 OK [MODIFIED 7,9] Conditional STORE failed\r\n",
      "R d105 OK [MODIFIED 7,9] \"Conditional STORE failed\"\n"),
    S("A1 NO [BADCHARSET (US-ASCII UTF-8)] charset not supported\r\n",
      "R A1 NO [BADCHARSET (US-ASCII UTF-8)] \"charset not supported\"\n"),
    S("A1 NO [BADCHARSET ({5}\r\nUTF-8)] no\r\n", "R A1 NO [BADCHARSET ({5}\"UTF-8\")] \"no\"\n"),
    S("A1 NO [UNKNOWN-CTE] Can't decode\r\n", "R A1 NO [UNKNOWN-CTE] \"Can't decode\"\n"),
    S("A2 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n",
      "R A2 NO [AUTHENTICATIONFAILED] \"Invalid credentials (Failure)\"\n"),
    S("A1 NO AUTHENTICATE failed.\r\n", "R A1 NO \"AUTHENTICATE failed.\"\n"),
    S("A001 NO [REFERRAL IMAP://user;AUTH=*@SERVER2/] Remote Server\r\n",
      "R A001 NO [REFERRAL IMAP://user;AUTH=*@SERVER2/] \"Remote Server\"\n"),
    S("* OK [WEBALERT https://accounts.google.com/signin/continue?sarp=1&scc=1] Web login "
      "required.\r\n",
      "R * OK [WEBALERT https://accounts.google.com/signin/continue?sarp=1&scc=1] \"Web login "
      "required.\"\n"),
    /* Free text in a code that is not argument syntax becomes one atom. */
    S("* NO [XYZ don't (know] oops\r\n", "R * NO [XYZ <don't (know>] \"oops\"\n"),
    S("* OK [ALERT] System shutdown in 10 minutes\r\n",
      "R * OK [ALERT] \"System shutdown in 10 minutes\"\n"),
    S("* OK Still here\r\n", "R * OK \"Still here\"\n"),
    S("* BYE Disconnected for inactivity.\r\n", "R * BYE \"Disconnected for inactivity.\"\n"),
    /* Continuations and a SASL challenge. */
    S("+ Ready for additional command text\r\n", "R + \"Ready for additional command text\"\n"),
    S("+\r\n", "R + \"\"\n"),
    S("+ \r\n", "R + \"\"\n"),
    S("+ YGgGCSqGSIb3EgECAgIBAAD/////6jcyG4GE3KkTzBeBiVHeceP2CWY0SR0fAQAgAAQEBAQ=\r\n",
      "R + \"YGgGCSqGSIb3EgECAgIBAAD/////6jcyG4GE3KkTzBeBiVHeceP2CWY0SR0fAQAgAAQEBAQ=\"\n"),
    /* Tolerated: lower case, no text, trailing spaces, bare LF. */
    S("* ok [uidnext 5] predicted\r\n", "R * OK [UIDNEXT 5] \"predicted\"\n"),
    S("* OK\r\n", "R * OK \"\"\n"),
    S("* OK   \r\n", "R * OK \"\"\n"),
    S("* 5 EXISTS  \r\n", "R * 5 EXISTS\n"),
    S("* 5 EXISTS\na2 ok done\n", "R * 5 EXISTS\nR a2 OK \"done\"\n"),
    S("* BYE\r\n", "R * BYE \"\"\n"),
};

static void test_samples(void **state)
{
    (void)state;
    assert_true(ARRAY_SIZE(samples) >= 40);
    for (size_t i = 0; i < ARRAY_SIZE(samples); i++) {
        bool busy = true;
        char *log = drive_all(samples[i].in, samples[i].len, NULL, &busy);
        if (strcmp(log, samples[i].expect) != 0) {
            print_error("sample %zu:\n got: %s want: %s", i, log, samples[i].expect);
        }
        assert_string_equal(log, samples[i].expect);
        assert_false(busy);
        free(log);
    }
}

/* Every sample back to back in one buffer (pipelining): the transcript is
 * the samples' transcripts in order. */
static void test_pipelined(void **state)
{
    (void)state;
    struct sbuf in = {0}, want = {0};
    for (size_t i = 0; i < ARRAY_SIZE(samples); i++) {
        sbuf_add(&in, samples[i].in, samples[i].len);
        sbuf_adds(&want, samples[i].expect);
    }
    bool busy = true;
    char *log = drive_all(in.buf, in.len, NULL, &busy);
    assert_string_equal(log, want.buf);
    assert_false(busy);
    free(log);

    /* And by hand: one feed returns the first response and leaves the rest. */
    static const char two[] = "* 1 EXISTS\r\n* 2 EXISTS\r\nA1 OK x\r\n";
    struct imap_parser *p = imap_parser_new(NULL);
    size_t used;
    assert_int_equal(imap_parser_feed(p, two, sizeof(two) - 1, &used), IMAP_PARSE_RESPONSE);
    assert_int_equal(used, 12);
    assert_string_equal(imap_parser_response(p)->args[0].u.str.s, "1");
    assert_int_equal(imap_parser_feed(p, two + 12, sizeof(two) - 13, &used), IMAP_PARSE_RESPONSE);
    assert_int_equal(used, 12);
    assert_string_equal(imap_parser_response(p)->args[0].u.str.s, "2");
    assert_int_equal(imap_parser_feed(p, two + 24, sizeof(two) - 25, &used), IMAP_PARSE_RESPONSE);
    assert_string_equal(imap_parser_response(p)->tag, "A1");
    assert_int_equal(imap_parser_feed(p, "", 0, &used), IMAP_PARSE_NEED_MORE);
    assert_null(imap_parser_response(p));
    imap_parser_free(p);
    sbuf_free(&in);
    sbuf_free(&want);
}

/* ---- Field by field --------------------------------------------------- */

/* Parses one complete response fed whole; the parser is returned so the
 * response stays valid. */
static const struct imap_response *parse_one(struct imap_parser **p_r, const char *in)
{
    struct imap_parser *p = imap_parser_new(NULL);
    size_t used;
    int r = imap_parser_feed(p, in, strlen(in), &used);
    if (r != IMAP_PARSE_RESPONSE) {
        print_error("result %d: %s\n", r, imap_parser_error(p) ? imap_parser_error(p) : "");
    }
    assert_int_equal(r, IMAP_PARSE_RESPONSE);
    assert_int_equal(used, strlen(in));
    *p_r = p;
    return imap_parser_response(p);
}

static void test_fields_fetch(void **state)
{
    (void)state;
    struct imap_parser *p;
    const struct imap_response *r =
        parse_one(&p, "* 12 FETCH (UID 4827313 FLAGS (\\Seen $Forwarded) MODSEQ (715194045007) "
                      "INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE 4286 "
                      "BODY[HEADER.FIELDS (DATE FROM)]<0> NIL)\r\n");
    assert_int_equal(r->kind, IMAP_RESP_UNTAGGED);
    assert_int_equal(r->status, IMAP_STATUS_NONE);
    assert_null(r->tag);
    assert_null(r->code);
    assert_int_equal(r->nargs, 3);
    uint64_t n = 0;
    assert_true(imap_arg_number(&r->args[0], &n));
    assert_int_equal(n, 12);
    assert_true(imap_arg_is_atom(&r->args[1], "FETCH"));
    assert_true(imap_arg_is_atom(&r->args[1], "fetch"));
    assert_false(imap_arg_is_atom(&r->args[1], "FETC"));
    assert_int_equal(r->args[2].type, IMAP_ARG_LIST);
    const struct imap_arg *it = r->args[2].u.list.items;
    assert_int_equal(r->args[2].u.list.count, 12);
    assert_true(imap_arg_is_atom(&it[0], "UID"));
    assert_true(imap_arg_number(&it[1], &n));
    assert_int_equal(n, 4827313);
    assert_true(imap_arg_is_atom(&it[2], "FLAGS"));
    assert_int_equal(it[3].type, IMAP_ARG_LIST);
    assert_int_equal(it[3].u.list.count, 2);
    assert_string_equal(imap_arg_str(&it[3].u.list.items[0]), "\\Seen");
    assert_int_equal(it[3].u.list.items[0].u.str.len, 5);
    assert_string_equal(imap_arg_str(&it[3].u.list.items[1]), "$Forwarded");
    assert_int_equal(it[5].type, IMAP_ARG_LIST);
    assert_true(imap_arg_number(&it[5].u.list.items[0], &n));
    assert_int_equal(n, 715194045007ULL);
    assert_int_equal(it[7].type, IMAP_ARG_STRING);
    assert_string_equal(imap_arg_str(&it[7]), "17-Jul-1996 02:44:25 -0700");
    assert_true(imap_arg_number(&it[9], &n));
    assert_int_equal(n, 4286);
    assert_int_equal(it[10].type, IMAP_ARG_ATOM);
    assert_string_equal(it[10].u.str.s, "BODY[HEADER.FIELDS (DATE FROM)]<0>");
    assert_int_equal(it[11].type, IMAP_ARG_NIL);
    assert_null(imap_arg_str(&it[11]));
    assert_false(imap_arg_number(&it[11], &n));
    assert_false(imap_arg_number(&it[7], &n)); /* a string, not a number */
    imap_parser_free(p);

    /* Numbers: the largest uint64 parses, one more does not. */
    r = parse_one(&p, "* SEARCH 18446744073709551615 18446744073709551616 12a\r\n");
    assert_true(imap_arg_number(&r->args[1], &n));
    assert_true(n == UINT64_MAX);
    assert_false(imap_arg_number(&r->args[2], &n));
    assert_false(imap_arg_number(&r->args[3], &n));
    imap_parser_free(p);
}

static void test_fields_status(void **state)
{
    (void)state;
    struct imap_parser *p;
    const struct imap_response *r = parse_one(&p, "* OK [UIDNEXT 5] Predicted\r\n");
    assert_int_equal(r->kind, IMAP_RESP_UNTAGGED);
    assert_int_equal(r->status, IMAP_STATUS_OK);
    assert_string_equal(r->code, "UIDNEXT");
    assert_int_equal(r->ncode_args, 1);
    uint64_t n;
    assert_true(imap_arg_number(&r->code_args[0], &n));
    assert_int_equal(n, 5);
    assert_string_equal(r->text, "Predicted");
    assert_int_equal(r->nargs, 0);
    imap_parser_free(p);

    r = parse_one(&p, "A7 NO [PERMANENTFLAGS (\\Answered \\*)] Nope \r\n");
    assert_int_equal(r->kind, IMAP_RESP_TAGGED);
    assert_string_equal(r->tag, "A7");
    assert_int_equal(r->status, IMAP_STATUS_NO);
    assert_string_equal(r->code, "PERMANENTFLAGS");
    assert_int_equal(r->ncode_args, 1);
    assert_int_equal(r->code_args[0].type, IMAP_ARG_LIST);
    assert_int_equal(r->code_args[0].u.list.count, 2);
    assert_string_equal(imap_arg_str(&r->code_args[0].u.list.items[1]), "\\*");
    assert_string_equal(r->text, "Nope");
    imap_parser_free(p);

    r = parse_one(&p, "tag.1 bad\r\n");
    assert_string_equal(r->tag, "tag.1");
    assert_int_equal(r->status, IMAP_STATUS_BAD);
    assert_null(r->code);
    assert_null(r->code_args);
    assert_string_equal(r->text, "");
    imap_parser_free(p);

    r = parse_one(&p, "* bye [ALERT] going down\r\n");
    assert_int_equal(r->status, IMAP_STATUS_BYE);
    assert_string_equal(r->code, "ALERT");
    assert_int_equal(r->ncode_args, 0);
    assert_string_equal(r->text, "going down");
    imap_parser_free(p);

    /* "OKAY" is not OK: a generic response. */
    r = parse_one(&p, "* OKAY 1\r\n");
    assert_int_equal(r->status, IMAP_STATUS_NONE);
    assert_int_equal(r->nargs, 2);
    assert_true(imap_arg_is_atom(&r->args[0], "OKAY"));
    imap_parser_free(p);

    r = parse_one(&p, "+ YGgGCSqGSIb3EgECAgIBAAD/////6jcy==\r\n");
    assert_int_equal(r->kind, IMAP_RESP_CONTINUATION);
    assert_int_equal(r->status, IMAP_STATUS_NONE);
    assert_string_equal(r->text, "YGgGCSqGSIb3EgECAgIBAAD/////6jcy==");
    imap_parser_free(p);
}

static void test_fields_literal_inline(void **state)
{
    (void)state;
    struct imap_parser *p;
    static const char in[] = "* 3 FETCH (BODY[] {6}\r\na\0b\r\nc UID 9)\r\n";
    p = imap_parser_new(NULL);
    size_t used;
    assert_int_equal(imap_parser_feed(p, in, sizeof(in) - 1, &used), IMAP_PARSE_RESPONSE);
    const struct imap_response *r = imap_parser_response(p);
    const struct imap_arg *l = &r->args[2].u.list.items[1];
    assert_int_equal(l->type, IMAP_ARG_LITERAL);
    assert_int_equal(l->u.str.len, 6);
    assert_memory_equal(l->u.str.s, "a\0b\r\nc", 7); /* and the NUL after it */
    assert_ptr_equal(imap_arg_str(l), l->u.str.s);
    imap_parser_free(p);
}

/* ---- Streamed literals ------------------------------------------------- */

static void test_streamed_literal(void **state)
{
    (void)state;
    const size_t size = 5 * 1024 * 1024;
    struct sbuf in = {0};
    sbuf_adds(&in, "* 12 FETCH (UID 99 BODY[] {5242880}\r\n");
    size_t body_at = in.len;
    unsigned s = 1;
    for (size_t i = 0; i < size; i++) {
        /* Every byte value, CR, LF, NUL and fake responses included. */
        sbuf_addc(&in, (char)(rnd_next(&s) & 0xff));
    }
    memcpy(in.buf + body_at + 1000, "\r\n* 1 EXISTS\r\n{5}\r\n)", 20);
    sbuf_adds(&in, " FLAGS (\\Seen))\r\nA5 OK Fetch completed.\r\n");
    struct imap_parser_limits lim = {.inline_literal_max = 64 * 1024};

    char *want_log =
        xasprintf("B {5242880} * 12 FETCH (UID 99 BODY[]) prev=BODY[]\n"
                  "E {5242880} %016llx\n"
                  "R * 12 FETCH (UID 99 BODY[] {5242880}* FLAGS (\\Seen))\n"
                  "R A5 OK \"Fetch completed.\"\n",
                  (unsigned long long)fnv(0xcbf29ce484222325ULL, in.buf + body_at, size));

    enum feed_mode modes[] = {FEED_WHOLE, FEED_BYTES, FEED_RANDOM, FEED_FIXED};
    for (size_t m = 0; m < ARRAY_SIZE(modes); m++) {
        struct drive d = {.keep_lit = true};
        drive(&d, in.buf, in.len, &lim, modes[m], 42, 16384);
        assert_string_equal(d.log.buf, want_log);
        assert_int_equal(d.lit.len, size);
        assert_memory_equal(d.lit.buf, in.buf + body_at, size);
        assert_false(d.busy);
        drive_free(&d);
    }
    free(want_log);

    /* By hand: the partial response and the preceding argument at BEGIN,
     * and busy while the literal is in progress. */
    struct imap_parser *p = imap_parser_new(&lim);
    size_t used;
    assert_int_equal(imap_parser_feed(p, in.buf, in.len, &used), IMAP_PARSE_LITERAL_BEGIN);
    assert_int_equal(used, body_at);
    assert_true(imap_parser_busy(p));
    const struct imap_literal *l = imap_parser_literal(p);
    assert_int_equal(l->size, size);
    assert_int_equal(l->partial->nargs, 3);
    assert_string_equal(l->partial->args[0].u.str.s, "12");
    assert_true(imap_arg_is_atom(&l->partial->args[1], "FETCH"));
    assert_int_equal(l->partial->args[2].type, IMAP_ARG_LIST);
    assert_int_equal(l->partial->args[2].u.list.count, 3);
    assert_ptr_equal(l->preceding, &l->partial->args[2].u.list.items[2]);
    assert_true(imap_arg_is_atom(l->preceding, "BODY[]"));
    size_t off = used;
    assert_int_equal(imap_parser_feed(p, in.buf + off, 100, &used), IMAP_PARSE_LITERAL_DATA);
    assert_int_equal(used, 100);
    assert_ptr_equal(imap_parser_literal(p)->data, in.buf + off);
    off += used;
    assert_int_equal(imap_parser_feed(p, in.buf + off, in.len - off, &used),
                     IMAP_PARSE_LITERAL_DATA);
    assert_int_equal(used, size - 100);
    assert_int_equal(imap_parser_literal(p)->offset, 100);
    off += used;
    assert_true(imap_parser_busy(p));
    assert_int_equal(imap_parser_feed(p, NULL, 0, &used), IMAP_PARSE_LITERAL_END);
    assert_true(imap_parser_busy(p));
    assert_int_equal(imap_parser_feed(p, in.buf + off, in.len - off, &used), IMAP_PARSE_RESPONSE);
    assert_false(imap_parser_busy(p));
    const struct imap_response *r = imap_parser_response(p);
    const struct imap_arg *lit = &r->args[2].u.list.items[3];
    assert_int_equal(lit->type, IMAP_ARG_LITERAL_STREAMED);
    assert_int_equal(lit->u.literal_size, size);
    assert_null(imap_arg_str(lit));
    imap_parser_free(p);
    sbuf_free(&in);
}

/* The preceding argument is in the innermost open list; a literal that is
 * first in its list has none; nested open lists show in the partial. */
static void test_streamed_partial_nested(void **state)
{
    (void)state;
    struct imap_parser_limits lim = {.inline_literal_max = 4};
    static const char in[] = "* 7 FETCH (UID 1 X ((a {5}\r\nhello) ({6}\r\nworld!)) Y)\r\n";
    const uint64_t basis = 0xcbf29ce484222325ULL;
    unsigned long long hello = fnv(basis, "hello", 5), world = fnv(basis, "world!", 6),
                       utf8 = fnv(basis, "UTF-8", 5);
    char *want = xasprintf("B {5} * 7 FETCH (UID 1 X ((a))) prev=a\n"
                           "E {5} %016llx\n"
                           "B {6} * 7 FETCH (UID 1 X ((a {5}*) ())) prev=-\n"
                           "E {6} %016llx\n"
                           "R * 7 FETCH (UID 1 X ((a {5}*) ({6}*)) Y)\n",
                           hello, world);
    char *log = drive_all(in, sizeof(in) - 1, &lim, NULL);
    assert_string_equal(log, want);
    free(log);
    free(want);
    /* Streamed at the top level, and inside a response code. */
    static const char top[] = "* 1 XFOO {5}\r\nhello\r\nA1 NO [BADCHARSET ({5}\r\nUTF-8)] x\r\n";
    want = xasprintf("B {5} * 1 XFOO prev=XFOO\n"
                     "E {5} %016llx\n"
                     "R * 1 XFOO {5}*\n"
                     "B {5} A1 NO [BADCHARSET ()] \"\" prev=-\n"
                     "E {5} %016llx\n"
                     "R A1 NO [BADCHARSET ({5}*)] \"x\"\n",
                     hello, utf8);
    log = drive_all(top, sizeof(top) - 1, &lim, NULL);
    assert_string_equal(log, want);
    free(log);
    free(want);
}

/* ---- Limits and hostile input ----------------------------------------- */

struct hostile {
    const char *in;
    size_t len;
    struct imap_parser_limits lim;
    const char *error;
};

#define H(in, error, ...)                                                                          \
    {                                                                                              \
        in, sizeof(in) - 1, {__VA_ARGS__}, error                                                   \
    }

static const struct hostile hostiles[] = {
    H("* 1 FETCH (BODY[] {2147483648}\r\n",
      "literal of 2147483648 bytes exceeds the limit of 104857600 (max_literal)",
      .max_literal = 104857600),
    H("* 1 FETCH (BODY[] {00000000099999999999}\r\n",
      "literal of 99999999999 bytes exceeds the limit of 1073741824 (max_literal)", 0),
    H("* 1 FETCH (BODY[] {99999999999999999999}\r\n",
      "literal of 99999999999999999999 bytes exceeds the limit of 18446744073709551615 "
      "(max_literal)",
      .max_literal = UINT64_MAX),
    H("* 1 FETCH (BODY[] {123456789012345678901234567890}\r\n",
      "literal size has more than 20 digits at offset 18", 0),
    H("* 1 FETCH (BODY[] {12a}\r\nabc)\r\n", "invalid literal size at offset 18", 0),
    H("* 1 FETCH (BODY[] {}\r\n)\r\n", "invalid literal size at offset 18", 0),
    H("* 1 FETCH (BODY[] {3} \r\nabc)\r\n", "literal size not followed by CRLF at offset 18", 0),
    H("* 1 FETCH (BODY[] {3}abc)\r\n", "literal size not followed by CRLF at offset 18", 0),
    H("* ((((((((((((((((((((((((((((((((((x))))))))))))))))))))))))))))))))))\r\n",
      "list nesting exceeds the limit of 32 (max_depth) at offset 34", 0),
    H("* (((x)))\r\n", "list nesting exceeds the limit of 2 (max_depth) at offset 4",
      .max_depth = 2),
    H("* SEARCH 1 2 3 4 5 6 7 8 9 10\r\n",
      "argument count exceeds the limit of 10 (max_args) at offset 27", .max_args = 10),
    H("* 1 FETCH (FLAGS (a b c d e f))\r\n",
      "argument count exceeds the limit of 8 (max_args) at offset 24", .max_args = 8),
    H("* OK hi\0there\r\n", "NUL byte at offset 7", 0),
    H("* 1 FETCH (UID\0 5)\r\n", "NUL byte at offset 14", 0),
    H("* LIST () \"/\" \"a\0b\"\r\n", "NUL byte at offset 16", 0),
    /* Free text in a code (the fallback) is checked for NUL and controls. */
    H("* NO [X ) \0] y\r\n", "NUL byte at offset 10", 0),
    H("* NO [X ) \x7f] y\r\n", "control character 0x7f at offset 10", 0),
    H("* 5 EXI\rSTS\r\n", "bare CR at offset 7", 0),
    H("* OK hello\rworld\r\n", "bare CR at offset 10", 0),
    H("* OK hello\r\r\n", "bare CR at offset 10", 0),
    H("* 1 FETCH (UID 5))\r\n", "unbalanced ')' at offset 17", 0),
    H("* 1 FETCH (UID 5\r\n", "missing ')' at offset 16", 0),
    H("* 1 FETCH (BODY[] {3}\r\nabc\r\n", "missing ')' at offset 23", 0),
    H("* OK [ALERT hello\r\n", "response code not closed by ']' at offset 17", 0),
    H("* OK [ALERT\r\n", "response code not closed by ']' at offset 11", 0),
    H("* OK [\r\n", "missing response code name at offset 6", 0),
    H("* OK [PERMANENTFLAGS (\\Seen\r\n", "response code not closed by ']' at offset 27", 0),
    H("* OK [X ({1}\r\na] x\r\n", "missing ')' in response code at offset 14", 0),
    H("* LIST () \"/\" \"abc\r\n", "unterminated quoted string at offset 14", 0),
    H("A1 FOO bar\r\n", "tagged response without OK, NO or BAD at offset 3", 0),
    H("A1 BYE bar\r\n", "tagged response without OK, NO or BAD at offset 3", 0),
    H("A1\r\n", "invalid tag at offset 2", 0),
    H("A(1 OK\r\n", "invalid tag at offset 1", 0),
    H("*OK\r\n", "expected a space after '*' at offset 1", 0),
    H("* \r\n", "empty untagged response", 0),
    H("\r\n", "empty response line", 0),
    H("* OK fine\r\n\r\n", "empty response line", 0),
    H("* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n",
      "response size exceeds the limit of 30 bytes (max_response)", .max_response = 30),
    H("* 1 FETCH (UID 5 FLAGS (\\Seen \\Answered))\r\n",
      "response size exceeds the limit of 30 bytes (max_response)", .max_response = 30),
    H("* 1 FETCH (UID 12345)\r\n",
      "response exceeds the limit of 16 bytes without literals (max_line)", .max_line = 16),
    H("* 1 FETCH (BODY[] {4}\r\nabcd FLAGS (\\Seen))\r\n",
      "response exceeds the limit of 30 bytes without literals (max_line)", .max_line = 30),
};

static void test_hostile(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(hostiles); i++) {
        const struct hostile *h = &hostiles[i];
        char *log = drive_all(h->in, h->len, &h->lim, NULL);
        const char *x = strstr(log, "X ");
        if (x == NULL || strncmp(x + 2, h->error, strlen(h->error)) != 0 ||
            strcmp(x + 2 + strlen(h->error), "\n") != 0) {
            print_error("hostile %zu: got %s\nwant X %s\n", i, log, h->error);
        }
        assert_non_null(x);
        assert_memory_equal(x + 2, h->error, strlen(h->error));
        assert_string_equal(x + 2 + strlen(h->error), "\n");
        free(log);
    }
}

/* max_line counts every byte outside literals, CRLF included: exactly the
 * limit passes, one more fails, however the bytes arrive. */
static void test_max_line_exact(void **state)
{
    (void)state;
    struct imap_parser_limits lim = {.max_line = 14};
    char *log = drive_all("* 1234 EXISTS\n", 14, &lim, NULL);
    assert_string_equal(log, "R * 1234 EXISTS\n");
    free(log);
    log = drive_all("* 1234 EXISTS\r\n", 15, &lim, NULL);
    assert_string_equal(log,
                        "X response exceeds the limit of 14 bytes without literals (max_line)\n");
    free(log);
    /* The limit is per response: the next one starts from zero. */
    log = drive_all("* 1234 EXISTS\n* 4321 EXISTS\n", 28, &lim, NULL);
    assert_string_equal(log, "R * 1234 EXISTS\nR * 4321 EXISTS\n");
    free(log);
}

/* A 10 MB line without CRLF is rejected once it passes max_line, without
 * the parser swallowing (or buffering) the rest. */
static void test_long_line(void **state)
{
    (void)state;
    size_t len = 10 * 1024 * 1024;
    char *in = xmalloc(len);
    memcpy(in, "* OK ", 5);
    memset(in + 5, 'x', len - 5);
    const char *want = "response exceeds the limit of 65536 bytes without literals (max_line)";

    struct imap_parser *p = imap_parser_new(NULL);
    size_t used;
    assert_int_equal(imap_parser_feed(p, in, len, &used), IMAP_PARSE_ERROR);
    assert_string_equal(imap_parser_error(p), want);
    imap_parser_free(p);

    struct drive d = {0};
    drive(&d, in, len, NULL, FEED_BYTES, 0, 0);
    assert_string_equal(d.error, want);
    assert_int_equal(d.consumed, 65536);
    drive_free(&d);
    struct drive d2 = {0};
    drive(&d2, in, len, NULL, FEED_FIXED, 0, 1000);
    assert_string_equal(d2.error, want);
    assert_true(d2.consumed <= 66000);
    drive_free(&d2);
    free(in);
}

/* An unterminated literal at the end of input just needs more bytes. */
static void test_incomplete(void **state)
{
    (void)state;
    static const char *const partial[] = {
        "* 1 FETCH (BODY[] {10}\r\nabc",
        "* 1 FETCH (BODY[] {100000}\r\nabc",
        "* 1 FETCH (UID",
        "* OK hello\r",
        "A1 OK [ALERT] x",
    };
    for (size_t i = 0; i < ARRAY_SIZE(partial); i++) {
        bool busy = false;
        char *log = drive_all(partial[i], strlen(partial[i]), NULL, &busy);
        assert_true(strstr(log, "X ") == NULL);
        assert_true(strstr(log, "R ") == NULL);
        assert_true(busy);
        free(log);
    }
}

static void test_busy_and_reset(void **state)
{
    (void)state;
    struct imap_parser *p = imap_parser_new(NULL);
    size_t used;
    assert_false(imap_parser_busy(p));
    assert_int_equal(imap_parser_feed(p, "A1 OK Begin TLS\r\n* OK inj", 25, &used),
                     IMAP_PARSE_RESPONSE);
    assert_int_equal(used, 17);
    assert_false(imap_parser_busy(p));
    assert_int_equal(imap_parser_feed(p, "* OK inj", 8, &used), IMAP_PARSE_NEED_MORE);
    assert_int_equal(used, 8);
    assert_true(imap_parser_busy(p));
    /* After STARTTLS the plaintext is forgotten. */
    imap_parser_reset(p);
    assert_false(imap_parser_busy(p));
    assert_int_equal(imap_parser_feed(p, "* 2 EXISTS\r\n", 12, &used), IMAP_PARSE_RESPONSE);
    assert_true(imap_arg_is_atom(&imap_parser_response(p)->args[1], "EXISTS"));
    /* Mid-literal, then reset, then a fresh response. */
    assert_int_equal(imap_parser_feed(p, "* 1 FETCH (BODY[] {3}\r\na", 24, &used),
                     IMAP_PARSE_NEED_MORE);
    assert_true(imap_parser_busy(p));
    imap_parser_reset(p);
    assert_false(imap_parser_busy(p));
    assert_int_equal(imap_parser_feed(p, "* 3 EXISTS\r\n", 12, &used), IMAP_PARSE_RESPONSE);
    assert_string_equal(imap_parser_response(p)->args[0].u.str.s, "3");
    /* Reset also clears an error. */
    assert_int_equal(imap_parser_feed(p, "* 1 FETCH (UID 5))\r\n", 20, &used), IMAP_PARSE_ERROR);
    assert_non_null(imap_parser_error(p));
    imap_parser_reset(p);
    assert_null(imap_parser_error(p));
    assert_int_equal(imap_parser_feed(p, "+ go\r\n", 6, &used), IMAP_PARSE_RESPONSE);
    imap_parser_free(p);
}

/* 5,000 FETCH responses as a QRESYNC resync sends them, fed in 16 KiB
 * reads: they must all parse, and quickly (the bound is loose on purpose:
 * this runs under the sanitizers). */
static void test_many_fetches(void **state)
{
    (void)state;
    struct sbuf in = {0};
    for (unsigned i = 1; i <= 5000; i++) {
        sbuf_addf(&in, "* %u FETCH (UID %u FLAGS (\\Seen \\Answered $Label%u) MODSEQ (%u))\r\n", i,
                  i * 3, i % 7, 700000 + i);
    }
    struct imap_parser *p = imap_parser_new(NULL);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned count = 0;
    uint64_t uid_sum = 0;
    for (int round = 0; round < 10; round++) {
        for (size_t off = 0; off < in.len;) {
            size_t chunk = in.len - off < 16384 ? in.len - off : 16384;
            const char *data = in.buf + off;
            size_t left = chunk;
            for (;;) {
                size_t used;
                int r = imap_parser_feed(p, data, left, &used);
                data += used;
                left -= used;
                if (r == IMAP_PARSE_NEED_MORE) {
                    break;
                }
                assert_int_equal(r, IMAP_PARSE_RESPONSE);
                const struct imap_response *resp = imap_parser_response(p);
                uint64_t uid;
                assert_true(imap_arg_number(&resp->args[2].u.list.items[1], &uid));
                uid_sum += uid;
                count++;
            }
            off += chunk;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("parsed %u FETCH responses (%zu bytes x10) in %.1f ms\n", count, in.len, ms);
    assert_int_equal(count, 50000);
    assert_int_equal(uid_sum, 10ULL * 3 * 5000 * 5001 / 2);
    assert_true(ms < 5000);
    imap_parser_free(p);
    sbuf_free(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_samples),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_fields_fetch),
        cmocka_unit_test(test_fields_status),
        cmocka_unit_test(test_fields_literal_inline),
        cmocka_unit_test(test_streamed_literal),
        cmocka_unit_test(test_streamed_partial_nested),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_max_line_exact),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_incomplete),
        cmocka_unit_test(test_busy_and_reset),
        cmocka_unit_test(test_many_fetches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
