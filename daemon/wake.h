/* Sleep and network-change detection for the daemon, on its libuv loop,
 * without user hooks and without probing any host.
 *
 * Sleep: a timer ticks every interval_ms and compares how far
 * CLOCK_BOOTTIME moved since the last tick with how far CLOCK_MONOTONIC
 * moved. Both count the same seconds while the machine runs; only
 * CLOCK_BOOTTIME counts a suspend. A difference above sleep_threshold_ms
 * means the machine slept for about that long: on_sleep gets it. A process
 * stopped with SIGSTOP, or a loop that stalled, is not sleep (both clocks
 * moved) and is not reported. Idle cost: one wake-up per interval.
 *
 * Network change: a NETLINK_ROUTE socket subscribed to links, IPv4 and
 * IPv6 addresses and routes, watched with uv_poll. Every readable event
 * drains the socket. Each relevant message, and each receive overrun
 * (ENOBUFS: the kernel dropped messages, so something changed), counts as
 * a change; on_net_change comes once the changes have been quiet for
 * debounce_ms, but never later than 5 x debounce_ms after the first change
 * of the burst (an interface that keeps flapping must not postpone it for
 * ever). A Wi-Fi roam or a DHCP renewal sends dozens of link, address and
 * route messages within a second or two: they give one callback, after
 * the new address is in place. Wireless status messages (RTM_NEWLINK
 * carrying IFLA_WIRELESS, sent during scans), cloned (cache) routes,
 * netlink control messages and messages not sent by the kernel are not
 * changes.
 *
 * The owner (the daemon) answers both callbacks the same way: probe every
 * connection with a short NOOP deadline, reopen dead ones, resync.
 *
 * Loop references: the timers and the poll handle are unref'd. Detection
 * is a background service that must never by itself keep uv_run going, so
 * a daemon whose accounts, control socket and signal handlers have all
 * closed can still run its loop dry; it does not change when the loop
 * wakes up.
 *
 * Ownership: wake_start returns a struct wake owned by the caller.
 * wake_close (exactly once) stops every callback at once and frees the
 * memory from the libuv close callbacks, so the loop then closes clean.
 * Callbacks always come from the loop, never from inside a wake_* call,
 * and the owner may call wake_close from inside one. */
#ifndef MAILSYNC_WAKE_H
#define MAILSYNC_WAKE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct wake;

/* Where network changes come from. */
enum wake_net_source {
    WAKE_NET_NETLINK = 0, /* open a NETLINK_ROUTE socket (the daemon) */
    WAKE_NET_FD,          /* read netlink messages from net_fd (tests) */
    WAKE_NET_NONE,        /* sleep detection only */
};

struct wake_opts {
    unsigned interval_ms;        /* sleep check period; 0 = 10 s */
    unsigned sleep_threshold_ms; /* smallest jump taken for sleep; 0 = 5 s */
    unsigned debounce_ms;        /* network change quiet time; 0 = 2 s */
    enum wake_net_source net;
    /* With WAKE_NET_FD: a datagram socket (a socketpair in tests, or a
     * netlink socket the caller opened and bound) that wake_start makes
     * non-blocking and owns from then on, even when wake_start fails. */
    int net_fd;
    /* Clock readers in nanoseconds, NULL for clock_gettime(CLOCK_BOOTTIME)
     * and clock_gettime(CLOCK_MONOTONIC): a test passes its own to
     * simulate a suspend. Called once at start and once per tick. */
    uint64_t (*boottime_ns)(void *clock_arg);
    uint64_t (*monotonic_ns)(void *clock_arg);
    void *clock_arg;
};

struct wake_cb {
    /* The machine slept for about slept_ms (CLOCK_BOOTTIME gained that
     * much on CLOCK_MONOTONIC since the last tick). May be NULL. */
    void (*on_sleep)(struct wake *w, uint64_t slept_ms, void *arg);
    /* The network changed; debounced as described above. May be NULL. */
    void (*on_net_change)(struct wake *w, void *arg);
};

/* Counters since wake_start, for status output and tests. */
struct wake_stats {
    uint64_t ticks;        /* sleep checks done */
    uint64_t sleeps;       /* on_sleep calls */
    uint64_t net_messages; /* netlink messages taken as changes */
    uint64_t net_ignored;  /* netlink messages that were not changes */
    uint64_t net_overruns; /* ENOBUFS: the kernel dropped messages */
    uint64_t net_changes;  /* on_net_change calls */
};

/* Starts both detectors. Returns 0, or a negative errno / UV_* code with
 * nothing left running (net_fd closed with WAKE_NET_FD). Opening the
 * netlink socket can fail where netlink is not permitted (some sandboxes):
 * the caller may then start again with WAKE_NET_NONE. */
int wake_start(uv_loop_t *loop, const struct wake_opts *opts, const struct wake_cb *cb, void *arg,
               struct wake **w_r);
void wake_get_stats(const struct wake *w, struct wake_stats *stats_r);
void wake_close(struct wake *w);

/* Opens a non-blocking, close-on-exec NETLINK_ROUTE socket bound to the
 * link, IPv4/IPv6 address and IPv4/IPv6 route groups, as wake_start does
 * for WAKE_NET_NETLINK; rcvbuf > 0 sets SO_RCVBUF (tests use a tiny one
 * to provoke an overrun). Returns the descriptor or a negative errno. */
int wake_netlink_open(int rcvbuf);

#endif
