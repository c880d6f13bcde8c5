#include "sync/secret.h"

#include "core/util.h"
#include "sync/options.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Output beyond this is not needed: only the first line counts, and a
 * command that prints more than this before a newline is not a password
 * helper. */
#define SECRET_MAX_OUTPUT (64 * 1024)
/* After the command exits, its pipes may still be held open by a child it
 * left behind; wait this long for them before deciding with what we have. */
#define SECRET_GRACE_MS 1000

struct secret_req {
    uv_loop_t *loop;
    secret_cb cb;
    void *arg;
    char *name; /* argv[0], for messages */
    char *password;
    unsigned timeout_ms;

    uv_process_t proc;
    uv_pipe_t out, err;
    uv_timer_t timer;
    unsigned open_handles;
    bool spawned, out_open, err_open;
    bool own_group; /* the command leads a process group of its own */
    bool exited, timed_out, finished;
    int spawn_err;
    int64_t exit_status;
    int term_signal;
    struct sbuf outbuf, errbuf;
};

static void secret_wipe(char *s, size_t len)
{
    if (s != NULL) {
        explicit_bzero(s, len);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    struct secret_req *req = h->data;
    if (--req->open_handles > 0) {
        return;
    }
    secret_wipe(req->outbuf.buf, req->outbuf.cap);
    sbuf_free(&req->outbuf);
    sbuf_free(&req->errbuf);
    if (req->password != NULL) {
        secret_wipe(req->password, strlen(req->password));
        free(req->password);
    }
    free(req->name);
    free(req);
}

/* Kills the command and, when it has a process group of its own, whatever
 * it started (a password manager's helpers would otherwise be left behind,
 * holding the pipes open). */
static void kill_command(struct secret_req *req)
{
    if (req->own_group && req->proc.pid > 0) {
        kill(-req->proc.pid, SIGKILL);
    }
    uv_process_kill(&req->proc, SIGKILL);
}

/* Whether this process has a controlling terminal (one a command could ask
 * a passphrase on through /dev/tty), whatever its standard streams are. */
static bool has_terminal(void)
{
    int fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    close(fd);
    return true;
}

static void close_handle(struct secret_req *req, uv_handle_t *h)
{
    if (!uv_is_closing(h)) {
        uv_close(h, on_handle_closed);
    }
    (void)req;
}

/* Closes every handle; the request is freed from the last close callback. */
static void secret_release(struct secret_req *req)
{
    req->finished = true;
    close_handle(req, (uv_handle_t *)&req->timer);
    if (req->spawned && !req->exited) {
        /* libuv reaps a child only while its handle is open: closing it now
         * would leave a zombie. The handle is closed from on_exit_cb once
         * the killed command has been reaped. */
        kill_command(req);
    } else if (req->spawned || req->spawn_err != 0) {
        close_handle(req, (uv_handle_t *)&req->proc);
    }
    if (req->out_open) {
        close_handle(req, (uv_handle_t *)&req->out);
    }
    if (req->err_open) {
        close_handle(req, (uv_handle_t *)&req->err);
    }
}

static void finish(struct secret_req *req, int err, const char *secret, const char *msg)
{
    if (req->finished) {
        return;
    }
    req->finished = true;
    req->cb(err, secret, msg, req->arg);
    secret_release(req);
}

static void finish_errorf(struct secret_req *req, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void finish_errorf(struct secret_req *req, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    finish(req, err, NULL, msg);
    free(msg);
}

/* Length of the first line of buf (up to the first CR or LF). */
static size_t first_line_len(const struct sbuf *sb)
{
    if (sb->buf == NULL) {
        return 0;
    }
    return strcspn(sb->buf, "\r\n");
}

static bool has_newline(const struct sbuf *sb)
{
    return sb->buf != NULL && memchr(sb->buf, '\n', sb->len) != NULL;
}

static char *timeout_text(unsigned ms)
{
    if (ms % 1000 == 0) {
        return xasprintf("%u s", ms / 1000);
    }
    return xasprintf("%g s", ms / 1000.0);
}

/* Decides once the command has exited (or timed out) and its output is in. */
static void decide(struct secret_req *req)
{
    if (req->finished) {
        return;
    }
    if (req->timed_out) {
        char *t = timeout_text(req->timeout_ms);
        finish_errorf(req, -ETIMEDOUT, "password_command '%s' timed out after %s", req->name, t);
        free(t);
        return;
    }
    if (req->term_signal != 0) {
        finish_errorf(req, -EIO, "password_command '%s' was killed by signal %d", req->name,
                      req->term_signal);
        return;
    }
    if (req->exit_status != 0) {
        size_t n = first_line_len(&req->errbuf);
        if (n > 0) {
            finish_errorf(req, -EIO, "password_command '%s' exited with status %lld: %.*s",
                          req->name, (long long)req->exit_status, (int)n, req->errbuf.buf);
        } else {
            finish_errorf(req, -EIO, "password_command '%s' exited with status %lld", req->name,
                          (long long)req->exit_status);
        }
        return;
    }
    size_t n = first_line_len(&req->outbuf);
    if (n == 0) {
        finish_errorf(req, -ENODATA, "password_command '%s' printed nothing on standard output",
                      req->name);
        return;
    }
    req->outbuf.buf[n] = '\0';
    finish(req, 0, req->outbuf.buf, NULL);
}

static bool output_complete(const struct secret_req *req)
{
    bool out_done = !req->out_open || has_newline(&req->outbuf);
    bool err_done = !req->err_open || has_newline(&req->errbuf) || req->exit_status == 0;
    return out_done && err_done;
}

static void maybe_decide(struct secret_req *req)
{
    if (req->exited && output_complete(req)) {
        decide(req);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static char scratch[4096];
    /* Reads are consumed synchronously in on_read before the next alloc, so
     * one static buffer is enough on the single loop thread. */
    buf->base = scratch;
    buf->len = sizeof(scratch);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct secret_req *req = s->data;
    bool is_out = s == (uv_stream_t *)&req->out;
    struct sbuf *sb = is_out ? &req->outbuf : &req->errbuf;
    if (nread > 0) {
        size_t room = sb->len < SECRET_MAX_OUTPUT ? SECRET_MAX_OUTPUT - sb->len : 0;
        size_t n = (size_t)nread < room ? (size_t)nread : room;
        if (n > 0) {
            /* Grow by hand so that a reallocation never leaves a copy of
             * the secret behind in freed memory. */
            if (is_out && sb->len + n + 1 > sb->cap) {
                size_t ncap = sb->cap ? sb->cap : 256;
                while (ncap < sb->len + n + 1) {
                    ncap *= 2;
                }
                char *nb = xmalloc(ncap);
                if (sb->len > 0) {
                    memcpy(nb, sb->buf, sb->len);
                }
                secret_wipe(sb->buf, sb->cap);
                free(sb->buf);
                sb->buf = nb;
                sb->cap = ncap;
            }
            sbuf_add(sb, buf->base, n);
        }
        secret_wipe(buf->base, (size_t)nread);
    } else if (nread < 0) {
        uv_read_stop(s);
        close_handle(req, (uv_handle_t *)s);
        if (is_out) {
            req->out_open = false;
        } else {
            req->err_open = false;
        }
    }
    maybe_decide(req);
}

static void on_timer(uv_timer_t *t)
{
    struct secret_req *req = t->data;
    if (req->password != NULL) {
        finish(req, 0, req->password, NULL);
        return;
    }
    if (req->spawn_err != 0) {
        finish_errorf(req, req->spawn_err, "password_command '%s' could not be started: %s",
                      req->name, uv_strerror(req->spawn_err));
        return;
    }
    if (req->exited) {
        /* Grace period over: decide with the output we have. */
        decide(req);
        return;
    }
    req->timed_out = true;
    kill_command(req);
}

static void on_exit_cb(uv_process_t *p, int64_t exit_status, int term_signal)
{
    struct secret_req *req = p->data;
    req->exited = true;
    if (req->finished) {
        /* Killed after the request ended (cancelled or decided without
         * waiting): now reaped, the handle can go. */
        close_handle(req, (uv_handle_t *)&req->proc);
        return;
    }
    req->exit_status = exit_status;
    req->term_signal = req->timed_out ? 0 : term_signal;
    if (req->timed_out) {
        decide(req);
        return;
    }
    uv_timer_stop(&req->timer);
    uv_timer_start(&req->timer, on_timer, SECRET_GRACE_MS, 0);
    maybe_decide(req);
}

static struct secret_req *req_new(uv_loop_t *loop, secret_cb cb, void *arg)
{
    struct secret_req *req = xcalloc(1, sizeof(*req));
    req->loop = loop;
    req->cb = cb;
    req->arg = arg;
    uv_timer_init(loop, &req->timer);
    req->timer.data = req;
    req->open_handles = 1;
    return req;
}

int secret_get(uv_loop_t *loop, const char *password, char *const *command, unsigned timeout_ms,
               secret_cb cb, void *arg, struct secret_req **req_r)
{
    if (password == NULL && (command == NULL || command[0] == NULL)) {
        return -EINVAL;
    }
    struct secret_req *req = req_new(loop, cb, arg);
    req->timeout_ms = timeout_ms ? timeout_ms : 30000;
    if (password != NULL) {
        /* Deliver from the loop so that the caller never sees its callback
         * run inside secret_get. */
        req->password = xstrdup(password);
        uv_timer_start(&req->timer, on_timer, 0, 0);
        *req_r = req;
        return 0;
    }
    req->name = xstrdup(command[0]);

    uv_pipe_init(loop, &req->out, 0);
    req->out.data = req;
    req->open_handles++;
    req->out_open = true;
    uv_pipe_init(loop, &req->err, 0);
    req->err.data = req;
    req->open_handles++;
    req->err_open = true;

    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&req->out;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&req->err;

    uv_process_options_t po;
    memset(&po, 0, sizeof(po));
    po.exit_cb = on_exit_cb;
    po.file = command[0];
    po.args = (char **)command;
    po.stdio_count = 3;
    po.stdio = stdio;
    /* Away from a terminal (systemd, cron) the command gets a session and
     * process group of its own, so that a timeout kills what it started
     * too. On a terminal it stays in ours: it may need the terminal to ask
     * for a passphrase, and Ctrl-C reaches it anyway. */
    if (!has_terminal()) {
        po.flags |= UV_PROCESS_DETACHED;
        req->own_group = true;
    }

    /* Not NOTIFY_SOCKET or WATCHDOG_*: the command does not speak for the
     * daemon to systemd. */
    char **env = child_env(NULL);
    po.env = env;
    req->proc.data = req;
    req->open_handles++;
    int r = uv_spawn(loop, &req->proc, &po);
    child_env_free(env);
    if (r < 0) {
        /* uv_spawn initialised the handle, which still has to be closed;
         * report from the loop. */
        req->spawn_err = r;
        uv_timer_start(&req->timer, on_timer, 0, 0);
        *req_r = req;
        return 0;
    }
    req->spawned = true;
    uv_read_start((uv_stream_t *)&req->out, on_alloc, on_read);
    uv_read_start((uv_stream_t *)&req->err, on_alloc, on_read);
    uv_timer_start(&req->timer, on_timer, req->timeout_ms, 0);
    *req_r = req;
    return 0;
}

int secret_get_account(uv_loop_t *loop, const struct sync_account *acct, unsigned timeout_ms,
                       secret_cb cb, void *arg, struct secret_req **req_r)
{
    return secret_get(loop, acct->password, acct->password_command, timeout_ms, cb, arg, req_r);
}

void secret_cancel(struct secret_req *req)
{
    if (req == NULL || req->finished) {
        return;
    }
    secret_release(req);
}
