/* verify.c — recompute every expected tensor from the source with the reference ops and
 * compare it with the destination, slice by slice, with bounded memory. */
#define _GNU_SOURCE
#include "mpk_verify.h"
#include "verify_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>


mpk_tensor_cmp *vfy_add(mpk_cmp_report *r, const char *name, mpk_diff_kind kind, const char *detail)
{
    mpk_tensor_cmp *nt = mpk_grow(r->t, r->n, &r->cap, sizeof *nt, 64);
    if (!nt)
        return NULL;
    r->t = nt;
    mpk_tensor_cmp *x = &r->t[r->n];
    memset(x, 0, sizeof *x);
    if (!(x->name = mpk_strndup(name, strlen(name))))
        return NULL;
    r->n++;
    x->order = r->item << 32 | r->seq++;
    x->kind = kind;
    x->differs = kind < MPK_DIFF_COUNT;
    r->n_differ += x->differs;
    snprintf(x->detail, sizeof x->detail, "%s", detail);
    return x;
}

void mpk_cmp_report_free(mpk_cmp_report *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        free(r->t[i].name);
    free(r->t);
    free(r);
}

/* ---------------------------------------------------------------- one expected tensor */

typedef struct {
    bool active;            /* content is compared */
    const char *name;
    const mpk_ckpt_tensor *dt;
    mpk_tmeta meta;
    bool approx, values, differs;
    uint64_t first_diff;
    mpk_xxh *hw, *hg;
    uint64_t n, bad;
    double max_abs, max_rel, sum_sq, dot, nw, ng;
} tcmp;

static bool float_dtype(mpk_dtype d)
{
    return d == MPK_DTYPE_F32 || d == MPK_DTYPE_F16 || d == MPK_DTYPE_BF16 || d == MPK_DTYPE_F8_E4M3 ||
           d == MPK_DTYPE_F8_E5M2;
}

/* name is one the destination should hold (what is not expected is an extra) */
static void expect(vctx *v, const char *name)
{
    mpk_strmap_put(&v->expected, name, strlen(name), 0, NULL);
}

static mpk_status tc_begin(vctx *v, tcmp *t, const char *name, const mpk_tmeta *m, bool approx)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    t->meta = *m;
    t->approx = approx;
    expect(v, name);
    const mpk_ckpt_tensor *d = mpk_ckpt_find(v->dst, name);
    if (!d) {
        if (!vfy_add(v->r, name, MPK_DIFF_MISSING, "expected, absent from the destination"))
            MPK_FAIL(v->err, MPK_E_NOMEM, "verify", "out of memory");
        return MPK_OK;
    }
    char a[128], b[128];
    if (d->info->dtype != m->dtype || d->info->ndim != m->ndim ||
        memcmp(d->info->shape, m->shape, sizeof(int64_t) * (size_t)m->ndim) != 0) {
        mpk_tensor_cmp *x = vfy_add(v->r, name, MPK_DIFF_META, "");
        if (!x)
            MPK_FAIL(v->err, MPK_E_NOMEM, "verify", "out of memory");
        snprintf(x->detail, sizeof x->detail, "expected %s %s, found %s %s", mpk_dtype_name(m->dtype),
                 mpk_shape_str(m->shape, m->ndim, a, sizeof a), mpk_dtype_name(d->info->dtype),
                 mpk_shape_str(d->info->shape, d->info->ndim, b, sizeof b));
        return MPK_OK;
    }
    t->dt = d;
    t->active = true;
    t->values = float_dtype(m->dtype) && (approx || v->co->values);
    t->hw = mpk_xxh_new();
    t->hg = mpk_xxh_new();
    if (!t->hw || !t->hg)
        MPK_FAIL(v->err, MPK_E_NOMEM, "verify", "out of memory");
    return MPK_OK;
}

