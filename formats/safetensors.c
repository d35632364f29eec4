/* safetensors.c — the strict safetensors parser (the writer: st_write.c). */
#define _GNU_SOURCE
#include "formats_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


bool mpk_utf8_valid(const unsigned char *s, size_t n, size_t *bad_at)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, min = 0x80, c &= 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, min = 0x800, c &= 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, min = 0x10000, c &= 0x07;
        } else {
            goto bad;
        }
        if (n - i < len)
            goto bad;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                goto bad;
            c = (c << 6) | (s[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            goto bad;
        i += len;
    }
    return true;
bad:
    if (bad_at)
        *bad_at = i;
    return false;
}

static bool json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Reads a non-negative integer out of a JSON number: a plain integer literal, exact to 2^64-1
 * (the reference reads usize). */
static mpk_status json_uint(const mpk_json *j, const cJSON *v, const char *where,
                            const char *tensor, const char *field, uint64_t *out, mpk_error *err)
{
    if (!cJSON_IsNumber(v))
        MPK_FAIL(err, MPK_E_FIELD_TYPE, where, "tensor '%s': %s must hold numbers", tensor, field);
    const char *why = mpk_json_uint(j, v, out);
    if (why)
        MPK_FAIL(err, MPK_E_NUMBER, where, "tensor '%s': a value of %s %s", tensor, field, why);
    return MPK_OK;
}

static mpk_status parse_tensor(const mpk_json *j, const cJSON *item, const char *where,
                               mpk_arena *arena, mpk_tensor_info *t, mpk_error *err)
{
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        MPK_FAIL(err, MPK_E_HEADER_NOT_OBJECT, where, "tensor '%s': entry is not an object", name);
    t->name = mpk_arena_strndup(arena, name, strlen(name));
    if (!t->name)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *f = item->child; f; f = f->next) {
        const cJSON **slot = NULL;
        if (strcmp(f->string, "dtype") == 0)
            slot = &dtype;
        else if (strcmp(f->string, "shape") == 0)
            slot = &shape;
        else if (strcmp(f->string, "data_offsets") == 0)
            slot = &offs;
        else
            continue; /* the reference ignores unknown fields */
        if (*slot)
            MPK_FAIL(err, MPK_E_FIELD_TYPE, where, "tensor '%s': field '%s' appears twice", name,
                     f->string);
        *slot = f;
    }
    if (!dtype || !shape || !offs)
        MPK_FAIL(err, MPK_E_FIELD_MISSING, where, "tensor '%s': missing field '%s'", name,
                 !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
    if (!cJSON_IsString(dtype))
        MPK_FAIL(err, MPK_E_FIELD_TYPE, where, "tensor '%s': dtype must be a string", name);
    if (!mpk_dtype_parse(dtype->valuestring, strlen(dtype->valuestring), &t->dtype))
        MPK_FAIL(err, MPK_E_DTYPE, where, "tensor '%s': unknown dtype '%s'", name,
                 dtype->valuestring);
    if (!cJSON_IsArray(shape))
        MPK_FAIL(err, MPK_E_FIELD_TYPE, where, "tensor '%s': shape must be an array", name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > MPK_MAX_DIMS)
        MPK_FAIL(err, MPK_E_RANK, where, "tensor '%s': %d dimensions, at most %d supported", name,
                 nd, MPK_MAX_DIMS);
    t->ndim = 0;
    for (const cJSON *d = shape->child; d; d = d->next) {
        uint64_t v;
        MPK_TRY(json_uint(j, d, where, name, "shape", &v, err));
        if (v > (uint64_t)INT64_MAX)
            MPK_FAIL(err, MPK_E_NUMBER, where, "tensor '%s': shape value %llu is above 2^63-1 "
                     "(not supported)", name, (unsigned long long)v);
        t->shape[t->ndim++] = (int64_t)v;
    }
    if (!cJSON_IsArray(offs))
        MPK_FAIL(err, MPK_E_FIELD_TYPE, where, "tensor '%s': data_offsets must be an array", name);
    int no = cJSON_GetArraySize(offs);
    if (no != 2)
        MPK_FAIL(err, MPK_E_OFFSETS_ARITY, where,
                 "tensor '%s': data_offsets has %d values, must have exactly 2", name, no);
    MPK_TRY(json_uint(j, offs->child, where, name, "data_offsets", &t->begin, err));
    MPK_TRY(json_uint(j, offs->child->next, where, name, "data_offsets", &t->end, err));
    return MPK_OK;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const mpk_tensor_info *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static mpk_status parse_metadata(const cJSON *m, const char *where, mpk_st_header *h,
                                 mpk_error *err)
{
    if (cJSON_IsNull(m))
        return MPK_OK;
    if (!cJSON_IsObject(m))
        MPK_FAIL(err, MPK_E_METADATA, where, "__metadata__ must be an object of strings or null");
    size_t n = (size_t)cJSON_GetArraySize(m);
    h->metadata = mpk_arena_alloc(h->arena, (n ? n : 1) * sizeof *h->metadata);
    if (!h->metadata)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    h->has_metadata = true;
    for (const cJSON *kv = m->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv))
            MPK_FAIL(err, MPK_E_METADATA, where, "__metadata__ key '%s': value must be a string",
                     kv->string);
        for (size_t j = 0; j < h->n_metadata; j++)
            if (strcmp(h->metadata[j].key, kv->string) == 0)
                MPK_FAIL(err, MPK_E_DUPLICATE_METADATA, where,
                         "__metadata__ key '%s' appears twice", kv->string);
        mpk_kv *e = &h->metadata[h->n_metadata++];
        e->key = mpk_arena_strndup(h->arena, kv->string, strlen(kv->string));
        e->value = mpk_arena_strndup(h->arena, kv->valuestring, strlen(kv->valuestring));
        if (!e->key || !e->value)
            MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    }
    return MPK_OK;
}

