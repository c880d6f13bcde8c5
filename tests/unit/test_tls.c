/* LINK: ms_sync ms_core */
/* The TLS engine (sync/tls.h) driven entirely in memory: a client and a
 * server tls_conn pump ciphertext to each other, with certificates made
 * fresh for the run (testcerts.h). Every refusal is checked for its exact
 * text, since that text is what a user sees in the log. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sync/tls.h"
#include "testcerts.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

static struct testcerts tc;

static int setup_group(void **state)
{
    (void)state;
    return testcerts_create(&tc);
}

static int teardown_group(void **state)
{
    (void)state;
    testcerts_destroy(&tc);
    return 0;
}

/* The SNI name the server saw last, recorded by a servername callback. */
static char seen_sni[256];
static bool sni_called;

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    (void)arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    sni_called = true;
    snprintf(seen_sni, sizeof(seen_sni), "%s", name != NULL ? name : "");
    return SSL_TLSEXT_ERR_OK;
}

static struct tls_ctx *server_ctx(const char *cert, const char *key)
{
    struct tls_ctx *ctx = NULL;
    char *err = NULL;
    int r = tls_ctx_new_server(cert, key, &ctx, &err);
    if (r < 0) {
        fail_msg("server context: %s", err);
    }
    SSL_CTX_set_tlsext_servername_callback(tls_ctx_openssl(ctx), on_servername);
    return ctx;
}

static struct tls_ctx *client_ctx(const char *ca_file)
{
    struct tls_ctx *ctx = NULL;
    char *err = NULL;
    int r = tls_ctx_new_client(ca_file, &ctx, &err);
    if (r < 0) {
        fail_msg("client context: %s", err);
    }
    return ctx;
}

static void move_bytes(struct tls_conn *from, struct tls_conn *to)
{
    char buf[4096];
    size_t n;
    while ((n = tls_conn_take_out(from, buf, sizeof(buf))) > 0) {
        assert_int_equal(tls_conn_feed(to, buf, n), 0);
    }
}

/* Runs both handshakes to completion or failure. Returns the client's
 * result; *server_r gets the server's. */
static int handshake(struct tls_conn *cl, struct tls_conn *sv, int *server_r)
{
    int rc = 0, rs = 0;
    for (int i = 0; i < 20; i++) {
        if (rc == 0) {
            rc = tls_conn_handshake(cl);
        }
        move_bytes(cl, sv);
        if (rs == 0) {
            rs = tls_conn_handshake(sv);
        }
        move_bytes(sv, cl);
        if (rc != 0 && rs != 0) {
            break;
        }
        if (rc < 0 || rs < 0) {
            /* Let the alert reach the other side once more, then stop. */
            if (rc == 0) {
                rc = tls_conn_handshake(cl);
            }
            if (rs == 0) {
                rs = tls_conn_handshake(sv);
            }
            break;
        }
    }
    if (server_r != NULL) {
        *server_r = rs;
    }
    return rc;
}

struct pair {
    struct tls_ctx *cctx;
    struct tls_ctx *sctx;
    struct tls_conn *cl;
    struct tls_conn *sv;
};

static void pair_open(struct pair *p, const char *ca_file, const char *cert, const char *key,
                      const struct tls_conn_opts *copts)
{
    char *err = NULL;
    p->cctx = client_ctx(ca_file);
    p->sctx = server_ctx(cert, key);
    sni_called = false;
    seen_sni[0] = '\0';
    if (tls_conn_new(p->cctx, copts, &p->cl, &err) < 0) {
        fail_msg("client conn: %s", err);
    }
    if (tls_conn_new(p->sctx, NULL, &p->sv, &err) < 0) {
        fail_msg("server conn: %s", err);
    }
}

static void pair_close(struct pair *p)
{
    tls_conn_free(p->cl);
    tls_conn_free(p->sv);
    tls_ctx_free(p->cctx);
    tls_ctx_free(p->sctx);
}

/* Writes len bytes on one side and reads them back on the other. */
static void transfer(struct tls_conn *from, struct tls_conn *to, const char *data, size_t len)
{
    assert_int_equal(tls_conn_write(from, data, len), (ssize_t)len);
    move_bytes(from, to);
    char *got = malloc(len + 1);
    size_t have = 0;
    while (have < len) {
        ssize_t n = tls_conn_read(to, got + have, len - have);
        assert_true(n > 0);
        have += (size_t)n;
    }
    assert_memory_equal(got, data, len);
    assert_int_equal(tls_conn_read(to, got, len), 0); /* nothing more */
    move_bytes(to, from);
    free(got);
}

