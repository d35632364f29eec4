/* test_formats.c — safetensors parser/writer, checkpoints and index (the I/O engine: test_io.c). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "formats_internal.h"
#include "mpk_config.h"
#include "testutil.h"

#include <fcntl.h>
#include <xxhash.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A file: 8-byte N, the JSON text, then data_len bytes of data. */
static unsigned char *mk_file(const char *json, size_t data_len, size_t *len)
{
    size_t n = strlen(json);
    unsigned char *b = calloc(1, 8 + n + data_len + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(((uint64_t)n >> (8 * i)) & 0xFF);
    memcpy(b + 8, json, n);
    *len = 8 + n + data_len;
    return b;
}

static mpk_status parse_json(const char *json, size_t data_len, mpk_error *err)
{
    size_t len;
    unsigned char *b = mk_file(json, data_len, &len);
    mpk_st_header *h = NULL;
    mpk_status s = mpk_st_parse(b, len, "t.safetensors", &h, err);
    mpk_st_header_free(h);
    free(b);
    return s;
}

/* ---------------------------------------------------------------- corrupt-file table */

typedef struct {
    const char *what;
    const char *json;
    size_t data_len;
    mpk_status want;
    const char *msg_part; /* the message must name this */
} corrupt_case;

#define T1 "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

/* 126 and 125 nested arrays: inside a tensor entry (2 levels) they make 128 and 127 */
#define A5 "[[[[["
#define Z5 "]]]]]"
#define A25 A5 A5 A5 A5 A5
#define Z25 Z5 Z5 Z5 Z5 Z5
#define DEEP125 A25 A25 A25 A25 A25 Z25 Z25 Z25 Z25 Z25
#define DEEP126 "[" DEEP125 "]"

static const corrupt_case corrupt[] = {
    {"not utf8", "{\"w\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     MPK_E_HEADER_UTF8, "UTF-8"},
    {"overlong utf8", "{\"\xc0\xaf\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     MPK_E_HEADER_UTF8, "UTF-8"},
    {"not json", "{\"w\":", 0, MPK_E_HEADER_JSON, "not valid JSON"},
    {"trailing garbage", "{" T1 "}x", 8, MPK_E_HEADER_JSON, "trailing garbage"},
    {"two values", "{" T1 "}{}", 8, MPK_E_HEADER_JSON, "trailing"},
    {"array header", "[]", 0, MPK_E_HEADER_NOT_OBJECT, "not an object"},
    {"entry not object", "{\"w\":1}", 0, MPK_E_HEADER_NOT_OBJECT, "'w'"},
    {"unknown dtype", "{\"w\":{\"dtype\":\"F12\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     MPK_E_DTYPE, "F12"},
    {"lowercase dtype", "{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     MPK_E_DTYPE, "f32"},
    {"missing shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, MPK_E_FIELD_MISSING,
     "shape"},
    {"missing dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, MPK_E_FIELD_MISSING,
     "dtype"},
    {"missing offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, MPK_E_FIELD_MISSING,
     "data_offsets"},
    {"dtype number", "{\"w\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     MPK_E_FIELD_TYPE, "dtype"},
    {"shape string", "{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4,
     MPK_E_FIELD_TYPE, "shape"},
    {"shape of strings", "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4,
     MPK_E_FIELD_TYPE, "shape"},
    {"offsets object", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", 4,
     MPK_E_FIELD_TYPE, "data_offsets"},
    {"field twice", "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     4, MPK_E_FIELD_TYPE, "twice"},
    {"negative dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
     MPK_E_NUMBER, "negative"},
    {"fractional dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
     MPK_E_NUMBER, "not an integer"},
    {"huge offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 4,
     MPK_E_NUMBER, "exponent"},
    /* the reference's grammar (serde_json into usize) where an integer is required */
    {"exponent integer", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", 4,
     MPK_E_NUMBER, "exponent"},
    {"fraction zero", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
     MPK_E_NUMBER, "fraction"},
    {"minus zero", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-0,4]}}", 4,
     MPK_E_NUMBER, "negative"},
    {"plus sign", "{\"w\":{\"dtype\":\"F32\",\"shape\":[+1],\"data_offsets\":[0,4]}}", 4,
     MPK_E_HEADER_JSON, "not valid JSON"},
    {"leading zero", "{\"w\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4,
     MPK_E_HEADER_JSON, "malformed number at byte 29"},
    {"bare dot", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.],\"data_offsets\":[0,4]}}", 4,
     MPK_E_HEADER_JSON, "malformed number"},
    {"2^64", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,18446744073709551616]}}", 1,
     MPK_E_NUMBER, "does not fit in 64 bits"},
    /* 2^53 + 1 is read exactly (a double would round it to 2^53) */
    {"above 2^53 exact", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,9007199254740993]}}", 1,
     MPK_E_SIZE_MISMATCH, "span 9007199254740993"},
    {"dim above 2^63", "{\"w\":{\"dtype\":\"U8\",\"shape\":[9223372036854775808,0],\"data_offsets\":[0,0]}}", 0,
     MPK_E_NUMBER, "above 2^63-1"},
    {"byte-order mark", "\xEF\xBB\xBF{}", 0, MPK_E_HEADER_JSON, "byte-order mark"},
    {"raw control in name", "{\"a\tb\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     MPK_E_HEADER_JSON, "control character 0x09"},
    {"raw newline in dtype", "{\"w\":{\"dtype\":\"U8\n\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     MPK_E_HEADER_JSON, "control character 0x0a"},
    {"escaped NUL in name", "{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     MPK_E_HEADER_JSON, "escaped NUL"},
    {"escaped NUL in dtype", "{\"w\":{\"dtype\":\"U8\\u0000xx\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     MPK_E_HEADER_JSON, "escaped NUL"},
    {"nesting 128", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":" DEEP126 "}}", 1,
     MPK_E_HEADER_JSON, "128 deep"},
    {"negative offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
     MPK_E_NUMBER, "negative"},
    {"one offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4,
     MPK_E_OFFSETS_ARITY, "exactly 2"},
    {"three offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 4,
     MPK_E_OFFSETS_ARITY, "3 values"},
    {"gap", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
     MPK_E_OFFSETS_LAYOUT, "gap"},
    {"overlap",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     8, MPK_E_OFFSETS_LAYOUT, "overlap"},
    {"reversed", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
     MPK_E_OFFSETS_LAYOUT, "reversed"},
    {"numel overflow",
     "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
     MPK_E_SIZE_OVERFLOW, "overflows"},
    {"bits overflow",
     "{\"w\":{\"dtype\":\"U64\",\"shape\":[4294967296,1073741824],\"data_offsets\":[0,4]}}", 4,
     MPK_E_SIZE_OVERFLOW, "overflows"},
    {"size mismatch", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
     MPK_E_SIZE_MISMATCH, "needs 8 bytes"},
    {"trailing data", "{" T1 "}", 9, MPK_E_DATA_LENGTH, "trailing"},
    {"missing data", "{" T1 "}", 7, MPK_E_DATA_LENGTH, "missing"},
    {"duplicate name", "{" T1 "," T1 "}", 8, MPK_E_DUPLICATE_NAME, "'w' appears twice"},
    {"duplicate metadata key", "{\"__metadata__\":{},\"__metadata__\":{}}", 0,
     MPK_E_DUPLICATE_METADATA, "twice"},
    {"duplicate key in metadata", "{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", 0,
     MPK_E_DUPLICATE_METADATA, "'a'"},
    {"metadata value number", "{\"__metadata__\":{\"a\":1}}", 0, MPK_E_METADATA, "'a'"},
    {"metadata array", "{\"__metadata__\":[]}", 0, MPK_E_METADATA, "object"},
    {"sub-byte F4", "{\"w\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2,
     MPK_E_SUBBYTE, "not whole bytes"},
    {"sub-byte F6", "{\"w\":{\"dtype\":\"F6_E2M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
     MPK_E_SUBBYTE, "not whole bytes"},
    {"rank 17",
     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
     1, MPK_E_RANK, "17 dimensions"},
};

static void test_corrupt_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof corrupt / sizeof corrupt[0]; i++) {
        mpk_error err = {0};
        mpk_status s = parse_json(corrupt[i].json, corrupt[i].data_len, &err);
        if (s != corrupt[i].want || !strstr(err.msg, corrupt[i].msg_part) ||
            !strstr(err.msg, "t.safetensors"))
            fail_msg("case '%s': got %s (%s), want %s containing '%s'", corrupt[i].what,
                     mpk_status_str(s), err.msg, mpk_status_str(corrupt[i].want),
                     corrupt[i].msg_part);
    }
}

static void test_prefix_errors(void **state)
{
    (void)state;
    mpk_error err = {0};
    mpk_st_header *h;
    unsigned char small[4] = {1, 0, 0, 0};
    assert_int_equal(mpk_st_parse(small, 4, "x", &h, &err), MPK_E_HEADER_TOO_SMALL);
    unsigned char big[16] = {0};
    uint64_t n = 100000001;
    for (int i = 0; i < 8; i++)
        big[i] = (unsigned char)(n >> (8 * i));
    assert_int_equal(mpk_st_parse(big, 16, "x", &h, &err), MPK_E_HEADER_TOO_LARGE);
    assert_non_null(strstr(err.msg, "100000001"));
    big[0] = 0xFF, big[1] = 0xFF, big[2] = big[3] = big[4] = big[5] = big[6] = big[7] = 0xFF;
    assert_int_equal(mpk_st_parse(big, 16, "x", &h, &err), MPK_E_HEADER_TOO_LARGE);
    unsigned char past[16] = {9, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    assert_int_equal(mpk_st_parse(past, 16, "x", &h, &err), MPK_E_HEADER_LENGTH);
}

/* ---------------------------------------------------------------- accepted variants */

static void test_accepts_reference_variants(void **state)
{
    (void)state;
    mpk_error err = {0};
    /* unpadded header, whitespace around, null metadata, key order, zero-size, scalar,
     * tensors listed out of offset order, unknown extra field */
    const char *ok[] = {
        "{}",
        "  \n{}\t ",
        "{\"__metadata__\":null}",
        "{\"w\":{\"data_offsets\":[0,8],\"shape\":[2],\"dtype\":\"F32\"}}",
        "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]}}",
        "{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}",
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"w\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,2]}}",
        "{\"w\":{\"dtype\":\"F6_E3M2\",\"shape\":[4],\"data_offsets\":[0,3]}}",
        "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":1}}",
        /* an ignored field may hold any JSON number, and nest up to 127 levels in all */
        "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":[-1.5e3,0.25,-0]}}",
        "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":" DEEP125 "}}",
        /* escapes other than NUL, a raw DEL */
        "{\"a\\u0001\\n\\\"\x7f\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
    };
    const size_t data[] = {0, 0, 0, 8, 0, 8, 8, 2, 3, 1, 1, 1, 1};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        size_t len;
        unsigned char *b = mk_file(ok[i], data[i], &len);
        mpk_st_header *h = NULL;
        mpk_status s = mpk_st_parse(b, len, "ok", &h, &err);
        if (s != MPK_OK)
            fail_msg("variant %zu rejected: %s", i, err.msg);
        mpk_st_header_free(h);
        free(b);
    }
    /* listed out of order: parsed tensors come back sorted by offset */
    size_t len;
    unsigned char *b = mk_file(ok[6], 8, &len);
    mpk_st_header *h;
    assert_int_equal(mpk_st_parse(b, len, "ok", &h, &err), MPK_OK);
    assert_string_equal(h->tensors[0].name, "a");
    assert_int_equal(h->tensors[1].begin, 4);
    assert_false(h->has_metadata);
    mpk_st_header_free(h);
    free(b);
}

