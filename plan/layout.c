/* layout.c — outputs placed in a given file layout (a recorded source release, or an index). */
#define _GNU_SOURCE
#include "mpk_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mpk_layout_free(mpk_layout *l)
{
    if (!l)
        return;
    for (size_t f = 0; l->parsed && f < l->n_files; f++)
        mpk_st_header_free(l->parsed[f]);
    free(l->parsed);
    mpk_strmap_free(&l->file_of);
    mpk_arena_free(l->arena);
    free(l);
}

void mpk_plan_shard_name(const mpk_plan *p, size_t sh, char *buf, size_t cap)
{
    if (p->layout)
        snprintf(buf, cap, "%s", p->layout->files[sh]);
    else
        mpk_shard_name(sh + 1, p->n_shards, buf, cap);
}

const char *mpk_layout_name_taken(const char *name, const char *index_name)
{
    if (name[0] == '.')
        return "a hidden name (moepack's temporary files are hidden)";
    if (strncmp(name, "moepack.", 8) == 0)
        return "moepack's own files (manifest, source record, staging records) are named so";
    if (strcmp(name, "config.json") == 0)
        return "config.json is written beside the shards";
    if (index_name && strcmp(name, index_name) == 0)
        return "the index is written under that name";
    return NULL;
}

mpk_status mpk_layout_check_names(const mpk_layout *l, mpk_status code, const char *where, mpk_error *err)
{
    const char *why;
    if (l->index_name && (why = mpk_layout_name_taken(l->index_name, NULL)))
        MPK_FAIL(err, code, where, "index file name '%s' cannot be written: %s", l->index_name, why);
    mpk_strmap seen;
    if (mpk_strmap_init(&seen, l->n_files + 1) != MPK_OK)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    mpk_status s = MPK_OK;
    for (size_t f = 0; f < l->n_files && s == MPK_OK; f++) {
        const char *n = l->files[f];
        if ((why = mpk_layout_name_taken(n, l->index_name)))
            s = mpk_error_set(err, code, 0, where, "file name '%s' cannot be written: %s", n, why);
        else if (mpk_strmap_put(&seen, n, strlen(n), f, NULL))
            s = mpk_error_set(err, code, 0, where, "file name '%s' is given to two files", n);
    }
    mpk_strmap_free(&seen);
    return s;
}

static bool meta_is(const mpk_tensor_info *t, const mpk_tmeta *m)
{
    return t->dtype == m->dtype && t->ndim == m->ndim &&
           memcmp(t->shape, m->shape, sizeof(int64_t) * (size_t)m->ndim) == 0;
}

mpk_status mpk_plan_use_layout(mpk_plan *p, const mpk_layout *l, mpk_error *err)
{
    int *shard = mpk_calloc(p->n_outs + 1, sizeof *shard);
    if (!shard)
        MPK_FAIL(err, MPK_E_NOMEM, "layout", "out of memory");
    size_t recorded = 0;
    for (size_t f = 0; f < l->n_files; f++)
        recorded += l->parsed && l->parsed[f] ? l->parsed[f]->n_tensors : 0;
    size_t exact_outs = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        const mpk_plan_out *o = &p->outs[i];
        size_t f;
        if (!mpk_strmap_get(&l->file_of, o->name, strlen(o->name), &f)) {
            free(shard);
            MPK_FAIL(err, MPK_E_CONFLICT, "layout", "tensor '%s' has no file in the layout followed", o->name);
        }
        shard[i] = (int)f;
        if (l->parsed && l->parsed[f]) {
            long k = mpk_st_header_find(l->parsed[f], o->name);
            if (k < 0 || !meta_is(&l->parsed[f]->tensors[k], &o->meta)) {
                free(shard);
                MPK_FAIL(err, MPK_E_CONFLICT, l->files[f], "tensor '%s' is not in this file as recorded "
                         "(dtype and shape)", o->name);
            }
            exact_outs++;
        }
    }
    if (exact_outs != recorded) {
        free(shard);
        MPK_FAIL(err, MPK_E_CONFLICT, "layout", "the recorded files hold %zu tensors, the conversion makes %zu of "
                 "them", recorded, exact_outs);
    }
    for (size_t i = 0; i < p->n_outs; i++)
        p->outs[i].shard = shard[i];
    free(shard);
    p->n_shards = l->n_files;
    p->layout = l;
    return MPK_OK;
}
