/* test_quant4.c — the 4-bit quantizers of --quantize (ops/quant4.c): the AVX2 paths, and the
 * AVX-512 ones where the CPU has them (the tests run twice, the second time with
 * ops_quant4_no_avx512), give the same bytes as the portable ones (both run here, switched with
 * mpk_tune's no_simd), BF16 input
 * the same as the same values in F32, on random blocks with every special case mixed in (zero
 * blocks, ties at each E2M1 boundary, powers of two, subnormals, both signs and -0); NaN and
 * infinity found at their index. The formulas themselves are checked bit for bit against a
 * numpy reference in tests/quantize_ref.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_ops.h"
#include "ops_internal.h"
#include "moepack/moepack.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NB = 4096 }; /* blocks of 32 values (MXFP4) or 2 x 16 (NVFP4) */

static uint32_t rng = 12345;
static uint32_t next(void)
{
    rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
    return rng;
}

static void simd(bool on)
{
    mpk_tuning t;
    mpk_tuning_init(&t);
    t.no_simd = !on;
    mpk_tune(&t);
}

/* BF16 test values: random magnitudes, and blocks built around the cases. */
static void fill(uint16_t *v, size_t n)
{
    static const float special[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f, 7.0f, 4.0f, 0.5f, 1e-40f};
    for (size_t i = 0; i < n; i++) {
        uint32_t r = next(), kind = (uint32_t)(i / 32) % 8;
        uint16_t x = (uint16_t)(0x3000 + r % 0x1800);              /* about 2^-31 .. 2^17 */
        if (kind == 1)
            x = 0;                                                /* zero blocks */
        else if (kind == 2)
            x = (uint16_t)(r % 0x80);                             /* subnormal BF16 */
        else if (kind == 3) {                                     /* ties under scale 1 */
            float f = special[r % 12];
            uint32_t u;
            memcpy(&u, &f, 4);
            x = (uint16_t)(u >> 16);
        } else if (kind == 4)
            x = (uint16_t)((r % 200 + 1) << 7);                   /* powers of two */
        v[i] = (uint16_t)(x | ((r >> 20) & 1 ? 0x8000 : 0));
    }
}

static void to_f32(const uint16_t *v, float *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)v[i] << 16;
        memcpy(&f[i], &u, 4);
    }
}

