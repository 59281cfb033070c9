/* Private engine structures shared by the files of storage/: versions, branches, views,
 * staging of writes, and the command-execution context used by every primitive. */
#ifndef STRATA_STORAGE_INTERNAL_H
#define STRATA_STORAGE_INTERNAL_H

#include "btree.h"
#include "hindex.h"
#include "storage.h"

#include <msgpack.h>
#include <stdbool.h>

/* ---- Versions ------------------------------------------------------------------------ */
#define VLEN_TOMB UINT32_MAX

/* One MVCC version of one key. `data` holds the canonical msgpack value (len bytes), or
 * nothing for a tombstone (len == VLEN_TOMB). Immutable once linked. */
struct version {
    struct version *older;
    uint64_t ver;
    int64_t ts;
    uint32_t len;
    uint8_t vflags; /* VF_* */
    uint8_t data[]; /* len value bytes, then a struct gap if VF_GAP */
};

enum {
    /* Retention removed versions directly below this one. A struct gap follows the
     * value bytes: the oldest removed (ver, ts). A read whose answer lies in the gap
     * is HISTORY_UNAVAILABLE; one below it is answered by the older versions. Kept
     * out of line so that versions without a gap (nearly all) pay nothing. */
    VF_GAP = 1,
};

struct gap {
    uint64_t ver;
    int64_t ts;
};

static inline size_t version_vlen(const struct version *v)
{
    return v->len == UINT32_MAX ? 0 : v->len;
}
/* The gap record of a version with VF_GAP (unaligned: copied out). */
static inline struct gap version_gap(const struct version *v)
{
    struct gap g;
    __builtin_memcpy(&g, v->data + version_vlen(v), sizeof g);
    return g;
}
/* Bytes of the whole allocation of v (value and gap record). */
static inline size_t version_alloc_size(const struct version *v)
{
    return __builtin_offsetof(struct version, data) + version_vlen(v) +
           ((v->vflags & VF_GAP) ? sizeof(struct gap) : 0);
}

/* Bytes to allocate for a version holding len value bytes (no tail padding). */
#define VERSION_SIZE(len) (offsetof(struct version, data) + (size_t)(len))

enum {
    ENTRY_PRUNED = 1, /* some versions of this key were removed by retention */
};

/* ---- Internal keys (docs/storage.md) ------------------------------------------------ */
enum ikey_tag {
    TAG_KV = 'k',
    TAG_JSON = 'j',
    TAG_EVENT = 'e',      /* rest = be64(seq) */
    TAG_EVENT_HEAD = 'E', /* rest empty: {"len": n, "hash": bin32} of the space's log */
    TAG_STATE = 's',
    TAG_VCOLL = 'C',
    TAG_VECTOR = 'v',
    TAG_SPACE = 'S', /* branch meta: 0x00 'S' space */
    TAG_MERGE = 'M', /* branch meta: 0x00 'M' be64(source id) -> [source version, merge version] */
};

#define IKEY_MAX (1 + 64 + 1 + 2048 + 8)

/* Build `len(space) space tag rest...` into out (>= IKEY_MAX bytes). Returns length. */
size_t ikey_make(uint8_t *out, const char *space, size_t slen, int tag, const void *rest,
                 size_t rlen);
/* Split an internal key. Returns 0, or -1 if it is not of the data form. */
int ikey_split(const uint8_t *k, size_t klen, const uint8_t **space, size_t *slen, int *tag,
               const uint8_t **rest, size_t *rlen);

/* ---- Branches -------------------------------------------------------------------------- */
struct change {
    uint64_t ver;
    struct entry *e;
};

struct branch {
    uint64_t id;
    char *name; /* owned; kept after deletion for diagnostics */
    size_t name_len;
    bool deleted;
    int refs; /* 1 while live + 1 per child whose parent this is */
    struct branch *parent;
    uint64_t fork_ver; /* parent's version this branch reads through at */
    int depth;         /* read-through chain length: 0 for a root or flat branch */
    bool flat;         /* holds a full copy of the parent at fork_ver: reads stop here */
    uint64_t created_ver;
    int64_t created_ts;
    struct btree idx;   /* key order, for scans */
    struct hindex hx;   /* the same entries, for point lookups */
    struct change *log; /* every write to this branch, in version order */
    size_t nlog, caplog;
    uint64_t keep_last;  /* retention: versions kept per key (0 = all) */
    int64_t keep_for_us; /* retention: keep versions current within this window (0 = all) */
};

