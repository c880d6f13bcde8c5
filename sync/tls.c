/* TLS engine over OpenSSL memory BIOs; see tls.h for the contract. */
#include "sync/tls.h"

#include "core/util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

/* The most of the peer's plain text quoted in a message. */
#define TLS_SAMPLE_LEN 48

struct tls_ctx {
    SSL_CTX *ssl_ctx;
    bool server;
};

struct tls_conn {
    SSL *ssl;
    BIO *rbio; /* owned by ssl: ciphertext from the peer */
    BIO *wbio; /* owned by ssl: ciphertext for the peer */
    bool server;
    bool verify; /* chain and name verification requested */
    bool established;
    bool have_pin;
    unsigned char pin[32];
    int err; /* sticky TLS_E* or 0 */
    char *errmsg;
    char fingerprint[TLS_FINGERPRINT_LEN];
    /* The first bytes the peer sent before the handshake completed, and
     * what they show (see tls_conn_plaintext). */
    unsigned char head[64];
    size_t nhead;
    bool plaintext;
    char sample[TLS_SAMPLE_LEN + 4];
};

/* Takes the oldest entry of this thread's OpenSSL error queue as text (it
 * names the root cause; later entries are the layers that passed it up),
 * then empties the queue so that it cannot leak into another connection's
 * message. Returns false when the queue was empty. */
static bool take_ossl_error(char *buf, size_t len)
{
    unsigned long e = ERR_peek_error();
    if (e != 0) {
        ERR_error_string_n(e, buf, len);
    }
    ERR_clear_error();
    return e != 0;
}

static char *ossl_error_text(const char *fallback)
{
    char buf[256];
    if (!take_ossl_error(buf, sizeof(buf))) {
        return xstrdup(fallback);
    }
    return xstrdup(buf);
}

static void hex_encode(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * len] = '\0';
}

static int hex_value(char ch)
{
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    if (ch >= 'A' && ch <= 'F') {
        return ch - 'A' + 10;
    }
    return -1;
}

int tls_fingerprint_parse(const char *text, unsigned char digest_r[32])
{
    if (text == NULL || strncasecmp(text, "sha256:", 7) != 0) {
        return -EINVAL;
    }
    size_t n = 0;
    int hi = -1;
    for (const char *p = text + 7; *p != '\0'; p++) {
        if (*p == ':') {
            continue;
        }
        int v = hex_value(*p);
        if (v < 0 || n >= 32) {
            return -EINVAL;
        }
        if (hi < 0) {
            hi = v;
        } else {
            digest_r[n++] = (unsigned char)(hi << 4 | v);
            hi = -1;
        }
    }
    return n == 32 && hi < 0 ? 0 : -EINVAL;
}

static SSL_CTX *new_ssl_ctx(bool server, char **err_r)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) {
        *err_r = ossl_error_text("cannot create a TLS context");
        return NULL;
    }
    /* TLS 1.0 and 1.1 are broken enough that no mail server worth syncing
     * with needs them any more. Renegotiation is refused because it is a
     * needless attack surface and because it could make a write wait for a
     * read, which the pump in net.c does not expect. */
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return ctx;
}

/* True when dir holds OpenSSL hash links ("1a2b3c4d.0"), i.e. can serve
 * lazy lookups. */
static bool has_hash_links(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        return false;
    }
    bool found = false;
    struct dirent *de;
    while (!found && (de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        size_t i = 0;
        while (i < 8 && isxdigit((unsigned char)n[i])) {
            i++;
        }
        found = i == 8 && n[8] == '.' && isdigit((unsigned char)n[9]);
    }
    closedir(d);
    return found;
}

/* A lookup method that reads a CA bundle file into the store only when a
 * verification first asks for an issuer nothing else provided. Parsing the
 * system bundle (some 140 certificates) costs tens of milliseconds, paid at
 * every start of a one-shot sync although a private CA (ca_file) or the
 * hashed directory usually answers first. */
struct lazy_bundle {
    char *path;
    bool loaded;
};

