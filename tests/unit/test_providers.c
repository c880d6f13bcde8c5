/* LINK: ms_config ms_core */
/* Tests for daemon/providers.c against contrib/providers.yaml: every preset
 * resolves to the servers, ports, TLS modes and login form its provider
 * documents; names, aliases and regions find the right entry; the program's
 * embedded copy is the file in the tree; and the loader rejects a broken
 * file with the line and the reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "daemon/providers.h"

#define IMPLICIT CFG_TLS_IMPLICIT
#define STARTTLS CFG_TLS_STARTTLS

/* What each provider's help pages say (the URLs are in the data file). */
static const struct expect {
    const char *name;
    const char *imap_host;
    uint16_t imap_port;
    enum cfg_tls imap_tls;
    const char *pop_host; /* NULL: no POP3 */
    uint16_t pop_port;
    enum cfg_tls pop_tls;
    enum provider_login login;
} expected[] = {
    {"zoho", "imap.zoho.com", 993, IMPLICIT, "pop.zoho.com", 995, IMPLICIT, PROVIDER_LOGIN_ADDRESS},
    {"zoho.eu", "imap.zoho.eu", 993, IMPLICIT, "pop.zoho.eu", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"zoho.in", "imap.zoho.in", 993, IMPLICIT, "pop.zoho.in", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"zoho.com.au", "imap.zoho.com.au", 993, IMPLICIT, "pop.zoho.com.au", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"zoho.jp", "imap.zoho.jp", 993, IMPLICIT, "pop.zoho.jp", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"zohocloud.ca", "imap.zohocloud.ca", 993, IMPLICIT, "pop.zohocloud.ca", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"zoho.sa", "imap.zoho.sa", 993, IMPLICIT, "pop.zoho.sa", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"zoho.com.cn", "imap.zoho.com.cn", 993, IMPLICIT, "pop.zoho.com.cn", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"gmail", "imap.gmail.com", 993, IMPLICIT, "pop.gmail.com", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"outlook", "outlook.office365.com", 993, IMPLICIT, "outlook.office365.com", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"microsoft365", "outlook.office365.com", 993, IMPLICIT, "outlook.office365.com", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"fastmail", "imap.fastmail.com", 993, IMPLICIT, "pop.fastmail.com", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"icloud", "imap.mail.me.com", 993, IMPLICIT, NULL, 0, 0, PROVIDER_LOGIN_LOCAL_PART},
    {"yahoo", "imap.mail.yahoo.com", 993, IMPLICIT, "pop.mail.yahoo.com", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"aol", "imap.aol.com", 993, IMPLICIT, "pop.aol.com", 995, IMPLICIT, PROVIDER_LOGIN_ADDRESS},
    {"gmx", "imap.gmx.net", 993, IMPLICIT, "pop.gmx.net", 995, IMPLICIT, PROVIDER_LOGIN_ADDRESS},
    {"gmx.com", "imap.gmx.com", 993, IMPLICIT, "pop.gmx.com", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"web.de", "imap.web.de", 993, IMPLICIT, "pop3.web.de", 995, IMPLICIT, PROVIDER_LOGIN_ADDRESS},
    {"mailbox.org", "imap.mailbox.org", 993, IMPLICIT, "pop3.mailbox.org", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"posteo", "posteo.de", 993, IMPLICIT, "posteo.de", 995, IMPLICIT, PROVIDER_LOGIN_ADDRESS},
    {"proton-bridge", "127.0.0.1", 1143, STARTTLS, NULL, 0, 0, PROVIDER_LOGIN_APP},
    {"yandex", "imap.yandex.com", 993, IMPLICIT, "pop.yandex.com", 995, IMPLICIT,
     PROVIDER_LOGIN_ADDRESS},
    {"qq", "imap.qq.com", 993, IMPLICIT, "pop.qq.com", 995, IMPLICIT, PROVIDER_LOGIN_ADDRESS},
    {"163", "imap.163.com", 993, IMPLICIT, "pop.163.com", 995, IMPLICIT, PROVIDER_LOGIN_ADDRESS},
    {"126", "imap.126.com", 993, IMPLICIT, "pop.126.com", 995, IMPLICIT, PROVIDER_LOGIN_ADDRESS},
};

