/* moepack.h — libmoepack, the public API.
 *
 * libmoepack converts Mixture-of-Experts safetensors checkpoints between the layout they are
 * published in (one tensor per expert: model.layers.3.mlp.experts.17.gate_proj.weight) and
 * the packed layout fast kernels use (one tensor per layer and projection:
 * model.layers.3.mlp.experts.gate_up_proj [E, 2I, H], gate rows first; down_proj [E, H, I]),
 * and back, streaming with bounded memory, losslessly, as Hugging Face transformers v5's
 * WeightConverter does. It also inspects, hashes, verifies and diffs checkpoints.
 *
 * A checkpoint is a .safetensors file or a directory holding model.safetensors or
 * model.safetensors.index.json with its shards (and config.json, tokenizer files, ...).
 *
 * Conventions of every function below:
 *  - Functions that can fail return an mpk_status (MPK_OK = 0) and take a caller-owned
 *    mpk_error *err (may be NULL) that they fill on failure with the status, errno for I/O
 *    failures, and a message naming the file, the tensor and the rule broken. They never
 *    exit or abort on bad input.
 *  - Handles (mpk_ckpt, mpk_spec, mpk_plan, mpk_report) are opaque, owned by the caller once
 *    returned, and freed with their own function, which accepts NULL. Strings a handle hands
 *    out are borrowed: valid until that handle is freed.
 *  - Thread safety: functions on distinct handles may run concurrently; one handle is not to
 *    be used from two threads at once, except where said (a const handle may be read from
 *    many threads). mpk_convert runs its own worker threads.
 *  - Writes are atomic: output goes to a temporary name beside the destination and is renamed
 *    into place only when complete and (by default) fsynced; on failure nothing is left at the
 *    destination, and the source is never written.
 *
 * Build against it with `pkg-config --cflags --libs moepack`; man page: libmoepack(3).
 */
#ifndef MOEPACK_H
#define MOEPACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MPK_BUILDING_LIBRARY) && defined(__GNUC__)
#define MPK_API __attribute__((visibility("default")))
#else
#define MPK_API
#endif

/* ---------------------------------------------------------------- status and errors */

/* Pinned values: a shipped value is never renumbered; new ones go before MPK_STATUS_COUNT. */
typedef enum mpk_status {
    MPK_OK = 0,
    MPK_E_IO = 1,                 /* a system call failed (sys_errno says which) */
    MPK_E_NOMEM = 2,              /* allocation failed */
    MPK_E_HEADER_TOO_SMALL = 3,   /* file shorter than the 8-byte length prefix */
    MPK_E_HEADER_TOO_LARGE = 4,   /* N > 100,000,000 */
    MPK_E_HEADER_LENGTH = 5,      /* 8 + N past the end of the file */
    MPK_E_HEADER_UTF8 = 6,        /* header is not valid UTF-8 */
    MPK_E_HEADER_JSON = 7,        /* header is not JSON, or has trailing garbage */
    MPK_E_HEADER_NOT_OBJECT = 8,  /* header JSON (or a tensor entry) is not an object */
    MPK_E_DTYPE = 9,              /* unknown dtype string */
    MPK_E_FIELD_MISSING = 10,     /* dtype, shape or data_offsets missing */
    MPK_E_FIELD_TYPE = 11,        /* a field has the wrong JSON type, or an unknown key */
    MPK_E_NUMBER = 12,            /* negative, fractional or out-of-range number */
    MPK_E_OFFSETS_ARITY = 13,     /* data_offsets is not exactly two numbers */
    MPK_E_OFFSETS_LAYOUT = 14,    /* offsets do not tile the data from 0 (gap, overlap, reversed) */
    MPK_E_SIZE_OVERFLOW = 15,     /* numel * bits overflows 64 bits */
    MPK_E_SIZE_MISMATCH = 16,     /* END - BEGIN != bytes implied by dtype and shape */
    MPK_E_DATA_LENGTH = 17,       /* data section is not exactly covered (trailing/missing bytes) */
    MPK_E_DUPLICATE_NAME = 18,    /* a tensor name appears twice in one header */
    MPK_E_DUPLICATE_METADATA = 19,/* "__metadata__" appears twice, or a key twice inside it */
    MPK_E_METADATA = 20,          /* __metadata__ is not a string -> string object */
    MPK_E_SUBBYTE = 21,           /* sub-byte dtype whose total bits are not whole bytes */
    MPK_E_RANK = 22,              /* more than MPK_MAX_DIMS dimensions */
    MPK_E_INDEX = 23,             /* model.safetensors.index.json malformed */
    MPK_E_INDEX_PATH = 24,        /* shard name unsafe ('/', '..', absolute, outside the dir) */
    MPK_E_INDEX_MISSING = 25,     /* index names a tensor its shard does not hold */
    MPK_E_INDEX_EXTRA = 26,       /* a shard holds a tensor the index does not list */
    MPK_E_NOT_FOUND = 27,         /* no checkpoint at a path, or no such tensor */
    MPK_E_DUPLICATE_TENSOR = 28,  /* two shards hold the same tensor name */
    MPK_E_USAGE = 29,             /* bad argument from a caller */
    MPK_E_SPEC = 30,              /* conversion spec malformed (message has the JSON path) */
    MPK_E_PRESET = 31,            /* unknown preset, or none matches the model */
    MPK_E_EXPERT_MISSING = 32,    /* a group of experts has a hole */
    MPK_E_SHAPE = 33,             /* shapes inconsistent for an op */
    MPK_E_DTYPE_MISMATCH = 34,    /* dtypes inconsistent for an op */
    MPK_E_DST_EXISTS = 35,        /* destination exists and MPK_CONVERT_FORCE was not given */
    MPK_E_OP = 36,                /* op cannot run (bad parameters, unsupported dtype) */
    MPK_E_CONFIG = 37,            /* config.json malformed or inconsistent with the tensors */
    MPK_E_MEMORY_BUDGET = 38,     /* a unit of work does not fit in the memory budget */
    MPK_E_CONFLICT = 39,          /* two rules produce the same target name */
    MPK_E_ALREADY_CONVERTED = 40, /* the checkpoint is already in the target layout */
    MPK_E_QUANT = 41,             /* quantized layout rule broken (scale grid shape, a block
                                     straddling a concat boundary: I % 128 != 0) */
    MPK_E_MANIFEST = 42,          /* moepack.manifest.json missing or malformed */
    MPK_E_OVERLAP = 43,           /* the destination is, holds or lies inside the source */
    MPK_E_CHANGED = 44,           /* a source file changed (or was replaced) while it was read */
    MPK_E_CANCELLED = 45,         /* the caller's cancel flag was raised */
    MPK_E_CONTAINER = 46,         /* a compressed shard (.mpkz) is corrupt, truncated, of an unknown
                                     version, or declares sizes that disagree with its header */
    MPK_E_DST_FOREIGN = 47,       /* MPK_CONVERT_FORCE would replace a destination that is not a
                                     checkpoint directory (a file, or a folder with no
                                     *.safetensors file, index or manifest): left as it is */
    MPK_E_NOT_UNDERSTOOD = 48,    /* the conversion would leave something half-converted: a
                                     per-expert tensor no rule consumes, a quantization companion
                                     (scale, zero point) the spec does not move with its weight, a
                                     quantization method moepack does not implement, or a model
                                     no preset fits; the message names them */
    MPK_E_NOT_INVERTIBLE = 49,    /* a spec's renames are not undone exactly on this checkpoint's
                                     names (two names become one, or the inverse gives another
                                     name): unpack could not give the checkpoint back */
    MPK_STATUS_COUNT
} mpk_status;

