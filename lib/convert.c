/* convert.c — the public API's front: specs, presets, plans and conversions: the policy of a
 * conversion (direction, the layout marker in every output shard, config.json's
 * quantization_config, the manifest) lives here, not in any program calling it. */
#define _GNU_SOURCE
#include "lib_internal.h"

#include <cjson/cJSON.h>
#include <xxhash.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- specs */

static bool is_spec_file(const char *what)
{
    size_t n = strlen(what);
    return strchr(what, '/') || (n > 5 && strcmp(what + n - 5, ".json") == 0);
}

mpk_status mpk_lib_spec_load(const char *what, const mpk_model_config *cfg, bool reverse, mpk_spec **out,
                             mpk_error *err)
{
    mpk_spec *s;
    *out = NULL;
    if (what && is_spec_file(what)) {
        char *text;
        size_t len;
        MPK_TRY(mpk_read_file(what, &text, &len, err));
        mpk_status st = mpk_spec_parse(text, len, what, &s, err);
        free(text);
        MPK_TRY(st);
    } else {
        MPK_TRY(mpk_preset_load(what ? what : "auto", cfg, &s, err));
    }
    mpk_spec_bind_sizes(s, cfg);
    if (reverse) {
        mpk_spec *r;
        mpk_status st = mpk_spec_reverse(s, &r, err);
        if (st != MPK_OK) {
            mpk_spec_free(s);
            return st;
        }
        s = r;
    }
    *out = s;
    return MPK_OK;
}

mpk_status mpk_spec_load(const char *what, const char *model, bool reverse, mpk_spec **out, mpk_error *err)
{
    mpk_model_config cfg = {0};
    if (out)
        *out = NULL;
    if (!out)
        MPK_FAIL(err, MPK_E_USAGE, "mpk_spec_load", "out is NULL");
    if (model) {
        mpk_ckpt *c;
        MPK_TRY(mpk_ckpt_open(model, &c, err));
        mpk_status s = mpk_config_load(c->dir, &cfg, err);
        mpk_ckpt_close(c);
        MPK_TRY(s);
    }
    mpk_status s = mpk_lib_spec_load(what, &cfg, reverse, out, err);
    mpk_config_free(&cfg);
    return s;
}

static const mpk_spec *base_of(const mpk_spec *s)
{
    return s->base ? s->base : s;
}

const char *mpk_spec_name(const mpk_spec *s)
{
    return s ? s->name : NULL;
}

const char *mpk_spec_description(const mpk_spec *s)
{
    return s ? base_of(s)->description : NULL;
}

size_t mpk_spec_model_type_count(const mpk_spec *s)
{
    return s ? (size_t)base_of(s)->n_model_types : 0;
}

const char *mpk_spec_model_type(const mpk_spec *s, size_t i)
{
    return s && i < (size_t)base_of(s)->n_model_types ? base_of(s)->model_types[i] : NULL;
}

const char *mpk_preset_name(size_t i)
{
    return i < mpk_n_presets ? mpk_presets[i].name : NULL;
}

const char *mpk_preset_json(const char *name)
{
    for (size_t i = 0; name && i < mpk_n_presets; i++)
        if (strcmp(mpk_presets[i].name, name) == 0)
            return mpk_presets[i].json;
    return NULL;
}

/* ---------------------------------------------------------------- requests */

void mpk_convert_req_init(mpk_convert_req *r, const char *src, const char *dst)
{
    memset(r, 0, sizeof *r);
    r->src = src;
    r->dst = dst;
    r->spec = "auto";
    r->max_shard_size = 50000000000ull;
    r->mem = 1ull << 30;
}

