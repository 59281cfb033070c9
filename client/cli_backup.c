/* `strata backup create | restore | verify DIR`: a consistent, checksummed copy of every
 * shard of a running cluster, and its restore into a new one. Design and format:
 * docs/operations.md "Backup and restore". */
#include "cli.h"
#include "storage.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <msgpack.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* What the backup commands need of the CLI's session. */
struct bk_session {
    struct strata *db;
    bool json;
};

/* ---- backup create / restore / verify ---------------------------------------------------
 * A backup is a directory: group-G.snap (one engine snapshot per group, docs/storage.md
 * "Snapshots") and manifest.json (format, per-group size / SHA-256 / raft index / engine
 * version, the branch -> shard map). docs/operations.md "Backup and restore". */

#define BK_FORMAT "stratadb-backup"
#define BK_FORMAT_VERSION 1
#define BK_CHUNK (1u << 20) /* bytes per read and per restore chunk (one log entry each) */
#define BK_WINDOW 4         /* reads or restore chunks in flight per group */
#define BK_ATTEMPTS 6       /* resumes of one group's restore after a failure */

struct bk_group {
    uint32_t group;
    uint64_t bytes, index, version;
    int64_t last_ts;
    char sha[65];
    char node[256]; /* create: the node holding the snapshot, and its id there */
    uint64_t id;
    double stall_ms;
};

struct bk_branch {
    char name[129];
    uint32_t shard;
};

struct bk_set {
    struct bk_group *g;
    size_t ng;
    struct bk_branch *b;
    size_t nb;
    uint32_t nshards;
    uint64_t epoch;
};

static void bk_set_free(struct bk_set *s)
{
    sm_free(s->g);
    sm_free(s->b);
    memset(s, 0, sizeof *s);
}

static double bk_secs(uint64_t t0_ns)
{
    return (double)(clock_mono_ns() - t0_ns) / 1e9;
}

static void bk_hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
}

/* DIR/NAME into out (backup_main keeps DIR short enough). */
static void bk_path(char *out, size_t cap, const char *dir, const char *name)
{
    if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap)
        out[0] = '\0';
}

