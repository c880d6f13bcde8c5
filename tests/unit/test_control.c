/* LINK: ms_daemonctl ms_core */
/* The control socket (daemon/control.c) on a real loop, with clients in
 * forked processes: where the socket goes, the modes of its directory and
 * file, stale and live sockets, words in quotes, oversize lines, replies
 * in order, asynchronous replies, a client that leaves before its reply,
 * a half-closed client, a peer of another uid refused (the client runs as
 * uid 65534), the client limit, the idle timeout, server close with a
 * request in flight, and the blocking client ctl_request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/util.h"
#include "daemon/control.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOBODY 65534

/* ---- Fixture: a loop, a server in a temporary directory, a handler ---- */

struct fixture {
    uv_loop_t loop;
    char base[64];
    char dir[96];
    char path[CTL_PATH_MAX];
    struct ctl_server *srv;
    uv_timer_t guard;
    int children;       /* running */
    int handled;        /* requests the handler saw */
    int later_open;     /* asynchronous replies not yet sent */
    int gone;           /* on_gone calls */
    int replied_gone;   /* asynchronous replies found their client gone */
    int expect_handled; /* the server closes once all this happened */
    int expect_gone;
    bool timed_out;
};

struct later {
    uv_timer_t timer;
    struct ctl_req *req;
    struct fixture *fx;
    unsigned ms;
};

static void fx_maybe_finish(struct fixture *fx)
{
    if (fx->srv == NULL || fx->children > 0 || fx->later_open > 0 ||
        fx->handled < fx->expect_handled || fx->gone < fx->expect_gone) {
        return;
    }
    ctl_server_close(fx->srv);
    fx->srv = NULL;
    uv_close((uv_handle_t *)&fx->guard, NULL);
}

static void on_later_closed(uv_handle_t *h)
{
    struct later *l = h->data;
    l->fx->later_open--;
    fx_maybe_finish(l->fx);
    free(l);
}

static void on_later(uv_timer_t *t)
{
    struct later *l = t->data;
    if (ctl_req_gone(l->req)) {
        l->fx->replied_gone++;
    }
    char json[64];
    snprintf(json, sizeof(json), "{\"ok\":true,\"later\":%u}", l->ms);
    ctl_reply(l->req, json);
    uv_close((uv_handle_t *)&l->timer, on_later_closed);
}

/* Requests: `echo WORDS...` answers the words as a JSON array at once;
 * `later MS` answers {"ok":true,"later":MS} after MS milliseconds;
 * anything else is an error reply. */
static void handler(struct ctl_req *req, void *arg)
{
    struct fixture *fx = arg;
    fx->handled++;
    char *const *argv = ctl_req_argv(req);
    assert_null(argv[ctl_req_argc(req)]);
    if (strcmp(argv[0], "echo") == 0) {
        struct sbuf sb = {0};
        sbuf_adds(&sb, "{\"ok\":true,\"argv\":[");
        for (int i = 1; i < ctl_req_argc(req); i++) {
            sbuf_adds(&sb, i > 1 ? "," : "");
            sbuf_add_json(&sb, argv[i]);
        }
        sbuf_adds(&sb, "]}");
        ctl_reply(req, sb.buf);
        sbuf_free(&sb);
    } else if (strcmp(argv[0], "later") == 0 && ctl_req_argc(req) == 2) {
        struct later *l = xcalloc(1, sizeof(*l));
        l->req = req;
        l->fx = fx;
        l->ms = (unsigned)atoi(argv[1]);
        ctl_req_set_data(req, l);
        assert_ptr_equal(ctl_req_data(req), l);
        uv_timer_init(&fx->loop, &l->timer);
        l->timer.data = l;
        uv_timer_start(&l->timer, on_later, l->ms, 0);
        fx->later_open++;
    } else if (strcmp(argv[0], "multiline") == 0) {
        ctl_reply(req, "{\"ok\":true,\r\n\"x\":1}");
    } else {
        ctl_reply_error(req, "unknown request '%s'", argv[0]);
    }
}

static void on_gone(struct ctl_req *req, void *arg)
{
    struct fixture *fx = arg;
    fx->gone++;
    struct later *l = ctl_req_data(req);
    assert_non_null(l);
    assert_true(ctl_req_gone(req));
}

static void on_guard(uv_timer_t *t)
{
    struct fixture *fx = t->data;
    fx->timed_out = true;
    fx->children = 0;
    fx->expect_handled = fx->expect_gone = 0;
    fx_maybe_finish(fx);
}

