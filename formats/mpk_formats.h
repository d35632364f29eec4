/* mpk_formats.h — safetensors files, sharded checkpoints and the I/O engine.
 *
 * The safetensors byte layout, as this module reads and writes it:
 *   1. 8 bytes: N, the header length, unsigned 64-bit little-endian.
 *      N must be <= 100,000,000 and 8 + N must not exceed the file size.
 *   2. N bytes: the header, UTF-8 JSON, one object. Leading/trailing JSON whitespace is
 *      allowed (the reference writer pads with spaces to a multiple of 8; older writers
 *      do not pad at all, both are accepted).
 *   3. The header object maps tensor name -> {"dtype": STR, "shape": [INT...],
 *      "data_offsets": [BEGIN, END]}; one optional key "__metadata__" maps to a
 *      string -> string object (or null). Duplicate tensor names and a duplicate
 *      "__metadata__" key are rejected (the reference reader silently keeps the last).
 *   4. The data section: the rest of the file. Offsets are relative to its start; the
 *      tensors, sorted by offset, must tile it exactly from 0 with no gap, overlap or
 *      trailing byte. END - BEGIN must equal numel * bits(dtype) / 8, and for sub-byte
 *      dtypes numel * bits must be a multiple of 8.
 *   5. Writer order (the reference writer's): tensors sorted by dtype rank descending
 *      (the order of mpk_dtype below, U64 highest) then by name bytewise; compact JSON
 *      with "__metadata__" first; header padded with spaces to a multiple of 8.
 *
 * A checkpoint is a .safetensors file, or a directory holding model.safetensors or
 * model.safetensors.index.json ({"metadata": {"total_size": BYTES}, "weight_map":
 * {tensor: shard file}}).
 *
 * Everything here reports failure through mpk_status plus a caller-owned mpk_error
 * that names the file, the tensor and the rule broken. Nothing here calls exit().
 */
#ifndef MPK_FORMATS_H
#define MPK_FORMATS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mpk_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- strict JSON */

/* Nesting at which the reference reader (serde_json) stops. */
#define MPK_JSON_MAX_DEPTH 128
typedef struct cJSON cJSON;
typedef struct mpk_json_num mpk_json_num;
typedef struct mpk_json {
    cJSON *root;
    mpk_json_num *nums; /* every number literal, in document order */
    size_t n_nums;
} mpk_json;
/* Parses text as one JSON value (whitespace around it only), stricter than cJSON alone, like
 * the reference reader: no byte-order mark, no raw control characters or escaped NUL in
 * strings, nesting below MPK_JSON_MAX_DEPTH, numbers in RFC 8259's grammar (no leading zeros).
 * A rule broken is status code with a message "WHAT ... (byte K)" naming where; an allocation
 * failure (cJSON's too, when its hooks go through mpk_alloc) is MPK_E_NOMEM. */
mpk_status mpk_json_parse(const char *text, size_t len, mpk_status code, const char *where,
                          const char *what, mpk_json **out, mpk_error *err);
void mpk_json_free(mpk_json *j);
/* The tokens of JSON text t (every string, key or value, number, literal, array and object: what
 * cJSON makes a node or a string of) and, in *max_depth when not NULL, its deepest nesting of
 * arrays and objects; a cheap scan, no allocation, no validation (malformed text gives some
 * count). Run before mpk_json_parse on text whose shape is known, it bounds the tree cJSON would
 * build: tiny elements cost cJSON ~40 times their bytes. Thread-safe. */
size_t mpk_json_count_tokens(const char *t, size_t len, int *max_depth);
/* Frees j but its tree, which it returns (free with cJSON_Delete; number literals are gone). */
cJSON *mpk_json_take(mpk_json *j);
/* The exact value of number node v of j when its literal is a plain non-negative integer
 * below 2^64 (no sign, fraction or exponent): NULL, *out set. Else why not ("is negative"...). */
const char *mpk_json_uint(const mpk_json *j, const cJSON *v, uint64_t *out);
/* v is a number with an integral value in [lo, hi] (|lo|, |hi| <= 2^53): *out set, true.
 * Checked before any conversion (no undefined float-to-integer cast). */
bool mpk_json_num_in(const cJSON *v, double lo, double hi, long long *out);
/* v as Python's json.dumps(v, indent=2) writes it (Hugging Face's config.json style), ending
 * in a newline when asked; malloc'd, NULL when out of memory. */
