/* LINK: ms_store ms_core */
/* The store's journal of its own changes (store/echo.h), against the
 * kernel's real inotify events: every event that a delivery, a flag
 * rename (in cur/ and from new/), a removal, a move between folders and a
 * removal by identity produce in watched new/ and cur/ is taken as the
 * store's own, exactly as many times as it happens; another program's
 * rename and removal of the same files are not; a failed operation leaves
 * no note behind; nothing is taken while the journal is off. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "store/echo.h"
#include "store/maildir.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

struct fixture {
    char *root;
    char *a, *b; /* two folders */
    int ino;
    int wd[4];
    char *dirs[4]; /* a/new a/cur b/new b/cur, by wd index */
};

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof(*fx));
    char tmpl[] = "/tmp/ms-echo-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    fx->root = xstrdup(tmpl);
    fx->a = path_join(fx->root, "a");
    fx->b = path_join(fx->root, "b");
    struct md_folder *f = NULL;
    char *err = NULL;
    assert_int_equal(md_folder_open(fx->a, true, false, &f, &err), 0);
    md_folder_close(f);
    assert_int_equal(md_folder_open(fx->b, true, false, &f, &err), 0);
    md_folder_close(f);
    fx->ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    assert_true(fx->ino >= 0);
    const char *folders[2] = {fx->a, fx->b};
    for (int i = 0; i < 4; i++) {
        fx->dirs[i] = path_join(folders[i / 2], i % 2 ? "cur" : "new");
        /* The mask libuv's uv_fs_event asks for. */
        fx->wd[i] =
            inotify_add_watch(fx->ino, fx->dirs[i],
                              IN_ATTRIB | IN_CREATE | IN_MODIFY | IN_DELETE | IN_DELETE_SELF |
                                  IN_MOVE_SELF | IN_MOVED_FROM | IN_MOVED_TO);
        assert_true(fx->wd[i] >= 0);
    }
    md_echo_enable(true);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    md_echo_enable(false);
    close(fx->ino);
    nftw(fx->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    for (int i = 0; i < 4; i++) {
        free(fx->dirs[i]);
    }
    free(fx->a);
    free(fx->b);
    free(fx->root);
    free(fx);
    return 0;
}

/* Reads every pending event and asks the journal about each, as the
 * daemon's on_fs_event does; returns how many were not the store's. */
static int foreign_events(struct fixture *fx, int *total_r)
{
    char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    int foreign = 0, total = 0;
    struct pollfd p = {.fd = fx->ino, .events = POLLIN};
    /* The kernel queues events synchronously with the system call; a
     * short poll only covers a slow machine. */
    while (poll(&p, 1, 50) > 0) {
        ssize_t n = read(fx->ino, buf, sizeof(buf));
        if (n <= 0) {
            break;
        }
        for (char *q = buf; q < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)q;
            q += sizeof(*ev) + ev->len;
            if (ev->len == 0) {
                continue;
            }
            const char *dir = NULL;
            for (int i = 0; i < 4; i++) {
                if (fx->wd[i] == ev->wd) {
                    dir = fx->dirs[i];
                }
            }
            assert_non_null(dir);
            /* libuv's mapping: attribute and content changes are
             * UV_CHANGE, the rest UV_RENAME. */
            bool moved = (ev->mask & (IN_ATTRIB | IN_MODIFY)) == 0;
            total++;
            if (!md_echo_take(dir, ev->name, moved)) {
                foreign++;
            }
        }
    }
    if (total_r != NULL) {
        *total_r = total;
    }
    return foreign;
}

static void deliver(struct fixture *fx, struct md_folder *f, bool to_cur, unsigned flags,
                    struct md_msg *msg)
{
    (void)fx;
    struct md_writer *w = NULL;
    assert_int_equal(md_writer_new(f, false, &w), 0);
    assert_int_equal(md_writer_write(w, "Subject: x\n\nhi\n", 15), 0);
    assert_int_equal(md_writer_commit(w, to_cur, flags, 0, 0, false, msg), 0);
}

