/* core.c — the bottom of moepack: status strings and error records, allocation (with the
 * failure-injection hook), the dtype table, tensor sizes, the arena, the string map, and small
 * helpers (natural order, human sizes, the synthetic-data generator). Depends on nothing of ours. */
#define _GNU_SOURCE
#include "mpk_core.h"

#include <ctype.h>
#include <stdatomic.h>
#include <time.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const status_names[] = {
    [MPK_OK] = "ok",
    [MPK_E_IO] = "io",
    [MPK_E_NOMEM] = "out-of-memory",
    [MPK_E_HEADER_TOO_SMALL] = "header-too-small",
    [MPK_E_HEADER_TOO_LARGE] = "header-too-large",
    [MPK_E_HEADER_LENGTH] = "invalid-header-length",
    [MPK_E_HEADER_UTF8] = "header-not-utf8",
    [MPK_E_HEADER_JSON] = "header-not-json",
    [MPK_E_HEADER_NOT_OBJECT] = "header-not-object",
    [MPK_E_DTYPE] = "unknown-dtype",
    [MPK_E_FIELD_MISSING] = "missing-field",
    [MPK_E_FIELD_TYPE] = "mistyped-field",
    [MPK_E_NUMBER] = "invalid-number",
    [MPK_E_OFFSETS_ARITY] = "data-offsets-arity",
    [MPK_E_OFFSETS_LAYOUT] = "data-offsets-layout",
    [MPK_E_SIZE_OVERFLOW] = "size-overflow",
    [MPK_E_SIZE_MISMATCH] = "size-mismatch",
    [MPK_E_DATA_LENGTH] = "data-length",
    [MPK_E_DUPLICATE_NAME] = "duplicate-tensor-name",
    [MPK_E_DUPLICATE_METADATA] = "duplicate-metadata",
    [MPK_E_METADATA] = "invalid-metadata",
    [MPK_E_SUBBYTE] = "sub-byte-size",
    [MPK_E_RANK] = "rank-too-large",
    [MPK_E_INDEX] = "invalid-index",
    [MPK_E_INDEX_PATH] = "unsafe-shard-name",
    [MPK_E_INDEX_MISSING] = "index-tensor-missing",
    [MPK_E_INDEX_EXTRA] = "shard-tensor-unlisted",
    [MPK_E_NOT_FOUND] = "not-found",
    [MPK_E_DUPLICATE_TENSOR] = "duplicate-tensor-across-shards",
    [MPK_E_USAGE] = "usage",
    [MPK_E_SPEC] = "invalid-spec",
    [MPK_E_PRESET] = "preset",
    [MPK_E_EXPERT_MISSING] = "expert-missing",
    [MPK_E_SHAPE] = "shape-mismatch",
    [MPK_E_DTYPE_MISMATCH] = "dtype-mismatch",
    [MPK_E_DST_EXISTS] = "destination-exists",
    [MPK_E_OP] = "invalid-op",
    [MPK_E_CONFIG] = "invalid-config",
    [MPK_E_MEMORY_BUDGET] = "memory-budget",
    [MPK_E_CONFLICT] = "target-conflict",
    [MPK_E_ALREADY_CONVERTED] = "already-converted",
    [MPK_E_QUANT] = "quant-layout",
    [MPK_E_MANIFEST] = "manifest",
    [MPK_E_OVERLAP] = "overlap",
    [MPK_E_CHANGED] = "source-changed",
    [MPK_E_CANCELLED] = "cancelled",
    [MPK_E_CONTAINER] = "bad-container",
    [MPK_E_DST_FOREIGN] = "destination-not-checkpoint",
    [MPK_E_NOT_UNDERSTOOD] = "not-understood",
    [MPK_E_NOT_INVERTIBLE] = "not-invertible",
};
_Static_assert(sizeof status_names / sizeof status_names[0] == MPK_STATUS_COUNT,
               "status_names must cover every mpk_status");

const char *mpk_status_str(mpk_status s)
{
    if ((unsigned)s >= MPK_STATUS_COUNT || !status_names[s])
        return "unknown-status";
    return status_names[s];
}

mpk_status mpk_error_set(mpk_error *err, mpk_status code, int sys_errno, const char *where,
                         const char *fmt, ...)
{
    if (!err)
        return code;
    err->code = code;
    err->sys_errno = sys_errno;
    err->field = MPK_FIELD_NONE;
    snprintf(err->where, sizeof err->where, "%s", where ? where : "");
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (where && *where)
        snprintf(err->msg, sizeof err->msg, "%s: %s", where, what);
    else
        snprintf(err->msg, sizeof err->msg, "%s", what);
    return code;
}

mpk_status mpk_error_about(mpk_error *err, mpk_field field, mpk_status code)
{
    if (err)
        err->field = field;
    return code;
}