char *mpk_json_print(const cJSON *v, bool newline);

/* ---------------------------------------------------------------- safetensors */

typedef struct mpk_tensor_info {
    const char *name;            /* NUL-terminated, owned by the header's arena */
    mpk_dtype dtype;
    int ndim;
    int64_t shape[MPK_MAX_DIMS];
    uint64_t begin, end;         /* byte offsets relative to the data section */
} mpk_tensor_info;

typedef struct mpk_kv {
    const char *key, *value;
} mpk_kv;

typedef struct mpk_st_header {
    mpk_tensor_info *tensors;    /* sorted by data offset */
    size_t n_tensors;
    mpk_kv *metadata;            /* in the order the file lists them */
    size_t n_metadata;
    bool has_metadata;           /* "__metadata__" key present with an object value */
    uint64_t header_len;         /* N */
    uint64_t data_start;         /* 8 + N: where the data section starts in the file */
    uint64_t data_size;          /* bytes of the data section */
    mpk_arena *arena;
    mpk_strmap by_name;          /* tensor name -> index in tensors, built by the parser (a header
                                    built by hand leaves it empty: mpk_st_header_find scans) */
} mpk_st_header;

#define MPK_ST_MAX_HEADER 100000000ull

/* Parses a whole safetensors file held in buf[0..len). where names it in messages (may be
 * NULL). On MPK_OK *out is owned by the caller (mpk_st_header_free). Thread-safe. */
mpk_status mpk_st_parse(const void *buf, size_t len, const char *where, mpk_st_header **out,
                        mpk_error *err);

/* Parses the header bytes hdr[0..hdr_len) (without the 8-byte prefix) of a file of
 * file_size bytes; validates offsets against the data section. */
mpk_status mpk_st_parse_header(const char *hdr, uint64_t hdr_len, uint64_t file_size,
                               const char *where, mpk_st_header **out, mpk_error *err);

/* Reads and parses the header of the file at path (reads only 8 + N bytes). */
mpk_status mpk_st_read_header(const char *path, mpk_st_header **out, mpk_error *err);

/* NULL-safe. */
void mpk_st_header_free(mpk_st_header *h);

/* Index of the tensor called name in h, or -1. O(1) through h->by_name in a parsed header
 * (a linear scan in one built by hand). Thread-safe (reads only). */
long mpk_st_header_find(const mpk_st_header *h, const char *name);

/* Lays out tensors[0..n) the way the reference writer does: sorts them (dtype rank
 * descending, then name), assigns begin/end from each tensor's dtype and shape, and
 * builds the full header (8-byte prefix + JSON + space padding) in *hdr (owned by the
 * caller, free()) of *hdr_len bytes. meta may be NULL (no "__metadata__" key).
 * Names must be unique (MPK_E_DUPLICATE_NAME). */
mpk_status mpk_st_layout(mpk_tensor_info *tensors, size_t n, const mpk_kv *meta, size_t n_meta,
                         char **hdr, size_t *hdr_len, uint64_t *data_size, mpk_error *err);

/* A safetensors file being written: header first, then tensor bytes at their offsets,
 * in any order, from any thread. */
typedef struct mpk_st_out {
    int fd;
    char *path;
    mpk_tensor_info *tensors;    /* laid out (sorted) copy, names borrowed from the caller */
    size_t n_tensors;
    uint64_t data_start, data_size;
} mpk_st_out;

/* Creates path (O_EXCL), writes the header and sizes the file. tensors are laid out as
 * by mpk_st_layout (the caller's array is sorted in place). data_phase < 0: the header is
 * padded to 8 bytes as usual; else (a multiple of 8 below 4096) it is padded with more
 * spaces so that the data starts at that offset modulo 4096 (the spec allows whitespace
 * padding; in-kernel copies run faster when source and destination share their offset
 * within a page). Owned by the caller: finish with mpk_st_out_close. */
mpk_status mpk_st_out_create(const char *path, mpk_tensor_info *tensors, size_t n,
                             const mpk_kv *meta, size_t n_meta, int data_phase, mpk_st_out **out,
                             mpk_error *err);
