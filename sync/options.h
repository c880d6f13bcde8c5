/* What the sync layer knows of one account: its own copy of every option
 * the IMAP and POP3 engines use, made from the configuration by the daemon
 * (daemon/syncopts.c). The sync layer never reads the configuration
 * itself, so that a reload can replace it while accounts run, and so that
 * tests can build an account without a YAML file.
 *
 * Ownership: a struct sync_account owns every string and array reachable
 * from it; sync_account_free releases it. Nothing changes it once built.
 *
 * Folder patterns: a glob ('*' any run of characters including the
 * hierarchy separator '/', '%' any run without '/', '?' one character)
 * that includes matching folders, or excludes them when `exclude` is set.
 * Patterns apply in order and the last match wins; a folder no pattern
 * matches is not synced; no patterns at all means every folder. */
#ifndef MAILSYNC_SYNC_OPTIONS_H
#define MAILSYNC_SYNC_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "store/maildir.h"
#include "sync/imap.h"
#include "sync/net.h"
#include "sync/plan.h"
#include "sync/pop3.h"

enum sync_protocol {
    SYNC_PROTO_IMAP = 0,
    SYNC_PROTO_POP3,
};

enum sync_auth {
    SYNC_AUTH_AUTO = 0, /* best the server offers: PLAIN, then LOGIN / USER+PASS */
    SYNC_AUTH_PLAIN,
    SYNC_AUTH_LOGIN,
    SYNC_AUTH_XOAUTH2,
    SYNC_AUTH_OAUTHBEARER,
    SYNC_AUTH_APOP, /* POP3 only */
};

/* COMPRESS=DEFLATE when the server offers it: auto uses it except towards
 * loopback and private addresses. */
enum sync_compress {
    SYNC_COMPRESS_AUTO = 0,
    SYNC_COMPRESS_ALWAYS,
    SYNC_COMPRESS_NEVER,
};

struct sync_pattern {
    char *glob; /* a leading "inbox" in any case is spelled "INBOX" */
    bool exclude;
};

/* POP3 keep-on-server policy. */
struct sync_pop {
    bool keep_on_server;
    int delete_after_days; /* -1 when not set */
    bool has_since;
    time_t since; /* midnight UTC of the "since" date */
    bool delete_when_deleted_locally;
};

struct sync_account {
    char *name;
    char *state_dir; /* where the account's index lives */
    enum sync_protocol protocol;
    /* The server and the login. */
    char *host;
    uint16_t port;
    enum net_tls_mode tls;
    char *ca_file;         /* NULL: the system's trust store */
    char *tls_fingerprint; /* NULL or "sha256:<64 hex digits>" */
    bool allow_plaintext;
    char *user;
    char *password;          /* NULL when password_command is used */
    char **password_command; /* NULL or a NULL-terminated argv */
    enum sync_auth auth;
    enum sync_compress compress;
    unsigned timeout_seconds; /* network inactivity timeout */
    /* The Maildir side. */
    char *maildir;
    enum md_layout layout;
    /* What is synced, and how. */
    struct sync_pattern *folders;
    size_t nfolders;
    bool subscribed_only;
    unsigned max_connections;
    enum plan_local_delete on_local_delete;
    char *trash; /* NULL: found by SPECIAL-USE \Trash */
    bool delete_folders;
    double max_delete_ratio; /* 0..1 */
    uint64_t max_size;       /* bytes, 0 = no limit */
    unsigned max_age_days;   /* 0 = no limit */
    struct sync_pop pop;
};

void sync_account_free(struct sync_account *a);

/* A copy of s with a leading "inbox" (then end or '/') in any case spelled
 * "INBOX". Caller frees. */
char *sync_inbox_canon(const char *s);
/* True when name matches the glob (see above); '?' matches one UTF-8
 * character. */
bool sync_glob_match(const char *pat, const char *name);
/* True when the folder (UTF-8, '/' as hierarchy separator) is selected by
 * the patterns. INBOX matches case-insensitively. */
bool sync_patterns_select(const struct sync_pattern *pats, size_t n, const char *folder);
bool sync_folder_selected(const struct sync_account *a, const char *folder);

/* The option structs of the protocol clients for this account. They point
 * into a (and secret): valid as long as those are. */
void sync_net_opts(const struct sync_account *a, struct net_opts *o_r);
void sync_imap_opts(const struct sync_account *a, const char *secret, struct imap_opts *o_r);
void sync_pop3_opts(const struct sync_account *a, const char *secret, struct pop3_opts *o_r);

#endif
