/* run.c — the run: units of output bytes claimed by worker threads, one writer per shard at a
 * time, complete tensors hashed as they finish, complete shards fsynced and journalled by the
 * syncer thread. */
#define _GNU_SOURCE
#include "engine_internal.h"
#include "mpk_config.h"

#include <errno.h>
#include <xxhash.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- the run */


/* Errors raised deep in an op or the I/O engine (out of memory, internal) say "exec", "ops" or
 * "io": the caller that knows the
 * file, and the tensor, puts them in. An error that already names a file (a source shard that
 * failed to read) keeps it and says which output tensor was being written. */
void ex_err_locate(mpk_error *err, const char *path, const char *tensor)
{
    size_t wl = strlen(err->where);
    bool bare = !wl || strcmp(err->where, "exec") == 0 || strcmp(err->where, "io") == 0 ||
                strcmp(err->where, "ops") == 0;
    if (bare && !tensor && !path)
        return;
    char w[sizeof err->where], m[768];
    mpk_field field = err->field; /* kept: the same failure, located */
    snprintf(w, sizeof w, "%s", bare ? path : err->where);
    snprintf(m, sizeof m, "%s", mpk_error_what(err));
    if (!tensor)
        mpk_error_set(err, err->code, err->sys_errno, w, "%s", m);
    else if (bare || (path && strcmp(w, path) == 0))
        mpk_error_set(err, err->code, err->sys_errno, w, "tensor '%s': %s", tensor, m);
    else
        mpk_error_set(err, err->code, err->sys_errno, w, "%s (writing tensor '%s' to %s)", m, tensor,
                      path ? path : "the output");
    err->field = field;
}

void ex_run_fail(run_ctx *c, const mpk_error *e)
{
    pthread_mutex_lock(&c->lock);
    if (!atomic_load(&c->failed)) {
        c->err = *e;
        atomic_store(&c->failed, 1);
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->lock);
}

/* Output i is read back with pread through buf (HASH_CHUNK bytes). Hashing it through mapped
 * windows instead measured 1.4x cheaper on 2026-12-02 and 3.2x dearer on 2026-12-03, on the same
 * VM (bench/hash_readback; bench/RESULTS.md): the copy costs what it costs everywhere, a new
 * mapping costs what the host's page-table handling makes it. */
mpk_status ex_hash_output(run_ctx *c, size_t i, char *buf, mpk_error *err)
{
    const mpk_plan_out *po = &c->p->outs[i];
    const mpk_st_out *so = c->shards[po->shard];
    return mpk_hash_file_range(so->fd, so->data_start + so->tensors[c->slot[i]].begin, po->nbytes, buf, HASH_CHUNK,
                               false, so->path, po->name, &c->hashes[i].hash, err);
}

static void sync_enqueue(run_ctx *c, size_t item)
{
    pthread_mutex_lock(&c->lock);
    c->syncq[c->sq_tail++] = item;
    pthread_cond_signal(&c->sq_cv);
    pthread_mutex_unlock(&c->lock);
}

/* The hash state unit w's bytes go into, in its turn: its output's, when w is next in it (else
 * NULL, and that output is read back instead). */
static mpk_xxh *mem_hash_next(run_ctx *c, const unit *w)
{
    mem_hash *m = &c->mh[w->out];
    if (w->off != m->to || (c->split && c->split[w->out]))
        return NULL;
    if (w->off == 0 && !m->st)
        m->st = mpk_xxh_new();
    return m->st;
}

/* Hashes a computed unit's bytes, just written from buf in its turn. */
static void mem_hash_unit(run_ctx *c, const unit *w, const void *buf)
{
    mpk_xxh *h = mem_hash_next(c, w);
    if (!h)
        return;
    mpk_xxh_update(h, buf, (size_t)w->len);
    c->mh[w->out].to += w->len;
}

/* What happens to output i once all its bytes are written: its XXH3-128 (o->hash_outputs),
 * from its units' bytes as they were written or else read back from the shard file, and,
 * when the shards will be fsynced, the start of its writeback, so that the disk works while
 * the rest is written and the final fsync waits for little more than the last tensors. The
 * syncer thread starts it, so that no worker waits while the kernel allocates blocks and
 * queues the I/O (without the starts, a durable pack --dequantize ran 1.15x slower in the
 * median round, one earlier run had it faster; bench/RESULTS.md). */
