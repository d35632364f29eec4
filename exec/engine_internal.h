/* engine_internal.h — what the files of the executor share: the node graph (graph.c), reading
 * and computing nodes (nodes.c), the run: units, per-shard writers, hashing and syncing
 * (run.c), direct writes (direct.c), and the top: the entry (exec.c), the units (units.c), the
 * shard files, resuming and landing (land.c), the MPI share (share.c). Included only by them. */
#ifndef MPK_ENGINE_INTERNAL_H
#define MPK_ENGINE_INTERNAL_H

#include "exec_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

typedef struct mpk_node mpk_node;

/* --quantize fp8: the scale grid of each matrix, as the codes' node computed it, for its
 * sibling scale node (which then need not read the matrix again). ready[j] is set (release)
 * once matrix j's scales are in. */
typedef struct quant_cache {
    float *scales;       /* every matrix's grid, in the scale output's layout */
    atomic_uchar *ready;
    uint64_t n_mats, grid;  /* grid: floats per matrix */
} quant_cache;
typedef enum { N_SOURCE, N_SEGS, N_TRANSPOSE, N_CAST, N_DEQUANT, N_QUANT } node_kind;

typedef struct seg {
    mpk_node *src;
    uint64_t src_off, dst_off, len;
} seg;

struct mpk_node {
    node_kind kind;
    mpk_tmeta meta;
    uint64_t nbytes;
    int fd;              /* SOURCE */
    const char *path;    /* SOURCE: the shard's path, for messages */
    uint64_t file_off;
    const struct mpk_mpkz *z; /* SOURCE in a compressed shard: read through it */
    uint64_t data_start;      /* SOURCE: its shard's data section start */
    seg *segs;           /* SEGS */
    size_t n_segs, cap_segs;
    mpk_node *in;        /* TRANSPOSE, CAST, DEQUANT (weight or blocks), QUANT */
    mpk_node *in2;       /* DEQUANT: scale grid (FP8) or E8M0 scales (MXFP4) */
    bool mx;             /* DEQUANT/QUANT: MXFP4 rather than FP8 block */
    mpk_node *in3;       /* DEQUANT of NVFP4 (in: codes, in2: E4M3 block scales): the F32 global scale */
    int vkind;           /* DEQUANT of a --dequantize view: its mpk_view_kind */
    int block;           /* FP8 block edge */
    int which;           /* QUANT: 0 the quantized values, 1 the scales (NVFP4: 2 the global scales) */
    int q4, parts;       /* QUANT to 4 bits: 1 NVFP4 (parts global scales a matrix), 2 MXFP4; 0 FP8 */
    const char *name;    /* QUANT to 4 bits: the output tensor, for messages */
    quant_cache *qc;     /* QUANT (FP8): shared with the sibling node of the other output */
    int a, b;            /* TRANSPOSE: the dims swapped */
    uint64_t granule;    /* computed nodes: the bytes the kernel makes on its own (the op table's
                            granule; TRANSPOSE: one slab, dims [a, ndim)) */
    bool pure;           /* SOURCE, or SEGS of SOURCEs only: copy_file_range can move it */
    mpk_node *next_alloc;
};

typedef struct {
    mpk_node *all;       /* every node, for freeing */
    mpk_node **out;      /* the node of each plan output */
    mpk_error *err;
} builder;

/* ---------------------------------------------------------------- graph.c */

/* Builds a node for every plan output into b->out[i] (the plan is not written). */
mpk_status ex_build_nodes(const mpk_plan *p, builder *b, mpk_arena *arena);
/* The segment of SEGS node n holding byte off (binary search). */
size_t ex_seg_find(const mpk_node *n, uint64_t off);
/* Frees every node b made. */
void ex_nodes_free(builder *b);
/* The bytes a unit of node n must not split (a row to dequantize, a slab to transpose). */
uint64_t ex_node_granule(const mpk_node *n);
/* Largest block a node's reads allocate at once (transposes read whole slabs). */
uint64_t ex_max_slab(const mpk_node *n);

/* ---------------------------------------------------------------- nodes.c */

typedef struct {
    mpk_io *io;
    mpk_io_req *reqs;
    size_t n, cap;
    uint64_t bytes;      /* source bytes read through it */
    mpk_error *err;
} reader;

/* Reads bytes [off, off+len) of node n into buf (sources through r's I/O engine, computed
 * nodes through their kernels). */
