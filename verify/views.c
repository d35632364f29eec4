/* views.c — the values of --dequantize views verify compares against, decoded whole from the
 * source: NVFP4 (codes, E4M3 block scales, F32 global scale; ModelOpt's and compressed-tensors';
 * packed, a global scale per matrix and part),
 * FP8 with F32 scales per row or per tensor (compressed-tensors' float-quantized), MXFP4 with E8M0 scales per 32
 * values along rows (DeepSeek-V4's experts), FP8 with an E8M0 b x b grid (its other linears).
 * FP8 with an F32 grid stays with the reference op in verify.c. */
#include "verify_internal.h"

#include <stdlib.h>
#include <string.h>

/* Bytes [off, +len) of an NVFP4 --dequantize view: the F32 values (the kernel's portable
 * path), each rounded to BF16 by the scalar conversion. */
static mpk_status read_nvfp4(const mpk_plan *p, const mpk_plan_view *vw, uint64_t off, uint64_t len, char **out,
                             mpk_error *err)
{
    uint64_t b0 = off / 32, b1 = (off + len + 31) / 32, nb = b1 - b0;
    uint8_t *q = mpk_alloc(nb * 9 + 4);
    float *f = mpk_alloc(nb * 16 * sizeof *f);
    char *b = mpk_alloc(len + 1);
    mpk_status s = q && f && b ? MPK_OK : mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
    if (s == MPK_OK)
        s = mpk_ckpt_read(p->src, vw->weight, b0 * 8, nb * 8, q, err);
    if (s == MPK_OK)
        s = mpk_ckpt_read(p->src, vw->scale, b0, nb, q + nb * 8, err);
    bool packed = vw->kind == MPK_VIEW_NVFP4_PACKED; /* every global scale of the tensor (small) */
    float *g = packed ? mpk_alloc(vw->scale2->nbytes + 4) : NULL;
    if (s == MPK_OK && packed && !g)
        s = mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
    if (s == MPK_OK)
        s = packed ? mpk_ckpt_read(p->src, vw->scale2, 0, vw->scale2->nbytes, (char *)g, err)
                   : mpk_ckpt_read(p->src, vw->scale2, 0, 4, q + nb * 9, err);
    if (s == MPK_OK && packed) {
        const mpk_tensor_info *w = vw->weight->info;
        int64_t lead = (int64_t)mpk_prod(w->shape, 0, w->ndim - 2), R = w->shape[w->ndim - 2];
        mpk_dequant_nvfp4_packed(q, q + nb * 8, b0, (size_t)nb, g, vw->info.shape[vw->info.ndim - 1] / 16, R,
                                 (int64_t)(vw->scale2->nbytes / 4) / lead, MPK_DTYPE_F32, f);
    } else if (s == MPK_OK) {
        float s2;
        memcpy(&s2, q + nb * 9, 4);
        if (vw->kind == MPK_VIEW_NVFP4_CT)
            mpk_dequant_nvfp4_ct(q, q + nb * 8, (size_t)nb, s2, MPK_DTYPE_F32, f);
        else
            mpk_dequant_nvfp4(q, q + nb * 8, (size_t)nb, s2, MPK_DTYPE_F32, f);
    }
    if (s == MPK_OK) {
        for (uint64_t i = 0; i < len / 2; i++) {
            uint16_t h = mpk_f32_to_bf16(f[(off - b0 * 32) / 2 + i]);
            memcpy(b + 2 * i, &h, 2);
        }
    }
    free(q);
    free(f);
    free(g);
    if (s != MPK_OK)
        free(b);
    else
        *out = b;
    return s;
}

/* The whole of tensor t read into a new buffer (*out). */
static mpk_status read_all(const mpk_plan *p, const mpk_ckpt_tensor *t, char **out, mpk_error *err)
{
    *out = mpk_alloc(t->nbytes + 16);
    if (!*out)
        MPK_FAIL(err, MPK_E_NOMEM, "verify", "out of memory (%llu bytes)", (unsigned long long)t->nbytes);
    mpk_status s = mpk_ckpt_read(p->src, t, 0, t->nbytes, *out, err);
    if (s != MPK_OK) {
        free(*out);
        *out = NULL;
    }
    return s;
}

mpk_status vfy_read_view(const mpk_plan *p, const mpk_plan_view *vw, uint64_t off, uint64_t len, char **out,
                         mpk_error *err)
{
    if (vw->kind == MPK_VIEW_NVFP4 || vw->kind == MPK_VIEW_NVFP4_CT || vw->kind == MPK_VIEW_NVFP4_PACKED)
        return read_nvfp4(p, vw, off, len, out, err);
    const mpk_tensor_info *w = vw->weight->info;
    char *wb = NULL, *sb = NULL, *full = mpk_alloc(vw->t.nbytes + 16), *b = mpk_alloc(len + 1);
    float *grid = NULL;
    mpk_status s = full && b ? read_all(p, vw->weight, &wb, err) : mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
    if (s == MPK_OK)
        s = read_all(p, vw->scale, &sb, err);
    if (s == MPK_OK && vw->kind == MPK_VIEW_INT4) {
        int64_t C = vw->info.shape[1], R = vw->info.shape[0], G = vw->scale->info->shape[1];
        mpk_dequant_int4_groups((const uint8_t *)wb, (const uint16_t *)sb, R, C, C / G, MPK_DTYPE_BF16, full);
    } else if (s == MPK_OK && (vw->kind == MPK_VIEW_FP8_ROW || vw->kind == MPK_VIEW_FP8_TENSOR)) {
        int64_t C = w->shape[w->ndim - 1], R = (int64_t)(vw->weight->nbytes / (uint64_t)C);
        mpk_dequant_fp8_scaled(w->dtype, (const uint8_t *)wb, (const float *)sb, vw->kind == MPK_VIEW_FP8_ROW, R, C,
                               MPK_DTYPE_BF16, full);
    } else if (s == MPK_OK && (w->dtype == MPK_DTYPE_U8 || w->dtype == MPK_DTYPE_I8)) {
        mpk_dequant_mxfp4((const uint8_t *)wb, (const uint8_t *)sb, (size_t)vw->scale->nbytes, MPK_DTYPE_BF16, full);
    } else if (s == MPK_OK) { /* FP8 with E8M0 powers of two: the grid as F32, then the rows */
        int64_t R = w->shape[w->ndim - 2], C = w->shape[w->ndim - 1], bl = p->fp8_block;
        int64_t SR = (R + bl - 1) / bl, SC = (C + bl - 1) / bl, lead = (int64_t)mpk_prod(w->shape, 0, w->ndim - 2);
        if (!(grid = mpk_alloc(vw->scale->nbytes * sizeof *grid + 4)))
            s = mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
        for (uint64_t k = 0; s == MPK_OK && k < vw->scale->nbytes; k++)
            grid[k] = mpk_e8m0_to_f32((uint8_t)sb[k]);
        for (int64_t l = 0; s == MPK_OK && l < lead; l++)
            mpk_dequant_fp8_rows(w->dtype, (const uint8_t *)wb + l * R * C, grid + l * SR * SC, C, (int)bl, 0, R,
                                 MPK_DTYPE_BF16, full + (size_t)(l * R * C) * 2);
    }
    if (s == MPK_OK)
        memcpy(b, full + off, len);
    free(wb), free(sb), free(full), free(grid);
    if (s != MPK_OK) {
        free(b);
        return s;
    }
    *out = b;
    return MPK_OK;
}
