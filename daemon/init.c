/* `mailsync init`: see daemon/init.h. */
#include "daemon/init.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/check.h"
#include "daemon/config.h"
#include "daemon/providers.h"
#include "daemon/srv.h"

/* What a new configuration file starts with. */
static const char new_file_header[] =
    "# mailsync configuration: every key is described in mailsync.yaml(5), and\n"
    "# `mailsync check` prints every account as it is understood (or every\n"
    "# mistake, with its line and column). `mailsync init` adds accounts at the\n"
    "# end of the accounts mapping and leaves the rest of this file as it is.\n"
    "\n"
    "accounts:\n";

/* ---- the text edit ------------------------------------------------------ */

/* Offsets of the start of every line of text, plus one past the end. */
struct lines {
    size_t *start;
    size_t n; /* lines; start[n] is the text's length */
};

static void lines_split(const char *text, struct lines *l)
{
    size_t cap = 0, len = strlen(text);
    l->start = NULL;
    l->n = 0;
    for (size_t off = 0; off < len;) {
        xgrow(&l->start, &cap, l->n + 2, sizeof(*l->start));
        l->start[l->n++] = off;
        const char *nl = memchr(text + off, '\n', len - off);
        off = nl != NULL ? (size_t)(nl - text) + 1 : len;
    }
    xgrow(&l->start, &cap, l->n + 1, sizeof(*l->start));
    l->start[l->n] = len;
}

/* Column of the first character that is not a space, or -1 for a line
 * that is blank. *comment_r: that character starts a comment. */
static int line_indent(const char *text, const struct lines *l, size_t i, bool *comment_r)
{
    *comment_r = false;
    for (size_t p = l->start[i]; p < l->start[i + 1]; p++) {
        char c = text[p];
        if (c == ' ' || c == '\t') {
            continue;
        }
        if (c == '\n' || c == '\r') {
            return -1;
        }
        *comment_r = c == '#';
        return (int)(p - l->start[i]);
    }
    return -1;
}

/* The 0-based line where node's own text ends. A block mapping's or
 * sequence's end mark lies at the next token, past any comments and blank
 * lines that follow it, so those are walked down to their last scalar; a
 * scalar ending at the start of a line (block scalars) ends on the line
 * before. */
static size_t node_last_line(yaml_document_t *doc, yaml_node_t *n, int depth)
{
    size_t last = n->start_mark.line;
    bool block = false;
    if (depth < 64 && n->type == YAML_MAPPING_NODE &&
        n->data.mapping.style != YAML_FLOW_MAPPING_STYLE &&
        n->data.mapping.pairs.top > n->data.mapping.pairs.start) {
        yaml_node_pair_t *p = n->data.mapping.pairs.top - 1;
        size_t k = node_last_line(doc, yaml_document_get_node(doc, p->key), depth + 1);
        size_t v = node_last_line(doc, yaml_document_get_node(doc, p->value), depth + 1);
        last = k > v ? k : v;
        block = true;
    } else if (depth < 64 && n->type == YAML_SEQUENCE_NODE &&
               n->data.sequence.style != YAML_FLOW_SEQUENCE_STYLE &&
               n->data.sequence.items.top > n->data.sequence.items.start) {
        yaml_node_t *item = yaml_document_get_node(doc, n->data.sequence.items.top[-1]);
        last = node_last_line(doc, item, depth + 1);
        block = true;
    }
    if (!block) {
        size_t end = n->end_mark.line;
        if (n->end_mark.column == 0 && end > n->start_mark.line) {
            end--;
        }
        last = end > last ? end : last;
    }
    return last;
}

static bool scalar_is(const yaml_node_t *n, const char *s)
{
    return n != NULL && n->type == YAML_SCALAR_NODE && n->data.scalar.length == strlen(s) &&
           memcmp(n->data.scalar.value, s, n->data.scalar.length) == 0;
}

static void add_spaces(struct sbuf *sb, int n)
{
    for (int i = 0; i < n; i++) {
        sbuf_addc(sb, ' ');
    }
}

