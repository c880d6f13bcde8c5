#include "sync/diskq.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "store/maildir.h"

/* The queue is a list of chunks of this size, each holding segments one
 * after the other (a segment header, then its bytes), whatever writer they
 * are for: memory follows the bytes queued, not the number of messages. */
#define DISKQ_CHUNK (64u * 1024)
/* A job starts once this much is queued (or at diskq_kick; a batch's
 * commit job carries out the rest itself): each uv_queue_work costs the
 * loop a condition-variable signal, which waits (measured: 8-34 ms on a
 * loaded machine) when a pool thread woken before is descheduled before
 * it ran (glibc's __condvar_quiesce_and_switch_g1). */
#define DISKQ_START (1024u * 1024)
/* Chunks kept for reuse (512 KiB): the loop allocates and the pool frees
 * them, and glibc then takes the loop's arena lock on the pool thread,
 * which the loop waited for (measured: 11 ms once). */
#define DISKQ_SPARE 8

struct dq_seg {
    struct md_writer *w;
    uint32_t len; /* bytes after the header; 0 with abort */
    bool abort;
};

struct dq_chunk {
    struct dq_chunk *next;
    size_t used;
    char data[DISKQ_CHUNK];
};

struct diskq {
    uv_loop_t *loop;
    void (*on_drained)(void *arg);
    void *arg;
    /* Guards the lists and bytes: the loop appends, a job takes the list. */
    pthread_mutex_t mu;
    /* Held while segments are carried out, so that a list taken later is
     * carried out after one taken earlier. */
    pthread_mutex_t run_mu;
    struct dq_chunk *head, *tail;
    struct dq_chunk *spare; /* free chunks, at most DISKQ_SPARE */
    unsigned nspare;
    uint64_t bytes;
    /* Loop thread only. */
    bool busy;
    uv_work_t req;
};

struct diskq *diskq_new(uv_loop_t *loop, void (*on_drained)(void *arg), void *arg)
{
    struct diskq *q = xcalloc(1, sizeof(*q));
    q->loop = loop;
    q->on_drained = on_drained;
    q->arg = arg;
    q->req.data = q;
    pthread_mutex_init(&q->mu, NULL);
    pthread_mutex_init(&q->run_mu, NULL);
    return q;
}

/* Carries out the segments of one chunk, in order. Returns the bytes
 * written (or attempted: a failure stays on the writer, sticky, and its
 * commit reports it; later writes to it do nothing). */
static size_t carry_out(const struct dq_chunk *c)
{
    size_t done = 0;
    for (size_t off = 0; off < c->used;) {
        struct dq_seg seg;
        memcpy(&seg, c->data + off, sizeof(seg));
        off += sizeof(seg);
        if (seg.abort) {
            md_writer_abort(seg.w);
            continue;
        }
        md_writer_write(seg.w, c->data + off, seg.len);
        off += seg.len;
        done += seg.len;
    }
    return done;
}

void diskq_run(struct diskq *q)
{
    pthread_mutex_lock(&q->run_mu);
    pthread_mutex_lock(&q->mu);
    struct dq_chunk *list = q->head;
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&q->mu);
    while (list != NULL) {
        struct dq_chunk *c = list;
        list = c->next;
        size_t done = carry_out(c);
        /* bytes drops as each chunk is written, for the loop's
         * back-pressure; the chunk is kept for reuse. */
        pthread_mutex_lock(&q->mu);
        q->bytes -= done;
        bool keep = q->nspare < DISKQ_SPARE;
        if (keep) {
            c->next = q->spare;
            q->spare = c;
            q->nspare++;
        }
        pthread_mutex_unlock(&q->mu);
        if (!keep) {
            free(c);
        }
    }
    pthread_mutex_unlock(&q->run_mu);
}

static void drain_work(uv_work_t *req)
{
    diskq_run(req->data);
}

static bool queued(struct diskq *q, uint64_t at_least)
{
    pthread_mutex_lock(&q->mu);
    bool any = q->head != NULL && q->bytes >= at_least;
    pthread_mutex_unlock(&q->mu);
    return any;
}

