/* moe_cpu.c — the CPU reference and the CPU eager/batched/grouped backends. */
#define _GNU_SOURCE
#include "mpk_gpu.h"
#include "mpk_decode.h"
#include "mpk_ops.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const mpk_moe_backend_names[MPK_MOE_BACKEND_COUNT] = {"eager", "batched", "grouped", "grouped_cublas",
                                                                      "decode", "fp8", "grouped_wgmma",
                                                                      "grouped_tma"};

static double silu(double v)
{
    return v / (1.0 + exp(-v));
}

/* Element (r, c) of expert e's matrix [R, C]: BF16 (f8 NULL), or the FP8 code times the scale
 * of its 128 x 128 block (exact in double) */
static double wval(const uint16_t *bf, const uint8_t *f8, const float *sc, int e, int R, int C, int r, int c)
{
    size_t i = ((size_t)e * R + r) * C + c;
    if (!f8)
        return mpk_bf16_to_f32(bf[i]);
    int rb = (R + MPK_MOE_FP8_BLOCK - 1) / MPK_MOE_FP8_BLOCK, cb = (C + MPK_MOE_FP8_BLOCK - 1) / MPK_MOE_FP8_BLOCK;
    return (double)mpk_e4m3_to_f32(f8[i]) *
           sc[((size_t)e * rb + r / MPK_MOE_FP8_BLOCK) * cb + c / MPK_MOE_FP8_BLOCK];
}

/* One token's output row, double accumulation; h [2I] and acc [H] scratch; weights from q when
 * not NULL. */
static void reference_row(const mpk_moe *p, const mpk_moe_fp8 *q, int t, double *h, double *acc, float *out)
{
    int H = p->H, I = p->I;
    for (int c = 0; c < H; c++)
        acc[c] = 0;
    for (int j = 0; j < p->k; j++) {
        int e = p->idx[t * p->k + j];
        for (int r = 0; r < 2 * I; r++) {
            double s = 0;
            for (int c = 0; c < H; c++)
                s += wval(p->w_gu, q ? q->gu : NULL, q ? q->gu_scale : NULL, e, 2 * I, H, r, c) * p->x[(size_t)t * H + c];
            h[r] = s;
        }
        for (int r = 0; r < I; r++)
            h[r] = silu(h[r]) * h[I + r];
        for (int c = 0; c < H; c++) {
            double s = 0;
            for (int r = 0; r < I; r++)
                s += wval(p->w_d, q ? q->dn : NULL, q ? q->dn_scale : NULL, e, H, I, c, r) * h[r];
            acc[c] += (double)p->w[t * p->k + j] * s;
        }
    }
    for (int c = 0; c < H; c++)
        out[c] = (float)acc[c];
}

typedef struct ref_job {
    const mpk_moe *p;
    const mpk_moe_fp8 *q;
    const int *rows;
    int n, stride, first;
    float *out;
} ref_job;

static void *ref_worker(void *arg)
{
    ref_job *j = arg;
    double *h = malloc(sizeof(double) * 2 * (size_t)j->p->I), *acc = malloc(sizeof(double) * (size_t)j->p->H);
    for (int i = j->first; h && acc && i < j->n; i += j->stride)
        reference_row(j->p, j->q, j->rows ? j->rows[i] : i, h, acc, j->out + (size_t)i * j->p->H);
    free(h);
    free(acc);
    return NULL;
}

