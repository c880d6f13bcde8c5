/* LINK: ms_sync ms_store ms_core */
/* The long-lived account (sync/account.h): password_command runs once per
 * account however many connections ask, again only after the server
 * refused the secret; waiters share one run; a cancelled waiter hears
 * nothing; the index is opened once and holds the account lock; the
 * folder list and the dirty set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sync/account.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "core/util.h"

struct got {
    int calls;
    int err;
    char secret[64];
};

static void on_secret(int err, const char *secret, const char *msg, void *arg)
{
    (void)msg;
    struct got *g = arg;
    g->calls++;
    g->err = err;
    snprintf(g->secret, sizeof(g->secret), "%s", secret != NULL ? secret : "");
}

struct fixture {
    char dir[64];
    char counter[128];
    char *argv[4];
    char script[512];
    struct sync_account acct;
    uv_loop_t loop;
};

/* A password_command that counts its runs in a file and prints the
 * secret "s3cret-N" (N = the run). */
static struct fixture *fixture_new(void)
{
    struct fixture *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/test-account-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->counter, sizeof(f->counter), "%s/runs", f->dir);
    snprintf(f->script, sizeof(f->script),
             "n=$(cat '%s' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '%s'; echo s3cret-$n",
             f->counter, f->counter);
    f->argv[0] = "/bin/sh";
    f->argv[1] = "-c";
    f->argv[2] = f->script;
    f->argv[3] = NULL;
    f->acct.name = "acct";
    f->acct.state_dir = f->dir;
    f->acct.password_command = f->argv;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    return f;
}

static int runs(const struct fixture *f)
{
    FILE *fp = fopen(f->counter, "r");
    if (fp == NULL) {
        return 0;
    }
    int n = 0;
    assert_int_equal(fscanf(fp, "%d", &n), 1);
    fclose(fp);
    return n;
}

static void fixture_free(struct fixture *f)
{
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
}