static void fx_init(struct fixture *fx)
{
    memset(fx, 0, sizeof(*fx));
    snprintf(fx->base, sizeof(fx->base), "/tmp/test_control.XXXXXX");
    assert_non_null(mkdtemp(fx->base));
    snprintf(fx->dir, sizeof(fx->dir), "%s/run/mailsync", fx->base);
    snprintf(fx->path, sizeof(fx->path), "%s/control", fx->dir);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    uv_timer_init(&fx->loop, &fx->guard);
    fx->guard.data = fx;
    uv_timer_start(&fx->guard, on_guard, 10000, 0);
}

static void fx_start(struct fixture *fx, const struct ctl_opts *opts)
{
    char *err = NULL;
    int rc = ctl_server_start(&fx->loop, fx->path, opts, handler, fx, &fx->srv, &err);
    if (rc != 0) {
        fail_msg("ctl_server_start: %s", err);
    }
    assert_string_equal(ctl_server_path(fx->srv), fx->path);
}

static void rm_rf(const char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
}

/* Runs the loop until the server closed, and checks it closes clean. */
static void fx_run(struct fixture *fx)
{
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
    assert_false(fx->timed_out);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
}

static void fx_done(struct fixture *fx)
{
    rm_rf(fx->base);
}

/* ---- Clients in forked processes, reporting on a pipe ---- */

struct child {
    uv_pipe_t out;
    struct sbuf text;
    pid_t pid;
    struct fixture *fx;
};

typedef void child_fn(struct fixture *fx, const void *arg, int out);

static void on_child_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char space[4096];
    *buf = uv_buf_init(space, sizeof(space));
}

static void on_child_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct child *ch = s->data;
    if (n > 0) {
        sbuf_add(&ch->text, buf->base, (size_t)n);
        return;
    }
    if (n == 0) {
        return;
    }
    int status;
    assert_int_equal(waitpid(ch->pid, &status, 0), ch->pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    uv_close((uv_handle_t *)&ch->out, NULL);
    ch->fx->children--;
    fx_maybe_finish(ch->fx);
}

static void child_out(int out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void child_out(int out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = xvasprintf(fmt, ap);
    va_end(ap);
    if (write(out, s, strlen(s)) < 0) {
        _exit(3);
    }
    free(s);
}

static void spawn(struct fixture *fx, struct child *ch, child_fn *fn, const void *arg)
{
    memset(ch, 0, sizeof(*ch));
    ch->fx = fx;
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(stdout);
    fflush(stderr);
    ch->pid = fork();
    assert_true(ch->pid >= 0);
    if (ch->pid == 0) {
        /* Only the report pipe: descriptors of the server's connections
         * must not stay open here, or the server would not see a client
         * leave. */
        for (int fd = 3; fd < 1024; fd++) {
            if (fd != p[1]) {
                close(fd);
            }
        }
        fn(fx, arg, p[1]);
        _exit(0);
    }
    close(p[1]);
    uv_pipe_init(&fx->loop, &ch->out, 0);
    assert_int_equal(uv_pipe_open(&ch->out, p[0]), 0);
    ch->out.data = ch;
    assert_int_equal(uv_read_start((uv_stream_t *)&ch->out, on_child_alloc, on_child_read), 0);
    fx->children++;
}

static void drop_to_nobody(void)
{
    if (setgroups(0, NULL) != 0 || setresgid(NOBODY, NOBODY, NOBODY) != 0 ||
        setresuid(NOBODY, NOBODY, NOBODY) != 0) {
        _exit(4);
    }
}

static int connect_to(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* Reads until the server closes (EOF; a Unix socket closed with unread
 * input reports ECONNRESET instead) or timeout_ms passes, reporting the
 * bytes and then <EOF> or <TIMEOUT>. */
static void read_all(int fd, int timeout_ms, int out)
{
    unsigned long long deadline = now_ms() + (unsigned)timeout_ms;
    for (;;) {
        unsigned long long now = now_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (now >= deadline || poll(&pfd, 1, (int)(deadline - now)) == 0) {
            child_out(out, "<TIMEOUT>");
            return;
        }
        char buf[8192];
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            child_out(out, "<EOF>");
            return;
        }
        if (n < 0) {
            child_out(out, "<ERR %s>", strerror(errno));
            return;
        }
        if (write(out, buf, (size_t)n) != n) {
            _exit(3);
        }
    }
}

/* Reads n lines, or less on EOF or timeout. */
static void read_lines(int fd, int n, int out)
{
    int seen = 0;
    while (seen < n) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 5000) == 0) {
            child_out(out, "<TIMEOUT>");
            return;
        }
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r <= 0) {
            child_out(out, "<EOF>");
            return;
        }
        child_out(out, "%c", c);
        seen += c == '\n';
    }
}

