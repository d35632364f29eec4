/* optable.c — the op table: one row per op with everything the rest of moepack knows about it
 * (name, parameters, parsing from a spec, formatting, shape inference, inverse, and either the
 * byte ranges it moves (a byte permutation) or the compute class and granule of its kernel).
 * The spec loader, the planner, the executor, verify and the reference apply all read it:
 * adding an op is adding a row here (and, for a computed op, its block kernel). */
#define _GNU_SOURCE
#include "mpk_ops.h"
#include "ops_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------- parsing parameters */

/* Largest dimension a spec may write (exact in a double; the plan checks the products). */
#define MAX_SPEC_DIM 9007199254740992.0

#define SPEC_FAIL(path, ...) return mpk_error_set(err, MPK_E_SPEC, 0, where, "%s: " __VA_ARGS__)

mpk_status ops_get_int(const cJSON *o, const char *key, int lo, int hi, int *out, bool required, const char *where,
                       const char *path, mpk_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) {
        if (required)
            SPEC_FAIL(path, "missing \"%s\"", path, key);
        return MPK_OK;
    }
    long long x;
    if (!mpk_json_num_in(v, lo, hi, &x))
        SPEC_FAIL(path, "\"%s\" must be an integer in [%d, %d]", path, key, lo, hi);
    *out = (int)x;
    return MPK_OK;
}

static mpk_status get_shape(const cJSON *o, const char *key, int64_t *shape, int *ndim, bool allow_neg,
                            bool required, const char *where, const char *path, mpk_error *err)
{
    char sub[400];
    snprintf(sub, sizeof sub, "%s.%s", path, key);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) {
        if (required)
            SPEC_FAIL(sub, "missing", sub);
        return MPK_OK;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > MPK_MAX_DIMS)
        SPEC_FAIL(sub, "must be an array of at most %d integers", sub, MPK_MAX_DIMS);
    *ndim = 0;
    static const struct {
        const char *name;
        int code;
    } syms[] = {{"E", MPK_DIM_E}, {"I", MPK_DIM_I}, {"H", MPK_DIM_H}, {"2I", MPK_DIM_2I}, {"E*I", MPK_DIM_EI}};
    for (const cJSON *d = v->child; d; d = d->next) {
        long long x;
        bool named = false;
        for (size_t k = 0; cJSON_IsString(d) && k < sizeof syms / sizeof syms[0]; k++)
            if (strcmp(d->valuestring, syms[k].name) == 0) {
                shape[(*ndim)++] = syms[k].code; /* bound to config.json's value later */
                named = true;
            }
        if (named)
            continue;
        if (!mpk_json_num_in(d, allow_neg ? -1 : 0, MAX_SPEC_DIM, &x))
            SPEC_FAIL(sub, "must hold integers from %d to 2^53, or a size of config.json (E, I, H, 2I, E*I)",
                      sub, allow_neg ? -1 : 0);
        shape[(*ndim)++] = (int64_t)x;
    }
    return MPK_OK;
}

/* "dtype": NAME into *out when present; ok(dtype) says which are allowed, else msg. */
static mpk_status get_dtype(const cJSON *o, const char *key, mpk_dtype *out, bool *present, const char *msg,
                            bool (*ok)(mpk_dtype), const char *where, const char *path, mpk_error *err)
{
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(o, key);
    if (present)
        *present = dt != NULL;
    if (!dt)
        return MPK_OK;
    if (!cJSON_IsString(dt) || !mpk_dtype_parse(dt->valuestring, strlen(dt->valuestring), out) || (ok && !ok(*out)))
        SPEC_FAIL(path, "\"%s\" must %s", path, key, msg);
    return MPK_OK;
}

#define PARSE_ARGS const cJSON *j, mpk_op *op, const char *where, const char *path, mpk_error *err

static mpk_status parse_dim(PARSE_ARGS)
{
    return ops_get_int(j, "dim", 0, MPK_MAX_DIMS - 1, &op->dim, true, where, path, err);
}

static mpk_status parse_chunk(PARSE_ARGS)
{
    MPK_TRY(parse_dim(j, op, where, path, err));
    return ops_get_int(j, "chunks", 1, 1 << 20, &op->chunks, false, where, path, err);
}

