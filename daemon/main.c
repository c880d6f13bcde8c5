/* mailsync command line: global options, then a subcommand. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "daemon/check.h"
#include "daemon/config.h"
#include "daemon/control.h"
#include "daemon/daemon.h"
#include "daemon/init.h"
#include "daemon/mailboxes.h"
#include "daemon/status.h"
#include "daemon/syncrun.h"
#include "sync/result.h"

struct globals {
    const char *config_path;
    int verbosity; /* -1 quiet, 0 normal, 1.. verbose */
};

/* Loads the configuration named by --config or the default path, printing
 * every problem found. Returns NULL after printing on failure. */
static struct cfg *load_config(const struct globals *g)
{
    char *path = g->config_path != NULL ? xstrdup(g->config_path) : cfg_default_path();
    if (path == NULL) {
        log_error("cannot find the configuration: neither $XDG_CONFIG_HOME nor $HOME is set; "
                  "use --config FILE");
        return NULL;
    }
    struct cfg *cfg = NULL;
    char *err = NULL;
    if (cfg_load(path, &cfg, &err) != 0) {
        fprintf(stderr, "%s", err);
        if (err[0] != '\0' && err[strlen(err) - 1] != '\n') {
            fputc('\n', stderr);
        }
        if (g->config_path == NULL && access(path, F_OK) != 0 && errno == ENOENT) {
            /* The first run: say where the file goes and where to start. */
            fprintf(stderr,
                    "mailsync reads its accounts from %s; create it with 'mailsync init "
                    "ACCOUNT --user ADDRESS', or by hand (a commented example is "
                    "contrib/config.example.yaml in the source, see README.md, "
                    "\"Configuration\"), or name another file with --config FILE\n",
                    path);
        }
        free(err);
        free(path);
        return NULL;
    }
    free(path);
    if (cfg->warnings != NULL && g->verbosity >= 0) {
        fputs(cfg->warnings, stderr);
        if (cfg->warnings[0] != '\0' && cfg->warnings[strlen(cfg->warnings) - 1] != '\n') {
            fputc('\n', stderr);
        }
    }
    return cfg;
}

/* Loads the configuration and checks that every account named on the
 * command line exists (each unknown one is reported by name). NULL when
 * either fails. */
static struct cfg *load_config_accounts(const struct globals *g, int argc, char **argv)
{
    struct cfg *cfg = load_config(g);
    if (cfg == NULL) {
        return NULL;
    }
    int bad = 0;
    for (int i = 0; i < argc; i++) {
        if (cfg_find_account(cfg, argv[i]) == NULL) {
            log_error("%s: no account named '%s'", cfg->path, argv[i]);
            bad = 1;
        }
    }
    if (bad) {
        cfg_free(cfg);
        return NULL;
    }
    return cfg;
}

static int cmd_check(const struct globals *g, int argc, char **argv)
{
    int connect = 0;
    bool json = false;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--connect") == 0) {
            connect = 1;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            log_error("check: unknown option '%s'", argv[i]);
            return 2;
        }
    }
    if (json && !connect) {
        log_error("check: --json goes with --connect (mailsync check --connect --json)");
        return 2;
    }
    struct cfg *cfg = load_config_accounts(g, argc - i, argv + i);
    if (cfg == NULL) {
        return 1;
    }
    int ret = 0;
    if (connect) {
        ret = check_run(cfg, argv + i, argc - i, json, stdout);
    } else {
        cfg_print(stdout, cfg);
    }
    if (g->verbosity >= 0 && ret == 0) {
        fprintf(stderr, "%s: configuration OK (%zu account%s)\n", cfg->path, cfg->naccounts,
                cfg->naccounts == 1 ? "" : "s");
    }
    cfg_free(cfg);
    return ret;
}

/* `mailsync sync` while a daemon runs: the daemon holds the accounts'
 * index locks, so it is asked to do the pass (one `sync ACCOUNT` request
 * per account, each answered when that account's pass is done) and the
 * summary is printed as a one-shot run would. Returns the exit status, or
 * -1 when no daemon answers. */
