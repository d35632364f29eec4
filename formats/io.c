/* io.c — the I/O engine: batches of ranged reads/writes through io_uring, or pread/pwrite. */
#define _GNU_SOURCE
#include "formats_internal.h"
#include "mpk_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if MPK_HAVE_IO_URING
#include <liburing.h>
#endif

struct mpk_io {
    mpk_io_backend backend;
    unsigned depth;
    size_t max_req;
#if MPK_HAVE_IO_URING
    struct io_uring ring;
#endif
};

const char *mpk_io_backend_name(mpk_io_backend b)
{
    static const char *const names[] = {"auto", "io_uring", "pread"};
    _Static_assert(sizeof names / sizeof names[0] == MPK_IO_BACKEND_COUNT, "backend names");
    return (unsigned)b < MPK_IO_BACKEND_COUNT ? names[b] : "?";
}

mpk_status mpk_io_create(mpk_io_backend want, unsigned queue_depth, size_t max_req, mpk_io **out,
                         mpk_error *err)
{
    *out = NULL;
    if (queue_depth == 0 || queue_depth > 4096 || max_req == 0)
        MPK_FAIL(err, MPK_E_USAGE, "io", "queue depth must be 1..4096 and request size > 0");
    if (want == MPK_IO_AUTO) /* the process's choice (mpk_tune), else auto */
        want = mpk_tuning_now()->io;
    mpk_io *io = mpk_calloc(1, sizeof *io);
    if (!io)
        MPK_FAIL(err, MPK_E_NOMEM, "io", "out of memory");
    io->depth = queue_depth;
    io->max_req = max_req;
    io->backend = MPK_IO_PREAD;
    if (want != MPK_IO_PREAD) {
#if MPK_HAVE_IO_URING
        int r = io_uring_queue_init(queue_depth, &io->ring, 0);
        if (r == 0) {
            io->backend = MPK_IO_URING;
        } else if (want == MPK_IO_URING) {
            free(io);
            return mpk_error_set(err, MPK_E_IO, -r, "io_uring", "cannot set up a ring: %s",
                                 strerror(-r));
        }
#else
        if (want == MPK_IO_URING) {
            free(io);
            MPK_FAIL(err, MPK_E_IO, "io_uring", "this build has no io_uring support");
        }
#endif
    }
    *out = io;
    return MPK_OK;
}

mpk_io_backend mpk_io_backend_of(const mpk_io *io)
{
    return io->backend;
}

void mpk_io_free(mpk_io *io)
{
    if (!io)
        return;
#if MPK_HAVE_IO_URING
    if (io->backend == MPK_IO_URING)
        io_uring_queue_exit(&io->ring);
#endif
    free(io);
}

static mpk_status io_fail(mpk_error *err, const mpk_io_req *r, uint64_t off, int e)
{
    if (r->path)
        return mpk_error_set(err, MPK_E_IO, e, r->path, "%s at offset %llu failed: %s",
                             r->write ? "write" : "read", (unsigned long long)off,
                             e ? strerror(e) : "unexpected end of file");
    return mpk_error_set(err, MPK_E_IO, e, "io", "%s of fd %d at offset %llu failed: %s",
                         r->write ? "write" : "read", r->fd, (unsigned long long)off,
                         e ? strerror(e) : "unexpected end of file");
}

static mpk_status submit_pread(mpk_io *io, const mpk_io_req *reqs, size_t n, mpk_error *err)
{
    (void)io;
    for (size_t i = 0; i < n; i++) {
        const mpk_io_req *r = &reqs[i];
        size_t done = 0;
        while (done < r->len) {
            ssize_t k = r->write ? pwrite(r->fd, (char *)r->buf + done, r->len - done,
                                          (off_t)(r->offset + done))
                                 : pread(r->fd, (char *)r->buf + done, r->len - done,
                                         (off_t)(r->offset + done));
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0)
                return io_fail(err, r, r->offset + done, k < 0 ? errno : 0);
            done += (size_t)k;
        }
    }
    return MPK_OK;
}

