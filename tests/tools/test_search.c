/* The register search core and pre-check (search.c), against hand-made cases and against
 * a brute-force enumeration of orders on small random histories. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "lincheck.h"

#define INF LIN_T_INF

static const struct lin_limits no_limits = {0};

static struct lin_op R(int64_t call, int64_t ret, uint32_t v)
{
    return (struct lin_op){.call = call, .ret = ret, .kind = LIN_READ, .value = v};
}

static struct lin_op W(int64_t call, int64_t ret, uint32_t v)
{
    return (struct lin_op){.call = call, .ret = ret, .kind = LIN_WRITE, .value = v};
}

static struct lin_op CAS(int64_t call, int64_t ret, uint32_t expect, uint32_t v)
{
    return (struct lin_op){.call = call, .ret = ret, .kind = LIN_CAS, .value = v,
                           .expect = expect};
}

static enum lin_verdict verdict(const struct lin_op *ops, size_t n, uint32_t initial)
{
    struct lin_result res;
    assert_int_equal(lin_check(ops, n, initial, &no_limits, &res), 0);
    enum lin_verdict v = res.verdict;
    lin_result_close(&res);
    return v;
}

static enum lin_flaw flaw(const struct lin_op *ops, size_t n)
{
    struct lin_finding f;
    assert_int_equal(lin_precheck(ops, n, &f), 0);
    return f.flaw;
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void test_lin_check_empty_is_ok(void **state)
{
    (void)state;
    assert_int_equal(verdict(NULL, 0, HIST_NULL), LIN_OK);
}

static void test_lin_check_sequential_ok(void **state)
{
    (void)state;
    struct lin_op ops[] = {R(0, 1, 0), W(2, 3, 1), R(4, 5, 1), CAS(6, 7, 1, 2), R(8, 9, 2)};
    assert_int_equal(verdict(ops, N(ops), HIST_NULL), LIN_OK);
    assert_int_equal(flaw(ops, N(ops)), LIN_FLAW_NONE);
}

static void test_lin_check_concurrent_needs_reorder(void **state)
{
    (void)state;
    /* w1 and w2 overlap; the reads force w2 first, then w1 — not call order. */
    struct lin_op ops[] = {W(0, 100, 1), W(10, 90, 2), R(20, 30, 2), R(40, 50, 1),
                           R(95, 120, 1)};
    assert_int_equal(verdict(ops, N(ops), HIST_NULL), LIN_OK);
    assert_int_equal(flaw(ops, N(ops)), LIN_FLAW_NONE);
}

static void test_lin_check_stale_read_reports_prefix(void **state)
{
    (void)state;
    struct lin_op ops[] = {W(0, 10, 1), W(20, 30, 2), R(40, 50, 1)};
    struct lin_result res;
    assert_int_equal(lin_check(ops, N(ops), HIST_NULL, &no_limits, &res), 0);
    assert_int_equal(res.verdict, LIN_VIOLATION);
    /* w2 cannot follow w1: it would replace 1, which the read still has to return. */
    assert_int_equal(res.prefix_len, 1);
    assert_int_equal(res.prefix[0], 0);
    assert_int_equal(res.stuck, 1);
    assert_int_equal(res.stuck_state, 1);
    assert_int_equal(res.blocked_by, 2);
    lin_result_close(&res);

    struct lin_finding f;
    assert_int_equal(lin_precheck(ops, N(ops), &f), 0);
    assert_int_equal(f.flaw, LIN_FLAW_STALE_READ);
    assert_int_equal(f.op, 2);
    assert_int_equal(f.writer, 0);
    assert_int_equal(f.other, 1);
}

static void test_lin_check_crossed_reads_need_search(void **state)
{
    (void)state;
    /* Each reader alone is fine; together they need both orders of w1, w2. */
    struct lin_op ops[] = {W(0, 1000, 1), W(0, 1000, 2), R(10, 20, 1), R(30, 40, 2),
                           R(10, 20, 2), R(30, 40, 1)};
    assert_int_equal(flaw(ops, N(ops)), LIN_FLAW_NONE);
    assert_int_equal(verdict(ops, N(ops), HIST_NULL), LIN_VIOLATION);
    /* Both readers in the same order: fine. */
    ops[4] = R(10, 20, 1);
    ops[5] = R(30, 40, 2);
    assert_int_equal(verdict(ops, N(ops), HIST_NULL), LIN_OK);
}

