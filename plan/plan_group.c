/* plan_group.c — the groups of a plan: the tensors a rule's sources matched, gathered by key,
 * then each group checked (complete, consistent shapes and dtypes, FP8 blocks that do not
 * straddle a concat) and its outputs inferred; partitioned rules split into parts.
 */
#define _GNU_SOURCE
#include "plan_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *plan_expand(mpk_arena *a, const mpk_pattern *p, const char *prefix, const char *suffix,
                    const mpk_capture *caps, int n_caps, const char *list_name, const char *list_val)
{
    size_t cap = strlen(prefix) + strlen(suffix) + strlen(p->text) + 64;
    for (int i = 0; i < n_caps; i++)
        cap += caps[i].len;
    char *s = mpk_arena_alloc(a, cap);
    if (!s)
        return NULL;
    size_t o = (size_t)sprintf(s, "%s", prefix);
    for (int i = 0; i < p->n_parts; i++) {
        if (!p->parts[i].capture) {
            memcpy(s + o, p->parts[i].s, p->parts[i].len);
            o += p->parts[i].len;
            continue;
        }
        if (list_name && strlen(list_name) == p->parts[i].len &&
            memcmp(list_name, p->parts[i].s, p->parts[i].len) == 0) {
            o += (size_t)sprintf(s + o, "%s", list_val);
            continue;
        }
        for (int k = 0; k < n_caps; k++)
            if (caps[k].name_len == p->parts[i].len &&
                memcmp(caps[k].name, p->parts[i].s, caps[k].name_len) == 0) {
                memcpy(s + o, caps[k].val, caps[k].len);
                o += caps[k].len;
                break;
            }
    }
    sprintf(s + o, "%s", suffix);
    return s;
}

static const char *caps_str(const mpk_plan_group *g, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < g->n_caps && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%.*s %.*s", i ? ", " : "", (int)g->caps[i].name_len,
                              g->caps[i].name, (int)g->caps[i].len, g->caps[i].val);
    if (!g->n_caps)
        snprintf(buf, cap, *g->prefix ? "under '%s'" : "(no captures)", g->prefix);
    return buf;
}

/* Evaluates "E", "H", "I", "2I", "H/2" against the config; -1 when unknown. */
static long size_expr(const char *e, const mpk_model_config *cfg)
{
    long mul = 1, div = 1;
    if (isdigit((unsigned char)*e))
        mul = strtol(e, (char **)&e, 10);
    long base = *e == 'E' ? cfg->num_experts : *e == 'H' ? cfg->hidden_size
              : *e == 'I' ? cfg->intermediate_size : -2;
    if (base == -2)
        return *e ? -1 : mul;
    if (base < 0)
        return -1;
    e++;
    if (*e == '/')
        div = strtol(e + 1, NULL, 10);
    long prod;
    if (mul < 0 || div <= 0 || __builtin_mul_overflow(base, mul, &prod))
        return -1; /* not a size this check can use */
    return prod / div;
}

mpk_status plan_add_entry(group_acc *acc, entry e, const char *where, mpk_error *err)
{
    entry *ne = mpk_grow(acc->e, acc->n, &acc->cap, sizeof *ne, 16);
    if (!ne)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    acc->e = ne;
    acc->e[acc->n++] = e;
    return MPK_OK;
}

/* Describes the list values items[0..k) (sorted, repeats allowed), e.g. "0-6, 8-63". */
static void ranges(const long *items, size_t k, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (size_t i = 0; i < k && o + 48 < cap;) {
        size_t j = i;
        while (j + 1 < k && items[j + 1] <= items[j] + 1)
            j++;
        o += (size_t)snprintf(buf + o, cap - o, "%s%ld", o ? ", " : "", items[i]);
        if (items[j] > items[i])
            o += (size_t)snprintf(buf + o, cap - o, "-%ld", items[j]);
        i = j + 1;
    }
    if (!o)
        snprintf(buf, cap, "none");
}

