/* reorder.c — the ops that reorder or join slices without computing, beyond merge/split/concat/
 * chunk: interleave, permute_for_rope, concat_list, chunk_list (their op table rows in
 * optable.c point here). Each is a byte permutation: the executor copies the ranges given here,
 * so none holds a tensor in memory, and each has an exact inverse (the reverse permutation),
 * so a conversion through them round-trips byte for byte.
 *
 * The semantics are transformers v5's (core_model_loading.py, 5.17):
 *   Interleave(dim, inverse)     tensor.reshape(.., n/2, 2, ..).transpose(dim, dim+1) (inverse:
 *                                reshape(.., 2, n/2, ..)), back to the original shape;
 *   PermuteForRope(subconfig_key, inverse, permute_layer_names)
 *                                per tensor whose key holds one of permute_layer_names, rows
 *                                viewed [heads, rows/heads/2, 2, ..] and dims 1, 2 swapped
 *                                (inverse: [heads, 2, rows/heads/2, ..]); heads is
 *                                config[.subconfig_key].num_attention_heads; 2-D weights and
 *                                1-D biases alike;
 *   Concatenate(dim, num_shards_attribute) on one list pattern: torch.cat of its tensors (the
 *                                shard count, config.<num_shards_attribute>, is what its
 *                                reverse Chunk cuts into). */
#define _GNU_SOURCE
#include "mpk_ops.h"
#include "ops_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPEC_FAIL(path, ...) return mpk_error_set(err, MPK_E_SPEC, 0, where, "%s: " __VA_ARGS__)

/* ---------------------------------------------------------------- parsing */

static mpk_status get_bool(const cJSON *o, const char *key, bool *out, const char *where, const char *path,
                           mpk_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v)
        return MPK_OK;
    if (!cJSON_IsBool(v))
        SPEC_FAIL(path, "\"%s\" must be true or false", path, key);
    *out = cJSON_IsTrue(v);
    return MPK_OK;
}

static bool key_ok(const char *k)
{
    if (!*k || *k == '.' || k[strlen(k) - 1] == '.' || strstr(k, ".."))
        return false;
    for (const char *c = k; *c; c++)
        if (!(*c == '_' || *c == '.' || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              (*c >= '0' && *c <= '9')))
            return false;
    return true;
}

/* "key": a positive integer into *n, or config.json keys (a string or an array of strings, the
 * first present wins) into op->cfg_key, comma-joined. */
static mpk_status get_count(const cJSON *o, const char *key, int *n, mpk_op *op, bool required, const char *where,
                            const char *path, mpk_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNumber(v))
        return ops_get_int(o, key, 1, 1 << 20, n, required, where, path, err);
    const cJSON *e = cJSON_IsArray(v) ? v->child : v;
    if (!e)
        SPEC_FAIL(path, "\"%s\" is an empty list", path, key);
    for (; e; e = cJSON_IsArray(v) ? e->next : NULL) {
        size_t used = strlen(op->cfg_key);
        if (!cJSON_IsString(e) || !key_ok(e->valuestring))
            SPEC_FAIL(path, "\"%s\" must be an integer or config.json keys (\"vision_config.num_attention_heads\", or a "
                      "list of such keys)", path, key);
        if (used + strlen(e->valuestring) + 2 > sizeof op->cfg_key)
            SPEC_FAIL(path, "\"%s\": the config.json keys are too long (at most %zu characters together)", path, key,
                      sizeof op->cfg_key - 1);
        snprintf(op->cfg_key + used, sizeof op->cfg_key - used, "%s%s", used ? "," : "", e->valuestring);
    }
    return MPK_OK;
}

OPS_PARSE(interleave)
{
    MPK_TRY(ops_get_int(j, "dim", 0, MPK_MAX_DIMS - 1, &op->dim, true, where, path, err));
    return get_bool(j, "inverse", &op->inverse, where, path, err);
}

OPS_PARSE(permute_rope)
{
    op->dim = 0; /* it reorders rows */
    MPK_TRY(get_count(j, "heads", &op->heads, op, true, where, path, err));
    MPK_TRY(get_bool(j, "inverse", &op->inverse, where, path, err));
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(j, "groups");
    if (!g)
        return MPK_OK;
    if (!cJSON_IsArray(g) || !g->child)
        SPEC_FAIL(path, "\"groups\" must be a non-empty array of group numbers (0 = the first source or chunk)", path);
    for (const cJSON *e = g->child; e; e = e->next) {
        long long x;
        if (!mpk_json_num_in(e, 0, 31, &x))
            SPEC_FAIL(path, "\"groups\" must hold integers from 0 to 31", path);
        op->groups |= 1u << x;
    }
    return MPK_OK;
}