mpk_status ex_node_read(mpk_node *n, uint64_t off, uint64_t len, char *buf, reader *r);
/* Submits r's queued reads. */
mpk_status ex_rd_flush(reader *r);
typedef mpk_status (*range_fn)(const mpk_node *src, uint64_t file_off, uint64_t len, uint64_t at, void *ctx);
/* Calls fn for every source file range behind bytes [off, off+len) of a pure node, at is where
 * they land in the output file. */
mpk_status ex_each_source_range(const mpk_node *n, uint64_t off, uint64_t len, uint64_t at, range_fn fn, void *ctx);
/* A worker's pipe for the in-kernel moves of source ranges that sit at another offset within a
 * page than where they land (fd[0] < 0: none, copy_file_range moves everything). */
typedef struct {
    int fd[2];
    uint64_t bytes; /* moved through it */
    char *bounce;   /* non-NULL: ranges of an output hashed on the way go through it (EX_BOUNCE_PIECE) */
    uint64_t bounced; /* copied through it */
} ex_pipe;
/* Opens it where the kernel lets it hold a round (else leaves it closed); not opened with the
 * request's no_splice (MPK_CONVERT_NO_SPLICE). */
void ex_pipe_open(ex_pipe *pp);
void ex_pipe_close(ex_pipe *pp);
/* Moves bytes [off, off+len) of a pure node into out at file offset at: copy_file_range, or
 * through pp (when open) for a range whose offset within a page differs between its source and
 * the output; or, given hash (and pp->bounce), read into pp->bounce, hashed into hash and written
 * from there, EX_BOUNCE_PIECE bytes at a time. */
mpk_status ex_node_copy(const mpk_node *n, uint64_t off, uint64_t len, const mpk_st_out *out, uint64_t at,
                        ex_pipe *pp, mpk_xxh *hash, mpk_error *err);
/* The buffer of bounce copies: small enough to stay in the CPU's cache between its read, its
 * hash and its write; the pieces end on its multiples of the output offset (page-cache folios
 * of that size, which this VM fills without host faults, bench/RESULTS.md). */
#define EX_BOUNCE_PIECE (256u << 10)
#define EX_BOUNCE_MIN_OUT (64.0 * 1024 * 1024) /* see bounce_wanted (units.c) */
/* A range_fn counting bytes per page phase (votes[4096 / 8]). */
mpk_status ex_phase_vote(const mpk_node *src, uint64_t file_off, uint64_t len, uint64_t at, void *votes);

/* ---------------------------------------------------------------- run.c */

#define HASH_CHUNK (1u << 20)
#define SQ_OUTPUT ((size_t)1 << (sizeof(size_t) * 8 - 1)) /* a syncq entry that is an output */
/* Scheduling. Writes into one file serialize in the kernel (a buffered write holds the
 * inode lock), and threads queued on that lock spin: two writers to one file took twice the
 * CPU of one and longer in wall time. So units are queued per shard in file order and each
 * shard's units are written one at a time in that order (its turn: unit u is written once
 * unit u - 1 is), a thread prefers a shard nobody is writing, and a thread waiting for its
 * turn hashes a completed tensor meanwhile (reading it back from the output, which takes no
 * inode lock). Computed units (transpose, cast, quantize) are built before their turn, so only
 * their writes serialize; written in order, their bytes are hashed as they are written
 * (mem_hash) instead of read back. */
typedef struct {
    size_t out;          /* plan output index */
    int shard;           /* its output shard */
    uint64_t off, len;   /* the range of the output tensor */
    uint64_t at;         /* where off lands in the shard file */
    bool late;           /* a scale output (FP8 grid; NVFP4/MXFP4 block or global scales):
                            queued after its shard's other units, so that the codes' node has
                            mostly computed what it can share already (quant_cache) */
} unit;

typedef struct {
    size_t lo, hi;       /* its units: units[lo, hi), in file order */
    atomic_size_t next;
    atomic_size_t ahead; /* units up to here have had their source ranges hinted (prefetch) */
    atomic_size_t turn;  /* the unit whose turn it is to be written */
    atomic_int busy;     /* threads writing or waiting to write (a hint) */
} shard_q;

/* A durable run's direct writes into one output shard (direct.c): the whole 4 KiB blocks of
 * its data section [a0, a1) go out with O_DIRECT, the partial block between two units waits
 * in carry until both sides are in. fd < 0: the shard is written through the page cache. */
