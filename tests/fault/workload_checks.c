/* The after-fault steps probe (service is back) and final (linearizable reads of every
 * register and log, each log checked against the history's appends). */
#include "workload.h"

/* ---- probe: service is back ------------------------------------------------------------- */

int cmd_probe(const struct opts *o)
{
    struct strata *db = NULL;
    int rc = open_db(o->uri, 1000, &db);
    if (rc)
        return rc;
    uint64_t t0 = now_ms(), deadline = t0 + (uint64_t)o->within_ms;
    char value[64];
    snprintf(value, sizeof value, "probe-%" PRIu64, clock_mono_ns());
    struct buf put, get, res;
    buf_init(&put);
    buf_init(&get);
    buf_init(&res);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &put, buf_w);
    msgpack_pack_map(&pk, 3);
    pk_kv(&pk, "op", "kv.put");
    pk_kv(&pk, "key", "probe");
    pk_kv(&pk, "value", value);
    msgpack_packer_init(&pk, &get, buf_w);
    msgpack_pack_map(&pk, 2);
    pk_kv(&pk, "op", "kv.get");
    pk_kv(&pk, "key", "probe");
    struct err e;
    err_clear(&e);
    bool written = false, done = false;
    int attempts = 0;
    while (!done && now_ms() < deadline && attempts++ < 1000) {
        buf_reset(&res);
        int code = strata_exec(db, written ? get.data : put.data, written ? get.len : put.len,
                               &res, &e);
        if (code == 0 && !written) {
            written = true;
            continue;
        }
        if (code == 0) {
            struct res r;
            if (res_parse(&r, &res) == 0) {
                const msgpack_object *v = map_get(r.o, "value");
                done = v && v->type == MSGPACK_OBJECT_STR && v->via.str.size == strlen(value) &&
                       memcmp(v->via.str.ptr, value, v->via.str.size) == 0;
                if (!done)
                    err_set(&e, STRATA_INTERNAL, "read back another value than written");
                res_free(&r);
            }
            if (!done) /* an acknowledged write not read back: that is an anomaly */
                break;
        }
        sleep_ms(50);
    }
    if (done) {
        printf("{\"probe_ms\":%" PRIu64 "}\n", now_ms() - t0);
    } else {
        fprintf(stderr, "workload: no successful write + read within %d ms: %s: %s\n",
                o->within_ms, err_name(e.code), e.msg);
        rc = EXIT_ANOMALY;
    }
    buf_close(&put);
    buf_close(&get);
    buf_close(&res);
    strata_close(db);
    return rc;
}

/* ---- final: linearizable reads after healing ---------------------------------------------- */

/* The whole log of x, in order, into apps found/seen; anomalies counted. */
static int check_log(struct strata *db, struct object *x, uint64_t len, unsigned within_ms,
                     long *anomalies)
{
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    uint64_t next = 1;
    int rc = 0;
    /* value -> first seq seen; the logs are small (hundreds), a linear scan will do */
    size_t nseen = 0;
    char(*seen)[VAL_MAX] = calloc(len ? len : 1, VAL_MAX);
    if (seen == NULL)
        rc = EXIT_SETUP;
    for (int pages = 0; rc == 0 && next <= len && pages < 1000; pages++) {
        pack_read(&cmd, x, "event.range", next);
        struct err e;
        err_clear(&e);
        if ((rc = exec_retry(db, &cmd, -1, within_ms, &res, &e))) {
            fprintf(stderr, "workload: final event.range %s/%s: %s: %s\n", x->branch, x->key,
                    err_name(rc), e.msg);
            rc = EXIT_ANOMALY;
            break;
        }
        struct res r = {0};
        const msgpack_object *evs = NULL;
        if (res_parse(&r, &res) == 0)
            evs = map_get(r.o, "events");
        if (evs == NULL || evs->type != MSGPACK_OBJECT_ARRAY || evs->via.array.size == 0) {
            fprintf(stderr, "ANOMALY log %s/%s: event.len says %" PRIu64
                            " but the range from %" PRIu64 " is empty or malformed\n",
                    x->branch, x->key, len, next);
            (*anomalies)++;
            res_free(&r);
            break;
        }
        for (uint32_t i = 0; i < evs->via.array.size; i++) {
            const msgpack_object *ev = &evs->via.array.ptr[i];
            uint64_t seq = 0;
            map_u64(ev, "seq", &seq);
            const msgpack_object *v = map_get(map_get(ev, "payload"), "v");
            char val[VAL_MAX] = "";
            if (v && v->type == MSGPACK_OBJECT_STR)
                snprintf(val, sizeof val, "%.*s", (int)v->via.str.size, v->via.str.ptr);
            if (seq != next) {
                fprintf(stderr, "ANOMALY log %s/%s: expected seq %" PRIu64 ", got %" PRIu64 "\n",
                        x->branch, x->key, next, seq);
                (*anomalies)++;
            }
            next = seq + 1;
            for (size_t k = 0; k < nseen; k++)
                if (strcmp(seen[k], val) == 0) {
                    fprintf(stderr, "ANOMALY log %s/%s: value %s appended twice (again at seq %" PRIu64 ")\n",
                            x->branch, x->key, val, seq);
                    (*anomalies)++;
                }
            if (nseen < len)
                snprintf(seen[nseen++], VAL_MAX, "%s", val);
            struct append_rec *a = NULL;
            for (size_t k = 0; k < x->napps && a == NULL; k++)
                if (strcmp(x->apps[k].value, val) == 0)
                    a = &x->apps[k];
            if (a == NULL) {
                fprintf(stderr, "ANOMALY log %s/%s: seq %" PRIu64 " holds %s, never appended\n",
                        x->branch, x->key, seq, val);
                (*anomalies)++;
            } else {
                a->seen = true;
                if (a->oc == O_FAIL) {
                    fprintf(stderr, "ANOMALY log %s/%s: append %s failed definitely but is at seq %" PRIu64 "\n",
                            x->branch, x->key, val, seq);
                    (*anomalies)++;
                } else if (a->oc == O_OK && a->seq != seq) {
                    fprintf(stderr, "ANOMALY log %s/%s: append %s was acknowledged at seq %" PRIu64
                                    " but is at seq %" PRIu64 "\n",
                            x->branch, x->key, val, a->seq, seq);
                    (*anomalies)++;
                }
            }
        }
        res_free(&r);
    }
    for (size_t k = 0; rc == 0 && k < x->napps; k++)
        if (x->apps[k].oc == O_OK && !x->apps[k].seen) {
            fprintf(stderr, "ANOMALY log %s/%s: acknowledged append %s (seq %" PRIu64 ") is lost\n",
                    x->branch, x->key, x->apps[k].value, x->apps[k].seq);
            (*anomalies)++;
        }
    /* The hash chain itself. */
    if (rc == 0) {
        pack_read(&cmd, x, "event.verify_chain", 0);
        struct err e;
        err_clear(&e);
        struct res r;
        if (exec_retry(db, &cmd, -1, within_ms, &res, &e) == 0 && res_parse(&r, &res) == 0) {
            const msgpack_object *ok = map_get(r.o, "ok");
            if (ok == NULL || ok->type != MSGPACK_OBJECT_BOOLEAN || !ok->via.boolean) {
                fprintf(stderr, "ANOMALY log %s/%s: event.verify_chain is not ok\n", x->branch,
                        x->key);
                (*anomalies)++;
            }
            res_free(&r);
        } else {
            fprintf(stderr, "workload: verify_chain %s/%s: %s\n", x->branch, x->key, e.msg);
            rc = EXIT_ANOMALY;
        }
    }
    free(seen);
    buf_close(&cmd);
    buf_close(&res);
    return rc;
}

