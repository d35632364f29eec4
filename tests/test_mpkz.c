/* test_mpkz.c — the .mpkz plane codings (issue 51): byte planes (AVX2 against the scalar
 * reference), the Huffman coder (a stream worked out by hand, round trips of adversarial
 * planes, corrupt streams), and containers holding every coding (stored, zstd, Huffman) read
 * back, an old version 1 container kept in tests/data, and corrupt coding fields. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "formats_internal.h"
#include "mpk_ops.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- planes */

static void planes_match_scalar(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 1001, 4099};
    uint64_t seed = 11;
    for (int w = 1; w <= 8; w *= 2)
        for (int rot = 0; rot < 2; rot++)
            for (size_t t = 0; t < sizeof lens / sizeof *lens; t++) {
                size_t n = lens[t], b = n * (size_t)w;
                unsigned char *o = calloc(b + 1, 1), *p1 = calloc(b + 1, 1), *p2 = calloc(b + 1, 1), *back = calloc(b + 1, 1);
                tu_fill(o, b, &seed);
                mpk_planes_split(o, p1, n, w, rot);
                mpk_planes_split_scalar(o, p2, n, w, rot);
                assert_memory_equal(p1, p2, b + (b == 0));
                mpk_planes_join(p1, back, n, w, rot);
                assert_memory_equal(back, o, b + (b == 0));
                mpk_planes_join_scalar(p1, back, n, w, rot);
                assert_memory_equal(back, o, b + (b == 0));
                free(o), free(p1), free(p2), free(back);
            }
}

/* BF16 -1.0 (0xBF80) and 2.0 (0x4000), rotated left one bit: 0x7F01 and 0x8000. */
static void planes_by_hand(void **state)
{
    (void)state;
    const unsigned char bf[4] = {0x80, 0xBF, 0x00, 0x40}, want[4] = {0x01, 0x00, 0x7F, 0x80};
    unsigned char p[4], q[4];
    mpk_planes_split(bf, p, 2, 2, true);
    mpk_planes_split_scalar(bf, q, 2, 2, true);
    assert_memory_equal(p, want, 4);
    assert_memory_equal(q, want, 4);
}

/* ---------------------------------------------------------------- the Huffman coder */

/* "aaaabbcd": counts 4, 2, 1, 1 give lengths 1, 2, 3, 3 and canonical codes 0, 10, 110, 111.
 * Quarters "aa" "aa" "bb" "cd"; codes packed from bit 0 up, each code's first bit lowest:
 * 0x00, 0x00, b b = bits 1 0 1 0 = 0x05, c d = bits 1 1 0 1 1 1 = 0x3B. Lengths: 'a' (97) in
 * the high nibble of byte 48, 'b' (98) low and 'c' (99) high of byte 49, 'd' (100) low of 50. */
static void huff_by_hand(void **state)
{
    (void)state;
    uint8_t want[MPK_HUFF_HEAD + 4] = {0}, got[MPK_HUFF_HEAD + 4 + 8], back[8];
    want[48] = 0x10, want[49] = 0x32, want[50] = 0x03;
    want[128] = 1, want[132] = 1, want[136] = 1;
    want[140] = 0x00, want[141] = 0x00, want[142] = 0x05, want[143] = 0x3B;
    mpk_huff h;
    assert_int_equal(mpk_huff_plan((const uint8_t *)"aaaabbcd", 8, SIZE_MAX, &h), sizeof want);
    assert_int_equal(h.len['a'], 1);
    assert_int_equal(h.len['d'], 3);
    assert_int_equal(mpk_huff_encode(&h, (const uint8_t *)"aaaabbcd", 8, got, sizeof got), sizeof want);
    assert_memory_equal(got, want, sizeof want);
    assert_true(mpk_huff_decode(want, sizeof want, back, 8));
    assert_memory_equal(back, "aaaabbcd", 8);
    /* a buffer without the coder's 8 bytes of room: refused, nothing written past it */
    assert_int_equal(mpk_huff_encode(&h, (const uint8_t *)"aaaabbcd", 8, got, sizeof want + 7), 0);
}

typedef enum { ALL_ZERO, ALL_FF, RANDOM, MISSING_ONE, TWO, FIB, EXPONENTS, SHAPE_COUNT } shape;

