#include "daemon/control.h"

#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* The longest reply ctl_request accepts: a status of many accounts is
 * large, but a reply that never ends must not eat the CLI's memory. */
#define CTL_REPLY_MAX (64u << 20)

/* ---- Paths ---- */

/* Writes dir/name into buf if it fits a socket address. */
static int join_sock_path(char *buf, size_t size, const char *dir, const char *name)
{
    size_t cap = size < CTL_PATH_MAX ? size : CTL_PATH_MAX;
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) {
        return -ENAMETOOLONG;
    }
    return 0;
}

int ctl_socket_path(const char *state_dir, char *buf, size_t size)
{
    /* XDG_RUNTIME_DIR is the right place (a tmpfs of the user's, 0700,
     * removed at logout), but only if it really is one of ours: a value
     * inherited across su or sudo names someone else's. */
    const char *rt = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    if (rt != NULL && rt[0] == '/' && stat(rt, &st) == 0 && S_ISDIR(st.st_mode) &&
        st.st_uid == geteuid() && access(rt, W_OK | X_OK) == 0 &&
        join_sock_path(buf, size, rt, "mailsync/control") == 0) {
        return 0;
    }
    return join_sock_path(buf, size, state_dir, "control");
}

static int sock_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len >= sizeof(sa->sun_path)) {
        return -ENAMETOOLONG;
    }
    memcpy(sa->sun_path, path, len + 1);
    return 0;
}

/* A non-blocking stream socket and the address of path, for connect or
 * bind. Returns the descriptor, or a negative errno with a message. */
static int stream_socket(const char *path, struct sockaddr_un *sa, char **err_r)
{
    if (sock_addr(path, sa) != 0) {
        *err_r = xasprintf("control socket path %s is too long", path);
        return -ENAMETOOLONG;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        int rc = -errno;
        *err_r = xasprintf("cannot create a socket: %s", strerror(-rc));
        return rc;
    }
    return fd;
}

/* ---- Words ---- */

int ctl_split(const char *line, size_t len, char ***argv_r, int *argc_r, char **err_r)
{
    char **argv = NULL;
    size_t argc = 0, cap = 0;
    struct sbuf word = {0};
    size_t i = 0;
    int rc = 0;
    for (;;) {
        while (i < len && (line[i] == ' ' || line[i] == '\t')) {
            i++;
        }
        if (i >= len) {
            break;
        }
        bool quoted = false;
        sbuf_reset(&word);
        sbuf_adds(&word, "");
        for (; i < len; i++) {
            char ch = line[i];
            if (ch == '\0') {
                *err_r = xasprintf("request holds a NUL byte");
                rc = -EINVAL;
                goto out;
            }
            if (!quoted && (ch == ' ' || ch == '\t')) {
                break;
            }
            if (ch == '"') {
                quoted = !quoted;
                continue;
            }
            if (ch == '\\') {
                if (++i >= len) {
                    *err_r = xasprintf("request ends in a backslash");
                    rc = -EINVAL;
                    goto out;
                }
                ch = line[i];
                if (ch == '\0') {
                    *err_r = xasprintf("request holds a NUL byte");
                    rc = -EINVAL;
                    goto out;
                }
            }
            sbuf_addc(&word, ch);
        }
        if (quoted) {
            *err_r = xasprintf("request has an unterminated quote");
            rc = -EINVAL;
            goto out;
        }
        xgrow(&argv, &cap, argc + 2, sizeof(*argv));
        argv[argc++] = xstrndup(word.buf, word.len);
    }
    xgrow(&argv, &cap, argc + 1, sizeof(*argv));
    argv[argc] = NULL;
    *argv_r = argv;
    *argc_r = (int)argc;
    argv = NULL;
out:
    if (argv != NULL) {
        argv[argc] = NULL;
        ctl_argv_free(argv);
    }
    sbuf_free(&word);
    return rc;
}

void ctl_argv_free(char **argv)
{
    if (argv == NULL) {
        return;
    }
    for (char **p = argv; *p != NULL; p++) {
        free(*p);
    }
    free(argv);
}

void ctl_quote(struct sbuf *sb, const char *word)
{
    bool plain = word[0] != '\0';
    for (const char *p = word; *p != '\0' && plain; p++) {
        unsigned char ch = (unsigned char)*p;
        plain = !(ch <= ' ' || ch == '"' || ch == '\\' || ch == 0x7f);
    }
    if (plain) {
        sbuf_adds(sb, word);
        return;
    }
    sbuf_addc(sb, '"');
    for (const char *p = word; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\') {
            sbuf_addc(sb, '\\');
        }
        sbuf_addc(sb, *p);
    }
    sbuf_addc(sb, '"');
}