/* What a conversion holds while it plans and runs. */
typedef struct job {
    mpk_ckpt *src;
    mpk_model_config cfg;
    mpk_spec *spec;
    const char *layout;          /* the layout the output is in: "packed" or "per-expert" */
    mpk_layout *files;           /* the file layout the output follows, or NULL */
    char *record;                /* the source record the output keeps (zstd), or NULL */
    size_t record_len;
    bool manifest;
    bool sync;                   /* fsync what finish writes (not with --no-fsync: one fsync there
                                    made the journal commit the whole output, 1.04 s of a 2.7 s pack) */
    int compress_level;          /* > 0: the shards are compressed before landing */
    cJSON *prov;                 /* the manifest's provenance */
    char *hf_quant;              /* --quantize nvfp4: hf_quant_config.json to write, or NULL */
    mpk_hash128 src_digest;      /* mpk_source_digest of src, when the record was built from it */
    bool have_digest;
    int threads;
} job;

static void job_free(void *p)
{
    job *j = p;
    if (!j)
        return;
    mpk_spec_free(j->spec);
    cJSON_Delete(j->prov);
    free(j->hf_quant);
    mpk_layout_free(j->files);
    free(j->record);
    mpk_config_free(&j->cfg);
    mpk_ckpt_close(j->src);
    free(j);
}

static mpk_status check_req(const mpk_convert_req *r, bool writes, mpk_error *err)
{
    if (!r || !r->src || !r->src[0])
        MPK_FAIL(err, MPK_E_USAGE, "request", "no source checkpoint (NULL or an empty path)");
    if (writes && (!r->dst || !r->dst[0]))
        MPK_FAIL(err, MPK_E_USAGE, "request", "no destination (NULL or an empty path)");
    if ((unsigned)r->direction >= MPK_DIRECTION_COUNT || (unsigned)r->quant >= MPK_QUANT_COUNT ||
        (unsigned)r->io >= MPK_IO_BACKEND_COUNT || (unsigned)r->direct >= MPK_DIRECT_COUNT ||
        (unsigned)r->bounce >= MPK_SWITCH_COUNT)
        MPK_FAIL(err, MPK_E_USAGE, "request", "direction, quant, io, direct or bounce out of range");
    if (writes && r->mem < (1u << 20))
        MPK_FAIL_ABOUT(err, MPK_FIELD_MEM, MPK_E_USAGE, "request", "memory budget %llu bytes is below 1 MiB",
                 (unsigned long long)r->mem);
    if (r->threads < 0 || r->threads > 64)
        MPK_FAIL_ABOUT(err, MPK_FIELD_THREADS, MPK_E_USAGE, "request", "threads %d out of 0..64", r->threads);
    if (r->compress_level < 0 || r->compress_level > 19)
        MPK_FAIL_ABOUT(err, MPK_FIELD_COMPRESS_LEVEL, MPK_E_USAGE, "request", "compress level %d out of 1..19", r->compress_level);
    if ((r->flags & MPK_CONVERT_COMPRESS) && (r->flags & MPK_CONVERT_RESUME))
        MPK_FAIL_ABOUT(err, MPK_FIELD_RESUME, MPK_E_USAGE, "request", "a compressed output cannot be resumed (leave out one of the two)");
    return MPK_OK;
}

/* The layout marker moepack writes into every output shard's __metadata__. */
const char *mpk_lib_layout_marker(const mpk_ckpt *c)
{
    if (!c->n_shards || !c->shards[0].header->has_metadata)
        return NULL;
    const mpk_st_header *h = c->shards[0].header;
    for (size_t i = 0; i < h->n_metadata; i++)
        if (strcmp(h->metadata[i].key, "moepack_layout") == 0)
            return h->metadata[i].value;
    return NULL;
}

static bool has_record(const mpk_ckpt *c)
{
    char *p = c->is_dir ? mpk_path_join(c->dir, MPK_SOURCE_NAME) : NULL;
    struct stat st;
    bool yes = p && lstat(p, &st) == 0;
    free(p);
    return yes;
}

static mpk_status requant_config(const mpk_convert_req *r, const job *j, const mpk_plan *p, char **out,
                                 mpk_error *err);

