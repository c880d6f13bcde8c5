/* LINK: ms_sync ms_store ms_core */
/* Tests for the message facts both engines match messages by
 * (sync/msgfacts.h). Indexes on disk hold these hashes (idx_msg.msgid_hash,
 * idx_pop.header_hash), so the expected bytes below were computed from the
 * code as it was before the module existed (sync/engine.c's header_hash_strip,
 * header_end, file_header_strip, msgid_hash; sync/popsync.c's hh_* streaming
 * hash) and must never change: a different byte means every existing index
 * stops matching. Cases: LF and CRLF, X-TUID/Status lines, folded fields,
 * no Message-ID, an empty header, no empty line, a header longer than the
 * scan limit, and an empty line split between two reads of a file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
#include "sync/msgfacts.h"

struct mcase {
    const char *name;
    size_t end;            /* msgfacts_header_end(text, len, 0) */
    uint64_t strip;        /* msgfacts_header_hash's *strip_r over the block */
    const char *hash;      /* msgfacts_header_hash of the block (end, or all if 0) */
    const char *file_id;   /* msgfacts_read_file's Message-ID */
    bool file_have;        /* ... whether it hashed */
    uint64_t file_strip;   /* ... its *strip_r */
    const char *file_hash; /* ... its hash (when file_have) */
    const char *id_hash;   /* msgfacts_msgid_hash(file_id) */
    const char *raw;       /* msgfacts_rawhash over the whole text */
};

/* The texts of the cases; NULL ones are built by build_case. */
static const char *const texts[][2] = {
    {"lf", "From: a@example.org\nSubject: hello\nMessage-ID: <one@example.org>\n\nbody line\n"},
    {"crlf",
     "From: a@example.org\r\nSubject: hello\r\nMessage-ID: <one@example.org>\r\n\r\nbody line\r\n"},
    {"tuid_lf", "From: a@example.org\nX-TUID: abcdefghijkl\nStatus: RO\nSubject: hello\n"
                "Message-ID: <one@example.org>\n\nbody\n"},
    {"tuid_crlf", "From: a@example.org\r\nX-TUID: abcdefghijkl\r\nStatus: RO\r\nSubject: hello\r\n"
                  "Message-ID: <one@example.org>\r\n\r\nbody\r\n"},
    {"folded", "Subject: a long\n subject line\nX-TUID: abc\n\tcontinued\nMessage-ID:\n"
               " <folded@example.org>\nTo: b@example.org\n\nbody\n"},
    {"noid", "From: a@example.org\nSubject: no id\n\nbody\n"},
    {"empty", "\nbody\n"},
    {"nobody", "From: a@example.org\nSubject: no empty line"},
    {"long", NULL},
    {"split_lf", NULL},
    {"split_crlf", NULL},
};

static const struct mcase cases[] = {
    {"lf", 66, 0, "62a9ea729ba314f799eacc2d3258cdfb", "<one@example.org>", true, 0,
     "62a9ea729ba314f799eacc2d3258cdfb", "23f6e7275b1c3b473bccd0bab05d771b",
     "f6c0f8442ec6bf99780408b58b30afc9"},
    {"crlf", 70, 0, "62a9ea729ba314f799eacc2d3258cdfb", "<one@example.org>", true, 0,
     "62a9ea729ba314f799eacc2d3258cdfb", "23f6e7275b1c3b473bccd0bab05d771b",
     "0d26e253968a31ef75aeb73508ca5093"},
    {"tuid_lf", 98, 34, "62a9ea729ba314f799eacc2d3258cdfb", "<one@example.org>", true, 34,
     "62a9ea729ba314f799eacc2d3258cdfb", "23f6e7275b1c3b473bccd0bab05d771b",
     "ff7b40015b0614bc1d21eb73dea25f0e"},
    {"tuid_crlf", 104, 34, "62a9ea729ba314f799eacc2d3258cdfb", "<one@example.org>", true, 34,
     "62a9ea729ba314f799eacc2d3258cdfb", "23f6e7275b1c3b473bccd0bab05d771b",
     "0f99ad349699feb91690a342bd783b28"},
    {"folded", 106, 25, "b70d6cc3fd1b9d2e1006336b93b34160", "<folded@example.org>", true, 25,
     "b70d6cc3fd1b9d2e1006336b93b34160", "96e9267d57c9f1bdcffe387741246e6f",
     "ad437b945673f5f4f391a81580ecc78a"},
    {"noid", 36, 0, "c9ab377a547e98328d0547b13116b366", NULL, true, 0,
     "c9ab377a547e98328d0547b13116b366", "00000000000000000000000000000000",
     "688f0980ff77580caa80ac7b0874c38b"},
    {"empty", 1, 0, "01ba4719c80b6fe911b091a7c05124b6", NULL, true, 0,
     "01ba4719c80b6fe911b091a7c05124b6", "00000000000000000000000000000000",
     "e3b0c44298fc1c149afbf4c8996fb924"},
    {"nobody", 0, 0, "dba7758c4f8352b6c07854cee50b28b4", NULL, true, 0,
     "dba7758c4f8352b6c07854cee50b28b4", "00000000000000000000000000000000",
     "dba7758c4f8352b6c07854cee50b28b4"},
    {"long", 1049630, 0, "1dbad029452380ba8c389d212580782e", "<long@example.org>", false, 0, NULL,
     "9a913eb67a3748535dbe343187f202ae", "ab8ea1d34fe70d0cac792e784649f40c"},
    {"split_lf", 16385, 0, "2b45a3f924f71935af40c20d3135efaa", "<split@example.org>", true, 0,
     "2b45a3f924f71935af40c20d3135efaa", "4bbceb74b18eecf241e2ad28028ced20",
     "4921c84e9059ed32a7543b923dbb6a92"},
    {"split_crlf", 16386, 0, "2637cc94f128a22d4b4966bcb43a6fdc", "<split@example.org>", true, 0,
     "2637cc94f128a22d4b4966bcb43a6fdc", "4bbceb74b18eecf241e2ad28028ced20",
     "8e3387bc3ae5787529518f0edc453b1c"},
};

