/* source.c — the source release, kept so that sharing is exact.
 *
 * pack records, in the packed checkpoint, what it needs to write the source files back byte
 * for byte: every source shard's file name, size and header bytes, and the index file's bytes.
 * The record is moepack.source.zst: one zstd frame (content size in its header) of the JSON
 * document
 *   {"format": "moepack.source/1",
 *    "index": {"file": NAME, "text": TEXT} | null,
 *    "files": [{"file": NAME, "size": BYTES, "header": TEXT}, ...],
 *    "config": TEXT (config.json, when the release has one)}
 * where a file's header TEXT is the N bytes after its 8-byte length prefix (UTF-8 JSON with
 * its padding, as the strict parser accepted it) and the index TEXT is the index file whole.
 * unpack of a checkpoint holding a record writes those files with those names and headers,
 * every tensor at its recorded offset (when the conversion makes exactly the recorded
 * tensors; else moepack's own layout, said as a warning). convert carries the record along.
 *
 * --layout-like INDEX follows an index (names and tensor-to-file assignment) without headers:
 * the files are written the way the reference writer writes them. */
#define _GNU_SOURCE
#include "lib_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#define SOURCE_FORMAT "moepack.source/1"
#define MAX_RECORD (1ull << 30) /* decompressed; checked before allocating */

/* ---------------------------------------------------------------- writing the record */

static mpk_status add_file(cJSON *files, const mpk_shard *sh, mpk_error *err)
{
    uint64_t n = sh->header->header_len;
    char *text = mpk_alloc(n + 1);
    if (!text)
        MPK_FAIL(err, MPK_E_NOMEM, sh->path, "out of memory");
    mpk_status s = MPK_OK;
    if (sh->z) /* a compressed shard keeps the original header bytes */
        memcpy(text, mpk_mpkz_header_bytes(sh->z) + 8, n);
    else
        s = mpk_pread_all(sh->fd, text, n, 8, sh->path, "(header)", err);
    text[n] = 0;
    cJSON *f = s == MPK_OK ? cJSON_CreateObject() : NULL;
    bool ok = f && cJSON_AddStringToObject(f, "file", sh->name) &&
              cJSON_AddNumberToObject(f, "size", (double)sh->file_size) && cJSON_AddStringToObject(f, "header", text);
    free(text);
    if (s != MPK_OK || !ok || !cJSON_AddItemToArray(files, f)) {
        if (!ok)
            cJSON_Delete(f);
        return s != MPK_OK ? s : mpk_error_set(err, MPK_E_NOMEM, 0, sh->path, "out of memory");
    }
    return MPK_OK;
}

/* The record's JSON text (malloc'd into *out). */
static mpk_status source_json(const mpk_ckpt *c, char **out, mpk_error *err)
{
    *out = NULL;
    cJSON *root = cJSON_CreateObject(), *files = cJSON_CreateArray();
    if (!root || !files || !cJSON_AddStringToObject(root, "format", SOURCE_FORMAT) ||
        !cJSON_AddItemToObject(root, "files", files)) { /* a record without its files: none at all */
        cJSON_Delete(root);
        cJSON_Delete(files);
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "out of memory");
    }
    mpk_status s = MPK_OK;
    for (size_t i = 0; i < c->n_shards && s == MPK_OK; i++) {
        const char *why = mpk_layout_name_taken(c->shards[i].name, c->has_index ? MPK_INDEX_NAME : NULL);
        if (why)
            s = mpk_error_set(err, MPK_E_INDEX, 0, c->shards[i].path, "a shard named '%s' could not be written back by "
                              "unpack: %s", c->shards[i].name, why);
        else
            s = add_file(files, &c->shards[i], err);
    }
    char *index = NULL;
    size_t ilen = 0;
    if (s == MPK_OK && c->has_index) {
        char *p = mpk_path_join(c->dir, MPK_INDEX_NAME);
        s = p ? mpk_read_file(p, &index, &ilen, err) : mpk_error_set(err, MPK_E_NOMEM, 0, c->dir, "out of memory");
        free(p);
        cJSON *ix = s == MPK_OK ? cJSON_AddObjectToObject(root, "index") : NULL;
        if (s == MPK_OK && (!ix || !cJSON_AddStringToObject(ix, "file", MPK_INDEX_NAME) ||
                            !cJSON_AddStringToObject(ix, "text", index)))
            s = mpk_error_set(err, MPK_E_NOMEM, 0, c->dir, "out of memory");
    } else if (s == MPK_OK) {
        cJSON_AddNullToObject(root, "index");
    }
    free(index);
    /* config.json too: pack may rewrite it (a quantization change), unpack gives it back */
    char *cpath = s == MPK_OK && c->is_dir ? mpk_path_join(c->dir, "config.json") : NULL, *ctext = NULL;
    size_t clen;
    if (cpath && access(cpath, F_OK) == 0 && (s = mpk_read_file(cpath, &ctext, &clen, err)) == MPK_OK &&
        (strlen(ctext) != clen || !cJSON_AddStringToObject(root, "config", ctext)))
        s = strlen(ctext) != clen ? mpk_error_set(err, MPK_E_CONFIG, 0, cpath, "holds a NUL byte")
                                  : mpk_error_set(err, MPK_E_NOMEM, 0, cpath, "out of memory");
    free(cpath);
    free(ctext);
    char *json = s == MPK_OK ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (s != MPK_OK)
        return s;
    if (!json)
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "out of memory");
    *out = json;
    return MPK_OK;
}