/* The files of the output: an index to follow (layout_like), or, unpacking, the source release
 * src recorded (when the conversion makes exactly its tensors: else said, and moepack's own
 * layout). Packing keeps a record: src's own, or the one src carries. */
static mpk_status follow_files(const mpk_convert_req *r, job *j, mpk_plan *p, mpk_error *err)
{
    bool recorded = has_record(j->src);
    if (r->layout_like) {
        MPK_TRY(mpk_layout_from_index(r->layout_like, &j->files, err));
        return mpk_plan_use_layout(p, j->files, err);
    }
    if (j->spec->reversed && recorded) {
        if (!j->files)
            MPK_TRY(mpk_source_load(j->src->dir, &j->files, err));
        mpk_error why;
        if (mpk_plan_use_layout(p, j->files, &why) != MPK_OK) {
            char msg[1400];
            snprintf(msg, sizeof msg, "the source release recorded in %s/%s does not fit this conversion (%s): "
                     "the files are written moepack's way", j->src->dir, MPK_SOURCE_NAME, why.msg);
            if (r->warn)
                r->warn(r->ctx, msg);
        } else if (j->files->config_note && r->warn) { /* config.json edited since pack */
            r->warn(r->ctx, j->files->config_note);
        }
        return MPK_OK;
    }
    if (j->spec->reversed)
        return MPK_OK;
    if (!recorded) { /* the record keeps the digest of the config.json this conversion writes */
        char *cfg = NULL;
        MPK_TRY(requant_config(r, j, p, &cfg, err));
        mpk_status s = mpk_source_record(j->src, cfg, &j->record, &j->record_len, &j->src_digest, err);
        free(cfg);
        MPK_TRY(s);
        j->have_digest = true;
        return MPK_OK;
    }
    char *path = mpk_path_join(j->src->dir, MPK_SOURCE_NAME);
    mpk_status s = path ? mpk_read_file(path, &j->record, &j->record_len, err)
                        : mpk_error_set(err, MPK_E_NOMEM, 0, j->src->dir, "out of memory");
    free(path);
    return s;
}

/* A release whose shards are not there (downloaded later): its index's names alone, when some
 * shard the index lists is missing (neither NAME nor NAME.mpkz); else the open's error stands. */
static mpk_status open_names_instead(const char *src, mpk_status why, mpk_ckpt **out, mpk_error *err)
{
    mpk_error e2 = {0};
    mpk_ckpt *c;
    if (mpk_ckpt_open_names(src, &c, &e2) != MPK_OK)
        return why;
    bool missing = false;
    for (size_t i = 0; i < c->n_shards && !missing; i++) {
        char *z = mpk_strcat_ext(c->shards[i].path, ".mpkz");
        missing = access(c->shards[i].path, F_OK) != 0 && (!z || access(z, F_OK) != 0);
        free(z);
    }
    if (!missing) {
        mpk_ckpt_close(c);
        return why;
    }
    *out = c;
    memset(err, 0, sizeof *err);
    return MPK_OK;
}

/* SRC as a conversion's source. A .safetensors file that an index beside it names among several
 * shards is refused (converting it alone would give a fraction of the model): MPK_E_NOT_FOUND
 * naming the directory to give. A file with config.json beside it, and no index or one naming
 * only it, is converted as its directory: config.json and the other files go with it (the
 * report says so). Else (a lone file) opened as a file, as mpk_ckpt_open does. */
