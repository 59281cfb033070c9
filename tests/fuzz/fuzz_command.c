/* libFuzzer target for the command path: the input is one command as it would arrive in a
 * REQUEST frame or a Raft log entry. It goes through storage_cmd_kind and storage_exec on
 * an engine pre-populated with every primitive (KV keys, a fork, an event, a JSON doc, a
 * state cell, a vector collection), so the fuzzer reaches handlers past "not found". The
 * engine is reused across inputs (writes accumulate, like a real server) and rebuilt
 * every REBUILD_EVERY inputs to keep memory bounded.
 *
 * Checked on every input: a failure has a code and message and appends nothing and leaves
 * the version alone; a success appends a result; a command classified READ never bumps
 * the version. Any crash, sanitizer report or broken invariant (abort) is a finding.
 *
 * Built with -DFUZZ_GEN (by gcc, as fuzz_gen_command) the same file writes the seed
 * corpus tests/fuzz/corpus/command/: real commands encoded by storage_json_to_value.
 * Usage: fuzz_gen_command DIR */
#include "storage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* msgpack-c answers a too-big declared container count by failing malloc; under ASan
 * that aborts unless allocations may return NULL. Overridable via ASAN_OPTIONS. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "CHECK failed: %s (line %d)\n", #cond, __LINE__);                      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define REBUILD_EVERY 2000

/* The engine every input runs against: one of each thing a command can name. */
static const char *const setup[] = {
    "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}",
    "{\"op\":\"kv.put\",\"key\":\"user:1\",\"value\":{\"name\":\"Ada\",\"langs\":[\"en\",\"fr\"]}}",
    "{\"op\":\"kv.batch_put\",\"items\":[[\"b\",true],[\"c\",{\"$bytes\":\"AAEC\"}]]}",
    "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"exp\"}",
    "{\"op\":\"kv.put\",\"branch\":\"exp\",\"key\":\"a\",\"value\":2}",
    "{\"op\":\"event.append\",\"type\":\"click\",\"payload\":{\"x\":1}}",
    "{\"op\":\"json.set\",\"key\":\"plan\",\"path\":\"$\",\"value\":{\"title\":\"Q3\","
    "\"tags\":[\"a\"],\"meta\":{\"n\":1}}}",
    "{\"op\":\"state.init\",\"cell\":\"lock\",\"value\":\"free\"}",
    "{\"op\":\"vector.create_collection\",\"collection\":\"docs\",\"dimension\":3,"
    "\"metric\":\"cosine\"}",
    "{\"op\":\"vector.upsert\",\"collection\":\"docs\",\"key\":\"a\",\"vector\":[1,0,0],"
    "\"metadata\":{\"lang\":\"en\",\"n\":1}}",
    "{\"op\":\"vector.upsert\",\"collection\":\"docs\",\"key\":\"b\",\"vector\":[0,1,0],"
    "\"metadata\":{\"lang\":\"fr\",\"n\":2}}",
};

static void encode(const char *json, struct buf *out)
{
    struct err e;
    buf_reset(out);
    if (storage_json_to_value(json, strlen(json), out, &e) != 0) {
        fprintf(stderr, "bad JSON command %s: %s\n", json, e.msg);
        abort();
    }
}

static struct storage *engine;
static unsigned runs;
static int64_t ts;

