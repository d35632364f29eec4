/* exec.c — streaming execution of a plan.
 *
 * Every output tensor becomes a node: SOURCE (bytes of a source tensor), SEGS (a list of
 * byte ranges of other nodes: what merge/split/concat/chunk/reshape build), TRANSPOSE or
 * CAST (computed, in bounded blocks). SEGS over SEGS are flattened when built, so a pure
 * permutation reads straight from the source files. Work is cut into units (a byte range
 * of one output tensor), queued per output shard in file order; threads claim units, read
 * them through the I/O engine (or move them with copy_file_range) and write them at their
 * final offsets, one writer per shard at a time (see "the run" below).
 */
#define _GNU_SOURCE
#include "converter_internal.h"
#include "mpk_config.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

typedef enum { N_SOURCE, N_SEGS, N_TRANSPOSE, N_CAST, N_DEQUANT, N_QUANT } node_kind;

typedef struct seg {
    mpk_node *src;
    uint64_t src_off, dst_off, len;
} seg;

struct mpk_node {
    node_kind kind;
    mpk_tmeta meta;
    uint64_t nbytes;
    int fd;              /* SOURCE */
    const char *path;    /* SOURCE: the shard's path, for messages */
    uint64_t file_off;
    seg *segs;           /* SEGS */
    size_t n_segs, cap_segs;
    mpk_node *in;        /* TRANSPOSE, CAST, DEQUANT (weight or blocks), QUANT */
    mpk_node *in2;       /* DEQUANT: scale grid (FP8) or E8M0 scales (MXFP4) */
    bool mx;             /* DEQUANT/QUANT: MXFP4 rather than FP8 block */
    int block;           /* FP8 block edge */
    int which;           /* QUANT: 0 the quantized values, 1 the scales */
    int a, b;            /* TRANSPOSE: the dims swapped */
    uint64_t granule;    /* computed nodes: the bytes the kernel makes on its own (the op table's
                            granule; TRANSPOSE: one slab, dims [a, ndim)) */
    bool pure;           /* SOURCE, or SEGS of SOURCEs only: copy_file_range can move it */
    mpk_node *next_alloc;
};

typedef struct {
    mpk_node *all;       /* every node, for freeing */
    mpk_error *err;
} builder;

static mpk_node *node_new(builder *b, node_kind k, const mpk_tmeta *m)
{
    mpk_node *n = mpk_calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->kind = k;
    n->meta = *m;
    mpk_tensor_nbytes(m->dtype, m->shape, m->ndim, &n->nbytes);
    n->next_alloc = b->all;
    b->all = n;
    n->pure = k == N_SOURCE || k == N_SEGS;
    return n;
}

static bool seg_raw(mpk_node *out, mpk_node *src, uint64_t off, uint64_t len, uint64_t *dst)
{
    if (out->n_segs) {
        seg *l = &out->segs[out->n_segs - 1];
        if (l->src == src && l->src_off + l->len == off) {
            l->len += len;
            *dst += len;
            return true;
        }
    }
    seg *ns = mpk_grow(out->segs, out->n_segs, &out->cap_segs, sizeof *ns, 8);
    if (!ns)
        return false;
    out->segs = ns;
    out->segs[out->n_segs++] = (seg){src, off, *dst, len};
    *dst += len;
    if (src->kind != N_SOURCE)
        out->pure = false;
    return true;
}

