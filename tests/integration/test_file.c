/* Integration test of the file:DIR URI: a durable one-node database in-process survives
 * close and reopen, and a process killed without closing it (no server involved). */
#include "harness.h"
#include "tests.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static struct strata *open_file(const char *dir)
{
    char uri[H_PATH_MAX + 8];
    snprintf(uri, sizeof uri, "file:%s", dir);
    struct strata *db = NULL;
    struct err e;
    err_clear(&e);
    if (strata_open(uri, &db, &e)) {
        h_note("strata_open %s: %s", uri, e.msg);
        return NULL;
    }
    return db;
}

void test_file_durability(void)
{
    char dir[H_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/filedb", h_tmpdir());
    static struct h_kv first[300], second[300];
    h_kv_fill(first, 300, "first");
    h_kv_fill(second, 300, "second");

    struct strata *db = open_file(dir);
    REQUIRE(db != NULL, "file:%s opened (created)", dir);
    CHECK(access(dir, F_OK) == 0, "the directory exists");
    CHECK(h_put_all(db, NULL, first, 300, 32) == 300, "300 writes acked");
    int rc = h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"side\"}");
    CHECK(rc == 0, "branch side created (%s)", err_name(rc));
    rc = h_exec(db, 0, NULL, NULL,
                "{\"op\":\"kv.put\",\"branch\":\"side\",\"key\":\"only-here\",\"value\":\"s\"}");
    CHECK(rc == 0, "a write on branch side (%s)", err_name(rc));
    rc = h_exec(db, 0, NULL, NULL, "{\"op\":\"kv.put\",\"key\":\"first-0\",\"value\":\"over\"}");
    CHECK(rc == 0, "first-0 overwritten (%s)", err_name(rc));
    rc = h_exec(db, 0, NULL, NULL, "{\"op\":\"kv.delete\",\"key\":\"first-1\"}");
    CHECK(rc == 0, "first-1 deleted (%s)", err_name(rc));
    strata_close(db);

    db = open_file(dir);
    REQUIRE(db != NULL, "reopened");
    size_t absent, wrong;
    rc = h_batch_check(db, 0, NULL, first + 2, 298, &absent, &wrong);
    CHECK(rc == 0 && absent == 0 && wrong == 0,
          "after reopening, 298 untouched keys hold their values (%zu absent, %zu wrong)", absent,
          wrong);
    char v[64] = "";
    CHECK(h_get_str(db, 0, NULL, "first-0", v, sizeof v, NULL) == 0 && strcmp(v, "over") == 0,
          "the overwrite survived ('%s')", v);
    CHECK(h_get_str(db, 0, NULL, "first-1", v, sizeof v, NULL) == STRATA_NOT_FOUND,
          "the delete survived");
    CHECK(h_get_str(db, 0, "side", "only-here", v, sizeof v, NULL) == 0 && strcmp(v, "s") == 0,
          "the branch and its write survived");
    CHECK(h_get_str(db, 0, NULL, "only-here", v, sizeof v, NULL) == STRATA_NOT_FOUND,
          "and stayed on its branch");
    CHECK(h_put_all(db, NULL, second, 300, 32) == 300, "300 more writes acked after reopening");
    strata_close(db);

    db = open_file(dir);
    REQUIRE(db != NULL, "reopened a second time");
    rc = h_batch_check(db, 0, NULL, second, 300, &absent, &wrong);
    CHECK(rc == 0 && absent == 0 && wrong == 0,
          "the second session's writes survived (%zu absent, %zu wrong)", absent, wrong);
    rc = h_batch_check(db, 0, NULL, first + 2, 298, &absent, &wrong);
    CHECK(rc == 0 && absent == 0 && wrong == 0, "and the first session's");
    struct buf res;
    buf_init(&res);
    struct h_obj x = {.o = NULL};
    rc = h_exec(db, 0, &res, NULL, "{\"op\":\"kv.count\"}");
    CHECK(rc == 0 && h_obj_parse(&x, &res) == 0 && x.o->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
              x.o->via.u64 == 599,
          "kv.count is 599 (300 + 300 - 1 deleted)");
    if (x.o)
        h_obj_free(&x);
    buf_close(&res);
    strata_close(db);
}

/* A writer process killed -9 without strata_close: every write it saw acknowledged is
 * there when the directory is opened again. */
void test_file_crash(void)
{
    char dir[H_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/crashdb", h_tmpdir());
    static struct h_kv kv[500];
    h_kv_fill(kv, 500, "crash");
    int fds[2];
    REQUIRE(pipe(fds) == 0, "pipe");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        struct strata *db = open_file(dir);
        size_t acked = 0;
        if (db != NULL)
            for (size_t i = 0; i < 500; i++) {
                if (h_exec(db, 0, NULL, NULL, "{\"op\":\"kv.put\",\"key\":\"%s\",\"value\":\"%s\"}",
                           kv[i].key, kv[i].value) != 0)
                    break;
                acked++;
                /* Report progress after each ack: the parent trusts only what it read. */
                (void)!write(fds[1], &acked, sizeof acked);
            }
        raise(SIGKILL); /* no strata_close, no exit handlers */
        _exit(1);
    }
    REQUIRE(pid > 0, "forked the writer");
    close(fds[1]);
    size_t acked = 0, got;
    while (read(fds[0], &got, sizeof got) == (ssize_t)sizeof got)
        acked = got;
    close(fds[0]);
    int st;
    REQUIRE(waitpid(pid, &st, 0) == pid, "writer reaped");
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the writer died by SIGKILL");
    CHECK(acked == 500, "it saw 500 writes acknowledged before dying (%zu)", acked);
    struct strata *db = open_file(dir);
    REQUIRE(db != NULL, "reopened after the crash");
    size_t absent, wrong;
    int rc = h_batch_check(db, 0, NULL, kv, acked, &absent, &wrong);
    CHECK(rc == 0 && absent == 0 && wrong == 0,
          "every acknowledged write survived the crash (%zu absent, %zu wrong)", absent, wrong);
    CHECK(h_exec(db, 0, NULL, NULL, "{\"op\":\"kv.put\",\"key\":\"after\",\"value\":\"1\"}") == 0,
          "the database takes writes after recovery");
    strata_close(db);
}
