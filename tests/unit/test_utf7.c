/* LINK: ms_sync ms_core */
/* Tests for modified UTF-7 (RFC 3501 5.1.3) <-> UTF-8. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "sync/utf7.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct pair {
    const char *utf7;
    const char *utf8;
};

/* Each pair converts exactly both ways. */
static const struct pair pairs[] = {
    {"", ""},
    {"INBOX", "INBOX"},
    {"&-", "&"},
    {"Tom &- Jerry", "Tom & Jerry"},
    {"&-&-", "&&"},
    {"~peter/mail/&U,BTFw-/&ZeVnLIqe-",
     "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"},
    {"Entw&APw-rfe", "Entw\xc3\xbc"
                     "rfe"},
    {"&AMQA1gDc-", "\xc3\x84\xc3\x96\xc3\x9c"},
    {"Gel&APY-schte Elemente", "Gel\xc3\xb6schte Elemente"},
    {"&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-", "\xd0\x9e\xd1\x82\xd0\xbf\xd1\x80\xd0\xb0\xd0\xb2\xd0"
                                           "\xbb\xd0\xb5\xd0\xbd\xd0\xbd\xd1\x8b\xd0\xb5"},
    {"&ZeVnLIqe-&-", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e&"},
    {"&2D3eAA-", "\xf0\x9f\x98\x80"}, /* U+1F600, one surrogate pair */
    {"Party &2Dzfidg834A-!", "Party \xf0\x9f\x8e\x89\xf0\x9f\x8e\x80!"}, /* U+1F389 U+1F380 */
    {"&2D3eANg93gE-", "\xf0\x9f\x98\x80\xf0\x9f\x98\x81"},
    {"a&2D3eAA-b", "a\xf0\x9f\x98\x80"
                   "b"},
    {"&AAk-", "\t"}, /* control characters are BASE64 too */
    {"&AH8-", "\x7f"},
    {"&AKA-", "\xc2\xa0"},            /* U+00A0 */
    {"&,,8-", "\xef\xbf\xbf"},        /* U+FFFF, all ones: ',' is 63 */
    {"&2,,f,w-", "\xf4\x8f\xbf\xbf"}, /* U+10FFFF */
    {"[Gmail]/Gesendet", "[Gmail]/Gesendet"},
};

static void test_pairs(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(pairs); i++) {
        char *out = (char *)1;
        assert_int_equal(utf7_to_utf8(pairs[i].utf7, &out), 0);
        assert_string_equal(out, pairs[i].utf8);
        free(out);
        out = (char *)1;
        assert_int_equal(utf8_to_utf7(pairs[i].utf8, &out), 0);
        assert_string_equal(out, pairs[i].utf7);
        free(out);
    }
}

/* Every code point class round trips: ASCII, 2-, 3- and 4-byte UTF-8, in
 * runs of different lengths (which leave 0, 2 or 4 bits over). */
static void test_round_trip_table(void **state)
{
    (void)state;
    static const char *const names[] = {
        "A\xc3\xa9",
        "\xc3\xa9",
        "\xc3\xa9\xc3\xa9",
        "\xc3\xa9\xc3\xa9\xc3\xa9",
        "x\xe2\x82\xac-y",
        "&\xe2\x82\xac&",
        "\xf0\x90\x80\x80",
        "--&--",
        "\xe4\xb8\xad\xe6\x96\x87/\xe6\x96\x87\xe4\xbb\xb6\xe5\xa4\xb9",
        "\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d",
        "Archive/2024/\xce\xb1\xce\xb2\xce\xb3",
        "\x01\x02\x03",
        ",+/&-",
    };
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        char *u7 = NULL, *back = NULL;
        assert_int_equal(utf8_to_utf7(names[i], &u7), 0);
        for (const char *c = u7; *c != '\0'; c++) {
            assert_true(*c >= 0x20 && *c <= 0x7e);
        }
        assert_int_equal(utf7_to_utf8(u7, &back), 0);
        assert_string_equal(back, names[i]);
        free(u7);
        free(back);
    }
    /* Every BMP code point outside the surrogates, one at a time and in a
     * run of three (0, 2 and 4 leftover bits). */
    for (uint32_t cp = 0x01; cp < 0x10000; cp += (cp < 0x800 ? 1 : 7)) {
        if (cp >= 0xd800 && cp <= 0xdfff) {
            continue;
        }
        char in[16];
        size_t n = 0;
        for (int k = 0; k < 3; k++) {
            if (cp < 0x80) {
                in[n++] = (char)cp;
            } else if (cp < 0x800) {
                in[n++] = (char)(0xc0 | (cp >> 6));
                in[n++] = (char)(0x80 | (cp & 0x3f));
            } else {
                in[n++] = (char)(0xe0 | (cp >> 12));
                in[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
                in[n++] = (char)(0x80 | (cp & 0x3f));
            }
            in[n] = '\0';
            char *u7 = NULL, *back = NULL;
            assert_int_equal(utf8_to_utf7(in, &u7), 0);
            assert_int_equal(utf7_to_utf8(u7, &back), 0);
            assert_string_equal(back, in);
            free(u7);
            free(back);
        }
    }
}

