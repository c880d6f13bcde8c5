/* Configuration: YAML (libyaml document API) to a validated struct cfg.
 *
 * The loader walks the document once, checks every key against the schema and
 * keeps going after a problem, so that one run of `mailsync check` shows every
 * mistake in the file. Each problem records the line and column of the node it
 * is about; they are sorted into file order before being joined. */
#include "daemon/config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "core/util.h"
#include "daemon/providers.h"
#include "sync/options.h"

/* A configuration file is a few kilobytes; the limit only stops a wrong
 * --config (a mailbox, a disk image) from being read whole into memory. */
#define CFG_MAX_FILE_SIZE (1024 * 1024)
/* Account names become file names and control socket arguments. */
#define CFG_MAX_NAME_LEN 64
/* How much of an offending value is quoted back in a message. */
#define CFG_MAX_ECHO 60

/* ---- Names ---- */

static const char *const protocol_names[] = {"imap", "pop3"};
static const char *const tls_names[] = {"implicit", "starttls", "none"};
static const char *const layout_names[] = {"verbatim", "maildir++"};
static const char *const auth_names[] = {"auto",    "plain",       "login",
                                         "xoauth2", "oauthbearer", "apop"};
static const char *const local_delete_names[] = {"expunge", "trash", "flag"};

static const char *name_or_unknown(const char *const *names, size_t n, int v)
{
    return v >= 0 && (size_t)v < n ? names[v] : "unknown";
}

const char *cfg_protocol_name(enum cfg_protocol p)
{
    return name_or_unknown(protocol_names, ARRAY_SIZE(protocol_names), (int)p);
}

const char *cfg_tls_name(enum cfg_tls t)
{
    return name_or_unknown(tls_names, ARRAY_SIZE(tls_names), (int)t);
}

const char *cfg_layout_name(enum cfg_layout l)
{
    return name_or_unknown(layout_names, ARRAY_SIZE(layout_names), (int)l);
}

const char *cfg_auth_name(enum cfg_auth a)
{
    return name_or_unknown(auth_names, ARRAY_SIZE(auth_names), (int)a);
}

const char *cfg_local_delete_name(enum cfg_local_delete d)
{
    return name_or_unknown(local_delete_names, ARRAY_SIZE(local_delete_names), (int)d);
}

/* The schema: every key each mapping may hold. The order is the order of
 * "known keys" lists in messages and of cfg_print. */
static const char *const top_keys[] = {"state_dir", "accounts"};
static const char *const account_keys[] = {"protocol",
                                           "provider",
                                           "region",
                                           "host",
                                           "port",
                                           "tls",
                                           "ca_file",
                                           "tls_fingerprint",
                                           "allow_plaintext",
                                           "user",
                                           "password",
                                           "password_command",
                                           "auth",
                                           "maildir",
                                           "layout",
                                           "folders",
                                           "subscribed_only",
                                           "max_connections",
                                           "on_local_delete",
                                           "trash",
                                           "delete_folders",
                                           "max_delete_ratio",
                                           "max_size",
                                           "max_age_days",
                                           "compress",
                                           "timeout",
                                           "poll_interval",
                                           "local_delay",
                                           "idle_restart",
                                           "on_new_mail",
                                           "idle",
                                           "pop"};
static const char *const pop_keys[] = {"keep_on_server", "delete_after_days", "since",
                                       "delete_when_deleted_locally"};
/* Keys that only make sense with IMAP's folders and two-way sync. */
static const char *const imap_only_keys[] = {
    "folders",        "subscribed_only",  "on_local_delete", "trash",
    "delete_folders", "max_delete_ratio", "max_connections", "compress",
    "max_age_days",   "local_delay",      "idle_restart",    "idle"};

static uint16_t default_port(enum cfg_protocol proto, enum cfg_tls tls)
{
    if (proto == CFG_PROTO_POP3) {
        return tls == CFG_TLS_IMPLICIT ? 995 : 110;
    }
    return tls == CFG_TLS_IMPLICIT ? 993 : 143;
}

/* ---- Diagnostics ---- */

struct diag {
    size_t line; /* 1-based */
    size_t col;  /* 1-based */
    size_t seq;  /* discovery order, to keep the sort stable */
    char *text;
};

struct diags {
    struct diag *v;
    size_t n;
    size_t cap;
};

enum scope {
    SCOPE_TOP,
    SCOPE_ACCOUNT,
    SCOPE_POP,
};

struct loader {
    const char *file; /* name used in messages */
    yaml_document_t *doc;
    struct diags errs;
    struct diags warns;
    enum scope scope;
    const char *acct; /* the account being read, for messages */
    /* Where the first "password:" key is, for the file mode warning. */
    bool has_password;
    yaml_mark_t password_mark;
};

static void diag_add(struct diags *d, const struct loader *ld, yaml_mark_t m, const char *kind,
                     const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));
static void diag_add(struct diags *d, const struct loader *ld, yaml_mark_t m, const char *kind,
                     const char *fmt, va_list ap)
{
    char *msg = xvasprintf(fmt, ap);
    xgrow(&d->v, &d->cap, d->n + 1, sizeof(*d->v));
    struct diag *e = &d->v[d->n];
    e->line = m.line + 1;
    e->col = m.column + 1;
    e->seq = d->n;
    e->text = xasprintf("%s:%zu:%zu: %s%s", ld->file, e->line, e->col, kind, msg);
    /* One message per line whatever a name or value holds: a newline in
     * a quoted key or an expanded path must not split it. */
    for (char *p = e->text; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            *p = '?';
        }
    }
    d->n++;
    free(msg);
}

static void err_at(struct loader *ld, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void err_at(struct loader *ld, yaml_mark_t m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_add(&ld->errs, ld, m, "", fmt, ap);
    va_end(ap);
}

static void warn_at(struct loader *ld, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warn_at(struct loader *ld, yaml_mark_t m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_add(&ld->warns, ld, m, "warning: ", fmt, ap);
    va_end(ap);
}

static int diag_cmp(const void *a, const void *b)
{
    const struct diag *x = a;
    const struct diag *y = b;
    if (x->line != y->line) {
        return x->line < y->line ? -1 : 1;
    }
    if (x->col != y->col) {
        return x->col < y->col ? -1 : 1;
    }
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorts the messages into file order and joins them with '\n' (no trailing
 * newline). Returns NULL when there are none. Frees the list either way. */
static char *diags_join(struct diags *d)
{
    char *out = NULL;
    if (d->n > 0) {
        struct sbuf sb = {0};
        qsort(d->v, d->n, sizeof(*d->v), diag_cmp);
        for (size_t i = 0; i < d->n; i++) {
            if (i > 0) {
                sbuf_addc(&sb, '\n');
            }
            sbuf_adds(&sb, d->v[i].text);
        }
        out = sbuf_detach(&sb);
    }
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i].text);
    }
    free(d->v);
    d->v = NULL;
    d->n = d->cap = 0;
    return out;
}

/* ---- Nodes ---- */

static yaml_node_t *node_at(const struct loader *ld, int index)
{
    return yaml_document_get_node(ld->doc, index);
}

/* A YAML null: an empty plain scalar, "~" or "null". */
static bool node_is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        return false;
    }
    const char *s = (const char *)n->data.scalar.value;
    return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

/* The text of a non-null scalar, else NULL. */
static const char *node_str(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || node_is_null(n)) {
        return NULL;
    }
    return (const char *)n->data.scalar.value;
}

/* Appends s to sb for quoting in a message: control characters become '?'
 * and long values are cut (at a UTF-8 character boundary). */
static void echo_value(struct sbuf *sb, const char *s)
{
    sbuf_add(sb, "", 0); /* so that sb->buf is a string even for "" */
    size_t len = strlen(s);
    size_t cut = len;
    if (len > CFG_MAX_ECHO) {
        cut = CFG_MAX_ECHO;
        while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80) {
            cut--;
        }
    }
    for (size_t i = 0; i < cut; i++) {
        unsigned char c = (unsigned char)s[i];
        sbuf_addc(sb, c < 0x20 || c == 0x7f ? '?' : (char)c);
    }
    if (cut < len) {
        sbuf_adds(sb, "...");
    }
}

/* What a node is, for "(got ...)": the quoted value of a scalar, else its
 * kind. Caller frees. */
static char *node_desc(const yaml_node_t *n)
{
    struct sbuf sb = {0};
    switch (n->type) {
    case YAML_MAPPING_NODE:
        sbuf_adds(&sb, "a mapping");
        break;
    case YAML_SEQUENCE_NODE:
        sbuf_adds(&sb, "a list");
        break;
    case YAML_SCALAR_NODE:
        if (node_is_null(n)) {
            sbuf_adds(&sb, "an empty value");
        } else {
            sbuf_addc(&sb, '\'');
            echo_value(&sb, (const char *)n->data.scalar.value);
            sbuf_addc(&sb, '\'');
        }
        break;
    default:
        sbuf_adds(&sb, "nothing");
        break;
    }
    return sbuf_detach(&sb);
}

/* The kind of a node without its value, for keys whose value must not be
 * echoed (passwords). */
static const char *node_kind(const yaml_node_t *n)
{
    if (n->type == YAML_MAPPING_NODE) {
        return "a mapping";
    }
    if (n->type == YAML_SEQUENCE_NODE) {
        return "a list";
    }
    return node_is_null(n) ? "an empty value" : "a string";
}

