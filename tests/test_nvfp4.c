/* test_nvfp4.c — the 4-bit kernels: NVFP4's (ops/nvfp4.c) on every code: all 16 E2M1 codes under all 256
 * E4M3 block-scale codes and several global scales (overflowing and NaN ones included), into
 * F32, BF16 and F16, against values computed here from the bit fields; and the comparison of two
 * encodings by value; the MXFP4 quantizer's rounding against the reference encoder. Run twice: with the SIMD paths and without (--no-simd: mpk_tune). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_ops.h"
#include "testutil.h"

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

/* The MXFP4 quantizer's E2M1 codes (its own branch-free rounding) against the reference encoder
 * mpk_f32_to_e2m1 (double-precision rint): blocks whose first value is 6 (so the scale is 2^0
 * and the values are encoded as they are) holding every 97th F32 bit pattern of magnitude up to 6
 * (both signs, zeros and subnormals), and every tie and boundary by hand. */
static void test_mxfp4_codes_match_encoder(void **state)
{
    (void)state;
    float v[32];
    uint8_t blk[16], sc;
    size_t n = 1;
    v[0] = 6.0f;
    static const float edges[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 0.0f, 6.0f, 0.5f, 1.0f, 3.0f};
    for (uint64_t u = 0;; u += 97) {
        uint32_t bits = (uint32_t)(u < 0x40C00000u ? u : u - 0x40C00000u + 0x80000000u);
        bool last = u >= 0x40C00000u * 2;
        float x;
        memcpy(&x, &bits, 4);
        if (!last)
            v[n++] = x;
        for (size_t k = 0; k < sizeof edges / sizeof edges[0] && n == 1 && u == 0; k++)
            v[n++] = edges[k], v[n++] = -edges[k];
        if (n == 32 || last) {
            while (n < 32)
                v[n++] = 0.0f;
            mpk_quant_mxfp4(MPK_DTYPE_F32, v, 1, blk, &sc);
            assert_int_equal(sc, 127);
            for (int k = 1; k < 32; k++) {
                uint8_t got = k % 2 ? blk[k / 2] >> 4 : blk[k / 2] & 0xF;
                if (got != mpk_f32_to_e2m1(v[k]))
                    fail_msg("%a: code %u, the encoder says %u", (double)v[k], got, mpk_f32_to_e2m1(v[k]));
            }
            n = 1;
        }
        if (last)
            break;
    }
}

/* The quantizer's BF16 path (vectorized) against its generic path on the same values as F32:
 * every BF16 bit pattern, in blocks of consecutive patterns and again in a scattered order (so
 * that blocks mix magnitudes, zeros, subnormals, infinities and NaNs). */
static void test_mxfp4_bf16_path(void **state)
{
    (void)state;
    static uint16_t h[65536];
    static float f[65536];
    static uint8_t b1[65536 / 2], b2[65536 / 2], s1[2048], s2[2048];
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < 65536; i++) {
            h[i] = (uint16_t)(pass ? i * 40503u : i);
            f[i] = mpk_bf16_to_f32(h[i]);
        }
        mpk_quant_mxfp4(MPK_DTYPE_BF16, h, 2048, b1, s1);
        mpk_quant_mxfp4(MPK_DTYPE_F32, f, 2048, b2, s2);
        assert_memory_equal(s1, s2, sizeof s1);
        assert_memory_equal(b1, b2, sizeof b1);
    }
}

/* Packed NVFP4 (mpk_dequant_nvfp4_packed): two matrices of 4 rows of 16 values (one block a
 * row), gate rows 0-1 and up rows 2-3, global scales [E, 2] = {{0.25, 4}, {0.5, 8}}. Every row's
 * codes are bytes 0xF9 (-0.5, -6) then 0x71 (0.5, 6); block scales 1, 2, 0.5, 1 (E4M3 0x38,
 * 0x40, 0x30, 0x38). The values, worked out by hand: e2m1 x e4m3 x the global scale of the row's
 * matrix and part; read whole, then from block 3 on (a run crossing the matrices). */
static void test_packed_global_scales(void **state)
{
    (void)state;
    uint8_t codes[8 * 8], scales[8] = {0x38, 0x40, 0x30, 0x38, 0x38, 0x40, 0x30, 0x38};
    for (int b = 0; b < 8; b++) {
        codes[b * 8] = 0xF9;
        memset(codes + b * 8 + 1, 0x71, 7);
    }
    const float g[4] = {0.25f, 4.0f, 0.5f, 8.0f};
    /* e4m3 x g of each row: m0 0.25 0.5 2 4, m1 0.5 1 4 8 */
    const float row[8] = {0.25f, 0.5f, 2.0f, 4.0f, 0.5f, 1.0f, 4.0f, 8.0f};
    float out[128], part[80];
    mpk_dequant_nvfp4_packed(codes, scales, 0, 8, g, 1, 4, 2, MPK_DTYPE_F32, out);
    for (int r = 0; r < 8; r++) {
        assert_true(out[r * 16] == -0.5f * row[r] && out[r * 16 + 1] == -6.0f * row[r]);
        for (int k = 2; k < 16; k++)
            assert_true(out[r * 16 + k] == (k % 2 ? 6.0f : 0.5f) * row[r]);
    }
    assert_true(out[15] == 1.5f && out[127] == 48.0f && out[3 * 16 + 1] == -24.0f); /* by hand */
    mpk_dequant_nvfp4_packed(codes + 3 * 8, scales + 3, 3, 5, g, 1, 4, 2, MPK_DTYPE_F32, part);
    assert_memory_equal(part, out + 3 * 16, sizeof part);
    /* one global scale a matrix ([E], down_proj's): both matrices' rows under g[0] and g[1] */
    mpk_dequant_nvfp4_packed(codes, scales, 0, 8, g, 1, 4, 1, MPK_DTYPE_F32, out);
    assert_true(out[3 * 16 + 1] == -6.0f * 1.0f * 0.25f && out[4 * 16 + 1] == -6.0f * 1.0f * 4.0f);
    /* BF16 out: the same values (exact here) */
    uint16_t hb[128];
    mpk_dequant_nvfp4_packed(codes, scales, 0, 8, g, 1, 4, 2, MPK_DTYPE_BF16, hb);
    assert_int_equal(hb[127], bf16_ref(48.0f));
    assert_int_equal(hb[2 * 16], bf16_ref(-1.0f));
}

int main(int argc, char **argv)
{
    tu_tuning_args(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_code),
        cmocka_unit_test(test_value_diff),
        cmocka_unit_test(test_mxfp4_codes_match_encoder),
        cmocka_unit_test(test_mxfp4_bf16_path),
        cmocka_unit_test(test_packed_global_scales),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
