/* formats_internal.h — helpers shared inside formats/ and with its tests. */
#ifndef MPK_FORMATS_INTERNAL_H
#define MPK_FORMATS_INTERNAL_H

#include "mpk_formats.h"

/* True when s[0..n) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF); else
 * *bad_at (if non-NULL) is the offset of the first bad sequence. */
bool mpk_utf8_valid(const unsigned char *s, size_t n, size_t *bad_at);

/* files.c: the identity of the file st describes (device, inode, size, mtime, ctime), as
 * mpk_shard.id holds it. Shared by ckpt.c (when a shard is opened) and
 * mpk_ckpt_check_unchanged (was ckpt.c's static file_id). */
struct stat;
void mpk_file_id_of(const struct stat *st, mpk_file_id *id);

/* Reads the header of an open file; *file_size_out (optional) gets its size. */
mpk_status mpk_st_read_header_fd(int fd, const char *path, mpk_st_header **out,
                                 uint64_t *file_size_out, mpk_error *err);

/* mpkz.c, for mpkz_read.c: a chunk's table entry (formats/MPKZ.md), a buffer kept from chunk
 * to chunk (mpk_gbuf_get: p grown to hold n bytes when it holds fewer, with room to spare; NULL
 * when out of memory), the container's header and table read and checked (mpk_mpkz_load: *h,
 * *hdr and *c owned by the caller), and chunk i decoded into orig through planes (both its
 * length), its frames read into zin, checked against its XXH3-64 (mpk_mpkz_decode; dc NULL:
 * one is made). */
typedef struct mpk_zchunk {
    uint64_t data_off, file_off, hash;
    uint32_t len, zlen[8];
    uint8_t width, raw, xform;   /* xform 1: each element rotated left by one bit first */
    uint8_t huff;                /* bit k: plane k Huffman-coded (huff.c; version 2) */
    size_t tensor;
} mpk_zchunk;
typedef struct mpk_gbuf {
    char *p;
    size_t cap;
} mpk_gbuf;
char *mpk_gbuf_get(mpk_gbuf *b, size_t n);
mpk_status mpk_mpkz_load(int fd, const char *path, uint64_t fsize, mpk_st_header **h, char **hdr, mpk_zchunk **c,
                         size_t *n, mpk_error *err);
struct ZSTD_DCtx_s;
mpk_status mpk_mpkz_decode(int fd, const char *path, const mpk_st_header *h, const mpk_zchunk *c, size_t i, char *orig,
                           char *planes, mpk_gbuf *zin, struct ZSTD_DCtx_s *dc, mpk_error *e);

/* huff.c: the byte-plane Huffman coder of .mpkz (coding 2; stream layout at the top of huff.c).
 * mpk_huff_plan counts src[0..n) (n at most 4 GiB - 1) and builds the code, returning the
 * exact size of its encoding (0 when n is 0 or too large); h->top is the commonest byte's count.
 * When no prefix code could take fewer than `below` bytes (the entropy bound of the counts), it
 * returns `below` without building a code (h then holds the counts only; SIZE_MAX: always build).
 * mpk_huff_encode writes it to dst, returning that size, or 0 when cap is short of it + 8 (the
 * coder writes 8 bytes at a time). mpk_huff_decode decodes exactly n bytes into dst from
 * src[0..zn), reading nothing outside src and writing nothing outside dst[0..n); false when the
 * stream is not one the encoder could have written for n bytes (bad lengths, an incomplete code,
 * streams that do not end where their sizes say). All thread-safe. */
#define MPK_HUFF_MAXLEN 11
#define MPK_HUFF_HEAD 140
typedef struct mpk_huff {
    uint64_t count[4][256]; /* per quarter */
    uint64_t top, bytes[4];
    uint32_t q;             /* bytes a quarter: ceil(n / 4) */
    uint8_t len[256];
    uint16_t code[256];
} mpk_huff;
size_t mpk_huff_plan(const uint8_t *src, size_t n, size_t below, mpk_huff *h);
size_t mpk_huff_encode(const mpk_huff *h, const uint8_t *src, size_t n, uint8_t *dst, size_t cap);
bool mpk_huff_decode(const uint8_t *src, size_t zn, uint8_t *dst, size_t n);

/* planes.c: a chunk's elements (n of w bytes, w 1, 2, 4 or 8) cut into byte planes
 * (planes[k n + i] = byte k of element i, after rotating each element left by one bit when rot)
 * and joined back. AVX2 code where the CPU has it, chosen once; the _scalar forms are the
 * reference the tests hold it to. */
void mpk_planes_split(const void *orig, void *planes, size_t n, int w, bool rot);
void mpk_planes_join(const void *planes, void *orig, size_t n, int w, bool rot);
/* The same from planes wherever they lie (planes[k]: plane k's n bytes). */
void mpk_planes_join_at(const void *const *planes, void *orig, size_t n, int w, bool rot);
void mpk_planes_split_scalar(const void *orig, void *planes, size_t n, int w, bool rot);
void mpk_planes_join_scalar(const void *planes, void *orig, size_t n, int w, bool rot);
/* Which code mpk_planes_split/join run: "avx2" or "scalar". */
const char *mpk_planes_impl(void);

/* xxh_avx2.c: XXH3 with AVX2 kernels (only on a CPU with AVX2; hash.c decides). */
void *mpk_xxh_avx2_new(void);
void mpk_xxh_avx2_update(void *s, const void *p, size_t n);
mpk_hash128 mpk_xxh_avx2_digest(const void *s);
void mpk_xxh_avx2_free(void *s);
uint64_t mpk_xxh_avx2_64(const void *p, size_t n);

#endif
