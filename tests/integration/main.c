/* strata_integ: runs one integration test by name against real stratadb-server processes.
 *
 *   strata_integ TEST [SERVER]
 *
 * SERVER defaults to the stratadb-server built alongside (STRATA_SERVER_PATH, set by
 * CMake). Prints one line per check and a final "N passed, N failed"; exits 0 only when
 * every check passed. */
#include "harness.h"
#include "tests.h"

#include <stdio.h>
#include <string.h>

#ifndef STRATA_SERVER_PATH
#define STRATA_SERVER_PATH "stratadb-server"
#endif

static const struct {
    const char *name;
    void (*fn)(void);
    unsigned deadline_s; /* whole-process bound; servers are killed when it passes */
} tests[] = {
    {"replicate", test_replicate, 60},
    {"failover", test_failover, 90},
    {"follower_restart", test_follower_restart, 60},
    {"sigterm_handoff", test_sigterm_handoff, 60},
    {"snapshot_install", test_snapshot_install, 90},
    {"wiped_member", test_wiped_member, 90},
    {"bad_input", test_bad_input, 60},
    {"auth", test_auth, 90},
    {"auth_meta", test_auth_meta, 140},
    {"file_durability", test_file_durability, 60},
    {"file_crash", test_file_crash, 60},
    {"http", test_http, 120},
    {"shards", test_shards, 120},
    {"rebalance", test_rebalance, 240},
    {"client_route", test_client_route, 120},
    {"client_route_unit", test_client_route_unit, 30},
    {"client_route_fallback", test_client_route_fallback, 30},
    {"backup", test_backup, 300},
    {"move", test_move, 150},
    {"move_resume", test_move_resume, 200},
    {"move_bench", test_move_bench, 900},
    {"auto_move", test_auto_move, 120},
    {"auto_move_off", test_auto_move_off, 60},
    {"join_retry", test_join_retry, 140},
    {"idem", test_idem, 120},
};

int main(int argc, char **argv)
{
    size_t n = sizeof tests / sizeof tests[0];
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: strata_integ TEST [SERVER]\ntests:");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %s", tests[i].name);
        fprintf(stderr, "\n");
        return 2;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(argv[1], tests[i].name) != 0)
            continue;
        h_init(argc == 3 ? argv[2] : STRATA_SERVER_PATH, tests[i].deadline_s);
        printf("%s (temporary directory %s)\n", tests[i].name, h_tmpdir());
        uint64_t t0 = h_now_ms();
        tests[i].fn();
        h_finish();
        h_cleanup();
        printf("%s: %d passed, %d failed (%.1f s)\n", tests[i].name, h_passed, h_failed,
               (double)(h_now_ms() - t0) / 1000.0);
        return h_failed || h_passed == 0 ? 1 : 0;
    }
    fprintf(stderr, "strata_integ: unknown test '%s'\n", argv[1]);
    return 2;
}
