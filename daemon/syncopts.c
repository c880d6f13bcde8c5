#include "daemon/syncopts.h"

#include <stdlib.h>

#include "core/util.h"

static char *dup_or_null(const char *s)
{
    return s != NULL ? xstrdup(s) : NULL;
}

static enum net_tls_mode map_tls(enum cfg_tls t)
{
    switch (t) {
    case CFG_TLS_STARTTLS:
        return NET_TLS_LATER;
    case CFG_TLS_NONE:
        return NET_TLS_NONE;
    case CFG_TLS_IMPLICIT:
        break;
    }
    return NET_TLS_IMPLICIT;
}

static enum sync_auth map_auth(enum cfg_auth a)
{
    switch (a) {
    case CFG_AUTH_PLAIN:
        return SYNC_AUTH_PLAIN;
    case CFG_AUTH_LOGIN:
        return SYNC_AUTH_LOGIN;
    case CFG_AUTH_XOAUTH2:
        return SYNC_AUTH_XOAUTH2;
    case CFG_AUTH_OAUTHBEARER:
        return SYNC_AUTH_OAUTHBEARER;
    case CFG_AUTH_APOP:
        return SYNC_AUTH_APOP;
    case CFG_AUTH_AUTO:
        break;
    }
    return SYNC_AUTH_AUTO;
}

static enum sync_compress map_compress(enum cfg_compress c)
{
    switch (c) {
    case CFG_COMPRESS_ALWAYS:
        return SYNC_COMPRESS_ALWAYS;
    case CFG_COMPRESS_NEVER:
        return SYNC_COMPRESS_NEVER;
    case CFG_COMPRESS_AUTO:
        break;
    }
    return SYNC_COMPRESS_AUTO;
}

static enum plan_local_delete map_local_delete(enum cfg_local_delete d)
{
    switch (d) {
    case CFG_LOCAL_DELETE_TRASH:
        return PLAN_LOCAL_DELETE_TRASH;
    case CFG_LOCAL_DELETE_FLAG:
        return PLAN_LOCAL_DELETE_FLAG;
    case CFG_LOCAL_DELETE_EXPUNGE:
        break;
    }
    return PLAN_LOCAL_DELETE_EXPUNGE;
}

enum md_layout syncopts_layout(enum cfg_layout l)
{
    return l == CFG_LAYOUT_MAILDIRPP ? MD_LAYOUT_MAILDIRPP : MD_LAYOUT_VERBATIM;
}

struct sync_account *syncopts_account(const struct cfg *cfg, const struct cfg_account *a)
{
    struct sync_account *s = xcalloc(1, sizeof(*s));
    s->name = xstrdup(a->name);
    s->state_dir = xstrdup(cfg->state_dir);
    s->protocol = a->protocol == CFG_PROTO_POP3 ? SYNC_PROTO_POP3 : SYNC_PROTO_IMAP;
    s->host = dup_or_null(a->host);
    s->port = a->port;
    s->tls = map_tls(a->tls);
    s->ca_file = dup_or_null(a->ca_file);
    s->tls_fingerprint = dup_or_null(a->tls_fingerprint);
    s->allow_plaintext = a->allow_plaintext;
    s->user = dup_or_null(a->user);
    s->password = dup_or_null(a->password);
    if (a->password_command != NULL) {
        size_t n = 0;
        while (a->password_command[n] != NULL) {
            n++;
        }
        s->password_command = xcalloc(n + 1, sizeof(char *));
        for (size_t i = 0; i < n; i++) {
            s->password_command[i] = xstrdup(a->password_command[i]);
        }
    }
    s->auth = map_auth(a->auth);
    s->compress = map_compress(a->compress);
    s->timeout_seconds = a->timeout_seconds;
    s->maildir = dup_or_null(a->maildir);
    s->layout = syncopts_layout(a->layout);
    if (a->nfolders > 0) {
        s->folders = xcalloc(a->nfolders, sizeof(*s->folders));
        for (size_t i = 0; i < a->nfolders; i++) {
            s->folders[i].glob = xstrdup(a->folders[i].glob);
            s->folders[i].exclude = a->folders[i].exclude;
        }
        s->nfolders = a->nfolders;
    }
    s->subscribed_only = a->subscribed_only;
    s->max_connections = a->max_connections;
    s->on_local_delete = map_local_delete(a->on_local_delete);
    s->trash = dup_or_null(a->trash);
    s->delete_folders = a->delete_folders;
    s->max_delete_ratio = a->max_delete_ratio;
    s->max_size = a->max_size;
    s->max_age_days = a->max_age_days;
    s->pop.keep_on_server = a->pop.keep_on_server;
    s->pop.delete_after_days = a->pop.delete_after_days;
    s->pop.has_since = a->pop.has_since;
    s->pop.since = a->pop.since;
    s->pop.delete_when_deleted_locally = a->pop.delete_when_deleted_locally;
    return s;
}