#define EX_DIO_ALIGN 4096u
/* raw rounded up to the next EX_DIO_ALIGN boundary (raw allocated EX_DIO_ALIGN bytes larger). */
static inline char *ex_dio_aligned(char *raw)
{
    return raw ? (char *)(((uintptr_t)raw + EX_DIO_ALIGN - 1) & ~(uintptr_t)(EX_DIO_ALIGN - 1)) : NULL;
}
typedef struct {
    int fd;
    uint64_t a0, a1;
    char *carry, *carry_raw;
    uint64_t carry_blk;  /* the block carry holds the start of (UINT64_MAX: none) */
    unsigned carry_fill; /* its bytes in, from the block's start */
    atomic_int buffered; /* a direct write was refused (EINVAL): the page cache from then on */
    atomic_ullong bytes; /* written directly */
    bool on;             /* opened for direct writes (stays set once closed) */
} ex_direct;

/* Shards whose bytes sit in units of less than this on average stay with the page cache: a worker waits for
 * its unit's direct writes, so small units keep too few requests in flight (unpack, whose
 * units are single experts: 1.43x cp -r + sync directly against 1.78x through the page cache
 * on the 16-core machine, 0.74x against 0.92x here; pack: 1.54x and 1.56x; bench/RESULTS.md). */
#define EX_DIO_MIN_UNIT (4u << 20)
/* The request's direct (mpk_exec_opts): MPK_DIRECT_OFF, the default (direct writes cost less CPU
 * but were not faster, bench/RESULTS.md); MPK_DIRECT_LARGE, by unit size (above); MPK_DIRECT_ALL,
 * every shard it can. */
/* Opens so's file for direct writes where its file system allows them and its data section
 * has at least 1 MiB of whole blocks (any_size: one); false: it stays with the page cache
 * (d->fd < 0). */
bool ex_direct_open(ex_direct *d, const mpk_st_out *so, bool any_size);
/* Closes it; with err, fails if a block was left incomplete (bytes never written). */
mpk_status ex_direct_close(ex_direct *d, const char *path, mpk_error *err);
/* A unit's bytes p[0, len), landing at file offset at, with p at the same offset within a
 * 4 KiB block as at: its whole blocks (any time, any thread), ... */
mpk_status ex_direct_inner(ex_direct *d, const mpk_st_out *so, mpk_io *io, uint64_t at, const char *p,
                           uint64_t len, mpk_error *err);
/* ... and the rest (in its turn, units in file order). */
mpk_status ex_direct_edges(ex_direct *d, const mpk_st_out *so, uint64_t at, const char *p, uint64_t len,
                           mpk_error *err);

/* An output hashed from the bytes of its computed units as they are written (in order, in
 * their turns), so that it need not be read back: the state and how far it got. A unit that
 * came another way (an in-kernel copy) leaves `to` behind for good, and the output is read
 * back instead. */
typedef struct {
    mpk_xxh *st;
    uint64_t to;         /* bytes hashed from its start */
} mem_hash;

typedef struct {
    const mpk_plan *p;
    const mpk_exec_opts *o;
    mpk_node **nodes;    /* the node of each plan output (the builder's) */
    mpk_st_out **shards;
    shard_q *q;
    size_t *slot;        /* plan output -> tensor index in its shard's file */
    unit *units;
    size_t n_units;
    uint64_t *units_upto; /* [n_units + 1]: the bytes of units[0..u), for prefetch's reach */
    uint64_t unit_bytes;
    uint64_t max_unit;   /* the largest unit (what a worker's buffer must hold) */
    uint64_t total;      /* the bytes this process writes (of every output, or its MPI share) */
    atomic_ullong done_bytes;
    atomic_ullong read_bytes; /* source bytes read (or moved in the kernel) */
    bool *split;         /* MPI: outputs this rank writes part of (hashed after the run) */
    bool *hash_after;    /* MPI: of those, the ones whose first byte is this rank's to hash */
    bool *touched;       /* MPI: per shard, this rank writes into it */
    atomic_size_t units_done;
    atomic_int failed;
    atomic_int cfr_ok;   /* copy_file_range still usable */
    atomic_ullong spliced_bytes; /* of those moved in the kernel, the bytes moved through pipes */
    atomic_ullong bounced_bytes; /* pure bytes copied through a worker's buffer, hashed on the way */
    bool bounce;         /* copy pure ranges through a buffer, hashing them on the way (units.c) */
    ex_direct *dio;      /* per shard, durable single-process runs (else NULL) */
    bool prefetch;       /* hint the source ranges of the units ahead (POSIX_FADV_WILLNEED) */
    bool writeback;      /* start each complete output's writeback (sync_file_range) when durable */
    /* outputs complete (hashing, early writeback): bytes left to write per output, queue */
    atomic_ullong *left;
    mpk_tensor_hash *hashes;
    mem_hash *mh;        /* per output, with hashes */
    size_t *hq;
    size_t hq_head, hq_tail;
    pthread_mutex_t lock;
    pthread_cond_t cv;   /* a complete output queued, or the last unit written */
    mpk_error err;       /* first failure */
    /* resumability (with hashes): outputs of each shard not yet complete; the shard's
     * completion is fsynced and recorded in the stage's journal */
    atomic_size_t *sh_left;
    mpk_stage *stage;
    /* work for the syncer thread, so that no worker blocks on the disk while there is
     * writing or computing to do: complete outputs whose writeback to start (SQ_OUTPUT|i),
     * complete shards to fsync and journal (sh) */
    size_t *syncq;
    size_t sq_head, sq_tail;
    bool sq_end;
    pthread_cond_t sq_cv;
} run_ctx;