static void add_block(struct sbuf *sb, int col, int sub, const char *name, const char *const *body,
                      size_t nbody)
{
    add_spaces(sb, col);
    sbuf_addf(sb, "%s:\n", name);
    for (size_t i = 0; i < nbody; i++) {
        add_spaces(sb, col + sub);
        sbuf_addf(sb, "%s\n", body[i]);
    }
}

/* The text with the block inserted before byte offset at. */
static char *splice_block(const char *text, size_t at, bool blank_before, int col, int sub,
                          const char *name, const char *const *body, size_t nbody)
{
    struct sbuf sb = {0};
    sbuf_add(&sb, text, at);
    if (at > 0 && text[at - 1] != '\n') {
        sbuf_addc(&sb, '\n');
    }
    if (blank_before) {
        sbuf_addc(&sb, '\n');
    }
    add_block(&sb, col, sub, name, body, nbody);
    sbuf_adds(&sb, text + at);
    return sbuf_detach(&sb);
}

int init_add_account_text(const char *text, const char *name, const char *const *body, size_t nbody,
                          char **out_r, size_t *line_r, char **err_r)
{
    *out_r = NULL;
    *line_r = 0;
    *err_r = NULL;
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        *err_r = xstrdup("out of memory");
        return -EINVAL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    if (!yaml_parser_load(&parser, &doc)) {
        *err_r = xasprintf("line %zu: %s", parser.problem_mark.line + 1,
                           parser.problem != NULL ? parser.problem : "not YAML");
        yaml_parser_delete(&parser);
        return -EINVAL;
    }
    yaml_parser_delete(&parser);
    struct lines l;
    lines_split(text, &l);
    int rc = -EINVAL;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root == NULL || (root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0)) {
        /* Empty, or comments only: the accounts mapping goes at the end. */
        struct sbuf sb = {0};
        sbuf_adds(&sb, text);
        if (sb.len > 0 && sb.buf[sb.len - 1] != '\n') {
            sbuf_addc(&sb, '\n');
        }
        sbuf_adds(&sb, "accounts:\n");
        add_block(&sb, 2, 2, name, body, nbody);
        *out_r = sbuf_detach(&sb);
        rc = 0;
        goto out;
    }
    if (root->type != YAML_MAPPING_NODE || root->data.mapping.style == YAML_FLOW_MAPPING_STYLE) {
        *err_r = xstrdup("the top level is not a block mapping (key: value lines)");
        goto out;
    }
    yaml_node_pair_t *accounts = NULL;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        if (scalar_is(yaml_document_get_node(&doc, p->key), "accounts")) {
            accounts = p;
        }
    }
    if (accounts == NULL) {
        /* An `accounts:` of its own at the end, at the top level's
         * indentation. */
        yaml_node_t *k0 = yaml_document_get_node(&doc, root->data.mapping.pairs.start->key);
        int col = (int)k0->start_mark.column;
        struct sbuf sb = {0};
        sbuf_adds(&sb, text);
        if (sb.len > 0 && sb.buf[sb.len - 1] != '\n') {
            sbuf_addc(&sb, '\n');
        }
        add_spaces(&sb, col);
        sbuf_adds(&sb, "accounts:\n");
        add_block(&sb, col + 2, 2, name, body, nbody);
        *out_r = sbuf_detach(&sb);
        rc = 0;
        goto out;
    }
    yaml_node_t *akey = yaml_document_get_node(&doc, accounts->key);
    yaml_node_t *aval = yaml_document_get_node(&doc, accounts->value);
    if (aval->type == YAML_SCALAR_NODE && aval->data.scalar.length == 0 &&
        aval->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        /* `accounts:` with nothing under it yet: the account goes on the
         * line after it. */
        size_t at =
            akey->start_mark.line + 1 < l.n ? l.start[akey->start_mark.line + 1] : l.start[l.n];
        *out_r =
            splice_block(text, at, false, (int)akey->start_mark.column + 2, 2, name, body, nbody);
        rc = 0;
        goto out;
    }
    if (aval->type != YAML_MAPPING_NODE) {
        *err_r = xasprintf("line %zu: 'accounts' is not a mapping of account names",
                           akey->start_mark.line + 1);
        goto out;
    }
    if (aval->data.mapping.style == YAML_FLOW_MAPPING_STYLE) {
        *err_r = xasprintf("line %zu: 'accounts' is written in flow style ({...}); add the "
                           "account there by hand, or write the accounts as indented blocks",
                           akey->start_mark.line + 1);
        goto out;
    }
    yaml_node_pair_t *first = aval->data.mapping.pairs.start;
    yaml_node_pair_t *top = aval->data.mapping.pairs.top;
    for (yaml_node_pair_t *p = first; p < top; p++) {
        yaml_node_t *k = yaml_document_get_node(&doc, p->key);
        if (scalar_is(k, name)) {
            *line_r = k->start_mark.line + 1;
            rc = -EEXIST;
            goto out;
        }
    }
    yaml_node_t *k0 = yaml_document_get_node(&doc, first->key);
    int col = (int)k0->start_mark.column;
    /* One indentation step, as the file's accounts use it. */
    int sub = 2;
    for (yaml_node_pair_t *p = first; p < top; p++) {
        yaml_node_t *v = yaml_document_get_node(&doc, p->value);
        if (v->type == YAML_MAPPING_NODE && v->data.mapping.style != YAML_FLOW_MAPPING_STYLE &&
            v->data.mapping.pairs.top > v->data.mapping.pairs.start) {
            yaml_node_t *vk = yaml_document_get_node(&doc, v->data.mapping.pairs.start->key);
            if ((int)vk->start_mark.column > col) {
                sub = (int)vk->start_mark.column - col;
                break;
            }
        }
    }
    size_t last = node_last_line(&doc, aval, 0);
    /* Comment lines indented into the last account belong to it (an option
     * commented out, say): the new account goes after them. */
    while (last + 1 < l.n) {
        bool comment;
        int ind = line_indent(text, &l, last + 1, &comment);
        if (!comment || ind <= col) {
            break;
        }
        last++;
    }
    /* Accounts separated by blank lines get one before the new one too. */
    bool blank = false;
    if (top - first >= 2) {
        size_t kl = yaml_document_get_node(&doc, top[-1].key)->start_mark.line;
        while (kl > 0) {
            bool comment;
            int ind = line_indent(text, &l, kl - 1, &comment);
            if (ind < 0) {
                blank = true;
                break;
            }
            if (!comment) {
                break;
            }
            kl--;
        }
    }
    size_t at = last + 1 < l.n ? l.start[last + 1] : l.start[l.n];
    *out_r = splice_block(text, at, blank, col, sub, name, body, nbody);
    rc = 0;
