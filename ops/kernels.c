/* kernels.c — the CPU kernels: cast, transpose, and the reference apply of a whole op (the
 * oracle verify and the tests use). The number formats are in numfmt.c, the block quantizers
 * in quant.c. */
#define _GNU_SOURCE
#include "mpk_ops.h"
#include "ops_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* ---------------------------------------------------------------- cast */

void mpk_cast(mpk_dtype from, const void *src, mpk_dtype to, void *dst, size_t n)
{
    if (from == to) {
        memcpy(dst, src, n * mpk_dtype_size(from));
        return;
    }
    uint16_t *d16 = dst;
    uint8_t *d8 = dst;
    float *d32 = dst;
    for (size_t i = 0; i < n; i++) {
        float v = ops_load_f32(from, src, i);
        if (to == MPK_DTYPE_F32)
            d32[i] = v;
        else if (to == MPK_DTYPE_BF16)
            d16[i] = mpk_f32_to_bf16(v);
        else if (to == MPK_DTYPE_F16)
            d16[i] = mpk_f32_to_f16(v);
        else if (to == MPK_DTYPE_F8_E4M3)
            d8[i] = mpk_f32_to_e4m3(v);
        else
            d8[i] = mpk_f32_to_e5m2(v);
    }
}

/* ---------------------------------------------------------------- transpose */

#define TRANSPOSE_LOOP(T)                                                              \
    for (uint64_t o = 0; o < outer; o++)                                               \
        for (uint64_t j = 0; j < B; j++)                                               \
            for (uint64_t m = 0; m < P; m++) {                                         \
                T *dst = (T *)out + ((o * B + j) * P + m) * A;                         \
                const T *sp = (const T *)in + ((o * A) * P + m) * B + j;               \
                for (uint64_t i = 0; i < A; i++)                                       \
                    dst[i] = sp[i * P * B];                                            \
            }

void mpk_transpose(const void *in, void *out, size_t el, const int64_t *shape, int ndim, int a,
                   int b)
{
    if (a > b) {
        int t = a;
        a = b;
        b = t;
    }
    uint64_t outer = mpk_prod(shape, 0, a), A = (uint64_t)shape[a], P = mpk_prod(shape, a + 1, b),
             B = (uint64_t)shape[b], Q = mpk_prod(shape, b + 1, ndim) * el;
    if (Q == 1) {
        TRANSPOSE_LOOP(uint8_t)
    } else if (Q == 2) {
        TRANSPOSE_LOOP(uint16_t)
    } else if (Q == 4) {
        TRANSPOSE_LOOP(uint32_t)
    } else if (Q == 8) {
        TRANSPOSE_LOOP(uint64_t)
    } else {
        for (uint64_t o = 0; o < outer; o++)
            for (uint64_t j = 0; j < B; j++)
                for (uint64_t m = 0; m < P; m++)
                    for (uint64_t i = 0; i < A; i++)
                        memcpy((char *)out + (((o * B + j) * P + m) * A + i) * Q,
                               (const char *)in + (((o * A + i) * P + m) * B + j) * Q, Q);
    }
}

/* ---------------------------------------------------------------- reference apply */

static uint64_t meta_bytes(const mpk_tmeta *m)
{
    uint64_t n = 0;
    mpk_tensor_nbytes(m->dtype, m->shape, m->ndim, &n);
    return n;
}

typedef struct {
    void *const *in;
    void **out;
} copy_ctx;

static bool copy_range(void *ctx, const mpk_range *r)
{
    const copy_ctx *c = ctx;
    memcpy((char *)c->out[r->dst] + r->dst_off, (const char *)c->in[r->src] + r->src_off, r->len);
    return true;
}

/* One buffer per output of out (one byte more, so an empty one is not NULL); NULL when out of
 * memory (nothing left allocated). */
static void **alloc_outputs(const mpk_bundle *out, size_t n_out)
{
    void **od = calloc(n_out ? n_out : 1, sizeof *od);
    if (!od)
        return NULL;
    for (size_t k = 0; k < n_out; k++)
        if (!(od[k] = malloc(meta_bytes(&out->t[k]) + 1))) {
            for (size_t j = 0; j < k; j++)
                free(od[j]);
            free(od);
            return NULL;
        }
    return od;
}

static mpk_status apply_cast_transpose(const mpk_op *op, const mpk_bundle *in, void *const *data, void **od,
                                       mpk_error *err)
{
    for (int k = 0; k < in->n_groups * in->n_items; k++) {
        const mpk_tmeta *t = &in->t[k];
        uint64_t n = mpk_numel(t->shape, t->ndim);
        if (op->kind == MPK_OP_CAST) {
            mpk_cast(t->dtype, data[k], op->dtype, od[k], n);
        } else {
            size_t el = mpk_dtype_size(t->dtype);
            if (!el)
                return mpk_error_set(err, MPK_E_OP, 0, "ops", "transpose: %s is sub-byte", mpk_dtype_name(t->dtype));
            mpk_transpose(data[k], od[k], el, t->shape, t->ndim, op->dim, op->dim2);
        }
    }
    return MPK_OK;
}