static void test_documented_values(void **state)
{
    for (size_t i = 0; i < ARRAY_SIZE(expected); i++) {
        const struct expect *e = &expected[i];
        const struct provider *p = provider_find(e->name, NULL);
        if (p == NULL) {
            print_error("provider '%s' is missing\n", e->name);
        }
        assert_non_null(p);
        assert_string_equal(p->name, e->name);
        assert_string_equal(p->imap.host, e->imap_host);
        assert_int_equal(p->imap.port, e->imap_port);
        assert_int_equal(p->imap.tls, e->imap_tls);
        assert_ptr_equal(provider_server(p, CFG_PROTO_IMAP), &p->imap);
        if (e->pop_host == NULL) {
            assert_null(p->pop3.host);
        } else {
            assert_non_null(p->pop3.host);
            assert_string_equal(p->pop3.host, e->pop_host);
            assert_int_equal(p->pop3.port, e->pop_port);
            assert_int_equal(p->pop3.tls, e->pop_tls);
        }
        assert_int_equal(p->login, e->login);
    }
    /* Nothing in the file goes untested here. */
    assert_int_equal(provider_count(), ARRAY_SIZE(expected));
}

/* Limits, exclusions, login methods and folders where a provider states
 * them. */
static void test_documented_limits(void **state)
{
    const struct provider *g = provider_find("gmail", NULL);
    assert_int_equal(g->max_connections, 2);
    assert_int_equal(g->connection_limit, 15);
    assert_int_equal(g->login_interval, 600);
    assert_string_equal(g->exclude[0], "[Gmail]/All Mail");
    assert_string_equal(g->exclude[1], "[Gmail]/Important");
    assert_string_equal(g->exclude[2], "[Gmail]/Starred");
    assert_string_equal(g->folders.sent, "[Gmail]/Sent Mail");
    assert_true(provider_supports_auth(g, CFG_AUTH_XOAUTH2));
    assert_true(provider_supports_auth(g, CFG_AUTH_PLAIN));
    assert_false(provider_supports_auth(g, CFG_AUTH_APOP));
    assert_true(g->app_password);

    const struct provider *m = provider_find("microsoft365", NULL);
    assert_int_equal(m->auth_default, CFG_AUTH_XOAUTH2);
    assert_false(provider_supports_auth(m, CFG_AUTH_PLAIN));
    assert_true(provider_supports_auth(m, CFG_AUTH_AUTO));
    assert_non_null(strstr(m->hints.password, "oama"));
    assert_non_null(strstr(m->hints.password, "mutt_oauth2.py"));

    const struct provider *z = provider_find("zoho", NULL);
    assert_string_equal(z->imap.org_host, "imappro.zoho.com");
    assert_string_equal(z->pop3.org_host, "poppro.zoho.com");
    assert_non_null(strstr(z->hints.enable_imap, "Mail Forwarding and POP/IMAP"));
    assert_non_null(strstr(z->hints.enable_pop3, "Mail Forwarding and POP/IMAP"));
    assert_non_null(strstr(z->hints.password, "application-specific password"));
    assert_true(z->app_password);
    assert_int_equal(z->max_connections, 0);
    assert_null(z->exclude[0]);

    const struct provider *pb = provider_find("proton-bridge", NULL);
    assert_non_null(pb->hints.certificate);
    assert_non_null(pb->hints.connect);
}

