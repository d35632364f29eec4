/* ops.c — the op descriptor table: inference, inverses, reference CPU kernels. */
#define _GNU_SOURCE
#include "mpk_ops.h"
#include "ops_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

static uint64_t prod(const int64_t *s, int from, int to)
{
    uint64_t p = 1;
    for (int i = from; i < to; i++)
        p *= (uint64_t)s[i];
    return p;
}

static bool meta_eq(const mpk_tmeta *a, const mpk_tmeta *b)
{
    return a->dtype == b->dtype && a->ndim == b->ndim &&
           memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) == 0;
}

static mpk_status alloc_bundle(mpk_bundle *out, int g, int n, mpk_arena *arena, mpk_error *err)
{
    out->n_groups = g;
    out->n_items = n;
    out->t = mpk_arena_alloc(arena, sizeof(mpk_tmeta) * (size_t)(g > 0 && n > 0 ? g * n : 1));
    if (!out->t)
        MPK_FAIL(err, MPK_E_NOMEM, "ops", "out of memory");
    return MPK_OK;
}

/* Bytes of dims [from, ndim) of one tensor; MPK_E_SUBBYTE when not whole bytes. */
static mpk_status inner_bytes(const mpk_tmeta *m, int from, uint64_t *out, const char *opname,
                              mpk_error *err)
{
    uint64_t bits = prod(m->shape, from, m->ndim) * (uint64_t)mpk_dtype_bits(m->dtype);
    if (bits % 8)
        MPK_FAIL(err, MPK_E_SUBBYTE, "ops", "%s: a block of %llu %s elements is not whole bytes",
                 opname, (unsigned long long)prod(m->shape, from, m->ndim), mpk_dtype_name(m->dtype));
    *out = bits / 8;
    return MPK_OK;
}

static mpk_status check_dim(const mpk_tmeta *m, int dim, int limit_extra, const char *opname,
                            mpk_error *err)
{
    if (dim < 0 || dim >= m->ndim + limit_extra) {
        char sh[128];
        MPK_FAIL(err, MPK_E_OP, "ops", "%s: dim %d out of range for shape %s", opname, dim,
                 mpk_shape_str(m->shape, m->ndim, sh, sizeof sh));
    }
    return MPK_OK;
}

/* ---------------------------------------------------------------- inference */

static mpk_status infer_merge(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                              mpk_arena *arena, mpk_error *err)
{
    MPK_TRY(alloc_bundle(out, in->n_groups, 1, arena, err));
    for (int g = 0; g < in->n_groups; g++) {
        const mpk_tmeta *first = &in->t[g * in->n_items];
        if (first->ndim + 1 > MPK_MAX_DIMS)
            MPK_FAIL(err, MPK_E_RANK, "ops", "merge: result would exceed %d dims", MPK_MAX_DIMS);
        MPK_TRY(check_dim(first, op->dim, 1, "merge", err));
        for (int i = 1; i < in->n_items; i++) {
            const mpk_tmeta *t = &in->t[g * in->n_items + i];
            if (t->dtype != first->dtype)
                MPK_FAIL(err, MPK_E_DTYPE_MISMATCH, "ops", "merge: item %d is %s, item 0 is %s", i,
                         mpk_dtype_name(t->dtype), mpk_dtype_name(first->dtype));
            if (!meta_eq(t, first)) {
                char a[128], b[128];
                MPK_FAIL(err, MPK_E_SHAPE, "ops", "merge: item %d has shape %s, item 0 has %s", i,
                         mpk_shape_str(t->shape, t->ndim, a, sizeof a),
                         mpk_shape_str(first->shape, first->ndim, b, sizeof b));
            }
        }
        mpk_tmeta *o = &out->t[g];
        o->dtype = first->dtype;
        o->ndim = first->ndim + 1;
        for (int d = 0, k = 0; d < o->ndim; d++)
            o->shape[d] = d == op->dim ? in->n_items : first->shape[k++];
    }
    return MPK_OK;
}