/* ---------------------------------------------------------------- writer vectors */

static void test_writer_reference_vectors(void **state)
{
    (void)state;
    mpk_error err = {0};
    char *hdr;
    size_t hlen;
    uint64_t dsize;
    /* I32 [2,2] named "test": N = 64, JSON 60 bytes + 4 spaces */
    mpk_tensor_info t = {.name = "test", .dtype = MPK_DTYPE_I32, .ndim = 2, .shape = {2, 2}};
    assert_int_equal(mpk_st_layout(&t, 1, NULL, 0, &hdr, &hlen, &dsize, &err), MPK_OK);
    const char want[] = "@\0\0\0\0\0\0\0{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],"
                        "\"data_offsets\":[0,16]}}    ";
    assert_int_equal(hlen, 72);
    assert_int_equal(dsize, 16);
    assert_memory_equal(hdr, want, 72);
    free(hdr);
    /* no tensors: N = 8, "{}" + 6 spaces */
    assert_int_equal(mpk_st_layout(NULL, 0, NULL, 0, &hdr, &hlen, &dsize, &err), MPK_OK);
    assert_int_equal(hlen, 16);
    assert_memory_equal(hdr, "\x08\0\0\0\0\0\0\0{}      ", 16);
    free(hdr);
    /* metadata only: {"__metadata__":{"framework":"pt"}} = 35 bytes + 5 spaces -> N = 40 */
    mpk_kv kv = {"framework", "pt"};
    assert_int_equal(mpk_st_layout(NULL, 0, &kv, 1, &hdr, &hlen, &dsize, &err), MPK_OK);
    assert_int_equal(hlen, 48);
    assert_memory_equal(hdr, "(\0\0\0\0\0\0\0{\"__metadata__\":{\"framework\":\"pt\"}}     ", 48);
    free(hdr);
    /* ordering: dtype rank descending (F64 > F32 > BF16 > U8), then name */
    mpk_tensor_info ts[4] = {
        {.name = "b", .dtype = MPK_DTYPE_U8, .ndim = 1, .shape = {3}},
        {.name = "a", .dtype = MPK_DTYPE_BF16, .ndim = 1, .shape = {1}},
        {.name = "c", .dtype = MPK_DTYPE_F32, .ndim = 1, .shape = {1}},
        {.name = "a2", .dtype = MPK_DTYPE_F32, .ndim = 0},
    };
    assert_int_equal(mpk_st_layout(ts, 4, NULL, 0, &hdr, &hlen, &dsize, &err), MPK_OK);
    assert_string_equal(ts[0].name, "a2");
    assert_string_equal(ts[1].name, "c");
    assert_string_equal(ts[2].name, "a");
    assert_string_equal(ts[3].name, "b");
    assert_int_equal(ts[3].begin, 10);
    assert_int_equal(dsize, 13);
    free(hdr);
    /* escaping like serde_json */
    mpk_tensor_info e = {.name = "q\"\\\n\x01\xc3\xa9", .dtype = MPK_DTYPE_U8, .ndim = 0};
    assert_int_equal(mpk_st_layout(&e, 1, NULL, 0, &hdr, &hlen, &dsize, &err), MPK_OK);
    assert_non_null(memmem(hdr, hlen, "\"q\\\"\\\\\\n\\u0001\xc3\xa9\"", 17));
    free(hdr);
    mpk_tensor_info dup[2] = {{.name = "x", .dtype = MPK_DTYPE_U8}, {.name = "x", .dtype = MPK_DTYPE_U8}};
    assert_int_equal(mpk_st_layout(dup, 2, NULL, 0, &hdr, &hlen, &dsize, &err), MPK_E_DUPLICATE_NAME);
}

