/* libstrata: the client API of StrataDB — open a database by URI and execute commands.
 *
 * A command is one MessagePack map {"op": "kv.put", "branch": ..., ...}; its result is
 * one MessagePack value. The command set, argument names and result shapes are those of
 * the storage engine (storage/storage.h, docs/storage.md); the client adds no commands
 * of its own, so the same bytes work against every kind of database the URI can name.
 *
 * URIs:
 *   mem:           a private in-process engine, empty at open, gone at close.
 *   file:DIR       a local durable database: a one-node cluster in-process (the same
 *                  engine and Raft log as a server), in directory DIR.
 *   strata://[KEY@]HOST[:PORT][,HOST[:PORT]...]
 *                  a StrataDB server or cluster: any member works as a seed; the client
 *                  finds the leader, follows NOT_LEADER, reconnects with backoff. KEY is
 *                  an API key (servers started with --api-keys require one). Default
 *                  port 9876. Options after '?', '&'-separated: routing=client|server,
 *                  idempotency=on|off (default on: every write carries an idempotency
 *                  key and a write whose answer was lost is resent with it, applied at
 *                  most once; docs/client.md §5).
 *
 * Thread: a `struct strata` is not thread-safe; the caller serializes all calls on one
 * handle. Distinct handles are independent. */
#ifndef STRATA_CLIENT_H
#define STRATA_CLIENT_H

#include "common.h"

#include <stddef.h>
#include <stdint.h>

/* An open database connection. Opaque. */
struct strata;

/* Open the database named by `uri` (NUL-terminated; see the list above).
 * On success returns 0 and stores a new handle in *out, owned by the caller and released
 * with strata_close(). On failure returns a code from common.h with `err` filled (err
 * may be NULL) and leaves *out untouched:
 *   INVALID_ARGUMENT  malformed or unknown URI (strata:// ports must be 1..65535);
 *   OUT_OF_MEMORY     allocation failed;
 * and for file:DIR also UNAVAILABLE (another handle or process holds DIR's lock, or the
 * local database did not become ready) and the codes of opening its Raft log.
 * strata:// does no I/O here: a server that cannot be reached shows at the first call. */
int strata_open(const char *uri, struct strata **out, struct err *err);

/* Close a handle and release everything it owns. NULL is a no-op. For `mem:` the
 * database's contents are discarded. */
void strata_close(struct strata *db);

/* Execute one command: `cmd` is `len` bytes holding exactly one MessagePack map (borrowed
 * for the call). On success returns 0 and appends the MessagePack result to `result`
 * (caller-owned, not reset first). On failure returns a code from common.h, fills `err`
 * (may be NULL) with the code and a message naming the offending argument, appends
 * nothing to `result`, and the database is unchanged — except STRATA_UNKNOWN_OUTCOME
 * (servers only): the write was sent and may or may not have been applied (with
 * idempotency keys, the default, only when the call's budget ran out while resending
 * it, or when the server no longer remembers the outcome of a resent write). Writes are
 * stamped with the wall clock of whoever applies them first — the client's for mem:, the
 * leader's for file: and strata:// — and timestamps never go backwards. */
int strata_exec(struct strata *db, const uint8_t *cmd, size_t len, struct buf *result,
                struct err *err);

/* Timeouts of a strata:// handle: `op_ms` bounds a whole call, retries and redirects
 * included (default 10000); `connect_ms` bounds one connection attempt (default 2000).
 * A value <= 0 keeps the current one. No effect on in-process databases. */
void strata_set_timeouts(struct strata *db, int op_ms, int connect_ms);

/* Flags for strata_exec_flags / strata_exec_many. */
enum {
    /* A read may be served by any replica from its applied state (not linearizable).
     * Ignored for writes and for in-process databases. */
    STRATA_EXEC_STALE = 1,
};

/* strata_exec with flags. */
int strata_exec_flags(struct strata *db, const uint8_t *cmd, size_t len, unsigned flags,
                      struct buf *result, struct err *err);

/* Execute `n` commands, pipelined over one connection for servers (all sent, then all
 * answered, in any order). Each command gets its own outcome: codes[i] (0 or an error
 * code), results[i] (appended to, caller-initialized) and errs[i]. A write whose fate is
 * unknown after a lost connection gets STRATA_UNKNOWN_OUTCOME; reads are retried.
 * Returns 0, or OUT_OF_MEMORY if nothing could be attempted. */
int strata_exec_many(struct strata *db, const uint8_t *const *cmds, const size_t *lens,
                     size_t n, unsigned flags, struct buf *results, int *codes,
                     struct err *errs);

#endif