static void test_lin_check_unknown_op_may_apply_late(void **state)
{
    (void)state;
    /* w2's outcome is unknown: it took effect after w3, long after its client gave up. */
    struct lin_op ops[] = {W(0, 10, 1), W(20, INF, 2), W(40, 50, 3), R(60, 70, 3),
                           R(80, 90, 2)};
    assert_int_equal(verdict(ops, N(ops), HIST_NULL), LIN_OK);
    assert_int_equal(flaw(ops, N(ops)), LIN_FLAW_NONE);
    /* But not before it was invoked. */
    ops[1].call = 95;
    assert_int_equal(verdict(ops, N(ops), HIST_NULL), LIN_VIOLATION);
    assert_int_equal(flaw(ops, N(ops)), LIN_FLAW_FUTURE_READ);
}

static void test_lin_check_unknown_op_may_never_apply(void **state)
{
    (void)state;
    /* The cas of unknown outcome cannot apply (1 is gone before it is invoked) and must
     * be left out; the write of unknown outcome must be left out too. */
    struct lin_op ops[] = {W(0, 10, 1), W(20, 30, 2), CAS(40, INF, 1, 3), W(45, INF, 4),
                           R(50, 60, 2), R(70, 80, 2)};
    assert_int_equal(verdict(ops, N(ops), HIST_NULL), LIN_OK);
}

static void test_lin_check_cas_semantics(void **state)
{
    (void)state;
    struct lin_op ok[] = {W(0, 10, 1), CAS(20, 30, 1, 2), R(40, 50, 2)};
    assert_int_equal(verdict(ok, N(ok), HIST_NULL), LIN_OK);
    struct lin_op from_null[] = {CAS(0, 10, HIST_NULL, 1), R(20, 30, 1)};
    assert_int_equal(verdict(from_null, N(from_null), HIST_NULL), LIN_OK);
    struct lin_op wrong[] = {W(0, 10, 1), W(20, 30, 2), CAS(40, 50, 1, 3)};
    assert_int_equal(verdict(wrong, N(wrong), HIST_NULL), LIN_VIOLATION);
    assert_int_equal(flaw(wrong, N(wrong)), LIN_FLAW_STALE_READ);
    struct lin_op twice[] = {W(0, 10, 1), CAS(20, 30, 1, 2), CAS(20, 30, 1, 3)};
    assert_int_equal(verdict(twice, N(twice), HIST_NULL), LIN_VIOLATION);
    assert_int_equal(flaw(twice, N(twice)), LIN_FLAW_CAS_TWICE);
}

static void test_lin_check_equal_times_are_concurrent(void **state)
{
    (void)state;
    /* The read is invoked at the very t the write completes: either order is allowed. */
    struct lin_op ops[] = {W(0, 10, 1), R(10, 20, HIST_NULL)};
    assert_int_equal(verdict(ops, N(ops), HIST_NULL), LIN_OK);
    assert_int_equal(flaw(ops, N(ops)), LIN_FLAW_NONE);
    ops[1].call = 11;
    assert_int_equal(verdict(ops, N(ops), HIST_NULL), LIN_VIOLATION);
    assert_int_equal(flaw(ops, N(ops)), LIN_FLAW_STALE_NULL);
}

static void test_lin_check_havoc_sets_unknown_value(void **state)
{
    (void)state;
    struct lin_op havoc = {.call = 0, .ret = 10, .kind = LIN_HAVOC};
    struct lin_op ok[] = {havoc, R(20, 30, 7), R(40, 50, 7), W(60, 70, 1), R(80, 90, 1)};
    assert_int_equal(verdict(ok, N(ok), HIST_NULL), LIN_OK);
    assert_int_equal(flaw(ok, N(ok)), LIN_FLAW_NONE); /* pre-check does not apply */
    struct lin_op bad[] = {havoc, R(20, 30, 7), R(40, 50, 8)};
    assert_int_equal(verdict(bad, N(bad), HIST_NULL), LIN_VIOLATION);
    /* An unknown initial value: any first read is fine, then it is fixed. */
    struct lin_op any[] = {R(0, 1, 5), R(2, 3, 5)};
    assert_int_equal(verdict(any, N(any), LIN_ANY), LIN_OK);
    any[1].value = 6;
    assert_int_equal(verdict(any, N(any), LIN_ANY), LIN_VIOLATION);
}

