/* mpk_core.h — the bottom of moepack, below formats: status codes and error records (the
 * public ones, from moepack/moepack.h, plus how to raise them), allocation with its
 * failure-injection hook, the one dtype table (name, bits, size, float, FP8), tensor sizes,
 * the arena and the string map. Depends on nothing of ours but the public header. Nothing
 * here calls exit() or abort(). */
#ifndef MPK_CORE_H
#define MPK_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moepack/moepack.h" /* mpk_status, mpk_error, mpk_dtype, mpk_io_backend */

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status and errors */

/* Fills err (NULL-safe) with code and a printf-style message prefixed by where (may be
 * NULL or ""); returns code so that callers can `return mpk_error_set(...)`. */
mpk_status mpk_error_set(mpk_error *err, mpk_status code, int sys_errno, const char *where,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Fail with a formatted message. */
#define MPK_FAIL(err, code, where, ...) return mpk_error_set((err), (code), 0, (where), __VA_ARGS__)
/* Records in err (NULL-safe) the request field its hint is about; returns code:
 * `return mpk_error_about(err, MPK_FIELD_FORCE, mpk_error_set(err, ...))`. */
mpk_status mpk_error_about(mpk_error *err, mpk_field field, mpk_status code);
/* Fail with a formatted message whose way out is request field `field`. */
#define MPK_FAIL_ABOUT(err, field, code, where, ...) \
    return mpk_error_about((err), (field), mpk_error_set((err), (code), 0, (where), __VA_ARGS__))
/* The process-wide measurement switches mpk_tune() set (the defaults until it is called). */
const mpk_tuning *mpk_tuning_now(void);

/* Forward a failing status. */
#define MPK_TRY(expr)                       \
    do {                                    \
        mpk_status mpk_try_s_ = (expr);     \
        if (mpk_try_s_ != MPK_OK)           \
            return mpk_try_s_;              \
    } while (0)

/* Test hook: when > 0, the Nth following mpk_alloc() call fails (1 = the next);
 * mpk_alloc_passed counts the calls (both updated with __atomic builtins). */
extern long mpk_alloc_fail_countdown, mpk_alloc_passed;
/* malloc/calloc/realloc wrappers honouring the hook; free with free(). */
void *mpk_alloc(size_t n);
void *mpk_calloc(size_t n, size_t size);
void *mpk_realloc(void *p, size_t n);
/* Room for element n of a doubling array of elem-sized items with *cap slots: items itself
 * while n < *cap, else the array grown to twice *cap (first_cap when empty) with *cap updated.
 * NULL on allocation failure (items and *cap unchanged, still owned by the caller). */
void *mpk_grow(void *items, size_t n, size_t *cap, size_t elem, size_t first_cap);
char *mpk_strndup(const char *s, size_t n);
/* Whether s ends with suffix. */
bool mpk_str_ends(const char *s, const char *suffix);
/* How many allocations through the wrappers above failed on this thread so far (a parser
 * that cannot tell why it failed compares this before and after). */
unsigned long mpk_alloc_failures(void);

/* ---------------------------------------------------------------- dtypes */

/* Bits per element (4, 6, 8, 16, 32, 64); 0 for an out-of-range value. */
int mpk_dtype_bits(mpk_dtype d);
/* Element size in bytes (0 for sub-byte dtypes). */
size_t mpk_dtype_size(mpk_dtype d);
/* F16, BF16, F32: the floats the CPU kernels compute in. */
bool mpk_dtype_is_float(mpk_dtype d);
/* F8_E4M3, F8_E5M2: the FP8 formats the kernels encode and decode. */
bool mpk_dtype_is_fp8(mpk_dtype d);
/* Parses a dtype name of len bytes; false if unknown. */
bool mpk_dtype_parse(const char *s, size_t len, mpk_dtype *out);


/* Byte size of a tensor; MPK_E_SIZE_OVERFLOW or MPK_E_SUBBYTE on failure (no message). */
mpk_status mpk_tensor_nbytes(mpk_dtype d, const int64_t *shape, int ndim, uint64_t *out);
/* Product of shape[from..to) (unchecked: for shapes whose byte size was checked). */
uint64_t mpk_prod(const int64_t *shape, int from, int to);
/* Element count (0 on overflow, check with nbytes first). */
uint64_t mpk_numel(const int64_t *shape, int ndim);
/* Formats "[2, 3, 4]" into buf; returns buf. */
char *mpk_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap);

/* ---------------------------------------------------------------- arena and string map */

