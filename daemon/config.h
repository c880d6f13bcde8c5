/* Configuration: the YAML file parsed with libyaml into a validated,
 * immutable struct cfg.
 *
 * Ownership: cfg_load returns a struct cfg that owns every string and array
 * reachable from it; cfg_free releases all of it. Nothing in it changes after
 * load; a reload builds a new struct cfg and swaps the pointer.
 *
 * Errors: cfg_load collects every problem it finds (not just the first), one
 * per line, each "FILE:LINE:COL: message" naming the key and what is allowed,
 * with "did you mean 'x'?" for misspelled keys. */
#ifndef MAILSYNC_CONFIG_H
#define MAILSYNC_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

enum cfg_protocol {
    CFG_PROTO_IMAP = 0,
    CFG_PROTO_POP3,
};

enum cfg_tls {
    CFG_TLS_IMPLICIT = 0,
    CFG_TLS_STARTTLS,
    CFG_TLS_NONE,
};

enum cfg_layout {
    CFG_LAYOUT_VERBATIM = 0,
    CFG_LAYOUT_MAILDIRPP,
};

enum cfg_local_delete {
    CFG_LOCAL_DELETE_EXPUNGE = 0,
    CFG_LOCAL_DELETE_TRASH,
    CFG_LOCAL_DELETE_FLAG,
};

enum cfg_auth {
    CFG_AUTH_AUTO = 0, /* best the server offers: PLAIN, then LOGIN / USER+PASS */
    CFG_AUTH_PLAIN,
    CFG_AUTH_LOGIN,
    CFG_AUTH_XOAUTH2,
    CFG_AUTH_OAUTHBEARER,
    CFG_AUTH_APOP, /* POP3 only */
};

/* One entry of "folders": a glob ('*' any run of characters including the
 * hierarchy separator '/', '%' any run without '/', '?' one character) that
 * includes matching folders, or excludes them when written with a leading
 * '!'. Patterns apply in order and the last match wins; a folder no pattern
 * matches is not synced. */
struct cfg_pattern {
    char *glob;
    bool exclude;
};

struct cfg_pop {
    bool keep_on_server;              /* default true */
    int delete_after_days;            /* -1 when not set */
    bool has_since;                   /* "since" given */
    time_t since;                     /* midnight UTC of the "since" date */
    bool delete_when_deleted_locally; /* default false */
};

/* COMPRESS=DEFLATE when the server offers it: auto uses it except towards
 * loopback and private (LAN) addresses, where compressing costs both ends
 * CPU and saves nothing. */
enum cfg_compress {
    CFG_COMPRESS_AUTO = 0,
    CFG_COMPRESS_ALWAYS,
    CFG_COMPRESS_NEVER,
};

struct cfg_account {
    char *name;
    int line; /* where the account is defined, for messages */
    enum cfg_protocol protocol;
    char *provider; /* NULL or the preset name used */
    char *host;
    uint16_t port;
    enum cfg_tls tls;
    char *ca_file;         /* NULL or an expanded path */
    char *tls_fingerprint; /* NULL or "sha256:<64 hex digits>" (lowercase, no colons) */
    bool allow_plaintext;
    char *user;
    char *password;          /* NULL when password_command is used */
    char **password_command; /* NULL or a NULL-terminated argv (run without a shell) */
    enum cfg_auth auth;
    char *maildir; /* expanded path */
    enum cfg_layout layout;
    struct cfg_pattern *folders; /* default: one pattern "*" */
    size_t nfolders;
    bool subscribed_only;
    unsigned max_connections;              /* default 3: a sync session and a watcher, and a lane */
    enum cfg_local_delete on_local_delete; /* default expunge */
    char *trash;                           /* NULL: found by SPECIAL-USE \Trash */
    bool delete_folders;                   /* default false */
    double max_delete_ratio;               /* 0..1, default 0.5 */
    uint64_t max_size;                     /* bytes, 0 = no limit; "10M", "512k" accepted */
    unsigned max_age_days;                 /* 0 = no limit */
    enum cfg_compress compress;            /* default CFG_COMPRESS_AUTO */
    unsigned timeout_seconds;              /* network inactivity timeout, default 60 */
    /* The daemon (mailsync daemon). */
    unsigned poll_interval; /* seconds between sweeps of every folder; 300 (POP3: 900) */
    unsigned local_delay;   /* seconds local changes are coalesced before a sync; 1 */
    unsigned idle_restart;  /* seconds before IDLE is issued again; 600 */
    char **on_new_mail;     /* NULL or argv run (no shell) after new mail is stored */
    /* Folders the daemon IDLEs on when the server has no NOTIFY, one
     * connection each within max_connections (NULL-terminated, INBOX
     * spelled "INBOX"); NULL = INBOX alone. */
    char **idle;
    struct cfg_pop pop;
};

struct cfg {
    char *path;      /* the file it was read from */
    char *state_dir; /* expanded; default $XDG_STATE_HOME/mailsync or ~/.local/state/mailsync */
    struct cfg_account *accounts;
    size_t naccounts;
    /* NULL, or the problems found that do not stop loading (for example a
     * password in a file that group or others can read), one per line
     * without a trailing newline, each "FILE:LINE:COL: warning: message".
     * Callers show them to the user (`check`, daemon start); cfg_free frees
     * them. Only a successful load returns them. */
    char *warnings;
};

/* Reads and validates the file at path. Returns 0 and *cfg_r on success; on
 * failure returns -1, *cfg_r NULL and *err_r a malloc'd multi-line message
 * (caller frees). */
int cfg_load(const char *path, struct cfg **cfg_r, char **err_r);

/* Same as cfg_load but from a string; name is used in messages as the file
 * name. For tests and for `check` on standard input. */
int cfg_load_string(const char *name, const char *yaml, struct cfg **cfg_r, char **err_r);

void cfg_free(struct cfg *cfg);

/* The default configuration path: $XDG_CONFIG_HOME/mailsync/config.yaml or
 * ~/.config/mailsync/config.yaml. Caller frees. NULL if neither
 * XDG_CONFIG_HOME nor HOME is set. */
char *cfg_default_path(void);

const struct cfg_account *cfg_find_account(const struct cfg *cfg, const char *name);

/* True when the folder (UTF-8, '/' as hierarchy separator) is selected by
 * the account's "folders" patterns. INBOX matches case-insensitively. */
bool cfg_folder_selected(const struct cfg_account *acct, const char *folder);

/* Prints every account fully resolved (defaults and presets applied) in
 * YAML, with passwords shown as "<redacted>". */
void cfg_print(FILE *fp, const struct cfg *cfg);
/* One account as cfg_print shows it (defaults applied, password redacted). */
void cfg_print_account(FILE *fp, const struct cfg_account *a);

const char *cfg_protocol_name(enum cfg_protocol p);
const char *cfg_tls_name(enum cfg_tls t);
const char *cfg_layout_name(enum cfg_layout l);
const char *cfg_auth_name(enum cfg_auth a);
const char *cfg_local_delete_name(enum cfg_local_delete d);

#endif
