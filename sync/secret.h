/* The secret (password or OAuth2 token) for an account: either the
 * configured password, or the first line of what password_command prints.
 *
 * password_command is run without a shell (argv as configured) with
 * uv_spawn on the loop; its standard output is piped and its first line,
 * without CR/LF, is the secret. Standard error is collected to explain
 * failures. A command that does not exit within the timeout is killed;
 * when mailsync has no controlling terminal (systemd, cron) the command
 * runs in a process group of its own, and what it started is killed too.
 *
 * Errors (err < 0 in the callback) come with a message such as
 *   "password_command 'pass' timed out after 30 s"
 *   "password_command 'pass' exited with status 1: gpg: decryption failed"
 *   "password_command 'pass' printed nothing on standard output"
 *
 * The callback is always called exactly once from the loop (never from
 * secret_get itself), unless secret_cancel is called first. The secret
 * pointer is valid only during the callback and is wiped afterwards: copy
 * it if needed. */
#ifndef MAILSYNC_SECRET_H
#define MAILSYNC_SECRET_H

#include <uv.h>

struct sync_account;
struct secret_req;

/* err is 0 and secret non-NULL on success; else err < 0 and msg says why. */
typedef void (*secret_cb)(int err, const char *secret, const char *msg, void *arg);

/* Either password (non-NULL) or command (NULL-terminated argv) must be
 * given. timeout_ms = 0 means 30 s. Returns 0 and *req_r (which stays valid
 * until the callback returns or secret_cancel), or a negative errno when
 * neither is given. */
int secret_get(uv_loop_t *loop, const char *password, char *const *command, unsigned timeout_ms,
               secret_cb cb, void *arg, struct secret_req **req_r);
/* Same, from an account's password / password_command. */
int secret_get_account(uv_loop_t *loop, const struct sync_account *acct, unsigned timeout_ms,
                       secret_cb cb, void *arg, struct secret_req **req_r);
/* Stops the request (kills the command if running); no callback follows. */
void secret_cancel(struct secret_req *req);

#endif
