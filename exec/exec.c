/* exec.c — streaming execution of a plan, the top: staging (a temporary directory beside DST),
 * the output shard files and their layout, the units of work, resuming a dead run, the
 * index, config and SRC's other files, and the commit into place.
 *
 * The output tensors become nodes (graph.c); work is cut into units (a byte range of one
 * output tensor), queued per output shard in file order; threads claim units, read them
 * (nodes.c) or move them with copy_file_range, and write them at their final offsets, one
 * writer per shard at a time (run.c).
 */
#define _GNU_SOURCE
#include "engine_internal.h"
#include "mpk_config.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>


double ex_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void progress(run_ctx *c, const mpk_exec_opts *o, double t0)
{
    if (o->progress)
        o->progress(o->progress_ctx, atomic_load(&c->done_bytes), c->total, ex_now_s() - t0);
}

/* Top-level names of SRC that are not copied beside the output: the checkpoint's own shards,
 * index and manifest (the output has its own), config.json when rewritten, other
 * .safetensors files (not part of the checkpoint: a consolidated copy would double the
 * output), and a git repository's metadata. */
typedef struct {
    const mpk_plan *p;
    const mpk_exec_opts *o;
    mpk_side_stats *st;
} side_ctx;

static bool side_skip(const char *n, void *ctx)
{
    side_ctx *sc = ctx;
    size_t l = strlen(n);
    if (strcmp(n, "model.safetensors.index.json") == 0 || strcmp(n, "moepack.manifest.json") == 0 ||
        (sc->o->config_json && strcmp(n, "config.json") == 0))
        return true;
    for (size_t i = 0; i < sc->p->src->n_shards; i++) {
        const char *file = strrchr(sc->p->src->shards[i].path, '/'); /* NAME.mpkz of a compressed one */
        if (strcmp(n, sc->p->src->shards[i].name) == 0 || (file && strcmp(n, file + 1) == 0))
            return true;
    }
    for (const char *const *k = sc->o->skip_names; k && *k; k++)
        if (strcmp(n, *k) == 0)
            return true;
    if (mpk_stage_skip_marker(sc->p->src->dir, n, sc->o, sc->st))
        return true;
    if ((l > 12 && strcmp(n + l - 12, ".safetensors") == 0) || strcmp(n, ".git") == 0) {
        mpk_exec_warn(sc->o, "skipped %s/%s: %s", sc->p->src->dir, n,
                      n[0] == '.' ? "a git repository's metadata (the output is not a clone)"
                                  : "a .safetensors file that is not part of the checkpoint");
        sc->st->skipped++;
        return true;
    }
    return false;
}

static mpk_status copy_side_files(const mpk_plan *p, const char *tmp, const mpk_exec_opts *o,
                                  mpk_side_stats *st, mpk_error *err)
{
    if (o->config_json) {
        char *to = mpk_path_join(tmp, "config.json");
        mpk_status s = to ? mpk_write_file(to, o->config_json, strlen(o->config_json), !o->no_fsync, err)
                          : mpk_error_set(err, MPK_E_NOMEM, 0, "exec", "out of memory");
        free(to);
        MPK_TRY(s);
        st->files++; /* counted as the copy it replaces is: the same count for pack, unpack, --dequantize */
        st->bytes += strlen(o->config_json);
    }
    if (!p->src->is_dir)
        return MPK_OK;
    side_ctx sc = {p, o, st};
    return mpk_copy_tree(p->src->dir, tmp, side_skip, &sc, o, st, err);
}

/* What identifies a run (the staging directory's digest): a resumed run continues only a run
 * with the same. moepack, the spec, the source files (with ids: device, inode, mtime and ctime
 * too, which differ between the hosts of an MPI job), the outputs and their layout, the
 * metadata and config written. The ctime is there for an edit in place that puts the size and
 * mtime back (rsync --inplace -t, a restore with utimensat): no call can set it, so a source
 * written since the dead run makes another plan, whose staging directory is removed as not
 * resumable and the run starts afresh. */
static uint64_t plan_digest(const mpk_plan *p, const mpk_exec_opts *o, bool ids)
{
    XXH3_state_t *x = XXH3_createState();
    if (!x)
        return 0;
    XXH3_64bits_reset(x);
#define ADD(ptr, len) XXH3_64bits_update(x, (ptr), (len))
#define ADDS(str) ADD((str) ? (str) : "", (str) ? strlen(str) + 1 : 1)
    ADDS(MPK_VERSION);
    ADDS(p->spec->name);
    ADD(&p->spec->reversed, sizeof p->spec->reversed);
    char *js = p->spec->json ? cJSON_PrintUnformatted(p->spec->json) : NULL;
    ADDS(js);
    free(js);
    for (size_t i = 0; i < p->src->n_shards; i++) {
        struct stat st = {0};
        fstat(p->src->shards[i].fd, &st);
        uint64_t v[7] = {ids ? (uint64_t)st.st_dev : 0,           ids ? (uint64_t)st.st_ino : 0,
                         (uint64_t)st.st_size,                     ids ? (uint64_t)st.st_mtim.tv_sec : 0,
                         ids ? (uint64_t)st.st_mtim.tv_nsec : 0,   ids ? (uint64_t)st.st_ctim.tv_sec : 0,
                         ids ? (uint64_t)st.st_ctim.tv_nsec : 0};
        ADDS(p->src->shards[i].path);
        ADD(v, sizeof v);
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        const mpk_plan_out *po = &p->outs[i];
        int64_t v[4 + MPK_MAX_DIMS] = {po->meta.dtype, po->meta.ndim, po->shard, po->quant};
        memcpy(v + 4, po->meta.shape, sizeof po->meta.shape);
        ADDS(po->name);
        ADD(v, sizeof v);
        ADD(&po->nbytes, sizeof po->nbytes);
    }
    uint64_t v[3] = {p->n_shards, (uint64_t)p->fp8_block, p->n_views};
    ADD(v, sizeof v);
    for (size_t i = 0; i < o->n_metadata; i++) {
        ADDS(o->metadata[i].key);
        ADDS(o->metadata[i].value);
    }
    ADDS(o->config_json);
#undef ADD
#undef ADDS
    uint64_t d = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return d;
}

/* A source tensor's node: its bytes, or for a --dequantize view the FP8 weight times its
 * scale grid. */
static int file_order(const void *a, const void *b)
{
    const unit *x = a, *y = b;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    if (x->late != y->late)
        return x->late ? 1 : -1;
    return x->at < y->at ? -1 : x->at > y->at;
}

/* An adopted directory keeps only what its journal says is complete (checked later). */
static void clean_adopted(const mpk_stage *stage)
{
    DIR *d = opendir(stage->tmp);
    struct dirent *e;
    uint64_t dg;
    while (d && (e = readdir(d))) {
        const char *n = e->d_name;
        if ((n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2]))) || mpk_stage_is_marker(n) ||
            mpk_stage_journal_find(stage, n, &dg))
            continue;
        char *path = mpk_path_join(stage->tmp, n);
        if (path)
            mpk_rmrf(path);
        free(path);
    }
    if (d)
        closedir(d);
}

