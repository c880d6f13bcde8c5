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
#include "daemon/status.h"
#include "daemon/syncrun.h"

struct globals {
    const char *config_path;
    int verbosity; /* -1 quiet, 0 normal, 1.. verbose */
};

static void usage(FILE *fp)
{
    fputs("usage: mailsync [--config FILE] [-v|-q] COMMAND [ARGS]\n"
          "\n"
          "Keeps local Maildir folders in sync with IMAP accounts and downloads\n"
          "POP3 accounts.\n"
          "\n"
          "Commands:\n"
          "  sync [--dry-run] [--force] [ACCOUNT...]  synchronise once and exit\n"
          "  daemon                         stay running and push changes both ways\n"
          "  status [--json] [ACCOUNT...]   show what the index knows of each account\n"
          "                                 (offline; safe while a sync runs)\n"
          "  check [--connect] [ACCOUNT...] validate the configuration (and connect)\n"
          "  version                        print the version\n"
          "\n"
          "Options:\n"
          "  -c, --config FILE  configuration file (default\n"
          "                     $XDG_CONFIG_HOME/mailsync/config.yaml)\n"
          "  -v, --verbose      more output (repeat for protocol traces)\n"
          "  -q, --quiet        only errors\n"
          "  -h, --help         this text\n",
          fp);
}

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
                    "mailsync reads its accounts from %s; create it (a commented example is "
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
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--connect") == 0) {
            connect = 1;
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            log_error("check: unknown option '%s'", argv[i]);
            return 2;
        }
    }
    struct cfg *cfg = load_config_accounts(g, argc - i, argv + i);
    if (cfg == NULL) {
        return 1;
    }
    int ret = 0;
    if (connect) {
        ret = check_connect(cfg, argv + i, argc - i, stdout);
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
    int ret = syncrun(cfg, argv + i, argc - i, &opts);
    cfg_free(cfg);
    return ret;
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
    int ret = status_run(cfg, argv + i, argc - i, json, stdout);
    cfg_free(cfg);
    return ret;
}

static int cmd_unavailable(const char *name)
{
    log_error("'%s' is not available in this build yet; see README.md for what works today", name);
    return 1;
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
    if (strcmp(cmd, "version") == 0) {
        printf("mailsync %s\n", MAILSYNC_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "check") == 0) {
        return cmd_check(&g, cargc, cargv);
    }
    if (strcmp(cmd, "sync") == 0) {
        return cmd_sync(&g, cargc, cargv);
    }
    if (strcmp(cmd, "status") == 0) {
        return cmd_status(&g, cargc, cargv);
    }
    if (strcmp(cmd, "daemon") == 0) {
        return cmd_unavailable(cmd);
    }
    log_error("unknown command '%s' (try 'mailsync --help')", cmd);
    return 2;
}
