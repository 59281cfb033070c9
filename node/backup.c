/* Backup and restore, the server side: consistent engine snapshots of a group taken on
 * its leader and read back by the CLI in bounded chunks (cluster.backup*), and restores
 * replicated through a group's own log as node commands that every replica stages and
 * then installs (cluster.restore*). docs/operations.md "Backup and restore".
 *
 * A restore on one replica (struct stage), driven only by committed log entries:
 *
 *   IDLE --restore.begin (engine empty)--> STAGING --restore.chunk (next offset)--> STAGING
 *     ^                                      |  \--restore.install (size, SHA-256 ok,
 *     |                                      |       engine still empty)--> engine replaced
 *     \--restore.abort / restore.begin / ----/        (IDLE)
 *        group opened / raft snapshot installed
 *
 * Staged bytes live in DATA/restore-G.stage, outside the engine, so while a replica is
 * STAGING it refuses raft snapshots (the hook's snapshot_ok): every snapshot of the group
 * is then taken while IDLE, and a replica that restarts or installs a snapshot replays
 * begin and every chunk from the log, reaching the same staged bytes. */
#include "node.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define BACKUP_READ_MAX (4u << 20)     /* largest chunk one cluster.backup_read returns */
#define BACKUP_IDLE_MS (10u * 60 * 1000) /* a backup file nobody read for this long goes */

/* A snapshot taken for a backup, kept in DATA/backup until read and released. */
struct backup_file {
    struct backup_file *next;
    uint64_t id;
    uint32_t group;
    uint64_t size;
    uint64_t last_used_ms;
    unsigned reads; /* reads in flight: the file stays until they finish */
    bool released;
    char path[4200];
};

/* A replica's restore of one group (see the diagram above). */
struct stage {
    bool active;
    bool broken; /* a local write failed: this replica cannot install (logged) */
    int fd;
    uint64_t size, written;
    uint8_t sha[32];
    EVP_MD_CTX *md;
};

struct backup_state {
    struct node *n;
    struct repl_hook hook;
    struct backup_file *files;
    uint64_t next_id;
    unsigned reads;   /* file reads in flight (libuv pool) */
    bool closing;     /* node stopped: the last read frees the state */
    struct stage stages[PL_MAX_SHARDS + 1];
};

/* ---- Small helpers ------------------------------------------------------------------------ */

