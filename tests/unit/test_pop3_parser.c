/* LINK: ms_sync ms_core */
/* Tests for the incremental POP3 reply parser: every script is fed whole,
 * one byte at a time and in pseudo-random chunks, and must give the same
 * transcript of results each way. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "core/util.h"
#include "sync/pop3.h"
#include "sync/pop3_parser.h"
#include "sync/popsync.h"

/* Feeds input to a parser in pieces of the given size (0: whole; -1:
 * pseudo-random 1..17), setting the expectations from exp[] in order as
 * replies complete, and returns a transcript:
 *   "S+[CODE]text\n" / "S-[CODE]text\n"  status lines
 *   "C:text\n"                         SASL continuation
 *   "L:line\n"                         listing line
 *   "D:bytes"                          body (consecutive chunks merged)
 *   "E\n"                              terminator
 *   "!error text\n"                    error (and the transcript ends)
 *   "~busy\n"                          input ended in the middle of a reply */
static char *run(const struct pop3_parser_limits *lim, const char *input, size_t len,
                 const enum pop3_expect *exp, size_t nexp, int piece)
{
    struct pop3_parser *p = pop3_parser_new(lim);
    struct sbuf out = {0};
    size_t ei = 0;
    bool in_data = false;
    unsigned seed = 12345;
    pop3_parser_expect(p, ei < nexp ? exp[ei++] : POP3_EXPECT_NOTHING);
    size_t pos = 0;
    bool dead = false;
    while (pos < len && !dead) {
        size_t n = len - pos;
        if (piece > 0 && (size_t)piece < n) {
            n = (size_t)piece;
        } else if (piece < 0) {
            seed = seed * 1103515245u + 12345u;
            size_t k = 1 + (seed >> 16) % 17;
            if (k < n) {
                n = k;
            }
        }
        const char *d = input + pos;
        size_t left = n;
        for (;;) {
            size_t used = 0;
            int r = pop3_parser_feed(p, d, left, &used);
            assert_true(used <= left);
            d += used;
            left -= used;
            if (r != POP3_PARSE_DATA && r != POP3_PARSE_NEED_MORE) {
                in_data = false;
            }
            if (r == POP3_PARSE_NEED_MORE) {
                assert_int_equal(left, 0);
                break;
            }
            if (r < 0) {
                sbuf_addf(&out, "!%s\n", pop3_parser_error(p));
                dead = true;
                break;
            }
            const struct pop3_reply *rep = pop3_parser_reply(p);
            size_t dl;
            const char *dd;
            switch (r) {
            case POP3_PARSE_STATUS:
                sbuf_addf(&out, "S%c", rep->ok ? '+' : '-');
                if (rep->code != NULL) {
                    sbuf_addf(&out, "[%s]", rep->code);
                }
                sbuf_addf(&out, "%s\n", rep->text);
                break;
            case POP3_PARSE_CONTINUATION:
                sbuf_addf(&out, "C:%s\n", rep->text);
                break;
            case POP3_PARSE_LINE:
                dd = pop3_parser_data(p, &dl);
                assert_int_equal(strlen(dd), dl);
                sbuf_addf(&out, "L:%s\n", dd);
                break;
            case POP3_PARSE_DATA:
                dd = pop3_parser_data(p, &dl);
                assert_true(dl > 0);
                if (!in_data) {
                    sbuf_adds(&out, "D:");
                    in_data = true;
                }
                sbuf_add(&out, dd, dl);
                break;
            case POP3_PARSE_END:
                sbuf_adds(&out, "E\n");
                break;
            default:
                fail_msg("unexpected result %d", r);
            }
            if (pop3_parser_expecting(p) == POP3_EXPECT_NOTHING && !pop3_parser_busy(p) &&
                ei < nexp) {
                pop3_parser_expect(p, exp[ei++]);
            }
        }
        pos += n;
    }
    if (!dead && pop3_parser_busy(p)) {
        sbuf_adds(&out, "~busy\n");
    }
    pop3_parser_free(p);
    return sbuf_detach(&out);
}

/* Runs the script whole, byte-at-a-time and in random chunks and checks
 * that each gives want. */
static void check_lim(const struct pop3_parser_limits *lim, const char *input, size_t len,
                      const enum pop3_expect *exp, size_t nexp, const char *want)
{
    int pieces[] = {0, 1, 2, 3, -1};
    for (size_t i = 0; i < ARRAY_SIZE(pieces); i++) {
        char *got = run(lim, input, len, exp, nexp, pieces[i]);
        if (strcmp(got, want) != 0) {
            print_error("piece %d:\n--- got\n%s\n--- want\n%s\n", pieces[i], got, want);
        }
        assert_string_equal(got, want);
        free(got);
    }
}