void ctl_json_error(struct sbuf *sb, const char *msg)
{
    sbuf_adds(sb, "{\"ok\":false,\"error\":");
    sbuf_add_json(sb, msg);
    sbuf_addc(sb, '}');
}

/* ---- Server ---- */

struct ctl_client;

struct ctl_req {
    struct ctl_client *client; /* NULL once gone */
    char **argv;
    int argc;
    void *data;
};

struct ctl_server {
    uv_loop_t *loop;
    uv_pipe_t listener;
    char *path;
    dev_t dev;
    ino_t ino;
    ctl_handler_fn *handler;
    void *arg;
    struct ctl_opts opts;
    struct ctl_client *clients; /* every client not yet freed, closing ones included */
    unsigned served;            /* clients counted against max_clients */
    bool closing;
    bool listener_closed;
};

struct ctl_client {
    struct ctl_server *srv;
    struct ctl_client *prev, *next;
    uv_pipe_t pipe;
    uv_timer_t idle;
    int handles; /* open libuv handles; freed at 0 */
    bool counted;
    bool closing;
    bool reading;
    bool eof;               /* the peer shut down its sending side */
    bool close_after_write; /* closed once the writes in flight are done */
    bool dispatching;       /* inside client_process: ctl_reply must not recurse */
    unsigned writes;        /* in flight */
    struct ctl_req *pending;
    /* Unparsed input: a whole request of CTL_LINE_MAX bytes and its LF fit;
     * reading stops while it is full. */
    size_t in_len;
    char in[CTL_LINE_MAX + 1];
};

struct ctl_write {
    uv_write_t w;
    struct ctl_client *client;
    char data[];
};

static void client_process(struct ctl_client *c);
static void client_close(struct ctl_client *c);

static void server_maybe_free(struct ctl_server *srv)
{
    if (srv->closing && srv->listener_closed && srv->clients == NULL) {
        free(srv->path);
        free(srv);
    }
}

static void on_client_closed(uv_handle_t *handle)
{
    struct ctl_client *c = handle->data;
    if (--c->handles > 0) {
        return;
    }
    struct ctl_server *srv = c->srv;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        srv->clients = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    free(c);
    server_maybe_free(srv);
}

/* Abandons the request in flight: its owner learns it through on_gone
 * and ctl_req_gone, and its reply will only free it. */
static void client_drop_pending(struct ctl_client *c)
{
    struct ctl_req *req = c->pending;
    if (req == NULL) {
        return;
    }
    c->pending = NULL;
    req->client = NULL;
    if (c->srv->opts.on_gone != NULL) {
        c->srv->opts.on_gone(req, c->srv->arg);
    }
}

static void client_close(struct ctl_client *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    if (c->counted) {
        c->counted = false;
        c->srv->served--;
    }
    client_drop_pending(c);
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
    uv_close((uv_handle_t *)&c->idle, on_client_closed);
}

static void on_write(uv_write_t *w, int status)
{
    struct ctl_write *cw = (struct ctl_write *)w;
    struct ctl_client *c = cw->client;
    free(cw);
    c->writes--;
    if (c->closing) {
        return;
    }
    if (status < 0) {
        log_debug("control socket: a client went away: %s", uv_strerror(status));
        client_close(c);
        return;
    }
    if (c->writes == 0 && c->close_after_write) {
        client_close(c);
        return;
    }
    /* A half-closed client whose last reply just left is done. */
    if (!c->dispatching) {
        client_process(c);
    }
}

/* Queues text plus a LF, with CR and LF inside it sent as spaces. */
static void client_write(struct ctl_client *c, const char *text)
{
    size_t len = strlen(text);
    struct ctl_write *cw = xmalloc(sizeof(*cw) + len + 1);
    for (size_t i = 0; i < len; i++) {
        cw->data[i] = text[i] == '\n' || text[i] == '\r' ? ' ' : text[i];
    }
    cw->data[len] = '\n';
    cw->client = c;
    uv_buf_t buf = uv_buf_init(cw->data, (unsigned)(len + 1));
    int rc = uv_write(&cw->w, (uv_stream_t *)&c->pipe, &buf, 1, on_write);
    if (rc < 0) {
        free(cw);
        client_close(c);
        return;
    }
    c->writes++;
}

