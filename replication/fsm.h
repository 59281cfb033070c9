/* Applying one log entry to the engine, separated from raft so tests can feed it any
 * bytes. Private to replication/.
 *
 * Thread: the engine's thread (the loop thread). */
#ifndef STRATA_REPLICATION_FSM_H
#define STRATA_REPLICATION_FSM_H

#include "common.h"
#include "replication.h"
#include "storage.h"

#include <stddef.h>
#include <stdint.h>

/* Result of command i (0-based) of the entry: code 0 with the engine's result bytes in
 * *result (the callee may take them with buf_steal), or an engine error in *err. */
typedef void (*fsm_result_cb)(void *arg, uint32_t i, int code, struct buf *result,
                              const struct err *err);

/* Validate the entry completely, then run each command through storage_exec at the
 * entry's timestamp, in order. A malformed entry changes nothing and returns
 * STRATA_PROTOCOL_ERROR (err names the field); otherwise returns 0 (commands that fail
 * in the engine fail identically on every replica and are reported through cb, which
 * may be NULL). *ncmds (may be NULL) gets the number of commands run. */
int fsm_apply_entry(struct storage *s, const uint8_t *p, size_t len, fsm_result_cb cb, void *arg,
                    uint32_t *ncmds, struct err *err);
/* The same, with node commands (MessagePack arrays) going to `hook` (may be NULL: then
 * they reach the engine, which rejects them identically on every replica). */
int fsm_apply_entry_hooked(struct storage *s, const struct repl_hook *hook, uint32_t group_id,
                           const uint8_t *p, size_t len, fsm_result_cb cb, void *arg,
                           uint32_t *ncmds, struct err *err);

#endif
