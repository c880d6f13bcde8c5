#include "daemon/pidlock.h"

#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

struct pidlock {
    int fd;
    char *path;
};

/* The pid the holder wrote, or 0. A holder writes it right after taking
 * the lock, so a reader that comes in between sees an empty file: it looks
 * a few more times before giving up on naming the holder. */
static pid_t read_holder(int fd)
{
    for (int i = 0; i < 5; i++) {
        char buf[32];
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        buf[n > 0 ? n : 0] = '\0';
        char *end;
        long pid = strtol(buf, &end, 10);
        if (n > 0 && pid > 0 && pid <= INT32_MAX && (*end == '\n' || *end == '\0')) {
            return (pid_t)pid;
        }
        usleep(10000);
    }
    return 0;
}

int pidlock_take(const char *state_dir, struct pidlock **lock_r, pid_t *holder_r, char **err_r)
{
    *lock_r = NULL;
    if (holder_r != NULL) {
        *holder_r = 0;
    }
    int rc = mkdir_p(state_dir, 0700);
    if (rc != 0) {
        *err_r = xasprintf("cannot create state directory %s: %s", state_dir, strerror(-rc));
        return rc;
    }
    char *path = path_join(state_dir, PIDLOCK_NAME);
    /* O_NOFOLLOW: a symlink planted here must not make us lock (and
     * truncate) some other file. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        rc = -errno;
        *err_r = xasprintf("cannot open %s: %s", path, strerror(-rc));
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        *err_r = xasprintf("cannot stat %s: %s", path, strerror(-rc));
        goto out;
    }
    /* A file an older version or a person made readable to others: the pid
     * is no secret, but state is private to the user (invariant 8). */
    if ((st.st_mode & 07777) != 0600 && fchmod(fd, 0600) != 0) {
        rc = -errno;
        *err_r = xasprintf("cannot chmod %s to 0600: %s", path, strerror(-rc));
        goto out;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        rc = -errno;
        if (rc != -EWOULDBLOCK) {
            *err_r = xasprintf("cannot lock %s: %s", path, strerror(-rc));
            goto out;
        }
        pid_t holder = read_holder(fd);
        if (holder_r != NULL) {
            *holder_r = holder;
        }
        if (holder > 0) {
            *err_r =
                xasprintf("another mailsync daemon (pid %ld) holds %s", (long)holder, state_dir);
        } else {
            *err_r = xasprintf("another process holds the lock on %s (pid unknown), so "
                               "another mailsync daemon may be using %s",
                               path, state_dir);
        }
        goto out;
    }
    char buf[32];
    int len = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    errno = 0;
    if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)len, 0) != len) {
        rc = errno != 0 ? -errno : -EIO;
        *err_r = xasprintf("cannot write %s: %s", path, strerror(-rc));
        goto out;
    }
    struct pidlock *lock = xcalloc(1, sizeof(*lock));
    lock->fd = fd;
    lock->path = path;
    *lock_r = lock;
    return 0;
out:
    if (fd >= 0) {
        close(fd);
    }
    free(path);
    return rc;
}

const char *pidlock_path(const struct pidlock *lock)
{
    return lock->path;
}

void pidlock_release(struct pidlock *lock)
{
    if (lock == NULL) {
        return;
    }
    /* Emptied while still locked, so nobody reads our pid from a file we
     * no longer hold. Failure is harmless: the pid is only read while the
     * lock is held. */
    int unused = ftruncate(lock->fd, 0);
    (void)unused;
    close(lock->fd);
    free(lock->path);
    free(lock);
}
