/* Message bodies: encoders and validating decoders for HELLO, WELCOME, REQUEST, RESPONSE
 * and ERROR (proto.h, byte layout in docs/protocol.md). All MessagePack goes through
 * msgpack-c; this file only checks what msgpack-c hands back. */
#include "proto.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ---- Encoding --------------------------------------------------------------------------
 * A frame is built in place: header first (length patched at the end), body packed
 * straight into `out`, so a large result is never copied twice. On any failure `out` is
 * cut back to where it was. */

struct sink {
    struct buf *b;
    bool oom; /* msgpack-c reports a failed write per call; one flag is simpler to check */
};

static int sink_write(void *data, const char *p, size_t len)
{
    struct sink *k = data;
    if (buf_append(k->b, p, len)) {
        k->oom = true;
        return -1;
    }
    return 0;
}

struct enc {
    struct buf *out;
    size_t start;
    struct sink sink;
    msgpack_packer pk; /* points at sink: an enc never moves once begun */
};

static int enc_begin(struct enc *e, struct buf *out, uint8_t kind)
{
    e->out = out;
    e->start = out->len;
    e->sink.b = out;
    e->sink.oom = false;
    msgpack_packer_init(&e->pk, &e->sink, sink_write);
    return proto_frame_append(out, kind, NULL, 0);
}

static void enc_raw(struct enc *e, const void *p, size_t n)
{
    if (!e->sink.oom && buf_append(e->out, p, n))
        e->sink.oom = true;
}

static void enc_str(struct enc *e, const char *s, size_t n)
{
    msgpack_pack_str(&e->pk, n);
    msgpack_pack_str_body(&e->pk, s, n);
}

static void enc_cstr(struct enc *e, const char *s)
{
    enc_str(e, s, strlen(s));
}

static int enc_end(struct enc *e)
{
    int rc = 0;
    size_t body = e->out->len - e->start - PROTO_HEADER_SIZE;
    if (e->sink.oom)
        rc = STRATA_OUT_OF_MEMORY;
    else if (body > PROTO_MAX_FRAME_LIMIT - 2)
        rc = STRATA_TOO_LARGE;
    if (rc) {
        e->out->len = e->start;
        return rc;
    }
    put_be32(e->out->data + e->start, (uint32_t)(body + 2));
    return 0;
}

/* ---- Decoding --------------------------------------------------------------------------
 * Nothing from the wire is trusted: each value is unpacked by msgpack-c, then its type
 * and range are checked here, and every failure names the frame and the field. */

static const char *kind_name(uint8_t kind)
{
    switch (kind) {
    case PROTO_HELLO:
        return "HELLO";
    case PROTO_WELCOME:
        return "WELCOME";
    case PROTO_REQUEST:
        return "REQUEST";
    case PROTO_RESPONSE:
        return "RESPONSE";
    case PROTO_ERROR:
        return "ERROR";
    }
    return "unknown";
}

static const char *type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return "unsigned integer";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "negative integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "string";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    case MSGPACK_OBJECT_BIN:
        return "binary";
    case MSGPACK_OBJECT_EXT:
        return "extension";
    }
    return "unknown type";
}

static int check_kind(const struct proto_frame *f, uint8_t kind, struct err *err)
{
    if (f->kind != kind)
        return err_set(err, STRATA_PROTOCOL_ERROR, "frame of kind %u (%s) is not a %s frame",
                       f->kind, kind_name(f->kind), kind_name(kind));
    return 0;
}