static void client_write_error(struct ctl_client *c, const char *msg)
{
    struct sbuf sb = {0};
    ctl_json_error(&sb, msg);
    client_write(c, sb.buf);
    sbuf_free(&sb);
}

static void on_idle(uv_timer_t *t)
{
    struct ctl_client *c = t->data;
    log_debug("control socket: closing a client idle for %u ms", c->srv->opts.idle_timeout_ms);
    client_close(c);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct ctl_client *c = handle->data;
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof(c->in) - c->in_len));
}

/* Whether the peer closed its end altogether (not only its sending
 * side): a Unix socket then reports POLLHUP. */
static bool peer_hung_up(struct ctl_client *c)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0) {
        return true;
    }
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR)) != 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct ctl_client *c = stream->data;
    if (nread == 0 || c->closing) {
        return;
    }
    if (nread < 0) {
        uv_read_stop(stream);
        c->reading = false;
        if (nread != UV_EOF || peer_hung_up(c)) {
            client_close(c);
            return;
        }
        c->eof = true;
        client_process(c);
        return;
    }
    c->in_len += (size_t)nread;
    client_process(c);
}

static void client_read(struct ctl_client *c, bool on)
{
    if (on && !c->reading && !c->eof) {
        if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) == 0) {
            c->reading = true;
        }
    } else if (!on && c->reading) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->reading = false;
    }
}

/* Answers the complete lines in the input, one request at a time. */
static void client_process(struct ctl_client *c)
{
    c->dispatching = true;
    while (!c->closing && c->pending == NULL && !c->close_after_write) {
        char *lf = memchr(c->in, '\n', c->in_len);
        if (lf == NULL) {
            if (c->in_len > CTL_LINE_MAX) {
                char msg[64];
                snprintf(msg, sizeof(msg), "request longer than %d bytes", CTL_LINE_MAX);
                client_write_error(c, msg);
                c->close_after_write = true;
                break;
            }
            if (c->eof) {
                /* Done: what is left is a line without its LF, which the
                 * client never finished. */
                if (c->writes == 0) {
                    client_close(c);
                } else {
                    c->close_after_write = true;
                }
            }
            break;
        }
        size_t len = (size_t)(lf - c->in);
        size_t used = len + 1;
        if (len > 0 && c->in[len - 1] == '\r') {
            len--;
        }
        char **argv = NULL;
        int argc = 0;
        char *err = NULL;
        int rc = ctl_split(c->in, len, &argv, &argc, &err);
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
        if (rc != 0) {
            client_write_error(c, err);
            free(err);
            continue;
        }
        if (argc == 0) {
            ctl_argv_free(argv);
            continue;
        }
        struct ctl_req *req = xcalloc(1, sizeof(*req));
        req->client = c;
        req->argv = argv;
        req->argc = argc;
        c->pending = req;
        uv_timer_stop(&c->idle);
        c->srv->handler(req, c->srv->arg);
    }
    c->dispatching = false;
    if (c->closing) {
        return;
    }
    /* Keep reading while a request is in flight, to notice a client that
     * leaves, unless the buffer is full (a client that pipelines more than
     * a line's worth waits: its data stays in the socket). */
    client_read(c, !c->close_after_write && c->in_len < sizeof(c->in));
    if (c->pending == NULL && !c->close_after_write) {
        uv_timer_start(&c->idle, on_idle, c->srv->opts.idle_timeout_ms, 0);
    } else {
        uv_timer_stop(&c->idle);
    }
}

int ctl_req_argc(const struct ctl_req *req)
{
    return req->argc;
}

char *const *ctl_req_argv(const struct ctl_req *req)
{
    return req->argv;
}

bool ctl_req_gone(const struct ctl_req *req)
{
    return req->client == NULL;
}

void ctl_req_set_data(struct ctl_req *req, void *data)
{
    req->data = data;
}

void *ctl_req_data(const struct ctl_req *req)
{
    return req->data;
}

void ctl_reply(struct ctl_req *req, const char *json)
{
    struct ctl_client *c = req->client;
    ctl_argv_free(req->argv);
    free(req);
    if (c == NULL) {
        return;
    }
    c->pending = NULL;
    client_write(c, json);
    if (!c->dispatching) {
        client_process(c);
    }
}