static void test_regions_and_aliases(void **state)
{
    static const struct {
        const char *name, *region, *want;
        enum provider_lookup_result result;
    } cases[] = {
        {"zoho", NULL, "zoho", PROVIDER_FOUND},
        {"zoho", "", "zoho", PROVIDER_FOUND},
        {"Zoho", "eu", "zoho.eu", PROVIDER_FOUND},
        {"zoho", "EU", "zoho.eu", PROVIDER_FOUND},
        {"zoho", "in", "zoho.in", PROVIDER_FOUND},
        {"zoho", "au", "zoho.com.au", PROVIDER_FOUND},
        {"zoho", "com.au", "zoho.com.au", PROVIDER_FOUND},
        {"zoho", "jp", "zoho.jp", PROVIDER_FOUND},
        {"zoho", "ca", "zohocloud.ca", PROVIDER_FOUND},
        {"zoho", "sa", "zoho.sa", PROVIDER_FOUND},
        {"zoho", "cn", "zoho.com.cn", PROVIDER_FOUND},
        {"zoho", "com.cn", "zoho.com.cn", PROVIDER_FOUND},
        {"zoho", "us", "zoho", PROVIDER_FOUND},
        {"zoho.eu", NULL, "zoho.eu", PROVIDER_FOUND},
        {"zoho.eu", "eu", "zoho.eu", PROVIDER_FOUND},
        {"zoho.ca", NULL, "zohocloud.ca", PROVIDER_FOUND},
        {"zoho.eu", "in", NULL, PROVIDER_REGION_CONFLICT},
        {"zoho", "mars", NULL, PROVIDER_UNKNOWN_REGION},
        {"gmail", "eu", NULL, PROVIDER_NO_REGIONS},
        {"googlemail", NULL, "gmail", PROVIDER_FOUND},
        {"office365", NULL, "microsoft365", PROVIDER_FOUND},
        {"hotmail", NULL, "outlook", PROVIDER_FOUND},
        {"protonmail", NULL, "proton-bridge", PROVIDER_FOUND},
        {"126.com", NULL, "126", PROVIDER_FOUND},
        {"GMX.DE", NULL, "gmx", PROVIDER_FOUND},
        {"nosuch", NULL, NULL, PROVIDER_UNKNOWN},
        {"nosuch", "eu", NULL, PROVIDER_UNKNOWN},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const struct provider *p = (const struct provider *)1;
        enum provider_lookup_result r = provider_lookup(cases[i].name, cases[i].region, &p);
        assert_int_equal(r, cases[i].result);
        if (cases[i].want == NULL) {
            assert_null(p);
            assert_null(provider_find(cases[i].name, cases[i].region));
        } else {
            assert_non_null(p);
            assert_string_equal(p->name, cases[i].want);
            assert_ptr_equal(provider_find(cases[i].name, cases[i].region), p);
        }
    }
    /* Every Zoho data centre shares the family, and one is the default. */
    size_t zoho = 0, defaults = 0;
    for (size_t i = 0; i < provider_count(); i++) {
        const struct provider *p = provider_at(i);
        if (strcmp(p->family, "zoho") == 0) {
            zoho++;
            defaults += p->region_default;
            assert_non_null(p->regions[0]);
        }
    }
    assert_int_equal(zoho, 8);
    assert_int_equal(defaults, 1);
    assert_null(provider_at(provider_count()));
}

/* What every entry needs to be useful to `init` and the doctor. */
static void test_every_entry_complete(void **state)
{
    for (size_t i = 0; i < provider_count(); i++) {
        const struct provider *p = provider_at(i);
        assert_non_null(p->title);
        assert_non_null(p->docs[0]);
        for (size_t d = 0; p->docs[d] != NULL; d++) {
            assert_int_equal(strncmp(p->docs[d], "https://", 8), 0);
        }
        assert_non_null(p->imap.host);
        assert_true(p->auth_methods != 0);
        /* A provider that needs a special password says which. */
        if (p->app_password) {
            assert_non_null(p->hints.password);
        }
        /* An explicit-TLS preset on 993/995 would be a typo. */
        assert_false(p->imap.tls == CFG_TLS_STARTTLS && p->imap.port == 993);
        assert_false(p->imap.tls == CFG_TLS_NONE);
        assert_false(p->pop3.host != NULL && p->pop3.tls == CFG_TLS_NONE);
    }
}

static void test_expand(void **state)
{
    const struct provider *z = provider_find("zoho", "eu");
    char *s = provider_expand(z, CFG_PROTO_IMAP, "{user} at {host}; {web}; set host: {org_host}",
                              "me@example.com", "imap.zoho.eu");
    assert_string_equal(s, "me@example.com at imap.zoho.eu; https://mail.zoho.eu; set host: "
                           "imappro.zoho.eu");
    free(s);
    s = provider_expand(z, CFG_PROTO_POP3, "{org_host} {nothing}", NULL, NULL);
    assert_string_equal(s, "poppro.zoho.eu {nothing}");
    free(s);
    s = provider_expand(provider_find("gmail", NULL), CFG_PROTO_IMAP, "{org_host}{user}", NULL,
                        NULL);
    assert_string_equal(s, "??");
    free(s);
    assert_string_equal(provider_login_name(PROVIDER_LOGIN_LOCAL_PART), "local_part");
}