out:
    free(l.start);
    yaml_document_delete(&doc);
    return rc;
}

/* ---- values ------------------------------------------------------------- */

/* A YAML double-quoted scalar: any string comes back unchanged, and
 * nothing in it can end the line or the value early. */
static char *yaml_quote(const char *s)
{
    struct sbuf sb = {0};
    sbuf_addc(&sb, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\') {
            sbuf_addc(&sb, '\\');
            sbuf_addc(&sb, (char)*p);
        } else if (*p < 0x20 || *p == 0x7f) {
            sbuf_addf(&sb, "\\x%02x", *p);
        } else {
            sbuf_addc(&sb, (char)*p);
        }
    }
    sbuf_addc(&sb, '"');
    return sbuf_detach(&sb);
}

/* value as a YAML scalar: plain when that reads back as the same string
 * (addresses, paths, preset names), double-quoted otherwise. */
static char *yaml_value(const char *s)
{
    static const char *const words[] = {"true", "false", "yes", "no", "on",
                                        "off",  "null",  "y",   "n"};
    bool plain = s[0] != '\0' && strcmp(s, "~") != 0 && strspn(s, "0123456789") < strlen(s);
    for (const char *p = s; *p != '\0' && plain; p++) {
        char c = *p;
        plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                (p > s && strchr("@._/~+-", c) != NULL) || (p == s && (c == '~' || c == '/'));
    }
    for (size_t i = 0; i < ARRAY_SIZE(words) && plain; i++) {
        plain = strcasecmp(s, words[i]) != 0;
    }
    return plain ? xstrdup(s) : yaml_quote(s);
}

