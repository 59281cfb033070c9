/* Automatic branch moves with real processes (docs/sharding.md "Rebalancing"): 3 nodes,
 * 3 shards. 24 standalone branches with data spread over the shards, a fork family on
 * one shard; most standalone branches of another shard are deleted while 2 writers write
 * to the others. The rebalancer must even the branch counts out (to within the planner's
 * threshold) in bounded time by moving standalone branches only: every acknowledged
 * write and every preloaded key reads back from the branch's new shard, the old shard no
 * longer has a moved branch, the fork family stays where it was, and the moves are in
 * `cluster.moves` and the meta leader's log. `auto_move_off`: with
 * --auto-move-branches off the same skew stays; a bad flag value is refused. */
#include "balance.h"
#include "harness.h"
#include "tests.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NSTANDALONE 24
#define NKEEP_LIGHT 2 /* standalone branches left on the light shard */
#define PRELOAD 40
#define WRITERS 2
#define MAX_OPS 400000
#define EVEN_WITHIN_MS 45000

static const char *const family[] = {"fam-root", "fam-a", "fam-b", "fam-a1"};
#define NFAMILY 4

/* ---- The table ------------------------------------------------------------------------- */

struct table {
    size_t n;
    char names[64][32];
    uint32_t shard[64];
    size_t counts[4]; /* by shard id 1..3 */
};

static int read_table(struct strata *db, struct table *t)
{
    memset(t, 0, sizeof *t);
    struct buf res;
    buf_init(&res);
    int rc = h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.placement\",\"fresh\":true}");
    struct h_obj x;
    if (rc == 0 && h_obj_parse(&x, &res) == 0) {
        const msgpack_object *tb = h_map_get(x.o, "table");
        const msgpack_object *b = tb ? h_map_get(tb, "branches") : NULL;
        for (uint32_t k = 0; b && b->type == MSGPACK_OBJECT_ARRAY && k < b->via.array.size &&
                             t->n < 64;
             k++) {
            const msgpack_object *e = b->via.array.ptr[k].via.array.ptr;
            uint32_t s = (uint32_t)e[1].via.u64;
            snprintf(t->names[t->n], sizeof t->names[t->n], "%.*s", (int)e[0].via.str.size,
                     e[0].via.str.ptr);
            t->shard[t->n++] = s;
            if (s >= 1 && s <= 3)
                t->counts[s]++;
        }
        h_obj_free(&x);
    } else {
        rc = rc ? rc : -1;
    }
    buf_close(&res);
    return rc;
}

static uint32_t shard_of(const struct table *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->names[i], name) == 0)
            return t->shard[i];
    return 0;
}

static size_t table_spread(const struct table *t, size_t *total)
{
    size_t lo = t->counts[1], hi = t->counts[1];
    *total = 0;
    for (int s = 1; s <= 3; s++) {
        lo = t->counts[s] < lo ? t->counts[s] : lo;
        hi = t->counts[s] > hi ? t->counts[s] : hi;
        *total += t->counts[s];
    }
    return hi - lo;
}

/* cluster.moves: in-flight count, and the finished moves (branch, to, outcome). */
struct moves {
    size_t in_flight, nrecent;
    char branch[16][32];
    uint32_t to[16];
    char outcome[16][16];
};

static int read_moves(struct strata *db, struct moves *m)
{
    memset(m, 0, sizeof *m);
    struct buf res;
    buf_init(&res);
    int rc = h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.moves\"}");
    struct h_obj x;
    if (rc == 0 && h_obj_parse(&x, &res) == 0) {
        const msgpack_object *f = h_map_get(x.o, "moves"), *r = h_map_get(x.o, "recent");
        m->in_flight = f && f->type == MSGPACK_OBJECT_ARRAY ? f->via.array.size : 0;
        for (uint32_t i = 0; r && r->type == MSGPACK_OBJECT_ARRAY && i < r->via.array.size &&
                             m->nrecent < 16;
             i++) {
            const msgpack_object *e = &r->via.array.ptr[i];
            h_map_str(e, "branch", m->branch[m->nrecent], sizeof m->branch[0]);
            h_map_str(e, "outcome", m->outcome[m->nrecent], sizeof m->outcome[0]);
            m->to[m->nrecent++] = (uint32_t)h_map_u64(e, "to");
        }
        h_obj_free(&x);
    } else {
        rc = rc ? rc : -1;
    }
    buf_close(&res);
    return rc;
}