/* ---------------------------------------------------------------- round trips */

static void test_roundtrip_every_dtype(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    uint64_t seed = 42;
    mpk_tensor_info ts[MPK_DTYPE_COUNT];
    void *data[MPK_DTYPE_COUNT];
    char names[MPK_DTYPE_COUNT][32];
    for (int d = 0; d < MPK_DTYPE_COUNT; d++) {
        snprintf(names[d], sizeof names[d], "layer.%d.%s", d, mpk_dtype_name((mpk_dtype)d));
        ts[d] = (mpk_tensor_info){.name = names[d], .dtype = (mpk_dtype)d, .ndim = 2};
        ts[d].shape[0] = 3 + (int64_t)(mpk_rand(&seed) % 5);
        ts[d].shape[1] = 4 * (1 + (int64_t)(mpk_rand(&seed) % 4)); /* whole bytes for F4/F6 */
        uint64_t nb;
        assert_int_equal(mpk_tensor_nbytes(ts[d].dtype, ts[d].shape, 2, &nb), MPK_OK);
        data[d] = malloc(nb);
        tu_fill(data[d], nb, &seed);
    }
    /* keep an unsorted copy to find each tensor's data after the writer sorts */
    mpk_tensor_info orig[MPK_DTYPE_COUNT];
    void *orig_data[MPK_DTYPE_COUNT];
    memcpy(orig, ts, sizeof ts);
    memcpy(orig_data, data, sizeof data);
    char *path = tu_join(dir, "all.safetensors");
    mpk_kv meta[2] = {{"format", "pt"}, {"note", "round trip \xe2\x9c\x93"}};
    mpk_error err = {0};
    assert_int_equal(mpk_st_write_file(path, ts, (const void **)data, MPK_DTYPE_COUNT, meta, 2, &err),
                     MPK_OK);
    size_t len;
    char *file;
    assert_int_equal(mpk_read_file(path, &file, &len, &err), MPK_OK);
    mpk_st_header *h;
    assert_int_equal(mpk_st_parse(file, len, path, &h, &err), MPK_OK);
    assert_int_equal(h->n_tensors, MPK_DTYPE_COUNT);
    assert_int_equal(h->n_metadata, 2);
    assert_string_equal(h->metadata[1].value, "round trip \xe2\x9c\x93");
    for (int d = 0; d < MPK_DTYPE_COUNT; d++) {
        long k = mpk_st_header_find(h, orig[d].name);
        assert_true(k >= 0);
        const mpk_tensor_info *t = &h->tensors[k];
        assert_int_equal(t->dtype, orig[d].dtype);
        assert_int_equal(t->ndim, 2);
        assert_memory_equal(t->shape, orig[d].shape, 2 * sizeof(int64_t));
        assert_memory_equal(file + h->data_start + t->begin, orig_data[d], t->end - t->begin);
    }
    /* read -> write back unchanged -> identical bytes */
    mpk_tensor_info *again = calloc(h->n_tensors, sizeof *again);
    const void **ad = calloc(h->n_tensors, sizeof *ad);
    for (size_t i = 0; i < h->n_tensors; i++) {
        again[i] = h->tensors[i];
        ad[i] = file + h->data_start + h->tensors[i].begin;
    }
    char *path2 = tu_join(dir, "again.safetensors");
    assert_int_equal(mpk_st_write_file(path2, again, ad, h->n_tensors, h->metadata, h->n_metadata, &err),
                     MPK_OK);
    size_t len2;
    char *file2;
    assert_int_equal(mpk_read_file(path2, &file2, &len2, &err), MPK_OK);
    assert_int_equal(len, len2);
    assert_memory_equal(file, file2, len);
    /* O_EXCL: writing over an existing file is refused */
    assert_int_equal(mpk_st_write_file(path2, again, ad, h->n_tensors, NULL, 0, &err), MPK_E_DST_EXISTS);
    free(file2);
    free(again);
    free(ad);
    mpk_st_header_free(h);
    free(file);
    for (int d = 0; d < MPK_DTYPE_COUNT; d++)
        free(orig_data[d]);
    free(path);
    free(path2);
    tu_rmrf(dir);
}