/* ---- Mappings against the schema ---- */

struct kv {
    const char *key;
    yaml_node_t *k;
    yaml_node_t *v;
};

/* The known keys present in one mapping (first occurrence of each). */
struct kvmap {
    struct kv kv[ARRAY_SIZE(account_keys)];
    size_t n;
};

static const struct kv *kv_get(const struct kvmap *m, const char *key)
{
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->kv[i].key, key) == 0) {
            return &m->kv[i];
        }
    }
    return NULL;
}

static bool in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s, list[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* Optimal string alignment distance (Levenshtein plus transposition of two
 * adjacent characters, the most common typo). */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a);
    size_t lb = strlen(b);
    if (la > 64 || lb > 64) {
        return SIZE_MAX;
    }
    size_t d[65][65];
    for (size_t i = 0; i <= la; i++) {
        d[i][0] = i;
    }
    for (size_t j = 0; j <= lb; j++) {
        d[0][j] = j;
    }
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) {
                best = d[i][j - 1] + 1;
            }
            if (d[i - 1][j - 1] + cost < best) {
                best = d[i - 1][j - 1] + cost;
            }
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best) {
                best = d[i - 2][j - 2] + 1;
            }
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

/* The known key closest to key, if close enough to be a likely typo. */
static const char *suggest(const char *key, const char *const *known, size_t n)
{
    size_t limit = strlen(key) / 3;
    if (limit < 2) {
        limit = 2;
    }
    const char *best = NULL;
    size_t best_d = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        size_t d = edit_distance(key, known[i]);
        if (d < best_d) {
            best_d = d;
            best = known[i];
        }
    }
    return best_d <= limit ? best : NULL;
}

static void add_known_list(struct sbuf *sb, const char *const *known, size_t n)
{
    sbuf_adds(sb, " (known keys: ");
    for (size_t i = 0; i < n; i++) {
        sbuf_addf(sb, "%s%s", i > 0 ? ", " : "", known[i]);
    }
    sbuf_addc(sb, ')');
}

/* "at top level", "in account 'x'", "under 'pop' in account 'x'". */
static char *where(const struct loader *ld)
{
    switch (ld->scope) {
    case SCOPE_ACCOUNT:
        return xasprintf("in account '%s'", ld->acct);
    case SCOPE_POP:
        return xasprintf("under 'pop' in account '%s'", ld->acct);
    default:
        return xstrdup("at top level");
    }
}

static void unknown_key(struct loader *ld, const char *key, const yaml_node_t *k,
                        const yaml_node_t *v, const char *const *known, size_t nknown)
{
    struct sbuf sb = {0};
    char *w = where(ld);
    sbuf_adds(&sb, "unknown key '");
    echo_value(&sb, key);
    sbuf_addf(&sb, "' %s", w);
    free(w);
    const char *s = suggest(key, known, nknown);
    if (strcmp(key, "<<") == 0) {
        sbuf_adds(&sb, " (YAML merge keys are not supported: write the keys out)");
    } else if (s != NULL) {
        sbuf_addf(&sb, " (did you mean '%s'?)", s);
    } else if (ld->scope == SCOPE_ACCOUNT && in_list(key, pop_keys, ARRAY_SIZE(pop_keys))) {
        sbuf_adds(&sb, " (it belongs under 'pop:')");
    } else if (ld->scope == SCOPE_POP && in_list(key, account_keys, ARRAY_SIZE(account_keys))) {
        sbuf_adds(&sb, " (it belongs directly in the account, not under 'pop:')");
    } else if (ld->scope == SCOPE_TOP && v->type == YAML_MAPPING_NODE) {
        sbuf_adds(&sb, " (accounts are defined under 'accounts:')");
    } else {
        add_known_list(&sb, known, nknown);
    }
    err_at(ld, k->start_mark, "%s", sb.buf);
    sbuf_free(&sb);
}

/* Collects the keys of mapping node into m, reporting unknown, duplicate and
 * non-string keys. */
static void collect_map(struct loader *ld, yaml_node_t *node, const char *const *known,
                        size_t nknown, struct kvmap *m)
{
    m->n = 0;
    for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = node_at(ld, p->key);
        yaml_node_t *v = node_at(ld, p->value);
        const char *key = node_str(k);
        if (key == NULL) {
            char *w = where(ld);
            char *d = node_desc(k);
            err_at(ld, k->start_mark, "keys must be plain names, not %s (%s)", d, w);
            free(d);
            free(w);
            continue;
        }
        if (!in_list(key, known, nknown)) {
            unknown_key(ld, key, k, v, known, nknown);
            continue;
        }
        const struct kv *prev = kv_get(m, key);
        if (prev != NULL) {
            char *w = where(ld);
            err_at(ld, k->start_mark, "duplicate key '%s' %s (first at line %zu)", key, w,
                   prev->k->start_mark.line + 1);
            free(w);
            continue;
        }
        m->kv[m->n++] = (struct kv){.key = key, .k = k, .v = v};
    }
}

/* ---- Values ---- */

/* Reports a problem with the value of kv: "account 'a': key 'k' <message>".
 * The position is the value's, or the key's when the value is empty (libyaml
 * places an empty value wherever the next token starts). */
static void key_err(struct loader *ld, const struct kv *kv, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void key_err(struct loader *ld, const struct kv *kv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    yaml_mark_t m = node_is_null(kv->v) ? kv->k->start_mark : kv->v->start_mark;
    switch (ld->scope) {
    case SCOPE_ACCOUNT:
        err_at(ld, m, "account '%s': key '%s' %s", ld->acct, kv->key, msg);
        break;
    case SCOPE_POP:
        err_at(ld, m, "account '%s': key 'pop.%s' %s", ld->acct, kv->key, msg);
        break;
    default:
        err_at(ld, m, "key '%s' %s", kv->key, msg);
        break;
    }
    free(msg);
}

/* "must be <what> (got <value>)". */
static void key_err_got(struct loader *ld, const struct kv *kv, const char *what)
{
    char *d = node_desc(kv->v);
    key_err(ld, kv, "must be %s (got %s)", what, d);
    free(d);
}

/* A non-empty string. The value is never echoed, as it may be a password. */
static bool get_str(struct loader *ld, const struct kv *kv, const char **out)
{
    const char *s = node_str(kv->v);
    if (s == NULL) {
        key_err(ld, kv, "must be a string (got %s)", node_kind(kv->v));
        return false;
    }
    if (s[0] == '\0') {
        key_err(ld, kv, "must not be empty");
        return false;
    }
    if (strlen(s) != kv->v->data.scalar.length) {
        key_err(ld, kv, "must not contain a NUL character");
        return false;
    }
    *out = s;
    return true;
}

static bool get_bool(struct loader *ld, const struct kv *kv, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    const char *s = node_str(kv->v);
    for (size_t i = 0; s != NULL && i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    key_err_got(ld, kv, "a boolean: true, false, yes, no, on or off");
    return false;
}

/* "auto", or a boolean (true = also towards local addresses). */
static bool get_compress(struct loader *ld, const struct kv *kv, enum cfg_compress *out)
{
    const char *s = node_str(kv->v);
    if (s != NULL && strcasecmp(s, "auto") == 0) {
        *out = CFG_COMPRESS_AUTO;
        return true;
    }
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    for (size_t i = 0; s != NULL && i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0 || strcasecmp(s, no[i]) == 0) {
            *out = strcasecmp(s, yes[i]) == 0 ? CFG_COMPRESS_ALWAYS : CFG_COMPRESS_NEVER;
            return true;
        }
    }
    key_err_got(ld, kv, "auto or a boolean: true, false, yes, no, on or off");
    return false;
}

/* Parses plain decimal digits with an optional '-' (so that "-1" is reported
 * as out of range rather than as not a number). Saturates on overflow. */
static bool parse_decimal(const char *s, long long *out)
{
    bool neg = *s == '-';
    if (neg) {
        s++;
    }
    if (*s == '\0') {
        return false;
    }
    long long v = 0;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9') {
            return false;
        }
        if (v < LLONG_MAX / 10) {
            v = v * 10 + (*s - '0');
        }
    }
    *out = neg ? -v : v;
    return true;
}

static bool get_int(struct loader *ld, const struct kv *kv, long long min, long long max,
                    long long *out)
{
    const char *s = node_str(kv->v);
    long long v;
    if (s != NULL && parse_decimal(s, &v) && v >= min && v <= max) {
        *out = v;
        return true;
    }
    /* INT_MAX stands for "no upper bound worth naming". */
    char *what = max >= INT_MAX ? xasprintf("an integer >= %lld", min)
                                : xasprintf("an integer from %lld to %lld", min, max);
    key_err_got(ld, kv, what);
    free(what);
    return false;
}

static bool get_enum(struct loader *ld, const struct kv *kv, const char *const *names, size_t n,
                     int *out)
{
    const char *s = node_str(kv->v);
    for (size_t i = 0; s != NULL && i < n; i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (int)i;
            return true;
        }
    }
    struct sbuf sb = {0};
    sbuf_adds(&sb, "one of ");
    for (size_t i = 0; i < n; i++) {
        sbuf_addf(&sb, "%s%s", i > 0 ? ", " : "", names[i]);
    }
    key_err_got(ld, kv, sb.buf);
    sbuf_free(&sb);
    return false;
}