static void make(shape s, uint8_t *p, size_t n, uint64_t *seed)
{
    static const uint32_t fib_end[] = {1, 2, 4, 7, 12, 20, 33, 54, 88, 143, 232, 376, 609, 986, 1596, 2583, 4180,
                                       6764, 10945, 17710, 28656}; /* cumulative Fibonacci counts */
    for (size_t i = 0; i < n; i++) {
        uint64_t r = mpk_rand(seed);
        switch (s) {
        case ALL_ZERO: p[i] = 0; break;
        case ALL_FF: p[i] = 0xFF; break;
        case RANDOM: p[i] = (uint8_t)r; break;
        case MISSING_ONE: p[i] = (uint8_t)r == 0x42 ? 0x43 : (uint8_t)r; break;
        case TWO: p[i] = r & 1 ? 7 : 200; break;
        case FIB: { /* symbol k with count Fib(k): unlimited Huffman codes 20 bits deep */
            uint32_t x = (uint32_t)(i % 28656), k = 0;
            while (fib_end[k] <= x)
                k++;
            p[i] = (uint8_t)(k * 3);
            break;
        }
        default: p[i] = (uint8_t)(120 - (int)log2((double)(r >> 11) / 9007199254740992.0 + 1e-300)); break;
        }
    }
}

static void huff_round_trips(void **state)
{
    (void)state;
    static const size_t lens[] = {1, 2, 3, 4, 5, 17, 1000, 28656, 65539};
    uint64_t seed = 3;
    for (int s = 0; s < SHAPE_COUNT; s++)
        for (size_t t = 0; t < sizeof lens / sizeof *lens; t++) {
            size_t n = lens[t], cap = 2 * n + MPK_HUFF_HEAD + 8;
            uint8_t *p = malloc(n), *z = malloc(cap), *back = malloc(n);
            make((shape)s, p, n, &seed);
            mpk_huff h;
            size_t zl = mpk_huff_plan(p, n, SIZE_MAX, &h);
            uint32_t kraft = 0, max = 0;
            for (int k = 0; k < 256; k++) {
                kraft += h.len[k] ? 2048u >> h.len[k] : 0;
                max = h.len[k] > max ? h.len[k] : max;
            }
            assert_int_equal(kraft, 2048); /* complete */
            assert_true(max <= MPK_HUFF_MAXLEN);
            if (s == FIB && n >= 28656)
                assert_int_equal(max, MPK_HUFF_MAXLEN); /* the limit met */
            if (s == ALL_ZERO || s == ALL_FF || s == TWO)
                assert_int_equal(max, 1);
            if (s == MISSING_ONE && n > 1000)
                assert_int_equal(h.len[0x42], 0);
            assert_int_equal(mpk_huff_encode(&h, p, n, z, cap), zl);
            memset(back, 0xA5, n);
            assert_true(mpk_huff_decode(z, zl, back, n));
            assert_memory_equal(back, p, n);
            free(p), free(z), free(back);
        }
}

/* Quarters of very different entropy (zeros, random bytes, two values, exponent-like): the
 * four streams, encoded together, reach their ends with very different byte counts; each
 * must end exactly in its own bytes (a store past them would clobber the next stream's first
 * bytes, written earlier, and the decode would differ). */
static void huff_uneven_streams(void **state)
{
    (void)state;
    static const size_t lens[] = {8, 61, 4000, 65539, 262147};
    static const shape order[][4] = {{ALL_ZERO, RANDOM, TWO, EXPONENTS}, {RANDOM, ALL_ZERO, EXPONENTS, ALL_FF},
                                     {FIB, RANDOM, ALL_ZERO, RANDOM}};
    uint64_t seed = 11;
    for (size_t o = 0; o < sizeof order / sizeof *order; o++)
        for (size_t t = 0; t < sizeof lens / sizeof *lens; t++) {
            size_t n = lens[t], q = (n + 3) / 4, cap = 2 * n + MPK_HUFF_HEAD + 8;
            uint8_t *p = malloc(n), *z = malloc(cap), *back = malloc(n);
            for (int k = 0; k < 4; k++) {
                size_t a = k * q < n ? k * q : n, b = a + q < n ? a + q : n;
                make(order[o][k], p + a, b - a, &seed);
            }
            mpk_huff h;
            size_t zl = mpk_huff_plan(p, n, SIZE_MAX, &h);
            memset(z, 0x5A, cap);
            assert_int_equal(mpk_huff_encode(&h, p, n, z, cap), zl);
            for (size_t i = zl; i < cap; i++) /* nothing stored past the stream's last byte */
                assert_int_equal(z[i], 0x5A);
            assert_true(mpk_huff_decode(z, zl, back, n));
            assert_memory_equal(back, p, n);
            free(p), free(z), free(back);
        }
}

