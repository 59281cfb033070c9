/* Backup and restore end to end, through the `strata` CLI: a 3-node, 3-shard cluster
 * with branches on every shard (KV with history, state, events, a fork, a few MB of
 * incompressible values) is backed up while a writer keeps writing; a fresh 3-node
 * cluster restored from it answers every read (time travel included) byte for byte as
 * the source did at the backed-up versions, and the writer's acknowledged writes are
 * there exactly up to the version the manifest records. Corrupt, truncated, missing or
 * future-format backups and non-empty or too-small targets are refused with nothing
 * changed. */
#include "harness.h"
#include "storage.h"
#include "tests.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef STRATA_CLI_PATH
#define STRATA_CLI_PATH "strata"
#endif

extern char **environ;

#define NBR 6        /* data branches (spread over the shards) */
#define BIG_KEYS 1200 /* 1200 x 2 KiB of random hex on br-0: a multi-chunk snapshot */
#define MAX_LIVE 200000

/* ---- Running the CLI ---------------------------------------------------------------------- */

/* Run `strata --uri URI ARGS...` (uri NULL: no --uri), output to DIR/cli.out; bounded by
 * `secs` (killed after). Returns the exit code (-1 on timeout or spawn failure); the
 * output's first `cap` bytes go to out. */
static int run_cli(const char *uri, const char *const *args, unsigned secs, char *out, size_t cap)
{
    char path[H_PATH_MAX], ubuf[512];
    snprintf(path, sizeof path, "%s/cli.out", h_tmpdir());
    const char *argv[16];
    int k = 0;
    argv[k++] = STRATA_CLI_PATH;
    if (uri) {
        snprintf(ubuf, sizeof ubuf, "--uri=%s", uri);
        argv[k++] = ubuf;
    }
    for (int i = 0; args[i] && k < 15; i++)
        argv[k++] = args[i];
    argv[k] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    int rc = posix_spawn(&pid, STRATA_CLI_PATH, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        h_note("cannot run %s: %s", STRATA_CLI_PATH, strerror(rc));
        return -1;
    }
    int status = 0, code = -1;
    uint64_t until = h_now_ms() + secs * 1000u;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            break;
        }
        if (h_now_ms() > until) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            h_note("strata %s %s: killed after %u s", args[0], args[1] ? args[1] : "", secs);
            break;
        }
        h_sleep_ms(20);
    }
    if (out && cap) {
        out[0] = '\0';
        FILE *f = fopen(path, "r");
        if (f) {
            size_t n = fread(out, 1, cap - 1, f);
            out[n] = '\0';
            fclose(f);
        }
    }
    return code;
}

static void uri_of(const struct h_cluster *c, char *out, size_t cap)
{
    int n = snprintf(out, cap, "strata://");
    for (int i = 0; i < c->n && n < (int)cap; i++)
        n += snprintf(out + n, cap - (size_t)n, "%s%s", i ? "," : "", c->nodes[i].addr);
}

/* ---- Data ------------------------------------------------------------------------------------- */

static int put(struct strata *db, const char *branch, const char *key, const char *value,
               uint64_t *version)
{
    struct buf res;
    buf_init(&res);
    struct err e;
    int rc = h_exec(db, 0, &res, &e,
                    "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"%s\",\"value\":\"%s\"}", branch,
                    key, value);
    if (rc == 0 && version) {
        struct h_obj x;
        *version = 0;
        if (h_obj_parse(&x, &res) == 0) {
            *version = h_map_u64(x.o, "version");
            h_obj_free(&x);
        }
    }
    buf_close(&res);
    return rc;
}

/* The result bytes of one read (for byte-for-byte comparison between clusters). */
static int read_raw(struct strata *db, struct buf *out, const char *cmd_json)
{
    buf_reset(out);
    struct err e;
    return h_exec(db, 0, out, &e, "%s", cmd_json);
}

