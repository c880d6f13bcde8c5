/* DNS SRV lookups for `mailsync init` (RFC 2782), to find a domain's mail
 * servers as RFC 6186 publishes them: _imaps._tcp (implicit TLS),
 * _imap._tcp (STARTTLS), _pop3s._tcp and _pop3._tcp.
 *
 * srv_parse is pure (a DNS reply in, records out) so that it is tested with
 * canned packets; srv_lookup asks the system resolver (blocking, with
 * libresolv) and hands the reply to srv_parse.
 *
 * Ownership: the array a lookup or parse returns is the caller's; free it
 * with srv_free. Records come sorted as a client should try them: lowest
 * priority first, then the highest weight (RFC 2782 picks among equal
 * priorities at random by weight; a proposal shown to a user should not
 * change from one run to the next). A target of "." means the domain says
 * the service is not offered: such records are dropped, so a reply holding
 * only them yields no record. */
#ifndef MAILSYNC_SRV_H
#define MAILSYNC_SRV_H

#include <stddef.h>
#include <stdint.h>

struct srv_rec {
    char *target; /* host name without the trailing dot */
    uint16_t port;
    uint16_t priority;
    uint16_t weight;
};

/* Parses a reply to an SRV query (the answer section; other record types
 * in it are skipped). Returns 0 with *recs_r and *n_r (0 records is a
 * success), or -EBADMSG for a reply that is malformed or truncated. */
int srv_parse(const unsigned char *msg, size_t len, struct srv_rec **recs_r, size_t *n_r);

/* Looks up the SRV records of name (e.g. "_imaps._tcp.example.com").
 * Returns 0 with the records (possibly none), -ENOENT when the name or the
 * record type does not exist, -EAGAIN when no answer came (no network, a
 * server failure), -EBADMSG for a malformed reply; *err_r (caller frees)
 * says why on every failure.
 *
 * MAILSYNC_DNS_SERVER=ADDRESS:PORT (an IPv4 address) sends the query to
 * that server instead of the ones in /etc/resolv.conf: the tests answer
 * from a scripted server on 127.0.0.1, as the machines they run on may
 * have no DNS at all. */
int srv_lookup(const char *name, struct srv_rec **recs_r, size_t *n_r, char **err_r);

void srv_free(struct srv_rec *recs, size_t n);

#endif
