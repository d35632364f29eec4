/* quant_bench.c — dequantize (FP8 block, MXFP4, NVFP4) and quantize (MXFP4 by the reference rule
 * and by the OCP rule, NVFP4 with its amax pass over the rows for the global scale, and without
 * it) throughput against
 * memcpy of the same bytes, in interleaved rounds (memcpy, then each kernel, round after round),
 * 1 thread and all threads. For each kernel: the median of the per-round ratios (memcpy time /
 * kernel time: >= 1.0 is as fast as memcpy), their min and max, and CPU seconds per round.
 * Dequantizers are measured on their BF16 output bytes; the quantizer on its BF16 input bytes.
 * Usage: quant_bench [GiB of BF16 (default 1)] [rounds (default 7)] */
#define _GNU_SOURCE
#include "mpk_ops.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { C = 7168, B = 128 }; /* DeepSeek-V3 hidden size: rows of 7168 values */
enum { K_MEMCPY, K_FP8, K_MXFP4, K_NVFP4, K_QMXFP4, K_QOCP, K_QNVFP4, K_QNVB, K_COUNT };
static const char *const names[K_COUNT] = {"memcpy", "fp8-block dequant", "mxfp4 dequant", "nvfp4 dequant",
                                           "mxfp4 quantize", "mxfp4-ocp quantize", "nvfp4 quantize",
                                           "nvfp4 blocks only"};

typedef struct {
    int kind;
    size_t r0, r1;
    const uint8_t *fp8, *blocks, *scales, *nv_scales;
    const float *grid;
    char *out, *src;
    uint8_t *qscales; /* the quantizer's scales (its codes go to out) */
} job;

static void *run(void *arg)
{
    job *j = arg;
    size_t row = (size_t)C * 2, n = j->r1 - j->r0;
    switch (j->kind) {
    case K_MEMCPY:
        memcpy(j->out + j->r0 * row, j->src + j->r0 * row, n * row);
        break;
    case K_FP8: /* rows are bands of one tall matrix: the scale grid is indexed from r0 / B */
        for (size_t r = j->r0; r < j->r1; r += B) {
            size_t k = j->r1 - r < B ? j->r1 - r : B;
            mpk_dequant_fp8_rows(MPK_DTYPE_F8_E4M3, j->fp8 + r * C, j->grid + (r / B) * (C / B), C, B, 0, (int64_t)k,
                                 MPK_DTYPE_BF16, j->out + r * row);
        }
        break;
    case K_MXFP4:
        mpk_dequant_mxfp4(j->blocks + j->r0 * C / 2, j->scales + j->r0 * C / 32, n * C / 32, MPK_DTYPE_BF16,
                          j->out + j->r0 * row);
        break;
    case K_NVFP4:
        mpk_dequant_nvfp4(j->blocks + j->r0 * C / 2, j->nv_scales + j->r0 * C / 16, n * C / 16, 0.00123f,
                          MPK_DTYPE_BF16, j->out + j->r0 * row);
        break;
    case K_QMXFP4: /* BF16 in src -> codes and scales (into out's bytes) */
        mpk_quant_mxfp4(MPK_DTYPE_BF16, j->src + j->r0 * row, n * C / 32, (uint8_t *)j->out + j->r0 * C / 2,
                        j->qscales + j->r0 * C / 32);
        break;
    case K_QOCP: /* --quantize mxfp4's rule */
        mpk_quant_mxfp4_ocp(MPK_DTYPE_BF16, j->src + j->r0 * row, n * C / 32, (uint8_t *)j->out + j->r0 * C / 2,
                            j->qscales + j->r0 * C / 32);
        break;
    case K_QNVFP4: { /* --quantize nvfp4 as mpk_quant4_matrix runs it per part: the amax pass (the global
                        scale; it also keeps each block's largest magnitude), then the blocks */
        float g;
        mpk_quant_nvfp4_tensor(MPK_DTYPE_BF16, j->src + j->r0 * row, n * C / 16, (uint8_t *)j->out + j->r0 * C / 2,
                               j->qscales + j->r0 * C / 16, &g);
        break;
    }
    case K_QNVFP4 + 1: /* the same without the amax pass (a fixed global scale) */
        mpk_quant_nvfp4(MPK_DTYPE_BF16, j->src + j->r0 * row, n * C / 16, 0.00123f, (uint8_t *)j->out + j->r0 * C / 2,
                        j->qscales + j->r0 * C / 16);
        break;
    }
    return NULL;
}