static int sync_by_daemon(const struct cfg *cfg, char *const *names, int count,
                          const struct syncrun_opts *opts)
{
    char path[CTL_PATH_MAX];
    if (ctl_socket_path(cfg->state_dir, path, sizeof(path)) < 0) {
        return -1;
    }
    char *reply = NULL, *err = NULL;
    int r = ctl_request(path, "status", 10000, &reply, &err);
    free(reply);
    if (r == CTL_ENODAEMON) {
        free(err);
        return -1;
    }
    if (r < 0) {
        log_error("a daemon holds %s but did not answer: %s", path,
                  err != NULL ? err : strerror(-r));
        free(err);
        return SYNC_EXIT_TEMPFAIL;
    }
    if (opts->dry_run || opts->force) {
        log_error("a mailsync daemon is running and holds the index: --dry-run and --force need "
                  "it stopped (systemctl --user stop mailsync)");
        return 1;
    }
    bool failed = false, all_temporary = true;
    size_t n = count > 0 ? (size_t)count : cfg->naccounts;
    for (size_t i = 0; i < n; i++) {
        const char *name = count > 0 ? names[i] : cfg->accounts[i].name;
        struct sbuf line = {0};
        sbuf_adds(&line, "sync ");
        ctl_quote(&line, name);
        sbuf_addc(&line, '\0');
        r = ctl_request(path, line.buf, -1, &reply, &err);
        sbuf_free(&line);
        if (r < 0) {
            log_error("%s: the daemon did not answer: %s", name, err != NULL ? err : strerror(-r));
            free(err);
            failed = true;
            continue;
        }
        unsigned long long ok = 0, temporary = 0, c[7] = {0};
        static const char *const keys[] = {"new_down", "flags_down", "deleted_down", "new_up",
                                           "flags_up", "deleted_up", "moved"};
        json_uint_field(reply, "ok", &ok);
        json_uint_field(reply, "temporary", &temporary);
        for (size_t k = 0; k < ARRAY_SIZE(keys); k++) {
            json_uint_field(reply, keys[k], &c[k]);
        }
        if (!ok) {
            char *e = json_string_field(reply, "error");
            log_error("%s: %s", name, e != NULL ? e : reply);
            free(e);
            failed = true;
            all_temporary = all_temporary && temporary;
        }
        if (!opts->quiet || !ok) {
            char moved[48] = "";
            if (c[6] > 0) {
                snprintf(moved, sizeof(moved), "; %llu moved between folders", c[6]);
            }
            printf("%s: \xe2\x86\x93 %llu new, %llu flags, %llu deleted; \xe2\x86\x91 %llu new, "
                   "%llu flags, %llu deleted%s (by the daemon)\n",
                   name, c[0], c[1], c[2], c[3], c[4], c[5], moved);
        }
        free(reply);
    }
    fflush(stdout);
    return !failed ? 0 : all_temporary ? SYNC_EXIT_TEMPFAIL : 1;
}

static int cmd_sync(const struct globals *g, int argc, char **argv)
{
    struct syncrun_opts opts = {0};
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--dry-run") == 0 || strcmp(argv[i], "-n") == 0) {
            opts.dry_run = true;
        } else if (strcmp(argv[i], "--force") == 0) {
            opts.force = true;
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            log_error("sync: unknown option '%s' (options: --dry-run, --force)", argv[i]);
            return 2;
        }
    }
    struct cfg *cfg = load_config_accounts(g, argc - i, argv + i);
    if (cfg == NULL) {
        return 1;
    }
    opts.quiet = g->verbosity < 0;
    opts.progress = !opts.quiet && isatty(STDERR_FILENO);
    int ret = sync_by_daemon(cfg, argv + i, argc - i, &opts);
    if (ret < 0) {
        ret = syncrun(cfg, argv + i, argc - i, &opts);
    }
    cfg_free(cfg);
    return ret;
}

/* The live state from a running daemon: its reply as is with --json, else
 * one line per account. Returns the exit status, or -1 when no daemon
 * answers (then the offline view is shown). */
