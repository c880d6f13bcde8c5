/* imapcli: drives the IMAP client (sync/imap.h) from the command line for
 * the integration tests, printing results as simple lines.
 *
 *   imapcli --host H --port N [--tls implicit|starttls|none] [--ca FILE]
 *           --user U (--pass-env VAR | --pass-cmd "CMD ARGS" | --pass PW)
 *           [--auth auto|plain|login|xoauth2|oauthbearer] [--allow-plaintext]
 *           [--compress] [--no-id] [--depth N] [--timeout SEC] [--trace]
 *           [--slow-sink] [--pause-sink MS] [--max-literal N] [--max-line N]
 *           COMMAND [ARGS] [; COMMAND [ARGS]]...
 *
 * Commands (run one after the other):
 *   caps | list | status F | select F [condstore] [qresync V M [KNOWN]] |
 *   examine F | fetch SET ITEMS [changedsince M] [vanished] [dir DIR] |
 *   fetchmany N | search CRITERIA... | store SET +|- FLAGS [unchangedsince M] |
 *   append F FILE [flags=F,..] [date=EPOCH] [reader] | expunge SET |
 *   move SET F | copy SET F | create F | delete F | noop | idle SECONDS |
 *   sleep MS | selected | logout
 * selected prints the client's current view of the selected folder
 * (imap_selected, kept current from events) as "SELECTEDNOW ...".
 * ITEMS is a comma list of flags, size, date, modseq, body, msgid (the
 * Message-ID header, printed as msgid=) and header (the header block,
 * printed as its length header=).
 *
 * Output: "DONE <command> OK|NO|BAD [CODE] text" or "DONE <command> ERR
 * text" per command, data lines (FOLDER, STATUS, SELECTED, MSG, SEARCH,
 * APPENDED, COPYUID, MODIFIED, EVENT ...), "ERROR text" on a fatal error,
 * and "VMHWM <kB>" (peak resident memory) at exit. Exit status: 0, 1 after
 * a fatal error, 2 for usage errors, 3 when a command got NO/BAD/ERR.
 *
 * Backpressure checks: --slow-sink pauses the body sink (IMAP_SINK_PAUSE)
 * every 4th chunk for 2 ms. --pause-sink MS pauses at the first body chunk
 * for MS milliseconds ("PAUSED body=<bytes so far> in=<wire bytes>", then
 * "RESUME in_during=<wire bytes read while paused> in_second_half=<...
 * during the second half> calls_during=<body chunks delivered while
 * paused>") and then every 8th chunk for 1 ms. Both print "SINK pauses=N
 * violations=V" at the end, V counting body chunks delivered while the
 * sink was paused (always 0 unless the client is broken). */
#include "core/log.h"
#include "core/util.h"
#include "sync/imap.h"
#include "sync/secret.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

struct cli {
    uv_loop_t *loop;
    struct imap_opts opts;
    struct imap *im;
    struct secret_req *sreq;
    char **argv;
    int argc;
    int pos;    /* next argument of the script */
    char **cmd; /* current command's words */
    int ncmd;
    int exit_code;
    bool slow_sink;
    unsigned pause_sink_ms; /* --pause-sink */
    bool sink_paused;       /* IMAP_SINK_PAUSE returned, imap_resume not yet called */
    unsigned sink_pauses, sink_violations;
    bool long_pause_done;
    unsigned calls_during_pause;
    uint64_t in_at_pause, in_at_half;
    uv_timer_t pause_half; /* --pause-sink: samples the wire counter mid-pause */
    bool finished;
    uv_timer_t timer; /* sleep, idle duration */
    uv_timer_t poll;  /* IDLE state polling, slow sink resume */
    bool idle_printed;
    /* fetch */
    char *dir;
    unsigned msgs;
    unsigned fetch_pending, fetch_ok;
    unsigned sink_calls;
    /* append */
    int fd;
    FILE *rfp;
    bool reader_prev_cr;
    bool reader_held_lf;
    struct imap_parser_limits limits;
};

struct sink {
    int fd;
    char *path;
    uint64_t bytes;
};

static void next_command(struct cli *cli);
static void finish(struct cli *cli);

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static const char *status_name(enum imap_status s)
{
    switch (s) {
    case IMAP_STATUS_OK:
        return "OK";
    case IMAP_STATUS_NO:
        return "NO";
    case IMAP_STATUS_BAD:
        return "BAD";
    default:
        return "?";
    }
}

static void print_done(struct cli *cli, const struct imap_result *res)
{
    if (res->err < 0) {
        out("DONE %s ERR %s", cli->cmd[0], res->text);
        cli->exit_code = 3;
        return;
    }
    if (res->status != IMAP_STATUS_OK) {
        cli->exit_code = 3;
    }
    if (res->code != NULL) {
        out("DONE %s %s [%s] %s", cli->cmd[0], status_name(res->status), res->code, res->text);
    } else {
        out("DONE %s %s %s", cli->cmd[0], status_name(res->status), res->text);
    }
}

