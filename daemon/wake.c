/* Sleep and network-change detection; see wake.h for the contract.
 *
 * Lifetime: the struct holds a tick timer, a debounce timer and (unless
 * WAKE_NET_NONE) a poll handle. wake_close closes all of them; the last
 * close callback frees the struct, and the poll handle's close callback
 * closes the socket first (libuv must stop polling a descriptor before it
 * is closed). */
#include "daemon/wake.h"

#include "core/log.h"
#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WAKE_DEFAULT_INTERVAL_MS 10000u
#define WAKE_DEFAULT_THRESHOLD_MS 5000u
#define WAKE_DEFAULT_DEBOUNCE_MS 2000u
/* The latest on_net_change comes after the first change of a burst, in
 * debounce periods. */
#define WAKE_MAX_WAIT_FACTOR 5u
/* Kernel notifications are at most a page or two each (NLMSG_GOODSIZE);
 * this holds several, so a burst drains in few system calls. */
#define WAKE_NL_BUF 32768

struct wake {
    uv_loop_t *loop;
    struct wake_cb cb;
    void *arg;
    bool closing;
    unsigned open_handles;

    uint64_t (*boottime_ns)(void *clock_arg);
    uint64_t (*monotonic_ns)(void *clock_arg);
    void *clock_arg;
    uint64_t threshold_ns;
    uint64_t last_boot;
    uint64_t last_mono;
    uv_timer_t tick;

    uint64_t debounce_ms;
    bool change_pending;
    uint64_t first_change; /* loop time of the burst's first change */
    uv_timer_t debounce;
    int fd; /* -1 without network detection */
    bool polling;
    unsigned error_streak; /* POLLERR events in a row that read nothing */
    uv_poll_t poll;
    char *buf;

    struct wake_stats stats;
};

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t real_boottime_ns(void *clock_arg)
{
    (void)clock_arg;
    return clock_ns(CLOCK_BOOTTIME);
}

static uint64_t real_monotonic_ns(void *clock_arg)
{
    (void)clock_arg;
    return clock_ns(CLOCK_MONOTONIC);
}

static void on_tick(uv_timer_t *t)
{
    struct wake *w = t->data;
    uint64_t boot = w->boottime_ns(w->clock_arg);
    uint64_t mono = w->monotonic_ns(w->clock_arg);
    /* Unsigned differences: each clock only moves forwards, and a reader
     * that did not (a broken test clock) must not look like a suspend. */
    uint64_t dboot = boot >= w->last_boot ? boot - w->last_boot : 0;
    uint64_t dmono = mono >= w->last_mono ? mono - w->last_mono : 0;
    w->last_boot = boot;
    w->last_mono = mono;
    w->stats.ticks++;
    if (dboot > dmono && dboot - dmono > w->threshold_ns) {
        uint64_t slept_ms = (dboot - dmono) / 1000000u;
        w->stats.sleeps++;
        log_debug("wake: the machine slept for about %llu s", (unsigned long long)slept_ms / 1000);
        if (w->cb.on_sleep != NULL) {
            w->cb.on_sleep(w, slept_ms, w->arg);
        }
    }
}

static void on_debounce(uv_timer_t *t)
{
    struct wake *w = t->data;
    w->change_pending = false;
    w->stats.net_changes++;
    log_debug("wake: the network changed");
    if (w->cb.on_net_change != NULL) {
        w->cb.on_net_change(w, w->arg);
    }
}

static void note_change(struct wake *w)
{
    uint64_t now = uv_now(w->loop);
    if (!w->change_pending) {
        w->change_pending = true;
        w->first_change = now;
    }
    uint64_t deadline = w->first_change + WAKE_MAX_WAIT_FACTOR * w->debounce_ms;
    uint64_t due = now + w->debounce_ms;
    if (due > deadline) {
        due = deadline;
    }
    uv_timer_start(&w->debounce, on_debounce, due > now ? due - now : 0, 0);
}

/* Whether an RTM_NEWLINK message carries IFLA_WIRELESS: wireless drivers
 * send those for scan results and signal changes, and they say nothing
 * about addresses or routes. */
