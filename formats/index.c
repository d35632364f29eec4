/* index.c — the shard index (model.safetensors.index.json): parsing it strictly, writing it
 * the way transformers does, and the names of shard files. */
#define _GNU_SOURCE
#include "formats_internal.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INDEX_NAME MPK_INDEX_NAME
#define SINGLE_NAME "model.safetensors"

bool mpk_shard_name_safe(const char *s)
{
    if (!*s || s[0] == '/' || strchr(s, '/') || strchr(s, '\\'))
        return false;
    if (strcmp(s, ".") == 0 || strstr(s, ".."))
        return false;
    return true;
}

mpk_status mpk_index_parse(const char *text, size_t len, const char *where, mpk_arena **arena_out,
                           const char ***names_out, const char ***files_out, size_t *n_out,
                           uint64_t *total_size, mpk_error *err)
{
    *arena_out = NULL;
    mpk_json *j;
    MPK_TRY(mpk_json_parse(text, len, MPK_E_INDEX, where, "the index", &j, err));
    const cJSON *root = j->root;
    mpk_status s = MPK_OK;
    mpk_arena *a = NULL;
    mpk_strmap seen = {0};
    const cJSON *wm = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map")
                                           : NULL;
    if (!cJSON_IsObject(wm)) {
        s = mpk_error_set(err, MPK_E_INDEX, 0, where, "no \"weight_map\" object");
        goto done;
    }
    *total_size = 0;
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (md && !cJSON_IsNull(md)) {
        const cJSON *ts = cJSON_IsObject(md) ? cJSON_GetObjectItemCaseSensitive(md, "total_size")
                                             : NULL;
        const char *why = ts ? mpk_json_uint(j, ts, total_size) : NULL;
        if (!cJSON_IsObject(md) || why) {
            s = mpk_error_set(err, MPK_E_INDEX, 0, where, "metadata.total_size %s (it must be a "
                              "plain non-negative integer below 2^64)",
                              cJSON_IsObject(md) ? why : "is not in an object");
            goto done;
        }
    }
    size_t n = (size_t)cJSON_GetArraySize(wm);
    if (n == 0) { /* a checkpoint of no tensors: every shard beside it would be dropped */
        s = mpk_error_set(err, MPK_E_INDEX, 0, where, "\"weight_map\" is empty: the index lists no tensors");
        goto done;
    }
    a = mpk_arena_new();
    const char **names = a ? mpk_arena_alloc(a, (n + 1) * sizeof *names) : NULL;
    const char **files = a ? mpk_arena_alloc(a, (n + 1) * sizeof *files) : NULL;
    if (!names || !files || mpk_strmap_init(&seen, n) != MPK_OK) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
        goto done;
    }
    size_t i = 0;
    for (const cJSON *e = wm->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e)) {
            s = mpk_error_set(err, MPK_E_INDEX, 0, where, "weight_map['%s'] is not a string",
                              e->string);
            goto done;
        }
        if (!mpk_shard_name_safe(e->valuestring)) {
            s = mpk_error_set(err, MPK_E_INDEX_PATH, 0, where,
                              "weight_map['%s'] = '%s': shard names must be plain file names "
                              "inside the checkpoint directory",
                              e->string, e->valuestring);
            goto done;
        }
        names[i] = mpk_arena_strndup(a, e->string, strlen(e->string));
        files[i] = mpk_arena_strndup(a, e->valuestring, strlen(e->valuestring));
        if (!names[i] || !files[i]) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
            goto done;
        }
        if (mpk_strmap_put(&seen, names[i], strlen(names[i]), i, NULL)) {
            s = mpk_error_set(err, MPK_E_INDEX, 0, where, "weight_map lists '%s' twice", names[i]);
            goto done;
        }
    }
    *names_out = names;
    *files_out = files;
    *n_out = n;
done:
    mpk_strmap_free(&seen);
    mpk_json_free(j);
    if (s != MPK_OK)
        mpk_arena_free(a);
    else
        *arena_out = a;
    return s;
}

/* ---------------------------------------------------------------- index writer */

typedef struct {
    const char *name, *file;
} pair;

static int cmp_pair(const void *a, const void *b)
{
    return strcmp(((const pair *)a)->name, ((const pair *)b)->name);
}

/* Appends s as a JSON string the way Python's json.dumps(ensure_ascii=True) does. */
static size_t py_json_string(char *out, const char *s)
{
    size_t o = 0;
    out[o++] = '"';
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        }
        if (esc) {
            o += (size_t)sprintf(out + o, "%s", esc);
            p++;
            continue;
        }
        if (c < 0x20) {
            o += (size_t)sprintf(out + o, "\\u%04x", c);
            p++;
            continue;
        }
        if (c < 0x80) {
            out[o++] = (char)c;
            p++;
            continue;
        }
        /* decode one UTF-8 sequence (input validated by the parser) */
        unsigned cp, n = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
        cp = c & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
        for (unsigned k = 1; k < n && p[k]; k++)
            cp = (cp << 6) | (p[k] & 0x3F);
        p += n;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            o += (size_t)sprintf(out + o, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
        } else {
            o += (size_t)sprintf(out + o, "\\u%04x", cp);
        }
    }
    out[o++] = '"';
    out[o] = 0;
    return o;
}

char *mpk_index_format(const char *const *names, const char *const *files, size_t n,
                       uint64_t total_size)
{
    pair *ps = mpk_calloc(n ? n : 1, sizeof *ps);
    if (!ps)
        return NULL;
    size_t cap = 128;
    for (size_t i = 0; i < n; i++) {
        ps[i] = (pair){names[i], files[i]};
        cap += 12 * (strlen(names[i]) + strlen(files[i])) + 16;
    }
    qsort(ps, n, sizeof *ps, cmp_pair);
    char *out = mpk_alloc(cap);
    if (!out) {
        free(ps);
        return NULL;
    }
    size_t o = (size_t)sprintf(out, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n"
                                    "  \"weight_map\": {",
                               (unsigned long long)total_size);
    for (size_t i = 0; i < n; i++) {
        o += (size_t)sprintf(out + o, "%s\n    ", i ? "," : "");
        o += py_json_string(out + o, ps[i].name);
        o += (size_t)sprintf(out + o, ": ");
        o += py_json_string(out + o, ps[i].file);
    }
    sprintf(out + o, "%s}\n}\n", n ? "\n  " : "");
    free(ps);
    return out;
}

mpk_status mpk_index_write(const char *dir, const char *const *names, const char *const *files,
                           size_t n, uint64_t total_size, bool sync, mpk_error *err)
{
    return mpk_write_text_in(dir, INDEX_NAME, mpk_index_format(names, files, n, total_size), sync, err);
}

void mpk_shard_name(size_t i, size_t count, char *buf, size_t cap)
{
    if (count <= 1)
        snprintf(buf, cap, SINGLE_NAME);
    else
        snprintf(buf, cap, "model-%05zu-of-%05zu.safetensors", i, count);
}

