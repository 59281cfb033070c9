/* sharding/placement: the initial layout, lookups, load counts and every change with every
 * error it can return (the MessagePack form: test_placement.c). */
#include "test_placement.h"

/* ---- placement_initial ------------------------------------------------------------------ */

/* Checks the rule of placement.h against members given in their (unsorted) order. */
static void check_initial(const struct pl_node *m, size_t n, uint32_t nshards, uint32_t rf)
{
    struct placement p;
    struct err e;
    placement_init(&p);
    assert_int_equal(placement_initial(&p, m, n, nshards, rf, &e), 0);
    assert_valid(&p);
    assert_int_equal(p.rf, rf);
    assert_int_equal(p.nnodes, n);
    for (size_t i = 0; i < n; i++) {
        const struct pl_node *nd = placement_node(&p, m[i].id);
        assert_non_null(nd);
        assert_string_equal(nd->address, m[i].address);
        assert_int_equal(nd->state, PL_NODE_ACTIVE);
    }
    assert_int_equal(p.nshards, nshards);
    uint32_t want = rf < n ? rf : (uint32_t)n;
    for (uint32_t s = 1; s <= nshards; s++) {
        const struct pl_shard *sh = placement_shard(&p, s);
        assert_non_null(sh);
        assert_int_equal(sh->epoch, 1);
        assert_int_equal(sh->nreplicas, want);
        for (uint32_t i = 0; i < want; i++)
            assert_int_equal(sh->replicas[i], m[(s - 1 + i) % n].id);
    }
    assert_int_equal(p.nbranches, 1);
    assert_string_equal(p.branches[0].name, "default");
    assert_int_equal(p.branches[0].shard, 1);
    assert_int_equal(p.branches[0].epoch, 1);
    assert_int_equal(p.epoch, 0);
    assert_roundtrip(&p);
    placement_free(&p);
}

static void test_initial_layout_one_three_five_nodes(void **state)
{
    (void)state;
    /* Ids deliberately out of order: the node list comes out sorted, replicas follow the
     * members' order. */
    const uint64_t ids[] = {30, 10, 50, 20, 40};
    struct pl_node m[5];
    for (int i = 0; i < 5; i++)
        set_member(&m[i], ids[i]);
    const size_t ns[] = {1, 3, 5};
    const uint32_t shards[] = {3, 9};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 2; b++)
            check_initial(m, ns[a], shards[b], 3);
}

static void test_initial_layout_explicit_values(void **state)
{
    (void)state;
    const uint64_t ids[] = {30, 10, 50, 20, 40};
    struct pl_node m[5];
    for (int i = 0; i < 5; i++)
        set_member(&m[i], ids[i]);
    struct placement p;
    struct err e;
    placement_init(&p);

    /* n = 3, 3 shards, rf 3: every shard on all three nodes, leaders 30, 10, 50. */
    assert_int_equal(placement_initial(&p, m, 3, 3, 3, &e), 0);
    const uint64_t want3[3][3] = {{30, 10, 50}, {10, 50, 30}, {50, 30, 10}};
    for (int s = 0; s < 3; s++)
        assert_memory_equal(p.shards[s].replicas, want3[s], sizeof want3[s]);
    assert_int_equal(p.nodes[0].id, 10);
    assert_int_equal(p.nodes[1].id, 30);
    assert_int_equal(p.nodes[2].id, 50);

    /* n = 5, 9 shards, rf 3: leaders rotate 30,10,50,20,40,30,10,50,20. */
    assert_int_equal(placement_initial(&p, m, 5, 9, 3, &e), 0);
    const uint64_t lead[9] = {30, 10, 50, 20, 40, 30, 10, 50, 20};
    for (int s = 0; s < 9; s++)
        assert_int_equal(p.shards[s].replicas[0], lead[s]);
    const uint64_t s5[3] = {40, 30, 10};
    assert_memory_equal(p.shards[4].replicas, s5, sizeof s5);
    uint64_t sorted[5];
    for (int i = 0; i < 5; i++)
        sorted[i] = p.nodes[i].id;
    const uint64_t want_sorted[5] = {10, 20, 30, 40, 50};
    assert_memory_equal(sorted, want_sorted, sizeof sorted);

    /* n = 1, 3 shards, rf 3: capped to one replica each, all on node 30. */
    assert_int_equal(placement_initial(&p, m, 1, 3, 3, &e), 0);
    for (int s = 0; s < 3; s++) {
        assert_int_equal(p.shards[s].nreplicas, 1);
        assert_int_equal(p.shards[s].replicas[0], 30);
    }
    assert_int_equal(p.rf, 3);
    placement_free(&p);
}