/* The idempotency table (idem.h): clients and their remembered answers. */
struct idem_client;
struct idem_table {
    struct idem_client **c; /* by id, ascending */
    size_t n, cap;
    uint64_t bytes;   /* sum of the answers' lengths */
    uint64_t dropped; /* client records evicted since the engine was created */
};

struct storage {
    struct storage_config cfg;
    msgpack_zone zone;     /* reused by every exec (cleared after each) */
    struct buf scratch;    /* reused encoding buffer */
    uint64_t version; /* last assigned */
    int64_t last_ts;
    uint64_t next_branch_id;
    struct branch **branches; /* every branch, live or hidden, in id order */
    size_t nbranches;
    struct idem_table idem; /* remembered answers of keyed writes (idem.h) */
};

struct branch *branch_find(struct storage *s, const char *name, size_t len); /* live only */
/* The branch's own entry for a key (no fall-through), or NULL. */
static inline struct entry *branch_get(const struct branch *b, const uint8_t *k, size_t klen)
{
    return hindex_get(&b->hx, k, klen);
}
/* Add a new entry (key absent) to both indexes. Returns 0 or OUT_OF_MEMORY (unchanged). */
int branch_insert(struct branch *b, struct entry *e);
int branch_add(struct storage *s, const char *name, size_t len, struct branch *parent,
               uint64_t fork_ver, struct branch **out);
void branch_unref(struct storage *s, struct branch *b);
/* Release every branch and reset to the empty state (no branches). */
void storage_clear(struct storage *s);
void version_chain_free(struct version *v);
/* The timestamp the next write gets: max(ts, last + 1), so time never runs backwards. */
static inline int64_t storage_next_ts(const struct storage *s, int64_t ts)
{
    return ts > s->last_ts ? ts : s->last_ts + 1;
}

/* ---- Views: reading a branch at a point in time ------------------------------------- */
struct read_at {
    uint64_t ver; /* newest visible version */
    int64_t ts;   /* when by_ts: newest visible timestamp */
    bool by_ts;
};

/* Visible version of ikey in branch b at `at`: *out is NULL if absent or deleted.
 * Returns 0 or STRATA_HISTORY_UNAVAILABLE (with err filled). */
int view_get(struct branch *b, const uint8_t *k, size_t klen, const struct read_at *at,
             const struct version **out, struct err *err);

/* Ordered iteration over the visible keys of a view, merging the read-through chain. */
#define VIEW_MAX_LEVELS 64
struct view_iter {
    int n;
    struct {
        struct branch *b;
        uint64_t limit; /* max version visible at this level */
        struct btree_iter it;
        struct entry *cur;
    } lv[VIEW_MAX_LEVELS];
    struct read_at at;
    const uint8_t *end; /* exclusive upper bound, or NULL */
    size_t endlen;
};
void view_iter_init(struct view_iter *vi, struct branch *b, const struct read_at *at,
                    const uint8_t *start, size_t slen, const uint8_t *end, size_t elen);
/* Next visible (key, version). Returns 1 with e and v set, 0 at the end, or a positive
 * error code (HISTORY_UNAVAILABLE) with err filled. Tombstones are skipped. */
int view_iter_next(struct view_iter *vi, struct entry **e, const struct version **v,
                   struct err *err);

/* Number of visible keys in [start, end) of a view. Returns 0 or an error code. */
int view_count(struct branch *b, const struct read_at *at, const uint8_t *start, size_t slen,
               const uint8_t *end, size_t elen, uint64_t *n, struct err *err);
/* The smallest key greater than every key starting with `key` (klen bytes): writes it
 * to out (>= klen bytes) and returns its length (0: no such key, all bytes 0xff). */
