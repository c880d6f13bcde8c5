/* An in-memory IMAP server behind the engine's server interface
 * (sync/remote.h), for C unit tests that drive folder syncs on a real libuv
 * loop without a network.
 *
 * A struct fake_server holds mailboxes (name, UIDVALIDITY, UIDNEXT,
 * HIGHESTMODSEQ, messages with UID, flags, keywords, MODSEQ, internal date
 * and body bytes with CRLF line ends, plus the UIDs expunged and when) and
 * a capability profile. Pass fake_remote_ops as engine_opts.remote and the
 * server as engine_opts.remote_arg: every connect() opens one connection
 * to that server, so several runs and several connections share its state
 * as they would share a real server's.
 *
 * The contract is sync/imap.h's: every operation returns 0 and later calls
 * its completion exactly once, from the loop (a zero timer per connection,
 * one command per loop iteration, in command order), never from inside the
 * call; FETCH data of a command goes to its callbacks, unsolicited data
 * (EXISTS, EXPUNGE, VANISHED, FETCH) to on_event; a fatal error sets the
 * state to FAILED, completes every pending command with err < 0 and then
 * calls on_error once; after that commands return -ENOTCONN. Under QRESYNC
 * a SELECT with QRESYNC values sends VANISHED (EARLIER) and FETCH (UID FLAGS
 * MODSEQ) events before its completion, as the real client delivers them.
 * UID EXPUNGE without UIDPLUS returns IMAP_ENOTSUP as the client does.
 * "UID n:*" answers the last message when n is past it, as servers do.
 * body_data returning IMAP_SINK_PAUSE is taken as "go on" (the interface
 * has no resume; the engine never pauses).
 *
 * Faults: fake_fault_at arms one fault for the Nth operation call (every
 * call counts, connect included, across all connections of the server, or
 * only the calls of one kind). It fires once. fake_op_count and the op log
 * tell how many operations a clean run made and which, so a test can
 * inject a fault at each of them in turn.
 *
 * Ownership: the test owns the server (fake_server_free after every
 * connection is freed and the loop has run their close callbacks); the
 * engine owns its connections (remote_ops.free). Pointers returned by the
 * inspection functions are valid until the next change of that mailbox. */
#ifndef MAILSYNC_TESTS_FAKE_REMOTE_H
#define MAILSYNC_TESTS_FAKE_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "sync/remote.h"

struct fake_server;

extern const struct remote_ops fake_remote_ops;

/* The capability profiles of the integration tests (synctest.py PROFILES):
 * Dovecot as it is (QRESYNC, CONDSTORE, LIST-STATUS, UIDPLUS, MOVE),
 * CONDSTORE without QRESYNC (Gmail-like), and neither. Clear IMAP_CAP_UIDPLUS
 * or IMAP_CAP_MOVE in the result for the fallbacks without them. */
enum fake_profile {
    FAKE_PROFILE_QRESYNC = 0,
    FAKE_PROFILE_CONDSTORE,
    FAKE_PROFILE_PLAIN,
};
unsigned fake_profile_caps(enum fake_profile p);
const char *fake_profile_name(enum fake_profile p);

struct fake_server *fake_server_new(unsigned caps);
void fake_server_free(struct fake_server *s);

/* ---- mailboxes and messages (the test's "another client") ---- */

/* Creates a mailbox (UTF-8, '/' separated) with the next UIDVALIDITY.
 * attrs are IMAP_LIST_* bits reported by LIST (special-use). Returns 0 or
 * -EEXIST. */
int fake_mailbox_add(struct fake_server *s, const char *name, unsigned attrs);
bool fake_mailbox_exists(const struct fake_server *s, const char *name);
uint32_t fake_mailbox_uidvalidity(const struct fake_server *s, const char *name);
uint64_t fake_mailbox_highestmodseq(const struct fake_server *s, const char *name);

struct fake_msg {
    uint32_t uid;
    unsigned flags; /* IMAP_FLAG_* */
    char **keywords;
    size_t nkeywords;
    uint64_t modseq;
    time_t internaldate;
    char *body; /* CRLF line ends */
    size_t len;
};

/* Adds a message (body with LF or CRLF line ends; stored with CRLF) and
 * returns its UID, 0 when the mailbox does not exist. Connections that
 * have the mailbox selected hear EXISTS. */
uint32_t fake_message_add(struct fake_server *s, const char *box, const char *body, unsigned flags,
                          const char *const *keywords, size_t nkeywords, time_t internaldate);
/* Changes flags as another client: op '+', '-' or '=' (replace system
 * flags; keywords are only added with '+' and removed with '-'). Raises the
 * MODSEQ; connections that have the mailbox selected hear FETCH (UID FLAGS
 * MODSEQ). Returns 0 or -ENOENT. */
