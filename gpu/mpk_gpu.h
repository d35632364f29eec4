/* mpk_gpu.h — one MoE layer run on packed experts: the CPU reference (the oracle), CPU versions
 * of the eager, batched and grouped backends (always built and tested), and the CUDA harness
 * (built when the cuda feature finds nvcc).
 *
 * Semantics (transformers v5 experts backends): x [T, H]; routing top_k_index [T, k] and
 * top_k_weights [T, k]; gate_up_proj [E, 2I, H] and down_proj [E, H, I] in BF16. For token t,
 * slot j, expert e = index[t, j]: h = W_gu[e] x_t (2I values), a = silu(h[0:I]) * h[I:2I],
 * y = W_d[e] a (H values); out_t = sum over j in slot order of w_tj * y. The routing weight is
 * applied after down_proj; the per-token sum runs in fixed slot order (deterministic).
 */
#ifndef MPK_GPU_H
#define MPK_GPU_H

#include "mpk_formats.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mpk_moe {
    int T, H, I, E, k;
    const float *x;            /* [T, H] */
    const int32_t *idx;        /* [T, k] expert of each slot */
    const float *w;            /* [T, k] routing weight of each slot */
    const uint16_t *w_gu;      /* [E, 2I, H] BF16 */
    const uint16_t *w_d;       /* [E, H, I] BF16 */
} mpk_moe;

typedef enum mpk_moe_backend {
    MPK_MOE_EAGER,             /* per expert: gather its tokens, two GEMMs (CUDA: cublasGemmEx) */
    MPK_MOE_BATCHED,           /* per (token, slot) pair, pointers to its expert's weights
                                  (CUDA: cublasGemmBatchedEx) */
    MPK_MOE_GROUPED,           /* sort pairs by expert, one grouped GEMM each way (CUDA: our
                                  tensor-core kernels, silu*up fused into the first) */
    MPK_MOE_GROUPED_CUBLAS,    /* the grouped algorithm through cublasGemmGroupedBatchedEx (the
                                  CPU version is the grouped one) */
    MPK_MOE_DECODE,            /* 1..16 tokens: pairs grouped by expert, GEMV kernels reading each
                                  expert's weights once for all its tokens, split over the
                                  reduction when the grid is small (gpu/mpk_decode.h; CUDA:
                                  gpu/moe_decode.cu, MPK_E_OP above 16 tokens or when H or I is
                                  not a multiple of 8; CPU: any T, same grouping and splits) */
    MPK_MOE_FP8,               /* the BF16 weights quantized to FP8 E4M3 with 128 x 128 block scales
                                  (as pack writes DeepSeek-V3's), then the block-scaled grouped
                                  algorithm (mpk_moe_fp8_grouped_cpu; CUDA: gpu/moe_fp8.cu,
                                  cuBLASLt block-scaled FP8 per expert, H and I multiples of 128).
                                  Not the BF16 answer: about 0.06 relative error against the BF16
                                  reference from quantizing weights and inputs */
    MPK_MOE_GROUPED_WGMMA,     /* the grouped algorithm through our Hopper kernel: a persistent
                                  scheduler over the expert tiles (gpu/mpk_sched.h), wgmma
                                  m64n128k16, silu*up fused (CUDA: gpu/moe_wgmma.cu, sm_90 only;
                                  CPU: the grouped one) */
    MPK_MOE_GROUPED_TMA,       /* grouped_wgmma with its tiles loaded by TMA into 128B-swizzled
                                  shared memory, an mbarrier per stage (sm_90 only) */
    MPK_MOE_BACKEND_COUNT
} mpk_moe_backend;

extern const char *const mpk_moe_backend_names[MPK_MOE_BACKEND_COUNT];

/* The reference: double accumulation everywhere; out [T, H]. Thread-safe. */
void mpk_moe_reference(const mpk_moe *p, float *out);
/* The reference for tokens rows[0..n) only (out [n, H]), spread over up to threads threads. */
void mpk_moe_reference_rows(const mpk_moe *p, const int *rows, int n, int threads, float *out);
/* A CPU backend (float accumulation); out [T, H]. MPK_E_NOMEM on allocation failure. */
mpk_status mpk_moe_cpu(const mpk_moe *p, mpk_moe_backend b, float *out, mpk_error *err);

/* The last step of every CPU backend: out[t] = sum over slots j in order of w[t, j] * yall[t k + j]
 * (yall [T k, H], out [T, H]). */
void mpk_moe_combine(const mpk_moe *p, const float *yall, float *out);

/* Deterministic random problem: x ~ U(-1, 1) rounded to BF16-representable values (hidden
 * states are BF16 in a model, and the GPU backends take them so), weights ~ U(-0.05, 0.05) as BF16 (unless the
 * caller supplies weights), routing = softmax top-k of random logits (distinct experts per
 * token). Buffers malloc'd into *p; free with mpk_moe_free. */
