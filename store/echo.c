/* The store's journal of its own changes to new/ and cur/ (see echo.h). */
#include "store/echo.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define ECHO_KEEP_MS 5000ull
/* Buckets of the table; it never grows: a note lives for seconds and the
 * events of a download take them as fast as files are written. */
#define ECHO_BUCKETS 4096u
/* Beyond this many notes (a download whose events are not read, say), a
 * new note drops the oldest ones: the cost is an extra sync, never a
 * missed change. */
#define ECHO_MAX 65536u

struct echo_note {
    struct echo_note *next;    /* in its bucket */
    struct echo_note *older;   /* in the age list */
    struct echo_note **prevp;  /* the pointer to it in its bucket */
    struct echo_note *younger; /* in the age list */
    unsigned long long made_ms;
    unsigned count; /* events still to take */
    char path[];
};

static struct {
    atomic_bool on;
    pthread_mutex_t mu;
    struct echo_note *buckets[ECHO_BUCKETS];
    struct echo_note *oldest, *youngest;
    unsigned n;
} echo = {.mu = PTHREAD_MUTEX_INITIALIZER};

static uint32_t hash(const char *a, const char *b)
{
    uint32_t h = 2166136261u;
    for (const char *p = a; *p; p++) {
        h = (h ^ (unsigned char)*p) * 16777619u;
    }
    if (b != NULL) {
        h = (h ^ '/') * 16777619u;
        for (const char *p = b; *p; p++) {
            h = (h ^ (unsigned char)*p) * 16777619u;
        }
    }
    return h;
}

static void age_remove(struct echo_note *n)
{
    if (n->older != NULL) {
        n->older->younger = n->younger;
    } else {
        echo.oldest = n->younger;
    }
    if (n->younger != NULL) {
        n->younger->older = n->older;
    } else {
        echo.youngest = n->older;
    }
}

static void age_append(struct echo_note *n)
{
    n->older = echo.youngest;
    n->younger = NULL;
    if (echo.youngest != NULL) {
        echo.youngest->younger = n;
    } else {
        echo.oldest = n;
    }
    echo.youngest = n;
}

static void unlink_note(struct echo_note *n)
{
    *n->prevp = n->next;
    if (n->next != NULL) {
        n->next->prevp = n->prevp;
    }
    age_remove(n);
    echo.n--;
    free(n);
}

/* Drops notes made more than ECHO_KEEP_MS ago, and the oldest beyond
 * ECHO_MAX. Called with mu held. */
static void expire(unsigned long long now)
{
    while (echo.oldest != NULL &&
           (echo.oldest->made_ms + ECHO_KEEP_MS <= now || echo.n > ECHO_MAX)) {
        unlink_note(echo.oldest);
    }
}

/* The note of dir + "/" + name (name NULL: dir is the whole path). */
static struct echo_note *find(const char *dir, const char *name, uint32_t h)
{
    size_t ld = strlen(dir);
    for (struct echo_note *n = echo.buckets[h % ECHO_BUCKETS]; n != NULL; n = n->next) {
        if (name == NULL) {
            if (strcmp(n->path, dir) == 0) {
                return n;
            }
        } else if (strncmp(n->path, dir, ld) == 0 && n->path[ld] == '/' &&
                   strcmp(n->path + ld + 1, name) == 0) {
            return n;
        }
    }
    return NULL;
}

void md_echo_enable(bool on)
{
    atomic_store(&echo.on, on);
    if (!on) {
        pthread_mutex_lock(&echo.mu);
        while (echo.oldest != NULL) {
            unlink_note(echo.oldest);
        }
        pthread_mutex_unlock(&echo.mu);
    }
}

void md_echo_note(const char *path)
{
    if (!atomic_load(&echo.on)) {
        return;
    }
    unsigned long long now = now_ms();
    uint32_t h = hash(path, NULL);
    pthread_mutex_lock(&echo.mu);
    struct echo_note *n = find(path, NULL, h);
    if (n != NULL) {
        /* Noted again: it lives as long as its latest note. */
        n->count++;
        n->made_ms = now;
        age_remove(n);
        age_append(n);
    } else {
        size_t len = strlen(path);
        n = xmalloc(sizeof(*n) + len + 1);
        memcpy(n->path, path, len + 1);
        n->count = 1;
        n->made_ms = now;
        struct echo_note **b = &echo.buckets[h % ECHO_BUCKETS];
        n->next = *b;
        if (*b != NULL) {
            (*b)->prevp = &n->next;
        }
        n->prevp = b;
        *b = n;
        age_append(n);
        echo.n++;
    }
    expire(now);
    pthread_mutex_unlock(&echo.mu);
}

void md_echo_forget(const char *path)
{
    if (!atomic_load(&echo.on)) {
        return;
    }
    pthread_mutex_lock(&echo.mu);
    struct echo_note *n = find(path, NULL, hash(path, NULL));
    if (n != NULL && n->count > 0) {
        n->count--;
    }
    pthread_mutex_unlock(&echo.mu);
}

void md_echo_drop(const char *dir)
{
    if (!atomic_load(&echo.on) || dir == NULL) {
        return;
    }
    size_t ld = strlen(dir);
    while (ld > 1 && dir[ld - 1] == '/') {
        ld--;
    }
    pthread_mutex_lock(&echo.mu);
    struct echo_note *n = echo.oldest;
    while (n != NULL) {
        struct echo_note *next = n->younger;
        if (strncmp(n->path, dir, ld) == 0 && n->path[ld] == '/') {
            unlink_note(n);
        }
        n = next;
    }
    pthread_mutex_unlock(&echo.mu);
}

bool md_echo_take(const char *dir, const char *name, bool moved)
{
    if (!atomic_load(&echo.on) || dir == NULL || name == NULL) {
        return false;
    }
    pthread_mutex_lock(&echo.mu);
    expire(now_ms());
    struct echo_note *n = find(dir, name, hash(dir, name));
    bool ours = false;
    if (n != NULL) {
        if (!moved) {
            ours = true;
        } else if (n->count > 0) {
            n->count--;
            ours = true;
        }
    }
    pthread_mutex_unlock(&echo.mu);
    return ours;
}

unsigned md_echo_pending(void)
{
    pthread_mutex_lock(&echo.mu);
    unsigned n = echo.n;
    pthread_mutex_unlock(&echo.mu);
    return n;
}
