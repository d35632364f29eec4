/* direct.c — a durable run writes each output shard's data with O_DIRECT, straight from the
 * buffers its units were read or computed into.
 *
 * Why: a durable pack pays for every byte twice in the page cache, once to copy it in and once
 * to write it back (the fsync), and on a VM whose host reclaims free guest memory each fresh
 * page-cache page costs a host fault as well (bench/RESULTS.md): `cp -r` + `sync` of 4.64 GiB
 * took 6-8 s of CPU there, the same bytes read into a buffer and written with O_DIRECT 0.6 s.
 * A unit is read into a buffer at the same offset within a 4 KiB block as it has in the file,
 * so the whole blocks inside it go out directly from that buffer, before its turn and in
 * parallel with other units; the two partial blocks at its ends are shared with its neighbours
 * and are put together in its turn (units are written in file order) in the shard's carry
 * block, which goes out once complete. The bytes before the first whole block of the data
 * section (the header's last block) and after its last are written through the page cache.
 * Only for shards whose file system states its direct-I/O alignment (statx STATX_DIOALIGN) and
 * accepts 4 KiB; a direct write refused with EINVAL turns the shard back to page-cache writes. */
#define _GNU_SOURCE
#include "engine_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIO_MIN_BYTES (1u << 20) /* smaller data sections are not worth a second descriptor */

bool ex_direct_open(ex_direct *d, const mpk_st_out *so, bool any_size)
{
    memset(d, 0, sizeof *d);
    d->fd = -1;
    d->carry_blk = UINT64_MAX;
#ifdef STATX_DIOALIGN
    struct statx sx;
    if (statx(AT_FDCWD, so->path, 0, STATX_DIOALIGN, &sx) != 0 || !(sx.stx_mask & STATX_DIOALIGN) ||
        !sx.stx_dio_offset_align || EX_DIO_ALIGN % sx.stx_dio_offset_align || !sx.stx_dio_mem_align ||
        EX_DIO_ALIGN % sx.stx_dio_mem_align)
        return false;
    uint64_t end = so->data_start + so->data_size;
    d->a0 = (so->data_start + EX_DIO_ALIGN - 1) / EX_DIO_ALIGN * EX_DIO_ALIGN;
    d->a1 = end / EX_DIO_ALIGN * EX_DIO_ALIGN;
    if (d->a1 <= d->a0 || (!any_size && d->a1 < d->a0 + DIO_MIN_BYTES))
        return false;
    if (!(d->carry = ex_dio_aligned(d->carry_raw = mpk_alloc(2 * EX_DIO_ALIGN))))
        return false;
    if ((d->fd = open(so->path, O_WRONLY | O_DIRECT | O_CLOEXEC)) < 0) {
        free(d->carry_raw);
        d->carry_raw = d->carry = NULL;
        return false;
    }
    /* the blocks, as unwritten extents, so that the writes only convert them (a hint) */
    (void)fallocate(d->fd, FALLOC_FL_KEEP_SIZE, (off_t)d->a0, (off_t)(d->a1 - d->a0));
    return d->on = true;
#else
    (void)so;
    return false;
#endif
}

mpk_status ex_direct_close(ex_direct *d, const char *path, mpk_error *err)
{
    mpk_status s = MPK_OK;
    if (d->fd >= 0 && d->carry_fill && err) /* a block some of whose bytes never came */
        s = mpk_error_set(err, MPK_E_IO, 0, path, "block at byte %llu written only in part (%u of %u bytes)",
                          (unsigned long long)(d->carry_blk * EX_DIO_ALIGN), d->carry_fill, EX_DIO_ALIGN);
    if (d->fd >= 0)
        close(d->fd);
    free(d->carry_raw);
    d->fd = -1;
    d->carry_raw = d->carry = NULL;
    return s;
}

/* Writes n bytes at file offset off from p: directly (p, n and off aligned) unless the shard
 * went back to the page cache. */
static mpk_status put(ex_direct *d, const mpk_st_out *so, const char *p, uint64_t n, uint64_t off, mpk_error *err)
{
    while (n > 0) {
        if (atomic_load(&d->buffered))
            return mpk_pwrite_all(so->fd, p, (size_t)n, off, so->path, err);
        ssize_t w = mpk_fault_point("write") ? -1 : pwrite(d->fd, p, (size_t)n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EINVAL) { /* not for this file after all: the page cache */
            atomic_store(&d->buffered, 1);
            continue;
        }
        if (w <= 0)
            return mpk_error_set(err, MPK_E_IO, w < 0 ? errno : 0, so->path, "write failed at byte %llu: %s",
                                 (unsigned long long)off, w < 0 ? strerror(errno) : "no progress");
        atomic_fetch_add(&d->bytes, (uint64_t)w);
        p += w, n -= (uint64_t)w, off += (uint64_t)w;
        if (n && (off % EX_DIO_ALIGN)) /* a short write left the rest unaligned */
            atomic_store(&d->buffered, 1);
    }
    return MPK_OK;
}

