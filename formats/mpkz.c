/* mpkz.c — the compressed shard container (format: formats/MPKZ.md): a safetensors file's
 * header verbatim, then each tensor's bytes in chunks, each chunk split into byte planes by
 * element width, each plane one zstd frame (or stored), with a table and an XXH3-64 per chunk.
 * Chunks are compressed and decompressed by up to `threads` threads, a batch at a time. */
#define _GNU_SOURCE
#include "formats_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#define FIXED 40
#define ENTRY 64
#define MAX_CHUNK (64u << 20)

typedef mpk_zchunk chunk;
typedef mpk_gbuf gbuf;

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_entry(unsigned char *e, const chunk *c)
{
    memset(e, 0, ENTRY);
    put64(e, c->data_off);
    put64(e + 8, c->len); /* low 4 bytes: len; width and raw overwrite the next two */
    e[12] = c->width;
    e[13] = c->raw;
    e[14] = c->xform;
    e[15] = c->huff;
    put64(e + 16, c->file_off);
    for (int k = 0; k < 8; k++)
        for (int b = 0; b < 4; b++)
            e[24 + 4 * k + b] = (unsigned char)(c->zlen[k] >> (8 * b));
    put64(e + 56, c->hash);
}

static void get_entry(const unsigned char *e, chunk *c)
{
    c->data_off = get64(e);
    c->len = (uint32_t)(get64(e + 8) & 0xFFFFFFFFu);
    c->width = e[12];
    c->raw = e[13];
    c->xform = e[14];
    c->huff = e[15];
    c->file_off = get64(e + 16);
    for (int k = 0; k < 8; k++)
        c->zlen[k] = (uint32_t)e[24 + 4 * k] | (uint32_t)e[25 + 4 * k] << 8 | (uint32_t)e[26 + 4 * k] << 16 |
                     (uint32_t)e[27 + 4 * k] << 24;
    c->hash = get64(e + 56);
}

/* Planes of a tensor's elements: its element size when that is 2, 4 or 8 bytes, else 1. */
static uint8_t plane_width(mpk_dtype d)
{
    size_t s = mpk_dtype_size(d);
    return s == 2 || s == 4 || s == 8 ? (uint8_t)s : 1;
}

/* IEEE-style floats of 2, 4 or 8 bytes are rotated left by one bit before the planes are cut:
 * the sign moves to the bottom, so the top byte holds exponent bits only (for BF16 and F32 the
 * whole exponent), which compress well, and the mantissa bits, nearly random, sit together. */
static uint8_t rotates(mpk_dtype d)
{
    return d == MPK_DTYPE_BF16 || d == MPK_DTYPE_F16 || d == MPK_DTYPE_F32 || d == MPK_DTYPE_F64;
}

/* The chunks of h's data section: each tensor cut into pieces of csize bytes. */
static mpk_status plan_chunks(const mpk_st_header *h, uint64_t csize, chunk **out, size_t *n, const char *path,
                              mpk_error *err)
{
    size_t k = 0, cap = 0;
    chunk *c = NULL;
    for (size_t t = 0; t < h->n_tensors; t++) {
        const mpk_tensor_info *ti = &h->tensors[t];
        for (uint64_t off = 0; off < ti->end - ti->begin; off += csize) {
            chunk *g = mpk_grow(c, k, &cap, sizeof *c, 64);
            if (!g) {
                free(c);
                MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
            }
            c = g;
            uint64_t rest = ti->end - ti->begin - off;
            c[k++] = (chunk){.data_off = ti->begin + off, .len = (uint32_t)(rest < csize ? rest : csize),
                             .width = plane_width(ti->dtype), .xform = rotates(ti->dtype), .tensor = t};
        }
    }
    *out = c;
    *n = k;
    return MPK_OK;
}

/* ---------------------------------------------------------------- one chunk, either way */

/* (Buffers kept from chunk to chunk: allocating and faulting in megabytes a chunk took more CPU
 * than coding them, issue 51; before, 4 KiB chunks made every batch allocate and release
 * 128 MiB a thread, which MALLOC_PERTURB_ then wrote twice.) */
