/* Logging for every module.
 *
 * Messages go to stderr (the systemd journal when run as a service) with a
 * level prefix. log_warn appends strerror(errno); log_warnx does not; fatal
 * logs and exits with status 1. Secrets must never be passed to these
 * functions: callers redact passwords and tokens before logging. */
#ifndef MAILSYNC_LOG_H
#define MAILSYNC_LOG_H

#include <stdarg.h>

enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARN = 1,
    LOG_LEVEL_INFO = 2,
    LOG_LEVEL_DEBUG = 3,
    LOG_LEVEL_TRACE = 4,
};

/* Sets the most verbose level printed (default LOG_LEVEL_INFO). */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Prefixes every line with a timestamp when on (default off: journald adds
 * its own). */
void log_set_timestamps(int on);

/* Journal mode: every line starts with its syslog priority as "<N>" (3
 * error, 4 warning, 6 info, 7 debug and trace), which journald reads from a
 * service's stderr stream, and timestamps are left out (the journal records
 * its own). It is switched on by itself before the first line is written
 * when stderr is the journal stream systemd names in JOURNAL_STREAM;
 * log_set_journal overrides that. */
void log_set_journal(int on);
int log_get_journal(void);
/* Whether journal_stream (the value of JOURNAL_STREAM, "DEVICE:INODE" in
 * decimal) names the file open on fd, as systemd.exec(5) says to check:
 * stderr may have been redirected since systemd set the variable (by a
 * shell, or in a child process), and then it is no journal stream. 0 for
 * NULL, a malformed value, or a descriptor that cannot be examined. */
int log_journal_stream_matches(const char *journal_stream, int fd);

#define LOG_PRINTF(a, b) __attribute__((format(printf, a, b)))

void log_error(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_warn(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_warnx(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_info(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_debug(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_trace(const char *fmt, ...) LOG_PRINTF(1, 2);
void fatal(const char *fmt, ...) LOG_PRINTF(1, 2) __attribute__((noreturn));
void fatalx(const char *fmt, ...) LOG_PRINTF(1, 2) __attribute__((noreturn));
void log_vmsg(enum log_level level, const char *fmt, va_list ap) LOG_PRINTF(2, 0);

#define log_enabled(level) (log_get_level() >= (level))

#endif
