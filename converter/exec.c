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
#include "exec_internal.h"
#include "mpk_config.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
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
        o->progress(o->progress_ctx, atomic_load(&c->done_bytes), c->p->total_bytes, ex_now_s() - t0);
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
    for (size_t i = 0; i < sc->p->src->n_shards; i++)
        if (strcmp(n, sc->p->src->shards[i].name) == 0)
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
    }
    if (!p->src->is_dir)
        return MPK_OK;
    side_ctx sc = {p, o, st};
    return mpk_copy_tree(p->src->dir, tmp, side_skip, &sc, o, st, err);
}

/* What determines the output bytes: a resumed run continues only a run with the same. */
static uint64_t plan_digest(const mpk_plan *p, const mpk_exec_opts *o)
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
        uint64_t v[5] = {(uint64_t)st.st_dev, (uint64_t)st.st_ino, (uint64_t)st.st_size,
                         (uint64_t)st.st_mtim.tv_sec, (uint64_t)st.st_mtim.tv_nsec};
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
        if ((n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2]))) || strcmp(n, MPK_RUN_FILE) == 0 ||
            strcmp(n, MPK_JOURNAL_FILE) == 0 || mpk_stage_journal_find(stage, n, &dg))
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
    const mpk_st_out *so = c->shards[sh];
    mpk_error ig;
    bool ok = buf != NULL;
    for (size_t i = 0; ok && i < c->p->n_outs; i++) {
        const mpk_plan_out *po = &c->p->outs[i];
        if (po->shard == (int)sh)
            ok = mpk_hash_file_range(so->fd, so->data_start + so->tensors[c->slot[i]].begin, po->nbytes, buf,
                                     HASH_CHUNK, so->path, po->name, &c->hashes[i].hash, &ig) == MPK_OK;
    }
    free(buf);
    return ok && ex_shard_digest(c->p, sh, c->hashes) == want;
}

