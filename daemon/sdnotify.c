#include "daemon/sdnotify.h"

#include "core/util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int sdn_notify(const char *msg)
{
    const char *name = getenv("NOTIFY_SOCKET");
    if (name == NULL || name[0] == '\0') {
        return 0;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    if (name[0] != '/' && name[0] != '@') {
        return -EAFNOSUPPORT;
    }
    if (len > sizeof(sa.sun_path) || (name[0] == '/' && len == sizeof(sa.sun_path))) {
        return -ENAMETOOLONG;
    }
    memcpy(sa.sun_path, name, len);
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    if (name[0] == '@') {
        /* An abstract name: a leading NUL, and the length (not a
         * terminator) says where it ends. */
        sa.sun_path[0] = '\0';
    } else {
        salen++;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return -errno;
    }
    int rc = 0;
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0) {
        rc = -errno;
    }
    close(fd);
    return rc;
}

int sdn_ready(void)
{
    return sdn_notify("READY=1");
}

int sdn_stopping(void)
{
    return sdn_notify("STOPPING=1");
}

int sdn_status(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = xvasprintf(fmt, ap);
    va_end(ap);
    char *msg = xasprintf("STATUS=%s", text);
    free(text);
    for (char *p = msg; *p != '\0'; p++) {
        if (*p == '\n' || *p == '\r') {
            *p = ' ';
        }
    }
    int rc = sdn_notify(msg);
    free(msg);
    return rc;
}

int sdn_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long usec =
        (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL;
    char msg[64];
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
    return sdn_notify(msg);
}

struct sdn_watchdog {
    uv_timer_t timer;
    uint64_t interval_usec;
};

/* A positive decimal number with nothing after it, or 0. */
static unsigned long long parse_positive(const char *s)
{
    if (s == NULL || *s < '0' || *s > '9') {
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0') {
        return 0;
    }
    return v;
}

static void on_watchdog_timer(uv_timer_t *timer)
{
    /* A failed ping is not worth a log line every few seconds: systemd
     * notices missing pings by itself. */
    (void)sdn_notify("WATCHDOG=1");
}

int sdn_watchdog_start(uv_loop_t *loop, struct sdn_watchdog **wd_r)
{
    *wd_r = NULL;
    const char *sock = getenv("NOTIFY_SOCKET");
    const char *usec_s = getenv("WATCHDOG_USEC");
    if (sock == NULL || sock[0] == '\0' || usec_s == NULL) {
        return 0;
    }
    unsigned long long usec = parse_positive(usec_s);
    if (usec == 0) {
        return -EINVAL;
    }
    /* WATCHDOG_PID names the process systemd expects the pings from; a
     * variable inherited by some other process (a shell started from the
     * service, our own child) must not make it ping for us. */
    const char *pid_s = getenv("WATCHDOG_PID");
    if (pid_s != NULL) {
        unsigned long long pid = parse_positive(pid_s);
        if (pid == 0) {
            return -EINVAL;
        }
        if (pid != (unsigned long long)getpid()) {
            return 0;
        }
    }
    struct sdn_watchdog *wd = xcalloc(1, sizeof(*wd));
    wd->interval_usec = usec / 2;
    uint64_t ms = wd->interval_usec / 1000;
    if (ms == 0) {
        ms = 1;
    }
    uv_timer_init(loop, &wd->timer);
    uv_timer_start(&wd->timer, on_watchdog_timer, ms, ms);
    uv_unref((uv_handle_t *)&wd->timer);
    *wd_r = wd;
    return 1;
}

uint64_t sdn_watchdog_interval_usec(const struct sdn_watchdog *wd)
{
    return wd->interval_usec;
}

static void on_watchdog_closed(uv_handle_t *handle)
{
    free(handle->data);
}

void sdn_watchdog_stop(struct sdn_watchdog *wd)
{
    if (wd == NULL) {
        return;
    }
    wd->timer.data = wd;
    uv_close((uv_handle_t *)&wd->timer, on_watchdog_closed);
}
