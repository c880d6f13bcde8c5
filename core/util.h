/* Small helpers shared by every module: allocation that cannot fail (an
 * allocation failure aborts the process, as it would be unrecoverable in a
 * sync engine anyway), a growable string buffer, and path utilities. */
#ifndef MAILSYNC_UTIL_H
#define MAILSYNC_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

void *xmalloc(size_t size);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *ptr, size_t size);
/* Grows *ptr so that it holds at least need elements of elem bytes,
 * doubling *cap as needed. */
void xgrow(void *ptr_p, size_t *cap, size_t need, size_t elem);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *xvasprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

/* A growable byte buffer, always NUL-terminated. Zero-initialise to use;
 * sbuf_free releases it. */
struct sbuf {
    char *buf;
    size_t len;
    size_t cap;
};

void sbuf_add(struct sbuf *sb, const void *data, size_t len);
void sbuf_adds(struct sbuf *sb, const char *s);
void sbuf_addc(struct sbuf *sb, char c);
void sbuf_addf(struct sbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sbuf_reset(struct sbuf *sb);
/* Returns the buffer (caller frees) and leaves sb empty. */
char *sbuf_detach(struct sbuf *sb);
void sbuf_free(struct sbuf *sb);

/* An index over strings kept elsewhere (usually in the caller's array),
 * for lookups in constant time where a linear search would make a long
 * listing quadratic. It holds each entry's hash and position only: the
 * caller hashes its key (normalised as its equality needs, e.g. the INBOX
 * level in one case), and checks each candidate strindex_next yields with
 * its own comparison. Zero-initialise to use; strindex_free releases it. */
struct strindex {
    uint64_t *hash;
    size_t *pos;
    size_t cap; /* slots, a power of two, or 0 */
    size_t n;
};

uint64_t str_hash(const void *data, size_t len);
void strindex_add(struct strindex *x, uint64_t hash, size_t pos);
/* Yields the positions added with this hash, one per call: start with
 * *iter_r = 0, stop when it returns false. */
bool strindex_next(const struct strindex *x, uint64_t hash, size_t *iter_r, size_t *pos_r);
void strindex_reset(struct strindex *x);
void strindex_free(struct strindex *x);

/* Expands a leading "~" or "~/" (from $HOME) and $VAR / ${VAR} anywhere in
 * path. Returns 0 and a new string in *out_r, or -1 with a message in *err_r
 * (caller frees) naming the undefined variable. */
int path_expand(const char *path, char **out_r, char **err_r);

/* Creates dir and any missing parents with mode (existing ones are left as
 * they are). Returns 0 or a negative errno. */
int mkdir_p(const char *dir, mode_t mode);
/* The same; with durable, every directory it created and the parent of the
 * first one are fsynced, so the new path survives a crash. */
int mkdir_p_durable(const char *dir, mode_t mode, bool durable);
/* The same, but each directory whose fsync would make the new entries
 * durable is handed to need_sync (which returns 0 or a negative errno that
 * stops the walk) instead of being fsynced here: a caller making many
 * folders at once can fsync each directory once, later. */
int mkdir_p_each(const char *dir, mode_t mode, int (*need_sync)(const char *path, void *arg),
                 void *arg);

/* fsyncs the directory at path. Returns 0 or a negative errno. */
int fsync_dir(const char *path);

/* Joins two path parts with exactly one '/'. */
char *path_join(const char *a, const char *b);

/* Monotonic time in milliseconds, for timeouts and rates. */
unsigned long long now_ms(void);
/* CLOCK_REALTIME in nanoseconds (the clock of file change times). */
int64_t realtime_ns(void);
/* Decodes one UTF-8 sequence at s (n bytes available): returns its length
 * with the code point in *cp_r, or 0 when the bytes there are not UTF-8
 * (overlong forms, surrogates and code points above U+10FFFF included). */
size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp_r);
/* Appends s as a JSON string (RFC 8259 section 7), or null for NULL:
 * control characters escaped, bytes that are not UTF-8 as U+FFFD (JSON
 * text is UTF-8), U+2028/U+2029 escaped (line breaks to JavaScript). */
void sbuf_add_json(struct sbuf *sb, const char *s);
/* The string value of "key" in a flat JSON object such as the daemon's
 * replies (the first "key": followed by a string), decoded (escapes,
 * \uXXXX with surrogate pairs, to UTF-8). NULL when absent, not a string
 * or malformed. Caller frees. */
char *json_string_field(const char *json, const char *key);
/* The same for a non-negative integer or a boolean (true 1, false 0).
 * Returns 0 and *v_r, or -1 when absent or of another type. */
int json_uint_field(const char *json, const char *key, unsigned long long *v_r);
/* Makes text safe to print on a terminal, in place: C0 controls except TAB,
 * DEL, C1 controls, Unicode bidi controls and bytes that are not UTF-8 each
 * become '?'. Returns the new length (never more than len). */
size_t term_safe(char *buf, size_t len);

/* The environment for any command mailsync starts (hooks,
 * password_command): its own environment without NOTIFY_SOCKET,
 * WATCHDOG_USEC and WATCHDOG_PID (a child that notified systemd would
 * speak for the daemon, one that pinged the watchdog would hide a hung
 * daemon), and without any variable that extra sets, followed by extra
 * (NULL-terminated "NAME=value" strings, each name once; NULL adds
 * nothing). A NULL-terminated array of new strings, for
 * uv_process_options_t.env; free it with child_env_free. */
char **child_env(const char *const *extra);
void child_env_free(char **env);

#endif