static int lazy_bundle_by_subject(X509_LOOKUP *lu, X509_LOOKUP_TYPE type, const X509_NAME *name,
                                  X509_OBJECT *ret)
{
    struct lazy_bundle *lb = X509_LOOKUP_get_method_data(lu);
    if (lb == NULL || lb->loaded || type != X509_LU_X509) {
        return 0;
    }
    lb->loaded = true;
    X509_STORE *store = X509_LOOKUP_get_store(lu);
    if (X509_load_cert_crl_file(lu, lb->path, X509_FILETYPE_PEM) <= 0) {
        ERR_clear_error();
        return 0;
    }
    if (!X509_STORE_lock(store)) {
        return 0;
    }
    X509_OBJECT *found =
        X509_OBJECT_retrieve_by_subject(X509_STORE_get0_objects(store), type, (X509_NAME *)name);
    X509 *cert = found != NULL ? X509_OBJECT_get0_X509(found) : NULL;
    X509_STORE_unlock(store);
    if (cert == NULL || !X509_OBJECT_set1_X509(ret, cert)) {
        return 0;
    }
    /* The caller takes its own reference from ret (as with the directory
     * lookup); the store keeps the certificate alive. */
    X509_free(cert);
    return 1;
}

static void lazy_bundle_free(X509_LOOKUP *lu)
{
    struct lazy_bundle *lb = X509_LOOKUP_get_method_data(lu);
    if (lb != NULL) {
        free(lb->path);
        free(lb);
    }
}

static X509_LOOKUP_METHOD *lazy_bundle_method;

static void lazy_bundle_method_init(void)
{
    X509_LOOKUP_METHOD *m = X509_LOOKUP_meth_new("mailsync lazy CA bundle");
    if (m != NULL) {
        X509_LOOKUP_meth_set_get_by_subject(m, lazy_bundle_by_subject);
        X509_LOOKUP_meth_set_free(m, lazy_bundle_free);
    }
    lazy_bundle_method = m;
}

/* Adds path as a bundle read on first need; false when that cannot be set
 * up (the caller then loads it eagerly). */
static bool add_lazy_bundle(SSL_CTX *ctx, const char *path)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, lazy_bundle_method_init);
    if (lazy_bundle_method == NULL) {
        return false;
    }
    X509_LOOKUP *lu = X509_STORE_add_lookup(SSL_CTX_get_cert_store(ctx), lazy_bundle_method);
    if (lu == NULL) {
        return false;
    }
    struct lazy_bundle *lb = xcalloc(1, sizeof(*lb));
    lb->path = xstrdup(path);
    X509_LOOKUP_set_method_data(lu, lb);
    return true;
}

/* The system trust store: the hashed directory (/etc/ssl/certs on Debian,
 * or SSL_CERT_DIR), searched per issuer, then the bundle file
 * (SSL_CERT_FILE or OpenSSL's default), read only if still needed. */
static void load_system_trust(SSL_CTX *ctx)
{
    const char *dir = getenv(X509_get_default_cert_dir_env());
    if (dir == NULL || *dir == '\0') {
        dir = X509_get_default_cert_dir();
    }
    if (has_hash_links(dir)) {
        SSL_CTX_load_verify_dir(ctx, dir);
    }
    const char *file = getenv(X509_get_default_cert_file_env());
    if (file == NULL || *file == '\0') {
        file = X509_get_default_cert_file();
    }
    if (access(file, R_OK) == 0 && !add_lazy_bundle(ctx, file)) {
        SSL_CTX_load_verify_file(ctx, file);
    }
}

int tls_ctx_new_client(const char *ca_file, struct tls_ctx **ctx_r, char **err_r)
{
    *ctx_r = NULL;
    *err_r = NULL;
    SSL_CTX *ctx = new_ssl_ctx(false, err_r);
    if (ctx == NULL) {
        return TLS_ETLS;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    ERR_clear_error();
    load_system_trust(ctx);
    /* A missing system bundle is not an error by itself (a configured
     * ca_file or pin may be all the trust there is); verification then says
     * precisely what is missing. */
    ERR_clear_error();
    if (ca_file != NULL && SSL_CTX_load_verify_file(ctx, ca_file) != 1) {
        char *e = ossl_error_text("unknown error");
        *err_r = xasprintf("cannot load ca_file %s: %s", ca_file, e);
        free(e);
        SSL_CTX_free(ctx);
        return TLS_ETLS;
    }
    struct tls_ctx *t = xcalloc(1, sizeof(*t));
    t->ssl_ctx = ctx;
    *ctx_r = t;
    return 0;
}

int tls_ctx_new_server(const char *cert_file, const char *key_file, struct tls_ctx **ctx_r,
                       char **err_r)
{
    *ctx_r = NULL;
    *err_r = NULL;
    SSL_CTX *ctx = new_ssl_ctx(true, err_r);
    if (ctx == NULL) {
        return TLS_ETLS;
    }
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        char *e = ossl_error_text("unknown error");
        *err_r = xasprintf("cannot load certificate %s: %s", cert_file, e);
        free(e);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        char *e = ossl_error_text("unknown error");
        *err_r = xasprintf("cannot load private key %s: %s", key_file, e);
        free(e);
        goto fail;
    }
    *ctx_r = xcalloc(1, sizeof(**ctx_r));
    (*ctx_r)->ssl_ctx = ctx;
    (*ctx_r)->server = true;
    return 0;

fail:
    SSL_CTX_free(ctx);
    return TLS_ETLS;
}