#define CHECK(input, want, ...)                                                                    \
    do {                                                                                           \
        enum pop3_expect exp_[] = {__VA_ARGS__};                                                   \
        check_lim(NULL, input, strlen(input), exp_, ARRAY_SIZE(exp_), want);                       \
    } while (0)

static void test_status_lines(void **state)
{
    CHECK("+OK Dovecot ready. <1896.697170952@dbc.mtview.ca.us>\r\n",
          "S+Dovecot ready. <1896.697170952@dbc.mtview.ca.us>\n", POP3_EXPECT_SINGLE);
    CHECK("+OK\r\n", "S+\n", POP3_EXPECT_SINGLE);
    CHECK("-ERR\r\n", "S-\n", POP3_EXPECT_SINGLE);
    CHECK("+ok lower case\n", "S+lower case\n", POP3_EXPECT_SINGLE);
    CHECK("-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n",
          "S-[IN-USE]Mailbox is locked by another POP3 session.\n", POP3_EXPECT_SINGLE);
    CHECK("-ERR [SYS/TEMP] try again\r\n", "S-[SYS/TEMP]try again\n", POP3_EXPECT_SINGLE);
    CHECK("-ERR [sys/perm] gone\r\n", "S-[SYS/PERM]gone\n", POP3_EXPECT_SINGLE);
    CHECK("-ERR [AUTH] Authentication failed.\r\n", "S-[AUTH]Authentication failed.\n",
          POP3_EXPECT_SINGLE);
    CHECK("-ERR [LOGIN-DELAY]\r\n", "S-[LOGIN-DELAY]\n", POP3_EXPECT_SINGLE);
    /* Not response codes: unclosed, empty or with a space inside. */
    CHECK("-ERR [IN-USE broken\r\n", "S-[IN-USE broken\n", POP3_EXPECT_SINGLE);
    CHECK("-ERR [] x\r\n", "S-[] x\n", POP3_EXPECT_SINGLE);
    CHECK("-ERR [A B] x\r\n", "S-[A B] x\n", POP3_EXPECT_SINGLE);
    /* A CR inside the line is kept. */
    CHECK("+OK a\rb\r\n", "S+a\rb\n", POP3_EXPECT_SINGLE);
    /* Several replies back to back (pipelining). */
    CHECK("+OK 1\r\n-ERR 2\r\n+OK 3\r\n", "S+1\nS-2\nS+3\n", POP3_EXPECT_SINGLE, POP3_EXPECT_SINGLE,
          POP3_EXPECT_SINGLE);
}

static void test_sasl(void **state)
{
    CHECK("+ \r\n", "C:\n", POP3_EXPECT_SASL);
    CHECK("+\r\n", "C:\n", POP3_EXPECT_SASL);
    CHECK("+ eyJzdGF0dXMiOiI0MDEifQ==\r\n-ERR [AUTH] no\r\n",
          "C:eyJzdGF0dXMiOiI0MDEifQ==\nS-[AUTH]no\n", POP3_EXPECT_SASL, POP3_EXPECT_SINGLE);
    CHECK("+OK Logged in.\r\n", "S+Logged in.\n", POP3_EXPECT_SASL);
    /* A continuation where none may come is malformed. */
    CHECK("+ abc\r\n", "!malformed reply \"+ abc\" (expected +OK or -ERR)\n", POP3_EXPECT_SINGLE);
}

static void test_lines(void **state)
{
    CHECK("+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nSASL PLAIN\r\n.\r\n",
          "S+\nL:CAPA\nL:TOP\nL:UIDL\nL:RESP-CODES\nL:PIPELINING\nL:SASL PLAIN\nE\n",
          POP3_EXPECT_LINES);
    /* Dot-stuffed listing lines and an empty listing. */
    CHECK("+OK\r\n1 ..x\r\n..\r\n.\r\n+OK 0 messages\r\n.\r\n",
          "S+\nL:1 ..x\nL:.\nE\nS+0 messages\nE\n", POP3_EXPECT_LINES, POP3_EXPECT_LINES);
    /* -ERR ends a multi-line command's reply at once. */
    CHECK("-ERR no UIDL\r\n+OK\r\n1 2\r\n.\r\n", "S-no UIDL\nS+\nL:1 2\nE\n", POP3_EXPECT_LINES,
          POP3_EXPECT_LINES);
    /* Bare LF line endings are accepted. */
    CHECK("+OK\n1 a\n.\n", "S+\nL:1 a\nE\n", POP3_EXPECT_LINES);
}

