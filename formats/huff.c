/* huff.c — the byte-plane Huffman coder of .mpkz (coding 2, formats/MPKZ.md): canonical codes
 * limited to MPK_HUFF_MAXLEN bits, the plane cut into four quarters coded as four bit streams
 * that one loop decodes together (four independent chains keep the CPU busy where one would wait
 * on each table load), a 2^11-entry table giving symbol and length per look-up.
 *
 * Why our own coder: libzstd's Huffman stage is not public, and a zstd frame of an exponent
 * plane spends its time on match finding that finds almost nothing (bench/results/
 * 2026-12-07-planes.md). Why the code must be complete (Kraft sum exactly 1): every 11-bit
 * window then decodes to some symbol, so the decoder has no invalid state to test for in its
 * loop; a corrupt stream shows as streams that do not end where the header says, or as a chunk
 * that fails its XXH3.
 *
 * Stream layout (n, the plane's bytes, is known to the reader):
 *   128 bytes  code lengths, 4 bits a symbol (symbol 2k in the low nibble of byte k), 0 = unused
 *   12 bytes   bytes of streams 0, 1, 2 (u32 LE); stream 3 takes the rest
 *   streams    stream s codes bytes [s q, min(n, (s + 1) q)) of the plane, q = ceil(n / 4):
 *              codes packed from bit 0 of each byte up, each code's first bit lowest, the last
 *              byte padded with zero bits */
#include "formats_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define L MPK_HUFF_MAXLEN
#define TABLE (1u << L)

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v; /* (little-endian hosts: x86-64, arm64) */
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Optimal code lengths of at most L bits for the used symbols (count > 0): package-merge
 * (Larmore and Hirschberg). Level d's list merges the used symbols, sorted by count, with the
 * packages (pairs) of level d + 1's list; the first 2m - 2 items of the top list are the chosen
 * ones, and a symbol's length is how many levels choose it: the first k - p leaves of a level
 * whose first k items hold p packages, and those packages are the first 2p items below. The
 * code is complete (Kraft sum exactly 1). A lone symbol gets a partner (the lowest unused byte)
 * so that it is complete too. */
static void code_lengths(const uint64_t *count, uint8_t *len)
{
    int sym[256], m = 0;
    uint64_t key[256]; /* count << 8 | symbol: sorted, by count, then symbol (deterministic) */
    memset(len, 0, 256);
    for (int s = 0; s < 256; s++)
        if (count[s])
            key[m++] = count[s] << 8 | (uint64_t)s;
    if (m <= 1) { /* one symbol (there is one: n > 0) and the lowest other byte, 1 bit each */
        int s0 = (int)(key[0] & 255);
        len[s0] = 1;
        len[s0 == 0 ? 1 : 0] = 1;
        return;
    }
    qsort(key, (size_t)m, sizeof *key, cmp_u64); /* (an insertion sort of 256 cost more than the rest) */
    for (int i = 0; i < m; i++)
        sym[i] = (int)(key[i] & 255);
    uint64_t w[L][512];
    uint8_t pkg[L][512]; /* 1: the item is a package */
    int n[L];
    for (int i = 0; i < m; i++)
        w[L - 1][i] = count[sym[i]], pkg[L - 1][i] = 0;
    n[L - 1] = m;
    for (int d = L - 2; d >= 0; d--) {
        int a = 0, b = 0, np = n[d + 1] / 2, k = 0;
        while (a < m || b < np) {
            uint64_t pw = b < np ? w[d + 1][2 * b] + w[d + 1][2 * b + 1] : 0;
            bool leaf = a < m && (b >= np || count[sym[a]] <= pw);
            w[d][k] = leaf ? count[sym[a++]] : pw;
            pkg[d][k++] = !leaf;
            b += !leaf;
        }
        n[d] = k;
    }
    for (int d = 0, k = 2 * m - 2; d < L && k > 0; d++) {
        int p = 0;
        for (int i = 0; i < k; i++)
            p += pkg[d][i];
        for (int i = 0; i < k - p; i++)
            len[sym[i]]++;
        k = 2 * p;
    }
}

/* Canonical codes of the lengths, bit-reversed for LSB-first packing. */
static void canonical(const uint8_t *len, uint16_t *code)
{
    uint32_t next = 0;
    for (int l = 1; l <= L; l++, next <<= 1)
        for (int s = 0; s < 256; s++)
            if (len[s] == l) {
                uint32_t c = next++, r = 0;
                for (int b = 0; b < l; b++)
                    r |= (c >> b & 1) << (l - 1 - b);
                code[s] = (uint16_t)r;
            }
}

