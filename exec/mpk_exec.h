/* mpk_exec.h — executing a plan (plan/mpk_plan.h) into an output directory.
 *
 * The executor streams: byte-permutation ops become ranged reads written at their final
 * offsets; compute ops (transpose, cast) run in bounded blocks. Output goes to a temporary
 * directory beside DST, renamed into place only when complete (see mpk_exec for the order).
 */
#ifndef MPK_EXEC_H
#define MPK_EXEC_H

#include "mpk_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- execution */

typedef struct mpk_exec_opts {
    int threads;                        /* 0: number of CPUs */
    uint64_t mem;                       /* in-flight buffer budget, bytes */
    bool force;                         /* replace an existing DST */
    /* non-NULL: called about 5 times a second from the calling thread, and once at the end */
    void (*progress)(void *ctx, uint64_t done, uint64_t total, double seconds);
    void *progress_ctx;
    const volatile int *cancel;         /* non-NULL and set: stop with MPK_E_CANCELLED */
    bool use_copy_range;                /* copy_file_range for pure byte copies */
    bool no_fsync;                      /* skip the fsyncs before the rename (cp's durability) */
    bool no_direct;                     /* durable, but through the page cache (the output is read
                                           again at once: compressed); else O_DIRECT where it can */
    mpk_io_backend io;
    const mpk_kv *metadata;             /* __metadata__ of every output shard */
    size_t n_metadata;
    const char *config_json;            /* non-NULL: written as DST/config.json instead of a
                                           copy of the source's (quantization changes it) */
    bool hash_outputs;                  /* XXH3-128 of every output tensor, read back from the
                                           output file as soon as the tensor is complete, on
                                           threads not busy writing; passed to finish */
    /* non-NULL: called on the complete temporary directory before it is renamed into place
     * (the CLI writes moepack.manifest.json there), with the output hashes in plan output
     * order when hash_outputs (else NULL, n = 0); a failure aborts the conversion */
    mpk_status (*finish)(void *ctx, const char *tmp_dir, mpk_tensor_hash *hashes, size_t n, mpk_error *err);
    void *finish_ctx;
    bool resume;                        /* continue a dead run's temporary directory with the
                                           same plan digest; on failure keep ours for a later
                                           resume instead of removing it */
    const char *const *skip_names;      /* more names of SRC's top level not to copy (NULL-ended) */
    bool copy_links;                    /* copy the content of symlinks in SRC that point
                                           outside it (regular files only) instead of skipping */
    /* non-NULL: told each notice (a stale temporary directory removed, a file skipped) */
    void (*warn)(void *ctx, const char *msg);
    void *warn_ctx;
    /* measurement switches (mpk_convert_req's): */
    mpk_direct direct;                  /* O_DIRECT writes of durable shards (default off) */
    mpk_switch bounce;                  /* pure bytes through a worker's buffer: the rule, never, always */
    bool no_splice;                     /* copy_file_range for every range, no pipe */
    bool no_prefetch;                   /* no read-ahead hints */
    bool no_writeback;                  /* no per-output writeback starts */
} mpk_exec_opts;

/* What besides the tensors went into DST: SRC's other files, copied recursively. */
typedef struct mpk_side_stats {
    size_t files, dirs, links, skipped;
    uint64_t bytes;
} mpk_side_stats;

typedef struct mpk_exec_stats {
    size_t tensors_in, tensors_out;
    uint64_t bytes_out;
    double seconds;
    long peak_rss_kib;
    int threads;
    bool used_copy_range;
    uint64_t spliced_bytes;             /* of the bytes moved in the kernel, those moved through a pipe
                                           (source and output at other offsets within a page) */
    uint64_t direct_bytes;              /* written with O_DIRECT (durable runs, exec/direct.c) */
    uint64_t bounced_bytes;             /* pure bytes copied through a buffer, hashed on the way */
    mpk_side_stats side;
    bool resumed;                       /* a dead run's temporary directory was continued */
    size_t shards_kept;                 /* of its shards, how many checked out and were kept */
    size_t stale_removed;               /* dead runs' temporary directories removed */
    mpk_rank_stats *ranks;              /* MPI (rank 0): what each rank did, n_ranks of them;
                                           the caller frees it */
    int n_ranks;
} mpk_exec_stats;

/* Executes plan into dst (a directory). The order, which leaves at every moment either the
 * old DST (or none) or the complete new one:
 *  1. refuse (MPK_E_OVERLAP) a dst that is, holds or lies inside the source (by device and
 *     inode), and (MPK_E_DST_EXISTS) an existing dst without opts->force;
 *  2. remove temporary directories of dead runs into dst (or adopt one, opts->resume);
 *  3. write shards, index, config and SRC's other files into DIR/.BASE.moepack-tmp.OWNER.XXXXXX
 *     (mode 0700 while written), fsync each file and directory;
 *  4. give it mode 0777 & ~umask, rename it to dst with RENAME_NOREPLACE (a dst that appeared
 *     meanwhile: MPK_E_DST_EXISTS) or, with force, RENAME_EXCHANGE, fsync the parent;
 *  5. with force, remove the old dst (now at the temporary name).
 * On failure nothing is left at dst. */
mpk_status mpk_exec(const mpk_plan *plan, const char *dst, const mpk_exec_opts *opts,
                    mpk_exec_stats *stats, mpk_error *err);

/* ---------------------------------------------------------------- reading outputs in place */

/* A plan's outputs read without writing them (exec/readout.c): each computed from its sources,
 * as mpk_exec would write it, into the caller's buffer. The plan (and its source checkpoint)
 * must outlive the reader. */
typedef struct mpk_exec_reader mpk_exec_reader;
/* Errors: MPK_E_NOMEM, MPK_E_IO (no I/O engine). Owned by the caller: mpk_exec_reader_close. */
mpk_status mpk_exec_reader_open(const mpk_plan *p, mpk_io_backend io, mpk_exec_reader **out, mpk_error *err);
/* Bytes [off, off + len) of output i (p->outs[i]) into buf. Memory beyond buf: the kernels'
 * blocks for that range (a transposed slab, a dequantized row), and one block of the range when
 * it does not start and end on a kernel's granule. Errors: MPK_E_USAGE (past its end), MPK_E_IO,
 * MPK_E_CONTAINER, MPK_E_NOMEM. Thread-safe (one read at a time). */
mpk_status mpk_exec_reader_read(mpk_exec_reader *r, size_t i, uint64_t off, uint64_t len, void *buf,
                                mpk_error *err);
/* NULL-safe. */
void mpk_exec_reader_close(mpk_exec_reader *r);

#ifdef __cplusplus
}
#endif
#endif