/* A shard an interrupted run recorded as complete is kept when its outputs hash to the
 * digest it recorded (c->hashes filled for them); else it is redone. */
static bool shard_checks_out(run_ctx *c, size_t sh, uint64_t want)
{
    if (!c->hashes)
        return false;
    char *buf = mpk_alloc(HASH_CHUNK);
    mpk_error ig;
    bool ok = buf != NULL;
    for (size_t i = 0; ok && i < c->p->n_outs; i++)
        if (c->p->outs[i].shard == (int)sh)
            ok = ex_hash_output(c, i, buf, &ig) == MPK_OK;
    free(buf);
    return ok && ex_shard_digest(c->p, sh, c->hashes) == want;
}

/* What one mpk_exec holds while it runs, phase by phase. */
typedef struct job {
    const mpk_plan *p;
    const mpk_exec_opts *o;
    const char *dst;
    mpk_error *err;
    mpk_stage stage;
    bool *reopened;               /* per shard: a dead run's file taken over (resume) */
    builder b;
    mpk_arena *arena;
    run_ctx c;
    mpk_tensor_info **infos;      /* per shard: its tensors, laid out */
    int threads, started;
    struct watch *watch;          /* MPI: the cancel watch (below) */
} job;

static mpk_status nomem(job *j)
{
    return mpk_error_set(j->err, MPK_E_NOMEM, 0, j->dst, "out of memory");
}

/* The unit size: the memory budget per thread (one unit buffer plus transpose temporaries,
 * 2 slabs + the read), never splitting a computed node's granule (a row to dequantize, a
 * matrix to transpose), also when that node sits inside a merge or concat. */
static mpk_status size_units(job *j)
{
    const mpk_plan *p = j->p;
    uint64_t per_thread = j->o->mem / (uint64_t)j->threads, slab = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t m = ex_max_slab(j->c.nodes[i]);
        slab = m > slab ? m : slab;
    }
    uint64_t unit_bytes = per_thread / 3;
    if (unit_bytes > (64u << 20))
        unit_bytes = 64u << 20;
    /* under MPI at least 16 units per rank where the bytes allow (a rank's share is made of
     * whole units), not below 1 MiB */
    uint64_t fine = p->total_bytes / (16 * (uint64_t)mpk_dist_size());
    fine = fine < (1u << 20) ? 1u << 20 : fine;
    if (mpk_dist_size() > 1 && unit_bytes > fine)
        unit_bytes = fine;
    if (slab && unit_bytes < slab)
        unit_bytes = slab;
    if (unit_bytes < 4096)
        unit_bytes = 4096;
    if (slab && 3 * slab > per_thread) {
        char h1[32], h2[32], h3[32];
        return mpk_error_set(j->err, MPK_E_MEMORY_BUDGET, 0, j->dst,
                             "a transpose block needs %s per thread (3 x %s) but --mem gives %s per "
                             "thread; raise --mem or lower --threads",
                             mpk_human_bytes(3 * slab, h1, sizeof h1), mpk_human_bytes(slab, h2, sizeof h2),
                             mpk_human_bytes(per_thread, h3, sizeof h3));
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t g = ex_node_granule(j->c.nodes[i]);
        unit_bytes = g > unit_bytes ? g : unit_bytes;
    }
    j->c.unit_bytes = unit_bytes;
    return MPK_OK;
}

/* The data start (modulo a page) that puts the most copied bytes at the same offset within a
 * page as their source (whatever the copy mode: the output is the same); -1 for none. */
static int best_phase(job *j, size_t sh)
{
    uint64_t votes[4096 / 8] = {0}, best = 0;
    int phase = -1;
    for (size_t i = 0; i < j->p->n_outs; i++)
        if (j->p->outs[i].shard == (int)sh && j->c.nodes[i]->pure)
            ex_each_source_range(j->c.nodes[i], 0, j->p->outs[i].nbytes, j->infos[sh][j->c.slot[i]].begin,
                                 ex_phase_vote, votes);
    for (int k = 0; k < 4096 / 8; k++)
        if (votes[k] > best) {
            best = votes[k];
            phase = k * 8;
        }
    return phase;
}

/* Output shard sh: its tensors laid out (plan outputs mapped to their place in it), its file
 * created in the staging directory, or a dead run's file taken over when resuming. */
/* Output shard sh of a recorded layout with its exact header: created with those bytes, plan
 * outputs mapped to the recorded tensors. */
static mpk_status open_exact_shard(job *j, size_t sh)
{
    const mpk_plan *p = j->p;
    const mpk_layout *l = p->layout;
    const mpk_st_header *h = l->parsed[sh];
    if (!(j->infos[sh] = mpk_calloc(h->n_tensors + 1, sizeof **j->infos)))
        return nomem(j);
    memcpy(j->infos[sh], h->tensors, h->n_tensors * sizeof *h->tensors);
    for (size_t i = 0; i < p->n_outs; i++)
        if (p->outs[i].shard == (int)sh)
            j->c.slot[i] = (size_t)mpk_st_header_find(h, p->outs[i].name);
    char *path = mpk_path_join(j->stage.tmp, l->files[sh]);
    if (path && j->stage.adopted) /* a resumed run writes exact files again from scratch */
        unlink(path);
    mpk_status s = !path              ? nomem(j)
                   : j->stage.attached ? mpk_st_out_reopen_exact(path, l->headers[sh], l->header_len[sh], j->infos[sh],
                                                                 h->n_tensors, h->data_size, &j->c.shards[sh], j->err)
                                       : mpk_st_out_create_exact(path, l->headers[sh], l->header_len[sh], j->infos[sh],
                                                                 h->n_tensors, h->data_size, &j->c.shards[sh], j->err);
    free(path);
    return s;
}