/* Creates path with exactly the header bytes hdr[0..hlen) (the 8-byte prefix included) of a
 * file whose tensors, parsed from those bytes (offsets relative to the data section), are
 * tensors[0..n) (borrowed) and whose data section is data_size bytes: a file another writer
 * made, given back byte for byte once every tensor is written. */
mpk_status mpk_st_out_create_exact(const char *path, const char *hdr, size_t hlen, mpk_tensor_info *tensors,
                                   size_t n, uint64_t data_size, mpk_st_out **out, mpk_error *err);
/* Like mpk_st_out_create, but opens an existing file that an earlier (interrupted) run
 * created with the same arguments: its size and header bytes must be exactly those this
 * layout gives (else MPK_E_DST_EXISTS, nothing changed). The tensor bytes are not checked. */
mpk_status mpk_st_out_reopen(const char *path, mpk_tensor_info *tensors, size_t n,
                             const mpk_kv *meta, size_t n_meta, int data_phase, mpk_st_out **out,
                             mpk_error *err);
/* mpk_st_out_create_exact's file, created by another process (an MPI rank): opened when its
 * size and header bytes are exactly these (else MPK_E_DST_EXISTS). */
mpk_status mpk_st_out_reopen_exact(const char *path, const char *hdr, size_t hlen, mpk_tensor_info *tensors,
                                   size_t n, uint64_t data_size, mpk_st_out **out, mpk_error *err);
/* Writes len bytes at offset off of tensor i. Thread-safe (pwrite). */
mpk_status mpk_st_out_write(mpk_st_out *o, size_t i, uint64_t off, const void *buf, size_t len,
                            mpk_error *err);
/* fsyncs (when sync) and closes; frees o. NULL-safe. */
mpk_status mpk_st_out_close(mpk_st_out *o, bool sync, mpk_error *err);

/* Writes a whole file from in-memory tensors: data[i] holds tensors[i]'s bytes (the
 * array is sorted in place together with data). Convenience for tests and small files. */
mpk_status mpk_st_write_file(const char *path, mpk_tensor_info *tensors, const void **data,
                             size_t n, const mpk_kv *meta, size_t n_meta, mpk_error *err);

/* ---------------------------------------------------------------- checkpoints */

/* What says a file is the one that was opened, unchanged: identity, size and times. */
typedef struct mpk_file_id {
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
} mpk_file_id;

typedef struct mpk_shard {
    char *name;          /* file name inside the checkpoint directory */
    char *path;          /* full path */
    uint64_t file_size;
    mpk_st_header *header;
    int fd;              /* open read-only */
    mpk_file_id id;      /* as opened */
    struct mpk_mpkz *z;  /* a compressed shard (path is NAME.safetensors.mpkz; name, file_size,
                            header and offsets are the original file's), else NULL */
} mpk_shard;

typedef struct mpk_ckpt_tensor {
    const mpk_tensor_info *info;  /* borrowed from the shard's header */
    uint32_t shard;
    uint64_t file_offset;         /* absolute offset of the first byte in the shard file */
    uint64_t nbytes;
} mpk_ckpt_tensor;

typedef struct mpk_ckpt {
    char *dir;                    /* directory holding the shards */
    bool is_dir;                  /* opened from a directory (not a lone file) */
    bool has_index;               /* model.safetensors.index.json was used */
    mpk_shard *shards;
    size_t n_shards;
    mpk_ckpt_tensor *tensors;     /* natural order of names */
    size_t n_tensors;
    uint64_t total_bytes;         /* tensor bytes only */
    uint64_t index_total_size;    /* the index's metadata.total_size, 0 if absent */
    mpk_strmap by_name;
    bool names_only;              /* from the index alone (mpk_ckpt_open_names): no shard was
                                     opened, dtypes and shapes are unknown (BF16, ndim 0) */
} mpk_ckpt;

/* Opens a .safetensors file or a checkpoint directory, validating every shard and the
 * index (names in the index exist in their shard, shards hold nothing unlisted, shard
 * names are safe). Owned by the caller: mpk_ckpt_close. */
mpk_status mpk_ckpt_open(const char *path, mpk_ckpt **out, mpk_error *err);
/* The tensor names and shard files of dir's model.safetensors.index.json, for a release whose
 * shards are not there (plan before downloading): every tensor BF16 with ndim 0, nothing
 * readable. MPK_E_NOT_FOUND without an index; the index's own errors. */
