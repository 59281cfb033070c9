/* Integration test of API-key authentication and authorization (--api-keys): the same
 * answers whether the client talks to the leader or to a follower, and a follower's
 * forwarded request is checked again by the leader. */
#include "harness.h"
#include "tests.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static const char keys_strict[] = "# integration-test keys: KEY r|rw PATTERN[,PATTERN...]\n"
                                  "admin-key rw *\n"
                                  "reader-key r *\n"
                                  "agent-key rw agent-*\n";
/* The same keys, but agent-key may write everything: loaded by one follower only, to
 * show that the leader checks a forwarded request again with its own rules. */
static const char keys_loose[] = "admin-key rw *\n"
                                 "reader-key r *\n"
                                 "agent-key rw *\n";

/* One case: a key, a command, the code it must get. */
struct auth_case {
    const char *what;
    const char *key; /* NULL = no key */
    const char *json;
    int want;
};

static const struct auth_case cases[] = {
    {"no key, a read", NULL, "{\"op\":\"kv.get\",\"key\":\"shared\"}", STRATA_UNAUTHENTICATED},
    {"no key, cluster.status", NULL, "{\"op\":\"cluster.status\"}", STRATA_UNAUTHENTICATED},
    {"unknown key, a read", "nope", "{\"op\":\"kv.get\",\"key\":\"shared\"}",
     STRATA_UNAUTHENTICATED},
    {"unknown key, a write", "nope", "{\"op\":\"kv.put\",\"key\":\"x\",\"value\":1}",
     STRATA_UNAUTHENTICATED},
    {"read-only key, a read", "reader-key", "{\"op\":\"kv.get\",\"key\":\"shared\"}", 0},
    {"read-only key, a read of branch main-x", "reader-key",
     "{\"op\":\"kv.get\",\"branch\":\"main-x\",\"key\":\"m\"}", 0},
    {"read-only key, a write", "reader-key", "{\"op\":\"kv.put\",\"key\":\"x\",\"value\":1}",
     STRATA_PERMISSION_DENIED},
    {"read-only key, branch.create", "reader-key", "{\"op\":\"branch.create\",\"name\":\"r-1\"}",
     STRATA_PERMISSION_DENIED},
    {"read-only key, cluster.transfer_leader", "reader-key", "{\"op\":\"cluster.transfer_leader\"}",
     STRATA_PERMISSION_DENIED},
    {"agent-* key, a write to main-x", "agent-key",
     "{\"op\":\"kv.put\",\"branch\":\"main-x\",\"key\":\"x\",\"value\":1}",
     STRATA_PERMISSION_DENIED},
    {"agent-* key, a read of main-x", "agent-key",
     "{\"op\":\"kv.get\",\"branch\":\"main-x\",\"key\":\"m\"}", STRATA_PERMISSION_DENIED},
    {"agent-* key, a write to the default branch", "agent-key",
     "{\"op\":\"kv.put\",\"key\":\"x\",\"value\":1}", STRATA_PERMISSION_DENIED},
    {"agent-* key, branch.create main-y", "agent-key",
     "{\"op\":\"branch.create\",\"name\":\"main-y\"}", STRATA_PERMISSION_DENIED},
    {"agent-* key, fork of main-x into agent-fork", "agent-key",
     "{\"op\":\"branch.fork\",\"source\":\"main-x\",\"name\":\"agent-fork\"}",
     STRATA_PERMISSION_DENIED},
    {"agent-* key, cluster.add_member", "agent-key",
     "{\"op\":\"cluster.add_member\",\"id\":9,\"address\":\"127.0.0.1:1\"}",
     STRATA_PERMISSION_DENIED},
    /* More names than the server's small buffer: every one is checked, the last too. */
    {"agent-* key, fork_many into 69 agent-* names and main-z", "agent-key",
     "{\"op\":\"branch.fork_many\",\"source\":\"agent-a\",\"names\":[\"agent-n00\",\"agent-n01\",\"agent-n02\",\"agent-n03\",\"agent-n04\",\"agent-n05\",\"agent-n06\",\"agent-n07\",\"agent-n08\",\"agent-n09\",\"agent-n10\",\"agent-n11\",\"agent-n12\",\"agent-n13\",\"agent-n14\",\"agent-n15\",\"agent-n16\",\"agent-n17\",\"agent-n18\",\"agent-n19\",\"agent-n20\",\"agent-n21\",\"agent-n22\",\"agent-n23\",\"agent-n24\",\"agent-n25\",\"agent-n26\",\"agent-n27\",\"agent-n28\",\"agent-n29\",\"agent-n30\",\"agent-n31\",\"agent-n32\",\"agent-n33\",\"agent-n34\",\"agent-n35\",\"agent-n36\",\"agent-n37\",\"agent-n38\",\"agent-n39\",\"agent-n40\",\"agent-n41\",\"agent-n42\",\"agent-n43\",\"agent-n44\",\"agent-n45\",\"agent-n46\",\"agent-n47\",\"agent-n48\",\"agent-n49\",\"agent-n50\",\"agent-n51\",\"agent-n52\",\"agent-n53\",\"agent-n54\",\"agent-n55\",\"agent-n56\",\"agent-n57\",\"agent-n58\",\"agent-n59\",\"agent-n60\",\"agent-n61\",\"agent-n62\",\"agent-n63\",\"agent-n64\",\"agent-n65\",\"agent-n66\",\"agent-n67\",\"agent-n68\",\"main-z\"]}",
     STRATA_PERMISSION_DENIED},
    {"agent-* key, a read of agent-a", "agent-key",
     "{\"op\":\"kv.get\",\"branch\":\"agent-a\",\"key\":\"a\"}", 0},
    {"admin key, a write to main-x", "admin-key",
     "{\"op\":\"kv.put\",\"branch\":\"main-x\",\"key\":\"by-admin\",\"value\":1}", 0},
    {"admin key, cluster.status", "admin-key", "{\"op\":\"cluster.status\"}", 0},
};
#define NCASES (sizeof cases / sizeof cases[0])

