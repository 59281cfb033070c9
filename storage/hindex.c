/* Hash index over entries: see hindex.h. */
#include "hindex.h"

#include "common.h"

#include <string.h>

#define PTR_MASK ((1ull << 48) - 1)

/* A 64-bit mix of the key bytes (multiply-xorshift over 8-byte words, then the murmur3
 * finalizer): a hash-table index function, not a cryptographic or persisted hash. */
uint64_t hindex_hash(const uint8_t *k, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, k, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        k += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, k, n);
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    return h;
}

static inline size_t home(uint64_t h, size_t cap)
{
    return (size_t)(((h & 0xffffffffu) * (uint64_t)cap) >> 32);
}

static inline uint64_t tag_of(uint64_t h)
{
    return h & ~PTR_MASK;
}

void hindex_init(struct hindex *h)
{
    h->slots = NULL;
    h->cap = 0;
    h->count = 0;
    h->old = NULL;
    h->old_cap = 0;
    h->old_pos = 0;
    h->old_count = 0;
}

void hindex_close(struct hindex *h)
{
    sm_free(h->slots);
    sm_free(h->old);
    hindex_init(h);
}

static struct entry *probe(const uint64_t *slots, size_t cap, uint64_t hv, const uint8_t *key,
                           size_t klen)
{
    uint64_t tag = tag_of(hv);
    size_t i = home(hv, cap);
    for (;;) {
        uint64_t s = slots[i];
        if (s == 0)
            return NULL;
        if ((s & ~PTR_MASK) == tag) {
            struct entry *e = (struct entry *)(uintptr_t)(s & PTR_MASK);
            if (e->klen == klen && memcmp(e->key, key, klen) == 0)
                return e;
        }
        if (++i == cap)
            i = 0;
    }
}

struct entry *hindex_get(const struct hindex *h, const uint8_t *key, size_t klen)
{
    if (hindex_count(h) == 0)
        return NULL;
    uint64_t hv = hindex_hash(key, klen);
    struct entry *e = h->count ? probe(h->slots, h->cap, hv, key, klen) : NULL;
    if (e == NULL && h->old)
        e = probe(h->old, h->old_cap, hv, key, klen);
    return e;
}

static void place(uint64_t *slots, size_t cap, struct entry *e)
{
    uint64_t hv = hindex_hash(e->key, e->klen);
    size_t i = home(hv, cap);
    while (slots[i] != 0)
        if (++i == cap)
            i = 0;
    slots[i] = tag_of(hv) | (uint64_t)(uintptr_t)e;
}

/* Move up to `n` slots of the old table into the current one; free it once drained. */
static void migrate(struct hindex *h, size_t n)
{
    while (h->old && n-- > 0 && h->old_pos < h->old_cap && h->old_count > 0) {
        uint64_t s = h->old[h->old_pos++];
        if (s) {
            place(h->slots, h->cap, (struct entry *)(uintptr_t)(s & PTR_MASK));
            h->count++;
            h->old_count--;
        }
    }
    if (h->old && (h->old_pos == h->old_cap || h->old_count == 0)) {
        sm_free(h->old);
        h->old = NULL;
        h->old_cap = h->old_pos = h->old_count = 0;
    }
}

int hindex_reserve(struct hindex *h, size_t n)
{
    if (n <= h->cap - h->cap / 4)
        return 0;
    /* Still draining the previous table: finish that first (rare; bounded by it). */
    if (h->old)
        migrate(h, h->old_cap);
    size_t cap = h->cap < 16 ? 16 : h->cap;
    while (n > cap - cap / 4)
        cap += cap / 2;
    if (cap > 0xffffffffu)
        return STRATA_OUT_OF_MEMORY;
    uint64_t *slots = sm_calloc(cap, sizeof *slots);
    if (slots == NULL)
        return STRATA_OUT_OF_MEMORY;
    /* The new table must hold everything by the time the old one is drained: it gets
     * n (reserved) + what is still old, which the loop above sized it for (n counts
     * every entry), and migration finishes within old_cap / HINDEX_MIGRATE inserts. */
    h->old = h->slots;
    h->old_cap = h->cap;
    h->old_pos = 0;
    h->old_count = h->count;
    h->slots = slots;
    h->cap = cap;
    h->count = 0;
    if (h->old_count == 0) {
        sm_free(h->old);
        h->old = NULL;
        h->old_cap = 0;
    }
    return 0;
}

void hindex_insert(struct hindex *h, struct entry *e)
{
    place(h->slots, h->cap, e);
    h->count++;
    if (h->old)
        migrate(h, HINDEX_MIGRATE);
}
