/* One daemon per state directory: `STATE_DIR/daemon.pid`, mode 0600,
 * locked with flock(2) and holding the holder's pid in decimal.
 *
 * The lock, not the file, is what counts: a file left behind by a daemon
 * that died (kill -9, power loss) holds no lock and is simply taken over,
 * so there is no stale-pid guessing. The pid inside is only there to name
 * the holder in the refusal ("another mailsync daemon (pid N) holds
 * STATE_DIR") and for people and scripts that look.
 *
 * The descriptor is opened O_CLOEXEC, so hooks and password commands the
 * daemon spawns never inherit the lock. A process that forks without exec
 * shares it with its child (flock locks belong to the open file), which
 * the daemon does not do.
 *
 * Ownership: pidlock_take returns a struct pidlock owned by the caller;
 * pidlock_release (exactly once) empties the file, unlocks and frees it.
 * The file itself stays: removing a locked file lets a third process lock
 * a new file of the same name while a second one waits on the old one. */
#ifndef MAILSYNC_PIDLOCK_H
#define MAILSYNC_PIDLOCK_H

#include <sys/types.h>

struct pidlock;

/* The file name under the state directory. */
#define PIDLOCK_NAME "daemon.pid"

/* Creates state_dir (0700) when missing, then opens and locks
 * state_dir/daemon.pid without waiting and writes our pid into it.
 * Returns 0 with *lock_r set, or a negative errno with a message in *err_r
 * (caller frees): -EWOULDBLOCK when another process holds the lock, with
 * "another mailsync daemon (pid N) holds STATE_DIR" (or, when its pid
 * cannot be read, a message naming the file); other values when the
 * directory or file cannot be made. When holder_r is not NULL it is set to
 * the holder's pid on -EWOULDBLOCK (0 when unknown). */
int pidlock_take(const char *state_dir, struct pidlock **lock_r, pid_t *holder_r, char **err_r);

/* The path of the locked file (owned by the lock). */
const char *pidlock_path(const struct pidlock *lock);

/* Empties the file, drops the lock and frees lock. NULL is a no-op. */
void pidlock_release(struct pidlock *lock);

#endif
