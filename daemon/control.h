/* The daemon's control socket: a Unix stream socket on the daemon's libuv
 * loop that `mailsync status`, `mailsync sync` and scripts talk to, and
 * the blocking client side the CLI uses.
 *
 * Where: ctl_socket_path gives $XDG_RUNTIME_DIR/mailsync/control when
 * XDG_RUNTIME_DIR is usable (an absolute path to a directory of ours that
 * we can write), else STATE_DIR/control.
 *
 * Who may talk to it (invariant 8, "sockets are private to the user"):
 * the socket's directory is created 0700, and a directory that already
 * exists with group or other access, or that belongs to another uid, is
 * refused with an error naming it (nobody else may be able to replace the
 * socket with their own). The socket is bound under umask 077 and then
 * set and verified to be 0600. Every accepted connection's peer uid is
 * read with SO_PEERCRED, and a peer of another uid (root included) gets
 * one error line and is closed, whatever the file modes say.
 *
 * Wire protocol (the daemon's requests are listed in README.md):
 *
 *   - A request is one line of UTF-8 text ending in LF (a CR before the
 *     LF is ignored), at most CTL_LINE_MAX (4096) bytes before the LF.
 *     A longer one gets an error reply and the connection is closed.
 *     Blank lines are ignored.
 *   - The line is split into words at spaces and tabs. A word may be put
 *     in double quotes to hold spaces ("Lists/mailing list"); inside and
 *     outside quotes a backslash takes the next character literally (\"
 *     and \\). "" is an empty word. Quotes and plain text may be joined:
 *     a"b c" is the word `ab c`. An unterminated quote, a backslash at
 *     the end of the line or a NUL byte is an error reply (the connection
 *     stays open). ctl_quote writes a word so that it reads back as is.
 *   - Every request gets exactly one reply: one line holding one JSON
 *     object, ending in LF. Replies come in the order of the requests on
 *     a connection: the next request is read only once the previous one
 *     is answered (so a `sync` that waits for its sync delays the
 *     requests behind it on that connection, never on other ones).
 *   - Errors the socket itself reports are {"ok":false,"error":"TEXT"}:
 *     a peer of another uid ("permission denied: ..."; then closed), too
 *     many clients (then closed), a request too long (then closed), bad
 *     quoting. The daemon's own replies carry "ok" too, by convention.
 *   - A connection with no request in flight that sends nothing for the
 *     idle timeout is closed without a reply. A request in flight is
 *     never timed out by the socket.
 *   - A client may send several requests on one connection, and may shut
 *     down its sending side after the last one (`echo status | socat -
 *     UNIX-CONNECT:PATH`): the replies still arrive, then the daemon
 *     closes. Closing the connection altogether abandons what is in
 *     flight.
 *
 * Server ownership: ctl_server_start returns a struct ctl_server owned by
 * the caller; ctl_server_close (exactly once) stops accepting, closes
 * every connection, removes the socket file if it is still the one it
 * bound, and frees the memory from libuv close callbacks; the loop then
 * closes clean. The process must ignore SIGPIPE (mailsync does), as for
 * any socket. Take the daemon's pid lock (daemon/pidlock.h) before
 * starting the server: the stale-socket check and the bind are not
 * atomic, and the lock is what keeps two daemons from racing here.
 *
 * Requests: the handler gets each request as a struct ctl_req (words in
 * ctl_req_argv) and must answer it exactly once with ctl_reply or
 * ctl_reply_error, at once or later from any loop callback (a `sync`
 * answers when its sync ends). The request stays valid until then, even
 * when its client has gone or the server was closed: ctl_req_gone then
 * says so, on_gone (if set) was called once, and the reply only frees
 * the request. */
#ifndef MAILSYNC_CONTROL_H
#define MAILSYNC_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "core/util.h"

/* The longest request line, LF not counted. */
#define CTL_LINE_MAX 4096
/* The size of a buffer for a socket path (struct sockaddr_un's
 * sun_path, terminating NUL included). */
#define CTL_PATH_MAX 108
#define CTL_DEFAULT_MAX_CLIENTS 16
#define CTL_DEFAULT_IDLE_MS 60000

/* ctl_request: nothing listens at the path (it does not exist, or a stale
 * socket refuses the connection): no daemon is running. */
#define CTL_ENODAEMON (-30001)