typedef struct {
    run_ctx *c;
    size_t home;         /* the shard a thread looks at first */
} worker_arg;

/* Relabels an error raised deep in an op or the I/O engine with the file (and tensor). */
void ex_err_locate(mpk_error *err, const char *path, const char *tensor);
/* XXH3-128 of output i as its shard holds it (read back through buf, HASH_CHUNK bytes) into
 * c->hashes[i]. */
mpk_status ex_hash_output(run_ctx *c, size_t i, char *buf, mpk_error *err);
/* Records the first failure; every thread stops soon after. */
void ex_run_fail(run_ctx *c, const mpk_error *e);
/* XXH3-64 over a shard's output hashes (its journal digest). */
uint64_t ex_shard_digest(const mpk_plan *p, size_t sh, const mpk_tensor_hash *hashes);
/* The syncer thread (fsyncs complete shards, journals them), and its stop. */
void *ex_syncer(void *arg);
void ex_stop_syncer(run_ctx *c, bool running, pthread_t th);
/* A worker thread (arg: a worker_arg). */
void *ex_worker(void *arg);
/* Monotonic seconds. */
double ex_now_s(void);

/* ---------------------------------------------------------------- exec.c, units.c, land.c, share.c */

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

static inline mpk_status ex_nomem(job *j)
{
    return mpk_error_set(j->err, MPK_E_NOMEM, 0, j->dst, "out of memory");
}

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

/* units.c: builds the nodes and sizes the work. */
mpk_status ex_prepare_nodes(job *j);
/* units.c: the units of every output, queued per shard in file order, and what tracks each
 * output's completion. */
mpk_status ex_make_units(job *j);
/* units.c: one process: the nodes, every shard opened, the units made, a dead run's shards
 * resumed, bounce copies and direct writes chosen. */
mpk_status ex_prepare(job *j, mpk_exec_stats *stats);

/* land.c: the digest that identifies a run (ids: with the source files' device, inode and times). */
uint64_t ex_plan_digest(const mpk_plan *p, const mpk_exec_opts *o, bool ids);
/* land.c: an adopted staging directory keeps only what its journal says is complete. */
void ex_clean_adopted(const mpk_stage *stage);
/* land.c: output shard sh laid out and its file created (or taken over, resuming). */
mpk_status ex_open_shard(job *j, size_t sh);
/* land.c: a dead run's shards kept where they check out, the others started again. */
mpk_status ex_resume_shards(job *j, mpk_exec_stats *stats);
/* land.c: the shard files closed (fsynced where this process wrote). */
mpk_status ex_close_shards(job *j);
/* land.c: the shards closed, the index and other files written, the directory committed. */
mpk_status ex_land(job *j, const char *src_path, mpk_exec_stats *stats);

/* share.c: the cancel watch started and stopped around an MPI run. */
void ex_watch_start(watch *w, job *j);
void ex_watch_stop(watch *w);
/* share.c: the nodes and unit size agreed, the sources compared, the shards opened, this
 * rank's units assigned (collective). */
mpk_status ex_dist_prepare(job *j);
/* share.c: after the run (s: this rank's outcome), hashes shared, shards closed, rank 0 lands
 * (collective). */
mpk_status ex_dist_finish(job *j, mpk_status s, const char *src_path, mpk_exec_stats *stats);


#endif
