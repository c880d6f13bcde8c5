/* The writes of downloaded messages, carried out on the thread pool.
 *
 * Creating a file, writing to it and even a plain write() can wait for the
 * file system's journal: on ext4 each of them needs a journal handle, and a
 * handle waits while a commit (forced by another thread's fsync or syncfs,
 * which every batch of downloads does) is being closed. Measured on the
 * 3,000-message initial download: one open(O_CREAT) of a temp file held the
 * loop thread for 64 ms while the pool made the previous batch durable. On
 * a network file system every one of them is a round trip. So the loop
 * thread never touches a message file: it copies the bytes into chunks of
 * this queue, and a thread-pool job writes them, in order, into writers
 * made with md_writer_new (whose file is created by the first write).
 *
 * Threads: diskq_write, diskq_abort, diskq_kick, diskq_bytes, diskq_busy
 * and diskq_free belong to the loop thread; diskq_run may be called on any
 * thread (a batch's commit job calls it so that its writers hold every byte
 * before they are finished). Operations on one writer are carried out in
 * the order they were queued, by one thread at a time. */
#ifndef MAILSYNC_DISKQ_H
#define MAILSYNC_DISKQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct md_writer;
struct diskq;

/* on_drained is called on the loop thread after each thread-pool job of
 * the queue has ended (the queue may hold more by then: it started the next
 * job already, and diskq_busy says so). */
struct diskq *diskq_new(uv_loop_t *loop, void (*on_drained)(void *arg), void *arg);
/* Queues len bytes for w (copied). A job starts once enough is queued, or
 * at diskq_kick; a batch's commit job carries out the rest (diskq_run). */
void diskq_write(struct diskq *q, struct md_writer *w, const void *data, size_t len);
/* Queues the end of w: md_writer_abort after its queued writes. The caller
 * lets go of w. */
void diskq_abort(struct diskq *q, struct md_writer *w);
/* Starts a job for what is queued unless one is in flight already; that
 * one takes it, or starts the next when it ends. */
void diskq_kick(struct diskq *q);
/* Carries out everything queued so far, on the calling thread, after any
 * job in flight has carried out its part. */
void diskq_run(struct diskq *q);
/* Bytes queued and not yet written. */
uint64_t diskq_bytes(const struct diskq *q);
/* A thread-pool job of the queue is in flight: its on_drained is to come. */
bool diskq_busy(const struct diskq *q);
/* Frees the queue, which must not be busy. What is still queued is
 * dropped: writes are skipped and aborts are carried out (on this thread). */
void diskq_free(struct diskq *q);

#endif