static void apply_dequant_fp8(const mpk_op *op, const mpk_bundle *in, void *const *data, void **od)
{
    const int N = in->n_items;
    for (int i = 0; i < N; i++) {
        const mpk_tmeta *w = &in->t[i];
        int64_t R = w->shape[w->ndim - 2], C = w->shape[w->ndim - 1];
        uint64_t mats = mpk_prod(w->shape, 0, w->ndim - 2), sgrid = (uint64_t)(cdiv(R, op->block) * cdiv(C, op->block));
        size_t oel = mpk_dtype_size(op->dtype);
        for (uint64_t m = 0; m < mats; m++)
            mpk_dequant_fp8_rows(w->dtype, (const uint8_t *)data[i] + m * (uint64_t)(R * C),
                                 (const float *)data[N + i] + m * sgrid, C, op->block, 0, R, op->dtype,
                                 (char *)od[i] + m * (uint64_t)(R * C) * oel);
    }
}

static void apply_quant_fp8(const mpk_op *op, const mpk_bundle *in, void *const *data, void **od)
{
    const int N = in->n_items;
    for (int i = 0; i < N; i++) {
        const mpk_tmeta *t = &in->t[i];
        int64_t R = t->shape[t->ndim - 2], C = t->shape[t->ndim - 1], b = op->block;
        uint64_t mats = mpk_prod(t->shape, 0, t->ndim - 2), sc = (uint64_t)cdiv(C, b);
        size_t el = mpk_dtype_size(t->dtype);
        for (uint64_t m = 0; m < mats; m++)
            for (int64_t r0 = 0; r0 < R; r0 += b)
                mpk_quant_fp8_band(t->dtype, (const char *)data[i] + (m * (uint64_t)R + (uint64_t)r0) * (uint64_t)C * el,
                                   C, (int)b, R - r0 < b ? R - r0 : b,
                                   (uint8_t *)od[i] + (m * (uint64_t)R + (uint64_t)r0) * (uint64_t)C,
                                   (float *)od[N + i] + (m * (uint64_t)cdiv(R, b) + (uint64_t)(r0 / b)) * sc);
    }
}

/* MXFP4 blocks (and their E8M0 scales) to op->dtype, or back. */
static void apply_mxfp4(const mpk_op *op, const mpk_bundle *in, void *const *data, void **od)
{
    const int N = in->n_items;
    for (int i = 0; i < N; i++) {
        const mpk_tmeta *t = &in->t[op->kind == MPK_OP_DEQUANT_MXFP4 ? N + i : i];
        if (op->kind == MPK_OP_DEQUANT_MXFP4)
            mpk_dequant_mxfp4(data[i], data[N + i], mpk_numel(t->shape, t->ndim), op->dtype, od[i]);
        else
            mpk_quant_mxfp4(t->dtype, data[i], mpk_numel(t->shape, t->ndim) / 32, od[i], od[N + i]);
    }
}

mpk_status mpk_op_apply(const mpk_op *op, const mpk_bundle *in, void *const *data, mpk_bundle *out,
                        void ***out_data, mpk_arena *arena, mpk_error *err)
{
    MPK_TRY(mpk_op_descs[op->kind].infer(op, in, out, arena, err));
    size_t n_out = (size_t)(out->n_groups * out->n_items);
    void **od = alloc_outputs(out, n_out);
    if (!od)
        MPK_FAIL(err, MPK_E_NOMEM, "ops", "out of memory");
    mpk_status s = MPK_OK;
    if (mpk_op_descs[op->kind].byte_permutation) { /* the executor's ranges, as memcpys */
        copy_ctx c = {data, od};
        s = mpk_op_ranges(op, in, out, copy_range, &c, err);
    } else if (op->kind == MPK_OP_TRANSPOSE || op->kind == MPK_OP_CAST) {
        s = apply_cast_transpose(op, in, data, od, err);
    } else if (op->kind == MPK_OP_DEQUANT_FP8) {
        apply_dequant_fp8(op, in, data, od);
    } else if (op->kind == MPK_OP_QUANT_FP8) {
        apply_quant_fp8(op, in, data, od);
    } else if (op->kind == MPK_OP_DEQUANT_MXFP4 || op->kind == MPK_OP_QUANT_MXFP4) {
        apply_mxfp4(op, in, data, od);
    } else {
        s = mpk_error_set(err, MPK_E_OP, 0, "ops", "internal: unknown op");
    }
    if (s != MPK_OK) {
        for (size_t k = 0; k < n_out; k++)
            free(od[k]);
        free(od);
        return s;
    }
    *out_data = od;
    return MPK_OK;
}