static void test_streaming_writer_any_order(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = tu_join(dir, "s.safetensors");
    mpk_tensor_info ts[3] = {
        {.name = "a", .dtype = MPK_DTYPE_U8, .ndim = 1, .shape = {5}},
        {.name = "b", .dtype = MPK_DTYPE_F32, .ndim = 1, .shape = {2}},
        {.name = "c", .dtype = MPK_DTYPE_U8, .ndim = 1, .shape = {3}},
    };
    mpk_error err = {0};
    mpk_st_out *o;
    assert_int_equal(mpk_st_out_create(path, ts, 3, NULL, 0, -1, &o, &err), MPK_OK);
    /* sorted: b (F32) first, then a, c */
    assert_string_equal(ts[0].name, "b");
    assert_int_equal(mpk_st_out_write(o, 2, 1, "YZ", 2, &err), MPK_OK);
    assert_int_equal(mpk_st_out_write(o, 1, 0, "abcde", 5, &err), MPK_OK);
    assert_int_equal(mpk_st_out_write(o, 2, 0, "X", 1, &err), MPK_OK);
    assert_int_equal(mpk_st_out_write(o, 0, 0, "01234567", 8, &err), MPK_OK);
    assert_int_equal(mpk_st_out_write(o, 2, 2, "ZZ", 2, &err), MPK_E_USAGE);
    assert_int_equal(mpk_st_out_close(o, true, &err), MPK_OK);
    mpk_st_header *h;
    assert_int_equal(mpk_st_read_header(path, &h, &err), MPK_OK);
    assert_int_equal(h->data_size, 16);
    char *file;
    size_t len;
    assert_int_equal(mpk_read_file(path, &file, &len, &err), MPK_OK);
    assert_memory_equal(file + h->data_start, "01234567abcdeXYZ", 16);
    free(file);
    mpk_st_header_free(h);
    free(path);
    tu_rmrf(dir);
}

/* data_phase pads the header with spaces so the data starts at that offset within a page;
 * the file stays valid and its data unchanged. An invalid phase keeps the 8-byte padding. */