/* `below`: the entropy bound decides without building a code when no code can go under it.
 * 65536 random bytes: about 8 bits each, so no code takes fewer than ~n bytes; two values
 * equally often: exactly 1 bit each, 140 + n / 8 bytes, which is the bound itself. */
static void huff_bound(void **state)
{
    (void)state;
    size_t n = 65536;
    uint8_t *p = malloc(n);
    uint64_t seed = 5;
    make(RANDOM, p, n, &seed);
    mpk_huff h;
    assert_int_equal(mpk_huff_plan(p, n, n - n / 32, &h), n - n / 32); /* no code built */
    for (int k = 0; k < 256; k++)
        assert_int_equal(h.len[k], 0);
    assert_true(h.top > 0 && h.top < n / 64); /* the counts are there */
    size_t full = mpk_huff_plan(p, n, SIZE_MAX, &h);
    assert_true(full >= n - n / 32); /* what the bound said */
    for (size_t i = 0; i < n; i++)
        p[i] = i & 1 ? 7 : 200;
    assert_int_equal(mpk_huff_plan(p, n, SIZE_MAX, &h), MPK_HUFF_HEAD + n / 8);
    assert_int_equal(mpk_huff_plan(p, n, MPK_HUFF_HEAD + n / 8 + 1, &h), MPK_HUFF_HEAD + n / 8); /* built */
    assert_int_equal(h.len[7], 1);
    /* (the bound keeps a byte of margin for rounding: at the exact size it still builds) */
    assert_int_equal(mpk_huff_plan(p, n, MPK_HUFF_HEAD + n / 8 - 2, &h), MPK_HUFF_HEAD + n / 8 - 2);
    assert_int_equal(h.len[7], 0); /* not built */
    free(p);
}

static void huff_corrupt(void **state)
{
    (void)state;
    size_t n = 10000, cap = 2 * n + 200;
    uint8_t *p = malloc(n), *z = malloc(cap), *bad = malloc(cap), *back = malloc(n);
    uint64_t seed = 5;
    make(EXPONENTS, p, n, &seed);
    mpk_huff h;
    size_t zl = mpk_huff_plan(p, n, SIZE_MAX, &h);
    assert_int_equal(mpk_huff_encode(&h, p, n, z, cap), zl);
    /* cut short (each by copying into a buffer of exactly that size: ASan sees a read past it) */
    static const size_t cut[] = {0, 1, 139, 140, 141, 500};
    for (size_t k = 0; k < sizeof cut / sizeof *cut; k++) {
        size_t m = cut[k] < 200 ? cut[k] : zl - cut[k];
        uint8_t *c = malloc(m + 1);
        memcpy(c, z, m);
        assert_false(mpk_huff_decode(c, m, back, n));
        free(c);
    }
    uint8_t *longer = malloc(zl + 1); /* a byte too many */
    memcpy(longer, z, zl), longer[zl] = 0;
    assert_false(mpk_huff_decode(longer, zl + 1, back, n));
    free(longer);
    int used = -1;
    for (int k = 0; k < 256 && used < 0; k++)
        used = h.len[k] ? k : -1;
    for (int c = 0; c < 5; c++) {
        memcpy(bad, z, zl);
        uint8_t *nib = &bad[used / 2];
        int sh = used % 2 ? 4 : 0;
        if (c == 0) /* a length over 11 */
            *nib = (uint8_t)((*nib & ~(15 << sh)) | 12 << sh);
        else if (c == 1) /* a used symbol dropped: the code is incomplete */
            *nib = (uint8_t)(*nib & ~(15 << sh));
        else if (c == 2) /* a code one bit shorter: over-full */
            *nib = (uint8_t)((*nib & ~(15 << sh)) | (h.len[used] - 1) << sh);
        else if (c == 3) /* stream 0 said to end past the input */
            bad[128] = bad[129] = bad[130] = bad[131] = 0xFF;
        else /* stream 0 said one byte longer: stream 0 ends early, stream 3 is short */
            bad[128]++;
        if (c == 2 && h.len[used] == 1)
            continue;
        assert_false(mpk_huff_decode(bad, zl, back, n));
    }
    assert_false(mpk_huff_decode(z, zl, back, 0));
    for (int f = 0; f < 400; f++) { /* flipped bits: refused or decoded, never out of bounds */
        memcpy(bad, z, zl);
        uint64_t r = mpk_rand(&seed);
        bad[MPK_HUFF_HEAD + r % (zl - MPK_HUFF_HEAD)] ^= (uint8_t)(1u << (r >> 32) % 8);
        (void)mpk_huff_decode(bad, zl, back, n);
    }
    free(p), free(z), free(bad), free(back);
}

