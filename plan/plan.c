/* plan.c — match a checkpoint against a spec, group, check, infer, lay out shards. */
#define _GNU_SOURCE
#include "mpk_plan.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int src;      /* source pattern index */
    long item;    /* list value, 0 when the rule has no list on the source side */
    const mpk_ckpt_tensor *t;
} entry;

typedef struct {
    mpk_plan_group g;
    entry *e;
    size_t n, cap;
    long n_part;  /* a forward part: its list length (items 0..n_part-1 must all be there) */
    int part;     /* a part of a partitioned rule: k, */
    size_t first; /* and the index of part 0's group */
} group_acc;

static char *expand(mpk_arena *a, const mpk_pattern *p, const char *prefix, const char *suffix,
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

static bool parse_index(const char *v, size_t len, long *out)
{
    if (len == 0 || len > 9)
        return false;
    long x = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)v[i]))
            return false;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return true;
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

static mpk_status add_entry(group_acc *acc, entry e, const char *where, mpk_error *err)
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
        const char *missing = expand(p->arena, &r->sources[s], g->prefix, g->suffix, g->caps,
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

bool mpk_fp8_grid_matches(const mpk_tensor_info *w, const mpk_tensor_info *s, int b)
{
    if (s->dtype != MPK_DTYPE_F32 || w->ndim < 2 || s->ndim != w->ndim)
        return false;
    for (int d = 0; d < w->ndim; d++)
        if (s->shape[d] != (d < w->ndim - 2 ? w->shape[d] : (w->shape[d] + b - 1) / b))
            return false;
    return true;
}

static bool is_fp8(mpk_dtype d)
{
    return d == MPK_DTYPE_F8_E4M3 || d == MPK_DTYPE_F8_E5M2;
}

const mpk_plan_view *mpk_plan_view_of(const mpk_plan *p, const mpk_ckpt_tensor *t)
{
    if (!p->n_views || (const void *)t < (const void *)p->views ||
        (const void *)t >= (const void *)(p->views + p->n_views))
        return NULL;
    return (const mpk_plan_view *)t;
}

/* The tensors the planner sees: the checkpoint's, or with --dequantize every FP8 weight that
 * has a weight_scale_inv grid replaced by a BF16 view and the grid dropped. */
static mpk_status source_list(mpk_plan *p, const mpk_plan_opts *opts, const mpk_ckpt_tensor ***out,
                              size_t *n_out, mpk_error *err)
{
    const mpk_ckpt *src = p->src;
    const mpk_ckpt_tensor **list = mpk_arena_alloc(p->arena, sizeof *list * (src->n_tensors + 1));
    if (!list)
        MPK_FAIL(err, MPK_E_NOMEM, src->dir, "out of memory");
    size_t n = 0, nv = 0;
    if (opts->dequantize) {
        p->views = mpk_arena_alloc(p->arena, sizeof *p->views * (src->n_tensors + 1));
        if (!p->views)
            MPK_FAIL(err, MPK_E_NOMEM, src->dir, "out of memory");
    }
    for (size_t i = 0; i < src->n_tensors; i++) {
        const mpk_ckpt_tensor *t = &src->tensors[i];
        const char *name = t->info->name;
        if (opts->dequantize && mpk_str_ends(name, "_scale_inv")) {
            char *w = mpk_arena_strndup(p->arena, name, strlen(name) - 10);
            const mpk_ckpt_tensor *wt = w ? mpk_ckpt_find(src, w) : NULL;
            if (wt && is_fp8(wt->info->dtype))
                continue; /* folded into its weight's view */
        }
        if (opts->dequantize && is_fp8(t->info->dtype)) {
            char *sn = mpk_arena_printf(p->arena, "%s_scale_inv", name);
            const mpk_ckpt_tensor *st = sn ? mpk_ckpt_find(src, sn) : NULL;
            if (st) {
                char a[128], b[128];
                if (!mpk_fp8_grid_matches(t->info, st->info, p->fp8_block))
                    MPK_FAIL(err, MPK_E_QUANT, src->dir,
                             "tensor '%s' %s %s: its scale grid '%s' is %s %s, not F32 with %dx%d "
                             "blocks",
                             name, mpk_dtype_name(t->info->dtype),
                             mpk_shape_str(t->info->shape, t->info->ndim, a, sizeof a), sn,
                             mpk_dtype_name(st->info->dtype),
                             mpk_shape_str(st->info->shape, st->info->ndim, b, sizeof b), p->fp8_block,
                             p->fp8_block);
                mpk_plan_view *v = &p->views[nv++];
                v->info = *t->info;
                v->info.dtype = MPK_DTYPE_BF16;
                v->t = *t;
                v->t.info = &v->info;
                mpk_tensor_nbytes(MPK_DTYPE_BF16, v->info.shape, v->info.ndim, &v->t.nbytes);
                v->weight = t;
                v->scale = st;
                list[n++] = &v->t;
                continue;
            }
        }
        list[n++] = t;
    }
    p->n_views = nv;
    *out = list;
    *n_out = n;
    return MPK_OK;
}

/* --quantize turns a rule's outputs into FP8 when they are experts: per-expert tensors merged
 * or split (a list capture) or stacked ones (3-D and up: DBRX, fused families). Routers and
 * biases a preset moves (ERNIE-4.5-VL's transposed gates) stay as they are. */
static bool quantizes(const mpk_rule *r, const mpk_bundle *out)
{
    return r->scale_of < 0 && (r->list_capture || (out->n_groups * out->n_items > 0 && out->t[0].ndim >= 3));
}

static mpk_status finish_group(mpk_plan *p, group_acc *acc, const mpk_plan_opts *opts,
                               mpk_error *err)
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
    char cbuf[256];
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
    if (p->src->names_only) { /* names from an index alone: no shapes to infer or check */
        int items = r->list_capture && !r->list_in_sources && opts->cfg && opts->cfg->num_experts > 0
                        ? (int)opts->cfg->num_experts : 1;
        g->out_meta.n_groups = r->n_targets;
        g->out_meta.n_items = items;
        g->out_meta.t = mpk_arena_alloc(p->arena, sizeof(mpk_tmeta) * (size_t)(r->n_targets * items));
        if (!g->out_meta.t)
            MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
        for (int k = 0; k < r->n_targets * items; k++)
            g->out_meta.t[k] = (mpk_tmeta){.dtype = g->src[0]->info->dtype, .ndim = 0};
        return MPK_OK;
    }
    /* input metadata, then the chain */
    mpk_bundle in = {r->n_sources, (int)n, mpk_arena_alloc(p->arena, sizeof(mpk_tmeta) * (size_t)(r->n_sources * n))};
    if (!in.t)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    for (long k = 0; k < r->n_sources * n; k++) {
        const mpk_tensor_info *t = g->src[k]->info;
        in.t[k].dtype = t->dtype;
        in.t[k].ndim = t->ndim;
        memcpy(in.t[k].shape, t->shape, sizeof t->shape);
    }
    if (r->source_shape_ndim && opts->cfg && opts->cfg->found) {
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
                MPK_FAIL(err, MPK_E_SHAPE, where,
                         "tensor '%s' has shape %s but config.json implies %s (%s)", t->name,
                         mpk_shape_str(t->shape, t->ndim, sh, sizeof sh), want, r->path);
            }
        }
    }
    mpk_error e2 = {0};
    if (mpk_ops_infer_chain(r->ops, r->n_ops, &in, &g->out_meta, p->arena, &e2) != MPK_OK)
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
    /* FP8 scale grids move with their weights only when no block straddles a concat */
    const mpk_bundle *w = NULL;
    mpk_bundle wb = in;
    if (r->scale_of >= 0) {
        wb.t = mpk_arena_alloc(p->arena, sizeof(mpk_tmeta) * (size_t)(r->n_sources * n));
        if (!wb.t)
            MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
        w = &wb;
        for (long k = 0; k < r->n_sources * n && w; k++) {
            const mpk_tensor_info *si = g->src[k]->info;
            char *wn = mpk_arena_strndup(p->arena, si->name, strlen(si->name) - 10);
            const mpk_ckpt_tensor *wt = wn ? mpk_ckpt_find(p->src, wn) : NULL;
            if (!wt) {
                w = NULL; /* a lone *_scale_inv tensor: moved like any other */
                break;
            }
            char a[128], b[128];
            if (!mpk_fp8_grid_matches(wt->info, si, p->fp8_block))
                MPK_FAIL(err, MPK_E_QUANT, where,
                         "scale grid '%s' is %s %s but its weight '%s' %s needs F32 %dx%d blocks",
                         si->name, mpk_dtype_name(si->dtype), mpk_shape_str(si->shape, si->ndim, a, sizeof a),
                         wn, mpk_shape_str(wt->info->shape, wt->info->ndim, b, sizeof b), p->fp8_block,
                         p->fp8_block);
            wb.t[k] = (mpk_tmeta){wt->info->dtype, wt->info->ndim, {0}};
            memcpy(wb.t[k].shape, wt->info->shape, sizeof wt->info->shape);
        }
    } else if (opts->quantize_block > 0 && quantizes(r, &g->out_meta)) {
        w = &in;
    }
    int dim = 0;
    int64_t bad = w ? block_straddle(r, w, p->fp8_block, p->arena, &dim) : 0;
    if (bad)
        MPK_FAIL(err, MPK_E_QUANT, where,
                 "%s (%s): FP8 %dx%d blocks cannot follow a concat/chunk along dim %d of size %lld "
                 "(not a multiple of %d: I %% %d != 0 would put gate and up rows in one block)",
                 strchr(g->key, '|') + 1, r->path, p->fp8_block, p->fp8_block, dim,
                 (long long)bad, p->fp8_block, p->fp8_block);
    return MPK_OK;
}

