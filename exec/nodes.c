/* nodes.c — reading nodes: sources through the I/O engine, computed nodes through their
 * kernels (transpose, cast, dequantize, quantize) in bounded blocks, and the source ranges
 * behind a pure node (for copy_file_range and the page-phase vote). */
#define _GNU_SOURCE
#include "engine_internal.h"
#include "mpk_config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- reading nodes */


mpk_status ex_rd_flush(reader *r)
{
    if (!r->n)
        return MPK_OK;
    mpk_status s = mpk_io_submit(r->io, r->reqs, r->n, r->err);
    r->n = 0;
    return s;
}

/* After a node's reads into its buffer were queued (s: how that went): on success the reads
 * done; on failure the queued ones dropped, so no later flush writes into the buffer the caller
 * frees next. */
static mpk_status rd_finish(reader *r, mpk_status s)
{
    if (s != MPK_OK) {
        r->n = 0;
        return s;
    }
    return ex_rd_flush(r);
}

static mpk_status read_dequant(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r);
static mpk_status read_quant(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r);

mpk_status ex_node_read(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r)
{
    mpk_error *err = r->err;
    switch (n->kind) {
    case N_SOURCE:
        r->bytes += len;
        if (n->z) /* a compressed shard: its chunks decompressed now */
            return mpk_mpkz_read(n->z, n->file_off - n->data_start + off, len, buf, err);
        if (r->n == r->cap)
            MPK_TRY(ex_rd_flush(r));
        r->reqs[r->n++] = (mpk_io_req){.fd = n->fd, .path = n->path, .offset = n->file_off + off, .buf = buf, .len = len};
        return MPK_OK;
    case N_SEGS: {
        uint64_t end = off + len;
        for (size_t k = ex_seg_find(n, off); k < n->n_segs && n->segs[k].dst_off < end; k++) {
            const seg *s = &n->segs[k];
            uint64_t a = off > s->dst_off ? off : s->dst_off;
            uint64_t e = end < s->dst_off + s->len ? end : s->dst_off + s->len;
            MPK_TRY(ex_node_read(s->src, s->src_off + (a - s->dst_off), e - a, buf + (a - off), r));
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
        mpk_status s = ex_node_read(n->in, off / oe * ie, cnt * ie, tmp, r);
        s = rd_finish(r, s);
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
        mpk_status s = ex_node_read(n->in, first * n->granule, ns * n->granule, tin, r);
        s = rd_finish(r, s);
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

/* NVFP4 codes (8 bytes a block of 16 values), their E4M3 block scales and the F32 global
 * scale (packed: every matrix's and part's, each block decoded with its own), read and decoded
 * block by block. */
static mpk_status read_dequant_nvfp4(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r)
{
    uint64_t g = 16 * mpk_dtype_size(n->meta.dtype), k0 = off / g, nb = len / g;
    if (off % g || len % g)
        MPK_FAIL(r->err, MPK_E_OP, "exec", "internal: unaligned NVFP4 read");
    uint8_t *t = mpk_alloc(nb * 9 + 4);
    if (!t)
        MPK_FAIL(r->err, MPK_E_NOMEM, "exec", "out of memory");
    mpk_status s = ex_node_read(n->in, k0 * 8, nb * 8, (char *)t, r);
    if (s == MPK_OK)
        s = ex_node_read(n->in2, k0, nb, (char *)t + nb * 8, r);
    bool packed = n->vkind == MPK_VIEW_NVFP4_PACKED; /* every global scale of the tensor (small) */
    float *gs = packed ? mpk_alloc(n->in3->nbytes + 4) : NULL;
    if (packed && !gs)
        s = mpk_error_set(r->err, MPK_E_NOMEM, 0, "exec", "out of memory");
    if (s == MPK_OK)
        s = packed ? ex_node_read(n->in3, 0, n->in3->nbytes, (char *)gs, r)
                   : ex_node_read(n->in3, 0, 4, (char *)t + nb * 9, r);
    s = rd_finish(r, s);
    if (s == MPK_OK && packed) {
        const mpk_tmeta *w = &n->in->meta;
        int64_t lead = (int64_t)mpk_prod(w->shape, 0, w->ndim - 2), R = w->shape[w->ndim - 2];
        mpk_dequant_nvfp4_packed(t, t + nb * 8, k0, (size_t)nb, gs, n->meta.shape[n->meta.ndim - 1] / 16, R,
                                 (int64_t)(n->in3->nbytes / 4) / lead, n->meta.dtype, buf);
    } else if (s == MPK_OK) {
        float s2;
        memcpy(&s2, t + nb * 9, 4);
        if (n->vkind == MPK_VIEW_NVFP4_CT)
            mpk_dequant_nvfp4_ct(t, t + nb * 8, (size_t)nb, s2, n->meta.dtype, buf);
        else
            mpk_dequant_nvfp4(t, t + nb * 8, (size_t)nb, s2, n->meta.dtype, buf);
    }
    free(t);
    free(gs);
    return s;
}

/* compressed-tensors' INT4 rows (8 values an I32) with BF16 scales per group; its weight_shape
 * (in3) must say the view's [rows, C]. */
static mpk_status read_dequant_int4(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r)
{
    int64_t C = n->meta.shape[n->meta.ndim - 1], R = n->meta.shape[0], G = n->in2->meta.shape[1];
    uint64_t row = (uint64_t)C * mpk_dtype_size(n->meta.dtype), r0 = off / row, rows = len / row;
    if (off % row || len % row)
        MPK_FAIL(r->err, MPK_E_OP, "exec", "internal: unaligned INT4 read");
    uint8_t *q = mpk_alloc(rows * (uint64_t)C / 2 + rows * (uint64_t)G * 2 + 16);
    if (!q)
        MPK_FAIL(r->err, MPK_E_NOMEM, "exec", "out of memory");
    uint8_t *sc = q + rows * (uint64_t)C / 2, *sh = sc + rows * (uint64_t)G * 2;
    mpk_status s = ex_node_read(n->in, r0 * (uint64_t)C / 2, rows * (uint64_t)C / 2, (char *)q, r);
    if (s == MPK_OK)
        s = ex_node_read(n->in2, r0 * (uint64_t)G * 2, rows * (uint64_t)G * 2, (char *)sc, r);
    if (s == MPK_OK)
        s = ex_node_read(n->in3, 0, n->in3->nbytes, (char *)sh, r);
    s = rd_finish(r, s);
    int64_t d[2] = {0, 0};
    for (int k = 0; s == MPK_OK && k < 2; k++) {
        int32_t v32;
        if (n->in3->meta.dtype == MPK_DTYPE_I64)
            memcpy(&d[k], sh + 8 * k, 8);
        else
            memcpy(&v32, sh + 4 * k, 4), d[k] = v32;
    }
    if (s == MPK_OK && (d[0] != R || d[1] != C))
        s = mpk_error_set(r->err, MPK_E_QUANT, 0, n->in3->path, "INT4 weight_shape says [%lld, %lld], its packed codes "
                          "and scales make [%lld, %lld]: padded or inconsistent, not dequantized", (long long)d[0],
                          (long long)d[1], (long long)R, (long long)C);
    if (s == MPK_OK)
        mpk_dequant_int4_groups(q, (const uint16_t *)sc, (int64_t)rows, C, C / G, n->meta.dtype, buf);
    free(q);
    return s;
}

/* FP8 rows with one F32 scale per row, or one for the tensor (compressed-tensors' float-quantized). */
static mpk_status read_dequant_fp8_scaled(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r)
{
    int64_t C = n->meta.shape[n->meta.ndim - 1];
    uint64_t row = (uint64_t)C * mpk_dtype_size(n->meta.dtype), r0 = off / row, rows = len / row;
    bool per_row = n->vkind == MPK_VIEW_FP8_ROW;
    if (off % row || len % row)
        MPK_FAIL(r->err, MPK_E_OP, "exec", "internal: unaligned FP8 read");
    uint8_t *w = mpk_alloc(rows * (uint64_t)C + 1);
    float *sc = mpk_alloc((per_row ? rows : 1) * sizeof *sc);
    mpk_status s = w && sc ? MPK_OK : mpk_error_set(r->err, MPK_E_NOMEM, 0, "exec", "out of memory");
    if (s == MPK_OK)
        s = ex_node_read(n->in, r0 * (uint64_t)C, rows * (uint64_t)C, (char *)w, r);
    if (s == MPK_OK)
        s = ex_node_read(n->in2, per_row ? r0 * 4 : 0, per_row ? rows * 4 : 4, (char *)sc, r);
    s = rd_finish(r, s);
    if (s == MPK_OK)
        mpk_dequant_fp8_scaled(n->in->meta.dtype, w, sc, per_row, (int64_t)rows, C, n->meta.dtype, buf);
    free(w);
    free(sc);
    return s;
}

static mpk_status read_dequant(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r)
{
    mpk_error *err = r->err;
    const mpk_tmeta *m = &n->meta;
    size_t oel = mpk_dtype_size(m->dtype);
    mpk_status s = MPK_OK;
    if (n->vkind == MPK_VIEW_INT4)
        return read_dequant_int4(n, off, len, buf, r);
    if (n->in3)
        return read_dequant_nvfp4(n, off, len, buf, r);
    if (n->vkind == MPK_VIEW_FP8_ROW || n->vkind == MPK_VIEW_FP8_TENSOR)
        return read_dequant_fp8_scaled(n, off, len, buf, r);
    if (n->mx) {
        uint64_t g = 32 * oel, k0 = off / g, nb = len / g;
        if (off % g || len % g)
            MPK_FAIL(err, MPK_E_OP, "exec", "internal: unaligned MXFP4 read");
        uint8_t *t = mpk_alloc(nb * 17);
        if (!t)
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
        s = ex_node_read(n->in, k0 * 16, nb * 16, (char *)t, r);
        if (s == MPK_OK)
            s = ex_node_read(n->in2, k0, nb, (char *)t + nb * 16, r);
        s = rd_finish(r, s);
        if (s == MPK_OK)
            mpk_dequant_mxfp4(t, t + nb * 16, nb, m->dtype, buf);
        free(t);
        return s;
    }
    int64_t R = m->shape[m->ndim - 2], C = m->shape[m->ndim - 1], b = n->block;
    int64_t SR = cdiv(R, b), SC = cdiv(C, b);
    uint64_t row = (uint64_t)C * oel, ses = mpk_dtype_size(n->in2->meta.dtype); /* F32, or E8M0 (1) */
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
        s = ex_node_read(n->in, (mat * (uint64_t)R + r0) * (uint64_t)C, (r1 - r0) * (uint64_t)C, (char *)tw, r);
        if (s == MPK_OK)
            s = ex_node_read(n->in2, (mat * (uint64_t)SR + sb0) * (uint64_t)SC * ses, (sb1 - sb0 + 1) * (uint64_t)SC * ses,
                          (char *)ts, r);
        s = rd_finish(r, s);
        for (uint64_t k = (sb1 - sb0 + 1) * (uint64_t)SC; s == MPK_OK && ses == 1 && k-- > 0;)
            ts[k] = mpk_e8m0_to_f32(((const uint8_t *)ts)[k]); /* in place, from the end */
        if (s == MPK_OK)
            mpk_dequant_fp8_rows(n->in->meta.dtype, tw, ts, C, (int)b, (int64_t)r0, (int64_t)r1, m->dtype,
                                 buf + (g - g0) * row);
        g += r1 - r0;
    }
    free(tw);
    free(ts);
    return s;
}

/* --quantize nvfp4/mxfp4: whole matrices (off and len in granules: one matrix's codes, scales or
 * global scales), each read and quantized here (mpk_quant4_matrix); a NaN or an infinity refuses
 * the conversion, naming the tensor and where. */
static mpk_status read_quant4(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r)
{
    const mpk_tmeta *im = &n->in->meta;
    int64_t R = im->shape[im->ndim - 2], C = im->shape[im->ndim - 1];
    uint64_t mat_in = (uint64_t)(R * C) * mpk_dtype_size(im->dtype), g = n->granule;
    if (off % g || len % g)
        MPK_FAIL(r->err, MPK_E_OP, "exec", "internal: unaligned 4-bit quantize read");
    char *t = mpk_alloc(mat_in + 1);
    if (!t)
        MPK_FAIL(r->err, MPK_E_NOMEM, "exec", "out of memory");
    mpk_status s = MPK_OK;
    quant_cache *qc = n->qc; /* NVFP4: the global scales per matrix, written by the codes' node */
    float gl[MPK_MAX_PARTS];
    for (uint64_t j = 0; j < len / g && s == MPK_OK; j++) {
        uint64_t mat = off / g + j;
        uint8_t *o = (uint8_t *)buf + j * g;
        float *gc = qc ? qc->scales + mat * qc->grid : NULL;
        bool given = gc && atomic_load_explicit(&qc->ready[mat], memory_order_acquire);
        if (given)
            memcpy(gl, gc, qc->grid * sizeof *gl);
        if (given && n->which == 2) {
            memcpy(o, gl, g);
            continue;
        }
        s = ex_node_read(n->in, mat * mat_in, mat_in, t, r);
        s = rd_finish(r, s);
        if (s != MPK_OK)
            break;
        size_t bad = mpk_quant4_matrix(n->q4, im->dtype, t, R, C, n->parts, n->which == 0 ? o : NULL,
                                       n->which == 1 ? o : NULL, gl, given);
        if (bad == (size_t)(R * C) && n->which == 2)
            memcpy(o, gl, g);
        if (bad == (size_t)(R * C) && gc && !given && n->which == 0) {
            memcpy(gc, gl, qc->grid * sizeof *gl);
            atomic_store_explicit(&qc->ready[mat], 1, memory_order_release);
        }
        if (bad == SIZE_MAX)
            s = mpk_error_set(r->err, MPK_E_NOMEM, 0, "exec", "out of memory");
        float v = 0;
        if (bad < (size_t)(R * C))
            mpk_cast(im->dtype, t + bad * mpk_dtype_size(im->dtype), MPK_DTYPE_F32, &v, 1);
        if (bad < (size_t)(R * C))
            s = mpk_error_set(r->err, MPK_E_QUANT, 0, n->name, "value [%llu, %lld, %lld] is %s: --quantize %s "
                              "needs finite weights", (unsigned long long)mat, (long long)(bad / (size_t)C),
                              (long long)(bad % (size_t)C),
                              isnan(v) ? "NaN" : "infinite", n->q4 == 1 ? "nvfp4" : "mxfp4");
    }
    free(t);
    return s;
}

static mpk_status read_quant(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r)
{
    mpk_error *err = r->err;
    if (n->q4)
        return read_quant4(n, off, len, buf, r);
    const mpk_tmeta *im = &n->in->meta;
    size_t iel = mpk_dtype_size(im->dtype);
    mpk_status s = MPK_OK;
    if (n->mx) {
        uint64_t g = n->which ? 1 : 16, k0 = off / g, nb = len / g, step = 1u << 16;
        if (off % g || len % g)
            MPK_FAIL(err, MPK_E_OP, "exec", "internal: unaligned MXFP4 read");
        /* the read, then room for the other output (codes or scales): the kernel's vector path
         * makes both at once */
        uint64_t most = nb < step ? nb : step;
        char *t = mpk_alloc(most * 32 * iel + most * 16 + 1);
        if (!t)
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
        uint8_t *other = (uint8_t *)t + most * 32 * iel;
        for (uint64_t k = 0; k < nb && s == MPK_OK; k += step) {
            uint64_t c = nb - k < step ? nb - k : step;
            s = ex_node_read(n->in, (k0 + k) * 32 * iel, c * 32 * iel, t, r);
            s = rd_finish(r, s);
            if (s == MPK_OK)
                mpk_quant_mxfp4(im->dtype, t, c, n->which ? other : (uint8_t *)buf + k * 16,
                                n->which ? (uint8_t *)buf + k : other);
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
    quant_cache *qc = n->qc;
    char *t = NULL;
    for (uint64_t j = 0; j < len / mat_out && s == MPK_OK; j++) {
        uint64_t mat = off / mat_out + j;
        char *o = buf + j * mat_out;
        float *grid = qc ? qc->scales + mat * qc->grid : NULL;
        if (n->which && qc && atomic_load_explicit(&qc->ready[mat], memory_order_acquire)) {
            memcpy(o, grid, mat_out); /* the codes' node computed them: no second read */
            continue;
        }
        if (!t && !(t = mpk_alloc(mat_in + 1)))
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
        s = ex_node_read(n->in, mat * mat_in, mat_in, t, r);
        s = rd_finish(r, s);
        /* the codes' node also keeps the grid for its sibling; the scale node writes its own */
        float *sc = n->which ? (float *)(void *)o : grid;
        for (int64_t r0 = 0; s == MPK_OK && r0 < R; r0 += b)
            mpk_quant_fp8_band(im->dtype, t + (uint64_t)(r0 * C) * iel, C, (int)b, R - r0 < b ? R - r0 : b,
                               n->which ? NULL : (uint8_t *)o + r0 * C, sc ? sc + (r0 / b) * SC : NULL);
        if (s == MPK_OK && qc && !n->which)
            atomic_store_explicit(&qc->ready[mat], 1, memory_order_release);
    }
    free(t);
    return s;
}

/* Calls fn for every source-file range behind bytes [off, off + len) of a pure node, with the
 * offset `at` (counted from the caller's base for off) where that range lands; stops at the
 * first failure. */

mpk_status ex_each_source_range(const mpk_node *n, uint64_t off, uint64_t len, uint64_t at, range_fn fn,
                                    void *ctx)
{
    if (n->kind == N_SOURCE)
        return fn(n, n->file_off + off, len, at, ctx);
    uint64_t end = off + len;
    for (size_t k = ex_seg_find(n, off); k < n->n_segs && n->segs[k].dst_off < end; k++) {
        const seg *g = &n->segs[k];
        uint64_t a = off > g->dst_off ? off : g->dst_off;
        uint64_t e = end < g->dst_off + g->len ? end : g->dst_off + g->len;
        MPK_TRY(ex_each_source_range(g->src, g->src_off + (a - g->dst_off), e - a, at + (a - off), fn, ctx));
    }
    return MPK_OK;
}

typedef struct {
    int out_fd;
    const char *out_path;
    ex_pipe *pp;
    mpk_xxh *hash;
    mpk_error *err;
} copy_ctx;

/* Splice rounds end where the output offset is a multiple of this, so that each round fills the
 * output's page-cache pages in one write, as copy_file_range does for a range at the same offset
 * within a page in source and output. For a range at another offset its internal pipe of 16
 * pages carries less than 64 KiB a round, every output page is filled in two writes and its
 * folios stay small: 0.27 s of CPU per GiB against 0.21 s through this pipe (bench/RESULTS.md). */
#define SPLICE_ROUND (256u << 10)
#define SPLICE_PIPE (512u << 10) /* slots for a round at any offset within a page, and to spare */
#define SPLICE_MIN (64u << 10)   /* shorter ranges: one copy_file_range call costs less */

void ex_pipe_open(ex_pipe *pp)
{
    *pp = (ex_pipe){.fd = {-1, -1}};
    if (pipe2(pp->fd, O_CLOEXEC) != 0) {
        pp->fd[0] = pp->fd[1] = -1;
        return;
    }
    if (fcntl(pp->fd[1], F_SETPIPE_SZ, (int)SPLICE_PIPE) < (int)SPLICE_PIPE)
        ex_pipe_close(pp); /* over the user's pipe limits: no pipe */
}

void ex_pipe_close(ex_pipe *pp)
{
    if (pp->fd[0] >= 0) {
        close(pp->fd[0]);
        close(pp->fd[1]);
    }
    pp->fd[0] = pp->fd[1] = -1;
}

/* A failed in-kernel move: named by its source file where that side failed (it ended early, a
 * read into the pipe), else by the output (the worker adds the tensor and the output's path). */
static mpk_status copy_failed(const copy_ctx *cc, const mpk_node *src, const char *call, bool src_side, loff_t in_o,
                              loff_t out_o, ssize_t k)
{
    const char *why = k < 0 ? strerror(errno) : "the source ended early";
    src_side = src_side || k == 0;
    if (src_side)
        return mpk_error_set(cc->err, MPK_E_IO, k < 0 ? errno : 0, src->path,
                             "%s from offset %llu (to offset %llu of the output) failed: %s", call,
                             (unsigned long long)in_o, (unsigned long long)out_o, why);
    return mpk_error_set(cc->err, MPK_E_IO, errno, cc->out_path, "%s from %s offset %llu to offset %llu failed: %s",
                         call, src->path, (unsigned long long)in_o, (unsigned long long)out_o, why);
}

/* Through the pipe, in rounds that end on SPLICE_ROUND multiples of the output offset; the pipe
 * is empty between rounds, and a read into it never asks for more pages than it has free, so
 * that no splice waits on the pipe. A failure closes the pipe (it may hold bytes). */
static mpk_status splice_range(const mpk_node *src, loff_t in_o, uint64_t len, loff_t out_o, const copy_ctx *cc)
{
    ex_pipe *pp = cc->pp;
    const uint64_t slots = SPLICE_PIPE / 4096;
    mpk_status s = MPK_OK;
    while (len && s == MPK_OK) {
        uint64_t n = SPLICE_ROUND - (uint64_t)out_o % SPLICE_ROUND, got = 0, used = 0;
        n = n < len ? n : len;
        while (got < n) {
            uint64_t q = (uint64_t)in_o % 4096, want = n - got, room = (slots - used) * 4096;
            if (room <= q + 4096) /* (not in a round's first read: the pipe is empty then) */
                break;
            want = want < room - q - 4096 ? want : room - q - 4096;
            ssize_t k = splice(src->fd, &in_o, pp->fd[1], NULL, want, SPLICE_F_MOVE);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) {
                s = copy_failed(cc, src, "splice", true, in_o, out_o, k);
                break;
            }
            used += (q + (uint64_t)k + 4095) / 4096; /* a pipe slot per page (part) */
            got += (uint64_t)k;
        }
        for (uint64_t put = 0; put < got && s == MPK_OK;) {
            ssize_t k = splice(pp->fd[0], NULL, cc->out_fd, &out_o, got - put, SPLICE_F_MOVE);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) /* (0: nothing taken from a pipe holding bytes) */
                s = copy_failed(cc, src, "splice", false, in_o, out_o, k < 0 ? k : (errno = EIO, -1));
            else
                put += (uint64_t)k;
        }
        len -= got;
        pp->bytes += got;
    }
    if (s != MPK_OK)
        ex_pipe_close(pp);
    return s;
}

/* Through pp->bounce: read, hash, write (the hash sees the bytes in output order: the ranges of
 * a unit come in order, and the worker hands a hash only for a unit next in its output's). */
static mpk_status bounce_range(const mpk_node *src, uint64_t in_o, uint64_t len, uint64_t out_o, const copy_ctx *cc)
{
    while (len) {
        uint64_t n = EX_BOUNCE_PIECE - out_o % EX_BOUNCE_PIECE;
        n = n < len ? n : len;
        ssize_t k = pread(src->fd, cc->pp->bounce, n, (off_t)in_o);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return copy_failed(cc, src, "pread", true, (loff_t)in_o, (loff_t)out_o, k);
        mpk_xxh_update(cc->hash, cc->pp->bounce, (size_t)k);
        mpk_status s = mpk_pwrite_all(cc->out_fd, cc->pp->bounce, (size_t)k, out_o, cc->out_path, cc->err);
        if (s != MPK_OK)
            return s;
        in_o += (uint64_t)k;
        out_o += (uint64_t)k;
        len -= (uint64_t)k;
        cc->pp->bounced += (uint64_t)k;
    }
    return MPK_OK;
}

static mpk_status copy_range(const mpk_node *src, uint64_t file_off, uint64_t len, uint64_t at, void *ctx)
{
    const copy_ctx *cc = ctx;
    loff_t in_o = (loff_t)file_off, out_o = (loff_t)at;
    if (cc->hash && cc->pp->bounce)
        return bounce_range(src, file_off, len, at, cc);
    if (cc->pp && cc->pp->fd[0] >= 0 && len >= SPLICE_MIN && (file_off - at) % 4096 != 0)
        return splice_range(src, in_o, len, out_o, cc);
    while (len) {
        ssize_t k = copy_file_range(src->fd, &in_o, cc->out_fd, &out_o, len, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return copy_failed(cc, src, "copy_file_range", false, in_o, out_o, k);
        len -= (uint64_t)k;
    }
    return MPK_OK;
}

/* Moves bytes [off, off + len) of a pure node in the kernel to out_off in out_fd. */
mpk_status ex_node_copy(const mpk_node *n, uint64_t off, uint64_t len, const mpk_st_out *out, uint64_t out_off,
                        ex_pipe *pp, mpk_xxh *hash, mpk_error *err)
{
    copy_ctx cc = {out->fd, out->path, pp, hash, err};
    return ex_each_source_range(n, off, len, out_off, copy_range, &cc);
}

/* Adds a source range landing at `at` (relative to the data start) to votes[k], where k * 8
 * is the data start modulo 4096 that puts it at the same offset within a page as in its
 * source file. */
mpk_status ex_phase_vote(const mpk_node *src, uint64_t file_off, uint64_t len, uint64_t at, void *votes)
{
    (void)src;
    uint64_t ph = (file_off + 4096 - at % 4096) % 4096;
    if (ph % 8 == 0)
        ((uint64_t *)votes)[ph / 8] += len;
    return MPK_OK;
}

