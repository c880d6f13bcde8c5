/* Messages moved between folders of one account (issue 12): a message a
 * mail client moved locally (mutt's save: the file leaves folder A's
 * Maildir and appears in folder B's under the same unique name) is moved
 * on the server with UID MOVE (the IMAP client falls back to UID COPY +
 * STORE \Deleted + UID EXPUNGE without MOVE) instead of being appended to
 * B and deleted from A: no message body travels.
 *
 * A folder job looks for moves before it selects its own folder, whichever
 * of the two folders is synced first:
 * - into the folder (B first): a local file the folder's index base does
 *   not know, whose unique name another folder's index records (one key
 *   lookup per folder) while that folder's Maildir no longer holds it;
 * - out of the folder (A first): a base record whose file is gone from the
 *   folder's Maildir, found in another folder's Maildir (one directory
 *   listing per local folder, on the thread pool) where no synced record
 *   knows it.
 * A found move is carried out from this job: SELECT A, one UID MOVE per
 * destination, the new UIDs from COPYUID. B's record takes A's record's
 * flags as its base, so B's sync then merges the file's flags (changed on
 * the way) and the server's (another client's change of the original)
 * three-way, as for any message.
 *
 * Crash safety: before the MOVE an intent row is written in B (APPENDING,
 * no UID, IDX_FLAGS_MOVING); after COPYUID one transaction drops A's record
 * and makes B's record. Killed in between, the next run moves again (a
 * MOVE of a UID already gone moves nothing) and B's intent is resolved as
 * an upload intent is: the message is searched in B by Message-ID (or
 * header hash and size) and recorded, or uploaded when it is not there (a
 * move that lost the race with another client's expunge). Nothing is
 * deleted on the server for a move, so no kill can lose the message.
 *
 * Without UIDPLUS (no COPYUID) nothing is paired: the message is uploaded
 * and deleted, as before. A run's jobs claim the unique names they move
 * (struct engine claims), so two connections of a run never both act on
 * one message, and a job that meets a message another job of the run
 * claimed neither uploads nor deletes it in this run.
 *
 * --dry-run prints each move ("A: move uid 7 to B (NAME moved locally)")
 * instead of an upload and a deletion, and counts it as moved. */
#ifndef MAILSYNC_SYNC_MOVES_H
#define MAILSYNC_SYNC_MOVES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct session;
struct engine;
struct moves;

/* Looks for moves into and out of the job's folder (e->f, scanned and its
 * base read), carries them out, then calls cont(e) (which SELECTs the
 * folder). cont is called from the loop, possibly before moves_start
 * returns; when the session ends meanwhile it is not called. */
void moves_start(struct session *e, void (*cont)(struct session *e));
/* The UIDs of the job's folder whose messages are moves out of it that
 * this job does not carry out (another job of the run does, or its
 * destination's job later): plan_input.moved, so that they are neither
 * deleted on the server from here nor counted by the deletion guard. */
size_t moves_moved_uids(const struct session *e, const uint32_t **uids_r);
/* After plan_build: takes out of the plan the uploads of messages that are
 * moves into the folder (listed as moves by --dry-run) or that another job
 * of the run is moving. */
void moves_filter_plan(struct session *e);
void moves_free(struct moves *mv);

/* Messages moved on the server by another client (A -> B): A's sync finds
 * x gone while the file stays and parks the record as an orphan
 * (IDX_MSG_ORPHAN: it survives a kill -9, the file stays in place); a
 * later job that lists new messages while the run knows orphans fetches
 * their Message-ID with the listing and pairs a new message with an orphan
 * by (msgid_hash, RFC822.SIZE), never on a zero hash, only within the
 * account: the file is moved into B's Maildir (no body downloaded) under a
 * download intent, then one transaction drops A's orphan and records B's
 * message. Flags merge three-way (the file's change since the base, else
 * the server's). A message is parked only while a job that could pair it
 * can still come (moves_pairing_pending), and orphans not paired when the
 * pass, or a run that stays open's burst of jobs, is over are deleted
 * locally as before: the daemon never keeps a deleted message on disk
 * waiting for a pair nothing will bring. An orphan edited locally
 * meanwhile keeps its file, uploaded again as a new message (an edit
 * racing an expunge loses nothing). When the destination is synced before
 * the source, its message is downloaded (no orphan yet) and the orphan
 * deleted.
 *
 * Whether another folder job of the run can still come after e's: one of
 * the pass not started, one running on another connection, one queued on
 * demand, or (a run that stays open) a folder of the run marked dirty. It
 * decides plan_input.park_orphans and, false at the end of a job, the
 * deletion of the orphans left. */
bool moves_pairing_pending(const struct session *e);
/* After the plan: parks its new orphans and registers every orphan of the
 * folder with the run. */
void moves_park_orphans(struct session *e);
/* Before the plan: pairs the folder's new server messages with the run's
 * orphans of other folders, moving the files in, and with the folder's
 * own records whose UID the server lost (a message moved out and back:
 * the record takes the new UID, the file stays). */
void moves_pair_server(struct session *e);
/* Whether the listing of the folder's new messages fetches their
 * Message-ID for moves_pair_server (after SELECT, before the listing). */
bool moves_want_msgids(const struct session *e);
/* At the end of a pass or burst: deletes the orphans left. e->f may be
 * NULL. */
void moves_orphans_expire(struct session *e);
void moves_orphans_free(struct engine *r);
/* The run's claims (struct engine), at its end. */
void moves_claims_free(struct engine *r);

#endif