/* Final reads of every object of the history, appended to it; each log is checked
 * whole against the history's appends. */
static int final_reads(const struct opts *o, struct objects *s, FILE *f, long *anomalies)
{
    struct strata *db = NULL;
    int rc = open_db(o->uri, 2000, &db);
    if (rc)
        return rc;
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    for (size_t i = 0; i < s->n && rc == 0; i++) {
        struct object *x = &s->v[i];
        bool cell = !x->log && x->key[0] == 'c';
        pack_read(&cmd, x, x->log ? "event.len" : cell ? "state.get" : "kv.get", 0);
        struct err e;
        err_clear(&e);
        struct res r;
        if ((rc = exec_retry(db, &cmd, -1, (unsigned)o->within_ms, &res, &e))) {
            fprintf(stderr, "workload: final read of %s/%s failed: %s: %s\n", x->branch, x->key,
                    err_name(rc), e.msg);
            rc = EXIT_ANOMALY;
            break;
        }
        if (res_parse(&r, &res)) {
            fprintf(stderr, "workload: final read of %s/%s: unreadable result\n", x->branch,
                    x->key);
            rc = EXIT_ANOMALY;
            break;
        }
        json_t *l = json_object();
        json_object_set_new(l, "type", json_string("final"));
        if (x->log)
            json_object_set_new(l, "f", json_string("len"));
        json_object_set_new(l, "branch", json_string(x->branch));
        json_object_set_new(l, "key", json_string(x->key));
        uint64_t len = 0;
        if (x->log) {
            if (r.o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                fprintf(stderr, "ANOMALY log %s/%s: event.len is not a count\n", x->branch,
                        x->key);
                (*anomalies)++;
            } else {
                len = r.o->via.u64;
            }
            json_object_set_new(l, "value", json_integer((json_int_t)len));
        } else {
            const msgpack_object *v = map_get(r.o, "value");
            json_t *jv = r.o->type == MSGPACK_OBJECT_NIL ? json_null() : v ? mp_to_json(v) : NULL;
            if (jv == NULL) {
                fprintf(stderr, "ANOMALY %s/%s: malformed read result\n", x->branch, x->key);
                (*anomalies)++;
                jv = json_null();
            }
            json_object_set_new(l, "value", jv);
        }
        res_free(&r);
        if (json_dumpf(l, f, JSON_COMPACT) != 0 || fputc('\n', f) == EOF)
            rc = EXIT_SETUP;
        json_decref(l);
        if (rc == 0 && x->log)
            rc = check_log(db, x, len, (unsigned)o->within_ms, anomalies);
    }
    buf_close(&cmd);
    buf_close(&res);
    strata_close(db);
    return rc;
}

int cmd_final(const struct opts *o)
{
    struct objects s = {0};
    long anomalies = 0;
    int rc = history_load(o->history, &s);
    if (rc == 0) {
        FILE *f = fopen(o->history, "a");
        if (f == NULL) {
            fprintf(stderr, "workload: cannot append to %s: %s\n", o->history, strerror(errno));
            rc = EXIT_USAGE;
        } else {
            rc = final_reads(o, &s, f, &anomalies);
            if (fclose(f) != 0 && rc == 0)
                rc = EXIT_SETUP;
        }
    }
    size_t nlogs = 0;
    for (size_t i = 0; i < s.n; i++)
        nlogs += s.v[i].log;
    printf("{\"registers\":%zu,\"logs\":%zu,\"log_anomalies\":%ld}\n", s.n - nlogs, nlogs,
           anomalies);
    if (rc == 0 && anomalies)
        rc = EXIT_ANOMALY;
    objects_free(&s);
    return rc;
}