static void flags_str(struct sbuf *sb, unsigned flags, const char *const *kw, size_t nkw)
{
    static const char *const names[] = {"\\Seen",    "\\Answered", "\\Flagged",
                                        "\\Deleted", "\\Draft",    "\\Recent"};
    bool first = true;
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (flags & (1u << i)) {
            sbuf_addf(sb, "%s%s", first ? "" : ",", names[i]);
            first = false;
        }
    }
    for (size_t i = 0; i < nkw; i++) {
        sbuf_addf(sb, "%s%s", first ? "" : ",", kw[i]);
        first = false;
    }
}

static void print_msg(const char *prefix, const struct imap_msg *m)
{
    struct sbuf sb = {0};
    sbuf_addf(&sb, "%s seq=%u uid=%u", prefix, m->seq, m->uid);
    if (m->have & IMAP_FETCH_FLAGS) {
        sbuf_adds(&sb, " flags=");
        flags_str(&sb, m->flags, m->keywords, m->nkeywords);
    }
    if (m->have & IMAP_FETCH_SIZE) {
        sbuf_addf(&sb, " size=%" PRIu64, m->size);
    }
    if (m->have & IMAP_FETCH_INTERNALDATE) {
        sbuf_addf(&sb, " date=%lld", (long long)m->internaldate);
    }
    if (m->have & IMAP_FETCH_MODSEQ) {
        sbuf_addf(&sb, " modseq=%" PRIu64, m->modseq);
    }
    if (m->have & IMAP_FETCH_BODY) {
        sbuf_addf(&sb, " body=%" PRIu64, m->body_size);
    }
    if (m->have & IMAP_FETCH_MESSAGE_ID) {
        sbuf_addf(&sb, " msgid=%s", m->message_id != NULL ? m->message_id : "NIL");
    }
    if (m->have & IMAP_FETCH_HEADER) {
        sbuf_addf(&sb, " header=%zu", m->header != NULL ? m->header_len : (size_t)0);
    }
    out("%s", sb.buf);
    sbuf_free(&sb);
}

static void print_ranges(struct sbuf *sb, const struct imap_uid_range *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (r[i].lo == r[i].hi) {
            sbuf_addf(sb, "%s%u", i ? "," : "", r[i].lo);
        } else {
            sbuf_addf(sb, "%s%u:%u", i ? "," : "", r[i].lo, r[i].hi);
        }
    }
}

static void status_str(struct sbuf *sb, const struct imap_status_info *st)
{
    if (st->have & IMAP_STATUS_MESSAGES) {
        sbuf_addf(sb, " messages=%u", st->messages);
    }
    if (st->have & IMAP_STATUS_UIDNEXT) {
        sbuf_addf(sb, " uidnext=%u", st->uidnext);
    }
    if (st->have & IMAP_STATUS_UIDVALIDITY) {
        sbuf_addf(sb, " uidvalidity=%u", st->uidvalidity);
    }
    if (st->have & IMAP_STATUS_UNSEEN) {
        sbuf_addf(sb, " unseen=%u", st->unseen);
    }
    if (st->have & IMAP_STATUS_HIGHESTMODSEQ) {
        sbuf_addf(sb, " highestmodseq=%" PRIu64, st->highestmodseq);
    }
}

/* ---- Callbacks from the client ---- */

static void on_event(struct imap *im, const struct imap_event *ev, void *arg)
{
    struct sbuf sb = {0};
    switch (ev->type) {
    case IMAP_EV_EXISTS:
        out("EVENT EXISTS %u", ev->n);
        break;
    case IMAP_EV_EXPUNGE:
        out("EVENT EXPUNGE %u", ev->n);
        break;
    case IMAP_EV_VANISHED:
        print_ranges(&sb, ev->ranges, ev->nranges);
        out("EVENT VANISHED earlier=%d %s", ev->earlier, sb.buf);
        break;
    case IMAP_EV_FETCH:
        print_msg("EVENT FETCH", ev->msg);
        break;
    case IMAP_EV_STATUS:
        status_str(&sb, ev->status);
        out("EVENT STATUS %s%s", ev->status->folder ? ev->status->folder : "?", sb.buf);
        break;
    case IMAP_EV_ALERT:
        out("EVENT ALERT %s", ev->text);
        break;
    case IMAP_EV_NOTICE:
        out("EVENT NOTICE %s", ev->text);
        break;
    case IMAP_EV_BYE:
        out("EVENT BYE %s", ev->text);
        break;
    case IMAP_EV_UIDVALIDITY:
        out("EVENT UIDVALIDITY %u", ev->n);
        break;
    case IMAP_EV_MAILBOX:
        out("EVENT MAILBOX %s", ev->text);
        break;
    }
    sbuf_free(&sb);
}

static void on_error(struct imap *im, int err, const char *msg, void *arg)
{
    struct cli *cli = arg;
    out("ERROR %s", msg);
    cli->exit_code = 1;
    finish(cli);
}

