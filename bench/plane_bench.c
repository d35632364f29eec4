/* plane_bench.c — what each coding gives on the byte planes of .mpkz chunks (issue 51): libzstd
 * tuned for planes (levels down to negative, the fast strategy, a large minimum match, literals
 * forced through Huffman, small blocks) against our Huffman coder (formats/huff.c), in one
 * thread, on the same planes, interleaved rounds. Each round runs every coding once (compress
 * all chunks of the plane, then decompress them into one buffer and compare); per round the
 * ratio of its CPU time to `zstd -3`'s (libzstd level 3, chunked the same) on the same plane;
 * printed: the median ratio of speeds and their spread (min..max), the size (of the plane) and
 * the median MB/s.
 *   plane_bench [ROUNDS [ELEMENTS]]   (defaults 5, 8 Mi elements: 16 MiB of BF16) */
#define _GNU_SOURCE
#include "formats_internal.h"
#include "mpk_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_c_literalCompressionMode (experimental, accepted by 1.5) */
#include <zstd.h>

typedef struct coding {
    const char *name;
    int level, strategy, min_match, lit; /* 0: libzstd's default; level 99: ours (Huffman), 98: memcpy */
    size_t chunk;                        /* plane bytes a chunk */
} coding;

static const coding codings[] = { /* 512 KiB: a plane of a 1 MiB BF16 chunk (the default) */
    {"zstd -3 (baseline)", 3, 0, 0, 0, 512 << 10},
    {"zstd 1", 1, 0, 0, 0, 512 << 10},
    {"zstd -1", -1, 0, 0, 0, 512 << 10},
    {"zstd -5", -5, 0, 0, 0, 512 << 10},
    {"zstd -5 lit=huf", -5, 0, 0, ZSTD_ps_enable, 512 << 10},
    {"zstd 1 minMatch=7", 1, 0, 7, 0, 512 << 10},
    {"zstd fast mm=7 lit=huf", 1, ZSTD_fast, 7, ZSTD_ps_enable, 512 << 10},
    {"zstd 1, 128K chunks", 1, 0, 0, 0, 128 << 10},
    {"zstd 1, 2M chunks", 1, 0, 0, 0, 2 << 20},
    {"huff (ours)", 99, 0, 0, 0, 512 << 10},
    {"huff, 128K chunks", 99, 0, 0, 0, 128 << 10},
    {"huff, 2M chunks", 99, 0, 0, 0, 2 << 20},
    {"memcpy (stored)", 98, 0, 0, 0, 512 << 10},
};
#define NC (sizeof codings / sizeof *codings)

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double gauss(uint64_t *s)
{
    double u1 = ((double)(mpk_rand(s) >> 11) + 1) / 9007199254740993.0, u2 = (double)(mpk_rand(s) >> 11) / 9007199254740992.0;
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

/* One coding over a plane: sizes and CPU seconds of both directions; the round trip checked. */
static void run(const coding *c, const uint8_t *plane, size_t n, uint8_t *z, uint8_t *back, ZSTD_CCtx *cc,
                ZSTD_DCtx *dc, size_t *zsize, double *ct, double *dt)
{
    size_t nch = (n + c->chunk - 1) / c->chunk, cap = ZSTD_compressBound(c->chunk) + 64, total = 0;
    size_t *zl = calloc(nch, sizeof *zl);
    if (c->level < 98) {
        ZSTD_CCtx_reset(cc, ZSTD_reset_session_and_parameters);
        ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, c->level);
        if (c->strategy)
            ZSTD_CCtx_setParameter(cc, ZSTD_c_strategy, c->strategy);
        if (c->min_match)
            ZSTD_CCtx_setParameter(cc, ZSTD_c_minMatch, c->min_match);
        if (c->lit)
            ZSTD_CCtx_setParameter(cc, ZSTD_c_literalCompressionMode, c->lit);
    }
    double t0 = cpu_now();
    for (size_t i = 0; i < nch; i++) {
        size_t a = i * c->chunk, m = n - a < c->chunk ? n - a : c->chunk;
        uint8_t *o = z + i * cap;
        if (c->level == 98) {
            memcpy(o, plane + a, m);
            zl[i] = m;
        } else if (c->level == 99) {
            mpk_huff h;
            mpk_huff_plan(plane + a, m, SIZE_MAX, &h);
            zl[i] = mpk_huff_encode(&h, plane + a, m, o, cap);
        } else {
            zl[i] = ZSTD_compress2(cc, o, cap, plane + a, m);
        }
        total += zl[i];
    }
    double t1 = cpu_now();
    for (size_t i = 0; i < nch; i++) {
        size_t a = i * c->chunk, m = n - a < c->chunk ? n - a : c->chunk;
        const uint8_t *o = z + i * cap;
        if (c->level == 98)
            memcpy(back + a, o, m);
        else if (c->level == 99)
            mpk_huff_decode(o, zl[i], back + a, m);
        else
            ZSTD_decompressDCtx(dc, back + a, m, o, zl[i]);
    }
    double t2 = cpu_now();
    if (memcmp(back, plane, n) != 0) {
        fprintf(stderr, "plane_bench: %s: round trip differs\n", c->name);
        exit(1);
    }
    free(zl);
    *zsize = total;
    *ct = t1 - t0;
    *dt = t2 - t1;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void bench_plane(const char *title, const uint8_t *plane, size_t n, int rounds)
{
    size_t cap = (n / (128 << 10) + 2) * (ZSTD_compressBound(128 << 10) + 64) + 2 * (ZSTD_compressBound(2 << 20) + 64);
    uint8_t *z = malloc(cap), *back = malloc(n);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    double cr[NC][64], dr[NC][64], cs[NC][64], ds[NC][64], base_c = 0, base_d = 0;
    size_t zs[NC];
    for (int r = -1; r < rounds; r++) /* round -1: warm-up (buffers faulted in), not counted */
        for (size_t k = 0; k < NC; k++) {
            double ct, dt;
            run(&codings[k], plane, n, z, back, cc, dc, &zs[k], &ct, &dt);
            if (r < 0)
                continue;
            if (k == 0)
                base_c = ct, base_d = dt;
            cr[k][r] = base_c / ct, dr[k][r] = base_d / dt; /* speed against zstd -3 / its -d */
            cs[k][r] = (double)n / ct / 1e6, ds[k][r] = (double)n / dt / 1e6;
        }
    printf("## %s (%.1f MiB plane, %d rounds after one not counted)\n\n", title, (double)n / (1 << 20), rounds);
    printf("| coding | size / plane | compress vs zstd -3 | MB/s | decompress vs zstd -d | MB/s |\n|---|---|---|---|---|---|\n");
    for (size_t k = 0; k < NC; k++) {
        double c_lo = cr[k][0], c_hi = cr[k][0], d_lo = dr[k][0], d_hi = dr[k][0];
        for (int r = 1; r < rounds; r++) {
            c_lo = fmin(c_lo, cr[k][r]), c_hi = fmax(c_hi, cr[k][r]);
            d_lo = fmin(d_lo, dr[k][r]), d_hi = fmax(d_hi, dr[k][r]);
        }
        printf("| %s | %.4f | %.2fx (%.2f..%.2f) | %.0f | %.2fx (%.2f..%.2f) | %.0f |\n", codings[k].name,
               (double)zs[k] / (double)n, median(cr[k], rounds), c_lo, c_hi, median(cs[k], rounds), median(dr[k], rounds),
               d_lo, d_hi, median(ds[k], rounds));
    }
    printf("\n");
    fflush(stdout);
    free(z), free(back);
    ZSTD_freeCCtx(cc);
    ZSTD_freeDCtx(dc);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5;
    size_t n = argc > 2 ? (size_t)atoll(argv[2]) : (size_t)8 << 20, cols = 2048;
    rounds = rounds < 1 ? 1 : rounds > 64 ? 64 : rounds;
    uint16_t *bf = malloc(2 * n), *rs = malloc(2 * n);
    uint8_t *fp8 = malloc(n), *planes = malloc(2 * n);
    float *f = malloc(sizeof *f * n);
    uint64_t seed = 1;
    double amax = 0, row = 1;
    for (size_t i = 0; i < n; i++) {
        if (i % cols == 0) /* a per-row scale: 2^u, u uniform in [-1, 1] */
            row = exp2(2.0 * (double)(mpk_rand(&seed) >> 11) / 9007199254740992.0 - 1);
        f[i] = (float)(gauss(&seed) * 0.02);
        bf[i] = mpk_f32_to_bf16(f[i]);
        rs[i] = mpk_f32_to_bf16((float)(f[i] * row));
        amax = fmax(amax, fabs(f[i]));
    }
    for (size_t i = 0; i < n; i++)
        fp8[i] = mpk_f32_to_e4m3((float)(f[i] / amax * 448.0));
    printf("plane_bench: %zu elements, one thread, planes split by %s code\n\n", n, mpk_planes_impl());
    mpk_planes_split(bf, planes, n, 2, true);
    bench_plane("BF16 N(0, 0.02): exponent plane (high byte after the rotation)", planes + n, n, rounds);
    bench_plane("BF16 N(0, 0.02): sign + mantissa plane (low byte)", planes, n, rounds);
    mpk_planes_split(rs, planes, n, 2, true);
    bench_plane("BF16 N(0, 0.02) x per-row scale 2^U(-1,1): exponent plane", planes + n, n, rounds);
    bench_plane("FP8 E4M3 (N(0, 0.02), largest -> 448): the bytes", fp8, n, rounds);
    /* A split that would let FP8 decode several symbols per look-up (not in the container: it
     * costs size, bench/results/2026-12-07-mpkz-round2.md): each pair of elements (a, b) as the
     * byte of their two exponent fields (a's low) and the byte of their sign + mantissa bits. */
    for (size_t i = 0; i < n / 2; i++) {
        uint8_t a = fp8[2 * i], b = fp8[2 * i + 1];
        planes[i] = (uint8_t)((a >> 3 & 15) | (b >> 3 & 15) << 4);
        planes[n / 2 + i] = (uint8_t)((a >> 4 & 8) | (a & 7) | ((b >> 4 & 8) | (b & 7)) << 4);
    }
    bench_plane("FP8 E4M3 split: exponent fields of element pairs", planes, n / 2, rounds);
    bench_plane("FP8 E4M3 split: sign + mantissa bits of element pairs", planes + n / 2, n / 2, rounds);
    free(bf), free(rs), free(fp8), free(planes), free(f);
    return 0;
}