static void check_data_both_ways(struct pair *p)
{
    const char *hello = "a1 CAPABILITY\r\n";
    transfer(p->cl, p->sv, hello, strlen(hello));
    size_t big = 100000;
    char *buf = malloc(big);
    for (size_t i = 0; i < big; i++) {
        buf[i] = (char)(i % 251);
    }
    transfer(p->sv, p->cl, buf, big);
    transfer(p->cl, p->sv, buf, big);
    free(buf);
}

static void test_tls13_ok(void **state)
{
    (void)state;
    struct pair p = {0};
    struct tls_conn_opts o = {.host = "localhost"};
    pair_open(&p, tc.ca, tc.server_cert, tc.server_key, &o);
    int rs;
    assert_int_equal(handshake(p.cl, p.sv, &rs), 1);
    assert_int_equal(rs, 1);
    assert_true(tls_conn_established(p.cl));
    assert_string_equal(tls_conn_version(p.cl), "TLSv1.3");
    assert_non_null(tls_conn_cipher(p.cl));
    assert_string_equal(tls_conn_fingerprint(p.cl), tc.server_fp);
    assert_null(tls_conn_fingerprint(p.sv));
    assert_null(tls_conn_error(p.cl));
    assert_true(sni_called);
    assert_string_equal(seen_sni, "localhost");
    check_data_both_ways(&p);
    pair_close(&p);
}

static void test_tls12_ok(void **state)
{
    (void)state;
    struct pair p = {0};
    struct tls_conn_opts o = {.host = "localhost"};
    p.cctx = client_ctx(tc.ca);
    p.sctx = server_ctx(tc.server_cert, tc.server_key);
    assert_int_equal(SSL_CTX_set_max_proto_version(tls_ctx_openssl(p.sctx), TLS1_2_VERSION), 1);
    char *err = NULL;
    assert_int_equal(tls_conn_new(p.cctx, &o, &p.cl, &err), 0);
    assert_int_equal(tls_conn_new(p.sctx, NULL, &p.sv, &err), 0);
    assert_int_equal(handshake(p.cl, p.sv, NULL), 1);
    assert_string_equal(tls_conn_version(p.cl), "TLSv1.2");
    assert_string_equal(tls_conn_fingerprint(p.cl), tc.server_fp);
    check_data_both_ways(&p);
    pair_close(&p);
}

/* Runs a handshake expected to fail on the client and checks code and
 * text exactly. */
static void expect_failure(const char *cert, const char *key, const struct tls_conn_opts *o,
                           int code, const char *text)
{
    struct pair p = {0};
    pair_open(&p, tc.ca, cert, key, o);
    assert_int_equal(handshake(p.cl, p.sv, NULL), code);
    assert_false(tls_conn_established(p.cl));
    assert_non_null(tls_conn_error(p.cl));
    assert_string_equal(tls_conn_error(p.cl), text);
    assert_null(tls_conn_plaintext(p.cl)); /* a real TLS peer is never taken for text */
    /* Errors are sticky. */
    char buf[16];
    assert_int_equal(tls_conn_read(p.cl, buf, sizeof(buf)), code);
    assert_int_equal(tls_conn_write(p.cl, "x", 1), code);
    pair_close(&p);
}

static void test_wrong_host(void **state)
{
    (void)state;
    struct tls_conn_opts o = {.host = "localhost"};
    expect_failure(tc.wrong_cert, tc.wrong_key, &o, TLS_EVERIFY,
                   "certificate verification failed: hostname mismatch");
    /* The same certificate is fine for the name it was made for. */
    struct pair p = {0};
    struct tls_conn_opts ok = {.host = "wrong.example."};
    pair_open(&p, tc.ca, tc.wrong_cert, tc.wrong_key, &ok);
    assert_int_equal(handshake(p.cl, p.sv, NULL), 1);
    assert_string_equal(seen_sni, "wrong.example");
    pair_close(&p);
}

/* The system trust store is found through SSL_CERT_FILE / SSL_CERT_DIR as
 * OpenSSL documents: a CA named there (and not as ca_file) is trusted. */
static void test_system_trust_from_environment(void **state)
{
    (void)state;
    setenv("SSL_CERT_FILE", tc.ca, 1);
    struct pair p = {0};
    struct tls_conn_opts o = {.host = "localhost"};
    pair_open(&p, NULL, tc.server_cert, tc.server_key, &o);
    int rs;
    assert_int_equal(handshake(p.cl, p.sv, &rs), 1);
    assert_null(tls_conn_error(p.cl));
    pair_close(&p);
    unsetenv("SSL_CERT_FILE");

    /* Without it, the test CA is unknown to the system store. */
    p = (struct pair){0};
    pair_open(&p, NULL, tc.server_cert, tc.server_key, &o);
    assert_true(handshake(p.cl, p.sv, &rs) < 0);
    assert_string_equal(tls_conn_error(p.cl),
                        "certificate verification failed: unable to get local issuer certificate");
    pair_close(&p);
}

