/* json.c — cJSON with the reference reader's strictness on top.
 *
 * cJSON is lenient by design: it skips a byte-order mark, keeps raw control characters in
 * strings, cuts a string at an escaped NUL, accepts numbers like 01, 1. or -0 through strtod,
 * nests up to 1000 levels and rounds integers above 2^53. The reference safetensors reader
 * (serde_json) rejects all of that. A scan of the raw text here checks what cJSON does not,
 * and records every number's literal so that integer fields read their exact 64-bit value. */
#define _GNU_SOURCE
#include "formats_internal.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mpk_json_num {
    uint64_t value;    /* exact value when kind is NUM_UINT */
    uint32_t at;       /* byte offset of the literal */
    unsigned char kind;
};

enum { NUM_UINT, NUM_NEGATIVE, NUM_FRACTION, NUM_EXPONENT, NUM_TOO_BIG };

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Checks the number literal at text[i..) against RFC 8259's grammar; *end gets its end. */
static bool number_literal(const char *t, size_t len, size_t i, size_t *end, mpk_json_num *num)
{
    num->at = (uint32_t)i;
    num->kind = NUM_UINT;
    num->value = 0;
    if (t[i] == '-') {
        num->kind = NUM_NEGATIVE;
        i++;
    }
    if (i >= len || !is_digit(t[i]))
        return false;
    if (t[i] == '0' && i + 1 < len && is_digit(t[i + 1]))
        return false; /* leading zero */
    for (; i < len && is_digit(t[i]); i++) {
        unsigned d = (unsigned)(t[i] - '0');
        if (num->value > (UINT64_MAX - d) / 10) {
            if (num->kind == NUM_UINT)
                num->kind = NUM_TOO_BIG;
        } else {
            num->value = num->value * 10 + d;
        }
    }
    if (i < len && t[i] == '.') {
        if (++i >= len || !is_digit(t[i]))
            return false;
        while (i < len && is_digit(t[i]))
            i++;
        if (num->kind != NUM_NEGATIVE)
            num->kind = NUM_FRACTION;
    }
    if (i < len && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        if (i < len && (t[i] == '+' || t[i] == '-'))
            i++;
        if (i >= len || !is_digit(t[i]))
            return false;
        while (i < len && is_digit(t[i]))
            i++;
        if (num->kind != NUM_NEGATIVE)
            num->kind = NUM_EXPONENT;
    }
    *end = i;
    return true;
}

/* Gives each number node, in document order (the order of the literals), its record's index
 * in valueint (unused otherwise: the trees are ours). */
static bool number_index(cJSON *node, size_t *next, size_t n)
{
    for (; node; node = node->next) {
        if (cJSON_IsNumber(node)) {
            if (*next >= n)
                return false;
            node->valueint = (int)(*next)++;
        } else if (node->child && !number_index(node->child, next, n)) {
            return false;
        }
    }
    return true;
}

#define BAD(...) return mpk_error_set(err, code, 0, where, __VA_ARGS__)

static mpk_status scan(const char *t, size_t len, mpk_status code, const char *where,
                       const char *what, mpk_json_num **nums, size_t *n_nums, mpk_error *err)
{
    size_t cap = 0, n = 0;
    mpk_json_num *v = NULL;
    mpk_status s = MPK_OK;
    if (len >= 3 && memcmp(t, "\xEF\xBB\xBF", 3) == 0)
        BAD("%s starts with a byte-order mark (U+FEFF), which JSON text must not", what);
    int depth = 0;
    for (size_t i = 0; i < len && s == MPK_OK;) {
        char c = t[i];
        if (c == '"') {
            for (i++; i < len && t[i] != '"'; i++) {
                unsigned char b = (unsigned char)t[i];
                if (b < 0x20) {
                    s = mpk_error_set(err, code, 0, where, "%s has a raw control character 0x%02x "
                                      "inside a string (byte %zu); it must be escaped", what, b, i);
                    break;
                }
                if (b == '\\' && i + 1 < len) {
                    if (t[i + 1] == 'u' && i + 5 < len && memcmp(t + i + 2, "0000", 4) == 0) {
                        s = mpk_error_set(err, code, 0, where, "%s has an escaped NUL (\\u0000) "
                                          "inside a string (byte %zu): names and values may not "
                                          "contain NUL", what, i);
                        break;
                    }
                    i++;
                }
            }
            i++;
        } else if (c == '[' || c == '{') {
            if (++depth >= MPK_JSON_MAX_DEPTH)
                s = mpk_error_set(err, code, 0, where, "%s nests arrays and objects %d deep at byte "
                                  "%zu (the reference reader stops at %d)", what, depth, i,
                                  MPK_JSON_MAX_DEPTH);
            i++;
        } else if (c == ']' || c == '}') {
            depth--;
            i++;
        } else if (c == '-' || is_digit(c)) {
            mpk_json_num num;
            size_t end;
            if (!number_literal(t, len, i, &end, &num)) {
                s = mpk_error_set(err, code, 0, where, "%s has a malformed number at byte %zu "
                                  "(JSON numbers have no leading zeros, '+' or bare '.')", what, i);
                break;
            }
            if (nums) {
                mpk_json_num *g = n < INT_MAX ? mpk_grow(v, n, &cap, sizeof *v, 64) : NULL;
                if (!g) {
                    s = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
                    break;
                }
                v = g;
                v[n++] = num;
            }
            i = end;
        } else {
            i++;
        }
    }
    if (s != MPK_OK || !nums) {
        free(v);
        return s;
    }
    *nums = v;
    *n_nums = n;
    return MPK_OK;
}

