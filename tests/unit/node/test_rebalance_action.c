/* node/rebalance_action.h: the rebalancer's one-action-at-a-time rule. A late callback of
 * an action given up on (no answer in time, leadership lost) must not end the turn of
 * the action running now — before the generation it did, and a second action could start
 * beside the first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rebalance_action.h"

static void test_rb_action_end_current(void **state)
{
    (void)state;
    struct rb_action a = {0};
    assert_false(a.busy);
    uint64_t g1 = rb_action_begin(&a, 100);
    assert_true(g1 != 0);
    assert_true(a.busy);
    assert_true(rb_action_end(&a, g1));
    assert_false(a.busy);
    /* The same answer twice (or an answer when idle) changes nothing. */
    assert_false(rb_action_end(&a, g1));
    assert_false(a.busy);
    uint64_t g2 = rb_action_begin(&a, 200);
    assert_true(g2 > g1);
    assert_true(rb_action_end(&a, g2));
}

/* The review finding: A is given up on (timeout), B starts, A's answer comes late. */
static void test_rb_action_late_answer_after_timeout_is_stale(void **state)
{
    (void)state;
    struct rb_action a = {0};
    uint64_t ga = rb_action_begin(&a, 1000);
    assert_false(rb_action_overdue(&a, 1000 + 30000, 30000));
    assert_true(rb_action_overdue(&a, 1000 + 30001, 30000));
    rb_action_abandon(&a);
    assert_false(a.busy);
    assert_false(rb_action_overdue(&a, 1000 + 30001, 30000));
    uint64_t gb = rb_action_begin(&a, 31001);
    assert_true(gb != ga);
    /* A's late callback: stale, B still runs. */
    assert_false(rb_action_end(&a, ga));
    assert_true(a.busy);
    assert_int_equal(a.since_ms, 31001);
    /* B's own answer ends it. */
    assert_true(rb_action_end(&a, gb));
    assert_false(a.busy);
}

/* Leadership lost with an action running, regained, a new action: the old answer and
 * any older one are stale; an answer for an abandoned action with nothing running
 * does not matter either. */
static void test_rb_action_abandoned_on_leadership_loss(void **state)
{
    (void)state;
    struct rb_action a = {0};
    uint64_t g0 = rb_action_begin(&a, 1);
    assert_true(rb_action_end(&a, g0));
    uint64_t g1 = rb_action_begin(&a, 2);
    rb_action_abandon(&a); /* not the leader any more */
    assert_false(rb_action_end(&a, g1));
    assert_false(a.busy);
    /* Idle: abandoning again (every tick as a follower) outdates nothing new. */
    uint64_t gen = a.gen;
    rb_action_abandon(&a);
    rb_action_abandon(&a);
    assert_int_equal(a.gen, gen);
    uint64_t g2 = rb_action_begin(&a, 3);
    assert_false(rb_action_end(&a, g1));
    assert_false(rb_action_end(&a, g0));
    assert_true(a.busy);
    assert_true(rb_action_end(&a, g2));
}

/* Many rounds of give-up and late answers in every order: exactly the running action's
 * answer frees the rebalancer. */
static void test_rb_action_only_running_answer_frees(void **state)
{
    (void)state;
    struct rb_action a = {0};
    uint64_t old[64];
    size_t nold = 0;
    for (int round = 0; round < 64; round++) {
        uint64_t g = rb_action_begin(&a, (uint64_t)round * 10);
        for (size_t i = 0; i < nold; i++) {
            assert_false(rb_action_end(&a, old[i]));
            assert_true(a.busy);
        }
        if (round % 3 == 0) {
            assert_true(rb_action_end(&a, g));
        } else {
            rb_action_abandon(&a);
            old[nold++] = g;
        }
        assert_false(a.busy);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rb_action_end_current),
        cmocka_unit_test(test_rb_action_late_answer_after_timeout_is_stale),
        cmocka_unit_test(test_rb_action_abandoned_on_leadership_loss),
        cmocka_unit_test(test_rb_action_only_running_answer_frees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