/* Compares bytes [off, off + len) of the expected tensor (want) with the destination's. */
static mpk_status tc_feed(vctx *v, tcmp *t, uint64_t off, const char *want, uint64_t len)
{
    if (!t->active)
        return MPK_OK;
    size_t el = mpk_dtype_size(t->meta.dtype);
    for (uint64_t o = 0; o < len; o += CHUNK) {
        uint64_t n = len - o < CHUNK ? len - o : CHUNK;
        MPK_TRY(mpk_ckpt_read(v->dst, t->dt, off + o, n, v->gbuf, v->err));
        mpk_xxh_update(t->hw, want + o, n);
        mpk_xxh_update(t->hg, v->gbuf, n);
        v->r->bytes += n;
        mpk_meter_add(v->co->meter, n);
        MPK_TRY(mpk_meter_check(v->co->meter, "verify", v->err));
        if (!t->values) {
            if (!t->differs && memcmp(want + o, v->gbuf, n) != 0) {
                uint64_t k = 0;
                while (want[o + k] == v->gbuf[k])
                    k++;
                t->differs = true;
                t->first_diff = (off + o + k) / (el ? el : 1);
            }
            continue;
        }
        size_t cnt = (size_t)(n / el);
        mpk_cast(t->meta.dtype, want + o, MPK_DTYPE_F32, v->fw, cnt);
        mpk_cast(t->meta.dtype, v->gbuf, MPK_DTYPE_F32, v->fg, cnt);
        for (size_t i = 0; i < cnt; i++) {
            double w = v->fw[i], g = v->fg[i], d = fabs(g - w);
            bool same_nan = isnan(w) && isnan(g);
            if (same_nan)
                d = 0;
            else if (isnan(d))
                d = INFINITY;
            if (d > t->max_abs)
                t->max_abs = d;
            double rel = w != 0 ? d / fabs(w) : (d > 0 ? INFINITY : 0);
            if (rel > t->max_rel)
                t->max_rel = rel;
            if (!same_nan && isfinite(w) && isfinite(g)) {
                t->sum_sq += d * d;
                t->dot += w * g;
                t->nw += w * w;
                t->ng += g * g;
            }
            if (d > v->co->atol + v->co->rtol * fabs(w)) {
                if (!t->bad)
                    t->first_diff = (off + o) / el + i;
                t->bad++;
            }
        }
        t->n += cnt;
        if (t->bad)
            t->differs = true;
    }
    return MPK_OK;
}

/* A comparison given up (an error, a cancel): its hash states freed; nothing after tc_end. */
static void tc_drop(tcmp *t)
{
    mpk_xxh_free(t->hw);
    mpk_xxh_free(t->hg);
    t->hw = t->hg = NULL;
    t->active = false;
}

static mpk_status tc_end(vctx *v, tcmp *t)
{
    if (!t->active)
        return MPK_OK;
    mpk_hash128 a = mpk_xxh_digest(t->hw), b = mpk_xxh_digest(t->hg);
    mpk_xxh_free(t->hw);
    mpk_xxh_free(t->hg);
    t->hw = t->hg = NULL;
    t->active = false;
    v->r->n_compared++;
    bool differs = t->differs, same_bytes = a.hi == b.hi && a.lo == b.lo;
    if (!t->values && !same_bytes)
        differs = true;
    if (!differs && !same_bytes)
        v->r->n_inexact++;
    mpk_tensor_cmp *x = vfy_add(v->r, t->name, differs ? MPK_DIFF_CONTENT : MPK_DIFF_COUNT, "");
    if (!x)
        MPK_FAIL(v->err, MPK_E_NOMEM, "verify", "out of memory");
    x->approx = t->values;
    x->dtype = t->meta.dtype;
    x->want_hash = a;
    x->got_hash = b;
    x->n = t->n;
    x->max_abs = t->max_abs;
    x->max_rel = t->max_rel;
    x->rmse = t->n ? sqrt(t->sum_sq / (double)t->n) : 0;
    x->cosine = t->nw > 0 && t->ng > 0 ? t->dot / sqrt(t->nw * t->ng) : (t->nw == t->ng ? 1 : 0);
    x->n_out_of_tol = t->bad;
    if (differs && t->values)
        snprintf(x->detail, sizeof x->detail, "%llu of %llu values beyond atol %g + rtol %g (first at element "
                 "%llu, max abs error %g)", (unsigned long long)t->bad, (unsigned long long)t->n, v->co->atol,
                 v->co->rtol, (unsigned long long)t->first_diff, t->max_abs);
    else if (differs)
        snprintf(x->detail, sizeof x->detail, "bytes differ (first at element %llu)",
                 (unsigned long long)t->first_diff);
    return MPK_OK;
}

