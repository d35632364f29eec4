/* safetensors.c — strict parser and reference-exact writer. */
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
    mpk_arena_free(h->arena);
    free(h);
}

long mpk_st_header_find(const mpk_st_header *h, const char *name)
{
    for (size_t i = 0; i < h->n_tensors; i++)
        if (strcmp(h->tensors[i].name, name) == 0)
            return (long)i;
    return -1;
}

/* ---------------------------------------------------------------- writer */

static int cmp_write_order(const void *a, const void *b)
{
    const mpk_tensor_info *x = a, *y = b;
    if (x->dtype != y->dtype)
        return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Growable byte buffer. */
typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = mpk_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_str(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* JSON string with serde_json's escaping: \" \\ \b \f \n \r \t, other controls \u00xx,
 * everything else (non-ASCII included) raw. */
static void sb_json_string(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        switch (c) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\b': sb_put(b, "\\b", 2); break;
        case '\f': sb_put(b, "\\f", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                sb_put(b, esc, 6);
            } else {
                sb_put(b, (const char *)&c, 1);
            }
        }
    }
    sb_put(b, "\"", 1);
}

/* The 8-byte little-endian prefix of a full header of hlen bytes: the JSON's length. */
static void put_header_len(char *hdr, size_t hlen)
{
    uint64_t n = hlen - 8;
    for (int i = 0; i < 8; i++)
        hdr[i] = (char)((n >> (8 * i)) & 0xFF);
}

mpk_status mpk_st_layout(mpk_tensor_info *tensors, size_t n, const mpk_kv *meta, size_t n_meta,
                         char **hdr, size_t *hdr_len, uint64_t *data_size, mpk_error *err)
{
    if (n)
        qsort(tensors, n, sizeof *tensors, cmp_write_order);
    for (size_t i = 1; i < n; i++)
        if (strcmp(tensors[i - 1].name, tensors[i].name) == 0)
            MPK_FAIL(err, MPK_E_DUPLICATE_NAME, NULL, "tensor '%s' given twice", tensors[i].name);
    sbuf b = {0};
    sb_put(&b, "\0\0\0\0\0\0\0\0{", 9);
    bool first = true;
    if (meta) {
        sb_str(&b, "\"__metadata__\":{");
        for (size_t i = 0; i < n_meta; i++) {
            if (i)
                sb_put(&b, ",", 1);
            sb_json_string(&b, meta[i].key);
            sb_put(&b, ":", 1);
            sb_json_string(&b, meta[i].value);
        }
        sb_put(&b, "}", 1);
        first = false;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        mpk_tensor_info *t = &tensors[i];
        uint64_t nb;
        mpk_status s = mpk_tensor_nbytes(t->dtype, t->shape, t->ndim, &nb);
        if (s != MPK_OK) {
            free(b.p);
            MPK_FAIL(err, s, NULL, "tensor '%s': %s", t->name, mpk_status_str(s));
        }
        t->begin = off;
        t->end = off + nb;
        off += nb;
        char num[64];
        if (!first)
            sb_put(&b, ",", 1);
        first = false;
        sb_json_string(&b, t->name);
        sb_str(&b, ":{\"dtype\":\"");
        sb_str(&b, mpk_dtype_name(t->dtype));
        sb_str(&b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            sb_str(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)t->begin,
                 (unsigned long long)t->end);
        sb_str(&b, num);
    }
    sb_put(&b, "}", 1);
    while (!b.oom && (b.len - 8) % 8) /* a failed put does not grow len */
        sb_put(&b, " ", 1);
    if (b.oom) {
        free(b.p);
        MPK_FAIL(err, MPK_E_NOMEM, NULL, "out of memory building a header");
    }
    put_header_len(b.p, b.len);
    *hdr = b.p;
    *hdr_len = b.len;
    if (data_size)
        *data_size = off;
    return MPK_OK;
}