static mpk_status parse_transpose(PARSE_ARGS)
{
    MPK_TRY(ops_get_int(j, "dim", 0, MPK_MAX_DIMS - 1, &op->dim, true, where, path, err));
    MPK_TRY(ops_get_int(j, "dim2", 0, MPK_MAX_DIMS - 1, &op->dim2, true, where, path, err));
    if (op->dim == op->dim2)
        SPEC_FAIL(path, "transpose needs two different dims", path);
    if (op->dim > op->dim2) {
        int t = op->dim;
        op->dim = op->dim2;
        op->dim2 = t;
    }
    return MPK_OK;
}

static mpk_status parse_reshape(PARSE_ARGS)
{
    MPK_TRY(get_shape(j, "shape", op->shape, &op->ndim, true, true, where, path, err));
    return get_shape(j, "inverse_shape", op->inv_shape, &op->inv_ndim, false, false, where, path, err);
}

static bool is_any(mpk_dtype d)
{
    return (unsigned)d < MPK_DTYPE_COUNT;
}

static mpk_status parse_cast(PARSE_ARGS)
{
    bool has_to;
    MPK_TRY(get_dtype(j, "dtype", &op->dtype, &has_to, "name a dtype (F32, F16, BF16)", NULL, where, path, err));
    if (!has_to)
        SPEC_FAIL(path, "\"dtype\" must name a dtype (F32, F16, BF16)", path);
    MPK_TRY(get_dtype(j, "from", &op->from, &op->has_from, "name a dtype", is_any, where, path, err));
    /* FP8 without scales: values beyond its range saturate and the rest keep 3 (E4M3) or 2 (E5M2)
     * mantissa bits, a lossy result no loader reads as the weights (verify of it compared FP8
     * output as a quantization with block scales, and refused). The reverse of a cast from FP8
     * (exact: the values came from FP8) is an inverse, not parsed here. */
    if (!mpk_dtype_is_float(op->dtype) || (op->has_from && !mpk_cast_supported(op->from, op->dtype))) {
        mpk_error_set(err, MPK_E_SPEC, 0, where, "%s: cast to %s%s%s is not supported: cast converts to F32, F16 "
                      "or BF16 (from those, or from F8_E4M3, F8_E5M2, F8_E8M0 given as \"from\"); FP8 needs "
                      "scales: use the quant_fp8_block op (or a conversion's fp8-block128 quantization)", path,
                      mpk_dtype_name(op->dtype), op->has_from ? " from " : "", op->has_from ? mpk_dtype_name(op->from) : "");
        return mpk_error_about(err, MPK_FIELD_QUANT, MPK_E_SPEC);
    }
    return MPK_OK;
}

static mpk_status parse_quant(PARSE_ARGS)
{
    bool fp8 = op->kind == MPK_OP_DEQUANT_FP8 || op->kind == MPK_OP_QUANT_FP8;
    op->block = fp8 ? 128 : 32;
    if (fp8)
        MPK_TRY(ops_get_int(j, "block", 1, 1 << 16, &op->block, false, where, path, err));
    op->dtype = MPK_DTYPE_BF16;
    return get_dtype(j, "dtype", &op->dtype, NULL, "be BF16, F16 or F32", mpk_dtype_is_float, where, path, err);
}