static mpk_status open_src(const char *src, mpk_ckpt **out, mpk_error *err)
{
    struct stat st;
    const char *slash = strrchr(src, '/');
    if (stat(src, &st) != 0 || !S_ISREG(st.st_mode))
        return mpk_ckpt_open(src, out, err);
    char *dir = slash ? mpk_strndup(src, (size_t)(slash - src + (slash == src))) : mpk_strndup(".", 1);
    const char *base = slash ? slash + 1 : src;
    size_t bl = strlen(base), n = 0, n_files = 0, named = 0;
    if (bl > 5 && strcmp(base + bl - 5, ".mpkz") == 0) /* NAME.safetensors.mpkz is NAME.safetensors */
        bl -= 5;
    char *ix = dir ? mpk_path_join(dir, MPK_INDEX_NAME) : NULL, *cfg = dir ? mpk_path_join(dir, "config.json") : NULL;
    char *text = NULL;
    size_t len;
    mpk_arena *a = NULL;
    const char **names, **files;
    uint64_t total;
    mpk_error ig;
    mpk_status s = MPK_OK;
    bool has_index = ix && access(ix, F_OK) == 0;
    if (!ix || !cfg)
        s = mpk_error_set(err, MPK_E_NOMEM, 0, src, "out of memory");
    else if (has_index && mpk_read_file(ix, &text, &len, &ig) == MPK_OK &&
             mpk_index_parse(text, len, ix, &a, &names, &files, &n, &total, &ig) == MPK_OK) {
        for (size_t i = 0; i < n; i++) {
            bool seen = false; /* shards in order of first appearance */
            for (size_t k = 0; k < i && !seen; k++)
                seen = strcmp(files[k], files[i]) == 0;
            n_files += !seen;
            named += !seen && strlen(files[i]) == bl && strncmp(files[i], base, bl) == 0;
        }
    }
    if (s == MPK_OK && named && n_files > 1) {
        s = mpk_error_set(err, MPK_E_NOT_FOUND, 0, NULL, "%s is one shard of the checkpoint in %s (its index names "
                          "%zu shards): give the directory %s", src, dir, n_files, dir);
        if (err) /* the message names the file first itself */
            snprintf(err->where, sizeof err->where, "%s", src);
    } else if (s == MPK_OK && named) /* the index names this file alone: that directory */
        s = mpk_ckpt_open(dir, out, err);
    else if (s == MPK_OK && (s = mpk_ckpt_open(src, out, err)) == MPK_OK && !has_index && access(cfg, F_OK) == 0)
        (*out)->is_dir = true; /* a single-file checkpoint: its directory's files go with it */
    mpk_arena_free(a);
    free(text);
    free(ix);
    free(cfg);
    free(dir);
    return s;
}

/* Opens, loads the spec, refuses a source already converted, plans. names_ok: a release
 * without its shards is planned from its index's names (plan only). */
static mpk_status plan_job(const mpk_convert_req *r, bool names_ok, job **jout, mpk_plan **pout, mpk_error *err)
{
    job *j = mpk_calloc(1, sizeof *j);
    if (!j)
        MPK_FAIL(err, MPK_E_NOMEM, r->src, "out of memory");
    mpk_status s;
    bool unpack = r->direction == MPK_DIRECTION_UNPACK;
    if ((s = open_src(r->src, &j->src, err)) != MPK_OK && names_ok)
        s = open_names_instead(r->src, s, &j->src, err);
    if (s != MPK_OK || (s = mpk_config_load(j->src->dir, &j->cfg, err)) != MPK_OK ||
        (s = mpk_lib_spec_load(r->spec, &j->cfg, unpack, &j->spec, err)) != MPK_OK)
        goto fail;
    j->layout = j->spec->reversed ? "per-expert" : "packed";
    const char *marker = mpk_lib_layout_marker(j->src);
    if (marker && strcmp(marker, j->layout) == 0) {
        s = mpk_error_set(err, MPK_E_ALREADY_CONVERTED, 0, r->src,
                          "already in the %s layout (written by moepack); nothing to do", j->layout);
        goto fail;
    }
    mpk_plan_opts po = {.max_shard_size = r->max_shard_size, .cfg = &j->cfg,
                        .pass_unknown = r->flags & MPK_CONVERT_PASS_UNKNOWN};
    mpk_lib_plan_quant(r->quant, &po);
    /* a transformers spec's renames undone: the record's names pick among the names a packed
     * name could have had (plan/rename_undo.c) */
    if (j->spec->reversed && j->spec->transformers && !r->layout_like && has_record(j->src)) {
        if ((s = mpk_source_load(j->src->dir, &j->files, err)) != MPK_OK)
            goto fail;
        po.known_names = &j->files->file_of;
    }
    if ((s = mpk_plan_build(j->src, j->spec, &po, pout, err)) != MPK_OK ||
        (s = follow_files(r, j, *pout, err)) != MPK_OK) {
        mpk_plan_free(*pout);
        *pout = NULL;
        goto fail;
    }
    *jout = j;
    return MPK_OK;
fail:
    job_free(j);
    return s;
}

