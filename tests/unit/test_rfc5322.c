/* LINK: ms_sync ms_core */
/* Tests for the RFC 5322 header lookup and Date parser (sync/rfc5322.h)
 * behind pop.since: current, obsolete and asctime forms parse to the right
 * instant, garbage and out-of-range values are refused, and a header value
 * is found only in the header block, unfolded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "sync/rfc5322.h"

static void check_date(const char *s, long long want)
{
    time_t t = 0;
    bool ok = rfc5322_parse_date(s, &t);
    if (want < 0) {
        if (ok) {
            print_error("\"%s\" parsed as %lld\n", s, (long long)t);
        }
        assert_false(ok);
        return;
    }
    if (!ok) {
        print_error("\"%s\" did not parse\n", s);
    }
    assert_true(ok);
    assert_int_equal((long long)t, want);
}

static void test_dates(void **state)
{
    /* 2003-07-01 10:52:37 UTC = 1057056757 */
    check_date("Tue, 1 Jul 2003 10:52:37 +0200", 1057056757 - 7200);
    check_date("1 Jul 2003 10:52:37 +0000", 1057056757);
    check_date("Tue,  1 Jul 2003 10:52:37 -0000 (UTC)", 1057056757);
    check_date("tue, 01 JUL 2003 10:52:37 GMT", 1057056757);
    check_date("Tue, 1 Jul 2003 10:52 +0000", 1057056720);
    /* Obsolete forms: two-digit year, spaces around ':', comments, named
     * zones, military zones (as UTC), no zone at all. */
    check_date("Tue, 1 Jul 03 10:52:37 +0000", 1057056757);
    check_date("Tue, 1 Jul 99 10:52:37 +0000", 930826357);
    check_date("Tue, 1 Jul 103 10:52:37 +0000", 1057056757);
    check_date("Tue, 1 Jul 2003 10 : 52 : 37 +0000", 1057056757);
    check_date("(comment) Tue, 1 (x (nested)) Jul 2003 10:52:37 EDT", 1057056757 + 4 * 3600);
    check_date("Tue, 1 Jul 2003 10:52:37 PST", 1057056757 + 8 * 3600);
    check_date("Tue, 1 Jul 2003 10:52:37 Z", 1057056757);
    check_date("Tue, 1 Jul 2003 10:52:37 A", 1057056757);
    check_date("Tue, 1 Jul 2003 10:52:37", 1057056757);
    check_date("1 July 2003 10:52:37 +0000", 1057056757);
    /* asctime, seen in old and broken mail. */
    check_date("Tue Jul  1 10:52:37 2003", 1057056757);
    check_date("Tue Jul  1 10:52:37 UTC 2003", 1057056757);
    /* Garbage and out-of-range values. */
    check_date("", -1);
    check_date("yesterday", -1);
    check_date("Tue, 1 Foo 2003 10:52:37 +0000", -1);
    check_date("Tue, 32 Jul 2003 10:52:37 +0000", -1);
    check_date("Tue, 1 Jul 2003 25:52:37 +0000", -1);
    check_date("Tue, 1 Jul 2003 10:52:37 +9999", -1);
    check_date("Tue, 1 Jul 2003", -1);
    check_date("((((((((((", -1);
    check_date("Tue, 99999999999999999999 Jul 2003 10:52:37 +0000", -1);
    check_date("Tue, 1 Jul 99999999999999999999 10:52:37 +0000", -1);
}

static void test_find_header(void **state)
{
    const char *h =
        "Subject: a\nDATE: Tue, 1 Jul\n 2003 10:52:37\n\t+0000\nX-Date: no\n\nDate: body\n";
    char *v = rfc5322_find_header(h, strlen(h), "Date");
    assert_non_null(v);
    assert_string_equal(v, " Tue, 1 Jul 2003 10:52:37\t+0000");
    time_t t;
    assert_true(rfc5322_parse_date(v, &t));
    assert_int_equal((long long)t, 1057056757);
    free(v);
    /* Only the header block counts. */
    const char *h2 = "Subject: a\n\nDate: Tue, 1 Jul 2003 10:52:37 +0000\n";
    assert_null(rfc5322_find_header(h2, strlen(h2), "Date"));
    assert_null(rfc5322_find_header("", 0, "Date"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_find_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
