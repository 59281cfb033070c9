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
#include <stdlib.h>
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

/* ---- Branch moves ------------------------------------------------------------------------ */

/* Assign `n` branches PREFIX-00.. to `shard`. */
static void add_branches(struct placement *p, const char *prefix, int n, uint32_t shard)
{
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s-%02d", prefix, i);
        struct err e;
        err_clear(&e);
        assert_int_equal(placement_assign(p, name, strlen(name), shard, &e), 0);
    }
}

/* Facts, kept sorted by name as the planner expects. */
struct facts {
    char names[64][32];
    struct pl_bfact f[64];
    size_t n;
};

static int fact_cmp(const void *a, const void *b)
{
    return strcmp(((const struct pl_bfact *)a)->name, ((const struct pl_bfact *)b)->name);
}

static void fact_set(struct facts *fs, const char *name, enum pl_bkind kind)
{
    for (size_t i = 0; i < fs->n; i++)
        if (strcmp(fs->f[i].name, name) == 0) {
            fs->f[i].kind = kind;
            return;
        }
    assert_true(fs->n < 64);
    snprintf(fs->names[fs->n], sizeof fs->names[fs->n], "%s", name);
    fs->f[fs->n] = (struct pl_bfact){fs->names[fs->n], kind};
    fs->n++;
    qsort(fs->f, fs->n, sizeof fs->f[0], fact_cmp);
}

/* Plan with `fs` (NULL: no facts) and `in_flight`; the step must be `kind` (and for CHECK
 * or MOVE, of `branch` from shard `from` to shard `to`). */
static void expect_step(const struct placement *p, size_t in_flight, const struct facts *fs,
                        enum pl_bplan kind, const char *branch, uint32_t from, uint32_t to)
{
    struct pl_bstep st;
    placement_plan_branch(p, in_flight, fs ? fs->f : NULL, fs ? fs->n : 0, &st);
    assert_int_equal(st.kind, kind);
    if (kind == PL_BPLAN_NONE)
        return;
    assert_string_equal(st.branch, branch);
    assert_int_equal(st.from, from);
    assert_int_equal(st.to, to);
}

static void branch_spread(const struct placement *p, size_t *min, size_t *max)
{
    size_t c[PL_MAX_SHARDS];
    placement_branch_counts(p, c);
    *min = SIZE_MAX;
    *max = 0;
    for (size_t i = 0; i < p->nshards; i++) {
        *min = c[i] < *min ? c[i] : *min;
        *max = c[i] > *max ? c[i] : *max;
    }
}

static void test_branches_uneven_thresholds(void **state)
{
    (void)state;
    /* A difference of one is as even as it gets. */
    assert_false(placement_branches_uneven(0, 0, 3));
    assert_false(placement_branches_uneven(1, 3, 3));
    assert_true(placement_branches_uneven(2, 4, 3));
    /* Mean 100: more than 10 (10 %) is needed. */
    assert_false(placement_branches_uneven(10, 300, 3));
    assert_true(placement_branches_uneven(11, 300, 3));
    /* Small means: the absolute minimum of 2 decides. */
    assert_true(placement_branches_uneven(2, 57, 3)); /* 2 > 1.9 */
    assert_false(placement_branches_uneven(2, 60, 3)); /* 2 is not > 2 */
    assert_false(placement_branches_uneven(5, 0, 0));
}

static void test_plan_branch_even_table_is_left_alone(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 3, 3, 3);
    expect_step(&p, 0, NULL, PL_BPLAN_NONE, NULL, 0, 0); /* only "default" */
    add_branches(&p, "a", 1, 2); /* 1 1 0: a difference of one */
    expect_step(&p, 0, NULL, PL_BPLAN_NONE, NULL, 0, 0);
    add_branches(&p, "b", 1, 2); /* 1 2 0 */
    expect_step(&p, 0, NULL, PL_BPLAN_CHECK, "a-00", 2, 3);
    struct pl_bstep st;
    placement_plan_branch(&p, 0, NULL, 0, &st);
    assert_int_equal(st.from_load, 2);
    assert_int_equal(st.to_load, 0);
    placement_free(&p);
}