static void test_malformed_utf7(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "&",               /* not terminated */
        "abc&",            /* not terminated */
        "&U,BTFw",         /* not terminated */
        "&U,BTFw/-",       /* '/' is not modified BASE64 */
        "&U,BT=w-",        /* '=' padding is not used */
        "&U,BT Fw-",       /* space inside BASE64 */
        "&A-",             /* 6 bits: less than one UTF-16 unit */
        "&AM-",            /* 12 bits: less than one UTF-16 unit */
        "&APx-",           /* U+00FC with non-zero leftover bits */
        "&APwA-",          /* a whole extra BASE64 character (8 bits left) */
        "&2D0-",           /* lone high surrogate */
        "&3gA-",           /* lone low surrogate */
        "&2D3YPQ-",        /* high surrogate followed by a high surrogate */
        "&2D0AQQ-",        /* high surrogate followed by a non-surrogate */
        "&AEE-",           /* "A" (printable ASCII) must not be encoded */
        "&ACY-",           /* "&" must be "&-", not BASE64 */
        "&ACA-",           /* space is printable ASCII too */
        "&AH4-",           /* "~" as well */
        "&AAA-",           /* U+0000 */
        "&U,A-&ZeU-",      /* "-&": a null shift between BASE64 runs */
        "Entw\xc3\xbcrfe", /* raw 8-bit */
        "tab\there",       /* raw control character */
        "\x7f",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *out = (char *)1;
        int r = utf7_to_utf8(bad[i], &out);
        if (r != -EILSEQ) {
            print_error("accepted \"%s\"\n", bad[i]);
        }
        assert_int_equal(r, -EILSEQ);
        assert_null(out);
    }
    /* Close relatives of those are fine. */
    char *out = NULL;
    assert_int_equal(utf7_to_utf8("&AKA-&-", &out), 0); /* run then "&-" */
    assert_string_equal(out, "\xc2\xa0&");
    free(out);
    assert_int_equal(utf7_to_utf8("&AKA-x&AKA-", &out), 0);
    assert_string_equal(out, "\xc2\xa0x\xc2\xa0");
    free(out);
}

static void test_malformed_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "\x80",                     /* stray continuation byte */
        "ab\xbf",                   /* stray continuation byte */
        "\xc3",                     /* truncated */
        "\xe6\x97",                 /* truncated */
        "\xf0\x9f\x98",             /* truncated */
        "\xc3x",                    /* continuation missing */
        "\xc0\xaf",                 /* overlong '/' */
        "\xc1\xbf",                 /* overlong */
        "\xe0\x80\xaf",             /* overlong '/' in 3 bytes */
        "\xe0\x9f\xbf",             /* overlong U+07FF */
        "\xf0\x80\x80\xaf",         /* overlong '/' in 4 bytes */
        "\xf0\x8f\xbf\xbf",         /* overlong U+FFFF */
        "\xed\xa0\x80",             /* U+D800 */
        "\xed\xbf\xbf",             /* U+DFFF */
        "\xed\xa0\xbd\xed\xb8\x80", /* CESU-8 surrogate pair */
        "\xf4\x90\x80\x80",         /* U+110000 */
        "\xf5\x80\x80\x80",         /* beyond */
        "\xf8\x88\x80\x80\x80",     /* 5-byte form */
        "\xfe",
        "\xff",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *out = (char *)1;
        int r = utf8_to_utf7(bad[i], &out);
        if (r != -EILSEQ) {
            print_error("accepted case %zu\n", i);
        }
        assert_int_equal(r, -EILSEQ);
        assert_null(out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pairs),
        cmocka_unit_test(test_round_trip_table),
        cmocka_unit_test(test_malformed_utf7),
        cmocka_unit_test(test_malformed_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