static void test_initial_ignores_given_state(void **state)
{
    (void)state;
    struct pl_node m[2];
    set_member(&m[0], 1);
    set_member(&m[1], 2);
    m[1].state = PL_NODE_DRAINING;
    struct placement p;
    struct err e;
    placement_init(&p);
    assert_int_equal(placement_initial(&p, m, 2, 1, 3, &e), 0);
    assert_int_equal(placement_node(&p, 2)->state, PL_NODE_ACTIVE);
    placement_free(&p);
}

static void test_initial_bad_arguments(void **state)
{
    (void)state;
    static struct pl_node m[PL_MAX_NODES + 1];
    for (int i = 0; i <= PL_MAX_NODES; i++)
        set_member(&m[i], (uint64_t)i + 1);
    for (int i = 0; i <= PL_MAX_NODES; i++) /* distinct addresses for all 65 */
        snprintf(m[i].address, sizeof m[i].address, "10.0.0.%d:7000", i);
    struct placement p;
    struct err e;
    make_three(&p);

    expect_error(placement_initial(&p, m, 0, 3, 3, &e), &e, STRATA_INVALID_ARGUMENT, "members");
    expect_error(placement_initial(&p, m, PL_MAX_NODES + 1, 3, 3, &e), &e, STRATA_INVALID_ARGUMENT,
                 "65");
    expect_error(placement_initial(&p, m, 3, 0, 3, &e), &e, STRATA_INVALID_ARGUMENT, "shard");
    expect_error(placement_initial(&p, m, 3, PL_MAX_SHARDS + 1, 3, &e), &e, STRATA_INVALID_ARGUMENT,
                 "257");
    expect_error(placement_initial(&p, m, 3, 3, 0, &e), &e, STRATA_INVALID_ARGUMENT,
                 "replication factor");
    expect_error(placement_initial(&p, m, 3, 3, PL_MAX_REPLICAS + 1, &e), &e,
                 STRATA_INVALID_ARGUMENT, "replication factor");

    struct pl_node bad[3];
    memcpy(bad, m, sizeof bad);
    bad[1].id = 0;
    expect_error(placement_initial(&p, bad, 3, 3, 3, &e), &e, STRATA_INVALID_ARGUMENT, "id 0");
    memcpy(bad, m, sizeof bad);
    bad[2].id = bad[0].id;
    expect_error(placement_initial(&p, bad, 3, 3, 3, &e), &e, STRATA_INVALID_ARGUMENT, "same id");
    memcpy(bad, m, sizeof bad);
    bad[1].address[0] = '\0';
    expect_error(placement_initial(&p, bad, 3, 3, 3, &e), &e, STRATA_INVALID_ARGUMENT, "empty");
    memcpy(bad, m, sizeof bad);
    memset(bad[1].address, 'a', sizeof bad[1].address); /* no NUL at all */
    expect_error(placement_initial(&p, bad, 3, 3, 3, &e), &e, STRATA_INVALID_ARGUMENT,
                 "longer than 255");
    memcpy(bad, m, sizeof bad);
    strcpy(bad[2].address, bad[0].address);
    expect_error(placement_initial(&p, bad, 3, 3, 3, &e), &e, STRATA_INVALID_ARGUMENT,
                 "same address");

    /* A 255-byte address and 64 members are the limits, not errors. */
    memcpy(bad, m, sizeof bad);
    memset(bad[1].address, 'a', PL_ADDRESS_MAX);
    bad[1].address[PL_ADDRESS_MAX] = '\0';
    assert_int_equal(placement_initial(&p, bad, 3, 3, 3, &e), 0);
    assert_int_equal(placement_initial(&p, m, PL_MAX_NODES, PL_MAX_SHARDS, PL_MAX_REPLICAS, &e), 0);
    assert_valid(&p);
    assert_roundtrip(&p);
    placement_free(&p);
}

static void test_initial_error_leaves_table_unchanged(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    assert_int_equal(placement_assign(&p, "x", 1, 2, &e), 0);
    struct pl_node m[1];
    set_member(&m[0], 9);
    expect_error(placement_initial(&p, m, 1, 0, 3, &e), &e, STRATA_INVALID_ARGUMENT, "shard");
    assert_int_equal(p.nbranches, 2);
    assert_int_equal(p.nnodes, 3);
    sm_fail_after(1);
    expect_error(placement_initial(&p, m, 1, 1, 1, &e), &e, STRATA_OUT_OF_MEMORY, "memory");
    sm_fail_after(0);
    assert_int_equal(p.nbranches, 2);
    assert_valid(&p);
    placement_free(&p);
}

