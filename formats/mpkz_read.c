/* mpkz_read.c — a compressed shard (.mpkz, formats/MPKZ.md) read in place: the chunks a read
 * covers decoded (by mpkz.c's mpk_mpkz_decode), a whole chunk straight into the caller's buffer.
 * Each thread keeps its buffers, its zstd context and the last chunk it decoded in part: pack
 * reads a tensor in units that need not fall on chunk boundaries, and each unit decoding the
 * chunks it shares with the next one, with buffers allocated (and faulted in) for every read,
 * cost more than the decoding (issue 51). */
#include "formats_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

struct mpk_mpkz {
    int fd;                      /* borrowed */
    char *path;
    char *hdr;                   /* the original first H bytes */
    const mpk_st_header *h;      /* the parsed header (the caller's) */
    mpk_zchunk *c;
    size_t n;
    uint64_t id;                 /* this container among all opened in the process (the cache's key) */
};

static atomic_uint_fast64_t opened;

mpk_status mpk_mpkz_open(int fd, const char *path, uint64_t fsize, mpk_mpkz **out, mpk_st_header **h, mpk_error *err)
{
    *out = NULL;
    *h = NULL;
    mpk_mpkz *z = mpk_calloc(1, sizeof *z);
    if (!z || !(z->path = mpk_strndup(path, strlen(path)))) {
        free(z);
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    }
    z->fd = fd;
    mpk_status s = mpk_mpkz_load(fd, path, fsize, h, &z->hdr, &z->c, &z->n, err);
    if (s != MPK_OK) {
        mpk_mpkz_close(z);
        return s;
    }
    z->h = *h;
    z->id = atomic_fetch_add(&opened, 1) + 1;
    *out = z;
    return MPK_OK;
}

const char *mpk_mpkz_header_bytes(const mpk_mpkz *z)
{
    return z->hdr;
}

/* ---------------------------------------------------------------- the thread's cache */

typedef struct cache {
    uint64_t id;                 /* the container of the chunk in orig (0: none) */
    size_t chunk;
    mpk_gbuf orig, planes, zin;
    ZSTD_DCtx *dc;
} cache;

static pthread_key_t key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static bool key_made;

static void cache_free(void *p)
{
    cache *c = p;
    if (c)
        free(c->orig.p), free(c->planes.p), free(c->zin.p), ZSTD_freeDCtx(c->dc), free(c);
}

static void make_key(void)
{
    key_made = pthread_key_create(&key, cache_free) == 0;
}

/* The calling thread's cache; NULL when out of memory. */
static cache *my_cache(void)
{
    pthread_once(&key_once, make_key);
    cache *c = key_made ? pthread_getspecific(key) : NULL;
    if (!c && key_made && (c = mpk_calloc(1, sizeof *c)) && pthread_setspecific(key, c) != 0) {
        free(c);
        c = NULL;
    }
    if (c && !c->dc && !(c->dc = ZSTD_createDCtx()))
        return NULL;
    return c;
}

/* bsearch: the chunk holding data byte *key (chunks tile the data section in order). */
static int chunk_holding(const void *k, const void *elem)
{
    uint64_t off = *(const uint64_t *)k;
    const mpk_zchunk *c = elem;
    return off < c->data_off ? -1 : off >= c->data_off + c->len ? 1 : 0;
}

/* Chunk i of z decoded: straight into dst when given, else into the cache (kept there). */
static mpk_status decode(const mpk_mpkz *z, size_t i, cache *k, char *dst, mpk_error *err)
{
    const mpk_zchunk *c = &z->c[i];
    if (!dst && k->id == z->id && k->chunk == i)
        return MPK_OK;
    char *planes = mpk_gbuf_get(&k->planes, c->len + 1), *orig = dst ? dst : mpk_gbuf_get(&k->orig, c->len + 1);
    if (!planes || !orig)
        return mpk_error_set(err, MPK_E_NOMEM, 0, z->path, "out of memory");
    if (!dst)
        k->id = 0; /* (orig is being overwritten) */
    MPK_TRY(mpk_mpkz_decode(z->fd, z->path, z->h, c, i, orig, planes, &k->zin, k->dc, err));
    if (!dst)
        k->id = z->id, k->chunk = i;
    return MPK_OK;
}

mpk_status mpk_mpkz_read(const mpk_mpkz *z, uint64_t off, uint64_t len, void *buf, mpk_error *err)
{
    const mpk_zchunk *first = z->n ? bsearch(&off, z->c, z->n, sizeof *z->c, chunk_holding) : NULL;
    cache *k = len ? my_cache() : NULL;
    if (len && !k)
        MPK_FAIL(err, MPK_E_NOMEM, z->path, "out of memory");
    for (size_t i = first ? (size_t)(first - z->c) : z->n; len; i++) {
        if (i >= z->n || z->c[i].data_off > off)
            return mpk_error_set(err, MPK_E_CONTAINER, 0, z->path, "no chunk holds data byte %llu",
                                 (unsigned long long)off);
        const mpk_zchunk *c = &z->c[i];
        uint64_t a = off - c->data_off, n = c->len - a < len ? c->len - a : len;
        bool whole = a == 0 && n == c->len;
        MPK_TRY(decode(z, i, k, whole ? buf : NULL, err));
        if (!whole)
            memcpy(buf, k->orig.p + a, n);
        buf = (char *)buf + n;
        off += n;
        len -= n;
    }
    return MPK_OK;
}

void mpk_mpkz_close(mpk_mpkz *z)
{
    if (z) /* the fd is the caller's */
        free(z->path), free(z->hdr), free(z->c), free(z);
}