int fake_message_flags(struct fake_server *s, const char *box, uint32_t uid, char op,
                       unsigned flags, const char *const *keywords, size_t nkeywords);
/* Expunges as another client; connections that have the mailbox selected
 * hear EXPUNGE (VANISHED under QRESYNC). Returns 0 or -ENOENT. */
int fake_message_expunge(struct fake_server *s, const char *box, uint32_t uid);
/* Sends EXISTS (the current count) to every connection that has the
 * mailbox selected, as a server does between commands. Returns how many
 * connections were told. */
unsigned fake_notify_exists(struct fake_server *s, const char *box);

/* Renumbers a mailbox as a server rebuilding its index does: a new
 * UIDVALIDITY, the messages (same bytes, flags and order) get UIDs from 1,
 * the record of expunged UIDs is forgotten. Connections that have it
 * selected are not told (a real server would end their session). Returns 0
 * or -ENOENT. */
int fake_mailbox_renumber(struct fake_server *s, const char *box);

size_t fake_message_count(const struct fake_server *s, const char *box);
/* The i-th message (UID order) or NULL. */
const struct fake_msg *fake_message_at(const struct fake_server *s, const char *box, size_t i);
const struct fake_msg *fake_message_find(const struct fake_server *s, const char *box,
                                         uint32_t uid);
bool fake_msg_has_keyword(const struct fake_msg *m, const char *kw);

/* ---- connections ---- */

unsigned fake_connections(const struct fake_server *s); /* connect() calls so far */
unsigned fake_logins(const struct fake_server *s);      /* on_ready reported so far */
unsigned fake_open_connections(const struct fake_server *s);

/* ---- operations and faults ---- */

enum fake_op {
    FAKE_OP_ANY = 0,
    FAKE_OP_CONNECT,
    FAKE_OP_LIST,
    FAKE_OP_SELECT,
    FAKE_OP_FETCH,
    FAKE_OP_SEARCH,
    FAKE_OP_STORE,
    FAKE_OP_APPEND,
    FAKE_OP_EXPUNGE,
    FAKE_OP_MOVE,
    FAKE_OP_CREATE,
    FAKE_OP_DELETE,
    FAKE_OP_LOGOUT,
    FAKE_OP_COUNT_, /* number of kinds */
};
const char *fake_op_name(enum fake_op op);

enum fake_fault {
    FAKE_FAULT_NONE = 0,
    /* The connection drops before the server acts: a FETCH delivers the
     * first half of its messages first. Pending commands complete with
     * err < 0, then on_error(UV_ECONNRESET). */
    FAKE_FAULT_DROP,
    /* The server acts (all untagged data sent) and the connection drops
     * before the tagged answer: the APPEND happened, the STORE took. */
    FAKE_FAULT_DROP_AFTER,
    FAKE_FAULT_NO,  /* tagged NO, nothing done */
    FAKE_FAULT_BAD, /* tagged BAD, nothing done */
    /* The server acts, half the untagged data arrives, then a malformed
     * line: fatal IMAP_EPROTO through on_error. */
    FAKE_FAULT_MALFORMED,
    /* A BODY fetch: the messages before the middle one arrive whole, the
     * middle one's body stops half-way (body_end complete=false), then the
     * connection drops. Other commands: as FAKE_FAULT_DROP. */
    FAKE_FAULT_DROP_MID_BODY,
    FAKE_FAULT_COUNT_,
};
const char *fake_fault_name(enum fake_fault f);

/* Arms one fault: the nth (1-based) operation call of kind op (FAKE_OP_ANY:
 * of every kind) from now on fails with f. Counting restarts here. */
void fake_fault_at(struct fake_server *s, enum fake_op op, unsigned n, enum fake_fault f);
/* Whether the armed fault fired. */
bool fake_fault_fired(const struct fake_server *s);
/* Clears the operation counts and log, and any armed fault. */
void fake_ops_reset(struct fake_server *s);
/* Operation calls since the last reset (or fake_fault_at). */
unsigned fake_op_count(const struct fake_server *s, enum fake_op op);
/* The nth (1-based) operation call since the last reset: its kind, and a
 * short description ("UID FETCH 7:* (FLAGS BODY)"), or NULL past the end.
 * Bodies fetched: true when that call was a FETCH with IMAP_FETCH_BODY. */
enum fake_op fake_op_kind_at(const struct fake_server *s, unsigned n);
const char *fake_op_text_at(const struct fake_server *s, unsigned n);
bool fake_op_is_body_fetch(const struct fake_server *s, unsigned n);

#endif