static int pack_w(void *d, const char *p, size_t n)
{
    return buf_append(d, p, n) ? -1 : 0;
}

/* What a shard's move.status says about a branch. */
struct bstatus {
    bool exists, has_parent;
    uint64_t forks;
    char parent[32];
};

/* A shard's move.status of `branch` (cluster.move_exec, the driver's own way in). */
static int shard_branch_status(struct strata *db, uint32_t gid, const char *branch,
                               struct bstatus *st)
{
    memset(st, 0, sizeof *st);
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &cmd, pack_w);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "op", 2);
    msgpack_pack_str_with_body(&pk, "move.status", 11);
    msgpack_pack_str_with_body(&pk, "name", 4);
    msgpack_pack_str_with_body(&pk, branch, strlen(branch));
    char b64[512];
    EVP_EncodeBlock((unsigned char *)b64, cmd.data, (int)cmd.len);
    struct err e;
    err_clear(&e);
    int rc = h_exec(db, 0, &res, &e,
                    "{\"op\":\"cluster.move_exec\",\"group\":%u,\"cmd\":{\"$bytes\":\"%s\"}}", gid,
                    b64);
    struct h_obj x;
    if (rc == 0 && h_obj_parse(&x, &res) == 0) {
        /* x points into res: everything is read before res goes. */
        const msgpack_object *ex = h_map_get(x.o, "exists"), *p = h_map_get(x.o, "parent");
        st->exists = ex && ex->type == MSGPACK_OBJECT_BOOLEAN && ex->via.boolean;
        st->forks = h_map_u64(x.o, "forks");
        st->has_parent = p == NULL || p->type != MSGPACK_OBJECT_NIL;
        h_map_str(x.o, "parent", st->parent, sizeof st->parent);
        h_obj_free(&x);
    } else if (rc == 0) {
        rc = -1;
    }
    if (rc)
        h_note("move.status of %s on shard %u: %s %s", branch, gid, err_name(rc), e.msg);
    buf_close(&cmd);
    buf_close(&res);
    return rc;
}

/* ---- Writers ------------------------------------------------------------------------------ */

struct writer {
    const struct h_cluster *c;
    int idx;
    atomic_bool *stop;
    const char (*branches)[32];
    size_t nbranches;
    int n;                /* operations issued */
    unsigned char *acked; /* per op: 1 ok, 2 unknown outcome, 3 other failure */
    int other_code;
    char other_msg[ERR_MSG_MAX];
    pthread_t th;
};

static void *write_loop(void *arg)
{
    struct writer *w = arg;
    struct strata *db = h_open_cluster(w->c, NULL);
    if (db == NULL)
        return NULL;
    strata_set_timeouts(db, 20000, 2000);
    while (!atomic_load(w->stop) && w->n < MAX_OPS) {
        int i = w->n;
        struct err e;
        err_clear(&e);
        int rc = h_exec(db, 0, NULL, &e,
                        "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"w%d-%d\",\"value\":\"v%d-%d\"}",
                        w->branches[(size_t)i % w->nbranches], w->idx, i, w->idx, i);
        w->acked[i] = rc == 0 ? 1 : rc == STRATA_UNKNOWN_OUTCOME ? 2 : 3;
        if (rc && rc != STRATA_UNKNOWN_OUTCOME && w->other_code == 0) {
            w->other_code = rc;
            snprintf(w->other_msg, sizeof w->other_msg, "%s", e.msg);
        }
        w->n++;
    }
    strata_close(db);
    return NULL;
}