static int run(const struct h_cluster *c, int node, const char *key, const char *json,
               struct buf *res, struct err *e)
{
    struct strata *db = h_open_node(c, node, key);
    if (db == NULL)
        return STRATA_INTERNAL;
    int rc = h_exec(db, 0, res, e, "%s", json);
    strata_close(db);
    return rc;
}

/* Every case against one node; codes recorded for the leader/follower comparison. */
static void run_cases(const struct h_cluster *c, int node, const char *role, int *codes)
{
    for (size_t k = 0; k < NCASES; k++) {
        struct err e;
        uint64_t t0 = h_now_ms();
        codes[k] = run(c, node, cases[k].key, cases[k].json, NULL, &e);
        uint64_t ms = h_now_ms() - t0;
        CHECK(codes[k] == cases[k].want, "%s via the %s: %s (got %s in %llu ms: %s)", cases[k].what,
              role, err_name(cases[k].want), err_name(codes[k]), (unsigned long long)ms,
              codes[k] ? e.msg : "");
        /* A refused key is final: the client must not sit in reconnect backoff. */
        if (cases[k].want == STRATA_UNAUTHENTICATED)
            CHECK(ms < 1000, "and the client reports it at once (%llu ms)", (unsigned long long)ms);
    }
}

/* Allowed agent work on its own branch, through one node. */
static void agent_work(const struct h_cluster *c, int node, const char *role, const char *branch)
{
    char json[256];
    snprintf(json, sizeof json, "{\"op\":\"branch.create\",\"name\":\"%s\"}", branch);
    struct err e;
    int rc = run(c, node, "agent-key", json, NULL, &e);
    CHECK(rc == 0, "agent-* key creates branch %s via the %s (%s %s)", branch, role, err_name(rc),
          rc ? e.msg : "");
    struct strata *db = h_open_node(c, node, "agent-key");
    rc = db ? h_exec(db, 0, NULL, &e,
                     "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"k\",\"value\":\"%s-v\"}",
                     branch, role)
            : STRATA_INTERNAL;
    CHECK(rc == 0, "agent-* key writes to %s via the %s (%s %s)", branch, role, err_name(rc),
          rc ? e.msg : "");
    char v[64] = "", want[64];
    snprintf(want, sizeof want, "%s-v", role);
    rc = db ? h_get_str(db, 0, branch, "k", v, sizeof v, &e) : STRATA_INTERNAL;
    CHECK(rc == 0 && strcmp(v, want) == 0, "and reads it back ('%s', %s)", v, err_name(rc));
    /* A session default branch does not get around the patterns. */
    rc = db ? h_exec(db, 0, NULL, &e, "{\"op\":\"session.use\",\"branch\":\"main-x\"}")
            : STRATA_INTERNAL;
    CHECK(rc == 0, "session.use main-x is accepted (%s)", err_name(rc));
    rc = db ? h_exec(db, 0, NULL, &e, "{\"op\":\"kv.put\",\"key\":\"s\",\"value\":1}")
            : STRATA_INTERNAL;
    CHECK(rc == STRATA_PERMISSION_DENIED,
          "a write that takes main-x from the session is PERMISSION_DENIED via the %s (%s)", role,
          err_name(rc));
    strata_close(db);
}