/* Writes the control socket path into buf (size bytes, CTL_PATH_MAX is
 * always enough when the path fits a socket address at all). Returns 0,
 * or -ENAMETOOLONG when the path does not fit a socket address. Nothing
 * is created. */
int ctl_socket_path(const char *state_dir, char *buf, size_t size);

struct ctl_server;
struct ctl_req;

/* Called for every request, on the loop. */
typedef void ctl_handler_fn(struct ctl_req *req, void *arg);
/* Called once when the client of a request in flight disconnects (or the
 * server is closed) before the reply; the request still needs its
 * ctl_reply, which may be called from here. */
typedef void ctl_gone_fn(struct ctl_req *req, void *arg);

struct ctl_opts {
    unsigned max_clients;     /* connections served at once; 0: CTL_DEFAULT_MAX_CLIENTS */
    unsigned idle_timeout_ms; /* 0: CTL_DEFAULT_IDLE_MS */
    ctl_gone_fn *on_gone;     /* optional */
};

/* Creates the socket's directory if needed (checked as above), replaces a
 * stale socket at path (one that refuses connections), binds, and serves
 * on loop. opts may be NULL. Returns 0 with *srv_r set, or a negative
 * errno with a message in *err_r (caller frees), e.g. "another mailsync
 * daemon answers at PATH" (-EADDRINUSE), "refusing control socket
 * directory DIR: group or others have access to it (mode 0755); chmod 700
 * DIR" (-EPERM). Nothing is left for the caller to clean up on failure. */
int ctl_server_start(uv_loop_t *loop, const char *path, const struct ctl_opts *opts,
                     ctl_handler_fn *handler, void *arg, struct ctl_server **srv_r, char **err_r);

/* The path the server listens on. */
const char *ctl_server_path(const struct ctl_server *srv);

/* See "Server ownership" above. Requests in flight become gone. */
void ctl_server_close(struct ctl_server *srv);

/* The request's words (argv[argc] is NULL; argc is at least 1). */
int ctl_req_argc(const struct ctl_req *req);
char *const *ctl_req_argv(const struct ctl_req *req);
/* Whether the client left (or the server closed) before the reply. */
bool ctl_req_gone(const struct ctl_req *req);
/* A pointer of the owner's, NULL until set. */
void ctl_req_set_data(struct ctl_req *req, void *data);
void *ctl_req_data(const struct ctl_req *req);

/* Answers req with json, one JSON value (normally an object); the LF is
 * added here, and any CR or LF inside json (whitespace between tokens,
 * as JSON strings cannot hold them raw) is sent as a space so the reply
 * stays one line. Frees req. */
void ctl_reply(struct ctl_req *req, const char *json);
/* Answers with {"ok":false,"error":"<formatted text>"}. Frees req. */
void ctl_reply_error(struct ctl_req *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Appends {"ok":false,"error":"<msg>"} to sb. */
void ctl_json_error(struct sbuf *sb, const char *msg);

/* Splits a request line (len bytes, without its LF) into words as the
 * protocol says. Returns 0 with a NULL-terminated array in *argv_r and
 * its length in *argc_r (0 for a blank line; free with ctl_argv_free), or
 * -EINVAL with a message in *err_r (caller frees). */
int ctl_split(const char *line, size_t len, char ***argv_r, int *argc_r, char **err_r);
void ctl_argv_free(char **argv);

/* Appends word to sb so that ctl_split reads it back unchanged: as it is
 * when it has no space, tab, quote, backslash or other control character
 * and is not empty, else in double quotes with " and \ escaped. */
void ctl_quote(struct sbuf *sb, const char *word);

/* The client side, blocking (for the CLI, not for the loop thread):
 * connects to path, sends line (one request, without LF; build it with
 * ctl_quote) and waits for the reply. timeout_ms bounds the whole
 * exchange (negative: no limit, for a `sync` that waits for its sync).
 * Returns 0 with the reply line (without its LF) in *reply_r (caller
 * frees), or, with a message in *err_r (caller frees):
 *   CTL_ENODAEMON  nothing listens at path: no daemon is running
 *   -ETIMEDOUT     the daemon did not answer in time
 *   -EPROTO        it closed the connection without a whole reply line,
 *                  or the reply was over 64 MiB
 *   -EINVAL        line holds a LF or NUL, or is longer than CTL_LINE_MAX
 *   other negative errno (e.g. -EACCES) from connect, write or read. */
int ctl_request(const char *path, const char *line, int timeout_ms, char **reply_r, char **err_r);

#endif
