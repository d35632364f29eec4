/* by_value.c — block-scaled pairs (MXFP4 _blocks/_scales, FP8 with _scale_inv) whose bytes
 * differ compared by decoded value: equal values make the pair "identical in value", its tensors
 * listed as differing only in encoding (verify.c runs this after the byte comparison). */
#include "verify_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- encodings of the same values */

typedef enum { PAIR_MXFP4, PAIR_FP8 } pair_fmt;

/* The block-scaled pair name would belong to: the names of its codes and of its scales. */
static bool pair_names(const char *name, char *codes, char *scales, size_t cap, pair_fmt *fmt)
{
    size_t n = strlen(name);
    int a, b;
    if (mpk_str_ends(name, "_blocks")) {
        *fmt = PAIR_MXFP4;
        a = snprintf(codes, cap, "%s", name);
        b = snprintf(scales, cap, "%.*s_scales", (int)(n - 7), name);
    } else if (mpk_str_ends(name, "_scales")) {
        *fmt = PAIR_MXFP4;
        a = snprintf(codes, cap, "%.*s_blocks", (int)(n - 7), name);
        b = snprintf(scales, cap, "%s", name);
    } else if (mpk_str_ends(name, "_scale_inv")) {
        *fmt = PAIR_FP8;
        a = snprintf(codes, cap, "%.*s", (int)(n - 10), name);
        b = snprintf(scales, cap, "%s", name);
    } else {
        *fmt = PAIR_FP8;
        a = snprintf(codes, cap, "%s", name);
        b = snprintf(scales, cap, "%s_scale_inv", name);
    }
    return a > 0 && b > 0 && (size_t)a < cap && (size_t)b < cap;
}

static bool same_meta(const mpk_tensor_info *x, const mpk_tensor_info *y)
{
    return x->dtype == y->dtype && x->ndim == y->ndim &&
           memcmp(x->shape, y->shape, sizeof(int64_t) * (size_t)x->ndim) == 0;
}

/* codes and scales make a pair of fmt (MXFP4: U8 [.., G, 16] and U8 [.., G]; FP8: F8 weight
 * [.., R, C] and its F32 grid of block x block tiles). */
static bool pair_shapes(pair_fmt fmt, const mpk_tensor_info *c, const mpk_tensor_info *sc, int block)
{
    if (fmt == PAIR_FP8)
        return (c->dtype == MPK_DTYPE_F8_E4M3 || c->dtype == MPK_DTYPE_F8_E5M2) && block > 0 &&
               mpk_fp8_grid_matches(c, sc, block);
    if (c->dtype != MPK_DTYPE_U8 || sc->dtype != MPK_DTYPE_U8 || c->ndim != sc->ndim + 1 || c->shape[c->ndim - 1] != 16)
        return false;
    return memcmp(c->shape, sc->shape, sizeof(int64_t) * (size_t)sc->ndim) == 0;
}

/* The source tensor a destination tensor was compared whole against (NULL: computed by a
 * spec's ops, or a --dequantize view). */
static const mpk_ckpt_tensor *source_of(const mpk_ckpt *src, const mpk_plan *p, const char *name)
{
    if (!p)
        return mpk_ckpt_find(src, name);
    for (size_t i = 0; i < p->n_outs; i++)
        if (p->outs[i].group < 0 && p->outs[i].pass && strcmp(p->outs[i].name, name) == 0)
            return mpk_plan_view_of(p, p->outs[i].pass) ? NULL : p->outs[i].pass;
    return NULL;
}

/* Decodes both encodings of a pair (sources: src's codes and scales; dst's) and compares them
 * value by value, in bounded pieces; *first: the first value that differs, or the count. */
static mpk_status pair_values(vctx *v, const mpk_ckpt *src, pair_fmt fmt, const mpk_ckpt_tensor *const t[4],
                              int block, uint64_t *first, uint64_t *count)
{
    mpk_error *err = v->err;
    const mpk_ckpt *ck[4] = {src, src, v->dst, v->dst}; /* codes, scales of want; of got */
    const mpk_tensor_info *ci = t[0]->info, *si = t[1]->info;
    uint64_t piece[2], total, steps;   /* bytes of codes and of scales per step */
    int64_t R = 0, C = 0, SR = 0, SC = 0, lead = 1;
    if (fmt == PAIR_MXFP4) {
        total = t[1]->nbytes * 32;
        uint64_t nb = CHUNK / 16;
        steps = (t[1]->nbytes + nb - 1) / nb;
        piece[0] = nb * 16, piece[1] = nb;
    } else {
        R = ci->shape[ci->ndim - 2], C = ci->shape[ci->ndim - 1];
        SR = si->shape[si->ndim - 2], SC = si->shape[si->ndim - 1];
        for (int d = 0; d < ci->ndim - 2; d++)
            lead *= ci->shape[d];
        total = (uint64_t)lead * (uint64_t)R * (uint64_t)C;
        steps = (uint64_t)lead * (uint64_t)SR;
        piece[0] = (uint64_t)block * (uint64_t)C, piece[1] = (uint64_t)SC * 4;
    }
    *count = total;
    *first = total;
    char *buf[4] = {0};
    mpk_status s = MPK_OK;
    for (int k = 0; k < 4; k++)
        if (!(buf[k] = mpk_alloc(piece[k % 2] + 16)))
            s = mpk_error_set(err, MPK_E_NOMEM, 0, "verify", "out of memory");
    for (uint64_t st = 0; st < steps && s == MPK_OK && *first == total; st++) {
        uint64_t off[2], len[2], base;
        if (fmt == PAIR_MXFP4) {
            off[1] = st * piece[1];
            len[1] = t[1]->nbytes - off[1] < piece[1] ? t[1]->nbytes - off[1] : piece[1];
            off[0] = off[1] * 16, len[0] = len[1] * 16;
            base = off[1] * 32;
        } else { /* band st % SR of matrix st / SR */
            uint64_t l = st / (uint64_t)SR, band = st % (uint64_t)SR, r0 = band * (uint64_t)block;
            uint64_t rows = (uint64_t)R - r0 < (uint64_t)block ? (uint64_t)R - r0 : (uint64_t)block;
            off[0] = (l * (uint64_t)R + r0) * (uint64_t)C, len[0] = rows * (uint64_t)C;
            off[1] = (l * (uint64_t)SR + band) * piece[1], len[1] = piece[1];
            base = off[0];
        }
        for (int k = 0; k < 4 && s == MPK_OK; k++)
            s = mpk_ckpt_read(ck[k], t[k], off[k % 2], len[k % 2], buf[k], err);
        if (s != MPK_OK)
            break;
        uint64_t at, n;
        if (fmt == PAIR_MXFP4) {
            n = len[1] * 32;
            at = mpk_mxfp4_value_diff((uint8_t *)buf[0], (uint8_t *)buf[1], (uint8_t *)buf[2], (uint8_t *)buf[3],
                                      (size_t)len[1]);
        } else {
            n = len[0];
            at = mpk_fp8_block_value_diff(ci->dtype, (uint8_t *)buf[0], (float *)buf[1], (uint8_t *)buf[2],
                                          (float *)buf[3], C, block, (int64_t)(len[0] / (uint64_t)C));
        }
        if (at < n)
            *first = base + at;
    }
    for (int k = 0; k < 4; k++)
        free(buf[k]);
    return s;
}

