/* LINK: ms_sync ms_core */
/* RUNS: 450000 (inputs fuzz/run_pop3_parser tries: about 15 s on two cores) */
/* Fuzz target for the POP3 reply parser. The first byte picks the limits
 * and the chunking; the next ones pick the expectation set after each
 * completed reply (cycling), the rest is server input. The same input is
 * also fed whole and the results compared, so chunking bugs show up as
 * crashes (abort) rather than only as memory errors. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"
#include "sync/pop3_parser.h"
#include "sync/rfc5322.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Feeds input in pieces of step bytes (0: whole) and returns a digest of
 * the results: a running hash over result codes and output bytes, or 0 when
 * the parser failed. */
static uint64_t feed_all(const uint8_t *exp, size_t nexp, const char *in, size_t len, size_t step,
                         const struct pop3_parser_limits *lim)
{
    struct pop3_parser *p = pop3_parser_new(lim);
    uint64_t h = 1469598103934665603ull;
    size_t ei = 0;
    pop3_parser_expect(p, (enum pop3_expect)(1 + exp[ei++ % nexp] % 4));
    size_t pos = 0;
    bool dead = false;
    bool in_data = false;
    while (pos < len && !dead) {
        size_t n = step == 0 || step > len - pos ? len - pos : step;
        const char *d = in + pos;
        size_t left = n;
        for (;;) {
            size_t used = 0;
            int r = pop3_parser_feed(p, d, left, &used);
            if (used > left) {
                abort();
            }
            d += used;
            left -= used;
            if (r == POP3_PARSE_NEED_MORE) {
                if (left != 0) {
                    abort();
                }
                break;
            }
            if (r < 0) {
                if (strlen(pop3_parser_error(p)) == 0) {
                    abort();
                }
                dead = true;
                break;
            }
            /* Consecutive DATA chunks hash as one stream. */
            if (r != POP3_PARSE_DATA || !in_data) {
                h = (h ^ (uint64_t)r) * 1099511628211ull;
            }
            in_data = r == POP3_PARSE_DATA;
            size_t dl = 0;
            const char *dd = NULL;
            if (r == POP3_PARSE_STATUS || r == POP3_PARSE_CONTINUATION) {
                const struct pop3_reply *rep = pop3_parser_reply(p);
                dd = rep->text;
                dl = strlen(dd);
                if (rep->code != NULL) {
                    for (const char *c = rep->code; *c; c++) {
                        h = (h ^ (uint8_t)*c) * 1099511628211ull;
                    }
                }
            } else if (r == POP3_PARSE_LINE || r == POP3_PARSE_DATA) {
                dd = pop3_parser_data(p, &dl);
            }
            for (size_t i = 0; i < dl; i++) {
                h = (h ^ (uint8_t)dd[i]) * 1099511628211ull;
            }
            if (pop3_parser_expecting(p) == POP3_EXPECT_NOTHING && !pop3_parser_busy(p)) {
                pop3_parser_expect(p, (enum pop3_expect)(1 + exp[ei++ % nexp] % 4));
            }
        }
        pos += n;
    }
    h ^= pop3_parser_busy(p) ? 1 : 0;
    pop3_parser_free(p);
    /* After an error, how much body was returned before it depends on the
     * chunking; only the fact of the error must agree. */
    return dead ? 0 : h | 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3) {
        return 0;
    }
    uint8_t mode = data[0];
    size_t nexp = 1 + data[1] % 8;
    if (size < 2 + nexp) {
        return 0;
    }
    const uint8_t *exp = data + 2;
    const char *in = (const char *)data + 2 + nexp;
    size_t len = size - 2 - nexp;
    struct pop3_parser_limits lim = {0};
    if (mode & 1) {
        lim.max_line = 32;
        lim.max_data_line = 64;
        lim.max_body = 4096;
        lim.chunk_size = 16 + (mode >> 4);
    }
    size_t step = 1 + ((mode >> 1) & 7);
    /* The same bytes as a header block: the Date lookup and parser behind
     * pop.since read headers from the server too. */
    char *hdr = xstrndup(in, len);
    char *date = rfc5322_find_header(hdr, strlen(hdr), "Date");
    time_t t;
    rfc5322_parse_date(date != NULL ? date : hdr, &t);
    free(date);
    free(hdr);
    uint64_t a = feed_all(exp, nexp, in, len, 0, &lim);
    uint64_t b = feed_all(exp, nexp, in, len, step, &lim);
    if (a != b) {
        abort();
    }
    return 0;
}
