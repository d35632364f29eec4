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
    MPK_MOE_EAGER,             /* per expert: gather its tokens, two GEMMs */
    MPK_MOE_BATCHED,           /* per (token, slot) pair, pointers to its expert's weights */
    MPK_MOE_GROUPED,           /* sort pairs by expert, one grouped GEMM each way */
    MPK_MOE_BACKEND_COUNT
} mpk_moe_backend;

extern const char *const mpk_moe_backend_names[MPK_MOE_BACKEND_COUNT];

/* The reference: double accumulation everywhere; out [T, H]. Thread-safe. */
void mpk_moe_reference(const mpk_moe *p, float *out);
/* A CPU backend (float accumulation); out [T, H]. MPK_E_NOMEM on allocation failure. */
mpk_status mpk_moe_cpu(const mpk_moe *p, mpk_moe_backend b, float *out, mpk_error *err);

/* Deterministic random problem: x ~ U(-1, 1), weights ~ U(-0.05, 0.05) as BF16 (unless the
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

/* ---------------------------------------------------------------- CUDA (gpu/moe_cuda.cu) */

/* 1 when the binary has the CUDA harness and a device answers; 0 with why filled otherwise. */
int mpk_gpu_available(char *why, size_t cap);

typedef struct mpk_gpu_timing {
    double median_ms;          /* CUDA events, median of the timed runs */
    double tflops, weight_gbs; /* 2*T*k*3*H*I flops; bytes of the experts that received tokens */
} mpk_gpu_timing;

/* Runs backend b on the GPU: correctness first (out, poisoned before the run and checked fully
 * written), then timing over runs iterations after warm-up. MPK_E_OP when unavailable. */
mpk_status mpk_gpu_run(const mpk_moe *p, mpk_moe_backend b, int runs, float *out, mpk_gpu_timing *t,
                       mpk_error *err);

#ifdef __cplusplus
}
#endif
#endif