void tls_ctx_free(struct tls_ctx *ctx)
{
    if (ctx == NULL) {
        return;
    }
    SSL_CTX_free(ctx->ssl_ctx);
    free(ctx);
}

struct ssl_ctx_st *tls_ctx_openssl(struct tls_ctx *ctx)
{
    return ctx->ssl_ctx;
}

static bool is_ip_literal(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* Sets up SNI and name or address verification for a client. host is the
 * configured name: brackets around an IPv6 literal and a trailing dot of a
 * fully qualified name are dropped, as certificates carry neither. */
static int setup_client_host(struct tls_conn *t, const char *host, char **err_r)
{
    size_t len = strlen(host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
    } else if (len > 1 && host[len - 1] == '.') {
        len--;
    }
    char *name = xstrndup(host, len);
    int ret = 0;
    ERR_clear_error();
    if (is_ip_literal(name)) {
        /* RFC 6066 forbids IP literals in SNI; the certificate must carry
         * the address as an IP SAN. */
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name) != 1) {
            ret = TLS_ETLS;
        }
    } else {
        SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set_tlsext_host_name(t->ssl, name) != 1 || SSL_set1_host(t->ssl, name) != 1) {
            ret = TLS_ETLS;
        }
    }
    if (ret < 0) {
        char *e = ossl_error_text("unknown error");
        *err_r = xasprintf("cannot use host name '%s' for TLS: %s", name, e);
        free(e);
    }
    free(name);
    return ret;
}

int tls_conn_new(struct tls_ctx *ctx, const struct tls_conn_opts *opts, struct tls_conn **t_r,
                 char **err_r)
{
    static const struct tls_conn_opts no_opts = {0};
    *t_r = NULL;
    *err_r = NULL;
    if (opts == NULL) {
        opts = &no_opts;
    }
    struct tls_conn *t = xcalloc(1, sizeof(*t));
    t->server = ctx->server;
    t->verify = !ctx->server && !opts->insecure_skip_verify;
    if (!t->server && opts->fingerprint != NULL) {
        if (tls_fingerprint_parse(opts->fingerprint, t->pin) < 0) {
            *err_r = xstrdup("invalid tls_fingerprint: expected sha256: and 64 hex digits");
            free(t);
            return -EINVAL;
        }
        t->have_pin = true;
    }
    if (!t->server && (opts->host == NULL || opts->host[0] == '\0') && t->verify) {
        *err_r = xstrdup("no host name to verify the certificate against");
        free(t);
        return -EINVAL;
    }

    ERR_clear_error();
    t->ssl = SSL_new(ctx->ssl_ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        *err_r = ossl_error_text("cannot create a TLS connection");
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        return TLS_ETLS;
    }
    /* An empty read BIO means "no data yet" (retry), never end of file:
     * the end of the TCP stream is the owner's business. */
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);

    if (t->server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (opts->host != NULL && opts->host[0] != '\0' &&
            setup_client_host(t, opts->host, err_r) < 0) {
            tls_conn_free(t);
            return TLS_ETLS;
        }
        if (!t->verify) {
            SSL_set_verify(t->ssl, SSL_VERIFY_NONE, NULL);
        }
    }
    *t_r = t;
    return 0;
}

