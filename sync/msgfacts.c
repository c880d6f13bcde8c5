/* Facts about a message used to match it across sides: see msgfacts.h. */
#include "sync/msgfacts.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "core/log.h"
#include "core/util.h"
#include "sync/imap.h"
#include "sync/plan.h"

void msgfacts_digest(const void *data, size_t len, uint8_t out[MSGFACTS_HASH_LEN])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    memset(out, 0, MSGFACTS_HASH_LEN);
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) == 1 && mdlen >= MSGFACTS_HASH_LEN) {
        memcpy(out, md, MSGFACTS_HASH_LEN);
    }
}

void msgfacts_header_hash(const char *h, size_t len, uint8_t out[MSGFACTS_HASH_LEN],
                          uint64_t *strip_r)
{
    size_t clen;
    char *clean = plan_header_clean(h, len, &clen, strip_r);
    msgfacts_digest(clean, clen, out);
    free(clean);
}

void msgfacts_msgid_hash(const char *id, uint8_t out[MSGFACTS_HASH_LEN])
{
    if (id == NULL) {
        memset(out, 0, MSGFACTS_HASH_LEN);
        return;
    }
    msgfacts_digest(id, strlen(id), out);
}

void msgfacts_emailid_hash(const char *id, uint8_t out[8])
{
    uint8_t h[MSGFACTS_HASH_LEN];
    msgfacts_digest(id, strlen(id), h);
    memcpy(out, h, 8);
    static const uint8_t zero[8];
    if (memcmp(out, zero, sizeof(zero)) == 0) {
        out[0] = 1;
    }
}

size_t msgfacts_header_end(const char *buf, size_t len, size_t from)
{
    if (from == 0 && len >= 1 && buf[0] == '\n') {
        return 1;
    }
    if (from == 0 && len >= 2 && buf[0] == '\r' && buf[1] == '\n') {
        return 2;
    }
    for (size_t i = from; i + 1 < len; i++) {
        if (buf[i] != '\n') {
            continue;
        }
        if (buf[i + 1] == '\n') {
            return i + 2;
        }
        if (buf[i + 1] == '\r' && i + 2 < len && buf[i + 2] == '\n') {
            return i + 3;
        }
    }
    return 0;
}

int msgfacts_read_file(int fd, char **msgid_r, uint8_t hh[MSGFACTS_HASH_LEN], bool *have_hh_r,
                       uint64_t *strip_r)
{
    struct sbuf sb = {0};
    size_t end = 0;
    off_t off = 0;
    bool eof = false;
    *msgid_r = NULL;
    *have_hh_r = false;
    if (strip_r != NULL) {
        *strip_r = 0;
    }
    while (end == 0 && !eof && sb.len < MSGFACTS_HEADER_MAX) {
        char buf[16384];
        ssize_t n = pread(fd, buf, sizeof(buf), off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            int r = -errno;
            sbuf_free(&sb);
            return r;
        }
        if (n == 0) {
            eof = true;
            break;
        }
        /* An empty line split over two reads is found by looking again at
         * the last two bytes of the previous one. */
        size_t from = sb.len > 2 ? sb.len - 2 : 0;
        sbuf_add(&sb, buf, (size_t)n);
        off += n;
        end = msgfacts_header_end(sb.buf, sb.len, from);
    }
    if (end == 0 && eof) {
        end = sb.len;
    }
    if (end > 0 || sb.len == 0) {
        msgfacts_header_hash(sb.buf != NULL ? sb.buf : "", end, hh, strip_r);
        *have_hh_r = true;
    } else {
        end = sb.len;
    }
    *msgid_r = imap_header_message_id(sb.buf != NULL ? sb.buf : "", end);
    sbuf_free(&sb);
    return 0;
}

void msgfacts_rawhash_init(struct msgfacts_rawhash *h)
{
    memset(h, 0, sizeof(*h));
    h->ctx = EVP_MD_CTX_new();
    if (h->ctx == NULL || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
        fatalx("cannot initialise SHA-256");
    }
    h->bol = true;
}

void msgfacts_rawhash_final(struct msgfacts_rawhash *h)
{
    if (h->ctx == NULL) {
        return;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_DigestFinal_ex(h->ctx, md, &n);
    memcpy(h->out, md, sizeof(h->out));
    EVP_MD_CTX_free(h->ctx);
    h->ctx = NULL;
    h->done = true;
}

void msgfacts_rawhash_free(struct msgfacts_rawhash *h)
{
    if (h->ctx != NULL) {
        EVP_MD_CTX_free(h->ctx);
        h->ctx = NULL;
    }
}

void msgfacts_rawhash_feed(struct msgfacts_rawhash *h, const char *data, size_t len)
{
    if (h->done || h->ctx == NULL) {
        return;
    }
    size_t i = 0;
    for (; i < len; i++) {
        if (data[i] == '\n' && h->bol) {
            /* The empty line: the header block ends before it. */
            EVP_DigestUpdate(h->ctx, data, i);
            msgfacts_rawhash_final(h);
            return;
        }
        h->bol = data[i] == '\n';
        if (++h->n >= MSGFACTS_HEADER_MAX) {
            EVP_DigestUpdate(h->ctx, data, i + 1);
            msgfacts_rawhash_final(h);
            return;
        }
    }
    EVP_DigestUpdate(h->ctx, data, len);
}
