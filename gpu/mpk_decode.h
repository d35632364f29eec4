/* mpk_decode.h — the index maths of the decode backend (1..16 tokens), shared by the CUDA
 * kernels (gpu/moe_decode.cu, compiled as __host__ __device__) and the CPU version
 * (gpu/moe_cpu.c), so that tests/test_gpu.c checks on the CPU exactly what the GPU computes.
 *
 * The decode algorithm, for T <= MPK_DECODE_MAX_T tokens and P = T * k (token, slot) pairs:
 *  1. Group the pairs by expert (stable): count[e]; the experts with pairs, ascending, are the
 *     active slots a = 0 .. n_active-1 with act_e[a] and act_off[a] (first sorted pair; act_off
 *     [n_active] = P); sorted[r] is the pair at sorted row r, pos[q] the sorted row of pair q.
 *  2. gate_up GEMV: one block per (row tile, active slot, K split). Each expert's weight rows are
 *     read once, each 16-byte load multiplied with all the expert's tokens (up to the template's
 *     NT at a time). A tile is MPK_DECODE_TILE rows: warp w holds gate columns c, c+1 and the
 *     matching up rows I+c, I+c+1 (mpk_decode_gu_row), so with one K split the epilogue writes
 *     a = silu(gate) * up directly; with several it writes fp32 partials that a small kernel sums
 *     in split order before silu * up.
 *  3. down GEMV over a, the same tiling with plain rows; fp32 partials per K split.
 *  4. out[t] = sum over slots j in order of w[t, j] * (sum over splits in order) (no atomics).
 * K splits (mpk_decode_split): when the grid has fewer blocks than the device holds, the
 * reduction is cut into chunks of whole warp steps (MPK_DECODE_WARP_K elements).
 */
#ifndef MPK_DECODE_H
#define MPK_DECODE_H

#include <stdint.h>

#include "mpk_hd.h"

enum {
    MPK_DECODE_MAX_T = 16,    /* tokens the decode backend takes */
    MPK_DECODE_WARP_K = 256,  /* reduction elements one warp covers per step: 32 lanes x 8 BF16 */
    MPK_DECODE_WARPS = 8,     /* warps per block */
    MPK_DECODE_ROWS = 4,      /* weight rows per warp */
    MPK_DECODE_TILE = MPK_DECODE_WARPS * MPK_DECODE_ROWS, /* weight rows per block */
    MPK_DECODE_MAX_SPLITS = 64,
};

/* Stable rank of pair q among the pairs routed to the same expert: #{q' < q : idx[q'] == idx[q]}. */
MPK_HD int mpk_decode_rank(const int32_t *idx, int q)
{
    int r = 0;
    for (int i = 0; i < q; i++)
        r += idx[i] == idx[q];
    return r;
}

/* Step 1 on one thread (the CPU; the GPU computes the same with a thread per expert and per
 * pair): count [E], act_e [min(P, E)], act_off [min(P, E) + 1], sorted [P], pos [P]. Returns
 * n_active. Every idx[q] must be in [0, E). */
MPK_HD int mpk_decode_group(const int32_t *idx, int P, int E, int *count, int *act_e, int *act_off, int *sorted,
                            int *pos)
{
    for (int e = 0; e < E; e++)
        count[e] = 0;
    for (int q = 0; q < P; q++)
        count[idx[q]]++;
    int n = 0, r = 0;
    for (int e = 0; e < E; e++)
        if (count[e]) {
            act_e[n] = e;
            act_off[n++] = r;
            r += count[e];
        }
    act_off[n] = r;
    for (int q = 0; q < P; q++) {
        int a = 0; /* the active slot of q's expert */
        while (act_e[a] != idx[q])
            a++;
        pos[q] = act_off[a] + mpk_decode_rank(idx, q);
        sorted[pos[q]] = q;
    }
    return n;
}