static mpk_status open_shard(job *j, size_t sh)
{
    const mpk_plan *p = j->p;
    const mpk_exec_opts *o = j->o;
    if (p->layout && p->layout->parsed && p->layout->parsed[sh])
        return open_exact_shard(j, sh);
    size_t n = 0;
    for (size_t i = 0; i < p->n_outs; i++)
        n += p->outs[i].shard == (int)sh;
    if (!(j->infos[sh] = mpk_calloc(n + 1, sizeof **j->infos)))
        return nomem(j);
    n = 0;
    for (size_t i = 0; i < p->n_outs; i++)
        if (p->outs[i].shard == (int)sh) {
            mpk_tensor_info *t = &j->infos[sh][n++];
            t->name = p->outs[i].name;
            t->dtype = p->outs[i].meta.dtype;
            t->ndim = p->outs[i].meta.ndim;
            memcpy(t->shape, p->outs[i].meta.shape, sizeof t->shape);
        }
    char *hdr;
    size_t hlen;
    MPK_TRY(mpk_st_layout(j->infos[sh], n, o->metadata, o->n_metadata, &hdr, &hlen, NULL, j->err));
    free(hdr);
    mpk_strmap m;
    if (mpk_strmap_init(&m, n) != MPK_OK)
        return nomem(j);
    for (size_t k = 0; k < n; k++)
        mpk_strmap_put(&m, j->infos[sh][k].name, strlen(j->infos[sh][k].name), k, NULL);
    for (size_t i = 0; i < p->n_outs; i++)
        if (p->outs[i].shard == (int)sh)
            mpk_strmap_get(&m, p->outs[i].name, strlen(p->outs[i].name), &j->c.slot[i]);
    mpk_strmap_free(&m);
    int phase = best_phase(j, sh);
    char name[64];
    mpk_plan_shard_name(p, sh, name, sizeof name);
    char *path = mpk_path_join(j->stage.tmp, name);
    uint64_t dg;
    mpk_error ig;
    if (path && j->stage.adopted && mpk_stage_journal_find(&j->stage, name, &dg)) {
        j->reopened[sh] = mpk_st_out_reopen(path, j->infos[sh], n, o->metadata, o->n_metadata, phase,
                                            &j->c.shards[sh], &ig) == MPK_OK;
        if (!j->reopened[sh])
            unlink(path);
    }
    mpk_status s = !path ? nomem(j)
                   : j->reopened[sh] ? MPK_OK
                   : j->stage.attached ? mpk_st_out_reopen(path, j->infos[sh], n, o->metadata, o->n_metadata, phase,
                                                           &j->c.shards[sh], j->err)
                                       : mpk_st_out_create(path, j->infos[sh], n, o->metadata, o->n_metadata, phase,
                                                           &j->c.shards[sh], j->err);
    free(path);
    return s;
}

/* A computed unit is built in a buffer and then written from it; built in 1 MiB (or one
 * granule, if larger), the buffer is still in the CPU's cache when the write copies it into the
 * page cache: 3 GB of pwrite took 0.41 s from a 64 KiB buffer and 1.2 s walking a 44 MB one,
 * and `pack --no-fsync --dequantize` ran in 1.3-1.6 s instead of 2.0 s (bench/RESULTS.md).
 * Copied units stay large (fewer copy_file_range calls). */
#define COMPUTED_UNIT_BYTES (1u << 20)

static uint64_t unit_size(const run_ctx *c, size_t i)
{
    uint64_t g = ex_node_granule(c->nodes[i]), u = c->unit_bytes;
    if (!c->nodes[i]->pure && u > COMPUTED_UNIT_BYTES)
        u = COMPUTED_UNIT_BYTES;
    return u < g ? g : u - u % g;
}

/* Units of every output (a granule-aligned byte range each), queued per shard in file order;
 * with hashes or fsync, what tracks each output's completion. */
static mpk_status make_units(job *j)
{
    const mpk_plan *p = j->p;
    run_ctx *c = &j->c;
    size_t n_units = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t u = unit_size(c, i);
        n_units += p->outs[i].nbytes ? (size_t)((p->outs[i].nbytes + u - 1) / u) : 0;
    }
    if (!(c->units = mpk_calloc(n_units + 1, sizeof *c->units)))
        return nomem(j);
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t u = unit_size(c, i);
        const mpk_st_out *so = c->shards[p->outs[i].shard];
        uint64_t base = so->data_start + so->tensors[c->slot[i]].begin;
        for (uint64_t off = 0; off < p->outs[i].nbytes; off += u)
            c->units[c->n_units++] = (unit){i, p->outs[i].shard, off,
                                            p->outs[i].nbytes - off < u ? p->outs[i].nbytes - off : u, base + off,
                                            c->nodes[i]->kind == N_QUANT && c->nodes[i]->which == 1};
    }
    qsort(c->units, c->n_units, sizeof *c->units, file_order);
    if (!(c->units_upto = mpk_calloc(c->n_units + 1, sizeof *c->units_upto)))
        return nomem(j);
    for (size_t u = 0; u < c->n_units; u++) {
        c->max_unit = c->units[u].len > c->max_unit ? c->units[u].len : c->max_unit;
        c->units_upto[u + 1] = c->units_upto[u] + c->units[u].len;
    }
    if (!(c->q = mpk_calloc(p->n_shards, sizeof *c->q)))
        return nomem(j);
    for (size_t u = 0, sh = 0; sh < p->n_shards; sh++) {
        c->q[sh].lo = u;
        while (u < c->n_units && (size_t)c->units[u].shard == sh)
            u++;
        c->q[sh].hi = u;
        atomic_init(&c->q[sh].next, c->q[sh].lo);
        atomic_init(&c->q[sh].ahead, c->q[sh].lo);
        atomic_init(&c->q[sh].turn, c->q[sh].lo);
        atomic_init(&c->q[sh].busy, 0);
    }
    if (!j->o->hash_outputs && j->o->no_fsync)
        return MPK_OK;
    bool h = j->o->hash_outputs;
    c->left = mpk_calloc(p->n_outs + 1, sizeof *c->left);
    c->hashes = h ? mpk_calloc(p->n_outs + 1, sizeof *c->hashes) : NULL;
    c->mh = h ? mpk_calloc(p->n_outs + 1, sizeof *c->mh) : NULL;
    bool journal = h && mpk_dist_size() < 2; /* (an MPI run is not resumed: no journal) */
    c->sh_left = journal ? mpk_calloc(p->n_shards + 1, sizeof *c->sh_left) : NULL;
    bool syncer = journal || (c->writeback && !j->o->no_fsync);
    c->syncq = syncer ? mpk_calloc(p->n_shards + p->n_outs + 1, sizeof *c->syncq) : NULL;
    c->hq = mpk_calloc(p->n_outs + 1, sizeof *c->hq);
    if (!c->left || (h && (!c->hashes || !c->mh)) || (journal && !c->sh_left) || (syncer && !c->syncq) || !c->hq)
        return nomem(j);
    for (size_t i = 0; i < p->n_outs; i++) {
        const mpk_plan_out *po = &p->outs[i];
        atomic_init(&c->left[i], po->nbytes);
        if (c->hashes) {
            c->hashes[i] = (mpk_tensor_hash){.name = po->name, .dtype = po->meta.dtype, .ndim = po->meta.ndim};
            memcpy(c->hashes[i].shape, po->meta.shape, sizeof c->hashes[i].shape);
        }
    }
    return MPK_OK;
}

/* Resuming: shards the dead run completed are kept once they check out, their units counted
 * as done; the others are written again from scratch. Then what is left to complete. */