void tls_conn_free(struct tls_conn *t)
{
    if (t == NULL) {
        return;
    }
    SSL_free(t->ssl); /* frees both BIOs */
    free(t->errmsg);
    free(t);
}

static int set_error(struct tls_conn *t, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_error(struct tls_conn *t, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(t->errmsg);
    t->errmsg = xvasprintf(fmt, ap);
    va_end(ap);
    t->err = err;
    return err;
}

/* Turns a failed SSL_* call into a sticky error with the most specific
 * text available: the verification result first (OpenSSL only says
 * "certificate verify failed" in its queue), then the error queue. */
static int fail_ssl(struct tls_conn *t, int ssl_err)
{
    if (ssl_err == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        return set_error(t, TLS_ECLOSED, "the peer closed the TLS session");
    }
    if (!t->established && t->verify) {
        long vr = SSL_get_verify_result(t->ssl);
        if (vr != X509_V_OK) {
            ERR_clear_error();
            return set_error(t, TLS_EVERIFY, "certificate verification failed: %s",
                             X509_verify_cert_error_string(vr));
        }
    }
    if (!t->established && t->plaintext) {
        /* OpenSSL only says "wrong version number" or "packet length too
         * long" about a greeting; that it is a greeting is what helps. */
        ERR_clear_error();
        return set_error(t, TLS_ENOTTLS, "the server answered in plain text, not TLS (\"%s\")",
                         t->sample);
    }
    char buf[256];
    const char *what = t->established ? "TLS error" : "TLS handshake failed";
    if (take_ossl_error(buf, sizeof(buf))) {
        return set_error(t, TLS_ETLS, "%s: %s", what, buf);
    }
    if (ssl_err == SSL_ERROR_SYSCALL) {
        return set_error(t, TLS_ETLS, "%s: unexpected end of the TLS stream", what);
    }
    return set_error(t, TLS_ETLS, "%s: OpenSSL error %d", what, ssl_err);
}

/* Records the peer's leaf fingerprint and, when pinned, insists on it. */
static int check_peer(struct tls_conn *t)
{
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    if (peer == NULL) {
        if (t->server) {
            return 0;
        }
        return set_error(t, TLS_EVERIFY, "certificate verification failed: no certificate");
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    ERR_clear_error();
    if (X509_digest(peer, EVP_sha256(), md, &mdlen) != 1 || mdlen != 32) {
        char *e = ossl_error_text("digest failed");
        set_error(t, TLS_ETLS, "cannot fingerprint the certificate: %s", e);
        free(e);
        return t->err;
    }
    memcpy(t->fingerprint, "sha256:", 7);
    hex_encode(md, 32, t->fingerprint + 7);
    /* The pin is not secret, but comparing in constant time costs nothing
     * and keeps this check free of timing questions. */
    if (t->have_pin && CRYPTO_memcmp(md, t->pin, 32) != 0) {
        char want[65];
        hex_encode(t->pin, 32, want);
        return set_error(t, TLS_EPIN,
                         "certificate fingerprint %s does not match the configured "
                         "tls_fingerprint sha256:%s",
                         t->fingerprint, want);
    }
    return 0;
}

/* Looks at the first bytes from the peer: text (a greeting such as "* OK"
 * or "+OK") where a TLS record was due? A record starts with its content
 * type (20 to 24), so a printable first byte is never TLS; control bytes
 * later on (other than line ends and tabs) mean binary, not a greeting. */
static void note_head(struct tls_conn *t, const void *data, size_t len)
{
    size_t room = sizeof(t->head) - t->nhead;
    size_t n = len < room ? len : room;
    if (n == 0) {
        return;
    }
    memcpy(t->head + t->nhead, data, n);
    t->nhead += n;
    bool text = t->head[0] > 0x20 && t->head[0] < 0x7f;
    for (size_t i = 1; i < t->nhead && text; i++) {
        unsigned char ch = t->head[i];
        text = ch >= 0x20 || ch == '\r' || ch == '\n' || ch == '\t';
    }
    t->plaintext = text;
    if (!text) {
        return;
    }
    /* The first line, as a message can show it. */
    size_t k = 0;
    for (size_t i = 0; i < t->nhead && k < TLS_SAMPLE_LEN; i++) {
        unsigned char ch = t->head[i];
        if (ch == '\r' || ch == '\n') {
            break;
        }
        t->sample[k++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    bool cut = k == TLS_SAMPLE_LEN && k < t->nhead && t->head[k] != '\r' && t->head[k] != '\n';
    if (cut) {
        memcpy(t->sample + k, "...", 3);
        k += 3;
    }
    t->sample[k] = '\0';
}

int tls_conn_feed(struct tls_conn *t, const void *data, size_t len)
{
    if (!t->established && !t->server) {
        note_head(t, data, len);
    }
    const char *p = data;
    while (len > 0) {
        int chunk = len > INT_MAX ? INT_MAX : (int)len;
        ERR_clear_error();
        int n = BIO_write(t->rbio, p, chunk);
        if (n <= 0) {
            char *e = ossl_error_text("out of memory");
            set_error(t, TLS_ETLS, "TLS error: %s", e);
            free(e);
            return t->err;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int tls_conn_handshake(struct tls_conn *t)
{
    if (t->err != 0) {
        return t->err;
    }
    if (t->established) {
        return 1;
    }
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        if (check_peer(t) < 0) {
            return t->err;
        }
        t->established = true;
        return 1;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return 0;
    }
    return fail_ssl(t, e);
}

ssize_t tls_conn_read(struct tls_conn *t, void *buf, size_t len)
{
    if (t->err != 0) {
        return t->err;
    }
    if (!t->established) {
        int r = tls_conn_handshake(t);
        if (r <= 0) {
            return r;
        }
    }
    if (len > SSIZE_MAX) {
        len = SSIZE_MAX;
    }
    size_t n = 0;
    ERR_clear_error();
    if (SSL_read_ex(t->ssl, buf, len, &n) == 1) {
        return (ssize_t)n;
    }
    int e = SSL_get_error(t->ssl, 0);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return 0;
    }
    return fail_ssl(t, e);
}

ssize_t tls_conn_write(struct tls_conn *t, const void *data, size_t len)
{
    if (t->err != 0) {
        return t->err;
    }
    if (!t->established) {
        int r = tls_conn_handshake(t);
        if (r <= 0) {
            return r;
        }
    }
    if (len == 0) {
        return 0;
    }
    if (len > SSIZE_MAX) {
        len = SSIZE_MAX;
    }
    size_t n = 0;
    ERR_clear_error();
    if (SSL_write_ex(t->ssl, data, len, &n) == 1) {
        /* Without SSL_MODE_ENABLE_PARTIAL_WRITE a successful write took
         * everything. */
        return (ssize_t)n;
    }
    int e = SSL_get_error(t->ssl, 0);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return 0;
    }
    return fail_ssl(t, e);
}

int tls_conn_shutdown(struct tls_conn *t)
{
    if (t->err != 0 && t->err != TLS_ECLOSED) {
        return t->err;
    }
    ERR_clear_error();
    /* Only our close_notify matters: the peer's answer is not awaited, as
     * both protocols in use here have their own end (LOGOUT, QUIT). */
    if (SSL_shutdown(t->ssl) < 0) {
        ERR_clear_error();
    }
    return 0;
}

size_t tls_conn_out_pending(const struct tls_conn *t)
{
    return BIO_ctrl_pending(t->wbio);
}

size_t tls_conn_take_out(struct tls_conn *t, void *buf, size_t len)
{
    int chunk = len > INT_MAX ? INT_MAX : (int)len;
    if (chunk == 0) {
        return 0;
    }
    int n = BIO_read(t->wbio, buf, chunk);
    return n > 0 ? (size_t)n : 0;
}

bool tls_conn_established(const struct tls_conn *t)
{
    return t->established;
}

const char *tls_conn_plaintext(const struct tls_conn *t)
{
    return !t->established && t->plaintext ? t->sample : NULL;
}

const char *tls_conn_error(const struct tls_conn *t)
{
    return t->errmsg;
}

const char *tls_conn_version(const struct tls_conn *t)
{
    return t->established ? SSL_get_version(t->ssl) : NULL;
}

const char *tls_conn_cipher(const struct tls_conn *t)
{
    return t->established ? SSL_get_cipher_name(t->ssl) : NULL;
}

const char *tls_conn_fingerprint(const struct tls_conn *t)
{
    return t->established && t->fingerprint[0] != '\0' ? t->fingerprint : NULL;
}
