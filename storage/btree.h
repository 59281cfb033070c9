/* Ordered in-memory map from byte-string keys to entries (B+tree), private to storage/. */
#ifndef STRATA_STORAGE_BTREE_H
#define STRATA_STORAGE_BTREE_H

#include <stddef.h>
#include <stdint.h>

struct version;

/* One key of one branch: the key bytes and its version chain (newest first). The tree
 * stores pointers to entries, so it adds one pointer per key plus node slack. */
struct entry {
    struct version *head; /* owned chain, newest first */
    uint16_t klen;
    uint8_t flags; /* ENTRY_* in internal.h */
    uint8_t key[];
};

/* Bytes to allocate for an entry with a klen-byte key (no tail padding). */
#define ENTRY_SIZE(klen) (offsetof(struct entry, key) + (size_t)(klen))

#define BTREE_ORDER 48

struct bnode;

struct btree {
    struct bnode *root;
    size_t count;
    int height; /* 1 = root is a leaf */
    struct bnode *spare_leaf;  /* preallocated so inserts are all-or-nothing */
    struct bnode *spare_inner; /* list through bnode.next, height + 1 of them */
};

void btree_init(struct btree *t);
/* Frees the nodes; calls free_item (if non-NULL) on every entry. */
void btree_close(struct btree *t, void (*free_item)(struct entry *));
/* Entry with exactly this key, or NULL. */
struct entry *btree_get(const struct btree *t, const uint8_t *key, size_t klen);
/* Insert an entry whose key is not yet present. Returns 0 or STRATA_OUT_OF_MEMORY, in
 * which case the tree is unchanged. */
int btree_insert(struct btree *t, struct entry *item);

/* Cursor over entries in key order, starting at the first key >= `key`. Invalidated by
 * any insert or remove. */
struct btree_iter {
    struct bnode *leaf;
    int pos;
};
void btree_seek(const struct btree *t, const uint8_t *key, size_t klen, struct btree_iter *it);
/* Current entry or NULL at the end; advances. */
struct entry *btree_next(struct btree_iter *it);

int bkey_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);

#endif