/* Unpack the value starting at *off. `last`: it must end the body exactly. */
static int unpack_value(const struct proto_frame *f, size_t *off, msgpack_zone *z,
                        msgpack_object *o, bool last, const char *what, struct err *err)
{
    const char *kn = kind_name(f->kind);
    if (*off >= f->len)
        return err_set(err, STRATA_PROTOCOL_ERROR, "%s: %s is missing (body ends at byte %zu)", kn,
                       what, f->len);
    /* Framing first: msgpack-c would allocate for declared counts before finding out the
     * bytes are not there (common/mpscan.c). */
    struct mp_scan sc;
    int sr = mp_scan(f->body, f->len, *off, &sc);
    switch (sr) {
    case MP_SCAN_OK:
        break;
    case MP_SCAN_TRUNCATED:
        return err_set(err, STRATA_PROTOCOL_ERROR, "%s: %s is truncated", kn, what);
    case MP_SCAN_TOO_MANY:
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "%s: %s is truncated (a container at byte %zu declares %llu "
                       "elements, %llu bytes follow)",
                       kn, what, sc.at, (unsigned long long)sc.count,
                       (unsigned long long)sc.room);
    case MP_SCAN_TOO_DEEP:
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "%s: %s cannot be decoded (nested deeper than 32 levels)", kn, what);
    default:
        return err_set(err, STRATA_PROTOCOL_ERROR, "%s: %s is not valid MessagePack (%s at byte %zu)",
                       kn, what, mp_scan_reason(sr), sc.at);
    }
    switch (msgpack_unpack((const char *)f->body, f->len, off, z, o)) {
    case MSGPACK_UNPACK_SUCCESS:
        return 0;
    case MSGPACK_UNPACK_EXTRA_BYTES:
        if (last)
            return err_set(err, STRATA_PROTOCOL_ERROR, "%s: %zu trailing bytes after the %s", kn,
                           f->len - *off, what);
        return 0;
    case MSGPACK_UNPACK_CONTINUE:
        return err_set(err, STRATA_PROTOCOL_ERROR, "%s: %s is truncated", kn, what);
    case MSGPACK_UNPACK_NOMEM_ERROR:
        /* msgpack-c says NOMEM both when nesting exceeds its 32-level stack and when a
         * container declares more elements than it can allocate for: bad input either way. */
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "%s: %s cannot be decoded (nested deeper than 32 levels, or declares "
                       "more elements than can be allocated)",
                       kn, what);
    default:
        return err_set(err, STRATA_PROTOCOL_ERROR, "%s: %s is not valid MessagePack", kn, what);
    }
}

static int decode_uint(const struct proto_frame *f, const msgpack_object *o, uint64_t max,
                       const char *what, uint64_t *out, struct err *err)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return err_set(err, STRATA_PROTOCOL_ERROR, "%s: %s must be an unsigned integer (got %s)",
                       kind_name(f->kind), what, type_name(o));
    if (o->via.u64 > max)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "%s: %s %" PRIu64 " is out of range (at most %" PRIu64 ")",
                       kind_name(f->kind), what, o->via.u64, max);
    *out = o->via.u64;
    return 0;
}

/* The fields a body map may carry; keys not listed are ignored (forward compatible).
 * F_FEATURES: an array of names, decoded into a mask (u) of the ones known here. */
enum ftype { F_UINT, F_STR, F_BOOL, F_FEATURES };

static const struct {
    const char *name;
    uint32_t bit;
} feature_names[] = {
    {"idem", PROTO_FEAT_IDEM},
};
#define NFEATURES (sizeof feature_names / sizeof feature_names[0])

static int decode_features(const struct proto_frame *f, const msgpack_object *v, uint64_t *mask,
                           struct err *err)
{
    const char *kn = kind_name(f->kind);
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "%s: \"features\" must be an array of strings (got %s)", kn, type_name(v));
    if (v->via.array.size > PROTO_FEATURES_MAX)
        return err_set(err, STRATA_PROTOCOL_ERROR, "%s: \"features\" has %u elements (at most %d)",
                       kn, v->via.array.size, PROTO_FEATURES_MAX);
    *mask = 0;
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *e = &v->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_STR)
            return err_set(err, STRATA_PROTOCOL_ERROR,
                           "%s: \"features\" element %u must be a string (got %s)", kn, i,
                           type_name(e));
        if (e->via.str.size == 0 || e->via.str.size > PROTO_FEATURE_NAME_MAX)
            return err_set(err, STRATA_PROTOCOL_ERROR,
                           "%s: \"features\" element %u is %u bytes (a name has 1 to %d)", kn, i,
                           e->via.str.size, PROTO_FEATURE_NAME_MAX);
        /* A name this version does not know is some later node's: ignored. */
        for (size_t j = 0; j < NFEATURES; j++)
            if (strlen(feature_names[j].name) == e->via.str.size &&
                memcmp(feature_names[j].name, e->via.str.ptr, e->via.str.size) == 0)
                *mask |= feature_names[j].bit;
    }
    return 0;
}

