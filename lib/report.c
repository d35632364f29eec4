/* report.c — the public API's front: the report handle: the structured result every public call
 * returns (JSON document, human text, tensor lines). */
#define _GNU_SOURCE
#include "lib_internal.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

mpk_report *mpk_report_new(void)
{
    mpk_report *r = mpk_calloc(1, sizeof *r);
    if (r && !(r->arena = mpk_arena_new())) {
        free(r);
        return NULL;
    }
    return r;
}

static const char *dup_or_null(mpk_arena *a, const char *s, bool *ok)
{
    if (!s)
        return NULL;
    char *d = mpk_arena_strndup(a, s, strlen(s));
    *ok = *ok && d;
    return d;
}

mpk_status mpk_report_add(mpk_report *r, const char *name, const char *kind, const char *detail,
                          mpk_dtype dtype, int ndim, const int64_t *shape, uint64_t nbytes, const char *hash,
                          mpk_error *err)
{
    mpk_report_item *items = mpk_grow(r->items, r->n_items, &r->cap_items, sizeof *items, 64);
    if (!items)
        MPK_FAIL(err, MPK_E_NOMEM, "report", "out of memory");
    r->items = items;
    mpk_report_item *it = &items[r->n_items];
    memset(it, 0, sizeof *it);
    bool ok = true;
    it->name = dup_or_null(r->arena, name, &ok);
    it->kind = dup_or_null(r->arena, kind, &ok);
    it->detail = dup_or_null(r->arena, detail ? detail : "", &ok);
    it->hash = dup_or_null(r->arena, hash ? hash : "", &ok);
    if (!ok)
        MPK_FAIL(err, MPK_E_NOMEM, "report", "out of memory");
    it->dtype = dtype;
    it->ndim = ndim > MPK_MAX_DIMS ? MPK_MAX_DIMS : ndim < 0 ? 0 : ndim;
    if (shape)
        memcpy(it->shape, shape, (size_t)it->ndim * sizeof *shape);
    it->nbytes = nbytes;
    r->n_items++;
    return MPK_OK;
}

mpk_status mpk_report_set_json(mpk_report *r, const char *schema, cJSON *o, mpk_error *err)
{
    /* "schema" first, so that a reader sees what the document holds before anything else */
    cJSON *n = o ? cJSON_CreateObject() : NULL;
    if (n && cJSON_AddStringToObject(n, "schema", schema)) {
        for (cJSON *c; (c = o->child);)
            cJSON_AddItemToArray(n, cJSON_DetachItemViaPointer(o, c)); /* keeps its key */
        cJSON_Delete(o);
        o = n;
    } else {
        cJSON_Delete(n);
        cJSON_Delete(o);
        o = NULL;
    }
    char *s = o ? mpk_json_print(o, false) : NULL;
    cJSON_Delete(o);
    if (!s)
        MPK_FAIL(err, MPK_E_NOMEM, "report", "out of memory");
    free(r->json);
    r->json = s;
    return MPK_OK;
}

FILE *mpk_report_begin_text(mpk_report *r, char **buf, size_t *len)
{
    *buf = NULL;
    return open_memstream(buf, len);
}

mpk_status mpk_report_end_text(mpk_report *r, FILE *f, char **bufp, mpk_error *err)
{
    if (!f)
        MPK_FAIL(err, MPK_E_NOMEM, "report", "out of memory");
    bool bad = ferror(f) != 0;
    bad |= fclose(f) != 0; /* *bufp holds the text only from here */
    char *buf = *bufp;
    if (bad || !buf) {
        free(buf);
        MPK_FAIL(err, MPK_E_NOMEM, "report", "out of memory");
    }
    free(r->text);
    r->text = buf;
    return MPK_OK;
}

mpk_status mpk_report_give(mpk_report *r, mpk_report **out)
{
    if (out)
        *out = r;
    else
        mpk_report_free(r);
    return MPK_OK;
}

const char *mpk_report_json(const mpk_report *r)
{
    return r && r->json ? r->json : "{}";
}

const char *mpk_report_text(const mpk_report *r)
{
    return r && r->text ? r->text : "";
}

size_t mpk_report_differences(const mpk_report *r)
{
    return r ? r->n_differ : 0;
}

const char *mpk_report_skipped(const mpk_report *r)
{
    return r && r->skipped[0] ? r->skipped : NULL;
}

size_t mpk_report_count(const mpk_report *r)
{
    return r ? r->n_items : 0;
}

bool mpk_report_item_at(const mpk_report *r, size_t i, mpk_report_item *out)
{
    if (!r || i >= r->n_items)
        return false;
    *out = r->items[i];
    return true;
}

void mpk_report_free(mpk_report *r)
{
    if (!r)
        return;
    free(r->json);
    free(r->text);
    free(r->items);
    mpk_arena_free(r->arena);
    free(r);
}

bool mpk_lib_ranks_json(cJSON *o, const mpk_rank_stats *r, int n)
{
    if (!r)
        return true;
    cJSON *a = cJSON_AddArrayToObject(o, "ranks");
    for (int i = 0; a && i < n; i++) {
        cJSON *e = cJSON_CreateObject();
        if (!e || !cJSON_AddItemToArray(a, e)) {
            cJSON_Delete(e);
            return false;
        }
        if (!cJSON_AddNumberToObject(e, "rank", r[i].rank) || !cJSON_AddStringToObject(e, "host", r[i].host) ||
            !cJSON_AddNumberToObject(e, "bytes_read", (double)r[i].bytes_read) ||
            !cJSON_AddNumberToObject(e, "bytes_written", (double)r[i].bytes_written) ||
            !cJSON_AddNumberToObject(e, "seconds", r[i].seconds))
            return false;
    }
    return a != NULL;
}

void mpk_lib_ranks_text(FILE *f, const mpk_rank_stats *r, int n)
{
    char hr[32], hw[32];
    for (int i = 0; r && i < n; i++)
        fprintf(f, "MPI rank %d of %d on %s: read %s, wrote %s, %.2f s\n", r[i].rank, n, r[i].host,
                mpk_human_bytes(r[i].bytes_read, hr, sizeof hr), mpk_human_bytes(r[i].bytes_written, hw, sizeof hw),
                r[i].seconds);
}