void mpk_moe_fp8_reference_rows(const mpk_moe *p, const mpk_moe_fp8 *q, const int *rows, int n, int threads,
                                float *out)
{
    enum { MAX_THREADS = 64 };
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    if (threads > n)
        threads = n > 0 ? n : 1;
    ref_job jobs[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    bool started[MAX_THREADS] = {0};
    for (int i = 0; i < threads; i++) {
        jobs[i] = (ref_job){p, q, rows, n, threads, i, out};
        if (i > 0)
            started[i] = pthread_create(&tid[i], NULL, ref_worker, &jobs[i]) == 0;
    }
    for (int i = 0; i < threads; i++)
        if (!started[i])
            ref_worker(&jobs[i]); /* the caller's share, and any thread that could not start */
    for (int i = 1; i < threads; i++)
        if (started[i])
            pthread_join(tid[i], NULL);
}

void mpk_moe_reference_rows(const mpk_moe *p, const int *rows, int n, int threads, float *out)
{
    mpk_moe_fp8_reference_rows(p, NULL, rows, n, threads, out);
}

void mpk_moe_reference(const mpk_moe *p, float *out)
{
    mpk_moe_reference_rows(p, NULL, p->T, 1, out);
}

/* y[n, R] = x[n, C] W^T, W [R, C] BF16, float accumulation */
static void gemm_bt(const float *x, int n, const uint16_t *W, int R, int C, float *y)
{
    for (int i = 0; i < n; i++)
        for (int r = 0; r < R; r++) {
            float s = 0;
            const uint16_t *wr = W + (size_t)r * C;
            const float *xi = x + (size_t)i * C;
            for (int c = 0; c < C; c++)
                s += mpk_bf16_to_f32(wr[c]) * xi[c];
            y[(size_t)i * R + r] = s;
        }
}

/* a[n, I] = silu(h[:, :I]) * h[:, I:] */
static void silu_mul(const float *h, int n, int I, float *a)
{
    for (int i = 0; i < n; i++)
        for (int r = 0; r < I; r++) {
            float g = h[(size_t)i * 2 * I + r];
            a[(size_t)i * I + r] = g / (1.0f + expf(-g)) * h[(size_t)i * 2 * I + I + r];
        }
}

/* One expert over n gathered rows: y [n, H]. */
static void expert(const mpk_moe *p, int e, const float *x, int n, float *h, float *a, float *y)
{
    int H = p->H, I = p->I;
    gemm_bt(x, n, p->w_gu + (size_t)e * 2 * I * H, 2 * I, H, h);
    silu_mul(h, n, I, a);
    gemm_bt(a, n, p->w_d + (size_t)e * H * I, H, I, y);
}

/* y[R] = W x, W [R, C] BF16, the reduction cut at multiples of chunk and the split partial sums
 * added in split order (as the decode kernels' split-K reduction adds them) */
static void gemv_split(const uint16_t *W, int R, int C, const float *x, int chunk, float *y)
{
    for (int r = 0; r < R; r++) {
        float total = 0;
        for (int c0 = 0; c0 < C; c0 += chunk) {
            float part = 0;
            for (int c = c0; c < C && c < c0 + chunk; c++)
                part += mpk_bf16_to_f32(W[(size_t)r * C + c]) * x[c];
            total += part;
        }
        y[r] = total;
    }
}

/* The decode backend's algorithm (mpk_decode.h) on the CPU, for any T: pairs grouped by expert
 * with mpk_decode_group, each active expert's rows over its tokens with the K splits an H100
 * (132 SMs x 8 blocks) gets; yall [P, H] in pair order. h [P, 2I], a [P, I], ys [P, H] scratch. */
static mpk_status decode_cpu(const mpk_moe *p, float *h, float *a, float *ys, float *yall, mpk_error *err)
{
    enum { CPU_TARGET = 132 * 8 };
    int T = p->T, H = p->H, I = p->I, E = p->E, k = p->k, P = T * k;
    int slots = P < E ? P : E;
    int *count = malloc(sizeof(int) * (size_t)E), *act_e = malloc(sizeof(int) * (size_t)slots);
    int *act_off = malloc(sizeof(int) * ((size_t)slots + 1)), *sorted = malloc(sizeof(int) * (size_t)P);
    int *pos = malloc(sizeof(int) * (size_t)P);
    mpk_status s = MPK_OK;
    if (!count || !act_e || !act_off || !sorted || !pos) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, "moe", "out of memory");
        goto done;
    }
    mpk_decode_dims d;
    mpk_decode_plan_dims(T, k, E, H, I, CPU_TARGET, &d);
    int n = mpk_decode_group(p->idx, P, E, count, act_e, act_off, sorted, pos);
    for (int slot = 0; slot < n; slot++) {
        int e = act_e[slot];
        for (int r = act_off[slot]; r < act_off[slot + 1]; r++) { /* the expert's tokens */
            const float *x = p->x + (size_t)(sorted[r] / k) * H;
            gemv_split(p->w_gu + (size_t)e * 2 * I * H, 2 * I, H, x, d.chunk1, h + (size_t)r * 2 * I);
            silu_mul(h + (size_t)r * 2 * I, 1, I, a + (size_t)r * I);
            gemv_split(p->w_d + (size_t)e * H * I, H, I, a + (size_t)r * I, d.chunk2, ys + (size_t)r * H);
        }
    }
    for (int q = 0; q < P; q++)
        memcpy(yall + (size_t)q * H, ys + (size_t)pos[q] * H, sizeof(float) * (size_t)H);
done:
    free(count);
    free(act_e);
    free(act_off);
    free(sorted);
    free(pos);
    return s;
}

void mpk_moe_combine(const mpk_moe *p, const float *yall, float *out)
{
    int T = p->T, H = p->H, k = p->k;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < H; c++) {
            float acc = 0;
            for (int j = 0; j < k; j++)
                acc += p->w[t * k + j] * yall[((size_t)t * k + (size_t)j) * H + c];
            out[(size_t)t * H + c] = acc;
        }
}

