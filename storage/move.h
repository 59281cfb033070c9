/* Branch moves, private to storage/: the markers a move leaves in a branch's own tree
 * (source: the fence; target: the import position) and the helpers the move commands
 * share. Plan, blob format and marker layouts: docs/sharding.md "Branch moves".
 *
 * Markers are *unlogged meta entries*: keys 0x00 'F' / 0x00 'I' in the branch's tree,
 * outside every space's key range and never in the change log, so no read, listing,
 * diff or merge sees them, while snapshots carry them like any entry. A marker entry
 * holds exactly one version (its value is the encoded marker); an entry whose chain is
 * empty counts as no marker. */
#ifndef STRATA_STORAGE_MOVE_H
#define STRATA_STORAGE_MOVE_H

#include "internal.h"

#define MOVE_TAG_FENCE 'F'
#define MOVE_TAG_IMPORT 'I'

/* Blob: "STRAMOVE" be32(format), msgpack [header, records] (format 1) or [header,
 * records, idempotency section] (format 2, idem.h), SHA-256 of all before. */
#define MOVE_MAGIC "STRAMOVE"
#define MOVE_FORMAT 1
#define MOVE_FORMAT_IDEM 2 /* [header, records, idem]: the last chunk of a fenced branch */
#define MOVE_DIGEST 32
#define MOVE_CHUNK_MIN 4096u
#define MOVE_CHUNK_MAX (3u << 20)

enum fence_state { FENCE_FENCED = 1, FENCE_SEALED, FENCE_UNFENCED };

struct fence_marker {
    enum fence_state state;
    uint32_t to_shard;
    uint64_t move_id;
    uint64_t ver; /* F: the engine version when the fence was put up */
};

enum import_state { IMPORT_IMPORTING = 1, IMPORT_DONE };

struct import_marker {
    uint32_t source_shard;
    uint64_t move_id;
    uint64_t source_branch_id;
    enum import_state state;
    uint64_t copy_at; /* V: the source version the copy reads at */
    bool has_copy_pos; /* false: no copy chunk applied yet */
    uint8_t copy_key[IKEY_MAX];
    size_t copy_klen;
    uint64_t copy_ver;
    bool copy_complete;
    bool has_log_pos; /* false until the first delta chunk */
    uint64_t log_pos; /* next source change-log index to import */
    uint64_t imported_to; /* greatest source engine version seen in a blob (`at`) */
    bool idem_lossy; /* the source's idempotency table had dropped clients (idem.h) */
};

/* Read a branch's markers: 1 found (out filled), 0 none. A marker that does not decode
 * (never written by this code) counts as none. */
int move_fence_get(struct branch *b, struct fence_marker *out);
int move_import_get(struct branch *b, struct import_marker *out);

/* Encode a marker's value (appends to out). 0 or OUT_OF_MEMORY. */
int move_fence_encode(const struct fence_marker *m, struct buf *out);
int move_import_encode(const struct import_marker *m, struct buf *out);

/* A marker change prepared in two steps, so a command that does more (an import) can
 * make every allocation first and install only when nothing can fail any more:
 * prepare allocates the new version (and inserts an empty entry when the branch has
 * none for the key: invisible and skipped by snapshots, so harmless if the command
 * fails later); install links it (cannot fail), frees the old version and keeps the
 * engine's counter at or above the marker's version (snapshots require it). */
struct marker_set {
    struct entry *e;
    struct version *v;
};
int move_marker_prepare(struct storage *s, struct branch *b, int tag, const struct buf *val,
                        struct marker_set *ms);
void move_marker_install(struct storage *s, struct marker_set *ms);
void move_marker_discard(struct marker_set *ms);
/* Drop a marker (its chain is freed; the entry stays, empty). */
void move_marker_clear(struct branch *b, int tag);

/* Was a branch the command names imported from a shard whose idempotency table had
 * dropped client records? A resend to it that its table does not know may be a write
 * applied on that shard, so it is refused (exec.c). */
bool move_idem_lossy(struct exec *x, const struct op_def *d);

/* Does any branch (live or hidden) read through b? */
bool move_has_children(const struct storage *s, const struct branch *b);
/* The version a marker written now gets: the engine's, at least 1 (snapshots refuse 0). */
uint64_t move_marker_ver(struct storage *s);

/* Keys a blob may carry: data keys of a valid space with a known tag, and space
 * registry keys (0x00 'S' space). */
bool move_key_ok(const uint8_t *k, size_t klen);

/* move_copy.c: the export and import commands. */
int move_export(struct exec *x);
/* For move.fence: when the command carries a delta position ('since' or 'from_pos',
 * optional 'max_bytes'), pack the export answer {blob, last, at, records, fenced} of the
 * versions after it into pk, the blob saying fenced by move_id (the fence is installed
 * after this packs: nothing changes when it fails). *wanted: a position was given. */
int move_export_fenced(struct exec *x, struct branch *b, uint64_t move_id, bool *wanted,
                       msgpack_packer *pk);
int move_import(struct exec *x);

#endif