/* Every acknowledged write of every writer, read back branch by branch. */
static void check_writes(struct strata *db, struct writer *w, const char (*branches)[32],
                         size_t nb)
{
    size_t acked = 0, unknown = 0, failed = 0, absent_all = 0, wrong_all = 0;
    int read_rc = 0;
    for (int k = 0; k < WRITERS; k++)
        for (int i = 0; i < w[k].n; i++) {
            acked += w[k].acked[i] == 1;
            unknown += w[k].acked[i] == 2;
            failed += w[k].acked[i] == 3;
        }
    struct h_kv *kv = calloc(acked ? acked : 1, sizeof *kv);
    for (size_t b = 0; b < nb && kv; b++) {
        size_t n = 0;
        for (int k = 0; k < WRITERS; k++)
            for (int i = (int)b; i < w[k].n; i += (int)nb)
                if (w[k].acked[i] == 1) {
                    snprintf(kv[n].key, sizeof kv[n].key, "w%d-%d", k, i);
                    snprintf(kv[n].value, sizeof kv[n].value, "v%d-%d", k, i);
                    n++;
                }
        size_t absent = 0, wrong = 0;
        int rc = n ? h_batch_check(db, 0, branches[b], kv, n, &absent, &wrong) : 0;
        read_rc = read_rc ? read_rc : rc;
        absent_all += absent;
        wrong_all += wrong;
    }
    free(kv);
    CHECK(failed == 0, "%zu writes acknowledged, %zu unknown outcome, %zu failed otherwise (%s %s)",
          acked, unknown, failed, err_name(w[0].other_code ? w[0].other_code : w[1].other_code),
          w[0].other_code ? w[0].other_msg : w[1].other_msg);
    CHECK(acked > 0 && read_rc == 0 && absent_all == 0 && wrong_all == 0,
          "every one of %zu acknowledged writes reads back from its branch's shard (absent %zu, "
          "wrong %zu, read error %s)",
          acked, absent_all, wrong_all, err_name(read_rc));
}

/* ---- Setup ------------------------------------------------------------------------------- */

static bool groups_led(struct h_cluster *c)
{
    bool ok = true;
    for (uint32_t g = 0; g <= 3 && ok; g++) {
        h_status_group = g;
        ok = h_wait_leader(c, 20000, -1) >= 0;
    }
    h_status_group = 1;
    return ok;
}

static int make_branch(struct strata *db, const char *name, const char *source)
{
    struct err e;
    err_clear(&e);
    int rc = source ? h_exec(db, 0, NULL, &e,
                             "{\"op\":\"branch.fork\",\"source\":\"%s\",\"name\":\"%s\"}", source,
                             name)
                    : h_exec(db, 0, NULL, &e, "{\"op\":\"branch.create\",\"name\":\"%s\"}", name);
    if (rc)
        h_note("creating %s: %s %s", name, err_name(rc), e.msg);
    return rc;
}

/* 24 standalone branches sa-NN with PRELOAD keys each, then the fork family. */
static bool populate(struct strata *db)
{
    struct h_kv *kv = calloc(PRELOAD, sizeof *kv);
    size_t loaded = 0;
    bool ok = kv != NULL;
    for (int i = 0; ok && i < NSTANDALONE; i++) {
        char name[32], prefix[32];
        snprintf(name, sizeof name, "sa-%02d", i);
        snprintf(prefix, sizeof prefix, "pre-%02d", i);
        ok = make_branch(db, name, NULL) == 0;
        h_kv_fill(kv, PRELOAD, prefix);
        loaded += ok ? h_put_all(db, name, kv, PRELOAD, 40) : 0;
    }
    free(kv);
    CHECK(ok && loaded == (size_t)NSTANDALONE * PRELOAD,
          "%d standalone branches created, %zu of %d keys preloaded", NSTANDALONE, loaded,
          NSTANDALONE * PRELOAD);
    /* The family: a root, two forks of it and a fork of a fork (all on the root's shard). */
    bool fam = make_branch(db, family[0], NULL) == 0 && make_branch(db, family[1], family[0]) == 0 &&
               make_branch(db, family[2], family[0]) == 0 &&
               make_branch(db, family[3], family[1]) == 0;
    for (int i = 0; fam && i < NFAMILY; i++)
        fam = h_exec(db, 0, NULL, NULL,
                     "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"own-%d\",\"value\":\"x\"}",
                     family[i], i) == 0;
    CHECK(fam, "fork family created (%s, its forks %s and %s, %s forked from %s)", family[0],
          family[1], family[2], family[3], family[1]);
    return ok && fam;
}

