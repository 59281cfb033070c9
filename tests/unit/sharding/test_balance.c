/* sharding/balance: the rebalancer's plan. Every scenario runs plan → apply until the
 * plan says NONE (bounded), then checks the layout it converged to; stale steps must be
 * refused without changing the table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "balance.h"

static void make(struct placement *p, size_t nodes, uint32_t shards, uint32_t rf)
{
    struct pl_node m[PL_MAX_NODES];
    memset(m, 0, sizeof m);
    for (size_t i = 0; i < nodes; i++) {
        m[i].id = i + 1;
        snprintf(m[i].address, sizeof m[i].address, "127.0.0.%zu:7000", i + 1);
    }
    struct err e;
    err_clear(&e);
    placement_init(p);
    assert_int_equal(placement_initial(p, m, nodes, shards, rf, &e), 0);
}

/* Plan and apply until balanced; returns the number of steps (fails past `max`). */
static int converge(struct placement *p, int max, int *kinds)
{
    for (int steps = 0; steps <= max; steps++) {
        struct pl_step s;
        placement_plan(p, &s);
        if (s.kind == PL_PLAN_NONE)
            return steps;
        if (kinds)
            kinds[s.kind]++;
        struct err e;
        err_clear(&e);
        char why[160];
        placement_plan_describe(&s, why, sizeof why);
        if (placement_plan_apply(p, &s, &e) != 0)
            fail_msg("step '%s' refused: %s", why, e.msg);
    }
    fail_msg("no convergence within %d steps", max);
    return -1;
}

static void loads(const struct placement *p, size_t *min_r, size_t *max_r, size_t *min_l,
                  size_t *max_l)
{
    size_t c[PL_MAX_NODES], l[PL_MAX_NODES];
    placement_node_loads(p, c, l);
    *min_r = *min_l = SIZE_MAX;
    *max_r = *max_l = 0;
    for (size_t i = 0; i < p->nnodes; i++) {
        if (p->nodes[i].state != PL_NODE_ACTIVE)
            continue;
        *min_r = c[i] < *min_r ? c[i] : *min_r;
        *max_r = c[i] > *max_r ? c[i] : *max_r;
        *min_l = l[i] < *min_l ? l[i] : *min_l;
        *max_l = l[i] > *max_l ? l[i] : *max_l;
    }
}

static void test_plan_converges_from_initial_layouts(void **state)
{
    (void)state;
    for (size_t n = 1; n <= 9; n++)
        for (uint32_t s = 1; s <= 12; s++) {
            struct placement p;
            make(&p, n, s, 3);
            int steps = converge(&p, 40, NULL);
            size_t a, b, c, d;
            loads(&p, &a, &b, &c, &d);
            if (b - a > 1 || d - c > 1)
                fail_msg("%zu nodes, %u shards: replicas %zu..%zu, leaders %zu..%zu", n, s, a,
                         b, c, d);
            /* The rotating initial layout is even whenever it can be. */
            if (n <= 3 || s % n == 0)
                assert_int_equal(steps, 0);
            placement_free(&p);
        }
}

static void test_plan_joined_node_gets_its_share(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 5, 6, 3); /* 18 replicas over 5 nodes */
    struct err e;
    err_clear(&e);
    assert_int_equal(placement_add_node(&p, 6, "127.0.0.6:7000", &e), 0);
    int kinds[8] = {0};
    int steps = converge(&p, 50, kinds);
    size_t c[PL_MAX_NODES], l[PL_MAX_NODES];
    placement_node_loads(&p, c, l);
    for (size_t i = 0; i < p.nnodes; i++) {
        assert_int_equal(c[i], 3); /* 18 / 6 */
        assert_int_equal(l[i], 1); /* 6 shards, 6 nodes */
    }
    assert_true(kinds[PL_PLAN_MOVE] >= 3); /* the new node got >= 3 replicas by moves */
    assert_true(steps <= 12);
    for (size_t s = 0; s < p.nshards; s++)
        assert_int_equal(p.shards[s].nreplicas, 3);
    placement_free(&p);
}

static void test_plan_small_cluster_grows_replicas(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 1, 3, 3); /* one node: every shard has 1 replica */
    struct err e;
    err_clear(&e);
    assert_int_equal(placement_add_node(&p, 2, "127.0.0.2:7000", &e), 0);
    assert_int_equal(placement_add_node(&p, 3, "127.0.0.3:7000", &e), 0);
    int kinds[8] = {0};
    converge(&p, 50, kinds);
    assert_int_equal(kinds[PL_PLAN_REPLICATE], 6);
    for (size_t s = 0; s < p.nshards; s++)
        assert_int_equal(p.shards[s].nreplicas, 3);
    size_t a, b, c, d;
    loads(&p, &a, &b, &c, &d);
    assert_true(b - a <= 1 && d - c <= 1);
    placement_free(&p);
}