static mpk_status infer_split(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                              mpk_arena *arena, mpk_error *err)
{
    if (in->n_items != 1)
        MPK_FAIL(err, MPK_E_OP, "ops", "split: needs one tensor per group, got %d", in->n_items);
    MPK_TRY(check_dim(&in->t[0], op->dim, 0, "split", err));
    int64_t n = in->t[0].shape[op->dim];
    for (int g = 1; g < in->n_groups; g++)
        if (in->t[g].ndim != in->t[0].ndim || in->t[g].shape[op->dim] != n)
            MPK_FAIL(err, MPK_E_SHAPE, "ops", "split: groups differ in dim %d (%lld vs %lld)",
                     op->dim, (long long)in->t[g].shape[op->dim], (long long)n);
    if (n > 1 << 20)
        MPK_FAIL(err, MPK_E_OP, "ops", "split: %lld pieces is too many", (long long)n);
    MPK_TRY(alloc_bundle(out, in->n_groups, (int)n, arena, err));
    for (int g = 0; g < in->n_groups; g++)
        for (int i = 0; i < n; i++) {
            mpk_tmeta *o = &out->t[g * n + i];
            const mpk_tmeta *t = &in->t[g];
            o->dtype = t->dtype;
            o->ndim = t->ndim - 1;
            for (int d = 0, k = 0; d < t->ndim; d++)
                if (d != op->dim)
                    o->shape[k++] = t->shape[d];
        }
    return MPK_OK;
}

static mpk_status infer_concat(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                               mpk_arena *arena, mpk_error *err)
{
    MPK_TRY(alloc_bundle(out, 1, in->n_items, arena, err));
    for (int i = 0; i < in->n_items; i++) {
        const mpk_tmeta *first = &in->t[i];
        MPK_TRY(check_dim(first, op->dim, 0, "concat", err));
        for (int g = 1; g < in->n_groups; g++) {
            const mpk_tmeta *t = &in->t[g * in->n_items + i];
            if (t->dtype != first->dtype)
                MPK_FAIL(err, MPK_E_DTYPE_MISMATCH, "ops", "concat: group %d is %s, group 0 is %s", g,
                         mpk_dtype_name(t->dtype), mpk_dtype_name(first->dtype));
            if (!meta_eq(t, first)) {
                char a[128], b[128];
                MPK_FAIL(err, MPK_E_SHAPE, "ops",
                         "concat: group %d has shape %s, group 0 has %s (concat needs equal shapes "
                         "so that chunk can undo it)",
                         g, mpk_shape_str(t->shape, t->ndim, a, sizeof a),
                         mpk_shape_str(first->shape, first->ndim, b, sizeof b));
            }
        }
        out->t[i] = *first;
        if (__builtin_mul_overflow(first->shape[op->dim], (int64_t)in->n_groups,
                                   &out->t[i].shape[op->dim]))
            MPK_FAIL(err, MPK_E_SIZE_OVERFLOW, "ops", "concat: dim %d of %d groups overflows 64 bits",
                     op->dim, in->n_groups);
    }
    return MPK_OK;
}

static mpk_status infer_chunk(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                              mpk_arena *arena, mpk_error *err)
{
    if (in->n_groups != 1)
        MPK_FAIL(err, MPK_E_OP, "ops", "chunk: needs one group, got %d", in->n_groups);
    if (op->chunks <= 0)
        MPK_FAIL(err, MPK_E_OP, "ops", "chunk: number of pieces must be positive, got %d",
                 op->chunks);
    MPK_TRY(alloc_bundle(out, op->chunks, in->n_items, arena, err));
    for (int i = 0; i < in->n_items; i++) {
        const mpk_tmeta *t = &in->t[i];
        MPK_TRY(check_dim(t, op->dim, 0, "chunk", err));
        if (t->shape[op->dim] % op->chunks)
            MPK_FAIL(err, MPK_E_SHAPE, "ops", "chunk: dim %d of size %lld does not split into %d",
                     op->dim, (long long)t->shape[op->dim], op->chunks);
        for (int g = 0; g < op->chunks; g++) {
            out->t[g * in->n_items + i] = *t;
            out->t[g * in->n_items + i].shape[op->dim] /= op->chunks;
        }
    }
    return MPK_OK;
}