static mpk_status validate_layout(mpk_st_header *h, const char *where, mpk_error *err)
{
    qsort(h->tensors, h->n_tensors, sizeof *h->tensors, cmp_by_offset);
    uint64_t pos = 0;
    for (size_t i = 0; i < h->n_tensors; i++) {
        mpk_tensor_info *t = &h->tensors[i];
        if (t->end < t->begin)
            MPK_FAIL(err, MPK_E_OFFSETS_LAYOUT, where,
                     "tensor '%s': data_offsets [%llu, %llu] are reversed", t->name,
                     (unsigned long long)t->begin, (unsigned long long)t->end);
        if (t->begin != pos)
            MPK_FAIL(err, MPK_E_OFFSETS_LAYOUT, where,
                     "tensor '%s': data_offsets begin %llu, expected %llu (%s)", t->name,
                     (unsigned long long)t->begin, (unsigned long long)pos,
                     t->begin > pos ? "gap" : "overlap");
        uint64_t nb;
        mpk_status s = mpk_tensor_nbytes(t->dtype, t->shape, t->ndim, &nb);
        if (s == MPK_E_SIZE_OVERFLOW)
            MPK_FAIL(err, s, where, "tensor '%s': element count times %d bits overflows 64 bits",
                     t->name, mpk_dtype_bits(t->dtype));
        if (s == MPK_E_SUBBYTE)
            MPK_FAIL(err, s, where, "tensor '%s': %llu elements of %s (%d bits) are not whole bytes",
                     t->name, (unsigned long long)mpk_numel(t->shape, t->ndim),
                     mpk_dtype_name(t->dtype), mpk_dtype_bits(t->dtype));
        if (nb != t->end - t->begin) {
            char sh[256];
            MPK_FAIL(err, MPK_E_SIZE_MISMATCH, where,
                     "tensor '%s': %s %s needs %llu bytes but data_offsets span %llu", t->name,
                     mpk_dtype_name(t->dtype), mpk_shape_str(t->shape, t->ndim, sh, sizeof sh),
                     (unsigned long long)nb, (unsigned long long)(t->end - t->begin));
        }
        pos = t->end;
    }
    if (pos != h->data_size)
        MPK_FAIL(err, MPK_E_DATA_LENGTH, where,
                 "tensors cover %llu bytes but the data section has %llu (%s bytes)",
                 (unsigned long long)pos, (unsigned long long)h->data_size,
                 pos < h->data_size ? "trailing" : "missing");
    return MPK_OK;
}