static void on_ready(struct imap *im, void *arg)
{
    struct cli *cli = arg;
    out("READY");
    next_command(cli);
}

static void on_cmd_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct cli *cli = arg;
    print_done(cli, res);
    /* After a fatal error every pending command completes first; on_error
     * follows and ends the run. */
    if (imap_get_state(im) != IMAP_STATE_FAILED) {
        next_command(cli);
    }
}

static void on_folder(struct imap *im, const struct imap_folder *f, void *arg)
{
    struct sbuf sb = {0};
    static const char *const attrs[] = {
        "noselect", "noinferiors", "nonexistent", "haschildren", "hasnochildren", "marked",
        "unmarked", "subscribed",  "remote",      "all",         "archive",       "drafts",
        "flagged",  "junk",        "sent",        "trash",       "important"};
    bool first = true;
    for (size_t i = 0; i < ARRAY_SIZE(attrs); i++) {
        if (f->attrs & (1u << i)) {
            sbuf_addf(&sb, "%s%s", first ? "" : ",", attrs[i]);
            first = false;
        }
    }
    if (f->name == NULL) {
        out("UNSYNCABLE\t%s\t%s", f->raw_name, f->unsyncable);
    } else {
        struct sbuf st = {0};
        if (f->has_status) {
            status_str(&st, &f->status);
        }
        out("FOLDER\t%s\t%s\t%s", f->name, sb.buf ? sb.buf : "", st.buf ? st.buf + 1 : "");
        sbuf_free(&st);
    }
    sbuf_free(&sb);
}

static void on_status(struct imap *im, const struct imap_status_info *st, void *arg)
{
    struct sbuf sb = {0};
    status_str(&sb, st);
    out("STATUS\t%s\t%s", st->folder ? st->folder : "?", sb.buf ? sb.buf + 1 : "");
    sbuf_free(&sb);
}

static void on_select_done(struct imap *im, const struct imap_result *res, void *arg)
{
    if (res->err == 0 && res->mailbox != NULL) {
        const struct imap_mailbox *mb = res->mailbox;
        struct sbuf sb = {0};
        flags_str(&sb, mb->permanent_flags, NULL, 0);
        out("SELECTED uidvalidity=%u uidnext=%u exists=%u highestmodseq=%" PRIu64
            " nomodseq=%d readonly=%d permflags=%s permkw=%d",
            mb->uidvalidity, mb->uidnext, mb->exists, mb->highestmodseq, mb->nomodseq, mb->readonly,
            sb.buf ? sb.buf : "", mb->permanent_keywords);
        sbuf_free(&sb);
    }
    on_cmd_done(im, res, arg);
}

/* Body sink: a file in the fetch directory, named by UID. */
static void *body_begin(struct imap *im, uint32_t seq, uint32_t uid, uint64_t size, void *arg)
{
    struct cli *cli = arg;
    struct sink *s = xcalloc(1, sizeof(*s));
    s->fd = -1;
    if (cli->dir != NULL) {
        s->path = xasprintf("%s/seq-%u.tmp", cli->dir, seq);
        s->fd = open(s->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (s->fd < 0) {
            fprintf(stderr, "imapcli: %s: %s\n", s->path, strerror(errno));
        }
    }
    return s;
}

static uint64_t wire_in(const struct cli *cli)
{
    struct net_conn *c = cli->im != NULL ? imap_net(cli->im) : NULL;
    return c != NULL ? net_bytes_in(c) : 0;
}

static void on_slow_resume(uv_timer_t *t)
{
    struct cli *cli = t->data;
    if (cli->im != NULL) {
        cli->sink_paused = false;
        imap_resume(cli->im);
    }
}

static void on_pause_half(uv_timer_t *t)
{
    struct cli *cli = t->data;
    cli->in_at_half = wire_in(cli);
}

static void on_long_resume(uv_timer_t *t)
{
    struct cli *cli = t->data;
    if (cli->im == NULL) {
        return;
    }
    uint64_t now = wire_in(cli);
    out("RESUME in_during=%" PRIu64 " in_second_half=%" PRIu64 " calls_during=%u",
        now - cli->in_at_pause, now - cli->in_at_half, cli->calls_during_pause);
    cli->sink_paused = false;
    imap_resume(cli->im);
}

static int body_data(struct imap *im, void *sinkp, const char *data, size_t len, void *arg)
{
    struct cli *cli = arg;
    struct sink *s = sinkp;
    if (s->fd >= 0) {
        size_t off = 0;
        while (off < len) {
            ssize_t n = write(s->fd, data + off, len - off);
            if (n < 0) {
                return -errno;
            }
            off += (size_t)n;
        }
    }
    s->bytes += len;
    if (cli->sink_paused) {
        /* The client must not deliver anything between IMAP_SINK_PAUSE
         * and imap_resume. */
        cli->sink_violations++;
        cli->calls_during_pause++;
        return 0;
    }
    cli->sink_calls++;
    if (cli->pause_sink_ms > 0 && !cli->long_pause_done) {
        cli->long_pause_done = true;
        cli->sink_paused = true;
        cli->sink_pauses++;
        cli->in_at_pause = wire_in(cli);
        cli->in_at_half = cli->in_at_pause;
        out("PAUSED body=%" PRIu64 " in=%" PRIu64, s->bytes, cli->in_at_pause);
        uv_timer_start(&cli->pause_half, on_pause_half, cli->pause_sink_ms / 2, 0);
        uv_timer_start(&cli->poll, on_long_resume, cli->pause_sink_ms, 0);
        return IMAP_SINK_PAUSE;
    }
    if ((cli->slow_sink && cli->sink_calls % 4 == 0) ||
        (cli->pause_sink_ms > 0 && cli->sink_calls % 8 == 0)) {
        /* Pretend the disk is behind: resume a little later. */
        cli->sink_paused = true;
        cli->sink_pauses++;
        uv_timer_start(&cli->poll, on_slow_resume, cli->slow_sink ? 2 : 1, 0);
        return IMAP_SINK_PAUSE;
    }
    return 0;
}

static void body_end(struct imap *im, void *sinkp, bool complete, void *arg)
{
    struct sink *s = sinkp;
    if (!complete) {
        out("BODYABORT bytes=%" PRIu64, s->bytes);
        if (s->path != NULL) {
            unlink(s->path);
        }
        if (s->fd >= 0) {
            close(s->fd);
        }
        free(s->path);
        free(s);
    }
}

static void on_message(struct imap *im, const struct imap_msg *m, void *sinkp, void *arg)
{
    struct cli *cli = arg;
    struct sink *s = sinkp;
    cli->msgs++;
    if (s != NULL) {
        if (s->fd >= 0) {
            close(s->fd);
            char *final = xasprintf("%s/%u.eml", cli->dir, m->uid);
            rename(s->path, final);
            free(final);
        }
        free(s->path);
        free(s);
    }
    print_msg("MSG", m);
}

static void on_fetch_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct cli *cli = arg;
    out("FETCHED msgs=%u", cli->msgs);
    on_cmd_done(im, res, arg);
}