static void test_data(void **state)
{
    CHECK("+OK 10 octets\r\nSubject: x\r\n\r\nbody\r\n..dot\r\n..\r\n...\r\n.x\r\nend\r\n.\r\n",
          "S+10 octets\nD:Subject: x\n\nbody\n.dot\n.\n..\nx\nend\nE\n", POP3_EXPECT_DATA);
    /* An empty body, a body with no final line ending before the
     * terminator is impossible in POP3, so the smallest is "." alone. */
    CHECK("+OK\r\n.\r\n", "S+\nE\n", POP3_EXPECT_DATA);
    /* Bare CR kept, CR CR LF gives CR LF, bare LF accepted. */
    CHECK("+OK\r\na\rb\r\nc\r\r\nd\ne\r\n.\r\n", "S+\nD:a\rb\nc\r\nd\ne\nE\n", POP3_EXPECT_DATA);
    /* ".\r" not followed by LF is a stuffed dot before a CR. */
    CHECK("+OK\r\n.\rx\r\n.\r\n", "S+\nD:\rx\nE\n", POP3_EXPECT_DATA);
    /* Replies pipelined behind a body. */
    CHECK("+OK\r\nA\r\n.\r\n+OK\r\nB\r\n.\r\n+OK deleted\r\n",
          "S+\nD:A\nE\nS+\nD:B\nE\nS+deleted\n", POP3_EXPECT_DATA, POP3_EXPECT_DATA,
          POP3_EXPECT_SINGLE);
    /* -ERR to RETR. */
    CHECK("-ERR no such message\r\n+OK\r\n", "S-no such message\nS+\n", POP3_EXPECT_DATA,
          POP3_EXPECT_SINGLE);
    /* NUL bytes inside a body are passed through. */
    {
        const char in[] = "+OK\r\na\0b\r\n.\r\n";
        enum pop3_expect e[] = {POP3_EXPECT_DATA};
        check_lim(NULL, in, sizeof(in) - 1, e, 1, "S+\nD:a");
    }
}

static void test_large_body_chunked(void **state)
{
    /* A 300 KB body with lines of varying length, some starting with dots,
     * streamed with small chunks: the output must equal the LF version with
     * the stuffing removed, and no chunk may exceed chunk_size. */
    struct sbuf wire = {0}, want = {0};
    sbuf_adds(&wire, "+OK\r\n");
    sbuf_adds(&want, "S+\nD:");
    unsigned seed = 7;
    while (want.len < 300000) {
        seed = seed * 1103515245u + 12345u;
        size_t n = (seed >> 16) % 200;
        bool dot = (seed & 0x7) == 0;
        if (dot) {
            sbuf_adds(&wire, "..");
            sbuf_adds(&want, ".");
        }
        for (size_t i = 0; i < n; i++) {
            char c = (char)('a' + (i + n) % 26);
            sbuf_addc(&wire, c);
            sbuf_addc(&want, c);
        }
        sbuf_adds(&wire, "\r\n");
        sbuf_adds(&want, "\n");
    }
    sbuf_adds(&wire, ".\r\n");
    sbuf_adds(&want, "E\n");
    struct pop3_parser_limits lim = {.chunk_size = 100};
    enum pop3_expect e[] = {POP3_EXPECT_DATA};
    check_lim(&lim, wire.buf, wire.len, e, 1, want.buf);

    /* Chunk sizes respected. */
    struct pop3_parser *p = pop3_parser_new(&lim);
    pop3_parser_expect(p, POP3_EXPECT_DATA);
    const char *d = wire.buf;
    size_t left = wire.len, total = 0;
    int r;
    for (;;) {
        size_t used;
        r = pop3_parser_feed(p, d, left, &used);
        d += used;
        left -= used;
        if (r == POP3_PARSE_DATA) {
            size_t n;
            pop3_parser_data(p, &n);
            assert_true(n <= 100);
            total += n;
        }
        if (r == POP3_PARSE_END || r <= 0) {
            break;
        }
    }
    assert_int_equal(r, POP3_PARSE_END);
    assert_int_equal(total, want.len - strlen("S+\nD:") - strlen("E\n"));
    assert_int_equal(left, 0);
    pop3_parser_free(p);
    sbuf_free(&wire);
    sbuf_free(&want);
}