static mpk_status infer_each(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                             mpk_arena *arena, mpk_error *err)
{
    MPK_TRY(alloc_bundle(out, in->n_groups, in->n_items, arena, err));
    for (int k = 0; k < in->n_groups * in->n_items; k++) {
        const mpk_tmeta *t = &in->t[k];
        mpk_tmeta *o = &out->t[k];
        *o = *t;
        char sh[128];
        switch (op->kind) {
        case MPK_OP_TRANSPOSE:
            MPK_TRY(check_dim(t, op->dim, 0, "transpose", err));
            MPK_TRY(check_dim(t, op->dim2, 0, "transpose", err));
            if (op->dim == op->dim2)
                MPK_FAIL(err, MPK_E_OP, "ops", "transpose: dims must differ (both %d)", op->dim);
            o->shape[op->dim] = t->shape[op->dim2];
            o->shape[op->dim2] = t->shape[op->dim];
            break;
        case MPK_OP_RESHAPE: {
            uint64_t n = mpk_numel(t->shape, t->ndim), known = 1;
            int neg = -1;
            for (int d = 0; d < op->ndim; d++) {
                if (op->shape[d] == -1 && neg < 0)
                    neg = d;
                else if (op->shape[d] < 0)
                    MPK_FAIL(err, MPK_E_OP, "ops", "reshape: bad size %lld", (long long)op->shape[d]);
                else if (__builtin_mul_overflow(known, (uint64_t)op->shape[d], &known))
                    MPK_FAIL(err, MPK_E_SIZE_OVERFLOW, "ops", "reshape: the target shape's element "
                             "count overflows 64 bits");
            }
            o->ndim = op->ndim;
            memcpy(o->shape, op->shape, sizeof(int64_t) * (size_t)op->ndim);
            if (neg >= 0) {
                if (known == 0 || n % known)
                    MPK_FAIL(err, MPK_E_SHAPE, "ops", "reshape: %s cannot take the shape given",
                             mpk_shape_str(t->shape, t->ndim, sh, sizeof sh));
                o->shape[neg] = (int64_t)(n / known);
            } else if (known != n) {
                MPK_FAIL(err, MPK_E_SHAPE, "ops", "reshape: %s has %llu elements, target has %llu",
                         mpk_shape_str(t->shape, t->ndim, sh, sizeof sh), (unsigned long long)n,
                         (unsigned long long)known);
            }
            break;
        }
        case MPK_OP_CAST:
            if (!mpk_cast_supported(t->dtype, op->dtype))
                MPK_FAIL(err, MPK_E_OP, "ops", "cast: %s -> %s is not supported",
                         mpk_dtype_name(t->dtype), mpk_dtype_name(op->dtype));
            o->dtype = op->dtype;
            break;
        default:
            MPK_FAIL(err, MPK_E_OP, "ops", "internal: not an element-wise op");
        }
    }
    return MPK_OK;
}

/* ---------------------------------------------------------------- inverses */

static mpk_status inv_simple(const mpk_op *op, const mpk_bundle *in, mpk_op *inv, mpk_error *err)
{
    memset(inv, 0, sizeof *inv);
    inv->dim = op->dim;
    inv->dim2 = op->dim2;
    switch (op->kind) {
    case MPK_OP_MERGE: inv->kind = MPK_OP_SPLIT; break;
    case MPK_OP_SPLIT: inv->kind = MPK_OP_MERGE; break;
    case MPK_OP_CHUNK: inv->kind = MPK_OP_CONCAT; break;
    case MPK_OP_TRANSPOSE: inv->kind = MPK_OP_TRANSPOSE; break;
    case MPK_OP_CONCAT:
        inv->kind = MPK_OP_CHUNK;
        inv->chunks = in ? in->n_groups : 0; /* 0: the converter fills in its target count */
        break;
    case MPK_OP_RESHAPE:
        inv->kind = MPK_OP_RESHAPE;
        inv->inv_ndim = -1;
        if (op->inv_ndim >= 0 && op->inv_ndim <= MPK_MAX_DIMS && op->inv_ndim > 0) {
            inv->ndim = op->inv_ndim;
            memcpy(inv->shape, op->inv_shape, sizeof(int64_t) * (size_t)op->inv_ndim);
        } else if (in && in->n_groups * in->n_items > 0) {
            inv->ndim = in->t[0].ndim;
            memcpy(inv->shape, in->t[0].shape, sizeof(int64_t) * (size_t)in->t[0].ndim);
        } else {
            MPK_FAIL(err, MPK_E_OP, "ops",
                     "reshape cannot be inverted without the original shape (give \"inverse_shape\")");
        }
        inv->inv_ndim = op->ndim;
        memcpy(inv->inv_shape, op->shape, sizeof(int64_t) * (size_t)op->ndim);
        break;
    case MPK_OP_CAST:
        inv->kind = MPK_OP_CAST;
        if (op->has_from)
            inv->dtype = op->from;
        else if (in && in->n_groups * in->n_items > 0)
            inv->dtype = in->t[0].dtype;
        else
            MPK_FAIL(err, MPK_E_OP, "ops",
                     "cast cannot be inverted without the original dtype (give \"from\")");
        inv->from = op->dtype;
        inv->has_from = true;
        break;
    default:
        MPK_FAIL(err, MPK_E_OP, "ops", "internal: unknown op");
    }
    return MPK_OK;
}

/* ---------------------------------------------------------------- quantization ops */

static bool float_like(mpk_dtype d);

