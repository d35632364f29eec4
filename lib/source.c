/* source.c — the public API's front: the source release, kept so that sharing is exact.
 *
 * pack records, in the packed checkpoint, what it needs to write the source files back byte
 * for byte: every source shard's file name, size and header bytes, and the index file's bytes.
 * The record is moepack.source.zst: one zstd frame (content size in its header) of the JSON
 * document
 *   {"format": "moepack.source/1",
 *    "index": {"file": NAME, "text": TEXT} | null,
 *    "files": [{"file": NAME, "size": BYTES, "header": TEXT}, ...],
 *    "config": TEXT (config.json, when the release has one),
 *    "packed_config": {"xxh3_128": HEX, "rewritten": BOOL} (with "config": the XXH3-128 of the
 *                     config.json pack wrote beside the packed shards, and whether pack rewrote
 *                     it (a quantization change: quantization_config) or copied it)}
 * where a file's header TEXT is the N bytes after its 8-byte length prefix (UTF-8 JSON with
 * its padding, as the strict parser accepted it) and the index TEXT is the index file whole.
 * unpack of a checkpoint holding a record writes those files with those names and headers,
 * every tensor at its recorded offset (when the conversion makes exactly the recorded
 * tensors; else moepack's own layout, said as a warning). convert carries the record along.
 *
 * config.json: unpack writes the recorded one back only when the packed config.json is the
 * one pack wrote (its digest matches "packed_config"); one edited since is written as edited,
 * pack's rewrite of quantization_config undone, and said (config_note). A record without
 * "packed_config" (older moepack) keeps the recorded one, said when the packed config.json
 * differs from it beyond quantization_config.
 *
 * A record is read under limits, so that a small hostile file cannot take the memory: its
 * decompressed size (declared in the frame, checked before anything is allocated) at most what
 * a record of the checkpoint's files can need (record_limit), its JSON at most
 * RECORD_MAX_FILES file entries and 3 levels deep before cJSON builds a tree of it, its index
 * text at most the tokens of one entry per recorded tensor.
 *
 * --layout-like INDEX follows an index (names and tensor-to-file assignment) without headers:
 * the files are written the way the reference writer writes them. */
#define _GNU_SOURCE
#include "lib_internal.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#define SOURCE_FORMAT "moepack.source/1"
/* Decompressed size: far above the largest release's record (a 91k-tensor per-expert release
 * records ~25 MB of headers and index), checked before allocating. */
#define MAX_RECORD (256ull << 20)
/* What a record may need per byte of the packed checkpoint's headers, index and config.json
 * (its per-expert tensors are up to 2E entries per packed one), over a base for small ones. */
#define RECORD_PER_BYTE 4096ull
#define RECORD_BASE (16ull << 20)
/* File entries of a record (releases have hundreds of shards), and so its JSON tokens. */
#define RECORD_MAX_FILES 65536
#define RECORD_MAX_TOKENS (64 + 8 * (size_t)RECORD_MAX_FILES)
#define RECORD_MAX_DEPTH 3

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

/* The record's JSON text (malloc'd into *out), without "packed_config"; config (when not NULL):
 * the source's config.json text (malloc'd) or NULL when it has none. */
static mpk_status source_json(const mpk_ckpt *c, char **out, char **config, mpk_error *err)
{
    *out = NULL;
    if (config)
        *config = NULL;
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
    char *json = s == MPK_OK ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (s != MPK_OK || !json) {
        free(ctext);
        if (s != MPK_OK)
            return s;
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "out of memory");
    }
    if (config)
        *config = ctext;
    else
        free(ctext);
    *out = json;
    return MPK_OK;
}

mpk_status mpk_source_digest(const mpk_ckpt *c, mpk_hash128 *out, mpk_error *err)
{
    char *json;
    MPK_TRY(source_json(c, &json, NULL, err));
    XXH128_hash_t h = XXH3_128bits(json, strlen(json));
    free(json);
    *out = (mpk_hash128){h.high64, h.low64};
    return MPK_OK;
}

/* json with "packed_config" added (the digest of the config.json pack writes: packed_config,
 * or config, the source's, when pack copies it), in *out; nothing when there is no config. */