static void on_many_message(struct imap *im, const struct imap_msg *m, void *sink, void *arg)
{
    struct cli *cli = arg;
    cli->msgs++;
}

static void on_many_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct cli *cli = arg;
    if (res->err == 0 && res->status == IMAP_STATUS_OK) {
        cli->fetch_ok++;
    } else {
        cli->exit_code = 3;
    }
    if (--cli->fetch_pending == 0 && imap_get_state(im) != IMAP_STATE_FAILED) {
        out("FETCHMANY ok=%u msgs=%u", cli->fetch_ok, cli->msgs);
        out("DONE fetchmany OK");
        next_command(cli);
    }
}

static void on_search_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct sbuf sb = {0};
    sbuf_adds(&sb, "SEARCH");
    for (size_t i = 0; i < res->nuids; i++) {
        sbuf_addf(&sb, " %u", res->uids[i]);
    }
    out("%s", sb.buf);
    sbuf_free(&sb);
    on_cmd_done(im, res, arg);
}

static void on_store_done(struct imap *im, const struct imap_result *res, void *arg)
{
    if (res->nmodified > 0) {
        struct sbuf sb = {0};
        print_ranges(&sb, res->modified, res->nmodified);
        out("MODIFIED %s", sb.buf);
        sbuf_free(&sb);
    }
    on_cmd_done(im, res, arg);
}

static void on_append_done(struct imap *im, const struct imap_result *res, void *arg)
{
    struct cli *cli = arg;
    if (cli->fd >= 0) {
        close(cli->fd);
        cli->fd = -1;
    }
    if (cli->rfp != NULL) {
        fclose(cli->rfp);
        cli->rfp = NULL;
    }
    if (res->append_uid != 0) {
        out("APPENDED uidvalidity=%u uid=%u", res->append_uidvalidity, res->append_uid);
    }
    on_cmd_done(im, res, arg);
}

static void on_copy_done(struct imap *im, const struct imap_result *res, void *arg)
{
    if (res->copy_src != NULL) {
        out("COPYUID uidvalidity=%u src=%s dst=%s", res->copy_uidvalidity, res->copy_src,
            res->copy_dst);
    }
    if (res->move_not_expunged) {
        out("NOTEXPUNGED");
    }
    on_cmd_done(im, res, arg);
}

static void on_idle_end(uv_timer_t *t)
{
    struct cli *cli = t->data;
    uv_timer_stop(&cli->poll);
    if (cli->im != NULL) {
        imap_idle_stop(cli->im);
    }
}

static void on_idle_poll(uv_timer_t *t)
{
    struct cli *cli = t->data;
    if (cli->im != NULL && imap_get_state(cli->im) == IMAP_STATE_IDLE && !cli->idle_printed) {
        cli->idle_printed = true;
        out("IDLING");
        uv_timer_stop(&cli->poll);
    }
}

static void on_sleep_end(uv_timer_t *t)
{
    next_command(t->data);
}