/* Collapses "//" and "/./", resolves ".." lexically and drops a trailing
 * '/', so that two spellings of one directory compare equal. */
static char *path_normalize(const char *path)
{
    struct sbuf sb = {0};
    const char *p = path;
    while (*p != '\0') {
        while (*p == '/') {
            p++;
        }
        const char *end = strchr(p, '/');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len == 0 || (len == 1 && p[0] == '.')) {
            /* Nothing to add. */
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            char *slash = sb.len > 0 ? strrchr(sb.buf, '/') : NULL;
            if (slash != NULL) {
                sb.len = (size_t)(slash - sb.buf);
                sb.buf[sb.len] = '\0';
            }
        } else {
            sbuf_addc(&sb, '/');
            sbuf_add(&sb, p, len);
        }
        p += len;
    }
    if (sb.len == 0) {
        sbuf_addc(&sb, '/');
    }
    return sbuf_detach(&sb);
}

/* A path with ~ and $VAR expanded, absolute and normalized. */
static bool get_path(struct loader *ld, const struct kv *kv, char **out)
{
    const char *s;
    if (!get_str(ld, kv, &s)) {
        return false;
    }
    char *expanded = NULL;
    char *why = NULL;
    if (path_expand(s, &expanded, &why) != 0) {
        key_err(ld, kv, "cannot be expanded: %s", why);
        free(why);
        return false;
    }
    if (expanded[0] != '/') {
        struct sbuf sb = {0};
        echo_value(&sb, expanded);
        key_err(ld, kv, "must be an absolute path, starting with '/', '~/' or $VAR (got '%s')",
                sb.buf);
        sbuf_free(&sb);
        free(expanded);
        return false;
    }
    *out = path_normalize(expanded);
    free(expanded);
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* "sha256:" plus 64 hex digits, from what `openssl x509 -fingerprint
 * -sha256` prints or the bare digits, with or without colons, any case. */
static bool get_fingerprint(struct loader *ld, const struct kv *kv, char **out)
{
    const char *s;
    if (!get_str(ld, kv, &s)) {
        return false;
    }
    const char *p = s;
    if (strncasecmp(p, "sha256:", 7) == 0) {
        p += 7;
    } else if (strncasecmp(p, "sha256 fingerprint=", 19) == 0) {
        p += 19;
    }
    char hex[65];
    size_t n = 0;
    bool bad = false;
    for (; *p != '\0'; p++) {
        if (*p == ':') {
            continue;
        }
        if (hexval(*p) < 0) {
            bad = true;
            break;
        }
        if (n < 64) {
            hex[n] = (char)("0123456789abcdef"[hexval(*p)]);
        }
        n++;
    }
    if (bad || n != 64) {
        struct sbuf sb = {0};
        if (bad) {
            sbuf_addc(&sb, '\'');
            echo_value(&sb, s);
            sbuf_addc(&sb, '\'');
        } else {
            sbuf_addf(&sb, "%zu hex digits", n);
        }
        key_err(ld, kv,
                "must be a SHA-256 certificate fingerprint: 64 hex digits, colons optional, "
                "optionally after 'sha256:' (got %s)",
                sb.buf);
        sbuf_free(&sb);
        return false;
    }
    hex[64] = '\0';
    *out = xasprintf("sha256:%s", hex);
    return true;
}

/* A size in bytes with an optional k, M or G suffix (1024-based). */
static bool get_size(struct loader *ld, const struct kv *kv, uint64_t *out)
{
    const char *s = node_str(kv->v);
    uint64_t v = 0;
    bool ok = s != NULL && *s >= '0' && *s <= '9';
    const char *p = s;
    while (ok && *p >= '0' && *p <= '9') {
        if (v > (UINT64_MAX - 9) / 10) {
            ok = false;
            break;
        }
        v = v * 10 + (uint64_t)(*p++ - '0');
    }
    if (ok && *p != '\0') {
        unsigned shift = 0;
        switch (*p) {
        case 'k':
        case 'K':
            shift = 10;
            break;
        case 'm':
        case 'M':
            shift = 20;
            break;
        case 'g':
        case 'G':
            shift = 30;
            break;
        default:
            ok = false;
            break;
        }
        if (ok && (p[1] != '\0' || v > (UINT64_MAX >> shift))) {
            ok = false;
        }
        v <<= ok ? shift : 0;
    }
    if (!ok) {
        key_err_got(ld, kv,
                    "a size in bytes, optionally with a suffix k, M or G (1024-based) such as "
                    "'25M'");
        return false;
    }
    *out = v;
    return true;
}

/* A plain decimal number such as "0.5" or "1"; no exponents, signs or
 * locale-dependent separators. The digits are read as one integer and scaled
 * once, so that "0.75" gives exactly the double nearest to 0.75. */
static bool parse_fraction(const char *s, size_t len, double *out)
{
    double mantissa = 0;
    double scale = 1;
    bool digits = false;
    bool dot = false;
    if (len > 15) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.' && !dot) {
            dot = true;
        } else if (s[i] >= '0' && s[i] <= '9') {
            digits = true;
            mantissa = mantissa * 10 + (s[i] - '0');
            if (dot) {
                scale *= 10;
            }
        } else {
            return false;
        }
    }
    *out = mantissa / scale;
    return digits;
}

static bool get_ratio(struct loader *ld, const struct kv *kv, double *out)
{
    const char *s = node_str(kv->v);
    double v = 0;
    bool ok = false;
    if (s != NULL) {
        size_t len = strlen(s);
        if (len > 0 && s[len - 1] == '%') {
            ok = parse_fraction(s, len - 1, &v) && v <= 100;
            v /= 100;
        } else {
            ok = parse_fraction(s, len, &v) && v <= 1;
        }
    }
    if (!ok) {
        key_err_got(ld, kv, "a number from 0 to 1 or a percentage such as '50%'");
        return false;
    }
    *out = v;
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil), so that no time zone is involved. */
static long long days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long yoe = y - era * 400;
    long long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static bool get_date(struct loader *ld, const struct kv *kv, time_t *out)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *s = node_str(kv->v);
    bool ok = s != NULL && strlen(s) == 10 && s[4] == '-' && s[7] == '-';
    for (int i = 0; ok && i < 10; i++) {
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9')) {
            ok = false;
        }
    }
    if (ok) {
        int y = atoi(s);
        int m = atoi(s + 5);
        int d = atoi(s + 8);
        bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        ok = y >= 1970 && m >= 1 && m <= 12 && d >= 1 &&
             d <= mdays[m - 1] + (m == 2 && leap ? 1 : 0);
        if (ok) {
            *out = (time_t)(days_from_civil(y, m, d) * 86400);
            return true;
        }
    }
    key_err_got(ld, kv, "a calendar date as YYYY-MM-DD, from 1970 on");
    return false;
}

/* ---- password_command ---- */

static void argv_push(char ***argv, size_t *n, size_t *cap, char *word)
{
    xgrow(argv, cap, *n + 2, sizeof(**argv));
    (*argv)[(*n)++] = word;
    (*argv)[*n] = NULL;
}

static void argv_free(char **argv)
{
    for (size_t i = 0; argv != NULL && argv[i] != NULL; i++) {
        free(argv[i]);
    }
    free(argv);
}

/* Splits a command line into words with the quoting of a POSIX shell:
 * '...' is literal, "..." takes backslash before \ " $ ` and newline, a
 * backslash outside quotes escapes the next character, and an unquoted "~"
 * or "~/" starting a word is $HOME. Nothing else of a shell is done, so
 * characters that would mean something to one (| ; & < > ( ) ` $) are
 * refused unless quoted rather than silently passed on as arguments.
 * Returns a NULL-terminated argv, or NULL with *why_r set (caller frees). */
static char **split_command(const char *s, char **why_r)
{
    char **argv = NULL;
    size_t n = 0;
    size_t cap = 0;
    struct sbuf w = {0};
    bool in_word = false;
    const char *p = s;
    *why_r = NULL;
    while (*p != '\0' && *why_r == NULL) {
        char c = *p;
        if (c == ' ' || c == '\t' || c == '\n') {
            if (in_word) {
                argv_push(&argv, &n, &cap, sbuf_detach(&w));
                in_word = false;
            }
            p++;
        } else if (c == '\'') {
            const char *end = strchr(p + 1, '\'');
            if (end == NULL) {
                *why_r = xstrdup("has an unterminated single quote");
                break;
            }
            sbuf_add(&w, p + 1, (size_t)(end - p - 1));
            in_word = true;
            p = end + 1;
        } else if (c == '"') {
            in_word = true;
            sbuf_add(&w, "", 0);
            for (p++; *p != '"'; p++) {
                if (*p == '\0') {
                    *why_r = xstrdup("has an unterminated double quote");
                    break;
                }
                if (*p == '\\' && p[1] != '\0' && strchr("$`\"\\\n", p[1]) != NULL) {
                    p++;
                    if (*p != '\n') {
                        sbuf_addc(&w, *p);
                    }
                } else if (*p == '$' || *p == '`') {
                    *why_r = xasprintf("contains '%c' inside double quotes, but the command "
                                       "runs without a shell: use single quotes or a backslash",
                                       *p);
                    break;
                } else {
                    sbuf_addc(&w, *p);
                }
            }
            if (*why_r == NULL) {
                p++;
            }
        } else if (c == '\\') {
            if (p[1] == '\0') {
                *why_r = xstrdup("ends with a backslash");
                break;
            }
            if (p[1] != '\n') {
                sbuf_addc(&w, p[1]);
                in_word = true;
            }
            p += 2;
        } else if (strchr("|;&<>()`$", c) != NULL) {
            *why_r = xasprintf("contains an unquoted '%c', but the command runs without a "
                               "shell: quote it, or write a list such as "
                               "[\"sh\", \"-c\", \"...\"]",
                               c);
        } else if (c == '~' && !in_word && (p[1] == '/' || p[1] == '\0' || p[1] == ' ')) {
            const char *home = getenv("HOME");
            if (home == NULL || home[0] == '\0') {
                *why_r = xstrdup("uses '~' but $HOME is not set");
                break;
            }
            sbuf_adds(&w, home);
            in_word = true;
            p++;
        } else {
            sbuf_addc(&w, c);
            in_word = true;
            p++;
        }
    }
    if (*why_r == NULL && in_word) {
        argv_push(&argv, &n, &cap, sbuf_detach(&w));
    }
    sbuf_free(&w);
    if (*why_r == NULL && n == 0) {
        *why_r = xstrdup("must not be empty");
    }
    if (*why_r != NULL) {
        argv_free(argv);
        return NULL;
    }
    return argv;
}