/* ---------------------------------------------------------------- expected values */

/* Reads a source tensor whole (a --dequantize view is dequantized with the reference op). */
static mpk_status read_source(const mpk_plan *p, const mpk_ckpt_tensor *t, uint64_t off, uint64_t len,
                              char **out, mpk_error *err)
{
    const mpk_plan_view *vw = p ? mpk_plan_view_of(p, t) : NULL;
    if (!vw) {
        char *b = mpk_alloc(len + 1);
        if (!b)
            MPK_FAIL(err, MPK_E_NOMEM, "verify", "out of memory (%llu bytes)", (unsigned long long)len);
        mpk_status s = mpk_ckpt_read(p->src, t, off, len, b, err);
        if (s != MPK_OK) {
            free(b);
            return s;
        }
        *out = b;
        return MPK_OK;
    }
    mpk_dtype wdt = vw->weight->info->dtype;
    if (vw->kind != MPK_VIEW_BLOCK || wdt == MPK_DTYPE_U8 || wdt == MPK_DTYPE_I8 ||
        vw->scale->info->dtype == MPK_DTYPE_F8_E8M0)
        return vfy_read_view(p, vw, off, len, out, err); /* NVFP4, MXFP4, FP8 with E8M0 scales */
    char *w = NULL, *sc = NULL;
    MPK_TRY(read_source(p, vw->weight, 0, vw->weight->nbytes, &w, err));
    mpk_status s = read_source(p, vw->scale, 0, vw->scale->nbytes, &sc, err);
    mpk_tmeta m[2];
    const mpk_ckpt_tensor *ts[2] = {vw->weight, vw->scale};
    for (int i = 0; i < 2; i++) {
        m[i] = (mpk_tmeta){ts[i]->info->dtype, ts[i]->info->ndim, {0}};
        memcpy(m[i].shape, ts[i]->info->shape, sizeof m[i].shape);
    }
    mpk_op op = {.kind = MPK_OP_DEQUANT_FP8, .block = p->fp8_block, .dtype = MPK_DTYPE_BF16};
    mpk_bundle in = {2, 1, m}, o;
    void *data[2] = {w, sc}, **od = NULL;
    mpk_arena *a = mpk_arena_new();
    if (s == MPK_OK)
        s = a ? mpk_op_apply(&op, &in, data, &o, &od, a, err) : mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "oom");
    free(w);
    free(sc);
    mpk_arena_free(a);
    if (s != MPK_OK)
        return s;
    char *full = od[0];
    free(od);
    if (off || len != t->nbytes) {
        char *b = mpk_alloc(len + 1);
        if (b)
            memcpy(b, full + off, len);
        free(full);
        if (!b)
            MPK_FAIL(err, MPK_E_NOMEM, "verify", "out of memory");
        full = b;
    }
    *out = full;
    return MPK_OK;
}

/* Runs a rule's chain on materialized tensors with the reference ops. */
static mpk_status apply_chain(const mpk_rule *r, mpk_bundle *b, void ***data, mpk_arena *a, mpk_error *err)
{
    for (int k = 0; k < r->n_ops; k++) {
        mpk_bundle o;
        void **od;
        MPK_TRY(mpk_op_apply(&r->ops[k], b, *data, &o, &od, a, err));
        for (int i = 0; i < b->n_groups * b->n_items; i++)
            free((*data)[i]);
        free(*data);
        *b = o;
        *data = od;
    }
    return MPK_OK;
}

typedef struct {
    int weight, scale, scale2; /* plan output indices (-1 none); scale for --quantize, scale2 the
                                  NVFP4 global scales */
    tcmp tw, ts, t2;
} slot_out;