/* ---- lookups and load -------------------------------------------------------------------- */

static void test_lookups_present_and_absent(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    assert_int_equal(placement_assign(&p, "ab", 2, 2, &e), 0);
    assert_int_equal(placement_assign(&p, "a", 1, 3, &e), 0);
    assert_int_equal(placement_branch(&p, "a", 1)->shard, 3);
    assert_int_equal(placement_branch(&p, "abc", 2)->shard, 2); /* only len bytes count */
    assert_null(placement_branch(&p, "abc", 3));
    assert_null(placement_branch(&p, "", 0));
    assert_null(placement_branch(&p, NULL, 0));
    assert_null(placement_branch(&p, "def", 3));
    assert_non_null(placement_node(&p, 2));
    assert_null(placement_node(&p, 0));
    assert_null(placement_node(&p, 4));
    assert_non_null(placement_shard(&p, 3));
    assert_null(placement_shard(&p, 0));
    assert_null(placement_shard(&p, 4));
    assert_true(placement_shard_has(placement_shard(&p, 1), 3));
    const uint64_t one[] = {2};
    assert_int_equal(placement_set_replicas(&p, 1, one, 1, &e), 0);
    assert_false(placement_shard_has(placement_shard(&p, 1), 3));
    assert_true(placement_shard_has(placement_shard(&p, 1), 2));
    placement_free(&p);

    struct placement empty;
    placement_init(&empty);
    assert_null(placement_branch(&empty, "default", 7));
    assert_null(placement_node(&empty, 1));
    assert_null(placement_shard(&empty, 1));
}

/* ---- changes ------------------------------------------------------------------------------ */

static void test_assign_sorted_and_errors(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    /* Random order in, sorted order out. */
    rng_state = 12345;
    char name[24];
    int added = 0;
    for (int i = 0; i < 3000; i++) {
        int n = snprintf(name, sizeof name, "n%" PRIu64, rnd() % 100000);
        int rc = placement_assign(&p, name, (size_t)n, 1 + (uint32_t)(rnd() % 3), &e);
        assert_true(rc == 0 || rc == STRATA_ALREADY_EXISTS);
        added += rc == 0;
    }
    assert_int_equal(p.nbranches, (size_t)added + 1);
    assert_valid(&p);

    assert_int_equal(placement_assign(&p, "new", 3, 2, &e), 0);
    const struct pl_branch *b = placement_branch(&p, "new", 3);
    assert_int_equal(b->shard, 2);
    assert_int_equal(b->epoch, 1);
    size_t before = p.nbranches;
    expect_error(placement_assign(&p, "new", 3, 3, &e), &e, STRATA_ALREADY_EXISTS,
                 "already on shard 2");
    assert_int_equal(placement_branch(&p, "new", 3)->shard, 2);
    expect_error(placement_assign(&p, "default", 7, 1, &e), &e, STRATA_ALREADY_EXISTS, "default");
    expect_error(placement_assign(&p, "", 0, 1, &e), &e, STRATA_INVALID_ARGUMENT, "1..128");
    static char longname[PL_MAX_BRANCH_NAME + 1];
    memset(longname, 'q', sizeof longname);
    expect_error(placement_assign(&p, longname, PL_MAX_BRANCH_NAME + 1, 1, &e), &e,
                 STRATA_INVALID_ARGUMENT, "got 129");
    expect_error(placement_assign(&p, "a\0b", 3, 1, &e), &e, STRATA_INVALID_ARGUMENT, "NUL");
    expect_error(placement_assign(&p, "fresh", 5, 0, &e), &e, STRATA_INVALID_ARGUMENT,
                 "shard 0 does not exist");
    expect_error(placement_assign(&p, "fresh", 5, 4, &e), &e, STRATA_INVALID_ARGUMENT,
                 "shard 4 does not exist");
    assert_int_equal(p.nbranches, before);
    assert_int_equal(placement_assign(&p, longname, PL_MAX_BRANCH_NAME, 1, &e), 0);
    assert_valid(&p);
    assert_roundtrip(&p);
    placement_free(&p);
}

static void test_assign_out_of_memory(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p); /* one branch, capacity one: the next assign grows the array */
    for (long k = 1; k <= 2; k++) {
        sm_fail_after(k); /* 1: the array, 2: the name */
        expect_error(placement_assign(&p, "b", 1, 2, &e), &e, STRATA_OUT_OF_MEMORY, "memory");
        sm_fail_after(0);
        assert_int_equal(p.nbranches, 1);
        assert_null(placement_branch(&p, "b", 1));
        assert_valid(&p);
    }
    assert_int_equal(placement_assign(&p, "b", 1, 2, &e), 0);
    assert_valid(&p);
    placement_free(&p);
}

