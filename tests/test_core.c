/* test_core.c — the core module: the dtype table, status strings, natural order, growth. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_formats.h"
#include "testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- dtypes, names */

static void test_dtype_table(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int bits;
    } want[] = {{"BOOL", 8}, {"F4", 4}, {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8}, {"I8", 8},
                {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8},
                {"F8_E5M2FNUZ", 8}, {"I16", 16}, {"U16", 16}, {"F16", 16}, {"BF16", 16},
                {"I32", 32}, {"U32", 32}, {"F32", 32}, {"C64", 64}, {"F64", 64}, {"I64", 64},
                {"U64", 64}};
    assert_int_equal(sizeof want / sizeof want[0], MPK_DTYPE_COUNT);
    for (int i = 0; i < MPK_DTYPE_COUNT; i++) {
        assert_string_equal(mpk_dtype_name((mpk_dtype)i), want[i].name);
        assert_int_equal(mpk_dtype_bits((mpk_dtype)i), want[i].bits);
        mpk_dtype d;
        assert_true(mpk_dtype_parse(want[i].name, strlen(want[i].name), &d));
        assert_int_equal(d, i);
    }
    assert_null(mpk_dtype_name(MPK_DTYPE_COUNT));
    for (int s = 0; s < MPK_STATUS_COUNT; s++)
        assert_string_not_equal(mpk_status_str((mpk_status)s), "unknown-status");
}

static void test_natural_order(void **state)
{
    (void)state;
    assert_true(mpk_natural_cmp("experts.2.w", "experts.10.w") < 0);
    assert_true(mpk_natural_cmp("experts.10.w", "experts.9.w") > 0);
    assert_true(mpk_natural_cmp("layers.1.a", "layers.1.b") < 0);
    assert_true(mpk_natural_cmp("a", "a") == 0);
    assert_true(mpk_natural_cmp("a", "a.0") < 0);
    assert_true(mpk_natural_cmp("x.007", "x.7") != 0);
}


/* The kernels' float and FP8 classes, from the one table. */
static void test_dtype_classes(void **state)
{
    (void)state;
    for (int d = 0; d < MPK_DTYPE_COUNT; d++) {
        bool f = d == MPK_DTYPE_F16 || d == MPK_DTYPE_BF16 || d == MPK_DTYPE_F32;
        bool f8 = d == MPK_DTYPE_F8_E4M3 || d == MPK_DTYPE_F8_E5M2;
        assert_int_equal(mpk_dtype_is_float((mpk_dtype)d), f);
        assert_int_equal(mpk_dtype_is_fp8((mpk_dtype)d), f8);
        assert_int_equal(mpk_dtype_size((mpk_dtype)d), mpk_dtype_bits((mpk_dtype)d) % 8 ? 0 : mpk_dtype_bits((mpk_dtype)d) / 8);
    }
    assert_int_equal(mpk_dtype_size(MPK_DTYPE_F4), 0);
    assert_int_equal(mpk_dtype_size(MPK_DTYPE_C64), 8);
    assert_false(mpk_dtype_is_float(MPK_DTYPE_COUNT));
}

/* mpk_grow: the same array while there is room, doubled (first_cap when empty) when full. */
static void test_grow(void **state)
{
    (void)state;
    size_t cap = 0;
    int *a = mpk_grow(NULL, 0, &cap, sizeof *a, 4);
    assert_non_null(a);
    assert_int_equal(cap, 4);
    for (int i = 0; i < 4; i++)
        a[i] = i;
    assert_ptr_equal(mpk_grow(a, 3, &cap, sizeof *a, 4), a);
    assert_int_equal(cap, 4);
    a = mpk_grow(a, 4, &cap, sizeof *a, 4);
    assert_non_null(a);
    assert_int_equal(cap, 8);
    assert_int_equal(a[3], 3); /* contents kept */
    free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_table),
        cmocka_unit_test(test_dtype_classes),
        cmocka_unit_test(test_natural_order),
        cmocka_unit_test(test_grow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
