/* manifest.c — the tensor hash (XXH3-128 per tensor), the sharding-independent checkpoint
 * digest, and the manifest file that records them (moepack.manifest.json; format in
 * mpk_formats.h). */
#define _GNU_SOURCE
#include "mpk_formats.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#define CHUNK (16u << 20)

const char *mpk_hash_hex(mpk_hash128 h, char *buf)
{
    snprintf(buf, 33, "%016llx%016llx", (unsigned long long)h.hi, (unsigned long long)h.lo);
    return buf;
}

mpk_status mpk_hash_tensor(const mpk_ckpt *c, const mpk_ckpt_tensor *t, char *buf, mpk_hash128 *out,
                           mpk_error *err)
{
    const mpk_shard *sh = &c->shards[t->shard];
    if (!sh->z)
        return mpk_hash_file_range(sh->fd, t->file_offset, t->nbytes, buf, CHUNK, false, sh->path, t->info->name, out,
                                   err);
    mpk_xxh *st = mpk_xxh_new(); /* a compressed shard: through its chunks */
    if (!st)
        MPK_FAIL(err, MPK_E_NOMEM, sh->path, "out of memory");
    mpk_status s = MPK_OK;
    for (uint64_t at = 0; at < t->nbytes && s == MPK_OK; at += CHUNK) {
        size_t n = t->nbytes - at < CHUNK ? (size_t)(t->nbytes - at) : CHUNK;
        if ((s = mpk_ckpt_read(c, t, at, n, buf, err)) == MPK_OK)
            mpk_xxh_update(st, buf, n);
    }
    *out = mpk_xxh_digest(st);
    mpk_xxh_free(st);
    return s;
}