static void test_untrusted_ca(void **state)
{
    (void)state;
    struct tls_conn_opts o = {.host = "localhost"};
    expect_failure(tc.untrusted_cert, tc.untrusted_key, &o, TLS_EVERIFY,
                   "certificate verification failed: unable to get local issuer certificate");
    expect_failure(tc.selfsigned_cert, tc.selfsigned_key, &o, TLS_EVERIFY,
                   "certificate verification failed: self-signed certificate");
}

static void test_expired(void **state)
{
    (void)state;
    struct tls_conn_opts o = {.host = "localhost"};
    expect_failure(tc.expired_cert, tc.expired_key, &o, TLS_EVERIFY,
                   "certificate verification failed: certificate has expired");
}

static void test_pin_mismatch(void **state)
{
    (void)state;
    struct tls_conn_opts o = {.host = "localhost", .fingerprint = tc.other_fp};
    char text[300];
    snprintf(text, sizeof(text),
             "certificate fingerprint %s does not match the configured tls_fingerprint %s",
             tc.server_fp, tc.other_fp);
    expect_failure(tc.server_cert, tc.server_key, &o, TLS_EPIN, text);
}

static void test_pin_match(void **state)
{
    (void)state;
    /* Upper case with colon separators, as some tools print it. */
    char pin[200] = "SHA256:";
    for (size_t i = 7; tc.server_fp[i] != '\0'; i += 2) {
        char pair[4] = {(char)toupper((unsigned char)tc.server_fp[i]),
                        (char)toupper((unsigned char)tc.server_fp[i + 1]),
                        tc.server_fp[i + 2] != '\0' ? ':' : '\0', '\0'};
        strcat(pin, pair);
    }
    struct pair p = {0};
    struct tls_conn_opts o = {.host = "localhost", .fingerprint = pin};
    pair_open(&p, tc.ca, tc.server_cert, tc.server_key, &o);
    assert_int_equal(handshake(p.cl, p.sv, NULL), 1);
    assert_string_equal(tls_conn_fingerprint(p.cl), tc.server_fp);
    pair_close(&p);
}

static void test_pin_does_not_override_verification(void **state)
{
    (void)state;
    /* The expired certificate has the same key but its own DER, hence its
     * own fingerprint; learn it from a connection that skips verification. */
    struct pair p = {0};
    struct tls_conn_opts insecure = {.host = "localhost", .insecure_skip_verify = true};
    pair_open(&p, tc.ca, tc.expired_cert, tc.expired_key, &insecure);
    assert_int_equal(handshake(p.cl, p.sv, NULL), 1);
    char fp[TLS_FINGERPRINT_LEN];
    snprintf(fp, sizeof(fp), "%s", tls_conn_fingerprint(p.cl));
    pair_close(&p);

    struct tls_conn_opts o = {.host = "localhost", .fingerprint = fp};
    expect_failure(tc.expired_cert, tc.expired_key, &o, TLS_EVERIFY,
                   "certificate verification failed: certificate has expired");
}

static void test_pin_with_insecure(void **state)
{
    (void)state;
    /* With insecure_skip_verify the pin alone decides: a certificate for
     * another name passes when pinned... */
    struct pair p = {0};
    struct tls_conn_opts o = {
        .host = "localhost", .fingerprint = tc.other_fp, .insecure_skip_verify = true};
    pair_open(&p, tc.ca, tc.wrong_cert, tc.wrong_key, &o);
    assert_int_equal(handshake(p.cl, p.sv, NULL), 1);
    check_data_both_ways(&p);
    pair_close(&p);
    /* ...and fails when not. */
    char text[300];
    snprintf(text, sizeof(text),
             "certificate fingerprint %s does not match the configured tls_fingerprint %s",
             tc.server_fp, tc.other_fp);
    expect_failure(tc.server_cert, tc.server_key, &o, TLS_EPIN, text);
}

static void test_ip_literal(void **state)
{
    (void)state;
    struct pair p = {0};
    struct tls_conn_opts o = {.host = "127.0.0.1"};
    pair_open(&p, tc.ca, tc.server_cert, tc.server_key, &o);
    assert_int_equal(handshake(p.cl, p.sv, NULL), 1);
    /* No SNI for an address (RFC 6066 §3). */
    assert_string_equal(seen_sni, "");
    pair_close(&p);

    expect_failure(tc.wrong_cert, tc.wrong_key, &o, TLS_EVERIFY,
                   "certificate verification failed: IP address mismatch");
    struct tls_conn_opts v6 = {.host = "[::1]"};
    expect_failure(tc.server_cert, tc.server_key, &v6, TLS_EVERIFY,
                   "certificate verification failed: IP address mismatch");
}