/* The request field an error's way out is about: the one to set, change or leave out to get
 * past the failure (MPK_FIELD_FORCE: set MPK_CONVERT_FORCE to replace the checkpoint at dst).
 * The library states it; a front end words it in its own terms (the moepack program as
 * `--force`, python/moepack as `force=True`), so library messages name no command-line option.
 * Pinned values: a shipped value is never renumbered; new ones go before MPK_FIELD_COUNT. */
typedef enum mpk_field {
    MPK_FIELD_NONE = 0,           /* no request field helps (or the failure is not about one) */
    MPK_FIELD_FORCE = 1,          /* MPK_CONVERT_FORCE: replace the checkpoint at dst */
    MPK_FIELD_RESUME = 2,         /* MPK_CONVERT_RESUME: leave it out (MPI, compressed output) */
    MPK_FIELD_COPY_LINKS = 3,     /* MPK_CONVERT_COPY_LINKS */
    MPK_FIELD_PASS_UNKNOWN = 4,   /* MPK_CONVERT_PASS_UNKNOWN: copy what the spec does not understand */
    MPK_FIELD_MEM = 5,            /* mem: a larger budget (or fewer threads: the budget is per thread) */
    MPK_FIELD_THREADS = 6,        /* threads */
    MPK_FIELD_SPEC = 7,           /* spec: another preset, or a spec file written for the model */
    MPK_FIELD_QUANT = 8,          /* quant: another quantization change (e.g. MPK_QUANT_DEQUANTIZE) */
    MPK_FIELD_REVISION = 9,       /* mpk_resolve_source's revision */
    MPK_FIELD_DST = 10,           /* dst: write elsewhere (the one there is not replaceable) */
    MPK_FIELD_COMPRESS_LEVEL = 11,/* compress_level (mpk_compress_req: level) */
    MPK_FIELD_COUNT
} mpk_field;

/* A failure, filled by the function that failed. Caller-owned (a plain struct).
 * ABI: fields are only ever added at the end. The library fills the whole record it was built
 * with, so a program compiled against an older moepack.h (a smaller record: before `field`)
 * must be rebuilt; libmoepack is at soname 0 (before 1.0), where the record may still grow. */
typedef struct mpk_error {
    mpk_status code;
    int sys_errno;     /* errno for MPK_E_IO, else 0 */
    char where[512];   /* file (and tensor) the failure is about, may be empty */
    char msg[1024];    /* full message: "<where>: <what>"; it names no command-line option */
    mpk_field field;   /* the request field the hint is about (MPK_FIELD_NONE: none) */
} mpk_error;

/* Name of a status ("header-too-large", "ok"); "unknown-status" out of range; never NULL,
 * static storage. Thread-safe. */
MPK_API const char *mpk_status_str(mpk_status s);
/* err's message without its "<where>: " prefix (borrowed from err). */
MPK_API const char *mpk_error_what(const mpk_error *err);
/* The field's name as a stable identifier, the request struct's own word ("force", "resume",
 * "copy_links", "pass_unknown", "mem", "threads", "spec", "quant", "revision", "dst",
 * "compress_level"); "" for MPK_FIELD_NONE, NULL out of range. Static storage, thread-safe. */
MPK_API const char *mpk_field_name(mpk_field f);

/* ---------------------------------------------------------------- dtypes */

