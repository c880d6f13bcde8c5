/* `mailsync status [--json] [ACCOUNT...]`: see daemon/status.h.
 *
 * Every selected account's index is opened with idx_open_readonly, read in
 * one read transaction (a consistent snapshot, however a concurrent sync
 * commits meanwhile), closed, and only then printed.
 *
 * --json prints one JSON object (RFC 8259) on one line. Keys are stable;
 * integers are JSON numbers; times are unix seconds; strings are UTF-8 with
 * '"', '\', control characters, DEL and U+2028/U+2029 escaped, and bytes
 * that are not UTF-8 replaced by U+FFFD:
 *
 *   {"accounts": [{
 *      "name": string,
 *      "protocol": "imap" | "pop3",
 *      "maildir": string,            the account's Maildir root
 *      "state_dir": string,          STATE_DIR/<account>
 *      "index": string,              its LMDB index, state_dir + "/index.mdb"
 *      "max_size": int,              bytes, 0 = no limit
 *      "max_age_days": int,          0 = no limit
 *      "synced": bool,               false: never synced (there is no index)
 *      "error": string | null,       why the index could not be read; the
 *                                    data below is then empty
 *      IMAP accounts:
 *      "folders": [{                 every folder the index knows, by name
 *         "name": string,            server-style UTF-8 name, '/' separated
 *         "messages": int,           messages recorded in the index
 *         "server_messages": int,    messages on the server at the last sync
 *         "uidvalidity": int,        0 = never completely synced
 *         "uidnext": int,
 *         "highestmodseq": int | null,    null when unknown (or NOMODSEQ)
 *         "last_full_sync": int | null,   last complete sync; null = never
 *         "skipped": [{              left on the server, by UID
 *            "uid": int,
 *            "reason": "max_size" | "max_age_days",
 *            "size": int,            bytes (RFC822.SIZE)
 *            "date": int | null}],   INTERNALDATE; null when unknown
 *         "local_skipped": [{        local files not uploaded
 *            "file": string,         its path when it was left out
 *            "reason": "empty"}]}],  zero bytes: no server stores it
 *      "totals": {"folders": int, "messages": int, "skipped": int,
 *                 "skipped_max_size": int, "skipped_max_age_days": int,
 *                 "local_skipped": int},     local files not uploaded
 *      POP3 accounts:
 *      "pop3": {
 *         "known": int,              messages known by UIDL
 *         "delivered": int,          stored in the Maildir (including the
 *                                    ones deleted locally since)
 *         "deleted_locally": int,    delivered, then deleted by the user
 *         "intents": int,            downloads in flight: recorded before
 *                                    the file, not yet confirmed
 *         "skipped": int,            deliberately not downloaded ("since")
 *         "deleted_on_server": int,  DELE confirmed by QUIT
 *         "oldest_first_seen": int | null}   of the messages still on the
 *                                    server (what delete_after_days counts
 *                                    from); null when there is none
 *   }]} */
#include "daemon/status.h"

#include <errno.h>
#include <inttypes.h>
#include <locale.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wchar.h>

#include "core/log.h"
#include "core/util.h"
#include "store/index.h"
#include "sync/skiplist.h"

/* ---- what is collected ---------------------------------------------------- */

struct st_folder {
    char *name;
    struct idx_folder st;
    size_t recorded;
    struct skip_ent *skips;
    size_t nskips;
    struct skip_local *lskips;
    size_t nlskips;
};

struct st_pop {
    size_t known, delivered, deleted_locally, intents, skipped, deleted_on_server;
    bool has_oldest;
    int64_t oldest;
};

enum st_state {
    ST_OK = 0,
    ST_NEVER,
    ST_ERROR,
};

struct st_account {
    const struct cfg_account *acct;
    char *state_dir; /* STATE_DIR/<account> */
    char *index;     /* its index.mdb */
    enum st_state state;
    char *error;
    struct st_folder *folders;
    size_t nfolders, folders_cap;
    struct st_pop pop;
    size_t messages, skipped_size, skipped_age, local_skipped;
};

struct collect {
    struct st_account *a;
    struct idx_txn *txn;
};