mpk_hash128 mpk_manifest_digest(const mpk_tensor_hash *t, size_t n)
{
    XXH3_state_t *st = XXH3_createState();
    XXH128_hash_t h = {0, 0};
    if (!st)
        return (mpk_hash128){0, 0};
    XXH3_128bits_reset(st);
    for (size_t i = 0; i < n; i++) {
        char rec[1024], sh[256] = "", hx[33];
        size_t o = 0;
        for (int d = 0; d < t[i].ndim; d++)
            o += (size_t)snprintf(sh + o, sizeof sh - o, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        XXH3_128bits_update(st, t[i].name, strlen(t[i].name) + 1);
        int k = snprintf(rec, sizeof rec, "%s%c%s%c%s\n", mpk_dtype_name(t[i].dtype), 0, sh, 0,
                         mpk_hash_hex(t[i].hash, hx));
        XXH3_128bits_update(st, rec, (size_t)k);
    }
    h = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    return (mpk_hash128){h.high64, h.low64};
}

/* Tensors are hashed by up to one thread per CPU (at most 16), largest first, each thread with
 * its own read buffer; the first error wins. */
typedef struct {
    uint64_t bytes;
    size_t i;
} sized;

typedef struct hash_job {
    const mpk_ckpt *c;
    mpk_tensor_hash *t;
    const sized *order;          /* tensors, largest first (under MPI: this rank's) */
    size_t n;
    mpk_meter *meter;
    atomic_size_t next;
    atomic_bool failed;
    mpk_error err;
} hash_job;

static void *hash_worker(void *arg)
{
    hash_job *j = arg;
    char *buf = mpk_alloc(CHUNK);
    mpk_error e = {0};
    if (!buf) {
        mpk_error_set(&e, MPK_E_NOMEM, 0, j->c->dir, "out of memory");
        goto fail;
    }
    for (size_t k; !atomic_load(&j->failed) && (k = atomic_fetch_add(&j->next, 1)) < j->n;) {
        size_t i = j->order[k].i;
        if (mpk_hash_tensor(j->c, &j->c->tensors[i], buf, &j->t[i].hash, &e) != MPK_OK)
            goto fail;
        mpk_meter_add(j->meter, j->c->tensors[i].nbytes);
        if (mpk_meter_check(j->meter, j->c->dir, &e) != MPK_OK)
            goto fail;
    }
    free(buf);
    return NULL;
fail:
    if (!atomic_exchange(&j->failed, true)) /* the first error is kept; read after the joins */
        j->err = e;
    free(buf);
    return NULL;
}

static int larger_first(const void *a, const void *b)
{
    uint64_t x = ((const sized *)a)->bytes, y = ((const sized *)b)->bytes;
    return x < y ? 1 : x > y ? -1 : 0;
}

mpk_status mpk_hashes_share(mpk_tensor_hash *t, size_t n, const char *dir, mpk_error *err)
{
    uint64_t *h = mpk_calloc(2 * n + 1, sizeof *h);
    mpk_status s = h ? MPK_OK : mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
    for (size_t i = 0; h && i < n; i++)
        h[2 * i] = t[i].hash.hi, h[2 * i + 1] = t[i].hash.lo;
    MPK_TRY(mpk_dist_agree(s, err));
    mpk_dist_reduce(h, 2 * n, MPK_DIST_XOR);
    for (size_t i = 0; i < n; i++)
        t[i].hash = (mpk_hash128){h[2 * i], h[2 * i + 1]};
    free(h);
    return MPK_OK;
}

mpk_status mpk_hash_ckpt(const mpk_ckpt *c, mpk_tensor_hash **out, mpk_hash128 *digest, mpk_meter *meter,
                          mpk_error *err)
{
    *out = NULL;
    mpk_tensor_hash *t = mpk_calloc(c->n_tensors + 1, sizeof *t);
    sized *order = mpk_calloc(c->n_tensors + 1, sizeof *order);
    if (!t || !order) {
        free(t);
        free(order);
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "out of memory");
    }
    for (size_t i = 0; i < c->n_tensors; i++) {
        const mpk_ckpt_tensor *ct = &c->tensors[i];
        t[i].name = ct->info->name;
        t[i].dtype = ct->info->dtype;
        t[i].ndim = ct->info->ndim;
        memcpy(t[i].shape, ct->info->shape, sizeof t[i].shape);
        order[i] = (sized){ct->nbytes, i};
    }
    qsort(order, c->n_tensors, sizeof *order, larger_first);
    /* under MPI each rank hashes its share (largest first to the least loaded rank) */
    int R = mpk_dist_size();
    uint64_t *load = R > 1 ? mpk_calloc((size_t)R, sizeof *load) : NULL;
    if (R > 1 && !load) {
        free(t);
        free(order);
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "out of memory");
    }
    size_t n_mine = 0;
    for (size_t k = 0; k < c->n_tensors; k++)
        if (mpk_dist_mine(load, order[k].bytes))
            order[n_mine++] = order[k];
    free(load);
    hash_job j = {.c = c, .t = t, .order = order, .n = n_mine, .meter = meter};
    atomic_init(&j.next, 0);
    atomic_init(&j.failed, false);
    int n = mpk_default_threads();
    n = n > 16 ? 16 : n;
    if ((size_t)n > n_mine)
        n = n_mine ? (int)n_mine : 1;
    pthread_t tid[16];
    int started = 0;
    while (started < n - 1 && pthread_create(&tid[started], NULL, hash_worker, &j) == 0)
        started++;
    hash_worker(&j); /* this thread takes part (and does everything if no thread started) */
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    free(order);
    mpk_status s = MPK_OK;
    if (atomic_load(&j.failed)) {
        *err = j.err;
        s = err->code;
    }
    if (s == MPK_OK)
        s = mpk_ckpt_check_unchanged(c, err);
    if ((s = mpk_dist_agree(s, err)) == MPK_OK && R > 1)
        s = mpk_hashes_share(t, c->n_tensors, c->dir, err);
    if (s != MPK_OK) {
        free(t);
        return s;
    }
    *digest = mpk_manifest_digest(t, c->n_tensors);
    *out = t;
    return MPK_OK;
}

cJSON *mpk_manifest_json(const mpk_tensor_hash *t, size_t n, mpk_hash128 digest, const cJSON *prov)
{
    char hx[33];
    cJSON *root = cJSON_CreateObject(), *ts = cJSON_CreateObject();
    bool ok = root && ts && cJSON_AddStringToObject(root, "schema", MPK_MANIFEST_FORMAT) &&
              cJSON_AddStringToObject(root, "format", MPK_MANIFEST_FORMAT) &&
              (!prov || cJSON_AddItemToObject(root, "provenance", cJSON_Duplicate(prov, 1))) &&
              cJSON_AddStringToObject(root, "digest", mpk_hash_hex(digest, hx)) &&
              cJSON_AddItemToObject(root, "tensors", ts);
    if (!ok) { /* ts not owned by root yet */
        cJSON_Delete(root);
        cJSON_Delete(ts);
        return NULL;
    }
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *e = cJSON_CreateObject(), *sh = cJSON_CreateArray();
        ok = e && sh && cJSON_AddStringToObject(e, "dtype", mpk_dtype_name(t[i].dtype));
        for (int d = 0; ok && d < t[i].ndim; d++) {
            cJSON *v = cJSON_CreateNumber((double)t[i].shape[d]);
            ok = v && cJSON_AddItemToArray(sh, v);
            if (!ok)
                cJSON_Delete(v);
        }
        ok = ok && cJSON_AddItemToObject(e, "shape", sh);
        if (!ok)
            cJSON_Delete(sh);
        ok = ok && cJSON_AddStringToObject(e, "xxh3_128", mpk_hash_hex(t[i].hash, hx)) &&
             cJSON_AddItemToObject(ts, t[i].name, e);
        if (!ok)
            cJSON_Delete(e);
    }
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