static int cmp_out(const void *a, const void *b)
{
    return mpk_natural_cmp(((const mpk_plan_out *)a)->name, ((const mpk_plan_out *)b)->name);
}

static char *apply_renames(mpk_arena *a, const mpk_spec *s, const char *name)
{
    char *cur = (char *)name;
    for (int i = 0; i < s->n_renames; i++) {
        const char *f = s->renames[i].from, *t = s->renames[i].to;
        const char *hit = strstr(cur, f);
        if (!hit)
            continue;
        size_t fl = strlen(f), tl = strlen(t);
        char *n = mpk_arena_alloc(a, strlen(cur) - fl + tl + 1);
        if (!n)
            return NULL;
        size_t pre = (size_t)(hit - cur);
        memcpy(n, cur, pre);
        memcpy(n + pre, t, tl);
        strcpy(n + pre + tl, hit + fl);
        cur = n;
    }
    return cur;
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
static mpk_status split_parts(mpk_plan *p, group_acc **accs, size_t *n_accs, size_t *cap,
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
                if (add_entry(&part, x, where, err) != MPK_OK) {
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

/* Quantization companions: a tensor beside a weight that the weight means nothing without.
 * As the last name segment (GPTQ/AWQ, ModelOpt, compressed-tensors, bitsandbytes, FP8)... */
static const char *const companion_segs[] = {
    "weight_scale", "weight_scale_2", "input_scale", "weight_scale_inv", "output_scale", "k_scale",
    "v_scale", "qweight", "qzeros", "scales", "g_idx", "weight_packed", "weight_shape",
    "weight_zero_point", "weight_global_scale", "input_global_scale", "weight_g_idx", "SCB",
    "weight_format", "absmax", "quant_map", "nested_absmax", "nested_quant_map", NULL};
/* ...or appended to the weight's own name (packed FP8 grids, MXFP4 pairs). */
static const char *const companion_tails[] = {"_scale_inv", "_scale", "_scale_2", "_blocks", "_scales",
                                              "_zero_point", "_qzeros", "_input_scale", "_weight_scale",
                                              NULL};

static bool is_companion_seg(const char *name)
{
    const char *last = strrchr(name, '.');
    last = last ? last + 1 : name;
    for (int i = 0; companion_segs[i]; i++)
        if (strcmp(last, companion_segs[i]) == 0)
            return true;
    return false;
}

enum { UNK_PER_EXPERT, UNK_COMPANION, UNK_COUNT };
static const char *const unk_why[UNK_COUNT] = {
    "a per-expert tensor that no rule consumes",
    "a quantization companion (scale, zero point, ...) of an expert linear, not moved with it",
};

/* The tensors a conversion would leave half-converted, among the pass-throughs: any
 * per-expert name (experts.N.) and any quantization companion of a tensor a rule consumes,
 * unless the spec declares it a pass-through ("pass"). Each goes into p->unknown; without
 * opts->pass_unknown, any at all is MPK_E_NOT_UNDERSTOOD naming the first few of each kind. */
static mpk_status check_unknown(mpk_plan *p, const mpk_ckpt_tensor *const *pass, size_t n_pass,
                                const mpk_ckpt_tensor *const *list, size_t n_list, const bool *used,
                                const mpk_plan_opts *opts, mpk_error *err)
{
    const mpk_spec *spec = p->spec;
    const char *where = p->src->dir;
    mpk_strmap consumed = {0}, modules = {0};
    int *kind = mpk_calloc(n_pass + 1, sizeof *kind);
    mpk_status st = MPK_OK;
    if (!kind || mpk_strmap_init(&consumed, n_list + 1) != MPK_OK ||
        mpk_strmap_init(&modules, n_list + 1) != MPK_OK) {
        st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_list; i++) {
        if (!used[i])
            continue;
        const char *n = list[i]->info->name, *dot = strrchr(n, '.');
        mpk_strmap_put(&consumed, n, strlen(n), i, NULL);
        if (dot)
            mpk_strmap_put(&modules, n, (size_t)(dot - n), i, NULL);
    }
    size_t count[UNK_COUNT] = {0};
    p->unknown = mpk_arena_alloc(p->arena, sizeof *p->unknown * (n_pass + 1));
    if (!p->unknown) {
        st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_pass; i++) {
        const char *n = pass[i]->info->name;
        size_t len = strlen(n), got;
        bool declared = false;
        for (int k = 0; k < spec->n_pass && !declared; k++) {
            mpk_capture caps[8];
            int nc;
            size_t a, b;
            declared = mpk_pattern_match(&spec->pass[k], n, caps, &nc, &a, &b);
        }
        if (declared)
            continue;
        int kd = -1;
        const char *dot = strrchr(n, '.');
        if (mpk_per_expert_name(n))
            kd = is_companion_seg(n) ? UNK_COMPANION : UNK_PER_EXPERT;
        else if (dot && is_companion_seg(n) && mpk_strmap_get(&modules, n, (size_t)(dot - n), &got))
            kd = UNK_COMPANION;
        for (int k = 0; kd < 0 && companion_tails[k]; k++) {
            size_t tl = strlen(companion_tails[k]);
            if (len > tl && strcmp(n + len - tl, companion_tails[k]) == 0 &&
                mpk_strmap_get(&consumed, n, len - tl, &got))
                kd = UNK_COMPANION;
        }
        if (kd < 0)
            continue;
        p->unknown[p->n_unknown++] = (mpk_plan_unknown){n, unk_why[kd]};
        kind[i] = kd + 1;
        count[kd]++;
    }
    if (!p->n_unknown || opts->pass_unknown)
        goto out;
    char msg[900];
    size_t o = (size_t)snprintf(msg, sizeof msg, "%zu tensor(s) that %s '%s'%s does not understand would be "
                                "left half-converted:", p->n_unknown, "spec",
                                spec->name, spec->reversed ? " (reversed)" : "");
    for (int kd = 0; kd < UNK_COUNT; kd++) {
        if (!count[kd])
            continue;
        o += (size_t)snprintf(msg + o, o < sizeof msg ? sizeof msg - o : 0, " %s%s:", count[kd] > 1 ? "each " : "",
                              unk_why[kd]);
        size_t shown = 0;
        for (size_t i = 0; i < n_pass && shown < 3; i++)
            if (kind[i] == kd + 1)
                o += (size_t)snprintf(msg + o, o < sizeof msg ? sizeof msg - o : 0, "%s '%s'", shown++ ? "," : "",
                                      pass[i]->info->name);
        if (count[kd] > shown)
            o += (size_t)snprintf(msg + o, o < sizeof msg ? sizeof msg - o : 0, " and %zu more", count[kd] - shown);
        o += (size_t)snprintf(msg + o, o < sizeof msg ? sizeof msg - o : 0, ";");
    }
    if (o < sizeof msg)
        msg[o - 1] = 0; /* the last ';' */
    st = mpk_error_set(err, MPK_E_NOT_UNDERSTOOD, 0, where, "%s", msg);
out:
    free(kind);
    mpk_strmap_free(&consumed);
    mpk_strmap_free(&modules);
    return st;
}

mpk_status mpk_plan_build(const mpk_ckpt *src, const mpk_spec *spec, const mpk_plan_opts *opts,
                          mpk_plan **out, mpk_error *err)
{
    *out = NULL;
    const char *where = src->dir;
    mpk_plan *p = mpk_calloc(1, sizeof *p);
    if (!p || !(p->arena = mpk_arena_new())) {
        free(p);
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    }
    p->src = src;
    p->spec = spec;
    mpk_status st = MPK_OK;
    group_acc *accs = NULL;
    size_t n_accs = 0, cap_accs = 0;
    mpk_strmap keys = {0}, names = {0};
    const mpk_ckpt_tensor **pass = mpk_calloc(src->n_tensors + 1, sizeof *pass);
    const mpk_ckpt_tensor **list = NULL;
    bool *used = mpk_calloc(src->n_tensors + 1, sizeof *used);
    if (!pass || !used || mpk_strmap_init(&keys, 256) != MPK_OK) {
        st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
        goto done;
    }
    /* a quantization moepack does not implement: its weights would be moved as plain tensors,
     * its scales left behind, config.json's declaration kept or dropped wrongly */
    char qbuf[512];
    const char *qwhy = opts->cfg ? mpk_config_quant_unsupported(opts->cfg, qbuf, sizeof qbuf) : NULL;
    if (qwhy) {
        char *qp = mpk_path_join(where, strcmp(opts->cfg->quant_key, "hf_quant_config.json") == 0
                                            ? "hf_quant_config.json" : "config.json");
        st = mpk_error_set(err, MPK_E_NOT_UNDERSTOOD, 0, qp ? qp : where, "%s", qwhy);
        free(qp);
        goto done;
    }
    p->fp8_block = opts->quantize_block > 0 ? opts->quantize_block : 128;
    size_t n_list = 0;
    if ((st = source_list(p, opts, &list, &n_list, err)) != MPK_OK)
        goto done;
    /* 1. match */
    for (size_t ti = 0; ti < n_list; ti++) {
        const mpk_ckpt_tensor *t = list[ti];
        const char *name = t->info->name;
        bool consumed = false;
        for (int ri = 0; ri < spec->n_rules && !consumed; ri++) {
            const mpk_rule *r = &spec->rules[ri];
            for (int si = 0; si < r->n_sources && !consumed; si++) {
                mpk_capture caps[8];
                int nc;
                size_t start, end;
                if (!mpk_pattern_match(&r->sources[si], name, caps, &nc, &start, &end))
                    continue;
                consumed = true;
                long item = 0;
                mpk_capture keep[8];
                int nk = 0;
                for (int c = 0; c < nc; c++) {
                    if (r->list_in_sources && strlen(r->list_capture) == caps[c].name_len &&
                        memcmp(r->list_capture, caps[c].name, caps[c].name_len) == 0) {
                        if (!parse_index(caps[c].val, caps[c].len, &item)) {
                            st = mpk_error_set(err, MPK_E_SPEC, 0, where,
                                               "tensor '%s': {%s} matched '%.*s', not an index (%s)",
                                               name, r->list_capture, (int)caps[c].len, caps[c].val,
                                               r->path);
                            goto done;
                        }
                    } else {
                        keep[nk++] = caps[c];
                    }
                }
                char *prefix = mpk_arena_strndup(p->arena, name, start);
                char *suffix = mpk_arena_strndup(p->arena, name + end, strlen(name + end));
                char *key = expand(p->arena, &r->sources[0], prefix, suffix, keep, nk,
                                   r->list_capture, "*");
                char *full_key = key ? mpk_arena_printf(p->arena, "%d|%s", ri, key) : NULL;
                if (!full_key) {
                    st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
                    goto done;
                }
                size_t gi;
                if (!mpk_strmap_get(&keys, full_key, strlen(full_key), &gi)) {
                    group_acc *na = mpk_grow(accs, n_accs, &cap_accs, sizeof *na, 64);
                    if (!na) {
                        st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
                        goto done;
                    }
                    accs = na;
                    gi = n_accs++;
                    memset(&accs[gi], 0, sizeof accs[gi]);
                    accs[gi].g.rule = r;
                    accs[gi].g.key = full_key;
                    accs[gi].g.prefix = prefix;
                    accs[gi].g.suffix = suffix;
                    for (int k = 0; k < nk; k++) {
                        accs[gi].g.caps[k] = keep[k];
                        /* keep the capture value alive with the plan */
                        accs[gi].g.caps[k].val = mpk_arena_strndup(p->arena, keep[k].val, keep[k].len);
                    }
                    accs[gi].g.n_caps = nk;
                    mpk_strmap_put(&keys, full_key, strlen(full_key), gi, NULL);
                }
                if ((st = add_entry(&accs[gi], (entry){si, item, t}, where, err)) != MPK_OK)
                    goto done;
            }
        }
        if (consumed)
            p->n_consumed++, used[ti] = true;
        else
            pass[p->n_pass++] = t;
    }
    if ((st = split_parts(p, &accs, &n_accs, &cap_accs, opts, err)) != MPK_OK)
        goto done;
    /* already converted? nothing matched a source, but something looks like a target */
    if (n_accs == 0 && spec->n_rules > 0) {
        for (size_t ti = 0; ti < src->n_tensors; ti++)
            if (mpk_str_ends(src->tensors[ti].info->name, "_blocks") && !spec->dequantizes) {
                st = mpk_error_set(err, MPK_E_ALREADY_CONVERTED, 0, where,
                                   "tensor '%s' is MXFP4 experts, already packed (preset '%s' has "
                                   "nothing to do); use --preset gpt_oss to dequantize them",
                                   src->tensors[ti].info->name, spec->name);
                goto done;
            }
        for (size_t ti = 0; ti < src->n_tensors; ti++)
            for (int ri = 0; ri < spec->n_rules; ri++)
                for (int k = 0; k < spec->rules[ri].n_targets; k++) {
                    mpk_capture caps[8];
                    int nc;
                    size_t a, b;
                    if (mpk_pattern_match(&spec->rules[ri].targets[k], src->tensors[ti].info->name,
                                          caps, &nc, &a, &b)) {
                        st = mpk_error_set(err, MPK_E_ALREADY_CONVERTED, 0, where,
                                           "already in the %s layout of preset '%s' (tensor '%s' "
                                           "is a target and no tensor is a source)",
                                           spec->reversed ? "per-expert" : "packed", spec->name,
                                           src->tensors[ti].info->name);
                        goto done;
                    }
                }
    }
    /* a preset that matches none of the per-expert tensors is the wrong preset: it would copy
     * the checkpoint and call that a conversion */
    if (n_accs == 0 && spec->n_rules > 0) {
        for (size_t ti = 0; ti < src->n_tensors; ti++) {
            const char *n = src->tensors[ti].info->name;
            if (mpk_per_expert_name(n)) {
                st = mpk_error_set(err, MPK_E_PRESET, 0, where,
                                   "preset '%s'%s matches none of the expert tensors (e.g. '%s'): the "
                                   "wrong preset for this model? ('--preset auto' picks it from "
                                   "config.json's model_type; 'moepack presets' lists them)",
                                   spec->name, spec->reversed ? " (reversed)" : "", n);
                goto done;
            }
        }
    }
    /* 2. check and infer each group */
    p->groups = mpk_arena_alloc(p->arena, sizeof *p->groups * (n_accs + 1));
    size_t n_out = p->n_pass;
    for (size_t i = 0; i < n_accs; i++) {
        if ((st = finish_group(p, &accs[i], opts, err)) != MPK_OK)
            goto done;
        p->groups[i] = accs[i].g;
        n_out += (size_t)(accs[i].g.out_meta.n_groups * accs[i].g.out_meta.n_items);
    }
    /* reversed parts number their outputs on from the parts before them (all the same size) */
    for (size_t i = 0; i < n_accs; i++) {
        mpk_plan_group *g = &p->groups[i], *g0 = &p->groups[accs[i].first];
        if (!accs[i].part || g->rule->list_in_sources)
            continue;
        if (g->out_meta.n_items != g0->out_meta.n_items) {
            st = mpk_error_set(err, MPK_E_SHAPE, 0, where,
                               "'%s%s%s' makes %d %s tensors but '%s%s%s' makes %d: the parts of %s "
                               "must be the same size", g->prefix, g->rule->sources[0].text, g->suffix,
                               g->out_meta.n_items, g->rule->list_capture, g0->prefix,
                               g0->rule->sources[0].text, g0->suffix, g0->out_meta.n_items,
                               g->rule->path);
            goto done;
        }
        g->item_base = (long)accs[i].part * g->out_meta.n_items;
    }
    p->n_groups = n_accs;
    /* nothing half-converted: every per-expert tensor and every companion of a converted one
     * is understood, or declared a pass-through (or the caller said to pass it); after the
     * groups, so that what is wrong with the conversion itself is said first */
    if ((st = check_unknown(p, pass, p->n_pass, list, n_list, used, opts, err)) != MPK_OK)
        goto done;
    /* 3. outputs (--quantize adds a scale grid per rule output) */
    if (opts->quantize_block > 0)
        n_out = 2 * n_out;
    p->outs = mpk_arena_alloc(p->arena, sizeof *p->outs * (n_out + 1));
    if (!p->outs || mpk_strmap_init(&names, n_out) != MPK_OK) {
        st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < p->n_pass; i++) {
        mpk_plan_out *o = &p->outs[p->n_outs++];
        o->name = apply_renames(p->arena, spec, pass[i]->info->name);
        o->meta.dtype = pass[i]->info->dtype;
        o->meta.ndim = pass[i]->info->ndim;
        memcpy(o->meta.shape, pass[i]->info->shape, sizeof o->meta.shape);
        o->group = -1;
        o->pass = pass[i];
    }
    for (size_t gi = 0; gi < p->n_groups; gi++) {
        mpk_plan_group *g = &p->groups[gi];
        const mpk_rule *r = g->rule;
        for (int tg = 0; tg < g->out_meta.n_groups; tg++)
            for (int it = 0; it < g->out_meta.n_items; it++) {
                char ibuf[24];
                snprintf(ibuf, sizeof ibuf, "%ld", it + (r->list_in_sources ? 0 : g->item_base));
                mpk_plan_out *o = &p->outs[p->n_outs++];
                o->name = expand(p->arena, &r->targets[tg], g->prefix, g->suffix, g->caps, g->n_caps,
                                 r->list_capture, ibuf);
                if (o->name) /* renames reach the targets' prefixes too (backbone. -> model.) */
                    o->name = apply_renames(p->arena, spec, o->name);
                o->slot = tg * g->out_meta.n_items + it;
                o->meta = g->out_meta.t[o->slot];
                o->group = (int)gi;
                mpk_dtype dt = o->meta.dtype;
                if (opts->quantize_block > 0 && quantizes(r, &g->out_meta) && o->meta.ndim >= 2 &&
                    (dt == MPK_DTYPE_F32 || dt == MPK_DTYPE_F16 || dt == MPK_DTYPE_BF16)) {
                    int b = opts->quantize_block, nd = o->meta.ndim;
                    mpk_plan_out *q = &p->outs[p->n_outs++];
                    *q = *o;
                    q->name = mpk_arena_printf(p->arena, "%s_scale_inv", o->name);
                    q->quant = 2;
                    q->meta.dtype = MPK_DTYPE_F32;
                    q->meta.shape[nd - 2] = (q->meta.shape[nd - 2] + b - 1) / b;
                    q->meta.shape[nd - 1] = (q->meta.shape[nd - 1] + b - 1) / b;
                    o->quant = 1;
                    o->meta.dtype = MPK_DTYPE_F8_E4M3;
                }
            }
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        mpk_plan_out *o = &p->outs[i];
        if (!o->name) {
            st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
            goto done;
        }
        if (mpk_tensor_nbytes(o->meta.dtype, o->meta.shape, o->meta.ndim, &o->nbytes) != MPK_OK ||
            __builtin_add_overflow(p->total_bytes, o->nbytes, &p->total_bytes)) {
            st = mpk_error_set(err, MPK_E_SIZE_OVERFLOW, 0, where, "tensor '%s': its size, or the "
                               "output's total, overflows 64 bits", o->name);
            goto done;
        }
        if (mpk_strmap_put(&names, o->name, strlen(o->name), i, NULL)) {
            st = mpk_error_set(err, MPK_E_CONFLICT, 0, where,
                               "two tensors would both be written as '%s'", o->name);
            goto done;
        }
    }
    /* outputs in natural name order; each keeps (group, slot) to find its node */
    qsort(p->outs, p->n_outs, sizeof *p->outs, cmp_out);
    /* 4. shards: fill in name order, a new shard when the next tensor would overflow */
    uint64_t cur = 0;
    int shard = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t sz = p->outs[i].nbytes;
        if (opts->max_shard_size && cur > 0 && cur + sz > opts->max_shard_size) {
            shard++;
            cur = 0;
        }
        p->outs[i].shard = shard;
        cur += sz;
    }
    p->n_shards = p->n_outs ? (size_t)shard + 1 : 1;
done:
    for (size_t i = 0; i < n_accs; i++)
        free(accs[i].e);
    free(accs);
    free(pass);
    free(used);
    mpk_strmap_free(&keys);
    mpk_strmap_free(&names);
    if (st != MPK_OK) {
        mpk_plan_free(p);
        return st;
    }
    *out = p;
    return MPK_OK;
}

void mpk_plan_free(mpk_plan *p)
{
    if (!p)
        return;
    mpk_arena_free(p->arena);
    if (p->owner_free)
        p->owner_free(p->owner);
    free(p);
}