static void test_plan_branch_large_shards_need_ten_percent(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 3, 3, 3);
    add_branches(&p, "a", 104, 1); /* + default: 105 */
    add_branches(&p, "b", 100, 2);
    add_branches(&p, "c", 95, 3); /* total 300, spread 10: not more than 10 % of 100 */
    expect_step(&p, 0, NULL, PL_BPLAN_NONE, NULL, 0, 0);
    add_branches(&p, "d", 1, 1); /* spread 11 */
    expect_step(&p, 0, NULL, PL_BPLAN_CHECK, "a-00", 1, 3);
    placement_free(&p);
}

static void test_plan_branch_ties_go_to_lowest_ids(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 3, 4, 3);
    /* Loads 1 4 4 1: the heaviest are 2 and 3, the lightest 1 and 4. Assigned in an
     * order unlike the names' to show only names and ids count. */
    add_branches(&p, "z", 4, 3);
    add_branches(&p, "m", 4, 2);
    add_branches(&p, "x", 1, 4);
    expect_step(&p, 0, NULL, PL_BPLAN_CHECK, "m-00", 2, 1);
    expect_step(&p, 0, NULL, PL_BPLAN_CHECK, "m-00", 2, 1); /* and again */
    placement_free(&p);
}

static void test_plan_branch_check_then_move_then_skip(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 3, 3, 3);
    add_branches(&p, "s", 4, 2);
    struct facts fs = {0};
    expect_step(&p, 0, &fs, PL_BPLAN_CHECK, "s-00", 2, 3);
    fact_set(&fs, "s-00", PL_BRANCH_STANDALONE);
    expect_step(&p, 0, &fs, PL_BPLAN_MOVE, "s-00", 2, 3);
    /* The move driver refused it: the next branch is asked about. */
    fact_set(&fs, "s-00", PL_BRANCH_SKIP);
    expect_step(&p, 0, &fs, PL_BPLAN_CHECK, "s-01", 2, 3);
    placement_free(&p);
}

static void test_plan_branch_never_moves_forks_or_default(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 3, 3, 3);
    /* Shard 1: "default" and a fork family of 6; nothing movable there. */
    add_branches(&p, "fam", 6, 1);
    struct facts fs = {0};
    for (int i = 0; i < 6; i++) {
        char name[32];
        snprintf(name, sizeof name, "fam-%02d", i);
        fact_set(&fs, name, PL_BRANCH_FAMILY);
    }
    expect_step(&p, 0, &fs, PL_BPLAN_NONE, NULL, 0, 0); /* 7 0 0, but only forks and default */
    /* Shard 2 heavy enough against shard 3: its standalone branches move instead. */
    add_branches(&p, "solo", 3, 2);
    fact_set(&fs, "solo-00", PL_BRANCH_STANDALONE);
    expect_step(&p, 0, &fs, PL_BPLAN_MOVE, "solo-00", 2, 3);
    struct pl_bstep st;
    /* Converge, treating every unknown branch as standalone once asked. */
    for (int steps = 0; steps < 20; steps++) {
        placement_plan_branch(&p, 0, fs.f, fs.n, &st);
        if (st.kind == PL_BPLAN_NONE)
            break;
        assert_int_not_equal(strcmp(st.branch, PL_DEFAULT_BRANCH), 0);
        assert_int_not_equal(strncmp(st.branch, "fam-", 4), 0);
        if (st.kind == PL_BPLAN_CHECK) {
            fact_set(&fs, st.branch, PL_BRANCH_STANDALONE);
            continue;
        }
        struct err e;
        err_clear(&e);
        assert_int_equal(placement_move(&p, st.branch, strlen(st.branch), st.to, &e), 0);
    }
    assert_int_equal(st.kind, PL_BPLAN_NONE);
    const struct pl_branch *d = placement_branch(&p, PL_DEFAULT_BRANCH, 7);
    assert_int_equal(d->shard, 1);
    for (int i = 0; i < 6; i++) {
        char name[32];
        snprintf(name, sizeof name, "fam-%02d", i);
        assert_int_equal(placement_branch(&p, name, strlen(name))->shard, 1);
    }
    /* 7 2 1: shard 2 gave one to shard 3; a difference of one is left, and shard 1 has
     * nothing movable. */
    size_t c[PL_MAX_SHARDS];
    placement_branch_counts(&p, c);
    assert_int_equal(c[0], 7);
    assert_int_equal(c[1], 2);
    assert_int_equal(c[2], 1);
    placement_free(&p);
}

