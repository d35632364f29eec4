/* view.c — a checkpoint read tensor by tensor, as stored or in the other expert layout
 * (mpk_view_open, moepack.h): the other layout is the plan mpk_convert would execute (pack for
 * "packed", unpack for "per-expert"), its outputs computed when read (exec/readout.c), nothing
 * written. A loader can so read either layout from either. */
#include "lib_internal.h"

#include <stdlib.h>
#include <string.h>

struct mpk_view {
    mpk_ckpt *ckpt;                 /* as stored; NULL when computed */
    mpk_plan *plan;                 /* computed: the conversion's plan (it owns its source) */
    mpk_exec_reader *rd;
    mpk_strmap by_name;             /* computed: output name -> index into plan->outs */
    const char *layout;             /* "packed", "per-expert", or NULL: as stored */
    const mpk_kv *meta;             /* __metadata__ of its (first) shard */
    size_t n_meta;
    mpk_kv own_meta[2];             /* a computed view's: what mpk_convert writes */
};

static const char *layout_word(mpk_expert_layout l)
{
    return l == MPK_LAYOUT_PACKED ? "packed" : l == MPK_LAYOUT_PER_EXPERT ? "per-expert" : NULL;
}

static void use_shard_meta(mpk_view *v, const mpk_st_header *h)
{
    v->meta = h && h->has_metadata ? h->metadata : NULL;
    v->n_meta = h && h->has_metadata ? h->n_metadata : 0;
}

static void drop_computed(mpk_view *v)
{
    mpk_exec_reader_close(v->rd);
    v->rd = NULL;
    mpk_strmap_free(&v->by_name);
    mpk_plan_free(v->plan);
    v->plan = NULL;
}

/* The conversion into layout of path's checkpoint, planned; its outputs readable through v->rd. */
static mpk_status open_computed(mpk_view *v, const char *path, bool unpack, const char *spec, mpk_error *err)
{
    mpk_convert_req r;
    mpk_convert_req_init(&r, path, NULL);
    r.direction = unpack ? MPK_DIRECTION_UNPACK : MPK_DIRECTION_PACK;
    r.spec = spec;
    MPK_TRY(mpk_plan_create(&r, &v->plan, err));
    const mpk_plan *p = v->plan;
    if (p->src->names_only)
        MPK_FAIL(err, MPK_E_NOT_FOUND, path, "its shards are not there (only the index): nothing to read");
    MPK_TRY(mpk_exec_reader_open(p, MPK_IO_AUTO, &v->rd, err));
    MPK_TRY(mpk_strmap_init(&v->by_name, p->n_outs));
    for (size_t i = 0; i < p->n_outs; i++)
        mpk_strmap_put(&v->by_name, p->outs[i].name, strlen(p->outs[i].name), i, NULL);
    v->layout = unpack ? "per-expert" : "packed";
    if (p->layout && p->layout->n_files && p->layout->parsed && p->layout->parsed[0]) {
        use_shard_meta(v, p->layout->parsed[0]); /* unpack gives the release's headers back */
    } else {
        v->own_meta[0] = (mpk_kv){"format", "pt"};
        v->own_meta[1] = (mpk_kv){"moepack_layout", v->layout};
        v->meta = v->own_meta;
        v->n_meta = 2;
    }
    return MPK_OK;
}

mpk_status mpk_view_open(const char *path, const char *layout, const char *spec, mpk_view **out, mpk_error *err)
{
    if (!out)
        MPK_FAIL(err, MPK_E_USAGE, "request", "no place for the view (out is NULL)");
    *out = NULL;
    if (!path)
        MPK_FAIL(err, MPK_E_USAGE, "request", "no checkpoint path");
    bool as_stored = !layout || !*layout;
    if (!as_stored && strcmp(layout, "packed") != 0 && strcmp(layout, "per-expert") != 0)
        MPK_FAIL(err, MPK_E_USAGE, "request", "layout '%s': it takes \"packed\", \"per-expert\" or none (as stored)",
                 layout);
    mpk_view *v = mpk_calloc(1, sizeof *v);
    if (!v)
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    /* the other layout is what the conversion that way would write; a checkpoint the conversion
     * finds already converted (its planner's rule, whatever the names look like) is read as is */
    mpk_status s = as_stored ? MPK_E_ALREADY_CONVERTED
                             : open_computed(v, path, strcmp(layout, "per-expert") == 0, spec, err);
    if (s == MPK_E_ALREADY_CONVERTED) {
        drop_computed(v);
        if ((s = mpk_ckpt_open(path, &v->ckpt, err)) == MPK_OK) {
            use_shard_meta(v, v->ckpt->n_shards ? v->ckpt->shards[0].header : NULL);
            v->layout = as_stored ? layout_word(mpk_detect_layout(v->ckpt)) : layout;
        }
    }
    if (s != MPK_OK) {
        mpk_view_close(v);
        return s;
    }
    *out = v;
    return MPK_OK;
}

void mpk_view_close(mpk_view *v)
{
    if (!v)
        return;
    drop_computed(v);
    mpk_ckpt_close(v->ckpt);
    free(v);
}

const char *mpk_view_layout(const mpk_view *v)
{
    return v->layout ? v->layout : "none";
}

size_t mpk_view_tensor_count(const mpk_view *v)
{
    return !v ? 0 : v->plan ? v->plan->n_outs : mpk_ckpt_tensor_count(v->ckpt);
}

static void describe_out(const mpk_plan_out *o, mpk_tensor_desc *out)
{
    out->name = o->name;
    out->dtype = o->meta.dtype;
    out->ndim = o->meta.ndim;
    memcpy(out->shape, o->meta.shape, sizeof out->shape);
    out->nbytes = o->nbytes;
    out->file = NULL;
}

bool mpk_view_tensor_at(const mpk_view *v, size_t i, mpk_tensor_desc *out)
{
    if (!v || !v->plan)
        return mpk_ckpt_tensor_at(v ? v->ckpt : NULL, i, out);
    if (i >= v->plan->n_outs)
        return false;
    describe_out(&v->plan->outs[i], out);
    return true;
}

bool mpk_view_find_tensor(const mpk_view *v, const char *name, mpk_tensor_desc *out)
{
    if (!v || !name)
        return false;
    if (!v->plan)
        return mpk_ckpt_find_tensor(v->ckpt, name, out);
    size_t i;
    if (!mpk_strmap_get(&v->by_name, name, strlen(name), &i))
        return false;
    describe_out(&v->plan->outs[i], out);
    return true;
}

mpk_status mpk_view_read(const mpk_view *v, const char *name, uint64_t off, uint64_t len, void *buf, mpk_error *err)
{
    if (!v || !name || (!buf && len))
        MPK_FAIL(err, MPK_E_USAGE, "request", "mpk_view_read: NULL view, name or buffer");
    if (!v->plan)
        return mpk_ckpt_read_tensor(v->ckpt, name, off, len, buf, err);
    size_t i;
    if (!mpk_strmap_get(&v->by_name, name, strlen(name), &i))
        MPK_FAIL(err, MPK_E_NOT_FOUND, v->plan->src->dir, "no tensor '%s' in the %s view", name, v->layout);
    return mpk_exec_reader_read(v->rd, i, off, len, buf, err);
}

size_t mpk_view_metadata_count(const mpk_view *v)
{
    return v ? v->n_meta : 0;
}

bool mpk_view_metadata_at(const mpk_view *v, size_t i, const char **key, const char **value)
{
    if (!v || i >= v->n_meta)
        return false;
    *key = v->meta[i].key;
    *value = v->meta[i].value;
    return true;
}
