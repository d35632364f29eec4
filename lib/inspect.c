/* inspect.c — the public API's front: checkpoints, inspect and hash, and the library's identity. */
#define _GNU_SOURCE
#include "lib_internal.h"
#include "mpk_config.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

const char *mpk_version(void)
{
    return MPK_VERSION;
}

#if MPK_HAVE_IO_URING
#define F_URING "yes"
#else
#define F_URING "no"
#endif
#if MPK_HAVE_CUDA
#define F_CUDA "yes"
#else
#define F_CUDA "no"
#endif
#if MPK_HAVE_MPI
#define F_MPI "yes"
#else
#define F_MPI "no"
#endif

const char *mpk_features(void)
{
    return "io_uring=" F_URING " cuda=" F_CUDA " mpi=" F_MPI;
}

/* ---------------------------------------------------------------- checkpoints */

static void describe(const mpk_ckpt *c, const mpk_ckpt_tensor *t, mpk_tensor_desc *out)
{
    out->name = t->info->name;
    out->dtype = t->info->dtype;
    out->ndim = t->info->ndim;
    memcpy(out->shape, t->info->shape, sizeof out->shape);
    out->nbytes = t->nbytes;
    out->file = c->shards[t->shard].name;
}

size_t mpk_ckpt_tensor_count(const mpk_ckpt *c)
{
    return c ? c->n_tensors : 0;
}

bool mpk_ckpt_tensor_at(const mpk_ckpt *c, size_t i, mpk_tensor_desc *out)
{
    if (!c || i >= c->n_tensors)
        return false;
    describe(c, &c->tensors[i], out);
    return true;
}

bool mpk_ckpt_find_tensor(const mpk_ckpt *c, const char *name, mpk_tensor_desc *out)
{
    const mpk_ckpt_tensor *t = c && name ? mpk_ckpt_find(c, name) : NULL;
    if (!t)
        return false;
    describe(c, t, out);
    return true;
}

mpk_status mpk_ckpt_read_tensor(const mpk_ckpt *c, const char *name, uint64_t off, uint64_t len, void *buf,
                                mpk_error *err)
{
    const mpk_ckpt_tensor *t = mpk_ckpt_find(c, name);
    if (!t)
        MPK_FAIL(err, MPK_E_NOT_FOUND, c->dir, "no tensor '%s'", name);
    if (off > t->nbytes || len > t->nbytes - off)
        MPK_FAIL(err, MPK_E_USAGE, c->dir, "tensor '%s': bytes [%llu, +%llu) past its %llu bytes", name,
                 (unsigned long long)off, (unsigned long long)len, (unsigned long long)t->nbytes);
    return mpk_ckpt_read(c, t, off, len, buf, err);
}

/* ---------------------------------------------------------------- inspect */

typedef struct {
    uint64_t count, bytes;
} dtype_stat;

static int cmp_shard_name(const void *a, const void *b)
{
    return mpk_natural_cmp((*(const mpk_shard *const *)a)->name, (*(const mpk_shard *const *)b)->name);
}

/* c's shards in natural order of their names (model-00002 before model-00010), whatever order
 * the index lists them in; malloc'd, NULL when out of memory. */
static const mpk_shard **shards_in_order(const mpk_ckpt *c)
{
    const mpk_shard **v = mpk_alloc(sizeof *v * (c->n_shards + 1));
    if (!v)
        return NULL;
    for (size_t i = 0; i < c->n_shards; i++)
        v[i] = &c->shards[i];
    qsort(v, c->n_shards, sizeof *v, cmp_shard_name);
    return v;
}

/* How many of c's shards are compressed containers (.mpkz) read in place. */
static size_t compressed_shards(const mpk_ckpt *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n_shards; i++)
        n += c->shards[i].z != NULL;
    return n;
}