OPS_PARSE(concat_list)
{
    MPK_TRY(ops_get_int(j, "dim", 0, MPK_MAX_DIMS - 1, &op->dim, true, where, path, err));
    return get_count(j, "items", &op->chunks, op, false, where, path, err);
}

OPS_PARSE(chunk_list)
{
    MPK_TRY(ops_get_int(j, "dim", 0, MPK_MAX_DIMS - 1, &op->dim, true, where, path, err));
    return get_count(j, "items", &op->chunks, op, true, where, path, err);
}

int ops_format_reorder(const mpk_op *op, char *buf, size_t cap)
{
    const char *name = mpk_op_descs[op->kind].name, *inv = op->inverse ? ", inverse" : "";
    int n = op->kind == MPK_OP_PERMUTE_ROPE ? op->heads : op->chunks;
    char count[160];
    if (n > 0 || !op->cfg_key[0])
        snprintf(count, sizeof count, "%d", n);
    else
        snprintf(count, sizeof count, "%s", op->cfg_key);
    switch (op->kind) {
    case MPK_OP_INTERLEAVE:
        return snprintf(buf, cap, "%s(dim=%d%s)", name, op->dim, inv);
    case MPK_OP_PERMUTE_ROPE: {
        char gs[100] = "";
        for (int g = 0; g < 32; g++)
            if (op->groups >> g & 1)
                snprintf(gs + strlen(gs), sizeof gs - strlen(gs), "%s%d", gs[0] ? "," : ", groups=", g);
        return snprintf(buf, cap, "%s(heads=%s%s%s)", name, count, inv, gs);
    }
    default:
        if (op->kind == MPK_OP_CONCAT_LIST && !n && !op->cfg_key[0])
            return snprintf(buf, cap, "%s(dim=%d)", name, op->dim);
        return snprintf(buf, cap, "%s(dim=%d, items=%s)", name, op->dim, count);
    }
}

/* ---------------------------------------------------------------- config.json */

static const cJSON *json_path(const cJSON *o, const char *path, size_t len)
{
    char seg[128];
    while (o && len) {
        const char *dot = memchr(path, '.', len);
        size_t l = dot ? (size_t)(dot - path) : len;
        if (l >= sizeof seg)
            return NULL;
        memcpy(seg, path, l);
        seg[l] = 0;
        o = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, seg) : NULL;
        path += dot ? l + 1 : l;
        len -= dot ? l + 1 : l;
    }
    return o;
}

long mpk_op_config_value(const mpk_op *op, const cJSON *config)
{
    for (const char *k = op->cfg_key; config && *k;) {
        size_t l = strcspn(k, ",");
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(config, "text_config");
        const cJSON *roots[2] = {config, cJSON_IsObject(tc) ? tc : NULL};
        for (int r = 0; r < 2; r++) {
            long long x;
            const cJSON *v = roots[r] ? json_path(roots[r], k, l) : NULL;
            if (v && mpk_json_num_in(v, 1, 1 << 20, &x))
                return (long)x;
        }
        k += l + (k[l] == ',');
    }
    return -1;
}

void mpk_op_bind_config(mpk_op *op, const cJSON *config)
{
    if (!op->cfg_key[0])
        return;
    long v = mpk_op_config_value(op, config);
    if (op->kind == MPK_OP_PERMUTE_ROPE)
        op->heads = v > 0 ? (int)v : 0;
    else if (op->kind == MPK_OP_CONCAT_LIST || op->kind == MPK_OP_CHUNK_LIST)
        op->chunks = v > 0 ? (int)v : 0;
}

/* ---------------------------------------------------------------- inference */

static mpk_status same_meta(const mpk_bundle *in, mpk_bundle *out, mpk_arena *arena, mpk_error *err)
{
    size_t n = (size_t)(in->n_groups * in->n_items);
    out->n_groups = in->n_groups;
    out->n_items = in->n_items;
    out->t = mpk_arena_alloc(arena, sizeof(mpk_tmeta) * (n ? n : 1));
    if (!out->t)
        MPK_FAIL(err, MPK_E_NOMEM, "ops", "out of memory");
    memcpy(out->t, in->t, sizeof(mpk_tmeta) * n);
    return MPK_OK;
}

static mpk_status dim_in_range(const mpk_tmeta *t, int dim, const char *name, mpk_error *err)
{
    char sh[128];
    if (dim >= t->ndim)
        MPK_FAIL(err, MPK_E_OP, "ops", "%s: dim %d out of range for shape %s", name, dim,
                 mpk_shape_str(t->shape, t->ndim, sh, sizeof sh));
    return MPK_OK;
}

/* "config.json key 'a' (or 'b')" for messages about an unknown count. */
static const char *unknown_count(const mpk_op *op, char *buf, size_t cap)
{
    if (op->cfg_key[0])
        snprintf(buf, cap, "config.json gives none of %s", op->cfg_key);
    else
        snprintf(buf, cap, "the spec gives none");
    return buf;
}