static const msgpack_object *bk_get(const msgpack_object *m, const char *key)
{
    size_t n = strlen(key);
    for (uint32_t i = 0; m && m->type == MSGPACK_OBJECT_MAP && i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

static uint64_t bk_u64(const msgpack_object *m, const char *key)
{
    const msgpack_object *o = bk_get(m, key);
    return o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o->via.u64 : 0;
}

static void bk_str(const msgpack_object *m, const char *key, char *out, size_t cap)
{
    const msgpack_object *o = bk_get(m, key);
    if (o && o->type == MSGPACK_OBJECT_STR)
        snprintf(out, cap, "%.*s", (int)o->via.str.size, o->via.str.ptr);
    else
        out[0] = '\0';
}

static void bk_pstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* Run the encoded command; on success the decoded result is in *res (zone-backed by
 * `raw`, which keeps the bytes). Prints the error and returns EXIT_ERROR on failure. */
static int bk_run(struct bk_session *s, const struct buf *cmd, struct buf *raw, msgpack_zone *z,
                  msgpack_object *res, const char *what)
{
    struct err e;
    err_clear(&e);
    buf_reset(raw);
    if (cmd->len == 0)
        return oom();
    int rc = strata_exec(s->db, cmd->data, cmd->len, raw, &e);
    if (rc)
        return report(err_name(rc), "%s: %s", what, e.msg[0] ? e.msg : err_message(rc));
    size_t off = 0;
    msgpack_zone_clear(z);
    if (msgpack_unpack((const char *)raw->data, raw->len, &off, z, res) != MSGPACK_UNPACK_SUCCESS)
        return report("PROTOCOL_ERROR", "%s: undecodable answer", what);
    return 0;
}

/* Start a command {"op": op, ...}: the caller packs `nargs` more entries. */
static void bk_op(msgpack_packer *pk, const char *op, uint32_t nargs)
{
    msgpack_pack_map(pk, 1 + nargs);
    bk_pstr(pk, "op");
    bk_pstr(pk, op);
}

/* One request and its answer: c->pk packs into c->cmd; bk_call_run decodes into c->o. */
struct bk_call {
    struct buf cmd, raw;
    msgpack_zone z;
    msgpack_object o;
    msgpack_packer pk;
};

/* `c` must stay where it is until bk_call_end (c->pk points into it). */
static void bk_call_begin(struct bk_call *c, const char *op, uint32_t nargs)
{
    buf_init(&c->cmd);
    buf_init(&c->raw);
    msgpack_zone_init(&c->z, 1024);
    msgpack_packer_init(&c->pk, &c->cmd, pk_write);
    bk_op(&c->pk, op, nargs);
}

static int bk_call_run(struct bk_session *s, struct bk_call *c, const char *what)
{
    return bk_run(s, &c->cmd, &c->raw, &c->z, &c->o, what);
}

static void bk_call_end(struct bk_call *c)
{
    buf_close(&c->cmd);
    buf_close(&c->raw);
    msgpack_zone_destroy(&c->z);
}

/* The cluster's placement (fresh from the meta leader): shard ids and branches. */
static int bk_placement(struct bk_session *s, struct bk_set *set)
{
    struct bk_call c;
    bk_call_begin(&c, "cluster.placement", 1);
    bk_pstr(&c.pk, "fresh");
    msgpack_pack_true(&c.pk);
    int rc = bk_call_run(s, &c, "reading the placement table");
    if (rc)
        goto out;
    const msgpack_object *t = bk_get(&c.o, "table");
    const msgpack_object *sh = bk_get(t, "shards"), *br = bk_get(t, "branches");
    if (!sh || sh->type != MSGPACK_OBJECT_ARRAY || !br || br->type != MSGPACK_OBJECT_ARRAY) {
        rc = report("PROTOCOL_ERROR", "the placement table has no shards or branches");
        goto out;
    }
    set->epoch = bk_u64(&c.o, "epoch");
    set->nshards = sh->via.array.size;
    set->b = sm_calloc(br->via.array.size + 1, sizeof *set->b);
    if (set->b == NULL) {
        rc = oom();
        goto out;
    }
    for (uint32_t i = 0; i < br->via.array.size; i++) {
        const msgpack_object *e = &br->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size < 2 ||
            e->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
            e->via.array.ptr[0].via.str.size >= sizeof set->b[0].name ||
            e->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            rc = report("PROTOCOL_ERROR", "malformed branch entry in the placement table");
            goto out;
        }
        struct bk_branch *b = &set->b[set->nb++];
        snprintf(b->name, sizeof b->name, "%.*s", (int)e->via.array.ptr[0].via.str.size,
                 e->via.array.ptr[0].via.str.ptr);
        b->shard = (uint32_t)e->via.array.ptr[1].via.u64;
    }
out:
    bk_call_end(&c);
    return rc;
}

static int bk_fsync_path(const char *path, bool dir)
{
    int fd = open(path, (dir ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Ask group g's leader to snapshot it (behind a read barrier). */
static int bk_take(struct bk_session *s, struct bk_group *g)
{
    struct bk_call c;
    bk_call_begin(&c, "cluster.backup", 1);
    bk_pstr(&c.pk, "group");
    msgpack_pack_uint32(&c.pk, g->group);
    char what[64];
    snprintf(what, sizeof what, "snapshot of group %u", g->group);
    int rc = bk_call_run(s, &c, what);
    if (rc == 0) {
        g->bytes = bk_u64(&c.o, "size");
        g->index = bk_u64(&c.o, "index");
        g->version = bk_u64(&c.o, "version");
        const msgpack_object *ts = bk_get(&c.o, "last_ts");
        g->last_ts = ts && ts->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)ts->via.u64
                     : ts && ts->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? ts->via.i64
                                                                          : 0;
        g->id = bk_u64(&c.o, "id");
        g->stall_ms = (double)bk_u64(&c.o, "stall_us") / 1000.0;
        bk_str(&c.o, "sha256", g->sha, sizeof g->sha);
        bk_str(&c.o, "node", g->node, sizeof g->node);
        if (strlen(g->sha) != 64 || g->node[0] == '\0' || g->id == 0)
            rc = report("PROTOCOL_ERROR", "%s: incomplete answer", what);
    }
    bk_call_end(&c);
    return rc;
}

static void bk_file_cmd(struct buf *cmd, const struct bk_group *g, bool read, uint64_t off)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd, pk_write);
    bk_op(&pk, read ? "cluster.backup_read" : "cluster.backup_done", read ? 4 : 2);
    bk_pstr(&pk, "node");
    bk_pstr(&pk, g->node);
    bk_pstr(&pk, "id");
    msgpack_pack_uint64(&pk, g->id);
    if (read) {
        bk_pstr(&pk, "offset");
        msgpack_pack_uint64(&pk, off);
        bk_pstr(&pk, "len");
        msgpack_pack_uint32(&pk, BK_CHUNK);
    }
}

/* Read group g's snapshot into `path` in BK_CHUNK pieces (BK_WINDOW in flight), checking
 * size and SHA-256 against what the server computed, then release it on the server. */
static int bk_download(struct bk_session *s, const struct bk_group *g, const char *path)
{
    int rc = 0;
    FILE *fp = fopen(path, "wbx");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    struct buf cmds[BK_WINDOW], res[BK_WINDOW];
    struct err errs[BK_WINDOW];
    int codes[BK_WINDOW];
    for (int i = 0; i < BK_WINDOW; i++) {
        buf_init(&cmds[i]);
        buf_init(&res[i]);
    }
    if (fp == NULL) {
        rc = report("INVALID_ARGUMENT", "cannot create %s: %s", path, strerror(errno));
        goto out;
    }
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        rc = oom();
        goto out;
    }
    uint64_t off = 0;
    while (off < g->bytes) {
        const uint8_t *pc[BK_WINDOW];
        size_t pl[BK_WINDOW];
        int n = 0;
        for (; n < BK_WINDOW && off + (uint64_t)n * BK_CHUNK < g->bytes; n++) {
            buf_reset(&cmds[n]);
            buf_reset(&res[n]);
            bk_file_cmd(&cmds[n], g, true, off + (uint64_t)n * BK_CHUNK);
            pc[n] = cmds[n].data;
            pl[n] = cmds[n].len;
        }
        if (strata_exec_many(s->db, pc, pl, (size_t)n, 0, res, codes, errs)) {
            rc = oom();
            goto out;
        }
        for (int i = 0; i < n; i++) {
            if (codes[i]) {
                rc = report(err_name(codes[i]), "reading group %u at offset %llu: %s", g->group,
                            (unsigned long long)(off + (uint64_t)i * BK_CHUNK), errs[i].msg);
                goto out;
            }
            msgpack_zone z;
            msgpack_zone_init(&z, 64);
            msgpack_object o;
            size_t p = 0;
            bool ok = msgpack_unpack((const char *)res[i].data, res[i].len, &p, &z, &o) ==
                          MSGPACK_UNPACK_SUCCESS &&
                      o.type == MSGPACK_OBJECT_BIN &&
                      (o.via.bin.size == BK_CHUNK ||
                       off + (uint64_t)i * BK_CHUNK + o.via.bin.size == g->bytes);
            if (ok && (fwrite(o.via.bin.ptr, 1, o.via.bin.size, fp) != o.via.bin.size ||
                       EVP_DigestUpdate(md, o.via.bin.ptr, o.via.bin.size) != 1)) {
                msgpack_zone_destroy(&z);
                rc = report("INTERNAL", "writing %s failed: %s", path, strerror(errno));
                goto out;
            }
            msgpack_zone_destroy(&z);
            if (!ok) {
                rc = report("PROTOCOL_ERROR", "group %u: a chunk at offset %llu has a wrong size",
                            g->group, (unsigned long long)(off + (uint64_t)i * BK_CHUNK));
                goto out;
            }
        }
        off += (uint64_t)n * BK_CHUNK;
    }
    uint8_t sha[32];
    unsigned ml = 0;
    char hex[65];
    if (EVP_DigestFinal_ex(md, sha, &ml) != 1 || ml != 32) {
        rc = oom();
        goto out;
    }
    bk_hex(sha, 32, hex);
    if (strcmp(hex, g->sha) != 0) {
        rc = report("INTERNAL", "group %u: the bytes read do not match the snapshot's SHA-256",
                    g->group);
        goto out;
    }
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        rc = report("INTERNAL", "writing %s failed: %s", path, strerror(errno));
        goto out;
    }
