/* B+tree over byte-string keys: leaves are linked for ordered scans. Single-threaded. */
#include "btree.h"

#include "common.h"

#include <string.h>

/* Internal nodes: every separator shares its first `lcp` bytes; slice[i] holds the 8
 * bytes of items[i]'s key after that prefix (big-endian, zero-padded), so a descent
 * compares integers inside the node and dereferences an entry only when slices tie.
 * Slices order keys consistently with bkey_cmp (a tie means "compare the full keys").
 * Leaves carry no slices (8 bytes per key saved): point lookups use the hash index, and
 * a leaf search dereferences only ~log2(48) entries. */
struct bnode {
    int leaf;
    int n;        /* items (leaf) or keys (internal; children = n + 1) */
    uint16_t lcp; /* internal: a common prefix length of all separators */
    struct bnode *next; /* leaves: right sibling; spare nodes: pool link */
    struct entry *items[BTREE_ORDER]; /* leaf: items; internal: separators (min of kid i+1) */
};

struct inode {
    struct bnode base;
    uint64_t slice[BTREE_ORDER];
    struct bnode *kids[BTREE_ORDER + 1];
};

#define SLICE(n) (((struct inode *)(n))->slice)
#define KIDS(n) (((struct inode *)(n))->kids)

static inline uint64_t slice_of(const uint8_t *k, size_t klen, size_t lcp)
{
    uint8_t b[8] = {0};
    if (klen > lcp)
        memcpy(b, k + lcp, klen - lcp < 8 ? klen - lcp : 8);
    return get_be64(b);
}

static size_t common_prefix(const struct entry *a, const struct entry *b)
{
    size_t n = a->klen < b->klen ? a->klen : b->klen, i = 0;
    while (i < n && a->key[i] == b->key[i])
        i++;
    return i;
}

/* Recompute lcp and every slice (after a split or when a new key shortens the prefix). */
static void node_reslice(struct bnode *n)
{
    if (n->leaf)
        return;
    if (n->n == 0) {
        n->lcp = 0;
        return;
    }
    size_t l = common_prefix(n->items[0], n->items[n->n - 1]);
    n->lcp = (uint16_t)(l > 0xffff ? 0xffff : l);
    for (int i = 0; i < n->n; i++)
        SLICE(n)[i] = slice_of(n->items[i]->key, n->items[i]->klen, n->lcp);
}

/* Place item at position i (already made room), keeping lcp and slices valid. */
static void node_set(struct bnode *n, int i, struct entry *item)
{
    n->items[i] = item;
    if (n->leaf)
        return;
    if (n->n > 1) {
        const struct entry *other = n->items[i == 0 ? 1 : 0];
        if (common_prefix(item, other) < n->lcp) {
            node_reslice(n);
            return;
        }
    } else {
        n->lcp = item->klen;
    }
    SLICE(n)[i] = slice_of(item->key, item->klen, n->lcp);
}

int bkey_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static struct bnode *node_new(int leaf)
{
    size_t sz = leaf ? sizeof(struct bnode) : sizeof(struct inode);
    struct bnode *n = sm_calloc(1, sz);
    if (n)
        n->leaf = leaf;
    return n;
}

static struct bnode *take(struct bnode **pool)
{
    struct bnode *n = *pool;
    *pool = n->next;
    n->next = NULL;
    return n;
}

void btree_init(struct btree *t)
{
    t->spare_leaf = NULL;
    t->spare_inner = NULL;
    t->root = NULL;
    t->count = 0;
    t->height = 0;
}

static void free_node(struct bnode *n, void (*free_item)(struct entry *))
{
    if (n->leaf) {
        if (free_item)
            for (int i = 0; i < n->n; i++)
                free_item(n->items[i]);
    } else {
        for (int i = 0; i <= n->n; i++)
            free_node(KIDS(n)[i], free_item);
    }
    sm_free(n);
}

void btree_close(struct btree *t, void (*free_item)(struct entry *))
{
    if (t->root)
        free_node(t->root, free_item);
    sm_free(t->spare_leaf);
    while (t->spare_inner)
        sm_free(take(&t->spare_inner));
    btree_init(t);
}