static int status_live(const struct cfg *cfg, bool json)
{
    char path[CTL_PATH_MAX];
    if (ctl_socket_path(cfg->state_dir, path, sizeof(path)) < 0) {
        return -1;
    }
    char *reply = NULL, *err = NULL;
    int r = ctl_request(path, json ? "status" : "status text", 10000, &reply, &err);
    if (r == CTL_ENODAEMON) {
        free(err);
        return -1;
    }
    if (r < 0) {
        log_error("the daemon at %s did not answer: %s", path, err != NULL ? err : strerror(-r));
        free(err);
        return 1;
    }
    if (json) {
        printf("%s\n", reply);
    } else {
        char *text = json_string_field(reply, "text");
        fputs(text != NULL ? text : reply, stdout);
        free(text);
    }
    free(reply);
    return 0;
}

static int cmd_status(const struct globals *g, int argc, char **argv)
{
    bool json = false;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            log_error("status: unknown option '%s' (options: --json)", argv[i]);
            return 2;
        }
    }
    struct cfg *cfg = load_config_accounts(g, argc - i, argv + i);
    if (cfg == NULL) {
        return 1;
    }
    int live = status_live(cfg, json);
    if (live >= 0) {
        cfg_free(cfg);
        return live;
    }
    int ret = status_run(cfg, argv + i, argc - i, json, stdout);
    cfg_free(cfg);
    return ret;
}

static int cmd_daemon(const struct globals *g, int argc, char **argv)
{
    if (argc > 1) {
        log_error("daemon: unexpected argument '%s' (it runs every account of the configuration)",
                  argv[1]);
        return 2;
    }
    struct cfg *cfg = load_config(g);
    if (cfg == NULL) {
        return 1;
    }
    int ret = daemon_run(cfg);
    cfg_free(cfg);
    return ret;
}

/* `mailsync ctl REQUEST [ARGS]`: one request on the running daemon's
 * control socket, its JSON reply printed. */
static int cmd_ctl(const struct globals *g, int argc, char **argv)
{
    if (argc < 2) {
        log_error("ctl: name a request (status, sync, pause, resume, retry, recheck, reload)");
        return 2;
    }
    struct cfg *cfg = load_config(g);
    if (cfg == NULL) {
        return 1;
    }
    char path[CTL_PATH_MAX];
    if (ctl_socket_path(cfg->state_dir, path, sizeof(path)) < 0) {
        log_error("the control socket path under %s is too long", cfg->state_dir);
        cfg_free(cfg);
        return 1;
    }
    cfg_free(cfg);
    struct sbuf line = {0};
    for (int i = 1; i < argc; i++) {
        if (i > 1) {
            sbuf_addc(&line, ' ');
        }
        ctl_quote(&line, argv[i]);
    }
    sbuf_addc(&line, '\0');
    char *reply = NULL, *err = NULL;
    int r = ctl_request(path, line.buf, -1, &reply, &err);
    sbuf_free(&line);
    if (r == CTL_ENODAEMON) {
        log_error("no mailsync daemon is running (nothing answers at %s)", path);
        free(err);
        return 1;
    }
    if (r < 0) {
        log_error("%s", err != NULL ? err : strerror(-r));
        free(err);
        return 1;
    }
    printf("%s\n", reply);
    unsigned long long ok = 0;
    json_uint_field(reply, "ok", &ok);
    free(reply);
    return ok ? 0 : 1;
}

static int cmd_version(const struct globals *g, int argc, char **argv)
{
    printf("mailsync %s\n", MAILSYNC_VERSION);
    return 0;
}

static int cmd_mailboxes(const struct globals *g, int argc, char **argv)
{
    bool named = false;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--named") == 0) {
            named = true;
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            log_error("mailboxes: unknown option '%s' (options: --named)", argv[i]);
            return 2;
        }
    }
    struct cfg *cfg = load_config_accounts(g, argc - i, argv + i);
    if (cfg == NULL) {
        return 1;
    }
    int ret = mailboxes_run(cfg, argv + i, argc - i, named, g->verbosity >= 0, stdout);
    cfg_free(cfg);
    return ret;
}