static bool get_command(struct loader *ld, const struct kv *kv, char ***out)
{
    if (kv->v->type == YAML_SEQUENCE_NODE) {
        yaml_node_item_t *start = kv->v->data.sequence.items.start;
        yaml_node_item_t *top = kv->v->data.sequence.items.top;
        if (start == top) {
            key_err(ld, kv, "must not be an empty list");
            return false;
        }
        char **argv = xcalloc((size_t)(top - start) + 1, sizeof(*argv));
        size_t n = 0;
        for (yaml_node_item_t *it = start; it < top; it++) {
            yaml_node_t *item = node_at(ld, *it);
            const char *s = node_str(item);
            if (s == NULL || strlen(s) != item->data.scalar.length || (n == 0 && s[0] == '\0')) {
                char *d = s != NULL ? xstrdup("not a usable string") : node_desc(item);
                key_err(ld, kv,
                        "must be a list of strings naming a program and its arguments (item %zu "
                        "is %s)",
                        n + 1, d);
                free(d);
                argv_free(argv);
                return false;
            }
            argv[n++] = xstrdup(s);
        }
        *out = argv;
        return true;
    }
    const char *s = node_str(kv->v);
    if (s == NULL) {
        key_err_got(ld, kv, "a string or a list of strings naming a program and its arguments");
        return false;
    }
    char *why = NULL;
    char **argv = split_command(s, &why);
    if (argv == NULL) {
        key_err(ld, kv, "%s", why);
        free(why);
        return false;
    }
    *out = argv;
    return true;
}

/* The most folders `idle:` may name: each takes a connection, and servers
 * allow few per user (Dovecot 10, Gmail 15 shared with the user's phone). */
#define CFG_IDLE_MAX 8

/* idle: a folder name or a list of them (names, not patterns), each one of
 * the folders the account syncs. */
static bool get_idle(struct loader *ld, const struct kv *kv, const struct cfg_account *a,
                     char ***out)
{
    yaml_node_t *single = kv->v->type == YAML_SCALAR_NODE ? kv->v : NULL;
    size_t n = 1;
    if (kv->v->type == YAML_SEQUENCE_NODE) {
        n = (size_t)(kv->v->data.sequence.items.top - kv->v->data.sequence.items.start);
        if (n == 0) {
            key_err(ld, kv, "must not be an empty list (leave it out for INBOX)");
            return false;
        }
    } else if (kv->v->type != YAML_SCALAR_NODE || node_is_null(kv->v)) {
        key_err_got(ld, kv, "a folder name or a list of them");
        return false;
    }
    if (n > CFG_IDLE_MAX) {
        key_err(ld, kv,
                "names %zu folders; at most %d (each takes a connection of its own: servers allow "
                "few per user)",
                n, CFG_IDLE_MAX);
        return false;
    }
    char **names = xcalloc(n + 1, sizeof(*names));
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item =
            single != NULL ? single : node_at(ld, kv->v->data.sequence.items.start[i]);
        const char *s = node_str(item);
        const char *why = NULL;
        if (s == NULL || strlen(s) != item->data.scalar.length || s[0] == '\0') {
            why = "not a folder name";
        } else if (strpbrk(s, "*%?[") != NULL || s[0] == '!') {
            why = "a pattern: idle names folders";
        }
        char *name = why == NULL ? sync_inbox_canon(s) : NULL;
        if (why == NULL && !cfg_folder_selected(a, name)) {
            why = "not one of the folders this account syncs (see folders)";
        }
        for (size_t k = 0; why == NULL && k < i; k++) {
            if (strcmp(names[k], name) == 0) {
                why = "named twice";
            }
        }
        if (why != NULL) {
            char *d = s != NULL ? xasprintf("'%s'", s) : node_desc(item);
            key_err(ld, kv, "item %zu (%s) is %s", i + 1, d, why);
            free(d);
            free(name);
            argv_free(names);
            return false;
        }
        names[i] = name;
    }
    *out = names;
    return true;
}

/* ---- Folder patterns ---- */

/* True when s starts with a first hierarchy level spelled "inbox" in any
 * case: IMAP treats that name case-insensitively. */
static bool get_folders(struct loader *ld, const struct kv *kv, struct cfg_pattern **out,
                        size_t *nout)
{
    yaml_node_t *single = kv->v->type == YAML_SCALAR_NODE ? kv->v : NULL;
    size_t n = 1;
    if (kv->v->type == YAML_SEQUENCE_NODE) {
        n = (size_t)(kv->v->data.sequence.items.top - kv->v->data.sequence.items.start);
        if (n == 0) {
            key_err(ld, kv, "must not be an empty list: no folder would be synced");
            return false;
        }
    } else if (kv->v->type != YAML_SCALAR_NODE || node_is_null(kv->v)) {
        key_err_got(ld, kv, "a folder pattern or a list of them");
        return false;
    }
    struct cfg_pattern *pats = xcalloc(n, sizeof(*pats));
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item =
            single != NULL ? single : node_at(ld, kv->v->data.sequence.items.start[i]);
        const char *s = node_str(item);
        if (s == NULL) {
            char *d = node_desc(item);
            key_err(ld, kv, "must be a list of folder patterns (item %zu is %s)", i + 1, d);
            free(d);
            ok = false;
            continue;
        }
        bool exclude = s[0] == '!';
        const char *glob = exclude ? s + 1 : s;
        if (glob[0] == '\0' || strlen(s) != item->data.scalar.length) {
            char *d = node_desc(item);
            key_err(ld, kv, "has an empty pattern %s (item %zu); use '*' for every folder", d,
                    i + 1);
            free(d);
            ok = false;
            continue;
        }
        pats[i].exclude = exclude;
        pats[i].glob = sync_inbox_canon(glob);
    }
    if (!ok) {
        for (size_t i = 0; i < n; i++) {
            free(pats[i].glob);
        }
        free(pats);
        return false;
    }
    *out = pats;
    *nout = n;
    return true;
}

bool cfg_folder_selected(const struct cfg_account *acct, const char *folder)
{
    if (acct->nfolders == 0) {
        return true; /* the default, ["*"] */
    }
    char *name = sync_inbox_canon(folder);
    bool selected = false;
    for (size_t i = 0; i < acct->nfolders; i++) {
        if (sync_glob_match(acct->folders[i].glob, name)) {
            selected = !acct->folders[i].exclude;
        }
    }
    free(name);
    return selected;
}

/* ---- Accounts ---- */