/* The 22 safetensors dtypes, in the reference's order (its sort key for writing). */
typedef enum mpk_dtype {
    MPK_DTYPE_BOOL, MPK_DTYPE_F4, MPK_DTYPE_F6_E2M3, MPK_DTYPE_F6_E3M2, MPK_DTYPE_U8,
    MPK_DTYPE_I8, MPK_DTYPE_F8_E5M2, MPK_DTYPE_F8_E4M3, MPK_DTYPE_F8_E8M0,
    MPK_DTYPE_F8_E4M3FNUZ, MPK_DTYPE_F8_E5M2FNUZ, MPK_DTYPE_I16, MPK_DTYPE_U16,
    MPK_DTYPE_F16, MPK_DTYPE_BF16, MPK_DTYPE_I32, MPK_DTYPE_U32, MPK_DTYPE_F32,
    MPK_DTYPE_C64, MPK_DTYPE_F64, MPK_DTYPE_I64, MPK_DTYPE_U64,
    MPK_DTYPE_COUNT
} mpk_dtype;

#define MPK_MAX_DIMS 16

/* "BF16" etc.; NULL for an out-of-range value. Static storage, thread-safe. */
MPK_API const char *mpk_dtype_name(mpk_dtype d);

/* ---------------------------------------------------------------- library */

/* n bytes for people: "1.50 GiB", "512 B", into buf (cap bytes); returns buf. Thread-safe. */
MPK_API const char *mpk_human_bytes(uint64_t n, char *buf, size_t cap);

/* The library's version ("0.1.0"), static storage. */
MPK_API const char *mpk_version(void);
/* The features built in, "io_uring=yes cuda=no", static storage. */
MPK_API const char *mpk_features(void);

/* ---------------------------------------------------------------- MPI ranks */

/* A program started by mpirun or srun (Open MPI's, PMIx or PMI variables in its environment)
 * of a libmoepack built with MPI joins the job here (MPI_Init_thread, FUNNELED) and returns the
 * number of ranks; otherwise nothing happens and it returns 1. Call it first, from the main
 * thread; mpk_mpi_end() at exit (MPI_Finalize).
 * While joined, mpk_convert (pack, unpack, convert), mpk_hash, mpk_verify, mpk_diff,
 * mpk_compress and mpk_decompress are collective: every rank calls them with the same arguments, each does its share (output bytes,
 * tensors to hash or compare, balanced by bytes), rank 0 writes the index and the manifest and
 * lands the result, and every rank returns the same status (a failure on any rank fails all).
 * Their reports are complete on rank 0 (verify/diff/hash: on every rank) and carry a "ranks"
 * array. Other calls work per process. */
MPK_API int mpk_mpi_begin(int *argc, char ***argv);
/* This process's rank (0 when not launched; in a library built without MPI, the launcher's rank
 * of the process) and the number working together (1 when not joined, or after mpk_mpi_solo). */
MPK_API int mpk_mpi_rank(void);
MPK_API int mpk_mpi_size(void);
/* From now on this process works alone: collective calls behave as without MPI (for work
 * that rank 0 does by itself while the others wait in mpk_mpi_end). */
MPK_API void mpk_mpi_solo(void);
MPK_API void mpk_mpi_end(void);

/* Test hooks: arms the failure injection the crash-safety tests use. fault is "N:ERRNO"
 * (ENOSPC, EIO, EFBIG, EDQUOT: the Nth write-path call fails), "N:kill" (the process dies
 * there), "N:stop" (it stops there until SIGCONT), "N:ENOMEM" (the Nth allocation fails) or
 * "count" (how many there were, printed at exit); NULL or "" arms nothing. With only_rank set,
 * only the MPI rank of that number (read from the launcher's variables) is armed. Call it once,
 * first thing in main, before any other call; the library never arms it by itself. The moepack
 * program calls it with $MOEPACK_FAULT and $MOEPACK_FAULT_RANK. Not thread-safe. */
MPK_API void mpk_test_hooks_arm(const char *fault, const char *only_rank);

/* ---------------------------------------------------------------- checkpoints */

typedef struct mpk_ckpt mpk_ckpt;

/* One tensor of an open checkpoint. Strings borrowed from the checkpoint. */
typedef struct mpk_tensor_desc {
    const char *name;
    mpk_dtype dtype;
    int ndim;
    int64_t shape[MPK_MAX_DIMS];
    uint64_t nbytes;
    const char *file;             /* the shard file holding it (name inside the directory) */
} mpk_tensor_desc;

/* Where a source may be: every call that takes a source checkpoint (mpk_ckpt_open, the
 * requests' src) accepts a directory or .safetensors file, a Hugging Face cache snapshot folder
 * (its files links into the repo's blobs/, which are read and copied as files), a cache repo
 * folder models--ORG--NAME (its snapshot of refs/main) or a repo id ORG/NAME that is no local
 * path, looked up in the cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
 * $HOME/.cache/huggingface/hub: the only environment variables the library reads for it).
 * Nothing is downloaded. mpk_resolve_source gives the local path src names for revision (a
 * branch or tag of refs/, or a commit hash; NULL: main); *out owned by the caller, free with
 * free(). Errors: MPK_E_NOT_FOUND (the id or revision is not in the cache: the message names
 * the cache folder and the huggingface-cli command that fetches it), MPK_E_USAGE (a revision
 * given with a local checkpoint), MPK_E_IO, MPK_E_NOMEM. */
MPK_API mpk_status mpk_resolve_source(const char *src, const char *revision, char **out, mpk_error *err);

/* Opens and validates a checkpoint strictly: every shard's header, the index (names and
 * shards agree, shard names are safe). Errors: MPK_E_NOT_FOUND, MPK_E_IO, any format error
 * (MPK_E_HEADER_* ... MPK_E_DUPLICATE_TENSOR), MPK_E_NOMEM. *out owned by the caller, free
 * with mpk_ckpt_close(). */
