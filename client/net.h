/* libstrata network backend (private): see net.c. */
#ifndef STRATA_CLIENT_NET_H
#define STRATA_CLIENT_NET_H

#include "common.h"
#include "proto.h"

#include <stdbool.h>

#define NET_MAX_SEEDS 16
#define NET_ADDR_MAX 256

struct routing;

/* One connection to one node (at most one per address). */
struct net_conn {
    char addr[NET_ADDR_MAX];
    int fd; /* -1 when closed */
    struct proto_reader rd;
    uint64_t node_id;    /* from its WELCOME */
    uint32_t features;   /* PROTO_FEAT_* its WELCOME listed (0 when closed) */
    uint64_t down_until; /* monotonic ms: connecting failed, prefer other nodes until then */
    struct buf out;      /* the current round's requests to it */
    size_t waiting;      /* the current round's requests without an answer */
    bool checked;        /* known open in the current round (not probed again) */
};

/* How commands are placed on connections. */
enum net_mode {
    NET_MODE_PROBE = 0, /* not known yet whether the servers are sharded: like SINGLE, and
                         * cluster.placement is asked again now and then */
    NET_MODE_SINGLE,    /* one connection, to the node believed to lead; servers route
                         * (a server without cluster.placement, or ?routing=server) */
    NET_MODE_ROUTED,    /* the placement is cached: each command to its shard's leader */
};

struct net {
    char seeds[NET_MAX_SEEDS][NET_ADDR_MAX];
    size_t nseeds, next_seed;
    char api_key[256];
    bool has_key;
    bool pinned; /* ?routing=server: never NET_MODE_ROUTED */
    enum net_mode mode;
    char leader[NET_ADDR_MAX]; /* PROBE/SINGLE: the node believed to lead, "" if unknown */
    struct net_conn *conns;    /* owned */
    size_t nconns, cap;
    int home; /* index of the connection for commands without a branch, -1 if none */
    char cluster_id[128];
    struct routing *rt; /* owned; NET_MODE_ROUTED */
    bool stale;         /* the cached table may be behind: re-read before the next round */
    bool dirty;         /* a branch was made or removed through this handle since the read */
    uint64_t probe_after, refreshed_ms;    /* monotonic ms */
    char sess_branch[129], sess_space[65]; /* session.use defaults, "" = none */
    uint64_t next_id;
    int timeout_ms, connect_timeout_ms;
    uint64_t call_deadline; /* monotonic ms: the current call gives up then */
    bool refused;           /* the last handshake was refused for good (key, version) */
    bool moved;             /* the current call met MOVED (or a stale BRANCH_NOT_FOUND) */
    uint64_t moved_ms;      /* monotonic ms of the current call's first MOVED, 0 if none */
    int moved_conn;         /* the round's last MOVED came from this connection, -1: none */
    /* Idempotency keys (keys.h): writes carry [client_id, seq, ack, retry] and a write
     * whose answer was lost is resent with the same key. */
    bool no_keys;           /* ?idempotency=off */
    bool have_id;           /* client_id drawn (at the first write) */
    bool warned_unkeyed;    /* logged once that a node without "idem" turned keys off */
    uint8_t client_id[16];
    uint64_t last_seq;      /* seq of the handle's last numbered write */
    uint64_t call_ack;      /* the current call's first seq: every lower one is answered */
};

void net_set_timeouts(struct net *n, int op_ms, int connect_ms);

/* Parse "[KEY@]HOST[:PORT][,HOST[:PORT]...][/][?OPTION[&OPTION]]" (after
 * "strata://"). No I/O. */
int net_parse(struct net *n, const char *uri, const char *rest, struct err *err);
/* Close every connection and free what the handle owns (the struct itself is the
 * caller's). */
void net_close(struct net *n);
/* Execute cnt commands pipelined (one pipeline per node they go to); per-command codes,
 * results and errors. Reads are retried across reconnects; a write whose connection
 * failed after it was sent, or that a server answered UNKNOWN_OUTCOME, is sent again with
 * the same idempotency key until it gets a real answer (UNKNOWN_OUTCOME when the call's
 * budget runs out first; at once without keys). Keys are sent, and writes resent, only
 * while every open connection's WELCOME listed "idem" (docs/protocol.md §4). Returns 0
 * (look at codes) or OUT_OF_MEMORY. */
int net_exec_many(struct net *n, const uint8_t *const *cmds, const size_t *lens, size_t cnt,
                  unsigned flags, struct buf *results, int *codes, struct err *errs);

#endif