static void test_nvfp4_paths_agree(void **state)
{
    (void)state;
    uint16_t *v = malloc(NB * 32 * 2);
    float *f = malloc(NB * 32 * 4);
    uint8_t *c[3], *s[3];
    for (int k = 0; k < 3; k++)
        c[k] = malloc(NB * 16), s[k] = malloc(NB * 2);
    fill(v, NB * 32);
    to_f32(v, f, NB * 32);
    size_t bad;
    simd(true);
    float amax = mpk_quant_amax(MPK_DTYPE_BF16, v, NB * 32, &bad);
    assert_int_equal(bad, NB * 32);
    simd(false);
    assert_true(mpk_quant_amax(MPK_DTYPE_BF16, v, NB * 32, &bad) == amax);
    assert_true(mpk_quant_amax(MPK_DTYPE_F32, f, NB * 32, &bad) == amax);
    float g = mpk_nvfp4_global_scale(amax);
    assert_true(g == amax / 2688.0f);
    const float gs[] = {g, 1.0f / 2688, 0x1p-140f};            /* the tensor's, and subnormal block scales */
    for (int j = 0; j < 3; j++) {
        simd(true);
        mpk_quant_nvfp4(MPK_DTYPE_BF16, v, NB * 2, gs[j], c[0], s[0]);
        simd(false);
        mpk_quant_nvfp4(MPK_DTYPE_BF16, v, NB * 2, gs[j], c[1], s[1]);
        mpk_quant_nvfp4(MPK_DTYPE_F32, f, NB * 2, gs[j], c[2], s[2]);
        assert_memory_equal(c[0], c[1], NB * 16);
        assert_memory_equal(s[0], s[1], NB * 2);
        assert_memory_equal(c[0], c[2], NB * 16);
        assert_memory_equal(s[0], s[2], NB * 2);
        for (size_t n = 1; n <= 131; n += 13) { /* lengths off the vector path's groups and chunks */
            uint8_t tc[2][131 * 8], ts[2][131];
            for (int on = 0; on < 2; on++) {
                simd(on);
                mpk_quant_nvfp4(MPK_DTYPE_BF16, v + 16 * (j + 1), n, gs[j], tc[on], ts[on]);
            }
            assert_memory_equal(tc[0], tc[1], n * 8);
            assert_memory_equal(ts[0], ts[1], n);
        }
        for (int on = 0; on < 2; on++) { /* the scales alone, both paths */
            simd(on);
            memset(s[1], 0xEE, NB * 2);
            mpk_quant_nvfp4(MPK_DTYPE_BF16, v, NB * 2, gs[j], NULL, s[1]);
            assert_memory_equal(s[0], s[1], NB * 2);
        }
    }
    /* a tensor whose global scale spreads its block scales over the E4M3 codes (v's powers of two
     * up to 2^73 would put nearly every block at the clamp): magnitudes above 2^17 folded down */
    uint16_t *w = malloc(NB * 32 * 2);
    for (size_t i = 0; i < NB * 32; i++)
        w[i] = (v[i] & 0x7FFF) > 0x4800 ? (uint16_t)((v[i] & 0x807F) | 0x4700) : v[i];
    to_f32(w, f, NB * 32);
    static const size_t lens[] = {NB * 2 - 1, NB * 2 - 4, 131, 64, 7, 4, 1};
    for (int li = 0; li < 7; li++) { /* the amax pass and the blocks together */
        size_t n = lens[li];
        float g2[3];
        for (int k = 0; k < 3; k++)
            memset(c[k], 0xEE, NB * 16), memset(s[k], 0xEE, NB * 2);
        simd(true);
        assert_int_equal(mpk_quant_nvfp4_tensor(MPK_DTYPE_BF16, w + 16, n, c[0], s[0], &g2[0]), n * 16);
        simd(false);
        assert_int_equal(mpk_quant_nvfp4_tensor(MPK_DTYPE_BF16, w + 16, n, c[1], s[1], &g2[1]), n * 16);
        assert_int_equal(mpk_quant_nvfp4_tensor(MPK_DTYPE_F32, f + 16, n, c[2], s[2], &g2[2]), n * 16);
        assert_true(g2[0] == g2[1] && g2[0] == g2[2]);
        if (n > 1000) { /* the case means something: many block scale codes */
            int seen[256] = {0}, distinct = 0;
            for (size_t b = 0; b < n; b++)
                distinct += !seen[s[0][b]]++;
            assert_true(distinct > 50);
        }
        assert_true(g2[0] == mpk_nvfp4_global_scale(mpk_quant_amax(MPK_DTYPE_BF16, w + 16, n * 16, &bad)));
        for (int k = 1; k < 3; k++) {
            assert_memory_equal(c[0], c[k], n * 8);
            assert_memory_equal(s[0], s[k], n);
        }
        simd(true);
        assert_int_equal(mpk_quant_nvfp4_tensor(MPK_DTYPE_BF16, w + 16, n, NULL, s[1], &g2[1]), n * 16);
        assert_memory_equal(s[0], s[1], n);
    }
    uint16_t keep = w[16 + 16 * 70 + 3];
    w[16 + 16 * 70 + 3] = 0xFF80; /* -inf in block 70 of the tensor */
    for (int on = 0; on < 2; on++) {
        float g2;
        simd(on);
        assert_int_equal(mpk_quant_nvfp4_tensor(MPK_DTYPE_BF16, w + 16, NB, c[0], s[0], &g2), 16 * 70 + 3);
    }
    w[16 + 16 * 70 + 3] = keep;
    free(w);
    to_f32(v, f, NB * 32);
    v[777] = 0x7F80; /* +inf */
    simd(true);
    mpk_quant_amax(MPK_DTYPE_BF16, v, NB * 32, &bad);
    assert_int_equal(bad, 777);
    v[5] = 0xFFC1; /* NaN before it */
    mpk_quant_amax(MPK_DTYPE_BF16, v, NB * 32, &bad);
    assert_int_equal(bad, 5);
    f[9] = NAN;
    mpk_quant_amax(MPK_DTYPE_F32, f, NB * 32, &bad);
    assert_int_equal(bad, 9);
    for (int k = 0; k < 3; k++)
        free(c[k]), free(s[k]);
    free(v), free(f);
}

