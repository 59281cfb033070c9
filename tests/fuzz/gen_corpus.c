/* Writes the fuzz seed corpus (tests/fuzz/corpus/frame/): real frames made by proto/'s
 * encoders. The committed files are checked against this program's output by the CTest
 * test fuzz_corpus_current, so they double as golden wire bytes (docs/protocol.md's
 * worked example is request_kv_get.bin + response_kv_get.bin).
 * Usage: fuzz_gen_corpus DIR */
#include "proto.h"

#include <stdio.h>
#include <string.h>

static int sink(void *data, const char *p, size_t len)
{
    return buf_append(data, p, len) ? -1 : 0;
}

static void str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

static int save(const char *dir, const char *name, const struct buf *b)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(b->data, 1, b->len, f) != b->len || fclose(f) != 0) {
        perror(path);
        return 1;
    }
    return 0;
}

/* {"op":"kv.get","key":"a"} */
static void cmd_kv_get(struct buf *b)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, sink);
    msgpack_pack_map(&pk, 2);
    str(&pk, "op");
    str(&pk, "kv.get");
    str(&pk, "key");
    str(&pk, "a");
}

/* A write whose value has every MessagePack type the engine accepts. */
static void cmd_json_set(struct buf *b)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, sink);
    msgpack_pack_map(&pk, 4);
    str(&pk, "op");
    str(&pk, "json.set");
    str(&pk, "key");
    str(&pk, "doc");
    str(&pk, "path");
    str(&pk, "$.a");
    str(&pk, "value");
    msgpack_pack_map(&pk, 6);
    str(&pk, "list");
    msgpack_pack_array(&pk, 3);
    msgpack_pack_int64(&pk, -5);
    msgpack_pack_uint64(&pk, 1ull << 40);
    msgpack_pack_map(&pk, 1);
    str(&pk, "x");
    msgpack_pack_nil(&pk);
    str(&pk, "f");
    msgpack_pack_double(&pk, 1.5);
    str(&pk, "b");
    msgpack_pack_true(&pk);
    str(&pk, "bin");
    msgpack_pack_bin_with_body(&pk, "\x00\x01\x02", 3);
    str(&pk, "long");
    msgpack_pack_str(&pk, 300);
    for (int i = 0; i < 300; i++)
        msgpack_pack_str_body(&pk, "z", 1);
    str(&pk, "empty");
    msgpack_pack_array(&pk, 0);
}

/* The engine's kv.get result: {"value":"b","version":2,"ts":1717171717000000} */
static void result_kv_get(struct buf *b)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, sink);
    msgpack_pack_map(&pk, 3);
    str(&pk, "value");
    str(&pk, "b");
    str(&pk, "version");
    msgpack_pack_uint64(&pk, 2);
    str(&pk, "ts");
    msgpack_pack_uint64(&pk, 1717171717000000ull);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    struct buf b, cmd, res, all;
    buf_init(&b);
    buf_init(&cmd);
    buf_init(&res);
    buf_init(&all);
    int bad = 0;

    struct proto_hello h = {1, 1, "strata-cli/0.1", 14, "secret", 6};
    bad |= proto_hello_append(&b, &h) || save(dir, "hello.bin", &b);
    buf_append(&all, b.data, b.len);

    buf_reset(&b);
    struct proto_welcome w = {1, 1, "c0ffee", 6, 0, "127.0.0.1:9876", 14};
    bad |= proto_welcome_append(&b, &w) || save(dir, "welcome.bin", &b);
    buf_append(&all, b.data, b.len);

    /* What this version's nodes send: the same WELCOME listing its features. */
    buf_reset(&b);
    bad |= proto_welcome_append_features(&b, &w, PROTO_FEAT_IDEM) ||
           save(dir, "welcome_features.bin", &b);
    buf_append(&all, b.data, b.len);

    buf_reset(&b);
    cmd_kv_get(&cmd);
    bad |= proto_request_append(&b, 7, 0, cmd.data, cmd.len) || save(dir, "request_kv_get.bin", &b);
    buf_append(&all, b.data, b.len);

    buf_reset(&b);
    result_kv_get(&res);
    bad |=
        proto_response_ok_append(&b, 7, res.data, res.len) || save(dir, "response_kv_get.bin", &b);
    buf_append(&all, b.data, b.len);

    buf_reset(&b);
    buf_reset(&cmd);
    cmd_json_set(&cmd);
    bad |= proto_request_append(&b, 8, PROTO_REQ_STALE | PROTO_REQ_FORWARDED, cmd.data, cmd.len) ||
           save(dir, "request_json_set.bin", &b);
    buf_append(&all, b.data, b.len);

    buf_reset(&b);
    bad |=
        proto_response_err_append(&b, 8, STRATA_NOT_LEADER, "not the leader", "127.0.0.2:9876") ||
        save(dir, "response_not_leader.bin", &b);
    buf_append(&all, b.data, b.len);

    buf_reset(&b);
    bad |= proto_response_err_append(&b, 10, STRATA_OUTCOME_FORGOTTEN,
                                     "seq 3 is no longer remembered", NULL) ||
           save(dir, "response_forgotten.bin", &b);
    buf_append(&all, b.data, b.len);

    buf_reset(&b);
    bad |= proto_response_ok_append(&b, 9, NULL, 0) || save(dir, "response_nil.bin", &b);
    buf_append(&all, b.data, b.len);

    buf_reset(&b);
    bad |= proto_error_append(&b, STRATA_TOO_LARGE,
                              "frame of 70000000 bytes exceeds the maximum frame size of "
                              "67108864 bytes") ||
           save(dir, "error_too_large.bin", &b);
    buf_append(&all, b.data, b.len);

    /* A whole session in one stream: the reader must cut it into frames. */
    bad |= save(dir, "session.bin", &all);

    struct proto_peer p = {.group = 1, .node_id = 2};
    strcpy(p.address, "127.0.0.2:9876");
    uint8_t pre[PROTO_PEER_FIXED + PROTO_ADDRESS_MAX];
    buf_reset(&b);
    buf_append(&b, pre, proto_peer_encode(pre, &p));
    bad |= save(dir, "peer_preamble.bin", &b);

    buf_close(&b);
    buf_close(&cmd);
    buf_close(&res);
    buf_close(&all);
    return bad ? 1 : 0;
}