/* --quantize nvfp4/mxfp4: the slice's matrices quantized here (mpk_quant4_matrix, the kernel
 * the conversion ran; its AVX2 and portable paths agree, tests/test_quant4.c) and compared. */
static mpk_status emit4(vctx *v, const mpk_plan *p, slot_out *so, const mpk_tmeta *m, void *data, uint64_t k)
{
    int64_t R = m->shape[m->ndim - 2], C = m->shape[m->ndim - 1], lead = (int64_t)mpk_prod(m->shape, 0, m->ndim - 2);
    int parts = so->scale2 >= 0 ? p->outs[so->scale2].parts : 1;
    uint64_t n = (uint64_t)(lead * R * C), n1 = n / (p->quant4 == 1 ? 16 : 32), n2 = (uint64_t)lead * (uint64_t)parts * 4;
    uint8_t *c = mpk_alloc(n / 2 + 1), *s = mpk_alloc(n1 + 1);
    float *g = mpk_alloc(n2 + 4);
    mpk_status st = c && s && g ? MPK_OK : mpk_error_set(v->err, MPK_E_NOMEM, 0, "verify", "out of memory");
    size_t el = mpk_dtype_size(m->dtype), mat = (size_t)(R * C);
    for (int64_t l = 0; l < lead && st == MPK_OK; l++) {
        size_t bad = mpk_quant4_matrix(p->quant4, m->dtype, (char *)data + (size_t)l * mat * el, R, C, parts,
                                       c + (size_t)l * mat / 2, s + (size_t)l * mat / (p->quant4 == 1 ? 16 : 32),
                                       g + l * parts, false);
        float x = 0;
        if (bad < mat)
            mpk_cast(m->dtype, (char *)data + ((size_t)l * mat + bad) * el, MPK_DTYPE_F32, &x, 1);
        if (bad == SIZE_MAX)
            st = mpk_error_set(v->err, MPK_E_NOMEM, 0, "verify", "out of memory");
        else if (bad < mat) /* [matrix, row, column] of the output, as pack words it */
            st = mpk_error_set(v->err, MPK_E_QUANT, 0, p->src->dir, "tensor '%s': its source value [%llu, %lld, %lld] is "
                               "%s: --quantize %s needs finite weights (did SRC change since the conversion?)",
                               p->outs[so->weight].name, (unsigned long long)(k * (uint64_t)lead + (uint64_t)l),
                               (long long)(bad / (size_t)C), (long long)(bad % (size_t)C), isnan(x) ? "NaN" : "infinite",
                               p->quant4 == 1 ? "nvfp4" : "mxfp4");
    }
    if (st == MPK_OK)
        st = tc_feed(v, &so->tw, k * (n / 2), (const char *)c, n / 2);
    if (st == MPK_OK)
        st = tc_feed(v, &so->ts, k * n1, (const char *)s, n1);
    if (st == MPK_OK && so->scale2 >= 0)
        st = tc_feed(v, &so->t2, k * n2, (const char *)g, n2);
    free(c), free(s), free(g);
    return st;
}

/* Sends one computed output (slot) to its comparisons; --quantize outputs are quantized here
 * with the reference op. */
static mpk_status emit(vctx *v, const mpk_plan *p, slot_out *so, const mpk_tmeta *m, void *data, uint64_t k)
{
    uint64_t nb = 0;
    mpk_tensor_nbytes(m->dtype, m->shape, m->ndim, &nb);
    if (so->scale < 0)
        return tc_feed(v, &so->tw, k * nb, data, nb);
    if (p->quant4)
        return emit4(v, p, so, m, data, k);
    mpk_op op = {.kind = MPK_OP_QUANT_FP8, .block = p->fp8_block};
    mpk_bundle in = {1, 1, (mpk_tmeta *)m}, o;
    void **od = NULL, *d1[1] = {data};
    mpk_arena *a = mpk_arena_new();
    if (!a)
        MPK_FAIL(v->err, MPK_E_NOMEM, "verify", "out of memory");
    mpk_status s = mpk_op_apply(&op, &in, d1, &o, &od, a, v->err);
    if (s == MPK_OK) {
        uint64_t n0 = 0, n1 = 0;
        mpk_tensor_nbytes(o.t[0].dtype, o.t[0].shape, o.t[0].ndim, &n0);
        mpk_tensor_nbytes(o.t[1].dtype, o.t[1].shape, o.t[1].ndim, &n1);
        s = tc_feed(v, &so->tw, k * n0, od[0], n0);
        if (s == MPK_OK)
            s = tc_feed(v, &so->ts, k * n1, od[1], n1);
        free(od[0]);
        free(od[1]);
        free(od);
    }
    mpk_arena_free(a);
    return s;
}

