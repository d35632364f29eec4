/* st_write.c — the safetensors writer: the reference writer's layout and header bytes
 * (mpk_st_layout), whole files, and streaming output files written in any order from any
 * thread (mpk_st_out). */
#define _GNU_SOURCE
#include "formats_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Opens (reopen: an existing file with exactly these bytes and size) or creates path with the
 * header bytes hdr[0..hlen) (taken over: freed here) and a data section of dsize bytes. */
static mpk_status open_with(const char *path, char *hdr, size_t hlen, uint64_t dsize, mpk_tensor_info *tensors,
                            size_t n, bool reopen, mpk_st_out **out, mpk_error *err)
{
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
        if (s == MPK_OK)
            s = mpk_preallocate(o->fd, path, hlen + dsize, err);
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
    return open_with(path, hdr, hlen, dsize, tensors, n, reopen, out, err);
}

mpk_status mpk_st_out_create(const char *path, mpk_tensor_info *tensors, size_t n,
                             const mpk_kv *meta, size_t n_meta, int data_phase, mpk_st_out **out,
                             mpk_error *err)
{
    return st_out_open(path, tensors, n, meta, n_meta, data_phase, false, out, err);
}

static mpk_status exact_open(const char *path, const char *hdr, size_t hlen, mpk_tensor_info *tensors, size_t n,
                             uint64_t data_size, bool reopen, mpk_st_out **out, mpk_error *err)
{
    *out = NULL;
    char *copy = mpk_alloc(hlen ? hlen : 1);
    if (!copy)
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    memcpy(copy, hdr, hlen);
    return open_with(path, copy, hlen, data_size, tensors, n, reopen, out, err);
}

mpk_status mpk_st_out_create_exact(const char *path, const char *hdr, size_t hlen, mpk_tensor_info *tensors,
                                   size_t n, uint64_t data_size, mpk_st_out **out, mpk_error *err)
{
    return exact_open(path, hdr, hlen, tensors, n, data_size, false, out, err);
}

mpk_status mpk_st_out_reopen_exact(const char *path, const char *hdr, size_t hlen, mpk_tensor_info *tensors,
                                   size_t n, uint64_t data_size, mpk_st_out **out, mpk_error *err)
{
    return exact_open(path, hdr, hlen, tensors, n, data_size, true, out, err);
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