/* After a fork (havoc) the value is unknown and may come back, so nothing can be pruned:
 * `writers` concurrent writes, two readers seeing two values in opposite orders and one
 * late read of each other value. (Linearizable: the fork may have left the first value.)
 * The search must walk the writes' orders. */
static size_t wide(struct lin_op *ops, int writers)
{
    size_t n = 0;
    ops[n++] = (struct lin_op){.call = 0, .ret = 1, .kind = LIN_HAVOC};
    for (int w = 0; w < writers; w++)
        ops[n++] = W(10 + w, 100000, (uint32_t)(1 + w));
    ops[n++] = R(100, 200, 1);
    ops[n++] = R(300, 400, 2);
    ops[n++] = R(100, 200, 2);
    ops[n++] = R(300, 400, 1);
    for (int w = 2; w < writers; w++)
        ops[n++] = R(500, 600, (uint32_t)(1 + w));
    return n;
}

static void test_lin_check_cache_bounds_search(void **state)
{
    (void)state;
    struct lin_op ops[64];
    size_t n = wide(ops, 10);
    struct lin_result res;
    assert_int_equal(lin_check(ops, n, LIN_ANY, &no_limits, &res), 0);
    assert_int_equal(res.verdict, LIN_OK);
    /* Configurations are (subset of writes, reads done, value): far fewer than the 10!
     * orders of the writes a search without the cache would walk. */
    assert_true(res.states > 1000);
    assert_true(res.states < (1u << 10) * 11 * 16);
    lin_result_close(&res);
}

static void test_lin_check_forced_ops_keep_search_small(void **state)
{
    (void)state;
    /* 20 concurrent writes nobody reads, 40 concurrent reads of the one value that is
     * read: unread values are all one state and reads never branch. */
    struct lin_op ops[80];
    size_t n = 0;
    for (uint32_t w = 0; w < 20; w++)
        ops[n++] = W(0, 1000, 100 + w);
    ops[n++] = W(0, 1000, 1);
    for (int r = 0; r < 40; r++)
        ops[n++] = R(500, 2000, 1);
    ops[n++] = R(3000, 3001, 1);
    struct lin_result res;
    assert_int_equal(lin_check(ops, n, HIST_NULL, &no_limits, &res), 0);
    assert_int_equal(res.verdict, LIN_OK);
    assert_true(res.states < 200);
    lin_result_close(&res);
    /* Reads of 1 invoked after every write completed, then a read of 100: 1 was last. */
    for (size_t i = 21; i < 61; i++)
        ops[i] = R(1500, 2000, 1);
    ops[n - 1] = R(3000, 3001, 100);
    assert_int_equal(lin_check(ops, n, HIST_NULL, &no_limits, &res), 0);
    assert_int_equal(res.verdict, LIN_VIOLATION);
    assert_true(res.states < 200);
    lin_result_close(&res);
}

static void test_lin_check_limits_give_unknown(void **state)
{
    (void)state;
    struct lin_op ops[64];
    size_t n = wide(ops, 16);
    struct lin_result res;
    struct lin_limits lim = {.max_states = 1000};
    assert_int_equal(lin_check(ops, n, LIN_ANY, &lim, &res), 0);
    assert_int_equal(res.verdict, LIN_UNKNOWN);
    assert_string_equal(res.unknown_why, "state limit exceeded");
    assert_null(res.prefix);

    lim = (struct lin_limits){.max_bytes = 64 * 1024};
    assert_int_equal(lin_check(ops, n, LIN_ANY, &lim, &res), 0);
    assert_int_equal(res.verdict, LIN_UNKNOWN);
    assert_string_equal(res.unknown_why, "memory limit exceeded");

    lim = (struct lin_limits){.deadline_ns = 1}; /* long past */
    assert_int_equal(lin_check(ops, n, LIN_ANY, &lim, &res), 0);
    assert_int_equal(res.verdict, LIN_UNKNOWN);
    assert_string_equal(res.unknown_why, "time budget exceeded");
}