/* The rule daemon/config.c applies to account names; checked first here
 * because the name is written as a plain YAML key. */
static bool account_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) {
            return false;
        }
    }
    return true;
}

/* A provider preset by name or alias (daemon/providers.h). Returns 0 with
 * the preset's canonical name and its host for the protocol, or -ENOENT
 * with *err_r saying which providers exist (or that this one has no server
 * for the protocol). */
static int preset_lookup(const char *name, bool pop3, char **canon_r, char **host_r, char **err_r)
{
    *canon_r = *host_r = *err_r = NULL;
    const struct provider *p = provider_find(name, NULL);
    if (p == NULL) {
        struct sbuf sb = {0};
        sbuf_addf(&sb, "no provider preset named '%s'; the presets are:", name);
        for (size_t i = 0; i < provider_count(); i++) {
            sbuf_addf(&sb, "%s %s", i > 0 ? "," : "", provider_at(i)->name);
        }
        *err_r = sbuf_detach(&sb);
        return -ENOENT;
    }
    const struct provider_server *srv = provider_server(p, pop3 ? CFG_PROTO_POP3 : CFG_PROTO_IMAP);
    if (srv->host == NULL) {
        *err_r = xasprintf("%s (%s) has no %s server", p->name, p->title, pop3 ? "POP3" : "IMAP");
        return -ENOENT;
    }
    *canon_r = xstrdup(p->name);
    *host_r = xstrdup(srv->host);
    return 0;
}

/* Asks on the terminal; an empty answer takes def (which may be NULL).
 * NULL at end of input. */
static char *ask(const char *question, const char *def)
{
    if (def != NULL) {
        fprintf(stderr, "%s [%s]: ", question, def);
    } else {
        fprintf(stderr, "%s: ", question);
    }
    fflush(stderr);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        fputc('\n', stderr);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
        line[--n] = '\0';
    }
    size_t lead = strspn(line, " \t");
    memmove(line, line + lead, strlen(line + lead) + 1);
    n = (ssize_t)strlen(line);
    while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t')) {
        line[--n] = '\0';
    }
    if (n == 0) {
        free(line);
        return def != NULL ? xstrdup(def) : xstrdup("");
    }
    return line;
}

/* Asks until an answer is given; NULL at end of input. */
static char *ask_required(const char *question, const char *def)
{
    for (;;) {
        char *a = ask(question, def);
        if (a == NULL || a[0] != '\0') {
            return a;
        }
        free(a);
    }
}

/* A yes/no question whose default is yes. */
static bool ask_yes(const char *question)
{
    char *q = xasprintf("%s [Y/n]", question);
    char *a = ask(q, NULL);
    free(q);
    bool yes = a != NULL && (a[0] == '\0' || strcasecmp(a, "y") == 0 || strcasecmp(a, "yes") == 0);
    free(a);
    return yes;
}

/* host is name or a name below it (case-insensitive). */
static bool in_domain(const char *host, const char *domain)
{
    size_t h = strlen(host), d = strlen(domain);
    if (h == d) {
        return strcasecmp(host, domain) == 0;
    }
    return h > d && host[h - d - 1] == '.' && strcasecmp(host + h - d, domain) == 0;
}

/* ---- choosing the server ------------------------------------------------ */

struct server {
    char *provider; /* a preset's name, or NULL */
    char *host;     /* with provider: the preset's host, for messages only */
    unsigned port;  /* 0: the default */
    const char *tls;
};

static void server_clear(struct server *s)
{
    free(s->provider);
    free(s->host);
    *s = (struct server){0};
}

/* RFC 6186 SRV names, in the order tried: implicit TLS first (RFC 8314). */
struct srv_service {
    const char *label;
    const char *tls;
    unsigned default_port;
};