char *mpk_gbuf_get(mpk_gbuf *b, size_t n)
{
    if (n > b->cap) { /* with room to spare: chunks' frames differ in size by a little */
        free(b->p);
        b->cap = 0;
        if (!(b->p = mpk_alloc(n + n / 8)))
            return NULL;
        b->cap = n + n / 8;
    }
    return b->p;
}

typedef struct zrun {
    int in_fd, out_fd;
    const char *in_path;         /* the file read (for messages): the shard, or the container */
    const char *out_path;        /* the file written: the container, or the shard */
    const mpk_st_header *h;
    chunk *c;
    size_t lo, hi;               /* the batch */
    atomic_size_t next;
    atomic_int workers;          /* workers started in the batch: the next one's index */
    gbuf work[64][3];            /* per worker index: the chunk, its planes, its frames read */
    int level;
    bool compress;
    gbuf *zbuf;                  /* compress: per batch slot, the planes written one after another */
    mpk_meter *meter;            /* input bytes done, or NULL */
    atomic_int failed;
    mpk_error err;
    pthread_mutex_t lock;
} zrun;

static void zfail(zrun *r, const mpk_error *e)
{
    pthread_mutex_lock(&r->lock);
    if (!atomic_exchange(&r->failed, 1))
        r->err = *e;
    pthread_mutex_unlock(&r->lock);
}

#define SAMPLE ((size_t)64 << 10)
#define HUFF_MIN ((size_t)4 << 10) /* smaller planes (norms, biases) go to zstd: Huffman's table is 140 bytes */

/* Plane k of chunk c (pl bytes) coded into z (room for cap bytes): returns its stored bytes and
 * marks it in c->raw or c->huff. The planes of floats (c->xform: the exponents, the mantissa
 * bits) go to the Huffman coder (huff.c) when a sample of SAMPLE bytes shrinks by 3% there and
 * is not nearly all one byte value (zstd codes runs of one value in far less than Huffman's one
 * bit a byte: all-zero or all-one tensors), else they are stored: zstd on them spends its time
 * looking for matches that are not there (bench/results/2026-12-07-planes.md). Every other plane
 * goes to zstd as in version 1, stored when a sample does not shrink by 3% there. */
static size_t code_plane(chunk *c, int k, const char *plane, size_t pl, char *z, size_t cap, ZSTD_CCtx *cc, int level)
{
    const uint8_t *p = (const uint8_t *)plane;
    size_t sn = pl < SAMPLE ? pl : SAMPLE, zl;
    mpk_huff h;
    if (c->xform && pl >= HUFF_MIN && (zl = mpk_huff_plan(p, sn, sn - sn / 32, &h)) && h.top <= sn - sn / 8) {
        if (zl < sn - sn / 32 && (sn == pl || (zl = mpk_huff_plan(p, pl, pl, &h)) < pl) && zl < pl &&
            mpk_huff_encode(&h, p, pl, (uint8_t *)z, cap) == zl) {
            c->huff |= (uint8_t)(1u << k);
            return zl;
        }
        zl = pl;
    } else {
        /* (4 samples' worth or less: compressed whole) */
        zl = pl > 4 * SAMPLE ? ZSTD_compressCCtx(cc, z, cap, plane, SAMPLE, level) : 0;
        if (!ZSTD_isError(zl) && zl < SAMPLE - SAMPLE / 32)
            zl = ZSTD_compressCCtx(cc, z, cap, plane, pl, level);
        else if (!ZSTD_isError(zl))
            zl = pl;
    }
    if (ZSTD_isError(zl) || zl >= pl) { /* stored */
        memcpy(z, plane, pl);
        zl = pl;
        c->raw |= (uint8_t)(1u << k);
    }
    return zl;
}