static int cmp_entry(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->src != y->src)
        return x->src < y->src ? -1 : 1;
    return x->item < y->item ? -1 : x->item > y->item;
}

/* Some item below n of some source of the group is missing (there are fewer distinct entries
 * than sources x n): names the first one and what is there. Works on the entries alone, so a
 * huge n (a config's expert count, a tensor named experts.100000000) costs nothing. */
static mpk_status report_missing(mpk_plan *p, group_acc *acc, long n, const char *where,
                                 mpk_error *err)
{
    const mpk_plan_group *g = &acc->g;
    const mpk_rule *r = g->rule;
    qsort(acc->e, acc->n, sizeof *acc->e, cmp_entry);
    long *items = mpk_alloc(sizeof *items * (acc->n ? acc->n : 1));
    if (!items)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    size_t at = 0;
    for (int s = 0; s < r->n_sources; s++) {
        size_t k = 0;
        long want = 0;
        for (; at < acc->n && acc->e[at].src == s; at++) {
            if (acc->e[at].item == want)
                want++;
            items[k++] = acc->e[at].item;
        }
        if (want >= n)
            continue;
        char cbuf[256], rbuf[256], ibuf[24], of[64];
        for (size_t i = 0; i < k; i++) /* a part's own numbers are offsets into the list */
            items[i] += g->item_base;
        ranges(items, k, rbuf, sizeof rbuf);
        free(items);
        if (g->item_base)
            snprintf(of, sizeof of, "%ld-%ld", g->item_base, g->item_base + n - 1);
        else
            snprintf(of, sizeof of, "%ld", n);
        snprintf(ibuf, sizeof ibuf, "%ld", want + g->item_base);
        const char *missing = plan_expand(p->arena, &r->sources[s], g->prefix, g->suffix, g->caps,
                                     g->n_caps, r->list_capture, ibuf);
        const char *list = r->list_capture ? r->list_capture : "item";
        MPK_FAIL(err, MPK_E_EXPERT_MISSING, where,
                 "%s: %s %ld is missing: no tensor '%s' (have %s %s of %s)",
                 caps_str(g, cbuf, sizeof cbuf), list, want + g->item_base, missing ? missing : "?",
                 list, rbuf, of);
    }
    free(items);
    MPK_FAIL(err, MPK_E_EXPERT_MISSING, where, "internal: a missing item was not found");
}

/* FP8 block grids: blocks of b x b over a tensor's last two dims must not straddle a concat
 * or chunk boundary. Walks the rule's chain over the weights' metadata; returns the size that
 * is not a multiple of b (and its dim), 0 when every boundary is aligned. */
static int64_t block_straddle(const mpk_rule *r, const mpk_bundle *w, int b, mpk_arena *a, int *dim)
{
    mpk_bundle cur = *w;
    for (int k = 0; k < r->n_ops; k++) {
        const mpk_op *op = &r->ops[k];
        mpk_bundle next;
        mpk_error e = {0};
        if (mpk_op_descs[op->kind].infer(op, &cur, &next, a, &e) != MPK_OK)
            return 0; /* the chain's own error is reported elsewhere */
        const mpk_bundle *chk = op->kind == MPK_OP_CONCAT ? &cur : op->kind == MPK_OP_CHUNK ? &next : NULL;
        if (chk && chk->n_groups * chk->n_items > 0) {
            const mpk_tmeta *t = &chk->t[0];
            if (op->dim >= t->ndim - 2 && t->shape[op->dim] % b) {
                *dim = op->dim;
                return t->shape[op->dim];
            }
        }
        cur = next;
    }
    return 0;
}

/* The first op of r's chain that would cut MXFP4's row blocks (codes two a byte, one E8M0 scale
 * per 32 values of a row: both lie along the last dim) on weights w: a transpose or a
 * concat/chunk/split of the last dim, a reshape that changes it. NULL when every op moves whole
 * rows. */