/* The whole blocks inside [at, at + len), with p holding those bytes: [*bs, *be), empty
 * when *bs >= *be. */
static void inner(const ex_direct *d, uint64_t at, uint64_t len, uint64_t *bs, uint64_t *be)
{
    uint64_t s = (at + EX_DIO_ALIGN - 1) / EX_DIO_ALIGN * EX_DIO_ALIGN, e = (at + len) / EX_DIO_ALIGN * EX_DIO_ALIGN;
    *bs = s < d->a0 ? d->a0 : s;
    *be = e > d->a1 ? d->a1 : e;
}

/* The whole blocks go out in pieces of this size, up to 64 at once through the worker's I/O
 * engine (io_uring: all in flight): the disk needs many requests in flight to reach its speed
 * (this VM's: 0.72 GB/s with 2 x 1 MiB, 1.3-1.7 GB/s with 32), and a worker has one unit at a
 * time, an unpack's units being single 3 MiB experts (bench/RESULTS.md). */
#define DIO_PIECE (256u << 10)

mpk_status ex_direct_inner(ex_direct *d, const mpk_st_out *so, mpk_io *io, uint64_t at, const char *p,
                           uint64_t len, mpk_error *err)
{
    uint64_t bs, be;
    inner(d, at, len, &bs, &be);
    if (bs >= be)
        return MPK_OK;
    if (!io || atomic_load(&d->buffered))
        return put(d, so, p + (bs - at), be - bs, bs, err);
    if (mpk_fault_point("write"))
        return mpk_error_set(err, MPK_E_IO, errno, so->path, "write failed at byte %llu: %s",
                             (unsigned long long)bs, strerror(errno));
    mpk_io_req reqs[64];
    while (bs < be) {
        size_t n = 0;
        uint64_t from = bs;
        for (; n < 64 && bs < be; n++, bs += DIO_PIECE)
            reqs[n] = (mpk_io_req){d->fd, so->path, true, bs, (void *)(p + (bs - at)),
                                   (size_t)(be - bs < DIO_PIECE ? be - bs : DIO_PIECE)};
        bs = bs < be ? bs : be;
        mpk_error e = {0};
        if (mpk_io_submit(io, reqs, n, &e) != MPK_OK) {
            if (e.sys_errno != EINVAL) {
                *err = e;
                return e.code;
            }
            atomic_store(&d->buffered, 1); /* not for this file after all: the page cache */
            return put(d, so, p + (from - at), be - from, from, err);
        }
        atomic_fetch_add(&d->bytes, bs - from);
    }
    return MPK_OK;
}

/* Bytes [from, to) of the unit (file offsets, p + (from - at)) outside its whole blocks:
 * through the page cache outside [a0, a1), else into the carry block, block by block. */
static mpk_status edge(ex_direct *d, const mpk_st_out *so, uint64_t at, const char *p, uint64_t from, uint64_t to,
                       mpk_error *err)
{
    while (from < to) {
        if (from < d->a0 || from >= d->a1) {
            uint64_t q = from < d->a0 ? (to < d->a0 ? to : d->a0) : to;
            MPK_TRY(mpk_pwrite_all(so->fd, p + (from - at), (size_t)(q - from), from, so->path, err));
            from = q;
            continue;
        }
        uint64_t blk = from / EX_DIO_ALIGN, q = (blk + 1) * EX_DIO_ALIGN;
        q = q < to ? q : to;
        unsigned in = (unsigned)(from - blk * EX_DIO_ALIGN);
        if (d->carry_blk != blk) {
            if (d->carry_fill || in) /* units come in file order, back to back */
                return mpk_error_set(err, MPK_E_IO, 0, so->path, "block at byte %llu: bytes out of order",
                                     (unsigned long long)(blk * EX_DIO_ALIGN));
            d->carry_blk = blk;
        }
        if (in != d->carry_fill)
            return mpk_error_set(err, MPK_E_IO, 0, so->path, "block at byte %llu: bytes out of order",
                                 (unsigned long long)(blk * EX_DIO_ALIGN));
        memcpy(d->carry + in, p + (from - at), (size_t)(q - from));
        d->carry_fill += (unsigned)(q - from);
        if (d->carry_fill == EX_DIO_ALIGN) {
            MPK_TRY(put(d, so, d->carry, EX_DIO_ALIGN, blk * EX_DIO_ALIGN, err));
            d->carry_fill = 0;
            d->carry_blk = UINT64_MAX;
        }
        from = q;
    }
    return MPK_OK;
}

mpk_status ex_direct_edges(ex_direct *d, const mpk_st_out *so, uint64_t at, const char *p, uint64_t len,
                           mpk_error *err)
{
    uint64_t bs, be;
    inner(d, at, len, &bs, &be);
    if (bs >= be)
        return edge(d, so, at, p, at, at + len, err);
    MPK_TRY(edge(d, so, at, p, at, bs, err));
    return edge(d, so, at, p, be, at + len, err);
}