static void test_unassign_success_and_errors(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    assert_int_equal(placement_assign(&p, "a", 1, 2, &e), 0);
    assert_int_equal(placement_assign(&p, "m", 1, 2, &e), 0);
    assert_int_equal(placement_assign(&p, "z", 1, 3, &e), 0);
    assert_int_equal(placement_unassign(&p, "m", 1, &e), 0);
    assert_null(placement_branch(&p, "m", 1));
    assert_int_equal(p.nbranches, 3);
    assert_valid(&p);
    expect_error(placement_unassign(&p, "m", 1, &e), &e, STRATA_NOT_FOUND, "'m'");
    expect_error(placement_unassign(&p, "default", 7, &e), &e, STRATA_INVALID_ARGUMENT, "default");
    expect_error(placement_unassign(&p, "", 0, &e), &e, STRATA_INVALID_ARGUMENT, "1..128");
    expect_error(placement_unassign(&p, "a\0", 2, &e), &e, STRATA_INVALID_ARGUMENT, "NUL");
    assert_int_equal(placement_unassign(&p, "z", 1, &e), 0); /* the last one */
    assert_int_equal(placement_unassign(&p, "a", 1, &e), 0); /* the first one */
    assert_int_equal(p.nbranches, 1);
    assert_valid(&p);
    assert_roundtrip(&p);
    placement_free(&p);
}

static void test_add_node_success_and_errors(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    assert_int_equal(placement_add_node(&p, 100, "127.0.0.100:7000", &e), 0);
    assert_int_equal(placement_add_node(&p, 0x7fffffffffffffffull, "h:2", &e), 0);
    assert_int_equal(placement_add_node(&p, UINT64_MAX, "h:3", &e), 0);
    assert_int_equal(p.nnodes, 6);
    assert_int_equal(p.nodes[3].id, 100);
    assert_int_equal(p.nodes[3].state, PL_NODE_ACTIVE);
    assert_string_equal(p.nodes[3].address, "127.0.0.100:7000");
    assert_valid(&p);
    expect_error(placement_add_node(&p, 2, "new:1", &e), &e, STRATA_ALREADY_EXISTS, "node 2");
    expect_error(placement_add_node(&p, 7, "h:2", &e), &e, STRATA_ALREADY_EXISTS, "address h:2");
    expect_error(placement_add_node(&p, 0, "new:1", &e), &e, STRATA_INVALID_ARGUMENT, "id 0");
    expect_error(placement_add_node(&p, 7, "", &e), &e, STRATA_INVALID_ARGUMENT, "empty");
    expect_error(placement_add_node(&p, 7, NULL, &e), &e, STRATA_INVALID_ARGUMENT, "empty");
    static char longaddr[PL_ADDRESS_MAX + 2];
    memset(longaddr, 'a', PL_ADDRESS_MAX + 1);
    expect_error(placement_add_node(&p, 7, longaddr, &e), &e, STRATA_INVALID_ARGUMENT,
                 "longer than 255");
    longaddr[PL_ADDRESS_MAX] = '\0';
    assert_int_equal(placement_add_node(&p, 7, longaddr, &e), 0);
    assert_int_equal(p.nnodes, 7);
    /* Fill to the limit, then one more. */
    char addr[32];
    for (uint64_t id = 1000; p.nnodes < PL_MAX_NODES; id++) {
        snprintf(addr, sizeof addr, "10.1.0.%" PRIu64 ":1", id);
        assert_int_equal(placement_add_node(&p, id, addr, &e), 0);
    }
    expect_error(placement_add_node(&p, 5000, "full:1", &e), &e, STRATA_INVALID_ARGUMENT,
                 "64 nodes");
    assert_valid(&p);
    assert_roundtrip(&p);
    placement_free(&p);
}

static void test_drain_node_success_and_errors(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    assert_int_equal(placement_drain_node(&p, 2, &e), 0);
    assert_int_equal(placement_node(&p, 2)->state, PL_NODE_DRAINING);
    assert_int_equal(placement_node(&p, 1)->state, PL_NODE_ACTIVE);
    assert_int_equal(placement_drain_node(&p, 2, &e), 0); /* a retry is fine */
    assert_int_equal(placement_node(&p, 2)->state, PL_NODE_DRAINING);
    expect_error(placement_drain_node(&p, 9, &e), &e, STRATA_NOT_FOUND, "node 9");
    expect_error(placement_drain_node(&p, 0, &e), &e, STRATA_NOT_FOUND, "node 0");
    assert_valid(&p);
    assert_roundtrip(&p);
    placement_free(&p);
}

