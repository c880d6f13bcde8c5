/* LINK: ms_daemon ms_core */
/* daemon/wake.c: a suspend simulated through injected clocks is reported
 * once with its length, drift under the threshold is not; crafted netlink
 * messages through a socketpair give exactly one debounced callback per
 * burst, noise gives none, a stream that never goes quiet is still
 * reported; and, where this process may create a network namespace, a
 * real link change (and a real receive overrun) in one gives exactly one
 * callback. Every test ends with uv_loop_close returning 0, which proves
 * that wake_close released every handle. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "daemon/wake.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#define SEC_NS 1000000000ull

struct t {
    uv_loop_t loop;
    struct wake *w;
    uv_timer_t check; /* ref'd: the wake handles are not */
    uv_timer_t feed;
    bool feeding;
    int peer; /* test end of the socketpair, or -1 */
    int sleeps;
    uint64_t slept_ms[8];
    int changes;
    uint64_t t_change[8];
    uint64_t t_last_sent;
    unsigned feed_left;
    uint64_t stop_at; /* loop time at which the check timer closes everything */
    uint64_t stop_ticks;
    /* Fake clocks: tick k reads boot = k * 10 s + extra(k), mono = k * 10 s. */
    uint64_t k;
    struct wake_stats st; /* the counters when wake_close was called */
};

static struct t T;

static void finish(void)
{
    if (T.w != NULL) {
        wake_get_stats(T.w, &T.st);
    }
    wake_close(T.w);
    T.w = NULL;
    uv_close((uv_handle_t *)&T.check, NULL);
    uv_close((uv_handle_t *)&T.feed, NULL);
    if (T.peer >= 0) {
        close(T.peer);
        T.peer = -1;
    }
}

static void on_check(uv_timer_t *t)
{
    (void)t;
    struct wake_stats st;
    wake_get_stats(T.w, &st);
    if ((T.stop_ticks != 0 && st.ticks >= T.stop_ticks) ||
        (T.stop_at != 0 && uv_now(&T.loop) >= T.stop_at)) {
        finish();
    }
}

static void cb_sleep(struct wake *w, uint64_t slept_ms, void *arg)
{
    assert_ptr_equal(w, T.w);
    assert_ptr_equal(arg, &T);
    assert_true(T.sleeps < 8);
    T.slept_ms[T.sleeps++] = slept_ms;
}

static void cb_net(struct wake *w, void *arg)
{
    assert_ptr_equal(w, T.w);
    assert_ptr_equal(arg, &T);
    assert_true(T.changes < 8);
    T.t_change[T.changes++] = uv_now(&T.loop);
}

static const struct wake_cb CB = {.on_sleep = cb_sleep, .on_net_change = cb_net};

static void t_init(void)
{
    memset(&T, 0, sizeof(T));
    T.peer = -1;
    assert_int_equal(uv_loop_init(&T.loop), 0);
    uv_timer_init(&T.loop, &T.check);
    uv_timer_init(&T.loop, &T.feed);
    uv_timer_start(&T.check, on_check, 1, 1);
}

static void t_run(void)
{
    assert_int_equal(uv_run(&T.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&T.loop), 0);
}

/* ---- sleep ------------------------------------------------------------- */

static uint64_t fake_boot(void *arg)
{
    assert_ptr_equal(arg, &T);
    uint64_t extra = 0;
    if (T.k >= 3) {
        extra += 30 * SEC_NS; /* a 30 s suspend between ticks 2 and 3 */
    }
    if (T.k >= 5) {
        extra += 4 * SEC_NS; /* 4 s of drift: under the 5 s threshold */
    }
    if (T.k >= 7) {
        extra += 5 * SEC_NS + 1000000; /* 5.001 s: just over it */
    }
    return 1000 * SEC_NS + T.k * 10 * SEC_NS + extra;
}

static uint64_t fake_mono(void *arg)
{
    assert_ptr_equal(arg, &T);
    /* Read after fake_boot on each tick: the next tick sees k + 1. */
    return 50 * SEC_NS + T.k++ * 10 * SEC_NS;
}

/* Ticks every 2 ms of real time, on the fake clocks, no network. */
static struct wake_opts fake_clock_opts(void)
{
    return (struct wake_opts){.interval_ms = 2,
                              .net = WAKE_NET_NONE,
                              .boottime_ns = fake_boot,
                              .monotonic_ns = fake_mono,
                              .clock_arg = &T};
}