/* Reader for "append ... reader": converts LF to CRLF like lf_to_crlf. It
 * fills exactly what the client asks for (the client asks for no more
 * than is left): an LF whose CR takes the last byte of buf is kept for the
 * next call. */
static ssize_t append_reader(void *arg, char *buf, size_t len)
{
    struct cli *cli = arg;
    size_t n = 0;
    while (n < len) {
        int ch;
        if (cli->reader_held_lf) {
            cli->reader_held_lf = false;
            ch = '\n';
        } else {
            ch = getc(cli->rfp);
            if (ch == EOF) {
                break;
            }
            if (ch == '\n' && !cli->reader_prev_cr) {
                buf[n++] = '\r';
                if (n == len) {
                    cli->reader_held_lf = true;
                    cli->reader_prev_cr = true;
                    break;
                }
            }
        }
        buf[n++] = (char)ch;
        cli->reader_prev_cr = ch == '\r';
    }
    return (ssize_t)n;
}

/* The size of a file once LF line ends are made CRLF. */
static int64_t wire_size(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        return -1;
    }
    int64_t n = 0;
    int ch, prev = 0;
    while ((ch = getc(fp)) != EOF) {
        if (ch == '\n' && prev != '\r') {
            n++;
        }
        n++;
        prev = ch;
    }
    fclose(fp);
    return n;
}

static unsigned parse_flags(const char *s, char ***kw_r, size_t *nkw_r)
{
    unsigned flags = 0;
    char **kw = NULL;
    size_t nkw = 0, cap = 0;
    char *copy = xstrdup(s), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        if (strcasecmp(t, "\\Seen") == 0) {
            flags |= IMAP_FLAG_SEEN;
        } else if (strcasecmp(t, "\\Answered") == 0) {
            flags |= IMAP_FLAG_ANSWERED;
        } else if (strcasecmp(t, "\\Flagged") == 0) {
            flags |= IMAP_FLAG_FLAGGED;
        } else if (strcasecmp(t, "\\Deleted") == 0) {
            flags |= IMAP_FLAG_DELETED;
        } else if (strcasecmp(t, "\\Draft") == 0) {
            flags |= IMAP_FLAG_DRAFT;
        } else {
            xgrow(&kw, &cap, nkw + 1, sizeof(*kw));
            kw[nkw++] = xstrdup(t);
        }
    }
    free(copy);
    *kw_r = kw;
    *nkw_r = nkw;
    return flags;
}

static void free_kw(char **kw, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kw[i]);
    }
    free(kw);
}

static unsigned parse_items(const char *s)
{
    unsigned items = 0;
    if (strstr(s, "flags")) {
        items |= IMAP_FETCH_FLAGS;
    }
    if (strstr(s, "size")) {
        items |= IMAP_FETCH_SIZE;
    }
    if (strstr(s, "date")) {
        items |= IMAP_FETCH_INTERNALDATE;
    }
    if (strstr(s, "modseq")) {
        items |= IMAP_FETCH_MODSEQ;
    }
    if (strstr(s, "body")) {
        items |= IMAP_FETCH_BODY;
    }
    if (strstr(s, "msgid")) {
        items |= IMAP_FETCH_MESSAGE_ID;
    }
    if (strstr(s, "header")) {
        items |= IMAP_FETCH_HEADER;
    }
    return items;
}