/* Begins the comparisons of an output slot (its weight, and its scale grid if any). */
static mpk_status slot_begin(vctx *v, const mpk_plan *p, slot_out *x, bool approx)
{
    bool qa = approx || x->scale >= 0;
    mpk_status s = MPK_OK;
    if (x->weight >= 0)
        s = tc_begin(v, &x->tw, p->outs[x->weight].name, &p->outs[x->weight].meta, qa);
    if (s == MPK_OK && x->scale >= 0)
        s = tc_begin(v, &x->ts, p->outs[x->scale].name, &p->outs[x->scale].meta, qa);
    if (s == MPK_OK && x->scale2 >= 0)
        s = tc_begin(v, &x->t2, p->outs[x->scale2].name, &p->outs[x->scale2].meta, qa);
    return s;
}

static mpk_status slot_end(vctx *v, slot_out *x)
{
    mpk_status s = tc_end(v, &x->tw);
    if (s == MPK_OK)
        s = tc_end(v, &x->ts);
    return s == MPK_OK ? tc_end(v, &x->t2) : s;
}

/* The source tensors of step k into cur (with their metadata in m): item k of each source
 * (fwd), slice k along dim 0 of each (rev), or all of them. */
static mpk_status read_step(const mpk_plan *p, const mpk_plan_group *g, int k, bool fwd, bool rev, int items,
                            mpk_tmeta *m, void **cur, mpk_error *err)
{
    int S = g->rule->n_sources, N = g->n_items;
    mpk_status s = MPK_OK;
    for (int sg = 0; sg < S && s == MPK_OK; sg++)
        for (int it = 0; it < items && s == MPK_OK; it++) {
            const mpk_ckpt_tensor *t = g->src[sg * N + (fwd ? k : it)];
            mpk_tmeta *tm = &m[sg * items + it];
            *tm = (mpk_tmeta){t->info->dtype, t->info->ndim, {0}};
            memcpy(tm->shape, t->info->shape, sizeof tm->shape);
            uint64_t off = 0, len = t->nbytes;
            if (rev) { /* slice k along dim 0 */
                len = t->nbytes / (uint64_t)tm->shape[0];
                off = (uint64_t)k * len;
                tm->shape[0] = 1;
            }
            s = read_source(p, t, off, len, (char **)&cur[sg * items + it], err);
        }
    return s;
}

/* The chain's outputs of step k compared with their slots (rev: each slot whole, begun and
 * ended here; else the slice k of a slot begun before the steps). */
static mpk_status emit_step(vctx *v, const mpk_plan *p, slot_out *so, const mpk_bundle *b, void **cur, int k,
                            int NO, bool fwd, bool rev, bool approx)
{
    mpk_status s = MPK_OK;
    for (int tg = 0; tg < b->n_groups && s == MPK_OK; tg++)
        for (int it = 0; it < b->n_items && s == MPK_OK; it++) {
            slot_out *x = &so[rev ? tg * NO + k : tg * NO + it];
            if (rev)
                s = slot_begin(v, p, x, approx);
            if (s == MPK_OK)
                s = emit(v, p, x, &b->t[tg * b->n_items + it], cur[tg * b->n_items + it], fwd ? (uint64_t)k : 0);
            if (rev && s == MPK_OK)
                s = slot_end(v, x);
        }
    return s;
}