static const struct srv_service imap_services[] = {
    {"_imaps._tcp", "implicit", 993},
    {"_imap._tcp", "starttls", 143},
};
static const struct srv_service pop3_services[] = {
    {"_pop3s._tcp", "implicit", 995},
    {"_pop3._tcp", "starttls", 110},
};

/* Looks the domain's servers up in DNS. 1 when one was chosen (*s set), 0
 * when none was found or taken (said why), -1 at the end of input. */
static int server_from_srv(const struct init_opts *o, const char *domain, struct server *s)
{
    const struct srv_service *svc = o->pop3 ? pop3_services : imap_services;
    const char *proto = o->pop3 ? "POP3" : "IMAP";
    for (size_t i = 0; i < 2; i++) {
        char *name = xasprintf("%s.%s", svc[i].label, domain);
        struct srv_rec *recs = NULL;
        size_t n = 0;
        char *err = NULL;
        int rc = srv_lookup(name, &recs, &n, &err);
        if (rc == -ENOENT || (rc == 0 && n == 0)) {
            log_debug("%s", err != NULL ? err : name);
            free(err);
            free(name);
            continue;
        }
        if (rc != 0) {
            /* No network, most likely: the other names would fail alike. */
            log_warnx("looking up the %s server of %s in DNS: %s", proto, domain, err);
            free(err);
            free(name);
            return 0;
        }
        const struct srv_rec *r = &recs[0];
        if (!o->quiet || o->interactive) {
            fprintf(stderr, "%s names its %s server in DNS (%s): %s, port %u, %s\n", domain, proto,
                    name, r->target, r->port,
                    strcmp(svc[i].tls, "implicit") == 0 ? "implicit TLS" : "STARTTLS");
        }
        int ret;
        if (o->interactive) {
            ret = ask_yes("Use this server?") ? 1 : 0;
        } else if (in_domain(r->target, domain)) {
            ret = 1;
        } else {
            /* A DNS answer cannot be trusted to send the password
             * elsewhere without someone looking at it (RFC 6186 section
             * 6). */
            log_error("%s is not in %s, so it is not taken without asking: give --host %s "
                      "to use it",
                      r->target, domain, r->target);
            ret = 0;
        }
        if (ret == 1) {
            s->host = xstrdup(r->target);
            s->tls = svc[i].tls;
            s->port = r->port != svc[i].default_port ? r->port : 0;
        }
        srv_free(recs, n);
        free(name);
        return ret;
    }
    if (!o->quiet) {
        fprintf(stderr, "%s has no provider preset and names no %s server in DNS (RFC 6186)\n",
                domain, proto);
    }
    return 0;
}

/* Chooses the server: --host, --provider, a preset named like the domain,
 * the domain's SRV records, or (on a terminal) a question. Returns 0, 1
 * for a failure (said), 2 for a usage error (said). */
static int choose_server(const struct init_opts *o, const char *user, struct server *s)
{
    if (o->host != NULL) {
        s->host = xstrdup(o->host);
        return 0;
    }
    char *err = NULL;
    if (o->provider != NULL) {
        if (preset_lookup(o->provider, o->pop3, &s->provider, &s->host, &err) != 0) {
            log_error("init: --provider: %s", err);
            free(err);
            return 2;
        }
        return 0;
    }
    const char *at = strrchr(user, '@');
    const char *domain = at != NULL && at[1] != '\0' ? at + 1 : NULL;
    if (domain != NULL) {
        /* The domain itself (web.de, zoho.eu, outlook.com are names or
         * aliases of presets), then the label before the top-level
         * domain (gmail.com, fastmail.fm, qq.com). */
        char *label = xstrdup(domain);
        const char *end = strrchr(domain, '.');
        int found = preset_lookup(label, o->pop3, &s->provider, &s->host, &err);
        if (found != 0 && end != NULL && end > domain) {
            const char *startp = end;
            while (startp > domain && startp[-1] != '.') {
                startp--;
            }
            free(label);
            free(err);
            label = xstrndup(startp, (size_t)(end - startp));
            found = preset_lookup(label, o->pop3, &s->provider, &s->host, &err);
        }
        free(label);
        if (found == 0) {
            if (!o->quiet) {
                fprintf(stderr, "using the '%s' provider preset for %s (%s)\n", s->provider, domain,
                        s->host);
            }
            return 0;
        }
        free(err);
        err = NULL;
        int rc = server_from_srv(o, domain, s);
        if (rc == 1) {
            return 0;
        }
        if (rc < 0) {
            return 1;
        }
    }
    if (!o->interactive) {
        log_error("init: no server known for '%s': give --provider NAME, or --host HOST (with "
                  "--port and --tls when they are not the defaults)",
                  user);
        return 2;
    }
    char *host = ask_required(o->pop3 ? "POP3 server host name" : "IMAP server host name", NULL);
    if (host == NULL) {
        return 1;
    }
    s->host = host;
    return 0;
}