static void test_streaming_writer_data_phase(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const int phases[] = {0, 8, 1000, 4088, 3, -1};
    for (size_t k = 0; k < sizeof phases / sizeof *phases; k++) {
        char name[32];
        snprintf(name, sizeof name, "p%zu.safetensors", k);
        char *path = tu_join(dir, name);
        mpk_tensor_info t = {.name = "w", .dtype = MPK_DTYPE_U8, .ndim = 1, .shape = {4}};
        mpk_error err = {0};
        mpk_st_out *o;
        assert_int_equal(mpk_st_out_create(path, &t, 1, NULL, 0, phases[k], &o, &err), MPK_OK);
        assert_int_equal(mpk_st_out_write(o, 0, 0, "wxyz", 4, &err), MPK_OK);
        uint64_t start = o->data_start;
        assert_int_equal(mpk_st_out_close(o, false, &err), MPK_OK);
        /* {"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}} is 54 bytes: 8 + 56 unpadded */
        if (phases[k] >= 0 && phases[k] % 8 == 0)
            assert_int_equal(start % 4096, (uint64_t)phases[k]);
        else
            assert_int_equal(start, 64);
        mpk_st_header *h;
        assert_int_equal(mpk_st_read_header(path, &h, &err), MPK_OK);
        assert_int_equal(h->data_start, start);
        char *file;
        size_t len;
        assert_int_equal(mpk_read_file(path, &file, &len, &err), MPK_OK);
        assert_int_equal(len, start + 4);
        assert_memory_equal(file + start, "wxyz", 4);
        for (uint64_t i = 8 + 54; i < start; i++)
            assert_int_equal(file[i], ' ');
        free(file);
        mpk_st_header_free(h);
        free(path);
    }
    tu_rmrf(dir);
}

static void test_nomem_and_usage(void **state)
{
    (void)state;
    mpk_error err = {0};
    size_t len;
    unsigned char *b = mk_file("{}", 0, &len);
    mpk_st_header *h = NULL;
    mpk_alloc_fail_countdown = 1;
    assert_int_equal(mpk_st_parse(b, len, "x", &h, &err), MPK_E_NOMEM);
    mpk_alloc_fail_countdown = 0;
    assert_null(h);
    free(b);
    mpk_io *io;
    assert_int_equal(mpk_io_create(MPK_IO_AUTO, 0, 4096, &io, &err), MPK_E_USAGE);
    /* a directory is not a safetensors file */
    assert_int_equal(mpk_st_read_header("/tmp", &h, &err), MPK_E_IO);
    assert_int_equal(mpk_st_read_header("/nonexistent/x.safetensors", &h, &err), MPK_E_NOT_FOUND);
}

/* ---------------------------------------------------------------- checkpoints and index */

static void write_shard(const char *dir, const char *file, const char *const *names, int n)
{
    mpk_tensor_info ts[16];
    const void *data[16];
    static const float vals[4] = {1, 2, 3, 4};
    for (int i = 0; i < n; i++) {
        ts[i] = (mpk_tensor_info){.name = names[i], .dtype = MPK_DTYPE_F32, .ndim = 1, .shape = {4}};
        data[i] = vals;
    }
    char *p = tu_join(dir, file);
    mpk_error err = {0};
    unlink(p);
    assert_int_equal(mpk_st_write_file(p, ts, data, (size_t)n, NULL, 0, &err), MPK_OK);
    free(p);
}

static mpk_status open_with_index(const char *dir, const char *index, mpk_ckpt **c, mpk_error *err)
{
    char *p = tu_join(dir, "model.safetensors.index.json");
    tu_write(p, index);
    free(p);
    return mpk_ckpt_open(dir, c, err);
}