/* A tensor of a pair found the same in value: no longer a difference; encoding_only where its
 * bytes differ. */
static void same_in_value(mpk_cmp_report *r, mpk_tensor_cmp *y)
{
    bool same_bytes = y->want_hash.hi == y->got_hash.hi && y->want_hash.lo == y->got_hash.lo;
    if (y->differs) {
        y->differs = false;
        y->kind = MPK_DIFF_COUNT;
        y->detail[0] = 0;
        r->n_differ--;
    } else if (!same_bytes && y->approx) {
        r->n_inexact--; /* counted as within tolerance: it is exact */
    }
    if (!same_bytes) {
        y->encoding_only = true;
        r->n_encoding++;
    }
    y->max_abs = y->max_rel = y->rmse = 0;
    y->cosine = 1;
    y->n_out_of_tol = 0;
}

/* Every block-scaled pair with a content difference, compared again by decoded value (see
 * mpk_verify_compare). Runs on the whole report (under MPI: on every rank, after sharing). */
mpk_status vfy_encoding_pass(vctx *v, const mpk_ckpt *src, const mpk_plan *p)
{
    mpk_cmp_report *r = v->r;
    size_t n_content = 0;
    for (size_t i = 0; i < r->n; i++)
        n_content += r->t[i].differs && r->t[i].kind == MPK_DIFF_CONTENT;
    if (!n_content)
        return MPK_OK;
    mpk_strmap at;
    bool *done = mpk_calloc(r->n + 1, sizeof *done);
    if (!done || mpk_strmap_init(&at, r->n + 16) != MPK_OK) {
        free(done);
        MPK_FAIL(v->err, MPK_E_NOMEM, "verify", "out of memory");
    }
    for (size_t i = 0; i < r->n; i++)
        if (r->t[i].kind == MPK_DIFF_CONTENT || r->t[i].kind == MPK_DIFF_COUNT)
            mpk_strmap_put(&at, r->t[i].name, strlen(r->t[i].name), i, NULL);
    int block = p ? p->fp8_block : 128;
    mpk_status s = MPK_OK;
    for (size_t i = 0; i < r->n && s == MPK_OK; i++) {
        mpk_tensor_cmp *x = &r->t[i];
        if (!x->differs || x->kind != MPK_DIFF_CONTENT || done[i])
            continue;
        char cn[512], sn[512];
        pair_fmt fmt;
        size_t ix[2];
        if (!pair_names(x->name, cn, sn, sizeof cn, &fmt) || !mpk_strmap_get(&at, cn, strlen(cn), &ix[0]) ||
            !mpk_strmap_get(&at, sn, strlen(sn), &ix[1]))
            continue;
        done[ix[0]] = done[ix[1]] = true;
        const mpk_ckpt_tensor *t[4] = {source_of(src, p, cn), source_of(src, p, sn), mpk_ckpt_find(v->dst, cn),
                                       mpk_ckpt_find(v->dst, sn)};
        if (!t[0] || !t[1] || !t[2] || !t[3] || !same_meta(t[0]->info, t[2]->info) ||
            !same_meta(t[1]->info, t[3]->info) || !pair_shapes(fmt, t[0]->info, t[1]->info, block))
            continue;
        uint64_t first, count;
        s = pair_values(v, src, fmt, t, block, &first, &count);
        if (s != MPK_OK)
            break;
        for (int k = 0; k < 2; k++) {
            mpk_tensor_cmp *y = &r->t[ix[k]];
            if (first == count) {
                same_in_value(r, y);
            } else if (y->differs) {
                size_t l = strlen(y->detail);
                snprintf(y->detail + l, sizeof y->detail - l, "; the decoded %s values differ too (first at value %llu)",
                         fmt == PAIR_MXFP4 ? "MXFP4" : "FP8", (unsigned long long)first);
            }
        }
    }
    mpk_strmap_free(&at);
    free(done);
    return s;
}