/* ---- writing ------------------------------------------------------------ */

static int read_file(const char *path, char **text_r, char **err_r)
{
    *text_r = NULL;
    FILE *fp = fopen(path, "re");
    if (fp == NULL) {
        int e = errno;
        if (e != ENOENT) {
            *err_r = xasprintf("%s: cannot read: %s", path, strerror(e));
        }
        return -e;
    }
    struct sbuf sb = {0};
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), fp)) > 0) {
        sbuf_add(&sb, buf, n);
    }
    int bad = ferror(fp);
    fclose(fp);
    if (bad) {
        sbuf_free(&sb);
        *err_r = xasprintf("%s: cannot read", path);
        return -EIO;
    }
    if (memchr(sb.buf != NULL ? sb.buf : "", '\0', sb.len) != NULL) {
        sbuf_free(&sb);
        *err_r = xasprintf("%s: holds a NUL byte; this is not a configuration file", path);
        return -EINVAL;
    }
    *text_r = sb.buf != NULL ? sbuf_detach(&sb) : xstrdup("");
    return 0;
}

/* Replaces path with text: a temporary file beside it, fsync, rename,
 * fsync of the directory, so that a crash leaves the old file or the new
 * one, never half of one. */
static int write_atomic(const char *path, const char *text, mode_t mode, char **err_r)
{
    char *slash = strrchr(path, '/');
    char *dir = slash == NULL ? xstrdup(".") : xstrndup(path, (size_t)(slash - path));
    if (dir[0] == '\0') {
        free(dir);
        dir = xstrdup("/");
    }
    char *tmp = xasprintf("%s/.%s.XXXXXX", dir, slash == NULL ? path : slash + 1);
    int fd = mkstemp(tmp);
    int rc = 0;
    if (fd < 0) {
        rc = -errno;
        *err_r = xasprintf("cannot create a file in %s: %s", dir, strerror(-rc));
        goto out;
    }
    size_t len = strlen(text), off = 0;
    if (fchmod(fd, mode) != 0) {
        rc = -errno;
    }
    while (rc == 0 && off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno != EINTR) {
            rc = -errno;
        } else if (w > 0) {
            off += (size_t)w;
        }
    }
    if (rc == 0 && fsync(fd) != 0) {
        rc = -errno;
    }
    if (close(fd) != 0 && rc == 0) {
        rc = -errno;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -errno;
    }
    if (rc != 0) {
        *err_r = xasprintf("cannot write %s: %s", path, strerror(-rc));
        unlink(tmp);
        goto out;
    }
    if (fsync_dir(dir) != 0) {
        /* The file is in place; only its survival of a power cut is in
         * doubt, which is not worth failing for. */
        log_warn("fsync %s", dir);
    }
out:
    free(tmp);
    free(dir);
    return rc;
}

/* The file to edit: path itself, or what a symbolic link at path points
 * to, so that a configuration kept in a dotfiles repository stays there. */
