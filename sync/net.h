/* A client connection on the libuv loop: name resolution, TCP connect (every
 * address tried in turn, IPv6 and IPv4), optional TLS (implicit, or started
 * later for STARTTLS/STLS), optional DEFLATE compression, inactivity
 * timeouts, TCP keepalive, and a bounded write queue.
 *
 * The owner talks plaintext; the connection encrypts, compresses and pumps
 * bytes. It reports to its owner through the callbacks in struct net_cb,
 * always from the loop (never synchronously from a net_* call).
 *
 * Ownership: net_connect returns a struct net_conn owned by the caller.
 * net_close (always exactly once) stops every callback immediately and frees
 * the memory later from the libuv close callbacks; the pointer must not be
 * used after net_close. The loop then closes clean.
 *
 * Errors: after on_error no other callback arrives; the owner calls
 * net_close. Error codes are negative errno / UV_* values, or NET_E* below,
 * always with a human message naming the host, e.g. "imap.example.com:993:
 * certificate verification failed: certificate has expired". */
#ifndef MAILSYNC_NET_H
#define MAILSYNC_NET_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum {
    NET_ETLS = -20001,      /* TLS handshake or record failure */
    NET_EVERIFY = -20002,   /* certificate chain / host name verification failed */
    NET_EPIN = -20003,      /* certificate fingerprint did not match tls_fingerprint */
    NET_ETIMEOUT = -20004,  /* connect or inactivity timeout */
    NET_EINJECT = -20005,   /* plaintext arrived together with the STARTTLS answer */
    NET_ECLOSED = -20006,   /* peer closed the connection */
    NET_ECOMPRESS = -20007, /* bad DEFLATE stream */
    NET_ENOTTLS = -20008,   /* the server answered in plain text where TLS was due */
};

/* Whether err (anything an on_error callback of this module or of the IMAP
 * and POP3 clients above it may pass: NET_E*, negative errno / UV_*, or
 * another module's code) is a failure that will not clear up by itself, so
 * that trying again later without a change to the configuration or the
 * server is pointless: the certificate fails verification (NET_EVERIFY),
 * does not match tls_fingerprint (NET_EPIN), the port does not speak TLS
 * (NET_ENOTTLS), or STARTTLS was attacked (NET_EINJECT). False for
 * everything else, the codes of other modules included: timeouts, refused
 * or dropped connections, DNS failures and TLS failures of other kinds may
 * all go away by themselves. */
bool net_err_permanent(int err);

enum net_tls_mode {
    NET_TLS_NONE = 0,
    NET_TLS_IMPLICIT,
    NET_TLS_LATER, /* plaintext until net_start_tls (STARTTLS / STLS) */
};

struct net_opts {
    const char *host; /* name or address; used for SNI and verification */
    uint16_t port;
    enum net_tls_mode tls;
    const char *ca_file;         /* NULL: system trust store only; else added to it */
    const char *fingerprint;     /* NULL or "sha256:<64 lowercase hex>": pin the leaf certificate */
    bool insecure_skip_verify;   /* tests only; never set from configuration */
    unsigned connect_timeout_ms; /* whole resolve+connect+handshake; 0 = 30 s */
    unsigned idle_timeout_ms;    /* no bytes received for this long while the owner
                                    expects an answer (see net_expect); 0 = 60 s */
    size_t max_write_queue;      /* bytes queued before net_write refuses; 0 = 8 MiB */
    /* How long one address may take to accept the TCP connection before the
     * next address is tried (a host with an unreachable IPv6 address and a
     * working IPv4 one must not wait for the whole timeout); 0 = 10 s. Each
     * address gets at most an equal share of the connect time left for the
     * addresses still to try; the last one gets all that is left. */
    unsigned attempt_timeout_ms;
    /* Connect to these addresses, in order, instead of resolving host (host
     * still names the server for TLS verification and messages; port must
     * still be set, for messages, while each address carries its own port);
     * naddrs = 0 resolves as usual. Copied by net_connect. */
    const struct sockaddr_storage *addrs;
    size_t naddrs;
    /* TCP keepalive, set on every connection as soon as it is connected: a
     * connection that sits in IDLE for many minutes sends nothing, so
     * without probes a peer that vanished (a NAT box that dropped the flow,
     * a laptop that moved to another network, a server that went away
     * without a FIN) would never be noticed. SO_KEEPALIVE is always on.
     * With the defaults a silent peer is given up after about 90 s:
     * probes start after 60 s of silence, every 15 s, 3 unanswered ones
     * end the connection, and TCP_USER_TIMEOUT ends it when data sent
     * (a probe or a command) stays unacknowledged for 90 s. 0 takes the
     * default given here; NET_KEEPALIVE_OS leaves that option as the
     * operating system sets it (net.ipv4.tcp_keepalive_* sysctls). */
    unsigned keepalive_idle_s;  /* TCP_KEEPIDLE; 0 = 60 s */
    unsigned keepalive_intvl_s; /* TCP_KEEPINTVL; 0 = 15 s */
    unsigned keepalive_count;   /* TCP_KEEPCNT; 0 = 3 */
    unsigned user_timeout_ms;   /* TCP_USER_TIMEOUT; 0 = 90 s */
};

