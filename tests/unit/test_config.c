/* LINK: ms_config ms_core */
/* Tests for daemon/config.c: every field parsed and defaulted, presets,
 * expansion, password_command splitting, and the exact text and position of
 * every kind of error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "daemon/config.h"

/* A private $HOME for the whole run, so that "~" and the default state
 * directory are predictable. */
static char home[256];

static int setup_home(void **state)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(home, sizeof(home), "%s/test_config.XXXXXX", tmp != NULL ? tmp : "/tmp");
    if (mkdtemp(home) == NULL) {
        return -1;
    }
    setenv("HOME", home, 1);
    unsetenv("XDG_STATE_HOME");
    unsetenv("XDG_CONFIG_HOME");
    return 0;
}

static void rm_rf(const char *path)
{
    char *cmd = xasprintf("rm -rf '%s'", path);
    int rc = system(cmd);
    (void)rc;
    free(cmd);
}

static int teardown_home(void **state)
{
    rm_rf(home);
    return 0;
}

/* Loads yaml that must be valid. */
static struct cfg *load_ok(const char *yaml)
{
    struct cfg *cfg = NULL;
    char *err = NULL;
    int rc = cfg_load_string("config.yaml", yaml, &cfg, &err);
    if (rc != 0) {
        print_error("unexpected errors:\n%s\n", err);
    }
    assert_int_equal(rc, 0);
    assert_null(err);
    assert_non_null(cfg);
    return cfg;
}

/* Loads yaml that must be invalid and checks the whole error text. */
static void expect_err(const char *yaml, const char *want)
{
    struct cfg *cfg = (struct cfg *)1;
    char *err = NULL;
    int rc = cfg_load_string("config.yaml", yaml, &cfg, &err);
    assert_int_equal(rc, -1);
    assert_null(cfg);
    assert_non_null(err);
    assert_string_equal(err, want);
    free(err);
}

/* The smallest valid IMAP account, for tests that vary one key. */
#define MINIMAL                                                                                    \
    "accounts:\n"                                                                                  \
    "  work:\n"                                                                                    \
    "    host: imap.example.com\n"                                                                 \
    "    user: me@example.com\n"                                                                   \
    "    password: secret\n"                                                                       \
    "    maildir: /m/work\n"

/* The same as a POP3 account. */
#define MINIMAL_POP                                                                                \
    "accounts:\n"                                                                                  \
    "  p:\n"                                                                                       \
    "    protocol: pop3\n"                                                                         \
    "    host: pop.example.com\n"                                                                  \
    "    user: me\n"                                                                               \
    "    password: secret\n"                                                                       \
    "    maildir: /m/pop\n"