static const mpk_op *row_block_cut(const mpk_rule *r, const mpk_bundle *w, mpk_arena *a)
{
    mpk_bundle cur = *w;
    for (int k = 0; k < r->n_ops; k++) {
        const mpk_op *op = &r->ops[k];
        mpk_bundle next;
        mpk_error e = {0};
        if (cur.n_groups * cur.n_items == 0 || mpk_op_descs[op->kind].infer(op, &cur, &next, a, &e) != MPK_OK)
            return NULL; /* the chain's own error is reported elsewhere */
        int nd = cur.t[0].ndim, last = nd - 1, d = op->dim < 0 ? op->dim + nd : op->dim;
        int d2 = op->dim2 < 0 ? op->dim2 + nd : op->dim2;
        bool along = op->kind == MPK_OP_CONCAT || op->kind == MPK_OP_CHUNK || op->kind == MPK_OP_SPLIT ||
                     op->kind == MPK_OP_CONCAT_LIST || op->kind == MPK_OP_CHUNK_LIST;
        if ((along && d == last) || (op->kind == MPK_OP_TRANSPOSE && (d == last || d2 == last)) ||
            (op->kind == MPK_OP_RESHAPE && next.n_groups * next.n_items > 0 &&
             next.t[0].shape[next.t[0].ndim - 1] != cur.t[0].shape[last]))
            return op;
        cur = next;
    }
    return NULL;
}

/* --quantize turns a rule's outputs into FP8 when they are experts: per-expert tensors merged
 * or split (a list capture) or stacked ones (3-D and up: DBRX, fused families). Routers and
 * biases a preset moves (ERNIE-4.5-VL's transposed gates) stay as they are. */
bool plan_quantizes(const mpk_rule *r, const mpk_bundle *out)
{
    return r->scale_of < 0 && r->companion_of < 0 && (r->list_capture || (out->n_groups * out->n_items > 0 && out->t[0].ndim >= 3));
}

/* The items of the group (n: experts or list entries) and its source slots, filled; a hole is
 * MPK_E_MISSING naming it. */
static mpk_status group_slots(mpk_plan *p, group_acc *acc, const mpk_plan_opts *opts, long *n_out, mpk_error *err)
{
    mpk_plan_group *g = &acc->g;
    const mpk_rule *r = g->rule;
    const char *where = p->src->dir;
    long n = 1;
    if (acc->n_part > 0) {
        n = acc->n_part;
    } else if (r->list_in_sources) {
        for (size_t i = 0; i < acc->n; i++)
            if (acc->e[i].item + 1 > n)
                n = acc->e[i].item + 1;
        if (opts->cfg && opts->cfg->num_experts > n && strcmp(r->list_capture, "expert") == 0)
            n = opts->cfg->num_experts;
    }
    /* every source needs items 0..n-1: fewer entries means a hole (found without
     * allocating for n, which a config or a tensor name may make huge) */
    if ((size_t)r->n_sources * (size_t)n > acc->n)
        return report_missing(p, acc, n, where, err);
    g->n_items = (int)n;
    g->src = mpk_arena_alloc(p->arena, sizeof *g->src * (size_t)(r->n_sources * n));
    if (!g->src)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    memset(g->src, 0, sizeof *g->src * (size_t)(r->n_sources * n));
    for (size_t i = 0; i < acc->n; i++)
        g->src[acc->e[i].src * n + acc->e[i].item] = acc->e[i].t;
    for (long k = 0; k < r->n_sources * n; k++)
        if (!g->src[k]) /* as many entries as slots, but some repeat (experts.1 and experts.01) */
            return report_missing(p, acc, n, where, err);
    *n_out = n;
    return MPK_OK;
}