static char *edit_target(const char *path, char **err_r)
{
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISLNK(st.st_mode)) {
        return xstrdup(path);
    }
    char *real = realpath(path, NULL);
    if (real == NULL) {
        *err_r = xasprintf("%s: a symbolic link to a file that cannot be reached: %s", path,
                           strerror(errno));
    }
    return real;
}

static void add_line(char ***lines, size_t *n, size_t *cap, char *line)
{
    xgrow(lines, cap, *n + 1, sizeof(**lines));
    (*lines)[(*n)++] = line;
}

int init_run(const struct init_opts *o)
{
    if (!account_name_ok(o->account)) {
        log_error("init: '%s' cannot be an account name: up to 64 letters, digits, '.', '_' or "
                  "'-', starting with a letter or digit",
                  o->account);
        return 2;
    }
    if (o->tls != NULL && strcmp(o->tls, "implicit") != 0 && strcmp(o->tls, "starttls") != 0 &&
        strcmp(o->tls, "none") != 0) {
        log_error("init: --tls must be implicit, starttls or none (got '%s')", o->tls);
        return 2;
    }
    char *given = o->config_path != NULL ? xstrdup(o->config_path) : cfg_default_path();
    if (given == NULL) {
        log_error("init: cannot find the configuration: neither $XDG_CONFIG_HOME nor $HOME is "
                  "set; use --config FILE");
        return 1;
    }
    int ret = 1;
    char *err = NULL, *text = NULL, *out = NULL, *user = NULL, *pwcmd = NULL, *maildir = NULL;
    char **body = NULL;
    size_t nbody = 0, body_cap = 0, line = 0;
    struct server srv = {0};
    struct cfg *cfg = NULL;
    char *path = edit_target(given, &err);
    if (path == NULL) {
        log_error("init: %s", err);
        goto out;
    }
    int rc = read_file(path, &text, &err);
    bool created = rc == -ENOENT;
    struct stat st = {0};
    if (rc != 0 && !created) {
        log_error("init: %s", err);
        goto out;
    }
    if (!created && stat(path, &st) != 0) {
        log_error("init: %s: %s", path, strerror(errno));
        goto out;
    }
    /* Refuse a duplicate before asking anything. */
    if (!created) {
        rc = init_add_account_text(text, o->account, NULL, 0, &out, &line, &err);
        free(out);
        out = NULL;
        if (rc == -EEXIST) {
            log_error("init: %s:%zu: an account named '%s' already exists; edit it there, or "
                      "choose another name",
                      path, line, o->account);
            goto out;
        }
        if (rc != 0) {
            log_error("init: %s: %s; nothing was written", path, err);
            goto out;
        }
    }

    if (o->user != NULL) {
        user = xstrdup(o->user);
    } else if (o->interactive) {
        user = ask_required("Login name (usually your email address)", NULL);
        if (user == NULL) {
            goto out;
        }
    } else {
        log_error("init: --user ADDRESS is required (there is no terminal to ask on)");
        ret = 2;
        goto out;
    }
    rc = choose_server(o, user, &srv);
    if (rc != 0) {
        ret = rc;
        goto out;
    }
    if (o->password_command != NULL) {
        pwcmd = xstrdup(o->password_command);
    } else if (o->interactive) {
        char *def = xasprintf("pass show mail/%s", o->account);
        fprintf(stderr, "mailsync runs a command to get the password (or OAuth2 token), so that "
                        "it is never stored in the configuration.\n");
        pwcmd = ask_required("Command that prints the password", def);
        free(def);
        if (pwcmd == NULL) {
            goto out;
        }
    } else {
        log_error("init: --password-command CMD is required (there is no terminal to ask on); "
                  "for example --password-command 'pass show mail/%s'",
                  o->account);
        ret = 2;
        goto out;
    }
    char *maildir_def = xasprintf("~/Mail/%s", o->account);
    if (o->maildir != NULL) {
        maildir = xstrdup(o->maildir);
    } else if (o->interactive) {
        maildir = ask_required("Maildir for this account", maildir_def);
    } else {
        maildir = xstrdup(maildir_def);
    }
    free(maildir_def);
    if (maildir == NULL) {
        goto out;
    }

    if (o->pop3) {
        add_line(&body, &nbody, &body_cap, xstrdup("protocol: pop3"));
    }
    if (srv.provider != NULL) {
        char *q = yaml_value(srv.provider);
        add_line(&body, &nbody, &body_cap, xasprintf("provider: %s", q));
        free(q);
    } else {
        char *q = yaml_value(srv.host);
        add_line(&body, &nbody, &body_cap, xasprintf("host: %s", q));
        free(q);
    }
    const char *tls = o->tls != NULL ? o->tls : srv.tls;
    unsigned port = o->port != 0 ? o->port : srv.port;
    if (port != 0) {
        add_line(&body, &nbody, &body_cap, xasprintf("port: %u", port));
    }
    if (tls != NULL && strcmp(tls, "implicit") != 0) {
        add_line(&body, &nbody, &body_cap, xasprintf("tls: %s", tls));
    }
    char *q = yaml_value(user);
    add_line(&body, &nbody, &body_cap, xasprintf("user: %s", q));
    free(q);
    q = yaml_value(pwcmd);
    add_line(&body, &nbody, &body_cap, xasprintf("password_command: %s", q));
    free(q);
    q = yaml_value(maildir);
    add_line(&body, &nbody, &body_cap, xasprintf("maildir: %s", q));
    free(q);

    const char *base = created ? new_file_header : text;
    rc = init_add_account_text(base, o->account, (const char *const *)body, nbody, &out, &line,
                               &err);
    if (rc != 0) {
        log_error("init: %s: %s; nothing was written", path, err);
        goto out;
    }
    /* The file must load with the account in it before it is replaced. */
    if (cfg_load_string(path, out, &cfg, &err) != 0) {
        fprintf(stderr, "%s", err);
        if (err[0] != '\0' && err[strlen(err) - 1] != '\n') {
            fputc('\n', stderr);
        }
        log_error("init: %s would not load with account '%s' added (above); nothing was written",
                  path, o->account);
        goto out;
    }
    if (cfg_find_account(cfg, o->account) == NULL) {
        log_error("init: %s: account '%s' would not be read back; nothing was written", path,
                  o->account);
        goto out;
    }
    cfg_free(cfg);
    cfg = NULL;
    if (created) {
        char *slash = strrchr(path, '/');
        if (slash != NULL && slash > path) {
            char *dir = xstrndup(path, (size_t)(slash - path));
            int mrc = mkdir_p(dir, 0700);
            if (mrc != 0) {
                log_error("init: cannot create %s: %s", dir, strerror(-mrc));
                free(dir);
                goto out;
            }
            free(dir);
        }
    }
    if (write_atomic(path, out, created ? 0600 : st.st_mode & 07777, &err) != 0) {
        log_error("init: %s; nothing was written", err);
        goto out;
    }
    if (!o->quiet) {
        if (created) {
            fprintf(stderr, "created %s (mode 0600) with account '%s'\n", path, o->account);
        } else {
            fprintf(stderr, "added account '%s' to %s\n", o->account, path);
        }
    }
    if (o->no_check) {
        ret = 0;
        goto out;
    }
    if (cfg_load(path, &cfg, &err) != 0) {
        fprintf(stderr, "%s\n", err);
        goto out;
    }
    if (!o->quiet) {
        fprintf(stderr, "checking it (mailsync check --connect %s):\n", o->account);
    }
    ret = check_account_connect(cfg, cfg_find_account(cfg, o->account), false, stdout);
    fflush(stdout);
    if (ret != 0) {
        log_error("init: account '%s' is written to %s, but the check failed (above): correct it "
                  "there and run 'mailsync check --connect %s'",
                  o->account, path, o->account);
    }
out:
    cfg_free(cfg);
    for (size_t i = 0; i < nbody; i++) {
        free(body[i]);
    }
    free(body);
    server_clear(&srv);
    free(user);
    free(pwcmd);
    free(maildir);
    free(out);
    free(text);
    free(err);
    free(path);
    free(given);
    return ret;
}
