/* verify_manifest.c — checking a checkpoint against its manifest (formats/manifest.c reads it). */
#define _GNU_SOURCE
#include "mpk_verify.h"
#include "verify_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mpk_status mpk_verify_manifest(const mpk_ckpt *c, mpk_meter *meter, mpk_cmp_report **out, mpk_error *err)
{
    *out = NULL;
    cJSON *root;
    const cJSON *ts;
    mpk_hash128 want_digest;
    MPK_TRY(mpk_manifest_load(c->dir, &root, &ts, &want_digest, err));
    char path[4200]; /* messages name the manifest file */
    snprintf(path, sizeof path, "%s/%s", c->dir, MPK_MANIFEST_NAME);
    mpk_status s = MPK_OK;
    mpk_strmap listed = {0};
    mpk_cmp_report *r = mpk_calloc(1, sizeof *r);
    mpk_tensor_hash *th = NULL;
    mpk_hash128 digest;
    if (!r || mpk_strmap_init(&listed, (size_t)cJSON_GetArraySize(ts)) != MPK_OK) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
        goto done;
    }
    for (const cJSON *e = ts->child; e; e = e->next)
        if (mpk_strmap_put(&listed, e->string, strlen(e->string), 0, NULL)) {
            s = mpk_error_set(err, MPK_E_MANIFEST, 0, path, "tensor '%s' is listed twice", e->string);
            goto done;
        }
    if ((s = mpk_hash_ckpt(c, &th, &digest, meter, err)) != MPK_OK)
        goto done;
    for (const cJSON *e = ts->child; e; e = e->next) {
        const mpk_ckpt_tensor *t = mpk_ckpt_find(c, e->string);
        if (!t) {
            vfy_add(r, e->string, MPK_DIFF_MISSING, "listed in the manifest, absent");
            continue;
        }
        size_t i = (size_t)(t - c->tensors);
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *hx = cJSON_GetObjectItemCaseSensitive(e, "xxh3_128");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        mpk_hash128 h;
        bool shape_ok = cJSON_IsArray(sh) && cJSON_GetArraySize(sh) == t->info->ndim;
        const cJSON *dim = shape_ok ? sh->child : NULL;
        for (int d = 0; shape_ok && d < t->info->ndim; d++, dim = dim->next)
            shape_ok = cJSON_IsNumber(dim) && dim->valuedouble == (double)t->info->shape[d];
        r->n_compared++;
        r->bytes += t->nbytes;
        if (!cJSON_IsString(dt) || strcmp(dt->valuestring, mpk_dtype_name(t->info->dtype)) || !shape_ok) {
            mpk_tensor_cmp *x = vfy_add(r, e->string, MPK_DIFF_META, "");
            if (x)
                snprintf(x->detail, sizeof x->detail, "dtype/shape differ from the manifest (%s)",
                         cJSON_IsString(dt) ? dt->valuestring : "?");
        } else if (!cJSON_IsString(hx) || !mpk_hash_parse_hex(hx->valuestring, &h)) {
            vfy_add(r, e->string, MPK_DIFF_META, "its xxh3_128 in the manifest is not 32 hex digits");
        } else if (h.hi != th[i].hash.hi || h.lo != th[i].hash.lo) {
            mpk_tensor_cmp *x = vfy_add(r, e->string, MPK_DIFF_CONTENT, "XXH3-128 differs from the manifest");
            if (x) {
                x->want_hash = h;
                x->got_hash = th[i].hash;
            }
        }
    }
    for (size_t i = 0; i < c->n_tensors; i++) {
        const char *name = c->tensors[i].info->name;
        size_t ignored;
        if (!mpk_strmap_get(&listed, name, strlen(name), &ignored))
            vfy_add(r, name, MPK_DIFF_EXTRA, "not in the manifest");
    }
    if (!r->n_differ && (digest.hi != want_digest.hi || digest.lo != want_digest.lo)) {
        mpk_tensor_cmp *x = vfy_add(r, "(checkpoint digest)", MPK_DIFF_CONTENT,
                                    "whole-checkpoint digest differs");
        if (x) {
            x->want_hash = want_digest;
            x->got_hash = digest;
        }
    }
done:
    mpk_strmap_free(&listed);
    free(th);
    cJSON_Delete(root);
    if (s != MPK_OK) {
        mpk_cmp_report_free(r);
        return s;
    }
    *out = r;
    return MPK_OK;
}
