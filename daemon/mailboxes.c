/* `mailsync mailboxes`: see daemon/mailboxes.h. */
#include "daemon/mailboxes.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/syncopts.h"
#include "store/maildir.h"

char *mailboxes_quote(const char *s)
{
    struct sbuf sb = {0};
    if (strchr(s, '\'') == NULL) {
        bool control = false;
        for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
            control |= *p < 0x20 || *p == 0x7f;
        }
        if (!control) {
            sbuf_addc(&sb, '\'');
            sbuf_adds(&sb, s);
            sbuf_addc(&sb, '\'');
            return sbuf_detach(&sb);
        }
    }
    sbuf_addc(&sb, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\' || *p == '$' || *p == '`') {
            sbuf_addc(&sb, '\\');
            sbuf_addc(&sb, (char)*p);
        } else if (*p == '\n') {
            sbuf_adds(&sb, "\\n");
        } else if (*p == '\t') {
            sbuf_adds(&sb, "\\t");
        } else if (*p == '\r') {
            sbuf_adds(&sb, "\\r");
        } else if (*p < 0x20 || *p == 0x7f) {
            sbuf_addf(&sb, "\\%03o", *p);
        } else {
            sbuf_addc(&sb, (char)*p);
        }
    }
    sbuf_addc(&sb, '"');
    return sbuf_detach(&sb);
}

static void print_folder(FILE *out, const struct cfg_account *a, const char *name, const char *path,
                         bool named)
{
    char *qpath = mailboxes_quote(path);
    if (named) {
        char *label = xasprintf("%s/%s", a->name, name);
        char *qlabel = mailboxes_quote(label);
        fprintf(out, "named-mailboxes %s %s\n", qlabel, qpath);
        free(qlabel);
        free(label);
    } else {
        fprintf(out, "mailboxes %s\n", qpath);
    }
    free(qpath);
}

static bool is_inbox(const char *name)
{
    return strcasecmp(name, "INBOX") == 0;
}

/* Lists one account. Returns 0, or 1 when its Maildir cannot be read. */
static int list_account(const struct cfg_account *a, bool named, bool warn_missing, FILE *out)
{
    struct stat st;
    if (stat(a->maildir, &st) != 0) {
        if (errno == ENOENT) {
            if (warn_missing) {
                log_warnx("%s: maildir %s does not exist yet (run 'mailsync sync %s')", a->name,
                          a->maildir, a->name);
            }
            return 0;
        }
        log_error("%s: %s: %s", a->name, a->maildir, strerror(errno));
        return 1;
    }
    char **names = NULL;
    size_t n = 0;
    if (a->protocol == CFG_PROTO_POP3) {
        /* POP3 mail arrives in INBOX alone; other folders under the same
         * root are the user's, not synced. */
        names = xcalloc(1, sizeof(*names));
        names[n++] = xstrdup("INBOX");
    } else {
        int rc = md_list_folders(a->maildir, syncopts_layout(a->layout), &names, &n);
        if (rc != 0) {
            log_error("%s: cannot list the folders in %s: %s", a->name, a->maildir, strerror(-rc));
            return 1;
        }
    }
    /* INBOX first, as mail readers show it; md_list_folders sorted the
     * rest. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            if (is_inbox(names[i]) != (pass == 0) || !cfg_folder_selected(a, names[i])) {
                continue;
            }
            char *path = NULL;
            if (md_folder_local_path(a->maildir, syncopts_layout(a->layout), names[i], &path) !=
                0) {
                continue;
            }
            char *cur = path_join(path, "cur");
            if (stat(cur, &st) == 0 && S_ISDIR(st.st_mode)) {
                print_folder(out, a, is_inbox(names[i]) ? "INBOX" : names[i], path, named);
            }
            free(cur);
            free(path);
        }
    }
    md_free_names(names, n);
    return 0;
}

int mailboxes_run(const struct cfg *cfg, char *const *accounts, int count, bool named,
                  bool warn_missing, FILE *out)
{
    int ret = 0;
    for (size_t i = 0; i < cfg->naccounts; i++) {
        const struct cfg_account *a = &cfg->accounts[i];
        bool want = count == 0;
        for (int j = 0; j < count && !want; j++) {
            want = strcmp(accounts[j], a->name) == 0;
        }
        if (want && list_account(a, named, warn_missing, out) != 0) {
            ret = 1;
        }
    }
    return ret;
}
