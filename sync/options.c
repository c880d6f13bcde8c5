#include "sync/options.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/util.h"

void sync_account_free(struct sync_account *a)
{
    if (a == NULL) {
        return;
    }
    free(a->name);
    free(a->state_dir);
    free(a->host);
    free(a->ca_file);
    free(a->tls_fingerprint);
    free(a->user);
    if (a->password != NULL) {
        explicit_bzero(a->password, strlen(a->password));
        free(a->password);
    }
    if (a->password_command != NULL) {
        for (char **p = a->password_command; *p != NULL; p++) {
            free(*p);
        }
        free(a->password_command);
    }
    free(a->maildir);
    for (size_t i = 0; i < a->nfolders; i++) {
        free(a->folders[i].glob);
    }
    free(a->folders);
    free(a->trash);
    free(a);
}

char *sync_inbox_canon(const char *s)
{
    char *c = xstrdup(s);
    if (strncasecmp(c, "inbox", 5) == 0 && (c[5] == '\0' || c[5] == '/')) {
        memcpy(c, "INBOX", 5);
    }
    return c;
}

/* Length of the UTF-8 character starting at s (1 for stray bytes), so that
 * '?' matches one character of a non-ASCII folder name. */
static size_t utf8_len(const char *s)
{
    unsigned char c = (unsigned char)s[0];
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    for (size_t i = 1; i < len; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            return 1;
        }
    }
    return len;
}

/* Glob match by tracking the set of name positions each pattern prefix can
 * reach, so that time stays O(pattern x name) whatever the wildcards. */
bool sync_glob_match(const char *pat, const char *name)
{
    size_t n = strlen(name);
    bool *cur = xcalloc(n + 1, sizeof(bool));
    bool *next = xcalloc(n + 1, sizeof(bool));
    cur[0] = true;
    for (const char *p = pat; *p != '\0'; p++) {
        memset(next, 0, n + 1);
        if (*p == '*') {
            bool on = false;
            for (size_t j = 0; j <= n; j++) {
                on = on || cur[j];
                next[j] = on;
            }
        } else if (*p == '%') {
            bool on = false;
            for (size_t j = 0; j <= n; j++) {
                if (j > 0 && name[j - 1] == '/') {
                    on = false;
                }
                on = on || cur[j];
                next[j] = on;
            }
        } else if (*p == '?') {
            for (size_t j = 0; j < n; j++) {
                if (cur[j]) {
                    next[j + utf8_len(name + j)] = true;
                }
            }
        } else {
            for (size_t j = 0; j < n; j++) {
                if (cur[j] && name[j] == *p) {
                    next[j + 1] = true;
                }
            }
        }
        bool *t = cur;
        cur = next;
        next = t;
    }
    bool match = cur[n];
    free(cur);
    free(next);
    return match;
}

bool sync_patterns_select(const struct sync_pattern *pats, size_t n, const char *folder)
{
    if (n == 0) {
        return true; /* the default, ["*"] */
    }
    char *name = sync_inbox_canon(folder);
    bool selected = false;
    for (size_t i = 0; i < n; i++) {
        if (sync_glob_match(pats[i].glob, name)) {
            selected = !pats[i].exclude;
        }
    }
    free(name);
    return selected;
}

bool sync_folder_selected(const struct sync_account *a, const char *folder)
{
    return sync_patterns_select(a->folders, a->nfolders, folder);
}

void sync_net_opts(const struct sync_account *a, struct net_opts *o_r)
{
    memset(o_r, 0, sizeof(*o_r));
    o_r->host = a->host;
    o_r->port = a->port;
    o_r->tls = a->tls;
    o_r->ca_file = a->ca_file;
    o_r->fingerprint = a->tls_fingerprint;
    o_r->connect_timeout_ms = a->timeout_seconds * 1000u;
    o_r->idle_timeout_ms = a->timeout_seconds * 1000u;
}

void sync_imap_opts(const struct sync_account *a, const char *secret, struct imap_opts *o_r)
{
    memset(o_r, 0, sizeof(*o_r));
    sync_net_opts(a, &o_r->net);
    o_r->user = a->user;
    o_r->secret = secret;
    switch (a->auth) {
    case SYNC_AUTH_PLAIN:
        o_r->auth = IMAP_AUTH_PLAIN;
        break;
    case SYNC_AUTH_LOGIN:
        o_r->auth = IMAP_AUTH_LOGIN;
        break;
    case SYNC_AUTH_XOAUTH2:
        o_r->auth = IMAP_AUTH_XOAUTH2;
        break;
    case SYNC_AUTH_OAUTHBEARER:
        o_r->auth = IMAP_AUTH_OAUTHBEARER;
        break;
    case SYNC_AUTH_AUTO:
    case SYNC_AUTH_APOP:
        o_r->auth = IMAP_AUTH_AUTO;
        break;
    }
    o_r->allow_plaintext = a->allow_plaintext;
    o_r->compress = a->compress != SYNC_COMPRESS_NEVER;
    o_r->compress_local = a->compress == SYNC_COMPRESS_ALWAYS;
    o_r->log_name = a->name;
}

void sync_pop3_opts(const struct sync_account *a, const char *secret, struct pop3_opts *o_r)
{
    memset(o_r, 0, sizeof(*o_r));
    sync_net_opts(a, &o_r->net);
    o_r->user = a->user;
    o_r->secret = secret;
    switch (a->auth) {
    case SYNC_AUTH_PLAIN:
        o_r->auth = POP3_AUTH_PLAIN;
        break;
    case SYNC_AUTH_LOGIN:
        o_r->auth = POP3_AUTH_USER;
        break;
    case SYNC_AUTH_XOAUTH2:
        o_r->auth = POP3_AUTH_XOAUTH2;
        break;
    case SYNC_AUTH_OAUTHBEARER:
        o_r->auth = POP3_AUTH_OAUTHBEARER;
        break;
    case SYNC_AUTH_APOP:
        o_r->auth = POP3_AUTH_APOP;
        break;
    case SYNC_AUTH_AUTO:
        o_r->auth = POP3_AUTH_AUTO;
        break;
    }
    o_r->allow_plaintext = a->allow_plaintext;
    o_r->log_name = a->name;
}
