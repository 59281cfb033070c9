/* libstrata network backend (private): see net.c. */
#ifndef STRATA_CLIENT_NET_H
#define STRATA_CLIENT_NET_H

#include "common.h"
#include "proto.h"

#include <stdbool.h>

#define NET_MAX_SEEDS 16

struct net {
    char seeds[NET_MAX_SEEDS][256];
    size_t nseeds, next_seed;
    char leader[256];    /* the node believed to lead, "" if unknown */
    char connected[256]; /* address of the open connection */
    char api_key[256];
    bool has_key;
    int fd;
    struct proto_reader rd;
    uint64_t next_id;
    int timeout_ms, connect_timeout_ms;
    uint64_t call_deadline; /* monotonic ms: the current call gives up then */
    bool refused;           /* the last handshake was refused for good (key, version) */
};

void net_set_timeouts(struct net *n, int op_ms, int connect_ms);

/* Parse "[KEY@]HOST[:PORT][,HOST[:PORT]...]" (after "strata://"). No I/O. */
int net_parse(struct net *n, const char *uri, const char *rest, struct err *err);
void net_close(struct net *n);
/* Execute cnt commands pipelined on one connection; per-command codes, results and
 * errors. Reads are retried across reconnects; a write whose connection failed after it
 * was sent ends UNKNOWN_OUTCOME. Returns 0 (look at codes) or OUT_OF_MEMORY. */
int net_exec_many(struct net *n, const uint8_t *const *cmds, const size_t *lens, size_t cnt,
                  unsigned flags, struct buf *results, int *codes, struct err *errs);

#endif
