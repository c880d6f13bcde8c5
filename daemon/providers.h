/* Provider presets: what mailsync knows about well-known mail providers
 * (servers, login form, login methods, limits, folders, and what to tell a
 * user whose login fails), so that `provider: gmail` is a whole account
 * setup and `check --connect` can say what to do.
 *
 * The facts live in contrib/providers.yaml, one entry per provider (per data
 * centre where a provider has several), each citing the provider's own help
 * page. The build embeds that file in the program (no installed file is
 * read); it is parsed with libyaml on first use and kept for the life of the
 * process. A file that does not parse or breaks the schema is a build bug:
 * the first lookup aborts with the reason (tests/unit/test_providers.c
 * checks every entry).
 *
 * Ownership: every pointer returned here points into that table and stays
 * valid until the process exits; nothing is to be freed. The lookups are
 * safe to call from any thread. */
#ifndef MAILSYNC_PROVIDERS_H
#define MAILSYNC_PROVIDERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/config.h"

/* The user name a provider expects. */
enum provider_login {
    PROVIDER_LOGIN_ADDRESS = 0, /* the full address, me@example.com */
    PROVIDER_LOGIN_LOCAL_PART,  /* the part before '@' (the full address often works too) */
    PROVIDER_LOGIN_APP,         /* the name the provider's own app shows (Proton Mail Bridge) */
};

/* One protocol's server. host is NULL when the provider does not offer the
 * protocol (iCloud and Proton Mail Bridge have no POP3). */
struct provider_server {
    const char *host;
    /* NULL, or the server the provider names for organisation accounts
     * (an address at one's own domain), e.g. Zoho's imappro.zoho.com. */
    const char *org_host;
    uint16_t port;
    enum cfg_tls tls;
};

/* The folders a provider gives a special role, by their usual (English)
 * names; NULL where unknown. Servers with SPECIAL-USE say so themselves. */
struct provider_folders {
    const char *sent;
    const char *drafts;
    const char *trash;
    const char *junk;
    const char *archive;
};

/* Text for the doctor (`check --connect`), each a complete sentence or
 * several, or NULL. */
struct provider_hints {
    const char *enable_imap; /* where to switch IMAP access on */
    const char *enable_pop3; /* where to switch POP3 access on */
    const char *password;    /* which password a mail client needs (app password, token) */
    const char *login;       /* anything else worth knowing when a login is refused */
    const char *connect;     /* when the server cannot be reached (Bridge not running) */
    const char *certificate; /* when its certificate is not trusted */
};

struct provider {
    const char *name;   /* what `provider:` takes, e.g. "zoho.eu" */
    const char *family; /* shared by a provider's data centres, e.g. "zoho" */
    /* The data centre's region names ("eu"; "au" and "com.au"), the
     * first canonical; NULL-terminated, empty for a provider without. */
    const char *const *regions;
    bool region_default;        /* the entry the family name alone picks */
    const char *const *aliases; /* other names for `provider:`, NULL-terminated */
    const char *title;          /* "Zoho Mail (EU data centre)" */
    const char *const *docs;    /* the provider's help pages, NULL-terminated */
    const char *web;            /* webmail address, or NULL */
    struct provider_server imap;
    struct provider_server pop3;
    enum provider_login login;
    unsigned auth_methods;      /* bit (1u << enum cfg_auth) per supported method */
    enum cfg_auth auth_default; /* `auth` when the account sets none */
    bool app_password;          /* a mail client needs an app-specific password (or token) */
    unsigned max_connections;   /* default max_connections; 0: mailsync's own default */
    unsigned connection_limit;  /* the server's own limit per account; 0: not known */
    unsigned login_interval;    /* seconds the provider asks between new logins; 0: none */
    const char *const *exclude; /* folder globs excluded unless `folders` is set */
    struct provider_folders folders;
    struct provider_hints hints;
};

/* How provider_lookup ended. */
enum provider_lookup_result {
    PROVIDER_FOUND = 0,
    PROVIDER_UNKNOWN,        /* no provider has that name or alias */
    PROVIDER_UNKNOWN_REGION, /* the provider has no data centre of that region */
    PROVIDER_NO_REGIONS,     /* a region was given for a provider without data centres */
    PROVIDER_REGION_CONFLICT /* the name picks one data centre and region another */
};

/* Finds a provider by name or alias (case-insensitive) and, when region is
 * neither NULL nor empty, its data centre of that region: "zoho" with "eu",
 * "zoho.eu" alone, and "zoho.eu" with "eu" all find Zoho's EU entry.
 * Returns the result and sets *p_r (NULL unless found). */
enum provider_lookup_result provider_lookup(const char *name, const char *region,
                                            const struct provider **p_r);

/* provider_lookup without the reason: NULL unless found. */
const struct provider *provider_find(const char *name, const char *region);

/* Every provider, in the file's order: for (i = 0; i < provider_count(); i++). */
size_t provider_count(void);
const struct provider *provider_at(size_t i);

/* The server of one protocol (host NULL when the provider has none). */
const struct provider_server *provider_server(const struct provider *p, enum cfg_protocol proto);

/* True when the provider supports the login method. CFG_AUTH_AUTO is always
 * supported. */
bool provider_supports_auth(const struct provider *p, enum cfg_auth auth);

/* A hint (struct provider_hints) or other text of the table with its
 * template fields filled in: {user} the account's user name, {host} its server,
 * {web} the provider's webmail, {org_host} the organisation server of the
 * protocol (each NULL or missing value reads as "?"). Caller frees. */
char *provider_expand(const struct provider *p, enum cfg_protocol proto, const char *text,
                      const char *user, const char *host);

/* "address", "local_part", "app". */
const char *provider_login_name(enum provider_login l);

/* The embedded contrib/providers.yaml, for `mailsync` to show and tests to
 * read: NUL-terminated, length in *len_r when not NULL. */
const char *provider_data(size_t *len_r);

/* A table parsed from a providers file of the same schema, for tests and
 * tools; the built-in one is parsed the same way. Returns 0 and *t_r, or -1
 * and *err_r, a malloc'd "LINE:COL: message" naming the entry and key. The
 * table owns its providers and strings: provider_table_free releases all. */
struct provider_table;
int provider_table_parse(const char *yaml, size_t len, struct provider_table **t_r, char **err_r);
size_t provider_table_count(const struct provider_table *t);
const struct provider *provider_table_at(const struct provider_table *t, size_t i);
void provider_table_free(struct provider_table *t);

#endif