static const char *const field_names[] = {
    [MPK_FIELD_NONE] = "",
    [MPK_FIELD_FORCE] = "force",
    [MPK_FIELD_RESUME] = "resume",
    [MPK_FIELD_COPY_LINKS] = "copy_links",
    [MPK_FIELD_PASS_UNKNOWN] = "pass_unknown",
    [MPK_FIELD_MEM] = "mem",
    [MPK_FIELD_THREADS] = "threads",
    [MPK_FIELD_SPEC] = "spec",
    [MPK_FIELD_QUANT] = "quant",
    [MPK_FIELD_REVISION] = "revision",
    [MPK_FIELD_DST] = "dst",
    [MPK_FIELD_COMPRESS_LEVEL] = "compress_level",
};
_Static_assert(sizeof field_names / sizeof field_names[0] == MPK_FIELD_COUNT, "one name per mpk_field");

const char *mpk_field_name(mpk_field f)
{
    return (unsigned)f < MPK_FIELD_COUNT ? field_names[f] : NULL;
}

/* ---------------------------------------------------------------- tuning */

static mpk_tuning tuned; /* all zero: the defaults */

void mpk_tuning_init(mpk_tuning *t)
{
    memset(t, 0, sizeof *t);
}

void mpk_tune(const mpk_tuning *t)
{
    if (t)
        tuned = *t;
    else
        mpk_tuning_init(&tuned);
}

const mpk_tuning *mpk_tuning_now(void)
{
    return &tuned;
}

const char *mpk_error_what(const mpk_error *err)
{
    size_t wl = strlen(err->where);
    if (wl && strncmp(err->msg, err->where, wl) == 0 && err->msg[wl] == ':')
        return err->msg + wl + 1 + (err->msg[wl + 1] == ' ');
    return err->msg;
}

/* ---------------------------------------------------------------- allocation */

long mpk_alloc_fail_countdown = 0, mpk_alloc_passed = 0;

static _Thread_local unsigned long alloc_failures;

unsigned long mpk_alloc_failures(void)
{
    return alloc_failures;
}

static void *counted(void *p)
{
    if (!p)
        alloc_failures++;
    return p;
}

static bool alloc_should_fail(void)
{
    __atomic_fetch_add(&mpk_alloc_passed, 1, __ATOMIC_RELAXED);
    return __atomic_load_n(&mpk_alloc_fail_countdown, __ATOMIC_RELAXED) > 0 &&
           __atomic_fetch_sub(&mpk_alloc_fail_countdown, 1, __ATOMIC_RELAXED) == 1;
}

void *mpk_alloc(size_t n)
{
    return counted(alloc_should_fail() ? NULL : malloc(n ? n : 1));
}

void *mpk_calloc(size_t n, size_t size)
{
    return counted(alloc_should_fail() ? NULL : calloc(n ? n : 1, size ? size : 1));
}

void *mpk_realloc(void *p, size_t n)
{
    return counted(alloc_should_fail() ? NULL : realloc(p, n ? n : 1));
}

void *mpk_grow(void *items, size_t n, size_t *cap, size_t elem, size_t first_cap)
{
    if (n < *cap)
        return items;
    size_t c = *cap ? *cap * 2 : first_cap;
    void *p = mpk_realloc(items, c * elem);
    if (p)
        *cap = c;
    return p;
}