static void hex_encode(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hex_value(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* 64 lowercase hex digits -> 32 bytes. */
static bool hex_decode32(const msgpack_object *o, uint8_t out[32])
{
    if (o == NULL || o->type != MSGPACK_OBJECT_STR || o->via.str.size != 64)
        return false;
    for (size_t i = 0; i < 32; i++) {
        int hi = hex_value(o->via.str.ptr[2 * i]), lo = hex_value(o->via.str.ptr[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static void stage_path(struct node *n, uint32_t gid, char *out, size_t cap)
{
    snprintf(out, cap, "%s/restore-%u.stage", n->cfg.data_dir, gid);
}

static void reply_map_done(fwd_done_cb cb, void *arg, struct buf *b)
{
    if (b->len == 0)
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
    else
        cb(arg, 0, b->data, b->len, NULL, NULL);
    buf_close(b);
}

/* ---- The replicated restore (runs inside raft's apply: no raft calls) ------------------------ */

static void stage_clear(struct backup_state *st, uint32_t gid)
{
    struct stage *s = &st->stages[gid];
    if (s->fd >= 0)
        close(s->fd);
    EVP_MD_CTX_free(s->md);
    memset(s, 0, sizeof *s);
    s->fd = -1;
    char path[4200];
    stage_path(st->n, gid, path, sizeof path);
    if (unlink(path) != 0 && errno != ENOENT)
        log_warn("group %u: cannot remove %s: %s", gid, path, strerror(errno));
}

static void hook_reset(void *arg, uint32_t gid)
{
    struct backup_state *st = arg;
    if (gid <= PL_MAX_SHARDS)
        stage_clear(st, gid);
}

static bool hook_snapshot_ok(void *arg, uint32_t gid)
{
    struct backup_state *st = arg;
    return gid > PL_MAX_SHARDS || !st->stages[gid].active;
}

static int stage_begin(struct backup_state *st, uint32_t gid, struct storage *engine,
                       const msgpack_object *a, uint32_t na, struct err *err)
{
    if (na != 3 || a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[2].type != MSGPACK_OBJECT_BIN ||
        a[2].via.bin.size != 32)
        return err_set(err, STRATA_INVALID_ARGUMENT, "restore.begin needs [op, size, sha256]");
    stage_clear(st, gid); /* an earlier, interrupted restore is discarded */
    if (storage_version(engine) != 0)
        return err_set(err, STRATA_ALREADY_EXISTS,
                       "group %u already holds data (version %llu): a restore needs an empty "
                       "cluster",
                       gid, (unsigned long long)storage_version(engine));
    struct stage *s = &st->stages[gid];
    char path[4200];
    stage_path(st->n, gid, path, sizeof path);
    s->active = true; /* even if the file fails: the log decides the state, not the disk */
    s->size = a[1].via.u64;
    memcpy(s->sha, a[2].via.bin.ptr, 32);
    s->md = EVP_MD_CTX_new();
    s->fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (s->md == NULL || EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) != 1 || s->fd < 0) {
        s->broken = true;
        log_error("group %u: cannot stage a restore in %s: %s (this replica will not install "
                  "it)",
                  gid, path, s->fd < 0 ? strerror(errno) : "digest setup failed");
    }
    log_info("group %u: restore staging started (%llu bytes expected)", gid,
             (unsigned long long)s->size);
    return 0;
}

static int stage_chunk(struct backup_state *st, uint32_t gid, const msgpack_object *a, uint32_t na,
                       struct err *err)
{
    struct stage *s = &st->stages[gid];
    if (na != 3 || a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[2].type != MSGPACK_OBJECT_BIN)
        return err_set(err, STRATA_INVALID_ARGUMENT, "restore.chunk needs [op, offset, data]");
    if (!s->active)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "group %u has no restore in progress (restore.begin first)", gid);
    uint64_t off = a[1].via.u64, len = a[2].via.bin.size;
    if (off > s->size || len > s->size - off)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "chunk [%llu, +%llu) lies outside the announced %llu bytes",
                       (unsigned long long)off, (unsigned long long)len,
                       (unsigned long long)s->size);
    if (off + len <= s->written)
        return 0; /* a resent chunk already staged: the SHA-256 at install checks the bytes */
    if (off != s->written)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "chunk at offset %llu, but %llu bytes are staged (chunks go in order)",
                       (unsigned long long)off, (unsigned long long)s->written);
    if (!s->broken) {
        const char *p = a[2].via.bin.ptr;
        size_t left = len;
        while (left > 0) {
            ssize_t w = write(s->fd, p, left);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                s->broken = true;
                log_error("group %u: writing the staged restore failed: %s (this replica will "
                          "not install it)",
                          gid, w < 0 ? strerror(errno) : "short write");
                break;
            }
            p += w;
            left -= (size_t)w;
        }
        if (!s->broken && EVP_DigestUpdate(s->md, a[2].via.bin.ptr, len) != 1)
            s->broken = true;
    }
    s->written += len;
    return 0;
}

static int stage_install(struct backup_state *st, uint32_t gid, struct storage *engine,
                         struct buf *result, struct err *err)
{
    struct stage *s = &st->stages[gid];
    int rc = 0;
    uint8_t *map = MAP_FAILED;
    if (!s->active)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "group %u has no restore in progress (restore.begin first)", gid);
    uint64_t t0 = clock_mono_ns();
    if (s->written != s->size) {
        rc = err_set(err, STRATA_INVALID_ARGUMENT,
                     "restore incomplete: %llu of %llu bytes staged",
                     (unsigned long long)s->written, (unsigned long long)s->size);
        goto out;
    }
    if (storage_version(engine) != 0) {
        rc = err_set(err, STRATA_ALREADY_EXISTS,
                     "group %u was written to during the restore (version %llu)", gid,
                     (unsigned long long)storage_version(engine));
        goto out;
    }
    if (s->broken) {
        rc = err_set(err, STRATA_INTERNAL, "this replica could not stage the restore (see its log)");
        goto out;
    }
    uint8_t md[32];
    unsigned mdlen = 0;
    if (EVP_DigestFinal_ex(s->md, md, &mdlen) != 1 || mdlen != 32 || memcmp(md, s->sha, 32) != 0) {
        rc = err_set(err, STRATA_INVALID_ARGUMENT,
                     "the staged restore does not match its SHA-256: nothing restored");
        goto out;
    }
    if (s->size > 0) {
        /* Mapped, not copied: the engine reads the file straight from the page cache. */
        map = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, s->fd, 0);
        if (map == MAP_FAILED) {
            rc = err_set(err, STRATA_INTERNAL, "cannot map the staged restore: %s",
                         strerror(errno));
            goto out;
        }
    }
    rc = storage_restore(engine, s->size > 0 ? map : (const uint8_t *)"", s->size, err);
    if (rc)
        goto out;
    {
        double ms = (double)(clock_mono_ns() - t0) / 1e6;
        log_info("group %u: restore installed: %llu bytes, version %llu, %.1f ms", gid,
                 (unsigned long long)s->size, (unsigned long long)storage_version(engine), ms);
        msgpack_packer pk;
        msgpack_packer_init(&pk, result, node_buf_w);
        msgpack_pack_map(&pk, 3);
        node_pack_str(&pk, "version");
        msgpack_pack_uint64(&pk, storage_version(engine));
        node_pack_str(&pk, "bytes");
        msgpack_pack_uint64(&pk, s->size);
        node_pack_str(&pk, "install_ms");
        msgpack_pack_double(&pk, ms);
    }