static void test_sleep_detected(void **state)
{
    (void)state;
    /* Ticks every 2 ms of real time, each one 10 s of fake time: the 30 s
     * suspend and the 5.001 s one are reported with their lengths, the
     * 4 s drift is not. */
    t_init();
    struct wake_opts o = fake_clock_opts();
    assert_int_equal(wake_start(&T.loop, &o, &CB, &T, &T.w), 0);
    assert_int_equal(T.k, 1); /* read once at start */
    T.stop_ticks = 9;
    t_run();
    assert_int_equal(T.sleeps, 2);
    assert_int_equal(T.slept_ms[0], 30000);
    assert_int_equal(T.slept_ms[1], 5001);
    assert_int_equal(T.changes, 0);
}

static void test_real_clocks(void **state)
{
    (void)state;
    /* The system clocks of a machine that does not sleep during the test
     * report nothing over a few ticks. */
    t_init();
    struct wake_opts o = {.interval_ms = 5, .net = WAKE_NET_NONE};
    assert_int_equal(wake_start(&T.loop, &o, &CB, &T, &T.w), 0);
    T.stop_ticks = 4;
    t_run();
    assert_int_equal(T.sleeps, 0);
}

static void close_in_callback(struct wake *w, uint64_t slept_ms, void *arg)
{
    (void)slept_ms;
    cb_sleep(w, slept_ms, arg);
    finish();
}

static void test_close_inside_callback(void **state)
{
    (void)state;
    t_init();
    struct wake_opts o = fake_clock_opts();
    struct wake_cb cb = {.on_sleep = close_in_callback};
    assert_int_equal(wake_start(&T.loop, &o, &cb, &T, &T.w), 0);
    t_run();
    assert_int_equal(T.sleeps, 1);
}

static void test_bad_args(void **state)
{
    (void)state;
    t_init();
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
    struct wake_opts o = {.net = WAKE_NET_FD, .net_fd = sv[0]};
    /* Fails without a callback table, and the descriptor handed over is
     * closed all the same. */
    assert_int_equal(wake_start(&T.loop, &o, NULL, &T, &T.w), -EINVAL);
    assert_int_equal(fcntl(sv[0], F_GETFD), -1);
    assert_int_equal(errno, EBADF);
    close(sv[1]);
    o.net_fd = -1;
    assert_int_equal(wake_start(&T.loop, &o, &CB, &T, &T.w), -EINVAL);
    uv_close((uv_handle_t *)&T.check, NULL);
    uv_close((uv_handle_t *)&T.feed, NULL);
    t_run();
}

/* ---- network changes through a socketpair ------------------------------ */

struct nlbuf {
    char data[8192];
    size_t len;
};

static void nl_add(struct nlbuf *b, uint16_t type, const void *payload, size_t plen)
{
    struct nlmsghdr nh = {.nlmsg_len = (uint32_t)NLMSG_LENGTH(plen), .nlmsg_type = type};
    assert_true(b->len + NLMSG_SPACE(plen) <= sizeof(b->data));
    memcpy(b->data + b->len, &nh, sizeof(nh));
    if (plen > 0) {
        memcpy(b->data + b->len + NLMSG_HDRLEN, payload, plen);
    }
    b->len += NLMSG_SPACE(plen);
}

static void nl_add_link(struct nlbuf *b, bool wireless)
{
    struct {
        struct ifinfomsg ifi;
        struct rtattr rta;
        char name[8];
    } m;
    memset(&m, 0, sizeof(m));
    m.ifi.ifi_family = AF_UNSPEC;
    m.ifi.ifi_index = 2;
    m.rta.rta_type = wireless ? IFLA_WIRELESS : IFLA_IFNAME;
    m.rta.rta_len = RTA_LENGTH(sizeof(m.name));
    memcpy(m.name, "wlan0", 6);
    nl_add(b, RTM_NEWLINK, &m, sizeof(m));
}

static void nl_add_addr(struct nlbuf *b)
{
    struct ifaddrmsg ifa = {.ifa_family = AF_INET, .ifa_prefixlen = 24, .ifa_index = 2};
    nl_add(b, RTM_NEWADDR, &ifa, sizeof(ifa));
}

static void nl_add_route(struct nlbuf *b, uint16_t type, unsigned flags)
{
    struct rtmsg rtm = {.rtm_family = AF_INET6, .rtm_table = RT_TABLE_MAIN, .rtm_flags = flags};
    nl_add(b, type, &rtm, sizeof(rtm));
}

static void nl_send(const struct nlbuf *b)
{
    assert_int_equal(send(T.peer, b->data, b->len, 0), (ssize_t)b->len);
    T.t_last_sent = uv_now(&T.loop);
}

static void start_pair(unsigned debounce_ms)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
    T.peer = sv[1];
    struct wake_opts o = {.debounce_ms = debounce_ms, .net = WAKE_NET_FD, .net_fd = sv[0]};
    assert_int_equal(wake_start(&T.loop, &o, &CB, &T, &T.w), 0);
}