mpk_status mpk_exec(const mpk_plan *p, const char *dst, const mpk_exec_opts *o,
                    mpk_exec_stats *stats, mpk_error *err)
{
    double t0 = ex_now_s();
    memset(stats, 0, sizeof *stats);
    const char *src_path = p->src->is_dir ? p->src->dir : p->src->n_shards ? p->src->shards[0].path : "";
    MPK_TRY(mpk_overlap_check(src_path, p->src, dst, err));
    struct stat st;
    if (lstat(dst, &st) == 0 && !o->force)
        MPK_FAIL(err, MPK_E_DST_EXISTS, dst, "destination exists (use --force to replace it)");
    if (o->cancel && *o->cancel)
        MPK_FAIL(err, MPK_E_CANCELLED, dst, "cancelled before anything was written");
    int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1)
        threads = 1;
    if (threads > 64)
        threads = 64;
    mpk_stage stage;
    mpk_status s = mpk_stage_open(&stage, dst, plan_digest(p, o), o, err);
    stats->resumed = stage.adopted;
    stats->stale_removed = stage.stale_removed;
    if (s != MPK_OK) {
        mpk_stage_close(&stage, false);
        return s;
    }
    if (stage.adopted)
        clean_adopted(&stage);
    const char *tmp = stage.tmp;
    bool *reopened = mpk_calloc(p->n_shards + 1, sizeof *reopened);
    builder b = {NULL, NULL, err};
    mpk_arena *arena = mpk_arena_new();
    run_ctx c;
    memset(&c, 0, sizeof c);
    c.p = p;
    c.o = o;
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.cv, NULL);
    pthread_cond_init(&c.sq_cv, NULL);
    atomic_store(&c.cfr_ok, 1);
    mpk_tensor_info **infos = NULL;
    c.shards = mpk_calloc(p->n_shards, sizeof *c.shards);
    c.slot = mpk_calloc(p->n_outs + 1, sizeof *c.slot);
    infos = mpk_calloc(p->n_shards, sizeof *infos);
    c.stage = &stage;
    if (!arena || !c.shards || !c.slot || !infos || !reopened) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
        goto done;
    }
    c.nodes = b.out = mpk_calloc(p->n_outs + 1, sizeof *b.out);
    if (!b.out) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
        goto done;
    }
    if ((s = ex_build_nodes(p, &b, arena)) != MPK_OK)
        goto done;
    /* memory: one unit buffer per thread plus transpose temporaries (2 slabs + read) */
    uint64_t per_thread = o->mem / (uint64_t)threads;
    uint64_t slab = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t m = ex_max_slab(c.nodes[i]);
        if (m > slab)
            slab = m;
    }
    uint64_t unit_bytes = per_thread / 3;
    if (unit_bytes > (64u << 20))
        unit_bytes = 64u << 20;
    if (slab && unit_bytes < slab)
        unit_bytes = slab;
    if (unit_bytes < 4096)
        unit_bytes = 4096;
    if (slab && 3 * slab > per_thread) {
        char h1[32], h2[32];
        s = mpk_error_set(err, MPK_E_MEMORY_BUDGET, 0, dst,
                          "a transpose block needs %s per thread (3 x %s) but --mem gives %s per "
                          "thread; raise --mem or lower --threads",
                          mpk_human_bytes(3 * slab, h1, sizeof h1), mpk_human_bytes(slab, h2, sizeof h2),
                          mpk_human_bytes(per_thread, h1 + 16, 16));
        goto done;
    }
    /* a unit never splits a computed node's granule (a row to dequantize, a matrix to
     * transpose), also when that node sits inside a merge or concat; the buffer holds one */
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t g = ex_node_granule(c.nodes[i]);
        if (g > unit_bytes)
            unit_bytes = g;
    }
    c.unit_bytes = unit_bytes;
    /* shard files */
    for (size_t sh = 0; sh < p->n_shards; sh++) {
        size_t n = 0;
        for (size_t i = 0; i < p->n_outs; i++)
            n += p->outs[i].shard == (int)sh;
        infos[sh] = mpk_calloc(n + 1, sizeof **infos);
        if (!infos[sh]) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
            goto done;
        }
        n = 0;
        for (size_t i = 0; i < p->n_outs; i++)
            if (p->outs[i].shard == (int)sh) {
                mpk_tensor_info *t = &infos[sh][n++];
                t->name = p->outs[i].name;
                t->dtype = p->outs[i].meta.dtype;
                t->ndim = p->outs[i].meta.ndim;
                memcpy(t->shape, p->outs[i].meta.shape, sizeof t->shape);
            }
        /* lay the shard out (sorts infos[sh]), map plan outputs to their place in it */
        char *hdr;
        size_t hlen;
        if ((s = mpk_st_layout(infos[sh], n, o->metadata, o->n_metadata, &hdr, &hlen, NULL, err)) != MPK_OK)
            goto done;
        free(hdr);
        mpk_strmap m;
        if (mpk_strmap_init(&m, n) != MPK_OK) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
            goto done;
        }
        for (size_t k = 0; k < n; k++)
            mpk_strmap_put(&m, infos[sh][k].name, strlen(infos[sh][k].name), k, NULL);
        for (size_t i = 0; i < p->n_outs; i++)
            if (p->outs[i].shard == (int)sh)
                mpk_strmap_get(&m, p->outs[i].name, strlen(p->outs[i].name), &c.slot[i]);
        mpk_strmap_free(&m);
        /* the data start (modulo a page) that puts the most copied bytes at the same offset
         * within a page as their source (whatever the copy mode: the output is the same) */
        int phase = -1;
        {
            uint64_t votes[4096 / 8] = {0}, best = 0;
            for (size_t i = 0; i < p->n_outs; i++)
                if (p->outs[i].shard == (int)sh && c.nodes[i]->pure)
                    ex_each_source_range(c.nodes[i], 0, p->outs[i].nbytes, infos[sh][c.slot[i]].begin,
                                      ex_phase_vote, votes);
            for (int k = 0; k < 4096 / 8; k++)
                if (votes[k] > best) {
                    best = votes[k];
                    phase = k * 8;
                }
        }
        char name[64];
        mpk_shard_name(sh + 1, p->n_shards, name, sizeof name);
        char *path = mpk_path_join(tmp, name);
        uint64_t dg;
        mpk_error ig;
        if (path && stage.adopted && mpk_stage_journal_find(&stage, name, &dg)) {
            reopened[sh] = mpk_st_out_reopen(path, infos[sh], n, o->metadata, o->n_metadata, phase, &c.shards[sh],
                                             &ig) == MPK_OK;
            if (!reopened[sh])
                unlink(path);
        }
        s = !path ? mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory")
            : reopened[sh] ? MPK_OK
                           : mpk_st_out_create(path, infos[sh], n, o->metadata, o->n_metadata, phase, &c.shards[sh], err);
        free(path);
        if (s != MPK_OK)
            goto done;
    }
    /* units */
    size_t n_units = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t g = ex_node_granule(c.nodes[i]), u = unit_bytes < g ? g : unit_bytes - unit_bytes % g;
        n_units += p->outs[i].nbytes ? (size_t)((p->outs[i].nbytes + u - 1) / u) : 0;
    }
    c.units = mpk_calloc(n_units + 1, sizeof *c.units);
    if (!c.units) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t g = ex_node_granule(c.nodes[i]), u = unit_bytes < g ? g : unit_bytes - unit_bytes % g;
        const mpk_st_out *so = c.shards[p->outs[i].shard];
        uint64_t base = so->data_start + so->tensors[c.slot[i]].begin;
        for (uint64_t off = 0; off < p->outs[i].nbytes; off += u)
            c.units[c.n_units++] = (unit){i, p->outs[i].shard, off,
                                          p->outs[i].nbytes - off < u ? p->outs[i].nbytes - off : u, base + off};
    }
    /* per-shard queues in file order */
    qsort(c.units, c.n_units, sizeof *c.units, file_order);
    c.q = mpk_calloc(p->n_shards, sizeof *c.q);
    if (!c.q) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
        goto done;
    }
    for (size_t u = 0, sh = 0; sh < p->n_shards; sh++) {
        c.q[sh].lo = u;
        while (u < c.n_units && (size_t)c.units[u].shard == sh)
            u++;
        c.q[sh].hi = u;
        atomic_init(&c.q[sh].next, c.q[sh].lo);
        atomic_init(&c.q[sh].busy, 0);
        pthread_mutex_init(&c.q[sh].lock, NULL);
    }
    if (o->hash_outputs || !o->no_fsync) {
        c.left = mpk_calloc(p->n_outs + 1, sizeof *c.left);
        c.hashes = o->hash_outputs ? mpk_calloc(p->n_outs + 1, sizeof *c.hashes) : NULL;
        c.sh_left = o->hash_outputs ? mpk_calloc(p->n_shards + 1, sizeof *c.sh_left) : NULL;
        c.syncq = o->hash_outputs ? mpk_calloc(p->n_shards + 1, sizeof *c.syncq) : NULL;
        c.hq = mpk_calloc(p->n_outs + 1, sizeof *c.hq);
        if (!c.left || (o->hash_outputs && (!c.hashes || !c.sh_left || !c.syncq)) || !c.hq) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < p->n_outs; i++) {
            const mpk_plan_out *po = &p->outs[i];
            atomic_init(&c.left[i], po->nbytes);
            if (c.hashes) {
                c.hashes[i] = (mpk_tensor_hash){.name = po->name, .dtype = po->meta.dtype, .ndim = po->meta.ndim};
                memcpy(c.hashes[i].shape, po->meta.shape, sizeof c.hashes[i].shape);
            }
        }
    }
    /* resuming: shards the dead run completed are kept once they check out, their units
     * counted as done; the others are written again from scratch */
    for (size_t sh = 0; sh < p->n_shards; sh++) {
        if (!reopened[sh])
            continue;
        uint64_t want = 0;
        char name[64];
        mpk_shard_name(sh + 1, p->n_shards, name, sizeof name);
        mpk_stage_journal_find(&stage, name, &want);
        if (shard_checks_out(&c, sh, want)) {
            stats->shards_kept++;
            for (size_t u = c.q[sh].lo; u < c.q[sh].hi; u++) {
                atomic_fetch_add(&c.units_done, 1);
                atomic_fetch_add(&c.done_bytes, c.units[u].len);
            }
            atomic_store(&c.q[sh].next, c.q[sh].hi);
            continue;
        }
        mpk_tensor_info *ti = c.shards[sh]->tensors;
        size_t nt = c.shards[sh]->n_tensors;
        uint64_t ds = c.shards[sh]->data_start;
        char *path = mpk_strndup(c.shards[sh]->path, strlen(c.shards[sh]->path));
        mpk_st_out_close(c.shards[sh], false, NULL);
        c.shards[sh] = NULL;
        reopened[sh] = false;
        if (path)
            unlink(path);
        /* the same layout again (the phase is the one that gave data_start) */
        s = !path ? mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory")
                  : mpk_st_out_create(path, ti, nt, o->metadata, o->n_metadata, (int)(ds % 4096), &c.shards[sh], err);
        free(path);
        if (s != MPK_OK)
            goto done;
    }
    for (size_t i = 0; c.left && i < p->n_outs; i++) {
        const mpk_plan_out *po = &p->outs[i];
        if (reopened[po->shard]) {
            atomic_store(&c.left[i], 0);
            continue;
        }
        if (c.sh_left)
            atomic_fetch_add(&c.sh_left[po->shard], 1);
        if (!po->nbytes) /* no unit will complete it: complete from the start */
            c.hq[c.hq_tail++] = i;
    }
    pthread_t th[64], sync_th;
    worker_arg args[64];
    int started = 0;
    bool syncing = c.syncq && pthread_create(&sync_th, NULL, ex_syncer, &c) == 0;
    if (c.syncq && !syncing) {
        s = mpk_error_set(err, MPK_E_IO, errno, dst, "cannot start the ex_syncer thread");
        goto done;
    }
    for (int i = 0; i < threads; i++) {
        args[i] = (worker_arg){&c, (size_t)i % (p->n_shards ? p->n_shards : 1)};
        if (pthread_create(&th[i], NULL, ex_worker, &args[i]) != 0)
            break;
        started++;
    }
    if (!started) {
        s = mpk_error_set(err, MPK_E_IO, errno, dst, "cannot start ex_worker threads");
        ex_stop_syncer(&c, syncing, sync_th);
        goto done;
    }
    /* the calling thread reports progress and watches the cancel flag meanwhile */
    if (o->progress || o->cancel) {
        while (atomic_load(&c.units_done) < c.n_units && !atomic_load(&c.failed)) {
            if (o->cancel && *o->cancel) {
                mpk_error ce = {0};
                mpk_error_set(&ce, MPK_E_CANCELLED, 0, dst, "cancelled; nothing was written there");
                ex_run_fail(&c, &ce);
                break;
            }
            progress(&c, o, t0);
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    ex_stop_syncer(&c, syncing, sync_th);
    if (!atomic_load(&c.failed))
        progress(&c, o, t0);
    if (atomic_load(&c.failed)) {
        *err = c.err;
        s = c.err.code;
        goto done;
    }
    for (size_t sh = 0; sh < p->n_shards; sh++) {
        mpk_st_out *so = c.shards[sh];
        c.shards[sh] = NULL;
        if ((s = mpk_st_out_close(so, !o->no_fsync, err)) != MPK_OK)
            goto done;
    }
    if (p->n_shards > 1) {
        const char **names = mpk_calloc(p->n_outs + 1, sizeof *names);
        const char **files = mpk_calloc(p->n_outs + 1, sizeof *files);
        char(*fn)[64] = mpk_calloc(p->n_shards, 64);
        if (names && files && fn) {
            for (size_t sh = 0; sh < p->n_shards; sh++)
                mpk_shard_name(sh + 1, p->n_shards, fn[sh], 64);
            for (size_t i = 0; i < p->n_outs; i++) {
                names[i] = p->outs[i].name;
                files[i] = fn[p->outs[i].shard];
            }
            s = mpk_index_write(tmp, names, files, p->n_outs, p->total_bytes, !o->no_fsync, err);
        } else {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dst, "out of memory");
        }
        free(names);
        free(files);
        free(fn);
        if (s != MPK_OK)
            goto done;
    }
    if ((s = copy_side_files(p, tmp, o, &stats->side, err)) != MPK_OK)
        goto done;
    if (o->finish && (s = o->finish(tmp, c.hashes, c.hashes ? p->n_outs : 0, err)) != MPK_OK)
        goto done;
    /* into place: the source is checked again (written in place or renamed while we read) */
    if ((s = mpk_ckpt_check_unchanged(p->src, err)) != MPK_OK ||
        (s = mpk_overlap_check(src_path, p->src, dst, err)) != MPK_OK ||
        (s = mpk_stage_commit(&stage, o->force, err)) != MPK_OK)
        goto done;
    stats->tensors_in = p->src->n_tensors;
    stats->tensors_out = p->n_outs;
    stats->bytes_out = p->total_bytes;
    stats->threads = started;
    stats->used_copy_range = o->use_copy_range && atomic_load(&c.cfr_ok);
done:
    if (c.shards)
        for (size_t sh = 0; sh < p->n_shards; sh++)
            mpk_st_out_close(c.shards[sh], false, NULL);
    /* a failed run's output stays for --resume (unless it lost to another run) */
    mpk_stage_close(&stage, s != MPK_OK && o->resume && s != MPK_E_DST_EXISTS && s != MPK_E_OVERLAP);
    free(reopened);
    if (infos)
        for (size_t sh = 0; sh < p->n_shards; sh++)
            free(infos[sh]);
    free(infos);
    free(c.shards);
    free(c.slot);
    free(c.units);
    if (c.q)
        for (size_t sh = 0; sh < p->n_shards; sh++)
            pthread_mutex_destroy(&c.q[sh].lock);
    free(c.q);
    free(c.left);
    free(c.sh_left);
    free(c.syncq);
    free(c.hashes);
    free(c.hq);
    ex_nodes_free(&b);
    free(b.out);
    mpk_arena_free(arena);
    pthread_mutex_destroy(&c.lock);
    pthread_cond_destroy(&c.cv);
    pthread_cond_destroy(&c.sq_cv);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        stats->peak_rss_kib = ru.ru_maxrss;
    stats->seconds = ex_now_s() - t0;
    if (s != MPK_OK)
        ex_err_locate(err, dst, NULL);
    return s;
}

