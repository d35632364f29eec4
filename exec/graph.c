/* graph.c — the executor's node graph. Every output tensor becomes a node: SOURCE (bytes of a
 * source tensor), SEGS (byte ranges of other nodes: what the byte-permutation ops of the op
 * table build, from their ranges), or a computed node (TRANSPOSE, CAST, DEQUANT, QUANT: the op
 * table's compute classes, run in bounded blocks by nodes.c). SEGS over SEGS are flattened when
 * built, so a pure permutation reads straight from the source files. The nodes belong to the
 * executor; the plan is only read. */
#define _GNU_SOURCE
#include "engine_internal.h"
#include "mpk_config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


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
    if (!src->pure)
        out->pure = false;
    return true;
}

size_t ex_seg_find(const mpk_node *n, uint64_t off)
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
    for (size_t k = ex_seg_find(x, off); k < x->n_segs && x->segs[k].dst_off < end; k++) {
        const seg *s = &x->segs[k];
        uint64_t a = off > s->dst_off ? off : s->dst_off;
        uint64_t e = end < s->dst_off + s->len ? end : s->dst_off + s->len;
        if (!seg_raw(out, s->src, s->src_off + (a - s->dst_off), e - a, dst))
            return false;
    }
    return true;
}

static uint64_t bytes_from(const mpk_tmeta *m, int dim)
{
    return mpk_prod(m->shape, dim, m->ndim) * (uint64_t)mpk_dtype_bits(m->dtype) / 8;
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

/* A cache of floats per input matrix shared by the QUANT nodes over one input: grid floats a
 * matrix. */
static quant_cache *cache_new(const mpk_tmeta *im, uint64_t grid, mpk_arena *arena)
{
    quant_cache *c = mpk_arena_alloc(arena, sizeof *c);
    if (c) {
        c->n_mats = mpk_prod(im->shape, 0, im->ndim - 2);
        c->grid = grid;
        c->scales = mpk_arena_alloc(arena, c->n_mats * c->grid * sizeof *c->scales + 1);
        c->ready = mpk_arena_alloc(arena, c->n_mats + 1);
    }
    if (!c || !c->scales || !c->ready)
        return NULL;
    for (uint64_t j = 0; j < c->n_mats; j++)
        atomic_init(&c->ready[j], 0);
    return c;
}

/* The QUANT nodes of one rule output (FP8: codes and scale grid; NVFP4: codes, block scales
 * and global scales) are made over the same input and share one cache of grid floats a matrix:
 * the first made makes it (in the arena), the others find it. The codes' node fills it per
 * matrix, so the others skip the amax pass (and a node of scales alone, the read). */
static mpk_status quant_share(builder *b, size_t i, mpk_node *q, uint64_t grid, mpk_arena *arena)
{
    for (size_t k = 0; k < i; k++) {
        mpk_node *s = b->out[k];
        if (s && s->kind == N_QUANT && s->in == q->in) {
            q->qc = s->qc;
            return MPK_OK;
        }
    }
    if (!(q->qc = cache_new(&q->in->meta, grid, arena)))
        MPK_FAIL(b->err, MPK_E_NOMEM, "exec", "out of memory");
    return MPK_OK;
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

static mpk_node *source_node(builder *b, const mpk_plan *p, const mpk_ckpt_tensor *t, const mpk_tmeta *m)
{
    const mpk_plan_view *v = mpk_plan_view_of(p, t);
    if (!v) {
        mpk_node *n = node_new(b, N_SOURCE, m);
        if (n) {
            n->fd = p->src->shards[t->shard].fd;
            n->z = p->src->shards[t->shard].z;
            n->data_start = p->src->shards[t->shard].header->data_start;
            n->pure = !n->z; /* a compressed shard is read, never copied in the kernel */
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
    n->vkind = (int)v->kind;
    if (v->kind == MPK_VIEW_INT4) { /* one row at a time; weight_shape checked when read */
        mpk_tmeta gm = {v->scale2->info->dtype, v->scale2->info->ndim, {0}};
        memcpy(gm.shape, v->scale2->info->shape, sizeof gm.shape);
        if (!(n->in3 = source_node(b, p, v->scale2, &gm)))
            return NULL;
    }
    if (v->kind == MPK_VIEW_FP8_ROW || v->kind == MPK_VIEW_FP8_TENSOR || v->kind == MPK_VIEW_INT4) {
        n->granule = (uint64_t)m->shape[m->ndim - 1] * mpk_dtype_size(m->dtype);
        return n;
    }
    if (v->scale2) { /* NVFP4: blocks of 16 values, whole within a row */
        mpk_tmeta gm = {MPK_DTYPE_F32, v->scale2->info->ndim, {0}};
        memcpy(gm.shape, v->scale2->info->shape, sizeof gm.shape);
        if (!(n->in3 = source_node(b, p, v->scale2, &gm)))
            return NULL;
        n->granule = 16 * mpk_dtype_size(m->dtype);
        return n;
    }
    if (wm.dtype == MPK_DTYPE_U8 || wm.dtype == MPK_DTYPE_I8) { /* MXFP4 codes, one E8M0 per 32 along rows */
        n->mx = true;
        n->granule = 32 * mpk_dtype_size(m->dtype);
        return n;
    }
    n->block = p->fp8_block;
    mpk_op op = {.kind = MPK_OP_DEQUANT_FP8, .block = p->fp8_block, .dtype = m->dtype};
    n->granule = mpk_op_descs[op.kind].granule(&op, &wm, m, 0);
    return n;
}

mpk_status ex_build_nodes(const mpk_plan *p, builder *b, mpk_arena *arena)
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
        const mpk_plan_out *o = &p->outs[i];
        mpk_node **on = &b->out[i];
        if (o->group >= 0) {
            *on = group_out[o->group][o->slot];
            if (o->quant) { /* --quantize: FP8 codes or the scale grid of the rule's output */
                mpk_node *q = node_new(b, N_QUANT, &o->meta);
                if (!q)
                    MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
                q->in = *on;
                q->which = o->quant - 1;
                if (p->quant4) { /* one whole matrix at a time, each output on its own */
                    const mpk_tmeta *im = &(*on)->meta;
                    q->q4 = p->quant4;
                    q->parts = o->parts;
                    /* messages name the codes tensor (the weight), whichever output meets the value */
                    const char *suf = o->quant == 3 ? "_weight_scale_2" : o->quant == 1 ? "" : p->quant4 == 1 ? "_weight_scale" : "_scale_inv";
                    q->name = mpk_arena_strndup(arena, o->name, strlen(o->name) - strlen(suf));
                    if (!q->name)
                        MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
                    int64_t RC = im->shape[im->ndim - 2] * im->shape[im->ndim - 1];
                    q->granule = q->which == 0 ? (uint64_t)RC / 2 : q->which == 1 ? (uint64_t)RC / (p->quant4 == 1 ? 16 : 32)
                                                                                     : (uint64_t)(o->parts > 1 ? o->parts : 1) * 4;
                    if (q->q4 == 1) /* (MXFP4 has no global scale to share) */
                        MPK_TRY(quant_share(b, i, q, (uint64_t)(o->parts > 1 ? o->parts : 1), arena));
                    *on = q;
                    continue;
                }
                q->block = p->fp8_block;
                mpk_op op = {.kind = MPK_OP_QUANT_FP8, .block = p->fp8_block};
                q->granule = mpk_op_descs[op.kind].granule(&op, &(*on)->meta, &o->meta, q->which);
                const mpk_tmeta *im = &q->in->meta;
                if (im->ndim >= 2) {
                    int64_t R = im->shape[im->ndim - 2], C = im->shape[im->ndim - 1], bl = q->block;
                    MPK_TRY(quant_share(b, i, q, (uint64_t)(((R + bl - 1) / bl) * ((C + bl - 1) / bl)), arena));
                }
                *on = q;
            }
        } else if (!(*on = source_node(b, p, o->pass, &o->meta))) {
            MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
        }
    }
    return MPK_OK;
}

/* Largest block a node's reads allocate at once (transposes read whole slabs). */
uint64_t ex_node_granule(const mpk_node *n)
{
    if (n->kind != N_SOURCE && n->kind != N_SEGS)
        return n->granule;
    if (n->kind == N_SEGS) { /* ranges of computed nodes (e.g. dequantized experts, stacked) */
        uint64_t g = 1;
        for (size_t i = 0; i < n->n_segs; i++) {
            uint64_t h = ex_node_granule(n->segs[i].src), a = g, b = h;
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

uint64_t ex_max_slab(const mpk_node *n)
{
    uint64_t m = 0;
    if (n->kind == N_TRANSPOSE)
        m = n->granule;
    if (n->kind == N_QUANT && !n->mx) /* one input matrix at a time */
        m = bytes_from(&n->in->meta, n->in->meta.ndim - 2);
    if (n->kind == N_TRANSPOSE || n->kind == N_CAST || n->kind == N_QUANT || n->kind == N_DEQUANT) {
        uint64_t k = ex_max_slab(n->in);
        if (n->in2) {
            uint64_t k2 = ex_max_slab(n->in2);
            k = k2 > k ? k2 : k;
        }
        return k > m ? k : m;
    }
    if (n->kind == N_SEGS)
        for (size_t i = 0; i < n->n_segs; i++) {
            uint64_t k = n->segs[i].src->kind == N_SOURCE ? 0 : ex_max_slab(n->segs[i].src);
            if (k > m)
                m = k;
        }
    return m;
}


void ex_nodes_free(builder *b)
{
    for (mpk_node *n = b->all, *next; n; n = next) {
        next = n->next_alloc;
        free(n->segs);
        free(n);
    }
    b->all = NULL;
}
