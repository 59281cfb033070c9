/* The meta group's state cells (`placement`, `moves`, `auth`) as commands and answers:
 * the one place that packs state.get / state.init / state.cas for a cell and decodes
 * their replies (storage/state.c executes them; docs/protocol.md describes them).
 *
 * The commands are the ones the node always sent, byte for byte:
 *   read   {"op":"state.get","cell":NAME}
 *   init   {"op":"state.init","cell":NAME,"value":V}
 *   cas    {"op":"state.cas","cell":NAME,"expected_counter":C,"value":V}
 *   set    {"op":"state.set","cell":NAME,"value":V}   (no precondition)
 * A cell's counter is 0 while it was never written and grows by one on every write, so
 * a CAS on the counter read detects any write in between.
 *
 * The packers and decoders are pure code (no I/O, no node state: any thread);
 * metacell_read / metacell_write hand a command to the meta group (its loop thread). */
#ifndef STRATA_NODE_METACELL_H
#define STRATA_NODE_METACELL_H

#include "common.h"
#include "replication.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest cell name the packers take: a MessagePack fixstr, which keeps a read
 * command within METACELL_GET_MAX bytes. Names are constants of the callers. */
#define METACELL_NAME_MAX 31
/* fixmap + "op" + "state.get" + "cell" + fixstr name. */
#define METACELL_GET_MAX (1 + 3 + 10 + 5 + 1 + METACELL_NAME_MAX)

/* A read command, packed in place (no allocation, so it cannot fail). */
struct metacell_get {
    uint8_t bytes[METACELL_GET_MAX];
    size_t len;
};

/* Pack the read of `cell` (1..METACELL_NAME_MAX bytes: asserted, a programmer error). */
void metacell_pack_get(struct metacell_get *g, const char *cell);

/* Append to `b` the write of `value` (`len` bytes: exactly one MessagePack object, the
 * caller's encoding, copied) into `cell`: state.cas when the cell must still be at
 * `expected` (0: only while it was never written), state.init when it must not exist.
 * 0 or STRATA_OUT_OF_MEMORY (b then holds a partial command: reset or close it). */
int metacell_pack_cas(struct buf *b, const char *cell, uint64_t expected, const uint8_t *value,
                      size_t len);
int metacell_pack_init(struct buf *b, const char *cell, const uint8_t *value, size_t len);
/* The same without a precondition (state.set): the last write wins. */
int metacell_pack_set(struct buf *b, const char *cell, const uint8_t *value, size_t len);

/* How metacell_write writes. */
enum metacell_mode {
    METACELL_CAS,  /* metacell_pack_cas from `expected` */
    METACELL_INIT, /* metacell_pack_init */
    METACELL_SET,  /* metacell_pack_set */
};

/* Submit the read of `cell` to the meta group `g` (repl_read: linearizable unless
 * `stale`); cb gets the reply for metacell_decode_get. */
void metacell_read(struct repl_group *g, const char *cell, bool stale, repl_done_cb cb, void *arg);

/* Submit the write of `value` into `cell` as `mode` says (`expected`: METACELL_CAS
 * only); cb gets the answer for metacell_decode_write. 0 (cb will be called, possibly
 * before this returns) or STRATA_OUT_OF_MEMORY (it will not). */
int metacell_write(struct repl_group *g, const char *cell, enum metacell_mode mode,
                   uint64_t expected, const uint8_t *value, size_t len, repl_done_cb cb, void *arg);

/* A cell as read. */
struct metacell {
    bool present;     /* false: never written (state.get answered nil) */
    uint64_t counter; /* its write counter (0 when absent) */
    struct buf value; /* its value's MessagePack encoding (empty when absent); owned */
};

void metacell_init(struct metacell *c);
void metacell_close(struct metacell *c);

/* Decode a state.get reply of `cell` (`reply`/`len`: the bytes a successful read
 * returned; `cell` only names it in messages) into `c` (initialized; its previous
 * contents are replaced). 0 (c->present tells whether the cell exists), STRATA_INTERNAL
 * for a reply that is not one MessagePack nil or {value, counter, ...} map (err says
 * what is wrong), or STRATA_OUT_OF_MEMORY. */
int metacell_decode_get(struct metacell *c, const char *cell, const uint8_t *reply, size_t len,
                        struct err *err);

/* Classify the answer to a write packed above: `code`, `reply`/`len` and `message` as
 * the replication callback got them. Returns
 *   0                  written: *counter is the cell's new counter (from the reply);
 *   STRATA_CONFLICT    another write came first (cas: the counter moved; init: the cell
 *                      exists). The reply carries the current counter only in the
 *                      message text, which err keeps: read the cell again;
 *   any other code     the write failed (err: the message, or the code's name), or it
 *                      succeeded with a reply that has no counter (STRATA_INTERNAL). */
int metacell_decode_write(const char *cell, int code, const uint8_t *reply, size_t len,
                          const char *message, uint64_t *counter, struct err *err);

#endif