char *mpk_manifest_format(const mpk_tensor_hash *t, size_t n, mpk_hash128 digest, const cJSON *prov)
{
    cJSON *root = mpk_manifest_json(t, n, digest, prov);
    char *text = root ? mpk_json_print(root, true) : NULL;
    cJSON_Delete(root);
    return text;
}

static mpk_status write_manifest(const char *dir, const mpk_tensor_hash *t, size_t n, mpk_hash128 d,
                                 const cJSON *prov, bool sync, mpk_error *err)
{
    return mpk_write_text_in(dir, MPK_MANIFEST_NAME, mpk_manifest_format(t, n, d, prov), sync, err);
}

mpk_status mpk_manifest_write(const char *dir, const cJSON *prov, bool sync, mpk_error *err)
{
    mpk_ckpt *c;
    MPK_TRY(mpk_ckpt_open(dir, &c, err));
    mpk_tensor_hash *t;
    mpk_hash128 d;
    mpk_status s = mpk_hash_ckpt(c, &t, &d, NULL, err);
    if (s == MPK_OK) {
        s = write_manifest(c->is_dir ? c->dir : dir, t, c->n_tensors, d, prov, sync, err);
        free(t);
    }
    mpk_ckpt_close(c);
    return s;
}

static int natural_order(const void *a, const void *b)
{
    return mpk_natural_cmp(((const mpk_tensor_hash *)a)->name, ((const mpk_tensor_hash *)b)->name);
}

mpk_status mpk_manifest_write_hashes(const char *dir, mpk_tensor_hash *t, size_t n, const cJSON *prov,
                                     bool sync, mpk_error *err)
{
    qsort(t, n, sizeof *t, natural_order);
    return write_manifest(dir, t, n, mpk_manifest_digest(t, n), prov, sync, err);
}

bool mpk_hash_parse_hex(const char *s, mpk_hash128 *h)
{
    if (!s || strlen(s) != 32 || strspn(s, "0123456789abcdefABCDEF") != 32)
        return false;
    char a[17], b[17], *e1, *e2;
    memcpy(a, s, 16);
    memcpy(b, s + 16, 16);
    a[16] = b[16] = 0;
    h->hi = strtoull(a, &e1, 16);
    h->lo = strtoull(b, &e2, 16);
    return !*e1 && !*e2;
}


mpk_status mpk_manifest_load(const char *dir, cJSON **root_out, const cJSON **tensors, mpk_hash128 *digest,
                             mpk_error *err)
{
    *root_out = NULL;
    char *path = mpk_path_join(dir, MPK_MANIFEST_NAME), *text = NULL;
    size_t len;
    if (!path)
        MPK_FAIL(err, MPK_E_NOMEM, dir, "out of memory");
    mpk_status s = mpk_read_file(path, &text, &len, err);
    if (s != MPK_OK) {
        mpk_error_set(err, MPK_E_MANIFEST, err->sys_errno, path, "no manifest to check against (%s); "
                      "hashing the checkpoint with its manifest written makes one", err->msg);
        free(path);
        return MPK_E_MANIFEST;
    }
    mpk_json *j;
    s = mpk_json_parse(text, len, MPK_E_MANIFEST, path, "the manifest", &j, err);
    free(text);
    if (s != MPK_OK) {
        free(path);
        return s;
    }
    cJSON *root = mpk_json_take(j);
    const cJSON *fm = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(root, "tensors");
    const cJSON *dg = cJSON_GetObjectItemCaseSensitive(root, "digest");
    if (!cJSON_IsString(fm) || strcmp(fm->valuestring, MPK_MANIFEST_FORMAT) != 0 ||
        !cJSON_IsObject(ts) || !cJSON_IsString(dg) || !mpk_hash_parse_hex(dg->valuestring, digest)) {
        s = mpk_error_set(err, MPK_E_MANIFEST, 0, path, !cJSON_IsString(fm) ? "not a moepack "
                          "manifest (no \"format\": \"" MPK_MANIFEST_FORMAT "\")"
                          : strcmp(fm->valuestring, MPK_MANIFEST_FORMAT) ? "manifest format '%.40s' "
                          "is not one this version reads (" MPK_MANIFEST_FORMAT ")"
                          : "not a moepack manifest (needs \"tensors\" and a 32-hex-digit \"digest\")",
                          cJSON_IsString(fm) ? fm->valuestring : "");
        cJSON_Delete(root);
        free(path);
        return s;
    }
    free(path);
    *root_out = root;
    *tensors = ts;
    return MPK_OK;
}