static mpk_status resume_shards(job *j, mpk_exec_stats *stats)
{
    const mpk_plan *p = j->p;
    run_ctx *c = &j->c;
    for (size_t sh = 0; sh < p->n_shards; sh++) {
        if (!j->reopened[sh])
            continue;
        uint64_t want = 0;
        char name[64];
        mpk_plan_shard_name(p, sh, name, sizeof name);
        mpk_stage_journal_find(&j->stage, name, &want);
        if (shard_checks_out(c, sh, want)) {
            stats->shards_kept++;
            for (size_t u = c->q[sh].lo; u < c->q[sh].hi; u++) {
                atomic_fetch_add(&c->units_done, 1);
                atomic_fetch_add(&c->done_bytes, c->units[u].len);
            }
            atomic_store(&c->q[sh].next, c->q[sh].hi);
            atomic_store(&c->q[sh].turn, c->q[sh].hi);
            continue;
        }
        mpk_tensor_info *ti = c->shards[sh]->tensors;
        size_t nt = c->shards[sh]->n_tensors;
        uint64_t ds = c->shards[sh]->data_start;
        char *path = mpk_strndup(c->shards[sh]->path, strlen(c->shards[sh]->path));
        mpk_st_out_close(c->shards[sh], false, NULL);
        c->shards[sh] = NULL;
        j->reopened[sh] = false;
        if (path)
            unlink(path);
        /* the same layout again (the phase is the one that gave data_start) */
        mpk_status s = !path ? nomem(j)
                             : mpk_st_out_create(path, ti, nt, j->o->metadata, j->o->n_metadata, (int)(ds % 4096),
                                                 &c->shards[sh], j->err);
        free(path);
        MPK_TRY(s);
    }
    for (size_t i = 0; c->left && i < p->n_outs; i++) {
        const mpk_plan_out *po = &p->outs[i];
        if (j->reopened[po->shard]) {
            atomic_store(&c->left[i], 0);
            continue;
        }
        if (c->sh_left)
            atomic_fetch_add(&c->sh_left[po->shard], 1);
        if (!po->nbytes) /* no unit will complete it: complete from the start */
            c->hq[c->hq_tail++] = i;
    }
    return MPK_OK;
}

/* The workers and the syncer, while the calling thread reports progress and watches the
 * cancel flag; the first failure of any of them. */
static mpk_status run_threads(job *j, double t0)
{
    run_ctx *c = &j->c;
    const mpk_exec_opts *o = j->o;
    pthread_t th[64], sync_th;
    worker_arg args[64];
    bool syncing = c->syncq && pthread_create(&sync_th, NULL, ex_syncer, c) == 0;
    if (c->syncq && !syncing)
        return mpk_error_set(j->err, MPK_E_IO, errno, j->dst, "cannot start the syncer thread");
    for (int i = 0; i < j->threads; i++) {
        args[i] = (worker_arg){c, (size_t)i % (j->p->n_shards ? j->p->n_shards : 1)};
        if (pthread_create(&th[i], NULL, ex_worker, &args[i]) != 0)
            break;
        j->started++;
    }
    if (!j->started) {
        mpk_status s = mpk_error_set(j->err, MPK_E_IO, errno, j->dst, "cannot start worker threads");
        ex_stop_syncer(c, syncing, sync_th);
        return s;
    }
    double next = ex_now_s();
    while ((o->progress || o->cancel) && atomic_load(&c->units_done) < c->n_units && !atomic_load(&c->failed)) {
        if (o->cancel && *o->cancel) {
            mpk_error ce = {0};
            mpk_error_set(&ce, MPK_E_CANCELLED, 0, j->dst, "cancelled; nothing was written there");
            ex_run_fail(c, &ce);
            break;
        }
        double now = ex_now_s();
        if (now >= next) {
            progress(c, o, t0);
            next = now + 0.2;
        }
        /* until the next report, or until the last unit is written (c->cv: a sleep here held
         * up the end of every run by up to its length) */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long ns = ts.tv_nsec + (long)((next - now > 0 ? next - now : 0) * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_mutex_lock(&c->lock);
        if (atomic_load(&c->units_done) < c->n_units && !atomic_load(&c->failed))
            pthread_cond_timedwait(&c->cv, &c->lock, &ts);
        pthread_mutex_unlock(&c->lock);
    }
    for (int i = 0; i < j->started; i++)
        pthread_join(th[i], NULL);
    ex_stop_syncer(c, syncing, sync_th);
    if (atomic_load(&c->failed)) {
        *j->err = c->err;
        return c->err.code;
    }
    progress(c, o, t0);
    return MPK_OK;
}

/* model.safetensors.index.json of a sharded output. */
static mpk_status write_index(job *j)
{
    const mpk_plan *p = j->p;
    const char **names = mpk_calloc(p->n_outs + 1, sizeof *names);
    const char **files = mpk_calloc(p->n_outs + 1, sizeof *files);
    char(*fn)[64] = mpk_calloc(p->n_shards, 64);
    mpk_status s;
    if (names && files && fn) {
        for (size_t sh = 0; sh < p->n_shards; sh++)
            mpk_plan_shard_name(p, sh, fn[sh], 64);
        for (size_t i = 0; i < p->n_outs; i++) {
            names[i] = p->outs[i].name;
            files[i] = fn[p->outs[i].shard];
        }
        s = mpk_index_write(j->stage.tmp, names, files, p->n_outs, p->total_bytes, !j->o->no_fsync, j->err);
    } else {
        s = nomem(j);
    }
    free(names);
    free(files);
    free(fn);
    return s;
}

/* Closes the shards, writes the index, SRC's other files and the caller's (the manifest), and
 * lands the staging directory once the source has been checked again (written in place or
 * renamed while we read it). */
/* Closes the shard files, fsyncing those this process wrote into (all of them unless an MPI
 * rank other than 0: rank 0 wrote every header). */
static mpk_status close_shards(job *j)
{
    mpk_status s = MPK_OK;
    for (size_t sh = 0; sh < j->p->n_shards; sh++) {
        mpk_st_out *so = j->c.shards[sh];
        if (j->c.dio) { /* every block in (its carry empty), then the page cache's part fsynced */
            mpk_status d = ex_direct_close(&j->c.dio[sh], so->path, s == MPK_OK ? j->err : NULL);
            s = s == MPK_OK ? d : s;
        }
        j->c.shards[sh] = NULL;
        bool wrote = !j->c.touched || j->c.touched[sh] || !j->stage.attached;
        mpk_status c = mpk_st_out_close(so, !j->o->no_fsync && wrote, s == MPK_OK ? j->err : NULL);
        s = s == MPK_OK ? c : s;
    }
    return s;
}

static mpk_status land(job *j, const char *src_path, mpk_exec_stats *stats)
{
    const mpk_plan *p = j->p;
    MPK_TRY(close_shards(j));
    const mpk_layout *l = p->layout;
    if (l && l->index_text) {
        char *text = mpk_strndup(l->index_text, l->index_len);
        MPK_TRY(mpk_write_text_in(j->stage.tmp, l->index_name, text, !j->o->no_fsync, j->err));
    } else if (l ? l->index_name != NULL : p->n_shards > 1) {
        MPK_TRY(write_index(j));
    }
    MPK_TRY(copy_side_files(p, j->stage.tmp, j->o, &stats->side, j->err));
    if (j->o->finish)
        MPK_TRY(j->o->finish(j->o->finish_ctx, j->stage.tmp, j->c.hashes, j->c.hashes ? p->n_outs : 0, j->err));
    MPK_TRY(mpk_ckpt_check_unchanged(p->src, j->err));
    MPK_TRY(mpk_overlap_check(src_path, p->src, j->dst, j->err));
    /* a cancel (Ctrl-C, a signal) that came after the last unit is still one: DST stays as it was */
    if (j->o->cancel && *j->o->cancel)
        MPK_FAIL(j->err, MPK_E_CANCELLED, j->dst, "cancelled before the output was moved into place; nothing was "
                 "written there");
    return mpk_stage_commit(&j->stage, src_path, j->o->force, j->err);
}

static void job_free(job *j)
{
    const mpk_plan *p = j->p;
    run_ctx *c = &j->c;
    for (size_t sh = 0; c->dio && sh < p->n_shards; sh++)
        ex_direct_close(&c->dio[sh], NULL, NULL);
    free(c->dio);
    if (c->shards)
        for (size_t sh = 0; sh < p->n_shards; sh++)
            mpk_st_out_close(c->shards[sh], false, NULL);
    free(j->reopened);
    if (j->infos)
        for (size_t sh = 0; sh < p->n_shards; sh++)
            free(j->infos[sh]);
    free(j->infos);
    free(c->shards);
    free(c->slot);
    free(c->units);
    free(c->units_upto);
    free(c->q);
    free(c->left);
    free(c->sh_left);
    free(c->syncq);
    free(c->hashes);
    for (size_t i = 0; c->mh && i < p->n_outs; i++)
        mpk_xxh_free(c->mh[i].st);
    free(c->mh);
    free(c->hq);
    free(c->split);
    free(c->hash_after);
    free(c->touched);
    ex_nodes_free(&j->b);
    free(j->b.out);
    mpk_arena_free(j->arena);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cv);
    pthread_cond_destroy(&c->sq_cv);
}

