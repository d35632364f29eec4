/* moe_fp8.c — FP8 E4M3 experts with 128 x 128 block scales on the CPU: the block-scaled grouped
 * algorithm (the oracle for an FP8 grouped GEMM kernel) and FP8 weights made from BF16 ones.
 * The fp64 reference on FP8 weights is mpk_moe_fp8_reference_rows (moe_cpu.c). */
#include "mpk_decode.h"
#include "mpk_gpu.h"
#include "mpk_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { B = MPK_MOE_FP8_BLOCK };

/* y[R] for one input of C values given as E4M3 codes xc with 1 x 128 scales xs: W codes [R, C]
 * with the block grid sc [ceil(R/128), ceil(C/128)]; per K block the code products in fp32,
 * then times xs[kb] * sc[r/128, kb], blocks added in order */
static void block_gemv(const uint8_t *W, const float *sc, int R, int C, const uint8_t *xc, const float *xs, float *y)
{
    int cb = (C + B - 1) / B;
    for (int r = 0; r < R; r++) {
        float acc = 0;
        for (int kb = 0; kb < cb; kb++) {
            float part = 0;
            for (int c = kb * B; c < C && c < (kb + 1) * B; c++)
                part += mpk_e4m3_to_f32(W[(size_t)r * C + c]) * mpk_e4m3_to_f32(xc[c]);
            acc += part * xs[kb] * sc[(size_t)(r / B) * cb + kb];
        }
        y[r] = acc;
    }
}

/* One (token, slot) pair through expert e: y [H]; scratch as allocated by the caller. */
static void fp8_pair(const mpk_moe *p, const mpk_moe_fp8 *q, int e, const float *x, uint8_t *codes, float *scales,
                     float *h, float *a, float *y)
{
    int H = p->H, I = p->I;
    size_t gu_grid = (size_t)((2 * I + B - 1) / B) * ((H + B - 1) / B);
    size_t dn_grid = (size_t)((H + B - 1) / B) * ((I + B - 1) / B);
    mpk_quant_fp8_band(MPK_DTYPE_F32, x, H, B, 1, codes, scales);
    block_gemv(q->gu + (size_t)e * 2 * I * H, q->gu_scale + e * gu_grid, 2 * I, H, codes, scales, h);
    for (int c = 0; c < I; c++)
        a[c] = h[c] / (1.0f + expf(-h[c])) * h[I + c];
    mpk_quant_fp8_band(MPK_DTYPE_F32, a, I, B, 1, codes, scales);
    block_gemv(q->dn + (size_t)e * H * I, q->dn_scale + e * dn_grid, H, I, codes, scales, y);
}

mpk_status mpk_moe_fp8_grouped_cpu(const mpk_moe *p, const mpk_moe_fp8 *q, float *out, mpk_error *err)
{
    int H = p->H, I = p->I, E = p->E, k = p->k, P = p->T * k, slots = P < E ? P : E;
    int C = H > 2 * I ? H : 2 * I;
    int *ints = malloc(sizeof(int) * ((size_t)E + 2 * (size_t)slots + 1 + 2 * (size_t)P));
    float *yall = malloc(sizeof(float) * (size_t)P * H), *h = malloc(sizeof(float) * 2 * (size_t)I);
    float *a = malloc(sizeof(float) * (size_t)I), *scales = malloc(sizeof(float) * (size_t)C);
    uint8_t *codes = malloc((size_t)C);
    mpk_status s = MPK_OK;
    if (!ints || !yall || !h || !a || !scales || !codes) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, "moe", "out of memory");
        goto done;
    }
    int *count = ints, *act_e = count + E, *act_off = act_e + slots, *sorted = act_off + slots + 1;
    int n = mpk_decode_group(p->idx, P, E, count, act_e, act_off, sorted, sorted + P);
    for (int slot = 0; slot < n; slot++)
        for (int r = act_off[slot]; r < act_off[slot + 1]; r++)
            fp8_pair(p, q, act_e[slot], p->x + (size_t)(sorted[r] / k) * H, codes, scales, h, a,
                     yall + (size_t)sorted[r] * H);
    mpk_moe_combine(p, yall, out);
done:
    free(ints);
    free(yall);
    free(h);
    free(a);
    free(scales);
    free(codes);
    return s;
}

/* E matrices [R, C] of BF16 -> codes and the block grid, band by band */
static void quantize_experts(const uint16_t *w, int E, int R, int C, uint8_t *codes, float *grid)
{
    int cb = (C + B - 1) / B, rb = (R + B - 1) / B;
    for (int e = 0; e < E; e++)
        for (int b = 0; b < rb; b++) {
            size_t r0 = (size_t)e * R + (size_t)b * B;
            int rows = R - b * B < B ? R - b * B : B;
            mpk_quant_fp8_band(MPK_DTYPE_BF16, w + r0 * C, C, B, rows, codes + r0 * C, grid + ((size_t)e * rb + b) * cb);
        }
}

mpk_status mpk_moe_fp8_from_bf16(const mpk_moe *p, mpk_moe_fp8 *q, mpk_error *err)
{
    int E = p->E, H = p->H, I = p->I;
    size_t hb = (size_t)(H + B - 1) / B, ib = (size_t)(I + B - 1) / B, i2b = (size_t)(2 * I + B - 1) / B;
    uint8_t *gu = malloc((size_t)E * 2 * I * H), *dn = malloc((size_t)E * H * I);
    float *gs = malloc(sizeof(float) * E * i2b * hb), *ds = malloc(sizeof(float) * E * hb * ib);
    *q = (mpk_moe_fp8){gu, gs, dn, ds};
    if (!gu || !dn || !gs || !ds) {
        mpk_moe_fp8_free(q);
        MPK_FAIL(err, MPK_E_NOMEM, "moe", "out of memory for FP8 experts");
    }
    quantize_experts(p->w_gu, E, 2 * I, H, gu, gs);
    quantize_experts(p->w_d, E, H, I, dn, ds);
    return MPK_OK;
}

void mpk_moe_fp8_free(mpk_moe_fp8 *q)
{
    free((void *)q->gu);
    free((void *)q->gu_scale);
    free((void *)q->dn);
    free((void *)q->dn_scale);
    memset(q, 0, sizeof *q);
}
