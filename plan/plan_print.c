/* plan_print.c — a plan as text: targets with their sources and ops, pass-throughs, bytes,
 * shards. */
#define _GNU_SOURCE
#include "mpk_plan.h"

#include <stdio.h>
#include <string.h>

/* The output named prefix+text+suffix, NULL when none (a group of several items each). */
static const mpk_plan_out *out_named(const mpk_plan *p, const mpk_plan_group *g, const char *text, const char *tail)
{
    size_t lp = strlen(g->prefix), lt = strlen(text), ls = strlen(g->suffix), lx = strlen(tail);
    for (size_t i = 0; i < p->n_outs; i++) {
        const char *n = p->outs[i].name;
        if (strlen(n) == lp + lt + ls + lx && strncmp(n, g->prefix, lp) == 0 && strncmp(n + lp, text, lt) == 0 &&
            strncmp(n + lp + lt, g->suffix, ls) == 0 && strcmp(n + lp + lt + ls, tail) == 0)
            return &p->outs[i];
    }
    return NULL;
}

/* What the target is written as: the rule's dtype, or FP8 where --quantize makes it so (the
 * JSON's outputs say the same). */
static mpk_dtype written_dtype(const mpk_plan *p, const mpk_plan_group *g, const char *text, mpk_dtype d)
{
    const mpk_plan_out *o = out_named(p, g, text, "");
    return o ? o->meta.dtype : d;
}

static bool with_scales(const mpk_plan *p, const mpk_plan_group *g, const char *text)
{
    return out_named(p, g, text, "_scale_inv") != NULL;
}

void mpk_plan_print(const mpk_plan *p, void *file, bool verbose)
{
    FILE *f = file;
    char hb[32], sh[128], ob[64];
    fprintf(f, "preset: %s%s\n", p->spec->name, p->spec->reversed ? " (reversed)" : "");
    fprintf(f, "source: %s: %zu tensors in %zu shard(s)%s\n", p->src->dir, p->src->n_tensors,
            p->src->n_shards, p->src->names_only ? ", names only (from model.safetensors.index.json)" : "");
    if (p->src->names_only)
        fprintf(f, "shapes and dtypes: NOT checked (the shards are not there); what each target is built\n"
                   "from, expert holes and unmatched tensors are\n");
    size_t n_targets = p->n_outs - p->n_pass;
    fprintf(f, "targets: %zu built from %zu source tensors in %zu group(s); pass-through: %zu\n",
            n_targets, p->n_consumed, p->n_groups, p->n_pass);
    for (size_t gi = 0; gi < p->n_groups; gi++) {
        const mpk_plan_group *g = &p->groups[gi];
        const mpk_rule *r = g->rule;
        if (!verbose && gi >= 6) {
            fprintf(f, "  ... %zu more group(s) (a verbose plan lists them all)\n", p->n_groups - gi);
            break;
        }
        fprintf(f, "  [%s]", r->path);
        for (int s = 0; s < r->n_sources; s++)
            fprintf(f, "%s %s%s%s", s ? "," : "", g->prefix, r->sources[s].text, g->suffix);
        if (g->n_items > 1)
            fprintf(f, " (%s %ld..%ld)", r->list_capture, g->item_base, g->item_base + g->n_items - 1);
        else if (r->list_capture && !r->list_in_sources && g->out_meta.n_items > 1)
            fprintf(f, " (into %s %ld..%ld)", r->list_capture, g->item_base,
                    g->item_base + g->out_meta.n_items - 1);
        fprintf(f, "\n     ops:");
        for (int k = 0; k < r->n_ops; k++)
            fprintf(f, " %s", mpk_op_str(&r->ops[k], ob, sizeof ob));
        if (r->n_ops == 0)
            fprintf(f, " none (renamed, bytes unchanged)");
        fprintf(f, "\n     ->");
        for (int tg = 0; tg < g->out_meta.n_groups; tg++) {
            const mpk_tmeta *m = &g->out_meta.t[tg * g->out_meta.n_items];
            if (p->src->names_only)
                fprintf(f, " %s%s%s%s", g->prefix, r->targets[tg].text, g->suffix,
                        g->out_meta.n_items > 1 ? " (each)" : "");
            else
                fprintf(f, " %s%s%s %s %s%s%s", g->prefix, r->targets[tg].text, g->suffix,
                        mpk_dtype_name(written_dtype(p, g, r->targets[tg].text, m->dtype)),
                        mpk_shape_str(m->shape, m->ndim, sh, sizeof sh), g->out_meta.n_items > 1 ? " (each)" : "",
                        written_dtype(p, g, r->targets[tg].text, m->dtype) != m->dtype && with_scales(p, g, r->targets[tg].text)
                            ? " + _scale_inv F32 (128x128 blocks)" : "");
        }
        fprintf(f, "\n");
    }
    size_t shown = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        const mpk_plan_out *o = &p->outs[i];
        if (o->group >= 0)
            continue;
        if (!verbose && shown >= 6)
            continue;
        if (strcmp(o->name, o->pass->info->name) != 0)
            fprintf(f, "  pass %s -> %s\n", o->pass->info->name, o->name);
        else
            fprintf(f, "  pass %s\n", o->name);
        shown++;
    }
    if (!verbose && p->n_pass > shown)
        fprintf(f, "  ... %zu more pass-through tensor(s)\n", p->n_pass - shown);
    if (p->n_unknown)
        fprintf(f, "NOT understood, passed through unconverted (as asked: pass unknown): %zu tensor(s)\n",
                p->n_unknown);
    for (size_t i = 0; i < p->n_unknown && (verbose || i < 6); i++)
        fprintf(f, "  unknown %s: %s\n", p->unknown[i].name, p->unknown[i].why);
    if (!verbose && p->n_unknown > 6)
        fprintf(f, "  ... %zu more (a verbose plan lists them all)\n", p->n_unknown - 6);
    if (p->src->names_only)
        fprintf(f, "output: %zu tensors (bytes and shards need the shards' headers)\n", p->n_outs);
    else
        fprintf(f, "output: %zu tensors, %llu bytes (%s), %zu shard(s)\n", p->n_outs,
                (unsigned long long)p->total_bytes, mpk_human_bytes(p->total_bytes, hb, sizeof hb),
                p->n_shards);
    if (p->layout)
        fprintf(f, "files: as %s (%s%s)\n", p->layout->parsed ? "the source release recorded" : "the index given",
                p->layout->files[0], p->n_shards > 1 ? ", ..." : "");
}