static void start_cluster(struct h_cluster *c, const char *name, bool on)
{
    static const char *const on_flags[] = {"--shards", "3", "--replication-factor", "3", NULL};
    static const char *const off_flags[] = {"--shards", "3", "--replication-factor", "3",
                                            "--auto-move-branches", "off", NULL};
    h_cluster_init(c, name, 3, on ? on_flags : off_flags);
}

static int log_total(const struct h_cluster *c, const char *needle)
{
    int n = 0;
    for (int i = 0; i < c->n; i++)
        n += h_log_count(c, i, needle);
    return n;
}

/* Poll (bounded) until no move is in flight and the counts are even; the last table and
 * how long it took go out. */
static bool wait_even(struct strata *db, unsigned ms, struct table *t, uint64_t *took)
{
    uint64_t t0 = h_now_ms();
    struct moves mv;
    size_t total;
    for (;;) {
        if (read_table(db, t) == 0 && read_moves(db, &mv) == 0 && mv.in_flight == 0) {
            size_t spread = table_spread(t, &total);
            if (!placement_branches_uneven(spread, total, 3))
                break;
        }
        if (h_now_ms() - t0 >= ms) {
            *took = h_now_ms() - t0;
            return false;
        }
        h_sleep_ms(250);
    }
    *took = h_now_ms() - t0;
    return true;
}

/* An operator moves a standalone branch from the lightest to the heaviest shard: the
 * skew is evened out again, but with another branch — the operator's stays put. */
static void operator_move_stays(struct strata *db, char (*keep)[32], size_t nkeep)
{
    struct table t;
    REQUIRE(read_table(db, &t) == 0, "table read");
    uint32_t lo = 1, hi = 1;
    for (uint32_t s = 2; s <= 3; s++) {
        lo = t.counts[s] < t.counts[lo] ? s : lo;
        hi = t.counts[s] >= t.counts[hi] ? s : hi;
    }
    const char *x = NULL;
    for (size_t i = 0; i < nkeep && x == NULL; i++)
        x = shard_of(&t, keep[i]) == lo ? keep[i] : NULL;
    REQUIRE(x != NULL && hi != lo, "a standalone branch on the lightest shard %u", lo);
    struct err e;
    err_clear(&e);
    int rc = h_exec(db, 0, NULL, &e,
                    "{\"op\":\"cluster.move_branch\",\"branch\":\"%s\",\"to_shard\":%u}", x, hi);
    REQUIRE(rc == 0, "operator moves %s: shard %u -> %u (%s %s)", x, lo, hi, err_name(rc), e.msg);
    struct moves mv;
    bool landed = false;
    for (uint64_t until = h_now_ms() + 20000; !landed && h_now_ms() < until; h_sleep_ms(100))
        landed = read_table(db, &t) == 0 && shard_of(&t, x) == hi && read_moves(db, &mv) == 0 &&
                 mv.in_flight == 0;
    REQUIRE(landed, "the operator's move of %s finished", x);
    size_t total, spread = table_spread(&t, &total);
    CHECK(placement_branches_uneven(spread, total, 3),
          "uneven after it: %zu %zu %zu", t.counts[1], t.counts[2], t.counts[3]);
    uint64_t took;
    bool even = wait_even(db, 30000, &t, &took);
    CHECK(even && shard_of(&t, x) == hi,
          "even again (%zu %zu %zu) in %.1f s, and %s is still on shard %u where the operator "
          "put it (on %u)",
          t.counts[1], t.counts[2], t.counts[3], (double)took / 1000.0, x, hi, shard_of(&t, x));
}

/* ---- The tests -------------------------------------------------------------------------- */

