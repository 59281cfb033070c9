/* Hash index over a branch's entries, for point lookups (the B+tree keeps key order for
 * scans). Private to storage/. */
#ifndef STRATA_STORAGE_HINDEX_H
#define STRATA_STORAGE_HINDEX_H

#include "btree.h"

#include <stddef.h>
#include <stdint.h>

/* Open addressing, linear probing. A slot holds the entry pointer with 16 bits of its
 * hash in the (unused) top bits of the address, so most mismatches cost no dereference;
 * 0 is empty. Capacity grows by 1.5x (any size, indexed with a multiply-shift), which
 * keeps the load between 0.5 and 0.75 (short probe runs for misses, which every insert
 * of a new key is).
 *
 * Growing never stops the world: a new table takes the inserts while each insert moves
 * HINDEX_MIGRATE slots of the old one over; lookups look in the new table, then in the
 * old one until it is drained (entries are never removed, so an entry found in either
 * is current). A 1M-key rehash would otherwise stall every command for ~100 ms. */
struct hindex {
    uint64_t *slots;
    size_t cap;
    size_t count;     /* entries in slots */
    uint64_t *old;    /* table being drained, or NULL */
    size_t old_cap;
    size_t old_pos;   /* slots of `old` below this were moved */
    size_t old_count; /* entries still in old[old_pos..] */
};

#define HINDEX_MIGRATE 128

/* The index's hash of a key (a table hash: neither cryptographic nor persisted). */
uint64_t hindex_hash(const uint8_t *k, size_t n);

void hindex_init(struct hindex *h);
void hindex_close(struct hindex *h);
struct entry *hindex_get(const struct hindex *h, const uint8_t *key, size_t klen);
/* Make room for `n` entries in total, so that inserts up to that count cannot fail.
 * Returns 0 or STRATA_OUT_OF_MEMORY (index unchanged). */
int hindex_reserve(struct hindex *h, size_t n);
/* Insert an entry whose key is absent. Capacity must have been reserved. */
void hindex_insert(struct hindex *h, struct entry *e);
/* Entries in the index. */
static inline size_t hindex_count(const struct hindex *h)
{
    return h->count + h->old_count;
}

#endif
