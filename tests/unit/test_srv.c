/* LINK: ms_daemon ms_sync ms_store ms_config ms_core */
/* Tests for the SRV reply parser (daemon/srv.c) with DNS replies built
 * byte by byte: records sorted as a client tries them, compressed target
 * names, "." (service not offered), other record types skipped, and every
 * malformed or truncated reply refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/srv.h"

struct pkt {
    unsigned char b[1024];
    size_t n;
};

static void put8(struct pkt *p, unsigned v)
{
    p->b[p->n++] = (unsigned char)v;
}

static void put16(struct pkt *p, unsigned v)
{
    put8(p, v >> 8);
    put8(p, v & 0xff);
}

/* A name as labels ("a.b" -> 1a1b0); "" is the root. */
static void put_name(struct pkt *p, const char *name)
{
    while (*name != '\0') {
        const char *dot = strchr(name, '.');
        size_t len = dot != NULL ? (size_t)(dot - name) : strlen(name);
        put8(p, (unsigned)len);
        memcpy(p->b + p->n, name, len);
        p->n += len;
        name += len + (dot != NULL);
    }
    put8(p, 0);
}

/* Header and question for "_imaps._tcp.example.com" SRV. The question's
 * name starts at offset 12; "example.com" inside it at offset 24. */
static void start(struct pkt *p, unsigned rcode, unsigned answers)
{
    p->n = 0;
    put16(p, 0x1234);         /* id */
    put16(p, 0x8180 | rcode); /* response, RD, RA */
    put16(p, 1);              /* questions */
    put16(p, answers);
    put16(p, 0); /* authority */
    put16(p, 0); /* additional */
    put_name(p, "_imaps._tcp.example.com");
    put16(p, 33); /* SRV */
    put16(p, 1);  /* IN */
}

/* An SRV answer; target NULL writes "mail" followed by a pointer to
 * "example.com" in the question. */
static void srv(struct pkt *p, unsigned prio, unsigned weight, unsigned port, const char *target)
{
    put16(p, 0xc00c); /* owner: the question's name */
    put16(p, 33);
    put16(p, 1);
    put16(p, 0);
    put16(p, 300); /* TTL */
    size_t rdlen_at = p->n;
    put16(p, 0);
    put16(p, prio);
    put16(p, weight);
    put16(p, port);
    if (target != NULL) {
        put_name(p, target);
    } else {
        put8(p, 4);
        memcpy(p->b + p->n, "mail", 4);
        p->n += 4;
        put16(p, 0xc000 | 24);
    }
    size_t rdlen = p->n - rdlen_at - 2;
    p->b[rdlen_at] = (unsigned char)(rdlen >> 8);
    p->b[rdlen_at + 1] = (unsigned char)rdlen;
}

static void test_sorted_and_compressed(void **state)
{
    struct pkt p;
    start(&p, 0, 4);
    srv(&p, 20, 0, 993, "backup.example.net");
    srv(&p, 10, 5, 993, "small.example.com");
    srv(&p, 10, 60, 1993, NULL);
    /* A CNAME in the answer: skipped. */
    put16(&p, 0xc00c);
    put16(&p, 5);
    put16(&p, 1);
    put16(&p, 0);
    put16(&p, 300);
    put16(&p, 2);
    put16(&p, 0xc000 | 24);
    struct srv_rec *r = NULL;
    size_t n = 0;
    assert_int_equal(srv_parse(p.b, p.n, &r, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(r[0].target, "mail.example.com");
    assert_int_equal(r[0].port, 1993);
    assert_int_equal(r[0].priority, 10);
    assert_int_equal(r[0].weight, 60);
    assert_string_equal(r[1].target, "small.example.com");
    assert_string_equal(r[2].target, "backup.example.net");
    assert_int_equal(r[2].priority, 20);
    srv_free(r, n);
}

static void test_not_offered(void **state)
{
    /* RFC 2782: a target of "." means the service is not offered. */
    struct pkt p;
    start(&p, 0, 1);
    srv(&p, 0, 0, 0, "");
    struct srv_rec *r = (struct srv_rec *)1;
    size_t n = 7;
    assert_int_equal(srv_parse(p.b, p.n, &r, &n), 0);
    assert_int_equal(n, 0);
    assert_null(r);
    /* And no answer at all. */
    start(&p, 0, 0);
    assert_int_equal(srv_parse(p.b, p.n, &r, &n), 0);
    assert_int_equal(n, 0);
}

static void test_rcodes(void **state)
{
    struct pkt p;
    struct srv_rec *r = NULL;
    size_t n = 0;
    start(&p, 3, 0); /* NXDOMAIN */
    assert_int_equal(srv_parse(p.b, p.n, &r, &n), -ENOENT);
    start(&p, 2, 0); /* SERVFAIL */
    assert_int_equal(srv_parse(p.b, p.n, &r, &n), -EAGAIN);
}

static void test_malformed(void **state)
{
    struct pkt p;
    struct srv_rec *r = NULL;
    size_t n = 0;
    start(&p, 0, 1);
    srv(&p, 10, 0, 993, "mail.example.com");
    /* Every truncation of a good reply is refused, never read past. */
    for (size_t cut = 0; cut < p.n; cut++) {
        unsigned char *copy = malloc(cut > 0 ? cut : 1);
        memcpy(copy, p.b, cut);
        assert_int_equal(srv_parse(copy, cut, &r, &n), -EBADMSG);
        assert_int_equal(n, 0);
        free(copy);
    }
    /* The record data says 3 bytes of name, the name is longer. */
    start(&p, 0, 1);
    srv(&p, 10, 0, 993, "mail.example.com");
    size_t rdlen_at = p.n - (6 + 18) - 2;
    p.b[rdlen_at + 1] = 6 + 3;
    assert_int_equal(srv_parse(p.b, p.n, &r, &n), -EBADMSG);
    /* Record data too short to hold priority, weight and port. */
    start(&p, 0, 1);
    put16(&p, 0xc00c);
    put16(&p, 33);
    put16(&p, 1);
    put16(&p, 0);
    put16(&p, 300);
    put16(&p, 4);
    put16(&p, 1);
    put16(&p, 2);
    assert_int_equal(srv_parse(p.b, p.n, &r, &n), -EBADMSG);
    /* A compression pointer that loops. */
    start(&p, 0, 1);
    srv(&p, 10, 0, 993, NULL);
    p.b[p.n - 1] = (unsigned char)(p.n - 2);
    assert_int_equal(srv_parse(p.b, p.n, &r, &n), -EBADMSG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sorted_and_compressed),
        cmocka_unit_test(test_not_offered),
        cmocka_unit_test(test_rcodes),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