/* Counts of each quarter: 4 tables, each byte of a 4-byte word into its own (an exponent plane
 * is mostly a few values, and increments of one counter wait on each other). */
static void histogram(const uint8_t *src, size_t n, uint32_t q, uint64_t (*cnt)[256])
{
    for (int s = 0; s < 4; s++) {
        size_t a = (size_t)s * q < n ? (size_t)s * q : n, b = a + q < n ? a + q : n;
        uint32_t c[4][256] = {{0}};
        size_t i = a;
        for (; i + 4 <= b; i += 4) {
            uint32_t w;
            memcpy(&w, src + i, 4);
            c[0][w & 255]++, c[1][w >> 8 & 255]++, c[2][w >> 16 & 255]++, c[3][w >> 24]++;
        }
        for (; i < b; i++)
            c[0][src[i]]++;
        for (int k = 0; k < 256; k++)
            cnt[s][k] = (uint64_t)c[0][k] + c[1][k] + c[2][k] + c[3][k];
    }
}

/* Fewer bytes than any prefix code of these counts can take (the entropy bound, less a margin
 * for the rounding of the sum), head included. */
static double least_bytes(const uint64_t *total, size_t n)
{
    double bits = 0;
    for (int k = 0; k < 256; k++)
        if (total[k])
            bits += (double)total[k] * log2((double)n / (double)total[k]);
    return MPK_HUFF_HEAD + bits / 8 * (1 - 1e-9) - 1;
}

size_t mpk_huff_plan(const uint8_t *src, size_t n, size_t below, mpk_huff *h)
{
    memset(h, 0, sizeof *h);
    if (n == 0 || n > UINT32_MAX)
        return 0;
    h->q = (uint32_t)((n + 3) / 4);
    histogram(src, n, h->q, h->count);
    uint64_t total[256];
    for (int k = 0; k < 256; k++) {
        total[k] = h->count[0][k] + h->count[1][k] + h->count[2][k] + h->count[3][k];
        h->top = total[k] > h->top ? total[k] : h->top;
    }
    if (below != SIZE_MAX && least_bytes(total, n) >= (double)below)
        return below;
    code_lengths(total, h->len);
    canonical(h->len, h->code);
    size_t size = MPK_HUFF_HEAD;
    for (int s = 0; s < 4; s++) {
        uint64_t bits = 0;
        for (int k = 0; k < 256; k++)
            bits += h->count[s][k] * h->len[k];
        h->bytes[s] = (bits + 7) / 8;
        size += h->bytes[s];
    }
    return size;
}

/* The encoder: four streams at once (four independent chains of shifts where one stream alone
 * waits on each code's length before placing the next), each code and its length in one entry
 * (code | length << 16). A step puts 4 codes (44 bits at most) onto the 7 bits or fewer left
 * over and stores 8 bytes at the stream's byte, which then moves on by up to 6; steps run while
 * every stream's store stays inside its own bytes, the rest of each stream goes a byte at a time,
 * so that no store runs into the next stream's first bytes, already written. */