/* Names from an index alone: no shapes to infer or check, the targets' dtype their sources'. */
static mpk_status names_only_meta(mpk_plan *p, mpk_plan_group *g, const mpk_plan_opts *opts, mpk_error *err)
{
    const mpk_rule *r = g->rule;
    int items = r->list_capture && !r->list_in_sources && opts->cfg && opts->cfg->num_experts > 0
                    ? (int)opts->cfg->num_experts : 1;
    g->out_meta.n_groups = r->n_targets;
    g->out_meta.n_items = items;
    g->out_meta.t = mpk_arena_alloc(p->arena, sizeof(mpk_tmeta) * (size_t)(r->n_targets * items));
    if (!g->out_meta.t)
        MPK_FAIL(err, MPK_E_NOMEM, p->src->dir, "out of memory");
    for (int k = 0; k < r->n_targets * items; k++)
        g->out_meta.t[k] = (mpk_tmeta){.dtype = g->src[0]->info->dtype, .ndim = 0};
    return MPK_OK;
}

/* Each source's shape against the one the rule's source_shape and config.json imply. */
static mpk_status check_source_shapes(const mpk_plan *p, const mpk_plan_group *g, long n, const mpk_plan_opts *opts,
                                      mpk_error *err)
{
    const mpk_rule *r = g->rule;
    if (!r->source_shape_ndim || !opts->cfg || !opts->cfg->found)
        return MPK_OK;
    for (long k = 0; k < r->n_sources * n; k++) {
        const mpk_tensor_info *t = g->src[k]->info;
        bool ok = t->ndim == r->source_shape_ndim;
        for (int d = 0; ok && d < t->ndim; d++) {
            long want = size_expr(r->source_shape[d], opts->cfg);
            ok = want < 0 || want == t->shape[d];
        }
        if (!ok) {
            char sh[128], want[128] = "[";
            for (int d = 0; d < r->source_shape_ndim; d++)
                snprintf(want + strlen(want), sizeof want - strlen(want), "%s%s=%ld", d ? ", " : "",
                         r->source_shape[d], size_expr(r->source_shape[d], opts->cfg));
            strcat(want, "]");
            MPK_FAIL(err, MPK_E_SHAPE, p->src->dir, "tensor '%s' has shape %s but config.json implies %s (%s)",
                     t->name, mpk_shape_str(t->shape, t->ndim, sh, sizeof sh), want, r->path);
        }
    }
    return MPK_OK;
}

/* The targets' metadata through the op chain: whole bytes, no overflow, as many as the rule's
 * targets. */
static mpk_status infer_targets(mpk_plan *p, mpk_plan_group *g, const mpk_bundle *in, mpk_error *err)
{
    const mpk_rule *r = g->rule;
    const char *where = p->src->dir;
    char cbuf[256];
    mpk_error e2 = {0};
    if (mpk_ops_infer_chain(r->ops, r->n_ops, in, &g->out_meta, p->arena, &e2) != MPK_OK)
        MPK_FAIL(err, e2.code, where, "%s (%s): %s", caps_str(g, cbuf, sizeof cbuf), r->path,
                 mpk_error_what(&e2));
    for (int k = 0; k < g->out_meta.n_groups * g->out_meta.n_items; k++) {
        const mpk_tmeta *m = &g->out_meta.t[k];
        uint64_t nb;
        mpk_status ns = mpk_tensor_nbytes(m->dtype, m->shape, m->ndim, &nb);
        if (ns != MPK_OK) {
            char sh[256];
            MPK_FAIL(err, ns, where, "%s (%s): the ops make a %s %s tensor, whose byte size %s",
                     caps_str(g, cbuf, sizeof cbuf), r->path, mpk_dtype_name(m->dtype),
                     mpk_shape_str(m->shape, m->ndim, sh, sizeof sh),
                     ns == MPK_E_SIZE_OVERFLOW ? "overflows 64 bits" : "is not whole bytes");
        }
    }
    int want_items = r->list_capture && !r->list_in_sources ? g->out_meta.n_items : 1;
    if (g->out_meta.n_groups != r->n_targets || g->out_meta.n_items != want_items)
        MPK_FAIL(err, MPK_E_SPEC, where,
                 "%s: the ops produce %d group(s) of %d tensor(s) but the converter has %d "
                 "target(s)%s",
                 r->path, g->out_meta.n_groups, g->out_meta.n_items, r->n_targets,
                 r->list_capture && !r->list_in_sources ? " (per list index)" : " of one tensor");
    return MPK_OK;
}