/* Builds the nodes and sizes the work. */
static mpk_status prepare_nodes(job *j)
{
    const mpk_plan *p = j->p;
    run_ctx *c = &j->c;
    j->reopened = mpk_calloc(p->n_shards + 1, sizeof *j->reopened);
    j->arena = mpk_arena_new();
    c->shards = mpk_calloc(p->n_shards, sizeof *c->shards);
    c->slot = mpk_calloc(p->n_outs + 1, sizeof *c->slot);
    j->infos = mpk_calloc(p->n_shards, sizeof *j->infos);
    c->nodes = j->b.out = mpk_calloc(p->n_outs + 1, sizeof *j->b.out);
    if (!j->arena || !c->shards || !c->slot || !j->infos || !j->reopened || !j->b.out)
        return nomem(j);
    MPK_TRY(ex_build_nodes(p, &j->b, j->arena));
    return size_units(j);
}

/* MOEPACK_DIRECT=1 (all: whatever the units), durable, one process, units in file order (no
 * FP8 scale grid queued late) and large on average, not resumed from a kept file: the shard's
 * data is written with O_DIRECT where its file system allows (direct.c). */
static mpk_status open_direct(job *j)
{
    run_ctx *c = &j->c;
    int mode = ex_direct_mode();
    if (j->o->no_fsync || j->o->no_direct || mpk_dist_size() > 1 || mode < 0)
        return MPK_OK;
    if (!(c->dio = mpk_calloc(j->p->n_shards + 1, sizeof *c->dio)))
        return nomem(j);
    for (size_t sh = 0; sh < j->p->n_shards; sh++) {
        c->dio[sh].fd = -1;
        bool late = false;
        double bytes = 0, sq = 0; /* the size of the unit an average byte is in: sum len^2 / sum len */
        for (size_t u = c->q[sh].lo; u < c->q[sh].hi; u++) {
            late |= c->units[u].late;
            bytes += (double)c->units[u].len;
            sq += (double)c->units[u].len * (double)c->units[u].len;
        }
        if (!late && !j->reopened[sh] && bytes > 0 && (mode > 1 || sq / bytes >= EX_DIO_MIN_UNIT))
            ex_direct_open(&c->dio[sh], c->shards[sh], mode > 1);
    }
    return MPK_OK;
}

/* Whether pure ranges go through a worker's buffer, hashed on the way (bounce copies), instead
 * of moved in the kernel and read back for the manifest: it costs 0.29 s of CPU per GiB against
 * 0.31-0.41 s (bench/RESULTS.md), but puts the hash in the writer's turn, so it pays only where
 * every thread has a shard of its own to write (else the idle ones hash alongside the writers),
 * where outputs are too large to be read back from the CPU's cache right after their writes
 * (an average byte in a tensor of EX_BOUNCE_MIN_OUT or more: a packed checkpoint, not unpack's
 * per-expert tensors, which measured no better), and only where copy_file_range copies bytes
 * (ext2/3/4, tmpfs; elsewhere it may share extents or copy on the server).
 * MOEPACK_BOUNCE=0: never; =1: wherever outputs are hashed. */
static bool bounce_wanted(const job *j)
{
    const run_ctx *c = &j->c;
    if (!c->mh || !j->o->use_copy_range || !c->shards || ex_env_is("MOEPACK_BOUNCE", "0"))
        return false;
    if (ex_env_is("MOEPACK_BOUNCE", "1"))
        return true;
    double bytes = 0, sq = 0; /* the size of the output an average byte is in: sum n^2 / sum n */
    for (size_t i = 0; i < j->p->n_outs; i++) {
        bytes += (double)j->p->outs[i].nbytes;
        sq += (double)j->p->outs[i].nbytes * (double)j->p->outs[i].nbytes;
    }
    if (bytes <= 0 || sq / bytes < EX_BOUNCE_MIN_OUT || j->p->n_shards < (size_t)j->threads)
        return false;
    struct statfs sf; /* (the shards share DST's staging directory: one file system) */
    for (size_t sh = 0; sh < j->p->n_shards; sh++)
        if (c->shards[sh] && c->shards[sh]->fd >= 0)
            return fstatfs(c->shards[sh]->fd, &sf) == 0 && (sf.f_type == EXT4_SUPER_MAGIC || sf.f_type == TMPFS_MAGIC);
    return false;
}