static void test_plan_branch_converges_within_threshold(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 3, 3, 3);
    add_branches(&p, "a", 12, 1);
    add_branches(&p, "b", 9, 2);
    add_branches(&p, "c", 2, 3); /* 13 9 2 */
    struct facts fs = {0};
    int moves = 0;
    struct pl_bstep st;
    for (int steps = 0; steps < 60; steps++) {
        placement_plan_branch(&p, 0, fs.f, fs.n, &st);
        if (st.kind == PL_BPLAN_NONE)
            break;
        if (st.kind == PL_BPLAN_CHECK) {
            fact_set(&fs, st.branch, PL_BRANCH_STANDALONE);
            continue;
        }
        struct err e;
        err_clear(&e);
        assert_int_equal(placement_move(&p, st.branch, strlen(st.branch), st.to, &e), 0);
        moves++;
    }
    assert_int_equal(st.kind, PL_BPLAN_NONE);
    size_t min, max;
    branch_spread(&p, &min, &max);
    assert_true(max - min <= 1);
    assert_int_equal(moves, 6); /* 13 9 2 -> 8 8 8: 5 off shard 1, 1 off shard 2 */
    placement_free(&p);
}

static void test_plan_branch_waits_for_a_move_in_flight(void **state)
{
    (void)state;
    struct placement p;
    make(&p, 3, 3, 3);
    add_branches(&p, "s", 8, 2);
    struct facts fs = {0};
    fact_set(&fs, "s-00", PL_BRANCH_STANDALONE);
    expect_step(&p, 1, &fs, PL_BPLAN_NONE, NULL, 0, 0);
    expect_step(&p, 0, &fs, PL_BPLAN_MOVE, "s-00", 2, 3);
    /* One shard: nowhere to go. */
    struct placement one;
    make(&one, 1, 1, 1);
    add_branches(&one, "s", 8, 1);
    expect_step(&one, 0, NULL, PL_BPLAN_NONE, NULL, 0, 0);
    placement_free(&one);
    placement_free(&p);
}

static void test_plan_branch_describe_names_the_branch(void **state)
{
    (void)state;
    char out[200];
    struct pl_bstep st = {PL_BPLAN_MOVE, "b7", 2, 3, 9, 2};
    placement_plan_branch_describe(&st, out, sizeof out);
    assert_string_equal(out, "moving branch 'b7' from shard 2 (9 branches) to shard 3 (2 branches)");
    st.kind = PL_BPLAN_NONE;
    placement_plan_branch_describe(&st, out, sizeof out);
    assert_string_equal(out, "branches even");
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
        cmocka_unit_test(test_branches_uneven_thresholds),
        cmocka_unit_test(test_plan_branch_even_table_is_left_alone),
        cmocka_unit_test(test_plan_branch_large_shards_need_ten_percent),
        cmocka_unit_test(test_plan_branch_ties_go_to_lowest_ids),
        cmocka_unit_test(test_plan_branch_check_then_move_then_skip),
        cmocka_unit_test(test_plan_branch_never_moves_forks_or_default),
        cmocka_unit_test(test_plan_branch_converges_within_threshold),
        cmocka_unit_test(test_plan_branch_waits_for_a_move_in_flight),
        cmocka_unit_test(test_plan_branch_describe_names_the_branch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
