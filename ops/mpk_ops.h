/* mpk_ops.h — composable tensor ops with shape inference, inverses and CPU kernels.
 *
 * Ops act on a bundle: G groups (one per source pattern) of N items (one per list
 * index, e.g. per expert), every item a tensor. The transformers v5 semantics:
 *   merge(dim)       each group's N items, all the same shape, stacked along a new dim -> N = 1
 *   split(dim)       inverse of merge: each group's single item unstacked along dim
 *   concat(dim)      the G groups joined item-wise along dim (equal shapes) -> G = 1
 *   chunk(dim, n)    inverse of concat: the single group cut into n equal groups along dim
 *   transpose(a, b)  every item's dims a and b swapped (its own inverse)
 *   reshape(shape)   every item reshaped (one -1 allowed); inverse needs the original shape
 *   cast(dtype)      every item converted (F32/F16/BF16, round to nearest even); inverse
 *                    needs the original dtype
 * merge/split/concat/chunk/reshape move bytes without computing: the converter plans them
 * as ranged copies. transpose and cast compute, in bounded blocks.
 */
#ifndef MPK_OPS_H
#define MPK_OPS_H

#include "mpk_formats.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mpk_op_kind {
    MPK_OP_MERGE,
    MPK_OP_SPLIT,
    MPK_OP_CONCAT,
    MPK_OP_CHUNK,
    MPK_OP_TRANSPOSE,
    MPK_OP_RESHAPE,
    MPK_OP_CAST,
    MPK_OP_COUNT
} mpk_op_kind;

typedef struct mpk_op {
    mpk_op_kind kind;
    int dim;                         /* merge, split, concat, chunk; transpose: first dim */
    int dim2;                        /* transpose: second dim */
    int chunks;                      /* chunk: pieces (0: as many as the converter's targets) */
    int ndim;                        /* reshape: target shape */
    int64_t shape[MPK_MAX_DIMS];
    int inv_ndim;                    /* reshape: original shape for the inverse, -1 unknown */
    int64_t inv_shape[MPK_MAX_DIMS];
    mpk_dtype dtype;                 /* cast: target dtype */
    mpk_dtype from;                  /* cast: original dtype for the inverse */
    bool has_from;
} mpk_op;

typedef struct mpk_tmeta {
    mpk_dtype dtype;
    int ndim;
    int64_t shape[MPK_MAX_DIMS];
} mpk_tmeta;

/* A bundle's tensor metadata: t[g * n_items + i]. */
typedef struct mpk_bundle {
    int n_groups, n_items;
    mpk_tmeta *t;
} mpk_bundle;

typedef struct mpk_op_desc {
    mpk_op_kind kind;
    const char *name;
    const char *params;        /* for docs and `moepack ops`: "dim", "dim, chunks", ... */
    bool byte_permutation;     /* planned as range copies */
    /* Output metadata from input metadata; out->t is allocated from arena. */
    mpk_status (*infer)(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out, mpk_arena *arena,
                        mpk_error *err);
    /* The op that undoes op (given the input it was applied to, may be NULL when the input is
     * unknown: then ops needing it fail with MPK_E_OP). */
    mpk_status (*inverse)(const mpk_op *op, const mpk_bundle *in, mpk_op *inv, mpk_error *err);
} mpk_op_desc;

/* The descriptor table, indexed by mpk_op_kind. */
extern const mpk_op_desc mpk_op_descs[MPK_OP_COUNT];
/* Looks an op up by name ("merge"); NULL when unknown. */
const mpk_op_desc *mpk_op_find(const char *name);

/* Shape/dtype inference through a chain. out->t from arena. */
mpk_status mpk_ops_infer_chain(const mpk_op *ops, int n_ops, const mpk_bundle *in, mpk_bundle *out,
                               mpk_arena *arena, mpk_error *err);
/* The inverse chain: inverses in reverse order. in is the forward input (may be NULL). */
mpk_status mpk_ops_invert_chain(const mpk_op *ops, int n_ops, const mpk_bundle *in, mpk_op *inv,
                                mpk_error *err);
/* Formats "merge(dim=0)" etc. */
const char *mpk_op_str(const mpk_op *op, char *buf, size_t cap);

/* ---------------------------------------------------------------- CPU kernels */

/* Element size in bytes (0 for sub-byte dtypes). */
size_t mpk_dtype_size(mpk_dtype d);
/* True when cast between a and b is implemented. */
bool mpk_cast_supported(mpk_dtype from, mpk_dtype to);
/* Converts n elements; round to nearest even, NaN keeps its sign, overflow to +-inf.
 * Thread-safe. */
void mpk_cast(mpk_dtype from, const void *src, mpk_dtype to, void *dst, size_t n);
float mpk_bf16_to_f32(uint16_t h);
uint16_t mpk_f32_to_bf16(float f);
float mpk_f16_to_f32(uint16_t h);
uint16_t mpk_f32_to_f16(float f);

/* Swaps dims a < b of a tensor of the given shape (elements of el bytes): in and out do not
 * overlap. Thread-safe. */
void mpk_transpose(const void *in, void *out, size_t el, const int64_t *shape, int ndim, int a,
                   int b);

/* Reference application of a whole op on materialized tensors (the oracle that verify and
 * tests use; holds everything in memory). data[g * n_items + i] points at each input
 * tensor; *out_data gets malloc'd pointers (free each, then the array). */
mpk_status mpk_op_apply(const mpk_op *op, const mpk_bundle *in, void *const *data, mpk_bundle *out,
                        void ***out_data, mpk_arena *arena, mpk_error *err);

#ifdef __cplusplus
}
#endif
#endif