mpk_status mpk_plan_create(const mpk_convert_req *r, mpk_plan **out, mpk_error *err)
{
    job *j;
    *out = NULL;
    MPK_TRY(check_req(r, false, err));
    MPK_TRY(plan_job(r, true, &j, out, err));
    (*out)->owner = j;
    (*out)->owner_free = job_free;
    return MPK_OK;
}

char *mpk_plan_describe(const mpk_plan *p, bool verbose)
{
    char *buf = NULL;
    size_t len;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    mpk_plan_print(p, f, verbose);
    if (ferror(f)) {
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    return buf;
}

char *mpk_plan_describe_json(const mpk_plan *p)
{
    cJSON *o = cJSON_CreateObject(), *outs = cJSON_CreateArray();
    if (!o || !outs) {
        cJSON_Delete(o);
        cJSON_Delete(outs);
        return NULL;
    }
    bool names = p->src->names_only;
    cJSON_AddStringToObject(o, "schema", "moepack.plan/1");
    cJSON_AddStringToObject(o, "preset", p->spec->name);
    cJSON_AddBoolToObject(o, "reversed", p->spec->reversed);
    cJSON_AddStringToObject(o, "source", p->src->dir);
    cJSON_AddNumberToObject(o, "source_tensors", (double)p->src->n_tensors);
    cJSON_AddBoolToObject(o, "shapes_checked", !names); /* false: planned from an index's names alone */
    cJSON_AddNumberToObject(o, "targets_built", (double)(p->n_outs - p->n_pass));
    cJSON_AddNumberToObject(o, "sources_consumed", (double)p->n_consumed);
    cJSON_AddNumberToObject(o, "passed_through", (double)p->n_pass);
    cJSON_AddNumberToObject(o, "tensors", (double)p->n_outs);
    mpk_lib_unknown_json(o, p);
    if (!names) {
        cJSON_AddNumberToObject(o, "bytes", (double)p->total_bytes);
        cJSON_AddNumberToObject(o, "shards", (double)p->n_shards);
    }
    char file[512], ob[64];
    for (size_t i = 0; i < p->n_outs; i++) {
        const mpk_plan_out *t = &p->outs[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddItemToArray(outs, e);
        cJSON_AddStringToObject(e, "name", t->name);
        if (!names) {
            cJSON_AddStringToObject(e, "dtype", mpk_dtype_name(t->meta.dtype));
            cJSON *shape = cJSON_AddArrayToObject(e, "shape");
            for (int d = 0; d < t->meta.ndim; d++)
                cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->meta.shape[d]));
            mpk_plan_shard_name(p, (size_t)t->shard, file, sizeof file);
            cJSON_AddStringToObject(e, "file", file);
        }
        cJSON *srcs = cJSON_AddArrayToObject(e, "sources");
        if (t->group < 0) {
            cJSON_AddItemToArray(srcs, cJSON_CreateString(t->pass->info->name));
            continue;
        }
        const mpk_plan_group *g = &p->groups[t->group];
        for (long k = 0; k < (long)g->rule->n_sources * g->n_items; k++)
            cJSON_AddItemToArray(srcs, cJSON_CreateString(g->src[k]->info->name));
        cJSON *ops = cJSON_AddArrayToObject(e, "ops");
        for (int k = 0; k < g->rule->n_ops; k++)
            cJSON_AddItemToArray(ops, cJSON_CreateString(mpk_op_str(&g->rule->ops[k], ob, sizeof ob)));
        if (t->quant)
            cJSON_AddStringToObject(e, "quantized", mpk_lib_quant_role(p->quant4, t->quant));
    }
    cJSON_AddItemToObject(o, "outputs", outs);
    char *text = mpk_json_print(o, true);
    cJSON_Delete(o);
    return text;
}