mpk_status mpk_source_digest(const mpk_ckpt *c, mpk_hash128 *out, mpk_error *err)
{
    char *json;
    MPK_TRY(source_json(c, &json, err));
    XXH128_hash_t h = XXH3_128bits(json, strlen(json));
    free(json);
    *out = (mpk_hash128){h.high64, h.low64};
    return MPK_OK;
}

mpk_status mpk_source_record(const mpk_ckpt *c, char **out, size_t *out_len, mpk_hash128 *digest, mpk_error *err)
{
    char *json;
    *out = NULL;
    MPK_TRY(source_json(c, &json, err));
    XXH128_hash_t h = XXH3_128bits(json, strlen(json)); /* mpk_source_digest's, from the same text */
    *digest = (mpk_hash128){h.high64, h.low64};
    size_t jl = strlen(json), cap = ZSTD_compressBound(jl);
    char *z = mpk_alloc(cap);
    size_t zl = z ? ZSTD_compress(z, cap, json, jl, 3) : 0;
    free(json);
    if (!z || ZSTD_isError(zl)) {
        free(z);
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "cannot compress the source record%s", z ? "" : ": out of memory");
    }
    *out = z;
    *out_len = zl;
    return MPK_OK;
}

/* ---------------------------------------------------------------- reading it */

#define BAD(...) return mpk_error_set(err, MPK_E_MANIFEST, 0, path, __VA_ARGS__)

static mpk_status decompress(const char *path, const char *z, size_t zl, char **out, size_t *len, mpk_error *err)
{
    unsigned long long n = ZSTD_getFrameContentSize(z, zl);
    if (n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN)
        BAD("not a zstd frame with its content size");
    if (n > MAX_RECORD)
        BAD("declares %llu bytes, more than a source record holds (%llu)", n, MAX_RECORD);
    char *t = mpk_alloc((size_t)n + 1);
    if (!t)
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    size_t got = ZSTD_decompress(t, (size_t)n, z, zl);
    if (ZSTD_isError(got) || got != n) {
        free(t);
        BAD("corrupt zstd frame (%s)", ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short");
    }
    t[n] = 0;
    *out = t;
    *len = (size_t)n;
    return MPK_OK;
}

static mpk_layout *layout_new(size_t n)
{
    mpk_layout *l = mpk_calloc(1, sizeof *l);
    if (!l || !(l->arena = mpk_arena_new())) {
        free(l);
        return NULL;
    }
    l->n_files = n;
    l->files = mpk_arena_alloc(l->arena, (n + 1) * sizeof *l->files);
    l->headers = mpk_arena_alloc(l->arena, (n + 1) * sizeof *l->headers);
    l->header_len = mpk_arena_alloc(l->arena, (n + 1) * sizeof *l->header_len);
    l->parsed = mpk_calloc(n + 1, sizeof *l->parsed);
    if (!l->files || !l->headers || !l->header_len || !l->parsed || mpk_strmap_init(&l->file_of, 64) != MPK_OK) {
        mpk_layout_free(l);
        return NULL;
    }
    return l;
}

/* File f of the record: its name, its header (prefix rebuilt from N), parsed. */
static mpk_status record_file(mpk_layout *l, size_t f, const cJSON *e, const char *path, mpk_error *err)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "file"), *hd = cJSON_GetObjectItemCaseSensitive(e, "header");
    long long size;
    if (!cJSON_IsString(name) || !mpk_shard_name_safe(name->valuestring) || !cJSON_IsString(hd) ||
        !mpk_json_num_in(cJSON_GetObjectItemCaseSensitive(e, "size"), 8, 9007199254740992.0, &size))
        BAD("files[%zu] needs a plain \"file\" name, a \"size\" and a \"header\"", f);
    size_t n = strlen(hd->valuestring);
    char *h = mpk_arena_alloc(l->arena, n + 8);
    if (!h || !(l->files[f] = mpk_arena_strndup(l->arena, name->valuestring, strlen(name->valuestring))))
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    for (int i = 0; i < 8; i++)
        h[i] = (char)(((uint64_t)n >> (8 * i)) & 0xFF);
    memcpy(h + 8, hd->valuestring, n);
    l->headers[f] = h;
    l->header_len[f] = n + 8;
    char where[600];
    snprintf(where, sizeof where, "%s: recorded header of %s", path, l->files[f]);
    MPK_TRY(mpk_st_parse_header(h + 8, n, (uint64_t)size, where, &l->parsed[f], err));
    for (size_t k = 0; k < l->parsed[f]->n_tensors; k++) {
        const char *t = l->parsed[f]->tensors[k].name;
        if (mpk_strmap_put(&l->file_of, t, strlen(t), f, NULL))
            BAD("tensor '%s' is recorded in two files", t);
    }
    return MPK_OK;
}

