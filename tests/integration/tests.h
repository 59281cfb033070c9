/* The integration tests: one function per CTest test (main.c runs the one named). */
#ifndef STRATA_INTEG_TESTS_H
#define STRATA_INTEG_TESTS_H

void test_replicate(void);        /* test_cluster.c */
void test_failover(void);         /* test_cluster.c */
void test_follower_restart(void); /* test_cluster.c */
void test_sigterm_handoff(void);  /* test_cluster.c */
void test_snapshot_install(void); /* test_snapshot.c */
void test_wiped_member(void);     /* test_snapshot.c */
void test_bad_input(void);        /* test_bad_input.c */
void test_auth(void);             /* test_auth.c */
void test_auth_meta(void);        /* test_auth_meta.c */
void test_file_durability(void);  /* test_file.c */
void test_file_crash(void);       /* test_file.c */
void test_http(void);             /* test_http.c */
void test_shards(void);           /* test_shards.c */
void test_rebalance(void);        /* test_rebalance.c */
void test_client_route(void);      /* test_client_route.c */
void test_client_route_unit(void); /* test_client_route.c */
void test_client_route_fallback(void); /* test_client_route.c */
void test_backup(void);           /* test_backup.c */
void test_move(void);             /* test_move.c */
void test_move_resume(void);      /* test_move.c */
void test_move_bench(void);       /* test_move.c (not a CTest test: prints figures) */
void test_auto_move(void);        /* test_automove.c */
void test_auto_move_off(void);    /* test_automove.c */
void test_join_retry(void);       /* test_join.c */
void test_idem(void);             /* test_idem.c */

#endif
