/* test_nvfp4.c — the NVFP4 kernels (ops/nvfp4.c) on every code: all 16 E2M1 codes under all 256
 * E4M3 block-scale codes and several global scales (overflowing and NaN ones included), into
 * F32, BF16 and F16, against values computed here from the bit fields; and the comparison of two
 * encodings by value. Run twice: with the SIMD paths and without (MOEPACK_NO_SIMD). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_ops.h"

#include <math.h>
#include <string.h>

/* E2M1 from its fields: sign bit 3, exponent bits 2-1 (bias 1), mantissa bit 0. */
static double e2m1_ref(unsigned c)
{
    unsigned s = c >> 3 & 1, e = c >> 1 & 3, m = c & 1;
    double v = e ? ldexp(1.0 + m / 2.0, (int)e - 1) : m * 0.5;
    return s ? -v : v;
}

/* E4M3 (fn) from its fields: sign bit 7, exponent bits 6-3 (bias 7), mantissa bits 2-0, S.1111.111
 * NaN. */
static double e4m3_ref(unsigned c)
{
    unsigned s = c >> 7 & 1, e = c >> 3 & 15, m = c & 7;
    if (e == 15 && m == 7)
        return NAN;
    double v = e ? ldexp(1.0 + m / 8.0, (int)e - 7) : ldexp((double)m, -9);
    return s ? -v : v;
}

/* F32 bits -> BF16 bits, nearest even; NaN stays NaN (quiet, its sign kept). */
static uint16_t bf16_ref(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if (isnan(f))
        return (uint16_t)((u >> 16) | 0x40);
    uint32_t lo = u & 0xFFFF, hi = u >> 16;
    if (lo > 0x8000 || (lo == 0x8000 && (hi & 1)))
        hi++;
    return (uint16_t)hi;
}

static void test_every_code(void **state)
{
    (void)state;
    /* the 16 codes in order, low nibble first: byte k holds codes 2k and 2k + 1 */
    static const uint8_t codes[8] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE};
    const float globals[] = {1.0f, 0.00123f, 0x1p-20f, -0.5f, 3e38f, 0x1p-140f, NAN};
    uint8_t c256[256 * 8], s256[256];
    for (unsigned sc = 0; sc < 256; sc++) {
        memcpy(c256 + sc * 8, codes, 8);
        s256[sc] = (uint8_t)sc;
    }
    static float f[256 * 16];
    static uint16_t b[256 * 16], h[256 * 16];
    for (size_t gi = 0; gi < sizeof globals / sizeof globals[0]; gi++) {
        float g = globals[gi];
        mpk_dequant_nvfp4(c256, s256, 256, g, MPK_DTYPE_F32, f);
        mpk_dequant_nvfp4(c256, s256, 256, g, MPK_DTYPE_BF16, b);
        mpk_dequant_nvfp4(c256, s256, 256, g, MPK_DTYPE_F16, h);
        for (unsigned sc = 0; sc < 256; sc++) {
            float s = (float)(e4m3_ref(sc) * (double)g); /* exact in double, one rounding */
            assert_true(isnan(s) ? isnan(mpk_nvfp4_block_scale((uint8_t)sc, g))
                                 : mpk_nvfp4_block_scale((uint8_t)sc, g) == s);
            for (unsigned k = 0; k < 16; k++) {
                float want = (float)(e2m1_ref(k) * (double)s);
                float got = f[sc * 16 + k];
                if (isnan(want) ? !isnan(got) : (got != want || !signbit(got) != !signbit(want)))
                    fail_msg("global %g scale 0x%02x code %u: F32 %.9g, want %.9g", (double)g, sc, k, (double)got,
                             (double)want);
                uint16_t bg = b[sc * 16 + k];
                if (isnan(want) ? (bg & 0x7F80) != 0x7F80 || !(bg & 0x7F) : bg != bf16_ref(want)) /* NaN: any sign */
                    fail_msg("global %g scale 0x%02x code %u: BF16 0x%04x, want 0x%04x", (double)g, sc, k,
                             b[sc * 16 + k], bf16_ref(want));
                if (isnan(want) ? (h[sc * 16 + k] & 0x7C00) != 0x7C00 || !(h[sc * 16 + k] & 0x3FF)
                                : h[sc * 16 + k] != mpk_f32_to_f16(want))
                    fail_msg("global %g scale 0x%02x code %u: F16 0x%04x", (double)g, sc, k, h[sc * 16 + k]);
            }
        }
    }
}

static void test_value_diff(void **state)
{
    (void)state;
    /* one block, two encodings: code 2 (1.0) x scale 0x40 (2.0) = code 4 (2.0) x scale 0x38 (1.0) */
    uint8_t ca[8] = {0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22}, cb[8];
    memset(cb, 0x44, 8);
    uint8_t sa = 0x40, sb = 0x38;
    assert_true(mpk_e4m3_to_f32(sa) == 2.0f && mpk_e4m3_to_f32(sb) == 1.0f);
    assert_int_equal(mpk_nvfp4_value_diff(ca, &sa, 1.0f, cb, &sb, 1.0f, 1), 16);
    /* the same through the global scale: 1.0 x 2.0 x 0.5 = 2.0 x 1.0 x 0.5 */
    assert_int_equal(mpk_nvfp4_value_diff(ca, &sa, 0.5f, cb, &sb, 0.5f, 1), 16);
    /* +0 and -0 (codes 0 and 8) are the same value */
    uint8_t z0[8] = {0}, z8[8];
    memset(z8, 0x88, 8);
    assert_int_equal(mpk_nvfp4_value_diff(z0, &sa, 1.0f, z8, &sb, 1.0f, 1), 16);
    /* element 5 (byte 2, high nibble) differs: code 4 -> 5 */
    cb[2] = 0x54;
    assert_int_equal(mpk_nvfp4_value_diff(ca, &sa, 1.0f, cb, &sb, 1.0f, 1), 5);
    /* a different global scale with the same bytes differs at element 0 */
    assert_int_equal(mpk_nvfp4_value_diff(ca, &sa, 1.0f, ca, &sa, 2.0f, 1), 0);
    /* NaN scales on both sides: NaN equals NaN */
    uint8_t n = 0x7F;
    assert_int_equal(mpk_nvfp4_value_diff(ca, &n, 1.0f, cb, &n, 1.0f, 1), 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_code),
        cmocka_unit_test(test_value_diff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