static inline int cmp_item(const struct entry *item, const uint8_t *key, size_t klen)
{
    return bkey_cmp(item->key, item->klen, key, klen);
}

/* Compare item i with key, using the slice first. */
static inline int cmp_at(const struct bnode *n, int i, uint64_t ks, const uint8_t *key,
                         size_t klen)
{
    if (SLICE(n)[i] != ks)
        return SLICE(n)[i] < ks ? -1 : 1;
    return cmp_item(n->items[i], key, klen);
}

/* Where key stands against the node's common prefix: -1 before every item, 1 after
 * every item, 0 shares it (then slices decide). */
static inline int prefix_side(const struct bnode *n, const uint8_t *key, size_t klen)
{
    if (n->n == 0 || n->lcp == 0)
        return 0;
    const struct entry *f = n->items[0];
    size_t m = klen < n->lcp ? klen : n->lcp;
    int c = memcmp(key, f->key, m);
    if (c)
        return c < 0 ? -1 : 1;
    return klen < n->lcp ? -1 : 0;
}

/* First index i in [0, n) with items[i] >= key — or n. */
static int lower_bound(const struct bnode *n, const uint8_t *key, size_t klen)
{
    if (n->leaf) {
        int lo = 0, hi = n->n;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (cmp_item(n->items[mid], key, klen) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    }
    int side = prefix_side(n, key, klen);
    if (side)
        return side < 0 ? 0 : n->n;
    uint64_t ks = slice_of(key, klen, n->lcp);
    int lo = 0, hi = n->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (cmp_at(n, mid, ks, key, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Child to descend into for key: number of separators <= key. */
static int child_index(const struct bnode *n, const uint8_t *key, size_t klen)
{
    int side = prefix_side(n, key, klen);
    if (side)
        return side < 0 ? 0 : n->n;
    uint64_t ks = slice_of(key, klen, n->lcp);
    int lo = 0, hi = n->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (cmp_at(n, mid, ks, key, klen) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct entry *btree_get(const struct btree *t, const uint8_t *key, size_t klen)
{
    struct bnode *n = t->root;
    if (n == NULL)
        return NULL;
    while (!n->leaf)
        n = KIDS(n)[child_index(n, key, klen)];
    int i = lower_bound(n, key, klen);
    if (i < n->n && cmp_item(n->items[i], key, klen) == 0)
        return n->items[i];
    return NULL;
}

/* Insert into subtree; on split returns the new right sibling and its separator item. */
static int insert_rec(struct btree *t, struct bnode *n, struct entry *item, const struct entry *k,
                      struct bnode **split, struct entry **sep)
{
    *split = NULL;
    if (n->leaf) {
        int i = lower_bound(n, k->key, k->klen);
        if (n->n < BTREE_ORDER) {
            memmove(&n->items[i + 1], &n->items[i], (size_t)(n->n - i) * sizeof(void *));
            n->n++;
            node_set(n, i, item);
            return 0;
        }
        struct bnode *r = take(&t->spare_leaf);
        struct entry *tmp[BTREE_ORDER + 1];
        memcpy(tmp, n->items, (size_t)i * sizeof(void *));
        tmp[i] = item;
        memcpy(tmp + i + 1, n->items + i, (size_t)(BTREE_ORDER - i) * sizeof(void *));
        /* Appends (sequential keys) leave the left leaf full; otherwise split evenly. */
        int left = (i == BTREE_ORDER) ? BTREE_ORDER : (BTREE_ORDER + 1) / 2;
        n->n = left;
        memcpy(n->items, tmp, (size_t)left * sizeof(void *));
        r->n = BTREE_ORDER + 1 - left;
        memcpy(r->items, tmp + left, (size_t)r->n * sizeof(void *));
        r->next = n->next;
        n->next = r;
        node_reslice(n);
        node_reslice(r);
        *split = r;
        *sep = r->items[0];
        return 0;
    }
    int c = child_index(n, k->key, k->klen);
    struct bnode *cs;
    struct entry *csep;
    int rc = insert_rec(t, KIDS(n)[c], item, k, &cs, &csep);
    if (rc || cs == NULL)
        return rc;
    if (n->n < BTREE_ORDER) {
        memmove(&n->items[c + 1], &n->items[c], (size_t)(n->n - c) * sizeof(void *));
        memmove(&SLICE(n)[c + 1], &SLICE(n)[c], (size_t)(n->n - c) * sizeof(uint64_t));
        memmove(&KIDS(n)[c + 2], &KIDS(n)[c + 1], (size_t)(n->n - c) * sizeof(void *));
        KIDS(n)[c + 1] = cs;
        n->n++;
        node_set(n, c, csep);
        return 0;
    }
    struct bnode *r = take(&t->spare_inner);
    struct entry *ti[BTREE_ORDER + 1];
    struct bnode *tk[BTREE_ORDER + 2];
    memcpy(ti, n->items, (size_t)c * sizeof(void *));
    ti[c] = csep;
    memcpy(ti + c + 1, n->items + c, (size_t)(BTREE_ORDER - c) * sizeof(void *));
    memcpy(tk, KIDS(n), (size_t)(c + 1) * sizeof(void *));
    tk[c + 1] = cs;
    memcpy(tk + c + 2, KIDS(n) + c + 1, (size_t)(BTREE_ORDER - c) * sizeof(void *));
    int left = (c == BTREE_ORDER) ? BTREE_ORDER - 1 : BTREE_ORDER / 2;
    n->n = left;
    memcpy(n->items, ti, (size_t)left * sizeof(void *));
    memcpy(KIDS(n), tk, (size_t)(left + 1) * sizeof(void *));
    *sep = ti[left];
    r->n = BTREE_ORDER - left;
    memcpy(r->items, ti + left + 1, (size_t)r->n * sizeof(void *));
    memcpy(KIDS(r), tk + left + 1, (size_t)(r->n + 1) * sizeof(void *));
    node_reslice(n);
    node_reslice(r);
    *split = r;
    return 0;
}

/* Splits cannot fail half way: before an insert the tree holds one spare leaf and one
 * spare internal node per level (+1 for a new root), so an out-of-memory insert fails
 * before touching anything. */
static int fill_spares(struct btree *t)
{
    if (t->spare_leaf == NULL && (t->spare_leaf = node_new(1)) == NULL)
        return STRATA_OUT_OF_MEMORY;
    int have = 0;
    for (struct bnode *n = t->spare_inner; n; n = n->next)
        have++;
    while (have < t->height + 1) {
        struct bnode *n = node_new(0);
        if (n == NULL)
            return STRATA_OUT_OF_MEMORY;
        n->next = t->spare_inner;
        t->spare_inner = n;
        have++;
    }
    return 0;
}

int btree_insert(struct btree *t, struct entry *item)
{
    if (t->root == NULL) {
        t->root = node_new(1);
        if (t->root == NULL)
            return STRATA_OUT_OF_MEMORY;
        t->height = 1;
    }
    int rc = fill_spares(t);
    if (rc)
        return rc;
    struct bnode *split;
    struct entry *sep;
    rc = insert_rec(t, t->root, item, item, &split, &sep);
    if (rc)
        return rc;
    t->count++;
    if (split) {
        struct bnode *root = take(&t->spare_inner);
        root->n = 1;
        node_set(root, 0, sep);
        KIDS(root)[0] = t->root;
        KIDS(root)[1] = split;
        t->root = root;
        t->height++;
    }
    return 0;
}

void btree_seek(const struct btree *t, const uint8_t *key, size_t klen,
                struct btree_iter *it)
{
    it->leaf = NULL;
    it->pos = 0;
    struct bnode *n = t->root;
    if (n == NULL)
        return;
    while (!n->leaf)
        n = KIDS(n)[child_index(n, key, klen)];
    it->leaf = n;
    it->pos = lower_bound(n, key, klen);
}

struct entry *btree_next(struct btree_iter *it)
{
    while (it->leaf && it->pos >= it->leaf->n) {
        it->leaf = it->leaf->next;
        it->pos = 0;
    }
    if (it->leaf == NULL)
        return NULL;
    return it->leaf->items[it->pos++];
}
