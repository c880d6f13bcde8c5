/* Helpers shared by the IMAP client's source files (sync/imap*.c, not the
 * parser). Not part of the public interface. */
#ifndef MAILSYNC_IMAP_INT_H
#define MAILSYNC_IMAP_INT_H

/* In a command's trace text, the mark after a literal's size where the
 * writer puts "+" when it sends the literal non-synchronizing (LITERAL+,
 * LITERAL-): which form goes out is known only then. */
#define IMAP_TRACE_LITERAL "\x01"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Parses an IMAP date-time ("17-Jul-1996 02:44:25 -0700", day may be
 * space-padded). Returns 0 or -EINVAL. */
int imap_parse_datetime(const char *s, time_t *t_r);
/* Formats t as an IMAP date-time in UTC into buf (at least 32 bytes). */
void imap_format_datetime(time_t t, char *buf, size_t size);

/* Converts a mailbox name from the server (modified UTF-7 unless utf8,
 * server delimiter delim, '\0' for none) to UTF-8 with '/' separators.
 * Returns 0 and *name_r (malloc'd), or -EINVAL with *why_r a static
 * explanation of why the folder cannot be synced. */
int imap_name_from_server(const char *raw, size_t len, char delim, bool utf8, char **name_r,
                          const char **why_r);
/* The reverse: UTF-8 '/' separated name to the server's form. Returns 0
 * and *raw_r, or -EINVAL with *why_r. */
int imap_name_to_server(const char *name, char delim, bool utf8, char **raw_r, const char **why_r);

#endif