static bool link_is_wireless_event(const struct nlmsghdr *nh)
{
    if (nh->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg))) {
        return false;
    }
    const struct ifinfomsg *ifi = NLMSG_DATA(nh);
    int len = (int)IFLA_PAYLOAD(nh);
    for (const struct rtattr *rta = IFLA_RTA(ifi); RTA_OK(rta, len); rta = RTA_NEXT(rta, len)) {
        if (rta->rta_type == IFLA_WIRELESS) {
            return true;
        }
    }
    return false;
}

static bool is_change(const struct nlmsghdr *nh)
{
    switch (nh->nlmsg_type) {
    case NLMSG_OVERRUN:
        return true;
    case RTM_NEWLINK:
        return !link_is_wireless_event(nh);
    case RTM_DELLINK:
    case RTM_NEWADDR:
    case RTM_DELADDR:
        return true;
    case RTM_NEWROUTE:
    case RTM_DELROUTE:
        /* Cloned routes are the IPv6 route cache (path MTU, redirects):
         * traffic, not configuration. */
        if (nh->nlmsg_len >= NLMSG_LENGTH(sizeof(struct rtmsg))) {
            const struct rtmsg *rtm = NLMSG_DATA(nh);
            return (rtm->rtm_flags & RTM_F_CLONED) == 0;
        }
        return true;
    default:
        return false; /* NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, other families */
    }
}

static void stop_polling(struct wake *w)
{
    if (w->polling) {
        uv_poll_stop(&w->poll);
        w->polling = false;
    }
}

/* Reads until the socket is empty: a burst is then one debounce, and a
 * level-triggered poll does not wake the loop once per message. */
static void on_readable(uv_poll_t *p, int status, int events)
{
    struct wake *w = p->data;
    (void)events;
    if (status < 0) {
        /* libuv reports POLLERR as UV_EBADF and stops the handle. On a
         * netlink socket POLLERR is a pending socket error, which is how
         * the kernel reports an overrun (ENOBUFS): recvmsg below returns
         * it and clears it, and then polling resumes. An error that
         * neither reads nor clears would spin the loop: after a few in a
         * row, detection stops with a warning. */
        w->polling = false;
        if (++w->error_streak > 3) {
            log_warnx("wake: network change detection stopped: %s", uv_strerror(status));
            return;
        }
        int r = uv_poll_start(&w->poll, UV_READABLE, on_readable);
        if (r < 0) {
            log_warnx("wake: network change detection stopped: %s", uv_strerror(r));
            return;
        }
        w->polling = true;
    }
    bool changed = false;
    for (;;) {
        struct sockaddr_nl from;
        struct iovec iov = {.iov_base = w->buf, .iov_len = WAKE_NL_BUF};
        struct msghdr msg = {
            .msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov, .msg_iovlen = 1};
        memset(&from, 0, sizeof(from));
        ssize_t n = recvmsg(w->fd, &msg, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == ENOBUFS) {
                /* The kernel dropped messages because the buffer was full:
                 * whatever they said, something changed. */
                w->stats.net_overruns++;
                changed = true;
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                log_warn("wake: network change detection stopped: reading the netlink socket");
                stop_polling(w);
            }
            break;
        }
        if (n == 0) {
            break;
        }
        /* Only the kernel (port id 0) reports real changes; a socketpair
         * (tests) has no sender address at all. */
        bool from_kernel =
            msg.msg_namelen < sizeof(from) || from.nl_family != AF_NETLINK || from.nl_pid == 0;
        if ((msg.msg_flags & MSG_TRUNC) != 0 && from_kernel) {
            w->stats.net_messages++;
            changed = true;
            continue;
        }
        size_t len = (size_t)n;
        for (const struct nlmsghdr *nh = (const struct nlmsghdr *)w->buf; NLMSG_OK(nh, len);
             nh = NLMSG_NEXT(nh, len)) {
            if (from_kernel && is_change(nh)) {
                w->stats.net_messages++;
                changed = true;
            } else {
                w->stats.net_ignored++;
            }
        }
    }
    if (changed) {
        note_change(w);
    }
    if (status == 0 || changed) {
        w->error_streak = 0;
    }
}

