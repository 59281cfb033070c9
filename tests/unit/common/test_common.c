/* common/: error table, buffer, allocator failure injection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "common.h"

static void test_err_names_roundtrip(void **state)
{
    (void)state;
    for (int c = 0; c < STRATA_CODE_COUNT; c++) {
        assert_int_equal(err_from_name(err_name(c)), c);
        assert_true(strlen(err_message(c)) > 0);
    }
    assert_string_equal(err_name(STRATA_NOT_LEADER), "NOT_LEADER");
    assert_string_equal(err_name(9999), "UNKNOWN");
    assert_int_equal(err_from_name("NOPE"), -1);
}

static void test_err_set_formats(void **state)
{
    (void)state;
    struct err e;
    assert_int_equal(err_set(&e, STRATA_TOO_LARGE, "value %d", 7), STRATA_TOO_LARGE);
    assert_string_equal(e.msg, "value 7");
    assert_int_equal(e.code, STRATA_TOO_LARGE);
    assert_int_equal(err_set(NULL, STRATA_CONFLICT, "x"), STRATA_CONFLICT);
}

static void test_buf_append_and_steal(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(buf_append_be32(&b, (uint32_t)i), 0);
    assert_int_equal(b.len, 4000);
    assert_int_equal(get_be32(b.data + 4 * 999), 999);
    assert_int_equal(buf_printf(&b, "%s-%d", "x", 5), 0);
    assert_memory_equal(b.data + 4000, "x-5", 3);
    size_t n;
    uint8_t *p = buf_steal(&b, &n);
    assert_int_equal(n, 4003);
    assert_null(b.data);
    sm_free(p);
}

static void test_alloc_failure_injection(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    sm_fail_after(1);
    assert_int_equal(buf_append(&b, "abc", 3), STRATA_OUT_OF_MEMORY);
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    buf_close(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_err_names_roundtrip),
        cmocka_unit_test(test_err_set_formats),
        cmocka_unit_test(test_buf_append_and_steal),
        cmocka_unit_test(test_alloc_failure_injection),
    };
    return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}
