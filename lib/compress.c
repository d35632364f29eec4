/* compress.c — the public API's front: mpk_compress and mpk_decompress: every shard of a checkpoint
 * into a compressed container (NAME.safetensors.mpkz, formats/MPKZ.md) and back, the other files
 * copied, the result staged beside DST and renamed into place like every output. */
#define _GNU_SOURCE
#include "exec_internal.h"
#include "lib_internal.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXT ".mpkz"

void mpk_compress_req_init(mpk_compress_req *r, const char *src, const char *dst)
{
    memset(r, 0, sizeof *r);
    r->src = src;
    r->dst = dst;
    r->level = 1;
    r->chunk_size = 1u << 20;
}

typedef struct {
    bool compress;
    const char *src;
    const mpk_exec_opts *o;
    mpk_side_stats *side;
} skip_ctx;

/* The files that get converted are not copied, nor files with a staging marker's name. */
static bool skip_converted(const char *name, void *ctx)
{
    const skip_ctx *k = ctx;
    return mpk_stage_skip_marker(k->src, name, k->o, k->side) ||
           mpk_str_ends(name, k->compress ? ".safetensors" : ".safetensors" EXT) || strcmp(name, ".git") == 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* The names of the files at dir's top level ending in suffix (not hidden, not named as a staging
 * marker such as moepack.shard.DIGEST.model.safetensors: skip_converted tells), sorted: a list
 * taken before anything is written beside them. */
static mpk_status list_files(const char *dir, const char *suffix, char ***out, size_t *n, mpk_error *err)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return mpk_error_set(err, MPK_E_NOT_FOUND, errno, dir, "cannot open the checkpoint directory");
    char **v = NULL;
    size_t cap = 0;
    mpk_status s = MPK_OK;
    for (struct dirent *e; s == MPK_OK && (e = readdir(d));) {
        if (!mpk_str_ends(e->d_name, suffix) || e->d_name[0] == '.' || mpk_stage_is_marker(e->d_name))
            continue;
        char **g = mpk_grow(v, *n, &cap, sizeof *v, 16);
        char *name = g ? mpk_strndup(e->d_name, strlen(e->d_name)) : NULL;
        if (g)
            v = g;
        if (!name)
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
        else
            v[(*n)++] = name;
    }
    closedir(d);
    if (s != MPK_OK) {
        free_names(v, *n);
        *n = 0;
        return s;
    }
    qsort(v, *n, sizeof *v, cmp_name);
    *out = v;
    return MPK_OK;
}

/* What converting file name gives: NAME.safetensors.mpkz for NAME.safetensors (compress), and back. */
static void converted_name(const char *name, bool compress, char *buf, size_t cap)
{
    snprintf(buf, cap, "%.*s%s", (int)(strlen(name) - (compress ? 0 : strlen(EXT))), name, compress ? EXT : "");
}

static int cpu_threads(int want)
{
    return want > 0 ? want : mpk_default_threads();
}