/* K split of a GEMV over K reduction elements when the grid has `blocks` blocks and the device
 * holds `target` at once: splits = ceil(target / blocks) (at least 1, at most
 * MPK_DECODE_MAX_SPLITS), each split a whole number of warp steps; *chunk gets the elements per
 * split (the last one may be shorter). Returns the number of splits (every split non-empty). */
MPK_HD int mpk_decode_split(int blocks, int K, int target, int *chunk)
{
    int steps = (K + MPK_DECODE_WARP_K - 1) / MPK_DECODE_WARP_K;
    int s = blocks >= target ? 1 : (target + blocks - 1) / blocks;
    if (s > MPK_DECODE_MAX_SPLITS)
        s = MPK_DECODE_MAX_SPLITS;
    if (s > steps)
        s = steps;
    if (s < 1)
        s = 1;
    int per = (steps + s - 1) / s; /* warp steps per split */
    *chunk = per * MPK_DECODE_WARP_K;
    return (K + *chunk - 1) / *chunk;
}

/* Weight row of gate_up [2I, H] that row r (0 .. MPK_DECODE_ROWS-1) of warp w in tile `tile`
 * reads: column c = tile * TILE/2 + 2w + (r & 1); gate row c for r < 2, up row I + c otherwise.
 * -1 when c >= I (past the last column). */
MPK_HD int mpk_decode_gu_row(int tile, int w, int r, int I)
{
    int c = tile * (MPK_DECODE_TILE / 2) + 2 * w + (r & 1);
    if (c >= I)
        return -1;
    return r < 2 ? c : I + c;
}

/* Grid of one decode layer: active slots bound (no host sync: min(P, E)), row tiles and K splits
 * of both GEMVs for a device holding `target` blocks at once, and the tokens per weight load. */
typedef struct mpk_decode_dims {
    int slots;                 /* min(P, E): blocks past n_active exit */
    int tiles1, splits1, chunk1; /* gate_up: ceil(I / (TILE/2)) tiles of paired columns, over H */
    int tiles2, splits2, chunk2; /* down: ceil(H / TILE) tiles, over I */
    int nt;                    /* tokens per weight load: the power of two >= min(T, MAX_T) */
} mpk_decode_dims;

MPK_HD void mpk_decode_plan_dims(int T, int k, int E, int H, int I, int target, mpk_decode_dims *d)
{
    int P = T * k;
    d->slots = P < E ? P : E;
    d->tiles1 = (I + MPK_DECODE_TILE / 2 - 1) / (MPK_DECODE_TILE / 2);
    d->splits1 = mpk_decode_split(d->tiles1 * d->slots, H, target, &d->chunk1);
    d->tiles2 = (H + MPK_DECODE_TILE - 1) / MPK_DECODE_TILE;
    d->splits2 = mpk_decode_split(d->tiles2 * d->slots, I, target, &d->chunk2);
    int t = T < MPK_DECODE_MAX_T ? T : MPK_DECODE_MAX_T;
    d->nt = 1;
    while (d->nt < t)
        d->nt *= 2;
}

#ifdef __CUDACC__
/* gpu/moe_decode.cu: the device workspace of one problem size (T, k, E, H, I; its grid sized
 * for the current device), opened outside the timed runs. MPK_E_OP (message naming the limit)
 * over MPK_DECODE_MAX_T tokens, H or I not a multiple of 8, or E > 1024. */
#include "mpk_gpu.h"
struct mpk_decode_ws;
mpk_status mpk_decode_open(const mpk_moe *p, mpk_decode_ws **ws, mpk_error *err);
void mpk_decode_close(mpk_decode_ws *ws); /* NULL-safe */
/* One layer: weights gu [E, 2I, H] and dn [E, H, I] BF16, x [T, H] BF16, idx/w [T, k] on the
 * device; out [T, H] fp32. Queues kernels on the default stream, no host sync. */
mpk_status mpk_decode_launch(const mpk_decode_ws *ws, const void *gu, const void *dn, const void *x,
                             const int32_t *idx, const float *w, float *out, mpk_error *err);
#endif
#endif
