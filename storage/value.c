/* Values: validation against the data-model limits and canonical MessagePack encoding. */
#include "internal.h"

#include <string.h>

bool utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        /* ASCII fast path, 8 bytes at a time. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + len > n)
            return false;
        for (size_t j = 1; j < len; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

static int check_rec(const struct storage_config *cfg, const msgpack_object *o, int depth,
                     struct err *err)
{
    if (depth > cfg->max_depth)
        return err_set(err, STRATA_INVALID_ARGUMENT, "value nesting exceeds the limit of %d",
                       cfg->max_depth);
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
    case MSGPACK_OBJECT_BOOLEAN:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
    case MSGPACK_OBJECT_BIN:
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "integer %llu does not fit in int64",
                           (unsigned long long)o->via.u64);
        return 0;
    case MSGPACK_OBJECT_STR:
        if (!utf8_valid((const uint8_t *)o->via.str.ptr, o->via.str.size))
            return err_set(err, STRATA_INVALID_ARGUMENT, "string is not valid UTF-8");
        return 0;
    case MSGPACK_OBJECT_ARRAY:
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            int rc = check_rec(cfg, &o->via.array.ptr[i], depth + 1, err);
            if (rc)
                return rc;
        }
        return 0;
    case MSGPACK_OBJECT_MAP:
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR)
                return err_set(err, STRATA_INVALID_ARGUMENT, "object keys must be strings");
            int rc = check_rec(cfg, &kv->key, depth + 1, err);
            if (rc == 0)
                rc = check_rec(cfg, &kv->val, depth + 1, err);
            if (rc)
                return rc;
        }
        return 0;
    default:
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "unsupported value type (msgpack ext is not a StrataDB value)");
    }
}

int value_check(const struct storage_config *cfg, const msgpack_object *o, struct err *err)
{
    return check_rec(cfg, o, 1, err);
}

int value_pack(msgpack_packer *pk, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return msgpack_pack_double(pk, o->via.f64);
    case MSGPACK_OBJECT_ARRAY: {
        int rc = msgpack_pack_array(pk, o->via.array.size);
        for (uint32_t i = 0; rc == 0 && i < o->via.array.size; i++)
            rc = value_pack(pk, &o->via.array.ptr[i]);
        return rc;
    }
    case MSGPACK_OBJECT_MAP: {
        int rc = msgpack_pack_map(pk, o->via.map.size);
        for (uint32_t i = 0; rc == 0 && i < o->via.map.size; i++) {
            rc = value_pack(pk, &o->via.map.ptr[i].key);
            if (rc == 0)
                rc = value_pack(pk, &o->via.map.ptr[i].val);
        }
        return rc;
    }
    default:
        return msgpack_pack_object(pk, *o);
    }
}

int buf_pack_write(void *data, const char *p, size_t len)
{
    return buf_append(data, p, len) ? -1 : 0;
}

int value_encode(const struct storage_config *cfg, const msgpack_object *o, struct buf *out,
                 struct err *err)
{
    int rc = value_check(cfg, o, err);
    if (rc)
        return rc;
    buf_reset(out);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_pack_write);
    if (value_pack(&pk, o))
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory encoding a value");
    if (out->len > cfg->max_value_bytes)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "value of %zu bytes exceeds the limit of %zu bytes",
                       out->len, cfg->max_value_bytes);
    return 0;
}

int value_decode(const uint8_t *data, size_t len, msgpack_zone *z, msgpack_object *o)
{
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack(( const char *)data, len, &off, z, o);
    if (r != MSGPACK_UNPACK_SUCCESS && r != MSGPACK_UNPACK_EXTRA_BYTES)
        return r == MSGPACK_UNPACK_NOMEM_ERROR ? STRATA_OUT_OF_MEMORY : STRATA_INTERNAL;
    return 0;
}

bool value_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    if (a == NULL || b == NULL)
        return a == b;
    return alen == blen && memcmp(a, b, alen) == 0;
}

const msgpack_object *mp_map_getn(const msgpack_object *map, const char *key, size_t klen)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

bool mp_str_eq(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

void mp_pack_str(msgpack_packer *pk, const char *s, size_t len)
{
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

void(mp_pack_cstr)(msgpack_packer *pk, const char *s)
{
    mp_pack_str(pk, s, strlen(s));
}