static void test_hostile(void **state)
{
    struct pop3_parser_limits lim = {.max_line = 64, .max_data_line = 128, .max_body = 1000};
    /* An endless status line. */
    {
        char in[200];
        memset(in, 'A', sizeof(in));
        memcpy(in, "+OK ", 4);
        enum pop3_expect e[] = {POP3_EXPECT_SINGLE};
        check_lim(&lim, in, sizeof(in), e, 1, "!reply line longer than 64 bytes\n");
    }
    /* A status line of exactly the limit is fine. */
    {
        char in[66];
        memset(in, 'A', 64);
        memcpy(in, "+OK ", 4);
        memcpy(in + 64, "\r\n", 2);
        enum pop3_expect e[] = {POP3_EXPECT_SINGLE};
        char want[80];
        snprintf(want, sizeof(want), "S+%.*s\n", 60, in + 4);
        check_lim(&lim, in, sizeof(in), e, 1, want);
    }
    /* An endless listing line. */
    {
        struct sbuf in = {0};
        sbuf_adds(&in, "+OK\r\n1 ");
        for (int i = 0; i < 100; i++) {
            sbuf_addc(&in, 'u');
        }
        enum pop3_expect e[] = {POP3_EXPECT_LINES};
        check_lim(&lim, in.buf, in.len, e, 1, "S+\n!reply line longer than 64 bytes\n");
        sbuf_free(&in);
    }
    /* An endless body line. */
    {
        struct sbuf in = {0};
        sbuf_adds(&in, "+OK\r\n");
        for (int i = 0; i < 300; i++) {
            sbuf_addc(&in, 'x');
        }
        enum pop3_expect e[] = {POP3_EXPECT_DATA};
        char *got = run(&lim, in.buf, in.len, e, 1, 0);
        assert_non_null(strstr(got, "!line in message body longer than 128 bytes\n"));
        free(got);
        got = run(&lim, in.buf, in.len, e, 1, 1);
        assert_non_null(strstr(got, "!line in message body longer than 128 bytes\n"));
        free(got);
        sbuf_free(&in);
    }
    /* A body over max_body in short lines. */
    {
        struct sbuf in = {0};
        sbuf_adds(&in, "+OK\r\n");
        for (int i = 0; i < 200; i++) {
            sbuf_adds(&in, "abcdefgh\r\n");
        }
        enum pop3_expect e[] = {POP3_EXPECT_DATA};
        char *got = run(&lim, in.buf, in.len, e, 1, 3);
        assert_non_null(strstr(got, "!message body larger than 1000 bytes\n"));
        free(got);
        sbuf_free(&in);
    }
    /* A missing terminator: the reply never completes. */
    CHECK("+OK\r\nSubject: x\r\n\r\nbody\r\n", "S+\nD:Subject: x\n\nbody\n~busy\n",
          POP3_EXPECT_DATA);
    CHECK("+OK\r\n1 a\r\n", "S+\nL:1 a\n~busy\n", POP3_EXPECT_LINES);
    /* Garbage instead of a status. */
    CHECK("HTTP/1.1 400 Bad Request\r\n",
          "!malformed reply \"HTTP/1.1 400 Bad Request\" (expected +OK or -ERR)\n",
          POP3_EXPECT_SINGLE);
    CHECK("+OKAY\r\n", "!malformed reply \"+OKAY\" (expected +OK or -ERR)\n", POP3_EXPECT_SINGLE);
    /* NUL in a status line. */
    {
        const char in[] = "+OK a\0b\r\n";
        enum pop3_expect e[] = {POP3_EXPECT_SINGLE};
        check_lim(NULL, in, sizeof(in) - 1, e, 1, "!NUL byte in a reply line\n");
    }
    /* Bytes when nothing is expected (an unsolicited reply after the last
     * command's). The excerpt shows what arrived in that read. */
    {
        const char *in = "+OK\r\n+OK extra\r\n";
        enum pop3_expect e[] = {POP3_EXPECT_SINGLE};
        char *got = run(NULL, in, strlen(in), e, 1, 0);
        assert_string_equal(got, "S+\n!unexpected data from the server: \"+OK extra\\x0d\\x0a\"\n");
        free(got);
        got = run(NULL, in, strlen(in), e, 1, 1);
        assert_string_equal(got, "S+\n!unexpected data from the server: \"+\"\n");
        free(got);
    }
    /* Control characters in the excerpt are escaped. */
    CHECK("\x1b[31m\r\n", "!malformed reply \"\\x1b[31m\" (expected +OK or -ERR)\n",
          POP3_EXPECT_SINGLE);
}