mpk_status mpk_ckpt_open_names(const char *dir, mpk_ckpt **out, mpk_error *err);
/* O(1) lookup; borrowed pointer valid until mpk_ckpt_close, NULL when absent. */
const mpk_ckpt_tensor *mpk_ckpt_find(const mpk_ckpt *c, const char *name);
/* NULL-safe. */
void mpk_ckpt_close(mpk_ckpt *c);
/* Every shard is still the file that was opened, with the size and times it had then (written
 * in place: size, mtime or ctime differ; replaced: the path names another inode). Call it after
 * the reads, before trusting what they gave: MPK_E_CHANGED naming the shard and what changed. */
mpk_status mpk_ckpt_check_unchanged(const mpk_ckpt *c, mpk_error *err);
/* Reads len bytes at offset off of tensor t into buf (short reads retried); MPK_E_IO naming the
 * shard, the tensor and the offset otherwise. Thread-safe (pread). */
mpk_status mpk_ckpt_read(const mpk_ckpt *c, const mpk_ckpt_tensor *t, uint64_t off, uint64_t len, void *buf,
                         mpk_error *err);

typedef struct mpk_hash128 {
    uint64_t hi, lo;
} mpk_hash128;

/* Streaming XXH3-128 of large buffers (tensor bytes), and one-shot XXH3-64. libxxhash's
 * shared library is built for baseline x86-64 (SSE2: 15 GB/s on this project's dev VM); on a
 * CPU with AVX2 the same library's header, inlined with AVX2 kernels, runs instead (43 GB/s
 * there), with the same results. mpk_tune's xxh_generic keeps the library's.
 * mpk_xxh_new returns a reset state, NULL when out of memory; owned by the caller, free with
 * mpk_xxh_free (NULL-safe). A state is not thread-safe; the functions are. */
typedef struct mpk_xxh mpk_xxh;
mpk_xxh *mpk_xxh_new(void);
void mpk_xxh_update(mpk_xxh *h, const void *p, size_t n);
mpk_hash128 mpk_xxh_digest(const mpk_xxh *h);
void mpk_xxh_free(mpk_xxh *h);
uint64_t mpk_xxh64(const void *p, size_t n);
/* Which code runs: "avx2" or "libxxhash". */
const char *mpk_xxh_impl(void);

/* XXH3-128 of the len bytes at file offset off (a tensor's bytes), read through buf (cap
 * bytes) with mpk_pread_all; mapped: hashed where the page cache holds them instead, through
 * mapped windows of MPK_HASH_MAP_WINDOW bytes (no copy; reads the rest when a window cannot
 * be mapped). Only for the caller's own files: a file truncated under a mapping raises
 * SIGBUS instead of a read error. pack reads back with pread (mapped was 3.2x dearer on
 * 2026-12-03); bench/hash_readback measures both ways on a given machine. */
#define MPK_HASH_MAP_WINDOW (2u << 20) /* mapped pages count in RSS: 16 threads add 32 MiB */
mpk_status mpk_hash_file_range(int fd, uint64_t off, uint64_t len, char *buf, size_t cap, bool mapped, const char *path,
                               const char *tensor, mpk_hash128 *out, mpk_error *err);

/* The index file of a sharded checkpoint (transformers' name). */
#define MPK_INDEX_NAME "model.safetensors.index.json"

/* Parses an index document (text of len bytes). On success *names, *files (parallel
 * arrays of n entries, in document order) live in *arena (caller frees it); *total_size
 * gets metadata.total_size (0 if absent). Shard names are checked for safety. */
mpk_status mpk_index_parse(const char *text, size_t len, const char *where, mpk_arena **arena,
                           const char ***names, const char ***files, size_t *n,
                           uint64_t *total_size, mpk_error *err);

/* Serializes an index as transformers does (json.dumps(indent=2, sort_keys=True) + "\n"):
 * returns a malloc'd NUL-terminated string, NULL on allocation failure. */
char *mpk_index_format(const char *const *names, const char *const *files, size_t n,
                       uint64_t total_size);

/* Formats the index (mpk_index_format) and writes it to DIR/model.safetensors.index.json
 * (mpk_write_file: atomic, fsynced when sync). */
mpk_status mpk_index_write(const char *dir, const char *const *names, const char *const *files,
                           size_t n, uint64_t total_size, bool sync, mpk_error *err);