/* ---------------------------------------------------------------- containers */

static const char *data_dir(void)
{
    const char *d = getenv("MPK_TESTDATA");
    return d ? d : "tests/data";
}

static bool same_file(const char *a, const char *b)
{
    return tu_sh("cmp -s '%s' '%s'", a, b) == 0;
}

static void reads_version_1(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk-test-mpkz-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *out = tu_fmt("%s/back.safetensors", dir);
    mpk_error err = {0};
    assert_int_equal(mpk_mpkz_decompress(tu_fmt("%s/v1-bf16.safetensors.mpkz", data_dir()), out, 1, NULL, &err), MPK_OK);
    assert_true(same_file(out, tu_fmt("%s/v1-bf16.safetensors", data_dir())));
    tu_rmrf(dir);
}

#define NT 7
#define EL 40000 /* elements a tensor (not a multiple of 32 or 8: the AVX2 code's tails) */

/* A shard with one tensor per coding case (data in tensor order), and what each chunk of it
 * should hold: plane k Huffman-coded (huff bit k), stored (raw bit k), else zstd. */
static const struct {
    const char *name;
    mpk_dtype dt;
    uint8_t huff, raw;
} cases[NT] = {
    {"bf16.normal", MPK_DTYPE_BF16, 2, 1},  /* exponents Huffman, sign + mantissa stored */
    {"bf16.zero", MPK_DTYPE_BF16, 0, 0},    /* one value: zstd */
    {"bf16.random", MPK_DTYPE_BF16, 0, 3},  /* nothing pays: stored */
    {"f32.normal", MPK_DTYPE_F32, 8, 7},    /* the exponent plane Huffman */
    {"i32.count", MPK_DTYPE_I32, 0, 0},     /* an integer tensor: zstd */
    {"f8.normal", MPK_DTYPE_F8_E4M3, 0, 0}, /* FP8 bytes: zstd */
    {"bf16.tiny", MPK_DTYPE_BF16, 0, 3},    /* 16 elements: zstd or stored */
};