static mpk_status requant_config(const mpk_convert_req *r, const job *j, const mpk_plan *p, char **out,
                                 mpk_error *err)
{
    cJSON *qc = NULL;
    *out = NULL;
    if (mpk_lib_quantizes(r->quant))
        qc = mpk_lib_quant_config(p, r->quant);
    else if (j->spec->dequantizes && j->spec->reversed)
        qc = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(j->spec->json, "quantization_config"), 1);
    bool want_qc = mpk_lib_quantizes(r->quant) ||
                   (j->spec->dequantizes && j->spec->reversed &&
                    cJSON_GetObjectItemCaseSensitive(j->spec->json, "quantization_config"));
    if (want_qc && !qc)
        MPK_FAIL(err, MPK_E_NOMEM, r->src, "out of memory");
    if (r->quant == MPK_QUANT_DEQUANTIZE || (j->spec->dequantizes && !j->spec->reversed))
        *out = mpk_config_requant(&j->cfg, true, NULL);
    else if (qc)
        *out = mpk_config_requant(&j->cfg, false, qc);
    cJSON_Delete(qc);
    if (!*out && r->quant != MPK_QUANT_DEQUANTIZE) /* compressed-tensors' module lists kept true */
        return mpk_config_ct_rewrite(&j->cfg, p, out, err);
    return MPK_OK;
}

mpk_status mpk_lib_write_manifest(const char *dir, mpk_tensor_hash *hashes, size_t n, const cJSON *prov,
                                  bool sync, mpk_error *err)
{
    return hashes ? mpk_manifest_write_hashes(dir, hashes, n, prov, sync, err)
                  : mpk_manifest_write(dir, prov, sync, err);
}

/* How the output was made, kept in its manifest: moepack's version, the command, the preset
 * and a digest of its spec, the options that change bytes, the source and its digest. */
/* What the manifest says the source was, without a local path (the same conversion from two
 * folders gives the same manifest): a Hugging Face cache snapshot as "ORG/NAME@REVISION", else
 * "" (the source's digest, source_xxh3_128, identifies it). */
static const char *hub_name(const char *dir, char *buf, size_t cap)
{
    char *blobs = mpk_hub_blobs_of(dir), *real = blobs ? realpath(dir, NULL) : NULL;
    buf[0] = 0;
    const char *snap = real ? strstr(real, "/snapshots/") : NULL;
    if (snap) {
        const char *repo = snap;
        while (repo > real && repo[-1] != '/')
            repo--;
        if (strncmp(repo, "models--", 8) == 0) {
            snprintf(buf, cap, "%.*s@%s", (int)(snap - repo - 8), repo + 8, snap + 11);
            char *dd = strstr(buf, "--");
            if (dd) {
                *dd = '/';
                memmove(dd + 1, dd + 2, strlen(dd + 2) + 1);
            }
        }
    }
    free(blobs);
    free(real);
    return buf;
}