/* The recorded index text, parsed: every tensor in the file whose recorded header holds it,
 * and every recorded tensor listed (else unpack would write a release whose index does not
 * match its files). */
static mpk_status record_index_agrees(const mpk_layout *l, const char *path, mpk_error *err)
{
    char where[600];
    snprintf(where, sizeof where, "%s: recorded index %s", path, l->index_name);
    mpk_arena *a;
    const char **names, **files;
    size_t n, recorded = l->file_of.count; /* (each recorded tensor once: record_file checks) */
    uint64_t total;
    MPK_TRY(mpk_index_parse(l->index_text, l->index_len, where, &a, &names, &files, &n, &total, err));
    mpk_status s = MPK_OK;
    for (size_t i = 0; i < n && s == MPK_OK; i++) {
        size_t f;
        if (!mpk_strmap_get(&l->file_of, names[i], strlen(names[i]), &f))
            s = mpk_error_set(err, MPK_E_MANIFEST, 0, where, "lists tensor '%s', which no recorded file holds", names[i]);
        else if (strcmp(files[i], l->files[f]) != 0)
            s = mpk_error_set(err, MPK_E_MANIFEST, 0, where, "puts tensor '%s' in %s, its recorded file is %s", names[i],
                              files[i], l->files[f]);
    }
    if (s == MPK_OK && n != recorded)
        s = mpk_error_set(err, MPK_E_MANIFEST, 0, where, "lists %zu tensors, the recorded files hold %zu", n, recorded);
    mpk_arena_free(a);
    return s;
}