static void test_ckpt_sharded(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *s1[] = {"e.10", "e.2"}, *s2[] = {"e.1", "z"};
    write_shard(dir, "model-00000-of-00002.safetensors", s1, 2);
    write_shard(dir, "model-00001-of-000002.safetensors", s2, 2);
    mpk_ckpt *c;
    mpk_error err = {0};
    const char *good = "{\"metadata\":{\"total_size\":64},\"weight_map\":{"
                       "\"e.10\":\"model-00000-of-00002.safetensors\","
                       "\"e.2\":\"model-00000-of-00002.safetensors\","
                       "\"e.1\":\"model-00001-of-000002.safetensors\","
                       "\"z\":\"model-00001-of-000002.safetensors\"}}";
    assert_int_equal(open_with_index(dir, good, &c, &err), MPK_OK);
    assert_int_equal(c->n_shards, 2);
    assert_int_equal(c->n_tensors, 4);
    assert_int_equal(c->total_bytes, 64);
    assert_int_equal(c->index_total_size, 64);
    assert_string_equal(c->tensors[0].info->name, "e.1");
    assert_string_equal(c->tensors[1].info->name, "e.2");
    assert_string_equal(c->tensors[2].info->name, "e.10");
    const mpk_ckpt_tensor *t = mpk_ckpt_find(c, "z");
    assert_non_null(t);
    assert_string_equal(c->shards[t->shard].name, "model-00001-of-000002.safetensors");
    assert_null(mpk_ckpt_find(c, "nope"));
    mpk_ckpt_close(c);

    /* the index names a tensor the shard lacks */
    const char *missing = "{\"weight_map\":{\"e.10\":\"model-00000-of-00002.safetensors\","
                          "\"e.2\":\"model-00000-of-00002.safetensors\","
                          "\"q\":\"model-00000-of-00002.safetensors\"}}";
    assert_int_equal(open_with_index(dir, missing, &c, &err), MPK_E_INDEX_MISSING);
    assert_non_null(strstr(err.msg, "'q'"));
    /* a shard holds a tensor the index does not list */
    const char *extra = "{\"weight_map\":{\"e.10\":\"model-00000-of-00002.safetensors\"}}";
    assert_int_equal(open_with_index(dir, extra, &c, &err), MPK_E_INDEX_EXTRA);
    assert_non_null(strstr(err.msg, "'e.2'"));
    /* unsafe shard names */
    const char *bad_names[] = {"../x.safetensors", "/etc/passwd", "sub/x.safetensors", "..", ""};
    for (size_t i = 0; i < 5; i++) {
        char ix[256];
        snprintf(ix, sizeof ix, "{\"weight_map\":{\"a\":\"%s\"}}", bad_names[i]);
        assert_int_equal(open_with_index(dir, ix, &c, &err), MPK_E_INDEX_PATH);
    }
    /* a symlink escaping the directory */
    char *link = tu_join(dir, "escape.safetensors");
    assert_int_equal(symlink("/etc/hostname", link), 0);
    assert_int_equal(open_with_index(dir, "{\"weight_map\":{\"a\":\"escape.safetensors\"}}", &c, &err),
                     MPK_E_INDEX_PATH);
    free(link);
    /* malformed index documents */
    assert_int_equal(open_with_index(dir, "{\"weight_map\":", &c, &err), MPK_E_INDEX);
    assert_int_equal(open_with_index(dir, "{\"metadata\":{}}", &c, &err), MPK_E_INDEX);
    assert_int_equal(open_with_index(dir, "{\"weight_map\":{\"a\":1}}", &c, &err), MPK_E_INDEX);
    assert_int_equal(open_with_index(dir, "{\"weight_map\":{\"e.10\":\"model-00000-of-00002.safetensors\","
                                          "\"e.10\":\"model-00000-of-00002.safetensors\"}}", &c, &err),
                     MPK_E_INDEX);
    assert_int_equal(open_with_index(dir, "{\"metadata\":{\"total_size\":-1},\"weight_map\":{}}", &c, &err),
                     MPK_E_INDEX);
    /* found by libFuzzer: a total_size beyond 2^64 must be rejected, not cast */
    assert_int_equal(open_with_index(dir, "{\"metadata\":{\"total_size\":1.7e31},\"weight_map\":{}}", &c, &err),
                     MPK_E_INDEX);
    /* an index naming a shard that is not there */
    assert_int_equal(open_with_index(dir, "{\"weight_map\":{\"a\":\"gone.safetensors\"}}", &c, &err),
                     MPK_E_NOT_FOUND);
    /* two shards holding the same name */
    const char *s3[] = {"e.1"};
    write_shard(dir, "dup.safetensors", s3, 1);
    assert_int_equal(open_with_index(dir, "{\"weight_map\":{\"e.1\":\"dup.safetensors\","
                                          "\"z\":\"model-00001-of-000002.safetensors\"}}", &c, &err),
                     MPK_E_DUPLICATE_TENSOR);
    tu_rmrf(dir);
}

/* Before: an index with an empty weight_map, or one that never names a shard lying in the
 * folder (model-00003-of-00003.safetensors beside an index of 00001 and 00002), opened as a
 * checkpoint without those tensors: pack and convert exited 0 with them dropped ("skipped").
 * Now both are MPK_E_INDEX / MPK_E_INDEX_EXTRA naming the index and the file; a .safetensors
 * file that is not a shard of the checkpoint (another naming: a consolidated copy) stays
 * allowed beside it. */
