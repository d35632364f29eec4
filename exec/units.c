/* units.c — the work of a run before it starts: the nodes built (graph.c), the unit size the
 * memory budget allows, the units of every output queued per shard in file order with what
 * tracks each output's completion, and the choices made per run (bounce copies, direct writes).
 * One process: ex_prepare; MPI ranks use its pieces (share.c).
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
        mpk_error_set(j->err, MPK_E_MEMORY_BUDGET, 0, j->dst,
                      "a matrix transposed or quantized whole needs %s per thread (3 x %s) but the memory budget gives %s "
                      "per thread: a larger budget or fewer threads",
                      mpk_human_bytes(3 * slab, h1, sizeof h1), mpk_human_bytes(slab, h2, sizeof h2),
                      mpk_human_bytes(per_thread, h3, sizeof h3));
        return mpk_error_about(j->err, MPK_FIELD_MEM, MPK_E_MEMORY_BUDGET);
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t g = ex_node_granule(j->c.nodes[i]);
        unit_bytes = g > unit_bytes ? g : unit_bytes;
    }
    j->c.unit_bytes = unit_bytes;
    return MPK_OK;
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
mpk_status ex_make_units(job *j)
{
    const mpk_plan *p = j->p;
    run_ctx *c = &j->c;
    size_t n_units = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t u = unit_size(c, i);
        n_units += p->outs[i].nbytes ? (size_t)((p->outs[i].nbytes + u - 1) / u) : 0;
    }
    if (!(c->units = mpk_calloc(n_units + 1, sizeof *c->units)))
        return ex_nomem(j);
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t u = unit_size(c, i);
        const mpk_st_out *so = c->shards[p->outs[i].shard];
        uint64_t base = so->data_start + so->tensors[c->slot[i]].begin;
        for (uint64_t off = 0; off < p->outs[i].nbytes; off += u)
            c->units[c->n_units++] = (unit){i, p->outs[i].shard, off,
                                            p->outs[i].nbytes - off < u ? p->outs[i].nbytes - off : u, base + off,
                                            c->nodes[i]->kind == N_QUANT && c->nodes[i]->which >= 1};
    }
    qsort(c->units, c->n_units, sizeof *c->units, file_order);
    if (!(c->units_upto = mpk_calloc(c->n_units + 1, sizeof *c->units_upto)))
        return ex_nomem(j);
    for (size_t u = 0; u < c->n_units; u++) {
        c->max_unit = c->units[u].len > c->max_unit ? c->units[u].len : c->max_unit;
        c->units_upto[u + 1] = c->units_upto[u] + c->units[u].len;
    }
    if (!(c->q = mpk_calloc(p->n_shards, sizeof *c->q)))
        return ex_nomem(j);
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
        return ex_nomem(j);
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

/* Builds the nodes and sizes the work. */
mpk_status ex_prepare_nodes(job *j)
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
        return ex_nomem(j);
    MPK_TRY(ex_build_nodes(p, &j->b, j->arena));
    return size_units(j);
}

/* direct MPK_DIRECT_LARGE (MPK_DIRECT_ALL: whatever the units), durable, one process, units in file order (no
 * FP8 scale grid queued late) and large on average, not resumed from a kept file: the shard's
 * data is written with O_DIRECT where its file system allows (direct.c). */
static mpk_status open_direct(job *j)
{
    run_ctx *c = &j->c;
    mpk_direct mode = j->o->direct;
    if (j->o->no_fsync || j->o->no_direct || mpk_dist_size() > 1 || mode == MPK_DIRECT_OFF)
        return MPK_OK;
    if (!(c->dio = mpk_calloc(j->p->n_shards + 1, sizeof *c->dio)))
        return ex_nomem(j);
    for (size_t sh = 0; sh < j->p->n_shards; sh++) {
        c->dio[sh].fd = -1;
        bool late = false;
        double bytes = 0, sq = 0; /* the size of the unit an average byte is in: sum len^2 / sum len */
        for (size_t u = c->q[sh].lo; u < c->q[sh].hi; u++) {
            late |= c->units[u].late;
            bytes += (double)c->units[u].len;
            sq += (double)c->units[u].len * (double)c->units[u].len;
        }
        if (!late && !j->reopened[sh] && bytes > 0 && (mode == MPK_DIRECT_ALL || sq / bytes >= EX_DIO_MIN_UNIT))
            ex_direct_open(&c->dio[sh], c->shards[sh], mode == MPK_DIRECT_ALL);
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
 * The request's bounce: MPK_SWITCH_NEVER never; MPK_SWITCH_ALWAYS wherever outputs are hashed. */
static bool bounce_wanted(const job *j)
{
    const run_ctx *c = &j->c;
    if (!c->mh || !j->o->use_copy_range || !c->shards || j->o->bounce == MPK_SWITCH_NEVER)
        return false;
    if (j->o->bounce == MPK_SWITCH_ALWAYS)
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
mpk_status ex_prepare(job *j, mpk_exec_stats *stats)
{
    MPK_TRY(ex_prepare_nodes(j));
    for (size_t sh = 0; sh < j->p->n_shards; sh++)
        MPK_TRY(ex_open_shard(j, sh));
    MPK_TRY(ex_make_units(j));
    MPK_TRY(ex_resume_shards(j, stats));
    j->c.bounce = bounce_wanted(j);
    return open_direct(j);
}