/* ... then opens every shard, makes the units, resumes. */
static mpk_status prepare(job *j, mpk_exec_stats *stats)
{
    MPK_TRY(prepare_nodes(j));
    for (size_t sh = 0; sh < j->p->n_shards; sh++)
        MPK_TRY(open_shard(j, sh));
    MPK_TRY(make_units(j));
    MPK_TRY(resume_shards(j, stats));
    j->c.bounce = bounce_wanted(j);
    return open_direct(j);
}

/* ---------------------------------------------------------------- MPI ranks
 *
 * Every rank builds the same plan and the same units (the unit size agreed: the smallest any
 * rank's memory budget allows). Rank 0 opens the staging directory and creates every shard
 * file (header written, size set); the others open them. The units, in file order, are cut
 * into one contiguous run per rank of about total / ranks bytes, so a rank writes whole shards
 * or a byte range of one, and the ranks next to each other share at most one output tensor.
 * Each rank hashes the outputs it wrote whole as it goes; an output two ranks wrote is hashed,
 * after every rank finished writing, by the rank that wrote its first byte. The hashes meet
 * by XOR (each is nonzero on one rank only); every rank fsyncs what it wrote; rank 0 writes
 * the index, the other files and the manifest and lands the directory. Each phase ends in
 * mpk_dist_agree: one failure fails every rank, and rank 0 removes the staging directory. */

/* The watch on the cancel flag while the ranks work. When a rank dies, mpirun sends the others
 * SIGTERM (the caller's cancel flag) and, once any of them exits, SIGKILL to the rest: whichever
 * rank sees the flag first removes the staging directory at once (its watcher thread, or the
 * rank itself when the flag ends its wait in a collective), unless landing may have begun:
 * rank 0 from its own landing on, the others from their entering the last phase before it. */
typedef struct watch {
    job *j;
    pthread_mutex_t m;
    pthread_cond_t cv;
    bool stop, removed, landing, running;
    pthread_t th;
} watch;

static void watch_remove(watch *w)
{
    pthread_mutex_lock(&w->m);
    if (!w->landing && !w->removed) {
        mpk_rmrf(w->j->stage.tmp);
        w->removed = true;
    }
    pthread_mutex_unlock(&w->m);
}

static void *watcher(void *arg)
{
    watch *w = arg;
    pthread_mutex_lock(&w->m);
    while (!w->stop && !*w->j->o->cancel) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 5 * 1000 * 1000;
        ts.tv_sec += ts.tv_nsec / 1000000000;
        ts.tv_nsec %= 1000000000;
        pthread_cond_timedwait(&w->cv, &w->m, &ts);
    }
    bool go = !w->stop;
    pthread_mutex_unlock(&w->m);
    if (go)
        watch_remove(w);
    return NULL;
}

static void watch_start(watch *w, job *j)
{
    memset(w, 0, sizeof *w);
    w->j = j;
    j->watch = w;
    pthread_mutex_init(&w->m, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->running = j->o->cancel && pthread_create(&w->th, NULL, watcher, w) == 0;
}

/* Landing (may) begin: false when the directory was removed already. */
static bool watch_landing(watch *w)
{
    pthread_mutex_lock(&w->m);
    w->landing = true;
    bool ok = !w->removed;
    pthread_mutex_unlock(&w->m);
    return ok;
}

static void watch_stop(watch *w)
{
    pthread_mutex_lock(&w->m);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->m);
    if (w->running)
        pthread_join(w->th, NULL);
    pthread_mutex_destroy(&w->m);
    pthread_cond_destroy(&w->cv);
    w->j->watch = NULL;
}

/* mpk_dist_agree, watching the cancel flag. A rank 0 that failed removes the staging
 * directory before it waits: the job cannot land any more. */
static mpk_status dist_agree(job *j, mpk_status s)
{
    if (s != MPK_OK && mpk_dist_rank() == 0 && !j->stage.attached && j->stage.tmp && j->stage.tmp[0])
        mpk_rmrf(j->stage.tmp);
    s = mpk_dist_agree_watch(s, j->err, j->o->cancel);
    if (s == MPK_E_CANCELLED && j->watch)
        watch_remove(j->watch);
    return s;
}

/* This rank's units (the others' counted as done from the start) and what tracks the
 * completion of the outputs it writes. */
static mpk_status assign_units(job *j)
{
    const mpk_plan *p = j->p;
    run_ctx *c = &j->c;
    int R = mpk_dist_size(), me = mpk_dist_rank();
    uint64_t total = 0, at = 0, *mine = mpk_calloc(p->n_outs + 1, sizeof *mine);
    c->split = mpk_calloc(p->n_outs + 1, sizeof *c->split);
    c->hash_after = mpk_calloc(p->n_outs + 1, sizeof *c->hash_after);
    c->touched = mpk_calloc(p->n_shards + 1, sizeof *c->touched);
    if (!mine || !c->split || !c->hash_after || !c->touched) {
        free(mine);
        return nomem(j);
    }
    for (size_t u = 0; u < c->n_units; u++)
        total += c->units[u].len;
    uint64_t per = total / (uint64_t)R + 1; /* each rank's share of the bytes in file order */
    size_t lo = c->n_units, hi = 0;
    for (size_t u = 0; u < c->n_units; u++) {
        const unit *w = &c->units[u];
        int owner = (int)((at + w->len / 2) / per); /* by its middle byte: no share overshoots by a unit */
        at += w->len;
        if (owner == me) {
            lo = u < lo ? u : lo;
            hi = u + 1;
            mine[w->out] += w->len;
            c->touched[w->shard] = true;
            if (w->off == 0)
                c->hash_after[w->out] = true; /* kept only if the output is split */
        } else {
            atomic_fetch_add(&c->units_done, 1);
        }
    }
    c->total = 0;
    for (size_t sh = 0; sh < p->n_shards; sh++) {
        shard_q *q = &c->q[sh];
        q->lo = q->lo > lo ? q->lo : lo;
        q->hi = q->hi < hi ? q->hi : hi;
        q->hi = q->hi > q->lo ? q->hi : q->lo;
        atomic_store(&q->next, q->lo);
        atomic_store(&q->ahead, q->lo);
        atomic_store(&q->turn, q->lo);
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        const mpk_plan_out *po = &p->outs[i];
        c->total += mine[i];
        c->split[i] = mine[i] > 0 && mine[i] < po->nbytes;
        c->hash_after[i] = c->hash_after[i] && c->split[i];
        if (c->left)
            atomic_store(&c->left[i], mine[i]);
        if (c->hq && !po->nbytes && me == 0) /* no unit completes it: rank 0 does */
            c->hq[c->hq_tail++] = i;
    }
    free(mine);
    return MPK_OK;
}