static cJSON *inspect_json(const char *path, const mpk_ckpt *c, const dtype_stat *ds,
                           const mpk_model_config *cfg, mpk_expert_layout layout)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddStringToObject(o, "format", c->has_index ? "sharded" : "single");
    cJSON *shards = cJSON_AddArrayToObject(o, "shards");
    const mpk_shard **order = shards_in_order(c);
    for (size_t i = 0; order && i < c->n_shards; i++) {
        const mpk_shard *s = order[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "file", s->name);
        cJSON_AddNumberToObject(j, "tensors", (double)s->header->n_tensors);
        cJSON_AddNumberToObject(j, "bytes", (double)s->header->data_size);
        cJSON_AddNumberToObject(j, "file_size", (double)s->file_size);
        cJSON_AddNumberToObject(j, "header_length", (double)s->header->header_len);
        /* a NAME.safetensors.mpkz read in place: the file on disk and its size */
        cJSON_AddBoolToObject(j, "compressed", s->z != NULL);
        if (s->z) {
            const char *base = strrchr(s->path, '/');
            cJSON_AddStringToObject(j, "stored_as", base ? base + 1 : s->path);
            cJSON_AddNumberToObject(j, "stored_size", (double)s->id.size);
        }
        cJSON_AddItemToArray(shards, j);
    }
    free(order);
    cJSON_AddNumberToObject(o, "compressed_shards", (double)compressed_shards(c));
    cJSON_AddNumberToObject(o, "tensor_count", (double)c->n_tensors);
    cJSON_AddNumberToObject(o, "total_bytes", (double)c->total_bytes);
    if (c->has_index)
        cJSON_AddNumberToObject(o, "index_total_size", (double)c->index_total_size);
    cJSON *dt = cJSON_AddObjectToObject(o, "dtypes");
    for (int d = 0; d < MPK_DTYPE_COUNT; d++) {
        if (!ds[d].count)
            continue;
        cJSON *j = cJSON_AddObjectToObject(dt, mpk_dtype_name((mpk_dtype)d));
        cJSON_AddNumberToObject(j, "count", (double)ds[d].count);
        cJSON_AddNumberToObject(j, "bytes", (double)ds[d].bytes);
    }
    if (cfg->found && cfg->model_type[0])
        cJSON_AddStringToObject(o, "model_type", cfg->model_type);
    else
        cJSON_AddNullToObject(o, "model_type");
    if (cfg->num_experts >= 0)
        cJSON_AddNumberToObject(o, "num_experts", (double)cfg->num_experts);
    else
        cJSON_AddNullToObject(o, "num_experts");
    cJSON_AddStringToObject(o, "expert_layout", mpk_layout_name(layout));
    cJSON *ts = cJSON_AddArrayToObject(o, "tensors");
    for (size_t i = 0; i < c->n_tensors; i++) {
        const mpk_ckpt_tensor *t = &c->tensors[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "name", t->info->name);
        cJSON_AddStringToObject(j, "dtype", mpk_dtype_name(t->info->dtype));
        cJSON *sh = cJSON_AddArrayToObject(j, "shape");
        for (int d = 0; d < t->info->ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->info->shape[d]));
        cJSON_AddNumberToObject(j, "bytes", (double)t->nbytes);
        cJSON_AddStringToObject(j, "file", c->shards[t->shard].name);
        cJSON_AddItemToArray(ts, j);
    }
    return o;
}

