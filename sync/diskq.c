#include "sync/diskq.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "store/maildir.h"

/* A chunk's size: what one write() of a message body takes at most, and
 * how much is queued before a job starts without waiting for diskq_kick. */
#define DISKQ_CHUNK (64u * 1024)

struct dq_op {
    struct dq_op *next;
    struct md_writer *w;
    bool abort;
    size_t len, cap;
    char data[];
};

struct diskq {
    uv_loop_t *loop;
    void (*on_drained)(void *arg);
    void *arg;
    /* Guards the list and bytes: the loop appends, a job takes the list. */
    pthread_mutex_t mu;
    /* Held while operations are carried out, so that a list taken later
     * is carried out after one taken earlier. */
    pthread_mutex_t run_mu;
    struct dq_op *head, *tail;
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

static void carry_out(struct dq_op *op)
{
    while (op != NULL) {
        struct dq_op *next = op->next;
        if (op->abort) {
            md_writer_abort(op->w);
        } else {
            /* A failure stays on the writer (sticky): its commit reports
             * it, and later writes to it do nothing. */
            md_writer_write(op->w, op->data, op->len);
        }
        free(op);
        op = next;
    }
}

void diskq_run(struct diskq *q)
{
    pthread_mutex_lock(&q->run_mu);
    pthread_mutex_lock(&q->mu);
    struct dq_op *list = q->head;
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&q->mu);
    /* bytes drops as each op is written, for the loop's back-pressure. */
    for (struct dq_op *op = list; op != NULL;) {
        struct dq_op *next = op->next;
        size_t len = op->abort ? 0 : op->len;
        op->next = NULL;
        carry_out(op);
        if (len > 0) {
            pthread_mutex_lock(&q->mu);
            q->bytes -= len;
            pthread_mutex_unlock(&q->mu);
        }
        op = next;
    }
    pthread_mutex_unlock(&q->run_mu);
}

static void drain_work(uv_work_t *req)
{
    diskq_run(req->data);
}

static bool queued(struct diskq *q)
{
    pthread_mutex_lock(&q->mu);
    bool any = q->head != NULL;
    pthread_mutex_unlock(&q->mu);
    return any;
}

static void start(struct diskq *q);

static void drain_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled */
    struct diskq *q = req->data;
    q->busy = false;
    /* What was queued while the job ran goes next. */
    if (queued(q)) {
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

static void append(struct diskq *q, struct dq_op *op)
{
    if (q->tail != NULL) {
        q->tail->next = op;
    } else {
        q->head = op;
    }
    q->tail = op;
}

void diskq_write(struct diskq *q, struct md_writer *w, const void *data, size_t len, uint64_t more)
{
    const char *p = data;
    pthread_mutex_lock(&q->mu);
    q->bytes += len;
    while (len > 0) {
        struct dq_op *t = q->tail;
        if (t != NULL && !t->abort && t->w == w && t->len < t->cap) {
            /* Still queued (a job takes the whole list at once): the
             * chunk grows instead of a new one per piece. */
            size_t k = t->cap - t->len < len ? t->cap - t->len : len;
            memcpy(t->data + t->len, p, k);
            t->len += k;
            p += k;
            len -= k;
            continue;
        }
        /* Sized for what the message still brings, up to a chunk. */
        uint64_t want = (uint64_t)len + more;
        size_t cap = want < DISKQ_CHUNK ? (size_t)want : DISKQ_CHUNK;
        struct dq_op *op = xmalloc(sizeof(*op) + cap);
        op->next = NULL;
        op->w = w;
        op->abort = false;
        op->len = 0;
        op->cap = cap;
        append(q, op);
    }
    bool full = q->bytes >= DISKQ_CHUNK;
    pthread_mutex_unlock(&q->mu);
    if (full) {
        start(q);
    }
}

void diskq_abort(struct diskq *q, struct md_writer *w)
{
    struct dq_op *op = xcalloc(1, sizeof(*op));
    op->w = w;
    op->abort = true;
    pthread_mutex_lock(&q->mu);
    append(q, op);
    pthread_mutex_unlock(&q->mu);
    start(q);
}

void diskq_kick(struct diskq *q)
{
    if (queued(q)) {
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
    for (struct dq_op *op = q->head; op != NULL;) {
        struct dq_op *next = op->next;
        if (op->abort) {
            md_writer_abort(op->w);
        }
        free(op);
        op = next;
    }
    pthread_mutex_destroy(&q->mu);
    pthread_mutex_destroy(&q->run_mu);
    free(q);
}