out:
    if (map != MAP_FAILED)
        munmap(map, s->size);
    /* Installed or refused, the staged bytes are done with (a retry starts over). */
    stage_clear(st, gid);
    return rc;
}

static int hook_apply(void *arg, uint32_t gid, struct storage *engine, const uint8_t *cmd,
                      size_t len, struct buf *result, struct err *err)
{
    struct backup_state *st = arg;
    if (gid > PL_MAX_SHARDS)
        return err_set(err, STRATA_INVALID_ARGUMENT, "group id out of range");
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    size_t off = 0;
    int rc;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS ||
        off != len || o.type != MSGPACK_OBJECT_ARRAY || o.via.array.size == 0 ||
        o.via.array.ptr[0].type != MSGPACK_OBJECT_STR) {
        rc = err_set(err, STRATA_INVALID_ARGUMENT, "node command cannot be decoded");
        goto out;
    }
    const msgpack_object *a = o.via.array.ptr;
    uint32_t na = o.via.array.size;
    const char *op = a[0].via.str.ptr;
    size_t ol = a[0].via.str.size;
#define IS(s) (ol == sizeof(s) - 1 && memcmp(op, s, ol) == 0)
    if (IS("restore.begin"))
        rc = stage_begin(st, gid, engine, a, na, err);
    else if (IS("restore.chunk"))
        rc = stage_chunk(st, gid, a, na, err);
    else if (IS("restore.install"))
        rc = stage_install(st, gid, engine, result, err);
    else if (IS("restore.abort")) {
        stage_clear(st, gid);
        rc = 0;
    } else
        rc = err_set(err, STRATA_INVALID_ARGUMENT, "unknown node command '%.*s'", (int)ol, op);
#undef IS
out:
    msgpack_zone_destroy(&z);
    return rc;
}

/* ---- Backup files -------------------------------------------------------------------------- */

static void file_free(struct backup_file *f)
{
    if (unlink(f->path) != 0 && errno != ENOENT)
        log_warn("cannot remove %s: %s", f->path, strerror(errno));
    sm_free(f);
}

/* Drop released files nobody reads and files idle for too long (a CLI that died). */
static void files_sweep(struct backup_state *st)
{
    uint64_t now = uv_now(st->n->loop);
    for (struct backup_file **pp = &st->files; *pp;) {
        struct backup_file *f = *pp;
        if (f->reads == 0 && (f->released || now - f->last_used_ms > BACKUP_IDLE_MS)) {
            *pp = f->next;
            file_free(f);
        } else {
            pp = &f->next;
        }
    }
}

static struct backup_file *file_find(struct backup_state *st, uint64_t id)
{
    for (struct backup_file *f = st->files; f; f = f->next)
        if (f->id == id && !f->released)
            return f;
    return NULL;
}

struct snap_writer {
    FILE *fp;
    EVP_MD_CTX *md;
    uint64_t size;
};

static int snap_write(void *arg, const void *chunk, size_t len)
{
    struct snap_writer *w = arg;
    if (fwrite(chunk, 1, len, w->fp) != len)
        return STRATA_INTERNAL;
    if (EVP_DigestUpdate(w->md, chunk, len) != 1)
        return STRATA_INTERNAL;
    w->size += len;
    return 0;
}

struct take_req {
    struct node *n;
    uint32_t gid;
    fwd_done_cb cb;
    void *arg;
};

/* The read barrier passed: this replica's state holds every write acknowledged before the
 * request arrived. Snapshot it now, synchronously (the engine cannot be read elsewhere). */