static cJSON *provenance(const mpk_convert_req *r, const job *j, mpk_error *err)
{
    mpk_hash128 sd = j->src_digest; /* read once: the record was made from the same headers */
    if (!j->have_digest && mpk_source_digest(j->src, &sd, err) != MPK_OK)
        return NULL;
    char *spec = cJSON_PrintUnformatted(j->spec->json), hx[33];
    cJSON *o = spec ? cJSON_CreateObject() : NULL, *opts = o ? cJSON_CreateObject() : NULL;
    if (!opts) {
        free(spec);
        cJSON_Delete(o);
        mpk_error_set(err, MPK_E_NOMEM, 0, r->dst, "out of memory");
        return NULL;
    }
    XXH128_hash_t h = XXH3_128bits(spec, strlen(spec));
    free(spec);
    bool file = is_spec_file(r->spec ? r->spec : "auto");
    /* every field or none: a manifest must not record a provenance missing a part */
    bool ok = cJSON_AddStringToObject(o, "moepack_version", mpk_version()) &&
              cJSON_AddStringToObject(o, "command", file ? (j->spec->reversed ? "convert --reverse" : "convert")
                                                    : j->spec->reversed ? "unpack" : "pack") &&
              cJSON_AddStringToObject(o, "preset", file ? "" : j->spec->name) &&
              cJSON_AddStringToObject(o, "spec", file ? r->spec : "") &&
              cJSON_AddStringToObject(o, "spec_xxh3_128", mpk_hash_hex((mpk_hash128){h.high64, h.low64}, hx)) &&
              cJSON_AddStringToObject(opts, "quantize", mpk_lib_quant_name(r->quant)) &&
              cJSON_AddNumberToObject(opts, "max_shard_size", (double)r->max_shard_size) &&
              cJSON_AddBoolToObject(opts, "compress", j->compress_level > 0) &&
              cJSON_AddNumberToObject(opts, "compress_level", j->compress_level) &&
              cJSON_AddStringToObject(opts, "layout_like", !r->layout_like ? ""
                                                           : strrchr(r->layout_like, '/') ? strrchr(r->layout_like, '/') + 1
                                                                                          : r->layout_like);
    bool attached = ok && cJSON_AddItemToObject(o, "options", opts); /* then o owns opts */
    char hub[512];
    ok = attached && cJSON_AddStringToObject(o, "source", hub_name(j->src->dir, hub, sizeof hub)) &&
         cJSON_AddStringToObject(o, "source_xxh3_128", mpk_hash_hex(sd, hx));
    if (!ok) {
        if (!attached)
            cJSON_Delete(opts);
        cJSON_Delete(o);
        mpk_error_set(err, MPK_E_NOMEM, 0, r->dst, "out of memory");
        return NULL;
    }
    return o;
}

/* The executor's last step before landing: the manifest and the source record. */
static mpk_status finish(void *ctx, const char *dir, mpk_tensor_hash *hashes, size_t n, mpk_error *err)
{
    const job *j = ctx;
    if (j->hf_quant) { /* before the manifest, which lists the files */
        char *hp = mpk_path_join(dir, "hf_quant_config.json");
        mpk_status s = hp ? mpk_write_file(hp, j->hf_quant, strlen(j->hf_quant), j->sync, err)
                          : mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
        free(hp);
        MPK_TRY(s);
    }
    if (j->manifest)
        MPK_TRY(mpk_lib_write_manifest(dir, hashes, n, j->prov, j->sync, err));
    if (j->compress_level > 0)
        MPK_TRY(mpk_lib_compress_shards(dir, j->compress_level, j->threads, err));
    if (!j->record)
        return MPK_OK;
    char *path = mpk_path_join(dir, MPK_SOURCE_NAME);
    if (!path)
        MPK_FAIL(err, MPK_E_NOMEM, dir, "out of memory");
    mpk_status s = mpk_write_file(path, j->record, j->record_len, j->sync, err);
    free(path);
    return s;
}