mpk_status mpk_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *where,
                          mpk_error *err)
{
    const char *p = buf;
    while (len) {
        ssize_t w = mpk_fault_point("pwrite") ? -1 : pwrite(fd, p, len, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return mpk_error_set(err, MPK_E_IO, errno, where, "write of %zu bytes at %llu failed: %s",
                                 len, (unsigned long long)off, strerror(errno));
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return MPK_OK;
}

/* Pads hdr (a full header: prefix + JSON + spaces) with spaces until its length is
 * phase modulo 4096, and rewrites the length prefix. */
static mpk_status pad_header(char **hdr, size_t *hlen, int phase, mpk_error *err)
{
    if (phase < 0 || phase % 8 || phase >= 4096)
        return MPK_OK;
    size_t add = ((size_t)phase + 4096 - *hlen % 4096) % 4096;
    if (!add)
        return MPK_OK;
    char *p = mpk_realloc(*hdr, *hlen + add);
    if (!p)
        MPK_FAIL(err, MPK_E_NOMEM, NULL, "out of memory building a header");
    memset(p + *hlen, ' ', add);
    *hdr = p;
    *hlen += add;
    put_header_len(p, *hlen);
    return MPK_OK;
}

static mpk_status st_out_open(const char *path, mpk_tensor_info *tensors, size_t n, const mpk_kv *meta,
                              size_t n_meta, int data_phase, bool reopen, mpk_st_out **out, mpk_error *err)
{
    *out = NULL;
    char *hdr;
    size_t hlen;
    uint64_t dsize;
    MPK_TRY(mpk_st_layout(tensors, n, meta, n_meta, &hdr, &hlen, &dsize, err));
    mpk_status ps = pad_header(&hdr, &hlen, data_phase, err);
    if (ps != MPK_OK) {
        free(hdr);
        return ps;
    }
    mpk_st_out *o = mpk_calloc(1, sizeof *o);
    if (!o || !(o->path = mpk_strndup(path, strlen(path)))) {
        free(o);
        free(hdr);
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    }
    o->tensors = tensors;
    o->n_tensors = n;
    o->data_start = hlen;
    o->data_size = dsize;
    mpk_status s = MPK_OK;
    if (reopen) {
        o->fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        struct stat st;
        char *have = o->fd >= 0 ? mpk_alloc(hlen) : NULL;
        if (o->fd < 0)
            s = mpk_error_set(err, MPK_E_IO, errno, path, "cannot open: %s", strerror(errno));
        else if (!have)
            s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
        else if (fstat(o->fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != hlen + dsize)
            s = mpk_error_set(err, MPK_E_DST_EXISTS, 0, path, "not the file this layout gives (size)");
        else if ((s = mpk_pread_all(o->fd, have, hlen, 0, path, "(header)", err)) == MPK_OK && memcmp(have, hdr, hlen))
            s = mpk_error_set(err, MPK_E_DST_EXISTS, 0, path, "not the file this layout gives (header)");
        free(have);
        free(hdr);
    } else {
        o->fd = mpk_fault_point("create") ? -1 : open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (o->fd < 0) {
            int e = errno;
            free(hdr);
            free(o->path);
            free(o);
            return mpk_error_set(err, e == EEXIST ? MPK_E_DST_EXISTS : MPK_E_IO, e, path,
                                 "cannot create: %s", strerror(e));
        }
        s = mpk_pwrite_all(o->fd, hdr, hlen, 0, path, err);
        free(hdr);
        if (s == MPK_OK && (mpk_fault_point("ftruncate") || ftruncate(o->fd, (off_t)(hlen + dsize)) != 0))
            s = mpk_error_set(err, MPK_E_IO, errno, path, "cannot size the file to %llu bytes: %s",
                              (unsigned long long)(hlen + dsize), strerror(errno));
        if (s != MPK_OK)
            unlink(path);
    }
    if (s != MPK_OK) {
        if (o->fd >= 0)
            close(o->fd);
        free(o->path);
        free(o);
        return s;
    }
    *out = o;
    return MPK_OK;
}

mpk_status mpk_st_out_create(const char *path, mpk_tensor_info *tensors, size_t n,
                             const mpk_kv *meta, size_t n_meta, int data_phase, mpk_st_out **out,
                             mpk_error *err)
{
    return st_out_open(path, tensors, n, meta, n_meta, data_phase, false, out, err);
}

mpk_status mpk_st_out_reopen(const char *path, mpk_tensor_info *tensors, size_t n,
                             const mpk_kv *meta, size_t n_meta, int data_phase, mpk_st_out **out,
                             mpk_error *err)
{
    return st_out_open(path, tensors, n, meta, n_meta, data_phase, true, out, err);
}

mpk_status mpk_st_out_write(mpk_st_out *o, size_t i, uint64_t off, const void *buf, size_t len,
                            mpk_error *err)
{
    const mpk_tensor_info *t = &o->tensors[i];
    if (off > t->end - t->begin || len > t->end - t->begin - off)
        MPK_FAIL(err, MPK_E_USAGE, o->path, "tensor '%s': write of %zu bytes at %llu out of bounds",
                 t->name, len, (unsigned long long)off);
    return mpk_pwrite_all(o->fd, buf, len, o->data_start + t->begin + off, o->path, err);
}

mpk_status mpk_st_out_close(mpk_st_out *o, bool sync, mpk_error *err)
{
    if (!o)
        return MPK_OK;
    mpk_status s = MPK_OK;
    if (sync)
        s = mpk_fsync_fd(o->fd, o->path, err);
    if (close(o->fd) != 0 && s == MPK_OK)
        s = mpk_error_set(err, MPK_E_IO, errno, o->path, "close failed: %s", strerror(errno));
    free(o->path);
    free(o);
    return s;
}

typedef struct {
    mpk_tensor_info t;
    const void *data;
} tensor_with_data;

static int cmp_twd(const void *a, const void *b)
{
    return cmp_write_order(&((const tensor_with_data *)a)->t, &((const tensor_with_data *)b)->t);
}

mpk_status mpk_st_write_file(const char *path, mpk_tensor_info *tensors, const void **data,
                             size_t n, const mpk_kv *meta, size_t n_meta, mpk_error *err)
{
    /* sort tensors and data together, then lay out (the layout's sort is then a no-op) */
    tensor_with_data *tw = mpk_calloc(n ? n : 1, sizeof *tw);
    if (!tw)
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    for (size_t i = 0; i < n; i++)
        tw[i] = (tensor_with_data){tensors[i], data[i]};
    qsort(tw, n, sizeof *tw, cmp_twd);
    for (size_t i = 0; i < n; i++) {
        tensors[i] = tw[i].t;
        data[i] = tw[i].data;
    }
    free(tw);
    mpk_st_out *o;
    MPK_TRY(mpk_st_out_create(path, tensors, n, meta, n_meta, -1, &o, err));
    mpk_status s = MPK_OK;
    for (size_t i = 0; i < n && s == MPK_OK; i++)
        s = mpk_st_out_write(o, i, 0, data[i], (size_t)(tensors[i].end - tensors[i].begin), err);
    mpk_status c = mpk_st_out_close(o, false, s == MPK_OK ? err : NULL);
    if (s == MPK_OK)
        s = c;
    if (s != MPK_OK)
        unlink(path);
    return s;
}
