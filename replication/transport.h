/* The custom raft_uv_transport of a group: outgoing peer connections open with the
 * peer preamble (proto.h) on the node's single port; incoming ones are accepted by the
 * node and handed in with transport_accept. Private to replication/.
 *
 * Thread: the loop thread. */
#ifndef STRATA_REPLICATION_TRANSPORT_H
#define STRATA_REPLICATION_TRANSPORT_H

#include "common.h"

#include <raft.h>
#include <raft/uv.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* A peer connection attempt succeeded (up) or failed (down); only transitions are
 * reported. Called on the loop thread from libuv callbacks (never from inside raft). */
typedef void (*transport_peer_cb)(void *arg, bool up, uint64_t id, const char *address);

/* Fill `t` (version 1) for group `group`. bind_host: numeric IP to bind outgoing
 * connections to, or NULL. connect_timeout_ms bounds one connection attempt (raft then
 * retries). Returns 0, INVALID_ARGUMENT (bind_host not a numeric address) or
 * OUT_OF_MEMORY. */
int transport_init(struct raft_uv_transport *t, uv_loop_t *loop, uint32_t group,
                   const char *bind_host, unsigned connect_timeout_ms, transport_peer_cb on_peer,
                   void *peer_arg, struct err *err);
/* Release the transport's memory; only after raft_uv's close completed (raft has then
 * closed the transport) or if raft_uv_init was never given it. */
void transport_free(struct raft_uv_transport *t);
/* Hand an accepted stream (heap uv_tcp_t from malloc, not reading, preamble consumed)
 * to raft; if raft is not listening (not started, or closing) the stream is closed and
 * freed. */
void transport_accept(struct raft_uv_transport *t, uint64_t id, const char *address,
                      uv_stream_t *stream);

/* Split "host:port" or "[v6]:port" into host and port. Returns 0 or INVALID_ARGUMENT. */
int transport_split_address(const char *address, char *host, size_t host_cap, char *port,
                            size_t port_cap);

#endif