MPK_API mpk_status mpk_ckpt_open(const char *path, mpk_ckpt **out, mpk_error *err);
/* NULL-safe. */
MPK_API void mpk_ckpt_close(mpk_ckpt *c);
/* Number of tensors. */
MPK_API size_t mpk_ckpt_tensor_count(const mpk_ckpt *c);
/* Tensor i in natural name order ("experts.2" before "experts.10"): false when i is out of
 * range. Thread-safe on a const handle. */
MPK_API bool mpk_ckpt_tensor_at(const mpk_ckpt *c, size_t i, mpk_tensor_desc *out);
/* Looks a tensor up by name (O(1)): false when there is none. */
MPK_API bool mpk_ckpt_find_tensor(const mpk_ckpt *c, const char *name, mpk_tensor_desc *out);
/* Reads len bytes at byte offset off of the named tensor into buf. Errors: MPK_E_NOT_FOUND
 * (no such tensor), MPK_E_USAGE (range past its end), MPK_E_IO. Thread-safe (pread). */
MPK_API mpk_status mpk_ckpt_read_tensor(const mpk_ckpt *c, const char *name, uint64_t off, uint64_t len,
                                        void *buf, mpk_error *err);

/* A checkpoint read tensor by tensor in the expert layout a loader wants, whichever it is stored
 * in, with nothing written: layout "packed" of a per-expert checkpoint lists and reads the
 * tensors mpk_convert would write packing it (gate_up_proj built on the fly), "per-expert" of a
 * packed one those unpacking writes (experts.3.up_proj.weight computed from the packed ones
 * through the preset's reversed ops); names, dtypes, shapes and bytes equal to those files'.
 * A checkpoint already in that layout (or with no experts), or layout NULL or "": as stored,
 * as mpk_ckpt_open reads it (.mpkz containers in place). spec: as mpk_convert_req's (NULL: the
 * preset of config.json). Memory: a read holds the range asked for, plus the kernels' blocks of
 * it (a transposed or dequantized slab); a checkpoint's plan, never its data. Errors: MPK_E_USAGE
 * (another layout word), mpk_ckpt_open's, mpk_plan_create's (MPK_E_PRESET, MPK_E_NOT_UNDERSTOOD,
 * ...), MPK_E_NOMEM. *out owned by the caller: mpk_view_close(). Thread-safe on a const view. */
typedef struct mpk_view mpk_view;
MPK_API mpk_status mpk_view_open(const char *path, const char *layout, const char *spec, mpk_view **out,
                                 mpk_error *err);
/* NULL-safe. */
MPK_API void mpk_view_close(mpk_view *v);
/* The view's expert layout: "packed", "per-expert", or "none" (no experts, or a mixed checkpoint
 * read as stored). Static storage. */
MPK_API const char *mpk_view_layout(const mpk_view *v);
/* Its tensors, in natural name order (file: the shard holding it; NULL for a computed one). */
MPK_API size_t mpk_view_tensor_count(const mpk_view *v);
MPK_API bool mpk_view_tensor_at(const mpk_view *v, size_t i, mpk_tensor_desc *out);
MPK_API bool mpk_view_find_tensor(const mpk_view *v, const char *name, mpk_tensor_desc *out);
/* Reads len bytes at byte offset off of the named tensor into buf, computing them when the view
 * does. Errors: MPK_E_NOT_FOUND (no such tensor), MPK_E_USAGE (range past its end), MPK_E_IO,
 * MPK_E_CONTAINER, MPK_E_NOMEM. */
MPK_API mpk_status mpk_view_read(const mpk_view *v, const char *name, uint64_t off, uint64_t len, void *buf,
                                 mpk_error *err);
/* The __metadata__ of its first shard (a computed view: the one mpk_convert writes), pair i:
 * false when i is out of range. Borrowed from the view. */
MPK_API size_t mpk_view_metadata_count(const mpk_view *v);
MPK_API bool mpk_view_metadata_at(const mpk_view *v, size_t i, const char **key, const char **value);

/* ---------------------------------------------------------------- specs and presets */

typedef struct mpk_spec mpk_spec;

/* Loads a conversion spec. what is a preset name ("mixtral"), "auto" or NULL (the preset whose
 * model_types list the model_type of config.json in the checkpoint at model, which is then
 * required), or the path of a spec JSON file (anything containing '/' or ending in .json).
 * reverse: the spec undone (packed -> per-expert). Errors: MPK_E_PRESET (unknown, or none
 * matches the model), MPK_E_SPEC (malformed; the message has the JSON path), MPK_E_IO,
 * MPK_E_CONFIG, MPK_E_NOMEM. *out owned by the caller, free with mpk_spec_free(). */
MPK_API mpk_status mpk_spec_load(const char *what, const char *model, bool reverse, mpk_spec **out,
                                 mpk_error *err);
/* NULL-safe. */
MPK_API void mpk_spec_free(mpk_spec *s);
/* The spec's name, description, and the model_types it serves (i < count). Borrowed. */
MPK_API const char *mpk_spec_name(const mpk_spec *s);
MPK_API const char *mpk_spec_description(const mpk_spec *s);
MPK_API size_t mpk_spec_model_type_count(const mpk_spec *s);
MPK_API const char *mpk_spec_model_type(const mpk_spec *s, size_t i);
/* Names of the embedded presets, i = 0, 1, ... until NULL. Static storage. */
MPK_API const char *mpk_preset_name(size_t i);
/* The JSON spec text of the embedded preset name (a start for a custom spec), or NULL when
 * there is none by that name. Static storage. */
MPK_API const char *mpk_preset_json(const char *name);