static double clk(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* One timed run of kind over rows on threads threads: wall seconds; *cpu the process CPU seconds. */
static double timed(job proto, int threads, size_t rows, double *cpu)
{
    pthread_t th[64];
    job jobs[64];
    double c0 = clk(CLOCK_PROCESS_CPUTIME_ID), t0 = clk(CLOCK_MONOTONIC);
    size_t per = (rows / (size_t)threads + B - 1) / B * B;
    for (int i = 0; i < threads; i++) {
        jobs[i] = proto;
        jobs[i].r0 = per * (size_t)i < rows ? per * (size_t)i : rows;
        jobs[i].r1 = jobs[i].r0 + per < rows ? jobs[i].r0 + per : rows;
        pthread_create(&th[i], NULL, run, &jobs[i]);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    double t = clk(CLOCK_MONOTONIC) - t0;
    *cpu = clk(CLOCK_PROCESS_CPUTIME_ID) - c0;
    return t;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    double gib = argc > 1 ? atof(argv[1]) : 1.0;
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    if (rounds < 1 || rounds > 99)
        rounds = 7;
    size_t rows = (size_t)(gib * (1u << 30) / (C * 2)) / B * B, bytes = rows * C * 2;
    int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    ncpu = ncpu > 64 ? 64 : ncpu;
    uint8_t *fp8 = malloc(rows * C), *blocks = malloc(rows * C / 2), *scales = malloc(rows * C / 32);
    uint8_t *nv = malloc(rows * C / 16), *qs = malloc(rows * C / 16);
    float *grid = malloc(sizeof(float) * (rows / B) * (C / B));
    char *out = malloc(bytes), *src = malloc(bytes);
    if (!fp8 || !blocks || !scales || !nv || !qs || !grid || !out || !src) {
        fprintf(stderr, "quant_bench: out of memory\n");
        return 1;
    }
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < rows * C; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        fp8[i] = (uint8_t)(x & 0x7F) == 0x7F ? 0x3F : (uint8_t)x;
        if (i % 2 == 0)
            blocks[i / 2] = (uint8_t)(x >> 8);
        if (i % 32 == 0)
            scales[i / 32] = (uint8_t)(118 + (x >> 40) % 8);
        if (i % 16 == 0) /* E4M3 block scales as ModelOpt writes them: positive, up to 448 */
            nv[i / 16] = (uint8_t)(0x20 + (x >> 24) % 0x5E);
        ((uint16_t *)src)[i] = (uint16_t)(0x3C00 + (x >> 48) % 0x800) ^ (uint16_t)((x >> 20 & 1) << 15); /* BF16 */
    }
    for (size_t i = 0; i < (rows / B) * (C / B); i++)
        grid[i] = 1e-4f * (float)(1 + i % 7);
    memset(out, 0, bytes);
    printf("%.2f GiB of BF16 (%zu rows x %d values), %d rounds interleaved, %d CPUs online\n",
           (double)bytes / (1u << 30), rows, C, rounds, ncpu);
    int ths[2] = {1, ncpu};
    for (int k = 0; k < (ncpu > 1 ? 2 : 1); k++) {
        static double tim[K_COUNT][99], ratio[K_COUNT][99], cpu[K_COUNT][99];
        for (int r = 0; r < rounds; r++)
            for (int kind = 0; kind < K_COUNT; kind++) {
                job proto = {kind, 0, 0, fp8, blocks, scales, nv, grid, out, src, qs};
                tim[kind][r] = timed(proto, ths[k], rows, &cpu[kind][r]);
                ratio[kind][r] = tim[K_MEMCPY][r] / tim[kind][r];
            }
        printf("threads=%d\n", ths[k]);
        for (int kind = 0; kind < K_COUNT; kind++) {
            qsort(ratio[kind], (size_t)rounds, sizeof(double), cmp_d);
            qsort(tim[kind], (size_t)rounds, sizeof(double), cmp_d);
            qsort(cpu[kind], (size_t)rounds, sizeof(double), cmp_d);
            printf("  %-18s %.2fx memcpy (min %.2f, max %.2f)  %.2f GB/s  cpu %.3f s of %.3f s wall\n", names[kind],
                   ratio[kind][rounds / 2], ratio[kind][0], ratio[kind][rounds - 1],
                   (double)bytes / tim[kind][rounds / 2] / 1e9, cpu[kind][rounds / 2], tim[kind][rounds / 2]);
        }
    }
    return 0;
}
