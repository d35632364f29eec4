/* quant_bench.c — FP8 block and MXFP4 dequantize throughput (output GB/s) on >= 1 GiB of BF16
 * output, 1 thread and all threads, against memcpy of the same output size in the same run.
 * Usage: quant_bench [GiB] */
#define _GNU_SOURCE
#include "mpk_ops.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { C = 7168, B = 128 }; /* DeepSeek-V3 hidden size: rows of 7168 values */

typedef struct {
    int kind; /* 0 memcpy, 1 fp8, 2 mxfp4 */
    size_t r0, r1;
    const uint8_t *in, *in2;
    char *out;
    const char *src;
} job;

static void *run(void *arg)
{
    job *j = arg;
    size_t row = (size_t)C * 2;
    if (j->kind == 0) {
        memcpy(j->out + j->r0 * row, j->src + j->r0 * row, (j->r1 - j->r0) * row);
    } else if (j->kind == 1) {
        /* rows are bands of one tall matrix: the scale grid is indexed from r0 / B */
        for (size_t r = j->r0; r < j->r1; r += B) {
            size_t n = j->r1 - r < B ? j->r1 - r : B;
            mpk_dequant_fp8_rows(MPK_DTYPE_F8_E4M3, j->in + r * C, (const float *)j->in2 + (r / B) * (C / B), C, B,
                                 0, (int64_t)n, MPK_DTYPE_BF16, j->out + r * row);
        }
    } else {
        size_t blocks_per_row = C / 32;
        mpk_dequant_mxfp4(j->in + j->r0 * blocks_per_row * 16, j->in2 + j->r0 * blocks_per_row,
                          (j->r1 - j->r0) * blocks_per_row, MPK_DTYPE_BF16, j->out + j->r0 * row);
    }
    return NULL;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double timed(int kind, int threads, size_t rows, const uint8_t *in, const uint8_t *in2, char *out,
                    const char *src)
{
    pthread_t th[64];
    job jobs[64];
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (int i = 0; i < threads; i++) {
            size_t per = (rows / (size_t)threads + B - 1) / B * B;
            size_t r0 = per * (size_t)i, r1 = r0 + per < rows ? r0 + per : rows;
            jobs[i] = (job){kind, r0 < rows ? r0 : rows, r1, in, in2, out, src};
            pthread_create(&th[i], NULL, run, &jobs[i]);
        }
        for (int i = 0; i < threads; i++)
            pthread_join(th[i], NULL);
        double t = now() - t0;
        if (t < best)
            best = t;
    }
    return best;
}

int main(int argc, char **argv)
{
    double gib = argc > 1 ? atof(argv[1]) : 1.0;
    size_t rows = (size_t)(gib * (1u << 30) / (C * 2)) / B * B, out_bytes = rows * C * 2;
    int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu > 64)
        ncpu = 64;
    uint8_t *fp8 = malloc(rows * C), *blocks = malloc(rows * C / 2), *scales = malloc(rows * C / 32);
    float *grid = malloc(sizeof(float) * (rows / B) * (C / B));
    char *out = malloc(out_bytes), *src = malloc(out_bytes);
    if (!fp8 || !blocks || !scales || !grid || !out || !src) {
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
    }
    for (size_t i = 0; i < (rows / B) * (C / B); i++)
        grid[i] = 1e-4f * (float)(1 + i % 7);
    memset(src, 1, out_bytes);
    memset(out, 0, out_bytes);
    printf("output %.2f GiB BF16 (%zu rows x %d), %d threads available\n", (double)out_bytes / (1u << 30), rows, C,
           ncpu);
    int ths[2] = {1, ncpu};
    for (int k = 0; k < 2; k++) {
        int t = ths[k];
        double m = timed(0, t, rows, NULL, NULL, out, src);
        double f = timed(1, t, rows, fp8, (const uint8_t *)grid, out, NULL);
        double q = timed(2, t, rows, blocks, scales, out, NULL);
        printf("threads=%d  memcpy %.2f GB/s | fp8 block dequant %.2f GB/s (%.2fx memcpy) | mxfp4 dequant "
               "%.2f GB/s (%.2fx memcpy)\n",
               t, out_bytes / m / 1e9, out_bytes / f / 1e9, m / f, out_bytes / q / 1e9, m / q);
    }
    return 0;
}