static void test_ckpt_index_omits_shard(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *s1[] = {"model.a.weight"}, *s2[] = {"model.b.weight"}, *s3[] = {"lm_head.weight"};
    const char *other[] = {"layers.0.attention.wq.weight", "output.weight"};
    write_shard(dir, "model-00001-of-00003.safetensors", s1, 1);
    write_shard(dir, "model-00002-of-00003.safetensors", s2, 1);
    mpk_ckpt *c;
    mpk_error err = {0};
    const char *ix = tu_fmt("%s/model.safetensors.index.json", dir);
    const char *two = "{\"weight_map\":{\"model.a.weight\":\"model-00001-of-00003.safetensors\","
                      "\"model.b.weight\":\"model-00002-of-00003.safetensors\"}}";
    assert_int_equal(open_with_index(dir, two, &c, &err), MPK_OK);
    mpk_ckpt_close(c);
    /* an empty weight_map */
    assert_int_equal(open_with_index(dir, "{\"metadata\":{\"total_size\":0},\"weight_map\":{}}", &c, &err),
                     MPK_E_INDEX);
    assert_string_equal(err.where, ix);
    assert_string_equal(err.msg, tu_fmt("%s: \"weight_map\" is empty: the index lists no tensors", ix));
    /* a shard of the series the index never names */
    write_shard(dir, "model-00003-of-00003.safetensors", s3, 1);
    assert_int_equal(open_with_index(dir, two, &c, &err), MPK_E_INDEX_EXTRA);
    assert_string_equal(err.where, ix);
    assert_non_null(strstr(err.msg, "does not name model-00003-of-00003.safetensors, which is in the checkpoint's "
                                    "folder and is one of its shards (a shard of the same series): its 1 tensor(s) "
                                    "('lm_head.weight', ...) would be left out of every conversion"));
    /* compressed (NAME.safetensors.mpkz), the same */
    const char *s3p = tu_fmt("%s/model-00003-of-00003.safetensors", dir);
    assert_int_equal(mpk_mpkz_compress(s3p, tu_fmt("%s.mpkz", s3p), 1, 1, 1 << 20, NULL, NULL, &err), MPK_OK);
    tu_rmrf(s3p);
    assert_int_equal(open_with_index(dir, two, &c, &err), MPK_E_INDEX_EXTRA);
    assert_non_null(strstr(err.msg, "does not name model-00003-of-00003.safetensors.mpkz, which is in the checkpoint's "
                                    "folder and is one of its shards (a shard of the same series): its 1 tensor(s) "
                                    "('lm_head.weight', ...)"));
    tu_rmrf(tu_fmt("%s.mpkz", s3p));
    /* another name, tensors under no listed root: not a shard of it */
    write_shard(dir, "extra.safetensors", s3, 1);
    assert_int_equal(open_with_index(dir, two, &c, &err), MPK_OK);
    mpk_ckpt_close(c);
    /* another name, its tensors named like the listed ones */
    const char *s4[] = {"model.c.weight"};
    write_shard(dir, "extra.safetensors", s4, 1);
    assert_int_equal(open_with_index(dir, two, &c, &err), MPK_E_INDEX_EXTRA);
    assert_non_null(strstr(err.msg, "does not name extra.safetensors, which is in the checkpoint's folder and is one "
                                    "of its shards (its tensors are named like the listed ones): its 1 tensor(s) "
                                    "('model.c.weight', ...)"));
    tu_rmrf(tu_fmt("%s/extra.safetensors", dir));
    /* a staging record's name (moepack.*), holding the same tensors: its own rules, not a shard */
    write_shard(dir, "moepack.shard.0123456789abcdef.model-00001-of-00003.safetensors", s1, 1);
    assert_int_equal(open_with_index(dir, two, &c, &err), MPK_OK);
    mpk_ckpt_close(c);
    /* a consolidated copy in another naming stays allowed */
    write_shard(dir, "consolidated.safetensors", other, 2);
    assert_int_equal(open_with_index(dir, two, &c, &err), MPK_OK);
    mpk_ckpt_close(c);
    tu_rmrf(dir);
}

static void test_ckpt_single_and_missing(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    mpk_ckpt *c;
    mpk_error err = {0};
    assert_int_equal(mpk_ckpt_open(dir, &c, &err), MPK_E_NOT_FOUND);
    assert_non_null(strstr(err.msg, "model.safetensors"));
    const char *names[] = {"a", "b"};
    write_shard(dir, "model.safetensors", names, 2);
    assert_int_equal(mpk_ckpt_open(dir, &c, &err), MPK_OK);
    assert_false(c->has_index);
    assert_int_equal(c->n_tensors, 2);
    mpk_ckpt_close(c);
    char *file = tu_join(dir, "model.safetensors");
    assert_int_equal(mpk_ckpt_open(file, &c, &err), MPK_OK);
    assert_false(c->is_dir);
    assert_int_equal(c->tensors[1].file_offset, c->shards[0].header->data_start + 16);
    /* mpk_ckpt_read: a slice of tensor b (values 1, 2, 3, 4), then the file cut short under it */
    float got[2];
    assert_int_equal(mpk_ckpt_read(c, &c->tensors[1], 4, 8, got, &err), MPK_OK);
    assert_true(got[0] == 2.0f && got[1] == 3.0f);
    assert_int_equal(truncate(file, (off_t)c->tensors[1].file_offset + 6), 0);
    assert_int_equal(mpk_ckpt_read(c, &c->tensors[1], 4, 8, got, &err), MPK_E_IO);
    assert_non_null(strstr(err.msg, "'b'"));
    assert_non_null(strstr(err.msg, "file ends early"));
    mpk_ckpt_close(c);
    free(file);
    tu_rmrf(dir);
}

/* Files that are no safetensors, opened as a checkpoint: the error names the file and says so
 * (not "header length ... past the end"), keeping the header status; a real file cut short
 * inside its header keeps the header-length message. */
static void test_not_safetensors(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const struct {
        const char *name, *bytes;
        size_t len;
        const char *says;
    } cases[] = {
        {"notes.txt", "hello, this is text\n", 20, "begins as text"},
        {"pytorch_model.bin", "PK\x03\x04\x14\x00\x00\x00\x08\x00", 10, "zip archive"},
        {"old.bin", "\x80\x02}q\x00(X\x05\x00\x00\x00", 12, "pickle"},
        {"empty.safetensors", "", 0, "empty"},
        {"lfs.safetensors", "version https://git-lfs.github.com/spec/v1\n", 43, "Git LFS pointer"},
        {"tiny.safetensors", "\x01\x02", 2, "not a safetensors file"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *path = tu_join(dir, cases[i].name);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(cases[i].bytes, 1, cases[i].len, f), cases[i].len);
        fclose(f);
        mpk_ckpt *c = NULL;
        mpk_error err = {0};
        assert_int_not_equal(mpk_ckpt_open(path, &c, &err), MPK_OK);
        assert_null(c);
        assert_non_null(strstr(err.msg, "not a safetensors file"));
        assert_non_null(strstr(err.msg, cases[i].says));
        assert_non_null(strstr(err.msg, path));
        assert_string_equal(err.where, path);
        free(path);
    }
    /* a safetensors file cut inside its header: still its own error, not "not a safetensors" */
    size_t len;
    unsigned char *b = mk_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &len);
    char *path = tu_join(dir, "cut.safetensors");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, 20, f), 20);
    fclose(f);
    mpk_ckpt *c = NULL;
    mpk_error err = {0};
    assert_int_equal(mpk_ckpt_open(path, &c, &err), MPK_E_HEADER_LENGTH);
    assert_null(strstr(err.msg, "not a safetensors file"));
    free(b);
    free(path);
    tu_rmrf(dir);
}

