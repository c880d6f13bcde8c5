/* Supervisor states: see supervisor.h. */
#include "daemon/supervisor.h"

#include "core/log.h"

static const char *const sup_names[SUP_COUNT] = {
    [SUP_DISCONNECTED] = "disconnected",
    [SUP_CONNECTING] = "connecting",
    [SUP_LISTING] = "listing",
    [SUP_SYNCING] = "syncing",
    [SUP_IDLE] = "idle",
    [SUP_LOGGING_OUT] = "logging out",
    [SUP_BACKING_OFF] = "backing off",
    [SUP_FAILED_AUTH] = "failed (auth)",
    [SUP_PAUSED] = "paused",
};

const char *sup_name(enum sup_state s)
{
    return s < SUP_COUNT ? sup_names[s] : "?";
}

void sup_set(struct sup *s, enum sup_state to, const char *why)
{
    if (to == s->state) {
        return;
    }
    log_debug("%s: state %s -> %s%s%s", s->account, sup_names[s->state], sup_names[to],
              why != NULL ? ": " : "", why != NULL ? why : "");
    s->state = to;
}

enum sup_state sup_from_phase(enum engine_phase p)
{
    static const enum sup_state map[] = {
        [ENGINE_PHASE_CONNECTING] = SUP_CONNECTING,   [ENGINE_PHASE_LISTING] = SUP_LISTING,
        [ENGINE_PHASE_SYNCING] = SUP_SYNCING,         [ENGINE_PHASE_IDLE] = SUP_IDLE,
        [ENGINE_PHASE_LOGGING_OUT] = SUP_LOGGING_OUT,
    };
    return map[p];
}
