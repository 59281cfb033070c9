/* libstrata's idempotency keys: the client id and the keyed command bytes. */
#include "keys.h"

#include <msgpack.h>
#include <openssl/rand.h>
#include <string.h>

int keys_client_id(uint8_t id[KEYS_CLIENT_LEN], struct err *err)
{
    if (RAND_bytes(id, KEYS_CLIENT_LEN) != 1)
        return err_set(err, STRATA_INTERNAL, "no random bytes for the client id");
    return 0;
}

void keys_inspect(const uint8_t *cmd, size_t len, struct keys_cmd *out)
{
    *out = (struct keys_cmd){0};
    msgpack_zone z;
    if (len == 0 || !msgpack_zone_init(&z, 512))
        return;
    msgpack_object o;
    size_t off = 0;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS &&
        off == len && o.type == MSGPACK_OBJECT_MAP) {
        out->entries = o.via.map.size;
        for (uint32_t i = 0; i < o.via.map.size; i++) {
            const msgpack_object *k = &o.via.map.ptr[i].key;
            if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == 4 &&
                memcmp(k->via.str.ptr, "idem", 4) == 0)
                out->has_idem = true;
        }
        /* The map header msgpack-c just decoded: fixmap, map 16 or map 32. */
        out->body = (cmd[0] & 0xf0) == 0x80 ? 1 : cmd[0] == 0xde ? 3 : 5;
        out->ok = out->body <= len && out->entries < UINT32_MAX;
    }
    msgpack_zone_destroy(&z);
}

static int buf_w(void *data, const char *p, size_t len)
{
    return buf_append(data, p, len) ? -1 : 0;
}

int keys_wrap(const uint8_t *cmd, size_t len, const struct keys_cmd *k,
              const uint8_t id[KEYS_CLIENT_LEN], uint64_t seq, uint64_t ack, bool retry,
              struct buf *out)
{
    buf_reset(out);
    if (!k->ok || k->has_idem)
        return buf_append(out, cmd, len);
    if (buf_reserve(out, len + 64))
        return STRATA_OUT_OF_MEMORY;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_w);
    msgpack_pack_map(&pk, k->entries + 1);
    buf_append(out, cmd + k->body, len - k->body); /* room reserved above */
    msgpack_pack_str_with_body(&pk, "idem", 4);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_bin_with_body(&pk, id, KEYS_CLIENT_LEN);
    msgpack_pack_uint64(&pk, seq);
    msgpack_pack_uint64(&pk, ack);
    if (retry ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk))
        return STRATA_OUT_OF_MEMORY;
    return 0;
}