#define PUT(S)                                                                                     \
    do {                                                                                           \
        for (int j_ = 0; j_ < 4; j_++) {                                                           \
            uint32_t x_ = t[s##S[j_]];                                                             \
            a##S |= (uint64_t)(x_ & 0xFFFF) << b##S;                                               \
            b##S += x_ >> 16;                                                                      \
        }                                                                                          \
        memcpy(o##S, &a##S, 8);                                                                    \
        o##S += b##S >> 3;                                                                         \
        a##S >>= b##S & ~7u;                                                                       \
        b##S &= 7;                                                                                 \
        s##S += 4;                                                                                 \
    } while (0)

/* The steps stream s can take unchecked: symbols left / 4, and stores (8 bytes, then on by up to
 * 6) that stay before its end. */
static size_t enc_steps(const uint8_t *src, const uint8_t *src_end, const uint8_t *o, const uint8_t *end)
{
    size_t by_src = (size_t)(src_end - src) / 4, by_out = end - o >= 8 ? (size_t)(end - o - 8) / 6 + 1 : 0;
    return by_src < by_out ? by_src : by_out;
}

/* Stream s's rest, a byte at a time; false when it does not end exactly at end. */
static bool enc_tail(const uint32_t *t, const uint8_t *src, const uint8_t *src_end, uint64_t acc, unsigned nb,
                     uint8_t *o, const uint8_t *end)
{
    for (; src < src_end; src++) {
        acc |= (uint64_t)(t[*src] & 0xFFFF) << nb;
        nb += t[*src] >> 16;
        for (; nb >= 8; nb -= 8, acc >>= 8) {
            if (o >= end)
                return false;
            *o++ = (uint8_t)acc;
        }
    }
    if (nb) {
        if (o >= end)
            return false;
        *o++ = (uint8_t)acc;
    }
    return o == end;
}

size_t mpk_huff_encode(const mpk_huff *h, const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
    size_t size = MPK_HUFF_HEAD;
    for (int s = 0; s < 4; s++)
        size += h->bytes[s];
    if (n == 0 || (n + 3) / 4 != h->q || cap < size + 8)
        return 0;
    for (int k = 0; k < 128; k++)
        dst[k] = (uint8_t)(h->len[2 * k] | h->len[2 * k + 1] << 4);
    for (int s = 0; s < 3; s++)
        for (int b = 0; b < 4; b++)
            dst[128 + 4 * s + b] = (uint8_t)(h->bytes[s] >> (8 * b));
    uint32_t t[256];
    for (int k = 0; k < 256; k++)
        t[k] = h->code[k] | (uint32_t)h->len[k] << 16;
    const uint8_t *sb[4], *se[4];
    uint8_t *ob[4], *oe[4];
    for (size_t s = 0, at = MPK_HUFF_HEAD; s < 4; at += h->bytes[s], s++) {
        size_t a = (size_t)s * h->q < n ? (size_t)s * h->q : n, b = a + h->q < n ? a + h->q : n;
        sb[s] = src + a, se[s] = src + b;
        ob[s] = dst + at, oe[s] = dst + at + h->bytes[s];
    }
    const uint8_t *s0 = sb[0], *s1 = sb[1], *s2 = sb[2], *s3 = sb[3];
    uint8_t *o0 = ob[0], *o1 = ob[1], *o2 = ob[2], *o3 = ob[3];
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    unsigned b0 = 0, b1 = 0, b2 = 0, b3 = 0;
    for (;;) {
        size_t k = enc_steps(s0, se[0], o0, oe[0]), k1 = enc_steps(s1, se[1], o1, oe[1]),
               k2 = enc_steps(s2, se[2], o2, oe[2]), k3 = enc_steps(s3, se[3], o3, oe[3]);
        k = k < k1 ? k : k1;
        k = k < k2 ? k : k2;
        k = k < k3 ? k : k3;
        if (!k)
            break;
        for (; k; k--) {
            PUT(0);
            PUT(1);
            PUT(2);
            PUT(3);
        }
    }
    bool ok = enc_tail(t, s0, se[0], a0, b0, o0, oe[0]) && enc_tail(t, s1, se[1], a1, b1, o1, oe[1]) &&
              enc_tail(t, s2, se[2], a2, b2, o2, oe[2]) && enc_tail(t, s3, se[3], a3, b3, o3, oe[3]);
    return ok ? size : 0; /* (not ok: h was not planned for these bytes) */
}

/* The decoding tables of a stored length header. one[i]: the symbol the L-bit window i starts
 * with, | its length << 8. multi[i]: up to 4 whole codes in window i (as many as fit in its L
 * bits): their bits in byte 0 (lowest, so that a shift by the entry itself consumes them: the
 * decoder's critical path is a load and a shift), their number in byte 1, their symbols in bytes
 * 2-5. Returns false when a length is over L or the code is not complete. */
static bool build_tables(const uint8_t *head, uint16_t *one, uint64_t *multi)
{
    uint8_t len[256];
    uint16_t code[256];
    uint32_t kraft = 0;
    for (int k = 0; k < 128; k++) {
        len[2 * k] = head[k] & 15;
        len[2 * k + 1] = head[k] >> 4;
    }
    for (int s = 0; s < 256; s++) {
        if (len[s] > L)
            return false;
        kraft += len[s] ? TABLE >> len[s] : 0;
    }
    if (kraft != TABLE)
        return false;
    canonical(len, code);
    for (int s = 0; s < 256; s++)
        for (uint32_t i = len[s] ? code[s] : TABLE; i < TABLE; i += 1u << len[s])
            one[i] = (uint16_t)(s | len[s] << 8);
    for (uint32_t i = 0; i < TABLE; i++) {
        uint64_t e = 0;
        unsigned used = 0, k = 0;
        for (; k < 4; k++) { /* a code counts when all its bits are inside the window */
            uint16_t o = one[(i >> used) & (TABLE - 1)];
            if (used + (o >> 8) > L)
                break;
            e |= (uint64_t)(o & 0xFF) << (16 + 8 * k);
            used += o >> 8;
        }
        multi[i] = e | used | (uint64_t)k << 8;
    }
    return true;
}

/* 8 bytes of src from byte p on, zero past its end zn. */
static uint64_t rd64_safe(const uint8_t *src, size_t zn, size_t p)
{
    if (p + 8 <= zn)
        return rd64(src + p);
    uint8_t b[8] = {0};
    if (p < zn)
        memcpy(b, src + p, zn - p);
    return rd64(b);
}

/* One step of stream S: a refill, 4 look-ups (44 bits at most), up to 16 symbols. Locals, not
 * arrays: byte stores may alias anything the compiler cannot see is a register. */
#define LOOKUP(S)                                                                                  \
    do {                                                                                           \
        uint64_t e_ = multi[v##S & (TABLE - 1)];                                                   \
        uint32_t b_ = (uint32_t)(e_ >> 16);                                                        \
        v##S >>= e_ & 63;                                                                          \
        p##S += e_ & 63;                                                                           \
        memcpy(o##S, &b_, 4);                                                                      \
        o##S += (e_ >> 8) & 0xFF;                                                                  \
    } while (0)
#define REFILL(S) v##S = rd64(src + (p##S >> 3)) >> (p##S & 7)
/* The fewer of k and the steps stream S has room for: 16 symbols out (and 4 bytes written past
 * them) and 6 bytes read on (44 bits, from any bit of a byte) from 8 readable bytes. */
#define STEPS(S, k) steps(e##S - o##S, p##S, zn, k)

static size_t steps(ptrdiff_t room, size_t p, size_t zn, size_t k)
{
    size_t out = room >= 20 ? (size_t)(room - 20) / 16 + 1 : 0, in = (p >> 3) + 8 <= zn ? (zn - 8 - (p >> 3)) / 6 + 1 : 0;
    out = out < in ? out : in;
    return out < k ? out : k;
}

/* The fast loop: while every stream has room for a step's 16 symbols (+ 4 written past them) and
 * 8 bytes to read (a stream may read on into the next one's bytes; where it should not have, its
 * end position gives it away). Leaves each stream's bit and output positions in pos and out. */
static void decode_fast(const uint8_t *src, size_t zn, const uint64_t *multi, size_t *pos, uint8_t **out,
                        uint8_t *const *end)
{
    size_t p0 = pos[0], p1 = pos[1], p2 = pos[2], p3 = pos[3];
    uint8_t *o0 = out[0], *o1 = out[1], *o2 = out[2], *o3 = out[3];
    uint8_t *const e0 = end[0], *const e1 = end[1], *const e2 = end[2], *const e3 = end[3];
    uint64_t v0, v1, v2, v3;
    for (size_t k; (k = STEPS(0, SIZE_MAX), k = STEPS(1, k), k = STEPS(2, k), k = STEPS(3, k)) > 0;)
        for (; k; k--) { /* k steps every stream can take unchecked */
            REFILL(0), REFILL(1), REFILL(2), REFILL(3);
            for (int j = 0; j < 4; j++) {
                LOOKUP(0);
                LOOKUP(1);
                LOOKUP(2);
                LOOKUP(3);
            }
        }
    pos[0] = p0, pos[1] = p1, pos[2] = p2, pos[3] = p3;
    out[0] = o0, out[1] = o1, out[2] = o2, out[3] = o3;
}

bool mpk_huff_decode(const uint8_t *src, size_t zn, uint8_t *dst, size_t n)
{
    uint16_t one[TABLE];
    uint64_t multi[TABLE];
    if (n == 0 || n > UINT32_MAX || zn < MPK_HUFF_HEAD || !build_tables(src, one, multi))
        return false;
    size_t q = (n + 3) / 4, start[5], pos[4];
    start[0] = MPK_HUFF_HEAD;
    for (int s = 0; s < 3; s++) {
        start[s + 1] = start[s] + rd32(src + 128 + 4 * s);
        if (start[s + 1] > zn)
            return false;
    }
    start[4] = zn;
    uint8_t *out[4], *end[4];
    for (int s = 0; s < 4; s++) {
        pos[s] = start[s] * 8;
        out[s] = dst + (s * q < n ? s * q : n);
        end[s] = dst + ((s + 1) * q < n ? (s + 1) * q : n);
    }
    decode_fast(src, zn, multi, pos, out, end);
    for (int s = 0; s < 4; s++) {
        while (out[s] < end[s]) {
            uint16_t e = one[(rd64_safe(src, zn, pos[s] >> 3) >> (pos[s] & 7)) & (TABLE - 1)];
            *out[s]++ = (uint8_t)e;
            pos[s] += e >> 8;
            if (pos[s] > start[s + 1] * 8) /* ran past its stream (also keeps pos bounded) */
                return false;
        }
        if ((pos[s] + 7) / 8 != start[s + 1]) /* each stream ends in its last byte */
            return false;
    }
    return true;
}
