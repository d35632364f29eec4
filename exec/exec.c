/* exec.c — streaming execution of a plan, the top: mpk_exec (what is refused first, the
 * staging directory, the phases in order, the statistics) and the threads that run the units.
 * The rooms it calls: units.c (the nodes, the unit size, the units in file order), land.c (the
 * output shard files, resuming a dead run, the index, config and SRC's other files, the commit
 * into place), share.c (the same under MPI, each rank its share).
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
        return mpk_error_about(err, MPK_FIELD_RESUME,
                               mpk_error_set(err, MPK_E_USAGE, 0, dst,
                                             "resuming is for one process; under MPI (%d ranks) an interrupted "
                                             "run is started again", mpk_dist_size()));
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
    mpk_status s = mpk_stage_open_shared(&j.stage, dst, ex_plan_digest(p, o, true), o, err);
    stats->resumed = j.stage.adopted;
    stats->stale_removed = j.stage.stale_removed;
    if (s != MPK_OK) {
        mpk_stage_close(&j.stage, false);
        return s;
    }
    if (j.stage.adopted)
        ex_clean_adopted(&j.stage);
    j.c.p = p;
    j.c.o = o;
    j.c.stage = &j.stage;
    j.c.total = p->total_bytes;
    pthread_mutex_init(&j.c.lock, NULL);
    pthread_cond_init(&j.c.cv, NULL);
    pthread_cond_init(&j.c.sq_cv, NULL);
    atomic_store(&j.c.cfr_ok, 1);
    j.c.prefetch = !o->no_prefetch;   /* (off: to measure the read-ahead hints) */
    j.c.writeback = !o->no_writeback; /* (off: to measure the per-output writeback starts) */
    if (dist) {
        watch w;
        ex_watch_start(&w, &j);
        if ((s = ex_dist_prepare(&j)) == MPK_OK)
            s = ex_dist_finish(&j, run_threads(&j, t0), src_path, stats);
        ex_watch_stop(&w);
    } else if ((s = ex_prepare(&j, stats)) == MPK_OK && (s = run_threads(&j, t0)) == MPK_OK) {
        s = ex_land(&j, src_path, stats);
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