static int run_command(struct cli *cli)
{
    char **w = cli->cmd;
    int n = cli->ncmd;
    struct imap *im = cli->im;
    const char *c = w[0];
    if (strcmp(c, "caps") == 0) {
        out("CAPS %s", imap_capability_string(im));
        out("ENABLED condstore=%d qresync=%d utf8=%d compress=%d delim=%c",
            imap_condstore_enabled(im), imap_qresync_enabled(im), imap_utf8_enabled(im),
            net_compressed(imap_net(im)), imap_delimiter(im) ? imap_delimiter(im) : '-');
        out("DONE caps OK");
        return 1;
    }
    if (strcmp(c, "list") == 0) {
        return imap_list(im, on_folder, on_cmd_done, cli);
    }
    if (strcmp(c, "status") == 0 && n == 2) {
        return imap_status(im, w[1],
                           IMAP_STATUS_MESSAGES | IMAP_STATUS_UIDNEXT | IMAP_STATUS_UIDVALIDITY |
                               IMAP_STATUS_UNSEEN | IMAP_STATUS_HIGHESTMODSEQ,
                           on_status, on_cmd_done, cli);
    }
    if ((strcmp(c, "select") == 0 || strcmp(c, "examine") == 0) && n >= 2) {
        struct imap_select_opts so = {.readonly = c[0] == 'e'};
        for (int i = 2; i < n; i++) {
            if (strcmp(w[i], "condstore") == 0) {
                so.condstore = true;
            } else if (strcmp(w[i], "qresync") == 0 && i + 2 < n) {
                so.qresync_uidvalidity = (uint32_t)strtoul(w[i + 1], NULL, 10);
                so.qresync_modseq = strtoull(w[i + 2], NULL, 10);
                i += 2;
                if (i + 1 < n) {
                    so.qresync_known_uids = w[++i];
                }
            }
        }
        return imap_select(im, w[1], &so, on_select_done, cli);
    }
    if (strcmp(c, "fetch") == 0 && n >= 3) {
        uint64_t since = 0;
        bool vanished = false;
        free(cli->dir);
        cli->dir = NULL;
        for (int i = 3; i < n; i++) {
            if (strcmp(w[i], "changedsince") == 0 && i + 1 < n) {
                since = strtoull(w[++i], NULL, 10);
            } else if (strcmp(w[i], "vanished") == 0) {
                vanished = true;
            } else if (strcmp(w[i], "dir") == 0 && i + 1 < n) {
                cli->dir = xstrdup(w[++i]);
            }
        }
        cli->msgs = 0;
        struct imap_fetch_cb fcb = {
            .body_begin = body_begin,
            .body_data = body_data,
            .body_end = body_end,
            .on_message = on_message,
            .done = on_fetch_done,
        };
        return imap_uid_fetch(im, w[1], parse_items(w[2]), since, vanished, &fcb, cli);
    }
    if (strcmp(c, "fetchmany") == 0 && n == 2) {
        unsigned count = (unsigned)strtoul(w[1], NULL, 10);
        struct imap_fetch_cb fcb = {.on_message = on_many_message, .done = on_many_done};
        cli->msgs = cli->fetch_ok = 0;
        cli->fetch_pending = count;
        for (unsigned i = 1; i <= count; i++) {
            char set[16];
            snprintf(set, sizeof(set), "%u", i);
            int r = imap_uid_fetch(im, set, IMAP_FETCH_FLAGS, 0, false, &fcb, cli);
            if (r < 0) {
                return r;
            }
        }
        return 0;
    }
    if (strcmp(c, "search") == 0 && n >= 2) {
        struct sbuf sb = {0};
        for (int i = 1; i < n; i++) {
            sbuf_addf(&sb, "%s%s", i > 1 ? " " : "", w[i]);
        }
        int r = imap_uid_search(im, sb.buf, on_search_done, cli);
        sbuf_free(&sb);
        return r;
    }
    if (strcmp(c, "store") == 0 && n >= 4) {
        char **kw;
        size_t nkw;
        unsigned flags = parse_flags(w[3], &kw, &nkw);
        uint64_t since = 0;
        if (n >= 6 && strcmp(w[4], "unchangedsince") == 0) {
            since = strtoull(w[5], NULL, 10);
        }
        int r = imap_uid_store(im, w[1], w[2][0], flags, (const char *const *)kw, nkw, since,
                               on_store_done, cli);
        free_kw(kw, nkw);
        return r;
    }
    if (strcmp(c, "append") == 0 && n >= 3) {
        struct imap_append a = {.folder = w[1], .fd = -1, .lf_to_crlf = true};
        char **kw = NULL;
        size_t nkw = 0;
        bool reader = false;
        for (int i = 3; i < n; i++) {
            if (strncmp(w[i], "flags=", 6) == 0) {
                a.flags = parse_flags(w[i] + 6, &kw, &nkw);
            } else if (strncmp(w[i], "date=", 5) == 0) {
                a.internaldate = (time_t)strtoll(w[i] + 5, NULL, 10);
            } else if (strcmp(w[i], "reader") == 0) {
                reader = true;
            } else if (strncmp(w[i], "size=", 5) == 0) {
                a.size = strtoull(w[i] + 5, NULL, 10);
            }
        }
        int64_t size = wire_size(w[2]);
        if (size < 0) {
            free_kw(kw, nkw);
            return -errno;
        }
        if (a.size == 0) {
            a.size = (uint64_t)size;
        }
        if (reader) {
            cli->rfp = fopen(w[2], "rb");
            cli->reader_prev_cr = false;
            cli->reader_held_lf = false;
            a.read = append_reader;
            a.read_arg = cli;
        } else {
            cli->fd = open(w[2], O_RDONLY);
            a.fd = cli->fd;
        }
        a.keywords = (const char *const *)kw;
        a.nkeywords = nkw;
        int r = imap_append(im, &a, on_append_done, cli);
        free_kw(kw, nkw);
        return r;
    }
    if (strcmp(c, "expunge") == 0 && n == 2) {
        return imap_uid_expunge(im, w[1], on_cmd_done, cli);
    }
    if (strcmp(c, "move") == 0 && n == 3) {
        return imap_uid_move(im, w[1], w[2], on_copy_done, cli);
    }
    if (strcmp(c, "copy") == 0 && n == 3) {
        return imap_uid_copy(im, w[1], w[2], on_copy_done, cli);
    }
    if (strcmp(c, "create") == 0 && n == 2) {
        return imap_create(im, w[1], on_cmd_done, cli);
    }
    if (strcmp(c, "delete") == 0 && n == 2) {
        return imap_delete(im, w[1], on_cmd_done, cli);
    }
    if (strcmp(c, "noop") == 0) {
        return imap_noop(im, on_cmd_done, cli);
    }
    if (strcmp(c, "idle") == 0 && n == 2) {
        int r = imap_idle_start(im, on_cmd_done, cli);
        if (r == 0) {
            cli->idle_printed = false;
            uv_timer_start(&cli->poll, on_idle_poll, 5, 5);
            uv_timer_start(&cli->timer, on_idle_end, (uint64_t)(atof(w[1]) * 1000), 0);
        }
        return r;
    }
    if (strcmp(c, "sleep") == 0 && n == 2) {
        uv_timer_start(&cli->timer, on_sleep_end, strtoull(w[1], NULL, 10), 0);
        return 0;
    }
    if (strcmp(c, "logout") == 0) {
        return imap_logout(im, on_cmd_done, cli);
    }
    if (strcmp(c, "selected") == 0) {
        const struct imap_mailbox *mb = imap_selected(im);
        if (mb == NULL) {
            out("SELECTEDNOW none");
        } else {
            out("SELECTEDNOW uidvalidity=%u uidnext=%u exists=%u highestmodseq=%" PRIu64,
                mb->uidvalidity, mb->uidnext, mb->exists, mb->highestmodseq);
        }
        out("DONE selected OK");
        return 1;
    }
    return -EINVAL;
}