mpk_status mpk_st_parse_header(const char *hdr, uint64_t hdr_len, uint64_t file_size,
                               const char *where, mpk_st_header **out, mpk_error *err)
{
    *out = NULL;
    if (!where)
        where = "<buffer>";
    size_t bad;
    if (!mpk_utf8_valid((const unsigned char *)hdr, hdr_len, &bad))
        MPK_FAIL(err, MPK_E_HEADER_UTF8, where, "header is not valid UTF-8 (byte %zu of the header)",
                 bad);
    size_t lead = 0;
    while (lead < hdr_len && json_ws(hdr[lead]))
        lead++;
    if (lead < hdr_len && (unsigned char)hdr[lead] < 0x20)
        MPK_FAIL(err, MPK_E_HEADER_JSON, where, "header is not JSON: control byte 0x%02x at %zu",
                 (unsigned char)hdr[lead], lead);
    mpk_json *j;
    MPK_TRY(mpk_json_parse(hdr, (size_t)hdr_len, MPK_E_HEADER_JSON, where, "header", &j, err));
    cJSON *root = j->root;
    mpk_status s = MPK_OK;
    mpk_st_header *h = mpk_calloc(1, sizeof *h);
    if (!h || !(h->arena = mpk_arena_new())) {
        free(h);
        mpk_json_free(j);
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    }
    h->header_len = hdr_len;
    h->data_start = 8 + hdr_len;
    h->data_size = file_size - h->data_start;
    mpk_strmap names = {0};
    if (!cJSON_IsObject(root)) {
        s = mpk_error_set(err, MPK_E_HEADER_NOT_OBJECT, 0, where, "header JSON is not an object");
        goto done;
    }
    size_t n = (size_t)cJSON_GetArraySize(root);
    h->tensors = mpk_arena_alloc(h->arena, (n ? n : 1) * sizeof *h->tensors);
    if (!h->tensors || mpk_strmap_init(&names, n) != MPK_OK) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
        goto done;
    }
    bool seen_meta = false;
    for (const cJSON *item = root->child; item; item = item->next) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (seen_meta) {
                s = mpk_error_set(err, MPK_E_DUPLICATE_METADATA, 0, where,
                                  "\"__metadata__\" appears twice in the header");
                goto done;
            }
            seen_meta = true;
            if ((s = parse_metadata(item, where, h, err)) != MPK_OK)
                goto done;
            continue;
        }
        if (mpk_strmap_put(&names, item->string, strlen(item->string), 0, NULL)) {
            s = mpk_error_set(err, MPK_E_DUPLICATE_NAME, 0, where,
                              "tensor '%s' appears twice in the header", item->string);
            goto done;
        }
        if ((s = parse_tensor(j, item, where, h->arena, &h->tensors[h->n_tensors], err)) != MPK_OK)
            goto done;
        h->n_tensors++;
    }
    s = validate_layout(h, where, err);
    /* the names again, now in the arena and in their final (offset) order: what lookups use */
    if (s == MPK_OK && mpk_strmap_init(&h->by_name, h->n_tensors) != MPK_OK)
        s = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
    for (size_t i = 0; s == MPK_OK && i < h->n_tensors; i++)
        mpk_strmap_put(&h->by_name, h->tensors[i].name, strlen(h->tensors[i].name), i, NULL);
