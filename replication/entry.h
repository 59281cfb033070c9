/* Log-entry codec: the one format of a Raft log entry carrying engine commands
 * (docs/replication.md "Log entries"). Private to replication/.
 *
 *   0  "SENT"  4  version (1)  5  kind (1 = commands)  6  reserved be16 (0)
 *   8  be64 timestamp (µs)    16  be32 command count N 20  be32 payload length P
 *   24 P bytes: N x (be32 length L, L bytes of MessagePack)
 *   24+P zero padding to a multiple of 8 (raft rejects other lengths: RAFT-NOTES trap 2)
 *
 * Thread: no shared state. */
#ifndef STRATA_REPLICATION_ENTRY_H
#define STRATA_REPLICATION_ENTRY_H

#include "common.h"

#include <stddef.h>
#include <stdint.h>

#define ENTRY_MAGIC "SENT"
#define ENTRY_VERSION 1
#define ENTRY_KIND_COMMANDS 1
#define ENTRY_HEADER 24
#define ENTRY_CMD_PREFIX 4 /* be32 length before each command */

/* Encoded size of an entry whose payload (all prefixed commands) is `payload` bytes:
 * header + payload rounded up to a multiple of 8. */
static inline size_t entry_size(size_t payload)
{
    return (ENTRY_HEADER + payload + 7) & ~(size_t)7;
}

/* Incremental encoder over a caller-allocated buffer of exactly entry_size(P) bytes,
 * where P is the sum of (ENTRY_CMD_PREFIX + len) over the commands that will be added.
 * entry_writer_finish checks that exactly N commands and P bytes were written and zeroes
 * the padding; it returns the entry length. */
struct entry_writer {
    uint8_t *out;
    size_t cap; /* entry_size(payload) */
    size_t off; /* next write position */
    uint32_t n; /* commands written */
    uint32_t count, payload;
};
void entry_writer_init(struct entry_writer *w, uint8_t *out, int64_t ts, uint32_t count,
                       uint32_t payload);
void entry_writer_add(struct entry_writer *w, const uint8_t *cmd, uint32_t len);
size_t entry_writer_finish(struct entry_writer *w);

/* A validated entry: iterate its commands with entry_next. */
struct entry_view {
    int64_t ts;
    uint32_t count;
    const uint8_t *payload;
    size_t payload_len;
    size_t off; /* iteration cursor inside payload */
};

/* Validate an entry completely (magic, version, kind, reserved bytes, timestamp range,
 * count >= 1, lengths, every command inside the payload with length >= 1, the payload
 * consumed exactly, zero padding, total a multiple of 8). Returns 0 with *v filled, or
 * STRATA_PROTOCOL_ERROR with a message naming the bad field. Never reads past len. */
int entry_decode(const uint8_t *p, size_t len, struct entry_view *v, struct err *err);
/* Next command of a validated entry: 1 (cmd/len filled) or 0 at the end. */
int entry_next(struct entry_view *v, const uint8_t **cmd, size_t *len);

#endif