out:
    if (fp && fclose(fp) != 0 && rc == 0)
        rc = report("INTERNAL", "writing %s failed: %s", path, strerror(errno));
    EVP_MD_CTX_free(md);
    for (int i = 0; i < BK_WINDOW; i++) {
        buf_close(&cmds[i]);
        buf_close(&res[i]);
    }
    return rc;
}

/* Release the server's copy (best effort: it expires by itself). */
static void bk_release(struct bk_session *s, const struct bk_group *g)
{
    struct buf cmd, raw;
    buf_init(&cmd);
    buf_init(&raw);
    bk_file_cmd(&cmd, g, false, 0);
    struct err e;
    strata_exec(s->db, cmd.data, cmd.len, &raw, &e);
    buf_close(&cmd);
    buf_close(&raw);
}

static int bk_write_manifest(const char *dir, const struct bk_set *set, int64_t created_us)
{
    json_t *m = json_object(), *groups = json_array(), *branches = json_array();
    int rc = 0;
    if (!m || !groups || !branches) {
        json_decref(m);
        json_decref(groups);
        json_decref(branches);
        return oom();
    }
    char when[32];
    time_t secs = (time_t)(created_us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_object_set_new(m, "format", json_string(BK_FORMAT));
    json_object_set_new(m, "format_version", json_integer(BK_FORMAT_VERSION));
    json_object_set_new(m, "created_at", json_string(when));
    json_object_set_new(m, "created_at_us", json_integer(created_us));
    json_object_set_new(m, "placement_epoch", json_integer((json_int_t)set->epoch));
    json_object_set_new(m, "shards", json_integer(set->nshards));
    for (size_t i = 0; i < set->ng; i++) {
        const struct bk_group *g = &set->g[i];
        char file[32];
        snprintf(file, sizeof file, "group-%u.snap", g->group);
        json_t *j = json_object();
        json_object_set_new(j, "group", json_integer(g->group));
        json_object_set_new(j, "role", json_string(g->group == 0 ? "meta" : "shard"));
        json_object_set_new(j, "file", json_string(file));
        json_object_set_new(j, "bytes", json_integer((json_int_t)g->bytes));
        json_object_set_new(j, "sha256", json_string(g->sha));
        json_object_set_new(j, "raft_index", json_integer((json_int_t)g->index));
        json_object_set_new(j, "version", json_integer((json_int_t)g->version));
        json_object_set_new(j, "last_ts", json_integer(g->last_ts));
        json_array_append_new(groups, j);
    }
    json_object_set_new(m, "groups", groups);
    for (size_t i = 0; i < set->nb; i++) {
        json_t *j = json_object();
        json_object_set_new(j, "name", json_string(set->b[i].name));
        json_object_set_new(j, "shard", json_integer(set->b[i].shard));
        json_array_append_new(branches, j);
    }
    json_object_set_new(m, "branches", branches);
    char path[4200];
    bk_path(path, sizeof path, dir, "manifest.json");
    if (json_dump_file(m, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0 ||
        bk_fsync_path(path, false) != 0)
        rc = report("INTERNAL", "cannot write %s: %s", path, strerror(errno));
    json_decref(m);
    return rc;
}

static void bk_remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[4500];
        bk_path(p, sizeof p, dir, e->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* strata backup create DIR */
static int bk_create(struct bk_session *s, const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) == 0)
        return report("ALREADY_EXISTS", "%s already exists (a backup goes to a new directory)",
                      dir);
    /* Written beside DIR under a temporary name, renamed into place when complete: DIR
     * either holds a whole, verified backup or does not exist. */
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%ld", dir, (long)getpid()) >= (int)sizeof tmp)
        return report("INVALID_ARGUMENT", "directory name too long");
    if (mkdir(tmp, 0700) != 0)
        return report("INVALID_ARGUMENT", "cannot create %s: %s", tmp, strerror(errno));
    uint64_t t0 = clock_mono_ns();
    int64_t created_us = clock_now_us();
    struct bk_set before = {0}, after = {0};
    int rc = bk_placement(s, &before);
    if (rc)
        goto out;
    before.ng = before.nshards + 1;
    before.g = sm_calloc(before.ng, sizeof *before.g);
    if (before.g == NULL) {
        rc = oom();
        goto out;
    }
    /* Shards first, the meta group last; every snapshot is taken before any is read, so
     * the shards' points in time lie close together. */
    for (size_t i = 0; i < before.ng; i++)
        before.g[i].group = i < before.nshards ? (uint32_t)(i + 1) : 0;
    size_t taken = 0;
    for (; taken < before.ng; taken++)
        if ((rc = bk_take(s, &before.g[taken])))
            goto release;
    uint64_t total = 0;
    for (size_t i = 0; i < before.ng; i++) {
        struct bk_group *g = &before.g[i];
        char path[4300], name[32];
        snprintf(name, sizeof name, "group-%u.snap", g->group);
        bk_path(path, sizeof path, tmp, name);
        uint64_t t1 = clock_mono_ns();
        if ((rc = bk_download(s, g, path)))
            goto release;
        total += g->bytes;
        fprintf(stderr,
                "group %u: %llu bytes, version %llu, raft index %llu, snapshot stall %.1f ms, "
                "read in %.2f s\n",
                g->group, (unsigned long long)g->bytes, (unsigned long long)g->version,
                (unsigned long long)g->index, g->stall_ms, bk_secs(t1));
    }
    /* The table after the snapshots: a branch is assigned before it is created, so every
     * branch in a snapshot is in this table. */
    if ((rc = bk_placement(s, &after)))
        goto release;
    if (after.nshards != before.nshards) {
        rc = report("CONFLICT", "the number of shards changed during the backup (%u -> %u)",
                    before.nshards, after.nshards);
        goto release;
    }
    after.g = before.g;
    after.ng = before.ng;
    before.g = NULL;
    if ((rc = bk_write_manifest(tmp, &after, created_us)))
        goto release;
    if (bk_fsync_path(tmp, true) != 0 || rename(tmp, dir) != 0) {
        rc = report("INTERNAL", "cannot move %s to %s: %s", tmp, dir, strerror(errno));
        goto release;
    }
    {
        /* The rename itself is durable once the parent directory is synced. */
        char parent[4200];
        if (snprintf(parent, sizeof parent, "%s", dir) >= (int)sizeof parent)
            parent[0] = '\0';
        char *slash = strrchr(parent, '/');
        if (slash == parent)
            slash[1] = '\0';
        else if (slash)
            *slash = '\0';
        else
            strcpy(parent, ".");
        bk_fsync_path(parent, true);
    }
    double secs = bk_secs(t0);
    if (s->json)
        printf("{\"dir\":\"%s\",\"groups\":%zu,\"branches\":%zu,\"bytes\":%llu,\"seconds\":%.3f}\n",
               dir, after.ng, after.nb, (unsigned long long)total, secs);
    else
        printf("OK backup %s: %zu groups, %zu branches, %llu bytes in %.2f s (%.1f MB/s)\n", dir,
               after.ng, after.nb, (unsigned long long)total, secs,
               secs > 0 ? (double)total / 1e6 / secs : 0.0);
release:
    for (size_t i = 0; i < taken && before.g; i++)
        bk_release(s, &before.g[i]);
    for (size_t i = 0; i < after.ng && after.g; i++)
        bk_release(s, &after.g[i]);
out:
    if (rc)
        bk_remove_tree(tmp);
    bk_set_free(&before);
    bk_set_free(&after);
    return rc;
}

/* Read and check DIR/manifest.json and every file it names (size and SHA-256). */
static int bk_load(const char *dir, struct bk_set *set)
{
    char path[4200];
    bk_path(path, sizeof path, dir, "manifest.json");
    json_error_t je;
    json_t *m = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    int rc = 0;
    if (m == NULL)
        return report("INVALID_ARGUMENT", "%s: %s", path, je.text);
    json_t *fmt = json_object_get(m, "format"), *ver = json_object_get(m, "format_version"),
           *groups = json_object_get(m, "groups"), *branches = json_object_get(m, "branches"),
           *shards = json_object_get(m, "shards");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), BK_FORMAT) != 0) {
        rc = report("INVALID_ARGUMENT", "%s is not a StrataDB backup manifest", path);
        goto out;
    }
    if (!json_is_integer(ver) || json_integer_value(ver) != BK_FORMAT_VERSION) {
        if (json_is_integer(ver))
            rc = report("INVALID_ARGUMENT",
                        "%s: unsupported backup format version %lld (this strata reads %d)", path,
                        (long long)json_integer_value(ver), BK_FORMAT_VERSION);
        else
            rc = report("INVALID_ARGUMENT", "%s: 'format_version' is missing", path);
        goto out;
    }
    if (!json_is_array(groups) || !json_is_array(branches) || !json_is_integer(shards) ||
        json_integer_value(shards) < 1 || json_integer_value(shards) > 256) {
        rc = report("INVALID_ARGUMENT", "%s: 'groups', 'branches' or 'shards' missing or invalid",
                    path);
        goto out;
    }
    set->nshards = (uint32_t)json_integer_value(shards);
    set->g = sm_calloc(json_array_size(groups) + 1, sizeof *set->g);
    set->b = sm_calloc(json_array_size(branches) + 1, sizeof *set->b);
    if (set->g == NULL || set->b == NULL) {
        rc = oom();
        goto out;
    }
    size_t i;
    json_t *e;
    json_array_foreach(groups, i, e)
    {
        json_t *gid = json_object_get(e, "group"), *file = json_object_get(e, "file"),
               *bytes = json_object_get(e, "bytes"), *sha = json_object_get(e, "sha256"),
               *version = json_object_get(e, "version"), *index = json_object_get(e, "raft_index");
        char want[32];
        if (json_is_integer(gid))
            snprintf(want, sizeof want, "group-%lld.snap", (long long)json_integer_value(gid));
        /* The file name is fixed by the group: a manifest cannot point outside DIR. */
        if (!json_is_integer(gid) || json_integer_value(gid) < 0 ||
            json_integer_value(gid) > (json_int_t)set->nshards || !json_is_string(file) ||
            strcmp(json_string_value(file), want) != 0 || !json_is_integer(bytes) ||
            json_integer_value(bytes) < 0 || !json_is_string(sha) ||
            strlen(json_string_value(sha)) != 64 || !json_is_integer(version) ||
            json_integer_value(version) < 0) {
            rc = report("INVALID_ARGUMENT", "%s: group entry %zu is invalid", path, i);
            goto out;
        }
        struct bk_group *g = &set->g[set->ng++];
        g->group = (uint32_t)json_integer_value(gid);
        g->bytes = (uint64_t)json_integer_value(bytes);
        g->version = (uint64_t)json_integer_value(version);
        g->index = json_is_integer(index) ? (uint64_t)json_integer_value(index) : 0;
        snprintf(g->sha, sizeof g->sha, "%s", json_string_value(sha));
        for (size_t k = 0; k + 1 < set->ng; k++)
            if (set->g[k].group == g->group) {
                rc = report("INVALID_ARGUMENT", "%s: group %u appears twice", path, g->group);
                goto out;
            }
    }
    json_array_foreach(branches, i, e)
    {
        json_t *name = json_object_get(e, "name"), *shard = json_object_get(e, "shard");
        if (!json_is_string(name) || strlen(json_string_value(name)) == 0 ||
            strlen(json_string_value(name)) > 128 || !json_is_integer(shard) ||
            json_integer_value(shard) < 1 || json_integer_value(shard) > (json_int_t)set->nshards) {
            rc = report("INVALID_ARGUMENT", "%s: branch entry %zu is invalid", path, i);
            goto out;
        }
        struct bk_branch *b = &set->b[set->nb++];
        snprintf(b->name, sizeof b->name, "%s", json_string_value(name));
        b->shard = (uint32_t)json_integer_value(shard);
    }
    /* Every byte of every file, before anything is sent anywhere. */
    for (size_t k = 0; k < set->ng; k++) {
        struct bk_group *g = &set->g[k];
        char fpath[4300], name[32];
        snprintf(name, sizeof name, "group-%u.snap", g->group);
        bk_path(fpath, sizeof fpath, dir, name);
        FILE *fp = fopen(fpath, "rb");
        if (fp == NULL) {
            rc = report("NOT_FOUND", "%s: %s", fpath, strerror(errno));
            goto out;
        }
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        uint8_t *chunk = sm_malloc(BK_CHUNK), sha[32];
        uint64_t n = 0;
        size_t got;
        bool ok = md && chunk && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
        while (ok && (got = fread(chunk, 1, BK_CHUNK, fp)) > 0) {
            ok = EVP_DigestUpdate(md, chunk, got) == 1;
            n += got;
        }
        unsigned ml = 0;
        ok = ok && !ferror(fp) && EVP_DigestFinal_ex(md, sha, &ml) == 1 && ml == 32;
        fclose(fp);
        EVP_MD_CTX_free(md);
        sm_free(chunk);
        char hex[65];
        if (!ok) {
            rc = report("INTERNAL", "cannot read %s", fpath);
            goto out;
        }
        bk_hex(sha, 32, hex);
        if (n != g->bytes) {
            rc = report("INVALID_ARGUMENT", "%s is %llu bytes, the manifest says %llu (truncated?)",
                        fpath, (unsigned long long)n, (unsigned long long)g->bytes);
            goto out;
        }
        if (strcmp(hex, g->sha) != 0) {
            rc = report("INVALID_ARGUMENT", "%s does not match its SHA-256 in the manifest (corrupt)",
                        fpath);
            goto out;
        }
    }