/* A plain file name inside a checkpoint directory: not empty, no '/', not "." or "..". */
bool mpk_shard_name_safe(const char *s);
/* Shard file name: "model-00001-of-00004.safetensors" (1-based i), or "model.safetensors"
 * when count is 1. */
void mpk_shard_name(size_t i, size_t count, char *buf, size_t cap);

/* ---------------------------------------------------------------- tensor hashes and manifests
 *
 * The manifest (moepack.manifest.json, written by pack/unpack/convert next to their output):
 *   {"format": "moepack.manifest/1", "digest": HEX32, "tensors": {NAME: {"dtype": D,
 *    "shape": [...], "xxh3_128": HEX32}, ...}}
 * Tensor hashes are XXH3-128 of the tensor's bytes. The digest is XXH3-128 over the records
 * "name\0dtype\0shape-as-decimal,...\0tensor-hash-hex\n" in natural name order: independent of
 * how tensors are sharded or ordered in files.
 */

#define MPK_MANIFEST_NAME "moepack.manifest.json"
#define MPK_MANIFEST_FORMAT "moepack.manifest/1"

/* One tensor's XXH3-128 with its name, dtype and shape (what a manifest records). */
typedef struct mpk_tensor_hash {
    const char *name;              /* borrowed */
    mpk_dtype dtype;
    int ndim;
    int64_t shape[MPK_MAX_DIMS];
    mpk_hash128 hash;
} mpk_tensor_hash;

/* XXH3-128 of tensor t's bytes, read through buf (cap bytes, 16 MiB). Thread-safe. */
mpk_status mpk_hash_tensor(const mpk_ckpt *c, const mpk_ckpt_tensor *t, char *buf, mpk_hash128 *out,
                           mpk_error *err);
/* Collective (MPI): every rank's hashes to every rank, t[i].hash set on exactly one rank and
 * zero on the others (they meet by XOR). */
mpk_status mpk_hashes_share(mpk_tensor_hash *t, size_t n, const char *where, mpk_error *err);
/* Hashes every tensor of c (natural name order) and the whole-checkpoint digest. *out is
 * malloc'd (n = c->n_tensors entries), names borrowed from c. Bounded memory (16 MiB reads
 * per thread, up to 16 threads). Collective under MPI: each rank hashes its share (balanced
 * by bytes) and every rank gets every hash. */
mpk_status mpk_hash_ckpt(const mpk_ckpt *c, mpk_tensor_hash **out, mpk_hash128 *digest, mpk_meter *meter,
                          mpk_error *err);
/* The digest of records t[0..n) (in the order given: natural name order for a manifest). */
mpk_hash128 mpk_manifest_digest(const mpk_tensor_hash *t, size_t n);
/* "0123...": 32 lowercase hex digits + NUL into buf (33 bytes). */
const char *mpk_hash_hex(mpk_hash128 h, char *buf);
/* Parses 32 hex digits; false otherwise. */
bool mpk_hash_parse_hex(const char *s, mpk_hash128 *h);
/* The manifest document for a hashed checkpoint: malloc'd text (_json: the cJSON tree, the
 * caller's). prov (a cJSON object, may be NULL): how the checkpoint was made, kept as
 * "provenance". */
char *mpk_manifest_format(const mpk_tensor_hash *t, size_t n, mpk_hash128 digest, const cJSON *prov);
cJSON *mpk_manifest_json(const mpk_tensor_hash *t, size_t n, mpk_hash128 digest, const cJSON *prov);
/* Hashes the checkpoint in dir and writes dir/moepack.manifest.json (sync: fsynced, and its
 * directory, before it replaces any earlier one). */
mpk_status mpk_manifest_write(const char *dir, const cJSON *prov, bool sync, mpk_error *err);
/* Writes dir/moepack.manifest.json from hashes already computed (any order; t is sorted in
 * place into natural name order), e.g. the executor's, taken as it wrote each tensor. */
mpk_status mpk_manifest_write_hashes(const char *dir, mpk_tensor_hash *t, size_t n, const cJSON *prov,
                                     bool sync, mpk_error *err);
/* Reads and checks dir/moepack.manifest.json (format, a "tensors" object, a 32-hex-digit
 * digest): *root (free with cJSON_Delete) owns *tensors; MPK_E_MANIFEST naming the file. */