static mpk_status output_complete(run_ctx *c, size_t i, char *buf, mpk_error *err)
{
    mpk_status s = MPK_OK;
    mem_hash *m = c->mh ? &c->mh[i] : NULL;
    if (m && m->st && m->to == c->p->outs[i].nbytes) {
        c->hashes[i].hash = mpk_xxh_digest(m->st);
    } else if (c->hashes && c->dio && c->dio[c->p->outs[i].shard].fd >= 0 && c->p->outs[i].nbytes) {
        /* its last bytes may still wait in the carry block: the file cannot tell yet */
        s = mpk_error_set(err, MPK_E_NOMEM, 0, "exec", "out of memory for a hash state");
    } else if (c->hashes && !(c->split && c->split[i])) { /* a split output is hashed once all ranks wrote it */
        s = ex_hash_output(c, i, buf, err);
    }
    if (m) {
        mpk_xxh_free(m->st);
        m->st = NULL;
    }
    if (s == MPK_OK && c->writeback && c->syncq && !c->o->no_fsync && c->p->outs[i].nbytes)
        sync_enqueue(c, SQ_OUTPUT | i);
    return s;
}

/* Starts output i's writeback (a hint: its failure shows in the fsync). */
static void output_writeback(run_ctx *c, size_t i)
{
    const mpk_plan_out *po = &c->p->outs[i];
    const mpk_st_out *so = c->shards[po->shard];
    uint64_t base = so->data_start + so->tensors[c->slot[i]].begin;
    sync_file_range(so->fd, (off64_t)base, (off64_t)po->nbytes, SYNC_FILE_RANGE_WRITE);
}

/* A shard's digest, what its journal line records: XXH3-64 over its outputs' names and
 * hashes in plan order (hashes[i] for every output i in the shard). */
uint64_t ex_shard_digest(const mpk_plan *p, size_t sh, const mpk_tensor_hash *hashes)
{
    XXH3_state_t *x = XXH3_createState();
    if (!x)
        return 0;
    XXH3_64bits_reset(x);
    for (size_t i = 0; i < p->n_outs; i++)
        if (p->outs[i].shard == (int)sh) {
            XXH3_64bits_update(x, p->outs[i].name, strlen(p->outs[i].name) + 1);
            XXH3_64bits_update(x, &hashes[i].hash, sizeof hashes[i].hash);
        }
    uint64_t d = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return d;
}

/* A shard all of whose outputs are complete: fsync it and record it in the journal, so that
 * a resumed run keeps it. Runs on the ex_syncer thread. */
static mpk_status shard_durable(run_ctx *c, size_t sh, mpk_error *err)
{
    const mpk_st_out *so = c->shards[sh];
    if (!c->o->no_fsync)
        MPK_TRY(mpk_fsync_fd(so->fd, so->path, err));
    char name[64];
    mpk_plan_shard_name(c->p, sh, name, sizeof name);
    return mpk_stage_journal_add(c->stage, name, ex_shard_digest(c->p, sh, c->hashes), err);
}

/* Lets the ex_syncer finish what is queued, then joins it. */
void ex_stop_syncer(run_ctx *c, bool running, pthread_t th)
{
    if (!running)
        return;
    pthread_mutex_lock(&c->lock);
    c->sq_end = true;
    pthread_cond_signal(&c->sq_cv);
    pthread_mutex_unlock(&c->lock);
    pthread_join(th, NULL);
}