static void test_lin_check_out_of_memory(void **state)
{
    (void)state;
    struct lin_op ops[] = {W(0, 10, 1), R(20, 30, 1)};
    struct lin_result res;
    for (long k = 1; k < 12; k++) {
        sm_fail_after(k);
        int rc = lin_check(ops, N(ops), HIST_NULL, &no_limits, &res);
        sm_fail_after(0);
        if (rc == 0) {
            assert_int_equal(res.verdict, LIN_OK);
        } else {
            assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
            assert_null(res.prefix);
        }
    }
}

static void test_lin_precheck_flaws(void **state)
{
    (void)state;
    struct lin_op dup[] = {W(0, 10, 1), W(20, 30, 1)};
    assert_int_equal(flaw(dup, N(dup)), LIN_FLAW_DUP_VALUE);
    struct lin_op never[] = {W(0, 10, 1), R(20, 30, 9)};
    assert_int_equal(flaw(never, N(never)), LIN_FLAW_NEVER_WRITTEN);
    struct lin_op future[] = {R(0, 10, 1), W(20, 30, 1)};
    assert_int_equal(flaw(future, N(future)), LIN_FLAW_FUTURE_READ);
    /* Evidence of overwrite can be a read of another value, not only a write. */
    struct lin_op by_read[] = {W(0, 10, 1), W(0, 1000, 2), R(20, 30, 2), R(40, 50, 1)};
    assert_int_equal(flaw(by_read, N(by_read)), LIN_FLAW_STALE_READ);
    assert_int_equal(verdict(by_read, N(by_read), HIST_NULL), LIN_VIOLATION);
    /* An unknown-outcome write proves nothing: it may not have happened. */
    struct lin_op info[] = {W(0, 10, 1), W(20, INF, 2), R(40, 50, 1)};
    assert_int_equal(flaw(info, N(info)), LIN_FLAW_NONE);
    assert_int_equal(verdict(info, N(info), HIST_NULL), LIN_OK);
    /* A null read after a read of a value. */
    struct lin_op null_after[] = {W(0, 1000, 1), R(10, 20, 1), R(30, 40, HIST_NULL)};
    assert_int_equal(flaw(null_after, N(null_after)), LIN_FLAW_STALE_NULL);
}

/* ---- Brute force on small random histories ------------------------------------------ */

static bool brute_rec(const struct lin_op *ops, size_t n, bool *placed, size_t left,
                      uint32_t st)
{
    if (left == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        if (placed[i])
            continue;
        /* i may go next only if no unplaced op completed before i was invoked. */
        bool ok = true;
        for (size_t j = 0; j < n && ok; j++)
            ok = placed[j] || j == i || ops[j].ret >= ops[i].call;
        if (!ok)
            continue;
        uint32_t next = ops[i].value;
        bool legal = false;
        switch (ops[i].kind) {
        case LIN_READ:
            legal = st == LIN_ANY || st == ops[i].value;
            break;
        case LIN_WRITE:
            legal = true;
            break;
        case LIN_CAS:
            legal = st == LIN_ANY || st == ops[i].expect;
            break;
        case LIN_HAVOC:
            legal = true;
            next = LIN_ANY;
            break;
        }
        if (!legal)
            continue;
        placed[i] = true;
        bool found = brute_rec(ops, n, placed, left - 1, next);
        placed[i] = false;
        if (found)
            return true;
    }
    return false;
}