static void take_now(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                     const char *leader)
{
    (void)result, (void)len;
    struct take_req *t = arg;
    struct node *n = t->n;
    struct backup_state *st = n->backup;
    struct node_group *g = node_group(n, t->gid);
    struct backup_file *f = NULL;
    FILE *fp = NULL;
    EVP_MD_CTX *md = NULL;
    struct err err;
    err_clear(&err);
    if (code) {
        t->cb(t->arg, code, NULL, 0, message, leader);
        goto out;
    }
    if (g == NULL || g->group == NULL || st == NULL || n->stopping) {
        t->cb(t->arg, STRATA_UNAVAILABLE, NULL, 0, "the group stopped", NULL);
        goto out;
    }
    f = sm_calloc(1, sizeof *f);
    md = EVP_MD_CTX_new();
    if (f == NULL || md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        t->cb(t->arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        goto out;
    }
    f->id = ++st->next_id;
    f->group = t->gid;
    snprintf(f->path, sizeof f->path, "%s/backup/%u-%llu.snap", n->cfg.data_dir, t->gid,
             (unsigned long long)f->id);
    fp = fopen(f->path, "wbx");
    if (fp == NULL) {
        t->cb(t->arg, STRATA_INTERNAL, NULL, 0, "cannot create the backup file", NULL);
        log_error("cannot create %s: %s", f->path, strerror(errno));
        goto out;
    }
    setvbuf(fp, NULL, _IOFBF, 1u << 20);
    struct repl_status rs;
    repl_group_status(g->group, &rs);
    uint64_t version = storage_version(g->engine);
    int64_t last_ts = storage_last_ts(g->engine);
    struct snap_writer w = {fp, md, 0};
    uint64_t t0 = clock_mono_ns();
    int rc = storage_snapshot(g->engine, snap_write, &w, &err);
    if (rc == 0 && fflush(fp) != 0)
        rc = err_set(&err, STRATA_INTERNAL, "writing the backup file failed: %s", strerror(errno));
    uint64_t stall_us = (clock_mono_ns() - t0) / 1000;
    uint8_t sha[32];
    unsigned mdlen = 0;
    if (rc == 0 && (EVP_DigestFinal_ex(md, sha, &mdlen) != 1 || mdlen != 32))
        rc = err_set(&err, STRATA_INTERNAL, "SHA-256 failed");
    int crc = fclose(fp);
    fp = NULL;
    if (rc == 0 && crc != 0)
        rc = err_set(&err, STRATA_INTERNAL, "closing the backup file failed: %s", strerror(errno));
    if (rc) {
        t->cb(t->arg, rc, NULL, 0, err.msg, NULL);
        unlink(f->path);
        goto out;
    }
    /* The loop (every group on this node) stood still for stall_us: worth a log line. */
    log_info("group %u: backup snapshot %llu at index %llu, version %llu: %llu bytes, loop "
             "stalled %.1f ms",
             t->gid, (unsigned long long)f->id, (unsigned long long)rs.applied_index,
             (unsigned long long)version, (unsigned long long)w.size, (double)stall_us / 1000.0);
    f->size = w.size;
    f->last_used_ms = uv_now(n->loop);
    f->next = st->files;
    st->files = f;
    char hex[65];
    hex_encode(sha, 32, hex);
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 9);
    node_pack_str(&pk, "group");
    msgpack_pack_uint32(&pk, t->gid);
    node_pack_str(&pk, "id");
    msgpack_pack_uint64(&pk, f->id);
    node_pack_str(&pk, "node");
    node_pack_str(&pk, n->cfg.advertise);
    node_pack_str(&pk, "size");
    msgpack_pack_uint64(&pk, f->size);
    node_pack_str(&pk, "sha256");
    node_pack_str(&pk, hex);
    node_pack_str(&pk, "index");
    msgpack_pack_uint64(&pk, rs.applied_index);
    node_pack_str(&pk, "version");
    msgpack_pack_uint64(&pk, version);
    node_pack_str(&pk, "last_ts");
    msgpack_pack_int64(&pk, last_ts);
    node_pack_str(&pk, "stall_us");
    msgpack_pack_uint64(&pk, stall_us);
    f = NULL;
    reply_map_done(t->cb, t->arg, &b);
out:
    if (fp)
        fclose(fp);
    sm_free(f);
    EVP_MD_CTX_free(md);
    sm_free(t);
}

/* The barrier: a linearizable read of the group (any cheap read command). */
static const uint8_t *barrier_cmd(size_t *len)
{
    static uint8_t cmd[32];
    static size_t n;
    if (n == 0) {
        struct buf b;
        buf_init(&b);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &b, node_buf_w);
        msgpack_pack_map(&pk, 1);
        node_pack_str(&pk, "op");
        node_pack_str(&pk, "branch.list");
        if (b.len <= sizeof cmd) {
            memcpy(cmd, b.data, b.len);
            n = b.len;
        }
        buf_close(&b);
    }
    *len = n;
    return cmd;
}

static bool arg_group(struct node *n, const uint8_t *cmd, size_t len, uint32_t *gid)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    size_t off = 0;
    uint64_t v = 0;
    bool ok = msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS &&
              node_map_u64(&o, "group", &v) && v <= PL_MAX_SHARDS && node_group(n, (uint32_t)v);
    msgpack_zone_destroy(&z);
    *gid = (uint32_t)v;
    return ok;
}

/* cluster.backup {group} on the group's leader. */
static void take_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                       fwd_done_cb cb, void *arg)
{
    (void)key;
    uint32_t gid;
    if (n->backup == NULL || !arg_group(n, cmd, len, &gid)) {
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "cluster.backup needs 'group' (hosted here)",
           NULL);
        return;
    }
    files_sweep(n->backup);
    struct take_req *t = sm_malloc(sizeof *t);
    if (t == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    *t = (struct take_req){n, gid, cb, arg};
    size_t bl;
    const uint8_t *bc = barrier_cmd(&bl);
    repl_read(node_group(n, gid)->group, bc, bl, false, take_now, t);
}