/* ---------------------------------------------------------------- reports */

/* The structured result of mpk_convert, mpk_inspect, mpk_hash, mpk_verify and mpk_diff. */
typedef struct mpk_report mpk_report;

/* One tensor line of a report. Strings borrowed from the report. */
typedef struct mpk_report_item {
    const char *name;
    const char *kind;             /* verify/diff: "missing", "extra", "dtype-shape" or "content"
                                     for a difference, NULL for a match; else NULL */
    const char *detail;           /* what differs ("dtype BF16 != F16"); "" otherwise */
    mpk_dtype dtype;
    int ndim;
    int64_t shape[MPK_MAX_DIMS];
    uint64_t nbytes;
    const char *hash;             /* XXH3-128 as 32 hex digits (hash; verify's got hash), or "" */
} mpk_report_item;

/* The whole result as one JSON document (the one `moepack CMD --json` prints; docs/json.md gives
 * each schema). Borrowed. */
MPK_API const char *mpk_report_json(const mpk_report *r);
/* The human-readable rendering (what `moepack CMD` prints). Borrowed. */
MPK_API const char *mpk_report_text(const mpk_report *r);
/* verify/diff: how many tensors differ (0: identical or within tolerance); 0 for the others. */
MPK_API size_t mpk_report_differences(const mpk_report *r);
/* A part of the work that could not run for want of something (gpucheck: no usable GPU), and
 * why; NULL when everything ran. Borrowed. */
MPK_API const char *mpk_report_skipped(const mpk_report *r);
/* Tensor lines: inspect and hash list every tensor, verify and diff the differences. */
MPK_API size_t mpk_report_count(const mpk_report *r);
MPK_API bool mpk_report_item_at(const mpk_report *r, size_t i, mpk_report_item *out);
/* NULL-safe. */
MPK_API void mpk_report_free(mpk_report *r);

/* ---------------------------------------------------------------- conversion */

typedef enum mpk_direction {
    MPK_DIRECTION_PACK = 0,       /* the spec as written: per-expert -> packed */
    MPK_DIRECTION_UNPACK = 1,     /* the spec reversed: packed -> per-expert */
    MPK_DIRECTION_COUNT
} mpk_direction;

typedef enum mpk_quant {
    MPK_QUANT_KEEP = 0,           /* dtypes as the spec says */
    MPK_QUANT_DEQUANTIZE = 1,     /* FP8 weights with 128x128 scale grids -> BF16, grids dropped */
    MPK_QUANT_FP8_BLOCK128 = 2,   /* packed experts -> F8_E4M3 with 128x128 F32 scale grids */
    MPK_QUANT_NVFP4 = 3,          /* packed experts -> NVFP4 as ModelOpt writes it (U8 codes, F8_E4M3
                                     _weight_scale per 16, F32 _weight_scale_2 per expert and fused
                                     part), config.json + hf_quant_config.json say modelopt NVFP4 */
    MPK_QUANT_MXFP4 = 4,          /* packed experts -> MXFP4 by the OCP rule (U8 codes, F8_E8M0
                                     _scale_inv per 32), config.json says mxfp4 */
    MPK_QUANT_COUNT
} mpk_quant;

typedef enum mpk_io_backend {
    MPK_IO_AUTO = 0,              /* io_uring when it can be set up, else pread (mpk_tune's io decides) */
    MPK_IO_URING = 1,
    MPK_IO_PREAD = 2,
    MPK_IO_BACKEND_COUNT
} mpk_io_backend;

enum {
    MPK_CONVERT_FORCE = 1u << 0,         /* replace an existing dst that is a checkpoint directory
                                            or empty (never one holding src) */
    MPK_CONVERT_RESUME = 1u << 1,        /* continue an interrupted run's temporary directory */
    MPK_CONVERT_COPY_LINKS = 1u << 2,    /* copy what symlinks pointing out of src point at */
    MPK_CONVERT_NO_FSYNC = 1u << 3,      /* rename into place without flushing first (cp's way) */
    MPK_CONVERT_NO_COPY_RANGE = 1u << 4, /* never copy_file_range: always read + write */
    MPK_CONVERT_NO_MANIFEST = 1u << 5,   /* no moepack.manifest.json in dst */
    MPK_CONVERT_COMPRESS = 1u << 6,      /* every output shard as NAME.safetensors.mpkz (formats/MPKZ.md);
                                            not with MPK_CONVERT_RESUME */
    MPK_CONVERT_PASS_UNKNOWN = 1u << 7,  /* copy the tensors the spec does not understand (per-expert
                                            leftovers, unmoved quantization companions) as they are
                                            instead of refusing (MPK_E_NOT_UNDERSTOOD); the report
                                            lists them. An unknown quantization method stays refused */
    /* measurement switches: a mechanism turned off to measure what it brings (bench/) */
    MPK_CONVERT_NO_SPLICE = 1u << 8,     /* copy_file_range for every pure byte range, no pipe */
    MPK_CONVERT_NO_PREFETCH = 1u << 9,   /* no read-ahead hints (posix_fadvise WILLNEED) */
    MPK_CONVERT_NO_WRITEBACK = 1u << 10, /* no writeback started per finished output */
};

/* O_DIRECT writes of a durable conversion's shards (mpk_convert_req's direct; measured in
 * docs/streaming.md: through the page cache is the default). */
typedef enum mpk_direct {
    MPK_DIRECT_OFF = 0,           /* through the page cache */
    MPK_DIRECT_LARGE = 1,         /* a shard whose units average 4 MiB or more, where its file
                                     system allows */
    MPK_DIRECT_ALL = 2,           /* every shard's data where its file system allows */
    MPK_DIRECT_COUNT
} mpk_direct;