void test_auth(void)
{
    char keyfile[H_PATH_MAX];
    h_write_file("api-keys", keys_strict, keyfile, sizeof keyfile);
    const char *extra[] = {"--api-keys", keyfile, NULL};
    static struct h_cluster c;
    h_cluster_init(&c, "auth", 3, extra);
    h_set_status_key("admin-key");
    REQUIRE(h_cluster_start(&c) == 0, "3 servers started with --api-keys");
    int L = h_wait_leader(&c, 10000, -1);
    REQUIRE(L >= 0, "a leader is elected");
    int F = (L + 1) % 3, F2 = (L + 2) % 3;

    /* Setup by the admin: a shared key, branches main-x and agent-a. */
    struct err e;
    int rc =
        run(&c, L, "admin-key", "{\"op\":\"kv.put\",\"key\":\"shared\",\"value\":\"s\"}", NULL, &e);
    CHECK(rc == 0, "admin key writes (%s)", err_name(rc));
    rc = run(&c, L, "admin-key", "{\"op\":\"branch.create\",\"name\":\"main-x\"}", NULL, &e);
    CHECK(rc == 0, "admin key creates main-x (%s)", err_name(rc));
    rc = run(&c, L, "admin-key", "{\"op\":\"branch.create\",\"name\":\"agent-a\"}", NULL, &e);
    CHECK(rc == 0, "admin key creates agent-a (%s)", err_name(rc));

    static int on_leader[NCASES], on_follower[NCASES];
    run_cases(&c, L, "leader", on_leader);
    run_cases(&c, F, "follower", on_follower);
    bool same = true;
    for (size_t k = 0; k < NCASES; k++)
        same = same && on_leader[k] == on_follower[k];
    CHECK(same, "the leader and the follower give the same answer to every case");
    agent_work(&c, L, "leader", "agent-l");
    agent_work(&c, F, "follower", "agent-f");
    struct h_status fs;
    int src = h_status(&c, F, &fs); /* before CHECK: its arguments print fs */
    CHECK(src == 0 && fs.forwarded > 0, "the follower forwarded the allowed writes (%llu)",
          (unsigned long long)fs.forwarded);

    /* The leader checks forwarded requests itself: a follower whose key file lets
     * agent-key write anywhere still cannot get a write to main-x past the leader. */
    h_write_file("api-keys", keys_loose, keyfile, sizeof keyfile);
    h_node_signal(&c, F2, SIGTERM);
    CHECK(h_node_wait_exit(&c, F2, 10000) == 0, "follower node %d stopped", F2 + 1);
    REQUIRE(h_node_start(&c, F2) == 0, "follower node %d restarted with the loose key file",
            F2 + 1);
    h_write_file("api-keys", keys_strict, keyfile, sizeof keyfile);
    REQUIRE(h_wait_leader(&c, 10000, -1) == L, "node %d still leads", L + 1);
    rc = run(&c, F2, "agent-key",
             "{\"op\":\"kv.put\",\"branch\":\"main-x\",\"key\":\"sneaky\",\"value\":1}", NULL, &e);
    CHECK(rc == STRATA_PERMISSION_DENIED,
          "a write the follower allows but the leader's keys forbid: PERMISSION_DENIED from the "
          "leader (%s: %s)",
          err_name(rc), e.msg);
    struct buf res;
    buf_init(&res);
    char v[16] = "";
    struct strata *db = h_open_node(&c, L, "admin-key");
    rc = db ? h_get_str(db, 0, "main-x", "sneaky", v, sizeof v, &e) : STRATA_INTERNAL;
    CHECK(rc == STRATA_NOT_FOUND, "and nothing was written (%s)", err_name(rc));
    strata_close(db);
    buf_close(&res);
    rc = run(&c, F2, "agent-key",
             "{\"op\":\"kv.put\",\"branch\":\"agent-a\",\"key\":\"fine\",\"value\":1}", NULL, &e);
    CHECK(rc == 0, "an allowed write through that follower still works (%s)", err_name(rc));
}
