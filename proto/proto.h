/* Wire protocol: framing, the client handshake, requests and responses, and the preamble
 * of raft peer connections. Byte-level specification: docs/protocol.md.
 *
 * Frame: be32 L (bytes after this field), u8 protocol version, u8 kind, body (L - 2
 * bytes, MessagePack). L > max frame size -> TOO_LARGE; anything malformed ->
 * PROTOCOL_ERROR. Both close the connection after an ERROR frame.
 *
 * A connection's first byte tells its kind: raft peers open with the ASCII magic "SRFT"
 * ('S' = 0x53); a client frame's first byte is the top byte of a length, which is below
 * 0x40 because frames are limited to PROTO_MAX_FRAME_LIMIT.
 *
 * Thread: no shared state; every function is reentrant. */
#ifndef STRATA_PROTO_H
#define STRATA_PROTO_H

#include "common.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1
#define PROTO_HEADER_SIZE 6
#define PROTO_MAX_FRAME_DEFAULT (64u << 20)
#define PROTO_MAX_FRAME_LIMIT (1u << 30) /* configurable up to this */

enum proto_kind {
    PROTO_HELLO = 1,    /* client -> server, first frame */
    PROTO_WELCOME = 2,  /* server -> client */
    PROTO_REQUEST = 3,  /* client -> server */
    PROTO_RESPONSE = 4, /* server -> client, per request, any order */
    PROTO_ERROR = 5,    /* either way, connection-level; the sender then closes */
};

/* Request flags. */
enum {
    PROTO_REQ_STALE = 1,     /* a read may be served by any replica, not linearizable */
    PROTO_REQ_FORWARDED = 2, /* sent by a node on behalf of a client (no further forward) */
};

/* Features a node lists in WELCOME's "features" (docs/protocol.md §4), as mask bits.
 * Names the decoder does not know are ignored; the encoder writes the known bits only. */
enum {
    PROTO_FEAT_IDEM = 1u << 0, /* "idem": honors idempotency keys in commands */
};
#define PROTO_FEATURES_MAX 64     /* elements in a "features" array */
#define PROTO_FEATURE_NAME_MAX 64 /* bytes in one name */

/* RESPONSE and ERROR codes on the wire are below this: version 1 clients refuse others.
 * A code at or above it (OUTCOME_FORGOTTEN) is internal, or sent translated (§6). */
#define PROTO_CODE_LIMIT 20

struct proto_frame {
    uint8_t version;
    uint8_t kind;
    const uint8_t *body; /* points into the reader's buffer: valid until the next call */
    size_t len;
};

/* ---- Framing ------------------------------------------------------------------------ */

/* Incremental frame reader: feed it bytes as they arrive, take complete frames out. */
struct proto_reader {
    struct buf in;
    size_t off; /* start of the first unconsumed byte in `in` */
    size_t max_frame;
};

void proto_reader_init(struct proto_reader *r, size_t max_frame);
void proto_reader_close(struct proto_reader *r);
/* Append received bytes (copied). Returns 0 or STRATA_OUT_OF_MEMORY. */
int proto_reader_feed(struct proto_reader *r, const void *data, size_t n);
/* Next complete frame: 1 (f filled), 0 (need more bytes), or TOO_LARGE /
 * PROTOCOL_ERROR (bad length, unknown version or kind) with err filled — the caller
 * sends an ERROR frame and closes. TOO_LARGE is reported as soon as the length is seen. */
int proto_reader_next(struct proto_reader *r, struct proto_frame *f, struct err *err);

/* Append one frame (header + body) to out. */
int proto_frame_append(struct buf *out, uint8_t kind, const void *body, size_t len);

/* ---- Messages ----------------------------------------------------------------------- */
/* Decoders validate every field's type and return PROTOCOL_ERROR with a message naming
 * it; strings point into the frame body (not NUL-terminated). */

struct proto_hello {
    uint32_t version_min, version_max; /* protocol versions the client speaks */
    const char *client;                /* client name, may be empty */
    size_t client_len;
    const char *api_key; /* NULL when absent */
    size_t api_key_len;
};
int proto_hello_append(struct buf *out, const struct proto_hello *h);
int proto_hello_decode(const struct proto_frame *f, msgpack_zone *z, struct proto_hello *h,
                       struct err *err);