/* Linearizable iff for some subset of the unknown-outcome ops, all the rest order. */
static bool brute(const struct lin_op *ops, size_t n, uint32_t initial)
{
    size_t n_opt = 0;
    for (size_t i = 0; i < n; i++)
        n_opt += ops[i].ret == INF;
    for (unsigned mask = 0; mask < (1u << n_opt); mask++) {
        struct lin_op sub[16];
        bool placed[16] = {0};
        size_t m = 0;
        for (size_t i = 0, k = 0; i < n; i++) {
            if (ops[i].ret == INF && !(mask & (1u << k++)))
                continue;
            sub[m++] = ops[i];
        }
        if (brute_rec(sub, m, placed, m, initial))
            return true;
    }
    return false;
}

static void test_lin_check_matches_brute_force(void **state)
{
    (void)state;
    unsigned short rng[3] = {1, 2, 3};
    int seen[3] = {0}, with_havoc = 0;
    for (int round = 0; round < 6000; round++) {
        struct lin_op ops[7];
        size_t n = 2 + (size_t)(nrand48(rng) % 6);
        uint32_t next_value = 1;
        /* Mostly the real registers (null start, unique values); some with a fork. */
        bool havoc = nrand48(rng) % 4 == 0;
        uint32_t initial = havoc && nrand48(rng) % 2 ? LIN_ANY : HIST_NULL;
        for (size_t i = 0; i < n; i++) {
            int64_t call = nrand48(rng) % 20, len = nrand48(rng) % 8;
            int64_t ret = nrand48(rng) % 6 == 0 ? INF : call + len;
            long k = nrand48(rng) % 10;
            uint32_t any = (uint32_t)(nrand48(rng) % 4); /* 0 = null */
            if (havoc && k == 9)
                ops[i] = (struct lin_op){.call = call, .ret = ret, .kind = LIN_HAVOC};
            else if (k < 4)
                ops[i] = R(call, ret, any);
            else if (k < 8)
                ops[i] = W(call, ret, next_value++);
            else
                ops[i] = CAS(call, ret, any, next_value++);
        }
        bool expect = brute(ops, n, initial);
        struct lin_result res;
        assert_int_equal(lin_check(ops, n, initial, &no_limits, &res), 0);
        if ((res.verdict == LIN_OK) != expect) {
            for (size_t i = 0; i < n; i++)
                print_message("op %zu kind %d [%lld, %lld] value %u expect %u\n", i,
                              ops[i].kind, (long long)ops[i].call, (long long)ops[i].ret,
                              ops[i].value, ops[i].expect);
            fail_msg("round %d: initial %u: search says %d, brute force %d", round, initial,
                     res.verdict, expect);
        }
        lin_result_close(&res);
        if (havoc) {
            with_havoc++;
            continue;
        }
        /* The pre-check is sound: whatever it flags really is not linearizable. */
        struct lin_finding f;
        assert_int_equal(lin_precheck(ops, n, &f), 0);
        if (f.flaw != LIN_FLAW_NONE)
            assert_false(expect);
        seen[expect ? 0 : f.flaw != LIN_FLAW_NONE ? 1 : 2]++;
    }
    /* The random cases cover all three outcomes, and forks. */
    assert_true(seen[0] > 100 && seen[1] > 100 && seen[2] > 100 && with_havoc > 1000);
}

/* ---- Whole histories: parsing, the reductions in checks.c and the search ------------- */

/* Random one-key histories of three clients with ok, fail and info outcomes and maybe a
 * final read, written as JSON Lines, checked by lincheck's checks and by brute force over
 * the raw semantics (ok: happened in its interval; info: maybe, any time after invoke;
 * fail: never; final: after everything). */