static void test_index_format(void **state)
{
    (void)state;
    const char *names[] = {"b.w", "a.\xc3\xa9", "a.10"};
    const char *files[] = {"model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors",
                           "model-00001-of-00002.safetensors"};
    char *s = mpk_index_format(names, files, 3, 1234);
    const char *want = "{\n"
                       "  \"metadata\": {\n"
                       "    \"total_size\": 1234\n"
                       "  },\n"
                       "  \"weight_map\": {\n"
                       "    \"a.10\": \"model-00001-of-00002.safetensors\",\n"
                       "    \"a.\\u00e9\": \"model-00001-of-00002.safetensors\",\n"
                       "    \"b.w\": \"model-00002-of-00002.safetensors\"\n"
                       "  }\n"
                       "}\n";
    assert_string_equal(s, want);
    /* and it parses back */
    mpk_arena *a;
    const char **pn, **pf;
    size_t n;
    uint64_t total;
    mpk_error err = {0};
    assert_int_equal(mpk_index_parse(s, strlen(s), "ix", &a, &pn, &pf, &n, &total, &err), MPK_OK);
    assert_int_equal(n, 3);
    assert_int_equal(total, 1234);
    assert_string_equal(pn[1], "a.\xc3\xa9");
    mpk_arena_free(a);
    free(s);
    char buf[64];
    mpk_shard_name(3, 12, buf, sizeof buf);
    assert_string_equal(buf, "model-00003-of-00012.safetensors");
    mpk_shard_name(1, 1, buf, sizeof buf);
    assert_string_equal(buf, "model.safetensors");
}

/* mpk_xxh (AVX2 where the CPU has it) against the shared library's one-shot XXH3 (the reference),
 * fed in uneven pieces, over lengths around XXH3's internal boundaries (16, 128, 240 bytes,
 * stripes of 64, blocks of 1024, the 256-byte internal buffer). */
static void test_xxh_matches_library(void **state)
{
    (void)state;
    bool generic = mpk_tuning_now()->xxh_generic; /* (formats-pread: --xxh=generic) */
#if defined(__x86_64__)
    assert_string_equal(mpk_xxh_impl(), !generic && __builtin_cpu_supports("avx2") ? "avx2" : "libxxhash");
#else
    assert_string_equal(mpk_xxh_impl(), "libxxhash");
#endif
    mpk_xxh *h = mpk_xxh_new();
    assert_non_null(h);
    mpk_hash128 d = mpk_xxh_digest(h); /* XXH3-128 of no bytes, from xxHash's test vectors */
    assert_true(d.hi == 0x99aa06d3014798d8ull && d.lo == 0x6001c324468d497full);
    mpk_xxh_free(h);
    mpk_xxh_free(NULL);
    assert_true(mpk_xxh64("", 0) == 0x2d06800538d394c2ull);
    const size_t max = (3u << 20) + 77;
    unsigned char *b = malloc(max + 32); /* (read from b + k, k < 32) */
    assert_non_null(b);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < max + 32; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        b[i] = (unsigned char)x;
    }
    const size_t lens[] = {1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 255, 256, 257, 1023, 1024, 1025,
                           4096 + 5, 65536, (1u << 20) + 3, max};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        size_t n = lens[k];
        XXH128_hash_t ref = XXH3_128bits(b + k, n - (k ? 1 : 0));
        n -= k ? 1 : 0; /* and at an odd address */
        assert_non_null(h = mpk_xxh_new());
        for (size_t at = 0, step = 1; at < n; step = step * 7 % 4093 + 1) {
            size_t m = n - at < step * 37 ? n - at : step * 37;
            mpk_xxh_update(h, b + k + at, m);
            at += m;
        }
        d = mpk_xxh_digest(h);
        assert_true(d.hi == ref.high64 && d.lo == ref.low64);
        mpk_xxh_free(h);
        assert_true(mpk_xxh64(b + k, n) == XXH3_64bits(b + k, n));
    }
    free(b);
}

int main(int argc, char **argv)
{
    tu_tuning_args(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corrupt_table),
        cmocka_unit_test(test_prefix_errors),
        cmocka_unit_test(test_accepts_reference_variants),
        cmocka_unit_test(test_writer_reference_vectors),
        cmocka_unit_test(test_roundtrip_every_dtype),
        cmocka_unit_test(test_streaming_writer_any_order),
        cmocka_unit_test(test_streaming_writer_data_phase),
        cmocka_unit_test(test_nomem_and_usage),
        cmocka_unit_test(test_ckpt_sharded),
        cmocka_unit_test(test_ckpt_index_omits_shard),
        cmocka_unit_test(test_ckpt_single_and_missing),
        cmocka_unit_test(test_not_safetensors),
        cmocka_unit_test(test_index_format),
        cmocka_unit_test(test_xxh_matches_library),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
