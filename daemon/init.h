/* `mailsync init ACCOUNT`: writes one account into the configuration file,
 * then runs `check --connect` for it.
 *
 * The file is edited as text, never re-emitted from a parse: the new
 * account is appended to the `accounts:` mapping with that mapping's own
 * indentation, so every other byte (comments, other accounts, quoting
 * style) stays as it was. The result must load with cfg_load before it
 * replaces the file, atomically (a temporary file in the same directory,
 * fsync, rename, fsync of the directory), keeping the file's mode; a new
 * file is created 0600 with a commented header. A symbolic link (a
 * dotfiles repository) is followed and the file it names is replaced.
 *
 * Where the server comes from: --host; else the --provider preset; else a
 * preset named like the address's domain (gmail.com: gmail); else the
 * domain's RFC 6186 SRV records (_imaps._tcp, then _imap._tcp; _pop3s._tcp
 * then _pop3._tcp with --pop3), proposed on a terminal, and taken without
 * asking only when the server lies in the address's own domain. Prompts
 * are made only when standard input and standard error are terminals;
 * every value can be given as an option instead. Passwords are never
 * asked for or written: the account gets a password_command. */
#ifndef MAILSYNC_INIT_H
#define MAILSYNC_INIT_H

#include <stdbool.h>
#include <stddef.h>

struct init_opts {
    const char *config_path; /* NULL: cfg_default_path() */
    const char *account;
    const char *provider;         /* NULL: from the domain, SRV or --host */
    const char *user;             /* login name, usually the address */
    const char *maildir;          /* NULL: ~/Mail/ACCOUNT */
    const char *password_command; /* written as given (a string) */
    const char *host;             /* overrides provider and SRV */
    const char *tls;              /* implicit, starttls or none; NULL: implicit */
    unsigned port;                /* 0: the default for tls and protocol */
    bool pop3;
    bool no_check;    /* do not run check --connect afterwards */
    bool interactive; /* prompts allowed (both stdin and stderr are terminals) */
    bool quiet;
};

/* Returns the exit status: 0 when the account was written (and the check
 * passed), 1 on failure (nothing written, or written and the check
 * failed: the message says which), 2 for a usage error. */
int init_run(const struct init_opts *o);

/* The text edit alone, for tests: text (NUL-terminated, the whole file,
 * possibly empty) with the account `name` added, its body lines being
 * `key: value` strings written one level below the account's key.
 * Returns 0 and *out_r (caller frees); -EEXIST when text already has an
 * account of that name (*line_r its 1-based line); -EINVAL with *err_r
 * (caller frees) when the file's shape leaves no place to add it as text
 * (YAML that does not parse, `accounts` written in flow style, ...). */
int init_add_account_text(const char *text, const char *name, const char *const *body, size_t nbody,
                          char **out_r, size_t *line_r, char **err_r);

#endif