static int64_t cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* dequant_fp8_block: groups (weight, scale_inv) -> one group */
static mpk_status infer_dequant_fp8(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                                    mpk_arena *arena, mpk_error *err)
{
    char a[128], b[128];
    if (in->n_groups != 2)
        MPK_FAIL(err, MPK_E_OP, "ops", "dequant_fp8_block needs 2 sources (weight, weight_scale_inv), got %d",
                 in->n_groups);
    int N = in->n_items;
    MPK_TRY(alloc_bundle(out, 1, N, arena, err));
    for (int i = 0; i < N; i++) {
        const mpk_tmeta *w = &in->t[i], *s = &in->t[N + i];
        if (w->dtype != MPK_DTYPE_F8_E4M3 && w->dtype != MPK_DTYPE_F8_E5M2)
            MPK_FAIL(err, MPK_E_DTYPE_MISMATCH, "ops", "dequant_fp8_block: weight is %s, not F8_E4M3/F8_E5M2",
                     mpk_dtype_name(w->dtype));
        if (s->dtype != MPK_DTYPE_F32)
            MPK_FAIL(err, MPK_E_DTYPE_MISMATCH, "ops", "dequant_fp8_block: scale_inv is %s, not F32",
                     mpk_dtype_name(s->dtype));
        bool ok = w->ndim >= 2 && s->ndim == w->ndim;
        for (int d = 0; ok && d < w->ndim; d++)
            ok = d < w->ndim - 2 ? s->shape[d] == w->shape[d] : s->shape[d] == cdiv(w->shape[d], op->block);
        if (!ok)
            MPK_FAIL(err, MPK_E_QUANT, "ops",
                     "dequant_fp8_block: scale grid %s does not match weight %s with %dx%d blocks",
                     mpk_shape_str(s->shape, s->ndim, a, sizeof a), mpk_shape_str(w->shape, w->ndim, b, sizeof b),
                     op->block, op->block);
        out->t[i] = *w;
        out->t[i].dtype = op->dtype;
    }
    return MPK_OK;
}

/* quant_fp8_block: one group -> (F8_E4M3 weight, F32 scale grid) */
static mpk_status infer_quant_fp8(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                                  mpk_arena *arena, mpk_error *err)
{
    if (in->n_groups != 1)
        MPK_FAIL(err, MPK_E_OP, "ops", "quant_fp8_block takes 1 source, got %d", in->n_groups);
    int N = in->n_items;
    MPK_TRY(alloc_bundle(out, 2, N, arena, err));
    for (int i = 0; i < N; i++) {
        const mpk_tmeta *t = &in->t[i];
        if (!float_like(t->dtype) || t->ndim < 2)
            MPK_FAIL(err, MPK_E_OP, "ops", "quant_fp8_block needs an F32/F16/BF16 matrix, got %s of rank %d",
                     mpk_dtype_name(t->dtype), t->ndim);
        out->t[i] = *t;
        out->t[i].dtype = MPK_DTYPE_F8_E4M3;
        out->t[N + i] = *t;
        out->t[N + i].dtype = MPK_DTYPE_F32;
        out->t[N + i].shape[t->ndim - 2] = cdiv(t->shape[t->ndim - 2], op->block);
        out->t[N + i].shape[t->ndim - 1] = cdiv(t->shape[t->ndim - 1], op->block);
    }
    return MPK_OK;
}

/* dequant_mxfp4: groups (blocks [.., R, G, 16], scales [.., R, G]) -> [.., R, G*32] */
static mpk_status infer_dequant_mxfp4(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                                      mpk_arena *arena, mpk_error *err)
{
    char a[128], b[128];
    if (in->n_groups != 2)
        MPK_FAIL(err, MPK_E_OP, "ops", "dequant_mxfp4 needs 2 sources (blocks, scales), got %d", in->n_groups);
    int N = in->n_items;
    MPK_TRY(alloc_bundle(out, 1, N, arena, err));
    for (int i = 0; i < N; i++) {
        const mpk_tmeta *bl = &in->t[i], *s = &in->t[N + i];
        if (bl->dtype != MPK_DTYPE_U8 || s->dtype != MPK_DTYPE_U8)
            MPK_FAIL(err, MPK_E_DTYPE_MISMATCH, "ops", "dequant_mxfp4: blocks and scales must be U8, got %s and %s",
                     mpk_dtype_name(bl->dtype), mpk_dtype_name(s->dtype));
        bool ok = bl->ndim >= 2 && bl->shape[bl->ndim - 1] == 16 && s->ndim == bl->ndim - 1;
        for (int d = 0; ok && d < s->ndim; d++)
            ok = s->shape[d] == bl->shape[d];
        if (!ok)
            MPK_FAIL(err, MPK_E_QUANT, "ops", "dequant_mxfp4: scales %s do not match blocks %s ([.., G, 16] and [.., G])",
                     mpk_shape_str(s->shape, s->ndim, a, sizeof a), mpk_shape_str(bl->shape, bl->ndim, b, sizeof b));
        out->t[i] = *s;
        out->t[i].dtype = op->dtype;
        if (__builtin_mul_overflow(s->shape[s->ndim - 1], (int64_t)32, &out->t[i].shape[s->ndim - 1]))
            MPK_FAIL(err, MPK_E_SIZE_OVERFLOW, "ops", "dequant_mxfp4: the output overflows 64 bits");
    }
    return MPK_OK;
}