void test_auto_move(void)
{
    static struct h_cluster c;
    start_cluster(&c, "automove", true);
    REQUIRE(h_cluster_start(&c) == 0, "3 nodes started");
    REQUIRE(groups_led(&c), "the meta group and the 3 shards have leaders");
    struct strata *db = h_open_cluster(&c, NULL);
    REQUIRE(db != NULL, "client connected");
    if (!populate(db)) {
        strata_close(db);
        return;
    }
    struct table t0;
    REQUIRE(read_table(db, &t0) == 0, "placement read");
    uint32_t fam_shard = shard_of(&t0, family[0]);
    bool together = fam_shard != 0;
    for (int i = 1; i < NFAMILY; i++)
        together = together && shard_of(&t0, family[i]) == fam_shard;
    REQUIRE(together, "the fork family is on one shard (%u)", fam_shard);
    /* The rebalancer's kind of move (standalone) refuses a fork and a fork of a fork,
     * whoever asks; a bad 'standalone' is refused too. */
    uint32_t other = fam_shard == 1 ? 2 : 1;
    struct err fe;
    int frc = h_exec(db, 0, NULL, &fe,
                     "{\"op\":\"cluster.move_branch\",\"branch\":\"%s\",\"to_shard\":%u,"
                     "\"standalone\":true}",
                     family[2], other);
    CHECK(frc == STRATA_INVALID_ARGUMENT && strstr(fe.msg, "is a fork"),
          "a standalone move of the fork %s is refused: %s: %s", family[2], err_name(frc), fe.msg);
    frc = h_exec(db, 0, NULL, &fe,
                 "{\"op\":\"cluster.move_branch\",\"branch\":\"%s\",\"to_shard\":%u,"
                 "\"standalone\":true}",
                 family[3], other);
    CHECK(frc == STRATA_INVALID_ARGUMENT && strstr(fe.msg, "is a fork"),
          "and of the fork of a fork %s: %s: %s", family[3], err_name(frc), fe.msg);
    frc = h_exec(db, 0, NULL, &fe,
                 "{\"op\":\"cluster.move_branch\",\"branch\":\"sa-00\",\"to_shard\":%u,"
                 "\"standalone\":1}",
                 other);
    CHECK(frc == STRATA_INVALID_ARGUMENT && strstr(fe.msg, "'standalone' (boolean)"),
          "a non-boolean 'standalone' is refused: %s: %s", err_name(frc), fe.msg);
    size_t total0;
    CHECK(t0.counts[1] + t0.counts[2] + t0.counts[3] == NSTANDALONE + NFAMILY + 1 &&
              table_spread(&t0, &total0) <= NFAMILY + 1,
          "placement spread the branches: %zu %zu %zu", t0.counts[1], t0.counts[2], t0.counts[3]);
    /* The light shard: another one than the family's (the highest such id). */
    uint32_t light = fam_shard == 3 ? 2 : 3;
    char keep[NSTANDALONE][32], drop[NSTANDALONE][32];
    size_t nkeep = 0, ndrop = 0, kept_light = 0;
    for (int i = 0; i < NSTANDALONE; i++) {
        char name[32];
        snprintf(name, sizeof name, "sa-%02d", i);
        if (shard_of(&t0, name) == light && kept_light++ >= NKEEP_LIGHT)
            snprintf(drop[ndrop++], sizeof drop[0], "%s", name);
        else
            snprintf(keep[nkeep++], sizeof keep[0], "%s", name);
    }
    /* Writers on the branches that stay, from before the skew until the end. */
    atomic_bool stop = false;
    struct writer w[WRITERS];
    memset(w, 0, sizeof w);
    for (int k = 0; k < WRITERS; k++) {
        w[k] = (struct writer){.c = &c, .idx = k, .stop = &stop, .branches = (const char(*)[32])keep,
                               .nbranches = nkeep, .acked = calloc(MAX_OPS, 1)};
        pthread_create(&w[k].th, NULL, write_loop, &w[k]);
    }
    h_sleep_ms(500);
    size_t deleted = 0;
    for (size_t i = 0; i < ndrop; i++)
        deleted += h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.delete\",\"name\":\"%s\"}",
                          drop[i]) == 0;
    CHECK(deleted == ndrop && ndrop > 0, "%zu of %zu standalone branches of shard %u deleted",
          deleted, ndrop, light);
    struct table t1;
    read_table(db, &t1);
    size_t total, spread = table_spread(&t1, &total);
    h_note("after the deletions: %zu %zu %zu branches on shards 1-3", t1.counts[1], t1.counts[2],
           t1.counts[3]);
    CHECK(placement_branches_uneven(spread, total, 3), "the skew is uneven enough to act on");
    /* Even within the threshold, with no move in flight, in bounded time. */
    struct table t2;
    uint64_t took;
    bool even = wait_even(db, EVEN_WITHIN_MS, &t2, &took);
    CHECK(even, "branch counts even (%zu %zu %zu) in %.1f s (bound %d s)", t2.counts[1],
          t2.counts[2], t2.counts[3], (double)took / 1000.0, EVEN_WITHIN_MS / 1000);
    h_sleep_ms(1000); /* writes after the last move, on the new shards */
    atomic_store(&stop, true);
    for (int k = 0; k < WRITERS; k++)
        pthread_join(w[k].th, NULL);
    check_writes(db, w, (const char(*)[32])keep, nkeep);
    for (int k = 0; k < WRITERS; k++)
        free(w[k].acked);
    /* Nothing moved from now on: the plan is settled. */
    h_sleep_ms(3000);
    struct table t3;
    struct moves m3;
    REQUIRE(read_table(db, &t3) == 0 && read_moves(db, &m3) == 0, "table and moves read");
    CHECK(memcmp(t3.counts, t2.counts, sizeof t3.counts) == 0 && m3.in_flight == 0,
          "still %zu %zu %zu and no move in flight 3 s later", t3.counts[1], t3.counts[2],
          t3.counts[3]);
    /* Fork family: where it was, never in the moves record. */
    bool fam_stayed = true, fam_moved = false;
    for (int i = 0; i < NFAMILY; i++)
        fam_stayed = fam_stayed && shard_of(&t3, family[i]) == fam_shard;
    for (size_t r = 0; r < m3.nrecent; r++)
        fam_moved = fam_moved || strncmp(m3.branch[r], "fam-", 4) == 0;
    CHECK(fam_stayed && !fam_moved, "the fork family stayed on shard %u and was never moved",
          fam_shard);
    CHECK(shard_of(&t3, "default") == 1, "default stayed on shard 1");
    /* The moves: done, of standalone branches that stayed, now on their recorded target
     * (the newest record of a branch is the first in the list). */
    size_t moved = 0, done = 0, consistent = 0;
    for (size_t i = 0; i < nkeep; i++)
        moved += shard_of(&t3, keep[i]) != shard_of(&t0, keep[i]);
    for (size_t r = 0; r < m3.nrecent; r++) {
        done += strcmp(m3.outcome[r], "done") == 0;
        bool newest = true;
        for (size_t q = 0; q < r; q++)
            newest = newest && strcmp(m3.branch[q], m3.branch[r]) != 0;
        consistent += !newest || (strncmp(m3.branch[r], "sa-", 3) == 0 &&
                                  shard_of(&t3, m3.branch[r]) == m3.to[r]);
    }
    CHECK(moved > 0 && m3.nrecent >= (moved < 16 ? moved : 16) && done == m3.nrecent &&
              consistent == m3.nrecent,
          "%zu branches moved; cluster.moves lists %zu finished moves, %zu done, %zu on their "
          "target",
          moved, m3.nrecent, done, consistent);
    int logged = log_total(&c, "rebalance: moving branch");
    CHECK(logged >= (int)m3.nrecent && logged > 0, "%d 'rebalance: moving branch' log lines",
          logged);
    /* A moved branch: its old shard no longer has it, the new one does; its preloaded
     * keys read back. */
    size_t gone = 0, there = 0, preload_ok = 0;
    for (size_t i = 0; i < nkeep; i++) {
        uint32_t from = shard_of(&t0, keep[i]), to = shard_of(&t3, keep[i]);
        struct bstatus st;
        if (from != to && shard_branch_status(db, from, keep[i], &st) == 0)
            gone += !st.exists;
        if (from != to && shard_branch_status(db, to, keep[i], &st) == 0)
            there += st.exists && st.forks == 0 && !st.has_parent;
        struct h_kv kv[PRELOAD];
        char prefix[32];
        snprintf(prefix, sizeof prefix, "pre-%s", keep[i] + 3);
        h_kv_fill(kv, PRELOAD, prefix);
        size_t absent = 0, wrong = 0;
        preload_ok += h_batch_check(db, 0, keep[i], kv, PRELOAD, &absent, &wrong) == 0 &&
                      absent == 0 && wrong == 0;
    }
    CHECK(gone == moved && there == moved,
          "every moved branch is gone from its old shard (%zu of %zu) and on its new one, "
          "standalone (%zu)",
          gone, moved, there);
    CHECK(preload_ok == nkeep, "preloaded keys of %zu of %zu branches read back", preload_ok,
          nkeep);
    /* What the rebalancer asked the shards: a fork names its parent, the root its forks. */
    struct bstatus st;
    int rc = shard_branch_status(db, fam_shard, family[3], &st);
    CHECK(rc == 0 && st.exists && strcmp(st.parent, family[1]) == 0,
          "move.status of %s names its parent (%s)", family[3], st.parent);
    rc = shard_branch_status(db, fam_shard, family[0], &st);
    CHECK(rc == 0 && st.exists && st.forks == 2 && !st.has_parent,
          "move.status of %s: %llu forks (2), no parent", family[0],
          (unsigned long long)st.forks);
    operator_move_stays(db, keep, nkeep);
    strata_close(db);
}