static bool valid_account_name(const char *s)
{
    bool alnum0 = (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') ||
                  (s[0] >= '0' && s[0] <= '9');
    if (!alnum0) {
        return false;
    }
    for (const char *p = s; *p != '\0'; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

/* What the account loader needs beyond struct cfg_account, for the checks
 * made across accounts. */
struct acct_extra {
    const struct kv *maildir; /* NULL when missing or invalid */
    struct kv maildir_kv;
};

static void load_pop(struct loader *ld, const struct kv *popkv, struct cfg_account *a)
{
    if (popkv->v->type != YAML_MAPPING_NODE) {
        if (!node_is_null(popkv->v)) {
            key_err_got(ld, popkv, "a mapping of POP3 settings");
        }
        return;
    }
    struct kvmap m;
    ld->scope = SCOPE_POP;
    collect_map(ld, popkv->v, pop_keys, ARRAY_SIZE(pop_keys), &m);
    const struct kv *kv;
    if ((kv = kv_get(&m, "keep_on_server")) != NULL) {
        get_bool(ld, kv, &a->pop.keep_on_server);
    }
    long long v;
    if ((kv = kv_get(&m, "delete_after_days")) != NULL && get_int(ld, kv, 1, INT_MAX, &v)) {
        a->pop.delete_after_days = (int)v;
    }
    if ((kv = kv_get(&m, "since")) != NULL && get_date(ld, kv, &a->pop.since)) {
        a->pop.has_since = true;
    }
    if ((kv = kv_get(&m, "delete_when_deleted_locally")) != NULL) {
        get_bool(ld, kv, &a->pop.delete_when_deleted_locally);
    }
    if (!a->pop.keep_on_server) {
        if ((kv = kv_get(&m, "delete_after_days")) != NULL) {
            warn_at(ld, kv->k->start_mark,
                    "account '%s': key 'pop.delete_after_days' has no effect with "
                    "keep_on_server: false (messages are deleted once downloaded)",
                    a->name);
        }
        if ((kv = kv_get(&m, "delete_when_deleted_locally")) != NULL) {
            warn_at(ld, kv->k->start_mark,
                    "account '%s': key 'pop.delete_when_deleted_locally' has no effect with "
                    "keep_on_server: false (messages are deleted once downloaded)",
                    a->name);
        }
    }
    ld->scope = SCOPE_ACCOUNT;
}

/* The provider preset named by 'provider' (and 'region'), or NULL (none,
 * or a mistake, which is reported). */
static const struct provider *load_provider(struct loader *ld, const struct kvmap *m,
                                            struct cfg_account *a)
{
    const struct kv *pkv = kv_get(m, "provider");
    const struct kv *rkv = kv_get(m, "region");
    const char *name = NULL;
    const char *region = NULL;
    if (rkv != NULL && !get_str(ld, rkv, &region)) {
        return NULL;
    }
    if (pkv == NULL) {
        if (rkv != NULL) {
            key_err(ld, rkv,
                    "picks a provider's data centre, so it needs 'provider' (e.g. "
                    "provider: zoho, region: %s)",
                    region);
        }
        return NULL;
    }
    if (!get_str(ld, pkv, &name)) {
        return NULL;
    }
    const struct provider *p = NULL;
    enum provider_lookup_result r = provider_lookup(name, region, &p);
    if (r == PROVIDER_FOUND) {
        a->provider = xstrdup(p->name);
        return p;
    }
    if (r == PROVIDER_UNKNOWN) {
        size_t n = provider_count();
        const char **names = xcalloc(n, sizeof(*names));
        struct sbuf sb = {0};
        sbuf_adds(&sb, "one of the known providers: ");
        for (size_t i = 0; i < n; i++) {
            names[i] = provider_at(i)->name;
            sbuf_addf(&sb, "%s%s", i > 0 ? ", " : "", names[i]);
        }
        const char *close = suggest(name, names, n);
        char *d = node_desc(pkv->v);
        key_err(ld, pkv, "must be %s (got %s)%s%s%s", sb.buf, d,
                close != NULL ? "; did you mean '" : "", close != NULL ? close : "",
                close != NULL ? "'?" : "");
        free(d);
        sbuf_free(&sb);
        free(names);
        return NULL;
    }
    const struct provider *named = provider_find(name, NULL);
    if (r == PROVIDER_NO_REGIONS) {
        key_err(ld, rkv, "picks a data centre, and %s has only one; remove 'region'", named->title);
        return NULL;
    }
    if (r == PROVIDER_REGION_CONFLICT) {
        key_err(ld, rkv,
                "is '%s', but provider '%s' is another data centre; use provider: %s with "
                "region: %s, or provider: %s",
                region, name, named->family, region, provider_find(named->family, region)->name);
        return NULL;
    }
    /* Name the family's regions, each with the provider name it picks. */
    struct sbuf sb = {0};
    for (size_t i = 0; i < provider_count(); i++) {
        const struct provider *q = provider_at(i);
        if (strcmp(q->family, named->family) == 0 && q->regions[0] != NULL) {
            sbuf_addf(&sb, "%s%s (%s)", sb.len > 0 ? ", " : "", q->regions[0], q->name);
        }
    }
    key_err(ld, rkv, "must be a data centre of %s: %s (got '%s')", named->family, sb.buf, region);
    sbuf_free(&sb);
    return NULL;
}

static void load_account(struct loader *ld, yaml_node_t *knode, yaml_node_t *vnode,
                         struct cfg_account *a, struct acct_extra *x)
{
    /* Defaults first, so that a partly invalid account is still sane to
     * free and to check against the others. */
    a->name = xstrdup((const char *)knode->data.scalar.value);
    a->line = (int)knode->start_mark.line + 1;
    a->max_connections = 3;
    a->max_delete_ratio = 0.5;
    a->compress = CFG_COMPRESS_AUTO;
    a->timeout_seconds = 60;
    a->local_delay = 1;
    a->idle_restart = 600;
    a->pop.keep_on_server = true;
    a->pop.delete_after_days = -1;
    ld->scope = SCOPE_ACCOUNT;
    ld->acct = a->name;

    if (!valid_account_name(a->name) || strlen(a->name) > CFG_MAX_NAME_LEN) {
        struct sbuf sb = {0};
        echo_value(&sb, a->name);
        err_at(ld, knode->start_mark,
               "account name '%s' is not valid: use up to %d letters, digits, '.', '_' and "
               "'-', starting with a letter or digit",
               sb.buf, CFG_MAX_NAME_LEN);
        sbuf_free(&sb);
    }
    if (vnode->type != YAML_MAPPING_NODE) {
        char *d = node_desc(vnode);
        err_at(ld, node_is_null(vnode) ? knode->start_mark : vnode->start_mark,
               "account '%s' must be a mapping of settings (got %s)", a->name, d);
        free(d);
        return;
    }
    struct kvmap m;
    collect_map(ld, vnode, account_keys, ARRAY_SIZE(account_keys), &m);
    const struct kv *kv;
    int e;
    long long v;
    const char *s;

    /* The protocol decides which keys apply, so it comes first. */
    bool proto_known = true;
    if ((kv = kv_get(&m, "protocol")) != NULL) {
        proto_known = get_enum(ld, kv, protocol_names, ARRAY_SIZE(protocol_names), &e);
        a->protocol = proto_known ? (enum cfg_protocol)e : CFG_PROTO_IMAP;
    }
    bool is_pop = proto_known && a->protocol == CFG_PROTO_POP3;
    bool is_imap = proto_known && a->protocol == CFG_PROTO_IMAP;

    const struct provider *preset = load_provider(ld, &m, a);
    const struct provider_server *psrv =
        preset != NULL && proto_known ? provider_server(preset, a->protocol) : NULL;
    if (preset != NULL) {
        /* Limits and the login method the provider wants, unless set below. */
        if (preset->max_connections > 0) {
            a->max_connections = preset->max_connections;
        }
        a->auth = preset->auth_default;
    }

    /* A preset's server applies where the account does not say otherwise:
     * its TLS mode unless tls is set, and its port unless port is set or the
     * account chose another TLS mode than the preset's (then the standard
     * port of that mode). */
    a->tls = psrv != NULL && psrv->host != NULL ? psrv->tls : CFG_TLS_IMPLICIT;
    const struct kv *tlskv = kv_get(&m, "tls");
    if (tlskv != NULL && get_enum(ld, tlskv, tls_names, ARRAY_SIZE(tls_names), &e)) {
        a->tls = (enum cfg_tls)e;
    }

    if ((kv = kv_get(&m, "host")) != NULL) {
        if (get_str(ld, kv, &s)) {
            if (strstr(s, "://") != NULL || strpbrk(s, "/ \t") != NULL) {
                key_err_got(ld, kv, "a host name or address, not a URL or path");
            } else {
                a->host = xstrdup(s);
            }
        }
    } else if (psrv != NULL && psrv->host != NULL) {
        a->host = xstrdup(psrv->host);
    } else if (preset != NULL) {
        if (psrv != NULL) {
            err_at(ld, kv_get(&m, "provider")->v->start_mark,
                   "account '%s': %s offers no %s access; use protocol: %s, or set 'host'", a->name,
                   preset->title, a->protocol == CFG_PROTO_POP3 ? "POP3" : "IMAP",
                   a->protocol == CFG_PROTO_POP3 ? "imap" : "pop3");
        }
    } else {
        err_at(ld, knode->start_mark,
               "account '%s': missing required key 'host' (or a 'provider' that sets it)", a->name);
    }

    a->port = psrv != NULL && psrv->host != NULL && a->tls == psrv->tls
                  ? psrv->port
                  : default_port(a->protocol, a->tls);
    if ((kv = kv_get(&m, "port")) != NULL && get_int(ld, kv, 1, 65535, &v)) {
        a->port = (uint16_t)v;
    }

    if ((kv = kv_get(&m, "ca_file")) != NULL && get_path(ld, kv, &a->ca_file)) {
        struct stat st;
        int fd = open(a->ca_file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        int saved = errno;
        if (fd < 0) {
            key_err(ld, kv, "names a file that cannot be read: %s: %s", a->ca_file,
                    strerror(saved));
        } else if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            key_err(ld, kv, "must name a regular file of PEM certificates (%s is not one)",
                    a->ca_file);
        }
        if (fd >= 0) {
            close(fd);
        }
        if (a->tls == CFG_TLS_NONE) {
            warn_at(ld, kv->k->start_mark,
                    "account '%s': key 'ca_file' has no effect with tls: none", a->name);
        }
    }
    if ((kv = kv_get(&m, "tls_fingerprint")) != NULL &&
        get_fingerprint(ld, kv, &a->tls_fingerprint) && a->tls == CFG_TLS_NONE) {
        warn_at(ld, kv->k->start_mark,
                "account '%s': key 'tls_fingerprint' has no effect with tls: none", a->name);
    }
    if ((kv = kv_get(&m, "allow_plaintext")) != NULL) {
        get_bool(ld, kv, &a->allow_plaintext);
    }

    if ((kv = kv_get(&m, "user")) != NULL) {
        if (get_str(ld, kv, &s)) {
            a->user = xstrdup(s);
        }
    } else {
        err_at(ld, knode->start_mark, "account '%s': missing required key 'user'", a->name);
    }
    if (preset != NULL && preset->login == PROVIDER_LOGIN_ADDRESS && a->user != NULL &&
        strchr(a->user, '@') == NULL) {
        warn_at(ld, kv_get(&m, "user")->v->start_mark,
                "account '%s': %s expects the full address as the user name (like "
                "%s@example.com), not '%s'",
                a->name, preset->title, a->user, a->user);
    }

    const struct kv *pwkv = kv_get(&m, "password");
    const struct kv *cmdkv = kv_get(&m, "password_command");
    if (pwkv != NULL && !ld->has_password) {
        ld->has_password = true;
        ld->password_mark = pwkv->k->start_mark;
    }
    if (pwkv != NULL && cmdkv != NULL) {
        const struct kv *later =
            pwkv->k->start_mark.index > cmdkv->k->start_mark.index ? pwkv : cmdkv;
        err_at(ld, later->k->start_mark,
               "account '%s': 'password' and 'password_command' are both set; keep only one",
               a->name);
    } else if (pwkv != NULL) {
        if (get_str(ld, pwkv, &s)) {
            a->password = xstrdup(s);
        }
    } else if (cmdkv != NULL) {
        get_command(ld, cmdkv, &a->password_command);
    } else {
        err_at(ld, knode->start_mark,
               "account '%s': missing 'password' or 'password_command' (one is required)", a->name);
    }

    if ((kv = kv_get(&m, "auth")) != NULL &&
        get_enum(ld, kv, auth_names, ARRAY_SIZE(auth_names), &e)) {
        a->auth = (enum cfg_auth)e;
        if (a->auth == CFG_AUTH_APOP && is_imap) {
            key_err(ld, kv, "is 'apop', which applies only to POP3 accounts");
        }
    }

    if ((kv = kv_get(&m, "maildir")) != NULL) {
        if (get_path(ld, kv, &a->maildir)) {
            x->maildir_kv = *kv;
            x->maildir = &x->maildir_kv;
        }
    } else {
        err_at(ld, knode->start_mark, "account '%s': missing required key 'maildir'", a->name);
    }
    if ((kv = kv_get(&m, "layout")) != NULL &&
        get_enum(ld, kv, layout_names, ARRAY_SIZE(layout_names), &e)) {
        a->layout = (enum cfg_layout)e;
    }

    for (size_t i = 0; i < ARRAY_SIZE(imap_only_keys); i++) {
        if (is_pop && (kv = kv_get(&m, imap_only_keys[i])) != NULL) {
            /* POP3 has one session per mailbox and no compression; its
             * age limit is the absolute pop: since date. */
            err_at(ld, kv->k->start_mark,
                   "account '%s': key '%s' applies only to IMAP accounts (this one has "
                   "protocol: pop3)%s",
                   a->name, kv->key,
                   strcmp(kv->key, "max_age_days") == 0 ? "; for POP3 use 'pop: since: YYYY-MM-DD'"
                                                        : "");
        }
    }
    if (!is_pop) {
        if ((kv = kv_get(&m, "folders")) != NULL) {
            get_folders(ld, kv, &a->folders, &a->nfolders);
        }
        if ((kv = kv_get(&m, "subscribed_only")) != NULL) {
            get_bool(ld, kv, &a->subscribed_only);
        }
        if ((kv = kv_get(&m, "on_local_delete")) != NULL &&
            get_enum(ld, kv, local_delete_names, ARRAY_SIZE(local_delete_names), &e)) {
            a->on_local_delete = (enum cfg_local_delete)e;
        }
        if ((kv = kv_get(&m, "trash")) != NULL && get_str(ld, kv, &s)) {
            a->trash = xstrdup(s);
        }
        if ((kv = kv_get(&m, "delete_folders")) != NULL) {
            get_bool(ld, kv, &a->delete_folders);
        }
        if ((kv = kv_get(&m, "max_delete_ratio")) != NULL) {
            get_ratio(ld, kv, &a->max_delete_ratio);
        }
    }
    if (a->folders == NULL) {
        /* Everything, less what the provider shows twice (Gmail's All Mail):
         * an account that lists its folders decides alone. */
        size_t nex = 0;
        while (preset != NULL && !is_pop && preset->exclude[nex] != NULL) {
            nex++;
        }
        a->folders = xcalloc(1 + nex, sizeof(*a->folders));
        a->folders[0].glob = xstrdup("*");
        for (size_t i = 0; i < nex; i++) {
            a->folders[1 + i].glob = xstrdup(preset->exclude[i]);
            a->folders[1 + i].exclude = true;
        }
        a->nfolders = 1 + nex;
    }

    if ((kv = kv_get(&m, "max_connections")) != NULL && get_int(ld, kv, 1, 16, &v)) {
        a->max_connections = (unsigned)v;
    }
    if ((kv = kv_get(&m, "max_size")) != NULL) {
        get_size(ld, kv, &a->max_size);
    }
    if ((kv = kv_get(&m, "max_age_days")) != NULL && get_int(ld, kv, 0, INT_MAX, &v)) {
        a->max_age_days = (unsigned)v;
    }
    if ((kv = kv_get(&m, "compress")) != NULL) {
        get_compress(ld, kv, &a->compress);
    }
    if ((kv = kv_get(&m, "timeout")) != NULL && get_int(ld, kv, 5, 3600, &v)) {
        a->timeout_seconds = (unsigned)v;
    }
    a->poll_interval = is_imap ? 300 : 900;
    if ((kv = kv_get(&m, "poll_interval")) != NULL && get_int(ld, kv, 1, 86400, &v)) {
        a->poll_interval = (unsigned)v;
    }
    if ((kv = kv_get(&m, "local_delay")) != NULL && get_int(ld, kv, 0, 3600, &v)) {
        a->local_delay = (unsigned)v;
    }
    if ((kv = kv_get(&m, "idle_restart")) != NULL && get_int(ld, kv, 60, 1740, &v)) {
        /* RFC 2177: a server may end IDLE after 30 minutes. */
        a->idle_restart = (unsigned)v;
    }
    if ((kv = kv_get(&m, "on_new_mail")) != NULL) {
        get_command(ld, kv, &a->on_new_mail);
    }
    if (!is_pop && (kv = kv_get(&m, "idle")) != NULL) {
        get_idle(ld, kv, a, &a->idle); /* after folders: checked against them */
    }

    if ((kv = kv_get(&m, "pop")) != NULL) {
        if (is_imap) {
            err_at(ld, kv->k->start_mark,
                   "account '%s': key 'pop' applies only to POP3 accounts (set 'protocol: "
                   "pop3' or remove it)",
                   a->name);
        } else {
            load_pop(ld, kv, a);
        }
    }

    /* Checked last, once both the TLS mode and the credentials are known. */
    if (a->tls == CFG_TLS_NONE && (pwkv != NULL || cmdkv != NULL) && !a->allow_plaintext) {
        key_err(ld, tlskv,
                "is 'none', so the password would be sent unencrypted; use implicit or "
                "starttls, or set 'allow_plaintext: true' to allow it (only on a trusted "
                "network such as localhost)");
    }
}

/* Two accounts writing one Maildir (or one inside the other, which in the
 * verbatim layout is a folder of the outer account) would sync each other's
 * mail to the wrong server. */
static void check_maildirs(struct loader *ld, struct cfg *cfg, struct acct_extra *x)
{
    ld->scope = SCOPE_TOP;
    for (size_t j = 0; j < cfg->naccounts; j++) {
        const struct cfg_account *b = &cfg->accounts[j];
        if (x[j].maildir == NULL) {
            continue;
        }
        for (size_t i = 0; i < j; i++) {
            const struct cfg_account *a = &cfg->accounts[i];
            if (x[i].maildir == NULL) {
                continue;
            }
            size_t la = strlen(a->maildir);
            size_t lb = strlen(b->maildir);
            yaml_mark_t mark = x[j].maildir->v->start_mark;
            if (strcmp(a->maildir, b->maildir) == 0) {
                err_at(ld, mark,
                       "account '%s': maildir '%s' is also the maildir of account '%s' "
                       "(line %zu); each account needs its own",
                       b->name, b->maildir, a->name, x[i].maildir->v->start_mark.line + 1);
            } else if ((la < lb && strncmp(a->maildir, b->maildir, la) == 0 &&
                        (b->maildir[la] == '/' || la == 1)) ||
                       (lb < la && strncmp(a->maildir, b->maildir, lb) == 0 &&
                        (a->maildir[lb] == '/' || lb == 1))) {
                err_at(ld, mark,
                       "account '%s': maildir '%s' and the maildir '%s' of account '%s' "
                       "(line %zu) are inside one another; each account needs its own",
                       b->name, b->maildir, a->maildir, a->name,
                       x[i].maildir->v->start_mark.line + 1);
            } else {
                continue;
            }
            /* One conflict per account is enough to act on. */
            break;
        }
    }
}

/* $XDG_<var>/mailsync, or ~/<fallback>/mailsync. The XDG base directory
 * specification says relative values are to be ignored. */
static char *xdg_dir(const char *var, const char *fallback)
{
    const char *x = getenv(var);
    if (x != NULL && x[0] == '/') {
        return path_join(x, "mailsync");
    }
    const char *home = getenv("HOME");
    if (home != NULL && home[0] != '\0') {
        char *base = path_join(home, fallback);
        char *dir = path_join(base, "mailsync");
        free(base);
        return dir;
    }
    return NULL;
}

char *cfg_default_path(void)
{
    char *dir = xdg_dir("XDG_CONFIG_HOME", ".config");
    if (dir == NULL) {
        return NULL;
    }
    char *path = path_join(dir, "config.yaml");
    free(dir);
    return path;
}

static void load_root(struct loader *ld, yaml_node_t *root, struct cfg *cfg)
{
    static const yaml_mark_t file_start = {0, 0, 0};
    ld->scope = SCOPE_TOP;
    if (root == NULL) {
        err_at(ld, file_start,
               "no accounts defined (the file is empty): add an 'accounts:' mapping with at "
               "least one account");
        return;
    }
    if (root->type != YAML_MAPPING_NODE) {
        char *d = node_desc(root);
        err_at(ld, root->start_mark,
               "the top level must be a mapping with an 'accounts' key (got %s)", d);
        free(d);
        return;
    }
    struct kvmap m;
    collect_map(ld, root, top_keys, ARRAY_SIZE(top_keys), &m);
    const struct kv *kv;
    if ((kv = kv_get(&m, "state_dir")) != NULL) {
        get_path(ld, kv, &cfg->state_dir);
    } else {
        cfg->state_dir = xdg_dir("XDG_STATE_HOME", ".local/state");
        if (cfg->state_dir == NULL) {
            err_at(ld, root->start_mark,
                   "cannot choose a state directory: neither $XDG_STATE_HOME nor $HOME is set; "
                   "set 'state_dir'");
        }
    }

    kv = kv_get(&m, "accounts");
    if (kv == NULL) {
        err_at(ld, root->start_mark,
               "no accounts defined: add an 'accounts:' mapping with at least one account");
        return;
    }
    if (kv->v->type != YAML_MAPPING_NODE) {
        if (node_is_null(kv->v)) {
            err_at(ld, kv->k->start_mark, "no accounts defined: 'accounts' is empty");
        } else {
            key_err_got(ld, kv, "a mapping of account names to their settings");
        }
        return;
    }
    yaml_node_pair_t *start = kv->v->data.mapping.pairs.start;
    yaml_node_pair_t *top = kv->v->data.mapping.pairs.top;
    if (start == top) {
        err_at(ld, kv->k->start_mark, "no accounts defined: 'accounts' is empty");
        return;
    }
    size_t n = (size_t)(top - start);
    cfg->accounts = xcalloc(n, sizeof(*cfg->accounts));
    struct acct_extra *extra = xcalloc(n, sizeof(*extra));
    for (yaml_node_pair_t *p = start; p < top; p++) {
        yaml_node_t *k = node_at(ld, p->key);
        yaml_node_t *v = node_at(ld, p->value);
        const char *name = node_str(k);
        ld->scope = SCOPE_TOP;
        if (name == NULL) {
            char *d = node_desc(k);
            err_at(ld, k->start_mark, "account names must be plain names, not %s", d);
            free(d);
            continue;
        }
        const struct cfg_account *dup = cfg_find_account(cfg, name);
        if (dup != NULL) {
            err_at(ld, k->start_mark, "duplicate account '%s' (first defined at line %d)", name,
                   dup->line);
            continue;
        }
        size_t i = cfg->naccounts++;
        load_account(ld, k, v, &cfg->accounts[i], &extra[i]);
    }
    check_maildirs(ld, cfg, extra);
    free(extra);
}

/* Line and column (0-based) of byte offset off, for reader errors, which
 * libyaml reports as an offset only. Columns count characters, as libyaml's
 * marks do. */
static yaml_mark_t mark_of_offset(const char *text, size_t len, size_t off)
{
    yaml_mark_t m = {off, 0, 0};
    for (size_t i = 0; i < off && i < len; i++) {
        if (text[i] == '\n') {
            m.line++;
            m.column = 0;
        } else if (((unsigned char)text[i] & 0xC0) != 0x80) {
            m.column++;
        }
    }
    return m;
}

static void yaml_error(struct loader *ld, const yaml_parser_t *parser, const char *text, size_t len)
{
    const char *problem = parser->problem != NULL ? parser->problem : "unknown error";
    switch (parser->error) {
    case YAML_MEMORY_ERROR:
        err_at(ld, parser->problem_mark, "out of memory while parsing YAML");
        break;
    case YAML_READER_ERROR: {
        size_t off = parser->problem_offset;
        /* libyaml points at the bad continuation byte; the character that
         * is wrong starts at the lead byte before it. */
        if (strcmp(problem, "invalid trailing UTF-8 octet") == 0) {
            for (size_t back = 0; back < 3 && off > 0 && off <= len; back++) {
                off--;
                if (((unsigned char)text[off] & 0xC0) == 0xC0) {
                    break;
                }
            }
        }
        yaml_mark_t m = mark_of_offset(text, len, off);
        if (parser->problem_value != -1) {
            err_at(ld, m, "cannot read YAML: %s (byte 0x%02x); the file must be UTF-8 text",
                   problem, (unsigned)parser->problem_value & 0xff);
        } else {
            err_at(ld, m, "cannot read YAML: %s", problem);
        }
        break;
    }
    default: {
        yaml_mark_t m = parser->problem_mark;
        const char *hint = "";
        if (m.index < len && text[m.index] == '\t') {
            hint = " (tabs are not allowed for indentation: use spaces)";
        } else if (parser->error == YAML_COMPOSER_ERROR && m.index < len && text[m.index] == '*') {
            /* The alias is not quoted back: an unquoted password that
             * starts with '*' lands here, and messages never echo secrets. */
            hint = " (a value that starts with '*' must be quoted)";
        }
        if (parser->context != NULL) {
            err_at(ld, m, "YAML syntax error: %s (%s that starts at line %zu, column %zu)%s",
                   problem, parser->context, parser->context_mark.line + 1,
                   parser->context_mark.column + 1, hint);
        } else {
            err_at(ld, m, "YAML syntax error: %s%s", problem, hint);
        }
        break;
    }
    }
}

/* The loader proper, shared by cfg_load and cfg_load_string. st is the
 * file's status for the permission warning, or NULL. */
static int load_text(const char *name, const char *text, size_t len, const struct stat *st,
                     struct cfg **cfg_r, char **err_r)
{
    struct loader ld = {.file = name};
    struct cfg *cfg = xcalloc(1, sizeof(*cfg));
    cfg->path = xstrdup(name);
    *cfg_r = NULL;
    *err_r = NULL;

    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        *err_r = xasprintf("%s: cannot initialise the YAML parser", name);
        cfg_free(cfg);
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        yaml_error(&ld, &parser, text, len);
    } else {
        ld.doc = &doc;
        load_root(&ld, yaml_document_get_root_node(&doc), cfg);
        /* A second document would be silently ignored: say so instead. */
        yaml_document_t doc2;
        if (!yaml_parser_load(&parser, &doc2)) {
            yaml_error(&ld, &parser, text, len);
        } else {
            yaml_node_t *root2 = yaml_document_get_root_node(&doc2);
            if (root2 != NULL) {
                err_at(&ld, root2->start_mark,
                       "a second YAML document starts here; the file must hold only one");
            }
            yaml_document_delete(&doc2);
        }
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);

    if (st != NULL && ld.has_password && (st->st_mode & (S_IRGRP | S_IROTH)) != 0) {
        warn_at(&ld, ld.password_mark,
                "the file holds a password but can be read by %s (mode %04o): run 'chmod 600 "
                "%s' or use password_command",
                (st->st_mode & S_IROTH) != 0 ? "other users" : "its group",
                (unsigned)(st->st_mode & 07777), name);
    }

    char *errs = diags_join(&ld.errs);
    cfg->warnings = diags_join(&ld.warns);
    if (errs != NULL) {
        cfg_free(cfg);
        *err_r = errs;
        return -1;
    }
    *cfg_r = cfg;
    return 0;
}

int cfg_load_string(const char *name, const char *yaml, struct cfg **cfg_r, char **err_r)
{
    return load_text(name, yaml, strlen(yaml), NULL, cfg_r, err_r);
}

int cfg_load(const char *path, struct cfg **cfg_r, char **err_r)
{
    *cfg_r = NULL;
    *err_r = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        *err_r = xasprintf("%s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    struct sbuf sb = {0};
    int ret = -1;
    if (fstat(fd, &st) != 0) {
        *err_r = xasprintf("%s: cannot read: %s", path, strerror(errno));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        *err_r = xasprintf("%s: cannot read: %s", path, strerror(EISDIR));
        goto out;
    }
    for (;;) {
        char buf[8192];
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            *err_r = xasprintf("%s: cannot read: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0) {
            break;
        }
        if (sb.len + (size_t)n > CFG_MAX_FILE_SIZE) {
            *err_r = xasprintf("%s: cannot read: larger than %d bytes; is this the "
                               "configuration file?",
                               path, CFG_MAX_FILE_SIZE);
            goto out;
        }
        sbuf_add(&sb, buf, (size_t)n);
    }
    ret = load_text(path, sb.buf != NULL ? sb.buf : "", sb.len, &st, cfg_r, err_r);
out:
    sbuf_free(&sb);
    close(fd);
    return ret;
}

void cfg_free(struct cfg *cfg)
{
    if (cfg == NULL) {
        return;
    }
    for (size_t i = 0; i < cfg->naccounts; i++) {
        struct cfg_account *a = &cfg->accounts[i];
        free(a->name);
        free(a->provider);
        free(a->host);
        free(a->ca_file);
        free(a->tls_fingerprint);
        free(a->user);
        if (a->password != NULL) {
            /* Do not leave the password in freed heap memory. */
            explicit_bzero(a->password, strlen(a->password));
            free(a->password);
        }
        argv_free(a->password_command);
        argv_free(a->on_new_mail);
        argv_free(a->idle);
        free(a->maildir);
        for (size_t j = 0; j < a->nfolders; j++) {
            free(a->folders[j].glob);
        }
        free(a->folders);
        free(a->trash);
    }
    free(cfg->accounts);
    free(cfg->path);
    free(cfg->state_dir);
    free(cfg->warnings);
    free(cfg);
}

const struct cfg_account *cfg_find_account(const struct cfg *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->naccounts; i++) {
        if (cfg->accounts[i].name != NULL && strcmp(cfg->accounts[i].name, name) == 0) {
            return &cfg->accounts[i];
        }
    }
    return NULL;
}

/* ---- Printing ---- */

/* True when s can be written as a YAML plain scalar and still read back as
 * the same string (not a number, boolean or null, no indicators). */
static bool plain_ok(const char *s)
{
    static const char *const words[] = {"true", "false", "yes", "no", "on",
                                        "off",  "null",  "y",   "n"};
    if (s[0] == '\0') {
        return false;
    }
    for (size_t i = 0; i < ARRAY_SIZE(words); i++) {
        if (strcasecmp(s, words[i]) == 0) {
            return false;
        }
    }
    bool numeric = true;
    for (const char *p = s; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && c < 0x80 && strchr("._/@+=-", c) == NULL) {
            return false;
        }
        if (!((c >= '0' && c <= '9') || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E' ||
              c == '_')) {
            numeric = false;
        }
    }
    return !numeric && strchr("-.@", s[0]) == NULL;
}

/* s in double quotes, with quotes, backslashes and controls escaped. */
static void print_quoted(FILE *fp, const char *s)
{
    fputc('"', fp);
    for (const char *p = s; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            fprintf(fp, "\\%c", c);
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(fp, "\\x%02x", c);
        } else {
            fputc(c, fp);
        }
    }
    fputc('"', fp);
}