struct script {
    const char *send;
    size_t send_len; /* 0: strlen(send) */
    bool as_nobody;
    bool half_close;  /* shutdown(SHUT_WR) after sending */
    bool leave;       /* close right after sending */
    int lines;        /* read this many lines and close; 0: read until EOF */
    int timeout_ms;   /* for reading until EOF; 0: 5000 */
    bool report_wait; /* report whether the EOF came after at least 80 ms */
};

static void run_script(struct fixture *fx, const void *arg, int out)
{
    const struct script *s = arg;
    if (s->as_nobody) {
        drop_to_nobody();
    }
    int fd = connect_to(fx->path);
    if (fd < 0) {
        child_out(out, "<CONNECT %s>", strerror(-fd));
        return;
    }
    unsigned long long t0 = now_ms();
    size_t len = s->send_len != 0 ? s->send_len : strlen(s->send);
    /* A server that refuses us may close before we send: what it said is
     * read below all the same. */
    if (len > 0 && send(fd, s->send, len, MSG_NOSIGNAL) != (ssize_t)len && errno != EPIPE &&
        errno != ECONNRESET) {
        child_out(out, "<SEND %s>", strerror(errno));
    }
    if (s->leave) {
        close(fd);
        return;
    }
    if (s->half_close) {
        shutdown(fd, SHUT_WR);
    }
    if (s->lines > 0) {
        read_lines(fd, s->lines, out);
    } else {
        read_all(fd, s->timeout_ms != 0 ? s->timeout_ms : 5000, out);
    }
    if (s->report_wait) {
        child_out(out, now_ms() - t0 >= 80 ? "<WAITED>" : "<EARLY>");
    }
    close(fd);
}

/* One client with a script; returns what it received (caller frees). */
static char *one_client(struct fixture *fx, const struct script *s)
{
    struct child ch;
    spawn(fx, &ch, run_script, s);
    fx_run(fx);
    return sbuf_detach(&ch.text);
}

/* ---- Tests ---- */

/* $XDG_RUNTIME_DIR/mailsync/control when that directory is ours and
 * writable, else STATE_DIR/control; a path too long for a socket address
 * is refused. Nothing is created. */
static void test_socket_path(void **state)
{
    (void)state;
    char rt[] = "/tmp/test_control_rt.XXXXXX";
    assert_non_null(mkdtemp(rt));
    char buf[CTL_PATH_MAX];
    setenv("XDG_RUNTIME_DIR", rt, 1);
    assert_int_equal(ctl_socket_path("/home/u/.local/state/mailsync", buf, sizeof(buf)), 0);
    char *want = xasprintf("%s/mailsync/control", rt);
    assert_string_equal(buf, want);
    free(want);
    struct stat st;
    char *sub = xasprintf("%s/mailsync", rt);
    assert_int_equal(stat(sub, &st), -1);
    free(sub);

    const char *fallback = "/home/u/.local/state/mailsync/control";
    unsetenv("XDG_RUNTIME_DIR");
    assert_int_equal(ctl_socket_path("/home/u/.local/state/mailsync", buf, sizeof(buf)), 0);
    assert_string_equal(buf, fallback);
    setenv("XDG_RUNTIME_DIR", "relative/run", 1);
    assert_int_equal(ctl_socket_path("/home/u/.local/state/mailsync", buf, sizeof(buf)), 0);
    assert_string_equal(buf, fallback);
    setenv("XDG_RUNTIME_DIR", "/nonexistent/run/user/1000", 1);
    assert_int_equal(ctl_socket_path("/home/u/.local/state/mailsync", buf, sizeof(buf)), 0);
    assert_string_equal(buf, fallback);
    /* Someone else's runtime directory (inherited across su). */
    assert_int_equal(chown(rt, NOBODY, NOBODY), 0);
    setenv("XDG_RUNTIME_DIR", rt, 1);
    assert_int_equal(ctl_socket_path("/home/u/.local/state/mailsync", buf, sizeof(buf)), 0);
    assert_string_equal(buf, fallback);
    unsetenv("XDG_RUNTIME_DIR");

    char longdir[120];
    memset(longdir, 'd', sizeof(longdir) - 1);
    longdir[0] = '/';
    longdir[sizeof(longdir) - 1] = '\0';
    assert_int_equal(ctl_socket_path(longdir, buf, sizeof(buf)), -ENAMETOOLONG);
    /* 99 + "/control" = 107 bytes: the longest that fits with its NUL. */
    longdir[99] = '\0';
    assert_int_equal(ctl_socket_path(longdir, buf, sizeof(buf)), 0);
    assert_int_equal(strlen(buf), 107);
    rmdir(rt);
}