/* Pipelined puts of `n` 2 KiB random-hex values (LZ4 cannot shrink them much). */
static size_t put_big(struct strata *db, const char *branch, size_t n)
{
    size_t ok = 0;
    for (size_t at = 0; at < n; at += 50) {
        size_t cnt = n - at < 50 ? n - at : 50;
        struct buf cmds[50], res[50];
        const uint8_t *pc[50];
        size_t pl[50];
        int codes[50];
        struct err errs[50];
        for (size_t i = 0; i < cnt; i++) {
            char val[2049];
            for (size_t k = 0; k < 2048; k++)
                val[k] = "0123456789abcdef"[(unsigned)random() & 15];
            val[2048] = '\0';
            char *json = NULL;
            buf_init(&cmds[i]);
            buf_init(&res[i]);
            if (asprintf(&json,
                         "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"big-%05zu\",\"value\":"
                         "\"%s\"}",
                         branch, at + i, val) > 0) {
                struct err e;
                storage_json_to_value(json, strlen(json), &cmds[i], &e);
            }
            free(json);
            pc[i] = cmds[i].data;
            pl[i] = cmds[i].len;
        }
        if (strata_exec_many(db, pc, pl, cnt, 0, res, codes, errs) == 0)
            for (size_t i = 0; i < cnt; i++)
                ok += codes[i] == 0;
        for (size_t i = 0; i < cnt; i++) {
            buf_close(&cmds[i]);
            buf_close(&res[i]);
        }
    }
    return ok;
}

/* ---- The writer that runs during the backup ------------------------------------------------ */

struct live {
    struct strata *db;
    volatile int stop;
    size_t n;                 /* writes acknowledged */
    uint64_t version[MAX_LIVE]; /* version of acknowledged write i (key live-i), 0 = failed */
    uint64_t acked_ms[MAX_LIVE];
    size_t failed;
};

static void *writer(void *arg)
{
    struct live *L = arg;
    uint64_t until = h_now_ms() + 60000; /* bounded even if nobody says stop */
    for (size_t i = 0; i < MAX_LIVE && !L->stop && h_now_ms() < until; i++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "live-%06zu", i);
        snprintf(val, sizeof val, "value-%zu", i);
        uint64_t v = 0;
        int rc = put(L->db, "live", key, val, &v);
        L->version[i] = rc == 0 ? v : 0;
        L->acked_ms[i] = h_now_ms();
        L->failed += rc != 0;
        L->n = i + 1;
    }
    return NULL;
}

/* ---- The manifest --------------------------------------------------------------------------- */

/* The engine version the manifest records for `group` (0 if absent). */
static uint64_t manifest_version(const char *dir, uint32_t group)
{
    char path[H_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    json_error_t je;
    json_t *m = json_load_file(path, 0, &je);
    uint64_t v = 0;
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(m, "groups"), i, g)
    {
        if (json_integer_value(json_object_get(g, "group")) == (json_int_t)group)
            v = (uint64_t)json_integer_value(json_object_get(g, "version"));
    }
    json_decref(m);
    return v;
}

static int copy_tree(const char *from, const char *to)
{
    char cmd[3 * H_PATH_MAX];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", from, to);
    return system(cmd);
}

static int flip_byte(const char *path, long at)
{
    FILE *f = fopen(path, "r+b");
    if (f == NULL)
        return -1;
    int rc = -1;
    if (fseek(f, at, SEEK_SET) == 0) {
        int c = fgetc(f);
        if (c != EOF && fseek(f, at, SEEK_SET) == 0 && fputc(c ^ 0x5a, f) != EOF)
            rc = 0;
    }
    fclose(f);
    return rc;
}

/* Is every shard of the cluster still empty (engine version 0) and the table bare? */
static bool cluster_empty(const struct h_cluster *c, int shards)
{
    struct strata *db = h_open_cluster(c, NULL);
    bool empty = db != NULL;
    struct buf res;
    buf_init(&res);
    for (int g = 1; empty && g <= shards; g++) {
        empty = h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.restore_status\",\"group\":%d}", g) == 0;
        struct h_obj x;
        if (empty && h_obj_parse(&x, &res) == 0) {
            empty = h_map_u64(x.o, "version") == 0;
            h_obj_free(&x);
        }
        buf_reset(&res);
    }
    if (empty && h_exec(db, 0, &res, NULL, "{\"op\":\"branch.list\"}") == 0) {
        struct h_obj x;
        if (h_obj_parse(&x, &res) == 0) {
            empty = x.o->type == MSGPACK_OBJECT_ARRAY && x.o->via.array.size == 1;
            h_obj_free(&x);
        }
    }
    buf_close(&res);
    strata_close(db);
    return empty;
}