static char *write_file(const char *name, const char *text, mode_t mode)
{
    char *path = path_join(home, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    assert_int_equal(chmod(path, mode), 0);
    return path;
}

static char *print_to_string(const struct cfg *cfg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    assert_non_null(fp);
    cfg_print(fp, cfg);
    fclose(fp);
    return buf;
}

/* ---- Valid configurations ---- */

static void test_full_round_trip(void **state)
{
    char *ca = write_file("ca.pem", "-----BEGIN CERTIFICATE-----\n", 0644);
    char *yaml = xasprintf(
        "state_dir: /var/lib/ms\n"
        "accounts:\n"
        "  work:\n"
        "    protocol: imap\n"
        "    provider: zoho\n"
        "    host: imap.zoho.eu\n"
        "    port: 1993\n"
        "    tls: starttls\n"
        "    ca_file: %s\n"
        "    tls_fingerprint: "
        "\"AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:"
        "23:45:67:89\"\n"
        "    allow_plaintext: yes\n"
        "    user: me@example.com\n"
        "    password_command: \"pass show mail/work\"\n"
        "    auth: xoauth2\n"
        "    maildir: ~/Mail/work\n"
        "    layout: maildir++\n"
        "    folders: [\"*\", \"!Junk\", \"!Archive/%%\"]\n"
        "    subscribed_only: on\n"
        "    max_connections: 4\n"
        "    on_local_delete: trash\n"
        "    trash: Deleted Items\n"
        "    delete_folders: true\n"
        "    max_delete_ratio: 0.25\n"
        "    max_size: 25M\n"
        "    max_age_days: 365\n"
        "    compress: off\n"
        "    timeout: 120\n"
        "  old:\n"
        "    protocol: pop3\n"
        "    host: pop.example.com\n"
        "    user: old@example.com\n"
        "    password: \"p4ss: word\"\n"
        "    auth: apop\n"
        "    maildir: /m/old/\n"
        "    max_size: 512k\n"
        "    pop:\n"
        "      keep_on_server: false\n"
        "      delete_after_days: 30\n"
        "      since: 2013-09-10\n"
        "      delete_when_deleted_locally: true\n",
        ca);
    struct cfg *cfg = load_ok(yaml);
    assert_string_equal(cfg->path, "config.yaml");
    assert_string_equal(cfg->state_dir, "/var/lib/ms");
    assert_int_equal(cfg->naccounts, 2);

    const struct cfg_account *a = &cfg->accounts[0];
    assert_string_equal(a->name, "work");
    assert_int_equal(a->line, 3);
    assert_int_equal(a->protocol, CFG_PROTO_IMAP);
    assert_string_equal(a->provider, "zoho");
    assert_string_equal(a->host, "imap.zoho.eu");
    assert_int_equal(a->port, 1993);
    assert_int_equal(a->tls, CFG_TLS_STARTTLS);
    assert_string_equal(a->ca_file, ca);
    assert_string_equal(a->tls_fingerprint,
                        "sha256:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
    assert_true(a->allow_plaintext);
    assert_string_equal(a->user, "me@example.com");
    assert_null(a->password);
    assert_non_null(a->password_command);
    assert_string_equal(a->password_command[0], "pass");
    assert_string_equal(a->password_command[1], "show");
    assert_string_equal(a->password_command[2], "mail/work");
    assert_null(a->password_command[3]);
    assert_int_equal(a->auth, CFG_AUTH_XOAUTH2);
    char *md = xasprintf("%s/Mail/work", home);
    assert_string_equal(a->maildir, md);
    free(md);
    assert_int_equal(a->layout, CFG_LAYOUT_MAILDIRPP);
    assert_int_equal(a->nfolders, 3);
    assert_string_equal(a->folders[0].glob, "*");
    assert_false(a->folders[0].exclude);
    assert_string_equal(a->folders[1].glob, "Junk");
    assert_true(a->folders[1].exclude);
    assert_string_equal(a->folders[2].glob, "Archive/%");
    assert_true(a->folders[2].exclude);
    assert_true(a->subscribed_only);
    assert_int_equal(a->max_connections, 4);
    assert_int_equal(a->on_local_delete, CFG_LOCAL_DELETE_TRASH);
    assert_string_equal(a->trash, "Deleted Items");
    assert_true(a->delete_folders);
    assert_true(a->max_delete_ratio == 0.25);
    assert_int_equal(a->max_size, 25ULL * 1024 * 1024);
    assert_int_equal(a->max_age_days, 365);
    assert_int_equal(a->compress, CFG_COMPRESS_NEVER);
    assert_int_equal(a->timeout_seconds, 120);

    const struct cfg_account *p = &cfg->accounts[1];
    assert_string_equal(p->name, "old");
    assert_int_equal(p->line, 28);
    assert_int_equal(p->protocol, CFG_PROTO_POP3);
    assert_null(p->provider);
    assert_string_equal(p->host, "pop.example.com");
    assert_int_equal(p->port, 995);
    assert_int_equal(p->tls, CFG_TLS_IMPLICIT);
    assert_null(p->ca_file);
    assert_null(p->tls_fingerprint);
    assert_string_equal(p->password, "p4ss: word");
    assert_null(p->password_command);
    assert_int_equal(p->auth, CFG_AUTH_APOP);
    assert_string_equal(p->maildir, "/m/old");
    assert_int_equal(p->max_size, 512 * 1024);
    assert_false(p->pop.keep_on_server);
    assert_int_equal(p->pop.delete_after_days, 30);
    assert_true(p->pop.has_since);
    assert_int_equal(p->pop.since, 1378771200); /* 2013-09-10T00:00:00Z */
    assert_true(p->pop.delete_when_deleted_locally);

    assert_ptr_equal(cfg_find_account(cfg, "old"), p);
    assert_ptr_equal(cfg_find_account(cfg, "work"), a);
    assert_null(cfg_find_account(cfg, "Work"));
    /* Two warnings: the delete_* keys do nothing without keep_on_server. */
    assert_string_equal(cfg->warnings,
                        "config.yaml:38:7: warning: account 'old': key 'pop.delete_after_days' "
                        "has no effect with keep_on_server: false (messages are deleted once "
                        "downloaded)\n"
                        "config.yaml:40:7: warning: account 'old': key "
                        "'pop.delete_when_deleted_locally' has no effect with keep_on_server: "
                        "false (messages are deleted once downloaded)");
    cfg_free(cfg);
    free(yaml);
    unlink(ca);
    free(ca);
}

static void test_defaults(void **state)
{
    struct cfg *cfg = load_ok(MINIMAL);
    char *sd = xasprintf("%s/.local/state/mailsync", home);
    assert_string_equal(cfg->state_dir, sd);
    free(sd);
    assert_null(cfg->warnings);
    const struct cfg_account *a = &cfg->accounts[0];
    assert_int_equal(a->protocol, CFG_PROTO_IMAP);
    assert_null(a->provider);
    assert_int_equal(a->port, 993);
    assert_int_equal(a->tls, CFG_TLS_IMPLICIT);
    assert_null(a->ca_file);
    assert_null(a->tls_fingerprint);
    assert_false(a->allow_plaintext);
    assert_string_equal(a->password, "secret");
    assert_null(a->password_command);
    assert_int_equal(a->auth, CFG_AUTH_AUTO);
    assert_int_equal(a->layout, CFG_LAYOUT_VERBATIM);
    assert_int_equal(a->nfolders, 1);
    assert_string_equal(a->folders[0].glob, "*");
    assert_false(a->folders[0].exclude);
    assert_false(a->subscribed_only);
    assert_int_equal(a->max_connections, 3);
    assert_int_equal(a->on_local_delete, CFG_LOCAL_DELETE_EXPUNGE);
    assert_null(a->trash);
    assert_false(a->delete_folders);
    assert_true(a->max_delete_ratio == 0.5);
    assert_int_equal(a->max_size, 0);
    assert_int_equal(a->max_age_days, 0);
    assert_int_equal(a->compress, CFG_COMPRESS_AUTO);
    assert_int_equal(a->timeout_seconds, 60);
    assert_true(a->pop.keep_on_server);
    assert_int_equal(a->pop.delete_after_days, -1);
    assert_false(a->pop.has_since);
    assert_false(a->pop.delete_when_deleted_locally);
    cfg_free(cfg);

    cfg = load_ok(MINIMAL_POP);
    a = &cfg->accounts[0];
    assert_int_equal(a->port, 995);
    assert_true(a->pop.keep_on_server);
    assert_int_equal(a->pop.delete_after_days, -1);
    assert_false(a->pop.has_since);
    cfg_free(cfg);

    /* $XDG_STATE_HOME wins over $HOME when set to an absolute path. */
    setenv("XDG_STATE_HOME", "/xdg/state", 1);
    cfg = load_ok(MINIMAL);
    assert_string_equal(cfg->state_dir, "/xdg/state/mailsync");
    cfg_free(cfg);
    setenv("XDG_STATE_HOME", "relative", 1);
    cfg = load_ok(MINIMAL);
    sd = xasprintf("%s/.local/state/mailsync", home);
    assert_string_equal(cfg->state_dir, sd);
    free(sd);
    cfg_free(cfg);
    unsetenv("XDG_STATE_HOME");
}

static void test_default_ports(void **state)
{
    static const struct {
        const char *proto;
        const char *tls;
        int port;
    } cases[] = {
        {"imap", "implicit", 993}, {"imap", "starttls", 143}, {"imap", "none", 143},
        {"pop3", "implicit", 995}, {"pop3", "starttls", 110}, {"pop3", "none", 110},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *yaml = xasprintf("accounts:\n  a:\n    protocol: %s\n    tls: %s\n"
                               "    allow_plaintext: true\n    host: h\n    user: u\n"
                               "    password: p\n    maildir: /m\n",
                               cases[i].proto, cases[i].tls);
        struct cfg *cfg = load_ok(yaml);
        assert_int_equal(cfg->accounts[0].port, cases[i].port);
        cfg_free(cfg);
        free(yaml);
    }
}

static void test_provider_presets(void **state)
{
    static const struct {
        const char *provider;
        const char *proto;
        const char *host;
        int port;
    } cases[] = {
        {"zoho", "imap", "imap.zoho.com", 993},
        {"zoho", "pop3", "pop.zoho.com", 995},
        {"gmail", "imap", "imap.gmail.com", 993},
        {"gmail", "pop3", "pop.gmail.com", 995},
        {"fastmail", "imap", "imap.fastmail.com", 993},
        {"fastmail", "pop3", "pop.fastmail.com", 995},
        {"outlook", "imap", "outlook.office365.com", 993},
        {"Outlook", "pop3", "outlook.office365.com", 995},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *yaml = xasprintf("accounts:\n  a:\n    provider: %s\n    protocol: %s\n"
                               "    user: u\n    password: p\n    maildir: /m\n",
                               cases[i].provider, cases[i].proto);
        struct cfg *cfg = load_ok(yaml);
        const struct cfg_account *a = &cfg->accounts[0];
        assert_string_equal(a->host, cases[i].host);
        assert_int_equal(a->port, cases[i].port);
        assert_int_equal(a->tls, CFG_TLS_IMPLICIT);
        assert_non_null(a->provider);
        assert_int_equal(strcasecmp(a->provider, cases[i].provider), 0);
        cfg_free(cfg);
        free(yaml);
    }

    /* Explicit keys override the preset; the port follows an explicit tls. */
    struct cfg *cfg = load_ok("accounts:\n  a:\n    provider: zoho\n    host: imap.zoho.eu\n"
                              "    tls: starttls\n    user: u\n    password: p\n"
                              "    maildir: /m\n");
    assert_string_equal(cfg->accounts[0].host, "imap.zoho.eu");
    assert_int_equal(cfg->accounts[0].tls, CFG_TLS_STARTTLS);
    assert_int_equal(cfg->accounts[0].port, 143);
    cfg_free(cfg);
    cfg = load_ok("accounts:\n  a:\n    provider: gmail\n    port: 1993\n    user: u\n"
                  "    password: p\n    maildir: /m\n");
    assert_string_equal(cfg->accounts[0].host, "imap.gmail.com");
    assert_int_equal(cfg->accounts[0].port, 1993);
    cfg_free(cfg);

    /* An unknown name lists the known ones and suggests the nearest. */
    struct cfg *bad = (struct cfg *)1;
    char *err = NULL;
    assert_int_equal(cfg_load_string("config.yaml",
                                     "accounts:\n  a:\n    provider: yahooo\n    user: u\n"
                                     "    password: p\n    maildir: /m\n",
                                     &bad, &err),
                     -1);
    assert_null(bad);
    assert_non_null(strstr(err, "config.yaml:2:3: account 'a': missing required key 'host' (or "
                                "a 'provider' that sets it)\n"
                                "config.yaml:3:15: account 'a': key 'provider' must be one of "
                                "the known providers: zoho, zoho.eu, "));
    assert_non_null(strstr(err, ", yahoo, aol, "));
    assert_non_null(strstr(err, " (got 'yahooo'); did you mean 'yahoo'?"));
    free(err);
}

/* Loads one account "a" (after "accounts:\n  a:\n") that must be valid. */
static struct cfg *load_account_ok(const char *body)
{
    char *yaml = xasprintf("accounts:\n  a:\n%s    password: p\n    maildir: /m\n", body);
    struct cfg *cfg = load_ok(yaml);
    free(yaml);
    return cfg;
}

static void test_provider_regions(void **state)
{
    static const struct {
        const char *body;
        const char *provider;
        const char *host;
    } cases[] = {
        {"    provider: zoho\n", "zoho", "imap.zoho.com"},
        {"    provider: zoho\n    region: eu\n", "zoho.eu", "imap.zoho.eu"},
        {"    provider: ZOHO.EU\n", "zoho.eu", "imap.zoho.eu"},
        {"    provider: zoho.eu\n    region: EU\n", "zoho.eu", "imap.zoho.eu"},
        {"    provider: zoho\n    region: com.au\n", "zoho.com.au", "imap.zoho.com.au"},
        {"    provider: zoho\n    region: au\n    protocol: pop3\n", "zoho.com.au",
         "pop.zoho.com.au"},
        {"    provider: zoho\n    region: ca\n", "zohocloud.ca", "imap.zohocloud.ca"},
        {"    provider: zoho\n    region: us\n", "zoho", "imap.zoho.com"},
        {"    provider: office365\n", "microsoft365", "outlook.office365.com"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *body = xasprintf("%s    user: me@example.com\n", cases[i].body);
        struct cfg *cfg = load_account_ok(body);
        assert_string_equal(cfg->accounts[0].provider, cases[i].provider);
        assert_string_equal(cfg->accounts[0].host, cases[i].host);
        cfg_free(cfg);
        free(body);
    }
    expect_err("accounts:\n  a:\n    provider: zoho\n    region: mars\n    user: u@x\n"
               "    password: p\n    maildir: /m\n",
               "config.yaml:2:3: account 'a': missing required key 'host' (or a 'provider' "
               "that sets it)\n"
               "config.yaml:4:13: account 'a': key 'region' must be a data centre of zoho: com "
               "(zoho), eu (zoho.eu), in (zoho.in), au (zoho.com.au), jp (zoho.jp), ca "
               "(zohocloud.ca), sa (zoho.sa), cn (zoho.com.cn) (got 'mars')");
    expect_err("accounts:\n  a:\n    provider: zoho.eu\n    region: in\n    host: h\n"
               "    user: u@x\n    password: p\n    maildir: /m\n",
               "config.yaml:4:13: account 'a': key 'region' is 'in', but provider 'zoho.eu' is "
               "another data centre; use provider: zoho with region: in, or provider: zoho.in");
    expect_err("accounts:\n  a:\n    provider: gmail\n    region: eu\n    user: u@x\n"
               "    password: p\n    maildir: /m\n",
               "config.yaml:2:3: account 'a': missing required key 'host' (or a 'provider' "
               "that sets it)\n"
               "config.yaml:4:13: account 'a': key 'region' picks a data centre, and Gmail has "
               "only one; remove 'region'");
    expect_err("accounts:\n  a:\n    region: eu\n    host: h\n    user: u@x\n"
               "    password: p\n    maildir: /m\n",
               "config.yaml:3:13: account 'a': key 'region' picks a provider's data centre, so "
               "it needs 'provider' (e.g. provider: zoho, region: eu)");
    /* A provider without POP3 says so instead of inventing a server. */
    expect_err("accounts:\n  a:\n    provider: icloud\n    protocol: pop3\n    user: u\n"
               "    password: p\n    maildir: /m\n",
               "config.yaml:3:15: account 'a': iCloud Mail offers no POP3 access; use protocol: "
               "imap, or set 'host'");
}

/* Provider defaults fill only the keys the account leaves out. */
static void test_provider_defaults(void **state)
{
    struct cfg *cfg = load_account_ok("    provider: gmail\n    user: me@gmail.com\n");
    const struct cfg_account *a = &cfg->accounts[0];
    assert_int_equal(a->max_connections, 2);
    assert_int_equal(a->auth, CFG_AUTH_AUTO);
    assert_true(a->nfolders >= 4);
    assert_string_equal(a->folders[0].glob, "*");
    assert_false(a->folders[0].exclude);
    static const char *const views[] = {"[Gmail]/All Mail", "[Gmail]/Important", "[Gmail]/Starred"};
    for (size_t i = 0; i < ARRAY_SIZE(views); i++) {
        assert_string_equal(a->folders[1 + i].glob, views[i]);
        assert_true(a->folders[1 + i].exclude);
    }
    assert_true(cfg_folder_selected(a, "INBOX"));
    assert_true(cfg_folder_selected(a, "[Gmail]/Sent Mail"));
    assert_false(cfg_folder_selected(a, "[Gmail]/All Mail"));
    assert_false(cfg_folder_selected(a, "[Gmail]/Starred"));
    assert_null(cfg->warnings);
    /* `mailsync check` shows the preset's values as the effective ones. */
    char *out = print_to_string(cfg);
    assert_non_null(strstr(out, "    provider: gmail  # Gmail\n    host: imap.gmail.com\n"));
    assert_non_null(strstr(out, "    folders: [\"*\", \"![Gmail]/All Mail\", "
                                "\"![Gmail]/Important\", \"![Gmail]/Starred\""));
    free(out);
    cfg_free(cfg);

    /* Listed folders and an explicit max_connections win. */
    cfg = load_account_ok("    provider: gmail\n    user: me@gmail.com\n"
                          "    folders: [\"*\"]\n    max_connections: 5\n");
    a = &cfg->accounts[0];
    assert_int_equal(a->nfolders, 1);
    assert_true(cfg_folder_selected(a, "[Gmail]/All Mail"));
    assert_int_equal(a->max_connections, 5);
    cfg_free(cfg);

    /* Microsoft accepts only OAuth2: xoauth2 unless auth is set. */
    cfg = load_account_ok("    provider: microsoft365\n    user: me@corp.example\n");
    assert_int_equal(cfg->accounts[0].auth, CFG_AUTH_XOAUTH2);
    cfg_free(cfg);
    cfg = load_account_ok("    provider: outlook\n    user: me@outlook.com\n    auth: plain\n");
    assert_int_equal(cfg->accounts[0].auth, CFG_AUTH_PLAIN);
    cfg_free(cfg);

    /* Proton Mail Bridge: STARTTLS on 1143 on this machine; another TLS
     * mode takes that mode's standard port unless port is set. */
    cfg = load_account_ok("    provider: proton-bridge\n    user: me@proton.me\n");
    a = &cfg->accounts[0];
    assert_string_equal(a->host, "127.0.0.1");
    assert_int_equal(a->port, 1143);
    assert_int_equal(a->tls, CFG_TLS_STARTTLS);
    assert_false(cfg_folder_selected(a, "All Mail"));
    cfg_free(cfg);
    cfg = load_account_ok("    provider: proton-bridge\n    user: me@proton.me\n"
                          "    tls: implicit\n    port: 1993\n");
    assert_int_equal(cfg->accounts[0].port, 1993);
    assert_int_equal(cfg->accounts[0].tls, CFG_TLS_IMPLICIT);
    cfg_free(cfg);

    /* The login form: a bare name where the full address is expected is
     * worth a warning (not an error: some accept both). */
    cfg = load_account_ok("    provider: zoho\n    user: me\n");
    assert_non_null(cfg->warnings);
    assert_string_equal(cfg->warnings,
                        "config.yaml:4:11: warning: account 'a': Zoho Mail (US data centre) "
                        "expects the full address as the user name (like me@example.com), not "
                        "'me'");
    cfg_free(cfg);
    /* iCloud wants the name part: no warning. */
    cfg = load_account_ok("    provider: icloud\n    user: emilyparker\n");
    assert_null(cfg->warnings);
    cfg_free(cfg);
}

static void test_path_expansion(void **state)
{
    setenv("MS_TEST_MAIL", "/data/mail", 1);
    struct cfg *cfg = load_ok("state_dir: ~/st//x/\n"
                              "accounts:\n"
                              "  a:\n    host: h\n    user: u\n    password: p\n"
                              "    maildir: $MS_TEST_MAIL/a\n"
                              "  b:\n    host: h\n    user: u\n    password: p\n"
                              "    maildir: ${MS_TEST_MAIL}/./b/../c\n"
                              "  c:\n    host: h\n    user: u\n    password: p\n"
                              "    maildir: ~/\n");
    char *want = xasprintf("%s/st/x", home);
    assert_string_equal(cfg->state_dir, want);
    free(want);
    assert_string_equal(cfg->accounts[0].maildir, "/data/mail/a");
    assert_string_equal(cfg->accounts[1].maildir, "/data/mail/c");
    assert_string_equal(cfg->accounts[2].maildir, home);
    cfg_free(cfg);
    unsetenv("MS_TEST_MAIL");

    expect_err("accounts:\n  a:\n    host: h\n    user: u\n    password: p\n"
               "    maildir: $MS_NOT_SET/a\n",
               "config.yaml:6:14: account 'a': key 'maildir' cannot be expanded: environment "
               "variable $MS_NOT_SET is not set");
    expect_err("state_dir: state\naccounts:\n  a:\n    host: h\n    user: u\n    password: p\n"
               "    maildir: Mail\n",
               "config.yaml:1:12: key 'state_dir' must be an absolute path, starting with '/', "
               "'~/' or $VAR (got 'state')\n"
               "config.yaml:7:14: account 'a': key 'maildir' must be an absolute path, starting "
               "with '/', '~/' or $VAR (got 'Mail')");
}

/* Loads an account whose password_command is the YAML text cmd. */
static struct cfg *load_command(const char *cmd)
{
    char *yaml = xasprintf("accounts:\n  a:\n    host: h\n    user: u\n"
                           "    password_command: %s\n    maildir: /m\n",
                           cmd);
    struct cfg *cfg = load_ok(yaml);
    free(yaml);
    return cfg;
}

static void expect_argv(const char *cmd, const char *const *want)
{
    struct cfg *cfg = load_command(cmd);
    char **argv = cfg->accounts[0].password_command;
    assert_non_null(argv);
    size_t i = 0;
    for (; want[i] != NULL; i++) {
        assert_non_null(argv[i]);
        assert_string_equal(argv[i], want[i]);
    }
    assert_null(argv[i]);
    cfg_free(cfg);
}

static void test_password_command(void **state)
{
    expect_argv("pass show mail/work", (const char *const[]){"pass", "show", "mail/work", NULL});
    expect_argv("'  pass   show  '", (const char *const[]){"pass", "show", NULL});
    expect_argv(
        "\"security find-generic-password -w -s 'my mail'\"",
        (const char *const[]){"security", "find-generic-password", "-w", "-s", "my mail", NULL});
    /* YAML single quotes, so the shell-like quoting arrives untouched. */
    expect_argv("'cat \"a b\" c\\ d ''e f'' \"\" x\"y\"z \"q\\\"\\\\\\$\"'",
                (const char *const[]){"cat", "a b", "c d", "e f", "", "xyz", "q\"\\$", NULL});
    expect_argv("'printf \"a\\nb\" ''|'' \\|'",
                (const char *const[]){"printf", "a\\nb", "|", "|", NULL});

    /* "~/" at a word start is $HOME; elsewhere it is literal. */
    struct cfg *cfg = load_command("gpg -d ~/.pw.gpg x~y '~/q'");
    char *pw = xasprintf("%s/.pw.gpg", home);
    char **argv = cfg->accounts[0].password_command;
    assert_string_equal(argv[2], pw);
    assert_string_equal(argv[3], "x~y");
    assert_string_equal(argv[4], "~/q");
    assert_null(argv[5]);
    free(pw);
    cfg_free(cfg);

    /* The list form is taken literally. */
    expect_argv("[sh, -c, \"pass show x | head -n1\", \"\"]",
                (const char *const[]){"sh", "-c", "pass show x | head -n1", "", NULL});
    expect_argv("\n      - pass\n      - show\n      - \"~/x\"\n",
                (const char *const[]){"pass", "show", "~/x", NULL});

    static const struct {
        const char *cmd;
        const char *err;
    } bad[] = {
        {"\"pass 'x\"", "config.yaml:5:23: account 'a': key 'password_command' has an "
                        "unterminated single quote"},
        {"'pass \"x'", "config.yaml:5:23: account 'a': key 'password_command' has an "
                       "unterminated double quote"},
        {"'pass x\\'", "config.yaml:5:23: account 'a': key 'password_command' ends with a "
                       "backslash"},
        {"pass show x | head -1",
         "config.yaml:5:23: account 'a': key 'password_command' contains an unquoted '|', but "
         "the command runs without a shell: quote it, or write a list such as [\"sh\", \"-c\", "
         "\"...\"]"},
        {"pass show $USER",
         "config.yaml:5:23: account 'a': key 'password_command' contains an unquoted '$', but "
         "the command runs without a shell: quote it, or write a list such as [\"sh\", \"-c\", "
         "\"...\"]"},
        {"'pass \"$USER\"'",
         "config.yaml:5:23: account 'a': key 'password_command' contains '$' inside double "
         "quotes, but the command runs without a shell: use single quotes or a backslash"},
        {"\"  \"", "config.yaml:5:23: account 'a': key 'password_command' must not be empty"},
        {"[]", "config.yaml:5:23: account 'a': key 'password_command' must not be an empty list"},
        {"[pass, {a: b}]", "config.yaml:5:23: account 'a': key 'password_command' must be a list "
                           "of strings naming a program and its arguments (item 2 is a "
                           "mapping)"},
        {"[\"\", x]", "config.yaml:5:23: account 'a': key 'password_command' must be a list of "
                      "strings naming a program and its arguments (item 1 is not a usable "
                      "string)"},
        {"{a: b}", "config.yaml:5:23: account 'a': key 'password_command' must be a string or a "
                   "list of strings naming a program and its arguments (got a mapping)"},
        {"", "config.yaml:5:5: account 'a': key 'password_command' must be a string or a list "
             "of strings naming a program and its arguments (got an empty value)"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *yaml = xasprintf("accounts:\n  a:\n    host: h\n    user: u\n"
                               "    password_command: %s\n    maildir: /m\n",
                               bad[i].cmd);
        expect_err(yaml, bad[i].err);
        free(yaml);
    }
}

/* ---- Invalid configurations ---- */

static void test_unknown_keys(void **state)
{
    expect_err("acounts:\n  a: {}\n",
               "config.yaml:1:1: unknown key 'acounts' at top level (did you mean 'accounts'?)\n"
               "config.yaml:1:1: no accounts defined: add an 'accounts:' mapping with at least "
               "one account");
    expect_err(MINIMAL "    pasword_command: pass x\n",
               "config.yaml:7:5: unknown key 'pasword_command' in account 'work' (did you mean "
               "'password_command'?)");
    expect_err(MINIMAL "    hots: x\n",
               "config.yaml:7:5: unknown key 'hots' in account 'work' (did you mean 'host'?)");
    expect_err(MINIMAL_POP "    pop:\n      keep_on_sever: true\n",
               "config.yaml:9:7: unknown key 'keep_on_sever' under 'pop' in account 'p' (did "
               "you mean 'keep_on_server'?)");
    expect_err("colour: blue\n" MINIMAL,
               "config.yaml:1:1: unknown key 'colour' at top level (known keys: state_dir, "
               "accounts)");
    expect_err(MINIMAL_POP "    pop:\n      frobnicate: 1\n",
               "config.yaml:9:7: unknown key 'frobnicate' under 'pop' in account 'p' (known keys: "
               "keep_on_server, delete_after_days, since, delete_when_deleted_locally)");
    expect_err(
        MINIMAL "    frobnicate: 1\n",
        "config.yaml:7:5: unknown key 'frobnicate' in account 'work' (known keys: "
        "protocol, provider, region, host, port, tls, ca_file, tls_fingerprint, allow_plaintext, "
        "user, password, password_command, auth, maildir, layout, folders, "
        "subscribed_only, max_connections, on_local_delete, trash, delete_folders, "
        "max_delete_ratio, max_size, max_age_days, compress, timeout, poll_interval, local_delay, "
        "idle_restart, "
        "on_new_mail, idle, pop)");
    /* Keys at the wrong level say where they belong. */
    expect_err(MINIMAL_POP "    since: 2020-01-01\n    pop:\n      timeout: 30\n",
               "config.yaml:8:5: unknown key 'since' in account 'p' (it belongs under 'pop:')\n"
               "config.yaml:10:7: unknown key 'timeout' under 'pop' in account 'p' (it belongs "
               "directly in the account, not under 'pop:')");
    expect_err("work:\n  host: h\n" MINIMAL,
               "config.yaml:1:1: unknown key 'work' at top level (accounts are defined under "
               "'accounts:')");
    expect_err(MINIMAL "    <<: {port: 1}\n",
               "config.yaml:7:5: unknown key '<<' in account 'work' (YAML merge keys are not "
               "supported: write the keys out)");
}

static void test_wrong_enum(void **state)
{
    expect_err(MINIMAL "    tls: ssl\n",
               "config.yaml:7:10: account 'work': key 'tls' must be one of implicit, starttls, "
               "none (got 'ssl')");
    expect_err(MINIMAL "    protocol: smtp\n",
               "config.yaml:7:15: account 'work': key 'protocol' must be one of imap, pop3 (got "
               "'smtp')");
    expect_err(MINIMAL "    auth: cram-md5\n",
               "config.yaml:7:11: account 'work': key 'auth' must be one of auto, plain, login, "
               "xoauth2, oauthbearer, apop (got 'cram-md5')");
    expect_err(MINIMAL "    layout: mh\n",
               "config.yaml:7:13: account 'work': key 'layout' must be one of verbatim, "
               "maildir++ (got 'mh')");
    expect_err(MINIMAL "    on_local_delete: archive\n",
               "config.yaml:7:22: account 'work': key 'on_local_delete' must be one of expunge, "
               "trash, flag (got 'archive')");
    expect_err(MINIMAL "    auth: apop\n",
               "config.yaml:7:11: account 'work': key 'auth' is 'apop', which applies only to "
               "POP3 accounts");
}

static void test_wrong_type(void **state)
{
    expect_err(MINIMAL "    tls: {mode: none}\n",
               "config.yaml:7:10: account 'work': key 'tls' must be one of implicit, starttls, "
               "none (got a mapping)");
    expect_err("accounts:\n  a:\n    host: [a, b]\n    user: u\n    password: {x: 1}\n"
               "    maildir: /m\n",
               "config.yaml:3:11: account 'a': key 'host' must be a string (got a list)\n"
               "config.yaml:5:15: account 'a': key 'password' must be a string (got a "
               "mapping)");
    expect_err(MINIMAL "    compress: maybe\n",
               "config.yaml:7:15: account 'work': key 'compress' must be auto or a boolean: true, "
               "false, yes, no, on or off (got 'maybe')");
    expect_err(MINIMAL "    subscribed_only: 1\n",
               "config.yaml:7:22: account 'work': key 'subscribed_only' must be a boolean: true, "
               "false, yes, no, on or off (got '1')");
    expect_err(MINIMAL "    max_connections: two\n",
               "config.yaml:7:22: account 'work': key 'max_connections' must be an integer from "
               "1 to 16 (got 'two')");
    expect_err(MINIMAL "    timeout: 1.5\n",
               "config.yaml:7:14: account 'work': key 'timeout' must be an integer from 5 to "
               "3600 (got '1.5')");
    expect_err(MINIMAL "    max_age_days: 0x10\n",
               "config.yaml:7:19: account 'work': key 'max_age_days' must be an integer >= 0 "
               "(got '0x10')");
    expect_err(MINIMAL "    user:\n",
               "config.yaml:7:5: duplicate key 'user' in account 'work' (first at line 4)");
    expect_err("accounts:\n  a:\n    host: h\n    user:\n    password: p\n    maildir: /m\n",
               "config.yaml:4:5: account 'a': key 'user' must be a string (got an empty value)");
    expect_err("accounts:\n  a:\n    host: ''\n    user: u\n    password: p\n    maildir: /m\n",
               "config.yaml:3:11: account 'a': key 'host' must not be empty");
    expect_err("accounts:\n  a:\n    host: imaps://x\n    user: u\n    password: p\n"
               "    maildir: /m\n",
               "config.yaml:3:11: account 'a': key 'host' must be a host name or address, not a "
               "URL or path (got 'imaps://x')");
    expect_err("accounts: [a, b]\n",
               "config.yaml:1:11: key 'accounts' must be a mapping of account names to their "
               "settings (got a list)");
    expect_err("accounts:\n  a: imap.example.com\n",
               "config.yaml:2:6: account 'a' must be a mapping of settings (got "
               "'imap.example.com')");
    expect_err("- a\n- b\n",
               "config.yaml:1:1: the top level must be a mapping with an 'accounts' key (got a "
               "list)");
    expect_err(MINIMAL_POP "    pop: true\n",
               "config.yaml:8:10: account 'p': key 'pop' must be a mapping of POP3 settings (got "
               "'true')");
    expect_err(MINIMAL_POP "    pop:\n      keep_on_server: sometimes\n",
               "config.yaml:9:23: account 'p': key 'pop.keep_on_server' must be a boolean: true, "
               "false, yes, no, on or off (got 'sometimes')");
    expect_err(MINIMAL "    folders: {a: b}\n",
               "config.yaml:7:14: account 'work': key 'folders' must be a folder pattern or a "
               "list of them (got a mapping)");
    expect_err(MINIMAL "    folders: []\n",
               "config.yaml:7:14: account 'work': key 'folders' must not be an empty list: no "
               "folder would be synced");
    expect_err(MINIMAL "    folders: [\"*\", \"\", [x]]\n",
               "config.yaml:7:14: account 'work': key 'folders' has an empty pattern '' (item "
               "2); use '*' for every folder\n"
               "config.yaml:7:14: account 'work': key 'folders' must be a list of folder "
               "patterns (item 3 is a list)");
    expect_err(MINIMAL "    folders: \"!\"\n",
               "config.yaml:7:14: account 'work': key 'folders' has an empty pattern '!' (item "
               "1); use '*' for every folder");
}

static void test_ranges(void **state)
{
    static const struct {
        const char *line;
        const char *err;
    } bad[] = {
        {"    port: 0\n", "config.yaml:7:11: account 'work': key 'port' must be an integer from 1 "
                          "to 65535 (got '0')"},
        {"    port: 65536\n", "config.yaml:7:11: account 'work': key 'port' must be an integer "
                              "from 1 to 65535 (got '65536')"},
        {"    port: -1\n", "config.yaml:7:11: account 'work': key 'port' must be an integer from "
                           "1 to 65535 (got '-1')"},
        {"    port: 99999999999999999999999\n",
         "config.yaml:7:11: account 'work': key 'port' must be an integer from 1 to 65535 (got "
         "'99999999999999999999999')"},
        {"    max_connections: 17\n", "config.yaml:7:22: account 'work': key 'max_connections' "
                                      "must be an integer from 1 to 16 (got '17')"},
        {"    timeout: 4\n", "config.yaml:7:14: account 'work': key 'timeout' must be an integer "
                             "from 5 to 3600 (got '4')"},
        {"    timeout: 3601\n", "config.yaml:7:14: account 'work': key 'timeout' must be an "
                                "integer from 5 to 3600 (got '3601')"},
        {"    max_delete_ratio: 1.5\n",
         "config.yaml:7:23: account 'work': key 'max_delete_ratio' must be a number from 0 to 1 "
         "or a percentage such as '50%' (got '1.5')"},
        {"    max_delete_ratio: 101%\n",
         "config.yaml:7:23: account 'work': key 'max_delete_ratio' must be a number from 0 to 1 "
         "or a percentage such as '50%' (got '101%')"},
        {"    max_delete_ratio: -0.1\n",
         "config.yaml:7:23: account 'work': key 'max_delete_ratio' must be a number from 0 to 1 "
         "or a percentage such as '50%' (got '-0.1')"},
        {"    max_size: 10T\n", "config.yaml:7:15: account 'work': key 'max_size' must be a size "
                                "in bytes, optionally with a suffix k, M or G (1024-based) such "
                                "as '25M' (got '10T')"},
        {"    max_size: 99999999999999G\n",
         "config.yaml:7:15: account 'work': key 'max_size' must be a size in bytes, optionally "
         "with a suffix k, M or G (1024-based) such as '25M' (got '99999999999999G')"},
        {"    max_size: M\n", "config.yaml:7:15: account 'work': key 'max_size' must be a size in "
                              "bytes, optionally with a suffix k, M or G (1024-based) such as "
                              "'25M' (got 'M')"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *yaml = xasprintf(MINIMAL "%s", bad[i].line);
        expect_err(yaml, bad[i].err);
        free(yaml);
    }

    static const struct {
        const char *line;
        double ratio;
        uint64_t size;
    } good[] = {
        {"    max_delete_ratio: 50%\n", 0.5, 0}, {"    max_delete_ratio: 0\n", 0, 0},
        {"    max_delete_ratio: 1\n", 1, 0},     {"    max_delete_ratio: .75\n", 0.75, 0},
        {"    max_size: 1000\n", 0.5, 1000},     {"    max_size: 2K\n", 0.5, 2048},
        {"    max_size: 3m\n", 0.5, 3 << 20},    {"    max_size: 1G\n", 0.5, 1 << 30},
    };
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        char *yaml = xasprintf(MINIMAL "%s", good[i].line);
        struct cfg *cfg = load_ok(yaml);
        assert_true(cfg->accounts[0].max_delete_ratio == good[i].ratio);
        assert_int_equal(cfg->accounts[0].max_size, good[i].size);
        cfg_free(cfg);
        free(yaml);
    }
    struct cfg *cfg = load_ok(MINIMAL "    port: 1\n    max_connections: 16\n    timeout: 5\n");
    assert_int_equal(cfg->accounts[0].port, 1);
    assert_int_equal(cfg->accounts[0].max_connections, 16);
    assert_int_equal(cfg->accounts[0].timeout_seconds, 5);
    cfg_free(cfg);
}

static void test_dates(void **state)
{
    static const char *const bad[] = {"2023-02-30", "2023-13-01", "2023-2-3",
                                      "2023-00-10", "1969-12-31", "20230101",
                                      "2023-04-31", "2100-02-29", "next week"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *yaml = xasprintf(MINIMAL_POP "    pop:\n      since: %s\n", bad[i]);
        char *want = xasprintf("config.yaml:9:14: account 'p': key 'pop.since' must be a "
                               "calendar date as YYYY-MM-DD, from 1970 on (got '%s')",
                               bad[i]);
        expect_err(yaml, want);
        free(want);
        free(yaml);
    }
    static const struct {
        const char *date;
        long long t;
    } good[] = {
        {"1970-01-01", 0},          {"2000-02-29", 951782400},  {"2024-02-29", 1709164800},
        {"2013-09-10", 1378771200}, {"2038-01-20", 2147558400},
    };
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        char *yaml = xasprintf(MINIMAL_POP "    pop:\n      since: '%s'\n", good[i].date);
        struct cfg *cfg = load_ok(yaml);
        assert_true(cfg->accounts[0].pop.has_since);
        assert_int_equal((long long)cfg->accounts[0].pop.since, good[i].t);
        cfg_free(cfg);
        free(yaml);
    }
    expect_err(MINIMAL_POP "    pop:\n      delete_after_days: 0\n",
               "config.yaml:9:26: account 'p': key 'pop.delete_after_days' must be an integer "
               ">= 1 (got '0')");
}

static void test_fingerprints(void **state)
{
    static const char want[] =
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    static const char *const good[] = {
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF",
        "SHA256:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:"
        "67:89:AB:CD:EF",
        "sha256 Fingerprint=01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:"
        "EF:01:23:45:67:89:AB:CD:EF",
    };
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        char *yaml = xasprintf(MINIMAL "    tls_fingerprint: \"%s\"\n", good[i]);
        struct cfg *cfg = load_ok(yaml);
        assert_string_equal(cfg->accounts[0].tls_fingerprint, want);
        cfg_free(cfg);
        free(yaml);
    }
    expect_err(MINIMAL "    tls_fingerprint: \"AB:CD:EF\"\n",
               "config.yaml:7:22: account 'work': key 'tls_fingerprint' must be a SHA-256 "
               "certificate fingerprint: 64 hex digits, colons optional, optionally after "
               "'sha256:' (got 6 hex digits)");
    expect_err(MINIMAL "    tls_fingerprint: sha1:0123456789abcdef0123456789abcdef01234567\n",
               "config.yaml:7:22: account 'work': key 'tls_fingerprint' must be a SHA-256 "
               "certificate fingerprint: 64 hex digits, colons optional, optionally after "
               "'sha256:' (got 'sha1:0123456789abcdef0123456789abcdef01234567')");
    expect_err(MINIMAL "    tls_fingerprint: "
                       "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg\n",
               "config.yaml:7:22: account 'work': key 'tls_fingerprint' must be a SHA-256 "
               "certificate fingerprint: 64 hex digits, colons optional, optionally after "
               "'sha256:' (got '0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab...')");
}

static void test_plaintext(void **state)
{
    static const char tls_err[] =
        "config.yaml:7:10: account 'work': key 'tls' is 'none', so the password would be sent "
        "unencrypted; use implicit or starttls, or set 'allow_plaintext: true' to allow it (only "
        "on a trusted network such as localhost)";
    expect_err(MINIMAL "    tls: none\n", tls_err);
    expect_err(MINIMAL "    tls: none\n    allow_plaintext: false\n", tls_err);
    expect_err("accounts:\n  work:\n    host: h\n    user: u\n    password_command: pass x\n"
               "    maildir: /m\n    tls: none\n",
               tls_err);
    struct cfg *cfg = load_ok(MINIMAL "    tls: none\n    allow_plaintext: true\n");
    assert_int_equal(cfg->accounts[0].tls, CFG_TLS_NONE);
    assert_int_equal(cfg->accounts[0].port, 143);
    assert_true(cfg->accounts[0].allow_plaintext);
    cfg_free(cfg);
    /* Settings that only mean something with TLS get a warning. */
    cfg = load_ok(MINIMAL "    tls: none\n    allow_plaintext: true\n"
                          "    tls_fingerprint: " /* 64 zeros */
                          "\"0000000000000000000000000000000000000000000000000000000000000000\"\n");
    assert_string_equal(cfg->warnings, "config.yaml:9:5: warning: account 'work': key "
                                       "'tls_fingerprint' has no effect with tls: none");
    cfg_free(cfg);
}

static void test_protocol_specific_keys(void **state)
{
    expect_err(MINIMAL "    pop:\n      keep_on_server: true\n",
               "config.yaml:7:5: account 'work': key 'pop' applies only to POP3 accounts (set "
               "'protocol: pop3' or remove it)");
    static const char *const imap_only[] = {
        "folders: [INBOX]",     "subscribed_only: true", "on_local_delete: trash", "trash: Trash",
        "delete_folders: true", "max_delete_ratio: 0.1", "max_connections: 4",     "compress: true",
    };
    for (size_t i = 0; i < ARRAY_SIZE(imap_only); i++) {
        char *yaml = xasprintf(MINIMAL_POP "    %s\n", imap_only[i]);
        char *key = xstrndup(imap_only[i], strcspn(imap_only[i], ":"));
        char *want = xasprintf("config.yaml:8:5: account 'p': key '%s' applies only to IMAP "
                               "accounts (this one has protocol: pop3)",
                               key);
        expect_err(yaml, want);
        free(want);
        free(key);
        free(yaml);
    }
    expect_err(MINIMAL_POP "    max_age_days: 30\n",
               "config.yaml:8:5: account 'p': key 'max_age_days' applies only to IMAP accounts "
               "(this one has protocol: pop3); for POP3 use 'pop: since: YYYY-MM-DD'");
    /* max_size applies to both. */
    struct cfg *cfg = load_ok(MINIMAL_POP "    max_size: 1M\n");
    assert_int_equal(cfg->accounts[0].max_size, 1 << 20);
    cfg_free(cfg);
}

static void test_duplicates(void **state)
{
    expect_err(MINIMAL "  work:\n    host: h2\n",
               "config.yaml:7:3: duplicate account 'work' (first defined at line 2)");
    expect_err(MINIMAL "    host: other\n",
               "config.yaml:7:5: duplicate key 'host' in account 'work' (first at line 3)");
    expect_err("state_dir: /a\nstate_dir: /b\n" MINIMAL,
               "config.yaml:2:1: duplicate key 'state_dir' at top level (first at line 1)");
    expect_err(MINIMAL_POP "    pop:\n      since: 2020-01-01\n      since: 2021-01-01\n",
               "config.yaml:10:7: duplicate key 'since' under 'pop' in account 'p' (first at "
               "line 9)");
}

static void test_missing_required(void **state)
{
    expect_err("accounts:\n  a:\n    user: u\n    password: p\n    maildir: /m\n",
               "config.yaml:2:3: account 'a': missing required key 'host' (or a 'provider' that "
               "sets it)");
    expect_err("accounts:\n  a:\n    host: h\n    password: p\n    maildir: /m\n",
               "config.yaml:2:3: account 'a': missing required key 'user'");
    expect_err("accounts:\n  a:\n    host: h\n    user: u\n    password: p\n",
               "config.yaml:2:3: account 'a': missing required key 'maildir'");
    expect_err("accounts:\n  a:\n    host: h\n    user: u\n    maildir: /m\n",
               "config.yaml:2:3: account 'a': missing 'password' or 'password_command' (one is "
               "required)");
    expect_err("accounts:\n  a: {}\n",
               "config.yaml:2:3: account 'a': missing required key 'host' (or a 'provider' that "
               "sets it)\n"
               "config.yaml:2:3: account 'a': missing required key 'user'\n"
               "config.yaml:2:3: account 'a': missing 'password' or 'password_command' (one is "
               "required)\n"
               "config.yaml:2:3: account 'a': missing required key 'maildir'");
    expect_err(MINIMAL "    password_command: pass x\n",
               "config.yaml:7:5: account 'work': 'password' and 'password_command' are both set; "
               "keep only one");
}

static void test_account_names(void **state)
{
    static const char *const bad[] = {
        "\"bad name\"",
        "-x",
        ".hidden",
        "a/b",
        "\"\"",
        "\"a\\nb\"",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    static const char *const shown[] = {
        "bad name",
        "-x",
        ".hidden",
        "a/b",
        "",
        "a?b",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa..."};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *yaml = xasprintf("accounts:\n  %s:\n    host: h\n    user: u\n    password: p\n"
                               "    maildir: /m\n",
                               bad[i]);
        char *want = xasprintf("config.yaml:2:3: account name '%s' is not valid: use up to 64 "
                               "letters, digits, '.', '_' and '-', starting with a letter or digit",
                               shown[i]);
        expect_err(yaml, want);
        free(want);
        free(yaml);
    }
    struct cfg *cfg = load_ok("accounts:\n  0.Work_2-b:\n    host: h\n    user: u\n"
                              "    password: p\n    maildir: /m\n");
    assert_string_equal(cfg->accounts[0].name, "0.Work_2-b");
    cfg_free(cfg);
}

static void test_syntax_errors(void **state)
{
    expect_err("accounts:\n  a:\n    host: [x\n",
               "config.yaml:4:1: YAML syntax error: did not find expected ',' or ']' (while "
               "parsing a flow sequence that starts at line 3, column 11)");
    expect_err("accounts:\n  a:\n    host: h\n   user: u\n",
               "config.yaml:4:4: YAML syntax error: did not find expected key (while parsing a "
               "block mapping that starts at line 2, column 3)");
    expect_err("accounts:\n  a:\n    host: h: x\n",
               "config.yaml:3:12: YAML syntax error: mapping values are not allowed in this "
               "context");
    expect_err("accounts:\n\thost: x\n",
               "config.yaml:2:1: YAML syntax error: found character that cannot start any token "
               "(while scanning for the next token that starts at line 2, column 1) (tabs are "
               "not allowed for indentation: use spaces)");
    expect_err("accounts:\n  a: *nope\n",
               "config.yaml:2:6: YAML syntax error: found undefined alias (a value that starts "
               "with '*' must be quoted)");
    /* An unquoted password that starts with '*' is an alias to YAML: the
     * message must not repeat it. */
    expect_err("accounts:\n  a:\n    password: *Sup3rS3cret\n",
               "config.yaml:3:15: YAML syntax error: found undefined alias (a value that starts "
               "with '*' must be quoted)");
    expect_err(MINIMAL "---\nmore: 1\n",
               "config.yaml:8:1: a second YAML document starts here; the file must hold only "
               "one");
}

static void test_empty(void **state)
{
    static const char empty_err[] = "config.yaml:1:1: no accounts defined (the file is empty): "
                                    "add an 'accounts:' mapping with at least one account";
    expect_err("", empty_err);
    expect_err("# nothing here\n\n", empty_err);
    expect_err("accounts:\n", "config.yaml:1:1: no accounts defined: 'accounts' is empty");
    expect_err("state_dir: /s\naccounts: {}\n",
               "config.yaml:2:1: no accounts defined: 'accounts' is empty");
    expect_err("state_dir: /s\n",
               "config.yaml:1:1: no accounts defined: add an 'accounts:' mapping with at least "
               "one account");
}

static void test_multiple_errors(void **state)
{
    expect_err("accounts:\n"
               "  work:\n"
               "    host: imap.example.com\n"
               "    port: 0\n"
               "    tls: ssl\n"
               "    user: me\n"
               "    pasword: x\n"
               "    maildir: /m\n"
               "    pop:\n"
               "      since: 2023-02-30\n",
               "config.yaml:2:3: account 'work': missing 'password' or 'password_command' (one "
               "is required)\n"
               "config.yaml:4:11: account 'work': key 'port' must be an integer from 1 to 65535 "
               "(got '0')\n"
               "config.yaml:5:10: account 'work': key 'tls' must be one of implicit, starttls, "
               "none (got 'ssl')\n"
               "config.yaml:7:5: unknown key 'pasword' in account 'work' (did you mean "
               "'password'?)\n"
               "config.yaml:9:5: account 'work': key 'pop' applies only to POP3 accounts (set "
               "'protocol: pop3' or remove it)");
}

static void test_folder_patterns(void **state)
{
    struct cfg *cfg = load_ok(MINIMAL "    folders: [\"*\", \"!Junk\", \"!Archive/%\", "
                                      "\"Archive/2024\", \"!inbox/spam\", \"!?ail\"]\n");
    const struct cfg_account *a = &cfg->accounts[0];
    static const struct {
        const char *folder;
        bool selected;
    } cases[] = {
        {"INBOX", true},
        {"inbox", true},
        {"Sent", true},
        {"Junk", false},
        {"junk", true}, /* only INBOX is case-insensitive */
        {"Junk/Sub", true},
        {"Archive", true},
        {"Archive/2023", false},
        {"Archive/2024", true},
        {"Archive/2023/Q1", true}, /* '%' stops at '/' */
        {"INBOX/Spam", true},
        {"Inbox/spam", false},
        {"INBOX/spam", false},
        {"Mail", false},
        {"Sail", false},
        {"Bail/x", true},
        {"\xc3\x9c"
         "ail",
         false}, /* '?' is one UTF-8 character */
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        if (cfg_folder_selected(a, cases[i].folder) != cases[i].selected) {
            print_error("folder '%s'\n", cases[i].folder);
        }
        assert_int_equal(cfg_folder_selected(a, cases[i].folder), cases[i].selected);
    }
    cfg_free(cfg);

    /* Nothing matched: not selected. A single string is one pattern. */
    cfg = load_ok(MINIMAL "    folders: InBoX\n");
    a = &cfg->accounts[0];
    assert_int_equal(a->nfolders, 1);
    assert_string_equal(a->folders[0].glob, "INBOX");
    assert_true(cfg_folder_selected(a, "INBOX"));
    assert_true(cfg_folder_selected(a, "iNbOx"));
    assert_false(cfg_folder_selected(a, "INBOX/x"));
    assert_false(cfg_folder_selected(a, "Sent"));
    cfg_free(cfg);

    cfg = load_ok(MINIMAL "    folders: [\"%\", \"*/%/x\", \"a*b*c\"]\n");
    a = &cfg->accounts[0];
    assert_true(cfg_folder_selected(a, "Top"));
    assert_false(cfg_folder_selected(a, "Top/Sub"));
    assert_true(cfg_folder_selected(a, "a/b/c/x"));
    assert_true(cfg_folder_selected(a, "a/b/x"));
    assert_false(cfg_folder_selected(a, "a/x"));
    assert_true(cfg_folder_selected(a, "a/b/c"));
    assert_true(cfg_folder_selected(a, "abbc"));
    assert_false(cfg_folder_selected(a, "abbcd/x"));
    assert_true(cfg_folder_selected(a, "ab/bc"));
    assert_true(cfg_folder_selected(a, ""));
    cfg_free(cfg);

    /* The default selects everything, as does an account built by hand. */
    cfg = load_ok(MINIMAL);
    assert_true(cfg_folder_selected(&cfg->accounts[0], "Any/Thing"));
    cfg_free(cfg);
    struct cfg_account zero = {0};
    assert_true(cfg_folder_selected(&zero, "INBOX"));
}

static void test_print(void **state)
{
    struct cfg *cfg = load_ok("accounts:\n"
                              "  work:\n"
                              "    provider: zoho\n"
                              "    user: me@example.com\n"
                              "    password: \"Hunter2-s3cret!\"\n"
                              "    maildir: /m/work\n"
                              "    folders: [\"*\", '!Junk \"x\"']\n"
                              "  cmd:\n"
                              "    host: mail.example.org\n"
                              "    user: \"yes\"\n"
                              "    password_command: \"pass show 'mail/my key'\"\n"
                              "    maildir: /m/cmd\n"
                              "  p:\n"
                              "    protocol: pop3\n"
                              "    provider: gmail\n"
                              "    user: u\n"
                              "    password: Hunter2-s3cret!\n"
                              "    maildir: /m/p\n"
                              "    max_size: 10M\n"
                              "    pop:\n"
                              "      since: 2020-02-29\n"
                              "      delete_after_days: 7\n");
    char *out = print_to_string(cfg);
    assert_null(strstr(out, "Hunter2"));
    assert_null(strstr(out, "s3cret"));
    char *want = xasprintf("# config.yaml, with defaults and presets applied\n"
                           "state_dir: %s/.local/state/mailsync\n"
                           "accounts:\n"
                           "  work:\n"
                           "    protocol: imap\n"
                           "    provider: zoho  # Zoho Mail (US data centre)\n"
                           "    host: imap.zoho.com\n"
                           "    port: 993\n"
                           "    tls: implicit\n"
                           "    ca_file: ~  # the system's trusted certificates\n"
                           "    tls_fingerprint: ~  # not pinned\n"
                           "    allow_plaintext: false\n"
                           "    user: me@example.com\n"
                           "    password: <redacted>\n"
                           "    password_command: ~\n"
                           "    auth: auto\n"
                           "    maildir: /m/work\n"
                           "    layout: verbatim\n"
                           "    folders: [\"*\", \"!Junk \\\"x\\\"\"]\n"
                           "    subscribed_only: false\n"
                           "    max_connections: 3\n"
                           "    on_local_delete: expunge\n"
                           "    trash: ~  # the server's \\Trash folder (SPECIAL-USE)\n"
                           "    delete_folders: false\n"
                           "    max_delete_ratio: 0.5\n"
                           "    max_size: 0  # no limit\n"
                           "    max_age_days: 0  # no limit\n"
                           "    compress: auto  # not towards loopback or private addresses\n"
                           "    timeout: 60\n"
                           "    poll_interval: 300\n"
                           "    local_delay: 1\n"
                           "    idle_restart: 600\n"
                           "    idle: [INBOX]  # when the server has no NOTIFY\n"
                           "    on_new_mail: ~\n"
                           "  cmd:\n"
                           "    protocol: imap\n"
                           "    provider: ~  # none\n"
                           "    host: mail.example.org\n"
                           "    port: 993\n"
                           "    tls: implicit\n"
                           "    ca_file: ~  # the system's trusted certificates\n"
                           "    tls_fingerprint: ~  # not pinned\n"
                           "    allow_plaintext: false\n"
                           "    user: \"yes\"\n"
                           "    password: ~\n"
                           "    password_command: [\"pass\", \"show\", \"mail/my key\"]\n"
                           "    auth: auto\n"
                           "    maildir: /m/cmd\n"
                           "    layout: verbatim\n"
                           "    folders: [\"*\"]\n"
                           "    subscribed_only: false\n"
                           "    max_connections: 3\n"
                           "    on_local_delete: expunge\n"
                           "    trash: ~  # the server's \\Trash folder (SPECIAL-USE)\n"
                           "    delete_folders: false\n"
                           "    max_delete_ratio: 0.5\n"
                           "    max_size: 0  # no limit\n"
                           "    max_age_days: 0  # no limit\n"
                           "    compress: auto  # not towards loopback or private addresses\n"
                           "    timeout: 60\n"
                           "    poll_interval: 300\n"
                           "    local_delay: 1\n"
                           "    idle_restart: 600\n"
                           "    idle: [INBOX]  # when the server has no NOTIFY\n"
                           "    on_new_mail: ~\n"
                           "  p:\n"
                           "    protocol: pop3\n"
                           "    provider: gmail  # Gmail\n"
                           "    host: pop.gmail.com\n"
                           "    port: 995\n"
                           "    tls: implicit\n"
                           "    ca_file: ~  # the system's trusted certificates\n"
                           "    tls_fingerprint: ~  # not pinned\n"
                           "    allow_plaintext: false\n"
                           "    user: u\n"
                           "    password: <redacted>\n"
                           "    password_command: ~\n"
                           "    auth: auto\n"
                           "    maildir: /m/p\n"
                           "    layout: verbatim\n"
                           "    max_size: 10485760\n"
                           "    max_age_days: 0  # no limit\n"
                           "    timeout: 60\n"
                           "    poll_interval: 900\n"
                           "    on_new_mail: ~\n"
                           "    pop:\n"
                           "      keep_on_server: true\n"
                           "      delete_after_days: 7\n"
                           "      since: 2020-02-29\n"
                           "      delete_when_deleted_locally: false\n",
                           home);
    assert_string_equal(out, want);
    free(want);
    free(out);
    cfg_free(cfg);
}

/* ---- Files ---- */

static void test_files(void **state)
{
    struct cfg *cfg = NULL;
    char *err = NULL;

    char *missing = path_join(home, "missing.yaml");
    assert_int_equal(cfg_load(missing, &cfg, &err), -1);
    assert_null(cfg);
    char *want = xasprintf("%s: cannot read: No such file or directory", missing);
    assert_string_equal(err, want);
    free(want);
    free(err);
    free(missing);

    assert_int_equal(cfg_load(home, &cfg, &err), -1);
    want = xasprintf("%s: cannot read: Is a directory", home);
    assert_string_equal(err, want);
    free(want);
    free(err);

    /* A password in a file others can read is a warning, not an error. */
    char *path = write_file("open.yaml", MINIMAL, 0644);
    assert_int_equal(cfg_load(path, &cfg, &err), 0);
    assert_null(err);
    assert_string_equal(cfg->path, path);
    assert_string_equal(cfg->accounts[0].password, "secret");
    want = xasprintf("%s:5:5: warning: the file holds a password but can be read by other users "
                     "(mode 0644): run 'chmod 600 %s' or use password_command",
                     path, path);
    assert_string_equal(cfg->warnings, want);
    free(want);
    cfg_free(cfg);
    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(cfg_load(path, &cfg, &err), 0);
    want = xasprintf("%s:5:5: warning: the file holds a password but can be read by its group "
                     "(mode 0640): run 'chmod 600 %s' or use password_command",
                     path, path);
    assert_string_equal(cfg->warnings, want);
    free(want);
    cfg_free(cfg);
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(cfg_load(path, &cfg, &err), 0);
    assert_null(cfg->warnings);
    cfg_free(cfg);
    unlink(path);
    free(path);

    /* password_command in a readable file is fine. */
    path = write_file("cmd.yaml",
                      "accounts:\n  a:\n    host: h\n    user: u\n    password_command: pass x\n"
                      "    maildir: /m\n",
                      0644);
    assert_int_equal(cfg_load(path, &cfg, &err), 0);
    assert_null(cfg->warnings);
    cfg_free(cfg);
    unlink(path);
    free(path);

    /* Errors from a file carry its path. */
    path = write_file("bad.yaml", MINIMAL "    tls: ssl\n", 0600);
    assert_int_equal(cfg_load(path, &cfg, &err), -1);
    assert_null(cfg);
    want = xasprintf("%s:7:10: account 'work': key 'tls' must be one of implicit, starttls, none "
                     "(got 'ssl')",
                     path);
    assert_string_equal(err, want);
    free(want);
    free(err);
    unlink(path);
    free(path);

    /* Not UTF-8: libyaml's reader error, placed by line and column. */
    path = write_file("latin1.yaml", "accounts:\n  a:\n    user: J\xf6rg\n", 0600);
    assert_int_equal(cfg_load(path, &cfg, &err), -1);
    want = xasprintf("%s:3:12: cannot read YAML: invalid trailing UTF-8 octet (byte 0x72); the "
                     "file must be UTF-8 text",
                     path);
    assert_string_equal(err, want);
    free(want);
    free(err);
    unlink(path);
    free(path);

    /* Empty file. */
    path = write_file("empty.yaml", "", 0600);
    assert_int_equal(cfg_load(path, &cfg, &err), -1);
    want = xasprintf("%s:1:1: no accounts defined (the file is empty): add an 'accounts:' "
                     "mapping with at least one account",
                     path);
    assert_string_equal(err, want);
    free(want);
    free(err);
    unlink(path);
    free(path);
}

static void test_ca_file(void **state)
{
    char *ca = write_file("ca2.pem", "x", 0600);
    char *yaml = xasprintf(MINIMAL "    ca_file: %s\n", ca);
    struct cfg *cfg = load_ok(yaml);
    assert_string_equal(cfg->accounts[0].ca_file, ca);
    cfg_free(cfg);
    free(yaml);
    cfg = load_ok(MINIMAL "    ca_file: ~/ca2.pem\n");
    assert_string_equal(cfg->accounts[0].ca_file, ca);
    cfg_free(cfg);
    unlink(ca);

    char *want = xasprintf("config.yaml:7:14: account 'work': key 'ca_file' names a file that "
                           "cannot be read: %s: No such file or directory",
                           ca);
    expect_err(MINIMAL "    ca_file: ~/ca2.pem\n", want);
    free(want);
    want = xasprintf("config.yaml:7:14: account 'work': key 'ca_file' must name a regular file of "
                     "PEM certificates (%s is not one)",
                     home);
    expect_err(MINIMAL "    ca_file: ~/\n", want);
    free(want);
    free(ca);
}

static void test_same_maildir(void **state)
{
    char *want = xasprintf("config.yaml:11:14: account 'b': maildir '%s/Mail' is also the maildir "
                           "of account 'a' (line 6); each account needs its own",
                           home);
    expect_err("accounts:\n"
               "  a:\n    host: h\n    user: u\n    password: p\n    maildir: ~/Mail\n"
               "  b:\n    host: h\n    user: u\n    password: p\n    maildir: $HOME//Mail/\n",
               want);
    free(want);
    expect_err("accounts:\n"
               "  a:\n    host: h\n    user: u\n    password: p\n    maildir: /m/a/inner\n"
               "  b:\n    host: h\n    user: u\n    password: p\n    maildir: /m/a\n"
               "  c:\n    host: h\n    user: u\n    password: p\n    maildir: /m/ab\n",
               "config.yaml:11:14: account 'b': maildir '/m/a' and the maildir '/m/a/inner' of "
               "account 'a' (line 6) are inside one another; each account needs its own");
}

static void test_aliases(void **state)
{
    /* Anchors and aliases work: settings shared by reference. */
    struct cfg *cfg = load_ok("accounts:\n"
                              "  a:\n    host: &h imap.example.com\n    user: u\n"
                              "    password: p\n    folders: &f [INBOX, Sent]\n"
                              "    maildir: /m/a\n"
                              "  b:\n    host: *h\n    user: u\n    password: p\n"
                              "    folders: *f\n    maildir: /m/b\n");
    assert_string_equal(cfg->accounts[1].host, "imap.example.com");
    assert_int_equal(cfg->accounts[1].nfolders, 2);
    assert_string_equal(cfg->accounts[1].folders[1].glob, "Sent");
    cfg_free(cfg);
}

static void test_default_path(void **state)
{
    char *p = cfg_default_path();
    char *want = xasprintf("%s/.config/mailsync/config.yaml", home);
    assert_string_equal(p, want);
    free(want);
    free(p);
    setenv("XDG_CONFIG_HOME", "/xdg/conf", 1);
    p = cfg_default_path();
    assert_string_equal(p, "/xdg/conf/mailsync/config.yaml");
    free(p);
    unsetenv("XDG_CONFIG_HOME");
    unsetenv("HOME");
    assert_null(cfg_default_path());
    /* Without $HOME the state directory must be given. */
    expect_err(MINIMAL, "config.yaml:1:1: cannot choose a state directory: neither "
                        "$XDG_STATE_HOME nor $HOME is set; set 'state_dir'");
    setenv("HOME", home, 1);

    assert_string_equal(cfg_protocol_name(CFG_PROTO_POP3), "pop3");
    assert_string_equal(cfg_tls_name(CFG_TLS_STARTTLS), "starttls");
    assert_string_equal(cfg_layout_name(CFG_LAYOUT_MAILDIRPP), "maildir++");
    assert_string_equal(cfg_auth_name(CFG_AUTH_OAUTHBEARER), "oauthbearer");
    assert_string_equal(cfg_local_delete_name(CFG_LOCAL_DELETE_FLAG), "flag");
}

/* idle: folder names (not patterns) among the account's folders, at most
 * CFG_IDLE_MAX, IMAP only; printed back as a list. */
static void test_idle_folders(void **state)
{
    (void)state;
    struct cfg *cfg = load_ok(MINIMAL "    folders: [INBOX, \"Lists/*\", Archive]\n"
                                      "    idle: [inbox, Lists/dev, \"Archive\"]\n");
    const struct cfg_account *a = &cfg->accounts[0];
    assert_non_null(a->idle);
    assert_string_equal(a->idle[0], "INBOX");
    assert_string_equal(a->idle[1], "Lists/dev");
    assert_string_equal(a->idle[2], "Archive");
    assert_null(a->idle[3]);
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    cfg_print_account(fp, a);
    fclose(fp);
    assert_non_null(strstr(buf, "    idle: [\"INBOX\", \"Lists/dev\", \"Archive\"]\n"));
    free(buf);
    cfg_free(cfg);

    cfg = load_ok(MINIMAL "    idle: Archive\n");
    assert_string_equal(cfg->accounts[0].idle[0], "Archive");
    assert_null(cfg->accounts[0].idle[1]);
    cfg_free(cfg);

    expect_err(MINIMAL "    idle: \"Lists/*\"\n",
               "config.yaml:7:11: account 'work': key 'idle' item 1 ('Lists/*') is a pattern: "
               "idle names folders");
    expect_err(MINIMAL "    folders: [INBOX]\n    idle: [INBOX, Archive]\n",
               "config.yaml:8:11: account 'work': key 'idle' item 2 ('Archive') is not one of "
               "the folders this account syncs (see folders)");
    expect_err(MINIMAL "    idle: [INBOX, inbox]\n",
               "config.yaml:7:11: account 'work': key 'idle' item 2 ('inbox') is named twice");
    expect_err(MINIMAL "    idle: []\n",
               "config.yaml:7:11: account 'work': key 'idle' must not be an empty list (leave it "
               "out for INBOX)");
    expect_err(MINIMAL "    idle: [a, b, c, d, e, f, g, h, i]\n",
               "config.yaml:7:11: account 'work': key 'idle' names 9 folders; at most 8 (each "
               "takes a connection of its own: servers allow few per user)");
    expect_err(MINIMAL_POP "    idle: INBOX\n",
               "config.yaml:8:5: account 'p': key 'idle' applies only to IMAP accounts (this one "
               "has protocol: pop3)");
}

static void test_example_config(void **state)
{
    /* The shipped example must stay valid; it names ~ paths and programs
     * that need not exist at load time. */
    struct cfg *cfg = NULL;
    char *err = NULL;
    int rc = cfg_load(TEST_SOURCE_DIR "/contrib/config.example.yaml", &cfg, &err);
    if (rc != 0) {
        print_error("%s\n", err);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(cfg->naccounts, 3);
    const struct cfg_account *zoho = cfg_find_account(cfg, "work");
    assert_non_null(zoho);
    assert_int_equal(zoho->protocol, CFG_PROTO_IMAP);
    assert_string_equal(zoho->host, "imap.zoho.com");
    const struct cfg_account *pop = cfg_find_account(cfg, "oldisp");
    assert_non_null(pop);
    assert_int_equal(pop->protocol, CFG_PROTO_POP3);
    const struct cfg_account *home_acct = cfg_find_account(cfg, "home");
    assert_non_null(home_acct);
    assert_non_null(home_acct->password_command);
    assert_null(home_acct->password);
    cfg_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_round_trip),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_default_ports),
        cmocka_unit_test(test_provider_presets),
        cmocka_unit_test(test_provider_regions),
        cmocka_unit_test(test_provider_defaults),
        cmocka_unit_test(test_path_expansion),
        cmocka_unit_test(test_password_command),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_wrong_enum),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_fingerprints),
        cmocka_unit_test(test_plaintext),
        cmocka_unit_test(test_protocol_specific_keys),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_account_names),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_same_maildir),
        cmocka_unit_test(test_multiple_errors),
        cmocka_unit_test(test_folder_patterns),
        cmocka_unit_test(test_print),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_ca_file),
        cmocka_unit_test(test_aliases),
        cmocka_unit_test(test_default_path),
        cmocka_unit_test(test_example_config),
        cmocka_unit_test(test_idle_folders),
    };
    return cmocka_run_group_tests(tests, setup_home, teardown_home);
}