mpk_status mpk_moe_cpu(const mpk_moe *p, mpk_moe_backend b, float *out, mpk_error *err)
{
    if (b == MPK_MOE_FP8) { /* its own buffers: the FP8 weights, then the block-scaled algorithm */
        mpk_moe_fp8 q;
        MPK_TRY(mpk_moe_fp8_from_bf16(p, &q, err));
        mpk_status s = mpk_moe_fp8_grouped_cpu(p, &q, out, err);
        mpk_moe_fp8_free(&q);
        return s;
    }
    int T = p->T, H = p->H, I = p->I, E = p->E, k = p->k;
    size_t P = (size_t)T * (size_t)k;
    float *yall = malloc(sizeof(float) * P * (size_t)H); /* y of each (token, slot) pair */
    float *xs = malloc(sizeof(float) * P * (size_t)H), *h = malloc(sizeof(float) * P * 2 * (size_t)I);
    float *a = malloc(sizeof(float) * P * (size_t)I), *ys = malloc(sizeof(float) * P * (size_t)H);
    int *perm = malloc(sizeof(int) * P), *off = calloc((size_t)E + 1, sizeof(int));
    mpk_status s = MPK_OK;
    if (!yall || !xs || !h || !a || !ys || !perm || !off) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, "moe", "out of memory");
        goto done;
    }
    switch (b) {
    case MPK_MOE_EAGER:
        for (int e = 0; e < E; e++) {
            int n = 0;
            for (size_t q = 0; q < P; q++)
                if (p->idx[q] == e) {
                    memcpy(xs + (size_t)n * H, p->x + (q / (size_t)k) * H, sizeof(float) * (size_t)H);
                    perm[n++] = (int)q;
                }
            if (!n)
                continue;
            expert(p, e, xs, n, h, a, ys);
            for (int i = 0; i < n; i++)
                memcpy(yall + (size_t)perm[i] * H, ys + (size_t)i * H, sizeof(float) * (size_t)H);
        }
        break;
    case MPK_MOE_BATCHED:
        for (size_t q = 0; q < P; q++)
            expert(p, p->idx[q], p->x + (q / (size_t)k) * H, 1, h, a, yall + q * H);
        break;
    case MPK_MOE_GROUPED:
    case MPK_MOE_GROUPED_WGMMA:
    case MPK_MOE_GROUPED_TMA:
    case MPK_MOE_GROUPED_CUBLAS: { /* the same algorithm; the library is the GPU's business */
        /* histogram, exclusive prefix sum, stable scatter of pairs into expert order */
        for (size_t q = 0; q < P; q++)
            off[p->idx[q] + 1]++;
        for (int e = 0; e < E; e++)
            off[e + 1] += off[e];
        int *fill = calloc((size_t)E, sizeof(int));
        if (!fill) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, "moe", "out of memory");
            goto done;
        }
        for (size_t q = 0; q < P; q++) {
            int e = p->idx[q], r = off[e] + fill[e]++;
            perm[r] = (int)q;
            memcpy(xs + (size_t)r * H, p->x + (q / (size_t)k) * H, sizeof(float) * (size_t)H);
        }
        free(fill);
        /* grouped GEMMs over the segments, fused silu * up in between */
        for (int e = 0; e < E; e++)
            if (off[e + 1] > off[e])
                gemm_bt(xs + (size_t)off[e] * H, off[e + 1] - off[e], p->w_gu + (size_t)e * 2 * I * H, 2 * I, H,
                        h + (size_t)off[e] * 2 * I);
        silu_mul(h, (int)P, I, a);
        for (int e = 0; e < E; e++)
            if (off[e + 1] > off[e])
                gemm_bt(a + (size_t)off[e] * I, off[e + 1] - off[e], p->w_d + (size_t)e * H * I, H, I,
                        ys + (size_t)off[e] * H);
        for (size_t r = 0; r < P; r++) /* un-permute */
            memcpy(yall + (size_t)perm[r] * H, ys + r * H, sizeof(float) * (size_t)H);
        break;
    }
    case MPK_MOE_DECODE:
        if ((s = decode_cpu(p, h, a, ys, yall, err)) != MPK_OK)
            goto done;
        break;
    default:
        s = mpk_error_set(err, MPK_E_USAGE, 0, "moe", "unknown backend %d", (int)b);
        goto done;
    }
    mpk_moe_combine(p, yall, out);
done:
    free(yall);
    free(xs);
    free(h);
    free(a);
    free(ys);
    free(perm);
    free(off);
    return s;
}

static double unif(uint64_t *s)
{
    return (double)(mpk_rand(s) >> 11) / 9007199254740992.0;
}