/* The program carries the file of the tree it was built from. */
static void test_embedded_copy_is_the_file(void **state)
{
    char *path = path_join(TEST_SOURCE_DIR, "contrib/providers.yaml");
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    struct sbuf sb = {0};
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), fp)) > 0) {
        sbuf_add(&sb, buf, n);
    }
    fclose(fp);
    size_t len = 0;
    const char *data = provider_data(&len);
    assert_int_equal(len, sb.len);
    assert_memory_equal(data, sb.buf, len);
    assert_int_equal(data[len], '\0');
    sbuf_free(&sb);
    free(path);
}

/* A broken file is refused with its line, column and reason. */
static void expect_parse_error(const char *yaml, const char *want)
{
    struct provider_table *t = (struct provider_table *)1;
    char *err = NULL;
    assert_int_equal(provider_table_parse(yaml, strlen(yaml), &t, &err), -1);
    assert_null(t);
    assert_non_null(err);
    if (strcmp(err, want) != 0) {
        print_error("got: %s\nwant: %s\n", err, want);
    }
    assert_string_equal(err, want);
    free(err);
}

#define ENTRY                                                                                      \
    "  - name: x\n"                                                                                \
    "    title: X\n"                                                                               \
    "    docs: [https://x.example/help]\n"                                                         \
    "    imap: {host: imap.x.example, port: 993, tls: implicit}\n"                                 \
    "    auth: [plain]\n"

static void test_parse_errors(void **state)
{
    struct provider_table *t = NULL;
    char *err = NULL;
    const char *ok = "providers:\n" ENTRY "  - name: y\n    inherit: x\n    title: Y\n"
                     "    imap: {host: imap.y.example}\n";
    assert_int_equal(provider_table_parse(ok, strlen(ok), &t, &err), 0);
    assert_null(err);
    assert_int_equal(provider_table_count(t), 2);
    const struct provider *y = provider_table_at(t, 1);
    assert_string_equal(y->imap.host, "imap.y.example");
    assert_int_equal(y->imap.port, 993); /* inherited, key by key */
    assert_string_equal(y->docs[0], "https://x.example/help");
    assert_string_equal(y->family, "y"); /* a name is never inherited */
    assert_null(provider_table_at(t, 2));
    provider_table_free(t);

    expect_parse_error("nothing: here\n",
                       "1:1: the file must be a mapping with a 'providers' list");
    expect_parse_error("providers:\n  - name: x\n   bad indent\n",
                       "3:4: YAML error: did not find expected '-' indicator");
    expect_parse_error("providers:\n" ENTRY "    colour: blue\n",
                       "7:5: provider 'x': unknown key 'colour'");
    expect_parse_error("providers:\n" ENTRY "    imap: {host: h, port: 0}\n",
                       "7:27: port must be from 1 to 65535");
    expect_parse_error("providers:\n" ENTRY "    login: email\n",
                       "7:12: login must be one of address, local_part, app");
    expect_parse_error("providers:\n" ENTRY "    auth: [plain, kerberos]\n",
                       "7:11: auth lists 'kerberos': use plain, login, xoauth2, oauthbearer");
    expect_parse_error("providers:\n  - name: y\n    inherit: x\n",
                       "3:14: provider 'y' inherits from 'x', which is not defined above");
    expect_parse_error("providers:\n" ENTRY ENTRY,
                       "7:5: provider 'x': the name 'x' is taken by 'x'");
    expect_parse_error("providers:\n  - name: x\n    title: X\n    imap: {host: h, port: 1}\n"
                       "    auth: [plain]\n",
                       "2:5: provider 'x' needs a title and the provider's help pages (docs)");
    expect_parse_error("providers:\n" ENTRY "    hints: {password: \"use {pasword}\"}\n",
                       "2:5: provider 'x': unknown template field in '{pasword}'");
    expect_parse_error("providers:\n" ENTRY "    hints: {pasword: x}\n",
                       "7:13: provider 'x': unknown hint 'pasword'");
    expect_parse_error("providers:\n" ENTRY "    folders: {spam: Spam}\n",
                       "7:15: provider 'x': unknown folder role 'spam'");
    expect_parse_error("providers:\n" ENTRY "    auth_default: xoauth2\n",
                       "2:5: provider 'x': auth_default is not among its auth methods");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_documented_values),
        cmocka_unit_test(test_documented_limits),
        cmocka_unit_test(test_regions_and_aliases),
        cmocka_unit_test(test_every_entry_complete),
        cmocka_unit_test(test_expand),
        cmocka_unit_test(test_embedded_copy_is_the_file),
        cmocka_unit_test(test_parse_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