void *ex_syncer(void *arg)
{
    run_ctx *c = arg;
    mpk_error err = {0};
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (c->sq_head == c->sq_tail && !c->sq_end)
            pthread_cond_wait(&c->sq_cv, &c->lock);
        if (c->sq_head == c->sq_tail)
            break;
        size_t item = c->syncq[c->sq_head++];
        pthread_mutex_unlock(&c->lock);
        if (!atomic_load(&c->failed) && (item & SQ_OUTPUT))
            output_writeback(c, item & ~SQ_OUTPUT);
        else if (!atomic_load(&c->failed) && shard_durable(c, item, &err) != MPK_OK)
            ex_run_fail(c, &err);
        pthread_mutex_lock(&c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Finishes one queued complete output (output_complete): 1 if it did, 0 if none was queued,
 * -1 on failure. */
static int finish_one(run_ctx *c, char **buf, mpk_error *err)
{
    if (!c->hq)
        return 0;
    pthread_mutex_lock(&c->lock);
    bool any = c->hq_head < c->hq_tail;
    size_t i = any ? c->hq[c->hq_head++] : 0;
    pthread_mutex_unlock(&c->lock);
    if (!any)
        return 0;
    if (c->hashes && !*buf && !(*buf = mpk_alloc(HASH_CHUNK))) {
        mpk_error_set(err, MPK_E_NOMEM, 0, "exec", "out of memory");
        return -1;
    }
    if (output_complete(c, i, *buf, err) != MPK_OK) {
        ex_err_locate(err, c->shards[c->p->outs[i].shard]->path, c->p->outs[i].name);
        return -1;
    }
    int sh = c->p->outs[i].shard;
    if (c->sh_left && atomic_fetch_sub(&c->sh_left[sh], 1) == 1)
        sync_enqueue(c, (size_t)sh);
    return 1;
}

/* Waits for unit u's turn to write into its shard (each shard's units are written one at a
 * time, in file order), handling complete outputs meanwhile unless u is next: a thread hashing
 * a large output while its unit's turn came would hold up the shard's writes. Fails once
 * another thread has. */
static mpk_status take_turn(run_ctx *c, shard_q *q, size_t u, char **hbuf, mpk_error *err)
{
    atomic_fetch_add(&q->busy, 1);
    while (atomic_load(&q->turn) != u) {
        int h = atomic_load(&q->turn) + 1 == u ? 0 : finish_one(c, hbuf, err);
        if (h > 0)
            continue;
        bool failed = h < 0;
        if (!failed) {
            pthread_mutex_lock(&c->lock);
            while (atomic_load(&q->turn) != u && !atomic_load(&c->failed) &&
                   (atomic_load(&q->turn) + 1 == u || c->hq_head == c->hq_tail))
                pthread_cond_wait(&c->cv, &c->lock);
            failed = atomic_load(&c->failed);
            pthread_mutex_unlock(&c->lock);
            if (failed) /* (the first failure is the one reported) */
                mpk_error_set(err, MPK_E_IO, 0, "exec", "stopped after another thread failed");
        }
        if (failed) {
            atomic_fetch_sub(&q->busy, 1);
            return err->code;
        }
    }
    return MPK_OK;
}

/* Ends a turn; `wrote`: the unit is written, so the next unit's turn begins. */
static void end_turn(run_ctx *c, shard_q *q, bool wrote)
{
    if (wrote) {
        pthread_mutex_lock(&c->lock);
        atomic_fetch_add(&q->turn, 1);
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->lock);
    }
    atomic_fetch_sub(&q->busy, 1);
}

static void written(run_ctx *c, const unit *w)
{
    atomic_fetch_add(&c->done_bytes, w->len);
    bool last = atomic_fetch_add(&c->units_done, 1) + 1 == c->n_units;
    bool complete = c->left && atomic_fetch_sub(&c->left[w->out], w->len) == w->len;
    if (complete || last) {
        pthread_mutex_lock(&c->lock);
        if (complete)
            c->hq[c->hq_tail++] = w->out;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->lock);
    }
}

/* Read-ahead across the scattered source ranges of a shard's next units: the kernel's own
 * readahead follows one file front to back, while a packed tensor gathers expert slices from
 * many places; from a cold cache each copy would wait for its own reads. So when a unit is
 * claimed, the source ranges of the units that follow it in the shard's queue, up to
 * PREFETCH_BYTES ahead, are handed to the kernel to read in the background (each range once).
 * Computed units (transpose, cast, dequantize) read through the I/O engine's queue instead. */
#define PREFETCH_BYTES (64u << 20)

static mpk_status willneed(const mpk_node *src, uint64_t file_off, uint64_t len, uint64_t at, void *ctx)
{
    (void)at, (void)ctx;
    if (!src->z)
        posix_fadvise(src->fd, (off_t)file_off, (off_t)len, POSIX_FADV_WILLNEED); /* a hint */
    return MPK_OK;
}

/* The end of the units after u that PREFETCH_BYTES reach: the first t past u + 1 whose units
 * [u + 1, t) hold PREFETCH_BYTES, else q->hi. A binary search of the running byte counts: a walk
 * over the units at every claim was quadratic where units are small (unpack of 60,004 tensors
 * of a few hundred bytes: each claim walked every unit left, 21 s; bench/RESULTS.md). */