static void write_cases(const char *path, uint64_t seed)
{
    mpk_tensor_info t[NT];
    const void *data[NT];
    for (int i = 0; i < NT; i++) {
        int64_t n = i == 6 ? 16 : EL;
        size_t es = mpk_dtype_size(cases[i].dt);
        unsigned char *d = calloc((size_t)n, es);
        for (int64_t k = 0; k < n; k++) {
            float f = (float)(0.02 * sqrt(-2 * log(((double)(mpk_rand(&seed) >> 11) + 1) / 9007199254740993.0)) *
                              cos(2 * M_PI * (double)(mpk_rand(&seed) >> 11) / 9007199254740992.0));
            uint16_t b = mpk_f32_to_bf16(f);
            int32_t c = (int32_t)k;
            if (i == 0 || i == 6)
                memcpy(d + 2 * k, &b, 2);
            else if (i == 2)
                tu_fill(d + 2 * k, 2, &seed);
            else if (i == 3)
                memcpy(d + 4 * k, &f, 4);
            else if (i == 4)
                memcpy(d + 4 * k, &c, 4);
            else if (i == 5)
                d[k] = mpk_f32_to_e4m3(f * 4000);
        }
        t[i] = (mpk_tensor_info){.name = cases[i].name, .dtype = cases[i].dt, .ndim = 1, .shape = {n}};
        data[i] = d;
    }
    mpk_error err = {0};
    assert_int_equal(mpk_st_write_file(path, t, data, NT, NULL, 0, &err), MPK_OK);
    for (int i = 0; i < NT; i++)
        free((void *)data[i]);
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void every_coding(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk-test-mpkz-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *src = tu_fmt("%s/m.safetensors", dir), *z = tu_fmt("%s/m.safetensors.mpkz", dir),
               *back = tu_fmt("%s/back.safetensors", dir);
    write_cases(src, 9);
    mpk_error err = {0};
    assert_int_equal(mpk_mpkz_compress(src, z, 1, 2, 32 << 10, NULL, NULL, &err), MPK_OK);
    mpk_st_header *h = NULL;
    assert_int_equal(mpk_st_read_header(src, &h, &err), MPK_OK);
    size_t len;
    unsigned char *c = (unsigned char *)tu_slurp(z);
    assert_non_null(c);
    assert_int_equal(c[4], 2); /* Huffman planes: version 2 */
    uint64_t H = le(c + 8, 8), K = le(c + 32, 8);
    len = 0;
    for (uint64_t i = 0; i < K; i++) {
        const unsigned char *e = c + 40 + H + 64 * i;
        uint64_t off = le(e, 8);
        size_t ti = 0;
        int t = 0;
        while (!(off >= h->tensors[ti].begin && off < h->tensors[ti].end))
            ti++;
        while (strcmp(h->tensors[ti].name, cases[t].name) != 0)
            t++;
        if (e[15] != cases[t].huff || (e[13] & ~cases[t].raw) || (t != 6 && e[13] != cases[t].raw))
            fail_msg("%s chunk at %llu: huff %u raw %u, want %u %u", cases[t].name, (unsigned long long)off, e[15],
                     e[13], cases[t].huff, cases[t].raw);
        len++;
    }
    assert_true(len > NT);
    assert_int_equal(mpk_mpkz_decompress(z, back, 2, NULL, &err), MPK_OK);
    assert_true(same_file(src, back));
    /* random access across a chunk boundary inside the Huffman-coded tensor */
    FILE *f = fopen(z, "rb");
    fseek(f, 0, SEEK_END);
    mpk_mpkz *mz = NULL;
    mpk_st_header *zh = NULL;
    assert_int_equal(mpk_mpkz_open(fileno(f), z, (uint64_t)ftell(f), &mz, &zh, &err), MPK_OK);
    unsigned char got[1000], *orig = (unsigned char *)tu_slurp(src);
    assert_int_equal(mpk_mpkz_read(mz, (32 << 10) - 333, sizeof got, got, &err), MPK_OK);
    assert_memory_equal(got, orig + h->data_start + (32 << 10) - 333, sizeof got);
    mpk_mpkz_close(mz);
    mpk_st_header_free(zh);
    fclose(f);
    free(orig);
    free(c);
    mpk_st_header_free(h);
    tu_rmrf(dir);
}

/* A container with one field changed (bytes [at, at + count): v, then zeros): refused with
 * MPK_E_CONTAINER and want in the message, nothing left at the output. */
static void refused_n(const char *dir, const unsigned char *c, size_t n, size_t at, unsigned char v, size_t count,
                      const char *want)
{
    const char *z = tu_fmt("%s/bad.safetensors.mpkz", dir), *out = tu_fmt("%s/bad.out", dir);
    unsigned char *b = malloc(n);
    memcpy(b, c, n);
    memset(b + at, 0, count);
    b[at] = v;
    FILE *f = fopen(z, "wb");
    assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
    mpk_error err = {0};
    assert_int_equal(mpk_mpkz_decompress(z, out, 1, NULL, &err), MPK_E_CONTAINER);
    if (!strstr(err.msg, want))
        fail_msg("byte %zu = %u: \"%s\", want \"%s\"", at, v, err.msg, want);
    assert_int_not_equal(access(out, F_OK), 0);
    free(b);
}

static void refused(const char *dir, const unsigned char *c, size_t n, size_t at, unsigned char v, const char *want)
{
    refused_n(dir, c, n, at, v, 1, want);
}

static void corrupt_codings(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk-test-mpkz-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *src = tu_fmt("%s/m.safetensors", dir), *z = tu_fmt("%s/m.safetensors.mpkz", dir);
    write_cases(src, 9);
    mpk_error err = {0};
    assert_int_equal(mpk_mpkz_compress(src, z, 1, 1, 32 << 10, NULL, NULL, &err), MPK_OK);
    unsigned char *c = (unsigned char *)tu_slurp(z);
    FILE *f = fopen(z, "rb");
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fclose(f);
    uint64_t H = le(c + 8, 8);
    size_t e0 = 40 + H; /* the first chunk with plane 1 Huffman-coded: bf16.normal's */
    while (c[e0 + 15] != 2)
        e0 += 64;
    size_t p1 = (size_t)le(c + e0 + 16, 8) + le(c + e0 + 24, 4);
    refused(dir, c, n, 4, 1, "disagrees with the header");            /* Huffman planes in version 1 */
    refused(dir, c, n, 4, 3, "container version 3");                  /* a version not known */
    refused(dir, c, n, e0 + 15, 3, "disagrees with the header");      /* plane 0 both stored and Huffman */
    refused(dir, c, n, e0 + 15, 6, "disagrees with the header");      /* plane 2 of a 2-plane chunk */
    refused_n(dir, c, n, e0 + 28, 100, 4, "disagrees with the header"); /* a Huffman plane under 140 bytes */
    refused(dir, c, n, p1 + 60, 0xFF, "Huffman stream is corrupt");   /* lengths of 15 bits */
    refused(dir, c, n, p1 + 128, (unsigned char)(c[p1 + 128] + 1), "Huffman stream is corrupt"); /* stream sizes */
    refused(dir, c, n, p1 + 400, (unsigned char)(c[p1 + 400] ^ 0x10), "tensor 'bf16.normal': chunk"); /* a bit */
    refused(dir, c, n, e0 + 15, 0, "frame does not declare");        /* the Huffman plane read as zstd */
    free(c);
    tu_rmrf(dir);
}

/* Reads of part of a chunk keep the chunk decoded for the thread's next read: a read of another
 * container (opened after the first was closed, perhaps at the same address) must not get it. */
static void read_cache_keyed(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk-test-mpkz-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *src = tu_fmt("%s/m.safetensors", dir), *z = tu_fmt("%s/m.safetensors.mpkz", dir);
    for (uint64_t seed = 1; seed <= 2; seed++) {
        unlink(src), unlink(z);
        write_cases(src, seed);
        mpk_error err = {0};
        assert_int_equal(mpk_mpkz_compress(src, z, 1, 1, 32 << 10, NULL, NULL, &err), MPK_OK);
        unsigned char *orig = (unsigned char *)tu_slurp(src), got[3000];
        FILE *f = fopen(z, "rb");
        fseek(f, 0, SEEK_END);
        mpk_mpkz *mz = NULL;
        mpk_st_header *h = NULL;
        assert_int_equal(mpk_mpkz_open(fileno(f), z, (uint64_t)ftell(f), &mz, &h, &err), MPK_OK);
        /* in part, again, across two chunks, a whole one, in part (kept for the next container) */
        static const uint64_t at[] = {100, 1000, 100, 32768 - 1500, 0, 200};
        for (size_t k = 0; k < sizeof at / sizeof *at; k++) {
            size_t n = k == 4 ? 32768 : sizeof got;
            unsigned char *b = malloc(n);
            assert_int_equal(mpk_mpkz_read(mz, at[k], n, b, &err), MPK_OK);
            assert_memory_equal(b, orig + h->data_start + at[k], n);
            free(b);
        }
        mpk_mpkz_close(mz);
        mpk_st_header_free(h);
        fclose(f);
        free(orig);
    }
    tu_rmrf(dir);
}

int main(int argc, char **argv)
{
    tu_tuning_args(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(planes_match_scalar), cmocka_unit_test(planes_by_hand),
        cmocka_unit_test(huff_by_hand),        cmocka_unit_test(huff_round_trips),
        cmocka_unit_test(huff_corrupt),        cmocka_unit_test(huff_uneven_streams),
        cmocka_unit_test(huff_bound),        cmocka_unit_test(reads_version_1),
        cmocka_unit_test(every_coding),        cmocka_unit_test(corrupt_codings),
        cmocka_unit_test(read_cache_keyed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
