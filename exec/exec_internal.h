/* exec_internal.h — what the executor's files share beyond the engine: the guards (guard.c),
 * staging and landing (stage.c), the tree copy (tree.c); lib/compress.c and tests use it too. */
#ifndef MPK_EXEC_INTERNAL_H
#define MPK_EXEC_INTERNAL_H

#include "mpk_exec.h"

/* Refuses (MPK_E_OVERLAP, naming both paths) a dst that is src, lies inside src, or holds
 * src or one of its shard files (src->shards[].path, the files actually read: in a Hugging
 * Face cache they live outside the snapshot directory). Compared by device and inode along
 * the real paths, so symlinks, bind mounts and different spellings do not hide an overlap.
 * src_path is the path the user gave (the checkpoint directory or file). */
mpk_status mpk_overlap_check(const char *src_path, const mpk_ckpt *src, const char *dst, mpk_error *err);
/* What force may replace: nothing, a symlink (only the link goes), an empty directory, or a
 * directory whose top level holds a checkpoint's file (*.safetensors, *.safetensors.mpkz, an
 * index, moepack.manifest.json) and that holds no mount point, no .git, no checkpoint file or
 * config.json below its top level and no top-level file of a kind no checkpoint has (the last
 * two rules waived for moepack's own output: a moepack.* file on top). Anything else (a file,
 * a folder of other things: a mistyped DST such as the folder of all one's models) is
 * MPK_E_DST_FOREIGN and left as it is. */
mpk_status mpk_force_check(const char *dst, mpk_error *err);
/* MPK_E_DST_EXISTS for an existing dst, the message saying whether a forced run would replace
 * it (mpk_force_check) or not, and why. */
mpk_status mpk_dst_exists(const char *dst, mpk_error *err);

/* The temporary directory a run writes, beside dst:
 *   DIR/.BASE.moepack-tmp.HOST.PID.START.XXXXXX
 * HOST (sanitized to [A-Za-z0-9_-]), PID and START (the process start time in clock ticks
 * since boot, /proc/self/stat field 22) name its owner, so a later run can tell whether
 * the owner is gone. Inside it, empty marker files whose names carry what they record:
 *   moepack.run.DIGEST.BOOT    the plan digest (16 hex digits) and the boot id
 *   moepack.shard.DIGEST.NAME  output shard NAME is complete and fsynced, its digest
 * Removing an empty file frees no data blocks, so the markers' removal before the directory is
 * renamed to dst never waits on the device (on ext4 without a journal, mounted with discard,
 * freeing a file's blocks issues a synchronous discard that queues behind the run's own
 * writeback: up to 1.2 s at the end of a --no-fsync pack, bench/RESULTS.md). Older builds wrote
 * text files instead (moepack.run, moepack.journal: "shard NAME DIGEST" lines); they are still
 * read when a run is adopted, and removed. */
typedef struct mpk_stage {
    const mpk_exec_opts *o;
    char *dst, *parent, *base, *tmp;
    uint64_t digest;
    bool adopted;                /* tmp is a dead run's directory, continued (--resume) */
    bool committed;
    bool attached;               /* another process's (MPI rank 0's): never removed here */
    char *journal;               /* the adopted run's shards, "shard NAME DIGEST" lines */
    size_t stale_removed;
} mpk_stage;

#define MPK_RUN_FILE "moepack.run"         /* older builds' run file */
#define MPK_JOURNAL_FILE "moepack.journal" /* older builds' journal */
#define MPK_RUN_MARK "moepack.run."
#define MPK_SHARD_MARK "moepack.shard."

/* Whether name (an entry of the staging directory) is one of its markers or older files. */
bool mpk_stage_is_marker(const char *name);
/* Whether name, at the top of source directory dir, has a marker's name: such a file is not
 * copied (the landing would remove it), o->warn is told and st->skipped counted. */
bool mpk_stage_skip_marker(const char *dir, const char *name, const mpk_exec_opts *o, mpk_side_stats *st);

/* Scans dst's directory for temporary directories of earlier runs into dst: removes those
 * whose owner is gone on this host (telling o->warn), adopts the first with the same digest
 * when o->resume (renamed to a name owned by this process), else creates a fresh one.
 * Creates the run marker. */
mpk_status mpk_stage_open(mpk_stage *st, const char *dst, uint64_t digest, const mpk_exec_opts *o,
                          mpk_error *err);
/* Joins the staging directory tmp that another process (MPI rank 0) opened for dst: files
 * are written into it; it is neither committed nor removed here. */
mpk_status mpk_stage_attach(mpk_stage *st, const char *dst, const char *tmp, const mpk_exec_opts *o,
                            mpk_error *err);
/* Collective under MPI: rank 0 opens the staging directory (mpk_stage_open), the others attach
 * to it; one process: mpk_stage_open. */
mpk_status mpk_stage_open_shared(mpk_stage *st, const char *dst, uint64_t digest, const mpk_exec_opts *o,
                                 mpk_error *err);
/* The digest an adopted run recorded for shard file name, false when it recorded none. */
bool mpk_stage_journal_find(const mpk_stage *st, const char *name, uint64_t *digest);
/* Records shard file name (complete and fsynced) with its digest. Thread-safe. */
mpk_status mpk_stage_journal_add(mpk_stage *st, const char *name, uint64_t digest, mpk_error *err);
/* Removes the markers, gives the top-level files the permission bits of the source files
 * they come from and tmp those of src's folder (src: the path the user gave, NULL: 0777 &
 * ~umask, as for synth), fsyncs tmp and renames it to dst (see mpk_exec for the order); with
 * force an existing dst is exchanged and removed. */
mpk_status mpk_stage_commit(mpk_stage *st, const char *src, bool force, mpk_error *err);
/* Frees st; removes tmp unless committed or keep. */
void mpk_stage_close(mpk_stage *st, bool keep);

/* Copies what SRC holds besides the checkpoint (skip(name, ctx) true for a top-level name
 * to leave out) into dst_dir, recursively, streaming (copy_file_range, else read/write
 * through a 1 MiB buffer); see mpk_exec_opts for symlinks. Adds to *stats. */
mpk_status mpk_copy_tree(const char *src_dir, const char *dst_dir, bool (*skip)(const char *name, void *ctx),
                         void *skip_ctx, const mpk_exec_opts *o, mpk_side_stats *stats, mpk_error *err);

/* Removes path and everything under it (guard.c): relative to directory descriptors, never
 * following a symlink, never entering a mount point or another file system, skipping a
 * directory swapped between the look and the descent. What it cannot remove it leaves. */
void mpk_rmrf(const char *path);
/* Test hook: called by mpk_rmrf between its look at a directory entry and its descent into it
 * (a test swaps the entry there). NULL outside tests. */
extern void (*mpk_rmrf_between)(int dirfd, const char *name);
/* Whether path is a directory (not a link to one) owned by the effective user: the only
 * staging directories a run removes or adopts. */
bool mpk_stage_dir_ours(const char *path);
/* Formats a notice and hands it to o->warn (if set). */
void mpk_exec_warn(const mpk_exec_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