size_t mpk_json_count_tokens(const char *t, size_t len, int *max_depth)
{
    size_t n = 0;
    int depth = 0, deepest = 0;
    for (size_t i = 0; i < len;) {
        char c = t[i];
        if (c == '"') { /* a string (key or value): one token, its bytes skipped */
            n++;
            for (i++; i < len && t[i] != '"'; i++)
                if (t[i] == '\\')
                    i++;
            i++;
        } else if (c == '[' || c == '{') {
            n++;
            if (++depth > deepest)
                deepest = depth;
            i++;
        } else if (c == ']' || c == '}') {
            depth--;
            i++;
        } else if (c == '-' || is_digit(c) || c == 't' || c == 'f' || c == 'n') {
            n++; /* a number or a literal: to its end */
            while (i < len && t[i] != ',' && t[i] != ']' && t[i] != '}' && t[i] != ' ' && t[i] != '\n' &&
                   t[i] != '\t' && t[i] != '\r' && t[i] != '"' && t[i] != '[' && t[i] != '{')
                i++;
        } else {
            i++;
        }
    }
    if (max_depth)
        *max_depth = deepest;
    return n;
}

mpk_status mpk_json_parse(const char *text, size_t len, mpk_status code, const char *where,
                          const char *what, mpk_json **out, mpk_error *err)
{
    *out = NULL;
    mpk_json *j = mpk_calloc(1, sizeof *j);
    if (!j)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    mpk_status s = scan(text, len, code, where, what, &j->nums, &j->n_nums, err);
    if (s != MPK_OK) {
        free(j);
        return s;
    }
    unsigned long failed = mpk_alloc_failures();
    const char *end = NULL;
    j->root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!j->root) {
        size_t at = end ? (size_t)(end - text) : 0;
        const char *ep = cJSON_GetErrorPtr();
        if (ep && ep >= text && ep <= text + len)
            at = (size_t)(ep - text);
        mpk_json_free(j);
        if (mpk_alloc_failures() != failed)
            MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory parsing %s", what);
        BAD("%s is not valid JSON (near byte %zu)", what, at);
    }
    for (const char *p = end; p < text + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            mpk_json_free(j);
            BAD("%s has trailing garbage after the JSON value (byte %zu)", what, (size_t)(p - text));
        }
    size_t next = 0;
    if (!number_index(j->root, &next, j->n_nums) || next != j->n_nums) {
        size_t n_nums = j->n_nums;
        mpk_json_free(j);
        BAD("%s: internal: %zu number literals but a different count of number values", what, n_nums);
    }
    *out = j;
    return MPK_OK;
}

void mpk_json_free(mpk_json *j)
{
    if (!j)
        return;
    cJSON_Delete(j->root);
    free(j->nums);
    free(j);
}

cJSON *mpk_json_take(mpk_json *j)
{
    cJSON *root = j->root;
    j->root = NULL;
    mpk_json_free(j);
    return root;
}

const char *mpk_json_uint(const mpk_json *j, const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return "is not a number";
    const mpk_json_num *n = &j->nums[v->valueint];
    switch (n->kind) {
    case NUM_UINT:
        *out = n->value;
        return NULL;
    case NUM_NEGATIVE:
        return "is negative";
    case NUM_FRACTION:
        return "is not an integer (it has a fraction)";
    case NUM_EXPONENT:
        return "is not an integer literal (it has an exponent)";
    default:
        return "does not fit in 64 bits";
    }
}

bool mpk_json_num_in(const cJSON *v, double lo, double hi, long long *out)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi) || (double)(long long)d != d) /* in range first: no UB cast */
        return false;
    *out = (long long)d;
    return true;
}

/* ---------------------------------------------------------------- printing */

/* v at depth d the way Python's json.dumps(indent=2) writes it (what Hugging Face tools write):
 * two spaces per level, "key": value, one member or element per line, {} and [] when empty.
 * Scalars are cJSON's own text. */
static bool print_indented(FILE *f, const cJSON *v, int d)
{
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        bool obj = cJSON_IsObject(v);
        if (!v->child)
            return fputs(obj ? "{}" : "[]", f) >= 0;
        fputc(obj ? '{' : '[', f);
        for (const cJSON *c = v->child; c; c = c->next) {
            fprintf(f, "\n%*s", 2 * (d + 1), "");
            if (obj) {
                cJSON *key = cJSON_CreateString(c->string);
                char *k = key ? cJSON_PrintUnformatted(key) : NULL;
                cJSON_Delete(key);
                if (!k)
                    return false;
                fprintf(f, "%s: ", k);
                cJSON_free(k);
            }
            if (!print_indented(f, c, d + 1))
                return false;
            if (c->next)
                fputc(',', f);
        }
        fprintf(f, "\n%*s%c", 2 * d, "", obj ? '}' : ']');
        return true;
    }
    char *s = cJSON_PrintUnformatted(v);
    if (!s)
        return false;
    fputs(s, f);
    cJSON_free(s);
    return true;
}

char *mpk_json_print(const cJSON *v, bool newline)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    bool ok = print_indented(f, v, 0) && (!newline || fputc('\n', f) != EOF);
    if (fclose(f) != 0 || !ok) {
        free(buf);
        return NULL;
    }
    return buf;
}
