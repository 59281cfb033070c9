/* libFuzzer target for the Raft log-entry decoder (replication/entry.h, private to
 * replication/ and included directly here): entries arrive from other nodes in
 * AppendEntries and from the on-disk log, so entry_decode trusts nothing it reads.
 *
 * Checked: a refused entry has PROTOCOL_ERROR and a message; an accepted entry yields
 * exactly `count` non-empty commands that lie inside the input and fill the payload, and
 * encoding them again with entry_writer gives back the input byte for byte (the format
 * has one encoding: reserved bytes and padding must be zero). Any crash, sanitizer report
 * or broken invariant (abort) is a finding.
 *
 * Built with -DFUZZ_GEN (by gcc, as fuzz_gen_entry) the same file writes the seed corpus
 * tests/fuzz/corpus/entry/. Usage: fuzz_gen_entry DIR */
#include "entry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "CHECK failed: %s (line %d)\n", #cond, __LINE__);                      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy of exactly `size` bytes so ASan sees any read past the end. */
    uint8_t *in = malloc(size ? size : 1);
    CHECK(in != NULL);
    memcpy(in, data, size);

    struct entry_view v;
    struct err e;
    memset(&e, 0, sizeof e);
    int rc = entry_decode(in, size, &v, &e);
    if (rc != 0) {
        CHECK(rc == STRATA_PROTOCOL_ERROR && e.code == rc && e.msg[0] != '\0');
        free(in);
        return 0;
    }
    CHECK(v.ts >= 0 && v.count >= 1);
    CHECK(v.payload == in + ENTRY_HEADER && entry_size(v.payload_len) == size);

    const uint8_t *cmd;
    size_t len, total = 0;
    uint32_t n = 0;
    while (entry_next(&v, &cmd, &len) == 1) {
        CHECK(len >= 1 && cmd >= v.payload && cmd + len <= v.payload + v.payload_len);
        CHECK(n < v.count);
        total += ENTRY_CMD_PREFIX + len;
        n++;
    }
    CHECK(n == v.count && total == v.payload_len);
    CHECK(entry_next(&v, &cmd, &len) == 0);

    /* Re-encode from the decoded view and compare. */
    uint8_t *out = malloc(size);
    CHECK(out != NULL);
    struct entry_writer w;
    entry_writer_init(&w, out, v.ts, v.count, (uint32_t)v.payload_len);
    v.off = 0;
    while (entry_next(&v, &cmd, &len) == 1)
        entry_writer_add(&w, cmd, (uint32_t)len);
    CHECK(entry_writer_finish(&w) == size);
    CHECK(memcmp(out, in, size) == 0);
    free(out);
    free(in);
    return 0;
}

#ifdef FUZZ_GEN
#include "storage.h"

static int save(const char *dir, const char *name, const uint8_t *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        return 1;
    }
    return 0;
}

/* Encodes the `count` commands (msgpack bytes with their lengths) at ts into NAME. */
static int seed(const char *dir, const char *name, int64_t ts, uint32_t count,
                const char *const *cmds, const size_t *lens)
{
    uint32_t payload = 0;
    for (uint32_t i = 0; i < count; i++)
        payload += ENTRY_CMD_PREFIX + (uint32_t)lens[i];
    uint8_t *out = malloc(entry_size(payload));
    CHECK(out != NULL);
    struct entry_writer w;
    entry_writer_init(&w, out, ts, count, payload);
    for (uint32_t i = 0; i < count; i++)
        entry_writer_add(&w, (const uint8_t *)cmds[i], (uint32_t)lens[i]);
    size_t n = entry_writer_finish(&w);
    int bad = save(dir, name, out, n);
    free(out);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    /* Real commands, encoded by the engine's JSON-to-MessagePack helper (the generator
     * links the engine; the fuzz target needs only the codec). */
    static const char *const json[] = {
        "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}",
        "{\"op\":\"kv.get\",\"key\":\"a\"}",
        "{\"op\":\"event.len\"}",
    };
    struct buf mp[3];
    const char *cmds[3];
    size_t lens[3];
    for (int i = 0; i < 3; i++) {
        struct err e;
        buf_init(&mp[i]);
        CHECK(storage_json_to_value(json[i], strlen(json[i]), &mp[i], &e) == 0);
        cmds[i] = (const char *)mp[i].data;
        lens[i] = mp[i].len;
    }
    /* Payload 4 + 4 = 8 bytes of msgpack nil: no padding. */
    const char *tiny[] = {"\xc0\xc0\xc0\xc0"};
    const size_t tiny_len[] = {4};

    int bad = seed(argv[1], "one_command.bin", 1700000000000000, 1, cmds, lens);
    bad |= seed(argv[1], "three_commands.bin", 1700000000001000, 3, cmds, lens);
    bad |= seed(argv[1], "unpadded.bin", 0, 1, tiny, tiny_len);
    for (int i = 0; i < 3; i++)
        buf_close(&mp[i]);
    return bad;
}
#endif
