/* lib_internal.h — what the files of lib/ (the public API over formats, ops, converter and
 * verify) share: the report handle and its builders. Included only by lib/ and tests. */
#ifndef MPK_LIB_INTERNAL_H
#define MPK_LIB_INTERNAL_H

#include "moepack/moepack.h"
#include "mpk_exec.h"
#include "mpk_verify.h"

#include <stdio.h>

typedef struct cJSON cJSON;

struct mpk_report {
    char *json;                   /* the JSON document */
    char *text;                   /* the human rendering */
    size_t n_differ;
    char skipped[256];            /* a part that could not run, and why ("" when none) */
    mpk_report_item *items;
    size_t n_items, cap_items;
    mpk_arena *arena;             /* item strings */
};

/* A new empty report (NULL when out of memory). */
mpk_report *mpk_report_new(void);
/* Appends a tensor line; name, kind, detail and hash are copied (NULL kind stays NULL). */
mpk_status mpk_report_add(mpk_report *r, const char *name, const char *kind, const char *detail,
                          mpk_dtype dtype, int ndim, const int64_t *shape, uint64_t nbytes, const char *hash,
                          mpk_error *err);
/* Sets r's JSON from o (printed, then deleted). */
/* o (taken) as the report's JSON, with "schema": schema as its first member. */
mpk_status mpk_report_set_json(mpk_report *r, const char *schema, cJSON *o, mpk_error *err);
/* A text rendering in progress: fprintf to it, then mpk_report_end_text(). */
FILE *mpk_report_begin_text(mpk_report *r, char **buf, size_t *len);
mpk_status mpk_report_end_text(mpk_report *r, FILE *f, char **buf, mpk_error *err);
/* Hands a finished report to the caller (out may be NULL: it is freed). */
mpk_status mpk_report_give(mpk_report *r, mpk_report **out);

/* The tensor-hash manifest hook of mpk_exec_opts.finish (sync: unless --no-fsync). */
mpk_status mpk_lib_write_manifest(const char *dir, mpk_tensor_hash *hashes, size_t n, const cJSON *prov,
                                  bool sync, mpk_error *err);
/* Loads a spec (mpk_spec_load) against an already loaded config. */
mpk_status mpk_lib_spec_load(const char *what, const mpk_model_config *cfg, bool reverse, mpk_spec **out,
                             mpk_error *err);

/* The moepack_layout marker of c's first shard ("packed", "per-expert"), or NULL. */
const char *mpk_lib_layout_marker(const mpk_ckpt *c);
/* A report's "ranks" array (MPI: what each rank did) and its text lines; nothing for NULL. */
bool mpk_lib_ranks_json(cJSON *o, const mpk_rank_stats *r, int n);
void mpk_lib_ranks_text(FILE *f, const mpk_rank_stats *r, int n);

/* The source record pack keeps in a packed checkpoint (lib/source.c has its format). */
#define MPK_SOURCE_NAME "moepack.source.zst"
/* c's source record (zstd-compressed, malloc'd into *out). packed_config: the config.json text
 * the conversion writes beside its shards instead of c's (a quantization change), NULL when it
 * copies c's: its digest is recorded, so that unpack tells an edit made since from pack's own. */
mpk_status mpk_source_record(const mpk_ckpt *c, const char *packed_config, char **out, size_t *len,
                             mpk_hash128 *digest, mpk_error *err);
/* XXH3-128 of c's file names, header bytes, index and config.json (the record's content): what
 * identifies a release's files, not their data bytes (verify SRC DST proves those). */
mpk_status mpk_source_digest(const mpk_ckpt *c, mpk_hash128 *out, mpk_error *err);
/* dir's record as a layout to follow; MPK_E_MANIFEST naming it when malformed or larger than a
 * record of dir's checkpoint can need. Its config_text is the config.json to write (the
 * recorded one, or dir's as edited since pack: config_note says so). */
mpk_status mpk_source_load(const char *dir, mpk_layout **out, mpk_error *err);
/* An index file's names and tensor-to-file assignment as a layout (--layout-like). */
mpk_status mpk_layout_from_index(const char *path, mpk_layout **out, mpk_error *err);
/* Every NAME.safetensors in dir replaced by its container NAME.safetensors.mpkz (lib/compress.c);
 * threads 0: the CPUs. */
mpk_status mpk_lib_compress_shards(const char *dir, int level, int threads, mpk_error *err);
/* quant_config.c: config.json's quantization_config for --quantize q (fp8-block128, nvfp4,
 * mxfp4; NULL for another q, or out of memory); hf_quant_config.json's text for NVFP4 (malloc'd;
 * NULL: out of memory); q's --quantize word (the manifest's options); what a --quantize output
 * is (fmt: mpk_plan's quant4, 0 FP8; role: mpk_plan_out's quant) for plan --json. */
cJSON *mpk_lib_quant_config(const mpk_plan *p, mpk_quant q);
/* Whether q quantizes (fp8-block128, nvfp4, mxfp4). */
bool mpk_lib_quantizes(mpk_quant q);
/* A plan's options for q: dequantize, quantize_block, quantize4 (the rest of po untouched). */
void mpk_lib_plan_quant(mpk_quant q, mpk_plan_opts *po);
char *mpk_lib_hf_quant_config(const mpk_plan *p);
const char *mpk_lib_quant_name(mpk_quant q);
const char *mpk_lib_quant_role(int fmt, int role);
/* convert_report.c: "passed_unknown" ([{name, why}]) into o; the report of a conversion. */
void mpk_lib_unknown_json(cJSON *o, const mpk_plan *p);
mpk_status mpk_lib_convert_report(const mpk_convert_req *r, const mpk_plan *p, const mpk_exec_stats *st,
                                  mpk_report **out, mpk_error *err);

#endif
