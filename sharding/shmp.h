/* Private to sharding/: the MessagePack plumbing placement.c and migration.c share —
 * name order, a msgpack-c write callback into a struct buf, and unpacking one whole
 * record with its framing checked first. */
#ifndef STRATA_SHARDING_SHMP_H
#define STRATA_SHARDING_SHMP_H

#include "common.h"

#include <msgpack.h>
#include <stdbool.h>

/* Branch names as (bytes, length): memcmp order, a prefix first. */
int shmp_name_cmp(const char *a, size_t al, const char *b, size_t bl);

/* msgpack_packer callback appending to b; a failed append sets oom (msgpack-c reports a
 * failed write per call; one flag is simpler to check). */
struct shmp_sink {
    struct buf *b;
    bool oom;
};
int shmp_sink_write(void *data, const char *p, size_t len);

void shmp_pack_str(msgpack_packer *pk, const char *s, size_t n);

/* Unpacks data[0..len) as exactly one value into *root (memory from z). The framing is
 * walked first (common/mpscan.c), so counts the input cannot hold are refused before
 * msgpack-c allocates for them. Errors: `code`, message "<what>: ..." (empty input,
 * truncated, nested too deep, trailing bytes, not MessagePack). */
int shmp_unpack_one(const uint8_t *data, size_t len, msgpack_zone *z, msgpack_object *root,
                    int code, const char *what, struct err *err);

#endif