static size_t prefetch_end(const run_ctx *c, const shard_q *q, size_t u)
{
    if (u + 1 >= q->hi)
        return u + 1;
    uint64_t want = c->units_upto[u + 1] + PREFETCH_BYTES;
    size_t lo = u + 2, hi = q->hi; /* the answer lies in [lo, hi] */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->units_upto[mid] >= want)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static void prefetch(run_ctx *c, shard_q *q, size_t u)
{
    size_t to = prefetch_end(c, q, u);
    size_t from = atomic_load(&q->ahead);
    do {
        if (from >= to)
            return;
    } while (!atomic_compare_exchange_weak(&q->ahead, &from, to));
    for (size_t k = from > u + 1 ? from : u + 1; k < to; k++) {
        const unit *w = &c->units[k];
        if (c->nodes[w->out]->pure)
            ex_each_source_range(c->nodes[w->out], w->off, w->len, w->at, willneed, NULL);
    }
}

/* Claims the next unit: first from a shard no thread is writing (starting at `home`), else,
 * after hashing one complete output if one is queued, from the least busy shard with units
 * left. Returns the unit index, SIZE_MAX when every unit is claimed, or SIZE_MAX - 1 when it
 * hashed instead (or failed doing so: c->failed is then set). */
static size_t claim(run_ctx *c, size_t home, char **hbuf, mpk_error *err)
{
    size_t ns = c->p->n_shards;
    for (int pass = 0; pass < 2; pass++) {
        size_t best = SIZE_MAX;
        int best_busy = 0;
        for (size_t k = 0; k < ns; k++) {
            shard_q *q = &c->q[(home + k) % ns];
            if (atomic_load(&q->next) >= q->hi)
                continue;
            int b = atomic_load(&q->busy);
            if (pass == 0 && b > 0)
                continue;
            if (best == SIZE_MAX || b < best_busy) {
                best = (home + k) % ns;
                best_busy = b;
            }
        }
        if (best != SIZE_MAX) {
            size_t u = atomic_fetch_add(&c->q[best].next, 1);
            if (u < c->q[best].hi) {
                if (c->prefetch)
                    prefetch(c, &c->q[best], u);
                return u;
            }
            pass--; /* lost the race for that shard's last unit: look again */
            continue;
        }
        if (pass == 0) {
            int h = finish_one(c, hbuf, err);
            if (h != 0) {
                if (h < 0)
                    ex_run_fail(c, err);
                return SIZE_MAX - 1;
            }
        }
    }
    return SIZE_MAX;
}


/* A worker's own state: its reader, buffers and pipe. */
typedef struct {
    mpk_error err;
    reader r;
    char *buf, *buf_raw, *hbuf; /* buf: buf_raw aligned to EX_DIO_ALIGN */
    ex_pipe pp;
} worker;

/* Nothing left to claim: handles what others complete, then waits for more of that or the end.
 * True when the worker is to stop. */
static bool drain(run_ctx *c, worker *k)
{
    int h;
    while ((h = finish_one(c, &k->hbuf, &k->err)) > 0)
        ;
    if (h < 0)
        ex_run_fail(c, &k->err);
    if (h < 0 || !c->hq)
        return true;
    pthread_mutex_lock(&c->lock);
    while (c->hq_head == c->hq_tail && atomic_load(&c->units_done) < c->n_units && !atomic_load(&c->failed))
        pthread_cond_wait(&c->cv, &c->lock);
    bool finished = c->hq_head == c->hq_tail;
    pthread_mutex_unlock(&c->lock);
    return finished;
}

/* Unit u moved by copy_file_range/splice in its shard's turn; *done when it was (a file system
 * that cannot is remembered, and the unit read instead). */
static mpk_status copy_unit(run_ctx *c, worker *k, size_t u, bool *done)
{
    const unit *w = &c->units[u];
    mpk_status s = take_turn(c, &c->q[w->shard], u, &k->hbuf, &k->err);
    if (s != MPK_OK)
        return s;
    mpk_xxh *hs = c->mh && k->pp.bounce ? mem_hash_next(c, w) : NULL; /* hashed on the way */
    s = ex_node_copy(c->nodes[w->out], w->off, w->len, c->shards[w->shard], w->at, &k->pp, hs, &k->err);
    if (hs) /* a failed copy may have hashed part of the unit: read back instead */
        c->mh[w->out].to = s == MPK_OK ? c->mh[w->out].to + w->len : UINT64_MAX;
    end_turn(c, &c->q[w->shard], s == MPK_OK);
    if (s == MPK_OK) {
        *done = true;
        atomic_fetch_add(&c->read_bytes, w->len);
    } else if (k->err.sys_errno == EXDEV || k->err.sys_errno == EINVAL || k->err.sys_errno == ENOSYS ||
               k->err.sys_errno == EOPNOTSUPP) {
        atomic_store(&c->cfr_ok, 0); /* fall back to reading */
        s = MPK_OK;
    }
    return s;
}

