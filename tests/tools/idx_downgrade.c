/* idx_downgrade STATE_DIR ACCOUNT: rewrites an account's sync index in the
 * schema 1 layout (see idx_v1.h), keeping every folder's state and message
 * record, the POP3 records and the meta values, so that a test can check
 * what the next `mailsync sync` makes of an index written before the
 * compact format. The account must not be in use. Prints "N folders, M
 * messages" and exits 0, or prints the reason and exits 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "store/index.h"
#include "tests/tools/idx_v1.h"

struct folders {
    struct idx_v1_folder *v;
    size_t n, cap;
};

struct msgs {
    struct idx_msg *v;
    size_t n, cap;
};

static int add_msg(const struct idx_msg *m, void *arg)
{
    struct msgs *ms = arg;
    xgrow(&ms->v, &ms->cap, ms->n + 1, sizeof(*ms->v));
    ms->v[ms->n++] = *m;
    return 0;
}

static int add_folder(const char *name, const struct idx_folder *st, void *arg)
{
    struct folders *fs = arg;
    xgrow(&fs->v, &fs->cap, fs->n + 1, sizeof(*fs->v));
    fs->v[fs->n++] = (struct idx_v1_folder){.name = xstrdup(name), .st = *st};
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: idx_downgrade STATE_DIR ACCOUNT\n");
        return 2;
    }
    struct idx *idx;
    char *err = NULL;
    if (idx_open(argv[1], argv[2], &idx, &err) != 0) {
        fprintf(stderr, "idx_downgrade: %s\n", err);
        return 1;
    }
    struct folders fs = {.n = 0};
    struct idx_txn *t;
    int rc = idx_begin(idx, false, &t);
    if (rc == 0) {
        rc = idx_folder_foreach(t, add_folder, &fs);
        for (size_t i = 0; i < fs.n && rc == 0; i++) {
            struct msgs ms = {.n = 0};
            rc = idx_msg_walk(t, fs.v[i].name, add_msg, &ms);
            fs.v[i].msgs = ms.v;
            fs.v[i].nmsgs = ms.n;
        }
        idx_abort(t);
    }
    if (rc != 0) {
        fprintf(stderr, "idx_downgrade: %s\n", idx_error(idx));
        idx_close(idx);
        return 1;
    }
    size_t msgs = 0;
    for (size_t i = 0; i < fs.n; i++) {
        msgs += fs.v[i].nmsgs;
    }
    char *env = idx_path(argv[1], argv[2]);
    idx_close(idx);
    rc = idx_v1_write(env, fs.v, fs.n, &err);
    if (rc != 0) {
        fprintf(stderr, "idx_downgrade: %s\n", err);
        free(err);
    } else {
        printf("%zu folders, %zu messages\n", fs.n, msgs);
    }
    for (size_t i = 0; i < fs.n; i++) {
        free((char *)fs.v[i].name);
        free((struct idx_msg *)fs.v[i].msgs);
    }
    free(fs.v);
    free(env);
    return rc == 0 ? 0 : 1;
}
