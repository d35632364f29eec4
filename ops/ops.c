/* ops.c — shape and dtype inference and inverses of every op (the op table, optable.c, points
 * here), and inference/inversion through chains. */
#define _GNU_SOURCE
#include "mpk_ops.h"
#include "ops_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

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

mpk_status ops_infer_merge(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
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

mpk_status ops_infer_split(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
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

mpk_status ops_infer_concat(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
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

mpk_status ops_infer_chunk(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
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
                else if (op->shape[d] <= MPK_DIM_E && op->shape[d] >= MPK_DIM_EI)
                    MPK_FAIL(err, MPK_E_OP, "ops", "reshape: a size named after config.json (E, I, H) "
                             "that config.json does not give (dimension %d)", d);
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

mpk_status ops_infer_transpose(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out, mpk_arena *arena,
                               mpk_error *err)
{
    return infer_each(op, in, out, arena, err);
}

mpk_status ops_infer_reshape(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out, mpk_arena *arena,
                             mpk_error *err)
{
    return infer_each(op, in, out, arena, err);
}

mpk_status ops_infer_cast(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out, mpk_arena *arena, mpk_error *err)
{
    return infer_each(op, in, out, arena, err);
}

/* ---------------------------------------------------------------- inverses */

mpk_status ops_inverse_simple(const mpk_op *op, const mpk_bundle *in, mpk_op *inv, mpk_error *err)
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

static int64_t cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* dequant_fp8_block: groups (weight, scale_inv) -> one group */
mpk_status ops_infer_dequant_fp8(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
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
mpk_status ops_infer_quant_fp8(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                                  mpk_arena *arena, mpk_error *err)
{
    if (in->n_groups != 1)
        MPK_FAIL(err, MPK_E_OP, "ops", "quant_fp8_block takes 1 source, got %d", in->n_groups);
    int N = in->n_items;
    MPK_TRY(alloc_bundle(out, 2, N, arena, err));
    for (int i = 0; i < N; i++) {
        const mpk_tmeta *t = &in->t[i];
        if (!mpk_dtype_is_float(t->dtype) || t->ndim < 2)
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
mpk_status ops_infer_dequant_mxfp4(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
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

mpk_status ops_infer_quant_mxfp4(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out,
                                    mpk_arena *arena, mpk_error *err)
{
    (void)op;
    if (in->n_groups != 1)
        MPK_FAIL(err, MPK_E_OP, "ops", "quant_mxfp4 takes 1 source, got %d", in->n_groups);
    int N = in->n_items;
    MPK_TRY(alloc_bundle(out, 2, N, arena, err));
    for (int i = 0; i < N; i++) {
        const mpk_tmeta *t = &in->t[i];
        if (!mpk_dtype_is_float(t->dtype) || t->ndim < 1 || t->ndim >= MPK_MAX_DIMS || t->shape[t->ndim - 1] % 32)
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

mpk_status ops_inverse_quant(const mpk_op *op, const mpk_bundle *in, mpk_op *inv, mpk_error *err)
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