static void test_check_history_matches_brute_force(void **state)
{
    (void)state;
    unsigned short rng[3] = {7, 8, 9};
    int verdicts[2] = {0};
    for (int round = 0; round < 3000; round++) {
        struct lin_op raw[16];
        size_t n = 0;
        uint32_t next_value = 1;
        char *text = NULL;
        size_t text_len = 0;
        FILE *mem = open_memstream(&text, &text_len);
        assert_non_null(mem);
        for (int proc = 0; proc < 3; proc++) {
            int64_t t = nrand48(rng) % 5;
            int ops = 1 + (int)(nrand48(rng) % 3);
            for (int k = 0; k < ops; k++) {
                long f = nrand48(rng) % 10, outcome = nrand48(rng) % 10;
                int64_t call = t, ret = call + nrand48(rng) % 6;
                t = ret + nrand48(rng) % 4;
                const char *fname = f < 4 ? "read" : f < 8 ? "write" : "cas";
                const char *type = outcome < 6 ? "ok" : outcome < 8 ? "fail" : "info";
                uint32_t value = f < 4 ? (uint32_t)(nrand48(rng) % 4) : next_value++;
                uint32_t expect = (uint32_t)(nrand48(rng) % 4);
                json_t *inv = json_pack("{s:I,s:i,s:s,s:s,s:s,s:s}", "t", (json_int_t)call,
                                        "proc", proc, "type", "invoke", "f", fname, "branch",
                                        "b", "key", "k");
                json_t *done = json_pack("{s:I,s:i,s:s,s:s,s:s,s:s}", "t", (json_int_t)ret,
                                         "proc", proc, "type", type, "f", fname, "branch", "b",
                                         "key", "k");
                if (f >= 4)
                    json_object_set_new(inv, "value", json_integer(value));
                if (f >= 8)
                    json_object_set_new(inv, "expect",
                                        expect ? json_integer(expect) : json_null());
                if (f < 4 && outcome < 6)
                    json_object_set_new(done, "value",
                                        value ? json_integer(value) : json_null());
                assert_int_equal(json_dumpf(inv, mem, JSON_COMPACT), 0);
                fputc('\n', mem);
                assert_int_equal(json_dumpf(done, mem, JSON_COMPACT), 0);
                fputc('\n', mem);
                json_decref(inv);
                json_decref(done);
                if (outcome >= 6 && outcome < 8)
                    continue; /* failed: did not happen */
                if (outcome >= 8 && f < 4)
                    continue; /* a read of unknown outcome tells nothing */
                raw[n] = f < 4 ? R(call, ret, value)
                         : f < 8 ? W(call, ret, value)
                                 : CAS(call, ret, expect, value);
                if (outcome >= 8)
                    raw[n].ret = INF;
                n++;
            }
        }
        if (nrand48(rng) % 2) {
            uint32_t v = (uint32_t)(nrand48(rng) % 4);
            json_t *fin = json_pack("{s:s,s:s,s:s,s:o}", "type", "final", "branch", "b", "key",
                                    "k", "value", v ? json_integer(v) : json_null());
            assert_int_equal(json_dumpf(fin, mem, JSON_COMPACT), 0);
            fputc('\n', mem);
            json_decref(fin);
            raw[n++] = R(1000, 1001, v);
        }
        assert_int_equal(fclose(mem), 0);

        FILE *in = fmemopen(text, text_len, "r");
        assert_non_null(in);
        struct hist h;
        struct err e;
        assert_int_equal(hist_load(&h, in, "random", &e), 0);
        fclose(in);
        FILE *out = fopen("/dev/null", "w");
        assert_non_null(out);
        struct check_limits lim = {0};
        struct check_summary sum;
        assert_int_equal(check_history(&h, &lim, out, &sum), 0);
        fclose(out);
        hist_close(&h);
        bool expect = brute(raw, n, HIST_NULL);
        if ((sum.violations == 0) != expect || sum.unknown != 0)
            fail_msg("round %d: lincheck found %zu violation(s), brute force says %s:\n%s",
                     round, sum.violations, expect ? "linearizable" : "not", text);
        verdicts[expect]++;
        free(text);
    }
    assert_true(verdicts[0] > 300 && verdicts[1] > 300);
}

/* Running out of memory anywhere in loading or checking is reported, never a crash or a
 * leak (the sanitizer build checks the leaks). */