size_t key_prefix_end(uint8_t *out, const uint8_t *key, size_t klen);

/* Visible version of one chain at `at`, ignoring fall-through: returns 1 found (may be a
 * tombstone), 0 no version visible here, -1 the answer was pruned by retention. */
int chain_visible(const struct entry *e, uint64_t limit, const struct read_at *at,
                  const struct version **out);

/* ---- Staging: the writes of one command, installed atomically ---------------------- */
/* One staged write. Staging builds the final objects, so installing copies nothing:
 * `v` is the version to link (value or tombstone) and `e` the key's entry — the
 * branch's existing one, or a new one (`fresh`) to insert. key/val point into them. */
struct stage_op {
    struct branch *b;
    const uint8_t *key; /* e->key */
    size_t klen;
    const uint8_t *val; /* v->data, or NULL for a tombstone */
    uint32_t len;
    struct version *v; /* owned until installed */
    struct entry *e;   /* owned until installed when fresh */
    bool fresh;
};

struct stage {
    struct stage_op *ops; /* in staging order (the order they are installed in) */
    size_t n, cap;
    uint32_t *slots; /* (branch, key) -> op index + 1, once n > STAGE_LINEAR; 0 = empty */
    size_t nslots;   /* power of two */
};
#define STAGE_LINEAR 16

void stage_init(struct stage *st);
void stage_close(struct stage *st);
/* Stage a write (value copied; val NULL = delete). A later write of the same key in the
 * same command replaces the earlier one. Returns 0 or OUT_OF_MEMORY. */
int stage_put(struct stage *st, struct branch *b, const uint8_t *k, size_t klen,
              const uint8_t *val, size_t len);
/* The staged op for (b, key), or NULL. */
const struct stage_op *stage_find(const struct stage *st, const struct branch *b,
                                  const uint8_t *k, size_t klen);
/* Read through the stage first, then the view at the branch head.
 * Returns 0 with val and len (val NULL = absent), or an error. */
int stage_read(const struct stage *st, struct branch *b, const uint8_t *k, size_t klen,
               const uint8_t **val, size_t *len, struct err *err);
/* Install every staged write at one new version. Returns 0 (and *ver, *ts) or
 * OUT_OF_MEMORY with nothing changed. An empty stage takes no version. */
int stage_commit(struct storage *s, struct stage *st, int64_t ts, uint64_t *ver, int64_t *ts_out);

/* Retention on one key's chain (called on write and by prune). */
void retention_apply_entry(struct storage *s, struct branch *b, struct entry *e, int64_t now);

/* ---- Values ---------------------------------------------------------------------------- */
bool utf8_valid(const uint8_t *s, size_t n);
/* Validate a decoded msgpack object as a StrataDB value under cfg limits. */
int value_check(const struct storage_config *cfg, const msgpack_object *o, struct err *err);
/* Append the canonical encoding of o (ints smallest form, floats as float64). */
int value_pack(msgpack_packer *pk, const msgpack_object *o);
/* Validate + canonically encode into out (reset first). Checks the size limit. */
int value_encode(const struct storage_config *cfg, const msgpack_object *o, struct buf *out,
                 struct err *err);
/* Decode stored bytes (trusted) into a zone-backed object. */
int value_decode(const uint8_t *data, size_t len, msgpack_zone *z, msgpack_object *o);
bool value_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);
/* Packer writing into a struct buf (msgpack_packer_init(pk, buf, buf_pack_write)). */
int buf_pack_write(void *data, const char *p, size_t len);
/* Find a string key in a map object, or NULL. mp_map_get takes a C string (its length is
 * computed at compile time for literals). */