static void build(void)
{
    storage_free(engine);
    CHECK(storage_new(NULL, &engine) == 0);
    ts = 1700000000000000;
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    for (size_t i = 0; i < sizeof setup / sizeof setup[0]; i++) {
        struct err e;
        encode(setup[i], &cmd);
        if (storage_exec(engine, (const uint8_t *)cmd.data, cmd.len, ts += 1000, &res, &e) != 0) {
            fprintf(stderr, "setup command %s failed: %s\n", setup[i], e.msg);
            abort();
        }
    }
    buf_close(&cmd);
    buf_close(&res);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (engine == NULL || ++runs % REBUILD_EVERY == 0)
        build();
    uint8_t *in = malloc(size ? size : 1);
    CHECK(in != NULL);
    memcpy(in, data, size);
    /* As in fuzz_frame.c: 32-bit container counts make msgpack-c try gigabyte
     * allocations before reading an element; the 16-bit forms keep the fuzzer fast. */
    for (size_t i = 0; i < size; i++)
        if (in[i] == 0xdd || in[i] == 0xdf)
            in[i] -= 1;

    struct err e;
    enum storage_cmd_kind kind = 0;
    int krc = storage_cmd_kind(in, size, &kind, &e);
    if (krc == 0)
        CHECK(kind == STORAGE_CMD_READ || kind == STORAGE_CMD_WRITE);
    else
        CHECK(e.code == krc && e.msg[0] != '\0');

    struct buf res;
    buf_init(&res);
    uint64_t before = storage_version(engine);
    memset(&e, 0, sizeof e);
    int rc = storage_exec(engine, in, size, ts += 1000, &res, &e);
    if (rc != 0) {
        CHECK(rc > 0 && rc < STRATA_CODE_COUNT);
        CHECK(e.code == rc && e.msg[0] != '\0');
        CHECK(res.len == 0);
        CHECK(storage_version(engine) == before);
    } else {
        CHECK(res.len > 0);
        /* A command storage_cmd_kind calls a read must not create a version. */
        if (krc == 0 && kind == STORAGE_CMD_READ)
            CHECK(storage_version(engine) == before);
        /* Results must be valid MessagePack the CLI can render. */
        struct buf json;
        buf_init(&json);
        CHECK(storage_value_to_json((const uint8_t *)res.data, res.len, &json, false) == 0);
        buf_close(&json);
    }
    buf_close(&res);
    free(in);
    return 0;
}

#ifdef FUZZ_GEN
/* Seeds: {file name, command}. Reads and writes over every primitive. */
static const char *const seeds[][2] = {
    {"kv_get_at_version.bin", "{\"op\":\"kv.get\",\"key\":\"a\",\"at_version\":1}"},
    {"kv_scan.bin", "{\"op\":\"kv.scan\",\"prefix\":\"user:\",\"limit\":2}"},
    {"kv_history.bin", "{\"op\":\"kv.history\",\"branch\":\"exp\",\"key\":\"a\"}"},
    {"kv_batch_delete.bin", "{\"op\":\"kv.batch_delete\",\"keys\":[\"a\",\"b\",\"zz\"]}"},
    {"json_set_path.bin", "{\"op\":\"json.set\",\"key\":\"plan\",\"path\":\"$.tags[1]\","
                          "\"value\":\"b\"}"},
    {"json_get_path.bin", "{\"op\":\"json.get\",\"key\":\"plan\",\"path\":\"$.meta.n\"}"},
    {"event_range.bin", "{\"op\":\"event.range\",\"type\":\"click\",\"direction\":\"backward\","
                        "\"limit\":1}"},
    {"event_verify.bin", "{\"op\":\"event.verify_chain\"}"},
    {"state_cas.bin", "{\"op\":\"state.cas\",\"cell\":\"lock\",\"expected_counter\":1,"
                      "\"value\":\"held\"}"},
    {"vector_query.bin", "{\"op\":\"vector.query\",\"collection\":\"docs\",\"vector\":[1,0.5,0],"
                         "\"k\":2,\"filter\":{\"n\":{\"$gte\":2}}}"},
    {"branch_diff.bin", "{\"op\":\"branch.diff\",\"a\":\"exp\",\"b\":\"default\","
                        "\"three_way\":true}"},
    {"branch_merge.bin", "{\"op\":\"branch.merge\",\"source\":\"exp\",\"target\":\"default\","
                         "\"strategy\":\"source_wins\"}"},
    {"batch.bin", "{\"op\":\"batch\",\"space\":\"logs\",\"ops\":[{\"op\":\"kv.put\",\"key\":\"x\","
                  "\"value\":1},{\"op\":\"state.init\",\"cell\":\"s\",\"value\":0}]}"},
    {"space_create.bin", "{\"op\":\"space.create\",\"space\":\"logs\"}"},
};

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    struct buf cmd;
    buf_init(&cmd);
    int bad = 0;
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        char path[4096];
        encode(seeds[i][1], &cmd);
        snprintf(path, sizeof path, "%s/%s", argv[1], seeds[i][0]);
        FILE *f = fopen(path, "wb");
        if (f == NULL || fwrite(cmd.data, 1, cmd.len, f) != cmd.len || fclose(f) != 0) {
            perror(path);
            bad = 1;
        }
    }
    buf_close(&cmd);
    return bad;
}
#endif