struct proto_welcome {
    uint32_t version; /* the one chosen */
    uint64_t node_id;
    const char *cluster_id;
    size_t cluster_id_len;
    uint64_t epoch;     /* placement epoch (0 until sharding) */
    const char *leader; /* "host:port" of the leader if known, else NULL */
    size_t leader_len;
};
int proto_welcome_append(struct buf *out, const struct proto_welcome *w);
int proto_welcome_decode(const struct proto_frame *f, msgpack_zone *z, struct proto_welcome *w,
                         struct err *err);
/* The same, with the node's features: appended as "features" when not 0; decoded into
 * *features (0 when absent or nil, unknown names ignored, a malformed value refused). */
int proto_welcome_append_features(struct buf *out, const struct proto_welcome *w,
                                  uint32_t features);
int proto_welcome_decode_features(const struct proto_frame *f, msgpack_zone *z,
                                  struct proto_welcome *w, uint32_t *features, struct err *err);

/* REQUEST body: three MessagePack values in sequence — id (uint), flags (uint), and
 * the command (a map, passed through as bytes: the same bytes go to the engine and the
 * Raft log) — and optionally a fourth, the route [shard, epoch] a cluster-aware client
 * expects its branch to be on (a server that places it elsewhere answers MOVED). */
struct proto_route {
    bool set;
    uint32_t shard;
    uint64_t epoch;
};
struct proto_request {
    uint64_t id;
    uint32_t flags;
    const uint8_t *cmd; /* exactly one msgpack map */
    size_t cmd_len;
    struct proto_route route;
};
int proto_request_append(struct buf *out, uint64_t id, uint32_t flags, const uint8_t *cmd,
                         size_t cmd_len);
int proto_request_append_routed(struct buf *out, uint64_t id, uint32_t flags, const uint8_t *cmd,
                                size_t cmd_len, const struct proto_route *route);
int proto_request_decode(const struct proto_frame *f, struct proto_request *r, struct err *err);

/* RESPONSE body: id (uint), code (uint, 0 = ok), then the result value (code 0) or an
 * error map {"name": str, "message": str, "leader": "host:port"?, "forgotten": bool?}.
 * OUTCOME_FORGOTTEN is written as HISTORY_UNAVAILABLE with "forgotten": true (version 1
 * clients refuse codes >= PROTO_CODE_LIMIT) and decoded back into OUTCOME_FORGOTTEN. */
struct proto_response {
    uint64_t id;
    int code;
    const uint8_t *result; /* code 0: one msgpack value */
    size_t result_len;
    const char *message; /* code != 0 */
    size_t message_len;
    const char *leader; /* NOT_LEADER / forwarded hints: may be NULL */
    size_t leader_len;
};
int proto_response_ok_append(struct buf *out, uint64_t id, const uint8_t *result, size_t len);
int proto_response_err_append(struct buf *out, uint64_t id, int code, const char *message,
                              const char *leader);
int proto_response_decode(const struct proto_frame *f, msgpack_zone *z,
                          struct proto_response *r, struct err *err);

/* ERROR body: {"name": str, "message": str}. */
int proto_error_append(struct buf *out, int code, const char *message);
int proto_error_decode(const struct proto_frame *f, msgpack_zone *z, int *code,
                       const char **message, size_t *message_len, struct err *err);

/* ---- Raft peer preamble ----------------------------------------------------------------
 * "SRFT", u8 version (1), u8 0, be16 address length, be32 group id, be64 sender node id,
 * address bytes (the sender's advertised "host:port", 1..255 bytes). Nothing follows but
 * raft's own stream. */
#define PROTO_PEER_MAGIC "SRFT"
#define PROTO_PEER_FIXED 20
#define PROTO_ADDRESS_MAX 255

struct proto_peer {
    uint32_t group;
    uint64_t node_id;
    char address[PROTO_ADDRESS_MAX + 1]; /* NUL-terminated */
};
/* Encode into out (PROTO_PEER_FIXED + PROTO_ADDRESS_MAX bytes); returns the length. */
size_t proto_peer_encode(uint8_t *out, const struct proto_peer *p);
/* Decode from the first n bytes received: returns 1 complete (*used = bytes of the
 * preamble), 0 need more (*used = total bytes needed so far, at least PROTO_PEER_FIXED),
 * or PROTOCOL_ERROR. Never reads beyond the preamble, so the caller can hand the stream
 * to raft with nothing of raft's consumed if it reads exactly *used bytes. */
int proto_peer_decode(const uint8_t *p, size_t n, struct proto_peer *out, size_t *used,
                      struct err *err);

#endif