OPS_INFER(interleave)
{
    char sh[128];
    for (int k = 0; k < in->n_groups * in->n_items; k++) {
        const mpk_tmeta *t = &in->t[k];
        MPK_TRY(dim_in_range(t, op->dim, "interleave", err));
        if (t->shape[op->dim] % 2)
            MPK_FAIL(err, MPK_E_SHAPE, "ops", "interleave: dim %d of %s is odd (it pairs slices)", op->dim,
                     mpk_shape_str(t->shape, t->ndim, sh, sizeof sh));
    }
    return same_meta(in, out, arena, err);
}

OPS_INFER(permute_rope)
{
    char sh[160];
    if (op->heads <= 0)
        MPK_FAIL(err, MPK_E_OP, "ops", "permute_for_rope: the number of heads is unknown (%s)",
                 unknown_count(op, sh, sizeof sh));
    if (in->n_groups < 32 && op->groups >> in->n_groups)
        MPK_FAIL(err, MPK_E_OP, "ops", "permute_for_rope: \"groups\" names a group beyond the %d there are",
                 in->n_groups);
    for (int k = 0; k < in->n_groups * in->n_items; k++) {
        const mpk_tmeta *t = &in->t[k];
        if (op->groups && !(op->groups >> (k / in->n_items) & 1))
            continue;
        if (t->ndim < 1 || t->shape[0] % (2 * (int64_t)op->heads))
            MPK_FAIL(err, MPK_E_SHAPE, "ops", "permute_for_rope: %s does not have rows in %d heads of an even size",
                     mpk_shape_str(t->shape, t->ndim, sh, sizeof sh), op->heads);
    }
    return same_meta(in, out, arena, err);
}

OPS_INFER(concat_list)
{
    char a[160], b[128];
    const int N = in->n_items;
    if (op->chunks > 0 && N != op->chunks)
        MPK_FAIL(err, MPK_E_SHAPE, "ops", "concat_list: %d items where %s says %d", N,
                 op->cfg_key[0] ? op->cfg_key : "the spec", op->chunks);
    out->n_groups = in->n_groups;
    out->n_items = 1;
    out->t = mpk_arena_alloc(arena, sizeof(mpk_tmeta) * (size_t)(in->n_groups > 0 ? in->n_groups : 1));
    if (!out->t)
        MPK_FAIL(err, MPK_E_NOMEM, "ops", "out of memory");
    for (int g = 0; g < in->n_groups; g++) {
        const mpk_tmeta *first = &in->t[g * N];
        MPK_TRY(dim_in_range(first, op->dim, "concat_list", err));
        for (int i = 1; i < N; i++) {
            const mpk_tmeta *t = &in->t[g * N + i];
            if (t->dtype != first->dtype)
                MPK_FAIL(err, MPK_E_DTYPE_MISMATCH, "ops", "concat_list: item %d is %s, item 0 is %s", i,
                         mpk_dtype_name(t->dtype), mpk_dtype_name(first->dtype));
            if (t->ndim != first->ndim || memcmp(t->shape, first->shape, sizeof(int64_t) * (size_t)t->ndim))
                MPK_FAIL(err, MPK_E_SHAPE, "ops", "concat_list: item %d has shape %s, item 0 has %s (equal "
                         "shapes, so that chunk_list can undo it)", i, mpk_shape_str(t->shape, t->ndim, a, sizeof a),
                         mpk_shape_str(first->shape, first->ndim, b, sizeof b));
        }
        out->t[g] = *first;
        if (__builtin_mul_overflow(first->shape[op->dim], (int64_t)N, &out->t[g].shape[op->dim]))
            MPK_FAIL(err, MPK_E_SIZE_OVERFLOW, "ops", "concat_list: dim %d of %d items overflows 64 bits", op->dim, N);
    }
    return MPK_OK;
}

OPS_INFER(chunk_list)
{
    char sh[160];
    if (in->n_items != 1)
        MPK_FAIL(err, MPK_E_OP, "ops", "chunk_list: needs one tensor per group, got %d", in->n_items);
    if (op->chunks <= 0)
        MPK_FAIL(err, MPK_E_OP, "ops", "chunk_list: the number of items is unknown (%s)",
                 unknown_count(op, sh, sizeof sh));
    const int c = op->chunks;
    out->n_groups = in->n_groups;
    out->n_items = c;
    out->t = mpk_arena_alloc(arena, sizeof(mpk_tmeta) * (size_t)(in->n_groups > 0 ? in->n_groups * c : 1));
    if (!out->t)
        MPK_FAIL(err, MPK_E_NOMEM, "ops", "out of memory");
    for (int g = 0; g < in->n_groups; g++) {
        const mpk_tmeta *t = &in->t[g];
        MPK_TRY(dim_in_range(t, op->dim, "chunk_list", err));
        if (t->shape[op->dim] % c)
            MPK_FAIL(err, MPK_E_SHAPE, "ops", "chunk_list: dim %d of %s does not cut into %d items", op->dim,
                     mpk_shape_str(t->shape, t->ndim, sh, sizeof sh), c);
        for (int i = 0; i < c; i++) {
            out->t[g * c + i] = *t;
            out->t[g * c + i].shape[op->dim] /= c;
        }
    }
    return MPK_OK;
}