static void test_errors_are_final_and_reset(void **state)
{
    struct pop3_parser *p = pop3_parser_new(NULL);
    size_t used;
    pop3_parser_expect(p, POP3_EXPECT_SINGLE);
    assert_int_equal(pop3_parser_feed(p, "bad\r\n", 5, &used), POP3_PARSE_ERROR);
    assert_int_equal(pop3_parser_feed(p, "+OK\r\n", 5, &used), POP3_PARSE_ERROR);
    assert_int_equal(used, 0);
    /* Half a reply, then reset (as after STLS): the parser starts over. */
    pop3_parser_reset(p);
    assert_false(pop3_parser_busy(p));
    pop3_parser_expect(p, POP3_EXPECT_SINGLE);
    assert_int_equal(pop3_parser_feed(p, "+OK hal", 7, &used), POP3_PARSE_NEED_MORE);
    assert_true(pop3_parser_busy(p));
    pop3_parser_reset(p);
    pop3_parser_expect(p, POP3_EXPECT_SINGLE);
    assert_int_equal(pop3_parser_feed(p, "+OK new\r\nrest", 13, &used), POP3_PARSE_STATUS);
    assert_int_equal(used, 9);
    assert_string_equal(pop3_parser_reply(p)->text, "new");
    assert_string_equal(pop3_parser_reply(p)->line, "+OK new");
    assert_false(pop3_parser_busy(p));
    assert_int_equal(pop3_parser_expecting(p), POP3_EXPECT_NOTHING);
    pop3_parser_free(p);
}

/* The small reply helpers of sync/pop3.c live in ms_sync too; they are
 * tested here. */
static void test_reply_helpers(void **state)
{
    unsigned n = 0;
    uint64_t sz = 0;
    const char *rest;
    assert_true(pop3_parse_stat("2 320", &n, &sz));
    assert_int_equal(n, 2);
    assert_int_equal(sz, 320);
    assert_true(pop3_parse_stat("0 0 extra", &n, &sz));
    assert_false(pop3_parse_stat("x 1", &n, &sz));
    assert_false(pop3_parse_stat("1", &n, &sz));
    assert_false(pop3_parse_stat("1 -5", &n, &sz));
    assert_true(pop3_parse_listing("12 whqtswO00WBw418f9t5JxYwZ", &n, &rest));
    assert_int_equal(n, 12);
    assert_string_equal(rest, "whqtswO00WBw418f9t5JxYwZ");
    assert_false(pop3_parse_listing("0 x", &n, &rest));
    assert_false(pop3_parse_listing(" 1 x", &n, &rest));
    assert_false(pop3_parse_listing("1x", &n, &rest));
    assert_int_equal(pop3_code_kind("IN-USE", POP3_ERRKIND_PERMANENT), POP3_ERRKIND_TRANSIENT);
    assert_int_equal(pop3_code_kind("LOGIN-DELAY", POP3_ERRKIND_PERMANENT), POP3_ERRKIND_TRANSIENT);
    assert_int_equal(pop3_code_kind("SYS/TEMP", POP3_ERRKIND_PERMANENT), POP3_ERRKIND_TRANSIENT);
    assert_int_equal(pop3_code_kind("SYS/PERM", POP3_ERRKIND_TRANSIENT), POP3_ERRKIND_PERMANENT);
    assert_int_equal(pop3_code_kind("AUTH", POP3_ERRKIND_PERMANENT), POP3_ERRKIND_AUTH);
    assert_int_equal(pop3_code_kind("AUTHX", POP3_ERRKIND_PERMANENT), POP3_ERRKIND_PERMANENT);
    assert_int_equal(pop3_code_kind(NULL, POP3_ERRKIND_AUTH), POP3_ERRKIND_AUTH);
}

static void test_summary(void **state)
{
    struct popsync_result r = {.account = "work",
                               .downloaded = 12,
                               .bytes = 3565158,
                               .skipped_size = 1,
                               .skipped_since = 1,
                               .deleted_on_server = 1,
                               .known = 40};
    char *s = popsync_summary(&r);
    assert_string_equal(s, "work: 12 new (3.4 MB), 2 skipped (over max_size: 1, before since: "
                           "1), 1 deleted on the server, 40 already here");
    free(s);
    r = (struct popsync_result){.account = "p", .kind = SYNC_AUTH, .error = "x: refused"};
    s = popsync_summary(&r);
    assert_string_equal(s, "p: 0 new, 0 deleted on the server, 0 already here; error (auth): "
                           "x: refused");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_lines),
        cmocka_unit_test(test_sasl),
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_data),
        cmocka_unit_test(test_large_body_chunked),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_errors_are_final_and_reset),
        cmocka_unit_test(test_reply_helpers),
        cmocka_unit_test(test_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