static void test_plan_drain_moves_everything_then_removes(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 6, 6, 3);
    struct err e;
    err_clear(&e);
    assert_int_equal(placement_drain_node(&p, 2, &e), 0);
    int kinds[8] = {0};
    converge(&p, 60, kinds);
    assert_null(placement_node(&p, 2));
    assert_int_equal(kinds[PL_PLAN_REMOVE], 1);
    assert_int_equal(kinds[PL_PLAN_DRAIN], 3); /* node 2 held 3 replicas */
    for (size_t s = 0; s < p.nshards; s++) {
        assert_int_equal(p.shards[s].nreplicas, 3);
        assert_false(placement_shard_has(&p.shards[s], 2));
    }
    size_t a, b, c, d;
    loads(&p, &a, &b, &c, &d);
    assert_true(b - a <= 1 && d - c <= 1);
    placement_free(&p);
}

static void test_plan_drain_without_spare_node_shrinks_shards(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 3, 3, 3);
    struct err e;
    err_clear(&e);
    assert_int_equal(placement_drain_node(&p, 3, &e), 0);
    converge(&p, 20, NULL);
    assert_null(placement_node(&p, 3));
    for (size_t s = 0; s < p.nshards; s++)
        assert_int_equal(p.shards[s].nreplicas, 2);
    placement_free(&p);
}

static void test_plan_drain_keeps_a_last_replica(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 1, 2, 1);
    struct err e;
    err_clear(&e);
    assert_int_equal(placement_drain_node(&p, 1, &e), 0);
    struct pl_step s;
    placement_plan(&p, &s);
    assert_int_equal(s.kind, PL_PLAN_NONE); /* nowhere to go, and never to zero replicas */
    assert_non_null(placement_node(&p, 1));
    /* A node joins: the replicas drain to it and node 1 goes. */
    assert_int_equal(placement_add_node(&p, 2, "127.0.0.2:7000", &e), 0);
    converge(&p, 20, NULL);
    assert_null(placement_node(&p, 1));
    for (size_t i = 0; i < p.nshards; i++)
        assert_int_equal(p.shards[i].replicas[0], 2);
    placement_free(&p);
}

static void test_plan_stale_step_is_refused(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 3, 3, 3);
    struct err e;
    err_clear(&e);
    assert_int_equal(placement_add_node(&p, 4, "127.0.0.4:7000", &e), 0);
    assert_int_equal(placement_add_node(&p, 5, "127.0.0.5:7000", &e), 0);
    struct pl_step s;
    placement_plan(&p, &s);
    assert_int_equal(s.kind, PL_PLAN_MOVE);
    assert_int_equal(placement_plan_apply(&p, &s, &e), 0);
    uint64_t epoch = placement_shard(&p, s.shard)->epoch;
    err_clear(&e);
    assert_int_equal(placement_plan_apply(&p, &s, &e), STRATA_INVALID_ARGUMENT);
    assert_non_null(strstr(e.msg, "no longer fits"));
    assert_int_equal(placement_shard(&p, s.shard)->epoch, epoch);
    /* A target that is draining is refused too. */
    placement_plan(&p, &s);
    if (s.kind == PL_PLAN_MOVE) {
        assert_int_equal(placement_drain_node(&p, s.to, &e), 0);
        err_clear(&e);
        assert_int_equal(placement_plan_apply(&p, &s, &e), STRATA_INVALID_ARGUMENT);
    }
    placement_free(&p);
}

static void test_plan_describe_names_the_step(void **state)
{
    (void)state;
    char out[160];
    struct pl_step s = {PL_PLAN_MOVE, 4, 1, 6, 0};
    placement_plan_describe(&s, out, sizeof out);
    assert_string_equal(out, "balance: shard 4 replica moves from node 1 to node 6");
    s = (struct pl_step){PL_PLAN_DRAIN, 2, 3, 0, 0};
    placement_plan_describe(&s, out, sizeof out);
    assert_string_equal(out, "drain: shard 2 drops its replica on node 3");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_converges_from_initial_layouts),
        cmocka_unit_test(test_plan_joined_node_gets_its_share),
        cmocka_unit_test(test_plan_small_cluster_grows_replicas),
        cmocka_unit_test(test_plan_drain_moves_everything_then_removes),
        cmocka_unit_test(test_plan_drain_without_spare_node_shrinks_shards),
        cmocka_unit_test(test_plan_drain_keeps_a_last_replica),
        cmocka_unit_test(test_plan_stale_step_is_refused),
        cmocka_unit_test(test_plan_describe_names_the_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