/* ---- cluster.backup_read / backup_done: on the node holding the file ------------------------ */

struct read_req {
    uv_fs_t fs;
    struct backup_state *st;
    struct backup_file *f;
    uv_file fd;
    uint8_t *data;
    size_t len;
    fwd_done_cb cb;
    void *arg;
};

static void state_free(struct backup_state *st);

static void read_done(uv_fs_t *fs)
{
    struct read_req *r = fs->data;
    struct backup_state *st = r->st;
    ssize_t got = fs->result;
    uv_fs_req_cleanup(fs);
    uv_fs_t c;
    uv_fs_close(NULL, &c, r->fd, NULL); /* synchronous: a close of a regular file */
    uv_fs_req_cleanup(&c);
    r->f->reads--;
    st->reads--;
    if (got < 0)
        r->cb(r->arg, STRATA_INTERNAL, NULL, 0, uv_strerror((int)got), NULL);
    else {
        /* The chunk is one MessagePack bin. */
        struct buf b;
        buf_init(&b);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &b, node_buf_w);
        msgpack_pack_bin(&pk, (size_t)got);
        msgpack_pack_bin_body(&pk, r->data, (size_t)got);
        reply_map_done(r->cb, r->arg, &b);
    }
    sm_free(r->data);
    sm_free(r);
    if (st->closing && st->reads == 0)
        state_free(st);
}

static bool is_self(struct node *n, const msgpack_object *node)
{
    return node && node->type == MSGPACK_OBJECT_STR &&
           node->via.str.size == strlen(n->cfg.advertise) &&
           memcmp(node->via.str.ptr, n->cfg.advertise, node->via.str.size) == 0;
}

static void file_op(struct node *n, bool read, const msgpack_object *cmd, const uint8_t *bytes,
                    size_t len, uint32_t flags, const struct auth_key *key, fwd_done_cb cb,
                    void *arg)
{
    struct backup_state *st = n->backup;
    const msgpack_object *node = node_map_get(cmd, "node");
    uint64_t id = 0, off = 0, want = 0;
    if (node == NULL || node->type != MSGPACK_OBJECT_STR || node->via.str.size == 0 ||
        node->via.str.size > REPL_ADDRESS_MAX || !node_map_u64(cmd, "id", &id) ||
        (read && (!node_map_u64(cmd, "offset", &off) || !node_map_u64(cmd, "len", &want)))) {
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0,
           read ? "cluster.backup_read needs 'node', 'id', 'offset' and 'len'"
                : "cluster.backup_done needs 'node' and 'id'",
           NULL);
        return;
    }
    if (!is_self(n, node)) {
        if (flags & PROTO_REQ_FORWARDED) {
            cb(arg, STRATA_NOT_FOUND, NULL, 0, "the backup file is on another node", NULL);
            return;
        }
        /* The file lives on the node that took the snapshot: relay there, but only to a
         * node of the cluster (a client must not make us connect anywhere else). */
        char to[REPL_ADDRESS_MAX + 1];
        snprintf(to, sizeof to, "%.*s", (int)node->via.str.size, node->via.str.ptr);
        bool member = false;
        for (size_t i = 0; n->have_pl && i < n->pl.nnodes && !member; i++)
            member = strcmp(n->pl.nodes[i].address, to) == 0;
        if (!member) {
            cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "'node' is not a node of this cluster",
               NULL);
            return;
        }
        n->forwarded++;
        fwd_request(n, to, key ? key->key : NULL, bytes, len, flags | PROTO_REQ_FORWARDED, cb,
                    arg);
        return;
    }
    struct backup_file *f = st ? file_find(st, id) : NULL;
    if (f == NULL) {
        cb(arg, STRATA_NOT_FOUND, NULL, 0,
           "no such backup snapshot here (released, expired, or the node restarted)", NULL);
        return;
    }
    f->last_used_ms = uv_now(n->loop);
    if (!read) {
        f->released = true;
        files_sweep(st);
        cb(arg, 0, NULL, 0, NULL, NULL);
        return;
    }
    if (off > f->size) {
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "offset beyond the end of the snapshot", NULL);
        return;
    }
    size_t n_read = want > BACKUP_READ_MAX ? BACKUP_READ_MAX : (size_t)want;
    if (n_read > f->size - off)
        n_read = (size_t)(f->size - off);
    struct read_req *r = sm_calloc(1, sizeof *r);
    if (r == NULL || (r->data = sm_malloc(n_read ? n_read : 1)) == NULL) {
        sm_free(r);
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    uv_fs_t o;
    int fd = uv_fs_open(NULL, &o, f->path, O_RDONLY | O_CLOEXEC, 0, NULL);
    uv_fs_req_cleanup(&o);
    if (fd < 0) {
        sm_free(r->data);
        sm_free(r);
        cb(arg, STRATA_INTERNAL, NULL, 0, "cannot open the backup file", NULL);
        return;
    }
    r->st = st;
    r->f = f;
    r->fd = fd;
    r->len = n_read;
    r->cb = cb;
    r->arg = arg;
    r->fs.data = r;
    uv_buf_t ub = uv_buf_init((char *)r->data, (unsigned)n_read);
    /* In the libuv pool: a cold read from disk must not stall every group on the loop. */
    int rc = uv_fs_read(n->loop, &r->fs, fd, &ub, 1, (int64_t)off, read_done);
    if (rc < 0) {
        uv_fs_close(NULL, &o, fd, NULL);
        uv_fs_req_cleanup(&o);
        sm_free(r->data);
        sm_free(r);
        cb(arg, STRATA_INTERNAL, NULL, 0, uv_strerror(rc), NULL);
        return;
    }
    f->reads++;
    st->reads++;
}