static int cmd_init(const struct globals *g, int argc, char **argv)
{
    enum {
        OPT_PROVIDER = 1,
        OPT_USER,
        OPT_MAILDIR,
        OPT_PASSWORD_COMMAND,
        OPT_POP3,
        OPT_HOST,
        OPT_PORT,
        OPT_TLS,
        OPT_NO_CHECK,
    };
    static const struct option opts[] = {
        {"provider", required_argument, NULL, OPT_PROVIDER},
        {"user", required_argument, NULL, OPT_USER},
        {"maildir", required_argument, NULL, OPT_MAILDIR},
        {"password-command", required_argument, NULL, OPT_PASSWORD_COMMAND},
        {"pop3", no_argument, NULL, OPT_POP3},
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT},
        {"tls", required_argument, NULL, OPT_TLS},
        {"no-check", no_argument, NULL, OPT_NO_CHECK},
        {NULL, 0, NULL, 0},
    };
    struct init_opts o = {.config_path = g->config_path, .quiet = g->verbosity < 0};
    /* Start a fresh scan of the subcommand's arguments (GNU getopt resets
     * fully for optind 0); ":" makes a missing value its own error. */
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (ch) {
        case OPT_PROVIDER:
            o.provider = optarg;
            break;
        case OPT_USER:
            o.user = optarg;
            break;
        case OPT_MAILDIR:
            o.maildir = optarg;
            break;
        case OPT_PASSWORD_COMMAND:
            o.password_command = optarg;
            break;
        case OPT_POP3:
            o.pop3 = true;
            break;
        case OPT_HOST:
            o.host = optarg;
            break;
        case OPT_PORT: {
            char *end;
            long port = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || port < 1 || port > 65535) {
                log_error("init: --port must be a number from 1 to 65535 (got '%s')", optarg);
                return 2;
            }
            o.port = (unsigned)port;
            break;
        }
        case OPT_TLS:
            o.tls = optarg;
            break;
        case OPT_NO_CHECK:
            o.no_check = true;
            break;
        case ':':
            log_error("init: option '%s' needs a value", argv[optind - 1]);
            return 2;
        default:
            log_error("init: unknown option '%s' (try 'mailsync init --help')", argv[optind - 1]);
            return 2;
        }
    }
    if (optind >= argc) {
        log_error("init: name the account: mailsync init ACCOUNT --user ADDRESS ...");
        return 2;
    }
    if (optind + 1 < argc) {
        log_error("init: one account at a time (got '%s' after '%s')", argv[optind + 1],
                  argv[optind]);
        return 2;
    }
    o.account = argv[optind];
    o.interactive = isatty(STDIN_FILENO) && isatty(STDERR_FILENO);
    return init_run(&o);
}

/* One subcommand: its synopsis and one line for `mailsync --help`, and the
 * text of `mailsync COMMAND --help`. run is NULL for "help" itself. */
struct command {
    const char *name;
    const char *args;
    const char *summary;
    const char *help;
    int (*run)(const struct globals *g, int argc, char **argv);
};