out:
    json_decref(m);
    return rc;
}

/* restore_status of group g on the target: version, staged bytes, digest on request. */
static int bk_status(struct bk_session *s, uint32_t gid, bool digest, uint64_t *version, char *hex,
                     bool *staging, uint64_t *staged)
{
    struct bk_call c;
    bk_call_begin(&c, "cluster.restore_status", 2);
    bk_pstr(&c.pk, "group");
    msgpack_pack_uint32(&c.pk, gid);
    bk_pstr(&c.pk, "digest");
    if (digest)
        msgpack_pack_true(&c.pk);
    else
        msgpack_pack_false(&c.pk);
    char what[64];
    snprintf(what, sizeof what, "status of group %u", gid);
    int rc = bk_call_run(s, &c, what);
    if (rc == 0) {
        *version = bk_u64(&c.o, "version");
        if (hex)
            bk_str(&c.o, "digest", hex, 65);
        const msgpack_object *st = bk_get(&c.o, "staging");
        *staging = st && st->type == MSGPACK_OBJECT_BOOLEAN && st->via.boolean;
        *staged = bk_u64(&c.o, "staged");
    }
    bk_call_end(&c);
    return rc;
}

static void bk_step_cmd(struct buf *cmd, const char *op, uint32_t gid, const struct bk_group *g,
                        uint64_t off, const uint8_t *data, size_t len)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd, pk_write);
    bool begin = strcmp(op, "cluster.restore_begin") == 0,
         chunk = strcmp(op, "cluster.restore_chunk") == 0;
    bk_op(&pk, op, begin || chunk ? 3 : 1);
    bk_pstr(&pk, "group");
    msgpack_pack_uint32(&pk, gid);
    if (begin) {
        bk_pstr(&pk, "size");
        msgpack_pack_uint64(&pk, g->bytes);
        bk_pstr(&pk, "sha256");
        bk_pstr(&pk, g->sha);
    } else if (chunk) {
        bk_pstr(&pk, "offset");
        msgpack_pack_uint64(&pk, off);
        bk_pstr(&pk, "data");
        msgpack_pack_bin(&pk, len);
        msgpack_pack_bin_body(&pk, data, len);
    }
}