static void send_burst(void)
{
    /* 100 change messages in 40 datagrams: link, address, route. */
    unsigned sent = 0;
    for (unsigned d = 0; sent < 100; d++) {
        struct nlbuf b = {.len = 0};
        for (unsigned i = 0; i <= d % 4 && sent < 100; i++, sent++) {
            switch (sent % 3) {
            case 0:
                nl_add_link(&b, false);
                break;
            case 1:
                nl_add_addr(&b);
                break;
            default:
                nl_add_route(&b, RTM_NEWROUTE, 0);
                break;
            }
        }
        nl_send(&b);
    }
}

static void on_second_burst(uv_timer_t *t)
{
    (void)t;
    /* The first burst has been reported and things were quiet since: one
     * more message is a new change. */
    assert_int_equal(T.changes, 1);
    struct nlbuf b = {.len = 0};
    nl_add_addr(&b);
    nl_send(&b);
    T.stop_at = uv_now(&T.loop) + 250;
}

static void test_burst_is_one_change(void **state)
{
    (void)state;
    t_init();
    start_pair(50);
    send_burst();
    uint64_t t0 = uv_now(&T.loop);
    uv_timer_start(&T.feed, on_second_burst, 250, 0);
    T.stop_at = t0 + 10000; /* a guard; on_second_burst sets the real end */
    t_run();
    assert_int_equal(T.changes, 2);
    /* Not before the quiet time, after the burst and after the single
     * message. */
    assert_true(T.t_change[0] >= t0 + 50);
    assert_true(T.t_change[0] < t0 + 250);
    assert_true(T.t_change[1] >= t0 + 250 + 50);
}

static void test_noise_is_not_a_change(void **state)
{
    (void)state;
    t_init();
    start_pair(20);
    struct nlbuf b = {.len = 0};
    nl_add_link(&b, true); /* a wireless scan result */
    nl_add_route(&b, RTM_NEWROUTE, RTM_F_CLONED);
    nl_add(&b, NLMSG_DONE, "\0\0\0\0", 4);
    nl_add(&b, NLMSG_NOOP, NULL, 0);
    struct ndmsg nd = {.ndm_family = AF_INET};
    nl_add(&b, RTM_NEWNEIGH, &nd, sizeof(nd));
    nl_send(&b);
    T.stop_at = uv_now(&T.loop) + 150;
    t_run();
    assert_int_equal(T.changes, 0);
}

static void test_noise_counted(void **state)
{
    (void)state;
    /* The same, checking the counters while the module is open. */
    t_init();
    start_pair(20);
    struct nlbuf b = {.len = 0};
    nl_add_link(&b, true);
    nl_add_route(&b, RTM_DELROUTE, RTM_F_CLONED);
    nl_add(&b, NLMSG_DONE, "\0\0\0\0", 4);
    nl_add(&b, NLMSG_ERROR, "\0\0\0\0", 4);
    struct ndmsg nd = {.ndm_family = AF_INET};
    nl_add(&b, RTM_DELNEIGH, &nd, sizeof(nd));
    nl_send(&b);
    assert_int_equal(uv_run(&T.loop, UV_RUN_NOWAIT), 1);
    struct wake_stats st;
    wake_get_stats(T.w, &st);
    assert_int_equal(st.net_messages, 0);
    assert_int_equal(st.net_ignored, 5);
    finish();
    t_run();
    assert_int_equal(T.changes, 0);
}

static void on_feed(uv_timer_t *t)
{
    (void)t;
    struct nlbuf b = {.len = 0};
    nl_add_route(&b, RTM_DELROUTE, 0);
    nl_send(&b);
    if (--T.feed_left == 0) {
        uv_timer_stop(&T.feed);
        T.feeding = false;
        T.stop_at = uv_now(&T.loop) + 200;
    }
}

static void test_endless_stream_still_reported(void **state)
{
    (void)state;
    /* A route message every 10 ms for 0.6 s never leaves 40 ms of quiet;
     * the change is reported all the same, at most 5 x 40 ms after the
     * first message (give or take the loop), while the stream goes on. */
    t_init();
    start_pair(40);
    uint64_t t0 = uv_now(&T.loop);
    T.feed_left = 60;
    T.feeding = true;
    uv_timer_start(&T.feed, on_feed, 10, 10);
    T.stop_at = t0 + 10000;
    t_run();
    assert_true(T.changes >= 2);
    assert_true(T.t_change[0] <= t0 + 10 + 200 + 200);
    assert_true(T.t_change[0] < T.t_last_sent);
}

/* ---- a real network namespace ------------------------------------------ */