static mpk_status run_group(vctx *v, const mpk_plan *p, size_t gi, const size_t *outs, size_t n_outs)
{
    mpk_error *err = v->err;
    const mpk_plan_group *g = &p->groups[gi];
    const mpk_rule *r = g->rule;
    int S = r->n_sources, N = g->n_items, NS = g->out_meta.n_groups * g->out_meta.n_items;
    bool approx = false;
    for (int k = 0; k < r->n_ops; k++)
        approx |= r->ops[k].kind >= MPK_OP_DEQUANT_FP8;
    for (int k = 0; k < S * N; k++)
        approx |= mpk_plan_view_of(p, g->src[k]) != NULL;
    slot_out *so = mpk_calloc((size_t)NS + 1, sizeof *so);
    if (!so)
        MPK_FAIL(err, MPK_E_NOMEM, "verify", "out of memory");
    for (int i = 0; i < NS; i++)
        so[i].weight = so[i].scale = so[i].scale2 = -1;
    for (size_t i = 0; i < n_outs; i++) {
        const mpk_plan_out *o = &p->outs[outs[i]];
        if (o->quant == 3)
            so[o->slot].scale2 = (int)outs[i];
        else if (o->quant == 2)
            so[o->slot].scale = (int)outs[i];
        else
            so[o->slot].weight = (int)outs[i];
    }
    bool fwd = r->list_in_sources && r->n_ops > 0 && r->ops[0].kind == MPK_OP_MERGE && r->ops[0].dim == 0;
    bool rev = !r->list_in_sources && r->list_capture && r->n_ops > 0 && r->ops[r->n_ops - 1].kind == MPK_OP_SPLIT &&
               r->ops[r->n_ops - 1].dim == 0;
    for (int k = fwd ? 1 : 0; k < r->n_ops - (rev ? 1 : 0); k++)
        if (!mpk_op_keeps_dim0(&r->ops[k]))
            fwd = rev = false;
    int NO = g->out_meta.n_items; /* outputs per target pattern (rev: the list) */
    mpk_status s = MPK_OK;
    /* begin every slice-streamed comparison: forward slices build each output in order */
    for (int i = 0; !rev && i < NS && s == MPK_OK; i++)
        s = slot_begin(v, p, &so[i], approx);
    int steps = fwd ? N : rev ? (int)g->src[0]->info->shape[0] : 1;
    mpk_arena *a = mpk_arena_new();
    mpk_tmeta *m = mpk_calloc((size_t)(S * N) + 1, sizeof *m);
    if (!a || !m)
        s = mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
    for (int k = 0; k < steps && s == MPK_OK; k++) {
        int items = fwd ? 1 : N;
        mpk_bundle b = {S, items, m};
        /* the step's tensors; apply_chain replaces the array with its outputs */
        void **cur = mpk_calloc((size_t)(S * items) + 1, sizeof *cur);
        if (!cur) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
            break;
        }
        s = read_step(p, g, k, fwd, rev, items, m, cur, err);
        if (s == MPK_OK)
            s = apply_chain(r, &b, &cur, a, err);
        if (s == MPK_OK)
            s = emit_step(v, p, so, &b, cur, k, NO, fwd, rev, approx);
        for (int i = 0; i < b.n_groups * b.n_items; i++)
            free(cur[i]);
        free(cur);
    }
    for (int i = 0; !rev && i < NS && s == MPK_OK; i++)
        s = slot_end(v, &so[i]);
    for (int i = 0; i < NS; i++) { /* what an error or a cancel left begun */
        tc_drop(&so[i].tw);
        tc_drop(&so[i].ts);
        tc_drop(&so[i].t2);
    }
    free(m);
    free(so);
    mpk_arena_free(a);
    return s;
}

