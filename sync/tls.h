/* A TLS engine over OpenSSL 3 memory BIOs: no sockets, no event loop.
 *
 * The owner moves bytes: ciphertext that arrived from the peer goes in with
 * tls_conn_feed, ciphertext to send comes out with tls_conn_take_out, and
 * plaintext goes through tls_conn_read / tls_conn_write. sync/net.c drives
 * it from libuv callbacks; tests drive a client and a server against each
 * other entirely in memory.
 *
 * After every call that can produce output (tls_conn_handshake, _read,
 * _write, _shutdown), the owner must drain tls_conn_take_out: TLS 1.3 writes
 * during reads (key updates, alerts) and the handshake writes while waiting.
 *
 * Client verification: the peer must present a chain that verifies against
 * the system trust store plus the optional ca_file, and that is valid for
 * the host name (SSL_set1_host) or, when the host is an IP literal, for the
 * IP address (IP SAN). SNI is sent for names, never for IP literals. When a
 * leaf fingerprint pin is configured, the pin must match IN ADDITION to
 * normal verification: a pinned certificate that is expired or for another
 * name is still refused. With insecure_skip_verify (tests only) the chain
 * and name are not checked; if a pin is also given, the pin alone decides.
 *
 * Errors: functions return negative TLS_E* values (or -errno for misuse).
 * Errors are sticky: once a connection failed every later call returns the
 * same code, and tls_conn_error gives a human text without the host name:
 *   "certificate verification failed: certificate has expired"
 *   "certificate verification failed: hostname mismatch"
 *   "certificate fingerprint sha256:... does not match the configured
 *    tls_fingerprint sha256:..."
 *   "TLS handshake failed: error:0A000102:SSL routines::unsupported protocol"
 *   "the server answered in plain text, not TLS ("* OK [CAPABILITY IMAP4...")"
 * Nothing here logs; no secret passes through this module except the
 * session keys that OpenSSL keeps to itself.
 *
 * Ownership: tls_ctx_* constructors return a context owned by the caller
 * (tls_ctx_free). A tls_conn holds its own reference to the OpenSSL
 * context, so the tls_ctx may be freed while connections made from it live
 * on. tls_conn_new returns a connection owned by the caller (tls_conn_free).
 * Strings returned by the accessors belong to the connection. Error strings
 * returned through err_r are owned by the caller (free()). */
#ifndef MAILSYNC_TLS_H
#define MAILSYNC_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

enum {
    TLS_ETLS = -20101,    /* handshake or record failure (OpenSSL error text) */
    TLS_EVERIFY = -20102, /* certificate chain or host name verification failed */
    TLS_EPIN = -20103,    /* leaf fingerprint did not match the pin */
    TLS_ECLOSED = -20104, /* the peer sent close_notify */
    TLS_ENOTTLS = -20105, /* the peer answered in plain text (see tls_conn_plaintext) */
};

/* Length of "sha256:" plus 64 hex digits plus NUL. */
#define TLS_FINGERPRINT_LEN 72

struct tls_ctx;
struct tls_conn;
struct ssl_ctx_st;

/* A client context: TLS 1.2 minimum, renegotiation off, peer verification
 * on, the system default trust store plus ca_file when not NULL. Returns 0,
 * or a negative TLS_ETLS with a message in *err_r (e.g. an unreadable
 * ca_file). */
int tls_ctx_new_client(const char *ca_file, struct tls_ctx **ctx_r, char **err_r);
/* A server context (for tests and fake servers) from PEM files: cert_file
 * holds the leaf certificate optionally followed by its chain, key_file the
 * private key. Same defaults as the client: TLS 1.2 minimum, no client
 * certificates. */
int tls_ctx_new_server(const char *cert_file, const char *key_file, struct tls_ctx **ctx_r,
                       char **err_r);
void tls_ctx_free(struct tls_ctx *ctx);
/* The underlying SSL_CTX, so that tests can force protocol versions or a
 * security level. Affects connections created afterwards. */
struct ssl_ctx_st *tls_ctx_openssl(struct tls_ctx *ctx);

struct tls_conn_opts {
    /* Client: the name or IP literal to verify ("[::1]" brackets allowed);
     * required unless insecure_skip_verify. Ignored by servers. */
    const char *host;
    /* Client: NULL or "sha256:<64 hex>" (case and ':' separators ignored). */
    const char *fingerprint;
    bool insecure_skip_verify;
};

/* Creates a connection in the context's role. opts may be NULL for a
 * server. Returns 0, or -EINVAL (bad fingerprint, missing host) / TLS_ETLS
 * with a message in *err_r. */
int tls_conn_new(struct tls_ctx *ctx, const struct tls_conn_opts *opts, struct tls_conn **t_r,
                 char **err_r);
void tls_conn_free(struct tls_conn *t);

/* Appends ciphertext received from the peer (copied). Returns 0 or
 * TLS_ETLS when memory ran out. */
int tls_conn_feed(struct tls_conn *t, const void *data, size_t len);
/* Advances the handshake. Returns 1 when it is complete and the peer is
 * verified (and pinned), 0 when more ciphertext must be fed first, or a
 * negative TLS_E* error. Calling it again after completion returns 1. */
int tls_conn_handshake(struct tls_conn *t);
/* Returns plaintext bytes read (> 0), 0 when more ciphertext is needed, or
 * a negative TLS_E* (TLS_ECLOSED after the peer's close_notify). Completes
 * the handshake first when needed. */
ssize_t tls_conn_read(struct tls_conn *t, void *buf, size_t len);
/* Encrypts all of data and returns len, or 0 when the handshake needs more
 * input first (retry later with the same bytes), or a negative TLS_E*. */
ssize_t tls_conn_write(struct tls_conn *t, const void *data, size_t len);
/* Queues a close_notify alert. Returns 0 or a negative TLS_E*. */
int tls_conn_shutdown(struct tls_conn *t);

/* Ciphertext waiting to be sent, and taking it: tls_conn_take_out copies
 * up to len bytes into buf and returns how many. */
size_t tls_conn_out_pending(const struct tls_conn *t);
size_t tls_conn_take_out(struct tls_conn *t, void *buf, size_t len);

bool tls_conn_established(const struct tls_conn *t);
/* Whether the peer spoke plain text where a TLS handshake was due: the
 * first bytes received before the handshake completed start with a
 * printable character and hold no control characters but CR, LF and TAB
 * (every TLS record starts with a content type byte below 0x20). Returns
 * the start of what it sent, its first line cut to 48 characters with
 * anything unprintable as '?', or NULL when the peer sent nothing yet or
 * sent something that may be TLS. Lets the owner tell "wrong port or tls
 * mode" from a broken TLS peer, also when the peer closed before OpenSSL
 * had enough bytes to fail. */
const char *tls_conn_plaintext(const struct tls_conn *t);
/* The text of the sticky error, or NULL when none occurred. */
const char *tls_conn_error(const struct tls_conn *t);
/* After the handshake (NULL before): "TLSv1.3", the cipher suite name, and
 * "sha256:<64 lowercase hex>" of the peer's leaf certificate (NULL on a
 * server, which sees no client certificate). */
const char *tls_conn_version(const struct tls_conn *t);
const char *tls_conn_cipher(const struct tls_conn *t);
const char *tls_conn_fingerprint(const struct tls_conn *t);

/* Parses "sha256:<hex>" (case and ':' separators ignored) into 32 bytes.
 * Returns 0 or -EINVAL. */
int tls_fingerprint_parse(const char *text, unsigned char digest_r[32]);

#endif