/* The forked child's findings, sent to the parent through a pipe. */
struct ns_result {
    int skip; /* 1: not permitted here; reason says why */
    char reason[200];
    char how[64]; /* what changed the network */
    int changes;
    uint64_t overruns;
    uint64_t messages;
};

static int run_quiet(const char *cmd)
{
    char *full = xasprintf("%s >/dev/null 2>&1", cmd);
    int rc = system(full);
    free(full);
    return rc;
}

/* In the child: a new network namespace, wake on it, one change. */
static void ns_child(int out, bool overrun)
{
    struct ns_result r;
    memset(&r, 0, sizeof(r));
    if (unshare(CLONE_NEWNET) != 0) {
        r.skip = 1;
        snprintf(r.reason, sizeof(r.reason), "unshare(CLONE_NEWNET): %s (needs CAP_SYS_ADMIN)",
                 strerror(errno));
        goto out;
    }
    if (run_quiet("ip link show lo") != 0) {
        r.skip = 1;
        snprintf(r.reason, sizeof(r.reason), "the ip command (iproute2) is not available");
        goto out;
    }
    t_init();
    struct wake_opts o = {.debounce_ms = 100};
    if (overrun) {
        /* The smallest receive buffer the kernel allows holds a message or
         * two: the change below floods it. */
        int fd = wake_netlink_open(1);
        if (fd < 0) {
            r.skip = 1;
            snprintf(r.reason, sizeof(r.reason), "netlink socket: %s", strerror(-fd));
            goto out;
        }
        o.net = WAKE_NET_FD;
        o.net_fd = fd;
    }
    int rc = wake_start(&T.loop, &o, &CB, &T, &T.w);
    if (rc != 0) {
        r.skip = 1;
        snprintf(r.reason, sizeof(r.reason), "netlink socket: %s", strerror(-rc));
        goto out;
    }
    /* The change happens before the loop runs, so what the kernel sent
     * waits in the socket (or overflowed it). */
    if (overrun) {
        FILE *f = popen("ip -batch - >/dev/null 2>&1", "w");
        for (int i = 0; f != NULL && i < 100; i++) {
            fprintf(f, "link set lo up\nlink set lo down\n");
        }
        if (f == NULL || pclose(f) != 0) {
            r.skip = 1;
            snprintf(r.reason, sizeof(r.reason), "ip -batch failed: CAP_NET_ADMIN missing?");
        }
        snprintf(r.how, sizeof(r.how), "lo up/down x100");
    } else if (run_quiet("ip link add mswake0 type dummy") == 0) {
        snprintf(r.how, sizeof(r.how), "ip link add mswake0 type dummy");
    } else if (run_quiet("ip link set lo up") == 0) {
        /* No dummy driver in this kernel (containers often lack it). */
        snprintf(r.how, sizeof(r.how), "ip link set lo up (no dummy driver)");
    } else {
        r.skip = 1;
        snprintf(r.reason, sizeof(r.reason), "ip link add/set failed: CAP_NET_ADMIN missing?");
    }
    if (r.skip) {
        finish();
        t_run();
        goto out;
    }
    /* Long enough for a second callback, were there one: five debounce
     * periods after the last change could have come in. */
    T.stop_at = uv_now(&T.loop) + 1000;
    t_run();
    r.changes = T.changes;
    r.overruns = T.st.net_overruns;
    r.messages = T.st.net_messages;
out:
    (void)!write(out, &r, sizeof(r));
    close(out);
    _exit(0);
}

static void ns_test(bool overrun, struct ns_result *r)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        ns_child(p[1], overrun);
    }
    close(p[1]);
    memset(r, 0, sizeof(*r));
    assert_int_equal(read(p[0], r, sizeof(*r)), (ssize_t)sizeof(*r));
    close(p[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (r->skip) {
        printf("skipped: %s\n", r->reason);
        skip();
    }
    printf("network change: %s: %d callback(s), %llu messages, %llu overruns\n", r->how, r->changes,
           (unsigned long long)r->messages, (unsigned long long)r->overruns);
}

static void test_netns_link_change(void **state)
{
    (void)state;
    struct ns_result r;
    ns_test(false, &r);
    assert_int_equal(r.changes, 1);
}

static void test_netns_overrun(void **state)
{
    (void)state;
    struct ns_result r;
    ns_test(true, &r);
    assert_int_equal(r.changes, 1);
    assert_true(r.overruns >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sleep_detected),
        cmocka_unit_test(test_real_clocks),
        cmocka_unit_test(test_close_inside_callback),
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_burst_is_one_change),
        cmocka_unit_test(test_noise_is_not_a_change),
        cmocka_unit_test(test_noise_counted),
        cmocka_unit_test(test_endless_stream_still_reported),
        cmocka_unit_test(test_netns_link_change),
        cmocka_unit_test(test_netns_overrun),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