void test_auto_move_off(void)
{
    static struct h_cluster bad;
    static const char *const bad_flags[] = {"--auto-move-branches", "sometimes", NULL};
    h_cluster_init(&bad, "badflag", 1, bad_flags);
    CHECK(h_node_start(&bad, 0) != 0 && h_log_count(&bad, 0, "must be on or off") == 1,
          "--auto-move-branches sometimes is refused with a clear message");

    static struct h_cluster c;
    start_cluster(&c, "automove-off", false);
    REQUIRE(h_cluster_start(&c) == 0, "3 nodes started (--auto-move-branches off)");
    REQUIRE(groups_led(&c), "the meta group and the 3 shards have leaders");
    struct strata *db = h_open_cluster(&c, NULL);
    REQUIRE(db != NULL, "client connected");
    int made = 0;
    for (int i = 0; i < 12; i++) {
        char name[32];
        snprintf(name, sizeof name, "sa-%02d", i);
        made += make_branch(db, name, NULL) == 0;
    }
    struct table t0;
    REQUIRE(made == 12 && read_table(db, &t0) == 0, "12 branches created");
    size_t deleted = 0;
    for (size_t i = 0; i < t0.n; i++)
        if (t0.shard[i] == 3 && strcmp(t0.names[i], "default") != 0 && deleted < 3)
            deleted += h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.delete\",\"name\":\"%s\"}",
                              t0.names[i]) == 0;
    struct table t1;
    REQUIRE(deleted == 3 && read_table(db, &t1) == 0, "3 branches of shard 3 deleted");
    size_t total, spread = table_spread(&t1, &total);
    CHECK(placement_branches_uneven(spread, total, 3), "skewed: %zu %zu %zu", t1.counts[1],
          t1.counts[2], t1.counts[3]);
    /* With the flag on, the first move starts within ~2 s (test_auto_move); wait 8. */
    h_sleep_ms(8000);
    struct table t2;
    struct moves m;
    REQUIRE(read_table(db, &t2) == 0 && read_moves(db, &m) == 0, "table and moves read");
    bool same = t2.n == t1.n;
    for (size_t i = 0; same && i < t1.n; i++)
        same = strcmp(t1.names[i], t2.names[i]) == 0 && t1.shard[i] == t2.shard[i];
    CHECK(same && m.in_flight == 0 && m.nrecent == 0 &&
              log_total(&c, "rebalance: moving branch") == 0,
          "nothing moved in 8 s (%zu %zu %zu branches, %zu moves in flight, %zu finished)",
          t2.counts[1], t2.counts[2], t2.counts[3], m.in_flight, m.nrecent);
    strata_close(db);
}