struct field {
    const char *key;
    enum ftype type;
    bool required;
    uint64_t max; /* F_UINT */
    /* filled by decode_map */
    bool present; /* seen with a value (an optional field given as nil is absent) */
    uint64_t u;
    const char *s;
    size_t slen;
};

static int decode_map(const struct proto_frame *f, const char *what, const msgpack_object *o,
                      struct field *fs, size_t n, struct err *err)
{
    const char *kn = kind_name(f->kind);
    if (o->type != MSGPACK_OBJECT_MAP)
        return err_set(err, STRATA_PROTOCOL_ERROR, "%s: %s must be a map (got %s)", kn, what,
                       type_name(o));
    bool seen[8] = {false};
    assert(n <= sizeof seen / sizeof seen[0]);
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        for (size_t j = 0; j < n; j++) {
            struct field *fd = &fs[j];
            if (k->via.str.size != strlen(fd->key) ||
                memcmp(k->via.str.ptr, fd->key, k->via.str.size) != 0)
                continue;
            /* Two values for one key would make the meaning depend on which one we read. */
            if (seen[j])
                return err_set(err, STRATA_PROTOCOL_ERROR, "%s: duplicate key \"%s\"", kn, fd->key);
            seen[j] = true;
            if (!fd->required && v->type == MSGPACK_OBJECT_NIL)
                break;
            if (fd->type == F_UINT) {
                char quoted[48];
                snprintf(quoted, sizeof quoted, "\"%s\"", fd->key);
                int rc = decode_uint(f, v, fd->max, quoted, &fd->u, err);
                if (rc)
                    return rc;
            } else if (fd->type == F_FEATURES) {
                int rc = decode_features(f, v, &fd->u, err);
                if (rc)
                    return rc;
            } else if (fd->type == F_BOOL) {
                if (v->type != MSGPACK_OBJECT_BOOLEAN)
                    return err_set(err, STRATA_PROTOCOL_ERROR,
                                   "%s: \"%s\" must be a boolean (got %s)", kn, fd->key,
                                   type_name(v));
                fd->u = v->via.boolean;
            } else if (v->type != MSGPACK_OBJECT_STR) {
                return err_set(err, STRATA_PROTOCOL_ERROR, "%s: \"%s\" must be a string (got %s)",
                               kn, fd->key, type_name(v));
            } else {
                fd->s = v->via.str.ptr;
                fd->slen = v->via.str.size;
            }
            fd->present = true;
            break;
        }
    }
    for (size_t j = 0; j < n; j++)
        if (fs[j].required && !fs[j].present)
            return err_set(err, STRATA_PROTOCOL_ERROR, "%s: required key \"%s\" is missing", kn,
                           fs[j].key);
    return 0;
}

/* The body is exactly one map: unpack it and pick out the fields. */
static int decode_body_map(const struct proto_frame *f, msgpack_zone *z, struct field *fs, size_t n,
                           struct err *err)
{
    msgpack_object o;
    size_t off = 0;
    int rc = unpack_value(f, &off, z, &o, true, "body", err);
    return rc ? rc : decode_map(f, "body", &o, fs, n, err);
}

/* An error name ("NOT_FOUND") to its code; -1 when it names no error. The name is not
 * NUL-terminated on the wire and may hold a NUL, which must not cut it short. */
static int code_from_name(const char *p, size_t n)
{
    char name[32];
    if (n >= sizeof name || memchr(p, '\0', n) != NULL)
        return -1;
    memcpy(name, p, n);
    name[n] = '\0';
    return err_from_name(name);
}