static void next_command(struct cli *cli)
{
    for (;;) {
        if (cli->finished) {
            return;
        }
        if (cli->pos >= cli->argc) {
            finish(cli);
            return;
        }
        free(cli->cmd);
        cli->cmd = xcalloc((size_t)cli->argc + 1, sizeof(char *));
        cli->ncmd = 0;
        while (cli->pos < cli->argc && strcmp(cli->argv[cli->pos], ";") != 0) {
            cli->cmd[cli->ncmd++] = cli->argv[cli->pos++];
        }
        cli->pos++;
        if (cli->ncmd == 0) {
            continue;
        }
        int r = run_command(cli);
        if (r == 1) {
            continue;
        }
        if (r < 0) {
            out("DONE %s ERR %s", cli->cmd[0],
                r == -EINVAL        ? "invalid arguments"
                : r == IMAP_ENOTSUP ? "not supported"
                                    : strerror(-r));
            cli->exit_code = 3;
            continue;
        }
        return;
    }
}

static void on_close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

static void finish(struct cli *cli)
{
    if (cli->finished) {
        return;
    }
    cli->finished = true;
    if (cli->im != NULL) {
        imap_free(cli->im);
        cli->im = NULL;
    }
    uv_timer_stop(&cli->timer);
    uv_timer_stop(&cli->poll);
    uv_timer_stop(&cli->pause_half);
    uv_close((uv_handle_t *)&cli->timer, NULL);
    uv_close((uv_handle_t *)&cli->poll, NULL);
    uv_close((uv_handle_t *)&cli->pause_half, NULL);
}

static void on_secret(int err, const char *secret, const char *msg, void *arg)
{
    struct cli *cli = arg;
    cli->sreq = NULL;
    if (err < 0) {
        out("ERROR %s", msg);
        cli->exit_code = 1;
        finish(cli);
        return;
    }
    cli->opts.secret = secret;
    static const struct imap_cb cb = {
        .on_ready = on_ready, .on_error = on_error, .on_event = on_event};
    int r = imap_connect(cli->loop, &cli->opts, &cb, cli, &cli->im);
    cli->opts.secret = NULL;
    if (r < 0) {
        out("ERROR imap_connect: %s", strerror(-r));
        cli->exit_code = 1;
        finish(cli);
    }
}

static char **split_words(const char *s)
{
    char **v = NULL;
    size_t n = 0, cap = 0;
    char *copy = xstrdup(s), *save = NULL;
    for (char *t = strtok_r(copy, " ", &save); t != NULL; t = strtok_r(NULL, " ", &save)) {
        xgrow(&v, &cap, n + 2, sizeof(*v));
        v[n++] = xstrdup(t);
    }
    free(copy);
    xgrow(&v, &cap, n + 1, sizeof(*v));
    v[n] = NULL;
    return v;
}

static long vmhwm_kb(void)
{
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (fp != NULL && fgets(line, sizeof(line), fp) != NULL) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
        }
    }
    if (fp != NULL) {
        fclose(fp);
    }
    return kb;
}