static mpk_status infer_quant_mxfp4(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                                    mpk_arena *arena, mpk_error *err)
{
    (void)op;
    if (in->n_groups != 1)
        MPK_FAIL(err, MPK_E_OP, "ops", "quant_mxfp4 takes 1 source, got %d", in->n_groups);
    int N = in->n_items;
    MPK_TRY(alloc_bundle(out, 2, N, arena, err));
    for (int i = 0; i < N; i++) {
        const mpk_tmeta *t = &in->t[i];
        if (!float_like(t->dtype) || t->ndim < 1 || t->ndim >= MPK_MAX_DIMS || t->shape[t->ndim - 1] % 32)
            MPK_FAIL(err, MPK_E_QUANT, "ops", "quant_mxfp4 needs F32/F16/BF16 rows of a multiple of 32 values, got %s [.., %lld]",
                     mpk_dtype_name(t->dtype), t->ndim ? (long long)t->shape[t->ndim - 1] : 0LL);
        out->t[N + i] = *t; /* scales [.., C/32] */
        out->t[N + i].dtype = MPK_DTYPE_U8;
        out->t[N + i].shape[t->ndim - 1] /= 32;
        out->t[i] = out->t[N + i]; /* blocks [.., C/32, 16] */
        out->t[i].shape[t->ndim] = 16;
        out->t[i].ndim = t->ndim + 1;
    }
    return MPK_OK;
}

static mpk_status inv_quant(const mpk_op *op, const mpk_bundle *in, mpk_op *inv, mpk_error *err)
{
    (void)err;
    memset(inv, 0, sizeof *inv);
    inv->block = op->block;
    switch (op->kind) {
    case MPK_OP_DEQUANT_FP8: inv->kind = MPK_OP_QUANT_FP8; break;
    case MPK_OP_DEQUANT_MXFP4: inv->kind = MPK_OP_QUANT_MXFP4; break;
    case MPK_OP_QUANT_FP8:
    case MPK_OP_QUANT_MXFP4:
        inv->kind = op->kind == MPK_OP_QUANT_FP8 ? MPK_OP_DEQUANT_FP8 : MPK_OP_DEQUANT_MXFP4;
        inv->dtype = in && in->n_groups * in->n_items > 0 ? in->t[0].dtype : MPK_DTYPE_BF16;
        break;
    default: break;
    }
    return MPK_OK;
}

const mpk_op_desc mpk_op_descs[MPK_OP_COUNT] = {
    [MPK_OP_MERGE] = {MPK_OP_MERGE, "merge", "dim", true, infer_merge, inv_simple},
    [MPK_OP_SPLIT] = {MPK_OP_SPLIT, "split", "dim", true, infer_split, inv_simple},
    [MPK_OP_CONCAT] = {MPK_OP_CONCAT, "concat", "dim", true, infer_concat, inv_simple},
    [MPK_OP_CHUNK] = {MPK_OP_CHUNK, "chunk", "dim, chunks", true, infer_chunk, inv_simple},
    [MPK_OP_TRANSPOSE] = {MPK_OP_TRANSPOSE, "transpose", "dim, dim2", false, infer_each, inv_simple},
    [MPK_OP_RESHAPE] = {MPK_OP_RESHAPE, "reshape", "shape, inverse_shape?", true, infer_each,
                        inv_simple},
    [MPK_OP_CAST] = {MPK_OP_CAST, "cast", "dtype, from?", false, infer_each, inv_simple},
    [MPK_OP_DEQUANT_FP8] = {MPK_OP_DEQUANT_FP8, "dequant_fp8_block", "block=128, dtype=BF16", false,
                            infer_dequant_fp8, inv_quant},
    [MPK_OP_QUANT_FP8] = {MPK_OP_QUANT_FP8, "quant_fp8_block", "block=128", false, infer_quant_fp8,
                          inv_quant},
    [MPK_OP_DEQUANT_MXFP4] = {MPK_OP_DEQUANT_MXFP4, "dequant_mxfp4", "dtype=BF16", false,
                              infer_dequant_mxfp4, inv_quant},
    [MPK_OP_QUANT_MXFP4] = {MPK_OP_QUANT_MXFP4, "quant_mxfp4", "", false, infer_quant_mxfp4, inv_quant},
};
_Static_assert(sizeof mpk_op_descs / sizeof mpk_op_descs[0] == MPK_OP_COUNT, "op table");