/* {"name", "message"} of a failed response or an ERROR frame; leader and forgotten only
 * in responses (*forgotten: the "forgotten" flag, false when absent). */
static int decode_error_map(const struct proto_frame *f, const msgpack_object *o, int *code,
                            const char **msg, size_t *msg_len, const char **leader,
                            size_t *leader_len, bool *forgotten, struct err *err)
{
    struct field fs[] = {
        {.key = "name", .type = F_STR, .required = true},
        {.key = "message", .type = F_STR, .required = true},
        {.key = "leader", .type = F_STR},
        {.key = "forgotten", .type = F_BOOL},
    };
    int rc =
        decode_map(f, leader != NULL ? "error map" : "body", o, fs, leader != NULL ? 4 : 2, err);
    if (rc)
        return rc;
    int c = code_from_name(fs[0].s, fs[0].slen);
    /* Names of internal codes (>= PROTO_CODE_LIMIT) are never sent. */
    if (c <= 0 || c >= PROTO_CODE_LIMIT)
        return err_set(err, STRATA_PROTOCOL_ERROR, "%s: \"name\" \"%.*s\" is not an error name",
                       kind_name(f->kind), (int)(fs[0].slen > 64 ? 64 : fs[0].slen), fs[0].s);
    *code = c;
    *msg = fs[1].s;
    *msg_len = fs[1].slen;
    if (leader != NULL) {
        *leader = fs[2].present ? fs[2].s : NULL;
        *leader_len = fs[2].present ? fs[2].slen : 0;
        *forgotten = fs[3].present && fs[3].u;
    }
    return 0;
}

/* `code` as it goes on the wire: OUTCOME_FORGOTTEN is HISTORY_UNAVAILABLE + forgotten. */
static void enc_error_map(struct enc *e, int code, const char *message, const char *leader)
{
    if (message == NULL)
        message = err_message(code);
    bool forgotten = code == STRATA_OUTCOME_FORGOTTEN;
    msgpack_pack_map(&e->pk, 2 + (leader != NULL) + forgotten);
    enc_cstr(e, "name");
    enc_cstr(e, err_name(forgotten ? STRATA_HISTORY_UNAVAILABLE : code));
    enc_cstr(e, "message");
    enc_str(e, message, strlen(message));
    if (leader != NULL) {
        enc_cstr(e, "leader");
        enc_str(e, leader, strlen(leader));
    }
    if (forgotten) {
        enc_cstr(e, "forgotten");
        msgpack_pack_true(&e->pk);
    }
}

/* ---- HELLO ------------------------------------------------------------------------------ */

int proto_hello_append(struct buf *out, const struct proto_hello *h)
{
    struct enc e;
    int rc = enc_begin(&e, out, PROTO_HELLO);
    if (rc)
        return rc;
    msgpack_pack_map(&e.pk, h->api_key != NULL ? 4 : 3);
    enc_cstr(&e, "version_min");
    msgpack_pack_uint32(&e.pk, h->version_min);
    enc_cstr(&e, "version_max");
    msgpack_pack_uint32(&e.pk, h->version_max);
    enc_cstr(&e, "client");
    enc_str(&e, h->client != NULL ? h->client : "", h->client != NULL ? h->client_len : 0);
    if (h->api_key != NULL) {
        enc_cstr(&e, "api_key");
        enc_str(&e, h->api_key, h->api_key_len);
    }
    return enc_end(&e);
}

int proto_hello_decode(const struct proto_frame *f, msgpack_zone *z, struct proto_hello *h,
                       struct err *err)
{
    struct field fs[] = {
        {.key = "version_min", .type = F_UINT, .required = true, .max = UINT32_MAX},
        {.key = "version_max", .type = F_UINT, .required = true, .max = UINT32_MAX},
        {.key = "client", .type = F_STR},
        {.key = "api_key", .type = F_STR},
    };
    int rc = check_kind(f, PROTO_HELLO, err);
    if (rc || (rc = decode_body_map(f, z, fs, 4, err)))
        return rc;
    if (fs[0].u == 0 || fs[0].u > fs[1].u)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "HELLO: version range %" PRIu64 "..%" PRIu64 " is empty or starts below 1",
                       fs[0].u, fs[1].u);
    h->version_min = (uint32_t)fs[0].u;
    h->version_max = (uint32_t)fs[1].u;
    h->client = fs[2].present ? fs[2].s : "";
    h->client_len = fs[2].present ? fs[2].slen : 0;
    h->api_key = fs[3].present ? fs[3].s : NULL;
    h->api_key_len = fs[3].present ? fs[3].slen : 0;
    return 0;
}