/* A mechanism used by moepack's rule, never, or wherever it can be (mpk_convert_req's bounce). */
typedef enum mpk_switch {
    MPK_SWITCH_AUTO = 0,
    MPK_SWITCH_NEVER = 1,
    MPK_SWITCH_ALWAYS = 2,
    MPK_SWITCH_COUNT
} mpk_switch;

/* Process-wide measurement switches: the machinery under every call (I/O engines, hashing, the
 * number formats' and byte planes' kernels, write sizes), set by one explicit call; the library
 * reads no environment variable for them. bench/ and the tests use them to measure a mechanism or
 * to run the portable code; `moepack --no-simd ...` etc. set them (the measurement options). */
typedef struct mpk_tuning {
    mpk_io_backend io;            /* every I/O engine a call creates with MPK_IO_AUTO: AUTO (io_uring
                                     where it can be set up), MPK_IO_PREAD, MPK_IO_URING */
    bool xxh_generic;             /* XXH3 from libxxhash only, not moepack's AVX2 build of it */
    bool no_simd;                 /* the portable (scalar) kernels of the number formats and .mpkz
                                     byte planes, where SIMD ones exist */
    uint64_t write_piece;         /* most bytes one pwrite writes: 0 the default (64 KiB, small
                                     page-cache folios: docs/streaming.md), UINT64_MAX no limit */
} mpk_tuning;

/* Defaults: everything auto, 64 KiB write pieces. */
MPK_API void mpk_tuning_init(mpk_tuning *t);
/* Sets the switches for the whole process (t NULL: the defaults). Call it before the calls it
 * should affect, not while one runs in another thread. */
MPK_API void mpk_tune(const mpk_tuning *t);

/* A conversion. Fill it with mpk_convert_req_init(), then set what differs. */
typedef struct mpk_convert_req {
    const char *src;              /* checkpoint to read (never written) */
    const char *dst;              /* directory to create (NULL for mpk_plan_create) */
    const char *spec;             /* as mpk_spec_load's what: preset, "auto"/NULL, spec file */
    mpk_direction direction;
    mpk_quant quant;
    unsigned flags;               /* MPK_CONVERT_* */
    uint64_t max_shard_size;      /* bytes per output shard; 0: one shard (default 50 GB,
                                     transformers v5's) */
    uint64_t mem;                 /* in-flight buffer budget, >= 1 MiB (default 1 GiB) */
    int threads;                  /* worker threads, 0: the CPUs (default) */
    mpk_io_backend io;
    /* unpack/convert: an index (model.safetensors.index.json) whose file names and
     * tensor-to-file assignment the output follows, headers written the reference way; NULL:
     * the source release pack recorded in src (moepack.source.zst) when there is one, given
     * back byte for byte, else moepack's own layout */
    const char *layout_like;
    /* called about 5 times a second from the calling thread while converting, and once at the
     * end (done == total), when non-NULL */
    void (*progress)(void *ctx, uint64_t done_bytes, uint64_t total_bytes, double seconds);
    /* told each notice about the user's data (a stale temporary directory removed, a file of
     * src skipped), when non-NULL; from the calling thread */
    void (*warn)(void *ctx, const char *msg);
    void *ctx;                    /* passed to progress and warn */
    /* when non-NULL and *cancel becomes non-zero (from a signal handler or another thread),
     * the conversion stops soon with MPK_E_CANCELLED, leaving nothing at dst */
    const volatile int *cancel;
    int compress_level;           /* zstd level 1..19 with MPK_CONVERT_COMPRESS (0: the default, 1) */
    /* measurement switches (docs/streaming.md; bench/): */
    mpk_direct direct;            /* O_DIRECT writes of a durable run's shards (default off) */
    mpk_switch bounce;            /* pure bytes of hashed outputs copied through a worker's buffer
                                     (read once, hashed and written): AUTO where outputs are large,
                                     NEVER, ALWAYS wherever outputs are hashed */
} mpk_convert_req;

/* Defaults: preset "auto", pack, 50 GB shards, 1 GiB budget, all CPUs, io auto, fsync on,
 * manifest on. */
MPK_API void mpk_convert_req_init(mpk_convert_req *r, const char *src, const char *dst);

/* Converts req->src into req->dst: opens and validates src, loads the spec (and reverses it
 * to unpack), refuses a src already in the target layout (MPK_E_ALREADY_CONVERTED), plans
 * every target, streams the shards, the index, config.json (its quantization_config rewritten
 * when the quantization changes) and src's other files into a temporary directory beside dst,
 * hashes every output tensor into moepack.manifest.json, and renames it into place. Packing
 * records the source release (moepack.source.zst: file names, header bytes, index) so that
 * unpacking gives every file back byte for byte. Errors:
 * any of mpk_ckpt_open's and mpk_spec_load's, MPK_E_USAGE (a bad request), MPK_E_DST_EXISTS,
 * MPK_E_DST_FOREIGN (forced over a dst that is not a checkpoint), MPK_E_OVERLAP (dst is, holds or
 * lies in src), MPK_E_EXPERT_MISSING, MPK_E_SHAPE,
 * MPK_E_DTYPE_MISMATCH, MPK_E_CONFLICT, MPK_E_QUANT, MPK_E_MEMORY_BUDGET, MPK_E_CHANGED,
 * MPK_E_IO, MPK_E_CANCELLED, MPK_E_MANIFEST (a malformed source record), MPK_E_INDEX /
 * MPK_E_CONFLICT (a layout_like index that does not place every output), MPK_E_NOT_UNDERSTOOD
 * (a tensor, quantization or model the spec does not understand: refused before anything is
 * written, unless MPK_CONVERT_PASS_UNKNOWN covers it). On success *report (report may be NULL) is owned by the caller;
 * it is NULL when memory ran out describing a conversion that did land. */