/* FP8 scale grids move with their weights only when no block straddles a concat. */
static mpk_status check_fp8_blocks(mpk_plan *p, const mpk_plan_group *g, long n, const mpk_bundle *in,
                                   const mpk_plan_opts *opts, mpk_error *err)
{
    const mpk_rule *r = g->rule;
    const char *where = p->src->dir;
    const mpk_bundle *w = NULL;
    mpk_bundle wb = *in;
    if (r->scale_of >= 0) {
        wb.t = mpk_arena_alloc(p->arena, sizeof(mpk_tmeta) * (size_t)(r->n_sources * n));
        if (!wb.t)
            MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
        w = &wb;
        bool rows = false;
        for (long k = 0; k < r->n_sources * n && w; k++) {
            const mpk_tensor_info *si = g->src[k]->info;
            size_t sl = strlen(si->name);
            bool dot = mpk_str_ends(si->name, ".scale"); /* DeepSeek-V4's X.scale beside X.weight */
            char *wn = dot ? mpk_arena_printf(p->arena, "%.*s.weight", (int)(sl - 6), si->name)
                           : mpk_arena_strndup(p->arena, si->name, sl - 10);
            const mpk_ckpt_tensor *wt = wn ? mpk_ckpt_find(p->src, wn) : NULL;
            if (!wt) {
                w = NULL; /* a lone *_scale_inv tensor: moved like any other */
                break;
            }
            char a[128], b[128];
            if (!mpk_block_scales_match(wt->info, si, p->fp8_block, &rows))
                MPK_FAIL(err, MPK_E_QUANT, where,
                         "scale grid '%s' is %s %s but its weight '%s' %s %s needs F32 or F8_E8M0 %dx%d blocks "
                         "(FP8), or F8_E8M0 one per 32 values of a row (MXFP4 codes)",
                         si->name, mpk_dtype_name(si->dtype), mpk_shape_str(si->shape, si->ndim, a, sizeof a),
                         wn, mpk_dtype_name(wt->info->dtype), mpk_shape_str(wt->info->shape, wt->info->ndim, b, sizeof b),
                         p->fp8_block, p->fp8_block);
            wb.t[k] = (mpk_tmeta){wt->info->dtype, wt->info->ndim, {0}};
            memcpy(wb.t[k].shape, wt->info->shape, sizeof wt->info->shape);
        }
        const mpk_op *cut = rows ? row_block_cut(r, &wb, p->arena) : NULL;
        if (cut)
            MPK_FAIL_ABOUT(err, MPK_FIELD_QUANT, MPK_E_QUANT, where,
                           "%s (%s): MXFP4 codes and their per-32 scales lie along rows, and the rule's %s cuts "
                           "or reorders the last dim: they cannot move with it (convert a dequantized copy)",
                           strchr(g->key, '|') + 1, r->path, mpk_op_descs[cut->kind].name);
        if (rows)
            w = NULL; /* whole rows moved: no FP8 block check */
    } else if (opts->quantize_block > 0 && plan_quantizes(r, &g->out_meta)) {
        w = in;
    }
    int dim = 0;
    int64_t bad = w ? block_straddle(r, w, p->fp8_block, p->arena, &dim) : 0;
    if (bad)
        MPK_FAIL_ABOUT(err, MPK_FIELD_QUANT, MPK_E_QUANT, where,
                 "%s (%s): FP8 %dx%d blocks cannot follow a concat/chunk along dim %d of size %lld "
                 "(not a multiple of %d: I %% %d != 0 would put gate and up rows in one block)",
                 strchr(g->key, '|') + 1, r->path, p->fp8_block, p->fp8_block, dim,
                 (long long)bad, p->fp8_block, p->fp8_block);
    return MPK_OK;
}