static void test_own_operations_are_taken(void **state)
{
    struct fixture *fx = *state;
    struct md_folder *fa = NULL, *fb = NULL;
    char *err = NULL;
    assert_int_equal(md_folder_open(fx->a, false, false, &fa, &err), 0);
    assert_int_equal(md_folder_open(fx->b, false, false, &fb, &err), 0);
    struct md_msg m1 = {0}, m2 = {0}, m3 = {0};
    int total = 0;

    /* Deliveries into new/ and into cur/. */
    deliver(fx, fa, false, 0, &m1);
    deliver(fx, fa, true, MD_FLAG_SEEN, &m2);
    deliver(fx, fa, false, 0, &m3);
    assert_int_equal(foreign_events(fx, &total), 0);
    assert_int_equal(total, 3);

    /* Flag renames: from new/ into cur/, and within cur/. */
    assert_int_equal(md_set_flags(fa, &m1, MD_FLAG_FLAGGED, 0, false), 0);
    assert_int_equal(md_set_flags(fa, &m2, MD_FLAG_SEEN | MD_FLAG_REPLIED, 0, false), 0);
    assert_int_equal(foreign_events(fx, &total), 0);
    assert_int_equal(total, 4);

    /* A move to the other folder (link and unlink), a removal by
     * identity, and a removal. */
    assert_int_equal(md_move_between(fx->a, fx->b, m2.id, MD_FLAG_SEEN, 0, false, NULL), 0);
    assert_int_equal(md_remove_id(fx->a, m3.id, -1), 0);
    assert_int_equal(md_remove(fa, &m1), 0);
    assert_int_equal(foreign_events(fx, &total), 0);
    assert_true(total >= 4);

    md_msg_clear(&m1);
    md_msg_clear(&m2);
    md_msg_clear(&m3);
    md_folder_close(fa);
    md_folder_close(fb);
}

static void test_other_programs_are_not_taken(void **state)
{
    struct fixture *fx = *state;
    struct md_folder *fa = NULL;
    char *err = NULL;
    assert_int_equal(md_folder_open(fx->a, false, false, &fa, &err), 0);
    struct md_msg m = {0};
    deliver(fx, fa, true, MD_FLAG_SEEN, &m);
    assert_int_equal(md_set_flags(fa, &m, MD_FLAG_SEEN | MD_FLAG_FLAGGED, 0, false), 0);
    assert_int_equal(foreign_events(fx, NULL), 0);

    /* Right after, another program renames the same file back to the name
     * the store renamed it from, then removes it: both events of the
     * rename and the removal are its own, not the store's. */
    char *cur = path_join(fx->a, "cur");
    char *now = path_join(cur, m.name);
    char *old = xasprintf("%s/%s:2,S", cur, m.id);
    assert_int_equal(rename(now, old), 0);
    int total = 0;
    assert_int_equal(foreign_events(fx, &total), 2);
    assert_int_equal(total, 2);
    assert_int_equal(unlink(old), 0);
    assert_int_equal(foreign_events(fx, &total), 1);

    free(cur);
    free(now);
    free(old);
    md_msg_clear(&m);
    md_folder_close(fa);
}

static void test_failed_operation_leaves_no_note(void **state)
{
    struct fixture *fx = *state;
    struct md_folder *fa = NULL;
    char *err = NULL;
    assert_int_equal(md_folder_open(fx->a, false, false, &fa, &err), 0);
    struct md_msg m = {0};
    deliver(fx, fa, true, MD_FLAG_SEEN, &m);
    assert_int_equal(foreign_events(fx, NULL), 0);
    unsigned before = md_echo_pending();

    /* Gone behind the store's back: the removal by identity finds nothing
     * and the flag change cannot find it either. */
    char *path = xasprintf("%s/cur/%s", fx->a, m.name);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(foreign_events(fx, NULL), 1);
    assert_int_equal(md_remove_id(fx->a, m.id, -1), 0);
    assert_true(md_set_flags(fa, &m, MD_FLAG_FLAGGED, 0, false) < 0);
    /* No note of the paths it meant to touch is left to take another
     * program's event: a file of exactly that name, made by hand, is
     * foreign. */
    char *flagged = xasprintf("%s/cur/%s:2,F", fx->a, m.id);
    int fd = open(flagged, O_CREAT | O_WRONLY | O_EXCL, 0600);
    assert_true(fd >= 0);
    close(fd);
    int total = 0;
    int foreign = foreign_events(fx, &total);
    assert_int_equal(foreign, total);
    assert_true(total >= 1);
    assert_true(md_echo_pending() <= before + 2);

    free(path);
    free(flagged);
    md_msg_clear(&m);
    md_folder_close(fa);
}