char *mpk_strndup(const char *s, size_t n)
{
    char *d = mpk_alloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

bool mpk_str_ends(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* ---------------------------------------------------------------- dtypes */

/* The one dtype table: name, bits per element, and what the kernels can do with it (F: a float
 * they compute in, 8: an FP8 format they encode and decode). */
static const struct {
    const char *name;
    int bits;
    char kind; /* 'F', '8' or 0 */
} dtype_table[] = {
    [MPK_DTYPE_BOOL] = {"BOOL", 8, 0},           [MPK_DTYPE_F4] = {"F4", 4, 0},
    [MPK_DTYPE_F6_E2M3] = {"F6_E2M3", 6, 0},     [MPK_DTYPE_F6_E3M2] = {"F6_E3M2", 6, 0},
    [MPK_DTYPE_U8] = {"U8", 8, 0},               [MPK_DTYPE_I8] = {"I8", 8, 0},
    [MPK_DTYPE_F8_E5M2] = {"F8_E5M2", 8, '8'},   [MPK_DTYPE_F8_E4M3] = {"F8_E4M3", 8, '8'},
    [MPK_DTYPE_F8_E8M0] = {"F8_E8M0", 8, 0},     [MPK_DTYPE_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8, 0},
    [MPK_DTYPE_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8, 0},
    [MPK_DTYPE_I16] = {"I16", 16, 0},            [MPK_DTYPE_U16] = {"U16", 16, 0},
    [MPK_DTYPE_F16] = {"F16", 16, 'F'},          [MPK_DTYPE_BF16] = {"BF16", 16, 'F'},
    [MPK_DTYPE_I32] = {"I32", 32, 0},            [MPK_DTYPE_U32] = {"U32", 32, 0},
    [MPK_DTYPE_F32] = {"F32", 32, 'F'},          [MPK_DTYPE_C64] = {"C64", 64, 0},
    [MPK_DTYPE_F64] = {"F64", 64, 0},            [MPK_DTYPE_I64] = {"I64", 64, 0},
    [MPK_DTYPE_U64] = {"U64", 64, 0},
};
_Static_assert(sizeof dtype_table / sizeof dtype_table[0] == MPK_DTYPE_COUNT,
               "dtype_table must cover every mpk_dtype");

const char *mpk_dtype_name(mpk_dtype d)
{
    return (unsigned)d < MPK_DTYPE_COUNT ? dtype_table[d].name : NULL;
}

int mpk_dtype_bits(mpk_dtype d)
{
    return (unsigned)d < MPK_DTYPE_COUNT ? dtype_table[d].bits : 0;
}

size_t mpk_dtype_size(mpk_dtype d)
{
    int b = mpk_dtype_bits(d);
    return b % 8 ? 0 : (size_t)b / 8;
}

bool mpk_dtype_is_float(mpk_dtype d)
{
    return (unsigned)d < MPK_DTYPE_COUNT && dtype_table[d].kind == 'F';
}

bool mpk_dtype_is_fp8(mpk_dtype d)
{
    return (unsigned)d < MPK_DTYPE_COUNT && dtype_table[d].kind == '8';
}

bool mpk_dtype_parse(const char *s, size_t len, mpk_dtype *out)
{
    for (int i = 0; i < MPK_DTYPE_COUNT; i++) {
        if (strlen(dtype_table[i].name) == len && memcmp(dtype_table[i].name, s, len) == 0) {
            *out = (mpk_dtype)i;
            return true;
        }
    }
    return false;
}

uint64_t mpk_prod(const int64_t *shape, int from, int to)
{
    uint64_t p = 1;
    for (int i = from; i < to; i++)
        p *= (uint64_t)shape[i];
    return p;
}

uint64_t mpk_numel(const int64_t *shape, int ndim)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(n, (uint64_t)shape[i], &n))
            return 0;
    return n;
}

mpk_status mpk_tensor_nbytes(mpk_dtype d, const int64_t *shape, int ndim, uint64_t *out)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, (uint64_t)shape[i], &n))
            return MPK_E_SIZE_OVERFLOW;
    }
    uint64_t bits;
    if (__builtin_mul_overflow(n, (uint64_t)mpk_dtype_bits(d), &bits))
        return MPK_E_SIZE_OVERFLOW;
    if (bits % 8)
        return MPK_E_SUBBYTE;
    *out = bits / 8;
    return MPK_OK;
}

char *mpk_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, o < cap ? cap - o : 0, "[");
    for (int i = 0; i < ndim; i++)
        o += (size_t)snprintf(buf + o, o < cap ? cap - o : 0, "%s%lld", i ? ", " : "",
                              (long long)shape[i]);
    snprintf(buf + o, o < cap ? cap - o : 0, "]");
    return buf;
}

/* ---------------------------------------------------------------- arena */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_block;

struct mpk_arena {
    arena_block *head;
};

mpk_arena *mpk_arena_new(void)
{
    return mpk_calloc(1, sizeof(mpk_arena));
}

void *mpk_arena_alloc(mpk_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        arena_block *b = mpk_alloc(sizeof(arena_block) + cap);
        if (!b)
            return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

char *mpk_arena_strndup(mpk_arena *a, const char *s, size_t n)
{
    char *d = mpk_arena_alloc(a, n + 1);
    if (d)
        memcpy(d, s, n);
    return d;
}

char *mpk_arena_printf(mpk_arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *d = mpk_arena_alloc(a, (size_t)n + 1);
    if (!d)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(d, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return d;
}

void mpk_arena_free(mpk_arena *a)
{
    if (!a)
        return;
    for (arena_block *b = a->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(a);
}

/* ---------------------------------------------------------------- string map */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

mpk_status mpk_strmap_init(mpk_strmap *m, size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2 + 16)
        cap *= 2;
    m->keys = mpk_calloc(cap, sizeof *m->keys);
    m->lens = mpk_calloc(cap, sizeof *m->lens);
    m->vals = mpk_calloc(cap, sizeof *m->vals);
    m->cap = cap;
    m->count = 0;
    if (!m->keys || !m->lens || !m->vals) {
        mpk_strmap_free(m);
        return MPK_E_NOMEM;
    }
    return MPK_OK;
}

static bool strmap_grow(mpk_strmap *m)
{
    mpk_strmap n;
    if (mpk_strmap_init(&n, m->cap) != MPK_OK)
        return false;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i])
            mpk_strmap_put(&n, m->keys[i], m->lens[i], m->vals[i], NULL);
    mpk_strmap_free(m);
    *m = n;
    return true;
}