static const struct command commands[] = {
    {"init", "ACCOUNT [--provider P] [--user ADDRESS] [OPTIONS]",
     "add an account to the configuration and check it",
     "Writes the account into the configuration file (created 0600 with a\n"
     "commented header when missing; comments and other accounts stay as they\n"
     "are), refuses a name that exists, then runs 'check --connect' for it.\n"
     "Without --provider or --host, a preset named like the address's domain\n"
     "is used (gmail.com: gmail), else the domain's RFC 6186 SRV records\n"
     "(_imaps._tcp, _imap._tcp, _pop3s._tcp, _pop3._tcp). On a terminal\n"
     "missing values are asked for; every value can be given as an option.\n"
     "\n"
     "Options:\n"
     "  --provider NAME           a provider preset (mailsync.yaml(5) lists them)\n"
     "  --user ADDRESS            login name, usually the email address\n"
     "  --password-command CMD    command that prints the password (never stored)\n"
     "  --maildir DIR             local Maildir root (default ~/Mail/ACCOUNT)\n"
     "  --pop3                    a POP3 account (download, keep on server)\n"
     "  --host HOST               server host name instead of a preset\n"
     "  --port PORT               server port (default 993/995, 143/110 with STARTTLS)\n"
     "  --tls implicit|starttls|none  how TLS starts (default implicit)\n"
     "  --no-check                do not connect to check the account afterwards\n"
     "\n"
     "Exit status: 0 written and checked, 1 not written or the check failed,\n"
     "2 usage error.\n",
     cmd_init},
    {"sync", "[--dry-run] [--force] [ACCOUNT...]", "synchronise once and exit",
     "Synchronises every account (or the ones named) once: new mail, flags and\n"
     "deletions both ways for IMAP, downloads for POP3.\n"
     "\n"
     "Options:\n"
     "  -n, --dry-run  print what would be done; change nothing anywhere\n"
     "  --force        override the safety guards (vanished folder, mass deletion)\n"
     "\n"
     "Exit status: 0 every account synced, 75 every failure was temporary\n"
     "(try again later), 1 otherwise, 2 usage error.\n",
     cmd_sync},
    {"daemon", "", "stay running and sync changes both ways as they happen",
     "Syncs every account once, then stays running: IMAP changes on the server\n"
     "(NOTIFY on every folder, or IDLE on INBOX, and a sweep of every folder\n"
     "each poll_interval) and in the Maildir (inotify, after local_delay)\n"
     "are synced within seconds; POP3 accounts are polled. Dropped\n"
     "connections are reopened with back-off; a refused login stops that\n"
     "account until 'retry'. One daemon per state_dir. While it runs,\n"
     "'mailsync status' shows its live state and\n"
     "'mailsync sync' asks it to sync. SIGHUP reads the configuration again.\n"
     "Control socket requests (one line each, JSON replies): status,\n"
     "sync [ACCOUNT [FOLDER]], pause ACCOUNT, resume ACCOUNT, retry ACCOUNT,\n"
     "recheck (reconnect everything, as after a network change), reload\n"
     "(read the configuration again, as SIGHUP).\n"
     "\n"
     "Exit status: 0 after SIGTERM or SIGINT, 1 when it cannot start.\n",
     cmd_daemon},
    {"ctl", "REQUEST [ARGS...]", "send a request to the running daemon",
     "Sends one request to the running daemon's control socket and prints its\n"
     "JSON reply. Requests: status [text], sync [ACCOUNT [FOLDER]] (waits for\n"
     "the sync), pause ACCOUNT, resume ACCOUNT, retry ACCOUNT (after a refused\n"
     "login), recheck (reconnect everything, as after a network change),\n"
     "reload (read the configuration again; a broken file is refused with\n"
     "its line and the running configuration stays).\n"
     "\n"
     "Exit status: 0 when the reply says ok, 1 otherwise or without a daemon.\n",
     cmd_ctl},
    {"status", "[--json] [ACCOUNT...]", "show the daemon's live state, or what the index knows",
     "While a daemon runs: its live state per account (connected, idle,\n"
     "syncing, backing off, failed), last sync, last error, counts since it\n"
     "started. Otherwise what mailsync knows of each account from its index\n"
     "alone: folders, messages, last complete sync, messages skipped. Never\n"
     "connects, and is safe to run while a sync runs.\n"
     "\n"
     "Options:\n"
     "  --json  one JSON object (schema at the top of daemon/status.c)\n"
     "\n"
     "Exit status: 0, or 1 when an index cannot be read or an account is unknown.\n",
     cmd_status},
    {"check", "[--connect [--json]] [ACCOUNT...]", "validate the configuration (and connect)",
     "Reads the configuration, reports every problem with its file, line and\n"
     "column, and prints every account fully resolved (passwords redacted).\n"
     "\n"
     "Options:\n"
     "  --connect  also connect, verify TLS, log in, and show what the server\n"
     "             offers and which folders would be synced where; every\n"
     "             failure comes with its cause and how to fix it\n"
     "  --json     with --connect: the same findings as one JSON object\n"
     "\n"
     "Exit status: 0 valid (and every account connected and logged in),\n"
     "1 otherwise, 2 usage error.\n",
     cmd_check},
    {"mailboxes", "[--named] [ACCOUNT...]", "print neomutt 'mailboxes' lines for the folders",
     "Prints a neomutt/mutt 'mailboxes' line for every folder of the accounts'\n"
     "Maildirs that the 'folders' patterns select (INBOX first), quoted for\n"
     "names with spaces, quotes and non-ASCII characters. In a muttrc:\n"
     "\n"
     "    source \"mailsync mailboxes|\"\n"
     "\n"
     "Options:\n"
     "  --named  'named-mailboxes \"ACCOUNT/FOLDER\" PATH' lines instead\n"
     "\n"
     "Exit status: 0, or 1 when a Maildir cannot be read or an account is unknown.\n",
     cmd_mailboxes},
    {"version", "", "print the version", "Prints \"mailsync VERSION\".\n", cmd_version},
    {"help", "[COMMAND]", "describe mailsync or a command",
     "Prints the help of mailsync or of COMMAND.\n", NULL},
};
static const size_t ncommands = ARRAY_SIZE(commands);

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < ncommands; i++) {
        if (strcmp(commands[i].name, name) == 0) {
            return &commands[i];
        }
    }
    return NULL;
}