const mpk_op_desc *mpk_op_find(const char *name)
{
    for (int i = 0; i < MPK_OP_COUNT; i++)
        if (strcmp(mpk_op_descs[i].name, name) == 0)
            return &mpk_op_descs[i];
    return NULL;
}

mpk_status mpk_ops_infer_chain(const mpk_op *ops, int n_ops, const mpk_bundle *in, mpk_bundle *out,
                               mpk_arena *arena, mpk_error *err)
{
    mpk_bundle cur = *in;
    for (int i = 0; i < n_ops; i++) {
        mpk_bundle next;
        MPK_TRY(mpk_op_descs[ops[i].kind].infer(&ops[i], &cur, &next, arena, err));
        cur = next;
    }
    *out = cur;
    return MPK_OK;
}

mpk_status mpk_ops_invert_chain(const mpk_op *ops, int n_ops, const mpk_bundle *in, mpk_op *inv,
                                mpk_error *err)
{
    /* with a known input, walk forward to know each op's own input */
    mpk_arena *a = in ? mpk_arena_new() : NULL;
    if (in && !a)
        MPK_FAIL(err, MPK_E_NOMEM, "ops", "out of memory");
    mpk_bundle cur = in ? *in : (mpk_bundle){0};
    mpk_status s = MPK_OK;
    for (int i = 0; i < n_ops && s == MPK_OK; i++) {
        s = mpk_op_descs[ops[i].kind].inverse(&ops[i], in ? &cur : NULL, &inv[n_ops - 1 - i], err);
        if (s == MPK_OK && in) {
            mpk_bundle next;
            s = mpk_op_descs[ops[i].kind].infer(&ops[i], &cur, &next, a, err);
            cur = next;
        }
    }
    mpk_arena_free(a);
    return s;
}

const char *mpk_op_str(const mpk_op *op, char *buf, size_t cap)
{
    char sh[128];
    switch (op->kind) {
    case MPK_OP_TRANSPOSE: snprintf(buf, cap, "transpose(%d, %d)", op->dim, op->dim2); break;
    case MPK_OP_CHUNK: snprintf(buf, cap, "chunk(dim=%d, chunks=%d)", op->dim, op->chunks); break;
    case MPK_OP_RESHAPE:
        snprintf(buf, cap, "reshape(%s)", mpk_shape_str(op->shape, op->ndim, sh, sizeof sh));
        break;
    case MPK_OP_CAST: snprintf(buf, cap, "cast(%s)", mpk_dtype_name(op->dtype)); break;
    case MPK_OP_DEQUANT_FP8:
        snprintf(buf, cap, "dequant_fp8_block(block=%d, %s)", op->block, mpk_dtype_name(op->dtype));
        break;
    case MPK_OP_QUANT_FP8: snprintf(buf, cap, "quant_fp8_block(block=%d)", op->block); break;
    case MPK_OP_DEQUANT_MXFP4: snprintf(buf, cap, "dequant_mxfp4(%s)", mpk_dtype_name(op->dtype)); break;
    case MPK_OP_QUANT_MXFP4: snprintf(buf, cap, "quant_mxfp4()"); break;
    default: snprintf(buf, cap, "%s(dim=%d)", mpk_op_descs[op->kind].name, op->dim); break;
    }
    return buf;
}

/* ---------------------------------------------------------------- number conversions */

size_t mpk_dtype_size(mpk_dtype d)
{
    int b = mpk_dtype_bits(d);
    return b % 8 ? 0 : (size_t)b / 8;
}



float mpk_bf16_to_f32(uint16_t h)
{
    return ops_u2f((uint32_t)h << 16);
}

uint16_t mpk_f32_to_bf16(float f)
{
    return ops_f32_to_bf16(f);
}

float mpk_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    if (exp == 0x1F)
        return ops_u2f(sign | 0x7F800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0)
            return ops_u2f(sign);
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    return ops_u2f(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t mpk_f32_to_f16(float f)
{
    uint32_t x = ops_f2u(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t exp = (x >> 23) & 0xFF, mant = x & 0x7FFFFF;
    if (exp == 0xFF)
        return (uint16_t)(sign | 0x7C00 | (mant ? 0x200 | (mant >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7C00);
    if (e <= 0) {
        if (e < -10)
            return sign;
        mant |= 0x800000;
        int shift = 14 - e;
        uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)e << 10) | (mant >> 13), rem = mant & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1)))
        r++;
    return (uint16_t)(sign | r);
}