static void test_journal_off_takes_nothing(void **state)
{
    struct fixture *fx = *state;
    md_echo_enable(false);
    struct md_folder *fa = NULL;
    char *err = NULL;
    assert_int_equal(md_folder_open(fx->a, false, false, &fa, &err), 0);
    struct md_msg m = {0};
    deliver(fx, fa, false, 0, &m);
    int total = 0;
    assert_int_equal(foreign_events(fx, &total), 1);
    assert_int_equal(total, 1);
    assert_int_equal(md_echo_pending(), 0);
    md_msg_clear(&m);
    md_folder_close(fa);
}

static void test_counted_and_bounded(void **state)
{
    (void)state;
    /* Two notes of one path are taken by two move events, not three;
     * attribute events are taken while the note is kept. */
    md_echo_note("/x/cur/1.a:2,S");
    md_echo_note("/x/cur/1.a:2,S");
    assert_true(md_echo_take("/x/cur", "1.a:2,S", true));
    assert_true(md_echo_take("/x/cur", "1.a:2,S", false));
    assert_true(md_echo_take("/x/cur", "1.a:2,S", true));
    assert_false(md_echo_take("/x/cur", "1.a:2,S", true));
    assert_true(md_echo_take("/x/cur", "1.a:2,S", false));
    /* Another directory, or a name that only starts the same, is not it. */
    md_echo_note("/x/cur/2.b");
    assert_false(md_echo_take("/x/new", "2.b", true));
    assert_false(md_echo_take("/x/cu", "r/2.b", true));
    assert_false(md_echo_take("/x/cur", "2.b:2,S", true));
    md_echo_forget("/x/cur/2.b");
    assert_false(md_echo_take("/x/cur", "2.b", true));
    /* The journal never holds more than its bound, however many notes no
     * event takes. */
    char path[64];
    for (unsigned i = 0; i < 70000; i++) {
        snprintf(path, sizeof(path), "/y/new/%u.host", i);
        md_echo_note(path);
    }
    assert_true(md_echo_pending() <= 65536);
    assert_true(md_echo_take("/y/new", "69999.host", true));
    assert_false(md_echo_take("/y/new", "0.host", true));
}

/* A delivery made before any watch (the daemon's first pass) leaves its
 * note; once the watch starts, the notes under that Maildir are dropped,
 * so another program's move of the same file is foreign. Notes under
 * another Maildir (another account) stay. */
static void test_dropped_when_watching_starts(void **state)
{
    struct fixture *fx = *state;
    assert_int_equal(inotify_rm_watch(fx->ino, fx->wd[0]), 0); /* a/new, not watched yet */
    (void)foreign_events(fx, NULL);
    struct md_folder *fa = NULL;
    char *err = NULL;
    assert_int_equal(md_folder_open(fx->a, false, false, &fa, &err), 0);
    struct md_msg m = {0};
    deliver(fx, fa, false, 0, &m);
    md_echo_note("/elsewhere/Mail/INBOX/new/1.x");
    char *rootslash = xasprintf("%s/", fx->root);
    md_echo_drop(rootslash);
    free(rootslash);
    fx->wd[0] = inotify_add_watch(fx->ino, fx->dirs[0],
                                  IN_ATTRIB | IN_CREATE | IN_MODIFY | IN_DELETE | IN_DELETE_SELF |
                                      IN_MOVE_SELF | IN_MOVED_FROM | IN_MOVED_TO);
    assert_true(fx->wd[0] >= 0);
    char *from = xasprintf("%s/new/%s", fx->a, m.id);
    char *to = xasprintf("%s/cur/%s:2,S", fx->a, m.id);
    assert_int_equal(rename(from, to), 0);
    int total = 0;
    assert_int_equal(foreign_events(fx, &total), 2);
    assert_int_equal(total, 2);
    assert_true(md_echo_take("/elsewhere/Mail/INBOX/new", "1.x", true));
    free(from);
    free(to);
    md_msg_clear(&m);
    md_folder_close(fa);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_own_operations_are_taken, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_programs_are_not_taken, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_operation_leaves_no_note, setup, teardown),
        cmocka_unit_test_setup_teardown(test_journal_off_takes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counted_and_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropped_when_watching_starts, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