/* ---- cluster.restore_*: node commands on the group's leader --------------------------------- */

/* cluster.restore_status {group, digest?}: behind a read barrier, the engine version and
 * (on request: a full encode) the SHA-256 of its snapshot. */
struct status_req {
    struct node *n;
    uint32_t gid;
    bool digest;
    fwd_done_cb cb;
    void *arg;
};

static int digest_w(void *arg, const void *p, size_t n)
{
    return EVP_DigestUpdate(arg, p, n) == 1 ? 0 : STRATA_INTERNAL;
}

static void status_now(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                       const char *leader)
{
    (void)result, (void)len;
    struct status_req *s = arg;
    struct node_group *g = node_group(s->n, s->gid);
    if (code == 0 && (g == NULL || s->n->backup == NULL))
        code = STRATA_UNAVAILABLE, message = "the group stopped";
    if (code) {
        s->cb(s->arg, code, NULL, 0, message, leader);
        sm_free(s);
        return;
    }
    char hex[65] = "";
    if (s->digest) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        uint8_t sha[32];
        unsigned ml = 0;
        struct err err;
        err_clear(&err);
        if (md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
            storage_snapshot(g->engine, digest_w, md, &err) == 0 &&
            EVP_DigestFinal_ex(md, sha, &ml) == 1 && ml == 32)
            hex_encode(sha, 32, hex);
        EVP_MD_CTX_free(md);
    }
    const struct stage *stg = &s->n->backup->stages[s->gid];
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 5);
    node_pack_str(&pk, "group");
    msgpack_pack_uint32(&pk, s->gid);
    node_pack_str(&pk, "version");
    msgpack_pack_uint64(&pk, storage_version(g->engine));
    node_pack_str(&pk, "digest");
    node_pack_str(&pk, hex);
    node_pack_str(&pk, "staging");
    if (stg->active)
        msgpack_pack_true(&pk);
    else
        msgpack_pack_false(&pk);
    node_pack_str(&pk, "staged");
    msgpack_pack_uint64(&pk, stg->written);
    reply_map_done(s->cb, s->arg, &b);
    sm_free(s);
}

static void status_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                         fwd_done_cb cb, void *arg)
{
    (void)key;
    uint32_t gid;
    struct status_req *s = NULL;
    if (!arg_group(n, cmd, len, &gid) || (s = sm_calloc(1, sizeof *s)) == NULL) {
        cb(arg, s ? STRATA_OUT_OF_MEMORY : STRATA_INVALID_ARGUMENT, NULL, 0,
           "cluster.restore_status needs 'group' (hosted here)", NULL);
        return;
    }
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    size_t off = 0;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *d = node_map_get(&o, "digest");
        s->digest = d && d->type == MSGPACK_OBJECT_BOOLEAN && d->via.boolean;
    }
    msgpack_zone_destroy(&z);
    s->n = n;
    s->gid = gid;
    s->cb = cb;
    s->arg = arg;
    size_t bl;
    const uint8_t *bc = barrier_cmd(&bl);
    repl_read(node_group(n, gid)->group, bc, bl, false, status_now, s);
}

/* restore_begin / chunk / install / abort: turn the request into a node command and
 * replicate it; the hook's result is the answer. */