static mpk_status compare_whole(vctx *v, const mpk_plan *p, const mpk_ckpt *src, const mpk_ckpt_tensor *t,
                                const char *name)
{
    tcmp tc;
    mpk_tmeta m = {t->info->dtype, t->info->ndim, {0}};
    memcpy(m.shape, t->info->shape, sizeof m.shape);
    bool view = p && mpk_plan_view_of(p, t);
    MPK_TRY(tc_begin(v, &tc, name, &m, view));
    if (!tc.active)
        return MPK_OK;
    mpk_status s = MPK_OK;
    if (view) {
        char *b = NULL;
        s = read_source(p, t, 0, t->nbytes, &b, v->err);
        if (s == MPK_OK)
            s = tc_feed(v, &tc, 0, b, t->nbytes);
        free(b);
    } else {
        char *b = mpk_alloc(CHUNK);
        if (!b)
            MPK_FAIL(v->err, MPK_E_NOMEM, "verify", "out of memory");
        for (uint64_t off = 0; off < t->nbytes && s == MPK_OK; off += CHUNK) {
            uint64_t n = t->nbytes - off < CHUNK ? t->nbytes - off : CHUNK;
            s = mpk_ckpt_read(src, t, off, n, b, v->err);
            if (s == MPK_OK)
                s = tc_feed(v, &tc, off, b, n);
        }
        free(b);
    }
    if (s == MPK_OK)
        s = tc_end(v, &tc);
    else
        tc_drop(&tc);
    return s;
}

/* ---------------------------------------------------------------- MPI ranks */

/* Under MPI the work items (a tensor compared whole, a group of experts) go to the ranks by
 * bytes; an item another rank compares has its names expected here (for the extras). */
static bool mine(vctx *v, uint64_t *load, uint64_t bytes)
{
    v->r->item++;
    return mpk_dist_mine(load, bytes);
}

static int by_order(const void *a, const void *b)
{
    uint64_t x = ((const mpk_tensor_cmp *)a)->order, y = ((const mpk_tensor_cmp *)b)->order;
    return x < y ? -1 : x > y;
}

/* Collective: every rank's entries and counts to every rank, in the order of one process. */
static mpk_status share_report(mpk_cmp_report *r, mpk_error *err)
{
    size_t len = 4 * sizeof(uint64_t);
    for (size_t i = 0; i < r->n; i++)
        len += sizeof r->t[i] + strlen(r->t[i].name) + 1;
    char *buf = mpk_alloc(len), *all = NULL, *p = buf;
    mpk_status s = buf ? MPK_OK : mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
    uint64_t head[4] = {r->n, r->n_compared, r->n_inexact, r->bytes};
    if (buf) {
        memcpy(p, head, sizeof head), p += sizeof head;
        for (size_t i = 0; i < r->n; i++) {
            size_t nl = strlen(r->t[i].name) + 1;
            memcpy(p, &r->t[i], sizeof r->t[i]), p += sizeof r->t[i];
            memcpy(p, r->t[i].name, nl), p += nl;
        }
    }
    size_t all_len;
    MPK_TRY(mpk_dist_agree(s, err));
    s = mpk_dist_allgatherv(buf, len, &all, &all_len, err);
    free(buf);
    MPK_TRY(s);
    for (size_t i = 0; i < r->n; i++)
        free(r->t[i].name);
    r->n = r->n_differ = r->n_compared = r->n_inexact = 0;
    r->bytes = 0;
    for (const char *q = all; s == MPK_OK && q < all + all_len;) {
        memcpy(head, q, sizeof head), q += sizeof head;
        r->n_compared += head[1], r->n_inexact += head[2], r->bytes += head[3];
        for (uint64_t k = 0; k < head[0] && s == MPK_OK; k++) {
            mpk_tensor_cmp x;
            memcpy(&x, q, sizeof x), q += sizeof x;
            mpk_tensor_cmp *nt = mpk_grow(r->t, r->n, &r->cap, sizeof *nt, 64);
            if (!nt || !(x.name = mpk_strndup(q, strlen(q)))) {
                s = mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
                break;
            }
            q += strlen(q) + 1;
            r->t = nt;
            r->t[r->n++] = x;
            r->n_differ += x.differs;
        }
    }
    free(all);
    if (s == MPK_OK)
        qsort(r->t, r->n, sizeof *r->t, by_order);
    return mpk_dist_agree(s, err);
}