static mpk_status compress_one(zrun *r, size_t i, char *orig, char *planes, ZSTD_CCtx *cc, mpk_error *e)
{
    chunk *c = &r->c[i];
    MPK_TRY(mpk_pread_all(r->in_fd, orig, c->len, r->h->data_start + c->data_off, r->in_path,
                          r->h->tensors[c->tensor].name, e));
    c->hash = mpk_xxh64(orig, c->len);
    size_t pl = c->len / c->width, cap = ZSTD_compressBound(pl), at = 0;
    char *z = mpk_gbuf_get(&r->zbuf[i - r->lo], cap * c->width + 1);
    if (!z)
        MPK_FAIL(e, MPK_E_NOMEM, r->out_path, "out of memory");
    if (c->width == 1 && !c->xform)
        planes = orig; /* one plane: the bytes as they are */
    else
        mpk_planes_split(orig, planes, pl, c->width, c->xform);
    for (int k = 0; k < c->width; k++) {
        c->zlen[k] = (uint32_t)code_plane(c, k, planes + (size_t)k * pl, pl, z + at, cap, cc, r->level);
        at += c->zlen[k];
    }
    return MPK_OK;
}

/* Chunk i (c) of the container at fd back into orig (c->len bytes), through planes (as large),
 * its frames read into zin, checked against its XXH3-64; dc may be NULL (one is made). */
mpk_status mpk_mpkz_decode(int fd, const char *path, const mpk_st_header *h, const chunk *c, size_t i, char *orig,
                           char *planes, gbuf *zin, ZSTD_DCtx *dc, mpk_error *e)
{
    size_t pl = c->len / c->width, zl = 0;
    for (int k = 0; k < c->width; k++)
        zl += c->zlen[k];
    char *z = mpk_gbuf_get(zin, zl + 1);
    ZSTD_DCtx *own = dc ? NULL : ZSTD_createDCtx();
    if (!z || (!dc && !own)) {
        ZSTD_freeDCtx(own);
        MPK_FAIL(e, MPK_E_NOMEM, path, "out of memory");
    }
    bool direct = c->width == 1 && !c->xform; /* one plane: decompressed in place */
    if (direct)
        planes = orig;
    const char *what = NULL;
    const void *at_k[8]; /* where plane k is: a stored one is joined from where it was read */
    mpk_status s = mpk_pread_all(fd, z, zl, c->file_off, path, "(chunk)", e);
    for (int k = 0, at = 0; k < c->width && s == MPK_OK && !what; at += (int)c->zlen[k], k++) {
        char *dst = planes + (size_t)k * pl;
        at_k[k] = dst;
        if (c->raw & (1u << k)) {
            if (direct)
                memcpy(dst, z + at, pl);
            at_k[k] = z + at;
            continue;
        }
        if (c->huff & (1u << k)) {
            if (!mpk_huff_decode((const uint8_t *)z + at, c->zlen[k], (uint8_t *)dst, pl))
                what = "a plane's Huffman stream is corrupt";
            continue;
        }
        if (ZSTD_getFrameContentSize(z + at, c->zlen[k]) != pl)
            what = "a plane's frame does not declare the chunk's size";
        else if (ZSTD_decompressDCtx(dc ? dc : own, dst, pl, z + at, c->zlen[k]) != pl)
            what = "a plane's zstd frame is corrupt";
    }
    ZSTD_freeDCtx(own);
    MPK_TRY(s);
    if (!what && !direct)
        mpk_planes_join_at(at_k, orig, pl, c->width, c->xform);
    if (!what && mpk_xxh64(orig, c->len) != c->hash)
        what = "its bytes do not match their XXH3-64 (corrupt)";
    if (what)
        return mpk_error_set(e, MPK_E_CONTAINER, 0, path, "tensor '%s': chunk %zu: %s", h->tensors[c->tensor].name, i,
                             what);
    return MPK_OK;
}

static mpk_status decompress_one(zrun *r, size_t i, char *orig, char *planes, gbuf *zin, ZSTD_DCtx *dc, mpk_error *e)
{
    const chunk *c = &r->c[i];
    MPK_TRY(mpk_mpkz_decode(r->in_fd, r->in_path, r->h, c, i, orig, planes, zin, dc, e));
    return mpk_pwrite_all(r->out_fd, orig, c->len, r->h->data_start + c->data_off, r->out_path, e);
}