static bool wait_shard_leaders(struct h_cluster *c, int shards)
{
    h_status_group = 0;
    int ml = h_wait_leader(c, 15000, -1);
    bool all = ml >= 0;
    for (int g = 1; all && g <= shards; g++) {
        h_status_group = (uint32_t)g;
        all = h_wait_leader(c, 15000, -1) >= 0;
    }
    h_status_group = 1;
    return all;
}

/* The reads compared between the source and the restored cluster. */
#define NREADS 7
static void reads_of(const char *br, uint64_t at, char out[NREADS][256])
{
    snprintf(out[0], 256, "{\"op\":\"kv.scan\",\"branch\":\"%s\",\"limit\":1000}", br);
    snprintf(out[1], 256, "{\"op\":\"kv.history\",\"branch\":\"%s\",\"key\":\"hist\"}", br);
    snprintf(out[2], 256, "{\"op\":\"kv.get\",\"branch\":\"%s\",\"key\":\"hist\",\"at_version\":%llu}",
             br, (unsigned long long)at);
    snprintf(out[3], 256, "{\"op\":\"state.get\",\"branch\":\"%s\",\"cell\":\"cell\"}", br);
    snprintf(out[4], 256, "{\"op\":\"event.range\",\"branch\":\"%s\"}", br);
    snprintf(out[5], 256, "{\"op\":\"event.verify_chain\",\"branch\":\"%s\"}", br);
    snprintf(out[6], 256, "{\"op\":\"branch.info\",\"name\":\"%s\"}", br);
}

