/* Facts about a message used to match it across sides: where its header
 * block ends, hashes of that block and of its Message-ID, and what a local
 * file's header block holds. The IMAP engine matches a server message to a
 * Maildir file by them (Message-ID, else the cleaned header hash); the POP3
 * engine recognises a message under a reused or renumbered UIDL by its raw
 * header hash.
 *
 * Every hash is SHA-256 truncated to MSGFACTS_HASH_LEN bytes. Indexes hold
 * these hashes (idx_msg.msgid_hash, idx_pop.header_hash), so what each
 * function hashes must never change: tests/unit/test_msgfacts.c pins the
 * bytes.
 *
 * The two header hashes differ on purpose and are not interchangeable:
 *   - msgfacts_header_hash (IMAP) hashes the block as plan_header_clean
 *     gives it, so that a Maildir copy (LF, maybe with mbsync's X-TUID)
 *     and the server's copy (CRLF) hash alike;
 *   - struct msgfacts_rawhash (POP3) hashes the bytes as they arrive (LF
 *     endings from the POP3 client), streamed, up to the empty line.
 *
 * No state beyond the caller's struct msgfacts_rawhash; strings returned
 * are malloc'd and owned by the caller. */
#ifndef MAILSYNC_MSGFACTS_H
#define MAILSYNC_MSGFACTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MSGFACTS_HASH_LEN 16
/* Header bytes read from a file or hashed from a stream at most: a header
 * longer than this is hostile or broken, and must not make us hold or hash
 * an unbounded amount. */
#define MSGFACTS_HEADER_MAX (1024u * 1024)

/* SHA-256 of len bytes, truncated; all zero if OpenSSL fails. The building
 * block of every hash below. */
void msgfacts_digest(const void *data, size_t len, uint8_t out[MSGFACTS_HASH_LEN]);

/* The end of the header block in buf (just past its empty line, LF or
 * CRLF), or 0 when it is not complete yet; the search starts at from
 * (bytes before it were searched already: pass the previous length minus
 * 2 so that an empty line split between two reads is found). A buffer that
 * starts with an empty line has an empty header. */
size_t msgfacts_header_end(const char *buf, size_t len, size_t from);

/* The hash of a header block as plan_header_clean gives it: CRLF taken as
 * LF, and the lines other sync tools and mail readers add (X-TUID, Status,
 * X-Status) left out. *strip_r (may be NULL) gets the wire size of those
 * lines. */
void msgfacts_header_hash(const char *h, size_t len, uint8_t out[MSGFACTS_HASH_LEN],
                          uint64_t *strip_r);

/* The hash of a Message-ID (as imap_header_message_id extracts it, or any
 * other string, e.g. a long folder name); all zero for NULL. */
void msgfacts_msgid_hash(const char *id, uint8_t out[MSGFACTS_HASH_LEN]);
/* The 8-byte hash of an EMAILID (RFC 8474) kept in idx_msg.emailid_hash:
 * the first bytes of its SHA-256, never all zero (zero means unknown). */
void msgfacts_emailid_hash(const char *id, uint8_t out[8]);

/* Reads the header block of a local file (up to and including the first
 * empty line, or the whole file when it has none): its Message-ID (or
 * NULL) into *msgid_r, its msgfacts_header_hash into hh with *have_hh_r
 * set, and (strip_r, may be NULL) the wire size of the lines the hash
 * leaves out. A header longer than MSGFACTS_HEADER_MAX gives only the
 * Message-ID its first part holds: no hash (hh untouched, *have_hh_r
 * false) and no such lines. Reads with pread from offset 0 (the file
 * position does not move). Returns 0 or a negative errno. */
int msgfacts_read_file(int fd, char **msgid_r, uint8_t hh[MSGFACTS_HASH_LEN], bool *have_hh_r,
                       uint64_t *strip_r);

/* The raw header hash, fed as a message streams in: the bytes up to, not
 * including, the empty line that ends the header (the LF-only "\n\n"), or
 * the first MSGFACTS_HEADER_MAX bytes; the whole input when it has neither.
 * Chunk boundaries do not matter. Init before use, then feed, then final
 * (out is valid after it); free releases the digest whatever the state
 * (safe twice, and after final). */
struct msgfacts_rawhash {
    struct evp_md_ctx_st *ctx; /* OpenSSL's EVP_MD_CTX */
    bool bol;                  /* at the beginning of a line */
    bool done;
    size_t n; /* bytes seen */
    uint8_t out[MSGFACTS_HASH_LEN];
};

void msgfacts_rawhash_init(struct msgfacts_rawhash *h);
void msgfacts_rawhash_feed(struct msgfacts_rawhash *h, const char *data, size_t len);
void msgfacts_rawhash_final(struct msgfacts_rawhash *h);
void msgfacts_rawhash_free(struct msgfacts_rawhash *h);

#endif