mpk_status mpk_manifest_load(const char *dir, cJSON **root, const cJSON **tensors, mpk_hash128 *digest,
                             mpk_error *err);

/* ---------------------------------------------------------------- compressed shards (MPKZ.md) */

/* Compresses the safetensors file src (its header validated) into the container dst (created,
 * fsynced; removed on failure): chunks of chunk_size bytes (a multiple of 8, at most 64 MiB),
 * byte planes, zstd at level, on up to threads threads. *out_size (may be NULL): dst's bytes. */
mpk_status mpk_mpkz_compress(const char *src, const char *dst, int level, int threads, uint64_t chunk_size,
                             uint64_t *out_size, mpk_meter *meter, mpk_error *err);
/* Writes back the safetensors file the container src holds, byte for byte, into dst (created,
 * fsynced; removed on failure). MPK_E_CONTAINER naming src, the tensor and the chunk for a
 * corrupt, truncated or inconsistent container (checked before allocating), of another version. */
mpk_status mpk_mpkz_decompress(const char *src, const char *dst, int threads, mpk_meter *meter, mpk_error *err);

/* A container read in place: checkpoints open NAME.safetensors.mpkz where NAME.safetensors is
 * missing, and read its tensors through mpk_mpkz_read. */
typedef struct mpk_mpkz mpk_mpkz;
/* Validates the container open on fd (borrowed, size fsize): *h gets the original header,
 * parsed (owned by the caller; it must outlive *out). MPK_E_CONTAINER as mpk_mpkz_decompress. */
mpk_status mpk_mpkz_open(int fd, const char *path, uint64_t fsize, mpk_mpkz **out, mpk_st_header **h, mpk_error *err);
/* Bytes [off, off+len) of the original data section (decompressing the chunks they lie in,
 * each checked against its XXH3-64). Thread-safe. */
mpk_status mpk_mpkz_read(const mpk_mpkz *z, uint64_t off, uint64_t len, void *buf, mpk_error *err);
/* The original file's first data_start bytes (length prefix and header), verbatim. */
const char *mpk_mpkz_header_bytes(const mpk_mpkz *z);
/* NULL-safe; leaves the fd open. */
void mpk_mpkz_close(mpk_mpkz *z);

/* ---------------------------------------------------------------- I/O engine */

typedef struct mpk_io_req {
    int fd;
    const char *path;    /* the file's name in messages (may be NULL: "fd N") */
    bool write;          /* false: read into buf; true: write buf */
    uint64_t offset;
    void *buf;
    size_t len;
} mpk_io_req;

typedef struct mpk_io mpk_io;

/* Creates an engine. queue_depth: requests in flight (io_uring); max_req: the largest
 * single request, longer ones are split. AUTO falls back to pread when the ring cannot
 * be created (ENOSYS, EPERM, ...). Owned by the caller: mpk_io_free. One engine per
 * thread (not thread-safe). */
mpk_status mpk_io_create(mpk_io_backend want, unsigned queue_depth, size_t max_req, mpk_io **out,
                         mpk_error *err);
/* Runs all requests (in any order, concurrently), returns when all are done. A short
 * read (end of file) is MPK_E_IO with sys_errno 0 and a message naming the offset. */
mpk_status mpk_io_submit(mpk_io *io, const mpk_io_req *reqs, size_t n, mpk_error *err);
/* The back end in use. */
mpk_io_backend mpk_io_backend_of(const mpk_io *io);
const char *mpk_io_backend_name(mpk_io_backend b);
/* NULL-safe. */
void mpk_io_free(mpk_io *io);

/* ---------------------------------------------------------------- small file helpers */

/* Test hook for the write path (every write, copy, fsync, rename and create of output
 * goes through mpk_fault_point): when mpk_fault_countdown > 0, the Nth following point
 * fails with errno mpk_fault_errno, or, when that is 0, the process kills itself with
 * SIGKILL there (a crash at that moment), or, when it is -1, stops itself with SIGSTOP and
 * goes on once continued (a test changes something meanwhile). mpk_fault_passed counts the points passed.
 * libmoepack sets them from MOEPACK_FAULT (lib/hooks.c). */