static int collect_folder(const char *folder, const struct idx_folder *st, void *arg)
{
    struct collect *c = arg;
    struct st_account *a = c->a;
    xgrow(&a->folders, &a->folders_cap, a->nfolders + 1, sizeof(*a->folders));
    struct st_folder *f = &a->folders[a->nfolders++];
    *f = (struct st_folder){.name = xstrdup(folder), .st = *st};
    /* A count only walks keys (0 on a failure of its own); a damaged
     * record shows up when a sync reads it. */
    f->recorded = idx_msg_count(c->txn, folder);
    uint32_t uv = 0;
    f->nskips = skiplist_load(c->txn, folder, &f->skips, &uv);
    if (f->nskips > 0 && uv != st->uidvalidity) {
        /* UIDs of an earlier numbering of the folder: the engine ignores
         * such a list too, and replaces it on the next complete sync. */
        free(f->skips);
        f->skips = NULL;
        f->nskips = 0;
    }
    f->nlskips = skiplist_local_load(c->txn, folder, &f->lskips);
    a->local_skipped += f->nlskips;
    a->messages += f->recorded;
    for (size_t i = 0; i < f->nskips; i++) {
        if (f->skips[i].too_old) {
            a->skipped_age++;
        } else {
            a->skipped_size++;
        }
    }
    return 0;
}

static int collect_pop(const struct idx_pop *p, void *arg)
{
    struct st_pop *s = &((struct collect *)arg)->a->pop;
    s->known++;
    if (p->flags & IDX_POP_DELIVERED) {
        s->delivered++;
    }
    if ((p->flags & IDX_POP_DELIVERED) && (p->flags & IDX_POP_DELETED_LOCALLY)) {
        s->deleted_locally++;
    }
    if (idx_pop_is_intent(p)) {
        s->intents++;
    }
    if ((p->flags & IDX_POP_SKIPPED) && !(p->flags & IDX_POP_DELIVERED)) {
        s->skipped++;
    }
    if (p->flags & IDX_POP_DELETED_ON_SERVER) {
        s->deleted_on_server++;
    } else if (!s->has_oldest || p->first_seen < s->oldest) {
        s->has_oldest = true;
        s->oldest = p->first_seen;
    }
    return 0;
}

static void account_clear_data(struct st_account *a)
{
    for (size_t i = 0; i < a->nfolders; i++) {
        free(a->folders[i].name);
        free(a->folders[i].skips);
        skiplist_local_free(a->folders[i].lskips, a->folders[i].nlskips);
    }
    free(a->folders);
    a->folders = NULL;
    a->nfolders = a->folders_cap = 0;
    a->pop = (struct st_pop){0};
    a->messages = a->skipped_size = a->skipped_age = a->local_skipped = 0;
}

static void collect_account(const struct cfg *cfg, struct st_account *a)
{
    a->state_dir = path_join(cfg->state_dir, a->acct->name);
    a->index = idx_path(cfg->state_dir, a->acct->name);
    struct idx *idx = NULL;
    char *err = NULL;
    int rc = idx_open_readonly(cfg->state_dir, a->acct->name, &idx, &err);
    if (rc == -ENOENT) {
        free(err);
        a->state = ST_NEVER;
        return;
    }
    if (rc != 0) {
        a->state = ST_ERROR;
        a->error = err;
        return;
    }
    struct idx_txn *txn = NULL;
    rc = idx_begin(idx, false, &txn);
    if (rc == 0) {
        struct collect c = {.a = a, .txn = txn};
        if (a->acct->protocol == CFG_PROTO_POP3) {
            rc = idx_pop_foreach(txn, collect_pop, &c);
        } else {
            rc = idx_folder_foreach(txn, collect_folder, &c);
        }
        idx_abort(txn);
    }
    if (rc != 0) {
        /* Half a picture would mislead: report the error alone. */
        account_clear_data(a);
        a->state = ST_ERROR;
        a->error = xstrdup(idx_error(idx));
    }
    idx_close(idx);
}

static void account_free(struct st_account *a)
{
    account_clear_data(a);
    free(a->state_dir);
    free(a->index);
    free(a->error);
}

/* ---- text --------------------------------------------------------------- */

/* Text for the terminal: control characters (C0, DEL and C1, which could
 * drive the terminal) and bytes that are not UTF-8 are shown as escapes. */
