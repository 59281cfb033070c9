/* libFuzzer target for the command path: the input is one command as it would arrive in a
 * REQUEST frame or a Raft log entry. It goes through storage_cmd_kind and storage_exec on
 * an engine pre-populated with every primitive (KV keys, a fork, an event, a JSON doc, a
 * state cell, a vector collection), so the fuzzer reaches handlers past "not found". Every
 * input runs on a fresh copy of that engine, so a saved input reproduces on its own.
 *
 * Checked on every input: a failure has a code and message and appends nothing and leaves
 * the version alone; a success appends a result; a command classified READ never bumps
 * the version. Any crash, sanitizer report or broken invariant (abort) is a finding.
 *
 * Built with -DFUZZ_GEN (by gcc, as fuzz_gen_command) the same file writes the seed
 * corpus tests/fuzz/corpus/command/: real commands encoded by storage_json_to_value.
 * Usage: fuzz_gen_command DIR */
#include "fuzz_input.h"
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

/* The setup commands, encoded once (jansson and the JSON-to-MessagePack conversion are
 * not what is under test, and cost more than running them). */
static struct buf setup_cmds[sizeof setup / sizeof setup[0]];

/* A fresh engine holding the setup state. Each input gets its own: nothing an earlier
 * input did (a write, a failed command's side effect) can change what a saved input
 * does when replayed alone, and the engine is freed within the same input, so
 * libFuzzer's per-input leak check (mallocs == frees) stays meaningful and quiet. */
static struct storage *build(int64_t *ts)
{
    if (setup_cmds[0].data == NULL)
        for (size_t i = 0; i < sizeof setup / sizeof setup[0]; i++) {
            buf_init(&setup_cmds[i]);
            encode(setup[i], &setup_cmds[i]);
        }
    struct storage *s;
    CHECK(storage_new(NULL, &s) == 0);
    *ts = 1700000000000000;
    struct buf res;
    buf_init(&res);
    for (size_t i = 0; i < sizeof setup / sizeof setup[0]; i++) {
        struct err e;
        buf_reset(&res);
        if (storage_exec(s, (const uint8_t *)setup_cmds[i].data, setup_cmds[i].len, *ts += 1000,
                         &res, &e) != 0) {
            fprintf(stderr, "setup command %s failed: %s\n", setup[i], e.msg);
            abort();
        }
    }
    buf_close(&res);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t ts;
    struct storage *engine = build(&ts);
    /* Declared container counts kept to what the input can hold (fuzz_input.h). */
    uint8_t *in = fuzz_input_copy(data, size);
    CHECK(in != NULL);

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
    storage_free(engine);
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
    {"idem_event_append.bin",
     "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{},\"idem\":[{\"$bytes\":"
     "\"AAECAwQFBgcICQoLDA0ODw==\"},3,2,true]}"},
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