extern long mpk_fault_countdown, mpk_fault_passed; /* updated with __atomic builtins */
extern long mpk_fault_fsyncs; /* of the points passed, the fsyncs (a test of --no-fsync) */
extern int mpk_fault_errno;
/* 0, or the errno the caller is to fail with (and set errno to it). op names the call. */
int mpk_fault_point(const char *op);
/* pread() of len bytes at file offset off until done (EINTR and short reads retried);
 * MPK_E_IO naming path, tensor and offset otherwise. */
mpk_status mpk_pread_all(int fd, void *buf, uint64_t len, uint64_t off, const char *path, const char *tensor,
                         mpk_error *err);
/* pwrite() until done (in calls of at most mpk_tune's write_piece bytes); MPK_E_IO naming where
 * on failure. Thread-safe. */
mpk_status mpk_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *where,
                          mpk_error *err);
/* The process umask, read without changing it (threads may be creating files). */
unsigned mpk_umask(void);
/* fallocate(fd, 0, 0, size): the blocks of a new file of size bytes reserved before it is
 * written (ext4 writes into them with less work); MPK_E_IO naming path when the file system
 * refuses for want of room (or any other reason but not having fallocate: then MPK_OK). */
mpk_status mpk_preallocate(int fd, const char *path, uint64_t size, mpk_error *err);
/* fsync(fd); MPK_E_IO naming path on failure. */
mpk_status mpk_fsync_fd(int fd, const char *path, mpk_error *err);
/* Opens the directory path and fsyncs it (its entries are then durable). */
mpk_status mpk_fsync_dir(const char *path, mpk_error *err);

/* Opens path read-only without ever blocking in open() (O_NONBLOCK, cleared once the file is
 * known to be regular): a FIFO, socket, device or directory is MPK_E_IO naming what it is.
 * st_out (may be NULL) receives its fstat. */
struct stat;
mpk_status mpk_open_regular(const char *path, int *fd_out, struct stat *st_out, mpk_error *err);
/* Reads a whole regular file into a malloc'd NUL-terminated buffer (opened O_NONBLOCK:
 * a FIFO or device is refused with MPK_E_IO, never waited on). */
mpk_status mpk_read_file(const char *path, char **out, size_t *len, mpk_error *err);
/* Replaces path with buf atomically: writes a temporary file beside it (.NAME.tmp-XXXXXX),
 * fsyncs it when sync, gives it mode 0666 & ~umask, renames it over path and, when sync,
 * fsyncs the directory. A failure leaves path as it was and removes the temporary file. */
mpk_status mpk_write_file(const char *path, const void *buf, size_t len, bool sync, mpk_error *err);
/* Writes text (a malloc'd string, freed here; NULL means its builder ran out of memory) as
 * dir/name, through mpk_write_file. */
mpk_status mpk_write_text_in(const char *dir, const char *name, char *text, bool sync, mpk_error *err);
/* a followed by b, malloc'd (NULL on failure). */
char *mpk_strcat_ext(const char *a, const char *b);
/* Joins a and b with '/', into a malloc'd string (NULL on failure). */
char *mpk_path_join(const char *a, const char *b);

/* ---------------------------------------------------------------- the Hugging Face cache (hub.c) */

/* What src names as a local path (malloc'd into *out): a file or directory as it is; a cache
 * repo folder models--ORG--NAME its snapshot of revision (a ref such as a branch, or a commit
 * hash; NULL: main); a repo id ORG/NAME that is no local path, that snapshot in the cache
 * (mpk_hub_cache_dir). MPK_E_NOT_FOUND naming the id and the cache when it is not there
 * (nothing is downloaded), MPK_E_USAGE for a revision with a local checkpoint. Reads the
 * environment (HF_HUB_CACHE, HF_HOME, HOME) only for a repo id. */
mpk_status mpk_hub_resolve(const char *src, const char *revision, char **out, mpk_error *err);
/* $HF_HUB_CACHE, else $HF_HOME/hub, else $HOME/.cache/huggingface/hub (malloc'd; NULL when
 * none is set). */
char *mpk_hub_cache_dir(void);
/* When directory dir is a cache snapshot (its real path .../models--ORG--NAME/snapshots/REV),
 * the real path of that repo's blobs folder (malloc'd), else NULL: the files a snapshot's
 * links may point at. */
char *mpk_hub_blobs_of(const char *dir);
/* Whether the real path real is dir or lies under it (both real paths). */
bool mpk_path_under(const char *real, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
