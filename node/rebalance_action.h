/* Private to node/rebalance.c: the rebalancer's "one action at a time" rule as a small
 * state machine with a generation per action, so that only the callback of the action
 * running now can end it.
 *
 *            begin (gen = ++gen)             end(gen) of the current action
 *   IDLE  ------------------------->  BUSY  ---------------------------------> IDLE
 *                                      |
 *                                      |  abandon (no answer in time, leadership lost):
 *                                      +-------------------------------------> IDLE
 *                                         gen++: the abandoned action's late callback
 *                                         (and any older one) is now stale
 *
 * end(g) with g ≠ gen is a stale callback: it changes nothing, and its caller must not
 * act as the rebalancer (start another action, clear a retry delay, ...): a newer action
 * may be running. Without the generation a late callback would end the newer action's
 * turn and a second action could start beside it.
 *
 * Pure code, no clock (the caller passes now): tests/unit/node/test_rebalance_action.c. */
#ifndef STRATA_NODE_REBALANCE_ACTION_H
#define STRATA_NODE_REBALANCE_ACTION_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>

struct rb_action {
    uint64_t gen;      /* the newest action started or abandoned; 0 before the first */
    bool busy;         /* action `gen` runs */
    uint64_t since_ms; /* when it started */
};

/* Start an action (none may run: a programmer error). Returns its generation (never 0),
 * which its callback hands to rb_action_end. */
static inline uint64_t rb_action_begin(struct rb_action *a, uint64_t now_ms)
{
    assert(!a->busy);
    a->busy = true;
    a->since_ms = now_ms;
    return ++a->gen;
}

/* The callback of action `gen` came: whether it is the running action (then it ended
 * and the rebalancer is free), or a stale one (nothing changed). */
static inline bool rb_action_end(struct rb_action *a, uint64_t gen)
{
    if (!a->busy || gen != a->gen)
        return false;
    a->busy = false;
    return true;
}

/* Give up on the running action, if any: its callback, should it still come, is stale.
 * With none running there is no callback to outdate (each ended through its own). */
static inline void rb_action_abandon(struct rb_action *a)
{
    if (!a->busy)
        return;
    a->busy = false;
    a->gen++;
}

/* Whether the running action has had no answer for more than `max_ms`. */
static inline bool rb_action_overdue(const struct rb_action *a, uint64_t now_ms, uint64_t max_ms)
{
    return a->busy && now_ms - a->since_ms > max_ms;
}

#endif
