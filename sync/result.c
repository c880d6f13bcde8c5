/* How a sync run ended: see result.h. */
#include "sync/result.h"

const char *sync_kind_name(enum sync_kind k)
{
    switch (k) {
    case SYNC_OK:
        return "ok";
    case SYNC_TRANSIENT:
        return "transient";
    case SYNC_AUTH:
        return "auth";
    case SYNC_PERMANENT:
        return "permanent";
    }
    return "?";
}

int sync_kind_exit(enum sync_kind k)
{
    switch (k) {
    case SYNC_OK:
        return 0;
    case SYNC_TRANSIENT:
        return SYNC_EXIT_TEMPFAIL;
    case SYNC_AUTH:
        return SYNC_EXIT_NOPERM;
    case SYNC_PERMANENT:
        break;
    }
    return 1;
}