mpk_status mpk_moe_random(int T, int H, int I, int E, int k, uint64_t seed, bool make_weights, mpk_moe *p,
                          mpk_error *err);
void mpk_moe_free(mpk_moe *p, bool weights);

typedef struct mpk_moe_check {
    double rel_err;            /* ||got - ref|| / ||ref|| */
    double max_abs;
    uint64_t n_bad;            /* |got - ref| > atol + rtol |ref|, NaN or Inf */
    uint64_t first_bad;
} mpk_moe_check;

/* Compares got with ref (n values). */
void mpk_moe_compare(const float *ref, const float *got, size_t n, double atol, double rtol, mpk_moe_check *c);

/* ---------------------------------------------------------------- FP8 block-scaled experts */

/* FP8 E4M3 experts with 128 x 128 block scales, as pack writes DeepSeek-V3's gate_up_proj /
 * down_proj and their _scale_inv: weight = f32(code) x the scale of its block. */
enum { MPK_MOE_FP8_BLOCK = 128 };
typedef struct mpk_moe_fp8 {
    const uint8_t *gu;         /* [E, 2I, H] */
    const float *gu_scale;     /* [E, ceil(2I/128), ceil(H/128)] */
    const uint8_t *dn;         /* [E, H, I] */
    const float *dn_scale;     /* [E, ceil(H/128), ceil(I/128)] */
} mpk_moe_fp8;

/* The fp64 reference with q's weights (p's BF16 weights unused): code x scale exact, the
 * activations not quantized. Rows as mpk_moe_reference_rows. Thread-safe. */
void mpk_moe_fp8_reference_rows(const mpk_moe *p, const mpk_moe_fp8 *q, const int *rows, int n, int threads,
                                float *out);
/* The block-scaled grouped algorithm on the CPU (DeepGEMM's recipe, what an FP8 grouped GEMM
 * computes): pairs grouped by expert (mpk_decode_group); each pair's input quantized per 128
 * columns (1 x 128 blocks: scale = amax / 448, mpk_quant_fp8_band); per 128-wide K block the
 * code products summed in fp32, times the input block's scale and the weight block's scale,
 * blocks added in order; silu*up in fp32, quantized the same way as down_proj's input; routing
 * weights after down_proj in slot order. out [T, H]. MPK_E_NOMEM. */
mpk_status mpk_moe_fp8_grouped_cpu(const mpk_moe *p, const mpk_moe_fp8 *q, float *out, mpk_error *err);
/* q from p's BF16 weights, each 128 x 128 block quantized (mpk_quant_fp8_band); buffers
 * malloc'd, free with mpk_moe_fp8_free (NULL-safe fields). MPK_E_NOMEM. */
mpk_status mpk_moe_fp8_from_bf16(const mpk_moe *p, mpk_moe_fp8 *q, mpk_error *err);
void mpk_moe_fp8_free(mpk_moe_fp8 *q);

/* ---------------------------------------------------------------- CUDA (gpu/moe_cuda.cu) */

/* 1 when the binary has the CUDA harness and a device answers; 0 with why filled otherwise. */
int mpk_gpu_available(char *why, size_t cap);

typedef struct mpk_gpu_timing {
    double median_ms;          /* CUDA events, median of the timed runs */
    double tflops, weight_gbs; /* 2*T*k*3*H*I flops; bytes of the experts that received tokens */
} mpk_gpu_timing;

/* The device side of one layer: its weights uploaded once, the cuBLAS handle (libcublas is
 * loaded with dlopen: libcublas.so.13, or $MOEPACK_CUBLAS; without it the cuBLAS backends
 * answer MPK_E_OP with the reason). */
typedef struct mpk_gpu mpk_gpu;
mpk_status mpk_gpu_open(const mpk_moe *weights, mpk_gpu **g, mpk_error *err);
void mpk_gpu_close(mpk_gpu *g);

/* Runs backend b on the GPU: BF16 inputs and intermediates, fp32 accumulation. Correctness
 * first (out [T, H], poisoned with NaN before the run and checked fully written), then timing
 * (CUDA events around the whole layer, routing sort included; runs timed iterations after
 * warm-up, rotating over 4 copies of the inputs; median). MPK_E_OP when the backend is not
 * available (message says why). */
mpk_status mpk_gpu_run(mpk_gpu *g, const mpk_moe *p, mpk_moe_backend b, int runs, float *out, mpk_gpu_timing *t,
                       mpk_error *err);

/* The FP8 weights the fp8 backend runs on (quantized on the device from the uploaded BF16
 * ones the first time it is asked for), copied to the host in pack's layout: buffers malloc'd
 * into *q, free with mpk_moe_fp8_free. MPK_E_OP when the backend is not available (why in
 * err), MPK_E_NOMEM, MPK_E_IO on a CUDA error. */
mpk_status mpk_gpu_fp8_weights(mpk_gpu *g, mpk_moe_fp8 *q, mpk_error *err);

#ifdef __cplusplus
}
#endif
#endif