static void test_check_history_out_of_memory(void **state)
{
    (void)state;
    static const char text[] =
        "{\"t\":1,\"proc\":1,\"type\":\"invoke\",\"f\":\"write\",\"branch\":\"m\","
        "\"key\":\"x\",\"value\":1}\n"
        "{\"t\":5,\"proc\":1,\"type\":\"ok\",\"f\":\"write\",\"branch\":\"m\",\"key\":\"x\","
        "\"version\":1}\n"
        "{\"t\":2,\"proc\":2,\"type\":\"invoke\",\"f\":\"cas\",\"branch\":\"m\","
        "\"key\":\"x\",\"expect\":1,\"value\":2}\n"
        "{\"t\":9,\"proc\":2,\"type\":\"info\",\"f\":\"cas\",\"branch\":\"m\",\"key\":\"x\","
        "\"error\":\"TIMEOUT\"}\n"
        "{\"t\":3,\"proc\":3,\"type\":\"invoke\",\"f\":\"append\",\"branch\":\"m\","
        "\"key\":\"ev\"}\n"
        "{\"t\":4,\"proc\":3,\"type\":\"ok\",\"f\":\"append\",\"branch\":\"m\",\"key\":\"ev\","
        "\"seq\":1,\"version\":2}\n"
        "{\"t\":6,\"proc\":3,\"type\":\"invoke\",\"f\":\"fork\",\"branch\":\"f\","
        "\"key\":\"m\"}\n"
        "{\"t\":7,\"proc\":3,\"type\":\"ok\",\"f\":\"fork\",\"branch\":\"f\",\"key\":\"m\"}\n"
        "{\"t\":8,\"proc\":3,\"type\":\"invoke\",\"f\":\"read\",\"branch\":\"f\","
        "\"key\":\"x\"}\n"
        "{\"t\":9,\"proc\":3,\"type\":\"ok\",\"f\":\"read\",\"branch\":\"f\",\"key\":\"x\","
        "\"value\":1}\n"
        "{\"type\":\"final\",\"branch\":\"m\",\"key\":\"x\",\"value\":2}\n"
        "{\"type\":\"final\",\"f\":\"len\",\"branch\":\"m\",\"key\":\"ev\",\"value\":1}\n";
    bool finished = false;
    for (long k = 1; k < 5000 && !finished; k++) {
        FILE *in = fmemopen((void *)text, sizeof text - 1, "r");
        FILE *out = fopen("/dev/null", "w");
        assert_non_null(in);
        assert_non_null(out);
        struct hist h;
        struct err e;
        struct check_summary sum;
        struct check_limits lim = {0};
        sm_fail_after(k);
        int rc = hist_load(&h, in, "oom", &e);
        if (rc == 0) {
            rc = check_history(&h, &lim, out, &sum);
            hist_close(&h);
        }
        /* Still armed means the whole run allocated fewer than k times. */
        void *probe = rc == 0 ? sm_malloc(1) : NULL;
        finished = probe != NULL;
        sm_free(probe);
        sm_fail_after(0);
        if (rc == 0) {
            assert_int_equal(sum.violations, 0);
            assert_int_equal(sum.registers, 2);
        } else {
            assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
        }
        fclose(in);
        fclose(out);
    }
    assert_true(finished);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lin_check_empty_is_ok),
        cmocka_unit_test(test_lin_check_sequential_ok),
        cmocka_unit_test(test_lin_check_concurrent_needs_reorder),
        cmocka_unit_test(test_lin_check_stale_read_reports_prefix),
        cmocka_unit_test(test_lin_check_crossed_reads_need_search),
        cmocka_unit_test(test_lin_check_unknown_op_may_apply_late),
        cmocka_unit_test(test_lin_check_unknown_op_may_never_apply),
        cmocka_unit_test(test_lin_check_cas_semantics),
        cmocka_unit_test(test_lin_check_equal_times_are_concurrent),
        cmocka_unit_test(test_lin_check_havoc_sets_unknown_value),
        cmocka_unit_test(test_lin_check_cache_bounds_search),
        cmocka_unit_test(test_lin_check_forced_ops_keep_search_small),
        cmocka_unit_test(test_lin_check_limits_give_unknown),
        cmocka_unit_test(test_lin_check_out_of_memory),
        cmocka_unit_test(test_lin_precheck_flaws),
        cmocka_unit_test(test_lin_check_matches_brute_force),
        cmocka_unit_test(test_check_history_matches_brute_force),
        cmocka_unit_test(test_check_history_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
