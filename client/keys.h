/* libstrata's idempotency keys (private): a handle's random client id and the keyed form
 * of a write command — the reserved argument "idem": [client, seq, ack, retry] added to
 * the command map (docs/commands.md §17). net.c numbers the writes and resends them. */
#ifndef STRATA_CLIENT_KEYS_H
#define STRATA_CLIENT_KEYS_H

#include "common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KEYS_CLIENT_LEN 16

/* 16 random bytes from the OS-seeded CSPRNG. 0 or INTERNAL (err filled). */
int keys_client_id(uint8_t id[KEYS_CLIENT_LEN], struct err *err);

/* What a command map looks like, found once per call: the map's entry count, where its
 * entries start, and whether it carries its own "idem" already (then it is sent as is). */
struct keys_cmd {
    uint32_t entries;
    size_t body; /* offset of the first key, after the map header */
    bool has_idem;
    bool ok; /* a map that decoded: only then is a key added */
};
void keys_inspect(const uint8_t *cmd, size_t len, struct keys_cmd *out);

/* Append the keyed command to out (reset first): the map with one more entry, "idem",
 * after the command's own. A command keys_inspect could not use, or one with its own
 * "idem", is copied unchanged. 0 or OUT_OF_MEMORY. */
int keys_wrap(const uint8_t *cmd, size_t len, const struct keys_cmd *k,
              const uint8_t id[KEYS_CLIENT_LEN], uint64_t seq, uint64_t ack, bool retry,
              struct buf *out);

#endif
