/* test_ops.c — op inference, inverses, reference kernels, number conversions. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_bf16_f16_rounding(void **state)
{
    (void)state;
    /* hand-computed bit patterns */
    assert_int_equal(mpk_f32_to_bf16(1.0f), 0x3F80);
    assert_int_equal(mpk_f32_to_bf16(-2.0f), 0xC000);
    /* 1 + 2^-8 is a tie between 0x3F80 and 0x3F81: even wins */
    assert_int_equal(mpk_f32_to_bf16(1.00390625f), 0x3F80);
    /* 1 + 3 * 2^-8 ties between 0x3F81 and 0x3F82: even (0x3F82) */
    assert_int_equal(mpk_f32_to_bf16(1.01171875f), 0x3F82);
    assert_int_equal(mpk_f32_to_bf16(INFINITY), 0x7F80);
    assert_int_equal(mpk_f32_to_bf16(3.4e38f), 0x7F80); /* rounds past the max: inf */
    assert_true((mpk_f32_to_bf16(-NAN) & 0xFF80) == 0xFF80 && (mpk_f32_to_bf16(-NAN) & 0x7F));
    assert_int_equal(mpk_f32_to_f16(1.0f), 0x3C00);
    assert_int_equal(mpk_f32_to_f16(65504.0f), 0x7BFF);
    assert_int_equal(mpk_f32_to_f16(65520.0f), 0x7C00); /* tie above max rounds to inf */
    assert_int_equal(mpk_f32_to_f16(ldexpf(1, -24)), 0x0001); /* smallest subnormal */
    assert_int_equal(mpk_f32_to_f16(ldexpf(1, -25)), 0x0000); /* tie to even: zero */
    assert_int_equal(mpk_f32_to_f16(ldexpf(3, -26)), 0x0001);
    assert_int_equal(mpk_f32_to_f16(-0.0f), 0x8000);
    assert_true(mpk_f16_to_f32(0x0001) == ldexpf(1, -24));
    assert_true(mpk_f16_to_f32(0xC000) == -2.0f);
    assert_true(mpk_bf16_to_f32(0x3F81) == 1.0078125f);
    /* every F16 code survives F16 -> F32 -> F16 (NaNs stay NaN) */
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t back = mpk_f32_to_f16(mpk_f16_to_f32((uint16_t)h));
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF))
            assert_true((back & 0x7C00) == 0x7C00 && (back & 0x3FF));
        else
            assert_int_equal(back, h);
    }
}

static void test_transpose_and_apply(void **state)
{
    (void)state;
    /* [2, 2, 3] transpose(1, 2) -> [2, 3, 2], checked element by element */
    uint16_t in[12], out[12];
    for (int i = 0; i < 12; i++)
        in[i] = (uint16_t)i;
    int64_t shape[3] = {2, 2, 3};
    mpk_transpose(in, out, 2, shape, 3, 1, 2);
    for (int e = 0; e < 2; e++)
        for (int r = 0; r < 2; r++)
            for (int c = 0; c < 3; c++)
                assert_int_equal(out[e * 6 + c * 2 + r], in[e * 6 + r * 3 + c]);
    /* merge(0) then concat(1) of gate [2,2] x2 experts and up [2,2] x2 */
    uint8_t g0[4] = {1, 2, 3, 4}, g1[4] = {5, 6, 7, 8}, u0[4] = {11, 12, 13, 14}, u1[4] = {15, 16, 17, 18};
    void *data[4] = {g0, g1, u0, u1};
    mpk_tmeta t[4];
    for (int i = 0; i < 4; i++)
        t[i] = (mpk_tmeta){MPK_DTYPE_U8, 2, {2, 2}};
    mpk_bundle b = {2, 2, t}, m, c;
    mpk_arena *a = mpk_arena_new();
    mpk_error err = {0};
    mpk_op merge = {.kind = MPK_OP_MERGE, .dim = 0}, concat = {.kind = MPK_OP_CONCAT, .dim = 1};
    void **md, **cd;
    assert_int_equal(mpk_op_apply(&merge, &b, data, &m, &md, a, &err), MPK_OK);
    assert_int_equal(m.n_groups, 2);
    assert_int_equal(m.n_items, 1);
    assert_int_equal(m.t[0].shape[0], 2);
    assert_int_equal(mpk_op_apply(&concat, &m, md, &c, &cd, a, &err), MPK_OK);
    assert_int_equal(c.t[0].shape[1], 4);
    static const uint8_t want[16] = {1, 2, 3, 4, 11, 12, 13, 14, 5, 6, 7, 8, 15, 16, 17, 18};
    assert_memory_equal(cd[0], want, 16);
    /* the inverse chain gives the inputs back */
    mpk_op ops[2] = {merge, concat}, inv[2];
    assert_int_equal(mpk_ops_invert_chain(ops, 2, &b, inv, &err), MPK_OK);
    assert_int_equal(inv[0].kind, MPK_OP_CHUNK);
    assert_int_equal(inv[0].chunks, 2);
    assert_int_equal(inv[1].kind, MPK_OP_SPLIT);
    void **kd, **sd;
    mpk_bundle k, s;
    assert_int_equal(mpk_op_apply(&inv[0], &c, cd, &k, &kd, a, &err), MPK_OK);
    assert_int_equal(mpk_op_apply(&inv[1], &k, kd, &s, &sd, a, &err), MPK_OK);
    assert_int_equal(s.n_groups, 2);
    assert_int_equal(s.n_items, 2);
    for (int i = 0; i < 4; i++)
        assert_memory_equal(sd[i], data[i], 4);
    void **lists[4] = {md, cd, kd, sd};
    int counts[4] = {2, 1, 2, 4};
    for (int l = 0; l < 4; l++) {
        for (int i = 0; i < counts[l]; i++)
            free(lists[l][i]);
        free(lists[l]);
    }
    /* errors: concat of unequal shapes, chunk that does not divide, unsupported cast */
    t[2].shape[0] = 3;
    mpk_bundle bad = {2, 2, t};
    assert_int_equal(mpk_ops_infer_chain(&concat, 1, &bad, &c, a, &err), MPK_E_SHAPE);
    mpk_op chunk3 = {.kind = MPK_OP_CHUNK, .dim = 0, .chunks = 3};
    mpk_bundle one = {1, 1, t};
    assert_int_equal(mpk_ops_infer_chain(&chunk3, 1, &one, &c, a, &err), MPK_E_SHAPE);
    mpk_op cast = {.kind = MPK_OP_CAST, .dtype = MPK_DTYPE_F16};
    assert_int_equal(mpk_ops_infer_chain(&cast, 1, &one, &c, a, &err), MPK_E_OP);
    mpk_op reshape = {.kind = MPK_OP_RESHAPE, .ndim = 1, .shape = {5}, .inv_ndim = -1};
    assert_int_equal(mpk_ops_infer_chain(&reshape, 1, &one, &c, a, &err), MPK_E_SHAPE);
    /* reshape and cast cannot be inverted blind */
    assert_int_equal(mpk_ops_invert_chain(&reshape, 1, NULL, inv, &err), MPK_E_OP);
    assert_int_equal(mpk_ops_invert_chain(&cast, 1, NULL, inv, &err), MPK_E_OP);
    assert_non_null(mpk_op_find("transpose"));
    assert_null(mpk_op_find("fold"));
    mpk_arena_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_f16_rounding),
        cmocka_unit_test(test_transpose_and_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