static void start(struct diskq *q);

static void drain_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct diskq *q = req->data;
    q->busy = false;
    /* What was queued while the job ran goes next when it is enough for a
     * job (else the next write, diskq_kick or diskq_run takes it). */
    if (queued(q, DISKQ_START)) {
        start(q);
    }
    q->on_drained(q->arg);
}

static void start(struct diskq *q)
{
    if (q->busy) {
        return;
    }
    q->busy = true;
    if (uv_queue_work(q->loop, &q->req, drain_work, drain_done) != 0) {
        /* Cannot happen with a valid loop; do it here then. */
        drain_work(&q->req);
        drain_done(&q->req, 0);
    }
}

/* Room for at least a segment header and a byte at the list's end: the
 * tail chunk, or a new one (spare or allocated). Called with mu held. */
static struct dq_chunk *tail_with_room(struct diskq *q)
{
    struct dq_chunk *t = q->tail;
    if (t != NULL && DISKQ_CHUNK - t->used > sizeof(struct dq_seg)) {
        return t;
    }
    struct dq_chunk *c = q->spare;
    if (c != NULL) {
        q->spare = c->next;
        q->nspare--;
    } else {
        c = xmalloc(sizeof(*c));
    }
    c->next = NULL;
    c->used = 0;
    if (q->tail != NULL) {
        q->tail->next = c;
    } else {
        q->head = c;
    }
    q->tail = c;
    return c;
}

static void put_seg(struct dq_chunk *c, const struct dq_seg *seg)
{
    memcpy(c->data + c->used, seg, sizeof(*seg));
    c->used += sizeof(*seg);
}

void diskq_write(struct diskq *q, struct md_writer *w, const void *data, size_t len)
{
    const char *p = data;
    pthread_mutex_lock(&q->mu);
    q->bytes += len;
    while (len > 0) {
        struct dq_chunk *c = tail_with_room(q);
        size_t room = DISKQ_CHUNK - c->used - sizeof(struct dq_seg);
        size_t k = room < len ? room : len;
        put_seg(c, &(struct dq_seg){.w = w, .len = (uint32_t)k});
        memcpy(c->data + c->used, p, k);
        c->used += k;
        p += k;
        len -= k;
    }
    bool enough = q->bytes >= DISKQ_START;
    pthread_mutex_unlock(&q->mu);
    if (enough) {
        start(q);
    }
}

void diskq_abort(struct diskq *q, struct md_writer *w)
{
    pthread_mutex_lock(&q->mu);
    put_seg(tail_with_room(q), &(struct dq_seg){.w = w, .abort = true});
    pthread_mutex_unlock(&q->mu);
    start(q);
}

void diskq_kick(struct diskq *q)
{
    if (queued(q, 0)) {
        start(q);
    }
}

uint64_t diskq_bytes(const struct diskq *q)
{
    struct diskq *m = (struct diskq *)q;
    pthread_mutex_lock(&m->mu);
    uint64_t n = m->bytes;
    pthread_mutex_unlock(&m->mu);
    return n;
}

bool diskq_busy(const struct diskq *q)
{
    return q != NULL && q->busy;
}

void diskq_free(struct diskq *q)
{
    if (q == NULL) {
        return;
    }
    for (struct dq_chunk *c = q->head; c != NULL;) {
        struct dq_chunk *next = c->next;
        /* Writes are dropped; aborts are carried out. */
        for (size_t off = 0; off < c->used;) {
            struct dq_seg seg;
            memcpy(&seg, c->data + off, sizeof(seg));
            off += sizeof(seg) + seg.len;
            if (seg.abort) {
                md_writer_abort(seg.w);
            }
        }
        free(c);
        c = next;
    }
    while (q->spare != NULL) {
        struct dq_chunk *next = q->spare->next;
        free(q->spare);
        q->spare = next;
    }
    pthread_mutex_destroy(&q->mu);
    pthread_mutex_destroy(&q->run_mu);
    free(q);
}