/* ---- WELCOME ---------------------------------------------------------------------------- */

int proto_welcome_append(struct buf *out, const struct proto_welcome *w)
{
    return proto_welcome_append_features(out, w, 0);
}

int proto_welcome_append_features(struct buf *out, const struct proto_welcome *w, uint32_t features)
{
    uint32_t nf = 0;
    for (size_t j = 0; j < NFEATURES; j++)
        nf += (features & feature_names[j].bit) != 0;
    struct enc e;
    int rc = enc_begin(&e, out, PROTO_WELCOME);
    if (rc)
        return rc;
    msgpack_pack_map(&e.pk, 4 + (w->leader != NULL) + (nf > 0));
    enc_cstr(&e, "version");
    msgpack_pack_uint32(&e.pk, w->version);
    enc_cstr(&e, "node_id");
    msgpack_pack_uint64(&e.pk, w->node_id);
    enc_cstr(&e, "cluster_id");
    enc_str(&e, w->cluster_id != NULL ? w->cluster_id : "",
            w->cluster_id != NULL ? w->cluster_id_len : 0);
    enc_cstr(&e, "epoch");
    msgpack_pack_uint64(&e.pk, w->epoch);
    if (w->leader != NULL) {
        enc_cstr(&e, "leader");
        enc_str(&e, w->leader, w->leader_len);
    }
    if (nf > 0) {
        /* Omitted when empty: the WELCOME stays byte for byte what older nodes sent. */
        enc_cstr(&e, "features");
        msgpack_pack_array(&e.pk, nf);
        for (size_t j = 0; j < NFEATURES; j++)
            if (features & feature_names[j].bit)
                enc_cstr(&e, feature_names[j].name);
    }
    return enc_end(&e);
}

int proto_welcome_decode(const struct proto_frame *f, msgpack_zone *z, struct proto_welcome *w,
                         struct err *err)
{
    uint32_t features;
    return proto_welcome_decode_features(f, z, w, &features, err);
}

int proto_welcome_decode_features(const struct proto_frame *f, msgpack_zone *z,
                                  struct proto_welcome *w, uint32_t *features, struct err *err)
{
    struct field fs[] = {
        {.key = "version", .type = F_UINT, .required = true, .max = UINT32_MAX},
        {.key = "node_id", .type = F_UINT, .required = true, .max = UINT64_MAX},
        {.key = "cluster_id", .type = F_STR, .required = true},
        {.key = "epoch", .type = F_UINT, .required = true, .max = UINT64_MAX},
        {.key = "leader", .type = F_STR},
        {.key = "features", .type = F_FEATURES},
    };
    int rc = check_kind(f, PROTO_WELCOME, err);
    if (rc || (rc = decode_body_map(f, z, fs, 6, err)))
        return rc;
    if (fs[0].u == 0)
        return err_set(err, STRATA_PROTOCOL_ERROR, "WELCOME: \"version\" 0 is not a version");
    if (fs[1].u == 0)
        return err_set(err, STRATA_PROTOCOL_ERROR, "WELCOME: \"node_id\" 0 is not a node id");
    w->version = (uint32_t)fs[0].u;
    w->node_id = fs[1].u;
    w->cluster_id = fs[2].s;
    w->cluster_id_len = fs[2].slen;
    w->epoch = fs[3].u;
    w->leader = fs[4].present ? fs[4].s : NULL;
    w->leader_len = fs[4].present ? fs[4].slen : 0;
    *features = fs[5].present ? (uint32_t)fs[5].u : 0;
    return 0;
}

