/* RFC 5322 header fields as a mail reader sees them: find a field's value
 * in a header block, and parse a Date (obsolete forms and asctime
 * accepted, as old and broken mail uses them). Pure functions, no state;
 * strings returned are malloc'd and owned by the caller. */
#ifndef MAILSYNC_RFC5322_H
#define MAILSYNC_RFC5322_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/* Parses an RFC 5322 date (obsolete forms and asctime accepted) into unix
 * seconds. Unknown zone names count as UTC (RFC 5322 section 4.3). Returns
 * false when it cannot. */
bool rfc5322_parse_date(const char *s, time_t *t_r);

/* Finds the value of the header field name (case-insensitive) in a header
 * block (LF endings; it ends at the first empty line), folded lines
 * unfolded, CR and NUL turned into spaces; malloc'd, NULL when absent. */
char *rfc5322_find_header(const char *headers, size_t len, const char *name);

#endif