mpk_status mpk_convert(const mpk_convert_req *r, mpk_report **report, mpk_error *err)
{
    job *j = NULL;
    mpk_plan *plan = NULL;
    char *cfg_text = NULL;
    if (report)
        *report = NULL;
    MPK_TRY(check_req(r, true, err));
    bool manifest = !(r->flags & MPK_CONVERT_NO_MANIFEST);
    mpk_status s = plan_job(r, false, &j, &plan, err);
    if (s == MPK_OK && plan->layout && plan->layout->config_text) /* the release's own config.json, verbatim */
        cfg_text = mpk_strndup(plan->layout->config_text, strlen(plan->layout->config_text));
    else if (s == MPK_OK)
        s = requant_config(r, j, plan, &cfg_text, err);
    if (s == MPK_OK) {
        j->manifest = manifest;
        j->sync = !(r->flags & MPK_CONVERT_NO_FSYNC);
        j->compress_level = !(r->flags & MPK_CONVERT_COMPRESS) ? 0 : r->compress_level ? r->compress_level : 1;
        j->threads = r->threads;
        if (r->quant == MPK_QUANT_NVFP4 && !(j->hf_quant = mpk_lib_hf_quant_config(plan)))
            s = mpk_error_set(err, MPK_E_NOMEM, 0, r->dst, "out of memory");
        if (s == MPK_OK && manifest && !(j->prov = provenance(r, j, err)))
            s = err->code ? err->code : MPK_E_NOMEM;
    }
    /* under MPI every rank planned the same: one that could not fails them all */
    if ((s = mpk_dist_agree(s, err)) != MPK_OK)
        goto out;
    mpk_kv meta[2] = {{"format", "pt"}, {"moepack_layout", j->layout}};
    /* MPK_SOURCE_NAME: written (or not) by finish; ModelOpt's hf_quant_config.json declares a
     * quantization --dequantize removes */
    static const char *const skip[] = {MPK_SOURCE_NAME, NULL}, *const skip_dq[] = {MPK_SOURCE_NAME,
                                                                                   "hf_quant_config.json", NULL};
    mpk_exec_opts eo = {
        .threads = r->threads,
        .mem = r->mem,
        .force = r->flags & MPK_CONVERT_FORCE,
        .progress = r->progress,
        .progress_ctx = r->ctx,
        .cancel = r->cancel,
        .use_copy_range = !(r->flags & MPK_CONVERT_NO_COPY_RANGE),
        .no_fsync = r->flags & MPK_CONVERT_NO_FSYNC,
        .no_direct = j->compress_level > 0, /* compressed from the page cache right after */
        .io = r->io,
        .metadata = meta,
        .n_metadata = 2,
        .config_json = cfg_text,
        .hash_outputs = manifest,
        .finish = finish,
        .finish_ctx = j,
        .skip_names = r->quant == MPK_QUANT_DEQUANTIZE || r->quant == MPK_QUANT_NVFP4 || r->quant == MPK_QUANT_MXFP4
                          ? skip_dq : skip,
        .resume = r->flags & MPK_CONVERT_RESUME,
        .copy_links = r->flags & MPK_CONVERT_COPY_LINKS,
        .warn = r->warn,
        .warn_ctx = r->ctx,
        .direct = r->direct,
        .bounce = r->bounce,
        .no_splice = r->flags & MPK_CONVERT_NO_SPLICE,
        .no_prefetch = r->flags & MPK_CONVERT_NO_PREFETCH,
        .no_writeback = r->flags & MPK_CONVERT_NO_WRITEBACK,
    };
    mpk_exec_stats st;
    if ((s = mpk_exec(plan, r->dst, &eo, &st, err)) != MPK_OK)
        goto out;
    /* dst has landed: a report that cannot be built (out of memory) is no failure of it */
    mpk_error ig;
    if (mpk_lib_convert_report(r, plan, &st, report, &ig) != MPK_OK && report)
        *report = NULL;
    free(st.ranks);
out:
    free(cfg_text);
    mpk_plan_free(plan);
    job_free(j);
    return s;
}