static void test_remove_node_success_and_errors(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    expect_error(placement_remove_node(&p, 2, &e), &e, STRATA_INVALID_ARGUMENT,
                 "still holds a replica of shard 1");
    expect_error(placement_remove_node(&p, 9, &e), &e, STRATA_NOT_FOUND, "node 9");
    assert_int_equal(placement_drain_node(&p, 2, &e), 0);
    const uint64_t without[] = {1, 3};
    for (uint32_t s = 1; s <= 3; s++) {
        if (s < 3)
            expect_error(placement_remove_node(&p, 2, &e), &e, STRATA_INVALID_ARGUMENT,
                         "still holds");
        assert_int_equal(placement_set_replicas(&p, s, without, 2, &e), 0);
    }
    assert_int_equal(placement_remove_node(&p, 2, &e), 0);
    assert_null(placement_node(&p, 2));
    assert_int_equal(p.nnodes, 2);
    expect_error(placement_remove_node(&p, 2, &e), &e, STRATA_NOT_FOUND, "node 2");
    /* A node that never held a replica can go straight away. */
    assert_int_equal(placement_add_node(&p, 9, "h:9", &e), 0);
    assert_int_equal(placement_remove_node(&p, 9, &e), 0);
    assert_int_equal(p.nnodes, 2);
    assert_valid(&p);
    assert_roundtrip(&p);
    placement_free(&p);
}

static void test_copy_is_deep(void **state)
{
    (void)state;
    struct placement src, dst;
    struct err e;
    make_three(&src);
    src.epoch = 17;
    assert_int_equal(placement_assign(&src, "a", 1, 2, &e), 0);
    assert_int_equal(placement_assign(&src, "b", 1, 3, &e), 0);
    make_three(&dst); /* holds a table: freed first */
    assert_int_equal(placement_assign(&dst, "old", 3, 2, &e), 0);
    assert_int_equal(placement_copy(&dst, &src), 0);
    assert_int_equal(dst.epoch, 17);
    assert_tables_equal(&src, &dst);
    for (size_t i = 0; i < src.nbranches; i++)
        assert_ptr_not_equal(src.branches[i].name, dst.branches[i].name);
    assert_ptr_not_equal(src.branches, dst.branches);

    /* Changing or freeing the source leaves the copy alone. */
    src.branches[0].name[0] = 'X';
    assert_int_equal(placement_move(&src, "b", 1, 1, &e), 0);
    placement_free(&src);
    assert_string_equal(dst.branches[0].name, "a");
    assert_int_equal(placement_branch(&dst, "b", 1)->shard, 3);
    assert_null(placement_branch(&dst, "old", 3));
    assert_valid(&dst);
    /* The copy can still grow. */
    assert_int_equal(placement_assign(&dst, "c", 1, 1, &e), 0);
    assert_valid(&dst);
    /* Copy onto itself is a no-op. */
    assert_int_equal(placement_copy(&dst, &dst), 0);
    assert_int_equal(dst.nbranches, 4);

    /* Out of memory at any step leaves the destination as it was. */
    struct placement other;
    make_three(&other);
    for (long k = 1; k <= 3; k++) {
        sm_fail_after(k);
        assert_int_equal(placement_copy(&other, &dst), STRATA_OUT_OF_MEMORY);
        sm_fail_after(0);
        assert_int_equal(other.nbranches, 1);
        assert_valid(&other);
    }
    /* An empty source copies to an empty table. */
    struct placement empty;
    placement_init(&empty);
    assert_int_equal(placement_copy(&other, &empty), 0);
    assert_true(is_empty(&other));
    placement_free(&other);
    placement_free(&dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_initial_layout_one_three_five_nodes),
        cmocka_unit_test(test_initial_layout_explicit_values),
        cmocka_unit_test(test_initial_ignores_given_state),
        cmocka_unit_test(test_initial_bad_arguments),
        cmocka_unit_test(test_initial_error_leaves_table_unchanged),
        cmocka_unit_test(test_lookups_present_and_absent),
        cmocka_unit_test(test_assign_sorted_and_errors),
        cmocka_unit_test(test_assign_out_of_memory),
        cmocka_unit_test(test_unassign_success_and_errors),
        cmocka_unit_test(test_add_node_success_and_errors),
        cmocka_unit_test(test_drain_node_success_and_errors),
        cmocka_unit_test(test_remove_node_success_and_errors),
        cmocka_unit_test(test_copy_is_deep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