done:
    mpk_strmap_free(&names);
    mpk_json_free(j);
    if (s != MPK_OK) {
        mpk_st_header_free(h);
        return s;
    }
    *out = h;
    return MPK_OK;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Checks the 8-byte prefix against the file size; returns N. */
static mpk_status check_prefix(const unsigned char *p, uint64_t file_size, const char *where,
                               uint64_t *n_out, mpk_error *err)
{
    if (file_size < 8)
        MPK_FAIL(err, MPK_E_HEADER_TOO_SMALL, where,
                 "file is %llu bytes, shorter than the 8-byte header length",
                 (unsigned long long)file_size);
    uint64_t n = le64(p);
    if (n > MPK_ST_MAX_HEADER)
        MPK_FAIL(err, MPK_E_HEADER_TOO_LARGE, where, "header length %llu exceeds the limit %llu",
                 (unsigned long long)n, (unsigned long long)MPK_ST_MAX_HEADER);
    if (8 + n > file_size)
        MPK_FAIL(err, MPK_E_HEADER_LENGTH, where,
                 "header length %llu runs past the end of the %llu-byte file",
                 (unsigned long long)n, (unsigned long long)file_size);
    *n_out = n;
    return MPK_OK;
}

mpk_status mpk_st_parse(const void *buf, size_t len, const char *where, mpk_st_header **out,
                        mpk_error *err)
{
    *out = NULL;
    if (!where)
        where = "<buffer>";
    uint64_t n = 0;
    MPK_TRY(check_prefix(buf, len, where, &n, err));
    return mpk_st_parse_header((const char *)buf + 8, n, len, where, out, err);
}

mpk_status mpk_st_read_header(const char *path, mpk_st_header **out, mpk_error *err)
{
    *out = NULL;
    int fd;
    MPK_TRY(mpk_open_regular(path, &fd, NULL, err));
    mpk_status s = mpk_st_read_header_fd(fd, path, out, NULL, err);
    close(fd);
    return s;
}

mpk_status mpk_st_read_header_fd(int fd, const char *path, mpk_st_header **out,
                                 uint64_t *file_size_out, mpk_error *err)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return mpk_error_set(err, MPK_E_IO, errno, path, "cannot stat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode))
        MPK_FAIL(err, MPK_E_IO, path, "not a regular file");
    uint64_t size = (uint64_t)st.st_size;
    if (file_size_out)
        *file_size_out = size;
    unsigned char pre[8] = {0};
    if (size >= 8 && pread(fd, pre, 8, 0) != 8)
        return mpk_error_set(err, MPK_E_IO, errno, path, "cannot read the header length");
    uint64_t n = 0;
    MPK_TRY(check_prefix(pre, size, path, &n, err));
    char *hdr = mpk_alloc(n ? n : 1);
    if (!hdr)
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory for a %llu-byte header",
                 (unsigned long long)n);
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, hdr + got, n - got, (off_t)(8 + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            free(hdr);
            return mpk_error_set(err, MPK_E_IO, e, path, "cannot read the header: %s",
                                 e ? strerror(e) : "file shrank");
        }
        got += (size_t)r;
    }
    mpk_status s = mpk_st_parse_header(hdr, n, size, path, out, err);
    free(hdr);
    return s;
}

void mpk_st_header_free(mpk_st_header *h)
{
    if (!h)
        return;
    mpk_strmap_free(&h->by_name);
    mpk_arena_free(h->arena);
    free(h);
}

long mpk_st_header_find(const mpk_st_header *h, const char *name)
{
    size_t at;
    if (h->by_name.cap)
        return mpk_strmap_get(&h->by_name, name, strlen(name), &at) ? (long)at : -1;
    for (size_t i = 0; i < h->n_tensors; i++)
        if (strcmp(h->tensors[i].name, name) == 0)
            return (long)i;
    return -1;
}

