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

/* One submit_uring call: the requests, the pieces in flight by slot id, the free ids, the pieces
 * that came back short (resubmitted from this small queue first) and the cursor over the
 * not-yet-submitted bytes. */
typedef struct {
    mpk_io *io;
    const mpk_io_req *reqs;
    size_t n;
    piece *slots, *retry;
    unsigned *free_ids;
    unsigned n_free, n_retry, inflight;
    size_t next_req, next_off;
} ring_run;

/* The next piece to submit: a short one again first, else the next bytes of the requests (at
 * most max_req); false when nothing is left. */
static bool next_piece(ring_run *q, piece *p)
{
    if (q->n_retry > 0) {
        *p = q->retry[--q->n_retry];
        return true;
    }
    while (q->next_req < q->n && q->next_off >= q->reqs[q->next_req].len) {
        q->next_req++;
        q->next_off = 0;
    }
    if (q->next_req >= q->n)
        return false;
    size_t len = q->reqs[q->next_req].len - q->next_off;
    if (len > q->io->max_req)
        len = q->io->max_req;
    *p = (piece){q->next_req, q->next_off, len};
    q->next_off += len;
    return true;
}

/* Prepares an SQE for each piece while a slot is free (a piece without an SQE waits in retry);
 * how many it prepared. */
static unsigned queue_pieces(ring_run *q)
{
    unsigned queued = 0;
    piece p;
    while (q->n_free > 0 && next_piece(q, &p)) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&q->io->ring);
        if (!sqe) {
            q->retry[q->n_retry++] = p;
            break;
        }
        unsigned id = q->free_ids[--q->n_free];
        q->slots[id] = p;
        const mpk_io_req *r = &q->reqs[p.req];
        if (r->write)
            io_uring_prep_write(sqe, r->fd, (char *)r->buf + p.off, (unsigned)p.len, r->offset + p.off);
        else
            io_uring_prep_read(sqe, r->fd, (char *)r->buf + p.off, (unsigned)p.len, r->offset + p.off);
        io_uring_sqe_set_data64(sqe, id);
        queued++;
    }
    return queued;
}

/* Waits for one completion and takes it in: an interrupted or short piece goes back to retry, a
 * failure into *s (after one, completions are only drained). false: the wait itself failed. */
static bool reap_one(ring_run *q, mpk_status *s, mpk_error *err)
{
    struct io_uring_cqe *cqe;
    int r = io_uring_wait_cqe(&q->io->ring, &cqe);
    if (r == -EINTR)
        return true;
    if (r < 0) {
        *s = mpk_error_set(err, MPK_E_IO, -r, "io_uring", "wait failed: %s", strerror(-r));
        return false;
    }
    unsigned id = (unsigned)io_uring_cqe_get_data64(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&q->io->ring, cqe);
    q->inflight--;
    piece p = q->slots[id];
    q->free_ids[q->n_free++] = id;
    if (*s != MPK_OK)
        return true; /* draining after a failure */
    if (res == -EAGAIN || res == -EINTR)
        q->retry[q->n_retry++] = p;
    else if (res <= 0)
        *s = io_fail(err, &q->reqs[p.req], q->reqs[p.req].offset + p.off, res < 0 ? -res : 0);
    else if ((size_t)res < p.len)
        q->retry[q->n_retry++] = (piece){p.req, p.off + (size_t)res, p.len - (size_t)res};
    return true;
}

static mpk_status submit_uring(mpk_io *io, const mpk_io_req *reqs, size_t n, mpk_error *err)
{
    ring_run q = {.io = io, .reqs = reqs, .n = n, .n_free = io->depth};
    q.slots = mpk_calloc(io->depth, sizeof *q.slots);
    q.free_ids = mpk_calloc(io->depth, sizeof *q.free_ids);
    if (!q.slots || !q.free_ids) {
        free(q.slots);
        free(q.free_ids);
        MPK_FAIL(err, MPK_E_NOMEM, "io", "out of memory");
    }
    for (unsigned i = 0; i < io->depth; i++)
        q.free_ids[i] = i;
    mpk_status s = MPK_OK;
    if (!(q.retry = mpk_calloc(io->depth, sizeof *q.retry))) {
        free(q.slots);
        free(q.free_ids);
        MPK_FAIL(err, MPK_E_NOMEM, "io", "out of memory");
    }
    for (;;) {
        unsigned queued = s == MPK_OK ? queue_pieces(&q) : 0;
        if (queued) {
            int r = io_uring_submit(&io->ring);
            if (r < 0) /* nothing was submitted from this batch; fall through to drain */
                s = mpk_error_set(err, MPK_E_IO, -r, "io_uring", "submit failed: %s", strerror(-r));
            else
                q.inflight += (unsigned)r;
        }
        if (q.inflight == 0 || !reap_one(&q, &s, err))
            break;
    }
    free(q.slots);
    free(q.free_ids);
    free(q.retry);
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
