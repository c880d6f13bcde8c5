/* Test certificates, made fresh for each test run with the OpenSSL 3 API
 * (EC P-256 keys, which generate in microseconds), written as PEM files to
 * a temporary directory. Header-only with static functions because every
 * unit test is a single .c file.
 *
 *   ca.pem               "Mailsync Test CA" (the trust anchor tests pass
 *                        as ca_file)
 *   server.pem/.key      signed by the CA, for DNS:localhost, IP:127.0.0.1
 *   expired.pem/.key     signed by the CA, localhost, expired yesterday
 *   wrong.pem/.key       signed by the CA, DNS:wrong.example only
 *   untrusted.pem/.key   localhost, signed by a CA that nobody trusts
 *   selfsigned.pem/.key  localhost, self-signed
 *
 * server_fp holds "sha256:<hex>" of server.pem's DER, computed here
 * independently of sync/tls.c, and other_fp that of wrong.pem. */
#ifndef MAILSYNC_TESTCERTS_H
#define MAILSYNC_TESTCERTS_H

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

struct testcerts {
    char dir[PATH_MAX];
    char ca[PATH_MAX];
    char server_cert[PATH_MAX], server_key[PATH_MAX];
    char expired_cert[PATH_MAX], expired_key[PATH_MAX];
    char wrong_cert[PATH_MAX], wrong_key[PATH_MAX];
    char untrusted_cert[PATH_MAX], untrusted_key[PATH_MAX];
    char selfsigned_cert[PATH_MAX], selfsigned_key[PATH_MAX];
    char server_fp[80];
    char other_fp[80];
};

static bool tc_add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (ext == NULL) {
        return false;
    }
    bool ok = X509_add_ext(x, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

/* Makes a certificate for key, signed by issuer/issuer_key (self-signed
 * when issuer is NULL), valid from days_from to days_to relative to now. */
static X509 *tc_make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                          bool ca, const char *san, long days_from, long days_to)
{
    static long serial = 1000;
    X509 *x = X509_new();
    if (x == NULL) {
        return NULL;
    }
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), days_from * 86400);
    X509_gmtime_adj(X509_getm_notAfter(x), days_to * 86400);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"mailsync tests", -1,
                               -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name);
    X509 *iss = issuer != NULL ? issuer : x;
    bool ok = tc_add_ext(x, iss, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE") &&
              tc_add_ext(x, iss, NID_key_usage,
                         ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature") &&
              tc_add_ext(x, iss, NID_subject_key_identifier, "hash");
    if (ok && !ca) {
        ok = tc_add_ext(x, iss, NID_ext_key_usage, "serverAuth");
    }
    if (ok && san != NULL) {
        ok = tc_add_ext(x, iss, NID_subject_alt_name, san);
    }
    if (!ok || X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) <= 0) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static bool tc_write(const char *dir, const char *name, char *cert_path, char *key_path, X509 *x,
                     EVP_PKEY *key)
{
    snprintf(cert_path, PATH_MAX, "%s/%s.pem", dir, name);
    FILE *f = fopen(cert_path, "w");
    if (f == NULL) {
        return false;
    }
    bool ok = PEM_write_X509(f, x) == 1;
    ok = fclose(f) == 0 && ok;
    if (key_path != NULL && ok) {
        snprintf(key_path, PATH_MAX, "%s/%s.key", dir, name);
        f = fopen(key_path, "w");
        if (f == NULL) {
            return false;
        }
        ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
        ok = fclose(f) == 0 && ok;
    }
    return ok;
}

static void tc_fingerprint(X509 *x, char out[80])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    X509_digest(x, EVP_sha256(), md, &len);
    strcpy(out, "sha256:");
    for (unsigned int i = 0; i < len; i++) {
        snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
    }
}

/* Returns 0, or -1 when anything failed. */
static int testcerts_create(struct testcerts *tc)
{
    memset(tc, 0, sizeof(*tc));
    const char *tmp = getenv("TMPDIR");
    snprintf(tc->dir, sizeof(tc->dir), "%s/mailsync-certs-XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (mkdtemp(tc->dir) == NULL) {
        return -1;
    }
    int ret = -1;
    EVP_PKEY *ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *other_ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *leaf_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *ca = NULL, *other_ca = NULL, *server = NULL, *expired = NULL, *wrong = NULL,
         *untrusted = NULL, *selfsigned = NULL;
    if (ca_key == NULL || other_ca_key == NULL || leaf_key == NULL) {
        goto out;
    }
    const char *local_san = "DNS:localhost,IP:127.0.0.1";
    ca = tc_make_cert(ca_key, "Mailsync Test CA", NULL, NULL, true, NULL, -1, 30);
    other_ca = tc_make_cert(other_ca_key, "Untrusted Test CA", NULL, NULL, true, NULL, -1, 30);
    if (ca == NULL || other_ca == NULL) {
        goto out;
    }
    server = tc_make_cert(leaf_key, "localhost", ca, ca_key, false, local_san, -1, 30);
    expired = tc_make_cert(leaf_key, "localhost", ca, ca_key, false, local_san, -10, -1);
    wrong = tc_make_cert(leaf_key, "wrong.example", ca, ca_key, false, "DNS:wrong.example", -1, 30);
    untrusted =
        tc_make_cert(leaf_key, "localhost", other_ca, other_ca_key, false, local_san, -1, 30);
    selfsigned = tc_make_cert(leaf_key, "localhost", NULL, NULL, false, local_san, -1, 30);
    if (server == NULL || expired == NULL || wrong == NULL || untrusted == NULL ||
        selfsigned == NULL) {
        goto out;
    }
    if (!tc_write(tc->dir, "ca", tc->ca, NULL, ca, ca_key) ||
        !tc_write(tc->dir, "server", tc->server_cert, tc->server_key, server, leaf_key) ||
        !tc_write(tc->dir, "expired", tc->expired_cert, tc->expired_key, expired, leaf_key) ||
        !tc_write(tc->dir, "wrong", tc->wrong_cert, tc->wrong_key, wrong, leaf_key) ||
        !tc_write(tc->dir, "untrusted", tc->untrusted_cert, tc->untrusted_key, untrusted,
                  leaf_key) ||
        !tc_write(tc->dir, "selfsigned", tc->selfsigned_cert, tc->selfsigned_key, selfsigned,
                  leaf_key)) {
        goto out;
    }
    tc_fingerprint(server, tc->server_fp);
    tc_fingerprint(wrong, tc->other_fp);
    ret = 0;

out:
    X509_free(ca);
    X509_free(other_ca);
    X509_free(server);
    X509_free(expired);
    X509_free(wrong);
    X509_free(untrusted);
    X509_free(selfsigned);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(other_ca_key);
    EVP_PKEY_free(leaf_key);
    return ret;
}

static void testcerts_destroy(struct testcerts *tc)
{
    const char *names[] = {"ca", "server", "expired", "wrong", "untrusted", "selfsigned", NULL};
    char path[PATH_MAX + 16];
    for (int i = 0; names[i] != NULL; i++) {
        snprintf(path, sizeof(path), "%s/%s.pem", tc->dir, names[i]);
        unlink(path);
        snprintf(path, sizeof(path), "%s/%s.key", tc->dir, names[i]);
        unlink(path);
    }
    rmdir(tc->dir);
}

#endif
