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
}

void hindex_close(struct hindex *h)
{
    sm_free(h->slots);
    hindex_init(h);
}

struct entry *hindex_get(const struct hindex *h, const uint8_t *key, size_t klen)
{
    if (h->count == 0)
        return NULL;
    uint64_t hv = hindex_hash(key, klen), tag = tag_of(hv);
    size_t i = home(hv, h->cap);
    for (;;) {
        uint64_t s = h->slots[i];
        if (s == 0)
            return NULL;
        if ((s & ~PTR_MASK) == tag) {
            struct entry *e = (struct entry *)(uintptr_t)(s & PTR_MASK);
            if (e->klen == klen && memcmp(e->key, key, klen) == 0)
                return e;
        }
        if (++i == h->cap)
            i = 0;
    }
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

int hindex_reserve(struct hindex *h, size_t n)
{
    if (n <= h->cap - h->cap / 4)
        return 0;
    size_t cap = h->cap < 16 ? 16 : h->cap;
    while (n > cap - cap / 4)
        cap += cap / 2;
    if (cap > 0xffffffffu)
        return STRATA_OUT_OF_MEMORY;
    uint64_t *slots = sm_calloc(cap, sizeof *slots);
    if (slots == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = 0; i < h->cap; i++)
        if (h->slots[i])
            place(slots, cap, (struct entry *)(uintptr_t)(h->slots[i] & PTR_MASK));
    sm_free(h->slots);
    h->slots = slots;
    h->cap = cap;
    return 0;
}

void hindex_insert(struct hindex *h, struct entry *e)
{
    place(h->slots, h->cap, e);
    h->count++;
}