/* Every *.safetensors (compress) or *.safetensors.mpkz (decompress) file at SRC's top level. */
static mpk_status convert_files(const mpk_compress_req *r, bool compress, const char *tmp, uint64_t *in_bytes,
                                uint64_t *out_bytes, size_t *files, mpk_error *err)
{
    char **names;
    size_t n;
    MPK_TRY(list_files(r->src, compress ? ".safetensors" : ".safetensors" EXT, &names, &n, err));
    /* NAME.safetensors and NAME.safetensors.mpkz both in SRC: the one converted would land on the
     * one copied (before: "cannot create: File exists" in the staging directory) */
    for (size_t i = 0; i < n; i++) {
        char twin[NAME_MAX + 8], *p;
        converted_name(names[i], compress, twin, sizeof twin);
        struct stat ts;
        bool both = (p = mpk_path_join(r->src, twin)) && lstat(p, &ts) == 0;
        free(p);
        if (both) {
            mpk_status c = mpk_error_set(err, MPK_E_CONFLICT, 0, r->src, "holds both %s and %s, which %s the "
                                         "first would write: move one of them away", names[i], twin,
                                         compress ? "compressing" : "decompressing");
            free_names(names, n);
            return c;
        }
    }
    /* under MPI each rank converts its share of the files (each to the least loaded rank, in
     * list order: the same on every rank) */
    char **paths = mpk_calloc(n + 1, sizeof *paths);
    bool *take = mpk_calloc(n + 1, sizeof *take);
    int R = mpk_dist_size();
    uint64_t *load = R > 1 ? mpk_calloc((size_t)R, sizeof *load) : NULL;
    uint64_t total = 0; /* what the progress meter counts: this process's input bytes */
    struct stat st;
    mpk_status s = paths && take && (R < 2 || load) ? MPK_OK : mpk_error_set(err, MPK_E_NOMEM, 0, r->src, "out of memory");
    for (size_t i = 0; s == MPK_OK && i < n; i++) {
        if (!(paths[i] = mpk_path_join(r->src, names[i])))
            s = mpk_error_set(err, MPK_E_NOMEM, 0, r->src, "out of memory");
        uint64_t size = s == MPK_OK && stat(paths[i], &st) == 0 ? (uint64_t)st.st_size : 0;
        if ((take[i] = mpk_dist_mine(load, size)))
            total += size;
    }
    mpk_meter meter;
    mpk_meter_start(&meter, r->progress, r->ctx, total);
    meter.cancel = r->cancel;
    int threads = cpu_threads(r->threads);
    for (size_t i = 0; s == MPK_OK && i < n; i++) {
        const char *nm = names[i];
        if (!take[i])
            continue;
        char conv[NAME_MAX + 8], *out;
        converted_name(nm, compress, conv, sizeof conv);
        if (!(out = mpk_path_join(tmp, conv))) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, r->src, "out of memory");
            break;
        }
        uint64_t osz = 0;
        if (compress)
            s = mpk_mpkz_compress(paths[i], out, r->level, threads, r->chunk_size, &osz, &meter, err);
        else if ((s = mpk_mpkz_decompress(paths[i], out, threads, &meter, err)) == MPK_OK && stat(out, &st) == 0)
            osz = (uint64_t)st.st_size;
        if (s == MPK_OK && stat(paths[i], &st) == 0)
            *in_bytes += (uint64_t)st.st_size;
        *out_bytes += osz;
        *files += s == MPK_OK;
        free(out);
    }
    free(load);
    free(take);
    free_names(paths, paths ? n : 0);
    free_names(names, n);
    if (s == MPK_OK)
        mpk_meter_end(&meter);
    return mpk_dist_agree(s, err);
}

/* Every NAME.safetensors in DIR (a staging directory) replaced by NAME.safetensors.mpkz. */
mpk_status mpk_lib_compress_shards(const char *dir, int level, int threads, mpk_error *err)
{
    char **names;
    size_t n;
    MPK_TRY(list_files(dir, ".safetensors", &names, &n, err));
    mpk_compress_req d; /* the defaults compress uses */
    mpk_compress_req_init(&d, NULL, NULL);
    mpk_status s = MPK_OK;
    for (size_t i = 0; s == MPK_OK && i < n; i++) {
        char *from = mpk_path_join(dir, names[i]), out[4096];
        if (!from) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
            break;
        }
        snprintf(out, sizeof out, "%s" EXT, from);
        s = mpk_mpkz_compress(from, out, level, cpu_threads(threads), d.chunk_size, NULL, NULL, err);
        if (s == MPK_OK && unlink(from) != 0)
            s = mpk_error_set(err, MPK_E_IO, errno, from, "cannot remove after compressing it: %s", strerror(errno));
        free(from);
    }
    free_names(names, n);
    return s;
}