mpk_status mpk_op_parse(const cJSON *j, mpk_op *op, const char *where, const char *path, mpk_error *err)
{
    memset(op, 0, sizeof *op);
    op->inv_ndim = -1;
    if (!cJSON_IsObject(j))
        SPEC_FAIL(path, "an op must be an object like {\"op\": \"merge\", \"dim\": 0}", path);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(j, "op");
    if (!cJSON_IsString(name))
        SPEC_FAIL(path, "missing \"op\" name", path);
    const mpk_op_desc *d = mpk_op_find(name->valuestring);
    if (!d) {
        char list[512] = "";
        for (int i = 0; i < MPK_OP_COUNT; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", mpk_op_descs[i].name);
        SPEC_FAIL(path, "unknown op '%s' (known: %s)", path, name->valuestring, list);
    }
    op->kind = d->kind;
    return d->parse(j, op, where, path, err);
}

/* ---------------------------------------------------------------- formatting */

static int fmt_dim(const mpk_op *op, char *buf, size_t cap)
{
    return snprintf(buf, cap, "%s(dim=%d)", mpk_op_descs[op->kind].name, op->dim);
}

static int fmt_chunk(const mpk_op *op, char *buf, size_t cap)
{
    return snprintf(buf, cap, "chunk(dim=%d, chunks=%d)", op->dim, op->chunks);
}

static int fmt_transpose(const mpk_op *op, char *buf, size_t cap)
{
    return snprintf(buf, cap, "transpose(%d, %d)", op->dim, op->dim2);
}

static int fmt_reshape(const mpk_op *op, char *buf, size_t cap)
{
    char sh[128];
    return snprintf(buf, cap, "reshape(%s)", mpk_shape_str(op->shape, op->ndim, sh, sizeof sh));
}

static int fmt_dtype(const mpk_op *op, char *buf, size_t cap)
{
    return snprintf(buf, cap, "%s(%s)", mpk_op_descs[op->kind].name, mpk_dtype_name(op->dtype));
}

static int fmt_fp8(const mpk_op *op, char *buf, size_t cap)
{
    if (op->kind == MPK_OP_QUANT_FP8)
        return snprintf(buf, cap, "quant_fp8_block(block=%d)", op->block);
    return snprintf(buf, cap, "dequant_fp8_block(block=%d, %s)", op->block, mpk_dtype_name(op->dtype));
}

static int fmt_none(const mpk_op *op, char *buf, size_t cap)
{
    return snprintf(buf, cap, "%s()", mpk_op_descs[op->kind].name);
}

const char *mpk_op_str(const mpk_op *op, char *buf, size_t cap)
{
    mpk_op_descs[op->kind].format(op, buf, cap);
    return buf;
}

/* ---------------------------------------------------------------- byte ranges */

/* Bytes of dims [from, ndim) of one tensor; MPK_E_SUBBYTE when not whole bytes. */
mpk_status ops_inner_bytes(const mpk_tmeta *m, int from, uint64_t *out, const char *opname, mpk_error *err)
{
    uint64_t bits = mpk_prod(m->shape, from, m->ndim) * (uint64_t)mpk_dtype_bits(m->dtype);
    if (bits % 8)
        MPK_FAIL(err, MPK_E_SUBBYTE, "ops", "%s: a block of %llu %s elements is not whole bytes", opname,
                 (unsigned long long)mpk_prod(m->shape, from, m->ndim), mpk_dtype_name(m->dtype));
    *out = bits / 8;
    return MPK_OK;
}

#define RANGE_ARGS const mpk_op *op, const mpk_bundle *in, const mpk_bundle *out, mpk_range_fn fn, void *ctx, \
                   mpk_error *err
#define EMIT(...)                                                                   \
    do {                                                                            \
        if (!fn(ctx, &(mpk_range){__VA_ARGS__}))                                    \
            MPK_FAIL(err, MPK_E_NOMEM, "ops", "out of memory");                     \
    } while (0)

/* merge: out[g] = the N items of group g interleaved below dim */
static mpk_status ranges_merge(RANGE_ARGS)
{
    const int N = in->n_items;
    for (int g = 0; g < in->n_groups; g++) {
        uint64_t inner = 0, dst = 0, outer = mpk_prod(in->t[g * N].shape, 0, op->dim);
        MPK_TRY(ops_inner_bytes(&in->t[g * N], op->dim, &inner, "merge", err));
        for (uint64_t o = 0; o < outer; o++)
            for (int i = 0; i < N; i++, dst += inner)
                EMIT(.src = g * N + i, .src_off = o * inner, .dst = g, .dst_off = dst, .len = inner);
    }
    return MPK_OK;
}

/* split: out[g][j] = in[g] at index j of dim */
static mpk_status ranges_split(RANGE_ARGS)
{
    for (int g = 0; g < in->n_groups; g++) {
        const mpk_tmeta *t = &in->t[g];
        uint64_t inner = 0, n = (uint64_t)t->shape[op->dim], outer = mpk_prod(t->shape, 0, op->dim);
        MPK_TRY(ops_inner_bytes(t, op->dim + 1, &inner, "split", err));
        for (uint64_t j = 0; j < n; j++)
            for (uint64_t o = 0; o < outer; o++)
                EMIT(.src = g, .src_off = (o * n + j) * inner, .dst = (int)((uint64_t)g * n + j), .dst_off = o * inner,
                     .len = inner);
    }
    return MPK_OK;
}

/* concat: out[i] = the G groups' item i joined along dim */
static mpk_status ranges_concat(RANGE_ARGS)
{
    const int G = in->n_groups, N = in->n_items;
    for (int i = 0; i < N; i++) {
        uint64_t inner = 0, dst = 0, outer = mpk_prod(in->t[i].shape, 0, op->dim);
        MPK_TRY(ops_inner_bytes(&in->t[i], op->dim, &inner, "concat", err));
        for (uint64_t o = 0; o < outer; o++)
            for (int g = 0; g < G; g++, dst += inner)
                EMIT(.src = g * N + i, .src_off = o * inner, .dst = i, .dst_off = dst, .len = inner);
    }
    return MPK_OK;
}

/* chunk: out[c][i] = piece c of in[i] along dim */
static mpk_status ranges_chunk(RANGE_ARGS)
{
    const int N = in->n_items;
    const uint64_t c = (uint64_t)op->chunks;
    for (int i = 0; i < N; i++) {
        const mpk_tmeta *piece = &out->t[i];
        uint64_t inner = 0, outer = mpk_prod(piece->shape, 0, op->dim);
        MPK_TRY(ops_inner_bytes(piece, op->dim, &inner, "chunk", err));
        for (uint64_t pc = 0; pc < c; pc++)
            for (uint64_t o = 0; o < outer; o++)
                EMIT(.src = i, .src_off = (o * c + pc) * inner, .dst = (int)(pc * (uint64_t)N + (uint64_t)i),
                     .dst_off = o * inner, .len = inner);
    }
    return MPK_OK;
}

/* reshape: the same bytes */
static mpk_status ranges_reshape(RANGE_ARGS)
{
    for (int k = 0; k < in->n_groups * in->n_items; k++) {
        uint64_t n = 0;
        mpk_tensor_nbytes(in->t[k].dtype, in->t[k].shape, in->t[k].ndim, &n);
        EMIT(.src = k, .src_off = 0, .dst = k, .dst_off = 0, .len = n);
    }
    return MPK_OK;
}

mpk_status mpk_op_ranges(const mpk_op *op, const mpk_bundle *in, const mpk_bundle *out, mpk_range_fn fn, void *ctx,
                         mpk_error *err)
{
    const mpk_op_desc *d = &mpk_op_descs[op->kind];
    if (!d->ranges)
        MPK_FAIL(err, MPK_E_OP, "ops", "internal: %s computes, it does not move byte ranges", d->name);
    return d->ranges(op, in, out, fn, ctx, err);
}

/* ---------------------------------------------------------------- computed ops: granules */

static uint64_t granule_transpose(const mpk_op *op, const mpk_tmeta *in, const mpk_tmeta *out, int which)
{
    return mpk_prod(in->shape, op->dim, in->ndim) * mpk_dtype_size(in->dtype); /* one slab below dim */
}

static uint64_t granule_cast(const mpk_op *op, const mpk_tmeta *in, const mpk_tmeta *out, int which)
{
    return mpk_dtype_size(out->dtype) * mpk_dtype_size(in->dtype);
}

static uint64_t granule_dequant(const mpk_op *op, const mpk_tmeta *in, const mpk_tmeta *out, int which)
{
    if (op->kind == MPK_OP_DEQUANT_MXFP4) /* one block of 32 values */
        return 32 * mpk_dtype_size(out->dtype);
    return (uint64_t)out->shape[out->ndim - 1] * mpk_dtype_size(out->dtype); /* one row */
}

static uint64_t granule_quant(const mpk_op *op, const mpk_tmeta *in, const mpk_tmeta *out, int which)
{
    if (op->kind == MPK_OP_QUANT_MXFP4) /* one block's 16 bytes, or its scale */
        return which ? 1 : 16;
    /* one matrix of codes, or one matrix's scale grid */
    uint64_t m = (uint64_t)(out->shape[out->ndim - 2] * out->shape[out->ndim - 1]);
    return which ? m * 4 : m;
}

/* ---------------------------------------------------------------- the table */

#define PERM(k, n, p, parse, fmt, infer, ranges) \
    [k] = {k, n, p, true, MPK_COMPUTE_NONE, parse, fmt, infer, ops_inverse_simple, ranges, NULL}
#define COMP(k, n, p, cls, parse, fmt, infer, inv, gran) \
    [k] = {k, n, p, false, cls, parse, fmt, infer, inv, NULL, gran}

/* the reorderings of reorder.c: byte permutations with their own inverse */
#define REORDER(k, n, p, f)                                                                                      \
    [k] = {k, n, p, true, MPK_COMPUTE_NONE, ops_parse_##f, ops_format_reorder, ops_infer_##f, ops_inverse_reorder, \
           ops_ranges_##f, NULL}

const mpk_op_desc mpk_op_descs[MPK_OP_COUNT] = {
    PERM(MPK_OP_MERGE, "merge", "dim", parse_dim, fmt_dim, ops_infer_merge, ranges_merge),
    PERM(MPK_OP_SPLIT, "split", "dim", parse_dim, fmt_dim, ops_infer_split, ranges_split),
    PERM(MPK_OP_CONCAT, "concat", "dim", parse_dim, fmt_dim, ops_infer_concat, ranges_concat),
    PERM(MPK_OP_CHUNK, "chunk", "dim, chunks", parse_chunk, fmt_chunk, ops_infer_chunk, ranges_chunk),
    COMP(MPK_OP_TRANSPOSE, "transpose", "dim, dim2", MPK_COMPUTE_TRANSPOSE, parse_transpose, fmt_transpose,
         ops_infer_transpose, ops_inverse_simple, granule_transpose),
    PERM(MPK_OP_RESHAPE, "reshape", "shape, inverse_shape?", parse_reshape, fmt_reshape, ops_infer_reshape,
         ranges_reshape),
    COMP(MPK_OP_CAST, "cast", "dtype, from?", MPK_COMPUTE_CAST, parse_cast, fmt_dtype, ops_infer_cast,
         ops_inverse_simple, granule_cast),
    COMP(MPK_OP_DEQUANT_FP8, "dequant_fp8_block", "block=128, dtype=BF16", MPK_COMPUTE_DEQUANT, parse_quant, fmt_fp8,
         ops_infer_dequant_fp8, ops_inverse_quant, granule_dequant),
    COMP(MPK_OP_QUANT_FP8, "quant_fp8_block", "block=128", MPK_COMPUTE_QUANT, parse_quant, fmt_fp8,
         ops_infer_quant_fp8, ops_inverse_quant, granule_quant),
    COMP(MPK_OP_DEQUANT_MXFP4, "dequant_mxfp4", "dtype=BF16", MPK_COMPUTE_DEQUANT, parse_quant, fmt_dtype,
         ops_infer_dequant_mxfp4, ops_inverse_quant, granule_dequant),
    COMP(MPK_OP_QUANT_MXFP4, "quant_mxfp4", "", MPK_COMPUTE_QUANT, parse_quant, fmt_none, ops_infer_quant_mxfp4,
         ops_inverse_quant, granule_quant),
    REORDER(MPK_OP_INTERLEAVE, "interleave", "dim, inverse=false", interleave),
    REORDER(MPK_OP_PERMUTE_ROPE, "permute_for_rope", "heads (integer or config.json keys), inverse=false, groups?",
            permute_rope),
    REORDER(MPK_OP_CONCAT_LIST, "concat_list", "dim, items? (integer or config.json keys)", concat_list),
    REORDER(MPK_OP_CHUNK_LIST, "chunk_list", "dim, items (integer or config.json keys)", chunk_list),
};
_Static_assert(sizeof mpk_op_descs / sizeof mpk_op_descs[0] == MPK_OP_COUNT, "op table");

const mpk_op_desc *mpk_op_find(const char *name)
{
    for (int i = 0; i < MPK_OP_COUNT; i++)
        if (strcmp(mpk_op_descs[i].name, name) == 0)
            return &mpk_op_descs[i];
    return NULL;
}

bool mpk_op_keeps_dim0(const mpk_op *op)
{
    if (op->kind == MPK_OP_RESHAPE)
        return false; /* a reshape may regroup everything */
    bool dim_op = mpk_op_descs[op->kind].byte_permutation || op->kind == MPK_OP_TRANSPOSE;
    return !dim_op || op->dim != 0;
}