static mpk_status record_layout(const cJSON *root, const char *path, mpk_layout **out, mpk_error *err)
{
    const cJSON *fm = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files");
    const cJSON *ix = cJSON_GetObjectItemCaseSensitive(root, "index");
    if (!cJSON_IsString(fm) || strcmp(fm->valuestring, SOURCE_FORMAT) != 0)
        BAD("not a source record this version reads (want \"format\": \"" SOURCE_FORMAT "\")");
    if (!cJSON_IsArray(files) || cJSON_GetArraySize(files) < 1 || !(cJSON_IsNull(ix) || cJSON_IsObject(ix)))
        BAD("needs a non-empty \"files\" array and an \"index\" object or null");
    mpk_layout *l = layout_new((size_t)cJSON_GetArraySize(files));
    if (!l)
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    mpk_status s = MPK_OK;
    size_t f = 0;
    for (const cJSON *e = files->child; e && s == MPK_OK; e = e->next, f++)
        s = record_file(l, f, e, path, err);
    if (s == MPK_OK && cJSON_IsObject(ix)) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(ix, "file"), *text = cJSON_GetObjectItemCaseSensitive(ix, "text");
        if (!cJSON_IsString(name) || !mpk_shard_name_safe(name->valuestring) || !cJSON_IsString(text))
            s = mpk_error_set(err, MPK_E_MANIFEST, 0, path, "\"index\" needs a plain \"file\" name and a \"text\"");
        else if (!(l->index_name = mpk_arena_strndup(l->arena, name->valuestring, strlen(name->valuestring))) ||
                 !(l->index_text = mpk_arena_strndup(l->arena, text->valuestring, strlen(text->valuestring))))
            s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
        l->index_len = l->index_text ? strlen(l->index_text) : 0;
    }
    const cJSON *cf = cJSON_GetObjectItemCaseSensitive(root, "config");
    if (s == MPK_OK && cf && !cJSON_IsString(cf))
        s = mpk_error_set(err, MPK_E_MANIFEST, 0, path, "\"config\" must be the text of config.json");
    else if (s == MPK_OK && cf && !(l->config_text = mpk_arena_strndup(l->arena, cf->valuestring, strlen(cf->valuestring))))
        s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
    if (s == MPK_OK)
        s = mpk_layout_check_names(l, MPK_E_MANIFEST, path, err);
    if (s == MPK_OK && l->index_text)
        s = record_index_agrees(l, path, err);
    if (s != MPK_OK) {
        mpk_layout_free(l);
        return s;
    }
    *out = l;
    return MPK_OK;
}

mpk_status mpk_source_load(const char *dir, mpk_layout **out, mpk_error *err)
{
    *out = NULL;
    char *path = mpk_path_join(dir, MPK_SOURCE_NAME), *z = NULL, *text = NULL;
    size_t zl = 0, tl = 0;
    if (!path)
        MPK_FAIL(err, MPK_E_NOMEM, dir, "out of memory");
    mpk_json *j = NULL;
    mpk_status s = mpk_read_file(path, &z, &zl, err);
    if (s == MPK_OK && (s = decompress(path, z, zl, &text, &tl, err)) == MPK_OK &&
        (s = mpk_json_parse(text, tl, MPK_E_MANIFEST, path, "the source record", &j, err)) == MPK_OK)
        s = record_layout(j->root, path, out, err);
    mpk_json_free(j);
    free(text);
    free(z);
    free(path);
    return s;
}

/* ---------------------------------------------------------------- --layout-like */

mpk_status mpk_layout_from_index(const char *path, mpk_layout **out, mpk_error *err)
{
    *out = NULL;
    char *text;
    size_t len, n;
    MPK_TRY(mpk_read_file(path, &text, &len, err));
    mpk_arena *a = NULL;
    const char **names, **files;
    uint64_t total;
    mpk_status s = mpk_index_parse(text, len, path, &a, &names, &files, &n, &total, err);
    free(text);
    MPK_TRY(s);
    mpk_strmap idx = {0};
    mpk_layout *l = layout_new(n);
    if (!l || mpk_strmap_init(&idx, 16) != MPK_OK) {
        mpk_layout_free(l);
        mpk_arena_free(a);
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    }
    size_t nf = 0;
    for (size_t i = 0; i < n && s == MPK_OK; i++) {
        size_t f;
        if (!mpk_strmap_get(&idx, files[i], strlen(files[i]), &f)) {
            f = nf++;
            l->files[f] = mpk_arena_strndup(l->arena, files[i], strlen(files[i]));
            mpk_strmap_put(&idx, l->files[f], strlen(l->files[f]), f, NULL);
        }
        const char *t = mpk_arena_strndup(l->arena, names[i], strlen(names[i]));
        if (!t || !l->files[f])
            s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
        else
            mpk_strmap_put(&l->file_of, t, strlen(t), f, NULL);
    }
    l->n_files = nf;
    l->index_name = MPK_INDEX_NAME;
    mpk_strmap_free(&idx);
    mpk_arena_free(a);
    if (s == MPK_OK && !nf)
        s = mpk_error_set(err, MPK_E_INDEX, 0, path, "the index lists no tensors");
    if (s == MPK_OK)
        s = mpk_layout_check_names(l, MPK_E_INDEX, path, err);
    if (s != MPK_OK) {
        mpk_layout_free(l);
        return s;
    }
    *out = l;
    return MPK_OK;
}