const msgpack_object *mp_map_getn(const msgpack_object *map, const char *key, size_t klen);
#define mp_map_get(map, key) mp_map_getn((map), (key), __builtin_strlen(key))
bool mp_str_eq(const msgpack_object *o, const char *s);
void mp_pack_str(msgpack_packer *pk, const char *s, size_t len);
void(mp_pack_cstr)(msgpack_packer *pk, const char *s);
#define mp_pack_cstr(pk, s) mp_pack_str((pk), (s), __builtin_strlen(s))
static inline int msgpack_pack_bool(msgpack_packer *pk, bool v)
{
    return v ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

/* ---- Command execution ---------------------------------------------------------------- */
struct exec {
    struct storage *s;
    struct err *err;
    const msgpack_object *args; /* the command map */
    struct branch *b;           /* resolved "branch" (NULL for ops that take none) */
    char space[65];             /* resolved "space" */
    size_t slen;
    struct read_at at; /* head unless at_version/as_of given */
    bool at_head;
    int64_t ts;          /* command timestamp ("now") */
    uint64_t wver;       /* version this command's writes will get if it succeeds */
    int64_t wts;         /* and their timestamp */
    struct stage *stage; /* writes of this command (shared by batch/txn sub-ops) */
    msgpack_packer *pk;  /* result */
    struct buf *scratch; /* reusable buffer for encodings */
};

/* Argument accessors: return 0 or INVALID_ARGUMENT naming the argument. Optional ones
 * leave *out untouched when absent and set *present (if given). */
int(arg_str)(struct exec *x, const char *name, size_t nlen, const char **p, size_t *len);
int(arg_str_opt)(struct exec *x, const char *name, size_t nlen, const char **p, size_t *len,
                 bool *present);
int(arg_key)(struct exec *x, const char *name, size_t nlen, const char **p, size_t *len);
int(arg_u64_opt)(struct exec *x, const char *name, size_t nlen, uint64_t *out, bool *present);
int(arg_i64_opt)(struct exec *x, const char *name, size_t nlen, int64_t *out, bool *present);
int(arg_bool_opt)(struct exec *x, const char *name, size_t nlen, bool *out);
int(arg_value)(struct exec *x, const char *name, size_t nlen, const msgpack_object **o);
const msgpack_object *(arg_get)(struct exec *x, const char *name, size_t nlen);
/* A string argument naming a live branch: BRANCH_NOT_FOUND otherwise. */
int(arg_branch)(struct exec *x, const char *name, size_t nlen, struct branch **b);
/* The accessors take the argument name's length, computed at compile time for the
 * string literals every caller passes. */
#define arg_str(x, name, ...) (arg_str)((x), (name), __builtin_strlen(name), __VA_ARGS__)
#define arg_str_opt(x, name, ...) (arg_str_opt)((x), (name), __builtin_strlen(name), __VA_ARGS__)
#define arg_key(x, name, ...) (arg_key)((x), (name), __builtin_strlen(name), __VA_ARGS__)
#define arg_u64_opt(x, name, ...) (arg_u64_opt)((x), (name), __builtin_strlen(name), __VA_ARGS__)
#define arg_i64_opt(x, name, ...) (arg_i64_opt)((x), (name), __builtin_strlen(name), __VA_ARGS__)
#define arg_bool_opt(x, name, ...) (arg_bool_opt)((x), (name), __builtin_strlen(name), __VA_ARGS__)
#define arg_value(x, name, ...) (arg_value)((x), (name), __builtin_strlen(name), __VA_ARGS__)
#define arg_get(x, name) (arg_get)((x), (name), __builtin_strlen(name))
#define arg_branch(x, name, b) (arg_branch)((x), (name), __builtin_strlen(name), (b))
int space_check(const char *s, size_t len, struct err *err);
/* A key (or key-like name) given as a string: non-empty, within the key limit, UTF-8.
 * `what` names it in the message. */
int key_check(struct exec *x, const char *what, const char *k, size_t len);

/* Stage a value under (x->b, x->space, tag, rest); data = canonical msgpack. */
int exec_stage(struct exec *x, int tag, const void *rest, size_t rlen, const uint8_t *data,
               size_t len);
/* Read (stage first if at head, then view) under (x->b, x->space, tag, rest). */
int exec_read(struct exec *x, int tag, const void *rest, size_t rlen, const uint8_t **val,
              size_t *len, const struct version **ver);
size_t exec_ikey(struct exec *x, uint8_t *out, int tag, const void *rest, size_t rlen);
/* Register the command's space in its branch if new (stages the registry key). */
int exec_touch_space(struct exec *x);

typedef int (*op_fn)(struct exec *x);
enum op_flags {
    OP_WRITE = 1,      /* mutates: goes through the log */
    OP_BRANCH = 2,     /* takes "branch" (default "default") and "space" */
    OP_BATCHABLE = 4,  /* may appear inside batch / txn.commit */
};
struct op_def {
    const char *name;
    int flags;
    op_fn fn;
};

/* Generic listing of one primitive's keys in x's branch/space at x->at: args "prefix",
 * "cursor" (last key of the previous page), "limit" (default 100, max 10000). Packs
 * {"keys"|"items": [...], "cursor": next or nil}. with_values packs [key, value] pairs. */
int prim_list(struct exec *x, int tag, bool with_values);
/* Count visible keys of a primitive with an optional "prefix". */
int prim_count(struct exec *x, int tag, uint64_t *count);
/* Pack the history of one internal key (newest first, through the fork chain):
 * [{"value": v | nil, "deleted": bool, "version", "ts"}...]; args "limit" optional. */
int prim_history(struct exec *x, int tag, const void *rest, size_t rlen);

/* ---- Hooks the generic diff/merge (merge.c) calls into primitives ------------------ */

/* json.c: three-way merge of one document. Any input may be NULL (= absent/deleted).
 * base = state at the merge base, target = target branch now, source = source branch now.
 * Merges per path: a path changed on one side only takes that side; changed on both
 * to different values is a conflict — its path string ("$.a.b[0]") is packed into
 * `conflicts` and counted in *nconflicts; with source_wins the source's value is used.
 * On return 0, out (reset first) holds the merged document, or out->len == 0 if the
 * merged result is "absent". */
int json_merge3(const struct storage_config *cfg, const uint8_t *base, size_t blen,
                const uint8_t *target, size_t tlen, const uint8_t *source, size_t slen,
                bool source_wins, struct buf *out, msgpack_packer *conflicts,
                uint32_t *nconflicts, struct err *err);

/* event.c: merge one space's event log. x is an exec on the target branch with x->space
 * set and x->stage the merge's stage. `src` read at `src_at` is the source; `base_at`
 * (read in src) is the merge base. Events the source appended since the base are
 * appended to the target (new sequence numbers, chain continued from the target's
 * head). If the target also appended since the base: strict → one conflict with path
 * "events:<space>" packed and counted; source_wins → source's events go after the
 * target's. */
int event_merge_space(struct exec *x, struct branch *src, const struct read_at *src_at,
                      const struct read_at *base_at, bool source_wins,
                      msgpack_packer *conflicts, uint32_t *nconflicts);

/* Per-primitive command tables, terminated by {NULL}. */
extern const struct op_def kv_ops[];
extern const struct op_def json_ops[];
extern const struct op_def event_ops[];
extern const struct op_def state_ops[];
extern const struct op_def vector_ops[];
extern const struct op_def branch_ops[];
extern const struct op_def space_ops[];
extern const struct op_def txn_ops[];
extern const struct op_def merge_ops[];
extern const struct op_def move_ops[];

const struct op_def *op_lookup(const char *name, size_t len);

/* Result helpers. pack_version_result: {"value"?, "version", "ts"} of a stored version.
 * pack_write_result: opens a map of 2 + nextra pairs with the pending write's "version" and
 * "ts"; the caller packs nextra more pairs. mp_pack_raw appends encoded msgpack as is. */
void pack_version_result(msgpack_packer *pk, const struct version *v, bool with_value);
void pack_write_result(struct exec *x, int nextra);
void mp_pack_raw(msgpack_packer *pk, const void *data, size_t len);
/* move.c: refuse a command on a branch that is moving (MOVED: fenced source, writes;
 * sealed source, everything) or being moved here (UNAVAILABLE until its import is done).
 * Called for every command after its common arguments are resolved. */
int move_check(struct exec *x, const struct op_def *d);
/* Run an array of batchable sub-commands inside x (same branch, same stage). */
int exec_sub_ops(struct exec *x, const msgpack_object *ops);

#endif
