/* Peer transport pieces that need no network: address parsing. */
#include "cluster.h"

#include "transport.h"

#include <string.h>

static void test_transport_split_address_forms(void **state)
{
    (void)state;
    char host[64], port[16];
    assert_int_equal(
        transport_split_address("127.0.0.1:9876", host, sizeof host, port, sizeof port), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_string_equal(port, "9876");
    assert_int_equal(
        transport_split_address("db-0.strata.svc:1", host, sizeof host, port, sizeof port), 0);
    assert_string_equal(host, "db-0.strata.svc");
    assert_string_equal(port, "1");
    assert_int_equal(transport_split_address("[::1]:80", host, sizeof host, port, sizeof port), 0);
    assert_string_equal(host, "::1");
    assert_string_equal(port, "80");
}

static void test_transport_split_address_bad(void **state)
{
    (void)state;
    char host[16], port[8];
    const char *bad[] = {
        "",        "nohost", ":80",   "host:",       "host:8x",
        "[::1]80", "[::1",   "[]:80", "h:123456789", "averyveryverylonghostname:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (transport_split_address(bad[i], host, sizeof host, port, sizeof port) !=
            STRATA_INVALID_ARGUMENT)
            fail_msg("\"%s\" was accepted", bad[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transport_split_address_forms),
        cmocka_unit_test(test_transport_split_address_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