static bool float_like(mpk_dtype d)
{
    return d == MPK_DTYPE_F32 || d == MPK_DTYPE_F16 || d == MPK_DTYPE_BF16;
}

static bool fp8(mpk_dtype d)
{
    return d == MPK_DTYPE_F8_E4M3 || d == MPK_DTYPE_F8_E5M2;
}

bool mpk_cast_supported(mpk_dtype from, mpk_dtype to)
{
    return (float_like(from) || fp8(from) || from == MPK_DTYPE_F8_E8M0) && (float_like(to) || fp8(to));
}

float ops_load_f32(mpk_dtype d, const void *src, size_t i)
{
    switch (d) {
    case MPK_DTYPE_F32: return ((const float *)src)[i];
    case MPK_DTYPE_BF16: return mpk_bf16_to_f32(((const uint16_t *)src)[i]);
    case MPK_DTYPE_F16: return mpk_f16_to_f32(((const uint16_t *)src)[i]);
    case MPK_DTYPE_F8_E4M3: return mpk_e4m3_to_f32(((const uint8_t *)src)[i]);
    case MPK_DTYPE_F8_E5M2: return mpk_e5m2_to_f32(((const uint8_t *)src)[i]);
    default: return mpk_e8m0_to_f32(((const uint8_t *)src)[i]);
    }
}

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
    uint64_t outer = prod(shape, 0, a), A = (uint64_t)shape[a], P = prod(shape, a + 1, b),
             B = (uint64_t)shape[b], Q = prod(shape, b + 1, ndim) * el;
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