void ctl_reply_error(struct ctl_req *req, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    struct sbuf sb = {0};
    ctl_json_error(&sb, msg);
    free(msg);
    ctl_reply(req, sb.buf);
    sbuf_free(&sb);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct ctl_server *srv = listener->data;
    if (status < 0) {
        log_warnx("control socket %s: %s", srv->path, uv_strerror(status));
        return;
    }
    struct ctl_client *c = xcalloc(1, sizeof(*c));
    c->srv = srv;
    uv_pipe_init(srv->loop, &c->pipe, 0);
    uv_timer_init(srv->loop, &c->idle);
    c->pipe.data = c->idle.data = c;
    c->handles = 2;
    c->next = srv->clients;
    if (srv->clients != NULL) {
        srv->clients->prev = c;
    }
    srv->clients = c;
    if (uv_accept(listener, (uv_stream_t *)&c->pipe) != 0) {
        client_close(c);
        return;
    }
    uv_os_fd_t fd;
    struct ucred cred;
    socklen_t credlen = sizeof(cred);
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) != 0) {
        client_close(c);
        return;
    }
    /* The timer bounds every connection, refused ones included: a peer
     * that never reads its refusal is closed all the same. */
    uv_timer_start(&c->idle, on_idle, srv->opts.idle_timeout_ms, 0);
    if (cred.uid != geteuid()) {
        log_warnx("control socket %s: refused a connection from uid %ld (pid %ld)", srv->path,
                  (long)cred.uid, (long)cred.pid);
        char msg[128];
        snprintf(msg, sizeof(msg),
                 "permission denied: uid %ld may not control the daemon of uid %ld", (long)cred.uid,
                 (long)geteuid());
        client_write_error(c, msg);
        c->close_after_write = true;
        return;
    }
    if (srv->served >= srv->opts.max_clients) {
        char msg[64];
        snprintf(msg, sizeof(msg), "too many clients (at most %u)", srv->opts.max_clients);
        client_write_error(c, msg);
        c->close_after_write = true;
        return;
    }
    c->counted = true;
    srv->served++;
    client_process(c);
}

/* Checks (and creates) the socket's directory: ours, and nobody else's
 * way in, since whoever can write there can put a socket of their own in
 * place of ours. */
static int check_dir(const char *dir, char **err_r)
{
    int rc = mkdir_p(dir, 0700);
    if (rc != 0) {
        *err_r = xasprintf("cannot create control socket directory %s: %s", dir, strerror(-rc));
        return rc;
    }
    struct stat st;
    if (lstat(dir, &st) != 0) {
        rc = -errno;
        *err_r = xasprintf("cannot examine control socket directory %s: %s", dir, strerror(-rc));
        return rc;
    }
    if (!S_ISDIR(st.st_mode)) {
        *err_r = xasprintf("refusing control socket directory %s: it is not a directory", dir);
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        *err_r = xasprintf("refusing control socket directory %s: it belongs to uid %ld, not "
                           "to uid %ld",
                           dir, (long)st.st_uid, (long)geteuid());
        return -EPERM;
    }
    if ((st.st_mode & 077) != 0) {
        *err_r = xasprintf("refusing control socket directory %s: group or others have access "
                           "to it (mode %04o); chmod 700 %s",
                           dir, (unsigned)(st.st_mode & 07777), dir);
        return -EPERM;
    }
    return 0;
}

/* Removes a stale socket at path; refuses a live one and anything that is
 * not a socket. */
static int clear_path(const char *path, char **err_r)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) {
            return 0;
        }
        int rc = -errno;
        *err_r = xasprintf("cannot examine %s: %s", path, strerror(-rc));
        return rc;
    }
    if (!S_ISSOCK(st.st_mode)) {
        *err_r = xasprintf("refusing to replace %s: it is not a socket", path);
        return -EEXIST;
    }
    /* Non-blocking: a live daemon whose backlog is full answers EAGAIN,
     * which is as live as a connection. */
    struct sockaddr_un sa;
    int fd = stream_socket(path, &sa, err_r);
    if (fd < 0) {
        return fd;
    }
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : -errno;
    close(fd);
    if (rc == 0 || rc == -EAGAIN || rc == -EINPROGRESS) {
        *err_r = xasprintf("another mailsync daemon answers at %s", path);
        return -EADDRINUSE;
    }
    if (rc != -ECONNREFUSED) {
        *err_r = xasprintf("cannot check whether a daemon answers at %s: %s", path, strerror(-rc));
        return rc;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        rc = -errno;
        *err_r = xasprintf("cannot remove stale control socket %s: %s", path, strerror(-rc));
        return rc;
    }
    log_debug("removed stale control socket %s", path);
    return 0;
}

/* Binds and listens on path, mode 0600. Returns the descriptor or a
 * negative errno. */