typedef struct mpk_arena mpk_arena;
/* New arena; NULL on allocation failure. Free with mpk_arena_free (NULL-safe). */
mpk_arena *mpk_arena_new(void);
/* n bytes, 16-aligned, zeroed; NULL on failure. Not thread-safe. */
void *mpk_arena_alloc(mpk_arena *a, size_t n);
char *mpk_arena_strndup(mpk_arena *a, const char *s, size_t n);
char *mpk_arena_printf(mpk_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mpk_arena_free(mpk_arena *a);

/* Open-addressing map from string keys (borrowed, must outlive the map) to size_t. */
typedef struct mpk_strmap {
    const char **keys;
    size_t *lens;
    size_t *vals;
    size_t cap, count;
} mpk_strmap;
mpk_status mpk_strmap_init(mpk_strmap *m, size_t expected);
/* Inserts key -> val. Returns true and leaves the old value when the key exists
 * (*existing set to it, if non-NULL); false when inserted. */
bool mpk_strmap_put(mpk_strmap *m, const char *key, size_t len, size_t val, size_t *existing);
/* Looks key up; true and *val when found. */
bool mpk_strmap_get(const mpk_strmap *m, const char *key, size_t len, size_t *val);
void mpk_strmap_free(mpk_strmap *m);

/* xorshift64* step: deterministic pseudo-random numbers for synthetic data (a zero state is
 * replaced by a fixed nonzero one). */
uint64_t mpk_rand(uint64_t *state);

/* Natural-order compare: digit runs compare as numbers ("experts.2" < "experts.10"). */
int mpk_natural_cmp(const char *a, const char *b);

/* Monotonic nanoseconds. */
uint64_t mpk_now_ns(void);

typedef struct mpk_meter mpk_meter;
#ifndef __cplusplus /* C11 atomics: C only (the CUDA code includes this header as C++) */
/* Progress of a long read (hash, verify, compress): bytes done of a total, told to fn at most
 * about 5 times a second and once at the end, from whichever thread adds bytes (one at a time).
 * With a NULL fn nothing is told; done still counts. */
struct mpk_meter {
    void (*fn)(void *ctx, uint64_t done, uint64_t total, double seconds);
    void *ctx;
    uint64_t total;
    _Atomic uint64_t done;
    _Atomic uint64_t next_ns;    /* no report before this time */
    _Atomic int busy;            /* a report is being made */
    uint64_t t0_ns;
    const volatile int *cancel;  /* non-NULL and raised: mpk_meter_check says MPK_E_CANCELLED */
};
void mpk_meter_start(mpk_meter *m, void (*fn)(void *, uint64_t, uint64_t, double), void *ctx, uint64_t total);
void mpk_meter_add(mpk_meter *m, uint64_t bytes);
/* The last report (done == total). */
void mpk_meter_end(mpk_meter *m);
/* MPK_E_CANCELLED (err filled, naming where) when m's cancel flag is raised, else MPK_OK: the
 * long reads call it as they count, so a caller's flag stops them. NULL m: MPK_OK. */
mpk_status mpk_meter_check(const mpk_meter *m, const char *where, mpk_error *err);
#endif


/* ---------------------------------------------------------------- MPI ranks (dist.c) */

/* One job across MPI ranks; without MPI, or not started by a launcher, one rank and no-ops.
 * Every function marked collective is entered by every rank, in the same order. */
int mpk_dist_begin(int *argc, char ***argv); /* joins the job when launched; the number of ranks */
void mpk_dist_end(void);                 /* MPI_Finalize (once) */
void mpk_dist_solo(void);                /* from now on this process works alone (size 1) */
int mpk_dist_rank(void);
int mpk_dist_size(void);                 /* ranks working together: 1 when not distributed */
/* Threads to use by default: the CPUs this process may run on (a launcher may have bound it to
 * a few), or, when it may run on all, the host's CPUs divided among the ranks on the host. */
int mpk_default_threads(void);
/* Collective: MPK_OK on every rank when every rank passed MPK_OK; else every rank gets, in
 * *err, the error of the lowest failing rank (its message naming that rank and host). */
mpk_status mpk_dist_agree(mpk_status s, mpk_error *err);
/* The same, giving up (MPK_E_CANCELLED, and MPI is not finalized) when *cancel is raised
 * while it waits for the others. */
mpk_status mpk_dist_agree_watch(mpk_status s, mpk_error *err, const volatile int *cancel);
void mpk_dist_bcast(void *buf, size_t len, int root);   /* collective */
typedef enum { MPK_DIST_XOR, MPK_DIST_SUM, MPK_DIST_MIN } mpk_dist_op;
/* Collective: v[0..n) combined element-wise over the ranks, in place on every rank. */
void mpk_dist_reduce(uint64_t *v, size_t n, mpk_dist_op op);
/* Collective: every rank's len bytes, in rank order, to every rank (*all: malloc'd). */
mpk_status mpk_dist_allgatherv(const void *mine, size_t len, char **all, size_t *all_len, mpk_error *err);
/* Whether this rank takes a piece of work of `bytes` (pieces go, in the same order on every
 * rank, to the least loaded of the size ranks, load[] their bytes so far); with load NULL (one
 * process) every piece is this process's. */
bool mpk_dist_mine(uint64_t *load, uint64_t bytes);

typedef struct mpk_rank_stats {
    int rank;
    char host[64];
    uint64_t bytes_read, bytes_written;
    double seconds;
} mpk_rank_stats;
/* Collective: what each rank did (this rank's figures given), on rank 0 (*n of them,
 * free()), elsewhere NULL; NULL when not started by a launcher. _meter: the bytes a meter
 * counted, read in the time since it started. */
mpk_rank_stats *mpk_dist_stats(uint64_t bytes_read, uint64_t bytes_written, double seconds, int *n);
mpk_rank_stats *mpk_dist_stats_meter(const mpk_meter *m, int *n);

#ifdef __cplusplus
}
#endif
#endif