static void inspect_text(FILE *f, const char *path, const mpk_ckpt *c, const dtype_stat *ds,
                         const mpk_model_config *cfg, mpk_expert_layout layout)
{
    char hb[32];
    fprintf(f, "checkpoint: %s (%s, %zu shard%s)\n", path,
            c->has_index ? "sharded, model.safetensors.index.json" : "single file", c->n_shards,
            c->n_shards == 1 ? "" : "s");
    const mpk_shard **order = shards_in_order(c);
    for (size_t i = 0; order && i < c->n_shards; i++) {
        fprintf(f, "  %-40s %6zu tensors  %s", order[i]->name, order[i]->header->n_tensors,
                mpk_human_bytes(order[i]->header->data_size, hb, sizeof hb));
        if (order[i]->z)
            fprintf(f, "  compressed: .mpkz, %s on disk", mpk_human_bytes(order[i]->id.size, hb, sizeof hb));
        fputc('\n', f);
    }
    free(order);
    size_t nz = compressed_shards(c);
    if (nz)
        fprintf(f, "compressed: %zu of %zu shard(s) are .mpkz containers, read in place ('moepack decompress' "
                "gives the .safetensors files back)\n", nz, c->n_shards);
    fprintf(f, "tensors: %zu\ntotal bytes: %llu (%s)\ndtypes:", c->n_tensors, (unsigned long long)c->total_bytes,
            mpk_human_bytes(c->total_bytes, hb, sizeof hb));
    for (int d = 0; d < MPK_DTYPE_COUNT; d++)
        if (ds[d].count)
            fprintf(f, " %s=%llu", mpk_dtype_name((mpk_dtype)d), (unsigned long long)ds[d].count);
    fprintf(f, "\nmodel_type: %s\nexperts: ", cfg->model_type[0] ? cfg->model_type : "(no config.json)");
    if (cfg->num_experts >= 0)
        fprintf(f, "%ld", cfg->num_experts);
    else
        fprintf(f, "?");
    fprintf(f, "\nexpert layout: %s\n\n", mpk_layout_name(layout));
    for (size_t i = 0; i < c->n_tensors; i++) {
        const mpk_ckpt_tensor *t = &c->tensors[i];
        char sh[256];
        fprintf(f, "%-64s %-8s %-22s %12llu\n", t->info->name, mpk_dtype_name(t->info->dtype),
                mpk_shape_str(t->info->shape, t->info->ndim, sh, sizeof sh), (unsigned long long)t->nbytes);
    }
}

/* Fills r's tensor lines from c (with hashes when t is non-NULL). */
static mpk_status add_tensors(mpk_report *r, const mpk_ckpt *c, const mpk_tensor_hash *t, mpk_error *err)
{
    for (size_t i = 0; i < c->n_tensors; i++) {
        const mpk_tensor_info *in = c->tensors[i].info;
        char hx[33];
        MPK_TRY(mpk_report_add(r, in->name, NULL, NULL, in->dtype, in->ndim, in->shape, c->tensors[i].nbytes,
                               t ? mpk_hash_hex(t[i].hash, hx) : NULL, err));
    }
    return MPK_OK;
}

mpk_status mpk_inspect(const char *path, mpk_report **out, mpk_error *err)
{
    mpk_ckpt *c;
    mpk_model_config cfg = {0};
    mpk_report *r = NULL;
    *out = NULL;
    MPK_TRY(mpk_ckpt_open(path, &c, err));
    mpk_status s = mpk_config_load(c->dir, &cfg, err);
    if (s == MPK_OK && !(r = mpk_report_new()))
        s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
    if (s == MPK_OK) {
        dtype_stat ds[MPK_DTYPE_COUNT] = {{0}};
        for (size_t i = 0; i < c->n_tensors; i++) {
            ds[c->tensors[i].info->dtype].count++;
            ds[c->tensors[i].info->dtype].bytes += c->tensors[i].nbytes;
        }
        mpk_expert_layout layout = mpk_detect_layout(c);
        char *buf;
        size_t len;
        FILE *f = mpk_report_begin_text(r, &buf, &len);
        if (f)
            inspect_text(f, path, c, ds, &cfg, layout);
        s = mpk_report_end_text(r, f, &buf, err);
        if (s == MPK_OK)
            s = mpk_report_set_json(r, "moepack.inspect/1", inspect_json(path, c, ds, &cfg, layout), err);
        if (s == MPK_OK)
            s = add_tensors(r, c, NULL, err);
    }
    mpk_config_free(&cfg);
    mpk_ckpt_close(c);
    if (s != MPK_OK) {
        mpk_report_free(r);
        return s;
    }
    return mpk_report_give(r, out);
}

/* ---------------------------------------------------------------- hash */

static mpk_status hash_report(mpk_report *r, const mpk_ckpt *c, const mpk_tensor_hash *t, mpk_hash128 d,
                              const mpk_rank_stats *ranks, int n_ranks, mpk_error *err)
{
    cJSON *doc = mpk_manifest_json(t, c->n_tensors, d, NULL);
    /* under MPI the document carries what each rank did */
    char *text = doc && mpk_lib_ranks_json(doc, ranks, n_ranks) ? mpk_json_print(doc, true) : NULL;
    cJSON_Delete(doc);
    if (!text)
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "out of memory");
    free(r->json);
    r->json = text;
    char hx[33], sh[128], *buf;
    size_t len;
    FILE *f = mpk_report_begin_text(r, &buf, &len);
    if (f) {
        for (size_t i = 0; i < c->n_tensors; i++)
            fprintf(f, "%s  %-8s %-22s %s\n", mpk_hash_hex(t[i].hash, hx), mpk_dtype_name(t[i].dtype),
                    mpk_shape_str(t[i].shape, t[i].ndim, sh, sizeof sh), t[i].name);
        fprintf(f, "%s  checkpoint digest (%zu tensors)\n", mpk_hash_hex(d, hx), c->n_tensors);
    }
    MPK_TRY(mpk_report_end_text(r, f, &buf, err));
    return add_tensors(r, c, t, err);
}