/* Header blocks too long to write out: "long" is over MSGFACTS_HEADER_MAX
 * (1 MiB) before its empty line; "split_lf" and "split_crlf" put the empty
 * line across the 16 KiB boundary between two reads of a file. */
static char *build_case(const char *name, size_t *len_r)
{
    struct sbuf sb = {0};
    if (strcmp(name, "long") == 0) {
        sbuf_adds(&sb, "Message-ID: <long@example.org>\n");
        while (sb.len <= 1024u * 1024 + 1000) {
            sbuf_adds(&sb,
                      "X-Filler: "
                      "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");
        }
        sbuf_adds(&sb, "\nbody\n");
    } else {
        bool crlf = strcmp(name, "split_crlf") == 0;
        const char *eol = crlf ? "\r\n" : "\n";
        sbuf_addf(&sb, "Message-ID: <split@example.org>%sX-Pad: ", eol);
        /* The last header line ends at byte 16384, so the empty line's
         * first byte is the first byte of the second read. */
        while (sb.len < 16384 - strlen(eol)) {
            sbuf_addc(&sb, 'p');
        }
        sbuf_addf(&sb, "%s%sbody%s", eol, eol, eol);
    }
    *len_r = sb.len;
    return sbuf_detach(&sb);
}

static char *case_text(size_t i, size_t *len_r)
{
    assert_string_equal(texts[i][0], cases[i].name);
    if (texts[i][1] != NULL) {
        *len_r = strlen(texts[i][1]);
        return xstrdup(texts[i][1]);
    }
    return build_case(texts[i][0], len_r);
}

static void assert_hash(const char *name, const uint8_t h[MSGFACTS_HASH_LEN], const char *want)
{
    char got[2 * MSGFACTS_HASH_LEN + 1];
    for (int i = 0; i < MSGFACTS_HASH_LEN; i++) {
        snprintf(got + 2 * i, 3, "%02x", h[i]);
    }
    if (strcmp(got, want) != 0) {
        print_error("%s: got %s, want %s\n", name, got, want);
    }
    assert_string_equal(got, want);
}

static void test_header_end_and_hash(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const struct mcase *c = &cases[i];
        size_t len;
        char *t = case_text(i, &len);
        size_t end = msgfacts_header_end(t, len, 0);
        assert_int_equal(end, c->end);
        /* Searching as bytes arrive (from two bytes before the previous
         * end) finds the same end, whatever the chunk size. */
        for (size_t step = 1; step <= 7; step += 3) {
            size_t found = 0;
            for (size_t have = step; found == 0 && have < len + step; have += step) {
                size_t n = have < len ? have : len;
                size_t prev = n > step ? n - step : 0;
                found = msgfacts_header_end(t, n, prev > 2 ? prev - 2 : 0);
            }
            assert_int_equal(found, c->end);
        }
        uint8_t h[MSGFACTS_HASH_LEN];
        uint64_t strip = 99;
        msgfacts_header_hash(t, end != 0 ? end : len, h, &strip);
        assert_hash(c->name, h, c->hash);
        assert_int_equal(strip, c->strip);
        memset(h, 0, sizeof(h));
        msgfacts_header_hash(t, end != 0 ? end : len, h, NULL);
        assert_hash(c->name, h, c->hash);
        free(t);
    }
}