static int bind_socket(const char *path, dev_t *dev_r, ino_t *ino_r, char **err_r)
{
    struct sockaddr_un sa;
    int fd = stream_socket(path, &sa, err_r);
    if (fd < 0) {
        return fd;
    }
    int rc;
    /* umask 077, not 177: the umask is the process's, and a threadpool job
     * creating a directory meanwhile must still be able to enter it. The
     * directory is 0700 anyway, so the moment before the chmod below
     * exposes nothing. */
    mode_t old = umask(077);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : -errno;
    umask(old);
    if (rc != 0) {
        *err_r = xasprintf("cannot bind control socket %s: %s", path, strerror(-rc));
        goto fail;
    }
    struct stat st;
    if (chmod(path, 0600) != 0 || lstat(path, &st) != 0) {
        rc = -errno;
        *err_r = xasprintf("cannot set the mode of control socket %s: %s", path, strerror(-rc));
        goto fail_unlink;
    }
    if (!S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != 0600 || st.st_uid != geteuid()) {
        rc = -EPERM;
        *err_r = xasprintf("control socket %s is mode %04o, uid %ld after binding; expected a "
                           "socket of mode 0600 and uid %ld",
                           path, (unsigned)(st.st_mode & 07777), (long)st.st_uid, (long)geteuid());
        goto fail_unlink;
    }
    if (listen(fd, 16) != 0) {
        rc = -errno;
        *err_r = xasprintf("cannot listen on control socket %s: %s", path, strerror(-rc));
        goto fail_unlink;
    }
    *dev_r = st.st_dev;
    *ino_r = st.st_ino;
    return fd;
fail_unlink:
    unlink(path);
fail:
    close(fd);
    return rc;
}

int ctl_server_start(uv_loop_t *loop, const char *path, const struct ctl_opts *opts,
                     ctl_handler_fn *handler, void *arg, struct ctl_server **srv_r, char **err_r)
{
    *srv_r = NULL;
    if (strlen(path) >= CTL_PATH_MAX) {
        *err_r = xasprintf("control socket path %s is too long", path);
        return -ENAMETOOLONG;
    }
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir) {
        free(dir);
        *err_r = xasprintf("control socket path %s must be absolute, below a directory", path);
        return -EINVAL;
    }
    *slash = '\0';
    int rc = check_dir(dir, err_r);
    free(dir);
    if (rc != 0) {
        return rc;
    }
    rc = clear_path(path, err_r);
    if (rc != 0) {
        return rc;
    }
    dev_t dev;
    ino_t ino;
    int fd = bind_socket(path, &dev, &ino, err_r);
    if (fd < 0) {
        return fd;
    }
    struct ctl_server *srv = xcalloc(1, sizeof(*srv));
    srv->loop = loop;
    srv->path = xstrdup(path);
    srv->dev = dev;
    srv->ino = ino;
    srv->handler = handler;
    srv->arg = arg;
    if (opts != NULL) {
        srv->opts = *opts;
    }
    if (srv->opts.max_clients == 0) {
        srv->opts.max_clients = CTL_DEFAULT_MAX_CLIENTS;
    }
    if (srv->opts.idle_timeout_ms == 0) {
        srv->opts.idle_timeout_ms = CTL_DEFAULT_IDLE_MS;
    }
    uv_pipe_init(loop, &srv->listener, 0);
    srv->listener.data = srv;
    rc = uv_pipe_open(&srv->listener, fd);
    if (rc != 0) {
        close(fd);
    } else {
        rc = uv_listen((uv_stream_t *)&srv->listener, 16, on_connection);
    }
    if (rc != 0) {
        *err_r = xasprintf("cannot listen on control socket %s: %s", path, uv_strerror(rc));
        unlink(path);
        srv->closing = true;
        ctl_server_close(srv);
        return rc;
    }
    *srv_r = srv;
    return 0;
}

const char *ctl_server_path(const struct ctl_server *srv)
{
    return srv->path;
}

static void on_listener_closed(uv_handle_t *handle)
{
    struct ctl_server *srv = handle->data;
    srv->listener_closed = true;
    server_maybe_free(srv);
}