static mpk_status add_packed_config(const mpk_ckpt *c, char *json, const char *config, const char *packed_config,
                                    char **out, mpk_error *err)
{
    *out = json;
    if (!config)
        return MPK_OK;
    const char *text = packed_config ? packed_config : config;
    XXH128_hash_t h = XXH3_128bits(text, strlen(text));
    char hx[33], tail[128];
    int tl = snprintf(tail, sizeof tail, ",\"packed_config\":{\"xxh3_128\":\"%s\",\"rewritten\":%s}}",
                      mpk_hash_hex((mpk_hash128){h.high64, h.low64}, hx),
                      packed_config && strcmp(packed_config, config) ? "true" : "false");
    size_t jl = strlen(json); /* ends in the root object's '}' */
    char *with = mpk_alloc(jl + (size_t)tl);
    if (!with)
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "out of memory");
    memcpy(with, json, jl - 1);
    memcpy(with + jl - 1, tail, (size_t)tl + 1);
    free(json);
    *out = with;
    return MPK_OK;
}

mpk_status mpk_source_record(const mpk_ckpt *c, const char *packed_config, char **out, size_t *out_len,
                             mpk_hash128 *digest, mpk_error *err)
{
    char *json;
    *out = NULL;
    char *config;
    MPK_TRY(source_json(c, &json, &config, err));
    XXH128_hash_t h = XXH3_128bits(json, strlen(json)); /* mpk_source_digest's, from the same text */
    *digest = (mpk_hash128){h.high64, h.low64};
    mpk_status s = add_packed_config(c, json, config, packed_config, &json, err);
    free(config);
    if (s != MPK_OK) {
        free(json);
        return s;
    }
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

/* Bytes of the checkpoint in dir a record of its source can need: RECORD_BASE + RECORD_PER_BYTE
 * per byte of its shards' headers (each NAME.safetensors's 8-byte length prefix; a compressed
 * shard's is not read: MAX_RECORD then), its index and its config.json, at most MAX_RECORD. */
static uint64_t record_limit(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return MAX_RECORD;
    uint64_t bytes = 0;
    bool whole = false;
    for (struct dirent *e; !whole && (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        bool st_file = l > 12 && strcmp(e->d_name + l - 12, ".safetensors") == 0;
        whole = l > 17 && strcmp(e->d_name + l - 17, ".safetensors.mpkz") == 0;
        if (!st_file && strcmp(e->d_name, MPK_INDEX_NAME) != 0 && strcmp(e->d_name, "config.json") != 0)
            continue;
        char *p = mpk_path_join(dir, e->d_name);
        struct stat st;
        int fd = p ? open(p, O_RDONLY | O_NONBLOCK | O_CLOEXEC) : -1;
        free(p);
        if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            whole = true; /* cannot tell: the absolute cap */
        } else if (!st_file) {
            bytes += (uint64_t)st.st_size;
        } else {
            unsigned char b[8];
            uint64_t n = 0;
            if (pread(fd, b, 8, 0) == 8)
                for (int i = 0; i < 8; i++)
                    n |= (uint64_t)b[i] << (8 * i);
            bytes += n < (uint64_t)st.st_size ? n : (uint64_t)st.st_size;
        }
        if (fd >= 0)
            close(fd);
        whole |= bytes > MAX_RECORD / RECORD_PER_BYTE;
    }
    closedir(d);
    return whole ? MAX_RECORD : RECORD_BASE + RECORD_PER_BYTE * bytes < MAX_RECORD ? RECORD_BASE + RECORD_PER_BYTE * bytes
                                                                                   : MAX_RECORD;
}

/* The frame(s) decompressed, every frame's content size declared and their sum at most limit,
 * checked before allocating: the output buffer is that size, so zstd cannot write more. */
static mpk_status decompress(const char *path, const char *z, size_t zl, uint64_t limit, char **out, size_t *len,
                             mpk_error *err)
{
    unsigned long long n = 0;
    for (size_t at = 0; (at < zl || at == 0) && n <= limit;) { /* every frame's declared size, summed */
        unsigned long long f = ZSTD_getFrameContentSize(z + at, zl - at);
        size_t fl = ZSTD_findFrameCompressedSize(z + at, zl - at);
        if (f == ZSTD_CONTENTSIZE_ERROR || f == ZSTD_CONTENTSIZE_UNKNOWN || ZSTD_isError(fl))
            BAD("not a zstd frame with its content size");
        n += f < limit ? f : limit + 1; /* (no overflow: each term at most limit + 1) */
        at += fl;
    }
    if (n > limit)
        BAD("declares %llu bytes decompressed, more than a source record of this checkpoint can need (limit %llu "
            "bytes, from the size of its headers, index and config.json; at most %llu): refused unread",
            n, (unsigned long long)limit, MAX_RECORD);
    char *t = mpk_alloc((size_t)n + 1);
    if (!t)
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    size_t got = dc ? ZSTD_decompressDCtx(dc, t, (size_t)n, z, zl) : 0;
    ZSTD_freeDCtx(dc);
    if (!dc) {
        free(t);
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    }
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
    /* its tree bounded before cJSON builds it: a key and a value per recorded tensor, and metadata */
    size_t tokens = mpk_json_count_tokens(l->index_text, l->index_len, NULL), most = 2 * recorded + 1024;
    if (tokens > most)
        return mpk_error_set(err, MPK_E_MANIFEST, 0, where, "holds %zu JSON values, more than an index of the %zu "
                             "recorded tensors holds (limit %zu): refused before parsing", tokens, recorded, most);
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

/* text parsed as JSON object (code and what name it in messages), its tree in *out. */
static mpk_status parse_object(const char *text, size_t len, mpk_status code, const char *where, const char *what,
                               cJSON **out, mpk_error *err)
{
    mpk_json *j;
    MPK_TRY(mpk_json_parse(text, len, code, where, what, &j, err));
    if (!cJSON_IsObject(j->root)) {
        mpk_json_free(j);
        return mpk_error_set(err, code, 0, where, "%s is not a JSON object", what);
    }
    *out = mpk_json_take(j);
    return MPK_OK;
}

/* The recorded config.json and the packed one (cpath's text), parsed, quantization_config kept
 * in *rec_qc (a copy, or NULL) and removed from both. */
static mpk_status both_configs(const mpk_layout *l, const char *text, size_t len, const char *cpath, const char *path,
                               cJSON **rec, cJSON **packed, cJSON **rec_qc, mpk_error *err)
{
    *rec = *packed = *rec_qc = NULL;
    size_t rl = strlen(l->config_text), pt = mpk_json_count_tokens(text, len, NULL);
    size_t rt = mpk_json_count_tokens(l->config_text, rl, NULL), most = 2 * pt + 1024;
    if (rt > most) /* pack's rewrite changes quantization_config alone */
        BAD("the recorded config.json holds %zu JSON tokens, more than pack could have made of %s's %zu (limit %zu)",
            rt, cpath, pt, most);
    MPK_TRY(parse_object(text, len, MPK_E_CONFIG, cpath, "config.json", packed, err));
    char where[600];
    snprintf(where, sizeof where, "%s: recorded config.json", path);
    mpk_status s = parse_object(l->config_text, rl, MPK_E_MANIFEST, where, "the recorded config.json", rec, err);
    const cJSON *qc = s == MPK_OK ? cJSON_GetObjectItemCaseSensitive(*rec, "quantization_config") : NULL;
    if (qc && !(*rec_qc = cJSON_Duplicate(qc, 1)))
        s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
    if (s != MPK_OK) {
        cJSON_Delete(*packed);
        cJSON_Delete(*rec);
        *packed = *rec = NULL;
        return s;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(*rec, "quantization_config");
    cJSON_DeleteItemFromObjectCaseSensitive(*packed, "quantization_config");
    return MPK_OK;
}

#define NOTE(...) (snprintf(note, sizeof note, __VA_ARGS__), l->config_note = mpk_arena_strndup(l->arena, note, strlen(note)))

/* Which config.json unpack writes (the module comment says): l->config_text, l->config_note. */
static mpk_status config_choice(const char *dir, const cJSON *root, mpk_layout *l, const char *path, mpk_error *err)
{
    if (!l->config_text)
        return MPK_OK;
    const cJSON *pc = cJSON_GetObjectItemCaseSensitive(root, "packed_config");
    const cJSON *hx = cJSON_GetObjectItemCaseSensitive(pc, "xxh3_128"), *rw = cJSON_GetObjectItemCaseSensitive(pc, "rewritten");
    if (pc && (!cJSON_IsString(hx) || strlen(hx->valuestring) != 32 || !cJSON_IsBool(rw)))
        BAD("\"packed_config\" needs an \"xxh3_128\" (32 hex digits) and \"rewritten\" (true or false)");
    char *cpath = mpk_path_join(dir, "config.json"), *text = NULL, note[1400];
    size_t len = 0;
    if (!cpath)
        MPK_FAIL(err, MPK_E_NOMEM, dir, "out of memory");
    mpk_status s = MPK_OK;
    cJSON *rec = NULL, *packed = NULL, *rec_qc = NULL;
    char *edited = NULL;
    if (access(cpath, F_OK) != 0) {
        NOTE("%s is not there: the config.json recorded in %s is written", cpath, path);
    } else if ((s = mpk_read_file(cpath, &text, &len, err)) != MPK_OK) {
        /* said */
    } else if (pc) {
        char now[33];
        XXH128_hash_t h = XXH3_128bits(text, len);
        mpk_hash_hex((mpk_hash128){h.high64, h.low64}, now);
        if (strcmp(now, hx->valuestring) == 0) {
            /* the one pack wrote: the recorded one goes back */
        } else if (!cJSON_IsTrue(rw)) { /* pack copied it: the edit is the file */
            if (strlen(text) != len)
                s = mpk_error_set(err, MPK_E_CONFIG, 0, cpath, "holds a NUL byte");
            else
                edited = text, text = NULL;
        } else if ((s = both_configs(l, text, len, cpath, path, &rec, &packed, &rec_qc, err)) == MPK_OK) {
            if (rec_qc) /* pack rewrote quantization_config: the source's goes back */
                cJSON_AddItemToObject(packed, "quantization_config", rec_qc), rec_qc = NULL;
            if (!(edited = mpk_json_print(packed, true)))
                s = mpk_error_set(err, MPK_E_NOMEM, 0, cpath, "out of memory");
        }
        if (s == MPK_OK && edited) {
            if (!(l->config_text = mpk_arena_strndup(l->arena, edited, strlen(edited))))
                s = mpk_error_set(err, MPK_E_NOMEM, 0, cpath, "out of memory");
            else
                NOTE("%s changed since pack (its XXH3-128 is not the one recorded in %s): it is written as edited%s, "
                     "not the recorded one", cpath, path,
                     cJSON_IsTrue(rw) ? ", with pack's own change to quantization_config undone" : "");
        }
    } else if ((s = both_configs(l, text, len, cpath, path, &rec, &packed, &rec_qc, err)) == MPK_OK &&
               !cJSON_Compare(rec, packed, true)) {
        NOTE("%s differs from the config.json recorded in %s, which an older moepack wrote without the digest that "
             "tells an edit from pack's own rewrite: the recorded one is written; to keep the edit, copy %s over "
             "DST's config.json", cpath, path, cpath);
    }
    cJSON_Delete(rec);
    cJSON_Delete(packed);
    cJSON_Delete(rec_qc);
    free(edited);
    free(text);
    free(cpath);
    return s;
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
    if (s == MPK_OK)
        s = decompress(path, z, zl, record_limit(dir), &text, &tl, err);
    free(z);
    if (s == MPK_OK) { /* cJSON makes ~40 bytes of tiny elements' each byte: its shape first */
        int depth;
        size_t tokens = mpk_json_count_tokens(text, tl, &depth);
        if (depth > RECORD_MAX_DEPTH)
            s = mpk_error_set(err, MPK_E_MANIFEST, 0, path, "nests arrays and objects %d deep, a source record %d: "
                              "refused before parsing", depth, RECORD_MAX_DEPTH);
        else if (tokens > RECORD_MAX_TOKENS)
            s = mpk_error_set(err, MPK_E_MANIFEST, 0, path, "holds %zu JSON values, more than a source record of at "
                              "most %d files holds (limit %zu): refused before parsing", tokens, RECORD_MAX_FILES,
                              RECORD_MAX_TOKENS);
    }
    if (s == MPK_OK && (s = mpk_json_parse(text, tl, MPK_E_MANIFEST, path, "the source record", &j, err)) == MPK_OK) {
        free(text); /* the tree holds its strings */
        text = NULL;
        s = record_layout(j->root, path, out, err);
        if (s == MPK_OK && (s = config_choice(dir, j->root, *out, path, err)) != MPK_OK) {
            mpk_layout_free(*out);
            *out = NULL;
        }
    }
    mpk_json_free(j);
    free(text);
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