static void test_secret_once(void **state)
{
    (void)state;
    struct fixture *f = fixture_new();
    struct account *a = account_new(&f->loop, &f->acct, false);
    struct got g1 = {0}, g2 = {0}, g3 = {0};
    struct account_wait *w1, *w2, *w3;
    /* Two connections ask at once: one run of the command. */
    assert_int_equal(account_secret(a, on_secret, &g1, &w1), 0);
    assert_int_equal(account_secret(a, on_secret, &g2, &w2), 0);
    assert_int_equal(g1.calls + g2.calls, 0); /* never synchronously */
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(g1.calls, 1);
    assert_int_equal(g2.calls, 1);
    assert_string_equal(g1.secret, "s3cret-1");
    assert_string_equal(g2.secret, "s3cret-1");
    assert_int_equal(runs(f), 1);
    /* A later connection gets the kept secret without a run. */
    assert_int_equal(account_secret(a, on_secret, &g3, &w3), 0);
    assert_int_equal(g3.calls, 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(g3.calls, 1);
    assert_string_equal(g3.secret, "s3cret-1");
    assert_int_equal(runs(f), 1);
    assert_int_equal(account_totals(a)->secret_fetches, 1);
    /* The server refused it: the next ask runs the command again. */
    account_secret_refused(a);
    memset(&g3, 0, sizeof(g3));
    assert_int_equal(account_secret(a, on_secret, &g3, &w3), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(g3.calls, 1);
    assert_string_equal(g3.secret, "s3cret-2");
    assert_int_equal(runs(f), 2);
    assert_int_equal(account_totals(a)->secret_fetches, 2);
    account_free(a);
    fixture_free(f);
}

static void test_secret_cancel(void **state)
{
    (void)state;
    struct fixture *f = fixture_new();
    struct account *a = account_new(&f->loop, &f->acct, false);
    struct got g1 = {0}, g2 = {0};
    struct account_wait *w1, *w2;
    assert_int_equal(account_secret(a, on_secret, &g1, &w1), 0);
    assert_int_equal(account_secret(a, on_secret, &g2, &w2), 0);
    /* One waiter leaves: the other still gets the answer. */
    account_secret_cancel(w1);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(g1.calls, 0);
    assert_int_equal(g2.calls, 1);
    assert_string_equal(g2.secret, "s3cret-1");
    /* A waiter on the kept secret cancelled: no callback. */
    struct got g3 = {0};
    struct account_wait *w3;
    assert_int_equal(account_secret(a, on_secret, &g3, &w3), 0);
    account_secret_cancel(w3);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(g3.calls, 0);
    /* Every waiter leaves while the command runs: nobody is called and
     * nothing is kept from it. */
    account_secret_refused(a);
    struct got g4 = {0};
    struct account_wait *w4;
    assert_int_equal(account_secret(a, on_secret, &g4, &w4), 0);
    account_secret_cancel(w4);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(g4.calls, 0);
    account_free(a);
    fixture_free(f);
}

static void test_secret_failure_not_kept(void **state)
{
    (void)state;
    struct fixture *f = fixture_new();
    /* Fails on its first run, prints a secret on the second. */
    snprintf(f->script, sizeof(f->script),
             "n=$(cat '%s' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '%s'; "
             "[ $n -gt 1 ] || { echo locked >&2; exit 1; }; echo ok-$n",
             f->counter, f->counter);
    struct account *a = account_new(&f->loop, &f->acct, false);
    struct got g = {0};
    struct account_wait *w;
    assert_int_equal(account_secret(a, on_secret, &g, &w), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(g.calls, 1);
    assert_true(g.err < 0);
    memset(&g, 0, sizeof(g));
    assert_int_equal(account_secret(a, on_secret, &g, &w), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(g.err, 0);
    assert_string_equal(g.secret, "ok-2");
    account_free(a);
    fixture_free(f);
}

static void test_no_secret(void **state)
{
    (void)state;
    struct fixture *f = fixture_new();
    f->acct.password_command = NULL;
    struct account *a = account_new(&f->loop, &f->acct, false);
    struct got g = {0};
    struct account_wait *w;
    assert_int_equal(account_secret(a, on_secret, &g, &w), -EINVAL);
    account_free(a);
    fixture_free(f);
}

static void test_index_once_and_locked(void **state)
{
    (void)state;
    struct fixture *f = fixture_new();
    struct account *a = account_new(&f->loop, &f->acct, false);
    struct idx *i1 = NULL, *i2 = NULL;
    char *err = NULL;
    assert_int_equal(account_index(a, &i1, &err), 0);
    assert_int_equal(account_index(a, &i2, &err), 0);
    assert_ptr_equal(i1, i2);
    /* The account lock is held: a second account of the same name and
     * state directory cannot open the index. */
    struct account *b = account_new(&f->loop, &f->acct, false);
    struct idx *i3 = NULL;
    assert_int_equal(account_index(b, &i3, &err), -EWOULDBLOCK);
    assert_non_null(err);
    free(err);
    account_free(b);
    account_free(a);
    /* Released with the account. */
    b = account_new(&f->loop, &f->acct, false);
    assert_int_equal(account_index(b, &i3, &err), 0);
    account_free(b);
    fixture_free(f);
}

static void test_folders_and_dirty(void **state)
{
    (void)state;
    struct fixture *f = fixture_new();
    struct account *a = account_new(&f->loop, &f->acct, false);
    struct imap_status_info st = {
        .have = IMAP_STATUS_MESSAGES | IMAP_STATUS_UIDNEXT, .messages = 3, .uidnext = 9};
    account_list_begin(a);
    account_list_add(a, "INBOX", 0, true, &st);
    account_list_add(a, "Lists/dev", IMAP_LIST_HASNOCHILDREN, false, NULL);
    assert_int_equal(account_nfolders(a), 2);
    const struct account_folder *in = account_folder(a, "INBOX");
    assert_non_null(in);
    assert_true(in->has_status);
    assert_int_equal(in->status.uidnext, 9);
    assert_string_equal(in->status.folder, "INBOX");
    assert_null(account_folder(a, "Archive"));
    /* Dirty marks: once each, in order, cleared one by one; a folder not
     * listed may be marked (NOTIFY of a new folder). */
    assert_true(account_mark_dirty(a, "Lists/dev"));
    assert_true(account_mark_dirty(a, "INBOX"));
    assert_false(account_mark_dirty(a, "Lists/dev"));
    assert_true(account_mark_dirty(a, "New"));
    size_t n;
    const char *const *d = account_dirty(a, &n);
    assert_int_equal(n, 3);
    assert_string_equal(d[0], "Lists/dev");
    assert_string_equal(d[1], "INBOX");
    assert_string_equal(d[2], "New");
    account_clear_dirty(a, "INBOX");
    assert_false(account_is_dirty(a, "INBOX"));
    assert_true(account_is_dirty(a, "New"));
    assert_int_equal(account_ndirty(a), 2);
    /* A new LIST replaces the folders but not the marks. */
    account_list_begin(a);
    account_list_add(a, "Archive", 0, false, NULL);
    assert_null(account_folder(a, "INBOX"));
    assert_non_null(account_folder(a, "Archive"));
    assert_int_equal(account_ndirty(a), 2);
    account_note_login(a, IMAP_CAP_QRESYNC);
    assert_int_equal(account_caps(a), IMAP_CAP_QRESYNC);
    assert_int_equal(account_totals(a)->logins, 1);
    account_free(a);
    fixture_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secret_once),
        cmocka_unit_test(test_secret_cancel),
        cmocka_unit_test(test_secret_failure_not_kept),
        cmocka_unit_test(test_no_secret),
        cmocka_unit_test(test_index_once_and_locked),
        cmocka_unit_test(test_folders_and_dirty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