static int bk_simple_step(struct bk_session *s, const char *op, const struct bk_group *g,
                          struct err *e)
{
    struct buf cmd, raw;
    buf_init(&cmd);
    buf_init(&raw);
    bk_step_cmd(&cmd, op, g->group, g, 0, NULL, 0);
    err_clear(e);
    int rc = cmd.len ? strata_exec(s->db, cmd.data, cmd.len, &raw, e)
                     : err_set(e, STRATA_OUT_OF_MEMORY, "out of memory");
    buf_close(&cmd);
    buf_close(&raw);
    return rc;
}

/* Send group g's file to the target: begin, chunks (BK_WINDOW in flight), install. A
 * failure mid-way resumes from what the leader has staged; a lost begin starts over. */
static int bk_restore_group(struct bk_session *s, const char *dir, const struct bk_group *g)
{
    char fpath[4300], name[32];
    snprintf(name, sizeof name, "group-%u.snap", g->group);
    bk_path(fpath, sizeof fpath, dir, name);
    int fd = open(fpath, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return report("NOT_FOUND", "%s: %s", fpath, strerror(errno));
    uint8_t *chunk[BK_WINDOW];
    struct buf cmds[BK_WINDOW], res[BK_WINDOW];
    struct err errs[BK_WINDOW], e;
    int codes[BK_WINDOW];
    int rc = 0;
    for (int i = 0; i < BK_WINDOW; i++) {
        chunk[i] = sm_malloc(BK_CHUNK);
        buf_init(&cmds[i]);
        buf_init(&res[i]);
        if (chunk[i] == NULL)
            rc = oom();
    }
    bool begun = false;
    uint64_t off = 0;
    for (int attempt = 0; rc == 0 && attempt < BK_ATTEMPTS; attempt++) {
        int code = 0;
        if (attempt > 0) {
            /* Resume: what does the leader hold now? */
            uint64_t version, staged;
            bool staging;
            char hex[65];
            if (bk_status(s, g->group, true, &version, hex, &staging, &staged) == 0) {
                if (version == g->version && strcmp(hex, g->sha) == 0)
                    goto done; /* an install whose answer was lost did happen */
                begun = staging && staged <= g->bytes;
                off = begun ? staged : 0;
            } else {
                begun = false;
                off = 0;
            }
            fprintf(stderr, "group %u: resuming at byte %llu (attempt %d)\n", g->group,
                    (unsigned long long)off, attempt + 1);
        }
        if (!begun) {
            if ((code = bk_simple_step(s, "cluster.restore_begin", g, &e)) != 0)
                goto failed;
            begun = true;
            off = 0;
        }
        while (off < g->bytes) {
            const uint8_t *pc[BK_WINDOW];
            size_t pl[BK_WINDOW];
            int n = 0;
            for (; n < BK_WINDOW && off + (uint64_t)n * BK_CHUNK < g->bytes; n++) {
                uint64_t at = off + (uint64_t)n * BK_CHUNK;
                size_t len = g->bytes - at < BK_CHUNK ? (size_t)(g->bytes - at) : BK_CHUNK;
                ssize_t got = pread(fd, chunk[n], len, (off_t)at);
                if (got != (ssize_t)len) {
                    rc = report("INTERNAL", "reading %s failed", fpath);
                    goto out;
                }
                buf_reset(&cmds[n]);
                buf_reset(&res[n]);
                bk_step_cmd(&cmds[n], "cluster.restore_chunk", g->group, g, at, chunk[n], len);
                pc[n] = cmds[n].data;
                pl[n] = cmds[n].len;
            }
            if (strata_exec_many(s->db, pc, pl, (size_t)n, 0, res, codes, errs)) {
                rc = oom();
                goto out;
            }
            for (int i = 0; i < n; i++)
                if (codes[i]) {
                    code = codes[i];
                    e = errs[i];
                    goto failed;
                }
            off += (uint64_t)n * BK_CHUNK;
            if (off > g->bytes)
                off = g->bytes;
        }
        if ((code = bk_simple_step(s, "cluster.restore_install", g, &e)) == 0)
            goto done;
    failed:
        /* A refusal by the data itself will not change on a retry. */
        if (code == STRATA_ALREADY_EXISTS || code == STRATA_PERMISSION_DENIED ||
            (code == STRATA_INVALID_ARGUMENT && strstr(e.msg, "SHA-256") != NULL) ||
            code == STRATA_PROTOCOL_ERROR || code == STRATA_OUT_OF_MEMORY ||
            (code == STRATA_INVALID_ARGUMENT && strstr(e.msg, "snapshot") != NULL)) {
            rc = report(err_name(code), "restoring group %u: %s", g->group, e.msg);
            goto out;
        }
        fprintf(stderr, "group %u: %s: %s\n", g->group, err_name(code), e.msg);
    }
    if (rc == 0)
        rc = report("UNAVAILABLE", "restoring group %u: gave up after %d attempts", g->group,
                    BK_ATTEMPTS);
    goto out;
done:
    rc = 0;
out:
    close(fd);
    for (int i = 0; i < BK_WINDOW; i++) {
        sm_free(chunk[i]);
        buf_close(&cmds[i]);
        buf_close(&res[i]);
    }
    return rc;
}

/* strata backup restore DIR */
static int bk_restore(struct bk_session *s, const char *dir)
{
    struct bk_set bk = {0}, target = {0};
    bool *todo = NULL;
    uint64_t t0 = clock_mono_ns();
    int rc = bk_load(dir, &bk);
    if (rc)
        goto out;
    if ((rc = bk_placement(s, &target)))
        goto out;
    /* Checks first: nothing is sent unless every one passes. */
    uint32_t max_shard = 0;
    for (size_t i = 0; i < bk.ng; i++)
        if (bk.g[i].group > max_shard)
            max_shard = bk.g[i].group;
    if (target.nshards < max_shard) {
        rc = report("INVALID_ARGUMENT",
                    "the target cluster has %u shards, the backup needs %u (start it with "
                    "--shards %u or more)",
                    target.nshards, max_shard, max_shard);
        goto out;
    }
    for (size_t i = 0; i < target.nb; i++) {
        bool same = false;
        for (size_t k = 0; k < bk.nb && !same; k++)
            same = strcmp(bk.b[k].name, target.b[i].name) == 0 &&
                   bk.b[k].shard == target.b[i].shard;
        if (!same) {
            rc = report("ALREADY_EXISTS",
                        "the target cluster is not empty: it has branch '%s' (a restore needs a "
                        "new cluster)",
                        target.b[i].name);
            goto out;
        }
    }
    todo = sm_calloc(bk.ng + 1, sizeof *todo);
    if (todo == NULL) {
        rc = oom();
        goto out;
    }
    for (size_t i = 0; i < bk.ng; i++) {
        const struct bk_group *g = &bk.g[i];
        if (g->group == 0)
            continue; /* the meta group: its branch map is re-applied below, not its engine */
        uint64_t version, staged;
        bool staging;
        char hex[65] = "";
        if ((rc = bk_status(s, g->group, false, &version, NULL, &staging, &staged)))
            goto out;
        if (version == 0) {
            todo[i] = true;
            continue;
        }
        if (version == g->version &&
            (rc = bk_status(s, g->group, true, &version, hex, &staging, &staged)) == 0 &&
            strcmp(hex, g->sha) == 0) {
            fprintf(stderr, "group %u: already restored (an earlier run)\n", g->group);
            continue;
        }
        if (rc)
            goto out;
        rc = report("ALREADY_EXISTS",
                    "the target cluster is not empty: shard %u holds data (version %llu)",
                    g->group, (unsigned long long)version);
        goto out;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < bk.ng; i++) {
        if (!todo[i])
            continue;
        uint64_t t1 = clock_mono_ns();
        if ((rc = bk_restore_group(s, dir, &bk.g[i])))
            goto out;
        total += bk.g[i].bytes;
        fprintf(stderr, "group %u: %llu bytes restored (version %llu) in %.2f s\n", bk.g[i].group,
                (unsigned long long)bk.g[i].bytes, (unsigned long long)bk.g[i].version,
                bk_secs(t1));
    }
    /* Last, the branch -> shard map (idempotent on the meta leader). */
    struct bk_call c;
    bk_call_begin(&c, "cluster.restore_placement", 1);
    bk_pstr(&c.pk, "branches");
    msgpack_pack_array(&c.pk, (uint32_t)bk.nb);
    for (size_t i = 0; i < bk.nb; i++) {
        msgpack_pack_array(&c.pk, 2);
        bk_pstr(&c.pk, bk.b[i].name);
        msgpack_pack_uint32(&c.pk, bk.b[i].shard);
    }
    rc = bk_call_run(s, &c, "writing the branch map");
    bk_call_end(&c);
    if (rc)
        goto out;
    double secs = bk_secs(t0);
    if (s->json)
        printf("{\"dir\":\"%s\",\"branches\":%zu,\"bytes\":%llu,\"seconds\":%.3f}\n", dir, bk.nb,
               (unsigned long long)total, secs);
    else
        printf("OK restored %s: %zu branches, %llu bytes in %.2f s (%.1f MB/s)\n", dir, bk.nb,
               (unsigned long long)total, secs, secs > 0 ? (double)total / 1e6 / secs : 0.0);
out:
    sm_free(todo);
    bk_set_free(&bk);
    bk_set_free(&target);
    return rc;
}

/* strata backup verify DIR: the manifest and every checksum, offline. */
static int bk_verify(struct bk_session *s, const char *dir)
{
    struct bk_set bk = {0};
    int rc = bk_load(dir, &bk);
    if (rc == 0) {
        uint64_t total = 0;
        for (size_t i = 0; i < bk.ng; i++)
            total += bk.g[i].bytes;
        if (s->json)
            printf("{\"groups\":%zu,\"branches\":%zu,\"bytes\":%llu}\n", bk.ng, bk.nb,
                   (unsigned long long)total);
        else
            printf("OK %s: %zu groups, %zu branches, %llu bytes, every SHA-256 matches\n", dir,
                   bk.ng, bk.nb, (unsigned long long)total);
    }
    bk_set_free(&bk);
    return rc;
}

static const char bk_usage[] =
    "usage: strata --uri strata://HOST:PORT[,...] backup create DIR\n"
    "       strata --uri strata://HOST:PORT[,...] backup restore DIR\n"
    "       strata backup verify DIR\n";

/* `backup VERB DIR` (one-shot only). */
int backup_main(struct strata *db, bool json, int argc, char **argv)
{
    struct bk_session ss = {db, json}, *s = &ss;
    if (argc != 3 || (strcmp(argv[1], "create") != 0 && strcmp(argv[1], "restore") != 0 &&
                      strcmp(argv[1], "verify") != 0)) {
        fputs(bk_usage, stderr);
        return EXIT_USAGE;
    }
    const char *dir = argv[2];
    if (dir[0] == '\0' || strlen(dir) > 4000) {
        fputs(bk_usage, stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "verify") == 0)
        return bk_verify(s, dir);
    /* Whole snapshots take longer than one data command: give each call more time. */
    strata_set_timeouts(s->db, 120000, 0);
    return strcmp(argv[1], "create") == 0 ? bk_create(s, dir) : bk_restore(s, dir);
}