/* compressed-tensors' FP8 weight_scale as a block grid ([ceil(out/b), ceil(in/b)], not one per
 * row or per tensor) concatenated with the weights: exact only when no block straddles gate and
 * up (out % b == 0), as for the _scale_inv grids. */
static mpk_status check_ct_grids(mpk_plan *p, const mpk_plan_group *g, long n, mpk_error *err)
{
    const mpk_rule *r = g->rule;
    const char *seg = spec_companion_seg(r);
    if (!seg || strcmp(seg, "weight_scale") || !r->list_in_sources || r->n_sources < 2)
        return MPK_OK;
    for (long k = 0; k < r->n_sources * n; k++) {
        const mpk_tensor_info *si = g->src[k]->info;
        size_t sl = strlen(si->name);
        char *wn = mpk_str_ends(si->name, ".weight_scale") ? mpk_arena_strndup(p->arena, si->name, sl - 6) : NULL;
        const mpk_ckpt_tensor *wt = wn ? mpk_ckpt_find(p->src, wn) : NULL;
        if (!wt || !mpk_dtype_is_fp8(wt->info->dtype) || si->ndim != 2 || wt->info->ndim != 2 ||
            si->shape[0] == wt->info->shape[0] || wt->info->shape[0] % p->fp8_block == 0)
            continue;
        MPK_FAIL_ABOUT(err, MPK_FIELD_QUANT, MPK_E_QUANT, p->src->dir,
                       "%s (%s): '%s' is a grid of %dx%d blocks and its weight has %lld rows (not a multiple of %d): "
                       "concatenated, a block would hold rows of two projections (convert with --dequantize)",
                       strchr(g->key, '|') + 1, r->path, si->name, p->fp8_block, p->fp8_block,
                       (long long)wt->info->shape[0], p->fp8_block);
    }
    return MPK_OK;
}

mpk_status plan_finish_group(mpk_plan *p, group_acc *acc, const mpk_plan_opts *opts,
                               mpk_error *err)
{
    mpk_plan_group *g = &acc->g;
    const mpk_rule *r = g->rule;
    long n = 0;
    MPK_TRY(group_slots(p, acc, opts, &n, err));
    if (p->src->names_only)
        return names_only_meta(p, g, opts, err);
    /* input metadata, then the chain */
    mpk_bundle in = {r->n_sources, (int)n, mpk_arena_alloc(p->arena, sizeof(mpk_tmeta) * (size_t)(r->n_sources * n))};
    if (!in.t)
        MPK_FAIL(err, MPK_E_NOMEM, p->src->dir, "out of memory");
    for (long k = 0; k < r->n_sources * n; k++) {
        const mpk_tensor_info *t = g->src[k]->info;
        in.t[k].dtype = t->dtype;
        in.t[k].ndim = t->ndim;
        memcpy(in.t[k].shape, t->shape, sizeof t->shape);
    }
    MPK_TRY(check_source_shapes(p, g, n, opts, err));
    MPK_TRY(infer_targets(p, g, &in, err));
    MPK_TRY(check_ct_grids(p, g, n, err));
    return check_fp8_blocks(p, g, n, &in, opts, err);
}

/* Part k of partitioned rule r as a rule of its own: forward, every source and target k alone;
 * reversed, source k alone and every target. Made once per plan (parts[ri * 8 + k]). */