mpk_status mpk_verify_compare(const mpk_ckpt *src, const mpk_ckpt *dst, const mpk_spec *spec,
                              const mpk_plan_opts *po, const mpk_cmp_opts *co, mpk_cmp_report **out,
                              mpk_error *err)
{
    *out = NULL;
    vctx v = {.dst = dst, .co = co, .err = err};
    mpk_plan *p = NULL;
    mpk_status s = MPK_OK;
    size_t *outs = NULL;
    uint64_t *load = NULL;
    v.r = mpk_calloc(1, sizeof *v.r);
    v.gbuf = mpk_alloc(CHUNK);
    v.fw = mpk_alloc(CHUNK * 4);
    v.fg = mpk_alloc(CHUNK * 4);
    if (!v.r || !v.gbuf || !v.fw || !v.fg || mpk_strmap_init(&v.expected, dst->n_tensors + 16) != MPK_OK)
        s = mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
    if ((s = mpk_dist_agree(s, err)) != MPK_OK) /* (under MPI: every rank or none goes on) */
        goto done;
    v.r->atol = co->atol;
    v.r->rtol = co->rtol;
    int R = mpk_dist_size();
    if (R > 1 && !(load = mpk_calloc((size_t)R, sizeof *load)))
        s = mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
    if (!spec) {
        for (size_t i = 0; i < src->n_tensors && s == MPK_OK; i++) {
            const mpk_ckpt_tensor *t = &src->tensors[i];
            if (mine(&v, load, t->nbytes))
                s = compare_whole(&v, NULL, src, t, t->info->name);
            else
                expect(&v, t->info->name);
        }
    } else {
        mpk_plan_opts o = *po;
        o.max_shard_size = 0;
        if (spec->reversed && spec->transformers && !o.known_names)
            o.known_names = &dst->by_name; /* which of the names a rename could undo to is dst's */
        if (s == MPK_OK)
            s = mpk_plan_build(src, spec, &o, &p, err);
        for (size_t i = 0; p && i < p->n_outs && s == MPK_OK; i++) {
            if (p->outs[i].group >= 0)
                continue;
            if (mine(&v, load, p->outs[i].nbytes))
                s = compare_whole(&v, p, src, p->outs[i].pass, p->outs[i].name);
            else
                expect(&v, p->outs[i].name);
        }
        outs = p ? mpk_calloc(p->n_outs + 1, sizeof *outs) : NULL;
        if (p && !outs)
            s = mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
        for (size_t gi = 0; p && gi < p->n_groups && s == MPK_OK; gi++) {
            size_t n = 0;
            uint64_t bytes = 0;
            for (size_t i = 0; i < p->n_outs; i++)
                if (p->outs[i].group == (int)gi)
                    outs[n++] = i, bytes += p->outs[i].nbytes;
            if (mine(&v, load, bytes))
                s = run_group(&v, p, gi, outs, n);
            else
                for (size_t k = 0; k < n; k++)
                    expect(&v, p->outs[outs[k]].name);
        }
    }
    if (s == MPK_OK && (s = mpk_ckpt_check_unchanged(src, err)) == MPK_OK)
        s = mpk_ckpt_check_unchanged(dst, err);
    if (R > 1 && (s = mpk_dist_agree(s, err)) == MPK_OK)
        s = share_report(v.r, err);
    if (s == MPK_OK)
        s = vfy_encoding_pass(&v, src, p);
    if (R > 1)
        s = mpk_dist_agree(s, err);
    v.r->item++; /* the extras last */
    for (size_t i = 0; i < dst->n_tensors && s == MPK_OK; i++) {
        const char *n = dst->tensors[i].info->name;
        size_t dummy;
        if (!mpk_strmap_get(&v.expected, n, strlen(n), &dummy) &&
            !vfy_add(v.r, n, MPK_DIFF_EXTRA, "in the destination, not expected"))
            s = mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
    }
done:
    free(load);
    free(outs);
    mpk_plan_free(p);
    free(v.gbuf);
    free(v.fw);
    free(v.fg);
    mpk_strmap_free(&v.expected);
    if (s != MPK_OK) {
        mpk_cmp_report_free(v.r);
        return s;
    }
    *out = v.r;
    return MPK_OK;
}
