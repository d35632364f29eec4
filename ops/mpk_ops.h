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
 *   cast(dtype)      every item converted (F32/F16/BF16/F8_E4M3/F8_E5M2, round to nearest
 *                    even; F8_E8M0 decodes only); inverse needs the original dtype
 *   dequant_fp8_block(block, dtype)
 *                    2 groups (FP8 weight [.., R, C], F32 scale_inv [.., ceil(R/b), ceil(C/b)])
 *                    -> 1 group: weight x scale_inv of its block, as dtype (BF16 by default)
 *   quant_fp8_block(block)
 *                    1 group -> 2 groups (F8_E4M3 weight, F32 scale_inv grid): per b x b block
 *                    scale = amax / 448 (1 when amax is 0), fp8 = RNE(w / scale), saturated
 *   dequant_mxfp4(dtype)
 *                    2 groups (U8 blocks [.., R, C/32, 16], U8 E8M0 scales [.., R, C/32])
 *                    -> 1 group [.., R, C]: E2M1 nibbles (low first) x 2^(scale - 127)
 *   quant_mxfp4      1 group [.., R, C] -> 2 groups (blocks, scales): per 32 values the shared
 *                    exponent ceil(log2(amax / 6)) (the reference quantizer's: see
 *                    mpk_quant_mxfp4), values RNE to E2M1
 *   interleave(dim, inverse)
 *                    every item's n = shape[dim] slices (n even) reordered: slice 2j + p goes to
 *                    p * n/2 + j (alternating rows -> two contiguous halves: transformers'
 *                    Interleave, view [n/2, 2] transposed); inverse: the other way
 *   permute_for_rope(heads, inverse, groups)
 *                    every item's rows (dim 0, a multiple of 2 * heads) reordered within each
 *                    head of hd = rows / heads rows: row 2j + p of a head goes to p * hd/2 + j
 *                    (transformers' PermuteForRope, view [heads, hd/2, 2, ..] transposed);
 *                    inverse: the other way. groups (a bit mask, 0: all) limits it to some
 *                    groups (permute_layer_names: q and k of a chunked qkv, not v); heads may be
 *                    named by config.json keys (bound like reshape's sizes)
 *   concat_list(dim) each group's N items (equal shapes) joined along an existing dim -> N = 1
 *                    (transformers' Concatenate of a list pattern: ngram_embedding.shard_*)
 *   chunk_list(dim, items)
 *                    inverse of concat_list: each group's single item cut into items equal
 *                    items along dim (items from config.json, e.g. split_ngram_parts)
 * merge/split/concat/chunk/reshape/interleave/permute_for_rope/concat_list/chunk_list move
 * bytes without computing: the converter plans them as ranged copies. transpose and cast
 * compute, in bounded blocks.
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
    MPK_OP_DEQUANT_FP8,
    MPK_OP_QUANT_FP8,
    MPK_OP_DEQUANT_MXFP4,
    MPK_OP_QUANT_MXFP4,
    MPK_OP_INTERLEAVE,
    MPK_OP_PERMUTE_ROPE,
    MPK_OP_CONCAT_LIST,
    MPK_OP_CHUNK_LIST,
    MPK_OP_COUNT
} mpk_op_kind;

/* A reshape size named after config.json (a spec's "E", "I", "H", "2I", "E*I"), replaced by
 * its value when the spec is bound to a model (mpk_spec_bind_sizes). */
enum { MPK_DIM_E = -100, MPK_DIM_I = -101, MPK_DIM_H = -102, MPK_DIM_2I = -103, MPK_DIM_EI = -104 };

typedef struct mpk_op {
    mpk_op_kind kind;
    int dim;                         /* merge, split, concat, chunk; transpose: first dim */
    int dim2;                        /* transpose: second dim */
    int chunks;                      /* chunk: pieces (0: as many as the converter's targets) */
    int ndim;                        /* reshape: target shape */
    int64_t shape[MPK_MAX_DIMS];
    int inv_ndim;                    /* reshape: original shape for the inverse, -1 unknown */
    int64_t inv_shape[MPK_MAX_DIMS];
    int block;                       /* quant_fp8_block / dequant_fp8_block: block edge (128) */
    mpk_dtype dtype;                 /* cast, dequant_*: target dtype */
    mpk_dtype from;                  /* cast: original dtype for the inverse */
    bool has_from;
    bool inverse;                    /* interleave, permute_for_rope: the reverse permutation */
    int heads;                       /* permute_for_rope: heads (0: not known yet, see cfg_key) */
    uint32_t groups;                 /* permute_for_rope: bit g set = group g permuted; 0 = all */
    /* permute_for_rope: config.json keys giving heads; concat_list/chunk_list: the item count
     * (chunks). Comma-separated dotted paths, the first present wins, each also looked up under
     * text_config; "" for none. Bound by mpk_op_bind_config. */
    char cfg_key[128];
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

/* One byte range a byte-permutation op moves: bytes [src_off, +len) of input tensor src (index
 * g * n_items + i of the input bundle) land at [dst_off, +len) of output tensor dst. */
typedef struct mpk_range {
    int src, dst;
    uint64_t src_off, dst_off, len;
} mpk_range;
/* Told each range; false stops the walk (out of memory). */
typedef bool (*mpk_range_fn)(void *ctx, const mpk_range *r);

/* How a computed op runs in the executor (its block kernel). */
typedef enum mpk_op_compute {
    MPK_COMPUTE_NONE,          /* a byte permutation: ranged copies, no kernel */
    MPK_COMPUTE_TRANSPOSE,     /* mpk_transpose over slabs below dim */
    MPK_COMPUTE_CAST,          /* mpk_cast element-wise */
    MPK_COMPUTE_DEQUANT,       /* two inputs (codes, scales) -> values */
    MPK_COMPUTE_QUANT,         /* one input -> two outputs (codes, scales) */
    MPK_COMPUTE_COUNT
} mpk_op_compute;

/* A row of the op table: everything moepack knows about one op. */
typedef struct mpk_op_desc {
    mpk_op_kind kind;
    const char *name;
    const char *params;        /* for docs and errors: "dim", "dim, chunks", ... */
    bool byte_permutation;     /* planned as range copies (ranges below) */
    mpk_op_compute compute;    /* computed ops: the executor's kernel class */
    /* Reads the op's parameters from its spec object j (op->kind set); MPK_E_SPEC naming
     * where (the spec) and path (the JSON path of the op). */
    mpk_status (*parse)(const cJSON *j, mpk_op *op, const char *where, const char *path, mpk_error *err);
    /* "merge(dim=0)" into buf; returns what snprintf returns. */
    int (*format)(const mpk_op *op, char *buf, size_t cap);
    /* Output metadata from input metadata; out->t is allocated from arena. */
    mpk_status (*infer)(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out, mpk_arena *arena,
                        mpk_error *err);
    /* The op that undoes op (given the input it was applied to, may be NULL when the input is
     * unknown: then ops needing it fail with MPK_E_OP). */
    mpk_status (*inverse)(const mpk_op *op, const mpk_bundle *in, mpk_op *inv, mpk_error *err);
    /* Byte permutations: every range the op moves, output by output, each output's ranges in
     * increasing dst_off, tiling it (the executor builds its copy graph from them; the
     * reference apply memcpys them). NULL for computed ops. */
    mpk_status (*ranges)(const mpk_op *op, const mpk_bundle *in, const mpk_bundle *out, mpk_range_fn fn,
                         void *ctx, mpk_error *err);
    /* Computed ops: the smallest byte count of output tensor out (which: its index among the
     * op's outputs for one item) that the kernel produces on its own. NULL for permutations. */
    uint64_t (*granule)(const mpk_op *op, const mpk_tmeta *in, const mpk_tmeta *out, int which);
} mpk_op_desc;

/* The op table, indexed by mpk_op_kind (ops/optable.c). */
extern const mpk_op_desc mpk_op_descs[MPK_OP_COUNT];
/* Looks an op up by name ("merge"); NULL when unknown. */
const mpk_op_desc *mpk_op_find(const char *name);
/* Parses one op object of a spec ({"op": "merge", "dim": 0}) through its row. */
mpk_status mpk_op_parse(const cJSON *j, mpk_op *op, const char *where, const char *path, mpk_error *err);
/* The ranges of a byte-permutation op (its row's ranges; MPK_E_OP for a computed op). */
mpk_status mpk_op_ranges(const mpk_op *op, const mpk_bundle *in, const mpk_bundle *out, mpk_range_fn fn, void *ctx,
                         mpk_error *err);
/* The first of the op's cfg_key paths ("vision_config.num_attention_heads,...") present in
 * config (a cJSON object, may be NULL) as a positive integer, also tried under text_config;
 * -1 when none is. */
long mpk_op_config_value(const mpk_op *op, const cJSON *config);
/* Fills what op takes from config.json (permute_for_rope's heads, concat_list/chunk_list's
 * item count) from its cfg_key; left unknown (0) when config does not give it, which
 * inference then reports. */
void mpk_op_bind_config(mpk_op *op, const cJSON *config);

/* True when the op leaves dim 0 of every tensor alone (so the items stacked along it can be
 * computed one at a time). */
bool mpk_op_keeps_dim0(const mpk_op *op);

/* Shape/dtype inference through a chain. out->t from arena. */
mpk_status mpk_ops_infer_chain(const mpk_op *ops, int n_ops, const mpk_bundle *in, mpk_bundle *out,
                               mpk_arena *arena, mpk_error *err);
/* The inverse chain: inverses in reverse order. in is the forward input (may be NULL). */
mpk_status mpk_ops_invert_chain(const mpk_op *ops, int n_ops, const mpk_bundle *in, mpk_op *inv,
                                mpk_error *err);
/* Formats "merge(dim=0)" etc. */
const char *mpk_op_str(const mpk_op *op, char *buf, size_t cap);

/* ---------------------------------------------------------------- CPU kernels */

/* Converts n elements; round to nearest even, NaN keeps its sign, overflow to +-inf.
 * Thread-safe. */
void mpk_cast(mpk_dtype from, const void *src, mpk_dtype to, void *dst, size_t n);

/* ---------------------------------------------------------------- number formats (numfmt.c)
 *
 * F8_E4M3 is the "fn" variant: bias 7, no infinities, max +-448, NaN = S.1111.111; encoding
 * saturates finite overflow and +-inf to +-448. F8_E5M2: bias 15, IEEE-like (inf, NaN);
 * overflow rounds to +-inf. F8_E8M0: 2^(x - 127), 0xFF = NaN. E2M1 (FP4, one nibble):
 * +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}, encoding saturates at +-6, NaN has no code (MXFP4 marks a
 * NaN block through its scale). All encoders round to nearest even; NaN keeps its sign. */
float mpk_e4m3_to_f32(uint8_t x);
uint8_t mpk_f32_to_e4m3(float f);
/* The same codes, by bit operations (what the quantizers use; in quant.c beside them); tests
 * compare the two. */
uint8_t mpk_f32_to_e4m3_fast(float f);
float mpk_e5m2_to_f32(uint8_t x);
uint8_t mpk_f32_to_e5m2(float f);
float mpk_e8m0_to_f32(uint8_t x);
float mpk_e2m1_to_f32(uint8_t nibble);
uint8_t mpk_f32_to_e2m1(float f);
float mpk_bf16_to_f32(uint16_t h);
uint16_t mpk_f32_to_bf16(float f);
float mpk_f16_to_f32(uint16_t h);
uint16_t mpk_f32_to_f16(float f);
/* True when cast between a and b is implemented. */
bool mpk_cast_supported(mpk_dtype from, mpk_dtype to);

#define MPK_FP8_E4M3_MAX 448.0f

/* ---------------------------------------------------------------- block quantizers (quant.c) */

/* Dequantizes rows [r0, r1) of one FP8 block-scaled matrix of C columns: w holds those rows
 * (row r0 first), scale the grid's rows from r0 / block on (ceil(C/b) F32 each); out gets (r1 - r0) * C
 * values of dtype out_dt (F32/F16/BF16): f32(w) * scale, rounded once to out_dt.
 * Thread-safe. */
void mpk_dequant_fp8_rows(mpk_dtype w_dt, const uint8_t *w, const float *scale, int64_t C,
                          int block, int64_t r0, int64_t r1, mpk_dtype out_dt, void *out);
/* Quantizes one band of rows [r0, r1) (r0 a multiple of block, r1 - r0 <= block) of a float
 * matrix of C columns (in: those rows): writes F8_E4M3 codes (may be NULL) and the band's
 * ceil(C/block) scales (may be NULL). Thread-safe. */
void mpk_quant_fp8_band(mpk_dtype in_dt, const void *in, int64_t C, int block, int64_t rows,
                        uint8_t *w, float *scale);
/* Dequantizes n_blocks MXFP4 blocks (16 bytes, 32 values each) with their E8M0 scales into
 * out (dtype out_dt). Thread-safe. */
void mpk_dequant_mxfp4(const uint8_t *blocks, const uint8_t *scales, size_t n_blocks,
                       mpk_dtype out_dt, void *out);
/* Quantizes n_blocks * 32 values of in_dt into blocks (may be NULL) and scales (may be
 * NULL). Thread-safe.
 *
 * The scale is the one the reference quantizer picks (triton_kernels' downcast_to_mxfp,
 * default DequantScaleRoundingMode.ROUND_UP, which transformers' and gpt-oss's
 * quantize_to_mxfp4 call): 2^e with e = ceil(log2(amax / 6)), amax / 6 computed in F32, i.e.
 * the smallest power of two at which the block's largest magnitude fits under 6 (so nothing
 * saturates); an all-zero block gets code 0; values are x / 2^e rounded to nearest even E2M1,
 * the sign kept (a negative value that rounds to zero is code 8, -0). moepack's own choices
 * where the reference has none worth keeping: a block with a NaN gets scale 0xFF and zero
 * codes; a block with an infinity gets scale 2^127 (code 254) and the infinity saturates to
 * +-6; a block whose amax / 6 is an F32 subnormal gets code 0 when amax <= 6 * 2^-127
 * (the reference: code 1 always).
 *
 * Round trip (dequantize to F32/BF16, quantize again): every value comes back exactly and a
 * block comes back byte for byte when its source scale was the smallest that fits, i.e. the
 * block holds a code of magnitude 4 or 6 (nibble & 7 >= 6) under any scale but 0xFF, 254
 * and 253. The bytes (not the values) differ exactly where
 *   - the block's largest code is below 4 (or it is all zeros): the smaller scale 2^e chosen
 *     represents the block too, with larger codes (an all-zero block: scale code 0);
 *   - the scale is 0xFF (NaN): the block comes back as NaN with zero codes.
 * (Zeros keep their sign: code 8, -0, comes back as code 8.)
 * The values (so the bytes too) differ only where the dequantized value is not finite in the
 * intermediate dtype: scale codes 253/254 with codes whose value reaches 2^128 (BF16/F32
 * overflow to infinity, which saturates to 6 x 2^127 on the way back). verify and diff treat
 * two encodings of the same values as identical in value (mpk_mxfp4_value_diff). */
void mpk_quant_mxfp4(mpk_dtype in_dt, const void *in, size_t n_blocks, uint8_t *blocks,
                     uint8_t *scales);

/* Compares two MXFP4 encodings of n_blocks blocks by decoded value (E2M1 code x 2^(scale -
 * 127), exact; a 0xFF scale makes the whole block NaN): two values are the same when they are
 * equal numbers (+0 and -0 are) or both NaN. Returns the index of the first value that differs,
 * n_blocks * 32 when none does. Thread-safe. */
uint64_t mpk_mxfp4_value_diff(const uint8_t *blocks_a, const uint8_t *scales_a, const uint8_t *blocks_b,
                              const uint8_t *scales_b, size_t n_blocks);
/* The same for two FP8 block-scaled encodings (F8_E4M3 or F8_E5M2 codes, F32 scale_inv grid,
 * the layout of mpk_dequant_fp8_rows) of rows x C values, the rows starting at a band edge:
 * each value is code x its block's scale, exact. Returns the index of the first value that
 * differs (row-major), rows * C when none does. Thread-safe. */
uint64_t mpk_fp8_block_value_diff(mpk_dtype w_dt, const uint8_t *w_a, const float *scale_a, const uint8_t *w_b,
                                  const float *scale_b, int64_t C, int block, int64_t rows);

/* ---------------------------------------------------------------- NVFP4 (nvfp4.c)
 *
 * NVIDIA ModelOpt's NVFP4: per linear, codes U8 [.., R, C/2] (two E2M1 a byte, element 2k in
 * the low nibble of byte k), block scales F8_E4M3 [.., R, C/16] (one per 16 values along a
 * row), one F32 global scale (weight_scale_2). A block of 16 values is 8 bytes of codes and one
 * scale byte. Value = e2m1 x s rounded to F32, s = f32(e4m3) x weight_scale_2 rounded to F32
 * (ModelOpt's NVFP4QTensor.dequantize, in that order). */

/* The F32 scale of a block: f32(e4m3) x scale2, rounded to F32. */
float mpk_nvfp4_block_scale(uint8_t e4m3, float scale2);
/* Decodes n_blocks blocks (codes: 8 bytes each, scales: one E4M3 byte each, one global scale2)
 * into n_blocks * 16 values of out_dt (F32, F16 or BF16), rounded once from the F32 value to
 * nearest even. Thread-safe. */
void mpk_dequant_nvfp4(const uint8_t *codes, const uint8_t *scales, size_t n_blocks, float scale2, mpk_dtype out_dt,
                       void *out);
/* The same for compressed-tensors' nvfp4-pack-quantized (the same codes and block scales), whose
 * weight_global_scale is stored as the reciprocal: s = f32(e4m3) / global_scale rounded to F32
 * (compressed-tensors' _dequantize), value = e2m1 x s rounded to F32, then out_dt. */
void mpk_dequant_nvfp4_ct(const uint8_t *codes, const uint8_t *scales, size_t n_blocks, float global_scale,
                          mpk_dtype out_dt, void *out);
/* Packed NVFP4 (moepack's --quantize nvfp4, ModelOpt's names: T U8 [lead.., R, C/2],
 * T_weight_scale F8_E4M3 [lead.., R, C/16], T_weight_scale_2 F32 [lead.., parts] or [lead..] for
 * one part): n_blocks blocks from block first_block of the tensor (blocks_per_row = C/16), each
 * decoded as mpk_dequant_nvfp4 with the global scale of its matrix l and its part, scale2[l x parts
 * + (row mod rows) / (rows / parts)]: gate's for the gate rows, up's for the up rows. rows % parts
 * must be 0 (the planner checks). Thread-safe. */
void mpk_dequant_nvfp4_packed(const uint8_t *codes, const uint8_t *scales, uint64_t first_block, size_t n_blocks,
                              const float *scale2, int64_t blocks_per_row, int64_t rows, int64_t parts,
                              mpk_dtype out_dt, void *out);
/* FP8 (E4M3/E5M2) rows x C with one F32 scale per row (per_row) or one for all: f32(w) x scale
 * rounded to F32, then to out_dt (compressed-tensors' float-quantized channel and tensor
 * strategies, as transformers decompresses them). Thread-safe. */
void mpk_dequant_fp8_scaled(mpk_dtype w_dt, const uint8_t *w, const float *scale, bool per_row, int64_t rows,
                            int64_t C, mpk_dtype out_dt, void *out);
/* compressed-tensors' pack-quantized INT4, symmetric, grouped (Kimi K2.5's experts): rows x C
 * values, 8 a little-endian int32 (so two a byte, element 2k in the low nibble of byte k), each
 * stored as q + 8; one BF16 scale per group of group values of a row. Value = q x scale rounded
 * once to out_dt (exact in F32: compressed-tensors multiplies in BF16). Thread-safe. */
void mpk_dequant_int4_groups(const uint8_t *packed, const uint16_t *scales, int64_t rows, int64_t C, int64_t group,
                             mpk_dtype out_dt, void *out);
/* Compares two NVFP4 encodings of n_blocks blocks by their F32 values (as mpk_dequant_nvfp4
 * computes them; +0 equals -0, NaN equals NaN). Returns the index of the first value that
 * differs, n_blocks * 16 when none does. Thread-safe. */
uint64_t mpk_nvfp4_value_diff(const uint8_t *codes_a, const uint8_t *scales_a, float scale2_a,
                              const uint8_t *codes_b, const uint8_t *scales_b, float scale2_b, size_t n_blocks);

/* ---------------------------------------------------------------- 4-bit quantizers (quant4.c, quant4_mx.c)
 *
 * What --quantize nvfp4 and --quantize mxfp4 compute from BF16/F16/F32 weights. Thread-safe.
 * The E2M1 code of a quotient q rounds |q| to nearest even ({0, .5, 1, 1.5, 2, 3, 4, 6}; the
 * ties 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4), saturating at 6. */

/* The largest magnitude of n values of in_dt (F32/F16/BF16), as an F32; *bad: the index of the
 * first NaN or infinity, n when there is none (then the result means nothing). */
float mpk_quant_amax(mpk_dtype in_dt, const void *in, size_t n, size_t *bad);
/* NVFP4's global scale (weight_scale_2) of a tensor whose largest magnitude is amax: amax /
 * (6 x 448) in F32 (ModelOpt's NVFP4QTensor.get_weights_scaling_factor_2). */
float mpk_nvfp4_global_scale(float amax);
/* Quantizes n_blocks x 16 finite values to NVFP4 under the global scale scale2, as ModelOpt's
 * NVFP4QTensor.get_weights_scaling_factor + quantize + _cast_fp4 compute it in F32 (the current
 * modelopt/torch/quantization/qtensor/nvfp4_tensor.py):
 *   block scale = e4m3(clamp(amax_block / (6 x scale2), 2^-9, 448)) rounding to nearest even,
 *   the product and the quotient each rounded to F32; 1.0 (0x38) for an all-zero block;
 *   code = e2m1(x / (f32(block scale) x scale2)), its sign bit set where the quotient is < 0
 *   (-0 gives code 0). Where that divisor is 0 (scale2 = 0: an all-zero tensor, whose ModelOpt
 *   scales would be NaN, or one whose product underflows) a nonzero x gives +-6 (x / 0 = +-inf
 *   saturates) and a zero gives code 0 (0/0 is NaN, which no bound is below).
 * codes: n_blocks x 8 bytes (element 2k in the low nibble of byte k), or NULL (only the scales);
 * scales: n_blocks bytes. */
void mpk_quant_nvfp4(mpk_dtype in_dt, const void *in, size_t n_blocks, float scale2, uint8_t *codes,
                     uint8_t *scales);
/* mpk_quant_amax, mpk_nvfp4_global_scale and mpk_quant_nvfp4 over one tensor (or one part with
 * its own global scale) of n_blocks x 16 values, in fewer passes over BF16 (the largest
 * magnitude of each block kept from the amax pass, in the last quarter of codes). Returns the
 * index of the first NaN or infinity (then the outputs mean nothing), n_blocks x 16 when none;
 * *scale2 gets the global scale. codes may be NULL (only the scales). */
size_t mpk_quant_nvfp4_tensor(mpk_dtype in_dt, const void *in, size_t n_blocks, uint8_t *codes, uint8_t *scales,
                              float *scale2);
/* Quantizes n_blocks x 32 values to MXFP4 by the OCP MX rule (OCP Microscaling Formats v1.0,
 * section 6.3): X = floor(log2(amax_block)) - 2 (E2M1's emax), clamped below at -127 (so an
 * all-zero block, and one below 2^-125, get scale code 0); scale code X + 127 (F8_E8M0);
 * code = e2m1(x / 2^X) rounded to nearest even, saturating at +-6 (amax / 2^X lies in [4, 8));
 * the sign bit of x kept (-0 and a negative that rounds to zero are code 8); blocks may be NULL
 * (only the scales). Returns the index of
 * the first NaN or infinity (blocks before it are written), n_blocks x 32 when none. */
size_t mpk_quant_mxfp4_ocp(mpk_dtype in_dt, const void *in, size_t n_blocks, uint8_t *blocks, uint8_t *scales);
/* One R x C matrix to fmt (1: NVFP4, its rows split into parts projections with a global scale
 * each, in scale2[parts]; 2: MXFP4 by the OCP rule): codes (R x C / 2 bytes) and scales (R x C /
 * 16 or / 32); any output may be NULL (NVFP4 with both NULL: only the global scales). given:
 * scale2 holds the global scales already (computed from this matrix before: no amax pass, so no
 * NaN check either). Returns the index of the first NaN or infinity (outputs then incomplete),
 * R x C when none, SIZE_MAX when out of memory. */
#define MPK_MAX_PARTS 64 /* fused projections with their own NVFP4 global scale, at most */
size_t mpk_quant4_matrix(int fmt, mpk_dtype in_dt, const void *in, int64_t R, int64_t C, int parts,
                         uint8_t *codes, uint8_t *scales, float *scale2, bool given);

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