static void test_mxfp4_ocp_paths_agree(void **state)
{
    (void)state;
    uint16_t *v = malloc(NB * 32 * 2);
    float *f = malloc(NB * 32 * 4);
    uint8_t *c[4], *s[4];
    for (int k = 0; k < 4; k++)
        c[k] = malloc(NB * 16), s[k] = malloc(NB);
    fill(v, NB * 32);
    to_f32(v, f, NB * 32);
    simd(true);
    assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_BF16, v, NB, c[0], s[0]), NB * 32);
    mpk_quant_mxfp4(MPK_DTYPE_BF16, v, NB, c[3], s[3]); /* the reference-rule quantizer's AVX2 path */
    simd(false);
    assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_BF16, v, NB, c[1], s[1]), NB * 32);
    assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_F32, f, NB, c[2], s[2]), NB * 32);
    assert_memory_equal(c[0], c[1], NB * 16);
    assert_memory_equal(s[0], s[1], NB);
    assert_memory_equal(c[0], c[2], NB * 16);
    assert_memory_equal(s[0], s[2], NB);
    memset(s[1], 0xEE, NB);
    assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_BF16, v, NB, NULL, s[1]), NB * 32); /* scales alone */
    assert_memory_equal(s[0], s[1], NB);
    simd(true);
    memset(s[1], 0xEE, NB);
    assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_BF16, v, NB, NULL, s[1]), NB * 32);
    assert_memory_equal(s[0], s[1], NB);
    simd(false);
    mpk_quant_mxfp4(MPK_DTYPE_BF16, v, NB, c[1], s[1]);
    assert_memory_equal(c[3], c[1], NB * 16);
    assert_memory_equal(s[3], s[1], NB);
    /* one hand case: amax 6 -> floor(log2 6) - 2 = 0, code 127; 7 saturates to 6; 0.25 ties to 0 */
    float h[32] = {6.0f, -7.0f, 0.25f, -0.75f, 5.0f, -0.0f};
    uint8_t hb[16], hs;
    assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_F32, h, 1, hb, &hs), 32);
    assert_int_equal(hs, 127);
    assert_int_equal(hb[0], 0x07 | 0xF0);
    assert_int_equal(hb[1], 0x00 | 0xA0);
    assert_int_equal(hb[2], 0x06 | 0x80);
    simd(true);
    v[100] = 0xFF80; /* -inf in block 3 */
    assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_BF16, v, NB, c[0], s[0]), 100);
    simd(false);
    assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_BF16, v, NB, c[0], s[0]), 100);
    v[100] = 0x3F80;
    v[32 * 71 + 9] = 0x7FC0, v[32 * 70 + 31] = 0xFF80; /* a NaN after an infinity, both in one group of 4 blocks */
    for (int on = 0; on < 2; on++) {
        simd(on);
        assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_BF16, v, NB, c[on], s[on]), 32 * 70 + 31);
        assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_BF16, v + 32 * 70, 1, c[on], s[on]), 31); /* one block */
    }
    for (int k = 0; k < 4; k++)
        free(c[k]), free(s[k]);
    free(v), free(f);
}

/* Every MXFP4 scale code 0..252 (BF16 amax exponent field E, code E - 2): a block with its amax
 * at exponent E, the E2M1 bounds exactly at t x 2^X and one BF16 step either side, and random
 * values below; the AVX2 paths (8-bit lanes for -124 <= X <= 125, tables elsewhere) against the
 * portable one, for the OCP rule and the reference rule. */
static void test_mxfp4_every_scale(void **state)
{
    (void)state;
    static const uint16_t bound[7] = {0x3E80, 0x3F40, 0x3FA0, 0x3FE0, 0x4020, 0x4060, 0x40A0}; /* 0.25 .. 5 */
    enum { N = 253 };
    uint16_t *v = malloc(N * 32 * 2);
    uint8_t c[2][N * 16], s[2][N], d[2][N * 16], t[2][N];
    for (int sc = 0; sc < N; sc++) {
        uint16_t *p = v + sc * 32;
        int X = sc - 127, E = sc + 2;
        for (int k = 0; k < 32; k++) { /* random magnitudes at exponents E - 8 .. E */
            int ek = E - 8 + (int)(next() % 9);
            p[k] = (uint16_t)((ek > 0 ? ek : 0) << 7 | (next() & 0x7F) | (next() & 1) << 15);
        }
        for (int i = 0; i < 7 && X >= -124; i++) { /* the bounds and their neighbours */
            int q = bound[i] + X * 128;
            p[3 * i] = (uint16_t)q, p[3 * i + 1] = (uint16_t)(q - 1), p[3 * i + 2] = (uint16_t)((q + 1) | 0x8000);
        }
        p[31] = (uint16_t)(E << 7 | (next() & 0x7F)); /* the amax, exponent E */
    }
    for (int on = 0; on < 2; on++) {
        simd(on);
        assert_int_equal(mpk_quant_mxfp4_ocp(MPK_DTYPE_BF16, v, N, c[on], s[on]), N * 32);
        mpk_quant_mxfp4(MPK_DTYPE_BF16, v, N, d[on], t[on]);
    }
    for (int sc = 0; sc < N; sc++)
        assert_int_equal(s[0][sc], sc);
    assert_memory_equal(c[0], c[1], sizeof c[0]);
    assert_memory_equal(d[0], d[1], sizeof d[0]);
    assert_memory_equal(t[0], t[1], sizeof t[0]);
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nvfp4_paths_agree),
        cmocka_unit_test(test_mxfp4_ocp_paths_agree),
        cmocka_unit_test(test_mxfp4_every_scale),
    };
    int failed = cmocka_run_group_tests_name("vector paths up to AVX-512", tests, NULL, NULL);
    ops_quant4_no_avx512(true); /* the AVX2 paths against the portable ones too */
    return failed + cmocka_run_group_tests_name("vector paths up to AVX2", tests, NULL, NULL);
}