#if MPK_HAVE_IO_URING
/* One piece in flight: request index and the part of it this SQE covers. */
typedef struct {
    size_t req;
    size_t off, len;
} piece;

static mpk_status submit_uring(mpk_io *io, const mpk_io_req *reqs, size_t n, mpk_error *err)
{
    piece *slots = mpk_calloc(io->depth, sizeof *slots);
    unsigned *free_ids = mpk_calloc(io->depth, sizeof *free_ids);
    if (!slots || !free_ids) {
        free(slots);
        free(free_ids);
        MPK_FAIL(err, MPK_E_NOMEM, "io", "out of memory");
    }
    unsigned n_free = io->depth;
    for (unsigned i = 0; i < io->depth; i++)
        free_ids[i] = i;
    size_t next_req = 0, next_off = 0; /* cursor over the not-yet-submitted bytes */
    unsigned inflight = 0;
    mpk_status s = MPK_OK;
    /* pieces that came back short are resubmitted from this small queue first */
    piece *retry = mpk_calloc(io->depth, sizeof *retry);
    unsigned n_retry = 0;
    if (!retry) {
        free(slots);
        free(free_ids);
        MPK_FAIL(err, MPK_E_NOMEM, "io", "out of memory");
    }
    for (;;) {
        unsigned queued = 0;
        while (s == MPK_OK && n_free > 0) {
            piece p;
            if (n_retry > 0) {
                p = retry[--n_retry];
            } else {
                while (next_req < n && next_off >= reqs[next_req].len) {
                    next_req++;
                    next_off = 0;
                }
                if (next_req >= n)
                    break;
                size_t len = reqs[next_req].len - next_off;
                if (len > io->max_req)
                    len = io->max_req;
                p = (piece){next_req, next_off, len};
                next_off += len;
            }
            struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
            if (!sqe) {
                retry[n_retry++] = p;
                break;
            }
            unsigned id = free_ids[--n_free];
            slots[id] = p;
            const mpk_io_req *r = &reqs[p.req];
            if (r->write)
                io_uring_prep_write(sqe, r->fd, (char *)r->buf + p.off, (unsigned)p.len,
                                    r->offset + p.off);
            else
                io_uring_prep_read(sqe, r->fd, (char *)r->buf + p.off, (unsigned)p.len,
                                   r->offset + p.off);
            io_uring_sqe_set_data64(sqe, id);
            queued++;
        }
        if (queued) {
            int r = io_uring_submit(&io->ring);
            if (r < 0) {
                s = mpk_error_set(err, MPK_E_IO, -r, "io_uring", "submit failed: %s", strerror(-r));
                /* nothing was submitted from this batch; fall through to drain */
            } else {
                inflight += (unsigned)r;
            }
        }
        if (inflight == 0)
            break;
        struct io_uring_cqe *cqe;
        int r = io_uring_wait_cqe(&io->ring, &cqe);
        if (r == -EINTR)
            continue;
        if (r < 0) {
            s = mpk_error_set(err, MPK_E_IO, -r, "io_uring", "wait failed: %s", strerror(-r));
            break;
        }
        unsigned id = (unsigned)io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&io->ring, cqe);
        inflight--;
        piece p = slots[id];
        free_ids[n_free++] = id;
        if (s != MPK_OK)
            continue; /* draining after a failure */
        if (res == -EAGAIN || res == -EINTR) {
            retry[n_retry++] = p;
        } else if (res <= 0) {
            s = io_fail(err, &reqs[p.req], reqs[p.req].offset + p.off, res < 0 ? -res : 0);
        } else if ((size_t)res < p.len) {
            retry[n_retry++] = (piece){p.req, p.off + (size_t)res, p.len - (size_t)res};
        }
    }
    free(slots);
    free(free_ids);
    free(retry);
    return s;
}
#endif

mpk_status mpk_io_submit(mpk_io *io, const mpk_io_req *reqs, size_t n, mpk_error *err)
{
#if MPK_HAVE_IO_URING
    if (io->backend == MPK_IO_URING)
        return submit_uring(io, reqs, n, err);
#endif
    return submit_pread(io, reqs, n, err);
}
