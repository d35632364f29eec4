/* share.c — a run under MPI: the ranks agree on the plan, the unit size and the sources' content,
 * each takes its contiguous share of the units, the split outputs are hashed once every rank has
 * written, rank 0 lands; and the watch that removes the staging directory when a rank is told to
 * stop. One process never comes here.
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

void ex_watch_start(watch *w, job *j)
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

void ex_watch_stop(watch *w)
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
        return ex_nomem(j);
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
    mpk_status s = mine && r0 ? content_digests(src, mine, j->err) : ex_nomem(j);
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
mpk_status ex_dist_prepare(job *j)
{
    int me = mpk_dist_rank();
    mpk_status s = ex_prepare_nodes(j);
    uint64_t ub = s == MPK_OK ? j->c.unit_bytes : UINT64_MAX, mine = ex_plan_digest(j->p, j->o, false), d0 = mine;
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
        s = ex_open_shard(j, sh);
    MPK_TRY(dist_agree(j, s));
    for (size_t sh = 0; me != 0 && sh < j->p->n_shards && s == MPK_OK; sh++)
        s = ex_open_shard(j, sh);
    if (s == MPK_OK && (s = ex_make_units(j)) == MPK_OK)
        s = assign_units(j);
    return dist_agree(j, s);
}

/* After the run (s: this rank's outcome): the split outputs hashed, every hash on every rank,
 * the shards fsynced and closed, and on rank 0 the rest of landing. */
mpk_status ex_dist_finish(job *j, mpk_status s, const char *src_path, mpk_exec_stats *stats)
{
    const mpk_plan *p = j->p;
    run_ctx *c = &j->c;
    MPK_TRY(dist_agree(j, s));
    char *buf = NULL;
    for (size_t i = 0; c->hashes && i < p->n_outs && s == MPK_OK; i++) {
        if (!c->hash_after[i])
            continue;
        if (!buf && !(buf = mpk_alloc(HASH_CHUNK)))
            s = ex_nomem(j);
        else
            s = ex_hash_output(c, i, buf, j->err);
    }
    free(buf);
    MPK_TRY(dist_agree(j, s));
    if (c->hashes)
        MPK_TRY(mpk_hashes_share(c->hashes, p->n_outs, j->dst, j->err));
    s = ex_close_shards(j);
    bool root = mpk_dist_rank() == 0;
    if (!root && !watch_landing(j->watch)) /* past this agreement rank 0 may land */
        s = mpk_error_set(j->err, MPK_E_CANCELLED, 0, j->dst, "cancelled; nothing was written there");
    MPK_TRY(dist_agree(j, s));
    if (root)
        s = !watch_landing(j->watch) ? mpk_error_set(j->err, MPK_E_CANCELLED, 0, j->dst,
                                                     "cancelled; nothing was written there")
                                     : ex_land(j, src_path, stats);
    return dist_agree(j, s);
}
