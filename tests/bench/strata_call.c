/* strata_call: run one command, given as JSON text, against a database libstrata can
 * open and print the result as JSON on one line — for benchmark scripts that need
 * commands the CLI has no verb for (cluster.placement).
 *
 *   strata_call URI 'JSON'     e.g. strata_call 'strata://127.0.0.1:9876?routing=server'
 *                                   '{"op":"cluster.placement","fresh":true}'
 *
 * Exit status: 0 with the result on stdout; 1 with "error: CODE: message" on stderr when
 * the command failed; 2 on bad usage or a JSON text that does not parse. */
#include "storage.h"
#include "strata.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fputs("usage: strata_call URI 'JSON command'\n", stderr);
        return 2;
    }
    struct err err;
    err_clear(&err);
    struct buf cmd, res, text;
    buf_init(&cmd);
    buf_init(&res);
    buf_init(&text);
    int status = 2;
    int rc = storage_json_to_value(argv[2], strlen(argv[2]), &cmd, &err);
    if (rc) {
        fprintf(stderr, "strata_call: the command is not valid JSON: %s\n", err.msg);
        goto out_bufs;
    }
    struct strata *db = NULL;
    status = 1;
    rc = strata_open(argv[1], &db, &err);
    if (rc) {
        fprintf(stderr, "error: %s: %s\n", err_name(rc), err.msg);
        goto out_bufs;
    }
    rc = strata_exec(db, cmd.data, cmd.len, &res, &err);
    if (rc) {
        fprintf(stderr, "error: %s: %s\n", err_name(rc), err.msg);
        goto out_close;
    }
    if (storage_value_to_json(res.data, res.len, &text, false) || buf_append(&text, "\n", 2)) {
        fputs("strata_call: cannot render the result as JSON\n", stderr);
        goto out_close;
    }
    fputs((const char *)text.data, stdout);
    status = 0;
out_close:
    strata_close(db);
out_bufs:
    buf_close(&cmd);
    buf_close(&res);
    buf_close(&text);
    return status;
}