static void *zworker(void *arg)
{
    zrun *r = arg;
    mpk_error e = {0};
    gbuf *w = r->work[atomic_fetch_add(&r->workers, 1)];
    size_t most = 0; /* the batch's longest chunk */
    for (size_t i = r->lo; i < r->hi; i++)
        most = r->c[i].len > most ? r->c[i].len : most;
    char *orig = mpk_gbuf_get(&w[0], most + 1), *planes = mpk_gbuf_get(&w[1], most + 1);
    ZSTD_CCtx *cc = r->compress ? ZSTD_createCCtx() : NULL;
    ZSTD_DCtx *dc = r->compress ? NULL : ZSTD_createDCtx();
    if (!orig || !planes || (!cc && !dc)) {
        mpk_error_set(&e, MPK_E_NOMEM, 0, r->out_path, "out of memory");
        zfail(r, &e);
    }
    for (size_t i; !atomic_load(&r->failed) && (i = atomic_fetch_add(&r->next, 1)) < r->hi;) {
        mpk_status s = r->compress ? compress_one(r, i, orig, planes, cc, &e)
                                   : decompress_one(r, i, orig, planes, &w[2], dc, &e);
        if (s != MPK_OK) {
            zfail(r, &e);
        } else if (r->meter) {
            uint64_t in = 0; /* the bytes read: the chunk's original ones, or its frames */
            for (int k = 0; k < r->c[i].width; k++)
                in += r->c[i].zlen[k];
            mpk_meter_add(r->meter, r->compress ? r->c[i].len : in);
            if (mpk_meter_check(r->meter, r->out_path, &e) != MPK_OK) /* the caller's cancel flag */
                zfail(r, &e);
        }
    }
    ZSTD_freeCCtx(cc);
    ZSTD_freeDCtx(dc);
    return NULL;
}

/* Frees the buffers of r's workers and its slots of compressed planes (slots of them). */
static void zrun_free(zrun *r, size_t slots)
{
    for (int w = 0; w < 64; w++)
        for (int k = 0; k < 3; k++)
            free(r->work[w][k].p);
    for (size_t i = 0; r->zbuf && i < slots; i++)
        free(r->zbuf[i].p);
    free(r->zbuf);
}

/* Runs chunks [lo, hi) on up to threads threads (the calling one included). */
static mpk_status run_batch(zrun *r, size_t lo, size_t hi, int threads, mpk_error *err)
{
    r->lo = lo;
    r->hi = hi;
    atomic_store(&r->next, lo);
    atomic_store(&r->workers, 0);
    pthread_t th[64];
    int started = 0;
    while (started < threads - 1 && (size_t)started + 1 < hi - lo && pthread_create(&th[started], NULL, zworker, r) == 0)
        started++;
    zworker(r);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    if (atomic_load(&r->failed)) {
        *err = r->err;
        return err->code;
    }
    return MPK_OK;
}

/* Closes both files: out fsynced when all went well (s), else removed. Returns s or the
 * fsync's or close's failure (naming dst). */
static mpk_status close_both(int in, int out, const char *dst, mpk_status s, mpk_error *err)
{
    if (out >= 0) {
        if (s == MPK_OK)
            s = mpk_fsync_fd(out, dst, err);
        if (close(out) != 0 && s == MPK_OK) /* (NFS reports a failed write back here) */
            s = mpk_error_set(err, MPK_E_IO, errno, dst, "close failed: %s", strerror(errno));
        if (s != MPK_OK)
            unlink(dst);
    }
    if (in >= 0)
        close(in);
    return s;
}

/* The file read (path, open as fd, st its fstat when opened) is still that file, with the
 * size and times it had: pack's check (mpk_ckpt_check_unchanged) over a one-shard checkpoint.
 * Called after the last read. A failure s that names path (a read that met the file cut short,
 * a chunk that no longer matches its hash) gives way to MPK_E_CHANGED when the file changed:
 * that is what happened. Returns s, or MPK_E_CHANGED naming path and what differs. */
