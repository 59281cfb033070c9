/* StrataDB storage engine: deterministic, in-memory, branch-native multi-model store.
 *
 * Every operation is a command: a MessagePack map {"op": "kv.put", "branch": ..., ...}
 * (the command table and argument names are in docs/commands.md). The same bytes travel
 * on the wire and in the Raft log. storage_exec() runs one command against the engine and
 * returns a MessagePack result; for a write command it is a pure function of (state,
 * command bytes, ts), so replicas applying the same log reach byte-identical state.
 *
 * Thread: an engine is single-threaded; the caller serializes all calls. Distinct engines
 * share no mutable state (storage/ has no globals), so different threads may each use
 * their own. */
#ifndef STRATA_STORAGE_H
#define STRATA_STORAGE_H

#include "common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct storage;

struct storage_config {
    size_t max_key_bytes;   /* default 1024, at most STORAGE_MAX_KEY_BYTES */
    size_t max_value_bytes; /* default 16 MiB */
    int max_depth;          /* value nesting, default 24 (msgpack-c decodes 32 levels) */
    int max_fork_depth;     /* read-through chain length kept before materializing, 32 */
    /* Idempotency table bounds (docs/architecture.md "Idempotent retries"); 0 = default.
     * Every replica of a group must use the same values. */
    size_t idem_clients; /* clients remembered, default 4096 */
    size_t idem_window;  /* answers remembered per client, default 256 */
    size_t idem_bytes;   /* bytes of answers in all, default 16 MiB */
};

#define STORAGE_MAX_KEY_BYTES 1024

void storage_config_default(struct storage_config *cfg);

/* Create an engine holding the `default` branch (with the `default` space). cfg may be
 * NULL for defaults. Returns 0, STRATA_OUT_OF_MEMORY, or STRATA_INVALID_ARGUMENT for a
 * config outside the limits (max_key_bytes 1..STORAGE_MAX_KEY_BYTES, max_depth 1..24). */
int storage_new(const struct storage_config *cfg, struct storage **out);
void storage_free(struct storage *s);

/* Classification of a command, without executing it. */
enum storage_cmd_kind { STORAGE_CMD_READ = 1, STORAGE_CMD_WRITE = 2 };

/* Look up the command's op and report whether it reads or writes. Returns 0, or
 * STRATA_PROTOCOL_ERROR / STRATA_INVALID_ARGUMENT for undecodable or unknown commands. */
int storage_cmd_kind(const uint8_t *cmd, size_t len, enum storage_cmd_kind *kind,
                     struct err *err);
/* Is `n` (len bytes) a valid name for a new branch? 0 or INVALID_ARGUMENT naming the rule
 * (1-128 characters of [A-Za-z0-9_./-], not starting with '.', '/' or '-'). */
int storage_branch_name_check(const char *n, size_t len, struct err *err);

/* Execute one command. `ts_us` stamps a write (the engine uses max(ts_us, last_ts + 1));
 * reads ignore it except as "now" for relative reads. On success returns 0 and appends
 * the MessagePack result to `result` (caller-owned buffer). On failure returns a code
 * from common.h, fills `err`, appends nothing, and leaves the engine unchanged. */
int storage_exec(struct storage *s, const uint8_t *cmd, size_t len, int64_t ts_us,
                 struct buf *result, struct err *err);

/* Current version counter (version of the last successful write) and its timestamp. */
uint64_t storage_version(const struct storage *s);
int64_t storage_last_ts(const struct storage *s);

/* Snapshot: write the whole engine as chunks to `write` (called many times, in order;
 * a non-zero return aborts with that code). Deterministic: equal states produce equal
 * bytes. Format documented in docs/storage.md. */
typedef int (*storage_write_cb)(void *arg, const void *chunk, size_t len);
int storage_snapshot(struct storage *s, storage_write_cb write, void *arg, struct err *err);
/* Convenience: whole snapshot into a buffer. */
int storage_snapshot_buf(struct storage *s, struct buf *out, struct err *err);

/* Replace the engine's state with a snapshot. The input is validated completely first;
 * on any error (corrupt, truncated, wrong version) the engine is left unchanged. */
int storage_restore(struct storage *s, const uint8_t *data, size_t len, struct err *err);

/* The configuration `s` was created with (for a second engine built alike). */
void storage_get_config(const struct storage *s, struct storage_config *cfg);
/* Exchange the states (data, versions, remembered answers) of two engines, in O(1); each
 * keeps its configuration and scratch buffers. For an engine decoded on another thread and
 * swapped in: the caller makes sure nothing else touches either engine meanwhile and that
 * both were created with the same configuration. */
void storage_swap(struct storage *a, struct storage *b);

/* ---- Result / value helpers for callers (CLI, tests) ------------------------------- */

/* Render a MessagePack value as JSON text (bin as {"$bytes": "<base64>"}). Appends to out. */
int storage_value_to_json(const uint8_t *mp, size_t len, struct buf *out, bool pretty);
/* Parse JSON text into canonical MessagePack ({"$bytes": "<base64>"} becomes bin). */
int storage_json_to_value(const char *json, size_t len, struct buf *out, struct err *err);

#endif