/* What the source a rank reads holds, to compare with rank 0's: per source file its size, its
 * leading bytes (the safetensors header, 8 + N bytes; a compressed shard's first 64 KiB) and
 * CONTENT_SAMPLES blocks of 4 KiB spread evenly over the rest; then config.json's bytes. The
 * plan digest alone holds names, dtypes, shapes and sizes: ranks started in other directories
 * (mpirun --wdir, a node-local copy on each host) whose SRC held other weights under the same
 * names planned the same and each wrote its share from its own source, a mix. Not every byte
 * (that would read the checkpoint once more): two releases of a model differ in the samples,
 * an edit of a few bytes between them is for `moepack verify` to find. */
#define CONTENT_SAMPLES 64
#define CONTENT_BLOCK 4096
enum { CD_SIZE, CD_HEAD, CD_DATA, CD_N }; /* per file: dg[CD_N * f + ...] */

static mpk_status hash_range(XXH3_state_t *x, int fd, const char *path, uint64_t off, uint64_t len, char *buf,
                             size_t cap, mpk_error *err)
{
    while (len > 0) {
        size_t n = len < cap ? (size_t)len : cap;
        ssize_t r = pread(fd, buf, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return mpk_error_set(err, MPK_E_IO, r < 0 ? errno : 0, path, "cannot read at %llu: %s",
                                 (unsigned long long)off, r < 0 ? strerror(errno) : "file shrank");
        XXH3_64bits_update(x, buf, (size_t)r);
        off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return MPK_OK;
}

static mpk_status file_content(const mpk_shard *sh, uint64_t *dg, char *buf, size_t cap, XXH3_state_t *x,
                               mpk_error *err)
{
    struct stat st;
    if (fstat(sh->fd, &st) != 0)
        return mpk_error_set(err, MPK_E_IO, errno, sh->path, "cannot stat: %s", strerror(errno));
    uint64_t size = (uint64_t)st.st_size, head = sh->z ? 65536 : 8 + sh->header->header_len;
    head = head < size ? head : size;
    dg[CD_SIZE] = size;
    XXH3_64bits_reset(x);
    MPK_TRY(hash_range(x, sh->fd, sh->path, 0, head, buf, cap, err));
    dg[CD_HEAD] = XXH3_64bits_digest(x);
    XXH3_64bits_reset(x);
    uint64_t rest = size - head;
    if (rest <= (uint64_t)CONTENT_SAMPLES * CONTENT_BLOCK) {
        MPK_TRY(hash_range(x, sh->fd, sh->path, head, rest, buf, cap, err));
    } else { /* block k at head + k * (rest - block) / (samples - 1): the first and last included */
        for (uint64_t k = 0; k < CONTENT_SAMPLES; k++)
            MPK_TRY(hash_range(x, sh->fd, sh->path, head + k * (rest - CONTENT_BLOCK) / (CONTENT_SAMPLES - 1),
                               CONTENT_BLOCK, buf, cap, err));
    }
    dg[CD_DATA] = XXH3_64bits_digest(x);
    return MPK_OK;
}

/* dg[CD_N * (n_shards + 1)]: each source file's, then config.json's (all zero when SRC has none). */
static mpk_status content_digests(const mpk_ckpt *src, uint64_t *dg, mpk_error *err)
{
    size_t cap = 1u << 20;
    char *buf = mpk_alloc(cap);
    XXH3_state_t *x = XXH3_createState();
    mpk_status s = buf && x ? MPK_OK : mpk_error_set(err, MPK_E_NOMEM, 0, src->dir, "out of memory");
    for (size_t f = 0; s == MPK_OK && f < src->n_shards; f++)
        s = file_content(&src->shards[f], dg + CD_N * f, buf, cap, x, err);
    char *cfg = src->is_dir ? mpk_path_join(src->dir, "config.json") : NULL, *text = NULL;
    size_t len = 0;
    mpk_error ig;
    if (s == MPK_OK && cfg && mpk_read_file(cfg, &text, &len, &ig) == MPK_OK) {
        uint64_t *c = dg + CD_N * src->n_shards;
        c[CD_SIZE] = len;
        c[CD_HEAD] = XXH3_64bits(text, len) | 1; /* (nonzero: present) */
    }
    free(text);
    free(cfg);
    XXH3_freeState(x);
    free(buf);
    return s;
}

/* The ranks see the same sources: this rank's content digests against rank 0's (collective). */
static mpk_status same_sources(job *j)
{
    const mpk_ckpt *src = j->p->src;
    size_t n = CD_N * (src->n_shards + 1);
    uint64_t *mine = mpk_calloc(n, sizeof *mine), *r0 = mpk_calloc(n, sizeof *r0);
    mpk_status s = mine && r0 ? content_digests(src, mine, j->err) : nomem(j);
    s = dist_agree(j, s);
    if (s == MPK_OK) {
        memcpy(r0, mine, n * sizeof *r0);
        mpk_dist_bcast(r0, n * sizeof *r0, 0);
        for (size_t k = 0; k < n && s == MPK_OK; k++) {
            if (mine[k] == r0[k])
                continue;
            size_t f = k / CD_N;
            bool cfg = f == src->n_shards;
            static const char *const what[CD_N] = {"its size", "its header (tensor names, dtypes, shapes, offsets "
                                                   "or metadata)", "its tensor bytes"};
            char *cpath = cfg ? mpk_path_join(src->dir, "config.json") : NULL;
            s = mpk_error_set(j->err, MPK_E_CHANGED, 0, cfg ? (cpath ? cpath : "config.json") : src->shards[f].path,
                              "the MPI ranks see different sources: %s on rank %d differs from rank 0's (%s); every "
                              "rank must read the same checkpoint (the same SRC on a shared file system, or "
                              "identical copies)",
                              cfg ? "config.json" : src->shards[f].name, mpk_dist_rank(),
                              cfg ? (r0[k - k % CD_N + CD_HEAD] && mine[k - k % CD_N + CD_HEAD]
                                         ? "its bytes"
                                         : "present on one of them only")
                                  : what[k % CD_N]);
            free(cpath);
        }
    }
    free(mine);
    free(r0);
    return dist_agree(j, s);
}

/* The nodes and the unit size, agreed; the plan checked the same on every rank (the same
 * sources, sizes and outputs) and so the sources' content; the shards created by rank 0, then
 * opened by the others. */
static mpk_status dist_prepare(job *j)
{
    int me = mpk_dist_rank();
    mpk_status s = prepare_nodes(j);
    uint64_t ub = s == MPK_OK ? j->c.unit_bytes : UINT64_MAX, mine = plan_digest(j->p, j->o, false), d0 = mine;
    mpk_dist_reduce(&ub, 1, MPK_DIST_MIN);
    mpk_dist_bcast(&d0, sizeof d0, 0);
    if (s == MPK_OK && d0 != mine)
        s = mpk_error_set(j->err, MPK_E_CHANGED, 0, j->dst,
                          "this rank planned a different conversion than rank 0 (the source differs between "
                          "the hosts, or changed while the ranks read it)");
    MPK_TRY(dist_agree(j, s));
    MPK_TRY(same_sources(j));
    j->c.unit_bytes = ub;
    for (size_t sh = 0; me == 0 && sh < j->p->n_shards && s == MPK_OK; sh++)
        s = open_shard(j, sh);
    MPK_TRY(dist_agree(j, s));
    for (size_t sh = 0; me != 0 && sh < j->p->n_shards && s == MPK_OK; sh++)
        s = open_shard(j, sh);
    if (s == MPK_OK && (s = make_units(j)) == MPK_OK)
        s = assign_units(j);
    return dist_agree(j, s);
}

/* After the run (s: this rank's outcome): the split outputs hashed, every hash on every rank,
 * the shards fsynced and closed, and on rank 0 the rest of landing. */
static mpk_status dist_finish(job *j, mpk_status s, const char *src_path, mpk_exec_stats *stats)
{
    const mpk_plan *p = j->p;
    run_ctx *c = &j->c;
    MPK_TRY(dist_agree(j, s));
    char *buf = NULL;
    for (size_t i = 0; c->hashes && i < p->n_outs && s == MPK_OK; i++) {
        if (!c->hash_after[i])
            continue;
        if (!buf && !(buf = mpk_alloc(HASH_CHUNK)))
            s = nomem(j);
        else
            s = ex_hash_output(c, i, buf, j->err);
    }
    free(buf);
    MPK_TRY(dist_agree(j, s));
    if (c->hashes)
        MPK_TRY(mpk_hashes_share(c->hashes, p->n_outs, j->dst, j->err));
    s = close_shards(j);
    bool root = mpk_dist_rank() == 0;
    if (!root && !watch_landing(j->watch)) /* past this agreement rank 0 may land */
        s = mpk_error_set(j->err, MPK_E_CANCELLED, 0, j->dst, "cancelled; nothing was written there");
    MPK_TRY(dist_agree(j, s));
    if (root)
        s = !watch_landing(j->watch) ? mpk_error_set(j->err, MPK_E_CANCELLED, 0, j->dst,
                                                     "cancelled; nothing was written there")
                                     : land(j, src_path, stats);
    return dist_agree(j, s);
}


/* What is refused before anything is written. */
static mpk_status exec_checks(const mpk_plan *p, const char *src_path, const char *dst, const mpk_exec_opts *o,
                              mpk_error *err)
{
    MPK_TRY(mpk_overlap_check(src_path, p->src, dst, err));
    struct stat st;
    if (lstat(dst, &st) == 0 && !o->force)
        return mpk_dst_exists(dst, err);
    if (o->force)
        MPK_TRY(mpk_force_check(dst, err));
    if (o->cancel && *o->cancel)
        MPK_FAIL(err, MPK_E_CANCELLED, dst, "cancelled before anything was written");
    if (o->resume && mpk_dist_size() > 1)
        return mpk_error_set(err, MPK_E_USAGE, 0, dst,
                             "--resume is for one process; under MPI (%d ranks) an interrupted run is "
                             "started again", mpk_dist_size());
    return MPK_OK;
}

mpk_status mpk_exec(const mpk_plan *p, const char *dst, const mpk_exec_opts *o, mpk_exec_stats *stats,
                    mpk_error *err)
{
    double t0 = ex_now_s();
    memset(stats, 0, sizeof *stats);
    bool dist = mpk_dist_size() > 1;
    const char *src_path = p->src->is_dir ? p->src->dir : p->src->n_shards ? p->src->shards[0].path : "";
    MPK_TRY(mpk_dist_agree(exec_checks(p, src_path, dst, o, err), err));
    job j = {.p = p, .o = o, .dst = dst, .err = err, .b = {NULL, NULL, err}};
    j.threads = o->threads > 0 ? o->threads : mpk_default_threads();
    j.threads = j.threads > 64 ? 64 : j.threads;
    mpk_status s = mpk_stage_open_shared(&j.stage, dst, plan_digest(p, o, true), o, err);
    stats->resumed = j.stage.adopted;
    stats->stale_removed = j.stage.stale_removed;
    if (s != MPK_OK) {
        mpk_stage_close(&j.stage, false);
        return s;
    }
    if (j.stage.adopted)
        clean_adopted(&j.stage);
    j.c.p = p;
    j.c.o = o;
    j.c.stage = &j.stage;
    j.c.total = p->total_bytes;
    pthread_mutex_init(&j.c.lock, NULL);
    pthread_cond_init(&j.c.cv, NULL);
    pthread_cond_init(&j.c.sq_cv, NULL);
    atomic_store(&j.c.cfr_ok, 1);
    j.c.prefetch = !ex_env_is("MOEPACK_PREFETCH", "0");   /* =0: no read-ahead hints (to measure them) */
    j.c.writeback = !ex_env_is("MOEPACK_WRITEBACK", "0"); /* =0: no per-output writeback starts (likewise) */
    if (dist) {
        watch w;
        watch_start(&w, &j);
        if ((s = dist_prepare(&j)) == MPK_OK)
            s = dist_finish(&j, run_threads(&j, t0), src_path, stats);
        watch_stop(&w);
    } else if ((s = prepare(&j, stats)) == MPK_OK && (s = run_threads(&j, t0)) == MPK_OK) {
        s = land(&j, src_path, stats);
    }
    if (s == MPK_OK) {
        stats->tensors_in = p->src->n_tensors;
        stats->tensors_out = p->n_outs;
        stats->bytes_out = p->total_bytes;
        stats->threads = j.started;
        bool all_direct = j.c.dio != NULL;
        for (size_t sh = 0; j.c.dio && sh < p->n_shards; sh++) {
            all_direct &= j.c.dio[sh].on && !atomic_load(&j.c.dio[sh].buffered);
            stats->direct_bytes += atomic_load(&j.c.dio[sh].bytes);
        }
        stats->used_copy_range = o->use_copy_range && atomic_load(&j.c.cfr_ok) && !all_direct;
        stats->spliced_bytes = atomic_load(&j.c.spliced_bytes);
        stats->bounced_bytes = atomic_load(&j.c.bounced_bytes);
    }
    uint64_t read = atomic_load(&j.c.read_bytes), wrote = atomic_load(&j.c.done_bytes);
    job_free(&j);
    /* a failed run's output stays for --resume (unless it lost to another run) */
    mpk_stage_close(&j.stage, s != MPK_OK && o->resume && s != MPK_E_DST_EXISTS && s != MPK_E_OVERLAP);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        stats->peak_rss_kib = ru.ru_maxrss;
    stats->seconds = ex_now_s() - t0;
    if (s != MPK_OK) {
        ex_err_locate(err, dst, NULL);
        return s;
    }
    /* every rank reaches this with the same (agreed) status */
    stats->ranks = mpk_dist_stats(read, wrote, stats->seconds, &stats->n_ranks);
    return MPK_OK;
}