static void usage(void)
{
    fprintf(stderr, "usage: imapcli --host H --port N [options] COMMAND [ARGS] [; COMMAND]...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct cli cli = {.fd = -1};
    cli.loop = uv_default_loop();
    cli.opts.net.tls = NET_TLS_IMPLICIT;
    const char *password = NULL;
    char **command = NULL;
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = true;
        if (strcmp(o, "--host") == 0 && v) {
            cli.opts.net.host = v;
        } else if (strcmp(o, "--port") == 0 && v) {
            cli.opts.net.port = (uint16_t)atoi(v);
        } else if (strcmp(o, "--tls") == 0 && v) {
            cli.opts.net.tls = strcmp(v, "starttls") == 0 ? NET_TLS_LATER
                               : strcmp(v, "none") == 0   ? NET_TLS_NONE
                                                          : NET_TLS_IMPLICIT;
        } else if (strcmp(o, "--ca") == 0 && v) {
            cli.opts.net.ca_file = v;
        } else if (strcmp(o, "--fingerprint") == 0 && v) {
            cli.opts.net.fingerprint = v;
        } else if (strcmp(o, "--user") == 0 && v) {
            cli.opts.user = v;
        } else if (strcmp(o, "--pass") == 0 && v) {
            password = v;
        } else if (strcmp(o, "--pass-env") == 0 && v) {
            password = getenv(v);
            if (password == NULL) {
                fprintf(stderr, "imapcli: $%s is not set\n", v);
                return 2;
            }
        } else if (strcmp(o, "--pass-cmd") == 0 && v) {
            command = split_words(v);
        } else if (strcmp(o, "--auth") == 0 && v) {
            cli.opts.auth = strcmp(v, "plain") == 0         ? IMAP_AUTH_PLAIN
                            : strcmp(v, "login") == 0       ? IMAP_AUTH_LOGIN
                            : strcmp(v, "xoauth2") == 0     ? IMAP_AUTH_XOAUTH2
                            : strcmp(v, "oauthbearer") == 0 ? IMAP_AUTH_OAUTHBEARER
                                                            : IMAP_AUTH_AUTO;
        } else if (strcmp(o, "--depth") == 0 && v) {
            cli.opts.pipeline_depth = (unsigned)atoi(v);
        } else if (strcmp(o, "--timeout") == 0 && v) {
            cli.opts.net.idle_timeout_ms = (unsigned)(atof(v) * 1000);
            cli.opts.net.connect_timeout_ms = cli.opts.net.idle_timeout_ms;
        } else if (strcmp(o, "--max-literal") == 0 && v) {
            cli.limits.max_literal = strtoull(v, NULL, 10);
            cli.opts.limits = &cli.limits;
        } else if (strcmp(o, "--pause-sink") == 0 && v) {
            cli.pause_sink_ms = (unsigned)atoi(v);
        } else if (strcmp(o, "--max-line") == 0 && v) {
            cli.limits.max_line = strtoull(v, NULL, 10);
            cli.opts.limits = &cli.limits;
        } else {
            takes = false;
            if (strcmp(o, "--allow-plaintext") == 0) {
                cli.opts.allow_plaintext = true;
            } else if (strcmp(o, "--compress") == 0) {
                cli.opts.compress = true;
                cli.opts.compress_local = true;
            } else if (strcmp(o, "--no-id") == 0) {
                cli.opts.no_id = true;
            } else if (strcmp(o, "--trace") == 0) {
                log_set_level(LOG_LEVEL_TRACE);
            } else if (strcmp(o, "--debug") == 0) {
                log_set_level(LOG_LEVEL_DEBUG);
            } else if (strcmp(o, "--slow-sink") == 0) {
                cli.slow_sink = true;
            } else if (strcmp(o, "--insecure") == 0) {
                cli.opts.net.insecure_skip_verify = true;
            } else {
                usage();
            }
        }
        if (takes) {
            i++;
        }
    }
    if (cli.opts.net.host == NULL || cli.opts.net.port == 0 || cli.opts.user == NULL ||
        (password == NULL && command == NULL)) {
        usage();
    }
    cli.argv = argv + i;
    cli.argc = argc - i;
    uv_timer_init(cli.loop, &cli.timer);
    uv_timer_init(cli.loop, &cli.poll);
    uv_timer_init(cli.loop, &cli.pause_half);
    cli.timer.data = &cli;
    cli.poll.data = &cli;
    cli.pause_half.data = &cli;
    int r = secret_get(cli.loop, password, command, 0, on_secret, &cli, &cli.sreq);
    if (r < 0) {
        fprintf(stderr, "imapcli: secret_get: %s\n", strerror(-r));
        return 2;
    }
    uv_run(cli.loop, UV_RUN_DEFAULT);
    uv_walk(cli.loop, on_close_walk, NULL);
    uv_run(cli.loop, UV_RUN_DEFAULT);
    int cr = uv_loop_close(cli.loop);
    if (cr != 0) {
        out("LOOPBUSY %s", uv_strerror(cr));
    }
    if (command != NULL) {
        for (char **p = command; *p != NULL; p++) {
            free(*p);
        }
        free(command);
    }
    free(cli.cmd);
    free(cli.dir);
    if (cli.slow_sink || cli.pause_sink_ms > 0) {
        out("SINK pauses=%u violations=%u", cli.sink_pauses, cli.sink_violations);
    }
#if defined(__SANITIZE_ADDRESS__)
    /* Tests judge memory use differently under AddressSanitizer. */
    out("SANITIZER");
#endif
    out("VMHWM %ld", vmhwm_kb());
    return cli.exit_code;
}