MPK_API mpk_status mpk_convert(const mpk_convert_req *req, mpk_report **report, mpk_error *err);

typedef struct mpk_plan mpk_plan;
/* Plans req (dst unused) without writing anything: the same checks as mpk_convert up to the
 * writing. *out owned by the caller, free with mpk_plan_free(). */
MPK_API mpk_status mpk_plan_create(const mpk_convert_req *req, mpk_plan **out, mpk_error *err);
/* The plan as text (targets with their sources and ops, pass-throughs, bytes, shards;
 * verbose: every tensor). Owned by the caller: free(). NULL when out of memory. */
MPK_API char *mpk_plan_describe(const mpk_plan *p, bool verbose);
/* The plan as a JSON document (schema "moepack.plan/1", docs/json.md): every output tensor with its
 * dtype, shape, shard file and, for a built one, its sources and ops. malloc'd; NULL when out of
 * memory. */
MPK_API char *mpk_plan_describe_json(const mpk_plan *p);
/* NULL-safe. */
MPK_API void mpk_plan_free(mpk_plan *p);

/* ---------------------------------------------------------------- inspect, hash, verify, diff */

/* Validates the checkpoint at path and reports its shards, tensors, dtypes, config.json facts
 * (model_type, experts) and expert layout. Errors: mpk_ckpt_open's, MPK_E_CONFIG. */
MPK_API mpk_status mpk_inspect(const char *path, mpk_report **out, mpk_error *err);

enum { MPK_HASH_WRITE = 1u << 0 };    /* store path/moepack.manifest.json (a directory) */
/* XXH3-128 of every tensor and the checkpoint digest (independent of sharding and file
 * order); the report's JSON is the manifest document. Errors: mpk_ckpt_open's, MPK_E_USAGE
 * (MPK_HASH_WRITE on a lone file), MPK_E_IO. */
MPK_API mpk_status mpk_hash(const char *path, unsigned flags, mpk_report **out, mpk_error *err);
/* mpk_hash, telling progress(ctx, bytes hashed, total, seconds) about 5 times a second and once
 * at the end (from a worker thread, one call at a time) when non-NULL. */
MPK_API mpk_status mpk_hash_ex(const char *path, unsigned flags,
                               void (*progress)(void *ctx, uint64_t done_bytes, uint64_t total_bytes,
                                                double seconds),
                               void *ctx, mpk_report **out, mpk_error *err);
/* mpk_hash as a request that can also be stopped. Fill with mpk_hash_req_init(). */
typedef struct mpk_hash_req {
    const char *path;
    unsigned flags;               /* MPK_HASH_WRITE */
    /* when non-NULL: bytes hashed of the total, as mpk_hash_ex's */
    void (*progress)(void *ctx, uint64_t done_bytes, uint64_t total_bytes, double seconds);
    void *ctx;
    /* when non-NULL and *cancel becomes non-zero, hashing stops soon with MPK_E_CANCELLED and no
     * manifest is written */
    const volatile int *cancel;
} mpk_hash_req;
MPK_API void mpk_hash_req_init(mpk_hash_req *r, const char *path);
/* Errors: mpk_hash's, MPK_E_CANCELLED. */
MPK_API mpk_status mpk_hash_run(const mpk_hash_req *r, mpk_report **out, mpk_error *err);

/* A comparison of dst with what src becomes (verify), or of two checkpoints value by value
 * (diff). Fill with mpk_compare_req_init(). */
typedef struct mpk_compare_req {
    const char *src;              /* NULL (verify only): check dst against its manifest */
    const char *dst;
    const char *spec;             /* NULL: the identity when both have the same names, else
                                     the preset for src's config.json in the direction the
                                     layouts say; or a preset name or spec file */
    mpk_quant quant;              /* the quantization change dst went through */
    double atol, rtol;            /* element passes when |got - want| <= atol + rtol*|want|;
                                     rtol < 0: the call's default (verify 2^-8, used only where
                                     quantization makes the comparison approximate; diff 0) */
    /* when non-NULL: bytes compared of the total, about 5 times a second and once at the end */
    void (*progress)(void *ctx, uint64_t done_bytes, uint64_t total_bytes, double seconds);
    void *ctx;
    /* when non-NULL and *cancel becomes non-zero (a signal handler, another thread), the
     * comparison stops soon with MPK_E_CANCELLED */
    const volatile int *cancel;
} mpk_compare_req;
/* Defaults: no spec (see above), no quantization change, atol 0, rtol the call's default. */
MPK_API void mpk_compare_req_init(mpk_compare_req *r, const char *src, const char *dst);

/* Recomputes every dst tensor from src with the reference CPU ops and compares bytes (values
 * within tolerance where quantization is involved): missing and extra tensors, dtype/shape,
 * content. MPK_OK whenever the comparison ran: mpk_report_differences() says what it found.
 * Errors: mpk_ckpt_open's, mpk_spec_load's, MPK_E_MANIFEST (one path, no valid manifest),
 * MPK_E_IO. */
MPK_API mpk_status mpk_verify(const mpk_compare_req *req, mpk_report **out, mpk_error *err);
/* Every float tensor compared by value: max abs/rel error, RMSE, cosine, count beyond
 * atol + rtol*|a|. Errors as mpk_verify's; MPK_E_USAGE without src. */
MPK_API mpk_status mpk_diff(const mpk_compare_req *req, mpk_report **out, mpk_error *err);