static const mpk_rule *part_rule(mpk_plan *p, const mpk_rule **parts, int ri, const mpk_rule *r, int k)
{
    const mpk_rule **slot = &parts[ri * 8 + k];
    if (!*slot) {
        mpk_rule *d = mpk_arena_alloc(p->arena, sizeof *d);
        if (!d)
            return NULL;
        *d = *r;
        d->partition = false;
        if (r->list_in_sources) {
            d->targets[0] = r->targets[k];
            d->n_targets = 1;
        } else {
            d->sources[0] = r->sources[k];
            d->n_sources = 1;
        }
        size_t pl = strnlen(d->path, sizeof d->path - 10); /* k < 8 */
        snprintf(d->path + pl, sizeof d->path - pl, " (part %c)", '0' + k);
        *slot = d;
    }
    return *slot;
}

/* Cuts the groups of partitioned rules into their parts (see mpk_rule.partition). Forward: the
 * list 0..P*m-1 into P runs of m (m: config.json's expert count when it has one and the list
 * is {expert}, else the list's length / P rounded up), part k keeping items k*m.. numbered from
 * 0; reversed: part k takes source k, its outputs numbered from k * (part 0's count, set after
 * inference). */
mpk_status plan_split_parts(mpk_plan *p, group_acc **accs, size_t *n_accs, size_t *cap,
                              const mpk_plan_opts *opts, mpk_error *err)
{
    const mpk_spec *spec = p->spec;
    const char *where = p->src->dir;
    bool any = false;
    for (int ri = 0; ri < spec->n_rules; ri++)
        any |= spec->rules[ri].partition;
    if (!any)
        return MPK_OK;
    const mpk_rule **parts = mpk_arena_alloc(p->arena, sizeof *parts * (size_t)spec->n_rules * 8);
    if (!parts)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    memset(parts, 0, sizeof *parts * (size_t)spec->n_rules * 8);
    size_t n0 = *n_accs;
    for (size_t i = 0; i < n0; i++) {
        const mpk_rule *r = (*accs)[i].g.rule;
        if (!r->partition)
            continue;
        int ri = (int)(r - spec->rules), P = r->list_in_sources ? r->n_targets : r->n_sources;
        long m = 1;
        if (r->list_in_sources) {
            long top = 0;
            for (size_t k = 0; k < (*accs)[i].n; k++)
                if ((*accs)[i].e[k].item + 1 > top)
                    top = (*accs)[i].e[k].item + 1;
            m = (top + P - 1) / P;
            if (opts->cfg && opts->cfg->num_experts > m && strcmp(r->list_capture, "expert") == 0)
                m = opts->cfg->num_experts;
        }
        /* parts 1..P-1 are new groups at the end; part 0 stays in place */
        for (int k = P - 1; k >= 0; k--) {
            group_acc *src = &(*accs)[i], part = {.g = src->g};
            const mpk_rule *d = part_rule(p, parts, ri, r, k);
            part.g.rule = d;
            part.g.key = mpk_arena_printf(p->arena, "%s#%d", src->g.key, k);
            if (!d || !part.g.key)
                MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
            part.part = k;
            part.first = i;
            if (r->list_in_sources) {
                part.n_part = m;
                part.g.item_base = k * m;
            }
            for (size_t e = 0; e < src->n; e++) {
                entry x = src->e[e];
                if (r->list_in_sources ? x.item / m != k : x.src != k)
                    continue;
                if (r->list_in_sources)
                    x.item -= k * m;
                else
                    x.src = 0;
                if (plan_add_entry(&part, x, where, err) != MPK_OK) {
                    free(part.e);
                    return MPK_E_NOMEM;
                }
            }
            if (k == 0) {
                free(src->e);
                *src = part;
                continue;
            }
            group_acc *na = mpk_grow(*accs, *n_accs, cap, sizeof *na, 64);
            if (!na) {
                free(part.e);
                MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
            }
            *accs = na;
            (*accs)[(*n_accs)++] = part;
        }
    }
    return MPK_OK;
}
