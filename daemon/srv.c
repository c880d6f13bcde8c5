/* DNS SRV lookups: see daemon/srv.h. */
#include "daemon/srv.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

void srv_free(struct srv_rec *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(recs[i].target);
    }
    free(recs);
}

static int srv_cmp(const void *pa, const void *pb)
{
    const struct srv_rec *a = pa, *b = pb;
    if (a->priority != b->priority) {
        return a->priority < b->priority ? -1 : 1;
    }
    if (a->weight != b->weight) {
        return a->weight > b->weight ? -1 : 1;
    }
    /* Same priority and weight: by name, so the order is stable. */
    int c = strcmp(a->target, b->target);
    return c != 0 ? c : (a->port > b->port) - (a->port < b->port);
}

int srv_parse(const unsigned char *msg, size_t len, struct srv_rec **recs_r, size_t *n_r)
{
    *recs_r = NULL;
    *n_r = 0;
    if (len > 65535) {
        return -EBADMSG;
    }
    ns_msg h;
    if (ns_initparse(msg, (int)len, &h) != 0) {
        return -EBADMSG;
    }
    int rcode = ns_msg_getflag(h, ns_f_rcode);
    if (rcode == ns_r_nxdomain) {
        return -ENOENT;
    }
    if (rcode != ns_r_noerror) {
        return -EAGAIN;
    }
    int count = ns_msg_count(h, ns_s_an);
    struct srv_rec *recs = NULL;
    size_t n = 0, cap = 0;
    for (int i = 0; i < count; i++) {
        ns_rr rr;
        if (ns_parserr(&h, ns_s_an, i, &rr) != 0) {
            srv_free(recs, n);
            return -EBADMSG;
        }
        if (ns_rr_type(rr) != ns_t_srv || ns_rr_class(rr) != ns_c_in) {
            /* A CNAME on the way, or something a server added. */
            continue;
        }
        const unsigned char *rd = ns_rr_rdata(rr);
        size_t rdlen = ns_rr_rdlen(rr);
        if (rdlen < 7) {
            srv_free(recs, n);
            return -EBADMSG;
        }
        char target[NS_MAXDNAME];
        /* The target name must lie inside this record's data: a
         * compression pointer may point back into the message, but the
         * name's own bytes may not run past the record. */
        int used = dn_expand(msg, msg + len, rd + 6, target, sizeof(target));
        if (used < 1 || (size_t)used != rdlen - 6) {
            srv_free(recs, n);
            return -EBADMSG;
        }
        if (target[0] == '\0' || strcmp(target, ".") == 0) {
            continue; /* "." : the service is decidedly not offered */
        }
        xgrow(&recs, &cap, n + 1, sizeof(*recs));
        recs[n++] = (struct srv_rec){
            .target = xstrdup(target),
            .priority = (uint16_t)(rd[0] << 8 | rd[1]),
            .weight = (uint16_t)(rd[2] << 8 | rd[3]),
            .port = (uint16_t)(rd[4] << 8 | rd[5]),
        };
    }
    if (n > 1) {
        qsort(recs, n, sizeof(*recs), srv_cmp);
    }
    *recs_r = recs;
    *n_r = n;
    return 0;
}

/* Points the resolver at MAILSYNC_DNS_SERVER (ADDRESS:PORT). False when the
 * value cannot be used; the caller says so. */
static bool use_server(struct __res_state *st, const char *spec)
{
    const char *colon = strrchr(spec, ':');
    if (colon == NULL) {
        return false;
    }
    char addr[INET_ADDRSTRLEN];
    size_t alen = (size_t)(colon - spec);
    if (alen == 0 || alen >= sizeof(addr)) {
        return false;
    }
    memcpy(addr, spec, alen);
    addr[alen] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    struct in_addr in;
    if (*end != '\0' || port < 1 || port > 65535 || inet_pton(AF_INET, addr, &in) != 1) {
        return false;
    }
    st->nscount = 1;
    st->nsaddr_list[0].sin_family = AF_INET;
    st->nsaddr_list[0].sin_addr = in;
    st->nsaddr_list[0].sin_port = htons((uint16_t)port);
    return true;
}

int srv_lookup(const char *name, struct srv_rec **recs_r, size_t *n_r, char **err_r)
{
    *recs_r = NULL;
    *n_r = 0;
    *err_r = NULL;
    struct __res_state st;
    memset(&st, 0, sizeof(st));
    if (res_ninit(&st) != 0) {
        *err_r = xstrdup("cannot set up the DNS resolver (/etc/resolv.conf)");
        return -EAGAIN;
    }
    /* A user waits at a prompt: a missing network should cost seconds,
     * not the resolver's default of up to a minute per name. */
    st.retrans = 2;
    st.retry = 2;
    const char *server = getenv("MAILSYNC_DNS_SERVER");
    if (server != NULL && *server != '\0' && !use_server(&st, server)) {
        res_nclose(&st);
        *err_r =
            xasprintf("MAILSYNC_DNS_SERVER='%s' is not ADDRESS:PORT (an IPv4 address)", server);
        return -EINVAL;
    }
    unsigned char answer[NS_MAXMSG];
    int len = res_nquery(&st, name, ns_c_in, ns_t_srv, answer, sizeof(answer));
    int herr = st.res_h_errno;
    res_nclose(&st);
    if (len < 0) {
        if (herr == HOST_NOT_FOUND || herr == NO_DATA) {
            *err_r = xasprintf("%s: no SRV record", name);
            return -ENOENT;
        }
        *err_r = xasprintf("%s: DNS lookup failed: %s", name,
                           herr == TRY_AGAIN ? "no answer (no network, or the DNS server failed)"
                                             : hstrerror(herr));
        return -EAGAIN;
    }
    int rc = srv_parse(answer, (size_t)len, recs_r, n_r);
    if (rc == -ENOENT) {
        *err_r = xasprintf("%s: no SRV record", name);
    } else if (rc != 0) {
        *err_r = xasprintf("%s: %s", name,
                           rc == -EAGAIN ? "the DNS server failed" : "malformed DNS reply");
    }
    return rc;
}