static mpk_status run(const mpk_compress_req *r, bool compress, mpk_report **out, mpk_error *err)
{
    if (out)
        *out = NULL;
    if (!r || !r->src || !r->dst || !r->src[0] || !r->dst[0])
        MPK_FAIL(err, MPK_E_USAGE, "request", "needs a source and a destination (not NULL, not empty)");
    if (r->level < 1 || r->level > 19 || r->chunk_size < 8 || r->chunk_size > (64u << 20) || r->chunk_size % 8)
        MPK_FAIL(err, MPK_E_USAGE, "request", "level 1..19, chunk size a multiple of 8 up to 64 MiB");
    struct stat st;
    if (stat(r->src, &st) != 0 || !S_ISDIR(st.st_mode))
        MPK_FAIL(err, MPK_E_NOT_FOUND, r->src, "not a checkpoint directory");
    if (lstat(r->dst, &st) == 0 && !(r->flags & MPK_CONVERT_FORCE))
        return mpk_dst_exists(r->dst, err);
    /* DST may not be SRC, lie inside it (the staging directory would be read as a source) or
     * hold it: by device and inode, as pack's (a bind mount or symlink does not hide it) */
    MPK_TRY(mpk_overlap_check(r->src, NULL, r->dst, err));
    if (r->flags & MPK_CONVERT_FORCE)
        MPK_TRY(mpk_force_check(r->dst, err));
    double t0 = now();
    mpk_exec_opts eo = {.warn = r->warn, .warn_ctx = r->ctx, .force = r->flags & MPK_CONVERT_FORCE};
    mpk_stage stage;
    mpk_status s = mpk_stage_open_shared(&stage, r->dst, 0, &eo, err); /* (collective under MPI) */
    uint64_t in_b = 0, out_b = 0;
    size_t files = 0;
    mpk_side_stats side = {0};
    skip_ctx k = {compress, r->src, &eo, &side};
    if (s == MPK_OK)
        s = convert_files(r, compress, stage.tmp, &in_b, &out_b, &files, err); /* agreed */
    mpk_rank_stats *ranks = NULL;
    int n_ranks = 0;
    bool agreed = s == MPK_OK; /* (every rank is here with the same status) */
    if (agreed) { /* what this rank did, then every rank's sums */
        ranks = mpk_dist_stats(in_b, out_b, now() - t0, &n_ranks);
        uint64_t sums[3] = {in_b, out_b, files};
        mpk_dist_reduce(sums, 3, MPK_DIST_SUM);
        in_b = sums[0], out_b = sums[1], files = (size_t)sums[2];
        if (!files)
            s = mpk_error_set(err, MPK_E_NOT_FOUND, 0, r->src, "no %s files to %s",
                              compress ? ".safetensors" : ".mpkz", compress ? "compress" : "decompress");
    }
    if (s == MPK_OK && mpk_dist_rank() == 0)
        s = mpk_copy_tree(r->src, stage.tmp, skip_converted, &k, &eo, &side, err);
    if (s == MPK_OK && mpk_dist_rank() == 0)
        s = mpk_stage_commit(&stage, r->src, r->flags & MPK_CONVERT_FORCE, err);
    if (agreed)
        s = mpk_dist_agree(s, err);
    mpk_stage_close(&stage, false);
    if (s != MPK_OK || !out) {
        free(ranks);
        return s;
    }
    double secs = now() - t0;
    mpk_report *rep = mpk_report_new();
    cJSON *o = rep ? cJSON_CreateObject() : NULL;
    if (o) {
        cJSON_AddStringToObject(o, "source", r->src);
        cJSON_AddStringToObject(o, "destination", r->dst);
        cJSON_AddNumberToObject(o, "files", (double)files);
        cJSON_AddNumberToObject(o, "bytes_in", (double)in_b);
        cJSON_AddNumberToObject(o, "bytes_out", (double)out_b);
        cJSON_AddNumberToObject(o, "ratio", in_b ? (double)out_b / (double)in_b : 0);
        cJSON_AddNumberToObject(o, "seconds", secs);
        cJSON_AddNumberToObject(o, "other_files", (double)side.files);
        mpk_lib_ranks_json(o, ranks, n_ranks);
    }
    free(ranks);
    char *buf, h1[32], h2[32];
    size_t len;
    FILE *f = rep ? mpk_report_begin_text(rep, &buf, &len) : NULL;
    if (f)
        fprintf(f, "%s -> %s: %zu file(s), %s -> %s (%.3f), %.2f s, %.2f GB/s of %s bytes\n", r->src, r->dst, files,
                mpk_human_bytes(in_b, h1, sizeof h1), mpk_human_bytes(out_b, h2, sizeof h2),
                in_b ? (double)out_b / (double)in_b : 0, secs,
                secs > 0 ? (double)(compress ? in_b : out_b) / secs / 1e9 : 0, compress ? "input" : "output");
    /* the output has landed: a report that cannot be built is no failure of it */
    mpk_error ig;
    if (!rep || mpk_report_set_json(rep, compress ? "moepack.compress/1" : "moepack.decompress/1", o, &ig) != MPK_OK || mpk_report_end_text(rep, f, &buf, &ig) != MPK_OK) {
        mpk_report_free(rep);
        return MPK_OK;
    }
    return mpk_report_give(rep, out);
}

/* SRC as a Hugging Face cache repo folder or repo id: its snapshot (of main). */
static mpk_status run_resolved(const mpk_compress_req *r, bool compress, mpk_report **out, mpk_error *err)
{
    if (!r || !r->src || !r->src[0])
        return run(r, compress, out, err);
    char *src;
    if (out)
        *out = NULL;
    MPK_TRY(mpk_hub_resolve(r->src, NULL, &src, err));
    mpk_compress_req q = *r;
    q.src = src;
    mpk_status s = run(&q, compress, out, err);
    free(src);
    return s;
}

mpk_status mpk_compress(const mpk_compress_req *r, mpk_report **out, mpk_error *err)
{
    return run_resolved(r, true, out, err);
}

mpk_status mpk_decompress(const mpk_compress_req *r, mpk_report **out, mpk_error *err)
{
    return run_resolved(r, false, out, err);
}