mpk_status mpk_moe_random(int T, int H, int I, int E, int k, uint64_t seed, bool make_weights, mpk_moe *p,
                          mpk_error *err)
{
    memset(p, 0, sizeof *p);
    if (T < 1 || H < 1 || I < 1 || E < 1 || k < 1 || k > E)
        MPK_FAIL(err, MPK_E_USAGE, "moe", "need T, H, I, E >= 1 and 1 <= k <= E (got T=%d H=%d I=%d E=%d k=%d)", T,
                 H, I, E, k);
    *p = (mpk_moe){T, H, I, E, k, NULL, NULL, NULL, NULL, NULL};
    uint64_t st = seed * 2 + 1;
    float *x = malloc(sizeof(float) * (size_t)T * H), *w = malloc(sizeof(float) * (size_t)T * k);
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)T * k);
    float *logits = malloc(sizeof(float) * (size_t)E);
    uint16_t *gu = make_weights ? malloc(sizeof(uint16_t) * (size_t)E * 2 * I * H) : NULL;
    uint16_t *dn = make_weights ? malloc(sizeof(uint16_t) * (size_t)E * H * I) : NULL;
    p->x = x;
    p->w = w;
    p->idx = idx;
    p->w_gu = gu;
    p->w_d = dn;
    if (!x || !w || !idx || !logits || (make_weights && (!gu || !dn))) {
        free(logits);
        mpk_moe_free(p, make_weights);
        MPK_FAIL(err, MPK_E_NOMEM, "moe", "out of memory");
    }
    for (size_t i = 0; i < (size_t)T * H; i++)
        x[i] = mpk_bf16_to_f32(mpk_f32_to_bf16((float)(unif(&st) * 2 - 1)));
    for (size_t i = 0; make_weights && i < (size_t)E * 2 * I * H; i++)
        gu[i] = mpk_f32_to_bf16((float)(unif(&st) * 0.1 - 0.05));
    for (size_t i = 0; make_weights && i < (size_t)E * H * I; i++)
        dn[i] = mpk_f32_to_bf16((float)(unif(&st) * 0.1 - 0.05));
    for (int t = 0; t < T; t++) {
        for (int e = 0; e < E; e++)
            logits[e] = (float)(unif(&st) * 4 - 2);
        double sum = 0;
        for (int j = 0; j < k; j++) { /* top-k by selection, distinct experts */
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool used = false;
                for (int q = 0; q < j; q++)
                    used |= idx[t * k + q] == e;
                if (!used && (best < 0 || logits[e] > logits[best]))
                    best = e;
            }
            idx[t * k + j] = best;
            w[t * k + j] = expf(logits[best]);
            sum += w[t * k + j];
        }
        for (int j = 0; j < k; j++)
            w[t * k + j] = (float)(w[t * k + j] / sum);
    }
    free(logits);
    return MPK_OK;
}

void mpk_moe_free(mpk_moe *p, bool weights)
{
    free((void *)p->x);
    free((void *)p->w);
    free((void *)p->idx);
    if (weights) {
        free((void *)p->w_gu);
        free((void *)p->w_d);
    }
    memset(p, 0, sizeof *p);
}

void mpk_moe_compare(const float *ref, const float *got, size_t n, double atol, double rtol, mpk_moe_check *c)
{
    double num = 0, den = 0;
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!isfinite(got[i]) || d > atol + rtol * fabs(ref[i])) {
            if (!c->n_bad)
                c->first_bad = i;
            c->n_bad++;
        }
        if (isfinite(d) && d > c->max_abs)
            c->max_abs = d;
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    c->rel_err = den > 0 ? sqrt(num / den) : sqrt(num);
}

#ifndef MPK_HAVE_CUDA_HARNESS
int mpk_gpu_available(char *why, size_t cap)
{
    snprintf(why, cap, "this moepack was built without CUDA (meson -Dcuda=enabled needs nvcc)");
    return 0;
}

mpk_status mpk_gpu_open(const mpk_moe *weights, mpk_gpu **g, mpk_error *err)
{
    (void)weights;
    *g = NULL;
    MPK_FAIL(err, MPK_E_OP, "gpu", "built without CUDA");
}

void mpk_gpu_close(mpk_gpu *g)
{
    (void)g;
}

mpk_status mpk_gpu_run(mpk_gpu *g, const mpk_moe *p, mpk_moe_backend b, int runs, float *out, mpk_gpu_timing *t,
                       mpk_error *err)
{
    (void)g, (void)p, (void)b, (void)runs, (void)out, (void)t;
    MPK_FAIL(err, MPK_E_OP, "gpu", "built without CUDA");
}

mpk_status mpk_gpu_fp8_weights(mpk_gpu *g, mpk_moe_fp8 *q, mpk_error *err)
{
    (void)g, (void)q;
    MPK_FAIL(err, MPK_E_OP, "gpu", "built without CUDA");
}
#endif