/* ---- REQUEST ---------------------------------------------------------------------------- */

int proto_request_append(struct buf *out, uint64_t id, uint32_t flags, const uint8_t *cmd,
                         size_t cmd_len)
{
    return proto_request_append_routed(out, id, flags, cmd, cmd_len, NULL);
}

int proto_request_append_routed(struct buf *out, uint64_t id, uint32_t flags, const uint8_t *cmd,
                                size_t cmd_len, const struct proto_route *route)
{
    if (cmd == NULL || cmd_len == 0)
        return STRATA_INVALID_ARGUMENT;
    struct enc e;
    int rc = enc_begin(&e, out, PROTO_REQUEST);
    if (rc)
        return rc;
    msgpack_pack_uint64(&e.pk, id);
    msgpack_pack_uint32(&e.pk, flags);
    /* The command is already MessagePack (the client library packed it): copied as is. */
    enc_raw(&e, cmd, cmd_len);
    if (route && route->set) {
        msgpack_pack_array(&e.pk, 2);
        msgpack_pack_uint32(&e.pk, route->shard);
        msgpack_pack_uint64(&e.pk, route->epoch);
    }
    return enc_end(&e);
}

int proto_request_decode(const struct proto_frame *f, struct proto_request *r, struct err *err)
{
    int rc = check_kind(f, PROTO_REQUEST, err);
    if (rc)
        return rc;
    /* The contract takes no zone: the command map is unpacked (to find where it ends and
     * that it is a map) into a local one and only its bytes are returned. */
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 1024))
        return err_set(err, STRATA_OUT_OF_MEMORY, "REQUEST: out of memory decoding");
    msgpack_object o;
    size_t off = 0;
    uint64_t id, flags;
    if ((rc = unpack_value(f, &off, &z, &o, false, "id", err)) ||
        (rc = decode_uint(f, &o, UINT64_MAX, "id", &id, err)) ||
        (rc = unpack_value(f, &off, &z, &o, false, "flags", err)) ||
        (rc = decode_uint(f, &o, UINT32_MAX, "flags", &flags, err)))
        goto done;
    size_t cmd_start = off;
    if ((rc = unpack_value(f, &off, &z, &o, false, "command", err)))
        goto done;
    if (o.type != MSGPACK_OBJECT_MAP) {
        rc = err_set(err, STRATA_PROTOCOL_ERROR, "REQUEST: command must be a map (got %s)",
                     type_name(&o));
        goto done;
    }
    size_t cmd_end = off;
    memset(&r->route, 0, sizeof r->route);
    if (off < f->len) {
        /* Optional 4th value: the client's routing expectation [shard, epoch]. */
        if ((rc = unpack_value(f, &off, &z, &o, true, "route", err)))
            goto done;
        if (o.type != MSGPACK_OBJECT_ARRAY || o.via.array.size != 2 ||
            o.via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            o.via.array.ptr[0].via.u64 > UINT32_MAX ||
            o.via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            rc = err_set(err, STRATA_PROTOCOL_ERROR,
                         "REQUEST: route must be [shard, epoch] (two unsigned integers)");
            goto done;
        }
        r->route.set = true;
        r->route.shard = (uint32_t)o.via.array.ptr[0].via.u64;
        r->route.epoch = o.via.array.ptr[1].via.u64;
    }
    r->id = id;
    r->flags = (uint32_t)flags;
    r->cmd = f->body + cmd_start;
    r->cmd_len = cmd_end - cmd_start;
done:
    msgpack_zone_destroy(&z);
    return rc;
}

/* ---- RESPONSE --------------------------------------------------------------------------- */

int proto_response_ok_append(struct buf *out, uint64_t id, const uint8_t *result, size_t len)
{
    struct enc e;
    int rc = enc_begin(&e, out, PROTO_RESPONSE);
    if (rc)
        return rc;
    msgpack_pack_uint64(&e.pk, id);
    msgpack_pack_uint8(&e.pk, 0);
    if (result == NULL || len == 0)
        msgpack_pack_nil(&e.pk); /* "no result" is still one value on the wire */
    else
        enc_raw(&e, result, len);
    return enc_end(&e);
}