void ctl_server_close(struct ctl_server *srv)
{
    if (srv == NULL) {
        return;
    }
    srv->closing = true;
    /* Only our own socket: if ours was removed (by hand, or by a cleaner
     * of the runtime directory), a daemon started since may have bound a
     * new one there. */
    struct stat st;
    if (lstat(srv->path, &st) == 0 && st.st_dev == srv->dev && st.st_ino == srv->ino) {
        unlink(srv->path);
    }
    for (struct ctl_client *c = srv->clients; c != NULL; c = c->next) {
        client_close(c);
    }
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

/* ---- Client ---- */

/* Milliseconds left until deadline (ms from now_ms), -1 for none. */
static int time_left(unsigned long long deadline)
{
    if (deadline == 0) {
        return -1;
    }
    unsigned long long now = now_ms();
    return now >= deadline ? 0 : (int)(deadline - now);
}

/* Waits for events on fd until the deadline: 0, -ETIMEDOUT, or -errno. */
static int wait_fd(int fd, short events, unsigned long long deadline)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events};
        int left = time_left(deadline);
        if (left == 0) {
            return -ETIMEDOUT;
        }
        int n = poll(&pfd, 1, left);
        if (n > 0) {
            return 0;
        }
        if (n < 0 && errno != EINTR) {
            return -errno;
        }
    }
}

int ctl_request(const char *path, const char *line, int timeout_ms, char **reply_r, char **err_r)
{
    *reply_r = NULL;
    size_t line_len = strlen(line);
    if (line_len > CTL_LINE_MAX || memchr(line, '\n', line_len) != NULL) {
        *err_r = xasprintf("control request is longer than %d bytes or holds a line break",
                           CTL_LINE_MAX);
        return -EINVAL;
    }
    unsigned long long deadline = timeout_ms >= 0 ? now_ms() + (unsigned)timeout_ms : 0;
    struct sockaddr_un sa;
    int fd = stream_socket(path, &sa, err_r);
    if (fd < 0) {
        return fd;
    }
    struct sbuf in = {0};
    int rc = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        rc = -errno;
        if (rc == -ENOENT || rc == -ECONNREFUSED) {
            *err_r = xasprintf("no mailsync daemon is running (nothing answers at %s)", path);
            rc = CTL_ENODAEMON;
            goto out;
        }
        if (rc != -EAGAIN && rc != -EINPROGRESS) {
            *err_r =
                xasprintf("cannot connect to the mailsync daemon at %s: %s", path, strerror(-rc));
            goto out;
        }
        /* The daemon's backlog is full: it is there but busy. */
        rc = wait_fd(fd, POLLOUT, deadline);
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr != 0) {
            rc = -soerr;
        }
        if (rc == -ETIMEDOUT) {
            *err_r = xasprintf("the mailsync daemon at %s did not accept the connection within "
                               "%d ms",
                               path, timeout_ms);
            goto out;
        }
        if (rc != 0) {
            *err_r =
                xasprintf("cannot connect to the mailsync daemon at %s: %s", path, strerror(-rc));
            goto out;
        }
    }
    char *msg = xasprintf("%s\n", line);
    size_t off = 0, total = line_len + 1;
    while (off < total) {
        ssize_t n = send(fd, msg + off, total - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
        } else if (errno == EAGAIN) {
            rc = wait_fd(fd, POLLOUT, deadline);
        } else if (errno != EINTR) {
            rc = -errno;
        }
        if (rc != 0) {
            break;
        }
    }
    free(msg);
    while (rc == 0) {
        char *lf = in.len > 0 ? memchr(in.buf, '\n', in.len) : NULL;
        if (lf != NULL) {
            *reply_r = xstrndup(in.buf, (size_t)(lf - in.buf));
            goto out;
        }
        if (in.len > CTL_REPLY_MAX) {
            rc = -EPROTO;
            *err_r = xasprintf("the mailsync daemon at %s sent a reply of over %u bytes", path,
                               CTL_REPLY_MAX);
            goto out;
        }
        char buf[65536];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n > 0) {
            sbuf_add(&in, buf, (size_t)n);
        } else if (n == 0) {
            rc = -EPROTO;
            *err_r =
                xasprintf("the mailsync daemon at %s closed the connection without a reply", path);
            goto out;
        } else if (errno == EAGAIN) {
            rc = wait_fd(fd, POLLIN, deadline);
        } else if (errno != EINTR) {
            rc = -errno;
        }
    }
    if (rc == -ETIMEDOUT) {
        *err_r =
            xasprintf("the mailsync daemon at %s did not answer within %d ms", path, timeout_ms);
    } else {
        *err_r = xasprintf("talking to the mailsync daemon at %s: %s", path, strerror(-rc));
    }
out:
    sbuf_free(&in);
    close(fd);
    return rc;
}