static size_t seg_find(const mpk_node *n, uint64_t off)
{
    size_t lo = 0, hi = n->n_segs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (n->segs[mid].dst_off + n->segs[mid].len <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Appends bytes [off, off+len) of node x to out, flattening SEGS. *dst is out's fill. */
static bool seg_append(mpk_node *out, mpk_node *x, uint64_t off, uint64_t len, uint64_t *dst)
{
    if (!len)
        return true;
    if (x->kind != N_SEGS)
        return seg_raw(out, x, off, len, dst);
    uint64_t end = off + len;
    for (size_t k = seg_find(x, off); k < x->n_segs && x->segs[k].dst_off < end; k++) {
        const seg *s = &x->segs[k];
        uint64_t a = off > s->dst_off ? off : s->dst_off;
        uint64_t e = end < s->dst_off + s->len ? end : s->dst_off + s->len;
        if (!seg_raw(out, s->src, s->src_off + (a - s->dst_off), e - a, dst))
            return false;
    }
    return true;
}

static uint64_t prod(const int64_t *s, int from, int to)
{
    uint64_t p = 1;
    for (int i = from; i < to; i++)
        p *= (uint64_t)s[i];
    return p;
}

static uint64_t bytes_from(const mpk_tmeta *m, int dim)
{
    return prod(m->shape, dim, m->ndim) * (uint64_t)mpk_dtype_bits(m->dtype) / 8;
}

/* The node kind of each compute class of the op table. */
static const node_kind compute_node[MPK_COMPUTE_COUNT] = {
    [MPK_COMPUTE_NONE] = N_SEGS,       [MPK_COMPUTE_TRANSPOSE] = N_TRANSPOSE, [MPK_COMPUTE_CAST] = N_CAST,
    [MPK_COMPUTE_DEQUANT] = N_DEQUANT, [MPK_COMPUTE_QUANT] = N_QUANT,
};

typedef struct {
    mpk_node **out, **in;
} range_nodes;

/* One range of a byte permutation: appended to its output node (ranges come in order). */
static bool add_range(void *ctx, const mpk_range *r)
{
    const range_nodes *c = ctx;
    uint64_t fill = r->dst_off;
    return seg_append(c->out[r->dst], c->in[r->src], r->src_off, r->len, &fill);
}

/* Applies one op to a bundle of nodes (nodes[g * n_items + i]): a byte permutation becomes the
 * ranges its table row gives; a computed op, nodes of its compute class over their inputs. */
static mpk_status node_op(builder *b, const mpk_op *op, const mpk_bundle *in, mpk_node **nodes,
                          mpk_bundle *out, mpk_node ***out_nodes, mpk_arena *arena)
{
    mpk_error *err = b->err;
    const mpk_op_desc *d = &mpk_op_descs[op->kind];
    MPK_TRY(d->infer(op, in, out, arena, err));
    int N = in->n_items, no = out->n_groups * out->n_items;
    mpk_node **on = mpk_arena_alloc(arena, sizeof *on * (size_t)(no ? no : 1));
    if (!on)
        MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
    for (int k = 0; k < no; k++)
        if (!(on[k] = node_new(b, compute_node[d->compute], &out->t[k])))
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
    *out_nodes = on;
    if (d->byte_permutation)
        return mpk_op_ranges(op, in, out, add_range, &(range_nodes){on, nodes}, err);
    for (int k = 0; k < no; k++) {
        mpk_node *n = on[k];
        /* inputs: one per output (transpose, cast); weight + scales (dequant); the item an
         * output is the codes (which 0) or the scales (which 1) of (quant) */
        int src = d->compute == MPK_COMPUTE_QUANT ? k % N : k;
        n->in = nodes[src];
        n->in2 = d->compute == MPK_COMPUTE_DEQUANT ? nodes[N + k] : NULL;
        n->which = d->compute == MPK_COMPUTE_QUANT ? k / N : 0;
        n->mx = op->kind == MPK_OP_DEQUANT_MXFP4 || op->kind == MPK_OP_QUANT_MXFP4;
        n->block = op->block;
        n->a = op->dim;
        n->b = op->dim2;
        n->granule = d->granule(op, &in->t[src], &out->t[k], n->which);
        if (d->compute == MPK_COMPUTE_TRANSPOSE && !mpk_dtype_size(in->t[k].dtype))
            MPK_FAIL(err, MPK_E_OP, "exec", "transpose of sub-byte dtype %s", mpk_dtype_name(in->t[k].dtype));
    }
    return MPK_OK;
}

/* ---------------------------------------------------------------- reading nodes */

typedef struct {
    mpk_io *io;
    mpk_io_req *reqs;
    size_t n, cap;
    mpk_error *err;
} reader;

static mpk_status rd_flush(reader *r)
{
    if (!r->n)
        return MPK_OK;
    mpk_status s = mpk_io_submit(r->io, r->reqs, r->n, r->err);
    r->n = 0;
    return s;
}

static mpk_status read_dequant(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r);
static mpk_status read_quant(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r);

static mpk_status node_read(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r)
{
    mpk_error *err = r->err;
    switch (n->kind) {
    case N_SOURCE:
        if (r->n == r->cap)
            MPK_TRY(rd_flush(r));
        r->reqs[r->n++] = (mpk_io_req){.fd = n->fd, .path = n->path, .offset = n->file_off + off, .buf = buf, .len = len};
        return MPK_OK;
    case N_SEGS: {
        uint64_t end = off + len;
        for (size_t k = seg_find(n, off); k < n->n_segs && n->segs[k].dst_off < end; k++) {
            const seg *s = &n->segs[k];
            uint64_t a = off > s->dst_off ? off : s->dst_off;
            uint64_t e = end < s->dst_off + s->len ? end : s->dst_off + s->len;
            MPK_TRY(node_read(s->src, s->src_off + (a - s->dst_off), e - a, buf + (a - off), r));
        }
        return MPK_OK;
    }
    case N_CAST: {
        size_t ie = mpk_dtype_size(n->in->meta.dtype), oe = mpk_dtype_size(n->meta.dtype);
        if (off % oe || len % oe)
            MPK_FAIL(err, MPK_E_OP, "exec", "internal: unaligned cast read");
        uint64_t cnt = len / oe;
        char *tmp = mpk_alloc(cnt * ie);
        if (!tmp)
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory (%llu bytes)", (unsigned long long)(cnt * ie));
        mpk_status s = node_read(n->in, off / oe * ie, cnt * ie, tmp, r);
        if (s == MPK_OK)
            s = rd_flush(r);
        if (s == MPK_OK)
            mpk_cast(n->in->meta.dtype, tmp, n->meta.dtype, buf, cnt);
        free(tmp);
        return s;
    }
    case N_TRANSPOSE: {
        uint64_t first = off / n->granule, last = (off + len - 1) / n->granule, ns = last - first + 1;
        char *tin = mpk_alloc(ns * n->granule), *tout = mpk_alloc(ns * n->granule);
        if (!tin || !tout) {
            free(tin);
            free(tout);
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory (2 x %llu bytes)",
                     (unsigned long long)(ns * n->granule));
        }
        mpk_status s = node_read(n->in, first * n->granule, ns * n->granule, tin, r);
        if (s == MPK_OK)
            s = rd_flush(r);
        if (s == MPK_OK) {
            const mpk_tmeta *m = &n->in->meta;
            size_t el = mpk_dtype_size(m->dtype);
            for (uint64_t k = 0; k < ns; k++)
                mpk_transpose(tin + k * n->granule, tout + k * n->granule, el, m->shape + n->a,
                              m->ndim - n->a, 0, n->b - n->a);
            memcpy(buf, tout + (off - first * n->granule), len);
        }
        free(tin);
        free(tout);
        return s;
    }
    case N_DEQUANT:
        return read_dequant(n, off, len, buf, r);
    case N_QUANT:
        return read_quant(n, off, len, buf, r);
    }
    return MPK_OK;
}

static int64_t cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static mpk_status read_dequant(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r)
{
    mpk_error *err = r->err;
    const mpk_tmeta *m = &n->meta;
    size_t oel = mpk_dtype_size(m->dtype);
    mpk_status s = MPK_OK;
    if (n->mx) {
        uint64_t g = 32 * oel, k0 = off / g, nb = len / g;
        if (off % g || len % g)
            MPK_FAIL(err, MPK_E_OP, "exec", "internal: unaligned MXFP4 read");
        uint8_t *t = mpk_alloc(nb * 17);
        if (!t)
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
        s = node_read(n->in, k0 * 16, nb * 16, (char *)t, r);
        if (s == MPK_OK)
            s = node_read(n->in2, k0, nb, (char *)t + nb * 16, r);
        if (s == MPK_OK)
            s = rd_flush(r);
        if (s == MPK_OK)
            mpk_dequant_mxfp4(t, t + nb * 16, nb, m->dtype, buf);
        free(t);
        return s;
    }
    int64_t R = m->shape[m->ndim - 2], C = m->shape[m->ndim - 1], b = n->block;
    int64_t SR = cdiv(R, b), SC = cdiv(C, b);
    uint64_t row = (uint64_t)C * oel;
    if (off % row || len % row)
        MPK_FAIL(err, MPK_E_OP, "exec", "internal: unaligned dequantize read");
    uint64_t g0 = off / row, g1 = (off + len) / row;
    uint8_t *tw = mpk_alloc((g1 - g0) * (uint64_t)C + 1);
    float *ts = mpk_alloc(((g1 - g0) / (uint64_t)b + 2) * (uint64_t)SC * 4);
    if (!tw || !ts) {
        free(tw);
        free(ts);
        MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
    }
    for (uint64_t g = g0; g < g1 && s == MPK_OK;) {
        uint64_t mat = g / (uint64_t)R, r0 = g % (uint64_t)R;
        uint64_t r1 = r0 + (g1 - g) < (uint64_t)R ? r0 + (g1 - g) : (uint64_t)R;
        uint64_t sb0 = r0 / (uint64_t)b, sb1 = (r1 - 1) / (uint64_t)b;
        s = node_read(n->in, (mat * (uint64_t)R + r0) * (uint64_t)C, (r1 - r0) * (uint64_t)C, (char *)tw, r);
        if (s == MPK_OK)
            s = node_read(n->in2, (mat * (uint64_t)SR + sb0) * (uint64_t)SC * 4, (sb1 - sb0 + 1) * (uint64_t)SC * 4,
                          (char *)ts, r);
        if (s == MPK_OK)
            s = rd_flush(r);
        if (s == MPK_OK)
            mpk_dequant_fp8_rows(n->in->meta.dtype, tw, ts, C, (int)b, (int64_t)r0, (int64_t)r1, m->dtype,
                                 buf + (g - g0) * row);
        g += r1 - r0;
    }
    free(tw);
    free(ts);
    return s;
}

static mpk_status read_quant(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r)
{
    mpk_error *err = r->err;
    const mpk_tmeta *im = &n->in->meta;
    size_t iel = mpk_dtype_size(im->dtype);
    mpk_status s = MPK_OK;
    if (n->mx) {
        uint64_t g = n->which ? 1 : 16, k0 = off / g, nb = len / g, step = 1u << 16;
        if (off % g || len % g)
            MPK_FAIL(err, MPK_E_OP, "exec", "internal: unaligned MXFP4 read");
        char *t = mpk_alloc((nb < step ? nb : step) * 32 * iel + 1);
        if (!t)
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
        for (uint64_t k = 0; k < nb && s == MPK_OK; k += step) {
            uint64_t c = nb - k < step ? nb - k : step;
            s = node_read(n->in, (k0 + k) * 32 * iel, c * 32 * iel, t, r);
            if (s == MPK_OK)
                s = rd_flush(r);
            if (s == MPK_OK)
                mpk_quant_mxfp4(im->dtype, t, c, n->which ? NULL : (uint8_t *)buf + k * 16,
                                n->which ? (uint8_t *)buf + k : NULL);
        }
        free(t);
        return s;
    }
    int64_t R = im->shape[im->ndim - 2], C = im->shape[im->ndim - 1], b = n->block;
    int64_t SC = cdiv(C, b);
    uint64_t mat_in = (uint64_t)(R * C) * iel;
    uint64_t mat_out = n->which ? (uint64_t)(cdiv(R, b) * SC) * 4 : (uint64_t)(R * C);
    if (off % mat_out || len % mat_out)
        MPK_FAIL(err, MPK_E_OP, "exec", "internal: unaligned quantize read");
    char *t = mpk_alloc(mat_in + 1);
    if (!t)
        MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
    for (uint64_t j = 0; j < len / mat_out && s == MPK_OK; j++) {
        s = node_read(n->in, (off / mat_out + j) * mat_in, mat_in, t, r);
        if (s == MPK_OK)
            s = rd_flush(r);
        char *o = buf + j * mat_out;
        for (int64_t r0 = 0; s == MPK_OK && r0 < R; r0 += b)
            mpk_quant_fp8_band(im->dtype, t + (uint64_t)(r0 * C) * iel, C, (int)b, R - r0 < b ? R - r0 : b,
                               n->which ? NULL : (uint8_t *)o + r0 * C,
                               n->which ? (float *)(void *)o + (r0 / b) * SC : NULL);
    }
    free(t);
    return s;
}

/* Calls fn for every source-file range behind bytes [off, off + len) of a pure node, with the
 * offset `at` (counted from the caller's base for off) where that range lands; stops at the
 * first failure. */
typedef mpk_status (*range_fn)(const mpk_node *src, uint64_t file_off, uint64_t len, uint64_t at, void *ctx);

static mpk_status each_source_range(const mpk_node *n, uint64_t off, uint64_t len, uint64_t at, range_fn fn,
                                    void *ctx)
{
    if (n->kind == N_SOURCE)
        return fn(n, n->file_off + off, len, at, ctx);
    uint64_t end = off + len;
    for (size_t k = seg_find(n, off); k < n->n_segs && n->segs[k].dst_off < end; k++) {
        const seg *g = &n->segs[k];
        uint64_t a = off > g->dst_off ? off : g->dst_off;
        uint64_t e = end < g->dst_off + g->len ? end : g->dst_off + g->len;
        MPK_TRY(each_source_range(g->src, g->src_off + (a - g->dst_off), e - a, at + (a - off), fn, ctx));
    }
    return MPK_OK;
}

typedef struct {
    int out_fd;
    const char *out_path, *tensor;
    mpk_error *err;
} copy_ctx;

static mpk_status copy_range(const mpk_node *src, uint64_t file_off, uint64_t len, uint64_t at, void *ctx)
{
    const copy_ctx *cc = ctx;
    loff_t in_o = (loff_t)file_off, out_o = (loff_t)at;
    while (len) {
        ssize_t k = copy_file_range(src->fd, &in_o, cc->out_fd, &out_o, len, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return mpk_error_set(cc->err, MPK_E_IO, k < 0 ? errno : 0, cc->out_path,
                                 "tensor '%s': copy_file_range from source offset %llu to %llu failed: %s",
                                 cc->tensor, (unsigned long long)in_o, (unsigned long long)out_o,
                                 k < 0 ? strerror(errno) : "the source ended early");
        len -= (uint64_t)k;
    }
    return MPK_OK;
}

/* Moves bytes [off, off + len) of a pure node with copy_file_range to out_off in out_fd. */
static mpk_status node_copy(const mpk_node *n, uint64_t off, uint64_t len, const mpk_st_out *out,
                            const char *tensor, uint64_t out_off, mpk_error *err)
{
    copy_ctx cc = {out->fd, out->path, tensor, err};
    return each_source_range(n, off, len, out_off, copy_range, &cc);
}

/* Adds a source range landing at `at` (relative to the data start) to votes[k], where k * 8
 * is the data start modulo 4096 that puts it at the same offset within a page as in its
 * source file. */
static mpk_status phase_vote(const mpk_node *src, uint64_t file_off, uint64_t len, uint64_t at, void *votes)
{
    (void)src;
    uint64_t ph = (file_off + 4096 - at % 4096) % 4096;
    if (ph % 8 == 0)
        ((uint64_t *)votes)[ph / 8] += len;
    return MPK_OK;
}

/* ---------------------------------------------------------------- the run */

/* Scheduling. Writes into one file serialize in the kernel (a buffered write holds the
 * inode lock), and threads queued on that lock spin: two writers to one file took twice the
 * CPU of one and longer in wall time. So each output shard has one writer at a time (a mutex
 * held around its write calls), units are queued per shard in file order, a thread prefers a
 * shard nobody is writing, and a thread that finds every shard busy hashes a completed tensor
 * instead (reading it back from the output, which takes no inode lock) or, with nothing to
 * hash, waits for a shard. Computed units (transpose, cast, quantize) are built outside the
 * lock, so only their writes serialize. */
typedef struct {
    size_t out;          /* plan output index */
    int shard;           /* its output shard */
    uint64_t off, len;   /* the range of the output tensor */
    uint64_t at;         /* where off lands in the shard file */
} unit;

typedef struct {
    size_t lo, hi;       /* its units: units[lo, hi), in file order */
    atomic_size_t next;
    atomic_int busy;     /* threads writing or waiting to write (a hint) */
    pthread_mutex_t lock;
} shard_q;

#define HASH_CHUNK (1u << 20)

typedef struct {
    const mpk_plan *p;
    const mpk_exec_opts *o;
    mpk_st_out **shards;
    shard_q *q;
    size_t *slot;        /* plan output -> tensor index in its shard's file */
    unit *units;
    size_t n_units;
    uint64_t unit_bytes;
    atomic_ullong done_bytes;
    atomic_size_t units_done;
    atomic_int failed;
    atomic_int cfr_ok;   /* copy_file_range still usable */
    /* outputs complete (hashing, early writeback): bytes left to write per output, queue */
    atomic_ullong *left;
    mpk_tensor_hash *hashes;
    size_t *hq;
    size_t hq_head, hq_tail;
    pthread_mutex_t lock;
    pthread_cond_t cv;   /* a complete output queued, or the last unit written */
    mpk_error err;       /* first failure */
    /* resumability (with hashes): outputs of each shard not yet complete; the shard's
     * completion is fsynced and recorded in the stage's journal */
    atomic_size_t *sh_left;
    mpk_stage *stage;
    /* complete shards waiting for the syncer thread (fsync, then the journal line), so that
     * no worker blocks in fsync while there is writing to do */
    size_t *syncq;
    size_t sq_head, sq_tail;
    bool sq_end;
    pthread_cond_t sq_cv;
} run_ctx;

/* Errors raised deep in an op or the I/O engine (out of memory, internal) say "exec", "ops" or
 * "io": the caller that knows the
 * file, and the tensor, puts them in. An error that already names a file (a source shard that
 * failed to read) keeps it and says which output tensor was being written. */
static void err_locate(mpk_error *err, const char *path, const char *tensor)
{
    size_t wl = strlen(err->where);
    bool bare = !wl || strcmp(err->where, "exec") == 0 || strcmp(err->where, "io") == 0 ||
                strcmp(err->where, "ops") == 0;
    if (bare && !tensor && !path)
        return;
    char w[sizeof err->where], m[768];
    snprintf(w, sizeof w, "%s", bare ? path : err->where);
    snprintf(m, sizeof m, "%s", mpk_error_what(err));
    if (!tensor)
        mpk_error_set(err, err->code, err->sys_errno, w, "%s", m);
    else if (bare || (path && strcmp(w, path) == 0))
        mpk_error_set(err, err->code, err->sys_errno, w, "tensor '%s': %s", tensor, m);
    else
        mpk_error_set(err, err->code, err->sys_errno, w, "%s (writing tensor '%s' to %s)", m, tensor,
                      path ? path : "the output");
}

static void run_fail(run_ctx *c, const mpk_error *e)
{
    pthread_mutex_lock(&c->lock);
    if (!atomic_load(&c->failed)) {
        c->err = *e;
        atomic_store(&c->failed, 1);
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->lock);
}

/* What happens to output i once all its bytes are written: its XXH3-128, read back from the
 * shard file (o->hash_outputs), and, when the shards will be fsynced, the start of its
 * writeback, so that the disk works while the rest is copied and the final fsync waits for
 * little more than the last tensors. */
static mpk_status output_complete(run_ctx *c, size_t i, char *buf, mpk_error *err)
{
    const mpk_plan_out *po = &c->p->outs[i];
    const mpk_st_out *so = c->shards[po->shard];
    uint64_t base = so->data_start + so->tensors[c->slot[i]].begin;
    mpk_status s = MPK_OK;
    if (c->hashes)
        s = mpk_hash_file_range(so->fd, base, po->nbytes, buf, HASH_CHUNK, so->path, po->name, &c->hashes[i].hash,
                                err);
    if (s == MPK_OK && !c->o->no_fsync && po->nbytes) /* (length 0 would mean to the end) */
        sync_file_range(so->fd, (off64_t)base, (off64_t)po->nbytes, SYNC_FILE_RANGE_WRITE); /* a hint */
    return s;
}

/* A shard's digest, what its journal line records: XXH3-64 over its outputs' names and
 * hashes in plan order (hashes[i] for every output i in the shard). */
static uint64_t shard_digest(const mpk_plan *p, size_t sh, const mpk_tensor_hash *hashes)
{
    XXH3_state_t *x = XXH3_createState();
    if (!x)
        return 0;
    XXH3_64bits_reset(x);
    for (size_t i = 0; i < p->n_outs; i++)
        if (p->outs[i].shard == (int)sh) {
            XXH3_64bits_update(x, p->outs[i].name, strlen(p->outs[i].name) + 1);
            XXH3_64bits_update(x, &hashes[i].hash, sizeof hashes[i].hash);
        }
    uint64_t d = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return d;
}

/* A shard all of whose outputs are complete: fsync it and record it in the journal, so that
 * a resumed run keeps it. Runs on the syncer thread. */
static mpk_status shard_durable(run_ctx *c, size_t sh, mpk_error *err)
{
    const mpk_st_out *so = c->shards[sh];
    if (!c->o->no_fsync)
        MPK_TRY(mpk_fsync_fd(so->fd, so->path, err));
    char name[64];
    mpk_shard_name(sh + 1, c->p->n_shards, name, sizeof name);
    return mpk_stage_journal_add(c->stage, name, shard_digest(c->p, sh, c->hashes), err);
}

static void shard_complete(run_ctx *c, size_t sh)
{
    pthread_mutex_lock(&c->lock);
    c->syncq[c->sq_tail++] = sh;
    pthread_cond_signal(&c->sq_cv);
    pthread_mutex_unlock(&c->lock);
}

/* Lets the syncer finish what is queued, then joins it. */
static void stop_syncer(run_ctx *c, bool running, pthread_t th)
{
    if (!running)
        return;
    pthread_mutex_lock(&c->lock);
    c->sq_end = true;
    pthread_cond_signal(&c->sq_cv);
    pthread_mutex_unlock(&c->lock);
    pthread_join(th, NULL);
}

static void *syncer(void *arg)
{
    run_ctx *c = arg;
    mpk_error err = {0};
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (c->sq_head == c->sq_tail && !c->sq_end)
            pthread_cond_wait(&c->sq_cv, &c->lock);
        if (c->sq_head == c->sq_tail)
            break;
        size_t sh = c->syncq[c->sq_head++];
        pthread_mutex_unlock(&c->lock);
        if (!atomic_load(&c->failed) && shard_durable(c, sh, &err) != MPK_OK)
            run_fail(c, &err);
        pthread_mutex_lock(&c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Finishes one queued complete output (output_complete): 1 if it did, 0 if none was queued,
 * -1 on failure. */
static int finish_one(run_ctx *c, char **buf, mpk_error *err)
{
    if (!c->hq)
        return 0;
    pthread_mutex_lock(&c->lock);
    bool any = c->hq_head < c->hq_tail;
    size_t i = any ? c->hq[c->hq_head++] : 0;
    pthread_mutex_unlock(&c->lock);
    if (!any)
        return 0;
    if (c->hashes && !*buf && !(*buf = mpk_alloc(HASH_CHUNK))) {
        mpk_error_set(err, MPK_E_NOMEM, 0, "exec", "out of memory");
        return -1;
    }
    if (output_complete(c, i, *buf, err) != MPK_OK) {
        err_locate(err, c->shards[c->p->outs[i].shard]->path, c->p->outs[i].name);
        return -1;
    }
    int sh = c->p->outs[i].shard;
    if (c->sh_left && atomic_fetch_sub(&c->sh_left[sh], 1) == 1)
        shard_complete(c, (size_t)sh);
    return 1;
}

/* Takes a shard's write lock; while another thread holds it, handles complete outputs. */
static mpk_status lock_shard(run_ctx *c, shard_q *q, char **hbuf, mpk_error *err)
{
    atomic_fetch_add(&q->busy, 1);
    while (pthread_mutex_trylock(&q->lock) != 0) {
        int h = finish_one(c, hbuf, err);
        if (h < 0) {
            atomic_fetch_sub(&q->busy, 1);
            return err->code;
        }
        if (h == 0) {
            pthread_mutex_lock(&q->lock);
            break;
        }
    }
    return MPK_OK;
}

static void unlock_shard(shard_q *q)
{
    pthread_mutex_unlock(&q->lock);
    atomic_fetch_sub(&q->busy, 1);
}

static void written(run_ctx *c, const unit *w)
{
    atomic_fetch_add(&c->done_bytes, w->len);
    bool last = atomic_fetch_add(&c->units_done, 1) + 1 == c->n_units;
    bool complete = c->left && atomic_fetch_sub(&c->left[w->out], w->len) == w->len;
    if (complete || last) {
        pthread_mutex_lock(&c->lock);
        if (complete)
            c->hq[c->hq_tail++] = w->out;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->lock);
    }
}

/* Claims the next unit: first from a shard no thread is writing (starting at `home`), else,
 * after hashing one complete output if one is queued, from the least busy shard with units
 * left. Returns the unit index, SIZE_MAX when every unit is claimed, or SIZE_MAX - 1 when it
 * hashed instead (or failed doing so: c->failed is then set). */
static size_t claim(run_ctx *c, size_t home, char **hbuf, mpk_error *err)
{
    size_t ns = c->p->n_shards;
    for (int pass = 0; pass < 2; pass++) {
        size_t best = SIZE_MAX;
        int best_busy = 0;
        for (size_t k = 0; k < ns; k++) {
            shard_q *q = &c->q[(home + k) % ns];
            if (atomic_load(&q->next) >= q->hi)
                continue;
            int b = atomic_load(&q->busy);
            if (pass == 0 && b > 0)
                continue;
            if (best == SIZE_MAX || b < best_busy) {
                best = (home + k) % ns;
                best_busy = b;
            }
        }
        if (best != SIZE_MAX) {
            size_t u = atomic_fetch_add(&c->q[best].next, 1);
            if (u < c->q[best].hi)
                return u;
            pass--; /* lost the race for that shard's last unit: look again */
            continue;
        }
        if (pass == 0) {
            int h = finish_one(c, hbuf, err);
            if (h != 0) {
                if (h < 0)
                    run_fail(c, err);
                return SIZE_MAX - 1;
            }
        }
    }
    return SIZE_MAX;
}

typedef struct {
    run_ctx *c;
    size_t home;         /* the shard a thread looks at first */
} worker_arg;

static void *worker(void *arg)
{
    run_ctx *c = ((worker_arg *)arg)->c;
    size_t home = ((worker_arg *)arg)->home;
    mpk_error err = {0};
    reader r = {.cap = 256, .err = &err};
    char *buf = NULL, *hbuf = NULL;
    r.reqs = mpk_calloc(r.cap, sizeof *r.reqs);
    if (!r.reqs || mpk_io_create(c->o->io, 32, 4u << 20, &r.io, &err) != MPK_OK) {
        if (!r.reqs)
            mpk_error_set(&err, MPK_E_NOMEM, 0, "exec", "out of memory");
        run_fail(c, &err);
        free(r.reqs);
        return NULL;
    }
    while (!atomic_load(&c->failed)) {
        size_t u = claim(c, home, &hbuf, &err);
        if (u == SIZE_MAX - 1)
            continue;
        if (u == SIZE_MAX) { /* nothing left to claim: handle what others complete, then stop */
            int h;
            while ((h = finish_one(c, &hbuf, &err)) > 0)
                ;
            if (h < 0)
                run_fail(c, &err);
            if (h < 0 || !c->hq)
                break;
            pthread_mutex_lock(&c->lock);
            while (c->hq_head == c->hq_tail && atomic_load(&c->units_done) < c->n_units && !atomic_load(&c->failed))
                pthread_cond_wait(&c->cv, &c->lock);
            bool finished = c->hq_head == c->hq_tail;
            pthread_mutex_unlock(&c->lock);
            if (finished)
                break;
            continue;
        }
        const unit *w = &c->units[u];
        const mpk_plan_out *po = &c->p->outs[w->out];
        mpk_st_out *so = c->shards[w->shard];
        shard_q *q = &c->q[w->shard];
        mpk_status s = MPK_OK;
        bool done = false;
        if (po->node->pure && c->o->use_copy_range && atomic_load(&c->cfr_ok)) {
            if ((s = lock_shard(c, q, &hbuf, &err)) == MPK_OK) {
                s = node_copy(po->node, w->off, w->len, so, po->name, w->at, &err);
                unlock_shard(q);
                if (s == MPK_OK) {
                    done = true;
                } else if (err.sys_errno == EXDEV || err.sys_errno == EINVAL || err.sys_errno == ENOSYS ||
                           err.sys_errno == EOPNOTSUPP) {
                    atomic_store(&c->cfr_ok, 0); /* fall back to reading */
                    s = MPK_OK;
                }
            }
        }
        if (!done && s == MPK_OK) {
            if (!buf && !(buf = mpk_alloc(c->unit_bytes))) {
                s = mpk_error_set(&err, MPK_E_NOMEM, 0, so->path, "tensor '%s': out of memory for a "
                                  "%llu-byte buffer", po->name, (unsigned long long)c->unit_bytes);
            } else {
                s = node_read(po->node, w->off, w->len, buf, &r);
                if (s == MPK_OK)
                    s = rd_flush(&r);
                if (s == MPK_OK && (s = lock_shard(c, q, &hbuf, &err)) == MPK_OK) {
                    s = mpk_st_out_write(so, c->slot[w->out], w->off, buf, w->len, &err);
                    unlock_shard(q);
                }
            }
        }
        if (s != MPK_OK) {
            err_locate(&err, so->path, po->name);
            run_fail(c, &err);
            break;
        }
        written(c, w);
    }
    free(buf);
    free(hbuf);
    free(r.reqs);
    mpk_io_free(r.io);
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void progress(run_ctx *c, const mpk_exec_opts *o, double t0)
{
    if (o->progress)
        o->progress(o->progress_ctx, atomic_load(&c->done_bytes), c->p->total_bytes, now_s() - t0);
}

/* Top-level names of SRC that are not copied beside the output: the checkpoint's own shards,
 * index and manifest (the output has its own), config.json when rewritten, other
 * .safetensors files (not part of the checkpoint: a consolidated copy would double the
 * output), and a git repository's metadata. */
typedef struct {
    const mpk_plan *p;
    const mpk_exec_opts *o;
    mpk_side_stats *st;
} side_ctx;

static bool side_skip(const char *n, void *ctx)
{
    side_ctx *sc = ctx;
    size_t l = strlen(n);
    if (strcmp(n, "model.safetensors.index.json") == 0 || strcmp(n, "moepack.manifest.json") == 0 ||
        (sc->o->config_json && strcmp(n, "config.json") == 0))
        return true;
    for (size_t i = 0; i < sc->p->src->n_shards; i++)
        if (strcmp(n, sc->p->src->shards[i].name) == 0)
            return true;
    if ((l > 12 && strcmp(n + l - 12, ".safetensors") == 0) || strcmp(n, ".git") == 0) {
        mpk_exec_warn(sc->o, "skipped %s/%s: %s", sc->p->src->dir, n,
                      n[0] == '.' ? "a git repository's metadata (the output is not a clone)"
                                  : "a .safetensors file that is not part of the checkpoint");
        sc->st->skipped++;
        return true;
    }
    return false;
}

static mpk_status copy_side_files(const mpk_plan *p, const char *tmp, const mpk_exec_opts *o,
                                  mpk_side_stats *st, mpk_error *err)
{
    if (o->config_json) {
        char *to = mpk_path_join(tmp, "config.json");
        mpk_status s = to ? mpk_write_file(to, o->config_json, strlen(o->config_json), !o->no_fsync, err)
                          : mpk_error_set(err, MPK_E_NOMEM, 0, "exec", "out of memory");
        free(to);
        MPK_TRY(s);
    }
    if (!p->src->is_dir)
        return MPK_OK;
    side_ctx sc = {p, o, st};
    return mpk_copy_tree(p->src->dir, tmp, side_skip, &sc, o, st, err);
}

/* What determines the output bytes: a resumed run continues only a run with the same. */
static uint64_t plan_digest(const mpk_plan *p, const mpk_exec_opts *o)
{
    XXH3_state_t *x = XXH3_createState();
    if (!x)
        return 0;
    XXH3_64bits_reset(x);
#define ADD(ptr, len) XXH3_64bits_update(x, (ptr), (len))
#define ADDS(str) ADD((str) ? (str) : "", (str) ? strlen(str) + 1 : 1)
    ADDS(MPK_VERSION);
    ADDS(p->spec->name);
    ADD(&p->spec->reversed, sizeof p->spec->reversed);
    char *js = p->spec->json ? cJSON_PrintUnformatted(p->spec->json) : NULL;
    ADDS(js);
    free(js);
    for (size_t i = 0; i < p->src->n_shards; i++) {
        struct stat st = {0};
        fstat(p->src->shards[i].fd, &st);
        uint64_t v[5] = {(uint64_t)st.st_dev, (uint64_t)st.st_ino, (uint64_t)st.st_size,
                         (uint64_t)st.st_mtim.tv_sec, (uint64_t)st.st_mtim.tv_nsec};
        ADDS(p->src->shards[i].path);
        ADD(v, sizeof v);
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        const mpk_plan_out *po = &p->outs[i];
        int64_t v[4 + MPK_MAX_DIMS] = {po->meta.dtype, po->meta.ndim, po->shard, po->quant};
        memcpy(v + 4, po->meta.shape, sizeof po->meta.shape);
        ADDS(po->name);
        ADD(v, sizeof v);
        ADD(&po->nbytes, sizeof po->nbytes);
    }
    uint64_t v[3] = {p->n_shards, (uint64_t)p->fp8_block, p->n_views};
    ADD(v, sizeof v);
    for (size_t i = 0; i < o->n_metadata; i++) {
        ADDS(o->metadata[i].key);
        ADDS(o->metadata[i].value);
    }
    ADDS(o->config_json);
#undef ADD
#undef ADDS
    uint64_t d = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return d;
}

/* A source tensor's node: its bytes, or for a --dequantize view the FP8 weight times its
 * scale grid. */
static mpk_node *source_node(builder *b, const mpk_plan *p, const mpk_ckpt_tensor *t, const mpk_tmeta *m)
{
    const mpk_plan_view *v = mpk_plan_view_of(p, t);
    if (!v) {
        mpk_node *n = node_new(b, N_SOURCE, m);
        if (n) {
            n->fd = p->src->shards[t->shard].fd;
            n->path = p->src->shards[t->shard].path;
            n->file_off = t->file_offset;
        }
        return n;
    }
    mpk_tmeta wm = {v->weight->info->dtype, v->weight->info->ndim, {0}}, sm = wm;
    memcpy(wm.shape, v->weight->info->shape, sizeof wm.shape);
    sm.dtype = v->scale->info->dtype;
    sm.ndim = v->scale->info->ndim;
    memcpy(sm.shape, v->scale->info->shape, sizeof sm.shape);
    mpk_node *n = node_new(b, N_DEQUANT, m);
    if (!n || !(n->in = source_node(b, p, v->weight, &wm)) || !(n->in2 = source_node(b, p, v->scale, &sm)))
        return NULL;
    n->block = p->fp8_block;
    mpk_op op = {.kind = MPK_OP_DEQUANT_FP8, .block = p->fp8_block, .dtype = m->dtype};
    n->granule = mpk_op_descs[op.kind].granule(&op, &wm, m, 0);
    return n;
}

static mpk_status build_nodes(const mpk_plan *p, builder *b, mpk_arena *arena)
{
    mpk_error *err = b->err;
    mpk_node ***group_out = mpk_arena_alloc(arena, sizeof *group_out * (p->n_groups + 1));
    if (!group_out)
        MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
    for (size_t gi = 0; gi < p->n_groups; gi++) {
        const mpk_plan_group *g = &p->groups[gi];
        const mpk_rule *r = g->rule;
        int k = r->n_sources * g->n_items;
        mpk_bundle in = {r->n_sources, g->n_items, mpk_arena_alloc(arena, sizeof(mpk_tmeta) * (size_t)k)};
        mpk_node **nodes = mpk_arena_alloc(arena, sizeof *nodes * (size_t)k);
        if (!in.t || !nodes)
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
        for (int i = 0; i < k; i++) {
            const mpk_ckpt_tensor *t = g->src[i];
            in.t[i] = (mpk_tmeta){t->info->dtype, t->info->ndim, {0}};
            memcpy(in.t[i].shape, t->info->shape, sizeof t->info->shape);
            if (!(nodes[i] = source_node(b, p, t, &in.t[i])))
                MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
        }
        for (int o = 0; o < r->n_ops; o++) {
            mpk_bundle next;
            mpk_node **nn = NULL;
            MPK_TRY(node_op(b, &r->ops[o], &in, nodes, &next, &nn, arena));
            in = next;
            nodes = nn;
        }
        group_out[gi] = nodes;
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        mpk_plan_out *o = &p->outs[i];
        if (o->group >= 0) {
            o->node = group_out[o->group][o->slot];
            if (o->quant) { /* --quantize: FP8 codes or the scale grid of the rule's output */
                mpk_node *q = node_new(b, N_QUANT, &o->meta);
                if (!q)
                    MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
                q->in = o->node;
                q->which = o->quant - 1;
                q->block = p->fp8_block;
                mpk_op op = {.kind = MPK_OP_QUANT_FP8, .block = p->fp8_block};
                q->granule = mpk_op_descs[op.kind].granule(&op, &o->node->meta, &o->meta, q->which);
                o->node = q;
            }
        } else if (!(o->node = source_node(b, p, o->pass, &o->meta))) {
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
        }
    }
    return MPK_OK;
}

/* Largest block a node's reads allocate at once (transposes read whole slabs). */
static uint64_t node_granule(const mpk_node *n)
{
    if (n->kind != N_SOURCE && n->kind != N_SEGS)
        return n->granule;
    if (n->kind == N_SEGS) { /* ranges of computed nodes (e.g. dequantized experts, stacked) */
        uint64_t g = 1;
        for (size_t i = 0; i < n->n_segs; i++) {
            uint64_t h = node_granule(n->segs[i].src), a = g, b = h;
            while (b) { /* g = lcm(g, h) */
                uint64_t t = a % b;
                a = b;
                b = t;
            }
            if (g / a > (UINT64_C(1) << 40) / h)
                return g > h ? g : h; /* absurd: keep the larger, the read will say if it fails */
            g = g / a * h;
        }
        return g;
    }
    return 1;
}

static uint64_t max_slab(const mpk_node *n)
{
    uint64_t m = 0;
    if (n->kind == N_TRANSPOSE)
        m = n->granule;
    if (n->kind == N_QUANT && !n->mx) /* one input matrix at a time */
        m = bytes_from(&n->in->meta, n->in->meta.ndim - 2);
    if (n->kind == N_TRANSPOSE || n->kind == N_CAST || n->kind == N_QUANT || n->kind == N_DEQUANT) {
        uint64_t k = max_slab(n->in);
        if (n->in2) {
            uint64_t k2 = max_slab(n->in2);
            k = k2 > k ? k2 : k;
        }
        return k > m ? k : m;
    }
    if (n->kind == N_SEGS)
        for (size_t i = 0; i < n->n_segs; i++) {
            uint64_t k = n->segs[i].src->kind == N_SOURCE ? 0 : max_slab(n->segs[i].src);
            if (k > m)
                m = k;
        }
    return m;
}

static int file_order(const void *a, const void *b)
{
    const unit *x = a, *y = b;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    return x->at < y->at ? -1 : x->at > y->at;
}

/* An adopted directory keeps only what its journal says is complete (checked later). */
static void clean_adopted(const mpk_stage *stage)
{
    DIR *d = opendir(stage->tmp);
    struct dirent *e;
    uint64_t dg;
    while (d && (e = readdir(d))) {
        const char *n = e->d_name;
        if ((n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2]))) || strcmp(n, MPK_RUN_FILE) == 0 ||
            strcmp(n, MPK_JOURNAL_FILE) == 0 || mpk_stage_journal_find(stage, n, &dg))
            continue;
        char *path = mpk_path_join(stage->tmp, n);
        if (path)
            mpk_rmrf(path);
        free(path);
    }
    if (d)
        closedir(d);
}

/* A shard an interrupted run recorded as complete is kept when its outputs hash to the
 * digest it recorded (c->hashes filled for them); else it is redone. */
static bool shard_checks_out(run_ctx *c, size_t sh, uint64_t want)
{
    if (!c->hashes)
        return false;
    char *buf = mpk_alloc(HASH_CHUNK);
    const mpk_st_out *so = c->shards[sh];
    mpk_error ig;
    bool ok = buf != NULL;
    for (size_t i = 0; ok && i < c->p->n_outs; i++) {
        const mpk_plan_out *po = &c->p->outs[i];
        if (po->shard == (int)sh)
            ok = mpk_hash_file_range(so->fd, so->data_start + so->tensors[c->slot[i]].begin, po->nbytes, buf,
                                     HASH_CHUNK, so->path, po->name, &c->hashes[i].hash, &ig) == MPK_OK;
    }
    free(buf);
    return ok && shard_digest(c->p, sh, c->hashes) == want;
}

mpk_status mpk_exec(const mpk_plan *p, const char *dst, const mpk_exec_opts *o,
                    mpk_exec_stats *stats, mpk_error *err)
{
    double t0 = now_s();
    memset(stats, 0, sizeof *stats);
    const char *src_path = p->src->is_dir ? p->src->dir : p->src->n_shards ? p->src->shards[0].path : "";
    MPK_TRY(mpk_overlap_check(src_path, p->src, dst, err));
    struct stat st;
    if (lstat(dst, &st) == 0 && !o->force)
        MPK_FAIL(err, MPK_E_DST_EXISTS, dst, "destination exists (use --force to replace it)");
    if (o->cancel && *o->cancel)
        MPK_FAIL(err, MPK_E_CANCELLED, dst, "cancelled before anything was written");
    int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1)
        threads = 1;
    if (threads > 64)
        threads = 64;
    mpk_stage stage;
    mpk_status s = mpk_stage_open(&stage, dst, plan_digest(p, o), o, err);
    stats->resumed = stage.adopted;
    stats->stale_removed = stage.stale_removed;
    if (s != MPK_OK) {
        mpk_stage_close(&stage, false);
        return s;
    }
    if (stage.adopted)
        clean_adopted(&stage);
    const char *tmp = stage.tmp;
    bool *reopened = mpk_calloc(p->n_shards + 1, sizeof *reopened);
    builder b = {NULL, err};
    mpk_arena *arena = mpk_arena_new();
    run_ctx c;
    memset(&c, 0, sizeof c);
    c.p = p;
    c.o = o;
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.cv, NULL);
    pthread_cond_init(&c.sq_cv, NULL);
    atomic_store(&c.cfr_ok, 1);
    mpk_tensor_info **infos = NULL;
    c.shards = mpk_calloc(p->n_shards, sizeof *c.shards);
    c.slot = mpk_calloc(p->n_outs + 1, sizeof *c.slot);
    infos = mpk_calloc(p->n_shards, sizeof *infos);
    c.stage = &stage;
    if (!arena || !c.shards || !c.slot || !infos || !reopened) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
        goto done;
    }
    if ((s = build_nodes(p, &b, arena)) != MPK_OK)
        goto done;
    /* memory: one unit buffer per thread plus transpose temporaries (2 slabs + read) */
    uint64_t per_thread = o->mem / (uint64_t)threads;
    uint64_t slab = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t m = max_slab(p->outs[i].node);
        if (m > slab)
            slab = m;
    }
    uint64_t unit_bytes = per_thread / 3;
    if (unit_bytes > (64u << 20))
        unit_bytes = 64u << 20;
    if (slab && unit_bytes < slab)
        unit_bytes = slab;
    if (unit_bytes < 4096)
        unit_bytes = 4096;
    if (slab && 3 * slab > per_thread) {
        char h1[32], h2[32];
        s = mpk_error_set(err, MPK_E_MEMORY_BUDGET, 0, dst,
                          "a transpose block needs %s per thread (3 x %s) but --mem gives %s per "
                          "thread; raise --mem or lower --threads",
                          mpk_human_bytes(3 * slab, h1, sizeof h1), mpk_human_bytes(slab, h2, sizeof h2),
                          mpk_human_bytes(per_thread, h1 + 16, 16));
        goto done;
    }
    /* a unit never splits a computed node's granule (a row to dequantize, a matrix to
     * transpose), also when that node sits inside a merge or concat; the buffer holds one */
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t g = node_granule(p->outs[i].node);
        if (g > unit_bytes)
            unit_bytes = g;
    }
    c.unit_bytes = unit_bytes;
    /* shard files */
    for (size_t sh = 0; sh < p->n_shards; sh++) {
        size_t n = 0;
        for (size_t i = 0; i < p->n_outs; i++)
            n += p->outs[i].shard == (int)sh;
        infos[sh] = mpk_calloc(n + 1, sizeof **infos);
        if (!infos[sh]) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
            goto done;
        }
        n = 0;
        for (size_t i = 0; i < p->n_outs; i++)
            if (p->outs[i].shard == (int)sh) {
                mpk_tensor_info *t = &infos[sh][n++];
                t->name = p->outs[i].name;
                t->dtype = p->outs[i].meta.dtype;
                t->ndim = p->outs[i].meta.ndim;
                memcpy(t->shape, p->outs[i].meta.shape, sizeof t->shape);
            }
        /* lay the shard out (sorts infos[sh]), map plan outputs to their place in it */
        char *hdr;
        size_t hlen;
        if ((s = mpk_st_layout(infos[sh], n, o->metadata, o->n_metadata, &hdr, &hlen, NULL, err)) != MPK_OK)
            goto done;
        free(hdr);
        mpk_strmap m;
        if (mpk_strmap_init(&m, n) != MPK_OK) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
            goto done;
        }
        for (size_t k = 0; k < n; k++)
            mpk_strmap_put(&m, infos[sh][k].name, strlen(infos[sh][k].name), k, NULL);
        for (size_t i = 0; i < p->n_outs; i++)
            if (p->outs[i].shard == (int)sh)
                mpk_strmap_get(&m, p->outs[i].name, strlen(p->outs[i].name), &c.slot[i]);
        mpk_strmap_free(&m);
        /* the data start (modulo a page) that puts the most copied bytes at the same offset
         * within a page as their source (whatever the copy mode: the output is the same) */
        int phase = -1;
        {
            uint64_t votes[4096 / 8] = {0}, best = 0;
            for (size_t i = 0; i < p->n_outs; i++)
                if (p->outs[i].shard == (int)sh && p->outs[i].node->pure)
                    each_source_range(p->outs[i].node, 0, p->outs[i].nbytes, infos[sh][c.slot[i]].begin,
                                      phase_vote, votes);
            for (int k = 0; k < 4096 / 8; k++)
                if (votes[k] > best) {
                    best = votes[k];
                    phase = k * 8;
                }
        }
        char name[64];
        mpk_shard_name(sh + 1, p->n_shards, name, sizeof name);
        char *path = mpk_path_join(tmp, name);
        uint64_t dg;
        mpk_error ig;
        if (path && stage.adopted && mpk_stage_journal_find(&stage, name, &dg)) {
            reopened[sh] = mpk_st_out_reopen(path, infos[sh], n, o->metadata, o->n_metadata, phase, &c.shards[sh],
                                             &ig) == MPK_OK;
            if (!reopened[sh])
                unlink(path);
        }
        s = !path ? mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory")
            : reopened[sh] ? MPK_OK
                           : mpk_st_out_create(path, infos[sh], n, o->metadata, o->n_metadata, phase, &c.shards[sh], err);
        free(path);
        if (s != MPK_OK)
            goto done;
    }
    /* units */
    size_t n_units = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t g = node_granule(p->outs[i].node), u = unit_bytes < g ? g : unit_bytes - unit_bytes % g;
        n_units += p->outs[i].nbytes ? (size_t)((p->outs[i].nbytes + u - 1) / u) : 0;
    }
    c.units = mpk_calloc(n_units + 1, sizeof *c.units);
    if (!c.units) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t g = node_granule(p->outs[i].node), u = unit_bytes < g ? g : unit_bytes - unit_bytes % g;
        const mpk_st_out *so = c.shards[p->outs[i].shard];
        uint64_t base = so->data_start + so->tensors[c.slot[i]].begin;
        for (uint64_t off = 0; off < p->outs[i].nbytes; off += u)
            c.units[c.n_units++] = (unit){i, p->outs[i].shard, off,
                                          p->outs[i].nbytes - off < u ? p->outs[i].nbytes - off : u, base + off};
    }
    /* per-shard queues in file order */
    qsort(c.units, c.n_units, sizeof *c.units, file_order);
    c.q = mpk_calloc(p->n_shards, sizeof *c.q);
    if (!c.q) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
        goto done;
    }
    for (size_t u = 0, sh = 0; sh < p->n_shards; sh++) {
        c.q[sh].lo = u;
        while (u < c.n_units && (size_t)c.units[u].shard == sh)
            u++;
        c.q[sh].hi = u;
        atomic_init(&c.q[sh].next, c.q[sh].lo);
        atomic_init(&c.q[sh].busy, 0);
        pthread_mutex_init(&c.q[sh].lock, NULL);
    }
    if (o->hash_outputs || !o->no_fsync) {
        c.left = mpk_calloc(p->n_outs + 1, sizeof *c.left);
        c.hashes = o->hash_outputs ? mpk_calloc(p->n_outs + 1, sizeof *c.hashes) : NULL;
        c.sh_left = o->hash_outputs ? mpk_calloc(p->n_shards + 1, sizeof *c.sh_left) : NULL;
        c.syncq = o->hash_outputs ? mpk_calloc(p->n_shards + 1, sizeof *c.syncq) : NULL;
        c.hq = mpk_calloc(p->n_outs + 1, sizeof *c.hq);
        if (!c.left || (o->hash_outputs && (!c.hashes || !c.sh_left || !c.syncq)) || !c.hq) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < p->n_outs; i++) {
            const mpk_plan_out *po = &p->outs[i];
            atomic_init(&c.left[i], po->nbytes);
            if (c.hashes) {
                c.hashes[i] = (mpk_tensor_hash){.name = po->name, .dtype = po->meta.dtype, .ndim = po->meta.ndim};
                memcpy(c.hashes[i].shape, po->meta.shape, sizeof c.hashes[i].shape);
            }
        }
    }
    /* resuming: shards the dead run completed are kept once they check out, their units
     * counted as done; the others are written again from scratch */
    for (size_t sh = 0; sh < p->n_shards; sh++) {
        if (!reopened[sh])
            continue;
        uint64_t want = 0;
        char name[64];
        mpk_shard_name(sh + 1, p->n_shards, name, sizeof name);
        mpk_stage_journal_find(&stage, name, &want);
        if (shard_checks_out(&c, sh, want)) {
            stats->shards_kept++;
            for (size_t u = c.q[sh].lo; u < c.q[sh].hi; u++) {
                atomic_fetch_add(&c.units_done, 1);
                atomic_fetch_add(&c.done_bytes, c.units[u].len);
            }
            atomic_store(&c.q[sh].next, c.q[sh].hi);
            continue;
        }
        mpk_tensor_info *ti = c.shards[sh]->tensors;
        size_t nt = c.shards[sh]->n_tensors;
        uint64_t ds = c.shards[sh]->data_start;
        char *path = mpk_strndup(c.shards[sh]->path, strlen(c.shards[sh]->path));
        mpk_st_out_close(c.shards[sh], false, NULL);
        c.shards[sh] = NULL;
        reopened[sh] = false;
        if (path)
            unlink(path);
        /* the same layout again (the phase is the one that gave data_start) */
        s = !path ? mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory")
                  : mpk_st_out_create(path, ti, nt, o->metadata, o->n_metadata, (int)(ds % 4096), &c.shards[sh], err);
        free(path);
        if (s != MPK_OK)
            goto done;
    }
    for (size_t i = 0; c.left && i < p->n_outs; i++) {
        const mpk_plan_out *po = &p->outs[i];
        if (reopened[po->shard]) {
            atomic_store(&c.left[i], 0);
            continue;
        }
        if (c.sh_left)
            atomic_fetch_add(&c.sh_left[po->shard], 1);
        if (!po->nbytes) /* no unit will complete it: complete from the start */
            c.hq[c.hq_tail++] = i;
    }
    pthread_t th[64], sync_th;
    worker_arg args[64];
    int started = 0;
    bool syncing = c.syncq && pthread_create(&sync_th, NULL, syncer, &c) == 0;
    if (c.syncq && !syncing) {
        s = mpk_error_set(err, MPK_E_IO, errno, dst, "cannot start the syncer thread");
        goto done;
    }
    for (int i = 0; i < threads; i++) {
        args[i] = (worker_arg){&c, (size_t)i % (p->n_shards ? p->n_shards : 1)};
        if (pthread_create(&th[i], NULL, worker, &args[i]) != 0)
            break;
        started++;
    }
    if (!started) {
        s = mpk_error_set(err, MPK_E_IO, errno, dst, "cannot start worker threads");
        stop_syncer(&c, syncing, sync_th);
        goto done;
    }
    /* the calling thread reports progress and watches the cancel flag meanwhile */
    if (o->progress || o->cancel) {
        while (atomic_load(&c.units_done) < c.n_units && !atomic_load(&c.failed)) {
            if (o->cancel && *o->cancel) {
                mpk_error ce = {0};
                mpk_error_set(&ce, MPK_E_CANCELLED, 0, dst, "cancelled; nothing was written there");
                run_fail(&c, &ce);
                break;
            }
            progress(&c, o, t0);
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    stop_syncer(&c, syncing, sync_th);
    if (!atomic_load(&c.failed))
        progress(&c, o, t0);
    if (atomic_load(&c.failed)) {
        *err = c.err;
        s = c.err.code;
        goto done;
    }
    for (size_t sh = 0; sh < p->n_shards; sh++) {
        mpk_st_out *so = c.shards[sh];
        c.shards[sh] = NULL;
        if ((s = mpk_st_out_close(so, !o->no_fsync, err)) != MPK_OK)
            goto done;
    }
    if (p->n_shards > 1) {
        const char **names = mpk_calloc(p->n_outs + 1, sizeof *names);
        const char **files = mpk_calloc(p->n_outs + 1, sizeof *files);
        char(*fn)[64] = mpk_calloc(p->n_shards, 64);
        if (names && files && fn) {
            for (size_t sh = 0; sh < p->n_shards; sh++)
                mpk_shard_name(sh + 1, p->n_shards, fn[sh], 64);
            for (size_t i = 0; i < p->n_outs; i++) {
                names[i] = p->outs[i].name;
                files[i] = fn[p->outs[i].shard];
            }
            s = mpk_index_write(tmp, names, files, p->n_outs, p->total_bytes, !o->no_fsync, err);
        } else {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
        }
        free(names);
        free(files);
        free(fn);
        if (s != MPK_OK)
            goto done;
    }
    if ((s = copy_side_files(p, tmp, o, &stats->side, err)) != MPK_OK)
        goto done;
    if (o->finish && (s = o->finish(tmp, c.hashes, c.hashes ? p->n_outs : 0, err)) != MPK_OK)
        goto done;
    /* into place: the source is checked again (written in place or renamed while we read) */
    if ((s = mpk_ckpt_check_unchanged(p->src, err)) != MPK_OK ||
        (s = mpk_overlap_check(src_path, p->src, dst, err)) != MPK_OK ||
        (s = mpk_stage_commit(&stage, o->force, err)) != MPK_OK)
        goto done;
    stats->tensors_in = p->src->n_tensors;
    stats->tensors_out = p->n_outs;
    stats->bytes_out = p->total_bytes;
    stats->threads = started;
    stats->used_copy_range = o->use_copy_range && atomic_load(&c.cfr_ok);
done:
    if (c.shards)
        for (size_t sh = 0; sh < p->n_shards; sh++)
            mpk_st_out_close(c.shards[sh], false, NULL);
    /* a failed run's output stays for --resume (unless it lost to another run) */
    mpk_stage_close(&stage, s != MPK_OK && o->resume && s != MPK_E_DST_EXISTS && s != MPK_E_OVERLAP);
    free(reopened);
    if (infos)
        for (size_t sh = 0; sh < p->n_shards; sh++)
            free(infos[sh]);
    free(infos);
    free(c.shards);
    free(c.slot);
    free(c.units);
    if (c.q)
        for (size_t sh = 0; sh < p->n_shards; sh++)
            pthread_mutex_destroy(&c.q[sh].lock);
    free(c.q);
    free(c.left);
    free(c.sh_left);
    free(c.syncq);
    free(c.hashes);
    free(c.hq);
    for (mpk_node *n = b.all, *next; n; n = next) {
        next = n->next_alloc;
        free(n->segs);
        free(n);
    }
    for (size_t i = 0; i < p->n_outs; i++)
        p->outs[i].node = NULL;
    mpk_arena_free(arena);
    pthread_mutex_destroy(&c.lock);
    pthread_cond_destroy(&c.cv);
    pthread_cond_destroy(&c.sq_cv);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        stats->peak_rss_kib = ru.ru_maxrss;
    stats->seconds = now_s() - t0;
    if (s != MPK_OK)
        err_locate(err, dst, NULL);
    return s;
}