static void text_add(struct sbuf *sb, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8_seq(p + i, n - i, &cp);
        if (len == 0) {
            sbuf_addf(sb, "\\x%02x", p[i]);
            len = 1;
        } else if (cp == '\t') {
            sbuf_adds(sb, "\\t");
        } else if (cp == '\n') {
            sbuf_adds(sb, "\\n");
        } else if (cp == '\r') {
            sbuf_adds(sb, "\\r");
        } else if (cp < 0x20 || cp == 0x7f) {
            sbuf_addf(sb, "\\x%02" PRIx32, cp);
        } else if (cp >= 0x80 && cp <= 0x9f) {
            sbuf_addf(sb, "\\u%04" PRIx32, cp);
        } else {
            sbuf_add(sb, p + i, len);
        }
        i += len;
    }
}

static char *text_dup(const char *s)
{
    struct sbuf sb = {0};
    text_add(&sb, s);
    return sbuf_detach(&sb);
}

/* Terminal columns taken by text that text_add made (so valid UTF-8 with
 * no control characters): wcwidth of each code point under the UTF-8
 * locale status_run sets for its thread, so that wide (CJK, emoji) and
 * combining characters keep the columns aligned; one column where that
 * locale is missing or the character unknown. */
static size_t text_width(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), w = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8_seq(p + i, n - i, &cp);
        int cw = len > 0 && cp >= 0x80 ? wcwidth((wchar_t)cp) : 1;
        w += cw >= 0 ? (size_t)cw : 1;
        i += len > 0 ? len : 1;
    }
    return w;
}

static void pad(FILE *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fputc(' ', out);
    }
}

/* "YYYY-MM-DD HH:MM" in local time. */
static void fmt_time(char *buf, size_t cap, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (localtime_r(&tt, &tm) == NULL || strftime(buf, cap, "%Y-%m-%d %H:%M", &tm) == 0) {
        snprintf(buf, cap, "@%" PRId64, t);
    }
}

/* Sizes as max_size is written: 1024-based. */
static void fmt_size(char *buf, size_t cap, uint64_t n)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (n < 1024) {
        snprintf(buf, cap, "%" PRIu64 " B", n);
        return;
    }
    double v = (double)n / 1024;
    size_t u = 0;
    while (v >= 1024 && u + 1 < ARRAY_SIZE(units)) {
        v /= 1024;
        u++;
    }
    snprintf(buf, cap, "%.1f %s", v, units[u]);
}

/* ---- human output ------------------------------------------------------- */

#define TABLE_MAX_COLS 6

/* Rows of cells (already made safe by text_dup) printed in aligned
 * columns; the last column is not padded so that no line ends in blanks. */
struct table {
    size_t ncols;
    const char *align; /* 'l' or 'r' per column */
    char **cells;
    size_t nrows, cap;
};

static void table_row(struct table *t, ...)
{
    xgrow(&t->cells, &t->cap, (t->nrows + 1) * t->ncols, sizeof(*t->cells));
    va_list ap;
    va_start(ap, t);
    for (size_t i = 0; i < t->ncols; i++) {
        t->cells[t->nrows * t->ncols + i] = text_dup(va_arg(ap, const char *));
    }
    va_end(ap);
    t->nrows++;
}

static void table_print(struct table *t, FILE *out, const char *indent)
{
    size_t width[TABLE_MAX_COLS] = {0};
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t i = 0; i < t->ncols; i++) {
            size_t w = text_width(t->cells[r * t->ncols + i]);
            width[i] = w > width[i] ? w : width[i];
        }
    }
    for (size_t r = 0; r < t->nrows; r++) {
        fputs(indent, out);
        for (size_t i = 0; i < t->ncols; i++) {
            const char *cell = t->cells[r * t->ncols + i];
            size_t gap = width[i] - text_width(cell);
            if (i > 0) {
                fputs("  ", out);
            }
            if (t->align[i] == 'r') {
                pad(out, gap);
            }
            fputs(cell, out);
            if (t->align[i] != 'r' && i + 1 < t->ncols) {
                pad(out, gap);
            }
        }
        fputc('\n', out);
    }
    for (size_t i = 0; i < t->nrows * t->ncols; i++) {
        free(t->cells[i]);
    }
    free(t->cells);
    t->cells = NULL;
    t->nrows = t->cap = 0;
}