/* The directory is created 0700 and the socket is 0600, whatever the
 * caller's umask; a request is answered. */
static void test_modes_and_echo(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    mode_t old = umask(0);
    fx_start(&fx, NULL);
    umask(old);
    struct stat st;
    assert_int_equal(lstat(fx.dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(lstat(fx.path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    fx.expect_handled = 1;
    struct script s = {.send = "echo hello\n", .lines = 1};
    char *got = one_client(&fx, &s);
    assert_string_equal(got, "{\"ok\":true,\"argv\":[\"hello\"]}\n");
    free(got);
    /* Closing removes the socket file. */
    assert_int_equal(lstat(fx.path, &st), -1);
    assert_int_equal(errno, ENOENT);
    fx_done(&fx);
}

static void expect_start_error(struct fixture *fx, int want_rc, const char *want_err)
{
    struct ctl_server *srv = NULL;
    char *err = NULL;
    assert_int_equal(ctl_server_start(&fx->loop, fx->path, NULL, handler, fx, &srv, &err), want_rc);
    assert_null(srv);
    assert_string_equal(err, want_err);
    free(err);
}

/* A directory that others can enter, or that is someone else's, is
 * refused with its name; so is a path that is not a socket. */
static void test_bad_directory(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    assert_int_equal(mkdir_p(fx.dir, 0700), 0);
    assert_int_equal(chmod(fx.dir, 0755), 0);
    char *msg = xasprintf("refusing control socket directory %s: group or others have access "
                          "to it (mode 0755); chmod 700 %s",
                          fx.dir, fx.dir);
    expect_start_error(&fx, -EPERM, msg);
    free(msg);
    assert_int_equal(chmod(fx.dir, 0700), 0);
    assert_int_equal(chown(fx.dir, NOBODY, NOBODY), 0);
    msg = xasprintf("refusing control socket directory %s: it belongs to uid %d, not to uid %ld",
                    fx.dir, NOBODY, (long)geteuid());
    expect_start_error(&fx, -EPERM, msg);
    free(msg);
    assert_int_equal(chown(fx.dir, geteuid(), getegid()), 0);
    int fd = open(fx.path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    msg = xasprintf("refusing to replace %s: it is not a socket", fx.path);
    expect_start_error(&fx, -EEXIST, msg);
    free(msg);
    struct stat st;
    assert_int_equal(lstat(fx.path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    uv_close((uv_handle_t *)&fx.guard, NULL);
    fx_run(&fx);
    fx_done(&fx);
}

/* A socket nobody listens on (a daemon killed with -9) is replaced; a
 * live one is not, and keeps answering. */
static void test_stale_and_live(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    assert_int_equal(mkdir_p(fx.dir, 0700), 0);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fx.path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    struct stat before;
    assert_int_equal(lstat(fx.path, &before), 0);
    assert_true(S_ISSOCK(before.st_mode));
    fx_start(&fx, NULL);
    struct stat after;
    assert_int_equal(lstat(fx.path, &after), 0);
    /* (The inode number may well be reused: that the new one listens is
     * the proof, below.) */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);

    char *msg = xasprintf("another mailsync daemon answers at %s", fx.path);
    expect_start_error(&fx, -EADDRINUSE, msg);
    free(msg);
    struct stat still;
    assert_int_equal(lstat(fx.path, &still), 0);
    assert_int_equal(still.st_ino, after.st_ino);
    fx.expect_handled = 1;
    struct script s = {.send = "echo still here\n", .lines = 1};
    char *got = one_client(&fx, &s);
    assert_string_equal(got, "{\"ok\":true,\"argv\":[\"still\",\"here\"]}\n");
    free(got);
    fx_done(&fx);
}

/* Words: quotes hold spaces, backslashes escape, "" is a word, joined
 * parts make one word; CR before LF and blank lines are ignored; bad
 * quoting is an error reply and the connection goes on; replies come in
 * order for requests sent in one write. */
static void test_requests(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    fx_start(&fx, NULL);
    fx.expect_handled = 5;
    struct script s = {
        .send = "echo sync work \"Lists/mailing list\"\n"
                "echo \"a\\\"b\\\\c\" \"\" x\"y z\" \\\"q\r\n"
                "\n"
                "  \t \n"
                "echo \"unterminated\n"
                "echo trailing\\\n"
                "nosuch x\n"
                "multiline\n"
                "echo \"caf\xc3\xa9\" \xff\n",
        .lines = 7,
    };
    char *got = one_client(&fx, &s);
    assert_string_equal(got, "{\"ok\":true,\"argv\":[\"sync\",\"work\",\"Lists/mailing list\"]}\n"
                             "{\"ok\":true,\"argv\":[\"a\\\"b\\\\c\",\"\",\"xy z\",\"\\\"q\"]}\n"
                             "{\"ok\":false,\"error\":\"request has an unterminated quote\"}\n"
                             "{\"ok\":false,\"error\":\"request ends in a backslash\"}\n"
                             "{\"ok\":false,\"error\":\"unknown request 'nosuch'\"}\n"
                             "{\"ok\":true,  \"x\":1}\n"
                             "{\"ok\":true,\"argv\":[\"caf\xc3\xa9\",\"\\ufffd\"]}\n");
    free(got);
    fx_done(&fx);
}

/* A line of exactly CTL_LINE_MAX bytes is a request; one byte more is an
 * error reply, and the connection is closed. */
static void test_oversize(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    fx_start(&fx, NULL);
    fx.expect_handled = 1;
    struct sbuf line = {0};
    sbuf_adds(&line, "echo ");
    while (line.len < CTL_LINE_MAX) {
        sbuf_addc(&line, 'a');
    }
    sbuf_addc(&line, '\n');
    sbuf_adds(&line, "echo ");
    while (line.len < 2 * (CTL_LINE_MAX + 1)) {
        sbuf_addc(&line, 'b');
    }
    sbuf_adds(&line, "\necho never\n");
    struct script s = {.send = line.buf};
    char *got = one_client(&fx, &s);
    struct sbuf want = {0};
    sbuf_adds(&want, "{\"ok\":true,\"argv\":[\"");
    for (int i = 0; i < CTL_LINE_MAX - 5; i++) {
        sbuf_addc(&want, 'a');
    }
    sbuf_adds(&want, "\"]}\n{\"ok\":false,\"error\":\"request longer than 4096 bytes\"}\n<EOF>");
    assert_string_equal(got, want.buf);
    assert_int_equal(fx.handled, 1);
    free(got);
    sbuf_free(&want);
    sbuf_free(&line);
    fx_done(&fx);
}

/* An asynchronous reply holds back the requests behind it: replies keep
 * the order of the requests. */
static void test_async_in_order(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    fx_start(&fx, NULL);
    fx.expect_handled = 3;
    struct script s = {.send = "later 150\necho fast\nlater 10\n", .lines = 3};
    char *got = one_client(&fx, &s);
    assert_string_equal(got, "{\"ok\":true,\"later\":150}\n"
                             "{\"ok\":true,\"argv\":[\"fast\"]}\n"
                             "{\"ok\":true,\"later\":10}\n");
    free(got);
    fx_done(&fx);
}

/* A client that closes before its asynchronous reply: on_gone is called
 * once, the request says it is gone, the reply is a no-op, and the
 * server goes on serving others. */
static void test_client_leaves(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    struct ctl_opts opts = {.on_gone = on_gone};
    fx_start(&fx, &opts);
    fx.expect_handled = 2;
    fx.expect_gone = 1;
    struct script leave = {.send = "later 300\n", .leave = true};
    struct child a;
    spawn(&fx, &a, run_script, &leave);
    struct script stay = {.send = "echo other\n", .lines = 1};
    struct child b;
    spawn(&fx, &b, run_script, &stay);
    fx_run(&fx);
    assert_int_equal(fx.gone, 1);
    assert_int_equal(fx.replied_gone, 1);
    assert_string_equal(a.text.buf == NULL ? "" : a.text.buf, "");
    assert_string_equal(b.text.buf, "{\"ok\":true,\"argv\":[\"other\"]}\n");
    sbuf_free(&a.text);
    sbuf_free(&b.text);
    fx_done(&fx);
}

/* A client that only shuts down its sending side still gets every reply,
 * then the server closes. */
static void test_half_close(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    struct ctl_opts opts = {.on_gone = on_gone};
    fx_start(&fx, &opts);
    fx.expect_handled = 1;
    struct script s = {.send = "later 100\necho done", .half_close = true};
    char *got = one_client(&fx, &s);
    /* "echo done" has no LF: the client never finished it. */
    assert_string_equal(got, "{\"ok\":true,\"later\":100}\n<EOF>");
    assert_int_equal(fx.gone, 0);
    free(got);
    fx_done(&fx);

    fx_init(&fx);
    fx_start(&fx, &opts);
    fx.expect_handled = 2;
    struct script s2 = {.send = "later 50\necho done\n", .half_close = true};
    got = one_client(&fx, &s2);
    assert_string_equal(got,
                        "{\"ok\":true,\"later\":50}\n{\"ok\":true,\"argv\":[\"done\"]}\n<EOF>");
    free(got);
    fx_done(&fx);
}

/* Another uid: with the default modes it cannot even connect; with the
 * socket opened up (a mistake, or a descriptor passed on), SO_PEERCRED
 * still refuses it with one error line, and its request never reaches
 * the handler. */
static void test_other_uid(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    fx_start(&fx, NULL);
    struct script s = {.send = "echo hi\n", .as_nobody = true};
    char *got = one_client(&fx, &s);
    char *want = xasprintf("<CONNECT %s>", strerror(EACCES));
    assert_string_equal(got, want);
    free(want);
    free(got);
    assert_int_equal(fx.handled, 0);
    fx_done(&fx);

    fx_init(&fx);
    fx_start(&fx, NULL);
    char *run = path_join(fx.base, "run");
    assert_int_equal(chmod(fx.base, 0711), 0);
    assert_int_equal(chmod(run, 0711), 0);
    free(run);
    assert_int_equal(chmod(fx.dir, 0711), 0);
    assert_int_equal(chmod(fx.path, 0666), 0);
    got = one_client(&fx, &s);
    want = xasprintf("{\"ok\":false,\"error\":\"permission denied: uid %d may not control the "
                     "daemon of uid %ld\"}\n<EOF>",
                     NOBODY, (long)geteuid());
    assert_string_equal(got, want);
    free(want);
    free(got);
    assert_int_equal(fx.handled, 0);
    fx_done(&fx);
}

/* Three connections against max_clients 2: the third gets an error line
 * and is closed; the first two are served. */
static void many_clients(struct fixture *fx, const void *arg, int out)
{
    int a = connect_to(fx->path), b = connect_to(fx->path);
    /* Make sure the server accepted both before the third arrives. */
    if (send(a, "echo a\n", 7, MSG_NOSIGNAL) != 7 || send(b, "echo b\n", 7, MSG_NOSIGNAL) != 7) {
        _exit(5);
    }
    read_lines(a, 1, out);
    read_lines(b, 1, out);
    int c = connect_to(fx->path);
    read_all(c, 5000, out);
    close(c);
    if (send(a, "echo a2\n", 8, MSG_NOSIGNAL) != 8) {
        _exit(5);
    }
    read_lines(a, 1, out);
    close(a);
    close(b);
}

static void test_max_clients(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    struct ctl_opts opts = {.max_clients = 2};
    fx_start(&fx, &opts);
    fx.expect_handled = 3;
    struct child ch;
    spawn(&fx, &ch, many_clients, NULL);
    fx_run(&fx);
    assert_string_equal(ch.text.buf, "{\"ok\":true,\"argv\":[\"a\"]}\n"
                                     "{\"ok\":true,\"argv\":[\"b\"]}\n"
                                     "{\"ok\":false,\"error\":\"too many clients (at most 2)\"}\n"
                                     "<EOF>"
                                     "{\"ok\":true,\"argv\":[\"a2\"]}\n");
    sbuf_free(&ch.text);
    fx_done(&fx);
}

/* An idle connection is closed after the idle timeout without a reply; a
 * request in flight longer than that is not cut off. */
static void test_idle_timeout(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    struct ctl_opts opts = {.idle_timeout_ms = 100};
    fx_start(&fx, &opts);
    struct script idle = {.send = "", .report_wait = true};
    char *got = one_client(&fx, &idle);
    assert_string_equal(got, "<EOF><WAITED>");
    free(got);
    fx_done(&fx);

    fx_init(&fx);
    fx_start(&fx, &opts);
    fx.expect_handled = 1;
    struct script slow = {.send = "later 300\n"};
    got = one_client(&fx, &slow);
    assert_string_equal(got, "{\"ok\":true,\"later\":300}\n<EOF>");
    free(got);
    fx_done(&fx);
}

static void on_close_server(uv_timer_t *t)
{
    struct fixture *fx = t->data;
    ctl_server_close(fx->srv);
    fx->srv = NULL;
    uv_close((uv_handle_t *)t, NULL);
}

/* Closing the server with a request in flight: the client is closed, the
 * request becomes gone, its later reply is a no-op, the socket file is
 * removed and the loop closes clean. */
static void test_close_with_pending(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    struct ctl_opts opts = {.on_gone = on_gone};
    fx_start(&fx, &opts);
    uv_close((uv_handle_t *)&fx.guard, NULL);
    uv_timer_t closer;
    uv_timer_init(&fx.loop, &closer);
    closer.data = &fx;
    uv_timer_start(&closer, on_close_server, 200, 0);
    struct script s = {.send = "later 400\n"};
    struct child ch;
    spawn(&fx, &ch, run_script, &s);
    assert_int_equal(uv_run(&fx.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&fx.loop), 0);
    assert_string_equal(ch.text.buf, "<EOF>");
    assert_int_equal(fx.gone, 1);
    assert_int_equal(fx.replied_gone, 1);
    struct stat st;
    assert_int_equal(lstat(fx.path, &st), -1);
    sbuf_free(&ch.text);
    fx_done(&fx);
}

/* ctl_request against the server (from a child, as the CLI would be),
 * and its errors: no daemon (no file, or a stale socket), a daemon that
 * does not answer in time, a bad line. */
static void request_client(struct fixture *fx, const void *arg, int out)
{
    char *reply = NULL, *err = NULL;
    struct sbuf line = {0};
    sbuf_adds(&line, "echo ");
    ctl_quote(&line, "INBOX/a b \"c\"");
    int rc = ctl_request(fx->path, line.buf, 5000, &reply, &err);
    child_out(out, "%d %s\n", rc, rc == 0 ? reply : err);
    free(reply);
    free(err);
    rc = ctl_request(fx->path, "later 50", -1, &reply, &err);
    child_out(out, "%d %s\n", rc, rc == 0 ? reply : err);
    free(reply);
    free(err);
    sbuf_free(&line);
}

static void test_ctl_request(void **state)
{
    (void)state;
    struct fixture fx;
    fx_init(&fx);
    fx_start(&fx, NULL);
    fx.expect_handled = 2;
    struct child ch;
    spawn(&fx, &ch, request_client, NULL);
    fx_run(&fx);
    assert_string_equal(ch.text.buf, "0 {\"ok\":true,\"argv\":[\"INBOX/a b \\\"c\\\"\"]}\n"
                                     "0 {\"ok\":true,\"later\":50}\n");
    sbuf_free(&ch.text);

    char *reply = NULL, *err = NULL;
    /* The server is closed: no file. */
    assert_int_equal(ctl_request(fx.path, "status", 1000, &reply, &err), CTL_ENODAEMON);
    char *want = xasprintf("no mailsync daemon is running (nothing answers at %s)", fx.path);
    assert_string_equal(err, want);
    free(err);
    /* A stale socket. */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fx.path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    assert_int_equal(ctl_request(fx.path, "status", 1000, &reply, &err), CTL_ENODAEMON);
    assert_string_equal(err, want);
    free(err);
    free(want);
    unlink(fx.path);
    /* Listening but never answering. */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 4), 0);
    unsigned long long t0 = now_ms();
    assert_int_equal(ctl_request(fx.path, "status", 200, &reply, &err), -ETIMEDOUT);
    unsigned long long took = now_ms() - t0;
    assert_true(took >= 190 && took < 2000);
    want = xasprintf("the mailsync daemon at %s did not answer within 200 ms", fx.path);
    assert_string_equal(err, want);
    free(want);
    free(err);
    /* Answering with a close: no reply line. A new socket, since the
     * timed-out connection still waits in the old one's backlog. */
    close(fd);
    unlink(fx.path);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 4), 0);
    pid_t pid = fork();
    if (pid == 0) {
        int conn_fd = accept(fd, NULL, NULL);
        char buf[64];
        if (read(conn_fd, buf, sizeof(buf)) < 0) {
            _exit(1);
        }
        if (write(conn_fd, "{\"partial\"", 10) < 0) {
            _exit(1);
        }
        _exit(0);
    }
    assert_int_equal(ctl_request(fx.path, "status", 5000, &reply, &err), -EPROTO);
    want = xasprintf("the mailsync daemon at %s closed the connection without a reply", fx.path);
    assert_string_equal(err, want);
    free(want);
    free(err);
    waitpid(pid, NULL, 0);
    close(fd);
    assert_int_equal(ctl_request(fx.path, "a\nb", 1000, &reply, &err), -EINVAL);
    free(err);
    assert_null(reply);
    fx_done(&fx);
}

/* ctl_split and ctl_quote directly: what every word becomes, the errors,
 * and quote-then-split giving back the word. */
static void test_split_quote(void **state)
{
    (void)state;
    struct {
        const char *line;
        const char *words; /* joined with '|' */
        const char *err;
    } cases[] = {
        {"status", "status", NULL},
        {"  sync\twork  ", "sync|work", NULL},
        {"sync work \"Sent Items\"", "sync|work|Sent Items", NULL},
        {"a\\ b", "a b", NULL},
        {"\"\"", "", NULL},
        {"\"\" x", "|x", NULL},
        {"a\"b c\"d", "ab cd", NULL},
        {"\"q\\\"uote\\\\\"", "q\"uote\\", NULL},
        {"", NULL, NULL},
        {"   ", NULL, NULL},
        {"\"open", NULL, "request has an unterminated quote"},
        {"x\\", NULL, "request ends in a backslash"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char **argv = NULL;
        int argc = -1;
        char *err = NULL;
        int rc = ctl_split(cases[i].line, strlen(cases[i].line), &argv, &argc, &err);
        if (cases[i].err != NULL) {
            assert_int_equal(rc, -EINVAL);
            assert_string_equal(err, cases[i].err);
            free(err);
            continue;
        }
        assert_int_equal(rc, 0);
        struct sbuf sb = {0};
        for (int j = 0; j < argc; j++) {
            sbuf_adds(&sb, j > 0 ? "|" : "");
            sbuf_adds(&sb, argv[j]);
        }
        assert_null(argv[argc]);
        if (cases[i].words == NULL) {
            assert_int_equal(argc, 0);
        } else {
            assert_string_equal(sb.buf, cases[i].words);
        }
        sbuf_free(&sb);
        ctl_argv_free(argv);
    }
    char **argv = NULL;
    int argc = 0;
    char *err = NULL;
    assert_int_equal(ctl_split("a\0b", 3, &argv, &argc, &err), -EINVAL);
    assert_string_equal(err, "request holds a NUL byte");
    free(err);

    const char *words[] = {"INBOX",       "",   "Sent Items", "a\"b", "back\\slash", "tab\there",
                           "caf\xc3\xa9", "\"", "x y\\"};
    const char *quoted[] = {
        "INBOX",         "\"\"",        "\"Sent Items\"", "\"a\\\"b\"", "\"back\\\\slash\"",
        "\"tab\there\"", "caf\xc3\xa9", "\"\\\"\"",       "\"x y\\\\\""};
    struct sbuf line = {0};
    for (size_t i = 0; i < ARRAY_SIZE(words); i++) {
        struct sbuf one = {0};
        ctl_quote(&one, words[i]);
        assert_string_equal(one.buf, quoted[i]);
        sbuf_free(&one);
        sbuf_adds(&line, i > 0 ? " " : "");
        ctl_quote(&line, words[i]);
    }
    assert_int_equal(ctl_split(line.buf, line.len, &argv, &argc, &err), 0);
    assert_int_equal(argc, (int)ARRAY_SIZE(words));
    for (size_t i = 0; i < ARRAY_SIZE(words); i++) {
        assert_string_equal(argv[i], words[i]);
    }
    ctl_argv_free(argv);
    sbuf_free(&line);

    struct sbuf sb = {0};
    ctl_json_error(&sb, "a \"b\"\n");
    assert_string_equal(sb.buf, "{\"ok\":false,\"error\":\"a \\\"b\\\"\\n\"}");
    sbuf_free(&sb);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_socket_path),        cmocka_unit_test(test_modes_and_echo),
        cmocka_unit_test(test_bad_directory),      cmocka_unit_test(test_stale_and_live),
        cmocka_unit_test(test_requests),           cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_async_in_order),     cmocka_unit_test(test_client_leaves),
        cmocka_unit_test(test_half_close),         cmocka_unit_test(test_other_uid),
        cmocka_unit_test(test_max_clients),        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_close_with_pending), cmocka_unit_test(test_ctl_request),
        cmocka_unit_test(test_split_quote),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