static mpk_status check_unchanged(const char *path, int fd, const struct stat *st, mpk_status s, mpk_error *err)
{
    if (fd < 0 || (s != MPK_OK && (!err || strcmp(err->where, path) != 0)))
        return s;
    mpk_shard sh = {.path = (char *)path, .fd = fd,
                    .id = {(uint64_t)st->st_dev, (uint64_t)st->st_ino, (uint64_t)st->st_size,
                           (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec,
                           (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec}};
    mpk_ckpt one = {.shards = &sh, .n_shards = 1};
    mpk_error e = {0};
    if (mpk_ckpt_check_unchanged(&one, &e) == MPK_E_CHANGED) {
        *err = e;
        return MPK_E_CHANGED;
    }
    return s;
}

/* ---------------------------------------------------------------- compress */

mpk_status mpk_mpkz_compress(const char *src, const char *dst, int level, int threads, uint64_t chunk_size,
                             uint64_t *out_size, mpk_meter *meter, mpk_error *err)
{
    int in = -1, out = -1;
    struct stat st;
    mpk_st_header *h = NULL;
    chunk *c = NULL;
    size_t n = 0;
    unsigned char *head = NULL;
    threads = threads < 1 ? 1 : threads > 64 ? 64 : threads;
    zrun r = {.in_path = src, .out_path = dst, .level = level, .compress = true, .meter = meter};
    pthread_mutex_init(&r.lock, NULL);
    r.zbuf = mpk_calloc((size_t)threads * 4, sizeof *r.zbuf);
    mpk_status s = r.zbuf ? mpk_open_regular(src, &in, &st, err) : mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
    if (s == MPK_OK && (s = mpk_st_read_header_fd(in, src, &h, NULL, err)) == MPK_OK)
        s = plan_chunks(h, chunk_size, &c, &n, src, err);
    uint64_t H = h ? h->data_start : 0, table = FIXED + H, at = table + (uint64_t)ENTRY * n;
    if (s == MPK_OK && !(head = mpk_calloc(1, at)))
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
    if (s == MPK_OK && (s = mpk_pread_all(in, head + FIXED, H, 0, src, "(header)", err)) == MPK_OK) {
        out = mpk_fault_point("create") ? -1 : open(dst, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (out < 0)
            s = mpk_error_set(err, errno == EEXIST ? MPK_E_DST_EXISTS : MPK_E_IO, errno, dst, "cannot create: %s",
                              strerror(errno));
    }
    r.in_fd = in;
    r.h = h;
    r.c = c;
    size_t batch = (size_t)threads * 4;
    for (size_t lo = 0; s == MPK_OK && lo < n; lo += batch) {
        size_t hi = lo + batch < n ? lo + batch : n;
        s = run_batch(&r, lo, hi, threads, err);
        for (size_t i = lo; i < hi; i++) {
            size_t zl = 0;
            for (int k = 0; k < c[i].width; k++)
                zl += c[i].zlen[k];
            c[i].file_off = at;
            if (s == MPK_OK)
                s = mpk_pwrite_all(out, r.zbuf[i - lo].p, zl, at, dst, err);
            at += zl;
        }
    }
    /* the shard edited in place meanwhile: the chunks read before and after would make a
     * container of neither version (every chunk's hash is of the bytes as they were read) */
    s = check_unchanged(src, in, &st, s, err);
    if (s == MPK_OK) {
        memcpy(head, "MPKZ", 4);
        uint8_t huff = 0; /* version 1 unless a plane is Huffman-coded: older readers read it */
        for (size_t i = 0; i < n; i++)
            huff |= c[i].huff;
        head[4] = huff ? 2 : 1, head[5] = head[6] = head[7] = 0;
        put64(head + 8, H);
        put64(head + 16, h->data_size);
        put64(head + 24, chunk_size);
        put64(head + 32, n);
        for (size_t i = 0; i < n; i++)
            put_entry(head + table + (uint64_t)ENTRY * i, &c[i]);
        s = mpk_pwrite_all(out, head, table + (uint64_t)ENTRY * n, 0, dst, err);
    }
    if (s == MPK_OK && out_size)
        *out_size = at;
    s = close_both(in, out, dst, s, err);
    free(head);
    zrun_free(&r, (size_t)threads * 4);
    free(c);
    mpk_st_header_free(h);
    pthread_mutex_destroy(&r.lock);
    return s;
}

/* ---------------------------------------------------------------- decompress */

#define BAD(...) return mpk_error_set(err, MPK_E_CONTAINER, 0, path, __VA_ARGS__)

/* The fixed fields and the original header: checked against each other and the file size. */
static mpk_status read_head(int fd, const char *path, uint64_t fsize, mpk_st_header **h, uint64_t *csize,
                            uint64_t *nchunks, uint8_t *ver, char **hdr, mpk_error *err)
{
    unsigned char f[FIXED];
    if (fsize < FIXED)
        BAD("truncated: %llu bytes, shorter than the %d-byte container header", (unsigned long long)fsize, FIXED);
    MPK_TRY(mpk_pread_all(fd, f, FIXED, 0, path, "(container header)", err));
    if (memcmp(f, "MPKZ", 4) != 0)
        BAD("not a moepack container (no MPKZ magic)");
    uint32_t version = (uint32_t)(get64(f + 4) & 0xFFFFFFFFu);
    if (version != 1 && version != 2)
        BAD("container version %u is not one this version reads (1, 2)", version);
    *ver = (uint8_t)version;
    uint64_t H = get64(f + 8), D = get64(f + 16);
    *csize = get64(f + 24);
    *nchunks = get64(f + 32);
    if (H < 8 || H > MPK_ST_MAX_HEADER + 8 || H > fsize - FIXED)
        BAD("declares a %llu-byte header, which the file cannot hold", (unsigned long long)H);
    if (*csize < 8 || *csize > MAX_CHUNK || *csize % 8)
        BAD("chunk size %llu is not a multiple of 8 up to 64 MiB", (unsigned long long)*csize);
    if (*nchunks > (fsize - FIXED - H) / ENTRY)
        BAD("truncated: a table of %llu chunks does not fit in %llu bytes", (unsigned long long)*nchunks,
            (unsigned long long)fsize);
    if (D > UINT64_MAX - H)
        BAD("declared sizes overflow");
    if (!(*hdr = mpk_alloc(H)))
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    MPK_TRY(mpk_pread_all(fd, *hdr, H, FIXED, path, "(header)", err));
    if (get64((unsigned char *)*hdr) != H - 8)
        BAD("the stored header's length prefix (%llu) disagrees with the container's (%llu)",
            (unsigned long long)get64((unsigned char *)*hdr), (unsigned long long)(H - 8));
    mpk_error pe;
    if (mpk_st_parse_header(*hdr + 8, H - 8, H + D, path, h, &pe) != MPK_OK) /* sizes that disagree, too */
        BAD("the stored header does not describe %llu data bytes: %s", (unsigned long long)D, mpk_error_what(&pe));
    return MPK_OK;
}

/* The table: every chunk where the header's tensors say, its planes inside the file. */
static mpk_status read_table(int fd, const char *path, uint64_t fsize, const mpk_st_header *h, uint64_t csize,
                             uint64_t n, uint8_t ver, chunk **out, mpk_error *err)
{
    chunk *want;
    size_t nw;
    MPK_TRY(plan_chunks(h, csize, &want, &nw, path, err));
    unsigned char *t = nw == n ? mpk_alloc((size_t)n * ENTRY + 1) : NULL;
    mpk_status s = MPK_OK;
    if (nw != n)
        s = mpk_error_set(err, MPK_E_CONTAINER, 0, path, "%llu chunks in the table, the header's tensors make %zu",
                          (unsigned long long)n, nw);
    else if (!t)
        s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
    else
        s = mpk_pread_all(fd, t, n * ENTRY, FIXED + h->data_start, path, "(chunk table)", err);
    for (size_t i = 0; i < nw && s == MPK_OK; i++) {
        chunk c;
        get_entry(t + i * ENTRY, &c);
        uint64_t zl = 0;
        bool ok = c.data_off == want[i].data_off && c.len == want[i].len && c.width == want[i].width &&
                  !(c.raw >> c.width) && c.xform == want[i].xform && !(c.huff >> c.width) && !(c.huff & c.raw) &&
                  (ver == 2 || !c.huff);
        for (int k = 0; k < 8; k++) {
            ok &= k < c.width ? (c.raw >> k & 1 ? c.zlen[k] == c.len / c.width : c.zlen[k] > 0) : c.zlen[k] == 0;
            ok &= !(c.huff >> k & 1) || c.zlen[k] >= MPK_HUFF_HEAD;
            zl += c.zlen[k];
        }
        if (!ok || c.file_off > fsize || zl > fsize - c.file_off)
            s = mpk_error_set(err, MPK_E_CONTAINER, 0, path, "tensor '%s': chunk %zu: %s",
                              h->tensors[want[i].tensor].name, i,
                              ok ? "its planes lie past the end of the file (truncated)"
                                 : "its table entry disagrees with the header (offset, length, width or planes)");
        c.tensor = want[i].tensor;
        want[i] = c;
    }
    free(t);
    if (s != MPK_OK) {
        free(want);
        return s;
    }
    *out = want;
    return MPK_OK;
}

mpk_status mpk_mpkz_decompress(const char *path, const char *dst, int threads, mpk_meter *meter, mpk_error *err)
{
    int in = -1, out = -1;
    struct stat st;
    mpk_st_header *h = NULL;
    chunk *c = NULL;
    char *hdr = NULL;
    uint64_t csize = 0, n = 0;
    uint8_t ver = 0;
    threads = threads < 1 ? 1 : threads > 64 ? 64 : threads;
    zrun r = {.in_path = path, .out_path = dst, .meter = meter};
    pthread_mutex_init(&r.lock, NULL);
    mpk_status s = mpk_open_regular(path, &in, &st, err);
    if (s == MPK_OK && (s = read_head(in, path, (uint64_t)st.st_size, &h, &csize, &n, &ver, &hdr, err)) == MPK_OK)
        s = read_table(in, path, (uint64_t)st.st_size, h, csize, n, ver, &c, err);
    if (s == MPK_OK) {
        out = mpk_fault_point("create") ? -1 : open(dst, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (out < 0)
            s = mpk_error_set(err, errno == EEXIST ? MPK_E_DST_EXISTS : MPK_E_IO, errno, dst, "cannot create: %s",
                              strerror(errno));
        else if ((s = mpk_pwrite_all(out, hdr, h->data_start, 0, dst, err)) == MPK_OK &&
                 (mpk_fault_point("ftruncate") || ftruncate(out, (off_t)(h->data_start + h->data_size)) != 0))
            s = mpk_error_set(err, MPK_E_IO, errno, dst, "cannot size the file: %s", strerror(errno));
        if (s == MPK_OK)
            s = mpk_preallocate(out, dst, h->data_start + h->data_size, err);
    }
    r.in_fd = in;
    r.out_fd = out;
    r.h = h;
    r.c = c;
    size_t batch = (size_t)threads * 4;
    for (size_t lo = 0; s == MPK_OK && lo < n; lo += batch)
        s = run_batch(&r, lo, lo + batch < n ? lo + batch : (size_t)n, threads, err);
    /* the container written meanwhile: a chunk read after it is caught by its hash, but as
     * "corrupt"; say what happened */
    s = check_unchanged(path, in, &st, s, err);
    s = close_both(in, out, dst, s, err);
    free(hdr);
    free(c);
    mpk_st_header_free(h);
    zrun_free(&r, 0);
    pthread_mutex_destroy(&r.lock);
    return s;
}

/* ---------------------------------------------------------------- for random access */

mpk_status mpk_mpkz_load(int fd, const char *path, uint64_t fsize, mpk_st_header **h, char **hdr, mpk_zchunk **c,
                         size_t *n, mpk_error *err)
{
    uint64_t csize, k;
    uint8_t ver = 0;
    *h = NULL, *hdr = NULL, *c = NULL;
    mpk_status s = read_head(fd, path, fsize, h, &csize, &k, &ver, hdr, err);
    if (s == MPK_OK)
        s = read_table(fd, path, fsize, *h, csize, k, ver, c, err);
    if (s != MPK_OK) {
        mpk_st_header_free(*h);
        free(*hdr);
        *h = NULL, *hdr = NULL;
        return s;
    }
    *n = (size_t)k;
    return MPK_OK;
}