static void test_read_file(void **state)
{
    (void)state;
    const char *tmpdir = getenv("TMPDIR");
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const struct mcase *c = &cases[i];
        size_t len;
        char *t = case_text(i, &len);
        char *path = xasprintf("%s/test_msgfacts.XXXXXX", tmpdir != NULL ? tmpdir : "/tmp");
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        unlink(path);
        free(path);
        assert_int_equal(write(fd, t, len), (ssize_t)len);
        char *id = (char *)"unset";
        uint8_t hh[MSGFACTS_HASH_LEN];
        memset(hh, 0xaa, sizeof(hh));
        bool have = !c->file_have;
        uint64_t strip = 99;
        assert_int_equal(msgfacts_read_file(fd, &id, hh, &have, &strip), 0);
        if (c->file_id == NULL) {
            assert_null(id);
        } else {
            assert_non_null(id);
            assert_string_equal(id, c->file_id);
        }
        assert_int_equal(have, c->file_have);
        assert_int_equal(strip, c->file_strip);
        if (c->file_have) {
            assert_hash(c->name, hh, c->file_hash);
        } else {
            /* Too long a header: no hash, and hh is left alone. */
            assert_hash(c->name, hh, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        }
        uint8_t ih[MSGFACTS_HASH_LEN];
        memset(ih, 0xaa, sizeof(ih));
        msgfacts_msgid_hash(id, ih);
        assert_hash(c->name, ih, c->id_hash);
        free(id);
        /* Without strip_r the same facts. */
        memset(hh, 0, sizeof(hh));
        assert_int_equal(msgfacts_read_file(fd, &id, hh, &have, NULL), 0);
        assert_int_equal(have, c->file_have);
        if (c->file_have) {
            assert_hash(c->name, hh, c->file_hash);
        }
        free(id);
        close(fd);
        free(t);
    }
    /* A descriptor that cannot be read is an error, with nothing returned. */
    char *id = (char *)"unset";
    uint8_t hh[MSGFACTS_HASH_LEN];
    bool have = true;
    assert_int_equal(msgfacts_read_file(-1, &id, hh, &have, NULL), -EBADF);
    assert_null(id);
    assert_false(have);
}

static void test_rawhash(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const struct mcase *c = &cases[i];
        size_t len;
        char *t = case_text(i, &len);
        /* Whole, one byte at a time, and in 7-byte chunks. */
        for (size_t step = 0; step <= 7; step += step == 0 ? 1 : 6) {
            struct msgfacts_rawhash h;
            msgfacts_rawhash_init(&h);
            size_t chunk = step == 0 ? len : step;
            for (size_t off = 0; off < len; off += chunk) {
                msgfacts_rawhash_feed(&h, t + off, len - off < chunk ? len - off : chunk);
            }
            msgfacts_rawhash_final(&h);
            assert_hash(c->name, h.out, c->raw);
            msgfacts_rawhash_free(&h);
            msgfacts_rawhash_free(&h);
        }
        free(t);
    }
    /* Abandoned before the end: free releases the digest (ASan checks). */
    struct msgfacts_rawhash h;
    msgfacts_rawhash_init(&h);
    msgfacts_rawhash_feed(&h, "Subject: x\n", 11);
    msgfacts_rawhash_free(&h);
}

static void test_digest(void **state)
{
    (void)state;
    uint8_t h[MSGFACTS_HASH_LEN];
    /* The FIPS 180-2 example: SHA-256("abc"), first 16 bytes. */
    msgfacts_digest("abc", 3, h);
    assert_hash("abc", h, "ba7816bf8f01cfea414140de5dae2223");
    msgfacts_digest("", 0, h);
    assert_hash("empty", h, "e3b0c44298fc1c149afbf4c8996fb924");
    /* A folder name too long for an index key is hashed like a Message-ID. */
    msgfacts_msgid_hash("INBOX", h);
    assert_hash("INBOX", h, "83ecb521bf320f677287e8b923809bb3");
    msgfacts_msgid_hash("", h);
    assert_hash("empty id", h, "e3b0c44298fc1c149afbf4c8996fb924");
    memset(h, 0xaa, sizeof(h));
    msgfacts_msgid_hash(NULL, h);
    assert_hash("NULL id", h, "00000000000000000000000000000000");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_end_and_hash),
        cmocka_unit_test(test_read_file),
        cmocka_unit_test(test_rawhash),
        cmocka_unit_test(test_digest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