static void restore_step_local(struct node *n, const uint8_t *cmd, size_t len,
                               const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    (void)key;
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    size_t off = 0;
    struct buf b;
    buf_init(&b);
    uint64_t gid = 0, v = 0;
    const char *bad = NULL;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS ||
        !node_map_u64(&o, "group", &gid) || gid > PL_MAX_SHARDS || !node_group(n, (uint32_t)gid)) {
        bad = "cluster.restore_* needs 'group' (hosted here)";
        goto out;
    }
    const msgpack_object *opo = node_map_get(&o, "op");
    char op[40] = "";
    if (opo && opo->type == MSGPACK_OBJECT_STR && opo->via.str.size < sizeof op)
        memcpy(op, opo->via.str.ptr, opo->via.str.size);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    if (strcmp(op, "cluster.restore_begin") == 0) {
        uint8_t sha[32];
        if (!node_map_u64(&o, "size", &v) || !hex_decode32(node_map_get(&o, "sha256"), sha)) {
            bad = "cluster.restore_begin needs 'size' and 'sha256' (64 hex digits)";
            goto out;
        }
        msgpack_pack_array(&pk, 3);
        node_pack_str(&pk, "restore.begin");
        msgpack_pack_uint64(&pk, v);
        msgpack_pack_bin(&pk, 32);
        msgpack_pack_bin_body(&pk, sha, 32);
    } else if (strcmp(op, "cluster.restore_chunk") == 0) {
        const msgpack_object *d = node_map_get(&o, "data");
        if (!node_map_u64(&o, "offset", &v) || d == NULL || d->type != MSGPACK_OBJECT_BIN) {
            bad = "cluster.restore_chunk needs 'offset' and 'data' (bin)";
            goto out;
        }
        msgpack_pack_array(&pk, 3);
        node_pack_str(&pk, "restore.chunk");
        msgpack_pack_uint64(&pk, v);
        msgpack_pack_bin(&pk, d->via.bin.size);
        msgpack_pack_bin_body(&pk, d->via.bin.ptr, d->via.bin.size);
    } else if (strcmp(op, "cluster.restore_install") == 0 ||
               strcmp(op, "cluster.restore_abort") == 0) {
        msgpack_pack_array(&pk, 1);
        node_pack_str(&pk, op[16] == 'i' ? "restore.install" : "restore.abort");
    } else {
        bad = "unknown restore command";
        goto out;
    }
out:
    msgpack_zone_destroy(&z);
    if (bad)
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, bad, NULL);
    else if (b.len == 0)
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
    else
        repl_write_node(node_group(n, (uint32_t)gid)->group, b.data, b.len, cb, arg);
    buf_close(&b);
}

/* cluster.restore_placement {branches: [[name, shard], ...]} on the meta leader: assign
 * every backed-up branch to its shard (idempotent: an equal assignment is kept, a
 * different one is a CONFLICT and changes nothing). */
struct place_ctx {
    size_t cnt;
    char **names;
    uint32_t *shards;
    fwd_done_cb cb;
    void *arg;
};

static int place_mutate(struct placement *p, void *ctx, struct err *err)
{
    struct place_ctx *c = ctx;
    for (size_t i = 0; i < c->cnt; i++) {
        size_t l = strlen(c->names[i]);
        const struct pl_branch *b = placement_branch(p, c->names[i], l);
        if (b && b->shard == c->shards[i])
            continue;
        if (b)
            return err_set(err, STRATA_CONFLICT,
                           "branch '%s' is on shard %u here, on shard %u in the backup",
                           c->names[i], b->shard, c->shards[i]);
        int rc = placement_assign(p, c->names[i], l, c->shards[i], err);
        if (rc)
            return rc;
    }
    return 0;
}

static void place_ctx_free(struct place_ctx *c)
{
    for (size_t i = 0; i < c->cnt; i++)
        sm_free(c->names[i]);
    sm_free(c->names);
    sm_free(c->shards);
    sm_free(c);
}

static void place_done(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                       const char *leader)
{
    struct place_ctx *c = arg;
    c->cb(c->arg, code, result, len, message, leader);
    place_ctx_free(c);
}

static void place_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                        fwd_done_cb cb, void *arg)
{
    (void)key;
    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    msgpack_object o;
    size_t off = 0;
    const char *bad = NULL;
    struct place_ctx *c = sm_calloc(1, sizeof *c);
    const msgpack_object *br = NULL;
    if (c == NULL) {
        bad = "out of memory";
        goto out;
    }
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS ||
        (br = node_map_get(&o, "branches")) == NULL || br->type != MSGPACK_OBJECT_ARRAY) {
        bad = "cluster.restore_placement needs 'branches': [[name, shard], ...]";
        goto out;
    }
    c->names = sm_calloc(br->via.array.size + 1, sizeof *c->names);
    c->shards = sm_calloc(br->via.array.size + 1, sizeof *c->shards);
    if (c->names == NULL || c->shards == NULL) {
        bad = "out of memory";
        goto out;
    }
    for (uint32_t i = 0; i < br->via.array.size; i++) {
        const msgpack_object *e = &br->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2 ||
            e->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
            e->via.array.ptr[0].via.str.size == 0 ||
            e->via.array.ptr[0].via.str.size > PL_MAX_BRANCH_NAME ||
            memchr(e->via.array.ptr[0].via.str.ptr, 0, e->via.array.ptr[0].via.str.size) ||
            e->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            e->via.array.ptr[1].via.u64 == 0 || e->via.array.ptr[1].via.u64 > PL_MAX_SHARDS) {
            bad = "cluster.restore_placement: each branch is [name, shard 1..256]";
            goto out;
        }
        size_t l = e->via.array.ptr[0].via.str.size;
        if ((c->names[c->cnt] = sm_malloc(l + 1)) == NULL) {
            bad = "out of memory";
            goto out;
        }
        memcpy(c->names[c->cnt], e->via.array.ptr[0].via.str.ptr, l);
        c->names[c->cnt][l] = '\0';
        c->shards[c->cnt++] = (uint32_t)e->via.array.ptr[1].via.u64;
    }
