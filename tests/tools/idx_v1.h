/* A writer of schema 1 sync indexes, the layout store/index.c used before
 * the compact format of schema 2, for the tests of idx_open's conversion
 * (tests/unit/test_index.c) and for tests/tools/idx_downgrade.c. It writes
 * records byte for byte as schema 1 did: the folder and message records
 * with version 1, msg_uid, msg_lid and msg_pending, schema_version 1.
 *
 * idx_v1_write opens the LMDB environment env_path (a directory, created by
 * the caller) directly: the account must not be open through store/index.h
 * in this process, and no other process may write it. In one transaction it
 * drops schema 2's message databases and every folder record, writes the
 * folders given (ids 1..n in the order given, "next_folder_id" n + 1), their
 * messages (with a UID into msg_uid and msg_lid, without one into
 * msg_pending) and stamps schema_version 1. POP3 records and other meta
 * values are left as they are. Returns 0, or -1 with *err_r (caller frees)
 * saying what failed. */
#ifndef MAILSYNC_TESTS_IDX_V1_H
#define MAILSYNC_TESTS_IDX_V1_H

#include <stddef.h>

#include "store/index.h"

struct idx_v1_folder {
    const char *name;
    struct idx_folder st; /* the schema 2 change-time fields are not written */
    const struct idx_msg *msgs;
    size_t nmsgs;
};

int idx_v1_write(const char *env_path, const struct idx_v1_folder *folders, size_t nfolders,
                 char **err_r);

#endif
