#include "core/log.h"

#include "core/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

static enum log_level log_level = LOG_LEVEL_INFO;
static int log_timestamps;
/* Decided once, before the first line, by journal_detect (uv_once, since
 * threadpool jobs log too); log_set_journal changes it afterwards. */
static uv_once_t log_journal_once = UV_ONCE_INIT;
static int log_journal;

/* The syslog priority journald reads from a "<N>" prefix. */
static const char log_level_priority[] = {
    [LOG_LEVEL_ERROR] = '3', [LOG_LEVEL_WARN] = '4',  [LOG_LEVEL_INFO] = '6',
    [LOG_LEVEL_DEBUG] = '7', [LOG_LEVEL_TRACE] = '7',
};

static const char *const log_level_names[] = {
    [LOG_LEVEL_ERROR] = "error", [LOG_LEVEL_WARN] = "warning", [LOG_LEVEL_INFO] = "info",
    [LOG_LEVEL_DEBUG] = "debug", [LOG_LEVEL_TRACE] = "trace",
};

void log_set_level(enum log_level level)
{
    log_level = level;
}

enum log_level log_get_level(void)
{
    return log_level;
}

void log_set_timestamps(int on)
{
    log_timestamps = on;
}

int log_journal_stream_matches(const char *journal_stream, int fd)
{
    if (journal_stream == NULL) {
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long dev = strtoull(journal_stream, &end, 10);
    if (errno != 0 || end == journal_stream || *end != ':') {
        return 0;
    }
    const char *ino_s = end + 1;
    unsigned long long ino = strtoull(ino_s, &end, 10);
    if (errno != 0 || end == ino_s || *end != '\0') {
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        return 0;
    }
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

static void journal_detect(void)
{
    log_journal = log_journal_stream_matches(getenv("JOURNAL_STREAM"), STDERR_FILENO);
}

void log_set_journal(int on)
{
    uv_once(&log_journal_once, journal_detect);
    log_journal = on;
}

int log_get_journal(void)
{
    uv_once(&log_journal_once, journal_detect);
    return log_journal;
}

static void log_line(enum log_level level, const char *fmt, va_list ap, const char *suffix)
    __attribute__((format(printf, 2, 0)));

static void log_line(enum log_level level, const char *fmt, va_list ap, const char *suffix)
{
    if (level > log_level) {
        return;
    }
    /* Build the whole line first so that concurrent writers (threadpool jobs)
     * never interleave within a line. */
    char buf[4096];
    size_t off = 0;
    if (level > LOG_LEVEL_TRACE) {
        level = LOG_LEVEL_TRACE;
    }
    int journal = log_get_journal();
    if (journal) {
        buf[off++] = '<';
        buf[off++] = log_level_priority[level];
        buf[off++] = '>';
    } else if (log_timestamps) {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        off += strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
        off += (size_t)snprintf(buf + off, sizeof(buf) - off, ".%03ld ", ts.tv_nsec / 1000000);
    }
    if (level != LOG_LEVEL_INFO) {
        off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s: ", log_level_names[level]);
    }
    int n = vsnprintf(buf + off, sizeof(buf) - off, fmt, ap);
    if (n > 0) {
        off += (size_t)n;
    }
    if (off >= sizeof(buf)) {
        off = sizeof(buf) - 1;
    }
    if (suffix != NULL) {
        n = snprintf(buf + off, sizeof(buf) - off, ": %s", suffix);
        if (n > 0) {
            off += (size_t)n;
        }
        if (off >= sizeof(buf)) {
            off = sizeof(buf) - 1;
        }
    }
    if (off >= sizeof(buf) - 1) {
        off = sizeof(buf) - 2;
    }
    /* Text from servers ends up here: control characters could forge log
     * lines or drive the terminal, and bidi controls could disguise a name,
     * so they are shown as '?'. */
    off = term_safe(buf, off);
    buf[off++] = '\n';
    fwrite(buf, 1, off, stderr);
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
    log_line(level, fmt, ap, NULL);
}

#define LOG_FN(name, level)                                                                        \
    void name(const char *fmt, ...)                                                                \
    {                                                                                              \
        va_list ap;                                                                                \
        va_start(ap, fmt);                                                                         \
        log_line(level, fmt, ap, NULL);                                                            \
        va_end(ap);                                                                                \
    }

LOG_FN(log_error, LOG_LEVEL_ERROR)
LOG_FN(log_warnx, LOG_LEVEL_WARN)
LOG_FN(log_info, LOG_LEVEL_INFO)
LOG_FN(log_debug, LOG_LEVEL_DEBUG)
LOG_FN(log_trace, LOG_LEVEL_TRACE)

void log_warn(const char *fmt, ...)
{
    int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    log_line(LOG_LEVEL_WARN, fmt, ap, strerror(saved));
    va_end(ap);
    errno = saved;
}

void fatal(const char *fmt, ...)
{
    int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    log_line(LOG_LEVEL_ERROR, fmt, ap, strerror(saved));
    va_end(ap);
    exit(1);
}

void fatalx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_line(LOG_LEVEL_ERROR, fmt, ap, NULL);
    va_end(ap);
    exit(1);
}