/* Unit u read (or computed) into the worker's buffer and written in its shard's turn, directly
 * (O_DIRECT) when dio. */
static mpk_status read_write_unit(run_ctx *c, worker *k, size_t u, ex_direct *dio)
{
    const unit *w = &c->units[u];
    mpk_st_out *so = c->shards[w->shard];
    if (!k->buf)
        k->buf = ex_dio_aligned(k->buf_raw = mpk_alloc(c->max_unit + 2 * EX_DIO_ALIGN));
    if (!k->buf)
        return mpk_error_set(&k->err, MPK_E_NOMEM, 0, so->path, "tensor '%s': out of memory for a "
                             "%llu-byte buffer", c->p->outs[w->out].name, (unsigned long long)c->max_unit);
    /* written directly, the unit sits where its whole blocks are aligned in memory */
    char *ub = k->buf + (dio ? w->at % EX_DIO_ALIGN : 0);
    mpk_status s = ex_node_read(c->nodes[w->out], w->off, w->len, ub, &k->r);
    if (s == MPK_OK)
        s = ex_rd_flush(&k->r);
    if (s == MPK_OK && dio)
        s = ex_direct_inner(dio, so, k->r.io, w->at, ub, w->len, &k->err);
    if (s == MPK_OK && (s = take_turn(c, &c->q[w->shard], u, &k->hbuf, &k->err)) == MPK_OK) {
        s = dio ? ex_direct_edges(dio, so, w->at, ub, w->len, &k->err)
                : mpk_st_out_write(so, c->slot[w->out], w->off, ub, w->len, &k->err);
        if (s == MPK_OK && c->mh)
            mem_hash_unit(c, w, ub);
        end_turn(c, &c->q[w->shard], s == MPK_OK);
    }
    return s;
}

void *ex_worker(void *arg)
{
    run_ctx *c = ((worker_arg *)arg)->c;
    size_t home = ((worker_arg *)arg)->home;
    worker k = {.r = {.cap = 256}, .pp = {.fd = {-1, -1}}};
    k.r.err = &k.err;
    if (c->o->use_copy_range && !c->o->no_splice) /* (no_splice: copy_file_range for every range) */
        ex_pipe_open(&k.pp);
    if (c->bounce) /* (without it, the outputs are read back to be hashed) */
        k.pp.bounce = mpk_alloc(EX_BOUNCE_PIECE);
    k.r.reqs = mpk_calloc(k.r.cap, sizeof *k.r.reqs);
    if (!k.r.reqs || mpk_io_create(c->o->io, 32, 4u << 20, &k.r.io, &k.err) != MPK_OK) {
        if (!k.r.reqs)
            mpk_error_set(&k.err, MPK_E_NOMEM, 0, "exec", "out of memory");
        ex_run_fail(c, &k.err);
        free(k.r.reqs);
        ex_pipe_close(&k.pp);
        free(k.pp.bounce);
        return NULL;
    }
    while (!atomic_load(&c->failed)) {
        size_t u = claim(c, home, &k.hbuf, &k.err);
        if (u == SIZE_MAX - 1)
            continue;
        if (u == SIZE_MAX) { /* nothing left to claim: handle what others complete, then stop */
            if (drain(c, &k))
                break;
            continue;
        }
        const unit *w = &c->units[u];
        mpk_status s = MPK_OK;
        bool done = false;
        ex_direct *dio = c->dio && c->dio[w->shard].fd >= 0 ? &c->dio[w->shard] : NULL;
        if (!dio && c->nodes[w->out]->pure && c->o->use_copy_range && atomic_load(&c->cfr_ok))
            s = copy_unit(c, &k, u, &done);
        if (!done && s == MPK_OK)
            s = read_write_unit(c, &k, u, dio);
        if (s != MPK_OK) {
            ex_err_locate(&k.err, c->shards[w->shard]->path, c->p->outs[w->out].name);
            ex_run_fail(c, &k.err);
            break;
        }
        written(c, w);
    }
    atomic_fetch_add(&c->read_bytes, k.r.bytes);
    atomic_fetch_add(&c->spliced_bytes, k.pp.bytes);
    atomic_fetch_add(&c->bounced_bytes, k.pp.bounced);
    ex_pipe_close(&k.pp);
    free(k.pp.bounce);
    free(k.buf_raw);
    free(k.hbuf);
    free(k.r.reqs);
    mpk_io_free(k.r.io);
    return NULL;
}

