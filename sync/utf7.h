/* Modified UTF-7 (RFC 3501 §5.1.3), the form of IMAP mailbox names, to and
 * from UTF-8.
 *
 * In modified UTF-7 printable US-ASCII (0x20-0x7e) stands for itself except
 * "&", which is written "&-"; everything else is "&", the UTF-16 code units
 * in BASE64 with "," instead of "/" and no padding, then "-". Both
 * directions are strict: a name that does not round-trip exactly is
 * rejected rather than guessed at, since a wrong guess would make a second
 * folder with a slightly different name.
 *
 * Ownership: on success *out_r is a new NUL-terminated string that the
 * caller releases with free(); on failure *out_r is set to NULL and nothing
 * is allocated. The input is never modified. */
#ifndef MAILSYNC_UTF7_H
#define MAILSYNC_UTF7_H

/* Decodes modified UTF-7. Returns 0, or -EILSEQ for: a byte outside
 * 0x20-0x7e, an "&" run that is not closed by "-", a character that is not
 * modified BASE64, leftover bits that are not zero or make up a whole
 * BASE64 character, an unpaired UTF-16 surrogate, a printable US-ASCII
 * character or U+0000 encoded in BASE64, or two BASE64 runs back to back
 * ("-&" while in BASE64, which the RFC forbids). "&-" is "&". */
int utf7_to_utf8(const char *in, char **out_r);

/* Encodes UTF-8 as modified UTF-7. Returns 0, or -EILSEQ when the input is
 * not valid UTF-8: a stray continuation byte, a truncated sequence, an
 * overlong form, a UTF-16 surrogate (U+D800-U+DFFF) or a code point above
 * U+10FFFF. */
int utf8_to_utf7(const char *in, char **out_r);

#endif