static void print_str(FILE *fp, const char *s)
{
    if (plain_ok(s)) {
        fputs(s, fp);
        return;
    }
    print_quoted(fp, s);
}

/* A command as a YAML flow sequence of quoted words, or ~. */
static void print_argv(FILE *fp, const char *key, char *const *argv)
{
    fprintf(fp, "    %s: ", key);
    if (argv == NULL) {
        fputs("~\n", fp);
        return;
    }
    fputc('[', fp);
    for (size_t i = 0; argv[i] != NULL; i++) {
        if (i > 0) {
            fputs(", ", fp);
        }
        print_quoted(fp, argv[i]);
    }
    fputs("]\n", fp);
}

static void print_opt(FILE *fp, const char *key, const char *val, const char *unset_note)
{
    fprintf(fp, "    %s: ", key);
    if (val != NULL) {
        print_str(fp, val);
        fputc('\n', fp);
    } else {
        fprintf(fp, "~  # %s\n", unset_note);
    }
}

static const char *yn(bool b)
{
    return b ? "true" : "false";
}

void cfg_print_account(FILE *fp, const struct cfg_account *a)
{
    bool pop = a->protocol == CFG_PROTO_POP3;
    fprintf(fp, "  ");
    print_str(fp, a->name);
    fprintf(fp, ":\n");
    fprintf(fp, "    protocol: %s\n", cfg_protocol_name(a->protocol));
    if (a->provider != NULL && provider_find(a->provider, NULL) != NULL) {
        /* The title says which data centre a name like zoho.eu is. */
        fprintf(fp, "    provider: ");
        print_str(fp, a->provider);
        fprintf(fp, "  # %s\n", provider_find(a->provider, NULL)->title);
    } else {
        print_opt(fp, "provider", a->provider, "none");
    }
    print_opt(fp, "host", a->host, "not set");
    fprintf(fp, "    port: %u\n", (unsigned)a->port);
    fprintf(fp, "    tls: %s\n", cfg_tls_name(a->tls));
    print_opt(fp, "ca_file", a->ca_file, "the system's trusted certificates");
    print_opt(fp, "tls_fingerprint", a->tls_fingerprint, "not pinned");
    fprintf(fp, "    allow_plaintext: %s\n", yn(a->allow_plaintext));
    print_opt(fp, "user", a->user, "not set");
    /* Never the password itself: this output goes to terminals and logs. */
    fprintf(fp, "    password: %s\n", a->password != NULL ? "<redacted>" : "~");
    print_argv(fp, "password_command", a->password_command);
    fprintf(fp, "    auth: %s\n", cfg_auth_name(a->auth));
    print_opt(fp, "maildir", a->maildir, "not set");
    fprintf(fp, "    layout: %s\n", cfg_layout_name(a->layout));
    if (!pop) {
        fprintf(fp, "    folders: [");
        for (size_t i = 0; i < a->nfolders; i++) {
            fputs(i > 0 ? ", \"" : "\"", fp);
            if (a->folders[i].exclude) {
                fputc('!', fp);
            }
            for (const char *p = a->folders[i].glob; *p != '\0'; p++) {
                if (*p == '"' || *p == '\\') {
                    fputc('\\', fp);
                }
                fputc(*p, fp);
            }
            fputc('"', fp);
        }
        fputs("]\n", fp);
        fprintf(fp, "    subscribed_only: %s\n", yn(a->subscribed_only));
        fprintf(fp, "    max_connections: %u\n", a->max_connections);
        fprintf(fp, "    on_local_delete: %s\n", cfg_local_delete_name(a->on_local_delete));
        print_opt(fp, "trash", a->trash, "the server's \\Trash folder (SPECIAL-USE)");
        fprintf(fp, "    delete_folders: %s\n", yn(a->delete_folders));
        fprintf(fp, "    max_delete_ratio: %g\n", a->max_delete_ratio);
    }
    fprintf(fp, "    max_size: %llu%s\n", (unsigned long long)a->max_size,
            a->max_size == 0 ? "  # no limit" : "");
    fprintf(fp, "    max_age_days: %u%s\n", a->max_age_days,
            a->max_age_days == 0 ? "  # no limit" : "");
    if (!pop) {
        fprintf(fp, "    compress: %s\n",
                a->compress == CFG_COMPRESS_AUTO
                    ? "auto  # not towards loopback or private addresses"
                    : yn(a->compress == CFG_COMPRESS_ALWAYS));
    }
    fprintf(fp, "    timeout: %u\n", a->timeout_seconds);
    fprintf(fp, "    poll_interval: %u\n", a->poll_interval);
    if (!pop) {
        fprintf(fp, "    local_delay: %u\n", a->local_delay);
        fprintf(fp, "    idle_restart: %u\n", a->idle_restart);
        if (a->idle == NULL) {
            fputs("    idle: [INBOX]  # when the server has no NOTIFY\n", fp);
        } else {
            fputs("    idle: [", fp);
            for (size_t i = 0; a->idle[i] != NULL; i++) {
                fputs(i > 0 ? ", " : "", fp);
                print_quoted(fp, a->idle[i]);
            }
            fputs("]\n", fp);
        }
    }
    print_argv(fp, "on_new_mail", a->on_new_mail);
    if (pop) {
        fprintf(fp, "    pop:\n");
        fprintf(fp, "      keep_on_server: %s\n", yn(a->pop.keep_on_server));
        if (a->pop.delete_after_days >= 0) {
            fprintf(fp, "      delete_after_days: %d\n", a->pop.delete_after_days);
        } else {
            fprintf(fp, "      delete_after_days: ~  # never\n");
        }
        if (a->pop.has_since) {
            struct tm tm;
            gmtime_r(&a->pop.since, &tm);
            fprintf(fp, "      since: %04d-%02d-%02d\n", tm.tm_year + 1900, tm.tm_mon + 1,
                    tm.tm_mday);
        } else {
            fprintf(fp, "      since: ~  # all messages\n");
        }
        fprintf(fp, "      delete_when_deleted_locally: %s\n",
                yn(a->pop.delete_when_deleted_locally));
    }
}

void cfg_print(FILE *fp, const struct cfg *cfg)
{
    fprintf(fp, "# %s, with defaults and presets applied\n", cfg->path);
    fprintf(fp, "state_dir: ");
    print_str(fp, cfg->state_dir != NULL ? cfg->state_dir : "");
    fprintf(fp, "\naccounts:\n");
    for (size_t i = 0; i < cfg->naccounts; i++) {
        cfg_print_account(fp, &cfg->accounts[i]);
    }
}