bool mpk_strmap_put(mpk_strmap *m, const char *key, size_t len, size_t val, size_t *existing)
{
    if ((m->count + 1) * 2 > m->cap && !strmap_grow(m))
        return false; /* caller sees "not inserted"; only on OOM with a huge map */
    size_t mask = m->cap - 1;
    for (size_t i = hash_bytes(key, len) & mask;; i = (i + 1) & mask) {
        if (!m->keys[i]) {
            m->keys[i] = key;
            m->lens[i] = len;
            m->vals[i] = val;
            m->count++;
            return false;
        }
        if (m->lens[i] == len && memcmp(m->keys[i], key, len) == 0) {
            if (existing)
                *existing = m->vals[i];
            return true;
        }
    }
}

bool mpk_strmap_get(const mpk_strmap *m, const char *key, size_t len, size_t *val)
{
    if (!m->cap)
        return false;
    size_t mask = m->cap - 1;
    for (size_t i = hash_bytes(key, len) & mask; m->keys[i]; i = (i + 1) & mask) {
        if (m->lens[i] == len && memcmp(m->keys[i], key, len) == 0) {
            *val = m->vals[i];
            return true;
        }
    }
    return false;
}

void mpk_strmap_free(mpk_strmap *m)
{
    free(m->keys);
    free(m->lens);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

int mpk_natural_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            const char *sa = a, *sb = b;
            while (*sa == '0' && isdigit((unsigned char)sa[1]))
                sa++;
            while (*sb == '0' && isdigit((unsigned char)sb[1]))
                sb++;
            const char *ea = sa, *eb = sb;
            while (isdigit((unsigned char)*ea))
                ea++;
            while (isdigit((unsigned char)*eb))
                eb++;
            if (ea - sa != eb - sb)
                return ea - sa < eb - sb ? -1 : 1;
            int c = memcmp(sa, sb, (size_t)(ea - sa));
            if (c)
                return c < 0 ? -1 : 1;
            /* equal value: fewer leading zeros first, then continue */
            if ((ea - a) != (eb - b))
                return (ea - a) < (eb - b) ? -1 : 1;
            a = ea;
            b = eb;
            continue;
        }
        if (*a != *b)
            return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
        a++;
        b++;
    }
    return *a ? 1 : (*b ? -1 : 0);
}

const char *mpk_human_bytes(uint64_t n, char *buf, size_t cap)
{
    static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)n;
    int i = 0;
    while (v >= 1024 && i < 5) {
        v /= 1024;
        i++;
    }
    if (i == 0)
        snprintf(buf, cap, "%llu B", (unsigned long long)n);
    else
        snprintf(buf, cap, "%.2f %s", v, u[i]);
    return buf;
}


uint64_t mpk_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull; /* a zero state would stay zero */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 2685821657736338717ull;
}

/* ---------------------------------------------------------------- progress meter */

uint64_t mpk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void mpk_meter_start(mpk_meter *m, void (*fn)(void *, uint64_t, uint64_t, double), void *ctx, uint64_t total)
{
    m->fn = fn;
    m->ctx = ctx;
    m->total = total;
    m->t0_ns = mpk_now_ns();
    atomic_init(&m->done, 0);
    atomic_init(&m->next_ns, m->t0_ns + 200000000ull);
    atomic_init(&m->busy, 0);
    m->cancel = NULL;
}

mpk_status mpk_meter_check(const mpk_meter *m, const char *where, mpk_error *err)
{
    if (m && m->cancel && *m->cancel)
        return mpk_error_set(err, MPK_E_CANCELLED, 0, where, "cancelled");
    return MPK_OK;
}

void mpk_meter_add(mpk_meter *m, uint64_t bytes)
{
    if (!m)
        return;
    uint64_t done = atomic_fetch_add(&m->done, bytes) + bytes, t;
    if (!m->fn)
        return;
    t = mpk_now_ns();
    if (t < atomic_load(&m->next_ns) || atomic_exchange(&m->busy, 1))
        return;
    atomic_store(&m->next_ns, t + 200000000ull);
    m->fn(m->ctx, done < m->total ? done : m->total, m->total, (double)(t - m->t0_ns) * 1e-9);
    atomic_store(&m->busy, 0);
}

void mpk_meter_end(mpk_meter *m)
{
    if (m && m->fn)
        m->fn(m->ctx, m->total, m->total, (double)(mpk_now_ns() - m->t0_ns) * 1e-9);
}