int proto_response_err_append(struct buf *out, uint64_t id, int code, const char *message,
                              const char *leader)
{
    /* A code the peer cannot map back to a name would make the response undecodable;
     * OUTCOME_FORGOTTEN is the one internal code with a wire form (enc_error_map). */
    if (code <= 0 || (code >= PROTO_CODE_LIMIT && code != STRATA_OUTCOME_FORGOTTEN))
        return STRATA_INVALID_ARGUMENT;
    struct enc e;
    int rc = enc_begin(&e, out, PROTO_RESPONSE);
    if (rc)
        return rc;
    msgpack_pack_uint64(&e.pk, id);
    msgpack_pack_uint8(
        &e.pk, (uint8_t)(code == STRATA_OUTCOME_FORGOTTEN ? STRATA_HISTORY_UNAVAILABLE : code));
    enc_error_map(&e, code, message, leader);
    return enc_end(&e);
}

int proto_response_decode(const struct proto_frame *f, msgpack_zone *z, struct proto_response *r,
                          struct err *err)
{
    int rc = check_kind(f, PROTO_RESPONSE, err);
    if (rc)
        return rc;
    msgpack_object o;
    size_t off = 0;
    uint64_t id, code;
    if ((rc = unpack_value(f, &off, z, &o, false, "id", err)) ||
        (rc = decode_uint(f, &o, UINT64_MAX, "id", &id, err)) ||
        (rc = unpack_value(f, &off, z, &o, false, "code", err)) ||
        (rc = decode_uint(f, &o, PROTO_CODE_LIMIT - 1, "code", &code, err)))
        return rc;
    size_t start = off;
    if ((rc = unpack_value(f, &off, z, &o, true, code == 0 ? "result" : "error map", err)))
        return rc;
    r->id = id;
    r->code = (int)code;
    r->result = NULL;
    r->result_len = 0;
    r->message = NULL;
    r->message_len = 0;
    r->leader = NULL;
    r->leader_len = 0;
    if (code == 0) {
        r->result = f->body + start;
        r->result_len = f->len - start;
        return 0;
    }
    int named;
    bool forgotten;
    if ((rc = decode_error_map(f, &o, &named, &r->message, &r->message_len, &r->leader,
                               &r->leader_len, &forgotten, err)))
        return rc;
    /* Code and name are both stable; disagreement means a broken sender. */
    if (named != r->code)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "RESPONSE: code %d does not match error name %s (%d)", r->code,
                       err_name(named), named);
    if (forgotten && r->code != STRATA_HISTORY_UNAVAILABLE)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "RESPONSE: \"forgotten\" is true with code %d (%s), not "
                       "HISTORY_UNAVAILABLE",
                       r->code, err_name(r->code));
    if (forgotten)
        r->code = STRATA_OUTCOME_FORGOTTEN;
    return 0;
}

/* ---- ERROR ------------------------------------------------------------------------------ */

int proto_error_append(struct buf *out, int code, const char *message)
{
    if (code <= 0 || code >= PROTO_CODE_LIMIT)
        return STRATA_INVALID_ARGUMENT;
    struct enc e;
    int rc = enc_begin(&e, out, PROTO_ERROR);
    if (rc)
        return rc;
    enc_error_map(&e, code, message, NULL);
    return enc_end(&e);
}

int proto_error_decode(const struct proto_frame *f, msgpack_zone *z, int *code,
                       const char **message, size_t *message_len, struct err *err)
{
    int rc = check_kind(f, PROTO_ERROR, err);
    if (rc)
        return rc;
    msgpack_object o;
    size_t off = 0;
    if ((rc = unpack_value(f, &off, z, &o, true, "body", err)))
        return rc;
    return decode_error_map(f, &o, code, message, message_len, NULL, NULL, NULL, err);
}