out:
    msgpack_zone_destroy(&z);
    if (bad) {
        if (c)
            place_ctx_free(c);
        cb(arg, strcmp(bad, "out of memory") == 0 ? STRATA_OUT_OF_MEMORY : STRATA_INVALID_ARGUMENT,
           NULL, 0, bad, NULL);
        return;
    }
    c->cb = cb;
    c->arg = arg;
    meta_change(n, place_mutate, c, place_done, c);
}

/* ---- Entry points -------------------------------------------------------------------------- */

bool backup_owns(const char *op)
{
    return strncmp(op, "cluster.backup", 14) == 0 || strncmp(op, "cluster.restore", 15) == 0;
}

int backup_command(struct node *n, const char *op, const msgpack_object *cmd, const uint8_t *bytes,
                   size_t len, uint32_t flags, const struct auth_key *key, fwd_done_cb cb,
                   void *arg)
{
    /* A backup reads every branch and a restore writes every branch. */
    if (key && (!key->write || key->npatterns == 0 || strcmp(key->patterns[0], "*") != 0)) {
        cb(arg, STRATA_PERMISSION_DENIED, NULL, 0,
           "backup and restore need a read-write key for all branches ('*')", NULL);
        return 0;
    }
    if (n->stopping || n->backup == NULL) {
        cb(arg, STRATA_UNAVAILABLE, NULL, 0, "the node is shutting down", NULL);
        return 0;
    }
    uint64_t gid = 0;
    bool has_group = node_map_u64(cmd, "group", &gid) && gid <= PL_MAX_SHARDS;
    if (strcmp(op, "cluster.backup_read") == 0 || strcmp(op, "cluster.backup_done") == 0) {
        file_op(n, op[15] == 'r', cmd, bytes, len, flags, key, cb, arg);
        return 0;
    }
    if (strcmp(op, "cluster.restore_placement") == 0) {
        route_local(n, place_local, 0, bytes, len, flags, key, cb, arg);
        return 0;
    }
    node_local_fn fn = strcmp(op, "cluster.backup") == 0           ? take_local
                       : strcmp(op, "cluster.restore_status") == 0 ? status_local
                       : strcmp(op, "cluster.restore_begin") == 0 ||
                               strcmp(op, "cluster.restore_chunk") == 0 ||
                               strcmp(op, "cluster.restore_install") == 0 ||
                               strcmp(op, "cluster.restore_abort") == 0
                           ? restore_step_local
                           : NULL;
    if (fn == NULL) {
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "unknown backup or restore command", NULL);
        return 0;
    }
    if (!has_group) {
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "this command needs 'group' (0..256)", NULL);
        return 0;
    }
    route_local(n, fn, (uint32_t)gid, bytes, len, flags, key, cb, arg);
    return 0;
}

/* ---- Lifecycle ----------------------------------------------------------------------------- */

int backup_init(struct node *n, struct err *err)
{
    struct backup_state *st = sm_calloc(1, sizeof *st);
    if (st == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    st->n = n;
    for (size_t i = 0; i <= PL_MAX_SHARDS; i++)
        st->stages[i].fd = -1;
    st->hook = (struct repl_hook){hook_apply, hook_snapshot_ok, hook_reset, st};
    /* Backup files of an earlier run are orphans (their ids were in memory): remove. */
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/backup", n->cfg.data_dir);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        sm_free(st);
        return err_set(err, STRATA_INVALID_ARGUMENT, "cannot create %s: %s", dir, strerror(errno));
    }
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        size_t l = strlen(e->d_name);
        if (l > 5 && strcmp(e->d_name + l - 5, ".snap") == 0) {
            char path[4500];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    if (d)
        closedir(d);
    n->backup = st;
    n->cfg.repl.hook = &st->hook; /* every group opened from now on */
    return 0;
}

static void state_free(struct backup_state *st)
{
    while (st->files) {
        struct backup_file *f = st->files;
        st->files = f->next;
        file_free(f);
    }
    for (size_t i = 0; i <= PL_MAX_SHARDS; i++) {
        if (st->stages[i].fd >= 0)
            close(st->stages[i].fd);
        EVP_MD_CTX_free(st->stages[i].md);
    }
    sm_free(st);
}

void backup_free(struct node *n)
{
    struct backup_state *st = n->backup;
    if (st == NULL)
        return;
    n->backup = NULL;
    n->cfg.repl.hook = NULL;
    if (st->reads > 0)
        st->closing = true; /* the last read in flight frees it */
    else
        state_free(st);
}