mpk_status mpk_hash(const char *path, unsigned flags, mpk_report **out, mpk_error *err)
{
    return mpk_hash_ex(path, flags, NULL, NULL, out, err);
}

mpk_status mpk_hash_ex(const char *path, unsigned flags, void (*progress)(void *, uint64_t, uint64_t, double),
                       void *ctx, mpk_report **out, mpk_error *err)
{
    mpk_hash_req r;
    mpk_hash_req_init(&r, path);
    r.flags = flags;
    r.progress = progress;
    r.ctx = ctx;
    return mpk_hash_run(&r, out, err);
}

void mpk_hash_req_init(mpk_hash_req *r, const char *path)
{
    memset(r, 0, sizeof *r);
    r->path = path;
}

mpk_status mpk_hash_run(const mpk_hash_req *q, mpk_report **out, mpk_error *err)
{
    const char *path = q->path;
    unsigned flags = q->flags;
    mpk_ckpt *c;
    *out = NULL;
    MPK_TRY(mpk_ckpt_open(path, &c, err));
    if ((flags & MPK_HASH_WRITE) && !c->is_dir) {
        mpk_ckpt_close(c);
        MPK_FAIL(err, MPK_E_USAGE, path,
                 "the manifest is stored beside a checkpoint directory's shards; this is a lone file");
    }
    mpk_tensor_hash *t = NULL;
    mpk_hash128 d;
    mpk_report *r = NULL;
    mpk_meter meter;
    mpk_meter_start(&meter, q->progress, q->ctx, c->total_bytes);
    meter.cancel = q->cancel;
    mpk_status s = mpk_hash_ckpt(c, &t, &d, &meter, err); /* collective under MPI: agreed */
    bool hashed = s == MPK_OK;
    mpk_rank_stats *ranks = NULL;
    int n_ranks = 0;
    if (s == MPK_OK) {
        mpk_meter_end(&meter);
        /* stopped by the last progress call (a Python callback that raised): no manifest */
        s = mpk_meter_check(&meter, path, err);
    }
    if (s == MPK_OK)
        ranks = mpk_dist_stats_meter(&meter, &n_ranks);
    if (s == MPK_OK && !(r = mpk_report_new()))
        s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
    if (s == MPK_OK)
        s = hash_report(r, c, t, d, ranks, n_ranks, err);
    free(ranks);
    /* the manifest replaces an old one atomically (mpk_write_file); t is sorted as it is; under
     * MPI rank 0 writes it, and every rank returns its outcome */
    if (s == MPK_OK && (flags & MPK_HASH_WRITE) && mpk_dist_rank() == 0) {
        /* the provenance an existing manifest records is kept: the hashes are refreshed, the
         * history of how the checkpoint was made is not the hasher's to drop */
        cJSON *old = NULL;
        const cJSON *ts;
        mpk_hash128 od;
        mpk_error ig;
        if (mpk_manifest_load(c->dir, &old, &ts, &od, &ig) != MPK_OK)
            old = NULL;
        const cJSON *prov = cJSON_GetObjectItemCaseSensitive(old, "provenance");
        s = mpk_manifest_write_hashes(c->dir, t, c->n_tensors, cJSON_IsObject(prov) ? prov : NULL, true, err);
        cJSON_Delete(old);
    }
    if (hashed)
        s = mpk_dist_agree(s, err);
    free(t);
    mpk_ckpt_close(c);
    if (s != MPK_OK) {
        mpk_report_free(r);
        return s;
    }
    return mpk_report_give(r, out);
}