/* ---------------------------------------------------------------- compressed checkpoints */

/* Every shard NAME.safetensors of a checkpoint directory as a compressed container
 * NAME.safetensors.mpkz (formats/MPKZ.md: the header verbatim, each tensor in chunks of byte
 * planes, one zstd frame per plane, an XXH3-64 per chunk), other files copied; and back, byte
 * for byte. */
typedef struct mpk_compress_req {
    const char *src, *dst;
    int level;                    /* zstd level 1..19 (default 1: on byte planes it compresses as well
                                     as 3, faster; see bench/RESULTS.md) */
    int threads;                  /* 0: the CPUs */
    uint64_t chunk_size;          /* original bytes per chunk (default 1 MiB) */
    unsigned flags;               /* MPK_CONVERT_FORCE */
    void (*warn)(void *ctx, const char *msg);
    void *ctx;
    /* when non-NULL: bytes read of the total, about 5 times a second and once at the end */
    void (*progress)(void *ctx, uint64_t done_bytes, uint64_t total_bytes, double seconds);
    /* when non-NULL and *cancel becomes non-zero, the run stops soon with MPK_E_CANCELLED,
     * leaving nothing at dst */
    const volatile int *cancel;
} mpk_compress_req;
MPK_API void mpk_compress_req_init(mpk_compress_req *r, const char *src, const char *dst);
/* Errors: MPK_E_USAGE, MPK_E_NOT_FOUND (no directory, or nothing to convert), MPK_E_DST_EXISTS,
 * MPK_E_DST_FOREIGN, MPK_E_CONFLICT (SRC holds both NAME.safetensors and NAME.safetensors.mpkz), any header error
 * of a shard, MPK_E_IO, MPK_E_NOMEM. Output staged and renamed into place. */
MPK_API mpk_status mpk_compress(const mpk_compress_req *r, mpk_report **out, mpk_error *err);
/* Errors: as mpk_compress's, and MPK_E_CONTAINER (naming the file, tensor and chunk). */
MPK_API mpk_status mpk_decompress(const mpk_compress_req *r, mpk_report **out, mpk_error *err);

/* ---------------------------------------------------------------- GPU check */

/* Packed experts of one layer run through the fp64 CPU reference, the CPU backends and, when
 * the library has CUDA and a device answers, the GPU backends (eager, batched, grouped,
 * grouped_cublas); each checked against the reference, GPU runs timed. */
typedef struct mpk_gpucheck_req {
    const char *path;             /* packed checkpoint (BF16 gate_up_proj/down_proj), or NULL: */
    int E, H, I;                  /*   a random layer of this size */
    int layer, topk;
    const int *tokens;            /* token counts to run (borrowed), n_tokens of them (1..64) */
    size_t n_tokens;
    unsigned backends;            /* bit b: backend b (mpk_gpu_backend_name(b)) */
    const char *reference;        /* per-expert checkpoint path was packed from: the reference is
                                     computed from it (proves gate-first and expert order) */
    const char *plot;             /* SVG of tokens vs time per GPU backend, or NULL */
    const char *peer;             /* gpu/peer_torch.py --json output: ratios to its times */
    const char *save_inputs;      /* directory: each case's inputs, for the peer */
    int runs, check_rows, seed;
    bool cpu;                     /* CPU backends even on large cases */
    void (*line)(void *ctx, const char *text); /* each result line as it is measured, or NULL */
    void *ctx;
} mpk_gpucheck_req;

/* Defaults: top-2, tokens 1,4,...,4096, every backend, 20 runs, 32 rows checked, seed 1. */
MPK_API void mpk_gpucheck_req_init(mpk_gpucheck_req *r);
/* Backend i's name ("eager", ...), NULL past the last. */
MPK_API const char *mpk_gpu_backend_name(size_t i);
/* Runs the check. MPK_OK when it ran: mpk_report_differences() counts backends that disagree
 * with the reference, mpk_report_skipped() says why the GPU part did not run. The cuBLAS backends
 * dlopen libcublas.so.13, or the file $MOEPACK_CUBLAS names (a location, read by the GPU harness). Errors:
 * MPK_E_USAGE, mpk_ckpt_open's, MPK_E_NOT_FOUND / MPK_E_SHAPE (no BF16 packed layer), MPK_E_IO,
 * MPK_E_NOMEM. */
MPK_API mpk_status mpk_gpucheck(const mpk_gpucheck_req *r, mpk_report **out, mpk_error *err);

/* ---------------------------------------------------------------- synthetic checkpoints */

typedef struct mpk_synth_opts {
    const char *arch;             /* preset name (default "mixtral") */
    int layers, experts, hidden, intermediate, vocab;
    mpk_dtype dtype;              /* BF16, F16 or F32 */
    int shards;
    uint64_t seed;
    bool packed;                  /* write the packed layout */
    bool fp8;                     /* DeepSeek-V3 style: linear weights F8_E4M3 with 128x128 F32
                                     weight_scale_inv grids */
} mpk_synth_opts;

/* Defaults: mixtral, 2 layers, 8 experts, H=64, I=32, vocab 128, BF16, 2 shards, seed 1. */
MPK_API void mpk_synth_opts_init(mpk_synth_opts *o);
/* Writes a checkpoint with the preset's real tensor names, random data (from seed) and a
 * config.json into out_dir (created; atomically). Errors: MPK_E_PRESET, MPK_E_USAGE,
 * MPK_E_DST_EXISTS, MPK_E_IO. */
MPK_API mpk_status mpk_synth(const mpk_synth_opts *o, const char *out_dir, mpk_error *err);

#ifdef __cplusplus
}
#endif
#endif
