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


/* xxh_avx2.c: XXH3 with AVX2 kernels (only on a CPU with AVX2; hash.c decides). */
void *mpk_xxh_avx2_new(void);
void mpk_xxh_avx2_update(void *s, const void *p, size_t n);
mpk_hash128 mpk_xxh_avx2_digest(const void *s);
void mpk_xxh_avx2_free(void *s);
uint64_t mpk_xxh_avx2_64(const void *p, size_t n);

#endif
