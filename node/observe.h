/* The node's observability: what it counts (metrics.h registry), the loop-lag probe, and
 * the HTTP endpoints /metrics, /healthz and /readyz (http.h) started by --http.
 * Metric names and what to alert on: docs/operations.md.
 *
 * Every hook takes the node and does nothing when n->obs is NULL (no --http, or after
 * observe_stop finished), so callers need no checks. Thread: the loop thread. */
#ifndef STRATA_NODE_OBSERVE_H
#define STRATA_NODE_OBSERVE_H

#include "common.h"
#include "replication.h"

#include <stdint.h>

struct node;

/* The op label for a request whose op is missing, undecodable or not a command. */
#define OBSERVE_OP_UNKNOWN 0

/* With n->cfg.http set: create the registry, start the loop-lag timer and the HTTP
 * server. Returns 0 (also without --http: nothing to do), or STRATA_INVALID_ARGUMENT /
 * STRATA_UNAVAILABLE / STRATA_OUT_OF_MEMORY with a message in err. */
int observe_start(struct node *n, struct err *err);
/* Close the HTTP server and the timer; the registry is freed and n->obs cleared once
 * every handle is closed (the loop then has none of ours left). */
void observe_stop(struct node *n);

/* The label index of command `op` (a NUL-terminated name): commands of the engine and
 * the node's own (cluster.*, session.use) get their name, anything else is
 * OBSERVE_OP_UNKNOWN — clients choose op strings, and labels must stay bounded. */
int observe_op(struct node *n, const char *op);
/* A response was sent: count it under its op, its error code when code != 0, and its
 * latency (`elapsed_ns` from the request's arrival). */
void observe_command(struct node *n, int op, int code, uint64_t elapsed_ns);
/* A replication event of group `group` (server.c's on_repl_event passes them all). */
void observe_repl_event(struct node *n, uint32_t group, enum repl_event ev, const char *detail);

#endif