static void usage(FILE *fp)
{
    fputs("usage: mailsync [--config FILE] [-v|-q] COMMAND [ARGS]\n"
          "\n"
          "Keeps local Maildir folders in sync with IMAP accounts and downloads\n"
          "POP3 accounts.\n"
          "\n"
          "Commands:\n",
          fp);
    for (size_t i = 0; i < ncommands; i++) {
        const struct command *c = &commands[i];
        fprintf(fp, "  %-10s %s\n", c->name, c->summary);
    }
    fputs("\n"
          "Options:\n"
          "  -c, --config FILE  configuration file (default\n"
          "                     $XDG_CONFIG_HOME/mailsync/config.yaml)\n"
          "  -v, --verbose      more output (repeat for protocol traces)\n"
          "  -q, --quiet        only errors\n"
          "  -h, --help         this text\n"
          "  --version          print the version\n"
          "\n"
          "'mailsync COMMAND --help' describes a command; mailsync(1) and\n"
          "mailsync.yaml(5) describe everything.\n",
          fp);
}

static void command_help(const struct command *c, FILE *fp)
{
    fprintf(fp, "usage: mailsync [--config FILE] [-v|-q] %s%s%s\n\n%s", c->name,
            c->args[0] != '\0' ? " " : "", c->args, c->help);
}

/* True when the command's arguments ask for its help text (before a
 * "--"). */
static bool wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            return false;
        }
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            return true;
        }
    }
    return false;
}

int main(int argc, char **argv)
{
    struct globals g = {0};
    /* A server that drops the connection while we write must become an
     * error on that connection (EPIPE), not a silent death of the process. */
    signal(SIGPIPE, SIG_IGN);
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
    };
    int ch;
    int verbose = 0;
    bool quiet = false;
    /* '+' stops at the first non-option: the subcommand owns the rest. */
    while ((ch = getopt_long(argc, argv, "+c:vqh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            g.config_path = optarg;
            break;
        case 'v':
            verbose++;
            break;
        case 'q':
            quiet = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("mailsync %s\n", MAILSYNC_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (quiet && verbose > 0) {
        log_error("-q and -v contradict each other: use one of them");
        return 2;
    }
    g.verbosity = quiet ? -1 : verbose;
    /* Timestamps (with milliseconds) help to read traces; the journal adds
     * its own, so they are off unless asked for. */
    const char *ts = getenv("MAILSYNC_LOG_TIMESTAMPS");
    log_set_timestamps(ts != NULL && *ts != '\0' && strcmp(ts, "0") != 0);
    if (g.verbosity < 0) {
        log_set_level(LOG_LEVEL_ERROR);
    } else if (g.verbosity == 1) {
        log_set_level(LOG_LEVEL_DEBUG);
    } else if (g.verbosity >= 2) {
        log_set_level(LOG_LEVEL_TRACE);
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    int cargc = argc - optind;
    char **cargv = argv + optind;
    const struct command *c = find_command(cmd);
    if (c == NULL) {
        log_error("unknown command '%s' (try 'mailsync --help')", cmd);
        return 2;
    }
    if (wants_help(cargc, cargv)) {
        command_help(c, stdout);
        return 0;
    }
    if (c->run == NULL) {
        /* help [COMMAND] */
        if (cargc < 2) {
            usage(stdout);
            return 0;
        }
        const struct command *about = find_command(cargv[1]);
        if (about == NULL) {
            log_error("help: unknown command '%s' (try 'mailsync --help')", cargv[1]);
            return 2;
        }
        command_help(about, stdout);
        return 0;
    }
    return c->run(&g, cargc, cargv);
}