int wake_netlink_open(int rcvbuf)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) {
        return -errno;
    }
    if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    struct sockaddr_nl sa = {
        .nl_family = AF_NETLINK,
        .nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE |
                     RTMGRP_IPV6_ROUTE,
    };
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct wake *w = h->data;
    if (h == (uv_handle_t *)&w->poll) {
        close(w->fd);
        w->fd = -1;
    }
    if (--w->open_handles == 0) {
        free(w->buf);
        free(w);
    }
}

int wake_start(uv_loop_t *loop, const struct wake_opts *opts, const struct wake_cb *cb, void *arg,
               struct wake **w_r)
{
    int fd = -1;
    if (opts != NULL && opts->net == WAKE_NET_FD) {
        fd = opts->net_fd;
    }
    if (loop == NULL || opts == NULL || cb == NULL || w_r == NULL ||
        (opts->net == WAKE_NET_FD && fd < 0) ||
        (opts->net != WAKE_NET_NETLINK && opts->net != WAKE_NET_FD && opts->net != WAKE_NET_NONE)) {
        if (fd >= 0) {
            close(fd);
        }
        return -EINVAL;
    }
    if (opts->net == WAKE_NET_NETLINK) {
        fd = wake_netlink_open(0);
        if (fd < 0) {
            return fd;
        }
    } else if (fd >= 0) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
            int err = -errno;
            close(fd);
            return err;
        }
    }

    struct wake *w = xcalloc(1, sizeof(*w));
    w->loop = loop;
    w->cb = *cb;
    w->arg = arg;
    w->fd = fd;
    w->boottime_ns = opts->boottime_ns != NULL ? opts->boottime_ns : real_boottime_ns;
    w->monotonic_ns = opts->monotonic_ns != NULL ? opts->monotonic_ns : real_monotonic_ns;
    w->clock_arg = opts->clock_arg;
    w->threshold_ns = (uint64_t)(opts->sleep_threshold_ms ? opts->sleep_threshold_ms
                                                          : WAKE_DEFAULT_THRESHOLD_MS) *
                      1000000u;
    w->debounce_ms = opts->debounce_ms ? opts->debounce_ms : WAKE_DEFAULT_DEBOUNCE_MS;
    unsigned interval = opts->interval_ms ? opts->interval_ms : WAKE_DEFAULT_INTERVAL_MS;

    if (fd >= 0) {
        int r = uv_poll_init(loop, &w->poll, fd);
        if (r < 0) {
            close(fd);
            free(w);
            return r;
        }
        w->poll.data = w;
        w->open_handles++;
        w->buf = xmalloc(WAKE_NL_BUF);
        uv_unref((uv_handle_t *)&w->poll);
        r = uv_poll_start(&w->poll, UV_READABLE, on_readable);
        if (r < 0) {
            w->closing = true;
            uv_close((uv_handle_t *)&w->poll, on_handle_closed);
            return r;
        }
        w->polling = true;
    }

    uv_timer_init(loop, &w->tick);
    w->tick.data = w;
    w->open_handles++;
    uv_unref((uv_handle_t *)&w->tick);
    uv_timer_init(loop, &w->debounce);
    w->debounce.data = w;
    w->open_handles++;
    uv_unref((uv_handle_t *)&w->debounce);

    w->last_boot = w->boottime_ns(w->clock_arg);
    w->last_mono = w->monotonic_ns(w->clock_arg);
    uv_timer_start(&w->tick, on_tick, interval, interval);
    *w_r = w;
    return 0;
}

void wake_get_stats(const struct wake *w, struct wake_stats *stats_r)
{
    *stats_r = w->stats;
}

void wake_close(struct wake *w)
{
    if (w == NULL || w->closing) {
        return;
    }
    w->closing = true;
    uv_close((uv_handle_t *)&w->tick, on_handle_closed);
    uv_close((uv_handle_t *)&w->debounce, on_handle_closed);
    if (w->fd >= 0) {
        w->polling = false;
        uv_close((uv_handle_t *)&w->poll, on_handle_closed);
    }
}