mpk_status mpk_op_apply(const mpk_op *op, const mpk_bundle *in, void *const *data, mpk_bundle *out,
                        void ***out_data, mpk_arena *arena, mpk_error *err)
{
    MPK_TRY(mpk_op_descs[op->kind].infer(op, in, out, arena, err));
    size_t n_out = (size_t)(out->n_groups * out->n_items);
    void **od = calloc(n_out ? n_out : 1, sizeof *od);
    if (!od)
        MPK_FAIL(err, MPK_E_NOMEM, "ops", "out of memory");
    for (size_t k = 0; k < n_out; k++)
        if (!(od[k] = malloc(meta_bytes(&out->t[k]) + 1))) {
            for (size_t j = 0; j < k; j++)
                free(od[j]);
            free(od);
            MPK_FAIL(err, MPK_E_NOMEM, "ops", "out of memory");
        }
    mpk_status s = MPK_OK;
    const int G = in->n_groups, N = in->n_items;
    uint64_t inner = 0, outer;
    switch (op->kind) {
    case MPK_OP_MERGE: /* out[g] = stack(in[g][*]) */
        for (int g = 0; g < G && s == MPK_OK; g++) {
            const mpk_tmeta *t = &in->t[g * N];
            if ((s = inner_bytes(t, op->dim, &inner, "merge", err)) != MPK_OK)
                break;
            outer = prod(t->shape, 0, op->dim);
            for (uint64_t o = 0; o < outer; o++)
                for (int i = 0; i < N; i++)
                    memcpy((char *)od[g] + (o * (uint64_t)N + (uint64_t)i) * inner,
                           (const char *)data[g * N + i] + o * inner, inner);
        }
        break;
    case MPK_OP_SPLIT: /* out[g][j] = in[g] sliced at index j of dim */
        for (int g = 0; g < G && s == MPK_OK; g++) {
            const mpk_tmeta *t = &in->t[g];
            if ((s = inner_bytes(t, op->dim + 1, &inner, "split", err)) != MPK_OK)
                break;
            outer = prod(t->shape, 0, op->dim);
            uint64_t n = (uint64_t)t->shape[op->dim];
            for (uint64_t j = 0; j < n; j++)
                for (uint64_t o = 0; o < outer; o++)
                    memcpy((char *)od[(uint64_t)g * n + j] + o * inner,
                           (const char *)data[g] + (o * n + j) * inner, inner);
        }
        break;
    case MPK_OP_CONCAT: /* out[i] = cat(in[*][i]) */
        for (int i = 0; i < N && s == MPK_OK; i++) {
            const mpk_tmeta *t = &in->t[i];
            if ((s = inner_bytes(t, op->dim, &inner, "concat", err)) != MPK_OK)
                break;
            outer = prod(t->shape, 0, op->dim);
            for (uint64_t o = 0; o < outer; o++)
                for (int g = 0; g < G; g++)
                    memcpy((char *)od[i] + (o * (uint64_t)G + (uint64_t)g) * inner,
                           (const char *)data[g * N + i] + o * inner, inner);
        }
        break;
    case MPK_OP_CHUNK:
        for (int i = 0; i < N && s == MPK_OK; i++) {
            const mpk_tmeta *t = &out->t[i]; /* a piece */
            if ((s = inner_bytes(t, op->dim, &inner, "chunk", err)) != MPK_OK)
                break;
            outer = prod(t->shape, 0, op->dim);
            uint64_t c = (uint64_t)op->chunks;
            for (uint64_t g = 0; g < c; g++)
                for (uint64_t o = 0; o < outer; o++)
                    memcpy((char *)od[g * (uint64_t)N + (uint64_t)i] + o * inner,
                           (const char *)data[i] + (o * c + g) * inner, inner);
        }
        break;
    case MPK_OP_TRANSPOSE:
    case MPK_OP_RESHAPE:
    case MPK_OP_CAST:
        for (int k = 0; k < G * N; k++) {
            const mpk_tmeta *t = &in->t[k];
            uint64_t n = mpk_numel(t->shape, t->ndim);
            if (op->kind == MPK_OP_RESHAPE) {
                memcpy(od[k], data[k], meta_bytes(t));
            } else if (op->kind == MPK_OP_CAST) {
                mpk_cast(t->dtype, data[k], op->dtype, od[k], n);
            } else {
                size_t el = mpk_dtype_size(t->dtype);
                if (!el) {
                    s = mpk_error_set(err, MPK_E_OP, 0, "ops", "transpose: %s is sub-byte",
                                      mpk_dtype_name(t->dtype));
                    break;
                }
                mpk_transpose(data[k], od[k], el, t->shape, t->ndim, op->dim, op->dim2);
            }
        }
        break;
    case MPK_OP_DEQUANT_FP8:
        for (int i = 0; i < N; i++) {
            const mpk_tmeta *w = &in->t[i];
            int64_t R = w->shape[w->ndim - 2], C = w->shape[w->ndim - 1];
            uint64_t mats = prod(w->shape, 0, w->ndim - 2), sgrid = (uint64_t)(cdiv(R, op->block) * cdiv(C, op->block));
            size_t oel = mpk_dtype_size(op->dtype);
            for (uint64_t m = 0; m < mats; m++)
                mpk_dequant_fp8_rows(w->dtype, (const uint8_t *)data[i] + m * (uint64_t)(R * C),
                                     (const float *)data[N + i] + m * sgrid, C, op->block, 0, R, op->dtype,
                                     (char *)od[i] + m * (uint64_t)(R * C) * oel);
        }
        break;
    case MPK_OP_QUANT_FP8:
        for (int i = 0; i < N; i++) {
            const mpk_tmeta *t = &in->t[i];
            int64_t R = t->shape[t->ndim - 2], C = t->shape[t->ndim - 1], b = op->block;
            uint64_t mats = prod(t->shape, 0, t->ndim - 2), sc = (uint64_t)cdiv(C, b);
            size_t el = mpk_dtype_size(t->dtype);
            for (uint64_t m = 0; m < mats; m++)
                for (int64_t r0 = 0; r0 < R; r0 += b)
                    mpk_quant_fp8_band(t->dtype, (const char *)data[i] + (m * (uint64_t)R + (uint64_t)r0) * (uint64_t)C * el,
                                       C, (int)b, R - r0 < b ? R - r0 : b,
                                       (uint8_t *)od[i] + (m * (uint64_t)R + (uint64_t)r0) * (uint64_t)C,
                                       (float *)od[N + i] + (m * (uint64_t)cdiv(R, b) + (uint64_t)(r0 / b)) * sc);
        }
        break;
    case MPK_OP_DEQUANT_MXFP4:
        for (int i = 0; i < N; i++) {
            const mpk_tmeta *sm = &in->t[N + i];
            mpk_dequant_mxfp4(data[i], data[N + i], mpk_numel(sm->shape, sm->ndim), op->dtype, od[i]);
        }
        break;
    case MPK_OP_QUANT_MXFP4:
        for (int i = 0; i < N; i++) {
            const mpk_tmeta *t = &in->t[i];
            mpk_quant_mxfp4(t->dtype, data[i], mpk_numel(t->shape, t->ndim) / 32, od[i], od[N + i]);
        }
        break;
    default:
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