/* For the keepalive fields of struct net_opts: do not set this option. */
#define NET_KEEPALIVE_OS UINT_MAX

struct net_conn;

struct net_cb {
    /* TCP connected and, for NET_TLS_IMPLICIT, TLS verified. */
    void (*on_connect)(struct net_conn *c, void *arg);
    /* Plaintext from the peer. The buffer is valid only during the call. */
    void (*on_data)(struct net_conn *c, const char *data, size_t len, void *arg);
    /* net_start_tls finished: TLS is verified and up. */
    void (*on_tls)(struct net_conn *c, void *arg);
    /* The write queue drained below half of max_write_queue after net_write
     * returned -ENOBUFS; may be NULL. */
    void (*on_drain)(struct net_conn *c, void *arg);
    /* Fatal error or the peer closed; message as described above. */
    void (*on_error)(struct net_conn *c, int err, const char *msg, void *arg);
};

int net_connect(uv_loop_t *loop, const struct net_opts *opts, const struct net_cb *cb, void *arg,
                struct net_conn **c_r);
/* Queues plaintext for sending (copied). Returns -ENOBUFS when the queue is
 * over max_write_queue (nothing queued; wait for on_drain). */
int net_write(struct net_conn *c, const void *data, size_t len);
/* Starts TLS on a NET_TLS_LATER connection, after the server's OK to
 * STARTTLS. Any plaintext received after that OK that the owner has not
 * consumed is an injection attack: the owner passes buffered_plaintext =
 * true and gets NET_EINJECT. Bytes arriving after this call are TLS. */
int net_start_tls(struct net_conn *c, bool buffered_plaintext);
/* Starts raw DEFLATE (RFC 4978) in both directions; every net_write is
 * flushed with Z_SYNC_FLUSH. */
int net_start_compress(struct net_conn *c);
/* Stops / resumes delivering on_data (backpressure from a slow consumer). */
void net_pause(struct net_conn *c);
void net_resume(struct net_conn *c);
/* Arms (true) or disarms (false) the inactivity timeout: armed while a reply
 * is awaited, disarmed while idle by design (IDLE, waiting between syncs). */
void net_expect(struct net_conn *c, bool expecting);
/* The same with a shorter inactivity deadline for this wait: ms (if below
 * the configured timeout), 0 = the configured timeout. For answers that
 * must come quickly on a healthy link (DONE, NOOP), so a dead connection
 * is found well before the general timeout. */
void net_expect_within(struct net_conn *c, bool expecting, unsigned ms);
void net_close(struct net_conn *c);

/* Facts about the established connection, for `check --connect`. */
const char *net_peer_address(const struct net_conn *c); /* "127.0.0.1:993" */
const char *net_tls_version(const struct net_conn *c);  /* "TLSv1.3" or NULL */
const char *net_tls_cipher(const struct net_conn *c);
/* "sha256:..." of the leaf certificate, or NULL without TLS. */
const char *net_tls_fingerprint(const struct net_conn *c);
bool net_compressed(const struct net_conn *c);
/* The peer is on this machine or a private network: loopback, RFC 1918,
 * link-local, IPv6 unique local (and IPv4-mapped forms of these). */
bool net_peer_is_local(const struct net_conn *c);
bool net_addr_is_local(const struct sockaddr *sa);
uint64_t net_bytes_in(const struct net_conn *c); /* on the wire */
uint64_t net_bytes_out(const struct net_conn *c);

#endif