static void test_tls11_server_refused(void **state)
{
    (void)state;
    struct tls_ctx *sctx = server_ctx(tc.server_cert, tc.server_key);
    SSL_CTX *s = tls_ctx_openssl(sctx);
    /* OpenSSL 3 allows TLS 1.1 only at security level 0. */
    SSL_CTX_set_security_level(s, 0);
    if (SSL_CTX_set_min_proto_version(s, TLS1_1_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(s, TLS1_1_VERSION) != 1) {
        tls_ctx_free(sctx);
        skip();
    }
    struct tls_ctx *cctx = client_ctx(tc.ca);
    struct tls_conn *cl = NULL, *sv = NULL;
    char *err = NULL;
    struct tls_conn_opts o = {.host = "localhost"};
    assert_int_equal(tls_conn_new(cctx, &o, &cl, &err), 0);
    assert_int_equal(tls_conn_new(sctx, NULL, &sv, &err), 0);
    int rs;
    assert_int_equal(handshake(cl, sv, &rs), TLS_ETLS);
    const char *text = tls_conn_error(cl);
    printf("client: %s\nserver: %s\n", text, tls_conn_error(sv));
    assert_true(strncmp(text, "TLS handshake failed: error:", 28) == 0);
    /* The server answers the TLS 1.2+ ClientHello with a protocol_version
     * alert; if this OpenSSL cannot even build a TLS 1.1 server it fails
     * with "no protocols available" on its side instead. */
    if (strstr(text, "protocol version") == NULL) {
        assert_non_null(strstr(tls_conn_error(sv), "no protocols available"));
        printf("skipping: this OpenSSL cannot build a TLS 1.1 server\n");
    }
    assert_int_not_equal(rs, 1);
    tls_conn_free(cl);
    tls_conn_free(sv);
    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
}

static struct tls_ctx *fed_ctx;

/* A client whose ClientHello went out and that then got these bytes. */
static struct tls_conn *client_fed(const struct tls_conn_opts *o, const char *bytes, size_t len)
{
    fed_ctx = client_ctx(tc.ca);
    struct tls_conn *cl = NULL;
    char *err = NULL;
    assert_int_equal(tls_conn_new(fed_ctx, o, &cl, &err), 0);
    assert_int_equal(tls_conn_handshake(cl), 0);
    assert_true(tls_conn_out_pending(cl) > 0); /* the ClientHello */
    char hello[4096];
    while (tls_conn_take_out(cl, hello, sizeof(hello)) > 0) {
    }
    assert_null(tls_conn_plaintext(cl)); /* nothing received yet */
    assert_int_equal(tls_conn_feed(cl, bytes, len), 0);
    return cl;
}

static void client_fed_free(struct tls_conn *cl)
{
    tls_conn_free(cl);
    tls_ctx_free(fed_ctx);
    fed_ctx = NULL;
}

static void test_close_notify_and_garbage(void **state)
{
    (void)state;
    struct pair p = {0};
    struct tls_conn_opts o = {.host = "localhost"};
    pair_open(&p, tc.ca, tc.server_cert, tc.server_key, &o);
    assert_int_equal(handshake(p.cl, p.sv, NULL), 1);
    assert_int_equal(tls_conn_shutdown(p.sv), 0);
    move_bytes(p.sv, p.cl);
    char buf[64];
    assert_int_equal(tls_conn_read(p.cl, buf, sizeof(buf)), TLS_ECLOSED);
    pair_close(&p);

    /* Binary that is not TLS either stays a TLS failure with OpenSSL's
     * reason: only text is taken for a plaintext server. */
    static const char junk[] = {0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07};
    struct tls_conn *cl = client_fed(&o, junk, sizeof(junk));
    assert_int_equal(tls_conn_handshake(cl), TLS_ETLS);
    assert_true(strncmp(tls_conn_error(cl), "TLS handshake failed: error:", 28) == 0);
    assert_null(tls_conn_plaintext(cl));
    client_fed_free(cl);
}

/* Feeds a server's plaintext greeting to a client handshake: a port that
 * does not speak TLS is named as such (TLS_ENOTTLS) with the start of what
 * it said, rather than OpenSSL's "wrong version number". */
static void expect_plaintext(const char *greeting, const char *text)
{
    struct tls_conn_opts o = {.host = "localhost"};
    struct tls_conn *cl = client_fed(&o, greeting, strlen(greeting));
    assert_int_equal(tls_conn_handshake(cl), TLS_ENOTTLS);
    assert_false(tls_conn_established(cl));
    assert_string_equal(tls_conn_error(cl), text);
    /* Sticky, like every error. */
    char buf[16];
    assert_int_equal(tls_conn_read(cl, buf, sizeof(buf)), TLS_ENOTTLS);
    assert_int_equal(tls_conn_write(cl, "x", 1), TLS_ENOTTLS);
    client_fed_free(cl);
}

static void test_plaintext_server(void **state)
{
    (void)state;
    expect_plaintext("* OK IMAP4rev1 ready\r\n",
                     "the server answered in plain text, not TLS (\"* OK IMAP4rev1 ready\")");
    expect_plaintext("+OK Dovecot ready.\r\n",
                     "the server answered in plain text, not TLS (\"+OK Dovecot ready.\")");
    /* Only the first line, cut at 48 characters, control bytes and 8-bit
     * ones shown as '?'. */
    expect_plaintext("* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE] ok\r\n",
                     "the server answered in plain text, not TLS "
                     "(\"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRA...\")");
    expect_plaintext("* OK caf\xc3\xa9\tready\r\n* second line\r\n",
                     "the server answered in plain text, not TLS (\"* OK caf???ready\")");
    expect_plaintext("HTTP/1.1 400 Bad Request\r\n\r\n",
                     "the server answered in plain text, not TLS (\"HTTP/1.1 400 Bad Request\")");

    /* Fewer bytes than a TLS record header: OpenSSL waits for more, but the
     * owner (on end of stream) can already tell it was text. */
    struct tls_conn_opts o = {.host = "localhost"};
    struct tls_conn *cl = client_fed(&o, "+OK", 3);
    assert_int_equal(tls_conn_handshake(cl), 0);
    assert_string_equal(tls_conn_plaintext(cl), "+OK");
    assert_null(tls_conn_error(cl));
    client_fed_free(cl);

    /* A TLS alert record (content type 21) is not text. */
    static const char alert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46};
    cl = client_fed(&o, alert, sizeof(alert));
    assert_true(tls_conn_handshake(cl) < 0);
    assert_null(tls_conn_plaintext(cl));
    assert_int_not_equal(tls_conn_handshake(cl), TLS_ENOTTLS);
    client_fed_free(cl);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    struct tls_ctx *ctx = NULL;
    char *err = NULL;
    assert_int_equal(tls_ctx_new_client("/nonexistent/ca.pem", &ctx, &err), TLS_ETLS);
    assert_null(ctx);
    assert_true(strncmp(err, "cannot load ca_file /nonexistent/ca.pem: ", 41) == 0);
    free(err);

    assert_int_equal(tls_ctx_new_server(tc.server_cert, tc.wrong_cert, &ctx, &err), TLS_ETLS);
    assert_true(strncmp(err, "cannot load private key ", 24) == 0);
    free(err);

    ctx = client_ctx(NULL);
    struct tls_conn *t = NULL;
    struct tls_conn_opts o = {.host = "localhost", .fingerprint = "sha256:abcd"};
    assert_int_equal(tls_conn_new(ctx, &o, &t, &err), -EINVAL);
    assert_string_equal(err, "invalid tls_fingerprint: expected sha256: and 64 hex digits");
    free(err);
    struct tls_conn_opts nohost = {0};
    assert_int_equal(tls_conn_new(ctx, &nohost, &t, &err), -EINVAL);
    free(err);
    tls_ctx_free(ctx);

    unsigned char d[32];
    assert_int_equal(tls_fingerprint_parse(tc.server_fp, d), 0);
    assert_int_equal(tls_fingerprint_parse("md5:00", d), -EINVAL);
    assert_int_equal(tls_fingerprint_parse(NULL, d), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls13_ok),
        cmocka_unit_test(test_tls12_ok),
        cmocka_unit_test(test_wrong_host),
        cmocka_unit_test(test_system_trust_from_environment),
        cmocka_unit_test(test_untrusted_ca),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_pin_mismatch),
        cmocka_unit_test(test_pin_match),
        cmocka_unit_test(test_pin_does_not_override_verification),
        cmocka_unit_test(test_pin_with_insecure),
        cmocka_unit_test(test_ip_literal),
        cmocka_unit_test(test_tls11_server_refused),
        cmocka_unit_test(test_close_notify_and_garbage),
        cmocka_unit_test(test_plaintext_server),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup_group, teardown_group);
}
