/* LINK: ms_daemon ms_sync ms_store ms_config ms_core */
/* Tests for the text edit of `mailsync init` (daemon/init.c): the new
 * account lands inside the accounts mapping, with the file's indentation,
 * after the last account's own comments, and every other byte of the file
 * is kept; shapes it cannot edit as text are refused with a reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/init.h"

static const char *const body[] = {"provider: gmail", "user: me@example.com",
                                   "password_command: pass", "maildir: /m/new"};

/* Adds account "new" to text and compares the whole result with want. */
static void expect_add(const char *text, const char *want)
{
    char *out = NULL, *err = NULL;
    size_t line = 0;
    int rc = init_add_account_text(text, "new", body, 4, &out, &line, &err);
    if (rc != 0) {
        print_error("unexpected error %d: %s\n", rc, err != NULL ? err : "");
    }
    assert_int_equal(rc, 0);
    assert_string_equal(out, want);
    free(out);
}

static void expect_refused(const char *text, const char *want_err)
{
    char *out = NULL, *err = NULL;
    size_t line = 0;
    int rc = init_add_account_text(text, "new", body, 4, &out, &line, &err);
    assert_int_equal(rc, -EINVAL);
    assert_null(out);
    assert_non_null(err);
    assert_string_equal(err, want_err);
    free(err);
}

static void test_empty_and_comments_only(void **state)
{
    expect_add("", "accounts:\n"
                   "  new:\n"
                   "    provider: gmail\n"
                   "    user: me@example.com\n"
                   "    password_command: pass\n"
                   "    maildir: /m/new\n");
    /* No newline at the end of the last comment: one is added. */
    expect_add("# my mail\n# no accounts yet", "# my mail\n# no accounts yet\n"
                                               "accounts:\n"
                                               "  new:\n"
                                               "    provider: gmail\n"
                                               "    user: me@example.com\n"
                                               "    password_command: pass\n"
                                               "    maildir: /m/new\n");
}

static void test_empty_accounts_key(void **state)
{
    /* `accounts:` with nothing under it, then another top-level key. */
    expect_add("# header\naccounts:   # mine\n\nstate_dir: /s\n", "# header\naccounts:   # mine\n"
                                                                  "  new:\n"
                                                                  "    provider: gmail\n"
                                                                  "    user: me@example.com\n"
                                                                  "    password_command: pass\n"
                                                                  "    maildir: /m/new\n"
                                                                  "\nstate_dir: /s\n");
}

static void test_no_accounts_key(void **state)
{
    expect_add("state_dir: /s", "state_dir: /s\n"
                                "accounts:\n"
                                "  new:\n"
                                "    provider: gmail\n"
                                "    user: me@example.com\n"
                                "    password_command: pass\n"
                                "    maildir: /m/new\n");
}

static void test_indentation_followed(void **state)
{
    /* Four spaces per level, accounts not separated by blank lines, and a
     * top-level key after the accounts with a comment of its own. */
    expect_add("accounts:\n"
               "    a:\n"
               "        host: h   # the host\n"
               "        folders:\n"
               "            - INBOX\n"
               "            - \"Lists/%\"\n"
               "    b:\n"
               "        host: h\n"
               "        pop:\n"
               "            since: 2020-01-01\n"
               "# where state goes\n"
               "state_dir: /s\n",
               "accounts:\n"
               "    a:\n"
               "        host: h   # the host\n"
               "        folders:\n"
               "            - INBOX\n"
               "            - \"Lists/%\"\n"
               "    b:\n"
               "        host: h\n"
               "        pop:\n"
               "            since: 2020-01-01\n"
               "    new:\n"
               "        provider: gmail\n"
               "        user: me@example.com\n"
               "        password_command: pass\n"
               "        maildir: /m/new\n"
               "# where state goes\n"
               "state_dir: /s\n");
}

static void test_blank_lines_and_trailing_comments(void **state)
{
    /* Accounts separated by blank lines get one before the new account;
     * a comment indented into the last account stays with it, a comment
     * at the accounts' level after a blank line stays after the new one. */
    expect_add("accounts:\n"
               "  a:\n"
               "    host: h\n"
               "\n"
               "  # the second one\n"
               "  b:\n"
               "    host: |\n"
               "      literal\n"
               "    # max_size: 10M\n"
               "\n"
               "  # c: later\n",
               "accounts:\n"
               "  a:\n"
               "    host: h\n"
               "\n"
               "  # the second one\n"
               "  b:\n"
               "    host: |\n"
               "      literal\n"
               "    # max_size: 10M\n"
               "\n"
               "  new:\n"
               "    provider: gmail\n"
               "    user: me@example.com\n"
               "    password_command: pass\n"
               "    maildir: /m/new\n"
               "\n"
               "  # c: later\n");
}

static void test_no_final_newline(void **state)
{
    expect_add("accounts:\n  a:\n    host: h", "accounts:\n  a:\n    host: h\n"
                                               "  new:\n"
                                               "    provider: gmail\n"
                                               "    user: me@example.com\n"
                                               "    password_command: pass\n"
                                               "    maildir: /m/new\n");
}

static void test_duplicate(void **state)
{
    char *out = NULL, *err = NULL;
    size_t line = 0;
    int rc = init_add_account_text("# x\naccounts:\n  a: {}\n  new:\n    host: h\n", "new", body, 4,
                                   &out, &line, &err);
    assert_int_equal(rc, -EEXIST);
    assert_int_equal(line, 4);
    assert_null(out);
}

static void test_refused_shapes(void **state)
{
    expect_refused("accounts: {a: {host: h}}\n",
                   "line 1: 'accounts' is written in flow style ({...}); add the account there by "
                   "hand, or write the accounts as indented blocks");
    expect_refused("accounts: [a]\n", "line 1: 'accounts' is not a mapping of account names");
    expect_refused("- a\n", "the top level is not a block mapping (key: value lines)");
    expect_refused("accounts:\n  a: [\n", "line 3: did not find expected node content");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_and_comments_only),
        cmocka_unit_test(test_empty_accounts_key),
        cmocka_unit_test(test_no_accounts_key),
        cmocka_unit_test(test_indentation_followed),
        cmocka_unit_test(test_blank_lines_and_trailing_comments),
        cmocka_unit_test(test_no_final_newline),
        cmocka_unit_test(test_duplicate),
        cmocka_unit_test(test_refused_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