static const char *plural(size_t n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

static void print_imap(const struct st_account *a, FILE *out)
{
    if (a->nfolders == 0) {
        fputs("\n  no folders recorded yet\n", out);
    } else {
        struct table t = {.ncols = 6, .align = "lrrrlr"};
        table_row(&t, "FOLDER", "MESSAGES", "UIDVALIDITY", "HIGHESTMODSEQ", "LAST FULL SYNC",
                  "SKIPPED");
        for (size_t i = 0; i < a->nfolders; i++) {
            const struct st_folder *f = &a->folders[i];
            char msgs[24], uv[16], ms[24], when[64], sk[24];
            snprintf(msgs, sizeof(msgs), "%zu", f->recorded);
            snprintf(uv, sizeof(uv), "%" PRIu32, f->st.uidvalidity);
            snprintf(ms, sizeof(ms), "%" PRIu64, f->st.highestmodseq);
            snprintf(sk, sizeof(sk), "%zu", f->nskips);
            if (f->st.last_full_sync == 0) {
                snprintf(when, sizeof(when), "never");
            } else {
                fmt_time(when, sizeof(when), f->st.last_full_sync);
            }
            table_row(&t, f->name, msgs, f->st.uidvalidity != 0 ? uv : "-",
                      f->st.highestmodseq != 0 ? ms : "-", when, sk);
        }
        fputc('\n', out);
        table_print(&t, out, "  ");
    }
    for (size_t i = 0; i < a->nfolders; i++) {
        const struct st_folder *f = &a->folders[i];
        if (f->nskips == 0) {
            continue;
        }
        char *name = text_dup(f->name);
        fprintf(out, "\n  Skipped in %s:\n", name);
        free(name);
        struct table t = {.ncols = 4, .align = "rlrl"};
        table_row(&t, "UID", "REASON", "SIZE", "DATE");
        for (size_t j = 0; j < f->nskips; j++) {
            const struct skip_ent *s = &f->skips[j];
            char uid[16], size[32], date[64];
            snprintf(uid, sizeof(uid), "%" PRIu32, s->uid);
            fmt_size(size, sizeof(size), s->size);
            if (s->date == 0) {
                snprintf(date, sizeof(date), "unknown");
            } else {
                fmt_time(date, sizeof(date), s->date);
            }
            table_row(&t, uid, s->too_old ? "older than max_age_days" : "larger than max_size",
                      size, date);
        }
        table_print(&t, out, "    ");
    }
    for (size_t i = 0; i < a->nfolders; i++) {
        const struct st_folder *f = &a->folders[i];
        if (f->nlskips == 0) {
            continue;
        }
        char *name = text_dup(f->name);
        fprintf(out, "\n  Not uploaded from %s:\n", name);
        free(name);
        struct table t = {.ncols = 2, .align = "ll"};
        table_row(&t, "FILE", "REASON");
        for (size_t j = 0; j < f->nlskips; j++) {
            table_row(&t, f->lskips[j].path, "empty file (0 bytes): delete it, or give it content");
        }
        table_print(&t, out, "    ");
    }
    size_t skipped = a->skipped_size + a->skipped_age;
    fprintf(out, "\n  Total: %zu %s, %zu %s, %zu skipped", a->nfolders,
            plural(a->nfolders, "folder", "folders"), a->messages,
            plural(a->messages, "message", "messages"), skipped);
    if (skipped > 0) {
        fprintf(out, " (%zu larger than max_size, %zu older than max_age_days)", a->skipped_size,
                a->skipped_age);
    }
    if (a->local_skipped > 0) {
        fprintf(out, ", %zu local %s not uploaded", a->local_skipped,
                plural(a->local_skipped, "file", "files"));
    }
    fputc('\n', out);
}

static void print_account(const struct st_account *a, FILE *out)
{
    const struct cfg_account *acct = a->acct;
    bool pop = acct->protocol == CFG_PROTO_POP3;
    char *name = text_dup(acct->name);
    fprintf(out, "%s: %s\n", name, pop ? "POP3" : "IMAP");
    free(name);

    struct table t = {.ncols = 2, .align = "ll"};
    table_row(&t, "maildir", acct->maildir);
    table_row(&t, "index", a->index);
    if (acct->max_size > 0 || acct->max_age_days > 0) {
        char size[32], limits[96];
        fmt_size(size, sizeof(size), acct->max_size);
        if (acct->max_size > 0 && acct->max_age_days > 0) {
            snprintf(limits, sizeof(limits), "max_size %s, max_age_days %u", size,
                     acct->max_age_days);
        } else if (acct->max_size > 0) {
            snprintf(limits, sizeof(limits), "max_size %s", size);
        } else {
            snprintf(limits, sizeof(limits), "max_age_days %u", acct->max_age_days);
        }
        table_row(&t, "limits", limits);
    }
    if (a->state == ST_NEVER) {
        table_row(&t, "status", "never synced");
    } else if (a->state == ST_ERROR) {
        table_row(&t, "error", a->error);
    } else if (pop) {
        const struct st_pop *s = &a->pop;
        char known[24], delivered[64], intents[24], skipped[24], gone[24], oldest[64];
        snprintf(known, sizeof(known), "%zu", s->known);
        if (s->deleted_locally > 0) {
            snprintf(delivered, sizeof(delivered), "%zu (%zu deleted locally since)", s->delivered,
                     s->deleted_locally);
        } else {
            snprintf(delivered, sizeof(delivered), "%zu", s->delivered);
        }
        snprintf(intents, sizeof(intents), "%zu", s->intents);
        snprintf(skipped, sizeof(skipped), "%zu", s->skipped);
        snprintf(gone, sizeof(gone), "%zu", s->deleted_on_server);
        if (s->has_oldest) {
            fmt_time(oldest, sizeof(oldest), s->oldest);
        } else {
            snprintf(oldest, sizeof(oldest), "-");
        }
        table_row(&t, "known by UIDL", known);
        table_row(&t, "stored locally", delivered);
        table_row(&t, "in flight (intents)", intents);
        table_row(&t, "skipped (since)", skipped);
        table_row(&t, "deleted on server", gone);
        table_row(&t, "oldest first seen", oldest);
        if (acct->pop.delete_after_days >= 0) {
            char days[24];
            snprintf(days, sizeof(days), "%d", acct->pop.delete_after_days);
            table_row(&t, "delete_after_days", days);
        }
    }
    table_print(&t, out, "  ");
    if (a->state == ST_OK && !pop) {
        print_imap(a, out);
    }
}

/* ---- JSON ------------------------------------------------------------------ */

static void json_time(struct sbuf *sb, int64_t t, bool known)
{
    if (known) {
        sbuf_addf(sb, "%" PRId64, t);
    } else {
        sbuf_adds(sb, "null");
    }
}

static void json_account(struct sbuf *sb, const struct st_account *a)
{
    const struct cfg_account *acct = a->acct;
    bool pop = acct->protocol == CFG_PROTO_POP3;
    sbuf_adds(sb, "{\"name\":");
    sbuf_add_json(sb, acct->name);
    sbuf_adds(sb, ",\"protocol\":");
    sbuf_add_json(sb, pop ? "pop3" : "imap");
    sbuf_adds(sb, ",\"maildir\":");
    sbuf_add_json(sb, acct->maildir);
    sbuf_adds(sb, ",\"state_dir\":");
    sbuf_add_json(sb, a->state_dir);
    sbuf_adds(sb, ",\"index\":");
    sbuf_add_json(sb, a->index);
    sbuf_addf(sb, ",\"max_size\":%" PRIu64 ",\"max_age_days\":%u", acct->max_size,
              acct->max_age_days);
    sbuf_addf(sb, ",\"synced\":%s,\"error\":", a->state == ST_NEVER ? "false" : "true");
    sbuf_add_json(sb, a->error);
    if (pop) {
        const struct st_pop *s = &a->pop;
        sbuf_addf(sb,
                  ",\"pop3\":{\"known\":%zu,\"delivered\":%zu,\"deleted_locally\":%zu,"
                  "\"intents\":%zu,\"skipped\":%zu,\"deleted_on_server\":%zu,"
                  "\"oldest_first_seen\":",
                  s->known, s->delivered, s->deleted_locally, s->intents, s->skipped,
                  s->deleted_on_server);
        json_time(sb, s->oldest, s->has_oldest);
        sbuf_adds(sb, "}}");
        return;
    }
    sbuf_adds(sb, ",\"folders\":[");
    for (size_t i = 0; i < a->nfolders; i++) {
        const struct st_folder *f = &a->folders[i];
        sbuf_adds(sb, i > 0 ? ",{\"name\":" : "{\"name\":");
        sbuf_add_json(sb, f->name);
        sbuf_addf(sb,
                  ",\"messages\":%zu,\"server_messages\":%" PRIu32 ",\"uidvalidity\":%" PRIu32
                  ",\"uidnext\":%" PRIu32 ",\"highestmodseq\":",
                  f->recorded, f->st.messages, f->st.uidvalidity, f->st.uidnext);
        if (f->st.highestmodseq != 0) {
            sbuf_addf(sb, "%" PRIu64, f->st.highestmodseq);
        } else {
            sbuf_adds(sb, "null");
        }
        sbuf_adds(sb, ",\"last_full_sync\":");
        json_time(sb, f->st.last_full_sync, f->st.last_full_sync != 0);
        sbuf_adds(sb, ",\"skipped\":[");
        for (size_t j = 0; j < f->nskips; j++) {
            const struct skip_ent *s = &f->skips[j];
            sbuf_addf(sb, "%s{\"uid\":%" PRIu32 ",\"reason\":\"%s\",\"size\":%" PRIu64 ",\"date\":",
                      j > 0 ? "," : "", s->uid, s->too_old ? "max_age_days" : "max_size", s->size);
            json_time(sb, s->date, s->date != 0);
            sbuf_addc(sb, '}');
        }
        sbuf_adds(sb, "],\"local_skipped\":[");
        for (size_t j = 0; j < f->nlskips; j++) {
            sbuf_adds(sb, j > 0 ? ",{\"file\":" : "{\"file\":");
            sbuf_add_json(sb, f->lskips[j].path);
            sbuf_adds(sb, ",\"reason\":\"empty\"}");
        }
        sbuf_adds(sb, "]}");
    }
    sbuf_addf(sb,
              "],\"totals\":{\"folders\":%zu,\"messages\":%zu,\"skipped\":%zu,"
              "\"skipped_max_size\":%zu,\"skipped_max_age_days\":%zu,\"local_skipped\":%zu}}",
              a->nfolders, a->messages, a->skipped_size + a->skipped_age, a->skipped_size,
              a->skipped_age, a->local_skipped);
}

/* ---- entry point ------------------------------------------------------------ */

int status_run(const struct cfg *cfg, char *const *accounts, int count, bool json, FILE *out)
{
    struct st_account *sel = xcalloc(cfg->naccounts > 0 ? cfg->naccounts : 1, sizeof(*sel));
    size_t nsel = 0;
    /* Configuration order, as `sync` runs them. */
    for (size_t i = 0; i < cfg->naccounts; i++) {
        bool wanted = count == 0;
        for (int j = 0; j < count && !wanted; j++) {
            wanted = strcmp(accounts[j], cfg->accounts[i].name) == 0;
        }
        if (wanted) {
            sel[nsel++].acct = &cfg->accounts[i];
        }
    }
    /* Column widths need the characters' widths, which only a UTF-8
     * locale knows; it is set for this thread alone and restored below. */
    locale_t utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
    locale_t old_locale = utf8 != (locale_t)0 ? uselocale(utf8) : (locale_t)0;
    int ret = 0;
    for (size_t i = 0; i < nsel; i++) {
        collect_account(cfg, &sel[i]);
        if (sel[i].state == ST_ERROR) {
            log_error("%s: %s", sel[i].acct->name, sel[i].error);
            ret = 1;
        }
    }
    if (json) {
        struct sbuf sb = {0};
        sbuf_adds(&sb, "{\"accounts\":[");
        for (size_t i = 0; i < nsel; i++) {
            if (i > 0) {
                sbuf_addc(&sb, ',');
            }
            json_account(&sb, &sel[i]);
        }
        sbuf_adds(&sb, "]}\n");
        fwrite(sb.buf, 1, sb.len, out);
        sbuf_free(&sb);
    } else {
        for (size_t i = 0; i < nsel; i++) {
            if (i > 0) {
                fputc('\n', out);
            }
            print_account(&sel[i], out);
        }
    }
    fflush(out);
    if (utf8 != (locale_t)0) {
        uselocale(old_locale);
        freelocale(utf8);
    }
    for (size_t i = 0; i < nsel; i++) {
        account_free(&sel[i]);
    }
    free(sel);
    return ret;
}