mpk_status ops_inverse_reorder(const mpk_op *op, const mpk_bundle *in, mpk_op *inv, mpk_error *err)
{
    (void)err;
    *inv = *op;
    switch (op->kind) {
    case MPK_OP_INTERLEAVE:
    case MPK_OP_PERMUTE_ROPE:
        inv->inverse = !op->inverse;
        break;
    case MPK_OP_CONCAT_LIST: /* cut into as many items as there were (or as config.json says) */
        inv->kind = MPK_OP_CHUNK_LIST;
        if (in && in->n_items > 0)
            inv->chunks = in->n_items;
        break;
    default: /* chunk_list: join them again, checking the count */
        inv->kind = MPK_OP_CONCAT_LIST;
        break;
    }
    return MPK_OK;
}

/* ---------------------------------------------------------------- byte ranges */

#define EMIT(...)                                                                   \
    do {                                                                            \
        if (!fn(ctx, &(mpk_range){__VA_ARGS__}))                                    \
            MPK_FAIL(err, MPK_E_NOMEM, "ops", "out of memory");                     \
    } while (0)

/* Where slice q of n (n even) of the output comes from: forward, slice 2j + p of the input
 * lands at p * n/2 + j; inverse, the other way. */
static uint64_t pair_src(uint64_t q, uint64_t n, bool inverse)
{
    uint64_t half = n / 2;
    return inverse ? (q % 2) * half + q / 2 : 2 * (q % half) + q / half;
}

OPS_RANGES(interleave)
{
    (void)out;
    for (int k = 0; k < in->n_groups * in->n_items; k++) {
        const mpk_tmeta *t = &in->t[k];
        uint64_t inner = 0, n = (uint64_t)t->shape[op->dim], outer = mpk_prod(t->shape, 0, op->dim);
        MPK_TRY(ops_inner_bytes(t, op->dim + 1, &inner, "interleave", err));
        for (uint64_t o = 0; o < outer; o++)
            for (uint64_t q = 0; q < n; q++)
                EMIT(.src = k, .src_off = (o * n + pair_src(q, n, op->inverse)) * inner, .dst = k,
                     .dst_off = (o * n + q) * inner, .len = inner);
    }
    return MPK_OK;
}

OPS_RANGES(permute_rope)
{
    (void)out;
    for (int k = 0; k < in->n_groups * in->n_items; k++) {
        const mpk_tmeta *t = &in->t[k];
        uint64_t row = 0, all = 0, rows = (uint64_t)t->shape[0], hd = rows / (uint64_t)op->heads;
        if (op->groups && !(op->groups >> (k / in->n_items) & 1)) { /* not permuted: one copy */
            MPK_TRY(ops_inner_bytes(t, 0, &all, "permute_for_rope", err));
            EMIT(.src = k, .src_off = 0, .dst = k, .dst_off = 0, .len = all);
            continue;
        }
        MPK_TRY(ops_inner_bytes(t, 1, &row, "permute_for_rope", err));
        for (uint64_t q = 0; q < rows; q++)
            EMIT(.src = k, .src_off = (q - q % hd + pair_src(q % hd, hd, op->inverse)) * row, .dst = k,
                 .dst_off = q * row, .len = row);
    }
    return MPK_OK;
}

/* concat_list(dim) lays the items out exactly as merge(dim) does (only the shape differs) */
OPS_RANGES(concat_list)
{
    return mpk_op_descs[MPK_OP_MERGE].ranges(op, in, out, fn, ctx, err);
}

/* chunk_list: item i of group g = piece i of its tensor along dim, per outer index */
OPS_RANGES(chunk_list)
{
    const uint64_t c = (uint64_t)op->chunks;
    for (int g = 0; g < in->n_groups; g++) {
        const mpk_tmeta *piece = &out->t[(uint64_t)g * c];
        uint64_t inner = 0, outer = mpk_prod(piece->shape, 0, op->dim);
        MPK_TRY(ops_inner_bytes(piece, op->dim, &inner, "chunk_list", err));
        for (uint64_t i = 0; i < c; i++)
            for (uint64_t o = 0; o < outer; o++)
                EMIT(.src = g, .src_off = (o * c + i) * inner, .dst = (int)((uint64_t)g * c + i),
                     .dst_off = o * inner, .len = inner);
    }
    return MPK_OK;
}