void test_backup(void)
{
    static struct h_cluster a, b, small;
    static const char *const extra[] = {"--shards", "3", "--replication-factor", "3", NULL};
    static const char *const extra2[] = {"--shards", "2", NULL};
    h_cluster_init(&a, "src", 3, extra);
    REQUIRE(h_cluster_start(&a) == 0, "source cluster: 3 nodes, 3 shards");
    REQUIRE(wait_shard_leaders(&a, 3), "source: meta and every shard have a leader");
    char ua[512];
    uri_of(&a, ua, sizeof ua);
    struct strata *db = h_open_cluster(&a, NULL);
    REQUIRE(db != NULL, "client on the source");

    /* Branches on every shard: KV with history, a state cell, events; one fork. */
    char names[NBR + 2][16];
    uint64_t hist_v2[NBR + 2] = {0};
    int made = 0;
    for (int i = 0; i < NBR; i++) {
        snprintf(names[i], sizeof names[i], "br-%d", i);
        made += h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"%s\"}", names[i]) == 0;
    }
    made += h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"live\"}") == 0;
    CHECK(made == NBR + 1, "%d branches created", made);
    int writes_ok = 0, writes = 0;
    for (int i = 0; i < NBR; i++) {
        for (int k = 0; k < 20; k++) {
            char key[16], val[32];
            snprintf(key, sizeof key, "k%02d", k);
            snprintf(val, sizeof val, "%s-v%d", names[i], k);
            writes_ok += put(db, names[i], key, val, NULL) == 0;
            writes++;
        }
        for (int h = 1; h <= 4; h++) {
            char val[32];
            snprintf(val, sizeof val, "hist-%d", h);
            uint64_t v = 0;
            writes_ok += put(db, names[i], "hist", val, &v) == 0;
            writes++;
            if (h == 2)
                hist_v2[i] = v;
        }
        writes_ok += h_exec(db, 0, NULL, NULL,
                            "{\"op\":\"state.set\",\"branch\":\"%s\",\"cell\":\"cell\",\"value\":"
                            "{\"n\":%d}}",
                            names[i], i) == 0;
        writes_ok += h_exec(db, 0, NULL, NULL,
                            "{\"op\":\"event.append\",\"branch\":\"%s\",\"type\":\"t\",\"payload\":"
                            "{\"i\":%d}}",
                            names[i], i) == 0;
        writes_ok += h_exec(db, 0, NULL, NULL,
                            "{\"op\":\"event.append\",\"branch\":\"%s\",\"type\":\"u\",\"payload\":"
                            "{\"a\":[1,2,3]}}",
                            names[i]) == 0;
        writes += 3;
        writes_ok += h_exec(db, 0, NULL, NULL, "{\"op\":\"kv.delete\",\"branch\":\"%s\",\"key\":\"k05\"}",
                            names[i]) == 0;
        writes++;
    }
    CHECK(writes_ok == writes, "%d of %d writes acknowledged", writes_ok, writes);
    int fork_ok = h_exec(db, 0, NULL, NULL,
                         "{\"op\":\"branch.fork\",\"source\":\"br-1\",\"name\":\"br-1-fork\"}") == 0;
    snprintf(names[NBR], sizeof names[NBR], "br-1-fork");
    uint64_t fv = 0;
    fork_ok = fork_ok && put(db, "br-1-fork", "hist", "forked", &fv) == 0;
    hist_v2[NBR] = hist_v2[1];
    CHECK(fork_ok, "fork br-1 -> br-1-fork with its own write");
    size_t big = put_big(db, "br-0", BIG_KEYS);
    CHECK(big == BIG_KEYS, "%zu of %d 2 KiB values on br-0", big, BIG_KEYS);
    int nbr = NBR + 1;

    /* Which shard holds "live" (from the table). */
    uint32_t live_shard = 0;
    {
        struct buf res;
        buf_init(&res);
        if (h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.placement\",\"fresh\":true}") == 0) {
            struct h_obj x;
            if (h_obj_parse(&x, &res) == 0) {
                const msgpack_object *t = h_map_get(x.o, "table");
                const msgpack_object *bl = t ? h_map_get(t, "branches") : NULL;
                for (uint32_t k = 0; bl && bl->type == MSGPACK_OBJECT_ARRAY && k < bl->via.array.size;
                     k++) {
                    const msgpack_object *e = &bl->via.array.ptr[k];
                    if (e->type == MSGPACK_OBJECT_ARRAY && e->via.array.size >= 2 &&
                        e->via.array.ptr[0].type == MSGPACK_OBJECT_STR &&
                        e->via.array.ptr[0].via.str.size == 4 &&
                        memcmp(e->via.array.ptr[0].via.str.ptr, "live", 4) == 0)
                        live_shard = (uint32_t)e->via.array.ptr[1].via.u64;
                }
                h_obj_free(&x);
            }
        }
        buf_close(&res);
    }
    REQUIRE(live_shard >= 1 && live_shard <= 3, "branch 'live' is on shard %u", live_shard);

    /* The backup, taken while a writer keeps writing to "live". */
    static struct live L;
    memset(&L, 0, sizeof L);
    L.db = h_open_cluster(&a, NULL);
    REQUIRE(L.db != NULL, "writer client");
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, writer, &L) == 0, "writer thread started");
    h_sleep_ms(300);
    size_t acked_before = L.n;
    char dir[H_PATH_MAX], out[4096];
    snprintf(dir, sizeof dir, "%s/backup-1", h_tmpdir());
    uint64_t t0 = h_now_ms();
    const char *create[] = {"backup", "create", dir, NULL};
    int rc = run_cli(ua, create, 90, out, sizeof out);
    uint64_t t1 = h_now_ms();
    h_sleep_ms(300);
    L.stop = 1;
    pthread_join(th, NULL);
    strata_close(L.db);
    h_note("backup create: %.2f s, writer acked %zu writes (%zu failed); output:\n%s",
           (double)(t1 - t0) / 1000.0, L.n - L.failed, L.failed, out);
    REQUIRE(rc == 0, "strata backup create exits 0");
    CHECK(L.failed == 0, "the writer saw no failure during the backup (%zu)", L.failed);
    uint64_t live_v = manifest_version(dir, live_shard);
    CHECK(live_v > 0, "the manifest records shard %u at version %llu", live_shard,
          (unsigned long long)live_v);
    /* Writes acknowledged before the backup started are in it; the writer went on past
     * it (the backup did not stop writes). */
    size_t in_backup = 0, after_backup = 0, before_missing = 0;
    for (size_t i = 0; i < L.n; i++) {
        if (L.version[i] == 0)
            continue;
        if (L.version[i] <= live_v)
            in_backup++;
        else
            after_backup++;
        if (L.acked_ms[i] <= t0 && L.version[i] > live_v)
            before_missing++;
    }
    CHECK(before_missing == 0, "every write acknowledged before the backup started is in it (%zu "
                               "missing)",
          before_missing);
    CHECK(in_backup > acked_before / 2 && after_backup > 0,
          "writes on both sides of the backup point (%zu in, %zu after)", in_backup, after_backup);
    const char *verify[] = {"backup", "verify", dir, NULL};
    CHECK(run_cli(NULL, verify, 30, out, sizeof out) == 0, "backup verify passes: %s", out);

    /* Bad backups, checked offline and against an empty target: refused, nothing changes. */
    h_cluster_init(&b, "dst", 3, extra);
    REQUIRE(h_cluster_start(&b) == 0, "target cluster: 3 nodes, 3 shards");
    REQUIRE(wait_shard_leaders(&b, 3), "target: meta and every shard have a leader");
    char ub[512];
    uri_of(&b, ub, sizeof ub);
    char bad[H_PATH_MAX], path[H_PATH_MAX + 64];
    snprintf(bad, sizeof bad, "%s/backup-corrupt", h_tmpdir());
    REQUIRE(copy_tree(dir, bad) == 0, "copy of the backup");
    snprintf(path, sizeof path, "%s/group-%u.snap", bad, live_shard);
    REQUIRE(flip_byte(path, 100) == 0, "one byte of %s flipped", path);
    const char *restore_bad[] = {"backup", "restore", bad, NULL};
    rc = run_cli(ub, restore_bad, 60, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "SHA-256") != NULL, "a corrupt file is refused (rc %d): %s", rc,
          out);
    CHECK(cluster_empty(&b, 3), "the target is unchanged after the refused restore");
    /* Truncated. */
    flip_byte(path, 100); /* undo */
    REQUIRE(truncate(path, 50) == 0, "truncate %s", path);
    rc = run_cli(ub, restore_bad, 60, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "truncated") != NULL, "a truncated file is refused: %s", out);
    /* Future format version. */
    char cmd[3 * H_PATH_MAX];
    h_remove_tree(bad);
    copy_tree(dir, bad);
    snprintf(cmd, sizeof cmd, "sed -i 's/\"format_version\": 1/\"format_version\": 99/' '%s/manifest.json'",
             bad);
    CHECK(system(cmd) == 0, "manifest edited");
    rc = run_cli(ub, restore_bad, 60, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "format version") != NULL, "a future format is refused: %s", out);
    /* No manifest. */
    snprintf(path, sizeof path, "%s/manifest.json", bad);
    unlink(path);
    rc = run_cli(ub, restore_bad, 60, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "manifest.json") != NULL, "a missing manifest is refused: %s",
          out);
    CHECK(cluster_empty(&b, 3), "the target is still empty");

    /* A restore interrupted half-way (begin and one chunk staged on the replicas, no
     * install) is discarded by the next run's begin. Chunks out of order and installs of
     * incomplete data are refused. */
    {
        struct strata *dbt = h_open_cluster(&b, NULL);
        REQUIRE(dbt != NULL, "client on the target");
        struct err e1;
        int r1 = h_exec(dbt, 0, NULL, &e1,
                        "{\"op\":\"cluster.restore_begin\",\"group\":%u,\"size\":100,"
                        "\"sha256\":\"%064d\"}",
                        live_shard, 0);
        CHECK(r1 == 0, "a restore begun by hand (%s %s)", err_name(r1), e1.msg);
        int r2 = h_exec(dbt, 0, NULL, &e1,
                        "{\"op\":\"cluster.restore_chunk\",\"group\":%u,\"offset\":0,"
                        "\"data\":{\"$bytes\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}}",
                        live_shard);
        CHECK(r2 == 0, "one chunk staged (%s %s)", err_name(r2), e1.msg);
        int r3 = h_exec(dbt, 0, NULL, &e1,
                        "{\"op\":\"cluster.restore_chunk\",\"group\":%u,\"offset\":60,"
                        "\"data\":{\"$bytes\":\"AAAA\"}}",
                        live_shard);
        CHECK(r3 == STRATA_INVALID_ARGUMENT, "a chunk past a gap is refused (%s %s)", err_name(r3),
              e1.msg);
        struct buf sres;
        buf_init(&sres);
        int r4 = h_exec(dbt, 0, &sres, &e1, "{\"op\":\"cluster.restore_status\",\"group\":%u}",
                        live_shard);
        struct h_obj so;
        bool staged = r4 == 0 && h_obj_parse(&so, &sres) == 0;
        if (staged) {
            staged = h_map_u64(so.o, "staged") == 24;
            h_obj_free(&so);
        }
        buf_close(&sres);
        CHECK(staged, "the leader reports 24 bytes staged");
        int r5 = h_exec(dbt, 0, NULL, &e1, "{\"op\":\"cluster.restore_install\",\"group\":%u}",
                        live_shard);
        CHECK(r5 == STRATA_INVALID_ARGUMENT && strstr(e1.msg, "incomplete") != NULL,
              "installing an incomplete restore is refused (%s %s)", err_name(r5), e1.msg);
        int r6 = h_exec(dbt, 0, NULL, &e1,
                        "{\"op\":\"cluster.restore_begin\",\"group\":%u,\"size\":100,"
                        "\"sha256\":\"%064d\"}",
                        live_shard, 0);
        int r7 = h_exec(dbt, 0, NULL, &e1,
                        "{\"op\":\"cluster.restore_chunk\",\"group\":%u,\"offset\":0,"
                        "\"data\":{\"$bytes\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}}",
                        live_shard);
        CHECK(r6 == 0 && r7 == 0, "staged again, then abandoned (the CLI's run must discard it)");
        CHECK(h_exec(dbt, 0, NULL, &e1, "{\"op\":\"cluster.restore_bogus\",\"group\":1}") ==
                  STRATA_INVALID_ARGUMENT,
              "an unknown restore command is refused");
        int r8 = h_exec(dbt, 0, NULL, &e1,
                        "{\"op\":\"cluster.backup_read\",\"node\":\"127.0.0.1:1\",\"id\":1,"
                        "\"offset\":0,\"len\":10}");
        CHECK(r8 == STRATA_INVALID_ARGUMENT, "a read relayed to a non-member address is refused "
                                             "(%s %s)",
              err_name(r8), e1.msg);
        strata_close(dbt);
        CHECK(cluster_empty(&b, 3), "nothing was installed");
    }

    /* The restore. */
    const char *restore[] = {"backup", "restore", dir, NULL};
    t0 = h_now_ms();
    rc = run_cli(ub, restore, 120, out, sizeof out);
    h_note("backup restore: %.2f s; output:\n%s", (double)(h_now_ms() - t0) / 1000.0, out);
    REQUIRE(rc == 0, "strata backup restore exits 0");

    /* Every read answers byte for byte as on the source (whose static branches did not
     * change since the backup). */
    struct strata *dbb = h_open_cluster(&b, NULL);
    REQUIRE(dbb != NULL, "client on the target");
    struct buf ra, rb;
    buf_init(&ra);
    buf_init(&rb);
    int same = 0, total = 0;
    for (int i = 0; i < nbr; i++) {
        char reads[NREADS][256];
        reads_of(names[i], hist_v2[i], reads);
        for (int r = 0; r < NREADS; r++) {
            int ca = read_raw(db, &ra, reads[r]), cb = read_raw(dbb, &rb, reads[r]);
            bool eq = ca == 0 && cb == 0 && ra.len == rb.len && memcmp(ra.data, rb.data, ra.len) == 0;
            same += eq;
            total++;
            if (!eq)
                h_note("differs: %s (source %s, target %s)", reads[r], err_name(ca), err_name(cb));
        }
    }
    CHECK(same == total, "%d of %d reads identical on source and restored cluster", same, total);
    char v[64];
    struct err e;
    rc = h_get_str(dbb, 0, "br-2", "hist", v, sizeof v, &e);
    CHECK(rc == 0 && strcmp(v, "hist-4") == 0, "br-2 hist = %s", v);
    buf_reset(&rb);
    rc = h_exec(dbb, 0, &rb, &e, "{\"op\":\"kv.get\",\"branch\":\"br-2\",\"key\":\"hist\",\"at_version\":%llu}",
                (unsigned long long)hist_v2[2]);
    struct h_obj x;
    bool tt = rc == 0 && h_obj_parse(&x, &rb) == 0;
    if (tt) {
        const msgpack_object *val = h_map_get(x.o, "value");
        tt = val && val->type == MSGPACK_OBJECT_STR && val->via.str.size == 6 &&
             memcmp(val->via.str.ptr, "hist-2", 6) == 0;
        h_obj_free(&x);
    }
    CHECK(tt, "time travel on the restored cluster: br-2 hist at version %llu = hist-2",
          (unsigned long long)hist_v2[2]);
    rc = read_raw(dbb, &rb, "{\"op\":\"kv.count\",\"branch\":\"br-0\",\"prefix\":\"big-\"}");
    CHECK(rc == 0, "the big branch is readable");

    /* The writer's writes: exactly those up to the backed-up version. */
    size_t present = 0, wrong = 0;
    for (size_t i = 0; i < L.n; i++) {
        if (L.version[i] == 0)
            continue;
        char key[32], want[32];
        snprintf(key, sizeof key, "live-%06zu", i);
        snprintf(want, sizeof want, "value-%zu", i);
        rc = h_get_str(dbb, 0, "live", key, v, sizeof v, &e);
        bool there = rc == 0 && strcmp(v, want) == 0;
        present += there;
        if (there != (L.version[i] <= live_v) || (rc != 0 && rc != STRATA_NOT_FOUND))
            wrong++;
    }
    CHECK(wrong == 0 && present == in_backup,
          "restored 'live' holds exactly the %zu writes up to version %llu (%zu present, %zu wrong)",
          in_backup, (unsigned long long)live_v, present, wrong);
    /* The restored cluster takes new writes and new branches. */
    uint64_t nv = 0;
    rc = put(dbb, "live", "after-restore", "x", &nv);
    CHECK(rc == 0 && nv == live_v + 1,
          "a write after the restore gets version %llu (want %llu)", (unsigned long long)nv,
          (unsigned long long)live_v + 1);
    CHECK(h_exec(dbb, 0, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"new-after\"}") == 0,
          "a new branch on the restored cluster");

    /* A second restore onto this (now non-empty) cluster is refused, nothing changes. */
    rc = run_cli(ub, restore, 60, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "not empty") != NULL, "restore onto a non-empty cluster is "
                                                         "refused: %s",
          out);
    rc = h_get_str(dbb, 0, "live", "after-restore", v, sizeof v, &e);
    CHECK(rc == 0 && strcmp(v, "x") == 0, "the target's own write is still there");
    buf_close(&ra);
    buf_close(&rb);
    strata_close(dbb);
    strata_close(db);

    /* A target with fewer shards than the backup is refused before anything is sent. */
    h_cluster_init(&small, "small", 1, extra2);
    REQUIRE(h_cluster_start(&small) == 0, "a 1-node cluster with 2 shards");
    REQUIRE(wait_shard_leaders(&small, 2), "its groups have a leader");
    char us[512];
    uri_of(&small, us, sizeof us);
    rc = run_cli(us, restore, 60, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "shards") != NULL, "too few shards is refused: %s", out);
    CHECK(cluster_empty(&small, 2), "the small cluster is unchanged");
}
